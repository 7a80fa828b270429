//! The SCIM 2.0 edge (RFC 7643, RFC 7644) on the HTTP listener: `/scim/v2/…`, the tenant taken
//! from the SCIM token. Every change goes through the same operations as the gRPC edge (the same
//! authorization, seat checks, audit events, notifications and cache invalidation), with the
//! caller `scim:<token name>`; this module only translates between SCIM's JSON and them.
//!
//! Requests: bodies up to [`MAX_BODY`] bytes as `application/scim+json` or `application/json`;
//! answers `application/scim+json`; errors are SCIM error messages with `scimType` where RFC 7644
//! §3.12 defines one.

use axum::{
    Router,
    body::Bytes,
    extract::{FromRequestParts, Path},
    http::{HeaderMap, HeaderValue, StatusCode, header, request::Parts},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde_json::{Value, json};

use crate::{
    domain::{Error, Kind, Reason, audit::RequestContext, caller::Caller},
    service::{Call, Iam},
};

pub mod filter;
mod groups;
pub mod patch;
pub mod schema;
mod users;

/// The largest request body accepted (a Group PUT with a thousand members fits).
pub const MAX_BODY: usize = 1024 * 1024;

/// The routes under `/scim/v2`.
pub fn router(iam: Iam) -> Router {
    Router::new()
        .route("/scim/v2/ServiceProviderConfig", get(service_provider_config))
        .route("/scim/v2/ResourceTypes", get(resource_types))
        .route("/scim/v2/ResourceTypes/{id}", get(resource_type))
        .route("/scim/v2/Schemas", get(schemas))
        .route("/scim/v2/Schemas/{id}", get(one_schema))
        .route(
            "/scim/v2/.search",
            post(async || {
                ScimError::new(
                    StatusCode::NOT_IMPLEMENTED,
                    None,
                    "search one resource type: POST /Users/.search or /Groups/.search",
                )
            }),
        )
        .route("/scim/v2/Users/.search", post(users::search))
        .route("/scim/v2/Groups/.search", post(groups::search))
        .route("/scim/v2/Users", get(users::list).post(users::create))
        .route("/scim/v2/Users/{id}", get(users::get).put(users::replace).patch(users::patch).delete(users::delete))
        .route("/scim/v2/Groups", get(groups::list).post(groups::create))
        .route(
            "/scim/v2/Groups/{id}",
            get(groups::get).put(groups::replace).patch(groups::patch).delete(groups::delete),
        )
        .fallback(async || ScimError::new(StatusCode::NOT_FOUND, None, "no such SCIM endpoint"))
        .layer(axum::middleware::map_response(scim_errors))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(iam)
}

/// Errors axum answers by itself (a body over the limit, a path that does not parse) in the
/// SCIM form.
async fn scim_errors(r: Response) -> Response {
    let scim =
        r.headers().get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/scim+json"));
    if scim || r.status().as_u16() < 400 {
        return r;
    }
    let status = r.status();
    let detail = match status {
        StatusCode::PAYLOAD_TOO_LARGE => format!("the body is over {MAX_BODY} bytes"),
        StatusCode::METHOD_NOT_ALLOWED => "this endpoint does not take that method".to_owned(),
        s => s.canonical_reason().unwrap_or("error").to_owned(),
    };
    ScimError::new(status, None, detail).into_response()
}

/// A SCIM error message.
#[derive(Debug)]
pub struct ScimError {
    status: StatusCode,
    scim_type: Option<&'static str>,
    detail: String,
}

impl ScimError {
    pub fn new(status: StatusCode, scim_type: Option<&'static str>, detail: impl Into<String>) -> ScimError {
        ScimError { status, scim_type, detail: detail.into() }
    }

    pub fn bad(scim_type: &'static str, detail: impl Into<String>) -> ScimError {
        ScimError::new(StatusCode::BAD_REQUEST, Some(scim_type), detail)
    }

    pub fn not_found(detail: impl Into<String>) -> ScimError {
        ScimError::new(StatusCode::NOT_FOUND, None, detail)
    }
}

impl From<Error> for ScimError {
    fn from(e: Error) -> ScimError {
        let mut detail = e.message.clone();
        if !e.field_violations.is_empty() {
            let fields: Vec<String> = e
                .field_violations
                .iter()
                .map(|f| format!("{}: {}", users::scim_name(&f.field), f.description))
                .collect();
            detail = format!("{detail}: {}", fields.join("; "));
        }
        let (status, scim_type) = match (e.kind, e.reason) {
            (Kind::InvalidArgument, _) => (StatusCode::BAD_REQUEST, Some("invalidValue")),
            (Kind::NotFound, _) => (StatusCode::NOT_FOUND, None),
            (Kind::AlreadyExists, _) => (StatusCode::CONFLICT, Some("uniqueness")),
            (_, Reason::EtagMismatch) => (StatusCode::PRECONDITION_FAILED, None),
            (Kind::Aborted, _) => (StatusCode::CONFLICT, None),
            (_, Reason::SeatLimitReached) => (StatusCode::FORBIDDEN, None),
            (Kind::FailedPrecondition, _) => (StatusCode::BAD_REQUEST, Some("mutability")),
            (Kind::PermissionDenied, _) => (StatusCode::FORBIDDEN, None),
            (Kind::Unauthenticated, _) => (StatusCode::UNAUTHORIZED, None),
            (Kind::ResourceExhausted, _) => (StatusCode::TOO_MANY_REQUESTS, None),
            (Kind::OutOfRange, _) => (StatusCode::BAD_REQUEST, Some("invalidValue")),
            (Kind::Unavailable, _) => (StatusCode::SERVICE_UNAVAILABLE, None),
            (Kind::Internal, _) => {
                tracing::error!(error = ?e.source, message = %e.message, "SCIM request failed");
                detail = "internal error".into();
                (StatusCode::INTERNAL_SERVER_ERROR, None)
            }
        };
        ScimError { status, scim_type, detail }
    }
}

impl IntoResponse for ScimError {
    fn into_response(self) -> Response {
        let mut body =
            json!({"schemas": [schema::ERROR], "status": self.status.as_u16().to_string(), "detail": self.detail});
        if let Some(t) = self.scim_type {
            body["scimType"] = t.into();
        }
        let mut r = scim_json(self.status, &body);
        if self.status == StatusCode::TOO_MANY_REQUESTS {
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"scim\""));
        }
        r
    }
}

pub type ScimResult<T = Response> = Result<T, ScimError>;

/// A JSON answer with the SCIM media type.
pub fn scim_json(status: StatusCode, body: &Value) -> Response {
    let mut r = (status, body.to_string()).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/scim+json"));
    // Answers are per token and carry personal data: no cache keeps them.
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// An authenticated SCIM request: the operations' call (caller `scim:<name>`), the tenant, and
/// the base URL of resource locations.
pub struct Scim {
    /// This request's turn among the tenant's SCIM requests.
    _turn: tokio::sync::OwnedSemaphorePermit,
    pub iam: Iam,
    pub call: Call,
    pub tenant_id: String,
    pub base: String,
}

impl FromRequestParts<Iam> for Scim {
    type Rejection = ScimError;

    async fn from_request_parts(parts: &mut Parts, iam: &Iam) -> Result<Scim, ScimError> {
        let bearer = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .map(str::trim)
            .ok_or_else(|| {
                ScimError::new(StatusCode::UNAUTHORIZED, None, "a SCIM token is required (Authorization: Bearer)")
            })?;
        let caller = iam.scim_caller(bearer).await?;
        let Caller::Scim { tenant_id, .. } = &caller else {
            return Err(Error::internal(anyhow::anyhow!("a SCIM token made another caller")).into());
        };
        let tenant_id = tenant_id.to_string();
        let turn = iam.scim_turn(&tenant_id).await?;
        let host = parts.headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("localhost");
        let scheme = parts.extensions.get::<Scheme>().map_or("http", |s| s.0);
        let base = format!("{scheme}://{host}/scim/v2");
        let peer = parts.extensions.get::<Peer>().map(|p| p.0.to_string());
        let ctx = RequestContext { actor: caller.actor(), request_id: None, trace_id: None, peer, idempotency: None };
        Ok(Scim { _turn: turn, iam: iam.clone(), call: Call { caller, ctx }, tenant_id, base })
    }
}

/// The client's address, put into request extensions by the HTTP listener.
#[derive(Clone, Copy)]
pub struct Peer(pub std::net::SocketAddr);

/// The scheme the HTTP listener serves (`https` with TLS), put into request extensions.
#[derive(Clone, Copy)]
pub struct Scheme(pub &'static str);

/// The JSON of a request body (either SCIM media type or plain JSON).
pub fn body_json(headers: &HeaderMap, body: &Bytes) -> ScimResult<Value> {
    let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("application/scim+json");
    if !(ct.starts_with("application/scim+json") || ct.starts_with("application/json")) {
        return Err(ScimError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, None, "send application/scim+json"));
    }
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ScimError::bad("invalidSyntax", format!("the body is not JSON: {e}")))?;
    if !v.is_object() {
        return Err(ScimError::bad("invalidSyntax", "the body must be a JSON object"));
    }
    Ok(v)
}

/// `startIndex`, `count`, `filter`, `sortBy`, `sortOrder`, `attributes`, `excludedAttributes`.
#[derive(serde::Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct ListQuery {
    pub filter: Option<String>,
    pub start_index: Option<String>,
    pub count: Option<String>,
    pub sort_by: Option<String>,
    pub sort_order: Option<String>,
    pub attributes: Option<String>,
    pub excluded_attributes: Option<String>,
}

impl ListQuery {
    /// The query of a `POST …/.search` body (RFC 7644 §3.4.3).
    pub fn from_search(headers: &HeaderMap, body: &Bytes) -> ScimResult<ListQuery> {
        let b = body_json(headers, body)?;
        let text = |k: &str| filter::member(&b, k).and_then(Value::as_str).map(str::to_owned);
        let list = |k: &str| match filter::member(&b, k) {
            Some(Value::Array(items)) => Some(items.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(",")),
            Some(Value::String(s)) => Some(s.clone()),
            _ => None,
        };
        let num = |k: &str| filter::member(&b, k).map(|v| v.to_string().trim_matches('"').to_owned());
        Ok(ListQuery {
            filter: text("filter"),
            start_index: num("startIndex"),
            count: num("count"),
            sort_by: text("sortBy"),
            sort_order: text("sortOrder"),
            attributes: list("attributes"),
            excluded_attributes: list("excludedAttributes"),
        })
    }

    /// 1-based start and page size (RFC 7644 §3.4.2.4: below 1 means 1; a negative count 0).
    pub fn window(&self) -> ScimResult<(usize, usize)> {
        let num = |s: &Option<String>, what: &str| -> ScimResult<Option<i64>> {
            s.as_deref()
                .map(|s| {
                    s.trim()
                        .parse::<i64>()
                        .map_err(|_| ScimError::bad("invalidValue", format!("{what} must be an integer")))
                })
                .transpose()
        };
        let start = num(&self.start_index, "startIndex")?.unwrap_or(1).max(1) as usize;
        let count =
            num(&self.count, "count")?.unwrap_or(schema::MAX_PAGE as i64).clamp(0, schema::MAX_PAGE as i64) as usize;
        Ok((start, count))
    }
}

/// A list response of the page `[start, start + count)` of `all` (already filtered and sorted).
pub fn list_response(all: Vec<Value>, start: usize, count: usize, q: &ListQuery) -> Response {
    let total = all.len();
    let page: Vec<Value> = all.into_iter().skip(start - 1).take(count).map(|r| project(r, q)).collect();
    scim_json(
        StatusCode::OK,
        &json!({"schemas": [schema::LIST], "totalResults": total, "startIndex": start, "itemsPerPage": page.len(), "Resources": page}),
    )
}

/// Sorts by `sortBy` (a simple or sub-attribute path; resources without it last).
pub fn sort(all: &mut [Value], q: &ListQuery) -> ScimResult<()> {
    let Some(by) = q.sort_by.as_deref().filter(|s| !s.is_empty()) else { return Ok(()) };
    let path: scim_v2::filter::PatchPath =
        by.parse().map_err(|_| ScimError::bad("invalidValue", "sortBy is not an attribute path"))?;
    let scim_v2::filter::PatchPath::Attr(path) = path else {
        return Err(ScimError::bad("invalidValue", "sortBy is not an attribute path"));
    };
    let key = |r: &Value| -> Option<String> {
        let v = filter::member(r, &path.name)?;
        let v = match &path.sub_attr {
            Some(s) => filter::member(v, s)?,
            None => v,
        };
        let v = match v {
            Value::Array(items) => {
                items.iter().find(|i| filter::member(i, "primary") == Some(&Value::Bool(true))).or(items.first())?
            }
            v => v,
        };
        let v = filter::member(v, "value").unwrap_or(v);
        Some(match v {
            Value::String(s) => s.to_lowercase(),
            v => v.to_string(),
        })
    };
    all.sort_by(|a, b| match (key(a), key(b)) {
        (Some(x), Some(y)) => x.cmp(&y),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => std::cmp::Ordering::Equal,
    });
    if q.sort_order.as_deref().is_some_and(|o| o.eq_ignore_ascii_case("descending")) {
        all.reverse();
    }
    Ok(())
}

/// `attributes` / `excludedAttributes` applied to one resource (`id`, `schemas` and `meta` are
/// always returned).
pub fn project(mut r: Value, q: &ListQuery) -> Value {
    let names = |s: &Option<String>| -> Vec<String> {
        s.as_deref().unwrap_or_default().split(',').map(|a| a.trim().to_owned()).filter(|a| !a.is_empty()).collect()
    };
    let (only, except) = (names(&q.attributes), names(&q.excluded_attributes));
    let Some(obj) = r.as_object_mut() else { return r };
    let strip = |a: &str| -> String {
        let a = a
            .strip_prefix(schema::USER)
            .or_else(|| a.strip_prefix(schema::GROUP))
            .map(|s| s.trim_start_matches(':'))
            .unwrap_or(a);
        a.split('.').next().unwrap_or(a).to_ascii_lowercase()
    };
    const ALWAYS: [&str; 3] = ["id", "schemas", "meta"];
    if !only.is_empty() {
        let keep: Vec<String> = only.iter().map(|a| strip(a)).collect();
        let ext_kept: Vec<String> = only
            .iter()
            .filter_map(|a| {
                a.strip_prefix(schema::ENTERPRISE_USER).map(|s| s.trim_start_matches(':').to_ascii_lowercase())
            })
            .collect();
        obj.retain(|k, v| {
            if k == schema::ENTERPRISE_USER {
                if let Some(ext) = v.as_object_mut() {
                    if !ext_kept.iter().any(String::is_empty) {
                        ext.retain(|ek, _| ext_kept.contains(&ek.to_ascii_lowercase()));
                    }
                    return !ext.is_empty();
                }
                return false;
            }
            ALWAYS.contains(&k.as_str()) || keep.contains(&k.to_ascii_lowercase())
        });
    }
    for a in &except {
        if let Some(sub) = a.strip_prefix(schema::ENTERPRISE_USER) {
            let sub = sub.trim_start_matches(':').to_ascii_lowercase();
            if let Some(ext) = obj.get_mut(schema::ENTERPRISE_USER).and_then(Value::as_object_mut) {
                ext.retain(|ek, _| ek.to_ascii_lowercase() != sub);
            }
            continue;
        }
        let name = strip(a);
        obj.retain(|k, _| ALWAYS.contains(&k.as_str()) || k.to_ascii_lowercase() != name);
    }
    r
}

async fn service_provider_config(scim: Scim) -> Response {
    scim_json(StatusCode::OK, &schema::service_provider_config(&scim.base))
}

async fn resource_types(scim: Scim) -> Response {
    let all = schema::resource_types(&scim.base);
    list_response(all.clone(), 1, all.len(), &ListQuery::default())
}

async fn resource_type(scim: Scim, Path(id): Path<String>) -> ScimResult {
    let found = schema::resource_types(&scim.base).into_iter().find(|r| r["id"] == id.as_str());
    found.map(|r| scim_json(StatusCode::OK, &r)).ok_or_else(|| ScimError::not_found(format!("no resource type {id:?}")))
}

async fn schemas(scim: Scim) -> Response {
    let all = schema::schemas(&scim.base);
    list_response(all.clone(), 1, all.len(), &ListQuery::default())
}

async fn one_schema(scim: Scim, Path(id): Path<String>) -> ScimResult {
    let found = schema::schemas(&scim.base).into_iter().find(|r| r["id"] == id.as_str());
    found.map(|r| scim_json(StatusCode::OK, &r)).ok_or_else(|| ScimError::not_found(format!("no schema {id:?}")))
}

/// The `If-Match` version a change is guarded by (`W/"3"` or `"3"` → `"3"`), "" when absent.
pub fn if_match(headers: &HeaderMap) -> String {
    headers
        .get(header::IF_MATCH)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().trim_start_matches("W/").trim_matches('"').to_owned())
        .filter(|v| v != "*")
        .unwrap_or_default()
}

/// The weak ETag of a version.
pub fn etag(version: &str) -> String {
    format!("W/\"{version}\"")
}

/// A resource answer with its ETag and, for a creation, its Location.
pub fn resource(status: StatusCode, r: &Value) -> Response {
    let mut resp = scim_json(status, r);
    if let Some(v) = r["meta"]["version"].as_str().and_then(|v| HeaderValue::from_str(v).ok()) {
        resp.headers_mut().insert(header::ETAG, v);
    }
    if status == StatusCode::CREATED
        && let Some(l) = r["meta"]["location"].as_str().and_then(|v| HeaderValue::from_str(v).ok())
    {
        resp.headers_mut().insert(header::LOCATION, l);
    }
    resp
}
