//! `idguard gen`: a synthetic registry export and a query workload, realistic enough to load and
//! measure at national scale, and deterministic: record `i` is a pure function of the seed, the
//! reference day and `i`, so any count can be produced and any record recomputed without state.
//!
//! Numbers carry real province codes, real birth dates (1930 to a year before the reference day)
//! and correct check characters; cards follow the validity periods by age (`DOMAIN.md` §2). The
//! mix, by share of records: 55% issuances (30% of them a new card after a recent loss or theft on
//! the same number), 30% losses, 5% thefts, 3% revocations, 3% cancellations and 4% withdrawals of
//! a recent loss or theft report.

use std::io::{self, BufWriter, Write};
use std::path::Path;

use time::format_description::well_known::Rfc3339;
use time::{Date, Duration, OffsetDateTime, Time};

use crate::card::{CHINA_STANDARD_TIME, CitizenNumber, Expiry, format_date, years_after};
use crate::event::Kind;
use crate::event_file::{ExportRecord, QueryRecord};

/// The default reference day: fixed, so that the same seed always gives the same data.
pub const DEFAULT_AS_OF: Date = time::macros::date!(2026 - 11 - 01);

pub(super) const PROVINCES: [u8; 31] = [
    11, 12, 13, 14, 15, 21, 22, 23, 31, 32, 33, 34, 35, 36, 37, 41, 42, 43, 44, 45, 46, 50, 51, 52,
    53, 54, 61, 62, 63, 64, 65,
];
/// How far back an event that refers to an earlier one may look.
const LOOKBACK: u64 = 1000;

/// A card as generated: its number, dates, and the region that issued it.
#[derive(Debug, Clone)]
pub(super) struct GenCard {
    pub(super) number: String,
    pub(super) region: String,
    pub(super) issued: Date,
    pub(super) expiry: Expiry,
}

/// The `k`-th of a large supply of distinct valid numbers (region 440305, born on or after
/// 1950-01-01), for tests and benchmarks that need many numbers they can name again.
pub fn nth_number(k: u64) -> String {
    let born = time::macros::date!(1950 - 01 - 01) + Duration::days((k / 900) as i64);
    with_check_character(&format!("440305{}{:03}", format_date(born), k % 900 + 100))
}

/// A number from its first 17 digits, with its check character.
pub(super) fn with_check_character(digits: &str) -> String {
    let packed = digits.parse().unwrap_or_default();
    CitizenNumber::from_packed(packed).map_or_else(|| digits.to_owned(), |n| n.to_string())
}

/// A card issued on `issued`, valid for the period the holder's age then gives
/// (Resident Identity Card Law, art. 5; `DOMAIN.md` §2).
pub(super) fn card_issued_on(number: String, born: Date, issued: Date) -> GenCard {
    let had_birthday = (issued.month(), issued.day()) >= (born.month(), born.day());
    let age = issued.year() - born.year() - i32::from(!had_birthday);
    let expiry = match age {
        ..16 => Expiry::On(add_years(issued, 5)),
        16..=25 => Expiry::On(add_years(issued, 10)),
        26..=45 => Expiry::On(add_years(issued, 20)),
        _ => Expiry::Long,
    };
    GenCard {
        region: number[..6].to_owned(),
        number,
        issued,
        expiry,
    }
}

/// The deterministic generator.
#[derive(Debug, Clone, Copy)]
pub struct Generator {
    seed: u64,
    as_of: Date,
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

fn add_years(day: Date, years: i32) -> Date {
    years_after(day, years).unwrap_or(day)
}

/// A moment as the export writes it.
pub(super) fn rfc3339(at: OffsetDateTime) -> String {
    at.format(&Rfc3339).unwrap_or_default()
}

fn days_between(from: Date, to: Date) -> u64 {
    (to - from).whole_days().max(0) as u64
}

impl Generator {
    pub fn new(seed: u64, as_of: Date) -> Self {
        Self { seed, as_of }
    }

    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// A pseudo-random value for record `i` and purpose `salt`.
    pub(super) fn draw(&self, i: u64, salt: u64) -> u64 {
        splitmix(self.seed ^ splitmix(i ^ salt.rotate_left(40)))
    }

    fn kind(&self, i: u64) -> Kind {
        match self.draw(i, 1) % 100 {
            0..55 => Kind::Issued,
            55..85 => Kind::Lost,
            85..90 => Kind::Stolen,
            90..93 => Kind::Revoked,
            93..96 => Kind::Cancelled,
            _ => Kind::Withdrawn,
        }
    }

    fn report_id(&self, i: u64) -> String {
        format!("g{:x}-{i}", self.seed)
    }

    /// A citizen for draw `value`: region, number and birth date.
    fn citizen(&self, value: u64) -> (String, Date) {
        let province = PROVINCES[(value % PROVINCES.len() as u64) as usize];
        let region = format!(
            "{province}{:02}{:02}",
            (value >> 8) % 20 + 1,
            (value >> 16) % 30 + 1
        );
        let first = time::macros::date!(1930 - 01 - 01);
        let span = days_between(first, add_years(self.as_of, -1));
        let born = first + Duration::days(((value >> 24) % span) as i64);
        let sequence = (value >> 48) % 999 + 1;
        let number = with_check_character(&format!("{region}{}{sequence:03}", format_date(born)));
        (number, born)
    }

    /// The card of a citizen born on `born`, current on the reference day unless it has expired.
    pub(super) fn card(&self, number: String, born: Date, value: u64) -> GenCard {
        let adult = add_years(born, 16);
        let recent = self.as_of - Duration::days((value % 3650) as i64);
        let issued = if adult <= self.as_of {
            adult.max(recent)
        } else {
            born + Duration::days((value % days_between(born, self.as_of).max(1)) as i64)
        };
        card_issued_on(number, born, issued)
    }

    fn own_card(&self, i: u64) -> GenCard {
        let (number, born) = self.citizen(self.draw(i, 2));
        self.card(number, born, self.draw(i, 3))
    }

    /// A day between `from` and the reference day, at an hour of the day in UTC+8.
    pub(super) fn moment(&self, i: u64, salt: u64, from: Date) -> OffsetDateTime {
        let value = self.draw(i, salt);
        let day = from + Duration::days((value % (days_between(from, self.as_of) + 1)) as i64);
        let hour = (value >> 32) % 14 + 8;
        day.with_time(
            Time::from_hms(hour as u8, ((value >> 40) % 60) as u8, 0).unwrap_or(Time::MIDNIGHT),
        )
        .assume_offset(CHINA_STANDARD_TIME)
    }

    /// A recent earlier loss or theft report, if one is found within a few tries.
    fn recent_loss(&self, i: u64, salt: u64) -> Option<u64> {
        (0..8).find_map(|attempt| {
            let back = 1 + self.draw(i, salt + attempt) % LOOKBACK;
            let j = i.checked_sub(back)?;
            matches!(self.kind(j), Kind::Lost | Kind::Stolen).then_some(j)
        })
    }

    fn occurred(&self, i: u64, kind: Kind, card: &GenCard) -> OffsetDateTime {
        match kind {
            Kind::Issued => card
                .issued
                .with_time(Time::from_hms(9, 0, 0).unwrap_or(Time::MIDNIGHT))
                .assume_offset(CHINA_STANDARD_TIME),
            _ => self.moment(i, 6, card.issued),
        }
    }

    /// Record `i` of the export.
    pub fn record(&self, i: u64) -> ExportRecord {
        let mut kind = self.kind(i);
        let target = match kind {
            Kind::Withdrawn => {
                let target = self.recent_loss(i, 10);
                if target.is_none() {
                    kind = Kind::Lost;
                }
                target
            }
            _ => None,
        };
        let card = match (kind, self.recent_loss(i, 20)) {
            // A new card after a loss or theft: same number, issued after the report.
            (Kind::Issued, Some(j)) if self.draw(i, 4) % 100 < 30 => {
                let (number, born) = self.citizen(self.draw(j, 2));
                let lost = self.own_card(j);
                let reported = self.occurred(j, self.kind(j), &lost);
                let reported = reported.to_offset(CHINA_STANDARD_TIME).date();
                let issued = reported + Duration::days((self.draw(i, 5) % 30 + 1) as i64);
                card_issued_on(number, born, issued.min(self.as_of).max(lost.issued))
            }
            _ => self.own_card(i),
        };
        let (occurred_at, withdrawn_report_id) = match target {
            Some(j) => {
                let target_card = self.own_card(j);
                let reported = self.occurred(j, self.kind(j), &target_card);
                // After the report (made by 22:00), and no later than the reference day.
                let end_of_day = self
                    .as_of
                    .with_time(Time::from_hms(23, 59, 59).unwrap_or(Time::MIDNIGHT))
                    .assume_offset(CHINA_STANDARD_TIME);
                let after = Duration::minutes(1 + (self.draw(i, 7) % 2880) as i64);
                let later = (reported + after).min(end_of_day);
                (later, self.report_id(j))
            }
            None => (self.occurred(i, kind, &card), String::new()),
        };
        let (id_number, issue_date, expiry_date) = match kind {
            Kind::Withdrawn => Default::default(),
            Kind::Cancelled => (card.number.clone(), String::new(), String::new()),
            _ => (
                card.number.clone(),
                format_date(card.issued),
                card.expiry.to_string(),
            ),
        };
        ExportRecord {
            report_id: self.report_id(i),
            authority: format!("{}-PSB", card.region),
            occurred_at: rfc3339(occurred_at),
            kind: kind.name().to_owned(),
            id_number,
            issue_date,
            expiry_date,
            withdrawn_report_id,
            note: String::new(),
        }
    }

    /// Query `q` of a workload over an export of `count` records: with probability
    /// `hit_fraction` a card the export reports lost, stolen or revoked, otherwise a card whose
    /// number the export never mentions (with overwhelming probability).
    pub fn query(&self, q: u64, count: u64, hit_fraction: f64) -> QueryRecord {
        let wants_hit = ((self.draw(q, 100) % 1_000_000) as f64) < hit_fraction * 1_000_000.0;
        let hit = wants_hit.then(|| {
            let start = self.draw(q, 101) % count.max(1);
            (0..64)
                .map(|step| (start + step) % count.max(1))
                .find(|&i| matches!(self.kind(i), Kind::Lost | Kind::Stolen | Kind::Revoked))
        });
        let (card, has_record) = match hit.flatten() {
            Some(i) => (self.own_card(i), true),
            None => {
                // Draws no record uses: the record draws are `splitmix` of small salts.
                let value = self.draw(u64::MAX - q, 102);
                let (number, born) = self.citizen(value);
                (self.card(number, born, value >> 3), false)
            }
        };
        QueryRecord {
            id_number: card.number,
            issue_date: format_date(card.issued),
            expiry_date: card.expiry.to_string(),
            has_record,
        }
    }
}

/// Output formats of `idguard gen`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Ndjson,
    Csv,
}

impl Format {
    /// The export's file name in this format.
    pub fn file_name(self) -> &'static str {
        match self {
            Self::Ndjson => "events.ndjson",
            Self::Csv => "events.csv",
        }
    }
}

/// Writes `count` records to `out` in `format`.
pub fn write_export(
    generator: &Generator,
    count: u64,
    format: Format,
    out: impl Write,
) -> io::Result<()> {
    write_records((0..count).map(|i| generator.record(i)), format, out).map(drop)
}

/// Writes export records to `out` in `format`, and returns how many.
pub fn write_records(
    records: impl Iterator<Item = ExportRecord>,
    format: Format,
    out: impl Write,
) -> io::Result<u64> {
    let mut out = BufWriter::with_capacity(1 << 20, out);
    let mut written = 0;
    match format {
        Format::Ndjson => {
            for record in records {
                serde_json::to_writer(&mut out, &record)?;
                out.write_all(b"\n")?;
                written += 1;
            }
        }
        Format::Csv => {
            let mut writer = csv::Writer::from_writer(&mut out);
            for record in records {
                writer.serialize(record).map_err(io::Error::other)?;
                written += 1;
            }
            writer.flush()?;
        }
    }
    out.flush()?;
    Ok(written)
}

/// Writes a CSV workload of `queries` checks over an export of `count` records.
pub fn write_queries(
    generator: &Generator,
    count: u64,
    queries: u64,
    hit_fraction: f64,
    out: impl Write,
) -> io::Result<()> {
    write_query_records(
        (0..queries).map(|q| generator.query(q, count, hit_fraction)),
        out,
    )
}

/// Writes a CSV workload of checks.
pub fn write_query_records(
    queries: impl Iterator<Item = QueryRecord>,
    out: impl Write,
) -> io::Result<()> {
    let mut writer = csv::Writer::from_writer(BufWriter::with_capacity(1 << 20, out));
    for query in queries {
        writer.serialize(query).map_err(io::Error::other)?;
    }
    writer.flush()
}

/// `idguard gen`: `events.ndjson` and/or `events.csv`, and `queries.csv`, in `dir`.
pub fn generate(
    dir: &Path,
    generator: &Generator,
    count: u64,
    formats: &[Format],
    queries: u64,
    hit_fraction: f64,
) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for &format in formats {
        write_export(
            generator,
            count,
            format,
            std::fs::File::create(dir.join(format.file_name()))?,
        )?;
    }
    write_queries(
        generator,
        count,
        queries,
        hit_fraction,
        std::fs::File::create(dir.join("queries.csv"))?,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::validate_event;
    use crate::event_file::read_events_from;
    use crate::proto::v1 as pb;

    const NOW: OffsetDateTime = time::macros::datetime!(2026-11-22 00:00 UTC);

    #[test]
    fn records_are_valid_events_in_the_documented_mix() {
        let generator = Generator::new(7, DEFAULT_AS_OF);
        let mut counts = std::collections::HashMap::new();
        for i in 0..20_000 {
            let record = generator.record(i);
            let wire = record
                .to_wire()
                .unwrap_or_else(|e| panic!("record {i}: {e}: {record:?}"));
            validate_event(wire, NOW).unwrap_or_else(|e| panic!("record {i}: {e}: {record:?}"));
            *counts.entry(record.kind).or_insert(0u32) += 1;
        }
        let share = |kind: &str| f64::from(counts[kind]) / 20_000.0;
        assert!((share("issued") - 0.55).abs() < 0.02, "{counts:?}");
        assert!((share("lost") - 0.30).abs() < 0.02 + 0.04, "{counts:?}");
        assert!((share("withdrawn") - 0.04).abs() < 0.01, "{counts:?}");
        assert!((share("stolen") - 0.05).abs() < 0.01, "{counts:?}");
    }

    #[test]
    fn the_same_seed_gives_the_same_bytes_and_another_seed_does_not() {
        let export = |seed| {
            let mut bytes = Vec::new();
            write_export(
                &Generator::new(seed, DEFAULT_AS_OF),
                500,
                Format::Ndjson,
                &mut bytes,
            )
            .unwrap();
            bytes
        };
        assert_eq!(export(1), export(1));
        assert_ne!(export(1), export(2));
    }

    #[test]
    fn csv_and_ndjson_carry_the_same_records() {
        let generator = Generator::new(3, DEFAULT_AS_OF);
        // Read back as imports and replays read them.
        let read = |format: Format, name: &str| -> Vec<pb::RegistryEvent> {
            let mut bytes = Vec::new();
            write_export(&generator, 300, format, &mut bytes).unwrap();
            read_events_from(Path::new(name), std::io::Cursor::new(bytes))
                .unwrap()
                .map(|(_, event)| event.unwrap())
                .collect()
        };
        let from_csv = read(Format::Csv, "events.csv");
        let expected: Vec<pb::RegistryEvent> = (0..300)
            .map(|i| generator.record(i).to_wire().unwrap())
            .collect();
        assert_eq!(from_csv, expected);
        assert_eq!(read(Format::Ndjson, "events.ndjson"), expected);
    }

    #[test]
    fn withdrawals_name_earlier_loss_reports() {
        let generator = Generator::new(11, DEFAULT_AS_OF);
        let records: Vec<_> = (0..5000).map(|i| generator.record(i)).collect();
        let withdrawals: Vec<_> = records.iter().filter(|r| r.kind == "withdrawn").collect();
        assert!(!withdrawals.is_empty());
        for withdrawal in withdrawals {
            let target = records
                .iter()
                .find(|r| r.report_id == withdrawal.withdrawn_report_id)
                .expect("target exists");
            assert!(
                target.kind == "lost" || target.kind == "stolen",
                "{target:?}"
            );
            let at = |text: &str| OffsetDateTime::parse(text, &Rfc3339).unwrap();
            assert!(
                at(&withdrawal.occurred_at) > at(&target.occurred_at),
                "{withdrawal:?} {target:?}"
            );
        }
    }

    #[test]
    fn queries_hit_in_the_chosen_fraction() {
        let generator = Generator::new(5, DEFAULT_AS_OF);
        let hits = (0..10_000)
            .filter(|&q| generator.query(q, 100_000, 0.2).has_record)
            .count();
        assert!((1800..2200).contains(&hits), "{hits} hits of 10000");
        let misses_have_no_record = (0..2000)
            .map(|q| generator.query(q, 100_000, 0.0))
            .all(|q| !q.has_record);
        assert!(misses_have_no_record);
    }
}
