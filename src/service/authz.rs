//! What a caller may do inside a method: the platform admin and named services everything (the
//! authentication layer already limited services to their methods); tenant users only in their
//! tenant and as their rights allow. Administrative methods are gated by the `users`, `roles` and
//! `settings` modules of the permission catalog, decided by the same engine as `Access.Check`
//! (a user record is "owned" by that user and belongs to the user's department), so custom roles
//! work here exactly as they do for sibling services.

use crate::domain::access::Right;
use uuid::Uuid;

use super::{Iam, access::CheckInput};
use crate::domain::{
    Error, Kind, Reason, Result,
    access::{Permission, ResourceFacts, Scope},
    caller::{Caller, UserCaller},
    delegation::{self, Missing, Rights},
    error::PreconditionViolation,
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

/// Platform-level methods: the platform admin token, or a service credential that lists the
/// method (the authentication layer checked that); never a tenant user.
pub fn require_platform(caller: &Caller) -> Result<()> {
    match caller {
        Caller::PlatformAdmin | Caller::Service { tenants: None, .. } => Ok(()),
        Caller::Service { tenants: Some(_), name } => Err(Error::permission_denied(format!(
            "not allowed: service credential {name:?} is limited to some tenants; this is a platform method"
        ))),
        Caller::User(_) | Caller::Scim { .. } => Err(Error::permission_denied(
            "not allowed: this is a platform method (platform admin token or a service credential)",
        )),
    }
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
    pub async fn authorize(&self, caller: &Caller, tenant_id: &str, right: Right, target: Target) -> Result<()> {
        let Right { module, action } = right;
        let user = match caller {
            Caller::PlatformAdmin => return Ok(()),
            Caller::Service { .. } | Caller::Scim { .. } => return same_tenant(caller, tenant_id),
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
        // Delegated administration: acting on another user (anything but viewing) needs every
        // right that user holds.
        if let Target::User(target) = target
            && target != user.user_id
            && action != "view"
            && ADMIN_MODULES.contains(&module)
        {
            self.target_within_own_rights(caller, tenant_id, target).await?;
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

    /// Methods a user may use on themselves (in their own tenant) and others only with `right`
    /// over that user (sessions, second factors).
    pub async fn authorize_self_or(&self, caller: &Caller, tenant_id: &str, user_id: Uuid, right: Right) -> Result<()> {
        if caller.is_user(user_id) {
            same_tenant(caller, tenant_id)
        } else {
            self.authorize(caller, tenant_id, right, Target::User(user_id)).await
        }
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

    /// A user's rights: the strongest scope per module and action.
    async fn rights_of(&self, tenant_id: &str, user_id: Uuid) -> Result<Rights> {
        let effective = self.effective_permissions(tenant_id, user_id).await?;
        Ok(effective.permissions.into_iter().map(|(m, a, s, _)| ((m, a), s)).collect())
    }

    /// Delegated administration: refuses unless the calling user holds every right of `wanted` at
    /// its scope or wider (`what` names the thing handed out, for the message). The platform and
    /// services have no ceiling.
    pub async fn within_own_rights(
        &self,
        caller: &Caller,
        tenant_id: &str,
        wanted: &[Permission],
        what: &str,
    ) -> Result<()> {
        let Caller::User(user) = caller else { return Ok(()) };
        let held = self.rights_of(tenant_id, user.user_id).await?;
        let missing =
            delegation::missing(&held, wanted.iter().map(|p| (p.module.as_str(), p.action.as_str(), p.scope)));
        if missing.is_empty() { Ok(()) } else { Err(ceiling_error(what, missing)) }
    }

    /// [`Iam::within_own_rights`] for the rights of roles (unknown ones are the operation's to report).
    pub async fn roles_within_own_rights(
        &self,
        caller: &Caller,
        tenant_id: &str,
        role_ids: &[Uuid],
        what: &str,
    ) -> Result<()> {
        if !matches!(caller, Caller::User(_)) {
            return Ok(());
        }
        for role_id in role_ids {
            match self.role(tenant_id, *role_id).await {
                Ok(role) => self.within_own_rights(caller, tenant_id, &role.permissions, what).await?,
                Err(e) if e.reason == Reason::RoleNotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Delegated administration: refuses acting on `target` unless every right the target holds is
    /// within the calling user's own (a team lead cannot reset, disable, deactivate or re-role an
    /// administrator of their department).
    pub async fn target_within_own_rights(&self, caller: &Caller, tenant_id: &str, target: Uuid) -> Result<()> {
        let Caller::User(user) = caller else { return Ok(()) };
        if target == user.user_id {
            return Ok(());
        }
        let held = self.rights_of(tenant_id, user.user_id).await?;
        let theirs = match self.rights_of(tenant_id, target).await {
            Ok(r) => r,
            // Not a user of this tenant: the operation itself says so.
            Err(e) if e.reason == Reason::UserNotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        let missing = delegation::missing(&held, theirs.iter().map(|((m, a), s)| (m.as_str(), a.as_str(), *s)));
        if missing.is_empty() {
            Ok(())
        } else {
            Err(ceiling_error(&format!("act on users/{target}, who holds rights you do not,"), missing))
        }
    }

    /// Moving a user between departments needs users.edit over both (the current one was checked
    /// with the user); nobody moves themselves unless they edit users tenant-wide (a move would
    /// widen every DEPARTMENT-scope right they hold).
    pub async fn may_move(&self, caller: &Caller, tenant_id: &str, user_id: Uuid, to: Option<Uuid>) -> Result<()> {
        let Caller::User(user) = caller else { return Ok(()) };
        if user.user_id == user_id {
            let held = self.rights_of(tenant_id, user_id).await?;
            let wanted = [(Right::USERS_EDIT.module, Right::USERS_EDIT.action, Scope::Tenant)];
            let missing = delegation::missing(&held, wanted);
            return if missing.is_empty() {
                Ok(())
            } else {
                Err(ceiling_error("move yourself to another department", missing))
            };
        }
        self.authorize(caller, tenant_id, Right::USERS_EDIT, Target::Department(to)).await
    }

    /// For listings of users: None when the caller may see every user of the tenant, or the
    /// departments (a tree) whose users it may see.
    pub async fn visible_departments(&self, caller: &Caller, tenant_id: &str) -> Result<Option<Vec<Uuid>>> {
        let user = match caller {
            Caller::PlatformAdmin | Caller::Service { .. } => return Ok(None),
            Caller::Scim { .. } => {
                same_tenant(caller, tenant_id)?;
                return Ok(None);
            }
            Caller::User(u) => u,
        };
        self.authorize(caller, tenant_id, Right::USERS_VIEW, Target::Any).await?;
        let effective = self.effective_permissions(tenant_id, user.user_id).await?;
        let scope = effective
            .permissions
            .iter()
            .find(|(m, a, _, _)| m == Right::USERS_VIEW.module && a == Right::USERS_VIEW.action)
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

/// The tenant wall: a user token acts only in its own tenant, a service credential limited to
/// tenants only in those. The answer names nothing of the tenant asked for.
pub fn same_tenant(caller: &Caller, tenant_id: &str) -> Result<()> {
    match caller {
        Caller::User(u) if u.tenant_id != tenant_id => Err(Error::permission_denied(format!(
            "not allowed: a user token acts only in its own tenant ({})",
            u.tenant_id
        ))),
        Caller::Service { name, tenants: Some(tenants) } if !tenants.iter().any(|t| t == tenant_id) => {
            Err(Error::permission_denied(format!(
                "not allowed: service credential {name:?} acts only in the tenants it lists"
            )))
        }
        Caller::Scim { tenant_id: own, .. } if &**own != tenant_id => {
            Err(Error::permission_denied("not allowed: a SCIM token acts only in its own tenant"))
        }
        _ => Ok(()),
    }
}

/// PERMISSION_DENIED naming each right the caller lacks (a precondition violation per right).
fn ceiling_error(what: &str, missing: Vec<Missing>) -> Error {
    let mut e = Error::new(
        Kind::PermissionDenied,
        Reason::PermissionDenied,
        format!(
            "not allowed: you may {what} only within your own rights; missing: {}",
            missing
                .iter()
                .map(|m| format!("{} at {} scope", m.right(), m.needed.as_str()))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    );
    e.precondition_violations = missing
        .iter()
        .map(|m| PreconditionViolation { kind: "RIGHT_MISSING".into(), subject: m.right(), description: m.describe() })
        .collect();
    e
}
