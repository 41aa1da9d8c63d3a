//! `idguard report KIND`: one registry event, sent with `Apply`, one subcommand per kind.

use clap::{Args, Subcommand};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::CliError;
use super::check::CardArgs;
use super::client::{ServerArgs, connect};
use crate::proto::{self, v1 as pb, v1::registry_client::RegistryClient};

/// What every kind of event carries besides its subject.
#[derive(Debug, Args)]
pub struct EventArgs {
    /// Your idempotency key for this event: retrying with the same key is harmless.
    #[arg(long)]
    pub report_id: String,
    /// Your organ's code: 6-digit division code, optionally followed by a unit suffix.
    #[arg(long)]
    pub authority: String,
    /// When it happened, RFC 3339 (e.g. 2026-11-22T09:30:00+08:00); default now.
    #[arg(long, value_parser = parse_rfc3339)]
    pub occurred_at: Option<OffsetDateTime>,
    #[command(flatten)]
    pub server: ServerArgs,
}

fn parse_rfc3339(text: &str) -> Result<OffsetDateTime, String> {
    OffsetDateTime::parse(text, &Rfc3339).map_err(|error| format!("not RFC 3339: {error}"))
}

#[derive(Debug, Subcommand)]
pub enum ReportCommand {
    /// The holder reported the card lost.
    Lost {
        #[command(flatten)]
        card: CardArgs,
        #[command(flatten)]
        event: EventArgs,
    },
    /// The holder reported the card stolen.
    Stolen {
        #[command(flatten)]
        card: CardArgs,
        #[command(flatten)]
        event: EventArgs,
    },
    /// A new card was issued: every earlier card of the number is superseded.
    Issued {
        #[command(flatten)]
        card: CardArgs,
        #[command(flatten)]
        event: EventArgs,
    },
    /// The issuer revoked the card.
    Revoked {
        #[command(flatten)]
        card: CardArgs,
        #[arg(long, default_value = "")]
        note: String,
        #[command(flatten)]
        event: EventArgs,
    },
    /// The citizen's registration was cancelled: every card of the number is invalid.
    Cancelled {
        /// 18-character citizen number.
        number: String,
        #[arg(long, default_value = "")]
        note: String,
        #[command(flatten)]
        event: EventArgs,
    },
    /// An earlier event was made in error: undo its effect.
    Withdrawn {
        /// The report_id of the event to withdraw.
        withdrawn_report_id: String,
        #[arg(long, default_value = "")]
        note: String,
        #[command(flatten)]
        event: EventArgs,
    },
}

impl ReportCommand {
    fn into_wire(self) -> (pb::RegistryEvent, ServerArgs) {
        use pb::registry_event::Kind;
        let reported = |card: &CardArgs, kind: pb::LossKind| {
            Kind::Reported(pb::CardReported {
                card: Some(card.wire()),
                kind: kind.into(),
            })
        };
        let (kind, event) = match self {
            Self::Lost { card, event } => (reported(&card, pb::LossKind::Lost), event),
            Self::Stolen { card, event } => (reported(&card, pb::LossKind::Stolen), event),
            Self::Issued { card, event } => (
                Kind::Issued(pb::CardIssued {
                    card: Some(card.wire()),
                }),
                event,
            ),
            Self::Revoked { card, note, event } => (
                Kind::Revoked(pb::CardRevoked {
                    card: Some(card.wire()),
                    note,
                }),
                event,
            ),
            Self::Cancelled {
                number,
                note,
                event,
            } => (
                Kind::Cancelled(pb::CitizenCancelled {
                    id_number: number,
                    note,
                }),
                event,
            ),
            Self::Withdrawn {
                withdrawn_report_id,
                note,
                event,
            } => (
                Kind::Withdrawn(pb::ReportWithdrawn {
                    withdrawn_report_id,
                    note,
                }),
                event,
            ),
        };
        let occurred_at = event.occurred_at.unwrap_or_else(OffsetDateTime::now_utc);
        let wire = pb::RegistryEvent {
            report_id: event.report_id,
            authority: event.authority,
            occurred_at: Some(proto::timestamp(occurred_at)),
            kind: Some(kind),
        };
        (wire, event.server)
    }
}

/// Sends the event; a retry of one already accepted says so and changes nothing.
pub(super) async fn run(report: ReportCommand) -> Result<u8, CliError> {
    let (event, server) = report.into_wire();
    let mut client = RegistryClient::new(connect(&server).await?);
    let applied = client.apply(event).await?.into_inner();
    if applied.duplicate {
        println!(
            "report {} was already accepted as sequence {}; nothing changed",
            applied.report_id, applied.sequence
        );
    } else {
        println!(
            "report {} accepted as sequence {}",
            applied.report_id, applied.sequence
        );
    }
    Ok(0)
}
