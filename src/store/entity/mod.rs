//! SeaORM entities, one file per table (schema in `migrations/`).

pub mod audit_events;
pub mod audit_watermarks;
pub mod departments;
pub mod idempotency_keys;
pub mod identity_providers;
pub mod login_states;
pub mod modules;
pub mod notification_templates;
pub mod notifications;
pub mod ownerships;
pub mod recovery_codes;
pub mod refresh_tokens;
pub mod roles;
pub mod scim_tokens;
pub mod sessions;
pub mod signing_keys;
pub mod sso_links;
pub mod sso_used_states;
pub mod tenants;
pub mod transfers;
pub mod user_roles;
pub mod user_tokens;
pub mod users;
