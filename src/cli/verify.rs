//! `idguard signing-keys` and `idguard verify`: a verdict saved by `check --save` checked offline,
//! years later if need be, against keys saved while the server was at hand.

use clap::Args;

use super::CliError;
use super::client::{ServerArgs, connect};
use super::render::{china_time, describe_verdict};
use super::verdict_file::{NotHex, SavedKey, SavedVerdict, read_json, write_json};
use crate::proto::v1::{self as pb, verification_client::VerificationClient};

#[derive(Debug, Args)]
pub struct SigningKeysArgs {
    /// Where to write them.
    #[arg(long)]
    out: std::path::PathBuf,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// A verdict saved by `idguard check --save`.
    verdict: std::path::PathBuf,
    /// Signing keys saved by `idguard signing-keys`.
    #[arg(long)]
    keys: std::path::PathBuf,
}

/// Saves the server's verdict signing keys as JSON.
pub(super) async fn save_keys(args: SigningKeysArgs) -> Result<u8, CliError> {
    let mut client = VerificationClient::new(connect(&args.server).await?);
    let keys = client
        .get_signing_keys(pb::GetSigningKeysRequest {})
        .await?
        .into_inner()
        .keys;
    let saved: Vec<_> = keys.iter().map(SavedKey::new).collect();
    write_json(&args.out, &saved)?;
    println!(
        "{} signing keys written to {}",
        saved.len(),
        args.out.display()
    );
    Ok(0)
}

/// `idguard verify`: exit 0 when the saved verdict's signature is genuine, 1 when it is not.
pub(super) fn run(args: &VerifyArgs) -> Result<u8, CliError> {
    let (verdict, keys) = (args.verdict.as_path(), args.keys.as_path());
    let invalid = |path: &std::path::Path, error: NotHex| CliError::Read {
        path: path.to_owned(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, error),
    };
    let saved: SavedVerdict = read_json(verdict)?;
    let (card, response) = saved.to_wire().map_err(|error| invalid(verdict, error))?;
    let keys = read_json::<Vec<SavedKey>>(keys)?
        .iter()
        .map(SavedKey::to_wire)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| invalid(keys, error))?;
    match crate::signing::verify(&card, &response, &keys) {
        Ok(()) => {
            let signature = response.signature.as_ref();
            println!(
                "genuine: signed by key {} at {}: {}",
                signature.map_or("", |signature| signature.key_id.as_str()),
                china_time(signature.and_then(|signature| signature.signed_at.as_ref())),
                describe_verdict(&response)
            );
            Ok(0)
        }
        Err(why) => {
            println!("NOT GENUINE: {why}");
            Ok(1)
        }
    }
}
