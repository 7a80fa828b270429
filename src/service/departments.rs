use uuid::Uuid;

use super::{
    Call, Iam, Page, Target,
    users::{CreateDepartment, DepartmentRef, ListDepartments, UpdateDepartment},
};
use crate::{
    domain::{
        Error, Reason, Result,
        access::Right,
        audit::AuditRecord,
        check_etag,
        department::{Department, MAX_DEPTH},
        error::PreconditionViolation,
        now,
        user::UserState,
    },
    store::{Tx, departments, tenants, users},
};

const DEPARTMENT_DIFF_IGNORE: &[&str] = &["version", "update_time", "create_time", "department_id", "tenant_id"];

impl Iam {
    async fn check_parent(&self, tx: &Tx, tenant_id: &str, parent: Option<Uuid>) -> Result<()> {
        if let Some(p) = parent
            && departments::find(&**tx, tenant_id, p).await?.is_none()
        {
            return Err(Error::invalid_field(
                "department.parent_department_id",
                "department does not exist in this tenant",
            ));
        }
        Ok(())
    }

    async fn check_head(&self, tx: &Tx, tenant_id: &str, head: Option<Uuid>) -> Result<()> {
        if let Some(h) = head {
            let ok = match users::find(&**tx, tenant_id, h).await? {
                Some(row) => !matches!(users::state(&row)?, UserState::Deleted | UserState::Purged),
                None => false,
            };
            if !ok {
                return Err(Error::invalid_field("department.head_user_id", "user does not exist in this tenant"));
            }
        }
        Ok(())
    }

    fn cycle_error(message: String) -> Error {
        Error::precondition(Reason::DepartmentCycle, "DEPARTMENT_TREE", "department.parent_department_id", message)
    }

    async fn department_row(
        &self,
        conn: &impl crate::store::Conn,
        tenant_id: &str,
        id: Uuid,
    ) -> Result<departments::Row> {
        match departments::find(conn, tenant_id, id).await? {
            Some(row) => Ok(row),
            None => {
                self.tenant_settings(tenant_id).await?;
                Err(departments::not_found(id))
            }
        }
    }

    /// The department under the tenant lock, its etag checked (every edit and deletion starts so).
    async fn locked_department(&self, tx: &Tx, tenant_id: &str, id: Uuid, etag: &str) -> Result<departments::Row> {
        tenants::lock(tx, tenant_id).await?;
        let row = self.department_row(&**tx, tenant_id, id).await?;
        check_etag(etag, row.version, "department")?;
        Ok(row)
    }

    /// Needs users.edit at TENANT scope.
    pub async fn create_department(&self, call: &Call, cmd: CreateDepartment) -> Result<Department> {
        let CreateDepartment { tenant_id, department: new } = cmd;
        let (ctx, tenant_id) = (&call.ctx, tenant_id.as_str());
        self.authorize(&call.caller, tenant_id, Right::USERS_EDIT, Target::Tenant).await?;
        self.db
            .write(ctx, async |tx| {
                tenants::lock(tx, tenant_id).await?;
                self.check_parent(tx, tenant_id, new.parent_department_id).await?;
                self.check_head(tx, tenant_id, new.head_user_id).await?;
                if let Some(p) = new.parent_department_id {
                    let parents = departments::parents(&**tx, tenant_id).await?;
                    if departments::depth(&parents, p) + 1 > MAX_DEPTH {
                        return Err(Self::cycle_error(format!(
                            "the department tree may be at most {MAX_DEPTH} levels deep"
                        )));
                    }
                }
                let t = now();
                let row = departments::insert(
                    tx,
                    departments::Row {
                        department_id: Uuid::now_v7(),
                        tenant_id: tenant_id.to_owned(),
                        name_key: new.name.to_lowercase(),
                        name: new.name,
                        parent_department_id: new.parent_department_id,
                        head_user_id: new.head_user_id,
                        version: 1,
                        create_time: t,
                        update_time: t,
                    },
                )
                .await?;
                let d = departments::to_domain(row);
                tx.policy_changed(tenant_id, None);
                tx.audit(
                    AuditRecord::new(Some(tenant_id), "department.created", "department", d.department_id)
                        .with_changes(None, Some(&d), DEPARTMENT_DIFF_IGNORE),
                );
                Ok(d)
            })
            .await
    }

    /// Needs users.view at any scope.
    pub async fn get_department(&self, call: &Call, cmd: DepartmentRef) -> Result<Department> {
        self.authorize(&call.caller, &cmd.tenant_id, Right::USERS_VIEW, Target::Any).await?;
        Ok(departments::to_domain(self.department_row(self.db.conn(), &cmd.tenant_id, cmd.department_id).await?))
    }

    /// Needs users.view at any scope.
    pub async fn list_departments(&self, call: &Call, cmd: ListDepartments) -> Result<Page<Department>> {
        let ListDepartments { tenant_id, parent, after, limit, .. } = cmd;
        let tenant_id = tenant_id.as_str();
        self.authorize(&call.caller, tenant_id, Right::USERS_VIEW, Target::Any).await?;
        self.tenant_settings(tenant_id).await?;
        let rows = departments::list(self.db.conn(), tenant_id, parent, after, limit + 1).await?;
        Ok(Page::from_rows(rows.into_iter().map(departments::to_domain).collect(), limit))
    }

    /// Needs users.edit at TENANT scope.
    pub async fn update_department(&self, call: &Call, cmd: UpdateDepartment) -> Result<Department> {
        let UpdateDepartment { tenant_id, department_id: id, patch, etag } = cmd;
        let (ctx, tenant_id, etag) = (&call.ctx, tenant_id.as_str(), etag.as_str());
        self.authorize(&call.caller, tenant_id, Right::USERS_EDIT, Target::Tenant).await?;
        self.db
            .write(ctx, async |tx| {
                let row = self.locked_department(tx, tenant_id, id, etag).await?;
                let before = departments::to_domain(row.clone());
                let mut new = row.clone();
                if let Some(name) = patch.name {
                    new.name_key = name.to_lowercase();
                    new.name = name;
                }
                if let Some(parent) = patch.parent_department_id {
                    self.check_parent(tx, tenant_id, parent).await?;
                    if let Some(p) = parent {
                        let parents = departments::parents(&**tx, tenant_id).await?;
                        if departments::subtree(&parents, id).contains(&p) {
                            return Err(Self::cycle_error(
                                "the new parent lies inside this department's own subtree".to_string(),
                            ));
                        }
                        if departments::depth(&parents, p) + departments::height(&parents, id) > MAX_DEPTH {
                            return Err(Self::cycle_error(format!(
                                "the move would make the department tree deeper than {MAX_DEPTH} levels"
                            )));
                        }
                    }
                    new.parent_department_id = parent;
                }
                if let Some(head) = patch.head_user_id {
                    self.check_head(tx, tenant_id, head).await?;
                    new.head_user_id = head;
                }
                let after = departments::to_domain(departments::update(tx, new, row.version).await?);
                tx.policy_changed(tenant_id, None);
                tx.audit(AuditRecord::new(Some(tenant_id), "department.updated", "department", id).with_changes(
                    Some(&before),
                    Some(&after),
                    DEPARTMENT_DIFF_IGNORE,
                ));
                Ok(after)
            })
            .await
    }

    /// Needs users.edit at TENANT scope.
    pub async fn delete_department(&self, call: &Call, cmd: DepartmentRef) -> Result<()> {
        let DepartmentRef { tenant_id, department_id: id, etag } = cmd;
        let (ctx, tenant_id, etag) = (&call.ctx, tenant_id.as_str(), etag.as_str());
        self.authorize(&call.caller, tenant_id, Right::USERS_EDIT, Target::Tenant).await?;
        self.db
            .write(ctx, async |tx| {
                let row = self.locked_department(tx, tenant_id, id, etag).await?;
                let members = users::count_in_department(&**tx, tenant_id, id).await?;
                let children = departments::count_children(&**tx, tenant_id, id).await?;
                if members > 0 || children > 0 {
                    let mut e = Error::new(
                        crate::domain::Kind::FailedPrecondition,
                        Reason::DepartmentNotEmpty,
                        format!(
                            "the department still has {members} user(s) and {children} sub-department(s): move or delete them first"
                        ),
                    );
                    let subject = format!("departments/{id}");
                    if members > 0 {
                        e.precondition_violations.push(PreconditionViolation {
                            kind: "DEPARTMENT_USERS".into(),
                            subject: subject.clone(),
                            description: format!("{members} user(s) belong to the department"),
                        });
                    }
                    if children > 0 {
                        e.precondition_violations.push(PreconditionViolation {
                            kind: "DEPARTMENT_CHILDREN".into(),
                            subject,
                            description: format!("{children} sub-department(s) are below the department"),
                        });
                    }
                    return Err(e);
                }
                departments::delete(tx, id, row.version).await?;
                tx.policy_changed(tenant_id, None);
                let before = departments::to_domain(row);
                tx.audit(
                    AuditRecord::new(Some(tenant_id), "department.deleted", "department", id)
                        .with_changes(Some(&before), None, DEPARTMENT_DIFF_IGNORE),
                );
                Ok(())
            })
            .await
    }
}
