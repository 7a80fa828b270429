//! Logins, sessions, passwords set by users, TOTP, and access tokens.
//!
//! A login is one transaction whatever its outcome: a failure updates the lockout counters and
//! writes `auth.login_failed` (and `auth.locked`), a success opens the session, stores the hash
//! of its refresh token and writes `auth.login_succeeded`. Every session-ending change also
//! announces a policy change for the user, which flushes the session from the access cache of
//! every replica: a revoked session stops working at once here, and within the policy-poll bound
//! elsewhere when a notification is lost.

use std::{
    net::IpAddr,
    num::NonZeroU32,
    time::{Duration, Instant},
};

use dashmap::DashMap;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use totp_rs::{Builder as TotpBuilder, Secret, Totp};
use uuid::Uuid;

use super::{Iam, Page};
use crate::{
    auth::{
        UserCaller,
        keys::{Claims, KeyRing, PublicJwk, SCOPE_PASSWORD_CHANGE, Verified},
    },
    domain::{
        Error, Kind, Reason, Result,
        access::Template,
        audit::{AuditRecord, RequestContext},
        now,
        tenant::{Tenant, TenantSettings},
        user::{User, UserState},
        validate,
    },
    store::{
        Tx,
        sessions::{self, LoginState, Session, SessionFacts},
        tokens::{self, TokenKind},
        users::{self, Row},
    },
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
}

impl Default for AuthSettings {
    fn default() -> Self {
        AuthSettings { issuer: "crm-iam".into(), audience: "crm".into(), login_failures_per_address: 30 }
    }
}

/// Signing keys and the per-address login limiter of this replica.
pub struct AuthState {
    pub keys: KeyRing,
    pub settings: AuthSettings,
    limiter: Option<DefaultKeyedRateLimiter<IpAddr>>,
    /// Addresses refused until the given instant.
    blocked: DashMap<IpAddr, Instant>,
}

impl AuthState {
    pub fn new(keys: KeyRing, settings: AuthSettings) -> AuthState {
        let limiter = NonZeroU32::new(settings.login_failures_per_address)
            .map(|n| RateLimiter::keyed(Quota::per_minute(n).allow_burst(n)));
        AuthState { keys, settings, limiter, blocked: DashMap::new() }
    }

    /// Refuses an address that failed too often recently.
    fn admit(&self, ip: Option<IpAddr>) -> Result<()> {
        let Some(ip) = ip else { return Ok(()) };
        if let Some(until) = self.blocked.get(&ip).map(|u| *u) {
            let now = Instant::now();
            if until > now {
                let mut e = Error::new(
                    Kind::ResourceExhausted,
                    Reason::TooManyAttempts,
                    "too many failed logins from this address: wait before trying again",
                );
                e.retry_after_ms = u32::try_from((until - now).as_millis()).unwrap_or(u32::MAX).max(1);
                return Err(e);
            }
            self.blocked.remove(&ip);
        }
        Ok(())
    }

    /// Counts a failed login of an address against its quota.
    fn failed(&self, ip: Option<IpAddr>) {
        let (Some(limiter), Some(ip)) = (&self.limiter, ip) else { return };
        if let Err(not_until) = limiter.check_key(&ip) {
            let wait = not_until.wait_time_from(governor::clock::Clock::now(&governor::clock::DefaultClock::default()));
            self.blocked.insert(ip, Instant::now() + wait.max(Duration::from_secs(1)));
        }
        if limiter.len() > 100_000 {
            limiter.retain_recent();
            self.blocked.retain(|_, until| *until > Instant::now());
        }
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

/// A session as listed.
#[derive(Debug, Clone)]
pub struct SessionView {
    pub session: Session,
    pub facts: SessionFacts,
}

/// Outcome of a login transaction (failures commit too).
#[derive(Serialize, Deserialize)]
enum Login {
    Ok(Tokens),
    Failed,
    TotpRequired,
}

const INVALID_CREDENTIALS: &str =
    "login failed: the email, password or one-time code is wrong, or the account is locked or not active";
/// TOTP secrets: 160 bits (RFC 4226 recommends it).
const TOTP_SECRET_BYTES: usize = 20;
const RECOVERY_CODES: usize = 10;

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

fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut bytes);
    base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, bytes)
}

/// Recovery codes: 10 characters from an alphabet without look-alikes, shown as `xxxxx-xxxxx`.
fn recovery_code() -> String {
    const ALPHABET: &[u8] = b"abcdefghjkmnpqrstuvwxyz23456789";
    let mut rng = rand::rng();
    let chars: String =
        (0..10).map(|_| ALPHABET[rand::Rng::random_range(&mut rng, 0..ALPHABET.len())] as char).collect();
    format!("{}-{}", &chars[..5], &chars[5..])
}

fn normalize_recovery_code(code: &str) -> String {
    code.chars().filter(|c| c.is_ascii_alphanumeric()).map(|c| c.to_ascii_lowercase()).collect()
}

fn is_totp_code(code: &str) -> bool {
    code.len() == 6 && code.bytes().all(|b| b.is_ascii_digit())
}

fn totp(secret_b32: &str, account: &str, issuer: &str) -> Result<Totp> {
    let secret = Secret::try_from_base32(secret_b32)
        .map_err(|e| Error::internal(anyhow::anyhow!("stored TOTP secret is corrupt: {e:?}")))?;
    TotpBuilder::new()
        .with_secret(secret)
        .with_account_name(if account.is_empty() { "user" } else { account })
        .with_issuer(Some(issuer))
        .build()
        .map_err(|e| Error::internal(anyhow::anyhow!("TOTP setup failed: {e:?}")))
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// The TOTP step a code matches (current step ± 1), if it is newer than the last one accepted.
fn accept_totp(t: &Totp, code: &str, last_step: Option<i64>) -> Option<i64> {
    accept_totp_at(t, code, last_step, unix_now())
}

fn accept_totp_at(t: &Totp, code: &str, last_step: Option<i64>, now: u64) -> Option<i64> {
    let step = t.check(code, now)? as i64;
    (last_step.is_none_or(|last| step > last)).then_some(step)
}

/// How long the n-th lockout in a row lasts: the base, doubled each time, at most a day.
fn lockout_duration(settings: &TenantSettings, lockouts: i32) -> chrono::Duration {
    let base = settings.lockout_duration_secs.max(1);
    let secs = base.saturating_mul(1u64 << lockouts.clamp(0, 20)).min(24 * 3600);
    chrono::Duration::seconds(secs as i64)
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

    /// Opens a session in `tx`: evicts the user's oldest sessions beyond the tenant's limit,
    /// stores the refresh token's hash, signs the access token.
    async fn open_session(
        &self,
        tx: &Tx,
        ctx: &RequestContext,
        tenant: &Tenant,
        user: &Row,
        restricted: bool,
        amr: &[&str],
    ) -> Result<Tokens> {
        let at = now();
        let max = tenant.settings.max_sessions_per_user.max(1) as usize;
        let open = sessions::open_of_user(&**tx, user.user_id).await?;
        if open.len() >= max {
            let evict: Vec<Uuid> = open.iter().take(open.len() + 1 - max).map(|s| s.session_id).collect();
            sessions::end(tx, &evict, "evicted").await?;
            tx.policy_changed(&tenant.tenant_id, Some(user.user_id));
            tx.audit(
                AuditRecord::new(Some(&tenant.tenant_id), "auth.sessions_revoked", "user", user.user_id)
                    .with_detail("reason", "evicted")
                    .with_detail("session_ids", evict.iter().map(|s| s.to_string()).collect::<Vec<_>>()),
            );
        }
        let absolute = chrono::Duration::seconds(tenant.settings.absolute_lifetime_secs as i64);
        let idle = tenant.settings.idle_timeout_secs as i64;
        let session = sessions::insert(
            tx,
            Session {
                session_id: Uuid::now_v7(),
                tenant_id: tenant.tenant_id.clone(),
                user_id: user.user_id,
                scope: if restricted { SCOPE_PASSWORD_CHANGE.into() } else { String::new() },
                amr: amr.join(","),
                peer: ctx.peer.clone(),
                create_time: at,
                last_refresh_time: at,
                expire_time: at + absolute,
                idle_timeout_secs: idle,
                end_time: None,
                end_reason: None,
            },
        )
        .await?;
        let refresh_token = if restricted {
            None
        } else {
            let token = random_token();
            sessions::insert_refresh(tx, sha256_hex(&token), session.session_id).await?;
            Some(token)
        };
        self.tokens_for(tenant, &session, refresh_token)
    }

    /// Signs an access token for a session.
    fn tokens_for(&self, tenant: &Tenant, session: &Session, refresh_token: Option<String>) -> Result<Tokens> {
        let at = now();
        let ttl = (tenant.settings.access_token_ttl_secs as i64).min((session.expire_time - at).num_seconds().max(1));
        let claims = Claims {
            iss: String::new(),
            aud: String::new(),
            sub: session.user_id.to_string(),
            tenant: tenant.tenant_id.clone(),
            sid: session.session_id.to_string(),
            iat: at.timestamp(),
            exp: at.timestamp() + ttl,
            jti: Uuid::new_v4().simple().to_string(),
            scope: session.scope.clone(),
            amr: session.amr.split(',').filter(|s| !s.is_empty()).map(str::to_owned).collect(),
        };
        Ok(Tokens {
            access_token: self.auth.keys.sign(claims)?,
            refresh_token,
            expires_in_secs: ttl,
            session_id: session.session_id,
            user_id: session.user_id,
            restricted: session.scope == SCOPE_PASSWORD_CHANGE,
        })
    }

    /// `Auth.Authenticate`.
    pub async fn authenticate(
        &self,
        ctx: &RequestContext,
        ip: Option<IpAddr>,
        tenant_id: &str,
        email: &str,
        password: SecretString,
        code: &str,
    ) -> Result<Tokens> {
        self.auth.admit(ip)?;
        let email_key = email.trim().to_lowercase();
        let tenant = match self.tenant_settings(tenant_id).await {
            Ok(t) => Some(t),
            Err(e) if e.reason == Reason::TenantNotFound => None,
            Err(e) => return Err(e),
        };
        let (row, state) = match &tenant {
            Some(_) => match sessions::user_for_login(self.db.conn(), tenant_id, &email_key).await? {
                Some((row, state)) => (Some(row), Some(state)),
                None => (None, None),
            },
            None => (None, None),
        };
        // Always one argon2 verification: unknown users and wrong passwords take the same time.
        let stored = row.as_ref().and_then(|r| r.password_hash.clone());
        let password_ok = self.passwords.verify(password, stored).await?;
        let tenant_exists = tenant.is_some();
        let (Some(tenant), Some(row), Some(mut state)) = (tenant, row, state) else {
            self.auth.failed(ip);
            // Unknown emails are audited too (password spraying shows); unknown tenants have no trail.
            if tenant_exists {
                let record = AuditRecord::new(Some(tenant_id), "auth.login_failed", "user", "")
                    .with_detail("reason", "unknown_email")
                    .with_detail("email", email_key.clone());
                self.db
                    .write(ctx, async |tx| {
                        tx.audit(record);
                        Ok(())
                    })
                    .await?;
            }
            return Err(invalid_credentials());
        };
        let user_id = row.user_id;
        let at = now();
        let active = users::state(&row)? == UserState::Active;
        let locked = state.locked_until.is_some_and(|t| t > at);
        let mfa = state.totp_secret.clone().filter(|_| row.mfa_enrolled);
        let issuer = self.auth.settings.issuer.clone();
        let outcome = self
            .db
            .write(ctx, async |tx| {
                let fail = |tx: &Tx, state: &mut LoginState, reason: &str, count: bool| {
                    let mut record = AuditRecord::new(Some(tenant_id), "auth.login_failed", "user", user_id)
                        .with_detail("reason", reason);
                    if count {
                        state.failed_logins += 1;
                        record = record.with_detail("failed_attempts", state.failed_logins);
                        if state.failed_logins as u32 >= tenant.settings.lockout_max_failed_attempts {
                            let duration = lockout_duration(&tenant.settings, state.lockouts);
                            state.locked_until = Some(at + duration);
                            state.lockouts += 1;
                            state.failed_logins = 0;
                            tx.audit(record.clone());
                            record = AuditRecord::new(Some(tenant_id), "auth.locked", "user", user_id)
                                .with_detail("until", (at + duration).to_rfc3339())
                                .with_detail("duration_secs", duration.num_seconds())
                                .with_detail("lockouts_in_a_row", state.lockouts);
                        }
                    }
                    tx.audit(record);
                };
                if !active || locked || !password_ok {
                    let reason = if !active {
                        "not_active"
                    } else if locked {
                        "locked"
                    } else {
                        "wrong_password"
                    };
                    fail(tx, &mut state, reason, active && !locked);
                    sessions::save_login_state(tx, state.clone()).await?;
                    return Ok(Login::Failed);
                }
                let mut amr = vec!["pwd"];
                if let Some(secret) = &mfa {
                    if code.is_empty() {
                        return Ok(Login::TotpRequired);
                    }
                    let t = totp(secret, row.email.as_deref().unwrap_or_default(), &issuer)?;
                    let accepted = if is_totp_code(code) {
                        match accept_totp(&t, code, state.totp_last_step) {
                            Some(step) => {
                                state.totp_last_step = Some(step);
                                true
                            }
                            None => false,
                        }
                    } else {
                        sessions::use_recovery_code(tx, user_id, &sha256_hex(&normalize_recovery_code(code))).await?
                    };
                    if !accepted {
                        fail(tx, &mut state, "wrong_code", true);
                        sessions::save_login_state(tx, state.clone()).await?;
                        return Ok(Login::Failed);
                    }
                    amr.push("otp");
                }
                let before = state.clone();
                state.failed_logins = 0;
                state.lockouts = 0;
                state.locked_until = None;
                if state != before || mfa.is_some() {
                    sessions::save_login_state(tx, state.clone()).await?;
                }
                users::set_last_login(tx, tenant_id, user_id, at).await?;
                let tokens = self.open_session(tx, ctx, &tenant, &row, row.must_change_password, &amr).await?;
                tx.audit(
                    AuditRecord::new(Some(tenant_id), "auth.login_succeeded", "user", user_id)
                        .with_detail("session_id", tokens.session_id.to_string())
                        .with_detail("methods", amr.join(","))
                        .with_detail("password_change_required", tokens.restricted),
                );
                Ok(Login::Ok(tokens))
            })
            .await?;
        match outcome {
            Login::Ok(tokens) => Ok(tokens),
            Login::TotpRequired => Err(Error::new(
                Kind::Unauthenticated,
                Reason::TotpRequired,
                "this account needs a one-time code: send totp_code (from the authenticator app, or a recovery code)",
            )),
            Login::Failed => {
                self.auth.failed(ip);
                Err(invalid_credentials())
            }
        }
    }

    /// `Auth.Refresh`: rotates the refresh token; a second use of one ends its session.
    pub async fn refresh(&self, ctx: &RequestContext, refresh_token: &str) -> Result<Tokens> {
        let hash = sha256_hex(refresh_token);
        let Some(stored) = sessions::find_refresh(self.db.conn(), &hash).await? else {
            return Err(token_invalid("refresh token"));
        };
        let Some(session) = sessions::find(self.db.conn(), stored.session_id).await? else {
            return Err(token_invalid("refresh token"));
        };
        let tenant = self.tenant_settings(&session.tenant_id).await?;
        #[derive(Serialize, Deserialize)]
        enum Outcome {
            Ok(Tokens),
            Reused,
            Ended,
        }
        let outcome = self
            .db
            .write(ctx, async |tx| {
                let session =
                    sessions::find(&**tx, session.session_id).await?.ok_or_else(|| token_invalid("refresh token"))?;
                let at = now();
                if !sessions::rotate_refresh(tx, &hash).await? {
                    // A rotated token came back: whoever holds the newer one may be a thief.
                    if sessions::end(tx, &[session.session_id], "refresh_reused").await? > 0 {
                        tx.policy_changed(&session.tenant_id, Some(session.user_id));
                    }
                    tx.audit(
                        AuditRecord::new(
                            Some(&session.tenant_id),
                            "auth.refresh_reused",
                            "session",
                            session.session_id,
                        )
                        .with_detail("user_id", session.user_id.to_string()),
                    );
                    return Ok(Outcome::Reused);
                }
                let user = users::get(&**tx, &session.tenant_id, session.user_id).await?;
                if !SessionFacts::of(&session).active_at(at) || users::state(&user)? != UserState::Active {
                    return Ok(Outcome::Ended);
                }
                let token = random_token();
                sessions::insert_refresh(tx, sha256_hex(&token), session.session_id).await?;
                sessions::touch(tx, session.session_id, at).await?;
                let mut session = session;
                session.last_refresh_time = at;
                Ok(Outcome::Ok(self.tokens_for(&tenant, &session, Some(token))?))
            })
            .await?;
        match outcome {
            Outcome::Ok(t) => Ok(t),
            Outcome::Reused => Err(Error::new(
                Kind::Unauthenticated,
                Reason::TokenInvalid,
                "this refresh token was already used: the session has been ended for safety; log in again",
            )),
            Outcome::Ended => Err(token_invalid("refresh token")),
        }
    }

    /// Whether the session of a verified token is open. Served from the access cache.
    pub async fn session_active(&self, claims: &Claims) -> Result<bool> {
        let (Ok(session_id), Ok(user_id)) = (Uuid::parse_str(&claims.sid), Uuid::parse_str(&claims.sub)) else {
            return Ok(false);
        };
        let facts = self.session_facts(&claims.tenant, session_id).await?;
        Ok(facts.is_some_and(|f| f.user_id == user_id && f.active_at(now())))
    }

    /// A verified, active token, or None.
    pub async fn introspect(&self, token: &str) -> Result<Option<std::sync::Arc<Verified>>> {
        let Some(v) = self.auth.keys.verify(token).await else { return Ok(None) };
        Ok(self.session_active(&v.claims).await?.then_some(v))
    }

    /// `Auth.Logout`.
    pub async fn logout(&self, ctx: &RequestContext, caller: &UserCaller) -> Result<()> {
        self.db
            .write(ctx, async |tx| {
                if sessions::end(tx, &[caller.session_id], "logout").await? > 0 {
                    tx.policy_changed(&caller.tenant_id, Some(caller.user_id));
                    tx.audit(
                        AuditRecord::new(Some(&caller.tenant_id), "auth.logout", "session", caller.session_id)
                            .with_detail("user_id", caller.user_id.to_string()),
                    );
                }
                Ok(())
            })
            .await
    }

    /// `Auth.ListSessions`.
    pub async fn list_sessions(
        &self,
        tenant_id: &str,
        user_id: Uuid,
        include_ended: bool,
        after: Option<Uuid>,
        limit: u64,
    ) -> Result<Page<SessionView>> {
        self.user_row(self.db.conn(), tenant_id, user_id).await?;
        let rows = sessions::list(self.db.conn(), user_id, include_ended, after, limit).await?;
        let views = rows.into_iter().map(|s| SessionView { facts: SessionFacts::of(&s), session: s }).collect();
        Ok(Page::from_rows(views, limit))
    }

    /// `Auth.RevokeSessions`: ends the listed sessions of the user (all when empty).
    pub async fn revoke_sessions(
        &self,
        ctx: &RequestContext,
        tenant_id: &str,
        user_id: Uuid,
        session_ids: Vec<Uuid>,
        reason: String,
    ) -> Result<u64> {
        self.db
            .write(ctx, async |tx| {
                self.user_row(&**tx, tenant_id, user_id).await?;
                let open: Vec<Uuid> =
                    sessions::open_of_user(&**tx, user_id).await?.into_iter().map(|s| s.session_id).collect();
                let ids: Vec<Uuid> = if session_ids.is_empty() {
                    open
                } else {
                    session_ids.iter().copied().filter(|s| open.contains(s)).collect()
                };
                let n = sessions::end(tx, &ids, "revoked").await?;
                if n > 0 {
                    tx.policy_changed(tenant_id, Some(user_id));
                    tx.audit(
                        AuditRecord::new(Some(tenant_id), "auth.sessions_revoked", "user", user_id)
                            .with_detail("reason", reason.clone())
                            .with_detail("session_ids", ids.iter().map(|s| s.to_string()).collect::<Vec<_>>()),
                    );
                }
                Ok(n)
            })
            .await
    }

    /// `Auth.ChangePassword`: ends every session of the user and opens a fresh one.
    pub async fn change_password(
        &self,
        ctx: &RequestContext,
        caller: &UserCaller,
        old: SecretString,
        new: SecretString,
    ) -> Result<Tokens> {
        let (tenant_id, user_id) = (caller.tenant_id.as_str(), caller.user_id);
        let tenant = self.tenant_settings(tenant_id).await?;
        let row = users::get(self.db.conn(), tenant_id, user_id).await?;
        if !self.passwords.verify(old, row.password_hash.clone()).await? {
            return Err(Error::invalid_field("old_password", "is not the current password"));
        }
        self.password_policy(&tenant, "new_password", &new, row.email_key.as_deref())?;
        let hash = self.passwords.hash(new).await?;
        let amr: Vec<String> = caller.amr.clone();
        self.db
            .write(ctx, async |tx| {
                let row = users::get(&**tx, tenant_id, user_id).await?;
                if users::state(&row)? != UserState::Active {
                    return Err(invalid_credentials());
                }
                let version = row.version;
                let mut new_row = row;
                new_row.password_hash = Some(hash.clone());
                new_row.must_change_password = false;
                let row = users::update(tx, new_row, version).await?;
                sessions::end_all_of_user(tx, user_id, "password_changed").await?;
                tx.policy_changed(tenant_id, Some(user_id));
                tx.audit(AuditRecord::new(Some(tenant_id), "user.password_changed", "user", user_id));
                let amr: Vec<&str> = amr.iter().map(String::as_str).collect();
                self.open_session(tx, ctx, &tenant, &row, false, &amr).await
            })
            .await
    }

    /// Sets a password with a single-use token of `kind` (invitation or reset).
    async fn set_password_with_token(
        &self,
        ctx: &RequestContext,
        kind: TokenKind,
        token: &str,
        new: SecretString,
    ) -> Result<User> {
        let what = match kind {
            TokenKind::Invitation => "invitation token",
            TokenKind::PasswordReset => "reset token",
        };
        let stored = tokens::find(self.db.conn(), token)
            .await?
            .filter(|t| t.kind == kind.as_str() && t.used_time.is_none() && t.expire_time > now())
            .ok_or_else(|| token_invalid(what))?;
        let tenant = self.tenant_settings(&stored.tenant_id).await?;
        let row = users::get(self.db.conn(), &stored.tenant_id, stored.user_id).await?;
        self.password_policy(&tenant, "new_password", &new, row.email_key.as_deref())?;
        let hash = self.passwords.hash(new).await?;
        let (tenant_id, user_id) = (stored.tenant_id.clone(), stored.user_id);
        let mut ctx = ctx.clone();
        ctx.actor =
            crate::domain::audit::Actor { kind: crate::domain::audit::ActorKind::User, id: user_id.to_string() };
        self.db
            .write(&ctx, async |tx| {
                if !tokens::consume(tx, &stored.token_hash).await? {
                    return Err(token_invalid(what));
                }
                let row = users::get(&**tx, &tenant_id, user_id).await?;
                let state = users::state(&row)?;
                let wanted = match kind {
                    TokenKind::Invitation => UserState::Invited,
                    TokenKind::PasswordReset => UserState::Active,
                };
                if state != wanted {
                    return Err(token_invalid(what));
                }
                let before = self.to_user_in(&**tx, row.clone()).await?;
                let version = row.version;
                let mut new_row = row;
                new_row.password_hash = Some(hash.clone());
                new_row.must_change_password = false;
                new_row.state = UserState::Active.as_str().into();
                let row = users::update(tx, new_row, version).await?;
                sessions::end_all_of_user(tx, user_id, "password_reset").await?;
                tx.policy_changed(&tenant_id, Some(user_id));
                let user = self.to_user_in(&**tx, row).await?;
                let action = match kind {
                    TokenKind::Invitation => "user.invitation_accepted",
                    TokenKind::PasswordReset => "user.password_reset_completed",
                };
                tx.audit(AuditRecord::new(Some(&tenant_id), action, "user", user_id).with_changes(
                    Some(&before),
                    Some(&user),
                    &["version", "update_time"],
                ));
                Ok(user)
            })
            .await
    }

    /// `Auth.AcceptInvitation`.
    pub async fn accept_invitation(&self, ctx: &RequestContext, token: &str, new: SecretString) -> Result<User> {
        self.set_password_with_token(ctx, TokenKind::Invitation, token, new).await
    }

    /// `Auth.CompletePasswordReset`.
    pub async fn complete_password_reset(&self, ctx: &RequestContext, token: &str, new: SecretString) -> Result<User> {
        self.set_password_with_token(ctx, TokenKind::PasswordReset, token, new).await
    }

    /// `Auth.EnrollTotp`: a new pending secret; returns (otpauth URI, base32 secret).
    pub async fn enroll_totp(&self, ctx: &RequestContext, caller: &UserCaller) -> Result<(String, String)> {
        let row = users::get(self.db.conn(), &caller.tenant_id, caller.user_id).await?;
        if row.mfa_enrolled {
            return Err(Error::precondition(
                Reason::TotpState,
                "TOTP",
                format!("users/{}", caller.user_id),
                "TOTP is already enrolled: disable it first to enroll a new authenticator",
            ));
        }
        let mut bytes = [0u8; TOTP_SECRET_BYTES];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut bytes);
        let secret = Secret::from(bytes.to_vec()).to_base32();
        let t = totp(&secret, row.email.as_deref().unwrap_or_default(), &self.auth.settings.issuer)?;
        let uri = t.to_url().map_err(|e| Error::internal(anyhow::anyhow!("otpauth URI failed: {e:?}")))?;
        let user_id = caller.user_id;
        let pending = secret.clone();
        self.db
            .write(ctx, async |tx| {
                let mut state = sessions::login_state(&**tx, user_id).await?;
                state.totp_pending_secret = Some(pending.clone());
                sessions::save_login_state(tx, state).await?;
                tx.audit(AuditRecord::new(Some(&caller.tenant_id), "auth.totp_enrollment_started", "user", user_id));
                Ok(())
            })
            .await?;
        Ok((uri, secret))
    }

    /// `Auth.ConfirmTotp`: activates the pending secret; returns fresh recovery codes.
    pub async fn confirm_totp(&self, ctx: &RequestContext, caller: &UserCaller, code: &str) -> Result<Vec<String>> {
        let (tenant_id, user_id) = (caller.tenant_id.as_str(), caller.user_id);
        let row = users::get(self.db.conn(), tenant_id, user_id).await?;
        let state = sessions::login_state(self.db.conn(), user_id).await?;
        let Some(pending) = state.totp_pending_secret.clone() else {
            return Err(Error::precondition(
                Reason::TotpState,
                "TOTP",
                format!("users/{user_id}"),
                "no TOTP enrollment is pending: call EnrollTotp first",
            ));
        };
        let t = totp(&pending, row.email.as_deref().unwrap_or_default(), &self.auth.settings.issuer)?;
        let step = is_totp_code(code)
            .then(|| accept_totp(&t, code, None))
            .flatten()
            .ok_or_else(|| Error::invalid_field("code", "is not a current code of the authenticator app"))?;
        let codes: Vec<String> = (0..RECOVERY_CODES).map(|_| recovery_code()).collect();
        let hashes: Vec<String> = codes.iter().map(|c| sha256_hex(&normalize_recovery_code(c))).collect();
        self.db
            .write(ctx, async |tx| {
                let mut state = sessions::login_state(&**tx, user_id).await?;
                if state.totp_pending_secret.as_deref() != Some(pending.as_str()) {
                    return Err(Error::new(
                        Kind::Aborted,
                        Reason::TotpState,
                        "the TOTP enrollment changed meanwhile: enroll again",
                    ));
                }
                state.totp_secret = Some(pending.clone());
                state.totp_pending_secret = None;
                state.totp_last_step = Some(step);
                sessions::save_login_state(tx, state).await?;
                sessions::replace_recovery_codes(tx, user_id, hashes.clone()).await?;
                self.set_mfa_enrolled(tx, tenant_id, user_id, true, "auth.totp_enrolled").await?;
                Ok(())
            })
            .await?;
        Ok(codes)
    }

    async fn set_mfa_enrolled(&self, tx: &Tx, tenant_id: &str, user_id: Uuid, on: bool, action: &str) -> Result<User> {
        let row = users::get(&**tx, tenant_id, user_id).await?;
        let version = row.version;
        let mut new_row = row;
        new_row.mfa_enrolled = on;
        let user = self.to_user_in(&**tx, users::update(tx, new_row, version).await?).await?;
        tx.policy_changed(tenant_id, Some(user_id));
        tx.audit(AuditRecord::new(Some(tenant_id), action, "user", user_id));
        Ok(user)
    }

    /// `Auth.DisableTotp`. `code`: required when users turn off their own TOTP.
    pub async fn disable_totp(
        &self,
        ctx: &RequestContext,
        tenant_id: &str,
        user_id: Uuid,
        code: Option<&str>,
    ) -> Result<User> {
        let row = self.user_row(self.db.conn(), tenant_id, user_id).await?;
        if !row.mfa_enrolled {
            return Err(Error::precondition(
                Reason::TotpState,
                "TOTP",
                format!("users/{user_id}"),
                "TOTP is not enrolled for this user",
            ));
        }
        let issuer = self.auth.settings.issuer.clone();
        self.db
            .write(ctx, async |tx| {
                let mut state = sessions::login_state(&**tx, user_id).await?;
                if let Some(code) = code {
                    let ok = match (&state.totp_secret, is_totp_code(code)) {
                        (Some(secret), true) => {
                            let t = totp(secret, row.email.as_deref().unwrap_or_default(), &issuer)?;
                            accept_totp(&t, code, state.totp_last_step).is_some()
                        }
                        (_, false) if !code.is_empty() => {
                            sessions::use_recovery_code(tx, user_id, &sha256_hex(&normalize_recovery_code(code)))
                                .await?
                        }
                        _ => false,
                    };
                    if !ok {
                        return Err(Error::invalid_field("code", "is not a current code or an unused recovery code"));
                    }
                }
                state.totp_secret = None;
                state.totp_pending_secret = None;
                state.totp_last_step = None;
                sessions::save_login_state(tx, state).await?;
                sessions::replace_recovery_codes(tx, user_id, Vec::new()).await?;
                self.set_mfa_enrolled(tx, tenant_id, user_id, false, "auth.totp_disabled").await
            })
            .await
    }

    /// `Auth.GetJwks`.
    pub fn jwks(&self) -> Vec<PublicJwk> {
        self.auth.keys.jwks()
    }

    /// `Auth.RotateSigningKey`.
    pub async fn rotate_signing_key(&self, ctx: &RequestContext) -> Result<PublicJwk> {
        let key = self
            .db
            .write(ctx, async |tx| {
                let key = KeyRing::rotate(tx).await?;
                tx.audit(AuditRecord::new(None, "auth.signing_key_rotated", "signing_key", &key.kid));
                Ok(StoredJwk { kid: key.kid, x: key.x })
            })
            .await?;
        self.auth.keys.reload().await?;
        Ok(PublicJwk { kid: key.kid, x: key.x })
    }

    /// Whether the tenant requires administrators to enroll TOTP and this user is an
    /// administrator without it.
    pub async fn mfa_missing(&self, tenant_id: &str, user_id: Uuid) -> Result<bool> {
        let tenant = self.tenant_settings(tenant_id).await?;
        if !tenant.settings.require_mfa_for_admins {
            return Ok(false);
        }
        let row = users::get(self.db.conn(), tenant_id, user_id).await?;
        if row.mfa_enrolled {
            return Ok(false);
        }
        let admin = crate::store::roles::builtin_role_id(tenant_id, Template::Administrator);
        Ok(crate::store::roles::of_user(self.db.conn(), user_id).await?.contains(&admin))
    }
}

/// A public key as returned through idempotent replays (serializable).
#[derive(Serialize, Deserialize)]
struct StoredJwk {
    kid: String,
    x: String,
}

/// Compares two secrets in constant time.
pub fn secrets_equal(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lockouts_double_up_to_a_day() {
        let s = TenantSettings { lockout_duration_secs: 300, ..Default::default() };
        assert_eq!(lockout_duration(&s, 0).num_seconds(), 300);
        assert_eq!(lockout_duration(&s, 2).num_seconds(), 1200);
        assert_eq!(lockout_duration(&s, 15).num_seconds(), 24 * 3600);
    }

    #[test]
    fn recovery_codes_normalize() {
        let c = recovery_code();
        assert_eq!(c.len(), 11);
        assert_eq!(normalize_recovery_code(&c.to_uppercase().replace('-', " ")), c.replace('-', ""));
    }

    #[test]
    fn totp_codes_are_accepted_once_and_within_one_step() {
        let secret = Secret::from(vec![7u8; 20]).to_base32();
        let t = totp(&secret, "ann@example.com", "crm-iam").unwrap();
        let now = 1_800_000_015; // a fixed clock: no step boundary can move under the test
        let code = t.generate(now - 30).to_string();
        let step = accept_totp_at(&t, &code, None, now).expect("previous step accepted (clock skew)");
        assert_eq!(accept_totp_at(&t, &code, Some(step), now), None, "a code is accepted once");
        let next = t.generate(now + 30).to_string();
        assert!(accept_totp_at(&t, &next, Some(step), now).is_some(), "the next step too");
        let old = t.generate(now - 90).to_string();
        assert_eq!(accept_totp_at(&t, &old, None, now), None, "two steps back is too old");
    }
}
