//! `Auth.Authenticate`.
//!
//! In order, each step before the next so that a refused login has cost nothing after it:
//! 1. the address takes a slot of the per-address limit (given back on success);
//! 2. a place in the hashing queue (refused at once when full);
//! 3. the user is looked up; for an ACTIVE user the verification is admitted (counted as a
//!    failure, or refused while the account is locked) in its own transaction;
//! 4. one argon2 verification, always: against the user's hash when admitted, against a dummy
//!    hash otherwise (unknown email, inactive or locked account), so every failure takes as long;
//! 5. one transaction with the outcome: a failure's audit event, or (password and, for TOTP
//!    users, a code both right) the count taken back, the TOTP step consumed and the session opened.
//!
//! For TOTP users a right password without a right code is an ordinary failure: the same answer
//! as a wrong password, and counted (SECURITY.md: no password oracle).

use serde::{Deserialize, Serialize};

use super::{
    Tokens, attempt_context,
    commands::{Anonymous, Authenticate, LoginName},
    guard::{Attempt, proved_own_secret},
    invalid_credentials,
};
use crate::{
    domain::{
        Result,
        audit::{AuditRecord, RequestContext},
        lockout::Admission,
        now,
        tenant::LoginIdentifiers,
        user::UserState,
    },
    service::Iam,
    store::{
        sessions::{self},
        users,
    },
};

/// Outcome of a login transaction (failures commit too).
#[derive(Serialize, Deserialize)]
enum Login {
    Ok(Tokens),
    Failed,
}

impl Iam {
    /// Records a login attempt that changes nothing else (its own transaction).
    pub(super) fn login_email_pseudonym(&self, tenant_id: &str, email_key: &str) -> String {
        self.auth.secrets.pseudonym(&crate::domain::audit::login_email_purpose(tenant_id), email_key)
    }

    async fn record_attempt(&self, ctx: &RequestContext, record: AuditRecord) -> Result<()> {
        self.db
            .write(&attempt_context(ctx), async |tx| {
                tx.audit(record);
                Ok(())
            })
            .await
    }

    /// The user a login names, or why none: the identifier kind is not accepted by the tenant,
    /// names nobody, or (a shared phone number) names more than one user.
    async fn user_for_login(
        &self,
        tenant_id: &str,
        accepted: &LoginIdentifiers,
        login: &LoginName,
    ) -> Result<std::result::Result<users::Row, &'static str>> {
        let allowed = match login {
            LoginName::Email(_) => accepted.email,
            LoginName::Username(_) => accepted.username,
            LoginName::Phone(_) => accepted.phone,
        };
        if !allowed {
            // Refused without a database read (the same answer as any other refusal).
            return Ok(Err("identifier_not_allowed"));
        }
        let conn = self.db.conn();
        let mut rows: Vec<users::Row> = match login {
            LoginName::Email(key) => sessions::user_for_login(conn, tenant_id, key).await?.into_iter().collect(),
            LoginName::Username(key) => {
                sessions::user_for_username_login(conn, tenant_id, key).await?.into_iter().collect()
            }
            LoginName::Phone(e164) => sessions::users_for_phone_login(conn, tenant_id, e164).await?,
        };
        Ok(match rows.len() {
            0 => Err(if matches!(login, LoginName::Email(_)) { "unknown_email" } else { "unknown_identifier" }),
            1 => Ok(rows.remove(0)),
            _ => Err("ambiguous_identifier"),
        })
    }

    /// The audit record of a login that named no single user: the identifier pseudonymized.
    fn unknown_login_record(&self, tenant_id: &str, login: &LoginName, why: &str) -> AuditRecord {
        let record = AuditRecord::new(Some(tenant_id), "auth.login_failed", "user", "").with_detail("reason", why);
        match login {
            LoginName::Email(key) => record.with_detail("email_hash", self.login_email_pseudonym(tenant_id, key)),
            LoginName::Username(key) | LoginName::Phone(key) => {
                record.with_detail("identifier", login.kind()).with_detail(
                    "identifier_hash",
                    self.login_email_pseudonym(tenant_id, &format!("{}:{key}", login.kind())),
                )
            }
        }
    }

    /// `Auth.Authenticate`.
    pub async fn authenticate(&self, call: &Anonymous, cmd: Authenticate) -> Result<Tokens> {
        let Authenticate { tenant_id, login, password, totp_code } = cmd;
        let (ctx, ip, tenant_id, code) = (&call.ctx, call.ip, tenant_id.as_str(), totp_code.trim());
        let slot = self.auth.limiter.take(ip)?;
        let ticket = match self.passwords.admit() {
            Ok(t) => t,
            Err(e) => {
                // Refused before anything was tried: not a failure of this address.
                slot.give_back();
                return Err(e);
            }
        };
        let tenant = match self.tenant_settings(tenant_id).await {
            Ok(t) => Some(t),
            Err(e) if e.reason == crate::domain::Reason::TenantNotFound => None,
            Err(e) => return Err(e),
        };
        if let Some(Err(e)) = tenant.as_ref().map(|t| t.ensure_open()) {
            slot.give_back();
            return Err(e);
        }
        let tenant_exists = tenant.is_some();
        let found = match &tenant {
            Some(t) => self.user_for_login(tenant_id, &t.settings.login_identifiers, &login).await?,
            None => Err("unknown_tenant"),
        };
        let (tenant, row) = match (tenant, found) {
            (Some(tenant), Ok(row)) => (tenant, row),
            (_, found) => {
                self.passwords.verify(ticket, password, None).await?;
                // Unknown users are audited too (password spraying shows); unknown tenants have no trail.
                if let (true, Err(why)) = (tenant_exists, found) {
                    self.record_attempt(ctx, self.unknown_login_record(tenant_id, &login, why)).await?;
                }
                return Err(invalid_credentials());
            }
        };
        let user_id = row.user_id;
        if self.password_login_refused_by_sso(tenant_id, user_id).await? {
            // The tenant signs in through its identity provider: the same answer as any refusal.
            self.passwords.verify(ticket, password, None).await?;
            let record = AuditRecord::new(Some(tenant_id), "auth.login_failed", "user", user_id)
                .with_detail("reason", "sso_required");
            self.record_attempt(ctx, record).await?;
            return Err(invalid_credentials());
        }
        if users::state(&row)? != UserState::Active {
            self.passwords.verify(ticket, password, None).await?;
            let record = AuditRecord::new(Some(tenant_id), "auth.login_failed", "user", user_id)
                .with_detail("reason", "not_active");
            self.record_attempt(ctx, record).await?;
            return Err(invalid_credentials());
        }
        let admission = self.admit_verification(ctx, &tenant, user_id, Attempt::Login).await?;
        let stored = match admission {
            Admission::Admitted { .. } => row.password_hash.clone(),
            Admission::Refused { .. } => None,
        };
        let password_ok = self.passwords.verify(ticket, password, stored).await?;
        if let Admission::Refused { .. } = admission {
            return Err(invalid_credentials());
        }
        let verified_hash = row.password_hash.clone();
        let outcome = self
            .db
            .write(&attempt_context(ctx), async |tx| {
                if !password_ok {
                    self.record_failure(tx, tenant_id, user_id, Attempt::Login, admission, "wrong_password").await?;
                    return Ok(Login::Failed);
                }
                // Decide on the account as it is now, locked against changes until commit (lock
                // order: the user's row, then the login state): a password changed or reset, a
                // deactivation or an enrollment while the password was verified is not bypassed,
                // and a change committing after this one ends the session it opens. The common
                // login (no second factor, nothing changed) is one statement; any other reads the
                // locked row and decides.
                let at = now();
                let plain = match &verified_hash {
                    Some(h) if !row.mfa_enrolled => users::record_plain_login(tx, tenant_id, user_id, h, at).await?,
                    _ => None,
                };
                let (row, amr) = match plain {
                    Some(row) => {
                        sessions::clear_failures(tx, user_id).await?;
                        (row, vec!["pwd"])
                    }
                    None => {
                        let row = users::get_for_update(tx, tenant_id, user_id).await?;
                        if row.password_hash != verified_hash || users::state(&row)? != UserState::Active {
                            self.record_failure(tx, tenant_id, user_id, Attempt::Login, admission, "changed_meanwhile")
                                .await?;
                            return Ok(Login::Failed);
                        }
                        let mut amr = vec!["pwd"];
                        let mut state = sessions::lock_login_state(tx, user_id).await?;
                        if row.mfa_enrolled {
                            let account = row.email.clone().unwrap_or_default();
                            if !self.second_factor_ok(tx, &mut state, &account, code).await? {
                                let reason = if code.is_empty() { "code_missing" } else { "wrong_code" };
                                self.record_failure(tx, tenant_id, user_id, Attempt::Login, admission, reason).await?;
                                return Ok(Login::Failed);
                            }
                            amr.push("otp");
                        }
                        proved_own_secret(&mut state);
                        sessions::save_login_state(tx, state).await?;
                        users::set_last_login(tx, tenant_id, user_id, at).await?;
                        (row, amr)
                    }
                };
                let tokens = self.open_session(tx, ctx, &tenant, &row, row.must_change_password, &amr, None).await?;
                tx.audit(
                    AuditRecord::new(Some(tenant_id), "auth.login_succeeded", "user", user_id)
                        .with_detail("session_id", tokens.session_id.to_string())
                        .with_detail("methods", amr.join(","))
                        .with_detail("password_change_required", tokens.restricted),
                );
                Ok(Login::Ok(tokens))
            })
            .await?;
        match outcome {
            Login::Ok(tokens) => {
                slot.give_back();
                Ok(tokens)
            }
            Login::Failed => Err(invalid_credentials()),
        }
    }
}
