//! Model-based property tests of the wallet — the synchronous path (`Wallet::issue`,
//! `Wallet::withdraw`) and the token scheme (token issue, the credit worker with
//! crashes and restarts, the wallet view, force-credit on withdraw with client
//! copies and forgeries, degradation switches) — with `proptest-state-machine`.
//!
//! A pure reference model of one small activity tree — three children in
//! consecutive five-second windows, tight budgets, caps, stock, per-user limits, a
//! batch group and one token-mode cash scene — predicts the outcome label of every
//! step, the balance of the account it touches, every account, the KV counters,
//! the token statuses and backlog, the worker's tick reports, the force-credit
//! report of every withdraw and the totals of every wallet view. The real wallet,
//! over a real ledger (`memory` and `sqlite::memory:`), a memory KV and a manual
//! clock, must agree after every step, and the invariant checkers must stay quiet
//! after every step and again after a final drain. Failures shrink and are kept in
//! `model_based.regressions` next to this file.
//!
//! The model must never call the code it checks: it knows the tree from its own
//! tables (compared with the TOML by a unit test), parses order numbers itself and
//! borrows only the KV key names from `reference::keys` and the seed's token status
//! numbers (2, 8), which are storage contracts. The harness side signs forgeries
//! with a key the wallet does not trust; the model only names them.
//!
//! Two things the model cannot know, and how the generator keeps clear of them:
//! the KV breaks ties between tokens claimed in the same millisecond by their signed
//! bytes, so a crash is generated only where it leaves no two tokens of one child
//! inflight with the same claim time; and a tampered byte may fail verification in
//! several ways, so the model predicts "refused as a forgery", not which code.
//! One thing the wallet and I7 disagree on is kept clear of too, until it is
//! settled: copies that fail verification are presented only where force-credit
//! runs (see `Model::force_credit_runs`).
//!
//! Mid-case the token backlog is legitimately non-zero, which I4 reports; the
//! harness compares the backlog with the model child by child and sets exactly that
//! one report aside (see `check_invariants`). Every case ends with a drain and all
//! checkers, nothing set aside.
//!
//! `PROPTEST_CASES` sets the number of cases per backend (256 when unset).

mod common;

use common::runtime;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::marker::PhantomData;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, LazyLock};

use proptest::prelude::*;
use proptest::sample::{Index, select};
use proptest::strategy::Union;
use proptest::test_runner::{Config as ProptestConfig, FileFailurePersistence};
use proptest_state_machine::{ReferenceStateMachine, StateMachineTest, prop_state_machine};
use reference::config::{AwardDef, Crediting};
use reference::kv::MemoryKv;
use reference::ledger::AccountKey;
use reference::switches::Switch;
use reference::token::{KeyRing, TokenFacts};
use reference::wallet::{
    ForceCredit, IssueOutcome, IssueRequest, Wallet, WalletView, WithdrawOutcome, WithdrawRequest,
};
use reference::worker::{CrashPoint, CreditWorker, TickReport, WorkerConfig};
use reference::{ActivityTree, AwardType, Clock, ManualClock, keys};
use simulator::check::{Invariant, check_all};
use simulator::history::{Event, FinalState, History};

// ---- the tree, as TOML for the wallet and as tables for the model ----

const TREE: &str = r#"
[[activity]]
id = 2027
name = "model"
per_txn_cap_cents = 1000

[[activity.child]]
id = 1
stage = "internal_test"
start = 2027-02-01T00:00:00Z
end = 2027-02-01T00:00:05Z
budget_cents = 1500

[[activity.child]]
id = 2
stage = "gray"
start = 2027-02-01T00:00:05Z
end = 2027-02-01T00:00:10Z
budget_cents = 1500

[[activity.child]]
id = 3
stage = "formal"
start = 2027-02-01T00:00:10Z
end = 2027-02-01T00:00:15Z
budget_cents = 2000

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

[[activity.scene]]
id = 4
award_type = "coupon"
bill_text = "coupons without stock control"
award_ids = [24]

[[activity.scene]]
id = 6
award_type = "cash"
bill_text = "rain, token mode"
crediting = "token"
award_ids = [11, 12]

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
per_user_limit = 1

[[activity.batch]]
id = "b4"
per_user_limit = 2

[[activity.coupon]]
award_id = 21
template_id = 701
batch = "b1"
stock = 3

[[activity.coupon]]
award_id = 22
template_id = 702
batch = "b2"
stock = 2

[[activity.coupon]]
award_id = 23
template_id = 703
batch = "b3"
stock = 2

[[activity.coupon]]
award_id = 24
template_id = 704
batch = "b4"
stock = 1

[[activity.pendant]]
award_id = 31
pendant_id = 5
"#;

static TREE_PARSED: LazyLock<Arc<ActivityTree>> = LazyLock::new(|| {
    Arc::new(ActivityTree::from_toml_str(TREE, "model_based.rs").expect("the test tree is valid"))
});

const ACTIVITY_ID: u64 = 2027;
/// 2027-02-01T00:00:00Z, where the first child opens and every case starts.
const START_MS: u64 = 1_801_440_000_000;
const PER_TXN_CAP_CENTS: u64 = 1000;
const WITHDRAW_NO_LEN_MAX: usize = 64;
/// The token-mode cash scene; scene 5 stays unknown.
const TOKEN_SCENE_ID: u64 = 6;
/// The wallet's token key (`KeyRing::dev`).
const KEY_SEED: u64 = 2027;
/// The key a forger signs with; the wallet does not trust it.
const FORGER_SEED: u64 = 666;
/// Tokens per worker tick: small, so ticks leave work behind.
const WORKER_BATCH_MAX: usize = 3;
/// A claimed token not credited after this long is re-queued by the compensation scan.
const PROCESSING_TIMEOUT_MS: u64 = 2_000;
/// How often the compensation scan runs.
const SCAN_INTERVAL_MS: u64 = 500;
/// How far a drain moves the clock between ticks while work is left.
const DRAIN_STEP_MS: u64 = 500;
/// Most ticks one drain takes; the model drains any case in far fewer.
const DRAIN_ROUNDS_MAX: usize = 64;
/// Flow lines asked for by a view (the totals do not depend on it).
const VIEW_PAGE_LIMIT: usize = 20;
/// Most client copies one generated withdraw presents.
const CLIENT_COPIES_MAX: usize = 4;
/// The seed's token status while a worker credits it.
const STATUS_PROCESSING: u8 = 2;
/// The seed's token status once credited.
const STATUS_SUCCESS: u8 = 8;
/// What a tampered token may be refused as: the flipped bit decides which check fails first.
const FORGERY_CODES: [&str; 4] = [
    "token_malformed",
    "token_unknown_key",
    "token_bad_signature",
    "token_bad_body",
];
/// Bytes that are no token at all, with the code the wallet refuses each with.
const JUNK_TOKENS: [(&[u8], &str); 3] = [
    (b"junk", "token_malformed"),
    (b"", "token_bad_signature"),
    (&[0xab; 600], "token_too_long"),
];

fn worker_config() -> WorkerConfig {
    WorkerConfig {
        batch_max: WORKER_BATCH_MAX,
        credit_tps: 0,
        backoff_min_ms: 100,
        backoff_max_ms: 1_000,
        processing_timeout_ms: PROCESSING_TIMEOUT_MS,
        scan_interval_ms: SCAN_INTERVAL_MS,
    }
}

#[derive(Clone, Copy, Debug)]
struct ChildSpec {
    id: u64,
    start_ms: u64,
    end_ms: u64,
    budget_cents: u64,
}

const CHILDREN: [ChildSpec; 3] = [
    ChildSpec {
        id: 1,
        start_ms: START_MS,
        end_ms: START_MS + 5_000,
        budget_cents: 1500,
    },
    ChildSpec {
        id: 2,
        start_ms: START_MS + 5_000,
        end_ms: START_MS + 10_000,
        budget_cents: 1500,
    },
    ChildSpec {
        id: 3,
        start_ms: START_MS + 10_000,
        end_ms: START_MS + 15_000,
        budget_cents: 2000,
    },
];

#[derive(Clone, Copy, Debug)]
struct SceneSpec {
    id: u64,
    /// The order-number code of the scene's award type.
    award_code: u64,
    award_ids: &'static [u64],
    stock_control: bool,
    /// `crediting = "token"`: cash is signed into a token and credited later.
    token: bool,
}

const SCENES: [SceneSpec; 5] = [
    SceneSpec {
        id: 1,
        award_code: 1,
        award_ids: &[11, 12],
        stock_control: false,
        token: false,
    },
    SceneSpec {
        id: 2,
        award_code: 2,
        award_ids: &[21, 22, 23],
        stock_control: true,
        token: false,
    },
    SceneSpec {
        id: 3,
        award_code: 3,
        award_ids: &[31],
        stock_control: false,
        token: false,
    },
    SceneSpec {
        id: 4,
        award_code: 2,
        award_ids: &[24],
        stock_control: false,
        token: false,
    },
    SceneSpec {
        id: TOKEN_SCENE_ID,
        award_code: 1,
        award_ids: &[11, 12],
        stock_control: false,
        token: true,
    },
];

#[derive(Clone, Copy, Debug)]
struct CouponSpec {
    template_id: u64,
    batch: &'static str,
    group: Option<&'static str>,
    per_user_limit: u64,
    stock: u64,
}

#[derive(Clone, Copy, Debug)]
enum AwardSpec {
    Cash { max_cents: u64 },
    Coupon(CouponSpec),
    Pendant { pendant_id: u64 },
}

const AWARDS: [(u64, AwardSpec); 7] = [
    (11, AwardSpec::Cash { max_cents: 1000 }),
    (12, AwardSpec::Cash { max_cents: 50 }),
    (
        21,
        AwardSpec::Coupon(CouponSpec {
            template_id: 701,
            batch: "b1",
            group: Some("g"),
            per_user_limit: 2,
            stock: 3,
        }),
    ),
    (
        22,
        AwardSpec::Coupon(CouponSpec {
            template_id: 702,
            batch: "b2",
            group: Some("g"),
            per_user_limit: 1,
            stock: 2,
        }),
    ),
    (
        23,
        AwardSpec::Coupon(CouponSpec {
            template_id: 703,
            batch: "b3",
            group: None,
            per_user_limit: 1,
            stock: 2,
        }),
    ),
    (
        24,
        AwardSpec::Coupon(CouponSpec {
            template_id: 704,
            batch: "b4",
            group: None,
            per_user_limit: 2,
            stock: 1,
        }),
    ),
    (31, AwardSpec::Pendant { pendant_id: 5 }),
];

/// Every award id of the tree and one that is nowhere.
const AWARD_IDS_ANY: [u64; 8] = [11, 12, 21, 22, 23, 24, 31, 99];

fn scene(id: u64) -> Option<&'static SceneSpec> {
    SCENES.iter().find(|s| s.id == id)
}

fn award(id: u64) -> Option<&'static AwardSpec> {
    AWARDS
        .iter()
        .find(|(award_id, _)| *award_id == id)
        .map(|(_, spec)| spec)
}

fn child_at(now_ms: u64) -> Option<&'static ChildSpec> {
    CHILDREN
        .iter()
        .find(|c| c.start_ms <= now_ms && now_ms < c.end_ms)
}

// ---- the model ----

/// A parsed order number, the model's own reading of the text.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct OrderKey {
    act_id: u64,
    scene_id: u64,
    rain_id: u64,
    award_code: u64,
    stage: u64,
}

impl OrderKey {
    /// The canonical text (the grammar admits no other spelling of a valid number).
    fn text(&self) -> String {
        format!(
            "{}_{}_{}_{}_{}",
            self.act_id, self.scene_id, self.rain_id, self.award_code, self.stage
        )
    }
}

/// The strict order-number grammar: five `_`-separated plain decimals (no sign, no
/// leading zero), act_id in 1..=i64::MAX, ids in u32, award type 1..=3. A valid
/// text is at most 56 bytes, so the wallet's length limit needs no rule of its own.
fn parse_order_no(text: &str) -> Option<OrderKey> {
    let parts: Vec<&str> = text.split('_').collect();
    let [act, scene_id, rain, code, stage] = parts.as_slice() else {
        return None;
    };
    let number = |part: &str, max: u64| -> Option<u64> {
        let digits = !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit());
        let leading_zero = part.len() > 1 && part.starts_with('0');
        if !digits || leading_zero {
            return None;
        }
        part.parse::<u64>().ok().filter(|n| *n <= max)
    };
    let u32_max = u64::from(u32::MAX);
    let key = OrderKey {
        act_id: number(act, i64::MAX as u64)?,
        scene_id: number(scene_id, u32_max)?,
        rain_id: number(rain, u32_max)?,
        award_code: number(code, u64::from(u8::MAX))?,
        stage: number(stage, u32_max)?,
    };
    (key.act_id != 0 && (1..=3).contains(&key.award_code)).then_some(key)
}

fn valid_withdraw_no(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= WITHDRAW_NO_LEN_MAX
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// What a credit gives; a replay must give exactly this again to be a duplicate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Payload {
    Cash(u64),
    Coupon(u64),
    Pendant(u64),
}

/// (child, order number): the key of a credit and of a token.
type CreditKey = (u64, OrderKey);

/// Where a token's crediting stands in the KV; absent = not yet touched by a worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TokenStatus {
    Processing,
    Success,
}

impl TokenStatus {
    fn code(self) -> u8 {
        match self {
            TokenStatus::Processing => STATUS_PROCESSING,
            TokenStatus::Success => STATUS_SUCCESS,
        }
    }
}

/// An accepted token: what it promises and how far crediting got.
#[derive(Clone, Debug, PartialEq, Eq)]
struct TokenModel {
    act_id: u64,
    award_id: u64,
    amount_cents: u64,
    status: Option<TokenStatus>,
}

/// One ledger account.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct AccountModel {
    credited_cents: u64,
    withdrawn_cents: u64,
}

impl AccountModel {
    fn balance(self) -> u64 {
        self.credited_cents - self.withdrawn_cents
    }
}

/// The switches the cases flip; every other switch stays on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct SwitchModel {
    token_kv: bool,
    force_credit: bool,
}

impl Default for SwitchModel {
    fn default() -> Self {
        Self {
            token_kv: true,
            force_credit: true,
        }
    }
}

/// The credit worker's own memory, lost with the process.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct WorkerModel {
    /// Where the next claim round starts, an index into `CHILDREN`.
    next_child: usize,
    /// When the compensation scan runs next; 0 after a (re)start.
    next_scan_ms: u64,
}

/// A client copy presented with a withdraw, as the model names it; the harness
/// turns it into bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
enum ClientToken {
    /// The client's copy of the token issued for this (child, order).
    Copy { child: u64, order: OrderKey },
    /// That copy with bit `bit` of byte `at % len` flipped.
    Tampered {
        child: u64,
        order: OrderKey,
        at: usize,
        bit: u8,
    },
    /// A token claiming `order` for `amount_cents`, signed with the forger's key.
    Forged {
        child: u64,
        order: OrderKey,
        amount_cents: u64,
    },
    /// One of [`JUNK_TOKENS`].
    Junk(usize),
}

/// A withdraw request and the client copies it presents.
#[derive(Clone, Debug, PartialEq, Eq)]
struct WithdrawCall {
    /// As the wallet takes it, `client_tokens` left empty.
    request: WithdrawRequest,
    /// Resolved into `client_tokens` by the harness.
    copies: Vec<ClientToken>,
}

/// How the model expects a client copy to be refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Refusal {
    /// With exactly this code.
    Code(&'static str),
    /// With any of [`FORGERY_CODES`].
    Forgery,
}

impl Refusal {
    fn admits(self, code: &str) -> bool {
        match self {
            Refusal::Code(expected) => code == expected,
            Refusal::Forgery => FORGERY_CODES.contains(&code),
        }
    }
}

/// The force-credit report a withdraw should carry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct ForceExpect {
    credited: u32,
    already_credited: u32,
    rejected: Vec<(usize, Refusal)>,
}

/// A worker tick's report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct TickExpect {
    claimed: u64,
    credited: u64,
    already_credited: u64,
    conflicts: u64,
    requeued: u64,
    crashed: bool,
}

impl TickExpect {
    fn add(&mut self, other: TickExpect) {
        self.claimed += other.claimed;
        self.credited += other.credited;
        self.already_credited += other.already_credited;
        self.conflicts += other.conflicts;
        self.requeued += other.requeued;
        self.crashed |= other.crashed;
    }

    fn of(report: &TickReport) -> Self {
        Self {
            claimed: report.claimed,
            credited: report.credited,
            already_credited: report.already_credited,
            conflicts: report.conflicts,
            requeued: report.requeued,
            crashed: report.crashed,
        }
    }
}

/// The totals a wallet view should show.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct ViewExpect {
    balance_cents: u64,
    income_cents: u64,
    withdrawn_cents: u64,
    pending_cents: u64,
    pending_tokens: u32,
    complete: bool,
    /// Lines on the first flow page, and whether more follow.
    flow_lines: usize,
    more: bool,
}

impl ViewExpect {
    fn of(view: &WalletView) -> Self {
        Self {
            balance_cents: view.balance_cents,
            income_cents: view.income_cents,
            withdrawn_cents: view.withdrawn_cents,
            pending_cents: view.pending_cents,
            pending_tokens: view.pending_tokens,
            complete: view.complete,
            flow_lines: view.flow.len(),
            more: view.next.is_some(),
        }
    }
}

/// What the model expects beyond the label.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
enum Detail {
    #[default]
    Nothing,
    /// A withdraw's force-credit report (compared when the outcome carries one).
    Force(ForceExpect),
    /// A tick's report.
    Tick(TickExpect),
    /// A drain's reports summed, and how many ticks it took.
    Drain { rounds: usize, total: TickExpect },
    /// A view's totals.
    View(ViewExpect),
}

/// What the model expects of the last step.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Prediction {
    /// `IssueOutcome::label`, `WithdrawOutcome::label`, a rejection code, or the
    /// harness's name for a worker step, view or switch.
    label: &'static str,
    /// (child, act_id) of the account the request reached, when it got that far.
    account: Option<(u64, u64)>,
    /// That account's ledger balance afterwards.
    balance_cents: u64,
    detail: Detail,
}

impl Prediction {
    fn plain(label: &'static str) -> Self {
        Self {
            label,
            account: None,
            balance_cents: 0,
            detail: Detail::Nothing,
        }
    }
}

/// The reference model: what the stores should hold after every step.
#[derive(Clone, Debug, Default)]
struct Model {
    now_ms: u64,
    /// Issue requests sent so far, for replays.
    issue_requests: Vec<IssueRequest>,
    /// Withdraw calls sent so far, for replays.
    withdraw_requests: Vec<WithdrawCall>,
    /// Credited (child, order number) → payload: the ledger's credits, tokens included.
    credits: BTreeMap<CreditKey, Payload>,
    /// (child, act_id) → cash credited and withdrawn.
    accounts: BTreeMap<(u64, u64), AccountModel>,
    /// child → budget cents consumed.
    budget_used: BTreeMap<u64, u64>,
    /// (child, template) → stock consumed (stock-controlled scenes only).
    stock_used: BTreeMap<(u64, u64), u64>,
    /// (child, batch, act_id) → coupons held.
    user_batch: BTreeMap<(u64, &'static str, u64), u64>,
    /// (child, group, act_id) → the batch holding the group.
    group_holds: BTreeMap<(u64, &'static str, u64), &'static str>,
    /// Used (child, withdraw number) → (act_id, cents).
    withdrawals: BTreeMap<(u64, String), (u64, u64)>,
    /// Ledger entries posted.
    entries: usize,
    switches: SwitchModel,
    /// Accepted tokens; the user's server-side list is every token of (child, act_id).
    tokens: BTreeMap<CreditKey, TokenModel>,
    /// child → the pending queue, oldest first.
    queues: BTreeMap<u64, VecDeque<OrderKey>>,
    /// child → claimed tokens and their claim time.
    inflight: BTreeMap<u64, BTreeMap<OrderKey, u64>>,
    worker: WorkerModel,
    /// The prediction for the last transition; `None` after a time step.
    last: Option<Prediction>,
}

impl Model {
    fn initial() -> Self {
        Self {
            now_ms: START_MS,
            ..Self::default()
        }
    }

    fn account(&self, account: (u64, u64)) -> AccountModel {
        self.accounts.get(&account).copied().unwrap_or_default()
    }

    fn balance(&self, account: (u64, u64)) -> u64 {
        self.account(account).balance()
    }

    /// Cents and count of the user's tokens in `child` not yet in the ledger.
    fn unpaid(&self, child: u64, act_id: u64) -> (u64, u32) {
        self.tokens
            .iter()
            .filter(|((c, order), t)| {
                *c == child
                    && t.act_id == act_id
                    && !self.credits.contains_key(&(*c, order.clone()))
            })
            .fold((0, 0), |(cents, n), (_, t)| (cents + t.amount_cents, n + 1))
    }

    /// What the user is owed in `child`: the ledger balance plus unpaid tokens.
    fn owed(&self, child: u64, act_id: u64) -> u64 {
        self.balance((child, act_id)) + self.unpaid(child, act_id).0
    }

    /// Tokens in the pending queue and inflight set of `child`.
    fn backlog(&self, child: u64) -> u64 {
        let queued = self.queues.get(&child).map_or(0, VecDeque::len);
        let inflight = self.inflight.get(&child).map_or(0, BTreeMap::len);
        (queued + inflight) as u64
    }

    fn total_backlog(&self) -> u64 {
        CHILDREN.iter().map(|c| self.backlog(c.id)).sum()
    }

    /// Whether two tokens of one child sit inflight with the same claim time (the KV
    /// would order them by their bytes, which the model does not know).
    fn has_inflight_ties(&self) -> bool {
        self.inflight.values().any(|members| {
            let mut seen = BTreeSet::new();
            members.values().any(|at| !seen.insert(*at))
        })
    }

    /// Whether a crash at `point` now leaves the model able to follow.
    fn crash_is_followable(&self, point: CrashPoint) -> bool {
        let mut after = self.clone();
        after.step(&Transition::WorkerCrash(point));
        !after.has_inflight_ties()
    }

    /// Whether `copy` passes the signature and owner check when `act_id` presents it
    /// (what I7 verifies independently; the child is the wallet's own check).
    fn verifies(&self, copy: &ClientToken, act_id: u64) -> bool {
        match copy {
            ClientToken::Copy { child, order } => self
                .tokens
                .get(&(*child, order.clone()))
                .is_some_and(|t| t.act_id == act_id),
            ClientToken::Tampered { .. } | ClientToken::Forged { .. } | ClientToken::Junk(_) => {
                false
            }
        }
    }

    /// Whether `request` gets as far as force-credit, the only place the wallet
    /// looks at client copies. Elsewhere — force-credit switched off, or the request
    /// turned away before it (no child open, bad withdraw number or amount) — the
    /// wallet answers with an empty refused list, which I7 reads as "accepted a
    /// forged token": a disagreement between the wallet and I7, reported, not
    /// settled here. Until it is, copies that fail verification are sent only where
    /// force-credit runs.
    fn force_credit_runs(&self, request: &WithdrawRequest) -> bool {
        self.switches.force_credit
            && request.activity_id == ACTIVITY_ID
            && child_at(self.now_ms).is_some()
            && valid_withdraw_no(&request.withdraw_no)
            && request.amount_cents > 0
    }

    fn step(&mut self, transition: &Transition) {
        self.last = match transition {
            Transition::AdvanceTime { ms } => {
                self.now_ms += ms;
                None
            }
            Transition::Issue(r)
            | Transition::Replay(r)
            | Transition::ConflictReplay(r)
            | Transition::Malformed(r) => {
                self.issue_requests.push(r.clone());
                Some(self.issue(r))
            }
            Transition::Withdraw(call) | Transition::WithdrawReplay(call) => {
                self.withdraw_requests.push(call.clone());
                Some(self.withdraw(call))
            }
            Transition::Tick { after_ms } => {
                self.now_ms += after_ms;
                let report = self.tick(None);
                Some(Prediction {
                    detail: Detail::Tick(report),
                    ..Prediction::plain("ticked")
                })
            }
            Transition::WorkerCrash(point) => {
                let report = self.tick(Some(*point));
                // The process dies at the point, or after the tick when it never got
                // there; either way a new worker starts with an empty memory.
                self.worker = WorkerModel::default();
                let label = if report.crashed { "crashed" } else { "ticked" };
                Some(Prediction {
                    detail: Detail::Tick(report),
                    ..Prediction::plain(label)
                })
            }
            Transition::Drain => Some(self.drain()),
            Transition::View { act_id } => Some(self.view(*act_id)),
            Transition::SwitchFlip { switch, on } => {
                match switch {
                    Switch::TokenKv => self.switches.token_kv = *on,
                    Switch::ForceCreditOnWithdraw => self.switches.force_credit = *on,
                    other => panic!("the model does not flip {other}"),
                }
                Some(Prediction::plain("switched"))
            }
        };
    }

    /// Validation, then the replay checks, then reservations; the first failing
    /// rule names the outcome, as in `Wallet::issue`.
    fn issue(&mut self, request: &IssueRequest) -> Prediction {
        let Some(order) = parse_order_no(&request.order_no) else {
            return Prediction::plain("malformed_order_no");
        };
        if request.activity_id != ACTIVITY_ID {
            return Prediction::plain("unknown_activity");
        }
        let Some(child) = child_at(self.now_ms) else {
            return Prediction::plain("no_child_open");
        };
        let account = (child.id, order.act_id);
        let label = self.issue_in(child, order, request);
        Prediction {
            label,
            account: Some(account),
            balance_cents: self.balance(account),
            detail: Detail::Nothing,
        }
    }

    fn issue_in(
        &mut self,
        child: &ChildSpec,
        order: OrderKey,
        request: &IssueRequest,
    ) -> &'static str {
        let Some(scene) = scene(order.scene_id) else {
            return "unknown_scene";
        };
        if scene.award_code != order.award_code {
            return "award_type_mismatch";
        }
        let Some(def) = scene
            .award_ids
            .contains(&request.award_id)
            .then(|| award(request.award_id))
            .flatten()
        else {
            return "unknown_award";
        };
        let payload = match (def, request.amount_cents) {
            (AwardSpec::Cash { .. }, 0) => return "zero_amount",
            (AwardSpec::Cash { .. }, n) if n < 0 => return "negative_amount",
            (AwardSpec::Cash { max_cents }, n)
                if n.unsigned_abs() > (*max_cents).min(PER_TXN_CAP_CENTS) =>
            {
                return "amount_over_cap";
            }
            (AwardSpec::Cash { .. }, n) => Payload::Cash(n.unsigned_abs()),
            (_, n) if n != 0 => return "amount_not_allowed",
            (AwardSpec::Coupon(coupon), _) => Payload::Coupon(coupon.template_id),
            (AwardSpec::Pendant { pendant_id }, _) => Payload::Pendant(*pendant_id),
        };
        let credit_key = (child.id, order);
        // A token scene answers a replay from the token record first — also with the
        // token KV switched off, through the passive read — and a token replay must
        // name the same award id and amount.
        if let Some(first) = self.tokens.get(&credit_key).filter(|_| scene.token) {
            let same =
                first.award_id == request.award_id && first.amount_cents == payload_cash(payload);
            return if same { "duplicate" } else { "conflict" };
        }
        // The ledger's replay check compares the award only (cash: the amount).
        if let Some(first) = self.credits.get(&credit_key) {
            return if *first == payload {
                "duplicate"
            } else {
                "conflict"
            };
        }
        let act_id = credit_key.1.act_id;
        match def {
            AwardSpec::Cash { .. } => {
                let amount = payload_cash(payload);
                let used = self.budget_used.entry(child.id).or_default();
                if *used + amount > child.budget_cents {
                    return "budget_exhausted";
                }
                *used += amount;
            }
            AwardSpec::Coupon(coupon) => {
                if let Some(label) = self.take_coupon(child, scene, coupon, act_id) {
                    return label;
                }
            }
            AwardSpec::Pendant { .. } => {}
        }
        if scene.token && self.switches.token_kv {
            let token = TokenModel {
                act_id,
                award_id: request.award_id,
                amount_cents: payload_cash(payload),
                status: None,
            };
            self.queues
                .entry(child.id)
                .or_default()
                .push_back(credit_key.1.clone());
            self.tokens.insert(credit_key, token);
            return "accepted";
        }
        self.post_credit(credit_key, payload);
        "issued"
    }

    fn post_credit(&mut self, key: CreditKey, payload: Payload) {
        self.accounts
            .entry((key.0, key.1.act_id))
            .or_default()
            .credited_cents += payload_cash(payload);
        self.credits.insert(key, payload);
        self.entries += 1;
    }

    /// Group exclusion, then the per-user limit, then stock; `Some(label)` = rejected
    /// and nothing changed.
    fn take_coupon(
        &mut self,
        child: &ChildSpec,
        scene: &SceneSpec,
        coupon: &CouponSpec,
        act_id: u64,
    ) -> Option<&'static str> {
        let group_key = coupon.group.map(|group| (child.id, group, act_id));
        if group_key
            .and_then(|key| self.group_holds.get(&key))
            .is_some_and(|held| *held != coupon.batch)
        {
            return Some("batch_group_taken");
        }
        let batch_key = (child.id, coupon.batch, act_id);
        if self.user_batch.get(&batch_key).copied().unwrap_or(0) + 1 > coupon.per_user_limit {
            return Some("user_batch_limit");
        }
        let stock_key = (child.id, coupon.template_id);
        if scene.stock_control {
            if self.stock_used.get(&stock_key).copied().unwrap_or(0) + 1 > coupon.stock {
                return Some("out_of_stock");
            }
            *self.stock_used.entry(stock_key).or_default() += 1;
        }
        *self.user_batch.entry(batch_key).or_default() += 1;
        if let Some(key) = group_key {
            self.group_holds.insert(key, coupon.batch);
        }
        None
    }

    /// Child by time, withdraw number, amount, then force-credit, then the ledger:
    /// replay check before the balance check, as in `Wallet::withdraw`.
    fn withdraw(&mut self, call: &WithdrawCall) -> Prediction {
        let untouched = |label| Prediction {
            detail: Detail::Force(ForceExpect::default()),
            ..Prediction::plain(label)
        };
        if call.request.activity_id != ACTIVITY_ID {
            return untouched("unknown_activity");
        }
        let Some(child) = child_at(self.now_ms) else {
            return untouched("no_child_open");
        };
        let account = (child.id, call.request.act_id);
        let (label, force) = self.withdraw_in(child, call);
        Prediction {
            label,
            account: Some(account),
            balance_cents: self.balance(account),
            detail: Detail::Force(force),
        }
    }

    fn withdraw_in(
        &mut self,
        child: &ChildSpec,
        call: &WithdrawCall,
    ) -> (&'static str, ForceExpect) {
        let request = &call.request;
        if !valid_withdraw_no(&request.withdraw_no) {
            return ("malformed_withdraw_no", ForceExpect::default());
        }
        let amount = match request.amount_cents {
            0 => return ("zero_amount", ForceExpect::default()),
            n if n < 0 => return ("negative_amount", ForceExpect::default()),
            n => n.unsigned_abs(),
        };
        // Force-credit runs before the ledger looks at the withdraw number, so a
        // replayed or conflicting withdraw still moves pending tokens into the ledger.
        let force = if self.switches.force_credit {
            self.force_credit(child.id, request.act_id, &call.copies)
        } else {
            ForceExpect::default()
        };
        let key = (child.id, request.withdraw_no.clone());
        if let Some(&first) = self.withdrawals.get(&key) {
            return (
                if first == (request.act_id, amount) {
                    "duplicate"
                } else {
                    "conflict"
                },
                force,
            );
        }
        let account = self.accounts.entry((child.id, request.act_id)).or_default();
        if account.balance() < amount {
            return ("insufficient_balance", force);
        }
        account.withdrawn_cents += amount;
        self.withdrawals.insert(key, (request.act_id, amount));
        self.entries += 1;
        ("withdrawn", force)
    }

    /// The user's server-side tokens (token KV on) and the verified client copies,
    /// each order once; credited unless the KV says success or the ledger has it.
    fn force_credit(&mut self, child: u64, act_id: u64, copies: &[ClientToken]) -> ForceExpect {
        let token_kv = self.switches.token_kv;
        let mut report = ForceExpect::default();
        let mut orders: BTreeSet<OrderKey> = BTreeSet::new();
        if token_kv {
            orders.extend(
                self.tokens
                    .iter()
                    .filter(|((c, _), t)| *c == child && t.act_id == act_id)
                    .map(|((_, o), _)| o.clone()),
            );
        }
        // The first position of each credited order among the copies, for conflicts.
        let mut positions: BTreeMap<OrderKey, usize> = BTreeMap::new();
        for (index, copy) in copies.iter().enumerate() {
            let refusal = match copy {
                ClientToken::Copy { child: c, order } => {
                    let owner = self
                        .tokens
                        .get(&(*c, order.clone()))
                        .expect("preconditions: copies name issued tokens")
                        .act_id;
                    if owner != act_id {
                        Some(Refusal::Code("token_wrong_act_id"))
                    } else if *c != child {
                        Some(Refusal::Code("token_wrong_child"))
                    } else {
                        orders.insert(order.clone());
                        positions.entry(order.clone()).or_insert(index);
                        None
                    }
                }
                ClientToken::Tampered { .. } => Some(Refusal::Forgery),
                ClientToken::Forged { .. } => Some(Refusal::Code("token_bad_signature")),
                ClientToken::Junk(k) => Some(Refusal::Code(JUNK_TOKENS[*k].1)),
            };
            if let Some(refusal) = refusal {
                report.rejected.push((index, refusal));
            }
        }
        for order in orders {
            let key = (child, order);
            let token = self
                .tokens
                .get(&key)
                .expect("orders come from the token table")
                .clone();
            if token_kv && token.status == Some(TokenStatus::Success) {
                report.already_credited += 1;
                continue;
            }
            match self.credits.get(&key) {
                Some(first) if *first == Payload::Cash(token.amount_cents) => {
                    report.already_credited += 1
                }
                Some(_) => {
                    if let Some(index) = positions.get(&key.1) {
                        report
                            .rejected
                            .push((*index, Refusal::Code("token_conflict")));
                    }
                    continue;
                }
                None => {
                    self.post_credit(key.clone(), Payload::Cash(token.amount_cents));
                    report.credited += 1;
                }
            }
            if token_kv {
                self.mark_credited(&key);
            }
        }
        report
    }

    /// Status success and out of the inflight set; a queued copy stays queued.
    fn mark_credited(&mut self, key: &CreditKey) {
        if let Some(token) = self.tokens.get_mut(key) {
            token.status = Some(TokenStatus::Success);
        }
        if let Some(members) = self.inflight.get_mut(&key.0) {
            members.remove(&key.1);
        }
    }

    /// One `CreditWorker::tick` at the current time, stopping at `crash`.
    fn tick(&mut self, crash: Option<CrashPoint>) -> TickExpect {
        let mut report = TickExpect::default();
        if self.now_ms >= self.worker.next_scan_ms {
            self.compensate(&mut report);
            self.worker.next_scan_ms = self.now_ms + SCAN_INTERVAL_MS;
        }
        let mut batch: Vec<CreditKey> = Vec::new();
        for step in 0..CHILDREN.len() {
            let want = WORKER_BATCH_MAX - batch.len();
            if want == 0 {
                break;
            }
            let child = CHILDREN[(self.worker.next_child + step) % CHILDREN.len()].id;
            let queue = self.queues.entry(child).or_default();
            let claimed: Vec<OrderKey> = queue.drain(..want.min(queue.len())).collect();
            let inflight = self.inflight.entry(child).or_default();
            for order in claimed {
                inflight.insert(order.clone(), self.now_ms);
                batch.push((child, order));
            }
        }
        self.worker.next_child = (self.worker.next_child + 1) % CHILDREN.len();
        report.claimed = batch.len() as u64;
        if batch.is_empty() {
            return report;
        }
        if crash == Some(CrashPoint::AfterClaim) {
            report.crashed = true;
            return report;
        }
        let mut todo = Vec::new();
        for key in batch {
            let token = self
                .tokens
                .get_mut(&key)
                .expect("queued tokens are accepted tokens");
            if token.status == Some(TokenStatus::Success) {
                self.inflight.entry(key.0).or_default().remove(&key.1);
                report.already_credited += 1;
            } else {
                token.status = Some(TokenStatus::Processing);
                todo.push(key);
            }
        }
        if crash == Some(CrashPoint::AfterMark) {
            report.crashed = true;
            return report;
        }
        if todo.is_empty() {
            return report;
        }
        let mut outcomes = Vec::new();
        for key in &todo {
            let amount = self
                .tokens
                .get(key)
                .expect("todo holds accepted tokens")
                .amount_cents;
            outcomes.push(match self.credits.get(key) {
                Some(first) if *first == Payload::Cash(amount) => "duplicate",
                Some(_) => "conflict",
                None => {
                    self.post_credit(key.clone(), Payload::Cash(amount));
                    "credited"
                }
            });
        }
        if crash == Some(CrashPoint::AfterCredit) {
            report.crashed = true;
            return report;
        }
        for (key, outcome) in todo.iter().zip(outcomes) {
            match outcome {
                "credited" => report.credited += 1,
                "duplicate" => report.already_credited += 1,
                _ => report.conflicts += 1,
            }
            self.mark_credited(key);
        }
        report
    }

    /// The compensation scan: tokens claimed at least the processing timeout ago go
    /// back to their queue unless credited, oldest claim first, child by child.
    fn compensate(&mut self, report: &mut TickExpect) {
        let due_ms = self.now_ms.saturating_sub(PROCESSING_TIMEOUT_MS);
        for child in CHILDREN.iter().map(|c| c.id) {
            let members = self.inflight.entry(child).or_default();
            let mut due: Vec<(u64, OrderKey)> = members
                .iter()
                .filter(|(_, at)| **at <= due_ms)
                .map(|(order, at)| (*at, order.clone()))
                .collect();
            due.sort();
            for (_, order) in due {
                members.remove(&order);
                let status = self
                    .tokens
                    .get(&(child, order.clone()))
                    .and_then(|t| t.status);
                if status != Some(TokenStatus::Success) {
                    self.queues.entry(child).or_default().push_back(order);
                    report.requeued += 1;
                }
            }
        }
    }

    /// Tick until the backlog is 0, moving the clock between ticks (so claims of a
    /// dead worker pass the processing timeout), at most [`DRAIN_ROUNDS_MAX`] ticks.
    fn drain(&mut self) -> Prediction {
        let mut total = TickExpect::default();
        let mut rounds = 0;
        loop {
            rounds += 1;
            total.add(self.tick(None));
            if self.total_backlog() == 0 || rounds == DRAIN_ROUNDS_MAX {
                break;
            }
            self.now_ms += DRAIN_STEP_MS;
        }
        let label = if self.total_backlog() == 0 {
            "drained"
        } else {
            "not_drained"
        };
        Prediction {
            detail: Detail::Drain { rounds, total },
            ..Prediction::plain(label)
        }
    }

    /// The wallet page: ledger totals plus the tokens not yet in the ledger, which
    /// only the token KV knows about.
    fn view(&self, act_id: u64) -> Prediction {
        let Some(child) = child_at(self.now_ms) else {
            return Prediction::plain("no_child_open");
        };
        let account = self.account((child.id, act_id));
        let (pending_cents, pending_tokens) = if self.switches.token_kv {
            self.unpaid(child.id, act_id)
        } else {
            (0, 0)
        };
        // The flow: credited cash, withdrawals and pending tokens (coupons and
        // pendants are no cash lines).
        let cash_credits = self
            .credits
            .iter()
            .filter(|((c, order), payload)| {
                *c == child.id && order.act_id == act_id && payload_cash(**payload) > 0
            })
            .count();
        let withdrawals = self
            .withdrawals
            .iter()
            .filter(|((c, _), (act, _))| *c == child.id && *act == act_id)
            .count();
        let lines = cash_credits + withdrawals + pending_tokens as usize;
        let view = ViewExpect {
            balance_cents: account.balance() + pending_cents,
            income_cents: account.credited_cents + pending_cents,
            withdrawn_cents: account.withdrawn_cents,
            pending_cents,
            pending_tokens,
            complete: self.switches.token_kv,
            flow_lines: lines.min(VIEW_PAGE_LIMIT),
            more: lines > VIEW_PAGE_LIMIT,
        };
        Prediction {
            label: "viewed",
            account: Some((child.id, act_id)),
            balance_cents: account.balance(),
            detail: Detail::View(view),
        }
    }

    /// The KV counters the wallet must hold, zeros left out.
    fn counters(&self) -> BTreeMap<String, i64> {
        let budget = self
            .budget_used
            .iter()
            .map(|(child, n)| (keys::budget(*child), *n));
        let stock = self
            .stock_used
            .iter()
            .map(|((child, template), n)| (keys::stock(*child, *template), *n));
        let batch = self
            .user_batch
            .iter()
            .map(|((child, batch, act_id), n)| (keys::user_batch(*child, batch, *act_id), *n));
        budget
            .chain(stock)
            .chain(batch)
            .filter(|(_, n)| *n != 0)
            .map(|(key, n)| {
                (
                    key,
                    i64::try_from(n).expect("model counters stay far below i64::MAX"),
                )
            })
            .collect()
    }

    /// (child, act_id) → (credited, withdrawn), empty accounts left out.
    fn account_rows(&self) -> BTreeMap<(u64, u64), (u64, u64)> {
        self.accounts
            .iter()
            .filter(|(_, a)| **a != AccountModel::default())
            .map(|(key, a)| (*key, (a.credited_cents, a.withdrawn_cents)))
            .collect()
    }
}

fn payload_cash(payload: Payload) -> u64 {
    match payload {
        Payload::Cash(cents) => cents,
        Payload::Coupon(_) | Payload::Pendant(_) => 0,
    }
}

/// One step of a case. Requests are raw, as the wallet takes them.
#[derive(Clone, Debug)]
enum Transition {
    /// A fresh award request, mostly well formed.
    Issue(IssueRequest),
    /// An exact copy of an earlier award request.
    Replay(IssueRequest),
    /// An earlier order number with another amount or award id.
    ConflictReplay(IssueRequest),
    /// An order number with a defect (or a valid edge case), or an unknown activity.
    Malformed(IssueRequest),
    /// A withdraw request, maybe with client copies; numbers come from a small set so they collide.
    Withdraw(WithdrawCall),
    /// An exact copy of an earlier withdraw call.
    WithdrawReplay(WithdrawCall),
    /// Move the clock forward; may cross into the next child or past the last.
    AdvanceTime { ms: u64 },
    /// Wait `after_ms` (a worker's tick interval, varied), then one tick of the credit worker.
    Tick { after_ms: u64 },
    /// A tick that dies at the point (if it gets there), then a new worker.
    WorkerCrash(CrashPoint),
    /// Tick (and move the clock) until no token is pending or inflight.
    Drain,
    /// The user opens the wallet page.
    View { act_id: u64 },
    /// Flip a degradation switch.
    SwitchFlip { switch: Switch, on: bool },
}

// ---- generators ----

/// Amounts for award 11 (cap 1000): mostly large, so budgets run out.
fn cash_amount() -> impl Strategy<Value = i64> {
    prop_oneof![1 => -3..=0i64, 2 => 1..=200i64, 6 => 201..=1000i64, 1 => 1001..=1100i64]
}

/// Amounts for award 11 in the token scene: mostly small, so several tokens fit a budget.
fn token_cash_amount() -> impl Strategy<Value = i64> {
    prop_oneof![1 => -2..=0i64, 6 => 1..=300i64, 2 => 301..=1000i64, 1 => 1001..=1100i64]
}

/// Amounts for award 12 (cap 50): mostly within its cap.
fn small_cash_amount() -> impl Strategy<Value = i64> {
    prop_oneof![1 => -3..=0i64, 8 => 1..=50i64, 1 => 51..=60i64]
}

fn no_cash_amount() -> impl Strategy<Value = i64> {
    prop_oneof![18 => Just(0i64), 1 => -2..=-1i64, 1 => 1..=5i64]
}

fn issue_request() -> impl Strategy<Value = IssueRequest> {
    let scene_id = prop_oneof![
        4 => Just(1u64),
        6 => Just(2),
        1 => Just(3),
        1 => Just(4),
        1 => Just(5),
        8 => Just(TOKEN_SCENE_ID),
    ];
    let wrong_type = prop_oneof![19 => Just(None), 1 => (1..=3u64).prop_map(Some)];
    let foreign_award =
        prop_oneof![19 => Just(None), 1 => select(AWARD_IDS_ANY.to_vec()).prop_map(Some)];
    let amounts = (
        cash_amount(),
        small_cash_amount(),
        no_cash_amount(),
        token_cash_amount(),
    );
    (
        1..=4u64,
        scene_id,
        0..=2u64,
        0..=1u64,
        wrong_type,
        any::<Index>(),
        foreign_award,
        amounts,
    )
        .prop_map(
            |(
                act_id,
                scene_id,
                rain_id,
                stage,
                wrong_type,
                pick,
                foreign_award,
                (cash, small_cash, no_cash, token_cash),
            )| {
                let spec = scene(scene_id);
                let award_code = wrong_type.unwrap_or_else(|| spec.map_or(1, |s| s.award_code));
                let award_id =
                    foreign_award.unwrap_or_else(|| spec.map_or(11, |s| *pick.get(s.award_ids)));
                let amount_cents = match award(award_id) {
                    Some(AwardSpec::Cash { max_cents }) if *max_cents < PER_TXN_CAP_CENTS => {
                        small_cash
                    }
                    Some(AwardSpec::Cash { .. }) if spec.is_some_and(|s| s.token) => token_cash,
                    Some(AwardSpec::Cash { .. }) => cash,
                    _ => no_cash,
                };
                IssueRequest {
                    app_id: 1,
                    activity_id: ACTIVITY_ID,
                    order_no: format!("{act_id}_{scene_id}_{rain_id}_{award_code}_{stage}"),
                    award_id,
                    amount_cents,
                }
            },
        )
}

/// A well-formed token-scene award, so cases build backlogs worth crediting,
/// across children too.
fn token_request() -> impl Strategy<Value = IssueRequest> {
    let award = prop_oneof![3 => (Just(11u64), 1..=300i64), 1 => (Just(12u64), 1..=50i64)];
    (1..=4u64, 0..=2u64, 0..=1u64, award).prop_map(
        |(act_id, rain_id, stage, (award_id, amount_cents))| IssueRequest {
            app_id: 1,
            activity_id: ACTIVITY_ID,
            order_no: format!("{act_id}_{TOKEN_SCENE_ID}_{rain_id}_1_{stage}"),
            award_id,
            amount_cents,
        },
    )
}

const MALFORMED_ORDER_NOS: &[&str] = &[
    "",
    "_",
    "1_1_0_1",
    "1_1_0_1_0_0",
    "01_1_0_1_0",
    "1_01_0_1_0",
    "1_1_00_1_0",
    "0_1_0_1_0",
    "1_1_0_0_0",
    "1_1_0_4_0",
    "1_1_0_256_0",
    "1_1_x_1_0",
    "1_1_0_1_0 ",
    " 1_1_0_1_0",
    "+1_1_0_1_0",
    "-1_1_0_1_0",
    "1__0_1_0",
    "1_1_0_1_",
    "1_1_0_1_\u{661}",
    "9223372036854775808_1_0_1_0",
    "18446744073709551616_1_0_1_0",
    "1_4294967296_0_1_0",
    "1_1_0_1_4294967296",
    "1-1-0-1-0",
];

/// Texts at the edge of the grammar that do parse.
const EDGE_ORDER_NOS: &[&str] = &[
    "9223372036854775807_1_0_1_0",
    "1_1_4294967295_1_4294967295",
    "2_2_0_2_0",
    "3_4_0_2_0",
    "4_3_0_3_0",
    "1_6_0_1_0",
];

fn malformed_request() -> impl Strategy<Value = IssueRequest> {
    let order_no = prop_oneof![
        6 => select(MALFORMED_ORDER_NOS).prop_map(str::to_owned),
        1 => Just("1".repeat(105)),
        2 => select(EDGE_ORDER_NOS).prop_map(str::to_owned),
    ];
    let activity_id = prop_oneof![9 => Just(ACTIVITY_ID), 1 => Just(1u64)];
    (
        activity_id,
        order_no,
        select(AWARD_IDS_ANY.to_vec()),
        prop_oneof![Just(0i64), cash_amount()],
    )
        .prop_map(
            |(activity_id, order_no, award_id, amount_cents)| IssueRequest {
                app_id: 1,
                activity_id,
                order_no,
                award_id,
                amount_cents,
            },
        )
}

fn conflict_replay(sent: Vec<IssueRequest>) -> impl Strategy<Value = IssueRequest> {
    let change = prop_oneof![
        cash_amount().prop_map(|amount| (Some(amount), None)),
        select(AWARD_IDS_ANY.to_vec()).prop_map(|award_id| (None, Some(award_id))),
    ];
    (select(sent), change).prop_map(|(mut request, (amount, award_id))| {
        // An amount on a coupon or pendant only hits validation; another award id is
        // the conflict worth trying there.
        let cash = matches!(award(request.award_id), Some(AwardSpec::Cash { .. }));
        match (amount, award_id) {
            (Some(amount), _) if cash => request.amount_cents = amount,
            (_, Some(award_id)) => request.award_id = award_id,
            (Some(_), None) => request.award_id = if request.award_id == 21 { 22 } else { 21 },
            (None, None) => {}
        }
        request
    })
}

const WITHDRAW_NOS: [&str; 4] = ["w0", "w1", "w2", "w3"];

fn plain_withdraw(act_id: u64, withdraw_no: String, amount_cents: i64) -> WithdrawCall {
    let request = WithdrawRequest {
        activity_id: ACTIVITY_ID,
        act_id,
        withdraw_no,
        amount_cents,
        client_tokens: Vec::new(),
    };
    WithdrawCall {
        request,
        copies: Vec::new(),
    }
}

fn withdraw_request() -> impl Strategy<Value = WithdrawCall> {
    let odd_nos = vec![
        String::new(),
        "w 1".to_owned(),
        "w.1".to_owned(),
        "w/1".to_owned(),
        "w\u{e9}".to_owned(),
        "x".repeat(WITHDRAW_NO_LEN_MAX + 1),
        "x".repeat(WITHDRAW_NO_LEN_MAX),
        "A-b_9".to_owned(),
    ];
    let withdraw_no = prop_oneof![12 => select(WITHDRAW_NOS.to_vec()).prop_map(str::to_owned), 1 => select(odd_nos)];
    let amount = prop_oneof![1 => -2..=0i64, 4 => 1..=100i64, 3 => 101..=600i64];
    (1..=4u64, withdraw_no, amount)
        .prop_map(|(act_id, withdraw_no, amount)| plain_withdraw(act_id, withdraw_no, amount))
}

/// Cents to ask for: `percent` of what is owed, rounded up; a little when nothing is.
fn share_of(owed: u64, percent: u64) -> i64 {
    let cents = if owed == 0 {
        percent
    } else {
        (owed * percent).div_ceil(100)
    };
    i64::try_from(cents).expect("balances stay far below i64::MAX")
}

/// A withdrawal by a user owed money in the open child, mostly within what is owed.
fn funded_withdraw(funded: Vec<(u64, u64)>) -> impl Strategy<Value = WithdrawCall> {
    let withdraw_no = select(WITHDRAW_NOS.to_vec()).prop_map(str::to_owned);
    (select(funded), withdraw_no, 1..=110u64).prop_map(|((act_id, owed), withdraw_no, percent)| {
        plain_withdraw(act_id, withdraw_no, share_of(owed, percent))
    })
}

/// What withdraws with client copies can draw on, taken from the model.
#[derive(Clone, Debug)]
struct TokenPool {
    /// The child open now.
    child: u64,
    /// Every accepted token, any user, any child.
    all: Vec<(u64, OrderKey)>,
    /// Users holding a token in the open child.
    holders: Vec<u64>,
    /// act_id → its tokens in the open child.
    own: BTreeMap<u64, Vec<(u64, OrderKey)>>,
    /// act_id → what it is owed in the open child.
    owed: BTreeMap<u64, u64>,
    /// Whether force-credit runs; when it does not, only verifiable copies are sent.
    force_credit: bool,
}

impl TokenPool {
    fn of(state: &Model) -> Option<Self> {
        let child = child_at(state.now_ms)?.id;
        if state.tokens.is_empty() {
            return None;
        }
        let all: Vec<(u64, OrderKey)> = state.tokens.keys().cloned().collect();
        let mut own: BTreeMap<u64, Vec<(u64, OrderKey)>> = BTreeMap::new();
        for ((c, order), token) in &state.tokens {
            if *c == child {
                own.entry(token.act_id)
                    .or_default()
                    .push((*c, order.clone()));
            }
        }
        let holders = own.keys().copied().collect();
        let owed = (1..=4u64)
            .map(|act_id| (act_id, state.owed(child, act_id)))
            .collect();
        Some(Self {
            child,
            all,
            holders,
            own,
            owed,
            force_credit: state.switches.force_credit,
        })
    }

    /// Copies a client may present: mostly its own, sometimes another user's or
    /// another child's, a tampered one, a forgery or junk; repeats happen.
    fn copies(&self, act_id: u64) -> BoxedStrategy<Vec<ClientToken>> {
        let copy = |(child, order): (u64, OrderKey)| ClientToken::Copy { child, order };
        let own = self.own.get(&act_id).cloned().unwrap_or_default();
        if !self.force_credit {
            // See `Model::force_credit_runs`.
            return match own.is_empty() {
                true => Just(Vec::new()).boxed(),
                false => {
                    prop::collection::vec(select(own).prop_map(copy), 0..=CLIENT_COPIES_MAX).boxed()
                }
            };
        }
        let child = self.child;
        let fresh = OrderKey {
            act_id,
            scene_id: TOKEN_SCENE_ID,
            rain_id: 9,
            award_code: 1,
            stage: 0,
        };
        let mut claims: Vec<OrderKey> = own.iter().map(|(_, order)| order.clone()).collect();
        claims.push(fresh);
        let forged = (select(claims), 1..=1000u64).prop_map(move |(order, amount_cents)| {
            ClientToken::Forged {
                child,
                order,
                amount_cents,
            }
        });
        let mut arms: Vec<(u32, BoxedStrategy<ClientToken>)> = vec![
            (1, forged.boxed()),
            (
                1,
                (0..JUNK_TOKENS.len()).prop_map(ClientToken::Junk).boxed(),
            ),
            (2, select(self.all.clone()).prop_map(copy).boxed()),
            (
                1,
                (select(self.all.clone()), 0..512usize, 0..8u8)
                    .prop_map(|((child, order), at, bit)| ClientToken::Tampered {
                        child,
                        order,
                        at,
                        bit,
                    })
                    .boxed(),
            ),
        ];
        if !own.is_empty() {
            arms.push((6, select(own).prop_map(copy).boxed()));
        }
        prop::collection::vec(Union::new_weighted(arms), 0..=CLIENT_COPIES_MAX).boxed()
    }

    fn withdraw(self) -> BoxedStrategy<WithdrawCall> {
        let act_ids = if self.holders.is_empty() {
            (1..=4u64).boxed()
        } else {
            prop_oneof![4 => select(self.holders.clone()), 1 => 1..=4u64].boxed()
        };
        act_ids
            .prop_flat_map(move |act_id| {
                let owed = self.owed.get(&act_id).copied().unwrap_or(0);
                let withdraw_no = select(WITHDRAW_NOS.to_vec()).prop_map(str::to_owned);
                (self.copies(act_id), withdraw_no, 1..=110u64).prop_map(
                    move |(copies, withdraw_no, percent)| WithdrawCall {
                        copies,
                        ..plain_withdraw(act_id, withdraw_no, share_of(owed, percent))
                    },
                )
            })
            .boxed()
    }
}

fn advance_ms() -> impl Strategy<Value = u64> {
    // Mostly within a window (and past the processing timeout), sometimes into the
    // next child, rarely past the last.
    prop_oneof![7 => 0..=2_500u64, 3 => 4_000..=6_000u64, 1 => 14_000..=16_000u64]
}

/// How long a tick waits first: often not at all, often less than the scan
/// interval (so scans are skipped), sometimes around the processing timeout.
fn tick_after_ms() -> impl Strategy<Value = u64> {
    prop_oneof![
        3 => Just(0u64),
        4 => 1..=2 * SCAN_INTERVAL_MS,
        1 => PROCESSING_TIMEOUT_MS - SCAN_INTERVAL_MS..=PROCESSING_TIMEOUT_MS + SCAN_INTERVAL_MS,
    ]
}

fn switch_flip(now: SwitchModel) -> impl Strategy<Value = Transition> {
    let switch = select(vec![Switch::TokenKv, Switch::ForceCreditOnWithdraw]);
    // Mostly a real flip, sometimes setting what is already set.
    (switch, prop::bool::weighted(0.85)).prop_map(move |(switch, flip)| {
        let current = if switch == Switch::TokenKv {
            now.token_kv
        } else {
            now.force_credit
        };
        Transition::SwitchFlip {
            switch,
            on: current != flip,
        }
    })
}

/// The reference state machine over [`Model`].
#[derive(Debug)]
struct ModelMachine;

impl ReferenceStateMachine for ModelMachine {
    type State = Model;
    type Transition = Transition;

    fn init_state() -> BoxedStrategy<Model> {
        Just(Model::initial()).boxed()
    }

    fn transitions(state: &Model) -> BoxedStrategy<Transition> {
        let mut arms: Vec<(u32, BoxedStrategy<Transition>)> = vec![
            (10, issue_request().prop_map(Transition::Issue).boxed()),
            (4, token_request().prop_map(Transition::Issue).boxed()),
            (4, withdraw_request().prop_map(Transition::Withdraw).boxed()),
            (
                2,
                advance_ms()
                    .prop_map(|ms| Transition::AdvanceTime { ms })
                    .boxed(),
            ),
            (
                1,
                malformed_request().prop_map(Transition::Malformed).boxed(),
            ),
            (1, switch_flip(state.switches).boxed()),
            (
                1,
                (1..=4u64)
                    .prop_map(|act_id| Transition::View { act_id })
                    .boxed(),
            ),
        ];
        if !state.issue_requests.is_empty() {
            arms.push((
                3,
                select(state.issue_requests.clone())
                    .prop_map(Transition::Replay)
                    .boxed(),
            ));
            arms.push((
                2,
                conflict_replay(state.issue_requests.clone())
                    .prop_map(Transition::ConflictReplay)
                    .boxed(),
            ));
        }
        let funded: Vec<(u64, u64)> = child_at(state.now_ms)
            .map(|child| {
                (1..=4u64)
                    .map(|act_id| (act_id, state.owed(child.id, act_id)))
                    .filter(|(_, owed)| *owed > 0)
                    .collect()
            })
            .unwrap_or_default();
        if !funded.is_empty() {
            arms.push((
                3,
                funded_withdraw(funded)
                    .prop_map(Transition::Withdraw)
                    .boxed(),
            ));
        }
        if !state.withdraw_requests.is_empty() {
            arms.push((
                1,
                select(state.withdraw_requests.clone())
                    .prop_map(Transition::WithdrawReplay)
                    .boxed(),
            ));
        }
        if !state.tokens.is_empty() {
            let holders: Vec<u64> = state.tokens.values().map(|t| t.act_id).collect();
            arms.push((
                3,
                tick_after_ms()
                    .prop_map(|after_ms| Transition::Tick { after_ms })
                    .boxed(),
            ));
            arms.push((1, Just(Transition::Drain).boxed()));
            arms.push((
                2,
                select(holders)
                    .prop_map(|act_id| Transition::View { act_id })
                    .boxed(),
            ));
            let points: Vec<CrashPoint> = [
                CrashPoint::AfterClaim,
                CrashPoint::AfterMark,
                CrashPoint::AfterCredit,
            ]
            .into_iter()
            .filter(|point| state.crash_is_followable(*point))
            .collect();
            if !points.is_empty() {
                // A crash with nothing to claim is a plain restart: worth less.
                let queued = state.queues.values().any(|q| !q.is_empty());
                arms.push((
                    if queued { 4 } else { 1 },
                    select(points).prop_map(Transition::WorkerCrash).boxed(),
                ));
            }
            if state.inflight.values().any(|members| !members.is_empty()) {
                // Let the claims of a dead worker reach the processing timeout, and
                // step around it by less than the scan interval.
                let near = PROCESSING_TIMEOUT_MS - SCAN_INTERVAL_MS
                    ..=PROCESSING_TIMEOUT_MS + SCAN_INTERVAL_MS;
                arms.push((
                    2,
                    near.prop_map(|ms| Transition::AdvanceTime { ms }).boxed(),
                ));
                arms.push((
                    1,
                    (1..SCAN_INTERVAL_MS)
                        .prop_map(|ms| Transition::AdvanceTime { ms })
                        .boxed(),
                ));
            }
        }
        if let Some(pool) = TokenPool::of(state) {
            arms.push((5, pool.withdraw().prop_map(Transition::Withdraw).boxed()));
        }
        Union::new_weighted(arms).boxed()
    }

    /// What shrinking must keep true: copies name tokens that were issued, copies
    /// that fail verification go only where force-credit runs (see
    /// [`Model::force_credit_runs`]), and no crash leaves a tie the model cannot
    /// order (see the module docs).
    fn preconditions(state: &Model, transition: &Transition) -> bool {
        match transition {
            Transition::Withdraw(call) | Transition::WithdrawReplay(call) => {
                let issued = call.copies.iter().all(|copy| match copy {
                    ClientToken::Copy { child, order }
                    | ClientToken::Tampered { child, order, .. } => {
                        state.tokens.contains_key(&(*child, order.clone()))
                    }
                    ClientToken::Forged { .. } | ClientToken::Junk(_) => true,
                });
                let act_id = call.request.act_id;
                issued
                    && (call.copies.iter().all(|c| state.verifies(c, act_id))
                        || state.force_credit_runs(&call.request))
            }
            Transition::WorkerCrash(point) => state.crash_is_followable(*point),
            _ => true,
        }
    }

    fn apply(mut state: Model, transition: &Transition) -> Model {
        state.step(transition);
        state
    }
}

// ---- the system under test ----

/// Which ledger the wallet runs on.
trait Backend {
    /// For `reference::ledger::open`; each open is a fresh, empty ledger.
    const LEDGER_URL: &'static str;
}

#[derive(Debug)]
struct MemoryLedgerBackend;

impl Backend for MemoryLedgerBackend {
    const LEDGER_URL: &'static str = "memory";
}

#[derive(Debug)]
struct SqliteLedgerBackend;

impl Backend for SqliteLedgerBackend {
    const LEDGER_URL: &'static str = "sqlite::memory:";
}

/// What the wallet showed beyond the label.
#[derive(Debug)]
enum Observed {
    Nothing,
    /// `None` when the outcome carries no force-credit report (a withdraw replay).
    Force(Option<ForceCredit>),
    Tick(TickReport),
    Drain {
        rounds: usize,
        total: TickExpect,
    },
    View(WalletView),
}

/// One answer of the system under test.
#[derive(Debug)]
struct Answer {
    label: &'static str,
    /// The full outcome, for failure messages.
    shown: String,
    observed: Observed,
}

impl Answer {
    fn new(label: &'static str, shown: String, observed: Observed) -> Self {
        Self {
            label,
            shown,
            observed,
        }
    }
}

/// The real wallet, its credit worker, its clock, the client's token copies and
/// everything answered so far.
struct Sut {
    // Declared before `runtime` so the stores drop first.
    wallet: Wallet,
    worker: CreditWorker,
    /// Signs forgeries; the wallet does not trust it.
    forger: KeyRing,
    /// (child, order text) → the token bytes the wallet handed out.
    copies: BTreeMap<(u64, String), Vec<u8>>,
    clock: Arc<ManualClock>,
    history: History,
    steps: usize,
    runtime: tokio::runtime::Runtime,
}

fn start_worker(wallet: &Wallet) -> CreditWorker {
    CreditWorker::for_wallet(wallet, worker_config()).expect("the test wallet has token keys")
}

impl Sut {
    fn new(ledger_url: &str, start_ms: u64) -> Self {
        let runtime = runtime();
        let clock = Arc::new(ManualClock::new(start_ms));
        let ledger = runtime
            .block_on(reference::ledger::open(ledger_url))
            .expect("the test ledger opens");
        let kv = Arc::new(MemoryKv::new(clock.clone()));
        let wallet = Wallet::new(TREE_PARSED.clone(), ledger, kv, clock.clone())
            .with_keys(Arc::new(KeyRing::dev(KEY_SEED)));
        let worker = start_worker(&wallet);
        let forger = KeyRing::dev(FORGER_SEED);
        Self {
            wallet,
            worker,
            forger,
            copies: BTreeMap::new(),
            clock,
            history: History::default(),
            steps: 0,
            runtime,
        }
    }

    /// Carry out one step; `None` for a time step.
    fn send(&mut self, transition: &Transition) -> Option<Answer> {
        let at_ms = self.clock.now_ms();
        Some(match transition {
            Transition::AdvanceTime { ms } => {
                self.clock.advance(*ms);
                return None;
            }
            Transition::Issue(r)
            | Transition::Replay(r)
            | Transition::ConflictReplay(r)
            | Transition::Malformed(r) => {
                // The test stores live in this process; an operating error is a bug worth a panic.
                let outcome = self
                    .runtime
                    .block_on(self.wallet.issue(r))
                    .expect("no operating error");
                if let IssueOutcome::Accepted { token } | IssueOutcome::DuplicateToken { token } =
                    &outcome
                {
                    self.copies
                        .entry((token.child_id, token.order_no.to_string()))
                        .or_insert_with(|| token.bytes.clone());
                }
                let answer =
                    Answer::new(outcome.label(), format!("{outcome:?}"), Observed::Nothing);
                self.history.events.push(Event::Issue {
                    at_ms,
                    request: r.clone(),
                    outcome,
                });
                answer
            }
            Transition::Withdraw(call) | Transition::WithdrawReplay(call) => {
                let request = self.resolve(call);
                let outcome = self
                    .runtime
                    .block_on(self.wallet.withdraw(&request))
                    .expect("no operating error");
                let force = match &outcome {
                    WithdrawOutcome::Withdrawn { force, .. }
                    | WithdrawOutcome::Rejected { force, .. } => Some(force.clone()),
                    WithdrawOutcome::Duplicate { .. } | WithdrawOutcome::Conflict { .. } => None,
                };
                let answer = Answer::new(
                    outcome.label(),
                    format!("{outcome:?}"),
                    Observed::Force(force),
                );
                self.history.events.push(Event::Withdraw {
                    at_ms,
                    request,
                    outcome,
                });
                answer
            }
            Transition::Tick { after_ms } => {
                self.clock.advance(*after_ms);
                let report = self.tick();
                Answer::new(
                    if report.crashed { "crashed" } else { "ticked" },
                    format!("{report:?}"),
                    Observed::Tick(report),
                )
            }
            Transition::WorkerCrash(point) => {
                self.worker.crash_at(*point);
                let report = self.tick();
                if report.crashed {
                    self.history.events.push(Event::WorkerCrash {
                        at_ms,
                        point: *point,
                    });
                }
                // The process is gone (at the point, or right after the tick).
                self.worker = start_worker(&self.wallet);
                Answer::new(
                    if report.crashed { "crashed" } else { "ticked" },
                    format!("{report:?}"),
                    Observed::Tick(report),
                )
            }
            Transition::Drain => self.drain(),
            Transition::View { act_id } => {
                let view = self.runtime.block_on(self.wallet.view(
                    ACTIVITY_ID,
                    *act_id,
                    None,
                    VIEW_PAGE_LIMIT,
                ));
                match view.expect("no operating error") {
                    Err(reason) => {
                        Answer::new(reason.code(), format!("{reason:?}"), Observed::Nothing)
                    }
                    Ok(view) => {
                        let answer = Answer::new(
                            "viewed",
                            format!("{view:?}"),
                            Observed::View(view.clone()),
                        );
                        self.history.events.push(Event::View {
                            at_ms,
                            activity_id: ACTIVITY_ID,
                            act_id: *act_id,
                            view,
                        });
                        answer
                    }
                }
            }
            Transition::SwitchFlip { switch, on } => {
                self.wallet.switches().set(*switch, *on);
                self.history.events.push(Event::Switch {
                    at_ms,
                    switch: *switch,
                    on: *on,
                });
                Answer::new("switched", format!("{switch} {on}"), Observed::Nothing)
            }
        })
    }

    fn tick(&mut self) -> TickReport {
        self.runtime
            .block_on(self.worker.tick(self.clock.now_ms()))
            .expect("no operating error")
    }

    fn drain(&mut self) -> Answer {
        let mut total = TickExpect::default();
        let mut rounds = 0;
        let backlog = loop {
            rounds += 1;
            total.add(TickExpect::of(&self.tick()));
            let backlog = self
                .runtime
                .block_on(self.worker.backlog())
                .expect("no operating error");
            if backlog == 0 || rounds == DRAIN_ROUNDS_MAX {
                break backlog;
            }
            self.clock.advance(DRAIN_STEP_MS);
        };
        let label = if backlog == 0 {
            "drained"
        } else {
            "not_drained"
        };
        Answer::new(
            label,
            format!("{rounds} tick(s), {total:?}, backlog {backlog}"),
            Observed::Drain { rounds, total },
        )
    }

    /// The request with the client copies as bytes.
    fn resolve(&self, call: &WithdrawCall) -> WithdrawRequest {
        let issued = |child: u64, order: &OrderKey| -> Vec<u8> {
            let copy = self.copies.get(&(child, order.text()));
            copy.cloned().unwrap_or_else(|| {
                panic!(
                    "the harness is out of step: no token for child {child} order {}",
                    order.text()
                )
            })
        };
        let client_tokens = call
            .copies
            .iter()
            .map(|copy| match copy {
                ClientToken::Copy { child, order } => issued(*child, order),
                ClientToken::Tampered {
                    child,
                    order,
                    at,
                    bit,
                } => {
                    let mut bytes = issued(*child, order);
                    let index = at % bytes.len();
                    bytes[index] ^= 1 << bit;
                    bytes
                }
                ClientToken::Forged {
                    child,
                    order,
                    amount_cents,
                } => {
                    let facts = TokenFacts {
                        app_id: 1,
                        act_id: order.act_id,
                        activity_id: ACTIVITY_ID,
                        child_id: *child,
                        order_no: order
                            .text()
                            .parse()
                            .expect("the model names valid order numbers"),
                        award_id: 11,
                        amount_cents: *amount_cents,
                        open_time_ms: self.clock.now_ms(),
                    };
                    self.forger.sign(&facts).expect("a dev key ring signs")
                }
                ClientToken::Junk(k) => JUNK_TOKENS[*k].0.to_vec(),
            })
            .collect();
        WithdrawRequest {
            client_tokens,
            ..call.request.clone()
        }
    }

    fn balance(&self, (child_id, act_id): (u64, u64)) -> u64 {
        let account = self.runtime.block_on(
            self.wallet
                .ledger()
                .account(AccountKey { child_id, act_id }),
        );
        account.expect("the ledger reads an account").balance_cents
    }

    fn final_state(&self) -> FinalState {
        let kv = self.wallet.kv().as_ref();
        let keys = self.wallet.keys().map(Arc::as_ref);
        let children = CHILDREN.iter().map(|c| c.id);
        let read = async {
            FinalState::read(self.wallet.ledger().as_ref(), kv)
                .await?
                .with_tokens(kv, children, keys)
                .await
        };
        self.runtime.block_on(read).expect("the stores read back")
    }

    /// The KV status of every token the model knows.
    fn token_statuses(&self, model: &Model) -> BTreeMap<(u64, String), Option<u8>> {
        let kv = self.wallet.kv();
        model
            .tokens
            .keys()
            .map(|(child, order)| {
                let status = self
                    .runtime
                    .block_on(kv.status(&keys::token_status(*child, &order.text())));
                (
                    (*child, order.text()),
                    status.expect("the KV reads a status"),
                )
            })
            .collect()
    }
}

/// Compare what the wallet showed beyond the label with the model's expectation.
fn compare_detail(step: usize, transition: &Transition, answer: &Answer, expected: &Detail) {
    let at = format!("step {step} {transition:?}");
    match (expected, &answer.observed) {
        (Detail::Nothing, Observed::Nothing) | (Detail::Force(_), Observed::Force(None)) => {}
        (Detail::Force(expect), Observed::Force(Some(force))) => {
            assert_eq!(
                (force.credited, force.already_credited),
                (expect.credited, expect.already_credited),
                "{at}: force-credit (credited, already credited) in {}",
                answer.shown
            );
            let indices: Vec<usize> = force.rejected_tokens.iter().map(|(i, _)| *i).collect();
            let expected_indices: Vec<usize> = expect.rejected.iter().map(|(i, _)| *i).collect();
            assert_eq!(
                indices, expected_indices,
                "{at}: refused client copies in {}",
                answer.shown
            );
            for ((index, code), (_, refusal)) in force.rejected_tokens.iter().zip(&expect.rejected)
            {
                assert!(
                    refusal.admits(code),
                    "{at}: copy #{index} refused as {code}, expected {refusal:?}"
                );
            }
        }
        (Detail::Tick(expect), Observed::Tick(report)) => {
            assert_eq!(
                TickExpect::of(report),
                *expect,
                "{at}: tick report (left: worker, right: model)"
            );
            assert_eq!(
                report.failed_attempts, 0,
                "{at}: the ledger never fails here"
            );
        }
        (
            Detail::Drain { rounds, total },
            Observed::Drain {
                rounds: got_rounds,
                total: got_total,
            },
        ) => {
            assert_eq!(
                (got_rounds, got_total),
                (rounds, total),
                "{at}: drain (left: worker, right: model)"
            );
        }
        (Detail::View(expect), Observed::View(view)) => {
            assert_eq!(
                ViewExpect::of(view),
                *expect,
                "{at}: view totals (left: wallet, right: model)"
            );
        }
        (expected, _) => panic!(
            "{at}: the harness is out of step: {} vs {expected:?}",
            answer.shown
        ),
    }
}

/// The state-machine test of the wallet on ledger backend `B`.
#[derive(Debug)]
struct WalletTest<B>(PhantomData<B>);

impl<B: Backend> StateMachineTest for WalletTest<B> {
    type SystemUnderTest = Sut;
    type Reference = ModelMachine;

    fn init_test(model: &Model) -> Sut {
        Sut::new(B::LEDGER_URL, model.now_ms)
    }

    fn apply(mut sut: Sut, model: &Model, transition: Transition) -> Sut {
        sut.steps += 1;
        let step = sut.steps;
        let answer = sut.send(&transition);
        let (answer, expected) = match (answer, &model.last) {
            (None, None) => return sut,
            (Some(answer), Some(expected)) => (answer, expected),
            (answer, expected) => {
                panic!(
                    "step {step} {transition:?}: the harness is out of step: {answer:?} vs {expected:?}"
                )
            }
        };
        assert_eq!(
            answer.label, expected.label,
            "step {step} {transition:?}: the wallet answered {}",
            answer.shown
        );
        if let Some(account) = expected.account {
            assert_eq!(
                sut.balance(account),
                expected.balance_cents,
                "step {step} {transition:?}: balance of (child, user) {account:?} after {}",
                answer.shown
            );
        }
        compare_detail(step, &transition, &answer, &expected.detail);
        sut
    }

    fn check_invariants(sut: &Sut, model: &Model) {
        let step = sut.steps;
        assert_eq!(
            sut.clock.now_ms(),
            model.now_ms,
            "step {step}: wallet clock and model clock"
        );
        let state = sut.final_state();
        let backlog: BTreeMap<u64, u64> = CHILDREN
            .iter()
            .map(|c| (c.id, model.backlog(c.id)))
            .collect();
        assert_eq!(
            state.token_backlog, backlog,
            "step {step}: token backlog by child (left: KV, right: model)"
        );
        let mut violations = check_all(sut.wallet.tree(), &sut.history, &state);
        // I4 expects a quiet end state and reports any token backlog. Mid-case the
        // backlog is legitimate whenever the model predicts one (and it was just
        // compared, child by child), so exactly that one report is set aside; the
        // rest of I4 (every answer posted as told, every token credited as accepted,
        // nothing credited unasked) still runs. Drains and the end of every case
        // check with a backlog of 0, where nothing is set aside. If I4 words the
        // report differently one day, this filter stops matching and the test fails
        // loudly rather than passing quietly.
        if model.total_backlog() > 0 {
            violations.retain(|v| {
                !(v.invariant == Invariant::I4Reconciliation && v.culprit == "token backlog")
            });
        }
        let listed: Vec<String> = violations.iter().map(ToString::to_string).collect();
        assert!(
            violations.is_empty(),
            "step {step}: {} violation(s):\n{}",
            violations.len(),
            listed.join("\n")
        );
        let counters: BTreeMap<String, i64> = state
            .counters
            .into_iter()
            .filter(|(_, n)| *n != 0)
            .collect();
        assert_eq!(
            counters,
            model.counters(),
            "step {step}: KV counters (left: wallet, right: model)"
        );
        let accounts: BTreeMap<(u64, u64), (u64, u64)> = state
            .ledger
            .accounts
            .iter()
            .filter(|a| a.credited_cents != 0 || a.withdrawn_cents != 0)
            .map(|a| {
                (
                    (a.key.child_id, a.key.act_id),
                    (a.credited_cents, a.withdrawn_cents),
                )
            })
            .collect();
        assert_eq!(
            accounts,
            model.account_rows(),
            "step {step}: (credited, withdrawn) by account (left: ledger, right: model)"
        );
        assert_eq!(
            state.ledger.entries.len(),
            model.entries,
            "step {step}: ledger entries"
        );
        let expected_statuses: BTreeMap<(u64, String), Option<u8>> = model
            .tokens
            .iter()
            .map(|((child, order), t)| ((*child, order.text()), t.status.map(TokenStatus::code)))
            .collect();
        assert_eq!(
            sut.token_statuses(model),
            expected_statuses,
            "step {step}: token statuses (left: KV, right: model)"
        );
    }

    /// Every case ends quiet: drain, then every checker with nothing set aside.
    fn teardown(sut: Sut, model: Model) {
        let model = ModelMachine::apply(model, &Transition::Drain);
        assert_eq!(
            model.total_backlog(),
            0,
            "the model drains every case within {DRAIN_ROUNDS_MAX} ticks"
        );
        let sut = Self::apply(sut, &model, Transition::Drain);
        Self::check_invariants(&sut, &model);
    }
}

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    ProptestConfig {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("regressions"))),
        ..ProptestConfig::default()
    }
}

prop_state_machine! {
    #![proptest_config(config())]

    #[test]
    fn wallet_agrees_with_the_model_on_the_memory_ledger(sequential 1..40 => WalletTest<MemoryLedgerBackend>);

    #[test]
    fn wallet_agrees_with_the_model_on_the_sqlite_ledger(sequential 1..40 => WalletTest<SqliteLedgerBackend>);
}

// ---- the model itself: not trivially permissive, and the same tree as the TOML ----

fn issue(order_no: &str, award_id: u64, amount_cents: i64) -> Transition {
    Transition::Issue(IssueRequest {
        app_id: 1,
        activity_id: ACTIVITY_ID,
        order_no: order_no.to_owned(),
        award_id,
        amount_cents,
    })
}

fn withdraw(act_id: u64, withdraw_no: &str, amount_cents: i64) -> Transition {
    Transition::Withdraw(plain_withdraw(act_id, withdraw_no.to_owned(), amount_cents))
}

fn withdraw_with(
    act_id: u64,
    withdraw_no: &str,
    amount_cents: i64,
    copies: Vec<ClientToken>,
) -> Transition {
    Transition::Withdraw(WithdrawCall {
        copies,
        ..plain_withdraw(act_id, withdraw_no.to_owned(), amount_cents)
    })
}

fn advance(ms: u64) -> Transition {
    Transition::AdvanceTime { ms }
}

fn flip(switch: Switch, on: bool) -> Transition {
    Transition::SwitchFlip { switch, on }
}

fn crash(point: CrashPoint) -> Transition {
    Transition::WorkerCrash(point)
}

fn view(act_id: u64) -> Transition {
    Transition::View { act_id }
}

fn order(text: &str) -> OrderKey {
    parse_order_no(text).expect("test order numbers are valid")
}

fn copy(child: u64, order_no: &str) -> ClientToken {
    ClientToken::Copy {
        child,
        order: order(order_no),
    }
}

fn forged(child: u64, order_no: &str, amount_cents: u64) -> ClientToken {
    ClientToken::Forged {
        child,
        order: order(order_no),
        amount_cents,
    }
}

fn tampered(child: u64, order_no: &str, at: usize) -> ClientToken {
    ClientToken::Tampered {
        child,
        order: order(order_no),
        at,
        bit: 0,
    }
}

/// A tick without waiting.
const TICK: Transition = Transition::Tick { after_ms: 0 };

fn run_model(steps: &[Transition]) -> Model {
    steps.iter().fold(Model::initial(), ModelMachine::apply)
}

/// The model's label for the last of `steps` must be `expected`.
fn check(steps: &[Transition], expected: &str) {
    let label = run_model(steps).last.map(|p| p.label);
    assert_eq!(label, Some(expected), "{steps:#?}");
}

#[test]
fn the_model_predicts_rejections_limits_and_replays() {
    check(
        &[
            issue("1_2_0_2_0", 23, 0),
            issue("2_2_0_2_0", 23, 0),
            issue("3_2_0_2_0", 23, 0),
        ],
        "out_of_stock",
    );
    check(
        &[
            issue("1_2_0_2_0", 21, 0),
            issue("2_2_0_2_0", 21, 0),
            issue("3_2_0_2_0", 21, 0),
            issue("4_2_0_2_0", 21, 0),
        ],
        "out_of_stock",
    );
    check(
        &[issue("1_2_0_2_0", 23, 0), issue("1_2_1_2_0", 23, 0)],
        "user_batch_limit",
    );
    check(
        &[issue("1_2_0_2_0", 21, 0), issue("1_2_1_2_0", 22, 0)],
        "batch_group_taken",
    );
    check(
        &[issue("1_2_0_2_0", 22, 0), issue("1_2_1_2_0", 22, 0)],
        "user_batch_limit",
    );
    check(
        &[issue("1_2_0_2_0", 21, 0), issue("1_2_1_2_0", 21, 0)],
        "issued",
    );
    check(
        &[issue("1_4_0_2_0", 24, 0), issue("2_4_0_2_0", 24, 0)],
        "issued",
    );
    check(
        &[
            issue("1_4_0_2_0", 24, 0),
            issue("1_4_1_2_0", 24, 0),
            issue("1_4_2_2_0", 24, 0),
        ],
        "user_batch_limit",
    );
    check(
        &[issue("1_1_0_1_0", 11, 1000), issue("2_1_0_1_0", 11, 501)],
        "budget_exhausted",
    );
    check(
        &[issue("1_1_0_1_0", 11, 1000), issue("2_1_0_1_0", 11, 500)],
        "issued",
    );
    check(&[issue("1_1_0_1_0", 11, 1001)], "amount_over_cap");
    check(&[issue("1_1_0_1_0", 12, 51)], "amount_over_cap");
    check(&[issue("1_1_0_1_0", 11, 0)], "zero_amount");
    check(&[issue("1_1_0_1_0", 11, -1)], "negative_amount");
    check(&[issue("1_2_0_2_0", 21, 1)], "amount_not_allowed");
    check(&[issue("1_3_0_3_0", 31, -1)], "amount_not_allowed");
    check(&[issue("1_5_0_1_0", 11, 1)], "unknown_scene");
    check(&[issue("1_1_0_2_0", 11, 1)], "award_type_mismatch");
    check(&[issue("1_1_0_1_0", 21, 1)], "unknown_award");
    check(&[issue("01_1_0_1_0", 11, 1)], "malformed_order_no");
    check(
        &[issue("1_1_0_1_0", 11, 40), issue("1_1_0_1_0", 11, 40)],
        "duplicate",
    );
    check(
        &[issue("1_1_0_1_0", 11, 40), issue("1_1_0_1_0", 12, 40)],
        "duplicate",
    );
    check(
        &[issue("1_1_0_1_0", 11, 40), issue("1_1_0_1_0", 11, 41)],
        "conflict",
    );
    check(
        &[issue("1_2_0_2_0", 21, 0), issue("1_2_0_2_0", 23, 0)],
        "conflict",
    );
    check(
        &[issue("1_1_0_1_0", 11, 40), issue("1_1_0_1_0", 11, 2000)],
        "amount_over_cap",
    );
    check(
        &[
            issue("1_2_0_2_0", 23, 0),
            issue("2_2_0_2_0", 23, 0),
            issue("1_2_0_2_0", 23, 0),
        ],
        "duplicate",
    );
    check(
        &[
            issue("1_1_0_1_0", 11, 40),
            advance(5_000),
            issue("1_1_0_1_0", 11, 40),
        ],
        "issued",
    );
    check(
        &[
            issue("1_1_0_1_0", 11, 1000),
            issue("2_1_0_1_0", 11, 500),
            advance(5_000),
            issue("3_1_0_1_0", 11, 1000),
        ],
        "issued",
    );
    check(
        &[advance(15_000), issue("1_1_0_1_0", 11, 40)],
        "no_child_open",
    );
    check(
        &[advance(15_000), issue("1_1_0_1", 11, 40)],
        "malformed_order_no",
    );
    check(&[advance(14_999), issue("1_1_0_1_0", 11, 40)], "issued");
    check(&[withdraw(1, "w0", 1)], "insufficient_balance");
    check(
        &[issue("1_1_0_1_0", 11, 40), withdraw(1, "w0", 40)],
        "withdrawn",
    );
    check(
        &[issue("1_1_0_1_0", 11, 40), withdraw(1, "w0", 41)],
        "insufficient_balance",
    );
    check(
        &[
            issue("1_1_0_1_0", 11, 40),
            withdraw(1, "w0", 30),
            withdraw(1, "w0", 30),
        ],
        "duplicate",
    );
    check(
        &[
            issue("1_1_0_1_0", 11, 40),
            withdraw(1, "w0", 30),
            withdraw(1, "w0", 20),
        ],
        "conflict",
    );
    check(
        &[
            issue("1_1_0_1_0", 11, 40),
            withdraw(1, "w0", 30),
            withdraw(2, "w0", 30),
        ],
        "conflict",
    );
    check(
        &[
            issue("1_1_0_1_0", 11, 40),
            withdraw(1, "w0", 30),
            advance(5_000),
            withdraw(1, "w0", 30),
        ],
        "insufficient_balance",
    );
    check(&[withdraw(1, "w 0", 1)], "malformed_withdraw_no");
    check(&[withdraw(1, "", 1)], "malformed_withdraw_no");
    check(&[withdraw(1, "w0", 0)], "zero_amount");
    check(&[withdraw(1, "w0", -1)], "negative_amount");
    check(&[advance(20_000), withdraw(1, "w 0", 1)], "no_child_open");
}

#[test]
fn the_model_predicts_token_answers_worker_steps_and_switches() {
    let token = issue("1_6_0_1_0", 11, 300);
    check(std::slice::from_ref(&token), "accepted");
    check(&[token.clone(), token.clone()], "duplicate");
    check(&[token.clone(), issue("1_6_0_1_0", 11, 301)], "conflict");
    // A token replay must name the same award id; the ledger's replay check does not.
    check(
        &[issue("1_6_0_1_0", 11, 30), issue("1_6_0_1_0", 12, 30)],
        "conflict",
    );
    check(
        &[issue("1_6_0_1_0", 11, 300), issue("1_6_0_1_0", 12, 300)],
        "amount_over_cap",
    );
    check(
        &[token.clone(), Transition::Drain, token.clone()],
        "duplicate",
    );
    check(
        &[issue("1_6_0_1_0", 11, 1000), issue("2_6_0_1_0", 11, 501)],
        "budget_exhausted",
    );
    check(
        &[issue("1_1_0_1_0", 11, 1000), issue("2_6_0_1_0", 11, 501)],
        "budget_exhausted",
    );
    check(
        &[issue("1_6_0_1_0", 11, 1000), issue("2_1_0_1_0", 11, 500)],
        "issued",
    );
    check(&[token.clone(), advance(5_000), token.clone()], "accepted");
    check(&[issue("1_6_0_1_0", 1, 30)], "unknown_award");
    // Token KV off: the sync path, but an accepted token still gets its first answer.
    check(&[flip(Switch::TokenKv, false), token.clone()], "issued");
    check(
        &[token.clone(), flip(Switch::TokenKv, false), token.clone()],
        "duplicate",
    );
    check(
        &[
            token.clone(),
            flip(Switch::TokenKv, false),
            issue("1_6_0_1_0", 11, 299),
        ],
        "conflict",
    );
    check(
        &[
            flip(Switch::TokenKv, false),
            token.clone(),
            flip(Switch::TokenKv, true),
            token.clone(),
        ],
        "duplicate",
    );
    check(
        &[
            flip(Switch::TokenKv, false),
            issue("1_6_0_1_0", 11, 30),
            flip(Switch::TokenKv, true),
            issue("1_6_0_1_0", 12, 30),
        ],
        "duplicate",
    );
    check(&[flip(Switch::TokenKv, false)], "switched");
    // The worker, crashes and drains.
    check(&[TICK], "ticked");
    check(&[token.clone(), TICK], "ticked");
    check(&[token.clone(), crash(CrashPoint::AfterCredit)], "crashed");
    check(&[crash(CrashPoint::AfterClaim)], "ticked");
    check(
        &[token.clone(), TICK, crash(CrashPoint::AfterMark)],
        "ticked",
    );
    check(
        &[
            token.clone(),
            crash(CrashPoint::AfterClaim),
            Transition::Drain,
        ],
        "drained",
    );
    // Views and withdraws see pending tokens, unless a switch degrades them.
    check(&[token.clone(), view(1)], "viewed");
    check(&[advance(15_000), view(1)], "no_child_open");
    check(&[token.clone(), withdraw(1, "w0", 300)], "withdrawn");
    check(
        &[token.clone(), withdraw(1, "w0", 301)],
        "insufficient_balance",
    );
    check(
        &[
            token.clone(),
            flip(Switch::ForceCreditOnWithdraw, false),
            withdraw(1, "w0", 300),
        ],
        "insufficient_balance",
    );
    check(
        &[
            token.clone(),
            flip(Switch::ForceCreditOnWithdraw, false),
            TICK,
            withdraw(1, "w0", 300),
        ],
        "withdrawn",
    );
    check(
        &[
            token.clone(),
            flip(Switch::TokenKv, false),
            withdraw(1, "w0", 300),
        ],
        "insufficient_balance",
    );
    check(
        &[
            token.clone(),
            flip(Switch::TokenKv, false),
            withdraw_with(1, "w0", 300, vec![copy(1, "1_6_0_1_0")]),
        ],
        "withdrawn",
    );
    check(
        &[
            token.clone(),
            flip(Switch::TokenKv, false),
            withdraw_with(1, "w0", 300, vec![forged(1, "1_6_0_1_0", 300)]),
        ],
        "insufficient_balance",
    );
    check(
        &[
            token.clone(),
            flip(Switch::TokenKv, false),
            withdraw_with(1, "w0", 300, vec![tampered(1, "1_6_0_1_0", 7)]),
        ],
        "insufficient_balance",
    );
    check(
        &[
            token.clone(),
            advance(5_000),
            flip(Switch::TokenKv, false),
            withdraw_with(1, "w0", 300, vec![copy(1, "1_6_0_1_0")]),
        ],
        "insufficient_balance",
    );
    check(
        &[
            token.clone(),
            withdraw(1, "w0", 100),
            withdraw(1, "w0", 100),
        ],
        "duplicate",
    );
}

#[test]
fn the_model_tracks_balances_and_counters() {
    let model = run_model(&[
        issue("1_1_0_1_0", 11, 700),
        issue("1_2_0_2_0", 21, 0),
        withdraw(1, "w0", 300),
        issue("1_2_1_2_0", 22, 0),
    ]);
    assert_eq!(
        model
            .last
            .as_ref()
            .map(|p| (p.label, p.account, p.balance_cents)),
        Some(("batch_group_taken", Some((1, 1)), 400))
    );
    let expected: BTreeMap<String, i64> = [
        ("budget:1", 700),
        ("stock:1:701", 1),
        ("user-batch:1:b1:1", 1),
    ]
    .map(|(k, n)| (k.to_owned(), n))
    .into();
    assert_eq!(model.counters(), expected);
    assert_eq!(model.entries, 3);
}

fn last_detail(model: &Model) -> Detail {
    model
        .last
        .as_ref()
        .map(|p| p.detail.clone())
        .unwrap_or_default()
}

/// The token story of the scripted test below, step by step in the model.
fn token_story() -> Vec<Transition> {
    vec![
        issue("1_6_0_1_0", 11, 300),
        issue("2_6_0_1_0", 12, 40),
        crash(CrashPoint::AfterCredit),
        view(1),
        advance(PROCESSING_TIMEOUT_MS),
        TICK,
        issue("1_6_1_1_0", 11, 100),
        withdraw_with(
            1,
            "w0",
            500,
            vec![
                tampered(1, "1_6_0_1_0", 40),
                copy(1, "2_6_0_1_0"),
                forged(1, "1_6_1_1_0", 999),
                ClientToken::Junk(0),
                copy(1, "1_6_1_1_0"),
                copy(1, "1_6_1_1_0"),
                copy(1, "1_6_0_1_0"),
            ],
        ),
        withdraw(1, "w1", 400),
        view(2),
        flip(Switch::ForceCreditOnWithdraw, false),
        withdraw(2, "w2", 40),
        Transition::Drain,
        withdraw(2, "w2", 40),
    ]
}

#[test]
fn the_model_tracks_tokens_through_crashes_forgeries_and_switches() {
    let story = token_story();
    let at = |n: usize| run_model(&story[..n]);
    // Both tokens claimed in one batch; the crash comes after the ledger took them.
    let crashed = at(3);
    let expect = TickExpect {
        claimed: 2,
        crashed: true,
        ..TickExpect::default()
    };
    assert_eq!(last_detail(&crashed), Detail::Tick(expect));
    assert_eq!(
        crashed.account_rows(),
        [((1, 1), (300, 0)), ((1, 2), (40, 0))].into()
    );
    assert!(
        crashed
            .tokens
            .values()
            .all(|t| t.status == Some(TokenStatus::Processing))
    );
    assert_eq!(crashed.backlog(1), 2, "still inflight");
    let shown = ViewExpect {
        balance_cents: 300,
        income_cents: 300,
        complete: true,
        flow_lines: 1,
        ..ViewExpect::default()
    };
    assert_eq!(
        last_detail(&at(4)),
        Detail::View(shown),
        "credited, so not pending, and shown once"
    );
    // Past the timeout the scan re-queues both; the ledger has them already.
    let expect = TickExpect {
        claimed: 2,
        already_credited: 2,
        requeued: 2,
        ..TickExpect::default()
    };
    assert_eq!(last_detail(&at(6)), Detail::Tick(expect));
    assert_eq!(at(6).total_backlog(), 0);
    // Forgeries are refused, each order counted once, and user 1 is owed 400.
    let refused = vec![
        (0, Refusal::Forgery),
        (1, Refusal::Code("token_wrong_act_id")),
        (2, Refusal::Code("token_bad_signature")),
        (3, Refusal::Code("token_malformed")),
    ];
    let force = ForceExpect {
        credited: 1,
        already_credited: 1,
        rejected: refused,
    };
    let withdrawn = at(8);
    assert_eq!(
        withdrawn.last.as_ref().map(|p| (p.label, p.balance_cents)),
        Some(("insufficient_balance", 400))
    );
    assert_eq!(last_detail(&withdrawn), Detail::Force(force));
    assert_eq!(at(9).last.as_ref().map(|p| p.label), Some("withdrawn"));
    let shown = ViewExpect {
        balance_cents: 40,
        income_cents: 40,
        complete: true,
        flow_lines: 1,
        ..ViewExpect::default()
    };
    assert_eq!(last_detail(&at(10)), Detail::View(shown));
    // Force-credit off: only credited money can leave; a drain credits it.
    let end = at(story.len());
    assert_eq!(
        at(12).last.as_ref().map(|p| p.label),
        Some("withdrawn"),
        "user 2's token was credited at step 6"
    );
    assert_eq!(end.last.as_ref().map(|p| p.label), Some("duplicate"));
    assert_eq!(end.total_backlog(), 0);
}

#[test]
fn the_model_reads_order_numbers_like_the_wallet() {
    let too_long = "1".repeat(105);
    for text in MALFORMED_ORDER_NOS
        .iter()
        .copied()
        .chain([too_long.as_str()])
    {
        assert_eq!(parse_order_no(text), None, "{text:?} must not parse");
        assert!(
            text.parse::<reference::OrderNo>().is_err(),
            "{text:?}: the wallet reads it, the model does not"
        );
    }
    for text in EDGE_ORDER_NOS {
        let parsed = parse_order_no(text).expect("edge cases parse");
        let theirs: reference::OrderNo = text.parse().expect("the wallet reads edge cases too");
        assert_eq!(
            (parsed.act_id, parsed.scene_id, parsed.rain_id, parsed.stage),
            (
                theirs.act_id,
                u64::from(theirs.scene_id),
                u64::from(theirs.rain_id),
                u64::from(theirs.stage)
            )
        );
        assert_eq!(
            parsed.text(),
            theirs.to_string(),
            "the model spells order numbers as the wallet does"
        );
    }
}

#[test]
fn the_model_tables_match_the_toml_tree() {
    let activity = TREE_PARSED
        .activity(ACTIVITY_ID)
        .expect("the activity is configured");
    assert_eq!(activity.per_txn_cap_cents, PER_TXN_CAP_CENTS);
    let children: Vec<_> = activity
        .children
        .iter()
        .map(|c| (c.id, c.start_ms, c.end_ms, c.budget_cents))
        .collect();
    let ours: Vec<_> = CHILDREN
        .iter()
        .map(|c| (c.id, c.start_ms, c.end_ms, c.budget_cents))
        .collect();
    assert_eq!(children, ours);
    let scenes: Vec<_> = activity
        .scenes
        .values()
        .map(|s| {
            let token = s.crediting == Crediting::Token;
            (
                u64::from(s.id),
                u64::from(s.award_type.code()),
                s.award_ids.clone(),
                s.stock_control,
                token,
            )
        })
        .collect();
    let ours: Vec<_> = SCENES
        .iter()
        .map(|s| {
            (
                s.id,
                s.award_code,
                s.award_ids.to_vec(),
                s.stock_control,
                s.token,
            )
        })
        .collect();
    assert_eq!(scenes, ours);
    assert_eq!(activity.awards.len(), AWARDS.len());
    for (award_id, spec) in &AWARDS {
        let def = activity
            .awards
            .get(award_id)
            .expect("every model award is configured");
        let same = match (def, spec) {
            (AwardDef::Cash { max_cents }, AwardSpec::Cash { max_cents: ours }) => {
                max_cents == ours
            }
            (AwardDef::Pendant { pendant_id }, AwardSpec::Pendant { pendant_id: ours }) => {
                pendant_id == ours
            }
            (AwardDef::Coupon(c), AwardSpec::Coupon(ours)) => {
                (
                    c.template_id,
                    c.batch.as_str(),
                    c.group.as_deref(),
                    u64::from(c.per_user_limit),
                    c.stock,
                ) == (
                    ours.template_id,
                    ours.batch,
                    ours.group,
                    ours.per_user_limit,
                    ours.stock,
                )
            }
            _ => false,
        };
        assert!(same, "award {award_id}: tree {def:?}, model {spec:?}");
    }
    assert_eq!(
        AwardType::Coupon.code(),
        2,
        "scene award codes in the model use the order-number codes"
    );
    assert_eq!(
        (
            reference::token::STATUS_PROCESSING,
            reference::token::STATUS_SUCCESS
        ),
        (STATUS_PROCESSING, STATUS_SUCCESS),
        "the seed's token status numbers"
    );
    let worker = reference::worker::WorkerConfig::default();
    assert!(
        WORKER_BATCH_MAX < worker.batch_max,
        "the test worker is smaller than a real one, so ticks leave work"
    );
}

// ---- the harness: it runs a scripted story, and it fails when it should ----

/// Run `steps` through model and wallet on backend `B`, checking after every step.
fn run_harness<B: Backend>(steps: &[Transition]) -> (Model, Sut) {
    let mut model = Model::initial();
    let mut sut = WalletTest::<B>::init_test(&model);
    for step in steps {
        model = ModelMachine::apply(model, step);
        sut = WalletTest::<B>::apply(sut, &model, step.clone());
        WalletTest::<B>::check_invariants(&sut, &model);
    }
    (model, sut)
}

/// The panic message of `f`, which must panic.
fn panic_text(f: impl FnOnce()) -> String {
    let message =
        catch_unwind(AssertUnwindSafe(f)).expect_err("the harness must reject a wrong prediction");
    message
        .downcast_ref::<String>()
        .cloned()
        .unwrap_or_default()
}

#[test]
fn a_scripted_token_story_passes_the_harness_on_both_ledgers() {
    let story = token_story();
    for steps in [&story[..], &story[..7]] {
        let (model, sut) = run_harness::<MemoryLedgerBackend>(steps);
        WalletTest::<MemoryLedgerBackend>::teardown(sut, model);
        let (model, sut) = run_harness::<SqliteLedgerBackend>(steps);
        WalletTest::<SqliteLedgerBackend>::teardown(sut, model);
    }
}

/// The harness must fail when the wallet and the model disagree: feed it a model
/// that forgot the stock already taken, and the step must panic.
#[test]
fn the_harness_fails_when_the_wallet_and_the_model_disagree() {
    let (mut model, sut) =
        run_harness::<MemoryLedgerBackend>(&[issue("1_2_0_2_0", 23, 0), issue("2_2_0_2_0", 23, 0)]);
    let last = issue("3_2_0_2_0", 23, 0);
    model.stock_used.clear();
    model = ModelMachine::apply(model, &last);
    assert_eq!(
        model.last.as_ref().map(|p| p.label),
        Some("issued"),
        "the tampered model must be wrong"
    );
    let text = panic_text(|| drop(WalletTest::<MemoryLedgerBackend>::apply(sut, &model, last)));
    assert!(
        text.contains("out_of_stock"),
        "the failure names the wallet's answer: {text}"
    );
}

/// A model that takes a forged copy for the client's real one (with the token KV
/// off, only client copies can be force-credited) is caught at once.
#[test]
fn the_harness_fails_when_the_model_credits_a_forged_token() {
    let (model, sut) = run_harness::<MemoryLedgerBackend>(&[
        issue("1_6_0_1_0", 11, 300),
        flip(Switch::TokenKv, false),
    ]);
    let real = withdraw_with(1, "w0", 300, vec![copy(1, "1_6_0_1_0")]);
    let forgery = withdraw_with(1, "w0", 300, vec![forged(1, "1_6_0_1_0", 300)]);
    let model = ModelMachine::apply(model, &real);
    assert_eq!(
        model.last.as_ref().map(|p| p.label),
        Some("withdrawn"),
        "the fooled model pays out"
    );
    let text = panic_text(|| {
        drop(WalletTest::<MemoryLedgerBackend>::apply(
            sut, &model, forgery,
        ))
    });
    assert!(
        text.contains("insufficient_balance") && text.contains("token_bad_signature"),
        "{text}"
    );
}

/// A model that thinks the worker died before crediting, when it died after, is
/// caught by the state comparison after the step.
#[test]
fn the_harness_fails_when_the_model_misplaces_a_crash() {
    let (model, sut) = run_harness::<MemoryLedgerBackend>(&[issue("1_6_0_1_0", 11, 300)]);
    let model = ModelMachine::apply(model, &crash(CrashPoint::AfterClaim));
    let text = panic_text(|| {
        let sut =
            WalletTest::<MemoryLedgerBackend>::apply(sut, &model, crash(CrashPoint::AfterCredit));
        WalletTest::<MemoryLedgerBackend>::check_invariants(&sut, &model);
    });
    assert!(
        text.contains("step 2:"),
        "the failure names the step: {text}"
    );
}

/// A model that forgets the pending tokens a view must show is caught.
#[test]
fn the_harness_fails_when_the_model_hides_pending_tokens() {
    let (mut model, sut) = run_harness::<MemoryLedgerBackend>(&[issue("1_6_0_1_0", 11, 300)]);
    model.switches.token_kv = false;
    let model = ModelMachine::apply(model, &view(1));
    let text = panic_text(|| {
        drop(WalletTest::<MemoryLedgerBackend>::apply(
            sut,
            &model,
            view(1),
        ))
    });
    assert!(text.contains("view totals"), "{text}");
}
