//! The virtual-time engine: byte-identical records for the same scenario and
//! seed, replay of an exported trace, shards that add up, and the seeds' figures
//! reproduced on the model — sync crediting's DB instances, plain async
//! crediting's minutes of delay, and the token scheme hiding them.

mod common;

use common::{load, redrain_at_root, runtime, scenarios_dir};

use std::path::Path;

use simulator::engine::run_scenario;
use simulator::options::{RunOptions, effective_scenario};
use simulator::record::hash::record_difference;
use simulator::scenario::Scenario;
use simulator::trace::{Shard, Trace, TraceHeader, export};

fn options(sample: f64, requests: Option<u64>) -> RunOptions {
    RunOptions {
        sample_rate: Some(sample),
        requests,
        ..RunOptions::default()
    }
}

#[test]
fn same_scenario_and_seed_give_a_byte_identical_record() {
    let scenario = load("spring-festival-eve.toml");
    let opts = options(0.0001, Some(15_000));
    let a = runtime()
        .block_on(run_scenario(&scenario, &opts))
        .expect("run");
    let b = runtime()
        .block_on(run_scenario(&scenario, &opts))
        .expect("run");
    assert!(a.violations.is_empty(), "{:#?}", a.violations);
    assert_eq!(record_difference(&a.record, &b.record), None);
    assert!(!a.record.series.is_empty());
    let other = RunOptions {
        seed: Some(scenario.seed + 1),
        ..opts
    };
    let c = runtime()
        .block_on(run_scenario(&scenario, &other))
        .expect("run");
    assert!(record_difference(&a.record, &c.record).is_some());
}

#[test]
fn a_replayed_trace_runs_exactly_like_the_generated_one() {
    let scenario = load("red-packet-rain.toml");
    let opts = options(0.0002, Some(8_000));
    let generated = runtime()
        .block_on(run_scenario(&scenario, &opts))
        .expect("run");
    let effective = effective_scenario(&scenario, &opts);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("rain.jsonl");
    let file = std::fs::File::create(&path).expect("create");
    let (count, hash) = export(
        &TraceHeader::of(&effective, scenario.seed, None),
        Trace::new(&effective, scenario.seed),
        std::io::BufWriter::new(file),
    )
    .expect("export");
    assert_eq!(count, generated.record.trace.ops);
    assert_eq!(hash, generated.record.trace.hash);
    let replay = RunOptions {
        replay: Some(path.clone()),
        ..opts
    };
    let replayed = runtime()
        .block_on(run_scenario(&scenario, &replay))
        .expect("replay");
    assert_eq!(replayed.record.history_hash, generated.record.history_hash);
    assert_eq!(replayed.record.trace.hash, generated.record.trace.hash);
    assert!(
        replayed.record.reproduce.contains("trace replay"),
        "{}",
        replayed.record.reproduce
    );
}

#[test]
fn shard_runs_add_up_to_the_whole_run() {
    let scenario = load("fireworks.toml");
    let whole = runtime()
        .block_on(run_scenario(&scenario, &options(0.0002, Some(6_000))))
        .expect("run");
    let mut ops = 0;
    let mut offered = 0;
    for index in 0..3 {
        let shard = RunOptions {
            shard: Some(Shard { index, count: 3 }),
            ..options(0.0002, Some(6_000))
        };
        let part = runtime()
            .block_on(run_scenario(&scenario, &shard))
            .expect("shard");
        assert!(part.violations.is_empty(), "{:#?}", part.violations);
        assert_eq!(
            part.record.trace.shard.as_deref(),
            Some(format!("{index}/3").as_str())
        );
        ops += part.record.trace.ops;
        offered += part.record.series.iter().map(|s| s.offered).sum::<u64>();
    }
    assert_eq!(ops, whole.record.trace.ops);
    assert_eq!(
        offered,
        whole.record.series.iter().map(|s| s.offered).sum::<u64>()
    );
}

/// Seed 000: real crediting is budgeted at 300k TPS while the rain peaks at
/// 1.8M QPS; crediting asynchronously lags for minutes, and the token scheme
/// keeps the lag out of the wallet page.
#[test]
fn plain_async_crediting_lags_minutes_and_the_token_scheme_hides_it() {
    let scenario = load("red-packet-rain.toml");
    let output = runtime()
        .block_on(run_scenario(&scenario, &options(0.0002, None)))
        .expect("run");
    assert!(output.violations.is_empty(), "{:#?}", output.violations);
    let record = &output.record;
    let delay = record.delay.as_ref().expect("credit delays measured");
    assert!(
        delay.p99_ms >= 60_000,
        "p99 credit delay {} ms: the backlog should take minutes to drain",
        delay.p99_ms
    );
    let peak_backlog = record.series.iter().map(|s| s.backlog).max().unwrap_or(0);
    assert!(peak_backlog > 0);
    let views = &record.views;
    assert!(views.views > 0, "users open the wallet");
    assert_eq!(views.short, 0, "the token scheme shows every award at once");
    assert!(
        views.plain_async_short > 0,
        "plain async crediting would have hidden awards on {} of {} pages",
        views.plain_async_short,
        views.views
    );
}

/// A scenario with synchronous rain cash at 1.8M QPS and `instances` DB instances.
fn sync_rain(dir: &Path, instances: u64) -> Scenario {
    let tree = scenarios_dir().join("activities/evening.toml");
    let text = format!(
        r#"
[run]
name = "sync-rain-{instances}"
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
peak_qps = 1800000
scenes = [304]
mix = {{ cash = 1 }}
"#,
        tree.display()
    );
    let path = dir.join(format!("sync-{instances}.toml"));
    std::fs::write(&path, text).expect("write");
    Scenario::load(&path).unwrap_or_else(|e| panic!("{e}"))
}

/// Seed 000: synchronous crediting needed 152 DB instances for 300k TPS and at
/// least 1152 for 1.8M. On the engine: 152 instances credit about 300k/s of a
/// 1.8M QPS rain and refuse the rest; 1152 credit all of it.
#[test]
fn sync_crediting_needs_1152_db_instances_for_the_rain() {
    let dir = tempfile::tempdir().expect("tempdir");
    let run = |instances| {
        runtime()
            .block_on(run_scenario(
                &sync_rain(dir.path(), instances),
                &RunOptions::default(),
            ))
            .expect("run")
    };
    let small = run(152);
    let rate = |output: &simulator::engine::RunOutput| {
        let plateau: Vec<u64> = output.record.series[1..9]
            .iter()
            .map(|s| s.awarded)
            .collect();
        plateau.iter().sum::<u64>() as f64 / plateau.len() as f64 / output.record.sample_rate
    };
    let credited = rate(&small);
    assert!(
        (credited - 300_000.0).abs() / 300_000.0 < 0.05,
        "152 instances credited {credited:.0}/s"
    );
    let capacity = small.record.capacity.as_ref().expect("capacity modelled");
    assert!(capacity.gates["db"].refused > 0);
    assert!(
        capacity.sync_db_instances_needed.is_some_and(|n| n >= 1152),
        "{:?}",
        capacity.sync_db_instances_needed
    );
    let big = run(1152);
    let credited = rate(&big);
    assert!(
        credited >= 1_700_000.0,
        "1152 instances credited {credited:.0}/s"
    );
    assert!(small.violations.is_empty() && big.violations.is_empty());
}

#[test]
fn cli_exports_hashes_and_replays_a_trace_and_checks_determinism() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("rain.jsonl");
    let file = file.to_str().expect("utf8");
    let pick = ["--sample", "0.0002", "--requests", "3000", "--seed", "9"];
    let mut export = vec![
        "trace",
        "export",
        "scenarios/red-packet-rain.toml",
        "--out",
        file,
    ];
    export.extend(pick);
    let (code, out, err) = redrain_at_root(&export);
    assert_eq!(code, 0, "{err}");
    let hash = out
        .split("trace ")
        .nth(1)
        .expect("hash printed")
        .trim()
        .to_owned();
    let mut hash_args = vec!["trace", "hash", "scenarios/red-packet-rain.toml"];
    hash_args.extend(pick);
    let (code, out, _) = redrain_at_root(&hash_args);
    assert_eq!(code, 0);
    assert!(
        out.contains(&format!("3000 requests · trace {hash}")),
        "{out}"
    );
    let (code, out, err) =
        redrain_at_root(&["trace", "replay", "scenarios/red-packet-rain.toml", file]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&format!("trace {}", &hash[..16])), "{out}");
    assert!(out.contains(&format!("from {file}")), "{out}");
    let mut run = vec![
        "run",
        "scenarios/red-packet-rain.toml",
        "--check-determinism",
    ];
    run.extend(pick);
    let (code, out, err) = redrain_at_root(&run);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("byte-identical"), "{out}");
    assert!(out.contains(&format!("trace {}", &hash[..16])), "{out}");
    // A trace of another scenario is refused before any traffic.
    let (code, _, err) = redrain_at_root(&["trace", "replay", "scenarios/fireworks.toml", file]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("is a trace of scenario `red-packet-rain`"),
        "{err}"
    );
    let (code, _, err) = redrain_at_root(&["run", "scenarios/smoke.toml", "--shard", "4/4"]);
    assert_eq!(code, 2);
    assert!(err.contains("is not a shard"), "{err}");
}

/// The wallet's KV and database go down and come back mid-rain: requests in the
/// outage get a server error (counted, not answered), the worker retries, and
/// once the stores are back everything answered is credited exactly once.
#[test]
fn kv_and_database_outages_fail_requests_but_lose_and_double_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tree = scenarios_dir().join("activities/evening.toml");
    let text = std::fs::read_to_string(scenarios_dir().join("red-packet-rain.toml"))
        .expect("rain")
        .replace("activities/evening.toml", &tree.display().to_string())
        + r#"
[[fault]]
at_s = 6
kind = "kv"
on = false

[[fault]]
at_s = 8
kind = "kv"
on = true

[[fault]]
at_s = 10
kind = "db"
on = false

[[fault]]
at_s = 13
kind = "db"
on = true
"#;
    let path = dir.path().join("outages.toml");
    std::fs::write(&path, text).expect("write");
    let scenario = Scenario::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let output = runtime()
        .block_on(run_scenario(&scenario, &options(0.0002, None)))
        .expect("run");
    assert!(output.violations.is_empty(), "{:#?}", output.violations);
    let outcomes = &output.record.outcomes;
    assert!(
        outcomes.get("error.kv").copied().unwrap_or(0) > 0,
        "{outcomes:?}"
    );
    let during = |from: u64, to: u64, label: &str| -> u64 {
        output.record.series[from as usize..to as usize]
            .iter()
            .map(|s| s.rejected.get(label).copied().unwrap_or(0))
            .sum()
    };
    assert!(during(6, 8, "error.kv") > 0);
    assert_eq!(during(9, 10, "error.kv"), 0, "the KV is back");
    assert_eq!(
        output.record.crediting.as_ref().map(|c| c.backlog_peak > 0),
        Some(true)
    );
}
