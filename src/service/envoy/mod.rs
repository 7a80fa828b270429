//! Envoy's external authorization (`envoy.service.auth.v3.Authorization/Check`): an HTTP request
//! to a sibling service, matched against the route table ([`routes`]), decided with the same
//! always-current access cache as `Access.Check`.
//!
//! Who is asking: the request's `Authorization: Bearer` access token, verified from memory with
//! its session checked (as `IntrospectToken`), or else the payload Envoy's `jwt_authn` verified
//! and passed as metadata (only from an authenticated Envoy: this method, like `Access.Check`,
//! needs a service credential). The tenant is the token's.

pub mod routes;

use std::collections::HashMap;

use uuid::Uuid;

pub use self::routes::{ExtAuthzConfig, RouteTable, Unmatched};
use crate::{
    domain::{
        Error, Kind, Result,
        access::{ResourceFacts, Scope},
        caller::Caller,
    },
    service::{
        Iam,
        access::CheckInput,
        auth::keys::{Claims, SCOPE_PASSWORD_CHANGE},
    },
};

/// An HTTP request as Envoy describes it.
pub struct HttpCheck<'a> {
    /// Envoy's context extension `crm_service` (set per route or virtual host); may be empty.
    pub service: &'a str,
    pub host: &'a str,
    pub method: &'a str,
    /// Path and query, as in the request line.
    pub path: &'a str,
    /// Lower-case header names.
    pub headers: &'a HashMap<String, String>,
    /// The payload Envoy's `jwt_authn` verified, when it passed one.
    pub jwt_payload: Option<serde_json::Value>,
}

/// The answer for Envoy.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Forward, with these headers set for the upstream.
    Allow(Vec<(&'static str, String)>),
    /// 401: no valid token.
    Unauthenticated(String),
    /// 403, with the reason.
    Denied(String),
}

pub const USER_HEADER: &str = "x-crm-user-id";
pub const TENANT_HEADER: &str = "x-crm-tenant";
pub const SCOPE_HEADER: &str = "x-crm-scope";
pub const DEPARTMENTS_HEADER: &str = "x-crm-department-ids";
pub const SESSION_HEADER: &str = "x-crm-session-id";

impl Iam {
    /// Decides one request for Envoy. Err only when the decision cannot be made (database down):
    /// Envoy then applies its `failure_mode_allow` (deny by default).
    ///
    /// `caller`: the Envoy's own credential, if it sent one. Only a trusted caller (a service
    /// credential allowed `Access.Check`, or the platform) may pass a `jwt_authn` payload as the
    /// identity; from anyone else (Istio's CUSTOM provider sends no credential) the payload is
    /// ignored and the request's own `Authorization` token decides: such a caller learns only
    /// what the token's holder may ask about themselves with `Access.Check`.
    pub async fn ext_authz(
        &self,
        table: &RouteTable,
        caller: Option<&Caller>,
        mut req: HttpCheck<'_>,
    ) -> Result<Verdict> {
        if !matches!(caller, Some(Caller::PlatformAdmin | Caller::Service { .. })) {
            req.jwt_payload = None;
        }
        let Some(m) = table.find(req.service, req.host, req.method, req.path, req.headers) else {
            return Ok(match table.unmatched {
                Unmatched::Allow => Verdict::Allow(Vec::new()),
                Unmatched::Deny => Verdict::Denied(format!(
                    "no route of crm-iam's ext_authz table matches {} {}",
                    req.method,
                    path_only(req.path)
                )),
            });
        };
        if m.route.public {
            return Ok(Verdict::Allow(Vec::new()));
        }
        let (claims, session_open) = match self.envoy_claims(&req).await? {
            Ok(c) => c,
            Err(why) => return Ok(Verdict::Unauthenticated(why)),
        };
        if claims.scope == SCOPE_PASSWORD_CHANGE {
            return Ok(Verdict::Denied("the password must be changed first".into()));
        }
        if let Some(Caller::Service { tenants: Some(tenants), name }) = caller
            && !tenants.contains(&claims.tenant)
        {
            return Ok(Verdict::Denied(format!(
                "service credential {name:?} may not decide for tenant {}",
                claims.tenant
            )));
        }
        let user_id = Uuid::parse_str(&claims.sub).map_err(|_| Error::unauthenticated("bad subject"))?;
        let uuid = |field: &str, v: Option<String>| -> std::result::Result<Option<Uuid>, String> {
            v.map(|v| Uuid::parse_str(&v).map_err(|_| format!("the request's {field} is not a UUID"))).transpose()
        };
        let (owner_user_id, department_id) = match (uuid("owner", m.owner_user_id), uuid("department", m.department_id))
        {
            (Ok(o), Ok(d)) => (o, d),
            (Err(e), _) | (_, Err(e)) => return Ok(Verdict::Denied(e)),
        };
        let check = CheckInput {
            user_id,
            module: m.route.module.clone(),
            action: m.route.action.clone(),
            resource: ResourceFacts { resource_id: m.resource_id, owner_user_id, department_id },
        };
        let decision = match self.check(&claims.tenant, check).await {
            Ok(d) => d,
            // A route naming a right the tenant's catalog lacks, or a tenant that is gone: a denial.
            Err(e) if matches!(e.kind, Kind::InvalidArgument | Kind::NotFound) => {
                return Ok(Verdict::Denied(e.message));
            }
            Err(e) => return Err(e),
        };
        if !decision.allowed {
            // A deactivated or deleted user's token (its sessions ended with the change) is
            // refused as that user: 403 with the reason.
            return Ok(Verdict::Denied(decision.reason));
        }
        if !session_open {
            return Ok(Verdict::Unauthenticated("the session of this access token has ended: log in again".into()));
        }
        let mut headers = vec![
            (USER_HEADER, claims.sub.clone()),
            (TENANT_HEADER, claims.tenant.clone()),
            (SESSION_HEADER, claims.sid.clone()),
            (SCOPE_HEADER, decision.scope.as_str().to_ascii_lowercase()),
        ];
        if m.route.list && decision.scope == Scope::Department {
            let ids = self.scope_departments(&claims.tenant, user_id).await?;
            headers.push((DEPARTMENTS_HEADER, ids.iter().map(Uuid::to_string).collect::<Vec<_>>().join(",")));
        }
        Ok(Verdict::Allow(headers))
    }

    /// The verified claims of the request's caller and whether their session is still open, or
    /// why there are none.
    async fn envoy_claims(&self, req: &HttpCheck<'_>) -> Result<std::result::Result<(Claims, bool), String>> {
        let claims = if let Some(value) = req.headers.get("authorization") {
            let (scheme, token) = value.split_once(' ').unwrap_or((value, ""));
            if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
                return Ok(Err("the Authorization header must be 'Bearer <access token>'".into()));
            }
            let Some(v) = self.auth.keys.verify(token.trim()).await else {
                return Ok(Err("the access token is not valid or has expired".into()));
            };
            v.claims.clone()
        } else {
            let Some(payload) = &req.jwt_payload else {
                return Ok(Err("an access token is required (Authorization: Bearer …)".into()));
            };
            let Ok(claims) = serde_json::from_value::<Claims>(payload.clone()) else {
                return Ok(Err("the verified token payload is not a crm-iam access token".into()));
            };
            let policy = self.auth.keys.policy();
            if claims.iss != policy.issuer
                || claims.aud != policy.audience
                || claims.exp + 30 <= chrono::Utc::now().timestamp()
            {
                return Ok(Err("the verified token is not a current crm-iam access token".into()));
            }
            claims
        };
        let open = match self.session_active(&claims).await {
            // A suspended tenant's token opens nothing (and Access.Check denies its users too).
            Err(e) if e.reason == crate::domain::Reason::TenantSuspended => false,
            open => open?,
        };
        Ok(Ok((claims, open)))
    }
}

fn path_only(target: &str) -> &str {
    target.split_once('?').map_or(target, |p| p.0)
}
