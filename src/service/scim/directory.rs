//! What the SCIM edge reads besides single users: lookups by the identities an IdP knows
//! (`userName`, `externalId`), every user of a tenant (for filters the store cannot answer), the
//! department and role names SCIM speaks in, and a role's holders.

use std::sync::Arc;

use uuid::Uuid;

use crate::{
    domain::{
        Error, Result,
        access::{Policy, Right},
        audit::AuditRecord,
        department::NewDepartment,
        role::Role,
        user::{User, UserState},
    },
    service::{Call, Iam, Target, users::CreateDepartment, users::ListUsers},
    store::{roles, tenants, users},
};

/// Which identity a lookup is by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdentityKind {
    UserName,
    ExternalId,
}

/// The names of a tenant's departments and roles: the access cache's compiled policy (always
/// current: every committed change to roles, departments or settings replaces it), plus the
/// departments this request created.
pub struct Directory {
    policy: Arc<Policy>,
    created: Vec<(Uuid, String)>,
    /// Whether an unknown department name creates the department (tenant setting).
    create_departments: bool,
}

impl Directory {
    pub fn department_name(&self, id: Uuid) -> Option<String> {
        self.policy
            .department_names
            .get(&id)
            .cloned()
            .or_else(|| self.created.iter().find(|(d, _)| *d == id).map(|(_, n)| n.clone()))
    }

    pub fn role_name(&self, id: Uuid) -> String {
        self.policy.roles.get(&id).map(|r| r.name.clone()).unwrap_or_default()
    }

    fn departments(&self) -> impl Iterator<Item = (Uuid, &str)> {
        self.policy
            .department_names
            .iter()
            .map(|(d, n)| (*d, n.as_str()))
            .chain(self.created.iter().map(|(d, n)| (*d, n.as_str())))
    }
}

/// The longest department name (as UserAdmin.CreateDepartment takes it).
const DEPARTMENT_NAME_MAX: usize = 100;

/// Users read per page when a filter needs all of them.
const PAGE: u64 = 1000;

impl Iam {
    pub async fn scim_directory(&self, call: &Call, tenant_id: &str) -> Result<Directory> {
        self.authorize(&call.caller, tenant_id, Right::USERS_VIEW, Target::Any).await?;
        let (policy, tenant) = self.cached_policy(tenant_id).await?;
        let create_departments = match tenant {
            Some(t) => t.settings.scim_create_departments,
            None => tenants::get(self.db.conn(), tenant_id).await?.settings.scim_create_departments,
        };
        Ok(Directory { policy, created: Vec::new(), create_departments })
    }

    /// The user an IdP identity names (deleted and purged users are not found).
    pub async fn scim_find_user(
        &self,
        call: &Call,
        tenant_id: &str,
        kind: IdentityKind,
        value: &str,
    ) -> Result<Option<User>> {
        self.authorize(&call.caller, tenant_id, Right::USERS_VIEW, Target::Any).await?;
        let row = match kind {
            IdentityKind::UserName => users::find_by_username(self.db.conn(), tenant_id, value).await?,
            IdentityKind::ExternalId => users::find_by_external_id(self.db.conn(), tenant_id, value).await?,
        };
        let Some(row) = row else { return Ok(None) };
        let user = self.to_user_in(self.db.conn(), row).await?;
        Ok((!matches!(user.state, UserState::Deleted | UserState::Purged)).then_some(user))
    }

    /// Every INVITED, ACTIVE or DEACTIVATED user of the tenant, page by page.
    pub async fn scim_all_users(&self, call: &Call, tenant_id: &str) -> Result<Vec<User>> {
        let mut out = Vec::new();
        let mut after = None;
        loop {
            let page = self
                .list_users(
                    call,
                    ListUsers {
                        tenant_id: tenant_id.to_owned(),
                        states: vec![UserState::Invited, UserState::Active, UserState::Deactivated],
                        department: None,
                        query: None,
                        activity: Default::default(),
                        after,
                        limit: PAGE,
                        filters: String::new(),
                    },
                )
                .await?;
            after = page.items.last().map(|u| u.user_id);
            out.extend(page.items);
            if !page.more {
                return Ok(out);
            }
        }
    }

    /// The department a SCIM `department` names: by name (case-insensitive); an unknown name
    /// creates a top-level department when the tenant allows it, else INVALID_ARGUMENT.
    pub async fn scim_department(&self, call: &Call, tenant_id: &str, dir: &mut Directory, name: &str) -> Result<Uuid> {
        let name = crate::domain::validate::required_text(name, DEPARTMENT_NAME_MAX)
            .map_err(|d| Error::invalid_field("department", d))?;
        let name = name.as_str();
        let wanted = name.to_lowercase();
        let mut found: Vec<Uuid> =
            dir.departments().filter(|(_, n)| n.to_lowercase() == wanted).map(|(d, _)| d).collect();
        found.dedup();
        match found.as_slice() {
            [one] => return Ok(*one),
            [] => {}
            _ => {
                return Err(Error::invalid_field(
                    "department",
                    format!("several departments are named {name:?}: rename one so the name says which"),
                ));
            }
        }
        if !dir.create_departments {
            return Err(Error::invalid_field(
                "department",
                format!(
                    "no department is named {name:?} (create it, or let SCIM create departments: tenant setting scim_create_departments)"
                ),
            ));
        }
        let d = self
            .create_department(
                call,
                CreateDepartment {
                    tenant_id: tenant_id.to_owned(),
                    department: NewDepartment { name: name.to_owned(), parent_department_id: None, head_user_id: None },
                },
            )
            .await?;
        dir.created.push((d.department_id, d.name));
        Ok(d.department_id)
    }

    /// Every role of the tenant (as SCIM groups), with its `externalId`.
    pub async fn scim_roles(&self, call: &Call, tenant_id: &str) -> Result<Vec<(Role, Option<String>)>> {
        self.authorize(&call.caller, tenant_id, Right::ROLES_VIEW, Target::Any).await?;
        let catalog = roles::catalog(self.db.conn(), tenant_id).await?;
        let counts = roles::user_counts(self.db.conn(), tenant_id).await?;
        roles::all(self.db.conn(), tenant_id)
            .await?
            .into_iter()
            .map(|r| {
                let n = counts.get(&r.role_id).copied().unwrap_or(0);
                let external_id = r.external_id.clone();
                Ok((roles::to_domain(r, &catalog, n)?, external_id))
            })
            .collect()
    }

    /// One role as a SCIM group, with its `externalId`.
    pub async fn scim_group(&self, call: &Call, tenant_id: &str, role_id: Uuid) -> Result<(Role, Option<String>)> {
        self.authorize(&call.caller, tenant_id, Right::ROLES_VIEW, Target::Any).await?;
        let row = roles::get(self.db.conn(), tenant_id, role_id).await?;
        let catalog = roles::catalog(self.db.conn(), tenant_id).await?;
        let n = roles::user_count(self.db.conn(), role_id).await?;
        let external_id = row.external_id.clone();
        Ok((roles::to_domain(row, &catalog, n)?, external_id))
    }

    /// Sets a group's `externalId` (roles.edit), audited as `role.updated`.
    pub async fn scim_set_group_external_id(
        &self,
        call: &Call,
        tenant_id: &str,
        role_id: Uuid,
        external_id: Option<String>,
    ) -> Result<()> {
        self.authorize(&call.caller, tenant_id, Right::ROLES_EDIT, Target::Tenant).await?;
        self.db
            .write(&call.ctx, async |tx| {
                let row = roles::get(&**tx, tenant_id, role_id).await?;
                if row.external_id == external_id {
                    return Ok(());
                }
                roles::set_external_id(tx, role_id, external_id.clone()).await?;
                let mut changes = serde_json::Map::new();
                changes
                    .insert("external_id".into(), serde_json::json!({"before": row.external_id, "after": external_id}));
                let mut record = AuditRecord::new(Some(tenant_id), "role.updated", "role", role_id);
                record.changes = changes;
                tx.audit(record);
                Ok(())
            })
            .await
    }

    /// The holders of a role, with their display names.
    pub async fn scim_group_members(&self, call: &Call, tenant_id: &str, role_id: Uuid) -> Result<Vec<(Uuid, String)>> {
        self.authorize(&call.caller, tenant_id, Right::ROLES_VIEW, Target::Any).await?;
        roles::get(self.db.conn(), tenant_id, role_id).await?;
        let holders = roles::holders(self.db.conn(), role_id).await?;
        users::display_names(self.db.conn(), tenant_id, &holders).await
    }
}
