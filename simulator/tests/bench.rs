//! The benchmarks run end to end at a tiny size, so they cannot rot. Their figures
//! are printed by `redrain bench …`, never asserted here.

mod common;

use common::{runtime, scenarios_dir};

use simulator::bench::counter::{bench_counter, render_counter};
use simulator::bench::coupons::{bench_coupons, render_coupons};
use simulator::bench::ledger::{bench_ledger, render};
use simulator::bench::tokens::{bench_tokens, render_tokens};

#[test]
fn the_benchmarks_run_and_print_every_path() {
    let runtime = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger = runtime
        .block_on(bench_ledger(50, dir.path()))
        .expect("ledger bench");
    assert!(
        ledger.len() >= 6,
        "memory and SQLite rows, plus server rows when set"
    );
    assert!(
        ledger
            .iter()
            .filter(|r| !r.path.starts_with("skipped"))
            .all(|r| r.credits > 0 && r.per_s() > 0.0),
        "{ledger:?}"
    );
    assert!(render(&ledger).contains("sqlite file (WAL, synchronous=NORMAL)"));
    let tokens = runtime
        .block_on(bench_tokens(50, dir.path()))
        .expect("token bench");
    let table = render_tokens(&tokens);
    for path in [
        "ed25519 sign",
        "ed25519 verify_strict",
        "token mode",
        "worker drain",
        "wallet.issue sync",
    ] {
        assert!(table.contains(path), "{path} missing:\n{table}");
    }
}

#[test]
fn the_coupon_and_counter_benchmarks_run_and_print_every_path() {
    let runtime = runtime();
    let coupons = runtime.block_on(bench_coupons(200)).expect("coupon bench");
    assert_eq!(coupons.len(), 3);
    // The bench itself errors unless every order was issued; this is the contract.
    assert!(coupons.iter().all(|r| r.orders == 200 && r.issued == 200));
    let table = render_coupons(&coupons);
    for path in [
        "wallet.issue sync",
        "pipeline, merge_max 100",
        "pipeline, merge_max 1",
        "VIRTUAL time",
    ] {
        assert!(table.contains(path), "{path} missing:\n{table}");
    }

    let counter = runtime
        .block_on(bench_counter(20_000))
        .expect("counter bench");
    let table = render_counter(&counter);
    for plan in ["plan 1", "plan 2"] {
        assert!(table.contains(plan), "{plan} missing:\n{table}");
    }
    let [plan1, plan2] = [&counter.rows[0], &counter.rows[1]];
    assert!(plan1.plan.starts_with("plan 1") && plan2.plan.starts_with("plan 2"));
    assert!(
        plan2.kv_ops() < plan1.kv_ops(),
        "plan 2 must make fewer KV calls:\n{table}"
    );
    // Plan 2 shows the exact total once its final tick has flushed everything.
    assert_eq!(plan2.shown_end, 20_000, "{table}");
    assert_eq!(plan1.shown_end, 20_000, "{table}");
}

#[test]
fn the_kv_benchmark_runs_on_redis() {
    let Some(url) = reference::testenv::service_url(
        reference::testenv::REDIS,
        "the_kv_benchmark_runs_on_redis",
    ) else {
        return;
    };
    let runtime = runtime();
    let rows = runtime
        .block_on(simulator::bench::kv::bench_kv(&url, 1000))
        .expect("kv bench");
    // The bench errors unless the counter shows exactly the units granted.
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].calls, 1000);
    assert_eq!(rows[1].calls, 10);
    let table = simulator::bench::kv::render_kv(&url, &rows);
    assert!(table.contains("merged consume (100 per call)"), "{table}");
}

#[test]
fn bench_sim_runs_a_profile_and_reports_speed_and_profile() {
    let runtime = runtime();
    let rain = scenarios_dir().join("red-packet-rain.toml");
    let rows = runtime
        .block_on(simulator::bench::sim::bench_sim(&[(rain, Some(0.00002))]))
        .expect("bench sim");
    assert_eq!(rows.len(), 1);
    let row = &rows[0];
    assert!(row.passed, "the measured run holds every invariant");
    assert!(row.requests > 0 && row.requests_per_s > 0.0, "{row:?}");
    assert_eq!(row.virtual_s, 150.0, "the rain spans 150 virtual seconds");
    assert!(
        (row.full_wall_s_estimate - row.wall_s / 0.00002).abs() < 1e-6 * row.full_wall_s_estimate,
        "100% is the measured time over the sample: {row:?}"
    );
    let parts: Vec<&str> = row.spent_ms.iter().map(|(part, _)| part.as_str()).collect();
    for part in [
        "requests",
        "credit worker",
        "coupon pipeline",
        "checkers",
        "final state",
    ] {
        assert!(parts.contains(&part), "{part} in the profile: {parts:?}");
    }
    let table = simulator::bench::sim::render_sim(&rows);
    assert!(
        table.contains("red-packet-rain") && table.contains("100% vs real"),
        "{table}"
    );
}
