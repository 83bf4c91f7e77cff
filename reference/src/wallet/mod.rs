//! The wallet service, synchronous mode (the seed's baseline: one credit per
//! request). Validates a request as it arrives, resolves the child activity by the
//! injected clock, enforces budget, per-transaction cap, coupon stock, the per-user
//! per-batch limit and batch-group exclusion through the KV, and credits through the
//! ledger. A rejected request leaves nothing behind: what it reserved is released.
//!
//! Stock policy (seed 003): a KV error on a consume means the result is unknown,
//! so that consume is not rolled back (under-issue is allowed, over-issue never);
//! reservations made before it are released best-effort.
//!
//! Scenes with `crediting = "token"` take the token path (`token_mode.rs`): the
//! same validation and reservations, then a signed token is recorded and returned,
//! and the credit worker credits it later. The wallet view (`view.rs`) shows
//! credited entries plus pending tokens, and withdraw force-credits pending tokens
//! first, so users never see the backlog.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::clock::{Clock, Millis};
use crate::config::{Activity, ActivityTree, AwardDef, ChildActivity, CouponDef, Crediting, Scene};
use crate::keys;
use crate::kv::{Consume, Hold, Kv, KvError, LIST_RANGE_MAX};
use crate::ledger::{
    AccountKey, AccountState, Award, Credit, CreditOutcome, Cursor, Entry, HistoryPage, Ledger,
    LedgerError, WithdrawOutcome as LedgerWithdrawOutcome, Withdrawal,
};
use crate::order_no::{OrderNo, OrderNoError};
use crate::stability::{
    Breaker, BreakerConfig, BreakerKv, BreakerLedger, IngressLimits, StabilityFigures,
};
use crate::switches::{Switch, Switches};
use crate::token::{KeyRing, STATUS_SUCCESS, TokenError, TokenFacts};
use crate::{ActId, ActivityId, ChildId};

pub mod orders;
pub(crate) mod token_mode;
mod view;

pub use orders::{OrderRecord, OrderState, QueuedOrder};
pub use token_mode::IssuedToken;
pub use view::{FLOW_ENTRIES_MAX, FlowCursor, FlowItem, FlowKind, WalletView};

/// Longest accepted withdraw number.
pub const WITHDRAW_NO_LEN_MAX: usize = 64;
/// Most client tokens one withdraw may present.
pub const CLIENT_TOKENS_MAX: usize = 256;
/// How long a withdraw holds the per-user lock at most.
pub const WITHDRAW_LOCK_TTL_MS: u64 = 5_000;

/// Hex in JSON for byte strings (tokens).
pub(crate) mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        hex::decode(String::deserialize(d)?).map_err(serde::de::Error::custom)
    }

    pub mod list {
        use serde::ser::SerializeSeq;
        use serde::{Deserialize, Deserializer, Serializer};

        pub fn serialize<S: Serializer>(items: &[Vec<u8>], s: S) -> Result<S::Ok, S::Error> {
            let mut seq = s.serialize_seq(Some(items.len()))?;
            for item in items {
                seq.serialize_element(&hex::encode(item))?;
            }
            seq.end()
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Vec<u8>>, D::Error> {
            Vec::<String>::deserialize(d)?
                .into_iter()
                .map(|t| hex::decode(t).map_err(serde::de::Error::custom))
                .collect()
        }
    }
}

/// An award request as it arrives from upstream, before any validation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct IssueRequest {
    /// Which of the eight apps sent it (signed into tokens).
    pub app_id: u32,
    /// The parent activity; the wallet picks the child.
    pub activity_id: ActivityId,
    /// `${act_id}_${scene_id}_${rain_id}_${award_type}_${stage}`, unparsed.
    pub order_no: String,
    /// One of the scene's award ids.
    pub award_id: u64,
    /// Cash amount in cents; must be 0 for coupons and pendants.
    pub amount_cents: i64,
}

impl IssueRequest {
    /// Whether `other` asks for the same award: same activity, order number,
    /// award and amount. The app that sent it is not part of the payload: eight
    /// apps share one activity, and the same order from another app is a retry.
    pub fn same_payload(&self, other: &IssueRequest) -> bool {
        self.activity_id == other.activity_id
            && self.order_no == other.order_no
            && self.award_id == other.award_id
            && self.amount_cents == other.amount_cents
    }
}

/// A withdraw request as it arrives.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WithdrawRequest {
    /// The parent activity; the child is resolved by time.
    pub activity_id: ActivityId,
    /// The user.
    pub act_id: ActId,
    /// Idempotency key: letters, digits, `-`, `_`; at most [`WITHDRAW_NO_LEN_MAX`].
    pub withdraw_no: String,
    /// Cents to take out, > 0.
    pub amount_cents: i64,
    /// The client's own copies of its tokens, the backup when server-side token
    /// data is lost; each is verified and deduplicated by order number.
    #[serde(default, with = "hex_bytes::list")]
    #[schema(value_type = Vec<String>)]
    pub client_tokens: Vec<Vec<u8>>,
}

/// Why a request was turned away. Each has a stable machine-readable [`Rejection::code`].
#[derive(
    Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(tag = "code", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Rejection {
    /// The order number does not parse.
    #[error("malformed order number: {0}")]
    MalformedOrderNo(OrderNoError),
    /// No such parent activity.
    #[error("activity {activity_id} is not configured")]
    UnknownActivity { activity_id: ActivityId },
    /// No child activity's window holds the request time.
    #[error("activity {activity_id} has no child activity open at {at_ms} ms")]
    NoChildOpen {
        activity_id: ActivityId,
        at_ms: Millis,
    },
    /// The order number names a scene the activity lacks.
    #[error("scene {scene_id} is not configured in activity {activity_id}")]
    UnknownScene {
        activity_id: ActivityId,
        scene_id: u32,
    },
    /// The order number's award type is not the scene's.
    #[error("order number says {order_type} but scene {scene_id} gives {scene_type}")]
    AwardTypeMismatch {
        scene_id: u32,
        scene_type: String,
        order_type: String,
    },
    /// The award id is not one of the scene's.
    #[error("award id {award_id} is not given by scene {scene_id}")]
    UnknownAward { scene_id: u32, award_id: u64 },
    /// A cash award of 0.
    #[error("amount is 0 cents; a cash award must be positive")]
    ZeroAmount,
    /// A negative amount.
    #[error("amount {amount_cents} cents is negative")]
    NegativeAmount { amount_cents: i64 },
    /// Above the per-transaction cap.
    #[error("amount {amount_cents} cents is over the cap of {cap_cents} cents")]
    AmountOverCap { amount_cents: i64, cap_cents: u64 },
    /// A coupon or pendant request carried an amount.
    #[error("a {award_type} award takes no amount, got {amount_cents} cents")]
    AmountNotAllowed {
        award_type: String,
        amount_cents: i64,
    },
    /// The child's cash budget cannot cover the amount.
    #[error(
        "budget of child {child_id} exhausted: {used_cents} of {budget_cents} cents used, {amount_cents} asked"
    )]
    BudgetExhausted {
        child_id: ChildId,
        budget_cents: u64,
        used_cents: u64,
        amount_cents: u64,
    },
    /// The template's stock is used up.
    #[error("coupon template {template_id} is out of stock ({stock} issued)")]
    OutOfStock { template_id: u64, stock: u64 },
    /// The user holds the batch's limit already.
    #[error("user {act_id} holds {limit} coupon(s) of batch `{batch}` already")]
    UserBatchLimit {
        act_id: ActId,
        batch: String,
        limit: u32,
    },
    /// The user holds another batch of the same group.
    #[error("user {act_id} holds batch `{held}` of group `{group}`; batch `{batch}` is excluded")]
    BatchGroupTaken {
        act_id: ActId,
        group: String,
        batch: String,
        held: String,
    },
    /// The withdraw number is empty, too long or has other characters.
    #[error("withdraw number `{withdraw_no}` must be 1 to 64 letters, digits, `-` or `_`")]
    MalformedWithdrawNo { withdraw_no: String },
    /// The balance cannot cover the withdrawal.
    #[error("balance {balance_cents} cents is less than the {amount_cents} cents asked")]
    InsufficientBalance {
        balance_cents: u64,
        amount_cents: u64,
    },
    /// Withdrawals are in gray release and this user is not in it yet.
    #[error("withdrawals are not open for user {act_id} yet")]
    WithdrawNotOpen { act_id: ActId },
    /// Another withdraw of this user holds the lock.
    #[error("another withdraw of user {act_id} is in progress")]
    WithdrawBusy { act_id: ActId },
    /// More client tokens than one withdraw may carry.
    #[error("{count} client tokens presented; at most {max}")]
    TooManyTokens { count: usize, max: usize },
    /// A pipeline order failed for good (stock, limits, an unknown stock result).
    #[error("the order failed in the coupon pipeline ({failure}): {detail}")]
    OrderFailed { failure: String, detail: String },
    /// The scene's ingress rate limit turned the request away; retry later.
    #[error("scene {scene_id} is over its ingress limit of {limit_qps} requests/s")]
    RateLimited { scene_id: u32, limit_qps: u64 },
    /// The coupon pipeline's activity queue is full, or the instance is shutting
    /// down; nothing was recorded, retry later.
    #[error("the coupon pipeline is busy ({why}); nothing recorded, retry later")]
    PipelineBusy { why: String },
}

impl Rejection {
    /// A stable snake_case code for metrics, reports and the HTTP protocol.
    pub fn code(&self) -> &'static str {
        match self {
            Rejection::MalformedOrderNo(_) => "malformed_order_no",
            Rejection::UnknownActivity { .. } => "unknown_activity",
            Rejection::NoChildOpen { .. } => "no_child_open",
            Rejection::UnknownScene { .. } => "unknown_scene",
            Rejection::AwardTypeMismatch { .. } => "award_type_mismatch",
            Rejection::UnknownAward { .. } => "unknown_award",
            Rejection::ZeroAmount => "zero_amount",
            Rejection::NegativeAmount { .. } => "negative_amount",
            Rejection::AmountOverCap { .. } => "amount_over_cap",
            Rejection::AmountNotAllowed { .. } => "amount_not_allowed",
            Rejection::BudgetExhausted { .. } => "budget_exhausted",
            Rejection::OutOfStock { .. } => "out_of_stock",
            Rejection::UserBatchLimit { .. } => "user_batch_limit",
            Rejection::BatchGroupTaken { .. } => "batch_group_taken",
            Rejection::MalformedWithdrawNo { .. } => "malformed_withdraw_no",
            Rejection::InsufficientBalance { .. } => "insufficient_balance",
            Rejection::WithdrawNotOpen { .. } => "withdraw_not_open",
            Rejection::WithdrawBusy { .. } => "withdraw_busy",
            Rejection::TooManyTokens { .. } => "too_many_tokens",
            Rejection::RateLimited { .. } => "rate_limited",
            Rejection::OrderFailed { .. } => "order_failed",
            Rejection::PipelineBusy { .. } => "pipeline_busy",
        }
    }

    /// A "retry later" refusal: nothing was recorded and the same request may
    /// succeed when sent again (a rate limit, a busy pipeline, a withdraw lock).
    pub fn retry_later(&self) -> bool {
        matches!(
            self,
            Rejection::RateLimited { .. }
                | Rejection::PipelineBusy { .. }
                | Rejection::WithdrawBusy { .. }
        )
    }
}

/// What became of an issue request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum IssueOutcome {
    /// Credited now.
    Issued {
        /// The ledger entry.
        entry: Entry,
    },
    /// Credited before with the same payload; the first outcome again.
    Duplicate {
        /// The entry of the first time.
        entry: Entry,
    },
    /// The order number was credited before with a different payload.
    Conflict {
        /// The entry of the first time.
        first: Entry,
    },
    /// Turned away; nothing written.
    Rejected {
        /// The child activity, when the request got that far.
        child_id: Option<ChildId>,
        /// Why.
        reason: Rejection,
    },
    /// Token mode: the award is signed and recorded; crediting happens later.
    Accepted {
        /// The token; the client keeps this copy.
        token: IssuedToken,
    },
    /// Token mode: accepted before with the same payload; the same token again.
    DuplicateToken {
        /// The token issued the first time.
        token: IssuedToken,
    },
    /// Token mode: the order number was accepted before with another payload.
    TokenConflict {
        /// The token issued the first time.
        first: IssuedToken,
    },
    /// Coupon pipeline: recorded and queued; issued later.
    Queued {
        /// The order.
        order: QueuedOrder,
    },
    /// Coupon pipeline: recorded before with the same payload.
    DuplicateQueued {
        /// The order as it stands.
        order: QueuedOrder,
    },
    /// Coupon pipeline: the order number was recorded before with another payload.
    OrderConflict {
        /// The first order.
        first: QueuedOrder,
    },
}

impl IssueOutcome {
    /// A short name of the outcome kind (`issued`, `duplicate`, `conflict` or the rejection code).
    pub fn label(&self) -> &'static str {
        match self {
            IssueOutcome::Issued { .. } => "issued",
            IssueOutcome::Duplicate { .. } => "duplicate",
            IssueOutcome::Conflict { .. } => "conflict",
            IssueOutcome::Rejected { reason, .. } => reason.code(),
            IssueOutcome::Accepted { .. } => "accepted",
            IssueOutcome::DuplicateToken { .. } => "duplicate",
            IssueOutcome::TokenConflict { .. } => "conflict",
            IssueOutcome::Queued { .. } => "queued",
            IssueOutcome::DuplicateQueued { .. } => "duplicate",
            IssueOutcome::OrderConflict { .. } => "conflict",
        }
    }

    /// Cash cents this answer promises the user, the first time it is given
    /// (issued or accepted); 0 for replays, rejections and non-cash awards.
    pub fn newly_awarded_cents(&self) -> u64 {
        match self {
            IssueOutcome::Issued { entry } => entry.cash_delta_cents().max(0) as u64,
            IssueOutcome::Accepted { token } => token.amount_cents,
            _ => 0,
        }
    }
}

/// What force-crediting before a withdraw did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ForceCredit {
    /// Tokens newly credited.
    pub credited: u32,
    /// Tokens found credited already.
    pub already_credited: u32,
    /// Client tokens refused, by position in the request, with a reason code.
    pub rejected_tokens: Vec<(usize, String)>,
}

/// What became of a withdraw request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum WithdrawOutcome {
    /// Taken out now.
    Withdrawn {
        /// The ledger entry.
        entry: Entry,
        /// Balance left.
        balance_after_cents: u64,
        /// What was force-credited first.
        force: ForceCredit,
    },
    /// Taken out before with the same payload.
    Duplicate {
        /// The entry of the first time.
        entry: Entry,
    },
    /// The withdraw number was used before with a different payload.
    Conflict {
        /// The entry of the first time.
        first: Entry,
    },
    /// Turned away; no withdrawal written (tokens may have been force-credited,
    /// which only moves money the user already owns into the ledger).
    Rejected {
        /// The child activity, when the request got that far.
        child_id: Option<ChildId>,
        /// Why.
        reason: Rejection,
        /// What was force-credited first, if anything.
        force: ForceCredit,
    },
}

impl WithdrawOutcome {
    /// A short name of the outcome kind.
    pub fn label(&self) -> &'static str {
        match self {
            WithdrawOutcome::Withdrawn { .. } => "withdrawn",
            WithdrawOutcome::Duplicate { .. } => "duplicate",
            WithdrawOutcome::Conflict { .. } => "conflict",
            WithdrawOutcome::Rejected { reason, .. } => reason.code(),
        }
    }
}

/// Coupon stock as the strategy side reads it.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StockView {
    /// Coupons consumed from stock.
    pub consumed: u64,
    /// Configured stock.
    pub total: u64,
    /// `(total - consumed) / total`, for display.
    pub remaining_ratio: f64,
    /// False once less than 10% remains: offer a fallback coupon or a greeting instead.
    pub should_offer: bool,
}

impl StockView {
    /// The view of `consumed` out of `total`.
    pub fn new(consumed: u64, total: u64) -> Self {
        let remaining = total.saturating_sub(consumed);
        let remaining_ratio = if total == 0 {
            0.0
        } else {
            remaining as f64 / total as f64
        };
        // Integer form of remaining / total >= 10%.
        let should_offer = u128::from(remaining) * 10 >= u128::from(total) && remaining > 0;
        Self {
            consumed,
            total,
            remaining_ratio,
            should_offer,
        }
    }
}

/// An operating error: a store failed. The request's outcome is unknown to the caller,
/// who may retry with the same order number.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WalletError {
    /// The ledger failed.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// The KV failed.
    #[error(transparent)]
    Kv(#[from] KvError),
    /// A token-mode scene was asked for, but the wallet has no signing key.
    #[error("scene {scene_id} credits by token but no token signing key is configured")]
    NoTokenKeys { scene_id: u32 },
    /// This pipeline instance died at a crash point (tests and simulated faults).
    #[error("the coupon pipeline instance is down")]
    InstanceDown,
    /// A pipeline order record does not decode.
    #[error("order record {key} is corrupt: {error}")]
    CorruptOrder { key: String, error: String },
    /// A green request found its order mid-step in another processor, or a
    /// store failed under it: the outcome is not known yet; retry.
    #[error("order {key} is still in progress ({state}); retry")]
    OrderInProgress { key: String, state: String },
    /// Shadow-tagged traffic came, but the wallet has no shadow stores.
    #[error("shadow-tagged request, but no shadow stores are configured")]
    NoShadowStores,
    /// A server-side token copy does not verify: the store is corrupt or tampered with.
    #[error("server-side token for {key} does not verify: {error}")]
    CorruptToken { key: String, error: TokenError },
}

/// A reservation to undo if the request does not complete.
#[derive(Debug)]
pub(crate) enum Reservation {
    Consumed { key: String, n: u64 },
    Held { key: String, value: String },
}

/// A request that passed validation.
#[derive(Debug)]
pub(crate) struct ValidIssue<'a> {
    pub(crate) activity: &'a Activity,
    pub(crate) child: &'a ChildActivity,
    pub(crate) scene: &'a Scene,
    pub(crate) order_no: OrderNo,
    pub(crate) award_def: &'a AwardDef,
    pub(crate) award: Award,
}

/// How many instances share the ingress limits, and when breakers open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StabilityConfig {
    /// Instances of the wallet sharing each scene's `rate_limit_qps`.
    pub instances: u32,
    /// The breakers around the ledger and the KV.
    pub breaker: BreakerConfig,
}

impl Default for StabilityConfig {
    fn default() -> Self {
        Self {
            instances: 1,
            breaker: BreakerConfig::default(),
        }
    }
}

/// Ingress limits and the two breakers of one wallet instance.
#[derive(Debug)]
struct Stability {
    ingress: IngressLimits,
    kv_breaker: Arc<Breaker>,
    ledger_breaker: Arc<Breaker>,
}

/// The reference wallet over a ledger and a KV.
#[derive(Debug, Clone)]
pub struct Wallet {
    tree: Arc<ActivityTree>,
    /// The stores as given; `ledger` and `kv` are these behind the breakers.
    raw: (Arc<dyn Ledger>, Arc<dyn Kv>),
    ledger: Arc<dyn Ledger>,
    kv: Arc<dyn Kv>,
    clock: Arc<dyn Clock>,
    keys: Option<Arc<KeyRing>>,
    switches: Arc<Switches>,
    stability_config: StabilityConfig,
    stability: Arc<Stability>,
    /// The twin that serves shadow-tagged traffic, over the shadow stores.
    shadow: Option<Arc<Wallet>>,
}

impl Wallet {
    /// A wallet over the given tree, stores and clock, with every switch on and no
    /// token keys (token-mode scenes then fail with [`WalletError::NoTokenKeys`]).
    /// Calls to the stores go through circuit breakers.
    pub fn new(
        tree: Arc<ActivityTree>,
        ledger: Arc<dyn Ledger>,
        kv: Arc<dyn Kv>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let switches = Arc::new(Switches::default());
        let raw = (ledger, kv);
        let (ledger, kv, stability) = guarded(&raw, &clock, &switches, StabilityConfig::default());
        Self {
            tree,
            raw,
            ledger,
            kv,
            clock,
            keys: None,
            switches,
            stability_config: StabilityConfig::default(),
            stability,
            shadow: None,
        }
    }

    /// Serve shadow-tagged traffic from a twin over `ledger` and `kv` (the
    /// `shadow_` tables and `shadow:` keys, see [`crate::ledger::LedgerOptions`]
    /// and [`crate::kv::KvOptions`]). The twin shares the tree, clock, keys and
    /// switches, so shadow traffic runs exactly like real traffic, but never
    /// touches a real store; it has its own limits and breakers.
    pub fn with_shadow_stores(mut self, ledger: Arc<dyn Ledger>, kv: Arc<dyn Kv>) -> Self {
        let mut twin = Wallet::new(self.tree.clone(), ledger, kv, self.clock.clone());
        twin.keys = self.keys.clone();
        twin.switches = self.switches.clone();
        twin.stability_config = self.stability_config;
        twin.guard();
        self.shadow = Some(Arc::new(twin));
        self
    }

    /// The wallet for traffic with this shadow tag: `self` for real traffic, the
    /// twin for shadow traffic.
    pub fn route(&self, shadow: bool) -> Result<&Wallet, WalletError> {
        if !shadow {
            return Ok(self);
        }
        self.shadow.as_deref().ok_or(WalletError::NoShadowStores)
    }

    /// The shadow twin, if shadow stores were given.
    pub fn shadow(&self) -> Option<&Wallet> {
        self.shadow.as_deref()
    }

    /// Apply a builder step to the shadow twin too.
    fn twin(&mut self, step: impl FnOnce(Wallet) -> Wallet) {
        if let Some(twin) = self.shadow.take() {
            self.shadow = Some(Arc::new(step(Wallet::clone(&twin))));
        }
    }

    /// Rebuild the limits and breakers after a change of switches or config.
    fn guard(&mut self) {
        (self.ledger, self.kv, self.stability) = guarded(
            &self.raw,
            &self.clock,
            &self.switches,
            self.stability_config,
        );
    }

    /// Use `config` for the ingress limits and breakers (fresh ones).
    pub fn with_stability(mut self, config: StabilityConfig) -> Self {
        self.stability_config = config;
        self.guard();
        self.twin(|twin| twin.with_stability(config));
        self
    }

    /// What the ingress limits and breakers have done.
    pub fn stability(&self) -> StabilityFigures {
        StabilityFigures {
            rate_limited: self.stability.ingress.limited(),
            kv_breaker: self.stability.kv_breaker.figures(),
            ledger_breaker: self.stability.ledger_breaker.figures(),
        }
    }

    /// The scene's ingress limit, when it has one and the switch is on.
    pub(crate) fn admit(&self, scene: &Scene) -> Result<(), Rejection> {
        match scene.rate_limit_qps {
            Some(limit_qps) if self.switches.is_on(Switch::IngressRateLimit) => {
                if self.stability.ingress.admit(scene.id, limit_qps) {
                    Ok(())
                } else {
                    Err(Rejection::RateLimited {
                        scene_id: scene.id,
                        limit_qps,
                    })
                }
            }
            _ => Ok(()),
        }
    }

    /// Sign and verify tokens with `keys`.
    pub fn with_keys(mut self, keys: Arc<KeyRing>) -> Self {
        self.twin(|twin| twin.with_keys(keys.clone()));
        self.keys = Some(keys);
        self
    }

    /// Use `switches` (shared with whoever flips them); limits and breakers start fresh.
    pub fn with_switches(mut self, switches: Arc<Switches>) -> Self {
        self.twin(|twin| twin.with_switches(switches.clone()));
        self.switches = switches;
        self.guard();
        self
    }

    /// The live switches.
    pub fn switches(&self) -> &Arc<Switches> {
        &self.switches
    }

    /// The token keys, if any.
    pub fn keys(&self) -> Option<&Arc<KeyRing>> {
        self.keys.as_ref()
    }

    /// The clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// The activity tree.
    pub fn tree(&self) -> &ActivityTree {
        &self.tree
    }

    /// The ledger.
    pub fn ledger(&self) -> &Arc<dyn Ledger> {
        &self.ledger
    }

    /// The KV.
    pub fn kv(&self) -> &Arc<dyn Kv> {
        &self.kv
    }

    /// Issue one award synchronously: validate, reserve, credit.
    pub async fn issue(&self, request: &IssueRequest) -> Result<IssueOutcome, WalletError> {
        let now_ms = self.clock.now_ms();
        let valid = match self.validate(request, now_ms) {
            Ok(valid) => valid,
            Err((child_id, reason)) => return Ok(IssueOutcome::Rejected { child_id, reason }),
        };
        if let Err(reason) = self.admit(valid.scene) {
            return Ok(IssueOutcome::Rejected {
                child_id: Some(valid.child.id),
                reason,
            });
        }
        if valid.scene.crediting == Crediting::Token {
            if self.switches.is_on(Switch::TokenKv) {
                return self.issue_token(&valid, request, now_ms).await;
            }
            // Token KV switched off: the sync path takes over, but an order accepted
            // as a token before the switch must still get its first answer. A
            // best-effort read (passive: on error, go on) keeps a conflicting replay
            // from being credited with another payload.
            if let Some(outcome) = self.earlier_token(&valid, request).await {
                return Ok(outcome);
            }
        }
        // A pipeline scene on the sync path (pipeline switched off, or called
        // directly): an order the pipeline recorded keeps its first answer, and the
        // pipeline finishes it. Passive like the token read above.
        if valid.scene.crediting == Crediting::Pipeline
            && let Some(outcome) = orders::earlier_order(self, valid.child.id, request).await
        {
            return Ok(outcome);
        }
        let credit = Credit::new(
            valid.child.id,
            valid.order_no.clone(),
            valid.award.clone(),
            now_ms,
        );
        // A retry of a credited order must not consume anything again.
        if self.switches.is_on(Switch::IdempotencyPrecheck)
            && let Some(first) = self
                .ledger
                .lookup_credit(valid.child.id, &valid.order_no)
                .await?
        {
            return Ok(replayed(first, &credit));
        }
        let mut reservations = Vec::new();
        match self.reserve(&valid, &mut reservations).await {
            Ok(None) => {}
            Ok(Some(reason)) => {
                self.undo(reservations).await;
                return Ok(IssueOutcome::Rejected {
                    child_id: Some(valid.child.id),
                    reason,
                });
            }
            Err(e) => {
                self.undo(reservations).await;
                return Err(e.into());
            }
        }
        let outcome = match self
            .ledger
            .credit_batch(std::slice::from_ref(&credit))
            .await
        {
            Ok(mut outcomes) => outcomes
                .pop()
                .ok_or_else(|| LedgerError::Store("empty outcome list".to_owned())),
            Err(e) => Err(e),
        };
        match outcome {
            Ok(CreditOutcome::Credited { entry }) => Ok(IssueOutcome::Issued { entry }),
            Ok(CreditOutcome::Duplicate { entry }) => {
                self.undo(reservations).await;
                Ok(IssueOutcome::Duplicate { entry })
            }
            Ok(CreditOutcome::Conflict { first }) => {
                self.undo(reservations).await;
                Ok(IssueOutcome::Conflict { first })
            }
            Err(e) => {
                // The error does not say whether the batch committed (a
                // connection lost at COMMIT does not). Ask: releasing what a
                // posted credit consumed would let the budget or stock be
                // spent twice, so only a credit surely not posted is undone.
                match self
                    .ledger
                    .lookup_credit(valid.child.id, &valid.order_no)
                    .await
                {
                    Ok(Some(first)) if first.matches_credit(&credit) => {
                        Ok(IssueOutcome::Issued { entry: first })
                    }
                    Ok(Some(first)) => {
                        self.undo(reservations).await;
                        Ok(IssueOutcome::Conflict { first })
                    }
                    Ok(None) => {
                        self.undo(reservations).await;
                        Err(e.into())
                    }
                    // Unknown: keep the reservations, under-issue rather than over.
                    Err(_) => Err(e.into()),
                }
            }
        }
    }

    pub(crate) fn validate(
        &self,
        request: &IssueRequest,
        now_ms: Millis,
    ) -> Result<ValidIssue<'_>, (Option<ChildId>, Rejection)> {
        let order_no: OrderNo = request
            .order_no
            .parse()
            .map_err(|e| (None, Rejection::MalformedOrderNo(e)))?;
        let activity = self.tree.activity(request.activity_id).ok_or((
            None,
            Rejection::UnknownActivity {
                activity_id: request.activity_id,
            },
        ))?;
        let child = activity.child_at(now_ms).ok_or((
            None,
            Rejection::NoChildOpen {
                activity_id: activity.id,
                at_ms: now_ms,
            },
        ))?;
        let reject = |reason| (Some(child.id), reason);
        let scene = activity.scenes.get(&order_no.scene_id).ok_or_else(|| {
            reject(Rejection::UnknownScene {
                activity_id: activity.id,
                scene_id: order_no.scene_id,
            })
        })?;
        if scene.award_type != order_no.award_type {
            return Err(reject(Rejection::AwardTypeMismatch {
                scene_id: scene.id,
                scene_type: scene.award_type.to_string(),
                order_type: order_no.award_type.to_string(),
            }));
        }
        let award_def = scene
            .award_ids
            .contains(&request.award_id)
            .then(|| activity.awards.get(&request.award_id))
            .flatten()
            .ok_or_else(|| {
                reject(Rejection::UnknownAward {
                    scene_id: scene.id,
                    award_id: request.award_id,
                })
            })?;
        let award = award_of(activity, request, award_def).map_err(reject)?;
        Ok(ValidIssue {
            activity,
            child,
            scene,
            order_no,
            award_def,
            award,
        })
    }

    /// Consume budget, limits and stock. `Ok(Some(reason))` = rejected; what was
    /// reserved so far is in `reservations` for the caller to undo.
    pub(crate) async fn reserve(
        &self,
        valid: &ValidIssue<'_>,
        reservations: &mut Vec<Reservation>,
    ) -> Result<Option<Rejection>, KvError> {
        let child = valid.child;
        match valid.award_def {
            AwardDef::Cash { .. } => {
                let amount = valid.award.cash_cents();
                let key = keys::budget(child.id);
                match self
                    .kv
                    .consume_within(&key, amount, child.budget_cents)
                    .await?
                {
                    Consume::Consumed { .. } => {
                        reservations.push(Reservation::Consumed { key, n: amount })
                    }
                    Consume::Exceeded { current } => {
                        return Ok(Some(Rejection::BudgetExhausted {
                            child_id: child.id,
                            budget_cents: child.budget_cents,
                            used_cents: current,
                            amount_cents: amount,
                        }));
                    }
                }
            }
            AwardDef::Coupon(coupon) => {
                if let Some(reason) = self.reserve_user(valid, coupon, reservations).await? {
                    return Ok(Some(reason));
                }
                if valid.scene.stock_control {
                    let key = keys::stock(child.id, coupon.template_id);
                    match self.kv.consume_within(&key, 1, coupon.stock).await? {
                        Consume::Consumed { .. } => {
                            reservations.push(Reservation::Consumed { key, n: 1 })
                        }
                        Consume::Exceeded { .. } => {
                            return Ok(Some(Rejection::OutOfStock {
                                template_id: coupon.template_id,
                                stock: coupon.stock,
                            }));
                        }
                    }
                }
            }
            AwardDef::Pendant { .. } => {}
        }
        Ok(None)
    }

    /// The per-user part of a coupon's reservations: batch-group exclusion, then
    /// the per-user per-batch limit.
    pub(crate) async fn reserve_user(
        &self,
        valid: &ValidIssue<'_>,
        coupon: &CouponDef,
        reservations: &mut Vec<Reservation>,
    ) -> Result<Option<Rejection>, KvError> {
        let child = valid.child;
        let act_id = valid.order_no.act_id;
        if let Some(group) = &coupon.group {
            let key = keys::user_group(child.id, group, act_id);
            match self.kv.hold(&key, &coupon.batch).await? {
                Hold::Held { .. } => reservations.push(Reservation::Held {
                    key,
                    value: coupon.batch.clone(),
                }),
                Hold::HeldByOther { value } => {
                    return Ok(Some(Rejection::BatchGroupTaken {
                        act_id,
                        group: group.clone(),
                        batch: coupon.batch.clone(),
                        held: value,
                    }));
                }
            }
        }
        let key = keys::user_batch(child.id, &coupon.batch, act_id);
        match self
            .kv
            .consume_within(&key, 1, u64::from(coupon.per_user_limit))
            .await?
        {
            Consume::Consumed { .. } => reservations.push(Reservation::Consumed { key, n: 1 }),
            Consume::Exceeded { .. } => {
                return Ok(Some(Rejection::UserBatchLimit {
                    act_id,
                    batch: coupon.batch.clone(),
                    limit: coupon.per_user_limit,
                }));
            }
        }
        Ok(None)
    }

    /// Release reservations, newest first. Best effort: a failure leaves a counter
    /// too high, which can only under-issue.
    pub(crate) async fn undo(&self, reservations: Vec<Reservation>) {
        for reservation in reservations.into_iter().rev() {
            let _ignored = match reservation {
                Reservation::Consumed { key, n } => self.kv.release(&key, n).await.map(drop),
                Reservation::Held { key, value } => self.kv.unhold(&key, &value).await.map(drop),
            };
        }
    }

    /// Withdraw cash from the user's account in the child open now: pass the gray
    /// gate, take the per-user lock, force-credit pending tokens (server list plus
    /// the client's copies), then withdraw.
    pub async fn withdraw(
        &self,
        request: &WithdrawRequest,
    ) -> Result<WithdrawOutcome, WalletError> {
        let now_ms = self.clock.now_ms();
        let (activity, child) = match self.activity_and_child_now(request.activity_id, now_ms) {
            Ok(found) => found,
            Err(reason) => {
                return Ok(WithdrawOutcome::Rejected {
                    child_id: None,
                    reason,
                    force: ForceCredit::default(),
                });
            }
        };
        let reject = |reason| {
            Ok(WithdrawOutcome::Rejected {
                child_id: Some(child.id),
                reason,
                force: ForceCredit::default(),
            })
        };
        if !valid_withdraw_no(&request.withdraw_no) {
            return reject(Rejection::MalformedWithdrawNo {
                withdraw_no: request.withdraw_no.clone(),
            });
        }
        let amount_cents = match positive_amount(request.amount_cents) {
            Ok(amount) => amount,
            Err(reason) => return reject(reason),
        };
        if request.client_tokens.len() > CLIENT_TOKENS_MAX {
            return reject(Rejection::TooManyTokens {
                count: request.client_tokens.len(),
                max: CLIENT_TOKENS_MAX,
            });
        }
        if !activity.withdraw_gate.admits(request.act_id) {
            // Outside the gray release: tokens stay untouched.
            return reject(Rejection::WithdrawNotOpen {
                act_id: request.act_id,
            });
        }
        let lock_key = keys::withdraw_lock(child.id, request.act_id);
        let locked = if self.switches.is_on(Switch::DistributedLock) {
            match self
                .kv
                .try_lock(&lock_key, &request.withdraw_no, WITHDRAW_LOCK_TTL_MS)
                .await
            {
                Ok(true) => true,
                Ok(false) => {
                    return reject(Rejection::WithdrawBusy {
                        act_id: request.act_id,
                    });
                }
                // Passive degrade: a lock that cannot be reached is skipped.
                Err(_) => false,
            }
        } else {
            false
        };
        let result = self
            .force_credit_and_withdraw(activity, child, request, amount_cents, now_ms)
            .await;
        if locked {
            let _ignored = self.kv.unlock(&lock_key, &request.withdraw_no).await;
        }
        result
    }

    async fn force_credit_and_withdraw(
        &self,
        activity: &Activity,
        child: &ChildActivity,
        request: &WithdrawRequest,
        amount_cents: u64,
        now_ms: Millis,
    ) -> Result<WithdrawOutcome, WalletError> {
        let force = if self.switches.is_on(Switch::ForceCreditOnWithdraw) {
            self.force_credit(activity, child, request).await?
        } else {
            ForceCredit::default()
        };
        let withdrawal = Withdrawal {
            account: AccountKey {
                child_id: child.id,
                act_id: request.act_id,
            },
            withdraw_no: request.withdraw_no.clone(),
            amount_cents,
            at_ms: now_ms,
        };
        Ok(match self.ledger.withdraw(&withdrawal).await? {
            LedgerWithdrawOutcome::Withdrawn {
                entry,
                balance_after_cents,
            } => WithdrawOutcome::Withdrawn {
                entry,
                balance_after_cents,
                force,
            },
            LedgerWithdrawOutcome::Duplicate { entry } => WithdrawOutcome::Duplicate { entry },
            LedgerWithdrawOutcome::Conflict { first } => WithdrawOutcome::Conflict { first },
            LedgerWithdrawOutcome::InsufficientBalance { balance_cents } => {
                WithdrawOutcome::Rejected {
                    child_id: Some(child.id),
                    reason: Rejection::InsufficientBalance {
                        balance_cents,
                        amount_cents,
                    },
                    force,
                }
            }
        })
    }

    /// Credit every pending token of the user in `child`: the server list (when the
    /// token KV is on) and the client's copies, verified and deduplicated.
    async fn force_credit(
        &self,
        activity: &Activity,
        child: &ChildActivity,
        request: &WithdrawRequest,
    ) -> Result<ForceCredit, WalletError> {
        let mut report = ForceCredit::default();
        let mut tokens: std::collections::BTreeMap<OrderNo, (TokenFacts, Vec<u8>)> =
            std::collections::BTreeMap::new();
        let token_kv = self.switches.is_on(Switch::TokenKv);
        if let (Some(keys), true) = (&self.keys, token_kv) {
            let list_key = keys::user_tokens(child.id, request.act_id);
            for bytes in self.kv.list_range(&list_key, LIST_RANGE_MAX).await? {
                let facts = keys
                    .verify(&bytes)
                    .map_err(|error| WalletError::CorruptToken {
                        key: list_key.clone(),
                        error,
                    })?;
                tokens
                    .entry(facts.order_no.clone())
                    .or_insert((facts, bytes));
            }
        }
        for (index, bytes) in request.client_tokens.iter().enumerate() {
            let verified = match &self.keys {
                Some(keys) => keys
                    .verify_for(bytes, request.act_id, activity.id)
                    .map_err(|e| e.code().to_owned()),
                None => Err("token_no_keys".to_owned()),
            };
            match verified {
                Ok(facts) if facts.child_id != child.id => report
                    .rejected_tokens
                    .push((index, "token_wrong_child".to_owned())),
                Ok(facts) => {
                    tokens
                        .entry(facts.order_no.clone())
                        .or_insert((facts, bytes.clone()));
                }
                Err(code) => report.rejected_tokens.push((index, code)),
            }
        }
        let mut todo: Vec<(Credit, Vec<u8>)> = Vec::new();
        for (facts, bytes) in tokens.into_values() {
            let status_key = keys::token_status(child.id, &facts.order_no.to_string());
            if token_kv && self.kv.status(&status_key).await? == Some(STATUS_SUCCESS) {
                report.already_credited += 1;
                continue;
            }
            todo.push((token_mode::credit_of(&facts), bytes));
        }
        for chunk in todo.chunks(crate::ledger::CREDIT_BATCH_MAX) {
            let credits: Vec<Credit> = chunk.iter().map(|(credit, _)| credit.clone()).collect();
            let outcomes = self.ledger.credit_batch(&credits).await?;
            for ((credit, bytes), outcome) in chunk.iter().zip(outcomes) {
                match outcome {
                    CreditOutcome::Credited { .. } => report.credited += 1,
                    CreditOutcome::Duplicate { .. } => report.already_credited += 1,
                    // Credited before with another payload: this copy is not money.
                    CreditOutcome::Conflict { .. } => {
                        if let Some(index) = request.client_tokens.iter().position(|t| t == bytes) {
                            report
                                .rejected_tokens
                                .push((index, "token_conflict".to_owned()));
                        }
                        continue;
                    }
                }
                if token_kv {
                    token_mode::mark_credited(self.kv.as_ref(), child.id, &credit.order_no, bytes)
                        .await;
                }
            }
        }
        Ok(report)
    }

    fn child_now(
        &self,
        activity_id: ActivityId,
        now_ms: Millis,
    ) -> Result<&ChildActivity, Rejection> {
        self.activity_and_child_now(activity_id, now_ms)
            .map(|(_, child)| child)
    }

    fn activity_and_child_now(
        &self,
        activity_id: ActivityId,
        now_ms: Millis,
    ) -> Result<(&Activity, &ChildActivity), Rejection> {
        let activity = self
            .tree
            .activity(activity_id)
            .ok_or(Rejection::UnknownActivity { activity_id })?;
        let child = activity.child_at(now_ms).ok_or(Rejection::NoChildOpen {
            activity_id,
            at_ms: now_ms,
        })?;
        Ok((activity, child))
    }

    /// Coupon stock of a template in the child open now, for the strategy side.
    pub async fn coupon_stock(
        &self,
        activity_id: ActivityId,
        template_id: u64,
    ) -> Result<Result<StockView, Rejection>, WalletError> {
        let now_ms = self.clock.now_ms();
        let child = match self.child_now(activity_id, now_ms) {
            Ok(child) => child,
            Err(reason) => return Ok(Err(reason)),
        };
        let activity = self
            .tree
            .activity(activity_id)
            .expect("child_now found the activity");
        let Some(coupon) = activity.coupon_template(template_id) else {
            return Ok(Err(Rejection::UnknownAward {
                scene_id: 0,
                award_id: template_id,
            }));
        };
        let consumed = self.kv.counter(&keys::stock(child.id, template_id)).await?;
        let consumed = u64::try_from(consumed).unwrap_or(0);
        Ok(Ok(StockView::new(consumed, coupon.stock)))
    }

    /// The user's account in the child open now.
    pub async fn account(
        &self,
        activity_id: ActivityId,
        act_id: ActId,
    ) -> Result<Result<AccountState, Rejection>, WalletError> {
        let child = match self.child_now(activity_id, self.clock.now_ms()) {
            Ok(child) => child,
            Err(reason) => return Ok(Err(reason)),
        };
        Ok(Ok(self
            .ledger
            .account(AccountKey {
                child_id: child.id,
                act_id,
            })
            .await?))
    }

    /// A page of the user's history in the child open now, newest first.
    pub async fn history(
        &self,
        activity_id: ActivityId,
        act_id: ActId,
        cursor: Option<Cursor>,
        limit: usize,
    ) -> Result<Result<HistoryPage, Rejection>, WalletError> {
        let child = match self.child_now(activity_id, self.clock.now_ms()) {
            Ok(child) => child,
            Err(reason) => return Ok(Err(reason)),
        };
        Ok(Ok(self
            .ledger
            .history(
                AccountKey {
                    child_id: child.id,
                    act_id,
                },
                cursor,
                limit,
            )
            .await?))
    }
}

/// The raw stores behind breakers, with fresh ingress limits.
fn guarded(
    raw: &(Arc<dyn Ledger>, Arc<dyn Kv>),
    clock: &Arc<dyn Clock>,
    switches: &Arc<Switches>,
    config: StabilityConfig,
) -> (Arc<dyn Ledger>, Arc<dyn Kv>, Arc<Stability>) {
    let breaker = |name| {
        Arc::new(Breaker::new(
            name,
            config.breaker,
            clock.clone(),
            switches.clone(),
        ))
    };
    let stability = Stability {
        ingress: IngressLimits::new(clock.clone(), config.instances),
        kv_breaker: breaker("kv"),
        ledger_breaker: breaker("ledger"),
    };
    let ledger: Arc<dyn Ledger> = Arc::new(BreakerLedger::new(
        raw.0.clone(),
        stability.ledger_breaker.clone(),
    ));
    let kv: Arc<dyn Kv> = Arc::new(BreakerKv::new(raw.1.clone(), stability.kv_breaker.clone()));
    (ledger, kv, Arc::new(stability))
}

pub(crate) fn replayed(first: Entry, credit: &Credit) -> IssueOutcome {
    if first.matches_credit(credit) {
        IssueOutcome::Duplicate { entry: first }
    } else {
        IssueOutcome::Conflict { first }
    }
}

fn positive_amount(amount_cents: i64) -> Result<u64, Rejection> {
    match amount_cents {
        0 => Err(Rejection::ZeroAmount),
        n if n < 0 => Err(Rejection::NegativeAmount { amount_cents: n }),
        // Positive i64 always fits u64.
        n => Ok(n as u64),
    }
}

fn award_of(
    activity: &Activity,
    request: &IssueRequest,
    def: &AwardDef,
) -> Result<Award, Rejection> {
    let no_amount = |award_type: &str| {
        if request.amount_cents != 0 {
            return Err(Rejection::AmountNotAllowed {
                award_type: award_type.to_owned(),
                amount_cents: request.amount_cents,
            });
        }
        Ok(())
    };
    match def {
        AwardDef::Cash { .. } => {
            let amount_cents = positive_amount(request.amount_cents)?;
            let cap_cents = activity
                .cash_cap_cents(request.award_id)
                .unwrap_or(activity.per_txn_cap_cents);
            if amount_cents > cap_cents {
                return Err(Rejection::AmountOverCap {
                    amount_cents: request.amount_cents,
                    cap_cents,
                });
            }
            Ok(Award::Cash { amount_cents })
        }
        AwardDef::Coupon(coupon) => {
            no_amount("coupon")?;
            Ok(Award::Coupon {
                template_id: coupon.template_id,
                batch: coupon.batch.clone(),
            })
        }
        AwardDef::Pendant { pendant_id } => {
            no_amount("pendant")?;
            Ok(Award::Pendant {
                pendant_id: *pendant_id,
            })
        }
    }
}

fn valid_withdraw_no(withdraw_no: &str) -> bool {
    !withdraw_no.is_empty()
        && withdraw_no.len() <= WITHDRAW_NO_LEN_MAX
        && withdraw_no
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests;
