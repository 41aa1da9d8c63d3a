//! Conversions between the use cases' types and the wire's, and the status each typed error
//! maps to: the one place where the service layer translates.

use tonic::Status;

use crate::app::feed::FeedError;
use crate::app::record::RecordPage;
use crate::app::verdicts::CheckError;
use crate::card::{FieldError, format_date};
use crate::ledger::RecordError;
use crate::proto::v1 as pb;
use crate::proto::{check_response, google};
use crate::store::{ApplyError, StoreError};

/// A status as the standard `google.rpc.Status` message, for errors carried inside a stream.
pub(super) fn rpc_status(status: &Status) -> google::rpc::Status {
    google::rpc::Status {
        code: status.code() as i32,
        message: status.message().to_owned(),
        details: Vec::new(),
    }
}

pub(super) fn invalid_argument(error: FieldError) -> Status {
    Status::invalid_argument(error.to_string())
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

/// A page of a number's record on the wire.
pub(super) fn citizen_record(page: RecordPage) -> pb::CitizenRecord {
    let cards = page
        .cards
        .into_iter()
        .map(|(card, verdict)| pb::CardRecord {
            card: Some(pb::CardRef {
                id_number: card.number.to_string(),
                issue_date: format_date(card.issued),
                expiry_date: card.expiry.to_string(),
            }),
            verdict: Some(check_response(verdict, page.sequence)),
        })
        .collect();
    pb::CitizenRecord {
        id_number: page.number.to_string(),
        cards,
        events: page.events.into_iter().map(Into::into).collect(),
        sequence: page.sequence,
        refused_withdrawals: page.refused_withdrawals,
        next_after_sequence: page.next_after.unwrap_or(0),
    }
}
