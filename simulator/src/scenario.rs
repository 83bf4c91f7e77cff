//! The scenario file: what to run, for how long, with which mix of requests.
//! This is the foundation's small model (one phase, uniform users); the full
//! simulator grows it into phases, profiles and capacity models.
//!
//! Unknown keys and impossible values get an error naming the file, line and key.

use std::path::{Path, PathBuf};

use reference::config::{
    ConfigError, Crediting, Validator, datetime_ms, parse_toml, read_config_file,
};
use reference::switches::Switch;
use reference::token::KeyRing;
use reference::worker::{CrashPoint, WorkerConfig};
use reference::{ActivityTree, Millis};
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
    /// Virtual duration over which requests are spread.
    pub duration_ms: u64,
    /// Requests in all.
    pub requests: u64,
    /// Users are act_ids 1..=users.
    pub users: u64,
    /// Relative weights of fresh request kinds.
    pub mix: Mix,
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    /// Offset from the start.
    pub at_ms: u64,
    /// What happens.
    pub kind: FaultKind,
}

/// What goes wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FaultKind {
    /// The credit worker dies at a crash point and restarts.
    WorkerCrash(CrashPoint),
    /// A degradation switch is flipped.
    Switch(Switch, bool),
    /// The hot counter's primary KV goes down (`false`) or comes back (`true`).
    CounterKv(bool),
}

/// Relative weights of fresh request kinds.
#[derive(Debug, Clone, Copy, Deserialize)]
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
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScenarioFile {
    run: Spanned<RunFile>,
    mix: Spanned<Mix>,
    traffic: Spanned<Traffic>,
    tokens: Option<Spanned<TokensFile>>,
    crediting: Option<Spanned<CreditingFile>>,
    counter: Option<Spanned<CounterPlan>>,
    stores: Option<Spanned<StoreUrls>>,
    #[serde(default)]
    fault: Vec<Spanned<FaultFile>>,
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
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "snake_case")]
enum FaultKindName {
    WorkerCrash,
    Switch,
    CounterKv,
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
    duration_s: u64,
    requests: u64,
    users: u64,
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
        if run.duration_s == 0 {
            return Err(at_run("duration_s", "must be greater than 0".to_owned()));
        }
        if run.requests == 0 || run.requests > REQUESTS_MAX {
            return Err(at_run(
                "requests",
                format!("{} is not in 1..={REQUESTS_MAX}", run.requests),
            ));
        }
        if run.users == 0 || run.users > reference::order_no::ACT_ID_MAX {
            return Err(at_run("users", format!("{} must be at least 1", run.users)));
        }
        let mix_span = file.mix.span();
        let mix = file.mix.into_inner();
        if mix.total() == 0 {
            return Err(v.error(
                mix_span,
                "mix",
                "at least one weight must be greater than 0",
            ));
        }
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
        if mix.withdraw > 0 && traffic.withdraw_max_cents == 0 {
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
            if f.at_s * 1000 >= run.duration_s * 1000 {
                return Err(at(
                    "at_s",
                    format!("{} s is not inside the run's {} s", f.at_s, run.duration_s),
                ));
            }
            let kind = match (f.kind, f.point, &f.switch, f.on) {
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
            duration_ms: run.duration_s * 1000,
            requests: run.requests,
            users: run.users,
            mix,
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
