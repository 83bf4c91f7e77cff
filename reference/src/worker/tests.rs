//! The token scheme end to end on the memory stores: issue → view → worker →
//! view, crashes at every point, ledger outages, the TPS limit, force-credit on
//! withdraw with client copies, forged tokens, the gray gate and switches.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;

use super::*;
use crate::clock::{Clock, ManualClock};
use crate::config::datetime_ms;
use crate::kv::MemoryKv;
use crate::ledger::{
    AccountKey, AccountState, Credit, Cursor, Entry, HistoryPage, LedgerError, LedgerSnapshot,
    MemoryLedger, WithdrawOutcome as LedgerWithdrawOutcome, Withdrawal,
};
use crate::switches::Switch;
use crate::token::TokenError;
use crate::wallet::{IssueOutcome, IssueRequest, Wallet, WithdrawOutcome, WithdrawRequest};

const TREE: &str = r#"
[[activity]]
id = 2027
name = "tokens"
per_txn_cap_cents = 1000

[activity.withdraw]
gray_percent = 0
allow_list = [7, 8]

[[activity.child]]
id = 1
stage = "formal"
start = 2027-02-01T00:00:00Z
end = 2027-02-02T00:00:00Z
budget_cents = 100000

[[activity.scene]]
id = 1
award_type = "cash"
bill_text = "rain"
crediting = "token"
award_ids = [11]

[[activity.scene]]
id = 2
award_type = "cash"
bill_text = "sync cash"
award_ids = [11]

[[activity.cash]]
award_id = 11
max_cents = 1000
"#;

/// A ledger that can be taken down and brought back.
#[derive(Debug, Default)]
struct FlakyLedger {
    inner: MemoryLedger,
    down: AtomicBool,
}

impl FlakyLedger {
    fn check(&self) -> Result<(), LedgerError> {
        if self.down.load(Ordering::SeqCst) {
            Err(LedgerError::Store("down".into()))
        } else {
            Ok(())
        }
    }
}

#[async_trait]
impl Ledger for FlakyLedger {
    async fn credit_batch(&self, credits: &[Credit]) -> Result<Vec<CreditOutcome>, LedgerError> {
        self.check()?;
        self.inner.credit_batch(credits).await
    }
    async fn lookup_credit(
        &self,
        child_id: u64,
        order_no: &OrderNo,
    ) -> Result<Option<Entry>, LedgerError> {
        self.check()?;
        self.inner.lookup_credit(child_id, order_no).await
    }
    async fn withdraw(&self, w: &Withdrawal) -> Result<LedgerWithdrawOutcome, LedgerError> {
        self.check()?;
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

struct Fixture {
    clock: Arc<ManualClock>,
    ledger: Arc<FlakyLedger>,
    wallet: Wallet,
    runtime: tokio::runtime::Runtime,
}

fn fixture_with_kv(kv: impl FnOnce(Arc<ManualClock>) -> Arc<dyn Kv>) -> Fixture {
    let start = datetime_ms(&"2027-02-01T12:00:00Z".parse().expect("dt")).expect("ms");
    let clock = Arc::new(ManualClock::new(start));
    let tree = Arc::new(ActivityTree::from_toml_str(TREE, "tokens.toml").expect("tree"));
    let ledger = Arc::new(FlakyLedger::default());
    let wallet = Wallet::new(tree, ledger.clone(), kv(clock.clone()), clock.clone())
        .with_keys(Arc::new(KeyRing::dev(7)));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    Fixture {
        clock,
        ledger,
        wallet,
        runtime,
    }
}

fn fixture() -> Fixture {
    fixture_with_kv(|clock| Arc::new(MemoryKv::new(clock)))
}

impl Fixture {
    fn issue(&self, act_id: u64, rain: u32, amount: i64) -> IssueOutcome {
        let request = IssueRequest {
            app_id: 2,
            activity_id: 2027,
            order_no: format!("{act_id}_1_{rain}_1_0"),
            award_id: 11,
            amount_cents: amount,
        };
        self.runtime
            .block_on(self.wallet.issue(&request))
            .expect("issue")
    }

    fn token(&self, act_id: u64, rain: u32, amount: i64) -> Vec<u8> {
        match self.issue(act_id, rain, amount) {
            IssueOutcome::Accepted { token } => token.bytes,
            other => panic!("expected a token: {other:?}"),
        }
    }

    fn worker(&self, config: WorkerConfig) -> CreditWorker {
        CreditWorker::for_wallet(&self.wallet, config).expect("keys configured")
    }

    fn tick(&self, worker: &mut CreditWorker) -> TickReport {
        self.runtime
            .block_on(worker.tick(self.clock.now_ms()))
            .expect("tick")
    }

    fn totals(&self, act_id: u64) -> (u64, u64, u64, u32) {
        let view = self
            .runtime
            .block_on(self.wallet.view(2027, act_id, None, 50))
            .expect("ok")
            .expect("open");
        (
            view.balance_cents,
            view.income_cents,
            view.pending_cents,
            view.pending_tokens,
        )
    }

    fn credited_entries(&self) -> usize {
        self.runtime
            .block_on(self.ledger.snapshot())
            .expect("snapshot")
            .entries
            .len()
    }

    fn withdraw(
        &self,
        act_id: u64,
        no: &str,
        amount: i64,
        client_tokens: Vec<Vec<u8>>,
    ) -> WithdrawOutcome {
        let request = WithdrawRequest {
            client_tokens,
            activity_id: 2027,
            act_id,
            withdraw_no: no.into(),
            amount_cents: amount,
        };
        self.runtime
            .block_on(self.wallet.withdraw(&request))
            .expect("withdraw")
    }
}

#[test]
fn a_token_is_visible_at_once_and_the_totals_do_not_move_when_it_is_credited() {
    let f = fixture();
    let first = f.issue(7, 1, 300);
    assert_eq!(first.label(), "accepted");
    assert_eq!(
        f.issue(7, 1, 300).label(),
        "duplicate",
        "a replay returns the same token"
    );
    let IssueOutcome::DuplicateToken { token } = f.issue(7, 1, 300) else {
        panic!("duplicate token")
    };
    let IssueOutcome::Accepted { token: original } = first else {
        unreachable!()
    };
    assert_eq!(token, original, "the first outcome, byte for byte");
    assert_eq!(f.issue(7, 1, 301).label(), "conflict");
    f.token(7, 2, 200);
    assert_eq!(f.totals(7), (500, 500, 500, 2));
    assert_eq!(f.credited_entries(), 0, "nothing is credited at issue time");
    let mut worker = f.worker(WorkerConfig::default());
    let report = f.tick(&mut worker);
    assert_eq!((report.claimed, report.credited), (2, 2));
    assert_eq!(
        f.totals(7),
        (500, 500, 0, 0),
        "same balance and income, now credited"
    );
    assert_eq!(f.credited_entries(), 2);
    assert_eq!(
        f.issue(7, 1, 300).label(),
        "duplicate",
        "still the same token after crediting"
    );
    assert_eq!(f.runtime.block_on(worker.backlog()).expect("backlog"), 0);
}

#[test]
fn a_crash_at_any_point_loses_nothing_and_pays_nothing_twice() {
    for point in [
        CrashPoint::AfterClaim,
        CrashPoint::AfterMark,
        CrashPoint::AfterCredit,
    ] {
        let f = fixture();
        for rain in 0..5 {
            f.token(7, rain, 100);
        }
        let config = WorkerConfig {
            processing_timeout_ms: 5_000,
            ..WorkerConfig::default()
        };
        let mut worker = f.worker(config.clone());
        worker.crash_at(point);
        assert!(f.tick(&mut worker).crashed, "{point:?}");
        drop(worker); // the process is gone
        assert_eq!(f.totals(7).0, 500, "{point:?}: the view never shows less");
        let mut restarted = f.worker(config);
        f.clock.advance(1_000);
        let early = f.tick(&mut restarted);
        assert_eq!(
            early.requeued, 0,
            "{point:?}: not yet past the processing timeout"
        );
        f.clock.advance(5_000);
        let mut credited = f.tick(&mut restarted).credited;
        f.clock.advance(1);
        credited += f.tick(&mut restarted).credited;
        let entries = f.credited_entries();
        assert_eq!(entries, 5, "{point:?}: every token credited exactly once");
        if point != CrashPoint::AfterCredit {
            assert_eq!(credited, 5, "{point:?}");
        }
        assert_eq!(f.totals(7), (500, 500, 0, 0), "{point:?}");
        assert_eq!(
            f.runtime.block_on(restarted.backlog()).expect("backlog"),
            0,
            "{point:?}"
        );
    }
}

#[test]
fn a_ledger_outage_is_retried_with_bounded_backoff_until_it_succeeds() {
    let f = fixture();
    f.token(7, 1, 100);
    let config = WorkerConfig {
        backoff_min_ms: 100,
        backoff_max_ms: 400,
        ..WorkerConfig::default()
    };
    let mut worker = f.worker(config);
    f.ledger.down.store(true, Ordering::SeqCst);
    let mut attempts_at = Vec::new();
    for _ in 0..2_000 {
        if f.tick(&mut worker).failed_attempts > 0 {
            attempts_at.push(f.clock.now_ms());
        }
        f.clock.advance(10);
    }
    let gaps: Vec<u64> = attempts_at.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(
        gaps.starts_with(&[100, 200, 400, 400]),
        "doubling, capped at 400: {gaps:?}"
    );
    assert!(worker.has_retry());
    f.ledger.down.store(false, Ordering::SeqCst);
    f.clock.advance(400);
    assert_eq!(f.tick(&mut worker).credited, 1);
    assert_eq!(f.credited_entries(), 1);
}

#[test]
fn the_credit_rate_is_limited_by_a_token_bucket_on_the_injected_clock() {
    let f = fixture();
    for rain in 0..100 {
        f.token(7, rain, 1);
    }
    let mut worker = f.worker(WorkerConfig {
        credit_tps: 20,
        batch_max: 50,
        ..WorkerConfig::default()
    });
    let mut per_second = Vec::new();
    for _ in 0..5 {
        let mut credited = 0;
        for _ in 0..10 {
            credited += f.tick(&mut worker).credited;
            f.clock.advance(100);
        }
        per_second.push(credited);
    }
    assert_eq!(
        per_second,
        vec![18, 20, 20, 20, 20],
        "starts empty, then exactly 20 a second: {per_second:?}"
    );
}

#[test]
fn withdraw_force_credits_server_and_client_tokens_first() {
    let f = fixture();
    let t1 = f.token(7, 1, 300);
    let t2 = f.token(7, 2, 200);
    let outcome = f.withdraw(7, "w1", 500, vec![t1.clone(), t2.clone(), t1.clone()]);
    let WithdrawOutcome::Withdrawn {
        balance_after_cents,
        force,
        ..
    } = &outcome
    else {
        panic!("{outcome:?}")
    };
    assert_eq!(
        *balance_after_cents, 0,
        "the balance was the full amount owed"
    );
    assert_eq!(
        force.credited, 2,
        "each token once, however often presented"
    );
    assert!(force.rejected_tokens.is_empty());
    let mut worker = f.worker(WorkerConfig::default());
    let report = f.tick(&mut worker);
    assert_eq!(
        (report.credited, report.already_credited),
        (0, 2),
        "the worker finds them credited"
    );
    assert_eq!(f.credited_entries(), 3, "two credits and one withdrawal");
}

#[test]
fn client_copies_back_up_lost_server_token_data() {
    let f = fixture();
    let t1 = f.token(7, 1, 300);
    // The server's token data is lost: a wallet over the same ledger with an empty KV.
    let lost = fixture_with_kv(|clock| Arc::new(MemoryKv::new(clock)));
    let wallet = Wallet::new(
        Arc::new(f.wallet.tree().clone()),
        f.ledger.clone(),
        lost.wallet.kv().clone(),
        f.clock.clone(),
    )
    .with_keys(f.wallet.keys().expect("keys").clone());
    let withdraw = |tokens: Vec<Vec<u8>>, no: &str| {
        let request = WithdrawRequest {
            client_tokens: tokens,
            activity_id: 2027,
            act_id: 7,
            withdraw_no: no.into(),
            amount_cents: 300,
        };
        f.runtime
            .block_on(wallet.withdraw(&request))
            .expect("withdraw")
    };
    assert_eq!(
        withdraw(vec![], "w1").label(),
        "insufficient_balance",
        "nothing known without the client copy"
    );
    assert_eq!(withdraw(vec![t1], "w2").label(), "withdrawn");
}

#[test]
fn forged_tampered_and_foreign_tokens_are_never_credited() {
    let f = fixture();
    let mine = f.token(7, 1, 300);
    let theirs = f.token(8, 1, 900);
    let mut tampered = mine.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    let forged = KeyRing::dev(999)
        .sign(
            &KeyRing::dev(7)
                .verify(&mine)
                .map(|mut facts| {
                    facts.amount_cents = 1000;
                    facts.order_no.rain_id = 9;
                    facts
                })
                .expect("facts"),
        )
        .expect("sign");
    let outcome = f.withdraw(
        7,
        "w1",
        1200,
        vec![tampered, theirs, forged, b"junk".to_vec()],
    );
    let WithdrawOutcome::Rejected { reason, force, .. } = &outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(reason.code(), "insufficient_balance");
    let codes: Vec<&str> = force
        .rejected_tokens
        .iter()
        .map(|(_, c)| c.as_str())
        .collect();
    assert_eq!(
        codes,
        [
            "token_bad_signature",
            "token_wrong_act_id",
            "token_bad_signature",
            "token_malformed"
        ]
    );
    assert_eq!(force.credited, 1, "only user 7's own server-side token");
    assert_eq!(f.totals(7).0, 300);
    assert_eq!(f.totals(8), (900, 900, 900, 1), "user 8's token untouched");
}

#[test]
fn a_corrupt_server_copy_in_a_claimed_batch_is_named() {
    let f = fixture();
    let good = f.token(7, 1, 300);
    f.token(8, 1, 200);
    let mut tampered = good.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    f.runtime
        .block_on(f.wallet.kv().queue_push(&keys::pending(1), &tampered, None))
        .expect("push");
    let mut worker = f.worker(WorkerConfig::default());
    let error = f
        .runtime
        .block_on(worker.tick(f.clock.now_ms()))
        .expect_err("the batch holds a tampered copy");
    assert!(
        matches!(
            &error,
            WalletError::CorruptToken { key, error: TokenError::BadSignature }
                if *key == keys::pending(1)
        ),
        "{error:?}"
    );
    assert_eq!(f.credited_entries(), 0, "nothing of that batch is credited");
}

#[test]
fn the_gray_gate_turns_users_away_and_leaves_their_tokens_alone() {
    let f = fixture();
    f.token(9, 1, 300);
    let outcome = f.withdraw(9, "w1", 100, vec![]);
    assert_eq!(outcome.label(), "withdraw_not_open");
    assert_eq!(
        f.totals(9),
        (300, 300, 300, 1),
        "still pending, not force-credited"
    );
    assert_eq!(f.credited_entries(), 0);
}

#[test]
fn switches_degrade_as_documented() {
    let f = fixture();
    f.wallet.switches().set(Switch::TokenKv, false);
    assert_eq!(
        f.issue(7, 1, 300).label(),
        "issued",
        "token KV off: the sync path"
    );
    assert_eq!(f.credited_entries(), 1);
    f.wallet.switches().set(Switch::TokenKv, true);
    assert_eq!(
        f.issue(7, 1, 300).label(),
        "duplicate",
        "the sync credit is found by the token path"
    );
    f.token(7, 2, 50);
    f.wallet.switches().set(Switch::FlowList, false);
    let view = f
        .runtime
        .block_on(f.wallet.view(2027, 7, None, 10))
        .expect("ok")
        .expect("open");
    assert!(view.flow.is_empty() && !view.complete);
    assert_eq!(view.balance_cents, 350, "balances still shown");
    f.wallet
        .switches()
        .set(Switch::ForceCreditOnWithdraw, false);
    assert_eq!(
        f.withdraw(7, "w1", 350, vec![]).label(),
        "insufficient_balance",
        "only the credited 300 is available"
    );
    f.wallet.switches().set(Switch::DistributedLock, false);
    assert_eq!(
        f.withdraw(7, "w2", 300, vec![]).label(),
        "withdrawn",
        "no lock needed"
    );
}

#[test]
fn a_conflicting_replay_during_the_token_kv_outage_gets_the_first_answer() {
    // Found by the I4 checker in the smoke run: accepted as a token for 300, then,
    // with the token KV switched off and the token not yet credited, replayed with
    // 299 — the sync fallback must not credit the 299.
    let f = fixture();
    f.token(7, 1, 300);
    f.wallet.switches().set(Switch::TokenKv, false);
    assert_eq!(f.issue(7, 1, 299).label(), "conflict");
    assert_eq!(f.issue(7, 1, 300).label(), "duplicate");
    assert_eq!(f.credited_entries(), 0, "nothing credited by the fallback");
    f.wallet.switches().set(Switch::TokenKv, true);
    let mut worker = f.worker(WorkerConfig::default());
    assert_eq!(f.tick(&mut worker).credited, 1);
    assert_eq!(f.totals(7).1, 300);
}

#[test]
fn a_held_withdraw_lock_turns_a_concurrent_withdraw_away() {
    let f = fixture();
    f.token(7, 1, 300);
    assert!(
        f.runtime
            .block_on(
                f.wallet
                    .kv()
                    .try_lock(&keys::withdraw_lock(1, 7), "other", 1000)
            )
            .expect("lock")
    );
    assert_eq!(f.withdraw(7, "w1", 100, vec![]).label(), "withdraw_busy");
    f.clock.advance(1000);
    assert_eq!(
        f.withdraw(7, "w1", 100, vec![]).label(),
        "withdrawn",
        "the lock expired"
    );
}

#[test]
fn the_flow_pages_newest_first_across_pending_and_credited_lines() {
    let f = fixture();
    let mut worker = f.worker(WorkerConfig::default());
    for rain in 0..7u32 {
        f.token(7, rain, 10 + i64::from(rain));
        f.clock.advance(1_000);
        if rain == 3 {
            f.tick(&mut worker);
        }
    }
    assert_eq!(
        f.withdraw(8, "w0", 1, vec![]).label(),
        "insufficient_balance"
    );
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let view = f
            .runtime
            .block_on(f.wallet.view(2027, 7, cursor, 3))
            .expect("ok")
            .expect("open");
        assert!(view.flow.len() <= 3);
        seen.extend(view.flow.iter().map(|i| (i.at_ms, i.kind)));
        cursor = view.next;
        if cursor.is_none() {
            break;
        }
    }
    assert_eq!(seen.len(), 7);
    assert!(
        seen.windows(2).all(|w| w[0].0 > w[1].0),
        "newest first: {seen:?}"
    );
    let pending = seen
        .iter()
        .filter(|(_, k)| *k == crate::wallet::FlowKind::Pending)
        .count();
    assert_eq!(pending, 3, "tokens 4..6 are still pending");
}
