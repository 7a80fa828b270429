//! Persistence: SeaORM entities and queries. Writes go through [`db::Db::write`].

pub mod audit;
pub mod db;
pub mod departments;
pub mod entity;
pub mod ownership;
pub mod roles;
pub mod sealed;
pub mod sessions;
pub mod tenants;
pub mod tokens;
pub mod transfers;
pub mod users;

pub use db::{Backend, ChangeScope, Db, DbConfig, PolicyChange, Tx};
