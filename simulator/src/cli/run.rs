//! `redrain run`: run a scenario against the in-process reference wallet and check the invariants.

use std::path::PathBuf;
use std::process::ExitCode;

use simulator::engine::run_scenario;
use simulator::options::RunOptions;
use simulator::scenario::Scenario;

use super::common::{RunVerdict, check_sample, finish_run, parse_thresholds, prepare_output};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The scenario file, e.g. scenarios/smoke.toml.
    pub scenario: PathBuf,
    /// Seed of the workload (default: the scenario's).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Requests to send: a scenario without phases sends exactly this many;
    /// a phased scenario stops its trace after this many.
    #[arg(long)]
    pub requests: Option<u64>,
    /// Share of users to simulate, in (0, 1] (default: the scenario's).
    #[arg(long)]
    pub sample: Option<f64>,
    /// Run only shard i of N of the trace (by act_id hash), e.g. 0/4.
    #[arg(long)]
    pub shard: Option<simulator::trace::Shard>,
    /// Run twice and fail (exit 1) unless the records are byte-identical
    /// apart from wall-clock fields.
    #[arg(long)]
    pub check_determinism: bool,
    /// Also check the invariants every N virtual seconds, on a snapshot of
    /// the stores (work in flight allowed); a violation seen only then fails too.
    #[arg(long, value_name = "N")]
    pub check_every_s: Option<u64>,
    /// Ledger URL (default: the scenario's `[stores] ledger`, else memory):
    /// memory, sqlite::memory:, sqlite://PATH, mysql://… or postgres://…
    #[arg(long)]
    pub ledger: Option<String>,
    /// KV URL (default: the scenario's `[stores] kv`, else memory): memory,
    /// redis://host:port[/db] or redis+cluster://host:port[,host:port…]
    #[arg(long)]
    pub kv: Option<String>,
    /// Also write the RunRecord as JSON to this file, and the report beside
    /// it (HTML, Markdown, charts as SVG and PNG) unless --no-report.
    #[arg(long)]
    pub json: Option<PathBuf>,
    #[command(flatten)]
    pub verdict: RunVerdict,
}

pub async fn execute(args: Args) -> anyhow::Result<ExitCode> {
    let Args {
        scenario,
        seed,
        requests,
        sample,
        shard,
        check_determinism,
        check_every_s,
        ledger,
        kv,
        json,
        verdict,
    } = args;
    let scenario = Scenario::load(&scenario)?;
    check_sample(sample)?;
    let thresholds = parse_thresholds(&verdict.fail_if)?;
    prepare_output(json.as_deref())?;
    if check_every_s == Some(0) {
        anyhow::bail!("--check-every-s 0: give a number of virtual seconds of at least 1");
    }
    let ci = std::env::var_os("CI").is_some();
    let options = RunOptions {
        seed,
        requests,
        sample_rate: sample,
        shard,
        ledger_url: ledger,
        kv_url: kv,
        check_every_s,
        progress: !ci,
        ..RunOptions::default()
    };
    let output = if check_determinism {
        let (output, difference) =
            simulator::engine::check_determinism(&scenario, &options).await?;
        if let Some(difference) = difference {
            print!("{}", reports::render_summary(&output.record));
            println!(
                "\nNOT DETERMINISTIC: two runs differ at {difference}\nreproduce with:\n  {} --check-determinism",
                output.record.reproduce
            );
            return Ok(ExitCode::from(1));
        }
        println!("determinism: two runs gave byte-identical records (wall-clock fields aside)");
        output
    } else {
        run_scenario(&scenario, &options).await?
    };
    finish_run(&output.record, json, &verdict, &thresholds)
}
