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
    ConnectOptions, ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, DbErr, EntityTrait,
    QueryFilter, Statement, TransactionTrait,
    sea_query::{OnConflict, Query},
    sqlx::{self, sqlite::SqliteConnectOptions},
};
use serde::{Serialize, de::DeserializeOwned};
use tokio::sync::{Mutex, watch};
use uuid::Uuid;

use super::{audit, entity::idempotency_keys};
use crate::domain::{
    Error, Kind, Reason, Result,
    audit::{AuditRecord, Idempotency, RequestContext},
    now,
};

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
    conn: DatabaseConnection,
    backend: Backend,
    /// SQLite only: the single-writer lock (tokio's mutex is fair: writers go in arrival order).
    write_lock: Option<Arc<Mutex<()>>>,
    /// Highest audit `seq` committed through this process; stream subscribers watch it.
    audit_seq: Arc<watch::Sender<i64>>,
    /// Called after commit with the access-policy changes of the transaction.
    policy_hook: Arc<OnceLock<PolicyHook>>,
    commit_delay_max: Duration,
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
    txn: DatabaseTransaction,
    backend: Backend,
    audit: std::sync::Mutex<Vec<AuditRecord>>,
    /// A set: a transaction that touches many users (a role replaced for all its holders) records
    /// each change once without scanning what it recorded before.
    policy: std::sync::Mutex<HashSet<(String, ChangeScope)>>,
    /// Per tenant: the records whose owner changed (None once a change named no records).
    owner_keys: std::sync::Mutex<Vec<(String, Option<Vec<OwnerKey>>)>>,
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
            commit_delay_max: config.commit_delay_max,
        })
    }

    pub fn conn(&self) -> &DatabaseConnection {
        &self.conn
    }

    pub fn backend(&self) -> Backend {
        self.backend
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

    /// Runs `f` in a write transaction: see the module docs. With an idempotency key, a retry of
    /// an operation that committed returns its stored result without running `f` again, and a
    /// reuse of the key for a different request is INVALID_ARGUMENT.
    pub async fn write<T>(&self, ctx: &RequestContext, f: impl AsyncFnOnce(&Tx) -> Result<T>) -> Result<T>
    where
        T: Serialize + DeserializeOwned,
    {
        let _writer = match &self.write_lock {
            Some(lock) => Some(lock.lock().await),
            None => None,
        };
        let tx = Tx {
            txn: self.conn.begin().await?,
            backend: self.backend,
            audit: Default::default(),
            policy: Default::default(),
            owner_keys: Default::default(),
        };
        match self.run_in(&tx, ctx, f).await {
            Ok(Outcome::Done(value, last_seq, changes)) => {
                tx.txn.commit().await?;
                if !changes.is_empty()
                    && let Some(hook) = self.policy_hook.get()
                {
                    hook(&changes);
                }
                if let Some(seq) = last_seq {
                    self.audit_seq.send_if_modified(|current| {
                        let newer = seq > *current;
                        if newer {
                            *current = seq;
                        }
                        newer
                    });
                }
                Ok(value)
            }
            Ok(Outcome::Replayed(value)) => {
                tx.txn.rollback().await?;
                Ok(value)
            }
            Err(e) => {
                // Roll back before the writer lock is released, so the next writer starts clean.
                if let Err(rollback) = tx.txn.rollback().await {
                    tracing::warn!(error = %rollback, "rollback failed");
                }
                Err(e)
            }
        }
    }

    async fn run_in<T>(
        &self,
        tx: &Tx,
        ctx: &RequestContext,
        f: impl AsyncFnOnce(&Tx) -> Result<T>,
    ) -> Result<Outcome<T>>
    where
        T: Serialize + DeserializeOwned,
    {
        let idem = ctx.idempotency.as_ref();
        if let Some(idem) = idem
            && let Some(stored) = claim_key(tx, idem).await?
        {
            return Ok(Outcome::Replayed(stored));
        }
        let value = f(tx).await?;
        if let Some(idem) = idem {
            let json = serde_json::to_string(&value).map_err(Error::internal)?;
            idempotency_keys::Entity::update_many()
                .col_expr(idempotency_keys::Column::Response, json.into())
                .filter(idempotency_keys::Column::Scope.eq(idem.scope.as_str()))
                .filter(idempotency_keys::Column::RequestId.eq(idem.key.as_str()))
                .exec(&tx.txn)
                .await?;
        }
        let changes = self.bump_policy_versions(tx).await?;
        let records = std::mem::take(&mut *tx.audit.lock().expect("audit queue poisoned"));
        let last_seq = audit::append(tx, ctx, records).await?;
        if self.backend == Backend::Postgres {
            // Tells every replica, at commit, of the changes and of the new audit events (which
            // wakes their audit streams): one statement for all of them.
            let mut notices: Vec<(&str, String)> = changes.iter().map(|c| (POLICY_CHANNEL, c.payload())).collect();
            if let Some(seq) = last_seq {
                notices.push((audit::AUDIT_CHANNEL, seq.to_string()));
            }
            // (in chunks: a statement takes at most 65,535 parameters)
            for chunk in notices.chunks(1000) {
                let calls: Vec<String> =
                    (0..chunk.len()).map(|i| format!("pg_notify(${}, ${})", 2 * i + 1, 2 * i + 2)).collect();
                let values = chunk.iter().flat_map(|(channel, payload)| [(*channel).into(), payload.clone().into()]);
                tx.execute_raw(raw(Backend::Postgres, &format!("SELECT {}", calls.join(", ")), values.collect()))
                    .await?;
            }
        }
        if !self.commit_delay_max.is_zero() {
            let delay = rand::Rng::random_range(&mut rand::rng(), Duration::ZERO..=self.commit_delay_max);
            tokio::time::sleep(delay).await;
        }
        Ok(Outcome::Done(value, last_seq, changes))
    }

    /// Bumps the policy version of every tenant the transaction changed (profile-only changes
    /// leave it) and returns the changes.
    async fn bump_policy_versions(&self, tx: &Tx) -> Result<Vec<PolicyChange>> {
        let set = std::mem::take(&mut *tx.policy.lock().expect("policy queue poisoned"));
        // Tenants in a fixed order, so transactions touching the same tenants lock their rows in
        // the same order.
        let mut queued: Vec<(String, ChangeScope)> = set.iter().cloned().collect();
        queued.sort_by(|a, b| a.0.cmp(&b.0));
        let mut versions: Vec<(String, i64)> = Vec::new();
        let mut changes = Vec::with_capacity(queued.len());
        for (tenant_id, scope) in queued {
            if let ChangeScope::Profile(u) = scope {
                // A change of the user's access (or the tenant's) drops the profile too.
                let covered = set.contains(&(tenant_id.clone(), ChangeScope::Tenant))
                    || set.contains(&(tenant_id.clone(), ChangeScope::User(u)));
                if !covered {
                    changes.push(PolicyChange { tenant_id, scope, version: 0, owner_keys: None });
                }
                continue;
            }
            let version = match versions.iter().find(|(t, _)| *t == tenant_id) {
                Some((_, v)) => *v,
                None => {
                    let sql = match self.backend {
                        Backend::Sqlite => {
                            "UPDATE tenants SET policy_version = policy_version + 1 WHERE tenant_id = ? RETURNING policy_version"
                        }
                        Backend::Postgres => {
                            "UPDATE tenants SET policy_version = policy_version + 1 WHERE tenant_id = $1 RETURNING policy_version"
                        }
                    };
                    let row = tx.query_one_raw(raw(self.backend, sql, vec![tenant_id.clone().into()])).await?;
                    let v: i64 = match row {
                        Some(r) => r.try_get_by_index(0)?,
                        None => continue, // the tenant does not exist: nothing to invalidate
                    };
                    versions.push((tenant_id.clone(), v));
                    v
                }
            };
            let owner_keys = match scope {
                ChangeScope::Owners => tx
                    .owner_keys
                    .lock()
                    .expect("owner keys poisoned")
                    .iter_mut()
                    .find(|(t, _)| *t == tenant_id)
                    .and_then(|(_, k)| k.take())
                    .map(Arc::new),
                _ => None,
            };
            changes.push(PolicyChange { tenant_id, scope, version, owner_keys });
        }
        Ok(changes)
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

enum Outcome<T> {
    Done(T, Option<i64>, Vec<PolicyChange>),
    Replayed(T),
}

use sea_orm::ColumnTrait;

/// Claims an idempotency key for this transaction. Returns the stored result when the key was
/// used before by the same request. The insert comes first: a concurrent request with the same
/// key waits on it (PostgreSQL) or on the writer lock (SQLite), then sees the committed row.
async fn claim_key<T: DeserializeOwned>(tx: &Tx, idem: &Idempotency) -> Result<Option<T>> {
    let insert = Query::insert()
        .into_table(idempotency_keys::Entity)
        .columns([
            idempotency_keys::Column::Scope,
            idempotency_keys::Column::RequestId,
            idempotency_keys::Column::Method,
            idempotency_keys::Column::Fingerprint,
            idempotency_keys::Column::CreateTime,
        ])
        .values_panic([
            idem.scope.clone().into(),
            idem.key.clone().into(),
            idem.method.into(),
            idem.fingerprint.clone().into(),
            now().into(),
        ])
        .on_conflict(
            OnConflict::columns([idempotency_keys::Column::Scope, idempotency_keys::Column::RequestId])
                .do_nothing()
                .to_owned(),
        )
        .to_owned();
    if tx.execute(&insert).await?.rows_affected() == 1 {
        return Ok(None);
    }
    let row = idempotency_keys::Entity::find_by_id((idem.scope.clone(), idem.key.clone()))
        .one(&tx.txn)
        .await?
        .ok_or_else(|| Error::internal(anyhow::anyhow!("idempotency key vanished")))?;
    if row.method != idem.method || row.fingerprint != idem.fingerprint {
        return Err(Error::new(
            Kind::InvalidArgument,
            Reason::IdempotencyKeyReused,
            "request_id was already used for a different request: use a new request_id for a new request",
        ));
    }
    let stored = row.response.ok_or_else(|| Error::internal(anyhow::anyhow!("idempotency key without response")))?;
    serde_json::from_str(&stored).map(Some).map_err(Error::internal)
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
