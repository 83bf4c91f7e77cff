//! The wire types of protocol `/v1`: what a target must accept and answer. The
//! wallet's own types (requests, outcomes, views, entries) travel as their serde
//! form; this module adds the envelopes, the admin bodies and the audit export.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::ledger::LedgerSnapshot;
use crate::pipeline::OrderRecord;
use crate::wallet::{IssueOutcome, IssueRequest, WalletView, WithdrawOutcome};
use crate::{ActId, ChildId, Millis};

/// The header that tags a request as shadow (load-test) traffic: `X-Shadow: 1`.
pub const SHADOW_HEADER: &str = "x-shadow";

/// An award to issue: the upstream request, and for a coupon whether it is a
/// green-channel order (served ahead of the queue by the pipeline).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AwardBody {
    /// The request as upstream sends it.
    #[serde(flatten)]
    pub request: IssueRequest,
    /// Green channel (coupon pipeline only).
    #[serde(default)]
    pub green: bool,
}

/// The answer to an award: when the wallet answered and what it decided.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct IssueAnswer {
    /// Wallet time of the answer, ms since the epoch.
    pub at_ms: Millis,
    /// Accepted, credited, duplicate, conflict or rejected with a reason code.
    pub outcome: IssueOutcome,
}

/// The answer to a withdraw.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct WithdrawAnswer {
    /// Wallet time of the answer.
    pub at_ms: Millis,
    /// Withdrawn, duplicate, conflict or rejected with a reason code.
    pub outcome: WithdrawOutcome,
}

/// The wallet page.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ViewAnswer {
    /// Wallet time of the answer.
    pub at_ms: Millis,
    /// Balance, pending tokens and a page of the flow.
    pub view: WalletView,
}

/// Every error that is not a wallet outcome: bad input, a missing token, a
/// store that failed. `code` is stable and machine-readable; `message` says
/// what, where and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// A stable snake_case reason code.
    pub code: String,
    /// One sentence for a person.
    pub message: String,
}

/// The hot counter as a display reads it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CounterAnswer {
    /// Wallet time of the read.
    pub at_ms: Millis,
    /// The value shown (cash awarded, cents); `None` before the first refresh.
    pub value: Option<i64>,
    /// How far behind the truth the value may be (the flush interval).
    pub lag_ms: u64,
}

/// Liveness and what this server is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// `ok`, or `draining` once shutdown began.
    pub status: String,
    /// Wallet time.
    pub at_ms: Millis,
    /// Protocol version spoken.
    pub protocol: String,
    /// Whether `X-Shadow: 1` traffic has stores of its own here.
    pub shadow: bool,
}

/// A degradation switch and its state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SwitchState {
    /// Its name (`token_kv`, `flow_list`, …).
    pub name: String,
    /// On (normal) or off (degraded).
    pub on: bool,
    /// What turning it off does.
    pub doc: String,
}

/// Flip one switch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SwitchBody {
    /// On or off.
    pub on: bool,
}

/// Re-send awards whose first outcome was lost or failed: each goes through
/// issuance again, so one already credited answers `duplicate`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ReissueBody {
    /// At most [`super::REISSUE_MAX`] requests.
    pub requests: Vec<IssueRequest>,
}

/// What each reissued request came to, in request order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ReissueAnswer {
    /// Wallet time of the answer.
    pub at_ms: Millis,
    /// One per request.
    pub outcomes: Vec<IssueOutcome>,
}

/// An operations announcement shown to users (a degradation notice, a delay).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Announcement {
    /// Assigned by the server, from 1.
    #[serde(default)]
    pub id: u64,
    /// Wallet time it was posted (set by the server).
    #[serde(default)]
    pub at_ms: Millis,
    /// `info`, `degraded` or `incident`.
    pub level: String,
    /// The text, at most [`super::ANNOUNCEMENT_LEN_MAX`] bytes.
    pub text: String,
}

/// Move the wallet's clock (a load or conformance run puts it at its trace's start).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ClockBody {
    /// The new time, ms since the epoch; never earlier than now.
    pub now_ms: Millis,
    /// Stand still at `now_ms` until the next move (optional; offered when
    /// `/v1/capabilities` says `clock_freeze`), so a request lands on an exact
    /// millisecond. Without it the clock runs on at the wall's pace.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub frozen: bool,
}

/// Wait until background work is done.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DrainBody {
    /// Give up after this long (wall ms).
    pub max_ms: u64,
}

/// What a drain came to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DrainAnswer {
    /// Nothing left: tokens credited, coupon queues empty.
    pub drained: bool,
    /// Wall ms waited.
    pub waited_ms: u64,
    /// Tokens still pending or inflight.
    pub token_backlog: u64,
    /// Coupon orders still queued (activity layer, asset layer, handoff).
    pub orders_queued: u64,
}

/// Reconciliation of one child activity: the ledger against itself and against
/// the budget the KV reserved.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ChildReconciliation {
    /// The child activity.
    pub child_id: ChildId,
    /// Cash credited by ledger entries.
    pub credited_cents: u64,
    /// Cash withdrawn by ledger entries.
    pub withdrawn_cents: u64,
    /// The sum of account balances.
    pub balance_cents: u64,
    /// The budget counter (cash reserved by issuance).
    pub budget_used_cents: i64,
    /// The configured budget.
    pub budget_cents: u64,
    /// Accounts whose balance is not their credits minus withdrawals.
    pub mismatched_accounts: Vec<ActId>,
}

/// The reconciliation report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Reconciliation {
    /// Wallet time.
    pub at_ms: Millis,
    /// Per child activity.
    pub children: Vec<ChildReconciliation>,
    /// True when every account balances and no budget is overspent.
    pub balanced: bool,
}

/// The audit export: everything a checker needs to judge a target's final
/// state. Read with `X-Shadow: 1` for the shadow stores (the only data a load
/// touches); the real stores are then only counted.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AuditExport {
    /// Wallet time of the read.
    pub at_ms: Millis,
    /// Every ledger entry and account.
    pub ledger: LedgerSnapshot,
    /// Every KV counter (budget, stock, per-user limits, hot counter), by key.
    pub counters: BTreeMap<String, i64>,
    /// Tokens pending or inflight, by child activity.
    pub token_backlog: BTreeMap<ChildId, u64>,
    /// The public token keys the wallet trusts, hex, by key id.
    pub token_keys: BTreeMap<u32, String>,
    /// With `X-Shadow: 1`: what the real stores hold (a load must leave them empty).
    pub real_stores: Option<RealStoreCounts>,
}

/// How much the real stores hold.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RealStoreCounts {
    /// Ledger entries.
    pub entries: u64,
    /// Ledger accounts.
    pub accounts: u64,
    /// KV counters.
    pub counters: u64,
}

/// Which coupon-pipeline order records to read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct OrdersQuery {
    /// `(child_id, order_no)` pairs, at most [`super::AUDIT_ORDERS_MAX`].
    pub orders: Vec<OrderRef>,
}

/// One order, by child activity and order number.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
pub struct OrderRef {
    /// The child activity.
    pub child_id: ChildId,
    /// The order number as recorded.
    pub order_no: String,
}

/// The order records found (an order never recorded is absent).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct OrdersAnswer {
    /// Found records with their reference.
    pub records: Vec<OrderEntry>,
}

/// One order record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct OrderEntry {
    /// The child activity.
    pub child_id: ChildId,
    /// The order number.
    pub order_no: String,
    /// The record.
    pub record: OrderRecord,
}

/// What a target can do beyond the core protocol. A target without this route
/// has none of the optional parts; `redrain conform` then skips their cases and
/// says so.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Capabilities {
    /// The fault routes offered (`POST /v1/admin/faults`): any of
    /// `worker_crash`, `pipeline_crash`, `restart`, `store_outage`.
    pub faults: Vec<String>,
    /// Where the credit worker can be made to crash (`after_claim`, `after_mark`, `after_credit`).
    #[serde(default)]
    pub worker_crash_points: Vec<String>,
    /// Where the coupon pipeline can be made to crash (`after_record` … `after_credit`).
    #[serde(default)]
    pub pipeline_crash_points: Vec<String>,
    /// Stores a `store_outage` can take away (`ledger`, `kv`).
    #[serde(default)]
    pub outage_stores: Vec<String>,
    /// Wallet-clock ms after which work a crash left half done is picked up
    /// again (the compensation timeouts plus one scan): moving the clock this far
    /// past a crash lets recovery run.
    pub recovery_ms: u64,
    /// `PUT /v1/admin/clock` takes `frozen: true` (the clock stands still).
    #[serde(default)]
    pub clock_freeze: bool,
}

/// A fault to inject, through the protocol (a target's own nemesis).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "fault", rename_all = "snake_case", deny_unknown_fields)]
pub enum FaultBody {
    /// The credit worker dies at `point` in its next tick that gets there, and
    /// restarts with nothing but the shared stores.
    WorkerCrash {
        /// `after_claim`, `after_mark` or `after_credit`.
        point: String,
    },
    /// The coupon pipeline dies at `point` (its local queues are lost) and a new
    /// instance takes over.
    PipelineCrash {
        /// `after_record`, `after_user_reserve`, `after_user_mark`,
        /// `after_stock_consume`, `after_stock_mark` or `after_credit`.
        point: String,
    },
    /// Background work restarts as after a process restart: the pipeline hands
    /// its queues off, a new worker, pipeline and counter start.
    Restart,
    /// `store` refuses every call for `ms` wall milliseconds.
    StoreOutage {
        /// `ledger` or `kv`.
        store: String,
        /// How long, wall ms (1 to 60000).
        ms: u64,
    },
}

/// Faults armed and fired so far.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FaultStatus {
    /// The worker crash point armed and not yet reached.
    pub worker_armed: Option<String>,
    /// The pipeline crash point armed and not yet reached.
    pub pipeline_armed: Option<String>,
    /// Worker crashes that happened.
    pub worker_crashes: u64,
    /// Pipeline crashes that happened.
    pub pipeline_crashes: u64,
    /// Restarts done.
    pub restarts: u64,
    /// Store outages begun.
    pub outages: u64,
    /// Stores down now.
    pub stores_down: Vec<String>,
}
