//! The in-memory index at national scale, with no RocksDB: builds it for `CITIZENS` synthetic
//! citizens (default 1.4 billion, each with a current card issued and nothing else), then reports
//! its bytes per citizen, the build time, lookups per second single-threaded (one by one, and in
//! batches of 1,000 as `CheckBatch` makes them), and the time to save and load its copy.
//!
//! Run: `CITIZENS=1400000000 cargo bench --bench index` (with the Makefile's `CARGO_TARGET_DIR`;
//! it needs about 9 GB of memory and as much free disk in `INDEX_SAVE_DIR`, default the temp dir).

use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::time::{Duration, Instant};

use idguard::card::{CitizenNumber, Expiry, years_after};
use idguard::registry::Memo;
use idguard::store::index::RecordIndex;
use time::macros::date;

/// Province-level codes the synthetic divisions are spread over.
const PROVINCES: [u64; 8] = [11, 32, 37, 41, 44, 51, 61, 65];
const BIRTH_DAYS: u64 = 32_000;

/// The `i`-th synthetic citizen: a distinct valid number (a division, a birth date since 1935, a
/// sequence) and the memo of a current card issued in 2005-2025 for the period its holder's age
/// gives.
fn citizen(i: u64) -> (CitizenNumber, Memo) {
    let (sequence, rest) = (i % 1000, i / 1000);
    let (day, county) = (rest % BIRTH_DAYS, rest / BIRTH_DAYS);
    let division = PROVINCES[(county % 8) as usize] * 10_000 + 101 + county / 8 * 37 % 9_000;
    let born = date!(1935 - 01 - 01) + time::Duration::days(day as i64);
    let birth = u64::from(born.year() as u32) * 10_000
        + u64::from(u8::from(born.month())) * 100
        + u64::from(born.day());
    let packed = (division * 100_000_000 + birth) * 1000 + sequence;
    let issued = date!(2005 - 01 - 01) + time::Duration::days((i * 7919 % 7300) as i64);
    let age = issued.year() - born.year();
    let expiry = match age {
        ..16 => years_after(issued, 5).map_or(Expiry::Unknown, Expiry::On),
        16..=25 => years_after(issued, 10).map_or(Expiry::Unknown, Expiry::On),
        26..=45 => years_after(issued, 20).map_or(Expiry::Unknown, Expiry::On),
        _ => Expiry::Long,
    };
    let number = CitizenNumber::from_packed(packed).unwrap_or_else(|| unreachable!("17 digits"));
    (number, Memo::Newest { issued, expiry })
}

/// Numbers not in the index: a citizen's birth date and sequence in a province none has.
fn stranger(i: u64) -> CitizenNumber {
    let (number, _) = citizen(i);
    CitizenNumber::from_packed(530_101 * 100_000_000_000 + number.packed() % 100_000_000_000)
        .unwrap_or_else(|| unreachable!("17 digits"))
}

fn per_second(count: usize, took: Duration) -> f64 {
    count as f64 / took.as_secs_f64()
}

fn main() {
    let citizens: u64 = std::env::var("CITIZENS")
        .ok()
        .and_then(|count| count.parse().ok())
        .unwrap_or(1_400_000_000);
    let index = RecordIndex::with_capacity(citizens as usize);
    let started = Instant::now();
    const CHUNK: u64 = 1 << 20;
    for from in (0..citizens).step_by(CHUNK as usize) {
        index.insert((from..(from + CHUNK).min(citizens)).map(citizen));
    }
    let built = started.elapsed();
    assert_eq!(
        index.len() as u64,
        citizens,
        "every citizen is in the index"
    );
    println!("citizens:             {citizens}");
    println!(
        "index bytes:          {} ({:.2} bytes per citizen)",
        index.table_bytes(),
        index.table_bytes() as f64 / citizens as f64
    );
    println!(
        "build:                {:.1} s ({:.2} M inserts/s)",
        built.as_secs_f64(),
        per_second(citizens as usize, built) / 1e6
    );

    // The national workload: 99.99% current cards of citizens, the rest strangers.
    let queries: Vec<CitizenNumber> = (0..1_000_000u64)
        .map(|k| {
            let i = k.wrapping_mul(0x9E37_79B9_7F4A_7C15) % citizens;
            if k % 10_000 == 0 {
                stranger(i)
            } else {
                citizen(i).0
            }
        })
        .collect();
    let expected: Vec<bool> = (0..1_000_000u64).map(|k| k % 10_000 != 0).collect();
    let started = Instant::now();
    let found: Vec<bool> = queries.iter().map(|&n| index.get(n).is_some()).collect();
    let one_by_one = started.elapsed();
    assert_eq!(found, expected, "lookups one by one are exact");
    let started = Instant::now();
    let found: Vec<bool> = queries
        .chunks(1000)
        .flat_map(|chunk| index.get_many(chunk))
        .map(|memo| memo.is_some())
        .collect();
    let batched = started.elapsed();
    assert_eq!(found, expected, "batched lookups are exact");
    println!(
        "lookups, one by one:  {:.2} M/s single-threaded",
        per_second(queries.len(), one_by_one) / 1e6
    );
    println!(
        "lookups, batches of 1,000: {:.2} M/s single-threaded",
        per_second(queries.len(), batched) / 1e6
    );

    let dir = std::env::var_os("INDEX_SAVE_DIR").map_or_else(std::env::temp_dir, Into::into);
    let path = dir.join(format!("idguard-index-bench-{}", std::process::id()));
    let started = Instant::now();
    let mut out = BufWriter::with_capacity(1 << 20, File::create(&path).expect("save file"));
    let header = index.write_slots(&mut out).expect("saved");
    out.into_inner()
        .expect("flushed")
        .sync_all()
        .expect("synced");
    let saved = started.elapsed();
    drop(index);
    let started = Instant::now();
    let mut input = BufReader::with_capacity(1 << 20, File::open(&path).expect("saved file"));
    let loaded = RecordIndex::read_slots(&mut input, header).expect("loaded");
    let load = started.elapsed();
    let _ = std::fs::remove_file(&path);
    assert_eq!(loaded.len() as u64, citizens);
    assert!(queries[1..1000].iter().all(|&n| loaded.get(n).is_some()));
    println!("save (synced):        {:.1} s", saved.as_secs_f64());
    println!("load:                 {:.1} s", load.as_secs_f64());
    std::io::stdout().flush().ok();
}
