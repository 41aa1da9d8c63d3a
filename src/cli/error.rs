//! Why a command failed, and the exit code that tells a script (listed in [`super`]).

use tonic::Code;

use crate::app::import::ImportError;
use crate::server::ServeError;
use crate::tools::loadgen::LoadError;

/// Why a command failed, and the exit code that tells a script.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("cannot reach {server}: {source}")]
    Connect {
        server: String,
        source: tonic::transport::Error,
    },
    #[error("{}: {}", status_name(.0.code()), .0.message())]
    Rpc(tonic::Status),
    #[error(transparent)]
    Serve(#[from] ServeError),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Import(#[from] ImportError),
    #[error("restore: {0}")]
    Restore(crate::store::StoreError),
    #[error("configuration: {0}")]
    Config(crate::config::ConfigError),
    #[error("{0}")]
    Usage(String),
    #[error("reading {}: {source}", path.display())]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("writing {}: {source}", path.display())]
    Write {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

fn status_name(code: Code) -> &'static str {
    match code {
        Code::InvalidArgument => "invalid input",
        Code::NotFound => "no record",
        Code::AlreadyExists => "conflict",
        Code::Unavailable => "server unavailable",
        Code::DeadlineExceeded => "timed out",
        Code::Unauthenticated => "not authenticated",
        Code::PermissionDenied => "not permitted",
        Code::ResourceExhausted => "rate limited",
        _ => "server error",
    }
}

impl CliError {
    /// A task that ran a blocking step died (a panic in it), which no command expects.
    pub(super) fn task_failed(error: tokio::task::JoinError) -> Self {
        Self::Rpc(tonic::Status::internal(error.to_string()))
    }

    /// The exit code for this failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Connect { .. } => 3,
            Self::Rpc(status) => match status.code() {
                Code::InvalidArgument | Code::OutOfRange => 2,
                Code::Unavailable | Code::DeadlineExceeded | Code::ResourceExhausted => 3,
                Code::NotFound => 4,
                Code::AlreadyExists => 5,
                Code::Unauthenticated | Code::PermissionDenied => 7,
                _ => 6,
            },
            Self::Load(LoadError::Connect(..)) => 3,
            Self::Read { .. }
            | Self::Import(ImportError::Read { .. })
            | Self::Config(_)
            | Self::Usage(_) => 2,
            Self::Serve(_)
            | Self::Write { .. }
            | Self::Load(_)
            | Self::Import(_)
            | Self::Restore(_) => 6,
        }
    }
}

impl From<tonic::Status> for CliError {
    fn from(status: tonic::Status) -> Self {
        Self::Rpc(status)
    }
}
