//! The optional fault routes of `/v1` (a target's own nemesis): crash the credit
//! worker or the coupon pipeline at a named point, restart background work as a
//! process restart would, take a store away for a while; and
//! `/v1/capabilities`, which says which of them a target offers.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};

use super::api::{Capabilities, ErrorBody, FaultBody, FaultStatus};
use super::{ApiError, ApiJson, AppState, lock, require_admin, shadow_of};
use crate::pipeline::PipelineCrash;
use crate::worker::CrashPoint;

/// Longest store outage one fault may ask for, wall ms.
pub const OUTAGE_MS_MAX: u64 = 60_000;

/// A store a `store_outage` can take away.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum StoreKind {
    /// The ledger (balances and entries).
    Ledger,
    /// The KV (tokens, queues, stock, counters).
    Kv,
}

impl StoreKind {
    /// Both, in the order they are listed.
    pub const ALL: [StoreKind; 2] = [StoreKind::Ledger, StoreKind::Kv];

    /// Its wire name.
    pub fn name(self) -> &'static str {
        match self {
            StoreKind::Ledger => "ledger",
            StoreKind::Kv => "kv",
        }
    }
}

/// What makes a store refuse every call (as if unreachable) and brings it back;
/// the server is handed one over the stores it was built on.
pub trait StoreSwitch: Send + Sync + std::fmt::Debug {
    /// Take `store` of the real (or, with `shadow`, the shadow) side down or up.
    fn set_down(&self, store: StoreKind, shadow: bool, down: bool);
}

/// One side's armed and fired faults; background work reads it every tick.
#[derive(Debug, Default)]
pub(super) struct Nemesis {
    worker_armed: std::sync::Mutex<Option<CrashPoint>>,
    pipeline_armed: std::sync::Mutex<Option<PipelineCrash>>,
    restart: AtomicBool,
    worker_crashes: AtomicU64,
    pipeline_crashes: AtomicU64,
    restarts: AtomicU64,
    outages: AtomicU64,
    /// Per store: until when it is down (the latest outage's end).
    down_until: std::sync::Mutex<BTreeMap<StoreKind, Instant>>,
}

impl Nemesis {
    /// The worker crash point armed and not yet reached.
    pub(super) fn worker_armed(&self) -> Option<CrashPoint> {
        *lock(&self.worker_armed)
    }

    pub(super) fn worker_crashed(&self) {
        *lock(&self.worker_armed) = None;
        self.worker_crashes.fetch_add(1, Ordering::SeqCst);
    }

    pub(super) fn pipeline_crashed(&self) {
        *lock(&self.pipeline_armed) = None;
        self.pipeline_crashes.fetch_add(1, Ordering::SeqCst);
    }

    /// Whether a restart was asked for (once).
    pub(super) fn take_restart(&self) -> bool {
        self.restart.swap(false, Ordering::SeqCst)
    }

    pub(super) fn restarted(&self) {
        self.restarts.fetch_add(1, Ordering::SeqCst);
    }

    fn status(&self) -> FaultStatus {
        let now = Instant::now();
        FaultStatus {
            worker_armed: self.worker_armed().map(|p| p.name().to_owned()),
            pipeline_armed: lock(&self.pipeline_armed).map(|p| p.name().to_owned()),
            worker_crashes: self.worker_crashes.load(Ordering::SeqCst),
            pipeline_crashes: self.pipeline_crashes.load(Ordering::SeqCst),
            restarts: self.restarts.load(Ordering::SeqCst),
            outages: self.outages.load(Ordering::SeqCst),
            stores_down: lock(&self.down_until)
                .iter()
                .filter(|(_, until)| **until > now)
                .map(|(store, _)| store.name().to_owned())
                .collect(),
        }
    }
}

fn invalid(message: String) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_fault", message)
}

fn names<T: Copy>(all: &[T], name: impl Fn(T) -> &'static str) -> Vec<String> {
    all.iter().map(|p| name(*p).to_owned()).collect()
}

fn capabilities(state: &AppState) -> Capabilities {
    let mut faults = vec!["worker_crash".to_owned()];
    let mut pipeline_crash_points = Vec::new();
    if state.config.pipeline.is_some() {
        faults.push("pipeline_crash".to_owned());
        pipeline_crash_points = names(&PipelineCrash::ALL, PipelineCrash::name);
    }
    faults.push("restart".to_owned());
    let mut outage_stores = Vec::new();
    if state.stores.is_some() {
        faults.push("store_outage".to_owned());
        outage_stores = names(&StoreKind::ALL, StoreKind::name);
    }
    let worker = &state.config.worker;
    let pipeline = state.config.pipeline.as_ref().map_or(0, |p| {
        p.compensation_timeout_ms + p.compensation_interval_ms
    });
    Capabilities {
        faults,
        worker_crash_points: names(&CrashPoint::ALL, CrashPoint::name),
        pipeline_crash_points,
        outage_stores,
        recovery_ms: (worker.processing_timeout_ms + worker.scan_interval_ms).max(pipeline) + 1_000,
        clock_freeze: true,
    }
}

/// What this server offers beyond the core protocol.
#[utoipa::path(get, path = "/v1/capabilities", tag = "operations",
    responses((status = 200, description = "The optional parts offered", body = Capabilities)))]
pub(super) async fn get_capabilities(State(state): State<Arc<AppState>>) -> Json<Capabilities> {
    Json(capabilities(&state))
}

/// Faults armed and fired so far.
#[utoipa::path(get, path = "/v1/admin/faults", tag = "admin", security(("admin" = [])),
    params(("X-Shadow" = Option<String>, Header, description = "`1`: the shadow side")),
    responses((status = 200, description = "Armed and fired", body = FaultStatus)))]
pub(super) async fn get_faults(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<FaultStatus>, ApiError> {
    require_admin(&state, &headers)?;
    let side = state.side(shadow_of(&headers)?)?;
    Ok(Json(side.nemesis.status()))
}

/// Inject a fault: arm a crash, ask for a restart, or take a store away.
#[utoipa::path(post, path = "/v1/admin/faults", tag = "admin", security(("admin" = [])),
    request_body = FaultBody,
    params(("X-Shadow" = Option<String>, Header, description = "`1`: the shadow side")),
    responses((status = 202, description = "Armed or begun; the status after it", body = FaultStatus),
              (status = 422, description = "A point, store or duration this server does not offer", body = ErrorBody)))]
pub(super) async fn post_fault(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<FaultBody>,
) -> Result<(StatusCode, Json<FaultStatus>), ApiError> {
    require_admin(&state, &headers)?;
    let shadow = shadow_of(&headers)?;
    let side = state.side(shadow)?;
    let offered = capabilities(&state);
    match body {
        FaultBody::WorkerCrash { point } => {
            let parsed = CrashPoint::parse(&point).ok_or_else(|| {
                invalid(format!(
                    "no worker crash point `{point}`; the points are {}",
                    offered.worker_crash_points.join(", ")
                ))
            })?;
            *lock(&side.nemesis.worker_armed) = Some(parsed);
        }
        FaultBody::PipelineCrash { point } => {
            let Some(pipeline) = side.pipeline() else {
                return Err(invalid(
                    "this server runs no coupon pipeline (no scene uses it)".to_owned(),
                ));
            };
            let parsed = PipelineCrash::parse(&point).ok_or_else(|| {
                invalid(format!(
                    "no pipeline crash point `{point}`; the points are {}",
                    offered.pipeline_crash_points.join(", ")
                ))
            })?;
            *lock(&side.nemesis.pipeline_armed) = Some(parsed);
            pipeline.crash_at(parsed);
        }
        FaultBody::Restart => side.nemesis.restart.store(true, Ordering::SeqCst),
        FaultBody::StoreOutage { store, ms } => {
            let Some(switch) = state.stores.clone() else {
                return Err(invalid(
                    "this server was not given a way to take its stores away".to_owned(),
                ));
            };
            let kind = StoreKind::ALL
                .into_iter()
                .find(|k| k.name() == store)
                .ok_or_else(|| invalid(format!("no store `{store}`; the stores are ledger, kv")))?;
            if ms == 0 || ms > OUTAGE_MS_MAX {
                return Err(invalid(format!(
                    "an outage of {ms} ms is out of range: give 1 to {OUTAGE_MS_MAX} ms"
                )));
            }
            let until = Instant::now() + Duration::from_millis(ms);
            lock(&side.nemesis.down_until).insert(kind, until);
            side.nemesis.outages.fetch_add(1, Ordering::SeqCst);
            switch.set_down(kind, shadow, true);
            let state = state.clone();
            tokio::spawn(async move {
                tokio::time::sleep_until(until.into()).await;
                let Ok(side) = state.side(shadow) else { return };
                // A later outage of the same store ends later: it brings it back.
                let due = lock(&side.nemesis.down_until)
                    .get(&kind)
                    .is_some_and(|end| *end <= Instant::now());
                if due {
                    switch.set_down(kind, shadow, false);
                }
            });
        }
    }
    Ok((StatusCode::ACCEPTED, Json(side.nemesis.status())))
}
