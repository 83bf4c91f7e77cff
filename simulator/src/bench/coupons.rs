//! `redrain bench coupons`: coupon issues per second on the memory backend through
//! the per-request sync path and through the coupon pipeline (merged stock
//! consume, and without merging), in one run.

use std::sync::Arc;
use std::time::Instant;

use super::BENCH_START_MS;
use anyhow::Context as _;
use reference::kv;
use reference::ledger::{Award, EntryKind};
use reference::order_no::{AwardType, OrderNo};
use reference::pipeline::{CouponPipeline, LatencyFigures, PipelineConfig};
use reference::wallet::{IssueOutcome, IssueRequest, Wallet};
use reference::{ActivityTree, Clock, ManualClock, keys, ledger};

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
        Arc::new(kv::MemoryKv::new(clock.clone())),
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
