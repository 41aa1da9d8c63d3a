//! Every call at the server's edge, in one layer around the services: counted in flight on its
//! connection, authenticated from its headers (the gate, before any of its body is read), timed
//! and counted by method and status, and logged once its status is known.
//!
//! One layer, not four: each tower layer boxed a future and wrapped the response body, and a
//! tracing span was made for every call even at the default level, where an answered call logs
//! nothing. At tens of thousands of unary checks a second on two cores, those were about a sixth
//! of the server's time (see docs/data-at-scale.md). The span is now made as the call starts only
//! when its lines will be read (`debug` on, or spans exported); otherwise a call that ends refused
//! or failed gets it then, for its own line, with the same fields.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use tonic::codegen::{BoxFuture, Bytes, http};
use tracing::{Instrument, Span};

use crate::access::{Access, Principal};
use crate::connection::{CallInFlight, ConnectionInfo};
use crate::telemetry::metrics::{method_slot, record_call, slot_method};
use crate::telemetry::{answered_calls_shown, grpc_status, log_call, rpc_span};

/// The [`tower::Layer`] that puts [`Calls`] around the services.
#[derive(Debug, Clone)]
pub struct CallLayer {
    access: Arc<Access>,
}

impl CallLayer {
    pub fn new(access: Arc<Access>) -> Self {
        Self { access }
    }
}

impl<S> tower::Layer<S> for CallLayer {
    type Service = Calls<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Calls {
            inner,
            access: Arc::clone(&self.access),
        }
    }
}

/// See the module documentation.
#[derive(Debug, Clone)]
pub struct Calls<S> {
    inner: S,
    access: Arc<Access>,
}

/// A call's method as logged: its path. A method this server implements is named by its
/// metric label, kept for the whole server; an invented path is copied.
#[derive(Debug)]
enum Method {
    Known(&'static str),
    Other(String),
}

impl Method {
    fn as_str(&self) -> &str {
        match self {
            Self::Known(path) => path,
            Self::Other(path) => path,
        }
    }
}

/// What is logged of a call when its status is known.
#[derive(Debug)]
struct Ending {
    method: Method,
    principal: Option<Arc<Principal>>,
    /// Made at the start, or disabled, in which case a refusal or failure makes its own.
    span: Span,
    /// To the response headers: all of a unary call's handling.
    latency: Duration,
}

impl Ending {
    fn log(self, status: tonic::Code, stream: Duration) {
        let principal = self
            .principal
            .as_ref()
            .map(|principal| principal.name.as_str());
        let span = if self.span.is_disabled() {
            // Answered calls log at `debug`, which is off, or the span would have been made.
            if status == tonic::Code::Ok {
                return;
            }
            rpc_span::<()>(self.method.as_str(), principal, None)
        } else {
            self.span
        };
        span.in_scope(|| log_call(status, self.latency, stream, &span));
    }
}

impl<S> tower::Service<http::Request<tonic::body::Body>> for Calls<S>
where
    S: tower::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
        > + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    type Response = http::Response<CallBody>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, context: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(context)
    }

    fn call(&mut self, mut request: http::Request<tonic::body::Body>) -> Self::Future {
        let started = Instant::now();
        let in_flight = ConnectionInfo::call_started(request.extensions());
        let path = request.uri().path();
        let slot = method_slot(path);
        let method = match slot_method(slot) {
            Some(known) => Method::Known(known),
            None => Method::Other(path.to_owned()),
        };
        let admitted = self.access.admit_headers(&mut request);
        let principal = admitted.as_ref().ok().cloned().flatten();
        let span = if answered_calls_shown() {
            let name = principal.as_ref().map(|principal| principal.name.as_str());
            rpc_span(method.as_str(), name, Some(&request))
        } else {
            Span::none()
        };
        let mut ending = Ending {
            method,
            principal,
            span,
            latency: Duration::ZERO,
        };
        let call = match admitted {
            Ok(_) => {
                // The clone left in its place waits for the next `poll_ready`: the one that
                // `poll_ready` made ready is the one to call.
                let ready = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, ready);
                Ok(inner.call(request).instrument(ending.span.clone()))
            }
            Err(refused) => Err(tonic::Status::from(refused)),
        };
        Box::pin(async move {
            let response = match call {
                Ok(call) => call.await?,
                Err(refused) => refused.into_http(),
            };
            ending.latency = started.elapsed();
            let status = grpc_status(response.headers());
            record_call(slot, status.unwrap_or(tonic::Code::Ok), ending.latency);
            let ending = match status {
                // A trailers-only answer (an error before any message) carries its status here.
                Some(status) => {
                    ending.log(status, Duration::ZERO);
                    None
                }
                None => Some(ending),
            };
            let answered = Instant::now();
            Ok(response.map(|body| CallBody {
                body,
                ending,
                answered,
                _in_flight: in_flight,
            }))
        })
    }
}

pin_project_lite::pin_project! {
    /// A response body that logs its call when its trailers (or its end) bring the status, and
    /// keeps the call counted in flight until it ends or is dropped.
    pub struct CallBody {
        #[pin]
        body: tonic::body::Body,
        ending: Option<Ending>,
        answered: Instant,
        _in_flight: Option<CallInFlight>,
    }
}

impl http_body::Body for CallBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, tonic::Status>>> {
        let this = self.project();
        let span = match this.ending {
            Some(ending) if !ending.span.is_disabled() => Some(ending.span.clone()),
            _ => None,
        };
        let _entered = span.as_ref().map(Span::enter);
        let frame = ready!(this.body.poll_frame(context));
        let status = match &frame {
            Some(Ok(frame)) => frame
                .trailers_ref()
                .map(|trailers| grpc_status(trailers).unwrap_or(tonic::Code::Ok)),
            Some(Err(_)) => None,
            None => Some(tonic::Code::Ok),
        };
        if let Some(status) = status
            && let Some(ending) = this.ending.take()
        {
            ending.log(status, this.answered.elapsed());
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}
