use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use uuid::Uuid;

use super::{Call, Iam, Page, Target};
use crate::{
    domain::{
        Error, Kind, Reason, Result,
        access::Right,
        audit::{AuditRecord, RequestContext},
        check_etag,
        error::QuotaViolation,
        notification::NotificationKind,
        now,
        ownership::{RuleTarget, Transfer, TransferRule},
        tenant::Tenant,
        user::{Credential, IssuedToken, User, UserState, UserWithToken, derived_display_name},
        validate,
    },
    store::{
        Tx, departments, ownership, roles, sessions, tenants,
        tokens::{self, TokenKind},
        users::{self, Row, UserFilter},
    },
};

mod commands;
mod lifecycle;
mod provisioned;
pub use provisioned::ProvisionedProfile;

pub use commands::*;

/// Fields of a user that are bookkeeping, not content, in audit diffs.
const USER_DIFF_IGNORE: &[&str] = &["version", "update_time", "create_time", "role_ids", "user_id", "tenant_id"];

/// What the purge sweeper did in one pass.
#[derive(Debug, Default, Clone, Copy)]
pub struct PurgeReport {
    pub purged: usize,
}

fn state_error(user_id: Uuid, state: UserState, wanted: &str) -> Error {
    Error::precondition(
        Reason::InvalidUserState,
        "USER_STATE",
        format!("users/{user_id}"),
        format!("the user is {}; this operation needs a user that is {wanted}", state.as_str()),
    )
}

fn seat_check(tenant: &Tenant) -> Result<()> {
    if tenant.seat_limit > 0 && tenant.seats_used >= tenant.seat_limit {
        let mut e = Error::new(
            Kind::ResourceExhausted,
            Reason::SeatLimitReached,
            format!(
                "tenant {:?} has no free seat ({} of {} in use): deactivate or delete a user, or raise the seat limit",
                tenant.tenant_id, tenant.seats_used, tenant.seat_limit
            ),
        );
        e.quota_violations.push(QuotaViolation {
            subject: format!("tenants/{}/seats", tenant.tenant_id),
            description: format!("seat limit {} reached", tenant.seat_limit),
        });
        return Err(e);
    }
    Ok(())
}

impl Iam {
    /// Loads a user row of the tenant, telling a missing tenant from a missing user.
    pub(super) async fn user_row(&self, conn: &impl crate::store::Conn, tenant_id: &str, user_id: Uuid) -> Result<Row> {
        match users::find(conn, tenant_id, user_id).await? {
            Some(row) => Ok(row),
            None => {
                self.tenant_settings(tenant_id).await?;
                Err(users::not_found(user_id))
            }
        }
    }

    /// A user to change, with the tenant locked (the lock every writer of a tenant's users and
    /// roles takes first, so concurrent writers serialize instead of deadlocking).
    pub(super) async fn locked_user(&self, tx: &Tx, tenant_id: &str, user_id: Uuid) -> Result<Row> {
        tenants::lock(tx, tenant_id).await?;
        self.user_row(&**tx, tenant_id, user_id).await
    }

    /// The user with its roles.
    pub(crate) async fn to_user_in(&self, conn: &impl crate::store::Conn, row: Row) -> Result<User> {
        let role_ids = roles::of_user(conn, row.user_id).await?;
        users::to_domain(row, role_ids)
    }

    /// Checks references of a profile (department) inside the transaction.
    async fn check_department_ref(
        &self,
        tx: &Tx,
        tenant_id: &str,
        department_id: Option<Uuid>,
        field: &str,
    ) -> Result<()> {
        if let Some(d) = department_id
            && departments::find(&**tx, tenant_id, d).await?.is_none()
        {
            return Err(Error::invalid_field(field, "department does not exist in this tenant"));
        }
        Ok(())
    }

    /// Reads the tenant's password policy and checks a password against it, outside any transaction.
    pub async fn check_password_policy(
        &self,
        tenant_id: &str,
        field: &str,
        password: &SecretString,
        email_key: Option<&str>,
    ) -> Result<()> {
        let tenant = self.tenant_settings(tenant_id).await?;
        validate::password(password.expose_secret(), tenant.settings.password_min_length as usize, email_key)
            .map_err(|d| Error::invalid_field(field, d))
    }

    /// Needs users.create where the user is placed, and roles.assign there (within the caller's
    /// own rights) for roles given with it.
    pub async fn create_user(&self, call: &Call, cmd: CreateUser) -> Result<UserWithToken> {
        let CreateUser { tenant_id, profile, credential, role_ids, mut invalid } = cmd;
        let (ctx, caller, tenant_id) = (&call.ctx, &call.caller, tenant_id.as_str());
        // Report a password that breaks the tenant's policy together with the other bad fields.
        if let (false, Some(Credential::Password { password, .. })) = (invalid.is_empty(), &credential)
            && !tenant_id.is_empty()
        {
            let email_key = profile.as_ref().map(|p| p.email_key.as_str());
            if let Err(e) = self.check_password_policy(tenant_id, "initial_password", password, email_key).await {
                for f in e.field_violations {
                    invalid.add(f.field, f.description);
                }
            }
        }
        invalid.finish()?;
        let (Some(profile), Some(credential)) = (profile, credential) else {
            return Err(Error::internal(anyhow::anyhow!("a valid CreateUser without profile or credential")));
        };
        let department = Target::Department(profile.department_id);
        self.authorize(caller, tenant_id, Right::USERS_CREATE, department).await?;
        if !role_ids.is_empty() {
            self.authorize(caller, tenant_id, Right::ROLES_ASSIGN, department).await?;
            self.roles_within_own_rights(caller, tenant_id, &role_ids, "assign a role").await?;
        }
        // Hash before the transaction: the writer lock is never held during argon2 work.
        let (password_hash, permanent, invited) = match credential {
            Credential::Password { password, permanent } => {
                self.check_password_policy(tenant_id, "initial_password", &password, Some(&profile.email_key)).await?;
                (Some(self.passwords.hash(password).await?), permanent, false)
            }
            Credential::Invitation => (None, false, true),
        };
        self.db
            .write(ctx, async |tx| {
                let tenant = tenants::lock(tx, tenant_id).await?;
                self.check_department_ref(tx, tenant_id, profile.department_id, "user.department_id").await?;
                seat_check(&tenant)?;
                let t = now();
                let state = if invited { UserState::Invited } else { UserState::Active };
                let row = Row {
                    user_id: Uuid::now_v7(),
                    tenant_id: tenant_id.to_owned(),
                    email: Some(profile.email),
                    email_key: Some(profile.email_key),
                    email_skeleton: None, // set by the store from email_key
                    given_name: profile.given_name,
                    family_name: profile.family_name,
                    display_name: profile.display_name,
                    phone: profile.phone,
                    position: profile.position,
                    employee_number: profile.employee_number,
                    department_id: profile.department_id,
                    hire_date: users::date_text(profile.hire_date),
                    state: state.as_str().to_owned(),
                    locale: profile.locale,
                    mfa_enrolled: false,
                    must_change_password: password_hash.is_some() && !permanent,
                    attributes: users::attributes_json(&profile.attributes),
                    username: profile.username.as_ref().map(|(n, _)| n.clone()),
                    username_key: profile.username.as_ref().map(|(_, k)| k.clone()),
                    external_id: profile.external_id.clone(),
                    password_hash,
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
                for (i, role_id) in role_ids.iter().enumerate() {
                    if roles::find(&**tx, tenant_id, *role_id).await?.is_none() {
                        return Err(Error::invalid_field(
                            format!("role_ids[{i}]"),
                            "role does not exist in this tenant",
                        ));
                    }
                    roles::assign(tx, tenant_id, row.user_id, *role_id).await?;
                    if *role_id == roles::builtin_role_id(tenant_id, crate::domain::access::Template::Administrator) {
                        self.notify_new_administrator(tx, tenant_id, *role_id, &row).await?;
                    }
                }
                tx.policy_changed(tenant_id, Some(row.user_id));
                let token = if invited {
                    let expire = t + chrono::Duration::seconds(tenant.settings.invitation_ttl_secs as i64);
                    Some(tokens::issue(tx, tenant_id, row.user_id, TokenKind::Invitation, expire).await?)
                } else {
                    None
                };
                if let Some(token) = &token {
                    self.queue_notification(tx, &tenant, &row, NotificationKind::Invitation, Some(token), None).await?;
                }
                let user = self.to_user_in(&**tx, row).await?;
                tx.audit(
                    AuditRecord::new(Some(tenant_id), "user.created", "user", user.user_id)
                        .with_changes(None, Some(&user), USER_DIFF_IGNORE)
                        .with_detail("credential", if invited { "invitation" } else { "password" }),
                );
                let token_expire_time = token.as_ref().map(|t| t.expire_time);
                Ok(UserWithToken { user, token: self.token_for_caller(token), token_expire_time })
            })
            .await
    }

    /// A token goes to exactly one place: by message when a channel is configured (it was
    /// queued), else back to the caller, who passes it on.
    fn token_for_caller(&self, token: Option<IssuedToken>) -> Option<IssuedToken> {
        token.filter(|_| !self.outbox.enabled())
    }

    /// Needs users.view over the user (anyone sees themselves).
    pub async fn get_user(&self, call: &Call, cmd: UserRef) -> Result<User> {
        self.authorize(&call.caller, &cmd.tenant_id, Right::USERS_VIEW, Target::User(cmd.user_id)).await?;
        let mut user = User::clone(&*self.user_profile(&cmd.tenant_id, cmd.user_id).await?);
        if user.state == UserState::Invited {
            user.invitation_delivery = self.invitation_delivery(user.user_id).await?;
        }
        Ok(user)
    }

    /// The users the caller may see (users.view: its scope decides which departments).
    pub async fn list_users(&self, call: &Call, cmd: ListUsers) -> Result<Page<User>> {
        let ListUsers { tenant_id, states, department, query, activity, after, limit, .. } = cmd;
        let tenant_id = tenant_id.as_str();
        let visible = self.visible_departments(&call.caller, tenant_id).await?;
        let mut filter = UserFilter {
            states,
            department_ids: None,
            query,
            visible_department_ids: visible,
            last_login_before: activity.last_login_before,
            last_login_after: activity.last_login_after,
            never_logged_in: activity.never_logged_in,
            mfa_enrolled: activity.mfa_enrolled,
            role_id: activity.role_id,
        };
        let conn = self.db.conn();
        self.tenant_settings(tenant_id).await?;
        if let Some(role_id) = filter.role_id {
            roles::get(conn, tenant_id, role_id).await?;
        }
        if let Some((department_id, include_sub)) = department {
            departments::get(conn, tenant_id, department_id).await?;
            filter.department_ids = Some(if include_sub {
                departments::subtree(&departments::parents(conn, tenant_id).await?, department_id)
            } else {
                vec![department_id]
            });
        }
        if let Some(visible) = filter.visible_department_ids.take() {
            filter.department_ids = Some(match filter.department_ids.take() {
                Some(asked) => asked.into_iter().filter(|d| visible.contains(d)).collect(),
                None => visible,
            });
        }
        let rows = users::list(conn, tenant_id, &filter, after, limit + 1).await?;
        let ids: Vec<Uuid> = rows.iter().map(|r| r.user_id).collect();
        let mut role_ids = roles::of_users(conn, &ids).await?;
        let mut users = Vec::with_capacity(rows.len());
        for row in rows {
            let r = role_ids.remove(&row.user_id).unwrap_or_default();
            users.push(users::to_domain(row, r)?);
        }
        Ok(Page::from_rows(users, limit))
    }

    /// Needs users.edit over the user, and over the department it moves to (see `may_move`).
    pub async fn update_user(&self, call: &Call, cmd: UpdateUser) -> Result<User> {
        let UpdateUser { tenant_id, user_id, patch, etag } = cmd;
        let (ctx, tenant_id, etag) = (&call.ctx, tenant_id.as_str(), etag.as_str());
        self.authorize(&call.caller, tenant_id, Right::USERS_EDIT, Target::User(user_id)).await?;
        if let Some(department) = patch.department_id {
            self.may_move(&call.caller, tenant_id, user_id, department).await?;
        }
        self.db
            .write(ctx, async |tx| {
                let row = self.locked_user(tx, tenant_id, user_id).await?;
                check_etag(etag, row.version, "user")?;
                let state = users::state(&row)?;
                if matches!(state, UserState::Deleted | UserState::Purged) {
                    return Err(state_error(user_id, state, "INVITED, ACTIVE or DEACTIVATED"));
                }
                let before = self.to_user_in(&**tx, row.clone()).await?;
                let mut new = row.clone();
                if let Some((email, key)) = patch.email {
                    new.email = Some(email);
                    new.email_key = Some(key);
                }
                if let Some(v) = patch.given_name {
                    new.given_name = v;
                }
                if let Some(v) = patch.family_name {
                    new.family_name = v;
                }
                if let Some(v) = patch.display_name {
                    new.display_name = v;
                }
                if new.display_name.is_empty() {
                    new.display_name = derived_display_name(&new.given_name, &new.family_name);
                }
                if let Some(v) = patch.phone {
                    new.phone = v;
                }
                if let Some(v) = patch.position {
                    new.position = v;
                }
                if let Some(v) = patch.employee_number {
                    new.employee_number = v;
                }
                if let Some(v) = patch.department_id {
                    self.check_department_ref(tx, tenant_id, v, "user.department_id").await?;
                    new.department_id = v;
                }
                if let Some(v) = patch.locale {
                    new.locale = v;
                }
                if let Some(v) = patch.hire_date {
                    new.hire_date = users::date_text(v);
                }
                if let Some(v) = patch.attributes {
                    new.attributes = users::attributes_json(&v);
                }
                if let Some(v) = patch.username {
                    (new.username, new.username_key) = v.map_or((None, None), |(n, k)| (Some(n), Some(k)));
                }
                if let Some(v) = patch.external_id {
                    new.external_id = v;
                }
                let row = users::update(tx, new, row.version).await?;
                let after = self.to_user_in(&**tx, row).await?;
                tx.policy_changed(tenant_id, Some(user_id));
                tx.audit(AuditRecord::new(Some(tenant_id), "user.updated", "user", user_id).with_changes(
                    Some(&before),
                    Some(&after),
                    USER_DIFF_IGNORE,
                ));
                Ok(after)
            })
            .await
    }

    /// Needs users.edit over the user (and the delegation ceiling of `users.edit`).
    pub async fn reset_password(&self, call: &Call, cmd: ResetPassword) -> Result<UserWithToken> {
        let ResetPassword { tenant_id, user_id, temporary: temporary_password } = cmd;
        let (ctx, tenant_id) = (&call.ctx, tenant_id.as_str());
        self.authorize(&call.caller, tenant_id, Right::USERS_EDIT, Target::User(user_id)).await?;
        let hash = match temporary_password {
            Some(password) => {
                let row = self.user_row(self.db.conn(), tenant_id, user_id).await?;
                self.check_password_policy(tenant_id, "temporary_password", &password, row.email_key.as_deref())
                    .await?;
                Some(self.passwords.hash(password).await?)
            }
            None => None,
        };
        self.db
            .write(ctx, async |tx| {
                let tenant = tenants::lock(tx, tenant_id).await?;
                let row = self.user_row(&**tx, tenant_id, user_id).await?;
                let state = users::state(&row)?;
                if state != UserState::Active {
                    return Err(state_error(user_id, state, "ACTIVE"));
                }
                let version = row.version;
                let mut new = row;
                let method = if hash.is_some() { "temporary_password" } else { "reset_token" };
                new.must_change_password = hash.is_some();
                new.password_hash = hash;
                tokens::revoke(tx, user_id, Some(TokenKind::PasswordReset)).await?;
                sessions::end_all_of_user(tx, user_id, "password_reset").await?;
                tx.policy_changed(tenant_id, Some(user_id));
                let token = if new.password_hash.is_none() {
                    let expire = now() + chrono::Duration::seconds(tenant.settings.invitation_ttl_secs as i64);
                    Some(tokens::issue(tx, tenant_id, user_id, TokenKind::PasswordReset, expire).await?)
                } else {
                    None
                };
                let row = users::update(tx, new, version).await?;
                if let Some(token) = &token {
                    self.queue_notification(tx, &tenant, &row, NotificationKind::PasswordReset, Some(token), None)
                        .await?;
                }
                let user = self.to_user_in(&**tx, row).await?;
                tx.audit(
                    AuditRecord::new(Some(tenant_id), "user.password_reset", "user", user_id)
                        .with_detail("method", method),
                );
                let token_expire_time = token.as_ref().map(|t| t.expire_time);
                Ok(UserWithToken { user, token: self.token_for_caller(token), token_expire_time })
            })
            .await
    }

    /// Needs users.edit over the user.
    pub async fn resend_invitation(&self, call: &Call, cmd: UserRef) -> Result<UserWithToken> {
        let UserRef { tenant_id, user_id } = cmd;
        let (ctx, tenant_id) = (&call.ctx, tenant_id.as_str());
        self.authorize(&call.caller, tenant_id, Right::USERS_EDIT, Target::User(user_id)).await?;
        self.db
            .write(ctx, async |tx| {
                let tenant = tenants::lock(tx, tenant_id).await?;
                let row = self.user_row(&**tx, tenant_id, user_id).await?;
                let state = users::state(&row)?;
                if state != UserState::Invited {
                    return Err(Error::precondition(
                        Reason::NotInvited,
                        "USER_STATE",
                        format!("users/{user_id}"),
                        format!("the user is {}, not INVITED: there is no invitation to resend", state.as_str()),
                    ));
                }
                let expire = now() + chrono::Duration::seconds(tenant.settings.invitation_ttl_secs as i64);
                let token = tokens::issue(tx, tenant_id, user_id, TokenKind::Invitation, expire).await?;
                self.queue_notification(tx, &tenant, &row, NotificationKind::InvitationReminder, Some(&token), None)
                    .await?;
                tx.audit(AuditRecord::new(Some(tenant_id), "user.invitation_resent", "user", user_id));
                let user = self.to_user_in(&**tx, row).await?;
                Ok(UserWithToken { user, token: self.token_for_caller(Some(token)), token_expire_time: Some(expire) })
            })
            .await
    }
}
