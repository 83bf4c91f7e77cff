//! One conformance suite for every KV backend: the same cases and the same outcomes
//! on the memory store, Redis (`REDRAIN_REDIS_URL`) and Redis Cluster
//! (`REDRAIN_REDIS_CLUSTER_URL`). A Redis case runs in a namespace of its own and
//! deletes it at the end (also when it fails), so it never touches another key on a
//! shared server. Keys a multi-key verb takes together share a hash tag, as the
//! real layout in `keys.rs` does, so the cases run on a cluster too.

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::clock::ManualClock;
use crate::keys;
use crate::testenv::{REDIS, REDIS_CLUSTER, service_url, unique_name};

/// The TTL of the expiry cases: short, since Redis runs it in real time.
const TTL_MS: u64 = 200;
/// Longest a Redis `open` of a dead address may take before the case calls it hung.
const OPEN_DEADLINE: Duration = Duration::from_secs(10);

/// One store under test.
struct Backend {
    name: &'static str,
    kv: Arc<dyn Kv>,
    /// The memory store's clock; `None` for Redis, whose TTLs run in real time.
    clock: Option<Arc<ManualClock>>,
    /// The Redis URL and options, to reopen, delete the namespace or read `PTTL`.
    redis: Option<RedisStore>,
}

struct RedisStore {
    url: String,
    options: KvOptions,
    kv: RedisKv,
}

impl Backend {
    /// Let `ms` pass for the store's TTLs: the memory store's manual clock moves;
    /// Redis expires keys on its own clock, so the case waits it out (a margin for
    /// the server's expiry).
    async fn advance(&self, ms: u64) {
        match &self.clock {
            Some(clock) => clock.advance(ms),
            None => tokio::time::sleep(Duration::from_millis(ms + 50)).await,
        }
    }

    /// Another store of the same kind in a namespace of its own.
    async fn sibling(&self, tag: &str) -> Backend {
        match &self.redis {
            None => memory(),
            Some(store) => redis_backend(self.name, &store.url, namespace(tag)).await,
        }
    }

    /// Delete the namespace (Redis) and check nothing is left in it.
    async fn finish(mut self) {
        let Some(store) = self.redis.take() else {
            return;
        };
        store.kv.delete_namespace().await.expect("delete namespace");
        assert_eq!(
            store.kv.counters_with_prefix("").await.ok(),
            Some(vec![]),
            "{}: namespace left over",
            self.name
        );
    }
}

impl Drop for Backend {
    /// A failed case still deletes its namespace: on a fresh runtime in a thread of
    /// its own, since the case's runtime is unwinding.
    fn drop(&mut self) {
        let Some(store) = self.redis.take() else {
            return;
        };
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("cleanup runtime");
            runtime.block_on(async {
                if let Ok(kv) = RedisKv::connect(&store.url, &store.options).await {
                    let _ = kv.delete_namespace().await;
                }
            });
        });
        let _ = cleanup.join();
    }
}

fn namespace(tag: &str) -> KvOptions {
    KvOptions {
        prefix: format!("{}:", unique_name(tag)),
        ..KvOptions::default()
    }
}

fn memory() -> Backend {
    let clock = Arc::new(ManualClock::new(1_000));
    Backend {
        name: "memory",
        kv: Arc::new(MemoryKv::new(clock.clone())),
        clock: Some(clock),
        redis: None,
    }
}

async fn redis_backend(name: &'static str, url: &str, options: KvOptions) -> Backend {
    let kv = RedisKv::connect(url, &options)
        .await
        .unwrap_or_else(|e| panic!("{name}: connect: {e}"));
    Backend {
        name,
        kv: Arc::new(kv.clone()),
        clock: None,
        redis: Some(RedisStore {
            url: url.to_owned(),
            options,
            kv,
        }),
    }
}

/// The Redis backends whose URL is set (each skip is printed by `service_url`).
fn redis_urls(test: &str) -> Vec<(&'static str, String)> {
    [(REDIS, "redis"), (REDIS_CLUSTER, "redis-cluster")]
        .into_iter()
        .filter_map(|(var, name)| service_url(var, test).map(|url| (name, url)))
        .collect()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("runtime")
}

/// Run `case` on every backend.
fn run(test: &str, case: impl AsyncFn(&Backend)) {
    runtime().block_on(async {
        let memory = memory();
        case(&memory).await;
        for (name, url) in redis_urls(test) {
            let backend = redis_backend(name, &url, namespace(test)).await;
            case(&backend).await;
            backend.finish().await;
        }
    });
}

/// Run `case` on the Redis backends only (namespaces and TTLs the memory store
/// does not have).
fn run_redis(test: &str, case: impl AsyncFn(&'static str, &str)) {
    runtime().block_on(async {
        for (name, url) in redis_urls(test) {
            case(name, &url).await;
        }
    });
}

/// `result` is a `WrongType` naming `key` and `expected`, and `found` when given:
/// Redis tells apart the memory store's kinds except those that are all strings
/// (counter, status, bytes, lock).
#[track_caller]
fn assert_wrong<T: Debug>(
    name: &str,
    result: Result<T, KvError>,
    key: &str,
    expected: &str,
    found: Option<&str>,
) {
    match result {
        Err(KvError::WrongType {
            key: k,
            expected: e,
            found: f,
        }) => {
            assert_eq!((k.as_str(), e), (key, expected), "{name}");
            if let Some(found) = found {
                assert_eq!(f, found, "{name}: {key}");
            }
        }
        other => panic!("{name}: {key}: expected WrongType({expected}), got {other:?}"),
    }
}

#[track_caller]
fn assert_misuse<T: Debug>(name: &str, result: Result<T, KvError>) {
    assert!(
        matches!(result, Err(KvError::Misuse(_))),
        "{name}: expected Misuse, got {result:?}"
    );
}

#[test]
fn counters_add_read_and_refuse_overflow() {
    run("counters", async |b| {
        let (name, kv) = (b.name, &b.kv);
        assert_eq!(kv.counter("c").await.ok(), Some(0), "{name}: missing = 0");
        assert_eq!(kv.incr_by("c", 5).await.ok(), Some(5), "{name}");
        assert_eq!(kv.incr_by("c", -7).await.ok(), Some(-2), "{name}");
        assert_eq!(kv.counter("c").await.ok(), Some(-2), "{name}");
        assert_eq!(kv.incr_by("big", i64::MAX).await.ok(), Some(i64::MAX));
        assert_misuse(name, kv.incr_by("big", 1).await);
        assert_eq!(kv.counter("big").await.ok(), Some(i64::MAX), "{name}");
    });
}

#[test]
fn consume_within_never_passes_the_limit() {
    run("consume_within", async |b| {
        let (name, kv) = (b.name, &b.kv);
        let cases: [(u64, u64, Consume); 5] = [
            (2, 3, Consume::Consumed { after: 2 }),
            (2, 3, Consume::Exceeded { current: 2 }),
            (1, 3, Consume::Consumed { after: 3 }),
            (0, 3, Consume::Consumed { after: 3 }),
            (1, 2, Consume::Exceeded { current: 3 }),
        ];
        for (n, limit, expected) in cases {
            assert_eq!(
                kv.consume_within("s", n, limit).await.ok(),
                Some(expected),
                "{name}: consume {n} within {limit}"
            );
        }
        assert_eq!(kv.release("s", 5).await.ok(), Some(0), "{name}: clamps");
        assert_eq!(
            kv.consume_within("s", u64::MAX, 3).await.ok(),
            Some(Consume::Exceeded { current: 0 }),
            "{name}"
        );
        assert_eq!(kv.counter("s").await.ok(), Some(0), "{name}");
    });
}

#[test]
fn consume_up_to_grants_what_fits_and_release_clamps() {
    run("consume_up_to", async |b| {
        let (name, kv) = (b.name, &b.kv);
        for (n, granted) in [(4, 4), (8, 6), (3, 0), (0, 0)] {
            assert_eq!(
                kv.consume_up_to("s", n, 10).await.ok(),
                Some(granted),
                "{name}: {n} up to 10"
            );
        }
        assert_eq!(kv.counter("s").await.ok(), Some(10), "{name}");
        assert_eq!(kv.consume_up_to("s", 5, 7).await.ok(), Some(0), "{name}");
        assert_eq!(kv.release("s", 3).await.ok(), Some(7), "{name}");
        assert_eq!(kv.release("s", 100).await.ok(), Some(0), "{name}");
        assert_eq!(kv.release("fresh", 1).await.ok(), Some(0), "{name}");
        assert_eq!(kv.counter("fresh").await.ok(), Some(0), "{name}");
    });
}

#[test]
fn negative_counters_are_not_consume_counters() {
    run("negative", async |b| {
        let (name, kv) = (b.name, &b.kv);
        kv.incr_by("neg", -1).await.expect("incr");
        assert_misuse(name, kv.consume_within("neg", 1, 5).await);
        assert_misuse(name, kv.consume_up_to("neg", 1, 5).await);
        assert_misuse(name, kv.release("neg", 1).await);
        assert_eq!(kv.counter("neg").await.ok(), Some(-1), "{name}: unchanged");
    });
}

#[test]
fn concurrent_consumes_grant_exactly_the_limit() {
    const TASKS: usize = 16;
    const LIMIT: u64 = 100;
    run("concurrent", async |b| {
        let mut tasks = Vec::new();
        for _ in 0..TASKS {
            let kv = b.kv.clone();
            tasks.push(tokio::spawn(async move {
                let mut granted = 0_u64;
                // Bounded: each task can be granted at most LIMIT.
                for _ in 0..=LIMIT {
                    match kv.consume_within("hot", 1, LIMIT).await.expect("consume") {
                        Consume::Consumed { .. } => granted += 1,
                        Consume::Exceeded { current } => {
                            assert_eq!(current, LIMIT);
                            break;
                        }
                    }
                }
                granted
            }));
        }
        let mut granted = 0;
        for task in tasks {
            granted += task.await.expect("task");
        }
        assert_eq!(granted, LIMIT, "{}", b.name);
        assert_eq!(b.kv.counter("hot").await.ok(), Some(100), "{}", b.name);
    });
}

#[test]
fn holds_are_shared_by_one_value_and_exclusive_against_others() {
    run("holds", async |b| {
        let (name, kv) = (b.name, &b.kv);
        let other = |v: &str| {
            Some(Hold::HeldByOther {
                value: v.to_owned(),
            })
        };
        assert_eq!(kv.unhold("g", "b1").await.ok(), Some(0), "{name}: none");
        assert_eq!(
            kv.hold("g", "b1").await.ok(),
            Some(Hold::Held { holders: 1 })
        );
        assert_eq!(
            kv.hold("g", "b1").await.ok(),
            Some(Hold::Held { holders: 2 })
        );
        assert_eq!(kv.hold("g", "b2").await.ok(), other("b1"), "{name}");
        assert_eq!(kv.unhold("g", "b2").await.ok(), Some(0), "{name}: not ours");
        assert_eq!(kv.unhold("g", "b1").await.ok(), Some(1), "{name}");
        assert_eq!(kv.hold("g", "b2").await.ok(), other("b1"), "{name}");
        assert_eq!(kv.unhold("g", "b1").await.ok(), Some(0), "{name}");
        assert_eq!(
            kv.hold("g", "b2").await.ok(),
            Some(Hold::Held { holders: 1 })
        );
    });
}

#[test]
fn sets_add_once() {
    run("sets", async |b| {
        let (name, kv) = (b.name, &b.kv);
        assert_eq!(kv.set_contains("u", "a").await.ok(), Some(false), "{name}");
        assert_eq!(kv.set_add("u", "a").await.ok(), Some(true), "{name}");
        assert_eq!(kv.set_add("u", "a").await.ok(), Some(false), "{name}");
        assert_eq!(kv.set_add("u", "b").await.ok(), Some(true), "{name}");
        assert_eq!(kv.set_contains("u", "a").await.ok(), Some(true), "{name}");
        assert_eq!(kv.set_contains("u", "c").await.ok(), Some(false), "{name}");
    });
}

#[test]
fn statuses_expire_after_their_ttl() {
    run("status", async |b| {
        let (name, kv) = (b.name, &b.kv);
        assert_eq!(kv.status("t").await.ok(), Some(None), "{name}");
        kv.put_status("t", 2, Some(TTL_MS)).await.expect("put");
        kv.put_status("kept", 2, Some(TTL_MS)).await.expect("put");
        kv.put_status("kept", 8, None)
            .await
            .expect("put without TTL");
        kv.put_status("plain", 255, None).await.expect("put");
        assert_eq!(kv.status("t").await.ok(), Some(Some(2)), "{name}");
        b.advance(TTL_MS).await;
        assert_eq!(kv.status("t").await.ok(), Some(None), "{name}: expired");
        assert_eq!(kv.status("kept").await.ok(), Some(Some(8)), "{name}");
        assert_eq!(kv.status("plain").await.ok(), Some(Some(255)), "{name}");
        kv.put_status("now", 2, Some(0)).await.expect("put");
        assert_eq!(kv.status("now").await.ok(), Some(None), "{name}: ttl 0");
    });
}

#[test]
fn queues_push_pop_and_bound_a_pop() {
    run("queues", async |b| {
        let (name, kv) = (b.name, &b.kv);
        assert_eq!(kv.queue_pop("q", 5).await.ok(), Some(vec![]), "{name}");
        assert_eq!(kv.queue_len("q").await.ok(), Some(0), "{name}");
        for i in 0..QUEUE_POP_MAX + 6 {
            let len = kv.queue_push("q", &i.to_be_bytes(), None).await;
            assert_eq!(len.ok(), Some(i as u64 + 1), "{name}");
        }
        assert_misuse(name, kv.queue_pop("q", QUEUE_POP_MAX + 1).await);
        assert_eq!(kv.queue_pop("q", 0).await.ok(), Some(vec![]), "{name}");
        let popped = kv.queue_pop("q", QUEUE_POP_MAX).await.expect("pop");
        assert_eq!(popped.len(), QUEUE_POP_MAX, "{name}");
        assert_eq!(popped[0], 0_usize.to_be_bytes(), "{name}: oldest first");
        assert_eq!(kv.queue_len("q").await.ok(), Some(6), "{name}");
        let rest = kv.queue_pop("q", QUEUE_POP_MAX).await.expect("pop");
        assert_eq!(rest.len(), 6, "{name}");
        assert_eq!(kv.queue_len("q").await.ok(), Some(0), "{name}");
    });
}

#[test]
fn queue_ttls_are_reset_by_every_push() {
    run("queue_ttl", async |b| {
        let (name, kv) = (b.name, &b.kv);
        kv.queue_push("gone", b"a", Some(TTL_MS))
            .await
            .expect("push");
        kv.queue_push("gone", b"b", Some(TTL_MS))
            .await
            .expect("push");
        kv.queue_push("kept", b"a", Some(TTL_MS))
            .await
            .expect("push");
        kv.queue_push("kept", b"b", None)
            .await
            .expect("push, no TTL");
        assert_eq!(
            kv.queue_pop("gone", 1).await.ok(),
            Some(vec![b"a".to_vec()]),
            "{name}"
        );
        b.advance(TTL_MS).await;
        assert_eq!(kv.queue_pop("gone", 10).await.ok(), Some(vec![]), "{name}");
        assert_eq!(kv.queue_len("kept").await.ok(), Some(2), "{name}");
    });
}

#[test]
fn tokens_are_recorded_once_and_claimed_into_inflight() {
    run("tokens", async |b| {
        let (name, kv) = (b.name, &b.kv);
        let (r1, r2) = (keys::token_record(7, "o1"), keys::token_record(7, "o2"));
        let (list, queue) = (keys::user_tokens(7, 42), keys::pending(7));
        let inflight = keys::inflight(7);
        let record =
            async |key: &str, token: &[u8]| kv.record_token(key, token, &list, &queue).await.ok();
        assert_eq!(record(&r1, b"t1").await, Some(None), "{name}");
        assert_eq!(record(&r1, b"other").await, Some(Some(b"t1".to_vec())));
        assert_eq!(record(&r2, b"t2").await, Some(None), "{name}");
        let both = vec![b"t1".to_vec(), b"t2".to_vec()];
        assert_eq!(kv.list_range(&list, 10).await.ok(), Some(both.clone()));
        assert_eq!(
            kv.list_range(&list, 1).await.ok(),
            Some(vec![both[0].clone()])
        );
        assert_eq!(kv.list_range(&list, 0).await.ok(), Some(vec![]), "{name}");
        assert_eq!(kv.queue_len(&queue).await.ok(), Some(2), "{name}");
        let claim = async |max: usize, now_ms: u64| {
            kv.queue_claim(&queue, &inflight, max, now_ms).await.ok()
        };
        assert_eq!(claim(0, 50).await, Some(vec![]), "{name}: max 0");
        assert_eq!(claim(1, 100).await, Some(vec![both[0].clone()]), "{name}");
        assert_eq!(claim(5, 200).await, Some(vec![both[1].clone()]), "{name}");
        assert_eq!(claim(5, 300).await, Some(vec![]), "{name}: empty");
        assert_eq!(kv.queue_len(&queue).await.ok(), Some(0), "{name}");
        assert_eq!(kv.inflight_len(&inflight).await.ok(), Some(2), "{name}");
        let due =
            async |due_ms: u64, max: usize| kv.inflight_due(&inflight, due_ms, max).await.ok();
        assert_eq!(due(99, 10).await, Some(vec![]), "{name}");
        assert_eq!(due(150, 10).await, Some(vec![both[0].clone()]), "{name}");
        assert_eq!(due(200, 10).await, Some(both.clone()), "{name}");
        assert_eq!(due(200, 1).await, Some(vec![both[0].clone()]), "{name}");
        assert_eq!(due(200, 0).await, Some(vec![]), "{name}");
        let removed = |member: &'static [u8]| kv.inflight_remove(&inflight, member);
        assert_eq!(removed(b"t1").await.ok(), Some(true), "{name}");
        assert_eq!(removed(b"t1").await.ok(), Some(false), "{name}");
        assert_eq!(kv.inflight_len(&inflight).await.ok(), Some(1), "{name}");
        assert_eq!(kv.bytes(&r2).await.ok(), Some(Some(b"t2".to_vec())));
        assert_eq!(kv.bytes("none").await.ok(), Some(None), "{name}");
        assert_eq!(
            kv.list_range(&list, 10).await.ok(),
            Some(both),
            "{name}: the user's list is never consumed"
        );
    });
}

#[test]
fn inflight_due_orders_by_score_then_member() {
    run("inflight_order", async |b| {
        let (name, kv) = (b.name, &b.kv);
        let set = keys::inflight(3);
        for (member, score) in [(&b"b"[..], 5), (b"a", 5), (b"c", 1), (b"d", 9)] {
            kv.scored_add(&set, member, score).await.expect("zadd");
        }
        kv.scored_add(&set, b"d", 2).await.expect("move");
        let due = kv.inflight_due(&set, 5, 10).await.expect("due");
        let expected: Vec<Vec<u8>> = [&b"c"[..], b"d", b"a", b"b"]
            .iter()
            .map(|m| m.to_vec())
            .collect();
        assert_eq!(due, expected, "{name}");
        assert_eq!(kv.inflight_len(&set).await.ok(), Some(4), "{name}");
    });
}

#[test]
fn orders_are_recorded_once_and_moved_by_compare_and_set() {
    run("orders", async |b| {
        let (name, kv) = (b.name, &b.kv);
        let (o1, o2, open) = (
            keys::order(7, "o1"),
            keys::order(7, "o2"),
            keys::orders_open(7),
        );
        assert_eq!(kv.record_order(&o1, b"a", &open, 5).await.ok(), Some(None));
        assert_eq!(
            kv.record_order(&o1, b"b", &open, 9).await.ok(),
            Some(Some(b"a".to_vec())),
            "{name}: the first record wins"
        );
        assert_eq!(
            kv.inflight_due(&open, 5, 10).await.ok(),
            Some(vec![o1.as_bytes().to_vec()]),
            "{name}: the member is the caller's key"
        );
        assert_eq!(kv.compare_and_set(&o1, b"x", b"c").await.ok(), Some(false));
        assert_eq!(kv.compare_and_set(&o1, b"a", b"c").await.ok(), Some(true));
        assert_eq!(
            kv.bytes(&o1).await.ok(),
            Some(Some(b"c".to_vec())),
            "{name}"
        );
        assert_eq!(kv.compare_and_set(&o2, b"a", b"c").await.ok(), Some(false));
        assert_eq!(kv.bytes(&o2).await.ok(), Some(None), "{name}");
        kv.scored_add(&open, o1.as_bytes(), 50).await.expect("zadd");
        assert_eq!(kv.inflight_due(&open, 49, 10).await.ok(), Some(vec![]));
        assert_eq!(kv.inflight_len(&open).await.ok(), Some(1), "{name}");
    });
}

#[test]
fn locks_expire_and_only_the_owner_unlocks() {
    run("locks", async |b| {
        let (name, kv) = (b.name, &b.kv);
        assert_eq!(kv.try_lock("lk", "a", TTL_MS).await.ok(), Some(true));
        assert_eq!(kv.try_lock("lk", "b", TTL_MS).await.ok(), Some(false));
        assert_eq!(kv.unlock("lk", "b").await.ok(), Some(false), "{name}");
        b.advance(TTL_MS).await;
        assert_eq!(
            kv.try_lock("lk", "b", TTL_MS).await.ok(),
            Some(true),
            "{name}: expired"
        );
        assert_eq!(kv.unlock("lk", "b").await.ok(), Some(true), "{name}");
        assert_eq!(kv.unlock("lk", "b").await.ok(), Some(false), "{name}");
        assert_eq!(kv.try_lock("lk", "a", 60_000).await.ok(), Some(true));
    });
}

#[test]
fn counters_with_prefix_list_counters_in_key_order() {
    run("counters_prefix", async |b| {
        let (name, kv) = (b.name, &b.kv);
        for (key, delta) in [("c:2", -2), ("c:10", 7), ("c:1", 5), ("d", 1), ("c", 3)] {
            kv.incr_by(key, delta).await.expect("incr");
        }
        kv.set_add("c:set", "m").await.expect("sadd");
        kv.queue_push("c:queue", b"x", None).await.expect("push");
        // Byte values, binary ones too, are not counters.
        for (record, value) in [("c:{x}:b", &b"12x"[..]), ("c:{x}:bin", b"\xff\xfe9")] {
            let recorded = kv.record_order(record, value, "c:{x}:open", 1).await;
            assert_eq!(recorded.ok(), Some(None), "{name}");
        }
        let listed = kv.counters_with_prefix("c:").await.expect("scan");
        let expected = [("c:1", 5), ("c:10", 7), ("c:2", -2)];
        let expected: Vec<(String, i64)> = expected
            .iter()
            .map(|(k, n)| ((*k).to_owned(), *n))
            .collect();
        assert_eq!(listed, expected, "{name}");
        let all = kv.counters_with_prefix("").await.expect("scan all");
        assert_eq!(all.len(), 5, "{name}: {all:?}");
        assert_eq!(all[0], ("c".to_owned(), 3), "{name}");
        assert_eq!(kv.counters_with_prefix("e").await.ok(), Some(vec![]));
    });
}

#[test]
fn counters_with_prefix_take_glob_characters_literally() {
    run("counters_glob", async |b| {
        let (name, kv) = (b.name, &b.kv);
        for key in ["g*x", "gax", "g?y", "g[a]", r"g\z", "g"] {
            kv.incr_by(key, 1).await.expect("incr");
        }
        for (prefix, expected) in [
            ("g*", vec!["g*x"]),
            ("g?", vec!["g?y"]),
            ("g[", vec!["g[a]"]),
            ("g[a]", vec!["g[a]"]),
            (r"g\", vec![r"g\z"]),
        ] {
            let listed = kv.counters_with_prefix(prefix).await.expect("scan");
            let keys: Vec<&str> = listed.iter().map(|(k, _)| k.as_str()).collect();
            assert_eq!(keys, expected, "{name}: prefix {prefix}");
        }
    });
}

#[test]
fn verbs_on_a_key_of_another_type_fail_with_wrong_type() {
    run("wrong_type", async |b| {
        let (name, kv) = (b.name, &b.kv);
        // One hash tag, so the multi-key verbs below stay in one cluster slot.
        let (set, queue, zset) = ("w:{w}:set", "w:{w}:queue", "w:{w}:zset");
        let (hold, counter, bytes, fresh) = ("w:{w}:hold", "w:{w}:n", "w:{w}:b", "w:{w}:f");
        kv.set_add(set, "m").await.expect("sadd");
        kv.queue_push(queue, b"x", None).await.expect("push");
        kv.scored_add(zset, b"m", 1).await.expect("zadd");
        kv.hold(hold, "v").await.expect("hold");
        kv.incr_by(counter, 1).await.expect("incr");
        kv.record_order(bytes, b"record", zset, 2)
            .await
            .expect("record");
        let (a_set, a_queue, a_zset, a_hold) = (
            Some("a set"),
            Some("a queue"),
            Some("a scored set"),
            Some("a hold"),
        );
        let c = "a counter";
        assert_wrong(name, kv.incr_by(set, 1).await, set, c, a_set);
        assert_wrong(name, kv.counter(set).await, set, c, a_set);
        assert_wrong(
            name,
            kv.consume_within(queue, 1, 5).await,
            queue,
            c,
            a_queue,
        );
        assert_wrong(name, kv.consume_up_to(zset, 1, 5).await, zset, c, a_zset);
        assert_wrong(name, kv.release(hold, 1).await, hold, c, a_hold);
        assert_wrong(name, kv.hold(set, "v").await, set, "a hold", a_set);
        assert_wrong(name, kv.unhold(queue, "v").await, queue, "a hold", a_queue);
        assert_wrong(name, kv.set_add(queue, "m").await, queue, "a set", a_queue);
        assert_wrong(
            name,
            kv.set_contains(zset, "m").await,
            zset,
            "a set",
            a_zset,
        );
        assert_wrong(name, kv.status(set).await, set, "a status", a_set);
        let q = "a queue";
        assert_wrong(name, kv.queue_push(set, b"x", None).await, set, q, a_set);
        assert_wrong(name, kv.queue_pop(zset, 1).await, zset, q, a_zset);
        assert_wrong(name, kv.queue_pop(zset, 0).await, zset, q, a_zset);
        assert_wrong(name, kv.list_range(hold, 1).await, hold, q, a_hold);
        assert_wrong(name, kv.list_range(hold, 0).await, hold, q, a_hold);
        assert_wrong(name, kv.queue_len(set).await, set, q, a_set);
        assert_wrong(name, kv.bytes(queue).await, queue, "bytes", a_queue);
        let z = "a scored set";
        assert_wrong(name, kv.inflight_due(set, 1, 1).await, set, z, a_set);
        assert_wrong(name, kv.inflight_due(set, 1, 0).await, set, z, a_set);
        assert_wrong(
            name,
            kv.inflight_remove(queue, b"m").await,
            queue,
            z,
            a_queue,
        );
        assert_wrong(name, kv.inflight_len(hold).await, hold, z, a_hold);
        assert_wrong(name, kv.scored_add(set, b"m", 1).await, set, z, a_set);
        let cas = kv.compare_and_set(zset, b"m", b"n").await;
        assert_wrong(name, cas, zset, "bytes", a_zset);
        assert_wrong(name, kv.unlock(set, "o").await, set, "a lock", a_set);
        let token = kv.record_token(set, b"t", queue, queue).await;
        assert_wrong(name, token, set, "bytes", a_set);
        let token = kv.record_token(fresh, b"t", set, queue).await;
        assert_wrong(name, token, set, q, a_set);
        let token = kv.record_token(fresh, b"t", queue, zset).await;
        assert_wrong(name, token, zset, q, a_zset);
        let claim = kv.queue_claim(set, zset, 1, 5).await;
        assert_wrong(name, claim, set, q, a_set);
        let claim = kv.queue_claim(queue, set, 1, 5).await;
        assert_wrong(name, claim, set, z, a_set);
        let order = kv.record_order(queue, b"r", zset, 5).await;
        assert_wrong(name, order, queue, "bytes", a_queue);
        let order = kv.record_order(fresh, b"r", set, 5).await;
        assert_wrong(name, order, set, z, a_set);
        // Kinds that are all strings on Redis: only a value that does not parse
        // gives it away there.
        assert_wrong(name, kv.counter(bytes).await, bytes, c, None);
        assert_wrong(name, kv.consume_within(bytes, 1, 5).await, bytes, c, None);
        assert_wrong(name, kv.status(bytes).await, bytes, "a status", None);
        assert_wrong(
            name,
            kv.scored_add(counter, b"m", 1).await,
            counter,
            z,
            None,
        );
        assert_wrong(name, kv.hold(counter, "v").await, counter, "a hold", None);
        // Nothing moved on a failed verb.
        assert_eq!(kv.queue_len(queue).await.ok(), Some(1), "{name}");
        assert_eq!(kv.bytes(fresh).await.ok(), Some(None), "{name}");
        assert_eq!(kv.inflight_len(zset).await.ok(), Some(2), "{name}");
        // Verbs that replace whatever is there do so on both.
        assert_eq!(kv.try_lock(set, "o", 60_000).await.ok(), Some(false));
        kv.put_status(set, 2, None).await.expect("put over a set");
        assert_eq!(kv.status(set).await.ok(), Some(Some(2)), "{name}");
    });
}

#[test]
fn bounds_are_enforced_as_misuse() {
    run("bounds", async |b| {
        let (name, kv) = (b.name, &b.kv);
        let (queue, inflight) = (keys::pending(1), keys::inflight(1));
        assert_misuse(name, kv.queue_pop(&queue, QUEUE_POP_MAX + 1).await);
        let claim = kv
            .queue_claim(&queue, &inflight, QUEUE_POP_MAX + 1, 1)
            .await;
        assert_misuse(name, claim);
        assert_misuse(name, kv.list_range(&queue, LIST_RANGE_MAX + 1).await);
        assert_misuse(
            name,
            kv.inflight_due(&inflight, 1, LIST_RANGE_MAX + 1).await,
        );
        assert_eq!(kv.queue_pop(&queue, QUEUE_POP_MAX).await.ok(), Some(vec![]));
        assert_eq!(
            kv.list_range(&queue, LIST_RANGE_MAX).await.ok(),
            Some(vec![])
        );
        let claim = kv.queue_claim(&queue, &inflight, QUEUE_POP_MAX, 1).await;
        assert_eq!(claim.ok(), Some(vec![]), "{name}");
    });
}

#[test]
fn a_namespace_hides_its_keys_from_another() {
    run("namespaces", async |b| {
        let (name, kv) = (b.name, &b.kv);
        kv.incr_by("n", 5).await.expect("incr");
        kv.set_add("s", "m").await.expect("sadd");
        kv.queue_push("q", b"x", None).await.expect("push");
        let other = b.sibling("namespaces_b").await;
        assert_eq!(other.kv.counter("n").await.ok(), Some(0), "{name}");
        assert_eq!(other.kv.set_contains("s", "m").await.ok(), Some(false));
        assert_eq!(other.kv.queue_len("q").await.ok(), Some(0), "{name}");
        assert_eq!(other.kv.counters_with_prefix("").await.ok(), Some(vec![]));
        other.kv.incr_by("n", 1).await.expect("incr");
        assert_eq!(kv.counter("n").await.ok(), Some(5), "{name}");
        assert_eq!(
            kv.counters_with_prefix("").await.ok(),
            Some(vec![("n".to_owned(), 5)]),
            "{name}: keys come back without the namespace"
        );
        other.finish().await;
    });
}

#[test]
fn shadow_keys_carry_the_shadow_ttl() {
    const SHADOW_TTL_MS: u64 = 60_000;
    run_redis("shadow_ttl", async |name, url| {
        let mut options = KvOptions::shadow(&format!("{}:", unique_name("shadow_ttl")));
        options.shadow_ttl_ms = Some(SHADOW_TTL_MS);
        let shadow = redis_backend(name, url, options.clone()).await;
        let kv = &shadow.kv;
        let (record, list, queue) = (
            keys::token_record(7, "o"),
            keys::user_tokens(7, 1),
            keys::pending(7),
        );
        let (inflight, order, open) =
            (keys::inflight(7), keys::order(7, "o"), keys::orders_open(7));
        kv.incr_by("n", 1).await.expect("incr");
        kv.consume_within("s", 1, 5).await.expect("consume");
        kv.consume_up_to("u", 1, 5).await.expect("consume");
        kv.release("r", 1).await.expect("release");
        kv.hold("h", "v").await.expect("hold");
        kv.set_add("set", "m").await.expect("sadd");
        kv.put_status("st", 2, None).await.expect("status");
        kv.queue_push("qp", b"x", None).await.expect("push");
        kv.queue_push("qp2", b"x", None).await.expect("push");
        kv.queue_pop("qp2", 0).await.expect("pop");
        kv.record_token(&record, b"t", &list, &queue)
            .await
            .expect("token");
        kv.record_token(&keys::token_record(7, "o2"), b"t2", &list, &queue)
            .await
            .expect("token");
        kv.queue_claim(&queue, &inflight, 1, 5)
            .await
            .expect("claim");
        kv.record_order(&order, b"a", &open, 5)
            .await
            .expect("order");
        kv.compare_and_set(&order, b"a", b"b").await.expect("cas");
        kv.scored_add("z", b"m", 1).await.expect("zadd");
        kv.try_lock("lk", "o", 10 * SHADOW_TTL_MS)
            .await
            .expect("lock");
        let Some(store) = &shadow.redis else {
            unreachable!("a Redis backend")
        };
        for key in [
            "n", "s", "u", "r", "h", "set", "st", "qp", "qp2", "z", "lk", &record, &list, &queue,
            &inflight, &order, &open,
        ] {
            let pttl = store.kv.pttl_ms(key).await.expect("pttl");
            assert!(
                (1..=SHADOW_TTL_MS as i64).contains(&pttl),
                "{name}: shadow key `{key}` has PTTL {pttl}"
            );
        }
        kv.put_status("short", 2, Some(TTL_MS))
            .await
            .expect("status");
        let pttl = store.kv.pttl_ms("short").await.expect("pttl");
        assert!(
            (1..=TTL_MS as i64).contains(&pttl),
            "{name}: own TTL is shorter"
        );
        // The real store under the same prefix neither lists nor deletes shadow keys.
        let real = redis_backend(
            name,
            url,
            KvOptions {
                prefix: options.prefix.clone(),
                ..KvOptions::default()
            },
        )
        .await;
        assert_eq!(real.kv.counters_with_prefix("").await.ok(), Some(vec![]));
        real.kv.incr_by("real", 1).await.expect("incr");
        let Some(real_store) = &real.redis else {
            unreachable!("a Redis backend")
        };
        let pttl = real_store.kv.pttl_ms("real").await.expect("pttl");
        assert_eq!(pttl, -1, "{name}: real keys get no TTL");
        real.finish().await;
        // Errors inside the shadow `MULTI` map as elsewhere.
        let wrong = kv.incr_by("set", 1).await;
        assert_wrong(name, wrong, "set", "a counter", Some("a set"));
        assert_eq!(kv.counter("n").await.ok(), Some(1), "{name}: shadow intact");
        let cleaned = cleanup_shadow(url, &options.prefix).await.expect("cleanup");
        assert!(cleaned.keys >= 15, "{name}: {cleaned:?}");
        assert_eq!(
            kv.counters_with_prefix("").await.ok(),
            Some(vec![]),
            "{name}"
        );
        shadow.finish().await;
    });
}

#[test]
fn delete_namespace_removes_exactly_its_own_keys() {
    run_redis("delete_namespace", async |name, url| {
        let mine = redis_backend(name, url, namespace("delete_mine")).await;
        let other = redis_backend(name, url, namespace("delete_other")).await;
        for kv in [&mine.kv, &other.kv] {
            kv.incr_by("n", 1).await.expect("incr");
            kv.set_add("s", "m").await.expect("sadd");
            kv.record_order(&keys::order(2, "o"), b"r", &keys::orders_open(2), 1)
                .await
                .expect("order");
        }
        let Some(store) = &mine.redis else {
            unreachable!("a Redis backend")
        };
        let cleanup = store.kv.delete_namespace().await.expect("delete");
        assert_eq!(cleanup, KvCleanup { keys: 4 }, "{name}");
        assert_eq!(mine.kv.counter("n").await.ok(), Some(0), "{name}");
        assert_eq!(mine.kv.set_contains("s", "m").await.ok(), Some(false));
        assert_eq!(other.kv.counter("n").await.ok(), Some(1), "{name}");
        assert_eq!(other.kv.set_contains("s", "m").await.ok(), Some(true));
        let again = store.kv.delete_namespace().await.expect("delete again");
        assert_eq!(again, KvCleanup { keys: 0 }, "{name}");
        mine.finish().await;
        other.finish().await;
        let whole = RedisKv::connect(url, &KvOptions::default())
            .await
            .expect("connect");
        assert_misuse(name, whole.delete_namespace().await);
    });
}

#[test]
fn unreachable_or_malformed_redis_urls_fail_at_open() {
    runtime().block_on(async {
        let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(0));
        for url in [
            "redis://127.0.0.1:1",
            "redis://user:hunter2@127.0.0.1:1/0",
            "redis+cluster://127.0.0.1:1,127.0.0.1:2",
        ] {
            let opened = tokio::time::timeout(
                OPEN_DEADLINE,
                open(url, clock.clone(), &KvOptions::default()),
            )
            .await
            .unwrap_or_else(|_| panic!("{url}: open hung past {OPEN_DEADLINE:?}"));
            let Err(KvError::Store(message)) = opened else {
                panic!("{url}: expected a store error, got {opened:?}");
            };
            assert!(message.contains("127.0.0.1:1"), "{url}: {message}");
            assert!(!message.contains("hunter2"), "{url}: {message}");
        }
        for url in [
            "redis://127.0.0.1:notaport",
            "redis+cluster://",
            "redis+cluster://127.0.0.1:7001/2",
            "redis+cluster://:hunter2@127.0.0.1:7001/2",
        ] {
            let opened = open(url, clock.clone(), &KvOptions::default()).await;
            let Err(KvError::BadUrl { url: shown, why }) = opened else {
                panic!("{url}: expected a bad URL, got {opened:?}");
            };
            assert!(
                !shown.contains("hunter2") && !why.contains("hunter2"),
                "{url}"
            );
        }
    });
}
