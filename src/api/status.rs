//! The one mapping from domain errors to gRPC statuses with rich error details
//! (`google.rpc.ErrorInfo` always; `BadRequest`, `PreconditionFailure`, `QuotaFailure` when they
//! apply). Internal causes are logged here and never sent.

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, PreconditionViolation, QuotaViolation, StatusExt};

use crate::domain::{Error, Kind};

/// `ErrorInfo.domain` of every crm-iam error.
pub const ERROR_DOMAIN: &str = "iam.crm";

pub fn code(kind: Kind) -> Code {
    match kind {
        Kind::InvalidArgument => Code::InvalidArgument,
        Kind::NotFound => Code::NotFound,
        Kind::AlreadyExists => Code::AlreadyExists,
        Kind::FailedPrecondition => Code::FailedPrecondition,
        Kind::Aborted => Code::Aborted,
        Kind::ResourceExhausted => Code::ResourceExhausted,
        Kind::OutOfRange => Code::OutOfRange,
        Kind::Unauthenticated => Code::Unauthenticated,
        Kind::PermissionDenied => Code::PermissionDenied,
        Kind::Unavailable => Code::Unavailable,
        Kind::Internal => Code::Internal,
    }
}

pub fn from_error(e: Error) -> Status {
    if let Some(source) = &e.source {
        tracing::error!(error = format!("{source:#}"), reason = e.reason.as_str(), "request failed");
    }
    let mut details = ErrorDetails::with_error_info(e.reason.as_str(), ERROR_DOMAIN, HashMap::new());
    if !e.field_violations.is_empty() {
        details.set_bad_request(
            e.field_violations.into_iter().map(|v| FieldViolation::new(v.field, v.description)).collect::<Vec<_>>(),
        );
    }
    if !e.precondition_violations.is_empty() {
        details.set_precondition_failure(
            e.precondition_violations
                .into_iter()
                .map(|v| PreconditionViolation::new(v.kind, v.subject, v.description))
                .collect::<Vec<_>>(),
        );
    }
    if !e.quota_violations.is_empty() {
        details.set_quota_failure(
            e.quota_violations.into_iter().map(|v| QuotaViolation::new(v.subject, v.description)).collect::<Vec<_>>(),
        );
    }
    if e.retry_after_ms > 0 {
        details.set_retry_info(Some(std::time::Duration::from_millis(e.retry_after_ms.into())));
    }
    Status::with_error_details(code(e.kind), e.message, details)
}

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        from_error(e)
    }
}
