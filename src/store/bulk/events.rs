//! Step 4: the accepted events, in file order, become the log's next sequences; each change is
//! encoded around the event's canonical bytes as they were spooled.

use std::io::Read;
use std::path::PathBuf;

use rocksdb::Options;
use time::OffsetDateTime;

use super::extsort::{Runs, Sorter, read_more};
use super::ordinals::Sequences;
use super::spool::{
    EntrySort, LINK_BYTES, LINK_STORED, array, corrupt_spool, decode_spooled_entry, open_spool,
    read_framed,
};
use super::sst::SstFiles;
use super::{Collected, PROGRESS_EVERY, Progress};
use crate::proto;
use crate::registry::{Entry, Fact, Grant};
use crate::store::codec::{self, ENTRY_BYTES};
use crate::store::{CF_EVENTS, StoreError};

impl Collected {
    /// Step 4: the accepted events in file order become the log's next sequences; the entries of
    /// card events and of the withdrawals that mark them are sorted by number for step 6.
    pub(super) fn write_events(
        &self,
        sst_options: &Options,
        sequences: &Sequences,
        progress: &mut dyn Progress,
    ) -> Result<(Vec<PathBuf>, Runs), StoreError> {
        progress.step("writing events and report ids", self.events);
        let mut input = open_spool(&self.work.join("events.spool"))?;
        let mut ssts = SstFiles::new(sst_options, &self.work, CF_EVENTS);
        let mut entries = EntrySort(Sorter::new(&self.work, "by-number", self.memory_bytes));
        let recorded_at = proto::timestamp(self.now);
        let (mut head, mut canonical, mut change) = (Vec::new(), Vec::new(), Vec::new());
        for ordinal in 0..self.events {
            read_framed(&mut input, &mut head, &mut canonical)?;
            if ordinal.is_multiple_of(PROGRESS_EVERY) {
                progress.done(ordinal);
            }
            let Some(sequence) = sequences.of(ordinal) else {
                continue;
            };
            encode_change(
                sequence,
                &canonical,
                &recorded_at,
                head.is_empty(),
                &mut change,
            );
            ssts.put(&codec::sequence_key(sequence), &change)?;
            // A withdrawal's head is empty: its entry comes from its link below.
            if let Some((number, stated)) = head.split_first_chunk::<8>() {
                let number = u64::from_be_bytes(*number);
                for (n, bytes) in stated.chunks_exact(ENTRY_BYTES).enumerate() {
                    let mut entry = decode_spooled_entry(bytes)?;
                    match &mut entry.fact {
                        _ if n == 0 => entry.sequence = sequence,
                        Fact::Withdrawal { target } | Fact::RefusedWithdrawal { target } => {
                            *target = sequence;
                        }
                        _ => return Err(corrupt_spool("a waiting withdrawal's entry")),
                    }
                    entries.push(number, &entry)?;
                }
            }
        }
        let mut links = open_spool(&self.work.join("links.spool"))?;
        let mut record = [0u8; LINK_BYTES];
        while read_more(links.read_exact(&mut record))? {
            let at = u64::from_be_bytes(array(&record[17..25]));
            let target = match record[16] {
                LINK_STORED => Some(at),
                _ => sequences.of(at),
            };
            let (Some(sequence), Some(target)) = (
                sequences.of(u64::from_be_bytes(array(&record[8..16]))),
                target,
            ) else {
                return Err(corrupt_spool("a link to an event that did not enter"));
            };
            let nanos = i128::from_be_bytes(array(&record[25..]));
            let entry = Entry {
                sequence,
                occurred_at: OffsetDateTime::from_unix_timestamp_nanos(nanos)
                    .map_err(|error| corrupt_spool(&error.to_string()))?,
                fact: Fact::Withdrawal { target },
                withdrawn_by: None,
            };
            entries.push(u64::from_be_bytes(array(&record[..8])), &entry)?;
        }
        let entries = entries.0.finish()?;
        // The spool is as large as the input: give the disk back before the next steps.
        drop(input);
        std::fs::remove_file(self.work.join("events.spool"))?;
        Ok((ssts.finish()?, entries))
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
