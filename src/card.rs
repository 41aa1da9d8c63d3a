//! Card rules: what a well-formed citizen number, card date and card look like
//! (`DOMAIN.md` §1 and §2).
//!
//! Everything here is a pure function of its input and of `today`, which the caller passes in, so
//! the rules can be tested and fuzzed without a clock, a disk or a network.

use std::fmt;

use time::{Date, Month, OffsetDateTime, UtcOffset, macros::date, macros::offset};

/// China Standard Time: every card date is a calendar date in this zone (`DOMAIN.md` §2).
pub const CHINA_STANDARD_TIME: UtcOffset = offset!(+8);

/// First-generation cards stopped being valid nationwide on this day (`DOMAIN.md` §1).
pub const FIRST_GENERATION_END: Date = date!(2013 - 01 - 01);

/// The earliest date of birth a number may carry (`DOMAIN.md` §1).
const EARLIEST_BIRTH: Date = date!(1800 - 01 - 01);

/// ISO 7064 MOD 11-2 weights for positions 1..17 (`DOMAIN.md` §1).
const CHECK_WEIGHTS: [u64; 17] = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];

/// The check character for each remainder `S mod 11` (`DOMAIN.md` §1).
const CHECK_CHARACTERS: &[u8; 11] = b"10X98765432";

/// Province-level division codes, including 81, 82 and 83 used by residence permits for
/// residents of Hong Kong, Macao and Taiwan (`DOMAIN.md` §1).
const PROVINCE_CODES: [u8; 35] = [
    11, 12, 13, 14, 15, 21, 22, 23, 31, 32, 33, 34, 35, 36, 37, 41, 42, 43, 44, 45, 46, 50, 51, 52,
    53, 54, 61, 62, 63, 64, 65, 71, 81, 82, 83,
];

/// Today's calendar date in China Standard Time, the day against which card dates are judged.
pub fn china_today(now: OffsetDateTime) -> Date {
    now.to_offset(CHINA_STANDARD_TIME).date()
}

/// The first instant (00:00 UTC+8) of a calendar date, the moment a date-based rule takes effect.
pub fn start_of_day(day: Date) -> OffsetDateTime {
    day.midnight().assume_offset(CHINA_STANDARD_TIME)
}

/// Whether `code` is a province-level division code (`DOMAIN.md` §1).
pub fn is_province_code(code: u8) -> bool {
    province_ordinal(u64::from(code)).is_some()
}

/// How many province-level codes there are: see [`province_ordinal`].
pub const PROVINCE_COUNT: usize = PROVINCE_CODES.len();

/// Each two-digit code's place in [`PROVINCE_CODES`], or `u8::MAX`: a table, since the in-memory
/// index asks it of every number checked.
const PROVINCE_ORDINALS: [u8; 100] = {
    let mut ordinals = [u8::MAX; 100];
    let mut at = 0;
    while at < PROVINCE_CODES.len() {
        ordinals[PROVINCE_CODES[at] as usize] = at as u8;
        at += 1;
    }
    ordinals
};

/// The place of a province-level code among all of them (below [`PROVINCE_COUNT`]), if it is one.
pub fn province_ordinal(code: u64) -> Option<u64> {
    PROVINCE_ORDINALS
        .get(usize::try_from(code).ok()?)
        .filter(|&&ordinal| ordinal != u8::MAX)
        .map(|&ordinal| u64::from(ordinal))
}

/// The day `years` after `day`, as validity periods are printed: the same month and day, a
/// 29 February becoming the 28th in a year without one (`DOMAIN.md` §2).
pub fn years_after(day: Date, years: i32) -> Option<Date> {
    let year = day.year().checked_add(years)?;
    Date::from_calendar_date(year, day.month(), day.day())
        .or_else(|_| Date::from_calendar_date(year, Month::February, 28))
        .ok()
}

/// A rule a field broke. Each message reads after the field's name: `card.id_number: ...`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rule {
    #[error("is required")]
    Required,
    #[error("must be 18 characters (or 15 for a first-generation number), got {0} (GB 11643-1999)")]
    NumberLength(usize),
    #[error("character {position} must be {expected}, got {found:?}")]
    Character {
        position: usize,
        expected: &'static str,
        found: char,
    },
    #[error("{0:02} is not a province-level division code (GB 11643-1999)")]
    Province(u8),
    #[error(
        "check character is {found} but the first 17 digits require {expected} (GB 11643-1999, ISO 7064 MOD 11-2)"
    )]
    CheckCharacter { expected: char, found: char },
    #[error("date of birth {0} is not a calendar date")]
    BirthNotADate(String),
    #[error("date of birth {0} is after today ({1}, UTC+8)")]
    BirthInFuture(Date, Date),
    #[error("date of birth {0} is before 1800-01-01 (GB 11643-1999)")]
    BirthBefore1800(Date),
    #[error(
        "a first-generation (15-digit) number cannot be registered: such cards are invalid since 2013-01-01"
    )]
    FirstGenerationNotRegistrable,
    #[error("must be YYYYMMDD, got {0}")]
    DateFormat(Echo),
    #[error("must be YYYYMMDD, LONG or empty, got {0}")]
    ExpiryFormat(Echo),
    #[error("{0} is not a calendar date")]
    NotADate(String),
    #[error("issue date {0} is after today ({1}, UTC+8)")]
    IssuedInFuture(Date, Date),
    #[error("issue date {0} is before the holder's date of birth {1}")]
    IssuedBeforeBirth(Date, Date),
    #[error("expiry date {0} is before the issue date {1}")]
    ExpiryBeforeIssue(Date, Date),
    #[error("must be at most {max} bytes, got {found}")]
    TooLong { max: usize, found: usize },
    #[error("must be printable ASCII (no spaces or control characters)")]
    NotPrintable,
    #[error(
        "must be a 6-digit division code, optionally followed by up to 32 characters of A-Z a-z 0-9 - _ ."
    )]
    AuthorityFormat,
    #[error("is {0}, not a known value")]
    UnknownEnum(i32),
    #[error("is after the server's clock by more than 5 minutes")]
    InFuture,
    #[error("is before 1984-01-01, when resident identity cards were first issued")]
    BeforeFirstCards,
    #[error("is not a valid timestamp")]
    BadTimestamp,
    #[error("is {0}; expected lost, stolen, issued, revoked, cancelled or withdrawn")]
    UnknownKind(Echo),
    #[error("must name another event than this one")]
    WithdrawsItself,
    #[error("names a withdrawal; a withdrawal cannot be withdrawn (report the card again instead)")]
    WithdrawsWithdrawal,
}

/// A rejected value as an error message quotes it: whole when short, else a short prefix and
/// its length, so that an error never carries (nor amplifies into a huge `grpc-message`) what a
/// caller sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Echo {
    prefix: String,
    bytes: usize,
}

impl Echo {
    /// The most characters of a value quoted.
    const MAX_CHARS: usize = 24;

    pub fn of(text: &str) -> Self {
        Self {
            prefix: text.chars().take(Self::MAX_CHARS).collect(),
            bytes: text.len(),
        }
    }
}

impl From<&str> for Echo {
    fn from(text: &str) -> Self {
        Self::of(text)
    }
}

impl fmt::Display for Echo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.prefix.len() == self.bytes {
            write!(f, "{:?}", self.prefix)
        } else {
            write!(f, "{:?}... ({} bytes)", self.prefix, self.bytes)
        }
    }
}

/// A field that broke a rule, named by its path in the request (`card.id_number`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {rule}")]
pub struct FieldError {
    pub field: String,
    pub rule: Rule,
}

impl FieldError {
    pub fn new(field: impl Into<String>, rule: Rule) -> Self {
        Self {
            field: field.into(),
            rule,
        }
    }

    /// The same error seen from an enclosing message (`card.id_number` → `cards[3].id_number`).
    pub fn within(self, parent: &str) -> Self {
        Self {
            field: format!("{parent}.{}", self.field),
            rule: self.rule,
        }
    }
}

/// An 18-character citizen number, packed losslessly into its first 17 digits: the check
/// character is derived from them (`DOMAIN.md` §1). Ordering follows the digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CitizenNumber(u64);

impl CitizenNumber {
    /// The 17 digits as an integer (< 10^17, so it fits 57 bits): the key of the number everywhere.
    pub fn packed(self) -> u64 {
        self.0
    }

    /// The inverse of [`CitizenNumber::packed`], for keys read back from storage; `None` for a
    /// value no valid number packs to.
    pub fn from_packed(packed: u64) -> Option<Self> {
        (packed < 100_000_000_000_000_000).then_some(Self(packed))
    }

    fn digits(self) -> [u8; 17] {
        let mut digits = [0u8; 17];
        let mut rest = self.0;
        for digit in digits.iter_mut().rev() {
            *digit = (rest % 10) as u8;
            rest /= 10;
        }
        digits
    }

    /// The date of birth in digits 7-14; always a real date for a parsed number.
    pub fn birth_date(self) -> Date {
        let digits = self.digits();
        let year = number_from_digits(&digits[6..10]) as i32;
        birth_date(
            year,
            digits[10] * 10 + digits[11],
            digits[12] * 10 + digits[13],
        )
        .unwrap_or(EARLIEST_BIRTH)
    }

    /// The check character (ISO 7064 MOD 11-2) of the number's 17 digits.
    pub fn check_character(self) -> char {
        check_character(&self.digits())
    }
}

impl fmt::Display for CitizenNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:017}{}", self.0, self.check_character())
    }
}

impl CitizenNumber {
    /// The number as logs may show it: the first 6 characters (the division code) and the last 4,
    /// the 8 in between (the date of birth) masked, so that a log never carries a full number.
    pub fn masked(self) -> String {
        mask_text(&self.to_string())
    }
}

/// Any text that may hold a citizen number, as logs may show it: the first 6 and the last 4
/// characters, the rest masked; text of 10 characters or fewer is masked whole.
pub fn mask_text(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    if chars.len() <= 10 {
        return "*".repeat(chars.len());
    }
    let hidden = chars.len() - 10;
    chars[..6]
        .iter()
        .chain(std::iter::repeat_n(&'*', hidden))
        .chain(&chars[chars.len() - 4..])
        .collect()
}

fn check_character(digits: &[u8; 17]) -> char {
    let sum: u64 = digits
        .iter()
        .zip(CHECK_WEIGHTS)
        .map(|(&digit, weight)| u64::from(digit) * weight)
        .sum();
    char::from(CHECK_CHARACTERS[(sum % 11) as usize])
}

/// A number as presented at a check: a current 18-character one, or a well-formed first-generation
/// 15-digit one, which is always invalid (`DOMAIN.md` §1, §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdNumber {
    Current(CitizenNumber),
    FirstGeneration,
}

/// Parses and validates a citizen number: format, province code, date of birth (a real date, not
/// after `today`, not before 1800) and, for 18 characters, the check character (`DOMAIN.md` §1).
pub fn parse_id_number(text: &str, today: Date) -> Result<IdNumber, Rule> {
    parse_number_and_birth(text, today).map(|parsed| match parsed {
        Some((number, _)) => IdNumber::Current(number),
        None => IdNumber::FirstGeneration,
    })
}

/// As [`parse_id_number`], keeping the date of birth of a current number (`None`: a
/// first-generation one), which the card rules need next.
fn parse_number_and_birth(text: &str, today: Date) -> Result<Option<(CitizenNumber, Date)>, Rule> {
    // Counting characters, not bytes, so that a full-width character is named where it stands.
    match text.chars().count() {
        0 => Err(Rule::Required),
        18 => parse_current(text, today).map(Some),
        15 => parse_first_generation(text).map(|()| None),
        n => Err(Rule::NumberLength(n)),
    }
}

/// Parses a number that an event may register: only a current 18-character one.
pub fn parse_registrable_number(text: &str, today: Date) -> Result<CitizenNumber, Rule> {
    match parse_id_number(text, today)? {
        IdNumber::Current(number) => Ok(number),
        IdNumber::FirstGeneration => Err(Rule::FirstGenerationNotRegistrable),
    }
}

/// The first `N` characters as digits; the checked length guarantees there are `N`.
fn digits_of<const N: usize>(chars: &mut std::str::Chars<'_>) -> Result<[u8; N], Rule> {
    let mut digits = [0u8; N];
    for (index, (digit, c)) in digits.iter_mut().zip(chars).enumerate() {
        *digit = c.to_digit(10).ok_or(Rule::Character {
            position: index + 1,
            expected: "a digit",
            found: c,
        })? as u8;
    }
    Ok(digits)
}

fn number_from_digits(digits: &[u8]) -> u64 {
    digits
        .iter()
        .fold(0u64, |acc, &digit| acc * 10 + u64::from(digit))
}

fn check_province(digits: &[u8]) -> Result<(), Rule> {
    let code = digits[0] * 10 + digits[1];
    if is_province_code(code) {
        Ok(())
    } else {
        Err(Rule::Province(code))
    }
}

fn birth_date(year: i32, month: u8, day: u8) -> Result<Date, Rule> {
    Month::try_from(month)
        .ok()
        .and_then(|month| Date::from_calendar_date(year, month, day).ok())
        .ok_or_else(|| Rule::BirthNotADate(format!("{year:04}{month:02}{day:02}")))
}

fn parse_current(text: &str, today: Date) -> Result<(CitizenNumber, Date), Rule> {
    let mut chars = text.chars();
    let digits: [u8; 17] = digits_of(&mut chars)?;
    let last = chars.next().unwrap_or_default();
    let found = last.to_ascii_uppercase();
    if !(found.is_ascii_digit() || found == 'X') {
        return Err(Rule::Character {
            position: 18,
            expected: "a digit or X",
            found: last,
        });
    }
    check_province(&digits)?;
    let year = number_from_digits(&digits[6..10]) as i32;
    let born = birth_date(
        year,
        digits[10] * 10 + digits[11],
        digits[12] * 10 + digits[13],
    )?;
    if born > today {
        return Err(Rule::BirthInFuture(born, today));
    }
    if born < EARLIEST_BIRTH {
        return Err(Rule::BirthBefore1800(born));
    }
    let expected = check_character(&digits);
    if found != expected {
        return Err(Rule::CheckCharacter { expected, found });
    }
    Ok((CitizenNumber(number_from_digits(&digits)), born))
}

fn parse_first_generation(text: &str) -> Result<(), Rule> {
    let digits: [u8; 15] = digits_of(&mut text.chars())?;
    check_province(&digits)?;
    let year = 1900 + i32::from(digits[6] * 10 + digits[7]);
    birth_date(
        year,
        digits[8] * 10 + digits[9],
        digits[10] * 10 + digits[11],
    )
    .map(|_| ())
}

/// Parses a `YYYYMMDD` calendar date.
pub fn parse_date(text: &str) -> Result<Date, Rule> {
    if text.is_empty() {
        return Err(Rule::Required);
    }
    let bytes = text.as_bytes();
    if bytes.len() != 8 || !bytes.iter().all(u8::is_ascii_digit) {
        return Err(Rule::DateFormat(Echo::of(text)));
    }
    let field = |range: std::ops::Range<usize>| {
        bytes[range]
            .iter()
            .fold(0u32, |acc, &byte| acc * 10 + u32::from(byte - b'0'))
    };
    let not_a_date = || Rule::NotADate(text.to_owned());
    let month = Month::try_from(field(4..6) as u8).map_err(|_| not_a_date())?;
    Date::from_calendar_date(field(0..4) as i32, month, field(6..8) as u8).map_err(|_| not_a_date())
}

/// Formats a date as `YYYYMMDD`, the API's form.
pub fn format_date(day: Date) -> String {
    format!(
        "{:04}{:02}{:02}",
        day.year(),
        u8::from(day.month()),
        day.day()
    )
}

/// A card's validity end (`DOMAIN.md` §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Expiry {
    /// Not stated.
    Unknown,
    /// `长期`, long-term: never expires.
    Long,
    /// Valid through this day (UTC+8) and expired from the next.
    On(Date),
}

impl Expiry {
    /// Parses the API form: `YYYYMMDD`, `LONG` (any case) or empty.
    pub fn parse(text: &str) -> Result<Self, Rule> {
        if text.is_empty() {
            Ok(Self::Unknown)
        } else if text.eq_ignore_ascii_case("LONG") {
            Ok(Self::Long)
        } else {
            match parse_date(text) {
                Ok(day) => Ok(Self::On(day)),
                Err(Rule::DateFormat(_)) => Err(Rule::ExpiryFormat(Echo::of(text))),
                Err(rule) => Err(rule),
            }
        }
    }

    /// The stricter of two statements about one card: a dated end beats `LONG`, which beats
    /// nothing, and the earlier of two dates wins. A verifier must not accept a card that any
    /// trusted statement says has expired.
    pub fn stricter(self, other: Self) -> Self {
        match (self, other) {
            (Self::On(a), Self::On(b)) => Self::On(a.min(b)),
            (Self::On(a), _) | (_, Self::On(a)) => Self::On(a),
            (Self::Long, _) | (_, Self::Long) => Self::Long,
            (Self::Unknown, Self::Unknown) => Self::Unknown,
        }
    }
}

impl fmt::Display for Expiry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unknown => Ok(()),
            Self::Long => f.write_str("LONG"),
            Self::On(day) => f.write_str(&format_date(*day)),
        }
    }
}

/// One physical card: a number and the card's validity dates (`DOMAIN.md` §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Card {
    pub number: CitizenNumber,
    pub issued: Date,
    pub expiry: Expiry,
}

/// A card as presented at a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PresentedCard {
    Current(Card),
    /// A well-formed first-generation card: invalid whatever its dates.
    FirstGeneration,
}

/// The text of a card as it arrives on the wire (`CardRef`).
#[derive(Debug, Clone, Copy)]
pub struct CardText<'a> {
    pub id_number: &'a str,
    pub issue_date: &'a str,
    pub expiry_date: &'a str,
}

/// Validates a presented card: its number, an issue date that is real, not after `today` and not
/// before the holder's birth, and an expiry that is not before the issue date. Errors name the
/// field (`id_number`, `issue_date`, `expiry_date`).
pub fn parse_presented_card(text: CardText<'_>, today: Date) -> Result<PresentedCard, FieldError> {
    let number = parse_number_and_birth(text.id_number, today)
        .map_err(|rule| FieldError::new("id_number", rule))?;
    let issued = parse_date(text.issue_date).map_err(|rule| FieldError::new("issue_date", rule))?;
    if issued > today {
        return Err(FieldError::new(
            "issue_date",
            Rule::IssuedInFuture(issued, today),
        ));
    }
    let expiry =
        Expiry::parse(text.expiry_date).map_err(|rule| FieldError::new("expiry_date", rule))?;
    if let Expiry::On(end) = expiry
        && end < issued
    {
        return Err(FieldError::new(
            "expiry_date",
            Rule::ExpiryBeforeIssue(end, issued),
        ));
    }
    match number {
        None => Ok(PresentedCard::FirstGeneration),
        Some((number, born)) => {
            if issued < born {
                return Err(FieldError::new(
                    "issue_date",
                    Rule::IssuedBeforeBirth(issued, born),
                ));
            }
            Ok(PresentedCard::Current(Card {
                number,
                issued,
                expiry,
            }))
        }
    }
}

/// Validates a card named in a registry event: as at a check, and its number must be a current
/// 18-character one.
pub fn parse_registrable_card(text: CardText<'_>, today: Date) -> Result<Card, FieldError> {
    match parse_presented_card(text, today)? {
        PresentedCard::Current(card) => Ok(card),
        PresentedCard::FirstGeneration => Err(FieldError::new(
            "id_number",
            Rule::FirstGenerationNotRegistrable,
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TODAY: Date = date!(2026 - 11 - 22);

    fn card(id: &str, issued: &str, expiry: &str) -> Result<PresentedCard, FieldError> {
        parse_presented_card(
            CardText {
                id_number: id,
                issue_date: issued,
                expiry_date: expiry,
            },
            TODAY,
        )
    }

    /// `DOMAIN.md` §1: the standard's worked example.
    #[test]
    fn a_rejected_value_is_quoted_short_whatever_its_length() {
        let huge = "2".repeat(700 * 1024);
        let message = parse_date(&huge).unwrap_err().to_string();
        assert_eq!(
            message,
            format!(
                "must be YYYYMMDD, got \"{}\"... (716800 bytes)",
                "2".repeat(24)
            )
        );
        assert_eq!(
            parse_date("2020-1-1").unwrap_err().to_string(),
            "must be YYYYMMDD, got \"2020-1-1\""
        );
        // Characters, not bytes, are cut: a prefix never splits one.
        let wide = Echo::of(&"长".repeat(30)).to_string();
        assert!(
            wide.starts_with(&format!("\"{}\"...", "长".repeat(24))),
            "{wide}"
        );
    }

    #[test]
    fn standard_worked_example_is_valid_and_round_trips() {
        let IdNumber::Current(number) = parse_id_number("11010519491231002X", TODAY).unwrap()
        else {
            panic!("not a current number")
        };
        assert_eq!(number.packed(), 11010519491231002);
        assert_eq!(number.to_string(), "11010519491231002X");
    }

    /// `DOMAIN.md` §1: lower-case x is accepted and printed as X.
    #[test]
    fn lower_case_check_x_is_normalised() {
        let IdNumber::Current(number) = parse_id_number("11010519491231002x", TODAY).unwrap()
        else {
            panic!("not a current number")
        };
        assert_eq!(number.to_string(), "11010519491231002X");
    }

    /// Every vector in `shared/testdata/id_numbers.tsv` gets the expected classification.
    #[test]
    fn shared_test_vectors() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../shared/testdata/id_numbers.tsv"
        );
        let vectors = std::fs::read_to_string(path).expect("shared test vectors are readable");
        let mut checked = 0;
        for line in vectors.lines().skip(1) {
            let mut columns = line.split('\t');
            let (id, expected, note) = (
                columns.next().unwrap_or_default(),
                columns.next().unwrap_or_default(),
                columns.next().unwrap_or_default(),
            );
            let outcome = parse_id_number(id, TODAY);
            let got = match outcome {
                Ok(IdNumber::Current(_)) => "well_formed",
                Ok(IdNumber::FirstGeneration) => "first_generation",
                Err(_) => "malformed",
            };
            assert_eq!(got, expected, "{id:?} ({note}): {outcome:?}");
            checked += 1;
        }
        assert!(checked >= 50, "only {checked} vectors read");
    }

    #[test]
    fn each_number_rule_is_named() {
        let rule = |id| parse_id_number(id, TODAY).unwrap_err();
        assert_eq!(rule(""), Rule::Required);
        assert_eq!(rule("1101051949123100"), Rule::NumberLength(16));
        assert_eq!(
            rule("141401200109121541"),
            Rule::CheckCharacter {
                expected: '0',
                found: '1'
            }
        );
        assert_eq!(rule("990105194912310023"), Rule::Province(99));
        assert_eq!(
            rule("110105194902300020"),
            Rule::BirthNotADate("19490230".into())
        );
        assert!(matches!(
            rule("110105210012310021"),
            Rule::BirthInFuture(..)
        ));
        assert!(matches!(
            rule("110105179912310024"),
            Rule::BirthBefore1800(..)
        ));
        assert_eq!(
            rule("11010519491231002Ｘ"),
            Rule::Character {
                position: 18,
                expected: "a digit or X",
                found: 'Ｘ'
            }
        );
        assert_eq!(
            rule("110105194912310 2X"),
            Rule::Character {
                position: 16,
                expected: "a digit",
                found: ' '
            }
        );
        assert_eq!(
            rule("110105491331002"),
            Rule::BirthNotADate("19491331".into())
        );
    }

    #[test]
    fn born_today_is_allowed_born_tomorrow_is_not() {
        let number = |day: Date| {
            let digits = format!("110105{}002", format_date(day));
            let mut packed = [0u8; 17];
            for (slot, byte) in packed.iter_mut().zip(digits.bytes()) {
                *slot = byte - b'0';
            }
            format!("{digits}{}", check_character(&packed))
        };
        assert!(parse_id_number(&number(TODAY), TODAY).is_ok());
        let tomorrow = TODAY.next_day().unwrap();
        assert_eq!(
            parse_id_number(&number(tomorrow), TODAY),
            Err(Rule::BirthInFuture(tomorrow, TODAY))
        );
    }

    #[test]
    fn card_dates_are_checked_against_each_other() {
        assert!(card("11010519491231002X", "20200101", "LONG").is_ok());
        assert!(card("11010519491231002X", "20200101", "long").is_ok());
        assert_eq!(
            card("11010519491231002X", "2020011", "").unwrap_err(),
            FieldError::new("issue_date", Rule::DateFormat("2020011".into()))
        );
        assert_eq!(
            card("11010519491231002X", "20200231", "").unwrap_err(),
            FieldError::new("issue_date", Rule::NotADate("20200231".into()))
        );
        assert_eq!(
            card("11010519491231002X", "20261123", "").unwrap_err(),
            FieldError::new(
                "issue_date",
                Rule::IssuedInFuture(date!(2026 - 11 - 23), TODAY)
            )
        );
        assert_eq!(
            card("11010519491231002X", "19401231", "").unwrap_err(),
            FieldError::new(
                "issue_date",
                Rule::IssuedBeforeBirth(date!(1940 - 12 - 31), date!(1949 - 12 - 31))
            )
        );
        assert_eq!(
            card("11010519491231002X", "20200101", "20191231").unwrap_err(),
            FieldError::new(
                "expiry_date",
                Rule::ExpiryBeforeIssue(date!(2019 - 12 - 31), date!(2020 - 01 - 01))
            )
        );
        assert_eq!(
            card("11010519491231002X", "20200101", "never").unwrap_err(),
            FieldError::new("expiry_date", Rule::ExpiryFormat("never".into()))
        );
    }

    #[test]
    fn first_generation_cards_are_recognised_but_not_registrable() {
        assert_eq!(
            card("110105491231002", "19990101", ""),
            Ok(PresentedCard::FirstGeneration)
        );
        let text = CardText {
            id_number: "110105491231002",
            issue_date: "19990101",
            expiry_date: "",
        };
        assert_eq!(
            parse_registrable_card(text, TODAY).unwrap_err().rule,
            Rule::FirstGenerationNotRegistrable
        );
    }

    #[test]
    fn stricter_expiry_prefers_the_earliest_date() {
        let early = Expiry::On(date!(2020 - 01 - 01));
        let late = Expiry::On(date!(2030 - 01 - 01));
        assert_eq!(early.stricter(late), early);
        assert_eq!(late.stricter(early), early);
        assert_eq!(Expiry::Long.stricter(late), late);
        assert_eq!(Expiry::Unknown.stricter(Expiry::Long), Expiry::Long);
        assert_eq!(Expiry::Unknown.stricter(Expiry::Unknown), Expiry::Unknown);
    }

    #[test]
    fn china_today_turns_at_16_00_utc() {
        let before = time::macros::datetime!(2026-11-21 15:59:59 UTC);
        let after = time::macros::datetime!(2026-11-21 16:00:00 UTC);
        assert_eq!(china_today(before), date!(2026 - 11 - 21));
        assert_eq!(china_today(after), date!(2026 - 11 - 22));
    }

    #[test]
    fn a_masked_number_keeps_only_its_first_6_and_last_4_characters() {
        let number = parse_registrable_number("11010519491231002x", TODAY).unwrap();
        assert_eq!(number.masked(), "110105********002X");
        assert_eq!(mask_text("110105491231002"), "110105*****1002");
        assert_eq!(mask_text("0123456789"), "**********");
        assert_eq!(mask_text("éé"), "**");
    }

    proptest::proptest! {
        /// Every day from year 0 to 9999 formats and parses back to itself, as do the expiries
        /// made of it; and any text that parses as a date is exactly that day's `YYYYMMDD`.
        #[test]
        fn dates_and_expiries_round_trip(
            offset in 0i32..3_652_425,
            text in "\\PC{0,10}|[0-9]{8}",
        ) {
            let day = Date::from_calendar_date(0, Month::January, 1).unwrap() + time::Duration::days(offset.into());
            proptest::prop_assert_eq!(parse_date(&format_date(day)), Ok(day));
            for expiry in [Expiry::On(day), Expiry::Long, Expiry::Unknown] {
                proptest::prop_assert_eq!(Expiry::parse(&expiry.to_string()), Ok(expiry));
            }
            if let Ok(parsed) = parse_date(&text) {
                proptest::prop_assert_eq!(format_date(parsed), text);
            }
        }

        /// Any text either parses or names a rule; it never panics, and a parsed number prints
        /// back to the same 18 characters (with X upper-cased).
        #[test]
        fn parsing_never_panics_and_round_trips(text in "\\PC{0,20}|[0-9]{15,18}[0-9Xx]?") {
            if let Ok(IdNumber::Current(number)) = parse_id_number(&text, TODAY) {
                proptest::prop_assert_eq!(number.to_string(), text.to_ascii_uppercase());
            }
        }
    }
}
