//! The keys that sign access tokens (Ed25519, JWS `alg: EdDSA`), and the tokens themselves.
//!
//! Keys live in the database, so every replica signs and verifies with the same set. The newest
//! key signs; a rotation adds a newer one and marks the old one retired. Retired keys keep
//! verifying (and stay in the JWK Set) until every token they can have signed has expired: the
//! longest access-token lifetime plus the reload interval of other replicas. The private seeds are
//! stored sealed under the master key (`crate::secrets`); the public keys in clear.

use std::{
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use base64::Engine;
use ed25519_dalek::pkcs8::EncodePrivateKey;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{
    domain::{Error, Result, now},
    secrets::{MasterKeys, OpenError, Slot},
    store::{Db, Tx, signing_keys},
};

/// Longest access-token lifetime a tenant may set (see `TenantSettings`).
pub const MAX_ACCESS_TOKEN_TTL: Duration = Duration::from_secs(3600);
/// How often every replica re-reads the key set (so a rotation elsewhere reaches it).
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(60);
/// Scope of a token good only for `ChangePassword` (and `Logout`).
pub const SCOPE_PASSWORD_CHANGE: &str = "password_change";

/// The claims of a crm-iam access token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub aud: String,
    /// The user id.
    pub sub: String,
    pub tenant: String,
    /// The session id.
    pub sid: String,
    pub iat: i64,
    pub exp: i64,
    /// Token id, unique per token.
    pub jti: String,
    /// Empty for a full session; `password_change` for a restricted one.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub scope: String,
    /// How the user proved identity: `pwd`, `otp`.
    #[serde(default)]
    pub amr: Vec<String>,
}

/// A verified token: its claims and the key that signed it.
#[derive(Debug, Clone)]
pub struct Verified {
    pub claims: Claims,
    pub kid: String,
}

/// A public key for the JWK Set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicJwk {
    pub kid: String,
    /// base64url of the 32-byte Ed25519 public key.
    pub x: String,
}

struct Key {
    kid: String,
    x: String,
    encoding: Option<EncodingKey>,
    decoding: DecodingKey,
}

struct Loaded {
    /// Newest first; the first one signs.
    keys: Vec<Key>,
    at: Instant,
}

/// The signing and verifying keys of this replica.
pub struct KeyRing {
    db: Db,
    secrets: Arc<MasterKeys>,
    issuer: String,
    audience: String,
    loaded: RwLock<Arc<Loaded>>,
    validation: Validation,
    reload: tokio::sync::Mutex<()>,
    /// When a token with an unknown `kid` last made this replica re-read the keys: at most once a
    /// second, so a stream of forged kids cannot turn into a stream of database reads.
    unknown_kid_reload: std::sync::Mutex<Option<Instant>>,
    /// Tokens already verified (by SHA-256 of the token): a signature stays valid, so a sibling
    /// asking about the same token again costs a hash lookup, not an Ed25519 verification.
    /// Expiry is checked on every hit; the map is flushed when the key set changes or grows large.
    verified: dashmap::DashMap<[u8; 32], Arc<Verified>, foldhash::fast::RandomState>,
}

/// Verified tokens kept before the map is flushed.
const MAX_VERIFIED: usize = 100_000;
/// Clock leeway on `exp`, seconds (the same as the verification's).
const LEEWAY: i64 = 30;

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A fresh key row: random seed (sealed), its public key, a new kid.
fn new_key_row(secrets: &MasterKeys) -> Result<signing_keys::Row> {
    let mut seed = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut seed);
    let signing = ed25519_dalek::SigningKey::from_bytes(&seed);
    let public = signing.verifying_key().to_bytes();
    let kid = Uuid::now_v7().simple().to_string();
    Ok(signing_keys::Row {
        private_key: secrets.seal(Slot::SigningKey(&kid), &seed),
        kid,
        alg: "EdDSA".into(),
        public_key: b64(&public),
        create_time: now(),
        retire_time: None,
    })
}

/// The seed of a stored signing key. A value from before sealing (plain base64url) is accepted
/// only with `allow_plain` (the start-up check, before [`crate::store::sealed::reseal`] seals it):
/// once serving, an unsealed key is refused, so whoever can write to the database cannot plant a
/// signing key of their own.
fn open_seed(
    secrets: &MasterKeys,
    row: &signing_keys::Row,
    allow_plain: bool,
) -> std::result::Result<[u8; 32], String> {
    let bytes = if MasterKeys::sealed_with(&row.private_key).is_some() {
        secrets.open(Slot::SigningKey(&row.kid), &row.private_key).map_err(|e| match e {
            OpenError::UnknownKey(id) => format!(
                "signing key {} is sealed with master key {id}, which is not in the configured key ring {:?}: \
                 start with the master key this database was sealed with (CRM_IAM_MASTER_KEY or CRM_IAM_MASTER_KEY_FILE)",
                row.kid,
                secrets.ids()
            ),
            e => format!("signing key {}: {e}: the configured master key is not the one this database was sealed with", row.kid),
        })?
    } else if allow_plain {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&row.private_key)
            .map_err(|e| format!("signing key {} is corrupt: {e}", row.kid))?
    } else {
        return Err(format!("signing key {} is not sealed with the master key: refused", row.kid));
    };
    bytes.try_into().map_err(|_| format!("signing key {} has a bad length", row.kid))
}

/// Checks at start that the configured master key ring opens the stored signing keys (sealed
/// last by a master key rotation, so they tell whether the ring fits the database).
pub async fn check_master_keys(db: &Db, secrets: &MasterKeys) -> anyhow::Result<()> {
    for row in signing_keys::all(db.conn()).await? {
        open_seed(secrets, &row, true).map_err(anyhow::Error::msg)?;
    }
    Ok(())
}

fn to_key(secrets: &MasterKeys, row: &signing_keys::Row) -> Result<Key> {
    let seed = open_seed(secrets, row, false).map_err(|e| Error::internal(anyhow::anyhow!(e)))?;
    let der = ed25519_dalek::SigningKey::from_bytes(&seed)
        .to_pkcs8_der()
        .map_err(|e| Error::internal(anyhow::anyhow!("PKCS#8 encoding failed: {e}")))?;
    let decoding = DecodingKey::from_ed_components(&row.public_key)
        .map_err(|e| Error::internal(anyhow::anyhow!("signing key {} is corrupt: {e}", row.kid)))?;
    Ok(Key {
        kid: row.kid.clone(),
        x: row.public_key.clone(),
        encoding: Some(EncodingKey::from_ed_der(der.as_bytes())),
        decoding,
    })
}

impl KeyRing {
    /// Loads the keys, creating the first one when there is none.
    pub async fn load(db: Db, secrets: Arc<MasterKeys>, issuer: String, audience: String) -> Result<KeyRing> {
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_issuer(&[&issuer]);
        validation.set_audience(&[&audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = 30;
        let ring = KeyRing {
            db,
            secrets,
            issuer,
            audience,
            loaded: RwLock::new(Arc::new(Loaded { keys: Vec::new(), at: Instant::now() })),
            validation,
            reload: tokio::sync::Mutex::new(()),
            unknown_kid_reload: std::sync::Mutex::new(None),
            verified: Default::default(),
        };
        ring.reload().await?;
        if ring.current().keys.is_empty() {
            // Two replicas starting at once may both create one: harmless, the newer one signs.
            signing_keys::insert(ring.db.conn(), new_key_row(&ring.secrets)?).await?;
            ring.reload().await?;
        }
        Ok(ring)
    }

    fn current(&self) -> Arc<Loaded> {
        self.loaded.read().expect("key ring poisoned").clone()
    }

    /// Re-reads the key set from the database.
    pub async fn reload(&self) -> Result<()> {
        let _one = self.reload.lock().await;
        let oldest = now() - chrono::Duration::from_std(MAX_ACCESS_TOKEN_TTL + 2 * RELOAD_INTERVAL).unwrap_or_default();
        let rows = signing_keys::all(self.db.conn()).await?;
        let keys = rows
            .iter()
            .enumerate()
            .filter(|(i, r)| *i == 0 || r.retire_time.is_none_or(|t| t > oldest))
            .map(|(_, r)| to_key(&self.secrets, r))
            .collect::<Result<Vec<_>>>()?;
        let mut loaded = self.loaded.write().expect("key ring poisoned");
        if loaded.keys.iter().map(|k| &k.kid).ne(keys.iter().map(|k| &k.kid)) {
            self.verified.clear();
        }
        *loaded = Arc::new(Loaded { keys, at: Instant::now() });
        Ok(())
    }

    /// Reloads when the set is older than [`RELOAD_INTERVAL`].
    pub async fn refresh_if_stale(&self) -> Result<()> {
        if self.current().at.elapsed() >= RELOAD_INTERVAL { self.reload().await } else { Ok(()) }
    }

    /// Adds a new signing key and retires the others (in the caller's transaction); call
    /// [`KeyRing::reload`] after commit.
    pub async fn rotate(tx: &Tx, secrets: &MasterKeys) -> Result<PublicJwk> {
        let row = new_key_row(secrets)?;
        let jwk = PublicJwk { kid: row.kid.clone(), x: row.public_key.clone() };
        signing_keys::rotate(tx, row).await?;
        Ok(jwk)
    }

    /// When the signing key was made (the rotation job rotates old keys).
    pub async fn signing_key_age(&self) -> Result<Option<chrono::Duration>> {
        signing_keys::signing_key_age(self.db.conn()).await
    }

    /// The public keys, the signing key first.
    pub fn jwks(&self) -> Vec<PublicJwk> {
        self.current().keys.iter().map(|k| PublicJwk { kid: k.kid.clone(), x: k.x.clone() }).collect()
    }

    /// Signs claims with the current key.
    pub fn sign(&self, mut claims: Claims) -> Result<String> {
        let loaded = self.current();
        let key = loaded.keys.first().ok_or_else(|| Error::internal(anyhow::anyhow!("no signing key")))?;
        let encoding = key.encoding.as_ref().ok_or_else(|| Error::internal(anyhow::anyhow!("no private key")))?;
        claims.iss.clone_from(&self.issuer);
        claims.aud.clone_from(&self.audience);
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(key.kid.clone());
        header.typ = Some("at+jwt".into());
        jsonwebtoken::encode(&header, &claims, encoding).map_err(Error::internal)
    }

    /// Verifies signature, algorithm, issuer, audience and expiry. A token signed by a key this
    /// replica has not seen yet triggers one reload (the key may have been rotated elsewhere).
    pub async fn verify(&self, token: &str) -> Option<Arc<Verified>> {
        use sha2::Digest;
        self.verify_hashed(token, sha2::Sha256::digest(token.as_bytes()).into()).await
    }

    /// [`KeyRing::verify`] for a caller that already has the token's SHA-256 (the cache key).
    pub async fn verify_hashed(&self, token: &str, digest: [u8; 32]) -> Option<Arc<Verified>> {
        if let Some(hit) = self.verified.get(&digest).map(|v| v.clone()) {
            return (hit.claims.exp + LEEWAY > chrono::Utc::now().timestamp()).then_some(hit);
        }
        let verified = match self.verify_loaded(token) {
            Some(v) => v,
            None => {
                let allowed = {
                    let mut last = self.unknown_kid_reload.lock().expect("key ring poisoned");
                    let allowed = last.is_none_or(|t| t.elapsed() >= Duration::from_secs(1));
                    if allowed {
                        *last = Some(Instant::now());
                    }
                    allowed
                };
                if !allowed || self.reload().await.is_err() {
                    return None;
                }
                self.verify_loaded(token).flatten()
            }
        }?;
        let verified = Arc::new(verified);
        if self.verified.len() >= MAX_VERIFIED {
            self.verified.clear();
        }
        self.verified.insert(digest, verified.clone());
        Some(verified)
    }

    /// Some(result) when the token's key is known; None when it is not.
    fn verify_loaded(&self, token: &str) -> Option<Option<Verified>> {
        let header = match jsonwebtoken::decode_header(token) {
            Ok(h) => h,
            Err(_) => return Some(None),
        };
        if header.alg != Algorithm::EdDSA {
            return Some(None);
        }
        let kid = match header.kid {
            Some(kid) => kid,
            None => return Some(None),
        };
        let loaded = self.current();
        let key = loaded.keys.iter().find(|k| k.kid == kid)?;
        let ok = jsonwebtoken::decode::<Claims>(token, &key.decoding, &self.validation).ok();
        Some(ok.map(|data| Verified { claims: data.claims, kid }))
    }
}
