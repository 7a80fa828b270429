//! Counting verifications of a user's secrets (the lockout), shared by logins and by the
//! in-session checks of ChangePassword, ConfirmTotp and DisableTotp.

use uuid::Uuid;

use super::attempt_context;
use crate::{
    domain::{
        Error, Kind, Reason, Result,
        audit::{AuditRecord, RequestContext},
        lockout::{self, Admission, Counters},
        notification::NotificationKind,
        now,
        tenant::Tenant,
    },
    service::Iam,
    store::{
        Tx,
        sessions::{self, LoginState},
        users,
    },
};

/// Who verifies a secret, and where.
#[derive(Debug, Clone, Copy)]
pub(super) enum Attempt {
    /// A login (no session yet): failures are `auth.login_failed`.
    Login,
    /// A check inside a session (`method`): failures are `auth.verification_failed`, and the
    /// failure that locks the account also ends that session (a stolen token stops there).
    InSession { method: &'static str, session_id: Uuid },
}

impl Attempt {
    fn failed_action(self) -> &'static str {
        match self {
            Attempt::Login => "auth.login_failed",
            Attempt::InSession { .. } => "auth.verification_failed",
        }
    }

    fn record(self, tenant_id: &str, user_id: Uuid, reason: &str) -> AuditRecord {
        let r = AuditRecord::new(Some(tenant_id), self.failed_action(), "user", user_id).with_detail("reason", reason);
        match self {
            Attempt::Login => r,
            Attempt::InSession { method, session_id } => {
                r.with_detail("method", method).with_detail("session_id", session_id.to_string())
            }
        }
    }
}

fn policy(tenant: &Tenant) -> lockout::Policy {
    lockout::Policy {
        max_failed_attempts: tenant.settings.lockout_max_failed_attempts,
        base_duration_secs: tenant.settings.lockout_duration_secs,
    }
}

fn counters(s: &LoginState) -> Counters {
    Counters { failed: s.failed_logins, lockouts: s.lockouts, locked_until: s.locked_until }
}

fn set_counters(s: &mut LoginState, c: Counters) {
    s.failed_logins = c.failed;
    s.lockouts = c.lockouts;
    s.locked_until = c.locked_until;
}

/// The answer to an in-session check while the account is locked.
pub(super) fn locked_error(until: chrono::DateTime<chrono::Utc>) -> Error {
    let mut e = Error::new(
        Kind::ResourceExhausted,
        Reason::TooManyAttempts,
        "too many wrong passwords or codes: the account is locked for now; try again later",
    );
    let wait = (until - now()).num_milliseconds().max(1);
    e.retry_after_ms = u32::try_from(wait).unwrap_or(u32::MAX);
    e
}

impl Iam {
    /// Admits one verification of a secret of `user_id`, counting it as failed until it
    /// succeeds, or refuses it while the account is locked (audited as a failure with reason
    /// `locked`). Its own transaction: the count is committed before anything is verified.
    pub(super) async fn admit_verification(
        &self,
        ctx: &RequestContext,
        tenant: &Tenant,
        user_id: Uuid,
        attempt: Attempt,
    ) -> Result<Admission> {
        let tenant_id = tenant.tenant_id.as_str();
        self.db
            .write(&attempt_context(ctx), async |tx| {
                let mut state = sessions::lock_login_state(tx, user_id).await?;
                let mut c = counters(&state);
                let admission = policy(tenant).admit(&mut c, now());
                match admission {
                    Admission::Refused { .. } => {
                        tx.audit(attempt.record(tenant_id, user_id, "locked"));
                        // Guessing inside a session while the account is locked: end the session.
                        if let Attempt::InSession { session_id, .. } = attempt {
                            end_guessing_session(tx, tenant_id, user_id, session_id).await?;
                        }
                    }
                    Admission::Admitted { attempt: n, locked_until } => {
                        set_counters(&mut state, c);
                        sessions::save_login_state(tx, state).await?;
                        if let Some(until) = locked_until {
                            tx.audit(
                                AuditRecord::new(Some(tenant_id), "auth.locked", "user", user_id)
                                    .with_detail("until", until.to_rfc3339())
                                    .with_detail(
                                        "duration_secs",
                                        policy(tenant).lock_duration(c.lockouts - 1).num_seconds(),
                                    )
                                    .with_detail("failed_attempts", n)
                                    .with_detail("lockouts_in_a_row", c.lockouts),
                            );
                            if let Some(row) = users::find(&**tx, tenant_id, user_id).await? {
                                self.queue_notification(tx, tenant, &row, NotificationKind::AccountLocked, None, None)
                                    .await?;
                            }
                        }
                    }
                }
                Ok(admission)
            })
            .await
    }

    /// Records, in `tx`, that an admitted verification failed (`reason`: `wrong_password`,
    /// `wrong_code`, ...). When that attempt locked the account and came through a session, the
    /// session ends.
    pub(super) async fn record_failure(
        &self,
        tx: &Tx,
        tenant_id: &str,
        user_id: Uuid,
        attempt: Attempt,
        admission: Admission,
        reason: &str,
    ) -> Result<()> {
        let Admission::Admitted { attempt: n, locked_until } = admission else {
            return Ok(());
        };
        tx.audit(attempt.record(tenant_id, user_id, reason).with_detail("failed_attempts", n));
        if let (Attempt::InSession { session_id, .. }, Some(_)) = (attempt, locked_until) {
            end_guessing_session(tx, tenant_id, user_id, session_id).await?;
        }
        Ok(())
    }
}

/// Ends the session a locked account was guessed through (audited).
async fn end_guessing_session(tx: &Tx, tenant_id: &str, user_id: Uuid, session_id: Uuid) -> Result<()> {
    if sessions::end(tx, &[session_id], "locked_out").await? > 0 {
        tx.policy_changed(tenant_id, Some(user_id));
        tx.audit(
            AuditRecord::new(Some(tenant_id), "auth.sessions_revoked", "user", user_id)
                .with_detail("reason", "locked_out")
                .with_detail("session_ids", vec![session_id.to_string()]),
        );
    }
    Ok(())
}

/// The account's own secret was verified (its password, and at login its second factor): the
/// count is taken back, a lock set by a racing admission included (in the login state the caller
/// locked with `lock_login_state` and then saves).
pub(super) fn proved_own_secret(state: &mut LoginState) {
    let mut c = counters(state);
    lockout::succeed(&mut c);
    set_counters(state, c);
}

/// A code of an authenticator the caller may have enrolled themselves was right: only this
/// verification's own admission is taken back; a lock stays (`lockout::take_back_one`).
pub(super) fn proved_chosen_secret(state: &mut LoginState) {
    let mut c = counters(state);
    lockout::take_back_one(&mut c);
    set_counters(state, c);
}
