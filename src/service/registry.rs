//! `idguard.v1.Registry`: events from police loss-report systems and issuing organs, and the
//! history of a number for auditors.

use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use super::conversions::citizen_record;
use super::{Draining, invalid_argument, next_message, now, rpc_status};
use crate::access::{Access, Caller, Needs, Role};
use crate::app::feed::{self, EventFeed, HitFeed, Log};
use crate::app::record::{MAX_RECORD_PAGE, read_record};
use crate::card::{FieldError, china_today, parse_registrable_number};
use crate::event::{ValidEvent, validate_event};
use crate::ledger::{Ledger, RecordError};
use crate::proto::v1::{self as pb, registry_server::Registry};
use crate::store::{Applied, PendingApply};

/// Events of one `Submit` stream that may be queued or awaiting durability at once; past that the
/// stream is not read, so HTTP/2 flow control slows the reporter down.
const SUBMIT_IN_FLIGHT: usize = 1024;
/// The stream of a `Watch` or `WatchHits`.
pub type Feed<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Changes a `Watch` may have read ahead of a slow reader.
const WATCH_BUFFER: usize = 256;

/// The `Registry` service over a node's ledger.
pub struct RegistryService {
    ledger: Ledger,
    access: Arc<Access>,
    draining: Draining,
}

impl RegistryService {
    pub fn new(ledger: Ledger, access: Arc<Access>, draining: Draining) -> Self {
        Self {
            ledger,
            access,
            draining,
        }
    }
}

/// Validates a wire event and checks that `caller` may send it: INVALID_ARGUMENT naming the field
/// and rule, or PERMISSION_DENIED for an authority outside the caller's scopes or a kind outside
/// its permissions. Whether a withdrawal may undo the event it names is decided by the writer,
/// when the two meet, whichever arrives first.
fn admissible(caller: &Caller, event: pb::RegistryEvent) -> Result<ValidEvent, Status> {
    let valid = validate_event(event, now()).map_err(invalid_argument)?;
    caller.may_send(&valid)?;
    Ok(valid)
}

/// An event of a `Submit` stream on its way to its ack, kept in the order received.
enum InFlight {
    /// Queued for the writer: its ack waits for durability.
    Queued(String, PendingApply<RecordError>),
    /// Refused before it was queued.
    Refused(String, Status),
    /// The stream ended with an error after the acks before it.
    End(Status),
}

fn ack(report_id: String, outcome: Result<Applied, RecordError>) -> pb::SubmitAck {
    match outcome {
        Ok(applied) => pb::SubmitAck {
            report_id,
            sequence: applied.sequence,
            duplicate: applied.duplicate,
            error: None,
        },
        Err(error) => refusal(report_id, &error.into()),
    }
}

fn refusal(report_id: String, status: &Status) -> pb::SubmitAck {
    pb::SubmitAck {
        report_id,
        sequence: 0,
        duplicate: false,
        error: Some(rpc_status(status)),
    }
}

/// Reads a `Submit` stream in order: validates each event and queues it for the writer, passing
/// it on to the acker. Stops reading when the server drains.
async fn read_submissions(
    ledger: Ledger,
    access: Arc<Access>,
    caller: Caller,
    mut events: Streaming<pb::RegistryEvent>,
    in_flight: mpsc::Sender<InFlight>,
    mut draining: Draining,
) {
    let recorder = caller.principal.recorder();
    loop {
        let received = next_message(
            &mut events,
            &mut draining,
            "the server is shutting down: resubmit the events not acknowledged",
        );
        let next = match received.await {
            Ok(None) => return,
            Ok(Some(event)) => {
                // Over its rate, a reporter's stream is slowed down rather than ended.
                access.pace(&caller, 1).await;
                let report_id = event.report_id.clone();
                match admissible(&caller, event) {
                    Err(status) => InFlight::Refused(report_id, status),
                    Ok(valid) => match ledger.enqueue(valid, &recorder).await {
                        Ok(pending) => InFlight::Queued(report_id, pending),
                        Err(error) => InFlight::Refused(report_id, error.into()),
                    },
                }
            }
            Err(status) => InFlight::End(status),
        };
        let ended = matches!(next, InFlight::End(_));
        if in_flight.send(next).await.is_err() || ended {
            return;
        }
    }
}

/// Answers a `Submit` stream's events in the order received, each once it is durable.
async fn send_acks(
    mut in_flight: mpsc::Receiver<InFlight>,
    acks: mpsc::Sender<Result<pb::SubmitAck, Status>>,
) {
    while let Some(next) = in_flight.recv().await {
        let answer = match next {
            InFlight::Queued(report_id, pending) => Ok(ack(report_id, pending.outcome().await)),
            InFlight::Refused(report_id, status) => Ok(refusal(report_id, &status)),
            InFlight::End(status) => Err(status),
        };
        if acks.send(answer).await.is_err() {
            return;
        }
    }
}

#[tonic::async_trait]
impl Registry for RegistryService {
    async fn apply(
        &self,
        request: Request<pb::RegistryEvent>,
    ) -> Result<Response<pb::ApplyResponse>, Status> {
        let caller = self
            .access
            .authorize(&request, Needs::Role(Role::Reporter))?;
        let _permit = self.access.admit(&caller, 1)?;
        let valid = admissible(&caller, request.into_inner())?;
        let report_id = valid.event.report_id.as_str().to_owned();
        let applied = self
            .ledger
            .apply(valid, &caller.principal.recorder())
            .await?;
        // With no call span at the default level (see `crate::call`), the line names its sender.
        tracing::info!(
            principal = %caller.principal.name,
            sequence = applied.sequence,
            duplicate = applied.duplicate,
            "event applied"
        );
        Ok(Response::new(pb::ApplyResponse {
            report_id,
            sequence: applied.sequence,
            duplicate: applied.duplicate,
        }))
    }

    type SubmitStream = ReceiverStream<Result<pb::SubmitAck, Status>>;

    async fn submit(
        &self,
        request: Request<Streaming<pb::RegistryEvent>>,
    ) -> Result<Response<Self::SubmitStream>, Status> {
        let caller = self
            .access
            .authorize(&request, Needs::Role(Role::Reporter))?;
        let (in_flight, queued) = mpsc::channel(SUBMIT_IN_FLIGHT);
        let (acks, stream) = mpsc::channel(SUBMIT_IN_FLIGHT);
        tokio::spawn(read_submissions(
            self.ledger.clone(),
            Arc::clone(&self.access),
            caller,
            request.into_inner(),
            in_flight,
            self.draining.clone(),
        ));
        tokio::spawn(send_acks(queued, acks));
        Ok(Response::new(ReceiverStream::new(stream)))
    }

    type WatchStream = Feed<pb::RegistryChange>;

    async fn watch(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        self.follow(
            &request,
            EventFeed(Arc::clone(self.ledger.store())),
            request.get_ref().from_sequence,
        )
    }

    type WatchHitsStream = Feed<pb::Hit>;

    async fn watch_hits(
        &self,
        request: Request<pb::WatchHitsRequest>,
    ) -> Result<Response<Self::WatchHitsStream>, Status> {
        self.follow(
            &request,
            HitFeed(Arc::clone(self.ledger.store())),
            request.get_ref().from_sequence,
        )
    }

    async fn get_record(
        &self,
        request: Request<pb::GetRecordRequest>,
    ) -> Result<Response<pb::CitizenRecord>, Status> {
        let caller = self
            .access
            .authorize(&request, Needs::Role(Role::Auditor))?;
        let _permit = self.access.admit(&caller, 1)?;
        let today = china_today(now());
        let wire = request.get_ref();
        let number = parse_registrable_number(&wire.id_number, today)
            .map_err(|rule| invalid_argument(FieldError::new("id_number", rule)))?;
        let limit = match wire.limit {
            0 => MAX_RECORD_PAGE,
            limit if limit as usize > MAX_RECORD_PAGE => {
                return Err(Status::invalid_argument(format!(
                    "limit: at most {MAX_RECORD_PAGE} events per page, got {limit}"
                )));
            }
            limit => limit as usize,
        };
        let store = Arc::clone(self.ledger.store());
        read_record(&store, number, wire.after_sequence, limit, today)
            .await?
            .map(|page| Response::new(citizen_record(page)))
            .ok_or_else(|| Status::not_found(format!("no record for id_number {number}")))
    }
}

impl RegistryService {
    /// An auditor's feed of `log` from `from` (see [`feed::follow`]); OUT_OF_RANGE beyond the
    /// next sequence.
    fn follow<L: Log, T, W>(
        &self,
        request: &Request<T>,
        log: L,
        from: u64,
    ) -> Result<Response<Feed<W>>, Status>
    where
        L::Record: Into<W>,
        W: Send + 'static,
    {
        let caller = self.access.authorize(request, Needs::Role(Role::Auditor))?;
        drop(self.access.admit(&caller, 1)?);
        let open = self.access.open_feed(&caller)?;
        let next = log.published() + 1;
        if from > next {
            return Err(Status::out_of_range(format!(
                "from_sequence: {from} is beyond the next sequence, {next}"
            )));
        }
        let (records, stream) = mpsc::channel(WATCH_BUFFER);
        let following = feed::follow(Arc::new(log), from, records, self.draining.clone());
        tokio::spawn(async move {
            following.await;
            drop(open);
        });
        let stream =
            ReceiverStream::new(stream).map(|record| record.map(Into::into).map_err(Status::from));
        Ok(Response::new(Box::pin(stream)))
    }
}
