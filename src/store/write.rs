//! The write path: [`Db::write`] runs an operation in one transaction with its idempotency record,
//! policy-version bumps, audit events and (PostgreSQL) notifications to other replicas, so that a
//! change, its audit trail and its cache invalidation commit together or not at all.

use std::{sync::Arc, time::Duration};

use sea_orm::{
    ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, TransactionTrait,
    sea_query::{OnConflict, Query},
};
use serde::{Serialize, de::DeserializeOwned};

use super::{
    audit,
    db::{Backend, ChangeScope, Db, POLICY_CHANNEL, PolicyChange, Tx, raw},
    entity::idempotency_keys,
};
use crate::domain::{
    Error, Kind, Reason, Result,
    audit::{Idempotency, RequestContext},
    now,
};

impl Db {
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
            outbox_queued: Default::default(),
        };
        match self.run_in(&tx, ctx, f).await {
            Ok(Outcome::Done(value, last_seq, changes)) => {
                tx.txn.commit().await?;
                if tx.outbox_queued.load(std::sync::atomic::Ordering::Relaxed) {
                    self.outbox_commits.notify_one();
                }
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

enum Outcome<T> {
    Done(T, Option<i64>, Vec<PolicyChange>),
    Replayed(T),
}

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

/// Deletes idempotency keys stored before `before`; returns how many.
pub async fn sweep_idempotency_keys(conn: &impl ConnectionTrait, before: chrono::DateTime<chrono::Utc>) -> Result<u64> {
    Ok(idempotency_keys::Entity::delete_many()
        .filter(idempotency_keys::Column::CreateTime.lt(before))
        .exec(conn)
        .await?
        .rows_affected)
}
