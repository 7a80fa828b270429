//! Tenants, departments, users, single-use user tokens, audit events and idempotency keys.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

fn timestamps(t: &mut TableCreateStatement) -> &mut TableCreateStatement {
    t.col(timestamp_with_time_zone("create_time")).col(timestamp_with_time_zone("update_time"))
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            timestamps(
                Table::create()
                    .table("tenants")
                    .col(string("tenant_id").primary_key())
                    .col(string("display_name"))
                    .col(integer("seat_limit"))
                    // TenantSettings as JSON: policies grow without schema changes.
                    .col(text("settings"))
                    // Optimistic concurrency: bumped by every update; the etag is derived from it.
                    .col(big_integer("version")),
            )
            .to_owned(),
        )
        .await?;

        m.create_table(
            timestamps(
                Table::create()
                    .table("departments")
                    .col(uuid("department_id").primary_key())
                    .col(string("tenant_id"))
                    .col(string("name"))
                    // Lower-cased name: department names are unique per tenant, case-insensitively.
                    .col(string("name_key"))
                    .col(uuid_null("parent_department_id"))
                    .col(uuid_null("head_user_id"))
                    .col(big_integer("version"))
                    .foreign_key(
                        ForeignKey::create()
                            .from("departments", "tenant_id")
                            .to("tenants", "tenant_id")
                            .on_delete(ForeignKeyAction::Restrict),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .from("departments", "parent_department_id")
                            .to("departments", "department_id")
                            .on_delete(ForeignKeyAction::Restrict),
                    ),
            )
            .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ux_departments_tenant_name")
                .table("departments")
                .col("tenant_id")
                .col("name_key")
                .unique()
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ix_departments_tenant_parent")
                .table("departments")
                .col("tenant_id")
                .col("parent_department_id")
                .to_owned(),
        )
        .await?;

        m.create_table(
            timestamps(
                Table::create()
                    .table("users")
                    .col(uuid("user_id").primary_key())
                    .col(string("tenant_id"))
                    // NULL once purged. `email_key` is the lower-cased address the unique index uses.
                    .col(string_null("email"))
                    .col(string_null("email_key"))
                    .col(string("given_name"))
                    .col(string("family_name"))
                    .col(string("display_name"))
                    .col(string_null("phone"))
                    .col(string("position"))
                    .col(string_null("employee_number"))
                    .col(uuid_null("department_id"))
                    .col(string_null("hire_date"))
                    .col(string("state"))
                    .col(boolean("mfa_enrolled"))
                    .col(boolean("must_change_password"))
                    .col(text("attributes"))
                    // argon2id PHC string; NULL for invited, reset or purged users.
                    .col(string_null("password_hash"))
                    .col(timestamp_with_time_zone_null("last_login_time"))
                    .col(timestamp_with_time_zone_null("deactivate_time"))
                    .col(timestamp_with_time_zone_null("delete_time"))
                    .col(timestamp_with_time_zone_null("purge_after"))
                    .col(timestamp_with_time_zone_null("purge_time"))
                    .col(big_integer("version"))
                    .foreign_key(
                        ForeignKey::create()
                            .from("users", "tenant_id")
                            .to("tenants", "tenant_id")
                            .on_delete(ForeignKeyAction::Restrict),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .from("users", "department_id")
                            .to("departments", "department_id")
                            .on_delete(ForeignKeyAction::Restrict),
                    ),
            )
            .to_owned(),
        )
        .await?;
        for (name, cols, unique) in [
            ("ux_users_tenant_email", &["tenant_id", "email_key"][..], true),
            ("ux_users_tenant_employee_number", &["tenant_id", "employee_number"][..], true),
            ("ix_users_tenant_user", &["tenant_id", "user_id"][..], false),
            ("ix_users_tenant_department", &["tenant_id", "department_id"][..], false),
            ("ix_users_state_purge_after", &["state", "purge_after"][..], false),
        ] {
            let mut index = Index::create();
            index.name(name).table("users");
            for col in cols {
                index.col(*col);
            }
            if unique {
                index.unique();
            }
            m.create_index(index.to_owned()).await?;
        }

        m.create_table(
            Table::create()
                .table("user_tokens")
                // SHA-256 (hex) of the token: the token itself is never stored.
                .col(string("token_hash").primary_key())
                .col(string("tenant_id"))
                .col(uuid("user_id"))
                // `invitation` or `password_reset`.
                .col(string("kind"))
                .col(timestamp_with_time_zone("expire_time"))
                .col(timestamp_with_time_zone("create_time"))
                .col(timestamp_with_time_zone_null("used_time"))
                .foreign_key(
                    ForeignKey::create()
                        .from("user_tokens", "user_id")
                        .to("users", "user_id")
                        .on_delete(ForeignKeyAction::Cascade),
                )
                .to_owned(),
        )
        .await?;
        m.create_index(Index::create().name("ix_user_tokens_user").table("user_tokens").col("user_id").to_owned())
            .await?;

        m.create_table(
            Table::create()
                .table("audit_events")
                // Stream order. Appends are serialized until commit (see src/store/audit.rs), so a
                // smaller seq never becomes visible after a larger one.
                .col(big_pk_auto("seq"))
                .col(uuid_uniq("event_id"))
                // NULL for platform-level events that belong to no tenant.
                .col(string_null("tenant_id"))
                .col(timestamp_with_time_zone("occur_time"))
                .col(string("actor_kind"))
                .col(string("actor_id"))
                .col(string("action"))
                .col(string("target_kind"))
                .col(string("target_id"))
                .col(string_null("request_id"))
                .col(string_null("trace_id"))
                .col(string_null("peer"))
                // JSON object: field → {before, after}, secrets redacted.
                .col(text("changes"))
                // JSON object with action-specific details (reason, moved resources, ...).
                .col(text("details"))
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ix_audit_events_tenant_seq")
                .table("audit_events")
                .col("tenant_id")
                .col("seq")
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create().name("ix_audit_events_occur_time").table("audit_events").col("occur_time").to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table("idempotency_keys")
                // The tenant the request acted in ("" for platform-level requests).
                .col(string("scope"))
                .col(string("request_id"))
                .col(string("method"))
                // SHA-256 of the request body without its request_id.
                .col(string("fingerprint"))
                // JSON of the first result (secrets never included); NULL while in progress.
                .col(text_null("response"))
                .col(timestamp_with_time_zone("create_time"))
                .primary_key(Index::create().col("scope").col("request_id"))
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ix_idempotency_keys_create_time")
                .table("idempotency_keys")
                .col("create_time")
                .to_owned(),
        )
        .await?;
        Ok(())
    }
}
