use sea_orm::entity::prelude::*;

#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "roles")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub role_id: Uuid,
    pub tenant_id: String,
    pub name: String,
    pub name_key: String,
    #[sea_orm(column_type = "Text")]
    pub description: String,
    pub builtin: Option<String>,
    #[sea_orm(column_type = "Text")]
    pub permissions: String,
    /// The identity provider's id of the role as a SCIM group (`externalId`).
    pub external_id: Option<String>,
    pub version: i64,
    pub create_time: DateTimeUtc,
    pub update_time: DateTimeUtc,
}

impl ActiveModelBehavior for ActiveModel {}
