use sea_orm::entity::prelude::*;

/// An OpenID Connect identity provider of one tenant (the client secret sealed).
#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, serde::Serialize, serde::Deserialize)]
#[sea_orm(table_name = "identity_providers")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub idp_id: Uuid,
    pub tenant_id: String,
    pub name: String,
    pub issuer: String,
    pub client_id: String,
    #[sea_orm(column_type = "Text")]
    pub client_secret_sealed: String,
    #[sea_orm(column_type = "Text")]
    pub config: String,
    pub jit_provisioning: bool,
    pub sso_required: bool,
    pub created_by: String,
    pub create_time: DateTimeUtc,
}

impl ActiveModelBehavior for ActiveModel {}
