//! Schema migrations of crm-iam.
//!
//! Every migration is written with sea-query builders, so one code path creates the same schema on
//! SQLite and PostgreSQL. One migration per file; a migration that has shipped is never edited:
//! changes come as new files.

use sea_orm_migration::prelude::*;

mod m20261122_000001_init;
mod m20261122_000002_roles;
mod m20261122_000003_audit;
mod m20261122_000004_ownership;
mod m20261130_000005_auth;
mod m20261201_000006_email_skeleton;
mod m20261206_000007_notifications;
mod m20261207_000008_scim;
mod m20261208_000009_key_activation;
mod m20261209_000010_phone_login;
mod m20261210_000011_sso;
mod m20261211_000012_tenant_suspension;

/// Applies the migrations in order (`crm-iam migrate`, or `crm-iam serve` unless `--no-migrate`).
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261122_000001_init::Migration),
            Box::new(m20261122_000002_roles::Migration),
            Box::new(m20261122_000003_audit::Migration),
            Box::new(m20261122_000004_ownership::Migration),
            Box::new(m20261130_000005_auth::Migration),
            Box::new(m20261201_000006_email_skeleton::Migration),
            Box::new(m20261206_000007_notifications::Migration),
            Box::new(m20261207_000008_scim::Migration),
            Box::new(m20261208_000009_key_activation::Migration),
            Box::new(m20261209_000010_phone_login::Migration),
            Box::new(m20261210_000011_sso::Migration),
            Box::new(m20261211_000012_tenant_suspension::Migration),
        ]
    }
}
