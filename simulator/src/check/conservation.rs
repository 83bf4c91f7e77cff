//! I3: per account, balance = credits − withdrawals and never below zero at any
//! point of the posting order; the account rows agree with the entries, and the
//! sums over users agree with the ledger totals.

use std::collections::BTreeMap;

use reference::ledger::{AccountKey, AccountState};

use super::{Invariant, Violation, violation};
use crate::history::FinalState;

pub(super) fn check(state: &FinalState) -> Vec<Violation> {
    let mut found = Vec::new();
    let mut derived: BTreeMap<AccountKey, AccountState> = BTreeMap::new();
    let mut entries = state.ledger.entries.iter().collect::<Vec<_>>();
    entries.sort_by_key(|e| e.seq);
    for entry in entries {
        let account = derived
            .entry(entry.account)
            .or_insert_with(|| AccountState::empty(entry.account));
        let delta = entry.cash_delta_cents();
        let balance = i128::from(account.balance_cents) + delta;
        if balance < 0 {
            found.push(violation(
                Invariant::I3Conservation,
                format!(
                    "child {} user {} entry {}",
                    entry.account.child_id, entry.account.act_id, entry.seq
                ),
                format!("balance went to {balance} cents"),
            ));
        }
        // Keep going from zero so one overdraft is reported once, not on every later entry.
        account.balance_cents = u64::try_from(balance.max(0)).unwrap_or(u64::MAX);
        if delta >= 0 {
            account.credited_cents += u64::try_from(delta).unwrap_or(0);
        } else {
            account.withdrawn_cents += u64::try_from(-delta).unwrap_or(0);
        }
    }
    let stored: BTreeMap<AccountKey, AccountState> =
        state.ledger.accounts.iter().map(|a| (a.key, *a)).collect();
    for (key, from_entries) in &derived {
        let row = stored
            .get(key)
            .copied()
            .unwrap_or_else(|| AccountState::empty(*key));
        if row != *from_entries {
            found.push(violation(
                Invariant::I3Conservation,
                format!("child {} user {}", key.child_id, key.act_id),
                format!(
                    "account says balance {} / credited {} / withdrawn {}, entries say {} / {} / {}",
                    row.balance_cents, row.credited_cents, row.withdrawn_cents,
                    from_entries.balance_cents, from_entries.credited_cents, from_entries.withdrawn_cents
                ),
            ));
        }
    }
    for (key, row) in &stored {
        if !derived.contains_key(key) && *row != AccountState::empty(*key) {
            found.push(violation(
                Invariant::I3Conservation,
                format!("child {} user {}", key.child_id, key.act_id),
                format!(
                    "account holds {} cents without any entry",
                    row.balance_cents
                ),
            ));
        }
        if row.balance_cents != row.credited_cents.wrapping_sub(row.withdrawn_cents) {
            found.push(violation(
                Invariant::I3Conservation,
                format!("child {} user {}", key.child_id, key.act_id),
                format!(
                    "balance {} ≠ credited {} − withdrawn {}",
                    row.balance_cents, row.credited_cents, row.withdrawn_cents
                ),
            ));
        }
    }
    let total_rows: i128 = stored.values().map(|a| i128::from(a.balance_cents)).sum();
    let total_entries: i128 = state
        .ledger
        .entries
        .iter()
        .map(|e| e.cash_delta_cents())
        .sum();
    if total_rows != total_entries {
        found.push(violation(
            Invariant::I3Conservation,
            "ledger totals",
            format!("accounts hold {total_rows} cents, entries sum to {total_entries} cents"),
        ));
    }
    found
}
