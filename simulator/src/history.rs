//! What a run leaves behind for the checkers: the requests with their outcomes in
//! the order they were answered, and the final state read back from the stores.

use std::collections::BTreeMap;

use reference::kv::Kv;
use reference::ledger::{Ledger, LedgerSnapshot};
use reference::wallet::{IssueOutcome, IssueRequest, WithdrawOutcome, WithdrawRequest};
use reference::{Millis, wallet::WalletError};
use serde::Serialize;

/// One answered request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// An award request and what became of it.
    Issue {
        /// Wallet time when it was answered.
        at_ms: Millis,
        /// As sent.
        request: IssueRequest,
        /// As answered.
        outcome: IssueOutcome,
    },
    /// A withdraw request and what became of it.
    Withdraw {
        /// Wallet time when it was answered.
        at_ms: Millis,
        /// As sent.
        request: WithdrawRequest,
        /// As answered.
        outcome: WithdrawOutcome,
    },
}

/// Every answered request of a run, in answer order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct History {
    /// In answer order.
    pub events: Vec<Event>,
}

/// The stores' final state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct FinalState {
    /// Every ledger entry and account.
    pub ledger: LedgerSnapshot,
    /// Every KV counter (budget, stock, per-user limits), by key.
    pub counters: BTreeMap<String, i64>,
}

impl FinalState {
    /// Read the final state from a ledger and a KV.
    pub async fn read(ledger: &dyn Ledger, kv: &dyn Kv) -> Result<Self, WalletError> {
        let ledger = ledger.snapshot().await?;
        let counters = kv.counters_with_prefix("").await?.into_iter().collect();
        Ok(Self { ledger, counters })
    }
}
