//! I5: the wallet view never shows less than the user was awarded — income is
//! everything issued or accepted in cash, balance is that minus withdrawals —
//! and a withdraw sees the full amount owed (after force-credit). Views degraded
//! by a switch (token KV or flow list off) say so and are skipped; withdraws are
//! checked only while force-credit and the token KV are on.

use std::collections::BTreeMap;

use reference::ledger::EntryKind;
use reference::switches::Switch;
use reference::wallet::{IssueOutcome, Rejection, WithdrawOutcome};

use super::{Invariant, Violation, violation};
use crate::history::{Event, History};

pub(super) fn check(history: &History) -> Vec<Violation> {
    let mut found = Vec::new();
    let mut awarded: BTreeMap<(u64, u64), u64> = BTreeMap::new();
    let mut withdrawn: BTreeMap<(u64, u64), u64> = BTreeMap::new();
    let mut off: Vec<Switch> = Vec::new();
    for event in &history.events {
        match event {
            Event::Switch { switch, on, .. } => {
                off.retain(|s| s != switch);
                if !on {
                    off.push(*switch);
                }
            }
            Event::Issue { outcome, .. } => {
                let key = match outcome {
                    IssueOutcome::Issued { entry } => {
                        (entry.account.child_id, entry.account.act_id)
                    }
                    IssueOutcome::Accepted { token } => (token.child_id, token.act_id),
                    _ => continue,
                };
                *awarded.entry(key).or_default() += outcome.newly_awarded_cents();
            }
            Event::Withdraw {
                at_ms,
                request,
                outcome,
            } => {
                let checked = !off.contains(&Switch::ForceCreditOnWithdraw)
                    && !off.contains(&Switch::TokenKv);
                let (child_id, shown) = match outcome {
                    WithdrawOutcome::Withdrawn {
                        entry,
                        balance_after_cents,
                        ..
                    } => {
                        if let EntryKind::Withdrawal { amount_cents, .. } = &entry.kind {
                            *withdrawn
                                .entry((entry.account.child_id, request.act_id))
                                .or_default() += amount_cents;
                        }
                        (entry.account.child_id, *balance_after_cents)
                    }
                    WithdrawOutcome::Rejected {
                        child_id: Some(child_id),
                        reason: Rejection::InsufficientBalance { balance_cents, .. },
                        ..
                    } => (*child_id, *balance_cents),
                    _ => continue,
                };
                let key = (child_id, request.act_id);
                let owed = awarded
                    .get(&key)
                    .copied()
                    .unwrap_or(0)
                    .saturating_sub(withdrawn.get(&key).copied().unwrap_or(0));
                if checked && shown != owed {
                    found.push(violation(
                        Invariant::I5View,
                        format!("withdraw {} of user {} at {at_ms} ms", request.withdraw_no, request.act_id),
                        format!("balance seen by the withdraw is {shown} cents, the amount owed is {owed} cents"),
                    ));
                }
            }
            Event::View {
                at_ms,
                act_id,
                view,
                ..
            } => {
                if !view.complete {
                    continue;
                }
                let key = (view.child_id, *act_id);
                let income = awarded.get(&key).copied().unwrap_or(0);
                let balance = income.saturating_sub(withdrawn.get(&key).copied().unwrap_or(0));
                if view.income_cents != income || view.balance_cents != balance {
                    let how = if view.income_cents < income || view.balance_cents < balance {
                        "less"
                    } else {
                        "more"
                    };
                    found.push(violation(
                        Invariant::I5View,
                        format!("view of user {act_id} in child {} at {at_ms} ms", view.child_id),
                        format!(
                            "shows {how} than awarded: income {} / balance {} cents, awarded {income} / owed {balance} cents",
                            view.income_cents, view.balance_cents
                        ),
                    ));
                }
            }
            Event::WorkerCrash { .. } | Event::CounterRead { .. } => {}
        }
    }
    found
}
