//! I4: everything the activity side was told is issued is credited, exactly as
//! told, and nothing is credited that was never issued. Sync answers (first
//! ones and duplicates) name their ledger entry; accepted tokens must be
//! credited (same child, user, order and amount) once the worker has drained,
//! and the token backlog must be 0 then: issued = credited + pending, with pending = 0 once quiet. Coupon-pipeline
//! orders answered `queued` must end issued (credited once, to their user, with
//! their award) or failed (nothing credited), never in a middle state.
//! Mid-run ([`FinalState::quiet`] false) the same holds except that tokens may
//! still be pending and orders in a middle state: nothing may be credited that
//! was not issued, and nothing issued may be credited wrongly.

use std::collections::{BTreeMap, BTreeSet};

use reference::ledger::{Award, Entry, EntryKind};
use reference::order_no::OrderNo;
use reference::pipeline::{OrderState, QueuedOrder};
use reference::wallet::{IssueOutcome, WithdrawOutcome};
use reference::{ActivityTree, ChildId};

use super::{Invariant, Violation, coupon_award, violation};
use crate::history::{Event, FinalState, History};

pub(super) fn check(tree: &ActivityTree, history: &History, state: &FinalState) -> Vec<Violation> {
    let mut found = Vec::new();
    let by_pipeline = check_orders(tree, history, state, &mut found);
    // What the callers were told was posted: first answers, and duplicates,
    // which name the first posting (the only answer a client gets when the
    // first was lost). Kept as a list, not by seq: a ledger that drops a
    // posting may hand its seq to the next one, and a map would let the
    // second answer hide the first.
    let mut told: Vec<&Entry> = Vec::new();
    for event in &history.events {
        let entry = match event {
            Event::Issue {
                outcome: IssueOutcome::Issued { entry } | IssueOutcome::Duplicate { entry },
                ..
            } => entry,
            Event::Withdraw {
                outcome:
                    WithdrawOutcome::Withdrawn { entry, .. } | WithdrawOutcome::Duplicate { entry },
                ..
            } => entry,
            _ => continue,
        };
        told.push(entry);
    }
    let told_seqs: BTreeSet<u64> = told.iter().map(|e| e.seq).collect();
    let posted: BTreeMap<u64, &Entry> = state.ledger.entries.iter().map(|e| (e.seq, e)).collect();
    // Accepted tokens, by (child, order number): what the worker must credit.
    // Keyed by the parsed order number, not its text: the same key (the text and
    // the value round-trip) at a fraction of the cost over a million tokens.
    let mut accepted: BTreeMap<(u64, OrderNo), (u64, u64)> = BTreeMap::new();
    for event in &history.events {
        if let Event::Issue {
            outcome: IssueOutcome::Accepted { token },
            ..
        } = event
        {
            accepted.insert(
                (token.child_id, token.order_no.clone()),
                (token.act_id, token.amount_cents),
            );
        }
    }
    let mut credited_tokens: BTreeMap<(u64, OrderNo), (u64, u64)> = BTreeMap::new();
    for entry in &state.ledger.entries {
        if let EntryKind::Credit {
            order_no,
            award: Award::Cash { amount_cents },
        } = &entry.kind
        {
            let key = (entry.account.child_id, order_no.clone());
            if accepted.contains_key(&key) {
                credited_tokens.insert(key, (entry.account.act_id, *amount_cents));
            }
        }
    }
    let backlog: u64 = state.token_backlog.values().sum();
    // Reported in (child, order number text) order, as when the map was keyed by text.
    let mut wrong_tokens: Vec<((u64, String), Violation)> = Vec::new();
    for (key, expected) in &accepted {
        let culprit = || (key.0, key.1.to_string());
        match credited_tokens.get(key) {
            Some(got) if got == expected => {}
            Some(got) => wrong_tokens.push((
                culprit(),
                violation(
                    Invariant::I4Reconciliation,
                    format!("child {} order {}", key.0, key.1),
                    format!(
                        "token for user {} of {} cents credited as user {} of {} cents",
                        expected.0, expected.1, got.0, got.1
                    ),
                ),
            )),
            None if backlog == 0 => wrong_tokens.push((
                culprit(),
                violation(
                    Invariant::I4Reconciliation,
                    format!("child {} order {}", key.0, key.1),
                    "token accepted but never credited, and nothing is pending".to_owned(),
                ),
            )),
            None => {}
        }
    }
    wrong_tokens.sort_by(|a, b| a.0.cmp(&b.0));
    found.extend(wrong_tokens.into_iter().map(|(_, v)| v));
    if backlog > 0 && state.quiet {
        found.push(violation(
            Invariant::I4Reconciliation,
            "token backlog",
            format!(
                "{backlog} token(s) still pending or inflight at the end: the worker did not drain"
            ),
        ));
    }
    for entry in &told {
        let seq = &entry.seq;
        match posted.get(seq) {
            None => found.push(violation(
                Invariant::I4Reconciliation,
                describe(entry),
                format!("answered as posted (entry {seq}) but the ledger has no such entry"),
            )),
            Some(in_ledger) if in_ledger != entry => found.push(violation(
                Invariant::I4Reconciliation,
                describe(entry),
                format!("answered {entry:?} but the ledger holds {in_ledger:?}"),
            )),
            Some(_) => {}
        }
    }
    for (seq, entry) in &posted {
        let token_credit = match &entry.kind {
            EntryKind::Credit { order_no, .. } => {
                credited_tokens.contains_key(&(entry.account.child_id, order_no.clone()))
            }
            EntryKind::Withdrawal { .. } => false,
        };
        if !told_seqs.contains(seq) && !token_credit && !by_pipeline.contains(seq) {
            found.push(violation(
                Invariant::I4Reconciliation,
                describe(entry),
                format!("entry {seq} is in the ledger but no request was answered with it"),
            ));
        }
    }
    found
}

/// Orders left pending that are named one by one; past it, one summary (a
/// pipeline that did not drain would otherwise bury the report).
const PENDING_ORDERS_NAMED_MAX: u64 = 20;

/// Coupon-pipeline orders: every order answered `queued` ends issued (credited,
/// to its user, with its award) or failed with nothing credited; one left in a
/// middle state once quiet is pending ≠ 0. Returns the seqs of the ledger entries
/// the queued orders account for (reported here when wrong, so not again as
/// unanswered).
fn check_orders(
    tree: &ActivityTree,
    history: &History,
    state: &FinalState,
    found: &mut Vec<Violation>,
) -> BTreeSet<u64> {
    let mut accounted = BTreeSet::new();
    // Orders left in a middle state, by state.
    let mut pending: BTreeMap<&str, u64> = BTreeMap::new();
    // By child, then order number (nested, so a ledger entry's number can be
    // looked up as a `str`).
    let mut queued: BTreeMap<ChildId, BTreeMap<&str, &QueuedOrder>> = BTreeMap::new();
    for event in &history.events {
        if let Event::Issue {
            outcome: IssueOutcome::Queued { order },
            ..
        } = event
        {
            // A second `queued` is I1's to report; the first one stands.
            queued
                .entry(order.child_id)
                .or_default()
                .entry(order.order_no.as_str())
                .or_insert(order);
        }
    }
    if queued.is_empty() {
        return accounted;
    }
    let mut credits: BTreeMap<(ChildId, &str), Vec<&Entry>> = BTreeMap::new();
    for entry in &state.ledger.entries {
        let EntryKind::Credit { order_no, .. } = &entry.kind else {
            continue;
        };
        let child_id = entry.account.child_id;
        let Some(orders) = queued.get(&child_id) else {
            continue;
        };
        if let Some((&order_no, _)) = orders.get_key_value(order_no.to_string().as_str()) {
            credits.entry((child_id, order_no)).or_default().push(entry);
        }
    }
    let queued = queued
        .iter()
        .flat_map(|(&child_id, orders)| orders.iter().map(move |(&n, &o)| ((child_id, n), o)));
    for ((child_id, order_no), order) in queued {
        let culprit = || format!("child {child_id} order {order_no}");
        let expected = coupon_award(tree, child_id, order.award_id);
        let as_queued = |entry: &Entry| {
            entry.account.act_id == order.act_id
                && matches!(&entry.kind, EntryKind::Credit { award, .. } if Some(award) == expected.as_ref())
        };
        let got = credits
            .get(&(child_id, order_no))
            .map_or(&[][..], Vec::as_slice);
        let Some(record) = state.order(child_id, order_no) else {
            found.push(violation(
                Invariant::I4Reconciliation,
                culprit(),
                "answered queued, but the KV holds no record of the order".to_owned(),
            ));
            continue;
        };
        match &record.state {
            OrderState::Issued { .. } => {
                if got.is_empty() {
                    found.push(violation(
                        Invariant::I4Reconciliation,
                        culprit(),
                        "the order record says issued, but the ledger holds no credit of it"
                            .to_owned(),
                    ));
                }
                for entry in got {
                    accounted.insert(entry.seq);
                    if !as_queued(entry) {
                        found.push(violation(
                            Invariant::I4Reconciliation,
                            culprit(),
                            format!(
                                "queued for user {} with award {} ({expected:?}), but entry {} \
                                 credits user {} with {:?}",
                                order.act_id,
                                order.award_id,
                                entry.seq,
                                entry.account.act_id,
                                entry.kind
                            ),
                        ));
                    }
                }
            }
            OrderState::Failed { code, .. } => {
                // A credit with another payload belongs to another answer (the
                // order failed on it as a conflict); one with this payload is wrong.
                for entry in got.iter().filter(|e| as_queued(e)) {
                    accounted.insert(entry.seq);
                    found.push(violation(
                        Invariant::I4Reconciliation,
                        culprit(),
                        format!(
                            "the order failed ({code}), yet entry {} credits it",
                            entry.seq
                        ),
                    ));
                }
            }
            middle => {
                // A credit it already made is explained by this violation, or
                // (mid-run) by the order being on its way.
                accounted.extend(got.iter().filter(|e| as_queued(e)).map(|e| e.seq));
                if !state.quiet {
                    continue;
                }
                *pending.entry(middle.label()).or_default() += 1;
                if pending.values().sum::<u64>() > PENDING_ORDERS_NAMED_MAX {
                    continue;
                }
                found.push(violation(
                    Invariant::I4Reconciliation,
                    culprit(),
                    format!(
                        "order still {} once quiet (accepted at {} ms, {} credit(s) in the \
                         ledger): pending ≠ 0",
                        middle.label(),
                        record.accepted_at_ms,
                        got.len()
                    ),
                ));
            }
        }
    }
    let left: u64 = pending.values().sum();
    if left > PENDING_ORDERS_NAMED_MAX {
        found.push(violation(
            Invariant::I4Reconciliation,
            "pipeline orders",
            format!(
                "{left} queued order(s) still pending once quiet ({pending:?}); the first \
                 {PENDING_ORDERS_NAMED_MAX} are named: the pipeline did not drain"
            ),
        ));
    }
    accounted
}

fn describe(entry: &Entry) -> String {
    match &entry.kind {
        reference::ledger::EntryKind::Credit { order_no, .. } => {
            format!("child {} order {order_no}", entry.account.child_id)
        }
        reference::ledger::EntryKind::Withdrawal { withdraw_no, .. } => {
            format!("child {} withdraw {withdraw_no}", entry.account.child_id)
        }
    }
}
