use sea_orm::entity::prelude::*;

#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "idempotency_keys")]
pub struct Model {
    /// `<tenant>|<actor id>` (tenant empty for platform-level requests): a key belongs to its caller.
    #[sea_orm(primary_key, auto_increment = false)]
    pub scope: String,
    #[sea_orm(primary_key, auto_increment = false)]
    pub request_id: String,
    pub method: String,
    pub fingerprint: String,
    #[sea_orm(column_type = "Text", nullable)]
    pub response: Option<String>,
    pub create_time: DateTimeUtc,
}

impl ActiveModelBehavior for ActiveModel {}
