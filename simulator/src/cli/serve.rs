//! `redrain serve`: serve the reference wallet of a scenario over protocol /v1 (HTTP+JSON,

use std::path::PathBuf;
use std::process::ExitCode;

use simulator::options::RunOptions;
use simulator::scenario::Scenario;

use super::common::AdminToken;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The scenario whose activity tree, token keys and background knobs to serve.
    pub scenario: PathBuf,
    /// Address to listen on (port 0: any free port; the address is printed).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: std::net::SocketAddr,
    #[command(flatten)]
    pub admin: AdminToken,
    /// Share of the scenario's users the load will send (scales budgets, stock,
    /// worker and pipeline rates as a simulated run of that share); give the
    /// load the same value.
    #[arg(long, default_value_t = 1.0)]
    pub rate_scale: f64,
    /// Ledger URL (default: the scenario's `[stores] ledger`, else memory).
    #[arg(long)]
    pub ledger: Option<String>,
    /// KV URL (default: the scenario's `[stores] kv`, else memory).
    #[arg(long)]
    pub kv: Option<String>,
    /// KV namespace of the server's keys.
    #[arg(long, default_value = "redrain:")]
    pub kv_prefix: String,
    /// Seed of the dev token key (default: the scenario's).
    #[arg(long)]
    pub seed: Option<u64>,
}

pub async fn execute(args: Args) -> anyhow::Result<ExitCode> {
    let Args {
        scenario,
        listen,
        admin,
        rate_scale,
        ledger,
        kv,
        kv_prefix,
        seed,
    } = args;
    // The server's warnings (a store failing under a tick) go to stderr;
    // RUST_LOG=debug shows more.
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .try_init();
    let scenario = Scenario::load(&scenario)?;
    let options = simulator::live::serve::ServeOptions {
        listen,
        admin_token: admin.read()?,
        stores: simulator::stores::store_urls(
            &scenario,
            &RunOptions {
                ledger_url: ledger,
                kv_url: kv,
                ..RunOptions::default()
            },
        ),
        kv_prefix,
        rate_scale,
        seed,
    };
    let built = simulator::live::serve::build(&scenario, &options).await?;
    let left = simulator::live::serve::serve(built, listen).await?;
    Ok(if left.drained {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
