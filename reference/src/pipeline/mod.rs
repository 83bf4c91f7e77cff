//! The coupon pipeline of seed 003 (Douyin Pay, 100k TPS, 99% of coupons in the
//! account within 0.5 s), beside the per-request sync path.
//!
//! 1. **Accept**: validate, record the order once under its order number (the
//!    unique serial number: a replay gets the first answer, another payload a
//!    conflict), push it on the local activity queue, answer "queued".
//! 2. **Activity layer**: a consumer gated by its own rate limiter takes orders
//!    and makes the per-user reservations (batch-group exclusion, per-user
//!    per-batch limit), then passes them to the asset queue.
//! 3. **Asset layer**: a consumer gated by its own limiter takes up to `merge_max`
//!    orders, groups them by coupon template and consumes stock once per group
//!    (N orders → one merged consume of N). Partial stock grants the first k by
//!    (accept time, order key); the rest fail `out_of_stock`. A local stock cache,
//!    refreshed on `tick`, turns orders away early once a template is sold out;
//!    the KV consume stays the source of truth. Granted orders are credited in one
//!    ledger batch.
//!
//! Every step moves the order's record forward with a compare-and-set:
//! `accepted → user_reserved → stock_reserved → issued | failed`. Whoever wins
//! the move owns the reservations made for it, so an order processed twice (a
//! green request racing the queue, a compensation re-queue, a handed-off order)
//! consumes once. Reservations are undone only when the order fails for good;
//! once `stock_reserved`, an order is only ever credited (retried until it is).
//!
//! Stock policy (conservative): a consume whose result is unknown fails the order
//! and is not rolled back — under-issue, never over-issue.
//!
//! **Graceful shutdown** hands the local queues to a durable queue in the KV that
//! live instances pick up on `tick`; the **compensation scan** re-queues orders
//! left in a middle state longer than a timeout (a crash loses the local queues).
//! The **green channel** issues a flagged request synchronously, ahead of the
//! queue, wherever its order stands.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::clock::Millis;
use crate::config::{AwardDef, CouponDef, Crediting};
use crate::keys;
use crate::kv::{KvError, LIST_RANGE_MAX, QUEUE_POP_MAX};
use crate::ledger::{Award, CREDIT_BATCH_MAX, Credit, CreditOutcome, LedgerError};
use crate::order_no::OrderNo;
use crate::stability::RateLimiter;
use crate::switches::Switch;
pub use crate::wallet::orders::{OrderRecord, OrderState, QueuedOrder};
use crate::wallet::{
    IssueOutcome, IssueRequest, Rejection, Reservation, Wallet, WalletError, replayed,
};
use crate::{ActId, ChildId};

#[cfg(test)]
mod tests;

/// Sizes, rates and timers of one pipeline instance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    /// Orders the activity queue holds; accepting more answers `pipeline_busy`.
    pub activity_queue_max: usize,
    /// Orders the asset queue holds; the activity layer waits when it is full.
    pub asset_queue_max: usize,
    /// Orders per second the activity-layer consumer may take.
    pub activity_rate_per_s: u32,
    /// Orders per second the asset-layer consumer may take.
    pub asset_rate_per_s: u32,
    /// Most orders one asset-layer take merges (the seed's N).
    pub merge_max: usize,
    /// How often the local stock cache is refreshed from the KV.
    pub stock_refresh_ms: u64,
    /// How often the compensation scan runs.
    pub compensation_interval_ms: u64,
    /// How long an order may sit in a middle state before the scan re-queues it.
    pub compensation_timeout_ms: u64,
    /// Most handed-off orders one tick picks up.
    pub pickup_max: usize,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            activity_queue_max: 100_000,
            asset_queue_max: 100_000,
            activity_rate_per_s: 100_000,
            asset_rate_per_s: 100_000,
            merge_max: 100,
            stock_refresh_ms: 1_000,
            compensation_interval_ms: 5_000,
            compensation_timeout_ms: 30_000,
            pickup_max: QUEUE_POP_MAX,
        }
    }
}

/// Where a test or the simulator makes an instance die mid-step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PipelineCrash {
    /// The order is recorded but not queued.
    AfterRecord,
    /// Per-user reservations made, the record not moved.
    AfterUserReserve,
    /// The record says `user_reserved`, the order is not on the asset queue.
    AfterUserMark,
    /// Stock consumed, the records not moved.
    AfterStockConsume,
    /// The records say `stock_reserved`, nothing credited.
    AfterStockMark,
    /// Credited, the records not moved to `issued`.
    AfterCredit,
}

impl PipelineCrash {
    /// Every crash point, in step order.
    pub const ALL: [PipelineCrash; 6] = [
        PipelineCrash::AfterRecord,
        PipelineCrash::AfterUserReserve,
        PipelineCrash::AfterUserMark,
        PipelineCrash::AfterStockConsume,
        PipelineCrash::AfterStockMark,
        PipelineCrash::AfterCredit,
    ];

    /// Its name on the wire (`after_record`, …).
    pub fn name(self) -> &'static str {
        match self {
            PipelineCrash::AfterRecord => "after_record",
            PipelineCrash::AfterUserReserve => "after_user_reserve",
            PipelineCrash::AfterUserMark => "after_user_mark",
            PipelineCrash::AfterStockConsume => "after_stock_consume",
            PipelineCrash::AfterStockMark => "after_stock_mark",
            PipelineCrash::AfterCredit => "after_credit",
        }
    }

    /// The point of a wire name.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.name() == name)
    }
}

/// Why processing stopped early.
#[derive(Debug)]
enum Stop {
    /// The instance died at a crash point.
    Crashed,
    /// A store failed.
    Store(WalletError),
}

impl From<KvError> for Stop {
    fn from(e: KvError) -> Self {
        Stop::Store(e.into())
    }
}

impl From<LedgerError> for Stop {
    fn from(e: LedgerError) -> Self {
        Stop::Store(e.into())
    }
}

impl From<WalletError> for Stop {
    fn from(e: WalletError) -> Self {
        Stop::Store(e)
    }
}

/// An order on a local queue, with the record bytes it was read as.
#[derive(Clone, Debug)]
struct Job {
    key: String,
    record: OrderRecord,
    bytes: Vec<u8>,
}

impl Job {
    fn new(key: String, record: OrderRecord) -> Self {
        let bytes = record.encode();
        Self { key, record, bytes }
    }
}

/// Latency from accept to issued, microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LatencyFigures {
    /// Orders measured.
    pub count: u64,
    /// Median.
    pub p50_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// Slowest.
    pub max_us: u64,
}

/// The monitoring figures of one instance (seed 003: queue depth, consumer rate,
/// issued per batch; plus accept-to-issued latency).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PipelineFigures {
    /// Orders recorded and queued.
    pub accepted: u64,
    /// Replays answered from the record.
    pub duplicates: u64,
    /// Replays with another payload.
    pub conflicts: u64,
    /// Turned away because the activity queue was full or the instance stopping.
    pub busy: u64,
    /// Green-channel requests.
    pub green: u64,
    /// Orders on the activity queue now.
    pub activity_depth: u64,
    /// Orders on the asset queue now.
    pub asset_depth: u64,
    /// Orders the activity layer processed.
    pub activity_processed: u64,
    /// Orders the asset layer processed.
    pub asset_processed: u64,
    /// Stock consume calls (one per merged group).
    pub consume_calls: u64,
    /// Stock units those calls asked for.
    pub consume_asked: u64,
    /// Orders issued by this instance.
    pub issued: u64,
    /// Orders failed by this instance, by code.
    pub failed: BTreeMap<String, u64>,
    /// Orders issued, by coupon batch.
    pub issued_per_batch: BTreeMap<String, u64>,
    /// Orders handed to the durable queue on shutdown.
    pub handed_off: u64,
    /// Handed-off orders picked up.
    pub picked_up: u64,
    /// Orders re-queued by the compensation scan.
    pub compensated: u64,
    /// Ledger batches that failed (their orders are retried).
    pub credit_errors: u64,
    /// Accept → issued.
    pub latency: LatencyFigures,
}

#[derive(Debug)]
struct Queues {
    activity: VecDeque<Job>,
    asset: VecDeque<Job>,
    /// Keys on either queue, so a re-queue does not double them.
    queued: BTreeSet<String>,
    /// Orders taken off a queue (local or the durable hand-off) and not yet
    /// settled: a drain that only looked at the queues would call a batch
    /// whose ledger write is in flight done.
    in_hand: u64,
    /// Orders a store error left on no queue (a failed ledger batch, a lost
    /// record update): open, waiting for the compensation scan. Outstanding
    /// too, so a drain does not call them done.
    stranded: BTreeSet<String>,
}

/// Orders held out of the queues while a layer works on them; released when
/// dropped, on every path out (errors and crashes included).
struct InHand<'a> {
    queues: &'a Mutex<Queues>,
    n: u64,
}

impl Drop for InHand<'_> {
    fn drop(&mut self) {
        let mut queues = self
            .queues
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        queues.in_hand = queues.in_hand.saturating_sub(self.n);
    }
}

#[derive(Debug, Default)]
struct Timers {
    next_stock_refresh_ms: Option<Millis>,
    next_compensation_ms: Option<Millis>,
}

/// What one [`CouponPipeline::tick`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PipelineTick {
    /// Orders the activity layer processed.
    pub activity_processed: u64,
    /// Orders the asset layer processed.
    pub asset_processed: u64,
    /// Handed-off orders picked up.
    pub picked_up: u64,
    /// Orders the compensation scan re-queued.
    pub compensated: u64,
    /// The instance died at its crash point during this tick.
    pub crashed: bool,
}

/// One instance of the coupon pipeline over a wallet's stores.
pub struct CouponPipeline {
    wallet: Wallet,
    config: PipelineConfig,
    queues: Mutex<Queues>,
    activity_limiter: RateLimiter,
    asset_limiter: RateLimiter,
    /// Stock key → consumed, as last seen.
    stock_cache: Mutex<BTreeMap<String, u64>>,
    timers: Mutex<Timers>,
    /// Children with pipeline scenes (the compensation scan's scope).
    children: Vec<ChildId>,
    crash_at: Mutex<Option<PipelineCrash>>,
    crashed: AtomicBool,
    stopping: AtomicBool,
    figures: Mutex<PipelineFigures>,
    latency: Mutex<Histogram<u64>>,
    processed: [AtomicU64; 2],
}

impl fmt::Debug for CouponPipeline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CouponPipeline")
            .field("config", &self.config)
            .field("crashed", &self.crashed)
            .field("stopping", &self.stopping)
            .finish_non_exhaustive()
    }
}

/// Highest accept-to-issued latency the histogram keeps: one day, in µs.
const LATENCY_US_MAX: u64 = 86_400_000_000;

impl CouponPipeline {
    /// A running instance over `wallet`'s stores, clock and switches.
    pub fn new(wallet: Wallet, config: PipelineConfig) -> Self {
        let clock = wallet.clock().clone();
        let children = wallet
            .tree()
            .activities()
            .filter(|a| {
                a.scenes
                    .values()
                    .any(|s| s.crediting == Crediting::Pipeline)
            })
            .flat_map(|a| a.children.iter().map(|c| c.id))
            .collect();
        Self {
            activity_limiter: RateLimiter::new(config.activity_rate_per_s, clock.clone()),
            asset_limiter: RateLimiter::new(config.asset_rate_per_s, clock),
            wallet,
            config,
            queues: Mutex::new(Queues {
                activity: VecDeque::new(),
                asset: VecDeque::new(),
                queued: BTreeSet::new(),
                in_hand: 0,
                stranded: BTreeSet::new(),
            }),
            stock_cache: Mutex::new(BTreeMap::new()),
            timers: Mutex::new(Timers::default()),
            children,
            crash_at: Mutex::new(None),
            crashed: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            figures: Mutex::new(PipelineFigures::default()),
            latency: Mutex::new(
                Histogram::new_with_bounds(1, LATENCY_US_MAX, 3).expect("valid bounds"),
            ),
            processed: [AtomicU64::new(0), AtomicU64::new(0)],
        }
    }

    /// The wallet it issues through.
    pub fn wallet(&self) -> &Wallet {
        &self.wallet
    }

    /// Die the next time processing reaches `point` (tests and simulated faults).
    pub fn crash_at(&self, point: PipelineCrash) {
        *self.crash_at.lock().expect("pipeline lock poisoned") = Some(point);
    }

    /// Whether the instance died at its crash point.
    pub fn has_crashed(&self) -> bool {
        self.crashed.load(Ordering::SeqCst)
    }

    fn crash_point(&self, point: PipelineCrash) -> Result<(), Stop> {
        if *self.crash_at.lock().expect("pipeline lock poisoned") == Some(point) {
            self.crashed.store(true, Ordering::SeqCst);
            return Err(Stop::Crashed);
        }
        Ok(())
    }

    fn alive(&self) -> bool {
        !self.crashed.load(Ordering::SeqCst) && !self.stopping.load(Ordering::SeqCst)
    }

    fn bump(&self, update: impl FnOnce(&mut PipelineFigures)) {
        update(&mut self.figures.lock().expect("pipeline lock poisoned"));
    }

    /// Issue a coupon. Pipeline scenes (with the switch on) are recorded and
    /// queued, or with `green` issued at once; other scenes go to the wallet's
    /// sync path.
    pub async fn issue(
        &self,
        request: &IssueRequest,
        green: bool,
    ) -> Result<IssueOutcome, WalletError> {
        let wallet = &self.wallet;
        let now_ms = wallet.clock().now_ms();
        let valid = match wallet.validate(request, now_ms) {
            Ok(valid) => valid,
            Err((child_id, reason)) => return Ok(IssueOutcome::Rejected { child_id, reason }),
        };
        if valid.scene.crediting != Crediting::Pipeline
            || !wallet.switches().is_on(Switch::CouponPipeline)
        {
            return wallet.issue(request).await;
        }
        let child_id = valid.child.id;
        let rejected = |reason| {
            Ok(IssueOutcome::Rejected {
                child_id: Some(child_id),
                reason,
            })
        };
        if let Err(reason) = wallet.admit(valid.scene) {
            return rejected(reason);
        }
        if !self.alive() {
            self.bump(|f| f.busy += 1);
            return rejected(Rejection::PipelineBusy {
                why: "this instance is stopping".to_owned(),
            });
        }
        if wallet.switches().is_on(Switch::IdempotencyPrecheck)
            && let Some(first) = wallet
                .ledger()
                .lookup_credit(child_id, &valid.order_no)
                .await?
        {
            let credit = Credit::new(
                child_id,
                valid.order_no.clone(),
                valid.award.clone(),
                now_ms,
            );
            return Ok(replayed(first, &credit));
        }
        if !green && self.depths().0 >= self.config.activity_queue_max as u64 {
            self.bump(|f| f.busy += 1);
            return rejected(Rejection::PipelineBusy {
                why: "the activity queue is full".to_owned(),
            });
        }
        let key = keys::order(child_id, &request.order_no);
        let record = OrderRecord {
            request: request.clone(),
            child_id,
            accepted_at_ms: now_ms,
            state: OrderState::Accepted,
        };
        let job = Job::new(key.clone(), record);
        let existing = wallet
            .kv()
            .record_order(&key, &job.bytes, &keys::orders_open(child_id), now_ms)
            .await?;
        if green {
            self.bump(|f| f.green += 1);
        }
        if let Some(bytes) = existing {
            let first = OrderRecord::decode(&key, &bytes)?;
            if !first.request.same_payload(request) {
                self.bump(|f| f.conflicts += 1);
                return Ok(IssueOutcome::OrderConflict {
                    first: QueuedOrder::of(&first),
                });
            }
            if green && !first.state.is_final() {
                return self
                    .drive(Job {
                        key,
                        record: first,
                        bytes,
                    })
                    .await;
            }
            self.bump(|f| f.duplicates += 1);
            return Ok(IssueOutcome::DuplicateQueued {
                order: QueuedOrder::of(&first),
            });
        }
        self.bump(|f| f.accepted += 1);
        if self.crash_point(PipelineCrash::AfterRecord).is_err() {
            return Err(WalletError::InstanceDown);
        }
        let order = QueuedOrder::of(&job.record);
        if green {
            return self.drive(job).await;
        }
        self.enqueue(job);
        Ok(IssueOutcome::Queued { order })
    }

    /// The green channel: take `job` through every step now.
    async fn drive(&self, job: Job) -> Result<IssueOutcome, WalletError> {
        let key = job.key.clone();
        let child_id = job.record.child_id;
        let result = async {
            let mut job = Some(job);
            if let Some(j) = job.take_if(|j| j.record.state == OrderState::Accepted) {
                job = self.process_user(j).await?;
            }
            if let Some(j) = job.take_if(|j| j.record.state == OrderState::UserReserved) {
                self.process_asset(vec![j]).await?;
            } else if let Some(j) = job.take_if(|j| j.record.state == OrderState::StockReserved) {
                self.credit(vec![j]).await?;
            }
            Ok::<(), Stop>(())
        }
        .await;
        match result {
            Ok(()) => {}
            Err(Stop::Crashed) => return Err(WalletError::InstanceDown),
            Err(Stop::Store(e)) => return Err(e),
        }
        let Some(bytes) = self.wallet.kv().bytes(&key).await? else {
            return Err(WalletError::CorruptOrder {
                key,
                error: "the record vanished".to_owned(),
            });
        };
        let record = OrderRecord::decode(&key, &bytes)?;
        match &record.state {
            OrderState::Issued { .. } => {
                let order_no: OrderNo =
                    record
                        .request
                        .order_no
                        .parse()
                        .map_err(|e| WalletError::CorruptOrder {
                            key: key.clone(),
                            error: format!("{e}"),
                        })?;
                match self
                    .wallet
                    .ledger()
                    .lookup_credit(child_id, &order_no)
                    .await?
                {
                    Some(entry) => Ok(IssueOutcome::Issued { entry }),
                    None => Err(WalletError::CorruptOrder {
                        key,
                        error: "issued, but the ledger has no entry".to_owned(),
                    }),
                }
            }
            OrderState::Failed { code, detail } => Ok(IssueOutcome::Rejected {
                child_id: Some(child_id),
                reason: Rejection::OrderFailed {
                    failure: code.clone(),
                    detail: detail.clone(),
                },
            }),
            // Another processor holds it mid-step, or a store failed: unknown.
            other => Err(WalletError::OrderInProgress {
                key,
                state: other.label().to_owned(),
            }),
        }
    }

    fn enqueue(&self, job: Job) -> bool {
        let mut queues = self.queues.lock().expect("pipeline lock poisoned");
        queues.stranded.remove(&job.key);
        if !queues.queued.insert(job.key.clone()) {
            return false;
        }
        match job.record.state {
            OrderState::Accepted => queues.activity.push_back(job),
            _ => queues.asset.push_back(job),
        }
        true
    }

    /// `(activity, asset)` queue depths.
    pub fn depths(&self) -> (u64, u64) {
        let queues = self.queues.lock().expect("pipeline lock poisoned");
        (queues.activity.len() as u64, queues.asset.len() as u64)
    }

    /// Orders this instance still has to settle: both queues, those a layer
    /// holds right now and those a failed ledger batch left for the
    /// compensation scan, read in one snapshot. Zero, after the durable
    /// hand-off queue was seen empty, means every order it took is final or
    /// left open for the compensation scan.
    pub fn outstanding(&self) -> u64 {
        let queues = self.queues.lock().expect("pipeline lock poisoned");
        queues.activity.len() as u64
            + queues.asset.len() as u64
            + queues.in_hand
            + queues.stranded.len() as u64
    }

    /// Orders a store error left off every queue, still open: outstanding
    /// until the compensation scan re-queues them or they are found final.
    fn strand(&self, keys: impl IntoIterator<Item = String>) {
        self.queues
            .lock()
            .expect("pipeline lock poisoned")
            .stranded
            .extend(keys);
    }

    /// Drop stranded orders that are final (or gone): an error can strand a
    /// whole batch of which some were already settled, and the scan only
    /// looks at open orders. Unreadable ones stay.
    async fn settle_stranded(&self) {
        let keys: Vec<String> = {
            let queues = self.queues.lock().expect("pipeline lock poisoned");
            queues
                .stranded
                .iter()
                .take(LIST_RANGE_MAX)
                .cloned()
                .collect()
        };
        for key in keys {
            let settled = match self.wallet.kv().bytes(&key).await {
                Ok(None) => true,
                Ok(Some(bytes)) => {
                    OrderRecord::decode(&key, &bytes).is_ok_and(|r| r.state.is_final())
                }
                Err(_) => false,
            };
            if settled {
                self.queues
                    .lock()
                    .expect("pipeline lock poisoned")
                    .stranded
                    .remove(&key);
            }
        }
    }

    /// Count `n` orders as held; call with the queue lock held, in the same
    /// critical section that takes them off a queue.
    fn hold<'a>(&'a self, queues: &mut Queues, n: u64) -> InHand<'a> {
        queues.in_hand += n;
        InHand {
            queues: &self.queues,
            n,
        }
    }

    /// Move the record from the job's state to `state`; on success the job carries it.
    async fn advance(&self, job: &mut Job, state: OrderState) -> Result<bool, Stop> {
        let mut record = job.record.clone();
        record.state = state;
        let bytes = record.encode();
        let moved = self
            .wallet
            .kv()
            .compare_and_set(&job.key, &job.bytes, &bytes)
            .await?;
        if moved {
            if record.state.is_final() {
                // Best effort: a stale entry is dropped by the next scan.
                let _ignored = self
                    .wallet
                    .kv()
                    .inflight_remove(&keys::orders_open(record.child_id), job.key.as_bytes())
                    .await;
            }
            job.record = record;
            job.bytes = bytes;
        }
        Ok(moved)
    }

    /// Fail the order for good. `mine` (reservations this processing just made)
    /// are released in any case; `the_orders` (reservations recorded by its state)
    /// only by the winner of the move, so they are released once.
    async fn fail(
        &self,
        job: &mut Job,
        reason: &Rejection,
        mine: Vec<Reservation>,
        the_orders: Vec<Reservation>,
    ) -> Result<(), Stop> {
        let (code, detail) = match reason {
            Rejection::OrderFailed { failure, detail } => (failure.clone(), detail.clone()),
            other => (other.code().to_owned(), other.to_string()),
        };
        if self
            .advance(
                job,
                OrderState::Failed {
                    code: code.clone(),
                    detail,
                },
            )
            .await?
        {
            self.bump(|f| *f.failed.entry(code).or_default() += 1);
            self.wallet.undo(the_orders).await;
        }
        self.wallet.undo(mine).await;
        Ok(())
    }

    /// What `job`'s request asks for, re-validated at its accept time.
    fn coupon_of(&self, record: &OrderRecord) -> Result<(OrderNo, CouponDef, bool), Rejection> {
        let valid = self
            .wallet
            .validate(&record.request, record.accepted_at_ms)
            .map_err(|(_, reason)| reason)?;
        match valid.award_def {
            AwardDef::Coupon(coupon) => Ok((
                valid.order_no.clone(),
                coupon.clone(),
                valid.scene.stock_control,
            )),
            _ => Err(Rejection::UnknownAward {
                scene_id: valid.scene.id,
                award_id: record.request.award_id,
            }),
        }
    }

    /// The per-user reservations an order in `user_reserved` or later holds.
    fn user_reservations(
        &self,
        child_id: ChildId,
        act_id: ActId,
        coupon: &CouponDef,
    ) -> Vec<Reservation> {
        let mut held = Vec::new();
        if let Some(group) = &coupon.group {
            held.push(Reservation::Held {
                key: keys::user_group(child_id, group, act_id),
                value: coupon.batch.clone(),
            });
        }
        held.push(Reservation::Consumed {
            key: keys::user_batch(child_id, &coupon.batch, act_id),
            n: 1,
        });
        held
    }

    /// Activity layer: per-user reservations, then `user_reserved`. Returns the
    /// job when it moved on.
    async fn process_user(&self, mut job: Job) -> Result<Option<Job>, Stop> {
        self.processed[0].fetch_add(1, Ordering::Relaxed);
        let valid = match self
            .wallet
            .validate(&job.record.request, job.record.accepted_at_ms)
        {
            Ok(valid) => valid,
            Err((_, reason)) => {
                self.fail(&mut job, &reason, Vec::new(), Vec::new()).await?;
                return Ok(None);
            }
        };
        let AwardDef::Coupon(coupon) = valid.award_def else {
            let reason = Rejection::UnknownAward {
                scene_id: valid.scene.id,
                award_id: job.record.request.award_id,
            };
            self.fail(&mut job, &reason, Vec::new(), Vec::new()).await?;
            return Ok(None);
        };
        let mut reservations = Vec::new();
        match self
            .wallet
            .reserve_user(&valid, coupon, &mut reservations)
            .await
        {
            Ok(None) => {}
            Ok(Some(reason)) => {
                self.fail(&mut job, &reason, reservations, Vec::new())
                    .await?;
                return Ok(None);
            }
            Err(e) => {
                // Unknown result: the order fails; what surely happened is released.
                let reason = Rejection::OrderFailed {
                    failure: "kv_unknown".to_owned(),
                    detail: format!("a per-user reservation's result is unknown: {e}"),
                };
                self.fail(&mut job, &reason, reservations, Vec::new())
                    .await?;
                return Ok(None);
            }
        }
        self.crash_point(PipelineCrash::AfterUserReserve)?;
        if !self.advance(&mut job, OrderState::UserReserved).await? {
            // Someone else moved it: their reservations count, ours go back.
            self.wallet.undo(reservations).await;
            return Ok(None);
        }
        self.crash_point(PipelineCrash::AfterUserMark)?;
        Ok(Some(job))
    }

    /// Asset layer: one merged consume per template, then one ledger batch.
    async fn process_asset(&self, jobs: Vec<Job>) -> Result<(), Stop> {
        self.processed[1].fetch_add(jobs.len() as u64, Ordering::Relaxed);
        // Stock key → (template, stock control, orders with their users).
        type Group = (CouponDef, bool, Vec<(Job, ActId)>);
        let mut groups: BTreeMap<String, Group> = BTreeMap::new();
        for mut job in jobs {
            match self.coupon_of(&job.record) {
                Ok((order_no, coupon, stock_control)) => {
                    let stock_key = keys::stock(job.record.child_id, coupon.template_id);
                    groups
                        .entry(stock_key)
                        .or_insert_with(|| (coupon, stock_control, Vec::new()))
                        .2
                        .push((job, order_no.act_id));
                }
                Err(reason) => self.fail(&mut job, &reason, Vec::new(), Vec::new()).await?,
            }
        }
        let mut to_credit = Vec::new();
        for (stock_key, (coupon, stock_control, mut members)) in groups {
            // The deterministic order partial stock is granted in.
            members.sort_by(|a, b| {
                (a.0.record.accepted_at_ms, &a.0.key).cmp(&(b.0.record.accepted_at_ms, &b.0.key))
            });
            let asked = members.len() as u64;
            let granted = if !stock_control {
                asked
            } else if self.cached_consumed(&stock_key) >= coupon.stock {
                0
            } else {
                self.bump(|f| {
                    f.consume_calls += 1;
                    f.consume_asked += asked;
                });
                match self
                    .wallet
                    .kv()
                    .consume_up_to(&stock_key, asked, coupon.stock)
                    .await
                {
                    Ok(granted) => {
                        if granted < asked {
                            self.cache_consumed(&stock_key, coupon.stock);
                        }
                        granted
                    }
                    Err(e) => {
                        // Conservative: unknown = failure, the consume is not rolled back.
                        let reason = Rejection::OrderFailed {
                            failure: "stock_unknown".to_owned(),
                            detail: format!("the stock consume's result is unknown: {e}"),
                        };
                        for (mut job, act_id) in members {
                            let held = self.user_reservations(job.record.child_id, act_id, &coupon);
                            self.fail(&mut job, &reason, Vec::new(), held).await?;
                        }
                        continue;
                    }
                }
            };
            self.crash_point(PipelineCrash::AfterStockConsume)?;
            for (index, (mut job, act_id)) in members.into_iter().enumerate() {
                if (index as u64) < granted {
                    if self.advance(&mut job, OrderState::StockReserved).await? {
                        to_credit.push(job);
                    } else if stock_control {
                        // Someone else moved it and consumed for it: ours goes back.
                        self.wallet
                            .undo(vec![Reservation::Consumed {
                                key: stock_key.clone(),
                                n: 1,
                            }])
                            .await;
                    }
                } else {
                    let reason = Rejection::OutOfStock {
                        template_id: coupon.template_id,
                        stock: coupon.stock,
                    };
                    let held = self.user_reservations(job.record.child_id, act_id, &coupon);
                    self.fail(&mut job, &reason, Vec::new(), held).await?;
                }
            }
        }
        self.crash_point(PipelineCrash::AfterStockMark)?;
        self.credit(to_credit).await
    }

    /// Credit orders in `stock_reserved` in ledger batches and mark them issued.
    /// A failed batch leaves its orders for the compensation scan.
    async fn credit(&self, jobs: Vec<Job>) -> Result<(), Stop> {
        let now_ms = self.wallet.clock().now_ms();
        for chunk in jobs.chunks(CREDIT_BATCH_MAX) {
            let mut credits = Vec::with_capacity(chunk.len());
            let mut batches = Vec::with_capacity(chunk.len());
            for job in chunk {
                match self.coupon_of(&job.record) {
                    Ok((order_no, coupon, _)) => {
                        let award = Award::Coupon {
                            template_id: coupon.template_id,
                            batch: coupon.batch.clone(),
                        };
                        // Dated at acceptance, as a token credit is at its open
                        // time: the award's time, so the flow order and the
                        // credit delay (now − at) are the award's.
                        credits.push(Credit::new(
                            job.record.child_id,
                            order_no,
                            award,
                            job.record.accepted_at_ms,
                        ));
                        batches.push(coupon);
                    }
                    // Validated when accepted; a config change mid-run is a bug upstream.
                    Err(reason) => {
                        return Err(Stop::Store(WalletError::CorruptOrder {
                            key: job.key.clone(),
                            error: reason.to_string(),
                        }));
                    }
                }
            }
            let outcomes = match self.wallet.ledger().credit_batch(&credits).await {
                Ok(outcomes) => outcomes,
                Err(_) => {
                    // The orders stay open (`stock_reserved`) for the scan.
                    self.bump(|f| f.credit_errors += 1);
                    self.strand(chunk.iter().map(|job| job.key.clone()));
                    continue;
                }
            };
            self.crash_point(PipelineCrash::AfterCredit)?;
            for ((job, coupon), outcome) in chunk.iter().zip(batches).zip(outcomes) {
                let mut job = job.clone();
                match outcome {
                    CreditOutcome::Credited { .. } | CreditOutcome::Duplicate { .. } => {
                        if self
                            .advance(&mut job, OrderState::Issued { at_ms: now_ms })
                            .await?
                        {
                            let waited_us = now_ms
                                .saturating_sub(job.record.accepted_at_ms)
                                .saturating_mul(1_000)
                                .clamp(1, LATENCY_US_MAX);
                            let _ignored = self
                                .latency
                                .lock()
                                .expect("pipeline lock poisoned")
                                .record(waited_us);
                            self.bump(|f| {
                                f.issued += 1;
                                *f.issued_per_batch.entry(coupon.batch.clone()).or_default() += 1;
                            });
                        }
                    }
                    CreditOutcome::Conflict { .. } => {
                        let act_id = job.record.act_id();
                        let mut held = self.user_reservations(job.record.child_id, act_id, &coupon);
                        held.push(Reservation::Consumed {
                            key: keys::stock(job.record.child_id, coupon.template_id),
                            n: 1,
                        });
                        let reason = Rejection::OrderFailed {
                            failure: "conflict".to_owned(),
                            detail: "the ledger holds this order number with another award"
                                .to_owned(),
                        };
                        self.fail(&mut job, &reason, Vec::new(), held).await?;
                    }
                }
            }
            // Settled (issued or failed) by this batch, or moved by someone else.
            let mut queues = self.queues.lock().expect("pipeline lock poisoned");
            for job in chunk {
                queues.stranded.remove(&job.key);
            }
        }
        Ok(())
    }

    fn cached_consumed(&self, stock_key: &str) -> u64 {
        self.stock_cache
            .lock()
            .expect("pipeline lock poisoned")
            .get(stock_key)
            .copied()
            .unwrap_or(0)
    }

    fn cache_consumed(&self, stock_key: &str, consumed: u64) {
        self.stock_cache
            .lock()
            .expect("pipeline lock poisoned")
            .insert(stock_key.to_owned(), consumed);
    }

    /// Background work for `now`: refresh the stock cache, pick up handed-off
    /// orders, run the compensation scan, then let both layers consume as far as
    /// their rate limiters allow.
    pub async fn tick(&self, now_ms: Millis) -> Result<PipelineTick, WalletError> {
        let mut report = PipelineTick::default();
        if !self.alive() {
            return Ok(report);
        }
        let before = [
            self.processed[0].load(Ordering::Relaxed),
            self.processed[1].load(Ordering::Relaxed),
        ];
        let result = self.tick_steps(now_ms, &mut report).await;
        report.activity_processed = self.processed[0].load(Ordering::Relaxed) - before[0];
        report.asset_processed = self.processed[1].load(Ordering::Relaxed) - before[1];
        match result {
            Ok(()) => Ok(report),
            Err(Stop::Crashed) => {
                report.crashed = true;
                Ok(report)
            }
            Err(Stop::Store(e)) => Err(e),
        }
    }

    async fn tick_steps(&self, now_ms: Millis, report: &mut PipelineTick) -> Result<(), Stop> {
        let (refresh, scan) = {
            let mut timers = self.timers.lock().expect("pipeline lock poisoned");
            let due = |next: &mut Option<Millis>, every: u64| {
                let due = next.is_none_or(|at| now_ms >= at);
                if due {
                    *next = Some(now_ms + every.max(1));
                }
                due
            };
            (
                due(
                    &mut timers.next_stock_refresh_ms,
                    self.config.stock_refresh_ms,
                ),
                due(
                    &mut timers.next_compensation_ms,
                    self.config.compensation_interval_ms,
                ),
            )
        };
        if refresh {
            self.refresh_stock().await?;
        }
        report.picked_up = self.pick_up().await?;
        if scan {
            // With the scan, not every tick: one read per stranded order.
            self.settle_stranded().await;
            report.compensated = self.compensate(now_ms).await?;
        }
        self.consume_activity().await?;
        self.consume_asset().await
    }

    async fn refresh_stock(&self) -> Result<(), Stop> {
        let keys: Vec<String> = self
            .stock_cache
            .lock()
            .expect("pipeline lock poisoned")
            .keys()
            .cloned()
            .collect();
        for key in keys {
            // A failed read keeps the old value: the cache is only a pre-check.
            if let Ok(consumed) = self.wallet.kv().counter(&key).await {
                self.cache_consumed(&key, u64::try_from(consumed).unwrap_or(0));
            }
        }
        Ok(())
    }

    fn room(&self) -> usize {
        let (activity, asset) = self.depths();
        let activity_room = self
            .config
            .activity_queue_max
            .saturating_sub(activity as usize);
        let asset_room = self.config.asset_queue_max.saturating_sub(asset as usize);
        activity_room.min(asset_room)
    }

    /// Load an order by key and put it where its state says; final orders are
    /// dropped from the open set.
    async fn requeue(&self, key: &[u8], child_id: Option<ChildId>) -> Result<bool, Stop> {
        let key = String::from_utf8_lossy(key).into_owned();
        let Some(bytes) = self.wallet.kv().bytes(&key).await? else {
            if let Some(child_id) = child_id {
                self.wallet
                    .kv()
                    .inflight_remove(&keys::orders_open(child_id), key.as_bytes())
                    .await?;
            }
            return Ok(false);
        };
        let record = OrderRecord::decode(&key, &bytes)?;
        if record.state.is_final() {
            self.queues
                .lock()
                .expect("pipeline lock poisoned")
                .stranded
                .remove(&key);
            self.wallet
                .kv()
                .inflight_remove(&keys::orders_open(record.child_id), key.as_bytes())
                .await?;
            return Ok(false);
        }
        if record.state == OrderState::StockReserved {
            self.credit(vec![Job { key, record, bytes }]).await?;
            return Ok(true);
        }
        Ok(self.enqueue(Job { key, record, bytes }))
    }

    async fn pick_up(&self) -> Result<u64, Stop> {
        let max = self.room().min(self.config.pickup_max).min(QUEUE_POP_MAX);
        if max == 0 {
            return Ok(0);
        }
        // Held before the pop: an order is never off the durable queue and
        // not yet counted here.
        let _held = {
            let mut queues = self.queues.lock().expect("pipeline lock poisoned");
            self.hold(&mut queues, max as u64)
        };
        let items = self
            .wallet
            .kv()
            .queue_pop(&keys::orders_handoff(), max)
            .await?;
        let mut picked = 0;
        for (i, key) in items.iter().enumerate() {
            match self.requeue(key, None).await {
                Ok(true) => picked += 1,
                Ok(false) => {}
                Err(stop) => {
                    // Off the durable queue, still open: the scan's.
                    self.strand(
                        items[i..]
                            .iter()
                            .map(|k| String::from_utf8_lossy(k).into_owned()),
                    );
                    return Err(stop);
                }
            }
        }
        self.bump(|f| f.picked_up += picked);
        Ok(picked)
    }

    async fn compensate(&self, now_ms: Millis) -> Result<u64, Stop> {
        let due_ms = now_ms.saturating_sub(self.config.compensation_timeout_ms);
        let mut requeued = 0;
        for &child_id in &self.children {
            let open = keys::orders_open(child_id);
            let max = self.room().min(LIST_RANGE_MAX);
            if max == 0 {
                break;
            }
            for key in self.wallet.kv().inflight_due(&open, due_ms, max).await? {
                let mine = self
                    .queues
                    .lock()
                    .expect("pipeline lock poisoned")
                    .queued
                    .contains(String::from_utf8_lossy(&key).as_ref());
                // Pushed back a full timeout, so one scan does not re-queue it again.
                self.wallet.kv().scored_add(&open, &key, now_ms).await?;
                if !mine && self.requeue(&key, Some(child_id)).await? {
                    requeued += 1;
                }
            }
        }
        self.bump(|f| f.compensated += requeued);
        Ok(requeued)
    }

    async fn consume_activity(&self) -> Result<(), Stop> {
        loop {
            let job = {
                let mut queues = self.queues.lock().expect("pipeline lock poisoned");
                if queues.activity.is_empty()
                    || queues.asset.len() >= self.config.asset_queue_max
                    || !self.activity_limiter.try_acquire()
                {
                    return Ok(());
                }
                let job = queues.activity.pop_front().expect("not empty");
                queues.queued.remove(&job.key);
                (job, self.hold(&mut queues, 1))
            };
            let (job, _held) = job;
            let key = job.key.clone();
            match self.process_user(job).await {
                Ok(Some(job)) => {
                    self.enqueue(job);
                }
                Ok(None) => {}
                Err(stop) => {
                    self.strand([key]);
                    return Err(stop);
                }
            }
        }
    }

    async fn consume_asset(&self) -> Result<(), Stop> {
        loop {
            let (taken, _held): (Vec<Job>, _) = {
                let mut queues = self.queues.lock().expect("pipeline lock poisoned");
                let mut taken = Vec::new();
                while taken.len() < self.config.merge_max.max(1)
                    && !queues.asset.is_empty()
                    && self.asset_limiter.try_acquire()
                {
                    let job = queues.asset.pop_front().expect("not empty");
                    queues.queued.remove(&job.key);
                    taken.push(job);
                }
                let held = self.hold(&mut queues, taken.len() as u64);
                (taken, held)
            };
            if taken.is_empty() {
                return Ok(());
            }
            let keys: Vec<String> = taken.iter().map(|job| job.key.clone()).collect();
            if let Err(stop) = self.process_asset(taken).await {
                // Some may be final already; `settle_stranded` drops those.
                self.strand(keys);
                return Err(stop);
            }
        }
    }

    /// Graceful shutdown: stop taking orders and hand both local queues to the
    /// durable queue for a live instance. Returns how many were handed over;
    /// orders whose push failed stay open for the compensation scan.
    pub async fn shutdown(&self) -> u64 {
        self.stopping.store(true, Ordering::SeqCst);
        let jobs: Vec<Job> = {
            let mut queues = self.queues.lock().expect("pipeline lock poisoned");
            queues.queued.clear();
            let mut jobs: Vec<Job> = queues.activity.drain(..).collect();
            jobs.extend(queues.asset.drain(..));
            jobs
        };
        let mut handed = 0;
        for job in jobs {
            if self
                .wallet
                .kv()
                .queue_push(&keys::orders_handoff(), job.key.as_bytes(), None)
                .await
                .is_ok()
            {
                handed += 1;
            }
        }
        self.bump(|f| f.handed_off += handed);
        handed
    }

    /// The monitoring figures now.
    pub fn figures(&self) -> PipelineFigures {
        let mut figures = self.figures.lock().expect("pipeline lock poisoned").clone();
        (figures.activity_depth, figures.asset_depth) = self.depths();
        figures.activity_processed = self.processed[0].load(Ordering::Relaxed);
        figures.asset_processed = self.processed[1].load(Ordering::Relaxed);
        let latency = self.latency.lock().expect("pipeline lock poisoned");
        figures.latency = LatencyFigures {
            count: latency.len(),
            p50_us: latency.value_at_quantile(0.5),
            p99_us: latency.value_at_quantile(0.99),
            p999_us: latency.value_at_quantile(0.999),
            max_us: latency.max(),
        };
        figures
    }
}
