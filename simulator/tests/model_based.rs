//! Model-based property tests of the synchronous wallet (`Wallet::issue` and
//! `Wallet::withdraw`) with `proptest-state-machine`.
//!
//! A pure reference model of one small activity tree — three children in
//! consecutive five-second windows, tight budgets, caps, stock, per-user limits and
//! a batch group — predicts the outcome label of every request and the balance of
//! the account it touches. The real wallet, over a real ledger (`memory` and
//! `sqlite::memory:`), a memory KV and a manual clock, must give the same answers,
//! hold the same KV counters and post the same number of entries, and every
//! invariant checker must stay quiet after every step. Failures shrink and are kept
//! in `model_based.regressions` next to this file.
//!
//! The model must never call the code it checks: it knows the tree from its own
//! tables (compared with the TOML by a unit test), parses order numbers itself and
//! borrows only the KV key names from `reference::keys`, which are a storage contract.
//!
//! `PROPTEST_CASES` sets the number of cases per backend (256 when unset).

use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, LazyLock};

use proptest::prelude::*;
use proptest::sample::select;
use proptest::strategy::Union;
use proptest::test_runner::{Config as ProptestConfig, FileFailurePersistence};
use proptest_state_machine::{ReferenceStateMachine, StateMachineTest, prop_state_machine};
use reference::config::AwardDef;
use reference::kv::MemoryKv;
use reference::ledger::AccountKey;
use reference::wallet::{IssueRequest, Wallet, WithdrawRequest};
use reference::{ActivityTree, AwardType, Clock, ManualClock, keys};
use simulator::check::check_all;
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

static TREE_PARSED: LazyLock<Arc<ActivityTree>> =
    LazyLock::new(|| Arc::new(ActivityTree::from_toml_str(TREE, "model_based.rs").expect("the test tree is valid")));

const ACTIVITY_ID: u64 = 2027;
/// 2027-02-01T00:00:00Z, where the first child opens and every case starts.
const START_MS: u64 = 1_801_440_000_000;
const PER_TXN_CAP_CENTS: u64 = 1000;
const WITHDRAW_NO_LEN_MAX: usize = 64;

#[derive(Clone, Copy, Debug)]
struct ChildSpec {
    id: u64,
    start_ms: u64,
    end_ms: u64,
    budget_cents: u64,
}

const CHILDREN: [ChildSpec; 3] = [
    ChildSpec { id: 1, start_ms: START_MS, end_ms: START_MS + 5_000, budget_cents: 1500 },
    ChildSpec { id: 2, start_ms: START_MS + 5_000, end_ms: START_MS + 10_000, budget_cents: 1500 },
    ChildSpec { id: 3, start_ms: START_MS + 10_000, end_ms: START_MS + 15_000, budget_cents: 2000 },
];

#[derive(Clone, Copy, Debug)]
struct SceneSpec {
    id: u64,
    /// The order-number code of the scene's award type.
    award_code: u64,
    award_ids: &'static [u64],
    stock_control: bool,
}

const SCENES: [SceneSpec; 4] = [
    SceneSpec { id: 1, award_code: 1, award_ids: &[11, 12], stock_control: false },
    SceneSpec { id: 2, award_code: 2, award_ids: &[21, 22, 23], stock_control: true },
    SceneSpec { id: 3, award_code: 3, award_ids: &[31], stock_control: false },
    SceneSpec { id: 4, award_code: 2, award_ids: &[24], stock_control: false },
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
        AwardSpec::Coupon(CouponSpec { template_id: 701, batch: "b1", group: Some("g"), per_user_limit: 2, stock: 3 }),
    ),
    (
        22,
        AwardSpec::Coupon(CouponSpec { template_id: 702, batch: "b2", group: Some("g"), per_user_limit: 1, stock: 2 }),
    ),
    (23, AwardSpec::Coupon(CouponSpec { template_id: 703, batch: "b3", group: None, per_user_limit: 1, stock: 2 })),
    (24, AwardSpec::Coupon(CouponSpec { template_id: 704, batch: "b4", group: None, per_user_limit: 2, stock: 1 })),
    (31, AwardSpec::Pendant { pendant_id: 5 }),
];

/// Every award id of the tree and one that is nowhere.
const AWARD_IDS_ANY: [u64; 8] = [11, 12, 21, 22, 23, 24, 31, 99];

fn scene(id: u64) -> Option<&'static SceneSpec> {
    SCENES.iter().find(|s| s.id == id)
}

fn award(id: u64) -> Option<&'static AwardSpec> {
    AWARDS.iter().find(|(award_id, _)| *award_id == id).map(|(_, spec)| spec)
}

fn child_at(now_ms: u64) -> Option<&'static ChildSpec> {
    CHILDREN.iter().find(|c| c.start_ms <= now_ms && now_ms < c.end_ms)
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

/// The strict order-number grammar: five `_`-separated plain decimals (no sign, no
/// leading zero), act_id in 1..=i64::MAX, ids in u32, award type 1..=3. A valid
/// text is at most 56 bytes, so the wallet's length limit needs no rule of its own.
fn parse_order_no(text: &str) -> Option<OrderKey> {
    let parts: Vec<&str> = text.split('_').collect();
    let [act, scene_id, rain, code, stage] = parts.as_slice() else { return None };
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
        && text.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// What a credit gives; a replay must give exactly this again to be a duplicate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Payload {
    Cash(u64),
    Coupon(u64),
    Pendant(u64),
}

/// What the model expects of the last request.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Prediction {
    /// `IssueOutcome::label` / `WithdrawOutcome::label`.
    label: &'static str,
    /// (child, act_id) of the account the request reached, when it got that far.
    account: Option<(u64, u64)>,
    /// That account's balance afterwards.
    balance_cents: u64,
}

/// The reference model: what the stores should hold after every step.
#[derive(Clone, Debug, Default)]
struct Model {
    now_ms: u64,
    /// Issue requests sent so far, for replays.
    issue_requests: Vec<IssueRequest>,
    /// Withdraw requests sent so far, for replays.
    withdraw_requests: Vec<WithdrawRequest>,
    /// Credited (child, order number) → payload.
    credits: BTreeMap<(u64, OrderKey), Payload>,
    /// (child, act_id) → cash balance.
    balances: BTreeMap<(u64, u64), u64>,
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
    /// The prediction for the last transition; `None` after a time step.
    last: Option<Prediction>,
}

impl Model {
    fn initial() -> Self {
        Self { now_ms: START_MS, ..Self::default() }
    }

    fn balance(&self, account: (u64, u64)) -> u64 {
        self.balances.get(&account).copied().unwrap_or(0)
    }

    fn step(&mut self, transition: &Transition) {
        self.last = match transition {
            Transition::AdvanceTime { ms } => {
                self.now_ms += ms;
                None
            }
            Transition::Issue(r) | Transition::Replay(r) | Transition::ConflictReplay(r) | Transition::Malformed(r) => {
                self.issue_requests.push(r.clone());
                Some(self.issue(r))
            }
            Transition::Withdraw(r) | Transition::WithdrawReplay(r) => {
                self.withdraw_requests.push(r.clone());
                Some(self.withdraw(r))
            }
        };
    }

    /// Validation, then the ledger's replay check, then reservations; the first
    /// failing rule names the outcome, as in `Wallet::issue`.
    fn issue(&mut self, request: &IssueRequest) -> Prediction {
        let untouched = |label| Prediction { label, account: None, balance_cents: 0 };
        let Some(order) = parse_order_no(&request.order_no) else { return untouched("malformed_order_no") };
        if request.activity_id != ACTIVITY_ID {
            return untouched("unknown_activity");
        }
        let Some(child) = child_at(self.now_ms) else { return untouched("no_child_open") };
        let account = (child.id, order.act_id);
        let label = self.issue_in(child, order, request);
        Prediction { label, account: Some(account), balance_cents: self.balance(account) }
    }

    fn issue_in(&mut self, child: &ChildSpec, order: OrderKey, request: &IssueRequest) -> &'static str {
        let Some(scene) = scene(order.scene_id) else { return "unknown_scene" };
        if scene.award_code != order.award_code {
            return "award_type_mismatch";
        }
        let Some(def) = scene.award_ids.contains(&request.award_id).then(|| award(request.award_id)).flatten() else {
            return "unknown_award";
        };
        let payload = match (def, request.amount_cents) {
            (AwardSpec::Cash { .. }, 0) => return "zero_amount",
            (AwardSpec::Cash { .. }, n) if n < 0 => return "negative_amount",
            (AwardSpec::Cash { max_cents }, n) if n.unsigned_abs() > (*max_cents).min(PER_TXN_CAP_CENTS) => {
                return "amount_over_cap";
            }
            (AwardSpec::Cash { .. }, n) => Payload::Cash(n.unsigned_abs()),
            (_, n) if n != 0 => return "amount_not_allowed",
            (AwardSpec::Coupon(coupon), _) => Payload::Coupon(coupon.template_id),
            (AwardSpec::Pendant { pendant_id }, _) => Payload::Pendant(*pendant_id),
        };
        let credit_key = (child.id, order);
        if let Some(first) = self.credits.get(&credit_key) {
            return if *first == payload { "duplicate" } else { "conflict" };
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
                *self.balances.entry((child.id, act_id)).or_default() += amount;
            }
            AwardSpec::Coupon(coupon) => {
                if let Some(label) = self.take_coupon(child, scene, coupon, act_id) {
                    return label;
                }
            }
            AwardSpec::Pendant { .. } => {}
        }
        self.credits.insert(credit_key, payload);
        self.entries += 1;
        "issued"
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
        if group_key.and_then(|key| self.group_holds.get(&key)).is_some_and(|held| *held != coupon.batch) {
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

    /// Child by time, withdraw number, amount, then the ledger: replay check before
    /// the balance check, as in `Wallet::withdraw` and both ledgers.
    fn withdraw(&mut self, request: &WithdrawRequest) -> Prediction {
        if request.activity_id != ACTIVITY_ID {
            return Prediction { label: "unknown_activity", account: None, balance_cents: 0 };
        }
        let Some(child) = child_at(self.now_ms) else {
            return Prediction { label: "no_child_open", account: None, balance_cents: 0 };
        };
        let account = (child.id, request.act_id);
        let label = self.withdraw_in(child, request);
        Prediction { label, account: Some(account), balance_cents: self.balance(account) }
    }

    fn withdraw_in(&mut self, child: &ChildSpec, request: &WithdrawRequest) -> &'static str {
        if !valid_withdraw_no(&request.withdraw_no) {
            return "malformed_withdraw_no";
        }
        let amount = match request.amount_cents {
            0 => return "zero_amount",
            n if n < 0 => return "negative_amount",
            n => n.unsigned_abs(),
        };
        let key = (child.id, request.withdraw_no.clone());
        if let Some(&first) = self.withdrawals.get(&key) {
            return if first == (request.act_id, amount) { "duplicate" } else { "conflict" };
        }
        let balance = self.balances.entry((child.id, request.act_id)).or_default();
        if *balance < amount {
            return "insufficient_balance";
        }
        *balance -= amount;
        self.withdrawals.insert(key, (request.act_id, amount));
        self.entries += 1;
        "withdrawn"
    }

    /// The KV counters the wallet must hold, zeros left out.
    fn counters(&self) -> BTreeMap<String, i64> {
        let budget = self.budget_used.iter().map(|(child, n)| (keys::budget(*child), *n));
        let stock = self.stock_used.iter().map(|((child, template), n)| (keys::stock(*child, *template), *n));
        let batch =
            self.user_batch.iter().map(|((child, batch, act_id), n)| (keys::user_batch(*child, batch, *act_id), *n));
        budget
            .chain(stock)
            .chain(batch)
            .filter(|(_, n)| *n != 0)
            .map(|(key, n)| (key, i64::try_from(n).expect("model counters stay far below i64::MAX")))
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
    /// A withdraw request; numbers come from a small set so they collide.
    Withdraw(WithdrawRequest),
    /// An exact copy of an earlier withdraw request.
    WithdrawReplay(WithdrawRequest),
    /// Move the clock forward; may cross into the next child or past the last.
    AdvanceTime { ms: u64 },
}

// ---- generators ----

/// Amounts for award 11 (cap 1000): mostly large, so budgets run out.
fn cash_amount() -> impl Strategy<Value = i64> {
    prop_oneof![1 => -3..=0i64, 2 => 1..=200i64, 6 => 201..=1000i64, 1 => 1001..=1100i64]
}

/// Amounts for award 12 (cap 50): mostly within its cap.
fn small_cash_amount() -> impl Strategy<Value = i64> {
    prop_oneof![1 => -3..=0i64, 8 => 1..=50i64, 1 => 51..=60i64]
}

fn no_cash_amount() -> impl Strategy<Value = i64> {
    prop_oneof![18 => Just(0i64), 1 => -2..=-1i64, 1 => 1..=5i64]
}

fn issue_request() -> impl Strategy<Value = IssueRequest> {
    let scene_id = prop_oneof![5 => Just(1u64), 7 => Just(2), 1 => Just(3), 1 => Just(4), 1 => Just(5)];
    let wrong_type = prop_oneof![19 => Just(None), 1 => (1..=3u64).prop_map(Some)];
    let foreign_award = prop_oneof![19 => Just(None), 1 => select(AWARD_IDS_ANY.to_vec()).prop_map(Some)];
    let amounts = (cash_amount(), small_cash_amount(), no_cash_amount());
    (1..=4u64, scene_id, 0..=2u64, 0..=1u64, wrong_type, any::<prop::sample::Index>(), foreign_award, amounts).prop_map(
        |(act_id, scene_id, rain_id, stage, wrong_type, pick, foreign_award, (cash, small_cash, no_cash))| {
            let spec = scene(scene_id);
            let award_code = wrong_type.unwrap_or_else(|| spec.map_or(1, |s| s.award_code));
            let award_id = foreign_award.unwrap_or_else(|| spec.map_or(11, |s| *pick.get(s.award_ids)));
            let amount_cents = match award(award_id) {
                Some(AwardSpec::Cash { max_cents }) if *max_cents < PER_TXN_CAP_CENTS => small_cash,
                Some(AwardSpec::Cash { .. }) => cash,
                _ => no_cash,
            };
            IssueRequest { app_id: 1,
                activity_id: ACTIVITY_ID,
                order_no: format!("{act_id}_{scene_id}_{rain_id}_{award_code}_{stage}"),
                award_id,
                amount_cents,
            }
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
const EDGE_ORDER_NOS: &[&str] =
    &["9223372036854775807_1_0_1_0", "1_1_4294967295_1_4294967295", "2_2_0_2_0", "3_4_0_2_0", "4_3_0_3_0"];

fn malformed_request() -> impl Strategy<Value = IssueRequest> {
    let order_no = prop_oneof![
        6 => select(MALFORMED_ORDER_NOS).prop_map(str::to_owned),
        1 => Just("1".repeat(105)),
        2 => select(EDGE_ORDER_NOS).prop_map(str::to_owned),
    ];
    let activity_id = prop_oneof![9 => Just(ACTIVITY_ID), 1 => Just(1u64)];
    (activity_id, order_no, select(AWARD_IDS_ANY.to_vec()), prop_oneof![Just(0i64), cash_amount()]).prop_map(
        |(activity_id, order_no, award_id, amount_cents)| IssueRequest { app_id: 1,
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

fn withdraw_request() -> impl Strategy<Value = WithdrawRequest> {
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
    let withdraw_no =
        prop_oneof![12 => select(vec!["w0", "w1", "w2", "w3"]).prop_map(str::to_owned), 1 => select(odd_nos)];
    let amount = prop_oneof![1 => -2..=0i64, 4 => 1..=100i64, 3 => 101..=600i64];
    (1..=4u64, withdraw_no, amount).prop_map(|(act_id, withdraw_no, amount_cents)| WithdrawRequest { client_tokens: Vec::new(),
        activity_id: ACTIVITY_ID,
        act_id,
        withdraw_no,
        amount_cents,
    })
}

/// A withdrawal by a user with money in the open child, mostly within the balance.
fn funded_withdraw(funded: Vec<(u64, u64)>) -> impl Strategy<Value = WithdrawRequest> {
    let withdraw_no = select(vec!["w0", "w1", "w2", "w3"]).prop_map(str::to_owned);
    (select(funded), withdraw_no, 1..=110u64).prop_map(|((act_id, balance), withdraw_no, percent)| {
        let amount = (balance * percent).div_ceil(100);
        WithdrawRequest { client_tokens: Vec::new(),
            activity_id: ACTIVITY_ID,
            act_id,
            withdraw_no,
            amount_cents: i64::try_from(amount).expect("balances stay far below i64::MAX"),
        }
    })
}

fn advance_ms() -> impl Strategy<Value = u64> {
    // Mostly within a window, sometimes into the next child, rarely past the last.
    prop_oneof![7 => 0..=1_500u64, 3 => 4_000..=6_000u64, 1 => 14_000..=16_000u64]
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
            (4, withdraw_request().prop_map(Transition::Withdraw).boxed()),
            (2, advance_ms().prop_map(|ms| Transition::AdvanceTime { ms }).boxed()),
            (1, malformed_request().prop_map(Transition::Malformed).boxed()),
        ];
        if !state.issue_requests.is_empty() {
            arms.push((3, select(state.issue_requests.clone()).prop_map(Transition::Replay).boxed()));
            arms.push((2, conflict_replay(state.issue_requests.clone()).prop_map(Transition::ConflictReplay).boxed()));
        }
        let funded: Vec<(u64, u64)> = child_at(state.now_ms)
            .map(|child| state.balances.range((child.id, 0)..=(child.id, u64::MAX)).filter(|(_, b)| **b > 0))
            .into_iter()
            .flatten()
            .map(|((_, act_id), balance)| (*act_id, *balance))
            .collect();
        if !funded.is_empty() {
            arms.push((3, funded_withdraw(funded).prop_map(Transition::Withdraw).boxed()));
        }
        if !state.withdraw_requests.is_empty() {
            arms.push((1, select(state.withdraw_requests.clone()).prop_map(Transition::WithdrawReplay).boxed()));
        }
        Union::new_weighted(arms).boxed()
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

/// The real wallet, its clock, and everything it answered so far.
struct Sut {
    // Declared before `runtime` so the stores drop first.
    wallet: Wallet,
    clock: Arc<ManualClock>,
    history: History,
    steps: usize,
    runtime: tokio::runtime::Runtime,
}

impl Sut {
    fn new(ledger_url: &str, start_ms: u64) -> Self {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a current-thread runtime builds");
        let clock = Arc::new(ManualClock::new(start_ms));
        let ledger = runtime.block_on(reference::ledger::open(ledger_url)).expect("the test ledger opens");
        let kv = Arc::new(MemoryKv::new(clock.clone()));
        let wallet = Wallet::new(TREE_PARSED.clone(), ledger, kv, clock.clone());
        Self { wallet, clock, history: History::default(), steps: 0, runtime }
    }

    /// Send one request; returns the outcome label and its debug form.
    fn send(&mut self, transition: &Transition) -> Option<(&'static str, String)> {
        let at_ms = self.clock.now_ms();
        let event = match transition {
            Transition::AdvanceTime { ms } => {
                self.clock.advance(*ms);
                return None;
            }
            Transition::Issue(r) | Transition::Replay(r) | Transition::ConflictReplay(r) | Transition::Malformed(r) => {
                // The test stores live in this process; an operating error is a bug worth a panic.
                let outcome = self.runtime.block_on(self.wallet.issue(r)).expect("no operating error");
                Event::Issue { at_ms, request: r.clone(), outcome }
            }
            Transition::Withdraw(r) | Transition::WithdrawReplay(r) => {
                let outcome = self.runtime.block_on(self.wallet.withdraw(r)).expect("no operating error");
                Event::Withdraw { at_ms, request: r.clone(), outcome }
            }
        };
        let answer = match &event {
            Event::Issue { outcome, .. } => (outcome.label(), format!("{outcome:?}")),
            Event::Withdraw { outcome, .. } => (outcome.label(), format!("{outcome:?}")),
            Event::View { .. } | Event::Switch { .. } | Event::WorkerCrash { .. } => unreachable!("not sent"),
        };
        self.history.events.push(event);
        Some(answer)
    }

    fn balance(&self, (child_id, act_id): (u64, u64)) -> u64 {
        let account = self.runtime.block_on(self.wallet.ledger().account(AccountKey { child_id, act_id }));
        account.expect("the ledger reads an account").balance_cents
    }

    fn final_state(&self) -> FinalState {
        let read = FinalState::read(self.wallet.ledger().as_ref(), self.wallet.kv().as_ref());
        self.runtime.block_on(read).expect("the stores read back")
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
        let (label, outcome, expected) = match (answer, &model.last) {
            (None, None) => return sut,
            (Some((label, outcome)), Some(expected)) => (label, outcome, expected),
            (answer, expected) => {
                panic!("step {step} {transition:?}: the harness is out of step: {answer:?} vs {expected:?}")
            }
        };
        assert_eq!(label, expected.label, "step {step} {transition:?}: the wallet answered {outcome}");
        if let Some(account) = expected.account {
            assert_eq!(
                sut.balance(account),
                expected.balance_cents,
                "step {step} {transition:?}: balance of (child, user) {account:?} after {outcome}"
            );
        }
        sut
    }

    fn check_invariants(sut: &Sut, model: &Model) {
        let step = sut.steps;
        assert_eq!(sut.clock.now_ms(), model.now_ms, "step {step}: wallet clock and model clock");
        let state = sut.final_state();
        let violations = check_all(sut.wallet.tree(), &sut.history, &state);
        let listed: Vec<String> = violations.iter().map(ToString::to_string).collect();
        assert!(violations.is_empty(), "step {step}: {} violation(s):\n{}", violations.len(), listed.join("\n"));
        let counters: BTreeMap<String, i64> = state.counters.into_iter().filter(|(_, n)| *n != 0).collect();
        assert_eq!(counters, model.counters(), "step {step}: KV counters (left: wallet, right: model)");
        assert_eq!(state.ledger.entries.len(), model.entries, "step {step}: ledger entries");
    }
}

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(256);
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
    Transition::Issue(IssueRequest { app_id: 1, activity_id: ACTIVITY_ID, order_no: order_no.to_owned(), award_id, amount_cents })
}

fn withdraw(act_id: u64, withdraw_no: &str, amount_cents: i64) -> Transition {
    Transition::Withdraw(WithdrawRequest { client_tokens: Vec::new(),
        activity_id: ACTIVITY_ID,
        act_id,
        withdraw_no: withdraw_no.to_owned(),
        amount_cents,
    })
}

fn advance(ms: u64) -> Transition {
    Transition::AdvanceTime { ms }
}

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
    check(&[issue("1_2_0_2_0", 23, 0), issue("2_2_0_2_0", 23, 0), issue("3_2_0_2_0", 23, 0)], "out_of_stock");
    check(
        &[issue("1_2_0_2_0", 21, 0), issue("2_2_0_2_0", 21, 0), issue("3_2_0_2_0", 21, 0), issue("4_2_0_2_0", 21, 0)],
        "out_of_stock",
    );
    check(&[issue("1_2_0_2_0", 23, 0), issue("1_2_1_2_0", 23, 0)], "user_batch_limit");
    check(&[issue("1_2_0_2_0", 21, 0), issue("1_2_1_2_0", 22, 0)], "batch_group_taken");
    check(&[issue("1_2_0_2_0", 22, 0), issue("1_2_1_2_0", 22, 0)], "user_batch_limit");
    check(&[issue("1_2_0_2_0", 21, 0), issue("1_2_1_2_0", 21, 0)], "issued");
    check(&[issue("1_4_0_2_0", 24, 0), issue("2_4_0_2_0", 24, 0)], "issued");
    check(&[issue("1_4_0_2_0", 24, 0), issue("1_4_1_2_0", 24, 0), issue("1_4_2_2_0", 24, 0)], "user_batch_limit");
    check(&[issue("1_1_0_1_0", 11, 1000), issue("2_1_0_1_0", 11, 501)], "budget_exhausted");
    check(&[issue("1_1_0_1_0", 11, 1000), issue("2_1_0_1_0", 11, 500)], "issued");
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
    check(&[issue("1_1_0_1_0", 11, 40), issue("1_1_0_1_0", 11, 40)], "duplicate");
    check(&[issue("1_1_0_1_0", 11, 40), issue("1_1_0_1_0", 12, 40)], "duplicate");
    check(&[issue("1_1_0_1_0", 11, 40), issue("1_1_0_1_0", 11, 41)], "conflict");
    check(&[issue("1_2_0_2_0", 21, 0), issue("1_2_0_2_0", 23, 0)], "conflict");
    check(&[issue("1_1_0_1_0", 11, 40), issue("1_1_0_1_0", 11, 2000)], "amount_over_cap");
    check(&[issue("1_2_0_2_0", 23, 0), issue("2_2_0_2_0", 23, 0), issue("1_2_0_2_0", 23, 0)], "duplicate");
    check(&[issue("1_1_0_1_0", 11, 40), advance(5_000), issue("1_1_0_1_0", 11, 40)], "issued");
    check(
        &[issue("1_1_0_1_0", 11, 1000), issue("2_1_0_1_0", 11, 500), advance(5_000), issue("3_1_0_1_0", 11, 1000)],
        "issued",
    );
    check(&[advance(15_000), issue("1_1_0_1_0", 11, 40)], "no_child_open");
    check(&[advance(15_000), issue("1_1_0_1", 11, 40)], "malformed_order_no");
    check(&[advance(14_999), issue("1_1_0_1_0", 11, 40)], "issued");
    check(&[withdraw(1, "w0", 1)], "insufficient_balance");
    check(&[issue("1_1_0_1_0", 11, 40), withdraw(1, "w0", 40)], "withdrawn");
    check(&[issue("1_1_0_1_0", 11, 40), withdraw(1, "w0", 41)], "insufficient_balance");
    check(&[issue("1_1_0_1_0", 11, 40), withdraw(1, "w0", 30), withdraw(1, "w0", 30)], "duplicate");
    check(&[issue("1_1_0_1_0", 11, 40), withdraw(1, "w0", 30), withdraw(1, "w0", 20)], "conflict");
    check(&[issue("1_1_0_1_0", 11, 40), withdraw(1, "w0", 30), withdraw(2, "w0", 30)], "conflict");
    check(
        &[issue("1_1_0_1_0", 11, 40), withdraw(1, "w0", 30), advance(5_000), withdraw(1, "w0", 30)],
        "insufficient_balance",
    );
    check(&[withdraw(1, "w 0", 1)], "malformed_withdraw_no");
    check(&[withdraw(1, "", 1)], "malformed_withdraw_no");
    check(&[withdraw(1, "w0", 0)], "zero_amount");
    check(&[withdraw(1, "w0", -1)], "negative_amount");
    check(&[advance(20_000), withdraw(1, "w 0", 1)], "no_child_open");
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
        model.last.as_ref().map(|p| (p.label, p.account, p.balance_cents)),
        Some(("batch_group_taken", Some((1, 1)), 400))
    );
    let expected: BTreeMap<String, i64> =
        [("budget:1", 700), ("stock:1:701", 1), ("user-batch:1:b1:1", 1)].map(|(k, n)| (k.to_owned(), n)).into();
    assert_eq!(model.counters(), expected);
    assert_eq!(model.entries, 3);
}

#[test]
fn the_model_reads_order_numbers_like_the_wallet() {
    let too_long = "1".repeat(105);
    for text in MALFORMED_ORDER_NOS.iter().copied().chain([too_long.as_str()]) {
        assert_eq!(parse_order_no(text), None, "{text:?} must not parse");
        assert!(text.parse::<reference::OrderNo>().is_err(), "{text:?}: the wallet reads it, the model does not");
    }
    for text in EDGE_ORDER_NOS {
        let parsed = parse_order_no(text).expect("edge cases parse");
        let theirs: reference::OrderNo = text.parse().expect("the wallet reads edge cases too");
        assert_eq!(
            (parsed.act_id, parsed.scene_id, parsed.rain_id, parsed.stage),
            (theirs.act_id, u64::from(theirs.scene_id), u64::from(theirs.rain_id), u64::from(theirs.stage))
        );
    }
}

#[test]
fn the_model_tables_match_the_toml_tree() {
    let activity = TREE_PARSED.activity(ACTIVITY_ID).expect("the activity is configured");
    assert_eq!(activity.per_txn_cap_cents, PER_TXN_CAP_CENTS);
    let children: Vec<_> = activity.children.iter().map(|c| (c.id, c.start_ms, c.end_ms, c.budget_cents)).collect();
    let ours: Vec<_> = CHILDREN.iter().map(|c| (c.id, c.start_ms, c.end_ms, c.budget_cents)).collect();
    assert_eq!(children, ours);
    let scenes: Vec<_> = activity
        .scenes
        .values()
        .map(|s| (u64::from(s.id), u64::from(s.award_type.code()), s.award_ids.clone(), s.stock_control))
        .collect();
    let ours: Vec<_> = SCENES.iter().map(|s| (s.id, s.award_code, s.award_ids.to_vec(), s.stock_control)).collect();
    assert_eq!(scenes, ours);
    assert_eq!(activity.awards.len(), AWARDS.len());
    for (award_id, spec) in &AWARDS {
        let def = activity.awards.get(award_id).expect("every model award is configured");
        let same = match (def, spec) {
            (AwardDef::Cash { max_cents }, AwardSpec::Cash { max_cents: ours }) => max_cents == ours,
            (AwardDef::Pendant { pendant_id }, AwardSpec::Pendant { pendant_id: ours }) => pendant_id == ours,
            (AwardDef::Coupon(c), AwardSpec::Coupon(ours)) => {
                (c.template_id, c.batch.as_str(), c.group.as_deref(), u64::from(c.per_user_limit), c.stock)
                    == (ours.template_id, ours.batch, ours.group, ours.per_user_limit, ours.stock)
            }
            _ => false,
        };
        assert!(same, "award {award_id}: tree {def:?}, model {spec:?}");
    }
    assert_eq!(AwardType::Coupon.code(), 2, "scene award codes in the model use the order-number codes");
}

/// The harness must fail when the wallet and the model disagree: feed it a model
/// that forgot the stock already taken, and the step must panic.
#[test]
fn the_harness_fails_when_the_wallet_and_the_model_disagree() {
    let steps = [issue("1_2_0_2_0", 23, 0), issue("2_2_0_2_0", 23, 0)];
    let mut model = Model::initial();
    let mut sut = WalletTest::<MemoryLedgerBackend>::init_test(&model);
    for step in &steps {
        model = ModelMachine::apply(model, step);
        sut = WalletTest::<MemoryLedgerBackend>::apply(sut, &model, step.clone());
    }
    let last = issue("3_2_0_2_0", 23, 0);
    model.stock_used.clear();
    model = ModelMachine::apply(model, &last);
    assert_eq!(model.last.as_ref().map(|p| p.label), Some("issued"), "the tampered model must be wrong");
    let disagreed = catch_unwind(AssertUnwindSafe(|| WalletTest::<MemoryLedgerBackend>::apply(sut, &model, last)));
    let message = disagreed.err().expect("the harness must reject a wrong prediction");
    let text = message.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(text.contains("out_of_stock"), "the failure names the wallet's answer: {text}");
}
