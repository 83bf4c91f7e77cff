//! The Redis KV (redis-rs, tokio): one `ConnectionManager` for a single node, a
//! cluster connection for `redis+cluster://`. STUB — being written.

use async_trait::async_trait;

use super::{Consume, Hold, Kv, KvCleanup, KvError, KvOptions};

/// KV on Redis or Redis Cluster.
#[derive(Debug, Clone)]
pub struct RedisKv {
    options: KvOptions,
}

impl RedisKv {
    /// Connect to the server(s) a `redis://` or `redis+cluster://` URL names and ping.
    pub async fn connect(url: &str, options: &KvOptions) -> Result<Self, KvError> {
        let _ = options;
        Err(KvError::BadUrl {
            url: url.to_owned(),
            why: "the Redis backend is not built yet".to_owned(),
        })
    }

    /// Delete every key in this store's namespace; refuses an empty namespace.
    pub async fn delete_namespace(&self) -> Result<KvCleanup, KvError> {
        let _ = &self.options;
        Err(KvError::Misuse("not built yet".to_owned()))
    }
}

#[async_trait]
impl Kv for RedisKv {
    #[allow(unused_variables)]
    async fn incr_by(&self, key: &str, delta: i64) -> Result<i64, KvError> {
        Err(KvError::Store("not built".to_owned()))
    }
    #[allow(unused_variables)]
    async fn counter(&self, key: &str) -> Result<i64, KvError> {
        Err(KvError::Store("not built".to_owned()))
    }
    #[allow(unused_variables)]
    async fn consume_within(&self, key: &str, n: u64, limit: u64) -> Result<Consume, KvError> {
        Err(KvError::Store("not built".to_owned()))
    }
    #[allow(unused_variables)]
    async fn consume_up_to(&self, key: &str, n: u64, limit: u64) -> Result<u64, KvError> {
        Err(KvError::Store("not built".to_owned()))
    }
    #[allow(unused_variables)]
    async fn release(&self, key: &str, n: u64) -> Result<u64, KvError> {
        Err(KvError::Store("not built".to_owned()))
    }
    #[allow(unused_variables)]
    async fn hold(&self, key: &str, value: &str) -> Result<Hold, KvError> {
        Err(KvError::Store("not built".to_owned()))
    }
    #[allow(unused_variables)]
    async fn unhold(&self, key: &str, value: &str) -> Result<u64, KvError> {
        Err(KvError::Store("not built".to_owned()))
    }
    #[allow(unused_variables)]
    async fn set_add(&self, key: &str, member: &str) -> Result<bool, KvError> {
        Err(KvError::Store("not built".to_owned()))
    }
    #[allow(unused_variables)]
    async fn set_contains(&self, key: &str, member: &str) -> Result<bool, KvError> {
        Err(KvError::Store("not built".to_owned()))
    }
    #[allow(unused_variables)]
    async fn put_status(&self, key: &str, status: u8, ttl_ms: Option<u64>) -> Result<(), KvError> {
        Err(KvError::Store("not built".to_owned()))
    }
    #[allow(unused_variables)]
    async fn status(&self, key: &str) -> Result<Option<u8>, KvError> {
        Err(KvError::Store("not built".to_owned()))
    }
    #[allow(unused_variables)]
    async fn queue_push(
        &self,
        key: &str,
        item: &[u8],
        ttl_ms: Option<u64>,
    ) -> Result<u64, KvError> {
        Err(KvError::Store("not built".to_owned()))
    }
    #[allow(unused_variables)]
    async fn queue_pop(&self, key: &str, max: usize) -> Result<Vec<Vec<u8>>, KvError> {
        Err(KvError::Store("not built".to_owned()))
    }
    #[allow(unused_variables)]
    async fn counters_with_prefix(&self, prefix: &str) -> Result<Vec<(String, i64)>, KvError> {
        Err(KvError::Store("not built".to_owned()))
    }
    #[allow(unused_variables)]
    async fn record_token(
        &self,
        record_key: &str,
        token: &[u8],
        list_key: &str,
        queue_key: &str,
    ) -> Result<Option<Vec<u8>>, KvError> {
        Err(KvError::Store("not built".to_owned()))
    }
    #[allow(unused_variables)]
    async fn bytes(&self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        Err(KvError::Store("not built".to_owned()))
    }
    #[allow(unused_variables)]
    async fn list_range(&self, key: &str, max: usize) -> Result<Vec<Vec<u8>>, KvError> {
        Err(KvError::Store("not built".to_owned()))
    }
    #[allow(unused_variables)]
    async fn queue_len(&self, key: &str) -> Result<u64, KvError> {
        Err(KvError::Store("not built".to_owned()))
    }
    #[allow(unused_variables)]
    async fn queue_claim(
        &self,
        queue_key: &str,
        inflight_key: &str,
        max: usize,
        now_ms: u64,
    ) -> Result<Vec<Vec<u8>>, KvError> {
        Err(KvError::Store("not built".to_owned()))
    }
    #[allow(unused_variables)]
    async fn inflight_due(
        &self,
        inflight_key: &str,
        due_ms: u64,
        max: usize,
    ) -> Result<Vec<Vec<u8>>, KvError> {
        Err(KvError::Store("not built".to_owned()))
    }
    #[allow(unused_variables)]
    async fn inflight_remove(&self, inflight_key: &str, member: &[u8]) -> Result<bool, KvError> {
        Err(KvError::Store("not built".to_owned()))
    }
    #[allow(unused_variables)]
    async fn inflight_len(&self, inflight_key: &str) -> Result<u64, KvError> {
        Err(KvError::Store("not built".to_owned()))
    }
    #[allow(unused_variables)]
    async fn record_order(
        &self,
        record_key: &str,
        record: &[u8],
        open_key: &str,
        now_ms: u64,
    ) -> Result<Option<Vec<u8>>, KvError> {
        Err(KvError::Store("not built".to_owned()))
    }
    #[allow(unused_variables)]
    async fn compare_and_set(
        &self,
        key: &str,
        expected: &[u8],
        new: &[u8],
    ) -> Result<bool, KvError> {
        Err(KvError::Store("not built".to_owned()))
    }
    #[allow(unused_variables)]
    async fn scored_add(&self, key: &str, member: &[u8], score: u64) -> Result<(), KvError> {
        Err(KvError::Store("not built".to_owned()))
    }
    #[allow(unused_variables)]
    async fn try_lock(&self, key: &str, owner: &str, ttl_ms: u64) -> Result<bool, KvError> {
        Err(KvError::Store("not built".to_owned()))
    }
    #[allow(unused_variables)]
    async fn unlock(&self, key: &str, owner: &str) -> Result<bool, KvError> {
        Err(KvError::Store("not built".to_owned()))
    }
}
