//! `redrain bench tokens`: the token scheme's costs — Ed25519 signing and strict
//! verification on one core, token-mode issuance (validate, budget, sign, record),
//! and async crediting by the worker in batches — beside the sync per-order path
//! on the same SQLite file, in one run.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use super::ledger::bench_wallet;
use super::{BENCH_START_MS, BENCH_TREE, BENCH_USERS, BenchRow, keep_going, order_in};
use anyhow::Context as _;
use reference::kv;
use reference::token::{KeyRing, TokenFacts};
use reference::wallet::{IssueOutcome, IssueRequest, Wallet};
use reference::worker::{CreditWorker, WorkerConfig};
use reference::{ActivityTree, ManualClock, ledger};

/// Signatures or verifications per second on this thread, at least `ops` of them.
fn bench_crypto(ops: u64, verify: bool) -> (u64, f64) {
    let ring = KeyRing::dev(1);
    let facts = |i: u64| TokenFacts {
        app_id: 1,
        act_id: i % BENCH_USERS + 1,
        activity_id: 1,
        child_id: 1,
        order_no: order_in(2, i),
        award_id: 1,
        amount_cents: 1 + i % 500,
        open_time_ms: BENCH_START_MS,
    };
    // Verification needs tokens; sign them outside the timed loop.
    let tokens: Vec<Vec<u8>> = if verify {
        (0..1024)
            .map(|i| ring.sign(&facts(i)).expect("signing ring"))
            .collect()
    } else {
        Vec::new()
    };
    let started = Instant::now();
    let mut i = 0;
    while keep_going(i, ops, started.elapsed().as_secs_f64()) {
        if verify {
            let token = &tokens[(i % 1024) as usize];
            assert!(ring.verify(token).is_ok(), "bench tokens verify");
        } else {
            std::hint::black_box(ring.sign(&facts(i)));
        }
        i += 1;
    }
    (i, started.elapsed().as_secs_f64())
}

/// Token-mode issues per second, then the worker's drain of them in batches.
async fn bench_token_path(url: &str, tokens: u64) -> anyhow::Result<[(u64, f64); 2]> {
    let clock = Arc::new(ManualClock::new(BENCH_START_MS));
    let tree =
        Arc::new(ActivityTree::from_toml_str(BENCH_TREE, "bench tree").context("bench tree")?);
    let wallet = Wallet::new(
        tree,
        ledger::open(url).await?,
        kv::open("memory", clock.clone(), &kv::KvOptions::default()).await?,
        clock.clone(),
    )
    .with_keys(Arc::new(KeyRing::dev(1)));
    let started = Instant::now();
    for i in 0..tokens {
        let request = IssueRequest {
            app_id: 1,
            activity_id: 1,
            order_no: order_in(2, i).to_string(),
            award_id: 1,
            amount_cents: 1 + (i % 500) as i64,
        };
        let outcome = wallet.issue(&request).await?;
        anyhow::ensure!(
            matches!(outcome, IssueOutcome::Accepted { .. }),
            "bench token {i} was not accepted: {outcome:?}"
        );
    }
    let issued = (tokens, started.elapsed().as_secs_f64());
    let config = WorkerConfig {
        batch_max: 200,
        ..WorkerConfig::default()
    };
    let mut worker =
        CreditWorker::for_wallet(&wallet, config).context("the bench wallet has keys")?;
    let started = Instant::now();
    let mut credited = 0;
    while credited < tokens {
        let report = worker.tick(BENCH_START_MS).await?;
        anyhow::ensure!(
            report.claimed > 0,
            "worker stalled at {credited} of {tokens}"
        );
        credited += report.credited;
    }
    Ok([issued, (credited, started.elapsed().as_secs_f64())])
}

/// Measure the token scheme: `tokens` tokens per path (crypto runs at least a second).
pub async fn bench_tokens(tokens: u64, dir: &Path) -> anyhow::Result<Vec<BenchRow>> {
    let mut rows = Vec::new();
    let (ops, elapsed_s) = bench_crypto(tokens, false);
    rows.push(BenchRow {
        backend: "1 core".to_owned(),
        path: "ed25519 sign (token body)",
        credits: ops,
        elapsed_s,
    });
    let (ops, elapsed_s) = bench_crypto(tokens, true);
    rows.push(BenchRow {
        backend: "1 core".to_owned(),
        path: "ed25519 verify_strict + decode",
        credits: ops,
        elapsed_s,
    });
    for (label, url) in [
        ("memory".to_owned(), "memory".to_owned()),
        (
            "sqlite file".to_owned(),
            format!("sqlite://{}", dir.join("tokens.db").display()),
        ),
    ] {
        let [(issued, issue_s), (credited, drain_s)] = bench_token_path(&url, tokens)
            .await
            .with_context(|| format!("tokens on {label}"))?;
        rows.push(BenchRow {
            backend: label.clone(),
            path: "wallet.issue token mode (sign+record)",
            credits: issued,
            elapsed_s: issue_s,
        });
        rows.push(BenchRow {
            backend: label,
            path: "worker drain, batches of 200",
            credits: credited,
            elapsed_s: drain_s,
        });
    }
    let url = format!("sqlite://{}", dir.join("sync.db").display());
    let (done, elapsed_s) = bench_wallet(&url, tokens).await.context("sync baseline")?;
    rows.push(BenchRow {
        backend: "sqlite file".to_owned(),
        path: "wallet.issue sync (1 txn/order)",
        credits: done,
        elapsed_s,
    });
    Ok(rows)
}

/// The table printed by `redrain bench tokens`: ratios against the sync
/// per-order path on the same SQLite file.
pub fn render_tokens(rows: &[BenchRow]) -> String {
    let baseline = rows
        .iter()
        .find(|r| r.path.starts_with("wallet.issue sync"))
        .map_or(1.0, BenchRow::per_s);
    let mut out = format!(
        "{:<14} {:<40} {:>9} {:>9} {:>12} {:>14}\n",
        "backend", "path", "ops", "seconds", "ops/s", "vs sync sqlite"
    );
    for row in rows {
        out.push_str(&format!(
            "{:<14} {:<40} {:>9} {:>9.3} {:>12.0} {:>13.1}x\n",
            row.backend,
            row.path,
            row.credits,
            row.elapsed_s,
            row.per_s(),
            row.per_s() / baseline
        ));
    }
    out
}
