//! The notifications outbox: a change that needs a message (an invitation, a password reset, a
//! security notice) inserts its row in the same transaction; a delivery worker on any replica
//! claims due rows by lease and sends them. Users gain the language of their messages; tenants
//! may word messages their own way.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        // BCP 47 tag (`ru`, `zh-CN`); "" = the tenant's default.
        m.alter_table(Table::alter().table("users").add_column(string("locale").default("")).to_owned()).await?;
        m.create_table(
            Table::create()
                .table("notifications")
                .col(uuid("notification_id").primary_key())
                .col(string("tenant_id"))
                .col(uuid_null("user_id"))
                // `invitation`, `password_reset`, `password_changed`, …
                .col(string("kind"))
                // `email`
                .col(string("channel"))
                .col(string("recipient"))
                .col(string("locale"))
                // JSON of the template's variables (never a secret).
                .col(text("variables"))
                // The token the message carries, sealed under the master key; NULL once the
                // message is sent, failed or expired.
                .col(text_null("secret"))
                // PENDING, SENT, FAILED
                .col(string("state"))
                .col(integer("attempts"))
                .col(text_null("last_error"))
                .col(timestamp_with_time_zone("next_attempt_time"))
                // Retries stop (FAILED) after this time.
                .col(timestamp_with_time_zone("give_up_time"))
                .col(string_null("lease_owner"))
                .col(timestamp_with_time_zone_null("lease_expire_time"))
                .col(timestamp_with_time_zone("create_time"))
                .col(timestamp_with_time_zone("update_time"))
                .col(timestamp_with_time_zone_null("sent_time"))
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ix_notifications_due")
                .table("notifications")
                .col("state")
                .col("next_attempt_time")
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ix_notifications_tenant")
                .table("notifications")
                .col("tenant_id")
                .col("notification_id")
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create().name("ix_notifications_user").table("notifications").col("user_id").col("kind").to_owned(),
        )
        .await?;
        m.create_table(
            Table::create()
                .table("notification_templates")
                .col(string("tenant_id"))
                .col(string("kind"))
                .col(string("locale"))
                .col(text("subject"))
                .col(text("body"))
                .col(big_integer("version"))
                .col(timestamp_with_time_zone("update_time"))
                .primary_key(Index::create().col("tenant_id").col("kind").col("locale"))
                .to_owned(),
        )
        .await
    }
}
