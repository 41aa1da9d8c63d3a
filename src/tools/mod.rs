//! Tools for measuring and testing the service, not part of serving it: a synthetic registry
//! ([`synthetic`], behind `idguard gen`), the registry at national steady state ([`national`],
//! behind `idguard gen --national`) and the load harness ([`loadgen`], behind `idguard load`).

pub mod loadgen;
pub mod national;
pub mod synthetic;
