//! Stability (seed 000 §5.1): rate limits and circuit breakers.
//!
//! - [`RateLimiter`]: a `governor` GCRA limiter on the injected clock, so the same
//!   limiter runs in virtual time in the simulator and in real time in a server.
//!   Used for the per-scene ingress limits ([`IngressLimits`], the scene's
//!   `rate_limit_qps` split evenly over the instances, the seed's "total /
//!   instances" at high QPS) and for the coupon pipeline's two consumer layers.
//! - [`Breaker`]: a circuit breaker around one downstream. After
//!   `failure_threshold` consecutive failures it opens and fails calls fast for
//!   `open_ms`, then lets one probe through (half-open); a success closes it.
//!   [`BreakerKv`] and [`BreakerLedger`] put one around the KV and the ledger.
//!
//! Both are observable ([`StabilityFigures`]) and switchable
//! ([`Switch::IngressRateLimit`], [`Switch::CircuitBreaker`]).

use std::collections::BTreeMap;
use std::fmt;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use governor::clock::Clock as GovernorClock;
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter as Governor};
use serde::Serialize;

use crate::clock::{Clock, Millis};
use crate::kv::{Consume, Hold, Kv, KvError};
use crate::ledger::{
    AccountKey, AccountState, Credit, CreditOutcome, Cursor, Entry, HistoryPage, Ledger,
    LedgerError, LedgerSnapshot, WithdrawOutcome, Withdrawal,
};
use crate::order_no::OrderNo;
use crate::switches::{Switch, Switches};

/// The injected clock as `governor` sees it: nanoseconds since the epoch.
#[derive(Clone, Debug)]
struct InjectedClock(Arc<dyn Clock>);

impl GovernorClock for InjectedClock {
    type Instant = Nanos;

    fn now(&self) -> Nanos {
        Nanos::from(self.0.now_ms().saturating_mul(1_000_000))
    }
}

/// A rate limiter on the injected clock: `per_second` permits a second, with a
/// burst of one second's worth.
pub struct RateLimiter {
    per_second: u32,
    inner: Governor<NotKeyed, InMemoryState, InjectedClock, NoOpMiddleware<Nanos>>,
}

impl fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimiter")
            .field("per_second", &self.per_second)
            .finish()
    }
}

impl RateLimiter {
    /// `per_second` (at least 1) permits a second on `clock`.
    pub fn new(per_second: u32, clock: Arc<dyn Clock>) -> Self {
        let rate = NonZeroU32::new(per_second.max(1)).expect("at least 1");
        Self {
            per_second: rate.get(),
            inner: Governor::direct_with_clock(Quota::per_second(rate), InjectedClock(clock)),
        }
    }

    /// Take one permit if there is one now.
    pub fn try_acquire(&self) -> bool {
        self.inner.check().is_ok()
    }

    /// The configured rate.
    pub fn per_second(&self) -> u32 {
        self.per_second
    }
}

/// Per-scene ingress limits of one instance.
#[derive(Debug)]
pub struct IngressLimits {
    clock: Arc<dyn Clock>,
    instances: u32,
    limiters: Mutex<BTreeMap<u32, Arc<RateLimiter>>>,
    limited: AtomicU64,
}

impl IngressLimits {
    /// Limits for one of `instances` equal instances sharing each scene's total.
    pub fn new(clock: Arc<dyn Clock>, instances: u32) -> Self {
        Self {
            clock,
            instances: instances.max(1),
            limiters: Mutex::new(BTreeMap::new()),
            limited: AtomicU64::new(0),
        }
    }

    /// Whether a request of `scene_id` (limited to `total_qps` over all
    /// instances) may pass now; counts the ones that may not.
    pub fn admit(&self, scene_id: u32, total_qps: u64) -> bool {
        let limiter = {
            let mut limiters = self.limiters.lock().expect("limiter lock poisoned");
            limiters
                .entry(scene_id)
                .or_insert_with(|| {
                    let share = (total_qps / u64::from(self.instances)).max(1);
                    Arc::new(RateLimiter::new(
                        u32::try_from(share).unwrap_or(u32::MAX),
                        self.clock.clone(),
                    ))
                })
                .clone()
        };
        let admitted = limiter.try_acquire();
        if !admitted {
            self.limited.fetch_add(1, Ordering::Relaxed);
        }
        admitted
    }

    /// Requests turned away so far.
    pub fn limited(&self) -> u64 {
        self.limited.load(Ordering::Relaxed)
    }
}

/// When a breaker opens and for how long.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct BreakerConfig {
    /// Consecutive failures that open the breaker.
    pub failure_threshold: u32,
    /// How long it stays open before one probe goes through.
    pub open_ms: u64,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failure_threshold: 20,
            open_ms: 1_000,
        }
    }
}

/// A breaker's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    /// Calls go through; counting consecutive failures.
    Closed,
    /// Calls fail fast until the time given.
    Open,
    /// One probe is allowed; its result closes or reopens the breaker.
    HalfOpen,
}

#[derive(Debug)]
struct BreakerInner {
    state: BreakerState,
    failures: u32,
    open_until_ms: Millis,
}

/// A circuit breaker around one downstream.
#[derive(Debug)]
pub struct Breaker {
    name: &'static str,
    config: BreakerConfig,
    clock: Arc<dyn Clock>,
    switches: Arc<Switches>,
    inner: Mutex<BreakerInner>,
    trips: AtomicU64,
    fast_failed: AtomicU64,
}

/// What a breaker has done.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct BreakerFigures {
    /// The state now.
    pub state: BreakerState,
    /// Times it opened.
    pub trips: u64,
    /// Calls failed fast while open.
    pub fast_failed: u64,
}

impl Breaker {
    /// A closed breaker named after its downstream.
    pub fn new(
        name: &'static str,
        config: BreakerConfig,
        clock: Arc<dyn Clock>,
        switches: Arc<Switches>,
    ) -> Self {
        Self {
            name,
            config,
            clock,
            switches,
            inner: Mutex::new(BreakerInner {
                state: BreakerState::Closed,
                failures: 0,
                open_until_ms: 0,
            }),
            trips: AtomicU64::new(0),
            fast_failed: AtomicU64::new(0),
        }
    }

    /// Whether a call may go to the downstream now.
    fn allow(&self) -> bool {
        if !self.switches.is_on(Switch::CircuitBreaker) {
            return true;
        }
        let mut inner = self.inner.lock().expect("breaker lock poisoned");
        match inner.state {
            BreakerState::Closed => true,
            BreakerState::Open if self.clock.now_ms() >= inner.open_until_ms => {
                inner.state = BreakerState::HalfOpen;
                true
            }
            BreakerState::Open | BreakerState::HalfOpen => {
                self.fast_failed.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// Count a call's result.
    fn record(&self, ok: bool) {
        let mut inner = self.inner.lock().expect("breaker lock poisoned");
        if ok {
            inner.state = BreakerState::Closed;
            inner.failures = 0;
            return;
        }
        inner.failures = inner.failures.saturating_add(1);
        let reopen = inner.state == BreakerState::HalfOpen;
        if reopen || inner.failures >= self.config.failure_threshold {
            inner.state = BreakerState::Open;
            inner.open_until_ms = self.clock.now_ms().saturating_add(self.config.open_ms);
            inner.failures = 0;
            self.trips.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Run `call` through the breaker; fail fast with `open` while it is open.
    async fn call<T, E>(
        &self,
        call: impl Future<Output = Result<T, E>>,
        open: impl FnOnce(String) -> E,
        counts: impl Fn(&E) -> bool,
    ) -> Result<T, E> {
        if !self.allow() {
            return Err(open(format!("circuit open: {} (failing fast)", self.name)));
        }
        let result = call.await;
        match &result {
            Ok(_) => self.record(true),
            Err(e) if counts(e) => self.record(false),
            // A caller's mistake says nothing about the downstream's health.
            Err(_) => {}
        }
        result
    }

    /// The figures now.
    pub fn figures(&self) -> BreakerFigures {
        BreakerFigures {
            state: self.inner.lock().expect("breaker lock poisoned").state,
            trips: self.trips.load(Ordering::Relaxed),
            fast_failed: self.fast_failed.load(Ordering::Relaxed),
        }
    }
}

/// Limits and breakers of one wallet instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct StabilityFigures {
    /// Issue requests turned away by the ingress limits.
    pub rate_limited: u64,
    /// The KV's breaker.
    pub kv_breaker: BreakerFigures,
    /// The ledger's breaker.
    pub ledger_breaker: BreakerFigures,
}

/// The KV behind a breaker.
#[derive(Debug)]
pub struct BreakerKv {
    inner: Arc<dyn Kv>,
    breaker: Arc<Breaker>,
}

impl BreakerKv {
    /// Guard `inner` with `breaker`.
    pub fn new(inner: Arc<dyn Kv>, breaker: Arc<Breaker>) -> Self {
        Self { inner, breaker }
    }

    async fn call<T>(&self, call: impl Future<Output = Result<T, KvError>>) -> Result<T, KvError> {
        self.breaker
            .call(call, KvError::Store, |e| matches!(e, KvError::Store(_)))
            .await
    }
}

#[async_trait]
impl Kv for BreakerKv {
    async fn incr_by(&self, key: &str, delta: i64) -> Result<i64, KvError> {
        self.call(self.inner.incr_by(key, delta)).await
    }
    async fn counter(&self, key: &str) -> Result<i64, KvError> {
        self.call(self.inner.counter(key)).await
    }
    async fn consume_within(&self, key: &str, n: u64, limit: u64) -> Result<Consume, KvError> {
        self.call(self.inner.consume_within(key, n, limit)).await
    }
    async fn consume_up_to(&self, key: &str, n: u64, limit: u64) -> Result<u64, KvError> {
        self.call(self.inner.consume_up_to(key, n, limit)).await
    }
    async fn release(&self, key: &str, n: u64) -> Result<u64, KvError> {
        self.call(self.inner.release(key, n)).await
    }
    async fn hold(&self, key: &str, value: &str) -> Result<Hold, KvError> {
        self.call(self.inner.hold(key, value)).await
    }
    async fn unhold(&self, key: &str, value: &str) -> Result<u64, KvError> {
        self.call(self.inner.unhold(key, value)).await
    }
    async fn set_add(&self, key: &str, member: &str) -> Result<bool, KvError> {
        self.call(self.inner.set_add(key, member)).await
    }
    async fn set_contains(&self, key: &str, member: &str) -> Result<bool, KvError> {
        self.call(self.inner.set_contains(key, member)).await
    }
    async fn put_status(&self, key: &str, status: u8, ttl_ms: Option<u64>) -> Result<(), KvError> {
        self.call(self.inner.put_status(key, status, ttl_ms)).await
    }
    async fn status(&self, key: &str) -> Result<Option<u8>, KvError> {
        self.call(self.inner.status(key)).await
    }
    async fn queue_push(
        &self,
        key: &str,
        item: &[u8],
        ttl_ms: Option<u64>,
    ) -> Result<u64, KvError> {
        self.call(self.inner.queue_push(key, item, ttl_ms)).await
    }
    async fn queue_pop(&self, key: &str, max: usize) -> Result<Vec<Vec<u8>>, KvError> {
        self.call(self.inner.queue_pop(key, max)).await
    }
    async fn counters_with_prefix(&self, prefix: &str) -> Result<Vec<(String, i64)>, KvError> {
        self.call(self.inner.counters_with_prefix(prefix)).await
    }
    async fn record_token(
        &self,
        record_key: &str,
        token: &[u8],
        list_key: &str,
        queue_key: &str,
    ) -> Result<Option<Vec<u8>>, KvError> {
        self.call(
            self.inner
                .record_token(record_key, token, list_key, queue_key),
        )
        .await
    }
    async fn bytes(&self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        self.call(self.inner.bytes(key)).await
    }
    async fn list_range(&self, key: &str, max: usize) -> Result<Vec<Vec<u8>>, KvError> {
        self.call(self.inner.list_range(key, max)).await
    }
    async fn queue_len(&self, key: &str) -> Result<u64, KvError> {
        self.call(self.inner.queue_len(key)).await
    }
    async fn queue_claim(
        &self,
        queue_key: &str,
        inflight_key: &str,
        max: usize,
        now_ms: u64,
    ) -> Result<Vec<Vec<u8>>, KvError> {
        self.call(self.inner.queue_claim(queue_key, inflight_key, max, now_ms))
            .await
    }
    async fn inflight_due(
        &self,
        inflight_key: &str,
        due_ms: u64,
        max: usize,
    ) -> Result<Vec<Vec<u8>>, KvError> {
        self.call(self.inner.inflight_due(inflight_key, due_ms, max))
            .await
    }
    async fn inflight_remove(&self, inflight_key: &str, member: &[u8]) -> Result<bool, KvError> {
        self.call(self.inner.inflight_remove(inflight_key, member))
            .await
    }
    async fn inflight_len(&self, inflight_key: &str) -> Result<u64, KvError> {
        self.call(self.inner.inflight_len(inflight_key)).await
    }
    async fn record_order(
        &self,
        record_key: &str,
        record: &[u8],
        open_key: &str,
        now_ms: u64,
    ) -> Result<Option<Vec<u8>>, KvError> {
        self.call(
            self.inner
                .record_order(record_key, record, open_key, now_ms),
        )
        .await
    }
    async fn compare_and_set(
        &self,
        key: &str,
        expected: &[u8],
        new: &[u8],
    ) -> Result<bool, KvError> {
        self.call(self.inner.compare_and_set(key, expected, new))
            .await
    }
    async fn scored_add(&self, key: &str, member: &[u8], score: u64) -> Result<(), KvError> {
        self.call(self.inner.scored_add(key, member, score)).await
    }
    async fn try_lock(&self, key: &str, owner: &str, ttl_ms: u64) -> Result<bool, KvError> {
        self.call(self.inner.try_lock(key, owner, ttl_ms)).await
    }
    async fn unlock(&self, key: &str, owner: &str) -> Result<bool, KvError> {
        self.call(self.inner.unlock(key, owner)).await
    }
}

/// The ledger behind a breaker.
#[derive(Debug)]
pub struct BreakerLedger {
    inner: Arc<dyn Ledger>,
    breaker: Arc<Breaker>,
}

impl BreakerLedger {
    /// Guard `inner` with `breaker`.
    pub fn new(inner: Arc<dyn Ledger>, breaker: Arc<Breaker>) -> Self {
        Self { inner, breaker }
    }

    async fn call<T>(
        &self,
        call: impl Future<Output = Result<T, LedgerError>>,
    ) -> Result<T, LedgerError> {
        self.breaker
            .call(call, LedgerError::Store, |e| {
                matches!(e, LedgerError::Store(_))
            })
            .await
    }
}

#[async_trait]
impl Ledger for BreakerLedger {
    async fn credit_batch(&self, credits: &[Credit]) -> Result<Vec<CreditOutcome>, LedgerError> {
        self.call(self.inner.credit_batch(credits)).await
    }
    async fn lookup_credit(
        &self,
        child_id: crate::ChildId,
        order_no: &OrderNo,
    ) -> Result<Option<Entry>, LedgerError> {
        self.call(self.inner.lookup_credit(child_id, order_no))
            .await
    }
    async fn withdraw(&self, withdrawal: &Withdrawal) -> Result<WithdrawOutcome, LedgerError> {
        self.call(self.inner.withdraw(withdrawal)).await
    }
    async fn account(&self, key: AccountKey) -> Result<AccountState, LedgerError> {
        self.call(self.inner.account(key)).await
    }
    async fn history(
        &self,
        key: AccountKey,
        cursor: Option<Cursor>,
        limit: usize,
    ) -> Result<HistoryPage, LedgerError> {
        self.call(self.inner.history(key, cursor, limit)).await
    }
    async fn snapshot(&self) -> Result<LedgerSnapshot, LedgerError> {
        self.call(self.inner.snapshot()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::kv::{KvFaults, MemoryKv};

    #[test]
    fn limiter_runs_on_the_injected_clock() {
        let clock = Arc::new(ManualClock::new(1_000_000));
        let limiter = RateLimiter::new(100, clock.clone());
        let burst = (0..1_000).filter(|_| limiter.try_acquire()).count();
        assert_eq!(burst, 100, "one second's worth at once");
        assert!(!limiter.try_acquire());
        clock.advance(10);
        assert!(limiter.try_acquire(), "one permit per 10 ms");
        assert!(!limiter.try_acquire());
        clock.advance(1_000);
        assert_eq!((0..1_000).filter(|_| limiter.try_acquire()).count(), 100);
    }

    #[test]
    fn ingress_limits_split_the_scene_total_over_instances() {
        let clock = Arc::new(ManualClock::new(0));
        let limits = IngressLimits::new(clock.clone(), 4);
        let passed = (0..1_000).filter(|_| limits.admit(301, 400)).count();
        assert_eq!(passed, 100, "400 QPS over 4 instances");
        assert_eq!(limits.limited(), 900);
        assert_eq!(
            (0..10).filter(|_| limits.admit(302, 400)).count(),
            10,
            "per scene"
        );
    }

    #[test]
    fn breaker_opens_fails_fast_probes_and_closes() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let clock = Arc::new(ManualClock::new(0));
        let switches = Arc::new(Switches::default());
        let inner = Arc::new(MemoryKv::new(clock.clone()));
        let breaker = Arc::new(Breaker::new(
            "kv",
            BreakerConfig {
                failure_threshold: 3,
                open_ms: 500,
            },
            clock.clone(),
            switches.clone(),
        ));
        let kv = BreakerKv::new(inner.clone(), breaker.clone());
        inner.set_faults(KvFaults {
            down: true,
            ..KvFaults::default()
        });
        for _ in 0..3 {
            assert!(runtime.block_on(kv.incr_by("c", 1)).is_err());
        }
        assert_eq!(breaker.figures().state, BreakerState::Open);
        inner.set_faults(KvFaults::default());
        let fast = runtime.block_on(kv.incr_by("c", 1));
        assert!(
            matches!(&fast, Err(KvError::Store(m)) if m.contains("circuit open")),
            "{fast:?}"
        );
        assert_eq!(
            runtime.block_on(inner.counter("c")).ok(),
            Some(0),
            "never reached"
        );
        switches.set(Switch::CircuitBreaker, false);
        assert!(
            runtime.block_on(kv.incr_by("c", 1)).is_ok(),
            "switched off: passes"
        );
        switches.set(Switch::CircuitBreaker, true);
        clock.advance(500);
        assert!(runtime.block_on(kv.incr_by("c", 1)).is_ok(), "the probe");
        let figures = breaker.figures();
        assert_eq!(figures.state, BreakerState::Closed);
        assert_eq!((figures.trips, figures.fast_failed), (1, 1));
        // A failing probe reopens at once.
        inner.set_faults(KvFaults {
            down: true,
            ..KvFaults::default()
        });
        for _ in 0..3 {
            let _ = runtime.block_on(kv.incr_by("c", 1));
        }
        clock.advance(500);
        assert!(runtime.block_on(kv.incr_by("c", 1)).is_err());
        assert_eq!(breaker.figures().state, BreakerState::Open);
        assert_eq!(
            breaker.figures().trips,
            3,
            "tripped, then reopened by the probe"
        );
    }
}
