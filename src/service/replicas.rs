//! Hearing about commits of other replicas (PostgreSQL only): one LISTEN connection for policy
//! changes (the access cache) and audit appends (the audit hub), plus the policy-version poll as
//! the safety net for notifications lost while the listener was reconnecting.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Iam;
use crate::{
    periodic::Ticks,
    store::{
        Backend,
        notifications::{Listener, Notice},
        tenants,
    },
};

/// Runs until stopped; returns at once on SQLite (one process owns the database).
pub async fn follow(iam: Iam, poll_interval: Duration, stop: CancellationToken) {
    if iam.db.backend() != Backend::Postgres {
        return;
    }
    tokio::join!(listen(iam.clone(), stop.clone()), poll(iam, poll_interval, stop));
}

async fn listen(iam: Iam, stop: CancellationToken) {
    let mut retry = Ticks::now(Duration::from_secs(1), &stop);
    while retry.next().await {
        let mut listener = match Listener::connect(&iam.db).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "replica listener cannot connect or LISTEN; retrying");
                continue;
            }
        };
        // Anything may have changed while we were not listening.
        iam.access.clear();
        iam.audit.wake();
        loop {
            let next = tokio::select! {
                _ = stop.cancelled() => return,
                n = listener.next() => n,
            };
            match next {
                Some(Notice::Audit) => iam.audit.wake(),
                Some(Notice::Policy(change)) => iam.access.apply(&[change]),
                Some(Notice::Malformed(payload)) => tracing::warn!(%payload, "malformed policy notification"),
                // The connection was lost: notifications may be missing, start over.
                None => {
                    tracing::warn!("replica listener lost its connection; flushing the access cache");
                    iam.access.clear();
                    break;
                }
            }
        }
    }
}

async fn poll(iam: Iam, interval: Duration, stop: CancellationToken) {
    let mut ticks = Ticks::after(interval, &stop);
    while ticks.next().await {
        match tenants::policy_versions(iam.db.conn()).await {
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
