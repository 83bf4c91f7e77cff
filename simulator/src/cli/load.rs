//! `redrain load`: send a scenario's trace live to a server speaking the protocol: awards as

use std::path::PathBuf;
use std::process::ExitCode;

use simulator::scenario::Scenario;

use super::common::{AdminToken, RunVerdict, finish_run, parse_thresholds, prepare_output};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The scenario file.
    pub scenario: PathBuf,
    /// The server, http://127.0.0.1:PORT (only loopback targets).
    #[arg(long)]
    pub target: String,
    /// Share of the profile's users (and so of its rate) to send, in (0, 1].
    #[arg(long, default_value_t = 0.0001)]
    pub rate_scale: f64,
    /// Stop the trace after this many seconds.
    #[arg(long)]
    pub duration_s_max: Option<u64>,
    /// Award requests outstanding at most; a send that finds no room is
    /// dropped and counted.
    #[arg(long, default_value_t = 2048)]
    pub in_flight_max: usize,
    /// goose users running the user journeys.
    #[arg(long, default_value_t = 8)]
    pub journey_users: usize,
    /// Seed (default: the scenario's).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Longest wait for the target to drain, seconds.
    #[arg(long, default_value_t = 120)]
    pub drain_s_max: u64,
    #[command(flatten)]
    pub admin: AdminToken,
    /// Also write the RunRecord as JSON here, and the report beside it.
    #[arg(long)]
    pub json: Option<PathBuf>,
    #[command(flatten)]
    pub verdict: RunVerdict,
}

pub async fn execute(args: Args) -> anyhow::Result<ExitCode> {
    let Args {
        scenario,
        target,
        rate_scale,
        duration_s_max,
        in_flight_max,
        journey_users,
        seed,
        drain_s_max,
        admin,
        json,
        verdict,
    } = args;
    let scenario = Scenario::load(&scenario)?;
    let thresholds = parse_thresholds(&verdict.fail_if)?;
    prepare_output(json.as_deref())?;
    let options = simulator::live::load::LoadOptions {
        target,
        admin_token: admin.read()?,
        rate_scale,
        duration_s_max,
        in_flight_max,
        seed,
        journey_users,
        drain_ms_max: drain_s_max.saturating_mul(1000),
        progress: std::env::var_os("CI").is_none(),
    };
    let output = simulator::live::load::load(&scenario, &options).await?;
    finish_run(&output.record, json, &verdict, &thresholds)
}
