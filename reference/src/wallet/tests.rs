//! Wallet behaviour, one case per line where possible.

use std::sync::Arc;

use super::*;
use crate::clock::ManualClock;
use crate::config::datetime_ms;
use crate::kv::MemoryKv;
use crate::ledger::MemoryLedger;

const TREE: &str = r#"
[[activity]]
id = 2027
name = "test"
per_txn_cap_cents = 1000

[[activity.child]]
id = 1
stage = "internal_test"
start = 2027-02-01T00:00:00Z
end = 2027-02-02T00:00:00Z
budget_cents = 1500

[[activity.child]]
id = 2
stage = "formal"
start = 2027-02-02T00:00:00Z
end = 2027-02-03T00:00:00Z
budget_cents = 100000

[[activity.scene]]
id = 1
award_type = "cash"
bill_text = "rain"
award_ids = [11, 12]

[[activity.scene]]
id = 2
award_type = "coupon"
bill_text = "coupons"
stock_control = true
award_ids = [21, 22, 23]

[[activity.scene]]
id = 3
award_type = "pendant"
bill_text = "pendants"
award_ids = [31]

[[activity.cash]]
award_id = 11
max_cents = 1000

[[activity.cash]]
award_id = 12
max_cents = 50

[[activity.batch]]
id = "b1"
group = "g"
per_user_limit = 2

[[activity.batch]]
id = "b2"
group = "g"
per_user_limit = 1

[[activity.batch]]
id = "b3"
per_user_limit = 5

[[activity.coupon]]
award_id = 21
template_id = 701
batch = "b1"
stock = 3

[[activity.coupon]]
award_id = 22
template_id = 702
batch = "b2"
stock = 10

[[activity.coupon]]
award_id = 23
template_id = 703
batch = "b3"
stock = 2

[[activity.pendant]]
award_id = 31
pendant_id = 5
"#;

struct Fixture {
    clock: Arc<ManualClock>,
    wallet: Wallet,
    runtime: tokio::runtime::Runtime,
}

fn fixture() -> Fixture {
    let start = datetime_ms(&"2027-02-01T12:00:00Z".parse().expect("dt")).expect("ms");
    let clock = Arc::new(ManualClock::new(start));
    let tree = Arc::new(ActivityTree::from_toml_str(TREE, "test.toml").expect("tree"));
    let wallet = Wallet::new(
        tree,
        Arc::new(MemoryLedger::new()),
        Arc::new(MemoryKv::new(clock.clone())),
        clock.clone(),
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    Fixture {
        clock,
        wallet,
        runtime,
    }
}

impl Fixture {
    fn issue(&self, order_no: &str, award_id: u64, amount_cents: i64) -> IssueOutcome {
        let request = IssueRequest {
            app_id: 1,
            activity_id: 2027,
            order_no: order_no.to_owned(),
            award_id,
            amount_cents,
        };
        self.runtime
            .block_on(self.wallet.issue(&request))
            .expect("no operating error")
    }

    fn check(&self, order_no: &str, award_id: u64, amount_cents: i64, expected: &str) {
        let outcome = self.issue(order_no, award_id, amount_cents);
        assert_eq!(
            outcome.label(),
            expected,
            "{order_no} award {award_id} amount {amount_cents}: {outcome:?}"
        );
    }

    fn withdraw(&self, act_id: u64, withdraw_no: &str, amount_cents: i64) -> WithdrawOutcome {
        let request = WithdrawRequest {
            client_tokens: Vec::new(),
            activity_id: 2027,
            act_id,
            withdraw_no: withdraw_no.to_owned(),
            amount_cents,
        };
        self.runtime
            .block_on(self.wallet.withdraw(&request))
            .expect("no operating error")
    }

    fn counters(&self) -> Vec<(String, i64)> {
        self.runtime
            .block_on(self.wallet.kv().counters_with_prefix(""))
            .expect("scan")
    }

    fn entries(&self) -> usize {
        self.runtime
            .block_on(self.wallet.ledger().snapshot())
            .expect("snapshot")
            .entries
            .len()
    }
}

#[test]
fn bad_input_is_rejected_with_a_reason_and_writes_nothing() {
    let f = fixture();
    f.check("7_1_1_1", 11, 100, "malformed_order_no");
    f.check("7_1_1_1_x", 11, 100, "malformed_order_no");
    f.check("7_9_1_1_1", 11, 100, "unknown_scene");
    f.check("7_1_1_2_1", 11, 100, "award_type_mismatch");
    f.check("7_1_1_1_1", 21, 100, "unknown_award");
    f.check("7_1_1_1_1", 99, 100, "unknown_award");
    f.check("7_1_1_1_1", 11, 0, "zero_amount");
    f.check("7_1_1_1_1", 11, -5, "negative_amount");
    f.check("7_1_1_1_1", 11, 1001, "amount_over_cap");
    f.check("7_1_1_1_1", 12, 51, "amount_over_cap");
    f.check("7_2_1_2_1", 21, 5, "amount_not_allowed");
    f.check("7_3_1_3_1", 31, -1, "amount_not_allowed");
    let request = IssueRequest {
        app_id: 1,
        activity_id: 1,
        order_no: "7_1_1_1_1".to_owned(),
        award_id: 11,
        amount_cents: 1,
    };
    let outcome = f.runtime.block_on(f.wallet.issue(&request)).expect("ok");
    assert_eq!(outcome.label(), "unknown_activity");
    assert_eq!(f.entries(), 0);
    assert!(
        f.counters().iter().all(|(_, n)| *n == 0),
        "{:?}",
        f.counters()
    );
    assert_eq!(f.withdraw(7, "w1", 1).label(), "insufficient_balance");
    assert_eq!(f.withdraw(7, "", 1).label(), "malformed_withdraw_no");
    assert_eq!(f.withdraw(7, "w 1", 1).label(), "malformed_withdraw_no");
    assert_eq!(f.withdraw(7, "w2", 0).label(), "zero_amount");
    assert_eq!(f.withdraw(7, "w3", -3).label(), "negative_amount");
    assert_eq!(f.entries(), 0);
}

#[test]
fn replays_return_the_first_outcome_and_conflicts_are_caught() {
    let f = fixture();
    let first = f.issue("7_1_1_1_1", 11, 100);
    let IssueOutcome::Issued { entry } = &first else {
        panic!("{first:?}")
    };
    f.clock.advance(5_000);
    assert_eq!(
        f.issue("7_1_1_1_1", 11, 100),
        IssueOutcome::Duplicate {
            entry: entry.clone()
        }
    );
    assert_eq!(
        f.issue("7_1_1_1_1", 11, 200),
        IssueOutcome::Conflict {
            first: entry.clone()
        }
    );
    assert_eq!(
        f.issue("7_1_1_1_1", 12, 40),
        IssueOutcome::Conflict {
            first: entry.clone()
        }
    );
    assert_eq!(
        f.counters(),
        vec![("budget:1".to_owned(), 100)],
        "replays consume nothing"
    );
}

#[test]
fn budget_is_never_exceeded_and_rejections_release_nothing_twice() {
    let f = fixture();
    f.check("7_1_1_1_1", 11, 1000, "issued");
    f.check("7_1_2_1_1", 11, 400, "issued");
    f.check("7_1_3_1_1", 11, 101, "budget_exhausted");
    f.check("7_1_3_1_1", 11, 100, "issued");
    f.check("8_1_1_1_1", 11, 1, "budget_exhausted");
    assert_eq!(f.counters(), vec![("budget:1".to_owned(), 1500)]);
}

#[test]
fn coupon_stock_limits_and_groups() {
    let f = fixture();
    f.check("1_2_1_2_1", 21, 0, "issued");
    f.check("1_2_2_2_1", 21, 0, "issued");
    f.check("1_2_3_2_1", 21, 0, "user_batch_limit");
    f.check("1_2_4_2_1", 22, 0, "batch_group_taken");
    f.check("2_2_1_2_1", 22, 0, "issued");
    f.check("2_2_2_2_1", 21, 0, "batch_group_taken");
    f.check("3_2_1_2_1", 21, 0, "issued");
    f.check("4_2_1_2_1", 21, 0, "out_of_stock");
    // The rejected request for user 4 must not leave a group hold behind.
    f.check("4_2_2_2_1", 22, 0, "issued");
    let stock = f
        .runtime
        .block_on(f.wallet.coupon_stock(2027, 701))
        .expect("ok")
        .expect("known");
    assert_eq!(
        (stock.consumed, stock.total, stock.should_offer),
        (3, 3, false)
    );
    let counters = f.counters();
    assert!(
        counters.contains(&("user-batch:1:b1:4".to_owned(), 0)),
        "{counters:?}"
    );
    assert!(
        counters.contains(&("stock:1:701".to_owned(), 3)),
        "{counters:?}"
    );
}

#[test]
fn stock_view_turns_off_offers_below_ten_percent() {
    let check = |consumed, total, offer| {
        assert_eq!(
            StockView::new(consumed, total).should_offer,
            offer,
            "{consumed}/{total}"
        )
    };
    check(0, 100, true);
    check(90, 100, true);
    check(91, 100, false);
    check(100, 100, false);
    check(0, 1, true);
    check(1, 1, false);
    check(8, 9, true);
    check(9, 10, true);
    check(10, 11, false);
    check(0, 0, false);
    assert!((StockView::new(25, 100).remaining_ratio - 0.75).abs() < 1e-9);
}

#[test]
fn child_activities_are_isolated() {
    let f = fixture();
    f.check("7_1_1_1_1", 11, 700, "issued");
    f.check("7_2_1_2_1", 23, 0, "issued");
    f.check("8_2_1_2_1", 23, 0, "issued");
    f.check("9_2_1_2_1", 23, 0, "out_of_stock");
    f.clock
        .set(datetime_ms(&"2027-02-02T00:00:00Z".parse().expect("dt")).expect("ms"));
    let again = f.issue("7_1_1_1_1", 11, 700);
    let IssueOutcome::Issued { entry } = &again else {
        panic!("formal child is a fresh ledger scope: {again:?}")
    };
    assert_eq!(entry.account.child_id, 2);
    f.check("9_2_1_2_1", 23, 0, "issued");
    let account = f
        .runtime
        .block_on(f.wallet.account(2027, 7))
        .expect("ok")
        .expect("open");
    assert_eq!(
        account.balance_cents, 700,
        "the formal account does not see the test child's credit"
    );
    assert_eq!(f.withdraw(7, "w1", 701).label(), "insufficient_balance");
    assert_eq!(f.withdraw(7, "w1", 700).label(), "withdrawn");
    f.clock
        .set(datetime_ms(&"2027-02-03T00:00:00Z".parse().expect("dt")).expect("ms"));
    f.check("7_1_2_1_1", 11, 1, "no_child_open");
    assert_eq!(f.withdraw(7, "w2", 1).label(), "no_child_open");
}

#[test]
fn pendants_need_no_stock() {
    let f = fixture();
    f.check("7_3_1_3_1", 31, 0, "issued");
    f.check("7_3_1_3_1", 31, 0, "duplicate");
    f.check("7_3_1_3_2", 31, 0, "issued");
}

mod failures {
    //! Operating errors: a KV consume whose result is unknown stays consumed
    //! (under-issue, never over-issue); everything reserved before it, and
    //! everything reserved before a failed credit, is released.

    use async_trait::async_trait;

    use super::*;
    use crate::kv::{Hold, Kv, KvFaults};
    use crate::ledger::{
        AccountKey, AccountState, Credit, CreditOutcome, Cursor, Entry, HistoryPage, Ledger,
        LedgerError, LedgerSnapshot, WithdrawOutcome as LedgerWithdrawOutcome, Withdrawal,
    };
    use crate::order_no::OrderNo;

    /// A ledger whose credits always fail.
    #[derive(Debug)]
    struct DownLedger(MemoryLedger);

    #[async_trait]
    impl Ledger for DownLedger {
        async fn credit_batch(&self, _: &[Credit]) -> Result<Vec<CreditOutcome>, LedgerError> {
            Err(LedgerError::Store("connection refused".into()))
        }
        async fn lookup_credit(
            &self,
            child_id: u64,
            order_no: &OrderNo,
        ) -> Result<Option<Entry>, LedgerError> {
            self.0.lookup_credit(child_id, order_no).await
        }
        async fn withdraw(&self, w: &Withdrawal) -> Result<LedgerWithdrawOutcome, LedgerError> {
            self.0.withdraw(w).await
        }
        async fn account(&self, key: AccountKey) -> Result<AccountState, LedgerError> {
            self.0.account(key).await
        }
        async fn history(
            &self,
            key: AccountKey,
            c: Option<Cursor>,
            l: usize,
        ) -> Result<HistoryPage, LedgerError> {
            self.0.history(key, c, l).await
        }
        async fn snapshot(&self) -> Result<LedgerSnapshot, LedgerError> {
            self.0.snapshot().await
        }
    }

    /// A ledger that posts every credit and then loses the answer (a
    /// connection dropped at COMMIT); with `blind`, its lookups fail too
    /// once it has posted one.
    #[derive(Debug)]
    struct AnswerLosingLedger {
        inner: MemoryLedger,
        blind: bool,
        posted: std::sync::atomic::AtomicBool,
    }

    #[async_trait]
    impl Ledger for AnswerLosingLedger {
        async fn credit_batch(&self, c: &[Credit]) -> Result<Vec<CreditOutcome>, LedgerError> {
            self.inner.credit_batch(c).await?;
            self.posted.store(true, std::sync::atomic::Ordering::SeqCst);
            Err(LedgerError::Store("connection lost at commit".into()))
        }
        async fn lookup_credit(
            &self,
            child_id: u64,
            order_no: &OrderNo,
        ) -> Result<Option<Entry>, LedgerError> {
            if self.blind && self.posted.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(LedgerError::Store("connection refused".into()));
            }
            self.inner.lookup_credit(child_id, order_no).await
        }
        async fn withdraw(&self, w: &Withdrawal) -> Result<LedgerWithdrawOutcome, LedgerError> {
            self.inner.withdraw(w).await
        }
        async fn account(&self, key: AccountKey) -> Result<AccountState, LedgerError> {
            self.inner.account(key).await
        }
        async fn history(
            &self,
            key: AccountKey,
            c: Option<Cursor>,
            l: usize,
        ) -> Result<HistoryPage, LedgerError> {
            self.inner.history(key, c, l).await
        }
        async fn snapshot(&self) -> Result<LedgerSnapshot, LedgerError> {
            self.inner.snapshot().await
        }
    }

    fn wallet(
        ledger: Arc<dyn Ledger>,
        kv: impl FnOnce(Arc<ManualClock>) -> Arc<dyn Kv>,
    ) -> (Wallet, tokio::runtime::Runtime) {
        let start = datetime_ms(&"2027-02-01T12:00:00Z".parse().expect("dt")).expect("ms");
        let clock = Arc::new(ManualClock::new(start));
        let tree = Arc::new(ActivityTree::from_toml_str(TREE, "test.toml").expect("tree"));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
        (Wallet::new(tree, ledger, kv(clock.clone()), clock), runtime)
    }

    /// A coupon award (award 21) and a cash award of 300 cents, both for user 7.
    fn coupon_and_cash() -> [IssueRequest; 2] {
        let request = |order_no: &str, award_id, amount_cents| IssueRequest {
            app_id: 1,
            activity_id: 2027,
            order_no: order_no.into(),
            award_id,
            amount_cents,
        };
        [request("7_2_1_2_1", 21, 0), request("7_1_1_1_1", 11, 300)]
    }

    fn counters(wallet: &Wallet, runtime: &tokio::runtime::Runtime) -> Vec<(String, i64)> {
        runtime
            .block_on(wallet.kv().counters_with_prefix(""))
            .expect("scan")
    }

    #[test]
    fn an_unknown_stock_consume_stays_consumed_and_earlier_reservations_are_released() {
        let (wallet, runtime) = wallet(Arc::new(MemoryLedger::new()), |clock| {
            let kv = MemoryKv::new(clock);
            kv.set_faults(KvFaults {
                timeout_after_consume_prefix: Some("stock:".into()),
                ..KvFaults::default()
            });
            Arc::new(kv)
        });
        let request = IssueRequest {
            app_id: 1,
            activity_id: 2027,
            order_no: "7_2_1_2_1".into(),
            award_id: 21,
            amount_cents: 0,
        };
        let result = runtime.block_on(wallet.issue(&request));
        assert!(matches!(result, Err(WalletError::Kv(_))), "{result:?}");
        assert_eq!(
            counters(&wallet, &runtime),
            vec![
                ("stock:1:701".to_owned(), 1),
                ("user-batch:1:b1:7".to_owned(), 0)
            ],
            "stock stays consumed (under-issue), the per-user count is released"
        );
        let group = runtime
            .block_on(wallet.kv().hold("user-group:1:g:7", "b2"))
            .expect("hold");
        assert_eq!(
            group,
            Hold::Held { holders: 1 },
            "the group hold was released"
        );
        assert!(
            runtime
                .block_on(wallet.ledger().snapshot())
                .expect("snapshot")
                .entries
                .is_empty()
        );
    }

    #[test]
    fn a_failed_credit_releases_every_reservation() {
        let (wallet, runtime) = wallet(Arc::new(DownLedger(MemoryLedger::new())), |clock| {
            Arc::new(MemoryKv::new(clock))
        });
        let [coupon, cash] = coupon_and_cash();
        assert!(matches!(
            runtime.block_on(wallet.issue(&coupon)),
            Err(WalletError::Ledger(_))
        ));
        assert!(matches!(
            runtime.block_on(wallet.issue(&cash)),
            Err(WalletError::Ledger(_))
        ));
        assert!(
            counters(&wallet, &runtime).iter().all(|(_, n)| *n == 0),
            "{:?}",
            counters(&wallet, &runtime)
        );
        let group = runtime
            .block_on(wallet.kv().hold("user-group:1:g:7", "b2"))
            .expect("hold");
        assert_eq!(
            group,
            Hold::Held { holders: 1 },
            "the group hold was released"
        );
    }

    type Issued = Vec<Result<IssueOutcome, WalletError>>;

    /// A coupon and a cash award, each on a wallet of its own over an
    /// answer-losing ledger; the outcomes and all counters after.
    fn issue_both(blind: bool) -> (Issued, Vec<(String, i64)>) {
        let [coupon, cash] = coupon_and_cash();
        let mut outcomes = Vec::new();
        let mut all = Vec::new();
        for request in [coupon, cash] {
            let ledger = AnswerLosingLedger {
                inner: MemoryLedger::new(),
                blind,
                posted: false.into(),
            };
            let (wallet, runtime) =
                wallet(Arc::new(ledger), |clock| Arc::new(MemoryKv::new(clock)));
            outcomes.push(runtime.block_on(wallet.issue(&request)));
            all.extend(counters(&wallet, &runtime));
        }
        (outcomes, all)
    }

    #[test]
    fn a_credit_posted_before_its_answer_was_lost_keeps_its_reservations() {
        let (outcomes, counters) = issue_both(false);
        for outcome in &outcomes {
            assert!(
                matches!(outcome, Ok(IssueOutcome::Issued { .. })),
                "the lookup finds it posted: {outcome:?}"
            );
        }
        let counted: Vec<_> = counters.iter().filter(|(_, n)| *n != 0).collect();
        assert!(
            counted
                .iter()
                .any(|(k, n)| k.starts_with("budget:") && *n == 300),
            "the budget keeps the posted 300 cents: {counters:?}"
        );
        assert!(
            counted
                .iter()
                .any(|(k, n)| k.starts_with("stock:") && *n == 1),
            "the stock keeps the posted coupon: {counters:?}"
        );
    }

    #[test]
    fn a_credit_whose_outcome_stays_unknown_keeps_its_reservations() {
        let (outcomes, counters) = issue_both(true);
        for outcome in &outcomes {
            assert!(
                matches!(outcome, Err(WalletError::Ledger(_))),
                "{outcome:?}"
            );
        }
        for (prefix, n) in [("budget:", 300), ("stock:", 1)] {
            assert!(
                counters
                    .iter()
                    .any(|(k, v)| k.starts_with(prefix) && *v == n),
                "{prefix} kept, under-issue rather than over: {counters:?}"
            );
        }
    }
}
