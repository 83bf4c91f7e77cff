//! `redrain conform` against the reference server and against deliberately
//! broken wallet servers: it passes the first and catches every planted bug.

mod common;

use common::{ADMIN_TOKEN, broken, load};

#[allow(dead_code)]
use std::sync::Arc;

use broken::{Bug, KvBug, LimitlessKv, NaiveLedger};
use reference::http::{Server, ShiftedClock};
use reference::kv::{Kv, MemoryKv};
use reference::ledger::{Ledger, MemoryLedger};
use reference::{Clock, Wallet};
use simulator::live::conform::{ConformOptions, ConformReport, conform};
use simulator::live::serve::{Local, Switches};
use simulator::scenario::Scenario;

fn scenario() -> Scenario {
    load("conform/conform.toml")
}

/// What the shadow side of a server is built on.
enum Shadow {
    /// The reference's own stores.
    Honest,
    /// A ledger that never finds an earlier posting: a retry credits again.
    DoubleCreditOnRetry,
    /// Stock checked and consumed in two calls: a race over-issues.
    OverIssueRace,
    /// Token lists lost: the balance dips while tokens are being credited.
    DippingBalance,
    /// Shadow traffic written to the real stores.
    WritesToRealKeys,
    /// Replays judged by order number alone: a changed withdrawal or credit
    /// replay is answered `duplicate`.
    ReplayIgnoresPayload,
    /// Cash capped at the activity's per-transaction cap only, not the award's
    /// own (the wrong granularity).
    ActivityCapOnly,
    /// The cap compared in whole yuan: up to 99 cents over it passes.
    CapInWholeYuan,
    /// Claimed tokens not kept in the inflight set: a worker crash loses them.
    ClaimWithoutInflight,
    /// Pipeline orders left out of the open set: a crashed order is never recovered.
    OrdersNotOpen,
    /// Child windows compared as `start < now <= end`: every window one
    /// millisecond late, visible only on its first and last millisecond.
    WindowsOneMsLate,
}

/// The tree the server is configured with: the conform tree, or a copy with
/// the caps a planted bug misreads.
fn served_tree(shadow: &Shadow) -> reference::ActivityTree {
    let path = common::scenarios_dir().join("activities/conform.toml");
    let text = std::fs::read_to_string(&path).expect("the conform tree");
    let text = match shadow {
        Shadow::ActivityCapOnly => text.replace("max_cents = 888", "max_cents = 20000"),
        Shadow::CapInWholeYuan => text
            .replace("per_txn_cap_cents = 20000", "per_txn_cap_cents = 20099")
            .replace("max_cents = 20000", "max_cents = 20099"),
        Shadow::WindowsOneMsLate => (10..=13).fold(text, |text, day| {
            text.replace(
                &format!("2027-01-{day}T00:00:00+08:00"),
                &format!("2027-01-{day}T00:00:00.001+08:00"),
            )
        }),
        _ => return scenario().tree,
    };
    reference::ActivityTree::from_toml_str(&text, "planted tree").expect("the planted tree parses")
}

/// Serve the conform tree on 127.0.0.1 with the shadow side as `shadow` says.
async fn start(shadow: Shadow, faults: bool) -> Local {
    let scenario = scenario();
    let clock = Arc::new(ShiftedClock::starting_at(scenario.start_ms));
    let dyn_clock: Arc<dyn Clock> = clock.clone();
    let ledger: Arc<dyn Ledger> = Arc::new(MemoryLedger::new());
    let kv: Arc<dyn Kv> = Arc::new(MemoryKv::new(dyn_clock.clone()));
    let (shadow_ledger, shadow_kv): (Arc<dyn Ledger>, Arc<dyn Kv>) = match shadow {
        Shadow::Honest => (
            Arc::new(MemoryLedger::new()),
            Arc::new(MemoryKv::new(dyn_clock.clone())),
        ),
        Shadow::DoubleCreditOnRetry => (
            Arc::new(NaiveLedger::new(Some(Bug::NoIdempotency))),
            Arc::new(MemoryKv::new(dyn_clock.clone())),
        ),
        Shadow::OverIssueRace => (
            Arc::new(MemoryLedger::new()),
            Arc::new(LimitlessKv::with_bug(dyn_clock.clone(), KvBug::RacyConsume)),
        ),
        Shadow::DippingBalance => (
            Arc::new(MemoryLedger::new()),
            Arc::new(LimitlessKv::with_bug(
                dyn_clock.clone(),
                KvBug::HideTokenLists,
            )),
        ),
        Shadow::WritesToRealKeys => (ledger.clone(), kv.clone()),
        Shadow::ReplayIgnoresPayload => (
            Arc::new(NaiveLedger::new(Some(Bug::ReplayIgnoresPayload))),
            Arc::new(MemoryKv::new(dyn_clock.clone())),
        ),
        Shadow::ClaimWithoutInflight => (
            Arc::new(MemoryLedger::new()),
            Arc::new(LimitlessKv::with_bug(
                dyn_clock.clone(),
                KvBug::ClaimWithoutInflight,
            )),
        ),
        Shadow::OrdersNotOpen => (
            Arc::new(MemoryLedger::new()),
            Arc::new(LimitlessKv::with_bug(
                dyn_clock.clone(),
                KvBug::OrdersNotOpen,
            )),
        ),
        Shadow::ActivityCapOnly | Shadow::CapInWholeYuan | Shadow::WindowsOneMsLate => (
            Arc::new(MemoryLedger::new()),
            Arc::new(MemoryKv::new(dyn_clock.clone())),
        ),
    };
    let tree = served_tree(&shadow);
    let keys = scenario
        .token_keys
        .as_ref()
        .expect("the conform scenario signs tokens")
        .load(scenario.seed)
        .expect("dev keys");
    // Behind switches, as `redrain serve` builds it: store outages are offered.
    let switches = Switches::new([ledger, shadow_ledger], [kv, shadow_kv]);
    let ([ledger, shadow_ledger], [kv, shadow_kv]) = (switches.ledgers(), switches.kvs());
    let wallet = Wallet::new(Arc::new(tree), ledger, kv, dyn_clock)
        .with_shadow_stores(shadow_ledger, shadow_kv)
        .with_keys(Arc::new(keys));
    let config = simulator::live::serve::server_config(&scenario, ADMIN_TOKEN.to_owned());
    let server = Server::new(wallet, clock, config);
    let server = if faults {
        server.with_store_switch(Arc::new(switches))
    } else {
        server
    };
    Local::start(server).await.expect("the server starts")
}

async fn run(shadow: Shadow, reference: bool) -> ConformReport {
    run_only(shadow, reference, None).await
}

async fn run_only(shadow: Shadow, reference: bool, only: Option<&str>) -> ConformReport {
    let server = start(shadow, true).await;
    let report = conform(
        &scenario(),
        &ConformOptions {
            target: server.url.clone(),
            admin_token: ADMIN_TOKEN.to_owned(),
            reference,
            only: only.map(str::to_owned),
            drain_ms_max: 30_000,
            process: Default::default(),
        },
    )
    .await
    .expect("conform runs");
    drop(server);
    report
}

fn failing(report: &ConformReport) -> Vec<(String, Vec<String>)> {
    report
        .cases
        .iter()
        .filter(|c| !c.passed)
        .map(|c| {
            let mut lines = c.violations.clone();
            lines.extend(c.expectations.clone());
            lines.extend(c.differences.clone());
            (c.name.clone(), lines)
        })
        .collect()
}

fn invariant_failed(report: &ConformReport, id: &str) -> bool {
    report
        .invariants
        .iter()
        .any(|(name, passed, _)| name.starts_with(id) && !passed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reference_conforms_and_matches_itself() {
    let report = run(Shadow::Honest, true).await;
    assert!(
        report.passed,
        "{}",
        simulator::live::conform::render(&report)
    );
    assert_eq!(report.cases.len(), simulator::live::conform::CASES.len());
    let junit = simulator::live::conform::junit(&report).expect("junit");
    assert!(
        junit.contains(&format!(
            "tests=\"{}\"",
            simulator::live::conform::CASES.len()
        )) && !junit.contains("<failure"),
        "{junit}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn double_credit_on_retry_is_caught() {
    let report = run(Shadow::DoubleCreditOnRetry, false).await;
    assert!(!report.passed);
    assert!(
        invariant_failed(&report, "I1"),
        "{}",
        simulator::live::conform::render(&report)
    );
    let storm = failing(&report);
    assert!(
        storm.iter().any(|(name, lines)| name == "idempotency_storm"
            && lines.iter().any(|l| l.contains("first success"))),
        "{storm:?}"
    );
    let junit = simulator::live::conform::junit(&report).expect("junit");
    assert!(junit.contains("<failure"), "{junit}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_issue_under_a_race_is_caught() {
    let report = run(Shadow::OverIssueRace, false).await;
    assert!(!report.passed);
    assert!(
        invariant_failed(&report, "I2"),
        "{}",
        simulator::live::conform::render(&report)
    );
    let failed = failing(&report);
    assert!(
        failed.iter().any(|(name, lines)| name == "stock_races"
            && lines.iter().any(|l| l.contains("the stock is 40"))),
        "{failed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_balance_that_dips_while_tokens_credit_is_caught() {
    let report = run(Shadow::DippingBalance, false).await;
    assert!(!report.passed);
    assert!(
        invariant_failed(&report, "I5"),
        "{}",
        simulator::live::conform::render(&report)
    );
    let failed = failing(&report);
    assert!(
        failed
            .iter()
            .any(|(name, _)| name == "pending_tokens_visible"),
        "{failed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_writes_to_real_keys_are_caught() {
    let report = run(Shadow::WritesToRealKeys, false).await;
    assert!(!report.passed);
    let summary = simulator::live::conform::render(&report);
    assert!(invariant_failed(&report, "I6"), "{summary}");
    // The decisive line is on the one screen, not only in conform.json.
    assert!(
        summary.lines().any(|l| l.trim_start().starts_with("I6 ")),
        "{summary}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_target_also_differs_from_the_reference() {
    let report = run(Shadow::DoubleCreditOnRetry, true).await;
    assert!(
        report.cases.iter().any(|c| !c.differences.is_empty()),
        "{}",
        simulator::live::conform::render(&report)
    );
    // Request by request: the first answer that differs, with its request.
    assert!(
        report.cases.iter().any(|c| c
            .differences
            .iter()
            .any(|d| d.starts_with("first answer that differs: order ")
                && d.contains("answered `issued` by the target, `duplicate` by the reference"))),
        "{}",
        simulator::live::conform::render(&report)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_replay_answered_duplicate_is_caught() {
    let report = run(Shadow::ReplayIgnoresPayload, false).await;
    let failed = failing(&report);
    assert!(invariant_failed(&report, "I1"), "{failed:#?}");
    let replays = failed
        .iter()
        .find(|(name, _)| name == "withdraw_replays")
        .unwrap_or_else(|| panic!("withdraw_replays must fail: {failed:#?}"));
    assert!(
        replays
            .1
            .iter()
            .any(|l| l.contains("another payload was answered `duplicate`")),
        "{replays:#?}"
    );
    assert!(
        replays
            .1
            .iter()
            .any(|l| l.contains("the rules say `conflict`")),
        "{replays:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cap_at_the_wrong_granularity_is_caught() {
    for (shadow, over) in [
        (Shadow::ActivityCapOnly, "889 cents of award 5901"),
        (Shadow::CapInWholeYuan, "20001 cents"),
    ] {
        let report = run(shadow, false).await;
        let failed = failing(&report);
        assert!(invariant_failed(&report, "I2"), "{failed:#?}");
        let edges = failed
            .iter()
            .find(|(name, _)| name == "limits_at_their_edges")
            .unwrap_or_else(|| panic!("limits_at_their_edges must fail: {failed:#?}"));
        assert!(
            edges
                .1
                .iter()
                .any(|l| l.starts_with("I2") && l.contains(over)),
            "{edges:#?}"
        );
        assert!(
            edges
                .1
                .iter()
                .any(|l| l.contains("the rules say `amount_over_cap`")),
            "{edges:#?}"
        );
    }
}

/// The fault cases run on the reference through its fault routes, and each
/// fault really happened (the target's own count).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fault_cases_run_through_the_protocol_and_pass_on_the_reference() {
    let server = start(Shadow::Honest, true).await;
    let target =
        simulator::live::client::Target::new(&server.url, ADMIN_TOKEN, true).expect("a client");
    let capabilities = target
        .capabilities()
        .await
        .expect("capabilities")
        .expect("the reference offers them");
    assert_eq!(
        capabilities.faults,
        ["worker_crash", "pipeline_crash", "restart", "store_outage"]
    );
    let report = conform(
        &scenario(),
        &ConformOptions {
            target: server.url.clone(),
            admin_token: ADMIN_TOKEN.to_owned(),
            reference: false,
            only: Some("r".to_owned()),
            drain_ms_max: 30_000,
            process: Default::default(),
        },
    )
    .await
    .expect("conform runs");
    let ran: Vec<&str> = report
        .cases
        .iter()
        .filter(|c| c.skipped.is_none())
        .map(|c| c.name.as_str())
        .collect();
    for case in [
        "worker_crash_recovery",
        "pipeline_crash_recovery",
        "restart_midway",
        "store_outages",
    ] {
        assert!(ran.contains(&case), "{case} ran: {ran:?}");
    }
    assert!(
        report.passed,
        "{}",
        simulator::live::conform::render(&report)
    );
    let fired = target.faults().await.expect("the fault status");
    assert_eq!(
        (
            fired.worker_crashes,
            fired.pipeline_crashes,
            fired.restarts,
            fired.outages
        ),
        (3, 6, 1, 2),
        "every crash point was reached once, one restart, two outages"
    );
}

/// A target that does not offer a fault has its case skipped, visibly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fault_the_target_lacks_is_skipped_visibly() {
    let server = start(Shadow::Honest, false).await;
    let report = conform(
        &scenario(),
        &ConformOptions {
            target: server.url.clone(),
            admin_token: ADMIN_TOKEN.to_owned(),
            reference: false,
            only: Some("store_outages".to_owned()),
            drain_ms_max: 30_000,
            process: Default::default(),
        },
    )
    .await
    .expect("conform runs");
    assert_eq!(report.skipped, 1);
    let case = &report.cases[0];
    assert!(
        case.skipped
            .as_deref()
            .is_some_and(|why| why.contains("`store_outage`")),
        "{case:?}"
    );
    let summary = simulator::live::conform::render(&report);
    assert!(
        summary.contains("store_outages            SKIP") && summary.contains("1 case(s) SKIPPED"),
        "{summary}"
    );
    let junit = simulator::live::conform::junit(&report).expect("junit");
    assert!(junit.contains("<skipped"), "{junit}");
}

/// Claimed tokens not kept inflight: only a worker crash shows it, and the
/// crash case catches it (the tokens are never credited).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_lost_by_a_worker_crash_are_caught() {
    let report = run_only(Shadow::ClaimWithoutInflight, false, Some("worker_crash")).await;
    let failed = failing(&report);
    assert!(
        failed
            .iter()
            .any(|(name, _)| name == "worker_crash_recovery"),
        "{failed:#?}"
    );
    // Without the crash the same store passes the token cases.
    let calm = run_only(Shadow::ClaimWithoutInflight, false, Some("pending_tokens")).await;
    assert!(calm.passed, "{}", simulator::live::conform::render(&calm));
}

/// Orders the compensation scan cannot find: a pipeline crash strands them,
/// and the pipeline crash case catches it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_stranded_by_a_pipeline_crash_are_caught() {
    let report = run_only(Shadow::OrdersNotOpen, false, Some("pipeline_crash")).await;
    let failed = failing(&report);
    assert!(
        failed
            .iter()
            .any(|(name, _)| name == "pipeline_crash_recovery"),
        "{failed:#?}"
    );
}

/// A ledger that cannot tell a resend from a new request: resending after a
/// store outage (as a client must) credits and withdraws twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resend_after_an_outage_paid_twice_is_caught() {
    let report = run_only(Shadow::DoubleCreditOnRetry, false, Some("store_outages")).await;
    let failed = failing(&report);
    assert!(
        failed
            .iter()
            .any(|(name, lines)| name == "store_outages"
                && lines.iter().any(|l| l.starts_with("I1"))),
        "{failed:#?}"
    );
}

/// `redrain conform --start-cmd` on a `redrain serve` started by conform:
/// exit code and stdout of a run of `process_kill_restart` only.
fn conform_killing(stores: &[&str], out: &std::path::Path) -> (i32, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let bin = env!("CARGO_BIN_EXE_redrain");
    let start = format!(
        "exec '{bin}' serve scenarios/conform/conform.toml --listen 127.0.0.1:{port} {}",
        stores.join(" ")
    );
    let output = std::process::Command::new(bin)
        .current_dir(common::workspace_dir())
        .env("CI", "true")
        .env("REDRAIN_ADMIN_TOKEN", ADMIN_TOKEN)
        .args(["conform", "--target", &format!("http://127.0.0.1:{port}")])
        .args([
            "--only",
            "process_kill_restart",
            "--start-cmd",
            &start,
            "--out",
        ])
        .arg(out)
        .output()
        .expect("redrain conform runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    (
        output.status.code().unwrap_or(-1),
        format!("{stdout}{stderr}"),
    )
}

/// Jepsen's nemesis through conform: the reference on SQLite and Redis is
/// killed with SIGKILL right after answering tokens, pipeline orders and sync
/// credits, started again, and every answer stands.
#[test]
fn a_target_killed_mid_case_on_durable_stores_passes() {
    let Some(redis) =
        reference::testenv::service_url("REDRAIN_REDIS_URL", "conform process_kill_restart")
    else {
        return;
    };
    let dir = tempfile::tempdir().expect("a temp dir");
    let db = dir.path().join("wallet.db");
    let prefix = format!("{}:", reference::testenv::unique_name("conform_kill"));
    let (code, out) = conform_killing(
        &[
            &format!("--ledger sqlite://{}", db.display()),
            &format!("--kv {redis} --kv-prefix {prefix}"),
        ],
        dir.path(),
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("process_kill_restart     pass"), "{out}");
    let log = std::fs::read_to_string(dir.path().join("target.log")).expect("the target's log");
    assert!(
        log.matches("redrain serve: scenario `conform`").count() == 2,
        "the target was started twice:\n{log}"
    );
}

/// A wallet whose state lives in its process (the memory stores) forgets what
/// it answered when killed: the replays are first acceptances, not duplicates.
#[test]
fn a_target_that_forgets_on_restart_is_caught() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let (code, out) = conform_killing(&["--ledger memory --kv memory"], dir.path());
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("process_kill_restart     FAIL"), "{out}");
    assert!(out.contains("the rules say `duplicate`"), "{out}");
}

/// Without a way to kill the target the case is skipped, and says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kill_case_is_skipped_without_a_start_or_restart_command() {
    let report = run_only(Shadow::Honest, false, Some("process_kill")).await;
    let case = &report.cases[0];
    assert_eq!(case.name, "process_kill_restart");
    assert!(
        case.skipped
            .as_deref()
            .is_some_and(|w| w.contains("--start-cmd")),
        "{case:?}"
    );
    assert!(simulator::live::conform::render(&report).contains("SKIP"));
}

/// Windows one millisecond late (`start < now <= end`) pass every probe a
/// running clock can make; on a frozen clock the first millisecond of each
/// child is answered by the child before (I6) and the activity's last one is
/// still open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windows_one_millisecond_late_are_caught() {
    let report = run_only(Shadow::WindowsOneMsLate, false, Some("windows")).await;
    let failed = failing(&report);
    let lines = &failed
        .iter()
        .find(|(name, _)| name == "windows_at_their_edges")
        .unwrap_or_else(|| panic!("{failed:#?}"))
        .1;
    assert!(lines.iter().any(|l| l.starts_with("I6")), "{lines:#?}");
    assert!(
        lines.iter().any(|l| l.contains("the rules say `issued`")),
        "{lines:#?}"
    );
}

/// The same probes pass on the reference, and a target without clock_freeze
/// has the case skipped, saying why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windows_at_their_edges_pass_on_the_reference() {
    let report = run_only(Shadow::Honest, false, Some("windows")).await;
    let case = &report.cases[0];
    assert_eq!(case.name, "windows_at_their_edges");
    assert!(case.skipped.is_none() && case.passed, "{case:#?}");
    assert_eq!(case.requests, 8);
}
