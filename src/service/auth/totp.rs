//! TOTP (RFC 6238) second factor: enrollment, confirmation, codes at login, recovery codes.
//!
//! Secrets are stored sealed under the master key (`crate::secrets`). A code is accepted once:
//! the step it matches must be newer than the last accepted one, checked and recorded with the
//! login-state row locked (compare-and-set), so concurrent logins with one code open one session.

use serde::{Deserialize, Serialize};
use totp_rs::{Builder as TotpBuilder, Secret, Totp};
use uuid::Uuid;

use super::{
    commands::{ConfirmTotp, DisableTotp, EnrollTotp},
    guard::{Attempt, locked_error, proved_chosen_secret, proved_own_secret},
    sha256_hex,
};
use crate::{
    domain::{
        Error, Kind, Reason, Result, access::Right, audit::AuditRecord, caller::Caller, lockout::Admission,
        notification::NotificationKind, user::User,
    },
    secrets::Slot,
    service::{Call, Iam},
    store::{
        Tx,
        sessions::{self, LoginState},
        users,
    },
};

/// TOTP secrets: 160 bits (RFC 4226 recommends it).
const TOTP_SECRET_BYTES: usize = 20;
const RECOVERY_CODES: usize = 10;

/// Recovery codes: 10 characters from an alphabet without look-alikes, shown as `xxxxx-xxxxx`.
fn recovery_code() -> String {
    const ALPHABET: &[u8] = b"abcdefghjkmnpqrstuvwxyz23456789";
    let mut rng = rand::rng();
    let chars: String =
        (0..10).map(|_| ALPHABET[rand::Rng::random_range(&mut rng, 0..ALPHABET.len())] as char).collect();
    format!("{}-{}", &chars[..5], &chars[5..])
}

fn normalize_recovery_code(code: &str) -> String {
    code.chars().filter(|c| c.is_ascii_alphanumeric()).map(|c| c.to_ascii_lowercase()).collect()
}

fn is_totp_code(code: &str) -> bool {
    code.len() == 6 && code.bytes().all(|b| b.is_ascii_digit())
}

fn totp(secret_b32: &str, account: &str, issuer: &str) -> Result<Totp> {
    let secret = Secret::try_from_base32(secret_b32)
        .map_err(|e| Error::internal(anyhow::anyhow!("stored TOTP secret is corrupt: {e:?}")))?;
    TotpBuilder::new()
        .with_secret(secret)
        .with_account_name(if account.is_empty() { "user" } else { account })
        .with_issuer(Some(issuer))
        .build()
        .map_err(|e| Error::internal(anyhow::anyhow!("TOTP setup failed: {e:?}")))
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// The TOTP step a code matches (current step ± 1), if it is newer than the last one accepted.
fn accept_totp_at(t: &Totp, code: &str, last_step: Option<i64>, now: u64) -> Option<i64> {
    let step = t.check(code, now)? as i64;
    (last_step.is_none_or(|last| step > last)).then_some(step)
}

/// What an in-session TOTP check came to (failures commit too).
#[derive(Serialize, Deserialize)]
enum Checked<T> {
    Ok(T),
    Wrong,
}

impl Iam {
    fn open_totp(&self, slot: Slot<'_>, sealed: &str, account: &str) -> Result<Totp> {
        let secret = self
            .auth
            .secrets
            .open_str(slot, sealed)
            .map_err(|e| Error::internal(anyhow::anyhow!("a stored TOTP secret does not open: {e}")))?;
        totp(secrecy::ExposeSecret::expose_secret(&secret), account, &self.auth.settings.issuer)
    }

    /// Checks a second-factor code of a user whose login state `state` is locked in `tx`: a TOTP
    /// code newer than the last accepted step (recorded in `state`; the caller saves it), or an
    /// unused recovery code (used up here). False for anything else.
    pub(super) async fn second_factor_ok(
        &self,
        tx: &Tx,
        state: &mut LoginState,
        account: &str,
        code: &str,
    ) -> Result<bool> {
        if code.is_empty() {
            return Ok(false);
        }
        if !is_totp_code(code) {
            let hash = sha256_hex(&normalize_recovery_code(code));
            return sessions::use_recovery_code(tx, state.user_id, &hash).await;
        }
        let Some(sealed) = state.totp_secret.clone() else { return Ok(false) };
        let t = match self.open_totp(Slot::TotpSecret(state.user_id), &sealed, account) {
            Ok(t) => t,
            // Never an error the caller sees: only a right password gets here, so an INTERNAL
            // answer would tell a guesser the password was right. The operator hears of it.
            Err(e) => {
                tracing::error!(user_id = %state.user_id, error = %e, "a TOTP secret does not open: the login fails");
                return Ok(false);
            }
        };
        match accept_totp_at(&t, code, state.totp_last_step, unix_now()) {
            Some(step) => {
                state.totp_last_step = Some(step);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// `Auth.EnrollTotp`: a new pending secret; returns (otpauth URI, base32 secret). The caller
    /// proves it with the current password, verified like a login's (counted, audited).
    pub async fn enroll_totp(&self, call: &Call, cmd: EnrollTotp) -> Result<(String, String)> {
        let (ctx, caller, password) = (&call.ctx, call.caller.user()?, cmd.current_password);
        let (tenant_id, user_id) = (caller.tenant_id.as_str(), caller.user_id);
        let ticket = self.passwords.admit()?;
        let tenant = self.tenant_settings(tenant_id).await?;
        let row = users::get(self.db.conn(), tenant_id, user_id).await?;
        if row.mfa_enrolled {
            return Err(Error::precondition(
                Reason::TotpState,
                "TOTP",
                format!("users/{user_id}"),
                "TOTP is already enrolled: disable it first to enroll a new authenticator",
            ));
        }
        let attempt = Attempt::InSession { method: "EnrollTotp", session_id: caller.session_id };
        let admission = self.admit_verification(ctx, &tenant, user_id, attempt).await?;
        if let Admission::Refused { until } = admission {
            return Err(locked_error(until));
        }
        let verified_hash = row.password_hash.clone();
        let password_ok = self.passwords.verify(ticket, password, verified_hash.clone()).await?;
        let mut bytes = [0u8; TOTP_SECRET_BYTES];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut bytes);
        let secret = Secret::from(bytes.to_vec()).to_base32();
        let t = totp(&secret, row.email.as_deref().unwrap_or_default(), &self.auth.settings.issuer)?;
        let uri = t.to_url().map_err(|e| Error::internal(anyhow::anyhow!("otpauth URI failed: {e:?}")))?;
        let sealed = self.auth.secrets.seal(Slot::TotpPendingSecret(user_id), secret.as_bytes());
        let outcome = self
            .db
            .write(ctx, async |tx| {
                let row = users::get_for_update(tx, tenant_id, user_id).await?;
                if !password_ok || row.password_hash != verified_hash {
                    self.record_failure(tx, tenant_id, user_id, attempt, admission, "wrong_password").await?;
                    return Ok(Checked::Wrong);
                }
                let mut state = sessions::lock_login_state(tx, user_id).await?;
                proved_own_secret(&mut state);
                state.totp_pending_secret = Some(sealed.clone());
                sessions::save_login_state(tx, state).await?;
                tx.audit(AuditRecord::new(Some(tenant_id), "auth.totp_enrollment_started", "user", user_id));
                Ok(Checked::Ok(()))
            })
            .await?;
        match outcome {
            Checked::Ok(()) => Ok((uri, secret)),
            Checked::Wrong => Err(Error::invalid_field("current_password", "is not the current password")),
        }
    }

    /// `Auth.ConfirmTotp`: activates the pending secret with a current code (a wrong code counts
    /// in the lockout); returns fresh recovery codes.
    pub async fn confirm_totp(&self, call: &Call, cmd: ConfirmTotp) -> Result<Vec<String>> {
        let (ctx, caller, code) = (&call.ctx, call.caller.user()?, cmd.code.as_str());
        let (tenant_id, user_id) = (caller.tenant_id.as_str(), caller.user_id);
        let tenant = self.tenant_settings(tenant_id).await?;
        let row = users::get(self.db.conn(), tenant_id, user_id).await?;
        let state = sessions::login_state(self.db.conn(), user_id).await?;
        let Some(pending) = state.totp_pending_secret.clone() else {
            return Err(Error::precondition(
                Reason::TotpState,
                "TOTP",
                format!("users/{user_id}"),
                "no TOTP enrollment is pending: call EnrollTotp first",
            ));
        };
        let attempt = Attempt::InSession { method: "ConfirmTotp", session_id: caller.session_id };
        let admission = self.admit_verification(ctx, &tenant, user_id, attempt).await?;
        if let Admission::Refused { until } = admission {
            return Err(locked_error(until));
        }
        let account = row.email.clone().unwrap_or_default();
        let codes: Vec<String> = (0..RECOVERY_CODES).map(|_| recovery_code()).collect();
        let hashes: Vec<String> = codes.iter().map(|c| sha256_hex(&normalize_recovery_code(c))).collect();
        let secrets = self.auth.secrets.clone();
        let outcome = self
            .db
            .write(ctx, async |tx| {
                let t = self.open_totp(Slot::TotpPendingSecret(user_id), &pending, &account)?;
                let step = is_totp_code(code).then(|| accept_totp_at(&t, code, None, unix_now())).flatten();
                let Some(step) = step else {
                    self.record_failure(tx, tenant_id, user_id, attempt, admission, "wrong_code").await?;
                    return Ok(Checked::Wrong);
                };
                users::get_for_update(tx, tenant_id, user_id).await?;
                let mut state = sessions::lock_login_state(tx, user_id).await?;
                proved_chosen_secret(&mut state);
                if state.totp_pending_secret.as_deref() != Some(pending.as_str()) {
                    return Err(Error::new(
                        Kind::Aborted,
                        Reason::TotpState,
                        "the TOTP enrollment changed meanwhile: enroll again",
                    ));
                }
                let secret = secrets
                    .open(Slot::TotpPendingSecret(user_id), &pending)
                    .map_err(|e| Error::internal(anyhow::anyhow!("a stored TOTP secret does not open: {e}")))?;
                state.totp_secret = Some(secrets.seal(Slot::TotpSecret(user_id), &secret));
                state.totp_pending_secret = None;
                state.totp_last_step = Some(step);
                sessions::save_login_state(tx, state).await?;
                sessions::replace_recovery_codes(tx, user_id, hashes.clone()).await?;
                self.set_mfa_enrolled(tx, tenant_id, user_id, true, "auth.totp_enrolled").await?;
                Ok(Checked::Ok(()))
            })
            .await?;
        match outcome {
            Checked::Ok(()) => Ok(codes),
            Checked::Wrong => Err(Error::invalid_field("code", "is not a current code of the authenticator app")),
        }
    }

    async fn set_mfa_enrolled(&self, tx: &Tx, tenant_id: &str, user_id: Uuid, on: bool, action: &str) -> Result<User> {
        let row = users::get(&**tx, tenant_id, user_id).await?;
        let version = row.version;
        let mut new_row = row;
        new_row.mfa_enrolled = on;
        let row = users::update(tx, new_row, version).await?;
        let tenant = self.tenant_settings(tenant_id).await?;
        let notice = if on { NotificationKind::MfaEnabled } else { NotificationKind::MfaDisabled };
        self.queue_notification(tx, &tenant, &row, notice, None, None).await?;
        let user = self.to_user_in(&**tx, row).await?;
        tx.policy_changed(tenant_id, Some(user_id));
        tx.audit(AuditRecord::new(Some(tenant_id), action, "user", user_id));
        Ok(user)
    }

    /// `Auth.DisableTotp`. A user turns off their own TOTP and must prove it with a current or
    /// recovery code (a wrong one counts in the lockout); administrators (`users.edit` over the
    /// user) need none.
    pub async fn disable_totp(&self, call: &Call, cmd: DisableTotp) -> Result<User> {
        let (ctx, tenant_id) = (&call.ctx, cmd.tenant_id.as_str());
        let user_id = call.caller.subject(cmd.user_id)?;
        let by_self = match &call.caller {
            Caller::User(u) if u.user_id == user_id => {
                if cmd.code.is_empty() {
                    return Err(Error::invalid_field(
                        "code",
                        "is required to turn off your own TOTP: a current code or an unused recovery code",
                    ));
                }
                Some((u, cmd.code.as_str()))
            }
            _ => None,
        };
        self.authorize_self_or(&call.caller, tenant_id, user_id, Right::USERS_EDIT).await?;
        let row = self.user_row(self.db.conn(), tenant_id, user_id).await?;
        if !row.mfa_enrolled {
            return Err(Error::precondition(
                Reason::TotpState,
                "TOTP",
                format!("users/{user_id}"),
                "TOTP is not enrolled for this user",
            ));
        }
        let checked = match by_self {
            Some((caller, code)) => {
                let tenant = self.tenant_settings(tenant_id).await?;
                let attempt = Attempt::InSession { method: "DisableTotp", session_id: caller.session_id };
                let admission = self.admit_verification(ctx, &tenant, user_id, attempt).await?;
                if let Admission::Refused { until } = admission {
                    return Err(locked_error(until));
                }
                Some((code, attempt, admission))
            }
            None => None,
        };
        let account = row.email.clone().unwrap_or_default();
        let outcome = self
            .db
            .write(ctx, async |tx| {
                users::get_for_update(tx, tenant_id, user_id).await?;
                let mut state = sessions::lock_login_state(tx, user_id).await?;
                if let Some((code, attempt, admission)) = checked {
                    if !self.second_factor_ok(tx, &mut state, &account, code).await? {
                        self.record_failure(tx, tenant_id, user_id, attempt, admission, "wrong_code").await?;
                        return Ok(Checked::Wrong);
                    }
                    proved_chosen_secret(&mut state);
                }
                state.totp_secret = None;
                state.totp_pending_secret = None;
                state.totp_last_step = None;
                sessions::save_login_state(tx, state).await?;
                sessions::replace_recovery_codes(tx, user_id, Vec::new()).await?;
                self.set_mfa_enrolled(tx, tenant_id, user_id, false, "auth.totp_disabled").await.map(Checked::Ok)
            })
            .await?;
        match outcome {
            Checked::Ok(user) => Ok(user),
            Checked::Wrong => Err(Error::invalid_field("code", "is not a current code or an unused recovery code")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovery_codes_normalize() {
        let c = recovery_code();
        assert_eq!(c.len(), 11);
        assert_eq!(normalize_recovery_code(&c.to_uppercase().replace('-', " ")), c.replace('-', ""));
    }

    #[test]
    fn totp_codes_are_accepted_once_and_within_one_step() {
        let secret = Secret::from(vec![7u8; 20]).to_base32();
        let t = totp(&secret, "ann@example.com", "crm-iam").unwrap();
        let now = 1_800_000_015; // a fixed clock: no step boundary can move under the test
        let code = t.generate(now - 30).to_string();
        let step = accept_totp_at(&t, &code, None, now).expect("previous step accepted (clock skew)");
        assert_eq!(accept_totp_at(&t, &code, Some(step), now), None, "a code is accepted once");
        let next = t.generate(now + 30).to_string();
        assert!(accept_totp_at(&t, &next, Some(step), now).is_some(), "the next step too");
        let old = t.generate(now - 90).to_string();
        assert_eq!(accept_totp_at(&t, &old, None, now), None, "two steps back is too old");
    }
}
