//! Retention bookkeeping for the audit stream, and the index retention deletes use.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table("audit_watermarks")
                // A tenant id, or "" for platform-level events.
                .col(string("scope").primary_key())
                // The highest seq retention has deleted in this scope: a stream resuming from an
                // older cursor would miss events, so it is answered OUT_OF_RANGE.
                .col(big_integer("purged_through"))
                .col(timestamp_with_time_zone("update_time"))
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ix_audit_events_tenant_time")
                .table("audit_events")
                .col("tenant_id")
                .col("occur_time")
                .to_owned(),
        )
        .await?;
        Ok(())
    }
}
