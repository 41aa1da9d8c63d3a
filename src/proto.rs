//! The generated wire types, and the conversions between their wire and domain forms that more
//! than one module needs: instants, verdicts, reasons and recorded events' kinds.

use time::OffsetDateTime;

use crate::card::FieldError;
use crate::event::Kind;
use crate::registry::{Reason, Verdict};

/// The generated packages, nested as their names are so that cross-package references resolve.
pub mod idguard {
    /// `idguard.v1`, the public API (`proto/idguard/v1/idguard.proto`).
    pub mod v1 {
        tonic::include_proto!("idguard.v1");
    }
}

/// `google.rpc`, for the standard `Status` carried in acks.
pub mod google {
    pub mod rpc {
        tonic::include_proto!("google.rpc");
    }
}

pub use idguard::v1;

/// Every file of the API compiled, with its imports: what server reflection serves, so that
/// grpcurl, grpcui, Postman and Kreya can call idguard without the `.proto` files.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/idguard_descriptors.bin"));

/// The HTTP/2 path of every method of the API (`/idguard.v1.Verification/Check`, ...).
pub const RPC_METHODS: &[&str] = include!(concat!(env!("OUT_DIR"), "/rpc_methods.rs"));

/// The wire form of an instant.
pub fn timestamp(at: OffsetDateTime) -> prost_types::Timestamp {
    let nanos = at.unix_timestamp_nanos();
    prost_types::Timestamp {
        seconds: nanos.div_euclid(1_000_000_000) as i64,
        nanos: nanos.rem_euclid(1_000_000_000) as i32,
    }
}

/// The domain form of a wire instant; `None` when it is out of range or not normalised.
pub fn instant(at: &prost_types::Timestamp) -> Option<OffsetDateTime> {
    if !(0..1_000_000_000).contains(&at.nanos) {
        return None;
    }
    let nanos = i128::from(at.seconds) * 1_000_000_000 + i128::from(at.nanos);
    OffsetDateTime::from_unix_timestamp_nanos(nanos).ok()
}

/// The wire form of a verdict reflecting `sequence`.
///
/// A valid card gets no `detail`: the status says it all, and on the hot path (batches of
/// thousands of cards with no record) the text would be most of what is allocated and sent.
pub fn check_response(verdict: Verdict, sequence: u64) -> v1::CheckResponse {
    match verdict {
        Verdict::Valid => v1::CheckResponse {
            status: v1::CardStatus::Valid.into(),
            reason: v1::Reason::Unspecified.into(),
            invalid_since: None,
            sequence,
            detail: String::new(),
            signature: None,
        },
        Verdict::Invalid { reason, since } => v1::CheckResponse {
            status: v1::CardStatus::Invalid.into(),
            reason: wire_reason(reason).into(),
            invalid_since: Some(timestamp(since)),
            sequence,
            detail: verdict.to_string(),
            signature: None,
        },
    }
}

/// The answer for a malformed item of a batch or stream: it names the field and the rule.
pub fn malformed_response(error: &FieldError, sequence: u64) -> v1::CheckResponse {
    v1::CheckResponse {
        status: v1::CardStatus::Malformed.into(),
        reason: v1::Reason::Unspecified.into(),
        invalid_since: None,
        sequence,
        detail: error.to_string(),
        signature: None,
    }
}

/// The kind of a recorded event, as the rules name it.
pub fn event_kind(kind: &v1::registry_event::Kind) -> Kind {
    use v1::registry_event::Kind as Wire;
    match kind {
        Wire::Reported(reported) if reported.kind() == v1::LossKind::Stolen => Kind::Stolen,
        Wire::Reported(_) => Kind::Lost,
        Wire::Issued(_) => Kind::Issued,
        Wire::Revoked(_) => Kind::Revoked,
        Wire::Cancelled(_) => Kind::Cancelled,
        Wire::Withdrawn(_) => Kind::Withdrawn,
    }
}

/// The wire form of a reason.
pub fn wire_reason(reason: Reason) -> v1::Reason {
    match reason {
        Reason::FirstGeneration => v1::Reason::FirstGeneration,
        Reason::CitizenCancelled => v1::Reason::CitizenCancelled,
        Reason::Revoked => v1::Reason::Revoked,
        Reason::Stolen => v1::Reason::Stolen,
        Reason::Lost => v1::Reason::Lost,
        Reason::Superseded => v1::Reason::Superseded,
        Reason::Expired => v1::Reason::Expired,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_round_trip_including_before_1970() {
        for at in [
            time::macros::datetime!(1969-12-31 23:59:59.5 UTC),
            time::macros::datetime!(2026-11-22 04:08:42.123456789 UTC),
        ] {
            assert_eq!(instant(&timestamp(at)), Some(at));
        }
        let bad = prost_types::Timestamp {
            seconds: 0,
            nanos: -1,
        };
        assert_eq!(instant(&bad), None);
    }
}
