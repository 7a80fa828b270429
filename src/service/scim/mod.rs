//! SCIM provisioning credentials: named bearer tokens bound to one tenant (TenantAdmin
//! CreateScimToken / ListScimTokens / RevokeScimToken), and the caller a presented token becomes.
//!
//! A SCIM token acts as its tenant's administrator for users and role membership only (the SCIM
//! edge exposes nothing else), so only a caller who could give the administrator role may create
//! one: the platform admin, or a tenant user holding every right of that role (no escalation by
//! minting a token). The token is 256 random bits shown once; only its SHA-256 digest is stored,
//! and each request looks it up, so a revocation holds from the next request on.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use secrecy::SecretString;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::{Call, Iam, Target};
use crate::{
    domain::{
        Error, Reason, Result, Violations,
        access::{Right, Template},
        audit::{AuditRecord, RequestContext},
        caller::Caller,
        now,
    },
    store::{roles, scim_tokens, tenants},
};

pub use scim_tokens::Row as ScimToken;

mod directory;
pub use directory::{Directory, IdentityKind};

/// The prefix of every SCIM token (secret scanners recognise it).
pub const TOKEN_PREFIX: &str = "crm_scim_";

/// The longest a token may live; 0 = until revoked.
pub const MAX_TTL: Duration = Duration::from_secs(5 * 365 * 24 * 3600);

/// How often a token's `last_used_time` is written at most.
const TOUCH_EVERY: chrono::Duration = chrono::Duration::seconds(60);

/// A new token: `ttl` None = until revoked.
pub struct CreateScimToken {
    pub tenant_id: String,
    pub name: String,
    pub ttl: Option<Duration>,
}

/// One token of a tenant, by name.
pub struct ScimTokenRef {
    pub tenant_id: String,
    pub name: String,
}

/// A tenant's tokens.
pub struct ListScimTokens {
    pub tenant_id: String,
}

/// Live tokens a tenant may hold at once.
pub const MAX_LIVE_TOKENS: usize = 20;

/// SCIM requests of one tenant served at once by this process; more wait (up to
/// [`ADMISSION_WAIT`]) for a turn, so one tenant's bulk sync cannot take every worker.
pub const IN_FLIGHT_PER_TENANT: usize = 16;

/// How long a SCIM request waits for a turn before it is refused (429).
pub const ADMISSION_WAIT: Duration = Duration::from_secs(5);

/// Per-process SCIM state: when each token's use was last written (a throttle), and each
/// tenant's turns.
#[derive(Default)]
pub struct ScimTouches {
    touches: Mutex<HashMap<Uuid, chrono::DateTime<chrono::Utc>>>,
    turns: dashmap::DashMap<String, Arc<tokio::sync::Semaphore>>,
}

impl Iam {
    /// A turn for one SCIM request of `tenant_id` (held until the permit drops), or
    /// RESOURCE_EXHAUSTED after waiting [`ADMISSION_WAIT`].
    pub async fn scim_turn(&self, tenant_id: &str) -> Result<tokio::sync::OwnedSemaphorePermit> {
        let turns = self
            .scim_touches
            .turns
            .entry(tenant_id.to_owned())
            .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT_PER_TENANT)))
            .clone();
        match tokio::time::timeout(ADMISSION_WAIT, turns.acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => {
                let mut e = Error::new(
                    crate::domain::Kind::ResourceExhausted,
                    Reason::Overloaded,
                    format!("the tenant has {IN_FLIGHT_PER_TENANT} SCIM requests in progress: retry in a moment"),
                );
                e.retry_after_ms = 1000;
                Err(e)
            }
        }
    }
}

fn digest(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// The name rule of SCIM tokens: 1–64 of `[A-Za-z0-9._-]` (it appears in audit actors).
pub fn check_name(name: &str, field: &str, v: &mut Violations) {
    if name.is_empty() || name.len() > 64 || !name.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)) {
        v.add(field, "must be 1 to 64 letters, digits, '.', '_' or '-'");
    }
}

impl Iam {
    /// Only who could assign the administrator role: see the module docs.
    async fn may_manage_scim(&self, caller: &Caller, tenant_id: &str) -> Result<()> {
        self.may_act_as_administrator(
            caller,
            tenant_id,
            "SCIM tokens",
            "manage SCIM tokens (they act as an administrator)",
        )
        .await
    }

    /// Only who could assign the administrator role (the platform admin, or a tenant user with
    /// settings.edit, roles.assign and every right of that role) may manage `what`: credentials
    /// that act as, or can sign in as, any of the tenant's users.
    pub(crate) async fn may_act_as_administrator(
        &self,
        caller: &Caller,
        tenant_id: &str,
        what: &str,
        doing: &str,
    ) -> Result<()> {
        // A service credential holds no rights a ceiling could be checked against.
        if !matches!(caller, Caller::PlatformAdmin | Caller::User(_)) {
            return Err(Error::permission_denied(format!(
                "not allowed: {what} are managed by the platform admin or a tenant administrator"
            )));
        }
        self.authorize(caller, tenant_id, Right::SETTINGS_EDIT, Target::Tenant).await?;
        self.authorize(caller, tenant_id, Right::ROLES_ASSIGN, Target::Tenant).await?;
        let admin = roles::builtin_role_id(tenant_id, Template::Administrator);
        self.roles_within_own_rights(caller, tenant_id, &[admin], doing).await
    }

    /// Returns the stored token and the bearer token itself (shown once).
    pub async fn create_scim_token(&self, call: &Call, cmd: CreateScimToken) -> Result<(ScimToken, SecretString)> {
        let CreateScimToken { tenant_id, name, ttl } = cmd;
        self.may_manage_scim(&call.caller, &tenant_id).await?;
        let mut bytes = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut bytes);
        let token = format!(
            "{TOKEN_PREFIX}{}",
            base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, bytes)
        );
        let t = now();
        let row = ScimToken {
            token_id: Uuid::now_v7(),
            tenant_id: tenant_id.clone(),
            name,
            token_sha256: digest(&token),
            created_by: call.caller.actor().id,
            create_time: t,
            expire_time: ttl.map(|d| t + chrono::Duration::from_std(d).unwrap_or_default()),
            revoke_time: None,
            last_used_time: None,
        };
        let row = self
            .db
            .write(&call.ctx, async |tx| {
                tenants::lock(tx, &tenant_id).await?;
                let live = scim_tokens::list(&**tx, &tenant_id)
                    .await?
                    .iter()
                    .filter(|r| r.revoke_time.is_none() && r.expire_time.is_none_or(|e| e > t))
                    .count();
                if live >= MAX_LIVE_TOKENS {
                    return Err(Error::precondition(
                        Reason::ScimTokenLimitReached,
                        "SCIM_TOKENS",
                        format!("tenants/{tenant_id}"),
                        format!("the tenant has {live} live SCIM tokens, the most it may hold: revoke one first"),
                    ));
                }
                let row = scim_tokens::insert(tx, row).await?;
                tx.audit(
                    AuditRecord::new(Some(&tenant_id), "scim_token.created", "scim_token", &row.name)
                        .with_detail("expire_time", row.expire_time.map(|t| t.to_rfc3339()).unwrap_or_default()),
                );
                Ok(row)
            })
            .await?;
        Ok((row, SecretString::from(token)))
    }

    pub async fn list_scim_tokens(&self, caller: &Caller, query: &ListScimTokens) -> Result<Vec<ScimToken>> {
        let tenant_id = query.tenant_id.as_str();
        self.may_manage_scim(caller, tenant_id).await?;
        tenants::get(self.db.conn(), tenant_id).await?;
        scim_tokens::list(self.db.conn(), tenant_id).await
    }

    /// NOT_FOUND for an unknown name; revoking a revoked token changes nothing.
    pub async fn revoke_scim_token(&self, call: &Call, cmd: ScimTokenRef) -> Result<ScimToken> {
        let (tenant_id, name) = (cmd.tenant_id.as_str(), cmd.name.as_str());
        self.may_manage_scim(&call.caller, tenant_id).await?;
        self.db
            .write(&call.ctx, async |tx| {
                let row = scim_tokens::find_by_name(&**tx, tenant_id, name)
                    .await?
                    .ok_or_else(|| scim_tokens::not_found(name))?;
                let t = now();
                if scim_tokens::revoke(tx, row.token_id, t).await? {
                    tx.audit(AuditRecord::new(Some(tenant_id), "scim_token.revoked", "scim_token", name));
                }
                Ok(scim_tokens::find_by_name(&**tx, tenant_id, name).await?.unwrap_or(row))
            })
            .await
    }

    /// The caller a SCIM bearer token stands for; UNAUTHENTICATED (one answer for unknown,
    /// revoked and expired tokens) otherwise.
    pub async fn scim_caller(&self, bearer: &str) -> Result<Caller> {
        let refused = || Error::unauthenticated("the SCIM token is not valid: unknown, revoked or expired");
        if !bearer.starts_with(TOKEN_PREFIX) || bearer.len() > 128 {
            return Err(refused());
        }
        let Some(row) = scim_tokens::find_by_digest(self.db.conn(), &digest(bearer)).await? else {
            return Err(refused());
        };
        let t = now();
        if row.revoke_time.is_some() || row.expire_time.is_some_and(|e| e <= t) {
            return Err(refused());
        }
        self.open_tenant(&row.tenant_id).await?;
        let due = {
            let mut touches = self.scim_touches.touches.lock().expect("not poisoned");
            let due = touches.get(&row.token_id).is_none_or(|last| t - *last >= TOUCH_EVERY);
            if due {
                touches.insert(row.token_id, t);
            }
            due
        };
        if due {
            let ctx = RequestContext::system("scim");
            let id = row.token_id;
            if let Err(e) = self.db.write(&ctx, async |tx| scim_tokens::touch(&**tx, id, t).await).await {
                tracing::debug!(error = %e, "recording a SCIM token's use failed");
            }
        }
        Ok(Caller::Scim { tenant_id: row.tenant_id.into(), name: row.name.into() })
    }
}
