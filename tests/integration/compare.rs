//! `benches/compare.sh` at a small size, for both workloads: it generates and imports a registry,
//! measures the empty handler, idguard in its three modes and Redis, and prints the whole table;
//! and with the export piped into the import, as for registries whose export does not fit on disk.

use std::process::Command;

/// The build directory this test was built in, so the script's own cargo calls find everything
/// already built.
fn target_dir() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/release/deps/compare-HASH
    exe.ancestors().nth(3).unwrap().to_owned()
}

/// The number in the column after `row`'s name on its line of the table.
fn figure(table: &str, row: &str) -> f64 {
    let line = table
        .lines()
        .find(|line| line.starts_with(row))
        .unwrap_or_else(|| panic!("no row {row:?} in\n{table}"));
    line[row.len()..]
        .split_whitespace()
        .next()
        .and_then(|figure| figure.parse().ok())
        .unwrap_or_else(|| panic!("no figure in {line:?}"))
}

/// Both workloads, each at a small size: the default one (checks of numbers with no record) and
/// the national steady state (checks of citizens' current cards).
#[test]
fn the_side_by_side_comparison_prints_every_row_and_ratio() {
    for workload in ["default", "national"] {
        compare(workload, Export::Kept);
    }
}

/// `PIPE_EVENTS=1`: the export goes through a FIFO into the import and is not kept, so the table
/// has every row but Redis's, whose set is loaded from the export.
#[test]
fn the_comparison_with_the_export_piped_into_the_import_keeps_no_export() {
    compare("national", Export::Piped);
}

#[derive(PartialEq)]
enum Export {
    Kept,
    Piped,
}

fn compare(workload: &str, export: Export) {
    let work = tempfile::tempdir().unwrap();
    let piped = if export == Export::Piped { "1" } else { "0" };
    let output = Command::new("bash")
        .arg("benches/compare.sh")
        .env("CARGO_TARGET_DIR", target_dir())
        .env("COUNT", "20000")
        .env("QUERIES", "5000")
        .env("RUN_SECONDS", "1")
        .env("WORKERS", "4")
        .env("WORK", work.path())
        .env("WORKLOAD", workload)
        .env("PIPE_EVENTS", piped)
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&output.stdout);
    let heading = format!("{workload} workload: 20000 ");
    assert!(
        table.lines().any(|line| line.starts_with(&heading)),
        "{table}"
    );
    assert!(
        output.status.success(),
        "{table}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let redis_rows = [
        "Redis SISMEMBER, unpipelined",
        "Redis SISMEMBER, pipelined",
        "idguard batch / Redis pipelined:",
        "idguard stream / Redis pipelined:",
    ];
    let rows = [
        "empty handler, unary",
        "empty handler, unary at half load",
        "empty handler, batch",
        "empty handler, stream",
        "idguard, unary",
        "idguard, unary at half load",
        "idguard, batch",
        "idguard, stream",
        "idguard / empty handler, unary:",
        "idguard / empty handler, batch:",
        "idguard / empty handler, stream:",
    ];
    let measured = match export {
        Export::Kept => [&rows[..], &redis_rows[..]].concat(),
        Export::Piped => {
            for row in redis_rows {
                assert!(!table.contains(row), "{row} without an export in\n{table}");
            }
            assert!(!work.path().join("events.csv").exists());
            assert!(work.path().join("data/CURRENT").exists());
            rows.to_vec()
        }
    };
    for row in measured {
        assert!(figure(&table, row) > 0.0, "{row} is zero in\n{table}");
    }
    let rss = table
        .lines()
        .find_map(|line| line.strip_prefix("peak RSS: idguard "))
        .unwrap_or_else(|| panic!("no peak RSS in\n{table}"));
    let figures: Vec<f64> = rss
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect();
    let servers = if export == Export::Kept { 2 } else { 1 };
    assert!(
        figures.len() == servers && figures.iter().all(|&mb| mb > 0.0),
        "{rss}"
    );
}
