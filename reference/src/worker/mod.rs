//! The credit worker: credits pending tokens through the ledger, driven by
//! `tick(now)` (a tokio task in a server, the engine in virtual time).
//!
//! One tick: (1) the compensation scan re-queues tokens claimed longer ago than
//! the processing timeout and not yet credited; (2) a failed batch is retried
//! once its backoff has passed; otherwise (3) up to `batch_max` tokens, limited by
//! a token bucket of `credit_tps` on the injected clock, are claimed into the
//! inflight set, marked processing (2), credited in one ledger batch (idempotent on
//! order number), and marked success (8). There is no failed state: a batch is
//! retried with bounded backoff until the ledger takes it.
//!
//! Crash safety: claiming moves a token from the pending queue into the inflight
//! set in one KV verb, so a crash at any later point leaves it inflight, where the
//! compensation scan finds it; crediting again is harmless because the ledger is
//! idempotent. [`CrashPoint`] lets tests stop a tick at each of those points.

use std::num::NonZeroUsize;
use std::sync::Arc;

use serde::Serialize;

use crate::clock::Millis;
use crate::config::ActivityTree;
use crate::keys;
use crate::kv::{Kv, LIST_RANGE_MAX, QUEUE_POP_MAX};
use crate::ledger::{CREDIT_BATCH_MAX, CreditOutcome, Ledger};
use crate::order_no::OrderNo;
use crate::token::{KeyRing, STATUS_PROCESSING, STATUS_SUCCESS, TokenFacts, VERIFY_THREADS_MAX};
use crate::wallet::WalletError;
use crate::{ChildId, wallet};

/// Knobs of the worker.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct WorkerConfig {
    /// Tokens per ledger batch (≤ [`CREDIT_BATCH_MAX`]).
    pub batch_max: usize,
    /// Credits per second this worker may do; 0 = unlimited.
    pub credit_tps: u64,
    /// First retry delay after a failed batch.
    pub backoff_min_ms: u64,
    /// Largest retry delay.
    pub backoff_max_ms: u64,
    /// A token claimed longer ago than this and not credited is re-queued.
    pub processing_timeout_ms: u64,
    /// How often the compensation scan runs.
    pub scan_interval_ms: u64,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            batch_max: 200,
            credit_tps: 0,
            backoff_min_ms: 100,
            backoff_max_ms: 10_000,
            processing_timeout_ms: 30_000,
            scan_interval_ms: 1_000,
        }
    }
}

/// Where a test can make a tick stop as if the process died.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum CrashPoint {
    /// After claiming into the inflight set, before marking processing.
    AfterClaim,
    /// After marking processing, before crediting.
    AfterMark,
    /// After crediting, before marking success.
    AfterCredit,
}

impl CrashPoint {
    /// Every crash point, in step order.
    pub const ALL: [CrashPoint; 3] = [
        CrashPoint::AfterClaim,
        CrashPoint::AfterMark,
        CrashPoint::AfterCredit,
    ];

    /// Its name on the wire (`after_claim`, …).
    pub fn name(self) -> &'static str {
        match self {
            CrashPoint::AfterClaim => "after_claim",
            CrashPoint::AfterMark => "after_mark",
            CrashPoint::AfterCredit => "after_credit",
        }
    }

    /// The point of a wire name.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.name() == name)
    }
}

/// What one tick did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TickReport {
    /// Tokens claimed from pending queues.
    pub claimed: u64,
    /// Tokens newly credited.
    pub credited: u64,
    /// Tokens the ledger had already (replays after a crash or a force-credit).
    pub already_credited: u64,
    /// Tokens whose order was credited with another payload (should never happen).
    pub conflicts: u64,
    /// Tokens the compensation scan put back in a pending queue.
    pub requeued: u64,
    /// Failed ledger attempts.
    pub failed_attempts: u64,
    /// The tick stopped at an injected crash point.
    pub crashed: bool,
}

#[derive(Debug)]
struct Retry {
    batch: Vec<(ChildId, TokenFacts, Vec<u8>)>,
    next_at_ms: Millis,
    backoff_ms: u64,
}

/// A credit worker instance. Dropping it (a crash) loses only its retry state.
#[derive(Debug)]
pub struct CreditWorker {
    tree: Arc<ActivityTree>,
    ledger: Arc<dyn Ledger>,
    kv: Arc<dyn Kv>,
    keys: Arc<KeyRing>,
    config: WorkerConfig,
    /// Credits available, in thousandths.
    bucket_milli: u64,
    bucket_at_ms: Option<Millis>,
    next_scan_ms: Millis,
    retry: Option<Retry>,
    crash_at: Option<CrashPoint>,
    crashed_at: Option<CrashPoint>,
    next_child: usize,
    /// Threads a claim's signatures are verified on: the machine's cores, up to
    /// [`VERIFY_THREADS_MAX`]. What a tick does never depends on it.
    verify_threads: usize,
}

impl CreditWorker {
    /// A worker over the wallet's stores; `keys` verifies server-side token copies.
    pub fn new(
        tree: Arc<ActivityTree>,
        ledger: Arc<dyn Ledger>,
        kv: Arc<dyn Kv>,
        keys: Arc<KeyRing>,
        config: WorkerConfig,
    ) -> Self {
        assert!(
            config.batch_max > 0 && config.batch_max <= CREDIT_BATCH_MAX.min(QUEUE_POP_MAX),
            "batch_max out of range"
        );
        assert!(
            config.backoff_min_ms > 0 && config.backoff_min_ms <= config.backoff_max_ms,
            "backoff range"
        );
        Self {
            tree,
            ledger,
            kv,
            keys,
            config,
            bucket_milli: 0,
            bucket_at_ms: None,
            next_scan_ms: 0,
            retry: None,
            crash_at: None,
            crashed_at: None,
            next_child: 0,
            verify_threads: std::thread::available_parallelism()
                .map_or(1, NonZeroUsize::get)
                .min(VERIFY_THREADS_MAX),
        }
    }

    /// A worker sharing `wallet`'s stores and keys.
    pub fn for_wallet(wallet: &wallet::Wallet, config: WorkerConfig) -> Option<Self> {
        let keys = wallet.keys()?.clone();
        Some(Self::new(
            Arc::new(wallet.tree().clone()),
            wallet.ledger().clone(),
            wallet.kv().clone(),
            keys,
            config,
        ))
    }

    /// Make the next tick stop at `point` (once).
    pub fn crash_at(&mut self, point: CrashPoint) {
        self.crash_at = Some(point);
    }

    /// The configuration.
    pub fn config(&self) -> &WorkerConfig {
        &self.config
    }

    /// Whether a failed batch waits for its retry.
    pub fn has_retry(&self) -> bool {
        self.retry.is_some()
    }

    fn crashes_at(&mut self, point: CrashPoint) -> bool {
        if self.crash_at == Some(point) {
            self.crash_at = None;
            self.crashed_at = Some(point);
            return true;
        }
        false
    }

    /// Where the last injected crash happened.
    pub fn crash_point_hit(&self) -> Option<CrashPoint> {
        self.crashed_at
    }

    fn refill(&mut self, now_ms: Millis) {
        if self.config.credit_tps == 0 {
            return;
        }
        let capacity_milli = self.config.credit_tps.saturating_mul(1000);
        // The bucket starts empty: no one-second window ever exceeds `credit_tps`.
        let elapsed = self.bucket_at_ms.map_or(0, |at| now_ms.saturating_sub(at));
        // credit_tps per second = credit_tps milli-credits per millisecond.
        self.bucket_milli = (self.bucket_milli + elapsed.saturating_mul(self.config.credit_tps))
            .min(capacity_milli);
        self.bucket_at_ms = Some(now_ms);
    }

    fn available(&self) -> usize {
        if self.config.credit_tps == 0 {
            return self.config.batch_max;
        }
        usize::try_from(self.bucket_milli / 1000)
            .unwrap_or(usize::MAX)
            .min(self.config.batch_max)
    }

    fn take(&mut self, n: usize) {
        if self.config.credit_tps > 0 {
            self.bucket_milli = self.bucket_milli.saturating_sub(n as u64 * 1000);
        }
    }

    fn child_ids(&self) -> Vec<ChildId> {
        self.tree
            .activities()
            .flat_map(|a| a.children.iter().map(|c| c.id))
            .collect()
    }

    /// Tokens waiting in pending queues and inflight sets, over all children.
    pub async fn backlog(&self) -> Result<u64, WalletError> {
        let mut total = 0;
        for child_id in self.child_ids() {
            total += self.kv.queue_len(&keys::pending(child_id)).await?;
            total += self.kv.inflight_len(&keys::inflight(child_id)).await?;
        }
        Ok(total)
    }

    /// Do one round of work at `now_ms`.
    pub async fn tick(&mut self, now_ms: Millis) -> Result<TickReport, WalletError> {
        let mut report = TickReport::default();
        self.refill(now_ms);
        if now_ms >= self.next_scan_ms {
            self.compensate(now_ms, &mut report).await?;
            self.next_scan_ms = now_ms + self.config.scan_interval_ms;
        }
        if let Some(retry) = self.retry.take() {
            if now_ms < retry.next_at_ms {
                self.retry = Some(retry);
                return Ok(report);
            }
            self.credit(retry.batch, Some(retry.backoff_ms), now_ms, &mut report)
                .await?;
            return Ok(report);
        }
        let mut batch = Vec::new();
        let children = self.child_ids();
        for step in 0..children.len() {
            let want = self.available().saturating_sub(batch.len());
            if want == 0 {
                break;
            }
            let child_id = children[(self.next_child + step) % children.len()];
            let claimed = self
                .kv
                .queue_claim(
                    &keys::pending(child_id),
                    &keys::inflight(child_id),
                    want,
                    now_ms,
                )
                .await?;
            // One batch equation per claim (these are copies the wallet wrote
            // itself; see `token::verify_batch`); a bad token is still named by
            // the same strict check and error as one at a time.
            let facts = self
                .keys
                .verify_batch_on(&claimed, self.verify_threads)
                .map_err(|error| WalletError::CorruptToken {
                    key: keys::pending(child_id),
                    error,
                })?;
            batch.extend(
                facts
                    .into_iter()
                    .zip(claimed)
                    .map(|(facts, bytes)| (child_id, facts, bytes)),
            );
        }
        self.next_child = (self.next_child + 1) % children.len().max(1);
        report.claimed = batch.len() as u64;
        if batch.is_empty() {
            return Ok(report);
        }
        self.take(batch.len());
        if self.crashes_at(CrashPoint::AfterClaim) {
            report.crashed = true;
            return Ok(report);
        }
        self.credit(batch, None, now_ms, &mut report).await?;
        Ok(report)
    }

    async fn credit(
        &mut self,
        batch: Vec<(ChildId, TokenFacts, Vec<u8>)>,
        last_backoff_ms: Option<u64>,
        now_ms: Millis,
        report: &mut TickReport,
    ) -> Result<(), WalletError> {
        let mut todo = Vec::new();
        for (child_id, facts, bytes) in batch {
            let status_key = keys::token_status(child_id, &facts.order_no.to_string());
            match self.kv.status(&status_key).await? {
                // Force-credited on withdraw (or by another worker) meanwhile.
                Some(STATUS_SUCCESS) => {
                    self.kv
                        .inflight_remove(&keys::inflight(child_id), &bytes)
                        .await?;
                    report.already_credited += 1;
                }
                _ => {
                    self.kv
                        .put_status(&status_key, STATUS_PROCESSING, None)
                        .await?;
                    todo.push((child_id, facts, bytes));
                }
            }
        }
        if self.crashes_at(CrashPoint::AfterMark) {
            report.crashed = true;
            return Ok(());
        }
        if todo.is_empty() {
            return Ok(());
        }
        let credits: Vec<_> = todo
            .iter()
            .map(|(_, facts, _)| wallet::token_mode::credit_of(facts))
            .collect();
        match self.ledger.credit_batch(&credits).await {
            Ok(outcomes) => {
                if self.crashes_at(CrashPoint::AfterCredit) {
                    report.crashed = true;
                    return Ok(());
                }
                for ((child_id, facts, bytes), outcome) in todo.iter().zip(outcomes) {
                    match outcome {
                        CreditOutcome::Credited { .. } => report.credited += 1,
                        CreditOutcome::Duplicate { .. } => report.already_credited += 1,
                        CreditOutcome::Conflict { .. } => report.conflicts += 1,
                    }
                    wallet::token_mode::mark_credited(
                        self.kv.as_ref(),
                        *child_id,
                        &facts.order_no,
                        bytes,
                    )
                    .await;
                }
            }
            Err(_) => {
                report.failed_attempts += 1;
                let backoff_ms = last_backoff_ms
                    .map_or(self.config.backoff_min_ms, |b| b.saturating_mul(2))
                    .min(self.config.backoff_max_ms);
                self.retry = Some(Retry {
                    batch: todo,
                    next_at_ms: now_ms + backoff_ms,
                    backoff_ms,
                });
            }
        }
        Ok(())
    }

    /// Re-queue tokens claimed before `now - processing_timeout` and not credited.
    async fn compensate(
        &mut self,
        now_ms: Millis,
        report: &mut TickReport,
    ) -> Result<(), WalletError> {
        let due_ms = now_ms.saturating_sub(self.config.processing_timeout_ms);
        let retrying: Vec<Vec<u8>> = self
            .retry
            .iter()
            .flat_map(|r| r.batch.iter().map(|(_, _, b)| b.clone()))
            .collect();
        for child_id in self.child_ids() {
            let inflight = keys::inflight(child_id);
            for bytes in self
                .kv
                .inflight_due(&inflight, due_ms, LIST_RANGE_MAX)
                .await?
            {
                if retrying.contains(&bytes) {
                    continue; // this worker still owns it
                }
                let facts =
                    self.keys
                        .verify(&bytes)
                        .map_err(|error| WalletError::CorruptToken {
                            key: inflight.clone(),
                            error,
                        })?;
                let order_no: &OrderNo = &facts.order_no;
                if self
                    .kv
                    .status(&keys::token_status(child_id, &order_no.to_string()))
                    .await?
                    != Some(STATUS_SUCCESS)
                {
                    // Queue first, then drop from inflight: a crash in between
                    // leaves a duplicate queue entry, which crediting tolerates.
                    self.kv
                        .queue_push(&keys::pending(child_id), &bytes, None)
                        .await?;
                    report.requeued += 1;
                }
                self.kv.inflight_remove(&inflight, &bytes).await?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
