//! `idguard.v1.Registry`: events from police loss-report systems and issuing organs, and the
//! history of a number for auditors.

use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use super::{Draining, check_response, invalid_argument, next_message, now, rpc_status};
use crate::card::{
    Card, FieldError, PresentedCard, china_today, format_date, parse_registrable_number,
};
use crate::event::validate_event;
use crate::feed;
use crate::proto::v1::{self as pb, registry_server::Registry};
use crate::registry::verdict;
use crate::store::{Applied, ApplyError, PendingApply, Store};

/// Events of one `Submit` stream that may be queued or awaiting durability at once; past that the
/// stream is not read, so HTTP/2 flow control slows the reporter down.
const SUBMIT_IN_FLIGHT: usize = 1024;
/// Changes a `Watch` may have read ahead of a slow reader.
const WATCH_BUFFER: usize = 256;

/// The `Registry` service over a store.
pub struct RegistryService {
    store: Arc<Store>,
    draining: Draining,
}

impl RegistryService {
    pub fn new(store: Arc<Store>, draining: Draining) -> Self {
        Self { store, draining }
    }
}

/// An event of a `Submit` stream on its way to its ack, kept in the order received.
enum InFlight {
    /// Queued for the writer: its ack waits for durability.
    Queued(String, PendingApply),
    /// Refused before it was queued.
    Refused(String, Status),
    /// The stream ended with an error after the acks before it.
    End(Status),
}

fn ack(report_id: String, outcome: Result<Applied, ApplyError>) -> pb::SubmitAck {
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
    store: Arc<Store>,
    mut events: Streaming<pb::RegistryEvent>,
    in_flight: mpsc::Sender<InFlight>,
    mut draining: Draining,
) {
    loop {
        let received = next_message(
            &mut events,
            &mut draining,
            "the server is shutting down: resubmit the events not acknowledged",
        );
        let next = match received.await {
            Ok(None) => return,
            Ok(Some(event)) => {
                let report_id = event.report_id.clone();
                match validate_event(event, now()) {
                    Err(error) => InFlight::Refused(report_id, invalid_argument(error)),
                    Ok(valid) => match store.enqueue(valid).await {
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
        let valid = validate_event(request.into_inner(), now()).map_err(invalid_argument)?;
        let report_id = valid.event.report_id.as_str().to_owned();
        let applied = self.store.apply(valid).await?;
        tracing::info!(
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
        let (in_flight, queued) = mpsc::channel(SUBMIT_IN_FLIGHT);
        let (acks, stream) = mpsc::channel(SUBMIT_IN_FLIGHT);
        tokio::spawn(read_submissions(
            Arc::clone(&self.store),
            request.into_inner(),
            in_flight,
            self.draining.clone(),
        ));
        tokio::spawn(send_acks(queued, acks));
        Ok(Response::new(ReceiverStream::new(stream)))
    }

    type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::RegistryChange, Status>> + Send>>;

    async fn watch(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let from = request.get_ref().from_sequence;
        let current = self.store.sequence();
        if from > current + 1 {
            return Err(Status::out_of_range(format!(
                "from_sequence: {from} is beyond the next sequence, {}",
                current + 1
            )));
        }
        let (changes, stream) = mpsc::channel(WATCH_BUFFER);
        tokio::spawn(feed::follow(
            Arc::clone(&self.store),
            from,
            changes,
            self.draining.clone(),
        ));
        let stream = ReceiverStream::new(stream).map(|change| change.map_err(Status::from));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn get_record(
        &self,
        request: Request<pb::GetRecordRequest>,
    ) -> Result<Response<pb::CitizenRecord>, Status> {
        let today = china_today(now());
        let number = parse_registrable_number(&request.get_ref().id_number, today)
            .map_err(|rule| invalid_argument(FieldError::new("id_number", rule)))?;
        let not_found = || Status::not_found(format!("no record for id_number {number}"));
        if !self.store.may_have_record(number) {
            return Err(not_found());
        }
        let sequence = self.store.sequence();
        let found = self
            .store
            .read(move |store| {
                let Some(state) = store.citizens(&[number])?.pop().flatten() else {
                    return Ok(None);
                };
                let sequences: Vec<u64> = state.entries().iter().map(|e| e.sequence).collect();
                let events = store.events(&sequences)?;
                Ok(Some((state, events)))
            })
            .await?;
        let (state, events) = found.ok_or_else(not_found)?;
        let cards = state
            .known_cards()
            .into_iter()
            .map(|(issued, expiry)| {
                let card = Card {
                    number,
                    issued,
                    expiry,
                };
                let verdict = verdict(&PresentedCard::Current(card), Some(&state), today);
                pb::CardRecord {
                    card: Some(pb::CardRef {
                        id_number: number.to_string(),
                        issue_date: format_date(issued),
                        expiry_date: expiry.to_string(),
                    }),
                    verdict: Some(check_response(verdict, sequence)),
                }
            })
            .collect();
        Ok(Response::new(pb::CitizenRecord {
            id_number: number.to_string(),
            cards,
            events,
            sequence,
        }))
    }
}
