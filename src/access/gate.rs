//! The gate in front of every service: a call is authenticated from its headers, before any of
//! its body is read, so that an unauthenticated caller costs the server no more than its headers
//! and what HTTP/2 flow control lets it send unread (see docs/security.md for the
//! bound). Health checks pass unauthenticated: load balancers probe them without credentials.
//! `crate::call` asks it first thing for every call.

use std::sync::Arc;

use tonic::codegen::http;

use super::{Access, AccessError, Principal};
use crate::connection::ConnectionInfo;

/// The principal the gate found, for the service to take instead of authenticating again.
#[derive(Debug, Clone)]
pub(super) struct Authenticated(pub Arc<Principal>);

/// Paths served without credentials.
const OPEN_PREFIX: &str = "/grpc.health.v1.Health/";

impl Access {
    /// Who makes `request`, from its headers and its connection's certificate, put among its
    /// extensions for the service; `None` for a path served without credentials.
    pub fn admit_headers<B>(
        &self,
        request: &mut http::Request<B>,
    ) -> Result<Option<Arc<Principal>>, AccessError> {
        if request.uri().path().starts_with(OPEN_PREFIX) {
            return Ok(None);
        }
        let certs = ConnectionInfo::peer_certs(request.extensions());
        let principal = self.identify(request.headers(), certs.as_deref().map(Vec::as_slice))?;
        request
            .extensions_mut()
            .insert(Authenticated(Arc::clone(&principal)));
        Ok(Some(principal))
    }
}
