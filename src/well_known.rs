//! `/.well-known/jwks.json` and `/.well-known/openid-configuration` on the HTTP listener: the
//! keys of `Auth.GetJwks` by URL, for Envoy's `jwt_authn` (`remote_jwks`), Istio's
//! `RequestAuthentication.jwksUri` and OIDC libraries.
//!
//! `Cache-Control: max-age` is half of `signing_key_publish_ahead`: a rotated key is in the set
//! that long before it signs, so a cache refetches in time even when it fetched from a replica
//! that had not yet reloaded the set (up to a minute late).

use axum::{
    Json, Router,
    extract::State,
    http::{HeaderMap, HeaderValue, header},
    response::{IntoResponse, Response},
    routing::get,
};
use serde_json::{Value, json};

use crate::{
    api::auth::jwk,
    scim::Scheme,
    service::{Iam, auth::keys::KeyAlg},
};

/// What the documents need beyond the key ring.
#[derive(Clone)]
pub struct WellKnown {
    iam: Iam,
    /// `http_public_url` without a trailing slash, when configured.
    public_url: Option<String>,
}

pub const JWKS_PATH: &str = "/.well-known/jwks.json";
pub const DISCOVERY_PATH: &str = "/.well-known/openid-configuration";

pub fn router(iam: Iam, public_url: Option<String>) -> Router {
    let state = WellKnown { iam, public_url: public_url.map(|u| u.trim_end_matches('/').to_owned()) };
    Router::new().route(JWKS_PATH, get(jwks)).route(DISCOVERY_PATH, get(discovery)).with_state(state)
}

fn cached(w: &WellKnown, body: Value) -> Response {
    let max_age = w.iam.auth.keys.policy().jwks_max_age().as_secs();
    let mut r = Json(body).into_response();
    let value = HeaderValue::from_str(&format!("public, max-age={max_age}")).expect("ASCII");
    r.headers_mut().insert(header::CACHE_CONTROL, value);
    r
}

async fn jwks(State(w): State<WellKnown>) -> Response {
    let keys: Vec<Value> = w
        .iam
        .jwks()
        .into_iter()
        .map(|k| {
            let j = jwk(k);
            let mut key = json!({ "kty": j.kty, "kid": j.kid, "use": j.r#use, "alg": j.alg, "crv": j.crv, "x": j.x });
            if !j.y.is_empty() {
                key["y"] = Value::String(j.y);
            }
            key
        })
        .collect();
    cached(&w, json!({ "keys": keys }))
}

async fn discovery(
    State(w): State<WellKnown>,
    scheme: Option<axum::Extension<Scheme>>,
    headers: HeaderMap,
) -> Response {
    let from_host = w.public_url.is_none();
    let base = match &w.public_url {
        Some(u) => u.clone(),
        None => {
            let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).filter(|h| valid_host(h));
            let Some(host) = host else {
                return (axum::http::StatusCode::BAD_REQUEST, "a Host header is required (or set http_public_url)")
                    .into_response();
            };
            format!("{}://{host}", scheme.map_or("http", |s| s.0.0))
        }
    };
    let mut algs: Vec<&str> = w.iam.jwks().iter().map(|k| k.alg.as_str()).collect();
    algs.sort_unstable();
    algs.dedup();
    if algs.is_empty() {
        algs.push(KeyAlg::EdDSA.as_str());
    }
    let policy = w.iam.auth.keys.policy();
    let mut r = cached(
        &w,
        json!({
            "issuer": policy.issuer,
            "jwks_uri": format!("{base}{JWKS_PATH}"),
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": algs,
            "access_token_signing_alg_values_supported": algs,
            "token_endpoint_auth_methods_supported": ["none"],
            "response_types_supported": [],
            "claims_supported": ["iss", "aud", "sub", "tenant", "sid", "iat", "exp", "jti", "scope", "amr"],
        }),
    );
    if from_host {
        r.headers_mut().insert(header::VARY, HeaderValue::from_static("Host"));
    }
    r
}

/// A Host header that is a host name or address with an optional port (nothing a URL could be
/// bent with).
fn valid_host(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 255
        && h.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
}
