//! `idguard.v1.Verification`: card checks for banks, hotels and ticketing.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use time::Date;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use super::{
    Draining, MAX_SEQUENCE_WAIT, check_response, gather_messages, invalid_argument,
    malformed_response, now, reach_sequence, sequence_wait_budget,
};
use crate::card::{CardText, FieldError, PresentedCard, Rule, china_today, parse_presented_card};
use crate::check::check_cards;
use crate::proto::v1::{self as pb, verification_server::Verification};
use crate::store::Store;

/// The most cards one `CheckBatch` may carry.
pub const MAX_BATCH: usize = 10_000;
/// Batches of responses a `CheckStream` may have computed ahead of a slow reader.
const STREAM_BUFFER: usize = 4;
/// The most requests of a `CheckStream` answered together (see [`answer_streamed`]).
const STREAM_GATHER: usize = 256;

/// The `Verification` service over a store.
pub struct VerificationService {
    store: Arc<Store>,
    draining: Draining,
}

impl VerificationService {
    pub fn new(store: Arc<Store>, draining: Draining) -> Self {
        Self { store, draining }
    }
}

/// Validates a wire card; errors name the field within the card (`id_number`, ...).
fn parse_card(card: &pb::CardRef, today: Date) -> Result<PresentedCard, FieldError> {
    parse_presented_card(
        CardText {
            id_number: &card.id_number,
            issue_date: &card.issue_date,
            expiry_date: &card.expiry_date,
        },
        today,
    )
}

/// Validates the card of a `CheckRequest`; errors name the field as `card.id_number` and the like.
fn parse_request(request: &pb::CheckRequest, today: Date) -> Result<PresentedCard, FieldError> {
    let card = request
        .card
        .as_ref()
        .ok_or_else(|| FieldError::new("card", Rule::Required))?;
    parse_card(card, today).map_err(|error| error.within("card"))
}

/// Answers every item, malformed ones included, in order.
async fn answer(
    store: &Arc<Store>,
    items: Vec<Result<PresentedCard, FieldError>>,
    today: Date,
) -> Result<Vec<pb::CheckResponse>, Status> {
    let cards: Vec<PresentedCard> = items.iter().filter_map(|item| item.clone().ok()).collect();
    let (verdicts, sequence) = check_cards(store, &cards, today).await?;
    let mut verdicts = verdicts.into_iter();
    items
        .into_iter()
        .map(|item| match item {
            Ok(_) => verdicts
                .next()
                .map(|verdict| check_response(verdict, sequence))
                .ok_or_else(|| Status::internal("fewer verdicts than cards")),
            Err(error) => Ok(malformed_response(&error, sequence)),
        })
        .collect()
}

/// Answers gathered requests of a `CheckStream`, in order: a malformed card is answered, not an
/// error. Requests whose `min_sequence` is already reached are checked together; one that must
/// wait does so on its own, as it would have alone, and an error ends the answers there.
async fn answer_streamed(
    store: &Arc<Store>,
    requests: &[pb::CheckRequest],
) -> Vec<Result<pb::CheckResponse, Status>> {
    let today = china_today(now());
    let mut outcomes = Vec::with_capacity(requests.len());
    let mut rest = requests;
    while let Some(first) = rest.first() {
        let reached = store.sequence();
        let ready = rest
            .iter()
            .take_while(|request| request.min_sequence <= reached)
            .count();
        if ready == 0 {
            let waited = reach_sequence(store, first.min_sequence, MAX_SEQUENCE_WAIT).await;
            if let Err(status) = waited {
                outcomes.push(Err(status));
                return outcomes;
            }
            continue;
        }
        let items = rest[..ready]
            .iter()
            .map(|request| parse_request(request, today))
            .collect();
        match answer(store, items, today).await {
            Ok(responses) => outcomes.extend(responses.into_iter().map(Ok)),
            Err(status) => {
                outcomes.push(Err(status));
                return outcomes;
            }
        }
        rest = &rest[ready..];
    }
    outcomes
}

/// The items of batches received from a channel, one at a time: the `CheckStream` task hands its
/// answers over a batch at a time, and the transport takes them one by one.
pub struct Unbatched<T> {
    batches: mpsc::Receiver<Vec<T>>,
    current: std::vec::IntoIter<T>,
}

impl<T: Unpin> Stream for Unbatched<T> {
    type Item = T;

    fn poll_next(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Option<T>> {
        let this = self.get_mut();
        loop {
            if let Some(item) = this.current.next() {
                return Poll::Ready(Some(item));
            }
            match this.batches.poll_recv(context) {
                Poll::Ready(Some(batch)) => this.current = batch.into_iter(),
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

#[tonic::async_trait]
impl Verification for VerificationService {
    async fn check(
        &self,
        request: Request<pb::CheckRequest>,
    ) -> Result<Response<pb::CheckResponse>, Status> {
        let today = china_today(now());
        let card = parse_request(request.get_ref(), today).map_err(invalid_argument)?;
        let budget = sequence_wait_budget(request.metadata());
        reach_sequence(&self.store, request.get_ref().min_sequence, budget).await?;
        let (verdicts, sequence) = check_cards(&self.store, &[card], today).await?;
        let verdict = verdicts
            .into_iter()
            .next()
            .ok_or_else(|| Status::internal("no verdict for the card"))?;
        Ok(Response::new(check_response(verdict, sequence)))
    }

    async fn check_batch(
        &self,
        request: Request<pb::CheckBatchRequest>,
    ) -> Result<Response<pb::CheckBatchResponse>, Status> {
        let cards = &request.get_ref().cards;
        if cards.len() > MAX_BATCH {
            return Err(Status::invalid_argument(format!(
                "cards: at most {MAX_BATCH} cards per batch, got {}",
                cards.len()
            )));
        }
        let today = china_today(now());
        let items = cards
            .iter()
            .enumerate()
            .map(|(position, card)| {
                parse_card(card, today).map_err(|error| error.within(&format!("cards[{position}]")))
            })
            .collect();
        let budget = sequence_wait_budget(request.metadata());
        reach_sequence(&self.store, request.get_ref().min_sequence, budget).await?;
        let results = answer(&self.store, items, today).await?;
        Ok(Response::new(pb::CheckBatchResponse { results }))
    }

    type CheckStreamStream = Unbatched<Result<pb::CheckResponse, Status>>;

    async fn check_stream(
        &self,
        request: Request<Streaming<pb::CheckRequest>>,
    ) -> Result<Response<Self::CheckStreamStream>, Status> {
        let mut requests = request.into_inner();
        let store = Arc::clone(&self.store);
        let (responses, stream) = mpsc::channel(STREAM_BUFFER);
        let mut draining = self.draining.clone();
        tokio::spawn(async move {
            loop {
                let (requests, ended) = gather_messages(
                    &mut requests,
                    &mut draining,
                    STREAM_GATHER,
                    "the server is shutting down: reconnect to another node or retry",
                )
                .await;
                let mut answers = answer_streamed(&store, &requests).await;
                let failed = answers.last().is_some_and(Result::is_err);
                let finished = failed || ended.is_some() || requests.is_empty();
                answers.extend(ended.map(Err));
                // One hand-over per batch of answers, not per answer.
                if responses.send(answers).await.is_err() || finished {
                    return;
                }
            }
        });
        Ok(Response::new(Unbatched {
            batches: stream,
            current: Vec::new().into_iter(),
        }))
    }
}
