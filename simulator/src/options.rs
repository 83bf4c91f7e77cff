//! How a scenario is run: the options a command gives (seed, sample, stores,
//! shard, replay) and the scenario as they make it: the tree scaled to the
//! sample, the worker's and pipeline's rates scaled with it.

use std::path::PathBuf;

use reference::config::Crediting;
use reference::pipeline::PipelineConfig;

use crate::scenario::Scenario;
use crate::trace::Shard;

/// How to run a scenario.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Overrides the scenario's seed.
    pub seed: Option<u64>,
    /// Overrides the scenario's request count (a scenario without phases), or
    /// stops a phased scenario's trace after this many requests.
    pub requests: Option<u64>,
    /// Overrides the scenario's sample rate.
    pub sample_rate: Option<f64>,
    /// Run only this shard of the trace.
    pub shard: Option<Shard>,
    /// Send the requests of this exported trace instead of generating them.
    pub replay: Option<PathBuf>,
    /// Overrides the scenario's ledger URL (`[stores] ledger`).
    pub ledger_url: Option<String>,
    /// Overrides the scenario's KV URL (`[stores] kv`).
    pub kv_url: Option<String>,
    /// Also check the invariants every this many virtual seconds, on a
    /// snapshot of the stores (I4 then allows work in flight).
    pub check_every_s: Option<u64>,
    /// Draw a progress bar (only on a terminal).
    pub progress: bool,
}

/// The scenario as run: the options' overrides applied, the tree scaled to the sample.
pub fn effective_scenario(scenario: &Scenario, options: &RunOptions) -> Scenario {
    let mut scenario = scenario.clone();
    if let Some(rate) = options.sample_rate {
        scenario.sample_rate = rate;
    }
    if let Some(requests) = options.requests {
        match scenario.phases.as_mut_slice() {
            [only] if only.count.is_some() => only.count = Some(requests),
            _ => scenario.request_limit = Some(requests),
        }
    }
    scenario.tree = scenario.tree.scaled(scenario.sample_rate);
    scenario
}

/// The worker's knobs for a sampled run: its credit rate scales with the sample.
pub fn scaled_worker(scenario: &Scenario) -> reference::worker::WorkerConfig {
    let mut worker = scenario.crediting.worker.clone();
    if worker.credit_tps > 0 {
        worker.credit_tps =
            ((worker.credit_tps as f64 * scenario.sample_rate).round() as u64).max(1);
    }
    worker
}

/// The pipeline's knobs for a sampled run: its rates scale with the sample.
pub fn scaled_pipeline(scenario: &Scenario) -> PipelineConfig {
    let mut config = scenario.pipeline.clone();
    let scale = |n: u32| ((f64::from(n) * scenario.sample_rate).round() as u32).max(1);
    config.activity_rate_per_s = scale(config.activity_rate_per_s);
    config.asset_rate_per_s = scale(config.asset_rate_per_s);
    config
}

/// Whether any scene of `tree` issues through the coupon pipeline.
pub fn has_pipeline_scenes(tree: &reference::ActivityTree) -> bool {
    tree.activities().any(|a| {
        a.scenes
            .values()
            .any(|s| s.crediting == Crediting::Pipeline)
    })
}
