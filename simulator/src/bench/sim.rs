//! `redrain bench sim`: simulated requests per wall-second, scenario by
//! scenario, with how far the full population (sample 100%) is from real time
//! and where the wall time goes (the engine's own profile, `wall.spent_ms`).

use std::fmt::Write as _;
use std::path::PathBuf;

use serde::Serialize;

use crate::engine::run_scenario;
use crate::options::RunOptions;
use crate::record::build_id;
use crate::scenario::Scenario;

/// One scenario measured.
#[derive(Debug, Clone, Serialize)]
pub struct SimBenchRow {
    /// Scenario name.
    pub scenario: String,
    /// Sample rate run.
    pub sample_rate: f64,
    /// Requests sent.
    pub requests: u64,
    /// Virtual seconds the requests span (the drain comes on top).
    pub virtual_s: f64,
    /// Wall seconds for the whole run (trace, engine, final state, checkers).
    pub wall_s: f64,
    /// Requests per wall second.
    pub requests_per_s: f64,
    /// Wall seconds the full population would take at this speed (linear in requests).
    pub full_wall_s_estimate: f64,
    /// `full_wall_s_estimate / virtual_s`: how many times slower than real time
    /// a 100% run would be (below 1: faster than real time).
    pub full_vs_real_time: f64,
    /// Wall milliseconds by part, from the run's record.
    pub spent_ms: Vec<(String, u64)>,
    /// Every invariant held.
    pub passed: bool,
}

/// Run each scenario once (at its own sample rate unless one is given) and measure.
pub async fn bench_sim(cases: &[(PathBuf, Option<f64>)]) -> anyhow::Result<Vec<SimBenchRow>> {
    let mut rows = Vec::new();
    for (path, sample_rate) in cases {
        let scenario = Scenario::load(path)?;
        let options = RunOptions {
            sample_rate: *sample_rate,
            progress: std::env::var_os("CI").is_none(),
            ..RunOptions::default()
        };
        let started = std::time::Instant::now();
        let output = run_scenario(&scenario, &options).await?;
        let wall_s = started.elapsed().as_secs_f64();
        let record = &output.record;
        let requests = record.scenario.requests;
        let virtual_s = record.scenario.duration_ms as f64 / 1000.0;
        let full_wall_s_estimate = wall_s / record.sample_rate;
        let mut spent_ms: Vec<(String, u64)> = record
            .wall
            .spent_ms
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        spent_ms.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        rows.push(SimBenchRow {
            scenario: record.scenario.name.clone(),
            sample_rate: record.sample_rate,
            requests,
            virtual_s,
            wall_s,
            requests_per_s: requests as f64 / wall_s.max(1e-9),
            full_wall_s_estimate,
            full_vs_real_time: full_wall_s_estimate / virtual_s.max(1e-9),
            spent_ms,
            passed: record.passed(),
        });
    }
    Ok(rows)
}

/// The table `redrain bench sim` prints.
pub fn render_sim(rows: &[SimBenchRow]) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = writeln!(out, "redrain bench sim · {}", build_id());
    let _ = writeln!(
        out,
        "  {:<22} {:>7} {:>10} {:>9} {:>9} {:>12} {:>14}",
        "scenario", "sample", "requests", "virtual", "wall", "requests/s", "100% vs real"
    );
    for row in rows {
        let _ = writeln!(
            out,
            "  {:<22} {:>7} {:>10} {:>8.0}s {:>8.1}s {:>12.0} {:>13}×{}",
            row.scenario,
            row.sample_rate,
            row.requests,
            row.virtual_s,
            row.wall_s,
            row.requests_per_s,
            if row.full_vs_real_time < 1.0 {
                format!("{:.3}", row.full_vs_real_time)
            } else {
                format!("{:.1}", row.full_vs_real_time)
            },
            if row.passed {
                ""
            } else {
                "  (invariant FAILED)"
            }
        );
    }
    for row in rows {
        let total: u64 = row.spent_ms.iter().map(|(_, v)| v).sum();
        let parts: Vec<String> = row
            .spent_ms
            .iter()
            .filter(|(_, v)| *v > 0)
            .map(|(k, v)| {
                format!(
                    "{k} {:.1}s ({:.0}%)",
                    *v as f64 / 1000.0,
                    *v as f64 * 100.0 / total.max(1) as f64
                )
            })
            .collect();
        let _ = writeln!(out, "  {}: {}", row.scenario, parts.join(" · "));
    }
    let _ = writeln!(
        out,
        "  100% vs real: wall time a full-population run would need per virtual second, \
         at this speed (1.0× = real time)."
    );
    out
}
