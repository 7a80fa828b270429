use sea_orm::entity::prelude::*;

#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, serde::Serialize, serde::Deserialize)]
#[sea_orm(table_name = "notifications")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub notification_id: Uuid,
    pub tenant_id: String,
    pub user_id: Option<Uuid>,
    pub kind: String,
    pub channel: String,
    pub recipient: String,
    pub locale: String,
    #[sea_orm(column_type = "Text")]
    pub variables: String,
    /// The token the message carries, sealed; NULL once sent, failed or expired.
    #[sea_orm(column_type = "Text", nullable)]
    pub secret: Option<String>,
    pub state: String,
    pub attempts: i32,
    #[sea_orm(column_type = "Text", nullable)]
    pub last_error: Option<String>,
    pub next_attempt_time: DateTimeUtc,
    pub give_up_time: DateTimeUtc,
    pub lease_owner: Option<String>,
    pub lease_expire_time: Option<DateTimeUtc>,
    pub create_time: DateTimeUtc,
    pub update_time: DateTimeUtc,
    pub sent_time: Option<DateTimeUtc>,
}

impl ActiveModelBehavior for ActiveModel {}
