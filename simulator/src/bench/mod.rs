//! `redrain bench ledger`: crediting throughput per ledger backend, measured side
//! by side in one run so the ratios are trustworthy on a noisy machine. On the
//! embedded backends, two paths: the full sync issue path (validate, budget
//! consume, one credit transaction) and the bare ledger credit (one transaction
//! per order: the seed's per-order baseline). On MariaDB/MySQL and PostgreSQL
//! (`REDRAIN_MYSQL_URL`, `REDRAIN_POSTGRES_URL`; skipped rows say so), the
//! per-order baseline beside batched crediting (full batches), both from a few
//! concurrent tasks, each on a fresh database dropped afterwards; every credit is
//! checked to have landed exactly once, outside the timed part.
//!
//! `redrain bench tokens`: the token scheme's costs — Ed25519 signing and strict
//! verification on one core, token-mode issuance (validate, budget, sign, record),
//! and async crediting by the worker in batches — beside the sync per-order path
//! on the same SQLite file, in one run.
//!
//! `redrain bench coupons`: coupon issues per second on the memory backend through
//! the per-request sync path and through the coupon pipeline (merged stock
//! consume, and without merging), in one run.
//!
//! `redrain bench counter`: the hot counter's KV cost, plan 1 (split keys) beside
//! plan 2 (local aggregation), for the same virtual traffic.

pub mod http;
pub mod kv;
pub mod sim;

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use reference::counter::{LocalCounter, LocalCounterConfig, SplitCounter};
use reference::kv as store_kv;
use reference::kv::MemoryKv;
use reference::ledger::{AccountKey, Award, Credit, CreditOutcome, EntryKind, Ledger};
use reference::order_no::{AwardType, OrderNo};
use reference::pipeline::{CouponPipeline, LatencyFigures, PipelineConfig};
use reference::switches::Switches;
use reference::testenv::{self, ScratchDatabase};
use reference::token::{KeyRing, TokenFacts};
use reference::wallet::{IssueOutcome, IssueRequest, Wallet};
use reference::worker::{CreditWorker, WorkerConfig};
use reference::{ActivityTree, Clock, ManualClock, keys, ledger};

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
        store_kv::open("memory", clock.clone(), &store_kv::KvOptions::default()).await?,
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
        store_kv::open("memory", clock.clone(), &store_kv::KvOptions::default()).await?,
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

/// Users coupon orders are spread over.
const COUPON_USERS: u64 = 10_000;
/// The scene, award and template of the sync path, then of the pipeline.
const SYNC_COUPON: (u32, u64, u64) = (1, 11, 101);
const PIPELINE_COUPON: (u32, u64, u64) = (2, 12, 102);
/// Virtual time between pipeline ticks.
const PIPELINE_TICK_MS: u64 = 10;
/// Consumer rates far above what the bench reaches, so no limiter bounds it.
const PIPELINE_RATE_PER_S: u32 = 10_000_000;

/// The coupon bench's tree: a sync and a pipeline coupon scene, each with its own
/// batch and template; stock is exactly `orders` and the per-user limit exactly
/// what the spread of `orders` over the users needs, so a lost or extra issue
/// shows up as a rejection.
fn coupon_tree(orders: u64) -> anyhow::Result<ActivityTree> {
    let per_user = orders.div_ceil(COUPON_USERS);
    let per_user = u32::try_from(per_user).context("too many orders per user")?;
    let (sync_scene, sync_award, sync_template) = SYNC_COUPON;
    let (pipe_scene, pipe_award, pipe_template) = PIPELINE_COUPON;
    let text = format!(
        r#"
[[activity]]
id = 1
name = "bench coupons"
per_txn_cap_cents = 100000
[[activity.child]]
id = 1
stage = "formal"
start = 2027-01-01T00:00:00Z
end = 2028-01-01T00:00:00Z
budget_cents = 1
[[activity.scene]]
id = {sync_scene}
award_type = "coupon"
bill_text = "bench coupons sync"
stock_control = true
award_ids = [{sync_award}]
[[activity.scene]]
id = {pipe_scene}
award_type = "coupon"
bill_text = "bench coupons pipeline"
stock_control = true
crediting = "pipeline"
award_ids = [{pipe_award}]
[[activity.batch]]
id = "sync"
per_user_limit = {per_user}
[[activity.batch]]
id = "pipe"
per_user_limit = {per_user}
[[activity.coupon]]
award_id = {sync_award}
template_id = {sync_template}
batch = "sync"
stock = {orders}
[[activity.coupon]]
award_id = {pipe_award}
template_id = {pipe_template}
batch = "pipe"
stock = {orders}
"#
    );
    ActivityTree::from_toml_str(&text, "bench coupon tree").context("bench coupon tree")
}

/// Coupon order `i` of `scene_id`: user `1 + i % users`, one rain per pass.
fn coupon_request(scene_id: u32, award_id: u64, i: u64) -> IssueRequest {
    let order_no = OrderNo {
        act_id: i % COUPON_USERS + 1,
        scene_id,
        rain_id: u32::try_from(i / COUPON_USERS + 1).unwrap_or(u32::MAX),
        award_type: AwardType::Coupon,
        stage: 0,
    };
    IssueRequest {
        app_id: 1,
        activity_id: 1,
        order_no: order_no.to_string(),
        award_id,
        amount_cents: 0,
    }
}

/// One measured coupon path.
#[derive(Debug, Clone)]
pub struct CouponRow {
    /// What was timed.
    pub path: &'static str,
    /// Orders sent.
    pub orders: u64,
    /// Orders issued (checked equal to `orders`, in the ledger and the stock counter).
    pub issued: u64,
    /// Wall seconds from the first accept to the last issue.
    pub elapsed_s: f64,
    /// KV stock-consume calls.
    pub consume_calls: u64,
    /// Accept → issued, virtual time (pipeline only).
    pub latency: Option<LatencyFigures>,
}

impl CouponRow {
    /// Issues per second.
    pub fn per_s(&self) -> f64 {
        self.issued as f64 / self.elapsed_s.max(1e-9)
    }
}

/// A fresh memory wallet over the coupon tree.
fn coupon_wallet(tree: &Arc<ActivityTree>) -> anyhow::Result<(Wallet, Arc<ManualClock>)> {
    let clock = Arc::new(ManualClock::new(BENCH_START_MS));
    let wallet = Wallet::new(
        tree.clone(),
        Arc::new(ledger::MemoryLedger::new()),
        Arc::new(store_kv::MemoryKv::new(clock.clone())),
        clock.clone(),
    );
    Ok((wallet, clock))
}

/// Check outside the timed part that `orders` coupons of `template_id` are in
/// the ledger and consumed from the stock counter: the figure is real.
async fn check_coupons(wallet: &Wallet, template_id: u64, orders: u64) -> anyhow::Result<()> {
    let snapshot = wallet.ledger().snapshot().await?;
    let credited = snapshot
        .entries
        .iter()
        .filter(|e| {
            matches!(&e.kind, EntryKind::Credit { award: Award::Coupon { template_id: t, .. }, .. } if *t == template_id)
        })
        .count() as u64;
    anyhow::ensure!(
        credited == orders,
        "template {template_id}: {credited} coupons in the ledger, {orders} orders"
    );
    let consumed = wallet.kv().counter(&keys::stock(1, template_id)).await?;
    anyhow::ensure!(
        u64::try_from(consumed) == Ok(orders),
        "template {template_id}: stock counter at {consumed}, {orders} orders"
    );
    Ok(())
}

async fn bench_coupon_sync(tree: &Arc<ActivityTree>, orders: u64) -> anyhow::Result<CouponRow> {
    let (wallet, _clock) = coupon_wallet(tree)?;
    let (scene_id, award_id, template_id) = SYNC_COUPON;
    let started = Instant::now();
    let mut issued = 0;
    for i in 0..orders {
        let outcome = wallet.issue(&coupon_request(scene_id, award_id, i)).await?;
        anyhow::ensure!(
            matches!(outcome, IssueOutcome::Issued { .. }),
            "sync coupon {i} was not issued: {outcome:?}"
        );
        issued += 1;
    }
    let elapsed_s = started.elapsed().as_secs_f64();
    anyhow::ensure!(issued == orders, "sync path issued {issued} of {orders}");
    check_coupons(&wallet, template_id, orders).await?;
    Ok(CouponRow {
        path: "wallet.issue sync (per request)",
        orders,
        issued,
        elapsed_s,
        // The sync path consumes stock once per issue (`Wallet::reserve`).
        consume_calls: issued,
        latency: None,
    })
}

async fn bench_coupon_pipeline(
    tree: &Arc<ActivityTree>,
    orders: u64,
    merge_max: usize,
    path: &'static str,
) -> anyhow::Result<CouponRow> {
    let (wallet, clock) = coupon_wallet(tree)?;
    let (scene_id, award_id, template_id) = PIPELINE_COUPON;
    let queue_max = usize::try_from(orders)
        .unwrap_or(usize::MAX)
        .max(PipelineConfig::default().activity_queue_max);
    let config = PipelineConfig {
        activity_queue_max: queue_max,
        asset_queue_max: queue_max,
        activity_rate_per_s: PIPELINE_RATE_PER_S,
        asset_rate_per_s: PIPELINE_RATE_PER_S,
        merge_max,
        ..PipelineConfig::default()
    };
    let pipeline = CouponPipeline::new(wallet.clone(), config);
    let started = Instant::now();
    for i in 0..orders {
        let outcome = pipeline
            .issue(&coupon_request(scene_id, award_id, i), false)
            .await?;
        anyhow::ensure!(
            matches!(outcome, IssueOutcome::Queued { .. }),
            "pipeline coupon {i} was not queued: {outcome:?}"
        );
    }
    // Every tick takes at least one order while any is left, so this bounds it.
    let ticks_max = orders + 10;
    let mut ticks = 0;
    let figures = loop {
        clock.advance(PIPELINE_TICK_MS);
        pipeline.tick(clock.now_ms()).await?;
        ticks += 1;
        let figures = pipeline.figures();
        anyhow::ensure!(
            figures.failed.is_empty(),
            "pipeline orders failed: {:?}",
            figures.failed
        );
        if figures.issued >= orders {
            break figures;
        }
        anyhow::ensure!(
            ticks < ticks_max,
            "pipeline stalled at {} of {orders} after {ticks} ticks",
            figures.issued
        );
    };
    let elapsed_s = started.elapsed().as_secs_f64();
    anyhow::ensure!(
        figures.issued == orders,
        "pipeline issued {} of {orders}",
        figures.issued
    );
    check_coupons(&wallet, template_id, orders).await?;
    Ok(CouponRow {
        path,
        orders,
        issued: figures.issued,
        elapsed_s,
        consume_calls: figures.consume_calls,
        latency: Some(figures.latency),
    })
}

/// Issue `orders` coupons through the sync path, the pipeline with merging (100
/// orders a take) and the pipeline without merging; each on a fresh memory wallet.
pub async fn bench_coupons(orders: u64) -> anyhow::Result<Vec<CouponRow>> {
    anyhow::ensure!(orders > 0, "orders must be greater than 0");
    let tree = Arc::new(coupon_tree(orders)?);
    Ok(vec![
        bench_coupon_sync(&tree, orders).await?,
        bench_coupon_pipeline(&tree, orders, 100, "pipeline, merge_max 100").await?,
        bench_coupon_pipeline(&tree, orders, 1, "pipeline, merge_max 1 (no merging)").await?,
    ])
}

/// The table printed by `redrain bench coupons`: ratios against the sync path.
pub fn render_coupons(rows: &[CouponRow]) -> String {
    let baseline = rows
        .iter()
        .find(|r| r.latency.is_none())
        .map_or(1.0, CouponRow::per_s);
    let mut out = format!(
        "{:<36} {:>9} {:>9} {:>9} {:>12} {:>14} {:>8}\n",
        "path (memory backend)",
        "orders",
        "issued",
        "seconds",
        "issues/s",
        "stock consumes",
        "vs sync"
    );
    for row in rows {
        out.push_str(&format!(
            "{:<36} {:>9} {:>9} {:>9.3} {:>12.0} {:>14} {:>7.2}x\n",
            row.path,
            row.orders,
            row.issued,
            row.elapsed_s,
            row.per_s(),
            row.consume_calls,
            row.per_s() / baseline
        ));
    }
    out.push_str(&format!(
        "pipeline seconds: first accept to last issued (all accepted, then ticked every {PIPELINE_TICK_MS} virtual ms).\n"
    ));
    out.push_str(
        "sync stock consumes: one per issue by construction; pipeline: figures().consume_calls.\n",
    );
    out.push_str(&format!(
        "accept->issued latency, VIRTUAL time (the tick interval, not CPU cost; limiters at {PIPELINE_RATE_PER_S}/s):\n"
    ));
    for row in rows {
        if let Some(latency) = row.latency {
            out.push_str(&format!(
                "  {:<34} p50 {:>7.1} ms  p99 {:>7.1} ms  ({} orders)\n",
                row.path,
                latency.p50_us as f64 / 1000.0,
                latency.p99_us as f64 / 1000.0,
                latency.count
            ));
        }
    }
    out
}

/// Counter writes per virtual second (the seed's 300k writes/s).
const COUNTER_WRITES_PER_S: u64 = 300_000;
/// Counter reads per write (the seed's 1.8M reads/s against 300k writes/s).
const COUNTER_READS_PER_WRITE: u64 = 6;
/// Instances the writes are spread over.
const COUNTER_WRITERS: usize = 8;
/// Instances the reads are spread over.
const COUNTER_READERS: usize = 20;
/// Plan 1's split keys (the seed's 100).
const COUNTER_SPLIT_KEYS: u32 = 100;
/// Plan 1 executes every this-many-th read and scales the read ops it counted.
const COUNTER_READ_SAMPLE: u64 = 1_000;
/// Plan 2's flush and refresh interval.
const COUNTER_INTERVAL_MS: u64 = 1_000;
/// Users the writes come from (plan 1 picks the split key by act_id).
const COUNTER_USERS: u64 = 10_000;

/// One plan's KV cost for the same virtual traffic.
#[derive(Debug, Clone)]
pub struct CounterRow {
    /// Which plan.
    pub plan: &'static str,
    /// Counter writes (each +1).
    pub writes: u64,
    /// Counter reads served.
    pub reads: u64,
    /// KV write calls (`INCRBY`).
    pub kv_writes: u64,
    /// KV read calls (`GET`); plan 1: scaled up from the sampled reads.
    pub kv_reads: u64,
    /// Reads actually executed (plan 1 samples; plan 2 runs all).
    pub reads_executed: u64,
    /// Largest shortfall of a read against the writes made so far, over the
    /// executed reads.
    pub max_lag: u64,
    /// The value shown at the end (plan 2: after a final tick).
    pub shown_end: i64,
    /// Wall seconds the simulation of this plan took.
    pub wall_s: f64,
}

impl CounterRow {
    /// Every KV call.
    pub fn kv_ops(&self) -> u64 {
        self.kv_writes + self.kv_reads
    }
}

/// Both plans over the same virtual traffic.
#[derive(Debug, Clone)]
pub struct CounterBench {
    /// Counter writes.
    pub writes: u64,
    /// Virtual seconds the traffic spans (writes / 300k).
    pub virtual_s: f64,
    /// Plan 1, then plan 2.
    pub rows: Vec<CounterRow>,
}

/// The virtual millisecond in which the `j`-th of a stream at `per_s` arrives.
fn arrival_ms(j: u64, per_s: u64) -> u64 {
    j.saturating_mul(1_000) / per_s
}

/// Events `[first, end)` of a stream at `per_s` that arrive in millisecond `ms`,
/// clipped to `total`.
fn arrivals_in(ms: u64, per_s: u64, total: u64) -> std::ops::Range<u64> {
    let first = (ms.saturating_mul(per_s)).div_ceil(1_000).min(total);
    let end = ((ms + 1).saturating_mul(per_s)).div_ceil(1_000).min(total);
    first..end
}

fn counter_kv() -> (Arc<ManualClock>, Arc<MemoryKv>) {
    let clock = Arc::new(ManualClock::new(BENCH_START_MS));
    let kv = Arc::new(MemoryKv::new(clock.clone()));
    (clock, kv)
}

/// Plan 1: each write one `INCRBY` on its split key; every
/// [`COUNTER_READ_SAMPLE`]-th read executed as a fan-out over all keys.
async fn bench_counter_plan1(writes: u64, duration_ms: u64) -> anyhow::Result<CounterRow> {
    let (clock, kv) = counter_kv();
    let counter = SplitCounter::new(kv.clone(), "bench", COUNTER_SPLIT_KEYS);
    let reads = writes * COUNTER_READS_PER_WRITE;
    let reads_per_s = COUNTER_WRITES_PER_S * COUNTER_READS_PER_WRITE;
    let started = Instant::now();
    let mut written = 0u64;
    let mut reads_executed = 0u64;
    let mut max_lag = 0u64;
    for ms in 0..duration_ms {
        clock.set(BENCH_START_MS + ms);
        for j in arrivals_in(ms, COUNTER_WRITES_PER_S, writes) {
            counter.add(j % COUNTER_USERS + 1, 1).await?;
            written += 1;
        }
        for k in arrivals_in(ms, reads_per_s, reads) {
            if k % COUNTER_READ_SAMPLE == 0 {
                let read = counter.read().await;
                anyhow::ensure!(read.missing_keys == 0, "plan 1 read lost keys: {read:?}");
                let lag = i64::try_from(written).unwrap_or(i64::MAX) - read.value;
                max_lag = max_lag.max(u64::try_from(lag).unwrap_or(0));
                reads_executed += 1;
            }
        }
    }
    let wall_s = started.elapsed().as_secs_f64();
    anyhow::ensure!(written == writes, "plan 1 wrote {written} of {writes}");
    let figures = counter.figures();
    // The final value, read by a separate (uncounted) reader.
    let shown_end = SplitCounter::new(kv, "bench", COUNTER_SPLIT_KEYS)
        .read()
        .await
        .value;
    // Every read fans out the same way, so scaling the sampled reads is exact.
    let kv_reads = u64::try_from(
        u128::from(figures.kv_reads) * u128::from(reads) / u128::from(reads_executed.max(1)),
    )
    .unwrap_or(u64::MAX);
    Ok(CounterRow {
        plan: "plan 1: 100 split keys",
        writes,
        reads,
        kv_writes: figures.kv_writes,
        kv_reads,
        reads_executed,
        max_lag,
        shown_end,
        wall_s,
    })
}

/// Plan 2: writes added locally on their writer instance, reads served from
/// their reader instance's cache, every instance ticking once per virtual second.
async fn bench_counter_plan2(writes: u64, duration_ms: u64) -> anyhow::Result<CounterRow> {
    let (clock, kv) = counter_kv();
    let switches = Arc::new(Switches::default());
    let config = LocalCounterConfig {
        name: "bench".to_owned(),
        interval_ms: COUNTER_INTERVAL_MS,
    };
    let instance = || LocalCounter::new(&config, kv.clone(), None, switches.clone());
    let writers: Vec<LocalCounter> = (0..COUNTER_WRITERS).map(|_| instance()).collect();
    let readers: Vec<LocalCounter> = (0..COUNTER_READERS).map(|_| instance()).collect();
    let reads = writes * COUNTER_READS_PER_WRITE;
    let reads_per_s = COUNTER_WRITES_PER_S * COUNTER_READS_PER_WRITE;
    let tick_all = |now_ms: u64| {
        let writers = &writers;
        let readers = &readers;
        async move {
            // Writers first, so a reader's refresh sees this second's flushes.
            for counter in writers.iter().chain(readers) {
                anyhow::ensure!(
                    counter.tick(now_ms).await.ran,
                    "a tick at {now_ms} was not due"
                );
            }
            Ok(())
        }
    };
    let started = Instant::now();
    let mut written = 0u64;
    let mut reads_executed = 0u64;
    let mut max_lag = 0u64;
    for ms in 0..duration_ms {
        let now_ms = BENCH_START_MS + ms;
        clock.set(now_ms);
        if ms % COUNTER_INTERVAL_MS == 0 {
            tick_all(now_ms).await?;
        }
        for j in arrivals_in(ms, COUNTER_WRITES_PER_S, writes) {
            writers[(j % COUNTER_WRITERS as u64) as usize].add(1);
            written += 1;
        }
        for k in arrivals_in(ms, reads_per_s, reads) {
            let shown = readers[(k % COUNTER_READERS as u64) as usize]
                .try_read()
                .context("a reader has no value after its first tick")?;
            let lag = i64::try_from(written).unwrap_or(i64::MAX) - shown;
            max_lag = max_lag.max(u64::try_from(lag).unwrap_or(0));
            reads_executed += 1;
        }
    }
    // The final tick: the next interval boundary after the last one in the run.
    let final_ms = (duration_ms.saturating_sub(1) / COUNTER_INTERVAL_MS + 1) * COUNTER_INTERVAL_MS;
    clock.set(BENCH_START_MS + final_ms);
    tick_all(BENCH_START_MS + final_ms).await?;
    let wall_s = started.elapsed().as_secs_f64();
    anyhow::ensure!(written == writes, "plan 2 wrote {written} of {writes}");
    anyhow::ensure!(
        reads_executed == reads,
        "plan 2 read {reads_executed} of {reads}"
    );
    let (mut kv_writes, mut kv_reads) = (0, 0);
    for counter in writers.iter().chain(&readers) {
        let figures = counter.figures();
        kv_writes += figures.kv_writes;
        kv_reads += figures.kv_reads;
    }
    let shown_end = readers[0]
        .try_read()
        .context("reader 0 has no value at the end")?;
    Ok(CounterRow {
        plan: "plan 2: local aggregation, 1 s",
        writes,
        reads,
        kv_writes,
        kv_reads,
        reads_executed,
        max_lag,
        shown_end,
        wall_s,
    })
}

/// Run both plans over `writes` counter writes arriving at 300k/s, with 6 reads
/// per write, over `COUNTER_WRITERS` writer and `COUNTER_READERS` reader instances.
pub async fn bench_counter(writes: u64) -> anyhow::Result<CounterBench> {
    anyhow::ensure!(writes > 0, "writes must be greater than 0");
    // Covers every arrival: the last write's and the last read's millisecond.
    let duration_ms = arrival_ms(writes - 1, COUNTER_WRITES_PER_S).max(arrival_ms(
        writes * COUNTER_READS_PER_WRITE - 1,
        COUNTER_WRITES_PER_S * COUNTER_READS_PER_WRITE,
    )) + 1;
    let rows = vec![
        bench_counter_plan1(writes, duration_ms).await?,
        bench_counter_plan2(writes, duration_ms).await?,
    ];
    Ok(CounterBench {
        writes,
        virtual_s: writes as f64 / COUNTER_WRITES_PER_S as f64,
        rows,
    })
}

/// The table printed by `redrain bench counter`.
pub fn render_counter(bench: &CounterBench) -> String {
    let plan2_ops = bench
        .rows
        .iter()
        .find(|r| r.plan.starts_with("plan 2"))
        .map_or(1, CounterRow::kv_ops)
        .max(1);
    let mut out = format!(
        "{} writes at {}/s, {} reads per write ({}/s), over {:.3} virtual s; {} writer and {} reader instances\n",
        bench.writes,
        COUNTER_WRITES_PER_S,
        COUNTER_READS_PER_WRITE,
        COUNTER_WRITES_PER_S * COUNTER_READS_PER_WRITE,
        bench.virtual_s,
        COUNTER_WRITERS,
        COUNTER_READERS
    );
    out.push_str(&format!(
        "{:<32} {:>12} {:>14} {:>14} {:>14} {:>10} {:>10} {:>10} {:>8}\n",
        "plan",
        "KV writes",
        "KV reads",
        "KV ops",
        "KV ops/vsec",
        "vs plan 2",
        "max lag",
        "end error",
        "wall s"
    ));
    for row in &bench.rows {
        let error = row.shown_end - i64::try_from(row.writes).unwrap_or(i64::MAX);
        out.push_str(&format!(
            "{:<32} {:>12} {:>14} {:>14} {:>14.0} {:>9.0}x {:>10} {:>10} {:>8.3}\n",
            row.plan,
            row.kv_writes,
            row.kv_reads,
            row.kv_ops(),
            row.kv_ops() as f64 / bench.virtual_s.max(1e-9),
            row.kv_ops() as f64 / plan2_ops as f64,
            row.max_lag,
            error,
            row.wall_s
        ));
    }
    out.push_str(&format!(
        "KV ops/vsec = KV ops per virtual second. Plan 1 reads: every {COUNTER_READ_SAMPLE}th read executed ({} of {}), each a {COUNTER_SPLIT_KEYS}-key fan-out; KV reads scaled to all reads.\n",
        bench.rows.first().map_or(0, |r| r.reads_executed),
        bench.rows.first().map_or(0, |r| r.reads),
    ));
    out.push_str(&format!(
        "Plan 2: every instance ticks once per virtual second (flush INCRBY if it has writes, then one GET), plus a final tick at the next boundary; all {} reads served locally.\n",
        bench.rows.get(1).map_or(0, |r| r.reads_executed),
    ));
    out.push_str("max lag = largest (writes so far - value read) over the executed reads; end error = value shown at the end - writes.\n");
    out
}
