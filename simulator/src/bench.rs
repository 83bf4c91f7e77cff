//! `redrain bench ledger`: synchronous crediting throughput on the embedded
//! backends, measured side by side in one run so the ratios are trustworthy on a
//! noisy machine. Two paths per backend: the full sync issue path (validate,
//! budget consume, one credit transaction) and the bare ledger credit (one
//! transaction per order: the seed's per-order baseline).
//!
//! `redrain bench tokens`: the token scheme's costs — Ed25519 signing and strict
//! verification on one core, token-mode issuance (validate, budget, sign, record),
//! and async crediting by the worker in batches — beside the sync per-order path
//! on the same SQLite file, in one run.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use reference::ledger::{AccountKey, Award, Credit, Ledger};
use reference::order_no::{AwardType, OrderNo};
use reference::token::{KeyRing, TokenFacts};
use reference::wallet::{IssueOutcome, IssueRequest, Wallet};
use reference::worker::{CreditWorker, WorkerConfig};
use reference::{ActivityTree, ManualClock, kv, ledger};

const BENCH_TREE: &str = r#"
[[activity]]
id = 1
name = "bench"
per_txn_cap_cents = 100000
[[activity.child]]
id = 1
stage = "formal"
start = 2027-01-01T00:00:00Z
end = 2028-01-01T00:00:00Z
budget_cents = 9000000000000
[[activity.scene]]
id = 1
award_type = "cash"
bill_text = "bench"
award_ids = [1]
[[activity.scene]]
id = 2
award_type = "cash"
bill_text = "bench tokens"
crediting = "token"
award_ids = [1]
[[activity.cash]]
award_id = 1
max_cents = 100000
"#;
const BENCH_START_MS: u64 = 1_798_761_600_000; // 2027-01-01T00:00:00Z
/// Users credits are spread over.
const BENCH_USERS: u64 = 10_000;
/// Each measurement runs at least this long (fast backends do more credits), so a
/// figure is never a few milliseconds of noise.
const MEASURE_S_MIN: f64 = 1.0;
/// And at most this many times the requested credits.
const CREDITS_SCALE_MAX: u64 = 1000;

/// Whether a measurement that has done `done` credits in `elapsed_s` should go on.
fn keep_going(done: u64, credits: u64, elapsed_s: f64) -> bool {
    done < credits
        || (elapsed_s < MEASURE_S_MIN && done < credits.saturating_mul(CREDITS_SCALE_MAX))
}

/// One measured line.
#[derive(Debug, Clone)]
pub struct BenchRow {
    /// Ledger URL, shown without temp paths.
    pub backend: String,
    /// What was timed.
    pub path: &'static str,
    /// Credits done.
    pub credits: u64,
    /// Wall seconds.
    pub elapsed_s: f64,
}

impl BenchRow {
    /// Credits per second.
    pub fn per_s(&self) -> f64 {
        self.credits as f64 / self.elapsed_s.max(1e-9)
    }
}

fn order(i: u64) -> OrderNo {
    order_in(1, i)
}

fn order_in(scene_id: u32, i: u64) -> OrderNo {
    OrderNo {
        act_id: i % BENCH_USERS + 1,
        scene_id,
        rain_id: u32::try_from(i / BENCH_USERS).unwrap_or(u32::MAX),
        award_type: AwardType::Cash,
        stage: 0,
    }
}

async fn bench_wallet(url: &str, credits: u64) -> anyhow::Result<(u64, f64)> {
    let clock = Arc::new(ManualClock::new(BENCH_START_MS));
    let tree =
        Arc::new(ActivityTree::from_toml_str(BENCH_TREE, "bench tree").context("bench tree")?);
    let wallet = Wallet::new(
        tree,
        ledger::open(url).await?,
        kv::open("memory", clock.clone())?,
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

async fn bench_ledger_only(ledger: Arc<dyn Ledger>, credits: u64) -> anyhow::Result<(u64, f64)> {
    let started = Instant::now();
    let mut i = 0;
    while keep_going(i, credits, started.elapsed().as_secs_f64()) {
        let order_no = order(i);
        let credit = Credit {
            account: AccountKey {
                child_id: 1,
                act_id: order_no.act_id,
            },
            order_no,
            award: Award::Cash {
                amount_cents: 1 + i % 500,
            },
            at_ms: BENCH_START_MS,
        };
        ledger.credit_batch(&[credit]).await?;
        i += 1;
    }
    Ok((i, started.elapsed().as_secs_f64()))
}

/// Measure every backend and path with at least `credits` credits each (more where
/// that takes under a second); SQLite files go in `dir`.
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
    Ok(rows)
}

/// The table printed by `redrain bench ledger`.
pub fn render(rows: &[BenchRow]) -> String {
    let mut out = format!(
        "{:<40} {:<32} {:>9} {:>9} {:>12} {:>10}\n",
        "backend", "path", "credits", "seconds", "credits/s", "vs memory"
    );
    for row in rows {
        let memory = rows
            .iter()
            .find(|r| r.backend == "memory" && r.path == row.path)
            .map_or(1.0, BenchRow::per_s);
        out.push_str(&format!(
            "{:<40} {:<32} {:>9} {:>9.3} {:>12.0} {:>9.3}x\n",
            row.backend,
            row.path,
            row.credits,
            row.elapsed_s,
            row.per_s(),
            row.per_s() / memory
        ));
    }
    out
}

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
        kv::open("memory", clock.clone())?,
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
