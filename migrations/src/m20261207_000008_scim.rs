//! SCIM provisioning: tenants' identity providers hold named bearer tokens (stored as SHA-256
//! digests), and users gain the identity an IdP knows them by: a unique `username` (SCIM
//! `userName` when it is not the e-mail address; later also a login name) and the IdP's own id
//! (`externalId`); roles (SCIM groups) gain the IdP's id of the group.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for col in ["username", "username_key", "external_id"] {
            m.alter_table(Table::alter().table("users").add_column(string_null(col)).to_owned()).await?;
        }
        m.create_index(
            Index::create()
                .name("ux_users_tenant_username")
                .table("users")
                .col("tenant_id")
                .col("username_key")
                .unique()
                .to_owned(),
        )
        .await?;
        // A SCIM group is a role: the IdP's id of the group.
        m.alter_table(Table::alter().table("roles").add_column(string_null("external_id")).to_owned()).await?;
        m.create_index(
            Index::create()
                .name("ix_users_tenant_external_id")
                .table("users")
                .col("tenant_id")
                .col("external_id")
                .to_owned(),
        )
        .await?;
        m.create_table(
            Table::create()
                .table("scim_tokens")
                .col(uuid("token_id").primary_key())
                .col(string("tenant_id"))
                // Shown in audit events as `scim:<name>`; unique per tenant.
                .col(string("name"))
                // Hex SHA-256 of the bearer token (256 random bits: no slow hash needed).
                .col(string("token_sha256").unique_key())
                .col(string("created_by"))
                .col(timestamp_with_time_zone("create_time"))
                .col(timestamp_with_time_zone_null("expire_time"))
                .col(timestamp_with_time_zone_null("revoke_time"))
                .col(timestamp_with_time_zone_null("last_used_time"))
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ux_scim_tokens_tenant_name")
                .table("scim_tokens")
                .col("tenant_id")
                .col("name")
                .unique()
                .to_owned(),
        )
        .await
    }
}
