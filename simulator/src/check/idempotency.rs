//! I1: one order number is credited at most once per child activity, whatever the
//! retries and duplicates; every replay returns the first outcome (the same entry).

use std::collections::BTreeMap;

use reference::ledger::EntryKind;
use reference::wallet::{IssueOutcome, WithdrawOutcome};

use super::{Invariant, Violation, violation};
use crate::history::{Event, FinalState, History};

pub(super) fn check(history: &History, state: &FinalState) -> Vec<Violation> {
    let mut found = Vec::new();
    let mut postings: BTreeMap<(u64, String), Vec<u64>> = BTreeMap::new();
    for entry in &state.ledger.entries {
        let key = match &entry.kind {
            EntryKind::Credit { order_no, .. } => format!("order {order_no}"),
            EntryKind::Withdrawal { withdraw_no, .. } => format!("withdraw {withdraw_no}"),
        };
        postings
            .entry((entry.account.child_id, key))
            .or_default()
            .push(entry.seq);
    }
    for ((child_id, key), seqs) in &postings {
        if seqs.len() > 1 {
            found.push(violation(
                Invariant::I1Idempotency,
                format!("child {child_id} {key}"),
                format!("posted {} times (entries {seqs:?})", seqs.len()),
            ));
        }
    }
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
    found
}

/// Every token answer for one (child, order number) carries the same token bytes,
/// and at most one of them is a first acceptance.
fn check_tokens(history: &History, found: &mut Vec<Violation>) {
    let mut first: BTreeMap<(u64, String), (&[u8], usize)> = BTreeMap::new();
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
        let key = (token.child_id, token.order_no.to_string());
        let slot = first
            .entry(key.clone())
            .or_insert((token.bytes.as_slice(), 0));
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
