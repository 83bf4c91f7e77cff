//! The scenario file: what to run, for how long, with which mix of requests.
//! This is the foundation's small model (one phase, uniform users); the full
//! simulator grows it into phases, profiles and capacity models.
//!
//! Unknown keys and impossible values get an error naming the file, line and key.

pub mod capacity;

use std::path::{Path, PathBuf};

use reference::config::{
    ConfigError, Crediting, Validator, datetime_ms, parse_toml, read_config_file,
};
use reference::order_no::AwardType;
use reference::pipeline::PipelineConfig;
use reference::switches::Switch;
use reference::token::KeyRing;
use reference::worker::{CrashPoint, WorkerConfig};
use reference::{ActivityTree, Millis};

use crate::scenario::capacity::CapacityFile;
use serde::Deserialize;
use toml::Spanned;
use toml::value::Datetime;

/// Most requests one scenario may ask for.
pub const REQUESTS_MAX: u64 = 50_000_000;

/// A loaded, validated scenario.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// Where it was read from.
    pub path: PathBuf,
    /// For people and file names.
    pub name: String,
    /// Seed of the workload RNG.
    pub seed: u64,
    /// The activity tree the wallet runs.
    pub tree: ActivityTree,
    /// The parent activity requests name.
    pub activity_id: u64,
    /// Virtual time of the first request.
    pub start_ms: Millis,
    /// Virtual duration of the run: requests are sent in `0..duration_ms` after
    /// the start (the drain may run longer).
    pub duration_ms: u64,
    /// Who sends requests: users, skew, app mix.
    pub population: Population,
    /// The share of users simulated (`(0, 1]`): a deterministic subset of users
    /// runs with the full logic; rates, capacities, stocks and budgets are scaled
    /// by it, and aggregate figures are scaled back in reports.
    pub sample_rate: f64,
    /// The traffic over time, in start order; phases may overlap.
    pub phases: Vec<Phase>,
    /// Stop the trace after this many requests (`--requests` on a phased scenario).
    pub request_limit: Option<u64>,
    /// Relative weights of fresh request kinds (phases without their own mix use it).
    pub mix: Mix,
    /// Wallet opens, withdraws and client retries that follow awards.
    pub behaviour: Behaviour,
    /// The capacity model that gates requests (absent: unlimited).
    pub capacity: CapacityFile,
    /// The coupon pipeline of pipeline-mode scenes.
    pub pipeline: PipelineConfig,
    /// Retries, duplicates and bad input.
    pub traffic: Traffic,
    /// Where token keys come from; `None` when no scene credits by token.
    pub token_keys: Option<KeySource>,
    /// The credit worker and its pace.
    pub crediting: CreditingPlan,
    /// Faults at given virtual times, in time order.
    pub faults: Vec<Fault>,
    /// The live hot counter (fireworks total), when the scenario shows one.
    pub counter: Option<CounterPlan>,
    /// The stores the wallet runs on (command-line flags override them).
    pub stores: StoreUrls,
    /// Every request carries the shadow tag: the wallet serves it from the shadow
    /// stores (`shadow_` tables, `shadow:` keys) and the real ones stay untouched.
    pub shadow: bool,
}

/// Who sends requests.
#[derive(Debug, Clone, PartialEq)]
pub struct Population {
    /// Users are act_ids `1..=users`.
    pub users: u64,
    /// Zipf exponent of user activity: user 1 is the most active; 0 = uniform.
    pub zipf: f64,
    /// Relative weights of the eight apps (app ids 1..=8) that share one act_id.
    pub apps: [u32; APPS],
}

/// The eight apps that share one account id.
pub const APPS: usize = 8;

/// One phase of traffic: a rate curve over a time window, with its own mix.
#[derive(Debug, Clone, PartialEq)]
pub struct Phase {
    /// For people and charts.
    pub name: String,
    /// Offset of its first millisecond from the run's start.
    pub start_ms: u64,
    /// Length.
    pub duration_ms: u64,
    /// Shape of the offered rate over the phase.
    pub curve: Curve,
    /// Offered requests per second at the top of the curve (full population).
    pub peak_qps: f64,
    /// Where `ramp` starts and `spike` rests, as a share of `peak_qps`.
    pub base: f64,
    /// Exactly this many requests spread evenly instead of a rate (a scenario
    /// without phases: `[run] requests`).
    pub count: Option<u64>,
    /// Relative weights of fresh request kinds in this phase.
    pub mix: Mix,
    /// Scenes awards are drawn from (all the activity's scenes when `None`).
    pub scenes: Option<Vec<u32>>,
    /// The rain id in order numbers (drawn from `0..traffic.rains` when `None`).
    pub rain_id: Option<u32>,
}

impl Phase {
    /// The offered rate (full population) at `ms` after the phase's start.
    pub fn rate_at(&self, ms: u64) -> f64 {
        let t = ms as f64 / self.duration_ms as f64;
        self.peak_qps * self.curve.level(t, self.base)
    }

    /// Requests the phase offers at full population (integrated per millisecond).
    pub fn expected_requests(&self) -> f64 {
        if let Some(count) = self.count {
            return count as f64;
        }
        // The integral of a piecewise-linear curve, sampled at 1000 points.
        let n = 1000u64;
        (0..n)
            .map(|i| self.peak_qps * self.curve.level((i as f64 + 0.5) / n as f64, self.base))
            .sum::<f64>()
            / n as f64
            * self.duration_ms as f64
            / 1000.0
    }
}

/// Shape of a phase's rate, as a share of its peak over the phase's time share.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Curve {
    /// At the peak throughout.
    Plateau,
    /// Linear from `base` to the peak.
    Ramp,
    /// Rests at `base`, jumps to the peak in the middle tenth, falls back.
    Spike,
    /// Equal-length steps at these shares of the peak (`steps = [...]`).
    Steps(Vec<f64>),
    /// Piecewise-linear through `(time share, level share)` points (`points = [[t, l], ...]`).
    Points(Vec<(f64, f64)>),
}

impl Curve {
    /// The level (share of the peak) at time share `t` in `[0, 1)`.
    pub fn level(&self, t: f64, base: f64) -> f64 {
        match self {
            Curve::Plateau => 1.0,
            Curve::Ramp => base + (1.0 - base) * t,
            Curve::Spike => {
                // Up over 0.45..0.5, down over 0.5..0.55.
                let d = (t - 0.5).abs();
                if d >= 0.05 {
                    base
                } else {
                    1.0 - (1.0 - base) * d / 0.05
                }
            }
            Curve::Steps(levels) => {
                let i = ((t * levels.len() as f64) as usize).min(levels.len() - 1);
                levels[i]
            }
            Curve::Points(points) => {
                let i = points.partition_point(|p| p.0 <= t);
                match (i.checked_sub(1).map(|j| points[j]), points.get(i)) {
                    (Some(a), Some(b)) if b.0 > a.0 => a.1 + (b.1 - a.1) * (t - a.0) / (b.0 - a.0),
                    (Some(a), _) => a.1,
                    (None, Some(b)) => b.1,
                    (None, None) => 0.0,
                }
            }
        }
    }
}

/// What users do after an award; all shares are per award answered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Behaviour {
    /// Share of awards after which the user opens the wallet page.
    pub open_rate: f64,
    /// Mean delay of that open (exponential), in seconds.
    pub open_delay_s: f64,
    /// Share of opens that go on to withdraw.
    pub withdraw_rate: f64,
    /// Mean delay from the open to the withdraw (exponential), in seconds.
    pub withdraw_delay_s: f64,
    /// Share of awards the client sends again (a timeout retry, same payload).
    pub retry_rate: f64,
    /// Delay of that retry, in milliseconds.
    pub retry_delay_ms: u64,
}

/// Which ledger and KV a run uses, by URL (`[stores]` in a scenario file).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreUrls {
    /// `memory`, `sqlite::memory:`, `sqlite://PATH`, `mysql://…` or `postgres://…`.
    #[serde(default = "memory_url")]
    pub ledger: String,
    /// `memory`, `redis://host:port[/db]` or `redis+cluster://host:port[,…]`.
    #[serde(default = "memory_url")]
    pub kv: String,
}

impl Default for StoreUrls {
    fn default() -> Self {
        Self {
            ledger: memory_url(),
            kv: memory_url(),
        }
    }
}

fn memory_url() -> String {
    "memory".to_owned()
}

/// Which of the seed's two hot-counter plans a run uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CounterKind {
    /// Plan 1: split keys, direct writes, fan-out reads.
    Split,
    /// Plan 2: local aggregation, one flush per interval, monotone local cache.
    Local,
}

/// The hot counter in a run: every cash award adds its amount; readers poll it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CounterPlan {
    /// Plan 1 or plan 2.
    pub plan: CounterKind,
    /// Plan 1's keys.
    #[serde(default = "default_split_keys")]
    pub split_keys: u32,
    /// Plan 2's flush and refresh interval (and I8's allowed lag).
    #[serde(default = "default_counter_interval_ms")]
    pub interval_ms: u64,
    /// Instances that write (plan 2 aggregates per instance).
    #[serde(default = "default_writers")]
    pub writers: u32,
    /// Instances that serve reads (each keeps its own cache).
    #[serde(default = "default_readers")]
    pub readers: u32,
    /// Reader polls per virtual second, spread round-robin over the readers.
    #[serde(default = "default_reads_per_s")]
    pub reads_per_s: u32,
    /// Dual-write to a backup KV (plan 2).
    #[serde(default)]
    pub backup: bool,
}

fn default_split_keys() -> u32 {
    reference::counter::SPLIT_KEYS_DEFAULT
}
fn default_counter_interval_ms() -> u64 {
    reference::counter::FLUSH_INTERVAL_MS_DEFAULT
}
fn default_writers() -> u32 {
    8
}
fn default_readers() -> u32 {
    20
}
fn default_reads_per_s() -> u32 {
    20
}

/// Where the token keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// A key derived from the seed, asked for by name: simulations only.
    Dev,
    /// `REDRAIN_TOKEN_KEYS`.
    Env,
    /// A key file.
    File(PathBuf),
}

impl KeySource {
    /// Load the key ring (`seed` feeds the dev key).
    pub fn load(&self, seed: u64) -> Result<KeyRing, reference::token::KeyError> {
        match self {
            KeySource::Dev => Ok(KeyRing::dev(seed)),
            KeySource::Env => KeyRing::from_env(),
            KeySource::File(path) => KeyRing::from_file(path),
        }
    }
}

/// The credit worker's plan in a run.
#[derive(Debug, Clone)]
pub struct CreditingPlan {
    /// The worker's knobs.
    pub worker: WorkerConfig,
    /// Virtual time between worker ticks.
    pub tick_interval_ms: u64,
    /// How long the run may drain after the last request.
    pub drain_ms_max: u64,
}

/// Something that goes wrong at a virtual time.
#[derive(Debug, Clone, PartialEq)]
pub struct Fault {
    /// Offset from the start.
    pub at_ms: u64,
    /// What happens.
    pub kind: FaultKind,
}

/// What goes wrong.
#[derive(Debug, Clone, PartialEq)]
pub enum FaultKind {
    /// The credit worker dies at a crash point and restarts.
    WorkerCrash(CrashPoint),
    /// A degradation switch is flipped.
    Switch(Switch, bool),
    /// The hot counter's primary KV goes down (`false`) or comes back (`true`).
    CounterKv(bool),
    /// The wallet's KV goes down (`false`) or comes back (`true`).
    Kv(bool),
    /// The ledger database goes down (`false`) or comes back (`true`).
    Db(bool),
    /// The ledger database runs at this share of its capacity (1.0 = healthy).
    DbSlow(f64),
    /// Every app instance restarts: the coupon pipeline shuts down gracefully
    /// (queued work goes to the durable queue) and comes back, the credit
    /// worker loses its in-memory retry state, counter instances flush and restart.
    Restart,
}

/// Relative weights of fresh request kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mix {
    /// Cash red packets.
    #[serde(default)]
    pub cash: u32,
    /// Coupons.
    #[serde(default)]
    pub coupon: u32,
    /// Pendants.
    #[serde(default)]
    pub pendant: u32,
    /// Withdrawals.
    #[serde(default)]
    pub withdraw: u32,
    /// Wallet page views.
    #[serde(default)]
    pub view: u32,
}

impl Mix {
    fn total(&self) -> u32 {
        self.cash + self.coupon + self.pendant + self.withdraw + self.view
    }
}

/// What makes traffic messy.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Traffic {
    /// Share of requests that replay an earlier request exactly (client retries).
    pub duplicate_rate: f64,
    /// Share that reuse an earlier order number with another payload.
    pub conflict_rate: f64,
    /// Share of bad input: broken order numbers, bad amounts, unknown scenes.
    pub malformed_rate: f64,
    /// Rain ids used, 0..rains.
    pub rains: u32,
    /// Stages per rain, 0..stages.
    pub stages: u32,
    /// Largest withdrawal asked, in cents.
    pub withdraw_max_cents: u64,
    /// Share of withdraws that also present a forged, tampered or foreign token.
    #[serde(default)]
    pub forged_token_rate: f64,
    /// The strategy side reads each coupon's stock every virtual second and stops
    /// offering it once less than 10% remains (seed 000): those requests are
    /// never sent (`strategy.fallback`: a default coupon or a greeting instead).
    #[serde(default)]
    pub stock_strategy: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScenarioFile {
    run: Spanned<RunFile>,
    population: Option<Spanned<PopulationFile>>,
    mix: Option<Spanned<Mix>>,
    traffic: Spanned<Traffic>,
    behaviour: Option<Spanned<Behaviour>>,
    #[serde(default)]
    phase: Vec<Spanned<PhaseFile>>,
    capacity: Option<Spanned<CapacityFile>>,
    pipeline: Option<Spanned<PipelineConfig>>,
    tokens: Option<Spanned<TokensFile>>,
    crediting: Option<Spanned<CreditingFile>>,
    counter: Option<Spanned<CounterPlan>>,
    stores: Option<Spanned<StoreUrls>>,
    #[serde(default)]
    fault: Vec<Spanned<FaultFile>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PopulationFile {
    users: u64,
    #[serde(default)]
    zipf: f64,
    apps: Option<Vec<u32>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PhaseFile {
    name: String,
    start_s: u64,
    duration_s: u64,
    curve: CurveName,
    peak_qps: f64,
    #[serde(default)]
    base_qps: f64,
    steps: Option<Vec<f64>>,
    points: Option<Vec<[f64; 2]>>,
    mix: Option<Mix>,
    scenes: Option<Vec<u32>>,
    rain_id: Option<u32>,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum CurveName {
    Plateau,
    Ramp,
    Spike,
    Steps,
    Points,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokensFile {
    /// "dev", "env" or a key file path (relative to the scenario).
    keys: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreditingFile {
    credit_tps: u64,
    #[serde(default = "default_batch_max")]
    batch_max: usize,
    #[serde(default = "default_tick_interval_ms")]
    tick_interval_ms: u64,
    #[serde(default = "default_processing_timeout_ms")]
    processing_timeout_ms: u64,
    #[serde(default = "default_drain_s_max")]
    drain_s_max: u64,
}

fn default_batch_max() -> usize {
    200
}
fn default_tick_interval_ms() -> u64 {
    100
}
fn default_processing_timeout_ms() -> u64 {
    5_000
}
fn default_drain_s_max() -> u64 {
    3_600
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FaultFile {
    at_s: u64,
    kind: FaultKindName,
    point: Option<CrashPointName>,
    switch: Option<String>,
    on: Option<bool>,
    factor: Option<f64>,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum FaultKindName {
    WorkerCrash,
    Switch,
    CounterKv,
    Kv,
    Db,
    DbSlow,
    Restart,
}

// The names are what scenario files say (`after_mark`); the prefix is the point.
#[allow(clippy::enum_variant_names)]
#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "snake_case")]
enum CrashPointName {
    AfterClaim,
    AfterMark,
    AfterCredit,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RunFile {
    name: String,
    seed: u64,
    activity_file: String,
    activity_id: u64,
    start: Datetime,
    duration_s: Option<u64>,
    requests: Option<u64>,
    users: Option<u64>,
    sample_rate: Option<f64>,
    #[serde(default)]
    shadow: bool,
}

impl Scenario {
    /// Read and validate a scenario file (and the activity tree it names).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let (text, origin) = read_config_file(path)?;
        let file: ScenarioFile = parse_toml(&text, &origin)?;
        let v = Validator::new(&origin, &text);
        let run_span = file.run.span();
        let run = file.run.into_inner();
        let at_run =
            |key: &str, message: String| v.error(run_span.clone(), format!("run.{key}"), message);
        let tree_path = path
            .parent()
            .unwrap_or(Path::new("."))
            .join(&run.activity_file);
        let tree = ActivityTree::from_file(&tree_path).map_err(|e| match e.line {
            // The tree file could not be read at all: point at the key naming it.
            None => at_run(
                "activity_file",
                format!("{}: {}", tree_path.display(), e.message),
            ),
            Some(_) => e,
        })?;
        if tree.activity(run.activity_id).is_none() {
            return Err(at_run(
                "activity_id",
                format!(
                    "activity {} is not in {}",
                    run.activity_id,
                    tree_path.display()
                ),
            ));
        }
        let start_ms = datetime_ms(&run.start).map_err(|m| at_run("start", m))?;
        let sample_rate = run.sample_rate.unwrap_or(1.0);
        if !(sample_rate > 0.0 && sample_rate <= 1.0) {
            return Err(at_run(
                "sample_rate",
                format!("{sample_rate} is not a share in (0, 1]"),
            ));
        }
        let population = match (file.population, run.users) {
            (Some(_), Some(_)) => {
                return Err(at_run(
                    "users",
                    "say the users once: [population] users or [run] users".to_owned(),
                ));
            }
            (None, None) => {
                return Err(at_run(
                    "users",
                    "missing: give [population] users (or [run] users)".to_owned(),
                ));
            }
            (None, Some(users)) => Population {
                users,
                zipf: 0.0,
                apps: [1, 0, 0, 0, 0, 0, 0, 0],
            },
            (Some(spanned), None) => {
                let span = spanned.span();
                let p = spanned.into_inner();
                let at =
                    |key: &str, m: String| v.error(span.clone(), format!("population.{key}"), m);
                if !(0.0..=10.0).contains(&p.zipf) {
                    return Err(at(
                        "zipf",
                        format!("{} is not an exponent in 0..=10", p.zipf),
                    ));
                }
                let mut apps = [0u32; APPS];
                match p.apps {
                    None => apps[0] = 1,
                    Some(weights) => {
                        if weights.len() != APPS || weights.iter().all(|w| *w == 0) {
                            return Err(at(
                                "apps",
                                format!(
                                    "give {APPS} weights (apps 1..={APPS}), at least one above 0"
                                ),
                            ));
                        }
                        apps.copy_from_slice(&weights);
                    }
                }
                Population {
                    users: p.users,
                    zipf: p.zipf,
                    apps,
                }
            }
        };
        if population.users == 0 || population.users > reference::order_no::ACT_ID_MAX {
            return Err(at_run(
                "users",
                format!(
                    "{} is not in 1..={}",
                    population.users,
                    reference::order_no::ACT_ID_MAX
                ),
            ));
        }
        if (population.users as f64) * sample_rate < 1.0 {
            return Err(at_run(
                "sample_rate",
                format!(
                    "{sample_rate} of {} users is less than one user",
                    population.users
                ),
            ));
        }
        let default_mix = match file.mix {
            None => None,
            Some(spanned) => {
                if spanned.get_ref().total() == 0 {
                    return Err(v.error(
                        spanned.span(),
                        "mix",
                        "at least one weight must be greater than 0",
                    ));
                }
                Some(spanned.into_inner())
            }
        };
        let mut phases = Vec::new();
        let duration_ms;
        if file.phase.is_empty() {
            let (Some(requests), Some(duration_s)) = (run.requests, run.duration_s) else {
                return Err(at_run(
                    "requests",
                    "a scenario without [[phase]] needs [run] requests and duration_s".to_owned(),
                ));
            };
            if duration_s == 0 {
                return Err(at_run("duration_s", "must be greater than 0".to_owned()));
            }
            if requests == 0 || requests > REQUESTS_MAX {
                return Err(at_run(
                    "requests",
                    format!("{requests} is not in 1..={REQUESTS_MAX}"),
                ));
            }
            let Some(mix) = default_mix else {
                return Err(v.error(0..0, "mix", "missing: give a [mix] table"));
            };
            duration_ms = duration_s * 1000;
            phases.push(Phase {
                name: run.name.clone(),
                start_ms: 0,
                duration_ms,
                curve: Curve::Plateau,
                peak_qps: requests as f64 / duration_s as f64,
                base: 0.0,
                count: Some(requests),
                mix,
                scenes: None,
                rain_id: None,
            });
        } else {
            if run.requests.is_some() {
                return Err(at_run(
                    "requests",
                    "is for a scenario without [[phase]]; phases give rates \
                     (cap a phased run with --requests)"
                        .to_owned(),
                ));
            }
            let activity = tree.activity(run.activity_id).expect("checked above");
            let mut end_ms = 0;
            for (index, spanned) in file.phase.iter().enumerate() {
                let f = spanned.get_ref();
                let at = |key: &str, m: String| {
                    v.error(spanned.span(), format!("phase[{index}].{key}"), m)
                };
                if f.duration_s == 0 {
                    return Err(at("duration_s", "must be greater than 0".to_owned()));
                }
                if !(f.peak_qps.is_finite() && f.peak_qps > 0.0) {
                    return Err(at("peak_qps", format!("{} must be above 0", f.peak_qps)));
                }
                if !(f.base_qps.is_finite() && (0.0..=f.peak_qps).contains(&f.base_qps)) {
                    return Err(at(
                        "base_qps",
                        format!("{} is not in 0..=peak_qps", f.base_qps),
                    ));
                }
                let curve = match (f.curve, &f.steps, &f.points) {
                    (CurveName::Plateau, None, None) => Curve::Plateau,
                    (CurveName::Ramp, None, None) => Curve::Ramp,
                    (CurveName::Spike, None, None) => Curve::Spike,
                    (CurveName::Steps, Some(steps), None) => {
                        if steps.is_empty() || steps.iter().any(|l| !(0.0..=1.0).contains(l)) {
                            return Err(at(
                                "steps",
                                "give one or more levels, each a share of peak_qps in 0..=1"
                                    .to_owned(),
                            ));
                        }
                        Curve::Steps(steps.clone())
                    }
                    (CurveName::Points, None, Some(points)) => {
                        let ok = points.len() >= 2
                            && points.first().is_some_and(|p| p[0] == 0.0)
                            && points.last().is_some_and(|p| p[0] == 1.0)
                            && points.windows(2).all(|w| w[0][0] <= w[1][0])
                            && points.iter().all(|p| (0.0..=1.0).contains(&p[1]));
                        if !ok {
                            return Err(at(
                                "points",
                                "give [time share, level share] pairs from time 0 to 1, \
                                 in time order, levels in 0..=1"
                                    .to_owned(),
                            ));
                        }
                        Curve::Points(points.iter().map(|p| (p[0], p[1])).collect())
                    }
                    (CurveName::Steps, _, _) => {
                        return Err(at(
                            "steps",
                            "curve = \"steps\" takes `steps` and no `points`".to_owned(),
                        ));
                    }
                    (CurveName::Points, _, _) => {
                        return Err(at(
                            "points",
                            "curve = \"points\" takes `points` and no `steps`".to_owned(),
                        ));
                    }
                    _ => {
                        return Err(at(
                            "curve",
                            "`steps` and `points` go with curve = \"steps\" or \"points\""
                                .to_owned(),
                        ));
                    }
                };
                let mix = match (f.mix, default_mix) {
                    (Some(mix), _) | (None, Some(mix)) => mix,
                    (None, None) => {
                        return Err(at("mix", "missing, and there is no [mix] table".to_owned()));
                    }
                };
                if mix.total() == 0 {
                    return Err(at(
                        "mix",
                        "at least one weight must be greater than 0".to_owned(),
                    ));
                }
                if let Some(scenes) = &f.scenes {
                    if scenes.is_empty() {
                        return Err(at("scenes", "name at least one scene".to_owned()));
                    }
                    if let Some(unknown) = scenes.iter().find(|s| !activity.scenes.contains_key(s))
                    {
                        return Err(at(
                            "scenes",
                            format!("scene {unknown} is not in activity {}", activity.id),
                        ));
                    }
                }
                for (weight, award_type, key) in [
                    (mix.cash, AwardType::Cash, "cash"),
                    (mix.coupon, AwardType::Coupon, "coupon"),
                    (mix.pendant, AwardType::Pendant, "pendant"),
                ] {
                    let has = activity.scenes.values().any(|s| {
                        s.award_type == award_type
                            && f.scenes.as_ref().is_none_or(|list| list.contains(&s.id))
                    });
                    if weight > 0 && !has {
                        return Err(at(
                            &format!("mix.{key}"),
                            format!("the phase's scenes have no {key} scene to draw from"),
                        ));
                    }
                }
                let start_ms = f.start_s * 1000;
                end_ms = end_ms.max(start_ms + f.duration_s * 1000);
                phases.push(Phase {
                    name: f.name.clone(),
                    start_ms,
                    duration_ms: f.duration_s * 1000,
                    curve,
                    peak_qps: f.peak_qps,
                    base: f.base_qps / f.peak_qps,
                    count: None,
                    mix,
                    scenes: f.scenes.clone(),
                    rain_id: f.rain_id,
                });
            }
            duration_ms = match run.duration_s {
                None => end_ms,
                Some(0) => return Err(at_run("duration_s", "must be greater than 0".to_owned())),
                Some(d) if d * 1000 < end_ms => {
                    return Err(at_run(
                        "duration_s",
                        format!("{d} s ends before the last phase ({} s)", end_ms / 1000),
                    ));
                }
                Some(d) => d * 1000,
            };
            let expected = phases.iter().map(Phase::expected_requests).sum::<f64>() * sample_rate;
            if expected > REQUESTS_MAX as f64 {
                return Err(at_run(
                    "sample_rate",
                    format!(
                        "the phases send about {expected:.0} requests at this sample rate, \
                         more than {REQUESTS_MAX}: lower the sample rate"
                    ),
                ));
            }
        }
        phases.sort_by_key(|p| p.start_ms);
        let mix = default_mix.unwrap_or(phases[0].mix);
        let behaviour = match file.behaviour {
            None => Behaviour::default(),
            Some(spanned) => {
                let b = *spanned.get_ref();
                let at =
                    |key: &str, m: String| v.error(spanned.span(), format!("behaviour.{key}"), m);
                for (key, rate) in [
                    ("open_rate", b.open_rate),
                    ("withdraw_rate", b.withdraw_rate),
                    ("retry_rate", b.retry_rate),
                ] {
                    if !(0.0..=1.0).contains(&rate) {
                        return Err(at(key, format!("{rate} is not a share between 0 and 1")));
                    }
                }
                for (key, delay) in [
                    ("open_delay_s", b.open_delay_s),
                    ("withdraw_delay_s", b.withdraw_delay_s),
                ] {
                    if !(delay.is_finite() && delay >= 0.0) {
                        return Err(at(key, format!("{delay} is not a delay of 0 s or more")));
                    }
                }
                b
            }
        };
        let capacity = match file.capacity {
            None => CapacityFile::default(),
            Some(spanned) => {
                if let Err(message) = spanned.get_ref().validate() {
                    return Err(v.error(spanned.span(), "capacity", message));
                }
                spanned.into_inner()
            }
        };
        let pipeline = match file.pipeline {
            None => PipelineConfig::default(),
            Some(spanned) => {
                let p = spanned.get_ref();
                if p.activity_rate_per_s == 0 || p.asset_rate_per_s == 0 || p.merge_max == 0 {
                    return Err(v.error(
                        spanned.span(),
                        "pipeline",
                        "activity_rate_per_s, asset_rate_per_s and merge_max must be above 0",
                    ));
                }
                spanned.into_inner()
            }
        };
        let traffic_span = file.traffic.span();
        let traffic = file.traffic.into_inner();
        let at_traffic = |key: &str, message: String| {
            v.error(traffic_span.clone(), format!("traffic.{key}"), message)
        };
        for (key, rate) in [
            ("duplicate_rate", traffic.duplicate_rate),
            ("conflict_rate", traffic.conflict_rate),
            ("malformed_rate", traffic.malformed_rate),
        ] {
            if !(0.0..=1.0).contains(&rate) {
                return Err(at_traffic(
                    key,
                    format!("{rate} is not a share between 0 and 1"),
                ));
            }
        }
        if traffic.duplicate_rate + traffic.conflict_rate + traffic.malformed_rate > 1.0 {
            return Err(at_traffic(
                "duplicate_rate",
                "duplicate, conflict and malformed rates add up to more than 1".to_owned(),
            ));
        }
        if traffic.rains == 0 || traffic.stages == 0 {
            return Err(at_traffic(
                "rains",
                "rains and stages must be at least 1".to_owned(),
            ));
        }
        if (phases.iter().any(|p| p.mix.withdraw > 0) || behaviour.withdraw_rate > 0.0)
            && traffic.withdraw_max_cents == 0
        {
            return Err(at_traffic(
                "withdraw_max_cents",
                "must be greater than 0 when the mix has withdrawals".to_owned(),
            ));
        }
        if !(0.0..=1.0).contains(&traffic.forged_token_rate) {
            return Err(at_traffic(
                "forged_token_rate",
                format!(
                    "{} is not a share between 0 and 1",
                    traffic.forged_token_rate
                ),
            ));
        }
        let has_token_scenes = tree
            .activities()
            .any(|a| a.scenes.values().any(|s| s.crediting == Crediting::Token));
        let token_keys = match file.tokens {
            None if has_token_scenes => {
                return Err(v.error(0..0, "tokens.keys", format!(
                    "{} has token-mode scenes: say where the keys come from (\"dev\", \"env\" or a key file)",
                    tree_path.display()
                )));
            }
            None => None,
            Some(tokens) => Some(match tokens.get_ref().keys.as_str() {
                "dev" => KeySource::Dev,
                "env" => KeySource::Env,
                "" => {
                    return Err(v.error(
                        tokens.span(),
                        "tokens.keys",
                        "must be \"dev\", \"env\" or a key file path",
                    ));
                }
                file => KeySource::File(path.parent().unwrap_or(Path::new(".")).join(file)),
            }),
        };
        let crediting = match file.crediting {
            None => CreditingPlan {
                worker: WorkerConfig::default(),
                tick_interval_ms: default_tick_interval_ms(),
                drain_ms_max: default_drain_s_max() * 1000,
            },
            Some(spanned) => {
                let span = spanned.span();
                let c = spanned.into_inner();
                let at =
                    |key: &str, m: String| v.error(span.clone(), format!("crediting.{key}"), m);
                if c.batch_max == 0 || c.batch_max > reference::ledger::CREDIT_BATCH_MAX {
                    return Err(at(
                        "batch_max",
                        format!(
                            "{} is not in 1..={}",
                            c.batch_max,
                            reference::ledger::CREDIT_BATCH_MAX
                        ),
                    ));
                }
                if c.tick_interval_ms == 0 {
                    return Err(at("tick_interval_ms", "must be greater than 0".to_owned()));
                }
                if c.processing_timeout_ms == 0 {
                    return Err(at(
                        "processing_timeout_ms",
                        "must be greater than 0".to_owned(),
                    ));
                }
                let worker = WorkerConfig {
                    batch_max: c.batch_max,
                    credit_tps: c.credit_tps,
                    processing_timeout_ms: c.processing_timeout_ms,
                    ..WorkerConfig::default()
                };
                CreditingPlan {
                    worker,
                    tick_interval_ms: c.tick_interval_ms,
                    drain_ms_max: c.drain_s_max * 1000,
                }
            }
        };
        let counter = match file.counter {
            None => None,
            Some(spanned) => {
                let span = spanned.span();
                let c = spanned.into_inner();
                let at = |key: &str, m: &str| {
                    v.error(span.clone(), format!("counter.{key}"), m.to_owned())
                };
                if c.split_keys == 0 {
                    return Err(at("split_keys", "must be at least 1"));
                }
                if c.interval_ms == 0 {
                    return Err(at("interval_ms", "must be greater than 0"));
                }
                if c.writers == 0 || c.readers == 0 {
                    return Err(at("writers", "writers and readers must be at least 1"));
                }
                if c.backup && c.plan == CounterKind::Split {
                    return Err(at(
                        "backup",
                        "only plan 2 (`local`) dual-writes to a backup",
                    ));
                }
                Some(c)
            }
        };
        let mut faults = Vec::new();
        for (index, spanned) in file.fault.iter().enumerate() {
            let f = spanned.get_ref();
            let at =
                |key: &str, m: String| v.error(spanned.span(), format!("fault[{index}].{key}"), m);
            if f.at_s * 1000 >= duration_ms {
                return Err(at(
                    "at_s",
                    format!(
                        "{} s is not inside the run's {} s",
                        f.at_s,
                        duration_ms / 1000
                    ),
                ));
            }
            if f.factor.is_some() && f.kind != FaultKindName::DbSlow {
                return Err(at(
                    "factor",
                    "only a db_slow fault takes `factor`".to_owned(),
                ));
            }
            let kind = match (f.kind, f.point, &f.switch, f.on) {
                (FaultKindName::Kv, None, None, Some(on)) => FaultKind::Kv(on),
                (FaultKindName::Kv, _, _, _) => return Err(at("kind", "a kv fault takes `on` and nothing else".to_owned())),
                (FaultKindName::Db, None, None, Some(on)) => FaultKind::Db(on),
                (FaultKindName::Db, _, _, _) => return Err(at("kind", "a db fault takes `on` and nothing else".to_owned())),
                (FaultKindName::DbSlow, None, None, None) => match f.factor {
                    Some(factor) if factor > 0.0 && factor <= 1.0 => FaultKind::DbSlow(factor),
                    _ => return Err(at("factor", "a db_slow fault takes `factor`, the share of capacity left, in (0, 1]".to_owned())),
                },
                (FaultKindName::DbSlow, _, _, _) => return Err(at("kind", "a db_slow fault takes `factor` and nothing else".to_owned())),
                (FaultKindName::Restart, None, None, None) => FaultKind::Restart,
                (FaultKindName::Restart, _, _, _) => return Err(at("kind", "a restart fault takes nothing else".to_owned())),
                (FaultKindName::WorkerCrash, Some(point), None, None) => FaultKind::WorkerCrash(match point {
                    CrashPointName::AfterClaim => CrashPoint::AfterClaim,
                    CrashPointName::AfterMark => CrashPoint::AfterMark,
                    CrashPointName::AfterCredit => CrashPoint::AfterCredit,
                }),
                (FaultKindName::WorkerCrash, _, _, _) => return Err(at("point", "a worker_crash fault takes `point` (after_claim, after_mark, after_credit) and nothing else".to_owned())),
                (FaultKindName::Switch, None, Some(name), Some(on)) => {
                    let switch = Switch::by_name(name).ok_or_else(|| at("switch", format!(
                        "`{name}` is not a switch; known: {}",
                        Switch::ALL.map(|s| s.name()).join(", ")
                    )))?;
                    FaultKind::Switch(switch, on)
                }
                (FaultKindName::Switch, _, _, _) => return Err(at("switch", "a switch fault takes `switch` and `on` and nothing else".to_owned())),
                (FaultKindName::CounterKv, None, None, Some(on)) if counter.is_some() => FaultKind::CounterKv(on),
                (FaultKindName::CounterKv, _, _, _) => return Err(at("kind", "a counter_kv fault takes `on` and nothing else, and needs a [counter] section".to_owned())),
            };
            faults.push(Fault {
                at_ms: f.at_s * 1000,
                kind,
            });
        }
        faults.sort_by_key(|f| f.at_ms);
        let stores = match file.stores {
            None => StoreUrls::default(),
            Some(stores) => {
                let span = stores.span();
                let stores = stores.into_inner();
                if let Err(e) = reference::ledger::check_url(&stores.ledger) {
                    return Err(v.error(span, "stores.ledger", e.to_string()));
                }
                if let Err(e) = reference::kv::check_url(&stores.kv) {
                    return Err(v.error(span, "stores.kv", e.to_string()));
                }
                stores
            }
        };
        Ok(Scenario {
            path: path.to_owned(),
            name: run.name,
            seed: run.seed,
            tree,
            activity_id: run.activity_id,
            start_ms,
            duration_ms,
            population,
            sample_rate,
            phases,
            request_limit: None,
            mix,
            behaviour,
            capacity,
            pipeline,
            traffic,
            token_keys,
            crediting,
            faults,
            counter,
            stores,
            shadow: run.shadow,
        })
    }
}
