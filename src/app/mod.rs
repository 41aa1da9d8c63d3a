//! The use cases, free of tonic: answering checks ([`check`]) and delivering the verdicts
//! ([`verdicts`]), a number's record ([`record`]), the feeds that replay and follow the
//! registry's logs ([`feed`]), and the offline bulk load ([`import`]).

pub mod check;
pub mod feed;
pub mod import;
pub mod record;
pub mod verdicts;
