//! I4: everything the activity side was told is issued is credited, exactly as
//! told, and nothing is credited that was never issued. Sync answers name their
//! ledger entry; accepted tokens must be credited (same child, user, order and
//! amount) once the worker has drained, and the token backlog must be 0 then:
//! issued = credited + pending, with pending = 0 once quiet.

use std::collections::{BTreeMap, BTreeSet};

use reference::ledger::{Award, Entry, EntryKind};
use reference::wallet::{IssueOutcome, WithdrawOutcome};

use super::{Invariant, Violation, violation};
use crate::history::{Event, FinalState, History};

pub(super) fn check(history: &History, state: &FinalState) -> Vec<Violation> {
    let mut found = Vec::new();
    // What the callers were told was posted. Kept as a list, not by seq: a
    // ledger that drops a posting may hand its seq to the next one, and a map
    // would let the second answer hide the first.
    let mut told: Vec<&Entry> = Vec::new();
    for event in &history.events {
        let entry = match event {
            Event::Issue {
                outcome: IssueOutcome::Issued { entry },
                ..
            } => entry,
            Event::Withdraw {
                outcome: WithdrawOutcome::Withdrawn { entry, .. },
                ..
            } => entry,
            _ => continue,
        };
        told.push(entry);
    }
    let told_seqs: BTreeSet<u64> = told.iter().map(|e| e.seq).collect();
    let posted: BTreeMap<u64, &Entry> = state.ledger.entries.iter().map(|e| (e.seq, e)).collect();
    // Accepted tokens, by (child, order number): what the worker must credit.
    let mut accepted: BTreeMap<(u64, String), (u64, u64)> = BTreeMap::new();
    for event in &history.events {
        if let Event::Issue {
            outcome: IssueOutcome::Accepted { token },
            ..
        } = event
        {
            accepted.insert(
                (token.child_id, token.order_no.to_string()),
                (token.act_id, token.amount_cents),
            );
        }
    }
    let mut credited_tokens: BTreeMap<(u64, String), (u64, u64)> = BTreeMap::new();
    for entry in &state.ledger.entries {
        if let EntryKind::Credit {
            order_no,
            award: Award::Cash { amount_cents },
        } = &entry.kind
        {
            let key = (entry.account.child_id, order_no.to_string());
            if accepted.contains_key(&key) {
                credited_tokens.insert(key, (entry.account.act_id, *amount_cents));
            }
        }
    }
    let backlog: u64 = state.token_backlog.values().sum();
    for (key, expected) in &accepted {
        match credited_tokens.get(key) {
            Some(got) if got == expected => {}
            Some(got) => found.push(violation(
                Invariant::I4Reconciliation,
                format!("child {} order {}", key.0, key.1),
                format!(
                    "token for user {} of {} cents credited as user {} of {} cents",
                    expected.0, expected.1, got.0, got.1
                ),
            )),
            None if backlog == 0 => found.push(violation(
                Invariant::I4Reconciliation,
                format!("child {} order {}", key.0, key.1),
                "token accepted but never credited, and nothing is pending".to_owned(),
            )),
            None => {}
        }
    }
    if backlog > 0 {
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
                credited_tokens.contains_key(&(entry.account.child_id, order_no.to_string()))
            }
            EntryKind::Withdrawal { .. } => false,
        };
        if !told_seqs.contains(seq) && !token_credit {
            found.push(violation(
                Invariant::I4Reconciliation,
                describe(entry),
                format!("entry {seq} is in the ledger but no request was answered with it"),
            ));
        }
    }
    found
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
