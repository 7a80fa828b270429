//! Load shedding: at most `max_concurrent_requests` unary calls run at once; a call beyond that is
//! answered at once with RESOURCE_EXHAUSTED (`OVERLOADED`, with a short `RetryInfo`) instead of
//! queueing without bound. Health checks, reflection and long-lived streams are not counted:
//! probes must keep answering under load, and an open stream costs memory, not CPU. Nor are the
//! methods that wait for password hashing: they take a place in the hashing queue first thing
//! (`Passwords::admit`, refused at once when full), their own bound, so a login flood never holds
//! the permits that Access.Check and the other cheap calls need.

use std::sync::Arc;

use tokio::sync::Semaphore;

use crate::{
    domain::{Error, Kind, Reason},
    proto::methods::{audit_events, auth, ownership_transfer},
};

/// Methods bounded by the password-hashing queue instead (each admits itself before any work).
const HASHING_METHODS: [&str; 4] =
    [auth::AUTHENTICATE, auth::CHANGE_PASSWORD, auth::ACCEPT_INVITATION, auth::COMPLETE_PASSWORD_RESET];

/// Paths that are never shed here.
fn exempt(path: &str) -> bool {
    path.starts_with("/grpc.health.")
        || path.starts_with("/grpc.reflection.")
        || path == audit_events::STREAM_EVENTS
        || path == ownership_transfer::WATCH_TRANSFER
        || HASHING_METHODS.contains(&path)
}

#[derive(Clone)]
pub struct ShedLayer(Arc<Semaphore>);

impl ShedLayer {
    pub fn new(max_concurrent: usize) -> ShedLayer {
        ShedLayer(Arc::new(Semaphore::new(max_concurrent.max(1))))
    }
}

impl crate::middleware::Around for ShedLayer {
    fn around<S, B>(
        &self,
        mut inner: S,
        req: http::Request<B>,
    ) -> crate::middleware::BoxFuture<Result<crate::middleware::Response, S::Error>>
    where
        S: tower::Service<http::Request<B>, Response = crate::middleware::Response> + Send + 'static,
        S::Future: Send + 'static,
        B: Send + 'static,
    {
        if exempt(req.uri().path()) {
            return Box::pin(inner.call(req));
        }
        let Ok(permit) = self.0.clone().try_acquire_owned() else {
            metrics::counter!("crm_iam_grpc_requests_shed_total").increment(1);
            let mut e = Error::new(
                Kind::ResourceExhausted,
                Reason::Overloaded,
                "the server is at its limit of concurrent calls: retry shortly (with backoff)",
            );
            e.retry_after_ms = 100;
            let response = crate::api::status::from_error(e).into_http();
            return Box::pin(async move { Ok(response) });
        };
        Box::pin(async move {
            let response = inner.call(req).await;
            drop(permit);
            response
        })
    }
}
