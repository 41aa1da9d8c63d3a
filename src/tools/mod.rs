//! Tools for measuring and testing the service, not part of serving it: a synthetic registry
//! ([`synthetic`], behind `idguard gen`) and the load harness ([`loadgen`], behind `idguard load`).

pub mod loadgen;
pub mod synthetic;
