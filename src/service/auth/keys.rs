//! The keys that sign access tokens (Ed25519 as JWS `EdDSA`, or P-256 as `ES256`), and the tokens
//! themselves.
//!
//! Keys live in the database, so every replica signs and verifies with the same set. A rotation
//! adds a key that is *published before it signs*: it is in the JWK Set at once, and signs only
//! from its `activate_time` (`signing_key_publish_ahead` later), so a consumer that caches the set
//! (Envoy's `remote_jwks`, Istio, OIDC libraries) has fetched the new key before it meets a token
//! signed by it. The newest active key signs; the others are retired as of the new key's
//! activation and keep verifying (and stay in the JWK Set) until every token they can have signed
//! has expired: the longest access-token lifetime plus the reload interval of other replicas. An
//! emergency rotation (`immediate`) skips the wait. The private scalars are stored sealed under
//! the master key (`crate::secrets`); the public keys in clear.

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

/// The signature algorithm of a key (`signing_algorithm` picks the one new keys get).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum KeyAlg {
    /// Ed25519 (RFC 8037): small and fast; the default.
    #[default]
    EdDSA,
    /// ECDSA on P-256 with SHA-256 (RFC 7518): for consumers without EdDSA support.
    ES256,
}

impl KeyAlg {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyAlg::EdDSA => "EdDSA",
            KeyAlg::ES256 => "ES256",
        }
    }

    pub fn parse(s: &str) -> Option<KeyAlg> {
        match s {
            "EdDSA" => Some(KeyAlg::EdDSA),
            "ES256" => Some(KeyAlg::ES256),
            _ => None,
        }
    }

    fn jwt(self) -> Algorithm {
        match self {
            KeyAlg::EdDSA => Algorithm::EdDSA,
            KeyAlg::ES256 => Algorithm::ES256,
        }
    }
}

/// A public key for the JWK Set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicJwk {
    pub kid: String,
    pub alg: KeyAlg,
    /// base64url: the 32-byte Ed25519 public key, or the P-256 point's x coordinate.
    pub x: String,
    /// base64url of the P-256 point's y coordinate (empty for Ed25519).
    pub y: String,
    /// From when the key signs (before that it is only published).
    pub activate_time: chrono::DateTime<chrono::Utc>,
}

/// How new keys are made: the algorithm, and how long a rotated key is published before it signs.
#[derive(Debug, Clone)]
pub struct KeyPolicy {
    pub issuer: String,
    pub audience: String,
    pub algorithm: KeyAlg,
    pub publish_ahead: Duration,
}

impl KeyPolicy {
    /// `Cache-Control: max-age` of the JWK Set: half the publication lead, so a cache that
    /// fetched the set just before a rotation (on a replica that had not reloaded yet, up to
    /// [`RELOAD_INTERVAL`] late) refetches before the new key signs.
    pub fn jwks_max_age(&self) -> Duration {
        self.publish_ahead / 2
    }
}

struct Key {
    public: PublicJwk,
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
    policy: KeyPolicy,
    loaded: RwLock<Arc<Loaded>>,
    /// One per algorithm: a token's `alg` must be its key's (no algorithm confusion).
    validation_eddsa: Validation,
    validation_es256: Validation,
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

/// A fresh key row: random private scalar (sealed), its public key, a new kid; it signs from
/// `activate_time`.
fn new_key_row(
    secrets: &MasterKeys,
    alg: KeyAlg,
    activate_time: chrono::DateTime<chrono::Utc>,
) -> Result<signing_keys::Row> {
    let (seed, public) = match alg {
        KeyAlg::EdDSA => {
            let mut seed = [0u8; 32];
            rand::RngCore::fill_bytes(&mut rand::rng(), &mut seed);
            let public = ed25519_dalek::SigningKey::from_bytes(&seed).verifying_key().to_bytes();
            (seed, b64(&public))
        }
        KeyAlg::ES256 => {
            // A uniformly random scalar: 32 random bytes, drawn again in the (2^-32) case that
            // they are not below the group order.
            let secret = loop {
                let mut bytes = [0u8; 32];
                rand::RngCore::fill_bytes(&mut rand::rng(), &mut bytes);
                if let Ok(secret) = p256::SecretKey::from_slice(&bytes) {
                    break secret;
                }
            };
            let mut seed = [0u8; 32];
            seed.copy_from_slice(&secret.to_bytes());
            (seed, b64(&secret.public_key().to_sec1_bytes()))
        }
    };
    let kid = Uuid::now_v7().simple().to_string();
    Ok(signing_keys::Row {
        private_key: secrets.seal(Slot::SigningKey(&kid), &seed),
        kid,
        alg: alg.as_str().into(),
        public_key: public,
        create_time: now(),
        retire_time: None,
        activate_time: Some(activate_time),
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

/// The coordinates of a stored P-256 public key (an uncompressed SEC1 point, base64url).
fn p256_coordinates(public_key: &str) -> Option<(String, String)> {
    let point = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(public_key).ok()?;
    (point.len() == 65 && point[0] == 4).then(|| (b64(&point[1..33]), b64(&point[33..])))
}

fn to_key(secrets: &MasterKeys, row: &signing_keys::Row) -> Result<Key> {
    let corrupt = |e: String| Error::internal(anyhow::anyhow!("signing key {} is corrupt: {e}", row.kid));
    let alg = KeyAlg::parse(&row.alg).ok_or_else(|| corrupt(format!("unknown algorithm {:?}", row.alg)))?;
    let seed = open_seed(secrets, row, false).map_err(|e| Error::internal(anyhow::anyhow!(e)))?;
    let (encoding, decoding, x, y) = match alg {
        KeyAlg::EdDSA => {
            let der = ed25519_dalek::SigningKey::from_bytes(&seed)
                .to_pkcs8_der()
                .map_err(|e| Error::internal(anyhow::anyhow!("PKCS#8 encoding failed: {e}")))?;
            let decoding = DecodingKey::from_ed_components(&row.public_key).map_err(|e| corrupt(e.to_string()))?;
            (EncodingKey::from_ed_der(der.as_bytes()), decoding, row.public_key.clone(), String::new())
        }
        KeyAlg::ES256 => {
            use p256::pkcs8::EncodePrivateKey as _;
            let der = p256::SecretKey::from_slice(&seed)
                .map_err(|e| corrupt(e.to_string()))?
                .to_pkcs8_der()
                .map_err(|e| Error::internal(anyhow::anyhow!("PKCS#8 encoding failed: {e}")))?;
            let (x, y) = p256_coordinates(&row.public_key).ok_or_else(|| corrupt("not a P-256 point".into()))?;
            let decoding = DecodingKey::from_ec_components(&x, &y).map_err(|e| corrupt(e.to_string()))?;
            (EncodingKey::from_ec_der(der.as_bytes()), decoding, x, y)
        }
    };
    Ok(Key {
        public: PublicJwk {
            kid: row.kid.clone(),
            alg,
            x,
            y,
            activate_time: row.activate_time.unwrap_or(row.create_time),
        },
        encoding: Some(encoding),
        decoding,
    })
}

impl KeyRing {
    /// Loads the keys, creating the first one (signing at once) when there is none.
    pub async fn load(db: Db, secrets: Arc<MasterKeys>, policy: KeyPolicy) -> Result<KeyRing> {
        let validation = |alg: KeyAlg| {
            let mut v = Validation::new(alg.jwt());
            v.set_issuer(&[&policy.issuer]);
            v.set_audience(&[&policy.audience]);
            v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
            v.leeway = LEEWAY as u64;
            v
        };
        let ring = KeyRing {
            db,
            secrets,
            validation_eddsa: validation(KeyAlg::EdDSA),
            validation_es256: validation(KeyAlg::ES256),
            policy,
            loaded: RwLock::new(Arc::new(Loaded { keys: Vec::new(), at: Instant::now() })),
            reload: tokio::sync::Mutex::new(()),
            unknown_kid_reload: std::sync::Mutex::new(None),
            verified: Default::default(),
        };
        ring.reload().await?;
        if ring.current().keys.is_empty() {
            // Two replicas starting at once may both create one: harmless, the newer one signs.
            signing_keys::insert(ring.db.conn(), new_key_row(&ring.secrets, ring.policy.algorithm, now())?).await?;
            ring.reload().await?;
        }
        Ok(ring)
    }

    pub fn policy(&self) -> &KeyPolicy {
        &self.policy
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
        if loaded.keys.iter().map(|k| &k.public.kid).ne(keys.iter().map(|k| &k.public.kid)) {
            self.verified.clear();
        }
        *loaded = Arc::new(Loaded { keys, at: Instant::now() });
        Ok(())
    }

    /// Reloads when the set is older than [`RELOAD_INTERVAL`].
    pub async fn refresh_if_stale(&self) -> Result<()> {
        if self.current().at.elapsed() >= RELOAD_INTERVAL { self.reload().await } else { Ok(()) }
    }

    /// Adds a new key of the configured algorithm and retires the others as of its activation (in
    /// the caller's transaction): it signs after [`KeyPolicy::publish_ahead`], or at once when
    /// `immediate` (a compromised key). Call [`KeyRing::reload`] after commit.
    pub async fn rotate(&self, tx: &Tx, immediate: bool) -> Result<PublicJwk> {
        let ahead = if immediate { Duration::ZERO } else { self.policy.publish_ahead };
        let activate = now() + chrono::Duration::from_std(ahead).unwrap_or_default();
        let row = new_key_row(&self.secrets, self.policy.algorithm, activate)?;
        let key = to_key(&self.secrets, &row)?.public;
        signing_keys::rotate(tx, row).await?;
        Ok(key)
    }

    /// When the newest key (signing or about to) was made; the rotation job rotates old keys.
    pub async fn signing_key_age(&self) -> Result<Option<chrono::Duration>> {
        signing_keys::signing_key_age(self.db.conn()).await
    }

    /// Whether the newest key (signing or about to) has another algorithm than the configured
    /// one: after `signing_algorithm` changed, the rotation job rotates to the new algorithm.
    pub fn algorithm_differs(&self) -> bool {
        self.current().keys.first().is_some_and(|k| k.public.alg != self.policy.algorithm)
    }

    /// The public keys: the one signing now first, then the rest newest first (a key published
    /// ahead of its activation, then retired keys still verifying).
    pub fn jwks(&self) -> Vec<PublicJwk> {
        let loaded = self.current();
        let signing = Self::signing_index(&loaded.keys);
        let mut out: Vec<PublicJwk> = Vec::with_capacity(loaded.keys.len());
        out.extend(signing.map(|i| loaded.keys[i].public.clone()));
        out.extend(loaded.keys.iter().enumerate().filter(|(i, _)| Some(*i) != signing).map(|(_, k)| k.public.clone()));
        out
    }

    /// The key that signs now: the newest one already active (the oldest one when the clock says
    /// none is, e.g. after the clock stepped back).
    fn signing_index(keys: &[Key]) -> Option<usize> {
        let t = now();
        keys.iter().position(|k| k.public.activate_time <= t).or(keys.len().checked_sub(1))
    }

    /// Signs claims with the current key.
    pub fn sign(&self, mut claims: Claims) -> Result<String> {
        let loaded = self.current();
        let key = Self::signing_index(&loaded.keys)
            .map(|i| &loaded.keys[i])
            .ok_or_else(|| Error::internal(anyhow::anyhow!("no signing key")))?;
        let encoding = key.encoding.as_ref().ok_or_else(|| Error::internal(anyhow::anyhow!("no private key")))?;
        claims.iss.clone_from(&self.policy.issuer);
        claims.aud.clone_from(&self.policy.audience);
        let mut header = Header::new(key.public.alg.jwt());
        header.kid = Some(key.public.kid.clone());
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
        let kid = match header.kid {
            Some(kid) => kid,
            None => return Some(None),
        };
        let loaded = self.current();
        let key = loaded.keys.iter().find(|k| k.public.kid == kid)?;
        // The key decides the algorithm, never the token's header.
        if header.alg != key.public.alg.jwt() {
            return Some(None);
        }
        let validation = match key.public.alg {
            KeyAlg::EdDSA => &self.validation_eddsa,
            KeyAlg::ES256 => &self.validation_es256,
        };
        let ok = jsonwebtoken::decode::<Claims>(token, &key.decoding, validation).ok();
        Some(ok.map(|data| Verified { claims: data.claims, kid }))
    }
}
