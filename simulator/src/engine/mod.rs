//! The virtual-time engine: drives the reference wallet with a scenario's trace
//! (generated, or an exported one replayed). Between requests it runs every
//! background `tick(now)` — credit worker, coupon pipeline, hot-counter
//! instances — applies faults on schedule, gates requests by the capacity model,
//! plays the client side (keeping token copies, presenting them on withdraw,
//! sometimes with a forged one) and records one row of figures per virtual
//! second. At the end it drains the backlog, reads the final state, runs the
//! checkers and builds the [`RunRecord`].

mod background;
mod client;
mod counter_rig;
mod gates;
mod midway;
mod run;
mod series;

pub use run::{RunOutput, check_determinism, run_on, run_scenario};

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use reference::ManualClock;
use reference::config::AwardDef;
use reference::pipeline::CouponPipeline;
use reference::token::KeyRing;
use reference::wallet::Wallet;
use reference::worker::CreditWorker;
use reports::{CreditingSummary, SecondSample, ViewSummary};

use crate::history::History;
use crate::options::{has_pipeline_scenes, scaled_pipeline, scaled_worker};
use crate::scenario::Scenario;
use crate::scenario::capacity::Capacity;
use crate::stores::meter::{MeteredKv, MeteredLedger};
use crate::trace::client::{CLIENT_RNG_NAME, forger_keys};
use crate::trace::thread::TraceThread;
use crate::trace::{Op, Request, TraceHasher};
use counter_rig::CounterRig;
use gates::Cost;
use midway::Midway;

/// Longest credit delay the histogram tells apart (a day); longer ones count as a day.
const DELAY_MAX_MS: u64 = 86_400_000;

/// The meters around the serving stores.
struct Meters {
    ledger: Arc<MeteredLedger>,
    kv: Arc<MeteredKv>,
}

/// The counters of the current virtual second.
#[derive(Debug, Default)]
struct Window {
    offered: u64,
    /// Award requests that arrived (the demand a sync design must credit).
    offered_awards: u64,
    awarded: u64,
    rejected: BTreeMap<String, u64>,
    counter_shown: i64,
}

/// The virtual-time engine: sends each op at its time, and between ops runs every
/// background `tick(now)` (credit worker, coupon pipeline, counter instances),
/// applies faults on schedule, gates requests by the capacity model and records
/// one row of figures per virtual second.
struct Engine<'a> {
    scenario: &'a Scenario,
    wallet: &'a Wallet,
    clock: &'a ManualClock,
    worker: Option<CreditWorker>,
    pipeline: Option<CouponPipeline>,
    capacity: Capacity,
    meters: Meters,
    next_tick_ms: u64,
    next_second_ms: u64,
    next_fault: usize,
    /// What each user's app keeps: its token copies, newest last.
    client_tokens: HashMap<u64, Vec<Vec<u8>>>,
    /// Users holding token copies, in the order they got their first.
    token_holders: Vec<u64>,
    /// Cash each user is owed in the wallet: awarded minus withdrawn.
    owed: HashMap<u64, u64>,
    forger: KeyRing,
    rng: ChaCha8Rng,
    history: History,
    summary: CreditingSummary,
    counter: Option<CounterRig>,
    window: Window,
    series: Vec<SecondSample>,
    backlog: u64,
    views: ViewSummary,
    delays: Histogram<u64>,
    /// Credit delays of coupon credits only.
    coupon_delays: Histogram<u64>,
    refused: BTreeMap<String, u64>,
    trace: TraceHasher,
    peak_awarded: u64,
    templates: Vec<u64>,
    /// Wall time by part of the engine (the run's profile).
    spent: BTreeMap<&'static str, std::time::Duration>,
    /// Templates the strategy side stopped offering (stock below 10%).
    withdrawn_offers: std::collections::BTreeSet<u64>,
    bar: ProgressBar,
    /// Mid-run checks, when asked for.
    midway: Option<Midway>,
}

impl<'a> Engine<'a> {
    fn new(
        scenario: &'a Scenario,
        seed: u64,
        wallet: &'a Wallet,
        clock: &'a Arc<ManualClock>,
        meters: Meters,
        progress: bool,
    ) -> Self {
        let scale = scenario.sample_rate;
        let worker = CreditWorker::for_wallet(wallet, scaled_worker(scenario));
        let pipeline = has_pipeline_scenes(&scenario.tree)
            .then(|| CouponPipeline::new(wallet.clone(), scaled_pipeline(scenario)));
        let templates = scenario
            .tree
            .activity(scenario.activity_id)
            .map(|a| {
                a.awards
                    .values()
                    .filter_map(|award| match award {
                        AwardDef::Coupon(c) => Some(c.template_id),
                        _ => None,
                    })
                    .collect::<std::collections::BTreeSet<_>>()
                    .into_iter()
                    .collect()
            })
            .unwrap_or_default();
        Self {
            scenario,
            wallet,
            clock,
            worker,
            pipeline,
            capacity: Capacity::new(&scenario.capacity, scale),
            meters,
            next_tick_ms: scenario.start_ms,
            next_second_ms: scenario.start_ms + 1000,
            next_fault: 0,
            client_tokens: HashMap::new(),
            token_holders: Vec::new(),
            owed: HashMap::new(),
            forger: forger_keys(seed),
            rng: ChaCha8Rng::seed_from_u64(seed ^ CLIENT_RNG_NAME),
            history: History::default(),
            summary: CreditingSummary::default(),
            counter: scenario
                .counter
                .as_ref()
                .map(|plan| CounterRig::new(plan, scale, clock.clone(), wallet.switches())),
            window: Window::default(),
            series: Vec::new(),
            backlog: 0,
            views: ViewSummary::default(),
            delays: Histogram::new_with_bounds(1, DELAY_MAX_MS, 3).expect("valid histogram bounds"),
            coupon_delays: Histogram::new_with_bounds(1, DELAY_MAX_MS, 3)
                .expect("valid histogram bounds"),
            refused: BTreeMap::new(),
            trace: TraceHasher::default(),
            peak_awarded: 0,
            templates,
            spent: BTreeMap::new(),
            withdrawn_offers: std::collections::BTreeSet::new(),
            bar: progress_bar(scenario.duration_ms / 1000, progress),
            midway: None,
        }
    }

    async fn run(&mut self, ops: TraceThread) -> anyhow::Result<()> {
        let mut ops = ops;
        let result = self.run_ops(&mut ops).await;
        self.trace = ops.finish();
        result
    }

    async fn run_ops(&mut self, ops: &mut TraceThread) -> anyhow::Result<()> {
        let end_ms = self.scenario.start_ms + self.scenario.duration_ms;
        loop {
            let started = Instant::now();
            let next = ops.next();
            // Waiting for the trace thread (which generates and hashes).
            self.spend("trace", started);
            let Some(op) = next else { break };
            let op = op?;
            anyhow::ensure!(
                op.at_ms >= self.scenario.start_ms && op.at_ms < end_ms,
                "a request at {} ms is outside the run ({}..{} ms)",
                op.at_ms,
                self.scenario.start_ms,
                end_ms
            );
            self.advance_to(op.at_ms).await?;
            self.clock.set(op.at_ms);
            let started = Instant::now();
            self.handle(op).await?;
            self.spend("requests", started);
        }
        // The rest of the run's time passes even when the trace ends early.
        self.advance_to(end_ms.saturating_sub(1)).await?;
        self.drain().await?;
        self.bar.finish_and_clear();
        Ok(())
    }

    fn spend(&mut self, part: &'static str, since: Instant) {
        *self.spent.entry(part).or_default() += since.elapsed();
    }

    /// Run ticks, faults and second boundaries up to `until_ms`, in time order.
    async fn advance_to(&mut self, until_ms: u64) -> anyhow::Result<()> {
        loop {
            let next = self.next_tick_ms.min(self.next_second_ms);
            if next > until_ms {
                return Ok(());
            }
            self.clock.set(next);
            if self.next_second_ms <= self.next_tick_ms {
                let started = Instant::now();
                let seconds = self.close_second().await?;
                self.spend("series", started);
                if self.midway.is_some() {
                    let started = Instant::now();
                    self.check_midway(seconds).await?;
                    self.spend("midway checks", started);
                }
            } else {
                let now_ms = self.next_tick_ms;
                self.apply_faults(now_ms).await;
                self.tick(now_ms).await?;
                self.next_tick_ms += self.scenario.crediting.tick_interval_ms;
            }
        }
    }

    async fn handle(&mut self, op: Op) -> anyhow::Result<()> {
        self.window.offered += 1;
        if matches!(op.request, Request::Issue(_)) {
            self.window.offered_awards += 1;
        }
        if self.scenario.traffic.stock_strategy
            && let Request::Issue(issue) = &op.request
            && let Some(template) = self.template_of(issue)
            && self.withdrawn_offers.contains(&template)
        {
            // Upstream offers a default coupon or a greeting instead.
            *self
                .window
                .rejected
                .entry("strategy.fallback".to_owned())
                .or_default() += 1;
            *self
                .refused
                .entry("strategy.fallback".to_owned())
                .or_default() += 1;
            return Ok(());
        }
        if let Some(reason) = self.admit(&op) {
            *self.window.rejected.entry(reason.to_owned()).or_default() += 1;
            *self.refused.entry(format!("refused.{reason}")).or_default() += 1;
            return Ok(());
        }
        let (cost, _) = self.cost(&op.request);
        let kv_before = self.meters.kv.figures().calls;
        let db_before = self.meters.ledger.figures().writes;
        let now_ms = op.at_ms;
        self.send(op.request).await?;
        // The gate let the request in for one unit; charge the rest it really used.
        let kv_used = self.meters.kv.figures().calls - kv_before;
        let db_used = self.meters.ledger.figures().writes - db_before;
        let admitted = |c| u64::from(cost == c);
        self.capacity
            .charge_kv(now_ms, kv_used.saturating_sub(admitted(Cost::Kv)));
        self.capacity
            .charge_db(now_ms, db_used.saturating_sub(admitted(Cost::Db)));
        Ok(())
    }
}

fn progress_bar(len: u64, enabled: bool) -> ProgressBar {
    if !enabled {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template(
        "{spinner} {elapsed_precise} [{wide_bar}] {pos}/{len} virtual s (eta {eta})",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar
}
