//! `idguard submit`: export files streamed over `Submit`, as a reporter replaying a backlog would.

use clap::Args;

use super::CliError;
use super::client::{Authenticated, ServerArgs, connect};
use crate::event_file::Origin;
use crate::proto::v1::registry_client::RegistryClient;

#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// Export files, sent in order.
    #[arg(required = true)]
    files: Vec<std::path::PathBuf>,
    #[command(flatten)]
    server: ServerArgs,
}

/// Exit 0 when every record was accepted (or already was), 2 when any was refused.
pub(super) async fn run(args: SubmitArgs) -> Result<u8, CliError> {
    let channel = connect(&args.server).await?;
    submit_files(RegistryClient::new(channel), &args.files).await
}

/// `idguard submit`: streams every record of `files` and reports refusals by file and line.
async fn submit_files(
    mut client: RegistryClient<Authenticated>,
    files: &[std::path::PathBuf],
) -> Result<u8, CliError> {
    let started = std::time::Instant::now();
    let (events, outgoing) = tokio::sync::mpsc::channel(1024);
    let (origins, mut sent) = tokio::sync::mpsc::unbounded_channel::<Origin>();
    let mut acks = client
        .submit(tokio_stream::wrappers::ReceiverStream::new(outgoing))
        .await?
        .into_inner();
    let names = files.to_owned();
    let reader = tokio::task::spawn_blocking(move || -> Result<u64, CliError> {
        let mut refused_here = 0;
        for (index, file) in names.iter().enumerate() {
            let records =
                crate::event_file::read_events(file).map_err(|source| CliError::Read {
                    path: file.clone(),
                    source,
                })?;
            for (line, record) in records {
                match record {
                    Ok(event) => {
                        let origin = Origin {
                            file: index as u32,
                            line,
                        };
                        if origins.send(origin).is_err() || events.blocking_send(event).is_err() {
                            return Ok(refused_here);
                        }
                    }
                    Err(why) => {
                        eprintln!("{}:{line}: {why}", file.display());
                        refused_here += 1;
                    }
                }
            }
        }
        Ok(refused_here)
    });
    let (mut accepted, mut duplicates, mut refused) = (0u64, 0u64, 0u64);
    while let Some(ack) = acks.message().await? {
        let origin = sent.recv().await;
        match (&ack.error, origin) {
            (Some(error), Some(origin)) => {
                eprintln!(
                    "{}:{}: {}: {}",
                    files[origin.file as usize].display(),
                    origin.line,
                    ack.report_id,
                    error.message
                );
                refused += 1;
            }
            (Some(_), None) => refused += 1,
            (None, _) if ack.duplicate => duplicates += 1,
            (None, _) => accepted += 1,
        }
    }
    refused += reader.await.map_err(CliError::task_failed)??;
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "{accepted} accepted, {duplicates} duplicates, {refused} refused in {seconds:.1} s ({:.0} events/s)",
        (accepted + duplicates) as f64 / seconds.max(1e-9)
    );
    Ok(if refused == 0 { 0 } else { 2 })
}
