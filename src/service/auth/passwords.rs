//! Passwords set by users: ChangePassword (the old password is a verified secret: it counts in
//! the lockout), and the single-use invitation and reset tokens.

use secrecy::SecretString;

use super::{
    Tokens, attempt_context,
    commands::{Anonymous, ChangePassword, SetPasswordByToken},
    guard::{Attempt, locked_error, proved_own_secret},
    token_invalid,
};
use crate::{
    domain::{
        Error, Kind, Reason, Result,
        audit::{Actor, ActorKind, AuditRecord, RequestContext},
        lockout::Admission,
        notification::NotificationKind,
        now,
        user::{User, UserState},
    },
    service::{Call, Iam},
    store::{
        sessions,
        tokens::{self, TokenKind},
        users,
    },
};

impl Iam {
    /// `Auth.ChangePassword`: ends every session of the user and opens a fresh one. The old
    /// password is verified like a login's (admitted and counted first); a wrong one is audited,
    /// and the one that locks the account ends the calling session.
    pub async fn change_password(&self, call: &Call, cmd: ChangePassword) -> Result<Tokens> {
        let (ctx, caller) = (&call.ctx, call.caller.user()?);
        let ChangePassword { old_password: old, new_password: new } = cmd;
        let (tenant_id, user_id) = (caller.tenant_id.as_str(), caller.user_id);
        // A tenant that requires single sign-on uses no passwords (the session would otherwise
        // become a password session the provider's logout does not end).
        if self.password_login_refused_by_sso(tenant_id, user_id).await? {
            return Err(Error::precondition(
                crate::domain::Reason::IdentityProviderUnavailable,
                "SSO_REQUIRED",
                format!("tenants/{tenant_id}"),
                "the tenant signs in through its identity provider: passwords are not used",
            ));
        }
        // Both hashes' places first: a refusal for a full queue changes nothing.
        let (verify_ticket, hash_ticket) = (self.passwords.admit()?, self.passwords.admit()?);
        let tenant = self.tenant_settings(tenant_id).await?;
        let row = users::get(self.db.conn(), tenant_id, user_id).await?;
        self.password_policy(&tenant, "new_password", &new, row.email_key.as_deref())?;
        let attempt = Attempt::InSession { method: "ChangePassword", session_id: caller.session_id };
        let admission = self.admit_verification(ctx, &tenant, user_id, attempt).await?;
        if let Admission::Refused { until } = admission {
            return Err(locked_error(until));
        }
        let verified_hash = row.password_hash.clone();
        if !self.passwords.verify(verify_ticket, old, verified_hash.clone()).await? {
            self.db
                .write(&attempt_context(ctx), async |tx| {
                    self.record_failure(tx, tenant_id, user_id, attempt, admission, "wrong_password").await
                })
                .await?;
            return Err(Error::invalid_field("old_password", "is not the current password"));
        }
        let hash = self.passwords.hash_admitted(hash_ticket, new).await?;
        let amr: Vec<String> = caller.amr.clone();
        // The new session replaces the calling one: one the provider opened stays the provider's
        // (its back-channel logout ends it).
        let origin = sessions::find(self.db.conn(), caller.session_id)
            .await?
            .and_then(|s| s.idp_id.map(|idp| (idp, s.idp_sid.clone())));
        self.db
            .write(ctx, async |tx| {
                let row = users::get_for_update(tx, tenant_id, user_id).await?;
                if users::state(&row)? != UserState::Active {
                    return Err(super::invalid_credentials());
                }
                if row.password_hash != verified_hash {
                    return Err(Error::new(
                        Kind::Aborted,
                        Reason::EtagMismatch,
                        "the password changed meanwhile: log in again with the current password",
                    ));
                }
                let mut state = sessions::lock_login_state(tx, user_id).await?;
                proved_own_secret(&mut state);
                sessions::save_login_state(tx, state).await?;
                let version = row.version;
                let mut new_row = row;
                new_row.password_hash = Some(hash.clone());
                new_row.must_change_password = false;
                let row = users::update(tx, new_row, version).await?;
                sessions::end_all_of_user(tx, user_id, "password_changed").await?;
                tx.policy_changed(tenant_id, Some(user_id));
                tx.audit(AuditRecord::new(Some(tenant_id), "user.password_changed", "user", user_id));
                self.queue_notification(tx, &tenant, &row, NotificationKind::PasswordChanged, None, None).await?;
                let amr: Vec<&str> = amr.iter().map(String::as_str).collect();
                self.open_session(tx, ctx, &tenant, &row, false, &amr, origin.clone()).await
            })
            .await
    }

    /// Sets a password with a single-use token of `kind` (invitation or reset).
    async fn set_password_with_token(
        &self,
        ctx: &RequestContext,
        kind: TokenKind,
        token: &str,
        new: SecretString,
    ) -> Result<User> {
        let what = match kind {
            TokenKind::Invitation => "invitation token",
            TokenKind::PasswordReset => "reset token",
        };
        let ticket = self.passwords.admit()?;
        let stored = tokens::find(self.db.conn(), token)
            .await?
            .filter(|t| t.kind == kind.as_str() && t.used_time.is_none() && t.expire_time > now())
            .ok_or_else(|| token_invalid(what))?;
        let tenant = self.tenant_settings(&stored.tenant_id).await?;
        let row = users::get(self.db.conn(), &stored.tenant_id, stored.user_id).await?;
        self.password_policy(&tenant, "new_password", &new, row.email_key.as_deref())?;
        let hash = self.passwords.hash_admitted(ticket, new).await?;
        let (tenant_id, user_id) = (stored.tenant_id.clone(), stored.user_id);
        let mut ctx = ctx.clone();
        ctx.actor = Actor { kind: ActorKind::User, id: user_id.to_string() };
        self.db
            .write(&ctx, async |tx| {
                if !tokens::consume(tx, &stored.token_hash).await? {
                    return Err(token_invalid(what));
                }
                let row = users::get(&**tx, &tenant_id, user_id).await?;
                let state = users::state(&row)?;
                let wanted = match kind {
                    TokenKind::Invitation => UserState::Invited,
                    TokenKind::PasswordReset => UserState::Active,
                };
                if state != wanted {
                    return Err(token_invalid(what));
                }
                let before = self.to_user_in(&**tx, row.clone()).await?;
                let version = row.version;
                let mut new_row = row;
                new_row.password_hash = Some(hash.clone());
                new_row.must_change_password = false;
                new_row.state = UserState::Active.as_str().into();
                let row = users::update(tx, new_row, version).await?;
                sessions::end_all_of_user(tx, user_id, "password_reset").await?;
                tx.policy_changed(&tenant_id, Some(user_id));
                if kind == TokenKind::PasswordReset {
                    self.queue_notification(tx, &tenant, &row, NotificationKind::PasswordChanged, None, None).await?;
                }
                let user = self.to_user_in(&**tx, row).await?;
                let action = match kind {
                    TokenKind::Invitation => "user.invitation_accepted",
                    TokenKind::PasswordReset => "user.password_reset_completed",
                };
                tx.audit(AuditRecord::new(Some(&tenant_id), action, "user", user_id).with_changes(
                    Some(&before),
                    Some(&user),
                    &["version", "update_time"],
                ));
                Ok(user)
            })
            .await
    }

    /// `Auth.AcceptInvitation`.
    pub async fn accept_invitation(&self, call: &Anonymous, cmd: SetPasswordByToken) -> Result<User> {
        self.set_password_with_token(&call.ctx, TokenKind::Invitation, &cmd.token, cmd.new_password).await
    }

    /// `Auth.CompletePasswordReset`.
    pub async fn complete_password_reset(&self, call: &Anonymous, cmd: SetPasswordByToken) -> Result<User> {
        self.set_password_with_token(&call.ctx, TokenKind::PasswordReset, &cmd.token, cmd.new_password).await
    }
}
