//! Application services: each operation validates what needs the database, runs in one
//! [`Db::write`] transaction (which also writes its audit events and idempotency record), and
//! returns domain values. The gRPC layer above only converts and authorizes.

pub mod access;
mod address_limiter;
pub mod audit;
pub mod auth;
mod authz;
mod departments;
pub mod envoy;
pub mod notify;
pub mod outbound;
pub mod ownership;
pub mod replicas;
pub mod roles;
pub mod scim;
pub mod sso;
pub mod tenants;
pub mod transfers;
pub mod users;

use std::sync::Arc;

pub use authz::{Target, require_platform, same_tenant as authz_same_tenant};
pub use users::PurgeReport;

use self::auth::hashing::Passwords;
use crate::{
    domain::{Result, now},
    store::{self, Db},
};

/// One call of an operation: who asks (every operation authorizes its caller itself, so no RPC
/// can forget to) and the context its changes are recorded with (actor, the idempotency key of a
/// mutating request, trace, peer).
#[derive(Debug, Clone)]
pub struct Call {
    pub caller: crate::domain::caller::Caller,
    pub ctx: crate::domain::audit::RequestContext,
}

/// The crm-iam application: storage, the password hashing pool and the access cache.
#[derive(Clone)]
pub struct Iam {
    pub db: Db,
    pub passwords: Passwords,
    pub access: Arc<access::AccessCache>,
    pub audit: Arc<audit::AuditHub>,
    /// Cancelled when the server shuts down: streams and background jobs end.
    pub stop: tokio_util::sync::CancellationToken,
    /// Wakes this replica's transfer worker when a job is created here.
    pub transfer_wake: Arc<tokio::sync::Notify>,
    /// Access checks served (background jobs yield while it moves).
    pub foreground: Arc<std::sync::atomic::AtomicU64>,
    /// Token signing keys and the login limiter.
    pub auth: Arc<auth::AuthState>,
    /// The notifications outbox (channels, templates, the delivery worker's wake-up).
    pub outbox: Arc<notify::Outbox>,
    /// When each SCIM token's use was last recorded (a throttle).
    pub scim_touches: Arc<scim::ScimTouches>,
    /// Single sign-on: the identity providers' discovery documents and the HTTP client.
    pub sso: Arc<sso::Sso>,
}

impl Iam {
    pub fn new(db: Db, passwords: Passwords, auth: auth::AuthState, cache_budget: u64) -> Iam {
        let access = Arc::new(access::AccessCache::new(cache_budget));
        let cache = access.clone();
        // Every committed change to access rules reaches the cache before the caller is answered.
        db.on_policy_change(Box::new(move |changes| cache.apply(changes)));
        Iam {
            db,
            passwords,
            access,
            audit: Arc::new(audit::AuditHub::default()),
            stop: tokio_util::sync::CancellationToken::new(),
            transfer_wake: Arc::new(tokio::sync::Notify::new()),
            foreground: Default::default(),
            auth: Arc::new(auth),
            outbox: Default::default(),
            scim_touches: Default::default(),
            sso: Arc::new(sso::Sso::new(false)),
        }
    }
}

/// A page of results and whether more follow.
#[derive(Debug, Clone)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub more: bool,
}

impl<T> Page<T> {
    /// From up to `limit + 1` rows: the extra row only says that another page exists.
    pub fn from_rows(mut rows: Vec<T>, limit: u64) -> Page<T> {
        let more = rows.len() as u64 > limit;
        rows.truncate(limit as usize);
        Page { items: rows, more }
    }
}

impl Iam {
    /// Deletes idempotency keys stored before `before` (they answer retries only that long).
    pub async fn sweep_idempotency_keys(&self, before: chrono::DateTime<chrono::Utc>) -> Result<u64> {
        self.db.serialized(async |conn| store::write::sweep_idempotency_keys(conn, before).await).await
    }

    /// Deletes sessions a day after they expired (with their refresh tokens), and refresh tokens
    /// rotated more than a day ago (reuse detection needs them only while a stolen copy is fresh).
    pub async fn sweep_sessions(&self) -> Result<()> {
        self.db
            .serialized(async |conn| {
                store::sessions::sweep(conn, now() - chrono::Duration::days(1)).await?;
                // Used single sign-on states past their expiry are refused as expired anyway.
                store::sso::sweep_used_states(conn, now()).await?;
                Ok(())
            })
            .await
    }
}
