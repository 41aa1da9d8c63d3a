//! The gRPC layer: translates between the wire types and the registry, and maps errors onto
//! status codes. No registry logic lives here.

pub mod registry;
pub mod verification;

use time::OffsetDateTime;
use tonic::Status;

use crate::card::FieldError;
use crate::proto::{self, v1 as pb};
use crate::registry::{Reason, Verdict};
use crate::store::{ApplyError, StoreError};

/// The wire form of a verdict reflecting `sequence`.
fn check_response(verdict: Verdict, sequence: u64) -> pb::CheckResponse {
    let detail = verdict.to_string();
    match verdict {
        Verdict::Valid => pb::CheckResponse {
            status: pb::CardStatus::Valid.into(),
            reason: pb::Reason::Unspecified.into(),
            invalid_since: None,
            sequence,
            detail,
        },
        Verdict::Invalid { reason, since } => pb::CheckResponse {
            status: pb::CardStatus::Invalid.into(),
            reason: wire_reason(reason).into(),
            invalid_since: Some(proto::timestamp(since)),
            sequence,
            detail,
        },
    }
}

/// The answer for a malformed item of a batch or stream: it names the field and the rule.
fn malformed_response(error: &FieldError, sequence: u64) -> pb::CheckResponse {
    pb::CheckResponse {
        status: pb::CardStatus::Malformed.into(),
        reason: pb::Reason::Unspecified.into(),
        invalid_since: None,
        sequence,
        detail: error.to_string(),
    }
}

fn wire_reason(reason: Reason) -> pb::Reason {
    match reason {
        Reason::FirstGeneration => pb::Reason::FirstGeneration,
        Reason::CitizenCancelled => pb::Reason::CitizenCancelled,
        Reason::Revoked => pb::Reason::Revoked,
        Reason::Stolen => pb::Reason::Stolen,
        Reason::Lost => pb::Reason::Lost,
        Reason::Superseded => pb::Reason::Superseded,
        Reason::Expired => pb::Reason::Expired,
    }
}

fn invalid_argument(error: FieldError) -> Status {
    Status::invalid_argument(error.to_string())
}

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

impl From<StoreError> for Status {
    fn from(error: StoreError) -> Self {
        tracing::error!(%error, "storage failure");
        Status::internal(format!("storage failure: {error}"))
    }
}

impl From<ApplyError> for Status {
    fn from(error: ApplyError) -> Self {
        match error {
            ApplyError::Invalid(error) => invalid_argument(error),
            ApplyError::Conflict { .. } => Status::already_exists(error.to_string()),
            ApplyError::Closed => Status::unavailable(error.to_string()),
            ApplyError::Store(error) => error.into(),
        }
    }
}
