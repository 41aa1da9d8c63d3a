//! Registry state is a pure function of the *set* of accepted events: arrival order and
//! duplicates never change any verdict. Checked against the real store (RocksDB in a temp dir)
//! over random event sets, permutations and duplications.

use crate::common;

use std::sync::Arc;

use common::*;
use idguard::app::check::check_cards;
use idguard::card::{CardText, PresentedCard, parse_presented_card};
use idguard::event::validate_event;
use idguard::ledger::Ledger;
use idguard::proto::v1 as pb;
use idguard::registry::Verdict;
use idguard::store::Store;
use proptest::prelude::*;
use time::macros::{date, datetime};
use time::{Date, Duration, OffsetDateTime};

const TODAY: Date = date!(2026 - 11 - 22);
const NUMBERS: [&str; 3] = [
    "11010519491231002",
    "44030519800101123",
    "65010219991231456",
];
const ISSUE_DATES: [&str; 3] = ["20100101", "20150601", "20200101"];
const EXPIRIES: [&str; 3] = ["", "LONG", "20250101"];

/// One generated event, by index into the small universes above so that events collide often.
#[derive(Debug, Clone)]
enum Spec {
    Reported {
        number: usize,
        issued: usize,
        expiry: usize,
        stolen: bool,
    },
    Issued {
        number: usize,
        issued: usize,
        expiry: usize,
    },
    Revoked {
        number: usize,
        issued: usize,
    },
    Cancelled {
        number: usize,
    },
    /// Withdraws the event with this index; an index past the set names an event never sent.
    Withdrawn {
        target: usize,
    },
}

fn spec() -> impl Strategy<Value = Spec> {
    prop_oneof![
        4 => (0..3usize, 0..3usize, 0..3usize, any::<bool>())
            .prop_map(|(number, issued, expiry, stolen)| Spec::Reported { number, issued, expiry, stolen }),
        3 => (0..3usize, 0..3usize, 0..3usize)
            .prop_map(|(number, issued, expiry)| Spec::Issued { number, issued, expiry }),
        1 => (0..3usize, 0..3usize).prop_map(|(number, issued)| Spec::Revoked { number, issued }),
        1 => (0..3usize).prop_map(|number| Spec::Cancelled { number }),
        3 => (0..16usize).prop_map(|target| Spec::Withdrawn { target }),
    ]
}

fn wire(index: usize, spec: &Spec) -> pb::RegistryEvent {
    let id = |n: usize| number(NUMBERS[n]);
    let occurred = datetime!(2025-01-01 00:00 UTC) + Duration::hours(index as i64 * 7 % 11);
    let kind = match *spec {
        Spec::Reported {
            number,
            issued,
            expiry,
            stolen,
        } => reported(
            card(&id(number), ISSUE_DATES[issued], EXPIRIES[expiry]),
            if stolen {
                pb::LossKind::Stolen
            } else {
                pb::LossKind::Lost
            },
        ),
        Spec::Issued {
            number,
            issued,
            expiry,
        } => common::issued(card(&id(number), ISSUE_DATES[issued], EXPIRIES[expiry])),
        Spec::Revoked { number, issued } => revoked(card(&id(number), ISSUE_DATES[issued], "")),
        Spec::Cancelled { number } => cancelled(&id(number)),
        // An event cannot withdraw itself: aim that one at an event never sent.
        Spec::Withdrawn { target } if target == index => withdrawn("never-sent"),
        Spec::Withdrawn { target } => withdrawn(&format!("e{target}")),
    };
    event(&format!("e{index}"), occurred, kind)
}

/// Every probe card: each number with each known issue date, one unknown, and each expiry.
fn probes() -> Vec<PresentedCard> {
    let mut probes = Vec::new();
    for n in NUMBERS {
        let id = number(n);
        for issued in ISSUE_DATES.iter().chain(&["20120303"]) {
            for expiry in EXPIRIES {
                let text = CardText {
                    id_number: &id,
                    issue_date: issued,
                    expiry_date: expiry,
                };
                probes.push(parse_presented_card(text, TODAY).expect("probe is well formed"));
            }
        }
    }
    probes
}

/// Applies events in the given order to a fresh store and returns the verdict on every probe.
fn verdicts_after(order: &[pb::RegistryEvent]) -> Vec<Verdict> {
    let dir = tempfile::tempdir().expect("temp dir");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let store = Arc::new(Store::open(dir.path()).expect("store opens"));
        let now = OffsetDateTime::now_utc();
        for wire in order {
            let valid = validate_event(wire.clone(), now).expect("generated events are valid");
            // A withdrawal of a withdrawal may be refused in one order and accepted without
            // effect in another; either way the verdicts must agree.
            let _ = Ledger::Local(Arc::clone(&store))
                .apply(valid, &idguard::registry::Recorder::trusted("test"))
                .await;
        }
        let (verdicts, _) = check_cards(&store, &probes(), TODAY).await.expect("checks");
        verdicts
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn verdicts_depend_only_on_the_set_of_events(
        (specs, shuffled, repeats) in prop::collection::vec(spec(), 1..14).prop_flat_map(|specs| {
            let indices: Vec<usize> = (0..specs.len()).collect();
            let count = specs.len();
            (
                Just(specs),
                Just(indices).prop_shuffle(),
                prop::collection::vec((0..count, 0..=count), 0..6),
            )
        })
    ) {
        let events: Vec<_> = specs.iter().enumerate().map(|(i, spec)| wire(i, spec)).collect();
        let mut permuted: Vec<_> = shuffled.iter().map(|&i| events[i].clone()).collect();
        for (which, position) in repeats {
            let position = position.min(permuted.len());
            permuted.insert(position, events[which].clone());
        }
        prop_assert_eq!(verdicts_after(&events), verdicts_after(&permuted));
    }
}

/// The property above would pass for a registry that ignored every event; this one shows that
/// the generated events do change verdicts.
#[test]
fn generated_events_do_change_verdicts() {
    let events = vec![
        wire(
            0,
            &Spec::Reported {
                number: 0,
                issued: 0,
                expiry: 0,
                stolen: true,
            },
        ),
        wire(
            1,
            &Spec::Issued {
                number: 1,
                issued: 2,
                expiry: 1,
            },
        ),
    ];
    assert_ne!(verdicts_after(&events), verdicts_after(&[]));
}
