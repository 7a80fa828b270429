//! `crm.iam.v1.Auth`: logins, sessions, passwords, TOTP, and token keys.

mod requests;

use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::{accept, convert, limits, next_page_token, read, record_tenant};
use crate::{
    domain::{
        Error,
        audit::{Actor, ActorKind, RequestContext},
        caller::Caller,
    },
    proto::v1::{self as pb, auth_server::Auth},
    service::{
        Iam, Page,
        auth::{
            SessionView, Tokens,
            commands::Anonymous,
            keys::{KeyAlg, PublicJwk, Verified},
        },
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

impl AuthApi {
    /// The start of a call made without a token (logins, token exchanges): the size limits, the
    /// context (the actor is who the call turns out to be about; the peer is the client's address
    /// through trusted proxies, `AuthSettings::client_ip`, which the login limiter counts by),
    /// then the request converted into its command.
    fn anonymous<T, C>(&self, req: Request<T>) -> Result<(Anonymous, C), Status>
    where
        T: limits::Limits,
        C: TryFrom<T, Error = Error>,
    {
        super::public(&req)?;
        if let Some(tenant_id) = req.get_ref().tenant() {
            record_tenant(tenant_id);
        }
        let forwarded: Vec<&str> =
            req.metadata().get_all("x-forwarded-for").iter().filter_map(|v| v.to_str().ok()).collect();
        let tcp = req.remote_addr();
        let ip = self.iam.auth.settings.client_ip(tcp.map(|a| a.ip()), &forwarded);
        let peer = match (ip, tcp) {
            (Some(ip), Some(tcp)) if ip != tcp.ip() => Some(format!("{ip} via {tcp}")),
            (_, tcp) => tcp.map(|a| a.to_string()),
        };
        let ctx = RequestContext {
            actor: Actor { kind: ActorKind::User, id: String::new() },
            request_id: None,
            trace_id: telemetry::current_trace_id(),
            peer,
            idempotency: None,
        };
        Ok((Anonymous { ctx, ip }, C::try_from(req.into_inner())?))
    }
}

fn duration(secs: i64) -> Option<prost_types::Duration> {
    Some(prost_types::Duration { seconds: secs, nanos: 0 })
}

pub fn jwk(k: PublicJwk) -> pb::Jwk {
    let (kty, crv) = match k.alg {
        KeyAlg::EdDSA => ("OKP", "Ed25519"),
        KeyAlg::ES256 => ("EC", "P-256"),
    };
    pb::Jwk {
        kty: kty.into(),
        kid: k.kid,
        r#use: "sig".into(),
        alg: k.alg.as_str().into(),
        crv: crv.into(),
        x: k.x,
        y: k.y,
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

/// A response that opens or renews a session: the token fields all three share, then each
/// `field: name` given, set from the `Tokens` field `name`.
macro_rules! tokens_response {
    ($ty:path, $t:expr $(, $field:ident: $value:ident)*) => {{
        let t: Tokens = $t;
        $(let $value = t.$value;)*
        $ty {
            access_token: t.access_token,
            refresh_token: t.refresh_token.unwrap_or_default(),
            expires_in: duration(t.expires_in_secs),
            session_id: t.session_id.to_string(),
            token_type: "Bearer".into(),
            user_id: t.user_id.to_string(),
            $($field: $value,)*
        }
    }};
}

#[tonic::async_trait]
impl Auth for AuthApi {
    async fn authenticate(
        &self,
        req: Request<pb::AuthenticateRequest>,
    ) -> Result<Response<pb::AuthenticateResponse>, Status> {
        let (call, cmd) = self.anonymous(req)?;
        let tokens = self.iam.authenticate(&call, cmd).await?;
        Ok(Response::new(authenticate_response(tokens)))
    }

    async fn begin_sso(&self, req: Request<pb::BeginSsoRequest>) -> Result<Response<pb::BeginSsoResponse>, Status> {
        let (call, cmd) = self.anonymous(req)?;
        Ok(Response::new(self.iam.begin_sso(&call, cmd).await?.into()))
    }

    async fn complete_sso(
        &self,
        req: Request<pb::CompleteSsoRequest>,
    ) -> Result<Response<pb::CompleteSsoResponse>, Status> {
        let (call, cmd) = self.anonymous(req)?;
        let tokens = self.iam.complete_sso(&call, cmd).await?;
        Ok(Response::new(tokens_response!(pb::CompleteSsoResponse, tokens)))
    }

    async fn refresh(&self, req: Request<pb::RefreshRequest>) -> Result<Response<pb::RefreshResponse>, Status> {
        let (call, cmd) = self.anonymous(req)?;
        let tokens = self.iam.refresh(&call, cmd).await?;
        Ok(Response::new(refresh_response(tokens)))
    }

    async fn logout(&self, req: Request<pb::LogoutRequest>) -> Result<Response<pb::LogoutResponse>, Status> {
        let (call, cmd) = accept(req)?;
        self.iam.logout(&call, cmd).await?;
        Ok(Response::new(pb::LogoutResponse {}))
    }

    async fn list_sessions(
        &self,
        req: Request<pb::ListSessionsRequest>,
    ) -> Result<Response<pb::ListSessionsResponse>, Status> {
        let (call, query) = accept(req)?;
        let page = self.iam.list_sessions(&call, &query).await?;
        Ok(Response::new(sessions_page(page, &query.filters, &call.caller)))
    }

    async fn revoke_sessions(
        &self,
        req: Request<pb::RevokeSessionsRequest>,
    ) -> Result<Response<pb::RevokeSessionsResponse>, Status> {
        let (call, cmd) = accept(req)?;
        let n = self.iam.revoke_sessions(&call, cmd).await?;
        Ok(Response::new(pb::RevokeSessionsResponse { revoked_count: n as i32 }))
    }

    async fn change_password(
        &self,
        req: Request<pb::ChangePasswordRequest>,
    ) -> Result<Response<pb::ChangePasswordResponse>, Status> {
        let (call, cmd) = accept(req)?;
        let tokens = self.iam.change_password(&call, cmd).await?;
        Ok(Response::new(change_password_response(tokens)))
    }

    async fn accept_invitation(
        &self,
        req: Request<pb::AcceptInvitationRequest>,
    ) -> Result<Response<pb::AcceptInvitationResponse>, Status> {
        let (call, cmd) = self.anonymous(req)?;
        let user = self.iam.accept_invitation(&call, cmd).await?;
        Ok(Response::new(pb::AcceptInvitationResponse { user: Some(convert::user_to_proto(user)) }))
    }

    async fn request_password_reset(
        &self,
        req: Request<pb::RequestPasswordResetRequest>,
    ) -> Result<Response<pb::RequestPasswordResetResponse>, Status> {
        let (call, cmd) = self.anonymous(req)?;
        self.iam.request_password_reset(&call, cmd).await?;
        Ok(Response::new(pb::RequestPasswordResetResponse {}))
    }

    async fn complete_password_reset(
        &self,
        req: Request<pb::CompletePasswordResetRequest>,
    ) -> Result<Response<pb::CompletePasswordResetResponse>, Status> {
        let (call, cmd) = self.anonymous(req)?;
        let user = self.iam.complete_password_reset(&call, cmd).await?;
        Ok(Response::new(pb::CompletePasswordResetResponse { user: Some(convert::user_to_proto(user)) }))
    }

    async fn enroll_totp(
        &self,
        req: Request<pb::EnrollTotpRequest>,
    ) -> Result<Response<pb::EnrollTotpResponse>, Status> {
        let (call, cmd) = accept(req)?;
        let (otpauth_uri, secret) = self.iam.enroll_totp(&call, cmd).await?;
        Ok(Response::new(pb::EnrollTotpResponse { otpauth_uri, secret }))
    }

    async fn confirm_totp(
        &self,
        req: Request<pb::ConfirmTotpRequest>,
    ) -> Result<Response<pb::ConfirmTotpResponse>, Status> {
        let (call, cmd) = accept(req)?;
        let recovery_codes = self.iam.confirm_totp(&call, cmd).await?;
        Ok(Response::new(pb::ConfirmTotpResponse { recovery_codes }))
    }

    async fn disable_totp(
        &self,
        req: Request<pb::DisableTotpRequest>,
    ) -> Result<Response<pb::DisableTotpResponse>, Status> {
        let (call, cmd) = accept(req)?;
        let user = self.iam.disable_totp(&call, cmd).await?;
        Ok(Response::new(pb::DisableTotpResponse { user: Some(convert::user_to_proto(user)) }))
    }

    async fn get_jwks(&self, _req: Request<pb::GetJwksRequest>) -> Result<Response<pb::GetJwksResponse>, Status> {
        Ok(Response::new(pb::GetJwksResponse { keys: self.iam.jwks().into_iter().map(jwk).collect() }))
    }

    async fn introspect_token(
        &self,
        req: Request<pb::IntrospectTokenRequest>,
    ) -> Result<Response<pb::IntrospectTokenResponse>, Status> {
        let (_, query) = read(req)?;
        let verified = self.iam.introspect(query).await?;
        Ok(Response::new(introspection(verified.as_deref())))
    }

    async fn rotate_signing_key(
        &self,
        req: Request<pb::RotateSigningKeyRequest>,
    ) -> Result<Response<pb::RotateSigningKeyResponse>, Status> {
        let (call, cmd) = accept(req)?;
        let key = self.iam.rotate_signing_key(&call, cmd).await?;
        let activate_time = Some(convert::ts(key.activate_time));
        Ok(Response::new(pb::RotateSigningKeyResponse { key: Some(jwk(key)), activate_time }))
    }
}

/// What introspection answers: the claims of an active token, or `active: false`.
fn introspection(verified: Option<&Verified>) -> pb::IntrospectTokenResponse {
    let Some(verified) = verified else {
        return pb::IntrospectTokenResponse { active: false, claims: None };
    };
    let c = verified.claims.clone();
    let at = |secs: i64| Some(prost_types::Timestamp { seconds: secs, nanos: 0 });
    pb::IntrospectTokenResponse {
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
    }
}

/// A page of sessions; the caller's own session is marked `current`.
fn sessions_page(page: Page<SessionView>, filters: &str, caller: &Caller) -> pb::ListSessionsResponse {
    let next_page_token = next_page_token(&page, filters, |last| last.session.session_id.to_string());
    let current = match caller {
        Caller::User(u) => Some(u.session_id),
        _ => None,
    };
    pb::ListSessionsResponse {
        sessions: page.items.into_iter().map(|s| session_to_proto(s, current)).collect(),
        next_page_token,
    }
}

fn authenticate_response(t: Tokens) -> pb::AuthenticateResponse {
    tokens_response!(pb::AuthenticateResponse, t, password_change_required: restricted)
}

fn refresh_response(t: Tokens) -> pb::RefreshResponse {
    tokens_response!(pb::RefreshResponse, t, password_change_required: restricted)
}

fn change_password_response(t: Tokens) -> pb::ChangePasswordResponse {
    tokens_response!(pb::ChangePasswordResponse, t)
}
