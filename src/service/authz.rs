//! What a caller may do inside a method: the platform admin and named services everything (the
//! authentication layer already limited services to their methods); tenant users only in their
//! tenant and as their rights allow. Administrative methods are gated by the `users`, `roles` and
//! `settings` modules of the permission catalog, decided by the same engine as `Access.Check`
//! (a user record is "owned" by that user and belongs to the user's department), so custom roles
//! work here exactly as they do for sibling services.

use uuid::Uuid;

use super::{Iam, access::CheckInput};
use crate::{
    auth::{Caller, UserCaller},
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

/// `amr` values of a session opened with a second factor.
const SECOND_FACTORS: [&str; 3] = ["otp", "mfa", "hwk"];

/// Whether a right is administrative: any right on users, roles or settings at TENANT scope, and
/// any but `view` at DEPARTMENT scope (a team lead who may edit, reset or disable the users of a
/// department tree can take their accounts over). Viewing one's department's users is not.
fn is_administrative(module: &str, action: &str, scope: Scope) -> bool {
    ADMIN_MODULES.contains(&module)
        && match scope {
            Scope::Tenant => true,
            Scope::Department => action != "view",
            _ => false,
        }
}

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
        if ADMIN_MODULES.contains(&module) && self.second_factor_missing(tenant_id, user).await? {
            return Err(Error::new(
                Kind::PermissionDenied,
                Reason::MfaRequired,
                "this tenant requires administrators to use a second factor: enroll TOTP (Auth.EnrollTotp, \
                 Auth.ConfirmTotp) if you have not, and log in again with a code",
            ));
        }
        Ok(())
    }

    /// Whether the tenant requires a second factor of administrators, the user is one (holds an
    /// administrative right: see `Policy::is_administrative`), and the caller's session was opened
    /// without one (its `amr`).
    async fn second_factor_missing(&self, tenant_id: &str, user: &UserCaller) -> Result<bool> {
        if !self.tenant_settings(tenant_id).await?.settings.require_mfa_for_admins
            || user.amr.iter().any(|m| SECOND_FACTORS.contains(&m.as_str()))
        {
            return Ok(false);
        }
        let effective = self.effective_permissions(tenant_id, user.user_id).await?;
        Ok(effective.permissions.iter().any(|(m, a, s, _)| is_administrative(m, a, *s)))
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
