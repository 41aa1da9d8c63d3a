//! The operator's commands: `backup` (online, through the server), `restore` (offline, into a
//! new data dir) and `hash-token` (for the access policy).

use clap::Args;

use super::CliError;
use super::client::{ServerArgs, connect};
use crate::proto::v1::{self as pb, admin_client::AdminClient};

#[derive(Debug, Args)]
pub struct BackupArgs {
    /// A new directory on the server's host; an absolute path (relative ones are made
    /// absolute here, for a server on this machine).
    #[arg(long)]
    to: std::path::PathBuf,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// A directory written by `idguard backup`.
    #[arg(long)]
    from: std::path::PathBuf,
    /// The new registry: a missing or empty directory.
    #[arg(long)]
    data_dir: std::path::PathBuf,
}

pub(super) async fn backup(args: BackupArgs) -> Result<u8, CliError> {
    let to = std::path::absolute(&args.to).map_err(|source| CliError::Write {
        path: args.to.clone(),
        source,
    })?;
    let mut client = AdminClient::new(connect(&args.server).await?);
    let backup = client
        .backup(pb::BackupRequest {
            to_dir: to.display().to_string(),
        })
        .await?
        .into_inner();
    println!(
        "backup of the registry at sequence {} written to {}",
        backup.sequence, backup.to_dir
    );
    Ok(0)
}

pub(super) async fn restore(args: RestoreArgs) -> Result<u8, CliError> {
    let RestoreArgs { from, data_dir } = args;
    let sequence = tokio::task::spawn_blocking(move || {
        crate::store::restore(&from, &data_dir).map(|sequence| (sequence, data_dir))
    })
    .await
    .map_err(CliError::task_failed)?;
    let (sequence, data_dir) = sequence.map_err(CliError::Restore)?;
    println!(
        "restored the registry at sequence {sequence} into {}",
        data_dir.display()
    );
    Ok(0)
}

/// Reads a bearer token on standard input and prints its SHA-256, as the policy holds it.
pub(super) fn hash_token() -> Result<u8, CliError> {
    let mut token = String::new();
    std::io::stdin()
        .read_line(&mut token)
        .map_err(|source| CliError::Read {
            path: "standard input".into(),
            source,
        })?;
    println!("{}", crate::access::TokenDigest::of(token.trim()).to_hex());
    Ok(0)
}
