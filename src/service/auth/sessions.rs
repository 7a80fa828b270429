//! Sessions: opening one (session limit, refresh token, access token), refresh rotation with
//! theft detection, logout, listing and revocation, and whether a token's session is open.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{
    Tokens,
    commands::{Anonymous, IntrospectToken, ListSessions, Logout, Refresh, RevokeSessions},
    keys::{Claims, SCOPE_PASSWORD_CHANGE, Verified},
    random_token, sha256_hex, token_invalid,
};
use crate::{
    domain::access::Right,
    domain::{
        Error, Kind, Reason, Result,
        audit::{AuditRecord, RequestContext},
        now,
        tenant::Tenant,
        user::UserState,
    },
    service::{Call, Iam, Page, Target},
    store::{
        Tx,
        sessions::{self, Session, SessionFacts},
        users::{self, Row},
    },
};

/// A session as listed.
#[derive(Debug, Clone)]
pub struct SessionView {
    pub session: Session,
    pub facts: SessionFacts,
}

impl Iam {
    /// Opens a session in `tx`: evicts the user's oldest sessions beyond the tenant's limit,
    /// stores the refresh token's hash, signs the access token. `idp`: the identity provider (and
    /// its session id) a single sign-on came through, which back-channel logout ends it by.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn open_session(
        &self,
        tx: &Tx,
        ctx: &RequestContext,
        tenant: &Tenant,
        user: &Row,
        restricted: bool,
        amr: &[&str],
        idp: Option<(Uuid, Option<String>)>,
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
                idp_id: idp.as_ref().map(|(id, _)| *id),
                idp_sid: idp.and_then(|(_, sid)| sid),
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

    /// `Auth.Refresh`: rotates the refresh token; a second use of one ends its session.
    pub async fn refresh(&self, call: &Anonymous, cmd: Refresh) -> Result<Tokens> {
        let ctx = &call.ctx;
        let hash = sha256_hex(&cmd.refresh_token);
        let Some(stored) = sessions::find_refresh(self.db.conn(), &hash).await? else {
            return Err(token_invalid("refresh token"));
        };
        let Some(session) = sessions::find(self.db.conn(), stored.session_id).await? else {
            return Err(token_invalid("refresh token"));
        };
        let tenant = self.open_tenant(&session.tenant_id).await?;
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
        let active = facts.is_some_and(|f| f.user_id == user_id && f.active_at(now()));
        if active {
            self.open_tenant(&claims.tenant).await?;
        }
        Ok(active)
    }

    /// `Auth.IntrospectToken` (any authenticated caller): a verified, active token, or None.
    pub async fn introspect(&self, q: IntrospectToken) -> Result<Option<std::sync::Arc<Verified>>> {
        let Some(v) = self.auth.keys.verify(&q.token).await else { return Ok(None) };
        match self.session_active(&v.claims).await {
            // A suspended tenant's token is not active.
            Err(e) if e.reason == crate::domain::Reason::TenantSuspended => Ok(None),
            active => Ok(active?.then_some(v)),
        }
    }

    /// `Auth.Logout`.
    pub async fn logout(&self, call: &Call, _: Logout) -> Result<()> {
        let caller = call.caller.user()?;
        self.db
            .write(&call.ctx, async |tx| {
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

    /// `Auth.ListSessions`: a user's own sessions, or another's with `users.view` over them.
    pub async fn list_sessions(&self, call: &Call, q: &ListSessions) -> Result<Page<SessionView>> {
        let (tenant_id, limit) = (q.tenant_id.as_str(), q.limit);
        let user_id = call.caller.subject(q.user_id)?;
        self.authorize(&call.caller, tenant_id, Right::USERS_VIEW, Target::User(user_id)).await?;
        self.user_row(self.db.conn(), tenant_id, user_id).await?;
        let rows = sessions::list(self.db.conn(), user_id, q.include_ended, q.after, limit).await?;
        let views = rows.into_iter().map(|s| SessionView { facts: SessionFacts::of(&s), session: s }).collect();
        Ok(Page::from_rows(views, limit))
    }

    /// `Auth.RevokeSessions`: ends the listed sessions of the user (all when empty).
    /// A user ends their own sessions; ending another's needs `users.edit` over them.
    pub async fn revoke_sessions(&self, call: &Call, cmd: RevokeSessions) -> Result<u64> {
        let RevokeSessions { tenant_id, user_id, session_ids, reason } = cmd;
        let (tenant_id, user_id) = (tenant_id.as_str(), call.caller.subject(user_id)?);
        self.authorize_self_or(&call.caller, tenant_id, user_id, Right::USERS_EDIT).await?;
        self.db
            .write(&call.ctx, async |tx| {
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
}
