//! One conformance suite for every ledger backend: same cases, same outcomes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::testenv::{MYSQL, POSTGRES, ScratchDatabase, service_url, unique_name};

fn order(act_id: u64, rain_id: u32) -> OrderNo {
    OrderNo {
        act_id,
        scene_id: 301,
        rain_id,
        award_type: AwardType::Cash,
        stage: 1,
    }
}

fn cash(child_id: u64, act_id: u64, rain_id: u32, amount_cents: u64) -> Credit {
    Credit {
        account: AccountKey { child_id, act_id },
        order_no: order(act_id, rain_id),
        award: Award::Cash { amount_cents },
        at_ms: 1000 + u64::from(rain_id),
    }
}

fn withdrawal(child_id: u64, act_id: u64, no: &str, amount_cents: u64) -> Withdrawal {
    Withdrawal {
        account: AccountKey { child_id, act_id },
        withdraw_no: no.to_owned(),
        amount_cents,
        at_ms: 5000,
    }
}

/// Scratch databases of one test, dropped when the test ends (also when it
/// panics; best effort, a failure to drop is printed).
#[derive(Default)]
struct Scratch(Vec<ScratchDatabase>);

impl Drop for Scratch {
    fn drop(&mut self) {
        if self.0.is_empty() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            eprintln!("cannot drop scratch databases: no runtime");
            return;
        };
        for db in self.0.drain(..) {
            let url = crate::redact_url(&db.url);
            if let Err(e) = runtime.block_on(db.drop_now()) {
                eprintln!("cannot drop scratch database {url}: {e}");
            }
        }
    }
}

/// A fresh database of its own for `test` on each server whose URL is set:
/// `(backend name, database URL)`.
async fn server_databases(test: &str, scratch: &mut Scratch) -> Vec<(&'static str, String)> {
    let mut databases = Vec::new();
    for (var, name) in [(MYSQL, "mariadb"), (POSTGRES, "postgres")] {
        let Some(server) = service_url(var, test) else {
            continue;
        };
        let db = ScratchDatabase::create(&server, test)
            .await
            .unwrap_or_else(|e| panic!("{test}: scratch database on {name}: {e}"));
        databases.push((name, db.url.clone()));
        scratch.0.push(db);
    }
    databases
}

/// Every SQL database a test can use: a SQLite file, and a scratch database on
/// each server whose URL is set.
async fn sql_databases(test: &str, scratch: &mut Scratch) -> Vec<(&'static str, String)> {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.keep().join("ledger.db");
    let mut databases = vec![("sqlite-file", format!("sqlite://{}", path.display()))];
    databases.extend(server_databases(test, scratch).await);
    databases
}

/// Every backend, and the shadow tables of every SQL database. A database's
/// shadow ledger runs each case after its real one on the same database, so a
/// shadow ledger that touched the real tables would see the first run's entries.
async fn backends(test: &str, scratch: &mut Scratch) -> Vec<(&'static str, Arc<dyn Ledger>)> {
    let mut ledgers = vec![
        ("memory", open("memory").await.expect("memory")),
        (
            "sqlite-memory",
            open("sqlite::memory:").await.expect("sqlite memory"),
        ),
    ];
    for (name, url) in sql_databases(test, scratch).await {
        let real = open(&url)
            .await
            .unwrap_or_else(|e| panic!("{test}: {name}: {e}"));
        let shadow = open_with(&url, LedgerOptions::shadow())
            .await
            .unwrap_or_else(|e| panic!("{test}: {name} shadow: {e}"));
        ledgers.push((name, real));
        ledgers.push((shadow_name(name), shadow));
    }
    ledgers
}

fn shadow_name(name: &str) -> &'static str {
    match name {
        "sqlite-file" => "sqlite-file-shadow",
        "mariadb" => "mariadb-shadow",
        "postgres" => "postgres-shadow",
        _ => "shadow",
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// The running test's name (libtest names its thread after it), for skip
/// messages and scratch database names.
fn test_name() -> String {
    let thread = std::thread::current();
    let path = thread.name().unwrap_or("ledger_conformance");
    path.rsplit("::").next().unwrap_or(path).to_owned()
}

/// Run `test` against every backend of [`backends`], each on its own database.
fn run(test: impl AsyncFn(&'static str, Arc<dyn Ledger>)) {
    let name = test_name();
    // Declared before the runtime, so dropped after it: pools are gone by then.
    let mut scratch = Scratch::default();
    let runtime = runtime();
    runtime.block_on(async {
        for (backend, ledger) in backends(&name, &mut scratch).await {
            test(backend, ledger).await;
        }
    });
}

fn kinds(outcomes: &[CreditOutcome]) -> Vec<&'static str> {
    outcomes
        .iter()
        .map(|o| match o {
            CreditOutcome::Credited { .. } => "credited",
            CreditOutcome::Duplicate { .. } => "duplicate",
            CreditOutcome::Conflict { .. } => "conflict",
        })
        .collect()
}

#[test]
fn credit_is_idempotent_on_order_number() {
    run(async |name, ledger| {
        let first = ledger
            .credit_batch(&[cash(1, 7, 1, 100)])
            .await
            .expect("credit");
        let CreditOutcome::Credited { entry } = &first[0] else {
            panic!("{name}: {first:?}")
        };
        let mut retry = cash(1, 7, 1, 100);
        retry.at_ms += 60_000; // a later retry with the same payload
        let again = ledger.credit_batch(&[retry]).await.expect("replay");
        assert_eq!(
            again,
            vec![CreditOutcome::Duplicate {
                entry: entry.clone()
            }],
            "{name}"
        );
        let conflict = ledger
            .credit_batch(&[cash(1, 7, 1, 101)])
            .await
            .expect("conflict");
        assert_eq!(
            conflict,
            vec![CreditOutcome::Conflict {
                first: entry.clone()
            }],
            "{name}"
        );
        let account = ledger
            .account(AccountKey {
                child_id: 1,
                act_id: 7,
            })
            .await
            .expect("account");
        assert_eq!(
            (account.balance_cents, account.credited_cents),
            (100, 100),
            "{name}"
        );
        assert_eq!(
            ledger.lookup_credit(1, &order(7, 1)).await.expect("lookup"),
            Some(entry.clone()),
            "{name}"
        );
        assert_eq!(
            ledger.lookup_credit(2, &order(7, 1)).await.expect("lookup"),
            None,
            "{name}: children isolated"
        );
    })
}

#[test]
fn duplicates_inside_one_batch_are_exact() {
    run(async |name, ledger| {
        let batch = [
            cash(1, 7, 1, 100),
            cash(1, 7, 1, 100),
            cash(1, 7, 1, 5),
            cash(2, 7, 1, 100),
            cash(1, 8, 1, 3),
        ];
        let outcomes = ledger.credit_batch(&batch).await.expect("batch");
        assert_eq!(
            kinds(&outcomes),
            ["credited", "duplicate", "conflict", "credited", "credited"],
            "{name}"
        );
        let snapshot = ledger.snapshot().await.expect("snapshot");
        assert_eq!(snapshot.entries.len(), 3, "{name}");
        let total: u64 = snapshot.accounts.iter().map(|a| a.balance_cents).sum();
        assert_eq!(total, 203, "{name}");
    })
}

#[test]
fn non_cash_awards_do_not_touch_the_balance() {
    run(async |name, ledger| {
        let mut coupon = cash(1, 7, 2, 0);
        coupon.order_no.award_type = AwardType::Coupon;
        coupon.award = Award::Coupon {
            template_id: 7001,
            batch: "b1".to_owned(),
        };
        let mut pendant = cash(1, 7, 3, 0);
        pendant.order_no.award_type = AwardType::Pendant;
        pendant.award = Award::Pendant { pendant_id: 5 };
        let outcomes = ledger
            .credit_batch(&[coupon.clone(), pendant.clone()])
            .await
            .expect("credit");
        assert_eq!(kinds(&outcomes), ["credited", "credited"], "{name}");
        let again = ledger
            .credit_batch(&[coupon, pendant])
            .await
            .expect("replay");
        assert_eq!(
            kinds(&again),
            ["duplicate", "duplicate"],
            "{name}: payload reads back identically"
        );
        let account = ledger
            .account(AccountKey {
                child_id: 1,
                act_id: 7,
            })
            .await
            .expect("account");
        assert_eq!(account.balance_cents, 0, "{name}");
    })
}

#[test]
fn withdraw_never_goes_below_zero_and_is_idempotent() {
    run(async |name, ledger| {
        ledger
            .credit_batch(&[cash(1, 7, 1, 100)])
            .await
            .expect("credit");
        let too_much = ledger
            .withdraw(&withdrawal(1, 7, "w1", 101))
            .await
            .expect("withdraw");
        assert_eq!(
            too_much,
            WithdrawOutcome::InsufficientBalance { balance_cents: 100 },
            "{name}"
        );
        let nobody = ledger
            .withdraw(&withdrawal(1, 99, "w1", 1))
            .await
            .expect("withdraw");
        assert_eq!(
            nobody,
            WithdrawOutcome::InsufficientBalance { balance_cents: 0 },
            "{name}"
        );
        let ok = ledger
            .withdraw(&withdrawal(1, 7, "w1", 60))
            .await
            .expect("withdraw");
        let WithdrawOutcome::Withdrawn {
            entry,
            balance_after_cents: 40,
        } = &ok
        else {
            panic!("{name}: {ok:?}")
        };
        let replay = ledger
            .withdraw(&withdrawal(1, 7, "w1", 60))
            .await
            .expect("replay");
        assert_eq!(
            replay,
            WithdrawOutcome::Duplicate {
                entry: entry.clone()
            },
            "{name}"
        );
        let conflict = ledger
            .withdraw(&withdrawal(1, 7, "w1", 10))
            .await
            .expect("conflict");
        assert_eq!(
            conflict,
            WithdrawOutcome::Conflict {
                first: entry.clone()
            },
            "{name}"
        );
        let rest = ledger
            .withdraw(&withdrawal(1, 7, "w2", 40))
            .await
            .expect("withdraw");
        assert!(
            matches!(
                rest,
                WithdrawOutcome::Withdrawn {
                    balance_after_cents: 0,
                    ..
                }
            ),
            "{name}: {rest:?}"
        );
        let account = ledger
            .account(AccountKey {
                child_id: 1,
                act_id: 7,
            })
            .await
            .expect("account");
        assert_eq!(
            (
                account.balance_cents,
                account.credited_cents,
                account.withdrawn_cents
            ),
            (0, 100, 100),
            "{name}"
        );
    })
}

#[test]
fn history_pages_newest_first_with_a_cursor() {
    run(async |name, ledger| {
        let credits: Vec<Credit> = (1..=7)
            .map(|rain| cash(1, 7, rain, u64::from(rain)))
            .collect();
        ledger.credit_batch(&credits).await.expect("credit");
        ledger
            .credit_batch(&[cash(1, 8, 1, 50)])
            .await
            .expect("other user");
        ledger
            .withdraw(&withdrawal(1, 7, "w1", 3))
            .await
            .expect("withdraw");
        let key = AccountKey {
            child_id: 1,
            act_id: 7,
        };
        let mut seen = Vec::new();
        let mut cursor = None;
        for _ in 0..10 {
            let page = ledger.history(key, cursor, 3).await.expect("page");
            assert!(page.entries.len() <= 3, "{name}");
            seen.extend(page.entries.iter().map(|e| e.seq));
            cursor = page.next;
            if cursor.is_none() {
                break;
            }
        }
        assert_eq!(
            seen.len(),
            8,
            "{name}: 7 credits and 1 withdrawal, nothing of user 8"
        );
        assert!(
            seen.windows(2).all(|w| w[0] > w[1]),
            "{name}: newest first: {seen:?}"
        );
        let cursor: Cursor = "s5".parse().expect("cursor");
        assert_eq!(
            ledger
                .history(key, Some(cursor), 100)
                .await
                .expect("page")
                .entries
                .len(),
            4,
            "{name}"
        );
        assert!(
            ledger.history(key, None, 0).await.is_err(),
            "{name}: limit 0 is misuse"
        );
        assert!(
            ledger
                .history(key, None, HISTORY_PAGE_LIMIT_MAX + 1)
                .await
                .is_err(),
            "{name}"
        );
        let empty = ledger
            .history(
                AccountKey {
                    child_id: 9,
                    act_id: 9,
                },
                None,
                10,
            )
            .await
            .expect("empty");
        assert_eq!(
            empty,
            HistoryPage {
                entries: vec![],
                next: None
            },
            "{name}"
        );
    })
}

#[test]
fn withdraw_numbers_are_exact() {
    run(async |name, ledger| {
        ledger
            .credit_batch(&[cash(1, 7, 1, 100)])
            .await
            .expect("credit");
        // Case, trailing space and non-ASCII text all make a different number.
        for no in ["w1", "W1", "w1 ", "提现-1"] {
            let outcome = ledger
                .withdraw(&withdrawal(1, 7, no, 10))
                .await
                .expect("withdraw");
            assert!(
                matches!(outcome, WithdrawOutcome::Withdrawn { .. }),
                "{name}: `{no}`: {outcome:?}"
            );
        }
        let replay = ledger
            .withdraw(&withdrawal(1, 7, "提现-1", 10))
            .await
            .expect("replay");
        let WithdrawOutcome::Duplicate { entry } = &replay else {
            panic!("{name}: {replay:?}")
        };
        assert!(
            matches!(&entry.kind, EntryKind::Withdrawal { withdraw_no, .. } if withdraw_no == "提现-1"),
            "{name}: {entry:?}"
        );
    })
}

/// The `j`th credit of a mixed population: two children, 300 users, cash with
/// every eleventh a pendant.
fn mixed(j: u64) -> Credit {
    let act_id = 1 + j % 300;
    let rain_id = u32::try_from(j).expect("small j");
    let mut credit = cash(1 + j % 2, act_id, rain_id, 1 + j % 97);
    if j.is_multiple_of(11) {
        credit.order_no.award_type = AwardType::Pendant;
        credit.award = Award::Pendant { pendant_id: j };
    }
    credit
}

/// The same order number as `credit` with a different payload.
fn conflicting(mut credit: Credit) -> Credit {
    credit.award = match credit.award {
        Award::Cash { amount_cents } => Award::Cash {
            amount_cents: amount_cents + 1,
        },
        Award::Pendant { pendant_id } => Award::Pendant {
            pendant_id: pendant_id + 1,
        },
        coupon @ Award::Coupon { .. } => coupon,
    };
    credit
}

/// A batch of [`CREDIT_BATCH_MAX`] credits spans several multi-row statements
/// (posted keys, new ones, accounts); with repeats, conflicts and credits posted
/// before, every outcome and the final state equal the memory ledger's, `seq`
/// included.
#[test]
fn a_full_batch_is_exact() {
    run(async |name, ledger| {
        let early: Vec<Credit> = (0..1024).step_by(7).map(mixed).collect();
        let batch: Vec<Credit> = (0..CREDIT_BATCH_MAX as u64)
            .map(|i| match i % 10 {
                9 => mixed(i - 5),
                8 => conflicting(mixed(i - 3)),
                _ => mixed(i),
            })
            .collect();
        let model = MemoryLedger::new();
        for (step, credits) in [("early", &early), ("batch", &batch), ("replay", &batch)] {
            let want = model.credit_batch(credits).await.expect("model");
            let got = ledger
                .credit_batch(credits)
                .await
                .unwrap_or_else(|e| panic!("{name}: {step}: {e}"));
            assert_eq!(got, want, "{name}: {step}");
        }
        assert_eq!(
            ledger.snapshot().await.expect("snapshot"),
            model.snapshot().await.expect("model snapshot"),
            "{name}"
        );
    })
}

/// Several tasks credit overlapping windows of the same order numbers at once,
/// half of them in reverse order (so their transactions want the same keys in
/// opposite orders): every order is credited exactly once, every other answer
/// is a duplicate of that entry, and balances are the sum of distinct credits.
#[test]
fn concurrent_overlapping_batches_credit_each_order_once() {
    const TASKS: u64 = 6;
    const WINDOW: u64 = 300;
    const STRIDE: u64 = 50;
    const BATCH: usize = 100;
    fn shared(j: u64) -> Credit {
        let rain_id = u32::try_from(j).expect("small j");
        cash(1, 1 + j % 20, rain_id, 1 + j % 13)
    }
    run(async |name, ledger| {
        let mut tasks = tokio::task::JoinSet::new();
        for t in 0..TASKS {
            let ledger = Arc::clone(&ledger);
            tasks.spawn(async move {
                let mut orders: Vec<u64> = (t * STRIDE..t * STRIDE + WINDOW).collect();
                if t % 2 == 1 {
                    orders.reverse();
                }
                let mut seen = Vec::new();
                for chunk in orders.chunks(BATCH) {
                    let batch: Vec<Credit> = chunk.iter().map(|&j| shared(j)).collect();
                    let outcomes = ledger.credit_batch(&batch).await?;
                    seen.extend(chunk.iter().copied().zip(outcomes));
                }
                Ok::<_, LedgerError>(seen)
            });
        }
        let mut answers: BTreeMap<u64, Vec<(bool, u64)>> = BTreeMap::new();
        while let Some(joined) = tasks.join_next().await {
            let seen = joined
                .expect("task")
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            for (j, outcome) in seen {
                let answer = match outcome {
                    CreditOutcome::Credited { entry } => (true, entry.seq),
                    CreditOutcome::Duplicate { entry } => (false, entry.seq),
                    CreditOutcome::Conflict { first } => {
                        panic!("{name}: order {j}: conflict with {first:?}")
                    }
                };
                answers.entry(j).or_default().push(answer);
            }
        }
        let orders = (TASKS - 1) * STRIDE + WINDOW;
        assert_eq!(answers.len() as u64, orders, "{name}");
        for (j, seen) in &answers {
            let credited = seen.iter().filter(|(fresh, _)| *fresh).count();
            assert_eq!(
                credited, 1,
                "{name}: order {j} credited {credited} times: {seen:?}"
            );
            assert!(
                seen.iter().all(|(_, seq)| *seq == seen[0].1),
                "{name}: order {j} answered with different entries: {seen:?}"
            );
        }
        let snapshot = ledger.snapshot().await.expect("snapshot");
        assert_eq!(snapshot.entries.len() as u64, orders, "{name}");
        let mut want: BTreeMap<AccountKey, u64> = BTreeMap::new();
        for j in 0..orders {
            let credit = shared(j);
            *want.entry(credit.account).or_default() += credit.award.cash_cents();
        }
        let got: BTreeMap<AccountKey, u64> = snapshot
            .accounts
            .iter()
            .map(|a| (a.key, a.balance_cents))
            .collect();
        assert_eq!(
            got, want,
            "{name}: balances are the sum of distinct credits"
        );
    })
}

/// Purge through a ledger of the real tables, which must be refused.
async fn purge_real_tables(url: &str) -> Result<LedgerCleanup, LedgerError> {
    let real = LedgerOptions::default();
    if url.starts_with("sqlite:") {
        SqliteLedger::connect_with(url, real)
            .await?
            .purge_shadow()
            .await
    } else if url.starts_with("mysql:") {
        MySqlLedger::connect(url, real).await?.purge_shadow().await
    } else {
        PostgresLedger::connect(url, real)
            .await?
            .purge_shadow()
            .await
    }
}

/// Shadow traffic lands in the `shadow_` tables only, on the same database as
/// the real ones; the shadow cleanup removes exactly those rows and says how
/// many; a purge through a ledger of the real tables is refused.
#[test]
fn shadow_tables_are_isolated_and_purged() {
    let test = test_name();
    let mut scratch = Scratch::default();
    let runtime = runtime();
    runtime.block_on(async {
        for (name, url) in sql_databases(&test, &mut scratch).await {
            let real = open(&url).await.expect("real");
            let shadow = open_with(&url, LedgerOptions::shadow())
                .await
                .expect("shadow");
            real.credit_batch(&[cash(1, 7, 1, 100)])
                .await
                .expect("real credit");
            let real_before = real.snapshot().await.expect("real snapshot");
            let outcomes = shadow
                .credit_batch(&[cash(1, 7, 1, 100), cash(1, 7, 2, 50), cash(1, 8, 1, 5)])
                .await
                .expect("shadow credit");
            assert_eq!(
                kinds(&outcomes),
                ["credited", "credited", "credited"],
                "{name}: the real entry is not in the shadow tables"
            );
            let withdrawn = shadow
                .withdraw(&withdrawal(1, 7, "w1", 30))
                .await
                .expect("shadow withdraw");
            assert!(
                matches!(
                    withdrawn,
                    WithdrawOutcome::Withdrawn {
                        balance_after_cents: 120,
                        ..
                    }
                ),
                "{name}: {withdrawn:?}"
            );
            assert_eq!(
                real.snapshot().await.expect("real snapshot"),
                real_before,
                "{name}: shadow traffic left the real tables alone"
            );
            let err = purge_real_tables(&url)
                .await
                .expect_err("purge on the real tables");
            assert!(matches!(err, LedgerError::Misuse(_)), "{name}: {err}");
            let cleanup = cleanup_shadow(&url).await.expect("cleanup");
            assert_eq!(
                cleanup,
                LedgerCleanup {
                    entries: 4,
                    accounts: 2
                },
                "{name}"
            );
            assert_eq!(
                shadow.snapshot().await.expect("shadow snapshot"),
                LedgerSnapshot::default(),
                "{name}"
            );
            assert_eq!(
                real.snapshot().await.expect("real snapshot"),
                real_before,
                "{name}: the cleanup left the real tables alone"
            );
            assert_eq!(
                cleanup_shadow(&url).await.expect("cleanup again"),
                LedgerCleanup::default(),
                "{name}"
            );
        }
    });
}

/// How long a bad server URL may take to fail (the connect timeout is 5 s).
const FAIL_WITHIN: Duration = Duration::from_secs(10);

#[test]
fn bad_urls_are_rejected_before_use() {
    let runtime = runtime();
    let err = runtime
        .block_on(open("postgres-ish://x"))
        .expect_err("unknown scheme");
    assert!(err.to_string().contains("expected `memory`"), "{err}");
    let err = runtime
        .block_on(open("sqlite:///nonexistent-dir/x/y.db"))
        .expect_err("unopenable");
    assert!(err.to_string().contains("cannot open"), "{err}");
    // Nothing listens on port 1: a clear error at open, naming the URL without
    // its password, and no hang.
    for url in [
        "mysql://root:s3cret@127.0.0.1:1/test",
        "postgres://postgres:s3cret@127.0.0.1:1/test",
    ] {
        let err = runtime
            .block_on(async { tokio::time::timeout(FAIL_WITHIN, open(url)).await })
            .unwrap_or_else(|_| panic!("{url}: no answer within {FAIL_WITHIN:?}"))
            .expect_err("closed port");
        let text = err.to_string();
        assert!(matches!(err, LedgerError::BadUrl { .. }), "{text}");
        assert!(text.contains("127.0.0.1:1/test"), "{text}");
        assert!(!text.contains("s3cret"), "{text}");
    }
}

#[test]
fn unknown_server_databases_are_rejected_at_open() {
    let test = test_name();
    let runtime = runtime();
    for var in [MYSQL, POSTGRES] {
        let Some(server) = service_url(var, &test) else {
            continue;
        };
        let missing = unique_name("missing");
        let url = crate::testenv::with_database(&server, &missing);
        let err = runtime
            .block_on(async { tokio::time::timeout(FAIL_WITHIN, open(&url)).await })
            .unwrap_or_else(|_| panic!("{url}: no answer within {FAIL_WITHIN:?}"))
            .expect_err("unknown database");
        let text = err.to_string();
        assert!(matches!(err, LedgerError::BadUrl { .. }), "{text}");
        assert!(text.contains(&missing), "{text}");
    }
}
