//! Scenario files are test cases: every file under scenarios/ loads and runs clean
//! at a small sample; runs are deterministic; bad files and bad flags get clear
//! errors and the right exit codes from the `redrain` binary.

mod common;

use common::{redrain, runtime, scenarios_dir, workspace_dir};

use std::path::PathBuf;

use simulator::engine::run_scenario;
use simulator::options::RunOptions;
use simulator::scenario::Scenario;

/// The sample every phased profile runs whole at in the tests (thousands of
/// requests each; the quick suite in CI runs them at larger samples).
const FULL_PROFILE_SAMPLE: f64 = 0.00002;

fn options(requests: u64) -> RunOptions {
    RunOptions {
        requests: Some(requests),
        ..RunOptions::default()
    }
}

#[test]
fn every_scenario_file_loads_and_runs_clean_at_a_small_sample() {
    let mut seen = 0;
    for entry in std::fs::read_dir(scenarios_dir()).expect("scenarios/") {
        let path = entry.expect("entry").path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let scenario = Scenario::load(&path).unwrap_or_else(|e| panic!("{e}"));
        // A phased profile runs whole (every phase, fault and burst) at a tiny
        // sample; one without rates (smoke) sends a count.
        let phased = scenario.phases.iter().any(|p| p.count.is_none());
        let run_options = if phased {
            RunOptions {
                sample_rate: Some(FULL_PROFILE_SAMPLE),
                ..RunOptions::default()
            }
        } else {
            options(2000)
        };
        let output = runtime()
            .block_on(run_scenario(&scenario, &run_options))
            .expect("run");
        assert!(
            output.violations.is_empty(),
            "{}: {:#?}",
            path.display(),
            output.violations
        );
        if phased {
            // Traffic arrived in every phase, the last one included.
            for phase in &scenario.phases {
                let from_s = phase.start_ms / 1000; // an offset from the run's start
                let to_s = from_s + phase.duration_ms.div_ceil(1000);
                let offered: u64 = output.record.series
                    [from_s as usize..(to_s as usize).min(output.record.series.len())]
                    .iter()
                    .map(|s| s.offered)
                    .sum();
                assert!(
                    offered > 0,
                    "{}: phase {} ({from_s}..{to_s} s) sent nothing",
                    scenario.name,
                    phase.name
                );
            }
        } else {
            assert_eq!(output.record.scenario.requests, 2000);
        }
        assert_report_has_its_charts(&scenario, &output.record);
        seen += 1;
    }
    assert!(seen >= 1, "no scenario files found");
}

/// Every profile's report draws the charts its scenario has data for: the
/// traffic, credit delays, KV and DB always; rejections when there were any;
/// the token backlog with token scenes; coupon stock with coupons; the hot
/// counter with one.
fn assert_report_has_its_charts(scenario: &Scenario, record: &reports::RunRecord) {
    let drawn: Vec<&str> = reports::charts(record).iter().map(|c| c.id).collect();
    let mut expected = vec!["throughput", "kv-ops", "db-ops", "credit-delay"];
    if record.series.iter().any(|s| !s.rejected.is_empty()) {
        expected.push("rejections");
    }
    if scenario.token_keys.is_some() {
        expected.push("backlog");
    }
    if record.series.iter().any(|s| !s.stock.is_empty()) {
        expected.push("coupon-stock");
    }
    if scenario.counter.is_some() {
        expected.push("counter");
    }
    for id in &expected {
        assert!(
            drawn.contains(id),
            "{}: no {id} chart in {drawn:?}",
            scenario.name
        );
    }
    let html = reports::html::render_html(record);
    assert_eq!(
        html.matches("<svg").count(),
        drawn.len(),
        "{}: every chart inline in the HTML",
        scenario.name
    );
}

#[test]
fn same_seed_same_run_other_seed_other_run() {
    let scenario = Scenario::load(&scenarios_dir().join("smoke.toml")).expect("smoke");
    let run = |seed: u64, ledger: &str| {
        let options = RunOptions {
            seed: Some(seed),
            requests: Some(3000),
            ledger_url: Some(ledger.to_owned()),
            ..RunOptions::default()
        };
        runtime()
            .block_on(run_scenario(&scenario, &options))
            .expect("run")
            .record
    };
    let a = run(1, "memory");
    let b = run(1, "memory");
    let on_sqlite = run(1, "sqlite::memory:");
    let c = run(2, "memory");
    assert_eq!(a.history_hash, b.history_hash);
    assert_eq!(a.outcomes, b.outcomes);
    assert_eq!(a.totals, b.totals);
    assert_eq!(
        a.history_hash, on_sqlite.history_hash,
        "the SQLite ledger answers exactly like the memory one"
    );
    assert_ne!(a.history_hash, c.history_hash);
}

fn bad_scenario(edit: impl Fn(&str) -> String) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let original = std::fs::read_to_string(scenarios_dir().join("smoke.toml")).expect("smoke");
    let tree = std::fs::read_to_string(scenarios_dir().join("activities/spring-festival.toml"))
        .expect("tree");
    std::fs::create_dir(dir.path().join("activities")).expect("mkdir");
    std::fs::write(dir.path().join("activities/spring-festival.toml"), tree).expect("write tree");
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, edit(&original)).expect("write");
    (dir, path)
}

fn check_bad(edit: impl Fn(&str) -> String, expected: &str) {
    let (_dir, path) = bad_scenario(edit);
    let err = Scenario::load(&path)
        .expect_err("must be rejected")
        .to_string();
    assert!(
        err.contains("bad.toml:") || err.contains("spring-festival.toml"),
        "error names the file: {err}"
    );
    assert!(err.contains(expected), "`{err}` lacks `{expected}`");
}

#[test]
fn bad_scenarios_name_file_line_and_key() {
    check_bad(
        |s| s.replace("users = 2000", "users = 2000\nuser = 3"),
        "bad.toml:14: run.user: unknown field `user`",
    );
    check_bad(
        |s| s.replace("requests = 20000", "requests = 0"),
        "run.requests: 0 is not in 1..=",
    );
    check_bad(
        |s| s.replace("duration_s = 60", "duration_s = 0"),
        "run.duration_s: must be greater than 0",
    );
    check_bad(
        |s| s.replace("duplicate_rate = 0.05", "duplicate_rate = 1.5"),
        "traffic.duplicate_rate: 1.5 is not a share",
    );
    check_bad(
        |s| s.replace("duplicate_rate = 0.05", "duplicate_rate = 0.995"),
        "add up to more than 1",
    );
    check_bad(
        |s| s.replace("activity_id = 2027", "activity_id = 1"),
        "run.activity_id: activity 1 is not in",
    );
    check_bad(
        |s| s.replace("cash = 60", "cash = -1"),
        "bad.toml:16: mix.cash: invalid value: integer `-1`",
    );
    check_bad(
        |s| s.replace("seed = 20270209", "seed = \"x\""),
        "run.seed: invalid type: string",
    );
    check_bad(
        |s| {
            s.replace(
                "start = 2027-02-09T20:00:00+08:00",
                "start = 2027-02-09T20:00:00",
            )
        },
        "run.start: `2027-02-09T20:00:00` needs a date, a time and an offset",
    );
    check_bad(
        |s| s.replace("activities/spring-festival.toml", "activities/missing.toml"),
        "run.activity_file: ",
    );
    check_bad(
        |s| s.replace("activities/spring-festival.toml", "activities/missing.toml"),
        "missing.toml: cannot read",
    );
}

#[test]
fn cli_runs_writes_the_record_and_exits_by_verdict() {
    let dir = tempfile::tempdir().expect("tempdir");
    let json = dir.path().join("run.json");
    let smoke = scenarios_dir().join("smoke.toml");
    let (code, stdout, stderr) = redrain(&[
        "run",
        smoke.to_str().expect("utf8"),
        "--requests",
        "1500",
        "--json",
        json.to_str().expect("utf8"),
    ]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("I1 idempotency      pass"), "{stdout}");
    let record: reports::RunRecord =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("record")).expect("json");
    assert_eq!(record.scenario.requests, 1500);
    assert!(record.passed());

    let (_dir2, bad) = bad_scenario(|s| s.replace("[mix]", "[mixx]"));
    let (code, _, stderr) = redrain(&[
        "run",
        bad.to_str().expect("utf8"),
        "--json",
        json.to_str().expect("utf8"),
    ]);
    assert_eq!(code, 2, "bad input exits 2: {stderr}");
    assert!(
        stderr.contains("bad.toml:") && stderr.contains("unknown field `mixx`"),
        "{stderr}"
    );

    let (code, _, stderr) = redrain(&[
        "run",
        smoke.to_str().expect("utf8"),
        "--ledger",
        "mysql-ish://x",
    ]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("ledger URL `mysql-ish://x`"), "{stderr}");
}

#[test]
fn the_readme_sample_is_the_real_smoke_output() {
    let readme = std::fs::read_to_string(workspace_dir().join("README.md")).expect("README");
    let scenario = Scenario::load(&scenarios_dir().join("smoke.toml")).expect("smoke");
    let record = runtime()
        .block_on(run_scenario(&scenario, &RunOptions::default()))
        .expect("run")
        .record;
    let summary = reports::render_summary(&record);
    let hash_line = format!("history {}", &record.history_hash[..16]);
    assert!(
        readme.contains(&hash_line),
        "README shows another history than `{hash_line}`: regenerate its sample"
    );
    for line in summary.lines().filter(|l| {
        l.starts_with("  issue.") || l.starts_with("  withdraw.") || l.starts_with("  I")
    }) {
        assert!(
            readme.contains(line),
            "README lacks the line `{line}`: regenerate its sample"
        );
    }
}

fn check_bad_phased(edit: impl Fn(&str) -> String, expected: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let original =
        std::fs::read_to_string(scenarios_dir().join("red-packet-rain.toml")).expect("rain");
    let tree =
        std::fs::read_to_string(scenarios_dir().join("activities/evening.toml")).expect("tree");
    std::fs::create_dir(dir.path().join("activities")).expect("mkdir");
    std::fs::write(dir.path().join("activities/evening.toml"), tree).expect("write tree");
    let path = dir.path().join("bad.toml");
    let edited = edit(&original);
    assert_ne!(edited, original, "the edit must change the file");
    std::fs::write(&path, edited).expect("write");
    let err = Scenario::load(&path)
        .expect_err("must be rejected")
        .to_string();
    assert!(err.contains("bad.toml:"), "error names the file: {err}");
    assert!(err.contains(expected), "`{err}` lacks `{expected}`");
}

#[test]
fn bad_phases_population_capacity_and_faults_name_the_key() {
    check_bad_phased(
        |s| s.replacen("peak_qps = 1800000", "peak_qps = 0", 1),
        "phase[0].peak_qps: 0 must be above 0",
    );
    check_bad_phased(
        |s| s.replacen("curve = \"points\"", "curve = \"zigzag\"", 1),
        "phase[0].curve: unknown variant `zigzag`",
    );
    check_bad_phased(
        |s| s.replacen("points = [[0.0, 0.0],", "points = [[0.5, 0.0],", 1),
        "phase[0].points: give [time share, level share] pairs from time 0 to 1",
    );
    check_bad_phased(
        |s| s.replacen("scenes = [301]", "scenes = [999]", 1),
        "phase[0].scenes: scene 999 is not in activity 2027",
    );
    check_bad_phased(
        |s| s.replacen("scenes = [301]", "scenes = [302]", 1),
        "phase[0].mix.cash: the phase's scenes have no cash scene",
    );
    check_bad_phased(
        |s| s.replacen("rain_id = 0\n", "rain_id = 0\nrate = 3\n", 1),
        "unknown field `rate`",
    );
    check_bad_phased(
        |s| s.replace("sample_rate = 0.01", "sample_rate = 1.5"),
        "run.sample_rate: 1.5 is not a share in (0, 1]",
    );
    check_bad_phased(
        |s| s.replace("zipf = 0.6", "zipf = -1.0"),
        "population.zipf: -1 is not an exponent",
    );
    check_bad_phased(
        |s| s.replace("apps = [40, 20, 10, 10, 8, 6, 4, 2]", "apps = [1, 2]"),
        "population.apps: give 8 weights",
    );
    check_bad_phased(
        |s| s.replace("duration_s = 150", "duration_s = 30"),
        "run.duration_s: 30 s ends before the last phase (80 s)",
    );
    check_bad_phased(
        |s| s.replace("db_contention = 0.000274", "db_contention = 1.5"),
        "capacity: db_contention",
    );
    check_bad_phased(
        |s| s.replace("open_rate = 0.05", "open_rate = 2.0"),
        "behaviour.open_rate: 2 is not a share",
    );
    check_bad_phased(
        |s| {
            s.replace(
                "point = \"after_mark\"",
                "point = \"after_mark\"\nfactor = 0.5",
            )
        },
        "fault[0].factor: only a db_slow fault takes `factor`",
    );
    check_bad_phased(
        |s| s.replace("sample_rate = 0.01", "sample_rate = 1.0"),
        "lower the sample rate",
    );
}
