//! A synthetic but realistic run record: 240 s of requests ramping up to a
//! plateau and down, a token backlog that builds past the credit worker's
//! rate and drains after the last request, two coupon templates running low, a
//! hot counter, KV and DB limits (with a DB fault that halves the limit for
//! 20 s), seven rejection reasons, a 1% sample, and one failing invariant.
//!
//! Shared by the integration tests and `examples/preview.rs`; pure arithmetic,
//! no randomness, so every run of the tests sees the same record.

// Each user of this module uses a different part of it.
#![allow(dead_code)]

use std::collections::BTreeMap;

use reports::{
    CounterSummary, CreditingSummary, DelaySummary, MidwayCheck, RUN_RECORD_VERSION, RunRecord,
    ScenarioInfo, SecondSample, StockSample, StoresSummary, Totals, TraceInfo, Verdict,
    ViewSummary, Wall,
};

/// Seconds in which requests arrive.
pub const REQUEST_S: u64 = 240;
/// Tokens the credit worker credits per second.
const WORKER_PER_S: u64 = 2000;
const GOLD_STOCK: u64 = 150_000;
const SILVER_STOCK: u64 = 400_000;
const KV_LIMIT: u64 = 18_000;
const DB_LIMIT: u64 = 500;

/// Deterministic wobble in [-1, 1] so lines do not look drawn with a ruler.
fn wobble(t: u64, salt: u64) -> f64 {
    let x = (t.wrapping_mul(2_654_435_761) ^ salt.wrapping_mul(40_503)) % 1000;
    x as f64 / 500.0 - 1.0
}

fn offered_at(t: u64) -> u64 {
    let base = match t {
        0..60 => 200.0 + 2800.0 * t as f64 / 60.0,
        60..200 => 3000.0,
        200..REQUEST_S => 3000.0 * (REQUEST_S - t) as f64 / 40.0,
        _ => 0.0,
    };
    if base <= 0.0 {
        return 0;
    }
    (base * (1.0 + 0.05 * wobble(t, 1))).round() as u64
}

/// The record, with `name` as the scenario name (tests plant markup in it).
pub fn record_named(name: &str) -> RunRecord {
    let mut series = Vec::new();
    let (mut backlog, mut gold, mut silver, mut counter_true) = (0_u64, 0_u64, 0_u64, 0_u64);
    let mut drained_at_s = None;
    let mut totals_by_reason: BTreeMap<String, u64> = BTreeMap::new();
    let (mut offered_total, mut awarded_total, mut credited_total) = (0, 0, 0);
    for t in 0..300 {
        let offered = offered_at(t);
        let db_limit = if (150..170).contains(&t) {
            DB_LIMIT / 2
        } else {
            DB_LIMIT
        };
        let mut rejected = BTreeMap::new();
        let mut reject = |reason: &str, n: u64| {
            if n > 0 {
                rejected.insert(reason.to_owned(), n);
            }
        };
        let gold_left = GOLD_STOCK.saturating_sub(gold) as f64 / GOLD_STOCK as f64;
        let out_of_stock = if gold_left < 0.1 { offered / 5 } else { 0 };
        reject("out_of_stock", out_of_stock);
        reject(
            "capacity.kv",
            if offered * 6 > KV_LIMIT {
                (offered * 6 - KV_LIMIT) / 6
            } else {
                0
            },
        );
        reject("budget_exhausted", if t > 200 { offered / 10 } else { 0 });
        reject("per_user_limit", offered / 40);
        reject("group_hold", offered / 90);
        reject(
            "rate_limited",
            if (150..170).contains(&t) {
                offered / 8
            } else {
                0
            },
        );
        reject("bad_signature", u64::from(t % 37 == 0));
        let rejected_now: u64 = rejected.values().sum();
        for (reason, n) in &rejected {
            *totals_by_reason.entry(reason.clone()).or_default() += n;
        }
        let awarded = offered.saturating_sub(rejected_now) * 9 / 10;
        backlog += awarded;
        let credited = backlog.min(WORKER_PER_S);
        backlog -= credited;
        if t >= REQUEST_S && backlog == 0 && drained_at_s.is_none() {
            drained_at_s = Some(t + 1);
        }
        gold = (gold + awarded / 3).min(GOLD_STOCK);
        silver = (silver + awarded / 4).min(SILVER_STOCK);
        counter_true += awarded * 88;
        // Readers lag one refresh: a little below the truth, now and then above.
        let lag = 1.0 - 0.006 * (1.0 + wobble(t, 2)) + if t % 53 == 0 { 0.015 } else { 0.0 };
        let counter_shown = (counter_true as f64 * lag) as i64;
        let delay_p50_ms = 40 + backlog * 1000 / WORKER_PER_S;
        let kv_ops = offered * 6 - rejected.get("capacity.kv").copied().unwrap_or(0) * 5;
        let db_writes = (credited / 5).min(db_limit);
        offered_total += offered;
        awarded_total += awarded;
        credited_total += credited;
        series.push(SecondSample {
            t_s: t,
            offered,
            awarded,
            rejected,
            credited,
            backlog,
            pipeline_depth: (awarded / 30 + (backlog / 200)).min(900),
            delay_p50_ms,
            delay_p99_ms: delay_p50_ms * 2 + 30,
            delay_p999_ms: delay_p50_ms * 5 / 2 + 60,
            delay_max_ms: delay_p50_ms * 3 + 120,
            coupons_consumed: gold + silver,
            coupon_stock: GOLD_STOCK + SILVER_STOCK,
            counter_shown,
            counter_true,
            latency_p99_us: 1_500 + (t % 7) * 300,
            stock: BTreeMap::from([
                (
                    "tpl-gold".to_owned(),
                    StockSample {
                        consumed: gold,
                        total: GOLD_STOCK,
                    },
                ),
                (
                    "tpl-silver".to_owned(),
                    StockSample {
                        consumed: silver,
                        total: SILVER_STOCK,
                    },
                ),
            ]),
            kv_ops,
            db_ops: db_writes + offered / 20,
            db_writes,
            db_limit,
            kv_limit: KV_LIMIT,
        });
        if drained_at_s.is_some() && t > REQUEST_S + 5 && t >= drained_at_s.unwrap_or(0) + 5 {
            break;
        }
    }
    let drain_ms = (drained_at_s.unwrap_or(300) - REQUEST_S) * 1000;
    let backlog_peak = series.iter().map(|s| s.backlog).max().unwrap_or(0);
    let kv_calls = series.iter().map(|s| s.kv_ops).sum();
    let db_calls = series.iter().map(|s| s.db_ops).sum();
    let kv_peak_per_s = series.iter().map(|s| s.kv_ops).max().unwrap_or(0);
    let db_peak_per_s = series.iter().map(|s| s.db_ops).max().unwrap_or(0);
    let last = series.last().cloned().unwrap_or_default();
    let mut outcomes = BTreeMap::from([("issue.accepted".to_owned(), awarded_total)]);
    for (reason, n) in totals_by_reason {
        outcomes.insert(format!("issue.{reason}"), n);
    }
    RunRecord {
        version: RUN_RECORD_VERSION,
        scenario: ScenarioInfo {
            name: name.to_owned(),
            file: "scenarios/spring-ramp.toml".to_owned(),
            seed: 42,
            requests: offered_total,
            duration_ms: REQUEST_S * 1000,
        },
        build: "redrain 0.1.0 (fixture)".to_owned(),
        ledger_url: "postgres://redrain:***@db.internal/redrain".to_owned(),
        kv_url: "redis://kv.internal:6379".to_owned(),
        shadow: false,
        sample_rate: 0.01,
        trace: TraceInfo {
            hash: "7f".repeat(32),
            ops: offered_total,
            shard: None,
            source: "generated".to_owned(),
        },
        history_hash: "c0ffee".repeat(10) + "abcd",
        outcomes,
        totals: Totals {
            entries: credited_total,
            accounts: awarded_total / 3,
            cash_credited_cents: credited_total * 88,
            cash_withdrawn_cents: credited_total * 10,
            balance_cents: credited_total * 78,
            coupons: gold + silver,
            pendants: 120,
        },
        crediting: Some(CreditingSummary {
            accepted: awarded_total,
            credited_by_worker: credited_total - 40,
            force_credited: 40,
            backlog_peak,
            drain_ms,
            worker_crashes: 1,
            requeued: 12,
            failed_attempts: 3,
            forged_presented: 2,
        }),
        counter: Some(CounterSummary {
            plan: "split".to_owned(),
            writes: awarded_total,
            reads: 90_000,
            blocked_reads: 0,
            kv_writes: awarded_total,
            kv_reads: 90_000,
            kv_ops_per_s: 2100.0,
            true_total_cents: last.counter_true,
            final_shown_cents: last.counter_shown,
            final_error_pct: (last.counter_shown as f64 - last.counter_true as f64) * 100.0
                / last.counter_true as f64,
        }),
        delay: Some(DelaySummary {
            count: credited_total,
            p50_ms: 20_000,
            p90_ms: 48_000,
            p99_ms: 66_000,
            p999_ms: 85_000,
            max_ms: 106_500,
        }),
        coupon_delay: Some(DelaySummary {
            count: gold + silver,
            p50_ms: 300,
            p90_ms: 900,
            p99_ms: 2_400,
            p999_ms: 4_100,
            max_ms: 6_000,
        }),
        views: ViewSummary {
            views: 40_000,
            short: 0,
            plain_async_short: 3_100,
            plain_async_hidden_max_cents: 8_800,
        },
        capacity: Some(reports::CapacitySummary {
            gates: BTreeMap::from([
                (
                    "db".to_owned(),
                    reports::GateFigures {
                        admitted: 70_000,
                        refused: 0,
                    },
                ),
                (
                    "kv".to_owned(),
                    reports::GateFigures {
                        admitted: kv_calls,
                        refused: 4_000,
                    },
                ),
            ]),
            sync_db_instances_needed: Some(9),
            peak_award_qps: 270_000.0,
            db_tps: 40_000.0,
        }),
        stores: StoresSummary {
            kv_calls,
            db_calls,
            kv_peak_per_s,
            db_peak_per_s,
        },
        series,
        midway_checks: vec![
            MidwayCheck {
                t_s: 119,
                violations: 0,
            },
            MidwayCheck {
                t_s: 239,
                violations: 1,
            },
        ],
        wall: Wall {
            elapsed_ms: 8_400,
            requests_per_s: offered_total as f64 / 8.4,
            spent_ms: BTreeMap::from([
                ("requests".to_owned(), 6_000),
                ("checkers".to_owned(), 900),
            ]),
        },
        invariants: vec![
            Verdict {
                id: "I1".to_owned(),
                name: "idempotency".to_owned(),
                passed: true,
                violations: 0,
                examples: vec![],
            },
            Verdict {
                id: "I4".to_owned(),
                name: "drain".to_owned(),
                passed: false,
                violations: 2,
                examples: vec![
                    "token 9f3a for user 17: pending after drain (< 1 s left) & never credited"
                        .to_owned(),
                    "token 0b71 for user 203: pending after drain".to_owned(),
                ],
            },
        ],
        reproduce: "redrain run scenarios/spring-ramp.toml --seed 42 --sample 0.01".to_owned(),
        // As a live load writes it, so the live chart and figures have data.
        live: Some(reports::LiveSummary {
            target: "http://127.0.0.1:8080".to_owned(),
            rate_scale: 0.01,
            scheduled: 1_000,
            sent: 990,
            dropped: 10,
            in_flight_max: 64,
            in_flight_peak: 64,
            issue_latency_us: Some(reports::LatencySummary {
                count: 990,
                p50_us: 900,
                p90_us: 1_400,
                p99_us: 2_500,
                p999_us: 4_000,
                max_us: 9_000,
                mean_us: 1_000.0,
            }),
            journeys: 40,
            journey_latency_us: Some(reports::LatencySummary {
                count: 120,
                p50_us: 1_800,
                p90_us: 2_600,
                p99_us: 4_100,
                p999_us: 5_000,
                max_us: 6_000,
                mean_us: 2_000.0,
            }),
            sent_per_s: 99.0,
            drained: true,
            ..reports::LiveSummary::default()
        }),
    }
}

/// The fixture under its ordinary name.
pub fn record() -> RunRecord {
    record_named("spring-ramp")
}

/// A run with nothing optional: no crediting, counter, coupons, rejections or
/// limits; only throughput and store calls.
pub fn bare_record() -> RunRecord {
    let mut record = record_named("bare");
    record.crediting = None;
    record.counter = None;
    record.delay = None;
    record.coupon_delay = None;
    record.capacity = None;
    record.live = None;
    record.views = ViewSummary::default();
    record.sample_rate = 1.0;
    record.stores.kv_calls = 0;
    record.stores.kv_peak_per_s = 0;
    for sample in &mut record.series {
        sample.rejected.clear();
        sample.stock.clear();
        sample.backlog = 0;
        sample.pipeline_depth = 0;
        sample.credited = 0;
        sample.delay_p50_ms = 0;
        sample.delay_p99_ms = 0;
        sample.delay_p999_ms = 0;
        sample.delay_max_ms = 0;
        sample.kv_ops = 0;
        sample.kv_limit = 0;
        sample.db_limit = 0;
    }
    record
}

/// The same scenario under seed 43 with a slower credit worker: a tenth more
/// credit delay (p99 66 000 → 72 600 ms), a fifth more backlog, more KV calls.
pub fn slower_record() -> RunRecord {
    let mut record = record();
    record.scenario.seed = 43;
    record.reproduce = "redrain run scenarios/spring-ramp.toml --seed 43 --sample 0.01".to_owned();
    if let Some(delay) = &mut record.delay {
        delay.p99_ms = 72_600;
    }
    if let Some(crediting) = &mut record.crediting {
        crediting.backlog_peak = crediting.backlog_peak * 6 / 5;
        crediting.drain_ms += 4_000;
    }
    for sample in &mut record.series {
        sample.backlog = sample.backlog * 6 / 5;
        sample.delay_p99_ms = sample.delay_p99_ms * 11 / 10;
        sample.kv_ops = sample.kv_ops * 11 / 10;
    }
    record.stores.kv_calls = record.series.iter().map(|s| s.kv_ops).sum();
    record.stores.kv_peak_per_s = record.series.iter().map(|s| s.kv_ops).max().unwrap_or(0);
    record
}
