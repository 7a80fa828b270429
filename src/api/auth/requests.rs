//! Auth requests converted into the commands of `service::auth`, every field checked.

use secrecy::SecretString;
use uuid::Uuid;

use crate::{
    api::{decode_uuid_page_token, page_size, tenant_field as tenant},
    domain::{Error, Violations, validate},
    proto::v1 as pb,
    service::auth::commands::{
        Authenticate, ChangePassword, ConfirmTotp, DisableTotp, EnrollTotp, IntrospectToken, ListSessions, LoginName,
        Logout, Refresh, RequestPasswordReset, RevokeSessions, RotateSigningKey, SetPasswordByToken,
    },
};

/// Longest password accepted (argon2 cost grows with it).
const PASSWORD_MAX: usize = 1024;

fn token_field(v: &mut Violations, field: &str, value: &str) {
    if value.is_empty() {
        v.add(field, "is required");
    } else if value.len() > 4096 {
        v.add(field, "is too long to be a token");
    }
}

fn secret_field(v: &mut Violations, field: &str, value: &str) -> SecretString {
    if value.is_empty() {
        v.add(field, "is required");
    } else if value.len() > PASSWORD_MAX {
        v.add(field, format!("must be at most {PASSWORD_MAX} bytes"));
    }
    SecretString::from(value.to_owned())
}

/// An optional `user_id` (empty: the calling user).
fn optional_user(v: &mut Violations, user_id: &str) -> Option<Uuid> {
    v.check("user_id", validate::optional_uuid(user_id)).flatten()
}

/// Exactly one of `email`, `username` and `phone`, normalized as stored.
fn login_name(v: &mut Violations, msg: &pb::AuthenticateRequest) -> Option<LoginName> {
    let given: Vec<&str> = [("email", &msg.email), ("username", &msg.username), ("phone", &msg.phone)]
        .into_iter()
        .filter(|(_, value)| !value.trim().is_empty())
        .map(|(field, _)| field)
        .collect();
    match given.as_slice() {
        [] => v.add("email", "is required (or username, or phone)"),
        [_, extra @ ..] if !extra.is_empty() => {
            for field in extra {
                v.add(*field, "give one of email, username and phone");
            }
        }
        ["email"] if msg.email.len() > 320 => v.add("email", "must be at most 320 bytes"),
        ["email"] => return Some(LoginName::Email(msg.email.trim().to_lowercase())),
        ["username"] => {
            return v
                .check("username", validate::username(&msg.username))
                .flatten()
                .map(|(_, k)| LoginName::Username(k));
        }
        _ => return v.check("phone", validate::phone(&msg.phone)).flatten().map(LoginName::Phone),
    }
    None
}

impl TryFrom<pb::AuthenticateRequest> for Authenticate {
    type Error = Error;

    fn try_from(msg: pb::AuthenticateRequest) -> Result<Self, Error> {
        let mut v = Violations::default();
        let tenant_id = tenant(&mut v, &msg.tenant_id);
        let login = login_name(&mut v, &msg);
        let password = secret_field(&mut v, "password", &msg.password);
        if msg.totp_code.len() > 64 {
            v.add("totp_code", "must be at most 64 characters");
        }
        v.finish()?;
        let login = login.expect("checked");
        Ok(Authenticate { tenant_id, login, password, totp_code: msg.totp_code.trim().to_owned() })
    }
}

impl TryFrom<pb::RefreshRequest> for Refresh {
    type Error = Error;

    fn try_from(msg: pb::RefreshRequest) -> Result<Self, Error> {
        let mut v = Violations::default();
        token_field(&mut v, "refresh_token", &msg.refresh_token);
        v.finish()?;
        Ok(Refresh { refresh_token: msg.refresh_token })
    }
}

impl SetPasswordByToken {
    /// A token under `field` and the new password, each checked.
    fn checked(field: &str, token: String, new_password: &str) -> Result<Self, Error> {
        let mut v = Violations::default();
        token_field(&mut v, field, &token);
        let new_password = secret_field(&mut v, "new_password", new_password);
        v.finish()?;
        Ok(SetPasswordByToken { token, new_password })
    }
}

converts! {
    pb::AcceptInvitationRequest => SetPasswordByToken, |msg|
        SetPasswordByToken::checked("invitation_token", msg.invitation_token, &msg.new_password);
    pb::CompletePasswordResetRequest => SetPasswordByToken, |msg|
        SetPasswordByToken::checked("reset_token", msg.reset_token, &msg.new_password);
    pb::LogoutRequest => Logout, |_m| Ok(Logout);
    pb::RotateSigningKeyRequest => RotateSigningKey, |m| Ok(RotateSigningKey { immediate: m.immediate });
}

impl TryFrom<pb::RequestPasswordResetRequest> for RequestPasswordReset {
    type Error = Error;

    fn try_from(msg: pb::RequestPasswordResetRequest) -> Result<Self, Error> {
        let mut v = Violations::default();
        let tenant_id = tenant(&mut v, &msg.tenant_id);
        let email = v.check("email", validate::email(&msg.email)).map(|(_, key)| key).unwrap_or_default();
        v.finish()?;
        Ok(RequestPasswordReset { tenant_id, email })
    }
}

impl TryFrom<pb::ListSessionsRequest> for ListSessions {
    type Error = Error;

    fn try_from(msg: pb::ListSessionsRequest) -> Result<Self, Error> {
        let mut v = Violations::default();
        let tenant_id = tenant(&mut v, &msg.tenant_id);
        let user_id = optional_user(&mut v, &msg.user_id);
        let limit = page_size(&mut v, msg.page_size);
        v.finish()?;
        let filters = format!("sessions|{tenant_id}|{}|{}", msg.user_id, msg.include_ended);
        let after = decode_uuid_page_token(&msg.page_token, &filters)?;
        Ok(ListSessions { tenant_id, user_id, include_ended: msg.include_ended, after, limit, filters })
    }
}

impl TryFrom<pb::RevokeSessionsRequest> for RevokeSessions {
    type Error = Error;

    fn try_from(msg: pb::RevokeSessionsRequest) -> Result<Self, Error> {
        let mut v = Violations::default();
        let tenant_id = tenant(&mut v, &msg.tenant_id);
        let user_id = optional_user(&mut v, &msg.user_id);
        let mut session_ids = Vec::new();
        for (i, s) in msg.session_ids.iter().enumerate() {
            session_ids.push(v.check(&format!("session_ids[{i}]"), validate::uuid(s)).unwrap_or_default());
        }
        if session_ids.len() > 1000 {
            v.add("session_ids", "at most 1000 at once");
        }
        let reason = v.check("reason", validate::text(&msg.reason, 500)).unwrap_or_default();
        v.finish()?;
        Ok(RevokeSessions { tenant_id, user_id, session_ids, reason })
    }
}

impl TryFrom<pb::ChangePasswordRequest> for ChangePassword {
    type Error = Error;

    fn try_from(msg: pb::ChangePasswordRequest) -> Result<Self, Error> {
        let mut v = Violations::default();
        let old_password = secret_field(&mut v, "old_password", &msg.old_password);
        let new_password = secret_field(&mut v, "new_password", &msg.new_password);
        v.finish()?;
        Ok(ChangePassword { old_password, new_password })
    }
}

impl TryFrom<pb::EnrollTotpRequest> for EnrollTotp {
    type Error = Error;

    fn try_from(msg: pb::EnrollTotpRequest) -> Result<Self, Error> {
        let mut v = Violations::default();
        let current_password = secret_field(&mut v, "current_password", &msg.current_password);
        v.finish()?;
        Ok(EnrollTotp { current_password })
    }
}

impl TryFrom<pb::ConfirmTotpRequest> for ConfirmTotp {
    type Error = Error;

    fn try_from(msg: pb::ConfirmTotpRequest) -> Result<Self, Error> {
        let code = msg.code.trim();
        if code.is_empty() {
            return Err(Error::invalid_field("code", "is required: a current code from the authenticator app"));
        }
        Ok(ConfirmTotp { code: code.to_owned() })
    }
}

impl TryFrom<pb::DisableTotpRequest> for DisableTotp {
    type Error = Error;

    fn try_from(msg: pb::DisableTotpRequest) -> Result<Self, Error> {
        let mut v = Violations::default();
        let tenant_id = tenant(&mut v, &msg.tenant_id);
        let user_id = optional_user(&mut v, &msg.user_id);
        v.finish()?;
        Ok(DisableTotp { tenant_id, user_id, code: msg.code.trim().to_owned() })
    }
}

impl TryFrom<pb::IntrospectTokenRequest> for IntrospectToken {
    type Error = Error;

    fn try_from(msg: pb::IntrospectTokenRequest) -> Result<Self, Error> {
        let mut v = Violations::default();
        token_field(&mut v, "token", &msg.token);
        v.finish()?;
        Ok(IntrospectToken { token: msg.token })
    }
}
