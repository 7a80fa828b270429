//! The ownership registry and transfer jobs.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table("ownerships")
                .col(string("tenant_id"))
                .col(string("module"))
                .col(string("resource_id"))
                .col(uuid("owner_user_id"))
                .col(timestamp_with_time_zone("update_time"))
                .primary_key(Index::create().col("tenant_id").col("module").col("resource_id"))
                // No foreign key to tenants: RecordOwnership checks the tenant (and locks it) once
                // per batch, where a key would add a per-row trigger lookup to bulk ingest.
                .to_owned(),
        )
        .await?;
        // Listing, counting and transferring a user's records.
        m.create_index(
            Index::create()
                .name("ix_ownerships_owner")
                .table("ownerships")
                .col("tenant_id")
                .col("owner_user_id")
                .col("module")
                .col("resource_id")
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table("transfers")
                .col(uuid("transfer_id").primary_key())
                .col(string("tenant_id"))
                .col(uuid("from_user_id"))
                // JSON: the rules, and per module the resolved targets and progress.
                .col(text("rules"))
                .col(text("progress"))
                .col(string("state"))
                .col(big_integer("total"))
                .col(big_integer("moved"))
                .col(text("error"))
                .col(boolean("cancel_requested"))
                // The replica running the job and until when its claim holds.
                .col(string_null("lease_owner"))
                .col(timestamp_with_time_zone_null("lease_expire_time"))
                .col(string_null("request_id"))
                .col(big_integer("version"))
                .col(timestamp_with_time_zone("create_time"))
                .col(timestamp_with_time_zone("update_time"))
                .col(timestamp_with_time_zone_null("start_time"))
                .col(timestamp_with_time_zone_null("end_time"))
                .foreign_key(
                    ForeignKey::create()
                        .from("transfers", "tenant_id")
                        .to("tenants", "tenant_id")
                        .on_delete(ForeignKeyAction::Restrict),
                )
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ix_transfers_tenant")
                .table("transfers")
                .col("tenant_id")
                .col("transfer_id")
                .to_owned(),
        )
        .await?;
        m.create_index(Index::create().name("ix_transfers_state").table("transfers").col("state").to_owned()).await?;
        Ok(())
    }
}
