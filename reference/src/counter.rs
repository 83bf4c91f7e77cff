//! The hot counter: the fireworks total shown live (seed 000 §4.5), 1.8M reads/s
//! and 300k writes/s against a single Redis key that tops out near 30k ops/s.
//! Both of the seed's plans, so they can be compared:
//!
//! - [`SplitCounter`] (plan 1): `N` keys by `act_id % N`, one `INCRBY` per write
//!   with no retry on timeout (a retry could double count), and a read that sums
//!   all `N` keys. A read whose fan-out partly times out returns a partial sum, so
//!   the shown value can go backwards; a timed-out write may be lost.
//! - [`LocalCounter`] (plan 2, the seed's choice): each instance adds writes into a
//!   local atomic; [`LocalCounter::tick`] moves the local delta into one KV key with
//!   a single `INCRBY` every interval (dual-written to a backup KV), and refreshes a
//!   local cached value that only ever moves up. Reads are served from the cache and
//!   wait (bounded) for the first refresh after start. KV load is `instances /
//!   interval`, whatever the traffic.
//!
//! Both count the KV calls they make ([`CounterStats`]) so the plans' costs are
//! measured, not estimated.

use std::fmt;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;

use crate::ActId;
use crate::clock::Millis;
use crate::kv::{Kv, KvError};
use crate::switches::{Switch, Switches};

/// Plan 1's default number of split keys (the seed's 100).
pub const SPLIT_KEYS_DEFAULT: u32 = 100;
/// Plan 2's default flush and refresh interval (the seed's 1 s).
pub const FLUSH_INTERVAL_MS_DEFAULT: u64 = 1_000;

/// KV calls a counter made, by kind.
#[derive(Debug, Default)]
pub struct CounterStats {
    kv_writes: AtomicU64,
    kv_reads: AtomicU64,
    kv_errors: AtomicU64,
    lost_writes: AtomicU64,
}

/// A copy of [`CounterStats`] at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CounterFigures {
    /// `INCRBY` calls sent.
    pub kv_writes: u64,
    /// `GET` calls sent.
    pub kv_reads: u64,
    /// Calls that failed (timeouts, store down).
    pub kv_errors: u64,
    /// Amount written that is known not to have reached the KV and never will
    /// (plan 1 does not retry).
    pub lost_amount: u64,
}

impl CounterFigures {
    /// Every KV call.
    pub fn kv_ops(&self) -> u64 {
        self.kv_writes + self.kv_reads
    }
}

impl CounterStats {
    /// The figures now.
    pub fn figures(&self) -> CounterFigures {
        CounterFigures {
            kv_writes: self.kv_writes.load(Ordering::Relaxed),
            kv_reads: self.kv_reads.load(Ordering::Relaxed),
            kv_errors: self.kv_errors.load(Ordering::Relaxed),
            lost_amount: self.lost_writes.load(Ordering::Relaxed),
        }
    }

    fn count<T>(&self, ops: &AtomicU64, result: &Result<T, KvError>) {
        ops.fetch_add(1, Ordering::Relaxed);
        if result.is_err() {
            self.kv_errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Plan 1: split keys, direct writes, fan-out reads.
pub struct SplitCounter {
    kv: Arc<dyn Kv>,
    keys: Vec<String>,
    stats: CounterStats,
}

impl fmt::Debug for SplitCounter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SplitCounter")
            .field("keys", &self.keys.len())
            .field("stats", &self.stats)
            .finish()
    }
}

/// A plan-1 read: the sum of the keys that answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct SplitRead {
    /// Sum over the keys that answered.
    pub value: i64,
    /// Keys whose read failed and were left out of the sum.
    pub missing_keys: u32,
}

impl SplitCounter {
    /// `split_keys` keys named `counter:{name}:{i}`.
    pub fn new(kv: Arc<dyn Kv>, name: &str, split_keys: u32) -> Self {
        let keys = (0..split_keys.max(1))
            .map(|i| format!("counter:{name}:{i}"))
            .collect();
        Self {
            kv,
            keys,
            stats: CounterStats::default(),
        }
    }

    /// Add `delta` to the key of `act_id`: one `INCRBY`, no retry. A failure is
    /// counted as lost (a timeout that did apply would make that an over-count;
    /// the memory KV's injected faults fail before applying).
    pub async fn add(&self, act_id: ActId, delta: i64) -> Result<(), KvError> {
        let key = &self.keys[(act_id % self.keys.len() as u64) as usize];
        let result = self.kv.incr_by(key, delta).await;
        self.stats.count(&self.stats.kv_writes, &result);
        if result.is_err() {
            self.stats
                .lost_writes
                .fetch_add(delta.unsigned_abs(), Ordering::Relaxed);
        }
        result.map(drop)
    }

    /// Sum every key; keys whose read fails are left out (the seed's "the result
    /// may be less than last time").
    pub async fn read(&self) -> SplitRead {
        let mut value = 0i64;
        let mut missing_keys = 0u32;
        for key in &self.keys {
            let result = self.kv.counter(key).await;
            self.stats.count(&self.stats.kv_reads, &result);
            match result {
                Ok(n) => value = value.saturating_add(n),
                Err(_) => missing_keys += 1,
            }
        }
        SplitRead {
            value,
            missing_keys,
        }
    }

    /// The KV calls made so far.
    pub fn figures(&self) -> CounterFigures {
        self.stats.figures()
    }
}

/// Where plan 2 reads from and writes to.
#[derive(Clone, Debug)]
pub struct LocalCounterConfig {
    /// The one KV key: `counter:{name}`.
    pub name: String,
    /// Flush and refresh interval.
    pub interval_ms: u64,
}

impl Default for LocalCounterConfig {
    fn default() -> Self {
        Self {
            name: "fireworks".to_owned(),
            interval_ms: FLUSH_INTERVAL_MS_DEFAULT,
        }
    }
}

/// What one [`LocalCounter::tick`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CounterTick {
    /// Whether the interval was due (nothing happens otherwise).
    pub ran: bool,
    /// Amount moved into the primary KV.
    pub flushed: i64,
    /// Amount still waiting for a KV that failed (kept for the next tick).
    pub unflushed: i64,
    /// The cached value after the refresh.
    pub shown: Option<i64>,
}

/// Plan 2: one instance's local aggregation and cache.
pub struct LocalCounter {
    primary: Arc<dyn Kv>,
    backup: Option<Arc<dyn Kv>>,
    switches: Arc<Switches>,
    key: String,
    interval_ms: u64,
    /// Writes since the last flush.
    local: AtomicI64,
    /// Deltas taken from `local` that a KV has not acknowledged: [primary, backup].
    unflushed: Mutex<[i64; 2]>,
    next_due_ms: Mutex<Option<Millis>>,
    shown: AtomicI64,
    ready: tokio::sync::watch::Sender<bool>,
    stats: CounterStats,
}

impl fmt::Debug for LocalCounter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalCounter")
            .field("key", &self.key)
            .field("interval_ms", &self.interval_ms)
            .field("local", &self.local)
            .field("shown", &self.try_read())
            .finish()
    }
}

impl LocalCounter {
    /// An instance writing to `primary` (and `backup`, when given); the
    /// [`Switch::CounterPrimary`] switch in `switches` picks the KV reads come from.
    pub fn new(
        config: &LocalCounterConfig,
        primary: Arc<dyn Kv>,
        backup: Option<Arc<dyn Kv>>,
        switches: Arc<Switches>,
    ) -> Self {
        Self {
            primary,
            backup,
            switches,
            key: format!("counter:{}", config.name),
            interval_ms: config.interval_ms.max(1),
            local: AtomicI64::new(0),
            unflushed: Mutex::new([0, 0]),
            next_due_ms: Mutex::new(None),
            shown: AtomicI64::new(0),
            ready: tokio::sync::watch::channel(false).0,
            stats: CounterStats::default(),
        }
    }

    /// Count a write locally: one atomic add, no KV call.
    pub fn add(&self, delta: i64) {
        self.local.fetch_add(delta, Ordering::SeqCst);
    }

    /// When the interval is due: move the local delta into the KV (primary and
    /// backup, each with one `INCRBY`; a failed target keeps its delta for the next
    /// tick), then read the KV the switch names and raise the cached value if the
    /// KV is ahead. The first tick after start runs at once.
    pub async fn tick(&self, now_ms: Millis) -> CounterTick {
        {
            let mut next = self.next_due_ms.lock().expect("counter lock poisoned");
            if next.is_some_and(|due| now_ms < due) {
                return CounterTick::default();
            }
            *next = Some(now_ms + self.interval_ms);
        }
        let delta = self.local.swap(0, Ordering::SeqCst);
        let mut pending = {
            let mut unflushed = self.unflushed.lock().expect("counter lock poisoned");
            unflushed[0] += delta;
            unflushed[1] += delta;
            *unflushed
        };
        let mut flushed = 0;
        let targets = [Some(&self.primary), self.backup.as_ref()];
        for (index, target) in targets.into_iter().enumerate() {
            let Some(kv) = target else {
                pending[index] = 0;
                continue;
            };
            if pending[index] == 0 {
                continue;
            }
            let result = kv.incr_by(&self.key, pending[index]).await;
            self.stats.count(&self.stats.kv_writes, &result);
            if result.is_ok() {
                if index == 0 {
                    flushed = pending[index];
                }
                let mut unflushed = self.unflushed.lock().expect("counter lock poisoned");
                unflushed[index] -= pending[index];
                pending[index] = unflushed[index];
            }
        }
        let source = if self.switches.is_on(Switch::CounterPrimary) {
            Some(&self.primary)
        } else {
            self.backup.as_ref()
        };
        if let Some(kv) = source {
            let result = kv.counter(&self.key).await;
            self.stats.count(&self.stats.kv_reads, &result);
            if let Ok(value) = result {
                self.shown.fetch_max(value, Ordering::SeqCst);
                self.ready.send_replace(true);
            }
        }
        CounterTick {
            ran: true,
            flushed,
            unflushed: pending[0],
            shown: self.try_read(),
        }
    }

    /// The cached value, or `None` before the first refresh after start.
    pub fn try_read(&self) -> Option<i64> {
        (*self.ready.borrow()).then(|| self.shown.load(Ordering::SeqCst))
    }

    /// The cached value, waiting up to `max_wait` for the first refresh (needs a
    /// tokio runtime with time enabled). `None` when it did not arrive in time.
    pub async fn read(&self, max_wait: Duration) -> Option<i64> {
        let mut ready = self.ready.subscribe();
        // The sender lives in `self`, so the channel cannot close while we wait.
        let arrived = tokio::time::timeout(max_wait, ready.wait_for(|r| *r)).await;
        match arrived {
            Ok(Ok(_)) => self.try_read(),
            _ => None,
        }
    }

    /// Writes counted locally and not yet moved into the primary KV.
    pub fn unflushed(&self) -> i64 {
        self.local.load(Ordering::SeqCst) + self.unflushed.lock().expect("counter lock poisoned")[0]
    }

    /// The KV calls made so far.
    pub fn figures(&self) -> CounterFigures {
        self.stats.figures()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::kv::{KvFaults, MemoryKv};

    fn block_on<F: Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime")
            .block_on(f)
    }

    fn memory_kv() -> Arc<MemoryKv> {
        Arc::new(MemoryKv::new(Arc::new(ManualClock::new(0))))
    }

    #[test]
    fn split_counter_sums_keys_and_goes_backwards_when_a_read_times_out() {
        block_on(async {
            let kv = memory_kv();
            let counter = SplitCounter::new(kv.clone(), "fw", 100);
            for act_id in 0..1_000u64 {
                counter.add(act_id, 2).await.expect("write");
            }
            assert_eq!(counter.figures().kv_writes, 1_000, "one INCRBY per write");
            let first = counter.read().await;
            assert_eq!(
                first,
                SplitRead {
                    value: 2_000,
                    missing_keys: 0
                }
            );
            assert_eq!(
                counter.figures().kv_reads,
                100,
                "a read fans out to every key"
            );
            // One key's read times out: the partial sum is less than before.
            kv.set_faults(KvFaults {
                fail_reads_prefix: Some("counter:fw:7".to_owned()),
                ..KvFaults::default()
            });
            let second = counter.read().await;
            assert!(second.value < first.value, "{second:?} went backwards");
            assert_eq!(second.missing_keys, 11, "keys 7 and 70..=79");
            // A timed-out write is not retried: it is lost.
            kv.set_faults(KvFaults {
                fail_writes_prefix: Some("counter:fw:3".to_owned()),
                ..KvFaults::default()
            });
            assert!(counter.add(3, 5).await.is_err());
            assert!(
                counter.add(4, 5).await.is_ok(),
                "other keys still take writes"
            );
            kv.set_faults(KvFaults::default());
            assert_eq!(counter.read().await.value, 2_005);
            assert_eq!(counter.figures().lost_amount, 5);
        });
    }

    #[test]
    fn local_counter_flushes_once_per_interval_and_never_goes_down() {
        block_on(async {
            let kv = memory_kv();
            let switches = Arc::new(Switches::default());
            let config = LocalCounterConfig {
                name: "fw".to_owned(),
                interval_ms: 1_000,
            };
            let writer = LocalCounter::new(&config, kv.clone(), None, switches.clone());
            let reader = LocalCounter::new(&config, kv.clone(), None, switches);
            assert_eq!(reader.try_read(), None, "no value before the first refresh");
            assert_eq!(
                reader.read(Duration::from_millis(5)).await,
                None,
                "bounded wait"
            );
            for _ in 0..10_000 {
                writer.add(3);
            }
            assert_eq!(writer.figures().kv_ops(), 0, "writes stay local");
            let tick = writer.tick(0).await;
            assert_eq!((tick.flushed, tick.shown), (30_000, Some(30_000)));
            assert_eq!(
                writer.figures().kv_writes,
                1,
                "one INCRBY for 10,000 writes"
            );
            assert!(!writer.tick(999).await.ran, "not due yet");
            reader.tick(0).await;
            assert_eq!(reader.read(Duration::from_millis(5)).await, Some(30_000));
            // The primary loses its data (a failover to an empty replica): the KV
            // now shows less, the cache does not follow it down.
            kv.set_faults(KvFaults::default());
            kv.incr_by("counter:fw", -30_000).await.expect("wipe");
            writer.add(1);
            writer.tick(1_000).await;
            reader.tick(1_000).await;
            assert_eq!(reader.try_read(), Some(30_000), "only moves up");
        });
    }

    #[test]
    fn local_counter_keeps_failed_deltas_and_reads_the_backup_when_switched() {
        block_on(async {
            let primary = memory_kv();
            let backup = memory_kv();
            let switches = Arc::new(Switches::default());
            let config = LocalCounterConfig::default();
            let counter = LocalCounter::new(
                &config,
                primary.clone(),
                Some(backup.clone()),
                switches.clone(),
            );
            counter.add(10);
            counter.tick(0).await;
            assert_eq!(
                backup.counter("counter:fireworks").await.ok(),
                Some(10),
                "dual write"
            );
            primary.set_faults(KvFaults {
                down: true,
                ..KvFaults::default()
            });
            counter.add(5);
            let tick = counter.tick(1_000).await;
            assert_eq!(
                (tick.flushed, tick.unflushed),
                (0, 5),
                "kept for the next tick"
            );
            assert_eq!(backup.counter("counter:fireworks").await.ok(), Some(15));
            assert_eq!(tick.shown, Some(10), "the primary is down: the cache stays");
            switches.set(Switch::CounterPrimary, false);
            assert_eq!(
                counter.tick(2_000).await.shown,
                Some(15),
                "read from the backup"
            );
            primary.set_faults(KvFaults::default());
            let tick = counter.tick(3_000).await;
            assert_eq!((tick.flushed, tick.unflushed), (5, 0), "caught up");
            assert_eq!(primary.counter("counter:fireworks").await.ok(), Some(15));
            assert_eq!(
                backup.counter("counter:fireworks").await.ok(),
                Some(15),
                "no double count"
            );
            assert_eq!(counter.unflushed(), 0);
        });
    }
}
