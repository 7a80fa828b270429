//! Secrets at rest: TOTP secrets and the seeds of the token signing keys are stored sealed in
//! XChaCha20-Poly1305 envelopes under a master key that never touches the database, so a backup,
//! a replica's disk or a read-only SQL injection yields nothing usable.
//!
//! A sealed value reads `enc:v1:<key id>:<base64url(nonce ‖ ciphertext)>`. The key id (16 hex
//! digits of a SHA-256 of the key) says which master key sealed it, so a key ring can hold the
//! current key and older ones during a rotation, and a wrong key is named at start instead of
//! failing later. Each value is bound to where it is stored (the associated data names the
//! column and the row), so a sealed secret copied to another row does not open there.

use std::{fmt, path::Path};

use anyhow::Context;
use base64::Engine;
use chacha20poly1305::{
    KeyInit, XChaCha20Poly1305, XNonce,
    aead::{Aead, Payload},
};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

const PREFIX: &str = "enc:v1:";
const NONCE_LEN: usize = 24;

/// Where a sealed value lives (the associated data of its envelope).
#[derive(Debug, Clone, Copy)]
pub enum Slot<'a> {
    /// `login_states.totp_secret` of a user.
    TotpSecret(uuid::Uuid),
    /// `login_states.totp_pending_secret` of a user.
    TotpPendingSecret(uuid::Uuid),
    /// `signing_keys.private_key` of a key id.
    SigningKey(&'a str),
    /// `notifications.secret` of a message (the token it carries until delivered).
    NotificationSecret(uuid::Uuid),
    /// `identity_providers.client_secret_sealed` of a provider.
    IdpClientSecret(uuid::Uuid),
    /// The `state` of a single sign-on (handed out, never stored: it carries its own secrets).
    SsoState,
}

impl Slot<'_> {
    fn aad(&self) -> String {
        match self {
            Slot::TotpSecret(u) => format!("login_states.totp_secret:{u}"),
            Slot::TotpPendingSecret(u) => format!("login_states.totp_pending_secret:{u}"),
            Slot::SigningKey(kid) => format!("signing_keys.private_key:{kid}"),
            Slot::NotificationSecret(id) => format!("notifications.secret:{id}"),
            Slot::IdpClientSecret(id) => format!("identity_providers.client_secret:{id}"),
            Slot::SsoState => "sso.state".to_owned(),
        }
    }
}

struct Key {
    id: String,
    cipher: XChaCha20Poly1305,
    /// HMAC key for pseudonyms, derived from the master key (never the master key itself).
    pseudonym_key: [u8; 32],
}

/// The master key ring: the first key seals, every key opens.
pub struct MasterKeys {
    keys: Vec<Key>,
}

impl fmt::Debug for MasterKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MasterKeys").field("ids", &self.ids()).finish()
    }
}

/// Why a sealed value did not open.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("sealed with master key {0}, which is not configured")]
    UnknownKey(String),
    #[error("master key {0} does not open it: a wrong key of that id, or the value was altered or moved")]
    Corrupt(String),
    #[error("not a sealed value")]
    Malformed,
}

fn key_id(key: &[u8; 32]) -> String {
    let digest = Sha256::new().chain_update(b"crm-iam master key id\0").chain_update(key).finalize();
    hex::encode(&digest[..8])
}

impl MasterKeys {
    /// From 32-byte keys, the sealing key first.
    pub fn new(keys: &[[u8; 32]]) -> anyhow::Result<MasterKeys> {
        anyhow::ensure!(!keys.is_empty(), "the master key ring is empty");
        Ok(MasterKeys {
            keys: keys
                .iter()
                .map(|k| Key {
                    id: key_id(k),
                    cipher: XChaCha20Poly1305::new(k.into()),
                    pseudonym_key: Sha256::new()
                        .chain_update(b"crm-iam pseudonym key\0")
                        .chain_update(k)
                        .finalize()
                        .into(),
                })
                .collect(),
        })
    }

    /// Parses a ring written as base64 keys (standard or URL-safe, padded or not) separated by
    /// commas, spaces or new lines, the sealing key first. `#` starts a comment line.
    pub fn parse(text: &str) -> anyhow::Result<MasterKeys> {
        let mut keys = Vec::new();
        for line in text.lines().map(str::trim).filter(|l| !l.starts_with('#')) {
            for item in line.split([',', ' ', '\t']).map(str::trim).filter(|s| !s.is_empty()) {
                let bytes = decode_b64(item)
                    .context("a master key must be 32 random bytes in base64 (for example: openssl rand -base64 32)")?;
                let key: [u8; 32] = bytes.try_into().map_err(|b: Vec<u8>| {
                    anyhow::anyhow!("a master key must be 32 bytes; one of the configured keys has {}", b.len())
                })?;
                keys.push(key);
            }
        }
        MasterKeys::new(&keys)
    }

    /// Reads a ring from a file (see [`MasterKeys::parse`]).
    pub fn from_file(path: &Path) -> anyhow::Result<MasterKeys> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the master key file {}", path.display()))?;
        MasterKeys::parse(&text).with_context(|| format!("master key file {}", path.display()))
    }

    /// A new random key, base64.
    pub fn generate() -> SecretString {
        let mut key = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut key);
        SecretString::from(base64::engine::general_purpose::STANDARD.encode(key))
    }

    /// The key ids, the sealing key's first.
    pub fn ids(&self) -> Vec<String> {
        self.keys.iter().map(|k| k.id.clone()).collect()
    }

    /// The id of the sealing key.
    pub fn current_id(&self) -> &str {
        &self.keys[0].id
    }

    /// Seals a secret for `slot` under the current key.
    pub fn seal(&self, slot: Slot<'_>, plaintext: &[u8]) -> String {
        let key = &self.keys[0];
        let mut nonce = [0u8; NONCE_LEN];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut nonce);
        let aad = slot.aad();
        let sealed = key
            .cipher
            .encrypt(XNonce::from_slice(&nonce), Payload { msg: plaintext, aad: aad.as_bytes() })
            .expect("XChaCha20-Poly1305 encryption of a short secret cannot fail");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        format!("{PREFIX}{}:{}", key.id, base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(out))
    }

    /// Seals a text secret.
    pub fn seal_str(&self, slot: Slot<'_>, plaintext: &SecretString) -> String {
        self.seal(slot, plaintext.expose_secret().as_bytes())
    }

    /// The key id a stored value was sealed with (None: not sealed, a value from before sealing).
    pub fn sealed_with(stored: &str) -> Option<&str> {
        stored.strip_prefix(PREFIX)?.split_once(':').map(|(id, _)| id)
    }

    /// Opens a sealed value of `slot`.
    pub fn open(&self, slot: Slot<'_>, stored: &str) -> Result<Vec<u8>, OpenError> {
        let (id, body) = stored.strip_prefix(PREFIX).and_then(|r| r.split_once(':')).ok_or(OpenError::Malformed)?;
        let key = self.keys.iter().find(|k| k.id == id).ok_or_else(|| OpenError::UnknownKey(id.to_owned()))?;
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(body).map_err(|_| OpenError::Malformed)?;
        if bytes.len() < NONCE_LEN {
            return Err(OpenError::Malformed);
        }
        let (nonce, sealed) = bytes.split_at(NONCE_LEN);
        let aad = slot.aad();
        key.cipher
            .decrypt(XNonce::from_slice(nonce), Payload { msg: sealed, aad: aad.as_bytes() })
            .map_err(|_| OpenError::Corrupt(id.to_owned()))
    }

    /// Opens a sealed text secret.
    pub fn open_str(&self, slot: Slot<'_>, stored: &str) -> Result<SecretString, OpenError> {
        let bytes = self.open(slot, stored)?;
        String::from_utf8(bytes).map(SecretString::from).map_err(|_| OpenError::Malformed)
    }

    /// A keyed pseudonym of `value` for `purpose` under the current key: equal values give equal
    /// pseudonyms (repeats and patterns stay visible) but nobody without the master key can tell
    /// which value it was, or test a guess. Reads `<key id>:<32 hex digits>`.
    pub fn pseudonym(&self, purpose: &str, value: &str) -> String {
        pseudonym_with(&self.keys[0], purpose, value)
    }

    /// The pseudonyms of `value` under every key of the ring (what a value may have been written
    /// as during and after a rotation).
    pub fn pseudonyms(&self, purpose: &str, value: &str) -> Vec<String> {
        self.keys.iter().map(|k| pseudonym_with(k, purpose, value)).collect()
    }

    /// Whether a stored value should be sealed again under the current key (it is in clear, or
    /// sealed with an older key).
    pub fn needs_resealing(&self, stored: &str) -> bool {
        MasterKeys::sealed_with(stored) != Some(self.current_id())
    }
}

fn pseudonym_with(key: &Key, purpose: &str, value: &str) -> String {
    use hmac::Mac;
    let mut mac =
        <hmac::Hmac<Sha256> as Mac>::new_from_slice(&key.pseudonym_key).expect("HMAC takes a key of any length");
    mac.update(purpose.as_bytes());
    mac.update(b"\0");
    mac.update(value.as_bytes());
    format!("{}:{}", key.id, hex::encode(&mac.finalize().into_bytes()[..16]))
}

fn decode_b64(s: &str) -> Result<Vec<u8>, base64::DecodeError> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    STANDARD
        .decode(s)
        .or_else(|_| STANDARD_NO_PAD.decode(s))
        .or_else(|_| URL_SAFE.decode(s))
        .or_else(|_| URL_SAFE_NO_PAD.decode(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(keys: &[u8]) -> MasterKeys {
        MasterKeys::new(&keys.iter().map(|b| [*b; 32]).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn pseudonyms_are_stable_per_key_and_purpose_and_differ_otherwise() {
        let (a, b) = (ring(&[1, 2]), ring(&[2]));
        let p = a.pseudonym("login email:acme", "ann@x.example");
        assert_eq!(p, a.pseudonym("login email:acme", "ann@x.example"));
        assert!(p.starts_with(a.current_id()) && !p.contains("ann"));
        assert_ne!(p, a.pseudonym("login email:acme", "bob@x.example"));
        assert_ne!(p, a.pseudonym("login email:other", "ann@x.example"));
        assert_ne!(p, b.pseudonym("login email:acme", "ann@x.example"), "another key, another pseudonym");
        assert_eq!(
            a.pseudonyms("login email:acme", "ann@x.example")[1],
            b.pseudonym("login email:acme", "ann@x.example")
        );
    }

    #[test]
    fn sealed_values_open_only_with_their_key_and_slot() {
        let keys = ring(&[1]);
        let user = uuid::Uuid::now_v7();
        let sealed = keys.seal(Slot::TotpSecret(user), b"JBSWY3DPEHPK3PXP");
        assert!(!sealed.contains("JBSWY3DPEHPK3PXP"));
        assert_eq!(keys.open(Slot::TotpSecret(user), &sealed).unwrap(), b"JBSWY3DPEHPK3PXP");
        assert!(matches!(keys.open(Slot::TotpSecret(uuid::Uuid::now_v7()), &sealed), Err(OpenError::Corrupt(_))));
        assert!(matches!(keys.open(Slot::TotpPendingSecret(user), &sealed), Err(OpenError::Corrupt(_))));
        assert!(matches!(ring(&[2]).open(Slot::TotpSecret(user), &sealed), Err(OpenError::UnknownKey(_))));
        assert_ne!(sealed, keys.seal(Slot::TotpSecret(user), b"JBSWY3DPEHPK3PXP"), "fresh nonce each time");
    }

    #[test]
    fn a_ring_opens_old_values_and_seals_with_its_first_key() {
        let old = ring(&[1]);
        let sealed = old.seal(Slot::SigningKey("k1"), b"seed");
        let both = ring(&[2, 1]);
        assert_eq!(both.open(Slot::SigningKey("k1"), &sealed).unwrap(), b"seed");
        assert!(both.needs_resealing(&sealed));
        let resealed = both.seal(Slot::SigningKey("k1"), b"seed");
        assert!(!both.needs_resealing(&resealed));
        assert_eq!(MasterKeys::sealed_with(&resealed), Some(both.current_id()));
        assert!(both.needs_resealing("plain text from before sealing"));
    }

    #[test]
    fn rings_parse_from_text() {
        let a = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        let b = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([8u8; 32]);
        let keys = MasterKeys::parse(&format!("# current first\n{a}\n{b}\n")).unwrap();
        assert_eq!(keys.ids(), ring(&[7, 8]).ids());
        assert_eq!(MasterKeys::parse(&format!("{a}, {b}")).unwrap().ids(), keys.ids());
        assert!(MasterKeys::parse("").is_err());
        assert!(MasterKeys::parse("c2hvcnQ=").unwrap_err().to_string().contains("32 bytes"));
        assert!(format!("{keys:?}").contains(&keys.ids()[0]), "Debug shows ids, never keys");
        assert!(!format!("{keys:?}").contains(&a));
    }
}
