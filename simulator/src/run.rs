//! The runner: drives the reference wallet with a scenario's workload in virtual
//! time, ticks the credit worker between requests, applies faults on schedule,
//! plays the client side (keeping token copies, presenting them on withdraw,
//! sometimes with a forged one), drains the backlog at the end, reads the final
//! state, runs the checkers and builds the [`RunRecord`]. The virtual-time engine
//! with the capacity model replaces this loop in the simulator issue.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use reference::counter::{LocalCounter, LocalCounterConfig, SplitCounter};
use reference::kv::{Kv, KvFaults, MemoryKv, RedisKv};
use reference::ledger::{Award, EntryKind, Ledger, LedgerOptions};
use reference::switches::Switches;
use reference::token::{KeyRing, decode_unverified};
use reference::wallet::{CLIENT_TOKENS_MAX, IssueOutcome, Wallet, WithdrawOutcome};
use reference::worker::{CreditWorker, TickReport};
use reference::{Clock, ManualClock, kv, ledger};
use reports::{
    CounterSummary, CreditingSummary, RUN_RECORD_VERSION, RunRecord, ScenarioInfo, Totals, Verdict,
    Wall,
};

use crate::check::{self, Invariant, Violation};
use crate::history::{Event, FinalState, History, RealStores};
use crate::scenario::{CounterKind, CounterPlan, FaultKind, Scenario, StoreUrls};
use crate::workload::{Request, Workload};

/// Examples of violations kept per invariant in the record.
const EXAMPLES_MAX: usize = 5;
/// Seed domain of the client RNG (forgeries), apart from the workload's.
const CLIENT_RNG_NAME: u64 = 0x636c_6965_6e74; // "client"
/// Key id forgers sign with (the wallet's dev key is id 0).
const FORGER_KEY_ID: u32 = 1;
/// Flow lines a simulated wallet page asks for.
const VIEW_PAGE_LIMIT: usize = 20;

/// How to run a scenario.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Overrides the scenario's seed.
    pub seed: Option<u64>,
    /// Overrides the scenario's request count.
    pub requests: Option<u64>,
    /// Overrides the scenario's ledger URL (`[stores] ledger`).
    pub ledger_url: Option<String>,
    /// Overrides the scenario's KV URL (`[stores] kv`).
    pub kv_url: Option<String>,
    /// Draw a progress bar (only on a terminal).
    pub progress: bool,
}

/// Stores to run on, for tests that plant broken ones.
#[derive(Debug, Clone)]
pub struct Stores {
    /// The ledger.
    pub ledger: Arc<dyn Ledger>,
    /// The KV.
    pub kv: Arc<dyn Kv>,
    /// The clock both run on.
    pub clock: Arc<ManualClock>,
    /// Keys the wallet trusts, when they differ from the scenario's (a planted
    /// misconfiguration); the checkers always use the scenario's.
    pub wallet_keys: Option<Arc<KeyRing>>,
    /// Where shadow-tagged traffic goes; required when the scenario is shadow.
    pub shadow: Option<ShadowStores>,
}

/// The shadow tables and keys beside the real stores.
#[derive(Debug, Clone)]
pub struct ShadowStores {
    /// The `shadow_` tables.
    pub ledger: Arc<dyn Ledger>,
    /// The `shadow:` keys.
    pub kv: Arc<dyn Kv>,
}

/// Everything a run produced.
#[derive(Debug)]
pub struct RunOutput {
    /// The record (the contract with `reports`).
    pub record: RunRecord,
    /// Every answered request and every fault.
    pub history: History,
    /// The stores at the end.
    pub state: FinalState,
    /// Every violation found.
    pub violations: Vec<Violation>,
}

/// The build that is running, for records and reproduction lines.
pub fn build_id() -> String {
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    format!("redrain {} ({profile})", env!("CARGO_PKG_VERSION"))
}

/// The store URLs a run uses: the options' overrides, else the scenario's.
pub fn store_urls(scenario: &Scenario, options: &RunOptions) -> StoreUrls {
    StoreUrls {
        ledger: options
            .ledger_url
            .clone()
            .unwrap_or_else(|| scenario.stores.ledger.clone()),
        kv: options
            .kv_url
            .clone()
            .unwrap_or_else(|| scenario.stores.kv.clone()),
    }
}

/// Run `scenario` with `options` on fresh stores named by the URLs. Both stores
/// are opened (and a server reached) before any traffic. A ledger must be empty:
/// the checkers compare it with this run's history. On Redis the run keeps its
/// keys under a namespace of its own and deletes it at the end.
pub async fn run_scenario(scenario: &Scenario, options: &RunOptions) -> anyhow::Result<RunOutput> {
    let urls = store_urls(scenario, options);
    let ledger = open_empty_ledger(&urls.ledger, LedgerOptions::default()).await?;
    let clock = Arc::new(ManualClock::new(scenario.start_ms));
    let namespace = unique_namespace("run");
    let (kv, redis) = open_kv(&urls.kv, &clock, &namespace, false).await?;
    let mut redis = Vec::from_iter(redis);
    let shadow = if scenario.shadow {
        let (kv, shadow_redis) = open_kv(&urls.kv, &clock, &namespace, true).await?;
        redis.extend(shadow_redis);
        Some(ShadowStores {
            ledger: open_empty_ledger(&urls.ledger, LedgerOptions::shadow()).await?,
            kv,
        })
    } else {
        None
    };
    let output = run_on(
        scenario,
        options,
        Stores {
            ledger,
            kv,
            clock,
            wallet_keys: None,
            shadow,
        },
    )
    .await;
    for redis in redis {
        redis
            .delete_namespace()
            .await
            .context("deleting the run's keys")?;
    }
    output
}

/// Open a ledger and make sure it is empty: the checkers compare it with this
/// run's history.
async fn open_empty_ledger(url: &str, options: LedgerOptions) -> anyhow::Result<Arc<dyn Ledger>> {
    let tables = if options.shadow {
        "shadow tables"
    } else {
        "tables"
    };
    let ledger = ledger::open_with(url, options)
        .await
        .with_context(|| format!("opening the ledger's {tables}"))?;
    let existing = ledger
        .snapshot()
        .await
        .with_context(|| format!("reading the ledger's {tables}"))?
        .entries
        .len();
    anyhow::ensure!(
        existing == 0,
        "the ledger `{}` already holds {existing} entries in its {tables}; a run needs \
         an empty ledger (a fresh database or SQLite file, or `redrain cleanup --shadow` \
         for shadow tables), because the checkers compare it with this run's history",
        reference::redact_url(url)
    );
    Ok(ledger)
}

/// Open the KV: a fresh memory store, or Redis under the run's own namespace
/// (returned too, so the run can delete it at the end).
async fn open_kv(
    url: &str,
    clock: &Arc<ManualClock>,
    namespace: &str,
    shadow: bool,
) -> anyhow::Result<(Arc<dyn Kv>, Option<RedisKv>)> {
    let options = kv::KvOptions {
        prefix: namespace.to_owned(),
        shadow,
        shadow_ttl_ms: None,
    };
    if kv::check_url(url).is_ok() && url.starts_with("redis") {
        let redis = RedisKv::connect(url, &options)
            .await
            .context("opening the KV")?;
        return Ok((Arc::new(redis.clone()), Some(redis)));
    }
    let kv = kv::open(url, clock.clone(), &options)
        .await
        .context("opening the KV")?;
    Ok((kv, None))
}

/// A KV namespace no other process shares: `redrain-<kind>-<unix ms>-<pid>:`.
pub fn unique_namespace(kind: &str) -> String {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    format!("redrain-{kind}-{ms}-{}:", std::process::id())
}

/// Run `scenario` on the given stores.
pub async fn run_on(
    scenario: &Scenario,
    options: &RunOptions,
    stores: Stores,
) -> anyhow::Result<RunOutput> {
    let mut scenario = scenario.clone();
    if let Some(requests) = options.requests {
        scenario.requests = requests;
    }
    let seed = options.seed.unwrap_or(scenario.seed);
    let keys = match &scenario.token_keys {
        Some(source) => Some(Arc::new(source.load(seed).context("loading token keys")?)),
        None => None,
    };
    let tree = Arc::new(scenario.tree.clone());
    let mut wallet = Wallet::new(
        tree.clone(),
        stores.ledger.clone(),
        stores.kv.clone(),
        stores.clock.clone(),
    );
    if let Some(wallet_keys) = stores.wallet_keys.clone().or_else(|| keys.clone()) {
        wallet = wallet.with_keys(wallet_keys);
    }
    // A shadow scenario tags every request: the wallet serves it from its twin
    // over the shadow stores, and the final state is read from those.
    let (read_ledger, read_kv) = match (&stores.shadow, scenario.shadow) {
        (Some(shadow), true) => {
            wallet = wallet.with_shadow_stores(shadow.ledger.clone(), shadow.kv.clone());
            (shadow.ledger.clone(), shadow.kv.clone())
        }
        (None, true) => anyhow::bail!("a shadow scenario needs shadow stores"),
        _ => (stores.ledger.clone(), stores.kv.clone()),
    };
    let serving = wallet.route(scenario.shadow)?;
    let started = Instant::now();
    let mut driver = Driver::new(&scenario, seed, serving, &stores.clock, options.progress);
    driver.run(Workload::new(&scenario, seed)).await?;
    let elapsed = started.elapsed();
    let counter = match &driver.counter {
        Some(rig) => Some(rig.summary(&scenario, driver.clock.now_ms()).await),
        None => None,
    };
    let Driver {
        history, summary, ..
    } = driver;
    let children = tree
        .activities()
        .flat_map(|a| a.children.iter().map(|c| c.id))
        .collect::<Vec<_>>();
    let mut state = FinalState::read(read_ledger.as_ref(), read_kv.as_ref())
        .await
        .context("reading the final state")?
        .with_tokens(read_kv.as_ref(), children, keys.as_deref())
        .await
        .context("reading the token backlog")?;
    if scenario.shadow {
        state.real_stores = Some(
            RealStores::read(stores.ledger.as_ref(), stores.kv.as_ref())
                .await
                .context("reading the real stores after a shadow run")?,
        );
    }
    let violations = check::check_all(&scenario.tree, &history, &state);
    let record = record(
        &scenario,
        seed,
        options,
        &history,
        &state,
        &violations,
        summary,
        counter,
        elapsed.as_millis() as u64,
    );
    Ok(RunOutput {
        record,
        history,
        state,
        violations,
    })
}

/// The loop's state: wallet, worker, client copies, history.
struct Driver<'a> {
    scenario: &'a Scenario,
    wallet: &'a Wallet,
    clock: &'a ManualClock,
    worker: Option<CreditWorker>,
    next_tick_ms: u64,
    next_fault: usize,
    /// What each user's app keeps: its token copies, newest last.
    client_tokens: BTreeMap<u64, Vec<Vec<u8>>>,
    forger: KeyRing,
    rng: ChaCha8Rng,
    history: History,
    summary: CreditingSummary,
    counter: Option<CounterRig>,
    bar: ProgressBar,
}

/// The hot counter of a run: its own KV (and backup), plan 1's split keys or
/// plan 2's writer and reader instances, and the readers' polling schedule.
struct CounterRig {
    plan: CounterPlan,
    primary: Arc<MemoryKv>,
    split: Option<SplitCounter>,
    writers: Vec<LocalCounter>,
    readers: Vec<LocalCounter>,
    next_reader: u32,
    /// Poll credit carried between ticks, in reads × 1000.
    read_credit: u64,
    writes: u64,
    reads: u64,
    blocked_reads: u64,
    true_total: u64,
}

impl CounterRig {
    fn new(plan: &CounterPlan, clock: Arc<ManualClock>, switches: &Arc<Switches>) -> Self {
        let primary = Arc::new(MemoryKv::new(clock.clone()));
        let backup: Option<Arc<dyn Kv>> = plan
            .backup
            .then(|| Arc::new(MemoryKv::new(clock)) as Arc<dyn Kv>);
        let config = LocalCounterConfig {
            name: "fireworks".to_owned(),
            interval_ms: plan.interval_ms,
        };
        let instances = |n: u32| -> Vec<LocalCounter> {
            (0..n)
                .map(|_| {
                    LocalCounter::new(&config, primary.clone(), backup.clone(), switches.clone())
                })
                .collect()
        };
        let (split, writers, readers) = match plan.plan {
            CounterKind::Split => (
                Some(SplitCounter::new(
                    primary.clone(),
                    "fireworks",
                    plan.split_keys,
                )),
                Vec::new(),
                Vec::new(),
            ),
            CounterKind::Local => (None, instances(plan.writers), instances(plan.readers)),
        };
        Self {
            plan: plan.clone(),
            primary,
            split,
            writers,
            readers,
            next_reader: 0,
            read_credit: 0,
            writes: 0,
            reads: 0,
            blocked_reads: 0,
            true_total: 0,
        }
    }

    /// Count a cash award of `cents` to `act_id` (on the writer instance that served it).
    async fn add(&mut self, act_id: u64, cents: u64) {
        self.writes += 1;
        self.true_total += cents;
        let delta = i64::try_from(cents).unwrap_or(i64::MAX);
        match &self.split {
            // No retry: a failed write is lost (counted by the plan).
            Some(split) => drop(split.add(act_id, delta).await),
            None => self.writers[(act_id % self.writers.len() as u64) as usize].add(delta),
        }
    }

    /// Flush and refresh every instance (writers first), then poll for one tick.
    async fn tick(&mut self, now_ms: u64, tick_ms: u64, events: &mut Vec<Event>) {
        for instance in self.writers.iter().chain(&self.readers) {
            instance.tick(now_ms).await;
        }
        self.read_credit += u64::from(self.plan.reads_per_s) * tick_ms;
        let polls = self.read_credit / 1000;
        self.read_credit %= 1000;
        for _ in 0..polls {
            let reader = self.next_reader % self.plan.readers;
            self.next_reader = self.next_reader.wrapping_add(1);
            let shown = match &self.split {
                Some(split) => Some(split.read().await.value),
                None => self.readers[reader as usize].try_read(),
            };
            let Some(shown) = shown else {
                self.blocked_reads += 1;
                continue;
            };
            self.reads += 1;
            let lag_ms = if self.split.is_some() {
                0
            } else {
                self.plan.interval_ms
            };
            events.push(Event::CounterRead {
                at_ms: now_ms,
                reader,
                shown,
                lag_ms,
            });
        }
    }

    fn set_primary_up(&self, up: bool) {
        self.primary.set_faults(KvFaults {
            down: !up,
            ..KvFaults::default()
        });
    }

    /// The figures, after one more flush and refresh one interval after `now_ms`.
    async fn summary(&self, scenario: &Scenario, now_ms: u64) -> CounterSummary {
        let last = now_ms + self.plan.interval_ms;
        for instance in self.writers.iter().chain(&self.readers) {
            instance.tick(last).await;
        }
        let (figures, shown) = match &self.split {
            Some(split) => (split.figures(), split.read().await.value),
            None => {
                let mut figures = reference::counter::CounterFigures::default();
                for instance in self.writers.iter().chain(&self.readers) {
                    let f = instance.figures();
                    figures.kv_writes += f.kv_writes;
                    figures.kv_reads += f.kv_reads;
                }
                let shown = self.readers.iter().filter_map(|r| r.try_read()).max();
                (figures, shown.unwrap_or(0))
            }
        };
        let truth = self.true_total;
        CounterSummary {
            plan: match self.plan.plan {
                CounterKind::Split => "split".to_owned(),
                CounterKind::Local => "local".to_owned(),
            },
            writes: self.writes,
            reads: self.reads,
            blocked_reads: self.blocked_reads,
            kv_writes: figures.kv_writes,
            kv_reads: figures.kv_reads,
            kv_ops_per_s: figures.kv_ops() as f64 * 1000.0 / scenario.duration_ms.max(1) as f64,
            true_total_cents: truth,
            final_shown_cents: shown,
            final_error_pct: if truth == 0 {
                0.0
            } else {
                (shown as f64 - truth as f64) * 100.0 / truth as f64
            },
        }
    }
}

/// The key the simulated forger signs with for a run of `seed` (key id 1).
pub fn forger_keys(seed: u64) -> KeyRing {
    KeyRing::from_secret(
        FORGER_KEY_ID,
        *blake3::hash(&(seed ^ CLIENT_RNG_NAME).to_le_bytes()).as_bytes(),
    )
}

impl<'a> Driver<'a> {
    fn new(
        scenario: &'a Scenario,
        seed: u64,
        wallet: &'a Wallet,
        clock: &'a Arc<ManualClock>,
        progress: bool,
    ) -> Self {
        let worker = CreditWorker::for_wallet(wallet, scenario.crediting.worker.clone());
        let forger = forger_keys(seed);
        Self {
            scenario,
            wallet,
            clock,
            worker,
            next_tick_ms: scenario.start_ms,
            next_fault: 0,
            client_tokens: BTreeMap::new(),
            forger,
            rng: ChaCha8Rng::seed_from_u64(seed ^ CLIENT_RNG_NAME),
            history: History::default(),
            summary: CreditingSummary::default(),
            counter: scenario
                .counter
                .as_ref()
                .map(|plan| CounterRig::new(plan, clock.clone(), wallet.switches())),
            bar: progress_bar(scenario.requests, progress),
        }
    }

    async fn run(&mut self, workload: Workload<'_>) -> anyhow::Result<()> {
        for op in workload {
            self.advance_to(op.at_ms).await?;
            self.clock.set(op.at_ms);
            self.send(op.request).await?;
            self.bar.inc(1);
        }
        self.bar.finish_and_clear();
        self.drain().await
    }

    /// Tick the worker and apply faults for every tick boundary up to `until_ms`.
    async fn advance_to(&mut self, until_ms: u64) -> anyhow::Result<()> {
        while self.next_tick_ms <= until_ms {
            let now_ms = self.next_tick_ms;
            self.clock.set(now_ms);
            self.apply_faults(now_ms);
            self.tick(now_ms).await?;
            if let Some(counter) = &mut self.counter {
                let tick_ms = self.scenario.crediting.tick_interval_ms;
                counter
                    .tick(now_ms, tick_ms, &mut self.history.events)
                    .await;
            }
            self.next_tick_ms += self.scenario.crediting.tick_interval_ms;
        }
        Ok(())
    }

    fn apply_faults(&mut self, now_ms: u64) {
        while let Some(fault) = self.scenario.faults.get(self.next_fault) {
            if self.scenario.start_ms + fault.at_ms > now_ms {
                break;
            }
            match fault.kind {
                FaultKind::WorkerCrash(point) => {
                    if let Some(worker) = &mut self.worker {
                        worker.crash_at(point);
                    }
                }
                FaultKind::CounterKv(up) => {
                    if let Some(counter) = &self.counter {
                        counter.set_primary_up(up);
                    }
                }
                FaultKind::Switch(switch, on) => {
                    self.wallet.switches().set(switch, on);
                    self.history.events.push(Event::Switch {
                        at_ms: now_ms,
                        switch,
                        on,
                    });
                }
            }
            self.next_fault += 1;
        }
    }

    async fn tick(&mut self, now_ms: u64) -> anyhow::Result<()> {
        let Some(worker) = &mut self.worker else {
            return Ok(());
        };
        let report: TickReport = worker.tick(now_ms).await.context("credit worker tick")?;
        self.summary.credited_by_worker += report.credited;
        self.summary.requeued += report.requeued;
        self.summary.failed_attempts += report.failed_attempts;
        if report.crashed {
            let point = worker
                .crash_point_hit()
                .unwrap_or(reference::worker::CrashPoint::AfterClaim);
            self.history.events.push(Event::WorkerCrash {
                at_ms: now_ms,
                point,
            });
            self.summary.worker_crashes += 1;
            // The process restarts with nothing but the shared stores.
            self.worker =
                CreditWorker::for_wallet(self.wallet, self.scenario.crediting.worker.clone());
        }
        if let Some(worker) = &self.worker {
            let backlog = worker.backlog().await.context("reading the backlog")?;
            self.summary.backlog_peak = self.summary.backlog_peak.max(backlog);
        }
        Ok(())
    }

    async fn send(&mut self, request: Request) -> anyhow::Result<()> {
        let at_ms = self.clock.now_ms();
        let event = match request {
            Request::Issue(request) => {
                let outcome = self
                    .wallet
                    .issue(&request)
                    .await
                    .with_context(|| format!("issuing {}", request.order_no))?;
                if let IssueOutcome::Accepted { token } | IssueOutcome::DuplicateToken { token } =
                    &outcome
                {
                    let copies = self.client_tokens.entry(token.act_id).or_default();
                    if !copies.contains(&token.bytes) {
                        copies.push(token.bytes.clone());
                    }
                    if matches!(outcome, IssueOutcome::Accepted { .. }) {
                        self.summary.accepted += 1;
                    }
                }
                let cents = outcome.newly_awarded_cents();
                if let (Some(counter), true) = (&mut self.counter, cents > 0) {
                    // Awarded, so the order number parsed.
                    let act_id = request
                        .order_no
                        .parse::<reference::OrderNo>()
                        .map_or(0, |o| o.act_id);
                    counter.add(act_id, cents).await;
                }
                Event::Issue {
                    at_ms,
                    request,
                    outcome,
                }
            }
            Request::Withdraw(mut request) => {
                let copies = self
                    .client_tokens
                    .get(&request.act_id)
                    .cloned()
                    .unwrap_or_default();
                let keep = copies.len().min(CLIENT_TOKENS_MAX - 1);
                request.client_tokens = copies[copies.len() - keep..].to_vec();
                if self.rng.random::<f64>() < self.scenario.traffic.forged_token_rate {
                    request.client_tokens.push(self.forge(request.act_id));
                    self.summary.forged_presented += 1;
                }
                let outcome = self
                    .wallet
                    .withdraw(&request)
                    .await
                    .with_context(|| format!("withdrawing {}", request.withdraw_no))?;
                if let WithdrawOutcome::Withdrawn { force, .. }
                | WithdrawOutcome::Rejected { force, .. } = &outcome
                {
                    self.summary.force_credited += u64::from(force.credited);
                }
                Event::Withdraw {
                    at_ms,
                    request,
                    outcome,
                }
            }
            Request::View { act_id } => {
                let activity_id = self.scenario.activity_id;
                match self
                    .wallet
                    .view(activity_id, act_id, None, VIEW_PAGE_LIMIT)
                    .await
                    .context("viewing the wallet")?
                {
                    Ok(view) => Event::View {
                        at_ms,
                        activity_id,
                        act_id,
                        view,
                    },
                    // No child open: nothing to show, nothing to check.
                    Err(_) => return Ok(()),
                }
            }
        };
        self.history.events.push(event);
        Ok(())
    }

    /// A token the wallet must refuse: a changed byte, another user's token, an
    /// invented order signed with a foreign key, or junk.
    fn forge(&mut self, act_id: u64) -> Vec<u8> {
        let own = self
            .client_tokens
            .get(&act_id)
            .filter(|c| !c.is_empty())
            .cloned();
        let others: Vec<&Vec<u8>> = self
            .client_tokens
            .iter()
            .filter(|(a, _)| **a != act_id)
            .flat_map(|(_, c)| c)
            .collect();
        match (self.rng.random_range(0..4u8), own, others.is_empty()) {
            (0, Some(own), _) => {
                let mut tampered = own[self.rng.random_range(0..own.len())].clone();
                let index = self.rng.random_range(0..tampered.len());
                tampered[index] ^= 1 << self.rng.random_range(0..8u32);
                tampered
            }
            (1, _, false) => others[self.rng.random_range(0..others.len())].clone(),
            (2, Some(own), _) => {
                let real = decode_unverified(&own[0]).expect("the client's own copy decodes");
                // New money: an order number never issued, signed with a foreign key.
                let mut invented = real.clone();
                invented.order_no.rain_id = invented.order_no.rain_id.wrapping_add(1_000_000);
                self.forger.sign(&invented).expect("the forger signs")
            }
            _ => b"not a token".to_vec(),
        }
    }

    /// Tick until nothing is pending or inflight, bounded by the plan.
    async fn drain(&mut self) -> anyhow::Result<()> {
        let Some(worker) = &self.worker else {
            return Ok(());
        };
        let drain_started_ms = self.clock.now_ms();
        let mut backlog = worker.backlog().await?;
        while backlog > 0 || self.worker.as_ref().is_some_and(CreditWorker::has_retry) {
            if self.next_tick_ms > drain_started_ms + self.scenario.crediting.drain_ms_max {
                break; // I4 reports what is left
            }
            let now_ms = self.next_tick_ms;
            self.clock.set(now_ms);
            self.apply_faults(now_ms);
            self.tick(now_ms).await?;
            self.next_tick_ms += self.scenario.crediting.tick_interval_ms;
            backlog = match &self.worker {
                Some(worker) => worker.backlog().await?,
                None => 0,
            };
        }
        self.summary.drain_ms = self.clock.now_ms() - drain_started_ms;
        Ok(())
    }
}

fn progress_bar(len: u64, enabled: bool) -> ProgressBar {
    if !enabled {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template(
        "{spinner} {elapsed_precise} [{wide_bar}] {pos}/{len} requests ({per_sec}, eta {eta})",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar
}

/// BLAKE3 over the JSON of every event, in order.
pub fn history_hash(history: &History) -> String {
    let mut hasher = blake3::Hasher::new();
    for event in &history.events {
        // Serialising plain data structs to JSON cannot fail.
        let line = serde_json::to_vec(event).expect("events serialise");
        hasher.update(&line);
        hasher.update(b"\n");
    }
    hasher.finalize().to_hex().to_string()
}

fn event_label(event: &Event) -> String {
    match event {
        Event::Issue { outcome, .. } => format!("issue.{}", outcome.label()),
        Event::Withdraw { outcome, .. } => format!("withdraw.{}", outcome.label()),
        Event::View { .. } => "view".to_owned(),
        Event::Switch { switch, on, .. } => format!(
            "switch.{}.{}",
            switch.name(),
            if *on { "on" } else { "off" }
        ),
        Event::WorkerCrash { .. } => "fault.worker_crash".to_owned(),
        Event::CounterRead { .. } => "counter.read".to_owned(),
    }
}

#[allow(clippy::too_many_arguments)]
fn record(
    scenario: &Scenario,
    seed: u64,
    options: &RunOptions,
    history: &History,
    state: &FinalState,
    violations: &[Violation],
    crediting: CreditingSummary,
    counter: Option<CounterSummary>,
    elapsed_ms: u64,
) -> RunRecord {
    let mut outcomes: BTreeMap<String, u64> = BTreeMap::new();
    for event in &history.events {
        // Counter polls are not requests; the counter summary counts them.
        if !matches!(event, Event::CounterRead { .. }) {
            *outcomes.entry(event_label(event)).or_default() += 1;
        }
    }
    let mut totals = Totals {
        entries: state.ledger.entries.len() as u64,
        accounts: state.ledger.accounts.len() as u64,
        ..Totals::default()
    };
    for entry in &state.ledger.entries {
        match &entry.kind {
            EntryKind::Credit {
                award: Award::Cash { amount_cents },
                ..
            } => {
                totals.cash_credited_cents =
                    totals.cash_credited_cents.saturating_add(*amount_cents);
            }
            EntryKind::Credit {
                award: Award::Coupon { .. },
                ..
            } => totals.coupons += 1,
            EntryKind::Credit {
                award: Award::Pendant { .. },
                ..
            } => totals.pendants += 1,
            EntryKind::Withdrawal { amount_cents, .. } => {
                totals.cash_withdrawn_cents =
                    totals.cash_withdrawn_cents.saturating_add(*amount_cents);
            }
        }
    }
    // A broken store can report anything; the record must still be written.
    totals.balance_cents = state
        .ledger
        .accounts
        .iter()
        .fold(0u64, |sum, a| sum.saturating_add(a.balance_cents));
    let invariants = Invariant::CHECKED
        .into_iter()
        .map(|invariant| {
            let mine: Vec<&Violation> = violations
                .iter()
                .filter(|v| v.invariant == invariant)
                .collect();
            Verdict {
                id: invariant.id().to_owned(),
                name: invariant.name().to_owned(),
                passed: mine.is_empty(),
                violations: mine.len() as u64,
                examples: mine
                    .iter()
                    .take(EXAMPLES_MAX)
                    .map(|v| format!("{}: {}", v.culprit, v.detail))
                    .collect(),
            }
        })
        .collect();
    let urls = store_urls(scenario, options);
    let mut reproduce = format!(
        "redrain run {} --seed {seed} --ledger {} --kv {}",
        scenario.path.display(),
        reference::redact_url(&urls.ledger),
        reference::redact_url(&urls.kv),
    );
    if let Some(requests) = options.requests {
        reproduce.push_str(&format!(" --requests {requests}"));
    }
    reproduce.push_str(&format!("   # {}", build_id()));
    let requests = scenario.requests;
    let uses_tokens = scenario.token_keys.is_some();
    RunRecord {
        version: RUN_RECORD_VERSION,
        scenario: ScenarioInfo {
            name: scenario.name.clone(),
            file: scenario.path.display().to_string(),
            seed,
            requests,
            duration_ms: scenario.duration_ms,
        },
        build: build_id(),
        ledger_url: reference::redact_url(&urls.ledger),
        kv_url: reference::redact_url(&urls.kv),
        shadow: scenario.shadow,
        history_hash: history_hash(history),
        outcomes,
        totals,
        crediting: uses_tokens.then_some(crediting),
        counter,
        wall: Wall {
            elapsed_ms,
            requests_per_s: requests as f64 * 1000.0 / elapsed_ms.max(1) as f64,
        },
        invariants,
        reproduce,
    }
}
