use sea_orm::entity::prelude::*;

#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "audit_events")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub seq: i64,
    pub event_id: Uuid,
    pub tenant_id: Option<String>,
    pub occur_time: DateTimeUtc,
    pub actor_kind: String,
    pub actor_id: String,
    pub action: String,
    pub target_kind: String,
    pub target_id: String,
    pub request_id: Option<String>,
    pub trace_id: Option<String>,
    pub peer: Option<String>,
    #[sea_orm(column_type = "Text")]
    pub changes: String,
    #[sea_orm(column_type = "Text")]
    pub details: String,
}

impl ActiveModelBehavior for ActiveModel {}
