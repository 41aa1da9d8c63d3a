//! `idguard serve` and `idguard config check`: the server, and its configuration checked without
//! starting it.

use clap::Subcommand;

use super::{Cli, CliError};
use crate::config::ServeConfig;

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Check a `serve` configuration file with the environment over it, and the files it names
    /// (TLS, access policy, signing keys); print the effective settings and where each came from.
    Check { file: std::path::PathBuf },
}

/// `serve` as clap knows it, to lay a configuration file's settings under as defaults.
pub(super) fn serve_command() -> clap::Command {
    use clap::CommandFactory;
    Cli::command()
        .find_subcommand("serve")
        .cloned()
        .unwrap_or_else(|| unreachable!("serve is a subcommand"))
}

/// `idguard config check FILE`.
pub(super) fn check_config(file: &std::path::Path) -> Result<u8, CliError> {
    use clap::FromArgMatches;
    let (serve, from_file) =
        crate::config::with_file_defaults(serve_command(), file).map_err(CliError::Config)?;
    let matches = serve
        .clone()
        .try_get_matches_from(["serve"])
        .map_err(|error| CliError::Usage(error.to_string()))?;
    let config = ServeConfig::from_arg_matches(&matches)
        .map_err(|error| CliError::Usage(error.to_string()))?;
    crate::server::Guards::from_config(&config)?;
    print!("{}", crate::config::describe(&matches, &serve, &from_file));
    Ok(0)
}

pub(super) async fn run(config: ServeConfig) -> Result<u8, CliError> {
    crate::server::run(config).await?;
    Ok(0)
}
