//! One conformance suite for every ledger backend: same cases, same outcomes.

use std::sync::Arc;

use super::*;

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

async fn backends() -> Vec<(&'static str, Arc<dyn Ledger>)> {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.keep().join("ledger.db");
    vec![
        ("memory", open("memory").await.expect("memory")),
        (
            "sqlite-memory",
            open("sqlite::memory:").await.expect("sqlite memory"),
        ),
        (
            "sqlite-file",
            open(&format!("sqlite://{}", path.display()))
                .await
                .expect("sqlite file"),
        ),
    ]
}

fn run(test: impl AsyncFn(&'static str, Arc<dyn Ledger>)) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        for (name, ledger) in backends().await {
            test(name, ledger).await;
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
fn bad_urls_are_rejected_before_use() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let err = runtime
        .block_on(open("postgres-ish://x"))
        .expect_err("unknown scheme");
    assert!(err.to_string().contains("expected `memory`"), "{err}");
    let err = runtime
        .block_on(open("sqlite:///nonexistent-dir/x/y.db"))
        .expect_err("unopenable");
    assert!(err.to_string().contains("cannot open"), "{err}");
}
