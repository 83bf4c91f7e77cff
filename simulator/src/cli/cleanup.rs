//! `redrain cleanup`: remove what shadow traffic left behind: the rows of the `shadow_` tables and

use std::process::ExitCode;

use anyhow::Context as _;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Remove shadow data (required: it is the only data cleanup removes).
    #[arg(long)]
    pub shadow: bool,
    /// The ledger whose shadow tables to empty (mysql://…, postgres://…, sqlite://…).
    #[arg(long)]
    pub ledger: Option<String>,
    /// The KV whose shadow keys to delete (redis://… or redis+cluster://…).
    #[arg(long)]
    pub kv: Option<String>,
    /// The KV namespace the shadow keys sit under (the `prefix` the wallet used).
    #[arg(long, default_value = "")]
    pub kv_prefix: String,
}

pub async fn execute(args: Args) -> anyhow::Result<ExitCode> {
    let Args {
        shadow,
        ledger,
        kv,
        kv_prefix,
    } = args;
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
