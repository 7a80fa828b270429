use sea_orm::entity::prelude::*;

/// A named SCIM bearer token of one tenant (only its SHA-256 digest is stored).
#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, serde::Serialize, serde::Deserialize)]
#[sea_orm(table_name = "scim_tokens")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub token_id: Uuid,
    pub tenant_id: String,
    pub name: String,
    pub token_sha256: String,
    pub created_by: String,
    pub create_time: DateTimeUtc,
    pub expire_time: Option<DateTimeUtc>,
    pub revoke_time: Option<DateTimeUtc>,
    pub last_used_time: Option<DateTimeUtc>,
}

impl ActiveModelBehavior for ActiveModel {}
