//! I2: per coupon template issued ≤ stock; per child cash ≤ budget; each cash award
//! ≤ the per-transaction cap and ≤ its award's own cap (`max_cents`: from the
//! ledger, the loosest cap of the scene's cash awards; from the answers, the
//! cap of the award id each issued or accepted request named); per user per batch ≤ limit; ≤ 1 batch per group per
//! user. Checked on the ledger (what was given) and on the KV counters (what was
//! consumed: a counter above its limit means the store let one through). Stock is
//! conservative (seed 003): a consume whose result is unknown stays consumed, so
//! consumed ≥ credited (under-issue) is allowed, but a coupon credited from a
//! stock-controlled scene that the stock counter does not count is a unit the
//! stock never gave — over-issue waiting to happen. Coupons credited by the sync
//! path and by the coupon pipeline (merged consumes) count alike.

use std::collections::{BTreeMap, BTreeSet};

use reference::ledger::{Award, EntryKind};
use reference::wallet::IssueOutcome;
use reference::{ActivityTree, keys};

use super::{Invariant, Violation, violation};
use crate::history::{Event, FinalState, History};

/// Each cash award the wallet issued or accepted is within its award id's cap
/// (the tighter of `max_cents` and the activity's per-transaction cap).
fn check_award_caps(tree: &ActivityTree, history: &History, found: &mut Vec<Violation>) {
    for event in &history.events {
        let Event::Issue {
            request, outcome, ..
        } = event
        else {
            continue;
        };
        let (child_id, amount_cents) = match outcome {
            IssueOutcome::Issued { entry } => match &entry.kind {
                EntryKind::Credit {
                    award: Award::Cash { amount_cents },
                    ..
                } => (entry.account.child_id, *amount_cents),
                _ => continue,
            },
            IssueOutcome::Accepted { token } => (token.child_id, token.amount_cents),
            _ => continue,
        };
        let Some(cap) = tree
            .child(child_id)
            .and_then(|(activity, _)| activity.cash_cap_cents(request.award_id))
        else {
            continue;
        };
        if amount_cents > cap {
            found.push(violation(
                Invariant::I2NoOverIssue,
                format!("child {child_id} order {}", request.order_no),
                format!(
                    "{amount_cents} cents of award {} answered `{}`: over that award's cap of \
                     {cap} cents",
                    request.award_id,
                    outcome.label()
                ),
            ));
        }
    }
}

pub(super) fn check(tree: &ActivityTree, history: &History, state: &FinalState) -> Vec<Violation> {
    let mut found = Vec::new();
    check_award_caps(tree, history, &mut found);
    let mut cash: BTreeMap<u64, u64> = BTreeMap::new();
    let mut coupons: BTreeMap<(u64, u64), u64> = BTreeMap::new();
    // Coupons credited by stock-controlled scenes, by (child, template): each
    // took one unit of the stock counter.
    let mut from_stock: BTreeMap<(u64, u64), u64> = BTreeMap::new();
    let mut per_user_batch: BTreeMap<(u64, u64, String), u64> = BTreeMap::new();
    let mut per_user_group: BTreeMap<(u64, u64, String), BTreeSet<String>> = BTreeMap::new();
    for entry in &state.ledger.entries {
        let EntryKind::Credit { order_no, award } = &entry.kind else {
            continue;
        };
        // An entry of an unknown child is I6's to report.
        let Some((activity, _)) = tree.child(entry.account.child_id) else {
            continue;
        };
        let (child_id, act_id) = (entry.account.child_id, entry.account.act_id);
        match award {
            Award::Cash { amount_cents } => {
                *cash.entry(child_id).or_default() += amount_cents;
                let scene_cap = activity.scenes.get(&order_no.scene_id).and_then(|scene| {
                    scene
                        .award_ids
                        .iter()
                        .filter_map(|id| activity.cash_cap_cents(*id))
                        .max()
                });
                if *amount_cents <= activity.per_txn_cap_cents
                    && scene_cap.is_some_and(|cap| *amount_cents > cap)
                {
                    found.push(violation(
                        Invariant::I2NoOverIssue,
                        format!("child {child_id} order {order_no}"),
                        format!(
                            "{amount_cents} cents is over the cap of every cash award of scene {} \
                             (at most {} cents)",
                            order_no.scene_id,
                            scene_cap.unwrap_or_default()
                        ),
                    ));
                }
                if *amount_cents > activity.per_txn_cap_cents {
                    found.push(violation(
                        Invariant::I2NoOverIssue,
                        format!("child {child_id} order {order_no}"),
                        format!(
                            "{amount_cents} cents is over the per-transaction cap of {} cents",
                            activity.per_txn_cap_cents
                        ),
                    ));
                }
            }
            Award::Coupon { template_id, batch } => {
                *coupons.entry((child_id, *template_id)).or_default() += 1;
                if activity
                    .scenes
                    .get(&order_no.scene_id)
                    .is_some_and(|s| s.stock_control)
                {
                    *from_stock.entry((child_id, *template_id)).or_default() += 1;
                }
                *per_user_batch
                    .entry((child_id, act_id, batch.clone()))
                    .or_default() += 1;
                if let Some(group) = activity
                    .coupon_template(*template_id)
                    .and_then(|c| c.group.clone())
                {
                    per_user_group
                        .entry((child_id, act_id, group))
                        .or_default()
                        .insert(batch.clone());
                }
            }
            Award::Pendant { .. } => {}
        }
    }
    for (child_id, total) in &cash {
        let Some((_, child)) = tree.child(*child_id) else {
            continue;
        };
        if *total > child.budget_cents {
            found.push(violation(
                Invariant::I2NoOverIssue,
                format!("child {child_id} budget"),
                format!(
                    "{total} cents credited, budget is {} cents",
                    child.budget_cents
                ),
            ));
        }
        let consumed = state
            .counters
            .get(&keys::budget(*child_id))
            .copied()
            .unwrap_or(0);
        if consumed > i64::try_from(child.budget_cents).unwrap_or(i64::MAX) {
            found.push(violation(
                Invariant::I2NoOverIssue,
                format!("kv {}", keys::budget(*child_id)),
                format!(
                    "budget counter {consumed} is over the budget of {} cents",
                    child.budget_cents
                ),
            ));
        }
    }
    for ((child_id, template_id), issued) in &coupons {
        let Some((activity, _)) = tree.child(*child_id) else {
            continue;
        };
        let Some(coupon) = activity.coupon_template(*template_id) else {
            found.push(violation(
                Invariant::I2NoOverIssue,
                format!("child {child_id} template {template_id}"),
                "coupon of a template that is not configured",
            ));
            continue;
        };
        let stock_controlled = activity.scenes.values().any(|s| s.stock_control && s.award_ids.iter().any(|id| {
            matches!(activity.awards.get(id), Some(reference::config::AwardDef::Coupon(c)) if c.template_id == *template_id)
        }));
        if stock_controlled && *issued > coupon.stock {
            found.push(violation(
                Invariant::I2NoOverIssue,
                format!("child {child_id} template {template_id}"),
                format!("{issued} coupons issued, stock is {}", coupon.stock),
            ));
        }
    }
    for ((child_id, template_id), credited) in &from_stock {
        let key = keys::stock(*child_id, *template_id);
        let consumed = state.counters.get(&key).copied().unwrap_or(0);
        if i64::try_from(*credited).unwrap_or(i64::MAX) > consumed {
            found.push(violation(
                Invariant::I2NoOverIssue,
                format!("kv {key}"),
                format!(
                    "{credited} coupons credited from stock-controlled scenes, but the stock \
                     counter says {consumed} consumed: credits the stock never gave"
                ),
            ));
        }
    }
    for ((child_id, act_id, batch), held) in &per_user_batch {
        let Some((activity, _)) = tree.child(*child_id) else {
            continue;
        };
        let limit = activity
            .coupons()
            .find(|c| c.batch == *batch)
            .map_or(0, |c| c.per_user_limit);
        if *held > u64::from(limit) {
            found.push(violation(
                Invariant::I2NoOverIssue,
                format!("child {child_id} user {act_id} batch {batch}"),
                format!("user holds {held} coupons of the batch, limit is {limit}"),
            ));
        }
    }
    for ((child_id, act_id, group), batches) in &per_user_group {
        if batches.len() > 1 {
            found.push(violation(
                Invariant::I2NoOverIssue,
                format!("child {child_id} user {act_id} group {group}"),
                format!("user holds batches {batches:?} of one group; at most one is allowed"),
            ));
        }
    }
    for activity in tree.activities() {
        for child in &activity.children {
            for coupon in activity.coupons() {
                let key = keys::stock(child.id, coupon.template_id);
                let consumed = state.counters.get(&key).copied().unwrap_or(0);
                if consumed > i64::try_from(coupon.stock).unwrap_or(i64::MAX) {
                    found.push(violation(
                        Invariant::I2NoOverIssue,
                        format!("kv {key}"),
                        format!(
                            "stock counter {consumed} is over the stock of {}",
                            coupon.stock
                        ),
                    ));
                }
            }
        }
    }
    found
}
