//! A number's record for auditors (`GetRecord`): its history a page at a time, and on the first
//! page every card the registry knows of with the verdict it would get today.

use std::sync::Arc;

use time::Date;

use crate::card::{Card, CitizenNumber, PresentedCard};
use crate::registry::{Summary, Verdict, verdict};
use crate::store::{Change, Store, StoreError};

/// The most events one `GetRecord` answer carries (each at most about 1.3 KB): a long history is
/// read in pages, within the 4 MiB a response may have.
pub const MAX_RECORD_PAGE: usize = 1000;

/// A page of a number's record.
#[derive(Debug)]
pub struct RecordPage {
    pub number: CitizenNumber,
    /// On the first page, every card the registry knows of, with the verdict it gets today.
    pub cards: Vec<(Card, Verdict)>,
    /// The page's events, as recorded.
    pub events: Vec<Change>,
    /// The registry sequence the page reflects.
    pub sequence: u64,
    /// The withdrawals of the number's events that were refused, by sequence.
    pub refused_withdrawals: Vec<u64>,
    /// The sequence to ask the next page after; `None` on the last page.
    pub next_after: Option<u64>,
}

/// The page of `number`'s record after sequence `after`, at most `limit` events; `None` when the
/// registry holds nothing about it.
pub async fn read_record(
    store: &Arc<Store>,
    number: CitizenNumber,
    after: u64,
    limit: usize,
    today: Date,
) -> Result<Option<RecordPage>, StoreError> {
    if store.citizens().memo(number).is_none() {
        return Ok(None);
    }
    let sequence = store.log().sequence();
    let found = store
        .read(move |store| {
            let Some(state) = store.citizens().history(number)? else {
                return Ok(None);
            };
            let mut page: Vec<u64> = state
                .entries()
                .iter()
                .map(|e| e.sequence)
                .filter(|&sequence| sequence > after)
                .take(limit + 1)
                .collect();
            // One beyond the page says whether there is a next one.
            let next = (page.len() > limit).then(|| {
                page.truncate(limit);
                page.last().copied().unwrap_or_default()
            });
            let events = store.log().get(&page)?;
            Ok(Some((state, events, next)))
        })
        .await?;
    let Some((state, events, next)) = found else {
        return Ok(None);
    };
    // The cards, with their verdicts, on the first page only.
    let known_cards = if after == 0 {
        state.known_cards()
    } else {
        Vec::new()
    };
    let summary = Summary::of(&state);
    let cards = known_cards
        .into_iter()
        .map(|(issued, expiry)| {
            let card = Card {
                number,
                issued,
                expiry,
            };
            (
                card,
                verdict(&PresentedCard::Current(card), Some(&summary), today),
            )
        })
        .collect();
    Ok(Some(RecordPage {
        number,
        cards,
        events,
        sequence,
        refused_withdrawals: state.refused_withdrawals().collect(),
        next_after: next,
    }))
}
