//! Answering checks. The index settles "no record", the hot path, from memory; only numbers that
//! may have a record are read from the store, on the blocking pool (their summary, not their
//! history), and the verdict is then the registry's pure function of card, summary and day.

use std::sync::Arc;

use time::Date;

use crate::card::{CitizenNumber, PresentedCard};
use crate::registry::{Verdict, verdict};
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
    let mut found = store.citizens().may_have_records(&numbers).into_iter();
    let mut to_read = Vec::new();
    let may_have_record: Vec<bool> = cards
        .iter()
        .map(|card| match card {
            PresentedCard::Current(card) => {
                // One answer per current card, in order; a missing one would only cost a read.
                let may = found.next().unwrap_or(true);
                if may {
                    to_read.push(card.number);
                }
                may
            }
            PresentedCard::FirstGeneration => false,
        })
        .collect();
    let mut states = if to_read.is_empty() {
        Vec::new()
    } else {
        store
            .read(move |store| store.citizens().summaries(&to_read))
            .await?
    }
    .into_iter();
    let verdicts = cards
        .iter()
        .zip(may_have_record)
        .map(|(card, may)| {
            let state = if may { states.next().flatten() } else { None };
            verdict(card, state.as_ref(), today)
        })
        .collect();
    Ok((verdicts, sequence))
}
