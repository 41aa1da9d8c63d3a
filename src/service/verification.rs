//! `idguard.v1.Verification`: card checks for banks, hotels and ticketing.

use std::sync::Arc;

use time::Date;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::{
    Draining, MAX_SEQUENCE_WAIT, check_response, invalid_argument, malformed_response,
    next_message, now, reach_sequence, sequence_wait_budget,
};
use crate::card::{CardText, FieldError, PresentedCard, Rule, china_today, parse_presented_card};
use crate::check::check_cards;
use crate::proto::v1::{self as pb, verification_server::Verification};
use crate::store::Store;

/// The most cards one `CheckBatch` may carry.
pub const MAX_BATCH: usize = 10_000;
/// Responses a `CheckStream` may have computed ahead of a slow reader.
const STREAM_BUFFER: usize = 64;

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

/// Answers one request of a `CheckStream`: a malformed card is answered, not an error.
async fn answer_streamed(
    store: &Arc<Store>,
    request: &pb::CheckRequest,
) -> Result<pb::CheckResponse, Status> {
    let today = china_today(now());
    let item = parse_request(request, today);
    reach_sequence(store, request.min_sequence, MAX_SEQUENCE_WAIT).await?;
    answer(store, vec![item], today)
        .await?
        .pop()
        .ok_or_else(|| Status::internal("no verdict for the card"))
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

    type CheckStreamStream = ReceiverStream<Result<pb::CheckResponse, Status>>;

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
                let next = next_message(
                    &mut requests,
                    &mut draining,
                    "the server is shutting down: reconnect to another node or retry",
                );
                let outcome = match next.await {
                    Ok(None) => break,
                    Ok(Some(request)) => answer_streamed(&store, &request).await,
                    Err(status) => Err(status),
                };
                let failed = outcome.is_err();
                if responses.send(outcome).await.is_err() || failed {
                    break;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(stream)))
    }
}
