//! The key figures: named metrics of a run, units and qualifiers last, read off a
//! `RunRecord` (what thresholds, comparisons and the report's figure table name),
//! and how a figure is written for people. Never renders a page.
//!
//! The figures are a fixed, named list ([`KEY_FIGURES`]) so a threshold, a CI job
//! and a reader all mean the same thing by a name. Counts are of the record as
//! written, i.e. of the sample when only a sample of users ran.

use std::collections::BTreeMap;

use crate::{RunRecord, SecondSample};

/// One named metric of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyFigure {
    /// The name thresholds use; units and qualifiers last.
    pub name: &'static str,
    /// What it measures.
    pub meaning: &'static str,
    /// When a record has it (the rest of the time it is absent, never 0).
    pub present_when: &'static str,
}

const ALWAYS: &str = "always";
const SERIES: &str = "the record has a per-second series";
const DELAY: &str = "the run measured credit delays";
const COUPON_DELAY: &str = "the run credited coupons";
const TOKENS: &str = "the scenario credits by token";
const VIEWS: &str = "wallet pages were shown";
const CAPACITY: &str = "the run had capacity gates";
const PLANNER: &str = "the capacity planner reached an answer";
const LIVE: &str = "the run was a live load (`redrain load`)";
const LIVE_JOURNEYS: &str = "a live load ran user journeys";
const COUNTER: &str = "the scenario shows a hot counter";

const fn figure(
    name: &'static str,
    meaning: &'static str,
    present_when: &'static str,
) -> KeyFigure {
    KeyFigure {
        name,
        meaning,
        present_when,
    }
}

/// Every metric [`key_figures`] can report, in report order.
pub const KEY_FIGURES: &[KeyFigure] = &[
    figure("requests", "requests sent", ALWAYS),
    figure(
        "duration_s",
        "virtual duration of the request phase",
        ALWAYS,
    ),
    figure(
        "offered_peak_per_s",
        "busiest second of arriving requests",
        SERIES,
    ),
    figure(
        "awarded",
        "awards answered with a first success (issued, accepted, queued)",
        SERIES,
    ),
    figure("awarded_peak_per_s", "busiest second of awards", SERIES),
    figure("rejected", "requests turned away, every reason", SERIES),
    figure("credited_entries", "ledger entries at the end", ALWAYS),
    figure(
        "credit_delay_ms_p50",
        "credit delay (award to ledger credit), median",
        DELAY,
    ),
    figure(
        "credit_delay_ms_p90",
        "credit delay, 90th percentile",
        DELAY,
    ),
    figure(
        "credit_delay_ms_p99",
        "credit delay, 99th percentile",
        DELAY,
    ),
    figure(
        "credit_delay_ms_p999",
        "credit delay, 99.9th percentile",
        DELAY,
    ),
    figure("credit_delay_ms_max", "credit delay, longest", DELAY),
    figure(
        "coupon_credit_delay_ms_p50",
        "credit delay of coupon credits only, median",
        COUPON_DELAY,
    ),
    figure(
        "coupon_credit_delay_ms_p99",
        "credit delay of coupon credits only, 99th percentile",
        COUPON_DELAY,
    ),
    figure(
        "coupon_credit_delay_ms_max",
        "credit delay of coupon credits only, longest",
        COUPON_DELAY,
    ),
    figure(
        "backlog_peak",
        "most tokens pending or inflight at any tick",
        TOKENS,
    ),
    figure(
        "drain_s",
        "virtual time from the last request until nothing was pending",
        TOKENS,
    ),
    figure("worker_crashes", "injected credit-worker crashes", TOKENS),
    figure(
        "force_credited",
        "tokens force-credited on withdraw",
        TOKENS,
    ),
    figure("views", "wallet pages shown", VIEWS),
    figure(
        "views_short",
        "wallet pages that showed less than was owed",
        VIEWS,
    ),
    figure(
        "plain_async_views_short",
        "pages plain async crediting would have shown short",
        VIEWS,
    ),
    figure(
        "plain_async_hidden_cents_max",
        "most plain async crediting would have hidden on one page",
        VIEWS,
    ),
    figure("kv_calls", "KV calls the wallet made", ALWAYS),
    figure("kv_peak_per_s", "busiest second of KV calls", ALWAYS),
    figure(
        "db_calls",
        "ledger calls the wallet made (a credit batch is one)",
        ALWAYS,
    ),
    figure("db_peak_per_s", "busiest second of ledger calls", ALWAYS),
    figure(
        "db_writes",
        "write transactions charged to the DB gate",
        SERIES,
    ),
    figure(
        "db_writes_peak_per_s",
        "busiest second of DB write transactions",
        SERIES,
    ),
    figure(
        "capacity_refused",
        "units refused by every capacity gate",
        CAPACITY,
    ),
    figure(
        "award_qps_peak",
        "peak award rate, full population",
        CAPACITY,
    ),
    figure(
        "sync_db_instances_needed",
        "DB instances synchronous crediting would need at that peak",
        PLANNER,
    ),
    figure(
        "counter_error_pct",
        "hot counter at the end: (shown − true) / true",
        COUNTER,
    ),
    figure(
        "counter_kv_ops_per_s",
        "KV calls per second the hot counter plan sent",
        COUNTER,
    ),
    figure("cash_credited_cents", "cash credited", ALWAYS),
    figure("cash_withdrawn_cents", "cash withdrawn", ALWAYS),
    figure("coupons_credited", "coupons credited", ALWAYS),
    figure(
        "violations",
        "invariant violations, every invariant",
        ALWAYS,
    ),
    figure("invariants_failed", "invariants that did not hold", ALWAYS),
    figure(
        "issue_latency_us_p50",
        "live award latency from the scheduled send time, median",
        LIVE,
    ),
    figure(
        "issue_latency_us_p90",
        "live award latency, 90th percentile",
        LIVE,
    ),
    figure(
        "issue_latency_us_p99",
        "live award latency, 99th percentile",
        LIVE,
    ),
    figure(
        "issue_latency_us_p999",
        "live award latency, 99.9th percentile",
        LIVE,
    ),
    figure("issue_latency_us_max", "live award latency, largest", LIVE),
    figure(
        "dropped_sends",
        "live awards not sent: the in-flight bound was reached at their time",
        LIVE,
    ),
    figure(
        "sent_per_s",
        "live awards sent per second of the trace",
        LIVE,
    ),
    figure(
        "live_errors",
        "live calls without a protocol answer (transport, 5xx)",
        LIVE,
    ),
    figure(
        "journey_latency_us_p99",
        "live journey step latency from its scheduled time, 99th percentile",
        LIVE_JOURNEYS,
    ),
    figure(
        "wall_elapsed_ms",
        "wall time to drive the workload (not deterministic)",
        ALWAYS,
    ),
    figure(
        "wall_requests_per_s",
        "requests answered per wall second (not deterministic)",
        ALWAYS,
    ),
];

/// The [`KeyFigure`] called `name`.
pub fn key_figure(name: &str) -> Option<&'static KeyFigure> {
    KEY_FIGURES.iter().find(|f| f.name == name)
}

/// The record's key figures: every [`KEY_FIGURES`] entry the record has data for.
pub fn key_figures(record: &RunRecord) -> BTreeMap<&'static str, f64> {
    let mut out = BTreeMap::new();
    let mut put = |name: &'static str, value: f64| {
        debug_assert!(key_figure(name).is_some(), "{name} is not in KEY_FIGURES");
        out.insert(name, value);
    };
    let s = &record.scenario;
    put("requests", s.requests as f64);
    put("duration_s", s.duration_ms as f64 / 1000.0);
    let series = &record.series;
    if !series.is_empty() {
        let peak = |f: fn(&SecondSample) -> u64| series.iter().map(f).max().unwrap_or(0) as f64;
        let sum = |f: fn(&SecondSample) -> u64| series.iter().map(f).sum::<u64>() as f64;
        put("offered_peak_per_s", peak(|x| x.offered));
        put("awarded", sum(|x| x.awarded));
        put("awarded_peak_per_s", peak(|x| x.awarded));
        put("rejected", sum(|x| x.rejected.values().sum()));
        put("db_writes", sum(|x| x.db_writes));
        put("db_writes_peak_per_s", peak(|x| x.db_writes));
    }
    put("credited_entries", record.totals.entries as f64);
    if let Some(d) = &record.delay {
        put("credit_delay_ms_p50", d.p50_ms as f64);
        put("credit_delay_ms_p90", d.p90_ms as f64);
        put("credit_delay_ms_p99", d.p99_ms as f64);
        put("credit_delay_ms_p999", d.p999_ms as f64);
        put("credit_delay_ms_max", d.max_ms as f64);
    }
    if let Some(d) = &record.coupon_delay {
        put("coupon_credit_delay_ms_p50", d.p50_ms as f64);
        put("coupon_credit_delay_ms_p99", d.p99_ms as f64);
        put("coupon_credit_delay_ms_max", d.max_ms as f64);
    }
    if let Some(c) = &record.crediting {
        put("backlog_peak", c.backlog_peak as f64);
        put("drain_s", c.drain_ms as f64 / 1000.0);
        put("worker_crashes", c.worker_crashes as f64);
        put("force_credited", c.force_credited as f64);
    }
    let v = &record.views;
    if v.views > 0 {
        put("views", v.views as f64);
        put("views_short", v.short as f64);
        put("plain_async_views_short", v.plain_async_short as f64);
        put(
            "plain_async_hidden_cents_max",
            v.plain_async_hidden_max_cents as f64,
        );
    }
    let st = &record.stores;
    put("kv_calls", st.kv_calls as f64);
    put("kv_peak_per_s", st.kv_peak_per_s as f64);
    put("db_calls", st.db_calls as f64);
    put("db_peak_per_s", st.db_peak_per_s as f64);
    if let Some(c) = &record.capacity {
        put(
            "capacity_refused",
            c.gates.values().map(|g| g.refused).sum::<u64>() as f64,
        );
        put("award_qps_peak", c.peak_award_qps);
        if let Some(n) = c.sync_db_instances_needed {
            put("sync_db_instances_needed", n as f64);
        }
    }
    if let Some(c) = &record.counter {
        put("counter_error_pct", c.final_error_pct);
        put("counter_kv_ops_per_s", c.kv_ops_per_s);
    }
    let t = &record.totals;
    put("cash_credited_cents", t.cash_credited_cents as f64);
    put("cash_withdrawn_cents", t.cash_withdrawn_cents as f64);
    put("coupons_credited", t.coupons as f64);
    put(
        "violations",
        record.invariants.iter().map(|v| v.violations).sum::<u64>() as f64,
    );
    put(
        "invariants_failed",
        record.invariants.iter().filter(|v| !v.passed).count() as f64,
    );
    if let Some(live) = &record.live {
        if let Some(l) = &live.issue_latency_us {
            put("issue_latency_us_p50", l.p50_us as f64);
            put("issue_latency_us_p90", l.p90_us as f64);
            put("issue_latency_us_p99", l.p99_us as f64);
            put("issue_latency_us_p999", l.p999_us as f64);
            put("issue_latency_us_max", l.max_us as f64);
        }
        put("dropped_sends", live.dropped as f64);
        put("sent_per_s", live.sent_per_s);
        put("live_errors", live.errors.values().sum::<u64>() as f64);
        if let Some(l) = &live.journey_latency_us {
            put("journey_latency_us_p99", l.p99_us as f64);
        }
    }
    put("wall_elapsed_ms", record.wall.elapsed_ms as f64);
    put("wall_requests_per_s", record.wall.requests_per_s);
    out
}

/// A figure for people: integers as integers, the rest to three decimals.
pub(crate) fn format_value(value: f64) -> String {
    if value.is_infinite() {
        return if value > 0.0 {
            "+∞".to_owned()
        } else {
            "−∞".to_owned()
        };
    }
    if value.fract() == 0.0 && value.abs() < 1e15 {
        return format!("{}", value as i64);
    }
    let mut text = format!("{value:.3}");
    while text.ends_with('0') {
        text.pop();
    }
    text.trim_end_matches('.').to_owned()
}
