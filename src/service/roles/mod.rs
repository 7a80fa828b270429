use std::collections::HashSet;

use uuid::Uuid;

use super::{Call, Iam, Page, Target, users::UserRef};
use crate::{
    domain::{
        Error, Kind, Reason, Result, Violations,
        access::{ACTIONS, Module, Permission, Right, Scope, Template},
        audit::AuditRecord,
        check_etag,
        error::PreconditionViolation,
        now,
        role::Role,
        user::{User, UserState},
    },
    store::{Tx, roles, tenants, users},
};

mod commands;
mod modules;

pub use commands::*;

const ROLE_DIFF_IGNORE: &[&str] = &["version", "update_time", "create_time", "role_id", "tenant_id", "user_count"];

fn builtin_error(role: &roles::Row) -> Error {
    Error::precondition(
        Reason::BuiltinRole,
        "BUILTIN_ROLE",
        format!("roles/{}", role.role_id),
        format!(
            "{:?} is a built-in role and cannot be changed or deleted; copy it into a custom role instead",
            role.name
        ),
    )
}

/// Checks permissions against the tenant's catalog; every bad entry becomes a field violation.
pub fn check_permissions(v: &mut Violations, field: &str, permissions: &[Permission], catalog: &[Module]) {
    let mut seen = HashSet::new();
    for (i, p) in permissions.iter().enumerate() {
        let path = format!("{field}[{i}]");
        match catalog.iter().find(|m| m.name == p.module) {
            None => v.add(format!("{path}.module"), format!("unknown module {:?}: see GetPermissionCatalog", p.module)),
            Some(m) if !m.actions.contains(&p.action) => {
                v.add(format!("{path}.action"), format!("module {:?} has no action {:?}", p.module, p.action))
            }
            Some(_) if !seen.insert((p.module.as_str(), p.action.as_str())) => {
                v.add(path, format!("{}.{} is listed twice", p.module, p.action))
            }
            Some(_) => {}
        }
    }
}

impl Iam {
    /// Refuses a change that would leave the tenant without an ACTIVE administrator.
    pub(crate) async fn ensure_not_last_admin(&self, tx: &Tx, tenant_id: &str, user: &users::Row) -> Result<()> {
        let admin = roles::builtin_role_id(tenant_id, Template::Administrator);
        if users::state(user)? != UserState::Active || !roles::of_user(&**tx, user.user_id).await?.contains(&admin) {
            return Ok(());
        }
        if roles::other_active_admins(&**tx, tenant_id, user.user_id).await? == 0 {
            return Err(Error::precondition(
                Reason::LastAdministrator,
                "LAST_ADMINISTRATOR",
                format!("users/{}", user.user_id),
                "this is the tenant's last ACTIVE administrator; make another user administrator first",
            ));
        }
        Ok(())
    }

    /// Creates the built-in roles of tenants that lack them (tenants created by older versions).
    pub async fn ensure_builtin_roles(&self) -> Result<()> {
        let missing = roles::tenants_without_builtin_roles(self.db.conn()).await?;
        for tenant_id in missing {
            roles::ensure_builtin(self.db.conn(), &tenant_id).await?;
        }
        Ok(())
    }

    // ---- modules ----

    // ---- roles ----

    async fn role_out(&self, conn: &impl crate::store::Conn, row: roles::Row) -> Result<Role> {
        let catalog = roles::catalog(conn, &row.tenant_id).await?;
        let count = roles::user_count(conn, row.role_id).await?;
        roles::to_domain(row, &catalog, count)
    }

    async fn role_row(&self, conn: &impl crate::store::Conn, tenant_id: &str, role_id: Uuid) -> Result<roles::Row> {
        match roles::find(conn, tenant_id, role_id).await? {
            Some(r) => Ok(r),
            None => {
                self.tenant_settings(tenant_id).await?;
                Err(roles::not_found(role_id))
            }
        }
    }

    /// Needs roles.create at TENANT scope, and rights (or a source role) within the caller's own.
    pub async fn create_role(&self, call: &Call, cmd: CreateRole) -> Result<Role> {
        let CreateRole { tenant_id, role: new } = cmd;
        let (ctx, caller, tenant_id) = (&call.ctx, &call.caller, tenant_id.as_str());
        self.authorize(caller, tenant_id, Right::ROLES_CREATE, Target::Tenant).await?;
        match new.source_role_id {
            Some(source) => self.roles_within_own_rights(caller, tenant_id, &[source], "create a role").await?,
            None => self.within_own_rights(caller, tenant_id, &new.permissions, "create a role").await?,
        }
        self.db
            .write(ctx, async |tx| {
                tenants::lock(tx, tenant_id).await?;
                let catalog = roles::catalog(&**tx, tenant_id).await?;
                let permissions = match new.source_role_id {
                    Some(source) => {
                        let row = roles::find(&**tx, tenant_id, source).await?.ok_or_else(|| {
                            Error::invalid_field("source_role_id", "role does not exist in this tenant")
                        })?;
                        roles::permissions(&row, &catalog)?
                    }
                    None => {
                        let mut v = Violations::default();
                        check_permissions(&mut v, "role.permissions", &new.permissions, &catalog);
                        v.finish()?;
                        new.permissions
                    }
                };
                let t = now();
                let row = roles::insert(
                    tx,
                    roles::Row {
                        role_id: Uuid::now_v7(),
                        tenant_id: tenant_id.to_owned(),
                        name_key: new.name.to_lowercase(),
                        name: new.name,
                        description: new.description,
                        builtin: None,
                        permissions: serde_json::to_string(&permissions).map_err(Error::internal)?,
                        external_id: None,
                        version: 1,
                        create_time: t,
                        update_time: t,
                    },
                )
                .await?;
                let role = roles::to_domain(row, &catalog, 0)?;
                tx.policy_changed(tenant_id, None);
                let mut record = AuditRecord::new(Some(tenant_id), "role.created", "role", role.role_id).with_changes(
                    None,
                    Some(&role),
                    ROLE_DIFF_IGNORE,
                );
                if let Some(source) = new.source_role_id {
                    record = record.with_detail("source_role_id", source.to_string());
                }
                tx.audit(record);
                Ok(role)
            })
            .await
    }

    /// Needs roles.view at any scope.
    pub async fn get_role(&self, call: &Call, cmd: RoleRef) -> Result<Role> {
        let RoleRef { tenant_id, role_id } = cmd;
        let tenant_id = tenant_id.as_str();
        self.authorize(&call.caller, tenant_id, Right::ROLES_VIEW, Target::Any).await?;
        self.role(tenant_id, role_id).await
    }

    /// A role, unchecked (for the authorization rules themselves).
    pub(super) async fn role(&self, tenant_id: &str, role_id: Uuid) -> Result<Role> {
        let row = self.role_row(self.db.conn(), tenant_id, role_id).await?;
        self.role_out(self.db.conn(), row).await
    }

    /// Needs roles.view at any scope.
    pub async fn list_roles(&self, call: &Call, cmd: ListRoles) -> Result<Page<Role>> {
        let ListRoles { tenant_id, after, limit, .. } = cmd;
        let tenant_id = tenant_id.as_str();
        self.authorize(&call.caller, tenant_id, Right::ROLES_VIEW, Target::Any).await?;
        let conn = self.db.conn();
        self.tenant_settings(tenant_id).await?;
        let catalog = roles::catalog(conn, tenant_id).await?;
        let counts = roles::user_counts(conn, tenant_id).await?;
        let rows = roles::list(conn, tenant_id, after, limit + 1).await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let n = counts.get(&r.role_id).copied().unwrap_or(0);
            out.push(roles::to_domain(r, &catalog, n)?);
        }
        Ok(Page::from_rows(out, limit))
    }

    /// A custom role to change, with the tenant locked and the etag checked (built-in roles are
    /// templates and stay as they are).
    async fn locked_custom_role(&self, tx: &Tx, tenant_id: &str, role_id: Uuid, etag: &str) -> Result<roles::Row> {
        tenants::lock(tx, tenant_id).await?;
        let row = self.role_row(&**tx, tenant_id, role_id).await?;
        if row.builtin.is_some() {
            return Err(builtin_error(&row));
        }
        check_etag(etag, row.version, "role")?;
        Ok(row)
    }

    /// Needs roles.edit at TENANT scope; only a role within the caller's own rights, and only
    /// into one.
    pub async fn update_role(&self, call: &Call, cmd: UpdateRole) -> Result<Role> {
        let UpdateRole { tenant_id, role_id, patch, etag } = cmd;
        let (ctx, caller, tenant_id, etag) = (&call.ctx, &call.caller, tenant_id.as_str(), etag.as_str());
        self.authorize(caller, tenant_id, Right::ROLES_EDIT, Target::Tenant).await?;
        self.roles_within_own_rights(caller, tenant_id, &[role_id], "edit a role").await?;
        if let Some(p) = &patch.permissions {
            self.within_own_rights(caller, tenant_id, p, "give a role rights").await?;
        }
        self.db
            .write(ctx, async |tx| {
                let row = self.locked_custom_role(tx, tenant_id, role_id, etag).await?;
                let catalog = roles::catalog(&**tx, tenant_id).await?;
                let count = roles::user_count(&**tx, role_id).await?;
                let before = roles::to_domain(row.clone(), &catalog, count)?;
                let mut new = row.clone();
                if let Some(name) = patch.name {
                    new.name_key = name.to_lowercase();
                    new.name = name;
                }
                if let Some(d) = patch.description {
                    new.description = d;
                }
                if let Some(p) = patch.permissions {
                    let mut v = Violations::default();
                    check_permissions(&mut v, "role.permissions", &p, &catalog);
                    v.finish()?;
                    new.permissions = serde_json::to_string(&p).map_err(Error::internal)?;
                }
                let after = roles::to_domain(roles::update(tx, new, row.version).await?, &catalog, count)?;
                tx.policy_changed(tenant_id, None);
                tx.audit(AuditRecord::new(Some(tenant_id), "role.updated", "role", role_id).with_changes(
                    Some(&before),
                    Some(&after),
                    ROLE_DIFF_IGNORE,
                ));
                Ok(after)
            })
            .await
    }

    /// Needs roles.delete at TENANT scope; the role and its replacement within the caller's own
    /// rights.
    pub async fn delete_role(&self, call: &Call, cmd: DeleteRole) -> Result<()> {
        let DeleteRole { tenant_id, role_id, etag, replacement } = cmd;
        let (ctx, caller, tenant_id, etag) = (&call.ctx, &call.caller, tenant_id.as_str(), etag.as_str());
        self.authorize(caller, tenant_id, Right::ROLES_DELETE, Target::Tenant).await?;
        let handed: Vec<_> = std::iter::once(role_id).chain(replacement).collect();
        self.roles_within_own_rights(caller, tenant_id, &handed, "delete or hand out a role").await?;
        self.db
            .write(ctx, async |tx| {
                let row = self.locked_custom_role(tx, tenant_id, role_id, etag).await?;
                let holders = roles::holders(&**tx, role_id).await?;
                let mut record = AuditRecord::new(Some(tenant_id), "role.deleted", "role", role_id);
                match replacement {
                    _ if holders.is_empty() => {}
                    None => {
                        return Err(Error::precondition(
                            Reason::RoleInUse,
                            "ROLE_ASSIGNED",
                            format!("roles/{role_id}"),
                            format!(
                                "the role is assigned to {} user(s): name a replacement_role_id to move them to another role",
                                holders.len()
                            ),
                        ));
                    }
                    Some(r) if r == role_id => {
                        return Err(Error::invalid_field("replacement_role_id", "must be another role"));
                    }
                    Some(r) => {
                        if roles::find(&**tx, tenant_id, r).await?.is_none() {
                            return Err(Error::invalid_field("replacement_role_id", "role does not exist in this tenant"));
                        }
                        for u in &holders {
                            roles::assign(tx, tenant_id, *u, r).await?;
                            roles::unassign(tx, tenant_id, *u, role_id).await?;
                        }
                        record = record
                            .with_detail("replacement_role_id", r.to_string())
                            .with_detail("reassigned_user_ids", holders.iter().map(|u| u.to_string()).collect::<Vec<_>>());
                    }
                }
                roles::delete(tx, role_id).await?;
                tx.policy_changed(tenant_id, None);
                let catalog = roles::catalog(&**tx, tenant_id).await?;
                let before = roles::to_domain(row, &catalog, holders.len() as u64)?;
                tx.audit(record.with_changes(Some(&before), None, ROLE_DIFF_IGNORE));
                Ok(())
            })
            .await
    }

    /// A user's effective rights: roles.view over the user (anyone sees their own).
    pub async fn get_effective_permissions(&self, call: &Call, cmd: UserRef) -> Result<super::access::Effective> {
        self.authorize(&call.caller, &cmd.tenant_id, Right::ROLES_VIEW, Target::User(cmd.user_id)).await?;
        self.effective_permissions(&cmd.tenant_id, cmd.user_id).await
    }

    /// Delegated (see `may_assign`).
    pub async fn assign_role(&self, call: &Call, cmd: Assignment) -> Result<User> {
        self.may_assign(call, &cmd, "assign a role").await?;
        let (tenant_id, user_id, role_id) = (cmd.tenant_id.as_str(), cmd.user_id, cmd.role_id);
        self.db
            .write(&call.ctx, async |tx| {
                let user = self.locked_user(tx, tenant_id, user_id).await?;
                let state = users::state(&user)?;
                if matches!(state, UserState::Deleted | UserState::Purged) {
                    return Err(Error::precondition(
                        Reason::InvalidUserState,
                        "USER_STATE",
                        format!("users/{user_id}"),
                        format!(
                            "the user is {}; roles can be given to INVITED, ACTIVE or DEACTIVATED users",
                            state.as_str()
                        ),
                    ));
                }
                let role = self.role_row(&**tx, tenant_id, role_id).await?;
                if roles::assign(tx, tenant_id, user_id, role_id).await? {
                    tx.policy_changed(tenant_id, Some(user_id));
                    tx.audit(assignment_record("role.assigned", tenant_id, user_id, role_id, role.name));
                    if role_id == roles::builtin_role_id(tenant_id, Template::Administrator) {
                        self.notify_new_administrator(tx, tenant_id, role_id, &user).await?;
                    }
                }
                self.to_user_in(&**tx, user).await
            })
            .await
    }

    /// As [`Iam::assign_role`].
    pub async fn unassign_role(&self, call: &Call, cmd: Assignment) -> Result<User> {
        self.may_assign(call, &cmd, "take a role away").await?;
        let (tenant_id, user_id, role_id) = (cmd.tenant_id.as_str(), cmd.user_id, cmd.role_id);
        self.db
            .write(&call.ctx, async |tx| {
                let user = self.locked_user(tx, tenant_id, user_id).await?;
                let role = self.role_row(&**tx, tenant_id, role_id).await?;
                if role_id == roles::builtin_role_id(tenant_id, Template::Administrator) {
                    self.ensure_not_last_admin(tx, tenant_id, &user).await?;
                }
                if !roles::unassign(tx, tenant_id, user_id, role_id).await? {
                    return Err(Error::not_found(
                        Reason::RoleNotAssigned,
                        format!("user {user_id} does not hold role {:?}", role.name),
                    ));
                }
                tx.policy_changed(tenant_id, Some(user_id));
                tx.audit(assignment_record("role.unassigned", tenant_id, user_id, role_id, role.name));
                self.to_user_in(&**tx, user).await
            })
            .await
    }

    /// Giving and taking away a role, delegated: roles.assign over the user (their department, or
    /// oneself with OWN scope), a user whose rights are within one's own, and a role within one's
    /// own (`what` names the act in the refusal).
    async fn may_assign(&self, call: &Call, cmd: &Assignment, what: &str) -> Result<()> {
        let (caller, tenant_id) = (&call.caller, cmd.tenant_id.as_str());
        self.authorize(caller, tenant_id, Right::ROLES_ASSIGN, Target::User(cmd.user_id)).await?;
        self.roles_within_own_rights(caller, tenant_id, &[cmd.role_id], what).await
    }
}

/// The audit event of a role given (`role.assigned`) or taken away (`role.unassigned`).
fn assignment_record(action: &str, tenant_id: &str, user_id: Uuid, role_id: Uuid, role_name: String) -> AuditRecord {
    AuditRecord::new(Some(tenant_id), action, "user", user_id)
        .with_detail("role_id", role_id.to_string())
        .with_detail("role_name", role_name)
}

/// Checks what can be checked without the catalog: no scope-less or duplicate entries.
pub fn check_permission_shape(v: &mut Violations, field: &str, permissions: &[Permission]) {
    let mut seen = HashSet::new();
    for (i, p) in permissions.iter().enumerate() {
        if p.module.is_empty() {
            v.add(format!("{field}[{i}].module"), "is required");
        }
        if p.action.is_empty() {
            v.add(format!("{field}[{i}].action"), "is required");
        }
        if !seen.insert((p.module.as_str(), p.action.as_str())) {
            v.add(format!("{field}[{i}]"), format!("{}.{} is listed twice", p.module, p.action));
        }
    }
}

/// Checks a module name and its actions (custom modules may define their own action names).
pub fn check_module(v: &mut Violations, name: Option<&str>, actions: Option<&[String]>) {
    let word = |s: &str, max: usize| {
        (1..=max).contains(&s.len())
            && s.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
            && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    };
    if let Some(name) = name
        && !word(name, 63)
    {
        v.add("module.name", "must match [a-z][a-z0-9_]{0,62}");
    }
    if let Some(actions) = actions {
        if actions.is_empty() || actions.len() > 32 {
            v.add("module.actions", "must list 1 to 32 actions");
        }
        let mut seen = HashSet::new();
        for (i, a) in actions.iter().enumerate() {
            if !word(a, 32) {
                v.add(
                    format!("module.actions[{i}]"),
                    format!("must match [a-z][a-z0-9_]{{0,31}} (for example {})", ACTIONS.join(", ")),
                );
            } else if !seen.insert(a) {
                v.add(format!("module.actions[{i}]"), format!("{a:?} is listed twice"));
            }
        }
    }
}
