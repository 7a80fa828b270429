//! SeaORM entities, one file per table (schema in `migrations/`).

pub mod audit_events;
pub mod audit_watermarks;
pub mod departments;
pub mod idempotency_keys;
pub mod modules;
pub mod ownerships;
pub mod roles;
pub mod tenants;
pub mod transfers;
pub mod user_roles;
pub mod user_tokens;
pub mod users;
