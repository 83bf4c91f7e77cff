//! I4 in sync mode: everything the activity side was told is issued is credited,
//! exactly as told, and nothing is credited that was never issued. Sync mode has
//! no pending state, so "once quiet, pending = 0" holds by construction; the token
//! scheme's checker adds the pending term.

use std::collections::{BTreeMap, BTreeSet};

use reference::ledger::Entry;
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
            Event::Issue { outcome: IssueOutcome::Issued { entry }, .. } => entry,
            Event::Withdraw { outcome: WithdrawOutcome::Withdrawn { entry, .. }, .. } => entry,
            _ => continue,
        };
        told.push(entry);
    }
    let told_seqs: BTreeSet<u64> = told.iter().map(|e| e.seq).collect();
    let posted: BTreeMap<u64, &Entry> = state.ledger.entries.iter().map(|e| (e.seq, e)).collect();
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
        if !told_seqs.contains(seq) {
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
        reference::ledger::EntryKind::Credit { order_no, .. } => format!("child {} order {order_no}", entry.account.child_id),
        reference::ledger::EntryKind::Withdrawal { withdraw_no, .. } => {
            format!("child {} withdraw {withdraw_no}", entry.account.child_id)
        }
    }
}
