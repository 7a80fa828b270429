//! `crm-iam keys`: the master key that seals secrets at rest.
//!
//! Rotation without downtime (README, "Secrets at rest"): give every replica the ring
//! `OLD,NEW`, then `NEW,OLD` (rolling restarts; every replica can open what any other seals), run
//! `crm-iam keys rotate-master` with `NEW,OLD` to seal every stored secret again under `NEW`, then
//! drop `OLD` from the ring.

use crate::{
    app,
    config::Config,
    store::sealed::{self, Reseal, Resealed},
};

/// Seals every stored secret again under the first key of the configured ring (secrets sealed
/// with its other keys, or stored in clear). Safe beside serving replicas; running it again does
/// nothing more.
pub async fn rotate_master(config: &Config) -> anyhow::Result<Resealed> {
    let keys = app::master_keys(config)?;
    let db = app::connect(config).await?;
    let done = sealed::reseal(&db, &keys, Reseal::NotCurrent).await?;
    tracing::info!(key = keys.current_id(), ?done, "stored secrets sealed under the current master key");
    Ok(done)
}
