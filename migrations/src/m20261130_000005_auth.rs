//! Login sessions, refresh tokens, per-user login state (lockout, TOTP), recovery codes and the
//! keys that sign access tokens.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table("sessions")
                .col(uuid("session_id").primary_key())
                .col(string("tenant_id"))
                .col(uuid("user_id"))
                // "" for a full session, `password_change` for one good only for ChangePassword.
                .col(string("scope"))
                // Comma-separated authentication methods (`pwd`, `otp`).
                .col(string("amr"))
                .col(string_null("peer"))
                .col(timestamp_with_time_zone("create_time"))
                .col(timestamp_with_time_zone("last_refresh_time"))
                // Absolute end; the idle end is last_refresh_time + idle_timeout_secs.
                .col(timestamp_with_time_zone("expire_time"))
                .col(big_integer("idle_timeout_secs"))
                .col(timestamp_with_time_zone_null("end_time"))
                .col(string_null("end_reason"))
                .foreign_key(
                    ForeignKey::create()
                        .from("sessions", "user_id")
                        .to("users", "user_id")
                        .on_delete(ForeignKeyAction::Cascade),
                )
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ix_sessions_user_create")
                .table("sessions")
                .col("user_id")
                .col("create_time")
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table("refresh_tokens")
                // SHA-256 (hex) of the token; the token itself is never stored.
                .col(string("token_hash").primary_key())
                .col(uuid("session_id"))
                .col(timestamp_with_time_zone("create_time"))
                // Set when exchanged: presenting it again means it was copied, and ends the session.
                .col(timestamp_with_time_zone_null("rotate_time"))
                .foreign_key(
                    ForeignKey::create()
                        .from("refresh_tokens", "session_id")
                        .to("sessions", "session_id")
                        .on_delete(ForeignKeyAction::Cascade),
                )
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create().name("ix_refresh_tokens_session").table("refresh_tokens").col("session_id").to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table("login_states")
                .col(uuid("user_id").primary_key())
                // Failed logins in a row since the last success or lockout.
                .col(integer("failed_logins"))
                // Lockouts in a row (each doubles the next one), reset by a successful login.
                .col(integer("lockouts"))
                .col(timestamp_with_time_zone_null("locked_until"))
                // Base32 TOTP secret once confirmed, and one being enrolled.
                .col(string_null("totp_secret"))
                .col(string_null("totp_pending_secret"))
                // Last accepted TOTP time step: a code is accepted once.
                .col(big_integer_null("totp_last_step"))
                .foreign_key(
                    ForeignKey::create()
                        .from("login_states", "user_id")
                        .to("users", "user_id")
                        .on_delete(ForeignKeyAction::Cascade),
                )
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table("recovery_codes")
                .col(uuid("user_id"))
                // SHA-256 (hex) of the code.
                .col(string("code_hash"))
                .col(timestamp_with_time_zone("create_time"))
                .col(timestamp_with_time_zone_null("used_time"))
                .primary_key(Index::create().col("user_id").col("code_hash"))
                .foreign_key(
                    ForeignKey::create()
                        .from("recovery_codes", "user_id")
                        .to("users", "user_id")
                        .on_delete(ForeignKeyAction::Cascade),
                )
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table("signing_keys")
                .col(string("kid").primary_key())
                .col(string("alg"))
                // Base64url Ed25519 seed (private) and public key.
                .col(text("private_key"))
                .col(string("public_key"))
                .col(timestamp_with_time_zone("create_time"))
                // When a newer key replaced it; it verifies until every token it signed has expired.
                .col(timestamp_with_time_zone_null("retire_time"))
                .to_owned(),
        )
        .await?;
        Ok(())
    }
}
