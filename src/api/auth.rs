//! `crm.iam.v1.Auth`: logins, sessions, passwords, TOTP, and token keys.

use crate::domain::access::Right;
use secrecy::SecretString;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::{
    caller, convert, decode_uuid_page_token, mutation, next_page_token, page_size, require_platform,
    tenant_field as tenant, user_caller,
};
use crate::{
    domain::{
        Error, Violations,
        audit::{Actor, ActorKind, RequestContext},
        caller::Caller,
        validate,
    },
    proto::v1::{self as pb, auth_server::Auth},
    service::{
        Iam, Target,
        auth::{SessionView, Tokens, keys::PublicJwk},
    },
    telemetry,
};

pub struct AuthApi {
    iam: Iam,
}

impl AuthApi {
    pub fn new(iam: Iam) -> Self {
        AuthApi { iam }
    }
}

/// Longest password accepted (argon2 cost grows with it).
const PASSWORD_MAX: usize = 1024;

/// Context of a call made without a token (login, token exchanges): the actor is who it is about;
/// the peer is the client's address (through trusted proxies: `AuthSettings::client_ip`).
fn public_context<T>(iam: &Iam, req: &Request<T>, actor_id: &str) -> RequestContext {
    let peer = match (client_ip(iam, req), req.remote_addr()) {
        (Some(ip), Some(tcp)) if ip != tcp.ip() => Some(format!("{ip} via {tcp}")),
        (_, tcp) => tcp.map(|a| a.to_string()),
    };
    RequestContext {
        actor: Actor { kind: ActorKind::User, id: actor_id.to_owned() },
        request_id: None,
        trace_id: telemetry::current_trace_id(),
        peer,
        idempotency: None,
    }
}

/// The client's address (see `AuthSettings::client_ip`).
fn client_ip<T>(iam: &Iam, req: &Request<T>) -> Option<std::net::IpAddr> {
    let forwarded: Vec<&str> =
        req.metadata().get_all("x-forwarded-for").iter().filter_map(|v| v.to_str().ok()).collect();
    iam.auth.settings.client_ip(req.remote_addr().map(|a| a.ip()), &forwarded)
}

fn secret_field(v: &mut Violations, field: &str, value: &str) -> SecretString {
    if value.is_empty() {
        v.add(field, "is required");
    } else if value.len() > PASSWORD_MAX {
        v.add(field, format!("must be at most {PASSWORD_MAX} bytes"));
    }
    SecretString::from(value.to_owned())
}

fn token_field(v: &mut Violations, field: &str, value: &str) {
    if value.is_empty() {
        v.add(field, "is required");
    } else if value.len() > 4096 {
        v.add(field, "is too long to be a token");
    }
}

fn duration(secs: i64) -> Option<prost_types::Duration> {
    Some(prost_types::Duration { seconds: secs, nanos: 0 })
}

fn jwk(k: PublicJwk) -> pb::Jwk {
    pb::Jwk {
        kty: "OKP".into(),
        kid: k.kid,
        r#use: "sig".into(),
        alg: "EdDSA".into(),
        crv: "Ed25519".into(),
        x: k.x,
        ..Default::default()
    }
}

fn session_to_proto(s: SessionView, current: Option<Uuid>) -> pb::Session {
    let active = s.facts.active_at(crate::domain::now());
    let session = s.session;
    pb::Session {
        current: Some(session.session_id) == current,
        session_id: session.session_id.to_string(),
        tenant_id: session.tenant_id,
        user_id: session.user_id.to_string(),
        create_time: Some(convert::ts(session.create_time)),
        last_refresh_time: Some(convert::ts(session.last_refresh_time)),
        expire_time: Some(convert::ts(session.expire_time)),
        idle_expire_time: Some(convert::ts(s.facts.idle_end)),
        peer: session.peer.unwrap_or_default(),
        active,
        end_time: convert::opt_ts(session.end_time),
        end_reason: match (session.end_reason, active) {
            (Some(r), _) => r,
            (None, false) => "expired".into(),
            (None, true) => String::new(),
        },
    }
}

/// The user a self-or-admin method acts on: `user_id`, or the calling user when empty.
fn subject(v: &mut Violations, caller: &Caller, user_id: &str) -> Uuid {
    match (user_id.is_empty(), caller) {
        (true, Caller::User(u)) => u.user_id,
        (true, _) => {
            v.add("user_id", "is required unless the caller is a user acting for themselves");
            Uuid::nil()
        }
        (false, _) => v.check("user_id", validate::uuid(user_id)).unwrap_or_default(),
    }
}

fn is_self(caller: &Caller, user_id: Uuid) -> bool {
    matches!(caller, Caller::User(u) if u.user_id == user_id)
}

#[tonic::async_trait]
impl Auth for AuthApi {
    async fn authenticate(
        &self,
        req: Request<pb::AuthenticateRequest>,
    ) -> Result<Response<pb::AuthenticateResponse>, Status> {
        super::public(&req)?;
        let msg = req.get_ref();
        let mut v = Violations::default();
        let tenant_id = tenant(&mut v, &msg.tenant_id);
        if msg.email.trim().is_empty() {
            v.add("email", "is required");
        } else if msg.email.len() > 320 {
            v.add("email", "must be at most 320 bytes");
        }
        let password = secret_field(&mut v, "password", &msg.password);
        if msg.totp_code.len() > 64 {
            v.add("totp_code", "must be at most 64 characters");
        }
        v.finish()?;
        let ctx = public_context(&self.iam, &req, "");
        let ip = client_ip(&self.iam, &req);
        let t = self.iam.authenticate(&ctx, ip, &tenant_id, &msg.email, password, msg.totp_code.trim()).await?;
        Ok(Response::new(authenticate_response(t)))
    }

    async fn refresh(&self, req: Request<pb::RefreshRequest>) -> Result<Response<pb::RefreshResponse>, Status> {
        super::public(&req)?;
        let msg = req.get_ref();
        let mut v = Violations::default();
        token_field(&mut v, "refresh_token", &msg.refresh_token);
        v.finish()?;
        let ctx = public_context(&self.iam, &req, "");
        let t = self.iam.refresh(&ctx, &msg.refresh_token).await?;
        let a = authenticate_response(t);
        Ok(Response::new(pb::RefreshResponse {
            access_token: a.access_token,
            refresh_token: a.refresh_token,
            expires_in: a.expires_in,
            session_id: a.session_id,
            token_type: a.token_type,
            user_id: a.user_id,
            password_change_required: a.password_change_required,
        }))
    }

    async fn logout(&self, req: Request<pb::LogoutRequest>) -> Result<Response<pb::LogoutResponse>, Status> {
        let caller = caller(&req)?;
        let user = user_caller(&caller)?;
        let ctx = mutation(&req, &caller, &user.tenant_id, "/crm.iam.v1.Auth/Logout", req.get_ref(), "", |_| {})?;
        self.iam.logout(&ctx, user).await?;
        Ok(Response::new(pb::LogoutResponse {}))
    }

    async fn list_sessions(
        &self,
        req: Request<pb::ListSessionsRequest>,
    ) -> Result<Response<pb::ListSessionsResponse>, Status> {
        let caller = caller(&req)?;
        let msg = req.get_ref();
        let mut v = Violations::default();
        let tenant_id = tenant(&mut v, &msg.tenant_id);
        let user_id = subject(&mut v, &caller, &msg.user_id);
        let limit = page_size(&mut v, msg.page_size);
        v.finish()?;
        self.iam.authorize(&caller, &tenant_id, Right::USERS_VIEW, Target::User(user_id)).await?;
        let filters = format!("sessions|{tenant_id}|{user_id}|{}", msg.include_ended);
        let after = decode_uuid_page_token(&msg.page_token, &filters)?;
        let page = self.iam.list_sessions(&tenant_id, user_id, msg.include_ended, after, limit).await?;
        let next_page_token = next_page_token(&page, &filters, |last| last.session.session_id.to_string());
        let current = match &caller {
            Caller::User(u) => Some(u.session_id),
            _ => None,
        };
        Ok(Response::new(pb::ListSessionsResponse {
            sessions: page.items.into_iter().map(|s| session_to_proto(s, current)).collect(),
            next_page_token,
        }))
    }

    async fn revoke_sessions(
        &self,
        req: Request<pb::RevokeSessionsRequest>,
    ) -> Result<Response<pb::RevokeSessionsResponse>, Status> {
        let caller = caller(&req)?;
        let msg = req.get_ref();
        let mut v = Violations::default();
        let tenant_id = tenant(&mut v, &msg.tenant_id);
        let user_id = subject(&mut v, &caller, &msg.user_id);
        let mut ids = Vec::new();
        for (i, s) in msg.session_ids.iter().enumerate() {
            ids.push(v.check(&format!("session_ids[{i}]"), validate::uuid(s)).unwrap_or_default());
        }
        if ids.len() > 1000 {
            v.add("session_ids", "at most 1000 at once");
        }
        let reason = v.check("reason", validate::text(&msg.reason, 500)).unwrap_or_default();
        let ctx = mutation(&req, &caller, &tenant_id, "/crm.iam.v1.Auth/RevokeSessions", msg, &msg.request_id, |m| {
            m.request_id.clear()
        })?;
        v.finish()?;
        if is_self(&caller, user_id) {
            super::same_tenant(&caller, &tenant_id)?;
        } else {
            self.iam.authorize(&caller, &tenant_id, Right::USERS_EDIT, Target::User(user_id)).await?;
        }
        let n = self.iam.revoke_sessions(&ctx, &tenant_id, user_id, ids, reason).await?;
        Ok(Response::new(pb::RevokeSessionsResponse { revoked_count: n as i32 }))
    }

    async fn change_password(
        &self,
        req: Request<pb::ChangePasswordRequest>,
    ) -> Result<Response<pb::ChangePasswordResponse>, Status> {
        let caller = caller(&req)?;
        let user = user_caller(&caller)?;
        let msg = req.get_ref();
        let mut v = Violations::default();
        let old = secret_field(&mut v, "old_password", &msg.old_password);
        let new = secret_field(&mut v, "new_password", &msg.new_password);
        v.finish()?;
        let ctx = mutation(&req, &caller, &user.tenant_id, "/crm.iam.v1.Auth/ChangePassword", &(), "", |_| {})?;
        let t = self.iam.change_password(&ctx, user, old, new).await?;
        let a = authenticate_response(t);
        Ok(Response::new(pb::ChangePasswordResponse {
            access_token: a.access_token,
            refresh_token: a.refresh_token,
            expires_in: a.expires_in,
            session_id: a.session_id,
            token_type: a.token_type,
            user_id: a.user_id,
        }))
    }

    async fn accept_invitation(
        &self,
        req: Request<pb::AcceptInvitationRequest>,
    ) -> Result<Response<pb::AcceptInvitationResponse>, Status> {
        super::public(&req)?;
        let msg = req.get_ref();
        let mut v = Violations::default();
        token_field(&mut v, "invitation_token", &msg.invitation_token);
        let new = secret_field(&mut v, "new_password", &msg.new_password);
        v.finish()?;
        let ctx = public_context(&self.iam, &req, "");
        let user = self.iam.accept_invitation(&ctx, &msg.invitation_token, new).await?;
        Ok(Response::new(pb::AcceptInvitationResponse { user: Some(convert::user_to_proto(user)) }))
    }

    async fn complete_password_reset(
        &self,
        req: Request<pb::CompletePasswordResetRequest>,
    ) -> Result<Response<pb::CompletePasswordResetResponse>, Status> {
        super::public(&req)?;
        let msg = req.get_ref();
        let mut v = Violations::default();
        token_field(&mut v, "reset_token", &msg.reset_token);
        let new = secret_field(&mut v, "new_password", &msg.new_password);
        v.finish()?;
        let ctx = public_context(&self.iam, &req, "");
        let user = self.iam.complete_password_reset(&ctx, &msg.reset_token, new).await?;
        Ok(Response::new(pb::CompletePasswordResetResponse { user: Some(convert::user_to_proto(user)) }))
    }

    async fn enroll_totp(
        &self,
        req: Request<pb::EnrollTotpRequest>,
    ) -> Result<Response<pb::EnrollTotpResponse>, Status> {
        let caller = caller(&req)?;
        let user = user_caller(&caller)?;
        let mut v = Violations::default();
        let password = secret_field(&mut v, "current_password", &req.get_ref().current_password);
        v.finish()?;
        let ctx = mutation(&req, &caller, &user.tenant_id, "/crm.iam.v1.Auth/EnrollTotp", &(), "", |_| {})?;
        let (otpauth_uri, secret) = self.iam.enroll_totp(&ctx, user, password).await?;
        Ok(Response::new(pb::EnrollTotpResponse { otpauth_uri, secret }))
    }

    async fn confirm_totp(
        &self,
        req: Request<pb::ConfirmTotpRequest>,
    ) -> Result<Response<pb::ConfirmTotpResponse>, Status> {
        let caller = caller(&req)?;
        let user = user_caller(&caller)?;
        let msg = req.get_ref();
        if msg.code.trim().is_empty() {
            return Err(Error::invalid_field("code", "is required: a current code from the authenticator app").into());
        }
        let ctx = mutation(&req, &caller, &user.tenant_id, "/crm.iam.v1.Auth/ConfirmTotp", &(), "", |_| {})?;
        let recovery_codes = self.iam.confirm_totp(&ctx, user, msg.code.trim()).await?;
        Ok(Response::new(pb::ConfirmTotpResponse { recovery_codes }))
    }

    async fn disable_totp(
        &self,
        req: Request<pb::DisableTotpRequest>,
    ) -> Result<Response<pb::DisableTotpResponse>, Status> {
        let caller = caller(&req)?;
        let msg = req.get_ref();
        let mut v = Violations::default();
        let tenant_id = tenant(&mut v, &msg.tenant_id);
        let user_id = subject(&mut v, &caller, &msg.user_id);
        let own = is_self(&caller, user_id);
        if own && msg.code.trim().is_empty() {
            v.add("code", "is required to turn off your own TOTP: a current code or an unused recovery code");
        }
        let ctx = mutation(&req, &caller, &tenant_id, "/crm.iam.v1.Auth/DisableTotp", msg, &msg.request_id, |m| {
            m.request_id.clear()
        })?;
        v.finish()?;
        if own {
            super::same_tenant(&caller, &tenant_id)?;
        } else {
            self.iam.authorize(&caller, &tenant_id, Right::USERS_EDIT, Target::User(user_id)).await?;
        }
        let by_self = match &caller {
            Caller::User(u) if own => Some((u, msg.code.trim())),
            _ => None,
        };
        let user = self.iam.disable_totp(&ctx, &tenant_id, user_id, by_self).await?;
        Ok(Response::new(pb::DisableTotpResponse { user: Some(convert::user_to_proto(user)) }))
    }

    async fn get_jwks(&self, _req: Request<pb::GetJwksRequest>) -> Result<Response<pb::GetJwksResponse>, Status> {
        Ok(Response::new(pb::GetJwksResponse { keys: self.iam.jwks().into_iter().map(jwk).collect() }))
    }

    async fn introspect_token(
        &self,
        req: Request<pb::IntrospectTokenRequest>,
    ) -> Result<Response<pb::IntrospectTokenResponse>, Status> {
        caller(&req)?;
        let msg = req.get_ref();
        let mut v = Violations::default();
        token_field(&mut v, "token", &msg.token);
        v.finish()?;
        let Some(verified) = self.iam.introspect(&msg.token).await? else {
            return Ok(Response::new(pb::IntrospectTokenResponse { active: false, claims: None }));
        };
        let c = verified.claims.clone();
        let at = |secs: i64| Some(prost_types::Timestamp { seconds: secs, nanos: 0 });
        Ok(Response::new(pb::IntrospectTokenResponse {
            active: true,
            claims: Some(pb::TokenClaims {
                subject: c.sub,
                tenant_id: c.tenant,
                session_id: c.sid,
                issuer: c.iss,
                audience: c.aud,
                issue_time: at(c.iat),
                expire_time: at(c.exp),
                key_id: verified.kid.clone(),
                scope: c.scope,
                authentication_methods: c.amr,
            }),
        }))
    }

    async fn rotate_signing_key(
        &self,
        req: Request<pb::RotateSigningKeyRequest>,
    ) -> Result<Response<pb::RotateSigningKeyResponse>, Status> {
        let caller = caller(&req)?;
        require_platform(&caller)?;
        let msg = req.get_ref();
        let ctx = mutation(&req, &caller, "", "/crm.iam.v1.Auth/RotateSigningKey", msg, &msg.request_id, |m| {
            m.request_id.clear()
        })?;
        let key = self.iam.rotate_signing_key(&ctx).await?;
        Ok(Response::new(pb::RotateSigningKeyResponse { key: Some(jwk(key)) }))
    }
}

fn authenticate_response(t: Tokens) -> pb::AuthenticateResponse {
    pb::AuthenticateResponse {
        access_token: t.access_token,
        refresh_token: t.refresh_token.unwrap_or_default(),
        expires_in: duration(t.expires_in_secs),
        session_id: t.session_id.to_string(),
        token_type: "Bearer".into(),
        user_id: t.user_id.to_string(),
        password_change_required: t.restricted,
    }
}
