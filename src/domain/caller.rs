//! Who is calling: the authenticated caller of a request (put into the request extensions by the
//! gRPC edge's authentication layer, `api::authn`) and the configured credentials of sibling
//! services.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::audit::{Actor, ActorKind};

/// A user acting with an access token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserCaller {
    pub tenant_id: String,
    pub user_id: Uuid,
    pub session_id: Uuid,
    /// A token good only for `ChangePassword` (the user must change the password first).
    pub restricted: bool,
    /// How the user proved identity (`pwd`, `otp`).
    pub amr: Vec<String>,
}

/// The authenticated caller of a request, put into the request extensions by [`AuthLayer`]
/// before any handler runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// The platform admin token: every tenant, every method.
    PlatformAdmin,
    /// A sibling service with a named credential: the methods its credential lists, in every
    /// tenant or (`tenants`) only in those.
    Service { name: Arc<str>, tenants: Option<Arc<[String]>> },
    /// A tenant user: that tenant, that user's rights.
    User(UserCaller),
}

impl Caller {
    /// The actor recorded in audit events.
    pub fn actor(&self) -> Actor {
        match self {
            Caller::PlatformAdmin => Actor { kind: ActorKind::Service, id: "platform-admin".into() },
            Caller::Service { name, .. } => Actor { kind: ActorKind::Service, id: format!("service:{name}") },
            Caller::User(u) => Actor { kind: ActorKind::User, id: u.user_id.to_string() },
        }
    }
}

/// A named credential of a sibling service (configuration `[[service_credentials]]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceCredential {
    /// Shown in audit events as `service:<name>`.
    pub name: String,
    /// Hex SHA-256 of the service's bearer token (the token itself is not configured here).
    pub token_sha256: String,
    /// Methods it may call: `Access.Check`, `crm.iam.v1.Access/Check`, or `Access.*` for a whole service.
    pub methods: Vec<String>,
    /// The tenants it may act in; unset: every tenant. A credential limited to tenants may not
    /// call platform-level methods (tenant creation and listing, the all-tenant audit stream).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenants: Option<Vec<String>>,
    /// Mutual TLS: the token is accepted only on a connection whose client certificate names
    /// this subject as a DNS or URI subject alternative name (exactly; a SPIFFE ID such as
    /// `spiffe://crm.example/ns/deals/sa/deals`), so a stolen token alone is not enough. Unset:
    /// any connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_subject: Option<String>,
}
