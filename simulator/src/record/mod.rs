//! The `RunRecord`: assembled from what a run hands over (simulated or live), the
//! reproduce line, the hashes and comparisons that prove two runs the same, and
//! the record's files. Never runs anything.

pub mod files;
pub mod hash;
pub mod live;

use std::collections::BTreeMap;

use reference::ledger::{Award, EntryKind};
use reports::{
    CapacitySummary, CounterSummary, CreditingSummary, DelaySummary, MidwayCheck,
    RUN_RECORD_VERSION, RunRecord, ScenarioInfo, SecondSample, StoresSummary, Totals, TraceInfo,
    Verdict, ViewSummary, Wall,
};

use crate::check::{Invariant, Violation};
use crate::history::{Event, FinalState, History};
use crate::options::RunOptions;
use crate::record::hash::history_hash;
use crate::scenario::Scenario;
use crate::stores::store_urls;

/// Examples of violations kept per invariant in the record.
const EXAMPLES_MAX: usize = 5;

/// What the engine hands over at the end.
pub(crate) struct Finished {
    pub(crate) history: History,
    pub(crate) crediting: CreditingSummary,
    pub(crate) series: Vec<SecondSample>,
    pub(crate) views: ViewSummary,
    pub(crate) delay: Option<DelaySummary>,
    pub(crate) coupon_delay: Option<DelaySummary>,
    pub(crate) capacity: Option<CapacitySummary>,
    pub(crate) stores: StoresSummary,
    pub(crate) trace: TraceInfo,
    pub(crate) refused: BTreeMap<String, u64>,
    pub(crate) spent: BTreeMap<String, u64>,
    pub(crate) midway_checks: Vec<MidwayCheck>,
}

/// The build that is running, for records and reproduction lines.
pub fn build_id() -> String {
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    format!("redrain {} ({profile})", env!("CARGO_PKG_VERSION"))
}

fn event_label(event: &Event) -> String {
    match event {
        Event::Issue { outcome, .. } => format!("issue.{}", outcome.label()),
        Event::Withdraw { outcome, .. } => format!("withdraw.{}", outcome.label()),
        Event::View { .. } => "view".to_owned(),
        Event::Switch { switch, on, .. } => format!(
            "switch.{}.{}",
            switch.name(),
            if *on { "on" } else { "off" }
        ),
        Event::WorkerCrash { .. } => "fault.worker_crash".to_owned(),
        Event::CounterRead { .. } => "counter.read".to_owned(),
    }
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn record(
    scenario: &Scenario,
    seed: u64,
    options: &RunOptions,
    finished: &Finished,
    state: &FinalState,
    violations: &[Violation],
    counter: Option<CounterSummary>,
    elapsed_ms: u64,
    source: String,
) -> RunRecord {
    let history = &finished.history;
    let mut outcomes: BTreeMap<String, u64> = finished.refused.clone();
    for event in &history.events {
        // Counter polls are not requests; the counter summary counts them.
        if !matches!(event, Event::CounterRead { .. }) {
            *outcomes.entry(event_label(event)).or_default() += 1;
        }
    }
    let mut totals = Totals {
        entries: state.ledger.entries.len() as u64,
        accounts: state.ledger.accounts.len() as u64,
        ..Totals::default()
    };
    for entry in &state.ledger.entries {
        match &entry.kind {
            EntryKind::Credit {
                award: Award::Cash { amount_cents },
                ..
            } => {
                totals.cash_credited_cents =
                    totals.cash_credited_cents.saturating_add(*amount_cents);
            }
            EntryKind::Credit {
                award: Award::Coupon { .. },
                ..
            } => totals.coupons += 1,
            EntryKind::Credit {
                award: Award::Pendant { .. },
                ..
            } => totals.pendants += 1,
            EntryKind::Withdrawal { amount_cents, .. } => {
                totals.cash_withdrawn_cents =
                    totals.cash_withdrawn_cents.saturating_add(*amount_cents);
            }
        }
    }
    // A broken store can report anything; the record must still be written.
    totals.balance_cents = state
        .ledger
        .accounts
        .iter()
        .fold(0u64, |sum, a| sum.saturating_add(a.balance_cents));
    let invariants = Invariant::CHECKED
        .into_iter()
        .map(|invariant| {
            let mine: Vec<&Violation> = violations
                .iter()
                .filter(|v| v.invariant == invariant)
                .collect();
            Verdict {
                id: invariant.id().to_owned(),
                name: invariant.name().to_owned(),
                passed: mine.is_empty(),
                violations: mine.len() as u64,
                examples: mine
                    .iter()
                    .take(EXAMPLES_MAX)
                    .map(|v| format!("{}: {}", v.culprit, v.detail))
                    .collect(),
            }
        })
        .collect();
    let requests = finished.trace.ops;
    let uses_tokens = scenario.token_keys.is_some();
    let mut trace = finished.trace.clone();
    trace.shard = options.shard.map(|s| s.to_string());
    trace.source = source;
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
        ledger_url: reference::redact_url(&store_urls(scenario, options).ledger),
        kv_url: reference::redact_url(&store_urls(scenario, options).kv),
        shadow: scenario.shadow,
        sample_rate: scenario.sample_rate,
        trace,
        history_hash: history_hash(history),
        outcomes,
        totals,
        crediting: uses_tokens.then(|| finished.crediting.clone()),
        counter,
        delay: finished.delay.clone(),
        coupon_delay: finished.coupon_delay.clone(),
        views: finished.views.clone(),
        capacity: finished.capacity.clone(),
        stores: finished.stores.clone(),
        series: finished.series.clone(),
        midway_checks: finished.midway_checks.clone(),
        wall: Wall {
            elapsed_ms,
            requests_per_s: requests as f64 * 1000.0 / elapsed_ms.max(1) as f64,
            spent_ms: finished.spent.clone(),
        },
        invariants,
        reproduce: reproduce_command(scenario, seed, options),
        live: None,
    }
}

/// The command that runs this again: scenario, seed, sample rate, stores, cap,
/// shard or replayed trace, and the build.
pub fn reproduce_command(scenario: &Scenario, seed: u64, options: &RunOptions) -> String {
    let urls = store_urls(scenario, options);
    let mut reproduce = match &options.replay {
        Some(path) => format!(
            "redrain trace replay {} {}",
            scenario.path.display(),
            path.display()
        ),
        None => format!("redrain run {}", scenario.path.display()),
    };
    reproduce.push_str(&format!(
        " --seed {seed} --sample {} --ledger {} --kv {}",
        scenario.sample_rate,
        reference::redact_url(&urls.ledger),
        reference::redact_url(&urls.kv),
    ));
    if let Some(requests) = options.requests {
        reproduce.push_str(&format!(" --requests {requests}"));
    }
    if let Some(shard) = options.shard {
        reproduce.push_str(&format!(" --shard {shard}"));
    }
    if let Some(every_s) = options.check_every_s {
        reproduce.push_str(&format!(" --check-every-s {every_s}"));
    }
    reproduce.push_str(&format!("   # {}", build_id()));
    reproduce
}
