//! What a caller may do inside a method: the platform admin and named services everything (the
//! authentication layer already limited services to their methods); tenant users only in their
//! tenant and as their rights allow. Administrative methods are gated by the `users`, `roles` and
//! `settings` modules of the permission catalog, decided by the same engine as `Access.Check`
//! (a user record is "owned" by that user and belongs to the user's department), so custom roles
//! work here exactly as they do for sibling services.

use uuid::Uuid;

use super::{Iam, access::CheckInput};
use crate::{
    auth::Caller,
    domain::{
        Error, Kind, Reason, Result,
        access::{ResourceFacts, Scope},
    },
};

/// What an action is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The tenant as a whole: needs the right at TENANT scope.
    Tenant,
    /// The module as a whole: the right at any scope will do.
    Any,
    /// One user: OWN scope covers the user themselves, DEPARTMENT scope users of the caller's
    /// department tree. Anyone may view themselves.
    User(Uuid),
    /// Something placed in a department (None: in no department, which needs TENANT scope).
    Department(Option<Uuid>),
}

/// Modules whose rights make a user an administrator of some kind (MFA may be required).
const ADMIN_MODULES: [&str; 3] = ["users", "roles", "settings"];

impl Iam {
    /// Allows `action` on `module` in `tenant_id` for the caller, or PERMISSION_DENIED saying why.
    pub async fn authorize(
        &self,
        caller: &Caller,
        tenant_id: &str,
        module: &str,
        action: &str,
        target: Target,
    ) -> Result<()> {
        let user = match caller {
            Caller::PlatformAdmin | Caller::Service { .. } => return Ok(()),
            Caller::User(u) => u,
        };
        same_tenant(caller, tenant_id)?;
        if target == Target::User(user.user_id) && action == "view" {
            return Ok(());
        }
        let resource = match target {
            Target::Tenant | Target::Any | Target::Department(None) => ResourceFacts::default(),
            Target::User(t) => ResourceFacts { owner_user_id: Some(t), ..Default::default() },
            Target::Department(Some(d)) => ResourceFacts { department_id: Some(d), ..Default::default() },
        };
        let decision = self
            .check(
                tenant_id,
                CheckInput { user_id: user.user_id, module: module.into(), action: action.into(), resource },
            )
            .await?;
        if !decision.allowed {
            return Err(Error::permission_denied(format!("not allowed: {}", decision.reason)));
        }
        if matches!(target, Target::Tenant | Target::Department(None)) && decision.scope != Scope::Tenant {
            return Err(Error::permission_denied(format!(
                "not allowed: this needs {module}.{action} at TENANT scope, and the user's roles grant it only at {} scope",
                decision.scope.as_str()
            )));
        }
        if ADMIN_MODULES.contains(&module) && self.mfa_missing(tenant_id, user.user_id).await? {
            return Err(Error::new(
                Kind::PermissionDenied,
                Reason::MfaRequired,
                "this tenant requires administrators to use two-factor authentication: enroll TOTP \
                 (Auth.EnrollTotp, Auth.ConfirmTotp) and log in again",
            ));
        }
        Ok(())
    }

    /// For listings of users: None when the caller may see every user of the tenant, or the
    /// departments (a tree) whose users it may see.
    pub async fn visible_departments(&self, caller: &Caller, tenant_id: &str) -> Result<Option<Vec<Uuid>>> {
        let user = match caller {
            Caller::PlatformAdmin | Caller::Service { .. } => return Ok(None),
            Caller::User(u) => u,
        };
        self.authorize(caller, tenant_id, "users", "view", Target::Any).await?;
        let effective = self.effective_permissions(tenant_id, user.user_id).await?;
        let scope = effective
            .permissions
            .iter()
            .find(|(m, a, _, _)| m == "users" && a == "view")
            .map(|(_, _, s, _)| *s)
            .unwrap_or(Scope::None);
        match scope {
            Scope::Tenant => Ok(None),
            Scope::Department if !effective.department_ids.is_empty() => Ok(Some(effective.department_ids)),
            _ => Err(Error::permission_denied(
                "not allowed: listing users needs users.view at DEPARTMENT or TENANT scope (GetUser shows yourself)",
            )),
        }
    }
}

/// A user token acts only in its own tenant.
pub fn same_tenant(caller: &Caller, tenant_id: &str) -> Result<()> {
    match caller {
        Caller::User(u) if u.tenant_id != tenant_id => Err(Error::permission_denied(format!(
            "not allowed: a user token acts only in its own tenant ({})",
            u.tenant_id
        ))),
        _ => Ok(()),
    }
}
