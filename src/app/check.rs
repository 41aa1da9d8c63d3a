//! Answering checks. The index settles most of them from memory: "no record", and at national
//! steady state the citizen's current card of a number with only issuances ([`Memo`]). Only the
//! rest are read from the store, on the blocking pool (their summary, not their history), and
//! their verdict is then the registry's pure function of card, summary and day.
//!
//! Every store read is counted in `idguard_check_store_reads_total{cause}`: `older_card` (a card
//! issued before the number's newest, superseded since an issuance the index does not time) and
//! `consult` (an invalidation or cancellation in force, or a memo the index could not keep).

use std::sync::Arc;

use time::Date;

use crate::card::{CitizenNumber, PresentedCard};
use crate::registry::{Memo, Verdict, verdict, verdict_from_memo};
use crate::store::{Store, StoreError};

/// Verdicts on `cards`, in order, and the registry sequence they reflect.
///
/// The sequence is read before anything else, so every event it covers is taken into account
/// (events are durable and indexed before the sequence is published).
pub async fn check_cards(
    store: &Arc<Store>,
    cards: &[PresentedCard],
    today: Date,
) -> Result<(Vec<Verdict>, u64), StoreError> {
    let sequence = store.log().sequence();
    let numbers: Vec<CitizenNumber> = cards
        .iter()
        .filter_map(|card| match card {
            PresentedCard::Current(card) => Some(card.number),
            PresentedCard::FirstGeneration => None,
        })
        .collect();
    let mut memos = store.citizens().memos(&numbers).into_iter();
    let mut to_read = Vec::new();
    let (mut older_cards, mut consulted) = (0u64, 0u64);
    // Each card's verdict from memory, or `None` for one read from the store below.
    let settled: Vec<Option<Verdict>> = cards
        .iter()
        .map(|card| {
            let PresentedCard::Current(current) = card else {
                return Some(verdict(card, None, today));
            };
            // One memo per current card, in order; a missing one would only cost a read.
            let memo = memos.next().unwrap_or(Some(Memo::Consult));
            let settled = match memo {
                None => Some(verdict(card, None, today)),
                Some(memo) => verdict_from_memo(card, memo, today),
            };
            if settled.is_none() {
                match memo {
                    Some(Memo::Newest { .. }) => older_cards += 1,
                    _ => consulted += 1,
                }
                to_read.push(current.number);
            }
            settled
        })
        .collect();
    if to_read.is_empty() {
        return Ok((settled.into_iter().flatten().collect(), sequence));
    }
    for (cause, reads) in [("older_card", older_cards), ("consult", consulted)] {
        metrics::counter!("idguard_check_store_reads_total", "cause" => cause).increment(reads);
    }
    let mut summaries = store
        .read(move |store| store.citizens().summaries(&to_read))
        .await?
        .into_iter();
    let verdicts = cards
        .iter()
        .zip(settled)
        .map(|(card, settled)| {
            settled.unwrap_or_else(|| verdict(card, summaries.next().flatten().as_ref(), today))
        })
        .collect();
    Ok((verdicts, sequence))
}
