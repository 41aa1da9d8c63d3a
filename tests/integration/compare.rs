//! `benches/compare.sh` at a small size, for both workloads in one run: it generates and imports a
//! registry for each, measures the empty handler, idguard in its three modes and Redis, and prints
//! one table with a column per workload; and with the export piped into the import, as for
//! registries whose export does not fit on disk.

use std::process::Command;

/// The build directory this test was built in, so the script's own cargo calls find everything
/// already built.
fn target_dir() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/release/deps/compare-HASH
    exe.ancestors().nth(3).unwrap().to_owned()
}

/// The figures after `row`'s name on its line of the table, one per workload: a rate's figure
/// is followed by its p99, so `stride` is 2 for rates and 1 for ratios.
fn figures(table: &str, row: &str, stride: usize) -> Vec<f64> {
    let line = table
        .lines()
        .find(|line| line.starts_with(row))
        .unwrap_or_else(|| panic!("no row {row:?} in\n{table}"));
    line[row.len()..]
        .split_whitespace()
        .step_by(stride)
        .map(|figure| {
            figure
                .parse()
                .unwrap_or_else(|_| panic!("{figure:?} is no figure in {line:?}"))
        })
        .collect()
}

/// Both workloads side by side, each at a small size: the default one (checks of numbers with no
/// record) and the national steady state (checks of citizens' current cards).
#[test]
fn the_side_by_side_comparison_prints_every_row_and_ratio() {
    compare(&["default", "national"], Export::Kept);
}

/// `PIPE_EVENTS=1`: the export goes through a FIFO into the import and is not kept, so the table
/// has every row but Redis's, whose set is loaded from the export.
#[test]
fn the_comparison_with_the_export_piped_into_the_import_keeps_no_export() {
    compare(&["national"], Export::Piped);
}

#[derive(PartialEq)]
enum Export {
    Kept,
    Piped,
}

fn compare(workloads: &[&str], export: Export) {
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
        .env("WORKLOAD", workloads.join(" "))
        .env("PIPE_EVENTS", piped)
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&output.stdout);
    for workload in workloads {
        let heading = format!("{workload} workload: 20000 ");
        assert!(
            table.lines().any(|line| line.starts_with(&heading)),
            "{table}"
        );
    }
    assert!(
        output.status.success(),
        "{table}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let redis_rows = [
        ("Redis SISMEMBER, unpipelined", 2),
        ("Redis SISMEMBER, pipelined", 2),
        ("idguard batch / Redis pipelined:", 1),
        ("idguard stream / Redis pipelined:", 1),
    ];
    let rows = [
        ("empty handler, unary", 2),
        ("empty handler, unary at half load", 2),
        ("empty handler, batch", 2),
        ("empty handler, stream", 2),
        ("idguard, unary", 2),
        ("idguard, unary at half load", 2),
        ("idguard, batch", 2),
        ("idguard, stream", 2),
        ("idguard / empty handler, unary:", 1),
        ("idguard / empty handler, batch:", 1),
        ("idguard / empty handler, stream:", 1),
    ];
    let measured = match export {
        Export::Kept => [&rows[..], &redis_rows[..]].concat(),
        Export::Piped => {
            for (row, _) in redis_rows {
                assert!(!table.contains(row), "{row} without an export in\n{table}");
            }
            let national = work.path().join("national");
            assert!(!national.join("events.csv").exists());
            assert!(national.join("data/CURRENT").exists());
            rows.to_vec()
        }
    };
    for (row, stride) in measured {
        let figures = figures(&table, row, stride);
        assert!(
            figures.len() == workloads.len() && figures.iter().all(|&figure| figure > 0.0),
            "{row} has not one positive figure per workload in\n{table}"
        );
    }
    let servers = if export == Export::Kept { 2 } else { 1 };
    for workload in workloads {
        let rss = table
            .lines()
            .filter_map(|line| line.strip_prefix("peak RSS: idguard "))
            .find_map(|line| line.strip_suffix(&format!(" ({workload} workload)")))
            .unwrap_or_else(|| panic!("no peak RSS for {workload} in\n{table}"));
        let megabytes: Vec<f64> = rss
            .split(|c: char| !c.is_ascii_digit())
            .filter_map(|n| n.parse().ok())
            .collect();
        assert!(
            megabytes.len() == servers && megabytes.iter().all(|&mb| mb > 0.0),
            "{rss}"
        );
    }
}
