//! What a run leaves behind for the checkers: the requests with their outcomes in
//! the order they were answered, and the final state read back from the stores.

use std::collections::BTreeMap;

use reference::kv::Kv;
use reference::ledger::{Ledger, LedgerSnapshot};
use reference::pipeline::OrderRecord;
use reference::switches::Switch;
use reference::token::KeyRing;
use reference::wallet::{IssueOutcome, IssueRequest, WalletView, WithdrawOutcome, WithdrawRequest};
use reference::worker::CrashPoint;
use reference::{ActId, ActivityId, ChildId, Millis, keys, wallet::WalletError};
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
    /// A user opened the wallet page.
    View {
        /// Wallet time.
        at_ms: Millis,
        /// Parent activity.
        activity_id: ActivityId,
        /// The user.
        act_id: ActId,
        /// What the page showed (the first flow page included).
        view: WalletView,
    },
    /// A degradation switch was flipped.
    Switch {
        /// Wallet time.
        at_ms: Millis,
        /// Which.
        #[serde(serialize_with = "switch_name")]
        switch: Switch,
        /// On or off.
        on: bool,
    },
    /// A reader polled the hot counter.
    CounterRead {
        /// Wallet time.
        at_ms: Millis,
        /// The reader instance (each keeps its own cache).
        reader: u32,
        /// The value shown.
        shown: i64,
        /// How far behind the truth the plan may lag (its interval; 0 for plan 1).
        lag_ms: u64,
    },
    /// The credit worker died at a crash point and was restarted.
    WorkerCrash {
        /// Wallet time.
        at_ms: Millis,
        /// Where it died.
        point: CrashPoint,
    },
}

fn switch_name<S: serde::Serializer>(switch: &Switch, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(switch.name())
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
    /// Tokens still waiting (pending queue + inflight set), by child activity.
    pub token_backlog: BTreeMap<ChildId, u64>,
    /// The public token keys the run trusted, by key id (for independent checks).
    pub token_keys: BTreeMap<u32, [u8; 32]>,
    /// Coupon-pipeline order records of every order number a pipeline answer
    /// named (queued, duplicate or conflict), by child activity and order number
    /// as recorded. Empty when the run drove no pipeline.
    pub orders: BTreeMap<ChildId, BTreeMap<String, OrderRecord>>,
    /// After a shadow run: what the real stores hold (they must hold nothing).
    pub real_stores: Option<RealStores>,
    /// Read once the run was over and drained (the end state). `false` for a
    /// check mid-run ([`FinalState::midway`]): work may then legitimately be
    /// in flight, so I4 does not ask for pending = 0.
    pub quiet: bool,
}

/// What the real stores hold after a run whose traffic was all shadow-tagged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RealStores {
    /// Entries in the real ledger tables.
    pub entries: u64,
    /// Accounts in the real ledger tables.
    pub accounts: u64,
    /// Counters (budget, stock, limits) in the real KV namespace.
    pub counters: u64,
}

impl RealStores {
    /// Read what the real stores hold.
    pub async fn read(ledger: &dyn Ledger, kv: &dyn Kv) -> Result<Self, WalletError> {
        let snapshot = ledger.snapshot().await?;
        Ok(Self {
            entries: snapshot.entries.len() as u64,
            accounts: snapshot.accounts.len() as u64,
            counters: kv.counters_with_prefix("").await?.len() as u64,
        })
    }
}

impl FinalState {
    /// Read the final state from a ledger and a KV.
    pub async fn read(ledger: &dyn Ledger, kv: &dyn Kv) -> Result<Self, WalletError> {
        let ledger = ledger.snapshot().await?;
        let counters = kv.counters_with_prefix("").await?.into_iter().collect();
        Ok(Self {
            ledger,
            counters,
            token_backlog: BTreeMap::new(),
            token_keys: BTreeMap::new(),
            orders: BTreeMap::new(),
            real_stores: None,
            quiet: true,
        })
    }

    /// The same state taken as a snapshot mid-run: tokens may be pending and
    /// pipeline orders in a middle state without that being a violation.
    pub fn midway(mut self) -> Self {
        self.quiet = false;
        self
    }

    /// Also read the token backlog of `children` and record the trusted `keys`.
    pub async fn with_tokens(
        mut self,
        kv: &dyn Kv,
        children: impl IntoIterator<Item = ChildId>,
        keys: Option<&KeyRing>,
    ) -> Result<Self, WalletError> {
        for child_id in children {
            let backlog = kv.queue_len(&keys::pending(child_id)).await?
                + kv.inflight_len(&keys::inflight(child_id)).await?;
            self.token_backlog.insert(child_id, backlog);
        }
        if let Some(ring) = keys {
            self.token_keys = ring
                .verifying_keys()
                .into_iter()
                .map(|(id, key)| (id, key.to_bytes()))
                .collect();
        }
        Ok(self)
    }

    /// Also read the coupon-pipeline order record of every order a pipeline
    /// answer in `history` names: one KV read per distinct order, none when the
    /// run drove no pipeline. The KV has no scan over byte keys, so the history
    /// says which records to read; an order recorded without any answer cannot
    /// happen in a run (an operating error ends it).
    pub async fn with_orders(
        mut self,
        kv: &dyn Kv,
        history: &History,
    ) -> Result<Self, WalletError> {
        for event in &history.events {
            let Event::Issue {
                outcome:
                    IssueOutcome::Queued { order }
                    | IssueOutcome::DuplicateQueued { order }
                    | IssueOutcome::OrderConflict { first: order },
                ..
            } = event
            else {
                continue;
            };
            let known = self
                .orders
                .get(&order.child_id)
                .is_some_and(|records| records.contains_key(&order.order_no));
            if known {
                continue;
            }
            let key = keys::order(order.child_id, &order.order_no);
            // A record that is not there is I4's to report: the map stays without it.
            if let Some(bytes) = kv.bytes(&key).await? {
                let record: OrderRecord =
                    serde_json::from_slice(&bytes).map_err(|e| WalletError::CorruptOrder {
                        key,
                        error: e.to_string(),
                    })?;
                self.orders
                    .entry(order.child_id)
                    .or_default()
                    .insert(order.order_no.clone(), record);
            }
        }
        Ok(self)
    }

    /// The pipeline's record of an order, if it was read.
    pub fn order(&self, child_id: ChildId, order_no: &str) -> Option<&OrderRecord> {
        self.orders.get(&child_id)?.get(order_no)
    }
}
