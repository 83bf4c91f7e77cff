//! `redrain load`: a scenario's trace, live, against a server speaking the protocol.
//!
//! Awards go out as an open-model arrival-rate stream: each leaves at its
//! scheduled time whether or not earlier ones have returned, at most
//! `in_flight_max` are outstanding (a send that finds no room is dropped and
//! counted, never delayed), and latency is measured from the scheduled time
//! into an HDR histogram in µs. User journeys (wallet page, the next flow
//! page, the withdraw page, the withdraw) are goose scenarios fed by the same
//! trace. Afterwards the target drains, its audit export is read and I1–I8
//! are checked on it; the record is the same `RunRecord` a simulated run writes.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use goose::prelude::*;
use hdrhistogram::Histogram;
use rand::{RngExt as _, SeedableRng as _};
use rand_chacha::ChaCha8Rng;
use reference::http::AwardBody;
use reference::token::{KeyRing, decode_unverified};
use reference::wallet::{CLIENT_TOKENS_MAX, IssueOutcome, WithdrawOutcome, WithdrawRequest};
use reference::{ActId, Millis};
use reports::{LatencySummary, LiveSummary, RunRecord, SecondSample};
use tokio::time::Instant;

use super::client::{CallError, Target};
use super::driver::{Answer, Feed, Slot};
use super::state::read_final_state;
use crate::check::{self, Violation};
use crate::history::{Event, FinalState, History};
use crate::options::RunOptions;
use crate::scenario::Scenario;
use crate::trace::client::{CLIENT_RNG_NAME, forger_keys};
use crate::trace::{Op, Request, Trace, TraceHasher};

/// Longest latency the histograms tell apart: a minute (longer counts as a minute).
const LATENCY_MAX_US: u64 = 60_000_000;
/// Flow lines a journey's wallet page asks for.
const PAGE_LIMIT: usize = 20;
/// Ops per batch from the trace thread.
const BATCH_OPS: usize = 2048;
/// How often the hot counter is polled when the scenario has one.
const COUNTER_POLL_MS: u64 = 100;

/// How to load.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// `http://127.0.0.1:PORT`.
    pub target: String,
    /// The target's admin token (clock, drain, audit).
    pub admin_token: String,
    /// Share of the profile's users sent (the rate scales with it). The server
    /// must be started with the same share (`redrain serve --rate-scale`).
    pub rate_scale: f64,
    /// Stop the trace after this many seconds.
    pub duration_s_max: Option<u64>,
    /// Award requests outstanding at most; more are dropped and counted.
    pub in_flight_max: usize,
    /// Seed (default: the scenario's).
    pub seed: Option<u64>,
    /// goose users running the journeys.
    pub journey_users: usize,
    /// Longest wait for the target to drain, wall ms.
    pub drain_ms_max: u64,
    /// Draw a live progress line.
    pub progress: bool,
}

/// What a load produced.
#[derive(Debug)]
pub struct LoadOutput {
    /// The record.
    pub record: RunRecord,
    /// Every answered request, in answer order (by the target's clock).
    pub history: History,
    /// The target's final state, from its audit export.
    pub state: FinalState,
    /// Every violation found.
    pub violations: Vec<Violation>,
}

/// A journey from the trace: its scheduled time (since the start) and request.
#[derive(Debug, Clone)]
struct Journey {
    due_ms: u64,
    request: Request,
}

/// What the driver carries with each award.
#[derive(Debug)]
struct IssueMeta {
    second: u64,
    request: reference::wallet::IssueRequest,
}

/// One connection's sends.
#[derive(Debug, Default)]
struct SentAwards {
    answers: Vec<(IssueMeta, u16, bytes::Bytes, u64)>,
    dropped: Vec<u64>,
    failed: Vec<(IssueMeta, String)>,
}

/// Attempts at an award whose first send has an unknown outcome (no answer,
/// or a 5xx: the write may have committed), with the same order number.
const UNKNOWN_RETRIES_MAX: u32 = 3;

/// Send again, as a wallet client must, every award whose outcome is unknown,
/// with the same order number, until the target decides it: the answer (a
/// duplicate when the first write committed) goes into the history, so the
/// checkers know every entry the target holds. Returns how many stay unknown.
async fn settle_unknown(
    target: &Target,
    shared: &Shared,
    unknown: Vec<reference::wallet::IssueRequest>,
) -> u64 {
    let mut left = 0;
    for request in unknown {
        let body = AwardBody {
            request,
            green: false,
        };
        let mut decided = None;
        for attempt in 0..UNKNOWN_RETRIES_MAX {
            if attempt > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(200 << attempt)).await;
            }
            match target.issue(&body).await {
                Ok(answer) => {
                    decided = Some(answer);
                    break;
                }
                Err(e) => tracing::debug!(error = %e, "an unknown award, sent again"),
            }
        }
        let Some(answer) = decided else {
            left += 1;
            continue;
        };
        *lock(&shared.errors)
            .entry("live.resent".to_owned())
            .or_default() += 1;
        shared.keep_token_copy_of(&answer.outcome);
        lock(&shared.events).push(Event::Issue {
            at_ms: answer.at_ms,
            request: body.request,
            outcome: answer.outcome,
        });
    }
    left
}

/// An award's answer: the outcome, or a label for what came instead.
fn decode_issue(status: u16, body: &[u8]) -> Result<reference::http::IssueAnswer, String> {
    if matches!(status, 200 | 409 | 422 | 429) {
        return serde_json::from_slice(body).map_err(|_| "error.not_protocol".to_owned());
    }
    Err(
        serde_json::from_slice::<reference::http::ErrorBody>(body).map_or_else(
            |_| "error.not_protocol".to_owned(),
            |b| format!("error.{}", b.code),
        ),
    )
}

/// What every sender and journey writes into.
#[derive(Debug)]
struct Shared {
    events: Mutex<Vec<Event>>,
    /// Each user's copies of its tokens (the client's backup, presented on withdraw).
    tokens: Mutex<HashMap<ActId, Vec<Vec<u8>>>>,
    issue_latency: Mutex<Histogram<u64>>,
    journey_latency: Mutex<Histogram<u64>>,
    errors: Mutex<BTreeMap<String, u64>>,
    /// Per second since the start: offered, awarded, rejected by label.
    seconds: Mutex<BTreeMap<u64, SecondCounts>>,
    journeys: Mutex<VecDeque<Journey>>,
    journeys_done: AtomicU64,
    feed_closed: AtomicBool,
    forged: AtomicU64,
    forger: KeyRing,
    rng: Mutex<ChaCha8Rng>,
    forged_rate: f64,
    activity_id: u64,
}

#[derive(Debug, Default, Clone)]
struct SecondCounts {
    offered: u64,
    awarded: u64,
    rejected: BTreeMap<String, u64>,
    latency: Option<Histogram<u64>>,
    counter_shown: i64,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_MAX_US, 3).expect("valid histogram bounds")
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Shared {
    fn record_issue(&self, second: u64, latency_us: u64, outcome: &IssueOutcome) {
        lock(&self.issue_latency).saturating_record(latency_us.max(1));
        let mut seconds = lock(&self.seconds);
        let row = seconds.entry(second).or_default();
        row.latency
            .get_or_insert_with(histogram)
            .saturating_record(latency_us.max(1));
        match outcome {
            IssueOutcome::Issued { .. }
            | IssueOutcome::Accepted { .. }
            | IssueOutcome::Queued { .. } => {
                row.awarded += 1;
            }
            other if other.label() == "duplicate" => {}
            other => *row.rejected.entry(other.label().to_owned()).or_default() += 1,
        }
    }

    /// Keep the client's copy of the token an answer carries.
    fn keep_token_copy(&self, body: &[u8]) {
        if let Ok(answer) = serde_json::from_slice::<reference::http::IssueAnswer>(body) {
            self.keep_token_copy_of(&answer.outcome);
        }
    }

    fn keep_token_copy_of(&self, outcome: &IssueOutcome) {
        if let IssueOutcome::Accepted { token } | IssueOutcome::DuplicateToken { token } = outcome {
            let mut tokens = lock(&self.tokens);
            let copies = tokens.entry(token.act_id).or_default();
            if !copies.contains(&token.bytes) {
                copies.push(token.bytes.clone());
            }
        }
    }

    /// The client's token copies for a withdraw, plus a forgery at the scenario's rate.
    fn client_tokens(&self, act_id: ActId) -> Vec<Vec<u8>> {
        let tokens = lock(&self.tokens);
        let own = tokens.get(&act_id);
        let mut copies: Vec<Vec<u8>> = own
            .map(|c| c[c.len().saturating_sub(CLIENT_TOKENS_MAX - 1)..].to_vec())
            .unwrap_or_default();
        let mut rng = lock(&self.rng);
        if rng.random::<f64>() < self.forged_rate {
            self.forged.fetch_add(1, Ordering::Relaxed);
            let forged = match (rng.random_range(0..3u8), own.and_then(|c| c.first())) {
                (0, Some(token)) => {
                    let mut tampered = token.clone();
                    let index = rng.random_range(0..tampered.len());
                    tampered[index] ^= 1 << rng.random_range(0..8u32);
                    tampered
                }
                (1, Some(token)) => match decode_unverified(token) {
                    Some(mut invented) => {
                        // New money: an order never issued, signed with a foreign key.
                        invented.order_no.rain_id =
                            invented.order_no.rain_id.wrapping_add(1_000_000);
                        self.forger
                            .sign(&invented)
                            .unwrap_or_else(|| b"not a token".to_vec())
                    }
                    None => b"not a token".to_vec(),
                },
                _ => b"not a token".to_vec(),
            };
            copies.push(forged);
        }
        copies
    }
}

/// The ops of the trace, generated (and hashed) on a thread of their own.
fn spawn_trace(
    scenario: Scenario,
    seed: u64,
    cutoff_ms: u64,
) -> anyhow::Result<(
    tokio::sync::mpsc::Receiver<Vec<Op>>,
    std::thread::JoinHandle<TraceHasher>,
)> {
    let (sender, receiver) = tokio::sync::mpsc::channel::<Vec<Op>>(8);
    let handle = std::thread::Builder::new()
        .name("redrain-load-trace".to_owned())
        .spawn(move || {
            let mut hasher = TraceHasher::default();
            let mut batch = Vec::with_capacity(BATCH_OPS);
            for op in Trace::new(&scenario, seed) {
                if op.at_ms >= cutoff_ms {
                    break;
                }
                hasher.add(&op);
                batch.push(op);
                if batch.len() == BATCH_OPS
                    && sender.blocking_send(std::mem::take(&mut batch)).is_err()
                {
                    return hasher;
                }
            }
            if !batch.is_empty() {
                let _ = sender.blocking_send(batch);
            }
            hasher
        })
        .context("starting the trace thread")?;
    Ok((receiver, handle))
}

/// Load `scenario` onto the target.
pub async fn load(scenario: &Scenario, options: &LoadOptions) -> anyhow::Result<LoadOutput> {
    anyhow::ensure!(
        options.rate_scale > 0.0 && options.rate_scale <= 1.0,
        "--rate-scale {} is out of range: give a share of users in (0, 1]",
        options.rate_scale
    );
    anyhow::ensure!(
        options.in_flight_max > 0,
        "--in-flight-max must be at least 1"
    );
    let run_options = RunOptions {
        sample_rate: Some(options.rate_scale),
        ..RunOptions::default()
    };
    let scenario = crate::options::effective_scenario(scenario, &run_options);
    let seed = options.seed.unwrap_or(scenario.seed);
    let target = Target::new(&options.target, &options.admin_token, true)?;
    target.require_fresh_shadow("a live load").await?;
    // Put the wallet at the trace's start; a target already past it keeps its time.
    let offset_ms = match target.set_clock(scenario.start_ms).await {
        Ok(now) => now.saturating_sub(scenario.start_ms),
        Err(CallError::Refused { body, .. }) if body.code == "clock_backwards" => {
            let now = target
                .health()
                .await
                .map(|h| h.at_ms)
                .unwrap_or(scenario.start_ms);
            now.saturating_sub(scenario.start_ms)
        }
        Err(e) => return Err(e).context("setting the target's clock"),
    };
    // The checkers judge the target by this run's tree: the target must serve
    // the same one, scaled the same (a coupon's stock tells).
    if let Some(coupon) = scenario
        .tree
        .activity(scenario.activity_id)
        .and_then(|a| a.coupons().next())
        && let Ok(stock) = target.stock(scenario.activity_id, coupon.template_id).await
        && stock.total != coupon.stock
    {
        anyhow::bail!(
            "the target's coupon template {} has a stock of {}, this run's tree {}: start \
             the target with the same scenario and --rate-scale {} (`redrain serve {} \
             --rate-scale {}`), or the checkers would judge it by another tree",
            coupon.template_id,
            stock.total,
            coupon.stock,
            options.rate_scale,
            scenario.path.display(),
            options.rate_scale
        );
    }
    let duration_ms = match options.duration_s_max {
        Some(s) => scenario.duration_ms.min(s.saturating_mul(1000)),
        None => scenario.duration_ms,
    };
    anyhow::ensure!(
        offset_ms + duration_ms <= 86_400_000,
        "the target's clock is {offset_ms} ms past the trace's start; restart it"
    );
    let shared = Arc::new(Shared {
        events: Mutex::new(Vec::new()),
        tokens: Mutex::new(HashMap::new()),
        issue_latency: Mutex::new(histogram()),
        journey_latency: Mutex::new(histogram()),
        errors: Mutex::new(BTreeMap::new()),
        seconds: Mutex::new(BTreeMap::new()),
        journeys: Mutex::new(VecDeque::new()),
        journeys_done: AtomicU64::new(0),
        feed_closed: AtomicBool::new(false),
        forged: AtomicU64::new(0),
        forger: forger_keys(seed),
        rng: Mutex::new(ChaCha8Rng::seed_from_u64(seed ^ CLIENT_RNG_NAME)),
        forged_rate: scenario.traffic.forged_token_rate,
        activity_id: scenario.activity_id,
    });
    let (mut batches, trace_thread) =
        spawn_trace(scenario.clone(), seed, scenario.start_ms + duration_ms)?;
    let started_wall = std::time::Instant::now();
    // Everyone's time zero: a little ahead, so the first sends are not late.
    let zero = Instant::now() + Duration::from_millis(50);
    let goose = tokio::spawn(run_journeys(
        target.clone(),
        shared.clone(),
        zero,
        options.journey_users.max(1),
        duration_ms,
    ));
    let stop_counter = Arc::new(AtomicBool::new(false));
    let counter = scenario.counter.is_some().then(|| {
        tokio::spawn(poll_counter(
            target.clone(),
            shared.clone(),
            stop_counter.clone(),
            zero,
        ))
    });
    let bar = progress_line(options.progress, duration_ms / 1000);
    // Awards: the open-model driver on a thread of its own (one core), fed in
    // time order; answers are kept raw and decoded once the sending is over,
    // except token answers, whose copies the client needs for its withdraws.
    let addr = super::driver::resolve(target.base()).await?;
    let feed: Arc<Feed<IssueMeta>> = Arc::new(Feed::queue());
    let answered = Arc::new(AtomicU64::new(0));
    let sender = {
        let shared = shared.clone();
        let answered = answered.clone();
        tokio::spawn(super::driver::drive_on_own_thread(
            addr,
            "/v1/awards",
            true,
            options.in_flight_max,
            feed.clone(),
            SentAwards::default,
            move |sent: &mut SentAwards, meta: IssueMeta, answer| match answer {
                Answer::Answered {
                    status,
                    body,
                    latency_us,
                } => {
                    answered.fetch_add(1, Ordering::Relaxed);
                    if body.windows(9).any(|w| w == b"\"token\":{") {
                        shared.keep_token_copy(&body);
                    }
                    sent.answers.push((meta, status, body, latency_us));
                }
                Answer::Dropped => sent.dropped.push(meta.second),
                Answer::Failed { error } => sent.failed.push((meta, error)),
            },
        ))
    };
    let mut scheduled = 0u64;
    let mut last_second = u64::MAX;
    while let Some(batch) = batches.recv().await {
        for op in batch {
            let due_ms = op.at_ms - scenario.start_ms;
            let due = zero + Duration::from_millis(due_ms);
            // Stay a little ahead of the schedule, not far: the feed is memory.
            let lead = Duration::from_millis(500);
            if due > Instant::now() + lead {
                tokio::time::sleep_until(due - lead).await;
            }
            let second = due_ms / 1000;
            lock(&shared.seconds).entry(second).or_default().offered += 1;
            if second != last_second {
                last_second = second;
                if let Some(bar) = &bar {
                    bar.set_position(second);
                    bar.set_message(format!(
                        "scheduled {scheduled} · answered {} · waiting {}",
                        answered.load(Ordering::Relaxed),
                        feed.len()
                    ));
                }
            }
            let request = match op.request {
                Request::Issue(request) => request,
                journey => {
                    lock(&shared.journeys).push_back(Journey {
                        due_ms,
                        request: journey,
                    });
                    continue;
                }
            };
            scheduled += 1;
            let body = serde_json::to_vec(&AwardBody {
                request: request.clone(),
                green: false,
            })
            .context("encoding an award")?;
            feed.push(Slot {
                due,
                body: bytes::Bytes::from(body),
                meta: IssueMeta { second, request },
            });
        }
    }
    feed.close();
    shared.feed_closed.store(true, Ordering::SeqCst);
    let trace = trace_thread
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
    let (sent_awards, in_flight_peak) = sender.await.context("the driver's task")??;
    let goose_figures = goose.await.context("the journeys' task")??;
    let send_ms = started_wall.elapsed().as_millis() as u64;
    stop_counter.store(true, Ordering::SeqCst);
    if let Some(counter) = counter {
        let _ = counter.await;
    }
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    let (mut sent, mut dropped) = (0u64, 0u64);
    let mut unknown = Vec::new();
    for awards in sent_awards {
        dropped += awards.dropped.len() as u64;
        sent += (awards.answers.len() + awards.failed.len()) as u64;
        for second in awards.dropped {
            *lock(&shared.seconds)
                .entry(second)
                .or_default()
                .rejected
                .entry("live.dropped".to_owned())
                .or_default() += 1;
        }
        for (meta, error) in awards.failed {
            let second = meta.second;
            unknown.push(meta.request);
            tracing::debug!(%error, "an award got no answer");
            *lock(&shared.errors)
                .entry("error.transport".to_owned())
                .or_default() += 1;
            *lock(&shared.seconds)
                .entry(second)
                .or_default()
                .rejected
                .entry("error.transport".to_owned())
                .or_default() += 1;
        }
        for (meta, status, body, latency_us) in awards.answers {
            match decode_issue(status, &body) {
                Ok(answer) => {
                    shared.record_issue(meta.second, latency_us, &answer.outcome);
                    lock(&shared.events).push(Event::Issue {
                        at_ms: answer.at_ms,
                        request: meta.request,
                        outcome: answer.outcome,
                    });
                }
                Err(label) => {
                    if status >= 500 {
                        unknown.push(meta.request);
                    }
                    lock(&shared.issue_latency).saturating_record(latency_us.max(1));
                    *lock(&shared.errors).entry(label.clone()).or_default() += 1;
                    *lock(&shared.seconds)
                        .entry(meta.second)
                        .or_default()
                        .rejected
                        .entry(label)
                        .or_default() += 1;
                }
            }
        }
    }
    let unknown_left = settle_unknown(&target, &shared, unknown).await;
    if unknown_left > 0 {
        // The checkers may then find entries no answer named: say why first.
        *lock(&shared.errors)
            .entry("live.outcome_unknown".to_owned())
            .or_default() += unknown_left;
        tracing::warn!(
            awards = unknown_left,
            "awards whose outcome stayed unknown after {UNKNOWN_RETRIES_MAX} sends; \
             their entries, if any, are named by no answer"
        );
    }
    let drain_started = std::time::Instant::now();
    let drain = target
        .drain(options.drain_ms_max)
        .await
        .context("draining the target")?;
    let drain_ms = drain_started.elapsed().as_millis() as u64;
    // One last counter read once everything is flushed.
    if scenario.counter.is_some()
        && let Ok(read) = target.counter().await
        && let Some(value) = read.value
    {
        lock(&shared.events).push(Event::CounterRead {
            at_ms: read.at_ms,
            reader: 0,
            shown: value,
            lag_ms: read.lag_ms,
        });
    }
    let mut events = std::mem::take(&mut *lock(&shared.events));
    // Answer order by the target's clock (sends overlap, so arrival order here is not).
    events.sort_by_key(event_time);
    let history = History { events };
    let state = read_final_state(&target, &history).await?;
    let violations = check::check_all(&scenario.tree, &history, &state);
    let issue_latency = summary(&lock(&shared.issue_latency));
    let journey_latency = summary(&lock(&shared.journey_latency));
    let live = LiveSummary {
        target: target.base().to_owned(),
        rate_scale: options.rate_scale,
        scheduled,
        sent,
        dropped,
        in_flight_max: options.in_flight_max as u64,
        in_flight_peak,
        errors: lock(&shared.errors).clone(),
        issue_latency_us: issue_latency,
        journeys: shared.journeys_done.load(Ordering::Relaxed),
        journey_latency_us: journey_latency,
        goose_requests: goose_figures.0,
        goose_failures: goose_figures.1,
        sent_per_s: sent as f64 * 1000.0 / (duration_ms.max(1) as f64),
        send_ms,
        drain_ms,
        drained: drain.drained,
    };
    let series = series(&lock(&shared.seconds));
    let forged = shared.forged.load(Ordering::Relaxed);
    let record = crate::record::live::live_record(crate::record::live::LiveRun {
        scenario: &scenario,
        seed,
        history: &history,
        state: &state,
        violations: &violations,
        trace,
        series,
        live: Some(live),
        elapsed_ms: started_wall.elapsed().as_millis() as u64,
        forged_presented: forged,
        reproduce: reproduce(&scenario, options),
    });
    Ok(LoadOutput {
        record,
        history,
        state,
        violations,
    })
}

/// The time of an event, for sorting into answer order.
pub(super) fn event_time(event: &Event) -> Millis {
    match event {
        Event::Issue { at_ms, .. }
        | Event::Withdraw { at_ms, .. }
        | Event::View { at_ms, .. }
        | Event::Switch { at_ms, .. }
        | Event::CounterRead { at_ms, .. }
        | Event::WorkerCrash { at_ms, .. } => *at_ms,
    }
}

fn reproduce(scenario: &Scenario, options: &LoadOptions) -> String {
    let mut line = format!(
        "redrain load {} --target {} --rate-scale {}",
        scenario.path.display(),
        options.target,
        options.rate_scale
    );
    if let Some(s) = options.duration_s_max {
        line.push_str(&format!(" --duration-s-max {s}"));
    }
    if let Some(seed) = options.seed {
        line.push_str(&format!(" --seed {seed}"));
    }
    line.push_str(&format!(" --in-flight-max {}", options.in_flight_max));
    line
}

fn summary(h: &Histogram<u64>) -> Option<LatencySummary> {
    (!h.is_empty()).then(|| LatencySummary {
        count: h.len(),
        p50_us: h.value_at_quantile(0.5),
        p90_us: h.value_at_quantile(0.9),
        p99_us: h.value_at_quantile(0.99),
        p999_us: h.value_at_quantile(0.999),
        max_us: h.max(),
        mean_us: h.mean(),
    })
}

fn series(seconds: &BTreeMap<u64, SecondCounts>) -> Vec<SecondSample> {
    let Some(last) = seconds.keys().next_back().copied() else {
        return Vec::new();
    };
    (0..=last)
        .map(|t_s| {
            let row = seconds.get(&t_s).cloned().unwrap_or_default();
            SecondSample {
                t_s,
                offered: row.offered,
                awarded: row.awarded,
                rejected: row.rejected,
                counter_shown: row.counter_shown,
                latency_p99_us: row
                    .latency
                    .as_ref()
                    .map_or(0, |h| h.value_at_quantile(0.99)),
                ..SecondSample::default()
            }
        })
        .collect()
}

fn progress_line(enabled: bool, seconds: u64) -> Option<indicatif::ProgressBar> {
    if !enabled || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        return None;
    }
    let bar = indicatif::ProgressBar::new(seconds.max(1));
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{elapsed_precise} [{bar:30}] {pos}/{len} s · {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    Some(bar)
}

/// Poll the hot counter as a display would, recording each value shown.
async fn poll_counter(target: Target, shared: Arc<Shared>, stop: Arc<AtomicBool>, zero: Instant) {
    let mut ticker = tokio::time::interval_at(zero, Duration::from_millis(COUNTER_POLL_MS));
    while !stop.load(Ordering::SeqCst) {
        ticker.tick().await;
        let Ok(read) = target.counter().await else {
            continue;
        };
        let Some(value) = read.value else { continue };
        let second = zero.elapsed().as_secs();
        {
            let mut seconds = lock(&shared.seconds);
            let row = seconds.entry(second).or_default();
            row.counter_shown = row.counter_shown.max(value);
        }
        lock(&shared.events).push(Event::CounterRead {
            at_ms: read.at_ms,
            reader: 0,
            shown: value,
            lag_ms: read.lag_ms,
        });
    }
}

/// The journeys as a goose attack: `users` goose users take the trace's wallet
/// opens and withdraws in time order, each waiting for its scheduled time.
/// Returns goose's (requests, failures).
async fn run_journeys(
    target: Target,
    shared: Arc<Shared>,
    zero: Instant,
    users: usize,
    duration_ms: u64,
) -> anyhow::Result<(u64, u64)> {
    let feed = shared.clone();
    let base = target.base().to_owned();
    let journey: TransactionFunction = Arc::new(move |user: &mut GooseUser| {
        let shared = feed.clone();
        Box::pin(async move {
            loop {
                let next = lock(&shared.journeys).pop_front();
                let Some(journey) = next else {
                    if shared.feed_closed.load(Ordering::SeqCst) {
                        // Nothing left: idle until goose's run time ends.
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        return Ok(());
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    continue;
                };
                let due = zero + Duration::from_millis(journey.due_ms);
                if due > Instant::now() {
                    tokio::time::sleep_until(due).await;
                }
                run_journey(user, &shared, journey, due).await;
                return Ok(());
            }
        })
    });
    let (requests, failures) = super::run_goose(
        Transaction::new(journey).set_name("journey"),
        &format!("{base}/"),
        users,
        (duration_ms / 1000 + 2) as usize,
    )
    .await?;
    // Journeys goose's run time cut off are counted, not silently lost.
    loop {
        let next = lock(&shared.journeys).pop_front();
        let Some(_journey) = next else { break };
        *lock(&shared.errors)
            .entry("live.journey_not_run".to_owned())
            .or_default() += 1;
    }
    Ok((requests, failures))
}

/// One journey: open the wallet page (and the next flow page when there is
/// one); for a withdraw, enter the withdraw page and withdraw with the
/// client's token copies.
async fn run_journey(user: &mut GooseUser, shared: &Shared, journey: Journey, due: Instant) {
    let second = journey.due_ms / 1000;
    let (act_id, withdraw) = match journey.request {
        Request::View { act_id } => (act_id, None),
        Request::Withdraw(request) => (request.act_id, Some(request)),
        Request::Issue(_) => return,
    };
    let activity_id = shared.activity_id;
    let page_path = format!("v1/wallets/{activity_id}/{act_id}?limit={PAGE_LIMIT}");
    let first = goose_get::<reference::http::ViewAnswer>(user, &page_path, "wallet page").await;
    lock(&shared.journey_latency).saturating_record((due.elapsed().as_micros() as u64).max(1));
    match first {
        Ok(page) => {
            if let Some(next) = &page.view.next {
                let kind = serde_json::to_value(next.kind)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default();
                let path = format!(
                    "{page_path}&after_at_ms={}&after_kind={kind}&after_id={}",
                    next.at_ms,
                    url_escape(&next.id)
                );
                let _ = goose_get::<reference::http::ViewAnswer>(user, &path, "flow page").await;
            }
            if withdraw.is_none() {
                lock(&shared.events).push(Event::View {
                    at_ms: page.at_ms,
                    activity_id,
                    act_id,
                    view: page.view,
                });
            }
        }
        Err(label) => {
            *lock(&shared.errors).entry(label.clone()).or_default() += 1;
            *lock(&shared.seconds)
                .entry(second)
                .or_default()
                .rejected
                .entry(label)
                .or_default() += 1;
        }
    }
    if let Some(mut request) = withdraw {
        // The withdraw page, then the withdraw itself.
        let _ = goose_get::<reference::http::ViewAnswer>(
            user,
            &format!("v1/wallets/{activity_id}/{act_id}?limit=1"),
            "withdraw page",
        )
        .await;
        request.client_tokens = shared.client_tokens(act_id);
        match goose_withdraw(user, &request).await {
            Ok(answer) => {
                lock(&shared.journey_latency)
                    .saturating_record((due.elapsed().as_micros() as u64).max(1));
                let mut seconds = lock(&shared.seconds);
                let row = seconds.entry(second).or_default();
                match &answer.outcome {
                    WithdrawOutcome::Withdrawn { .. } | WithdrawOutcome::Duplicate { .. } => {}
                    other => *row.rejected.entry(other.label().to_owned()).or_default() += 1,
                }
                drop(seconds);
                lock(&shared.events).push(Event::Withdraw {
                    at_ms: answer.at_ms,
                    request,
                    outcome: answer.outcome,
                });
            }
            Err(label) => *lock(&shared.errors).entry(label).or_default() += 1,
        }
    }
    shared.journeys_done.fetch_add(1, Ordering::Relaxed);
}

fn url_escape(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// A GET through goose (so goose counts it), shadow-tagged, decoded.
async fn goose_get<T: serde::de::DeserializeOwned>(
    user: &mut GooseUser,
    path: &str,
    name: &str,
) -> Result<T, String> {
    let builder = user
        .get_request_builder(&GooseMethod::Get, path)
        .map_err(|e| format!("error.goose: {e}"))?
        .header(reference::http::SHADOW_HEADER, "1");
    let request = GooseRequest::builder()
        .method(GooseMethod::Get)
        .path(path)
        .name(name)
        .set_request_builder(builder)
        .build();
    let goose = user
        .request(request)
        .await
        .map_err(|e| format!("error.goose: {e}"))?;
    let response = goose.response.map_err(|_| "error.transport".to_owned())?;
    let status = response.status().as_u16();
    let bytes = response
        .bytes()
        .await
        .map_err(|_| "error.transport".to_owned())?;
    if status == 200 {
        serde_json::from_slice(&bytes).map_err(|_| "error.not_protocol".to_owned())
    } else {
        Err(
            serde_json::from_slice::<reference::http::ErrorBody>(&bytes).map_or_else(
                |_| "error.not_protocol".to_owned(),
                |b| format!("error.{}", b.code),
            ),
        )
    }
}

/// A withdraw through goose: its 409/422/429 are answers, so goose is told it succeeded.
async fn goose_withdraw(
    user: &mut GooseUser,
    request: &WithdrawRequest,
) -> Result<reference::http::WithdrawAnswer, String> {
    let builder = user
        .get_request_builder(&GooseMethod::Post, "v1/withdrawals")
        .map_err(|e| format!("error.goose: {e}"))?
        .header(reference::http::SHADOW_HEADER, "1")
        .json(request);
    let goose_request = GooseRequest::builder()
        .method(GooseMethod::Post)
        .path("v1/withdrawals")
        .name("withdraw")
        .set_request_builder(builder)
        .build();
    let mut goose = user
        .request(goose_request)
        .await
        .map_err(|e| format!("error.goose: {e}"))?;
    let response = goose.response.map_err(|_| "error.transport".to_owned())?;
    let status = response.status().as_u16();
    let bytes = response
        .bytes()
        .await
        .map_err(|_| "error.transport".to_owned())?;
    if matches!(status, 200 | 409 | 422 | 429) {
        let answer = serde_json::from_slice(&bytes).map_err(|_| "error.not_protocol".to_owned())?;
        let _ = user.set_success(&mut goose.request);
        Ok(answer)
    } else {
        Err(
            serde_json::from_slice::<reference::http::ErrorBody>(&bytes).map_or_else(
                |_| "error.not_protocol".to_owned(),
                |b| format!("error.{}", b.code),
            ),
        )
    }
}
