//! Event validation on raw protobuf bytes, as `Apply` and `Submit` receive them. It must never
//! panic, and the canonical form of an accepted event must be accepted again as the same event
//! with the same canonical form.

#![no_main]

use idguard::event::validate_event;
use idguard::proto::v1 as pb;
use prost::Message;
use time::OffsetDateTime;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(wire) = pb::RegistryEvent::decode(data) else {
        return;
    };
    let now = OffsetDateTime::from_unix_timestamp(1_795_300_000).expect("a real instant");
    if let Ok(valid) = validate_event(wire, now) {
        let again = validate_event(valid.canonical().clone(), now)
            .unwrap_or_else(|error| panic!("canonical form refused: {error}: {valid:?}"));
        assert_eq!(again, valid);
    }
});
