//! `redrain load` against a `redrain serve` in the same process: the trace goes
//! out over HTTP, the target drains, its audit export is checked, and the
//! record carries the live figures; `redrain bench http` runs end to end.

mod common;

use common::{ADMIN_TOKEN, broken, load as load_scenario, runtime};

use std::process::Command;
use std::sync::Arc;

use simulator::live::load::{LoadOptions, load};
use simulator::live::serve::{Local, ServeOptions, build};
use simulator::scenario::Scenario;

async fn serve(scenario: &Scenario, rate_scale: f64) -> Local {
    serve_on(scenario, rate_scale, "memory", "").await
}

async fn serve_on(scenario: &Scenario, rate_scale: f64, kv: &str, kv_prefix: &str) -> Local {
    let options = ServeOptions {
        listen: "127.0.0.1:0".parse().expect("address"),
        admin_token: ADMIN_TOKEN.to_owned(),
        stores: simulator::scenario::StoreUrls {
            ledger: "memory".to_owned(),
            kv: kv.to_owned(),
        },
        kv_prefix: kv_prefix.to_owned(),
        rate_scale,
        seed: None,
    };
    let built = build(scenario, &options).await.expect("the server builds");
    Local::start(built.server).await.expect("the server starts")
}

fn options(target: String, rate_scale: f64, seconds: u64) -> LoadOptions {
    LoadOptions {
        target,
        admin_token: ADMIN_TOKEN.to_owned(),
        rate_scale,
        duration_s_max: Some(seconds),
        in_flight_max: 256,
        seed: None,
        journey_users: 4,
        drain_ms_max: 60_000,
        progress: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_load_of_smoke_checks_every_invariant_on_the_target() {
    let scenario = load_scenario("smoke.toml");
    let server = serve(&scenario, 0.25).await;
    let output = load(&scenario, &options(server.url.clone(), 0.25, 8))
        .await
        .expect("the load runs");
    let record = &output.record;
    assert!(record.passed(), "{}", reports::render_summary(record));
    let live = record.live.as_ref().expect("live figures");
    assert!(
        live.sent > 200 && live.sent == live.scheduled - live.dropped,
        "{live:?}"
    );
    assert!(live.errors.is_empty(), "{live:?}");
    assert!(live.journeys > 10, "journeys ran: {live:?}");
    assert!(live.goose_requests >= live.journeys, "{live:?}");
    assert!(live.drained, "{live:?}");
    let latency = live.issue_latency_us.expect("award latencies");
    assert_eq!(latency.count, live.sent, "every latency recorded");
    // What the target holds is what the answers said.
    let issued = output
        .history
        .events
        .iter()
        .filter(|e| matches!(e, simulator::history::Event::Issue { .. }))
        .count() as u64;
    assert_eq!(issued, live.sent);
    assert!(!output.state.ledger.entries.is_empty());
    assert_eq!(output.state.real_stores.map(|r| r.entries), Some(0));
    let figures = reports::figures::key_figures(record);
    assert!(figures.contains_key("issue_latency_us_p99") && figures.contains_key("dropped_sends"));
    assert!(reports::render_summary(record).contains("redrain load · smoke"));
    // A second load finds the target's shadow ledger in use and says so.
    let again = load(&scenario, &options(server.url.clone(), 0.25, 1))
        .await
        .expect_err("refused");
    assert!(again.to_string().contains("already holds"), "{again}");
    let left = server.stop().await.expect("a graceful stop");
    // A target serving the tree at another scale is refused before any traffic.
    let other = serve(&scenario, 1.0).await;
    let mismatch = load(&scenario, &options(other.url.clone(), 0.25, 1))
        .await
        .expect_err("refused");
    assert!(
        mismatch.to_string().contains("--rate-scale 0.25"),
        "{mismatch}"
    );
    assert!(left.drained, "{left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overloaded_target_shows_in_drops_and_latency_not_in_a_slower_schedule() {
    let scenario = load_scenario("smoke.toml");
    let server = serve(&scenario, 1.0).await;
    // One connection for ~330 awards/s: the schedule keeps its pace, the
    // sends that find the connection busy are dropped and counted.
    let mut opts = options(server.url.clone(), 1.0, 4);
    opts.in_flight_max = 1;
    let output = load(&scenario, &opts).await.expect("the load runs");
    let live = output.record.live.as_ref().expect("live figures");
    assert_eq!(live.in_flight_peak, 1);
    assert_eq!(live.sent + live.dropped, live.scheduled, "{live:?}");
    assert!(
        output.record.passed(),
        "{}",
        reports::render_summary(&output.record)
    );
}

#[test]
fn loads_refuse_non_loopback_targets_and_bad_rates() {
    let runtime = runtime();
    let scenario = load_scenario("smoke.toml");
    for (target, scale, says) in [
        ("http://example.com:80", 0.1, "only go to 127.0.0.1"),
        ("https://127.0.0.1:1", 0.1, "only http://"),
        ("not a url", 0.1, "not a URL"),
        ("http://127.0.0.1:1", 0.0, "out of range"),
    ] {
        let error = runtime
            .block_on(load(&scenario, &options(target.to_owned(), scale, 1)))
            .expect_err("refused");
        assert!(error.to_string().contains(says), "{target}: {error}");
    }
}

#[test]
fn the_http_benchmark_runs_beside_wrk_and_goose() {
    let have_wrk = Command::new("wrk").arg("--version").output().is_ok();
    if !have_wrk {
        assert!(
            std::env::var_os("REDRAIN_REQUIRE_SERVICES").is_none(),
            "wrk is required (ci/services.sh installs Debian's package)"
        );
        eprintln!("skipped: wrk is not installed");
        return;
    }
    let out = tempfile::tempdir().expect("tempdir");
    let json = out.path().join("http.json");
    let output = Command::new(env!("CARGO_BIN_EXE_redrain"))
        .current_dir("..")
        .args([
            "bench",
            "http",
            "--seconds",
            "1",
            "--connections",
            "8",
            "--json",
        ])
        .arg(&json)
        .env("REDRAIN_ADMIN_TOKEN", "unused-by-the-bench-itself")
        .output()
        .expect("redrain runs");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for row in [
        "wrk (1 thread)",
        "redrain open-model driver",
        "goose (8 users)",
        "driver per core",
        "memory",
        "sqlite + memory kv",
    ] {
        assert!(text.contains(row), "{row} missing:\n{text}");
    }
    let figures: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("the JSON")).expect("JSON");
    for client in figures["clients"].as_array().expect("clients") {
        assert!(client["requests"].as_u64().unwrap_or(0) > 0, "{client}");
    }
    assert!(
        figures["clients"][1]["every_latency"]
            .as_bool()
            .unwrap_or(false)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_target_whose_kv_remembers_an_earlier_load_is_refused() {
    let Some(redis) = reference::testenv::service_url("REDRAIN_REDIS_URL", "live kv freshness")
    else {
        return;
    };
    let scenario = load_scenario("smoke.toml");
    let prefix = format!("{}:", reference::testenv::unique_name("live_fresh"));
    let first = serve_on(&scenario, 0.25, &redis, &prefix).await;
    load(&scenario, &options(first.url.clone(), 0.25, 1))
        .await
        .expect("the first load runs");
    first.stop().await.expect("a graceful stop");
    // The memory ledger starts empty again; the Redis namespace does not.
    let second = serve_on(&scenario, 0.25, &redis, &prefix).await;
    let refused = load(&scenario, &options(second.url.clone(), 0.25, 1))
        .await
        .expect_err("refused");
    assert!(
        refused.to_string().contains("shadow KV is not fresh"),
        "{refused}"
    );
    second.stop().await.expect("a graceful stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn awards_whose_answer_was_lost_are_sent_again_and_their_credits_named() {
    use reference::http::{Server, ShiftedClock};
    use reference::kv::{Kv, MemoryKv};
    use reference::ledger::{Ledger, MemoryLedger};
    use reference::{Clock, Wallet};
    let unscaled = load_scenario("smoke.toml");
    let mut scenario = unscaled.clone();
    scenario.sample_rate = 0.25;
    scenario.tree = scenario.tree.scaled(0.25);
    let clock = Arc::new(ShiftedClock::starting_at(scenario.start_ms));
    let dyn_clock: Arc<dyn Clock> = clock.clone();
    let real_kv: Arc<dyn Kv> = Arc::new(MemoryKv::new(dyn_clock.clone()));
    let shadow_kv: Arc<dyn Kv> = Arc::new(MemoryKv::new(dyn_clock.clone()));
    let real_ledger: Arc<dyn Ledger> = Arc::new(MemoryLedger::new());
    let mut wallet = Wallet::new(
        Arc::new(scenario.tree.clone()),
        real_ledger,
        real_kv,
        dyn_clock,
    )
    .with_shadow_stores(Arc::new(broken::AnswerLosingLedger::new(7)), shadow_kv);
    if let Some(source) = &scenario.token_keys {
        wallet = wallet.with_keys(Arc::new(source.load(scenario.seed).expect("keys")));
    }
    let config = simulator::live::serve::server_config(&scenario, ADMIN_TOKEN.to_owned());
    let server = Local::start(Server::new(wallet, clock, config))
        .await
        .expect("the server starts");
    let output = load(&unscaled, &options(server.url.clone(), 0.25, 4))
        .await
        .expect("the load runs");
    let record = &output.record;
    let live = record.live.as_ref().expect("live figures");
    let resent = live.errors.get("live.resent").copied().unwrap_or(0);
    assert!(resent > 0, "some answers were lost: {:?}", live.errors);
    assert!(
        !live.errors.contains_key("live.outcome_unknown"),
        "{:?}",
        live.errors
    );
    // Without the second send their entries would be named by no answer (I4),
    // and the budget they consumed released (I2).
    assert!(record.passed(), "{}", reports::render_summary(record));
}
