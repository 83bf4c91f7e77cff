//! The durable record of a coupon-pipeline order (JSON in the KV) and its states,
//! which both the pipeline (that moves it) and the sync issue path (that answers a
//! replay of a queued order with it) read. Never moves an order itself.

use serde::{Deserialize, Serialize};

use super::{IssueOutcome, IssueRequest, Wallet, WalletError};
use crate::clock::Millis;
use crate::keys;
use crate::order_no::OrderNo;
use crate::{ActId, ChildId};

/// Where an order stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum OrderState {
    /// Recorded; no reservation yet.
    Accepted,
    /// Group hold and per-user count taken.
    UserReserved,
    /// Stock consumed; only crediting is left.
    StockReserved,
    /// Credited.
    Issued {
        /// When the ledger took it.
        at_ms: Millis,
    },
    /// Failed for good; its reservations were released (stock whose consume
    /// result was unknown excepted).
    Failed {
        /// A rejection code (`out_of_stock`, `user_batch_limit`, …).
        code: String,
        /// The sentence.
        detail: String,
    },
}

impl OrderState {
    /// A short name.
    pub fn label(&self) -> &'static str {
        match self {
            OrderState::Accepted => "accepted",
            OrderState::UserReserved => "user_reserved",
            OrderState::StockReserved => "stock_reserved",
            OrderState::Issued { .. } => "issued",
            OrderState::Failed { .. } => "failed",
        }
    }

    /// Issued or failed.
    pub fn is_final(&self) -> bool {
        matches!(self, OrderState::Issued { .. } | OrderState::Failed { .. })
    }
}

/// The durable record of an order (JSON in the KV).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OrderRecord {
    /// As accepted.
    pub request: IssueRequest,
    /// The child activity open when it was accepted.
    pub child_id: ChildId,
    /// When it was accepted.
    pub accepted_at_ms: Millis,
    /// Where it stands.
    pub state: OrderState,
}

impl OrderRecord {
    /// The user (0 if the stored order number does not parse, which accept prevents).
    pub fn act_id(&self) -> ActId {
        self.request
            .order_no
            .parse::<OrderNo>()
            .map(|o| o.act_id)
            .unwrap_or(0)
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("order records serialise")
    }

    pub(crate) fn decode(key: &str, bytes: &[u8]) -> Result<Self, WalletError> {
        serde_json::from_slice(bytes).map_err(|e| WalletError::CorruptOrder {
            key: key.to_owned(),
            error: e.to_string(),
        })
    }
}

/// An order as the queued answer names it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct QueuedOrder {
    /// The child activity.
    pub child_id: ChildId,
    /// The user.
    pub act_id: ActId,
    /// The order number.
    pub order_no: String,
    /// The award (a coupon).
    pub award_id: u64,
    /// When it was accepted.
    pub accepted_at_ms: Millis,
    /// Where it stood when answered.
    pub state: String,
}

impl QueuedOrder {
    pub(crate) fn of(record: &OrderRecord) -> Self {
        Self {
            child_id: record.child_id,
            act_id: record.act_id(),
            order_no: record.request.order_no.clone(),
            award_id: record.request.award_id,
            accepted_at_ms: record.accepted_at_ms,
            state: record.state.label().to_owned(),
        }
    }
}

/// The answer an order recorded by the pipeline gets on the sync path: the same
/// payload is a duplicate of the queued order (the pipeline finishes it), another
/// payload a conflict. `None` when there is no record or it cannot be read now.
pub(crate) async fn earlier_order(
    wallet: &Wallet,
    child_id: ChildId,
    request: &IssueRequest,
) -> Option<IssueOutcome> {
    let key = keys::order(child_id, &request.order_no);
    let bytes = wallet.kv().bytes(&key).await.ok()??;
    let first = OrderRecord::decode(&key, &bytes).ok()?;
    Some(if first.request.same_payload(request) {
        IssueOutcome::DuplicateQueued {
            order: QueuedOrder::of(&first),
        }
    } else {
        IssueOutcome::OrderConflict {
            first: QueuedOrder::of(&first),
        }
    })
}
