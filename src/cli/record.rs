//! `idguard record NUMBER`: every card known for a number and every event that touched it.

use clap::Args;

use super::CliError;
use super::client::{ServerArgs, connect};
use super::render::describe_record;
use crate::proto::v1::{self as pb, registry_client::RegistryClient};

#[derive(Debug, Args)]
pub struct RecordArgs {
    /// 18-character citizen number.
    number: String,
    #[command(flatten)]
    server: ServerArgs,
}

/// Prints the whole history, page after page.
pub(super) async fn run(args: RecordArgs) -> Result<u8, CliError> {
    let mut client = RegistryClient::new(connect(&args.server).await?);
    let mut ask = pb::GetRecordRequest {
        id_number: args.number,
        ..Default::default()
    };
    let mut record = client.get_record(ask.clone()).await?.into_inner();
    while record.next_after_sequence != 0 {
        ask.after_sequence = record.next_after_sequence;
        let page = client.get_record(ask.clone()).await?.into_inner();
        record.events.extend(page.events);
        record.next_after_sequence = page.next_after_sequence;
    }
    print!("{}", describe_record(&record));
    Ok(0)
}
