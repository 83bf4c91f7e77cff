//! Crediting strategies side by side: one traffic profile run as synchronous
//! crediting, plain async crediting and the token scheme (seed 000), with every
//! figure read from a run record of the engine.
//!
//! Two runs serve three rows:
//!
//! - **sync**: a copy of the scenario in which every `crediting = "token"` scene
//!   credits synchronously, run against the scenario's capacity model, so the
//!   database gate refuses what the configured instances cannot credit.
//! - **plain async** and **token**: the scenario as it is. Both strategies
//!   credit through the same queue and worker, so one run measures both; they
//!   differ only in what the wallet page shows. Plain async shows credited
//!   money only, so its user-visible lag is the credit delay and the pages it
//!   would have shown short are `views.plain_async_short`; the token scheme adds
//!   the pending tokens, so its visible lag is what its pages showed short
//!   (`views.short`).
//!
//! Nothing here invents a figure: a cell the records do not measure says so
//! (`None`, rendered `n/a`). This module does no I/O of its own: the sync copy
//! is the scenario's tree with its token scenes switched
//! (`ActivityTree::with_crediting`).

use std::fmt::Write as _;

use anyhow::Context as _;
use reference::config::Crediting;
use reports::RunRecord;
use serde::Serialize;

use crate::engine::{RunOutput, run_scenario};
use crate::options::RunOptions;
use crate::scenario::Scenario;
use crate::scenario::capacity::{DbModel, SEED_DB};

/// Prefix of the outcomes of requests the capacity model turned away.
pub const REFUSED_CAPACITY_PREFIX: &str = "refused.capacity.";

/// One crediting strategy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// One ledger transaction inside each award request.
    Sync,
    /// Accept, queue, credit later; the wallet page shows credited money only.
    PlainAsync,
    /// Accept with a signed token, credit later; the page adds pending tokens.
    Token,
}

impl Strategy {
    /// Its name in tables.
    pub fn name(self) -> &'static str {
        match self {
            Strategy::Sync => "sync",
            Strategy::PlainAsync => "plain async",
            Strategy::Token => "token",
        }
    }
}

/// One row of the table. Counts are full-population estimates (the sample's
/// count × [`StrategyTable::scale`]); times are virtual and not scaled.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StrategyRow {
    /// Which strategy.
    pub strategy: Strategy,
    /// DB instances the strategy needs: sync, for the run's peak award rate
    /// (one transaction per award); async and token, for the worker's credit
    /// rate. `None` when the DB model cannot reach the rate.
    pub db_instances_needed: Option<u64>,
    /// The rate `db_instances_needed` is for, per second (full population).
    pub db_instances_for_tps: f64,
    /// User-visible lag, 99th percentile, ms; `None` when not measured.
    pub visible_lag_p99_ms: Option<u64>,
    /// User-visible lag, longest, ms; `None` when not measured.
    pub visible_lag_max_ms: Option<u64>,
    /// Wallet pages of the sample that showed less than owed.
    pub pages_short: u64,
    /// Wallet pages the sample showed.
    pub pages: u64,
    /// Largest amount one page hid, cents (plain async only; 0 otherwise).
    pub hidden_max_cents: u64,
    /// Most tokens pending or inflight at once (full population).
    pub backlog_peak: u64,
    /// Virtual seconds from the last request until nothing was pending.
    pub drain_s: f64,
    /// Busiest second of KV calls (full population).
    pub kv_peak_per_s: u64,
    /// Busiest second of ledger calls (full population; a batch is one).
    pub db_peak_per_s: u64,
    /// Requests the capacity model refused (full population).
    pub refused_by_capacity: u64,
    /// Every invariant held in the run this row comes from.
    pub invariants_passed: bool,
}

/// The table and the two runs behind it.
#[derive(Debug, Clone, Serialize)]
pub struct StrategyTable {
    /// The scenario's name.
    pub scenario: String,
    /// The seed both runs used.
    pub seed: u64,
    /// The share of users simulated.
    pub sample_rate: f64,
    /// What sample counts are multiplied by for the full population.
    pub scale: f64,
    /// The DB model instance counts come from, as `(λ TPS, σ, κ)`, and whether
    /// it is the seed's (the scenario gave none).
    pub db_model: (f64, f64, f64),
    /// The DB model is the seed's because the scenario has none.
    pub db_model_is_seed: bool,
    /// Sync, plain async, token — in that order.
    pub rows: Vec<StrategyRow>,
    /// The sync run's record (not serialised with the table; write it apart).
    #[serde(skip)]
    pub sync_record: RunRecord,
    /// The record of the run the plain async and token rows share.
    #[serde(skip)]
    pub queued_record: RunRecord,
}

/// Runs `scenario` as sync crediting and as it is, and builds the table.
///
/// The sync copy runs against the scenario's capacity model. When the
/// scenario has no DB model, the copy gets [`SEED_DB`] with the database gate
/// lifted (`db_instances` so high it refuses nothing) so that the record still
/// says how many instances the peak needs.
pub async fn compare_strategies(
    scenario: &Scenario,
    options: &RunOptions,
) -> anyhow::Result<StrategyTable> {
    let (model, model_is_seed) = match scenario.capacity.db_model() {
        Some(model) => (model, false),
        None => (SEED_DB, true),
    };
    let mut sync = with_token_scenes_sync(scenario);
    if model_is_seed {
        sync.capacity.db_tps_each = SEED_DB.tps_each;
        sync.capacity.db_contention = SEED_DB.contention;
        sync.capacity.db_coherency = SEED_DB.coherency;
        sync.capacity.db_instances = DB_INSTANCES_LIFTED;
    }
    let sync_output = run_scenario(&sync, options)
        .await
        .context("running the sync copy")?;
    let queued_output = run_scenario(scenario, options)
        .await
        .context("running the scenario as it is")?;
    Ok(table(
        scenario,
        options,
        model,
        model_is_seed,
        sync_output,
        queued_output,
    ))
}

/// DB instances that make the seed's model refuse nothing at any traffic the
/// engine can offer (≈ 7.5M TPS, the model's asymptote).
const DB_INSTANCES_LIFTED: u64 = 1 << 24;

fn table(
    scenario: &Scenario,
    options: &RunOptions,
    model: DbModel,
    model_is_seed: bool,
    sync: RunOutput,
    queued: RunOutput,
) -> StrategyTable {
    let sample_rate = queued.record.sample_rate;
    let scale = 1.0 / sample_rate;
    let credit_tps = scenario.crediting.worker.credit_tps as f64;
    let sync_row = sync_row(&sync.record, model, scale);
    let plain = queued_row(
        &queued.record,
        Strategy::PlainAsync,
        model,
        credit_tps,
        scale,
    );
    let token = queued_row(&queued.record, Strategy::Token, model, credit_tps, scale);
    StrategyTable {
        scenario: scenario.name.clone(),
        seed: options.seed.unwrap_or(scenario.seed),
        sample_rate,
        scale,
        db_model: (model.tps_each, model.contention, model.coherency),
        db_model_is_seed: model_is_seed,
        rows: vec![sync_row, plain, token],
        sync_record: reproduced_by(sync.record, "strategies", scenario, options, ""),
        queued_record: queued.record,
    }
}

/// `record` with the command that reproduces it when it is not a plain
/// `redrain run` of the scenario file (a sync copy, a plan's evidence run):
/// the subcommand that made it, with the same scenario, seed, sample and cap.
pub fn reproduced_by(
    mut record: RunRecord,
    subcommand: &str,
    scenario: &Scenario,
    options: &RunOptions,
    extra: &str,
) -> RunRecord {
    let mut command = format!(
        "redrain {subcommand} {} --seed {} --sample {}",
        scenario.path.display(),
        options.seed.unwrap_or(scenario.seed),
        record.sample_rate
    );
    if let Some(requests) = options.requests {
        command.push_str(&format!(" --requests {requests}"));
    }
    command.push_str(extra);
    record.reproduce = format!("{command}   # {}", crate::record::build_id());
    record
}

fn sync_row(record: &RunRecord, model: DbModel, scale: f64) -> StrategyRow {
    let capacity = record.capacity.as_ref();
    let peak_award_qps = capacity.map_or(0.0, |c| c.peak_award_qps);
    let db_instances_needed = capacity
        .and_then(|c| c.sync_db_instances_needed)
        .or_else(|| capacity.and_then(|c| model.instances_for(c.peak_award_qps)));
    // A synchronous credit is posted before the answer: a page never lags what
    // was credited. The run says whether a page showed less than owed.
    let lag = (record.views.short == 0).then_some(0);
    StrategyRow {
        strategy: Strategy::Sync,
        db_instances_needed,
        db_instances_for_tps: peak_award_qps,
        visible_lag_p99_ms: lag,
        visible_lag_max_ms: lag,
        pages_short: record.views.short,
        pages: record.views.views,
        hidden_max_cents: 0,
        ..common(record, scale)
    }
}

fn queued_row(
    record: &RunRecord,
    strategy: Strategy,
    model: DbModel,
    credit_tps: f64,
    scale: f64,
) -> StrategyRow {
    let views = &record.views;
    let (p99, max, short, hidden) = match strategy {
        // Plain async shows credited money only: what users wait for is the
        // credit delay.
        Strategy::PlainAsync => (
            record.delay.as_ref().map(|d| d.p99_ms),
            record.delay.as_ref().map(|d| d.max_ms),
            views.plain_async_short,
            views.plain_async_hidden_max_cents,
        ),
        // The token scheme shows credited + pending tokens: no lag when no page
        // was short; the record has no lag figure when some were.
        _ => {
            let lag = (views.short == 0).then_some(0);
            (lag, lag, views.short, 0)
        }
    };
    StrategyRow {
        strategy,
        db_instances_needed: if credit_tps > 0.0 {
            model.instances_for(credit_tps)
        } else {
            None
        },
        db_instances_for_tps: credit_tps,
        visible_lag_p99_ms: p99,
        visible_lag_max_ms: max,
        pages_short: short,
        pages: views.views,
        hidden_max_cents: hidden,
        ..common(record, scale)
    }
}

/// The cells both runs fill the same way.
fn common(record: &RunRecord, scale: f64) -> StrategyRow {
    let full = |count: u64| (count as f64 * scale).round() as u64;
    let crediting = record.crediting.as_ref();
    StrategyRow {
        strategy: Strategy::Sync,
        db_instances_needed: None,
        db_instances_for_tps: 0.0,
        visible_lag_p99_ms: None,
        visible_lag_max_ms: None,
        pages_short: 0,
        pages: 0,
        hidden_max_cents: 0,
        backlog_peak: full(crediting.map_or(0, |c| c.backlog_peak)),
        drain_s: crediting.map_or(0.0, |c| c.drain_ms as f64 / 1000.0),
        kv_peak_per_s: full(record.stores.kv_peak_per_s),
        db_peak_per_s: full(record.stores.db_peak_per_s),
        refused_by_capacity: full(refused_by_capacity(record)),
        invariants_passed: record.passed(),
    }
}

/// Requests of the sample the capacity model refused (`refused.capacity.*`).
pub fn refused_by_capacity(record: &RunRecord) -> u64 {
    record
        .outcomes
        .iter()
        .filter(|(kind, _)| kind.starts_with(REFUSED_CAPACITY_PREFIX))
        .map(|(_, count)| *count)
        .sum()
}

/// A copy of `scenario` in which every token scene of every activity credits
/// synchronously (pipeline and sync scenes stay as they are).
pub fn with_token_scenes_sync(scenario: &Scenario) -> Scenario {
    let mut sync = scenario.clone();
    sync.name = format!("{}-sync", scenario.name);
    (sync.tree, _) = scenario
        .tree
        .with_crediting(Crediting::Token, Crediting::Sync);
    sync
}

fn opt(value: Option<u64>) -> String {
    value.map_or_else(|| "n/a".to_owned(), |v| v.to_string())
}

fn lag(value: Option<u64>) -> String {
    match value {
        None => "n/a".to_owned(),
        Some(ms) if ms >= 1000 => format!("{:.1} s", ms as f64 / 1000.0),
        Some(ms) => format!("{ms} ms"),
    }
}

/// The cells of one row, in column order.
fn cells(row: &StrategyRow) -> [String; 11] {
    [
        row.strategy.name().to_owned(),
        opt(row.db_instances_needed),
        format!("{:.0}", row.db_instances_for_tps),
        format!(
            "{} / {}",
            lag(row.visible_lag_p99_ms),
            lag(row.visible_lag_max_ms)
        ),
        format!("{} of {}", row.pages_short, row.pages),
        row.backlog_peak.to_string(),
        format!("{:.1}", row.drain_s),
        row.kv_peak_per_s.to_string(),
        row.db_peak_per_s.to_string(),
        row.refused_by_capacity.to_string(),
        if row.invariants_passed {
            "pass"
        } else {
            "FAIL"
        }
        .to_owned(),
    ]
}

const HEADERS: [&str; 11] = [
    "strategy",
    "DB inst.",
    "for TPS",
    "visible lag p99 / max",
    "pages short",
    "backlog peak",
    "drain s",
    "KV peak/s",
    "DB peak/s",
    "refused",
    "invariants",
];

fn footnotes(table: &StrategyTable) -> Vec<String> {
    let (tps, sigma, kappa) = table.db_model;
    vec![
        format!(
            "sample {} of users; counts (backlog, KV/DB peaks, refused) ×{:.0} for the full population; pages short are of the sample; times are virtual",
            table.sample_rate, table.scale
        ),
        format!(
            "DB instances by the USL model λ = {tps} TPS, σ = {sigma}, κ = {kappa}{}: sync for its peak award rate (every award request, cash and coupons: one transaction each), async/token for the worker's credit_tps",
            if table.db_model_is_seed { " (the seed's; the scenario has none)" } else { "" }
        ),
        "sync: token scenes switched to sync crediting, run against the scenario's capacity (the DB gate refuses what the instances cannot credit); credits post inside the request, so its lag is 0 when no page was short".to_owned(),
        "plain async and token: one run of the scenario as it is — both credit through the same queue and worker. Plain async's visible lag is the credit delay (all credits of the run) and its pages short are those that would have shown credited money only; the token scheme's pages add pending tokens, its lag is 0 when none was short (n/a: not measured)".to_owned(),
    ]
}

/// The table as one screen of text.
pub fn render_strategy_table(table: &StrategyTable) -> String {
    let rows: Vec<[String; 11]> = table.rows.iter().map(cells).collect();
    let widths: Vec<usize> = (0..HEADERS.len())
        .map(|i| {
            rows.iter()
                .map(|r| r[i].chars().count())
                .chain([HEADERS[i].chars().count()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: &[String]| -> String {
        let parts: Vec<String> = cells
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (c, w))| {
                if i == 0 {
                    format!("{c:<w$}")
                } else {
                    format!("{c:>w$}")
                }
            })
            .collect();
        parts.join("  ").trim_end().to_owned()
    };
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = writeln!(
        out,
        "redrain strategies · {} · seed {} · sample {} (×{:.0})",
        table.scenario, table.seed, table.sample_rate, table.scale
    );
    let headers: Vec<String> = HEADERS.iter().map(|h| (*h).to_owned()).collect();
    let _ = writeln!(out, "{}", line(&headers));
    for row in &rows {
        let _ = writeln!(out, "{}", line(row));
    }
    for note in footnotes(table) {
        let _ = writeln!(out, "  · {note}");
    }
    out
}

/// The table as Markdown.
pub fn render_strategy_markdown(table: &StrategyTable) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "### Crediting strategies · {} · seed {} · sample {} (×{:.0})\n",
        table.scenario, table.seed, table.sample_rate, table.scale
    );
    let _ = writeln!(out, "| {} |", HEADERS.join(" | "));
    let _ = writeln!(
        out,
        "|{}",
        HEADERS
            .iter()
            .enumerate()
            .map(|(i, _)| if i == 0 { "---|" } else { "---:|" })
            .collect::<String>()
    );
    for row in &table.rows {
        let _ = writeln!(out, "| {} |", cells(row).join(" | "));
    }
    out.push('\n');
    for note in footnotes(table) {
        let _ = writeln!(out, "- {note}");
    }
    out
}
