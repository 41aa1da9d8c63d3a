//! Verdicts, events and records as the lines a shell user reads, times in China Standard Time.

use time::format_description::well_known::Rfc3339;

use crate::card::CHINA_STANDARD_TIME;
use crate::proto::{self, v1 as pb};

pub(super) fn china_time(at: Option<&prost_types::Timestamp>) -> String {
    at.and_then(proto::instant)
        .and_then(|at| at.to_offset(CHINA_STANDARD_TIME).format(&Rfc3339).ok())
        .unwrap_or_else(|| "-".to_owned())
}

/// A reason as a shell user reads it: its wire name in words (`REASON_CITIZEN_CANCELLED` is
/// "citizen cancelled"), so that no second list of names can drift from the contract's.
fn reason_name(reason: pb::Reason) -> String {
    let name = reason.as_str_name();
    name.strip_prefix("REASON_")
        .unwrap_or(name)
        .to_lowercase()
        .replace('_', " ")
}

/// One line per verdict: `VALID ...` or `INVALID <reason> since <time>: <detail>`.
pub(super) fn describe_verdict(response: &pb::CheckResponse) -> String {
    match response.status() {
        pb::CardStatus::Invalid => format!(
            "INVALID  {} since {}: {}  (registry sequence {})",
            reason_name(response.reason()),
            china_time(response.invalid_since.as_ref()),
            response.detail,
            response.sequence
        ),
        pb::CardStatus::Valid => format!("VALID  (registry sequence {})", response.sequence),
        status => format!("{}  {}", status.as_str_name(), response.detail),
    }
}

fn describe_event(event: &pb::RegistryEvent) -> String {
    use pb::registry_event::Kind;
    let card = |card: &Option<pb::CardRef>| {
        card.as_ref().map_or_else(String::new, |card| {
            format!("card issued {}", card.issue_date)
        })
    };
    match &event.kind {
        Some(Kind::Reported(reported)) => format!(
            "reported {} ({})",
            match reported.kind() {
                pb::LossKind::Stolen => "stolen",
                _ => "lost",
            },
            card(&reported.card)
        ),
        Some(Kind::Issued(issued)) => format!("issued ({})", card(&issued.card)),
        Some(Kind::Revoked(revoked)) => {
            format!("revoked ({}) {}", card(&revoked.card), revoked.note)
        }
        Some(Kind::Cancelled(cancelled)) => format!("citizen cancelled {}", cancelled.note),
        Some(Kind::Withdrawn(withdrawn)) => format!(
            "withdrew report {} {}",
            withdrawn.withdrawn_report_id, withdrawn.note
        ),
        None => "unknown event".to_owned(),
    }
}

/// A number's cards with their verdicts, then every event that touched it.
pub(super) fn describe_record(record: &pb::CitizenRecord) -> String {
    let mut text = format!(
        "{}  (registry sequence {})\ncards:\n",
        record.id_number, record.sequence
    );
    for card in &record.cards {
        let (issued, expires) = card.card.as_ref().map_or(("-", "-"), |card| {
            (card.issue_date.as_str(), card.expiry_date.as_str())
        });
        let verdict = card
            .verdict
            .as_ref()
            .map_or_else(String::new, describe_verdict);
        text += &format!(
            "  issued {issued}  expires {:<8}  {verdict}\n",
            if expires.is_empty() { "?" } else { expires }
        );
    }
    text += "events:\n";
    for change in &record.events {
        if let Some(event) = &change.event {
            text += &format!(
                "  #{:<6} {}  {}  report {} by {}\n",
                change.sequence,
                china_time(event.occurred_at.as_ref()),
                describe_event(event).trim_end(),
                event.report_id,
                event.authority
            );
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_read_as_the_words_of_their_wire_names() {
        assert_eq!(reason_name(pb::Reason::Stolen), "stolen");
        assert_eq!(
            reason_name(pb::Reason::CitizenCancelled),
            "citizen cancelled"
        );
        assert_eq!(reason_name(pb::Reason::FirstGeneration), "first generation");
    }
}
