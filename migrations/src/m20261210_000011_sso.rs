//! Single sign-on (OpenID Connect): tenants' identity providers (client secrets sealed with the
//! master key), the links of users to a provider's subjects, the states of sign-ins already
//! completed (a state completes one sign-in at most), and on sessions the provider and its
//! session id (`sid`) they were opened through, which back-channel logout ends.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table("identity_providers")
                .col(uuid("idp_id").primary_key())
                .col(string("tenant_id"))
                .col(string("name"))
                .col(string("issuer"))
                .col(string("client_id"))
                // `v1.<key id>.<nonce+ciphertext>` (secrets.rs), never the secret itself.
                .col(text("client_secret_sealed"))
                // Scopes, domains, redirect URIs, group mappings, claim mapping, break-glass users.
                .col(text("config"))
                .col(boolean("jit_provisioning"))
                .col(boolean("sso_required"))
                .col(string("created_by"))
                .col(timestamp_with_time_zone("create_time"))
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ux_identity_providers_tenant_name")
                .table("identity_providers")
                .col("tenant_id")
                .col("name")
                .unique()
                .to_owned(),
        )
        .await?;
        m.create_table(
            Table::create()
                .table("sso_links")
                .col(uuid("idp_id"))
                .col(string("subject"))
                .col(string("tenant_id"))
                .col(uuid("user_id"))
                .col(timestamp_with_time_zone("create_time"))
                .primary_key(Index::create().col("idp_id").col("subject"))
                .to_owned(),
        )
        .await?;
        m.create_index(Index::create().name("ix_sso_links_user").table("sso_links").col("user_id").to_owned()).await?;
        m.create_table(
            Table::create()
                .table("sso_used_states")
                .col(string("state_sha256").primary_key())
                .col(timestamp_with_time_zone("expire_time"))
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create().name("ix_sso_used_states_expire").table("sso_used_states").col("expire_time").to_owned(),
        )
        .await?;
        m.alter_table(Table::alter().table("sessions").add_column(uuid_null("idp_id")).to_owned()).await?;
        m.alter_table(Table::alter().table("sessions").add_column(string_null("idp_sid")).to_owned()).await?;
        m.create_index(
            Index::create().name("ix_sessions_idp").table("sessions").col("idp_id").col("idp_sid").to_owned(),
        )
        .await
    }
}
