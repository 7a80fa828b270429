use super::{Call, Iam, Page, Target, require_platform};
use crate::{
    domain::{
        Result, Violations,
        access::Right,
        audit::AuditRecord,
        check_etag,
        tenant::{NewTenant, SettingsPatch, Tenant, TenantPatch},
    },
    store::{roles, tenants},
};

/// A new tenant, with the settings the request named (checked against the audit floor).
pub struct CreateTenant {
    pub tenant: NewTenant,
    pub settings: SettingsPatch,
}

/// One tenant, by id.
pub struct GetTenant {
    pub tenant_id: String,
}

/// A page of tenants after the tenant id `after`.
pub struct ListTenants {
    pub after: Option<String>,
    pub limit: u64,
}

/// Changes to a tenant, guarded by its etag.
pub struct UpdateTenant {
    pub tenant_id: String,
    pub patch: TenantPatch,
    pub etag: String,
}

/// Suspend (`suspend`) or resume a tenant, with the platform's reason.
pub struct SetTenantSuspended {
    pub tenant_id: String,
    pub suspend: bool,
    pub reason: String,
}

/// Fields of a tenant that are bookkeeping, not content, in audit diffs.
const TENANT_DIFF_IGNORE: &[&str] = &["version", "update_time", "create_time", "seats_used"];

impl Iam {
    /// Platform only.
    pub async fn create_tenant(&self, call: &Call, cmd: CreateTenant) -> Result<Tenant> {
        require_platform(&call.caller)?;
        let mut v = Violations::default();
        cmd.tenant.settings.check_audit_floor(
            &cmd.settings,
            self.audit.min_retention_secs(),
            "tenant.settings.",
            &mut v,
        );
        self.outbox.check_channel(&cmd.settings, &mut v);
        v.finish()?;
        self.db
            .write(&call.ctx, async |tx| {
                let tenant = tenants::insert(tx, cmd.tenant).await?;
                roles::ensure_builtin(&**tx, &tenant.tenant_id).await?;
                tx.audit(
                    AuditRecord::new(Some(&tenant.tenant_id), "tenant.created", "tenant", &tenant.tenant_id)
                        .with_changes(None, Some(&tenant), TENANT_DIFF_IGNORE),
                );
                Ok(tenant)
            })
            .await
    }

    /// Needs settings.view in the tenant.
    pub async fn get_tenant(&self, call: &Call, cmd: GetTenant) -> Result<Tenant> {
        self.authorize(&call.caller, &cmd.tenant_id, Right::SETTINGS_VIEW, Target::Tenant).await?;
        tenants::get(self.db.conn(), &cmd.tenant_id).await
    }

    /// Platform only.
    pub async fn list_tenants(&self, call: &Call, cmd: ListTenants) -> Result<Page<Tenant>> {
        require_platform(&call.caller)?;
        let rows = tenants::list(self.db.conn(), cmd.after.as_deref(), cmd.limit + 1).await?;
        Ok(Page::from_rows(rows, cmd.limit))
    }

    /// Needs settings.edit in the tenant; seats (what the customer pays for) only the platform
    /// changes.
    pub async fn update_tenant(&self, call: &Call, cmd: UpdateTenant) -> Result<Tenant> {
        let UpdateTenant { tenant_id, patch, etag } = cmd;
        let tenant_id = tenant_id.as_str();
        self.authorize(&call.caller, tenant_id, Right::SETTINGS_EDIT, Target::Tenant).await?;
        if patch.seat_limit.is_some() {
            require_platform(&call.caller)?;
        }
        self.db
            .write(&call.ctx, async |tx| {
                let before = tenants::lock_with_seats(tx, tenant_id).await?;
                check_etag(&etag, before.version, "tenant")?;
                let mut after = before.clone();
                if let Some(name) = patch.display_name {
                    after.display_name = name;
                }
                if let Some(limit) = patch.seat_limit {
                    after.seat_limit = limit;
                }
                after.settings = before.settings.apply(&patch.settings).map_err(Violations::into_error)?;
                let mut v = Violations::default();
                after.settings.check_audit_floor(
                    &patch.settings,
                    self.audit.min_retention_secs(),
                    "tenant.settings.",
                    &mut v,
                );
                self.outbox.check_channel(&patch.settings, &mut v);
                v.finish()?;
                let after = tenants::update(tx, &after, before.version).await?;
                // Settings (sessions, lockout, password policy) are cached with the tenant's
                // access data on every replica: a tenant-wide change drops them.
                tx.policy_changed(tenant_id, None);
                tx.audit(AuditRecord::new(Some(tenant_id), "tenant.updated", "tenant", tenant_id).with_changes(
                    Some(&before),
                    Some(&after),
                    TENANT_DIFF_IGNORE,
                ));
                Ok(after)
            })
            .await
    }

    /// Platform only: suspends or resumes the tenant. Every replica drops the tenant's cached row
    /// (policy change), so the next login, token use or check sees the new state. Doing what is
    /// already so changes nothing and is not audited.
    pub async fn set_tenant_suspended(&self, call: &Call, cmd: SetTenantSuspended) -> Result<Tenant> {
        require_platform(&call.caller)?;
        let SetTenantSuspended { tenant_id, suspend, reason } = cmd;
        self.db
            .write(&call.ctx, async |tx| {
                let before = tenants::lock(tx, &tenant_id).await?;
                if before.suspension.is_some() == suspend {
                    return tenants::get(&**tx, &tenant_id).await;
                }
                let mut after = before.clone();
                after.suspension = suspend
                    .then(|| crate::domain::tenant::Suspension { reason: reason.clone(), since: crate::domain::now() });
                let after = tenants::update(tx, &after, before.version).await?;
                tx.policy_changed(&tenant_id, None);
                let action = if suspend { "tenant.suspended" } else { "tenant.resumed" };
                tx.audit(
                    AuditRecord::new(Some(&tenant_id), action, "tenant", &tenant_id).with_detail("reason", reason),
                );
                Ok(after)
            })
            .await
    }
}
