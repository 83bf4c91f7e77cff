//! The trace: a lazy, deterministic stream of requests from (scenario, seed),
//! drawn from one named ChaCha RNG. The same scenario, seed and sample rate give
//! the same stream on every machine of the same target (the Zipf draw uses the
//! platform's `powf`/`ln`; integer-only scenarios — uniform users — do not).
//!
//! Fresh requests arrive per phase: each millisecond a phase adds its offered
//! rate (scaled by the sample rate) to a carry and sends the whole part, so the
//! count over a phase is the integral of its curve. Follow-ups — client retries,
//! wallet opens and the withdraws after them — are scheduled when their award is
//! drawn and merged in time order. Sampling keeps a deterministic subset of users
//! (by a hash of the act_id) and draws users only from it.
//!
//! A trace shards by act_id hash ([`Shard`]): shard `i/N` is the full stream with
//! every request of another shard left out, so the shards partition it exactly.

pub mod client;
mod file;
pub(crate) mod thread;

pub use file::{
    TRACE_FORMAT, TRACE_FORMAT_VERSION, TraceError, TraceHasher, TraceHeader, TraceReader, export,
};

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Exp, Zipf};
use reference::config::{Activity, AwardDef};
use reference::order_no::{AwardType, OrderNo};
use reference::wallet::{IssueRequest, WithdrawRequest};
use reference::{ActId, Millis};
use serde::{Deserialize, Serialize};

use crate::scenario::{Phase, Scenario};

/// Earlier issue requests kept for replays and conflicts.
const RECENT_MAX: usize = 4096;
/// Seed domain of the trace RNG, so other RNGs seeded from the same scenario
/// seed draw different streams.
const RNG_NAME: u64 = 0x776f_726b_6c6f_6164; // "workload"
/// Seed domain of the sampled-user predicate.
const SAMPLE_SALT: u64 = 0x7361_6d70_6c65; // "sample"
/// Seed domain of the shard hash (seed-independent: a user's shard never moves).
const SHARD_SALT: u64 = 0x73_6861_7264; // "shard"

/// One request at its virtual time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Op {
    /// When it is sent (virtual ms since the epoch).
    pub at_ms: Millis,
    /// The user it is about (what the trace shards by; also for malformed requests).
    pub act_id: ActId,
    /// Carries the shadow tag: served from the shadow stores.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shadow: bool,
    /// What is sent.
    pub request: Request,
}

/// A request of the trace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Request {
    /// An award.
    Issue(IssueRequest),
    /// A withdrawal (the engine adds the client's token copies).
    Withdraw(WithdrawRequest),
    /// A user opens the wallet page.
    View {
        /// The user.
        act_id: u64,
    },
}

/// Shard `index` of `count`: the requests whose act_id hashes to `index`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// From 0.
    pub index: u32,
    /// Shards in all.
    pub count: u32,
}

impl Shard {
    /// The shard of `act_id` among `count`.
    pub fn of(act_id: ActId, count: u32) -> u32 {
        (mix64(act_id ^ SHARD_SALT) % u64::from(count.max(1))) as u32
    }

    /// Whether `act_id` is in this shard.
    pub fn holds(&self, act_id: ActId) -> bool {
        Self::of(act_id, self.count) == self.index
    }
}

impl std::str::FromStr for Shard {
    type Err = String;

    /// `i/N` with `0 ≤ i < N`.
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("`{s}` is not a shard: write i/N with 0 <= i < N, e.g. 0/4");
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let index: u32 = i.trim().parse().map_err(|_| bad())?;
        let count: u32 = n.trim().parse().map_err(|_| bad())?;
        if count == 0 || index >= count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// SplitMix64 finaliser: a fixed, well-mixed function of its input.
pub fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The users of a run and its sample. Users have an activity rank (1 = the most
/// active); the sample is every `1/rate`-th rank from an offset drawn from the
/// seed, so it keeps the population's skew; ranks map to act_ids through a
/// seeded affine permutation of `1..=users`, so hot users are spread over the
/// act_id space (and over shards). Drawing a user of the sample is O(1).
#[derive(Debug, Clone)]
pub struct Sample {
    users: u64,
    rate: f64,
    offset: u64,
    /// Ranks in the sample.
    size: u64,
    mul: u64,
    mul_inverse: u64,
    add: u64,
}

impl Sample {
    /// The sample of `users` at `rate` for `seed`.
    pub fn new(users: u64, rate: f64, seed: u64) -> Self {
        let users = users.max(1);
        let rate = rate.clamp(f64::MIN_POSITIVE, 1.0);
        let stride = (1.0 / rate).floor().max(1.0) as u64;
        let offset = if rate >= 1.0 {
            0
        } else {
            mix64(seed ^ SAMPLE_SALT) % stride.min(users)
        };
        let size = (((users - 1 - offset) as f64 * rate).floor() as u64 + 1).min(users);
        // A multiplier coprime to `users`, from the seed.
        let mut mul = (mix64(seed ^ SAMPLE_SALT ^ 1) % users).max(1);
        while gcd(mul, users) != 1 {
            mul = if mul + 1 >= users { 1 } else { mul + 1 };
        }
        let mul_inverse = mod_inverse(mul, users);
        let add = mix64(seed ^ SAMPLE_SALT ^ 2) % users;
        Self {
            users,
            rate,
            offset,
            size,
            mul,
            mul_inverse,
            add,
        }
    }

    /// Users in the sample.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The act_id of the `j`-th user of the sample (1-based, by activity).
    pub fn act_id(&self, j: u64) -> ActId {
        let j = j.clamp(1, self.size);
        let rank = if self.rate >= 1.0 {
            j
        } else {
            (((j - 1) as f64 / self.rate).floor() as u64 + 1 + self.offset).min(self.users)
        };
        self.permute(rank)
    }

    /// Whether `act_id` is a user of the sample.
    pub fn contains(&self, act_id: ActId) -> bool {
        if act_id == 0 || act_id > self.users {
            return false;
        }
        if self.rate >= 1.0 {
            return true;
        }
        let rank = self.unpermute(act_id);
        if rank <= self.offset {
            return false;
        }
        let position = rank - 1 - self.offset;
        let j = (position as f64 * self.rate).ceil() as u64;
        j < self.size && self.act_id(j + 1) == act_id
    }

    fn permute(&self, rank: u64) -> ActId {
        let n = u128::from(self.users);
        ((u128::from(rank - 1) * u128::from(self.mul) + u128::from(self.add)) % n) as u64 + 1
    }

    fn unpermute(&self, act_id: ActId) -> u64 {
        let n = u128::from(self.users);
        let shifted = (u128::from(act_id - 1) + n - u128::from(self.add)) % n;
        ((shifted * u128::from(self.mul_inverse)) % n) as u64 + 1
    }
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// `a⁻¹ mod n` for `a` coprime to `n` (1 when n is 1).
fn mod_inverse(a: u64, n: u64) -> u64 {
    if n == 1 {
        return 0;
    }
    let (mut t, mut new_t) = (0i128, 1i128);
    let (mut r, mut new_r) = (i128::from(n), i128::from(a));
    while new_r != 0 {
        let q = r / new_r;
        (t, new_t) = (new_t, t - q * new_t);
        (r, new_r) = (new_r, r - q * new_r);
    }
    (t.rem_euclid(i128::from(n))) as u64
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

/// Where a phase stands: the millisecond it is sending in and how many are left.
#[derive(Debug)]
struct PhaseClock {
    /// Next millisecond to evaluate, from the phase's start.
    next_ms: u64,
    /// The millisecond `due` requests are sent in (from the phase's start).
    current_ms: u64,
    /// Requests still to send in `current_ms`.
    due: u64,
    /// Fractional requests carried to the next millisecond.
    carry: f64,
    /// A count phase's requests after sampling.
    count: Option<u64>,
}

impl PhaseClock {
    fn new(phase: &Phase, sample_rate: f64) -> Self {
        Self {
            next_ms: 0,
            current_ms: 0,
            due: 0,
            carry: 0.0,
            count: phase
                .count
                .map(|c| ((c as f64 * sample_rate).round() as u64).max(1)),
        }
    }

    /// The millisecond (from the phase's start) of its next request, if any.
    fn next_due(&mut self, phase: &Phase, sample_rate: f64) -> Option<u64> {
        while self.due == 0 {
            if self.next_ms >= phase.duration_ms {
                return None;
            }
            let ms = self.next_ms;
            self.next_ms += 1;
            self.current_ms = ms;
            self.due = match self.count {
                // Request i goes at floor(i · duration / count), as evenly as can be.
                Some(count) => {
                    let d = u128::from(phase.duration_ms);
                    let upto = |m: u64| (u128::from(m) * u128::from(count)).div_ceil(d);
                    u64::try_from(upto(ms + 1) - upto(ms)).unwrap_or(0)
                }
                None => {
                    self.carry += phase.rate_at(ms) * sample_rate / 1000.0;
                    let whole = self.carry.floor();
                    self.carry -= whole;
                    whole as u64
                }
            };
        }
        Some(self.current_ms)
    }
}

/// Something a user does later because of an earlier request.
#[derive(Debug, Clone, PartialEq, Eq)]
enum FollowUp {
    /// The client sends the same award again.
    Retry(IssueRequest, ActId),
    /// The user opens the wallet page; `withdraw` says whether a withdraw follows.
    Open { act_id: ActId, withdraw: bool },
    /// The user withdraws.
    Withdraw(ActId),
}

#[derive(Debug, PartialEq, Eq)]
struct Scheduled {
    at_ms: Millis,
    seq: u64,
    what: FollowUp,
}

impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at_ms, self.seq).cmp(&(other.at_ms, other.seq))
    }
}

impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

enum Pick {
    Award(AwardType),
    Withdraw,
    View,
}

/// The stream of a scenario's requests.
#[derive(Debug)]
pub struct Trace<'a> {
    scenario: &'a Scenario,
    activity: &'a Activity,
    rng: ChaCha8Rng,
    clocks: Vec<PhaseClock>,
    later: BinaryHeap<Reverse<Scheduled>>,
    next_seq: u64,
    recent: Vec<(IssueRequest, ActId)>,
    payload_seed: u64,
    zipf: Option<Zipf<f64>>,
    sample: Sample,
    open_delay: Option<Exp<f64>>,
    withdraw_delay: Option<Exp<f64>>,
    /// Requests generated so far (all shards).
    position: u64,
    withdraws: u64,
    shard: Option<Shard>,
}

impl<'a> Trace<'a> {
    /// The trace of `scenario` with `seed`.
    pub fn new(scenario: &'a Scenario, seed: u64) -> Self {
        let activity = scenario
            .tree
            .activity(scenario.activity_id)
            .expect("Scenario::load checked the activity");
        let population = &scenario.population;
        let sample = Sample::new(population.users, scenario.sample_rate, seed);
        let zipf = (population.zipf > 0.0).then(|| {
            Zipf::new(sample.size() as f64, population.zipf)
                .expect("Scenario::load checked the skew")
        });
        let exp =
            |mean_s: f64| (mean_s > 0.0).then(|| Exp::new(1.0 / mean_s).expect("a positive rate"));
        Self {
            scenario,
            activity,
            rng: ChaCha8Rng::seed_from_u64(seed ^ RNG_NAME),
            clocks: scenario
                .phases
                .iter()
                .map(|p| PhaseClock::new(p, scenario.sample_rate))
                .collect(),
            later: BinaryHeap::new(),
            next_seq: 0,
            recent: Vec::new(),
            payload_seed: mix64(seed ^ RNG_NAME ^ 1),
            zipf,
            sample,
            open_delay: exp(scenario.behaviour.open_delay_s),
            withdraw_delay: exp(scenario.behaviour.withdraw_delay_s),
            position: 0,
            withdraws: 0,
            shard: None,
        }
    }

    /// Only the requests of `shard`.
    pub fn with_shard(mut self, shard: Option<Shard>) -> Self {
        self.shard = shard;
        self
    }

    /// Requests generated so far, counting those other shards send.
    pub fn position(&self) -> u64 {
        self.position
    }

    fn schedule(&mut self, at_ms: Millis, what: FollowUp) {
        if at_ms >= self.scenario.start_ms + self.scenario.duration_ms {
            return; // after the run: never sent
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.later.push(Reverse(Scheduled { at_ms, seq, what }));
    }

    /// A user of the sample, by the population's skew.
    fn user(&mut self) -> ActId {
        let j = match &self.zipf {
            Some(zipf) => zipf.sample(&mut self.rng) as u64,
            None => self.rng.random_range(1..=self.sample.size()),
        };
        self.sample.act_id(j)
    }

    /// The users this trace draws from.
    pub fn sample(&self) -> &Sample {
        &self.sample
    }

    fn app(&mut self) -> u32 {
        let apps = &self.scenario.population.apps;
        let total: u32 = apps.iter().sum();
        if apps.iter().filter(|w| **w > 0).count() <= 1 {
            return apps.iter().position(|w| *w > 0).map_or(1, |i| i as u32 + 1);
        }
        let mut pick = self.rng.random_range(0..total);
        for (i, weight) in apps.iter().enumerate() {
            if pick < *weight {
                return i as u32 + 1;
            }
            pick -= weight;
        }
        1
    }

    fn fresh_issue(
        &mut self,
        phase: usize,
        award_type: AwardType,
    ) -> Option<(IssueRequest, ActId)> {
        let allowed = self.scenario.phases[phase].scenes.as_deref();
        let scenes: Vec<_> = self
            .activity
            .scenes
            .values()
            .filter(|s| s.award_type == award_type && allowed.is_none_or(|a| a.contains(&s.id)))
            .collect();
        if scenes.is_empty() {
            return None;
        }
        let scene = scenes[self.rng.random_range(0..scenes.len())];
        let traffic = &self.scenario.traffic;
        let rain_id = match self.scenario.phases[phase].rain_id {
            Some(id) => id,
            None => self.rng.random_range(0..traffic.rains),
        };
        let stages = traffic.stages;
        let act_id = self.user();
        let order_no = OrderNo {
            act_id,
            scene_id: scene.id,
            rain_id,
            award_type,
            stage: self.rng.random_range(0..stages),
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
        let app_id = self.app();
        Some((
            IssueRequest {
                app_id,
                activity_id: self.activity.id,
                order_no: order_no.to_string(),
                award_id,
                amount_cents,
            },
            act_id,
        ))
    }

    fn any_issue(&mut self, phase: usize) -> (IssueRequest, ActId) {
        for award_type in [AwardType::Cash, AwardType::Coupon, AwardType::Pendant] {
            if let Some(issue) = self.fresh_issue(phase, award_type) {
                return issue;
            }
        }
        unreachable!("Scenario::load checked every phase has a scene")
    }

    fn malformed(&mut self, phase: usize) -> (IssueRequest, ActId) {
        let (mut base, act_id) = self.any_issue(phase);
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
        (base, act_id)
    }

    fn withdraw(&mut self, act_id: ActId) -> WithdrawRequest {
        self.withdraws += 1;
        WithdrawRequest {
            client_tokens: Vec::new(),
            activity_id: self.activity.id,
            act_id,
            withdraw_no: format!("w{}", self.withdraws),
            amount_cents: i64::try_from(
                self.rng
                    .random_range(1..=self.scenario.traffic.withdraw_max_cents.max(1)),
            )
            .unwrap_or(1),
        }
    }

    fn pick_kind(&mut self, phase: usize) -> Pick {
        let mix = self.scenario.phases[phase].mix;
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

    /// After a fresh award: maybe a retry, maybe an open (and a withdraw after it).
    fn follow_ups(&mut self, at_ms: Millis, issue: &IssueRequest, act_id: ActId) {
        let behaviour = self.scenario.behaviour;
        if behaviour.retry_rate > 0.0 && self.rng.random::<f64>() < behaviour.retry_rate {
            self.schedule(
                at_ms + behaviour.retry_delay_ms,
                FollowUp::Retry(issue.clone(), act_id),
            );
        }
        if behaviour.open_rate > 0.0 && self.rng.random::<f64>() < behaviour.open_rate {
            let delay = self.delay_ms(self.open_delay);
            let withdraw = self.rng.random::<f64>() < behaviour.withdraw_rate;
            self.schedule(at_ms + delay, FollowUp::Open { act_id, withdraw });
        }
    }

    fn delay_ms(&mut self, exp: Option<Exp<f64>>) -> u64 {
        match exp {
            Some(exp) => (exp.sample(&mut self.rng) * 1000.0).min(1e12) as u64,
            None => 0,
        }
    }

    fn fresh(&mut self, phase: usize, at_ms: Millis) -> (Request, ActId) {
        let traffic = self.scenario.traffic;
        let roll: f64 = self.rng.random();
        if !self.recent.is_empty() && roll < traffic.duplicate_rate + traffic.conflict_rate {
            let (mut again, act_id) =
                self.recent[self.rng.random_range(0..self.recent.len())].clone();
            if roll >= traffic.duplicate_rate {
                // Same order number, another payload.
                again.amount_cents = if again.amount_cents > 1 {
                    again.amount_cents - 1
                } else {
                    again.amount_cents + 1
                };
            }
            return (Request::Issue(again), act_id);
        }
        if roll < traffic.duplicate_rate + traffic.conflict_rate + traffic.malformed_rate {
            let (issue, act_id) = self.malformed(phase);
            return (Request::Issue(issue), act_id);
        }
        let issue = match self.pick_kind(phase) {
            Pick::Award(award_type) => self.fresh_issue(phase, award_type),
            Pick::Withdraw => None,
            Pick::View => {
                let act_id = self.user();
                return (Request::View { act_id }, act_id);
            }
        };
        match issue {
            Some((issue, act_id)) => {
                if self.recent.len() < RECENT_MAX {
                    self.recent.push((issue.clone(), act_id));
                } else {
                    let slot = self.rng.random_range(0..RECENT_MAX);
                    self.recent[slot] = (issue.clone(), act_id);
                }
                self.follow_ups(at_ms, &issue, act_id);
                (Request::Issue(issue), act_id)
            }
            None => {
                let act_id = self.user();
                (Request::Withdraw(self.withdraw(act_id)), act_id)
            }
        }
    }

    /// The next request of the whole stream (every shard).
    fn next_any(&mut self) -> Option<Op> {
        if self
            .scenario
            .request_limit
            .is_some_and(|limit| self.position >= limit)
        {
            return None;
        }
        let sample_rate = self.scenario.sample_rate;
        let start_ms = self.scenario.start_ms;
        let mut best: Option<(Millis, usize)> = None;
        for (index, phase) in self.scenario.phases.iter().enumerate() {
            if let Some(ms) = self.clocks[index].next_due(phase, sample_rate) {
                let at = start_ms + phase.start_ms + ms;
                if best.is_none_or(|(b, _)| at < b) {
                    best = Some((at, index));
                }
            }
        }
        let later_first = match (self.later.peek(), best) {
            (Some(Reverse(s)), Some((at, _))) => s.at_ms < at,
            (Some(_), None) => true,
            (None, _) => false,
        };
        let (at_ms, request, act_id) = if later_first {
            let Reverse(scheduled) = self.later.pop().expect("peeked");
            let at_ms = scheduled.at_ms;
            match scheduled.what {
                FollowUp::Retry(issue, act_id) => (at_ms, Request::Issue(issue), act_id),
                FollowUp::Open { act_id, withdraw } => {
                    if withdraw {
                        let delay = self.delay_ms(self.withdraw_delay);
                        self.schedule(at_ms + delay, FollowUp::Withdraw(act_id));
                    }
                    (at_ms, Request::View { act_id }, act_id)
                }
                FollowUp::Withdraw(act_id) => {
                    (at_ms, Request::Withdraw(self.withdraw(act_id)), act_id)
                }
            }
        } else {
            let (at_ms, phase) = best?;
            self.clocks[phase].due -= 1;
            let (request, act_id) = self.fresh(phase, at_ms);
            (at_ms, request, act_id)
        };
        self.position += 1;
        Some(Op {
            at_ms,
            act_id,
            shadow: self.scenario.shadow,
            request,
        })
    }
}

impl Iterator for Trace<'_> {
    type Item = Op;

    fn next(&mut self) -> Option<Op> {
        loop {
            let op = self.next_any()?;
            if self.shard.is_none_or(|s| s.holds(op.act_id)) {
                return Some(op);
            }
        }
    }
}
