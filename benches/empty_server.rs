//! The ceiling for a gRPC service on this machine: `Verification` with the same message types as
//! idguard, answering every card VALID without looking at it. `benches/compare.sh` measures it
//! beside idguard and Redis with the same load harness.
//!
//! Run: `empty_server --serve 127.0.0.1:0` (prints `listening on ADDR`); without `--serve` it
//! exits at once, so that `cargo bench` passes over it.

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status, Streaming};

use idguard::proto::v1::verification_server::{Verification, VerificationServer};
use idguard::proto::v1::{self as pb};

/// The allocator idguard's binary uses, so that the ceiling is measured as idguard runs.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Empty;

fn valid() -> pb::CheckResponse {
    pb::CheckResponse {
        signature: None,
        status: pb::CardStatus::Valid.into(),
        reason: pb::Reason::Unspecified.into(),
        invalid_since: None,
        sequence: 0,
        detail: "no record invalidates this card".into(),
    }
}

#[tonic::async_trait]
impl Verification for Empty {
    async fn check(
        &self,
        _: Request<pb::CheckRequest>,
    ) -> Result<Response<pb::CheckResponse>, Status> {
        Ok(Response::new(valid()))
    }

    async fn check_batch(
        &self,
        request: Request<pb::CheckBatchRequest>,
    ) -> Result<Response<pb::CheckBatchResponse>, Status> {
        let results = vec![valid(); request.get_ref().cards.len()];
        Ok(Response::new(pb::CheckBatchResponse { results }))
    }

    type CheckStreamStream = ReceiverStream<Result<pb::CheckResponse, Status>>;

    async fn check_stream(
        &self,
        request: Request<Streaming<pb::CheckRequest>>,
    ) -> Result<Response<Self::CheckStreamStream>, Status> {
        let mut requests = request.into_inner();
        let (responses, stream) = mpsc::channel(64);
        tokio::spawn(async move {
            while let Ok(Some(_)) = requests.message().await {
                if responses.send(Ok(valid())).await.is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(stream)))
    }

    async fn get_signing_keys(
        &self,
        _: Request<pb::GetSigningKeysRequest>,
    ) -> Result<Response<pb::GetSigningKeysResponse>, Status> {
        Ok(Response::new(pb::GetSigningKeysResponse::default()))
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let Some(address) = args
        .iter()
        .position(|a| a == "--serve")
        .and_then(|at| args.get(at + 1))
    else {
        eprintln!("empty_server: pass --serve ADDR to run it");
        return Ok(());
    };
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(address.as_str()).await?;
        println!("listening on {}", listener.local_addr()?);
        tonic::transport::Server::builder()
            .add_service(
                VerificationServer::new(Empty)
                    .max_decoding_message_size(idguard::server::MAX_MESSAGE_BYTES),
            )
            .serve_with_incoming(TcpIncoming::from(listener).with_nodelay(Some(true)))
            .await?;
        Ok(())
    })
}
