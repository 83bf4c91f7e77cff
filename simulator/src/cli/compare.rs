//! `redrain compare`: compare two runs (reference vs another implementation, before vs after):

use std::path::PathBuf;
use std::process::ExitCode;

use simulator::record::files::dir_and_stem;

use super::common::parse_thresholds;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Run A (the baseline).
    pub a: PathBuf,
    /// Run B (compared with A).
    pub b: PathBuf,
    /// Write the comparison as one self-contained HTML file with overlay charts.
    #[arg(long)]
    pub html: Option<PathBuf>,
    /// Fail (exit 1) if this holds, e.g. "credit_delay_ms_p99 > 500" (run B),
    /// "delta_pct.credit_delay_ms_p99 > 10" (B − A); repeatable.
    #[arg(long = "fail-if", value_name = "EXPR")]
    pub fail_if: Vec<String>,
}

pub async fn execute(args: Args) -> anyhow::Result<ExitCode> {
    let Args {
        a,
        b,
        html,
        fail_if,
    } = args;
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
