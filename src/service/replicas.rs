//! Hearing about commits of other replicas (PostgreSQL only): one LISTEN connection for policy
//! changes (the access cache) and audit appends (the audit hub), plus the policy-version poll as
//! the safety net for notifications lost while the listener was reconnecting.

use std::time::Duration;

use sea_orm::{EntityTrait, QuerySelect, sqlx};
use tokio_util::sync::CancellationToken;

use super::Iam;
use crate::store::{Backend, PolicyChange, audit::AUDIT_CHANNEL, db::POLICY_CHANNEL, entity::tenants};

/// Runs until stopped; returns at once on SQLite (one process owns the database).
pub async fn follow(iam: Iam, poll_interval: Duration, stop: CancellationToken) {
    if iam.db.backend() != Backend::Postgres {
        return;
    }
    tokio::join!(listen(iam.clone(), stop.clone()), poll(iam, poll_interval, stop));
}

async fn listen(iam: Iam, stop: CancellationToken) {
    let pool = iam.db.conn().get_postgres_connection_pool().clone();
    loop {
        let mut listener = match sqlx::postgres::PgListener::connect_with(&pool).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "replica listener cannot connect; retrying");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        if let Err(e) = listener.listen_all([POLICY_CHANNEL, AUDIT_CHANNEL]).await {
            tracing::warn!(error = %e, "LISTEN failed; retrying");
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
            }
        }
        // Anything may have changed while we were not listening.
        iam.access.clear();
        iam.audit.wake();
        loop {
            let next = tokio::select! {
                _ = stop.cancelled() => return,
                n = listener.try_recv() => n,
            };
            match next {
                Ok(Some(n)) if n.channel() == AUDIT_CHANNEL => iam.audit.wake(),
                Ok(Some(n)) => match PolicyChange::parse(n.payload()) {
                    Some(change) => iam.access.apply(&[change]),
                    None => tracing::warn!(payload = n.payload(), "malformed policy notification"),
                },
                // The connection was lost: notifications may be missing, start over.
                Ok(None) | Err(_) => {
                    tracing::warn!("replica listener lost its connection; flushing the access cache");
                    iam.access.clear();
                    break;
                }
            }
        }
    }
}

async fn poll(iam: Iam, interval: Duration, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        let versions: Result<Vec<(String, i64)>, _> = tenants::Entity::find()
            .select_only()
            .column(tenants::Column::TenantId)
            .column(tenants::Column::PolicyVersion)
            .into_tuple()
            .all(iam.db.conn())
            .await;
        match versions {
            Ok(v) => {
                let flushed = iam.access.reconcile(&v);
                if flushed > 0 {
                    tracing::info!(flushed, "policy versions moved without notification; tenants flushed");
                }
            }
            Err(e) => tracing::debug!(error = %e, "policy version poll failed"),
        }
    }
}
