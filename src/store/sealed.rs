//! Sealing stored secrets again under the current master key: at start for values from before
//! sealing existed, and by `crm-iam keys rotate-master` for values sealed with an older key.
//!
//! Each value is replaced by compare-and-set (only if it is still what was read), in small
//! transactions, so it runs beside serving replicas without losing a concurrent change. Signing
//! keys go last: when they open with a key ring, so does everything sealed before them.

use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect, sea_query::Expr};
use uuid::Uuid;

use super::{Db, entity::identity_providers, entity::login_states, entity::signing_keys};
use crate::secrets::{MasterKeys, Slot};

/// Which values to seal again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reseal {
    /// Only values stored in clear (from before sealing).
    Plaintext,
    /// Every value not sealed with the current key (a master key rotation).
    NotCurrent,
}

/// How many values were sealed again.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Resealed {
    pub totp_secrets: u64,
    pub signing_keys: u64,
    /// Identity providers' client secrets.
    pub idp_secrets: u64,
}

const BATCH: u64 = 500;

fn wanted(mode: Reseal, stored: &str) -> bool {
    match mode {
        Reseal::Plaintext => MasterKeys::sealed_with(stored).is_none(),
        Reseal::NotCurrent => true,
    }
}

/// The plaintext of a stored value: opened when sealed, as is when in clear.
fn plaintext(keys: &MasterKeys, slot: Slot<'_>, stored: &str) -> anyhow::Result<Vec<u8>> {
    if MasterKeys::sealed_with(stored).is_none() {
        return Ok(stored.as_bytes().to_vec());
    }
    keys.open(slot, stored).map_err(|e| anyhow::anyhow!("a stored secret does not open: {e}"))
}

/// Seals again what `mode` selects; returns the counts. A value changed by a replica meanwhile
/// (its compare-and-set missed) is found again by the next pass; passes repeat until one finds
/// nothing left, so no value stays under a key about to be dropped.
pub async fn reseal(db: &Db, keys: &MasterKeys, mode: Reseal) -> anyhow::Result<Resealed> {
    let mut total = Resealed::default();
    for _ in 0..10 {
        let (done, missed) = reseal_pass(db, keys, mode).await?;
        total.totp_secrets += done.totp_secrets;
        total.signing_keys += done.signing_keys;
        total.idp_secrets += done.idp_secrets;
        if missed == 0 {
            return Ok(total);
        }
    }
    anyhow::bail!("stored secrets kept changing while they were sealed again: run the command again")
}

/// One pass: (values sealed again, values whose compare-and-set missed).
async fn reseal_pass(db: &Db, keys: &MasterKeys, mode: Reseal) -> anyhow::Result<(Resealed, u64)> {
    let mut done = Resealed::default();
    let mut missed = 0;
    let mut after: Option<Uuid> = None;
    loop {
        let mut q = login_states::Entity::find()
            .filter(
                sea_orm::Condition::any()
                    .add(login_states::Column::TotpSecret.is_not_null())
                    .add(login_states::Column::TotpPendingSecret.is_not_null()),
            )
            .order_by_asc(login_states::Column::UserId)
            .limit(BATCH);
        if let Some(a) = after {
            q = q.filter(login_states::Column::UserId.gt(a));
        }
        let rows = q.all(db.conn()).await?;
        let Some(last) = rows.last() else { break };
        after = Some(last.user_id);
        for row in rows {
            let columns = [
                (login_states::Column::TotpSecret, row.totp_secret.as_deref(), Slot::TotpSecret(row.user_id)),
                (
                    login_states::Column::TotpPendingSecret,
                    row.totp_pending_secret.as_deref(),
                    Slot::TotpPendingSecret(row.user_id),
                ),
            ];
            for (column, stored, slot) in columns {
                let Some(stored) = stored.filter(|s| keys.needs_resealing(s) && wanted(mode, s)) else { continue };
                let sealed = keys.seal(slot, &plaintext(keys, slot, stored)?);
                let r = login_states::Entity::update_many()
                    .col_expr(column, Expr::value(sealed))
                    .filter(login_states::Column::UserId.eq(row.user_id))
                    .filter(column.eq(stored))
                    .exec(db.conn())
                    .await?;
                done.totp_secrets += r.rows_affected;
                missed += 1 - r.rows_affected;
            }
        }
    }
    for row in identity_providers::Entity::find().all(db.conn()).await? {
        let stored = row.client_secret_sealed.as_str();
        if !(keys.needs_resealing(stored) && wanted(mode, stored)) {
            continue;
        }
        let slot = Slot::IdpClientSecret(row.idp_id);
        let r = identity_providers::Entity::update_many()
            .col_expr(
                identity_providers::Column::ClientSecretSealed,
                Expr::value(keys.seal(slot, &plaintext(keys, slot, stored)?)),
            )
            .filter(identity_providers::Column::IdpId.eq(row.idp_id))
            .filter(identity_providers::Column::ClientSecretSealed.eq(stored))
            .exec(db.conn())
            .await?;
        done.idp_secrets += r.rows_affected;
        missed += 1 - r.rows_affected;
    }
    for row in signing_keys::Entity::find().all(db.conn()).await? {
        if !(keys.needs_resealing(&row.private_key) && wanted(mode, &row.private_key)) {
            continue;
        }
        let slot = Slot::SigningKey(&row.kid);
        let stored = row.private_key.as_str();
        let seed = if MasterKeys::sealed_with(stored).is_none() {
            // Seeds from before sealing are base64url text; sealed ones hold the raw 32 bytes.
            base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, stored)?
        } else {
            plaintext(keys, slot, stored)?
        };
        let r = signing_keys::Entity::update_many()
            .col_expr(signing_keys::Column::PrivateKey, Expr::value(keys.seal(slot, &seed)))
            .filter(signing_keys::Column::Kid.eq(row.kid.as_str()))
            .filter(signing_keys::Column::PrivateKey.eq(stored))
            .exec(db.conn())
            .await?;
        done.signing_keys += r.rows_affected;
        missed += 1 - r.rows_affected;
    }
    Ok((done, missed))
}
