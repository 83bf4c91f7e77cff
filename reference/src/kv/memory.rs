//! The in-memory KV: the embedded default, with TTLs on the injected clock.
//!
//! Keys live in a hash map: a simulated run holds millions of them and looks one
//! up on every call, and a B-tree of strings spends that time comparing key
//! prefixes in cache misses. Only `counters_with_prefix` (an audit) needs key
//! order; it sorts what it found. The hasher has fixed keys, so nothing here
//! reads an OS random source, and no result depends on the map's order.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::hash::{BuildHasherDefault, DefaultHasher};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;

use super::{Consume, Hold, Kv, KvError, LIST_RANGE_MAX, QUEUE_POP_MAX};
use crate::clock::{Clock, Millis};

#[derive(Debug, Clone)]
enum Value {
    Counter(i64),
    Hold {
        value: String,
        holders: u64,
    },
    Set(BTreeSet<String>),
    Status(u8),
    Queue(VecDeque<Vec<u8>>),
    Bytes(Vec<u8>),
    /// Member → score.
    Scored(BTreeMap<Vec<u8>, u64>),
    Lock(String),
}

impl Value {
    fn type_name(&self) -> &'static str {
        match self {
            Value::Counter(_) => "a counter",
            Value::Hold { .. } => "a hold",
            Value::Set(_) => "a set",
            Value::Status(_) => "a status",
            Value::Queue(_) => "a queue",
            Value::Bytes(_) => "bytes",
            Value::Scored(_) => "a scored set",
            Value::Lock(_) => "a lock",
        }
    }
}

#[derive(Debug, Clone)]
struct Slot {
    value: Value,
    expires_at_ms: Option<Millis>,
}

/// Every key's slot. `DefaultHasher` built by `Default` is SipHash with fixed
/// keys: deterministic, and no OS randomness (`RandomState` would read some).
type Slots = HashMap<String, Slot, BuildHasherDefault<DefaultHasher>>;

/// Faults a test or a simulation can switch on.
#[derive(Debug, Default, Clone)]
pub struct KvFaults {
    /// Every call fails, as if the store were unreachable.
    pub down: bool,
    /// `consume_within` on keys with this prefix applies, then reports a timeout:
    /// the caller cannot know it consumed.
    pub timeout_after_consume_prefix: Option<String>,
    /// `counter` reads of keys with this prefix fail (a read that times out).
    pub fail_reads_prefix: Option<String>,
    /// `incr_by` on keys with this prefix fails before applying (a lost write).
    pub fail_writes_prefix: Option<String>,
}

impl KvFaults {
    fn hits(prefix: &Option<String>, key: &str) -> bool {
        prefix.as_deref().is_some_and(|p| key.starts_with(p))
    }
}

/// KV kept in process memory.
#[derive(Debug)]
pub struct MemoryKv {
    clock: Arc<dyn Clock>,
    slots: Mutex<Slots>,
    faults: Mutex<KvFaults>,
}

impl MemoryKv {
    /// An empty store whose TTLs run on `clock`.
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Self {
            clock,
            slots: Mutex::new(Slots::default()),
            faults: Mutex::new(KvFaults::default()),
        }
    }

    /// Switch faults on or off.
    pub fn set_faults(&self, faults: KvFaults) {
        *self.faults.lock().expect("kv faults lock poisoned") = faults;
    }

    /// Fails when `pick` of the faults names a prefix of `key`.
    fn check_key(
        &self,
        key: &str,
        pick: impl Fn(&KvFaults) -> &Option<String>,
    ) -> Result<(), KvError> {
        let faults = self.faults.lock().expect("kv faults lock poisoned");
        if KvFaults::hits(pick(&faults), key) {
            return Err(KvError::Store(format!(
                "timeout on `{key}` (injected fault)"
            )));
        }
        Ok(())
    }

    fn check_up(&self) -> Result<(), KvError> {
        if self.faults.lock().expect("kv faults lock poisoned").down {
            return Err(KvError::Store("kv is down (injected fault)".to_owned()));
        }
        Ok(())
    }

    /// The slots, with `keys` removed first if they have expired (expiry is lazy,
    /// per key, as in Redis); fails when the store is down.
    fn live(&self, keys: &[&str]) -> Result<MutexGuard<'_, Slots>, KvError> {
        self.check_up()?;
        let now_ms = self.clock.now_ms();
        // A poisoned lock means a panic mid-update: a bug.
        let mut slots = self.slots.lock().expect("memory kv lock poisoned");
        for key in keys {
            if slots
                .get(*key)
                .is_some_and(|slot| slot.expires_at_ms.is_some_and(|at| now_ms >= at))
            {
                slots.remove(*key);
            }
        }
        Ok(slots)
    }

    fn is_live(&self, slot: &Slot) -> bool {
        slot.expires_at_ms.is_none_or(|at| self.clock.now_ms() < at)
    }

    fn expiry(&self, ttl_ms: Option<u64>) -> Option<Millis> {
        ttl_ms.map(|ttl| self.clock.now_ms().saturating_add(ttl))
    }
}

fn wrong(key: &str, found: &Value, expected: &'static str) -> KvError {
    KvError::WrongType {
        key: key.to_owned(),
        found: found.type_name(),
        expected,
    }
}

fn counter_of(slots: &Slots, key: &str) -> Result<i64, KvError> {
    match slots.get(key).map(|s| &s.value) {
        None => Ok(0),
        Some(Value::Counter(n)) => Ok(*n),
        Some(other) => Err(wrong(key, other, "a counter")),
    }
}

fn set_counter(slots: &mut Slots, key: &str, n: i64) {
    let expires_at_ms = slots.get(key).and_then(|s| s.expires_at_ms);
    slots.insert(
        key.to_owned(),
        Slot {
            value: Value::Counter(n),
            expires_at_ms,
        },
    );
}

fn non_negative(key: &str, n: i64) -> Result<u64, KvError> {
    u64::try_from(n).map_err(|_| {
        KvError::Misuse(format!(
            "counter `{key}` is negative ({n}); it is not a consume counter"
        ))
    })
}

#[async_trait]
impl Kv for MemoryKv {
    async fn incr_by(&self, key: &str, delta: i64) -> Result<i64, KvError> {
        self.check_key(key, |f| &f.fail_writes_prefix)?;
        let mut slots = self.live(&[key])?;
        let n = counter_of(&slots, key)?
            .checked_add(delta)
            .ok_or_else(|| KvError::Misuse(format!("counter `{key}` would overflow")))?;
        set_counter(&mut slots, key, n);
        Ok(n)
    }

    async fn counter(&self, key: &str) -> Result<i64, KvError> {
        self.check_key(key, |f| &f.fail_reads_prefix)?;
        counter_of(&*self.live(&[key])?, key)
    }

    async fn consume_within(&self, key: &str, n: u64, limit: u64) -> Result<Consume, KvError> {
        let mut slots = self.live(&[key])?;
        let current = non_negative(key, counter_of(&slots, key)?)?;
        match current.checked_add(n) {
            Some(after) if after <= limit => {
                let stored = i64::try_from(after)
                    .map_err(|_| KvError::Misuse(format!("`{key}` beyond i64")))?;
                set_counter(&mut slots, key, stored);
                drop(slots);
                self.check_key(key, |f| &f.timeout_after_consume_prefix)?;
                Ok(Consume::Consumed { after })
            }
            _ => Ok(Consume::Exceeded { current }),
        }
    }

    async fn consume_up_to(&self, key: &str, n: u64, limit: u64) -> Result<u64, KvError> {
        let mut slots = self.live(&[key])?;
        let current = non_negative(key, counter_of(&slots, key)?)?;
        let granted = n.min(limit.saturating_sub(current));
        if granted > 0 {
            let stored = i64::try_from(current + granted)
                .map_err(|_| KvError::Misuse(format!("`{key}` beyond i64")))?;
            set_counter(&mut slots, key, stored);
        }
        drop(slots);
        self.check_key(key, |f| &f.timeout_after_consume_prefix)?;
        Ok(granted)
    }

    async fn release(&self, key: &str, n: u64) -> Result<u64, KvError> {
        let mut slots = self.live(&[key])?;
        let current = non_negative(key, counter_of(&slots, key)?)?;
        let after = current.saturating_sub(n);
        let stored =
            i64::try_from(after).map_err(|_| KvError::Misuse(format!("`{key}` beyond i64")))?;
        set_counter(&mut slots, key, stored);
        Ok(after)
    }

    async fn hold(&self, key: &str, value: &str) -> Result<Hold, KvError> {
        let mut slots = self.live(&[key])?;
        match slots.get_mut(key).map(|s| &mut s.value) {
            None => {
                slots.insert(
                    key.to_owned(),
                    Slot {
                        value: Value::Hold {
                            value: value.to_owned(),
                            holders: 1,
                        },
                        expires_at_ms: None,
                    },
                );
                Ok(Hold::Held { holders: 1 })
            }
            Some(Value::Hold {
                value: held,
                holders,
            }) if held == value => {
                *holders += 1;
                Ok(Hold::Held { holders: *holders })
            }
            Some(Value::Hold { value: held, .. }) => Ok(Hold::HeldByOther {
                value: held.clone(),
            }),
            Some(other) => Err(wrong(key, other, "a hold")),
        }
    }

    async fn unhold(&self, key: &str, value: &str) -> Result<u64, KvError> {
        let mut slots = self.live(&[key])?;
        let left = match slots.get_mut(key).map(|s| &mut s.value) {
            Some(Value::Hold {
                value: held,
                holders,
            }) if held == value => {
                *holders = holders.saturating_sub(1);
                *holders
            }
            Some(Value::Hold { .. }) | None => return Ok(0),
            Some(other) => return Err(wrong(key, other, "a hold")),
        };
        if left == 0 {
            slots.remove(key);
        }
        Ok(left)
    }

    async fn set_add(&self, key: &str, member: &str) -> Result<bool, KvError> {
        let mut slots = self.live(&[key])?;
        let slot = slots.entry(key.to_owned()).or_insert_with(|| Slot {
            value: Value::Set(BTreeSet::new()),
            expires_at_ms: None,
        });
        match &mut slot.value {
            Value::Set(members) => Ok(members.insert(member.to_owned())),
            other => Err(wrong(key, other, "a set")),
        }
    }

    async fn set_contains(&self, key: &str, member: &str) -> Result<bool, KvError> {
        match self.live(&[key])?.get(key).map(|s| &s.value) {
            None => Ok(false),
            Some(Value::Set(members)) => Ok(members.contains(member)),
            Some(other) => Err(wrong(key, other, "a set")),
        }
    }

    async fn put_status(&self, key: &str, status: u8, ttl_ms: Option<u64>) -> Result<(), KvError> {
        let expires_at_ms = self.expiry(ttl_ms);
        self.live(&[key])?.insert(
            key.to_owned(),
            Slot {
                value: Value::Status(status),
                expires_at_ms,
            },
        );
        Ok(())
    }

    async fn status(&self, key: &str) -> Result<Option<u8>, KvError> {
        match self.live(&[key])?.get(key).map(|s| &s.value) {
            None => Ok(None),
            Some(Value::Status(s)) => Ok(Some(*s)),
            Some(other) => Err(wrong(key, other, "a status")),
        }
    }

    async fn queue_push(
        &self,
        key: &str,
        item: &[u8],
        ttl_ms: Option<u64>,
    ) -> Result<u64, KvError> {
        let expires_at_ms = self.expiry(ttl_ms);
        let mut slots = self.live(&[key])?;
        let slot = slots.entry(key.to_owned()).or_insert_with(|| Slot {
            value: Value::Queue(VecDeque::new()),
            expires_at_ms: None,
        });
        let Value::Queue(items) = &mut slot.value else {
            return Err(wrong(key, &slot.value, "a queue"));
        };
        items.push_back(item.to_vec());
        let len = items.len() as u64;
        slot.expires_at_ms = expires_at_ms;
        Ok(len)
    }

    async fn queue_pop(&self, key: &str, max: usize) -> Result<Vec<Vec<u8>>, KvError> {
        if max > QUEUE_POP_MAX {
            return Err(KvError::Misuse(format!(
                "queue_pop of {max}; at most {QUEUE_POP_MAX}"
            )));
        }
        let mut slots = self.live(&[key])?;
        let Some(slot) = slots.get_mut(key) else {
            return Ok(Vec::new());
        };
        let Value::Queue(items) = &mut slot.value else {
            return Err(wrong(key, &slot.value, "a queue"));
        };
        let taken: Vec<Vec<u8>> = items.drain(..max.min(items.len())).collect();
        if items.is_empty() {
            slots.remove(key);
        }
        Ok(taken)
    }

    async fn counters_with_prefix(&self, prefix: &str) -> Result<Vec<(String, i64)>, KvError> {
        let slots = self.live(&[])?;
        let mut counters: Vec<(String, i64)> = slots
            .iter()
            .filter(|(k, slot)| k.starts_with(prefix) && self.is_live(slot))
            .filter_map(|(k, s)| match s.value {
                Value::Counter(n) => Some((k.clone(), n)),
                _ => None,
            })
            .collect();
        // Key order, as the trait promises; the map has none.
        counters.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        Ok(counters)
    }

    async fn record_token(
        &self,
        record_key: &str,
        token: &[u8],
        list_key: &str,
        queue_key: &str,
    ) -> Result<Option<Vec<u8>>, KvError> {
        let mut slots = self.live(&[record_key, list_key, queue_key])?;
        match slots.get(record_key).map(|s| &s.value) {
            Some(Value::Bytes(existing)) => return Ok(Some(existing.clone())),
            Some(other) => return Err(wrong(record_key, other, "bytes")),
            None => {}
        }
        for key in [list_key, queue_key] {
            if let Some(slot) = slots
                .get(key)
                .filter(|s| !matches!(s.value, Value::Queue(_)))
            {
                return Err(wrong(key, &slot.value, "a queue"));
            }
        }
        slots.insert(
            record_key.to_owned(),
            Slot {
                value: Value::Bytes(token.to_vec()),
                expires_at_ms: None,
            },
        );
        for key in [list_key, queue_key] {
            let slot = slots.entry(key.to_owned()).or_insert_with(|| Slot {
                value: Value::Queue(VecDeque::new()),
                expires_at_ms: None,
            });
            if let Value::Queue(items) = &mut slot.value {
                items.push_back(token.to_vec());
            }
        }
        Ok(None)
    }

    async fn bytes(&self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        match self.live(&[key])?.get(key).map(|s| &s.value) {
            None => Ok(None),
            Some(Value::Bytes(b)) => Ok(Some(b.clone())),
            Some(other) => Err(wrong(key, other, "bytes")),
        }
    }

    async fn list_range(&self, key: &str, max: usize) -> Result<Vec<Vec<u8>>, KvError> {
        let max = bounded(max, LIST_RANGE_MAX, "list_range")?;
        match self.live(&[key])?.get(key).map(|s| &s.value) {
            None => Ok(Vec::new()),
            Some(Value::Queue(items)) => Ok(items.iter().take(max).cloned().collect()),
            Some(other) => Err(wrong(key, other, "a queue")),
        }
    }

    async fn queue_len(&self, key: &str) -> Result<u64, KvError> {
        match self.live(&[key])?.get(key).map(|s| &s.value) {
            None => Ok(0),
            Some(Value::Queue(items)) => Ok(items.len() as u64),
            Some(other) => Err(wrong(key, other, "a queue")),
        }
    }

    async fn queue_claim(
        &self,
        queue_key: &str,
        inflight_key: &str,
        max: usize,
        now_ms: u64,
    ) -> Result<Vec<Vec<u8>>, KvError> {
        let max = bounded(max, QUEUE_POP_MAX, "queue_claim")?;
        let mut slots = self.live(&[queue_key, inflight_key])?;
        if let Some(slot) = slots
            .get(inflight_key)
            .filter(|s| !matches!(s.value, Value::Scored(_)))
        {
            return Err(wrong(inflight_key, &slot.value, "a scored set"));
        }
        let taken: Vec<Vec<u8>> = match slots.get_mut(queue_key).map(|s| &mut s.value) {
            None => return Ok(Vec::new()),
            Some(Value::Queue(items)) => items.drain(..max.min(items.len())).collect(),
            Some(other) => return Err(wrong(queue_key, other, "a queue")),
        };
        if matches!(slots.get(queue_key).map(|s| &s.value), Some(Value::Queue(items)) if items.is_empty())
        {
            slots.remove(queue_key);
        }
        // The type was checked above, before anything was taken.
        for item in &taken {
            scored_insert(&mut slots, inflight_key, item, now_ms)?;
        }
        Ok(taken)
    }

    async fn inflight_due(
        &self,
        inflight_key: &str,
        due_ms: u64,
        max: usize,
    ) -> Result<Vec<Vec<u8>>, KvError> {
        let max = bounded(max, LIST_RANGE_MAX, "inflight_due")?;
        match self
            .live(&[inflight_key])?
            .get(inflight_key)
            .map(|s| &s.value)
        {
            None => Ok(Vec::new()),
            Some(Value::Scored(members)) => {
                let mut due: Vec<(&u64, &Vec<u8>)> = members
                    .iter()
                    .filter(|(_, s)| **s <= due_ms)
                    .map(|(m, s)| (s, m))
                    .collect();
                due.sort();
                Ok(due.into_iter().take(max).map(|(_, m)| m.clone()).collect())
            }
            Some(other) => Err(wrong(inflight_key, other, "a scored set")),
        }
    }

    async fn inflight_remove(&self, inflight_key: &str, member: &[u8]) -> Result<bool, KvError> {
        let mut slots = self.live(&[inflight_key])?;
        let removed = match slots.get_mut(inflight_key).map(|s| &mut s.value) {
            None => return Ok(false),
            Some(Value::Scored(members)) => members.remove(member).is_some(),
            Some(other) => return Err(wrong(inflight_key, other, "a scored set")),
        };
        if matches!(slots.get(inflight_key).map(|s| &s.value), Some(Value::Scored(m)) if m.is_empty())
        {
            slots.remove(inflight_key);
        }
        Ok(removed)
    }

    async fn inflight_len(&self, inflight_key: &str) -> Result<u64, KvError> {
        match self
            .live(&[inflight_key])?
            .get(inflight_key)
            .map(|s| &s.value)
        {
            None => Ok(0),
            Some(Value::Scored(members)) => Ok(members.len() as u64),
            Some(other) => Err(wrong(inflight_key, other, "a scored set")),
        }
    }

    async fn record_order(
        &self,
        record_key: &str,
        record: &[u8],
        open_key: &str,
        now_ms: u64,
    ) -> Result<Option<Vec<u8>>, KvError> {
        let mut slots = self.live(&[record_key, open_key])?;
        match slots.get(record_key).map(|s| &s.value) {
            Some(Value::Bytes(existing)) => return Ok(Some(existing.clone())),
            Some(other) => return Err(wrong(record_key, other, "bytes")),
            None => {}
        }
        scored_insert(&mut slots, open_key, record_key.as_bytes(), now_ms)?;
        slots.insert(
            record_key.to_owned(),
            Slot {
                value: Value::Bytes(record.to_vec()),
                expires_at_ms: None,
            },
        );
        Ok(None)
    }

    async fn compare_and_set(
        &self,
        key: &str,
        expected: &[u8],
        new: &[u8],
    ) -> Result<bool, KvError> {
        let mut slots = self.live(&[key])?;
        match slots.get_mut(key).map(|s| &mut s.value) {
            Some(Value::Bytes(current)) if current.as_slice() == expected => {
                *current = new.to_vec();
                Ok(true)
            }
            Some(Value::Bytes(_)) | None => Ok(false),
            Some(other) => Err(wrong(key, other, "bytes")),
        }
    }

    async fn scored_add(&self, key: &str, member: &[u8], score: u64) -> Result<(), KvError> {
        let mut slots = self.live(&[key])?;
        scored_insert(&mut slots, key, member, score)
    }

    async fn try_lock(&self, key: &str, owner: &str, ttl_ms: u64) -> Result<bool, KvError> {
        let expires_at_ms = self.expiry(Some(ttl_ms));
        let mut slots = self.live(&[key])?;
        if slots.contains_key(key) {
            return Ok(false);
        }
        slots.insert(
            key.to_owned(),
            Slot {
                value: Value::Lock(owner.to_owned()),
                expires_at_ms,
            },
        );
        Ok(true)
    }

    async fn unlock(&self, key: &str, owner: &str) -> Result<bool, KvError> {
        let mut slots = self.live(&[key])?;
        match slots.get(key).map(|s| &s.value) {
            Some(Value::Lock(held)) if held == owner => {
                slots.remove(key);
                Ok(true)
            }
            Some(Value::Lock(_)) | None => Ok(false),
            Some(other) => Err(wrong(key, other, "a lock")),
        }
    }
}

/// Add or move a member of the scored set at `key`, creating the set.
fn scored_insert(slots: &mut Slots, key: &str, member: &[u8], score: u64) -> Result<(), KvError> {
    let slot = slots.entry(key.to_owned()).or_insert_with(|| Slot {
        value: Value::Scored(BTreeMap::new()),
        expires_at_ms: None,
    });
    match &mut slot.value {
        Value::Scored(members) => {
            members.insert(member.to_vec(), score);
            Ok(())
        }
        other => Err(wrong(key, other, "a scored set")),
    }
}

fn bounded(max: usize, bound: usize, verb: &str) -> Result<usize, KvError> {
    if max > bound {
        return Err(KvError::Misuse(format!("{verb} of {max}; at most {bound}")));
    }
    Ok(max)
}

/// Memory-only cases: injected faults and TTLs on the manual clock. The cases every
/// backend shares are in `conformance.rs`.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    fn run(test: impl AsyncFn(&ManualClock, &dyn Kv)) {
        let clock = Arc::new(ManualClock::new(1_000));
        let kv = MemoryKv::new(clock.clone());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
        runtime.block_on(test(&clock, &kv));
    }

    #[test]
    fn ttls_run_on_the_injected_clock() {
        run(async |clock, kv| {
            kv.put_status("t", 2, Some(100)).await.expect("put");
            kv.queue_push("q", b"a", Some(50)).await.expect("push");
            kv.queue_push("q", b"b", Some(50)).await.expect("push");
            clock.advance(49);
            assert_eq!(kv.status("t").await.ok(), Some(Some(2)));
            assert_eq!(kv.queue_pop("q", 1).await.ok(), Some(vec![b"a".to_vec()]));
            clock.advance(1);
            assert_eq!(
                kv.queue_pop("q", 10).await.ok(),
                Some(vec![]),
                "queue expired"
            );
            clock.advance(50);
            assert_eq!(kv.status("t").await.ok(), Some(None), "status expired");
        });
    }

    #[test]
    fn injected_faults_fail_calls() {
        let clock = Arc::new(ManualClock::new(0));
        let kv = MemoryKv::new(clock);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        kv.set_faults(KvFaults {
            down: true,
            ..KvFaults::default()
        });
        assert!(runtime.block_on(kv.incr_by("c", 1)).is_err());
        kv.set_faults(KvFaults {
            timeout_after_consume_prefix: Some("s".into()),
            ..KvFaults::default()
        });
        assert!(runtime.block_on(kv.consume_within("s1", 1, 5)).is_err());
        assert_eq!(
            runtime.block_on(kv.counter("s1")).ok(),
            Some(1),
            "applied before the timeout"
        );
        kv.set_faults(KvFaults::default());
        assert!(runtime.block_on(kv.incr_by("c", 1)).is_ok());
    }

    #[test]
    fn counter_faults_fail_reads_and_lose_writes() {
        let clock = Arc::new(ManualClock::new(0));
        let kv = MemoryKv::new(clock);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        kv.set_faults(KvFaults {
            fail_reads_prefix: Some("r".into()),
            fail_writes_prefix: Some("w".into()),
            ..KvFaults::default()
        });
        assert!(runtime.block_on(kv.incr_by("w1", 1)).is_err());
        assert!(runtime.block_on(kv.incr_by("r1", 1)).is_ok());
        assert!(runtime.block_on(kv.counter("r1")).is_err());
        kv.set_faults(KvFaults::default());
        assert_eq!(runtime.block_on(kv.counter("w1")).ok(), Some(0), "lost");
        assert_eq!(runtime.block_on(kv.counter("r1")).ok(), Some(1));
    }
}
