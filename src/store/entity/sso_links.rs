use sea_orm::entity::prelude::*;

/// A user of a tenant as one identity provider's subject (`sub`).
#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, serde::Serialize, serde::Deserialize)]
#[sea_orm(table_name = "sso_links")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub idp_id: Uuid,
    #[sea_orm(primary_key, auto_increment = false)]
    pub subject: String,
    pub tenant_id: String,
    pub user_id: Uuid,
    pub create_time: DateTimeUtc,
}

impl ActiveModelBehavior for ActiveModel {}
