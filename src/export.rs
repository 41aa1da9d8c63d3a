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

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::card::{FieldError, Rule};
use crate::proto::{self, v1 as pb};

/// One exported event.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportRecord {
    pub report_id: String,
    pub authority: String,
    pub occurred_at: String,
    pub kind: String,
    #[serde(default)]
    pub id_number: String,
    #[serde(default)]
    pub issue_date: String,
    #[serde(default)]
    pub expiry_date: String,
    #[serde(default)]
    pub withdrawn_report_id: String,
    #[serde(default)]
    pub note: String,
}

impl ExportRecord {
    /// The wire event this record describes; the event's own rules are checked by
    /// [`crate::event::validate_event`] after this.
    pub fn to_wire(&self) -> Result<pb::RegistryEvent, FieldError> {
        let occurred_at = OffsetDateTime::parse(&self.occurred_at, &Rfc3339)
            .map_err(|_| FieldError::new("occurred_at", Rule::BadTimestamp))?;
        let card = || {
            Some(pb::CardRef {
                id_number: self.id_number.clone(),
                issue_date: self.issue_date.clone(),
                expiry_date: self.expiry_date.clone(),
            })
        };
        let reported = |kind: pb::LossKind| {
            pb::registry_event::Kind::Reported(pb::CardReported {
                card: card(),
                kind: kind.into(),
            })
        };
        use pb::registry_event::Kind;
        let kind = match self.kind.as_str() {
            "lost" => reported(pb::LossKind::Lost),
            "stolen" => reported(pb::LossKind::Stolen),
            "issued" => Kind::Issued(pb::CardIssued { card: card() }),
            "revoked" => Kind::Revoked(pb::CardRevoked {
                card: card(),
                note: self.note.clone(),
            }),
            "cancelled" => Kind::Cancelled(pb::CitizenCancelled {
                id_number: self.id_number.clone(),
                note: self.note.clone(),
            }),
            "withdrawn" => Kind::Withdrawn(pb::ReportWithdrawn {
                withdrawn_report_id: self.withdrawn_report_id.clone(),
                note: self.note.clone(),
            }),
            other => {
                return Err(FieldError::new("kind", Rule::UnknownKind(other.to_owned())));
            }
        };
        Ok(pb::RegistryEvent {
            report_id: self.report_id.clone(),
            authority: self.authority.clone(),
            occurred_at: Some(proto::timestamp(occurred_at)),
            kind: Some(kind),
        })
    }
}

/// The records of an export file, each with its line number; one that cannot be read says why.
pub type NumberedRecords = Box<dyn Iterator<Item = (u64, Result<ExportRecord, String>)>>;

/// Reads an export file, NDJSON or (by a `.csv` name) CSV.
pub fn read_records(path: &std::path::Path) -> std::io::Result<NumberedRecords> {
    read_records_from(path, std::fs::File::open(path)?)
}

/// [`read_records`] from an already open `input` (a reader that counts its bytes, say), named
/// `path` for its format.
pub fn read_records_from(
    path: &std::path::Path,
    input: impl std::io::Read + 'static,
) -> std::io::Result<NumberedRecords> {
    let file = std::io::BufReader::with_capacity(1 << 20, input);
    if path
        .extension()
        .is_some_and(|ext| ext.eq_ignore_ascii_case("csv"))
    {
        let mut reader = csv::Reader::from_reader(file);
        let headers = reader.headers().map_err(std::io::Error::other)?.clone();
        let line = |position: Option<&csv::Position>| position.map_or(0, csv::Position::line);
        let records = reader.into_records().map(move |record| match record {
            Ok(record) => (
                line(record.position()),
                record
                    .deserialize(Some(&headers))
                    .map_err(|error| error.to_string()),
            ),
            Err(error) => (line(error.position()), Err(error.to_string())),
        });
        Ok(Box::new(records))
    } else {
        use std::io::BufRead;
        let lines = file
            .lines()
            .zip(1u64..)
            .filter_map(|(line, number)| match line {
                Ok(line) if line.trim().is_empty() => None,
                Ok(line) => Some((
                    number,
                    serde_json::from_str::<ExportRecord>(&line).map_err(|error| error.to_string()),
                )),
                Err(error) => Some((number, Err(error.to_string()))),
            });
        Ok(Box::new(lines))
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
        let record: ExportRecord = serde_json::from_str(line).unwrap();
        assert_eq!(record.withdrawn_report_id, "r-1");
        assert!(serde_json::from_str::<ExportRecord>(r#"{"report_id":"w","authority":"440305","occurred_at":"x","kind":"lost","colour":"red"}"#).is_err());
    }
}
