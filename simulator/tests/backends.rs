//! The same run on every backend: the smoke scenario answers request for request
//! the same on memory, SQLite, MariaDB, PostgreSQL, Redis and Redis Cluster (equal
//! history hashes), and every invariant holds on each. Servers come from the
//! environment (`reference::testenv`); each run gets its own database and key
//! namespace.

use std::path::Path;

use reference::testenv::{self, MYSQL, POSTGRES, REDIS, REDIS_CLUSTER, ScratchDatabase};
use simulator::run::{RunOptions, run_scenario};
use simulator::scenario::Scenario;

const REQUESTS: u64 = 3000;

fn run(ledger: &str, kv: &str) -> reports::RunRecord {
    let scenario =
        Scenario::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios/smoke.toml"))
            .expect("smoke");
    let options = RunOptions {
        requests: Some(REQUESTS),
        ledger_url: Some(ledger.to_owned()),
        kv_url: Some(kv.to_owned()),
        ..RunOptions::default()
    };
    let output = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
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
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(ScratchDatabase::create(server, tag))
        .expect("scratch database")
}

fn drop_scratch(db: ScratchDatabase) {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
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
