//! `idguard.v1.Verification`: card checks for banks, hotels and ticketing.
//!
//! The service validates and authorizes; every verdict then goes out the same way, through
//! [`Verdicts`]: counted for the caller, recorded in the hit log first if it is a hit, cut down to
//! the caller's disclosure profile, then signed.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::mpsc;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use super::{Draining, gather_messages, invalid_argument, now, sequence_wait_budget};
use crate::access::{Access, Activity, Needs, Role};
use crate::app::verdicts::{Judged, Verdicts, check_nonce, parse_card, parse_request};
use crate::card::china_today;
use crate::proto::{v1 as pb, v1::verification_server::Verification};
use crate::signing::VerdictSigner;
use crate::store::Store;

/// The most cards one `CheckBatch` may carry.
pub const MAX_BATCH: usize = 10_000;
/// Batches of responses a `CheckStream` may have computed ahead of a slow reader.
const STREAM_BUFFER: usize = 4;
/// The most requests of a `CheckStream` answered together (see [`Verdicts::answer_streamed`]).
const STREAM_GATHER: usize = 256;

/// The `Verification` service over a store.
pub struct VerificationService {
    verdicts: Verdicts,
    access: Arc<Access>,
    draining: Draining,
}

impl VerificationService {
    pub fn new(
        store: Arc<Store>,
        access: Arc<Access>,
        signer: Option<Arc<VerdictSigner>>,
        draining: Draining,
    ) -> Self {
        Self {
            verdicts: Verdicts::new(store, signer),
            access,
            draining,
        }
    }
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
        let caller = self
            .access
            .authorize(&request, Needs::Role(Role::Checker))?;
        let reserved = self.access.reserve(&caller, 1)?;
        let today = china_today(now());
        let wire = request.get_ref();
        let card = check_nonce(&wire.nonce)
            .and_then(|()| parse_request(wire, today))
            .map_err(|error| {
                Activity::add(&caller.principal.activity.checks_malformed, 1);
                invalid_argument(error)
            })?;
        let budget = sequence_wait_budget(request.metadata());
        // Waiting costs only the caller's own share of calls in flight.
        self.verdicts.reach(wire.min_sequence, budget).await?;
        let _permit = reserved.start(&self.access)?;
        let (verdicts, sequence) = self.verdicts.judge(vec![Ok(card)], today).await?;
        let judged = verdicts
            .into_iter()
            .map(|verdict| Judged {
                card: wire.card.as_ref(),
                nonce: &wire.nonce,
                verdict,
            })
            .collect();
        let response = self
            .verdicts
            .deliver(&caller, judged, sequence)
            .await?
            .pop()
            .ok_or_else(|| Status::internal("no verdict for the card"))?;
        Ok(Response::new(response))
    }

    async fn check_batch(
        &self,
        request: Request<pb::CheckBatchRequest>,
    ) -> Result<Response<pb::CheckBatchResponse>, Status> {
        let caller = self
            .access
            .authorize(&request, Needs::Role(Role::Checker))?;
        let wire = request.get_ref();
        let cards = &wire.cards;
        if cards.len() > MAX_BATCH {
            return Err(Status::invalid_argument(format!(
                "cards: at most {MAX_BATCH} cards per batch, got {}",
                cards.len()
            )));
        }
        check_nonce(&wire.nonce).map_err(invalid_argument)?;
        let reserved = self.access.reserve(&caller, cards.len() as u64)?;
        let today = china_today(now());
        let items = cards
            .iter()
            .enumerate()
            .map(|(position, card)| {
                parse_card(card, today).map_err(|error| error.within(&format!("cards[{position}]")))
            })
            .collect();
        let budget = sequence_wait_budget(request.metadata());
        self.verdicts.reach(wire.min_sequence, budget).await?;
        let _permit = reserved.start(&self.access)?;
        let (verdicts, sequence) = self.verdicts.judge(items, today).await?;
        let judged = cards
            .iter()
            .zip(verdicts)
            .map(|(card, verdict)| Judged {
                card: Some(card),
                nonce: &wire.nonce,
                verdict,
            })
            .collect();
        let results = self.verdicts.deliver(&caller, judged, sequence).await?;
        Ok(Response::new(pb::CheckBatchResponse { results }))
    }

    type CheckStreamStream = Unbatched<Result<pb::CheckResponse, Status>>;

    async fn check_stream(
        &self,
        request: Request<Streaming<pb::CheckRequest>>,
    ) -> Result<Response<Self::CheckStreamStream>, Status> {
        let caller = self
            .access
            .authorize(&request, Needs::Role(Role::Checker))?;
        let mut requests = request.into_inner();
        let verdicts = self.verdicts.clone();
        let access = Arc::clone(&self.access);
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
                // Over its rate, a stream is slowed down rather than ended.
                access.pace(&caller, requests.len() as u64).await;
                let mut answers: Vec<Result<pb::CheckResponse, Status>> = verdicts
                    .answer_streamed(&caller, &requests)
                    .await
                    .into_iter()
                    .map(|answer| answer.map_err(Status::from))
                    .collect();
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

    async fn get_signing_keys(
        &self,
        request: Request<pb::GetSigningKeysRequest>,
    ) -> Result<Response<pb::GetSigningKeysResponse>, Status> {
        let caller = self.access.authorize(&request, Needs::AnyRole)?;
        let _permit = self.access.admit(&caller, 1)?;
        let keys = self.verdicts.public_keys();
        Ok(Response::new(pb::GetSigningKeysResponse { keys }))
    }
}
