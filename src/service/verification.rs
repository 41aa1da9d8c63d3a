//! `idguard.v1.Verification`: card checks for banks, hotels and ticketing.
//!
//! Every verdict goes out the same way ([`Verdicts::deliver`]): counted for the caller, recorded
//! in the hit log first if it is a hit, cut down to the caller's disclosure profile, then signed.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use time::Date;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use super::{
    Draining, MAX_SEQUENCE_WAIT, check_response, gather_messages, invalid_argument,
    malformed_response, now, reach_sequence, sequence_wait_budget, wire_reason,
};
use crate::access::{Access, Activity, Caller, Disclosure, Needs, Role};
use crate::app::check::check_cards;
use crate::card::{CardText, FieldError, PresentedCard, Rule, china_today, parse_presented_card};
use crate::proto::{self, v1 as pb, v1::verification_server::Verification};
use crate::registry::{Reason, Verdict};
use crate::signing::{MAX_NONCE_BYTES, VerdictSigner};
use crate::store::Store;

/// The most cards one `CheckBatch` may carry.
pub const MAX_BATCH: usize = 10_000;
/// Batches of responses a `CheckStream` may have computed ahead of a slow reader.
const STREAM_BUFFER: usize = 4;
/// The most requests of a `CheckStream` answered together (see [`Verdicts::answer_streamed`]).
const STREAM_GATHER: usize = 256;
/// Verdicts a call signs on its reactor thread; more are signed off it.
const SIGN_IN_PLACE: usize = 64;

/// What turns verdicts into answers: the registry, and the caller-facing rules around it.
#[derive(Clone)]
pub struct Verdicts {
    store: Arc<Store>,
    signer: Option<Arc<VerdictSigner>>,
}

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
            verdicts: Verdicts { store, signer },
            access,
            draining,
        }
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

/// The card of a `CheckRequest`, or an error naming the missing field.
fn request_card(request: &pb::CheckRequest) -> Result<&pb::CardRef, FieldError> {
    request
        .card
        .as_ref()
        .ok_or_else(|| FieldError::new("card", Rule::Required))
}

/// Validates the card of a `CheckRequest`; errors name the field as `card.id_number` and the like.
fn parse_request(request: &pb::CheckRequest, today: Date) -> Result<PresentedCard, FieldError> {
    parse_card(request_card(request)?, today).map_err(|error| error.within("card"))
}

/// Refuses a nonce longer than [`MAX_NONCE_BYTES`].
fn check_nonce(nonce: &[u8]) -> Result<(), FieldError> {
    if nonce.len() > MAX_NONCE_BYTES {
        let rule = Rule::TooLong {
            max: MAX_NONCE_BYTES,
            found: nonce.len(),
        };
        return Err(FieldError::new("nonce", rule));
    }
    Ok(())
}

/// A verdict's wire form as the caller's disclosure profile allows it.
fn disclose(response: &mut pb::CheckResponse, disclosure: Disclosure) {
    if disclosure == Disclosure::Status && response.status == pb::CardStatus::Invalid as i32 {
        response.reason = pb::Reason::Unspecified.into();
        response.invalid_since = None;
        response.detail.clear();
    }
}

/// A call's verdicts counted, for the caller's activity and the metrics: a handful of counter
/// updates per call, not one per card.
#[derive(Debug, Default)]
struct Tally {
    valid: u64,
    malformed: u64,
    /// Invalid verdicts by reason; few reasons occur in one call.
    invalid: Vec<(Reason, u64)>,
    hits: u64,
}

impl Tally {
    fn count(&mut self, verdict: &Verdict) {
        match verdict {
            Verdict::Valid => self.valid += 1,
            Verdict::Invalid { reason, .. } => {
                match self.invalid.iter_mut().find(|(seen, _)| seen == reason) {
                    Some((_, count)) => *count += 1,
                    None => self.invalid.push((*reason, 1)),
                }
                if verdict.is_hit() {
                    self.hits += 1;
                }
            }
        }
    }

    fn record(&self, activity: &Activity) {
        let invalid = self.invalid.iter().map(|(_, count)| count).sum();
        Activity::add(&activity.checks_valid, self.valid);
        Activity::add(&activity.checks_invalid, invalid);
        Activity::add(&activity.checks_malformed, self.malformed);
        Activity::add(&activity.hits, self.hits);
        let checks = |verdict: &'static str, reason: &'static str, count: u64| {
            if count > 0 {
                metrics::counter!("idguard_checks_total", "verdict" => verdict, "reason" => reason)
                    .increment(count);
            }
        };
        checks("valid", "", self.valid);
        checks("malformed", "", self.malformed);
        for (reason, count) in &self.invalid {
            checks("invalid", wire_reason(*reason).as_str_name(), *count);
        }
        if self.hits > 0 {
            metrics::counter!("idguard_hits_total").increment(self.hits);
        }
    }
}

/// One item to answer: the card as sent, and its verdict or why it is malformed.
struct Judged<'a> {
    card: Option<&'a pb::CardRef>,
    nonce: &'a [u8],
    verdict: Result<Verdict, FieldError>,
}

impl Verdicts {
    /// Verdicts on every item, malformed ones included, in order, and the sequence they reflect.
    async fn judge(
        &self,
        items: Vec<Result<PresentedCard, FieldError>>,
        today: Date,
    ) -> Result<(Vec<Result<Verdict, FieldError>>, u64), Status> {
        let cards: Vec<PresentedCard> = items.iter().filter_map(|item| item.clone().ok()).collect();
        let (verdicts, sequence) = check_cards(&self.store, &cards, today).await?;
        let mut verdicts = verdicts.into_iter();
        let judged = items
            .into_iter()
            .map(|item| match item {
                Ok(_) => verdicts
                    .next()
                    .map(Ok)
                    .ok_or_else(|| Status::internal("fewer verdicts than cards")),
                Err(error) => Ok(Err(error)),
            })
            .collect::<Result<_, _>>()?;
        Ok((judged, sequence))
    }

    /// The answers to `judged` for `caller`: counted, hits recorded durably before anyone is
    /// answered, then disclosed as the caller's profile allows and signed.
    async fn deliver(
        &self,
        caller: &Caller,
        judged: Vec<Judged<'_>>,
        sequence: u64,
    ) -> Result<Vec<pb::CheckResponse>, Status> {
        let checked_at = now();
        let mut tally = Tally::default();
        let mut hits = Vec::new();
        let mut responses: Vec<pb::CheckResponse> = judged
            .iter()
            .map(|item| match &item.verdict {
                Ok(verdict) => {
                    let response = check_response(*verdict, sequence);
                    tally.count(verdict);
                    if verdict.is_hit() {
                        hits.push(pb::Hit {
                            sequence: 0,
                            principal: caller.principal.name.clone(),
                            terminal: caller.terminal.clone(),
                            card: item.card.cloned(),
                            verdict: Some(response.clone()),
                            checked_at: Some(proto::timestamp(checked_at)),
                        });
                    }
                    response
                }
                Err(error) => {
                    tally.malformed += 1;
                    malformed_response(error, sequence)
                }
            })
            .collect();
        tally.record(&caller.principal.activity);
        // Logged beside the answer, not before it: writing the lines is no part of the hit's
        // latency, which must not stand out (see below).
        let logged: Vec<_> = hits
            .iter()
            .map(|hit| {
                (
                    hit.principal.clone(),
                    hit.terminal.clone(),
                    hit.card.clone(),
                )
            })
            .collect();
        if !logged.is_empty() {
            let log_hits = async move {
                for (principal, terminal, card) in logged {
                    tracing::warn!(
                        %principal,
                        %terminal,
                        card = %masked(card.as_ref()),
                        "hit: an invalidated card was presented"
                    );
                }
            };
            tokio::spawn(log_hits.instrument(tracing::Span::current()));
        }
        // A caller who may see only VALID or INVALID must not read the reason off the answer's
        // timing: an invalid verdict that is no hit (superseded, expired) waits for a hit-log
        // sync as a hit does.
        let reason_hidden = caller.principal.disclosure == Disclosure::Status
            && responses
                .iter()
                .any(|response| response.status() == pb::CardStatus::Invalid);
        if !hits.is_empty() || reason_hidden {
            self.store.record_hits(hits).await?;
        }
        let finish = |responses: &mut Vec<pb::CheckResponse>| {
            for (response, item) in responses.iter_mut().zip(&judged) {
                disclose(response, caller.principal.disclosure);
                if let (Some(signer), Some(card)) = (&self.signer, item.card) {
                    signer.sign(card, response, item.nonce, checked_at);
                }
            }
        };
        // Signing costs about 20 µs a verdict here: a large batch must not hold up the other
        // calls on this reactor thread for tens of milliseconds.
        if self.signer.is_some() && responses.len() > SIGN_IN_PLACE {
            tokio::task::block_in_place(|| finish(&mut responses));
        } else {
            finish(&mut responses);
        }
        Ok(responses)
    }

    /// Answers gathered requests of a `CheckStream`, in order: a malformed card is answered, not
    /// an error. Requests whose `min_sequence` is already reached are checked together; one that
    /// must wait does so on its own, as it would have alone, and an error ends the answers there.
    async fn answer_streamed(
        &self,
        caller: &Caller,
        requests: &[pb::CheckRequest],
    ) -> Vec<Result<pb::CheckResponse, Status>> {
        let today = china_today(now());
        let mut outcomes = Vec::with_capacity(requests.len());
        let mut rest = requests;
        while let Some(first) = rest.first() {
            let reached = self.store.sequence();
            let ready = rest
                .iter()
                .take_while(|request| request.min_sequence <= reached)
                .count();
            if ready == 0 {
                let waited =
                    reach_sequence(&self.store, first.min_sequence, MAX_SEQUENCE_WAIT).await;
                if let Err(status) = waited {
                    outcomes.push(Err(status));
                    return outcomes;
                }
                continue;
            }
            match self.answer_requests(caller, &rest[..ready], today).await {
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

    /// Answers requests whose `min_sequence` is reached, each with its own nonce.
    async fn answer_requests(
        &self,
        caller: &Caller,
        requests: &[pb::CheckRequest],
        today: Date,
    ) -> Result<Vec<pb::CheckResponse>, Status> {
        let items = requests
            .iter()
            .map(|request| check_nonce(&request.nonce).and_then(|()| parse_request(request, today)))
            .collect();
        let (verdicts, sequence) = self.judge(items, today).await?;
        let judged = requests
            .iter()
            .zip(verdicts)
            .map(|(request, verdict)| Judged {
                card: request.card.as_ref(),
                nonce: &request.nonce,
                verdict,
            })
            .collect();
        self.deliver(caller, judged, sequence).await
    }
}

/// A card's number for logs: never whole (see [`crate::card::CitizenNumber::masked`]).
fn masked(card: Option<&pb::CardRef>) -> String {
    crate::card::mask_text(card.map_or("", |card| card.id_number.as_str()))
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
        reach_sequence(&self.verdicts.store, wire.min_sequence, budget).await?;
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
        reach_sequence(&self.verdicts.store, wire.min_sequence, budget).await?;
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
                let mut answers = verdicts.answer_streamed(&caller, &requests).await;
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
        let keys = self
            .verdicts
            .signer
            .as_ref()
            .map(|signer| signer.public_keys())
            .unwrap_or_default();
        Ok(Response::new(pb::GetSigningKeysResponse { keys }))
    }
}
