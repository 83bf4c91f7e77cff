//! The activity tree, loaded from TOML: parent activity → child activities (internal
//! test, gray release, formal; each with a time window, a budget, its own accounts
//! and stock) → scenes (one award type each, with bill text and feature flags) →
//! award ids. Upstream always names the parent; [`ActivityTree::child_at`] picks the
//! child by request time.
//!
//! Bad files get a [`ConfigError`] naming the file, the line and the key path. This
//! module only parses and validates; it never reads a clock.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::ops::Range;
use std::path::Path;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use toml::Spanned;
use toml::value::{Datetime, Offset};

use crate::order_no::AwardType;
use crate::{ActivityId, ChildId, Millis};

/// A config or scenario file that cannot be used: where, and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// The file (or other origin) the text came from.
    pub origin: String,
    /// 1-based line of the offending key or table, when known.
    pub line: Option<usize>,
    /// Dotted key path, e.g. `activity[0].child[1].end`.
    pub key_path: String,
    /// What is wrong, in a sentence.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.origin)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if !self.key_path.is_empty() {
            write!(f, ": {}", self.key_path)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Parse `text` (from `origin`) as TOML into `T`, with errors that carry the file,
/// line and key path. Shared by every TOML file redrain reads.
pub fn parse_toml<T: DeserializeOwned>(text: &str, origin: &str) -> Result<T, ConfigError> {
    let deserializer =
        toml::Deserializer::parse(text).map_err(|e| toml_error(text, origin, "", &e))?;
    serde_path_to_error::deserialize(deserializer).map_err(|e| {
        // `Spanned` adds a private key to the path; readers need the keys they wrote.
        let path = e
            .path()
            .to_string()
            .replace(".$__serde_spanned_private_value", "");
        let path = if path == "." { String::new() } else { path };
        toml_error(text, origin, &path, e.inner())
    })
}

fn toml_error(text: &str, origin: &str, key_path: &str, error: &toml::de::Error) -> ConfigError {
    ConfigError {
        origin: origin.to_owned(),
        line: error.span().map(|span| line_of(text, span.start)),
        key_path: key_path.to_owned(),
        message: error.message().trim().to_owned(),
    }
}

/// Read a config or scenario file: its text and its origin (the path, for errors).
pub fn read_config_file(path: &Path) -> Result<(String, String), ConfigError> {
    let origin = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => Ok((text, origin)),
        Err(e) => Err(ConfigError {
            origin,
            line: None,
            key_path: String::new(),
            message: format!("cannot read: {e}"),
        }),
    }
}

/// 1-based line number of byte `offset` in `text`.
pub fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// Builds validation errors for one file: knows its text so spans become lines.
#[derive(Debug)]
pub struct Validator<'a> {
    origin: &'a str,
    text: &'a str,
}

impl<'a> Validator<'a> {
    /// A validator for `text` read from `origin`.
    pub fn new(origin: &'a str, text: &'a str) -> Self {
        Self { origin, text }
    }

    /// An error about the key or table at `span`.
    pub fn error(
        &self,
        span: Range<usize>,
        key_path: impl Into<String>,
        message: impl Into<String>,
    ) -> ConfigError {
        ConfigError {
            origin: self.origin.to_owned(),
            line: Some(line_of(self.text, span.start)),
            key_path: key_path.into(),
            message: message.into(),
        }
    }
}

/// Convert a TOML offset date-time to Unix milliseconds.
pub fn datetime_ms(value: &Datetime) -> Result<Millis, String> {
    let (Some(date), Some(time), Some(offset)) = (value.date, value.time, value.offset) else {
        return Err(format!(
            "`{value}` needs a date, a time and an offset, like 2027-02-09T19:30:00+08:00"
        ));
    };
    let days = days_from_civil(
        i64::from(date.year),
        u32::from(date.month),
        u32::from(date.day),
    );
    let seconds_of_day = i64::from(time.hour) * 3600
        + i64::from(time.minute) * 60
        + i64::from(time.second.unwrap_or(0));
    let offset_minutes = match offset {
        Offset::Z => 0,
        Offset::Custom { minutes } => i64::from(minutes),
    };
    let ms = (days * 86_400 + seconds_of_day - offset_minutes * 60) * 1000
        + i64::from(time.nanosecond.unwrap_or(0) / 1_000_000);
    u64::try_from(ms).map_err(|_| format!("`{value}` is before 1970-01-01T00:00:00Z"))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = if year >= 0 { year } else { year - 399 } / 400;
    let year_of_era = year - era * 400;
    let month_from_march = i64::from((month + 9) % 12);
    let day_of_year = (153 * month_from_march + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// Which step of a gray release a child activity is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Staff only.
    InternalTest,
    /// A share of real users.
    Gray,
    /// Everyone.
    Formal,
}

/// A child activity: its own window, budget, accounts and stock.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ChildActivity {
    /// Unique across the whole tree: accounts are keyed by it.
    pub id: ChildId,
    /// Release step.
    pub stage: Stage,
    /// Window start, inclusive.
    pub start_ms: Millis,
    /// Window end, exclusive.
    pub end_ms: Millis,
    /// Cash budget of this child, in cents; never exceeded (I2).
    pub budget_cents: u64,
}

/// A scene: one award type, its award ids and the per-scene switches of the seed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Scene {
    /// Unique within its activity; part of the order number.
    pub id: u32,
    /// The one award type this scene gives.
    pub award_type: AwardType,
    /// Text shown on the user's bill.
    pub bill_text: String,
    /// Whether failed issues are compensated (reissued).
    pub compensation: bool,
    /// Ingress rate limit, requests per second; `None` = unlimited.
    pub rate_limit_qps: Option<u64>,
    /// Whether coupon stock is counted and enforced for this scene.
    pub stock_control: bool,
    /// Whether this scene takes part in reconciliation.
    pub reconciliation: bool,
    /// The award ids this scene may give.
    pub award_ids: Vec<u64>,
    /// How awards of this scene are credited.
    pub crediting: Crediting,
}

/// How a scene's awards reach the ledger.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Crediting {
    /// One ledger credit per request (the seed's baseline).
    #[default]
    Sync,
    /// Sign a token now, credit later through the worker (cash only).
    Token,
    /// Accept now, issue through the coupon pipeline's queues (coupons only; seed 003).
    Pipeline,
}

/// Who may withdraw during the gray release of withdrawals.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WithdrawGate {
    /// Share of users (by a stable hash of act_id) who may withdraw, 0..=100.
    #[serde(default = "hundred")]
    pub gray_percent: u8,
    /// Users who may withdraw whatever the percentage.
    #[serde(default)]
    pub allow_list: Vec<u64>,
}

fn hundred() -> u8 {
    100
}

impl WithdrawGate {
    /// Everyone may withdraw.
    pub fn open() -> Self {
        Self {
            gray_percent: 100,
            allow_list: Vec::new(),
        }
    }

    /// Whether `act_id` may withdraw: on the allow list, or in the first
    /// `gray_percent` of the stable hash space.
    pub fn admits(&self, act_id: u64) -> bool {
        if self.allow_list.contains(&act_id) {
            return true;
        }
        let hash = blake3::hash(&act_id.to_le_bytes());
        let bucket = u64::from_le_bytes(hash.as_bytes()[..8].try_into().expect("8 bytes")) % 100;
        bucket < u64::from(self.gray_percent)
    }
}

/// A coupon award: template, batch, group, stock and the per-user limit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CouponDef {
    /// Stock is counted per template (and per child activity).
    pub template_id: u64,
    /// The batch the template belongs to; per-user limits count per batch.
    pub batch: String,
    /// Batches in one group are mutually exclusive per user.
    pub group: Option<String>,
    /// Coupons of this batch one user may hold.
    pub per_user_limit: u32,
    /// Total stock of this template in each child activity.
    pub stock: u64,
}

/// What an award id gives.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AwardDef {
    /// Cash; the amount comes with the request, at most `max_cents`.
    Cash {
        /// Largest amount of one award of this id (≤ the activity's per-transaction cap).
        max_cents: u64,
    },
    /// A coupon.
    Coupon(CouponDef),
    /// An avatar pendant.
    Pendant {
        /// The pendant given.
        pendant_id: u64,
    },
}

impl AwardDef {
    /// The award type of this definition.
    pub fn award_type(&self) -> AwardType {
        match self {
            AwardDef::Cash { .. } => AwardType::Cash,
            AwardDef::Coupon(_) => AwardType::Coupon,
            AwardDef::Pendant { .. } => AwardType::Pendant,
        }
    }
}

/// A parent activity with its children, scenes and awards.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Activity {
    /// What upstream sends.
    pub id: ActivityId,
    /// For people.
    pub name: String,
    /// No single cash award may exceed this (funds safety).
    pub per_txn_cap_cents: u64,
    /// Sorted by window start; windows do not overlap.
    pub children: Vec<ChildActivity>,
    /// By scene id.
    pub scenes: BTreeMap<u32, Scene>,
    /// By award id.
    pub awards: BTreeMap<u64, AwardDef>,
    /// Who may withdraw.
    pub withdraw_gate: WithdrawGate,
}

impl Activity {
    /// The child whose window holds `now_ms`.
    pub fn child_at(&self, now_ms: Millis) -> Option<&ChildActivity> {
        self.children
            .iter()
            .find(|c| c.start_ms <= now_ms && now_ms < c.end_ms)
    }

    /// The coupon definition of a template.
    pub fn coupon_template(&self, template_id: u64) -> Option<&CouponDef> {
        self.awards.values().find_map(|a| match a {
            AwardDef::Coupon(c) if c.template_id == template_id => Some(c),
            _ => None,
        })
    }

    /// All coupon definitions, by award id.
    pub fn coupons(&self) -> impl Iterator<Item = &CouponDef> {
        self.awards.values().filter_map(|a| match a {
            AwardDef::Coupon(c) => Some(c),
            _ => None,
        })
    }

    /// The cap on one cash award of `award_id` (the tighter of award and activity caps).
    pub fn cash_cap_cents(&self, award_id: u64) -> Option<u64> {
        match self.awards.get(&award_id) {
            Some(AwardDef::Cash { max_cents }) => Some((*max_cents).min(self.per_txn_cap_cents)),
            _ => None,
        }
    }
}

/// The whole validated tree.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ActivityTree {
    activities: BTreeMap<ActivityId, Activity>,
    child_parent: BTreeMap<ChildId, ActivityId>,
}

impl ActivityTree {
    /// Read and validate a tree from a TOML file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let (text, origin) = read_config_file(path)?;
        Self::from_toml_str(&text, &origin)
    }

    /// Parse and validate a tree from TOML text read from `origin`.
    pub fn from_toml_str(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let file: TreeFile = parse_toml(text, origin)?;
        build_tree(file, &Validator::new(origin, text))
    }

    /// The parent activity `id`.
    pub fn activity(&self, id: ActivityId) -> Option<&Activity> {
        self.activities.get(&id)
    }

    /// All parent activities, by id.
    pub fn activities(&self) -> impl Iterator<Item = &Activity> {
        self.activities.values()
    }

    /// The parent and the child activity with id `child_id`.
    pub fn child(&self, child_id: ChildId) -> Option<(&Activity, &ChildActivity)> {
        let activity = self.activities.get(self.child_parent.get(&child_id)?)?;
        let child = activity.children.iter().find(|c| c.id == child_id)?;
        Some((activity, child))
    }

    /// This tree for a sampled run that sends `share` of the traffic: every
    /// shared quantity — child budgets, coupon stock, scene rate limits — times
    /// `share`, rounded up (never below 1). Per-user limits and per-transaction
    /// caps stay as they are: each simulated user is a whole user.
    pub fn scaled(&self, share: f64) -> ActivityTree {
        let mut tree = self.clone();
        if share >= 1.0 {
            return tree;
        }
        let scale = |n: u64| (((n as f64) * share).ceil() as u64).max(1);
        for activity in tree.activities.values_mut() {
            for child in &mut activity.children {
                child.budget_cents = scale(child.budget_cents);
            }
            for scene in activity.scenes.values_mut() {
                scene.rate_limit_qps = scene.rate_limit_qps.map(scale);
            }
            for award in activity.awards.values_mut() {
                if let AwardDef::Coupon(coupon) = award {
                    coupon.stock = scale(coupon.stock);
                }
            }
        }
        tree
    }

    /// This tree with every scene that credits by `from` crediting by `to`
    /// instead, and how many scenes changed (the strategy comparison's sync
    /// copy of a token profile). Only token ↔ sync is offered: both are cash
    /// scenes, so the copy stays a valid tree.
    ///
    /// # Panics
    ///
    /// On any other pair (a bug in the caller).
    pub fn with_crediting(&self, from: Crediting, to: Crediting) -> (ActivityTree, usize) {
        assert!(
            matches!(
                (from, to),
                (Crediting::Token, Crediting::Sync) | (Crediting::Sync, Crediting::Token)
            ),
            "only token and sync scenes swap crediting"
        );
        let mut tree = self.clone();
        let mut switched = 0;
        for activity in tree.activities.values_mut() {
            for scene in activity.scenes.values_mut() {
                if scene.crediting == from
                    && (to != Crediting::Token || scene.award_type == AwardType::Cash)
                {
                    scene.crediting = to;
                    switched += 1;
                }
            }
        }
        (tree, switched)
    }
}

// ---- file shapes (what users write) ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TreeFile {
    activity: Vec<Spanned<ActivityFile>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ActivityFile {
    id: u64,
    name: String,
    per_txn_cap_cents: u64,
    child: Vec<Spanned<ChildFile>>,
    scene: Vec<Spanned<SceneFile>>,
    #[serde(default)]
    cash: Vec<Spanned<CashFile>>,
    #[serde(default)]
    batch: Vec<Spanned<BatchFile>>,
    #[serde(default)]
    coupon: Vec<Spanned<CouponFile>>,
    #[serde(default)]
    pendant: Vec<Spanned<PendantFile>>,
    withdraw: Option<Spanned<WithdrawGate>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChildFile {
    id: u64,
    stage: Stage,
    start: Datetime,
    end: Datetime,
    budget_cents: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SceneFile {
    id: u32,
    award_type: AwardType,
    bill_text: String,
    #[serde(default)]
    compensation: bool,
    rate_limit_qps: Option<u64>,
    #[serde(default)]
    stock_control: bool,
    #[serde(default)]
    reconciliation: bool,
    award_ids: Vec<u64>,
    #[serde(default)]
    crediting: Crediting,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CashFile {
    award_id: u64,
    max_cents: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchFile {
    id: String,
    group: Option<String>,
    per_user_limit: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CouponFile {
    award_id: u64,
    template_id: u64,
    batch: String,
    stock: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PendantFile {
    award_id: u64,
    pendant_id: u64,
}

fn build_tree(file: TreeFile, v: &Validator<'_>) -> Result<ActivityTree, ConfigError> {
    let mut tree = ActivityTree {
        activities: BTreeMap::new(),
        child_parent: BTreeMap::new(),
    };
    if file.activity.is_empty() {
        return Err(v.error(0..0, "activity", "at least one [[activity]] is needed"));
    }
    for (index, spanned) in file.activity.into_iter().enumerate() {
        let span = spanned.span();
        let path = format!("activity[{index}]");
        let activity = build_activity(spanned.into_inner(), &path, span.clone(), v)?;
        for child in &activity.children {
            if let Some(other) = tree.child_parent.insert(child.id, activity.id) {
                return Err(v.error(span, format!("{path}.child"), format!(
                    "child id {} is already used by activity {other}; child ids must be unique across the file",
                    child.id
                )));
            }
        }
        if tree.activities.contains_key(&activity.id) {
            return Err(v.error(
                span,
                format!("{path}.id"),
                format!("activity id {} appears twice", activity.id),
            ));
        }
        tree.activities.insert(activity.id, activity);
    }
    Ok(tree)
}

fn build_activity(
    file: ActivityFile,
    path: &str,
    span: Range<usize>,
    v: &Validator<'_>,
) -> Result<Activity, ConfigError> {
    if file.per_txn_cap_cents == 0 {
        return Err(v.error(
            span.clone(),
            format!("{path}.per_txn_cap_cents"),
            "must be greater than 0",
        ));
    }
    let children = build_children(&file.child, path, span.clone(), v)?;
    let awards = build_awards(&file, path, v)?;
    let mut scenes = BTreeMap::new();
    if file.scene.is_empty() {
        return Err(v.error(
            span,
            format!("{path}.scene"),
            "at least one [[activity.scene]] is needed",
        ));
    }
    for (index, spanned) in file.scene.iter().enumerate() {
        let scene_path = format!("{path}.scene[{index}]");
        let scene = build_scene(spanned.get_ref(), &awards, &scene_path, spanned.span(), v)?;
        if scenes.insert(scene.id, scene).is_some() {
            return Err(v.error(
                spanned.span(),
                format!("{scene_path}.id"),
                format!(
                    "scene id {} appears twice in this activity",
                    spanned.get_ref().id
                ),
            ));
        }
    }
    let withdraw_gate = match file.withdraw {
        None => WithdrawGate::open(),
        Some(gate) => {
            if gate.get_ref().gray_percent > 100 {
                return Err(v.error(
                    gate.span(),
                    format!("{path}.withdraw.gray_percent"),
                    "must be 0..=100",
                ));
            }
            gate.into_inner()
        }
    };
    Ok(Activity {
        id: file.id,
        name: file.name,
        per_txn_cap_cents: file.per_txn_cap_cents,
        children,
        scenes,
        awards,
        withdraw_gate,
    })
}

fn build_children(
    files: &[Spanned<ChildFile>],
    path: &str,
    span: Range<usize>,
    v: &Validator<'_>,
) -> Result<Vec<ChildActivity>, ConfigError> {
    if files.is_empty() {
        return Err(v.error(
            span,
            format!("{path}.child"),
            "at least one [[activity.child]] is needed",
        ));
    }
    let mut children: Vec<(ChildActivity, Range<usize>, String)> = Vec::new();
    for (index, spanned) in files.iter().enumerate() {
        let child_path = format!("{path}.child[{index}]");
        let file = spanned.get_ref();
        let at = |key: &str, message: String| {
            v.error(spanned.span(), format!("{child_path}.{key}"), message)
        };
        let start_ms = datetime_ms(&file.start).map_err(|m| at("start", m))?;
        let end_ms = datetime_ms(&file.end).map_err(|m| at("end", m))?;
        if end_ms <= start_ms {
            return Err(at(
                "end",
                format!("end {} must be after start {}", file.end, file.start),
            ));
        }
        if file.budget_cents == 0 {
            return Err(at("budget_cents", "must be greater than 0".to_owned()));
        }
        let child = ChildActivity {
            id: file.id,
            stage: file.stage,
            start_ms,
            end_ms,
            budget_cents: file.budget_cents,
        };
        children.push((child, spanned.span(), child_path));
    }
    children.sort_by_key(|(c, _, _)| c.start_ms);
    for pair in children.windows(2) {
        let ((earlier, _, earlier_path), (later, later_span, later_path)) = (&pair[0], &pair[1]);
        if later.start_ms < earlier.end_ms {
            return Err(v.error(later_span.clone(), format!("{later_path}.start"), format!(
                "window of child {} overlaps {earlier_path} (child {}); a request time must pick one child",
                later.id, earlier.id
            )));
        }
    }
    Ok(children.into_iter().map(|(c, _, _)| c).collect())
}

fn build_awards(
    file: &ActivityFile,
    path: &str,
    v: &Validator<'_>,
) -> Result<BTreeMap<u64, AwardDef>, ConfigError> {
    let mut awards = BTreeMap::new();
    let mut insert = |award_id: u64, def: AwardDef, key_path: String, span: Range<usize>| {
        if awards.insert(award_id, def).is_some() {
            return Err(v.error(
                span,
                key_path,
                format!("award id {award_id} appears twice in this activity"),
            ));
        }
        Ok(())
    };
    for (index, spanned) in file.cash.iter().enumerate() {
        let cash = spanned.get_ref();
        let key = format!("{path}.cash[{index}]");
        if cash.max_cents == 0 {
            return Err(v.error(
                spanned.span(),
                format!("{key}.max_cents"),
                "must be greater than 0",
            ));
        }
        if cash.max_cents > file.per_txn_cap_cents {
            return Err(v.error(
                spanned.span(),
                format!("{key}.max_cents"),
                format!(
                    "{} exceeds the activity's per_txn_cap_cents {}",
                    cash.max_cents, file.per_txn_cap_cents
                ),
            ));
        }
        insert(
            cash.award_id,
            AwardDef::Cash {
                max_cents: cash.max_cents,
            },
            format!("{key}.award_id"),
            spanned.span(),
        )?;
    }
    let mut batches: BTreeMap<&str, &BatchFile> = BTreeMap::new();
    for (index, spanned) in file.batch.iter().enumerate() {
        let batch = spanned.get_ref();
        let key = format!("{path}.batch[{index}]");
        check_name(&batch.id).map_err(|m| v.error(spanned.span(), format!("{key}.id"), m))?;
        if let Some(group) = &batch.group {
            check_name(group).map_err(|m| v.error(spanned.span(), format!("{key}.group"), m))?;
        }
        if batch.per_user_limit == 0 {
            return Err(v.error(
                spanned.span(),
                format!("{key}.per_user_limit"),
                "must be at least 1",
            ));
        }
        if batches.insert(&batch.id, batch).is_some() {
            return Err(v.error(
                spanned.span(),
                format!("{key}.id"),
                format!("batch `{}` appears twice", batch.id),
            ));
        }
    }
    let mut templates = BTreeSet::new();
    for (index, spanned) in file.coupon.iter().enumerate() {
        let coupon = spanned.get_ref();
        let key = format!("{path}.coupon[{index}]");
        let Some(batch) = batches.get(coupon.batch.as_str()) else {
            return Err(v.error(
                spanned.span(),
                format!("{key}.batch"),
                format!(
                    "batch `{}` is not defined in this activity's [[activity.batch]]",
                    coupon.batch
                ),
            ));
        };
        if coupon.stock == 0 {
            return Err(v.error(
                spanned.span(),
                format!("{key}.stock"),
                "must be greater than 0",
            ));
        }
        if !templates.insert(coupon.template_id) {
            return Err(v.error(
                spanned.span(),
                format!("{key}.template_id"),
                format!(
                    "template {} appears twice; stock is counted per template",
                    coupon.template_id
                ),
            ));
        }
        let def = CouponDef {
            template_id: coupon.template_id,
            batch: coupon.batch.clone(),
            group: batch.group.clone(),
            per_user_limit: batch.per_user_limit,
            stock: coupon.stock,
        };
        insert(
            coupon.award_id,
            AwardDef::Coupon(def),
            format!("{key}.award_id"),
            spanned.span(),
        )?;
    }
    for (index, spanned) in file.pendant.iter().enumerate() {
        let pendant = spanned.get_ref();
        let def = AwardDef::Pendant {
            pendant_id: pendant.pendant_id,
        };
        insert(
            pendant.award_id,
            def,
            format!("{path}.pendant[{index}].award_id"),
            spanned.span(),
        )?;
    }
    Ok(awards)
}

/// Batch and group names become parts of KV keys: keep them short and plain.
fn check_name(name: &str) -> Result<(), String> {
    let plain = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if name.is_empty() || name.len() > 64 || !plain {
        return Err(format!(
            "`{name}` must be 1 to 64 characters of letters, digits, `-` and `.`"
        ));
    }
    Ok(())
}

fn build_scene(
    file: &SceneFile,
    awards: &BTreeMap<u64, AwardDef>,
    path: &str,
    span: Range<usize>,
    v: &Validator<'_>,
) -> Result<Scene, ConfigError> {
    if file.award_ids.is_empty() {
        return Err(v.error(
            span,
            format!("{path}.award_ids"),
            "a scene needs at least one award id",
        ));
    }
    for award_id in &file.award_ids {
        let Some(def) = awards.get(award_id) else {
            return Err(v.error(
                span,
                format!("{path}.award_ids"),
                format!("award id {award_id} is not defined in this activity"),
            ));
        };
        if def.award_type() != file.award_type {
            return Err(v.error(
                span,
                format!("{path}.award_ids"),
                format!(
                    "award id {award_id} is a {} award but the scene gives {}",
                    def.award_type(),
                    file.award_type
                ),
            ));
        }
    }
    if file.rate_limit_qps == Some(0) {
        return Err(v.error(
            span,
            format!("{path}.rate_limit_qps"),
            "must be greater than 0 (omit it for no limit)",
        ));
    }
    if file.crediting == Crediting::Token && file.award_type != AwardType::Cash {
        return Err(v.error(
            span,
            format!("{path}.crediting"),
            format!(
                "token crediting is for cash scenes; this scene gives {}",
                file.award_type
            ),
        ));
    }
    if file.crediting == Crediting::Pipeline && file.award_type != AwardType::Coupon {
        return Err(v.error(
            span,
            format!("{path}.crediting"),
            format!(
                "pipeline crediting is for coupon scenes; this scene gives {}",
                file.award_type
            ),
        ));
    }
    if file.bill_text.trim().is_empty() {
        return Err(v.error(span, format!("{path}.bill_text"), "must not be empty"));
    }
    Ok(Scene {
        id: file.id,
        award_type: file.award_type,
        bill_text: file.bill_text.clone(),
        compensation: file.compensation,
        rate_limit_qps: file.rate_limit_qps,
        stock_control: file.stock_control,
        reconciliation: file.reconciliation,
        award_ids: file.award_ids.clone(),
        crediting: file.crediting,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) const SAMPLE: &str = r#"
[[activity]]
id = 2027
name = "Spring Festival"
per_txn_cap_cents = 20000

[[activity.child]]
id = 1
stage = "internal_test"
start = 2027-02-01T00:00:00+08:00
end = 2027-02-05T00:00:00+08:00
budget_cents = 100000

[[activity.child]]
id = 2
stage = "formal"
start = 2027-02-05T00:00:00+08:00
end = 2027-02-20T00:00:00+08:00
budget_cents = 9000000

[[activity.scene]]
id = 301
award_type = "cash"
bill_text = "Red-packet rain"
reconciliation = true
award_ids = [9001]

[[activity.scene]]
id = 302
award_type = "coupon"
bill_text = "Coupon rain"
stock_control = true
award_ids = [9101]

[[activity.cash]]
award_id = 9001
max_cents = 888

[[activity.batch]]
id = "b1"
group = "g1"
per_user_limit = 2

[[activity.coupon]]
award_id = 9101
template_id = 7001
batch = "b1"
stock = 100
"#;

    fn check_err(edit: impl Fn(&str) -> String, expected: &str) {
        let text = edit(SAMPLE);
        let err = ActivityTree::from_toml_str(&text, "tree.toml")
            .expect_err("must be rejected")
            .to_string();
        assert!(err.contains(expected), "`{err}` lacks `{expected}`");
    }

    #[test]
    fn loads_and_resolves_children_by_time() {
        let tree = ActivityTree::from_toml_str(SAMPLE, "tree.toml").expect("valid sample");
        let activity = tree.activity(2027).expect("activity");
        let feb_3 = datetime_ms(&"2027-02-03T12:00:00+08:00".parse().expect("dt")).expect("ms");
        let feb_5 = datetime_ms(&"2027-02-05T00:00:00+08:00".parse().expect("dt")).expect("ms");
        assert_eq!(activity.child_at(feb_3).map(|c| c.id), Some(1));
        assert_eq!(
            activity.child_at(feb_5).map(|c| c.id),
            Some(2),
            "end is exclusive, start inclusive"
        );
        assert_eq!(activity.child_at(feb_5 - 1).map(|c| c.id), Some(1));
        assert_eq!(activity.child_at(0), None);
        assert_eq!(
            tree.child(2).map(|(a, c)| (a.id, c.stage)),
            Some((2027, Stage::Formal))
        );
        assert_eq!(activity.cash_cap_cents(9001), Some(888));
    }

    #[test]
    fn the_withdraw_gate_is_a_stable_share_plus_an_allow_list() {
        let gate = |percent| WithdrawGate {
            gray_percent: percent,
            allow_list: vec![7],
        };
        let admitted = |percent| (1..=10_000u64).filter(|&a| gate(percent).admits(a)).count();
        assert_eq!(admitted(0), 1, "only the allow-listed user");
        assert_eq!(admitted(100), 10_000);
        let ten = admitted(10);
        assert!((900..=1100).contains(&ten), "about 10% of users: {ten}");
        assert!(
            (1..=10_000u64)
                .filter(|&a| gate(10).admits(a))
                .all(|a| gate(20).admits(a)),
            "widening keeps everyone in"
        );
    }

    #[test]
    fn datetimes_convert_to_unix_ms() {
        let check = |text: &str, ms: u64| {
            assert_eq!(datetime_ms(&text.parse().expect(text)), Ok(ms), "{text}")
        };
        check("1970-01-01T00:00:00Z", 0);
        check("2027-02-06T00:00:00Z", 1_801_872_000_000);
        check("2027-02-06T08:00:00+08:00", 1_801_872_000_000);
        check("2000-03-01T00:00:00.250Z", 951_868_800_250);
        assert!(datetime_ms(&"2027-02-06".parse().expect("date")).is_err());
        assert!(datetime_ms(&"2027-02-06T00:00:00".parse().expect("local")).is_err());
    }

    #[test]
    fn bad_files_name_file_line_and_key() {
        check_err(
            |s| s.replace("budget_cents = 100000", "budget_cents = 100000\nbudegt = 1"),
            "tree.toml:13: activity[0].child[0].budegt: unknown field `budegt`",
        );
        check_err(
            |s| s.replace("budget_cents = 100000", "budget_cents = 0"),
            "tree.toml:7: activity[0].child[0].budget_cents: must be greater than 0",
        );
        check_err(
            |s| s.replace("budget_cents = 100000", "budget_cents = -5"),
            "tree.toml:12: activity[0].child[0].budget_cents: invalid value: integer `-5`",
        );
        check_err(
            |s| {
                s.replace(
                    "end = 2027-02-05T00:00:00+08:00",
                    "end = 2027-01-05T00:00:00+08:00",
                )
            },
            "activity[0].child[0].end: end 2027-01-05T00:00:00+08:00 must be after start",
        );
        check_err(
            |s| {
                s.replace(
                    "start = 2027-02-05T00:00:00+08:00",
                    "start = 2027-02-04T00:00:00+08:00",
                )
            },
            "tree.toml:14: activity[0].child[1].start: window of child 2 overlaps",
        );
        check_err(
            |s| s.replace("award_ids = [9101]", "award_ids = [9001]"),
            "activity[0].scene[1].award_ids: award id 9001 is a cash award but the scene gives coupon",
        );
        check_err(
            |s| s.replace("award_ids = [9101]", "award_ids = [4]"),
            "award id 4 is not defined",
        );
        check_err(
            |s| s.replace("max_cents = 888", "max_cents = 30000"),
            "activity[0].cash[0].max_cents: 30000 exceeds the activity's per_txn_cap_cents 20000",
        );
        check_err(
            |s| s.replace("stock = 100", "stock = 0"),
            "activity[0].coupon[0].stock: must be greater than 0",
        );
        check_err(
            |s| s.replace("batch = \"b1\"", "batch = \"b9\""),
            "batch `b9` is not defined",
        );
        check_err(
            |s| s.replace("stage = \"formal\"", "stage = \"final\""),
            "activity[0].child[1].stage: unknown variant `final`",
        );
        check_err(
            |s| s.replace("id = 2\n", "id = 1\n"),
            "child id 1 is already used",
        );
        check_err(
            |s| s.replace("id = 302", "id = 301"),
            "scene id 301 appears twice",
        );
        check_err(|_| "[[activity]\n".to_owned(), "tree.toml:1");
        check_err(
            |s| {
                s.replace(
                    "stock_control = true",
                    "stock_control = true\ncrediting = \"token\"",
                )
            },
            "activity[0].scene[1].crediting: token crediting is for cash scenes",
        );
        check_err(
            |s| s.replacen("reconciliation = true", "crediting = \"pipeline\"", 1),
            "activity[0].scene[0].crediting: pipeline crediting is for coupon scenes",
        );
        check_err(
            |s| s.replace("reconciliation = true", "crediting = \"later\""),
            "activity[0].scene[0].crediting: unknown variant `later`",
        );
        check_err(
            |s| format!("{s}\n[activity.withdraw]\ngray_percent = 101\n"),
            "activity[0].withdraw.gray_percent: must be 0..=100",
        );
        check_err(|_| String::new(), "tree.toml:1: missing field `activity`");
    }
}
