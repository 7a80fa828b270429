//! The database handle and the one way to write: [`Db::write`].
//!
//! Every mutation runs inside `Db::write`, which
//! - serializes writers on SQLite (one writer at a time, in FIFO order, so callers never see
//!   `database is locked`); PostgreSQL writers run concurrently and serialize per tenant with row locks;
//! - claims the request's idempotency key first and, on a retry, returns the stored first result;
//! - appends the audit events the operation queued, as the last statements before commit, so the
//!   change and its audit trail commit (or vanish) together.

use std::{
    collections::HashSet,
    sync::{Arc, OnceLock},
    time::Duration,
};

use sea_orm::{
    ConnectOptions, ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, DbErr, Statement,
    sqlx::{self, sqlite::SqliteConnectOptions},
};
use tokio::sync::{Mutex, watch};
use uuid::Uuid;

use crate::domain::{Error, Kind, Reason, audit::AuditRecord};

/// Which database the service runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Connection settings.
#[derive(Debug, Clone)]
pub struct DbConfig {
    pub url: String,
    pub max_connections: u32,
    pub connect_timeout: Duration,
    /// Testing aid: sleep a random time up to this long between appending audit events and
    /// committing, to widen the window in which commits could reorder. Zero in production.
    pub commit_delay_max: Duration,
}

/// A pooled connection to SQLite or PostgreSQL.
#[derive(Clone)]
pub struct Db {
    pub(super) conn: DatabaseConnection,
    pub(super) backend: Backend,
    /// SQLite only: the single-writer lock (tokio's mutex is fair: writers go in arrival order).
    pub(super) write_lock: Option<Arc<Mutex<()>>>,
    /// Highest audit `seq` committed through this process; stream subscribers watch it.
    pub(super) audit_seq: Arc<watch::Sender<i64>>,
    /// Called after commit with the access-policy changes of the transaction.
    pub(super) policy_hook: Arc<OnceLock<PolicyHook>>,
    /// Notified after each commit that queued notifications (the outbox worker waits on it).
    pub(super) outbox_commits: Arc<tokio::sync::Notify>,
    pub(super) commit_delay_max: Duration,
}

/// Receives the access-policy changes of each committed transaction.
pub type PolicyHook = Box<dyn Fn(&[PolicyChange]) + Send + Sync>;

/// What a committed change touched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChangeScope {
    /// The tenant's rules as a whole (roles, departments, modules).
    Tenant,
    /// One user (state, department, roles), profile included.
    User(Uuid),
    /// One user's profile only (what GetUser shows, e.g. the last login time), not their access:
    /// the policy version does not move.
    Profile(Uuid),
    /// The ownership registry of the tenant.
    Owners,
}

/// A committed change that affects access decisions in a tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyChange {
    pub tenant_id: String,
    pub scope: ChangeScope,
    /// The tenant's policy version after the change (0 for a profile change, which leaves it).
    pub version: i64,
    /// Owners scope, in this process only: exactly which records changed owner (None: any may
    /// have). Other replicas hear "owners" and drop the tenant's cached owners as a whole.
    pub owner_keys: Option<Arc<Vec<OwnerKey>>>,
}

/// PostgreSQL channel on which policy changes are announced to every replica.
pub const POLICY_CHANNEL: &str = "crm_iam_policy";

/// An open write transaction. Derefs to the SeaORM transaction for queries.
pub struct Tx {
    pub(super) txn: DatabaseTransaction,
    pub(super) backend: Backend,
    pub(super) audit: std::sync::Mutex<Vec<AuditRecord>>,
    /// A set: a transaction that touches many users (a role replaced for all its holders) records
    /// each change once without scanning what it recorded before.
    pub(super) policy: std::sync::Mutex<HashSet<(String, ChangeScope)>>,
    /// Per tenant: the records whose owner changed (None once a change named no records).
    pub(super) owner_keys: std::sync::Mutex<Vec<(String, Option<Vec<OwnerKey>>)>>,
    /// Set when the transaction queued a notification.
    pub(super) outbox_queued: std::sync::atomic::AtomicBool,
}

/// A record of the ownership registry: (module, record id).
pub type OwnerKey = (String, String);

impl std::ops::Deref for Tx {
    type Target = DatabaseTransaction;
    fn deref(&self) -> &DatabaseTransaction {
        &self.txn
    }
}

impl Tx {
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Queues an audit event; it is written just before commit, in this transaction.
    pub fn audit(&self, record: AuditRecord) {
        self.audit.lock().expect("audit queue poisoned").push(record);
    }

    /// Records that access decisions of the tenant change with this transaction: for one user,
    /// or (None) for the tenant's rules as a whole. Caches are invalidated before the caller is answered.
    pub fn policy_changed(&self, tenant_id: &str, user_id: Option<Uuid>) {
        self.changed(tenant_id, user_id.map_or(ChangeScope::Tenant, ChangeScope::User));
    }

    /// Records that a user's row or roles change with this transaction (called by every store
    /// function that writes them, so no cached profile outlives a committed write).
    pub fn profile_changed(&self, tenant_id: &str, user_id: Uuid) {
        self.changed(tenant_id, ChangeScope::Profile(user_id));
    }

    /// Records that the tenant's ownership registry changes with this transaction: these (module,
    /// record id) pairs (the local cache then drops just them), or any record (None).
    pub fn owners_changed(&self, tenant_id: &str, keys: Option<Vec<OwnerKey>>) {
        self.changed(tenant_id, ChangeScope::Owners);
        let mut all = self.owner_keys.lock().expect("owner keys poisoned");
        match all.iter_mut().find(|(t, _)| t == tenant_id) {
            None => all.push((tenant_id.to_owned(), keys)),
            Some((_, existing)) => match (existing.as_mut(), keys) {
                (Some(e), Some(k)) => e.extend(k),
                _ => *existing = None,
            },
        }
    }

    fn changed(&self, tenant_id: &str, scope: ChangeScope) {
        self.policy.lock().expect("policy queue poisoned").insert((tenant_id.to_owned(), scope));
    }
}

impl Db {
    /// Connects (creating the SQLite file if needed). SQLite runs in WAL mode with foreign keys
    /// on, a busy timeout, and `synchronous=FULL` so that an acknowledged write survives a crash.
    pub async fn connect(config: &DbConfig) -> anyhow::Result<Db> {
        let backend = if config.url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if config.url.starts_with("postgres:") || config.url.starts_with("postgresql:") {
            Backend::Postgres
        } else {
            anyhow::bail!("database URL must start with sqlite:// or postgres://");
        };
        let mut opts = ConnectOptions::new(config.url.clone());
        opts.max_connections(config.max_connections)
            .min_connections(1)
            .connect_timeout(config.connect_timeout)
            .acquire_timeout(config.connect_timeout)
            .sqlx_logging(false)
            // A stale pooled connection shows up as an error on use, which the health check sees;
            // pinging before every acquire would cost ~20% of throughput on PostgreSQL.
            .test_before_acquire(false);
        if backend == Backend::Sqlite {
            opts.map_sqlx_sqlite_opts(|o: SqliteConnectOptions| {
                o.create_if_missing(true)
                    .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
                    .synchronous(sqlx::sqlite::SqliteSynchronous::Full)
                    .foreign_keys(true)
                    .busy_timeout(Duration::from_secs(10))
            });
        }
        let conn = sea_orm::Database::connect(opts).await?;
        Ok(Db {
            conn,
            backend,
            write_lock: (backend == Backend::Sqlite).then(|| Arc::new(Mutex::new(()))),
            audit_seq: Arc::new(watch::channel(0).0),
            policy_hook: Arc::new(OnceLock::new()),
            outbox_commits: Arc::new(tokio::sync::Notify::new()),
            commit_delay_max: config.commit_delay_max,
        })
    }

    /// The connection pool: (open, idle) connections.
    pub fn pool_stats(&self) -> (u32, usize) {
        match self.backend() {
            Backend::Sqlite => {
                let p = self.conn().get_sqlite_connection_pool();
                (p.size(), p.num_idle())
            }
            Backend::Postgres => {
                let p = self.conn().get_postgres_connection_pool();
                (p.size(), p.num_idle())
            }
        }
    }

    pub fn conn(&self) -> &DatabaseConnection {
        &self.conn
    }

    /// Runs statements outside a transaction (sweeps) as this process's only writer. On SQLite a
    /// transaction reads before it writes; a statement of another connection committing in between
    /// makes SQLite refuse the transaction's first write at once (SQLITE_BUSY_SNAPSHOT, answered
    /// UNAVAILABLE), without waiting for the busy timeout. Holding the write lock of
    /// [`Db::write`] keeps them apart; on PostgreSQL it runs `f` as is.
    pub async fn serialized<T>(
        &self,
        f: impl AsyncFnOnce(&DatabaseConnection) -> crate::domain::Result<T>,
    ) -> crate::domain::Result<T> {
        let _writer = match &self.write_lock {
            Some(lock) => Some(lock.lock().await),
            None => None,
        };
        f(&self.conn).await
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Notified after every commit that queued notifications.
    pub fn outbox_commits(&self) -> Arc<tokio::sync::Notify> {
        self.outbox_commits.clone()
    }

    /// Sets the receiver of policy changes (once).
    pub fn on_policy_change(&self, hook: PolicyHook) {
        if self.policy_hook.set(hook).is_err() {
            tracing::warn!("policy hook already set");
        }
    }

    /// Subscribes to "audit events up to this seq were committed by this process".
    pub fn audit_commits(&self) -> watch::Receiver<i64> {
        self.audit_seq.subscribe()
    }

    /// Applies pending migrations. On PostgreSQL an advisory lock keeps replicas that start
    /// together from migrating at the same time.
    pub async fn migrate(&self) -> anyhow::Result<()> {
        use sea_orm_migration::MigratorTrait;
        match self.backend {
            Backend::Sqlite => crm_iam_migrations::Migrator::up(&self.conn, None).await?,
            Backend::Postgres => {
                let pool = self.conn.get_postgres_connection_pool();
                let mut lock_conn = pool.acquire().await?;
                sqlx::query("SELECT pg_advisory_lock($1)").bind(MIGRATION_LOCK_KEY).execute(&mut *lock_conn).await?;
                let result = crm_iam_migrations::Migrator::up(&self.conn, None).await;
                sqlx::query("SELECT pg_advisory_unlock($1)").bind(MIGRATION_LOCK_KEY).execute(&mut *lock_conn).await?;
                result?;
            }
        }
        Ok(())
    }

    /// True when the database answers a trivial query.
    pub async fn ping(&self) -> bool {
        self.conn.query_one_raw(Statement::from_string(self.conn.get_database_backend(), "SELECT 1")).await.is_ok()
    }
}

impl PolicyChange {
    /// `<version> <tenant> <user id | profile:<user id> | * | owners>`, the notification payload.
    pub fn payload(&self) -> String {
        match self.scope {
            ChangeScope::User(u) => format!("{} {} {u}", self.version, self.tenant_id),
            ChangeScope::Profile(u) => format!("{} {} profile:{u}", self.version, self.tenant_id),
            ChangeScope::Tenant => format!("{} {} *", self.version, self.tenant_id),
            ChangeScope::Owners => format!("{} {} owners", self.version, self.tenant_id),
        }
    }

    pub fn parse(payload: &str) -> Option<PolicyChange> {
        let mut parts = payload.split(' ');
        let version = parts.next()?.parse().ok()?;
        let tenant_id = parts.next()?.to_owned();
        let scope = match parts.next()? {
            "*" => ChangeScope::Tenant,
            "owners" => ChangeScope::Owners,
            p if p.starts_with("profile:") => ChangeScope::Profile(Uuid::parse_str(&p["profile:".len()..]).ok()?),
            u => ChangeScope::User(Uuid::parse_str(u).ok()?),
        };
        Some(PolicyChange { tenant_id, scope, version, owner_keys: None })
    }
}

const MIGRATION_LOCK_KEY: i64 = 0x0063_726d_5f6d_6967; // "crm_mig"

/// Whether a database error means "cannot reach or use the database right now" (retryable),
/// as opposed to a bug or a violated constraint.
fn is_unavailable(e: &DbErr) -> bool {
    use sea_orm::RuntimeErr;
    match e {
        DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => true,
        DbErr::Exec(RuntimeErr::SqlxError(s)) | DbErr::Query(RuntimeErr::SqlxError(s)) => match s.as_ref() {
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => true,
            // SQLITE_BUSY (another process holds the write lock past the busy timeout) and
            // PostgreSQL's "cannot connect now" / admin shutdown classes.
            sqlx::Error::Database(d) => {
                matches!(d.code().as_deref(), Some("5" | "517" | "57P01" | "57P02" | "57P03" | "53300"))
            }
            _ => false,
        },
        _ => false,
    }
}

/// A transaction PostgreSQL aborted to resolve a conflict with another (deadlock, serialization
/// failure): nothing was changed, and the caller may retry.
fn is_conflict(e: &DbErr) -> bool {
    use sea_orm::RuntimeErr;
    match e {
        DbErr::Exec(RuntimeErr::SqlxError(s)) | DbErr::Query(RuntimeErr::SqlxError(s)) => {
            matches!(s.as_ref(), sqlx::Error::Database(d) if matches!(d.code().as_deref(), Some("40P01" | "40001")))
        }
        _ => false,
    }
}

impl From<DbErr> for Error {
    fn from(e: DbErr) -> Self {
        if is_unavailable(&e) {
            tracing::warn!(error = %e, "database unavailable");
            Error::unavailable("the database is unavailable; retry later")
        } else if is_conflict(&e) {
            tracing::warn!(error = %e, "transaction aborted by a conflict with another");
            Error::new(
                Kind::Aborted,
                Reason::Conflict,
                "the change conflicted with a concurrent one and was not made: retry",
            )
        } else {
            Error::internal(e)
        }
    }
}

/// If `e` is a unique-constraint violation whose message names any of `needles` (an index name on
/// PostgreSQL, a column list on SQLite), returns `mapped`; otherwise the generic mapping.
pub fn map_unique(e: DbErr, needles: &[&str], mapped: impl FnOnce() -> Error) -> Error {
    if let Some(sea_orm::SqlErr::UniqueConstraintViolation(msg)) = e.sql_err()
        && needles.iter().any(|n| msg.contains(n))
    {
        return mapped();
    }
    e.into()
}

/// Backend-specific raw statement.
pub fn raw(backend: Backend, sql: &str, values: Vec<sea_orm::Value>) -> Statement {
    let db = match backend {
        Backend::Sqlite => DbBackend::Sqlite,
        Backend::Postgres => DbBackend::Postgres,
    };
    Statement::from_sql_and_values(db, sql, values)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notification_payloads_round_trip() {
        let u = Uuid::new_v4();
        for scope in [ChangeScope::Tenant, ChangeScope::Owners, ChangeScope::User(u), ChangeScope::Profile(u)] {
            let change = PolicyChange { tenant_id: "acme".into(), scope, version: 7, owner_keys: None };
            assert_eq!(PolicyChange::parse(&change.payload()), Some(change));
        }
        assert_eq!(PolicyChange::parse("7 acme profile:not-a-uuid"), None);
        assert_eq!(PolicyChange::parse("7 acme"), None);
    }
}
