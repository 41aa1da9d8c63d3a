//! `idguard check`: one card's verdict, printed, and saved for later proof with `--save`.

use clap::Args;

use super::CliError;
use super::client::{ServerArgs, connect};
use super::render::describe_verdict;
use super::verdict_file::{SavedVerdict, write_json};
use crate::proto::v1::{self as pb, verification_client::VerificationClient};

#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    card: CardArgs,
    /// Text bound into the verdict's signature (at most 64 bytes), such as your case number.
    #[arg(long, default_value = "")]
    nonce: String,
    /// Save the verdict as JSON, to check its signature later with `idguard verify`.
    #[arg(long)]
    save: Option<std::path::PathBuf>,
    #[command(flatten)]
    server: ServerArgs,
}

/// A card as the command line names it: the number and its validity dates as printed on it.
#[derive(Debug, Args)]
pub struct CardArgs {
    /// 18-character citizen number (or 15 digits for a first-generation card, checks only).
    pub number: String,
    /// The card's validity start, YYYYMMDD.
    #[arg(long)]
    pub issued: String,
    /// The card's validity end: YYYYMMDD or LONG; omit when unknown.
    #[arg(long, default_value = "")]
    pub expires: String,
}

impl CardArgs {
    pub(super) fn wire(&self) -> pb::CardRef {
        pb::CardRef {
            id_number: self.number.clone(),
            issue_date: self.issued.clone(),
            expiry_date: self.expires.clone(),
        }
    }
}

/// Exit 0 when the card is valid, 1 when it is not.
pub(super) async fn run(args: CheckArgs) -> Result<u8, CliError> {
    let mut client = VerificationClient::new(connect(&args.server).await?);
    let response = client
        .check(pb::CheckRequest {
            nonce: args.nonce.into_bytes(),
            card: Some(args.card.wire()),
            min_sequence: 0,
        })
        .await?
        .into_inner();
    println!("{}", describe_verdict(&response));
    if let Some(path) = args.save {
        write_json(&path, &SavedVerdict::new(&args.card.wire(), &response))?;
    }
    Ok(if response.status() == pb::CardStatus::Valid {
        0
    } else {
        1
    })
}
