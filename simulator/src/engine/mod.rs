//! The virtual-time engine: drives the reference wallet with a scenario's trace
//! (generated, or an exported one replayed). Between requests it runs every
//! background `tick(now)` — credit worker, coupon pipeline, hot-counter
//! instances — applies faults on schedule, gates requests by the capacity model,
//! plays the client side (keeping token copies, presenting them on withdraw,
//! sometimes with a forged one) and records one row of figures per virtual
//! second. At the end it drains the backlog, reads the final state, runs the
//! checkers and builds the [`RunRecord`].

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use reference::config::{AwardDef, Crediting};
use reference::counter::{LocalCounter, LocalCounterConfig, SplitCounter};
use reference::kv::{Kv, KvFaults, MemoryKv, RedisKv};
use reference::ledger::{Award, EntryKind, Ledger, LedgerOptions};
use reference::pipeline::{CouponPipeline, PipelineConfig};
use reference::switches::Switches;
use reference::token::{KeyRing, decode_unverified};
use reference::wallet::{CLIENT_TOKENS_MAX, IssueOutcome, Wallet, WithdrawOutcome};
use reference::worker::{CreditWorker, TickReport};
use reference::{Clock, ManualClock, kv, ledger};
use reports::{
    CapacitySummary, CounterSummary, CreditingSummary, DelaySummary, GateFigures, MidwayCheck,
    RUN_RECORD_VERSION, RunRecord, ScenarioInfo, SecondSample, StockSample, StoresSummary, Totals,
    TraceInfo, Verdict, ViewSummary, Wall,
};

use crate::scenario::capacity::Capacity;
use crate::check::{self, Invariant, Violation};
use crate::history::{Event, FinalState, History, RealStores};
use crate::stores::meter::{MeteredKv, MeteredLedger};
use crate::scenario::{CounterKind, CounterPlan, FaultKind, Scenario, StoreUrls};
use crate::trace::{Op, Request, Shard, Trace, TraceHasher, TraceReader};

/// Examples of violations kept per invariant in the record.
const EXAMPLES_MAX: usize = 5;
/// Seed domain of the client RNG (forgeries), apart from the workload's.
const CLIENT_RNG_NAME: u64 = 0x636c_6965_6e74; // "client"
/// Key id forgers sign with (the wallet's dev key is id 0).
const FORGER_KEY_ID: u32 = 1;
/// Longest credit delay the histogram tells apart (a day); longer ones count as a day.
const DELAY_MAX_MS: u64 = 86_400_000;
/// Flow lines a simulated wallet page asks for.
const VIEW_PAGE_LIMIT: usize = 20;

/// How to run a scenario.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Overrides the scenario's seed.
    pub seed: Option<u64>,
    /// Overrides the scenario's request count (a scenario without phases), or
    /// stops a phased scenario's trace after this many requests.
    pub requests: Option<u64>,
    /// Overrides the scenario's sample rate.
    pub sample_rate: Option<f64>,
    /// Run only this shard of the trace.
    pub shard: Option<Shard>,
    /// Send the requests of this exported trace instead of generating them.
    pub replay: Option<PathBuf>,
    /// Overrides the scenario's ledger URL (`[stores] ledger`).
    pub ledger_url: Option<String>,
    /// Overrides the scenario's KV URL (`[stores] kv`).
    pub kv_url: Option<String>,
    /// Also check the invariants every this many virtual seconds, on a
    /// snapshot of the stores (I4 then allows work in flight).
    pub check_every_s: Option<u64>,
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

/// The scenario as run: the options' overrides applied, the tree scaled to the sample.
pub fn effective_scenario(scenario: &Scenario, options: &RunOptions) -> Scenario {
    let mut scenario = scenario.clone();
    if let Some(rate) = options.sample_rate {
        scenario.sample_rate = rate;
    }
    if let Some(requests) = options.requests {
        match scenario.phases.as_mut_slice() {
            [only] if only.count.is_some() => only.count = Some(requests),
            _ => scenario.request_limit = Some(requests),
        }
    }
    scenario.tree = scenario.tree.scaled(scenario.sample_rate);
    scenario
}

/// The ops a run sends: the generated trace, or an exported one replayed.
/// Where a run's requests come from.
enum TraceSource {
    /// Generated from the scenario (owned: the producing thread keeps it).
    Generated {
        scenario: Box<Scenario>,
        seed: u64,
        shard: Option<Shard>,
    },
    /// Read from an exported trace.
    Replay(TraceReader<std::io::BufReader<std::fs::File>>),
}

/// Ops a producing thread sends at once.
const TRACE_BATCH_OPS: usize = 4096;
/// Batches in flight between the producing thread and the engine.
const TRACE_BATCHES_MAX: usize = 8;

/// The trace generated (or read) and hashed on a thread of its own, so the
/// engine's thread only runs the wallet: the same ops in the same order, the
/// same hash. Bounded: at most [`TRACE_BATCHES_MAX`] batches wait.
struct TraceThread {
    batches: std::sync::mpsc::Receiver<Vec<anyhow::Result<Op>>>,
    current: std::vec::IntoIter<anyhow::Result<Op>>,
    producer: Option<std::thread::JoinHandle<TraceHasher>>,
}

impl TraceThread {
    fn spawn(source: TraceSource) -> anyhow::Result<Self> {
        let (sender, batches) = std::sync::mpsc::sync_channel(TRACE_BATCHES_MAX);
        let producer = std::thread::Builder::new()
            .name("redrain-trace".to_owned())
            .spawn(move || {
                let mut hasher = TraceHasher::default();
                let mut batch = Vec::with_capacity(TRACE_BATCH_OPS);
                let mut push = |item: anyhow::Result<Op>, batch: &mut Vec<_>| {
                    if let Ok(op) = &item {
                        hasher.add(op);
                    }
                    batch.push(item);
                    // A closed channel: the engine stopped; so does the trace.
                    batch.len() < TRACE_BATCH_OPS || sender.send(std::mem::take(batch)).is_ok()
                };
                match source {
                    TraceSource::Generated {
                        scenario,
                        seed,
                        shard,
                    } => {
                        for op in Trace::new(&scenario, seed).with_shard(shard) {
                            if !push(Ok(op), &mut batch) {
                                break;
                            }
                        }
                    }
                    TraceSource::Replay(reader) => {
                        for op in reader {
                            let failed = op.is_err();
                            if !push(op.map_err(anyhow::Error::from), &mut batch) || failed {
                                break;
                            }
                        }
                    }
                }
                if !batch.is_empty() {
                    let _ = sender.send(batch);
                }
                hasher
            })
            .context("starting the trace thread")?;
        Ok(Self {
            batches,
            current: Vec::new().into_iter(),
            producer: Some(producer),
        })
    }

    /// The hash of every op produced; waits for the producing thread.
    fn finish(mut self) -> TraceHasher {
        let producer = self.producer.take().expect("finished once");
        // Unblock a producer waiting to send (the engine stopped early).
        drop(self.batches);
        // The producer only panics on a bug; pass it on.
        producer
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }
}

impl Iterator for TraceThread {
    type Item = anyhow::Result<Op>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(op) = self.current.next() {
                return Some(op);
            }
            // Disconnected: the producer sent its last batch.
            self.current = self.batches.recv().ok()?.into_iter();
        }
    }
}

/// Run `scenario` on the given stores.
pub async fn run_on(
    scenario: &Scenario,
    options: &RunOptions,
    stores: Stores,
) -> anyhow::Result<RunOutput> {
    let scenario = effective_scenario(scenario, options);
    let seed = options.seed.unwrap_or(scenario.seed);
    let (ops, source) = match &options.replay {
        None => (
            TraceSource::Generated {
                scenario: Box::new(scenario.clone()),
                seed,
                shard: options.shard,
            },
            "generated".to_owned(),
        ),
        Some(path) => {
            let file = std::fs::File::open(path)
                .with_context(|| format!("opening the trace {}", path.display()))?;
            let reader =
                TraceReader::new(&path.display().to_string(), std::io::BufReader::new(file))?;
            anyhow::ensure!(
                reader.header.scenario == scenario.name,
                "{} is a trace of scenario `{}`, not `{}`",
                path.display(),
                reader.header.scenario,
                scenario.name
            );
            (TraceSource::Replay(reader), path.display().to_string())
        }
    };
    let ops = TraceThread::spawn(ops)?;
    run_ops(&scenario, seed, options, stores, ops, source).await
}

async fn run_ops(
    scenario: &Scenario,
    seed: u64,
    options: &RunOptions,
    stores: Stores,
    ops: TraceThread,
    source: String,
) -> anyhow::Result<RunOutput> {
    let keys = match &scenario.token_keys {
        Some(source) => Some(Arc::new(source.load(seed).context("loading token keys")?)),
        None => None,
    };
    let tree = Arc::new(scenario.tree.clone());
    // The stores that serve this run's traffic are metered (calls per second,
    // and the switch that takes them down on a fault schedule).
    let (serve_ledger, serve_kv) = match (&stores.shadow, scenario.shadow) {
        (Some(shadow), true) => (shadow.ledger.clone(), shadow.kv.clone()),
        (None, true) => anyhow::bail!("a shadow scenario needs shadow stores"),
        _ => (stores.ledger.clone(), stores.kv.clone()),
    };
    let ledger_meter = Arc::new(
        MeteredLedger::new(serve_ledger.clone()).with_clock(stores.clock.clone() as Arc<dyn Clock>),
    );
    let kv_meter = Arc::new(MeteredKv::new(serve_kv.clone()));
    let mut wallet = if scenario.shadow {
        Wallet::new(
            tree.clone(),
            stores.ledger.clone(),
            stores.kv.clone(),
            stores.clock.clone(),
        )
        .with_shadow_stores(ledger_meter.clone(), kv_meter.clone())
    } else {
        Wallet::new(
            tree.clone(),
            ledger_meter.clone(),
            kv_meter.clone(),
            stores.clock.clone(),
        )
    };
    if let Some(wallet_keys) = stores.wallet_keys.clone().or_else(|| keys.clone()) {
        wallet = wallet.with_keys(wallet_keys);
    }
    let serving = wallet.route(scenario.shadow)?;
    // What the checkers read, past the meters (their reads are not the wallet's).
    let snapshot = Snapshot {
        ledger: serve_ledger.clone(),
        kv: serve_kv.clone(),
        children: tree
            .activities()
            .flat_map(|a| a.children.iter().map(|c| c.id))
            .collect(),
        keys: keys.clone(),
    };
    let started = Instant::now();
    let mut engine = Engine::new(
        scenario,
        seed,
        serving,
        &stores.clock,
        Meters {
            ledger: ledger_meter,
            kv: kv_meter,
        },
        options.progress,
    );
    if let Some(every_s) = options.check_every_s {
        anyhow::ensure!(every_s > 0, "--check-every-s must be at least 1");
        engine.midway = Some(Midway {
            every_s,
            snapshot: snapshot.clone(),
            checks: Vec::new(),
            found: Vec::new(),
            seen: std::collections::BTreeSet::new(),
        });
    }
    engine.run(ops).await?;
    let elapsed = started.elapsed();
    let counter = match &engine.counter {
        Some(rig) => Some(rig.summary(scenario, engine.clock.now_ms()).await),
        None => None,
    };
    let midway = engine.midway.take();
    let mut finished = engine.finish();
    let started_state = Instant::now();
    let mut state = snapshot.read(&finished.history).await?;
    if scenario.shadow {
        state.real_stores = Some(
            RealStores::read(stores.ledger.as_ref(), stores.kv.as_ref())
                .await
                .context("reading the real stores after a shadow run")?,
        );
    }
    finished.spent.insert(
        "final state".to_owned(),
        started_state.elapsed().as_millis() as u64,
    );
    let started_checks = Instant::now();
    let mut violations = check::check_all(&scenario.tree, &finished.history, &state);
    if let Some(midway) = midway {
        finished.midway_checks = midway.checks.clone();
        violations = midway.merge_into(violations);
    }
    finished.spent.insert(
        "checkers".to_owned(),
        started_checks.elapsed().as_millis() as u64,
    );
    let record = record(
        scenario,
        seed,
        options,
        &finished,
        &state,
        &violations,
        counter,
        elapsed.as_millis() as u64,
        source,
    );
    Ok(RunOutput {
        record,
        history: finished.history,
        state,
        violations,
    })
}

/// The meters around the serving stores.
struct Meters {
    ledger: Arc<MeteredLedger>,
    kv: Arc<MeteredKv>,
}

/// What the engine hands over at the end.
pub(crate) struct Finished {
    pub(crate) history: History,
    pub(crate) crediting: CreditingSummary,
    pub(crate) series: Vec<SecondSample>,
    pub(crate) views: ViewSummary,
    pub(crate) delay: Option<DelaySummary>,
    pub(crate) coupon_delay: Option<DelaySummary>,
    pub(crate) capacity: Option<CapacitySummary>,
    pub(crate) stores: StoresSummary,
    pub(crate) trace: TraceInfo,
    pub(crate) refused: BTreeMap<String, u64>,
    pub(crate) spent: BTreeMap<String, u64>,
    pub(crate) midway_checks: Vec<MidwayCheck>,
}

/// Where the checkers read a run's state: the serving stores past the meters.
#[derive(Clone)]
struct Snapshot {
    ledger: Arc<dyn Ledger>,
    kv: Arc<dyn Kv>,
    children: Vec<reference::ChildId>,
    keys: Option<Arc<KeyRing>>,
}

impl Snapshot {
    /// The stores' state now, with the order records `history` names.
    async fn read(&self, history: &History) -> anyhow::Result<FinalState> {
        let state = FinalState::read(self.ledger.as_ref(), self.kv.as_ref())
            .await
            .context("reading the final state")?
            .with_tokens(
                self.kv.as_ref(),
                self.children.clone(),
                self.keys.as_deref(),
            )
            .await
            .context("reading the token backlog")?
            .with_orders(self.kv.as_ref(), history)
            .await
            .context("reading the coupon-pipeline order records")?;
        Ok(state)
    }
}

/// Checks mid-run (`--check-every-s`): every `every_s` virtual seconds the
/// checkers run on the history so far and a snapshot of the stores.
struct Midway {
    every_s: u64,
    snapshot: Snapshot,
    checks: Vec<MidwayCheck>,
    /// Violations found, with the second they were first seen, in the order found.
    found: Vec<(u64, Violation)>,
    /// `found`'s violations, for a lookup per violation of each check.
    seen: std::collections::BTreeSet<(check::Invariant, String, String)>,
}

/// A violation's identity, for telling checks' findings apart.
fn violation_key(v: &Violation) -> (check::Invariant, String, String) {
    (v.invariant, v.culprit.clone(), v.detail.clone())
}

impl Midway {
    /// Check at `at_s` virtual seconds since the start.
    async fn check(
        &mut self,
        tree: &reference::ActivityTree,
        history: &History,
        at_s: u64,
    ) -> anyhow::Result<()> {
        let state = self.snapshot.read(history).await?.midway();
        let violations = check::check_all(tree, history, &state);
        self.checks.push(MidwayCheck {
            t_s: at_s,
            violations: violations.len() as u64,
        });
        for violation in violations {
            if self.seen.insert(violation_key(&violation)) {
                self.found.push((at_s, violation));
            }
        }
        Ok(())
    }

    /// The end's violations, then those seen only mid-run (a violation that
    /// healed by the end still fails the run), in invariant order.
    fn merge_into(self, mut at_end: Vec<Violation>) -> Vec<Violation> {
        let end: std::collections::BTreeSet<_> = at_end.iter().map(violation_key).collect();
        for (t_s, mut violation) in self.found {
            if end.contains(&violation_key(&violation)) {
                continue;
            }
            violation.detail = format!("{} (mid-run, at {t_s} s)", violation.detail);
            at_end.push(violation);
        }
        at_end.sort_by_key(|v| v.invariant);
        at_end
    }
}

/// What a request needs from the capacity model. The database's capacity counts
/// write transactions (the seed's "instances for N TPS" are crediting TPS);
/// reads are served by replicas and caches and are not gated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cost {
    /// Answered from the KV (token cash, pipeline coupons).
    Kv,
    /// A write transaction now (sync credits, withdraws).
    Db,
    /// Reads only (wallet pages).
    Read,
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

/// The hot counter of a run: its own KV (and backup), plan 1's split keys or
/// plan 2's writer and reader instances, and the readers' polling schedule.
struct CounterRig {
    plan: CounterPlan,
    config: LocalCounterConfig,
    backup: Option<Arc<dyn Kv>>,
    switches: Arc<Switches>,
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
    /// The rig of `plan` in a run sending `scale` of the traffic: instances and
    /// polls scale with it (each instance still aggregates and refreshes alone).
    fn new(
        plan: &CounterPlan,
        scale: f64,
        clock: Arc<ManualClock>,
        switches: &Arc<Switches>,
    ) -> Self {
        let mut plan = plan.clone();
        let scaled = |n: u32| ((f64::from(n) * scale).round() as u32).max(1);
        plan.writers = scaled(plan.writers);
        plan.readers = scaled(plan.readers);
        plan.reads_per_s = scaled(plan.reads_per_s);
        let plan = &plan;
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
            config,
            backup,
            switches: switches.clone(),
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

    /// Every instance restarts: writers flush first (a graceful stop), then all
    /// come back with empty local state; readers block until their first refresh.
    async fn restart(&mut self, now_ms: u64) {
        for writer in &self.writers {
            writer.tick(now_ms).await;
        }
        let fresh = |n: usize| -> Vec<LocalCounter> {
            (0..n)
                .map(|_| {
                    LocalCounter::new(
                        &self.config,
                        self.primary.clone(),
                        self.backup.clone(),
                        self.switches.clone(),
                    )
                })
                .collect()
        };
        if self.split.is_none() {
            self.writers = fresh(self.writers.len());
            self.readers = fresh(self.readers.len());
        }
    }

    /// Flush and refresh every instance (writers first), then poll for one tick;
    /// returns the highest value shown.
    async fn tick(&mut self, now_ms: u64, tick_ms: u64, events: &mut Vec<Event>) -> i64 {
        let mut shown_max = 0;
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
            shown_max = shown_max.max(shown);
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
        shown_max
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

    async fn apply_faults(&mut self, now_ms: u64) {
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
                FaultKind::Kv(up) => self.meters.kv.set_down(!up),
                FaultKind::Db(up) => self.meters.ledger.set_down(!up),
                FaultKind::DbSlow(factor) => self.capacity.set_db_factor(factor),
                FaultKind::Restart => {
                    if let Some(pipeline) = self.pipeline.take() {
                        // Graceful: queued work goes to the durable queue first.
                        pipeline.shutdown().await;
                        self.pipeline = Some(CouponPipeline::new(
                            self.wallet.clone(),
                            scaled_pipeline(self.scenario),
                        ));
                    }
                    self.worker =
                        CreditWorker::for_wallet(self.wallet, scaled_worker(self.scenario));
                    if let Some(counter) = &mut self.counter {
                        counter.restart(now_ms).await;
                    }
                }
            }
            self.next_fault += 1;
        }
    }

    async fn tick(&mut self, now_ms: u64) -> anyhow::Result<()> {
        let db_before = self.meters.ledger.figures().writes;
        let started = Instant::now();
        if let Some(worker) = &mut self.worker {
            let report: TickReport = match worker.tick(now_ms).await {
                Ok(report) => report,
                // A store is down: the worker tries again next tick.
                Err(
                    reference::wallet::WalletError::Kv(_)
                    | reference::wallet::WalletError::Ledger(_),
                ) => {
                    *self
                        .refused
                        .entry("fault.worker_tick_failed".to_owned())
                        .or_default() += 1;
                    TickReport::default()
                }
                Err(e) => return Err(anyhow::Error::from(e).context("credit worker tick")),
            };
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
                self.worker = CreditWorker::for_wallet(self.wallet, scaled_worker(self.scenario));
            }
            if let Some(worker) = &self.worker {
                // A KV that is down cannot say; the last figure stands.
                if let Ok(backlog) = worker.backlog().await {
                    self.backlog = backlog;
                    self.summary.backlog_peak = self.summary.backlog_peak.max(backlog);
                }
            }
        }
        self.spend("credit worker", started);
        let started = Instant::now();
        if let Some(pipeline) = &self.pipeline {
            // A failing store shows in the pipeline's own figures; it retries.
            let _ = pipeline.tick(now_ms).await;
        }
        self.spend("coupon pipeline", started);
        let started = Instant::now();
        if let Some(counter) = &mut self.counter {
            let tick_ms = self.scenario.crediting.tick_interval_ms;
            let shown = counter
                .tick(now_ms, tick_ms, &mut self.history.events)
                .await;
            self.window.counter_shown = self.window.counter_shown.max(shown);
        }
        self.spend("hot counter", started);
        // Background crediting uses the database's capacity too.
        let used = self.meters.ledger.figures().writes - db_before;
        self.capacity.charge_db(now_ms, used);
        Ok(())
    }

    /// The capacity gates a request passes before the wallet sees it: app
    /// instances, then the database or the KV, then the hot key of a coupon
    /// template. `Some(reason)` turns it away.
    fn admit(&mut self, op: &Op) -> Option<&'static str> {
        let now_ms = op.at_ms;
        if !self.capacity.app.try_take(now_ms, 1) {
            return Some("capacity.app");
        }
        let (cost, template) = self.cost(&op.request);
        match cost {
            Cost::Db if !self.capacity.db.try_take(now_ms, 1) => return Some("capacity.db"),
            Cost::Kv if !self.capacity.kv.try_take(now_ms, 1) => return Some("capacity.kv"),
            _ => {}
        }
        if let Some(template) = template
            && !self.capacity.try_key(template, now_ms, 1)
        {
            return Some("capacity.kv_key");
        }
        None
    }

    /// Which store a request leans on, and the coupon template key it hits.
    fn cost(&self, request: &Request) -> (Cost, Option<u64>) {
        let issue = match request {
            Request::Issue(issue) => issue,
            Request::Withdraw(_) => return (Cost::Db, None),
            Request::View { .. } => return (Cost::Read, None),
        };
        let Some(activity) = self.scenario.tree.activity(issue.activity_id) else {
            return (Cost::Kv, None);
        };
        let scene = issue
            .order_no
            .split('_')
            .nth(1)
            .and_then(|s| s.parse::<u32>().ok())
            .and_then(|id| activity.scenes.get(&id));
        match scene {
            // One stock INCR per request on the template's key: the hot key.
            Some(s) if s.crediting == Crediting::Sync => {
                let template = if s.stock_control {
                    self.template_of(issue)
                } else {
                    None
                };
                (Cost::Db, template)
            }
            _ => (Cost::Kv, None),
        }
    }

    /// The coupon template an award request names, if it names one.
    fn template_of(&self, issue: &reference::wallet::IssueRequest) -> Option<u64> {
        match self
            .scenario
            .tree
            .activity(issue.activity_id)?
            .awards
            .get(&issue.award_id)?
        {
            AwardDef::Coupon(c) => Some(c.template_id),
            _ => None,
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

    fn note_outcome(&mut self, label: &str, success: bool) {
        if success {
            self.window.awarded += 1;
        } else if label != "duplicate" {
            *self.window.rejected.entry(label.to_owned()).or_default() += 1;
        }
    }

    async fn send(&mut self, request: Request) -> anyhow::Result<()> {
        let at_ms = self.clock.now_ms();
        let event = match request {
            Request::Issue(request) => {
                let answer = match &self.pipeline {
                    Some(pipeline) => pipeline.issue(&request, false).await,
                    None => self.wallet.issue(&request).await,
                };
                let Some(outcome) = self
                    .answered(answer)
                    .with_context(|| format!("issuing {}", request.order_no))?
                else {
                    return Ok(());
                };
                if let IssueOutcome::Accepted { token } | IssueOutcome::DuplicateToken { token } =
                    &outcome
                {
                    let copies = self.client_tokens.entry(token.act_id).or_default();
                    if copies.is_empty() {
                        self.token_holders.push(token.act_id);
                    }
                    if !copies.contains(&token.bytes) {
                        copies.push(token.bytes.clone());
                    }
                    if matches!(outcome, IssueOutcome::Accepted { .. }) {
                        self.summary.accepted += 1;
                    }
                }
                let success = matches!(
                    outcome,
                    IssueOutcome::Issued { .. }
                        | IssueOutcome::Accepted { .. }
                        | IssueOutcome::Queued { .. }
                );
                self.note_outcome(outcome.label(), success);
                let cents = outcome.newly_awarded_cents();
                if cents > 0 {
                    // Awarded, so the order number parsed.
                    let act_id = request
                        .order_no
                        .parse::<reference::OrderNo>()
                        .map_or(0, |o| o.act_id);
                    *self.owed.entry(act_id).or_default() += cents;
                    if let Some(counter) = &mut self.counter {
                        counter.add(act_id, cents).await;
                    }
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
                    .map(|c| {
                        let keep = c.len().min(CLIENT_TOKENS_MAX - 1);
                        c[c.len() - keep..].to_vec()
                    })
                    .unwrap_or_default();
                request.client_tokens = copies;
                if self.rng.random::<f64>() < self.scenario.traffic.forged_token_rate {
                    request.client_tokens.push(self.forge(request.act_id));
                    self.summary.forged_presented += 1;
                }
                let answer = self.wallet.withdraw(&request).await;
                let Some(outcome) = self
                    .answered(answer)
                    .with_context(|| format!("withdrawing {}", request.withdraw_no))?
                else {
                    return Ok(());
                };
                if let WithdrawOutcome::Withdrawn { force, .. }
                | WithdrawOutcome::Rejected { force, .. } = &outcome
                {
                    self.summary.force_credited += u64::from(force.credited);
                }
                if let WithdrawOutcome::Withdrawn { .. } = &outcome {
                    let owed = self.owed.entry(request.act_id).or_default();
                    *owed = owed.saturating_sub(request.amount_cents.max(0) as u64);
                }
                let label = outcome.label();
                self.note_outcome(label, label == "withdrawn");
                Event::Withdraw {
                    at_ms,
                    request,
                    outcome,
                }
            }
            Request::View { act_id } => {
                let activity_id = self.scenario.activity_id;
                let answer = self
                    .wallet
                    .view(activity_id, act_id, None, VIEW_PAGE_LIMIT)
                    .await;
                let Some(page) = self.answered(answer).context("viewing the wallet")? else {
                    return Ok(());
                };
                match page {
                    Ok(view) => {
                        self.views.views += 1;
                        let owed = self.owed.get(&act_id).copied().unwrap_or(0);
                        if view.complete && view.balance_cents < owed {
                            self.views.short += 1;
                        }
                        if view.pending_cents > 0 {
                            self.views.plain_async_short += 1;
                            self.views.plain_async_hidden_max_cents = self
                                .views
                                .plain_async_hidden_max_cents
                                .max(view.pending_cents);
                        }
                        Event::View {
                            at_ms,
                            activity_id,
                            act_id,
                            view,
                        }
                    }
                    // No child open: nothing to show, nothing to check.
                    Err(_) => return Ok(()),
                }
            }
        };
        self.history.events.push(event);
        Ok(())
    }

    /// The wallet's answer, or `None` when a store failed under it (a fault: the
    /// client sees a server error, counted as `error.ledger` / `error.kv`, and the
    /// request is not in the history). Other errors end the run: they are bugs.
    fn answered<T>(
        &mut self,
        answer: Result<T, reference::wallet::WalletError>,
    ) -> anyhow::Result<Option<T>> {
        let label = match &answer {
            Ok(_) => return Ok(answer.ok()),
            Err(reference::wallet::WalletError::Ledger(_)) => "error.ledger",
            Err(reference::wallet::WalletError::Kv(_)) => "error.kv",
            Err(_) => return answer.map(Some).map_err(anyhow::Error::from),
        };
        *self.window.rejected.entry(label.to_owned()).or_default() += 1;
        *self.refused.entry(label.to_owned()).or_default() += 1;
        Ok(None)
    }

    /// A token the wallet must refuse: a changed byte, another user's token, an
    /// invented order signed with a foreign key, or junk.
    fn forge(&mut self, act_id: u64) -> Vec<u8> {
        let own = self
            .client_tokens
            .get(&act_id)
            .filter(|c| !c.is_empty())
            .cloned();
        let kind = self.rng.random_range(0..4u8);
        match (kind, own) {
            (0, Some(own)) => {
                let mut tampered = own[self.rng.random_range(0..own.len())].clone();
                let index = self.rng.random_range(0..tampered.len());
                tampered[index] ^= 1 << self.rng.random_range(0..8u32);
                tampered
            }
            (1, _) => {
                // Another user's copy.
                let holders = self.token_holders.len();
                if holders == 0 || (holders == 1 && self.token_holders[0] == act_id) {
                    return b"not a token".to_vec();
                }
                let mut index = self.rng.random_range(0..holders);
                if self.token_holders[index] == act_id {
                    index = (index + 1) % holders;
                }
                let copies = &self.client_tokens[&self.token_holders[index]];
                copies[self.rng.random_range(0..copies.len())].clone()
            }
            (2, Some(own)) => {
                let real = decode_unverified(&own[0]).expect("the client's own copy decodes");
                // New money: an order number never issued, signed with a foreign key.
                let mut invented = real.clone();
                invented.order_no.rain_id = invented.order_no.rain_id.wrapping_add(1_000_000);
                self.forger.sign(&invented).expect("the forger signs")
            }
            _ => b"not a token".to_vec(),
        }
    }

    /// Whether background work is left: tokens pending or inflight, a worker
    /// retry, coupon orders queued or handed off.
    async fn busy(&self) -> bool {
        let tokens = self.backlog > 0 || self.worker.as_ref().is_some_and(CreditWorker::has_retry);
        let pipeline = match &self.pipeline {
            Some(pipeline) => {
                pipeline.depths() != (0, 0)
                    || self
                        .wallet
                        .kv()
                        .queue_len(&reference::keys::orders_handoff())
                        .await
                        .map_or(true, |n| n > 0)
            }
            None => false,
        };
        tokens || pipeline
    }

    /// Tick until nothing is left to credit, bounded by the plan.
    async fn drain(&mut self) -> anyhow::Result<()> {
        let drain_started_ms = self.next_tick_ms;
        if let Some(worker) = &self.worker {
            self.backlog = worker.backlog().await.unwrap_or(self.backlog);
        }
        while self.busy().await {
            if self.next_tick_ms > drain_started_ms + self.scenario.crediting.drain_ms_max {
                break; // I4 reports what is left
            }
            let until = self.next_tick_ms;
            self.advance_to(until).await?;
        }
        self.summary.drain_ms = self.next_tick_ms.saturating_sub(drain_started_ms);
        // The last, partial second.
        if self.window.offered > 0 || self.series.is_empty() {
            self.close_second().await?;
        }
        Ok(())
    }

    /// With `--check-every-s`: check the invariants when `seconds` virtual
    /// seconds since the start are a multiple of the interval.
    async fn check_midway(&mut self, seconds: u64) -> anyhow::Result<()> {
        if let Some(midway) = &mut self.midway
            && seconds.is_multiple_of(midway.every_s)
        {
            midway
                .check(&self.scenario.tree, &self.history, seconds)
                .await?;
        }
        Ok(())
    }

    /// End the current virtual second: one row of the series. Returns the
    /// virtual seconds since the start at its end.
    async fn close_second(&mut self) -> anyhow::Result<u64> {
        let t_s = (self.next_second_ms - self.scenario.start_ms) / 1000 - 1;
        let gate_window = (self.next_second_ms - 1000) / 1000;
        self.next_second_ms += 1000;
        let window = std::mem::take(&mut self.window);
        let credits = self.meters.ledger.take_credit_window();
        for delay in &credits.delays {
            self.delays.saturating_record(*delay);
        }
        for delay in &credits.coupon_delays {
            self.coupon_delays.saturating_record(*delay);
        }
        let kv = self.meters.kv.take_window();
        let db = self.meters.ledger.take_window();
        let (mut consumed, mut stock) = (0, 0);
        let mut per_template = BTreeMap::new();
        for template in &self.templates {
            if let Ok(Ok(view)) = self
                .wallet
                .coupon_stock(self.scenario.activity_id, *template)
                .await
            {
                consumed += view.consumed;
                stock += view.total;
                per_template.insert(
                    template.to_string(),
                    StockSample {
                        consumed: view.consumed,
                        total: view.total,
                    },
                );
                if !view.should_offer {
                    self.withdrawn_offers.insert(*template);
                }
            }
        }
        let quantile = |q: f64| {
            let mut sorted = credits.delays.clone();
            sorted.sort_unstable();
            if sorted.is_empty() {
                0
            } else {
                sorted[((sorted.len() - 1) as f64 * q).round() as usize]
            }
        };
        let (db_writes, db_limit) = self.capacity.db.window_figures(gate_window);
        let (_, kv_limit) = self.capacity.kv.window_figures(gate_window);
        self.peak_awarded = self.peak_awarded.max(window.offered_awards);
        self.series.push(SecondSample {
            t_s,
            offered: window.offered,
            awarded: window.awarded,
            rejected: window.rejected,
            credited: credits.credited,
            backlog: self.backlog,
            pipeline_depth: self.pipeline.as_ref().map_or(0, |p| {
                let (a, b) = p.depths();
                a + b
            }),
            delay_p50_ms: quantile(0.5),
            delay_p99_ms: quantile(0.99),
            delay_p999_ms: quantile(0.999),
            delay_max_ms: credits.delays.iter().copied().max().unwrap_or(0),
            coupons_consumed: consumed,
            coupon_stock: stock,
            stock: per_template,
            counter_shown: window.counter_shown,
            counter_true: self.counter.as_ref().map_or(0, |c| c.true_total),
            kv_ops: kv.calls,
            db_ops: db.calls,
            db_writes,
            db_limit: db_limit.unwrap_or(0),
            kv_limit: kv_limit.unwrap_or(0),
            latency_p99_us: 0,
        });
        self.bar.set_position(t_s + 1);
        Ok(t_s + 1)
    }

    fn finish(self) -> Finished {
        let scale = self.scenario.sample_rate;
        let summary = |delays: &Histogram<u64>| {
            (!delays.is_empty()).then(|| DelaySummary {
                count: delays.len(),
                p50_ms: delays.value_at_quantile(0.5),
                p90_ms: delays.value_at_quantile(0.9),
                p99_ms: delays.value_at_quantile(0.99),
                p999_ms: delays.value_at_quantile(0.999),
                max_ms: delays.max(),
            })
        };
        let delay = summary(&self.delays);
        let coupon_delay = summary(&self.coupon_delays);
        let capacity = self.scenario.capacity.is_modelled().then(|| {
            let peak_award_qps = self.peak_awarded as f64 / scale;
            let model = self.scenario.capacity.db_model();
            CapacitySummary {
                gates: {
                    let f = self.capacity.figures();
                    [
                        ("app", f.app),
                        ("db", f.db),
                        ("kv", f.kv),
                        ("kv_key", f.kv_key),
                    ]
                    .into_iter()
                    .map(|(name, t)| {
                        (
                            name.to_owned(),
                            GateFigures {
                                admitted: t.admitted,
                                refused: t.refused,
                            },
                        )
                    })
                    .collect()
                },
                sync_db_instances_needed: model.and_then(|m| m.instances_for(peak_award_qps)),
                peak_award_qps,
                db_tps: model.map_or(0.0, |m| m.throughput(self.scenario.capacity.db_instances)),
            }
        });
        let kv = self.meters.kv.figures();
        let db = self.meters.ledger.figures();
        let stores = StoresSummary {
            kv_calls: kv.calls,
            db_calls: db.calls,
            kv_peak_per_s: self.series.iter().map(|s| s.kv_ops).max().unwrap_or(0),
            db_peak_per_s: self.series.iter().map(|s| s.db_ops).max().unwrap_or(0),
        };
        Finished {
            history: self.history,
            crediting: self.summary,
            series: self.series,
            views: self.views,
            delay,
            coupon_delay,
            capacity,
            stores,
            trace: TraceInfo {
                hash: self.trace.finish(),
                ops: self.trace.ops(),
                shard: None,
                source: String::new(),
            },
            refused: self.refused,
            spent: self
                .spent
                .into_iter()
                .map(|(part, d)| (part.to_owned(), d.as_millis() as u64))
                .collect(),
            midway_checks: Vec::new(),
        }
    }
}

/// The worker's knobs for a sampled run: its credit rate scales with the sample.
pub(crate) fn scaled_worker(scenario: &Scenario) -> reference::worker::WorkerConfig {
    let mut worker = scenario.crediting.worker.clone();
    if worker.credit_tps > 0 {
        worker.credit_tps =
            ((worker.credit_tps as f64 * scenario.sample_rate).round() as u64).max(1);
    }
    worker
}

/// The pipeline's knobs for a sampled run: its rates scale with the sample.
pub(crate) fn scaled_pipeline(scenario: &Scenario) -> PipelineConfig {
    let mut config = scenario.pipeline.clone();
    let scale = |n: u32| ((f64::from(n) * scenario.sample_rate).round() as u32).max(1);
    config.activity_rate_per_s = scale(config.activity_rate_per_s);
    config.asset_rate_per_s = scale(config.asset_rate_per_s);
    config
}

/// Whether any scene of `tree` issues through the coupon pipeline.
pub fn has_pipeline_scenes(tree: &reference::ActivityTree) -> bool {
    tree.activities().any(|a| {
        a.scenes
            .values()
            .any(|s| s.crediting == Crediting::Pipeline)
    })
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
pub(crate) fn record(
    scenario: &Scenario,
    seed: u64,
    options: &RunOptions,
    finished: &Finished,
    state: &FinalState,
    violations: &[Violation],
    counter: Option<CounterSummary>,
    elapsed_ms: u64,
    source: String,
) -> RunRecord {
    let history = &finished.history;
    let mut outcomes: BTreeMap<String, u64> = finished.refused.clone();
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
    let requests = finished.trace.ops;
    let uses_tokens = scenario.token_keys.is_some();
    let mut trace = finished.trace.clone();
    trace.shard = options.shard.map(|s| s.to_string());
    trace.source = source;
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
        ledger_url: reference::redact_url(&store_urls(scenario, options).ledger),
        kv_url: reference::redact_url(&store_urls(scenario, options).kv),
        shadow: scenario.shadow,
        sample_rate: scenario.sample_rate,
        trace,
        history_hash: history_hash(history),
        outcomes,
        totals,
        crediting: uses_tokens.then(|| finished.crediting.clone()),
        counter,
        delay: finished.delay.clone(),
        coupon_delay: finished.coupon_delay.clone(),
        views: finished.views.clone(),
        capacity: finished.capacity.clone(),
        stores: finished.stores.clone(),
        series: finished.series.clone(),
        midway_checks: finished.midway_checks.clone(),
        wall: Wall {
            elapsed_ms,
            requests_per_s: requests as f64 * 1000.0 / elapsed_ms.max(1) as f64,
            spent_ms: finished.spent.clone(),
        },
        invariants,
        reproduce: reproduce_command(scenario, seed, options),
        live: None,
    }
}

/// The command that runs this again: scenario, seed, sample rate, stores, cap,
/// shard or replayed trace, and the build.
pub fn reproduce_command(scenario: &Scenario, seed: u64, options: &RunOptions) -> String {
    let urls = store_urls(scenario, options);
    let mut reproduce = match &options.replay {
        Some(path) => format!(
            "redrain trace replay {} {}",
            scenario.path.display(),
            path.display()
        ),
        None => format!("redrain run {}", scenario.path.display()),
    };
    reproduce.push_str(&format!(
        " --seed {seed} --sample {} --ledger {} --kv {}",
        scenario.sample_rate,
        reference::redact_url(&urls.ledger),
        reference::redact_url(&urls.kv),
    ));
    if let Some(requests) = options.requests {
        reproduce.push_str(&format!(" --requests {requests}"));
    }
    if let Some(shard) = options.shard {
        reproduce.push_str(&format!(" --shard {shard}"));
    }
    if let Some(every_s) = options.check_every_s {
        reproduce.push_str(&format!(" --check-every-s {every_s}"));
    }
    reproduce.push_str(&format!("   # {}", build_id()));
    reproduce
}

/// The record as JSON without its wall-clock fields: what must be byte-identical
/// between two runs of the same scenario, seed and options.
pub fn deterministic_json(record: &RunRecord) -> String {
    let mut record = record.clone();
    record.wall = Wall::default();
    // Plain data serialises without failing.
    serde_json::to_string_pretty(&record).expect("records serialise")
}

/// Where two records differ (apart from wall-clock fields): the first differing
/// line of their JSON, or `None` when they are byte-identical.
pub fn record_difference(a: &RunRecord, b: &RunRecord) -> Option<String> {
    let (a, b) = (deterministic_json(a), deterministic_json(b));
    if a == b {
        return None;
    }
    let line = a
        .lines()
        .zip(b.lines())
        .enumerate()
        .find(|(_, (x, y))| x != y)
        .map(|(i, (x, y))| format!("line {}: `{}` vs `{}`", i + 1, x.trim(), y.trim()))
        .unwrap_or_else(|| "the records differ in length".to_owned());
    Some(line)
}

/// Run the scenario twice and compare the records; the first run's output and
/// the difference, if any.
pub async fn check_determinism(
    scenario: &Scenario,
    options: &RunOptions,
) -> anyhow::Result<(RunOutput, Option<String>)> {
    let quiet = RunOptions {
        progress: false,
        ..options.clone()
    };
    let first = run_scenario(scenario, options).await?;
    let second = run_scenario(scenario, &quiet).await?;
    let difference = record_difference(&first.record, &second.record);
    Ok((first, difference))
}
