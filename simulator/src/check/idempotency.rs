//! I1: one order number is credited at most once per child activity, whatever the
//! retries and duplicates; every replay returns the first outcome (the same entry,
//! the same token, the same pipeline order), and a conflicting replay is never
//! what gets credited. A replay is judged by its payload as well: one with the
//! first payload must be answered as a duplicate, one with another payload
//! (amount, award, account) as a conflict, on every path — sync credits,
//! tokens, pipeline orders and withdrawals.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use reference::config::AwardDef;
use reference::ledger::Award;
use reference::order_no::OrderNo;
use reference::pipeline::QueuedOrder;
use reference::wallet::{IssueOutcome, IssueRequest, WithdrawOutcome};
use reference::{ActivityTree, ChildId, ledger::EntryKind};

use super::{Invariant, Violation, coupon_award, names_record, same_order, violation};
use crate::history::{Event, FinalState, History};

/// What a ledger entry is posted for. Order numbers are keyed by value, not
/// text (the two round-trip, and a million entries compare far faster so).
#[derive(PartialEq, Eq, PartialOrd, Ord)]
enum Posting<'s> {
    Order(&'s OrderNo),
    Withdraw(&'s str),
}

impl fmt::Display for Posting<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Posting::Order(order_no) => write!(f, "order {order_no}"),
            Posting::Withdraw(withdraw_no) => write!(f, "withdraw {withdraw_no}"),
        }
    }
}

pub(super) fn check(tree: &ActivityTree, history: &History, state: &FinalState) -> Vec<Violation> {
    let mut found = Vec::new();
    let mut postings: BTreeMap<(u64, Posting<'_>), Vec<u64>> = BTreeMap::new();
    for entry in &state.ledger.entries {
        let key = match &entry.kind {
            EntryKind::Credit { order_no, .. } => Posting::Order(order_no),
            EntryKind::Withdrawal { withdraw_no, .. } => Posting::Withdraw(withdraw_no),
        };
        postings
            .entry((entry.account.child_id, key))
            .or_default()
            .push(entry.seq);
    }
    // Reported in (child, "order …" / "withdraw …" text) order, as when the map
    // was keyed by that text.
    let mut posted_twice: Vec<((u64, String), Violation)> = postings
        .iter()
        .filter(|(_, seqs)| seqs.len() > 1)
        .map(|((child_id, key), seqs)| {
            let key = key.to_string();
            let found = violation(
                Invariant::I1Idempotency,
                format!("child {child_id} {key}"),
                format!("posted {} times (entries {seqs:?})", seqs.len()),
            );
            ((*child_id, key), found)
        })
        .collect();
    posted_twice.sort_by(|a, b| a.0.cmp(&b.0));
    found.extend(posted_twice.into_iter().map(|(_, v)| v));
    // Every answer for one order number must name the same first entry.
    let mut answers: BTreeMap<(u64, String), (u64, usize)> = BTreeMap::new();
    for event in &history.events {
        let (entry, first_time, key) = match event {
            Event::Issue {
                outcome: IssueOutcome::Issued { entry },
                request,
                ..
            } => (entry, true, format!("order {}", request.order_no)),
            Event::Issue {
                outcome: IssueOutcome::Duplicate { entry },
                request,
                ..
            } => (entry, false, format!("order {}", request.order_no)),
            Event::Withdraw {
                outcome: WithdrawOutcome::Withdrawn { entry, .. },
                request,
                ..
            } => (entry, true, format!("withdraw {}", request.withdraw_no)),
            Event::Withdraw {
                outcome: WithdrawOutcome::Duplicate { entry },
                request,
                ..
            } => (entry, false, format!("withdraw {}", request.withdraw_no)),
            _ => continue,
        };
        let slot = answers
            .entry((entry.account.child_id, key.clone()))
            .or_insert((entry.seq, 0));
        if slot.0 != entry.seq {
            found.push(violation(
                Invariant::I1Idempotency,
                format!("child {} {key}", entry.account.child_id),
                format!(
                    "answered with entry {} after entry {}: a replay must return the first outcome",
                    entry.seq, slot.0
                ),
            ));
        }
        if first_time {
            slot.1 += 1;
            if slot.1 == 2 {
                found.push(violation(
                    Invariant::I1Idempotency,
                    format!("child {} {key}", entry.account.child_id),
                    "answered as newly credited more than once".to_owned(),
                ));
            }
        }
    }
    check_tokens(history, &mut found);
    check_orders(tree, history, state, &mut found);
    check_payloads(tree, history, &mut found);
    found
}

/// What an issue request asks for, as the ledger would post it (None when the
/// request names no award of the child's tree).
fn requested_award(
    tree: &ActivityTree,
    child_id: ChildId,
    request: &IssueRequest,
) -> Option<Award> {
    let (activity, _) = tree.child(child_id)?;
    match activity.awards.get(&request.award_id)? {
        AwardDef::Cash { .. } => Some(Award::Cash {
            amount_cents: u64::try_from(request.amount_cents).ok()?,
        }),
        AwardDef::Pendant { pendant_id } => Some(Award::Pendant {
            pendant_id: *pendant_id,
        }),
        AwardDef::Coupon(_) => coupon_award(tree, child_id, request.award_id),
    }
}

/// Every replay answer agrees with its payload: `duplicate` only for the first
/// payload, `conflict` only for another one (I1: "a retry returns the first
/// outcome"; a changed replay is not a retry and must not be told it landed).
fn check_payloads(tree: &ActivityTree, history: &History, found: &mut Vec<Violation>) {
    for event in &history.events {
        // (culprit, answered as a duplicate, the payloads match, what differs)
        let (culprit, duplicate, same, first) = match event {
            Event::Issue {
                request, outcome, ..
            } => {
                let (duplicate, same, first) = match outcome {
                    IssueOutcome::Duplicate { entry: first } | IssueOutcome::Conflict { first } => {
                        let EntryKind::Credit { award, .. } = &first.kind else {
                            continue;
                        };
                        let asked = requested_award(tree, first.account.child_id, request);
                        let Some(asked) = asked else { continue };
                        (
                            matches!(outcome, IssueOutcome::Duplicate { .. }),
                            asked == *award,
                            format!("entry {} posted {award:?}", first.seq),
                        )
                    }
                    IssueOutcome::DuplicateToken { token: first }
                    | IssueOutcome::TokenConflict { first } => (
                        matches!(outcome, IssueOutcome::DuplicateToken { .. }),
                        first.award_id == request.award_id
                            && i64::try_from(first.amount_cents) == Ok(request.amount_cents),
                        format!(
                            "the first token is award {} of {} cents",
                            first.award_id, first.amount_cents
                        ),
                    ),
                    IssueOutcome::DuplicateQueued { order: first }
                    | IssueOutcome::OrderConflict { first } => (
                        matches!(outcome, IssueOutcome::DuplicateQueued { .. }),
                        first.award_id == request.award_id,
                        format!("the first order is award {}", first.award_id),
                    ),
                    _ => continue,
                };
                (
                    format!(
                        "order {} (award {}, {} cents)",
                        request.order_no, request.award_id, request.amount_cents
                    ),
                    duplicate,
                    same,
                    first,
                )
            }
            Event::Withdraw {
                request, outcome, ..
            } => {
                let (WithdrawOutcome::Duplicate { entry: first }
                | WithdrawOutcome::Conflict { first }) = outcome
                else {
                    continue;
                };
                let EntryKind::Withdrawal { amount_cents, .. } = &first.kind else {
                    continue;
                };
                (
                    format!(
                        "withdraw {} of user {} ({} cents)",
                        request.withdraw_no, request.act_id, request.amount_cents
                    ),
                    matches!(outcome, WithdrawOutcome::Duplicate { .. }),
                    first.account.act_id == request.act_id
                        && i64::try_from(*amount_cents) == Ok(request.amount_cents),
                    format!(
                        "entry {} withdrew {amount_cents} cents of user {}",
                        first.seq, first.account.act_id
                    ),
                )
            }
            _ => continue,
        };
        if duplicate && !same {
            found.push(violation(
                Invariant::I1Idempotency,
                culprit,
                format!(
                    "a replay with another payload was answered `duplicate` ({first}): it must be \
                     `conflict`, or the client believes its changed request landed"
                ),
            ));
        } else if !duplicate && same {
            found.push(violation(
                Invariant::I1Idempotency,
                culprit,
                format!(
                    "a replay with the first payload was answered `conflict` ({first}): a retry \
                     must return the first outcome"
                ),
            ));
        }
    }
}

/// The pipeline answers given for one (child, order number).
struct Answers<'h> {
    /// The order the first answer named.
    first: &'h QueuedOrder,
    /// How many answers said `queued` (a first acceptance).
    queued: u32,
    /// Award ids of replays answered `order_conflict`.
    conflicting: BTreeSet<u64>,
}

/// Every pipeline answer for one (child, order number) names the same order as
/// the first answer and as the KV's record, at most one is a first `queued`, and
/// the ledger never credits a conflicting replay's award.
fn check_orders(
    tree: &ActivityTree,
    history: &History,
    state: &FinalState,
    found: &mut Vec<Violation>,
) {
    let mut answers: BTreeMap<(ChildId, &str), Answers<'_>> = BTreeMap::new();
    for event in &history.events {
        let Event::Issue {
            request, outcome, ..
        } = event
        else {
            continue;
        };
        let (order, fresh) = match outcome {
            IssueOutcome::Queued { order } => (order, true),
            IssueOutcome::DuplicateQueued { order }
            | IssueOutcome::OrderConflict { first: order } => (order, false),
            _ => continue,
        };
        let key = (order.child_id, order.order_no.as_str());
        let slot = answers.entry(key).or_insert(Answers {
            first: order,
            queued: 0,
            conflicting: BTreeSet::new(),
        });
        if !same_order(slot.first, order) {
            found.push(violation(
                Invariant::I1Idempotency,
                format!("child {} order {}", key.0, key.1),
                format!(
                    "answered with order {order:?} after {:?}: a replay must return the first order",
                    slot.first
                ),
            ));
        }
        if fresh {
            slot.queued += 1;
            if slot.queued == 2 {
                found.push(violation(
                    Invariant::I1Idempotency,
                    format!("child {} order {}", key.0, key.1),
                    "queued as a new order more than once".to_owned(),
                ));
            }
        }
        if matches!(outcome, IssueOutcome::OrderConflict { .. })
            && request.award_id != order.award_id
        {
            slot.conflicting.insert(request.award_id);
        }
    }
    if answers.is_empty() {
        return;
    }
    for (&(child_id, order_no), slot) in &answers {
        match state.order(child_id, order_no) {
            Some(record) if !names_record(slot.first, record) => found.push(violation(
                Invariant::I1Idempotency,
                format!("child {child_id} order {order_no}"),
                format!(
                    "answered with order {:?}, but the order record holds {:?} accepted at {} ms",
                    slot.first, record.request, record.accepted_at_ms
                ),
            )),
            // A queued order without a record is I4's (never issued).
            None if slot.queued == 0 => found.push(violation(
                Invariant::I1Idempotency,
                format!("child {child_id} order {order_no}"),
                "answered as a replay of an order the KV holds no record of".to_owned(),
            )),
            _ => {}
        }
    }
    for entry in &state.ledger.entries {
        let EntryKind::Credit { order_no, award } = &entry.kind else {
            continue;
        };
        let child_id = entry.account.child_id;
        let order_no = order_no.to_string();
        let Some(slot) = answers.get(&(child_id, order_no.as_str())) else {
            continue;
        };
        let first = coupon_award(tree, child_id, slot.first.award_id);
        for &award_id in &slot.conflicting {
            let theirs = coupon_award(tree, child_id, award_id);
            if theirs.as_ref() == Some(award) && first.as_ref() != Some(award) {
                found.push(violation(
                    Invariant::I1Idempotency,
                    format!("child {child_id} order {order_no}"),
                    format!(
                        "entry {} credits award {award_id} of a replay answered order_conflict, \
                         not award {} of the first order",
                        entry.seq, slot.first.award_id
                    ),
                ));
            }
        }
    }
}

/// Every token answer for one (child, order number) carries the same token bytes,
/// and at most one of them is a first acceptance.
fn check_tokens(history: &History, found: &mut Vec<Violation>) {
    let mut first: BTreeMap<(u64, &OrderNo), (&[u8], usize)> = BTreeMap::new();
    for event in &history.events {
        let (token, fresh) = match event {
            Event::Issue {
                outcome: IssueOutcome::Accepted { token },
                ..
            } => (token, true),
            Event::Issue {
                outcome: IssueOutcome::DuplicateToken { token },
                ..
            } => (token, false),
            _ => continue,
        };
        let key = (token.child_id, &token.order_no);
        let slot = first.entry(key).or_insert((token.bytes.as_slice(), 0));
        if slot.0 != token.bytes.as_slice() {
            found.push(violation(
                Invariant::I1Idempotency,
                format!("child {} order {}", key.0, key.1),
                "a replay answered with another token than the first".to_owned(),
            ));
        }
        if fresh {
            slot.1 += 1;
            if slot.1 == 2 {
                found.push(violation(
                    Invariant::I1Idempotency,
                    format!("child {} order {}", key.0, key.1),
                    "accepted as a new token more than once".to_owned(),
                ));
            }
        }
    }
}
