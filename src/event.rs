//! Registry events as the registry understands them: each wire `RegistryEvent` is validated here
//! into a typed [`Event`] and a canonical wire form, the form that is stored and compared when a
//! reporter retries. Pure: the caller passes in the clock.

use time::{Duration, OffsetDateTime};

use crate::card::{
    self, Card, CardText, CitizenNumber, FieldError, Rule, china_today, is_province_code,
};
use crate::proto::{self, v1 as pb};

/// The longest `report_id` a reporter may use (bytes).
pub const MAX_REPORT_ID_BYTES: usize = 64;
/// The longest free-text note an event may carry (bytes).
pub const MAX_NOTE_BYTES: usize = 1024;
/// How far ahead of the server's clock `occurred_at` may be, to absorb reporters' clock skew.
pub const MAX_CLOCK_SKEW: Duration = Duration::minutes(5);
/// The longest unit suffix after an authority's 6-digit division code.
const MAX_AUTHORITY_SUFFIX: usize = 32;

/// The earliest `occurred_at`: resident identity cards were first issued in 1984 (`DOMAIN.md`
/// §1), so an earlier event is a mistake in the reporter's clock or data.
pub const EARLIEST_EVENT: OffsetDateTime = time::macros::datetime!(1984-01-01 00:00 +8);

/// A reporter's idempotency key: non-empty printable ASCII, at most 64 bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReportId(String);

impl ReportId {
    pub fn parse(text: &str) -> Result<Self, Rule> {
        if text.is_empty() {
            return Err(Rule::Required);
        }
        if text.len() > MAX_REPORT_ID_BYTES {
            return Err(Rule::TooLong {
                max: MAX_REPORT_ID_BYTES,
                found: text.len(),
            });
        }
        if !text.bytes().all(|byte| byte.is_ascii_graphic()) {
            return Err(Rule::NotPrintable);
        }
        Ok(Self(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Whether a lost or a stolen card was reported (`DOMAIN.md` §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loss {
    Lost,
    Stolen,
}

/// What an event says happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    Reported { card: Card, loss: Loss },
    Issued { card: Card },
    Revoked { card: Card },
    Cancelled { number: CitizenNumber },
    Withdrawn { target: ReportId },
}

impl EventKind {
    pub fn kind(&self) -> Kind {
        match self {
            EventKind::Reported {
                loss: Loss::Lost, ..
            } => Kind::Lost,
            EventKind::Reported {
                loss: Loss::Stolen, ..
            } => Kind::Stolen,
            EventKind::Issued { .. } => Kind::Issued,
            EventKind::Revoked { .. } => Kind::Revoked,
            EventKind::Cancelled { .. } => Kind::Cancelled,
            EventKind::Withdrawn { .. } => Kind::Withdrawn,
        }
    }

    /// The kind's name ([`Kind::name`]).
    pub fn name(&self) -> &'static str {
        self.kind().name()
    }
}

/// The kinds of event, named once for the export format, the generator and the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Issued,
    Lost,
    Stolen,
    Revoked,
    Cancelled,
    Withdrawn,
}

impl Kind {
    pub const ALL: [Kind; 6] = [
        Kind::Issued,
        Kind::Lost,
        Kind::Stolen,
        Kind::Revoked,
        Kind::Cancelled,
        Kind::Withdrawn,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Issued => "issued",
            Kind::Lost => "lost",
            Kind::Stolen => "stolen",
            Kind::Revoked => "revoked",
            Kind::Cancelled => "cancelled",
            Kind::Withdrawn => "withdrawn",
        }
    }

    /// The kind named `name`, if there is one.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.name() == name)
    }
}

/// A validated registry event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub report_id: ReportId,
    /// Who reported it: a 6-digit division code with a valid province, then perhaps a unit.
    pub authority: String,
    pub occurred_at: OffsetDateTime,
    pub kind: EventKind,
}

impl Event {
    /// The citizen number the event names directly; a withdrawal names only another event.
    pub fn number(&self) -> Option<CitizenNumber> {
        match &self.kind {
            EventKind::Reported { card, .. }
            | EventKind::Issued { card }
            | EventKind::Revoked { card } => Some(card.number),
            EventKind::Cancelled { number } => Some(*number),
            EventKind::Withdrawn { .. } => None,
        }
    }
}

/// A `report_id` in its namespace, the province of its event's authority: a reporter's ids can
/// collide only with those of its own province, so no jurisdiction can squat, probe or block
/// another's (a reporter's scopes are at least a province's prefix, so every id it can write lies
/// in provinces it may report for). A withdrawal names its target within its own authority's
/// province. Keyed so: the 2-digit province code, then the id.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReportKey(Vec<u8>);

impl ReportKey {
    /// `report_id` in the namespace of `authority`, a validated authority.
    pub fn new(authority: &str, report_id: &ReportId) -> Self {
        let mut key = Vec::with_capacity(2 + report_id.as_str().len());
        key.extend_from_slice(&authority.as_bytes()[..2]);
        key.extend_from_slice(report_id.as_str().as_bytes());
        Self(key)
    }

    /// Makes this the key `bytes` spell (as [`ReportKey::as_bytes`] gave them, read back from an
    /// import's sort), reusing its allocation: for a loop over hundreds of millions of keys.
    pub fn set_bytes(&mut self, bytes: &[u8]) {
        self.0.clear();
        self.0.extend_from_slice(bytes);
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// A validated event together with its canonical wire form (number with upper-case `X`, `LONG`
/// in upper case): two submissions are the same report exactly when their canonical forms are
/// equal. The rules read [`Event`]; the canonical form is what the log stores and the cluster
/// stream carries, so only [`validate_event`] makes one.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidEvent {
    pub event: Event,
    canonical: pb::RegistryEvent,
}

impl ValidEvent {
    /// Where the event's `report_id` lives ([`ReportKey`]).
    pub fn report_key(&self) -> ReportKey {
        ReportKey::new(&self.event.authority, &self.event.report_id)
    }

    /// The canonical wire form, for the log's encoding and the cluster stream.
    pub fn canonical(&self) -> &pb::RegistryEvent {
        &self.canonical
    }
}

/// Validates every field of a wire event against the card rules and the event rules; the error
/// names the first field that broke a rule.
///
/// The event is taken by value: it becomes the canonical form, rewritten in place.
pub fn validate_event(
    mut canonical: pb::RegistryEvent,
    now: OffsetDateTime,
) -> Result<ValidEvent, FieldError> {
    let today = china_today(now);
    let report_id =
        ReportId::parse(&canonical.report_id).map_err(|rule| FieldError::new("report_id", rule))?;
    validate_authority(&canonical.authority).map_err(|rule| FieldError::new("authority", rule))?;
    let occurred_at = validate_occurred_at(canonical.occurred_at.as_ref(), now)
        .map_err(|rule| FieldError::new("occurred_at", rule))?;
    let kind = match canonical.kind.as_mut() {
        None => return Err(FieldError::new("kind", Rule::Required)),
        Some(pb::registry_event::Kind::Reported(reported)) => {
            let card = registrable_card(&mut reported.card, today)
                .map_err(|error| error.within("reported"))?;
            let loss = match pb::LossKind::try_from(reported.kind) {
                Ok(pb::LossKind::Lost) => Loss::Lost,
                Ok(pb::LossKind::Stolen) => Loss::Stolen,
                Ok(pb::LossKind::Unspecified) => {
                    return Err(FieldError::new("reported.kind", Rule::Required));
                }
                Err(_) => {
                    return Err(FieldError::new(
                        "reported.kind",
                        Rule::UnknownEnum(reported.kind),
                    ));
                }
            };
            EventKind::Reported { card, loss }
        }
        Some(pb::registry_event::Kind::Issued(issued)) => EventKind::Issued {
            card: registrable_card(&mut issued.card, today)
                .map_err(|error| error.within("issued"))?,
        },
        Some(pb::registry_event::Kind::Revoked(revoked)) => {
            validate_note(&revoked.note).map_err(|rule| FieldError::new("revoked.note", rule))?;
            EventKind::Revoked {
                card: registrable_card(&mut revoked.card, today)
                    .map_err(|error| error.within("revoked"))?,
            }
        }
        Some(pb::registry_event::Kind::Cancelled(cancelled)) => {
            validate_note(&cancelled.note)
                .map_err(|rule| FieldError::new("cancelled.note", rule))?;
            let number = card::parse_registrable_number(&cancelled.id_number, today)
                .map_err(|rule| FieldError::new("cancelled.id_number", rule))?;
            to_canonical_case(&mut cancelled.id_number);
            EventKind::Cancelled { number }
        }
        Some(pb::registry_event::Kind::Withdrawn(withdrawn)) => {
            validate_note(&withdrawn.note)
                .map_err(|rule| FieldError::new("withdrawn.note", rule))?;
            let target = ReportId::parse(&withdrawn.withdrawn_report_id)
                .map_err(|rule| FieldError::new("withdrawn.withdrawn_report_id", rule))?;
            if target == report_id {
                return Err(FieldError::new(
                    "withdrawn.withdrawn_report_id",
                    Rule::WithdrawsItself,
                ));
            }
            EventKind::Withdrawn { target }
        }
    };
    Ok(ValidEvent {
        event: Event {
            report_id,
            authority: canonical.authority.clone(),
            occurred_at,
            kind,
        },
        canonical,
    })
}

/// Validates a card inside an event and rewrites it in canonical form.
fn registrable_card(wire: &mut Option<pb::CardRef>, today: time::Date) -> Result<Card, FieldError> {
    let Some(wire) = wire.as_mut() else {
        return Err(FieldError::new("card", Rule::Required));
    };
    let card = card::parse_registrable_card(
        CardText {
            id_number: &wire.id_number,
            issue_date: &wire.issue_date,
            expiry_date: &wire.expiry_date,
        },
        today,
    )
    .map_err(|error| error.within("card"))?;
    to_canonical_case(&mut wire.id_number);
    to_canonical_case(&mut wire.expiry_date);
    Ok(card)
}

/// Rewrites a valid number or expiry in its canonical form. A text that passed the card rules can
/// differ from the canonical form only in letter case (`x`, `long`), so this is done in place
/// rather than by formatting a new string for every event of a bulk import.
fn to_canonical_case(text: &mut str) {
    text.make_ascii_uppercase();
}

/// An authority is a 6-digit division code whose first two digits are a province-level code,
/// optionally followed by a unit suffix (`DOMAIN.md` §4).
fn validate_authority(text: &str) -> Result<(), Rule> {
    if text.is_empty() {
        return Err(Rule::Required);
    }
    let bytes = text.as_bytes();
    let well_formed = bytes.len() >= 6
        && bytes.len() <= 6 + MAX_AUTHORITY_SUFFIX
        && bytes[..6].iter().all(u8::is_ascii_digit)
        && bytes[6..]
            .iter()
            .all(|&byte| byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.'));
    if !well_formed {
        return Err(Rule::AuthorityFormat);
    }
    let province = (bytes[0] - b'0') * 10 + (bytes[1] - b'0');
    if is_province_code(province) {
        Ok(())
    } else {
        Err(Rule::Province(province))
    }
}

fn validate_occurred_at(
    at: Option<&prost_types::Timestamp>,
    now: OffsetDateTime,
) -> Result<OffsetDateTime, Rule> {
    let at = proto::instant(at.ok_or(Rule::Required)?).ok_or(Rule::BadTimestamp)?;
    if at > now + MAX_CLOCK_SKEW {
        return Err(Rule::InFuture);
    }
    if at < EARLIEST_EVENT {
        return Err(Rule::BeforeFirstCards);
    }
    Ok(at)
}

fn validate_note(note: &str) -> Result<(), Rule> {
    if note.len() > MAX_NOTE_BYTES {
        Err(Rule::TooLong {
            max: MAX_NOTE_BYTES,
            found: note.len(),
        })
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pb::registry_event::Kind;
    use time::macros::datetime;

    const NOW: OffsetDateTime = datetime!(2026-11-22 04:00 UTC);

    fn reported(id: &str) -> pb::RegistryEvent {
        pb::RegistryEvent {
            report_id: "r-1".into(),
            authority: "440305".into(),
            occurred_at: Some(proto::timestamp(NOW)),
            kind: Some(Kind::Reported(pb::CardReported {
                card: Some(pb::CardRef {
                    id_number: id.into(),
                    issue_date: "20200101".into(),
                    expiry_date: "long".into(),
                }),
                kind: pb::LossKind::Lost as i32,
            })),
        }
    }

    fn field_of(wire: &pb::RegistryEvent) -> String {
        validate_event(wire.clone(), NOW).unwrap_err().field
    }

    #[test]
    fn canonical_form_normalises_case() {
        let valid = validate_event(reported("11010519491231002x"), NOW).unwrap();
        let Some(Kind::Reported(canonical)) = valid.canonical.kind else {
            panic!("kind changed")
        };
        let card = canonical.card.unwrap();
        assert_eq!(card.id_number, "11010519491231002X");
        assert_eq!(card.expiry_date, "LONG");
        assert_eq!(valid.event.report_id.as_str(), "r-1");
    }

    #[test]
    fn each_field_is_named_when_it_breaks_a_rule() {
        let mut wire = reported("11010519491231002X");
        wire.report_id = String::new();
        assert_eq!(field_of(&wire), "report_id");
        wire.report_id = "x".repeat(65);
        assert_eq!(field_of(&wire), "report_id");
        wire.report_id = "has space".into();
        assert_eq!(field_of(&wire), "report_id");

        let mut wire = reported("11010519491231002X");
        let long_suffix = format!("440305{}", "a".repeat(33));
        for bad in ["", "44030", "990305", "440305 unit", "44O305", &long_suffix] {
            wire.authority = bad.into();
            assert_eq!(field_of(&wire), "authority", "{bad:?}");
        }
        for good in ["440305", "4403051", "440305-PSB.unit_7"] {
            wire.authority = good.into();
            assert!(validate_event(wire.clone(), NOW).is_ok(), "{good:?}");
        }

        let mut wire = reported("11010519491231002X");
        wire.occurred_at = None;
        assert_eq!(field_of(&wire), "occurred_at");
        wire.occurred_at = Some(proto::timestamp(NOW + Duration::minutes(6)));
        assert_eq!(field_of(&wire), "occurred_at");
        wire.occurred_at = Some(proto::timestamp(EARLIEST_EVENT - Duration::seconds(1)));
        assert_eq!(
            validate_event(wire.clone(), NOW).unwrap_err(),
            FieldError::new("occurred_at", Rule::BeforeFirstCards)
        );
        wire.occurred_at = Some(proto::timestamp(EARLIEST_EVENT));
        assert!(validate_event(wire.clone(), NOW).is_ok());

        let mut wire = reported("11010519491231002X");
        wire.kind = None;
        assert_eq!(field_of(&wire), "kind");

        assert_eq!(
            field_of(&reported("11010519491231002Y")),
            "reported.card.id_number"
        );
        assert_eq!(
            field_of(&reported("110105491231002")),
            "reported.card.id_number"
        );

        let mut wire = reported("11010519491231002X");
        if let Some(Kind::Reported(r)) = wire.kind.as_mut() {
            r.kind = 9;
        }
        assert_eq!(
            validate_event(wire.clone(), NOW).unwrap_err(),
            FieldError::new("reported.kind", Rule::UnknownEnum(9))
        );
    }

    #[test]
    fn a_withdrawal_must_name_another_event() {
        let mut wire = reported("11010519491231002X");
        wire.kind = Some(Kind::Withdrawn(pb::ReportWithdrawn {
            withdrawn_report_id: "r-1".into(),
            note: String::new(),
        }));
        assert_eq!(
            validate_event(wire.clone(), NOW).unwrap_err(),
            FieldError::new("withdrawn.withdrawn_report_id", Rule::WithdrawsItself)
        );
    }
}
