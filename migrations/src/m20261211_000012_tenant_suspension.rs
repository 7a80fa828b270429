//! A tenant suspended by the platform (`TenantAdmin.SuspendTenant`): since when and why. NULL
//! (every tenant before this migration): active.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.alter_table(
            Table::alter().table("tenants").add_column(timestamp_with_time_zone_null("suspend_time")).to_owned(),
        )
        .await?;
        m.alter_table(Table::alter().table("tenants").add_column(text_null("suspend_reason")).to_owned()).await
    }
}
