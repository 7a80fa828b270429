//! Integration tests: every test starts a real crm-iam server on an ephemeral port over a fresh
//! database and talks to it over gRPC. Each test runs on SQLite and on PostgreSQL.

mod access;
mod audit;
mod auth;
mod authz;
mod caller_scope_attacks;
mod cli;
mod common;
mod delegation_attacks;
mod departments;
mod envoy;
mod login_attacks;
mod login_identifiers;
mod notifications;
mod oidc;
mod operations;
mod ownership;
mod privacy;
mod resource_attacks;
mod roles;
mod scim;
mod secrets_at_rest;
mod server;
mod sso;
mod sso_attacks;
mod stream_attacks;
mod tenant_suspension;
mod tenant_wall;
mod tenants;
mod tls;
mod tracing;
mod user_filters;
mod users;
mod users_concurrency;
