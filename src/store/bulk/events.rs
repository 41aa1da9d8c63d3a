//! Step 4: the accepted events, in file order, become the log's next sequences; each change is
//! encoded around the event's canonical bytes as they were spooled.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use rocksdb::Options;

use super::ordinals::Sequences;
use super::spool::{WITHDRAWAL_HEAD, open_spool, read_framed};
use super::sst::SstFiles;
use super::{Collected, PROGRESS_EVERY, step_done};
use crate::proto;
use crate::registry::Grant;
use crate::store::codec;
use crate::store::{CF_EVENTS, StoreError};

impl Collected {
    /// Step 4: the accepted events in file order become the log's next sequences. Adds the events
    /// read to `done` as it goes; runs beside the fold, which reports the progress of both.
    pub(super) fn write_events(
        &self,
        sst_options: &Options,
        sequences: &Sequences,
        done: &AtomicU64,
    ) -> Result<Vec<PathBuf>, StoreError> {
        let started = Instant::now();
        let mut input = open_spool(&self.work.join("events.spool"))?;
        let mut ssts = SstFiles::new(sst_options, &self.work, CF_EVENTS);
        let recorded_at = proto::timestamp(self.now);
        let (mut head, mut canonical, mut change) = (Vec::new(), Vec::new(), Vec::new());
        for ordinal in 0..self.events {
            read_framed(&mut input, &mut head, &mut canonical)?;
            if ordinal % PROGRESS_EVERY == PROGRESS_EVERY - 1 {
                done.fetch_add(PROGRESS_EVERY, Ordering::Relaxed);
            }
            let Some(sequence) = sequences.of(ordinal) else {
                continue;
            };
            encode_change(
                sequence,
                &canonical,
                &recorded_at,
                head == WITHDRAWAL_HEAD,
                &mut change,
            );
            ssts.put(&codec::sequence_key(sequence), &change)?;
        }
        // The spool is as large as the input: give the disk back before the next steps.
        drop(input);
        std::fs::remove_file(self.work.join("events.spool"))?;
        let ssts = ssts.finish()?;
        step_done("writing events", started);
        Ok(ssts)
    }
}

/// The `recorded_by` of imported events: they were loaded by an operator, not sent by a principal.
const IMPORT_PRINCIPAL: &str = "import";

/// The `RegistryChange` bytes prost would write, built around already-encoded event bytes.
fn encode_change(
    sequence: u64,
    canonical: &[u8],
    recorded_at: &prost_types::Timestamp,
    withdrawal: bool,
    out: &mut Vec<u8>,
) {
    use prost::encoding::{WireType, encode_key, encode_varint};
    out.clear();
    prost::encoding::uint64::encode(1, &sequence, out);
    encode_key(2, WireType::LengthDelimited, out);
    encode_varint(canonical.len() as u64, out);
    out.extend_from_slice(canonical);
    prost::encoding::message::encode(3, recorded_at, out);
    encode_key(4, WireType::LengthDelimited, out);
    encode_varint(IMPORT_PRINCIPAL.len() as u64, out);
    out.extend_from_slice(IMPORT_PRINCIPAL.as_bytes());
    if withdrawal {
        // As the writer records a withdrawal: with its sender's grant, here the operator's.
        prost::encoding::message::encode(5, &Grant::everything().to_wire(), out);
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;
    use crate::proto::v1 as pb;

    #[test]
    fn changes_are_encoded_as_prost_encodes_them() {
        let event = pb::RegistryEvent {
            report_id: "r-1".into(),
            authority: "440305".into(),
            ..Default::default()
        };
        let recorded_at = prost_types::Timestamp {
            seconds: 1_800_000_000,
            nanos: 5,
        };
        for withdrawal in [false, true] {
            let mut ours = Vec::new();
            encode_change(
                300,
                &event.encode_to_vec(),
                &recorded_at,
                withdrawal,
                &mut ours,
            );
            let theirs = pb::RegistryChange {
                sequence: 300,
                event: Some(event.clone()),
                recorded_at: Some(recorded_at),
                recorded_by: IMPORT_PRINCIPAL.into(),
                grant: withdrawal.then(|| Grant::everything().to_wire()),
            }
            .encode_to_vec();
            assert_eq!(ours, theirs);
        }
    }
}
