//! Look-alike e-mail addresses: the confusable skeleton (Unicode UTS #39) of each user's address,
//! unique per tenant, so `аnn@acme.example` (Cyrillic а) cannot sit beside `ann@acme.example`.
//! Rows from before are filled in by the server at start (the skeleton is computed in Rust).

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.alter_table(Table::alter().table("users").add_column(string_null("email_skeleton")).to_owned()).await?;
        m.create_index(
            Index::create()
                .name("ux_users_tenant_email_skeleton")
                .table("users")
                .col("tenant_id")
                .col("email_skeleton")
                .unique()
                .to_owned(),
        )
        .await
    }
}
