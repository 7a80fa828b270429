//! Users created and re-roled by single sign-on (just-in-time provisioning and group mappings),
//! inside the sign-in's transaction: seats, audit and notifications as for any creation or
//! assignment.

use uuid::Uuid;

use super::{Iam, Row, USER_DIFF_IGNORE, seat_check};
use crate::{
    domain::{Result, access::Template, audit::AuditRecord, now, user::UserState},
    store::{Tx, roles, tenants, users},
};

/// The profile a provider's claims give a new user.
pub struct ProvisionedProfile {
    pub email: String,
    pub email_key: String,
    pub given_name: String,
    pub family_name: String,
    pub phone: Option<String>,
    pub position: String,
    pub department_id: Option<Uuid>,
}

impl Iam {
    /// Creates an ACTIVE user without a password (signs in through the provider only); refused
    /// like CreateUser when the tenant has no free seat.
    pub(crate) async fn create_provisioned_user(
        &self,
        tx: &Tx,
        tenant_id: &str,
        connection: &str,
        p: ProvisionedProfile,
    ) -> Result<Row> {
        let tenant = tenants::lock_with_seats(tx, tenant_id).await?;
        seat_check(&tenant)?;
        let t = now();
        let display_name = match crate::domain::user::derived_display_name(&p.given_name, &p.family_name) {
            n if n.is_empty() => p.email.clone(),
            n => n,
        };
        let row = Row {
            user_id: Uuid::now_v7(),
            tenant_id: tenant_id.to_owned(),
            email: Some(p.email),
            email_key: Some(p.email_key),
            email_skeleton: None,
            given_name: p.given_name,
            family_name: p.family_name,
            display_name,
            phone: p.phone,
            position: p.position,
            employee_number: None,
            department_id: p.department_id,
            hire_date: None,
            state: UserState::Active.as_str().to_owned(),
            locale: String::new(),
            mfa_enrolled: false,
            must_change_password: false,
            attributes: users::attributes_json(&Default::default()),
            username: None,
            username_key: None,
            external_id: None,
            password_hash: None,
            last_login_time: None,
            deactivate_time: None,
            delete_time: None,
            purge_after: None,
            purge_time: None,
            version: 1,
            create_time: t,
            update_time: t,
        };
        let row = users::insert(tx, row).await?;
        tx.policy_changed(tenant_id, Some(row.user_id));
        let user = self.to_user_in(&**tx, row.clone()).await?;
        tx.audit(
            AuditRecord::new(Some(tenant_id), "user.created", "user", user.user_id)
                .with_changes(None, Some(&user), USER_DIFF_IGNORE)
                .with_detail("credential", "sso")
                .with_detail("connection", connection),
        );
        Ok(row)
    }

    /// Makes the user's mapped roles exactly `wanted` (roles in `mapped` but not wanted are taken
    /// away, except the administrator role of the tenant's last administrator); roles outside
    /// `mapped` are left alone. Returns whether anything changed.
    pub(crate) async fn sync_mapped_roles(
        &self,
        tx: &Tx,
        tenant_id: &str,
        user: &Row,
        mapped: &[Uuid],
        wanted: &[Uuid],
    ) -> Result<bool> {
        let held = roles::of_user(&**tx, user.user_id).await?;
        let admin = roles::builtin_role_id(tenant_id, Template::Administrator);
        let mut changed = false;
        for role_id in wanted.iter().filter(|r| !held.contains(r)) {
            let Some(role) = roles::find(&**tx, tenant_id, *role_id).await? else { continue };
            if roles::assign(tx, tenant_id, user.user_id, *role_id).await? {
                changed = true;
                tx.audit(assignment("role.assigned", tenant_id, user.user_id, *role_id, role.name));
                if *role_id == admin {
                    self.notify_new_administrator(tx, tenant_id, *role_id, user).await?;
                }
            }
        }
        for role_id in held.iter().filter(|r| mapped.contains(r) && !wanted.contains(r)) {
            if *role_id == admin && self.ensure_not_last_admin(tx, tenant_id, user).await.is_err() {
                continue;
            }
            let name = roles::find(&**tx, tenant_id, *role_id).await?.map(|r| r.name).unwrap_or_default();
            if roles::unassign(tx, tenant_id, user.user_id, *role_id).await? {
                changed = true;
                tx.audit(assignment("role.unassigned", tenant_id, user.user_id, *role_id, name));
            }
        }
        if changed {
            tx.policy_changed(tenant_id, Some(user.user_id));
        }
        Ok(changed)
    }
}

fn assignment(action: &str, tenant_id: &str, user_id: Uuid, role_id: Uuid, role_name: String) -> AuditRecord {
    AuditRecord::new(Some(tenant_id), action, "user", user_id)
        .with_detail("role_id", role_id.to_string())
        .with_detail("role_name", role_name)
        .with_detail("source", "sso")
}
