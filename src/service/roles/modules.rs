//! Custom modules of a tenant's permission catalog: create, update, delete (refused while a role uses them).

use super::*;

impl Iam {
    /// The catalog: roles.view at any scope.
    pub async fn get_permission_catalog(&self, call: &Call, cmd: GetCatalog) -> Result<Vec<Module>> {
        self.authorize(&call.caller, &cmd.tenant_id, Right::ROLES_VIEW, Target::Any).await?;
        self.permission_catalog(&cmd.tenant_id).await
    }

    pub async fn permission_catalog(&self, tenant_id: &str) -> Result<Vec<Module>> {
        self.tenant_settings(tenant_id).await?;
        roles::catalog(self.db.conn(), tenant_id).await
    }

    /// Needs settings.edit at TENANT scope.
    pub async fn create_module(&self, call: &Call, cmd: CreateModule) -> Result<Module> {
        let CreateModule { tenant_id, module: new } = cmd;
        let (ctx, tenant_id) = (&call.ctx, tenant_id.as_str());
        self.authorize(&call.caller, tenant_id, Right::SETTINGS_EDIT, Target::Tenant).await?;
        self.db
            .write(ctx, async |tx| {
                tenants::lock(tx, tenant_id).await?;
                if roles::catalog(&**tx, tenant_id).await?.iter().any(|m| m.name == new.name && m.builtin) {
                    return Err(Error::invalid_field("module.name", format!("{:?} is a built-in module", new.name)));
                }
                let m = Module {
                    name: new.name,
                    display_name: new.display_name,
                    actions: new.actions,
                    builtin: false,
                    version: 1,
                };
                let m = roles::insert_module(tx, tenant_id, &m).await?;
                tx.policy_changed(tenant_id, None);
                tx.audit(AuditRecord::new(Some(tenant_id), "module.created", "module", &m.name).with_changes(
                    None,
                    Some(&m),
                    &["version", "builtin"],
                ));
                Ok(m)
            })
            .await
    }

    /// Roles (other than built-in ones) whose permissions use `module` (and `action`, if given).
    pub(super) async fn roles_using(
        &self,
        tx: &Tx,
        tenant_id: &str,
        module: &str,
        actions: Option<&[String]>,
    ) -> Result<Vec<roles::Row>> {
        let mut out = Vec::new();
        for r in roles::all(&**tx, tenant_id).await? {
            if r.builtin.is_some() {
                continue;
            }
            let uses = roles::permissions(&r, &[])?
                .iter()
                .any(|p| p.module == module && p.scope > Scope::None && actions.is_none_or(|a| a.contains(&p.action)));
            if uses {
                out.push(r);
            }
        }
        Ok(out)
    }

    pub(super) fn module_in_use(module: &str, using: &[roles::Row], what: &str) -> Error {
        let mut e = Error::new(
            Kind::FailedPrecondition,
            Reason::ModuleInUse,
            format!("{} role(s) still grant {what} of module {module:?}: change them first", using.len()),
        );
        for r in using {
            e.precondition_violations.push(PreconditionViolation {
                kind: "ROLE_USES_MODULE".into(),
                subject: format!("roles/{}", r.role_id),
                description: format!("role {:?} grants {what}", r.name),
            });
        }
        e
    }

    /// A custom module to change, with the tenant locked and the etag checked.
    async fn locked_module(tx: &Tx, tenant_id: &str, name: &str, etag: &str) -> Result<Module> {
        tenants::lock(tx, tenant_id).await?;
        let module = roles::find_module(&**tx, tenant_id, name).await?.ok_or_else(|| roles::module_not_found(name))?;
        check_etag(etag, module.version, "module")?;
        Ok(module)
    }

    /// Needs settings.edit at TENANT scope.
    pub async fn update_module(&self, call: &Call, cmd: UpdateModule) -> Result<Module> {
        let UpdateModule { tenant_id, name, display_name, actions, etag } = cmd;
        let (ctx, tenant_id, name, etag) = (&call.ctx, tenant_id.as_str(), name.as_str(), etag.as_str());
        self.authorize(&call.caller, tenant_id, Right::SETTINGS_EDIT, Target::Tenant).await?;
        self.db
            .write(ctx, async |tx| {
                let before = Self::locked_module(tx, tenant_id, name, etag).await?;
                let mut after = before.clone();
                if let Some(d) = display_name {
                    after.display_name = d;
                }
                if let Some(a) = actions {
                    let removed: Vec<String> = before.actions.iter().filter(|x| !a.contains(x)).cloned().collect();
                    if !removed.is_empty() {
                        let using = self.roles_using(tx, tenant_id, name, Some(&removed)).await?;
                        if !using.is_empty() {
                            return Err(Self::module_in_use(name, &using, &format!("actions {removed:?}")));
                        }
                    }
                    after.actions = a;
                }
                let after = roles::update_module(tx, tenant_id, &after).await?;
                tx.policy_changed(tenant_id, None);
                tx.audit(AuditRecord::new(Some(tenant_id), "module.updated", "module", name).with_changes(
                    Some(&before),
                    Some(&after),
                    &["version", "builtin"],
                ));
                Ok(after)
            })
            .await
    }

    /// Needs settings.edit at TENANT scope.
    pub async fn delete_module(&self, call: &Call, cmd: DeleteModule) -> Result<()> {
        let DeleteModule { tenant_id, name, etag } = cmd;
        let (ctx, tenant_id, name, etag) = (&call.ctx, tenant_id.as_str(), name.as_str(), etag.as_str());
        self.authorize(&call.caller, tenant_id, Right::SETTINGS_EDIT, Target::Tenant).await?;
        self.db
            .write(ctx, async |tx| {
                let before = Self::locked_module(tx, tenant_id, name, etag).await?;
                let using = self.roles_using(tx, tenant_id, name, None).await?;
                if !using.is_empty() {
                    return Err(Self::module_in_use(name, &using, "rights"));
                }
                roles::delete_module(tx, tenant_id, name).await?;
                tx.policy_changed(tenant_id, None);
                tx.audit(AuditRecord::new(Some(tenant_id), "module.deleted", "module", name).with_changes(
                    Some(&before),
                    None,
                    &["version", "builtin"],
                ));
                Ok(())
            })
            .await
    }
}
