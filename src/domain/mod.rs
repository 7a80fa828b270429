//! Domain types and rules. No gRPC, protobuf or database types in here.

pub mod access;
pub mod audit;
pub mod caller;
pub mod delegation;
pub mod department;
pub mod error;
pub mod lockout;
pub mod notification;
pub mod ownership;
pub mod role;
pub mod tenant;
pub mod user;
pub mod validate;

pub use error::{Error, Kind, Reason, Result, Violations};

use chrono::{DateTime, SubsecRound, Utc};

/// The current time at microsecond precision (what PostgreSQL stores), so values read back
/// compare equal to those written on both databases.
pub fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

/// The etag of a resource at a version.
pub fn etag(version: i64) -> String {
    format!("v{version}")
}

/// Checks an etag sent by a caller against the current version (empty = no check).
pub fn check_etag(sent: &str, version: i64, what: &str) -> Result<()> {
    if sent.is_empty() || sent == etag(version) { Ok(()) } else { Err(Error::etag_mismatch(what)) }
}
