//! The `redrain` CLI: parse arguments, wire things, print, return an exit code.
//! 0 = ran and every invariant held; 1 = an invariant was violated; 2 = bad input
//! or an operating error.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use simulator::run::{RunOptions, run_scenario};
use simulator::scenario::Scenario;

#[derive(Parser, Debug)]
#[command(
    name = "redrain",
    version,
    about = "Reward-wallet simulator and load-test harness with a reference wallet"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a scenario against the in-process reference wallet and check the invariants.
    Run {
        /// The scenario file, e.g. scenarios/smoke.toml.
        scenario: PathBuf,
        /// Seed of the workload (default: the scenario's).
        #[arg(long)]
        seed: Option<u64>,
        /// Requests to send (default: the scenario's).
        #[arg(long)]
        requests: Option<u64>,
        /// Ledger URL (default: the scenario's `[stores] ledger`, else memory):
        /// memory, sqlite::memory:, sqlite://PATH, mysql://… or postgres://…
        #[arg(long)]
        ledger: Option<String>,
        /// KV URL (default: the scenario's `[stores] kv`, else memory): memory,
        /// redis://host:port[/db] or redis+cluster://host:port[,host:port…]
        #[arg(long)]
        kv: Option<String>,
        /// Also write the RunRecord as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Remove what shadow traffic left behind: the rows of the `shadow_` tables and
    /// the keys under `shadow:`. Real tables and keys are never touched.
    Cleanup {
        /// Remove shadow data (required: it is the only data cleanup removes).
        #[arg(long)]
        shadow: bool,
        /// The ledger whose shadow tables to empty (mysql://…, postgres://…, sqlite://…).
        #[arg(long)]
        ledger: Option<String>,
        /// The KV whose shadow keys to delete (redis://… or redis+cluster://…).
        #[arg(long)]
        kv: Option<String>,
        /// The KV namespace the shadow keys sit under (the `prefix` the wallet used).
        #[arg(long, default_value = "")]
        kv_prefix: String,
    },
    /// Measure throughput.
    Bench {
        #[command(subcommand)]
        what: BenchWhat,
    },
}

#[derive(Subcommand, Debug)]
enum BenchWhat {
    /// Synchronous credits per second on the memory and SQLite ledgers.
    Ledger {
        /// Credits per backend and path.
        #[arg(long, default_value_t = 20_000)]
        credits: u64,
    },
    /// Token signing and verification per core, token issuance and async crediting.
    Tokens {
        /// Tokens per path.
        #[arg(long, default_value_t = 20_000)]
        tokens: u64,
    },
    /// Coupon issues per second: the sync path beside the coupon pipeline (memory backend).
    Coupons {
        /// Coupon orders per path.
        #[arg(long, default_value_t = 20_000)]
        orders: u64,
    },
    /// Coupon stock consumes on Redis: one call per request beside merged consumes.
    Kv {
        /// The Redis to measure (default: $REDRAIN_REDIS_URL, else redis://127.0.0.1:6379).
        #[arg(long)]
        kv: Option<String>,
        /// Coupon requests per path.
        #[arg(long, default_value_t = 200_000)]
        requests: u64,
    },
    /// Hot-counter KV operations: plan 1 (split keys) beside plan 2 (local aggregation).
    Counter {
        /// Counter writes (at 300k writes/s and 6 reads per write, virtual time).
        #[arg(long, default_value_t = 1_000_000)]
        writes: u64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(execute(cli.command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn execute(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run {
            scenario,
            seed,
            requests,
            ledger,
            kv,
            json,
        } => {
            let scenario = Scenario::load(&scenario)?;
            let ci = std::env::var_os("CI").is_some();
            let options = RunOptions {
                seed,
                requests,
                ledger_url: ledger,
                kv_url: kv,
                progress: !ci,
            };
            let output = run_scenario(&scenario, &options).await?;
            if let Some(path) = json {
                let text = serde_json::to_string_pretty(&output.record)
                    .context("serialising the run record")?;
                write_atomically(&path, text.as_bytes())
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            print!("{}", reports::render_summary(&output.record));
            Ok(if output.record.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Cleanup {
            shadow,
            ledger,
            kv,
            kv_prefix,
        } => {
            anyhow::ensure!(
                shadow,
                "cleanup removes only shadow data: pass --shadow to say so"
            );
            anyhow::ensure!(
                ledger.is_some() || kv.is_some(),
                "name what to clean: --ledger URL and/or --kv URL"
            );
            // Check both URLs before removing anything.
            if let Some(url) = &ledger {
                reference::ledger::check_url(url)?;
            }
            if let Some(url) = &kv {
                reference::kv::check_url(url)?;
            }
            if let Some(url) = &ledger {
                let removed = reference::ledger::cleanup_shadow(url)
                    .await
                    .with_context(|| format!("cleaning {}", reference::redact_url(url)))?;
                println!(
                    "ledger {}: removed {} entries and {} accounts from the shadow_ tables",
                    reference::redact_url(url),
                    removed.entries,
                    removed.accounts
                );
            }
            if let Some(url) = &kv {
                let removed = reference::kv::cleanup_shadow(url, &kv_prefix)
                    .await
                    .with_context(|| format!("cleaning {}", reference::redact_url(url)))?;
                println!(
                    "kv {}: removed {} keys under `{kv_prefix}{}`",
                    reference::redact_url(url),
                    removed.keys,
                    reference::kv::SHADOW_PREFIX
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            what: BenchWhat::Tokens { tokens },
        } => {
            anyhow::ensure!(tokens > 0, "--tokens must be greater than 0");
            let dir =
                tempfile::tempdir().context("creating a temporary directory for SQLite files")?;
            let rows = simulator::bench::bench_tokens(tokens, dir.path()).await?;
            print!("{}", simulator::bench::render_tokens(&rows));
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            what: BenchWhat::Ledger { credits },
        } => {
            anyhow::ensure!(credits > 0, "--credits must be greater than 0");
            let dir =
                tempfile::tempdir().context("creating a temporary directory for SQLite files")?;
            let rows = simulator::bench::bench_ledger(credits, dir.path()).await?;
            print!("{}", simulator::bench::render(&rows));
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            what: BenchWhat::Coupons { orders },
        } => {
            anyhow::ensure!(orders > 0, "--orders must be greater than 0");
            let rows = simulator::bench::bench_coupons(orders).await?;
            print!("{}", simulator::bench::render_coupons(&rows));
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            what: BenchWhat::Kv { kv, requests },
        } => {
            let url = kv
                .or_else(|| std::env::var(reference::testenv::REDIS).ok())
                .unwrap_or_else(|| "redis://127.0.0.1:6379".to_owned());
            let rows = simulator::bench_kv::bench_kv(&url, requests).await?;
            print!("{}", simulator::bench_kv::render_kv(&url, &rows));
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            what: BenchWhat::Counter { writes },
        } => {
            anyhow::ensure!(writes > 0, "--writes must be greater than 0");
            let bench = simulator::bench::bench_counter(writes).await?;
            print!("{}", simulator::bench::render_counter(&bench));
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Write to a temporary file beside `path`, then rename: a failed run leaves no half file.
fn write_atomically(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let mut file = tempfile::NamedTempFile::new_in(dir)?;
    std::io::Write::write_all(&mut file, bytes)?;
    file.persist(path).map_err(|e| e.error)?;
    Ok(())
}
