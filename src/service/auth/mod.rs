//! Logins, sessions, passwords set by users, TOTP, and access tokens.
//!
//! Every verification of a user's secret (a login's password and code, the old password of
//! ChangePassword, the code of ConfirmTotp/DisableTotp) is *admitted* first, in a transaction of
//! its own that counts it as a failure with the account's login-state row locked
//! ([`guard`], rules in `domain::lockout`): however many arrive at once, on however many replicas,
//! at most `max_failed_attempts` wrong secrets are verified before the lock holds. The outcome is
//! a second transaction (a failure writes its audit event, a success takes the count back, opens
//! the session, consumes the TOTP step by compare-and-set). Every session-ending change also
//! announces a policy change for the user, which flushes the session from the access cache of
//! every replica.

pub mod commands;
mod guard;
pub mod hashing;
pub mod keys;
mod login;
mod passwords;
mod reset;
mod sessions;
mod totp;

use std::sync::Arc;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use uuid::Uuid;

use self::keys::{KeyRing, PublicJwk};
pub use self::sessions::SessionView;
use super::{Iam, address_limiter::AddressLimiter};
use crate::{
    domain::{
        Error, Kind, Reason, Result,
        audit::{AuditRecord, RequestContext},
        tenant::Tenant,
        validate,
    },
    secrets::MasterKeys,
};

/// How logins are limited and tokens named (from the configuration).
#[derive(Debug, Clone)]
pub struct AuthSettings {
    /// `iss` of access tokens.
    pub issuer: String,
    /// `aud` of access tokens.
    pub audience: String,
    /// Failed logins per minute from one network address before further attempts from it are
    /// refused for a while (0 = no limit).
    pub login_failures_per_address: u32,
    /// RequestPasswordReset calls per minute from one address (0 = no limit).
    pub password_resets_per_address: u32,
    /// Proxies whose `x-forwarded-for` names the client.
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

impl Default for AuthSettings {
    fn default() -> Self {
        AuthSettings {
            issuer: "crm-iam".into(),
            audience: "crm".into(),
            login_failures_per_address: 30,
            password_resets_per_address: 10,
            trusted_proxies: Vec::new(),
        }
    }
}

impl AuthSettings {
    /// The client's address: the TCP peer, or, when the peer is a trusted proxy, the nearest
    /// address in `forwarded_for` (the `x-forwarded-for` values, in order) that is not one.
    pub fn client_ip(&self, peer: Option<std::net::IpAddr>, forwarded_for: &[&str]) -> Option<std::net::IpAddr> {
        let peer = peer?;
        let trusted = |ip: &std::net::IpAddr| self.trusted_proxies.iter().any(|n| n.contains(ip));
        if !trusted(&peer) {
            return Some(peer);
        }
        let hops = forwarded_for.iter().flat_map(|v| v.split(',')).map(str::trim).collect::<Vec<_>>();
        for hop in hops.into_iter().rev() {
            let ip = hop
                .parse::<std::net::IpAddr>()
                .ok()
                .or_else(|| hop.parse::<std::net::SocketAddr>().ok().map(|a| a.ip()));
            match ip {
                Some(ip) if !trusted(&ip) => return Some(ip),
                Some(_) => continue,
                // Garbage in the chain: stop at the last proxy we trust.
                None => break,
            }
        }
        Some(peer)
    }
}

/// Signing keys, the master key ring and the per-address login limiter of this replica.
pub struct AuthState {
    pub keys: KeyRing,
    pub settings: AuthSettings,
    /// Seals TOTP secrets (and, through the key ring, signing keys) at rest.
    pub secrets: Arc<MasterKeys>,
    pub(crate) limiter: AddressLimiter,
    /// Self-service reset requests per address.
    reset_limiter: AddressLimiter,
}

impl AuthState {
    pub fn new(keys: KeyRing, secrets: Arc<MasterKeys>, settings: AuthSettings) -> AuthState {
        let limiter = AddressLimiter::new(settings.login_failures_per_address);
        let reset_limiter = AddressLimiter::new(settings.password_resets_per_address);
        AuthState { keys, settings, secrets, limiter, reset_limiter }
    }
}

/// The tokens of a session, as returned by Authenticate, Refresh and ChangePassword.
#[derive(Serialize, Deserialize)]
pub struct Tokens {
    #[serde(skip)]
    pub access_token: String,
    #[serde(skip)]
    pub refresh_token: Option<String>,
    pub expires_in_secs: i64,
    pub session_id: Uuid,
    pub user_id: Uuid,
    pub restricted: bool,
}

const INVALID_CREDENTIALS: &str =
    "login failed: the email, password or one-time code is wrong, or the account is locked or not active";

fn invalid_credentials() -> Error {
    Error::new(Kind::Unauthenticated, Reason::InvalidCredentials, INVALID_CREDENTIALS)
}

fn token_invalid(what: &str) -> Error {
    Error::new(
        Kind::Unauthenticated,
        Reason::TokenInvalid,
        format!("the {what} is not valid: it is unknown, was already used, or has expired"),
    )
}

pub(crate) fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

pub(crate) fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut bytes);
    base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, bytes)
}

/// The context of a transaction that only counts or records an attempt: never replayed from an
/// idempotency key (an attempt is not a retryable change).
pub(crate) fn attempt_context(ctx: &RequestContext) -> RequestContext {
    RequestContext { idempotency: None, ..ctx.clone() }
}

impl Iam {
    /// Checks a new password against the tenant's policy.
    fn password_policy(
        &self,
        tenant: &Tenant,
        field: &str,
        password: &SecretString,
        email_key: Option<&str>,
    ) -> Result<()> {
        validate::password(password.expose_secret(), tenant.settings.password_min_length as usize, email_key)
            .map_err(|d| Error::invalid_field(field, d))
    }

    /// `Auth.GetJwks`.
    pub fn jwks(&self) -> Vec<PublicJwk> {
        self.auth.keys.jwks()
    }

    /// `Auth.RotateSigningKey` (platform only).
    pub async fn rotate_signing_key(&self, call: &super::Call, cmd: commands::RotateSigningKey) -> Result<PublicJwk> {
        super::require_platform(&call.caller)?;
        self.rotate_key(&call.ctx, cmd.immediate).await
    }

    /// A new signing key, published ahead of signing unless `immediate` (also rotated on
    /// schedule, and on a change of `signing_algorithm`, by a background job).
    pub async fn rotate_key(&self, ctx: &RequestContext, immediate: bool) -> Result<PublicJwk> {
        let keys = &self.auth.keys;
        let key = self
            .db
            .write(ctx, async |tx| {
                let key = keys.rotate(tx, immediate).await?;
                tx.audit(
                    AuditRecord::new(None, "auth.signing_key_rotated", "signing_key", &key.kid)
                        .with_detail("alg", key.alg.as_str())
                        .with_detail("activate_time", key.activate_time.to_rfc3339())
                        .with_detail("immediate", immediate.to_string()),
                );
                Ok(key)
            })
            .await?;
        self.auth.keys.reload().await?;
        Ok(key)
    }
}

/// Compares two secrets in constant time.
pub fn secrets_equal(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_is_the_peer_unless_the_peer_is_a_trusted_proxy() {
        let s = AuthSettings {
            trusted_proxies: vec!["10.0.0.0/8".parse().unwrap(), "192.168.1.1/32".parse().unwrap()],
            ..Default::default()
        };
        let ip = |t: &str| Some(t.parse().unwrap());
        // Anyone else's header is ignored: no address of one's choosing.
        assert_eq!(s.client_ip(ip("198.51.100.7"), &["203.0.113.1"]), ip("198.51.100.7"));
        // Through trusted proxies: the nearest untrusted hop, whatever the client put first.
        assert_eq!(s.client_ip(ip("10.1.2.3"), &["6.6.6.6, 203.0.113.1, 192.168.1.1"]), ip("203.0.113.1"));
        assert_eq!(s.client_ip(ip("10.1.2.3"), &["6.6.6.6", "203.0.113.1:4411"]), ip("203.0.113.1"));
        assert_eq!(s.client_ip(ip("10.1.2.3"), &[]), ip("10.1.2.3"), "no header: the proxy itself");
        assert_eq!(s.client_ip(ip("10.1.2.3"), &["junk"]), ip("10.1.2.3"));
        assert_eq!(AuthSettings::default().client_ip(ip("10.1.2.3"), &["203.0.113.1"]), ip("10.1.2.3"));
    }
}
