//! The same run on every backend: the smoke scenario answers request for request
//! the same on memory, SQLite, MariaDB, PostgreSQL, Redis and Redis Cluster (equal
//! history hashes), and every invariant holds on each. Servers come from the
//! environment (`reference::testenv`); each run gets its own database and key
//! namespace.

mod common;

use common::{runtime, scenarios_dir};

use reference::testenv::{self, MYSQL, POSTGRES, REDIS, REDIS_CLUSTER, ScratchDatabase};
use simulator::engine::run_scenario;
use simulator::options::RunOptions;
use simulator::scenario::Scenario;

const REQUESTS: u64 = 3000;

fn run(ledger: &str, kv: &str) -> reports::RunRecord {
    run_tagged(ledger, kv, false)
}

fn run_tagged(ledger: &str, kv: &str, shadow: bool) -> reports::RunRecord {
    let mut scenario = Scenario::load(&scenarios_dir().join("smoke.toml")).expect("smoke");
    scenario.shadow = shadow;
    let options = RunOptions {
        requests: Some(REQUESTS),
        ledger_url: Some(ledger.to_owned()),
        kv_url: Some(kv.to_owned()),
        ..RunOptions::default()
    };
    let output = runtime()
        .block_on(run_scenario(&scenario, &options))
        .unwrap_or_else(|e| panic!("run on {ledger} + {kv}: {e:#}"));
    assert!(
        output.violations.is_empty(),
        "{ledger} + {kv}: {:#?}",
        output.violations
    );
    output.record
}

fn scratch(server: &str, tag: &str) -> ScratchDatabase {
    runtime()
        .block_on(ScratchDatabase::create(server, tag))
        .expect("scratch database")
}

fn drop_scratch(db: ScratchDatabase) {
    runtime()
        .block_on(db.drop_now())
        .expect("drop scratch database");
}

#[test]
fn every_backend_answers_like_memory() {
    let reference = run("memory", "memory");
    let mut compared = vec!["memory"];
    for (var, name) in [(MYSQL, "mariadb"), (POSTGRES, "postgres")] {
        let Some(server) = testenv::service_url(var, "every_backend_answers_like_memory") else {
            continue;
        };
        let db = scratch(&server, name);
        let record = run(&db.url, "memory");
        drop_scratch(db);
        assert_eq!(
            record.history_hash, reference.history_hash,
            "the {name} ledger answers exactly like the memory one"
        );
        assert_eq!(record.totals, reference.totals);
        compared.push(name);
    }
    for (var, name) in [(REDIS, "redis"), (REDIS_CLUSTER, "redis-cluster")] {
        let Some(url) = testenv::service_url(var, "every_backend_answers_like_memory") else {
            continue;
        };
        let record = run("memory", &url);
        assert_eq!(
            record.history_hash, reference.history_hash,
            "the {name} KV answers exactly like the memory one"
        );
        assert_eq!(record.totals, reference.totals);
        compared.push(name);
    }
    eprintln!("compared: {compared:?}");
}

/// Shadow traffic runs exactly like real traffic (the same answers), lands only
/// in the `shadow_` tables and `shadow:` keys, and leaves the real ones empty
/// (the I6 checker reads the real stores after a shadow run).
#[test]
fn shadow_runs_answer_like_real_ones_and_leave_real_stores_empty() {
    let real = run("memory", "memory");
    let shadow = run_tagged("memory", "memory", true);
    assert!(shadow.shadow);
    assert_eq!(shadow.history_hash, real.history_hash);
    let test = "shadow_runs_answer_like_real_ones_and_leave_real_stores_empty";
    let redis = testenv::service_url(REDIS, test);
    let cluster = testenv::service_url(REDIS_CLUSTER, test);
    for (var, name, kv) in [(MYSQL, "mariadb", redis), (POSTGRES, "postgres", cluster)] {
        let Some(server) = testenv::service_url(var, test) else {
            continue;
        };
        let kv = kv.unwrap_or_else(|| "memory".to_owned());
        let db = scratch(&server, name);
        let record = run_tagged(&db.url, &kv, true);
        drop_scratch(db);
        assert_eq!(
            record.history_hash, real.history_hash,
            "shadow traffic on {name} + {kv} answers like real traffic"
        );
    }
}
