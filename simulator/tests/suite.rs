//! `redrain suite`: a passing suite writes its JUnit, verdict and records; planted
//! failures (an impossible threshold, an expected violation that does not happen)
//! fail it; bad input is caught, with file, line and key, before any run; the
//! verdict is in case order whatever the parallelism. Runs stay at ≤ 2000 requests.

mod common;

use common::{scenarios_dir, workspace_dir};

use std::path::{Path, PathBuf};
use std::process::Command;

use simulator::suite::{RunVerdict, Suite, SuiteOptions, SuiteReport, SuiteVerdict, run_suite};

const REQUESTS: u64 = 2000;

fn smoke_path() -> String {
    scenarios_dir().join("smoke.toml").display().to_string()
}

/// A suite over smoke with `seeds`, plus `extra` lines in its case.
fn suite_text(seeds: &str, extra: &str) -> String {
    format!(
        "[suite]\nname = \"t\"\n\n[[case]]\nscenario = \"{}\"\nseeds = {seeds}\nrequests = {REQUESTS}\n{extra}",
        smoke_path()
    )
}

fn write_suite(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("suite.toml");
    std::fs::write(&path, text).expect("write the suite file");
    path
}

fn run(text: &str, parallel: usize) -> (tempfile::TempDir, SuiteReport) {
    let dir = tempfile::tempdir().expect("tempdir");
    let suite = Suite::load(&write_suite(dir.path(), text)).expect("a valid suite");
    let options = SuiteOptions {
        out_dir: Some(dir.path().join("out")),
        parallel: Some(parallel),
        ..SuiteOptions::default()
    };
    let report = run_suite(&suite, &options).expect("the suite runs");
    (dir, report)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn verdict_file(out: &Path) -> SuiteVerdict {
    serde_json::from_str(&read(&out.join("verdict.json"))).expect("verdict.json parses")
}

fn junit(out: &Path) -> quick_junit::Report {
    quick_junit::Report::deserialize_from_str(&read(&out.join("junit.xml")))
        .expect("junit.xml parses as JUnit XML")
}

#[test]
fn passing_suite_writes_junit_verdict_and_records() {
    let text = suite_text(
        "[1, 2]",
        "[[case.threshold]]\npath = \"/totals/entries\"\nmin = 1\n\
         [[case.threshold]]\npath = \"/crediting/drain_ms\"\nmax = 60000.5\n",
    );
    let (dir, report) = run(&text, 2);
    let out = dir.path().join("out");
    assert_eq!(report.exit_code(), 0, "{}", report.render_summary());
    assert!(report.verdict.passed);

    let verdict = verdict_file(&out);
    assert_eq!(verdict, report.verdict);
    assert_eq!(verdict.suite, "t");
    let seeds: Vec<u64> = verdict.runs.iter().map(|r| r.seed).collect();
    assert_eq!(seeds, [1, 2]);

    let xml = read(&out.join("junit.xml"));
    assert!(xml.starts_with("<?xml"), "{xml}");
    assert_eq!(xml.matches("<testsuite ").count(), 1, "{xml}");
    assert_eq!(xml.matches("<testcase ").count(), 2, "{xml}");
    let junit = junit(&out);
    assert_eq!(junit.tests, 2);
    assert_eq!(junit.failures, 0);
    assert_eq!(junit.errors, 0);
    assert_eq!(junit.test_suites.len(), 1);
    let names: Vec<&str> = junit.test_suites[0]
        .test_cases
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(
        names,
        ["smoke seed=1 sample=1.0", "smoke seed=2 sample=1.0"]
    );
    let classname = junit.test_suites[0].test_cases[0].classname.as_ref();
    assert_eq!(
        classname.map(|c| c.as_str()),
        Some(smoke_path().replace("simulator/../", "").as_str())
    );

    for run in &verdict.runs {
        let file = run.record_file.as_deref().expect("a record file");
        let record: reports::RunRecord =
            serde_json::from_str(&read(&out.join(file))).expect("the record parses");
        assert_eq!(record.scenario.seed, run.seed);
        assert_eq!(record.reproduce, run.reproduce);
        assert!(record.totals.entries > 0);
    }
    assert!(out.join("runs/smoke-1-1.0.json").is_file());
}

#[test]
fn impossible_threshold_fails_the_suite_with_exit_1() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = suite_text(
        "[3]",
        "[[case.threshold]]\npath = \"/totals/entries\"\nmax = 0\n",
    );
    let path = write_suite(dir.path(), &text);
    let out = dir.path().join("out");
    let result = Command::new(env!("CARGO_BIN_EXE_redrain"))
        .arg("suite")
        .arg(&path)
        .arg("--out")
        .arg(&out)
        .env("CI", "true")
        .output()
        .expect("redrain runs");
    let stdout = String::from_utf8_lossy(&result.stdout);
    assert_eq!(result.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("FAIL"), "{stdout}");
    assert!(stdout.contains("redrain run "), "{stdout}");

    let verdict = verdict_file(&out);
    assert!(!verdict.passed);
    let run = &verdict.runs[0];
    assert!(!run.passed);
    assert!(run.violations.is_empty(), "{run:?}");
    assert_eq!(run.failed_thresholds.len(), 1);
    let failed = &run.failed_thresholds[0];
    assert_eq!(failed.threshold.path, "/totals/entries");
    assert!(failed.message.contains("above max 0"), "{}", failed.message);
    assert!(run.reproduce.starts_with("redrain run ") && run.reproduce.contains("--seed 3"));

    let junit = junit(&out);
    assert_eq!((junit.tests, junit.failures, junit.errors), (1, 1, 0));
    let xml = read(&out.join("junit.xml"));
    assert!(xml.contains("<failure"), "{xml}");
    assert!(xml.contains("/totals/entries"), "{xml}");
    assert!(
        xml.contains(&format!("reproduce: {}", run.reproduce)),
        "{xml}"
    );
}

#[test]
fn expected_violation_that_does_not_happen_fails() {
    let (dir, report) = run(&suite_text("[4]", "expect_violations = [\"I5\"]\n"), 1);
    assert_eq!(report.exit_code(), 1);
    let run = &report.verdict.runs[0];
    assert!(!run.passed);
    assert!(run.violations.is_empty());
    assert_eq!(run.missing_violations, ["I5"]);
    let xml = read(&dir.path().join("out/junit.xml"));
    assert!(xml.contains("I5 expected to be violated but held"), "{xml}");
}

#[test]
fn a_threshold_on_a_path_not_in_the_record_fails() {
    let text = suite_text(
        "[5]",
        "[[case.threshold]]\npath = \"/totals/entires\"\nmin = 1\n",
    );
    let (_dir, report) = run(&text, 1);
    assert_eq!(report.exit_code(), 1);
    let failed = &report.verdict.runs[0].failed_thresholds[0];
    assert_eq!(failed.actual, None);
    assert!(
        failed.message.contains("not in the record"),
        "{}",
        failed.message
    );
    assert!(failed.message.contains("entries"), "{}", failed.message);
}

#[test]
fn parallel_runs_report_in_case_order() {
    let text = format!(
        "{}\n[[case]]\nscenario = \"{}\"\nseeds = [9, 8]\nrequests = 1500\n",
        suite_text("[7, 6]", ""),
        smoke_path()
    );
    let without_wall = |report: &SuiteReport| -> Vec<RunVerdict> {
        let mut runs = report.verdict.runs.clone();
        for run in &mut runs {
            run.wall_ms = 0;
        }
        runs
    };
    let (_one_dir, one) = run(&text, 1);
    let (two_dir, two) = run(&text, 2);
    assert_eq!(one.parallel, 1);
    assert_eq!(two.parallel, 2);
    let seeds: Vec<u64> = two.verdict.runs.iter().map(|r| r.seed).collect();
    assert_eq!(seeds, [7, 6, 9, 8]);
    assert_eq!(without_wall(&one), without_wall(&two));
    let names: Vec<String> = junit(&two_dir.path().join("out")).test_suites[0]
        .test_cases
        .iter()
        .map(|c| c.name.to_string())
        .collect();
    let expected: Vec<String> = two.verdict.runs.iter().map(|r| r.name.clone()).collect();
    assert_eq!(names, expected);
}

#[test]
fn a_run_stopped_by_an_operating_error_is_an_error_and_the_others_go_on() {
    // Smoke on a SQLite file in a directory that does not exist: the ledger
    // cannot be opened, so the run stops before any traffic.
    let dir = tempfile::tempdir().expect("tempdir");
    let activities = scenarios_dir().join("activities");
    let broken = read(Path::new(&smoke_path()))
        .replace("name = \"smoke\"", "name = \"unopenable\"")
        .replace(
            "activity_file = \"activities/",
            &format!("activity_file = \"{}/", activities.display()),
        )
        + &format!(
            "\n[stores]\nledger = \"sqlite://{}/no/such/dir/ledger.db\"\n",
            dir.path().display()
        );
    let broken_path = dir.path().join("unopenable.toml");
    std::fs::write(&broken_path, broken).expect("write the scenario");
    let text = format!(
        "{}\n[[case]]\nscenario = \"{}\"\nseeds = [1]\nrequests = 100\n",
        suite_text("[1]", ""),
        broken_path.display()
    );
    let (dir, report) = run(&text, 2);
    assert_eq!(report.exit_code(), 2, "{}", report.render_summary());
    let [good, bad] = report.verdict.runs.as_slice() else {
        panic!("two runs: {:?}", report.verdict.runs)
    };
    assert!(good.passed && good.error.is_none(), "{good:?}");
    assert!(!bad.passed);
    assert!(bad.error.is_some());
    assert_eq!(bad.record_file, None);
    assert!(
        bad.reproduce.contains("unopenable.toml --seed 1"),
        "{}",
        bad.reproduce
    );
    let junit = junit(&dir.path().join("out"));
    assert_eq!((junit.tests, junit.failures, junit.errors), (2, 0, 1));
    assert!(report.render_summary().contains("ERROR"));
}

/// Loading `text` fails at `line`, naming `key` and saying `message`.
#[track_caller]
fn check_bad(text: &str, line: usize, key: &str, message: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_suite(dir.path(), text);
    let error = Suite::load(&path).expect_err("bad input");
    assert_eq!(error.origin, path.display().to_string(), "{error}");
    assert_eq!(error.line, Some(line), "{error}");
    assert_eq!(error.key_path, key, "{error}");
    assert!(error.message.contains(message), "{error}");
}

#[test]
fn bad_suite_files_name_file_line_and_key() {
    let case = |extra: &str| suite_text("[1]", extra);
    // Lines: 1 [suite], 2 name, 4 [[case]], 5 scenario, 6 seeds, 7 requests, 8.. extra.
    // A threshold's own checks point at its `[[case.threshold]]` line.
    check_bad(
        &case("seeds_typo = 1\n"),
        8,
        "case[0].seeds_typo",
        "unknown field",
    );
    check_bad(
        &case("[[case.threshold]]\npath = \"/totals/entries\"\nmxa = 3\n"),
        10,
        "case[0].threshold[0].mxa",
        "unknown field `mxa`",
    );
    check_bad(
        &case("[[case.threshold]]\npath = \"/totals/entries\"\n"),
        8,
        "case[0].threshold[0].max",
        "give min, max or both",
    );
    check_bad(
        &case("[[case.threshold]]\npath = \"totals\"\nmin = 1\n"),
        8,
        "case[0].threshold[0].path",
        "not a JSON pointer",
    );
    check_bad(
        &case("sample_rates = [0.0]\n"),
        8,
        "case[0].sample_rates",
        "(0, 1]",
    );
    check_bad(
        &case("sample_rates = [1.5]\n"),
        8,
        "case[0].sample_rates",
        "(0, 1]",
    );
    check_bad(
        &case("expect_violations = [\"I9\"]\n"),
        8,
        "case[0].expect_violations",
        "`I9` is not one of",
    );
    check_bad(
        &suite_text("[1, 1]", ""),
        6,
        "case[0].seeds",
        "listed twice",
    );
    check_bad(
        &suite_text("[]", ""),
        6,
        "case[0].seeds",
        "at least one seed",
    );
    check_bad(
        &suite_text("[1]", "").replace("requests = 2000", "requests = 0"),
        7,
        "case[0].requests",
        "not in 1..=",
    );
    check_bad(
        &suite_text("[1]", "").replace("name = \"t\"", "name = \"a/b\""),
        2,
        "suite.name",
        "names the output directory",
    );
    check_bad(
        "[suite]\nname = \"t\"\nparallel = 65\n",
        3,
        "suite.parallel",
        "more than 64",
    );
    check_bad(
        "[suite]\nname = \"t\"\n",
        1,
        "case",
        "at least one [[case]]",
    );
    check_bad(
        "[suite]\nname = \"t\"\nparalel = 2\n",
        3,
        "suite.paralel",
        "unknown field",
    );
}

#[test]
fn a_missing_scenario_is_reported_before_any_run() {
    let text = format!(
        "{}\n[[case]]\nscenario = \"no-such-scenario.toml\"\nseeds = [1]\n",
        suite_text("[1]", "")
    );
    check_bad(&text, 10, "case[1].scenario", "cannot read");

    // Through the CLI: exit 2, the file and line on stderr, and nothing ran.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_suite(dir.path(), &text);
    let out = dir.path().join("out");
    let result = Command::new(env!("CARGO_BIN_EXE_redrain"))
        .arg("suite")
        .arg(&path)
        .arg("--out")
        .arg(&out)
        .env("CI", "true")
        .output()
        .expect("redrain runs");
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert_eq!(result.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("{}:10: case[1].scenario", path.display())),
        "{stderr}"
    );
    assert!(
        !out.exists(),
        "a run started before the bad input was found"
    );
}

#[test]
fn only_that_matches_nothing_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let suite = Suite::load(&write_suite(dir.path(), &suite_text("[1]", ""))).expect("valid");
    let options = SuiteOptions {
        out_dir: Some(dir.path().join("out")),
        only: Some("no-such-name".to_owned()),
        ..SuiteOptions::default()
    };
    let error = run_suite(&suite, &options).expect_err("nothing to run");
    assert!(format!("{error:#}").contains("no-such-name"), "{error:#}");
}

#[test]
fn a_combination_two_cases_repeat_gets_the_case_number() {
    let text = format!(
        "{}\n[[case]]\nscenario = \"{}\"\nseeds = [2, 1]\nrequests = 1000\n",
        suite_text("[1]", ""),
        smoke_path()
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let suite = Suite::load(&write_suite(dir.path(), &text)).unwrap_or_else(|e| panic!("{e}"));
    let labels: Vec<&str> = suite.runs.iter().map(|r| r.label.as_str()).collect();
    assert_eq!(labels, ["smoke-1-1.0", "smoke-2-1.0", "smoke-1-1.0-case2"]);
    let names: Vec<&str> = suite.runs.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "smoke seed=1 sample=1.0",
            "smoke seed=2 sample=1.0",
            "smoke seed=1 sample=1.0 case=2"
        ]
    );
}

#[test]
fn the_quick_suite_plans_every_profile() {
    let path = workspace_dir().join("ci/quick.toml");
    let suite = Suite::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(suite.name, "quick");
    let smoke: Vec<_> = suite
        .runs
        .iter()
        .filter(|r| r.scenario.name == "smoke")
        .collect();
    assert_eq!(smoke.len(), 3);
    assert!(smoke.iter().any(|r| r.seed == 20270209));
    for run in &smoke {
        assert!(run.scenario.path.ends_with("scenarios/smoke.toml"));
        assert_eq!(run.sample_rate, 1.0);
        assert_eq!(run.thresholds.len(), 2);
    }
    let profiles: std::collections::BTreeSet<&str> = suite
        .runs
        .iter()
        .map(|r| r.scenario.name.as_str())
        .collect();
    for profile in [
        "smoke",
        "red-packet-rain",
        "card-collection",
        "fireworks",
        "spring-festival-eve",
        "exhaustion",
    ] {
        assert!(profiles.contains(profile), "ci/quick.toml lacks {profile}");
    }
    for run in &suite.runs {
        assert!(!run.scenario.path.to_string_lossy().contains(".."));
        // Samples of the profiles; the seconds-long scenarios run whole.
        assert!(
            run.sample_rate <= 0.001
                || ["smoke", "exhaustion"].contains(&run.scenario.name.as_str()),
            "{} at {}",
            run.scenario.name,
            run.sample_rate
        );
    }
}
