//! The state of one citizen number: every accepted event that touched it, each marked with the
//! withdrawal that undid it, if any.
//!
//! The state is a function of the *set* of events, not of their order: entries are kept in
//! sequence order, a withdrawal marks its target whichever arrives first, and the verdict reads only
//! which entries are in force. History is never erased (`DOMAIN.md` §3).

use time::{Date, OffsetDateTime};

use crate::card::Expiry;

/// What an event said about one card.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CardFact {
    Lost,
    Stolen,
    Issued,
    Revoked,
}

/// What an entry records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fact {
    /// An event about the card with this issue date, and the expiry it stated.
    Card {
        fact: CardFact,
        issued: Date,
        expiry: Expiry,
    },
    /// The citizen's registration was cancelled: every card of the number.
    Cancelled,
    /// This entry's event withdrew the entry with sequence `target`.
    Withdrawal { target: u64 },
    /// This entry's event names the entry with sequence `target` but can never undo it: it was
    /// accepted before its target arrived, from a principal whose grant did not cover the target
    /// ([`crate::registry::grant`]). Kept so that the attempt shows in the number's record.
    RefusedWithdrawal { target: u64 },
}

/// One accepted event as it bears on this number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub sequence: u64,
    pub occurred_at: OffsetDateTime,
    pub fact: Fact,
    /// The sequence of the first withdrawal of this entry, if it was withdrawn.
    pub withdrawn_by: Option<u64>,
}

impl Entry {
    /// Whether the entry invalidates or describes cards now: not withdrawn, and not itself a
    /// withdrawal.
    pub fn in_force(&self) -> bool {
        self.withdrawn_by.is_none()
            && !matches!(
                self.fact,
                Fact::Withdrawal { .. } | Fact::RefusedWithdrawal { .. }
            )
    }
}

/// Every entry that touched one citizen number, in sequence order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CitizenState {
    entries: Vec<Entry>,
}

impl CitizenState {
    /// Rebuilds a state from stored entries, in any order.
    pub fn from_entries(mut entries: Vec<Entry>) -> Self {
        entries.sort_by_key(|entry| entry.sequence);
        Self { entries }
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Adds an accepted event's entry. A withdrawal entry also marks its target, which must
    /// already be recorded here; the earliest withdrawal is the one remembered.
    pub fn record(&mut self, entry: Entry) {
        if let Fact::Withdrawal { target } = entry.fact
            && let Some(withdrawn) = self.entries.iter_mut().find(|e| e.sequence == target)
        {
            withdrawn.withdrawn_by = Some(
                withdrawn
                    .withdrawn_by
                    .map_or(entry.sequence, |earlier| earlier.min(entry.sequence)),
            );
        }
        let at = self
            .entries
            .partition_point(|existing| existing.sequence < entry.sequence);
        if self.entries.get(at).map(|e| e.sequence) != Some(entry.sequence) {
            self.entries.insert(at, entry);
        }
    }

    /// Sequences of the withdrawals recorded here that can never undo their target.
    pub fn refused_withdrawals(&self) -> impl Iterator<Item = u64> + '_ {
        self.entries
            .iter()
            .filter(|entry| matches!(entry.fact, Fact::RefusedWithdrawal { .. }))
            .map(|entry| entry.sequence)
    }

    /// The cards known for the number, by issue date, each with the stricter of the expiries
    /// stated for it by entries in force.
    pub fn known_cards(&self) -> Vec<(Date, Expiry)> {
        let mut cards: Vec<(Date, Expiry)> = Vec::new();
        for entry in &self.entries {
            let Fact::Card { issued, expiry, .. } = entry.fact else {
                continue;
            };
            let stated = if entry.in_force() {
                expiry
            } else {
                Expiry::Unknown
            };
            match cards.binary_search_by_key(&issued, |(day, _)| *day) {
                Ok(at) => cards[at].1 = cards[at].1.stricter(stated),
                Err(at) => cards.insert(at, (issued, stated)),
            }
        }
        cards
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::{date, datetime};

    fn lost(sequence: u64) -> Entry {
        Entry {
            sequence,
            occurred_at: datetime!(2026-01-01 00:00 UTC),
            fact: Fact::Card {
                fact: CardFact::Lost,
                issued: date!(2020 - 01 - 01),
                expiry: Expiry::Long,
            },
            withdrawn_by: None,
        }
    }

    fn withdrawal(sequence: u64, target: u64) -> Entry {
        Entry {
            fact: Fact::Withdrawal { target },
            ..lost(sequence)
        }
    }

    #[test]
    fn the_earliest_withdrawal_is_remembered_in_any_order() {
        let mut forward = CitizenState::default();
        forward.record(lost(3));
        forward.record(withdrawal(5, 3));
        forward.record(withdrawal(4, 3));
        let mut backward = CitizenState::default();
        backward.record(lost(3));
        backward.record(withdrawal(4, 3));
        backward.record(withdrawal(5, 3));
        assert_eq!(forward, backward);
        assert_eq!(forward.entries()[0].withdrawn_by, Some(4));
        assert!(!forward.entries()[0].in_force());
        assert_eq!(
            forward
                .entries()
                .iter()
                .map(|e| e.sequence)
                .collect::<Vec<_>>(),
            [3, 4, 5]
        );
    }

    #[test]
    fn a_refused_withdrawal_is_kept_but_undoes_nothing() {
        let mut state = CitizenState::default();
        state.record(lost(3));
        state.record(Entry {
            fact: Fact::RefusedWithdrawal { target: 3 },
            ..lost(4)
        });
        assert!(state.entries()[0].in_force());
        assert!(!state.entries()[1].in_force());
        assert_eq!(state.refused_withdrawals().collect::<Vec<_>>(), [4]);
    }

    #[test]
    fn recording_an_entry_twice_keeps_one() {
        let mut state = CitizenState::default();
        state.record(lost(3));
        state.record(lost(3));
        assert_eq!(state.entries().len(), 1);
    }

    #[test]
    fn withdrawn_entries_state_no_expiry() {
        let mut state = CitizenState::default();
        state.record(lost(3));
        state.record(withdrawal(4, 3));
        assert_eq!(
            state.known_cards(),
            [(date!(2020 - 01 - 01), Expiry::Unknown)]
        );
    }
}
