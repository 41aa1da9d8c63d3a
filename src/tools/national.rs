//! `idguard gen --national`: the registry at national steady state and its check workload.
//!
//! A population of N citizens, each with the current card its issuing organ fed in (`DOMAIN.md`
//! §5: within a validity period every citizen has an issuance on record), and a year's worth of
//! the rest at realistic rates, per citizen: 1% lost an older card and 0.1% had one stolen before
//! the current card replaced it; 0.05% lost the current card, 0.01% had it stolen and 0.005% had
//! it revoked; 0.6% were cancelled (deaths and the like); 0.005% lost the current card and the
//! report was withdrawn. So about 1.018 events per citizen.
//!
//! The workload presents a citizen's current card, in force, with probability `current_fraction`
//! (99.99% by default), and otherwise a card that should be refused: an older card (superseded, or
//! lost or stolen as reported), or the current card of a citizen with an invalidation or
//! cancellation. So, as at a bank counter, about one check in 10,000 is refused, and a hit (which
//! the hit log records durably before the answer) is rarer still.
//! Citizen `c`'s records and query `q` are pure functions of the seed, the day and `c` or `q`.

use std::io::{self, Write};

use time::{Duration, Time};

use super::synthetic::{
    Format, GenCard, Generator, PROVINCES, card_issued_on, rfc3339, with_check_character,
    write_query_records, write_records,
};
use crate::card::{CHINA_STANDARD_TIME, format_date, years_after};
use crate::event::Kind;
use crate::event_file::{ExportRecord, QueryRecord};

/// Regions per province in the population: 20 prefectures of 30 counties.
const REGIONS: u64 = PROVINCES.len() as u64 * 20 * 30;
/// Birth days per region and sequence: from 1930, about 93 years.
const BIRTH_DAYS: u64 = 34_000;

/// How many citizens a query looks through for one of the kind it presents: far more than the
/// stories' rates need, and bounded however small the population.
const QUERY_LOOKAHEAD: u64 = 20_000;

/// What happened to a citizen beyond the current card's issuance, per 100,000 citizens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Story {
    OlderLost,
    OlderStolen,
    CurrentLost,
    CurrentStolen,
    CurrentRevoked,
    Cancelled,
    CurrentLossWithdrawn,
    OnlyIssued,
}

const STORIES: [(u64, Story); 7] = [
    (1_000, Story::OlderLost),
    (100, Story::OlderStolen),
    (50, Story::CurrentLost),
    (10, Story::CurrentStolen),
    (5, Story::CurrentRevoked),
    (600, Story::Cancelled),
    (5, Story::CurrentLossWithdrawn),
];

/// The national population over a [`Generator`]'s seed and day.
#[derive(Debug, Clone, Copy)]
pub struct Population {
    generator: Generator,
    citizens: u64,
}

impl Population {
    pub fn new(generator: Generator, citizens: u64) -> Self {
        Self {
            generator,
            citizens: citizens.max(1),
        }
    }

    /// Citizen `c`'s number and birth date: distinct for every `c` below `REGIONS * BIRTH_DAYS *
    /// 1000` (19.0 billion), spread over every region and birth day before the sequence codes.
    fn citizen(&self, c: u64) -> (String, time::Date) {
        let (region, rest) = (c % REGIONS, c / REGIONS);
        let (day, sequence) = (rest % BIRTH_DAYS, rest / BIRTH_DAYS % 1000);
        let province = PROVINCES[(region % PROVINCES.len() as u64) as usize];
        let local = region / PROVINCES.len() as u64;
        let born = time::macros::date!(1930 - 01 - 01) + Duration::days(day as i64);
        let digits = format!(
            "{province}{:02}{:02}{}{sequence:03}",
            local % 20 + 1,
            local / 20 + 1,
            format_date(born)
        );
        (with_check_character(&digits), born)
    }

    fn current_card(&self, c: u64) -> GenCard {
        let (number, born) = self.citizen(c);
        self.generator
            .card(number, born, self.generator.draw(c, 31))
    }

    /// The card before the current one, ten years earlier, if the citizen was born by then.
    fn older_card(&self, c: u64) -> Option<GenCard> {
        let (number, born) = self.citizen(c);
        let current = self.current_card(c);
        let issued = years_after(current.issued, -10).filter(|&issued| issued > born)?;
        Some(card_issued_on(number, born, issued))
    }

    fn story(&self, c: u64) -> Story {
        let mut draw = self.generator.draw(c, 30) % 100_000;
        for (per_100k, story) in STORIES {
            if draw < per_100k {
                return story;
            }
            draw -= per_100k;
        }
        Story::OnlyIssued
    }

    /// Whether citizen `c`'s current card is valid: no loss, theft or revocation of it in force,
    /// and the citizen not cancelled.
    fn current_card_in_force(&self, c: u64) -> bool {
        matches!(
            self.story(c),
            Story::OnlyIssued | Story::OlderLost | Story::OlderStolen | Story::CurrentLossWithdrawn
        )
    }

    /// Citizen `c` and those after it, wrapping around the population: where a query looks for
    /// a citizen of the kind it presents, as far as [`QUERY_LOOKAHEAD`].
    fn citizens_from(&self, c: u64) -> impl Iterator<Item = u64> + '_ {
        (c..c + QUERY_LOOKAHEAD).map(|c| c % self.citizens)
    }

    fn report_id(&self, c: u64, what: &str) -> String {
        format!("n{:x}-{c}-{what}", self.generator.seed())
    }

    fn record(
        &self,
        c: u64,
        what: &str,
        kind: Kind,
        card: &GenCard,
        at: time::OffsetDateTime,
    ) -> ExportRecord {
        let (issue_date, expiry_date) = match kind {
            Kind::Cancelled => Default::default(),
            _ => (format_date(card.issued), card.expiry.to_string()),
        };
        ExportRecord {
            report_id: self.report_id(c, what),
            authority: format!("{}-PSB", card.region),
            occurred_at: rfc3339(at),
            kind: kind.name().to_owned(),
            id_number: card.number.clone(),
            issue_date,
            expiry_date,
            withdrawn_report_id: String::new(),
            note: String::new(),
        }
    }

    /// Citizen `c`'s records: the current card's issuance, then what its story adds.
    pub fn records(&self, c: u64) -> Vec<ExportRecord> {
        let current = self.current_card(c);
        let issued_at = current
            .issued
            .with_time(Time::from_hms(9, 0, 0).unwrap_or(Time::MIDNIGHT))
            .assume_offset(CHINA_STANDARD_TIME);
        let mut records = vec![self.record(c, "issued", Kind::Issued, &current, issued_at)];
        let after_issue = || self.generator.moment(c, 32, current.issued);
        match self.story(c) {
            Story::OlderLost | Story::OlderStolen => {
                if let Some(older) = self.older_card(c) {
                    let kind = match self.story(c) {
                        Story::OlderLost => Kind::Lost,
                        _ => Kind::Stolen,
                    };
                    // Reported the day before the replacement was issued.
                    let reported = issued_at - Duration::days(1);
                    records.push(self.record(c, "older", kind, &older, reported));
                }
            }
            Story::CurrentLost => {
                records.push(self.record(c, "lost", Kind::Lost, &current, after_issue()))
            }
            Story::CurrentStolen => {
                records.push(self.record(c, "stolen", Kind::Stolen, &current, after_issue()));
            }
            Story::CurrentRevoked => {
                records.push(self.record(c, "revoked", Kind::Revoked, &current, after_issue()));
            }
            Story::Cancelled => {
                records.push(self.record(c, "cancelled", Kind::Cancelled, &current, after_issue()));
            }
            Story::CurrentLossWithdrawn => {
                let reported = after_issue();
                records.push(self.record(c, "lost", Kind::Lost, &current, reported));
                let mut withdrawal = self.record(
                    c,
                    "withdrawn",
                    Kind::Withdrawn,
                    &current,
                    reported + Duration::hours(1),
                );
                withdrawal.withdrawn_report_id = self.report_id(c, "lost");
                (
                    withdrawal.id_number,
                    withdrawal.issue_date,
                    withdrawal.expiry_date,
                ) = Default::default();
                records.push(withdrawal);
            }
            Story::OnlyIssued => {}
        }
        records
    }

    /// Query `q`: a citizen's current card with probability `current_fraction`, otherwise a card
    /// that should be refused (see the module doc).
    pub fn query(&self, q: u64, current_fraction: f64) -> QueryRecord {
        let generator = &self.generator;
        let c = generator.draw(q, 200) % self.citizens;
        let current =
            ((generator.draw(q, 201) % 1_000_000) as f64) < current_fraction * 1_000_000.0;
        let card = if current {
            // The next citizen whose current card is in force: a cancelled citizen's card, or a
            // current card lost, stolen or revoked, is among the refusals below.
            let in_force = self
                .citizens_from(c)
                .find(|&c| self.current_card_in_force(c));
            self.current_card(in_force.unwrap_or(c))
        } else {
            // The next citizen with a story makes the refusal; failing that, an older card.
            self.citizens_from(c)
                .find_map(|c| match self.story(c) {
                    Story::OlderLost | Story::OlderStolen => self.older_card(c),
                    Story::OnlyIssued | Story::CurrentLossWithdrawn => None,
                    _ => Some(self.current_card(c)),
                })
                .or_else(|| self.older_card(c))
                .unwrap_or_else(|| self.current_card(c))
        };
        QueryRecord {
            id_number: card.number,
            issue_date: format_date(card.issued),
            expiry_date: card.expiry.to_string(),
            has_record: true,
        }
    }
}

/// Writes every citizen's records to `out` in `format`, and returns how many there are.
pub fn write_national_export(
    population: &Population,
    format: Format,
    out: impl Write,
) -> io::Result<u64> {
    write_records(
        (0..population.citizens).flat_map(|c| population.records(c)),
        format,
        out,
    )
}

/// Writes a CSV workload of `queries` national checks.
pub fn write_national_queries(
    population: &Population,
    queries: u64,
    current_fraction: f64,
    out: impl Write,
) -> io::Result<()> {
    write_query_records(
        (0..queries).map(|q| population.query(q, current_fraction)),
        out,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::card::parse_registrable_number;
    use crate::event::validate_event;
    use crate::tools::synthetic::DEFAULT_AS_OF;

    const NOW: time::OffsetDateTime = time::macros::datetime!(2026-11-22 00:00 UTC);

    fn population() -> Population {
        Population::new(Generator::new(9, DEFAULT_AS_OF), 200_000)
    }

    #[test]
    fn every_citizen_has_a_distinct_number_and_its_current_card_issued() {
        let population = population();
        let mut numbers = std::collections::HashSet::new();
        let mut stories = std::collections::HashMap::new();
        for c in 0..200_000 {
            let records = population.records(c);
            assert_eq!(records[0].kind, "issued");
            assert!(numbers.insert(records[0].id_number.clone()), "citizen {c}");
            parse_registrable_number(&records[0].id_number, DEFAULT_AS_OF).unwrap();
            for record in &records {
                let wire = record
                    .to_wire()
                    .unwrap_or_else(|e| panic!("{c}: {e}: {record:?}"));
                validate_event(wire, NOW).unwrap_or_else(|e| panic!("{c}: {e}: {record:?}"));
            }
            *stories.entry(population.story(c)).or_insert(0u32) += 1;
        }
        let per_100k = |story| f64::from(stories.get(&story).copied().unwrap_or(0)) / 2.0;
        assert!(
            (per_100k(Story::OlderLost) - 1000.0).abs() < 150.0,
            "{stories:?}"
        );
        assert!(
            (per_100k(Story::Cancelled) - 600.0).abs() < 120.0,
            "{stories:?}"
        );
    }

    #[test]
    fn the_workload_presents_current_cards_in_the_chosen_fraction() {
        let population = population();
        // Every citizen's current card, by number.
        let citizens: std::collections::HashMap<String, u64> = (0..200_000)
            .map(|c| (population.current_card(c).number, c))
            .collect();
        // Whether query `q` presents the current card, in force, of some citizen.
        let current = |q: u64, fraction| {
            let query = population.query(q, fraction);
            citizens.get(&query.id_number).is_some_and(|&c| {
                population.current_card_in_force(c)
                    && query.issue_date == format_date(population.current_card(c).issued)
            })
        };
        assert!((0..2000).all(|q| current(q, 1.0)));
        let not_in_force = (0..200_000)
            .filter(|&c| !population.current_card_in_force(c))
            .count();
        assert!(
            (1_000..1_700).contains(&not_in_force),
            "{not_in_force} of 200,000 current cards are not in force"
        );
        let refused = (0..2000).filter(|&q| !current(q, 0.0)).count();
        assert!(refused > 1900, "{refused} of 2000 present another card");
    }
}
