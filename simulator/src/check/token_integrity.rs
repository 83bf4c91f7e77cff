//! I7: a token with a bad signature, another user's act_id, or a changed field is
//! rejected and never credited. Every client token presented with a withdraw is
//! verified here independently, with the run's public keys; one that fails must be
//! in the wallet's list of refused tokens, and what it claimed must not be in the
//! ledger unless a legitimate answer gave exactly that.

use std::collections::{BTreeMap, BTreeSet};

use reference::ledger::{Award, EntryKind};
use reference::switches::Switch;
use reference::token::{decode_unverified, verify_with, verifying_keys_from_bytes};
use reference::wallet::{IssueOutcome, Rejection, WithdrawOutcome};

use super::{Invariant, Violation, violation};
use crate::history::{Event, FinalState, History};

pub(super) fn check(history: &History, state: &FinalState) -> Vec<Violation> {
    let mut found = Vec::new();
    let keys = verifying_keys_from_bytes(&state.token_keys);
    // (child, order, act, cents) that legitimate answers promised.
    let mut legit: BTreeSet<(u64, String, u64, u64)> = BTreeSet::new();
    for event in &history.events {
        match event {
            Event::Issue {
                outcome: IssueOutcome::Accepted { token },
                ..
            } => {
                legit.insert((
                    token.child_id,
                    token.order_no.to_string(),
                    token.act_id,
                    token.amount_cents,
                ));
            }
            Event::Issue {
                outcome: IssueOutcome::Issued { entry },
                ..
            } => {
                if let EntryKind::Credit {
                    order_no,
                    award: Award::Cash { amount_cents },
                } = &entry.kind
                {
                    legit.insert((
                        entry.account.child_id,
                        order_no.to_string(),
                        entry.account.act_id,
                        *amount_cents,
                    ));
                }
            }
            _ => {}
        }
    }
    let credited: BTreeMap<(u64, String), (u64, u64)> = state
        .ledger
        .entries
        .iter()
        .filter_map(|e| match &e.kind {
            EntryKind::Credit {
                order_no,
                award: Award::Cash { amount_cents },
            } => Some((
                (e.account.child_id, order_no.to_string()),
                (e.account.act_id, *amount_cents),
            )),
            _ => None,
        })
        .collect();
    let mut force_credit_on = true;
    for event in &history.events {
        if let Event::Switch {
            switch: Switch::ForceCreditOnWithdraw,
            on,
            ..
        } = event
        {
            force_credit_on = *on;
        }
        let Event::Withdraw {
            at_ms,
            request,
            outcome,
        } = event
        else {
            continue;
        };
        // Refusals are listed only by a withdraw that reached force-credit: one
        // turned away before it (gate, lock, bad input, no child) or with
        // force-credit switched off never looked at the copies.
        let refused: Option<BTreeSet<usize>> = match outcome {
            WithdrawOutcome::Withdrawn { force, .. }
            | WithdrawOutcome::Rejected {
                reason: Rejection::InsufficientBalance { .. },
                force,
                ..
            } if force_credit_on => Some(force.rejected_tokens.iter().map(|(i, _)| *i).collect()),
            _ => None,
        };
        for (index, bytes) in request.client_tokens.iter().enumerate() {
            let Err(error) = verify_with(&keys, bytes, request.act_id, request.activity_id) else {
                continue;
            };
            let culprit = format!(
                "withdraw {} of user {} at {at_ms} ms, client token #{index}",
                request.withdraw_no, request.act_id
            );
            if refused.as_ref().is_some_and(|r| !r.contains(&index)) {
                found.push(violation(
                    Invariant::I7TokenIntegrity,
                    &culprit,
                    format!(
                        "the withdraw went through force-credit but did not list this client token \
                         as refused, though it fails verification ({error})"
                    ),
                ));
            }
            let Some(claimed) = decode_unverified(bytes) else {
                continue;
            };
            let key = (claimed.child_id, claimed.order_no.to_string());
            let forged_payload = (claimed.act_id, claimed.amount_cents);
            let backed =
                legit.contains(&(key.0, key.1.clone(), claimed.act_id, claimed.amount_cents));
            if credited.get(&key) == Some(&forged_payload) && !backed {
                found.push(violation(
                    Invariant::I7TokenIntegrity,
                    &culprit,
                    format!("the ledger credits what the refused token claimed: order {} for user {} of {} cents", key.1, claimed.act_id, claimed.amount_cents),
                ));
            }
        }
    }
    found
}
