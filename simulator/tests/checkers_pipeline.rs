//! The checkers over coupon-pipeline orders (seed 003): a clean run through the
//! pipeline passes, and each planted defect — an order left pending, credited
//! twice or with another award, failed yet credited, a credit nobody was told
//! of, a replay answered with another order, a conflicting replay credited,
//! stock credited that the counter never gave — is caught and named.

mod common;

use common::{runtime, scenarios_dir};

use std::sync::Arc;

use reference::kv::{Kv, MemoryKv};
use reference::ledger::{Award, Entry, EntryKind, MemoryLedger};
use reference::pipeline::{OrderRecord, OrderState, QueuedOrder};
use reference::wallet::IssueOutcome;
use reference::{ActivityTree, ManualClock, keys};
use simulator::check::{Invariant, check, check_all};
use simulator::engine::run_on;
use simulator::history::{Event, FinalState, History};
use simulator::options::RunOptions;
use simulator::scenario::Scenario;
use simulator::stores::Stores;

/// The rain's coupon scene (`crediting = "pipeline"`, stock-controlled).
const COUPON_SCENE: u32 = 302;

/// Two rounds of rain (token cash and pipeline coupons) on a sample, with the
/// coupon stock cut so the pipeline's merged consumes run out and orders fail
/// `out_of_stock` beside the issued ones.
fn rain() -> Scenario {
    let mut scenario = Scenario::load(&scenarios_dir().join("red-packet-rain.toml"))
        .unwrap_or_else(|e| panic!("{e}"));
    let path = scenarios_dir().join("activities/evening.toml");
    let text = std::fs::read_to_string(&path).expect("the evening tree reads");
    // Scaled by the 0.0002 sample: 40 food, 20 travel, 4000 general coupons.
    let text = text
        .replace("stock = 40000000", "stock = 200000")
        .replace("stock = 20000000", "stock = 100000")
        .replace("stock = 60000000", "stock = 20000000");
    scenario.tree =
        ActivityTree::from_toml_str(&text, &path.display().to_string()).expect("the cut tree");
    scenario
}

fn options() -> RunOptions {
    RunOptions {
        sample_rate: Some(0.0002),
        requests: Some(8_000),
        ..RunOptions::default()
    }
}

struct Clean {
    /// The effective tree (scaled by the sample), as the run's checkers saw it.
    tree: ActivityTree,
    history: History,
    state: FinalState,
}

fn clean_run() -> Clean {
    let scenario = rain();
    let clock = Arc::new(ManualClock::new(scenario.start_ms));
    let kv = Arc::new(MemoryKv::new(clock.clone()));
    let stores = Stores {
        ledger: Arc::new(MemoryLedger::new()),
        kv: kv.clone(),
        clock,
        wallet_keys: None,
        shadow: None,
    };
    let runtime = runtime();
    let output = runtime
        .block_on(run_on(&scenario, &options(), stores))
        .expect("run");
    // Read the order records here too, so this test does not depend on how the
    // run wires the final state (records already read are not read again).
    let state = runtime
        .block_on(
            output
                .state
                .with_orders(kv.as_ref() as &dyn Kv, &output.history),
        )
        .expect("order records read");
    let tree = simulator::options::effective_scenario(&scenario, &options()).tree;
    let clean = Clean {
        tree,
        history: output.history,
        state,
    };
    let found = check_all(&clean.tree, &clean.history, &clean.state);
    assert!(found.is_empty(), "the clean run must be clean: {found:#?}");
    clean
}

fn expect_caught(
    clean: &Clean,
    history: &History,
    state: &FinalState,
    invariant: Invariant,
    culprit: &str,
    detail: &str,
) {
    let found = check(invariant, &clean.tree, history, state);
    assert!(
        found
            .iter()
            .any(|v| v.culprit.contains(culprit) && v.detail.contains(detail)),
        "{} did not report `{culprit}` / `{detail}`; it reported {found:#?}",
        invariant.id()
    );
}

fn queued(history: &History) -> impl Iterator<Item = &QueuedOrder> {
    history.events.iter().filter_map(|e| match e {
        Event::Issue {
            outcome: IssueOutcome::Queued { order },
            ..
        } => Some(order),
        _ => None,
    })
}

fn record<'s>(state: &'s FinalState, order: &QueuedOrder) -> &'s OrderRecord {
    state
        .order(order.child_id, &order.order_no)
        .expect("every queued order has a record")
}

fn record_mut<'s>(state: &'s mut FinalState, order: &QueuedOrder) -> &'s mut OrderRecord {
    state
        .orders
        .get_mut(&order.child_id)
        .and_then(|records| records.get_mut(&order.order_no))
        .expect("every queued order has a record")
}

/// A queued order the pipeline issued.
fn issued(clean: &Clean) -> QueuedOrder {
    queued(&clean.history)
        .find(|o| matches!(record(&clean.state, o).state, OrderState::Issued { .. }))
        .cloned()
        .expect("the clean run issues pipeline orders")
}

fn credit_of(state: &FinalState, order: &QueuedOrder) -> Entry {
    state
        .ledger
        .entries
        .iter()
        .find(|e| {
            e.account.child_id == order.child_id
                && matches!(&e.kind, EntryKind::Credit { order_no, .. } if order_no.to_string() == order.order_no)
        })
        .cloned()
        .expect("an issued order is credited")
}

fn next_seq(state: &FinalState) -> u64 {
    state
        .ledger
        .entries
        .iter()
        .map(|e| e.seq)
        .max()
        .unwrap_or(0)
        + 1
}

fn culprit(order: &QueuedOrder) -> String {
    format!("child {} order {}", order.child_id, order.order_no)
}

#[test]
fn a_clean_pipeline_run_issues_and_fails_orders_and_passes() {
    let clean = clean_run();
    let mut issued = 0;
    let mut failed: std::collections::BTreeMap<&str, u64> = Default::default();
    for order in queued(&clean.history) {
        match &record(&clean.state, order).state {
            OrderState::Issued { .. } => issued += 1,
            OrderState::Failed { code, .. } => *failed.entry(code.as_str()).or_default() += 1,
            other => panic!("{order:?} left {other:?}"),
        }
    }
    assert!(issued > 100, "issued {issued}");
    let out_of_stock = failed.get("out_of_stock").copied().unwrap_or(0);
    assert!(out_of_stock > 10, "the cut stock runs out: {failed:?}");
    let replays = clean
        .history
        .events
        .iter()
        .filter(|e| {
            matches!(
                e,
                Event::Issue {
                    outcome: IssueOutcome::DuplicateQueued { .. } | IssueOutcome::Duplicate { .. },
                    ..
                }
            )
        })
        .count();
    assert!(replays > 0, "the rain replays taps");
}

#[test]
fn i4_catches_an_order_left_pending_or_without_a_record() {
    let clean = clean_run();
    let order = issued(&clean);
    let credit = credit_of(&clean.state, &order);

    // Stuck mid-way: the record says user_reserved, nothing credited.
    let mut state = clean.state.clone();
    record_mut(&mut state, &order).state = OrderState::UserReserved;
    state.ledger.entries.retain(|e| e.seq != credit.seq);
    expect_caught(
        &clean,
        &clean.history,
        &state,
        Invariant::I4Reconciliation,
        &culprit(&order),
        "order still user_reserved once quiet",
    );

    // Stuck after crediting: the record never moved to issued.
    let mut state = clean.state.clone();
    record_mut(&mut state, &order).state = OrderState::StockReserved;
    expect_caught(
        &clean,
        &clean.history,
        &state,
        Invariant::I4Reconciliation,
        &culprit(&order),
        "order still stock_reserved once quiet",
    );

    // A pipeline that did not drain: the first orders are named, then one summary.
    let mut state = clean.state.clone();
    for order in queued(&clean.history).take(25) {
        record_mut(&mut state, order).state = OrderState::Accepted;
    }
    let found = check(
        Invariant::I4Reconciliation,
        &clean.tree,
        &clean.history,
        &state,
    );
    let named = found
        .iter()
        .filter(|v| v.detail.contains("order still accepted once quiet"))
        .count();
    assert_eq!(named, 20, "{found:#?}");
    expect_caught(
        &clean,
        &clean.history,
        &state,
        Invariant::I4Reconciliation,
        "pipeline orders",
        "25 queued order(s) still pending once quiet",
    );

    // Answered queued, but no record at all.
    let mut state = clean.state.clone();
    state
        .orders
        .get_mut(&order.child_id)
        .expect("records of the child")
        .remove(&order.order_no);
    expect_caught(
        &clean,
        &clean.history,
        &state,
        Invariant::I4Reconciliation,
        &culprit(&order),
        "the KV holds no record of the order",
    );

    // Issued by the record, missing from the ledger.
    let mut state = clean.state.clone();
    state.ledger.entries.retain(|e| e.seq != credit.seq);
    expect_caught(
        &clean,
        &clean.history,
        &state,
        Invariant::I4Reconciliation,
        &culprit(&order),
        "says issued, but the ledger holds no credit",
    );
}

#[test]
fn i4_catches_a_failed_order_that_is_credited() {
    let clean = clean_run();
    let order = issued(&clean);
    let mut state = clean.state.clone();
    record_mut(&mut state, &order).state = OrderState::Failed {
        code: "out_of_stock".to_owned(),
        detail: "planted".to_owned(),
    };
    expect_caught(
        &clean,
        &clean.history,
        &state,
        Invariant::I4Reconciliation,
        &culprit(&order),
        "the order failed (out_of_stock), yet entry",
    );
}

#[test]
fn i1_and_i4_catch_an_order_credited_twice_or_with_another_award() {
    let clean = clean_run();
    let order = issued(&clean);
    let credit = credit_of(&clean.state, &order);

    let mut state = clean.state.clone();
    let mut twice = credit.clone();
    twice.seq = next_seq(&state);
    state.ledger.entries.push(twice);
    expect_caught(
        &clean,
        &clean.history,
        &state,
        Invariant::I1Idempotency,
        &culprit(&order),
        "posted 2 times",
    );

    // Another template than the queued award's.
    let mut state = clean.state.clone();
    let entry = state
        .ledger
        .entries
        .iter_mut()
        .find(|e| e.seq == credit.seq)
        .expect("the credit");
    let EntryKind::Credit { award, .. } = &mut entry.kind else {
        unreachable!("a credit")
    };
    let Award::Coupon { template_id, .. } = award else {
        unreachable!("a coupon")
    };
    *template_id += 1;
    expect_caught(
        &clean,
        &clean.history,
        &state,
        Invariant::I4Reconciliation,
        &culprit(&order),
        &format!(
            "queued for user {} with award {}",
            order.act_id, order.award_id
        ),
    );

    // Another user than the order's.
    let mut state = clean.state.clone();
    let entry = state
        .ledger
        .entries
        .iter_mut()
        .find(|e| e.seq == credit.seq)
        .expect("the credit");
    entry.account.act_id += 1;
    expect_caught(
        &clean,
        &clean.history,
        &state,
        Invariant::I4Reconciliation,
        &culprit(&order),
        &format!("credits user {}", order.act_id + 1),
    );
}

#[test]
fn i4_catches_a_coupon_credit_nobody_was_told_of() {
    let clean = clean_run();
    let order = issued(&clean);
    let credit = credit_of(&clean.state, &order);

    // A pipeline-scene coupon for an order number no request named.
    let mut state = clean.state.clone();
    let mut phantom = credit.clone();
    phantom.seq = next_seq(&state);
    phantom.account.act_id = 424_242;
    if let EntryKind::Credit { order_no, .. } = &mut phantom.kind {
        assert_eq!(order_no.scene_id, COUPON_SCENE);
        order_no.act_id = 424_242;
    }
    state.ledger.entries.push(phantom);
    expect_caught(
        &clean,
        &clean.history,
        &state,
        Invariant::I4Reconciliation,
        "order 424242_",
        "no request was answered with it",
    );

    // An issued order whose `queued` answer never happened: the record and the
    // credit exist, nobody was told.
    let mut history = clean.history.clone();
    history.events.retain(|e| {
        !matches!(e, Event::Issue { outcome: IssueOutcome::Queued { order: o }, .. } if *o == order)
    });
    expect_caught(
        &clean,
        &history,
        &clean.state,
        Invariant::I4Reconciliation,
        &culprit(&order),
        "no request was answered with it",
    );
}

#[test]
fn i1_catches_a_replay_answered_with_another_order() {
    let clean = clean_run();
    let mut history = clean.history.clone();
    let replay = history
        .events
        .iter_mut()
        .find_map(|e| match e {
            Event::Issue {
                outcome: IssueOutcome::DuplicateQueued { order },
                ..
            } => Some(order),
            _ => None,
        })
        .expect("the clean run replays queued orders");
    let first = replay.clone();
    replay.accepted_at_ms += 1;
    expect_caught(
        &clean,
        &history,
        &clean.state,
        Invariant::I1Idempotency,
        &culprit(&first),
        "a replay must return the first order",
    );

    // A replay answered as newly queued.
    let mut history = clean.history.clone();
    let index = history
        .events
        .iter()
        .position(|e| {
            matches!(
                e,
                Event::Issue {
                    outcome: IssueOutcome::DuplicateQueued { .. },
                    ..
                }
            )
        })
        .expect("a replay");
    if let Event::Issue { outcome, .. } = &mut history.events[index] {
        let IssueOutcome::DuplicateQueued { order } = outcome.clone() else {
            unreachable!("found above")
        };
        *outcome = IssueOutcome::Queued { order };
    }
    expect_caught(
        &clean,
        &history,
        &clean.state,
        Invariant::I1Idempotency,
        &culprit(&first),
        "queued as a new order more than once",
    );

    // The record holds another order than every answer named.
    let mut state = clean.state.clone();
    record_mut(&mut state, &first).request.award_id += 1;
    expect_caught(
        &clean,
        &clean.history,
        &state,
        Invariant::I1Idempotency,
        &culprit(&first),
        "but the order record holds",
    );
}

#[test]
fn i1_catches_a_conflicting_replay_that_gets_credited() {
    let clean = clean_run();
    let order = issued(&clean);
    let credit = credit_of(&clean.state, &order);
    let (activity, _) = clean.tree.child(order.child_id).expect("the child");
    let other = activity.scenes[&COUPON_SCENE]
        .award_ids
        .iter()
        .copied()
        .find(|&id| id != order.award_id)
        .expect("the scene has several coupons");
    let reference::config::AwardDef::Coupon(coupon) = &activity.awards[&other] else {
        unreachable!("a coupon scene")
    };
    // A replay with another award, answered order_conflict as it should be...
    let mut history = clean.history.clone();
    let (at_ms, mut request) = history
        .events
        .iter()
        .find_map(|e| match e {
            Event::Issue {
                at_ms,
                request,
                outcome: IssueOutcome::Queued { order: o },
            } if *o == order => Some((*at_ms, request.clone())),
            _ => None,
        })
        .expect("the queued answer");
    request.award_id = other;
    history.events.push(Event::Issue {
        at_ms,
        request,
        outcome: IssueOutcome::OrderConflict {
            first: order.clone(),
        },
    });
    assert!(
        check(
            Invariant::I1Idempotency,
            &clean.tree,
            &history,
            &clean.state
        )
        .is_empty(),
        "an answered conflict alone is fine"
    );
    // ... but the ledger credits its award instead of the first order's.
    let mut state = clean.state.clone();
    let entry = state
        .ledger
        .entries
        .iter_mut()
        .find(|e| e.seq == credit.seq)
        .expect("the credit");
    if let EntryKind::Credit { award, .. } = &mut entry.kind {
        *award = Award::Coupon {
            template_id: coupon.template_id,
            batch: coupon.batch.clone(),
        };
    }
    expect_caught(
        &clean,
        &history,
        &state,
        Invariant::I1Idempotency,
        &culprit(&order),
        &format!("credits award {other} of a replay answered order_conflict"),
    );
}

#[test]
fn i2_catches_coupons_credited_beyond_what_the_stock_counter_gave() {
    let clean = clean_run();
    let order = issued(&clean);
    let credit = credit_of(&clean.state, &order);
    let EntryKind::Credit {
        award: Award::Coupon { template_id, .. },
        ..
    } = credit.kind
    else {
        unreachable!("a coupon credit")
    };
    let key = keys::stock(order.child_id, template_id);
    let consumed = clean.state.counters[&key];
    assert!(consumed > 0, "the pipeline's merged consumes count");
    // The clean run may consume more than it credits (conservative), never less;
    // drop the counter below the credits.
    let mut state = clean.state.clone();
    let credited = state
        .ledger
        .entries
        .iter()
        .filter(|e| {
            e.account.child_id == order.child_id
                && matches!(&e.kind, EntryKind::Credit { award: Award::Coupon { template_id: t, .. }, .. } if *t == template_id)
        })
        .count() as i64;
    state.counters.insert(key.clone(), credited - 1);
    expect_caught(
        &clean,
        &clean.history,
        &state,
        Invariant::I2NoOverIssue,
        &format!("kv {key}"),
        "credits the stock never gave",
    );
}

#[test]
fn i6_dates_a_pipeline_credit_by_its_accept() {
    let clean = clean_run();
    let order = issued(&clean);
    let credit = credit_of(&clean.state, &order);
    let (_, child) = clean.tree.child(order.child_id).expect("the child");
    // Issued after the window closed, accepted inside it: fine.
    let mut state = clean.state.clone();
    let entry = state
        .ledger
        .entries
        .iter_mut()
        .find(|e| e.seq == credit.seq)
        .expect("the credit");
    entry.at_ms = child.end_ms + 1;
    assert!(check(Invariant::I6Isolation, &clean.tree, &clean.history, &state).is_empty());
    // Accepted before the window opened: not this child's order.
    record_mut(&mut state, &order).accepted_at_ms = child.start_ms - 1;
    expect_caught(
        &clean,
        &clean.history,
        &state,
        Invariant::I6Isolation,
        &format!("entry {}", credit.seq),
        &format!(
            "accepted at {} ms into child {}",
            child.start_ms - 1,
            order.child_id
        ),
    );
}
