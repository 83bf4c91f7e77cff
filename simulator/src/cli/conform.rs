//! `redrain conform`: replay the fixed conformance cases (smoke, idempotency storms, stock

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use simulator::scenario::Scenario;

use super::common::AdminToken;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The server, http://127.0.0.1:PORT (serve scenarios/conform/conform.toml,
    /// or configure your wallet with scenarios/activities/conform.toml).
    #[arg(long)]
    pub target: String,
    /// Also run the cases against the in-process reference and diff final states.
    #[arg(long)]
    pub reference: bool,
    /// The conformance scenario (its tree, token key seed and smoke trace).
    #[arg(long, default_value = "scenarios/conform/conform.toml")]
    pub scenario: PathBuf,
    /// Run only cases whose name contains this.
    #[arg(long)]
    pub only: Option<String>,
    /// Where to write junit.xml and conform.json (default: target/redrain-conform/).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Longest drain after each case, seconds.
    #[arg(long, default_value_t = 60)]
    pub drain_s_max: u64,
    /// A shell command that runs the target in the foreground (e.g. `redrain serve … --ledger
    /// sqlite:… --kv redis://…`): conform starts it, kills it with SIGKILL mid-case
    /// (process_kill_restart) and starts it again on its stores. Its output goes to OUT/target.log.
    #[arg(long)]
    pub start_cmd: Option<String>,
    /// A shell command that kills and restarts the target (returning once the old process is
    /// gone), for targets conform does not start; conform then waits for /v1/health.
    #[arg(long)]
    pub restart_cmd: Option<String>,
    #[command(flatten)]
    pub admin: AdminToken,
}

pub async fn execute(args: Args) -> anyhow::Result<ExitCode> {
    let Args {
        target,
        reference,
        scenario,
        only,
        out,
        drain_s_max,
        start_cmd,
        restart_cmd,
        admin,
    } = args;
    let scenario = Scenario::load(&scenario)?;
    let out = out.unwrap_or_else(|| PathBuf::from("target/redrain-conform"));
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let options = simulator::live::conform::ConformOptions {
        target,
        admin_token: admin.read()?,
        reference,
        only,
        drain_ms_max: drain_s_max.saturating_mul(1000),
        process: simulator::live::nemesis::ProcessControl {
            start_cmd,
            restart_cmd,
            log: out.join("target.log"),
        },
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
