//! Reaching a server: the endpoint and TLS settings of `--server`, and the credentials every call
//! carries.

use clap::Args;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use super::CliError;

/// Where the server is and who the caller is, shared by every client command.
#[derive(Debug, Args)]
pub struct ServerArgs {
    /// The idguard server to ask (`https://...` for a server with TLS).
    #[arg(long, env = "IDGUARD_SERVER", default_value = "http://127.0.0.1:50051")]
    pub server: String,
    /// PEM certificate of the CA that signed the server's certificate.
    #[arg(long, env = "IDGUARD_CA")]
    pub ca: Option<std::path::PathBuf>,
    /// PEM client certificate, for a server that requires mutual TLS.
    #[arg(long, env = "IDGUARD_CERT", requires = "key")]
    pub cert: Option<std::path::PathBuf>,
    /// PEM private key of `--cert`.
    #[arg(long, env = "IDGUARD_KEY", requires = "cert")]
    pub key: Option<std::path::PathBuf>,
    /// Bearer token, for a principal without a client certificate (better given by the
    /// environment than on a command line that other users can see).
    #[arg(long, env = "IDGUARD_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Your branch or terminal, recorded with any hit (`x-idguard-terminal`).
    #[arg(long, env = "IDGUARD_TERMINAL")]
    pub terminal: Option<String>,
}

/// Adds the caller's bearer token and terminal to every call.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    authorization: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
    terminal: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
}

impl Credentials {
    fn of(args: &ServerArgs) -> Result<Self, CliError> {
        let header = |flag: &str, text: String| {
            text.parse().map_err(|_| {
                CliError::Rpc(tonic::Status::invalid_argument(format!(
                    "{flag}: printable ASCII only"
                )))
            })
        };
        Ok(Self {
            authorization: args
                .token
                .as_ref()
                .map(|token| header("--token", format!("Bearer {token}")))
                .transpose()?,
            terminal: args
                .terminal
                .as_ref()
                .map(|terminal| header("--terminal", terminal.clone()))
                .transpose()?,
        })
    }
}

impl tonic::service::Interceptor for Credentials {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.authorization {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        if let Some(value) = &self.terminal {
            request
                .metadata_mut()
                .insert(crate::access::TERMINAL_HEADER, value.clone());
        }
        Ok(request)
    }
}

/// A channel that sends the caller's credentials.
pub type Authenticated = tonic::service::interceptor::InterceptedService<Channel, Credentials>;

/// The server `args` name, with its TLS settings when a CA or a client certificate is given.
pub(super) fn endpoint(args: &ServerArgs) -> Result<Endpoint, CliError> {
    let endpoint = Channel::from_shared(args.server.clone()).map_err(|error| {
        CliError::Rpc(tonic::Status::invalid_argument(format!(
            "--server: {error}"
        )))
    })?;
    if args.ca.is_none() && args.cert.is_none() {
        return Ok(endpoint);
    }
    let read = |path: &std::path::Path| {
        std::fs::read(path).map_err(|source| CliError::Read {
            path: path.to_owned(),
            source,
        })
    };
    let mut tls = ClientTlsConfig::new();
    if let Some(ca) = &args.ca {
        tls = tls.ca_certificate(Certificate::from_pem(read(ca)?));
    }
    if let (Some(cert), Some(key)) = (&args.cert, &args.key) {
        tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
    }
    endpoint
        .tls_config(tls)
        .map_err(|source| CliError::Connect {
            server: args.server.clone(),
            source,
        })
}

/// A connection to the server `args` name, sending its credentials.
pub(super) async fn connect(args: &ServerArgs) -> Result<Authenticated, CliError> {
    let channel = endpoint(args)?
        .connect()
        .await
        .map_err(|source| CliError::Connect {
            server: args.server.clone(),
            source,
        })?;
    Ok(tonic::service::interceptor::InterceptedService::new(
        channel,
        Credentials::of(args)?,
    ))
}
