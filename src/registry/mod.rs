//! The registry's meaning, with no I/O: the state of a citizen number is a fold of the events that
//! touched it ([`state`]), and a card's verdict is a pure function of that state ([`verdict`]).
//! The store persists the state, the index caches which numbers have any, and the gRPC layer only
//! translates.

pub mod grant;
pub mod state;
pub mod verdict;

pub use grant::{Denial, Grant, Permission, Recorder, Scopes};
pub use state::{CardFact, CitizenState, Entry, Fact};
pub use verdict::{Reason, Verdict, verdict};
