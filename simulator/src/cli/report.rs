//! `redrain report`: rebuild a run's report (HTML, Markdown, charts as SVG and PNG) from its

use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The RunRecord, as `redrain run --json` wrote it.
    pub record: PathBuf,
    /// Folder to write into (default: beside the record).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

pub async fn execute(args: Args) -> anyhow::Result<ExitCode> {
    let Args { record, out } = args;
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
