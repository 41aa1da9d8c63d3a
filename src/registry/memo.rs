//! What the in-memory index remembers of a number with records, so that a check of the citizen's
//! current card needs no store read.
//!
//! At national steady state every citizen's current card was fed in by its issuing organ, so
//! nearly every number presented *has* records, and nearly every card presented is its newest
//! card, issued and nothing else. For a card issued on or after the number's newest card, the
//! verdict depends only on that newest card (its issue date and the expiry stated for it) and on
//! whether anything invalidates it or the citizen: no card issued later supersedes it, and older
//! cards' losses do not touch it. The memo keeps exactly that; an older card (superseded since
//! an issuance's `occurred_at`, a timestamp the memo does not keep), an invalidation in force, or a
//! cancellation still sends the check to the store.

use time::Date;

use crate::card::Expiry;
use crate::registry::summary::Summary;

/// What the index keeps of a number that has records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Memo {
    /// Nothing is in force (every entry was withdrawn): every card is judged as if the number had
    /// no record.
    NothingInForce,
    /// The newest card with an entry in force, which is only issued: no loss, theft or revocation
    /// of it and no cancellation of the citizen is in force. `expiry` is the stricter of the
    /// expiries stated for it.
    Newest { issued: Date, expiry: Expiry },
    /// Anything else: a check reads the number's summary from the store.
    Consult,
}

impl Memo {
    /// The memo of a number whose entries in force fold to `summary`.
    pub fn of(summary: &Summary) -> Self {
        if summary.cancelled.is_some() {
            return Self::Consult;
        }
        match summary.cards.last() {
            None => Self::NothingInForce,
            Some(newest)
                if newest.lost.is_none() && newest.stolen.is_none() && newest.revoked.is_none() =>
            {
                Self::Newest {
                    issued: newest.issued,
                    expiry: newest.expiry,
                }
            }
            Some(_) => Self::Consult,
        }
    }
}
