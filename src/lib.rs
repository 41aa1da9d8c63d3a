//! idguard: the national registry of invalid resident identity cards, answering "may this card be
//! accepted?" over gRPC.
//!
//! The flow reads top to bottom: [`card`] and [`event`] validate what arrives; [`registry`] folds
//! events into per-number state and judges cards, with no I/O; [`store`] persists that state in
//! RocksDB and keeps the in-memory index of which numbers have any; [`app`] holds the use cases
//! (answering checks from index and store, the feeds that replay and follow the logs); [`ledger`]
//! records accepted events, on this node or, through its cluster, in a NATS JetStream stream that
//! every node applies; [`access`] decides who may call what, and [`signing`] signs verdicts; the
//! gRPC services only translate; [`server`] wires it together and [`cli`] is the command line.
//! [`event_file`] is the export format that `idguard gen`, `export` and `import` share, and
//! [`tools`] generates registries and load for measuring the rest.

pub mod access;
pub mod app;
mod call;
pub mod card;
pub mod cli;
pub mod config;
mod connection;
pub mod event;
pub mod event_file;
pub mod ledger;
pub mod proto;
pub mod registry;
pub mod server;
mod service;
pub mod signing;
pub mod store;
pub mod telemetry;
pub mod tools;

#[cfg(test)]
mod layout {
    use std::path::{Path, PathBuf};

    /// Every file below `dir`, as a path relative to `root` with `/` between its parts.
    fn files_below(root: &Path, dir: &str, found: &mut Vec<String>) {
        let mut pending = vec![root.join(dir)];
        while let Some(dir) = pending.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path: PathBuf = entry.unwrap().path();
                if path.is_dir() {
                    pending.push(path);
                } else {
                    let relative = path.strip_prefix(root).unwrap();
                    found.push(relative.to_string_lossy().replace('\\', "/"));
                }
            }
        }
    }

    /// The layout table in `docs/architecture.md` is what a newcomer reads to find the one file
    /// that holds a rule, so it must not drift from the tree: every source file is listed by
    /// name (tests and benches may be listed by folder), and every entry exists.
    #[test]
    fn layout_is_documented() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let doc = std::fs::read_to_string(root.join("docs/architecture.md")).unwrap();
        let table = doc
            .split_once("## Layout")
            .and_then(|(_, rest)| rest.split("```").nth(1))
            .expect("a Layout section with a code block");
        let entries: Vec<&str> = table
            .lines()
            .filter_map(|line| line.split_whitespace().next())
            .collect();
        for entry in &entries {
            assert!(root.join(entry).exists(), "{entry} is listed but not there");
        }
        let mut files = Vec::new();
        for dir in ["src", "tests", "benches"] {
            files_below(root, dir, &mut files);
        }
        let missing: Vec<&String> = files
            .iter()
            .filter(|file| {
                !entries.iter().any(|entry| {
                    *entry == file.as_str()
                        || (entry.ends_with('/')
                            && !file.starts_with("src/")
                            && file.starts_with(entry))
                })
            })
            .collect();
        assert!(missing.is_empty(), "not in the layout: {missing:?}");
    }
}
