//! The gRPC edge: one file per service. A handler takes the call apart ([`accept`] for calls
//! with a context, [`read`] for reads, `AuthApi::anonymous` for calls without a token: caller,
//! tenant wall, limits, then the request converted with `TryFrom` into the operation's command),
//! calls the operation (which authorizes the caller itself), and converts the result back; every
//! error leaves through [`status::from_error`].

/// `TryFrom<request> for command` through one expression over the request (`|m| …`), for
/// requests of one shape that share a conversion function.
macro_rules! converts {
    ($($from:ty => $to:ty, |$m:ident| $body:expr;)+) => {$(
        impl TryFrom<$from> for $to {
            type Error = crate::domain::Error;

            fn try_from($m: $from) -> Result<Self, crate::domain::Error> {
                $body
            }
        }
    )+};
}

pub mod access;
pub mod audit_events;
pub mod auth;
pub mod authn;
pub mod convert;
pub mod envoy;
pub mod identity_providers;
pub mod limits;
pub mod notification_admin;
pub mod ownership_transfer;
pub mod role_admin;
pub mod status;
pub mod tenant_admin;
pub mod user_admin;

use base64::Engine;
use prost::Message;
use sha2::{Digest, Sha256};
use tonic::{Request, Status};

use crate::{
    domain::{
        Error, Reason, Result, Violations,
        audit::{Idempotency, RequestContext},
        caller::Caller,
        validate,
    },
    service::Call,
    telemetry,
};

/// The start of every call that needs a token: the authenticated caller (set by the
/// authentication layer), then the tenant wall (a user acts only in their own tenant, a service
/// credential only in the tenants it lists) before anything of the request is looked at, then the
/// size limits of the whole request. Only then do handlers validate and read tenant data, so a
/// caller from elsewhere learns nothing about a tenant, whatever it sends.
fn caller<T: limits::Limits>(req: &Request<T>) -> Result<Caller, Status> {
    let caller: Caller =
        req.extensions().get::<Caller>().cloned().ok_or_else(|| Error::unauthenticated("missing credentials"))?;
    if let Some(tenant_id) = req.get_ref().tenant() {
        same_tenant(&caller, tenant_id)?;
    }
    limits::check(req.get_ref())?;
    Ok(caller)
}

/// The start of every call that needs a token, in one step: the caller, the tenant wall and the
/// size limits ([`caller`]), the call's context ([`context`]), then the request converted into
/// its command, whose conversion validates every field (INVALID_ARGUMENT with a violation per
/// bad field). Authorization is the operation's own first step.
pub fn accept<T, C>(req: Request<T>) -> Result<(Call, C), Status>
where
    T: limits::Limits + Message + Clone,
    C: TryFrom<T, Error = Error>,
{
    let caller = caller(&req)?;
    let ctx = context(&req, &caller)?;
    let cmd = C::try_from(req.into_inner())?;
    Ok((Call { caller, ctx }, cmd))
}

/// The start of a read: the caller, the tenant wall and the size limits ([`caller`]), then the
/// request converted into its query (validated). No call context is built: Access.Check is the
/// hot path, and a read records nothing.
pub fn read<T, C>(req: Request<T>) -> Result<(Caller, C), Status>
where
    T: limits::Limits,
    C: TryFrom<T, Error = Error>,
{
    let caller = caller(&req)?;
    if let Some(tenant_id) = req.get_ref().tenant() {
        record_tenant(tenant_id);
    }
    let query = C::try_from(req.into_inner())?;
    Ok((caller, query))
}

/// The context of a call: actor, idempotency key (from `request_id`, scoped to the tenant and the
/// caller, with a fingerprint of the rest of the request), method, trace and peer.
fn context<T>(req: &Request<T>, caller: &Caller) -> Result<RequestContext>
where
    T: limits::Limits + Message + Clone,
{
    let msg = req.get_ref();
    if let Some(tenant_id) = msg.tenant() {
        record_tenant(tenant_id);
    }
    let scope = msg.tenant().unwrap_or("");
    let method =
        req.extensions().get::<authn::Method>().ok_or_else(|| Error::internal(anyhow::anyhow!("no method")))?.0;
    let request_id = validate::request_id(msg.request_id()).map_err(|d| Error::invalid_field("request_id", d))?;
    let actor = caller.actor();
    let idempotency = request_id.as_ref().map(|key| {
        let mut body = msg.clone();
        body.clear_request_id();
        Idempotency {
            // Keys belong to their caller within the tenant: another caller's key is another
            // key (it neither replays their answer nor burns theirs).
            scope: format!("{scope}|{}", actor.id),
            key: key.clone(),
            method,
            fingerprint: hex::encode(Sha256::digest(body.encode_to_vec())),
        }
    });
    Ok(RequestContext {
        actor,
        request_id,
        trace_id: telemetry::current_trace_id(),
        peer: req.remote_addr().map(|a| a.to_string()),
        idempotency,
    })
}

/// The start of a call that needs no token: the size limits of the whole request.
pub fn public<T: limits::Limits>(req: &Request<T>) -> Result<(), Status> {
    Ok(limits::check(req.get_ref())?)
}

use crate::service::authz_same_tenant as same_tenant;

/// The request's `tenant_id`, checked (a violation under `tenant_id`) and recorded on the span.
pub fn tenant_field(v: &mut Violations, tenant_id: &str) -> String {
    record_tenant(tenant_id);
    v.check("tenant_id", validate::tenant_id(tenant_id)).unwrap_or_default()
}

/// A required UUID field, checked (a violation under `field`).
pub fn uuid_field(v: &mut Violations, field: &str, s: &str) -> uuid::Uuid {
    v.check(field, validate::uuid(s)).unwrap_or_default()
}

/// Records the tenant on the request's span.
pub fn record_tenant(tenant_id: &str) {
    tracing::Span::current().record("tenant_id", tenant_id);
}

/// Checks the requested page size (0 → 50, at most 1000).
pub fn page_size(v: &mut Violations, n: i32) -> u64 {
    v.check("page_size", validate::page_size(n)).unwrap_or(50)
}

/// Page tokens are opaque to callers: base64url of the last key of the page and a digest of the
/// filters, so a token used with other filters is refused instead of silently skipping rows.
/// Keys are immutable and unique (ids), so pages stay stable while rows are inserted.
pub fn encode_page_token(last_key: &str, filters: &str) -> String {
    let token = PageToken { k: last_key.to_owned(), f: filter_digest(filters) };
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(serde_json::to_vec(&token).expect("a page token serializes"))
}

/// What a page token holds: the last key of the page and the digest of the query's filters.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PageToken {
    k: String,
    f: String,
}

/// The last key of the previous page, or None for the first page.
pub fn decode_page_token(token: &str, filters: &str) -> Result<Option<String>> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = || {
        let mut e = Error::invalid_field("page_token", "is not a page token of this query: start again without it");
        e.reason = Reason::InvalidPageToken;
        e
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token).map_err(|_| bad())?;
    let token: PageToken = serde_json::from_slice(&bytes).map_err(|_| bad())?;
    if token.f != filter_digest(filters) {
        return Err(bad());
    }
    Ok(Some(token.k))
}

/// The last key of the previous page when keys are UUIDs.
pub fn decode_uuid_page_token(token: &str, filters: &str) -> Result<Option<uuid::Uuid>> {
    decode_page_token(token, filters)?
        .map(|k| {
            uuid::Uuid::parse_str(&k)
                .map_err(|_| Error::invalid_field("page_token", "is not a page token of this query"))
        })
        .transpose()
}

/// The token of the page after `page` (keyed by `key` of its last item), or "" on the last page.
pub fn next_page_token<T>(page: &crate::service::Page<T>, filters: &str, key: impl FnOnce(&T) -> String) -> String {
    match (page.more, page.items.last()) {
        (true, Some(last)) => encode_page_token(&key(last), filters),
        _ => String::new(),
    }
}

fn filter_digest(filters: &str) -> String {
    hex::encode(&Sha256::digest(filters.as_bytes())[..12])
}

/// The paths of an update mask, checked against the allowed ones (`*` means all of them).
pub fn mask_paths(mask: Option<&prost_types::FieldMask>, allowed: &[&str]) -> Result<Vec<String>> {
    let paths = mask.map(|m| m.paths.as_slice()).unwrap_or_default();
    let mut v = Violations::default();
    if paths.is_empty() {
        v.add("update_mask", format!("is required: name the fields to change, from {}", allowed.join(", ")));
    }
    let mut out = Vec::new();
    for (i, p) in paths.iter().enumerate() {
        if p == "*" {
            out.extend(allowed.iter().map(|a| a.to_string()));
        } else if allowed.contains(&p.as_str()) {
            out.push(p.clone());
        } else {
            v.add(
                format!("update_mask.paths[{i}]"),
                format!("unknown or read-only field {p:?}; allowed: {}", allowed.join(", ")),
            );
        }
    }
    v.finish()?;
    out.sort();
    out.dedup();
    Ok(out)
}
