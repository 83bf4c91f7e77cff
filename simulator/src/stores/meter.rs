//! Metered, fault-switchable wrappers around the two store traits.
//!
//! [`MeteredKv`] and [`MeteredLedger`] sit between the reference wallet and the
//! stores that serve a run. They count the operations the wallet really performs
//! (for the per-second series and for charging the capacity gates), and each has
//! a switch that takes its store "down": every call then fails at once with the
//! error an unreachable store gives, without reaching the store, so the wallet's
//! breakers, the credit worker's retries and the coupon pipeline react for real.
//!
//! Counting costs one relaxed atomic add per call (two for a ledger batch: the
//! transaction and its rows); a call that is up returns the inner store's own
//! future untouched. The one exception is [`MeteredLedger::with_clock`], which
//! asks for the delay of every posted credit and so looks at batch outcomes.
//!
//! Classes: a **write** is a call that may change the store, whether or not it
//! does this time (a `consume_within` that is `Exceeded`, a `set_add` of a
//! member already there, a `compare_and_set` that finds another value, a
//! `queue_pop` of an empty queue); Redis counts a script the same way. Every
//! other call is a **read**. Each method of the impls below names its class.
//!
//! The traits are `#[async_trait]` traits; this crate does not depend on that
//! macro, so the impls below spell out the signature it expands to (one boxed
//! future per call, with every borrowed argument's lifetime outliving it). That
//! also lets a call that is up hand back the inner store's boxed future as is.

use std::future::{self, Future};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use reference::kv::{Consume, Hold, Kv, KvError};
use reference::ledger::{
    AccountKey, AccountState, Award, Credit, CreditOutcome, Cursor, Entry, EntryKind, HistoryPage,
    Ledger, LedgerError, LedgerSnapshot, WithdrawOutcome, Withdrawal,
};
use reference::{Clock, Millis, OrderNo};

/// What `async_trait` makes of an `async fn` returning `Result<T, E>`.
type Call<'f, T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send + 'f>>;

/// Most credit delays one [`CreditWindow`] keeps; credits past it are counted in
/// [`CreditWindow::credited`] only. The engine drains the window every virtual
/// second, so this bounds one second's postings.
pub const CREDIT_WINDOW_DELAYS_MAX: usize = 1 << 20;

/// Operation counts of one store, since it was wrapped or over one window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct StoreOps {
    /// Every call: `reads + writes + failed`.
    pub calls: u64,
    /// Calls that reached the store and cannot change it.
    pub reads: u64,
    /// Calls that reached the store and may change it (a ledger batch is one
    /// write, one transaction, however many credits it holds).
    pub writes: u64,
    /// Ledger only: credits posted in batches that reached the store (0 for a KV).
    pub rows: u64,
    /// Calls failed by the down switch; they never reached the store. Errors of
    /// the store itself are not counted here (that would cost a look at every
    /// result): they are the inner store's and show in the wallet's outcomes.
    pub failed: u64,
}

impl StoreOps {
    /// What happened between `earlier` and `self` (both totals of one store).
    fn since(self, earlier: StoreOps) -> StoreOps {
        // Totals only grow, and windows are taken under one lock: a smaller total
        // now would be a bug.
        StoreOps {
            calls: self.calls - earlier.calls,
            reads: self.reads - earlier.reads,
            writes: self.writes - earlier.writes,
            rows: self.rows - earlier.rows,
            failed: self.failed - earlier.failed,
        }
    }
}

/// Whether a call can change the store; see the module doc.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    Read,
    Write,
}

/// The counters and the switch both wrappers share.
#[derive(Debug, Default)]
struct Meter {
    down: AtomicBool,
    reads: AtomicU64,
    writes: AtomicU64,
    rows: AtomicU64,
    failed: AtomicU64,
    /// The totals at the last [`Meter::take_window`].
    window_start: Mutex<StoreOps>,
}

impl Meter {
    /// Count one call; `false` when the store is down (counted as failed).
    fn pass(&self, class: Class) -> bool {
        if self.down.load(Ordering::Relaxed) {
            self.failed.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        let counter = match class {
            Class::Read => &self.reads,
            Class::Write => &self.writes,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        true
    }

    fn figures(&self) -> StoreOps {
        let reads = self.reads.load(Ordering::Relaxed);
        let writes = self.writes.load(Ordering::Relaxed);
        let failed = self.failed.load(Ordering::Relaxed);
        StoreOps {
            calls: reads + writes + failed,
            reads,
            writes,
            rows: self.rows.load(Ordering::Relaxed),
            failed,
        }
    }

    fn take_window(&self) -> StoreOps {
        // A poisoned lock means a panic while swapping two plain structs: a bug.
        let mut start = self
            .window_start
            .lock()
            .expect("meter window lock poisoned");
        let now = self.figures();
        let window = now.since(*start);
        *start = now;
        window
    }
}

/// A call refused because the store is down.
fn refused<'f, T: Send + 'f, E: Send + 'f>(error: E) -> Call<'f, T, E> {
    Box::pin(future::ready(Err(error)))
}

/// What [`MemoryKv`](reference::kv::MemoryKv) answers when its `KvFaults { down:
/// true }` is set: a store error, the kind breakers count and callers retry.
fn kv_down() -> KvError {
    KvError::Store("kv is down (simulated outage)".to_owned())
}

/// What the SQL ledgers answer when the server cannot be reached: sqlx's
/// connection error maps to [`LedgerError::Store`], the kind breakers count and
/// the credit worker retries.
fn ledger_down() -> LedgerError {
    LedgerError::Store("ledger is down (simulated outage: connection refused)".to_owned())
}

/// A KV that counts its calls and can be switched down.
#[derive(Debug)]
pub struct MeteredKv {
    inner: Arc<dyn Kv>,
    meter: Meter,
}

impl MeteredKv {
    /// Meter `inner`; up, with every count at zero.
    pub fn new(inner: Arc<dyn Kv>) -> Self {
        Self {
            inner,
            meter: Meter::default(),
        }
    }

    /// Take the store down (every call fails without reaching it) or bring it up.
    pub fn set_down(&self, down: bool) {
        self.meter.down.store(down, Ordering::Relaxed);
    }

    /// Whether the store is switched down.
    pub fn is_down(&self) -> bool {
        self.meter.down.load(Ordering::Relaxed)
    }

    /// The counts since the store was wrapped.
    pub fn figures(&self) -> StoreOps {
        self.meter.figures()
    }

    /// The counts since the previous `take_window` (or since the store was
    /// wrapped): one row of a per-second series.
    pub fn take_window(&self) -> StoreOps {
        self.meter.take_window()
    }

    /// Count a call of `class` and make it, or refuse it when down.
    fn call<'f, T: Send + 'f>(
        &self,
        class: Class,
        call: impl FnOnce() -> Call<'f, T, KvError>,
    ) -> Call<'f, T, KvError> {
        if self.meter.pass(class) {
            call()
        } else {
            refused(kv_down())
        }
    }
}

impl Kv for MeteredKv {
    fn incr_by<'s, 'k, 'f>(&'s self, key: &'k str, delta: i64) -> Call<'f, i64, KvError>
    where
        's: 'f,
        'k: 'f,
        Self: 'f,
    {
        self.call(Class::Write, || self.inner.incr_by(key, delta))
    }

    fn counter<'s, 'k, 'f>(&'s self, key: &'k str) -> Call<'f, i64, KvError>
    where
        's: 'f,
        'k: 'f,
        Self: 'f,
    {
        self.call(Class::Read, || self.inner.counter(key))
    }

    fn consume_within<'s, 'k, 'f>(
        &'s self,
        key: &'k str,
        n: u64,
        limit: u64,
    ) -> Call<'f, Consume, KvError>
    where
        's: 'f,
        'k: 'f,
        Self: 'f,
    {
        self.call(Class::Write, || self.inner.consume_within(key, n, limit))
    }

    fn consume_up_to<'s, 'k, 'f>(
        &'s self,
        key: &'k str,
        n: u64,
        limit: u64,
    ) -> Call<'f, u64, KvError>
    where
        's: 'f,
        'k: 'f,
        Self: 'f,
    {
        self.call(Class::Write, || self.inner.consume_up_to(key, n, limit))
    }

    fn release<'s, 'k, 'f>(&'s self, key: &'k str, n: u64) -> Call<'f, u64, KvError>
    where
        's: 'f,
        'k: 'f,
        Self: 'f,
    {
        self.call(Class::Write, || self.inner.release(key, n))
    }

    fn hold<'s, 'k, 'v, 'f>(&'s self, key: &'k str, value: &'v str) -> Call<'f, Hold, KvError>
    where
        's: 'f,
        'k: 'f,
        'v: 'f,
        Self: 'f,
    {
        self.call(Class::Write, || self.inner.hold(key, value))
    }

    fn unhold<'s, 'k, 'v, 'f>(&'s self, key: &'k str, value: &'v str) -> Call<'f, u64, KvError>
    where
        's: 'f,
        'k: 'f,
        'v: 'f,
        Self: 'f,
    {
        self.call(Class::Write, || self.inner.unhold(key, value))
    }

    fn set_add<'s, 'k, 'm, 'f>(&'s self, key: &'k str, member: &'m str) -> Call<'f, bool, KvError>
    where
        's: 'f,
        'k: 'f,
        'm: 'f,
        Self: 'f,
    {
        self.call(Class::Write, || self.inner.set_add(key, member))
    }

    fn set_contains<'s, 'k, 'm, 'f>(
        &'s self,
        key: &'k str,
        member: &'m str,
    ) -> Call<'f, bool, KvError>
    where
        's: 'f,
        'k: 'f,
        'm: 'f,
        Self: 'f,
    {
        self.call(Class::Read, || self.inner.set_contains(key, member))
    }

    fn put_status<'s, 'k, 'f>(
        &'s self,
        key: &'k str,
        status: u8,
        ttl_ms: Option<u64>,
    ) -> Call<'f, (), KvError>
    where
        's: 'f,
        'k: 'f,
        Self: 'f,
    {
        self.call(Class::Write, || self.inner.put_status(key, status, ttl_ms))
    }

    fn status<'s, 'k, 'f>(&'s self, key: &'k str) -> Call<'f, Option<u8>, KvError>
    where
        's: 'f,
        'k: 'f,
        Self: 'f,
    {
        self.call(Class::Read, || self.inner.status(key))
    }

    fn queue_push<'s, 'k, 'i, 'f>(
        &'s self,
        key: &'k str,
        item: &'i [u8],
        ttl_ms: Option<u64>,
    ) -> Call<'f, u64, KvError>
    where
        's: 'f,
        'k: 'f,
        'i: 'f,
        Self: 'f,
    {
        self.call(Class::Write, || self.inner.queue_push(key, item, ttl_ms))
    }

    /// A write: it removes what it returns.
    fn queue_pop<'s, 'k, 'f>(&'s self, key: &'k str, max: usize) -> Call<'f, Vec<Vec<u8>>, KvError>
    where
        's: 'f,
        'k: 'f,
        Self: 'f,
    {
        self.call(Class::Write, || self.inner.queue_pop(key, max))
    }

    fn counters_with_prefix<'s, 'p, 'f>(
        &'s self,
        prefix: &'p str,
    ) -> Call<'f, Vec<(String, i64)>, KvError>
    where
        's: 'f,
        'p: 'f,
        Self: 'f,
    {
        self.call(Class::Read, || self.inner.counters_with_prefix(prefix))
    }

    fn record_token<'s, 'r, 't, 'l, 'q, 'f>(
        &'s self,
        record_key: &'r str,
        token: &'t [u8],
        list_key: &'l str,
        queue_key: &'q str,
    ) -> Call<'f, Option<Vec<u8>>, KvError>
    where
        's: 'f,
        'r: 'f,
        't: 'f,
        'l: 'f,
        'q: 'f,
        Self: 'f,
    {
        self.call(Class::Write, || {
            self.inner
                .record_token(record_key, token, list_key, queue_key)
        })
    }

    fn bytes<'s, 'k, 'f>(&'s self, key: &'k str) -> Call<'f, Option<Vec<u8>>, KvError>
    where
        's: 'f,
        'k: 'f,
        Self: 'f,
    {
        self.call(Class::Read, || self.inner.bytes(key))
    }

    fn list_range<'s, 'k, 'f>(&'s self, key: &'k str, max: usize) -> Call<'f, Vec<Vec<u8>>, KvError>
    where
        's: 'f,
        'k: 'f,
        Self: 'f,
    {
        self.call(Class::Read, || self.inner.list_range(key, max))
    }

    fn queue_len<'s, 'k, 'f>(&'s self, key: &'k str) -> Call<'f, u64, KvError>
    where
        's: 'f,
        'k: 'f,
        Self: 'f,
    {
        self.call(Class::Read, || self.inner.queue_len(key))
    }

    fn queue_claim<'s, 'q, 'i, 'f>(
        &'s self,
        queue_key: &'q str,
        inflight_key: &'i str,
        max: usize,
        now_ms: u64,
    ) -> Call<'f, Vec<Vec<u8>>, KvError>
    where
        's: 'f,
        'q: 'f,
        'i: 'f,
        Self: 'f,
    {
        self.call(Class::Write, || {
            self.inner.queue_claim(queue_key, inflight_key, max, now_ms)
        })
    }

    fn inflight_due<'s, 'i, 'f>(
        &'s self,
        inflight_key: &'i str,
        due_ms: u64,
        max: usize,
    ) -> Call<'f, Vec<Vec<u8>>, KvError>
    where
        's: 'f,
        'i: 'f,
        Self: 'f,
    {
        self.call(Class::Read, || {
            self.inner.inflight_due(inflight_key, due_ms, max)
        })
    }

    fn inflight_remove<'s, 'i, 'm, 'f>(
        &'s self,
        inflight_key: &'i str,
        member: &'m [u8],
    ) -> Call<'f, bool, KvError>
    where
        's: 'f,
        'i: 'f,
        'm: 'f,
        Self: 'f,
    {
        self.call(Class::Write, || {
            self.inner.inflight_remove(inflight_key, member)
        })
    }

    fn inflight_len<'s, 'i, 'f>(&'s self, inflight_key: &'i str) -> Call<'f, u64, KvError>
    where
        's: 'f,
        'i: 'f,
        Self: 'f,
    {
        self.call(Class::Read, || self.inner.inflight_len(inflight_key))
    }

    fn record_order<'s, 'r, 'd, 'o, 'f>(
        &'s self,
        record_key: &'r str,
        record: &'d [u8],
        open_key: &'o str,
        now_ms: u64,
    ) -> Call<'f, Option<Vec<u8>>, KvError>
    where
        's: 'f,
        'r: 'f,
        'd: 'f,
        'o: 'f,
        Self: 'f,
    {
        self.call(Class::Write, || {
            self.inner
                .record_order(record_key, record, open_key, now_ms)
        })
    }

    fn compare_and_set<'s, 'k, 'e, 'n, 'f>(
        &'s self,
        key: &'k str,
        expected: &'e [u8],
        new: &'n [u8],
    ) -> Call<'f, bool, KvError>
    where
        's: 'f,
        'k: 'f,
        'e: 'f,
        'n: 'f,
        Self: 'f,
    {
        self.call(Class::Write, || {
            self.inner.compare_and_set(key, expected, new)
        })
    }

    fn scored_add<'s, 'k, 'm, 'f>(
        &'s self,
        key: &'k str,
        member: &'m [u8],
        score: u64,
    ) -> Call<'f, (), KvError>
    where
        's: 'f,
        'k: 'f,
        'm: 'f,
        Self: 'f,
    {
        self.call(Class::Write, || self.inner.scored_add(key, member, score))
    }

    fn try_lock<'s, 'k, 'o, 'f>(
        &'s self,
        key: &'k str,
        owner: &'o str,
        ttl_ms: u64,
    ) -> Call<'f, bool, KvError>
    where
        's: 'f,
        'k: 'f,
        'o: 'f,
        Self: 'f,
    {
        self.call(Class::Write, || self.inner.try_lock(key, owner, ttl_ms))
    }

    fn unlock<'s, 'k, 'o, 'f>(&'s self, key: &'k str, owner: &'o str) -> Call<'f, bool, KvError>
    where
        's: 'f,
        'k: 'f,
        'o: 'f,
        Self: 'f,
    {
        self.call(Class::Write, || self.inner.unlock(key, owner))
    }
}

/// Credits posted since the previous [`MeteredLedger::take_credit_window`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CreditWindow {
    /// Credits newly posted (`Credited` outcomes; duplicates and conflicts post
    /// nothing), all of them.
    pub credited: u64,
    /// For each, in posting order, milliseconds from the credit's request
    /// (`Credit::at_ms`) to its posting; at most [`CREDIT_WINDOW_DELAYS_MAX`].
    pub delays: Vec<u64>,
    /// The same for coupon credits only (their own SLO: seed 003's "99% within
    /// 0.5 s"; a pipeline credit is dated at its acceptance); at most
    /// [`CREDIT_WINDOW_DELAYS_MAX`].
    pub coupon_delays: Vec<u64>,
}

/// A ledger that counts its calls and can be switched down.
#[derive(Debug)]
pub struct MeteredLedger {
    inner: Arc<dyn Ledger>,
    meter: Meter,
    /// Set by [`MeteredLedger::with_clock`]: then posted credits' delays are kept.
    clock: Option<Arc<dyn Clock>>,
    credits: Arc<Mutex<CreditWindow>>,
}

impl MeteredLedger {
    /// Meter `inner`; up, with every count at zero. Credit delays are not kept
    /// (see [`MeteredLedger::with_clock`]).
    pub fn new(inner: Arc<dyn Ledger>) -> Self {
        Self {
            inner,
            meter: Meter::default(),
            clock: None,
            credits: Arc::new(Mutex::new(CreditWindow::default())),
        }
    }

    /// Also keep, for every credit posted, the delay from its request to now on
    /// `clock`, for [`MeteredLedger::take_credit_window`]. This looks at every
    /// batch's outcomes: one more boxed future per `credit_batch`.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Take the store down (every call fails without reaching it) or bring it up.
    pub fn set_down(&self, down: bool) {
        self.meter.down.store(down, Ordering::Relaxed);
    }

    /// Whether the store is switched down.
    pub fn is_down(&self) -> bool {
        self.meter.down.load(Ordering::Relaxed)
    }

    /// The counts since the store was wrapped.
    pub fn figures(&self) -> StoreOps {
        self.meter.figures()
    }

    /// The counts since the previous `take_window` (or since the store was
    /// wrapped): one row of a per-second series.
    pub fn take_window(&self) -> StoreOps {
        self.meter.take_window()
    }

    /// The credits posted since the previous call. Only a ledger made
    /// [`MeteredLedger::with_clock`] keeps them; asking another is a bug.
    pub fn take_credit_window(&self) -> CreditWindow {
        assert!(
            self.clock.is_some(),
            "take_credit_window needs MeteredLedger::with_clock"
        );
        std::mem::take(&mut *self.credits.lock().expect("credit window lock poisoned"))
    }

    /// Count a call of `class` and make it, or refuse it when down.
    fn call<'f, T: Send + 'f>(
        &self,
        class: Class,
        call: impl FnOnce() -> Call<'f, T, LedgerError>,
    ) -> Call<'f, T, LedgerError> {
        if self.meter.pass(class) {
            call()
        } else {
            refused(ledger_down())
        }
    }
}

/// Note every `Credited` outcome's delay at `now_ms` in `window`.
fn note_credits(window: &Mutex<CreditWindow>, outcomes: &[CreditOutcome], now_ms: Millis) {
    let mut window = window.lock().expect("credit window lock poisoned");
    for outcome in outcomes {
        if let CreditOutcome::Credited { entry } = outcome {
            window.credited += 1;
            let delay = now_ms.saturating_sub(entry.at_ms);
            if window.delays.len() < CREDIT_WINDOW_DELAYS_MAX {
                window.delays.push(delay);
            }
            let coupon = matches!(
                entry.kind,
                EntryKind::Credit {
                    award: Award::Coupon { .. },
                    ..
                }
            );
            if coupon && window.coupon_delays.len() < CREDIT_WINDOW_DELAYS_MAX {
                window.coupon_delays.push(delay);
            }
        }
    }
}

impl Ledger for MeteredLedger {
    /// A write: one transaction; its credits are counted as rows.
    fn credit_batch<'s, 'c, 'f>(
        &'s self,
        credits: &'c [Credit],
    ) -> Call<'f, Vec<CreditOutcome>, LedgerError>
    where
        's: 'f,
        'c: 'f,
        Self: 'f,
    {
        if !self.meter.pass(Class::Write) {
            return refused(ledger_down());
        }
        self.meter
            .rows
            .fetch_add(credits.len() as u64, Ordering::Relaxed);
        let batch = self.inner.credit_batch(credits);
        let Some(clock) = &self.clock else {
            return batch;
        };
        let (clock, window) = (clock.clone(), self.credits.clone());
        Box::pin(async move {
            let outcomes = batch.await?;
            note_credits(&window, &outcomes, clock.now_ms());
            Ok(outcomes)
        })
    }

    fn lookup_credit<'s, 'o, 'f>(
        &'s self,
        child_id: reference::ChildId,
        order_no: &'o OrderNo,
    ) -> Call<'f, Option<Entry>, LedgerError>
    where
        's: 'f,
        'o: 'f,
        Self: 'f,
    {
        self.call(Class::Read, || self.inner.lookup_credit(child_id, order_no))
    }

    fn withdraw<'s, 'w, 'f>(
        &'s self,
        withdrawal: &'w Withdrawal,
    ) -> Call<'f, WithdrawOutcome, LedgerError>
    where
        's: 'f,
        'w: 'f,
        Self: 'f,
    {
        self.call(Class::Write, || self.inner.withdraw(withdrawal))
    }

    fn account<'s, 'f>(&'s self, key: AccountKey) -> Call<'f, AccountState, LedgerError>
    where
        's: 'f,
        Self: 'f,
    {
        self.call(Class::Read, || self.inner.account(key))
    }

    fn history<'s, 'f>(
        &'s self,
        key: AccountKey,
        cursor: Option<Cursor>,
        limit: usize,
    ) -> Call<'f, HistoryPage, LedgerError>
    where
        's: 'f,
        Self: 'f,
    {
        self.call(Class::Read, || self.inner.history(key, cursor, limit))
    }

    fn snapshot<'s, 'f>(&'s self) -> Call<'f, LedgerSnapshot, LedgerError>
    where
        's: 'f,
        Self: 'f,
    {
        self.call(Class::Read, || self.inner.snapshot())
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use reference::config::datetime_ms;
    use reference::kv::MemoryKv;
    use reference::ledger::{Award, MemoryLedger};
    use reference::wallet::{IssueOutcome, IssueRequest, Wallet, WalletError};
    use reference::{ActivityTree, ManualClock};

    use super::*;

    /// The formal child of the Spring Festival tree is open then.
    const NOW: &str = "2027-02-10T20:00:00+08:00";

    struct Fixture {
        clock: Arc<ManualClock>,
        kv: Arc<MemoryKv>,
        ledger: Arc<MemoryLedger>,
        metered_kv: Arc<MeteredKv>,
        metered_ledger: Arc<MeteredLedger>,
        wallet: Wallet,
        runtime: tokio::runtime::Runtime,
    }

    fn fixture() -> Fixture {
        let now_ms = datetime_ms(&NOW.parse().expect("datetime")).expect("ms");
        let clock = Arc::new(ManualClock::new(now_ms));
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../scenarios/activities/spring-festival.toml");
        let tree = Arc::new(ActivityTree::from_file(&path).expect("spring festival tree"));
        let kv = Arc::new(MemoryKv::new(clock.clone()));
        let ledger = Arc::new(MemoryLedger::new());
        let metered_kv = Arc::new(MeteredKv::new(kv.clone()));
        let metered_ledger = Arc::new(MeteredLedger::new(ledger.clone()).with_clock(clock.clone()));
        let wallet = Wallet::new(
            tree,
            metered_ledger.clone(),
            metered_kv.clone(),
            clock.clone(),
        );
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        Fixture {
            clock,
            kv,
            ledger,
            metered_kv,
            metered_ledger,
            wallet,
            runtime,
        }
    }

    /// A cash award of scene 304 (sync crediting) for user `act_id`.
    fn cash(act_id: u64) -> IssueRequest {
        IssueRequest {
            app_id: 1,
            activity_id: 2027,
            order_no: format!("{act_id}_304_1_1_0"),
            award_id: 9002,
            amount_cents: 500,
        }
    }

    impl Fixture {
        fn issue(&self, act_id: u64) -> Result<IssueOutcome, WalletError> {
            self.runtime.block_on(self.wallet.issue(&cash(act_id)))
        }

        fn inner_state(&self) -> (LedgerSnapshot, Vec<(String, i64)>) {
            let snapshot = self.runtime.block_on(self.ledger.snapshot());
            let counters = self.runtime.block_on(self.kv.counters_with_prefix(""));
            (snapshot.expect("snapshot"), counters.expect("counters"))
        }
    }

    fn ops(reads: u64, writes: u64, rows: u64, failed: u64) -> StoreOps {
        StoreOps {
            calls: reads + writes + failed,
            reads,
            writes,
            rows,
            failed,
        }
    }

    #[test]
    fn wallet_calls_are_counted_and_windows_reset() {
        let f = fixture();
        let outcome = f.issue(17).expect("issue");
        assert!(
            matches!(outcome, IssueOutcome::Issued { .. }),
            "{outcome:?}"
        );
        // The idempotency lookup, then one batch of one credit; the budget consume.
        assert_eq!(f.metered_ledger.figures(), ops(1, 1, 1, 0));
        assert_eq!(f.metered_kv.figures(), ops(0, 1, 0, 0));
        assert_eq!(f.metered_ledger.take_window(), ops(1, 1, 1, 0));
        assert_eq!(f.metered_kv.take_window(), ops(0, 1, 0, 0));
        assert_eq!(f.metered_ledger.take_window(), StoreOps::default());
        assert_eq!(f.metered_kv.take_window(), StoreOps::default());

        let replay = f.issue(17).expect("replay");
        assert!(
            matches!(replay, IssueOutcome::Duplicate { .. }),
            "{replay:?}"
        );
        assert_eq!(
            f.metered_ledger.take_window(),
            ops(1, 0, 0, 0),
            "a replay stops at the lookup"
        );
        assert_eq!(f.metered_kv.take_window(), StoreOps::default());
        assert_eq!(
            f.metered_ledger.figures(),
            ops(2, 1, 1, 0),
            "totals keep counting"
        );

        let credits = f.metered_ledger.take_credit_window();
        assert_eq!(credits.credited, 1, "the replay posted nothing");
        assert_eq!(credits.delays, vec![0], "sync crediting posts at once");
        assert_eq!(
            f.metered_ledger.take_credit_window(),
            CreditWindow::default()
        );
    }

    #[test]
    fn down_refuses_without_reaching_the_store_and_up_serves_again() {
        let f = fixture();
        f.issue(1).expect("issue while up");
        let before = f.inner_state();
        let (kv_before, ledger_before) = (f.metered_kv.figures(), f.metered_ledger.figures());

        f.metered_ledger.set_down(true);
        assert!(f.metered_ledger.is_down());
        let err = f.issue(2).expect_err("the ledger is down");
        assert!(
            matches!(err, WalletError::Ledger(LedgerError::Store(_))),
            "{err:?}"
        );
        assert_eq!(f.inner_state(), before, "nothing reached the stores");
        assert_eq!(
            f.metered_ledger.figures().since(ledger_before),
            ops(0, 0, 0, 1),
            "the lookup was refused"
        );
        assert_eq!(
            f.metered_kv.figures(),
            kv_before,
            "the wallet stopped there"
        );
        f.metered_ledger.set_down(false);

        f.metered_kv.set_down(true);
        assert!(f.metered_kv.is_down());
        let err = f.issue(2).expect_err("the KV is down");
        assert!(matches!(err, WalletError::Kv(KvError::Store(_))), "{err:?}");
        assert_eq!(f.inner_state(), before, "nothing reached the stores");
        assert_eq!(f.metered_kv.figures().since(kv_before), ops(0, 0, 0, 1));
        f.metered_kv.set_down(false);

        let outcome = f.issue(2).expect("both up again");
        assert!(
            matches!(outcome, IssueOutcome::Issued { .. }),
            "{outcome:?}"
        );
        let (snapshot, _) = f.inner_state();
        assert_eq!(snapshot.entries.len(), 2);
        assert!(!f.metered_kv.is_down() && !f.metered_ledger.is_down());
    }

    #[test]
    fn classes_rows_and_credit_delays() {
        let f = fixture();
        let rt = &f.runtime;
        let kv: &dyn Kv = f.metered_kv.as_ref();
        assert_eq!(rt.block_on(kv.counter("c")).expect("read"), 0);
        assert!(rt.block_on(kv.set_add("s", "m")).expect("write"));
        assert!(
            !rt.block_on(kv.set_add("s", "m"))
                .expect("no change, still a write")
        );
        assert!(rt.block_on(kv.set_contains("s", "m")).expect("read"));
        assert_eq!(f.metered_kv.take_window(), ops(2, 2, 0, 0));

        let requested_ms = f.clock.now_ms();
        let credit = |order_no: &str| {
            Credit::new(
                202703,
                order_no.parse().expect("order number"),
                Award::Cash { amount_cents: 100 },
                requested_ms,
            )
        };
        let batch = [
            credit("5_304_1_1_0"),
            credit("6_304_1_1_0"),
            credit("5_304_1_1_0"),
        ];
        f.clock.advance(250);
        let ledger: &dyn Ledger = f.metered_ledger.as_ref();
        let outcomes = rt.block_on(ledger.credit_batch(&batch)).expect("batch");
        assert_eq!(outcomes.len(), 3);
        assert_eq!(
            f.metered_ledger.take_window(),
            ops(0, 1, 3, 0),
            "one transaction, three rows"
        );
        assert_eq!(
            f.metered_ledger.take_credit_window(),
            CreditWindow {
                credited: 2,
                delays: vec![250, 250],
                ..CreditWindow::default()
            },
            "the in-batch duplicate posts nothing"
        );

        f.metered_ledger.set_down(true);
        assert!(matches!(
            rt.block_on(ledger.credit_batch(&batch)),
            Err(LedgerError::Store(_))
        ));
        assert_eq!(
            f.metered_ledger.take_window(),
            ops(0, 0, 0, 1),
            "a refused batch posts no rows"
        );
        assert_eq!(
            f.metered_ledger.take_credit_window(),
            CreditWindow::default()
        );
    }

    #[test]
    #[should_panic(expected = "with_clock")]
    fn credit_window_without_a_clock_is_a_bug() {
        MeteredLedger::new(Arc::new(MemoryLedger::new())).take_credit_window();
    }
}
