//! The rules that span events (`DOMAIN.md` §3): what an event touches, whether a `report_id` in
//! use again is a retry or a conflict, what a withdrawal's target is, and what a withdrawal that
//! waited for its target records once the target arrives.
//!
//! Pure functions over [`ReportIds`] and [`Contents`], what the registry already holds, so that
//! every path that registers events decides alike: the writer answers the lookups from the group
//! it is committing and RocksDB (the cluster follower applies the stream through the writer, and
//! a cluster publisher whose message JetStream dropped as a duplicate asks the store), and the
//! bulk import answers them from its sorted runs and RocksDB, asking in key order.

use prost::Message;
use sha2::{Digest, Sha256};

use super::grant::Grant;
use super::state::{CardFact, Fact};
use crate::card::{Card, CitizenNumber, FieldError, Rule};
use crate::event::{Event, EventKind, Loss, ReportId, ReportKey};
use crate::proto::v1 as pb;

/// An event's content as a retry is compared with the event first accepted under its
/// `report_id`: the first 128 bits of the SHA-256 of its canonical wire form. Canonical forms are
/// equal exactly when two submissions say the same thing (`crate::event::ValidEvent`), and prost
/// encodes equal messages to equal bytes, so equal contents mean the same report. A digest rather
/// than the bytes, so that an import compares hundreds of millions of events without keeping
/// them; SHA-256 rather than a faster hash, so that no reporter can craft two different events
/// that pass for one (finding such a pair takes about 2^64 hashes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Content([u8; 16]);

impl Content {
    /// The content of a canonical event.
    pub fn of(canonical: &pb::RegistryEvent) -> Self {
        Self::of_encoded(&canonical.encode_to_vec())
    }

    /// The content of a canonical event already encoded, as the import spools it.
    pub fn of_encoded(canonical: &[u8]) -> Self {
        let digest = Sha256::digest(canonical);
        let mut content = [0u8; 16];
        content.copy_from_slice(&digest[..16]);
        Self(content)
    }

    pub fn to_bytes(self) -> [u8; 16] {
        self.0
    }

    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(bytes)
    }
}

/// What an event registers: a fact about a number, or a withdrawal of another event.
#[derive(Debug, PartialEq, Eq)]
pub enum Touches<'e> {
    Number(CitizenNumber, Fact),
    Withdrawal(&'e ReportId),
}

/// What an event of this kind registers.
pub fn what_it_touches(kind: &EventKind) -> Touches<'_> {
    let about = |card: &Card, fact| {
        Touches::Number(
            card.number,
            Fact::Card {
                fact,
                issued: card.issued,
                expiry: card.expiry,
            },
        )
    };
    match kind {
        EventKind::Reported {
            card,
            loss: Loss::Lost,
        } => about(card, CardFact::Lost),
        EventKind::Reported {
            card,
            loss: Loss::Stolen,
        } => about(card, CardFact::Stolen),
        EventKind::Issued { card } => about(card, CardFact::Issued),
        EventKind::Revoked { card } => about(card, CardFact::Revoked),
        EventKind::Cancelled { number } => Touches::Number(*number, Fact::Cancelled),
        EventKind::Withdrawn { target } => Touches::Withdrawal(target),
    }
}

/// The event accepted first under a [`ReportKey`]: where it is, and the number it touches
/// (none for a withdrawal).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FirstUse<P> {
    pub at: P,
    pub number: Option<CitizenNumber>,
}

/// Which events the registry holds, by report key.
pub trait ReportIds {
    /// Where an event is: its sequence in the log, or (in an import) its place in the input.
    type Place: Copy;
    type Error;
    /// The event accepted first under `key`, if any.
    fn first_use(&mut self, key: &ReportKey) -> Result<Option<FirstUse<Self::Place>>, Self::Error>;
}

/// What the events the registry holds say.
pub trait Contents: ReportIds {
    /// The content of the event at `at`, one that [`ReportIds::first_use`] found.
    fn content(&mut self, at: Self::Place) -> Result<Content, Self::Error>;
}

/// What an event's `report_id` makes of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdUse<P> {
    /// The first use of the id: the event may enter.
    New,
    /// The event at `P` has the id and the same content: a retry, which changes nothing.
    Duplicate(P),
    /// The event at `P` has the id and other content: refused.
    Conflict(P),
}

/// What the registry makes of an event under `key` whose content `content` gives: the first use
/// of an id wins. The content is asked only of an id in use (most events are new).
pub fn judge_report_id<R: Contents>(
    registered: &mut R,
    key: &ReportKey,
    content: impl FnOnce() -> Content,
) -> Result<IdUse<R::Place>, R::Error> {
    let Some(first) = registered.first_use(key)? else {
        return Ok(IdUse::New);
    };
    Ok(if registered.content(first.at)? == content() {
        IdUse::Duplicate(first.at)
    } else {
        IdUse::Conflict(first.at)
    })
}

/// What a withdrawal's target is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target<P> {
    /// Not registered yet: the withdrawal waits for it, so that arrival order changes nothing.
    Awaited,
    /// An event about `number`, at `at`, which the withdrawal undoes.
    Event { at: P, number: CitizenNumber },
}

/// A withdrawal names another withdrawal, the one at `at`: refused, as a withdrawal is never
/// withdrawn (`DOMAIN.md` §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WithdrawsWithdrawal<P> {
    pub at: P,
}

impl<P> From<WithdrawsWithdrawal<P>> for FieldError {
    fn from(_: WithdrawsWithdrawal<P>) -> Self {
        FieldError::new("withdrawn.withdrawn_report_id", Rule::WithdrawsWithdrawal)
    }
}

/// A withdrawal's target, or the refusal of a withdrawal of a withdrawal.
pub type TargetOrRefusal<P> = Result<Target<P>, WithdrawsWithdrawal<P>>;

/// The target of a withdrawal naming `target`, or the refusal of a withdrawal of a withdrawal.
/// The outer error is the lookup's.
pub fn withdrawal_target<R: ReportIds>(
    registered: &mut R,
    target: &ReportKey,
) -> Result<TargetOrRefusal<R::Place>, R::Error> {
    Ok(match registered.first_use(target)? {
        None => Ok(Target::Awaited),
        Some(FirstUse { at, number: None }) => Err(WithdrawsWithdrawal { at }),
        Some(FirstUse {
            at,
            number: Some(number),
        }) => Ok(Target::Event { at, number }),
    })
}

/// What a withdrawal that waited records once its target (`target`, at `sequence`) arrives: it
/// undoes it if its sender's grant covers it, and is kept as refused otherwise.
pub fn awaited_withdrawal(grant: &Grant, target: &Event, sequence: u64) -> Fact {
    if grant.may_withdraw(&target.authority, target.kind.kind()) {
        Fact::Withdrawal { target: sequence }
    } else {
        Fact::RefusedWithdrawal { target: sequence }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::convert::Infallible;

    use super::*;

    /// A registry of a few events, by report key: where each is, what it touches, its content.
    #[derive(Default)]
    struct Held(HashMap<ReportKey, (u64, Option<CitizenNumber>, Content)>);

    impl ReportIds for Held {
        type Place = u64;
        type Error = Infallible;
        fn first_use(&mut self, key: &ReportKey) -> Result<Option<FirstUse<u64>>, Infallible> {
            Ok(self
                .0
                .get(key)
                .map(|&(at, number, _)| FirstUse { at, number }))
        }
    }

    impl Contents for Held {
        fn content(&mut self, at: u64) -> Result<Content, Infallible> {
            let found = self.0.values().find(|(sequence, ..)| *sequence == at);
            Ok(found.map_or(Content([0; 16]), |&(.., content)| content))
        }
    }

    fn key(report_id: &str) -> ReportKey {
        ReportKey::new("440305", &ReportId::parse(report_id).unwrap())
    }

    fn event(report_id: &str, note: &str) -> pb::RegistryEvent {
        pb::RegistryEvent {
            report_id: report_id.into(),
            authority: "440305".into(),
            kind: Some(pb::registry_event::Kind::Cancelled(pb::CitizenCancelled {
                id_number: "11010519491231002X".into(),
                note: note.into(),
            })),
            ..Default::default()
        }
    }

    fn number() -> CitizenNumber {
        let today = time::macros::date!(2026 - 12 - 01);
        crate::card::parse_registrable_number("11010519491231002X", today).unwrap()
    }

    #[test]
    fn the_first_use_of_a_report_id_wins_and_only_the_same_content_is_a_retry() {
        let mut held = Held::default();
        let first = event("r-1", "moved abroad");
        held.0
            .insert(key("r-1"), (7, Some(number()), Content::of(&first)));
        let judge = |held: &mut Held, id, content| judge_report_id(held, &key(id), move || content);
        assert_eq!(judge(&mut held, "r-2", Content::of(&first)), Ok(IdUse::New));
        assert_eq!(
            judge(&mut held, "r-1", Content::of(&first.clone())),
            Ok(IdUse::Duplicate(7))
        );
        let other = event("r-1", "deceased");
        assert_eq!(
            judge(&mut held, "r-1", Content::of(&other)),
            Ok(IdUse::Conflict(7))
        );
    }

    #[test]
    fn the_content_is_that_of_the_canonical_encoding() {
        let first = event("r-1", "moved abroad");
        assert_eq!(
            Content::of(&first),
            Content::of_encoded(&first.encode_to_vec())
        );
        assert_ne!(Content::of(&first), Content::of(&event("r-1", "moved")));
        let content = Content::of(&first);
        assert_eq!(Content::from_bytes(content.to_bytes()), content);
    }

    #[test]
    fn a_withdrawal_waits_for_its_target_marks_an_event_and_never_a_withdrawal() {
        let mut held = Held::default();
        held.0
            .insert(key("loss"), (3, Some(number()), Content([1; 16])));
        held.0.insert(key("undo"), (4, None, Content([2; 16])));
        assert_eq!(
            withdrawal_target(&mut held, &key("not-yet")),
            Ok(Ok(Target::Awaited))
        );
        assert_eq!(
            withdrawal_target(&mut held, &key("loss")),
            Ok(Ok(Target::Event {
                at: 3,
                number: number()
            }))
        );
        let refused = withdrawal_target(&mut held, &key("undo"))
            .unwrap()
            .unwrap_err();
        assert_eq!(refused, WithdrawsWithdrawal { at: 4 });
        assert_eq!(FieldError::from(refused).rule, Rule::WithdrawsWithdrawal);
    }

    #[test]
    fn an_awaited_withdrawal_undoes_its_target_only_within_its_grant() {
        let target = Event {
            report_id: ReportId::parse("r-1").unwrap(),
            authority: "440305".into(),
            occurred_at: time::macros::datetime!(2026-11-22 04:00 UTC),
            kind: EventKind::Cancelled { number: number() },
        };
        assert_eq!(
            awaited_withdrawal(&Grant::everything(), &target, 9),
            Fact::Withdrawal { target: 9 }
        );
        assert_eq!(
            awaited_withdrawal(&Grant::nothing(), &target, 9),
            Fact::RefusedWithdrawal { target: 9 }
        );
    }

    #[test]
    fn each_kind_touches_its_number_or_names_its_target() {
        let target = ReportId::parse("r-1").unwrap();
        assert_eq!(
            what_it_touches(&EventKind::Withdrawn {
                target: target.clone()
            }),
            Touches::Withdrawal(&target)
        );
        assert_eq!(
            what_it_touches(&EventKind::Cancelled { number: number() }),
            Touches::Number(number(), Fact::Cancelled)
        );
    }
}
