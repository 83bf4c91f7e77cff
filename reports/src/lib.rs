//! The `RunRecord` — the one contract between a run and its report — and its
//! renderings. This crate knows nothing about how a run happened: it only reads
//! records, and it never reads or writes files (callers decide where bytes go).
//!
//! - [`render_summary`] (here): the one-screen text summary printed after a run.
//! - [`charts`](mod@charts): one chart per question asked of the per-second series
//!   (throughput, backlog and drain, credit delay, rejections, coupon stock, hot
//!   counter, KV and DB calls against their limits), each as SVG and PNG, text
//!   drawn with an embedded font; charts without data are left out.
//! - [`html`]: one self-contained HTML report (verdicts first, charts inline).
//! - [`markdown`]: the same report in Markdown, linking `<stem>-<id>.svg`.
//! - [`compare`](mod@compare): named key figures, the comparison of two runs (text and HTML
//!   with overlay charts) and k6-like thresholds (`credit_delay_ms_p99 > 500`).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

pub mod charts;
pub mod compare;
pub mod figures;
pub mod html;
pub mod markdown;

pub use charts::{
    CHART_HEIGHT_PX, CHART_IDS, CHART_WIDTH_PX, Chart, chart_index, chart_png, chart_svg, charts,
};
pub use compare::{
    Comparison, MetricDelta, Op, Target, Threshold, ThresholdError, ThresholdOutcome, compare,
    parse_threshold, render_comparison_html, render_comparison_text,
};
pub use figures::{KEY_FIGURES, KeyFigure, key_figure, key_figures};
pub use html::render_html;
pub use markdown::render_markdown;

/// Bumped whenever a field changes meaning or goes away.
pub const RUN_RECORD_VERSION: u32 = 4;

/// Everything a report needs to know about one run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    /// [`RUN_RECORD_VERSION`] at the time of writing.
    pub version: u32,
    /// What was run.
    pub scenario: ScenarioInfo,
    /// Which build ran it.
    pub build: String,
    /// The ledger backend URL (password redacted).
    pub ledger_url: String,
    /// The KV backend URL (password redacted).
    #[serde(default = "memory_url")]
    pub kv_url: String,
    /// Every request carried the shadow tag (served from the shadow stores).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shadow: bool,
    /// Share of users simulated; aggregate counts are of the sample (multiply
    /// by `1 / sample_rate` for the full population).
    #[serde(default = "one")]
    pub sample_rate: f64,
    /// The trace that was sent.
    #[serde(default)]
    pub trace: TraceInfo,
    /// BLAKE3 of the answered requests in order: equal hashes, equal runs.
    pub history_hash: String,
    /// Answers by kind, e.g. `issue.issued`, `issue.out_of_stock`, `withdraw.withdrawn`.
    pub outcomes: BTreeMap<String, u64>,
    /// What the ledger holds at the end.
    pub totals: Totals,
    /// Token crediting figures, when the scenario credits by token.
    #[serde(default)]
    pub crediting: Option<CreditingSummary>,
    /// Hot-counter figures, when the scenario shows one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counter: Option<CounterSummary>,
    /// Credit delay (award to ledger credit), over the whole run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<DelaySummary>,
    /// Credit delay of coupon credits only (sync, pipeline), when any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coupon_delay: Option<DelaySummary>,
    /// What wallet pages showed against what was owed.
    #[serde(default)]
    pub views: ViewSummary,
    /// Capacity gates: requests admitted and refused per gate, and the planner's answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<CapacitySummary>,
    /// KV and DB calls the wallet made.
    #[serde(default)]
    pub stores: StoresSummary,
    /// One row per virtual second (counts of the sample).
    #[serde(default)]
    pub series: Vec<SecondSample>,
    /// Wall-clock figures of this run (the only non-deterministic part).
    pub wall: Wall,
    /// Checks run mid-run (`--check-every-s`): when, and what they found
    /// (their violations also count in `invariants`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub midway_checks: Vec<MidwayCheck>,
    /// One verdict per checked invariant.
    pub invariants: Vec<Verdict>,
    /// The command that reproduces this run.
    pub reproduce: String,
    /// A live load against a server (`redrain load`): what the driver sent,
    /// dropped and measured. Absent for a simulated run. (Version 4.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live: Option<LiveSummary>,
}

/// What a live load's driver did and measured.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LiveSummary {
    /// The server loaded.
    pub target: String,
    /// Share of the profile's users (and so of its rate) sent.
    pub rate_scale: f64,
    /// Award requests the trace scheduled.
    pub scheduled: u64,
    /// Award requests sent.
    pub sent: u64,
    /// Award requests not sent because `in_flight_max` were outstanding at
    /// their scheduled time (the open model never waits to send).
    pub dropped: u64,
    /// Most award requests outstanding at once allowed.
    pub in_flight_max: u64,
    /// Most outstanding at once seen.
    pub in_flight_peak: u64,
    /// Calls that got no protocol answer, by label (`error.transport`, an error code).
    pub errors: BTreeMap<String, u64>,
    /// Award latency from the scheduled send time to the answer, µs
    /// (coordinated omission cannot hide a stall: a late send counts its wait).
    pub issue_latency_us: Option<LatencySummary>,
    /// User journeys (wallet page, flow, withdraw page, withdraw) run by goose.
    pub journeys: u64,
    /// Journey step latency from the journey's scheduled time, µs.
    pub journey_latency_us: Option<LatencySummary>,
    /// Requests goose made and how many it counted as failed (non-2xx included:
    /// a 409 conflict is an answer to us, a failure to goose).
    pub goose_requests: u64,
    /// See `goose_requests`.
    pub goose_failures: u64,
    /// Award requests sent per wall second over the sending phase.
    pub sent_per_s: f64,
    /// Wall ms the sending phase took.
    pub send_ms: u64,
    /// Wall ms the target took to drain (tokens credited, coupon queues empty).
    pub drain_ms: u64,
    /// Whether it drained within the limit.
    pub drained: bool,
}

/// Percentiles of a latency histogram, µs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50_us: u64,
    /// 90th percentile.
    pub p90_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// Largest.
    pub max_us: u64,
    /// Mean.
    pub mean_us: f64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn memory_url() -> String {
    "memory".to_owned()
}

fn one() -> f64 {
    1.0
}

/// The trace a run sent.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceInfo {
    /// BLAKE3 of the trace's JSONL body (`redrain trace export` writes the same).
    pub hash: String,
    /// Requests in it.
    pub ops: u64,
    /// `i/N` when only one shard ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<String>,
    /// Where it came from: `generated` or the replayed file.
    pub source: String,
}

/// Percentiles of a delay, in virtual milliseconds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DelaySummary {
    /// Credits measured.
    pub count: u64,
    /// Median.
    pub p50_ms: u64,
    /// 90th percentile.
    pub p90_ms: u64,
    /// 99th percentile.
    pub p99_ms: u64,
    /// 99.9th percentile.
    pub p999_ms: u64,
    /// Longest.
    pub max_ms: u64,
}

/// Wallet pages against what the user was owed at that moment.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViewSummary {
    /// Pages shown.
    pub views: u64,
    /// Pages (token scheme: credited + pending tokens) that showed less than owed.
    pub short: u64,
    /// Pages that would have shown less under plain async crediting (credited only).
    pub plain_async_short: u64,
    /// Largest amount plain async crediting would have hidden on one page, in cents.
    pub plain_async_hidden_max_cents: u64,
}

/// Capacity gates of a run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CapacitySummary {
    /// Per gate (`app`, `db`, `kv`, `kv_key`): units admitted and refused.
    pub gates: BTreeMap<String, GateFigures>,
    /// DB instances synchronous crediting would need at this run's peak award
    /// rate (full population), by the scenario's DB model; `None` when unreachable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync_db_instances_needed: Option<u64>,
    /// The peak award rate that answer is for (full population, per second).
    pub peak_award_qps: f64,
    /// DB transactions per second the configured instances give (full population).
    pub db_tps: f64,
}

/// One gate's totals.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GateFigures {
    /// Units admitted.
    pub admitted: u64,
    /// Units refused.
    pub refused: u64,
}

/// Store calls over the run.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoresSummary {
    /// KV calls.
    pub kv_calls: u64,
    /// Ledger calls (a credit batch is one).
    pub db_calls: u64,
    /// Busiest virtual second of KV calls.
    pub kv_peak_per_s: u64,
    /// Busiest virtual second of ledger calls.
    pub db_peak_per_s: u64,
}

/// One virtual second of a run (counts of the sample).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecondSample {
    /// Seconds since the start.
    pub t_s: u64,
    /// Requests that arrived.
    pub offered: u64,
    /// Awards answered with a first success (issued, accepted or queued).
    pub awarded: u64,
    /// Requests turned away, by reason (`capacity.db`, `out_of_stock`, …).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub rejected: BTreeMap<String, u64>,
    /// Ledger credits posted (sync, worker, force-credit, pipeline).
    pub credited: u64,
    /// Tokens pending or inflight at the end of the second.
    pub backlog: u64,
    /// Coupon orders queued in the pipeline at the end of the second.
    #[serde(default)]
    pub pipeline_depth: u64,
    /// Credit delay of this second's credits, median, ms.
    pub delay_p50_ms: u64,
    /// 99th percentile.
    pub delay_p99_ms: u64,
    /// 99.9th percentile.
    #[serde(default)]
    pub delay_p999_ms: u64,
    /// Longest.
    pub delay_max_ms: u64,
    /// Coupons consumed so far, all templates.
    pub coupons_consumed: u64,
    /// Coupon stock, all templates.
    pub coupon_stock: u64,
    /// Hot counter: the highest value a reader showed this second.
    #[serde(default)]
    pub counter_shown: i64,
    /// Hot counter: the true total at the end of the second.
    #[serde(default)]
    pub counter_true: u64,
    /// Per coupon template (keyed by template id): consumed so far and stock.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub stock: BTreeMap<String, StockSample>,
    /// KV calls this second.
    pub kv_ops: u64,
    /// Ledger calls this second.
    pub db_ops: u64,
    /// Write transactions charged to the database gate this second (what the
    /// DB capacity limits: sync credits, withdraws, worker and pipeline batches).
    #[serde(default)]
    pub db_writes: u64,
    /// The database gate's allowance this second (after faults); 0 = unlimited.
    #[serde(default)]
    pub db_limit: u64,
    /// The KV gate's allowance this second; 0 = unlimited.
    #[serde(default)]
    pub kv_limit: u64,
    /// A live load: the 99th percentile of award latency from the scheduled
    /// send time, µs, of the awards scheduled in this second (0 otherwise).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub latency_p99_us: u64,
}

/// One coupon template's stock at the end of a virtual second.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockSample {
    /// Units consumed so far.
    pub consumed: u64,
    /// Units of stock (the strategy side stops offering below 10% remaining).
    pub total: u64,
}

/// The scenario as run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScenarioInfo {
    /// Its name.
    pub name: String,
    /// Its file.
    pub file: String,
    /// The seed used.
    pub seed: u64,
    /// Requests sent.
    pub requests: u64,
    /// Virtual duration.
    pub duration_ms: u64,
}

/// Ledger totals at the end of a run.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    /// Ledger entries.
    pub entries: u64,
    /// Accounts.
    pub accounts: u64,
    /// Cash credited.
    pub cash_credited_cents: u64,
    /// Cash withdrawn.
    pub cash_withdrawn_cents: u64,
    /// Cash left in balances.
    pub balance_cents: u64,
    /// Coupons credited.
    pub coupons: u64,
    /// Pendants credited.
    pub pendants: u64,
}

/// Token crediting figures of a run.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreditingSummary {
    /// Tokens accepted (first answers).
    pub accepted: u64,
    /// Tokens the credit worker credited.
    pub credited_by_worker: u64,
    /// Tokens force-credited on withdraw.
    pub force_credited: u64,
    /// Most tokens pending or inflight at any tick.
    pub backlog_peak: u64,
    /// Virtual time from the last request until nothing was pending.
    pub drain_ms: u64,
    /// Injected worker crashes.
    pub worker_crashes: u64,
    /// Stale claims the compensation scan re-queued: tokens claimed but not
    /// credited within the processing timeout (after a worker crash, mostly).
    pub requeued: u64,
    /// Failed ledger attempts the worker retried.
    pub failed_attempts: u64,
    /// Forged, tampered or foreign tokens presented with withdraws.
    pub forged_presented: u64,
}

/// Hot-counter figures of a run (seed 000 §4.5).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CounterSummary {
    /// `split` (plan 1) or `local` (plan 2).
    pub plan: String,
    /// Counter writes (cash awards counted).
    pub writes: u64,
    /// Reader polls answered.
    pub reads: u64,
    /// Polls that found no value yet (plan 2 before its first refresh).
    pub blocked_reads: u64,
    /// `INCRBY` calls the plan sent.
    pub kv_writes: u64,
    /// `GET` calls the plan sent.
    pub kv_reads: u64,
    /// KV calls per virtual second of the run.
    pub kv_ops_per_s: f64,
    /// Everything awarded, in cents.
    pub true_total_cents: u64,
    /// The highest value a reader shows at the end.
    pub final_shown_cents: i64,
    /// `(shown - truth) / truth`, percent.
    pub final_error_pct: f64,
}

/// Wall-clock figures.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Wall {
    /// Time to drive the workload.
    pub elapsed_ms: u64,
    /// Requests answered per wall second.
    pub requests_per_s: f64,
    /// Wall time by part: trace, requests, credit worker, coupon pipeline, hot
    /// counter, series, final state, checkers (the run's profile).
    #[serde(default)]
    pub spent_ms: BTreeMap<String, u64>,
}

/// One check of the invariants mid-run, on a snapshot of the stores.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MidwayCheck {
    /// Virtual seconds since the start when the snapshot was taken (a
    /// second boundary: `--check-every-s 10` checks at 10, 20, … s).
    pub t_s: u64,
    /// Violations found then.
    pub violations: u64,
}

/// One invariant's verdict.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    /// `I1` … `I8`.
    pub id: String,
    /// Short name.
    pub name: String,
    /// No violations.
    pub passed: bool,
    /// How many violations.
    pub violations: u64,
    /// The first few, as text.
    pub examples: Vec<String>,
}

impl RunRecord {
    /// Whether every invariant held.
    pub fn passed(&self) -> bool {
        self.invariants.iter().all(|v| v.passed)
    }
}

fn ms(value: u64) -> String {
    if value >= 60_000 {
        format!("{:.1} min", value as f64 / 60_000.0)
    } else if value >= 1000 {
        format!("{:.1} s", value as f64 / 1000.0)
    } else {
        format!("{value} ms")
    }
}

fn spent_line(spent: &BTreeMap<String, u64>) -> String {
    let total: u64 = spent.values().sum();
    if total == 0 {
        return String::new();
    }
    let mut parts: Vec<(&String, &u64)> = spent.iter().filter(|(_, v)| **v > 0).collect();
    parts.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let shown: Vec<String> = parts
        .iter()
        .take(4)
        .map(|(k, v)| format!("{k} {:.0}%", **v as f64 * 100.0 / total as f64))
        .collect();
    format!(" · time: {}", shown.join(", "))
}

fn cents(value: u64) -> String {
    format!("{}.{:02}", value / 100, value % 100)
}

/// The one-screen summary printed at the end of a run.
pub fn render_summary(record: &RunRecord) -> String {
    let mut out = String::new();
    let s = &record.scenario;
    // Writing to a String cannot fail.
    let sample = if record.sample_rate < 1.0 {
        format!(
            " · sample {} (counts are of the sample; ×{:.0} for everyone)",
            record.sample_rate,
            1.0 / record.sample_rate
        )
    } else {
        String::new()
    };
    let (command, time) = if record.live.is_some() {
        ("load", "live")
    } else {
        ("run", "virtual")
    };
    let _ = writeln!(
        out,
        "redrain {command} · {} · seed {} · {} requests over {} s ({time}){sample}",
        s.name,
        s.seed,
        s.requests,
        s.duration_ms / 1000
    );
    if let Some(live) = &record.live {
        let _ = writeln!(
            out,
            "  live load of {} at rate scale {}: {} awards scheduled, {} sent ({:.0}/s), {} dropped \
             (in flight peak {} of {}), {} journeys, drained {} in {} ms",
            live.target,
            live.rate_scale,
            live.scheduled,
            live.sent,
            live.sent_per_s,
            live.dropped,
            live.in_flight_peak,
            live.in_flight_max,
            live.journeys,
            if live.drained { "fully" } else { "NOT fully" },
            live.drain_ms
        );
        if let Some(l) = &live.issue_latency_us {
            let _ = writeln!(
                out,
                "  award latency from scheduled time (µs): p50 {} · p90 {} · p99 {} · p99.9 {} · max {}",
                l.p50_us, l.p90_us, l.p99_us, l.p999_us, l.max_us
            );
        }
        if let Some(l) = &live.journey_latency_us {
            let _ = writeln!(
                out,
                "  journey step latency (µs): p50 {} · p99 {} · max {} · goose {} requests, {} failed",
                l.p50_us, l.p99_us, l.max_us, live.goose_requests, live.goose_failures
            );
        }
        if !live.errors.is_empty() {
            let errors: Vec<String> = live
                .errors
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            let _ = writeln!(out, "  calls without an answer: {}", errors.join(" · "));
        }
    }
    let _ = writeln!(
        out,
        "  ledger {} · kv {}{} · build {} · history {}",
        record.ledger_url,
        record.kv_url,
        if record.shadow {
            " · shadow traffic"
        } else {
            ""
        },
        record.build,
        &record.history_hash[..16.min(record.history_hash.len())]
    );
    let _ = writeln!(
        out,
        "  trace {}{} · {} ops from {}",
        &record.trace.hash[..16.min(record.trace.hash.len())],
        record
            .trace
            .shard
            .as_deref()
            .map(|s| format!(" (shard {s})"))
            .unwrap_or_default(),
        record.trace.ops,
        record.trace.source
    );
    let _ = writeln!(
        out,
        "  wall {:.2} s · {:.0} requests/s{}",
        record.wall.elapsed_ms as f64 / 1000.0,
        record.wall.requests_per_s,
        spent_line(&record.wall.spent_ms)
    );
    let _ = writeln!(out, "\noutcomes");
    for (kind, count) in &record.outcomes {
        let share = *count as f64 * 100.0 / s.requests.max(1) as f64;
        let _ = writeln!(out, "  {kind:<34} {count:>10}  {share:>5.1}%");
    }
    let t = &record.totals;
    let _ = writeln!(out, "\nledger");
    let _ = writeln!(
        out,
        "  entries {} · accounts {} · coupons {} · pendants {}",
        t.entries, t.accounts, t.coupons, t.pendants
    );
    let _ = writeln!(
        out,
        "  cash credited {} · withdrawn {} · in balances {}",
        cents(t.cash_credited_cents),
        cents(t.cash_withdrawn_cents),
        cents(t.balance_cents)
    );
    if let Some(c) = &record.counter {
        let _ = writeln!(
            out,
            "\nhot counter (plan {}): {} writes, {} reads ({} blocked); {} KV writes + {} KV reads = {:.0} KV ops/s; shown {} of {} cents at the end ({:+.3}%)",
            c.plan,
            c.writes,
            c.reads,
            c.blocked_reads,
            c.kv_writes,
            c.kv_reads,
            c.kv_ops_per_s,
            c.final_shown_cents,
            c.true_total_cents,
            c.final_error_pct
        );
    }
    if let Some(c) = &record.crediting {
        let _ = writeln!(out, "\ntoken crediting");
        let _ = writeln!(
            out,
            "  accepted {} · credited by worker {} · force-credited on withdraw {} · backlog peak {} · drained in {:.1} s (virtual)",
            c.accepted,
            c.credited_by_worker,
            c.force_credited,
            c.backlog_peak,
            c.drain_ms as f64 / 1000.0
        );
        let _ = writeln!(
            out,
            "  worker crashes {} · stale claims re-queued by the compensation scan {} · failed ledger attempts {} · forged tokens presented {}",
            c.worker_crashes, c.requeued, c.failed_attempts, c.forged_presented
        );
    }
    if let Some(d) = &record.delay {
        let _ = writeln!(
            out,
            "\ncredit delay (award to ledger, virtual): p50 {} · p90 {} · p99 {} · p99.9 {} · max {} over {} credits",
            ms(d.p50_ms),
            ms(d.p90_ms),
            ms(d.p99_ms),
            ms(d.p999_ms),
            ms(d.max_ms),
            d.count
        );
    }
    let v = &record.views;
    if v.views > 0 {
        let _ = writeln!(
            out,
            "wallet pages: {} read, {} below the awards already answered; without pending tokens (plain async) {} would be (up to {} missing)",
            v.views,
            v.short,
            v.plain_async_short,
            cents(v.plain_async_hidden_max_cents)
        );
    }
    if let Some(c) = &record.capacity {
        let gates: Vec<String> = c
            .gates
            .iter()
            .filter(|(_, g)| g.admitted + g.refused > 0)
            .map(|(name, g)| format!("{name} {} in / {} refused", g.admitted, g.refused))
            .collect();
        let _ = writeln!(out, "\ncapacity: {}", gates.join(" · "));
        let needed = c
            .sync_db_instances_needed
            .map_or("more than the model can reach".to_owned(), |n| {
                n.to_string()
            });
        let _ = writeln!(
            out,
            "  peak awards {:.0}/s (everyone) · sync crediting would need {needed} DB instances · configured DB gives {:.0} TPS",
            c.peak_award_qps, c.db_tps
        );
    }
    let st = &record.stores;
    if st.kv_calls + st.db_calls > 0 {
        let _ = writeln!(
            out,
            "stores: {} KV calls (peak {}/s) · {} DB calls (peak {}/s)",
            st.kv_calls, st.kv_peak_per_s, st.db_calls, st.db_peak_per_s
        );
    }
    let _ = writeln!(out, "\ninvariants");
    for verdict in &record.invariants {
        let mark = if verdict.passed { "pass" } else { "FAIL" };
        let _ = writeln!(
            out,
            "  {} {:<16} {mark}  {} violation(s)",
            verdict.id, verdict.name, verdict.violations
        );
        for example in &verdict.examples {
            let _ = writeln!(out, "      {example}");
        }
    }
    if !record.passed() {
        let _ = writeln!(out, "\nreproduce with:\n  {}", record.reproduce);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(passed: bool) -> RunRecord {
        RunRecord {
            version: RUN_RECORD_VERSION,
            scenario: ScenarioInfo {
                name: "smoke".into(),
                file: "scenarios/smoke.toml".into(),
                seed: 7,
                requests: 10,
                duration_ms: 60_000,
            },
            build: "redrain 0.1.0".into(),
            ledger_url: "memory".into(),
            kv_url: "memory".into(),
            shadow: false,
            sample_rate: 1.0,
            trace: TraceInfo::default(),
            history_hash: "ab".repeat(32),
            outcomes: BTreeMap::from([
                ("issue.issued".to_owned(), 9),
                ("issue.zero_amount".to_owned(), 1),
            ]),
            totals: Totals {
                cash_credited_cents: 12_345,
                ..Totals::default()
            },
            crediting: None,
            counter: None,
            delay: None,
            coupon_delay: None,
            views: ViewSummary::default(),
            capacity: None,
            stores: StoresSummary::default(),
            series: Vec::new(),
            midway_checks: Vec::new(),
            wall: Wall {
                elapsed_ms: 1500,
                requests_per_s: 6.7,
                spent_ms: BTreeMap::new(),
            },
            invariants: vec![Verdict {
                id: "I1".into(),
                name: "idempotency".into(),
                passed,
                violations: u64::from(!passed),
                examples: if passed {
                    vec![]
                } else {
                    vec!["child 1 order 7_1_1_1_1: posted 2 times".into()]
                },
            }],
            reproduce: "redrain run scenarios/smoke.toml --seed 7".into(),
            live: None,
        }
    }

    #[test]
    fn summary_shows_verdicts_and_reproduction_only_on_failure() {
        let ok = render_summary(&record(true));
        assert!(ok.contains("I1 idempotency      pass"), "{ok}");
        assert!(ok.contains("cash credited 123.45"), "{ok}");
        assert!(ok.contains("issue.issued"), "{ok}");
        assert!(!ok.contains("reproduce with"), "{ok}");
        let bad = render_summary(&record(false));
        assert!(bad.contains("FAIL  1 violation(s)"), "{bad}");
        assert!(bad.contains("posted 2 times"), "{bad}");
        assert!(
            bad.contains("reproduce with:\n  redrain run scenarios/smoke.toml --seed 7"),
            "{bad}"
        );
    }

    #[test]
    fn record_round_trips_through_json() {
        let r = record(false);
        let text = serde_json::to_string(&r).expect("serialize");
        assert_eq!(serde_json::from_str::<RunRecord>(&text).expect("parse"), r);
    }
}
