//! Faults on the real servers, through a loopback proxy that can cut every
//! connection (`testenv::TcpProxy`): Redis unreachable fails KV-dependent issues
//! cleanly, the breaker then fails fast, and nothing is ever over-issued; a
//! database cut mid-batch fails the batch as a whole, and a client retry of the
//! same order numbers credits each exactly once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use reference::clock::ManualClock;
use reference::config::{ActivityTree, datetime_ms};
use reference::kv::{self, KvOptions};
use reference::ledger::{self, AccountKey, Award, Credit, Ledger};
use reference::order_no::{AwardType, OrderNo};
use reference::testenv::{self, ScratchDatabase, TcpProxy};
use reference::wallet::{IssueRequest, Wallet, WalletError, WithdrawOutcome, WithdrawRequest};

const TREE: &str = r#"
[[activity]]
id = 2027
name = "faults"
per_txn_cap_cents = 1000

[[activity.child]]
id = 1
stage = "formal"
start = 2027-02-01T00:00:00Z
end = 2027-02-03T00:00:00Z
budget_cents = 1000000

[[activity.scene]]
id = 1
award_type = "cash"
bill_text = "rain"
award_ids = [11]

[[activity.scene]]
id = 2
award_type = "coupon"
bill_text = "coupons"
stock_control = true
award_ids = [21]

[[activity.cash]]
award_id = 11
max_cents = 1000

[[activity.batch]]
id = "b1"
per_user_limit = 100

[[activity.coupon]]
award_id = 21
template_id = 701
batch = "b1"
stock = 5
"#;

const CHILD: u64 = 1;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn coupon(act_id: u64, rain: u32) -> IssueRequest {
    IssueRequest {
        app_id: 1,
        activity_id: 2027,
        order_no: format!("{act_id}_2_{rain}_2_1"),
        award_id: 21,
        amount_cents: 0,
    }
}

fn cash(act_id: u64, rain: u32, amount_cents: i64) -> IssueRequest {
    IssueRequest {
        app_id: 1,
        activity_id: 2027,
        order_no: format!("{act_id}_1_{rain}_1_1"),
        award_id: 11,
        amount_cents,
    }
}

async fn coupons_in(ledger: &dyn Ledger) -> usize {
    ledger
        .snapshot()
        .await
        .expect("snapshot")
        .entries
        .iter()
        .filter(|e| {
            matches!(
                &e.kind,
                ledger::EntryKind::Credit {
                    award: Award::Coupon { .. },
                    ..
                }
            )
        })
        .count()
}

/// Redis goes away under a live wallet: every KV-dependent issue fails with a
/// clear store error (never a wrong answer), the breaker opens and fails fast,
/// a withdraw still works (the lock degrades passively; the ledger refuses
/// overdrafts), and when Redis is back the retried orders are issued once and
/// the stock is never passed.
#[test]
fn redis_unreachable_fails_cleanly_and_never_over_issues() {
    let Some(url) = testenv::service_url(testenv::REDIS, "redis_unreachable_fails_cleanly") else {
        return;
    };
    let rt = runtime();
    rt.block_on(async {
        let target = TcpProxy::target_of(&url).expect("host:port in the Redis URL");
        let proxy = TcpProxy::start(&target).await.expect("proxy");
        let start = datetime_ms(&"2027-02-02T12:00:00Z".parse().expect("dt")).expect("ms");
        let clock = Arc::new(ManualClock::new(start));
        let prefix = format!("{}:", testenv::unique_name("faults"));
        let options = KvOptions {
            prefix: prefix.clone(),
            ..KvOptions::default()
        };
        let kv = kv::open(&proxy.url_for(&url), clock.clone(), &options)
            .await
            .expect("redis via proxy");
        let ledger: Arc<dyn Ledger> = Arc::new(ledger::MemoryLedger::new());
        let tree = Arc::new(ActivityTree::from_toml_str(TREE, "faults.toml").expect("tree"));
        let wallet = Wallet::new(tree, ledger.clone(), kv, clock.clone());

        for rain in 1..=3 {
            let outcome = wallet
                .issue(&coupon(1, rain))
                .await
                .expect("issue while up");
            assert_eq!(outcome.label(), "issued", "{outcome:?}");
        }
        assert_eq!(
            wallet.issue(&cash(1, 1, 500)).await.expect("cash").label(),
            "issued"
        );

        proxy.cut();
        let mut failed = Vec::new();
        for rain in 4..=30 {
            let began = Instant::now();
            match wallet.issue(&coupon(2, rain)).await {
                Err(WalletError::Kv(e)) => failed.push((rain, e.to_string())),
                other => {
                    panic!("with Redis down, coupon {rain} must fail with a KV error: {other:?}")
                }
            }
            assert!(
                began.elapsed() < Duration::from_secs(5),
                "a dead Redis fails within the timeout"
            );
        }
        assert!(
            failed.iter().any(|(_, e)| e.contains("kv store")),
            "errors name the store: {failed:?}"
        );
        let figures = wallet.stability();
        assert!(
            figures.kv_breaker.trips >= 1,
            "20 failures in a row open the breaker: {figures:?}"
        );
        assert!(figures.kv_breaker.fast_failed >= 1, "{figures:?}");
        assert_eq!(
            coupons_in(ledger.as_ref()).await,
            3,
            "nothing was credited while Redis was down"
        );

        // The passive lock degrade: a withdraw needs only the ledger.
        let withdraw = WithdrawRequest {
            activity_id: 2027,
            act_id: 1,
            withdraw_no: "w1".to_owned(),
            amount_cents: 200,
            client_tokens: Vec::new(),
        };
        let outcome = wallet
            .withdraw(&withdraw)
            .await
            .expect("a withdraw needs only the ledger");
        assert!(
            matches!(
                outcome,
                WithdrawOutcome::Withdrawn {
                    balance_after_cents: 300,
                    ..
                }
            ),
            "{outcome:?}"
        );

        proxy.restore();
        clock.advance(2_000); // past the breaker's open time: the next call probes
        let mut issued = 0;
        for (rain, _) in &failed {
            // The client retries every failed order with the same number.
            let mut attempt = 0;
            let outcome = loop {
                attempt += 1;
                match wallet.issue(&coupon(2, *rain)).await {
                    Ok(outcome) => break outcome,
                    Err(e) if attempt < 5 => {
                        eprintln!("retry {rain}: {e}");
                        clock.advance(2_000);
                    }
                    Err(e) => panic!("Redis is back but coupon {rain} still fails: {e}"),
                }
            };
            match outcome.label() {
                "issued" => issued += 1,
                "out_of_stock" => {}
                other => panic!("coupon {rain}: {other}: {outcome:?}"),
            }
        }
        assert_eq!(
            issued, 2,
            "stock 5, 3 issued before the outage: exactly 2 more"
        );
        assert_eq!(
            coupons_in(ledger.as_ref()).await,
            5,
            "the stock is never passed"
        );
        let stock = wallet
            .coupon_stock(2027, 701)
            .await
            .expect("stock")
            .expect("known");
        assert_eq!((stock.consumed, stock.total), (5, 5));

        let cleanup = kv::RedisKv::connect(&url, &options).await.expect("direct");
        cleanup.delete_namespace().await.expect("cleanup");
    });
}

fn credit(act_id: u64, rain: u32, amount_cents: u64) -> Credit {
    Credit::new(
        CHILD,
        OrderNo {
            act_id,
            scene_id: 1,
            rain_id: rain,
            award_type: AwardType::Cash,
            stage: 1,
        },
        Award::Cash { amount_cents },
        1_000,
    )
}

/// The database is cut while batches are being credited: each batch either
/// commits whole or not at all, a client retry of the failed batches credits
/// each order exactly once, and the totals add up.
fn database_cut_mid_batch(var: &str, tag: &str) {
    let test = format!("database_cut_mid_batch ({tag})");
    let Some(server) = testenv::service_url(var, &test) else {
        return;
    };
    let rt = runtime();
    rt.block_on(async {
        let db = ScratchDatabase::create(&server, tag)
            .await
            .expect("scratch database");
        let direct = ledger::open(&db.url).await.expect("direct ledger");
        let target = TcpProxy::target_of(&db.url).expect("host:port");
        let proxy = TcpProxy::start(&target).await.expect("proxy");
        let through = ledger::open(&proxy.url_for(&db.url))
            .await
            .expect("ledger via proxy");

        let batches: Vec<Vec<Credit>> = (0..40u32)
            .map(|b| {
                (0..200u64)
                    .map(|i| credit(1 + (i % 50), b * 1000 + i as u32, 1 + i % 7))
                    .collect()
            })
            .collect();
        let expected_cents: u64 = batches.iter().flatten().map(|c| c.award.cash_cents()).sum();

        let mut failed = Vec::new();
        for (n, batch) in batches.iter().enumerate() {
            if n == 10 || n == 25 {
                // Cut while this batch is in flight: the cut lands mid-transaction.
                let cut = {
                    let proxy = &proxy;
                    async move {
                        tokio::time::sleep(Duration::from_millis(2)).await;
                        proxy.cut();
                    }
                };
                let (result, ()) = tokio::join!(through.credit_batch(batch), cut);
                if result.is_err() {
                    failed.push(n);
                }
                proxy.restore();
                continue;
            }
            if n == 11 || n == 26 {
                proxy.cut();
                let result = through.credit_batch(batch).await;
                assert!(result.is_err(), "a cut database fails the call");
                failed.push(n);
                proxy.restore();
                continue;
            }
            through.credit_batch(batch).await.expect("credit while up");
        }
        assert!(
            failed.len() >= 2,
            "the cuts failed some batches: {failed:?}"
        );

        // Atomicity: a failed batch is in the ledger whole or not at all.
        for n in &failed {
            let mut present = 0;
            for c in &batches[*n] {
                if direct
                    .lookup_credit(CHILD, &c.order_no)
                    .await
                    .expect("lookup")
                    .is_some()
                {
                    present += 1;
                }
            }
            assert!(
                present == 0 || present == batches[*n].len(),
                "batch {n} half-written: {present}"
            );
        }

        // The client retries the failed batches with the same order numbers.
        for n in &failed {
            let mut attempt = 0;
            let outcomes = loop {
                attempt += 1;
                match through.credit_batch(&batches[*n]).await {
                    Ok(outcomes) => break outcomes,
                    Err(e) if attempt < 10 => {
                        eprintln!("{tag}: retry of batch {n}: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Err(e) => panic!("{tag}: the database is back but batch {n} fails: {e}"),
                }
            };
            assert!(outcomes.iter().all(|o| matches!(
                o,
                ledger::CreditOutcome::Credited { .. } | ledger::CreditOutcome::Duplicate { .. }
            )));
        }
        // Every batch once more: all duplicates now.
        for batch in &batches {
            let outcomes = through.credit_batch(batch).await.expect("replay");
            assert!(
                outcomes
                    .iter()
                    .all(|o| matches!(o, ledger::CreditOutcome::Duplicate { .. }))
            );
        }

        let snapshot = direct.snapshot().await.expect("snapshot");
        assert_eq!(
            snapshot.entries.len(),
            40 * 200,
            "{tag}: every order credited exactly once"
        );
        let balance: u64 = snapshot.accounts.iter().map(|a| a.balance_cents).sum();
        assert_eq!(
            balance, expected_cents,
            "{tag}: nothing lost, nothing paid twice"
        );
        let account = direct
            .account(AccountKey {
                child_id: CHILD,
                act_id: 1,
            })
            .await
            .expect("account");
        assert!(account.balance_cents > 0);
        drop(through);
        drop(direct);
        db.drop_now().await.expect("drop scratch database");
    });
}

#[test]
fn mariadb_cut_mid_batch_loses_nothing_and_pays_nothing_twice() {
    database_cut_mid_batch(testenv::MYSQL, "faults_mysql");
}

#[test]
fn postgres_cut_mid_batch_loses_nothing_and_pays_nothing_twice() {
    database_cut_mid_batch(testenv::POSTGRES, "faults_pg");
}

#[test]
fn unreachable_servers_fail_at_open_with_the_url() {
    let rt = runtime();
    rt.block_on(async {
        let began = Instant::now();
        let clock = Arc::new(ManualClock::new(0));
        let err = kv::open("redis://127.0.0.1:1", clock, &KvOptions::default())
            .await
            .expect_err("closed port");
        assert!(err.to_string().contains("127.0.0.1:1"), "{err}");
        for url in [
            "mysql://root:secret@127.0.0.1:1/test",
            "postgres://postgres:secret@127.0.0.1:1/test",
        ] {
            let err = ledger::open(url)
                .await
                .expect_err("closed port")
                .to_string();
            assert!(err.contains("127.0.0.1:1"), "{err}");
            assert!(
                !err.contains("secret"),
                "the password never reaches a message: {err}"
            );
        }
        assert!(
            began.elapsed() < Duration::from_secs(30),
            "fails fast: {:?}",
            began.elapsed()
        );
    });
}
