//! Every checker must catch a planted violation, and name the culprit. Two kinds
//! of planting: (1) edit the history or final state of a clean run, one defect at
//! a time; (2) run the workload through a deliberately broken ledger or KV.

mod common;

use common::{broken, load, runtime};

#[allow(dead_code)] // each test binary uses a subset of the broken stores
use std::collections::BTreeSet;
use std::sync::Arc;

use reference::ledger::{Award, Entry, EntryKind};
use reference::wallet::{IssueOutcome, WithdrawOutcome};
use reference::{ManualClock, keys};
use simulator::check::{CHECK_THREADS_MAX, Invariant, Violation, check, check_all_on};
use simulator::engine::{run_on, run_scenario};
use simulator::history::{Event, FinalState, History};
use simulator::options::RunOptions;
use simulator::scenario::Scenario;
use simulator::stores::Stores;

const FORMAL_CHILD: u64 = 202703;
const TEST_CHILD: u64 = 202701;

fn smoke() -> Scenario {
    let mut scenario = load("smoke.toml");
    scenario.phases[0].count = Some(6000);
    // Fewer requests over the same minute: slow the worker so a backlog still
    // builds and views and withdraws meet pending tokens.
    scenario.crediting.worker.credit_tps = 10;
    scenario
}

struct Clean {
    scenario: Scenario,
    history: History,
    state: FinalState,
}

fn clean_run() -> Clean {
    let scenario = smoke();
    let output = runtime()
        .block_on(run_scenario(&scenario, &RunOptions::default()))
        .expect("run");
    assert!(
        output.violations.is_empty(),
        "the clean run must be clean: {:?}",
        output.violations
    );
    Clean {
        scenario,
        history: output.history,
        state: output.state,
    }
}

/// Run `invariant`'s checker and require a violation whose culprit contains `culprit`
/// and whose detail contains `detail`.
fn expect_caught(
    clean: &Clean,
    history: &History,
    state: &FinalState,
    invariant: Invariant,
    culprit: &str,
    detail: &str,
) {
    let found = check(invariant, &clean.scenario.tree, history, state);
    assert!(
        found
            .iter()
            .any(|v| v.culprit.contains(culprit) && v.detail.contains(detail)),
        "{} did not report `{culprit}` / `{detail}`; it reported {found:#?}",
        invariant.id()
    );
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

fn first_credit(state: &FinalState, want: impl Fn(&Award) -> bool) -> Entry {
    state
        .ledger
        .entries
        .iter()
        .find(|e| matches!(&e.kind, EntryKind::Credit { award, .. } if want(award)))
        .cloned()
        .expect("the clean run has such a credit")
}

fn with_order(entry: &Entry, seq: u64, act_id: u64, rain_id: u32) -> Entry {
    let mut copy = entry.clone();
    copy.seq = seq;
    copy.account.act_id = act_id;
    if let EntryKind::Credit { order_no, .. } = &mut copy.kind {
        order_no.act_id = act_id;
        order_no.rain_id = rain_id;
    }
    copy
}

#[test]
fn i1_catches_a_double_posting_and_a_replay_with_another_answer() {
    let clean = clean_run();
    let mut state = clean.state.clone();
    let entry = first_credit(&state, |a| matches!(a, Award::Cash { .. }));
    let mut twice = entry.clone();
    twice.seq = next_seq(&state);
    state.ledger.entries.push(twice);
    let EntryKind::Credit { order_no, .. } = &entry.kind else {
        unreachable!("a credit")
    };
    expect_caught(
        &clean,
        &clean.history,
        &state,
        Invariant::I1Idempotency,
        &format!("order {order_no}"),
        "posted 2 times",
    );

    let mut history = clean.history.clone();
    let replay = history
        .events
        .iter_mut()
        .find_map(|e| match e {
            Event::Issue {
                outcome: IssueOutcome::Duplicate { entry },
                ..
            } => Some(entry),
            _ => None,
        })
        .expect("the clean run has duplicates");
    replay.seq += 1;
    expect_caught(
        &clean,
        &history,
        &clean.state,
        Invariant::I1Idempotency,
        "order",
        "a replay must return the first outcome",
    );
}

#[test]
fn i1_catches_a_replay_answered_against_its_payload() {
    let clean = clean_run();
    // A replay with another amount answered `duplicate`.
    let mut history = clean.history.clone();
    let order_no = history
        .events
        .iter_mut()
        .find_map(|e| match e {
            Event::Issue {
                request,
                outcome: IssueOutcome::Duplicate { entry },
                ..
            } if matches!(
                &entry.kind,
                EntryKind::Credit {
                    award: Award::Cash { .. },
                    ..
                }
            ) =>
            {
                request.amount_cents += 1;
                Some(request.order_no.clone())
            }
            _ => None,
        })
        .expect("the clean run has cash duplicates");
    expect_caught(
        &clean,
        &history,
        &clean.state,
        Invariant::I1Idempotency,
        &format!("order {order_no}"),
        "another payload was answered `duplicate`",
    );
    // A withdrawal replayed with another amount answered `duplicate`, and one
    // replayed with the same amount answered `conflict`.
    let (at_ms, request, entry) = clean
        .history
        .events
        .iter()
        .find_map(|e| match e {
            Event::Withdraw {
                at_ms,
                request,
                outcome: WithdrawOutcome::Withdrawn { entry, .. },
            } => Some((*at_ms, request.clone(), entry.clone())),
            _ => None,
        })
        .expect("the clean run has withdrawals");
    for (amount, outcome, detail) in [
        (
            request.amount_cents + 1,
            WithdrawOutcome::Duplicate {
                entry: entry.clone(),
            },
            "another payload was answered `duplicate`",
        ),
        (
            request.amount_cents,
            WithdrawOutcome::Conflict {
                first: entry.clone(),
            },
            "the first payload was answered `conflict`",
        ),
    ] {
        let mut history = clean.history.clone();
        let mut replay = request.clone();
        replay.amount_cents = amount;
        history.events.push(Event::Withdraw {
            at_ms: at_ms + 1,
            request: replay,
            outcome,
        });
        let found = check(
            Invariant::I1Idempotency,
            &clean.scenario.tree,
            &history,
            &clean.state,
        );
        assert!(
            found.iter().any(|v| v
                .culprit
                .contains(&format!("withdraw {}", request.withdraw_no))
                && v.detail.contains(detail)),
            "I1 missed `{detail}` on withdraw {}: {found:#?}",
            request.withdraw_no
        );
    }
}

#[test]
fn i2_catches_a_cash_award_over_its_own_cap() {
    let clean = clean_run();
    let mut history = clean.history.clone();
    let tree = &clean.scenario.tree;
    let order_no = history
        .events
        .iter_mut()
        .find_map(|e| match e {
            Event::Issue {
                request,
                outcome: IssueOutcome::Issued { entry },
                ..
            } => {
                let (activity, _) = tree.child(entry.account.child_id)?;
                let cap = activity.cash_cap_cents(request.award_id)?;
                match &mut entry.kind {
                    EntryKind::Credit {
                        award: Award::Cash { amount_cents },
                        ..
                    } => *amount_cents = cap + 1,
                    _ => return None,
                }
                Some(request.order_no.clone())
            }
            _ => None,
        })
        .expect("the clean run issues sync cash");
    expect_caught(
        &clean,
        &history,
        &clean.state,
        Invariant::I2NoOverIssue,
        &format!("order {order_no}"),
        "over that award's cap",
    );
}

#[test]
fn check_all_gives_the_same_violations_in_the_same_order_on_any_number_of_threads() {
    let clean = clean_run();
    // Defects for several checkers at once: a double posting (I1, I3, I4) and a
    // lost credit (I4, and whoever else notices).
    let mut state = clean.state.clone();
    let mut twice = first_credit(&state, |a| matches!(a, Award::Cash { .. }));
    twice.seq = next_seq(&state);
    state.ledger.entries.push(twice);
    state.ledger.entries.remove(10);
    let one_by_one: Vec<Violation> = Invariant::CHECKED
        .into_iter()
        .flat_map(|i| check(i, &clean.scenario.tree, &clean.history, &state))
        .collect();
    assert!(
        one_by_one
            .iter()
            .map(|v| v.invariant)
            .collect::<BTreeSet<_>>()
            .len()
            >= 2,
        "more than one checker fires: {one_by_one:#?}"
    );
    for threads in 1..=CHECK_THREADS_MAX {
        assert_eq!(
            check_all_on(threads, &clean.scenario.tree, &clean.history, &state),
            one_by_one,
            "{threads} threads"
        );
    }
}

#[test]
fn i2_catches_every_kind_of_over_issue() {
    let clean = clean_run();
    // Stock: more coupons of template 7002 than its stock of 500.
    let mut state = clean.state.clone();
    let coupon = first_credit(&state, |a| {
        matches!(
            a,
            Award::Coupon {
                template_id: 7002,
                ..
            }
        )
    });
    for (seq, i) in (next_seq(&state)..).zip(0..600u32) {
        state
            .ledger
            .entries
            .push(with_order(&coupon, seq, 100_000 + u64::from(i), 0));
    }
    expect_caught(
        &clean,
        &clean.history,
        &state,
        Invariant::I2NoOverIssue,
        &format!("child {FORMAL_CHILD} template 7002"),
        "stock is 500",
    );

    // Per-user per-batch limit: a second travel coupon (limit 1) for the same user.
    let mut state = clean.state.clone();
    let second = with_order(&coupon, next_seq(&state), coupon.account.act_id, 999);
    state.ledger.entries.push(second);
    expect_caught(
        &clean,
        &clean.history,
        &state,
        Invariant::I2NoOverIssue,
        "batch rain-travel",
        "limit is 1",
    );

    // Group exclusion: the same user also gets a food coupon (same group).
    let mut state = clean.state.clone();
    let mut food = with_order(&coupon, next_seq(&state), coupon.account.act_id, 998);
    food.kind = match food.kind {
        EntryKind::Credit { order_no, .. } => EntryKind::Credit {
            order_no,
            award: Award::Coupon {
                template_id: 7001,
                batch: "rain-food".into(),
            },
        },
        other => other,
    };
    state.ledger.entries.push(food);
    expect_caught(
        &clean,
        &clean.history,
        &state,
        Invariant::I2NoOverIssue,
        "group rain-exclusive",
        "at most one",
    );

    // Per-transaction cap and budget, on the ledger and on the KV counter.
    let mut state = clean.state.clone();
    let cash = state
        .ledger
        .entries
        .iter_mut()
        .find(|e| {
            matches!(
                &e.kind,
                EntryKind::Credit {
                    award: Award::Cash { .. },
                    ..
                }
            )
        })
        .expect("cash");
    if let EntryKind::Credit { award, .. } = &mut cash.kind {
        *award = Award::Cash {
            amount_cents: 20_001,
        };
    }
    expect_caught(
        &clean,
        &clean.history,
        &state,
        Invariant::I2NoOverIssue,
        "order",
        "over the per-transaction cap of 20000",
    );
    state
        .counters
        .insert(keys::budget(FORMAL_CHILD), 2_000_000_001);
    expect_caught(
        &clean,
        &clean.history,
        &state,
        Invariant::I2NoOverIssue,
        "kv budget:202703",
        "over the budget",
    );
    state.counters.insert(keys::stock(FORMAL_CHILD, 7003), 4001);
    expect_caught(
        &clean,
        &clean.history,
        &state,
        Invariant::I2NoOverIssue,
        "kv stock:202703:7003",
        "over the stock of 4000",
    );
}

#[test]
fn i3_catches_a_skewed_account_and_an_overdraft() {
    let clean = clean_run();
    let mut state = clean.state.clone();
    let account = state
        .ledger
        .accounts
        .iter_mut()
        .find(|a| a.balance_cents > 0)
        .expect("an account with money");
    account.balance_cents += 1;
    let who = format!("user {}", account.key.act_id);
    expect_caught(
        &clean,
        &clean.history,
        &state,
        Invariant::I3Conservation,
        &who,
        "entries say",
    );
    expect_caught(
        &clean,
        &clean.history,
        &state,
        Invariant::I3Conservation,
        "ledger totals",
        "entries sum to",
    );

    let mut state = clean.state.clone();
    let account = *state
        .ledger
        .accounts
        .iter()
        .find(|a| a.balance_cents > 0)
        .expect("an account with money");
    state.ledger.entries.push(Entry {
        seq: next_seq(&state),
        account: account.key,
        at_ms: clean.scenario.start_ms,
        kind: EntryKind::Withdrawal {
            withdraw_no: "overdraft".into(),
            amount_cents: account.balance_cents + 1,
        },
    });
    expect_caught(
        &clean,
        &clean.history,
        &state,
        Invariant::I3Conservation,
        &format!("user {}", account.key.act_id),
        "balance went to -1 cents",
    );
}

#[test]
fn i4_catches_a_lost_credit_and_a_phantom_credit() {
    let clean = clean_run();
    let mut state = clean.state.clone();
    let lost = state.ledger.entries.remove(10);
    expect_caught(
        &clean,
        &clean.history,
        &state,
        Invariant::I4Reconciliation,
        "child",
        &format!("answered as posted (entry {})", lost.seq),
    );

    let mut state = clean.state.clone();
    let coupon = first_credit(&state, |a| matches!(a, Award::Pendant { .. }));
    let phantom = with_order(&coupon, next_seq(&state), 424_242, 7);
    state.ledger.entries.push(phantom.clone());
    expect_caught(
        &clean,
        &clean.history,
        &state,
        Invariant::I4Reconciliation,
        "order 424242_",
        "no request was answered with it",
    );
}

#[test]
fn i6_catches_a_credit_in_the_wrong_child() {
    let clean = clean_run();
    let mut state = clean.state.clone();
    state.ledger.entries[3].account.child_id = TEST_CHILD;
    let seq = state.ledger.entries[3].seq;
    expect_caught(
        &clean,
        &clean.history,
        &state,
        Invariant::I6Isolation,
        &format!("entry {seq}"),
        &format!("into child {TEST_CHILD}"),
    );

    let mut history = clean.history.clone();
    let issued = history
        .events
        .iter_mut()
        .find_map(|e| match e {
            Event::Issue {
                outcome: IssueOutcome::Issued { entry },
                ..
            } => Some(entry),
            _ => None,
        })
        .expect("an issued event");
    issued.account.child_id = TEST_CHILD;
    expect_caught(
        &clean,
        &history,
        &clean.state,
        Invariant::I6Isolation,
        "order",
        "handled in child 202701",
    );
}

#[test]
fn i4_catches_an_uncredited_token_and_an_undrained_backlog() {
    let clean = clean_run();
    let mut state = clean.state.clone();
    let token = clean
        .history
        .events
        .iter()
        .find_map(|e| match e {
            Event::Issue {
                outcome: IssueOutcome::Accepted { token },
                ..
            } => Some(token.clone()),
            _ => None,
        })
        .expect("the clean run accepts tokens");
    state.ledger.entries.retain(|e| !matches!(&e.kind, EntryKind::Credit { order_no, .. } if *order_no == token.order_no && e.account.child_id == token.child_id));
    let culprit = format!("order {}", token.order_no);
    expect_caught(
        &clean,
        &clean.history,
        &state,
        Invariant::I4Reconciliation,
        &culprit,
        "token accepted but never credited",
    );
    state.token_backlog.insert(FORMAL_CHILD, 3);
    expect_caught(
        &clean,
        &clean.history,
        &state,
        Invariant::I4Reconciliation,
        "token backlog",
        "3 token(s) still pending",
    );
}

#[test]
fn i5_catches_a_view_that_shows_less_or_more_and_a_short_withdraw() {
    let clean = clean_run();
    for (delta, how) in [(-1i64, "shows less"), (1, "shows more")] {
        let mut history = clean.history.clone();
        let view = history
            .events
            .iter_mut()
            .find_map(|e| match e {
                Event::View { view, .. } if view.complete && view.income_cents > 0 => Some(view),
                _ => None,
            })
            .expect("a complete view with money");
        view.balance_cents = view.balance_cents.saturating_add_signed(delta);
        expect_caught(
            &clean,
            &history,
            &clean.state,
            Invariant::I5View,
            "view of user",
            how,
        );
    }
    let mut history = clean.history.clone();
    let after = history
        .events
        .iter_mut()
        .find_map(|e| match e {
            Event::Withdraw {
                outcome:
                    reference::wallet::WithdrawOutcome::Withdrawn {
                        balance_after_cents,
                        ..
                    },
                ..
            } => Some(balance_after_cents),
            _ => None,
        })
        .expect("a withdrawal");
    *after += 1;
    expect_caught(
        &clean,
        &history,
        &clean.state,
        Invariant::I5View,
        "withdraw",
        "the amount owed is",
    );
}

#[test]
fn i7_catches_a_wallet_that_accepts_a_forged_token() {
    let clean = clean_run();
    let mut history = clean.history.clone();
    let force = history
        .events
        .iter_mut()
        .find_map(|e| match e {
            Event::Withdraw {
                outcome: reference::wallet::WithdrawOutcome::Withdrawn { force, .. },
                request,
                ..
            } if !force.rejected_tokens.is_empty()
                && request.client_tokens.len() > force.rejected_tokens[0].0 =>
            {
                Some(force)
            }
            _ => None,
        })
        .expect("a withdraw that presented a forged token");
    force.rejected_tokens.clear();
    expect_caught(
        &clean,
        &history,
        &clean.state,
        Invariant::I7TokenIntegrity,
        "client token",
        "did not list this client token as refused",
    );
}

// ---- broken wallets, end to end ----

fn run_broken(
    ledger: Arc<dyn reference::ledger::Ledger>,
    kv_limits_ignored: bool,
) -> Vec<Violation> {
    run_broken_with(ledger, kv_limits_ignored, &RunOptions::default())
}

fn run_broken_with(
    ledger: Arc<dyn reference::ledger::Ledger>,
    kv_limits_ignored: bool,
    options: &RunOptions,
) -> Vec<Violation> {
    let mut scenario = smoke();
    if kv_limits_ignored {
        // Long enough for the travel coupons (stock 500) to run out.
        scenario.phases[0].count = Some(20_000);
    }
    let clock = Arc::new(ManualClock::new(scenario.start_ms));
    let kv: Arc<dyn reference::kv::Kv> = if kv_limits_ignored {
        Arc::new(broken::LimitlessKv::new(clock.clone()))
    } else {
        Arc::new(reference::kv::MemoryKv::new(clock.clone()))
    };
    let stores = Stores {
        ledger,
        kv,
        clock,
        wallet_keys: None,
        shadow: None,
    };
    runtime()
        .block_on(run_on(&scenario, options, stores))
        .expect("run")
        .violations
}

#[test]
fn a_transient_phantom_credit_is_caught_only_by_checks_mid_run() {
    let ledger = || {
        Arc::new(broken::NaiveLedger::new(Some(broken::Bug::PhantomUntil(
            2000,
        ))))
    };
    let at_end = run_broken(ledger(), false);
    assert!(
        at_end.is_empty(),
        "the phantoms are gone by the end: {at_end:#?}"
    );
    let every_second = RunOptions {
        check_every_s: Some(1),
        ..RunOptions::default()
    };
    let midway = run_broken_with(ledger(), false, &every_second);
    assert!(
        midway
            .iter()
            .all(|v| v.invariant == Invariant::I4Reconciliation),
        "only I4: {midway:#?}"
    );
    assert!(
        midway
            .iter()
            .any(|v| v.detail.contains("no request was answered with it")
                && v.detail.contains("(mid-run, at ")),
        "{midway:#?}"
    );
    // The honest ledger passes the same mid-run checks: work in flight is no violation.
    let honest = run_broken_with(
        Arc::new(broken::NaiveLedger::new(None)),
        false,
        &every_second,
    );
    assert!(honest.is_empty(), "{honest:#?}");
}

fn fired(violations: &[Violation], invariant: Invariant) -> bool {
    violations.iter().any(|v| v.invariant == invariant)
}

#[test]
fn the_honest_naive_ledger_passes() {
    let violations = run_broken(Arc::new(broken::NaiveLedger::new(None)), false);
    assert!(
        violations.is_empty(),
        "the harness itself must not cry wolf: {violations:#?}"
    );
}

#[test]
fn a_ledger_without_idempotency_breaks_i1() {
    let violations = run_broken(
        Arc::new(broken::NaiveLedger::new(Some(broken::Bug::NoIdempotency))),
        false,
    );
    assert!(
        fired(&violations, Invariant::I1Idempotency),
        "{violations:#?}"
    );
}

#[test]
fn a_ledger_that_overdraws_breaks_i3() {
    let violations = run_broken(
        Arc::new(broken::NaiveLedger::new(Some(broken::Bug::Overdraft))),
        false,
    );
    assert!(
        fired(&violations, Invariant::I3Conservation),
        "{violations:#?}"
    );
}

#[test]
fn a_ledger_that_loses_credits_breaks_i4() {
    let violations = run_broken(
        Arc::new(broken::NaiveLedger::new(Some(broken::Bug::LoseEvery(97)))),
        false,
    );
    assert!(
        fired(&violations, Invariant::I4Reconciliation),
        "{violations:#?}"
    );
}

#[test]
fn a_ledger_that_posts_to_the_wrong_child_breaks_i6() {
    let violations = run_broken(
        Arc::new(broken::NaiveLedger::new(Some(broken::Bug::WrongChild(
            TEST_CHILD,
        )))),
        false,
    );
    assert!(
        fired(&violations, Invariant::I6Isolation),
        "{violations:#?}"
    );
}

#[test]
fn a_kv_that_ignores_limits_breaks_i2() {
    let violations = run_broken(Arc::new(broken::NaiveLedger::new(None)), true);
    assert!(
        fired(&violations, Invariant::I2NoOverIssue),
        "{violations:#?}"
    );
    let culprits: Vec<&str> = violations.iter().map(|v| v.culprit.as_str()).collect();
    assert!(
        culprits.iter().any(|c| c.contains("template 7002")),
        "stock over-issue named: {culprits:?}"
    );
    assert!(
        culprits.iter().any(|c| c.contains("group rain-exclusive")),
        "group exclusion named: {culprits:?}"
    );
}

#[test]
fn a_kv_that_loses_token_lists_breaks_i5() {
    let scenario = smoke();
    let clock = Arc::new(ManualClock::new(scenario.start_ms));
    let kv = Arc::new(broken::LimitlessKv::with_bug(
        clock.clone(),
        broken::KvBug::HideTokenLists,
    ));
    let stores = Stores {
        ledger: Arc::new(reference::ledger::MemoryLedger::new()),
        kv,
        clock,
        wallet_keys: None,
        shadow: None,
    };
    let violations = runtime()
        .block_on(run_on(&scenario, &RunOptions::default(), stores))
        .expect("run")
        .violations;
    assert!(fired(&violations, Invariant::I5View), "{violations:#?}");
    assert!(
        violations
            .iter()
            .any(|v| v.invariant == Invariant::I5View && v.detail.contains("shows less")),
        "{violations:#?}"
    );
}

#[test]
fn a_wallet_that_trusts_a_foreign_key_breaks_i7() {
    let scenario = smoke();
    let clock = Arc::new(ManualClock::new(scenario.start_ms));
    let mut wallet_keys = reference::token::KeyRing::dev(scenario.seed);
    let forger = simulator::trace::client::forger_keys(scenario.seed);
    wallet_keys.trust(1, forger.verifying_keys()[&1]);
    let stores = Stores {
        ledger: Arc::new(reference::ledger::MemoryLedger::new()),
        kv: Arc::new(reference::kv::MemoryKv::new(clock.clone())),
        clock,
        wallet_keys: Some(Arc::new(wallet_keys)),
        shadow: None,
    };
    let violations = runtime()
        .block_on(run_on(&scenario, &RunOptions::default(), stores))
        .expect("run")
        .violations;
    let i7: Vec<&Violation> = violations
        .iter()
        .filter(|v| v.invariant == Invariant::I7TokenIntegrity)
        .collect();
    assert!(
        i7.iter().any(|v| v
            .detail
            .contains("the ledger credits what the refused token claimed")),
        "{violations:#?}"
    );
}

#[test]
fn i7_does_not_blame_a_withdraw_that_never_ran_force_credit() {
    // Found by the model-based tests: with force-credit off (or a withdraw turned
    // away before it), the wallet never looks at client copies, so an empty list of
    // refusals is right, not a forged token "accepted".
    let clean = clean_run();
    let mut history = clean.history.clone();
    let index = history
        .events
        .iter()
        .position(|e| matches!(e, Event::Withdraw { outcome: reference::wallet::WithdrawOutcome::Withdrawn { force, .. }, .. } if !force.rejected_tokens.is_empty()))
        .expect("a withdraw with a refused token");
    if let Event::Withdraw {
        outcome: reference::wallet::WithdrawOutcome::Withdrawn { force, .. },
        at_ms,
        ..
    } = &mut history.events[index]
    {
        force.rejected_tokens.clear();
        let at_ms = *at_ms;
        history.events.insert(
            index,
            Event::Switch {
                at_ms,
                switch: reference::switches::Switch::ForceCreditOnWithdraw,
                on: false,
            },
        );
    }
    let found = check(
        Invariant::I7TokenIntegrity,
        &clean.scenario.tree,
        &history,
        &clean.state,
    );
    assert!(found.is_empty(), "{found:#?}");
}

#[test]
fn i8_catches_a_counter_that_goes_down_or_drifts() {
    let clean = clean_run();
    let reads: Vec<usize> = clean
        .history
        .events
        .iter()
        .enumerate()
        .filter(|(_, e)| matches!(e, Event::CounterRead { shown, .. } if *shown > 0))
        .map(|(i, _)| i)
        .collect();
    assert!(reads.len() > 100, "the clean run polls the counter");
    // A reader whose later poll shows less than its earlier one.
    let mut history = clean.history.clone();
    let Event::CounterRead { reader, .. } = history.events[reads[50]].clone() else {
        unreachable!("reads holds counter polls")
    };
    let later = reads[51..]
        .iter()
        .copied()
        .find(
            |&i| matches!(&history.events[i], Event::CounterRead { reader: r, .. } if *r == reader),
        )
        .expect("the reader polls again");
    if let Event::CounterRead { shown, .. } = &mut history.events[later] {
        *shown = 1;
    }
    expect_caught(
        &clean,
        &history,
        &clean.state,
        Invariant::I8Counter,
        &format!("reader {reader}"),
        "went down",
    );
    // A poll that shows half as much again as was ever awarded.
    let mut history = clean.history.clone();
    let last = *reads.last().expect("polls");
    if let Event::CounterRead { shown, .. } = &mut history.events[last] {
        *shown = *shown * 3 / 2;
    }
    expect_caught(
        &clean,
        &history,
        &clean.state,
        Invariant::I8Counter,
        "reader",
        "more than 1% off",
    );
}

#[test]
fn plan_1_under_a_counter_outage_breaks_i8_and_plan_2_does_not() {
    // Plan 1 (split keys, no retry, fan-out reads) through the same outage the
    // smoke scenario gives plan 2: reads fail and show less, writes are lost.
    let mut scenario = smoke();
    let counter = scenario.counter.as_mut().expect("smoke shows the counter");
    counter.plan = simulator::scenario::CounterKind::Split;
    counter.backup = false;
    let output = runtime()
        .block_on(run_scenario(&scenario, &RunOptions::default()))
        .expect("run");
    let i8: Vec<&Violation> = output
        .violations
        .iter()
        .filter(|v| v.invariant == Invariant::I8Counter)
        .collect();
    assert!(
        i8.iter().any(|v| v.detail.contains("went down")),
        "plan 1's reads go backwards: {i8:#?}"
    );
    assert!(
        i8.iter().any(|v| v.detail.contains("more than 1% off")),
        "plan 1 loses writes: {i8:#?}"
    );
    assert!(
        output
            .violations
            .iter()
            .all(|v| v.invariant == Invariant::I8Counter),
        "only the counter is wrong"
    );
    // Plan 2 on the same run passes (the clean run above is plan 2).
    let clean = clean_run();
    assert!(
        check(
            Invariant::I8Counter,
            &clean.scenario.tree,
            &clean.history,
            &clean.state
        )
        .is_empty()
    );
}

#[test]
fn shadow_traffic_that_lands_in_the_real_stores_breaks_i6() {
    let mut scenario = smoke();
    scenario.shadow = true;
    scenario.phases[0].count = Some(2000);
    let clock = Arc::new(ManualClock::new(scenario.start_ms));
    let ledger: Arc<dyn reference::ledger::Ledger> =
        Arc::new(reference::ledger::MemoryLedger::new());
    let kv: Arc<dyn reference::kv::Kv> = Arc::new(reference::kv::MemoryKv::new(clock.clone()));
    // Planted: the "shadow" stores are the real ones (a router that ignores the tag).
    let leaky = Stores {
        ledger: ledger.clone(),
        kv: kv.clone(),
        clock: clock.clone(),
        wallet_keys: None,
        shadow: Some(simulator::stores::ShadowStores { ledger, kv }),
    };
    let violations = runtime()
        .block_on(run_on(&scenario, &RunOptions::default(), leaky))
        .expect("run")
        .violations;
    assert!(
        violations
            .iter()
            .any(|v| v.invariant == Invariant::I6Isolation
                && v.detail.contains("shadow traffic touched the real stores")),
        "{violations:#?}"
    );
    assert!(
        violations
            .iter()
            .all(|v| v.invariant == Invariant::I6Isolation),
        "only I6 fires: {violations:#?}"
    );

    // The same run with separate shadow stores is clean.
    let clock = Arc::new(ManualClock::new(scenario.start_ms));
    let separate = Stores {
        ledger: Arc::new(reference::ledger::MemoryLedger::new()),
        kv: Arc::new(reference::kv::MemoryKv::new(clock.clone())),
        clock: clock.clone(),
        wallet_keys: None,
        shadow: Some(simulator::stores::ShadowStores {
            ledger: Arc::new(reference::ledger::MemoryLedger::new()),
            kv: Arc::new(reference::kv::MemoryKv::new(clock)),
        }),
    };
    let output = runtime()
        .block_on(run_on(&scenario, &RunOptions::default(), separate))
        .expect("run");
    assert!(output.violations.is_empty(), "{:#?}", output.violations);
    assert!(output.record.shadow);
    assert!(
        output.state.ledger.entries.len() > 100,
        "shadow traffic was served"
    );
}
