use sea_orm::entity::prelude::*;

#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "sessions")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub session_id: Uuid,
    pub tenant_id: String,
    pub user_id: Uuid,
    pub scope: String,
    pub amr: String,
    pub peer: Option<String>,
    pub create_time: DateTimeUtc,
    pub last_refresh_time: DateTimeUtc,
    pub expire_time: DateTimeUtc,
    pub idle_timeout_secs: i64,
    pub end_time: Option<DateTimeUtc>,
    pub end_reason: Option<String>,
    /// The identity provider the session was opened through (single sign-on), and its `sid`.
    pub idp_id: Option<Uuid>,
    pub idp_sid: Option<String>,
}

impl ActiveModelBehavior for ActiveModel {}
