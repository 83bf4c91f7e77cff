//! The `RunRecord` — the one contract between a run and its report — and its
//! renderings. This crate knows nothing about how a run happened: it only reads
//! records. Charts and HTML come in later; today it renders the one-screen summary.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

/// Bumped whenever a field changes meaning or goes away.
pub const RUN_RECORD_VERSION: u32 = 1;

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
    /// Wall-clock figures of this run (the only non-deterministic part).
    pub wall: Wall,
    /// One verdict per checked invariant.
    pub invariants: Vec<Verdict>,
    /// The command that reproduces this run.
    pub reproduce: String,
}

fn memory_url() -> String {
    "memory".to_owned()
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
    /// Tokens the compensation scan re-queued.
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

fn cents(value: u64) -> String {
    format!("{}.{:02}", value / 100, value % 100)
}

/// The one-screen summary printed at the end of a run.
pub fn render_summary(record: &RunRecord) -> String {
    let mut out = String::new();
    let s = &record.scenario;
    // Writing to a String cannot fail.
    let _ = writeln!(
        out,
        "redrain run · {} · seed {} · {} requests over {} s (virtual)",
        s.name,
        s.seed,
        s.requests,
        s.duration_ms / 1000
    );
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
        "  wall {:.2} s · {:.0} requests/s",
        record.wall.elapsed_ms as f64 / 1000.0,
        record.wall.requests_per_s
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
            "  worker crashes {} · re-queued by compensation {} · failed ledger attempts {} · forged tokens presented {}",
            c.worker_crashes, c.requeued, c.failed_attempts, c.forged_presented
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
            wall: Wall {
                elapsed_ms: 1500,
                requests_per_s: 6.7,
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
