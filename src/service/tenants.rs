use super::{Iam, Page};
use crate::{
    domain::{
        Result, Violations,
        audit::{AuditRecord, RequestContext},
        check_etag,
        tenant::{NewTenant, Tenant, TenantPatch},
    },
    store::{roles, tenants},
};

/// Fields of a tenant that are bookkeeping, not content, in audit diffs.
const TENANT_DIFF_IGNORE: &[&str] = &["version", "update_time", "create_time", "seats_used"];

impl Iam {
    pub async fn create_tenant(&self, ctx: &RequestContext, new: NewTenant) -> Result<Tenant> {
        self.db
            .write(ctx, async |tx| {
                let tenant = tenants::insert(tx, new).await?;
                roles::ensure_builtin(&**tx, &tenant.tenant_id).await?;
                tx.audit(
                    AuditRecord::new(Some(&tenant.tenant_id), "tenant.created", "tenant", &tenant.tenant_id)
                        .with_changes(None, Some(&tenant), TENANT_DIFF_IGNORE),
                );
                Ok(tenant)
            })
            .await
    }

    pub async fn get_tenant(&self, tenant_id: &str) -> Result<Tenant> {
        tenants::get(self.db.conn(), tenant_id).await
    }

    pub async fn list_tenants(&self, after: Option<&str>, limit: u64) -> Result<Page<Tenant>> {
        let rows = tenants::list(self.db.conn(), after, limit + 1).await?;
        Ok(Page::from_rows(rows, limit))
    }

    pub async fn update_tenant(
        &self,
        ctx: &RequestContext,
        tenant_id: &str,
        patch: TenantPatch,
        etag: &str,
    ) -> Result<Tenant> {
        self.db
            .write(ctx, async |tx| {
                let before = tenants::lock_with_seats(tx, tenant_id).await?;
                check_etag(etag, before.version, "tenant")?;
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
}
