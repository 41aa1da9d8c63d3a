//! How verdicts go out, whichever call asked: counted for the caller, recorded durably in the
//! hit log first if they are hits, cut down to the caller's disclosure profile, then signed; and
//! read-your-writes, waiting for a `min_sequence` before answering.

use std::sync::Arc;
use std::time::Duration;

use time::{Date, OffsetDateTime};
use tracing::Instrument;

use crate::access::{Activity, Caller, Disclosure};
use crate::app::check::check_cards;
use crate::card::{CardText, FieldError, PresentedCard, Rule, china_today, parse_presented_card};
use crate::proto::{check_response, malformed_response, v1 as pb, wire_reason};
use crate::registry::{Reason, Verdict};
use crate::signing::{MAX_NONCE_BYTES, VerdictSigner};
use crate::store::{Hit, Store, StoreError};
use crate::telemetry::metrics::Handles;

/// Verdicts a call signs on its reactor thread; more are signed off it.
const SIGN_IN_PLACE: usize = 64;
/// The longest a call waits for `min_sequence` when the client set no shorter deadline.
pub const MAX_SEQUENCE_WAIT: Duration = Duration::from_secs(30);
/// How far beyond this node's sequence a `min_sequence` may be: the events a lagging cluster
/// node may still have to apply, at most about a second of a national feed.
pub const MAX_SEQUENCE_LEAD: u64 = 10_000;

/// Why a check could not be answered.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Read-your-writes needs a sequence this node is about to reach, not one far ahead: such a
    /// call would only hold a permit for its whole budget.
    #[error(
        "min_sequence: {min_sequence} is more than {MAX_SEQUENCE_LEAD} beyond this node's \
         sequence {sequence}: send a sequence an accepted event was given"
    )]
    TooFarAhead { min_sequence: u64, sequence: u64 },
    #[error(
        "min_sequence: the registry is at sequence {sequence}, and did not reach {min_sequence} \
         within the deadline"
    )]
    NotReached { min_sequence: u64, sequence: u64 },
    /// A broken invariant of this module's own.
    #[error("{0}")]
    Incomplete(&'static str),
}

/// What turns verdicts into answers: the registry, and the caller-facing rules around it.
#[derive(Clone)]
pub struct Verdicts {
    store: Arc<Store>,
    signer: Option<Arc<VerdictSigner>>,
}

/// Validates a wire card; errors name the field within the card (`id_number`, ...).
pub fn parse_card(card: &pb::CardRef, today: Date) -> Result<PresentedCard, FieldError> {
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
pub fn parse_request(request: &pb::CheckRequest, today: Date) -> Result<PresentedCard, FieldError> {
    parse_card(request_card(request)?, today).map_err(|error| error.within("card"))
}

/// Refuses a nonce longer than [`MAX_NONCE_BYTES`].
pub fn check_nonce(nonce: &[u8]) -> Result<(), FieldError> {
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

/// `idguard_checks_total`'s handles: valid, malformed, and invalid for each [`Reason`] (`Expired`
/// last; a reason declared after it would still be counted, only not through a kept handle).
static CHECKS: Handles<metrics::Counter, { 2 + Reason::Expired as usize + 1 }> = Handles::new();
static HITS: Handles<metrics::Counter, 1> = Handles::new();

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
        // Slots: valid, malformed, then invalid by reason.
        let checks = |slot: usize, verdict: &'static str, reason: &'static str, count: u64| {
            if count > 0 {
                CHECKS
                    .get(slot, || {
                        metrics::counter!(
                            "idguard_checks_total",
                            "verdict" => verdict,
                            "reason" => reason
                        )
                    })
                    .increment(count);
            }
        };
        checks(0, "valid", "", self.valid);
        checks(1, "malformed", "", self.malformed);
        for (reason, count) in &self.invalid {
            let label = wire_reason(*reason).as_str_name();
            checks(2 + *reason as usize, "invalid", label, *count);
        }
        if self.hits > 0 {
            HITS.get(0, || metrics::counter!("idguard_hits_total"))
                .increment(self.hits);
        }
    }
}

/// One item to answer: the card as sent, and its verdict or why it is malformed.
pub struct Judged<'a> {
    pub card: Option<&'a pb::CardRef>,
    pub nonce: &'a [u8],
    pub verdict: Result<Verdict, FieldError>,
}

impl Verdicts {
    pub fn new(store: Arc<Store>, signer: Option<Arc<VerdictSigner>>) -> Self {
        Self { store, signer }
    }

    /// The keys verdicts are signed with, for `GetSigningKeys`.
    pub fn public_keys(&self) -> Vec<pb::SigningKey> {
        self.signer
            .as_ref()
            .map(|signer| signer.public_keys())
            .unwrap_or_default()
    }

    /// Waits until the registry has reached `min_sequence`, for at most `budget`.
    pub async fn reach(&self, min_sequence: u64, budget: Duration) -> Result<(), CheckError> {
        let sequence = self.store.log().sequence();
        if sequence >= min_sequence {
            return Ok(());
        }
        if min_sequence - sequence > MAX_SEQUENCE_LEAD {
            return Err(CheckError::TooFarAhead {
                min_sequence,
                sequence,
            });
        }
        tokio::time::timeout(budget, self.store.log().reached(min_sequence))
            .await
            .map_err(|_| CheckError::NotReached {
                min_sequence,
                sequence: self.store.log().sequence(),
            })
    }

    /// Verdicts on every item, malformed ones included, in order, and the sequence they reflect.
    pub async fn judge(
        &self,
        items: Vec<Result<PresentedCard, FieldError>>,
        today: Date,
    ) -> Result<(Vec<Result<Verdict, FieldError>>, u64), CheckError> {
        let cards: Vec<PresentedCard> = items.iter().filter_map(|item| item.clone().ok()).collect();
        let (verdicts, sequence) = check_cards(&self.store, &cards, today).await?;
        let mut verdicts = verdicts.into_iter();
        let judged = items
            .into_iter()
            .map(|item| match item {
                Ok(_) => verdicts
                    .next()
                    .map(Ok)
                    .ok_or(CheckError::Incomplete("fewer verdicts than cards")),
                Err(error) => Ok(Err(error)),
            })
            .collect::<Result<_, _>>()?;
        Ok((judged, sequence))
    }

    /// The answers to `judged` for `caller`: counted, hits recorded durably before anyone is
    /// answered, then disclosed as the caller's profile allows and signed.
    pub async fn deliver(
        &self,
        caller: &Caller,
        judged: Vec<Judged<'_>>,
        sequence: u64,
    ) -> Result<Vec<pb::CheckResponse>, CheckError> {
        let checked_at = OffsetDateTime::now_utc();
        let mut tally = Tally::default();
        let mut hits = Vec::new();
        let mut hit_cards = Vec::new();
        let mut responses: Vec<pb::CheckResponse> = judged
            .iter()
            .map(|item| match &item.verdict {
                Ok(verdict) => {
                    let response = check_response(*verdict, sequence);
                    tally.count(verdict);
                    if verdict.is_hit() {
                        hits.push(Hit::new(
                            caller.principal.name.clone(),
                            caller.terminal.clone(),
                            item.card.cloned(),
                            response.clone(),
                            checked_at,
                        ));
                        hit_cards.push(item.card.cloned());
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
        if !hit_cards.is_empty() {
            let (principal, terminal) = (caller.principal.name.clone(), caller.terminal.clone());
            let log_hits = async move {
                for card in hit_cards {
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
            self.store.hits().record(hits).await?;
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
    pub async fn answer_streamed(
        &self,
        caller: &Caller,
        requests: &[pb::CheckRequest],
    ) -> Vec<Result<pb::CheckResponse, CheckError>> {
        let today = china_today(OffsetDateTime::now_utc());
        let mut outcomes = Vec::with_capacity(requests.len());
        let mut rest = requests;
        while let Some(first) = rest.first() {
            let reached = self.store.log().sequence();
            let ready = rest
                .iter()
                .take_while(|request| request.min_sequence <= reached)
                .count();
            if ready == 0 {
                if let Err(error) = self.reach(first.min_sequence, MAX_SEQUENCE_WAIT).await {
                    outcomes.push(Err(error));
                    return outcomes;
                }
                continue;
            }
            match self.answer_requests(caller, &rest[..ready], today).await {
                Ok(responses) => outcomes.extend(responses.into_iter().map(Ok)),
                Err(error) => {
                    outcomes.push(Err(error));
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
    ) -> Result<Vec<pb::CheckResponse>, CheckError> {
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
