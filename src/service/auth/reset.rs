//! Self-service password reset (`Auth.RequestPasswordReset`): no token needed, and the answer is
//! the same, in content and in time, whether or not the e-mail belongs to a user. The call only
//! takes a slot of its address's limit and hands the request to a background task; everything
//! that depends on the account (lookup, the per-account limit, the token, the message) happens
//! there, after the caller has been answered. The e-mailed token completes with
//! `CompletePasswordReset`, which ends all sessions and sends a "password changed" notice.

use super::commands::{Anonymous, RequestPasswordReset};
use crate::{
    domain::{
        Reason, Result,
        audit::{AuditRecord, RequestContext},
        notification::NotificationKind,
        now,
        user::UserState,
    },
    service::Iam,
    store::{
        outbox, sessions, tenants,
        tokens::{self, TokenKind},
        users,
    },
};

/// How long a self-service reset link works (at most; never longer than the tenant's invitation TTL).
const RESET_TTL: chrono::Duration = chrono::Duration::hours(1);

impl Iam {
    /// `Auth.RequestPasswordReset`.
    pub async fn request_password_reset(&self, call: &Anonymous, cmd: RequestPasswordReset) -> Result<()> {
        // The slot is kept: every request counts, found or not.
        drop(self.auth.reset_limiter.take(call.ip).map_err(|mut e| {
            e.message = "too many password reset requests from this address: wait before trying again".into();
            e
        })?);
        let (iam, ctx) = (self.clone(), call.ctx.clone());
        tokio::spawn(async move {
            if let Err(e) = iam.reset_on_request(&ctx, cmd).await {
                tracing::warn!(error = %e, "a password reset request failed");
            }
        });
        Ok(())
    }

    async fn reset_on_request(&self, ctx: &RequestContext, cmd: RequestPasswordReset) -> Result<()> {
        let RequestPasswordReset { tenant_id, email } = cmd;
        let tenant_id = tenant_id.as_str();
        match self.tenant_settings(tenant_id).await {
            Ok(t) => t.ensure_open()?,
            Err(e) if e.reason == Reason::TenantNotFound => return Ok(()),
            Err(e) => return Err(e),
        }
        let email_key = email.trim().to_lowercase();
        let Some(found) = sessions::user_for_login(self.db.conn(), tenant_id, &email_key).await? else {
            let record = AuditRecord::new(Some(tenant_id), "auth.password_reset_requested", "user", "")
                .with_detail("outcome", "unknown_email")
                .with_detail("email_hash", self.login_email_pseudonym(tenant_id, &email_key));
            return self
                .db
                .write(ctx, async |tx| {
                    tx.audit(record);
                    Ok(())
                })
                .await;
        };
        let user_id = found.user_id;
        let limit = u64::from(self.outbox.settings().resets_per_account_hour);
        self.db
            .write(ctx, async |tx| {
                let tenant = tenants::lock(tx, tenant_id).await?;
                let row = users::get(&**tx, tenant_id, user_id).await?;
                let record = AuditRecord::new(Some(tenant_id), "auth.password_reset_requested", "user", user_id);
                let outcome = if users::state(&row)? != UserState::Active {
                    "not_active"
                } else if !self.outbox.enabled() {
                    "no_channel"
                } else if outbox::count_since(
                    &**tx,
                    user_id,
                    NotificationKind::PasswordReset,
                    now() - chrono::Duration::hours(1),
                )
                .await?
                    >= limit
                {
                    "throttled"
                } else {
                    let ttl = RESET_TTL.min(chrono::Duration::seconds(tenant.settings.invitation_ttl_secs as i64));
                    let token = tokens::issue(tx, tenant_id, user_id, TokenKind::PasswordReset, now() + ttl).await?;
                    self.queue_notification(tx, &tenant, &row, NotificationKind::PasswordReset, Some(&token), None)
                        .await?;
                    "sent"
                };
                tx.audit(record.with_detail("outcome", outcome));
                Ok(())
            })
            .await
    }
}
