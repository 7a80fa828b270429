//! What the Auth operations are asked to do: requests already converted and validated field by
//! field at the edge (`api::auth`).

use std::net::IpAddr;

use secrecy::SecretString;
use uuid::Uuid;

use crate::domain::audit::RequestContext;

/// A call made without a token (logins, token exchanges): the context its events are recorded
/// with (the actor is who the call turns out to be about) and the client's address, through
/// trusted proxies (`AuthSettings::client_ip`), which the login limiter counts by.
pub struct Anonymous {
    pub ctx: RequestContext,
    pub ip: Option<IpAddr>,
}

/// A self-service password reset request (RequestPasswordReset).
pub struct RequestPasswordReset {
    pub tenant_id: String,
    pub email: String,
}

/// A login with e-mail and password (and a TOTP or recovery code when enrolled).
pub struct Authenticate {
    pub tenant_id: String,
    pub login: LoginName,
    pub password: SecretString,
    pub totp_code: String,
}

/// What names the user in a password login, normalized as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginName {
    /// Lower-cased e-mail address.
    Email(String),
    /// The username's key (NFKC, lower case).
    Username(String),
    /// E.164.
    Phone(String),
}

impl LoginName {
    pub fn kind(&self) -> &'static str {
        match self {
            LoginName::Email(_) => "email",
            LoginName::Username(_) => "username",
            LoginName::Phone(_) => "phone",
        }
    }
}

/// A refresh-token exchange.
pub struct Refresh {
    pub refresh_token: String,
}

/// A single-use token (invitation or password reset) exchanged for a new password.
pub struct SetPasswordByToken {
    pub token: String,
    pub new_password: SecretString,
}

/// The end of the calling session.
pub struct Logout;

/// A page of a user's sessions (`user_id` None: the calling user's own).
pub struct ListSessions {
    pub tenant_id: String,
    pub user_id: Option<Uuid>,
    pub include_ended: bool,
    pub after: Option<Uuid>,
    pub limit: u64,
    /// The query's filters, as its page tokens are bound to them.
    pub filters: String,
}

/// Sessions of a user to end (`user_id` None: the calling user; `session_ids` empty: all).
pub struct RevokeSessions {
    pub tenant_id: String,
    pub user_id: Option<Uuid>,
    pub session_ids: Vec<Uuid>,
    pub reason: String,
}

/// The calling user's new password, proved with the old one.
pub struct ChangePassword {
    pub old_password: SecretString,
    pub new_password: SecretString,
}

/// A new pending TOTP secret for the calling user, proved with the current password.
pub struct EnrollTotp {
    pub current_password: SecretString,
}

/// The calling user's pending TOTP secret activated with a current code.
pub struct ConfirmTotp {
    pub code: String,
}

/// TOTP turned off for a user (`user_id` None: the calling user, who proves it with `code`).
pub struct DisableTotp {
    pub tenant_id: String,
    pub user_id: Option<Uuid>,
    pub code: String,
}

/// Whether a token is a valid access token of an open session.
pub struct IntrospectToken {
    pub token: String,
}

/// A new signing key for access tokens.
pub struct RotateSigningKey {
    /// Signs at once instead of after the publication lead (a compromised key).
    pub immediate: bool,
}
