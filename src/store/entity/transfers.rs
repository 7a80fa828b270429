use sea_orm::entity::prelude::*;

#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "transfers")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub transfer_id: Uuid,
    pub tenant_id: String,
    pub from_user_id: Uuid,
    #[sea_orm(column_type = "Text")]
    pub rules: String,
    #[sea_orm(column_type = "Text")]
    pub progress: String,
    pub state: String,
    pub total: i64,
    pub moved: i64,
    #[sea_orm(column_type = "Text")]
    pub error: String,
    pub cancel_requested: bool,
    pub lease_owner: Option<String>,
    pub lease_expire_time: Option<DateTimeUtc>,
    pub request_id: Option<String>,
    pub version: i64,
    pub create_time: DateTimeUtc,
    pub update_time: DateTimeUtc,
    pub start_time: Option<DateTimeUtc>,
    pub end_time: Option<DateTimeUtc>,
}

impl ActiveModelBehavior for ActiveModel {}
