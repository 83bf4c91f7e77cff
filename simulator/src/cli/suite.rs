//! `redrain suite`: run an invariant suite (ci/*.toml): every case's scenario × seed × sample

use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The suite file, e.g. ci/quick.toml.
    pub file: PathBuf,
    /// Where to write (default: target/redrain-suite/<suite name>/).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Runs at once (default: the suite's `parallel`; 0 = number of cores).
    #[arg(long)]
    pub parallel: Option<usize>,
    /// Run only cases whose scenario name contains this.
    #[arg(long)]
    pub only: Option<String>,
}

pub async fn execute(args: Args) -> anyhow::Result<ExitCode> {
    let Args {
        file,
        out,
        parallel,
        only,
    } = args;
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
