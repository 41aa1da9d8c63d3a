//! The gate in front of every service: a call is authenticated from its headers, before any of
//! its body is read, so that an unauthenticated caller costs the server no more than its headers
//! and what HTTP/2 flow control lets it send unread (see docs/security.md for the
//! bound). Health checks pass unauthenticated: load balancers probe them without credentials.

use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::codegen::{BoxFuture, http};

use super::{Access, Principal};
use crate::connection::{ConnectionInfo, take_ready};

/// The principal the gate found, for the service to take instead of authenticating again.
#[derive(Debug, Clone)]
pub(super) struct Authenticated(pub Arc<Principal>);

/// Paths served without credentials.
const OPEN_PREFIX: &str = "/grpc.health.v1.Health/";

/// The [`tower::Layer`] that puts [`Gate`] around the router.
#[derive(Debug, Clone)]
pub struct GateLayer {
    access: Arc<Access>,
}

impl GateLayer {
    pub fn new(access: Arc<Access>) -> Self {
        Self { access }
    }
}

impl<S> tower::Layer<S> for GateLayer {
    type Service = Gate<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Gate {
            inner,
            access: Arc::clone(&self.access),
        }
    }
}

/// Answers an unauthenticated call UNAUTHENTICATED from its headers; passes the others on with
/// their principal.
#[derive(Debug, Clone)]
pub struct Gate<S> {
    inner: S,
    access: Arc<Access>,
}

impl<S, B, R> tower::Service<http::Request<B>> for Gate<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>> + Clone + Send + 'static,
    S::Future: Send,
    B: Send + 'static,
    R: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, context: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(context)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let mut inner = take_ready(&mut self.inner);
        if !request.uri().path().starts_with(OPEN_PREFIX) {
            let certs = ConnectionInfo::peer_certs(request.extensions());
            match self
                .access
                .identify(request.headers(), certs.as_deref().map(Vec::as_slice))
            {
                Ok(principal) => {
                    request.extensions_mut().insert(Authenticated(principal));
                }
                Err(error) => {
                    let status = tonic::Status::from(error);
                    return Box::pin(async move { Ok(status.into_http()) });
                }
            }
        }
        Box::pin(inner.call(request))
    }
}
