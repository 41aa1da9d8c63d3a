//! The use cases, free of tonic: answering checks ([`check`]), the feeds that replay and follow
//! the registry's logs ([`feed`]), and the offline bulk load ([`import`]).

pub mod check;
pub mod feed;
pub mod import;
pub mod verdicts;
