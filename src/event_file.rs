//! The registry export format: one event per record, flat, as NDJSON (one JSON object per line)
//! or CSV (with a header line). `idguard gen` writes it; bulk loads read it.
//!
//! | field | meaning |
//! |---|---|
//! | `report_id` | the reporter's idempotency key |
//! | `authority` | the reporting organ's code |
//! | `occurred_at` | RFC 3339 instant |
//! | `kind` | `lost`, `stolen`, `issued`, `revoked`, `cancelled` or `withdrawn` |
//! | `id_number`, `issue_date`, `expiry_date` | the card (`cancelled`: the number only) |
//! | `withdrawn_report_id` | for `withdrawn`: the event withdrawn |
//! | `note` | free text |
//!
//! Fields a kind does not use are empty (CSV) or may be left out (NDJSON).

use std::borrow::Cow;
use std::io::{self, BufRead};
use std::path::Path;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::card::{FieldError, Rule};
use crate::event;
use crate::proto::{self, v1 as pb};

/// Where a record came from: the index of its input file and its line, for naming refusals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin {
    pub file: u32,
    pub line: u64,
}

/// One exported event.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ExportRecord {
    pub report_id: String,
    pub authority: String,
    pub occurred_at: String,
    pub kind: String,
    pub id_number: String,
    pub issue_date: String,
    pub expiry_date: String,
    pub withdrawn_report_id: String,
    pub note: String,
}

impl ExportRecord {
    /// The wire event this record describes; the event's own rules are checked by
    /// [`crate::event::validate_event`] after this.
    pub fn to_wire(&self) -> Result<pb::RegistryEvent, FieldError> {
        RecordText {
            report_id: Cow::Borrowed(&self.report_id),
            authority: Cow::Borrowed(&self.authority),
            occurred_at: Cow::Borrowed(&self.occurred_at),
            kind: Cow::Borrowed(&self.kind),
            id_number: Cow::Borrowed(&self.id_number),
            issue_date: Cow::Borrowed(&self.issue_date),
            expiry_date: Cow::Borrowed(&self.expiry_date),
            withdrawn_report_id: Cow::Borrowed(&self.withdrawn_report_id),
            note: Cow::Borrowed(&self.note),
        }
        .to_wire()
    }
}

/// A record as read, borrowing its text from the line where it can: a bulk import reads hundreds
/// of millions, and the only strings it allocates are those of the wire event.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RecordText<'a> {
    #[serde(borrow)]
    report_id: Cow<'a, str>,
    #[serde(borrow)]
    authority: Cow<'a, str>,
    #[serde(borrow)]
    occurred_at: Cow<'a, str>,
    #[serde(borrow)]
    kind: Cow<'a, str>,
    #[serde(default, borrow)]
    id_number: Cow<'a, str>,
    #[serde(default, borrow)]
    issue_date: Cow<'a, str>,
    #[serde(default, borrow)]
    expiry_date: Cow<'a, str>,
    #[serde(default, borrow)]
    withdrawn_report_id: Cow<'a, str>,
    #[serde(default, borrow)]
    note: Cow<'a, str>,
}

impl RecordText<'_> {
    fn to_wire(&self) -> Result<pb::RegistryEvent, FieldError> {
        let occurred_at = OffsetDateTime::parse(&self.occurred_at, &Rfc3339)
            .map_err(|_| FieldError::new("occurred_at", Rule::BadTimestamp))?;
        let card = || {
            Some(pb::CardRef {
                id_number: self.id_number.as_ref().to_owned(),
                issue_date: self.issue_date.as_ref().to_owned(),
                expiry_date: self.expiry_date.as_ref().to_owned(),
            })
        };
        let reported = |kind: pb::LossKind| {
            pb::registry_event::Kind::Reported(pb::CardReported {
                card: card(),
                kind: kind.into(),
            })
        };
        use pb::registry_event::Kind;
        let Some(named) = event::Kind::from_name(self.kind.as_ref()) else {
            return Err(FieldError::new(
                "kind",
                Rule::UnknownKind(self.kind.as_ref().into()),
            ));
        };
        let kind = match named {
            event::Kind::Lost => reported(pb::LossKind::Lost),
            event::Kind::Stolen => reported(pb::LossKind::Stolen),
            event::Kind::Issued => Kind::Issued(pb::CardIssued { card: card() }),
            event::Kind::Revoked => Kind::Revoked(pb::CardRevoked {
                card: card(),
                note: self.note.as_ref().to_owned(),
            }),
            event::Kind::Cancelled => Kind::Cancelled(pb::CitizenCancelled {
                id_number: self.id_number.as_ref().to_owned(),
                note: self.note.as_ref().to_owned(),
            }),
            event::Kind::Withdrawn => Kind::Withdrawn(pb::ReportWithdrawn {
                withdrawn_report_id: self.withdrawn_report_id.as_ref().to_owned(),
                note: self.note.as_ref().to_owned(),
            }),
        };
        Ok(pb::RegistryEvent {
            report_id: self.report_id.as_ref().to_owned(),
            authority: self.authority.as_ref().to_owned(),
            occurred_at: Some(proto::timestamp(occurred_at)),
            kind: Some(kind),
        })
    }
}

/// The events of an export file, each with its line number; a record that cannot be read, or
/// names no event, says why.
pub type NumberedEvents = Box<dyn Iterator<Item = (u64, Result<pb::RegistryEvent, String>)> + Send>;

/// Reads the events of an export file, NDJSON or (by a `.csv` name) CSV.
pub fn read_events(path: &Path) -> io::Result<NumberedEvents> {
    read_events_from(path, std::fs::File::open(path)?)
}

/// [`read_events`] from an already open `input` (a reader that counts its bytes, say), named
/// `path` for its format.
pub fn read_events_from(
    path: &Path,
    input: impl io::Read + Send + 'static,
) -> io::Result<NumberedEvents> {
    let input = io::BufReader::with_capacity(1 << 20, input);
    let wire = |text: RecordText<'_>| text.to_wire().map_err(|error| error.to_string());
    if path
        .extension()
        .is_some_and(|ext| ext.eq_ignore_ascii_case("csv"))
    {
        let mut reader = csv::Reader::from_reader(input);
        let headers = reader.byte_headers().map_err(io::Error::other)?.clone();
        let mut record = csv::ByteRecord::new();
        let events = std::iter::from_fn(move || {
            let line = |position: Option<&csv::Position>| position.map_or(0, csv::Position::line);
            match reader.read_byte_record(&mut record) {
                Ok(false) => None,
                Ok(true) => Some((
                    line(record.position()),
                    record
                        .deserialize::<RecordText<'_>>(Some(&headers))
                        .map_err(|error| error.to_string())
                        .and_then(wire),
                )),
                Err(error) => Some((line(error.position()), Err(error.to_string()))),
            }
        });
        Ok(Box::new(events.fuse()))
    } else {
        let mut lines = input.lines().zip(1u64..);
        let events = std::iter::from_fn(move || {
            loop {
                let (line, number) = lines.next()?;
                match line {
                    Ok(line) if line.trim().is_empty() => continue,
                    Ok(line) => {
                        let event = serde_json::from_str::<RecordText<'_>>(&line)
                            .map_err(|error| error.to_string())
                            .and_then(wire);
                        return Some((number, event));
                    }
                    Err(error) => return Some((number, Err(error.to_string()))),
                }
            }
        });
        Ok(Box::new(events))
    }
}

/// One query of a check workload: a card, and whether the registry has a record of its number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueryRecord {
    pub id_number: String,
    pub issue_date: String,
    pub expiry_date: String,
    pub has_record: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lost() -> ExportRecord {
        ExportRecord {
            report_id: "r-1".into(),
            authority: "440305".into(),
            occurred_at: "2025-06-01T10:00:00+08:00".into(),
            kind: "lost".into(),
            id_number: "11010519491231002X".into(),
            issue_date: "20150101".into(),
            ..ExportRecord::default()
        }
    }

    #[test]
    fn a_record_becomes_the_wire_event_it_describes() {
        let wire = lost().to_wire().unwrap();
        let Some(pb::registry_event::Kind::Reported(reported)) = wire.kind else {
            panic!("not a report")
        };
        assert_eq!(reported.kind(), pb::LossKind::Lost);
        assert_eq!(reported.card.unwrap().id_number, "11010519491231002X");
        assert_eq!(
            wire.occurred_at,
            Some(proto::timestamp(
                time::macros::datetime!(2025-06-01 02:00 UTC)
            ))
        );
    }

    #[test]
    fn bad_kinds_and_times_name_their_field() {
        let mut record = lost();
        record.kind = "misplaced".into();
        assert_eq!(record.to_wire().unwrap_err().field, "kind");
        let mut record = lost();
        record.occurred_at = "yesterday".into();
        assert_eq!(record.to_wire().unwrap_err().field, "occurred_at");
    }

    #[test]
    fn ndjson_may_leave_out_unused_fields_but_not_add_unknown_ones() {
        let line = r#"{"report_id":"w","authority":"440305","occurred_at":"2025-06-01T10:00:00Z","kind":"withdrawn","withdrawn_report_id":"r-1"}"#;
        let record: RecordText<'_> = serde_json::from_str(line).unwrap();
        assert_eq!(record.withdrawn_report_id, "r-1");
        assert!(serde_json::from_str::<RecordText<'_>>(r#"{"report_id":"w","authority":"440305","occurred_at":"x","kind":"lost","colour":"red"}"#).is_err());
    }
}
