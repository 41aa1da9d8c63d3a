//! A card's verdict: a pure function of the card as presented, the state of its number (through
//! its [`Summary`]) and today's date (`DOMAIN.md` §3; verdict order from the API contract).

use std::fmt;

use time::{Date, OffsetDateTime};

use crate::card::{Card, Expiry, FIRST_GENERATION_END, PresentedCard, start_of_day};
use crate::registry::memo::Memo;
use crate::registry::summary::Summary;

/// Why a card is invalid. The declaration order is the order of precedence: when several apply,
/// the first one wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reason {
    FirstGeneration,
    CitizenCancelled,
    Revoked,
    Stolen,
    Lost,
    Superseded,
    Expired,
}

impl Verdict {
    /// Whether presenting the card is a hit police want to hear of: somebody holds a card that was
    /// lost, stolen, revoked or whose citizen was cancelled. Superseded, expired and first
    /// generation cards are ordinary mistakes, not alerts.
    pub fn is_hit(&self) -> bool {
        matches!(
            self,
            Verdict::Invalid {
                reason: Reason::Lost | Reason::Stolen | Reason::Revoked | Reason::CitizenCancelled,
                ..
            }
        )
    }
}

/// Whether a card may be accepted, and if not, why and since when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Valid,
    Invalid {
        reason: Reason,
        /// When the winning invalidation took effect: its event's `occurred_at` (the earliest,
        /// when several events say the same), or for expiry 00:00 UTC+8 of the next day.
        since: OffsetDateTime,
    },
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self::Invalid { reason, .. } = self else {
            return f.write_str("valid: no record invalidates this card");
        };
        f.write_str(match reason {
            Reason::FirstGeneration => "first-generation card: invalid nationwide since 2013-01-01",
            Reason::CitizenCancelled => "the citizen's registered permanent residence is cancelled",
            Reason::Revoked => "the card was revoked by its issuer",
            Reason::Stolen => "the card was reported stolen",
            Reason::Lost => "the card was reported lost",
            Reason::Superseded => "a newer card was issued on this number",
            Reason::Expired => "the card's validity period has ended",
        })
    }
}

/// The verdict on `card`, given the summary of its number (`None`: no event ever touched it) on
/// `today` (UTC+8). First match wins: first generation; citizen cancelled; revoked; stolen; lost;
/// superseded; expired (from the card as presented or from the registry's record of it).
pub fn verdict(card: &PresentedCard, summary: Option<&Summary>, today: Date) -> Verdict {
    match card {
        PresentedCard::FirstGeneration => Verdict::Invalid {
            reason: Reason::FirstGeneration,
            since: start_of_day(FIRST_GENERATION_END),
        },
        PresentedCard::Current(card) => current_card_verdict(card, summary, today),
    }
}

fn current_card_verdict(card: &Card, summary: Option<&Summary>, today: Date) -> Verdict {
    let mut winner: Option<(Reason, OffsetDateTime)> = None;
    let mut consider = |reason: Reason, since: Option<OffsetDateTime>| {
        if let Some(since) = since
            && winner.is_none_or(|best| (reason, since) < best)
        {
            winner = Some((reason, since));
        }
    };
    let mut expiry = card.expiry;
    if let Some(summary) = summary {
        consider(Reason::CitizenCancelled, summary.cancelled);
        if let Some(same) = summary.card(card.issued) {
            expiry = expiry.stricter(same.expiry);
            consider(Reason::Revoked, same.revoked);
            consider(Reason::Stolen, same.stolen);
            consider(Reason::Lost, same.lost);
        }
        consider(Reason::Superseded, summary.superseded_since(card.issued));
    }
    consider(Reason::Expired, expired_since(expiry, today));
    match winner {
        None => Verdict::Valid,
        Some((reason, since)) => Verdict::Invalid { reason, since },
    }
}

/// Since when a card with this expiry is expired on `today`, if it is.
fn expired_since(expiry: Expiry, today: Date) -> Option<OffsetDateTime> {
    match expiry {
        // Valid through its last day; `end < today` guarantees a next day exists.
        Expiry::On(end) if end < today => Some(start_of_day(end.next_day().unwrap_or(end))),
        _ => None,
    }
}

/// The verdict on `card` from what the index remembers of its number, when that settles it
/// (`None`: read the number's summary and call [`verdict`]). It is [`verdict`]'s answer whenever
/// it gives one: a card issued on or after the newest card is judged by that card's expiry alone.
pub fn verdict_from_memo(card: &PresentedCard, memo: Memo, today: Date) -> Option<Verdict> {
    let PresentedCard::Current(presented) = card else {
        return Some(verdict(card, None, today));
    };
    let expiry = match memo {
        Memo::Consult => return None,
        Memo::NothingInForce => presented.expiry,
        Memo::Newest { issued, .. } if presented.issued < issued => return None,
        Memo::Newest { issued, expiry } if presented.issued == issued => {
            presented.expiry.stricter(expiry)
        }
        Memo::Newest { .. } => presented.expiry,
    };
    Some(match expired_since(expiry, today) {
        None => Verdict::Valid,
        Some(since) => Verdict::Invalid {
            reason: Reason::Expired,
            since,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::card::CitizenNumber;
    use crate::registry::state::{CardFact, CitizenState, Entry, Fact};
    use proptest::prelude::*;
    use time::macros::{date, datetime};

    const TODAY: Date = date!(2026 - 11 - 22);
    const ISSUED: Date = date!(2020 - 01 - 01);

    fn card(expiry: Expiry) -> PresentedCard {
        PresentedCard::Current(Card {
            number: CitizenNumber::from_packed(11010519491231002).unwrap(),
            issued: ISSUED,
            expiry,
        })
    }

    fn entry(sequence: u64, day: u8, fact: Fact) -> Entry {
        Entry {
            sequence,
            occurred_at: datetime!(2026-01-01 00:00 UTC).replace_day(day).unwrap(),
            fact,
            withdrawn_by: None,
        }
    }

    fn about(fact: CardFact, issued: Date) -> Fact {
        Fact::Card {
            fact,
            issued,
            expiry: Expiry::Unknown,
        }
    }

    fn judge(entries: Vec<Entry>, expiry: Expiry) -> Verdict {
        let mut state = CitizenState::default();
        for entry in entries {
            state.record(entry);
        }
        verdict(&card(expiry), Some(&Summary::of(&state)), TODAY)
    }

    /// The contract's verdict read straight off every entry in force, as the registry computed
    /// it before summaries: the oracle the summary's verdict must always agree with.
    fn verdict_over_entries(card: &Card, state: &CitizenState, today: Date) -> Verdict {
        let mut winner: Option<(Reason, OffsetDateTime)> = None;
        let mut consider = |reason: Reason, since: OffsetDateTime| {
            if winner.is_none_or(|best| (reason, since) < best) {
                winner = Some((reason, since));
            }
        };
        let mut expiry = card.expiry;
        for entry in state.entries().iter().filter(|entry| entry.in_force()) {
            let since = entry.occurred_at;
            match entry.fact {
                Fact::Cancelled => consider(Reason::CitizenCancelled, since),
                Fact::Card {
                    fact,
                    issued,
                    expiry: stated,
                } if issued == card.issued => {
                    expiry = expiry.stricter(stated);
                    match fact {
                        CardFact::Revoked => consider(Reason::Revoked, since),
                        CardFact::Stolen => consider(Reason::Stolen, since),
                        CardFact::Lost => consider(Reason::Lost, since),
                        CardFact::Issued => {}
                    }
                }
                Fact::Card {
                    fact: CardFact::Issued,
                    issued,
                    ..
                } if issued > card.issued => consider(Reason::Superseded, since),
                _ => {}
            }
        }
        if let Expiry::On(end) = expiry
            && end < today
        {
            consider(Reason::Expired, start_of_day(end.next_day().unwrap_or(end)));
        }
        winner.map_or(Verdict::Valid, |(reason, since)| Verdict::Invalid {
            reason,
            since,
        })
    }

    const DAYS: [Date; 4] = [
        date!(2010 - 01 - 01),
        date!(2015 - 06 - 01),
        ISSUED,
        date!(2024 - 03 - 03),
    ];
    const EXPIRIES: [Expiry; 4] = [
        Expiry::Unknown,
        Expiry::Long,
        Expiry::On(date!(2025 - 01 - 01)),
        Expiry::On(date!(2040 - 01 - 01)),
    ];

    fn any_fact() -> impl Strategy<Value = Fact> {
        let card_fact = prop_oneof![
            Just(CardFact::Lost),
            Just(CardFact::Stolen),
            Just(CardFact::Issued),
            Just(CardFact::Revoked),
        ];
        prop_oneof![
            6 => (card_fact, 0..DAYS.len(), 0..EXPIRIES.len()).prop_map(|(fact, day, expiry)| {
                Fact::Card { fact, issued: DAYS[day], expiry: EXPIRIES[expiry] }
            }),
            1 => Just(Fact::Cancelled),
            2 => (1..24u64).prop_map(|target| Fact::Withdrawal { target }),
        ]
    }

    proptest! {
        #[test]
        fn the_summary_gives_the_verdict_of_every_entry(
            facts in prop::collection::vec((any_fact(), 1..28u8), 0..24),
            presented in 0..DAYS.len() + 1,
            expiry in 0..EXPIRIES.len(),
        ) {
            let mut state = CitizenState::default();
            for (at, (fact, day)) in facts.into_iter().enumerate() {
                state.record(entry(at as u64 + 1, day, fact));
            }
            let card = Card {
                number: CitizenNumber::from_packed(11010519491231002).unwrap(),
                issued: DAYS.get(presented).copied().unwrap_or(date!(2012 - 02 - 02)),
                expiry: EXPIRIES[expiry],
            };
            let summary = Summary::of(&state);
            let expected = verdict_over_entries(&card, &state, TODAY);
            let presented = PresentedCard::Current(card);
            prop_assert_eq!(verdict(&presented, Some(&summary), TODAY), expected);
            if let Some(remembered) = verdict_from_memo(&presented, Memo::of(&summary), TODAY) {
                prop_assert_eq!(remembered, expected);
            }
        }

        /// The memo settles every card of a number with only issuances in force, but for cards
        /// older than its newest: the national steady state's checks need no store read.
        #[test]
        fn the_memo_settles_the_newest_card_of_a_number_with_only_issuances(
            issued in prop::collection::vec((0..DAYS.len(), 0..EXPIRIES.len(), 1..28u8), 1..6),
            presented in 0..DAYS.len(),
            expiry in 0..EXPIRIES.len(),
        ) {
            let mut state = CitizenState::default();
            for (at, &(day, stated, occurred)) in issued.iter().enumerate() {
                let fact = Fact::Card {
                    fact: CardFact::Issued,
                    issued: DAYS[day],
                    expiry: EXPIRIES[stated],
                };
                state.record(entry(at as u64 + 1, occurred, fact));
            }
            let card = Card {
                number: CitizenNumber::from_packed(11010519491231002).unwrap(),
                issued: DAYS[presented],
                expiry: EXPIRIES[expiry],
            };
            let newest = issued.iter().map(|&(day, ..)| DAYS[day]).max().unwrap();
            let remembered = verdict_from_memo(
                &PresentedCard::Current(card),
                Memo::of(&Summary::of(&state)),
                TODAY,
            );
            prop_assert_eq!(remembered.is_some(), card.issued >= newest);
            if let Some(remembered) = remembered {
                prop_assert_eq!(remembered, verdict_over_entries(&card, &state, TODAY));
            }
        }
    }

    fn reason_of(verdict: Verdict) -> Option<Reason> {
        match verdict {
            Verdict::Valid => None,
            Verdict::Invalid { reason, .. } => Some(reason),
        }
    }

    #[test]
    fn no_record_is_valid_unless_expired() {
        assert_eq!(verdict(&card(Expiry::Long), None, TODAY), Verdict::Valid);
        assert_eq!(
            verdict(&card(Expiry::On(TODAY)), None, TODAY),
            Verdict::Valid
        );
        assert_eq!(
            verdict(&card(Expiry::On(date!(2026 - 11 - 21))), None, TODAY),
            Verdict::Invalid {
                reason: Reason::Expired,
                since: datetime!(2026-11-22 00:00 +8),
            }
        );
    }

    #[test]
    fn first_generation_wins_over_everything() {
        assert_eq!(
            verdict(&PresentedCard::FirstGeneration, None, TODAY),
            Verdict::Invalid {
                reason: Reason::FirstGeneration,
                since: datetime!(2013-01-01 00:00 +8),
            }
        );
    }

    /// The verdict order from the API contract: each reason beats every later one.
    #[test]
    fn precedence_follows_the_contract() {
        let newer = date!(2022 - 01 - 01);
        let all = [
            entry(1, 1, about(CardFact::Issued, newer)),
            entry(2, 2, about(CardFact::Lost, ISSUED)),
            entry(3, 3, about(CardFact::Stolen, ISSUED)),
            entry(4, 4, about(CardFact::Revoked, ISSUED)),
            entry(5, 5, Fact::Cancelled),
        ];
        let expired = Expiry::On(date!(2021 - 01 - 01));
        let expected = [
            Reason::Superseded,
            Reason::Lost,
            Reason::Stolen,
            Reason::Revoked,
            Reason::CitizenCancelled,
        ];
        for (count, reason) in (1..=all.len()).zip(expected) {
            assert_eq!(
                reason_of(judge(all[..count].to_vec(), expired)),
                Some(reason)
            );
        }
        assert_eq!(reason_of(judge(vec![], expired)), Some(Reason::Expired));
    }

    #[test]
    fn only_a_later_issue_date_supersedes() {
        let earlier = entry(1, 1, about(CardFact::Issued, date!(2010 - 01 - 01)));
        let same = entry(2, 2, about(CardFact::Issued, ISSUED));
        assert_eq!(judge(vec![earlier, same], Expiry::Unknown), Verdict::Valid);
        let later_loss = entry(3, 3, about(CardFact::Lost, date!(2022 - 01 - 01)));
        assert_eq!(judge(vec![later_loss], Expiry::Unknown), Verdict::Valid);
    }

    #[test]
    fn a_withdrawn_entry_has_no_effect() {
        let lost = entry(1, 1, about(CardFact::Lost, ISSUED));
        let withdrawal = entry(2, 2, Fact::Withdrawal { target: 1 });
        assert_eq!(
            judge(vec![lost, withdrawal], Expiry::Unknown),
            Verdict::Valid
        );
    }

    #[test]
    fn invalid_since_is_the_earliest_event_of_the_winning_reason() {
        let late = entry(1, 20, about(CardFact::Lost, ISSUED));
        let early = entry(2, 3, about(CardFact::Lost, ISSUED));
        assert_eq!(
            judge(vec![late, early], Expiry::Unknown),
            Verdict::Invalid {
                reason: Reason::Lost,
                since: datetime!(2026-01-03 00:00 UTC),
            }
        );
    }

    #[test]
    fn the_registry_record_of_expiry_counts_too() {
        let issued = entry(
            1,
            1,
            Fact::Card {
                fact: CardFact::Issued,
                issued: ISSUED,
                expiry: Expiry::On(date!(2025 - 01 - 01)),
            },
        );
        assert_eq!(
            judge(vec![issued], Expiry::Long),
            Verdict::Invalid {
                reason: Reason::Expired,
                since: datetime!(2025-01-02 00:00 +8),
            }
        );
    }
}
