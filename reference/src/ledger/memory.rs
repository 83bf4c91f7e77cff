//! The in-memory ledger: the embedded default. Correct, not a mock: the same
//! conformance suite runs against it and against SQLite.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

use async_trait::async_trait;

use super::{
    AccountKey, AccountState, Credit, CreditOutcome, Cursor, Entry, EntryKind, HistoryPage, Ledger,
    LedgerError, LedgerSnapshot, WithdrawOutcome, Withdrawal, check_batch, check_limit,
};
use crate::ChildId;
use crate::order_no::OrderNo;

/// Ledger kept in process memory.
#[derive(Debug, Default)]
pub struct MemoryLedger {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Entry `seq` is at index `seq - 1`.
    entries: Vec<Entry>,
    credits: BTreeMap<(ChildId, OrderNo), u64>,
    withdrawals: BTreeMap<(ChildId, String), u64>,
    accounts: BTreeMap<AccountKey, AccountState>,
    /// Entry seqs per account, oldest first.
    by_account: BTreeMap<AccountKey, Vec<u64>>,
}

impl MemoryLedger {
    /// An empty ledger.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A poisoned lock means a panic mid-update: a bug, and the state may be torn.
        self.state.lock().expect("memory ledger lock poisoned")
    }
}

impl State {
    fn entry(&self, seq: u64) -> &Entry {
        &self.entries[usize::try_from(seq - 1).expect("seq fits usize")]
    }

    fn push(&mut self, account: AccountKey, at_ms: u64, kind: EntryKind) -> Entry {
        let seq = self.entries.len() as u64 + 1;
        let entry = Entry {
            seq,
            account,
            at_ms,
            kind,
        };
        self.entries.push(entry.clone());
        self.by_account.entry(account).or_default().push(seq);
        entry
    }

    fn account_mut(&mut self, key: AccountKey) -> &mut AccountState {
        self.accounts
            .entry(key)
            .or_insert_with(|| AccountState::empty(key))
    }
}

#[async_trait]
impl Ledger for MemoryLedger {
    async fn credit_batch(&self, credits: &[Credit]) -> Result<Vec<CreditOutcome>, LedgerError> {
        check_batch(credits)?;
        let mut state = self.lock();
        let mut outcomes = Vec::with_capacity(credits.len());
        for credit in credits {
            let key = (credit.account.child_id, credit.order_no.clone());
            if let Some(&seq) = state.credits.get(&key) {
                let first = state.entry(seq).clone();
                outcomes.push(if first.matches_credit(credit) {
                    CreditOutcome::Duplicate { entry: first }
                } else {
                    CreditOutcome::Conflict { first }
                });
                continue;
            }
            let cents = credit.award.cash_cents();
            let account = state.account_mut(credit.account);
            account.balance_cents += cents;
            account.credited_cents += cents;
            let kind = EntryKind::Credit {
                order_no: credit.order_no.clone(),
                award: credit.award.clone(),
            };
            let entry = state.push(credit.account, credit.at_ms, kind);
            state.credits.insert(key, entry.seq);
            outcomes.push(CreditOutcome::Credited { entry });
        }
        Ok(outcomes)
    }

    async fn lookup_credit(
        &self,
        child_id: ChildId,
        order_no: &OrderNo,
    ) -> Result<Option<Entry>, LedgerError> {
        let state = self.lock();
        Ok(state
            .credits
            .get(&(child_id, order_no.clone()))
            .map(|&seq| state.entry(seq).clone()))
    }

    async fn withdraw(&self, withdrawal: &Withdrawal) -> Result<WithdrawOutcome, LedgerError> {
        let mut state = self.lock();
        let key = (withdrawal.account.child_id, withdrawal.withdraw_no.clone());
        if let Some(&seq) = state.withdrawals.get(&key) {
            let first = state.entry(seq).clone();
            return Ok(if first.matches_withdrawal(withdrawal) {
                WithdrawOutcome::Duplicate { entry: first }
            } else {
                WithdrawOutcome::Conflict { first }
            });
        }
        // A refusal writes nothing, not even an empty account.
        let balance_cents = state
            .accounts
            .get(&withdrawal.account)
            .map_or(0, |a| a.balance_cents);
        if balance_cents < withdrawal.amount_cents {
            return Ok(WithdrawOutcome::InsufficientBalance { balance_cents });
        }
        let account = state.account_mut(withdrawal.account);
        account.balance_cents -= withdrawal.amount_cents;
        account.withdrawn_cents += withdrawal.amount_cents;
        let balance_after_cents = account.balance_cents;
        let kind = EntryKind::Withdrawal {
            withdraw_no: withdrawal.withdraw_no.clone(),
            amount_cents: withdrawal.amount_cents,
        };
        let entry = state.push(withdrawal.account, withdrawal.at_ms, kind);
        state.withdrawals.insert(key, entry.seq);
        Ok(WithdrawOutcome::Withdrawn {
            entry,
            balance_after_cents,
        })
    }

    async fn account(&self, key: AccountKey) -> Result<AccountState, LedgerError> {
        Ok(self
            .lock()
            .accounts
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
        check_limit(limit)?;
        let state = self.lock();
        let before = cursor.map_or(u64::MAX, |c| c.before_seq);
        let seqs = state
            .by_account
            .get(&key)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let mut newer_first = seqs.iter().rev().filter(|&&seq| seq < before);
        let entries: Vec<Entry> = newer_first
            .by_ref()
            .take(limit)
            .map(|&seq| state.entry(seq).clone())
            .collect();
        let next = match (newer_first.next(), entries.last()) {
            (Some(_), Some(last)) => Some(Cursor {
                before_seq: last.seq,
            }),
            _ => None,
        };
        Ok(HistoryPage { entries, next })
    }

    async fn snapshot(&self) -> Result<LedgerSnapshot, LedgerError> {
        let state = self.lock();
        Ok(LedgerSnapshot {
            entries: state.entries.clone(),
            accounts: state.accounts.values().copied().collect(),
        })
    }
}
