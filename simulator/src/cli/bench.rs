//! `redrain bench …`: the wiring of every benchmark subcommand (the benchmarks
//! themselves are `simulator::bench`, one file each).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use simulator::record::files::write_atomically;

use super::common::check_sample;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    pub what: What,
}

#[derive(clap::Subcommand, Debug)]
pub enum What {
    /// Simulated requests per wall second, how far 100% is from real time, and
    /// where the time goes. Default: smoke (sample 1) and red-packet-rain (its 1%).
    Sim(Sim),
    /// Synchronous credits per second on the memory and SQLite ledgers.
    Ledger(Ledger),
    /// Token signing and verification per core, token issuance and async crediting.
    Tokens(Tokens),
    /// Coupon issues per second: the sync path beside the coupon pipeline (memory backend).
    Coupons(Coupons),
    /// Coupon stock consumes on Redis: one call per request beside merged consumes.
    Kv(Kv),
    /// The live load driver beside wrk and a goose-only run against the same
    /// `redrain serve` (requests/s per client core), and the server's award
    /// throughput on the embedded stores and on MariaDB + Redis.
    Http(Http),
    /// Hot-counter KV operations: plan 1 (split keys) beside plan 2 (local aggregation).
    Counter(Counter),
}

pub async fn execute(args: Args) -> anyhow::Result<ExitCode> {
    match args.what {
        What::Sim(args) => sim(args).await,
        What::Ledger(args) => ledger(args).await,
        What::Tokens(args) => tokens(args).await,
        What::Coupons(args) => coupons(args).await,
        What::Kv(args) => kv(args).await,
        What::Http(args) => http(args).await,
        What::Counter(args) => counter(args).await,
    }
}

#[derive(clap::Args, Debug)]
pub struct Sim {
    /// A scenario, optionally with a sample rate: PATH or PATH@RATE (repeatable).
    #[arg(long = "scenario")]
    pub scenarios: Vec<String>,
}

pub async fn sim(args: Sim) -> anyhow::Result<ExitCode> {
    let Sim { scenarios } = args;
    let cases = if scenarios.is_empty() {
        vec![
            (PathBuf::from("scenarios/smoke.toml"), None),
            (PathBuf::from("scenarios/red-packet-rain.toml"), None),
        ]
    } else {
        scenarios
            .iter()
            .map(|spec| match spec.rsplit_once('@') {
                Some((path, rate)) => rate
                    .parse::<f64>()
                    .map_err(|_| anyhow::anyhow!("`{spec}`: `{rate}` is not a sample rate"))
                    .and_then(|r| check_sample(Some(r)).map(|()| (PathBuf::from(path), Some(r)))),
                None => Ok((PathBuf::from(spec), None)),
            })
            .collect::<anyhow::Result<Vec<_>>>()?
    };
    let rows = simulator::bench::sim::bench_sim(&cases).await?;
    print!("{}", simulator::bench::sim::render_sim(&rows));
    // A speed figure of a run that broke an invariant is no figure.
    Ok(if rows.iter().all(|r| r.passed) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

#[derive(clap::Args, Debug)]
pub struct Ledger {
    /// Credits per backend and path.
    #[arg(long, default_value_t = 20_000)]
    pub credits: u64,
}

pub async fn ledger(args: Ledger) -> anyhow::Result<ExitCode> {
    let Ledger { credits } = args;
    anyhow::ensure!(credits > 0, "--credits must be greater than 0");
    let dir = tempfile::tempdir().context("creating a temporary directory for SQLite files")?;
    let rows = simulator::bench::ledger::bench_ledger(credits, dir.path()).await?;
    print!("{}", simulator::bench::ledger::render(&rows));
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Args, Debug)]
pub struct Tokens {
    /// Tokens per path.
    #[arg(long, default_value_t = 20_000)]
    pub tokens: u64,
}

pub async fn tokens(args: Tokens) -> anyhow::Result<ExitCode> {
    let Tokens { tokens } = args;
    anyhow::ensure!(tokens > 0, "--tokens must be greater than 0");
    let dir = tempfile::tempdir().context("creating a temporary directory for SQLite files")?;
    let rows = simulator::bench::tokens::bench_tokens(tokens, dir.path()).await?;
    print!("{}", simulator::bench::tokens::render_tokens(&rows));
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Args, Debug)]
pub struct Coupons {
    /// Coupon orders per path.
    #[arg(long, default_value_t = 20_000)]
    pub orders: u64,
}

pub async fn coupons(args: Coupons) -> anyhow::Result<ExitCode> {
    let Coupons { orders } = args;
    anyhow::ensure!(orders > 0, "--orders must be greater than 0");
    let rows = simulator::bench::coupons::bench_coupons(orders).await?;
    print!("{}", simulator::bench::coupons::render_coupons(&rows));
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Args, Debug)]
pub struct Kv {
    /// The Redis to measure (default: $REDRAIN_REDIS_URL, else redis://127.0.0.1:6379).
    #[arg(long)]
    pub kv: Option<String>,
    /// Coupon requests per path.
    #[arg(long, default_value_t = 200_000)]
    pub requests: u64,
}

pub async fn kv(args: Kv) -> anyhow::Result<ExitCode> {
    let Kv { kv, requests } = args;
    let url = kv
        .or_else(|| std::env::var(reference::testenv::REDIS).ok())
        .unwrap_or_else(|| "redis://127.0.0.1:6379".to_owned());
    let rows = simulator::bench::kv::bench_kv(&url, requests).await?;
    print!("{}", simulator::bench::kv::render_kv(&url, &rows));
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Args, Debug)]
pub struct Http {
    /// Seconds per client run.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Connections (wrk), in-flight bound (driver), users (goose).
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    /// The scenario to serve.
    #[arg(long, default_value = "scenarios/conform/conform.toml")]
    pub scenario: PathBuf,
    /// Also write the figures as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

pub async fn http(args: Http) -> anyhow::Result<ExitCode> {
    let Http {
        seconds,
        connections,
        scenario,
        json,
    } = args;
    anyhow::ensure!(seconds > 0, "--seconds must be at least 1");
    anyhow::ensure!(connections > 0, "--connections must be at least 1");
    anyhow::ensure!(
        scenario.is_file(),
        "no scenario file {}",
        scenario.display()
    );
    let options = simulator::bench::http::HttpBenchOptions {
        seconds,
        connections,
        redrain: std::env::current_exe().context("finding the redrain binary")?,
        scenario,
        dir: std::env::temp_dir(),
    };
    let bench = simulator::bench::http::bench_http(&options).await?;
    print!("{}", simulator::bench::http::render(&bench));
    if let Some(path) = json {
        let text = serde_json::to_string_pretty(&bench).context("serialising the figures")?;
        write_atomically(&path, text.as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Args, Debug)]
pub struct Counter {
    /// Counter writes (at 300k writes/s and 6 reads per write, virtual time).
    #[arg(long, default_value_t = 1_000_000)]
    pub writes: u64,
}

pub async fn counter(args: Counter) -> anyhow::Result<ExitCode> {
    let Counter { writes } = args;
    anyhow::ensure!(writes > 0, "--writes must be greater than 0");
    let bench = simulator::bench::counter::bench_counter(writes).await?;
    print!("{}", simulator::bench::counter::render_counter(&bench));
    Ok(ExitCode::SUCCESS)
}
