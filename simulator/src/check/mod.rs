//! Invariant checkers: pure functions over a [`History`] and a [`FinalState`],
//! returning every violation with enough detail to find the culprit. They never
//! call a store; what they know comes in as arguments.
//!
//! Implemented here: I1 idempotency, I2 no over-issue, I3 conservation, I4
//! reconciliation (sync credits, tokens and coupon-pipeline orders: issued =
//! credited + pending, pending drained to 0), I5 wallet view, I6 child-activity
//! isolation and I7 token integrity, and I8 hot counter.
//!
//! Cost: each checker is a few passes over the history and the final state with
//! map lookups, never a scan per event, so runs of millions of events stay cheap.

use std::fmt;
use std::num::NonZeroUsize;
use std::panic::resume_unwind;
use std::sync::atomic::{AtomicUsize, Ordering};

use reference::config::AwardDef;
use reference::ledger::Award;
use reference::pipeline::{OrderRecord, QueuedOrder};
use reference::{ActivityTree, ChildId};
use serde::Serialize;

use crate::history::{FinalState, History};

mod conservation;
mod counter;
mod idempotency;
mod isolation;
mod over_issue;
mod reconciliation;
mod token_integrity;
mod view;

/// The invariants of SPEC.md.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Invariant {
    /// One order number is credited at most once; a retry returns the first outcome.
    I1Idempotency,
    /// Stock, budget, caps, per-user limits and group exclusion are never exceeded.
    I2NoOverIssue,
    /// Balance = credits − withdrawals ≥ 0 per account; sums match the ledger totals.
    I3Conservation,
    /// Issued = credited + pending, and pending is 0 once quiet.
    I4Reconciliation,
    /// The wallet view never shows less than awarded; a withdraw sees the full amount owed.
    I5View,
    /// Child activities never see each other's awards.
    I6Isolation,
    /// Forged, tampered or foreign tokens are rejected and never credited.
    I7TokenIntegrity,
    /// The shown hot counter never goes down for a reader and stays within 1% of the truth.
    I8Counter,
}

impl Invariant {
    /// The invariants this build checks, in order.
    pub const CHECKED: [Invariant; 8] = [
        Invariant::I1Idempotency,
        Invariant::I2NoOverIssue,
        Invariant::I3Conservation,
        Invariant::I4Reconciliation,
        Invariant::I5View,
        Invariant::I6Isolation,
        Invariant::I7TokenIntegrity,
        Invariant::I8Counter,
    ];

    /// `I1` … `I8`.
    pub fn id(self) -> &'static str {
        match self {
            Invariant::I1Idempotency => "I1",
            Invariant::I2NoOverIssue => "I2",
            Invariant::I3Conservation => "I3",
            Invariant::I4Reconciliation => "I4",
            Invariant::I5View => "I5",
            Invariant::I6Isolation => "I6",
            Invariant::I7TokenIntegrity => "I7",
            Invariant::I8Counter => "I8",
        }
    }

    /// The invariant's short name.
    pub fn name(self) -> &'static str {
        match self {
            Invariant::I1Idempotency => "idempotency",
            Invariant::I2NoOverIssue => "no over-issue",
            Invariant::I3Conservation => "conservation",
            Invariant::I4Reconciliation => "reconciliation",
            Invariant::I5View => "wallet view",
            Invariant::I6Isolation => "isolation",
            Invariant::I7TokenIntegrity => "token integrity",
            Invariant::I8Counter => "hot counter",
        }
    }
}

/// One broken invariant, located.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// Which invariant.
    pub invariant: Invariant,
    /// What to look at: an order number, account, template or entry.
    pub culprit: String,
    /// What is wrong, with the numbers.
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}: {}: {}",
            self.invariant.id(),
            self.invariant.name(),
            self.culprit,
            self.detail
        )
    }
}

fn violation(
    invariant: Invariant,
    culprit: impl fmt::Display,
    detail: impl Into<String>,
) -> Violation {
    Violation {
        invariant,
        culprit: culprit.to_string(),
        detail: detail.into(),
    }
}

/// What crediting a coupon award id of a child gives, if it is a configured coupon.
fn coupon_award(tree: &ActivityTree, child_id: ChildId, award_id: u64) -> Option<Award> {
    let (activity, _) = tree.child(child_id)?;
    match activity.awards.get(&award_id)? {
        AwardDef::Coupon(coupon) => Some(Award::Coupon {
            template_id: coupon.template_id,
            batch: coupon.batch.clone(),
        }),
        _ => None,
    }
}

/// Whether two pipeline answers name the same order: everything but the state,
/// which a replay reports as it stands.
fn same_order(a: &QueuedOrder, b: &QueuedOrder) -> bool {
    (
        a.child_id,
        a.act_id,
        &a.order_no,
        a.award_id,
        a.accepted_at_ms,
    ) == (
        b.child_id,
        b.act_id,
        &b.order_no,
        b.award_id,
        b.accepted_at_ms,
    )
}

/// Whether a pipeline answer names the order `record` holds.
fn names_record(order: &QueuedOrder, record: &OrderRecord) -> bool {
    (
        order.child_id,
        order.act_id,
        &order.order_no,
        order.award_id,
        order.accepted_at_ms,
    ) == (
        record.child_id,
        record.act_id(),
        &record.request.order_no,
        record.request.award_id,
        record.accepted_at_ms,
    )
}

/// Run one checker.
pub fn check(
    invariant: Invariant,
    tree: &ActivityTree,
    history: &History,
    state: &FinalState,
) -> Vec<Violation> {
    match invariant {
        Invariant::I1Idempotency => idempotency::check(tree, history, state),
        Invariant::I2NoOverIssue => over_issue::check(tree, history, state),
        Invariant::I3Conservation => conservation::check(state),
        Invariant::I4Reconciliation => reconciliation::check(tree, history, state),
        Invariant::I5View => view::check(history),
        Invariant::I6Isolation => isolation::check(tree, history, state),
        Invariant::I7TokenIntegrity => token_integrity::check(history, state),
        Invariant::I8Counter => counter::check(history),
    }
}

/// Most threads [`check_all`] runs checkers on.
pub const CHECK_THREADS_MAX: usize = Invariant::CHECKED.len();

/// The checkers, costliest first (measured on red-packet-rain), so the threads
/// of [`check_all`] pick up the long ones before the short ones. Only the
/// schedule depends on this order, never the result.
const BY_COST: [Invariant; 8] = [
    Invariant::I4Reconciliation,
    Invariant::I1Idempotency,
    Invariant::I7TokenIntegrity,
    Invariant::I6Isolation,
    Invariant::I2NoOverIssue,
    Invariant::I8Counter,
    Invariant::I5View,
    Invariant::I3Conservation,
];

/// Run every checker; violations in invariant order.
///
/// The checkers are pure functions of shared references, so they run side by
/// side on up to [`CHECK_THREADS_MAX`] threads (as many as the machine has
/// cores); each one's violations are put back in invariant order, so the result
/// is the same as running them one after another, on any number of threads.
pub fn check_all(tree: &ActivityTree, history: &History, state: &FinalState) -> Vec<Violation> {
    let threads = std::thread::available_parallelism()
        .map_or(1, NonZeroUsize::get)
        .clamp(1, CHECK_THREADS_MAX);
    check_all_on(threads, tree, history, state)
}

/// [`check_all`] on exactly `threads` threads (1 = on the caller's thread).
pub fn check_all_on(
    threads: usize,
    tree: &ActivityTree,
    history: &History,
    state: &FinalState,
) -> Vec<Violation> {
    assert!(threads >= 1, "at least one thread");
    assert!(threads <= CHECK_THREADS_MAX, "{threads} threads");
    assert!(
        Invariant::CHECKED.iter().all(|i| BY_COST.contains(i)),
        "every checked invariant has a place in BY_COST"
    );
    let next = AtomicUsize::new(0);
    let run = || {
        let mut done = Vec::new();
        loop {
            let Some(&invariant) = BY_COST.get(next.fetch_add(1, Ordering::Relaxed)) else {
                return done;
            };
            done.push((invariant, check(invariant, tree, history, state)));
        }
    };
    let mut done: Vec<(Invariant, Vec<Violation>)> = if threads == 1 {
        run()
    } else {
        std::thread::scope(|scope| {
            let helpers: Vec<_> = (1..threads).map(|_| scope.spawn(run)).collect();
            let mut done = run();
            for helper in helpers {
                // A checker that panicked is a bug: pass its panic on unchanged.
                done.extend(helper.join().unwrap_or_else(|panic| resume_unwind(panic)));
            }
            done
        })
    };
    // Invariant order, whichever thread ran what.
    done.sort_by_key(|(invariant, _)| *invariant);
    done.into_iter().flat_map(|(_, found)| found).collect()
}
