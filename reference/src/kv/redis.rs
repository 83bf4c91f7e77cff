//! The Redis KV (redis-rs, tokio): a `ConnectionManager` for `redis://host:port[/db]`,
//! a multiplexed cluster connection for `redis+cluster://host:port[,host:port…]`.
//! Every verb is the one command or one Lua script its trait doc names, so it gives
//! the same business outcomes and errors as [`super::MemoryKv`] (the conformance suite
//! in `conformance.rs` runs the same cases on both).
//!
//! Namespacing: [`KvOptions::key_prefix`] goes before every key sent and is stripped
//! from every key returned. Shadow stores give every key they write
//! [`KvOptions::write_ttl_ms`] in the same script or `MULTI`, so shadow keys expire by
//! themselves (a verb's own TTL — status, queue, lock — is cut to the shadow TTL).
//! A real store's scans (`counters_with_prefix`, `delete_namespace`) skip its shadow
//! namespace `<prefix>shadow:`, which lives under the same prefix. This module must
//! never touch a key outside its namespace, and never delete with an empty one.
//! Needs Redis 6.2+ (`SCAN … TYPE`, `SET … KEEPTTL`, `LPOP key count`).
//!
//! Known differences from the memory store, all from Redis having one string type:
//! counters, statuses, byte values and locks are all Redis strings, so a status
//! (`"8"`) reads as a counter and `counters_with_prefix` lists it, and a `WrongType`
//! between two string kinds is only reported when the value does not parse. Lua
//! numbers are doubles: the counter scripts are exact up to 2^53.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{
    Cmd, ErrorKind, FromRedisValue, RedisError, RedisFuture, Script, ServerErrorKind, Value, cmd,
};

use super::{
    Consume, Hold, Kv, KvCleanup, KvError, KvOptions, LIST_RANGE_MAX, QUEUE_POP_MAX, SHADOW_PREFIX,
};

/// How long one connection attempt to one node may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long one reply may take; a store that is slower is treated as down.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long `connect` may take in all (attempts, retries, topology, ping).
const OPEN_TIMEOUT: Duration = Duration::from_secs(5);
/// Reconnect attempts of a single-node connection before a call fails.
const RECONNECT_RETRIES: usize = 2;
/// Longest wait between two reconnect attempts.
const RECONNECT_DELAY_MAX: Duration = Duration::from_millis(500);
/// Retries of a cluster request (redirections, reconnects) before it fails.
const CLUSTER_RETRIES: u32 = 4;
/// Longest wait between two cluster retries, in ms.
const CLUSTER_RETRY_WAIT_MAX_MS: u64 = 500;
/// Keys asked for per `SCAN` step, and per `MGET`/`UNLINK` after it.
const SCAN_COUNT: usize = 512;
/// Most `SCAN` steps over one node: ~500 M keys, far past any namespace we make.
const SCAN_STEPS_MAX: usize = 1_000_000;
/// Counters at or above this are past what a Lua number (a double) holds exactly.
const LUA_EXACT_MAX: u64 = 1 << 53;

/// KV on Redis or Redis Cluster.
#[derive(Clone)]
pub struct RedisKv {
    conn: Conn,
    /// The URL without credentials, for error messages.
    target: String,
    /// Before every key: [`KvOptions::key_prefix`].
    prefix: String,
    /// Whether this is a shadow store (its keys are under [`SHADOW_PREFIX`]).
    shadow: bool,
    /// The TTL every written key gets: [`KvOptions::write_ttl_ms`].
    write_ttl_ms: Option<u64>,
}

impl fmt::Debug for RedisKv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisKv")
            .field("target", &self.target)
            .field("prefix", &self.prefix)
            .field("write_ttl_ms", &self.write_ttl_ms)
            .finish_non_exhaustive()
    }
}

/// One connection handle for both deployments; both are cheap to clone and
/// multiplexed, so every call clones its own.
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(conn) => conn.req_packed_command(cmd),
            Conn::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(conn) => conn.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(conn) => conn.get_db(),
            Conn::Cluster(conn) => conn.get_db(),
        }
    }
}

/// Where a `SCAN` runs: the single node, or one cluster master by address.
#[derive(Clone, Debug)]
enum Node {
    Single,
    Master { host: String, port: u16 },
}

impl RedisKv {
    /// Connect to the server(s) a `redis://` or `redis+cluster://` URL names and ping,
    /// so a wrong URL or a store that is down fails here, within a few seconds.
    pub async fn connect(url: &str, options: &KvOptions) -> Result<Self, KvError> {
        let target = redact(url);
        let conn = tokio::time::timeout(OPEN_TIMEOUT, open_conn(url, &target))
            .await
            .map_err(|_| {
                KvError::Store(format!(
                    "redis {target}: no answer within {} s",
                    OPEN_TIMEOUT.as_secs()
                ))
            })??;
        Ok(Self {
            conn,
            target,
            prefix: options.key_prefix(),
            shadow: options.shadow,
            write_ttl_ms: options.write_ttl_ms(),
        })
    }

    /// Delete every key in this store's namespace (`SCAN` + `UNLINK`, on every
    /// master of a cluster). A real store leaves its shadow namespace alone (that is
    /// `cleanup_shadow`'s). Refuses an empty namespace: it would wipe the database.
    pub async fn delete_namespace(&self) -> Result<KvCleanup, KvError> {
        if self.prefix.is_empty() {
            return Err(KvError::Misuse(
                "delete_namespace needs a key prefix; an empty one would wipe the whole database"
                    .to_owned(),
            ));
        }
        let mut cleanup = KvCleanup::default();
        for node in self.nodes().await? {
            let keys = self.scan_node(&node, "", None).await?;
            for chunk in keys.chunks(SCAN_COUNT) {
                let deleted: u64 = self.query(cmd("UNLINK").arg(chunk)).await?;
                cleanup.keys += deleted;
            }
        }
        Ok(cleanup)
    }

    /// A key's remaining TTL in ms as Redis reports it (`PTTL`: -1 none, -2 missing).
    #[cfg(test)]
    pub(crate) async fn pttl_ms(&self, key: &str) -> Result<i64, KvError> {
        self.query(cmd("PTTL").arg(self.key(key))).await
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// Send one command.
    async fn query<T: FromRedisValue>(&self, command: &Cmd) -> Result<T, KvError> {
        command
            .query_async(&mut self.conn.clone())
            .await
            .map_err(|e| self.store_error(&e))
    }

    /// The shadow TTL as a script argument (`-1` = none).
    fn ttl_arg(&self) -> String {
        self.write_ttl_ms.map_or(-1, ttl_i64).to_string()
    }

    /// A TTL of the verb's own, shortened to the shadow TTL on a shadow store.
    fn own_ttl(&self, ttl_ms: Option<u64>) -> Option<u64> {
        match (ttl_ms, self.write_ttl_ms) {
            (Some(own), Some(shadow)) => Some(own.min(shadow)),
            (own, shadow) => own.or(shadow),
        }
    }

    /// Map a failed call on `keys` (caller's keys, with what the verb needs at each):
    /// the scripts' own type and sign errors, Redis's `WRONGTYPE`, non-integers and
    /// overflows as the memory store reports them; anything else is a store error.
    async fn redis_fail(&self, error: RedisError, keys: &[(&str, &'static str)]) -> KvError {
        let text = error.to_string();
        let from_server = matches!(error.kind(), ErrorKind::Server(_) | ErrorKind::Extension);
        let key_at = |index: usize| keys.get(index.saturating_sub(1)).copied();
        match error.code() {
            Some("REDRAIN_WRONGTYPE") => {
                let mut detail = error.detail().unwrap_or("").split(' ');
                let index = detail.next().and_then(|i| i.parse().ok()).unwrap_or(1);
                let found = found_name(detail.next().unwrap_or(""));
                if let Some((key, expected)) = key_at(index) {
                    return wrong_type(key, found, expected);
                }
            }
            Some("REDRAIN_NEGATIVE") => {
                let mut detail = error.detail().unwrap_or("").split(' ');
                let index = detail.next().and_then(|i| i.parse().ok()).unwrap_or(1);
                let value = detail.next().unwrap_or("?");
                if let Some((key, _)) = key_at(index) {
                    return KvError::Misuse(format!(
                        "counter `{key}` is negative ({value}); it is not a consume counter"
                    ));
                }
            }
            _ => {}
        }
        match (error.kind(), key_at(1)) {
            // A `MULTI` reports its errors without a code, hence the text.
            (_, Some((key, expected))) if from_server && text.contains("WRONGTYPE") => {
                let found = self.type_of(key).await;
                wrong_type(key, found, expected)
            }
            (ErrorKind::Server(ServerErrorKind::CrossSlot), _) => KvError::Misuse(format!(
                "redis {}: the keys {:?} of one verb must share a hash slot ({text})",
                self.target,
                keys.iter().map(|(k, _)| *k).collect::<Vec<_>>()
            )),
            (_, Some((key, expected))) if from_server && text.contains("not an integer") => {
                wrong_type(key, "a string that is not an integer", expected)
            }
            (_, Some((key, _))) if from_server && text.contains("overflow") => {
                KvError::Misuse(format!("counter `{key}` would overflow"))
            }
            _ => self.store_error(&error),
        }
    }

    fn store_error(&self, error: &RedisError) -> KvError {
        KvError::Store(format!("redis {}: {error}", self.target))
    }

    /// What `key` holds, for an error message; best effort.
    async fn type_of(&self, key: &str) -> &'static str {
        match self.query::<String>(cmd("TYPE").arg(self.key(key))).await {
            Ok(name) => found_name(&name),
            Err(_) => "another type",
        }
    }

    /// A single-command verb on one key: the command, with errors mapped for `key`.
    async fn single<T: FromRedisValue>(
        &self,
        command: &Cmd,
        key: &str,
        expected: &'static str,
    ) -> Result<T, KvError> {
        match command.query_async(&mut self.conn.clone()).await {
            Ok(value) => Ok(value),
            Err(e) => Err(self.redis_fail(e, &[(key, expected)]).await),
        }
    }

    /// A single-command write on one key (shadow: with `PEXPIRE` in one `MULTI`).
    async fn single_write<T: FromRedisValue>(
        &self,
        command: Cmd,
        key: &str,
        expected: &'static str,
    ) -> Result<T, KvError> {
        let full = self.key(key);
        let mut conn = self.conn.clone();
        let result = match self.write_ttl_ms {
            None => command.query_async(&mut conn).await,
            Some(ttl_ms) => redis::pipe()
                .atomic()
                .add_command(command)
                .cmd("PEXPIRE")
                .arg(&full)
                .arg(ttl_ms)
                .ignore()
                .query_async::<(T,)>(&mut conn)
                .await
                .map(|(value,)| value),
        };
        match result {
            Ok(value) => Ok(value),
            Err(e) => Err(self.redis_fail(e, &[(key, expected)]).await),
        }
    }

    /// The nodes holding keys: the single node, or every cluster master.
    async fn nodes(&self) -> Result<Vec<Node>, KvError> {
        let Conn::Cluster(conn) = &self.conn else {
            return Ok(vec![Node::Single]);
        };
        let slots = conn
            .clone()
            .route_command(
                cmd("CLUSTER").arg("SLOTS").clone(),
                RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
            )
            .await
            .map_err(|e| self.store_error(&e))?;
        let mut masters: Vec<(String, u16)> = Vec::new();
        for range in as_array(&slots) {
            // [start, end, [host, port, id, …], replicas…]
            let Some(master) = as_array(range).get(2) else {
                continue;
            };
            let fields = as_array(master);
            let host = fields
                .first()
                .and_then(|v| redis::from_redis_value_ref::<String>(v).ok());
            let port = fields
                .get(1)
                .and_then(|v| redis::from_redis_value_ref::<u16>(v).ok());
            if let (Some(host), Some(port)) = (host, port)
                && !masters.contains(&(host.clone(), port))
            {
                masters.push((host, port));
            }
        }
        if masters.is_empty() {
            return Err(KvError::Store(format!(
                "redis {}: CLUSTER SLOTS names no master",
                self.target
            )));
        }
        Ok(masters
            .into_iter()
            .map(|(host, port)| Node::Master { host, port })
            .collect())
    }

    /// Every key of this namespace on `node` that starts with `prefix` (caller's),
    /// full keys, deduplicated (`SCAN` may repeat one), shadow namespace excluded on a
    /// real store. `string_only` asks `SCAN` for one type.
    async fn scan_node(
        &self,
        node: &Node,
        prefix: &str,
        string_only: Option<&str>,
    ) -> Result<Vec<String>, KvError> {
        let pattern = format!("{}*", glob_escape(&self.key(prefix)));
        let shadow_below = (!self.shadow).then(|| self.key(SHADOW_PREFIX));
        let mut found = std::collections::BTreeSet::new();
        let mut cursor: u64 = 0;
        for _ in 0..SCAN_STEPS_MAX {
            let mut scan = cmd("SCAN");
            scan.arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(SCAN_COUNT);
            if let Some(kind) = string_only {
                scan.arg("TYPE").arg(kind);
            }
            let (next, keys): (u64, Vec<String>) = match (node, &self.conn) {
                (Node::Master { host, port }, Conn::Cluster(conn)) => {
                    let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                        host: host.clone(),
                        port: *port,
                    });
                    let reply = conn
                        .clone()
                        .route_command(scan, routing)
                        .await
                        .map_err(|e| self.store_error(&e))?;
                    redis::from_redis_value(reply).map_err(|e| {
                        KvError::Store(format!("redis {}: SCAN reply: {e}", self.target))
                    })?
                }
                _ => self.query(&scan).await?,
            };
            found.extend(keys.into_iter().filter(|key| {
                shadow_below
                    .as_deref()
                    .is_none_or(|shadow| !key.starts_with(shadow))
            }));
            if next == 0 {
                return Ok(found.into_iter().collect());
            }
            cursor = next;
        }
        Err(KvError::Store(format!(
            "redis {}: SCAN of `{pattern}` did not finish in {SCAN_STEPS_MAX} steps",
            self.target
        )))
    }
}

fn wrong_type(key: &str, found: &'static str, expected: &'static str) -> KvError {
    KvError::WrongType {
        key: key.to_owned(),
        found,
        expected,
    }
}

/// The memory store's name for what a Redis `TYPE` reports.
fn found_name(redis_type: &str) -> &'static str {
    match redis_type {
        "string" => "a string value",
        "notint" => "a string that is not an integer",
        "list" => "a queue",
        "set" => "a set",
        "zset" => "a scored set",
        "hash" => "a hold",
        "stream" => "a stream",
        _ => "another type",
    }
}

fn as_array(value: &Value) -> &[Value] {
    match value {
        Value::Array(items) | Value::Set(items) => items,
        _ => &[],
    }
}

fn ttl_i64(ttl_ms: u64) -> i64 {
    i64::try_from(ttl_ms).unwrap_or(i64::MAX)
}

/// `pattern` with the `SCAN MATCH` glob characters escaped.
fn glob_escape(pattern: &str) -> String {
    let mut escaped = String::with_capacity(pattern.len());
    for c in pattern.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

/// The URL without user or password: `scheme://host:port[,host:port…][/db]`.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (hosts, path) = match rest.find(['/', '?']) {
        Some(at) => rest.split_at(at),
        None => (rest, ""),
    };
    let hosts: Vec<&str> = hosts
        .split(',')
        .map(|host| host.rsplit_once('@').map_or(host, |(_, h)| h))
        .collect();
    let path = path.split('?').next().unwrap_or("");
    format!("{scheme}://{}{path}", hosts.join(","))
}

fn bad_url(url: &str, why: impl fmt::Display) -> KvError {
    KvError::BadUrl {
        url: redact(url),
        why: why.to_string(),
    }
}

async fn open_conn(url: &str, target: &str) -> Result<Conn, KvError> {
    let cannot = |e: RedisError| KvError::Store(format!("redis {target}: cannot connect: {e}"));
    let conn = if let Some(rest) = url.strip_prefix("redis+cluster://") {
        let client = ClusterClient::builder(cluster_seeds(url, rest)?)
            .connection_timeout(CONNECT_TIMEOUT)
            .response_timeout(RESPONSE_TIMEOUT)
            .retries(CLUSTER_RETRIES)
            .max_retry_wait(CLUSTER_RETRY_WAIT_MAX_MS)
            .build()
            .map_err(|e| bad_url(url, e))?;
        Conn::Cluster(client.get_async_connection().await.map_err(cannot)?)
    } else {
        let client = redis::Client::open(url).map_err(|e| bad_url(url, e))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_number_of_retries(RECONNECT_RETRIES)
            .set_max_delay(RECONNECT_DELAY_MAX);
        Conn::Single(
            ConnectionManager::new_with_config(client, config)
                .await
                .map_err(cannot)?,
        )
    };
    cmd("PING")
        .query_async::<()>(&mut conn.clone())
        .await
        .map_err(|e| KvError::Store(format!("redis {target}: ping failed: {e}")))?;
    Ok(conn)
}

/// The seed nodes of `redis+cluster://[user:pass@]host:port[,host:port…][/]` as
/// `redis://` URLs (credentials go to each seed).
fn cluster_seeds(url: &str, rest: &str) -> Result<Vec<String>, KvError> {
    let (authority, path) = match rest.find('/') {
        Some(at) => rest.split_at(at),
        None => (rest, ""),
    };
    if !matches!(path, "" | "/" | "/0") {
        return Err(bad_url(url, "a Redis Cluster has only database 0"));
    }
    let (userinfo, hosts) = match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => (format!("{userinfo}@"), hosts),
        None => (String::new(), authority),
    };
    let seeds: Vec<String> = hosts
        .split(',')
        .filter(|h| !h.is_empty())
        .map(|host| format!("redis://{userinfo}{host}"))
        .collect();
    if seeds.is_empty() {
        return Err(bad_url(url, "no host:port to start from"));
    }
    Ok(seeds)
}

/// The Lua helpers every script starts with. `wrongtype(i, t)`: key `i` holds
/// Redis type `t`; `counter(i)`: key `i` as an integer (missing = 0) or an error;
/// `touch(key)`: the shadow TTL (`ARGV[#ARGV]`, `-1` = none).
const LUA_PRELUDE: &str = r"
local ttl = tonumber(ARGV[#ARGV])
local function touch(key)
  if ttl >= 0 then redis.call('PEXPIRE', key, ttl) end
end
local function wrongtype(i, t)
  return redis.error_reply('REDRAIN_WRONGTYPE ' .. i .. ' ' .. t)
end
local function is_type(i, ...)
  local t = redis.call('TYPE', KEYS[i]).ok
  for _, want in ipairs({...}) do
    if t == want then return t, nil end
  end
  return t, wrongtype(i, t)
end
local function counter(i)
  local _, err = is_type(i, 'none', 'string')
  if err then return nil, nil, err end
  local v = redis.call('GET', KEYS[i])
  if not v then return 0, '0', nil end
  if not string.match(v, '^-?%d+$') then return nil, nil, wrongtype(i, 'notint') end
  local n = tonumber(v)
  if n < 0 then return nil, nil, redis.error_reply('REDRAIN_NEGATIVE ' .. i .. ' ' .. v) end
  return n, v, nil
end
local function int(n) return string.format('%.0f', n) end
";

/// The scripts, built once (`Script` holds the SHA1 for `EVALSHA`).
struct Scripts {
    consume_within: Script,
    consume_up_to: Script,
    release: Script,
    hold: Script,
    unhold: Script,
    queue_push: Script,
    record_token: Script,
    queue_claim: Script,
    record_order: Script,
    compare_and_set: Script,
    unlock: Script,
}

fn lua(body: &str) -> Script {
    Script::new(&format!("{LUA_PRELUDE}{body}"))
}

static SCRIPTS: std::sync::LazyLock<Scripts> = std::sync::LazyLock::new(|| Scripts {
    // ARGV: n, limit, ttl. Returns {1, current} consumed, {0, current} exceeded.
    consume_within: lua(r"
local current, text, err = counter(1)
if err then return err end
local n, limit = tonumber(ARGV[1]), tonumber(ARGV[2])
if current > limit or n > limit - current then return {0, text} end
redis.call('INCRBY', KEYS[1], ARGV[1])
touch(KEYS[1])
return {1, text}
"),
    // ARGV: n, limit, ttl. Returns the amount granted.
    consume_up_to: lua(r"
local current, _, err = counter(1)
if err then return err end
local room = tonumber(ARGV[2]) - current
if room < 0 then room = 0 end
local granted = math.min(tonumber(ARGV[1]), room)
if granted > 0 then
  redis.call('INCRBY', KEYS[1], int(granted))
  touch(KEYS[1])
end
return int(granted)
"),
    // ARGV: n, ttl. Returns the value after.
    release: lua(r"
local current, _, err = counter(1)
if err then return err end
local after = current - tonumber(ARGV[1])
if after < 0 then after = 0 end
redis.call('SET', KEYS[1], int(after), 'KEEPTTL')
touch(KEYS[1])
return int(after)
"),
    // ARGV: value, ttl. Returns {1, holders} held, {0, value} held by another.
    hold: lua(r"
local t, err = is_type(1, 'none', 'hash')
if err then return err end
if t == 'none' then
  redis.call('HSET', KEYS[1], 'value', ARGV[1], 'holders', 1)
  touch(KEYS[1])
  return {1, '1'}
end
local held = redis.call('HGET', KEYS[1], 'value')
if held ~= ARGV[1] then return {0, held or ''} end
local holders = redis.call('HINCRBY', KEYS[1], 'holders', 1)
touch(KEYS[1])
return {1, tostring(holders)}
"),
    // ARGV: value, ttl. Returns the holds left.
    unhold: lua(r"
local t, err = is_type(1, 'none', 'hash')
if err then return err end
if t == 'none' or redis.call('HGET', KEYS[1], 'value') ~= ARGV[1] then return 0 end
local left = redis.call('HINCRBY', KEYS[1], 'holders', -1)
if left <= 0 then
  redis.call('DEL', KEYS[1])
  return 0
end
touch(KEYS[1])
return left
"),
    // ARGV: item, queue ttl (-1 = none: the queue persists), ttl. Returns the length.
    queue_push: lua(r"
local _, err = is_type(1, 'none', 'list')
if err then return err end
local len = redis.call('RPUSH', KEYS[1], ARGV[1])
local own = tonumber(ARGV[2])
if own >= 0 then
  redis.call('PEXPIRE', KEYS[1], own)
else
  redis.call('PERSIST', KEYS[1])
end
return len
"),
    // KEYS: record, list, queue. ARGV: token, ttl. Returns the existing token or nil.
    record_token: lua(r"
local t, err = is_type(1, 'none', 'string')
if err then return err end
if t == 'string' then return redis.call('GET', KEYS[1]) end
for i = 2, 3 do
  local _, e = is_type(i, 'none', 'list')
  if e then return e end
end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('RPUSH', KEYS[2], ARGV[1])
redis.call('RPUSH', KEYS[3], ARGV[1])
for i = 1, 3 do touch(KEYS[i]) end
return false
"),
    // KEYS: queue, inflight. ARGV: max, now_ms, ttl. Returns the items claimed.
    queue_claim: lua(r"
local _, err = is_type(2, 'none', 'zset')
if err then return err end
local t, e = is_type(1, 'none', 'list')
if e then return e end
if t == 'none' or tonumber(ARGV[1]) == 0 then return {} end
local items = redis.call('LPOP', KEYS[1], ARGV[1])
if not items then return {} end
local scored = {}
for i, item in ipairs(items) do
  scored[2 * i - 1] = ARGV[2]
  scored[2 * i] = item
end
redis.call('ZADD', KEYS[2], unpack(scored))
touch(KEYS[1])
touch(KEYS[2])
return items
"),
    // KEYS: record, open. ARGV: record, member, now_ms, ttl. Returns the existing
    // record or nil.
    record_order: lua(r"
local t, err = is_type(1, 'none', 'string')
if err then return err end
if t == 'string' then return redis.call('GET', KEYS[1]) end
local _, e = is_type(2, 'none', 'zset')
if e then return e end
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[2])
redis.call('SET', KEYS[1], ARGV[1])
touch(KEYS[1])
touch(KEYS[2])
return false
"),
    // ARGV: expected, new, ttl. Returns 1 when replaced.
    compare_and_set: lua(r"
local t, err = is_type(1, 'none', 'string')
if err then return err end
if t == 'none' or redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL')
touch(KEYS[1])
return 1
"),
    // ARGV: owner, ttl. Returns 1 when released.
    unlock: lua(r"
local t, err = is_type(1, 'none', 'string')
if err then return err end
if t == 'none' or redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
return 1
"),
});

impl RedisKv {
    /// Run `script` over `keys` (caller's keys, prefixed here, with what the verb
    /// needs at each for error messages).
    async fn run<T: FromRedisValue>(
        &self,
        script: &Script,
        keys: &[(&str, &'static str)],
        args: &[&[u8]],
    ) -> Result<T, KvError> {
        let mut invocation = script.prepare_invoke();
        for (key, _) in keys {
            invocation.key(self.key(key));
        }
        for arg in args {
            invocation.arg(*arg);
        }
        // `EVALSHA`, loading the script once on `NOSCRIPT` (per node on a cluster).
        match invocation.invoke_async(&mut self.conn.clone()).await {
            Ok(value) => Ok(value),
            Err(e) => Err(self.redis_fail(e, keys).await),
        }
    }

    /// A queue-like read of `max` = 0: nothing, but the key's type is still checked.
    async fn check_list(&self, key: &str) -> Result<Vec<Vec<u8>>, KvError> {
        self.queue_len(key).await.map(|_| Vec::new())
    }
}

const COUNTER: &str = "a counter";
const QUEUE: &str = "a queue";
const SCORED: &str = "a scored set";
const BYTES: &str = "bytes";

fn bounded(max: usize, bound: usize, verb: &str) -> Result<usize, KvError> {
    if max > bound {
        return Err(KvError::Misuse(format!("{verb} of {max}; at most {bound}")));
    }
    Ok(max)
}

/// A limit the scripts can hold: a counter never passes `i64::MAX`.
fn limit_arg(limit: u64) -> String {
    limit.min(i64::MAX.unsigned_abs()).to_string()
}

fn parse_counter(key: &str, raw: &str) -> Result<u64, KvError> {
    raw.parse()
        .map_err(|_| KvError::Store(format!("counter `{key}`: unexpected script reply `{raw}`")))
}

#[async_trait]
impl Kv for RedisKv {
    async fn incr_by(&self, key: &str, delta: i64) -> Result<i64, KvError> {
        let mut command = cmd("INCRBY");
        command.arg(self.key(key)).arg(delta);
        self.single_write(command, key, COUNTER).await
    }

    async fn counter(&self, key: &str) -> Result<i64, KvError> {
        let raw: Option<String> = self
            .single(cmd("GET").arg(self.key(key)), key, COUNTER)
            .await?;
        match raw {
            None => Ok(0),
            Some(raw) => raw
                .parse()
                .map_err(|_| wrong_type(key, found_name("notint"), COUNTER)),
        }
    }

    async fn consume_within(&self, key: &str, n: u64, limit: u64) -> Result<Consume, KvError> {
        let (consumed, current): (i64, String) = self
            .run(
                &SCRIPTS.consume_within,
                &[(key, COUNTER)],
                &[
                    n.to_string().as_bytes(),
                    limit_arg(limit).as_bytes(),
                    self.ttl_arg().as_bytes(),
                ],
            )
            .await?;
        let current = parse_counter(key, &current)?;
        if consumed == 1 {
            Ok(Consume::Consumed {
                after: current.saturating_add(n),
            })
        } else {
            Ok(Consume::Exceeded { current })
        }
    }

    async fn consume_up_to(&self, key: &str, n: u64, limit: u64) -> Result<u64, KvError> {
        let granted: String = self
            .run(
                &SCRIPTS.consume_up_to,
                &[(key, COUNTER)],
                &[
                    n.min(LUA_EXACT_MAX).to_string().as_bytes(),
                    limit_arg(limit).as_bytes(),
                    self.ttl_arg().as_bytes(),
                ],
            )
            .await?;
        parse_counter(key, &granted)
    }

    async fn release(&self, key: &str, n: u64) -> Result<u64, KvError> {
        let after: String = self
            .run(
                &SCRIPTS.release,
                &[(key, COUNTER)],
                &[n.to_string().as_bytes(), self.ttl_arg().as_bytes()],
            )
            .await?;
        parse_counter(key, &after)
    }

    async fn hold(&self, key: &str, value: &str) -> Result<Hold, KvError> {
        let (held, detail): (i64, String) = self
            .run(
                &SCRIPTS.hold,
                &[(key, "a hold")],
                &[value.as_bytes(), self.ttl_arg().as_bytes()],
            )
            .await?;
        if held == 1 {
            Ok(Hold::Held {
                holders: parse_counter(key, &detail)?,
            })
        } else {
            Ok(Hold::HeldByOther { value: detail })
        }
    }

    async fn unhold(&self, key: &str, value: &str) -> Result<u64, KvError> {
        self.run(
            &SCRIPTS.unhold,
            &[(key, "a hold")],
            &[value.as_bytes(), self.ttl_arg().as_bytes()],
        )
        .await
    }

    async fn set_add(&self, key: &str, member: &str) -> Result<bool, KvError> {
        let mut command = cmd("SADD");
        command.arg(self.key(key)).arg(member);
        let added: u64 = self.single_write(command, key, "a set").await?;
        Ok(added == 1)
    }

    async fn set_contains(&self, key: &str, member: &str) -> Result<bool, KvError> {
        self.single(
            cmd("SISMEMBER").arg(self.key(key)).arg(member),
            key,
            "a set",
        )
        .await
    }

    async fn put_status(&self, key: &str, status: u8, ttl_ms: Option<u64>) -> Result<(), KvError> {
        let mut command = cmd("SET");
        command.arg(self.key(key)).arg(status);
        match self.own_ttl(ttl_ms) {
            // Expired as soon as written, as in the memory store.
            Some(0) => return self.query(cmd("DEL").arg(self.key(key))).await,
            Some(ttl) => {
                command.arg("PX").arg(ttl);
            }
            None => {}
        }
        self.single(&command, key, "a status").await
    }

    async fn status(&self, key: &str) -> Result<Option<u8>, KvError> {
        let raw: Option<String> = self
            .single(cmd("GET").arg(self.key(key)), key, "a status")
            .await?;
        raw.map(|raw| {
            raw.parse()
                .map_err(|_| wrong_type(key, "a string that is not a status", "a status"))
        })
        .transpose()
    }

    async fn queue_push(
        &self,
        key: &str,
        item: &[u8],
        ttl_ms: Option<u64>,
    ) -> Result<u64, KvError> {
        let own = self.own_ttl(ttl_ms).map_or(-1, ttl_i64).to_string();
        self.run(
            &SCRIPTS.queue_push,
            &[(key, QUEUE)],
            &[item, own.as_bytes(), self.ttl_arg().as_bytes()],
        )
        .await
    }

    async fn queue_pop(&self, key: &str, max: usize) -> Result<Vec<Vec<u8>>, KvError> {
        if bounded(max, QUEUE_POP_MAX, "queue_pop")? == 0 {
            return self.check_list(key).await;
        }
        let mut command = cmd("LPOP");
        command.arg(self.key(key)).arg(max);
        let items: Option<Vec<Vec<u8>>> = self.single_write(command, key, QUEUE).await?;
        Ok(items.unwrap_or_default())
    }

    async fn counters_with_prefix(&self, prefix: &str) -> Result<Vec<(String, i64)>, KvError> {
        let mut counters = Vec::new();
        for node in self.nodes().await? {
            let keys = self.scan_node(&node, prefix, Some("string")).await?;
            for chunk in keys.chunks(SCAN_COUNT) {
                // Byte values (tokens, records) are binary: parse, do not decode.
                let values: Vec<Option<Vec<u8>>> = self.query(cmd("MGET").arg(chunk)).await?;
                for (key, value) in chunk.iter().zip(values) {
                    // Gone since the scan, or a string that is not a counter.
                    let parsed = value.as_deref().map(std::str::from_utf8);
                    let Some(Ok(Ok(n))) = parsed.map(|v| v.map(str::parse::<i64>)) else {
                        continue;
                    };
                    if let Some(key) = key.strip_prefix(&self.prefix) {
                        counters.push((key.to_owned(), n));
                    }
                }
            }
        }
        counters.sort();
        Ok(counters)
    }

    async fn record_token(
        &self,
        record_key: &str,
        token: &[u8],
        list_key: &str,
        queue_key: &str,
    ) -> Result<Option<Vec<u8>>, KvError> {
        self.run(
            &SCRIPTS.record_token,
            &[(record_key, BYTES), (list_key, QUEUE), (queue_key, QUEUE)],
            &[token, self.ttl_arg().as_bytes()],
        )
        .await
    }

    async fn bytes(&self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        self.single(cmd("GET").arg(self.key(key)), key, BYTES).await
    }

    async fn list_range(&self, key: &str, max: usize) -> Result<Vec<Vec<u8>>, KvError> {
        if bounded(max, LIST_RANGE_MAX, "list_range")? == 0 {
            return self.check_list(key).await;
        }
        self.single(
            cmd("LRANGE").arg(self.key(key)).arg(0).arg(max - 1),
            key,
            QUEUE,
        )
        .await
    }

    async fn queue_len(&self, key: &str) -> Result<u64, KvError> {
        self.single(cmd("LLEN").arg(self.key(key)), key, QUEUE)
            .await
    }

    async fn queue_claim(
        &self,
        queue_key: &str,
        inflight_key: &str,
        max: usize,
        now_ms: u64,
    ) -> Result<Vec<Vec<u8>>, KvError> {
        let max = bounded(max, QUEUE_POP_MAX, "queue_claim")?;
        self.run(
            &SCRIPTS.queue_claim,
            &[(queue_key, QUEUE), (inflight_key, SCORED)],
            &[
                max.to_string().as_bytes(),
                now_ms.to_string().as_bytes(),
                self.ttl_arg().as_bytes(),
            ],
        )
        .await
    }

    async fn inflight_due(
        &self,
        inflight_key: &str,
        due_ms: u64,
        max: usize,
    ) -> Result<Vec<Vec<u8>>, KvError> {
        if bounded(max, LIST_RANGE_MAX, "inflight_due")? == 0 {
            return self.inflight_len(inflight_key).await.map(|_| Vec::new());
        }
        self.single(
            cmd("ZRANGEBYSCORE")
                .arg(self.key(inflight_key))
                .arg("-inf")
                .arg(due_ms)
                .arg("LIMIT")
                .arg(0)
                .arg(max),
            inflight_key,
            SCORED,
        )
        .await
    }

    async fn inflight_remove(&self, inflight_key: &str, member: &[u8]) -> Result<bool, KvError> {
        let mut command = cmd("ZREM");
        command.arg(self.key(inflight_key)).arg(member);
        let removed: u64 = self.single_write(command, inflight_key, SCORED).await?;
        Ok(removed == 1)
    }

    async fn inflight_len(&self, inflight_key: &str) -> Result<u64, KvError> {
        self.single(
            cmd("ZCARD").arg(self.key(inflight_key)),
            inflight_key,
            SCORED,
        )
        .await
    }

    async fn record_order(
        &self,
        record_key: &str,
        record: &[u8],
        open_key: &str,
        now_ms: u64,
    ) -> Result<Option<Vec<u8>>, KvError> {
        self.run(
            &SCRIPTS.record_order,
            &[(record_key, BYTES), (open_key, SCORED)],
            &[
                record,
                record_key.as_bytes(),
                now_ms.to_string().as_bytes(),
                self.ttl_arg().as_bytes(),
            ],
        )
        .await
    }

    async fn compare_and_set(
        &self,
        key: &str,
        expected: &[u8],
        new: &[u8],
    ) -> Result<bool, KvError> {
        let replaced: i64 = self
            .run(
                &SCRIPTS.compare_and_set,
                &[(key, BYTES)],
                &[expected, new, self.ttl_arg().as_bytes()],
            )
            .await?;
        Ok(replaced == 1)
    }

    async fn scored_add(&self, key: &str, member: &[u8], score: u64) -> Result<(), KvError> {
        let mut command = cmd("ZADD");
        command.arg(self.key(key)).arg(score).arg(member);
        self.single_write::<u64>(command, key, SCORED)
            .await
            .map(|_| ())
    }

    async fn try_lock(&self, key: &str, owner: &str, ttl_ms: u64) -> Result<bool, KvError> {
        // `PX 0` is refused; a lock of 0 ms lives 1 ms (the memory store's is gone at once).
        let ttl = self.own_ttl(Some(ttl_ms)).unwrap_or(ttl_ms).max(1);
        let reply: Value = self
            .single(
                cmd("SET")
                    .arg(self.key(key))
                    .arg(owner)
                    .arg("NX")
                    .arg("PX")
                    .arg(ttl),
                key,
                "a lock",
            )
            .await?;
        Ok(!matches!(reply, Value::Nil))
    }

    async fn unlock(&self, key: &str, owner: &str) -> Result<bool, KvError> {
        let released: i64 = self
            .run(
                &SCRIPTS.unlock,
                &[(key, "a lock")],
                &[owner.as_bytes(), self.ttl_arg().as_bytes()],
            )
            .await?;
        Ok(released == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_redacted_and_globs_escaped() {
        assert_eq!(
            redact("redis://user:secret@10.0.0.1:6379/2"),
            "redis://10.0.0.1:6379/2"
        );
        assert_eq!(
            redact("redis+cluster://:pw@a:1,b:2"),
            "redis+cluster://a:1,b:2"
        );
        assert_eq!(redact("redis://h:1?password=x"), "redis://h:1");
        assert_eq!(glob_escape(r"a*b?c[d]e\f"), r"a\*b\?c\[d\]e\\f");
    }

    #[test]
    fn cluster_seeds_carry_credentials_and_refuse_databases() {
        let url = "redis+cluster://u:p@a:1,b:2";
        assert_eq!(
            cluster_seeds(url, "u:p@a:1,b:2").ok(),
            Some(vec![
                "redis://u:p@a:1".to_owned(),
                "redis://u:p@b:2".to_owned()
            ])
        );
        assert!(cluster_seeds("redis+cluster://a:1/3", "a:1/3").is_err());
        assert!(cluster_seeds("redis+cluster://", "").is_err());
    }
}
