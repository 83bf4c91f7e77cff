//! The KV store for the Redis roles: counters, atomic check-and-consume, shared
//! holds (batch-group claims), per-user claim sets, small status values (token
//! status) and queues with TTL. Each verb maps onto one Redis command or one Lua
//! script, named in its doc line, so the Redis backend is a direct translation.
//!
//! Business outcomes ([`Consume::Exceeded`], [`Hold::HeldByOther`]) are values;
//! `Err` is for operating errors (timeouts, a store that is down).

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::clock::Clock;

#[cfg(test)]
mod conformance;
mod memory;
mod redis;

pub use memory::{KvFaults, MemoryKv};
pub use redis::RedisKv;

/// What shadow keys get after the store's own prefix.
pub const SHADOW_PREFIX: &str = "shadow:";
/// How long a shadow key lives after its last write: long enough to verify a load
/// test, short enough that leftovers go by themselves (`redrain cleanup --shadow`
/// removes them at once).
pub const SHADOW_TTL_MS_DEFAULT: u64 = 6 * 60 * 60 * 1000;

/// Where a KV's keys live.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KvOptions {
    /// Put before every key: a test's or tenant's own namespace, usually empty.
    /// Letters, digits, `_`, `-`, `:` and `.` only (no `{`/`}`: hash tags stay the keys').
    pub prefix: String,
    /// Shadow traffic: keys get [`SHADOW_PREFIX`] after `prefix`, and every key
    /// written gets a TTL of `shadow_ttl_ms` (default [`SHADOW_TTL_MS_DEFAULT`]).
    pub shadow: bool,
    /// The shadow TTL; `None` = [`SHADOW_TTL_MS_DEFAULT`].
    pub shadow_ttl_ms: Option<u64>,
}

impl KvOptions {
    /// The shadow namespace under `prefix`.
    pub fn shadow(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
            shadow: true,
            shadow_ttl_ms: None,
        }
    }

    /// What every key of this store starts with.
    pub fn key_prefix(&self) -> String {
        if self.shadow {
            format!("{}{SHADOW_PREFIX}", self.prefix)
        } else {
            self.prefix.clone()
        }
    }

    /// The TTL every written key gets, if any.
    pub fn write_ttl_ms(&self) -> Option<u64> {
        self.shadow
            .then(|| self.shadow_ttl_ms.unwrap_or(SHADOW_TTL_MS_DEFAULT))
    }

    fn check(&self, url: &str) -> Result<(), KvError> {
        let ok = |c: char| c.is_ascii_alphanumeric() || "_-:.".contains(c);
        if self.prefix.chars().all(ok) {
            Ok(())
        } else {
            Err(KvError::BadUrl {
                url: url.to_owned(),
                why: format!(
                    "key prefix `{}` may hold only letters, digits, `_`, `-`, `:` and `.`",
                    self.prefix
                ),
            })
        }
    }
}

/// What a shadow cleanup removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvCleanup {
    /// Keys deleted.
    pub keys: u64,
}

/// Most items one [`Kv::queue_pop`] returns.
pub const QUEUE_POP_MAX: usize = 1024;

/// The result of a check-and-consume.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Consume {
    /// Consumed; the counter now stands at `after`.
    Consumed {
        /// Counter value after consuming.
        after: u64,
    },
    /// Consuming would pass the limit; nothing changed.
    Exceeded {
        /// Counter value, unchanged.
        current: u64,
    },
}

/// The result of taking a shared hold.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Hold {
    /// The key holds our value; `holders` counts the holds on it, ours included.
    Held {
        /// Holds on the value now.
        holders: u64,
    },
    /// The key holds another value; nothing changed.
    HeldByOther {
        /// The value held.
        value: String,
    },
}

/// An operating error of a KV backend.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KvError {
    /// The store failed, timed out or could not be reached: the result is unknown.
    #[error("kv store: {0}")]
    Store(String),
    /// A key holds a value of another type than the verb needs.
    #[error("kv key `{key}` holds {found}, not {expected}")]
    WrongType {
        /// The key.
        key: String,
        /// What it holds.
        found: &'static str,
        /// What the verb needs.
        expected: &'static str,
    },
    /// A caller broke the trait's contract.
    #[error("kv misuse: {0}")]
    Misuse(String),
    /// The URL does not name a KV this build knows.
    #[error("kv URL `{}`: {why}", crate::redact_url(.url))]
    BadUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        why: String,
    },
}

/// The KV's domain verbs.
#[async_trait]
pub trait Kv: Send + Sync + fmt::Debug {
    /// Add `delta` to a counter (missing = 0) and return the new value. Redis: `INCRBY`.
    async fn incr_by(&self, key: &str, delta: i64) -> Result<i64, KvError>;

    /// A counter's value (missing = 0). Redis: `GET`.
    async fn counter(&self, key: &str) -> Result<i64, KvError>;

    /// Add `n` only if the counter stays ≤ `limit`. Redis: one Lua script
    /// (`GET`, compare, `INCRBY`).
    async fn consume_within(&self, key: &str, n: u64, limit: u64) -> Result<Consume, KvError>;

    /// Merged consume (seed 003's one `DECRBY N` for N users): add as much of `n`
    /// as keeps the counter ≤ `limit` and return how much was granted (0..=n).
    /// Redis: one Lua script (`GET`, `min`, `INCRBY`).
    async fn consume_up_to(&self, key: &str, n: u64, limit: u64) -> Result<u64, KvError>;

    /// Give back `n` consumed by [`Kv::consume_within`]; never below zero. Redis:
    /// one Lua script (`DECRBY` clamped at 0). Returns the new value.
    async fn release(&self, key: &str, n: u64) -> Result<u64, KvError>;

    /// Hold `key` for `value` unless another value holds it; holds on the same value
    /// are counted. Redis: one Lua script over a hash (`HGET value`, `HINCRBY holders`).
    async fn hold(&self, key: &str, value: &str) -> Result<Hold, KvError>;

    /// Drop one hold of `value`; the key is freed when the last hold goes. Redis: one
    /// Lua script (`HINCRBY -1`, `DEL` at 0). Returns the holds left.
    async fn unhold(&self, key: &str, value: &str) -> Result<u64, KvError>;

    /// Add a member to a set; `true` when it was not there. Redis: `SADD`.
    async fn set_add(&self, key: &str, member: &str) -> Result<bool, KvError>;

    /// Whether a set has a member. Redis: `SISMEMBER`.
    async fn set_contains(&self, key: &str, member: &str) -> Result<bool, KvError>;

    /// Store a small status value with an optional TTL. Redis: `SET key v [PX ttl]`.
    async fn put_status(&self, key: &str, status: u8, ttl_ms: Option<u64>) -> Result<(), KvError>;

    /// A status value, if set and not expired. Redis: `GET`.
    async fn status(&self, key: &str) -> Result<Option<u8>, KvError>;

    /// Append to a queue and (re)set its TTL. Redis: one Lua script (`RPUSH`,
    /// `PEXPIRE`). Returns the queue length.
    async fn queue_push(&self, key: &str, item: &[u8], ttl_ms: Option<u64>)
    -> Result<u64, KvError>;

    /// Take up to `max` (≤ [`QUEUE_POP_MAX`]) items from the head. Redis: `LPOP key count`.
    async fn queue_pop(&self, key: &str, max: usize) -> Result<Vec<Vec<u8>>, KvError>;

    /// Every counter whose key starts with `prefix`, in key order. Redis: `SCAN MATCH
    /// prefix*` then `GET`; for audits and cleanup, not for hot paths.
    async fn counters_with_prefix(&self, prefix: &str) -> Result<Vec<(String, i64)>, KvError>;

    /// Record an issued token once: set `record_key` to `token` unless it exists,
    /// and only then append `token` to the user's list and the pending queue.
    /// Returns the existing token when there was one. Redis: one Lua script
    /// (`SET NX`, `RPUSH`, `RPUSH`).
    async fn record_token(
        &self,
        record_key: &str,
        token: &[u8],
        list_key: &str,
        queue_key: &str,
    ) -> Result<Option<Vec<u8>>, KvError>;

    /// A byte value, if set. Redis: `GET`.
    async fn bytes(&self, key: &str) -> Result<Option<Vec<u8>>, KvError>;

    /// The first `max` (≤ [`LIST_RANGE_MAX`]) items of a list, oldest first, without
    /// removing them. Redis: `LRANGE key 0 max-1`.
    async fn list_range(&self, key: &str, max: usize) -> Result<Vec<Vec<u8>>, KvError>;

    /// A queue's length. Redis: `LLEN`.
    async fn queue_len(&self, key: &str) -> Result<u64, KvError>;

    /// Move up to `max` (≤ [`QUEUE_POP_MAX`]) items from the head of `queue_key`
    /// into the scored set `inflight_key` with score `now_ms`, atomically, and
    /// return them. Redis: one Lua script (`LPOP count`, `ZADD`).
    async fn queue_claim(
        &self,
        queue_key: &str,
        inflight_key: &str,
        max: usize,
        now_ms: u64,
    ) -> Result<Vec<Vec<u8>>, KvError>;

    /// Up to `max` members of `inflight_key` scored at or before `due_ms`, lowest
    /// score first. Redis: `ZRANGEBYSCORE key -inf due LIMIT 0 max`.
    async fn inflight_due(
        &self,
        inflight_key: &str,
        due_ms: u64,
        max: usize,
    ) -> Result<Vec<Vec<u8>>, KvError>;

    /// Remove a member; `true` when it was there. Redis: `ZREM`.
    async fn inflight_remove(&self, inflight_key: &str, member: &[u8]) -> Result<bool, KvError>;

    /// Members of a scored set. Redis: `ZCARD`.
    async fn inflight_len(&self, inflight_key: &str) -> Result<u64, KvError>;

    /// Record an order once: set `record_key` to `record` unless it exists, and only
    /// then add `record_key` to the scored set `open_key` with score `now_ms`.
    /// Returns the existing record when there was one. Redis: one Lua script
    /// (`SET NX`, `ZADD`).
    async fn record_order(
        &self,
        record_key: &str,
        record: &[u8],
        open_key: &str,
        now_ms: u64,
    ) -> Result<Option<Vec<u8>>, KvError>;

    /// Replace the byte value of `key` by `new` only if it is `expected` now;
    /// `true` when replaced. Redis: one Lua script (`GET`, compare, `SET`).
    async fn compare_and_set(
        &self,
        key: &str,
        expected: &[u8],
        new: &[u8],
    ) -> Result<bool, KvError>;

    /// Add a member to a scored set or move its score. Redis: `ZADD`.
    async fn scored_add(&self, key: &str, member: &[u8], score: u64) -> Result<(), KvError>;

    /// Take a lock for `owner` unless someone holds it; it expires after `ttl_ms`.
    /// Redis: `SET key owner NX PX ttl`.
    async fn try_lock(&self, key: &str, owner: &str, ttl_ms: u64) -> Result<bool, KvError>;

    /// Release a lock held by `owner`. Redis: one Lua script (compare, `DEL`).
    async fn unlock(&self, key: &str, owner: &str) -> Result<bool, KvError>;
}

/// Most items one [`Kv::list_range`] or [`Kv::inflight_due`] returns.
pub const LIST_RANGE_MAX: usize = 4096;

/// Check that `url` names a KV this build knows, without connecting (for config
/// files, so a typo is reported with its line before anything runs).
pub fn check_url(url: &str) -> Result<(), KvError> {
    let known = url == "memory"
        || url == "memory://"
        || url.starts_with("redis://")
        || url.starts_with("redis+cluster://");
    if known {
        Ok(())
    } else {
        Err(KvError::BadUrl {
            url: url.to_owned(),
            why: "expected `memory`, `redis://host:port[/db]` or `redis+cluster://host:port[,host:port…]`"
                .to_owned(),
        })
    }
}

/// Open the KV a URL names: `memory`, `redis://host:port[/db]` or
/// `redis+cluster://host:port[,host:port…]`. A Redis URL is connected to and pinged
/// here, so a wrong one fails before any traffic. A memory store is its own
/// namespace, so `options` only matter for Redis.
pub async fn open(
    url: &str,
    clock: Arc<dyn Clock>,
    options: &KvOptions,
) -> Result<Arc<dyn Kv>, KvError> {
    options.check(url)?;
    check_url(url)?;
    if url == "memory" || url == "memory://" {
        return Ok(Arc::new(MemoryKv::new(clock)));
    }
    Ok(Arc::new(RedisKv::connect(url, options).await?))
}

/// Delete every shadow key under `prefix` in the KV `url` names. A memory store
/// holds nothing after its process, so there is nothing to remove.
pub async fn cleanup_shadow(url: &str, prefix: &str) -> Result<KvCleanup, KvError> {
    let options = KvOptions::shadow(prefix);
    options.check(url)?;
    if url == "memory" || url == "memory://" {
        return Ok(KvCleanup::default());
    }
    if url.starts_with("redis://") || url.starts_with("redis+cluster://") {
        return RedisKv::connect(url, &options)
            .await?
            .delete_namespace()
            .await;
    }
    Err(KvError::BadUrl {
        url: url.to_owned(),
        why: "expected `memory`, `redis://…` or `redis+cluster://…`".to_owned(),
    })
}
