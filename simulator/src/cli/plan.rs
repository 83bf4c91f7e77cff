//! `redrain plan`: find the cheapest capacity (DB instances, credit TPS, KV and app

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use simulator::options::RunOptions;
use simulator::record::files::dir_and_stem;
use simulator::scenario::Scenario;

use super::common::{check_sample, prepare_output};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The scenario file.
    pub scenario: PathBuf,
    /// The objectives, e.g. "drain_s_max=600,visible_lag_ms_max=0,coupon_p99_ms_max=500".
    #[arg(long)]
    pub slo: String,
    /// Seed (default: the scenario's).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Share of users (default: the scenario's).
    #[arg(long)]
    pub sample: Option<f64>,
    /// Stop each trace after this many requests.
    #[arg(long)]
    pub requests: Option<u64>,
    /// Write the plan as JSON here, and the evidence run's record and report
    /// beside it (`<stem>-evidence.json`, `.html`, …).
    #[arg(long)]
    pub json: Option<PathBuf>,
}

pub async fn execute(args: Args) -> anyhow::Result<ExitCode> {
    let Args {
        scenario,
        slo,
        seed,
        sample,
        requests,
        json,
    } = args;
    let slo = simulator::plan::parse_slo(&slo).map_err(|e| anyhow::anyhow!("--slo: {e}"))?;
    let scenario = Scenario::load(&scenario)?;
    check_sample(sample)?;
    prepare_output(json.as_deref())?;
    let options = RunOptions {
        seed,
        sample_rate: sample,
        requests,
        ..RunOptions::default()
    };
    let report = simulator::plan::plan(&scenario, &slo, &options).await?;
    print!("{}", simulator::plan::render_plan(&report));
    if let Some(path) = json {
        let (dir, stem) = dir_and_stem(&path);
        let evidence = format!("{stem}-evidence");
        simulator::record::files::write_all_or_nothing(
            &dir,
            &[
                (
                    path.clone(),
                    serde_json::to_string_pretty(&report)
                        .context("serialising the plan")?
                        .into_bytes(),
                ),
                (
                    dir.join(format!("{evidence}.json")),
                    serde_json::to_string_pretty(&report.evidence)
                        .context("serialising the evidence run")?
                        .into_bytes(),
                ),
            ],
        )?;
        let files = simulator::record::files::write_report(&report.evidence, &dir, &evidence)?;
        println!(
            "\nwrote {} and the evidence run {}",
            path.display(),
            files.html.display()
        );
    }
    Ok(if report.met {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
