//! `redrain strategies`: run one profile three ways — synchronous crediting, plain async, the token

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use simulator::options::RunOptions;
use simulator::record::files::dir_and_stem;
use simulator::scenario::Scenario;

use super::common::{check_sample, prepare_output};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The scenario file (its token scenes are switched to sync for the sync row).
    pub scenario: PathBuf,
    /// Seed (default: the scenario's).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Share of users (default: the scenario's).
    #[arg(long)]
    pub sample: Option<f64>,
    /// Stop each trace after this many requests.
    #[arg(long)]
    pub requests: Option<u64>,
    /// Write the table as JSON here, the Markdown table and both runs' records
    /// and reports beside it (`<stem>.md`, `<stem>-sync.json`, `<stem>-queued.json`).
    #[arg(long)]
    pub json: Option<PathBuf>,
}

pub async fn execute(args: Args) -> anyhow::Result<ExitCode> {
    let Args {
        scenario,
        seed,
        sample,
        requests,
        json,
    } = args;
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
