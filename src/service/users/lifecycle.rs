//! The user lifecycle: deactivate, reactivate, delete, restore and purge (one transaction each, with the ownership transfer a departure may carry).

use super::*;

impl Iam {
    /// Applies a lifecycle transition under the tenant lock and records it. `change` may do more
    /// in the same transaction and return what it made (a transfer job).
    pub(super) async fn transition<X: serde::Serialize + serde::de::DeserializeOwned>(
        &self,
        ctx: &RequestContext,
        tenant_id: &str,
        user_id: Uuid,
        etag: &str,
        action: &str,
        reason: Option<String>,
        change: impl AsyncFnOnce(&Tx, &Tenant, &mut Row, UserState) -> Result<X>,
    ) -> Result<(User, X)> {
        self.db
            .write(ctx, async |tx| {
                let tenant = tenants::lock(tx, tenant_id).await?;
                let row = self.user_row(&**tx, tenant_id, user_id).await?;
                check_etag(etag, row.version, "user")?;
                let before = self.to_user_in(&**tx, row.clone()).await?;
                let mut new = row.clone();
                let made = change(tx, &tenant, &mut new, before.state).await?;
                let row = users::update(tx, new, row.version).await?;
                let after = self.to_user_in(&**tx, row).await?;
                tx.policy_changed(tenant_id, Some(user_id));
                let mut record = AuditRecord::new(Some(tenant_id), action, "user", user_id).with_changes(
                    Some(&before),
                    Some(&after),
                    USER_DIFF_IGNORE,
                );
                if let Some(reason) = reason.filter(|r| !r.is_empty()) {
                    record = record.with_detail("reason", reason);
                }
                tx.audit(record);
                Ok((after, made))
            })
            .await
    }

    /// Needs users.edit over the user.
    pub async fn deactivate_user(&self, call: &Call, cmd: ChangeUserState) -> Result<(User, Option<Transfer>)> {
        let ChangeUserState { tenant_id, user_id, etag, reason, transfer_to } = cmd;
        let (ctx, tenant_id, etag) = (&call.ctx, tenant_id.as_str(), etag.as_str());
        self.authorize(&call.caller, tenant_id, Right::USERS_EDIT, Target::User(user_id)).await?;
        let result = self
            .transition(ctx, tenant_id, user_id, etag, "user.deactivated", Some(reason), async |tx, _, row, state| {
                if !matches!(state, UserState::Active | UserState::Invited) {
                    return Err(state_error(user_id, state, "ACTIVE or INVITED"));
                }
                self.ensure_not_last_admin(tx, tenant_id, row).await?;
                tokens::revoke(tx, user_id, None).await?;
                sessions::end_all_of_user(tx, user_id, "user_deactivated").await?;
                row.state = UserState::Deactivated.as_str().into();
                row.deactivate_time = Some(now());
                self.transfer_everything(tx, ctx, tenant_id, user_id, transfer_to).await
            })
            .await?;
        if result.1.is_some() {
            self.transfer_wake.notify_one();
        }
        Ok(result)
    }

    /// With a target: a transfer of everything the user owns, created in `tx`.
    pub(super) async fn transfer_everything(
        &self,
        tx: &Tx,
        ctx: &RequestContext,
        tenant_id: &str,
        user_id: Uuid,
        transfer_to: Option<Uuid>,
    ) -> Result<Option<Transfer>> {
        let Some(to) = transfer_to else { return Ok(None) };
        let rules = [TransferRule { module: None, target: RuleTarget::User(to) }];
        Ok(Some(self.create_transfer(tx, ctx, tenant_id, user_id, &rules).await?))
    }

    /// Needs users.edit over the user.
    pub async fn reactivate_user(&self, call: &Call, cmd: ChangeUserState) -> Result<User> {
        let ChangeUserState { tenant_id, user_id, etag, reason, .. } = cmd;
        let (ctx, tenant_id, etag) = (&call.ctx, tenant_id.as_str(), etag.as_str());
        self.authorize(&call.caller, tenant_id, Right::USERS_EDIT, Target::User(user_id)).await?;
        self.transition(
            ctx,
            tenant_id,
            user_id,
            etag,
            "user.reactivated",
            Some(reason),
            async |_, tenant, row, state| {
                if state != UserState::Deactivated {
                    return Err(state_error(user_id, state, "DEACTIVATED"));
                }
                seat_check(tenant)?;
                row.state = UserState::Active.as_str().into();
                row.deactivate_time = None;
                Ok(())
            },
        )
        .await
        .map(|(u, ())| u)
    }

    /// Needs users.delete over the user.
    pub async fn delete_user(&self, call: &Call, cmd: ChangeUserState) -> Result<(User, Option<Transfer>)> {
        let ChangeUserState { tenant_id, user_id, etag, reason, transfer_to } = cmd;
        let (ctx, tenant_id, etag) = (&call.ctx, tenant_id.as_str(), etag.as_str());
        self.authorize(&call.caller, tenant_id, Right::USERS_DELETE, Target::User(user_id)).await?;
        let result = self
            .transition(ctx, tenant_id, user_id, etag, "user.deleted", Some(reason), async |tx, tenant, row, state| {
                if !matches!(state, UserState::Active | UserState::Invited | UserState::Deactivated) {
                    return Err(state_error(user_id, state, "INVITED, ACTIVE or DEACTIVATED"));
                }
                self.ensure_not_last_admin(tx, tenant_id, row).await?;
                if transfer_to.is_none() {
                    self.ensure_owns_nothing(
                        tx,
                        tenant_id,
                        user_id,
                        "transfer them first (PlanTransfer/StartTransfer) or name transfer_to_user_id",
                    )
                    .await?;
                }
                tokens::revoke(tx, user_id, None).await?;
                sessions::end_all_of_user(tx, user_id, "user_deleted").await?;
                let t = now();
                row.state = UserState::Deleted.as_str().into();
                row.delete_time = Some(t);
                row.purge_after = Some(t + chrono::Duration::seconds(tenant.settings.restore_window_secs as i64));
                self.transfer_everything(tx, ctx, tenant_id, user_id, transfer_to).await
            })
            .await?;
        if result.1.is_some() {
            self.transfer_wake.notify_one();
        }
        Ok(result)
    }

    /// Needs users.delete over the user.
    pub async fn undelete_user(&self, call: &Call, cmd: ChangeUserState) -> Result<User> {
        let ChangeUserState { tenant_id, user_id, etag, .. } = cmd;
        let (ctx, tenant_id, etag) = (&call.ctx, tenant_id.as_str(), etag.as_str());
        self.authorize(&call.caller, tenant_id, Right::USERS_DELETE, Target::User(user_id)).await?;
        self.transition(ctx, tenant_id, user_id, etag, "user.undeleted", None, async |_, _, row, state| {
            if state != UserState::Deleted {
                return Err(state_error(user_id, state, "DELETED"));
            }
            if row.purge_after.is_some_and(|p| p <= now()) {
                return Err(Error::precondition(
                    Reason::RestoreWindowPassed,
                    "RESTORE_WINDOW",
                    format!("users/{user_id}"),
                    "the restore window of this deleted user has passed; it can no longer be restored",
                ));
            }
            row.state = UserState::Deactivated.as_str().into();
            row.deactivate_time = Some(now());
            row.delete_time = None;
            row.purge_after = None;
            Ok(())
        })
        .await
        .map(|(u, ())| u)
    }

    /// Needs users.delete over the user.
    pub async fn purge_user(&self, call: &Call, cmd: ChangeUserState) -> Result<User> {
        let ChangeUserState { tenant_id, user_id, etag, .. } = cmd;
        let (ctx, tenant_id, etag) = (&call.ctx, tenant_id.as_str(), etag.as_str());
        self.authorize(&call.caller, tenant_id, Right::USERS_DELETE, Target::User(user_id)).await?;
        let user = self
            .db
            .write(ctx, async |tx| {
                let row = self.locked_user(tx, tenant_id, user_id).await?;
                check_etag(etag, row.version, "user")?;
                let state = users::state(&row)?;
                if state != UserState::Deleted {
                    return Err(state_error(user_id, state, "DELETED"));
                }
                self.ensure_owns_nothing(
                    tx,
                    tenant_id,
                    user_id,
                    "a user is purged only when nothing is left to transfer",
                )
                .await?;
                self.purge_row(tx, row).await
            })
            .await?;
        // Before the caller hears of the purge, no stream of this replica serves the erased data
        // from memory (other replicas erase it when their hub reads the purge's event).
        self.audit.redact_user(tenant_id, &user_id.to_string());
        Ok(user)
    }

    /// Erases the personal data of a DELETED user. The audit event names the erased fields but
    /// carries none of their values.
    pub(super) async fn purge_row(&self, tx: &Tx, row: Row) -> Result<User> {
        // The trail keeps what happened, not who it was: personal data in the user's events (and
        // in failed logins that named the e-mail before e-mails were hashed) is erased too.
        let mut typed = Vec::new();
        if let Some(email) = row.email_key.as_deref().filter(|e| !e.is_empty()) {
            typed.push(email.to_owned());
            typed.extend(
                self.auth.secrets.pseudonyms(&crate::domain::audit::login_email_purpose(&row.tenant_id), email),
            );
        }
        let redacted = crate::store::audit::redact_target(
            tx,
            &row.tenant_id,
            "user",
            &row.user_id.to_string(),
            &typed,
            crate::domain::audit::PERSONAL_FIELDS,
        )
        .await?;
        tokens::revoke(tx, row.user_id, None).await?;
        sessions::end_all_of_user(tx, row.user_id, "user_purged").await?;
        sessions::forget_user(tx, row.user_id).await?;
        // The provider's subject names the person too.
        crate::store::sso::forget_links_of_user(tx, row.user_id).await?;
        roles::unassign_all(tx, &row.tenant_id, row.user_id).await?;
        tx.policy_changed(&row.tenant_id, Some(row.user_id));
        let version = row.version;
        let mut new = row.clone();
        new.email = None;
        new.email_key = None;
        new.given_name = String::new();
        new.family_name = String::new();
        new.display_name = String::new();
        new.phone = None;
        new.position = String::new();
        new.employee_number = None;
        new.department_id = None;
        new.hire_date = None;
        new.attributes = "{}".into();
        new.username = None;
        new.username_key = None;
        new.external_id = None;
        new.password_hash = None;
        new.mfa_enrolled = false;
        new.must_change_password = false;
        new.state = UserState::Purged.as_str().into();
        new.purge_after = None;
        new.purge_time = Some(now());
        let row = users::update(tx, new, version).await?;
        // The outbox's copies of the address and name go too (undelivered messages fail).
        crate::store::outbox::erase_user(tx, row.user_id).await?;
        let user = self.to_user_in(&**tx, row).await?;
        let erased: Vec<&str> = crate::domain::user::PROFILE_FIELDS.iter().copied().chain(["credentials"]).collect();
        tx.audit(
            AuditRecord::new(Some(&user.tenant_id), "user.purged", "user", user.user_id)
                .with_detail("erased_fields", erased)
                .with_detail("redacted_events", redacted),
        );
        Ok(user)
    }

    /// Purges DELETED users whose restore window has passed, each in its own transaction; returns
    /// how many. Run periodically by the purge sweeper.
    pub async fn purge_expired(&self, at: DateTime<Utc>, batch: u64) -> Result<PurgeReport> {
        let due = users::purge_due(self.db.conn(), at, batch).await?;
        let ctx = RequestContext::system("purge-sweeper");
        let mut report = PurgeReport::default();
        for (user_id, tenant_id) in due {
            let purged = self
                .db
                .write(&ctx, async |tx| {
                    tenants::lock(tx, &tenant_id).await?;
                    let row = users::get(&**tx, &tenant_id, user_id).await?;
                    // Re-check under the lock: the user may have been restored meanwhile.
                    let due = users::state(&row)? == UserState::Deleted && row.purge_after.is_some_and(|p| p <= at);
                    // A user who still owns records (a transfer still running or failed) waits.
                    let owns = !ownership::counts(&**tx, &tenant_id, user_id).await?.is_empty();
                    if due && !owns { self.purge_row(tx, row).await.map(|_| true) } else { Ok(false) }
                })
                .await?;
            if purged {
                self.audit.redact_user(&tenant_id, &user_id.to_string());
            }
            report.purged += usize::from(purged);
        }
        Ok(report)
    }
}
