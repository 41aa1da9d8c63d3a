//! idguard: the national registry of invalid resident identity cards, answering "may this card be
//! accepted?" over gRPC.
//!
//! The flow reads top to bottom: [`card`] and [`event`] validate what arrives; [`registry`] folds
//! events into per-number state and judges cards, with no I/O; [`store`] persists that state in
//! RocksDB; [`index`] caches which numbers have any; [`check`] answers checks from both and [`feed`] streams changes;
//! [`ledger`] records accepted events, on this node or, through [`cluster`], in a NATS JetStream
//! stream that every node applies; [`access`] decides who may call what, and [`signing`] signs
//! verdicts; [`service`] translates gRPC; [`server`] wires it together and [`cli`] is the command
//! line.

pub mod access;
pub mod card;
pub mod check;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod connection;
pub mod event;
pub mod export;
pub mod extsort;
pub mod feed;
pub mod import;
pub mod index;
pub mod ledger;
pub mod loadgen;
pub mod proto;
pub mod registry;
pub mod server;
pub mod service;
pub mod signing;
pub mod store;
pub mod synthetic;
pub mod telemetry;
pub mod verdict_file;
