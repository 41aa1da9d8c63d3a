//! The registry's meaning, with no I/O: the state of a citizen number is a fold of the events that
//! touched it ([`state`]), folded again into what a check needs ([`summary`]), and a card's
//! verdict is a pure function of that ([`verdict`]). What the index remembers of a number
//! ([`memo`]) settles the check of its current card without the summary. What one division may
//! record on a number in a day is bounded ([`tally`]). The rules that span events (retries,
//! conflicts, withdrawals and their targets) are functions over a lookup of what is registered
//! ([`rules`]), the same for the writer, the bulk import and the cluster.
//! The store persists the state, the index caches which numbers have any and their memos, and the
//! gRPC layer only translates.

pub mod grant;
pub mod memo;
pub mod rules;
pub mod state;
pub mod summary;
pub mod tally;
pub mod verdict;

pub use grant::{Denial, Grant, Permission, Recorder, Scopes};
pub use memo::Memo;
pub use rules::{
    Content, Contents, FirstUse, IdUse, ReportIds, Target, Touches, WithdrawsWithdrawal,
    awaited_withdrawal, judge_report_id, what_it_touches, withdrawal_target,
};
pub use state::{CardFact, CitizenState, Entry, Fact};
pub use summary::Summary;
pub use tally::{DailyTally, TallyFull};
pub use verdict::{Reason, Verdict, verdict, verdict_from_memo};
