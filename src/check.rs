//! Answering checks. The index settles "no record", the hot path, from memory; only numbers that
//! may have a record are read from the store, on the blocking pool, and the verdict is then the
//! registry's pure function of card, state and day.

use std::sync::Arc;

use time::Date;

use crate::card::PresentedCard;
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
    let sequence = store.sequence();
    let may_have_record: Vec<bool> = cards
        .iter()
        .map(|card| match card {
            PresentedCard::Current(card) => store.may_have_record(card.number),
            PresentedCard::FirstGeneration => false,
        })
        .collect();
    let to_read: Vec<_> = cards
        .iter()
        .zip(&may_have_record)
        .filter_map(|(card, &may)| match card {
            PresentedCard::Current(card) if may => Some(card.number),
            _ => None,
        })
        .collect();
    let mut states = if to_read.is_empty() {
        Vec::new()
    } else {
        store.read(move |store| store.citizens(&to_read)).await?
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
