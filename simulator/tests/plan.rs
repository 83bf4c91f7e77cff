//! The capacity planner: the seed's sync-crediting figure found by search (152
//! DB instances for 300k TPS), the cheapest credit TPS that drains the rain's
//! backlog in time, and the `--slo` language with its error messages.

mod common;

use common::{runtime, scenarios_dir};

use std::path::Path;

use simulator::engine::run_scenario;
use simulator::options::RunOptions;
use simulator::plan::{Knob, Measured, Slo, parse_slo, plan, render_plan};
use simulator::scenario::Scenario;

fn check(input: &str, expected: Result<Slo, &str>) {
    let got = parse_slo(input).map_err(|e| e.to_string());
    match expected {
        Ok(slo) => assert_eq!(got, Ok(slo), "{input}"),
        Err(text) => {
            let message = got.expect_err(input);
            assert_eq!(message, text, "{input}");
        }
    }
}

const VALID: &str = "valid keys: drain_s_max, visible_lag_ms_max, coupon_p99_ms_max, refused_max, counter_error_pct_max, delay_p99_ms_max";

#[test]
fn slo_parsing() {
    check(
        "drain_s_max=600,visible_lag_ms_max=0,coupon_p99_ms_max=500",
        Ok(Slo {
            drain_s_max: Some(600.0),
            visible_lag_ms_max: Some(0),
            coupon_p99_ms_max: Some(500),
            ..Slo::default()
        }),
    );
    check(
        " refused_max = 0 , counter_error_pct_max=0.5, delay_p99_ms_max=1000, ",
        Ok(Slo {
            refused_max: Some(0),
            counter_error_pct_max: Some(0.5),
            delay_p99_ms_max: Some(1000),
            ..Slo::default()
        }),
    );
    check(
        "drain_s_max=90.5",
        Ok(Slo {
            drain_s_max: Some(90.5),
            ..Slo::default()
        }),
    );
    check(
        "",
        Err(&format!(
            "the SLO is empty: give key=value pairs separated by commas ({VALID})"
        )),
    );
    check(
        " , ",
        Err(&format!(
            "the SLO is empty: give key=value pairs separated by commas ({VALID})"
        )),
    );
    check(
        "drain_s=600",
        Err(&format!("unknown SLO key `drain_s` ({VALID})")),
    );
    check(
        "refused_max",
        Err(&format!(
            "SLO item `refused_max` is not key=value ({VALID})"
        )),
    );
    check(
        "refused_max=-1",
        Err("SLO key `refused_max`: `-1` is not a whole number of 0 or more"),
    );
    check(
        "refused_max=0.5",
        Err("SLO key `refused_max`: `0.5` is not a whole number of 0 or more"),
    );
    check(
        "visible_lag_ms_max=",
        Err("SLO key `visible_lag_ms_max`: `` is not a whole number of 0 or more"),
    );
    check(
        "drain_s_max=soon",
        Err("SLO key `drain_s_max`: `soon` is not a finite number of 0 or more"),
    );
    check(
        "drain_s_max=inf",
        Err("SLO key `drain_s_max`: `inf` is not a finite number of 0 or more"),
    );
    check(
        "counter_error_pct_max=-0.1",
        Err("SLO key `counter_error_pct_max`: `-0.1` is not a finite number of 0 or more"),
    );
    check(
        "refused_max=0,drain_s_max=1,refused_max=2",
        Err("SLO key `refused_max` is given twice"),
    );
}

/// Synchronous rain cash offered at a 300k QPS plateau on the seed's database.
fn sync_plateau(dir: &Path, qps: u64, instances: u64) -> Scenario {
    let tree = scenarios_dir().join("activities/evening.toml");
    let text = format!(
        r#"
[run]
name = "sync-plateau"
seed = 1
activity_file = "{}"
activity_id = 2027
start = 2027-02-05T20:00:00+08:00
sample_rate = 0.0002

[population]
users = 300000000

[traffic]
duplicate_rate = 0.0
conflict_rate = 0.0
malformed_rate = 0.0
rains = 1
stages = 3
withdraw_max_cents = 0

[tokens]
keys = "dev"

[capacity]
db_instances = {instances}
db_tps_each = 2055.4
db_contention = 0.000274

[[phase]]
name = "sync rain"
start_s = 0
duration_s = 10
curve = "plateau"
peak_qps = {qps}
scenes = [304]
mix = {{ cash = 1 }}
"#,
        tree.display()
    );
    let path = dir.join("sync-plateau.toml");
    std::fs::write(&path, text).expect("write");
    Scenario::load(&path).unwrap_or_else(|e| panic!("{e}"))
}

/// Seed 000: synchronous crediting needed 152 DB instances for 300k TPS. The
/// planner, asked for no refusals, finds it by running the engine.
#[test]
fn plan_finds_the_seeds_152_db_instances_for_300k_sync_tps() {
    let dir = tempfile::tempdir().expect("tempdir");
    let scenario = sync_plateau(dir.path(), 300_000, 100);
    let slo = parse_slo("refused_max=0").expect("slo");
    let report = runtime()
        .block_on(plan(&scenario, &slo, &RunOptions::default()))
        .expect("plan");
    println!("{}", render_plan(&report));
    assert!(report.met, "{}", render_plan(&report));
    let db = report.chosen.db_instances;
    assert!(
        (147..=157).contains(&db),
        "planned {db} DB instances, seed 152 ± 3%"
    );
    let search = report
        .searches
        .iter()
        .find(|s| s.knob == Knob::DbInstances)
        .expect("the DB knob was searched");
    assert!(
        search.steps.iter().any(|s| !s.met),
        "the search saw a miss below"
    );
    assert!(search.steps.iter().all(|s| s.met == s.missed.is_empty()));
    assert!(report.runs <= report.runs_max);
    assert_eq!(Measured::of(&report.evidence).refused, 0);
    assert!(report.evidence.passed());
}

/// The rain's token backlog must drain within 10 minutes: the planner finds a
/// credit TPS that does, and 10% less does not.
#[test]
fn plan_finds_the_cheapest_credit_tps_that_drains_the_rain_in_time() {
    let scenario = Scenario::load(&scenarios_dir().join("red-packet-rain.toml"))
        .unwrap_or_else(|e| panic!("{e}"));
    let options = RunOptions {
        sample_rate: Some(0.0002),
        ..RunOptions::default()
    };
    let slo = parse_slo("drain_s_max=600").expect("slo");
    let report = runtime()
        .block_on(plan(&scenario, &slo, &options))
        .expect("plan");
    println!("{}", render_plan(&report));
    assert!(report.met, "{}", render_plan(&report));
    let tps = report.chosen.credit_tps;
    assert!(
        tps > 0 && tps < 300_000,
        "credit TPS {tps}: less than the seed's budget drains in 10 min"
    );
    let drain_s = Measured::of(&report.evidence).drain_s;
    assert!(drain_s <= 600.0, "evidence drained in {drain_s} s");
    // The gates are sized too (to refuse nothing), below what the profile buys.
    assert!(
        report.chosen.db_instances < scenario.capacity.db_instances,
        "DB instances {} for 70k TPS, not the profile's {}",
        report.chosen.db_instances,
        scenario.capacity.db_instances
    );
    assert_eq!(Measured::of(&report.evidence).refused, 0, "nothing refused");
    // The evidence record reproduces by the plan command, not a plain run.
    assert!(
        report.evidence.reproduce.starts_with("redrain plan ")
            && report
                .evidence
                .reproduce
                .contains("--slo \"drain_s_max=600\""),
        "{}",
        report.evidence.reproduce
    );
    assert_eq!(
        parse_slo(&slo.text()).map(|s| s.text()),
        Ok(slo.text()),
        "the SLO prints as --slo takes it"
    );

    let mut less = scenario.clone();
    less.crediting.worker.credit_tps = tps * 9 / 10;
    less.capacity.db_instances = report.chosen.db_instances;
    let slower = runtime()
        .block_on(run_scenario(&less, &options))
        .expect("run");
    let slower_drain_s = Measured::of(&slower.record).drain_s;
    assert!(
        slower_drain_s > 600.0 || !slower.record.passed(),
        "{} TPS drained in {slower_drain_s} s: the plan was not the cheapest",
        tps * 9 / 10
    );
}

/// The hot counter's flush interval is cheaper the longer it is and bounded by
/// how far the live total may trail: the planner finds the longest interval
/// within 1%, shorter than the seed's 1 s on this sampled show.
#[test]
fn plan_finds_the_longest_counter_interval_within_the_error_bound() {
    let scenario =
        Scenario::load(&scenarios_dir().join("fireworks.toml")).unwrap_or_else(|e| panic!("{e}"));
    let options = RunOptions {
        sample_rate: Some(0.0002),
        ..RunOptions::default()
    };
    let slo = parse_slo("counter_error_pct_max=1").expect("slo");
    let report = runtime()
        .block_on(plan(&scenario, &slo, &options))
        .expect("plan");
    println!("{}", render_plan(&report));
    assert!(report.met, "{}", render_plan(&report));
    let interval = report.chosen.counter_interval_ms.expect("a plan-2 counter");
    assert!((100..1000).contains(&interval), "interval {interval} ms");
    assert!(Measured::of(&report.evidence).counter_error_pct <= 1.0);
    let search = report
        .searches
        .iter()
        .find(|s| s.knob == Knob::CounterIntervalMs)
        .expect("searched");
    let longer_met = search
        .steps
        .iter()
        .filter(|s| s.value > interval)
        .any(|s| s.met);
    assert!(
        !longer_met,
        "a longer interval met the bound: {:?}",
        search.steps
    );
}
