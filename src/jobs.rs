//! Background jobs: the purge sweeper, the idempotency-key sweeper and signing-key upkeep. Each
//! runs until shutdown.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::{domain::now, periodic::Ticks, service::Iam};

/// Purges DELETED users whose restore window has passed, every `interval`.
pub async fn purge_sweeper(iam: Iam, interval: Duration, stop: CancellationToken) {
    let mut ticks = Ticks::now(interval, &stop);
    while ticks.next().await {
        match iam.purge_expired(now(), 200).await {
            Ok(r) if r.purged > 0 => {
                tracing::info!(purged = r.purged, "purged users past their restore window")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "purge sweep failed; will retry"),
        }
    }
}

/// Deletes idempotency keys older than `retention`, and old sessions, hourly (and at start).
pub async fn idempotency_sweeper(iam: Iam, retention: Duration, stop: CancellationToken) {
    let mut ticks = Ticks::now(Duration::from_secs(3600), &stop);
    while ticks.next().await {
        let cutoff = now() - chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::days(2));
        if let Err(e) = iam.sweep_idempotency_keys(cutoff).await {
            tracing::warn!(error = %e, "idempotency key sweep failed; will retry");
        }
        if let Err(e) = iam.sweep_sessions().await {
            tracing::warn!(error = %e, "session sweep failed; will retry");
        }
    }
}

/// Deletes audit events past their tenant's (or the platform's) retention, every `interval`.
pub async fn audit_retention(iam: Iam, platform_retention: Duration, interval: Duration, stop: CancellationToken) {
    let mut ticks = Ticks::now(interval, &stop);
    while ticks.next().await {
        match iam.enforce_audit_retention(platform_retention).await {
            Ok(n) if n > 0 => tracing::info!(deleted = n, "audit events past retention deleted"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "audit retention failed; will retry"),
        }
    }
}

/// Keeps this replica's signing keys current: re-reads them every minute (a rotation on another
/// replica reaches this one) and rotates the signing key once it is older than `rotation`, or at
/// once when `signing_algorithm` names another algorithm than the newest key's.
pub async fn signing_keys(iam: Iam, rotation: Duration, stop: CancellationToken) {
    use crate::service::auth::keys::RELOAD_INTERVAL;
    rotate_key_if_due(&iam, rotation).await;
    let mut ticks = Ticks::after(RELOAD_INTERVAL, &stop);
    while ticks.next().await {
        if let Err(e) = iam.auth.keys.refresh_if_stale().await {
            tracing::warn!(error = %e, "signing keys could not be reloaded; will retry");
            continue;
        }
        rotate_key_if_due(&iam, rotation).await;
    }
}

async fn rotate_key_if_due(iam: &Iam, rotation: Duration) {
    let why = if iam.auth.keys.algorithm_differs() {
        "signing_algorithm changed"
    } else if rotation.is_zero() {
        return;
    } else {
        match iam.auth.keys.signing_key_age().await {
            Ok(Some(age)) if age.to_std().unwrap_or_default() >= rotation => "age limit",
            Ok(_) => return,
            Err(e) => return tracing::warn!(error = %e, "signing key age unknown; will retry"),
        }
    };
    match iam.rotate_key(&crate::domain::audit::RequestContext::system("key-rotation"), false).await {
        Ok(key) => {
            tracing::info!(kid = %key.kid, alg = key.alg.as_str(), activate_time = %key.activate_time, why, "signing key rotated")
        }
        Err(e) => tracing::warn!(error = %e, "signing key rotation failed; will retry"),
    }
}
