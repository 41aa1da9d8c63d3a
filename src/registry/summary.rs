//! What a check needs to know of a number, folded from its state when the state changes: the
//! cards with entries in force, each with the earliest time each fact took effect, and the
//! citizen's cancellation.
//!
//! A check reads this, not the history: its cost depends on how many cards the number has in
//! force (one to three for nearly every citizen), not on how many events the number has seen. A
//! card revoked 4,500 times is one card here. The verdict computed from the summary is the one the
//! contract defines over the whole state; `verdict`'s tests compare the two on random states.

use time::{Date, OffsetDateTime};

use crate::card::Expiry;
use crate::registry::state::{CardFact, CitizenState, Fact};

/// One card with an entry in force: its issue date, the stricter of the expiries stated for it,
/// and when each fact about it first took effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CardStanding {
    pub issued: Date,
    pub expiry: Expiry,
    pub lost: Option<OffsetDateTime>,
    pub stolen: Option<OffsetDateTime>,
    pub revoked: Option<OffsetDateTime>,
    /// The earliest issuance in force of this card *or of any card issued after it*: a card
    /// presented with an earlier issue date than this one is superseded since then.
    pub issued_from_here: Option<OffsetDateTime>,
}

/// The facts in force about a number that a verdict can depend on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// When the citizen's registration was first cancelled, if a cancellation is in force.
    pub cancelled: Option<OffsetDateTime>,
    /// The cards with entries in force, by issue date.
    pub cards: Vec<CardStanding>,
}

fn earliest(known: Option<OffsetDateTime>, at: OffsetDateTime) -> Option<OffsetDateTime> {
    Some(known.map_or(at, |known| known.min(at)))
}

impl Summary {
    /// Folds the entries in force of `state`.
    pub fn of(state: &CitizenState) -> Self {
        let mut summary = Self::default();
        for entry in state.entries().iter().filter(|entry| entry.in_force()) {
            let at = entry.occurred_at;
            let (fact, issued, stated) = match entry.fact {
                Fact::Cancelled => {
                    summary.cancelled = earliest(summary.cancelled, at);
                    continue;
                }
                Fact::Card {
                    fact,
                    issued,
                    expiry,
                } => (fact, issued, expiry),
                Fact::Withdrawal { .. } | Fact::RefusedWithdrawal { .. } => continue,
            };
            let cards = &mut summary.cards;
            let at_card = match cards.binary_search_by_key(&issued, |card| card.issued) {
                Ok(found) => found,
                Err(free) => {
                    cards.insert(
                        free,
                        CardStanding {
                            issued,
                            expiry: Expiry::Unknown,
                            lost: None,
                            stolen: None,
                            revoked: None,
                            issued_from_here: None,
                        },
                    );
                    free
                }
            };
            let card = &mut cards[at_card];
            card.expiry = card.expiry.stricter(stated);
            let slot = match fact {
                CardFact::Lost => &mut card.lost,
                CardFact::Stolen => &mut card.stolen,
                CardFact::Revoked => &mut card.revoked,
                CardFact::Issued => &mut card.issued_from_here,
            };
            *slot = earliest(*slot, at);
        }
        // Each card's own issuance so far; carried down from the newest card to the oldest.
        let mut newer: Option<OffsetDateTime> = None;
        for card in summary.cards.iter_mut().rev() {
            newer = match (card.issued_from_here, newer) {
                (Some(own), Some(later)) => Some(own.min(later)),
                (own, later) => own.or(later),
            };
            card.issued_from_here = newer;
        }
        summary
    }

    /// The card with this issue date, if it has an entry in force.
    pub fn card(&self, issued: Date) -> Option<&CardStanding> {
        self.cards
            .binary_search_by_key(&issued, |card| card.issued)
            .ok()
            .map(|at| &self.cards[at])
    }

    /// Since when a card issued on `issued` is superseded: the earliest issuance in force of a
    /// card issued after it.
    pub fn superseded_since(&self, issued: Date) -> Option<OffsetDateTime> {
        let newer = self.cards.partition_point(|card| card.issued <= issued);
        self.cards.get(newer).and_then(|card| card.issued_from_here)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::state::Entry;
    use time::macros::{date, datetime};

    fn entry(sequence: u64, hour: u8, fact: CardFact, issued: Date) -> Entry {
        Entry {
            sequence,
            occurred_at: datetime!(2026-01-01 00:00 UTC).replace_hour(hour).unwrap(),
            fact: Fact::Card {
                fact,
                issued,
                expiry: Expiry::Unknown,
            },
            withdrawn_by: None,
        }
    }

    #[test]
    fn many_events_about_one_card_make_one_standing() {
        let issued = date!(2020 - 01 - 01);
        let state = CitizenState::from_entries(
            (1..=4_500)
                .map(|sequence| {
                    entry(
                        sequence,
                        (sequence % 20) as u8 + 1,
                        CardFact::Revoked,
                        issued,
                    )
                })
                .collect(),
        );
        let summary = Summary::of(&state);
        assert_eq!(summary.cards.len(), 1);
        assert_eq!(
            summary.card(issued).and_then(|card| card.revoked),
            Some(datetime!(2026-01-01 01:00 UTC))
        );
    }

    #[test]
    fn a_newer_issuance_supersedes_every_older_card() {
        let (old, mid, new) = (
            date!(2010 - 01 - 01),
            date!(2015 - 01 - 01),
            date!(2020 - 01 - 01),
        );
        let state = CitizenState::from_entries(vec![
            entry(1, 3, CardFact::Issued, old),
            entry(2, 5, CardFact::Lost, mid),
            entry(3, 4, CardFact::Issued, new),
        ]);
        let summary = Summary::of(&state);
        let four = Some(datetime!(2026-01-01 04:00 UTC));
        assert_eq!(summary.superseded_since(old), four);
        assert_eq!(summary.superseded_since(date!(2012 - 06 - 01)), four);
        assert_eq!(summary.superseded_since(mid), four);
        assert_eq!(summary.superseded_since(new), None);
    }
}
