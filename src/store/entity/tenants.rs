use sea_orm::entity::prelude::*;

#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "tenants")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub tenant_id: String,
    pub display_name: String,
    pub seat_limit: i32,
    #[sea_orm(column_type = "Text")]
    pub settings: String,
    pub version: i64,
    pub policy_version: i64,
    pub create_time: DateTimeUtc,
    pub update_time: DateTimeUtc,
    pub suspend_time: Option<DateTimeUtc>,
    #[sea_orm(column_type = "Text", nullable)]
    pub suspend_reason: Option<String>,
}

impl ActiveModelBehavior for ActiveModel {}
