//! The gRPC layer: authorizes callers, translates between the wire types and the use cases in
//! [`crate::app`], and maps errors onto status codes.

pub mod admin;
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

use crate::app::feed::FeedError;
use crate::app::verdicts::{CheckError, MAX_SEQUENCE_WAIT};
use crate::card::FieldError;
use crate::ledger::RecordError;
use crate::proto::google;
use crate::store::{ApplyError, StoreError};

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

/// A status as the standard `google.rpc.Status` message, for errors carried inside a stream.
fn rpc_status(status: &Status) -> google::rpc::Status {
    google::rpc::Status {
        code: status.code() as i32,
        message: status.message().to_owned(),
        details: Vec::new(),
    }
}

fn invalid_argument(error: FieldError) -> Status {
    Status::invalid_argument(error.to_string())
}

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

impl From<StoreError> for Status {
    /// The failure goes to the log, under an incident number; the caller gets only the number,
    /// never a path or RocksDB's text.
    fn from(error: StoreError) -> Self {
        static INCIDENTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let incident = INCIDENTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::error!(%error, incident, "storage failure");
        Status::internal(format!(
            "internal storage failure (incident {incident} in this node's log): nothing may be \
             concluded from this answer; retry, or ask another node"
        ))
    }
}

impl From<CheckError> for Status {
    fn from(error: CheckError) -> Self {
        match error {
            CheckError::Store(error) => error.into(),
            CheckError::TooFarAhead { .. } => Status::out_of_range(error.to_string()),
            CheckError::NotReached { .. } => Status::deadline_exceeded(error.to_string()),
            CheckError::Incomplete(_) => Status::internal(error.to_string()),
        }
    }
}

impl From<FeedError> for Status {
    fn from(error: FeedError) -> Self {
        match error {
            FeedError::Store(error) => error.into(),
            FeedError::ShuttingDown => Status::unavailable(error.to_string()),
        }
    }
}

impl From<ApplyError> for Status {
    fn from(error: ApplyError) -> Self {
        match error {
            ApplyError::Invalid(error) => invalid_argument(error),
            ApplyError::Conflict { .. } => Status::already_exists(error.to_string()),
            ApplyError::Denied(_) => Status::permission_denied(error.to_string()),
            ApplyError::Quota(_) => Status::resource_exhausted(error.to_string()),
            // A message out of turn is the cluster follower's to read again.
            ApplyError::Closed | ApplyError::OutOfTurn { .. } => {
                Status::unavailable(error.to_string())
            }
            ApplyError::FollowsStream(_) => Status::failed_precondition(error.to_string()),
            ApplyError::Store(error) => error.into(),
        }
    }
}

impl From<RecordError> for Status {
    fn from(error: RecordError) -> Self {
        match error {
            RecordError::Apply(error) => error.into(),
            RecordError::Unavailable(_) => Status::unavailable(error.to_string()),
            RecordError::Unreadable(_) => Status::internal(error.to_string()),
        }
    }
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
