//! Auth.BeginSso / CompleteSso: the authorization code flow with PKCE (S256) and a nonce, crm-iam
//! as relying party.
//!
//! The `state` is not stored: it is an envelope sealed with the master key holding the tenant,
//! the provider, the redirect URI, the nonce, the PKCE verifier and its expiry, so BeginSso (which
//! anyone may call) writes nothing. CompleteSso records the state's digest before it uses it (a
//! unique row: one sign-in per state, one winner of a race), then exchanges the code, validates
//! the ID token and opens the session in one transaction with its audit event.
//!
//! BeginSso also answers a `browser_binding` secret whose digest the state holds; CompleteSso
//! requires it, so a state and code an attacker obtained for his own sign-in cannot be completed
//! through a victim's browser (login CSRF): the front end keeps the binding where only the
//! beginning browser brings it back (for `/sso/callback`, the cookie `/sso/start` sets).

use openidconnect::{
    AuthorizationCode, ClientId, ClientSecret, CsrfToken, Nonce, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl,
    Scope, TokenResponse,
    core::{CoreAuthenticationFlow, CoreClient, CoreProviderMetadata},
};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use super::{
    ProviderConfig, config_of, sso_failed,
    tokens::{groups, payload, provider_methods, text_claim, token_error, verify},
};
use crate::{
    domain::{Error, Kind, Reason, Result, audit::AuditRecord, now, user::UserState, validate},
    secrets::Slot,
    service::{
        Iam,
        auth::{Tokens, commands::Anonymous},
        users::ProvisionedProfile,
    },
    store::{departments, sessions, sso, tenants, users},
};

/// How long a started sign-in may take.
pub const STATE_TTL_SECS: i64 = 600;

/// Auth.BeginSso.
pub struct BeginSso {
    pub tenant_id: String,
    pub connection: String,
    pub redirect_uri: String,
}

/// Where to send the browser, and the state in that URL.
pub struct SsoStart {
    pub authorization_url: String,
    pub state: String,
    /// The secret binding the sign-in to the browser that began it.
    pub browser_binding: String,
}

/// Auth.CompleteSso.
pub struct CompleteSso {
    pub state: String,
    pub code: String,
    /// RFC 9207 `iss` of the authorization response, empty when the provider sent none.
    pub iss: String,
    /// The `browser_binding` of BeginSso.
    pub browser_binding: String,
}

/// What the sealed state holds.
#[derive(Serialize, Deserialize)]
struct State {
    /// Tenant.
    t: String,
    /// Provider id.
    p: Uuid,
    /// Redirect URI.
    r: String,
    /// Nonce.
    n: String,
    /// PKCE verifier.
    v: String,
    /// Expiry (Unix seconds).
    e: i64,
    /// Digest of the browser binding.
    b: String,
}

fn binding_digest(binding: &str) -> String {
    crate::service::auth::sha256_hex(&format!("sso-browser:{binding}"))
}

/// A refused sign-in: audited with its reason (in the tenant's trail when the tenant is known).
struct Refusal {
    tenant_id: Option<String>,
    connection: String,
    reason: &'static str,
    user_id: Option<Uuid>,
    detail: Option<String>,
}

fn refuse(reason: &'static str) -> Refusal {
    Refusal { tenant_id: None, connection: String::new(), reason, user_id: None, detail: None }
}

/// The outcome of a sign-in transaction (refusals commit their audit event).
#[derive(Serialize, Deserialize)]
enum Outcome {
    Ok(Tokens),
    Refused(String),
}

/// What the validated ID token says.
struct Identity {
    subject: String,
    email: Option<(String, String)>,
    email_verified: bool,
    claims: Map<String, Value>,
    amr: Vec<String>,
    sid: Option<String>,
}

fn unavailable(why: String) -> Error {
    Error::new(
        Kind::Unavailable,
        Reason::IdentityProviderUnavailable,
        format!("the identity provider cannot be used now: {why}"),
    )
}

impl Iam {
    /// Auth.BeginSso.
    pub async fn begin_sso(&self, _call: &Anonymous, cmd: BeginSso) -> Result<SsoStart> {
        let BeginSso { tenant_id, connection, redirect_uri } = cmd;
        let row = sso::find_by_name(self.db.conn(), &tenant_id, &connection)
            .await?
            .ok_or_else(|| sso::not_found(&connection))?;
        self.open_tenant(&tenant_id).await?;
        let config = config_of(&row)?;
        if !config.redirect_uris.contains(&redirect_uri) {
            return Err(Error::invalid_field("redirect_uri", "is not one of the connection's redirect_uris"));
        }
        let found = self.sso.discover(&row.issuer, false).await.map_err(unavailable)?;
        let redirect = RedirectUrl::new(redirect_uri.clone())
            .map_err(|_| Error::invalid_field("redirect_uri", "must be an absolute URL"))?;
        let client =
            CoreClient::from_provider_metadata(found.metadata.clone(), ClientId::new(row.client_id.clone()), None)
                .set_redirect_uri(redirect);
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let nonce = Nonce::new_random();
        let browser_binding = crate::service::auth::random_token();
        let state = State {
            t: tenant_id,
            p: row.idp_id,
            r: redirect_uri,
            n: nonce.secret().clone(),
            v: verifier.secret().clone(),
            e: now().timestamp() + STATE_TTL_SECS,
            b: binding_digest(&browser_binding),
        };
        // The envelope with `.` for `:`, so the state needs no escaping in a query string.
        let sealed = self
            .auth
            .secrets
            .seal(Slot::SsoState, &serde_json::to_vec(&state).map_err(Error::internal)?)
            .replace(':', ".");
        let state_token = sealed.clone();
        let mut request = client
            .authorize_url(
                CoreAuthenticationFlow::AuthorizationCode,
                move || CsrfToken::new(state_token),
                move || nonce,
            )
            .set_pkce_challenge(challenge);
        let scopes =
            if config.scopes.is_empty() { vec!["email".to_owned(), "profile".to_owned()] } else { config.scopes };
        for s in scopes {
            request = request.add_scope(Scope::new(s));
        }
        let (url, _, _) = request.url();
        Ok(SsoStart { authorization_url: url.to_string(), state: sealed, browser_binding })
    }

    /// Auth.CompleteSso.
    pub async fn complete_sso(&self, call: &Anonymous, cmd: CompleteSso) -> Result<Tokens> {
        let slot = self.auth.limiter.take(call.ip)?;
        let _turn = self.sso.sign_in_turn().await?;
        match self.sign_in(call, cmd).await {
            Ok(Ok(tokens)) => {
                slot.give_back();
                Ok(tokens)
            }
            Ok(Err(refusal)) => {
                if let Some(tenant_id) = refusal.tenant_id.as_deref() {
                    let mut record = AuditRecord::new(
                        Some(tenant_id),
                        "auth.sso_login_failed",
                        "user",
                        refusal.user_id.map(|u| u.to_string()).unwrap_or_default(),
                    )
                    .with_detail("reason", refusal.reason)
                    .with_detail("connection", refusal.connection);
                    if let Some(d) = refusal.detail {
                        record = record.with_detail("detail", d);
                    }
                    self.db
                        .write(&crate::service::auth::attempt_context(&call.ctx), async |tx| {
                            tx.audit(record);
                            Ok(())
                        })
                        .await?;
                }
                Err(sso_failed())
            }
            Err(e) => Err(e),
        }
    }

    /// The sign-in itself: tokens, a refusal, or an error of crm-iam itself.
    async fn sign_in(&self, call: &Anonymous, cmd: CompleteSso) -> Result<std::result::Result<Tokens, Refusal>> {
        let CompleteSso { state: sealed, code, iss, browser_binding } = cmd;
        let Some(state) = self
            .auth
            .secrets
            .open(Slot::SsoState, &sealed.replace('.', ":"))
            .ok()
            .and_then(|b| serde_json::from_slice::<State>(&b).ok())
        else {
            return Ok(Err(refuse("bad_state")));
        };
        let Some(row) = sso::find(self.db.conn(), state.p).await?.filter(|r| r.tenant_id == state.t) else {
            return Ok(Err(Refusal { tenant_id: Some(state.t), ..refuse("unknown_connection") }));
        };
        let known = |reason: &'static str| Refusal {
            tenant_id: Some(row.tenant_id.clone()),
            connection: row.name.clone(),
            reason,
            user_id: None,
            detail: None,
        };
        if state.e <= now().timestamp() {
            return Ok(Err(known("state_expired")));
        }
        // Before the state is used up: a wrong binding leaves it to the browser that began it.
        let bound = subtle::ConstantTimeEq::ct_eq(binding_digest(&browser_binding).as_bytes(), state.b.as_bytes());
        if !bool::from(bound) {
            return Ok(Err(known("browser_mismatch")));
        }
        // RFC 9207: a response the browser brings from another provider (mix-up) is not this one's.
        if !iss.is_empty() && iss != row.issuer {
            return Ok(Err(known("issuer_mismatch")));
        }
        // Of what the state holds, not of its spelling (the separators may come back as `:` or `.`):
        // its nonce is random per sign-in.
        let digest = crate::service::auth::sha256_hex(&format!("sso-state:{}", state.n));
        let expire = chrono::DateTime::from_timestamp(state.e, 0).unwrap_or_else(now);
        let first = self
            .db
            .write(&crate::service::auth::attempt_context(&call.ctx), async |tx| {
                sso::use_state(tx, &digest, expire).await
            })
            .await?;
        if !first {
            return Ok(Err(known("state_replayed")));
        }
        let config = config_of(&row)?;
        let identity = match self.redeem(&row, &state, code).await? {
            Ok(identity) => identity,
            Err((reason, detail)) => return Ok(Err(Refusal { detail, ..known(reason) })),
        };
        match self.open_sso_session(call, &row, config, identity).await {
            // What the provider's claims ran into (no free seat, an address that looks like
            // another user's, a link made meanwhile) is a refusal like any other, audited.
            Err(e)
                if matches!(
                    e.kind,
                    Kind::AlreadyExists | Kind::ResourceExhausted | Kind::FailedPrecondition | Kind::Aborted
                ) =>
            {
                Ok(Err(Refusal { detail: Some(e.message), ..known("provisioning_refused") }))
            }
            other => other,
        }
    }

    /// Exchanges the code and validates the ID token; a refusal's reason (and what the provider
    /// said) otherwise.
    async fn redeem(
        &self,
        row: &sso::Provider,
        state: &State,
        code: String,
    ) -> Result<std::result::Result<Identity, (&'static str, Option<String>)>> {
        let found = match self.sso.discover(&row.issuer, false).await {
            Ok(d) => d,
            Err(why) => return Ok(Err(("idp_error", Some(why)))),
        };
        let secret = self.client_secret(row)?;
        let client = |metadata: &CoreProviderMetadata| {
            CoreClient::from_provider_metadata(
                metadata.clone(),
                ClientId::new(row.client_id.clone()),
                Some(ClientSecret::new(secret.expose_secret().to_owned())),
            )
        };
        let Ok(redirect) = RedirectUrl::new(state.r.clone()) else { return Ok(Err(("bad_state", None))) };
        let exchange =
            match client(&found.metadata).set_redirect_uri(redirect).exchange_code(AuthorizationCode::new(code)) {
                Ok(request) => {
                    request.set_pkce_verifier(PkceCodeVerifier::new(state.v.clone())).request_async(&*self.sso).await
                }
                Err(_) => return Ok(Err(("idp_error", Some("the provider has no token endpoint".into())))),
            };
        let response = match exchange {
            Ok(r) => r,
            Err(e) => return Ok(Err(("idp_error", Some(token_error(&e))))),
        };
        let Some(id_token) = response.id_token() else {
            return Ok(Err(("idp_error", Some("the token response holds no ID token".into()))));
        };
        let nonce = Nonce::new(state.n.clone());
        let claims = match verify(&client(&found.metadata), id_token, &nonce, false) {
            Err(openidconnect::ClaimsVerificationError::SignatureVerification(
                openidconnect::SignatureVerificationError::NoMatchingKey,
            )) => {
                // Signed with a key the cached set lacks: the provider rotated its keys.
                let fresh = match self.sso.discover(&row.issuer, true).await {
                    Ok(d) => d,
                    Err(why) => return Ok(Err(("idp_error", Some(why)))),
                };
                verify(&client(&fresh.metadata), id_token, &nonce, false)
            }
            other => other,
        };
        let claims = match claims {
            Ok(c) => c,
            Err(openidconnect::ClaimsVerificationError::InvalidNonce(_)) => return Ok(Err(("wrong_nonce", None))),
            Err(e) => return Ok(Err(("id_token_invalid", Some(e.to_string())))),
        };
        let raw = payload(&id_token.to_string());
        let mapping = config_of(row)?.claims;
        let email = text_claim(&raw, &mapping.email).and_then(|e| validate::email(&e).ok());
        Ok(Ok(Identity {
            subject: claims.subject().as_str().to_owned(),
            // `email_verified` speaks of the `email` claim only: an address from another claim is unverified.
            email_verified: mapping.email == "email"
                && raw.get("email_verified").and_then(Value::as_bool).unwrap_or(false),
            email,
            amr: provider_methods(&raw),
            sid: text_claim(&raw, "sid").filter(|s| s.len() <= 256),
            claims: raw,
        }))
    }

    /// Finds or creates the user, applies the group mappings, opens the session (one transaction).
    async fn open_sso_session(
        &self,
        call: &Anonymous,
        row: &sso::Provider,
        config: ProviderConfig,
        identity: Identity,
    ) -> Result<std::result::Result<Tokens, Refusal>> {
        let tenant_id = row.tenant_id.as_str();
        let tenant = tenants::get_settings(self.db.conn(), tenant_id).await?;
        tenant.ensure_open()?;
        let ctx = crate::service::auth::attempt_context(&call.ctx);
        let mapping = &config.claims;
        let wanted_groups = groups(&identity.claims, &mapping.groups);
        let mapped: Vec<Uuid> = config.group_role_mappings.iter().map(|m| m.role_id).collect();
        let mut wanted: Vec<Uuid> =
            config.group_role_mappings.iter().filter(|m| wanted_groups.contains(&m.group)).map(|m| m.role_id).collect();
        wanted.sort();
        wanted.dedup();
        let outcome = self
            .db
            .write(&ctx, async |tx| {
                let fail = |reason: &str, user: Option<Uuid>| {
                    AuditRecord::new(
                        Some(tenant_id),
                        "auth.sso_login_failed",
                        "user",
                        user.map(|u| u.to_string()).unwrap_or_default(),
                    )
                    .with_detail("reason", reason.to_owned())
                    .with_detail("connection", row.name.clone())
                };
                let linked = sso::link(&**tx, row.idp_id, &identity.subject).await?;
                let (user_id, how) = match (linked, &identity.email) {
                    (Some(link), _) => (Some(link.user_id), "subject"),
                    (None, None) => {
                        tx.audit(fail("email_missing", None));
                        return Ok(Outcome::Refused("email_missing".into()));
                    }
                    (None, Some((address, key))) => {
                        if !config.allows_email(key) {
                            tx.audit(fail("domain_not_allowed", None));
                            return Ok(Outcome::Refused("domain_not_allowed".into()));
                        }
                        if !identity.email_verified {
                            tx.audit(fail("unverified_email", None));
                            return Ok(Outcome::Refused("unverified_email".into()));
                        }
                        // Non-ASCII letters may fold onto ASCII ones (the Kelvin sign onto `k`):
                        // such an address never names an existing user.
                        if !address.is_ascii() {
                            tx.audit(fail("non_ascii_email", None));
                            return Ok(Outcome::Refused("non_ascii_email".into()));
                        }
                        match sessions::user_for_login(&**tx, tenant_id, key).await? {
                            Some(u) => (Some(u.user_id), "email"),
                            None if row.jit_provisioning => (None, "created"),
                            None => {
                                tx.audit(fail("unknown_user", None));
                                return Ok(Outcome::Refused("unknown_user".into()));
                            }
                        }
                    }
                };
                let mut user = match user_id {
                    Some(id) => match users::find(&**tx, tenant_id, id).await? {
                        Some(_) => users::get_for_update(tx, tenant_id, id).await?,
                        None => {
                            tx.audit(fail("unknown_user", Some(id)));
                            return Ok(Outcome::Refused("unknown_user".into()));
                        }
                    },
                    None => {
                        let (email, email_key) = identity.email.clone().expect("an address when none is linked");
                        let department_id = match text_claim(&identity.claims, &mapping.department) {
                            Some(name) => departments::all(&**tx, tenant_id)
                                .await?
                                .into_iter()
                                .find(|d| d.name == name)
                                .map(|d| d.department_id),
                            None => None,
                        };
                        let text = |claim: &str, max: usize| {
                            text_claim(&identity.claims, claim)
                                .and_then(|s| validate::text(&s, max).ok())
                                .unwrap_or_default()
                        };
                        let profile = ProvisionedProfile {
                            email,
                            email_key,
                            given_name: text(&mapping.given_name, 100),
                            family_name: text(&mapping.family_name, 100),
                            phone: text_claim(&identity.claims, &mapping.phone)
                                .and_then(|p| validate::phone(&p).ok().flatten()),
                            position: text(&mapping.position, 100),
                            department_id,
                        };
                        self.create_provisioned_user(tx, tenant_id, &row.name, profile).await?
                    }
                };
                // An invited user whose address the provider verified has proved it as the
                // invitation's e-mail would: the sign-in accepts the invitation.
                let mut accepted_invitation = false;
                if how == "email" && users::state(&user)? == UserState::Invited {
                    let before = self.to_user_in(&**tx, user.clone()).await?;
                    let version = user.version;
                    let mut active = user;
                    active.state = UserState::Active.as_str().into();
                    user = users::update(tx, active, version).await?;
                    crate::store::tokens::revoke(tx, user.user_id, Some(crate::store::tokens::TokenKind::Invitation))
                        .await?;
                    let after = self.to_user_in(&**tx, user.clone()).await?;
                    tx.audit(
                        AuditRecord::new(Some(tenant_id), "user.invitation_accepted", "user", user.user_id)
                            .with_changes(Some(&before), Some(&after), &["version", "update_time"])
                            .with_detail("via", "sso"),
                    );
                    accepted_invitation = true;
                }
                if users::state(&user)? != UserState::Active {
                    tx.audit(fail("user_not_active", Some(user.user_id)));
                    return Ok(Outcome::Refused("user_not_active".into()));
                }
                if how != "subject" {
                    sso::insert_link(
                        tx,
                        sso::Link {
                            idp_id: row.idp_id,
                            subject: identity.subject.clone(),
                            tenant_id: tenant_id.to_owned(),
                            user_id: user.user_id,
                            create_time: now(),
                        },
                    )
                    .await?;
                }
                // Pre-account-hijacking: whoever prepared this account with the address (set by
                // someone who could edit users, before its owner used the CRM) may know its
                // password and hold its sessions. Linking by the verified address hands the account
                // to the address's owner: the password and the sessions go (a break-glass
                // administrator's password stays: the tenant named it for when SSO fails).
                let mut password_removed = false;
                let mut sessions_ended = 0;
                if how == "email" && !config.break_glass_user_ids.contains(&user.user_id) {
                    sessions_ended = sessions::end_all_of_user(tx, user.user_id, "sso_linked").await?.len();
                    if user.password_hash.is_some() {
                        let version = user.version;
                        let mut cleared = user;
                        cleared.password_hash = None;
                        cleared.must_change_password = false;
                        user = users::update(tx, cleared, version).await?;
                        password_removed = true;
                    }
                    tx.policy_changed(tenant_id, Some(user.user_id));
                }
                if !mapped.is_empty() {
                    self.sync_mapped_roles(tx, tenant_id, &user, &mapped, &wanted).await?;
                }
                users::set_last_login(tx, tenant_id, user.user_id, now()).await?;
                let mut amr: Vec<&str> = vec!["sso"];
                amr.extend(identity.amr.iter().map(String::as_str));
                let origin = Some((row.idp_id, identity.sid.clone()));
                let tokens = self.open_session(tx, &call.ctx, &tenant, &user, false, &amr, origin).await?;
                tx.audit(
                    AuditRecord::new(Some(tenant_id), "auth.sso_login_succeeded", "user", user.user_id)
                        .with_detail("session_id", tokens.session_id.to_string())
                        .with_detail("connection", row.name.clone())
                        .with_detail("linked_by", how)
                        .with_detail("methods", amr.join(","))
                        .with_detail("password_removed", password_removed)
                        .with_detail("accepted_invitation", accepted_invitation)
                        .with_detail("sessions_ended", sessions_ended),
                );
                Ok(Outcome::Ok(tokens))
            })
            .await?;
        Ok(match outcome {
            Outcome::Ok(tokens) => Ok(tokens),
            // Already audited in the transaction.
            Outcome::Refused(_) => Err(refuse("recorded")),
        })
    }
}
