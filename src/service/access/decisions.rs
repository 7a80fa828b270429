//! Access decisions: Check, BatchCheck and EffectivePermissions, answered from the cache.

use std::sync::atomic::Ordering;

use uuid::Uuid;

use super::{CheckInput, Effective, TenantEntry};
use crate::{
    domain::{
        Result, Violations,
        access::{Decision, Policy, ResourceFacts, Right, Scope},
        caller::Caller,
    },
    service::{Iam, Target, authz_same_tenant as same_tenant},
    store::users,
};

/// The reason of every decision in a suspended tenant.
const SUSPENDED: &str = "the tenant is suspended";

/// Most checks in one BatchCheck.
pub const MAX_BATCH: usize = 1000;

/// An `Access.Check` request: the check, and the bad fields its conversion found (completed by
/// the operation with names unknown to the tenant's catalog, so all are reported at once).
pub struct CheckQuery {
    pub tenant_id: String,
    pub check: CheckInput,
    pub invalid: Violations,
}

/// An `Access.BatchCheck` request, as [`CheckQuery`].
pub struct BatchCheckQuery {
    pub tenant_id: String,
    pub checks: Vec<CheckInput>,
    pub invalid: Violations,
}

impl Iam {
    /// Decides one check. Unknown modules or actions are INVALID_ARGUMENT naming `field_prefix`.
    async fn decide(
        &self,
        tenant: &TenantEntry,
        tenant_id: &str,
        policy: &Policy,
        check: &CheckInput,
    ) -> Result<Decision> {
        let user = self.user_facts(tenant, tenant_id, check.user_id).await?;
        let mut resource = std::borrow::Cow::Borrowed(&check.resource);
        // OWN and DEPARTMENT scopes on a record whose owner the caller did not pass: ask the registry.
        if let (Some(resource_id), None, None, Some(u)) =
            (&resource.resource_id, resource.owner_user_id, resource.department_id, user.as_deref())
            && let Some(p) = policy.permission(&check.module, &check.action)
            && matches!(policy.grant(u, p).scope, Scope::Own | Scope::Department)
        {
            let owner = self.registered_owner(tenant, tenant_id, &check.module, resource_id).await?;
            if owner.is_none() {
                return Ok(Decision::deny(format!(
                    "the owner of {}/{resource_id} is unknown: it is not in the ownership registry and the caller did not pass it",
                    check.module
                )));
            }
            resource.to_mut().owner_user_id = owner;
        }
        let resource = resource.as_ref();
        // DEPARTMENT scope needs the resource's department: the owner's, when only the owner is known.
        if resource.department_id.is_none()
            && let (Some(owner), Some(u)) = (resource.owner_user_id, user.as_deref())
            && owner != check.user_id
            && policy
                .permission(&check.module, &check.action)
                .is_some_and(|p| policy.grant(u, p).scope == Scope::Department)
        {
            let department_id = self.user_facts(tenant, tenant_id, owner).await?.and_then(|o| o.department_id);
            let resource = ResourceFacts { department_id, ..resource.clone() };
            return Ok(policy.decide(check.user_id, user.as_deref(), &check.module, &check.action, &resource));
        }
        Ok(policy.decide(check.user_id, user.as_deref(), &check.module, &check.action, resource))
    }

    fn check_names(policy: &Policy, v: &mut Violations, prefix: impl Fn() -> String, module: &str, action: &str) {
        if policy.has_action(module, action) {
            return;
        }
        if !policy.has_module(module) {
            v.add(format!("{}module", prefix()), format!("unknown module {module:?}: see GetPermissionCatalog"));
        } else {
            v.add(format!("{}action", prefix()), format!("module {module:?} has no action {action:?}"));
        }
    }

    /// Module/action names unknown to the tenant's catalog, as violations (for merging with the
    /// request's other bad fields; empty when the tenant cannot be loaded).
    pub async fn unknown_names(&self, tenant_id: &str, checks: &[(String, &CheckInput)]) -> Violations {
        let mut v = Violations::default();
        let Ok(tenant) = self.tenant_entry(tenant_id).await else { return v };
        if let Ok(policy) = self.policy(&tenant, tenant_id).await {
            for (prefix, c) in checks {
                if !c.module.is_empty() && !c.action.is_empty() {
                    Self::check_names(&policy, &mut v, || prefix.clone(), &c.module, &c.action);
                }
            }
        }
        v
    }

    /// `Access.Check` for `caller`: the request's bad fields with the names unknown to the tenant's
    /// catalog (all at once), then who may ask ([`Iam::may_check`]), then the decision.
    pub async fn access_check(&self, caller: &Caller, q: CheckQuery) -> Result<Decision> {
        let CheckQuery { tenant_id, check, mut invalid } = q;
        if !invalid.is_empty() {
            if !tenant_id.is_empty() {
                invalid.extend(self.unknown_names(&tenant_id, &[(String::new(), &check)]).await);
            }
            invalid.finish()?;
        }
        self.may_check(caller, &tenant_id, std::iter::once(check.user_id)).await?;
        self.check(&tenant_id, check).await
    }

    /// `Access.BatchCheck` for `caller`, as [`Iam::access_check`]; decisions in request order.
    pub async fn access_batch_check(&self, caller: &Caller, q: BatchCheckQuery) -> Result<Vec<Decision>> {
        let BatchCheckQuery { tenant_id, checks, mut invalid } = q;
        if !invalid.is_empty() {
            if !tenant_id.is_empty() && checks.len() <= MAX_BATCH {
                let named: Vec<(String, &CheckInput)> =
                    checks.iter().enumerate().map(|(i, c)| (format!("checks[{i}]."), c)).collect();
                invalid.extend(self.unknown_names(&tenant_id, &named).await);
            }
            invalid.finish()?;
        }
        self.may_check(caller, &tenant_id, checks.iter().map(|c| c.user_id)).await?;
        self.batch_check(&tenant_id, checks).await
    }

    /// Services and the platform ask about anyone; a user may ask about themselves, and about
    /// others only with roles.view at tenant scope (rights of others are an administrator's view).
    async fn may_check(&self, caller: &Caller, tenant_id: &str, mut users: impl Iterator<Item = Uuid>) -> Result<()> {
        if let Caller::User(u) = caller {
            if users.all(|id| id == u.user_id) {
                same_tenant(caller, tenant_id)?;
            } else {
                self.authorize(caller, tenant_id, Right::ROLES_VIEW, Target::Tenant).await?;
            }
        }
        Ok(())
    }

    /// Whether the platform has the tenant suspended (its cached row: one lookup per request).
    async fn suspended(&self, tenant: &TenantEntry, tenant_id: &str) -> Result<bool> {
        Ok(self.entry_tenant(tenant, tenant_id).await?.suspension.is_some())
    }

    /// `Access.Check`.
    pub async fn check(&self, tenant_id: &str, check: CheckInput) -> Result<Decision> {
        self.foreground.fetch_add(1, Ordering::Relaxed);
        let tenant = self.tenant_entry(tenant_id).await?;
        let policy = self.policy(&tenant, tenant_id).await?;
        let mut v = Violations::default();
        Self::check_names(&policy, &mut v, String::new, &check.module, &check.action);
        v.finish()?;
        if self.suspended(&tenant, tenant_id).await? {
            return Ok(Decision::deny(SUSPENDED));
        }
        self.decide(&tenant, tenant_id, &policy, &check).await
    }

    /// `Access.BatchCheck`: decisions in request order.
    pub async fn batch_check(&self, tenant_id: &str, checks: Vec<CheckInput>) -> Result<Vec<Decision>> {
        self.foreground.fetch_add(1, Ordering::Relaxed);
        let tenant = self.tenant_entry(tenant_id).await?;
        let policy = self.policy(&tenant, tenant_id).await?;
        let mut v = Violations::default();
        for (i, c) in checks.iter().enumerate() {
            Self::check_names(&policy, &mut v, || format!("checks[{i}]."), &c.module, &c.action);
        }
        v.finish()?;
        if self.suspended(&tenant, tenant_id).await? {
            return Ok(checks.iter().map(|_| Decision::deny(SUSPENDED)).collect());
        }
        let mut out = Vec::with_capacity(checks.len());
        for c in &checks {
            out.push(self.decide(&tenant, tenant_id, &policy, c).await?);
        }
        Ok(out)
    }

    /// The departments a user's DEPARTMENT scope covers: their department and every one below
    /// it (as `GetEffectivePermissions` gives them); empty for a user without a department.
    pub async fn scope_departments(&self, tenant_id: &str, user_id: Uuid) -> Result<Vec<Uuid>> {
        let tenant = self.tenant_entry(tenant_id).await?;
        let policy = self.policy(&tenant, tenant_id).await?;
        let user = self.user_facts(&tenant, tenant_id, user_id).await?;
        Ok(user.and_then(|u| u.department_id).map(|d| policy.subtree(d)).unwrap_or_default())
    }

    /// `RoleAdmin.GetEffectivePermissions`.
    pub async fn effective_permissions(&self, tenant_id: &str, user_id: Uuid) -> Result<Effective> {
        let tenant = self.tenant_entry(tenant_id).await?;
        let policy = self.policy(&tenant, tenant_id).await?;
        let user = self.user_facts(&tenant, tenant_id, user_id).await?.ok_or_else(|| users::not_found(user_id))?;
        let permissions = policy.effective(&user).into_iter().map(|((m, a), (s, r))| (m, a, s, r)).collect();
        let department_ids = user.department_id.map(|d| policy.subtree(d)).unwrap_or_default();
        Ok(Effective {
            user_id,
            active: user.state == crate::domain::user::UserState::Active,
            permissions,
            department_ids,
        })
    }
}
