//! Single sign-on on the HTTP listener:
//! - `GET /sso/start?tenant_id=…&connection=…&redirect_uri=…`: begins a sign-in like
//!   Auth.BeginSso and redirects the browser (302) to the provider, setting the sign-in's browser
//!   binding as the cookie `crm_iam_sso` (HttpOnly, SameSite=Lax, Secure unless the development
//!   setting `sso_allow_http_issuers` is on; path `/sso/callback`; 10 minutes).
//! - `GET /sso/callback?state=…&code=…[&iss=…]`: a redirect URI for web front ends that let the
//!   provider send the browser to crm-iam. It completes the sign-in like Auth.CompleteSso with the
//!   cookie's binding (a sign-in begun in another browser is refused: login CSRF), clears the
//!   cookie and answers the session's tokens as JSON (`Cache-Control: no-store`), or `401
//!   sso_failed`.
//! - `POST /sso/backchannel-logout/{tenant_id}/{connection}` (form `logout_token`): OpenID
//!   Connect Back-Channel Logout 1.0; `200` when the token is valid (whether or not a session was
//!   open), `400 invalid_request` otherwise (spec §2.8).

use axum::{
    Form, Json, Router,
    extract::{Path, Query, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde::Deserialize;
use serde_json::json;

use crate::{
    domain::audit::{Actor, ActorKind, RequestContext},
    scim::Peer,
    service::{
        Iam,
        auth::commands::Anonymous,
        sso::{BeginSso, CompleteSso, LogoutOutcome},
    },
};

pub const START_PATH: &str = "/sso/start";
pub const CALLBACK_PATH: &str = "/sso/callback";
/// The cookie holding a sign-in's browser binding (sent only to the callback path).
pub const BINDING_COOKIE: &str = "crm_iam_sso";
pub const BACKCHANNEL_LOGOUT_PATH: &str = "/sso/backchannel-logout/{tenant_id}/{connection}";

pub fn router(iam: Iam) -> Router {
    Router::new()
        .route(START_PATH, get(start))
        .route(CALLBACK_PATH, get(callback))
        .route(BACKCHANNEL_LOGOUT_PATH, post(backchannel_logout))
        .with_state(iam)
}

fn no_store(mut r: Response) -> Response {
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

#[derive(Deserialize)]
struct Start {
    #[serde(default)]
    tenant_id: String,
    #[serde(default)]
    connection: String,
    #[serde(default)]
    redirect_uri: String,
}

fn error(status: StatusCode, what: &str) -> Response {
    no_store((status, Json(json!({ "error": what }))).into_response())
}

/// The anonymous caller of a browser request: its address as the login limits see it.
fn anonymous(iam: &Iam, peer: Option<axum::Extension<Peer>>, headers: &HeaderMap) -> Anonymous {
    let forwarded: Vec<&str> = headers.get_all("x-forwarded-for").iter().filter_map(|v| v.to_str().ok()).collect();
    let tcp = peer.map(|p| p.0.0);
    let ip = iam.auth.settings.client_ip(tcp.map(|a| a.ip()), &forwarded);
    let ctx = RequestContext {
        actor: Actor { kind: ActorKind::User, id: String::new() },
        request_id: None,
        trace_id: crate::telemetry::current_trace_id(),
        peer: tcp.map(|a| a.to_string()),
        idempotency: None,
    };
    Anonymous { ctx, ip }
}

fn binding_cookie(iam: &Iam, value: &str, max_age: i64) -> HeaderValue {
    let secure = if iam.sso.allow_http { "" } else { "; Secure" };
    HeaderValue::from_str(&format!(
        "{BINDING_COOKIE}={value}; Path={CALLBACK_PATH}; Max-Age={max_age}; HttpOnly; SameSite=Lax{secure}"
    ))
    .expect("a cookie of URL-safe characters")
}

async fn start(
    State(iam): State<Iam>,
    peer: Option<axum::Extension<Peer>>,
    headers: HeaderMap,
    Query(q): Query<Start>,
) -> Response {
    if [&q.tenant_id, &q.connection].iter().any(|s| s.is_empty() || s.len() > 64) || q.redirect_uri.len() > 2000 {
        return error(StatusCode::BAD_REQUEST, "invalid_request");
    }
    let call = anonymous(&iam, peer, &headers);
    let cmd = BeginSso { tenant_id: q.tenant_id, connection: q.connection, redirect_uri: q.redirect_uri };
    match iam.begin_sso(&call, cmd).await {
        Ok(s) => {
            let Ok(location) = HeaderValue::from_str(&s.authorization_url) else {
                return error(StatusCode::BAD_GATEWAY, "invalid_provider");
            };
            let mut r = StatusCode::FOUND.into_response();
            r.headers_mut().insert(header::LOCATION, location);
            let max_age = crate::service::sso::STATE_TTL_SECS;
            r.headers_mut().insert(header::SET_COOKIE, binding_cookie(&iam, &s.browser_binding, max_age));
            no_store(r)
        }
        Err(e) => match e.kind {
            crate::domain::Kind::NotFound => error(StatusCode::NOT_FOUND, "unknown_connection"),
            crate::domain::Kind::InvalidArgument => error(StatusCode::BAD_REQUEST, "invalid_request"),
            _ => error(StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable"),
        },
    }
}

/// The value of the binding cookie the browser sent.
fn sent_binding(headers: &HeaderMap) -> String {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix(BINDING_COOKIE).and_then(|rest| rest.strip_prefix('=')))
        .unwrap_or_default()
        .to_owned()
}

#[derive(Deserialize)]
struct Callback {
    #[serde(default)]
    state: String,
    #[serde(default)]
    code: String,
    #[serde(default)]
    iss: String,
    #[serde(default)]
    error: String,
}

async fn callback(
    State(iam): State<Iam>,
    peer: Option<axum::Extension<Peer>>,
    headers: HeaderMap,
    Query(q): Query<Callback>,
) -> Response {
    if !q.error.is_empty() || q.state.is_empty() || q.code.is_empty() || q.state.len() > 2048 || q.code.len() > 2048 {
        // The provider's own refusal (`error=access_denied`, …), or not a callback at all.
        return error(StatusCode::BAD_REQUEST, "invalid_request");
    }
    let browser_binding = sent_binding(&headers);
    if browser_binding.len() > 128 {
        return error(StatusCode::BAD_REQUEST, "invalid_request");
    }
    let call = anonymous(&iam, peer, &headers);
    let cmd = CompleteSso { state: q.state, code: q.code, iss: q.iss, browser_binding };
    match iam.complete_sso(&call, cmd).await {
        Ok(t) => {
            let mut r = Json(json!({
                "access_token": t.access_token,
                "refresh_token": t.refresh_token.unwrap_or_default(),
                "token_type": "Bearer",
                "expires_in": t.expires_in_secs,
                "session_id": t.session_id.to_string(),
                "user_id": t.user_id.to_string(),
            }))
            .into_response();
            r.headers_mut().insert(header::SET_COOKIE, binding_cookie(&iam, "", 0));
            no_store(r)
        }
        Err(e) if e.kind == crate::domain::Kind::Unauthenticated => error(StatusCode::UNAUTHORIZED, "sso_failed"),
        Err(e) => {
            let status = match e.kind {
                crate::domain::Kind::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
                crate::domain::Kind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            };
            error(status, "temporarily_unavailable")
        }
    }
}

#[derive(Deserialize)]
struct LogoutForm {
    #[serde(default)]
    logout_token: String,
}

async fn backchannel_logout(
    State(iam): State<Iam>,
    Path((tenant_id, connection)): Path<(String, String)>,
    Form(form): Form<LogoutForm>,
) -> Response {
    match iam.backchannel_logout(&tenant_id, &connection, &form.logout_token).await {
        Ok(LogoutOutcome::Ended(n)) => {
            tracing::info!(tenant_id, connection, sessions = n, "back-channel logout");
            no_store(StatusCode::OK.into_response())
        }
        Ok(LogoutOutcome::Refused(why)) => {
            tracing::info!(tenant_id, connection, why, "back-channel logout refused");
            no_store((StatusCode::BAD_REQUEST, Json(json!({ "error": "invalid_request" }))).into_response())
        }
        Err(e) => {
            tracing::warn!(tenant_id, connection, error = %e.message, "back-channel logout failed");
            no_store(
                (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "error": "temporarily_unavailable" }))).into_response(),
            )
        }
    }
}
