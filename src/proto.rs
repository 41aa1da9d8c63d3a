//! The generated wire types and the conversions between wire and domain forms of time.

use time::OffsetDateTime;

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
