//! Persistence: SeaORM entities and queries. Writes go through [`db::Db::write`].

pub mod audit;
pub mod backup;
pub mod db;
pub mod departments;
pub mod entity;
pub mod notification_templates;
pub mod notifications;
pub mod outbox;
pub mod ownership;
pub mod roles;
pub mod scim_tokens;
pub mod sealed;
pub mod sessions;
pub mod signing_keys;
pub mod sso;
pub mod tenants;
pub mod tokens;
pub mod transfers;
pub mod users;
pub mod write;

pub use db::{Backend, ChangeScope, Db, DbConfig, PolicyChange, Tx};
/// A connection or a transaction: what read queries run on.
pub use sea_orm::ConnectionTrait as Conn;
