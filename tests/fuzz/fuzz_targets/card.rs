//! Card parsing on arbitrary text: the three `CardRef` fields, separated by U+001F in the input.
//! It must never panic, and a card it accepts must parse again, unchanged, from its canonical
//! form.

#![no_main]

use idguard::card::{CardText, PresentedCard, format_date, parse_presented_card};
use time::{Date, Month};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut fields = text.splitn(3, '\u{1f}');
    let card = CardText {
        id_number: fields.next().unwrap_or_default(),
        issue_date: fields.next().unwrap_or_default(),
        expiry_date: fields.next().unwrap_or_default(),
    };
    let today = Date::from_calendar_date(2026, Month::November, 22).expect("a real day");
    if let Ok(PresentedCard::Current(parsed)) = parse_presented_card(card, today) {
        let (number, issued, expiry) = (
            parsed.number.to_string(),
            format_date(parsed.issued),
            parsed.expiry.to_string(),
        );
        let canonical = CardText {
            id_number: &number,
            issue_date: &issued,
            expiry_date: &expiry,
        };
        assert_eq!(
            parse_presented_card(canonical, today),
            Ok(PresentedCard::Current(parsed)),
            "{card:?} was accepted but its canonical form {canonical:?} was not"
        );
    }
});
