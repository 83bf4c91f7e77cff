//! `redrain bench kv`: coupon stock consumes on a real Redis, one call per
//! request (seed 003's baseline) beside the merged consume (one `consume_up_to`
//! of N for N requests), in one run on the same server. Each path runs in a
//! namespace of its own, checks outside the timed part that exactly the granted
//! units were consumed, and deletes its keys at the end.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use reference::keys;
use reference::kv::{Consume, Kv, KvOptions, RedisKv};

/// Tasks calling Redis at once (a wallet instance's concurrent requests).
pub const CONCURRENCY: usize = 16;
/// Requests merged into one consume (the pipeline's `merge_max`).
pub const MERGE: u64 = 100;

/// One measured path.
#[derive(Debug, Clone)]
pub struct KvRow {
    /// What was measured.
    pub path: String,
    /// Coupon requests served.
    pub requests: u64,
    /// Redis calls made.
    pub calls: u64,
    /// Wall seconds.
    pub elapsed_s: f64,
}

impl KvRow {
    /// Requests served per wall second.
    pub fn per_s(&self) -> f64 {
        self.requests as f64 / self.elapsed_s.max(1e-9)
    }
}

/// Run both paths with `requests` coupon requests on the Redis `url` names.
pub async fn bench_kv(url: &str, requests: u64) -> anyhow::Result<Vec<KvRow>> {
    anyhow::ensure!(requests > 0, "--requests must be greater than 0");
    let per_request = run_path(url, "per-request", requests, 1).await?;
    let merged = run_path(url, "merged", requests, MERGE).await?;
    Ok(vec![per_request, merged])
}

async fn run_path(url: &str, path: &str, requests: u64, merge: u64) -> anyhow::Result<KvRow> {
    let options = KvOptions {
        prefix: crate::stores::unique_namespace(&format!("bench-{path}")),
        ..KvOptions::default()
    };
    let redis = RedisKv::connect(url, &options)
        .await
        .with_context(|| format!("connecting to {}", reference::redact_url(url)))?;
    let kv: Arc<dyn Kv> = Arc::new(redis.clone());
    let key = keys::stock(1, 701);
    // Stock for every request: the figure is the cost of a consume, not of refusals.
    let limit = requests;
    let calls_total = requests.div_ceil(merge);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for task in 0..CONCURRENCY as u64 {
        let kv = kv.clone();
        let key = key.clone();
        tasks.push(tokio::spawn(async move {
            let mut granted = 0u64;
            let mut call = task;
            while call < calls_total {
                let n = merge.min(requests - call * merge);
                if merge == 1 {
                    match kv.consume_within(&key, n, limit).await? {
                        Consume::Consumed { .. } => granted += n,
                        Consume::Exceeded { .. } => {}
                    }
                } else {
                    granted += kv.consume_up_to(&key, n, limit).await?;
                }
                call += CONCURRENCY as u64;
            }
            Ok::<u64, reference::kv::KvError>(granted)
        }));
    }
    let mut granted = 0;
    for task in tasks {
        granted += task.await.context("a bench task panicked")??;
    }
    let elapsed_s = started.elapsed().as_secs_f64();
    let consumed = kv.counter(&key).await?;
    redis.delete_namespace().await?;
    anyhow::ensure!(
        granted == requests && consumed == requests as i64,
        "{path}: granted {granted} and the counter says {consumed}, expected {requests}"
    );
    Ok(KvRow {
        path: if merge == 1 {
            "consume per request".to_owned()
        } else {
            format!("merged consume ({merge} per call)")
        },
        requests,
        calls: calls_total,
        elapsed_s,
    })
}

/// The table `redrain bench kv` prints.
pub fn render_kv(url: &str, rows: &[KvRow]) -> String {
    let baseline = rows.first().map_or(1.0, KvRow::per_s);
    let mut out = format!(
        "coupon stock consumes on {} ({CONCURRENCY} concurrent tasks)\n",
        reference::redact_url(url)
    );
    out.push_str(&format!(
        "{:<30} {:>10} {:>10} {:>9} {:>13} {:>9}\n",
        "path", "requests", "calls", "seconds", "requests/s", "vs first"
    ));
    for row in rows {
        out.push_str(&format!(
            "{:<30} {:>10} {:>10} {:>9.3} {:>13.0} {:>8.2}x\n",
            row.path,
            row.requests,
            row.calls,
            row.elapsed_s,
            row.per_s(),
            row.per_s() / baseline
        ));
    }
    out.push_str(
        "every unit granted was checked against the stock counter after the timed part.\n",
    );
    out
}
