//! Invariant suites for CI (`redrain suite ci/<name>.toml`): a TOML file names
//! scenarios, seeds and sample rates, the invariants a demonstration case is
//! expected to violate, and thresholds on the records; every combination is run,
//! several at once, and the verdict is written as JUnit XML, as JSON and as one
//! record per run.
//!
//! Everything that can be checked before a run — the suite file, every scenario
//! it names, every run option — is checked before the first run starts, so a typo
//! costs seconds, not a suite. Output is in case order whatever order the runs
//! finish in. This module is shell, not core: it reads the wall clock (run times)
//! and spawns threads; the runs themselves replay exactly as `redrain run` would.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::IsTerminal as _;
use std::num::NonZeroUsize;
use std::ops::Range;
use std::panic::AssertUnwindSafe;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use quick_junit::{NonSuccessKind, Report, TestCase, TestCaseStatus, TestSuite};
use reference::config::{ConfigError, Validator, parse_toml, read_config_file};
use reports::RunRecord;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use toml::Spanned;

use crate::check::Invariant;
use crate::engine::run_scenario;
use crate::options::RunOptions;
use crate::record::reproduce_command;
use crate::scenario::{REQUESTS_MAX, Scenario};

/// Most runs one suite may expand to (cases × seeds × sample rates).
pub const RUNS_MAX: usize = 1_000;
/// Most runs at once.
pub const PARALLEL_MAX: usize = 64;
/// Most thresholds on one case.
pub const THRESHOLDS_MAX: usize = 64;
/// Where a suite writes when `--out` is not given; the suite's name goes below it.
pub const OUT_DIR_DEFAULT: &str = "target/redrain-suite";
/// Length of a suite name (it becomes a directory name).
const NAME_LEN_MAX: usize = 64;

/// How to run a loaded suite: what the command line adds to the file.
#[derive(Debug, Clone, Default)]
pub struct SuiteOptions {
    /// Where to write (default: `target/redrain-suite/<suite name>/`).
    pub out_dir: Option<PathBuf>,
    /// Runs at once, overriding the file's `parallel`; 0 = number of cores.
    pub parallel: Option<usize>,
    /// Run only cases whose scenario name contains this.
    pub only: Option<String>,
    /// Draw a progress bar over runs (only when stderr is a terminal).
    pub progress: bool,
}

/// A loaded suite: every scenario read and validated, every run planned.
#[derive(Debug, Clone)]
pub struct Suite {
    /// The suite file.
    pub path: PathBuf,
    /// `[suite] name`: for people, JUnit and the default output directory.
    pub name: String,
    /// `[suite] parallel`: runs at once, 0 = number of cores.
    pub parallel: usize,
    /// Every run, in case order, then seed order, then sample-rate order.
    pub runs: Vec<PlannedRun>,
}

/// One scenario × seed × sample rate of a case.
#[derive(Debug, Clone)]
pub struct PlannedRun {
    /// Index of the `[[case]]` in the suite file (0-based).
    pub case: usize,
    /// The scenario, loaded.
    pub scenario: Scenario,
    /// The workload seed.
    pub seed: u64,
    /// The share of users simulated.
    pub sample_rate: f64,
    /// What the run is started with.
    pub options: RunOptions,
    /// Invariants this case is expected to violate (ids, e.g. `I5`).
    pub expect_violations: BTreeSet<String>,
    /// Bounds on values of the record.
    pub thresholds: Vec<Threshold>,
    /// Unique within the suite, file-name safe: the record goes to `runs/<label>.json`.
    pub label: String,
    /// Unique within the suite: `<scenario> seed=<s> sample=<r>`, the JUnit test name.
    pub name: String,
}

/// A bound on one value of a [`RunRecord`], addressed by JSON pointer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Threshold {
    /// JSON pointer into the record, e.g. `/crediting/drain_ms`.
    pub path: String,
    /// The value must be at least this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<Bound>,
    /// The value must be at most this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<Bound>,
}

/// A threshold's bound: an integer compares exactly with an integer in the record
/// (cents stay exact), anything else as a float.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Bound {
    /// A TOML integer.
    Integer(i64),
    /// A TOML float.
    Float(f64),
}

/// What a suite found: the verdict written to `verdict.json`, and where it went.
#[derive(Debug, Clone)]
pub struct SuiteReport {
    /// The verdict, runs in case order.
    pub verdict: SuiteVerdict,
    /// The directory holding `junit.xml`, `verdict.json` and `runs/`.
    pub out_dir: PathBuf,
    /// Runs that ran at once.
    pub parallel: usize,
    /// Wall time of the whole suite.
    pub wall: Duration,
}

/// `verdict.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SuiteVerdict {
    /// The suite's name.
    pub suite: String,
    /// Every run passed.
    pub passed: bool,
    /// One entry per run, in case order.
    pub runs: Vec<RunVerdict>,
}

/// One run's verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunVerdict {
    /// `<scenario> seed=<s> sample=<r>` (plus ` case=<n>` when two cases run the
    /// same combination): the JUnit test name.
    pub name: String,
    /// The scenario's name.
    pub scenario: String,
    /// The scenario file.
    pub file: String,
    /// The workload seed.
    pub seed: u64,
    /// The share of users simulated.
    pub sample_rate: f64,
    /// No unexpected violation, every expected one seen, every threshold held, no error.
    pub passed: bool,
    /// Wall time of the run (the only field that differs between two suite runs).
    pub wall_ms: u64,
    /// Violations per violated invariant, expected or not.
    pub violations: BTreeMap<String, u64>,
    /// Invariants the case expects to be violated.
    pub expect_violations: Vec<String>,
    /// Expected violations that did not happen.
    pub missing_violations: Vec<String>,
    /// Thresholds that did not hold.
    pub failed_thresholds: Vec<FailedThreshold>,
    /// The operating error that stopped the run, if any.
    pub error: Option<String>,
    /// The command that runs this again.
    pub reproduce: String,
    /// The record, relative to the output directory (absent when the run failed to run).
    pub record_file: Option<String>,
}

/// A threshold that did not hold, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailedThreshold {
    /// The threshold.
    #[serde(flatten)]
    pub threshold: Threshold,
    /// The record's value there (absent when the path is not in the record).
    pub actual: Option<Value>,
    /// What is wrong, in a sentence.
    pub message: String,
}

// ---------------------------------------------------------------------------
// The suite file.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SuiteFile {
    suite: Spanned<SuiteHeader>,
    #[serde(default)]
    case: Vec<Spanned<CaseFile>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SuiteHeader {
    name: Spanned<String>,
    parallel: Option<Spanned<usize>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseFile {
    scenario: Spanned<String>,
    seeds: Spanned<Vec<u64>>,
    sample_rates: Option<Spanned<Vec<f64>>>,
    requests: Option<Spanned<u64>>,
    expect_violations: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    threshold: Vec<Spanned<ThresholdFile>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ThresholdFile {
    path: String,
    min: Option<Bound>,
    max: Option<Bound>,
}

impl Suite {
    /// Read and validate a suite file and every scenario it names, and plan
    /// every run. Nothing runs here: any error is bad input.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let (text, origin) = read_config_file(path)?;
        let file: SuiteFile = parse_toml(&text, &origin)?;
        let v = Validator::new(&origin, &text);
        let header = file.suite.into_inner();
        let name_span = header.name.span();
        let name = header.name.into_inner();
        check_name(&name).map_err(|m| v.error(name_span, "suite.name", m))?;
        let parallel = match header.parallel {
            Some(parallel) if *parallel.get_ref() > PARALLEL_MAX => {
                return Err(v.error(
                    parallel.span(),
                    "suite.parallel",
                    format!("{} is more than {PARALLEL_MAX}", parallel.get_ref()),
                ));
            }
            Some(parallel) => parallel.into_inner(),
            None => 0,
        };
        if file.case.is_empty() {
            return Err(v.error(0..0, "case", "a suite needs at least one [[case]]"));
        }
        let dir = path.parent().unwrap_or(Path::new("."));
        let mut runs = Vec::new();
        for (index, case) in file.case.into_iter().enumerate() {
            let case_span = case.span();
            plan_case(&v, dir, index, case_span, case.into_inner(), &mut runs)?;
            if runs.len() > RUNS_MAX {
                return Err(v.error(
                    0..0,
                    "case",
                    format!("the suite expands to more than {RUNS_MAX} runs"),
                ));
            }
        }
        label_runs(&mut runs);
        Ok(Suite {
            path: path.to_owned(),
            name,
            parallel,
            runs,
        })
    }
}

fn check_name(name: &str) -> Result<(), String> {
    let fits = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if name.is_empty()
        || name.starts_with('.')
        || name.len() > NAME_LEN_MAX
        || !name.chars().all(fits)
    {
        return Err(format!(
            "`{name}` must be 1 to {NAME_LEN_MAX} of A-Z a-z 0-9 - _ . (not starting with .): it names the output directory"
        ));
    }
    Ok(())
}

/// Validate one `[[case]]` and append its runs.
fn plan_case(
    v: &Validator<'_>,
    dir: &Path,
    index: usize,
    case_span: Range<usize>,
    case: CaseFile,
    runs: &mut Vec<PlannedRun>,
) -> Result<(), ConfigError> {
    let key = |name: &str| format!("case[{index}].{name}");
    let scenario_path = normalize(&dir.join(case.scenario.get_ref()));
    let scenario = Scenario::load(&scenario_path).map_err(|e| match e.line {
        // The scenario file could not be read at all: point at the key naming it.
        None if e.origin == scenario_path.display().to_string() => v.error(
            case.scenario.span(),
            key("scenario"),
            format!("{}: {}", scenario_path.display(), e.message),
        ),
        _ => e,
    })?;
    let seeds = check_seeds(case.seeds).map_err(|(span, m)| v.error(span, key("seeds"), m))?;
    let sample_rates = match case.sample_rates {
        Some(rates) => check_sample_rates(rates, &scenario)
            .map_err(|(span, m)| v.error(span, key("sample_rates"), m))?,
        // Not 1.0: the profile scenarios are sampled (1%, 0.2%) because at full
        // scale they are a hundred times bigger; a suite runs them as written.
        None => vec![scenario.sample_rate],
    };
    let requests = match case.requests {
        Some(requests) if !(1..=REQUESTS_MAX).contains(requests.get_ref()) => {
            return Err(v.error(
                requests.span(),
                key("requests"),
                format!("{} is not in 1..={REQUESTS_MAX}", requests.get_ref()),
            ));
        }
        requests => requests.map(Spanned::into_inner),
    };
    let expect_violations = match case.expect_violations {
        Some(ids) => check_invariant_ids(ids)
            .map_err(|(span, m)| v.error(span, key("expect_violations"), m))?,
        None => BTreeSet::new(),
    };
    if case.threshold.len() > THRESHOLDS_MAX {
        return Err(v.error(
            case_span,
            key("threshold"),
            format!("more than {THRESHOLDS_MAX} thresholds"),
        ));
    }
    let mut thresholds = Vec::new();
    for (t, threshold) in case.threshold.into_iter().enumerate() {
        let span = threshold.span();
        let ThresholdFile { path, min, max } = threshold.into_inner();
        let threshold = Threshold { path, min, max };
        check_threshold(&threshold)
            .map_err(|(field, m)| v.error(span, key(&format!("threshold[{t}].{field}")), m))?;
        thresholds.push(threshold);
    }

    for &seed in &seeds {
        for &sample_rate in &sample_rates {
            runs.push(PlannedRun {
                case: index,
                scenario: scenario.clone(),
                seed,
                sample_rate,
                options: options_for(seed, sample_rate, requests),
                expect_violations: expect_violations.clone(),
                thresholds: thresholds.clone(),
                label: String::new(),
                name: String::new(),
            });
        }
    }
    Ok(())
}

/// A problem with one value of a case, and where it is.
type CaseProblem = (Range<usize>, String);

fn check_seeds(seeds: Spanned<Vec<u64>>) -> Result<Vec<u64>, CaseProblem> {
    let span = seeds.span();
    let seeds = seeds.into_inner();
    if seeds.is_empty() {
        return Err((span, "needs at least one seed".to_owned()));
    }
    let mut seen = BTreeSet::new();
    if let Some(seed) = seeds.iter().find(|&&seed| !seen.insert(seed)) {
        return Err((span, format!("seed {seed} is listed twice")));
    }
    Ok(seeds)
}

fn check_sample_rates(
    rates: Spanned<Vec<f64>>,
    scenario: &Scenario,
) -> Result<Vec<f64>, CaseProblem> {
    let span = rates.span();
    let rates = rates.into_inner();
    if rates.is_empty() {
        return Err((
            span,
            "needs at least one rate (or leave it out for the scenario's own)".to_owned(),
        ));
    }
    for (i, &rate) in rates.iter().enumerate() {
        if !(rate > 0.0 && rate <= 1.0) {
            return Err((span, format!("{rate} is not a share in (0, 1]")));
        }
        if rates[..i].contains(&rate) {
            return Err((span, format!("{rate} is listed twice")));
        }
        // The scenario checks its own rate the same way.
        let users = scenario.population.users;
        if (users as f64) * rate < 1.0 {
            return Err((
                span,
                format!("{rate} of {users} users is less than one user"),
            ));
        }
    }
    Ok(rates)
}

fn check_invariant_ids(ids: Spanned<Vec<String>>) -> Result<BTreeSet<String>, CaseProblem> {
    let span = ids.span();
    let mut checked = BTreeSet::new();
    for id in ids.into_inner() {
        if !Invariant::CHECKED.iter().any(|i| i.id() == id) {
            let known: Vec<&str> = Invariant::CHECKED.iter().map(|i| i.id()).collect();
            let message = format!("`{id}` is not one of {}", known.join(", "));
            return Err((span, message));
        }
        if !checked.insert(id.clone()) {
            return Err((span, format!("`{id}` is listed twice")));
        }
    }
    Ok(checked)
}

fn check_threshold(threshold: &Threshold) -> Result<(), (&'static str, String)> {
    if !threshold.path.starts_with('/') {
        return Err((
            "path",
            format!(
                "`{}` is not a JSON pointer (like /crediting/drain_ms)",
                threshold.path
            ),
        ));
    }
    for (field, bound) in [("min", threshold.min), ("max", threshold.max)] {
        if let Some(Bound::Float(f)) = bound
            && !f.is_finite()
        {
            return Err((field, format!("{f} is not a finite number")));
        }
    }
    match (threshold.min, threshold.max) {
        (None, None) => Err(("max", "give min, max or both".to_owned())),
        (Some(min), Some(max)) if bound_f64(min) > bound_f64(max) => Err((
            "min",
            format!("{} is above max {}", bound_text(min), bound_text(max)),
        )),
        _ => Ok(()),
    }
}

/// The options one run starts with: the one place a case's seed, sample rate and
/// request count become [`RunOptions`]. The suite draws its own bar over runs.
fn options_for(seed: u64, sample_rate: f64, requests: Option<u64>) -> RunOptions {
    RunOptions {
        seed: Some(seed),
        sample_rate: Some(sample_rate),
        requests,
        progress: false,
        ..RunOptions::default()
    }
}

/// Labels `<scenario>-<seed>-<sample>` (file-name safe) and names `<scenario>
/// seed=<s> sample=<r>`; a case that repeats another's scenario, seed and rate
/// (with other requests or thresholds) adds its case number to both.
fn label_runs(runs: &mut [PlannedRun]) {
    let mut taken = BTreeSet::new();
    for run in runs.iter_mut() {
        let base: String = format!(
            "{}-{}-{}",
            run.scenario.name,
            run.seed,
            sample_text(run.sample_rate)
        )
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
        run.name = format!(
            "{} seed={} sample={}",
            run.scenario.name,
            run.seed,
            sample_text(run.sample_rate)
        );
        run.label = base.clone();
        if taken.contains(&base) {
            run.label = format!("{base}-case{}", run.case + 1);
            run.name = format!("{} case={}", run.name, run.case + 1);
        }
        // Within a case, seeds and rates are unique; across cases, the case number
        // is (and a base label always ends in the rate, never in `-case<n>`).
        assert!(
            taken.insert(run.label.clone()),
            "duplicate run label {}",
            run.label
        );
    }
}

/// `a/b/../c` → `a/c`, without touching the file system: scenario paths in
/// output and reproduce commands read as a person would write them.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => match out.components().next_back() {
                Some(Component::Normal(_)) => {
                    out.pop();
                }
                Some(Component::RootDir | Component::Prefix(_)) => {}
                _ => out.push(".."),
            },
            other => out.push(other),
        }
    }
    if out.as_os_str().is_empty() {
        out.push(".");
    }
    out
}

// ---------------------------------------------------------------------------
// Running.

/// Run `suite` (every planned run, or those `options.only` selects), judge every
/// run, write `junit.xml`, `verdict.json` and `runs/*.json`, and return the report.
/// `Err` is for a bad `--only` or output that cannot be written; a run that fails
/// with an operating error is a verdict, not an `Err`.
pub fn run_suite(suite: &Suite, options: &SuiteOptions) -> anyhow::Result<SuiteReport> {
    let runs: Vec<&PlannedRun> = match &options.only {
        Some(only) => suite
            .runs
            .iter()
            .filter(|r| r.scenario.name.contains(only.as_str()))
            .collect(),
        None => suite.runs.iter().collect(),
    };
    anyhow::ensure!(
        !runs.is_empty(),
        "no case of {} has a scenario whose name contains `{}`",
        suite.path.display(),
        options.only.as_deref().unwrap_or_default()
    );
    let parallel = match options.parallel.unwrap_or(suite.parallel) {
        0 => std::thread::available_parallelism().map_or(1, NonZeroUsize::get),
        n => n,
    }
    .min(PARALLEL_MAX)
    .min(runs.len());
    let out_dir = options
        .out_dir
        .clone()
        .unwrap_or_else(|| Path::new(OUT_DIR_DEFAULT).join(&suite.name));

    let bar = progress_bar(runs.len(), options.progress);
    let started = Instant::now();
    let finished = execute(&runs, parallel, &bar)?;
    let wall = started.elapsed();
    bar.finish_and_clear();

    let verdicts: Vec<RunVerdict> = runs
        .iter()
        .zip(&finished)
        .map(|(plan, done)| judge(plan, done))
        .collect();
    let verdict = SuiteVerdict {
        suite: suite.name.clone(),
        passed: verdicts.iter().all(|r| r.passed),
        runs: verdicts,
    };
    write_outputs(suite, &out_dir, &runs, &finished, &verdict, wall)?;
    Ok(SuiteReport {
        verdict,
        out_dir,
        parallel,
        wall,
    })
}

/// A run as it came back from its thread.
#[derive(Debug)]
struct Finished {
    /// The record, or the operating error (or panic) that stopped the run.
    record: Result<RunRecord, String>,
    wall: Duration,
}

/// Run every plan on at most `parallel` threads, each run on a runtime of its own;
/// results come back in plan order.
fn execute(
    runs: &[&PlannedRun],
    parallel: usize,
    bar: &ProgressBar,
) -> anyhow::Result<Vec<Finished>> {
    assert!(parallel >= 1);
    assert!(parallel <= runs.len());
    let next = AtomicUsize::new(0);
    let (sender, receiver) = mpsc::channel::<(usize, Finished)>();
    let mut finished: Vec<Option<Finished>> = runs.iter().map(|_| None).collect();
    std::thread::scope(|scope| -> anyhow::Result<()> {
        let mut workers = 0;
        for worker in 0..parallel {
            let sender = sender.clone();
            let next = &next;
            let spawned = std::thread::Builder::new()
                .name(format!("suite-{worker}"))
                .spawn_scoped(scope, move || {
                    loop {
                        let index = next.fetch_add(1, Ordering::Relaxed);
                        let Some(plan) = runs.get(index) else { break };
                        if sender.send((index, run_one(plan))).is_err() {
                            break;
                        }
                    }
                });
            match spawned {
                Ok(_) => workers += 1,
                // Fewer threads than asked is slower, not wrong.
                Err(_) if workers > 0 => break,
                Err(e) => return Err(e).context("starting a suite worker thread"),
            }
        }
        drop(sender);
        for (index, done) in receiver {
            bar.set_message(runs[index].label.clone());
            bar.inc(1);
            assert!(finished[index].is_none(), "run {index} reported twice");
            finished[index] = Some(done);
        }
        Ok(())
    })?;
    // Every index below runs.len() is taken by exactly one worker, which reports it
    // unless it panicked outside `run_one` (and then the scope re-raised the panic).
    Ok(finished
        .into_iter()
        .map(|f| f.expect("every run reports once"))
        .collect())
}

/// One run on a current-thread runtime of its own (the run future need not be Send).
/// A panic is a bug, but it is reported as this run's error so the others go on.
fn run_one(plan: &PlannedRun) -> Finished {
    let started = Instant::now();
    let record = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Err(e) => Err(format!("cannot start the async runtime: {e}")),
        Ok(runtime) => {
            let run =
                AssertUnwindSafe(|| runtime.block_on(run_scenario(&plan.scenario, &plan.options)));
            match std::panic::catch_unwind(run) {
                Ok(Ok(output)) => Ok(output.record),
                Ok(Err(e)) => Err(format!("{e:#}")),
                Err(panic) => Err(format!("the run panicked: {}", panic_text(panic.as_ref()))),
            }
        }
    };
    Finished {
        record,
        wall: started.elapsed(),
    }
}

fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(text) = panic.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = panic.downcast_ref::<String>() {
        text.clone()
    } else {
        "(no message)".to_owned()
    }
}

fn progress_bar(len: usize, enabled: bool) -> ProgressBar {
    if !enabled || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(len as u64), ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template(
        "{spinner} {elapsed_precise} [{wide_bar}] {pos}/{len} runs · {msg}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar
}

// ---------------------------------------------------------------------------
// Judging.

/// The verdict of one finished run against its case.
fn judge(plan: &PlannedRun, done: &Finished) -> RunVerdict {
    let mut verdict = RunVerdict {
        name: plan.name.clone(),
        scenario: plan.scenario.name.clone(),
        file: plan.scenario.path.display().to_string(),
        seed: plan.seed,
        sample_rate: plan.sample_rate,
        passed: false,
        wall_ms: u64::try_from(done.wall.as_millis()).unwrap_or(u64::MAX),
        violations: BTreeMap::new(),
        expect_violations: plan.expect_violations.iter().cloned().collect(),
        missing_violations: Vec::new(),
        failed_thresholds: Vec::new(),
        error: None,
        reproduce: reproduce_command(&plan.scenario, plan.seed, &plan.options),
        record_file: None,
    };
    let record = match &done.record {
        Ok(record) => record,
        Err(error) => {
            verdict.error = Some(error.clone());
            return verdict;
        }
    };
    verdict.reproduce = record.reproduce.clone();
    verdict.record_file = Some(format!("runs/{}.json", plan.label));
    verdict.violations = record
        .invariants
        .iter()
        .filter(|v| !v.passed)
        .map(|v| (v.id.clone(), v.violations))
        .collect();
    verdict.missing_violations = plan
        .expect_violations
        .iter()
        .filter(|id| !verdict.violations.contains_key(*id))
        .cloned()
        .collect();
    match serde_json::to_value(record) {
        Ok(json) => {
            verdict.failed_thresholds = plan
                .thresholds
                .iter()
                .filter_map(|t| check_value(t, &json))
                .collect();
        }
        Err(e) => verdict.error = Some(format!("the record does not serialise: {e}")),
    }
    let unexpected = verdict
        .violations
        .keys()
        .any(|id| !plan.expect_violations.contains(id));
    verdict.passed = verdict.error.is_none()
        && !unexpected
        && verdict.missing_violations.is_empty()
        && verdict.failed_thresholds.is_empty();
    verdict
}

/// `None` when `threshold` holds on `record`, else why not.
pub fn check_value(threshold: &Threshold, record: &Value) -> Option<FailedThreshold> {
    let failed = |actual: Option<Value>, message: String| {
        Some(FailedThreshold {
            threshold: threshold.clone(),
            actual,
            message,
        })
    };
    let path = &threshold.path;
    let Some(value) = record.pointer(path) else {
        return failed(
            None,
            format!(
                "{path} is not in the record{}",
                nearest_parent(path, record)
            ),
        );
    };
    let Value::Number(number) = value else {
        return failed(
            Some(value.clone()),
            format!("{path} is {value}, not a number"),
        );
    };
    if let Some(min) = threshold.min
        && compare(number, min).is_lt()
    {
        return failed(
            Some(value.clone()),
            format!("{path} = {number}, below min {}", bound_text(min)),
        );
    }
    if let Some(max) = threshold.max
        && compare(number, max).is_gt()
    {
        return failed(
            Some(value.clone()),
            format!("{path} = {number}, above max {}", bound_text(max)),
        );
    }
    None
}

/// The longest prefix of `path` that is in the record, to make a typo easy to see.
fn nearest_parent(path: &str, record: &Value) -> String {
    let mut prefix = path;
    while let Some(cut) = prefix.rfind('/') {
        prefix = &prefix[..cut];
        if prefix.is_empty() {
            break;
        }
        if let Some(value) = record.pointer(prefix) {
            return match value {
                Value::Object(map) => {
                    let keys: Vec<&str> = map.keys().map(String::as_str).collect();
                    format!(" ({prefix} has {})", keys.join(", "))
                }
                other => format!(" ({prefix} is {})", short_json(other)),
            };
        }
    }
    String::new()
}

fn short_json(value: &Value) -> String {
    match value {
        Value::Array(items) => format!("an array of {}", items.len()),
        other => other.to_string(),
    }
}

/// Exact for integers on both sides, float comparison otherwise.
fn compare(number: &serde_json::Number, bound: Bound) -> std::cmp::Ordering {
    let exact = number
        .as_i64()
        .map(i128::from)
        .or_else(|| number.as_u64().map(i128::from));
    match (exact, bound) {
        (Some(value), Bound::Integer(bound)) => value.cmp(&i128::from(bound)),
        _ => {
            let value = number.as_f64().unwrap_or(f64::NAN);
            value
                .partial_cmp(&bound_f64(bound))
                .unwrap_or(std::cmp::Ordering::Equal)
        }
    }
}

fn bound_f64(bound: Bound) -> f64 {
    match bound {
        Bound::Integer(i) => i as f64,
        Bound::Float(f) => f,
    }
}

fn bound_text(bound: Bound) -> String {
    match bound {
        Bound::Integer(i) => i.to_string(),
        Bound::Float(f) => f.to_string(),
    }
}

/// A sample rate as file names and test names show it: `1.0`, `0.25`.
fn sample_text(rate: f64) -> String {
    format!("{rate:?}")
}

// ---------------------------------------------------------------------------
// Output.

fn write_outputs(
    suite: &Suite,
    out_dir: &Path,
    runs: &[&PlannedRun],
    finished: &[Finished],
    verdict: &SuiteVerdict,
    wall: Duration,
) -> anyhow::Result<()> {
    let records_dir = out_dir.join("runs");
    std::fs::create_dir_all(&records_dir)
        .with_context(|| format!("creating {}", records_dir.display()))?;
    for (plan, done) in runs.iter().zip(finished) {
        if let Ok(record) = &done.record {
            let path = records_dir.join(format!("{}.json", plan.label));
            let text = serde_json::to_string_pretty(record).context("serialising a run record")?;
            write_atomically(&path, text.as_bytes())
                .with_context(|| format!("writing {}", path.display()))?;
        }
    }
    let junit = junit_report(suite, finished, verdict, wall)
        .to_string()
        .context("serialising junit.xml")?;
    let path = out_dir.join("junit.xml");
    write_atomically(&path, junit.as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    let json = serde_json::to_string_pretty(verdict).context("serialising verdict.json")?;
    let path = out_dir.join("verdict.json");
    write_atomically(&path, json.as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// One testsuite for the suite, one testcase per run.
fn junit_report(
    suite: &Suite,
    finished: &[Finished],
    verdict: &SuiteVerdict,
    wall: Duration,
) -> Report {
    let mut test_suite = TestSuite::new(suite.name.as_str());
    test_suite.set_time(wall);
    for (done, run) in finished.iter().zip(&verdict.runs) {
        let status = if let Some(error) = &run.error {
            let mut status = TestCaseStatus::non_success(NonSuccessKind::Error);
            status
                .set_message(first_line(error))
                .set_type("operating error")
                .set_description(format!("{error}\n\nreproduce: {}\n", run.reproduce));
            status
        } else if run.passed {
            TestCaseStatus::success()
        } else {
            let mut status = TestCaseStatus::non_success(NonSuccessKind::Failure);
            status
                .set_message(failure_line(run))
                .set_type("invariant")
                .set_description(failure_text(run, done));
            status
        };
        let mut test_case = TestCase::new(run.name.as_str(), status);
        test_case
            .set_classname(run.file.as_str())
            .set_time(done.wall);
        test_suite.add_test_case(test_case);
    }
    let mut report = Report::new(suite.name.as_str());
    report.set_time(wall).add_test_suite(test_suite);
    report
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or_default()
}

/// One line: what failed.
fn failure_line(run: &RunVerdict) -> String {
    let mut parts: Vec<String> = Vec::new();
    for (id, n) in &run.violations {
        if !run.expect_violations.contains(id) {
            parts.push(format!("{id} violated {n}×"));
        }
    }
    for id in &run.missing_violations {
        parts.push(format!("{id} expected to be violated but held"));
    }
    for failed in &run.failed_thresholds {
        parts.push(failed.message.clone());
    }
    if let Some(error) = &run.error {
        parts.push(first_line(error).to_owned());
    }
    parts.join("; ")
}

/// Everything a person needs to start on a failure: violations with examples,
/// thresholds, the reproduce command.
fn failure_text(run: &RunVerdict, done: &Finished) -> String {
    let mut text = String::new();
    if let Ok(record) = &done.record {
        for invariant in record.invariants.iter().filter(|v| !v.passed) {
            let expected = if run.expect_violations.contains(&invariant.id) {
                " (expected)"
            } else {
                ""
            };
            let _ = writeln!(
                text,
                "{} {}: {} violation(s){expected}",
                invariant.id, invariant.name, invariant.violations
            );
            for example in &invariant.examples {
                let _ = writeln!(text, "  - {example}");
            }
        }
    }
    for id in &run.missing_violations {
        let _ = writeln!(text, "{id}: expected to be violated, but held");
    }
    for failed in &run.failed_thresholds {
        let _ = writeln!(text, "threshold: {}", failed.message);
    }
    let _ = writeln!(text, "\nreproduce: {}", run.reproduce);
    text
}

pub use crate::record::files::write_atomically;

impl SuiteReport {
    /// 0 every run passed; 1 a violation, a failed threshold or an expected
    /// violation that did not happen; 2 a run stopped by an operating error.
    pub fn exit_code(&self) -> u8 {
        if self.verdict.runs.iter().any(|r| r.error.is_some()) {
            2
        } else if self.verdict.passed {
            0
        } else {
            1
        }
    }

    /// The one-screen summary: a line per run, totals, then how to reproduce each failure.
    pub fn render_summary(&self) -> String {
        let runs = &self.verdict.runs;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "redrain suite · {} · {} run{} · {} at once · wall {:.2} s",
            self.verdict.suite,
            runs.len(),
            if runs.len() == 1 { "" } else { "s" },
            self.parallel,
            self.wall.as_secs_f64()
        );
        let name_width = runs.iter().map(|r| r.scenario.len()).max().unwrap_or(0);
        let seed_width = runs
            .iter()
            .map(|r| r.seed.to_string().len())
            .max()
            .unwrap_or(0);
        for run in runs {
            let result = if run.error.is_some() {
                "ERROR"
            } else if run.passed {
                "pass"
            } else {
                "FAIL"
            };
            let mut notes: Vec<String> = run
                .violations
                .iter()
                .map(|(id, n)| format!("{id} ×{n}"))
                .collect();
            notes.extend(
                run.missing_violations
                    .iter()
                    .map(|id| format!("{id} expected, held")),
            );
            notes.extend(run.failed_thresholds.iter().map(|f| match f.actual {
                // The full message lists the keys that are there; junit.xml has it.
                None => format!("{} not in the record", f.threshold.path),
                Some(_) => f.message.clone(),
            }));
            notes.extend(run.error.iter().map(|e| first_line(e).to_owned()));
            let line = format!(
                "  {:<name_width$}  seed {:<seed_width$}  sample {:<5}  {result:<5}  {:>7.2} s  {}",
                run.scenario,
                run.seed,
                sample_text(run.sample_rate),
                run.wall_ms as f64 / 1000.0,
                notes.join(" · ")
            );
            let _ = writeln!(out, "{}", line.trim_end());
        }
        let passed = runs.iter().filter(|r| r.passed).count();
        let errors = runs.iter().filter(|r| r.error.is_some()).count();
        let failed = runs.len() - passed - errors;
        let _ = writeln!(
            out,
            "\n{passed} passed, {failed} failed, {errors} errors · junit.xml, verdict.json and runs/ in {}",
            self.out_dir.display()
        );
        let failures: Vec<&RunVerdict> = runs.iter().filter(|r| !r.passed).collect();
        if !failures.is_empty() {
            let _ = writeln!(out, "\nreproduce");
            for run in failures {
                let _ = writeln!(out, "  {}\n    {}", run.name, run.reproduce);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_resolves_parent_dirs_lexically() {
        let check = |input: &str, expected: &str| {
            assert_eq!(normalize(Path::new(input)), PathBuf::from(expected))
        };
        check("ci/../scenarios/smoke.toml", "scenarios/smoke.toml");
        check("./ci/./a.toml", "ci/a.toml");
        check("../x.toml", "../x.toml");
        check("a/../../x.toml", "../x.toml");
        check("/a/../x.toml", "/x.toml");
    }

    #[test]
    fn thresholds_compare_integers_exactly() {
        let record = serde_json::json!({ "totals": { "entries": 9_007_199_254_740_993u64, "rate": 0.5 }, "crediting": null });
        let threshold = |path: &str, min: Option<Bound>, max: Option<Bound>| Threshold {
            path: path.to_owned(),
            min,
            max,
        };
        let big = Bound::Integer(9_007_199_254_740_992);
        assert!(check_value(&threshold("/totals/entries", None, Some(big)), &record).is_some());
        assert!(check_value(&threshold("/totals/entries", Some(big), None), &record).is_none());
        assert!(
            check_value(
                &threshold("/totals/rate", None, Some(Bound::Float(0.5))),
                &record
            )
            .is_none()
        );
        assert!(
            check_value(
                &threshold("/totals/rate", Some(Bound::Integer(1)), None),
                &record
            )
            .is_some()
        );
        let missing = check_value(
            &threshold("/totals/entires", Some(Bound::Integer(1)), None),
            &record,
        );
        let message = missing.map(|f| f.message).unwrap_or_default();
        assert!(
            message.contains("not in the record") && message.contains("entries"),
            "{message}"
        );
        let null = check_value(
            &threshold("/crediting/drain_ms", None, Some(Bound::Integer(1))),
            &record,
        );
        let message = null.map(|f| f.message).unwrap_or_default();
        assert!(message.contains("/crediting is null"), "{message}");
    }
}
