//! I6 (child activities): every request lands in the child open at its time,
//! every entry sits in an account of the child it was posted for, inside that
//! child's window (a coupon-pipeline credit: accepted inside it), and names a
//! scene of that child's parent. After a shadow run
//! (every request shadow-tagged), the real stores must hold nothing at all.

use reference::ActivityTree;
use reference::ledger::EntryKind;
use reference::wallet::{IssueOutcome, WithdrawOutcome};

use super::{Invariant, Violation, violation};
use crate::history::{Event, FinalState, History, RealStores};

/// What a request event was, for a culprit; formatted only for a violation.
fn what(event: &Event) -> String {
    match event {
        Event::Issue { request, .. } => format!("order {}", request.order_no),
        Event::Withdraw { request, .. } => format!("withdraw {}", request.withdraw_no),
        Event::View { act_id, .. } => format!("view of user {act_id}"),
        Event::Switch { .. } | Event::WorkerCrash { .. } | Event::CounterRead { .. } => {
            unreachable!("only request events are checked here")
        }
    }
}

pub(super) fn check(tree: &ActivityTree, history: &History, state: &FinalState) -> Vec<Violation> {
    let mut found = Vec::new();
    for event in &history.events {
        let (at_ms, activity_id, landed) = match event {
            Event::Issue {
                at_ms,
                request,
                outcome,
            } => {
                let landed =
                    match outcome {
                        IssueOutcome::Issued { entry } | IssueOutcome::Duplicate { entry } => {
                            Some(entry.account.child_id)
                        }
                        IssueOutcome::Conflict { first } => Some(first.account.child_id),
                        IssueOutcome::Rejected { child_id, .. } => *child_id,
                        IssueOutcome::Accepted { token }
                        | IssueOutcome::DuplicateToken { token } => Some(token.child_id),
                        IssueOutcome::TokenConflict { first } => Some(first.child_id),
                        IssueOutcome::Queued { order }
                        | IssueOutcome::DuplicateQueued { order } => Some(order.child_id),
                        IssueOutcome::OrderConflict { first } => Some(first.child_id),
                    };
                (*at_ms, request.activity_id, landed)
            }
            Event::Withdraw {
                at_ms,
                request,
                outcome,
            } => {
                let landed = match outcome {
                    WithdrawOutcome::Withdrawn { entry, .. }
                    | WithdrawOutcome::Duplicate { entry } => Some(entry.account.child_id),
                    WithdrawOutcome::Conflict { first } => Some(first.account.child_id),
                    WithdrawOutcome::Rejected { child_id, .. } => *child_id,
                };
                (*at_ms, request.activity_id, landed)
            }
            Event::View {
                at_ms,
                activity_id,
                view,
                ..
            } => (*at_ms, *activity_id, Some(view.child_id)),
            Event::Switch { .. } | Event::WorkerCrash { .. } | Event::CounterRead { .. } => {
                continue;
            }
        };
        let Some(landed) = landed else { continue };
        let open = tree
            .activity(activity_id)
            .and_then(|a| a.child_at(at_ms))
            .map(|c| c.id);
        if open != Some(landed) {
            found.push(violation(
                Invariant::I6Isolation,
                format!("{} at {at_ms} ms", what(event)),
                format!("handled in child {landed}, but the child open then is {open:?}"),
            ));
        }
    }
    for entry in &state.ledger.entries {
        let child_id = entry.account.child_id;
        let Some((activity, child)) = tree.child(child_id) else {
            found.push(violation(
                Invariant::I6Isolation,
                format!("entry {}", entry.seq),
                format!("child {child_id} is not configured"),
            ));
            continue;
        };
        // A coupon-pipeline credit is dated when the pipeline issued it, which may
        // be after the window closed; what must lie in the window is the accept.
        let accepted_at_ms = match &entry.kind {
            EntryKind::Credit { order_no, .. } if !state.orders.is_empty() => state
                .order(child_id, &order_no.to_string())
                .filter(|r| r.child_id == child_id && r.accepted_at_ms <= entry.at_ms)
                .map(|r| r.accepted_at_ms),
            _ => None,
        };
        let dated_ms = accepted_at_ms.unwrap_or(entry.at_ms);
        if !(child.start_ms <= dated_ms && dated_ms < child.end_ms) {
            let what = if accepted_at_ms.is_some() {
                "accepted"
            } else {
                "posted"
            };
            found.push(violation(
                Invariant::I6Isolation,
                format!("entry {}", entry.seq),
                format!(
                    "{what} at {dated_ms} ms into child {child_id}, whose window is {}..{} ms",
                    child.start_ms, child.end_ms
                ),
            ));
        }
        if let EntryKind::Credit { order_no, .. } = &entry.kind {
            if order_no.act_id != entry.account.act_id {
                found.push(violation(
                    Invariant::I6Isolation,
                    format!("entry {} order {order_no}", entry.seq),
                    format!(
                        "credited to user {} instead of {}",
                        entry.account.act_id, order_no.act_id
                    ),
                ));
            }
            if !activity.scenes.contains_key(&order_no.scene_id) {
                found.push(violation(
                    Invariant::I6Isolation,
                    format!("entry {} order {order_no}", entry.seq),
                    format!(
                        "scene {} does not belong to activity {}",
                        order_no.scene_id, activity.id
                    ),
                ));
            }
        }
    }
    if let Some(real) = state.real_stores
        && real != RealStores::default()
    {
        found.push(violation(
            Invariant::I6Isolation,
            "real stores",
            format!(
                "shadow traffic touched the real stores: {} entries and {} accounts in the \
                 real tables, {} counters under real keys",
                real.entries, real.accounts, real.counters
            ),
        ));
    }
    found
}
