//! The `redrain` CLI: parse arguments, wire things, print, return an exit code.
//! 0 = ran and every invariant held; 1 = an invariant was violated; 2 = bad input
//! or an operating error.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use simulator::engine::run_scenario;
use simulator::record::files::{dir_and_stem, write_atomically};
use simulator::scenario::Scenario;
use simulator::scenario::options::RunOptions;

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
        /// Requests to send: a scenario without phases sends exactly this many;
        /// a phased scenario stops its trace after this many.
        #[arg(long)]
        requests: Option<u64>,
        /// Share of users to simulate, in (0, 1] (default: the scenario's).
        #[arg(long)]
        sample: Option<f64>,
        /// Run only shard i of N of the trace (by act_id hash), e.g. 0/4.
        #[arg(long)]
        shard: Option<simulator::trace::Shard>,
        /// Run twice and fail (exit 1) unless the records are byte-identical
        /// apart from wall-clock fields.
        #[arg(long)]
        check_determinism: bool,
        /// Also check the invariants every N virtual seconds, on a snapshot of
        /// the stores (work in flight allowed); a violation seen only then fails too.
        #[arg(long, value_name = "N")]
        check_every_s: Option<u64>,
        /// Ledger URL (default: the scenario's `[stores] ledger`, else memory):
        /// memory, sqlite::memory:, sqlite://PATH, mysql://… or postgres://…
        #[arg(long)]
        ledger: Option<String>,
        /// KV URL (default: the scenario's `[stores] kv`, else memory): memory,
        /// redis://host:port[/db] or redis+cluster://host:port[,host:port…]
        #[arg(long)]
        kv: Option<String>,
        /// Also write the RunRecord as JSON to this file, and the report beside
        /// it (HTML, Markdown, charts as SVG and PNG) unless --no-report.
        #[arg(long)]
        json: Option<PathBuf>,
        #[command(flatten)]
        verdict: RunVerdict,
    },
    /// Rebuild a run's report (HTML, Markdown, charts as SVG and PNG) from its
    /// RunRecord JSON.
    Report {
        /// The RunRecord, as `redrain run --json` wrote it.
        record: PathBuf,
        /// Folder to write into (default: beside the record).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Compare two runs (reference vs another implementation, before vs after):
    /// deltas of the key figures, overlaid series, thresholds that fail CI.
    Compare {
        /// Run A (the baseline).
        a: PathBuf,
        /// Run B (compared with A).
        b: PathBuf,
        /// Write the comparison as one self-contained HTML file with overlay charts.
        #[arg(long)]
        html: Option<PathBuf>,
        /// Fail (exit 1) if this holds, e.g. "credit_delay_ms_p99 > 500" (run B),
        /// "delta_pct.credit_delay_ms_p99 > 10" (B − A); repeatable.
        #[arg(long = "fail-if", value_name = "EXPR")]
        fail_if: Vec<String>,
    },
    /// Run one profile three ways — synchronous crediting, plain async, the token
    /// scheme — and print the seed's table with the real numbers.
    Strategies {
        /// The scenario file (its token scenes are switched to sync for the sync row).
        scenario: PathBuf,
        /// Seed (default: the scenario's).
        #[arg(long)]
        seed: Option<u64>,
        /// Share of users (default: the scenario's).
        #[arg(long)]
        sample: Option<f64>,
        /// Stop each trace after this many requests.
        #[arg(long)]
        requests: Option<u64>,
        /// Write the table as JSON here, the Markdown table and both runs' records
        /// and reports beside it (`<stem>.md`, `<stem>-sync.json`, `<stem>-queued.json`).
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Find the cheapest capacity (DB instances, credit TPS, KV and app
    /// instances, counter flush interval) under which a scenario meets the SLOs,
    /// with the evidence run. Exit 0 met, 1 not met, 2 bad input.
    Plan {
        /// The scenario file.
        scenario: PathBuf,
        /// The objectives, e.g. "drain_s_max=600,visible_lag_ms_max=0,coupon_p99_ms_max=500".
        #[arg(long)]
        slo: String,
        /// Seed (default: the scenario's).
        #[arg(long)]
        seed: Option<u64>,
        /// Share of users (default: the scenario's).
        #[arg(long)]
        sample: Option<f64>,
        /// Stop each trace after this many requests.
        #[arg(long)]
        requests: Option<u64>,
        /// Write the plan as JSON here, and the evidence run's record and report
        /// beside it (`<stem>-evidence.json`, `.html`, …).
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
    /// Export, hash or replay a scenario's trace.
    Trace {
        #[command(subcommand)]
        what: TraceWhat,
    },
    /// Run an invariant suite (ci/*.toml): every case's scenario × seed × sample
    /// rate, judged by invariants and thresholds; writes junit.xml, verdict.json and
    /// runs/*.json. Exit 0 all pass, 1 a failure, 2 bad input or an operating error.
    Suite {
        /// The suite file, e.g. ci/quick.toml.
        file: PathBuf,
        /// Where to write (default: target/redrain-suite/<suite name>/).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Runs at once (default: the suite's `parallel`; 0 = number of cores).
        #[arg(long)]
        parallel: Option<usize>,
        /// Run only cases whose scenario name contains this.
        #[arg(long)]
        only: Option<String>,
    },
    /// Serve the reference wallet of a scenario over protocol /v1 (HTTP+JSON,
    /// OpenAPI at /v1/openapi.json), with shadow stores beside the real ones.
    /// Ctrl-C or SIGTERM stops it gracefully (in-flight requests finish, background
    /// work drains).
    Serve {
        /// The scenario whose activity tree, token keys and background knobs to serve.
        scenario: PathBuf,
        /// Address to listen on (port 0: any free port; the address is printed).
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        #[command(flatten)]
        admin: AdminToken,
        /// Share of the scenario's users the load will send (scales budgets, stock,
        /// worker and pipeline rates as a simulated run of that share); give the
        /// load the same value.
        #[arg(long, default_value_t = 1.0)]
        rate_scale: f64,
        /// Ledger URL (default: the scenario's `[stores] ledger`, else memory).
        #[arg(long)]
        ledger: Option<String>,
        /// KV URL (default: the scenario's `[stores] kv`, else memory).
        #[arg(long)]
        kv: Option<String>,
        /// KV namespace of the server's keys.
        #[arg(long, default_value = "redrain:")]
        kv_prefix: String,
        /// Seed of the dev token key (default: the scenario's).
        #[arg(long)]
        seed: Option<u64>,
    },
    /// Send a scenario's trace live to a server speaking the protocol: awards as
    /// an open-model arrival-rate stream, user journeys as goose scenarios; then
    /// drain, read the audit export and check I1–I8 on the target.
    Load {
        /// The scenario file.
        scenario: PathBuf,
        /// The server, http://127.0.0.1:PORT (only loopback targets).
        #[arg(long)]
        target: String,
        /// Share of the profile's users (and so of its rate) to send, in (0, 1].
        #[arg(long, default_value_t = 0.0001)]
        rate_scale: f64,
        /// Stop the trace after this many seconds.
        #[arg(long)]
        duration_s_max: Option<u64>,
        /// Award requests outstanding at most; a send that finds no room is
        /// dropped and counted.
        #[arg(long, default_value_t = 2048)]
        in_flight_max: usize,
        /// goose users running the user journeys.
        #[arg(long, default_value_t = 8)]
        journey_users: usize,
        /// Seed (default: the scenario's).
        #[arg(long)]
        seed: Option<u64>,
        /// Longest wait for the target to drain, seconds.
        #[arg(long, default_value_t = 120)]
        drain_s_max: u64,
        #[command(flatten)]
        admin: AdminToken,
        /// Also write the RunRecord as JSON here, and the report beside it.
        #[arg(long)]
        json: Option<PathBuf>,
        #[command(flatten)]
        verdict: RunVerdict,
    },
    /// Replay the fixed conformance cases (smoke, idempotency storms, stock
    /// races, forged tokens, gray-release gates, shadow isolation) against a
    /// wallet speaking the protocol, check every invariant on its audit export,
    /// and with --reference compare its final state with the in-process
    /// reference's. Writes junit.xml and conform.json. Exit 0 pass, 1 fail, 2 error.
    Conform {
        /// The server, http://127.0.0.1:PORT (serve scenarios/conform/conform.toml,
        /// or configure your wallet with scenarios/activities/conform.toml).
        #[arg(long)]
        target: String,
        /// Also run the cases against the in-process reference and diff final states.
        #[arg(long)]
        reference: bool,
        /// The conformance scenario (its tree, token key seed and smoke trace).
        #[arg(long, default_value = "scenarios/conform/conform.toml")]
        scenario: PathBuf,
        /// Run only cases whose name contains this.
        #[arg(long)]
        only: Option<String>,
        /// Where to write junit.xml and conform.json (default: target/redrain-conform/).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Longest drain after each case, seconds.
        #[arg(long, default_value_t = 60)]
        drain_s_max: u64,
        #[command(flatten)]
        admin: AdminToken,
    },
    /// Measure throughput.
    Bench {
        #[command(subcommand)]
        what: BenchWhat,
    },
}

#[derive(Subcommand, Debug)]
enum TraceWhat {
    /// Write the trace as JSONL: a header line, then one request per line.
    Export {
        /// The scenario file.
        scenario: PathBuf,
        /// Where to write it.
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        pick: TracePick,
    },
    /// Print a trace's BLAKE3 hash and length without writing it.
    Hash {
        /// The scenario file.
        scenario: PathBuf,
        #[command(flatten)]
        pick: TracePick,
    },
    /// Run an exported trace against the reference wallet (seed and sample come
    /// from the trace's header).
    Replay {
        /// The scenario file the trace was exported from.
        scenario: PathBuf,
        /// The exported trace.
        trace: PathBuf,
        /// Ledger URL (as for `run`).
        #[arg(long)]
        ledger: Option<String>,
        /// KV URL (as for `run`).
        #[arg(long)]
        kv: Option<String>,
        /// Also write the RunRecord as JSON to this file (and the report beside it).
        #[arg(long)]
        json: Option<PathBuf>,
        #[command(flatten)]
        verdict: RunVerdict,
    },
}

/// How a run is judged and reported beyond its invariants.
#[derive(clap::Args, Debug, Default)]
struct RunVerdict {
    /// Fail (exit 1) if this holds of the run's key figures, k6-like, e.g.
    /// "credit_delay_ms_p99 > 500"; repeatable.
    #[arg(long = "fail-if", value_name = "EXPR")]
    fail_if: Vec<String>,
    /// With --json: do not write the report beside the record.
    #[arg(long)]
    no_report: bool,
}

/// The admin bearer token of a server: from a file, else `REDRAIN_ADMIN_TOKEN`.
#[derive(clap::Args, Debug, Default)]
struct AdminToken {
    /// File holding the admin bearer token (default: $REDRAIN_ADMIN_TOKEN).
    #[arg(long)]
    admin_token_file: Option<PathBuf>,
}

impl AdminToken {
    fn read(&self) -> anyhow::Result<String> {
        let token = match &self.admin_token_file {
            Some(path) => std::fs::read_to_string(path)
                .with_context(|| format!("reading the admin token file {}", path.display()))?
                .trim()
                .to_owned(),
            None => std::env::var("REDRAIN_ADMIN_TOKEN").unwrap_or_default(),
        };
        anyhow::ensure!(
            !token.is_empty(),
            "no admin token: pass --admin-token-file PATH or set REDRAIN_ADMIN_TOKEN \
             (admin routes — clock, drain, audit, switches — need one)"
        );
        anyhow::ensure!(
            token.len() >= 16 && token.bytes().all(|b| b.is_ascii_graphic()),
            "the admin token must be at least 16 printable characters without spaces"
        );
        Ok(token)
    }
}

/// Which trace of a scenario.
#[derive(clap::Args, Debug)]
struct TracePick {
    /// Seed (default: the scenario's).
    #[arg(long)]
    seed: Option<u64>,
    /// Share of users (default: the scenario's).
    #[arg(long)]
    sample: Option<f64>,
    /// Stop after this many requests.
    #[arg(long)]
    requests: Option<u64>,
    /// Only shard i of N.
    #[arg(long)]
    shard: Option<simulator::trace::Shard>,
}

#[derive(Subcommand, Debug)]
enum BenchWhat {
    /// Simulated requests per wall second, how far 100% is from real time, and
    /// where the time goes. Default: smoke (sample 1) and red-packet-rain (its 1%).
    Sim {
        /// A scenario, optionally with a sample rate: PATH or PATH@RATE (repeatable).
        #[arg(long = "scenario")]
        scenarios: Vec<String>,
    },
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
    /// The live load driver beside wrk and a goose-only run against the same
    /// `redrain serve` (requests/s per client core), and the server's award
    /// throughput on the embedded stores and on MariaDB + Redis.
    Http {
        /// Seconds per client run.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Connections (wrk), in-flight bound (driver), users (goose).
        #[arg(long, default_value_t = 64)]
        connections: usize,
        /// The scenario to serve.
        #[arg(long, default_value = "scenarios/conform/conform.toml")]
        scenario: PathBuf,
        /// Also write the figures as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Hot-counter KV operations: plan 1 (split keys) beside plan 2 (local aggregation).
    Counter {
        /// Counter writes (at 300k writes/s and 6 reads per write, virtual time).
        #[arg(long, default_value_t = 1_000_000)]
        writes: u64,
    },
}

fn main() -> ExitCode {
    quiet_on_closed_stdout();
    let cli = Cli::parse();
    // Live traffic (a server, a load driver) uses every core; simulations run
    // on one thread (their engine is sequential; suites start OS threads).
    let live = matches!(
        cli.command,
        Command::Serve { .. }
            | Command::Load { .. }
            | Command::Conform { .. }
            | Command::Bench {
                what: BenchWhat::Http { .. }
            }
    );
    let runtime = if live {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    };
    let runtime = match runtime {
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
        Command::Serve {
            scenario,
            listen,
            admin,
            rate_scale,
            ledger,
            kv,
            kv_prefix,
            seed,
        } => {
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
        Command::Conform {
            target,
            reference,
            scenario,
            only,
            out,
            drain_s_max,
            admin,
        } => {
            let scenario = Scenario::load(&scenario)?;
            let out = out.unwrap_or_else(|| PathBuf::from("target/redrain-conform"));
            std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
            let options = simulator::live::conform::ConformOptions {
                target,
                admin_token: admin.read()?,
                reference,
                only,
                drain_ms_max: drain_s_max.saturating_mul(1000),
            };
            let report = simulator::live::conform::conform(&scenario, &options).await?;
            print!("{}", simulator::live::conform::render(&report));
            let junit = simulator::live::conform::junit(&report)?;
            let json = serde_json::to_string_pretty(&report).context("serialising the verdict")?;
            simulator::record::files::write_all_or_nothing(
                &out,
                &[
                    (out.join("junit.xml"), junit.into_bytes()),
                    (out.join("conform.json"), json.into_bytes()),
                ],
            )?;
            println!("wrote {0}/junit.xml and {0}/conform.json", out.display());
            Ok(if report.passed {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Load {
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
        } => {
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
        Command::Run {
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
        } => {
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
                println!(
                    "determinism: two runs gave byte-identical records (wall-clock fields aside)"
                );
                output
            } else {
                run_scenario(&scenario, &options).await?
            };
            finish_run(&output.record, json, &verdict, &thresholds)
        }
        Command::Strategies {
            scenario,
            seed,
            sample,
            requests,
            json,
        } => {
            let scenario = Scenario::load(&scenario)?;
            check_sample(sample)?;
            prepare_output(json.as_deref())?;
            let options = RunOptions {
                seed,
                sample_rate: sample,
                requests,
                progress: std::env::var_os("CI").is_none(),
                ..RunOptions::default()
            };
            let table = simulator::plan::strategy::compare_strategies(&scenario, &options).await?;
            print!(
                "{}",
                simulator::plan::strategy::render_strategy_table(&table)
            );
            if let Some(path) = json {
                let (dir, stem) = dir_and_stem(&path);
                let records = [
                    (format!("{stem}-sync"), &table.sync_record),
                    (format!("{stem}-queued"), &table.queued_record),
                ];
                let mut files = vec![
                    (
                        path.clone(),
                        serde_json::to_string_pretty(&table)
                            .context("serialising the table")?
                            .into_bytes(),
                    ),
                    (
                        dir.join(format!("{stem}.md")),
                        simulator::plan::strategy::render_strategy_markdown(&table).into_bytes(),
                    ),
                ];
                for (name, record) in &records {
                    files.push((
                        dir.join(format!("{name}.json")),
                        serde_json::to_string_pretty(record)
                            .context("serialising a run record")?
                            .into_bytes(),
                    ));
                }
                simulator::record::files::write_all_or_nothing(&dir, &files)?;
                for (name, record) in &records {
                    simulator::record::files::write_report(record, &dir, name)?;
                }
                println!(
                    "\nwrote {} and {stem}.md, {stem}-sync.*, {stem}-queued.* beside it",
                    path.display()
                );
            }
            let passed = table.rows.iter().all(|r| r.invariants_passed);
            Ok(if passed {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Plan {
            scenario,
            slo,
            seed,
            sample,
            requests,
            json,
        } => {
            let slo =
                simulator::plan::parse_slo(&slo).map_err(|e| anyhow::anyhow!("--slo: {e}"))?;
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
                let files =
                    simulator::record::files::write_report(&report.evidence, &dir, &evidence)?;
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
        Command::Report { record, out } => {
            let loaded = simulator::record::files::read_record(&record)?;
            let files = match out {
                Some(dir) => {
                    let stem = record
                        .file_stem()
                        .and_then(|s| s.to_str())
                        .unwrap_or("run")
                        .to_owned();
                    simulator::record::files::write_report(&loaded, &dir, &stem)?
                }
                None => simulator::record::files::write_report_beside(&loaded, &record)?,
            };
            println!(
                "report: {} ({} charts, SVG and PNG) · {}",
                files.html.display(),
                files.charts.len() / 2,
                files.markdown.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Compare {
            a,
            b,
            html,
            fail_if,
        } => {
            let thresholds = parse_thresholds(&fail_if)?;
            let a = simulator::record::files::read_record(&a)?;
            let b = simulator::record::files::read_record(&b)?;
            let comparison = reports::compare::compare(&a, &b);
            print!("{}", reports::compare::render_comparison_text(&comparison));
            if let Some(path) = html {
                let (dir, _) = dir_and_stem(&path);
                simulator::record::files::write_all_or_nothing(
                    &dir,
                    &[(
                        path.clone(),
                        reports::compare::render_comparison_html(&comparison).into_bytes(),
                    )],
                )?;
                println!("comparison: {}", path.display());
            }
            let mut failed = false;
            for threshold in &thresholds {
                let outcome = threshold.evaluate_comparison(&comparison);
                failed |= !outcome.passed();
                println!("threshold {}", threshold.describe(&outcome));
            }
            Ok(if failed {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Trace {
            what:
                TraceWhat::Export {
                    scenario,
                    out,
                    pick,
                },
        } => {
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
        Command::Trace {
            what: TraceWhat::Hash { scenario, pick },
        } => {
            let loaded = Scenario::load(&scenario)?;
            let (effective, seed, shard) = picked(&loaded, &pick)?;
            let mut hasher = simulator::trace::TraceHasher::default();
            for op in simulator::trace::Trace::new(&effective, seed).with_shard(shard) {
                hasher.add(&op);
            }
            println!("{} requests · trace {}", hasher.ops(), hasher.finish());
            Ok(ExitCode::SUCCESS)
        }
        Command::Trace {
            what:
                TraceWhat::Replay {
                    scenario,
                    trace,
                    ledger,
                    kv,
                    json,
                    verdict,
                },
        } => {
            let loaded = Scenario::load(&scenario)?;
            let file = std::fs::File::open(&trace)
                .with_context(|| format!("opening {}", trace.display()))?;
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
        Command::Bench {
            what: BenchWhat::Sim { scenarios },
        } => {
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
                            .and_then(|r| {
                                check_sample(Some(r)).map(|()| (PathBuf::from(path), Some(r)))
                            }),
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
        Command::Suite {
            file,
            out,
            parallel,
            only,
        } => {
            let suite = simulator::suite::Suite::load(&file)?;
            let options = simulator::suite::SuiteOptions {
                out_dir: out,
                parallel,
                only,
                progress: std::env::var_os("CI").is_none(),
            };
            let report = simulator::suite::run_suite(&suite, &options)?;
            print!("{}", report.render_summary());
            Ok(ExitCode::from(report.exit_code()))
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
            let rows = simulator::bench::tokens::bench_tokens(tokens, dir.path()).await?;
            print!("{}", simulator::bench::tokens::render_tokens(&rows));
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            what: BenchWhat::Ledger { credits },
        } => {
            anyhow::ensure!(credits > 0, "--credits must be greater than 0");
            let dir =
                tempfile::tempdir().context("creating a temporary directory for SQLite files")?;
            let rows = simulator::bench::ledger::bench_ledger(credits, dir.path()).await?;
            print!("{}", simulator::bench::ledger::render(&rows));
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            what: BenchWhat::Coupons { orders },
        } => {
            anyhow::ensure!(orders > 0, "--orders must be greater than 0");
            let rows = simulator::bench::coupons::bench_coupons(orders).await?;
            print!("{}", simulator::bench::coupons::render_coupons(&rows));
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            what: BenchWhat::Kv { kv, requests },
        } => {
            let url = kv
                .or_else(|| std::env::var(reference::testenv::REDIS).ok())
                .unwrap_or_else(|| "redis://127.0.0.1:6379".to_owned());
            let rows = simulator::bench::kv::bench_kv(&url, requests).await?;
            print!("{}", simulator::bench::kv::render_kv(&url, &rows));
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            what:
                BenchWhat::Http {
                    seconds,
                    connections,
                    scenario,
                    json,
                },
        } => {
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
                let text =
                    serde_json::to_string_pretty(&bench).context("serialising the figures")?;
                write_atomically(&path, text.as_bytes())
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            what: BenchWhat::Counter { writes },
        } => {
            anyhow::ensure!(writes > 0, "--writes must be greater than 0");
            let bench = simulator::bench::counter::bench_counter(writes).await?;
            print!("{}", simulator::bench::counter::render_counter(&bench));
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Write the record (when asked), print the summary, and say how it went.
fn finish_run(
    record: &reports::RunRecord,
    json: Option<PathBuf>,
    verdict: &RunVerdict,
    thresholds: &[reports::compare::Threshold],
) -> anyhow::Result<ExitCode> {
    // The summary first: whatever happens to the files, the run's verdict shows.
    print!("{}", reports::render_summary(record));
    if let Some(path) = json {
        let text = serde_json::to_string_pretty(record).context("serialising the run record")?;
        write_atomically(&path, text.as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
        if !verdict.no_report {
            let files = simulator::record::files::write_report_beside(record, &path)?;
            println!(
                "\nreport: {} ({} charts, SVG and PNG) · {}",
                files.html.display(),
                files.charts.len() / 2,
                files.markdown.display()
            );
        }
    }
    let figures = reports::compare::key_figures(record);
    let mut failed = !record.passed();
    for threshold in thresholds {
        let outcome = threshold.evaluate(&figures);
        failed |= !outcome.passed();
        println!("threshold {}", threshold.describe(&outcome));
    }
    if failed && record.passed() {
        // The record's command with the thresholds that failed it.
        let fail_if: String = verdict
            .fail_if
            .iter()
            .map(|t| format!(" --fail-if {t:?}"))
            .collect();
        let reproduce = match record.reproduce.split_once("   # ") {
            Some((command, build)) => format!("{command}{fail_if}   # {build}"),
            None => format!("{}{fail_if}", record.reproduce),
        };
        println!("reproduce with:\n  {reproduce}");
    }
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// `redrain … | head` closes stdout early; `print!` then panics on the broken
/// pipe. Leave quietly as a Unix tool does (exit 141, killed by SIGPIPE)
/// instead of printing a panic; every other panic keeps the default report.
fn quiet_on_closed_stdout() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if message.starts_with("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(141);
        }
        default(info);
    }));
}

/// Make the folder an output file goes into before any work, so a run is not
/// lost to a missing folder at its end; fails at once where it cannot be made.
fn prepare_output(path: Option<&std::path::Path>) -> anyhow::Result<()> {
    if let Some(path) = path {
        let (dir, _) = dir_and_stem(path);
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("creating {} for {}", dir.display(), path.display()))?;
        anyhow::ensure!(
            !path.is_dir(),
            "{} is a folder; give a file name for the record",
            path.display()
        );
    }
    Ok(())
}

/// Parse `--fail-if` expressions before any work, so a typo costs nothing.
fn parse_thresholds(texts: &[String]) -> anyhow::Result<Vec<reports::compare::Threshold>> {
    texts
        .iter()
        .map(|text| {
            reports::compare::parse_threshold(text)
                .map_err(|e| anyhow::anyhow!("--fail-if {text:?}: {e}"))
        })
        .collect()
}

/// A sample rate must be a share in (0, 1].
fn check_sample(sample: Option<f64>) -> anyhow::Result<()> {
    if let Some(rate) = sample {
        anyhow::ensure!(
            rate > 0.0 && rate <= 1.0,
            "--sample {rate}: a sample rate is a share of users in (0, 1]"
        );
    }
    Ok(())
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
    let effective = simulator::scenario::options::effective_scenario(scenario, &options);
    Ok((effective, pick.seed.unwrap_or(scenario.seed), pick.shard))
}
