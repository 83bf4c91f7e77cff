//! The scenario file: what to run, for how long, with which mix of requests.
//! This is the foundation's small model (one phase, uniform users); the full
//! simulator grows it into phases, profiles and capacity models.
//!
//! Unknown keys and impossible values get an error naming the file, line and key.

use std::path::{Path, PathBuf};

use reference::config::{ConfigError, Validator, datetime_ms, parse_toml, read_config_file};
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
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScenarioFile {
    run: Spanned<RunFile>,
    mix: Spanned<Mix>,
    traffic: Spanned<Traffic>,
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
}

impl Scenario {
    /// Read and validate a scenario file (and the activity tree it names).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let (text, origin) = read_config_file(path)?;
        let file: ScenarioFile = parse_toml(&text, &origin)?;
        let v = Validator::new(&origin, &text);
        let run_span = file.run.span();
        let run = file.run.into_inner();
        let at_run = |key: &str, message: String| v.error(run_span.clone(), format!("run.{key}"), message);
        let tree_path = path.parent().unwrap_or(Path::new(".")).join(&run.activity_file);
        let tree = ActivityTree::from_file(&tree_path).map_err(|e| match e.line {
            // The tree file could not be read at all: point at the key naming it.
            None => at_run("activity_file", format!("{}: {}", tree_path.display(), e.message)),
            Some(_) => e,
        })?;
        if tree.activity(run.activity_id).is_none() {
            return Err(at_run("activity_id", format!("activity {} is not in {}", run.activity_id, tree_path.display())));
        }
        let start_ms = datetime_ms(&run.start).map_err(|m| at_run("start", m))?;
        if run.duration_s == 0 {
            return Err(at_run("duration_s", "must be greater than 0".to_owned()));
        }
        if run.requests == 0 || run.requests > REQUESTS_MAX {
            return Err(at_run("requests", format!("{} is not in 1..={REQUESTS_MAX}", run.requests)));
        }
        if run.users == 0 || run.users > reference::order_no::ACT_ID_MAX {
            return Err(at_run("users", format!("{} must be at least 1", run.users)));
        }
        let mix_span = file.mix.span();
        let mix = file.mix.into_inner();
        if mix.cash + mix.coupon + mix.pendant + mix.withdraw == 0 {
            return Err(v.error(mix_span, "mix", "at least one weight must be greater than 0"));
        }
        let traffic_span = file.traffic.span();
        let traffic = file.traffic.into_inner();
        let at_traffic = |key: &str, message: String| v.error(traffic_span.clone(), format!("traffic.{key}"), message);
        for (key, rate) in [
            ("duplicate_rate", traffic.duplicate_rate),
            ("conflict_rate", traffic.conflict_rate),
            ("malformed_rate", traffic.malformed_rate),
        ] {
            if !(0.0..=1.0).contains(&rate) {
                return Err(at_traffic(key, format!("{rate} is not a share between 0 and 1")));
            }
        }
        if traffic.duplicate_rate + traffic.conflict_rate + traffic.malformed_rate > 1.0 {
            return Err(at_traffic("duplicate_rate", "duplicate, conflict and malformed rates add up to more than 1".to_owned()));
        }
        if traffic.rains == 0 || traffic.stages == 0 {
            return Err(at_traffic("rains", "rains and stages must be at least 1".to_owned()));
        }
        if mix.withdraw > 0 && traffic.withdraw_max_cents == 0 {
            return Err(at_traffic("withdraw_max_cents", "must be greater than 0 when the mix has withdrawals".to_owned()));
        }
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
        })
    }
}
