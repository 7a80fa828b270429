//! Who is calling: the authenticated caller of a request (put into the request extensions by the
//! gRPC edge's authentication layer, `api::authn`) and the configured credentials of sibling
//! services.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{
    Error, Result,
    audit::{Actor, ActorKind},
};

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
    /// A tenant's identity provider with a named SCIM token (`service::scim`): that tenant only,
    /// through the SCIM endpoints only (no gRPC method accepts it), as an administrator of users
    /// and role membership.
    Scim { tenant_id: Arc<str>, name: Arc<str> },
}

impl Caller {
    /// The actor recorded in audit events.
    pub fn actor(&self) -> Actor {
        match self {
            Caller::PlatformAdmin => Actor { kind: ActorKind::Service, id: "platform-admin".into() },
            Caller::Service { name, .. } => Actor { kind: ActorKind::Service, id: format!("service:{name}") },
            Caller::User(u) => Actor { kind: ActorKind::User, id: u.user_id.to_string() },
            Caller::Scim { name, .. } => Actor { kind: ActorKind::Service, id: format!("scim:{name}") },
        }
    }

    /// The calling user, for methods that act for a logged-in user's own session.
    pub fn user(&self) -> Result<&UserCaller> {
        match self {
            Caller::User(u) => Ok(u),
            _ => Err(Error::permission_denied(
                "not allowed: this method acts for a logged-in user; call it with a user access token",
            )),
        }
    }

    /// Whether the caller is this user.
    pub fn is_user(&self, user_id: Uuid) -> bool {
        matches!(self, Caller::User(u) if u.user_id == user_id)
    }

    /// The user a self-or-administrator method acts on: `user_id`, or the calling user when None
    /// (a violation under `user_id` for a caller that is not a user).
    pub fn subject(&self, user_id: Option<Uuid>) -> Result<Uuid> {
        match (user_id, self) {
            (Some(id), _) => Ok(id),
            (None, Caller::User(u)) => Ok(u.user_id),
            (None, _) => {
                Err(Error::invalid_field("user_id", "is required unless the caller is a user acting for themselves"))
            }
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
