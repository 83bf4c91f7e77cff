//! What several commands share: how a run is judged and written (`--fail-if`,
//! `--json`, the report beside it), the admin token, the checks of arguments made
//! before any work.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use simulator::record::files::{dir_and_stem, write_atomically};

/// How a run is judged and reported beyond its invariants.
#[derive(clap::Args, Debug, Default)]
pub(crate) struct RunVerdict {
    /// Fail (exit 1) if this holds of the run's key figures, k6-like, e.g.
    /// "credit_delay_ms_p99 > 500"; repeatable.
    #[arg(long = "fail-if", value_name = "EXPR")]
    pub(crate) fail_if: Vec<String>,
    /// With --json: do not write the report beside the record.
    #[arg(long)]
    pub(crate) no_report: bool,
}

/// The admin bearer token of a server: from a file, else `REDRAIN_ADMIN_TOKEN`.
#[derive(clap::Args, Debug, Default)]
pub(crate) struct AdminToken {
    /// File holding the admin bearer token (default: $REDRAIN_ADMIN_TOKEN).
    #[arg(long)]
    pub(crate) admin_token_file: Option<PathBuf>,
}

impl AdminToken {
    pub(crate) fn read(&self) -> anyhow::Result<String> {
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

/// Write the record (when asked), print the summary, and say how it went.
pub(crate) fn finish_run(
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
    let figures = reports::figures::key_figures(record);
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

/// Make the folder an output file goes into before any work, so a run is not
/// lost to a missing folder at its end; fails at once where it cannot be made.
pub(crate) fn prepare_output(path: Option<&std::path::Path>) -> anyhow::Result<()> {
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
pub(crate) fn parse_thresholds(
    texts: &[String],
) -> anyhow::Result<Vec<reports::compare::Threshold>> {
    texts
        .iter()
        .map(|text| {
            reports::compare::parse_threshold(text)
                .map_err(|e| anyhow::anyhow!("--fail-if {text:?}: {e}"))
        })
        .collect()
}

/// A sample rate must be a share in (0, 1].
pub(crate) fn check_sample(sample: Option<f64>) -> anyhow::Result<()> {
    if let Some(rate) = sample {
        anyhow::ensure!(
            rate > 0.0 && rate <= 1.0,
            "--sample {rate}: a sample rate is a share of users in (0, 1]"
        );
    }
    Ok(())
}
