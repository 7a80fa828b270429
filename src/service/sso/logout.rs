//! OpenID Connect Back-Channel Logout 1.0: a provider POSTs a logout token (a JWT it signs like
//! an ID token, with the back-channel logout event and no nonce) and crm-iam ends the sessions it
//! opened for that provider session (`sid`) or, without one, for that user (`sub`).

use openidconnect::{ClientId, ClientSecret, Nonce, core::CoreClient, core::CoreIdToken};
use secrecy::ExposeSecret;
use serde_json::Value;
use uuid::Uuid;

use super::tokens::{payload, verify};
use crate::{
    domain::{Result, audit::AuditRecord, audit::RequestContext},
    service::Iam,
    store::{sessions, sso},
};

/// The event a logout token must carry.
pub const BACKCHANNEL_LOGOUT_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";

/// Largest logout token looked at.
const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// What a logout request did.
#[derive(Debug, PartialEq, Eq)]
pub enum LogoutOutcome {
    /// The token was valid; this many sessions ended (0: none was open).
    Ended(usize),
    /// The token was refused (why, for the log; the answer is `400 invalid_request`).
    Refused(&'static str),
}

/// A logout token must not carry a nonce (so an ID token is never taken for one).
fn no_nonce(n: Option<&Nonce>) -> std::result::Result<(), String> {
    if n.is_none() { Ok(()) } else { Err("a logout token carries no nonce".into()) }
}

impl Iam {
    /// Handles a logout token sent to a tenant's provider's back-channel logout endpoint.
    pub async fn backchannel_logout(&self, tenant_id: &str, connection: &str, token: &str) -> Result<LogoutOutcome> {
        if token.is_empty() || token.len() > MAX_TOKEN_BYTES {
            return Ok(LogoutOutcome::Refused("no logout token"));
        }
        let Some(row) = sso::find_by_name(self.db.conn(), tenant_id, connection).await? else {
            return Ok(LogoutOutcome::Refused("unknown connection"));
        };
        let Ok(parsed) = token.parse::<CoreIdToken>() else { return Ok(LogoutOutcome::Refused("malformed token")) };
        let secret = self.client_secret(&row)?;
        let client = |metadata: &openidconnect::core::CoreProviderMetadata| {
            CoreClient::from_provider_metadata(
                metadata.clone(),
                ClientId::new(row.client_id.clone()),
                Some(ClientSecret::new(secret.expose_secret().to_owned())),
            )
        };
        let Ok(found) = self.sso.discover(&row.issuer, false).await else {
            return Ok(LogoutOutcome::Refused("provider unavailable"));
        };
        let claims = match verify(&client(&found.metadata), &parsed, no_nonce, true) {
            Err(openidconnect::ClaimsVerificationError::SignatureVerification(
                openidconnect::SignatureVerificationError::NoMatchingKey,
            )) => match self.sso.discover(&row.issuer, true).await {
                Ok(fresh) => verify(&client(&fresh.metadata), &parsed, no_nonce, true),
                Err(_) => return Ok(LogoutOutcome::Refused("provider unavailable")),
            },
            other => other,
        };
        let Ok(claims) = claims else { return Ok(LogoutOutcome::Refused("token not valid")) };
        let raw = payload(token);
        let is_logout =
            raw.get("events").and_then(Value::as_object).is_some_and(|e| e.contains_key(BACKCHANNEL_LOGOUT_EVENT));
        if !is_logout {
            return Ok(LogoutOutcome::Refused("not a logout token"));
        }
        let sid = raw.get("sid").and_then(Value::as_str).filter(|s| !s.is_empty());
        let user: Option<Uuid> =
            sso::link(self.db.conn(), row.idp_id, claims.subject().as_str()).await?.map(|l| l.user_id);
        if sid.is_none() && user.is_none() {
            // A subject crm-iam never linked: nothing of it is open.
            return Ok(LogoutOutcome::Ended(0));
        }
        let ctx = RequestContext::system(&format!("idp:{}", row.name));
        let ended = self
            .db
            .write(&ctx, async |tx| {
                let open = sso::sessions_to_end(&**tx, row.idp_id, sid, user).await?;
                let ids: Vec<Uuid> = open.iter().map(|(s, _)| *s).collect();
                sessions::end(tx, &ids, "idp_logout").await?;
                let mut users: Vec<Uuid> = open.iter().map(|(_, u)| *u).collect();
                users.sort();
                users.dedup();
                for user_id in users {
                    tx.policy_changed(tenant_id, Some(user_id));
                    let of_user: Vec<String> =
                        open.iter().filter(|(_, u)| *u == user_id).map(|(s, _)| s.to_string()).collect();
                    tx.audit(
                        AuditRecord::new(Some(tenant_id), "auth.sessions_revoked", "user", user_id)
                            .with_detail("reason", "idp_logout")
                            .with_detail("connection", row.name.clone())
                            .with_detail("session_ids", of_user),
                    );
                }
                Ok(ids.len())
            })
            .await?;
        Ok(LogoutOutcome::Ended(ended))
    }
}
