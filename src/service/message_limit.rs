//! Per-method bounds on request messages, enforced from each message's 5-byte gRPC prefix before
//! its body is buffered.
//!
//! tonic bounds decoding per service only, and `Verification` must take a batch of 10,000 cards
//! (about 450 KB): without this, every single check could make the server buffer a megabyte. A
//! check needs a few hundred bytes, an event at most about 1.3 KB.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tonic::codegen::{Bytes, http};

/// The largest request message of `method` (a gRPC path), in bytes.
pub fn max_request_bytes(method: &str) -> usize {
    match method {
        "/idguard.v1.Verification/CheckBatch" => crate::server::MAX_CHECK_REQUEST_BYTES,
        "/idguard.v1.Verification/Check"
        | "/idguard.v1.Verification/CheckStream"
        | "/idguard.v1.Registry/Apply"
        | "/idguard.v1.Registry/Submit" => 16 << 10,
        _ => 4 << 10,
    }
}

/// The [`tower::Layer`] that bounds each request message by its method's limit.
#[derive(Debug, Clone, Copy, Default)]
pub struct MessageLimitLayer;

impl<S> tower::Layer<S> for MessageLimitLayer {
    type Service = LimitMessages<S>;

    fn layer(&self, inner: S) -> Self::Service {
        LimitMessages { inner }
    }
}

/// See [`MessageLimitLayer`].
#[derive(Debug, Clone)]
pub struct LimitMessages<S> {
    inner: S,
}

impl<S> tower::Service<http::Request<tonic::body::Body>> for LimitMessages<S>
where
    S: tower::Service<http::Request<tonic::body::Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, context: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(context)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let method = request.uri().path();
        let limit = max_request_bytes(method);
        let method = crate::telemetry::metrics::method_label(method);
        self.inner.call(request.map(|body| {
            tonic::body::Body::new(Limited {
                body,
                method,
                limit,
                prefixes: Prefixes::default(),
            })
        }))
    }
}

/// Follows the gRPC framing of a body's bytes (each message: a flag byte, a 4-byte big-endian
/// length, the message), however the bytes are split into frames.
#[derive(Debug, Default)]
struct Prefixes {
    prefix: [u8; 5],
    prefix_len: usize,
    left_in_message: usize,
}

impl Prefixes {
    /// Reads `data`; `Err` with the announced length of the first message longer than `limit`.
    fn scan(&mut self, mut data: &[u8], limit: usize) -> Result<(), usize> {
        while !data.is_empty() {
            if self.left_in_message > 0 {
                let skipped = data.len().min(self.left_in_message);
                data = &data[skipped..];
                self.left_in_message -= skipped;
                continue;
            }
            let taken = data.len().min(5 - self.prefix_len);
            self.prefix[self.prefix_len..self.prefix_len + taken].copy_from_slice(&data[..taken]);
            data = &data[taken..];
            self.prefix_len += taken;
            if self.prefix_len == 5 {
                self.prefix_len = 0;
                let [_, a, b, c, d] = self.prefix;
                let announced = u32::from_be_bytes([a, b, c, d]) as usize;
                if announced > limit {
                    return Err(announced);
                }
                self.left_in_message = announced;
            }
        }
        Ok(())
    }
}

pin_project_lite::pin_project! {
    /// A request body that fails as soon as a message's prefix announces more than `limit`.
    struct Limited {
        #[pin]
        body: tonic::body::Body,
        method: &'static str,
        limit: usize,
        prefixes: Prefixes,
    }
}

impl http_body::Body for Limited {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, tonic::Status>>> {
        let this = self.project();
        let frame = ready!(this.body.poll_frame(context));
        if let Some(Ok(frame)) = &frame
            && let Some(data) = frame.data_ref()
            && let Err(announced) = this.prefixes.scan(data, *this.limit)
        {
            // OUT_OF_RANGE, as tonic answers a message over a service's limit.
            return Poll::Ready(Some(Err(tonic::Status::out_of_range(format!(
                "{}: a request message of {announced} bytes is too large: this method takes at \
                 most {} bytes per message",
                this.method, this.limit
            )))));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_check_takes_kilobytes_and_a_batch_a_megabyte() {
        assert_eq!(
            max_request_bytes("/idguard.v1.Verification/Check"),
            16 << 10
        );
        assert_eq!(
            max_request_bytes("/idguard.v1.Verification/CheckBatch"),
            1 << 20
        );
        assert_eq!(max_request_bytes("/idguard.v1.Registry/GetRecord"), 4 << 10);
    }

    #[test]
    fn prefixes_are_found_however_the_bytes_are_split() {
        let mut body = Vec::new();
        for len in [3u32, 0, 10] {
            body.push(0);
            body.extend_from_slice(&len.to_be_bytes());
            body.extend(std::iter::repeat_n(7, len as usize));
        }
        body.push(0);
        body.extend_from_slice(&11u32.to_be_bytes());
        for split in 1..body.len() {
            let mut prefixes = Prefixes::default();
            let (head, tail) = body.split_at(split);
            let scanned = prefixes
                .scan(head, 10)
                .and_then(|()| prefixes.scan(tail, 10));
            assert_eq!(scanned, Err(11), "split at {split}");
        }
        let mut prefixes = Prefixes::default();
        assert_eq!(prefixes.scan(&body[..body.len() - 5], 10), Ok(()));
    }
}
