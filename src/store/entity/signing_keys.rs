use sea_orm::entity::prelude::*;

#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "signing_keys")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub kid: String,
    pub alg: String,
    pub private_key: String,
    pub public_key: String,
    pub create_time: DateTimeUtc,
    pub retire_time: Option<DateTimeUtc>,
    /// From when the key signs (published before); None: since `create_time`.
    pub activate_time: Option<DateTimeUtc>,
}

impl ActiveModelBehavior for ActiveModel {}
