//! The binary layout of keys and values in RocksDB. Keys are compact and sort in the order they
//! are scanned; every value layout starts with a version byte so it can evolve.

use prost::Message;
use time::{Date, OffsetDateTime};

use crate::card::{CitizenNumber, Expiry};
use crate::proto::v1 as pb;
use crate::registry::summary::CardStanding;
use crate::registry::{CardFact, CitizenState, DailyTally, Entry, Fact, Grant, Memo, Summary};

/// A stored value the code cannot read: the data dir is damaged or from an unknown version.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("corrupt {what}: {why}")]
pub struct Corrupt {
    pub what: &'static str,
    pub why: String,
}

impl Corrupt {
    /// A sequence that should be in the event log is not: the log has a hole.
    pub fn missing_event(sequence: u64) -> Self {
        corrupt("event log", format!("sequence {sequence} is missing"))
    }
}

fn corrupt(what: &'static str, why: impl Into<String>) -> Corrupt {
    Corrupt {
        what,
        why: why.into(),
    }
}

/// The version of a citizen's stored value, which covers its summary and history parts.
const CITIZEN_V2: u8 = 2;
/// The size of one encoded [`Entry`].
pub const ENTRY_BYTES: usize = 8 + 1 + 4 + 1 + 4 + 16 + 8;

/// Key of the event log: the sequence, big-endian so the log iterates in order.
pub fn sequence_key(sequence: u64) -> [u8; 8] {
    sequence.to_be_bytes()
}

pub fn decode_sequence(bytes: &[u8]) -> Result<u64, Corrupt> {
    let array: [u8; 8] = bytes
        .try_into()
        .map_err(|_| corrupt("sequence", format!("{} bytes", bytes.len())))?;
    Ok(u64::from_be_bytes(array))
}

/// Decodes an event-log value: the `RegistryChange` as it was recorded (protobuf).
pub fn decode_change(bytes: &[u8]) -> Result<pb::RegistryChange, Corrupt> {
    decode_record("event", bytes)
}

/// A protobuf record of a log (`what` it is, for the error).
pub fn decode_record<T: Message + Default>(what: &'static str, bytes: &[u8]) -> Result<T, Corrupt> {
    T::decode(bytes).map_err(|error| corrupt(what, error.to_string()))
}

/// When a recorded event happened.
pub fn occurred_at(change: &pb::RegistryChange) -> Result<OffsetDateTime, Corrupt> {
    change
        .event
        .as_ref()
        .and_then(|event| event.occurred_at.as_ref())
        .and_then(crate::proto::instant)
        .ok_or_else(|| {
            corrupt(
                "event",
                format!("sequence {} has no valid occurred_at", change.sequence),
            )
        })
}

/// Key of a citizen's state: the packed number (8 bytes, big-endian).
pub fn citizen_key(number: CitizenNumber) -> [u8; 8] {
    number.packed().to_be_bytes()
}

pub fn decode_citizen_key(bytes: &[u8]) -> Result<CitizenNumber, Corrupt> {
    let packed = decode_sequence(bytes)?;
    CitizenNumber::from_packed(packed).ok_or_else(|| corrupt("citizen key", packed.to_string()))
}

/// Where an accepted `report_id` lives: its sequence, and the number the event names (none for a
/// withdrawal), so that a withdrawal can find its target without reading the event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportSlot {
    pub sequence: u64,
    pub number: Option<CitizenNumber>,
}

impl ReportSlot {
    pub fn encode(self) -> [u8; 16] {
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&self.sequence.to_be_bytes());
        bytes[8..].copy_from_slice(&self.number.map_or(0, CitizenNumber::packed).to_be_bytes());
        bytes
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, Corrupt> {
        if bytes.len() != 16 {
            return Err(corrupt("report slot", format!("{} bytes", bytes.len())));
        }
        let packed = decode_sequence(&bytes[8..])?;
        Ok(Self {
            sequence: decode_sequence(&bytes[..8])?,
            number: match packed {
                0 => None,
                packed => Some(
                    CitizenNumber::from_packed(packed)
                        .ok_or_else(|| corrupt("report slot", packed.to_string()))?,
                ),
            },
        })
    }
}

/// Prefix of the withdrawals naming the `report_id` `target`: its length, then its bytes, so that
/// no report id is a prefix of another's key.
pub fn withdrawal_prefix(target: &[u8]) -> Vec<u8> {
    let mut prefix = Vec::with_capacity(1 + target.len() + 8);
    prefix.push(target.len() as u8);
    prefix.extend_from_slice(target);
    prefix
}

/// Key of one withdrawal naming `target`: the prefix, then the withdrawal's sequence.
pub fn withdrawal_key(target: &[u8], sequence: u64) -> Vec<u8> {
    let mut key = withdrawal_prefix(target);
    key.extend_from_slice(&sequence.to_be_bytes());
    key
}

/// The target `report_id` bytes and the sequence of a withdrawal's key.
pub fn decode_withdrawal_key(key: &[u8]) -> Result<(&[u8], u64), Corrupt> {
    let damaged = || corrupt("withdrawal key", format!("{} bytes", key.len()));
    let (&len, rest) = key.split_first().ok_or_else(damaged)?;
    if rest.len() != usize::from(len) + 8 {
        return Err(damaged());
    }
    let (target, sequence) = rest.split_at(usize::from(len));
    Ok((target, decode_sequence(sequence)?))
}

/// A parked withdrawal's value: its sender's grant, as the log records it (protobuf).
pub fn encode_grant(grant: &Grant) -> Vec<u8> {
    grant.to_wire().encode_to_vec()
}

/// Decodes what [`encode_grant`] wrote.
pub fn decode_grant(bytes: &[u8]) -> Result<Grant, Corrupt> {
    let wire: pb::Grant = decode_record("withdrawal grant", bytes)?;
    Ok(Grant::from_wire(Some(&wire)))
}

fn day_number(day: Date) -> i32 {
    day.to_julian_day()
}

fn day_from(number: i32) -> Result<Date, Corrupt> {
    Date::from_julian_day(number).map_err(|error| corrupt("date", error.to_string()))
}

/// Encodes a number's stored value: a version byte, the length (4 bytes) of its summary and the
/// summary, all a check decodes ([`decode_citizen_summary`]), then its history, which the writer
/// and `GetRecord` decode ([`decode_citizen`]). One value, so that an event costs one write per
/// number it touches (a family of summaries apart cost a fifth of `Submit`'s throughput).
pub fn encode_citizen(summary: &Summary, state: &CitizenState, tally: &DailyTally) -> Vec<u8> {
    let (_, counts) = tally.parts();
    let mut bytes = Vec::with_capacity(
        1 + 4
            + 17
            + summary.cards.len() * (10 + 4 * 16)
            + 6
            + counts.len() * 6
            + state.entries().len() * ENTRY_BYTES,
    );
    bytes.push(CITIZEN_V2);
    bytes.extend_from_slice(&[0; 4]);
    encode_summary(summary, &mut bytes);
    let summary_len = u32::try_from(bytes.len() - 5).unwrap_or(u32::MAX);
    bytes[1..5].copy_from_slice(&summary_len.to_be_bytes());
    encode_history(state, tally, &mut bytes);
    bytes
}

/// The summary and the history parts of what [`encode_citizen`] wrote.
fn citizen_parts(bytes: &[u8]) -> Result<(&[u8], &[u8]), Corrupt> {
    let what = "citizen";
    let mut reader = Reader { what, bytes };
    let version = reader.u8()?;
    if version != CITIZEN_V2 {
        return Err(corrupt(what, format!("unknown version {version}")));
    }
    let summary_len = reader.u32()? as usize;
    if reader.bytes.len() < summary_len {
        return Err(corrupt(
            what,
            format!("a summary of {summary_len} bytes cut short"),
        ));
    }
    Ok(reader.bytes.split_at(summary_len))
}

/// The summary in what [`encode_citizen`] wrote: what a check needs, decoded without the history.
pub fn decode_citizen_summary(bytes: &[u8]) -> Result<Summary, Corrupt> {
    decode_summary(citizen_parts(bytes)?.0)
}

/// A stored number and its memo, from a `citizens` key and value.
pub fn decode_citizen_memo(key: &[u8], value: &[u8]) -> Result<(CitizenNumber, Memo), Corrupt> {
    Ok((
        decode_citizen_key(key)?,
        Memo::of(&decode_citizen_summary(value)?),
    ))
}

/// The state and the day's tally in what [`encode_citizen`] wrote.
pub fn decode_citizen(bytes: &[u8]) -> Result<(CitizenState, DailyTally), Corrupt> {
    decode_history(citizen_parts(bytes)?.1)
}

/// Appends a number's history: the day's tally (its Julian day, the number of divisions, then
/// each division and its count), then the fixed-width entries.
fn encode_history(state: &CitizenState, tally: &DailyTally, bytes: &mut Vec<u8>) {
    let (day, counts) = tally.parts();
    bytes.extend_from_slice(&day.to_be_bytes());
    let divisions = u16::try_from(counts.len()).unwrap_or(u16::MAX);
    bytes.extend_from_slice(&divisions.to_be_bytes());
    for (division, count) in counts.iter().take(usize::from(divisions)) {
        bytes.extend_from_slice(&division.to_be_bytes());
        bytes.extend_from_slice(&count.to_be_bytes());
    }
    for entry in state.entries() {
        bytes.extend_from_slice(&encode_entry(entry));
    }
}

/// Decodes what [`encode_history`] wrote.
fn decode_history(bytes: &[u8]) -> Result<(CitizenState, DailyTally), Corrupt> {
    let what = "citizen history";
    let mut reader = Reader { what, bytes };
    let day = reader.i32()?;
    let divisions = reader.u16()?;
    let counts = (0..divisions)
        .map(|_| Ok((reader.u32()?, reader.u16()?)))
        .collect::<Result<_, Corrupt>>()?;
    let body = reader.bytes;
    if !body.len().is_multiple_of(ENTRY_BYTES) {
        return Err(corrupt(what, format!("{} bytes of entries", body.len())));
    }
    let entries = body
        .chunks_exact(ENTRY_BYTES)
        .map(|chunk| decode_entry(chunk).map_err(|why| corrupt(what, why)))
        .collect::<Result<_, _>>()?;
    Ok((
        CitizenState::from_entries(entries),
        DailyTally::from_parts(day, counts),
    ))
}

/// Appends what checks read of a number: the cancellation's time (a presence byte, then
/// nanoseconds since the epoch), then per card its issue date, its expiry, a byte saying which of
/// its four times follow, and those times.
fn encode_summary(summary: &Summary, bytes: &mut Vec<u8>) {
    bytes.push(u8::from(summary.cancelled.is_some()));
    if let Some(at) = summary.cancelled {
        bytes.extend_from_slice(&at.unix_timestamp_nanos().to_be_bytes());
    }
    for card in &summary.cards {
        bytes.extend_from_slice(&day_number(card.issued).to_be_bytes());
        let (expiry_tag, expiry_day) = encode_expiry(card.expiry);
        bytes.push(expiry_tag);
        bytes.extend_from_slice(&expiry_day.to_be_bytes());
        let times = [card.lost, card.stolen, card.revoked, card.issued_from_here];
        let present = times.iter().enumerate().fold(0u8, |mask, (bit, time)| {
            mask | (u8::from(time.is_some()) << bit)
        });
        bytes.push(present);
        for at in times.into_iter().flatten() {
            bytes.extend_from_slice(&at.unix_timestamp_nanos().to_be_bytes());
        }
    }
}

/// Decodes what [`encode_summary`] wrote.
fn decode_summary(bytes: &[u8]) -> Result<Summary, Corrupt> {
    let what = "citizen summary";
    let mut reader = Reader { what, bytes };
    let cancelled = match reader.u8()? {
        0 => None,
        _ => Some(reader.instant()?),
    };
    let mut cards = Vec::new();
    while !reader.bytes.is_empty() {
        let issued = day_from(reader.i32()?)?;
        let expiry =
            decode_expiry(reader.u8()?, reader.i32()?).map_err(|why| corrupt(what, why))?;
        let present = reader.u8()?;
        let mut time = |bit: u8| -> Result<Option<OffsetDateTime>, Corrupt> {
            (present & (1 << bit) != 0)
                .then(|| reader.instant())
                .transpose()
        };
        cards.push(CardStanding {
            issued,
            expiry,
            lost: time(0)?,
            stolen: time(1)?,
            revoked: time(2)?,
            issued_from_here: time(3)?,
        });
    }
    Ok(Summary { cancelled, cards })
}

/// Reads fixed-width fields off the front of a stored value.
struct Reader<'a> {
    what: &'static str,
    bytes: &'a [u8],
}

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], Corrupt> {
        let Some((field, rest)) = self.bytes.split_first_chunk::<N>() else {
            return Err(corrupt(
                self.what,
                format!("cut short: {} bytes left", self.bytes.len()),
            ));
        };
        self.bytes = rest;
        Ok(*field)
    }

    fn u8(&mut self) -> Result<u8, Corrupt> {
        Ok(self.take::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, Corrupt> {
        Ok(u16::from_be_bytes(self.take()?))
    }

    fn u32(&mut self) -> Result<u32, Corrupt> {
        Ok(u32::from_be_bytes(self.take()?))
    }

    fn i32(&mut self) -> Result<i32, Corrupt> {
        Ok(i32::from_be_bytes(self.take()?))
    }

    fn instant(&mut self) -> Result<OffsetDateTime, Corrupt> {
        let nanos = i128::from_be_bytes(self.take()?);
        OffsetDateTime::from_unix_timestamp_nanos(nanos)
            .map_err(|error| corrupt(self.what, error.to_string()))
    }
}

fn encode_expiry(expiry: Expiry) -> (u8, i32) {
    match expiry {
        Expiry::Unknown => (0, 0),
        Expiry::Long => (1, 0),
        Expiry::On(day) => (2, day_number(day)),
    }
}

fn decode_expiry(tag: u8, day: i32) -> Result<Expiry, String> {
    match tag {
        0 => Ok(Expiry::Unknown),
        1 => Ok(Expiry::Long),
        2 => Ok(Expiry::On(day_from(day).map_err(|error| error.why)?)),
        other => Err(format!("unknown expiry tag {other}")),
    }
}

/// The fixed-width form of one entry; it starts with the sequence, big-endian, so entries sort
/// by sequence as bytes.
pub fn encode_entry(entry: &Entry) -> [u8; ENTRY_BYTES] {
    let (tag, issued, expiry, link) = match entry.fact {
        Fact::Card {
            fact,
            issued,
            expiry,
        } => {
            let tag = match fact {
                CardFact::Lost => 0,
                CardFact::Stolen => 1,
                CardFact::Issued => 2,
                CardFact::Revoked => 3,
            };
            (tag, day_number(issued), expiry, entry.withdrawn_by)
        }
        Fact::Cancelled => (4, 0, Expiry::Unknown, entry.withdrawn_by),
        Fact::Withdrawal { target } => (5, 0, Expiry::Unknown, Some(target)),
        Fact::RefusedWithdrawal { target } => (6, 0, Expiry::Unknown, Some(target)),
    };
    let (expiry_tag, expiry_day) = encode_expiry(expiry);
    let mut bytes = [0u8; ENTRY_BYTES];
    bytes[..8].copy_from_slice(&entry.sequence.to_be_bytes());
    bytes[8] = tag;
    bytes[9..13].copy_from_slice(&issued.to_be_bytes());
    bytes[13] = expiry_tag;
    bytes[14..18].copy_from_slice(&expiry_day.to_be_bytes());
    bytes[18..34].copy_from_slice(&entry.occurred_at.unix_timestamp_nanos().to_be_bytes());
    bytes[34..42].copy_from_slice(&link.unwrap_or(0).to_be_bytes());
    bytes
}

/// Decodes what [`encode_entry`] wrote.
pub fn decode_entry(chunk: &[u8]) -> Result<Entry, String> {
    let take = |range: std::ops::Range<usize>| &chunk[range];
    let u64_at = |at: usize| u64::from_be_bytes(take(at..at + 8).try_into().unwrap_or_default());
    let i32_at = |at: usize| i32::from_be_bytes(take(at..at + 4).try_into().unwrap_or_default());
    let sequence = u64_at(0);
    let tag = chunk[8];
    let issued = i32_at(9);
    let expiry = decode_expiry(chunk[13], i32_at(14))?;
    let nanos = i128::from_be_bytes(take(18..34).try_into().unwrap_or_default());
    let occurred_at =
        OffsetDateTime::from_unix_timestamp_nanos(nanos).map_err(|error| error.to_string())?;
    let link = Some(u64_at(34)).filter(|&link| link != 0);
    let card = |fact| -> Result<Fact, String> {
        Ok(Fact::Card {
            fact,
            issued: day_from(issued).map_err(|error| error.why)?,
            expiry,
        })
    };
    let (fact, withdrawn_by) = match tag {
        0 => (card(CardFact::Lost)?, link),
        1 => (card(CardFact::Stolen)?, link),
        2 => (card(CardFact::Issued)?, link),
        3 => (card(CardFact::Revoked)?, link),
        4 => (Fact::Cancelled, link),
        5 => (
            Fact::Withdrawal {
                target: link.ok_or("withdrawal without a target")?,
            },
            None,
        ),
        6 => (
            Fact::RefusedWithdrawal {
                target: link.ok_or("withdrawal without a target")?,
            },
            None,
        ),
        other => return Err(format!("unknown entry tag {other}")),
    };
    Ok(Entry {
        sequence,
        occurred_at,
        fact,
        withdrawn_by,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::{date, datetime};

    #[test]
    fn citizen_state_round_trips() {
        let at = datetime!(2026-11-22 04:00:00.123456789 UTC);
        let card = |fact, expiry| Fact::Card {
            fact,
            issued: date!(2020 - 02 - 29),
            expiry,
        };
        let entries = vec![
            Entry {
                sequence: 1,
                occurred_at: at,
                fact: card(CardFact::Lost, Expiry::Unknown),
                withdrawn_by: Some(4),
            },
            Entry {
                sequence: 2,
                occurred_at: at,
                fact: card(CardFact::Stolen, Expiry::Long),
                withdrawn_by: None,
            },
            Entry {
                sequence: 3,
                occurred_at: at,
                fact: card(CardFact::Issued, Expiry::On(date!(2040 - 02 - 28))),
                withdrawn_by: None,
            },
            Entry {
                sequence: 4,
                occurred_at: at,
                fact: Fact::Withdrawal { target: 1 },
                withdrawn_by: None,
            },
            Entry {
                sequence: 5,
                occurred_at: at,
                fact: card(CardFact::Revoked, Expiry::Unknown),
                withdrawn_by: None,
            },
            Entry {
                sequence: 6,
                occurred_at: datetime!(1999-01-01 00:00 UTC),
                fact: Fact::Cancelled,
                withdrawn_by: None,
            },
        ];
        let state = CitizenState::from_entries(entries);
        let mut tally = DailyTally::default();
        tally.admit(440305, date!(2026 - 11 - 22)).unwrap();
        tally.admit(110105, date!(2026 - 11 - 22)).unwrap();
        let summary = Summary::of(&state);
        assert!(summary.cancelled.is_some() && !summary.cards.is_empty());
        let stored = encode_citizen(&Summary::of(&state), &state, &tally);
        assert_eq!(decode_citizen_summary(&stored), Ok(summary));
        assert_eq!(decode_citizen(&stored), Ok((state, tally)));
    }

    #[test]
    fn damaged_values_are_reported_not_misread() {
        assert!(decode_citizen(&[]).is_err());
        assert!(decode_citizen(&[9]).is_err());
        assert!(decode_history(&[0, 0, 0, 0, 0, 1]).is_err());
        assert!(decode_summary(&[1, 0]).is_err());
        assert!(decode_summary(&[0, 0, 0]).is_err());
        assert!(decode_citizen(&[CITIZEN_V2, 0, 0, 0, 9, 0]).is_err());
        assert!(decode_citizen_summary(&[1]).is_err());
        assert!(ReportSlot::decode(&[0; 15]).is_err());
    }

    #[test]
    fn withdrawal_keys_do_not_collide_across_prefixes() {
        let (short, long) = (b"r-1", b"r-10");
        assert!(!withdrawal_key(long, 1).starts_with(&withdrawal_prefix(short)));
        assert_eq!(
            decode_withdrawal_key(&withdrawal_key(long, 7)),
            Ok((&b"r-10"[..], 7))
        );
    }
}
