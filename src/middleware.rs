//! One shape for the server's own tower middleware (authentication, metrics, load shedding): each
//! says what it does around the inner service in [`Around::around`]; [`Layer`] and [`Service`]
//! do the tower plumbing once (readiness is the inner service's; the clone that was polled ready
//! serves the call, tower's usual swap).

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
pub type Response = http::Response<tonic::body::Body>;

/// What a middleware does with a request and the service behind it.
pub trait Around: Clone + Send + Sync + 'static {
    fn around<S, B>(&self, inner: S, req: http::Request<B>) -> BoxFuture<Result<Response, S::Error>>
    where
        S: tower::Service<http::Request<B>, Response = Response> + Send + 'static,
        S::Future: Send + 'static,
        B: Send + 'static;
}

/// The tower layer of an [`Around`].
#[derive(Clone)]
pub struct Layer<A>(pub A);

impl<S, A: Around> tower::Layer<S> for Layer<A> {
    type Service = Service<S, A>;
    fn layer(&self, inner: S) -> Service<S, A> {
        Service { inner, around: self.0.clone() }
    }
}

#[derive(Clone)]
pub struct Service<S, A> {
    inner: S,
    around: A,
}

impl<S, A, B> tower::Service<http::Request<B>> for Service<S, A>
where
    S: tower::Service<http::Request<B>, Response = Response> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
    A: Around,
{
    type Response = Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        self.around.around(inner, req)
    }
}
