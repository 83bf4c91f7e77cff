//! Capacity planning: the cheapest knob values under which a scenario meets a
//! service-level objective, found by running the engine (`redrain plan
//! scenarios/x.toml --slo "drain_s_max=600,refused_max=0"`).
//!
//! Each knob is monotone — more capacity never hurts an SLO — so each is
//! searched on its own with an exponential search from the scenario's value
//! and a binary search inside the bracket it finds: the background work first
//! (credit TPS, pipeline rate, counter interval), then the gates (DB, KV, app),
//! each with the values already chosen and the knobs not yet searched generous
//! (their gates lifted). The gates are sized to refuse nothing unless the SLO
//! gives `refused_max`: a plan never buys its savings by turning traffic away. A final evidence run confirms the
//! combination; its record is the plan's proof. Every figure comes from a run
//! record of the deterministic engine (same seed every run): nothing is
//! extrapolated.
//!
//! Knobs and the SLO keys that constrain them:
//!
//! | knob | `[capacity]` / scenario field | constrained by |
//! |---|---|---|
//! | DB instances | `db_instances` | `refused_max` (the DB gate's refusals) |
//! | credit TPS | `[crediting] credit_tps` | `drain_s_max`, `visible_lag_ms_max`, `delay_p99_ms_max` |
//! | pipeline rate | `[pipeline] activity_rate_per_s`, `asset_rate_per_s` | `coupon_p99_ms_max` (accept → in the account) |
//! | KV instances | `kv_instances` | `refused_max` (the KV gate's refusals) |
//! | app instances | `app_instances` | `refused_max` (the app gate's refusals) |
//! | counter interval | `[counter] interval_ms` (plan 2) | `counter_error_pct_max` (larger is cheaper) |
//!
//! A knob no given SLO key constrains, or whose gate the scenario does not
//! model, keeps the scenario's value. The planned DB instances are the larger
//! of what the DB search found and what the chosen credit TPS needs by the DB
//! model (the worker's crediting runs on the same database).
//!
//! Cost = 1 per DB instance + 0.25 per KV instance + 0.1 per app instance
//! ([`COST_DB_INSTANCE`], [`COST_KV_INSTANCE`], [`COST_APP_INSTANCE`]).
//!
//! This module never reads a clock and does no I/O besides the engine's runs.

pub mod strategy;

use std::collections::BTreeSet;
use std::fmt::Write as _;

use anyhow::Context as _;
use reports::RunRecord;
use serde::Serialize;

use crate::engine::run_scenario;
use crate::options::RunOptions;
use crate::plan::strategy::REFUSED_CAPACITY_PREFIX;
use crate::scenario::capacity::{DbModel, INSTANCES_MAX, counter_plan2_ops};
use crate::scenario::{CounterKind, Scenario};

/// Most engine runs one plan makes, the evidence runs included.
pub const PLAN_RUNS_MAX: usize = 64;
/// Evidence runs after the first that may step knobs up when the combination
/// misses an SLO the knobs met one at a time.
pub const EVIDENCE_RETRIES_MAX: usize = 3;
/// A binary search stops once its bracket is this share of the value (or one
/// step, whichever is larger).
pub const SEARCH_RESOLUTION: f64 = 0.01;
/// What an evidence retry multiplies a knob by.
pub const RETRY_FACTOR: f64 = 1.1;
/// Largest instance count a search tries (DB: also the model's peak).
pub const SEARCH_INSTANCES_MAX: u64 = 1 << 20;
/// Largest hot-counter interval a search tries, ms.
pub const COUNTER_INTERVAL_MS_MAX: u64 = 60_000;
/// The share of the final true total from which the counter's error counts
/// (see [`Measured`]).
pub const COUNTER_ERROR_FROM_SHARE: f64 = 0.5;
/// Why a modelled knob keeps the scenario's value.
const NOT_CONSTRAINED: &str = "no SLO key constrains it";
/// Cost of one DB instance.
pub const COST_DB_INSTANCE: f64 = 1.0;
/// Cost of one KV instance.
pub const COST_KV_INSTANCE: f64 = 0.25;
/// Cost of one app instance.
pub const COST_APP_INSTANCE: f64 = 0.1;

// ---------------------------------------------------------------------------
// The SLO

/// A service-level objective: limits on what a run record measures. `None`:
/// no limit. See [`Measured`] for how each is read from a record.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Slo {
    /// Most virtual seconds the token backlog may take to drain after the last request.
    pub drain_s_max: Option<f64>,
    /// Worst user-visible lag, ms.
    pub visible_lag_ms_max: Option<u64>,
    /// Credit delay p99 of coupon credits, ms (measured over all credits; see [`Measured`]).
    pub coupon_p99_ms_max: Option<u64>,
    /// Most requests the capacity model may refuse (full population).
    pub refused_max: Option<u64>,
    /// Most the live hot counter may trail the truth, percent.
    pub counter_error_pct_max: Option<f64>,
    /// Credit delay p99 over all credits, ms.
    pub delay_p99_ms_max: Option<u64>,
}

/// One SLO key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SloKey {
    /// `drain_s_max`.
    DrainSMax,
    /// `visible_lag_ms_max`.
    VisibleLagMsMax,
    /// `coupon_p99_ms_max`.
    CouponP99MsMax,
    /// `refused_max`.
    RefusedMax,
    /// `counter_error_pct_max`.
    CounterErrorPctMax,
    /// `delay_p99_ms_max`.
    DelayP99MsMax,
}

impl SloKey {
    /// Every key, in the order errors list them.
    pub const ALL: [SloKey; 6] = [
        SloKey::DrainSMax,
        SloKey::VisibleLagMsMax,
        SloKey::CouponP99MsMax,
        SloKey::RefusedMax,
        SloKey::CounterErrorPctMax,
        SloKey::DelayP99MsMax,
    ];

    /// Its name in `--slo`.
    pub fn name(self) -> &'static str {
        match self {
            SloKey::DrainSMax => "drain_s_max",
            SloKey::VisibleLagMsMax => "visible_lag_ms_max",
            SloKey::CouponP99MsMax => "coupon_p99_ms_max",
            SloKey::RefusedMax => "refused_max",
            SloKey::CounterErrorPctMax => "counter_error_pct_max",
            SloKey::DelayP99MsMax => "delay_p99_ms_max",
        }
    }

    /// Whether its value is a whole number (else any finite number ≥ 0).
    fn is_integer(self) -> bool {
        !matches!(self, SloKey::DrainSMax | SloKey::CounterErrorPctMax)
    }
}

fn valid_keys() -> String {
    SloKey::ALL.map(SloKey::name).join(", ")
}

/// Why an `--slo` text was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SloError {
    /// Nothing was given.
    #[error("the SLO is empty: give key=value pairs separated by commas (valid keys: {valid})")]
    Empty {
        /// The valid keys.
        valid: String,
    },
    /// An item without `=`.
    #[error("SLO item `{item}` is not key=value (valid keys: {valid})")]
    NotKeyValue {
        /// The item as given.
        item: String,
        /// The valid keys.
        valid: String,
    },
    /// A key that is not an SLO key.
    #[error("unknown SLO key `{key}` (valid keys: {valid})")]
    UnknownKey {
        /// The key as given.
        key: String,
        /// The valid keys.
        valid: String,
    },
    /// A value that is not a number the key takes.
    #[error("SLO key `{key}`: `{value}` is not {expected}")]
    BadNumber {
        /// The key.
        key: String,
        /// The value as given.
        value: String,
        /// What the key takes.
        expected: &'static str,
    },
    /// A key given twice.
    #[error("SLO key `{key}` is given twice")]
    Duplicate {
        /// The key.
        key: String,
    },
}

/// Parses `key=value,key=value` (spaces around items, keys and values allowed).
pub fn parse_slo(text: &str) -> Result<Slo, SloError> {
    let mut slo = Slo::default();
    let mut seen = BTreeSet::new();
    let items: Vec<&str> = text
        .split(',')
        .map(str::trim)
        .filter(|i| !i.is_empty())
        .collect();
    if items.is_empty() {
        return Err(SloError::Empty {
            valid: valid_keys(),
        });
    }
    for item in items {
        let Some((key, value)) = item.split_once('=') else {
            return Err(SloError::NotKeyValue {
                item: item.to_owned(),
                valid: valid_keys(),
            });
        };
        let (key, value) = (key.trim(), value.trim());
        let Some(slo_key) = SloKey::ALL.into_iter().find(|k| k.name() == key) else {
            return Err(SloError::UnknownKey {
                key: key.to_owned(),
                valid: valid_keys(),
            });
        };
        if !seen.insert(slo_key) {
            return Err(SloError::Duplicate {
                key: key.to_owned(),
            });
        }
        let bad = |expected| SloError::BadNumber {
            key: key.to_owned(),
            value: value.to_owned(),
            expected,
        };
        if slo_key.is_integer() {
            let n: u64 = value
                .parse()
                .map_err(|_| bad("a whole number of 0 or more"))?;
            match slo_key {
                SloKey::VisibleLagMsMax => slo.visible_lag_ms_max = Some(n),
                SloKey::CouponP99MsMax => slo.coupon_p99_ms_max = Some(n),
                SloKey::RefusedMax => slo.refused_max = Some(n),
                _ => slo.delay_p99_ms_max = Some(n),
            }
        } else {
            let x: f64 = value
                .parse()
                .ok()
                .filter(|x: &f64| x.is_finite() && *x >= 0.0)
                .ok_or_else(|| bad("a finite number of 0 or more"))?;
            match slo_key {
                SloKey::DrainSMax => slo.drain_s_max = Some(x),
                _ => slo.counter_error_pct_max = Some(x),
            }
        }
    }
    Ok(slo)
}

/// What a run record measures, in the SLO's terms.
///
/// - `drain_s`: `crediting.drain_ms` (0 without token crediting).
/// - `visible_lag_ms`: 0 when no wallet page showed less than owed
///   (`views.short == 0`: the token scheme shows pending tokens, a sync credit
///   is posted before its answer); otherwise the longest credit delay
///   (`delay.max_ms`), an upper bound, since an award is on the page once credited.
/// - `coupon_p99_ms`: the credit delay p99 of coupon credits only
///   (`coupon_delay.p99_ms`: accept → in the account, seed 003's "99% within
///   0.5 s"); 0 when the run credited no coupon.
/// - `refused`: requests refused by the capacity model (`refused.capacity.*`),
///   as a full-population count (the sample's count ÷ the sample rate).
/// - `counter_error_pct`: the most the live hot counter trailed the truth,
///   `(true − shown) / true` per second (`series`: the highest value shown that
///   second against the true total at its end), over the seconds in which a
///   reader showed a value and the true total had reached
///   [`COUNTER_ERROR_FROM_SHARE`] of its final value. Early in a show every
///   interval trails by tens of percent of a small total (one interval's awards
///   against a few seconds' worth), which no interval fixes; the seed's "within
///   1%" is about the large total people watch. It grows with the interval.
/// - `delay_p99_ms`: `delay.p99_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Measured {
    /// Seconds.
    pub drain_s: f64,
    /// Milliseconds.
    pub visible_lag_ms: u64,
    /// Milliseconds.
    pub coupon_p99_ms: u64,
    /// Full population.
    pub refused: u64,
    /// Percent.
    pub counter_error_pct: f64,
    /// Milliseconds.
    pub delay_p99_ms: u64,
}

impl Measured {
    /// Reads the figures from `record`.
    pub fn of(record: &RunRecord) -> Measured {
        let delay = record.delay.as_ref();
        Measured {
            drain_s: record
                .crediting
                .as_ref()
                .map_or(0.0, |c| c.drain_ms as f64 / 1000.0),
            visible_lag_ms: if record.views.short == 0 {
                0
            } else {
                delay.map_or(0, |d| d.max_ms)
            },
            coupon_p99_ms: record.coupon_delay.as_ref().map_or(0, |d| d.p99_ms),
            refused: full_population(record, refused_with(record, REFUSED_CAPACITY_PREFIX)),
            counter_error_pct: counter_error_pct(record),
            delay_p99_ms: delay.map_or(0, |d| d.p99_ms),
        }
    }
}

fn full_population(record: &RunRecord, count: u64) -> u64 {
    (count as f64 / record.sample_rate).round() as u64
}

/// Requests of the sample refused with an outcome starting with `prefix`.
fn refused_with(record: &RunRecord, prefix: &str) -> u64 {
    record
        .outcomes
        .iter()
        .filter(|(kind, _)| kind.starts_with(prefix))
        .map(|(_, n)| *n)
        .sum()
}

/// Requests of the sample one capacity gate refused (`refused.capacity.<gate>`
/// exactly: `kv` is not `kv_key`).
fn refused_by_gate(record: &RunRecord, gate: &str) -> u64 {
    record
        .outcomes
        .get(&format!("{REFUSED_CAPACITY_PREFIX}{gate}"))
        .copied()
        .unwrap_or(0)
}

fn counter_error_pct(record: &RunRecord) -> f64 {
    let final_true = record
        .series
        .iter()
        .map(|s| s.counter_true)
        .max()
        .unwrap_or(0);
    let from = (final_true as f64 * COUNTER_ERROR_FROM_SHARE) as u64;
    record
        .series
        .iter()
        .filter(|s| s.counter_shown > 0 && s.counter_true > 0 && s.counter_true >= from)
        .map(|s| {
            let shown = s.counter_shown as f64;
            let truth = s.counter_true as f64;
            ((truth - shown) / truth * 100.0).max(0.0)
        })
        .fold(0.0, f64::max)
}

/// One SLO a record missed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SloMiss {
    /// The SLO key, or `invariants` when the run broke one.
    pub what: String,
    /// What the record measured.
    pub measured: f64,
    /// The limit.
    pub limit: f64,
}

impl std::fmt::Display for SloMiss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} > {}", self.what, self.measured, self.limit)
    }
}

impl Slo {
    /// The SLO as `--slo` takes it (`key=value,…`, keys in [`SloKey::ALL`] order).
    pub fn text(&self) -> String {
        let value = |key: SloKey| -> Option<String> {
            match key {
                SloKey::DrainSMax => self.drain_s_max.map(|v| v.to_string()),
                SloKey::VisibleLagMsMax => self.visible_lag_ms_max.map(|v| v.to_string()),
                SloKey::CouponP99MsMax => self.coupon_p99_ms_max.map(|v| v.to_string()),
                SloKey::RefusedMax => self.refused_max.map(|v| v.to_string()),
                SloKey::CounterErrorPctMax => self.counter_error_pct_max.map(|v| v.to_string()),
                SloKey::DelayP99MsMax => self.delay_p99_ms_max.map(|v| v.to_string()),
            }
        };
        SloKey::ALL
            .iter()
            .filter_map(|key| value(*key).map(|v| format!("{}={v}", key.name())))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Every limit `record` misses; a run that broke an invariant also misses
    /// `invariants` (measured: violations, limit 0) — no plan may rest on it.
    pub fn check(&self, record: &RunRecord) -> Vec<SloMiss> {
        self.check_keys(record, &SloKey::ALL, None)
    }

    /// The limits of `keys` that `record` misses, plus `invariants`. With
    /// `refused_gate`, `refused_max` counts that gate's refusals only.
    fn check_keys(
        &self,
        record: &RunRecord,
        keys: &[SloKey],
        refused_gate: Option<&str>,
    ) -> Vec<SloMiss> {
        let m = Measured::of(record);
        let refused = match refused_gate {
            None => m.refused,
            Some(gate) => full_population(record, refused_by_gate(record, gate)),
        };
        let mut misses = Vec::new();
        let mut over = |key: SloKey, measured: f64, limit: Option<f64>| {
            if let Some(limit) = limit
                && keys.contains(&key)
                && measured > limit
            {
                misses.push(SloMiss {
                    what: key.name().to_owned(),
                    measured,
                    limit,
                });
            }
        };
        let ms = |v: Option<u64>| v.map(|v| v as f64);
        over(SloKey::DrainSMax, m.drain_s, self.drain_s_max);
        over(
            SloKey::VisibleLagMsMax,
            m.visible_lag_ms as f64,
            ms(self.visible_lag_ms_max),
        );
        over(
            SloKey::CouponP99MsMax,
            m.coupon_p99_ms as f64,
            ms(self.coupon_p99_ms_max),
        );
        over(SloKey::RefusedMax, refused as f64, ms(self.refused_max));
        over(
            SloKey::CounterErrorPctMax,
            m.counter_error_pct,
            self.counter_error_pct_max,
        );
        over(
            SloKey::DelayP99MsMax,
            m.delay_p99_ms as f64,
            ms(self.delay_p99_ms_max),
        );
        let violations: u64 = record.invariants.iter().map(|v| v.violations).sum();
        if !record.passed() {
            misses.push(SloMiss {
                what: "invariants".to_owned(),
                measured: violations as f64,
                limit: 0.0,
            });
        }
        misses
    }

    fn has_any(&self, keys: &[SloKey]) -> bool {
        keys.iter().any(|key| match key {
            SloKey::DrainSMax => self.drain_s_max.is_some(),
            SloKey::VisibleLagMsMax => self.visible_lag_ms_max.is_some(),
            SloKey::CouponP99MsMax => self.coupon_p99_ms_max.is_some(),
            SloKey::RefusedMax => self.refused_max.is_some(),
            SloKey::CounterErrorPctMax => self.counter_error_pct_max.is_some(),
            SloKey::DelayP99MsMax => self.delay_p99_ms_max.is_some(),
        })
    }
}

// ---------------------------------------------------------------------------
// Knobs

/// A knob the planner turns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Knob {
    /// `[capacity] db_instances`.
    DbInstances,
    /// `[crediting] credit_tps` (full population).
    CreditTps,
    /// `[capacity] kv_instances`.
    KvInstances,
    /// `[capacity] app_instances`.
    AppInstances,
    /// `[counter] interval_ms` (plan 2).
    CounterIntervalMs,
    /// `[pipeline] activity_rate_per_s` and `asset_rate_per_s` together (full
    /// population): the coupon pipeline's consumers, which set how soon a
    /// queued coupon is in the account.
    PipelineRatePerS,
}

/// Which way a knob is cheap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Need {
    /// Met from some value up; the cheapest is the smallest met value.
    AtLeast,
    /// Met up to some value; the cheapest is the largest met value.
    AtMost,
}

impl Knob {
    /// Its name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Knob::DbInstances => "db_instances",
            Knob::CreditTps => "credit_tps",
            Knob::KvInstances => "kv_instances",
            Knob::AppInstances => "app_instances",
            Knob::CounterIntervalMs => "counter_interval_ms",
            Knob::PipelineRatePerS => "pipeline_rate_per_s",
        }
    }

    fn keys(self) -> &'static [SloKey] {
        match self {
            Knob::DbInstances | Knob::KvInstances | Knob::AppInstances => &[SloKey::RefusedMax],
            // Coupon credit delay is the coupon pipeline's pace, not the token
            // worker's.
            Knob::PipelineRatePerS => &[SloKey::CouponP99MsMax],
            Knob::CreditTps => &[
                SloKey::DrainSMax,
                SloKey::VisibleLagMsMax,
                SloKey::DelayP99MsMax,
            ],
            Knob::CounterIntervalMs => &[SloKey::CounterErrorPctMax],
        }
    }

    /// The capacity gate whose refusals this knob answers for.
    fn gate(self) -> Option<&'static str> {
        match self {
            Knob::DbInstances => Some("db"),
            Knob::KvInstances => Some("kv"),
            Knob::AppInstances => Some("app"),
            _ => None,
        }
    }

    fn need(self) -> Need {
        match self {
            Knob::CounterIntervalMs => Need::AtMost,
            _ => Need::AtLeast,
        }
    }

    /// The scenario's value.
    fn get(self, scenario: &Scenario) -> u64 {
        match self {
            Knob::DbInstances => scenario.capacity.db_instances,
            Knob::CreditTps => scenario.crediting.worker.credit_tps,
            Knob::KvInstances => scenario.capacity.kv_instances,
            Knob::AppInstances => scenario.capacity.app_instances,
            Knob::CounterIntervalMs => scenario.counter.as_ref().map_or(0, |c| c.interval_ms),
            Knob::PipelineRatePerS => u64::from(
                scenario
                    .pipeline
                    .activity_rate_per_s
                    .min(scenario.pipeline.asset_rate_per_s),
            ),
        }
    }

    fn set(self, scenario: &mut Scenario, value: u64) {
        match self {
            Knob::DbInstances => scenario.capacity.db_instances = value,
            Knob::CreditTps => scenario.crediting.worker.credit_tps = value,
            Knob::KvInstances => scenario.capacity.kv_instances = value,
            Knob::AppInstances => scenario.capacity.app_instances = value,
            Knob::CounterIntervalMs => {
                if let Some(counter) = &mut scenario.counter {
                    counter.interval_ms = value;
                }
            }
            Knob::PipelineRatePerS => {
                let rate = u32::try_from(value).unwrap_or(u32::MAX);
                scenario.pipeline.activity_rate_per_s = rate;
                scenario.pipeline.asset_rate_per_s = rate;
            }
        }
    }

    /// Why the scenario gives this knob nothing to search, if so.
    fn not_modelled(self, scenario: &Scenario) -> Option<&'static str> {
        let capacity = &scenario.capacity;
        match self {
            Knob::DbInstances if capacity.db_model().is_none() => {
                Some("the scenario has no DB model (db_tps_each)")
            }
            Knob::KvInstances if capacity.kv_ops_each <= 0.0 => {
                Some("the scenario does not model KV instances (kv_ops_each)")
            }
            Knob::AppInstances if capacity.app_qps_each <= 0.0 => {
                Some("the scenario does not model app instances (app_qps_each)")
            }
            Knob::CreditTps if scenario.token_keys.is_none() => Some("no scene credits by token"),
            Knob::CounterIntervalMs
                if scenario.counter.as_ref().map(|c| c.plan) != Some(CounterKind::Local) =>
            {
                Some("no plan-2 hot counter")
            }
            Knob::PipelineRatePerS if !crate::options::has_pipeline_scenes(&scenario.tree) => {
                Some("no coupon pipeline scene")
            }
            _ => None,
        }
    }

    /// Generous value: the gate lifted (0 = unlimited), the worker unthrottled,
    /// the counter as the scenario has it.
    fn generous(self, scenario: &Scenario) -> u64 {
        match self {
            Knob::CounterIntervalMs => self.get(scenario),
            // Not 0: a rate of 0 is no consumer at all.
            Knob::PipelineRatePerS => u64::from(u32::MAX),
            _ => 0,
        }
    }

    /// `(smallest, largest, step)` values a search tries.
    fn bounds(self, scenario: &Scenario, sample_rate: f64) -> (u64, u64, u64) {
        match self {
            Knob::DbInstances => {
                let peak = scenario
                    .capacity
                    .db_model()
                    .map_or(INSTANCES_MAX, |m| m.peak_instances());
                (1, peak.min(SEARCH_INSTANCES_MAX), 1)
            }
            // The worker's rate is scaled by the sample and rounded: one
            // credit per second of the sample is the finest step.
            Knob::CreditTps => {
                let step = (1.0 / sample_rate).ceil() as u64;
                (step, step.saturating_mul(1 << 30), step)
            }
            Knob::KvInstances | Knob::AppInstances => (1, SEARCH_INSTANCES_MAX, 1),
            Knob::CounterIntervalMs => (
                scenario.crediting.tick_interval_ms.max(1),
                COUNTER_INTERVAL_MS_MAX,
                1,
            ),
            // Scaled by the sample and rounded, like the worker's rate.
            Knob::PipelineRatePerS => {
                let step = (1.0 / sample_rate).ceil() as u64;
                (step, u64::from(u32::MAX), step)
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The plan

/// One run of a search: the value tried and what it missed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Step {
    /// The knob's value in this run.
    pub value: u64,
    /// Every constraining SLO held.
    pub met: bool,
    /// What it missed (of the SLO keys this knob answers for, and invariants).
    pub missed: Vec<SloMiss>,
}

/// One knob's search.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KnobSearch {
    /// Which knob.
    pub knob: Knob,
    /// The scenario's value.
    pub start: u64,
    /// The cheapest value that met its SLOs (the scenario's value when not
    /// searched); `None` when no value tried met them.
    pub chosen: Option<u64>,
    /// Why the knob was not searched, when it was not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
    /// The runs, in order.
    pub steps: Vec<Step>,
}

/// The knob values a plan chose.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Chosen {
    /// DB instances: the larger of what the DB search found and what the
    /// credit TPS needs.
    pub db_instances: u64,
    /// What the chosen credit TPS needs by the DB model (`None`: no model or
    /// out of its reach).
    pub db_instances_for_credit_tps: Option<u64>,
    /// The worker's credits per second (full population).
    pub credit_tps: u64,
    /// KV instances.
    pub kv_instances: u64,
    /// App instances.
    pub app_instances: u64,
    /// The hot counter's interval (plan 2), ms.
    pub counter_interval_ms: Option<u64>,
    /// The hot counter's KV load at that interval (readers + writers per
    /// interval; full population), ops/s.
    pub counter_kv_ops_per_s: Option<u64>,
    /// The coupon pipeline's consumer rate per layer (full population), when
    /// the scenario has pipeline scenes.
    pub pipeline_rate_per_s: Option<u64>,
}

/// What `plan` found.
#[derive(Debug, Clone, Serialize)]
pub struct PlanReport {
    /// The scenario's name.
    pub scenario: String,
    /// The seed every run used.
    pub seed: u64,
    /// The share of users simulated.
    pub sample_rate: f64,
    /// The SLO planned for.
    pub slo: Slo,
    /// The knob values chosen.
    pub chosen: Chosen,
    /// Their cost ([`COST_DB_INSTANCE`] · DB + [`COST_KV_INSTANCE`] · KV +
    /// [`COST_APP_INSTANCE`] · app).
    pub cost: f64,
    /// The cost formula, for people.
    pub cost_formula: String,
    /// Each knob's search.
    pub searches: Vec<KnobSearch>,
    /// Evidence runs: the knob values of each, what it missed.
    pub evidence_steps: Vec<(Chosen, Vec<SloMiss>)>,
    /// The last evidence run met every SLO.
    pub met: bool,
    /// Engine runs made, evidence included.
    pub runs: usize,
    /// [`PLAN_RUNS_MAX`].
    pub runs_max: usize,
    /// The last evidence run's record (not serialised with the plan; write it apart).
    #[serde(skip)]
    pub evidence: RunRecord,
}

/// Runs the engine; counts and bounds the runs.
#[derive(Debug)]
struct Runner<'a> {
    options: &'a RunOptions,
    runs: usize,
}

impl Runner<'_> {
    fn left(&self) -> usize {
        PLAN_RUNS_MAX.saturating_sub(self.runs)
    }

    async fn run(&mut self, scenario: &Scenario) -> anyhow::Result<RunRecord> {
        anyhow::ensure!(
            self.left() > 0,
            "the plan ran out of runs ({PLAN_RUNS_MAX})"
        );
        self.runs += 1;
        Ok(run_scenario(scenario, self.options).await?.record)
    }
}

/// Finds the cheapest knob values under which `scenario` meets `slo`; see the
/// module doc for the method. Errors are operating errors (a run failed);
/// an SLO no value meets is a plan with `met == false`.
pub async fn plan(
    scenario: &Scenario,
    slo: &Slo,
    options: &RunOptions,
) -> anyhow::Result<PlanReport> {
    let sample_rate = options.sample_rate.unwrap_or(scenario.sample_rate);
    let mut runner = Runner { options, runs: 0 };
    // The background work first (it loads the database and the KV), then the
    // gates, each searched with the values already chosen: the DB instances are
    // sized for the credit TPS the plan picked, not for an unthrottled worker.
    let knobs = [
        Knob::CreditTps,
        Knob::PipelineRatePerS,
        Knob::CounterIntervalMs,
        Knob::DbInstances,
        Knob::KvInstances,
        Knob::AppInstances,
    ];
    let mut generous = scenario.clone();
    for knob in knobs {
        if knob.not_modelled(scenario).is_none() {
            knob.set(&mut generous, knob.generous(scenario));
        }
    }
    // The gates are always sized to refuse nothing they are asked for unless
    // the SLO says how much they may refuse: a plan never buys its savings by
    // turning traffic away. The evidence run is judged on the SLO as given.
    let search_slo = Slo {
        refused_max: slo.refused_max.or(Some(0)),
        ..slo.clone()
    };
    let mut searches = Vec::new();
    for knob in knobs {
        let search = search_knob(
            &mut runner,
            scenario,
            &generous,
            knob,
            &search_slo,
            sample_rate,
        )
        .await
        .with_context(|| format!("searching {}", knob.name()))?;
        if let Some(value) = search.chosen
            && search.skipped.is_none()
        {
            knob.set(&mut generous, value);
        }
        searches.push(search);
    }
    let chosen_of = |knob: Knob| {
        searches
            .iter()
            .find(|s| s.knob == knob)
            .and_then(|s| s.chosen)
            .unwrap_or_else(|| knob.get(scenario))
    };
    let mut values: Vec<(Knob, u64)> = knobs.iter().map(|k| (*k, chosen_of(*k))).collect();
    let mut evidence_steps = Vec::new();
    let mut last: Option<(RunRecord, Vec<SloMiss>)> = None;
    for retry in 0..=EVIDENCE_RETRIES_MAX {
        if retry > 0 {
            let Some((record, misses)) = &last else { break };
            if misses.is_empty() || !step_up(&mut values, misses, record, scenario) {
                break;
            }
            if runner.left() == 0 {
                break;
            }
        }
        let evidence = with_values(scenario, &values);
        let record = runner.run(&evidence).await.context("the evidence run")?;
        let misses = slo.check(&record);
        evidence_steps.push((chosen(&evidence), misses.clone()));
        last = Some((record, misses));
    }
    let Some((evidence, misses)) = last else {
        anyhow::bail!("no evidence run");
    };
    let evidence = crate::plan::strategy::reproduced_by(
        evidence,
        "plan",
        scenario,
        options,
        &format!(" --slo \"{}\"", slo.text()),
    );
    let final_scenario = with_values(scenario, &values);
    let chosen = chosen(&final_scenario);
    Ok(PlanReport {
        scenario: scenario.name.clone(),
        seed: options.seed.unwrap_or(scenario.seed),
        sample_rate,
        slo: slo.clone(),
        cost: cost(&chosen),
        cost_formula: format!(
            "{COST_DB_INSTANCE} per DB instance + {COST_KV_INSTANCE} per KV instance + {COST_APP_INSTANCE} per app instance"
        ),
        chosen,
        searches,
        evidence_steps,
        met: misses.is_empty(),
        runs: runner.runs,
        runs_max: PLAN_RUNS_MAX,
        evidence,
    })
}

fn cost(chosen: &Chosen) -> f64 {
    COST_DB_INSTANCE * chosen.db_instances as f64
        + COST_KV_INSTANCE * chosen.kv_instances as f64
        + COST_APP_INSTANCE * chosen.app_instances as f64
}

/// `scenario` with the knob values; DB instances raised to what the credit
/// TPS needs.
fn with_values(scenario: &Scenario, values: &[(Knob, u64)]) -> Scenario {
    let mut out = scenario.clone();
    for (knob, value) in values {
        if knob.not_modelled(scenario).is_none() {
            knob.set(&mut out, *value);
        }
    }
    if let Some(needed) = db_for_credit_tps(&out) {
        out.capacity.db_instances = out.capacity.db_instances.max(needed);
    }
    out
}

fn db_for_credit_tps(scenario: &Scenario) -> Option<u64> {
    let model: DbModel = scenario.capacity.db_model()?;
    let tps = scenario.crediting.worker.credit_tps;
    if tps == 0 || scenario.token_keys.is_none() {
        return None;
    }
    model.instances_for(tps as f64)
}

fn chosen(scenario: &Scenario) -> Chosen {
    let counter = scenario
        .counter
        .as_ref()
        .filter(|c| c.plan == CounterKind::Local);
    Chosen {
        db_instances: scenario.capacity.db_instances,
        db_instances_for_credit_tps: db_for_credit_tps(scenario),
        credit_tps: scenario.crediting.worker.credit_tps,
        kv_instances: scenario.capacity.kv_instances,
        app_instances: scenario.capacity.app_instances,
        counter_interval_ms: counter.map(|c| c.interval_ms),
        counter_kv_ops_per_s: counter
            .map(|c| counter_plan2_ops(u64::from(c.readers), u64::from(c.writers), c.interval_ms)),
        pipeline_rate_per_s: crate::options::has_pipeline_scenes(&scenario.tree)
            .then(|| Knob::PipelineRatePerS.get(scenario)),
    }
}

/// After an evidence run missed: step up the knobs answering for what it
/// missed by [`RETRY_FACTOR`]. `false` when no knob can help.
fn step_up(
    values: &mut [(Knob, u64)],
    misses: &[SloMiss],
    record: &RunRecord,
    scenario: &Scenario,
) -> bool {
    let mut stepped = false;
    for (knob, value) in values.iter_mut() {
        if knob.not_modelled(scenario).is_some() || knob.need() != Need::AtLeast {
            continue;
        }
        let answers = misses.iter().any(|m| {
            knob.keys().iter().any(|k| k.name() == m.what)
                && match knob.gate() {
                    Some(gate) => refused_by_gate(record, gate) > 0,
                    None => true,
                }
        });
        if answers && *value > 0 {
            *value = ((*value as f64 * RETRY_FACTOR).ceil() as u64).max(*value + 1);
            stepped = true;
        }
    }
    stepped
}

async fn search_knob(
    runner: &mut Runner<'_>,
    scenario: &Scenario,
    generous: &Scenario,
    knob: Knob,
    slo: &Slo,
    sample_rate: f64,
) -> anyhow::Result<KnobSearch> {
    let start = knob.get(scenario);
    let mut search = KnobSearch {
        knob,
        start,
        chosen: Some(start),
        skipped: None,
        steps: Vec::new(),
    };
    if let Some(reason) = knob.not_modelled(scenario) {
        search.skipped = Some(reason.to_owned());
        return Ok(search);
    }
    if !slo.has_any(knob.keys()) {
        search.skipped = Some(NOT_CONSTRAINED.to_owned());
        return Ok(search);
    }
    let (min, max, step) = knob.bounds(scenario, sample_rate);
    let snap = |v: u64| (v.div_ceil(step) * step).clamp(min, max);
    let need = knob.need();
    // Toward cheaper and toward dearer by a factor of two.
    let cheaper = |v: u64| match need {
        Need::AtLeast => snap(v / 2),
        Need::AtMost => snap(v.saturating_mul(2)),
    };
    let dearer = |v: u64| match need {
        Need::AtLeast => snap(v.saturating_mul(2)),
        Need::AtMost => snap(v / 2),
    };
    let mut met: Option<u64> = None;
    let mut missed: Option<u64> = None;
    let mut probe = snap(if start == 0 { min } else { start });
    // Exponential: find a bracket [met, missed] (or an end of the range).
    loop {
        if runner.left() <= 1 {
            break; // keep one run for the evidence
        }
        let ok = try_value(runner, generous, knob, probe, slo, &mut search).await?;
        if ok {
            met = Some(probe);
            if missed.is_some() {
                break;
            }
            let next = cheaper(probe);
            if next == probe {
                break;
            }
            probe = next;
        } else {
            missed = Some(probe);
            if met.is_some() {
                break;
            }
            let next = dearer(probe);
            if next == probe {
                break;
            }
            probe = next;
        }
    }
    // Binary inside the bracket.
    while let (Some(m), Some(x)) = (met, missed) {
        let gap = m.abs_diff(x);
        let resolution = ((m as f64 * SEARCH_RESOLUTION) as u64).max(step);
        if gap <= resolution || runner.left() <= 1 {
            break;
        }
        let middle = (m.min(x) + gap / 2) / step * step;
        if middle == m || middle == x {
            break;
        }
        if try_value(runner, generous, knob, middle, slo, &mut search).await? {
            met = Some(middle);
        } else {
            missed = Some(middle);
        }
    }
    search.chosen = met;
    Ok(search)
}

async fn try_value(
    runner: &mut Runner<'_>,
    generous: &Scenario,
    knob: Knob,
    value: u64,
    slo: &Slo,
    search: &mut KnobSearch,
) -> anyhow::Result<bool> {
    let mut scenario = generous.clone();
    knob.set(&mut scenario, value);
    let record = runner.run(&scenario).await?;
    let missed = slo.check_keys(&record, knob.keys(), knob.gate());
    let met = missed.is_empty();
    search.steps.push(Step { value, met, missed });
    Ok(met)
}

// ---------------------------------------------------------------------------
// Rendering

fn chosen_line(chosen: &Chosen) -> String {
    let mut parts = vec![
        format!("db_instances {}", chosen.db_instances),
        format!("credit_tps {}", chosen.credit_tps),
        format!("kv_instances {}", chosen.kv_instances),
        format!("app_instances {}", chosen.app_instances),
    ];
    if let Some(interval) = chosen.counter_interval_ms {
        parts.push(format!("counter interval {interval} ms"));
    }
    if let Some(rate) = chosen.pipeline_rate_per_s {
        parts.push(format!("pipeline {rate}/s per layer"));
    }
    parts.join(" · ")
}

fn misses_text(misses: &[SloMiss]) -> String {
    if misses.is_empty() {
        "met".to_owned()
    } else {
        let parts: Vec<String> = misses.iter().map(|m| format!("missed {m}")).collect();
        parts.join(", ")
    }
}

/// The plan as one screen of text.
pub fn render_plan(report: &PlanReport) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = writeln!(
        out,
        "redrain plan · {} · seed {} · sample {} (×{:.0}) · {} of at most {} runs",
        report.scenario,
        report.seed,
        report.sample_rate,
        1.0 / report.sample_rate,
        report.runs,
        report.runs_max
    );
    let _ = writeln!(
        out,
        "  {} the SLO · cost {:.1} ({})",
        if report.met { "meets" } else { "DOES NOT MEET" },
        report.cost,
        report.cost_formula
    );
    let c = &report.chosen;
    let _ = writeln!(out, "  chosen: {}", chosen_line(c));
    if let Some(n) = c.db_instances_for_credit_tps {
        let _ = writeln!(
            out,
            "  credit_tps {} needs {n} DB instances by the DB model",
            c.credit_tps
        );
    }
    if let Some(ops) = c.counter_kv_ops_per_s {
        let _ = writeln!(out, "  hot counter KV load {ops} ops/s at that interval");
    }
    for search in &report.searches {
        let modelled = search
            .skipped
            .as_deref()
            .is_none_or(|r| r == NOT_CONSTRAINED);
        let head = match (&search.skipped, search.chosen) {
            (Some(reason), _) if !modelled => format!("not searched: {reason}"),
            (Some(reason), _) => format!("kept {} ({reason})", search.start),
            (None, Some(v)) => format!("{} → {v}", search.start),
            (None, None) => format!("{} → no value tried met it", search.start),
        };
        let _ = writeln!(out, "\n{}: {head}", search.knob.name());
        for step in &search.steps {
            let _ = writeln!(out, "  {:>12}  {}", step.value, misses_text(&step.missed));
        }
    }
    let _ = writeln!(out, "\nevidence");
    for (chosen, misses) in &report.evidence_steps {
        let _ = writeln!(out, "  {}  {}", chosen_line(chosen), misses_text(misses));
    }
    let refused: Vec<String> = report
        .evidence
        .outcomes
        .iter()
        .filter_map(|(kind, n)| {
            let gate = kind.strip_prefix(REFUSED_CAPACITY_PREFIX)?;
            let full = (*n as f64 / report.evidence.sample_rate).round();
            Some(format!("{gate} {full:.0}"))
        })
        .collect();
    if !refused.is_empty() {
        let _ = writeln!(
            out,
            "  refused by gate (full population): {} — no knob turns kv_key (split the hot key)",
            refused.join(" · ")
        );
    }
    let m = Measured::of(&report.evidence);
    let _ = writeln!(
        out,
        "  measured: drain {:.1} s · visible lag {} ms · coupon credit p99 {} ms · credit delay p99 {} ms (all credits) · refused {} · counter trails by {:.2}%",
        m.drain_s,
        m.visible_lag_ms,
        m.coupon_p99_ms,
        m.delay_p99_ms,
        m.refused,
        m.counter_error_pct
    );
    out
}
