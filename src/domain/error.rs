//! The one error type of the service. Handlers turn it into a `tonic::Status` in exactly one
//! place (`api::status`); nothing below the API layer knows about gRPC.

use std::fmt;

/// Stable machine-readable reason of an error; mirrors `crm.iam.v1.ErrorReason` (without the
/// `ERROR_REASON_` prefix) and travels in the `google.rpc.ErrorInfo` detail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr)]
#[strum(serialize_all = "SCREAMING_SNAKE_CASE")]
pub enum Reason {
    InvalidArgument,
    IdempotencyKeyReused,
    Unauthenticated,
    PermissionDenied,
    TenantNotFound,
    UserNotFound,
    DepartmentNotFound,
    TenantAlreadyExists,
    EmailTaken,
    EmployeeNumberTaken,
    DepartmentNameTaken,
    EtagMismatch,
    SeatLimitReached,
    InvalidUserState,
    RestoreWindowPassed,
    DepartmentNotEmpty,
    DepartmentCycle,
    NotAvailable,
    Unavailable,
    Internal,
    InvalidPageToken,
    NotInvited,
    RoleNotFound,
    RoleNameTaken,
    BuiltinRole,
    RoleInUse,
    LastAdministrator,
    RoleNotAssigned,
    ModuleNotFound,
    ModuleAlreadyExists,
    ModuleInUse,
    CursorExpired,
    OwnsRecords,
    OwnerNotActive,
    TransferInvalid,
    TransferNotFound,
    TransferEnded,
    InvalidCredentials,
    TotpRequired,
    TooManyAttempts,
    TokenInvalid,
    PasswordChangeRequired,
    MfaRequired,
    TotpState,
    Overloaded,
    Conflict,
    TooManyStreams,
    NotificationNotFound,
    NotificationNotRetryable,
    NotificationTemplateNotFound,
    ScimTokenNotFound,
    ScimTokenExists,
    UsernameTaken,
    ScimTokenLimitReached,
    IdentityProviderNotFound,
    IdentityProviderExists,
    IdentityProviderUnavailable,
    SsoFailed,
    TenantSuspended,
}

impl Reason {
    /// The name in `google.rpc.ErrorInfo.reason`: `EMAIL_TAKEN` for `EmailTaken`.
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// What kind of failure; maps one-to-one onto a gRPC status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    InvalidArgument,
    NotFound,
    AlreadyExists,
    FailedPrecondition,
    Aborted,
    ResourceExhausted,
    OutOfRange,
    Unauthenticated,
    PermissionDenied,
    Unavailable,
    Internal,
}

/// One bad request field: its path in the request (`user.email`) and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    pub field: String,
    pub description: String,
}

/// One failed precondition: its type (`USER_STATE`), subject (`users/<id>`) and description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreconditionViolation {
    pub kind: String,
    pub subject: String,
    pub description: String,
}

/// One exhausted quota: subject (`tenants/<id>/seats`) and description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaViolation {
    pub subject: String,
    pub description: String,
}

/// An error with everything a caller needs to act on it. `message` is safe to show to the
/// caller: it never contains secrets or internal details; `source` (internal errors only) is
/// logged on the server and never sent.
pub struct Error {
    pub kind: Kind,
    pub reason: Reason,
    pub message: String,
    pub field_violations: Vec<FieldViolation>,
    pub precondition_violations: Vec<PreconditionViolation>,
    pub quota_violations: Vec<QuotaViolation>,
    /// When the caller may retry, in milliseconds (sent as `google.rpc.RetryInfo`; 0 = not said).
    pub retry_after_ms: u32,
    pub source: Option<anyhow::Error>,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(kind: Kind, reason: Reason, message: impl Into<String>) -> Self {
        Error {
            kind,
            reason,
            message: message.into(),
            field_violations: Vec::new(),
            precondition_violations: Vec::new(),
            quota_violations: Vec::new(),
            retry_after_ms: 0,
            source: None,
        }
    }

    /// INVALID_ARGUMENT naming one bad field.
    pub fn invalid_field(field: impl Into<String>, description: impl Into<String>) -> Self {
        let mut v = Violations::default();
        v.add(field, description);
        v.into_error()
    }

    pub fn not_found(reason: Reason, message: impl Into<String>) -> Self {
        Error::new(Kind::NotFound, reason, message)
    }

    pub fn already_exists(reason: Reason, message: impl Into<String>) -> Self {
        Error::new(Kind::AlreadyExists, reason, message)
    }

    /// FAILED_PRECONDITION with one violation.
    pub fn precondition(
        reason: Reason,
        kind: &str,
        subject: impl Into<String>,
        description: impl Into<String>,
    ) -> Self {
        let description = description.into();
        let mut e = Error::new(Kind::FailedPrecondition, reason, description.clone());
        e.precondition_violations.push(PreconditionViolation {
            kind: kind.to_owned(),
            subject: subject.into(),
            description,
        });
        e
    }

    pub fn etag_mismatch(what: &str) -> Self {
        Error::new(
            Kind::Aborted,
            Reason::EtagMismatch,
            format!("the {what} was changed by someone else since the etag was read: read it again and retry"),
        )
    }

    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Error::new(Kind::Unauthenticated, Reason::Unauthenticated, message)
    }

    pub fn permission_denied(message: impl Into<String>) -> Self {
        Error::new(Kind::PermissionDenied, Reason::PermissionDenied, message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Error::new(Kind::Unavailable, Reason::Unavailable, message)
    }

    /// An unexpected failure. The cause is logged, the caller sees a generic message.
    pub fn internal(source: impl Into<anyhow::Error>) -> Self {
        let mut e = Error::new(Kind::Internal, Reason::Internal, "internal error");
        e.source = Some(source.into());
        e
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Error");
        d.field("kind", &self.kind).field("reason", &self.reason).field("message", &self.message);
        if !self.field_violations.is_empty() {
            d.field("field_violations", &self.field_violations);
        }
        if !self.precondition_violations.is_empty() {
            d.field("precondition_violations", &self.precondition_violations);
        }
        if let Some(source) = &self.source {
            d.field("source", source);
        }
        d.finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(source) = &self.source {
            write!(f, ": {source:#}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_ref().map(|s| s.as_ref() as &(dyn std::error::Error + 'static))
    }
}

/// Collects every bad field of a request, so the caller learns about all of them at once.
#[derive(Debug, Default)]
pub struct Violations(Vec<FieldViolation>);

impl Violations {
    pub fn add(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.0.push(FieldViolation { field: field.into(), description: description.into() });
    }

    /// Runs a field check, recording its failure under `field`; returns the parsed value if it passed.
    pub fn check<T>(&mut self, field: &str, result: Result<T, String>) -> Option<T> {
        match result {
            Ok(v) => Some(v),
            Err(description) => {
                self.add(field, description);
                None
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Adds every violation of `other`.
    pub fn extend(&mut self, other: Violations) {
        self.0.extend(other.0);
    }

    pub fn into_error(self) -> Error {
        let message = match self.0.as_slice() {
            [one] => format!("invalid {}: {}", one.field, one.description),
            many => format!(
                "{} invalid fields: {}",
                many.len(),
                many.iter().map(|v| v.field.as_str()).collect::<Vec<_>>().join(", ")
            ),
        };
        let mut e = Error::new(Kind::InvalidArgument, Reason::InvalidArgument, message);
        e.field_violations = self.0;
        e
    }

    /// `Ok(())` when no field was bad, otherwise INVALID_ARGUMENT listing all of them.
    pub fn finish(self) -> Result<()> {
        if self.0.is_empty() { Ok(()) } else { Err(self.into_error()) }
    }
}

#[cfg(test)]
mod names {
    use super::Reason;
    use crate::domain::{access::Scope, audit::ActorKind, ownership::TransferState, user::UserState};

    /// The wire and stored names are the contract: derived, they must still read as before.
    #[test]
    fn enum_names_are_the_published_ones() {
        assert_eq!(Reason::EmailTaken.as_str(), "EMAIL_TAKEN");
        assert_eq!(Reason::TooManyStreams.as_str(), "TOO_MANY_STREAMS");
        assert_eq!(Reason::MfaRequired.as_str(), "MFA_REQUIRED");
        assert_eq!(Scope::Department.as_str(), "DEPARTMENT");
        assert_eq!(ActorKind::parse("SERVICE"), Some(ActorKind::Service));
        for s in UserState::ALL {
            assert_eq!(UserState::parse(s.as_str()), Some(s));
        }
        assert_eq!(UserState::Deactivated.as_str(), "DEACTIVATED");
        assert_eq!(TransferState::parse("CANCELLED"), Some(TransferState::Cancelled));
        assert_eq!(UserState::parse("active"), None, "names are case-sensitive, as stored");
    }
}
