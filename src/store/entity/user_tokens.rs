use sea_orm::entity::prelude::*;

#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "user_tokens")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub token_hash: String,
    pub tenant_id: String,
    pub user_id: Uuid,
    pub kind: String,
    pub expire_time: DateTimeUtc,
    pub create_time: DateTimeUtc,
    pub used_time: Option<DateTimeUtc>,
}

impl ActiveModelBehavior for ActiveModel {}
