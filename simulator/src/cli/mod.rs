//! The `redrain` commands: the argument types (clap) and one small module per
//! command that wires the library's pieces together, prints and returns the exit
//! code (0 pass, 1 an invariant violated or a threshold failed, 2 bad input or an
//! operating error). Nothing here simulates, checks or renders on its own.

mod bench;
mod cleanup;
mod common;
mod compare;
mod conform;
mod load;
mod plan;
mod report;
mod run;
mod serve;
mod strategies;
mod suite;
mod trace;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// The command line.
#[derive(Parser, Debug)]
#[command(
    name = "redrain",
    version,
    about = "Reward-wallet simulator and load-test harness with a reference wallet"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a scenario against the in-process reference wallet and check the invariants.
    Run(run::Args),
    /// Rebuild a run's report (HTML, Markdown, charts as SVG and PNG) from its
    /// RunRecord JSON.
    Report(report::Args),
    /// Compare two runs (reference vs another implementation, before vs after):
    /// deltas of the key figures, overlaid series, thresholds that fail CI.
    Compare(compare::Args),
    /// Run one profile three ways — synchronous crediting, plain async, the token
    /// scheme — and print the seed's table with the real numbers.
    Strategies(strategies::Args),
    /// Find the cheapest capacity (DB instances, credit TPS, KV and app
    /// instances, counter flush interval) under which a scenario meets the SLOs,
    /// with the evidence run. Exit 0 met, 1 not met, 2 bad input.
    Plan(plan::Args),
    /// Remove what shadow traffic left behind: the rows of the `shadow_` tables and
    /// the keys under `shadow:`. Real tables and keys are never touched.
    Cleanup(cleanup::Args),
    /// Export, hash or replay a scenario's trace.
    Trace(trace::Args),
    /// Run an invariant suite (ci/*.toml): every case's scenario × seed × sample
    /// rate, judged by invariants and thresholds; writes junit.xml, verdict.json and
    /// runs/*.json. Exit 0 all pass, 1 a failure, 2 bad input or an operating error.
    Suite(suite::Args),
    /// Serve the reference wallet of a scenario over protocol /v1 (HTTP+JSON,
    /// OpenAPI at /v1/openapi.json), with shadow stores beside the real ones.
    /// Ctrl-C or SIGTERM stops it gracefully (in-flight requests finish, background
    /// work drains).
    Serve(serve::Args),
    /// Send a scenario's trace live to a server speaking the protocol: awards as
    /// an open-model arrival-rate stream, user journeys as goose scenarios; then
    /// drain, read the audit export and check I1–I8 on the target.
    Load(load::Args),
    /// Replay the fixed conformance cases (smoke, idempotency storms, stock
    /// races, forged tokens, gray-release gates, shadow isolation, limits at their
    /// edges, withdrawal replays, and crash, restart and outage cases through the
    /// fault routes a target advertises, and a kill -9 of the target process with
    /// --start-cmd or --restart-cmd) against a wallet speaking the protocol,
    /// check every invariant on its audit export, and with --reference compare
    /// its answers and final state with the in-process reference's. Writes
    /// junit.xml and conform.json. Exit 0 pass, 1 fail, 2 error.
    Conform(conform::Args),
    /// Measure throughput.
    Bench(bench::Args),
}

impl Command {
    /// Whether the command sends or serves live traffic: it then runs on every
    /// core; simulations run on one thread (their engine is sequential; suites
    /// start OS threads).
    pub fn is_live(&self) -> bool {
        matches!(
            self,
            Command::Serve(_)
                | Command::Load(_)
                | Command::Conform(_)
                | Command::Bench(bench::Args {
                    what: bench::What::Http(_)
                })
        )
    }
}

pub async fn execute(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run(args) => run::execute(args).await,
        Command::Report(args) => report::execute(args).await,
        Command::Compare(args) => compare::execute(args).await,
        Command::Strategies(args) => strategies::execute(args).await,
        Command::Plan(args) => plan::execute(args).await,
        Command::Cleanup(args) => cleanup::execute(args).await,
        Command::Trace(args) => trace::execute(args).await,
        Command::Suite(args) => suite::execute(args).await,
        Command::Serve(args) => serve::execute(args).await,
        Command::Load(args) => load::execute(args).await,
        Command::Conform(args) => conform::execute(args).await,
        Command::Bench(args) => bench::execute(args).await,
    }
}
