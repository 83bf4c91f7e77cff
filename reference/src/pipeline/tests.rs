//! Pipeline behaviour: accept, both layers, merge, partial grants, the stock
//! cache, limits, conservative stock, shutdown hand-off, compensation after a
//! crash at every step, the green channel and ledger conflicts.

use std::sync::Arc;

use super::*;
use crate::ActivityTree;
use crate::clock::{Clock, ManualClock};
use crate::config::datetime_ms;
use crate::kv::{Kv, KvFaults, MemoryKv};
use crate::ledger::{EntryKind, Ledger, MemoryLedger};

const TREE: &str = r#"
[[activity]]
id = 2027
name = "test"
per_txn_cap_cents = 1000

[[activity.child]]
id = 1
stage = "formal"
start = 2027-02-01T00:00:00Z
end = 2027-02-03T00:00:00Z
budget_cents = 100000

[[activity.scene]]
id = 2
award_type = "coupon"
bill_text = "coupons"
stock_control = true
crediting = "pipeline"
award_ids = [21, 22, 23]

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
stock = 100
"#;

struct Fixture {
    clock: Arc<ManualClock>,
    kv: Arc<MemoryKv>,
    ledger: Arc<MemoryLedger>,
    wallet: Wallet,
    runtime: tokio::runtime::Runtime,
}

fn fixture() -> Fixture {
    let start = datetime_ms(&"2027-02-01T12:00:00Z".parse().expect("dt")).expect("ms");
    let clock = Arc::new(ManualClock::new(start));
    let tree = Arc::new(ActivityTree::from_toml_str(TREE, "test.toml").expect("tree"));
    let kv = Arc::new(MemoryKv::new(clock.clone()));
    let ledger = Arc::new(MemoryLedger::new());
    let wallet = Wallet::new(tree, ledger.clone(), kv.clone(), clock.clone());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    Fixture {
        clock,
        kv,
        ledger,
        wallet,
        runtime,
    }
}

fn request(act_id: u64, rain: u32, award_id: u64) -> IssueRequest {
    IssueRequest {
        app_id: 1,
        activity_id: 2027,
        order_no: format!("{act_id}_2_{rain}_2_1"),
        award_id,
        amount_cents: 0,
    }
}

impl Fixture {
    fn pipeline(&self, config: PipelineConfig) -> CouponPipeline {
        CouponPipeline::new(self.wallet.clone(), config)
    }

    fn issue(&self, p: &CouponPipeline, r: &IssueRequest, green: bool) -> IssueOutcome {
        self.runtime
            .block_on(p.issue(r, green))
            .expect("no operating error")
    }

    fn tick(&self, p: &CouponPipeline) -> PipelineTick {
        self.runtime
            .block_on(p.tick(self.clock.now_ms()))
            .expect("tick")
    }

    fn counter(&self, key: &str) -> i64 {
        self.runtime
            .block_on(self.kv.counter(key))
            .expect("counter")
    }

    /// Coupon credits in the ledger, by order number.
    fn credited(&self) -> Vec<String> {
        let snapshot = self
            .runtime
            .block_on(self.ledger.snapshot())
            .expect("snapshot");
        snapshot
            .entries
            .iter()
            .filter_map(|e| match &e.kind {
                EntryKind::Credit { order_no, .. } => Some(order_no.to_string()),
                _ => None,
            })
            .collect()
    }

    fn state(&self, r: &IssueRequest) -> OrderState {
        let bytes = self
            .runtime
            .block_on(self.kv.bytes(&keys::order(1, &r.order_no)))
            .expect("read")
            .expect("recorded");
        OrderRecord::decode("k", &bytes).expect("decodes").state
    }
}

#[test]
fn accepts_once_and_issues_through_both_layers() {
    let f = fixture();
    let p = f.pipeline(PipelineConfig::default());
    let r = request(7, 1, 23);
    assert_eq!(f.issue(&p, &r, false).label(), "queued");
    assert_eq!(
        f.issue(&p, &r, false).label(),
        "duplicate",
        "the serial number"
    );
    let from_another_app = IssueRequest {
        app_id: 5,
        ..r.clone()
    };
    assert_eq!(
        f.issue(&p, &from_another_app, false).label(),
        "duplicate",
        "the app is not part of the payload: the same order from another app is a retry"
    );
    let other = IssueRequest {
        award_id: 22,
        ..r.clone()
    };
    assert_eq!(f.issue(&p, &other, false).label(), "conflict");
    assert_eq!(p.depths(), (1, 0));
    assert!(f.credited().is_empty(), "nothing credited at accept");
    f.clock.advance(100);
    let tick = f.tick(&p);
    assert_eq!((tick.activity_processed, tick.asset_processed), (1, 1));
    assert_eq!(f.credited(), vec![r.order_no.clone()]);
    assert!(matches!(f.state(&r), OrderState::Issued { .. }));
    let figures = p.figures();
    assert_eq!(
        (figures.accepted, figures.duplicates, figures.conflicts),
        (1, 2, 1)
    );
    assert_eq!(figures.issued_per_batch.get("b3"), Some(&1));
    assert_eq!(figures.latency.count, 1);
    let p50 = figures.latency.p50_us;
    assert!(
        (100_000..=100_100).contains(&p50),
        "accept → issued, µs (3 digits): {p50}"
    );
    assert_eq!(
        f.issue(&p, &r, false).label(),
        "duplicate",
        "after issue: the ledger answers"
    );
}

#[test]
fn merges_one_consume_per_template_and_grants_partial_stock_in_accept_order() {
    let f = fixture();
    let p = f.pipeline(PipelineConfig::default());
    let requests: Vec<IssueRequest> = (0..5).map(|u| request(100 + u, 1, 21)).collect();
    for r in requests.iter().rev() {
        f.issue(&p, r, false);
        f.clock.advance(1);
    }
    for u in 0..4 {
        f.issue(&p, &request(200 + u, 1, 23), false);
    }
    f.tick(&p);
    let figures = p.figures();
    assert_eq!(figures.consume_calls, 2, "one merged consume per template");
    assert_eq!(figures.consume_asked, 9);
    assert_eq!(figures.issued, 7, "3 of template 701 (stock 3), 4 of 703");
    assert_eq!(figures.failed.get("out_of_stock"), Some(&2));
    // Accepted in reverse: the last two accepted (users 100, 101) get stock.
    for (u, r) in requests.iter().enumerate() {
        let issued = matches!(f.state(r), OrderState::Issued { .. });
        assert_eq!(
            issued,
            u >= 2,
            "user {}: first three by accept time",
            100 + u
        );
        let held = f.counter(&keys::user_batch(1, "b1", 100 + u as u64));
        assert_eq!(
            held,
            i64::from(issued),
            "a failed order releases its per-user count"
        );
    }
    assert_eq!(f.counter(&keys::stock(1, 701)), 3);
    // The cache knows 701 is sold out: no consume call for the next one.
    f.issue(&p, &request(300, 1, 21), false);
    f.tick(&p);
    assert_eq!(
        p.figures().consume_calls,
        2,
        "turned away by the local stock cache"
    );
    assert_eq!(p.figures().failed.get("out_of_stock"), Some(&3));
}

#[test]
fn each_layer_is_gated_by_its_own_rate_limiter() {
    let f = fixture();
    let p = f.pipeline(PipelineConfig {
        activity_rate_per_s: 10,
        asset_rate_per_s: 4,
        ..PipelineConfig::default()
    });
    for u in 1..=30 {
        f.issue(&p, &request(u, 1, 23), false);
    }
    let tick = f.tick(&p);
    assert_eq!((tick.activity_processed, tick.asset_processed), (10, 4));
    assert_eq!(p.depths(), (20, 6));
    f.clock.advance(500);
    let tick = f.tick(&p);
    assert_eq!(
        (tick.activity_processed, tick.asset_processed),
        (5, 2),
        "half a second"
    );
}

#[test]
fn a_full_queue_answers_busy_and_records_nothing() {
    let f = fixture();
    let p = f.pipeline(PipelineConfig {
        activity_queue_max: 2,
        ..PipelineConfig::default()
    });
    f.issue(&p, &request(1, 1, 23), false);
    f.issue(&p, &request(2, 1, 23), false);
    let r = request(3, 1, 23);
    assert_eq!(f.issue(&p, &r, false).label(), "pipeline_busy");
    assert_eq!(
        f.runtime
            .block_on(f.kv.bytes(&keys::order(1, &r.order_no)))
            .expect("read"),
        None
    );
    assert_eq!(
        f.issue(&p, &r, true).label(),
        "issued",
        "green goes ahead of the queue"
    );
}

#[test]
fn an_unknown_stock_result_fails_the_orders_and_is_not_rolled_back() {
    let f = fixture();
    let p = f.pipeline(PipelineConfig::default());
    let requests: Vec<IssueRequest> = (1..=3).map(|u| request(u, 1, 23)).collect();
    for r in &requests {
        f.issue(&p, r, false);
    }
    f.kv.set_faults(KvFaults {
        timeout_after_consume_prefix: Some("stock:".to_owned()),
        ..KvFaults::default()
    });
    f.tick(&p);
    f.kv.set_faults(KvFaults::default());
    assert_eq!(p.figures().failed.get("stock_unknown"), Some(&3));
    assert!(f.credited().is_empty());
    assert_eq!(
        f.counter(&keys::stock(1, 703)),
        3,
        "under-issue: the consume stays"
    );
    for (u, r) in (1..).zip(&requests) {
        assert_eq!(f.state(r).label(), "failed");
        assert_eq!(
            f.counter(&keys::user_batch(1, "b3", u)),
            0,
            "per-user counts released"
        );
    }
}

#[test]
fn shutdown_hands_queued_orders_to_a_live_instance() {
    let f = fixture();
    let a = f.pipeline(PipelineConfig {
        asset_rate_per_s: 1,
        ..PipelineConfig::default()
    });
    let requests: Vec<IssueRequest> = (1..=5).map(|u| request(u, 1, 23)).collect();
    for r in &requests {
        f.issue(&a, r, false);
    }
    f.tick(&a); // one issued; four wait on the asset queue in `user_reserved`
    assert_eq!(a.depths(), (0, 4));
    assert_eq!(f.runtime.block_on(a.shutdown()), 4);
    assert_eq!(
        f.issue(&a, &request(9, 1, 23), false).label(),
        "pipeline_busy"
    );
    assert_eq!(
        f.tick(&a),
        PipelineTick::default(),
        "a stopped instance does nothing"
    );
    let b = f.pipeline(PipelineConfig::default());
    assert_eq!(f.tick(&b).picked_up, 4);
    assert_eq!(f.credited().len(), 5);
    assert_eq!(f.counter(&keys::stock(1, 703)), 5, "consumed once each");
    for u in 1..=5 {
        assert_eq!(
            f.counter(&keys::user_batch(1, "b3", u)),
            1,
            "reserved once each"
        );
    }
}

#[test]
fn compensation_finishes_orders_after_a_crash_at_every_step() {
    for point in PipelineCrash::ALL {
        let f = fixture();
        let config = PipelineConfig {
            compensation_timeout_ms: 10_000,
            compensation_interval_ms: 1_000,
            ..PipelineConfig::default()
        };
        let a = f.pipeline(config.clone());
        a.crash_at(point);
        let mut requests = Vec::new();
        for u in 1..=3 {
            let r = request(u, 1, 21);
            // A crash right after recording answers with an error (the order is
            // kept); a dead instance turns the rest away with nothing recorded.
            match f.runtime.block_on(a.issue(&r, false)) {
                Ok(outcome) if outcome.label() == "pipeline_busy" => {}
                _ => requests.push(r),
            }
        }
        f.tick(&a);
        assert!(a.has_crashed(), "{point:?}");
        let b = f.pipeline(config);
        f.tick(&b);
        f.clock.advance(10_000);
        for _ in 0..3 {
            f.tick(&b);
            f.clock.advance(1_000);
        }
        let credited = f.credited();
        let stock = f.counter(&keys::stock(1, 701));
        for r in &requests {
            let state = f.state(r);
            assert!(state.is_final(), "{point:?}: {} is {state:?}", r.order_no);
            let issued = matches!(state, OrderState::Issued { .. });
            let times = credited.iter().filter(|o| **o == r.order_no).count();
            assert_eq!(
                times,
                usize::from(issued),
                "{point:?}: credited once iff issued"
            );
        }
        assert!(credited.len() <= 3, "{point:?}: never above stock");
        assert!(
            stock >= credited.len() as i64,
            "{point:?}: consumed ≥ issued"
        );
        if point != PipelineCrash::AfterStockConsume {
            assert_eq!(
                credited.len(),
                requests.len(),
                "{point:?}: everything issued"
            );
        }
    }
}

#[test]
fn the_green_channel_issues_at_once_and_the_queued_copy_does_nothing_more() {
    let f = fixture();
    let p = f.pipeline(PipelineConfig::default());
    let r = request(5, 1, 22);
    assert_eq!(f.issue(&p, &r, false).label(), "queued");
    assert_eq!(
        f.issue(&p, &r, true).label(),
        "issued",
        "the user opened the wallet"
    );
    assert_eq!(f.issue(&p, &r, true).label(), "duplicate");
    f.tick(&p);
    assert_eq!(f.credited(), vec![r.order_no.clone()]);
    assert_eq!(f.counter(&keys::stock(1, 702)), 1);
    assert_eq!(f.counter(&keys::user_batch(1, "b2", 5)), 1);
    assert_eq!(
        p.figures().green,
        1,
        "the second was answered by the ledger pre-check"
    );
}

#[test]
fn per_user_limits_and_group_exclusion_hold_on_the_pipeline() {
    let f = fixture();
    let p = f.pipeline(PipelineConfig::default());
    let first = request(8, 1, 21); // b1 in group g
    let excluded = request(8, 2, 22); // b2 in group g
    f.issue(&p, &first, true);
    assert_eq!(f.issue(&p, &excluded, true).label(), "order_failed");
    assert!(matches!(
        f.state(&excluded),
        OrderState::Failed { ref code, .. } if code == "batch_group_taken"
    ));
    for rain in 10..16 {
        f.issue(&p, &request(9, rain, 23), false);
    }
    f.tick(&p);
    assert_eq!(
        p.figures().failed.get("user_batch_limit"),
        Some(&1),
        "b3 allows 5"
    );
    assert_eq!(f.counter(&keys::user_batch(1, "b3", 9)), 5);
}

#[test]
fn a_ledger_conflict_fails_the_order_and_releases_its_reservations() {
    let f = fixture();
    let p = f.pipeline(PipelineConfig::default());
    let r = request(4, 1, 23);
    // The sync path credited this order number with another coupon earlier.
    f.wallet.switches().set(Switch::CouponPipeline, false);
    assert_eq!(
        f.issue(
            &p,
            &IssueRequest {
                award_id: 22,
                ..r.clone()
            },
            false
        )
        .label(),
        "issued"
    );
    f.wallet.switches().set(Switch::CouponPipeline, true);
    f.wallet.switches().set(Switch::IdempotencyPrecheck, false);
    assert_eq!(f.issue(&p, &r, false).label(), "queued");
    f.tick(&p);
    assert!(matches!(f.state(&r), OrderState::Failed { ref code, .. } if code == "conflict"));
    assert_eq!(f.counter(&keys::stock(1, 703)), 0, "released");
    assert_eq!(f.counter(&keys::user_batch(1, "b3", 4)), 0, "released");
    assert_eq!(f.credited().len(), 1);
}

/// A memory ledger whose batch credits wait at a gate, so a test can look at
/// the pipeline while a ledger write is in flight.
#[derive(Debug)]
struct GatedLedger {
    inner: MemoryLedger,
    entered: tokio::sync::Notify,
    gate: tokio::sync::Semaphore,
    /// Batch credits to fail, as a database that went away would.
    fail: std::sync::atomic::AtomicU32,
}

impl GatedLedger {
    fn new(open: usize) -> Self {
        Self {
            inner: MemoryLedger::new(),
            entered: tokio::sync::Notify::new(),
            gate: tokio::sync::Semaphore::new(open),
            fail: std::sync::atomic::AtomicU32::new(0),
        }
    }
}

#[async_trait::async_trait]
impl Ledger for GatedLedger {
    async fn credit_batch(
        &self,
        credits: &[crate::ledger::Credit],
    ) -> Result<Vec<crate::ledger::CreditOutcome>, crate::ledger::LedgerError> {
        self.entered.notify_one();
        self.gate.acquire().await.expect("open").forget();
        let failing = self
            .fail
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if failing {
            return Err(crate::ledger::LedgerError::Misuse("planted".to_owned()));
        }
        self.inner.credit_batch(credits).await
    }
    async fn lookup_credit(
        &self,
        child_id: ChildId,
        order_no: &OrderNo,
    ) -> Result<Option<crate::ledger::Entry>, crate::ledger::LedgerError> {
        self.inner.lookup_credit(child_id, order_no).await
    }
    async fn withdraw(
        &self,
        withdrawal: &crate::ledger::Withdrawal,
    ) -> Result<crate::ledger::WithdrawOutcome, crate::ledger::LedgerError> {
        self.inner.withdraw(withdrawal).await
    }
    async fn account(
        &self,
        key: crate::ledger::AccountKey,
    ) -> Result<crate::ledger::AccountState, crate::ledger::LedgerError> {
        self.inner.account(key).await
    }
    async fn history(
        &self,
        key: crate::ledger::AccountKey,
        cursor: Option<crate::ledger::Cursor>,
        limit: usize,
    ) -> Result<crate::ledger::HistoryPage, crate::ledger::LedgerError> {
        self.inner.history(key, cursor, limit).await
    }
    async fn snapshot(&self) -> Result<crate::ledger::LedgerSnapshot, crate::ledger::LedgerError> {
        self.inner.snapshot().await
    }
}

impl Fixture {
    /// A pipeline over the fixture's KV and clock and `ledger` (quick
    /// compensation: 10 s timeout, scans every second), with three orders
    /// of template 703 accepted.
    fn gated(&self, ledger: &Arc<GatedLedger>) -> (CouponPipeline, Vec<IssueRequest>) {
        let wallet = Wallet::new(
            Arc::new(ActivityTree::from_toml_str(TREE, "test.toml").expect("tree")),
            ledger.clone(),
            self.kv.clone(),
            self.clock.clone(),
        );
        let config = PipelineConfig {
            compensation_timeout_ms: 10_000,
            compensation_interval_ms: 1_000,
            ..PipelineConfig::default()
        };
        let p = CouponPipeline::new(wallet, config);
        let requests: Vec<IssueRequest> = (1..=3).map(|u| request(u, 1, 23)).collect();
        for r in &requests {
            self.issue(&p, r, false);
        }
        (p, requests)
    }
}

#[test]
fn orders_in_a_layer_count_as_outstanding_until_their_ledger_write_returns() {
    let f = fixture();
    let ledger = Arc::new(GatedLedger::new(0));
    let (p, requests) = f.gated(&ledger);
    assert_eq!((p.depths(), p.outstanding()), ((3, 0), 3));
    f.clock.advance(100);
    let now = f.clock.now_ms();
    let (tick, seen) = f.runtime.block_on(async {
        tokio::join!(p.tick(now), async {
            ledger.entered.notified().await;
            // Both queues are empty now; the batch is in the ledger call.
            let seen = (p.depths(), p.outstanding());
            ledger.gate.add_permits(1);
            seen
        })
    });
    assert_eq!(seen, ((0, 0), 3), "a batch in flight is outstanding");
    assert_eq!(tick.expect("tick").asset_processed, 3);
    assert_eq!(p.outstanding(), 0, "released once the records are final");
    for r in &requests {
        assert!(matches!(f.state(r), OrderState::Issued { .. }));
    }
}

#[test]
fn orders_a_failed_ledger_batch_left_open_stay_outstanding_until_compensated() {
    let f = fixture();
    let ledger = Arc::new(GatedLedger::new(1_000));
    ledger.fail.store(1, Ordering::SeqCst);
    let (p, requests) = f.gated(&ledger);
    f.clock.advance(100);
    f.tick(&p);
    assert_eq!(p.figures().credit_errors, 1);
    assert_eq!(
        (p.depths(), p.outstanding()),
        ((0, 0), 3),
        "on no queue, not settled"
    );
    for r in &requests {
        assert_eq!(f.state(r), OrderState::StockReserved);
    }
    f.clock.advance(10_000);
    f.tick(&p);
    assert_eq!(p.outstanding(), 0, "the scan credited them");
    for r in &requests {
        assert!(matches!(f.state(r), OrderState::Issued { .. }));
    }
}

#[test]
fn orders_a_store_error_drops_mid_batch_stay_outstanding_until_compensated() {
    let f = fixture();
    let ledger = Arc::new(GatedLedger::new(0));
    let (p, requests) = f.gated(&ledger);
    f.clock.advance(100);
    let now = f.clock.now_ms();
    let tick = f.runtime.block_on(async {
        let (tick, ()) = tokio::join!(p.tick(now), async {
            ledger.entered.notified().await;
            // The KV goes away while the batch is in the ledger: the credit
            // lands, marking the orders issued does not.
            f.kv.set_faults(KvFaults {
                down: true,
                ..KvFaults::default()
            });
            ledger.gate.add_permits(1_000);
        });
        tick
    });
    assert!(tick.is_err(), "the store error surfaces");
    f.kv.set_faults(KvFaults::default());
    let credits = || {
        f.runtime
            .block_on(ledger.inner.snapshot())
            .expect("snapshot")
            .entries
            .len()
    };
    assert_eq!(credits(), 3, "the batch landed");
    assert_eq!((p.depths(), p.outstanding()), ((0, 0), 3));
    f.clock.advance(10_000);
    f.tick(&p);
    assert_eq!(p.outstanding(), 0, "the scan settled them");
    assert_eq!(credits(), 3, "credited once each");
    for r in &requests {
        assert!(matches!(f.state(r), OrderState::Issued { .. }));
    }
}
