//! Single sign-on on the HTTP listener:
//! - `GET /sso/callback?state=…&code=…[&iss=…]`: a redirect URI for web front ends that let the
//!   provider send the browser to crm-iam. It completes the sign-in like Auth.CompleteSso and
//!   answers the session's tokens as JSON (`Cache-Control: no-store`), or `401 sso_failed`.
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
        sso::{CompleteSso, LogoutOutcome},
    },
};

pub const CALLBACK_PATH: &str = "/sso/callback";
pub const BACKCHANNEL_LOGOUT_PATH: &str = "/sso/backchannel-logout/{tenant_id}/{connection}";

pub fn router(iam: Iam) -> Router {
    Router::new()
        .route(CALLBACK_PATH, get(callback))
        .route(BACKCHANNEL_LOGOUT_PATH, post(backchannel_logout))
        .with_state(iam)
}

fn no_store(mut r: Response) -> Response {
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
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
        return no_store((StatusCode::BAD_REQUEST, Json(json!({ "error": "invalid_request" }))).into_response());
    }
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
    let call = Anonymous { ctx, ip };
    match iam.complete_sso(&call, CompleteSso { state: q.state, code: q.code, iss: q.iss }).await {
        Ok(t) => no_store(
            Json(json!({
                "access_token": t.access_token,
                "refresh_token": t.refresh_token.unwrap_or_default(),
                "token_type": "Bearer",
                "expires_in": t.expires_in_secs,
                "session_id": t.session_id.to_string(),
                "user_id": t.user_id.to_string(),
            }))
            .into_response(),
        ),
        Err(e) if e.kind == crate::domain::Kind::Unauthenticated => {
            no_store((StatusCode::UNAUTHORIZED, Json(json!({ "error": "sso_failed" }))).into_response())
        }
        Err(e) => {
            let status = match e.kind {
                crate::domain::Kind::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
                crate::domain::Kind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            };
            no_store((status, Json(json!({ "error": "temporarily_unavailable" }))).into_response())
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
