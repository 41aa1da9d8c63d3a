//! The integration tests, in one binary so that RocksDB and the server are linked once rather
//! than once per file: each module is one area, talking to the real server over real gRPC (in
//! process, or as the real binary) on an ephemeral port, with a real RocksDB in a temp dir.
//! The OpenTelemetry test is apart (`tests/otel.rs`): it needs the `otel` feature.

#[path = "../common/mod.rs"]
mod common;

mod abuse;
mod api;
mod cli;
mod cluster;
mod compare;
mod crash;
mod feed;
mod import;
mod national;
mod operations;
mod properties;
mod python;
mod tls;
mod trust;
