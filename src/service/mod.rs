//! The gRPC layer: authorizes callers, hands requests to the use cases in [`crate::app`], and
//! translates between their types and the wire's ([`conversions`], the one place that does).

pub mod admin;
mod conversions;
pub mod message_limit;
pub mod registry;
pub mod verification;

use std::task::Poll;
use std::time::Duration;

use time::OffsetDateTime;
use tokio::sync::watch;
use tokio_stream::Stream;
use tonic::Status;
use tonic::metadata::MetadataMap;

use crate::app::verdicts::MAX_SEQUENCE_WAIT;
use conversions::{invalid_argument, rpc_status};

/// Becomes `true` when the server starts shutting down; long-lived streams then end.
pub type Draining = watch::Receiver<bool>;

/// The next message of a client stream, or UNAVAILABLE (saying `why`) once the server drains, so
/// that shutdown does not wait for clients that never hang up.
async fn next_message<T>(
    stream: &mut tonic::Streaming<T>,
    draining: &mut Draining,
    why: &'static str,
) -> Result<Option<T>, Status> {
    tokio::select! {
        next = stream.message() => next,
        _ = draining.wait_for(|draining| *draining) => Err(Status::unavailable(why)),
    }
}

/// The next messages of a client stream: the first waited for, then up to `max` in all of those
/// that have already arrived, so that a busy stream is answered a batch at a time. Returns them
/// with the status to end the stream with, if it failed or the server drains; neither means the
/// client has finished.
async fn gather_messages<T>(
    stream: &mut tonic::Streaming<T>,
    draining: &mut Draining,
    max: usize,
    why: &'static str,
) -> (Vec<T>, Option<Status>) {
    let first = match next_message(stream, draining, why).await {
        Ok(Some(first)) => first,
        Ok(None) => return (Vec::new(), None),
        Err(status) => return (Vec::new(), Some(status)),
    };
    let mut gathered = vec![first];
    let ended = std::future::poll_fn(|context| {
        while gathered.len() < max {
            match std::pin::Pin::new(&mut *stream).poll_next(context) {
                Poll::Ready(Some(Ok(message))) => gathered.push(message),
                Poll::Ready(Some(Err(status))) => return Poll::Ready(Some(status)),
                Poll::Ready(None) | Poll::Pending => break,
            }
        }
        Poll::Ready(None)
    })
    .await;
    (gathered, ended)
}

/// How long a call may wait for `min_sequence`: until shortly before its own deadline
/// (`grpc-timeout`), when the transport would turn it into CANCELLED, and never more than
/// [`MAX_SEQUENCE_WAIT`].
fn sequence_wait_budget(metadata: &MetadataMap) -> Duration {
    request_deadline(metadata).map_or(MAX_SEQUENCE_WAIT, |deadline| {
        let margin = (deadline / 50).max(Duration::from_millis(5));
        deadline.saturating_sub(margin).min(MAX_SEQUENCE_WAIT)
    })
}

/// The call's deadline from its `grpc-timeout` header (`<digits><unit>`, unit one of
/// `H M S m u n`), if it has a valid one.
fn request_deadline(metadata: &MetadataMap) -> Option<Duration> {
    let value = metadata.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount.saturating_mul(3600)),
        "M" => Duration::from_secs(amount.saturating_mul(60)),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_headers_are_read_in_every_unit() {
        let deadline = |value: &str| {
            let mut metadata = MetadataMap::new();
            metadata.insert("grpc-timeout", value.parse().unwrap());
            request_deadline(&metadata)
        };
        assert_eq!(deadline("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(deadline("3M"), Some(Duration::from_secs(180)));
        assert_eq!(deadline("4S"), Some(Duration::from_secs(4)));
        assert_eq!(deadline("250m"), Some(Duration::from_millis(250)));
        assert_eq!(deadline("7u"), Some(Duration::from_micros(7)));
        assert_eq!(deadline("9n"), Some(Duration::from_nanos(9)));
        assert_eq!(deadline("5x"), None);
        assert_eq!(deadline("m"), None);
        assert_eq!(request_deadline(&MetadataMap::new()), None);
    }
}
