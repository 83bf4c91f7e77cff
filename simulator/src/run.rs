//! The runner: drives the reference wallet with a scenario's workload in virtual
//! time, records the history, reads the final state, runs the checkers and builds
//! the [`RunRecord`]. Sync mode only for now; the virtual-time engine with the
//! capacity model replaces this loop in the simulator issue.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use reference::ledger::{Award, EntryKind};
use reference::wallet::Wallet;
use reference::{Clock, ManualClock, kv, ledger};
use reports::{RUN_RECORD_VERSION, RunRecord, ScenarioInfo, Totals, Verdict, Wall};

use crate::check::{self, Invariant, Violation};
use crate::history::{Event, FinalState, History};
use crate::scenario::Scenario;
use crate::workload::{Request, Workload};

/// Examples of violations kept per invariant in the record.
const EXAMPLES_MAX: usize = 5;

/// How to run a scenario.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Overrides the scenario's seed.
    pub seed: Option<u64>,
    /// Overrides the scenario's request count.
    pub requests: Option<u64>,
    /// Ledger URL: `memory`, `sqlite::memory:` or `sqlite://PATH`.
    pub ledger_url: String,
    /// Draw a progress bar (only on a terminal).
    pub progress: bool,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self { seed: None, requests: None, ledger_url: "memory".to_owned(), progress: false }
    }
}

/// Everything a run produced.
#[derive(Debug)]
pub struct RunOutput {
    /// The record (the contract with `reports`).
    pub record: RunRecord,
    /// Every answered request.
    pub history: History,
    /// The stores at the end.
    pub state: FinalState,
    /// Every violation found.
    pub violations: Vec<Violation>,
}

/// The build that is running, for records and reproduction lines.
pub fn build_id() -> String {
    let profile = if cfg!(debug_assertions) { "debug" } else { "release" };
    format!("redrain {} ({profile})", env!("CARGO_PKG_VERSION"))
}

/// Run `scenario` with `options` on fresh stores.
pub async fn run_scenario(scenario: &Scenario, options: &RunOptions) -> anyhow::Result<RunOutput> {
    let mut scenario = scenario.clone();
    if let Some(requests) = options.requests {
        scenario.requests = requests;
    }
    let seed = options.seed.unwrap_or(scenario.seed);
    let ledger = ledger::open(&options.ledger_url).await.context("opening the ledger")?;
    let clock = Arc::new(ManualClock::new(scenario.start_ms));
    let kv = kv::open("memory", clock.clone()).context("opening the KV")?;
    let wallet = Wallet::new(Arc::new(scenario.tree.clone()), ledger, kv, clock.clone());
    let started = Instant::now();
    let history = drive(&wallet, &clock, Workload::new(&scenario, seed), options.progress).await?;
    let elapsed = started.elapsed();
    let state = FinalState::read(wallet.ledger().as_ref(), wallet.kv().as_ref()).await.context("reading the final state")?;
    let violations = check::check_all(&scenario.tree, &history, &state);
    let record = record(&scenario, seed, options, &history, &state, &violations, elapsed.as_millis() as u64);
    Ok(RunOutput { record, history, state, violations })
}

/// Send every op of `workload` to `wallet` at its virtual time; return the history.
pub async fn drive(wallet: &Wallet, clock: &ManualClock, workload: Workload<'_>, progress: bool) -> anyhow::Result<History> {
    let bar = progress_bar(workload.size_hint().0 as u64, progress);
    let mut history = History::default();
    for op in workload {
        clock.set(op.at_ms);
        let at_ms = clock.now_ms();
        let event = match op.request {
            Request::Issue(request) => {
                let outcome = wallet.issue(&request).await.with_context(|| format!("issuing {}", request.order_no))?;
                Event::Issue { at_ms, request, outcome }
            }
            Request::Withdraw(request) => {
                let outcome = wallet.withdraw(&request).await.with_context(|| format!("withdrawing {}", request.withdraw_no))?;
                Event::Withdraw { at_ms, request, outcome }
            }
        };
        history.events.push(event);
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(history)
}

fn progress_bar(len: u64, enabled: bool) -> ProgressBar {
    if !enabled {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template("{spinner} {elapsed_precise} [{wide_bar}] {pos}/{len} requests ({per_sec}, eta {eta})")
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar
}

/// BLAKE3 over the JSON of every event, in order.
pub fn history_hash(history: &History) -> String {
    let mut hasher = blake3::Hasher::new();
    for event in &history.events {
        // Serialising plain data structs to JSON cannot fail.
        let line = serde_json::to_vec(event).expect("events serialise");
        hasher.update(&line);
        hasher.update(b"\n");
    }
    hasher.finalize().to_hex().to_string()
}

fn record(
    scenario: &Scenario,
    seed: u64,
    options: &RunOptions,
    history: &History,
    state: &FinalState,
    violations: &[Violation],
    elapsed_ms: u64,
) -> RunRecord {
    let mut outcomes: BTreeMap<String, u64> = BTreeMap::new();
    for event in &history.events {
        let label = match event {
            Event::Issue { outcome, .. } => format!("issue.{}", outcome.label()),
            Event::Withdraw { outcome, .. } => format!("withdraw.{}", outcome.label()),
        };
        *outcomes.entry(label).or_default() += 1;
    }
    let mut totals = Totals { entries: state.ledger.entries.len() as u64, accounts: state.ledger.accounts.len() as u64, ..Totals::default() };
    for entry in &state.ledger.entries {
        match &entry.kind {
            EntryKind::Credit { award: Award::Cash { amount_cents }, .. } => totals.cash_credited_cents += amount_cents,
            EntryKind::Credit { award: Award::Coupon { .. }, .. } => totals.coupons += 1,
            EntryKind::Credit { award: Award::Pendant { .. }, .. } => totals.pendants += 1,
            EntryKind::Withdrawal { amount_cents, .. } => totals.cash_withdrawn_cents += amount_cents,
        }
    }
    totals.balance_cents = state.ledger.accounts.iter().map(|a| a.balance_cents).sum();
    let invariants = Invariant::CHECKED
        .into_iter()
        .map(|invariant| {
            let mine: Vec<&Violation> = violations.iter().filter(|v| v.invariant == invariant).collect();
            Verdict {
                id: invariant.id().to_owned(),
                name: invariant.name().to_owned(),
                passed: mine.is_empty(),
                violations: mine.len() as u64,
                examples: mine.iter().take(EXAMPLES_MAX).map(|v| format!("{}: {}", v.culprit, v.detail)).collect(),
            }
        })
        .collect();
    let mut reproduce = format!("redrain run {} --seed {seed} --ledger {}", scenario.path.display(), options.ledger_url);
    if let Some(requests) = options.requests {
        reproduce.push_str(&format!(" --requests {requests}"));
    }
    reproduce.push_str(&format!("   # {}", build_id()));
    let requests = history.events.len() as u64;
    RunRecord {
        version: RUN_RECORD_VERSION,
        scenario: ScenarioInfo {
            name: scenario.name.clone(),
            file: scenario.path.display().to_string(),
            seed,
            requests,
            duration_ms: scenario.duration_ms,
        },
        build: build_id(),
        ledger_url: options.ledger_url.clone(),
        history_hash: history_hash(history),
        outcomes,
        totals,
        wall: Wall { elapsed_ms, requests_per_s: requests as f64 * 1000.0 / elapsed_ms.max(1) as f64 },
        invariants,
        reproduce,
    }
}
