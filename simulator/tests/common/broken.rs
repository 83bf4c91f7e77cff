//! Deliberately broken stores for planted-violation tests. `NaiveLedger` without a
//! bug is a second, independent ledger implementation (a flat list of entries),
//! so the honest run also cross-checks the checkers against the memory backend.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use reference::clock::Clock;
use reference::kv::{Consume, Hold, Kv, KvError, MemoryKv};
use reference::ledger::{
    AccountKey, AccountState, Award, Credit, CreditOutcome, Cursor, Entry, EntryKind, HistoryPage,
    Ledger, LedgerError, LedgerSnapshot, WithdrawOutcome, Withdrawal,
};
use reference::order_no::OrderNo;

/// Added to a phantom credit's stage, so it is another order number.
const PHANTOM_STAGE: u32 = 1_000_000;

/// The planted defect.
#[derive(Debug, Clone, Copy)]
pub enum Bug {
    /// Never looks for an earlier posting of an order number.
    NoIdempotency,
    /// Lets withdrawals take balances below zero.
    Overdraft,
    /// Answers "credited" for every n-th credit without posting it.
    LoseEvery(u64),
    /// Posts every credit into this child activity.
    WrongChild(u64),
    /// Posts an unrequested phantom credit beside each of the first n credits,
    /// and removes them all at the n-th: a transient defect the end state no
    /// longer shows, which only a check mid-run sees.
    PhantomUntil(u64),
    /// Judges a replay by its number alone: a credit or withdrawal replayed
    /// with another payload is answered as a duplicate of the first.
    ReplayIgnoresPayload,
}

#[derive(Debug)]
pub struct NaiveLedger {
    bug: Option<Bug>,
    entries: Mutex<Vec<Entry>>,
    credits_seen: Mutex<u64>,
}

impl NaiveLedger {
    pub fn new(bug: Option<Bug>) -> Self {
        Self {
            bug,
            entries: Mutex::new(Vec::new()),
            credits_seen: Mutex::new(0),
        }
    }

    fn balance(entries: &[Entry], key: AccountKey) -> i128 {
        entries
            .iter()
            .filter(|e| e.account == key)
            .map(Entry::cash_delta_cents)
            .sum()
    }

    fn accounts(entries: &[Entry]) -> BTreeMap<AccountKey, AccountState> {
        let mut accounts: BTreeMap<AccountKey, AccountState> = BTreeMap::new();
        for entry in entries {
            let a = accounts
                .entry(entry.account)
                .or_insert_with(|| AccountState::empty(entry.account));
            match &entry.kind {
                EntryKind::Credit { award, .. } => {
                    a.credited_cents += award.cash_cents();
                    a.balance_cents = a.balance_cents.wrapping_add(award.cash_cents());
                }
                EntryKind::Withdrawal { amount_cents, .. } => {
                    a.withdrawn_cents += amount_cents;
                    a.balance_cents = a.balance_cents.wrapping_sub(*amount_cents);
                }
            }
        }
        accounts
    }
}

#[async_trait]
impl Ledger for NaiveLedger {
    async fn credit_batch(&self, credits: &[Credit]) -> Result<Vec<CreditOutcome>, LedgerError> {
        let mut entries = self.entries.lock().expect("lock");
        let mut outcomes = Vec::new();
        for credit in credits {
            let earlier = entries.iter().find(|e| {
                matches!(&e.kind, EntryKind::Credit { order_no, .. } if *order_no == credit.order_no)
                    && e.account.child_id == credit.account.child_id
            });
            if let (Some(first), false) = (earlier, matches!(self.bug, Some(Bug::NoIdempotency))) {
                let ignores = matches!(self.bug, Some(Bug::ReplayIgnoresPayload));
                outcomes.push(if ignores || first.matches_credit(credit) {
                    CreditOutcome::Duplicate {
                        entry: first.clone(),
                    }
                } else {
                    CreditOutcome::Conflict {
                        first: first.clone(),
                    }
                });
                continue;
            }
            let mut account = credit.account;
            if let Some(Bug::WrongChild(child_id)) = self.bug {
                account.child_id = child_id;
            }
            let seq = entries.last().map_or(0, |e| e.seq) + 1;
            let entry = Entry {
                seq,
                account,
                at_ms: credit.at_ms,
                kind: EntryKind::Credit {
                    order_no: credit.order_no.clone(),
                    award: credit.award.clone(),
                },
            };
            let mut seen = self.credits_seen.lock().expect("lock");
            *seen += 1;
            let lose = matches!(self.bug, Some(Bug::LoseEvery(n)) if (*seen).is_multiple_of(n));
            if !lose {
                entries.push(entry.clone());
            }
            if let Some(Bug::PhantomUntil(n)) = self.bug {
                if *seen < n {
                    let mut order_no = credit.order_no.clone();
                    order_no.stage += PHANTOM_STAGE;
                    entries.push(Entry {
                        seq: seq + 1,
                        // A pendant: no cash, so no wallet page shows it.
                        kind: EntryKind::Credit {
                            order_no,
                            award: Award::Pendant { pendant_id: 999 },
                        },
                        ..entry.clone()
                    });
                } else if *seen == n {
                    entries.retain(|e| {
                        !matches!(&e.kind, EntryKind::Credit { order_no, .. } if order_no.stage >= PHANTOM_STAGE)
                    });
                }
            }
            outcomes.push(CreditOutcome::Credited { entry });
        }
        Ok(outcomes)
    }

    async fn lookup_credit(
        &self,
        child_id: u64,
        order_no: &OrderNo,
    ) -> Result<Option<Entry>, LedgerError> {
        if matches!(self.bug, Some(Bug::NoIdempotency)) {
            return Ok(None);
        }
        let entries = self.entries.lock().expect("lock");
        Ok(entries
            .iter()
            .find(|e| {
                e.account.child_id == child_id
                    && matches!(&e.kind, EntryKind::Credit { order_no: o, .. } if o == order_no)
            })
            .cloned())
    }

    async fn withdraw(&self, withdrawal: &Withdrawal) -> Result<WithdrawOutcome, LedgerError> {
        let mut entries = self.entries.lock().expect("lock");
        if let Some(first) = entries.iter().find(|e| {
            e.account.child_id == withdrawal.account.child_id
                && matches!(&e.kind, EntryKind::Withdrawal { withdraw_no, .. } if *withdraw_no == withdrawal.withdraw_no)
        }) {
            let ignores = matches!(self.bug, Some(Bug::ReplayIgnoresPayload));
            return Ok(if ignores || first.matches_withdrawal(withdrawal) {
                WithdrawOutcome::Duplicate { entry: first.clone() }
            } else {
                WithdrawOutcome::Conflict { first: first.clone() }
            });
        }
        let balance = Self::balance(&entries, withdrawal.account);
        if balance < i128::from(withdrawal.amount_cents)
            && !matches!(self.bug, Some(Bug::Overdraft))
        {
            return Ok(WithdrawOutcome::InsufficientBalance {
                balance_cents: u64::try_from(balance).unwrap_or(0),
            });
        }
        let entry = Entry {
            seq: entries.last().map_or(0, |e| e.seq) + 1,
            account: withdrawal.account,
            at_ms: withdrawal.at_ms,
            kind: EntryKind::Withdrawal {
                withdraw_no: withdrawal.withdraw_no.clone(),
                amount_cents: withdrawal.amount_cents,
            },
        };
        entries.push(entry.clone());
        let after = balance - i128::from(withdrawal.amount_cents);
        Ok(WithdrawOutcome::Withdrawn {
            entry,
            balance_after_cents: u64::try_from(after).unwrap_or(0),
        })
    }

    async fn account(&self, key: AccountKey) -> Result<AccountState, LedgerError> {
        let entries = self.entries.lock().expect("lock");
        Ok(Self::accounts(&entries)
            .get(&key)
            .copied()
            .unwrap_or_else(|| AccountState::empty(key)))
    }

    async fn history(
        &self,
        key: AccountKey,
        cursor: Option<Cursor>,
        limit: usize,
    ) -> Result<HistoryPage, LedgerError> {
        let entries = self.entries.lock().expect("lock");
        let before = cursor.map_or(u64::MAX, |c| c.before_seq);
        let page: Vec<Entry> = entries
            .iter()
            .rev()
            .filter(|e| e.account == key && e.seq < before)
            .take(limit)
            .cloned()
            .collect();
        Ok(HistoryPage {
            entries: page,
            next: None,
        })
    }

    async fn snapshot(&self) -> Result<LedgerSnapshot, LedgerError> {
        let entries = self.entries.lock().expect("lock").clone();
        let accounts = Self::accounts(&entries).into_values().collect();
        Ok(LedgerSnapshot { entries, accounts })
    }
}

/// What a broken KV gets wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvBug {
    /// Check-and-consume never says no and every batch may hold a group: stock,
    /// budgets, per-user limits and exclusion are counted but not enforced.
    IgnoreLimits,
    /// Users' token lists read back empty (lost server-side token data): the
    /// wallet page's balance leaves out tokens still being credited.
    HideTokenLists,
    /// Check-and-consume as two calls with a pause between (GET, then INCRBY):
    /// concurrent consumers all pass the check, so stock is over-issued under a race.
    RacyConsume,
    /// A claim pops tokens from the pending queue without keeping them in the
    /// inflight set (LPOP instead of a move): fine until the worker dies after
    /// claiming, when the claimed tokens are gone for good.
    ClaimWithoutInflight,
    /// Pipeline orders are recorded but never added to the open set the
    /// compensation scan reads: an order a crash left half done is never found.
    OrdersNotOpen,
}

#[derive(Debug)]
pub struct LimitlessKv {
    inner: MemoryKv,
    bug: KvBug,
}

impl LimitlessKv {
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Self::with_bug(clock, KvBug::IgnoreLimits)
    }

    pub fn with_bug(clock: Arc<dyn Clock>, bug: KvBug) -> Self {
        Self {
            inner: MemoryKv::new(clock),
            bug,
        }
    }
}

#[async_trait]
impl Kv for LimitlessKv {
    async fn incr_by(&self, key: &str, delta: i64) -> Result<i64, KvError> {
        self.inner.incr_by(key, delta).await
    }
    async fn counter(&self, key: &str) -> Result<i64, KvError> {
        self.inner.counter(key).await
    }
    async fn consume_within(&self, key: &str, n: u64, limit: u64) -> Result<Consume, KvError> {
        match self.bug {
            KvBug::IgnoreLimits => self.inner.consume_within(key, n, u64::MAX).await,
            KvBug::RacyConsume => {
                let current = self.inner.counter(key).await?.max(0) as u64;
                // The round trip between the read and the write.
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
                if current + n > limit {
                    return Ok(Consume::Exceeded { current });
                }
                let after = self.inner.incr_by(key, n as i64).await?;
                Ok(Consume::Consumed {
                    after: after.max(0) as u64,
                })
            }
            _ => self.inner.consume_within(key, n, limit).await,
        }
    }
    async fn consume_up_to(&self, key: &str, n: u64, limit: u64) -> Result<u64, KvError> {
        match self.bug {
            KvBug::IgnoreLimits => self.inner.consume_up_to(key, n, u64::MAX).await,
            _ => self.inner.consume_up_to(key, n, limit).await,
        }
    }
    async fn release(&self, key: &str, n: u64) -> Result<u64, KvError> {
        self.inner.release(key, n).await
    }
    async fn record_order(
        &self,
        record_key: &str,
        record: &[u8],
        open_key: &str,
        now_ms: u64,
    ) -> Result<Option<Vec<u8>>, KvError> {
        let open_key = if self.bug == KvBug::OrdersNotOpen {
            "broken:nowhere"
        } else {
            open_key
        };
        self.inner
            .record_order(record_key, record, open_key, now_ms)
            .await
    }
    async fn compare_and_set(
        &self,
        key: &str,
        expected: &[u8],
        new: &[u8],
    ) -> Result<bool, KvError> {
        self.inner.compare_and_set(key, expected, new).await
    }
    async fn scored_add(&self, key: &str, member: &[u8], score: u64) -> Result<(), KvError> {
        self.inner.scored_add(key, member, score).await
    }
    async fn hold(&self, key: &str, value: &str) -> Result<Hold, KvError> {
        match self.bug {
            // Every batch may hold the group.
            KvBug::IgnoreLimits => self.inner.hold(&format!("{key}:{value}"), value).await,
            _ => self.inner.hold(key, value).await,
        }
    }
    async fn unhold(&self, key: &str, value: &str) -> Result<u64, KvError> {
        match self.bug {
            KvBug::IgnoreLimits => self.inner.unhold(&format!("{key}:{value}"), value).await,
            _ => self.inner.unhold(key, value).await,
        }
    }
    async fn set_add(&self, key: &str, member: &str) -> Result<bool, KvError> {
        self.inner.set_add(key, member).await
    }
    async fn set_contains(&self, key: &str, member: &str) -> Result<bool, KvError> {
        self.inner.set_contains(key, member).await
    }
    async fn put_status(&self, key: &str, status: u8, ttl_ms: Option<u64>) -> Result<(), KvError> {
        self.inner.put_status(key, status, ttl_ms).await
    }
    async fn status(&self, key: &str) -> Result<Option<u8>, KvError> {
        self.inner.status(key).await
    }
    async fn queue_push(
        &self,
        key: &str,
        item: &[u8],
        ttl_ms: Option<u64>,
    ) -> Result<u64, KvError> {
        self.inner.queue_push(key, item, ttl_ms).await
    }
    async fn queue_pop(&self, key: &str, max: usize) -> Result<Vec<Vec<u8>>, KvError> {
        self.inner.queue_pop(key, max).await
    }
    async fn counters_with_prefix(&self, prefix: &str) -> Result<Vec<(String, i64)>, KvError> {
        self.inner.counters_with_prefix(prefix).await
    }
    async fn record_token(
        &self,
        record_key: &str,
        token: &[u8],
        list_key: &str,
        queue_key: &str,
    ) -> Result<Option<Vec<u8>>, KvError> {
        self.inner
            .record_token(record_key, token, list_key, queue_key)
            .await
    }
    async fn bytes(&self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        self.inner.bytes(key).await
    }
    async fn list_range(&self, key: &str, max: usize) -> Result<Vec<Vec<u8>>, KvError> {
        match self.bug {
            KvBug::HideTokenLists if key.starts_with("user-tokens:") => Ok(Vec::new()),
            _ => self.inner.list_range(key, max).await,
        }
    }
    async fn queue_len(&self, key: &str) -> Result<u64, KvError> {
        self.inner.queue_len(key).await
    }
    async fn queue_claim(
        &self,
        queue_key: &str,
        inflight_key: &str,
        max: usize,
        now_ms: u64,
    ) -> Result<Vec<Vec<u8>>, KvError> {
        if self.bug == KvBug::ClaimWithoutInflight {
            return self.inner.queue_pop(queue_key, max).await;
        }
        self.inner
            .queue_claim(queue_key, inflight_key, max, now_ms)
            .await
    }
    async fn inflight_due(
        &self,
        inflight_key: &str,
        due_ms: u64,
        max: usize,
    ) -> Result<Vec<Vec<u8>>, KvError> {
        self.inner.inflight_due(inflight_key, due_ms, max).await
    }
    async fn inflight_remove(&self, inflight_key: &str, member: &[u8]) -> Result<bool, KvError> {
        self.inner.inflight_remove(inflight_key, member).await
    }
    async fn inflight_len(&self, inflight_key: &str) -> Result<u64, KvError> {
        self.inner.inflight_len(inflight_key).await
    }
    async fn try_lock(&self, key: &str, owner: &str, ttl_ms: u64) -> Result<bool, KvError> {
        self.inner.try_lock(key, owner, ttl_ms).await
    }
    async fn unlock(&self, key: &str, owner: &str) -> Result<bool, KvError> {
        self.inner.unlock(key, owner).await
    }
}

/// A memory ledger that posts every `every`-th credit batch and then loses
/// its answer (a connection dropped at COMMIT), and fails the lookup that
/// follows, so the wallet cannot tell either: the client sees a 5xx for a
/// credit that is in the ledger.
#[derive(Debug)]
pub struct AnswerLosingLedger {
    inner: reference::ledger::MemoryLedger,
    every: u64,
    batches: std::sync::atomic::AtomicU64,
    blind: std::sync::atomic::AtomicBool,
}

impl AnswerLosingLedger {
    pub fn new(every: u64) -> Self {
        Self {
            inner: reference::ledger::MemoryLedger::new(),
            every: every.max(1),
            batches: 0.into(),
            blind: false.into(),
        }
    }
}

#[async_trait]
impl Ledger for AnswerLosingLedger {
    async fn credit_batch(&self, credits: &[Credit]) -> Result<Vec<CreditOutcome>, LedgerError> {
        use std::sync::atomic::Ordering;
        let outcomes = self.inner.credit_batch(credits).await?;
        if (self.batches.fetch_add(1, Ordering::SeqCst) + 1).is_multiple_of(self.every) {
            self.blind.store(true, Ordering::SeqCst);
            return Err(LedgerError::Store("connection lost at commit".into()));
        }
        Ok(outcomes)
    }
    async fn lookup_credit(
        &self,
        child_id: u64,
        order_no: &OrderNo,
    ) -> Result<Option<Entry>, LedgerError> {
        if self.blind.swap(false, std::sync::atomic::Ordering::SeqCst) {
            return Err(LedgerError::Store("connection refused".into()));
        }
        self.inner.lookup_credit(child_id, order_no).await
    }
    async fn withdraw(&self, withdrawal: &Withdrawal) -> Result<WithdrawOutcome, LedgerError> {
        self.inner.withdraw(withdrawal).await
    }
    async fn account(&self, key: AccountKey) -> Result<AccountState, LedgerError> {
        self.inner.account(key).await
    }
    async fn history(
        &self,
        key: AccountKey,
        cursor: Option<Cursor>,
        limit: usize,
    ) -> Result<HistoryPage, LedgerError> {
        self.inner.history(key, cursor, limit).await
    }
    async fn snapshot(&self) -> Result<LedgerSnapshot, LedgerError> {
        self.inner.snapshot().await
    }
}
