//! `redrain trace export|hash|replay`: a scenario's trace written as JSONL, hashed, or
//! replayed against the reference wallet.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use simulator::engine::run_scenario;
use simulator::options::RunOptions;
use simulator::record::files::dir_and_stem;
use simulator::scenario::Scenario;

use super::common::{RunVerdict, check_sample, finish_run, parse_thresholds, prepare_output};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    pub what: What,
}

#[derive(clap::Subcommand, Debug)]
pub enum What {
    /// Write the trace as JSONL: a header line, then one request per line.
    Export(Export),
    /// Print a trace's BLAKE3 hash and length without writing it.
    Hash(Hash),
    /// Run an exported trace against the reference wallet (seed and sample come
    /// from the trace's header).
    Replay(Replay),
}

pub async fn execute(args: Args) -> anyhow::Result<ExitCode> {
    match args.what {
        What::Export(args) => export(args).await,
        What::Hash(args) => hash(args).await,
        What::Replay(args) => replay(args).await,
    }
}

#[derive(clap::Args, Debug)]
pub struct Export {
    /// The scenario file.
    pub scenario: PathBuf,
    /// Where to write it.
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub pick: TracePick,
}

pub async fn export(args: Export) -> anyhow::Result<ExitCode> {
    let Export {
        scenario,
        out,
        pick,
    } = args;
    let loaded = Scenario::load(&scenario)?;
    let (effective, seed, shard) = picked(&loaded, &pick)?;
    let header = simulator::trace::TraceHeader::of(&effective, seed, shard);
    let (dir, _) = dir_and_stem(&out);
    let mut file = simulator::record::files::output_file_in(&dir)
        .with_context(|| format!("writing {}", out.display()))?;
    let (ops, hash) = simulator::trace::export(
        &header,
        simulator::trace::Trace::new(&effective, seed).with_shard(shard),
        std::io::BufWriter::new(file.as_file_mut()),
    )
    .with_context(|| format!("writing {}", out.display()))?;
    file.persist(&out)
        .map_err(|e| e.error)
        .with_context(|| format!("writing {}", out.display()))?;
    println!("{}: {ops} requests · trace {hash}", out.display());
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Args, Debug)]
pub struct Hash {
    /// The scenario file.
    pub scenario: PathBuf,
    #[command(flatten)]
    pub pick: TracePick,
}

pub async fn hash(args: Hash) -> anyhow::Result<ExitCode> {
    let Hash { scenario, pick } = args;
    let loaded = Scenario::load(&scenario)?;
    let (effective, seed, shard) = picked(&loaded, &pick)?;
    let mut hasher = simulator::trace::TraceHasher::default();
    for op in simulator::trace::Trace::new(&effective, seed).with_shard(shard) {
        hasher.add(&op);
    }
    println!("{} requests · trace {}", hasher.ops(), hasher.finish());
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Args, Debug)]
pub struct Replay {
    /// The scenario file the trace was exported from.
    pub scenario: PathBuf,
    /// The exported trace.
    pub trace: PathBuf,
    /// Ledger URL (as for `run`).
    #[arg(long)]
    pub ledger: Option<String>,
    /// KV URL (as for `run`).
    #[arg(long)]
    pub kv: Option<String>,
    /// Also write the RunRecord as JSON to this file (and the report beside it).
    #[arg(long)]
    pub json: Option<PathBuf>,
    #[command(flatten)]
    pub verdict: RunVerdict,
}

pub async fn replay(args: Replay) -> anyhow::Result<ExitCode> {
    let Replay {
        scenario,
        trace,
        ledger,
        kv,
        json,
        verdict,
    } = args;
    let loaded = Scenario::load(&scenario)?;
    let file =
        std::fs::File::open(&trace).with_context(|| format!("opening {}", trace.display()))?;
    let header = simulator::trace::TraceReader::new(
        &trace.display().to_string(),
        std::io::BufReader::new(file),
    )?
    .header;
    let options = RunOptions {
        seed: Some(header.seed),
        sample_rate: Some(header.sample_rate),
        requests: header.request_limit,
        shard: header
            .shard
            .as_deref()
            .map(str::parse)
            .transpose()
            .map_err(anyhow::Error::msg)?,
        replay: Some(trace),
        ledger_url: ledger,
        kv_url: kv,
        progress: std::env::var_os("CI").is_none(),
        ..RunOptions::default()
    };
    let thresholds = parse_thresholds(&verdict.fail_if)?;
    prepare_output(json.as_deref())?;
    let output = run_scenario(&loaded, &options).await?;
    finish_run(&output.record, json, &verdict, &thresholds)
}

/// Which trace of a scenario.
#[derive(clap::Args, Debug)]
pub struct TracePick {
    /// Seed (default: the scenario's).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Share of users (default: the scenario's).
    #[arg(long)]
    pub sample: Option<f64>,
    /// Stop after this many requests.
    #[arg(long)]
    pub requests: Option<u64>,
    /// Only shard i of N.
    #[arg(long)]
    pub shard: Option<simulator::trace::Shard>,
}

/// The scenario as the trace subcommands pick it: overrides applied, seed, shard.
fn picked(
    scenario: &Scenario,
    pick: &TracePick,
) -> anyhow::Result<(Scenario, u64, Option<simulator::trace::Shard>)> {
    check_sample(pick.sample)?;
    let options = RunOptions {
        sample_rate: pick.sample,
        requests: pick.requests,
        ..RunOptions::default()
    };
    let effective = simulator::options::effective_scenario(scenario, &options);
    Ok((effective, pick.seed.unwrap_or(scenario.seed), pick.shard))
}
