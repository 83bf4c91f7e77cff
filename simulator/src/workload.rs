//! The deterministic workload: a lazy stream of requests from (scenario, seed),
//! drawn from one named ChaCha RNG. The same scenario and seed give the same
//! stream on every machine.

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use reference::Millis;
use reference::config::{Activity, AwardDef};
use reference::order_no::{AwardType, OrderNo};
use reference::wallet::{IssueRequest, WithdrawRequest};

use crate::scenario::Scenario;

/// Earlier issue requests kept for replays and conflicts.
const RECENT_MAX: usize = 4096;
/// Seed domain of the workload RNG, so other RNGs seeded from the same scenario
/// seed draw different streams.
const RNG_NAME: u64 = 0x776f_726b_6c6f_6164; // "workload"

/// One request at its virtual time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op {
    /// When it is sent.
    pub at_ms: Millis,
    /// What is sent.
    pub request: Request,
}

/// A request of the workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// An award.
    Issue(IssueRequest),
    /// A withdrawal (the runner adds the client's token copies).
    Withdraw(WithdrawRequest),
    /// A user opens the wallet page.
    View {
        /// The user.
        act_id: u64,
    },
}

enum Pick {
    Award(AwardType),
    Withdraw,
    View,
}

/// The stream; an iterator of exactly `scenario.requests` ops.
#[derive(Debug)]
pub struct Workload<'a> {
    scenario: &'a Scenario,
    activity: &'a Activity,
    rng: ChaCha8Rng,
    index: u64,
    recent: Vec<IssueRequest>,
    payload_seed: u64,
}

/// SplitMix64 finaliser: a fixed, well-mixed function of its input.
fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The payload draw of an order number: same seed and order, same award.
fn payload_draw(seed: u64, order_no: &OrderNo) -> u64 {
    let mut h = mix64(seed);
    for part in [
        order_no.act_id,
        u64::from(order_no.scene_id),
        u64::from(order_no.rain_id),
        u64::from(order_no.award_type.code()),
        u64::from(order_no.stage),
    ] {
        h = mix64(h ^ part);
    }
    h
}

impl<'a> Workload<'a> {
    /// The workload of `scenario` with `seed`.
    pub fn new(scenario: &'a Scenario, seed: u64) -> Self {
        let activity = scenario
            .tree
            .activity(scenario.activity_id)
            .expect("Scenario::load checked the activity");
        let payload_seed = mix64(seed ^ RNG_NAME ^ 1);
        Self {
            scenario,
            activity,
            rng: ChaCha8Rng::seed_from_u64(seed ^ RNG_NAME),
            index: 0,
            recent: Vec::new(),
            payload_seed,
        }
    }

    fn fresh_issue(&mut self, award_type: AwardType) -> Option<IssueRequest> {
        let scenes: Vec<_> = self
            .activity
            .scenes
            .values()
            .filter(|s| s.award_type == award_type)
            .collect();
        if scenes.is_empty() {
            return None;
        }
        let scene = scenes[self.rng.random_range(0..scenes.len())];
        let order_no = OrderNo {
            act_id: self.rng.random_range(1..=self.scenario.users),
            scene_id: scene.id,
            rain_id: self.rng.random_range(0..self.scenario.traffic.rains),
            award_type,
            stage: self.rng.random_range(0..self.scenario.traffic.stages),
        };
        // Upstream decides an order's award once: two fresh requests that happen to
        // share an order number carry the same payload, so they are a duplicate,
        // not a conflict. Conflicts come only from `conflict_rate`.
        let draw = payload_draw(self.payload_seed, &order_no);
        let award_id =
            scene.award_ids[usize::try_from(draw % scene.award_ids.len() as u64).unwrap_or(0)];
        let amount_cents = match self.activity.awards.get(&award_id) {
            Some(AwardDef::Cash { .. }) => {
                let cap = self.activity.cash_cap_cents(award_id).unwrap_or(1);
                i64::try_from(1 + (draw >> 20) % cap).unwrap_or(1)
            }
            _ => 0,
        };
        Some(IssueRequest {
            app_id: 1,
            activity_id: self.activity.id,
            order_no: order_no.to_string(),
            award_id,
            amount_cents,
        })
    }

    fn malformed(&mut self) -> IssueRequest {
        let mut base = self
            .fresh_issue(AwardType::Cash)
            .or_else(|| self.fresh_issue(AwardType::Coupon))
            .or_else(|| self.fresh_issue(AwardType::Pendant))
            .expect("Activity has at least one scene");
        match self.rng.random_range(0..6u8) {
            0 => base.order_no = base.order_no.replacen('_', "-", 1),
            1 => base.order_no.push_str("_9"),
            2 => base.amount_cents = -base.amount_cents.max(1),
            3 => {
                base.amount_cents = i64::try_from(self.activity.per_txn_cap_cents)
                    .unwrap_or(i64::MAX)
                    .saturating_add(1)
            }
            4 => base.order_no = base.order_no.replacen('_', "_4000000", 1),
            _ => base.award_id = u64::MAX,
        }
        base
    }

    fn withdraw(&mut self) -> WithdrawRequest {
        WithdrawRequest {
            client_tokens: Vec::new(),
            activity_id: self.activity.id,
            act_id: self.rng.random_range(1..=self.scenario.users),
            withdraw_no: format!("w{}", self.index),
            amount_cents: i64::try_from(
                self.rng
                    .random_range(1..=self.scenario.traffic.withdraw_max_cents),
            )
            .unwrap_or(1),
        }
    }

    fn pick_kind(&mut self) -> Pick {
        let mix = self.scenario.mix;
        let total = mix.cash + mix.coupon + mix.pendant + mix.withdraw + mix.view;
        let pick = self.rng.random_range(0..total);
        let mut bound = mix.cash;
        if pick < bound {
            return Pick::Award(AwardType::Cash);
        }
        bound += mix.coupon;
        if pick < bound {
            return Pick::Award(AwardType::Coupon);
        }
        bound += mix.pendant;
        if pick < bound {
            return Pick::Award(AwardType::Pendant);
        }
        bound += mix.withdraw;
        if pick < bound {
            Pick::Withdraw
        } else {
            Pick::View
        }
    }

    fn next_request(&mut self) -> Request {
        let traffic = self.scenario.traffic;
        let roll: f64 = self.rng.random();
        if !self.recent.is_empty() && roll < traffic.duplicate_rate + traffic.conflict_rate {
            let mut again = self.recent[self.rng.random_range(0..self.recent.len())].clone();
            if roll >= traffic.duplicate_rate {
                // Same order number, another payload.
                again.amount_cents = if again.amount_cents > 1 {
                    again.amount_cents - 1
                } else {
                    again.amount_cents + 1
                };
            }
            return Request::Issue(again);
        }
        if roll < traffic.duplicate_rate + traffic.conflict_rate + traffic.malformed_rate {
            return Request::Issue(self.malformed());
        }
        let issue = match self.pick_kind() {
            Pick::Award(award_type) => self.fresh_issue(award_type),
            Pick::Withdraw => None,
            Pick::View => {
                return Request::View {
                    act_id: self.rng.random_range(1..=self.scenario.users),
                };
            }
        };
        match issue {
            Some(issue) => {
                if self.recent.len() < RECENT_MAX {
                    self.recent.push(issue.clone());
                } else {
                    let slot = self.rng.random_range(0..RECENT_MAX);
                    self.recent[slot] = issue.clone();
                }
                Request::Issue(issue)
            }
            None => Request::Withdraw(self.withdraw()),
        }
    }
}

impl Iterator for Workload<'_> {
    type Item = Op;

    fn next(&mut self) -> Option<Op> {
        if self.index >= self.scenario.requests {
            return None;
        }
        let offset = u128::from(self.index) * u128::from(self.scenario.duration_ms)
            / u128::from(self.scenario.requests);
        let at_ms = self.scenario.start_ms + u64::try_from(offset).expect("offset < duration");
        let request = self.next_request();
        self.index += 1;
        Some(Op { at_ms, request })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = usize::try_from(self.scenario.requests - self.index).unwrap_or(usize::MAX);
        (left, Some(left))
    }
}
