//! `redrain bench ledger`: crediting throughput per ledger backend, measured side
//! by side in one run so the ratios are trustworthy on a noisy machine. On the
//! embedded backends, two paths: the full sync issue path (validate, budget
//! consume, one credit transaction) and the bare ledger credit (one transaction
//! per order: the seed's per-order baseline). On MariaDB/MySQL and PostgreSQL
//! (`REDRAIN_MYSQL_URL`, `REDRAIN_POSTGRES_URL`; skipped rows say so), the
//! per-order baseline beside batched crediting (full batches), both from a few
//! concurrent tasks, each on a fresh database dropped afterwards; every credit is
//! checked to have landed exactly once, outside the timed part.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use super::{BENCH_START_MS, BENCH_TREE, BenchRow, keep_going, order};
use anyhow::Context as _;
use reference::kv;
use reference::ledger::{AccountKey, Award, Credit, CreditOutcome, EntryKind, Ledger};
use reference::testenv::{self, ScratchDatabase};
use reference::wallet::{IssueOutcome, IssueRequest, Wallet};
use reference::{ActivityTree, ManualClock, ledger};

pub(super) async fn bench_wallet(url: &str, credits: u64) -> anyhow::Result<(u64, f64)> {
    let clock = Arc::new(ManualClock::new(BENCH_START_MS));
    let tree =
        Arc::new(ActivityTree::from_toml_str(BENCH_TREE, "bench tree").context("bench tree")?);
    let wallet = Wallet::new(
        tree,
        ledger::open(url).await?,
        kv::open("memory", clock.clone(), &kv::KvOptions::default()).await?,
        clock,
    );
    let started = Instant::now();
    let mut i = 0;
    while keep_going(i, credits, started.elapsed().as_secs_f64()) {
        let request = IssueRequest {
            app_id: 1,
            activity_id: 1,
            order_no: order(i).to_string(),
            award_id: 1,
            amount_cents: 1 + (i % 500) as i64,
        };
        let outcome = wallet.issue(&request).await?;
        anyhow::ensure!(
            matches!(outcome, IssueOutcome::Issued { .. }),
            "bench credit {i} was not issued: {outcome:?}"
        );
        i += 1;
    }
    Ok((i, started.elapsed().as_secs_f64()))
}

/// The `i`th credit of a ledger benchmark: distinct order numbers over
/// [`BENCH_USERS`] accounts, 1 to 500 cents.
fn bench_credit(i: u64) -> Credit {
    let order_no = order(i);
    Credit {
        account: AccountKey {
            child_id: 1,
            act_id: order_no.act_id,
        },
        order_no,
        award: Award::Cash {
            amount_cents: bench_cents(i),
        },
        at_ms: BENCH_START_MS,
    }
}

fn bench_cents(i: u64) -> u64 {
    1 + i % 500
}

async fn bench_ledger_only(ledger: Arc<dyn Ledger>, credits: u64) -> anyhow::Result<(u64, f64)> {
    let started = Instant::now();
    let mut i = 0;
    while keep_going(i, credits, started.elapsed().as_secs_f64()) {
        ledger.credit_batch(&[bench_credit(i)]).await?;
        i += 1;
    }
    Ok((i, started.elapsed().as_secs_f64()))
}

/// Concurrent tasks of the per-order path on a server: one per pooled
/// connection, so commits can share a log flush (group commit).
const PER_ORDER_TASKS: u64 = 8;
/// Concurrent tasks of the batched path on a server: enough to keep the server
/// busy between one task's statements; more only add lock waits.
const BATCHED_TASKS: u64 = 4;
/// Credits per batch on the batched path: a full batch.
const SERVER_BATCH: u64 = ledger::CREDIT_BATCH_MAX as u64;
/// The per-order path on a server does this fraction of the requested credits:
/// one transaction, one log flush each, so it is slow.
const PER_ORDER_SHARE: u64 = 10;
/// The server rows' paths; `render` pairs them into the batched/per-order ratio.
const PER_ORDER_PATH: &str = "ledger.credit_batch(1) x8 tasks";
const BATCHED_PATH: &str = "ledger.credit_batch(1024) x4 tasks";

/// Credit `0..credits` in batches of `batch_len` from `tasks` tasks at once
/// (task `t` takes batches `t`, `t + tasks`, …); every credit must be new.
/// Returns wall seconds.
async fn credit_concurrently(
    ledger: &Arc<dyn Ledger>,
    credits: u64,
    batch_len: u64,
    tasks: u64,
) -> anyhow::Result<f64> {
    let batches = credits.div_ceil(batch_len);
    let started = Instant::now();
    let mut running = tokio::task::JoinSet::new();
    for task in 0..tasks {
        let ledger = Arc::clone(ledger);
        running.spawn(async move {
            for b in (task..batches).step_by(usize::try_from(tasks)?) {
                let first = b * batch_len;
                let batch: Vec<Credit> = (first..(first + batch_len).min(credits))
                    .map(bench_credit)
                    .collect();
                let outcomes = ledger.credit_batch(&batch).await?;
                let credited = outcomes
                    .iter()
                    .filter(|o| matches!(o, CreditOutcome::Credited { .. }))
                    .count();
                anyhow::ensure!(
                    credited == batch.len(),
                    "batch {b}: {credited} of {} credits were new",
                    batch.len()
                );
            }
            anyhow::Ok(())
        });
    }
    while let Some(joined) = running.join_next().await {
        joined.context("bench task")??;
    }
    Ok(started.elapsed().as_secs_f64())
}

/// Every one of `0..credits` is in the ledger exactly once and the balances add
/// up to their cash, so a figure is real.
async fn check_credited(ledger: &dyn Ledger, credits: u64) -> anyhow::Result<()> {
    let snapshot = ledger.snapshot().await?;
    let orders: HashSet<String> = snapshot
        .entries
        .iter()
        .filter_map(|e| match &e.kind {
            EntryKind::Credit { order_no, .. } => Some(order_no.to_string()),
            EntryKind::Withdrawal { .. } => None,
        })
        .collect();
    let want: HashSet<String> = (0..credits).map(|i| order(i).to_string()).collect();
    anyhow::ensure!(
        snapshot.entries.len() as u64 == credits && orders == want,
        "{} entries for {credits} distinct credits",
        snapshot.entries.len()
    );
    let balance_cents: u64 = snapshot.accounts.iter().map(|a| a.balance_cents).sum();
    let want_cents: u64 = (0..credits).map(bench_cents).sum();
    anyhow::ensure!(
        balance_cents == want_cents,
        "balances add up to {balance_cents} cents, credits to {want_cents}"
    );
    Ok(())
}

/// One measurement on a fresh database of `server`, dropped afterwards (also
/// when the measurement fails).
async fn bench_server(
    server: &str,
    credits: u64,
    batch_len: u64,
    tasks: u64,
) -> anyhow::Result<f64> {
    let db = ScratchDatabase::create(server, "bench")
        .await
        .map_err(anyhow::Error::msg)?;
    let measured = async {
        let ledger = ledger::open(&db.url).await?;
        let elapsed_s = credit_concurrently(&ledger, credits, batch_len, tasks).await?;
        check_credited(ledger.as_ref(), credits).await?;
        anyhow::Ok(elapsed_s)
    }
    .await;
    let dropped = db.drop_now().await.map_err(anyhow::Error::msg);
    let elapsed_s = measured?;
    dropped.context("drop the bench database")?;
    Ok(elapsed_s)
}

/// Measure every backend and path with at least `credits` credits each (more where
/// that takes under a second; a tenth on the servers' per-order path); SQLite
/// files go in `dir`.
pub async fn bench_ledger(credits: u64, dir: &Path) -> anyhow::Result<Vec<BenchRow>> {
    let file_url = |name: &str| format!("sqlite://{}", dir.join(name).display());
    let backends = [
        (
            "memory".to_owned(),
            "memory".to_owned(),
            "memory".to_owned(),
        ),
        (
            "sqlite::memory:".to_owned(),
            "sqlite::memory:".to_owned(),
            "sqlite::memory:".to_owned(),
        ),
        (
            "sqlite file (WAL, synchronous=NORMAL)".to_owned(),
            file_url("wallet.db"),
            file_url("ledger.db"),
        ),
    ];
    let mut rows = Vec::new();
    for (label, wallet_url, ledger_url) in backends {
        let (done, elapsed_s) = bench_wallet(&wallet_url, credits)
            .await
            .with_context(|| format!("wallet on {label}"))?;
        rows.push(BenchRow {
            backend: label.clone(),
            path: "wallet.issue (sync path)",
            credits: done,
            elapsed_s,
        });
        let ledger = ledger::open(&ledger_url).await?;
        let (done, elapsed_s) = bench_ledger_only(ledger, credits)
            .await
            .with_context(|| format!("ledger on {label}"))?;
        rows.push(BenchRow {
            backend: label,
            path: "ledger.credit_batch(1 credit)",
            credits: done,
            elapsed_s,
        });
    }
    let per_order_credits = (credits / PER_ORDER_SHARE).max(PER_ORDER_TASKS);
    for (var, label) in [
        (testenv::MYSQL, "mariadb/mysql"),
        (testenv::POSTGRES, "postgresql"),
    ] {
        let Some(server) = std::env::var(var).ok().filter(|url| !url.is_empty()) else {
            rows.push(BenchRow {
                backend: label.to_owned(),
                path: if var == testenv::MYSQL {
                    "skipped: REDRAIN_MYSQL_URL is not set"
                } else {
                    "skipped: REDRAIN_POSTGRES_URL is not set"
                },
                credits: 0,
                elapsed_s: 0.0,
            });
            continue;
        };
        for (path, count, batch_len, tasks) in [
            (PER_ORDER_PATH, per_order_credits, 1, PER_ORDER_TASKS),
            (BATCHED_PATH, credits, SERVER_BATCH, BATCHED_TASKS),
        ] {
            let elapsed_s = bench_server(&server, count, batch_len, tasks)
                .await
                .with_context(|| format!("{path} on {}", reference::redact_url(&server)))?;
            rows.push(BenchRow {
                backend: label.to_owned(),
                path,
                credits: count,
                elapsed_s,
            });
        }
    }
    Ok(rows)
}

/// The table printed by `redrain bench ledger`, then the batched/per-order ratio
/// of each server backend.
pub fn render(rows: &[BenchRow]) -> String {
    let mut out = format!(
        "{:<40} {:<36} {:>9} {:>9} {:>12} {:>10}\n",
        "backend", "path", "credits", "seconds", "credits/s", "vs memory"
    );
    for row in rows {
        if row.credits == 0 {
            out.push_str(&format!("{:<40} {}\n", row.backend, row.path));
            continue;
        }
        let vs_memory = rows
            .iter()
            .find(|r| r.backend == "memory" && r.path == row.path)
            .map_or("-".to_owned(), |memory| {
                format!("{:.3}x", row.per_s() / memory.per_s())
            });
        out.push_str(&format!(
            "{:<40} {:<36} {:>9} {:>9.3} {:>12.0} {:>10}\n",
            row.backend,
            row.path,
            row.credits,
            row.elapsed_s,
            row.per_s(),
            vs_memory
        ));
    }
    for batched in rows.iter().filter(|r| r.path == BATCHED_PATH) {
        let per_order = rows
            .iter()
            .find(|r| r.backend == batched.backend && r.path == PER_ORDER_PATH);
        if let Some(per_order) = per_order {
            out.push_str(&format!(
                "{}: batched {:.0} credits/s = {:.1}x per-order ({:.0} credits/s)\n",
                batched.backend,
                batched.per_s(),
                batched.per_s() / per_order.per_s(),
                per_order.per_s()
            ));
        }
    }
    out
}
