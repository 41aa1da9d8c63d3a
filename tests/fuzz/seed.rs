//! Writes the starting corpora: generated events as protobuf bytes (`corpus/event`) and their
//! cards as fuzz input text (`corpus/card`). `cargo +nightly run --bin seed` from this directory.

use idguard::tools::synthetic::Generator;
use prost::Message;
use time::{Date, Month};

fn main() -> std::io::Result<()> {
    let as_of = Date::from_calendar_date(2026, Month::November, 1).expect("a real day");
    let generator = Generator::new(1, as_of);
    std::fs::create_dir_all("corpus/event")?;
    std::fs::create_dir_all("corpus/card")?;
    for i in 0..64 {
        let record = generator.record(i);
        if let Ok(wire) = record.to_wire() {
            std::fs::write(format!("corpus/event/seed-{i}"), wire.encode_to_vec())?;
        }
        let card = [
            record.id_number.as_str(),
            &record.issue_date,
            &record.expiry_date,
        ]
        .join("\u{1f}");
        std::fs::write(format!("corpus/card/seed-{i}"), card)?;
    }
    Ok(())
}
