//! Protocol `/v1` over HTTP+JSON and the reference server that speaks it.
//!
//! The server wraps a [`Wallet`] (and its shadow twin, when configured) in
//! axum handlers; background work runs as one tokio task per side, calling the
//! same `tick(now)` functions the simulator calls in virtual time. Admin routes
//! (`/v1/admin/...`) need `Authorization: Bearer <token>`. Request bodies are
//! bounded; bad input gets a 4xx with an [`ErrorBody`] (reason code and a
//! sentence). A wallet outcome, rejection included, is an answer, not an error:
//! its body is always the outcome, and the status only sorts it (200 decided,
//! 409 conflict, 422 invalid request, 429 try later).

pub mod api;
pub mod clock;
pub mod faults;
mod metrics;
pub mod openapi;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

pub use api::*;
pub use clock::ShiftedClock;
pub use faults::{StoreKind, StoreSwitch};

use crate::counter::{LocalCounter, LocalCounterConfig};
use crate::ledger::EntryKind;
use crate::pipeline::{CouponPipeline, OrderRecord, PipelineConfig};
use crate::switches::Switch;
use crate::wallet::{
    FlowCursor, IssueOutcome, IssueRequest, Rejection, Wallet, WalletError, WithdrawOutcome,
    WithdrawRequest,
};
use crate::worker::{CreditWorker, WorkerConfig};
use crate::{ActId, ActivityId, Clock, keys};

/// The protocol version in every path.
pub const PROTOCOL: &str = "v1";
/// Largest request body accepted (a withdraw with 256 client tokens fits).
pub const BODY_LIMIT_BYTES: usize = 256 * 1024;
/// Most requests one reissue may carry.
pub const REISSUE_MAX: usize = 1_000;
/// Most order records one audit read may ask for.
pub const AUDIT_ORDERS_MAX: usize = 2_000;
/// Longest announcement text.
pub const ANNOUNCEMENT_LEN_MAX: usize = 2_000;
/// Announcements kept (the oldest go first).
pub const ANNOUNCEMENTS_MAX: usize = 100;
/// Most flow lines one wallet page may ask for.
pub const PAGE_LIMIT_MAX: usize = 200;
/// Name of the hot counter (cash awarded, cents) the server keeps.
pub const HOT_COUNTER: &str = "fireworks";

/// How the server runs.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// The bearer token admin routes require; never empty.
    pub admin_token: String,
    /// Largest request body.
    pub body_limit_bytes: usize,
    /// How often background work ticks.
    pub tick_interval_ms: u64,
    /// How long shutdown waits for background work to finish.
    pub drain_ms_max: u64,
    /// The credit worker's knobs (token scenes).
    pub worker: WorkerConfig,
    /// The coupon pipeline's knobs; `None` when no scene uses it.
    pub pipeline: Option<PipelineConfig>,
    /// Flush interval of the hot counter.
    pub counter_interval_ms: u64,
}

impl ServerConfig {
    /// Defaults around an admin token.
    pub fn new(admin_token: impl Into<String>) -> Self {
        Self {
            admin_token: admin_token.into(),
            body_limit_bytes: BODY_LIMIT_BYTES,
            tick_interval_ms: 10,
            drain_ms_max: 30_000,
            worker: WorkerConfig::default(),
            pipeline: None,
            counter_interval_ms: 500,
        }
    }
}

/// One side of the server: the real stores, or the shadow ones.
#[derive(Debug)]
struct Side {
    wallet: Wallet,
    /// The coupon pipeline instance now serving; a crash or a restart puts a
    /// new one in its place.
    pipeline: Mutex<Option<Arc<CouponPipeline>>>,
    counter: LocalCounter,
    nemesis: faults::Nemesis,
    token_backlog: AtomicU64,
    worker_retry: AtomicBool,
}

impl Side {
    fn new(wallet: Wallet, config: &ServerConfig) -> Self {
        let counter = LocalCounter::new(
            &LocalCounterConfig {
                name: HOT_COUNTER.to_owned(),
                interval_ms: config.counter_interval_ms,
            },
            wallet.kv().clone(),
            None,
            wallet.switches().clone(),
        );
        let pipeline = config
            .pipeline
            .clone()
            .map(|p| Arc::new(CouponPipeline::new(wallet.clone(), p)));
        Self {
            wallet,
            pipeline: Mutex::new(pipeline),
            counter,
            nemesis: faults::Nemesis::default(),
            token_backlog: AtomicU64::new(0),
            worker_retry: AtomicBool::new(false),
        }
    }

    /// The pipeline instance now serving.
    fn pipeline(&self) -> Option<Arc<CouponPipeline>> {
        lock(&self.pipeline).clone()
    }

    fn child_ids(&self) -> Vec<crate::ChildId> {
        self.wallet
            .tree()
            .activities()
            .flat_map(|a| a.children.iter().map(|c| c.id))
            .collect()
    }

    async fn token_backlog(&self) -> Result<BTreeMap<crate::ChildId, u64>, WalletError> {
        let kv = self.wallet.kv();
        let mut backlog = BTreeMap::new();
        for child_id in self.child_ids() {
            // Pending, inflight, pending again: a claim moves a token pending →
            // inflight at once, a recovery inflight → pending by push then
            // remove, so a token moving either way is seen by one of the reads.
            let pending = kv.queue_len(&keys::pending(child_id)).await?;
            let inflight = kv.inflight_len(&keys::inflight(child_id)).await?;
            let again = kv.queue_len(&keys::pending(child_id)).await?;
            backlog.insert(child_id, pending.max(again) + inflight);
        }
        Ok(backlog)
    }

    /// Background work left: tokens to credit, coupon orders to settle, and
    /// whether the credit worker waits to retry. Drained when all are nought.
    async fn work_left(&self) -> Result<(u64, u64, bool), WalletError> {
        let tokens = self.token_backlog().await?.values().sum();
        let orders = self.orders_queued().await?;
        Ok((tokens, orders, self.worker_retry.load(Ordering::SeqCst)))
    }

    async fn orders_queued(&self) -> Result<u64, WalletError> {
        let Some(pipeline) = self.pipeline() else {
            return Ok(0);
        };
        // The durable queue first: an order popped from it is counted as held
        // before the pop, so it cannot fall between the two reads.
        let handoff = self.wallet.kv().queue_len(&keys::orders_handoff()).await?;
        // Orders still open in the stores: after a crash an instance's local
        // queues are gone, and its orders wait for the compensation scan.
        let mut open = 0;
        for child_id in self.child_ids() {
            open += self
                .wallet
                .kv()
                .inflight_len(&keys::orders_open(child_id))
                .await?;
        }
        Ok((handoff + pipeline.outstanding()).max(open))
    }
}

/// Shared by every handler.
#[derive(Debug)]
struct AppState {
    config: ServerConfig,
    clock: Arc<ShiftedClock>,
    real: Side,
    shadow: Option<Side>,
    announcements: Mutex<Vec<Announcement>>,
    metrics: metrics::Metrics,
    draining: AtomicBool,
    /// What takes stores away for a `store_outage` fault, when the server was
    /// given one.
    stores: Option<Arc<dyn StoreSwitch>>,
}

impl AppState {
    fn side(&self, shadow: bool) -> Result<&Side, ApiError> {
        if !shadow {
            return Ok(&self.real);
        }
        self.shadow.as_ref().ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "shadow_not_configured",
                "the request carries X-Shadow: 1 but this server has no shadow stores; \
                 start it with shadow stores or send real traffic",
            )
        })
    }

    fn now(&self) -> u64 {
        self.clock.now_ms()
    }
}

/// A bad request, a missing token, a store failure: status, code, sentence.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    body: ErrorBody,
}

impl ApiError {
    fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        Self {
            status,
            body: ErrorBody {
                code: code.to_owned(),
                message: message.into(),
            },
        }
    }

    fn store(error: WalletError) -> Self {
        let code = match &error {
            WalletError::Ledger(_) => "ledger_unavailable",
            WalletError::Kv(_) => "kv_unavailable",
            WalletError::InstanceDown => "instance_down",
            _ => "internal_error",
        };
        let status = if code == "internal_error" {
            StatusCode::INTERNAL_SERVER_ERROR
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        tracing::warn!(%error, "request failed in a store");
        Self::new(
            status,
            code,
            format!("{error}; the outcome is unknown, retry with the same id"),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body)).into_response()
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        let code = match &rejection {
            JsonRejection::JsonDataError(_) => "invalid_body",
            JsonRejection::JsonSyntaxError(_) => "malformed_json",
            JsonRejection::MissingJsonContentType(_) => "not_json",
            JsonRejection::BytesRejection(_) => "body_unreadable",
            _ => "invalid_body",
        };
        let status = rejection.status();
        let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
            "body_too_large"
        } else {
            code
        };
        Self::new(status, code, rejection.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_path",
            rejection.body_text(),
        )
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            rejection.body_text(),
        )
    }
}

/// `axum::Json` with our error body.
struct ApiJson<T>(T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        Ok(Self(Json::<T>::from_request(req, state).await?.0))
    }
}

/// `axum::extract::Path` with our error body.
struct ApiPath<T>(T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Ok(Self(
            axum::extract::Path::<T>::from_request_parts(parts, state)
                .await?
                .0,
        ))
    }
}

/// `axum::extract::Query` with our error body.
struct ApiQuery<T>(T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Ok(Self(
            axum::extract::Query::<T>::from_request_parts(parts, state)
                .await?
                .0,
        ))
    }
}

/// Whether the request carries `X-Shadow: 1`; any other value is refused.
fn shadow_of(headers: &HeaderMap) -> Result<bool, ApiError> {
    match headers.get(SHADOW_HEADER).map(HeaderValue::as_bytes) {
        None | Some(b"0") => Ok(false),
        Some(b"1") => Ok(true),
        Some(other) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_shadow_header",
            format!(
                "X-Shadow must be 1 (shadow traffic) or 0, not `{}`",
                String::from_utf8_lossy(other)
            ),
        )),
    }
}

/// Admin routes: `Authorization: Bearer <token>`, compared in constant time.
fn require_admin(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let Some(given) = given else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "admin_token_missing",
            "admin routes need `Authorization: Bearer <token>` with the server's admin token",
        ));
    };
    let expected = state.config.admin_token.as_bytes();
    let given = given.as_bytes();
    let same = given.len() == expected.len()
        && given
            .iter()
            .zip(expected)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if same {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "admin_token_wrong",
            "the bearer token is not this server's admin token",
        ))
    }
}

/// The status a rejection is answered with.
fn rejection_status(reason: &Rejection) -> StatusCode {
    match reason.code() {
        "malformed_order_no"
        | "unknown_activity"
        | "unknown_scene"
        | "award_type_mismatch"
        | "unknown_award"
        | "zero_amount"
        | "negative_amount"
        | "amount_over_cap"
        | "amount_not_allowed"
        | "malformed_withdraw_no"
        | "too_many_tokens" => StatusCode::UNPROCESSABLE_ENTITY,
        "rate_limited" | "pipeline_busy" | "withdraw_busy" => StatusCode::TOO_MANY_REQUESTS,
        _ => StatusCode::OK,
    }
}

fn issue_status(outcome: &IssueOutcome) -> StatusCode {
    match outcome {
        IssueOutcome::Rejected { reason, .. } => rejection_status(reason),
        IssueOutcome::Conflict { .. }
        | IssueOutcome::TokenConflict { .. }
        | IssueOutcome::OrderConflict { .. } => StatusCode::CONFLICT,
        _ => StatusCode::OK,
    }
}

fn withdraw_status(outcome: &WithdrawOutcome) -> StatusCode {
    match outcome {
        WithdrawOutcome::Rejected { reason, .. } => rejection_status(reason),
        WithdrawOutcome::Conflict { .. } => StatusCode::CONFLICT,
        _ => StatusCode::OK,
    }
}

async fn issue_on(
    side: &Side,
    request: &IssueRequest,
    green: bool,
) -> Result<IssueOutcome, ApiError> {
    let outcome = match side.pipeline() {
        Some(pipeline) => pipeline.issue(request, green).await,
        None => side.wallet.issue(request).await,
    }
    .map_err(ApiError::store)?;
    let cents = outcome.newly_awarded_cents();
    if cents > 0 {
        side.counter.add(i64::try_from(cents).unwrap_or(i64::MAX));
    }
    Ok(outcome)
}

/// Issue an award.
#[utoipa::path(post, path = "/v1/awards", tag = "wallet",
    request_body = AwardBody,
    params(("X-Shadow" = Option<String>, Header, description = "`1`: shadow traffic, served from the shadow stores")),
    responses(
        (status = 200, description = "Decided: issued, accepted (token), queued (pipeline), duplicate, or rejected for a business reason", body = IssueAnswer),
        (status = 409, description = "The order number was used with another payload", body = IssueAnswer),
        (status = 422, description = "The request is invalid (reason code in the outcome)", body = IssueAnswer),
        (status = 429, description = "Rate limited or busy; nothing recorded, retry later", body = IssueAnswer),
        (status = 400, description = "Bad input", body = ErrorBody),
        (status = 503, description = "A store failed; the outcome is unknown, retry with the same order number", body = ErrorBody),
    ))]
async fn post_award(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<AwardBody>,
) -> Result<Response, ApiError> {
    let side = state.side(shadow_of(&headers)?)?;
    let outcome = issue_on(side, &body.request, body.green).await?;
    state.metrics.count("award", outcome.label());
    let status = issue_status(&outcome);
    Ok((
        status,
        Json(IssueAnswer {
            at_ms: state.now(),
            outcome,
        }),
    )
        .into_response())
}

/// Where a wallet page starts and how long it is.
#[derive(Clone, Debug, Default, Deserialize, Serialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Flow lines, 1 to 200 (default 20).
    pub limit: Option<usize>,
    /// Continue after this line: its time (with `after_kind` and `after_id`).
    pub after_at_ms: Option<u64>,
    /// Continue after this line: its kind (`credited`, `pending`, `withdrawal`).
    pub after_kind: Option<String>,
    /// Continue after this line: its id.
    pub after_id: Option<String>,
}

impl PageQuery {
    fn cursor(&self) -> Result<Option<FlowCursor>, ApiError> {
        let bad = |m: &str| ApiError::new(StatusCode::BAD_REQUEST, "invalid_cursor", m.to_owned());
        match (&self.after_at_ms, &self.after_kind, &self.after_id) {
            (None, None, None) => Ok(None),
            (Some(at_ms), Some(kind), Some(id)) => {
                let kind = serde_json::from_value(serde_json::Value::String(kind.clone()))
                    .map_err(|_| bad("after_kind must be credited, pending or withdrawal"))?;
                Ok(Some(FlowCursor {
                    at_ms: *at_ms,
                    kind,
                    id: id.clone(),
                }))
            }
            _ => Err(bad(
                "a cursor needs all of after_at_ms, after_kind and after_id (from the page's `next`)",
            )),
        }
    }
}

/// The wallet page: balance (credited + pending tokens) and a page of the flow.
#[utoipa::path(get, path = "/v1/wallets/{activity_id}/{act_id}", tag = "wallet",
    params(("activity_id" = u64, Path, description = "Parent activity"),
           ("act_id" = u64, Path, description = "The user"),
           PageQuery,
           ("X-Shadow" = Option<String>, Header, description = "`1`: shadow traffic")),
    responses(
        (status = 200, description = "The page", body = ViewAnswer),
        (status = 404, description = "No such activity or no child open now", body = ErrorBody),
        (status = 400, description = "Bad input", body = ErrorBody),
    ))]
async fn get_wallet(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    ApiPath((activity_id, act_id)): ApiPath<(ActivityId, ActId)>,
    ApiQuery(page): ApiQuery<PageQuery>,
) -> Result<Response, ApiError> {
    let side = state.side(shadow_of(&headers)?)?;
    let limit = page.limit.unwrap_or(20);
    if limit == 0 || limit > PAGE_LIMIT_MAX {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_limit",
            format!("limit {limit} is out of range: ask for 1 to {PAGE_LIMIT_MAX} flow lines"),
        ));
    }
    let cursor = page.cursor()?;
    let view = side
        .wallet
        .view(activity_id, act_id, cursor, limit)
        .await
        .map_err(ApiError::store)?;
    state
        .metrics
        .count("view", if view.is_ok() { "ok" } else { "rejected" });
    match view {
        Ok(view) => Ok(Json(ViewAnswer {
            at_ms: state.now(),
            view,
        })
        .into_response()),
        Err(reason) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            reason.code(),
            reason.to_string(),
        )),
    }
}

/// Withdraw cash (force-crediting the user's tokens and the client's copies first).
#[utoipa::path(post, path = "/v1/withdrawals", tag = "wallet",
    request_body = WithdrawRequest,
    params(("X-Shadow" = Option<String>, Header, description = "`1`: shadow traffic")),
    responses(
        (status = 200, description = "Withdrawn, duplicate, or rejected for a business reason", body = WithdrawAnswer),
        (status = 409, description = "The withdraw number was used with another payload", body = WithdrawAnswer),
        (status = 422, description = "Invalid request", body = WithdrawAnswer),
        (status = 429, description = "Another withdraw of the user is in progress", body = WithdrawAnswer),
        (status = 400, description = "Bad input", body = ErrorBody),
        (status = 503, description = "A store failed", body = ErrorBody),
    ))]
async fn post_withdrawal(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    ApiJson(request): ApiJson<WithdrawRequest>,
) -> Result<Response, ApiError> {
    let side = state.side(shadow_of(&headers)?)?;
    let outcome = side
        .wallet
        .withdraw(&request)
        .await
        .map_err(ApiError::store)?;
    state.metrics.count("withdraw", outcome.label());
    let status = withdraw_status(&outcome);
    Ok((
        status,
        Json(WithdrawAnswer {
            at_ms: state.now(),
            outcome,
        }),
    )
        .into_response())
}

/// Coupon stock as the strategy side reads it (stop offering below 10%).
#[utoipa::path(get, path = "/v1/stock/{activity_id}/{template_id}", tag = "wallet",
    params(("activity_id" = u64, Path, description = "Parent activity"),
           ("template_id" = u64, Path, description = "Coupon template"),
           ("X-Shadow" = Option<String>, Header, description = "`1`: shadow traffic")),
    responses(
        (status = 200, description = "The stock", body = crate::wallet::StockView),
        (status = 404, description = "No such activity, child or template", body = ErrorBody),
    ))]
async fn get_stock(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    ApiPath((activity_id, template_id)): ApiPath<(ActivityId, u64)>,
) -> Result<Response, ApiError> {
    let side = state.side(shadow_of(&headers)?)?;
    match side
        .wallet
        .coupon_stock(activity_id, template_id)
        .await
        .map_err(ApiError::store)?
    {
        Ok(stock) => Ok(Json(stock).into_response()),
        Err(reason) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            reason.code(),
            reason.to_string(),
        )),
    }
}

/// The hot counter (cash awarded, cents), as a display polls it.
#[utoipa::path(get, path = "/v1/counter", tag = "wallet",
    params(("X-Shadow" = Option<String>, Header, description = "`1`: shadow traffic")),
    responses((status = 200, description = "The value shown", body = CounterAnswer)))]
async fn get_counter(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<CounterAnswer>, ApiError> {
    let side = state.side(shadow_of(&headers)?)?;
    let at_ms = state.now();
    Ok(Json(CounterAnswer {
        at_ms,
        value: side.counter.try_read(),
        lag_ms: state.config.counter_interval_ms + state.config.tick_interval_ms,
    }))
}

/// Liveness, protocol version and whether shadow traffic is served.
#[utoipa::path(get, path = "/v1/health", tag = "operations",
    responses((status = 200, description = "Up", body = Health)))]
async fn get_health(State(state): State<Arc<AppState>>) -> Json<Health> {
    Json(Health {
        status: if state.draining.load(Ordering::SeqCst) {
            "draining".to_owned()
        } else {
            "ok".to_owned()
        },
        at_ms: state.now(),
        protocol: PROTOCOL.to_owned(),
        shadow: state.shadow.is_some(),
    })
}

/// Prometheus text exposition: requests by route and outcome, backlogs.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain")))]
async fn get_metrics(State(state): State<Arc<AppState>>) -> Response {
    let mut gauges = Vec::new();
    for (name, side) in
        std::iter::once(("real", &state.real)).chain(state.shadow.as_ref().map(|s| ("shadow", s)))
    {
        gauges.push((
            "redrain_token_backlog",
            name,
            side.token_backlog.load(Ordering::Relaxed),
        ));
        if let Some(pipeline) = side.pipeline() {
            let (activity, asset) = pipeline.depths();
            gauges.push(("redrain_pipeline_activity_queue", name, activity));
            gauges.push(("redrain_pipeline_asset_queue", name, asset));
            // Queued, in a layer's hands, or left open by a failed ledger batch.
            gauges.push(("redrain_pipeline_outstanding", name, pipeline.outstanding()));
        }
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(&gauges),
    )
        .into_response()
}

/// Reconciliation: each child's ledger against itself and against its budget counter.
#[utoipa::path(get, path = "/v1/admin/reconciliation", tag = "admin",
    params(("X-Shadow" = Option<String>, Header, description = "`1`: the shadow stores")),
    security(("admin" = [])),
    responses((status = 200, description = "The report", body = Reconciliation),
              (status = 401, description = "No admin token", body = ErrorBody)))]
async fn get_reconciliation(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<Reconciliation>, ApiError> {
    require_admin(&state, &headers)?;
    let side = state.side(shadow_of(&headers)?)?;
    let snapshot = side
        .wallet
        .ledger()
        .snapshot()
        .await
        .map_err(|e| ApiError::store(e.into()))?;
    let mut children: BTreeMap<u64, ChildReconciliation> = BTreeMap::new();
    let tree = side.wallet.tree();
    for activity in tree.activities() {
        for child in &activity.children {
            let used = side
                .wallet
                .kv()
                .counter(&keys::budget(child.id))
                .await
                .map_err(|e| ApiError::store(e.into()))?;
            children.insert(
                child.id,
                ChildReconciliation {
                    child_id: child.id,
                    credited_cents: 0,
                    withdrawn_cents: 0,
                    balance_cents: 0,
                    budget_used_cents: used,
                    budget_cents: child.budget_cents,
                    mismatched_accounts: Vec::new(),
                },
            );
        }
    }
    let mut per_account: BTreeMap<crate::ledger::AccountKey, (u64, u64)> = BTreeMap::new();
    for entry in &snapshot.entries {
        let sums = per_account.entry(entry.account).or_default();
        match &entry.kind {
            EntryKind::Credit { award, .. } => sums.0 += award.cash_cents(),
            EntryKind::Withdrawal { amount_cents, .. } => sums.1 += *amount_cents,
        }
    }
    for account in &snapshot.accounts {
        let (credited, withdrawn) = per_account.get(&account.key).copied().unwrap_or_default();
        let child = children
            .entry(account.key.child_id)
            .or_insert_with(|| ChildReconciliation {
                child_id: account.key.child_id,
                credited_cents: 0,
                withdrawn_cents: 0,
                balance_cents: 0,
                budget_used_cents: 0,
                budget_cents: 0,
                mismatched_accounts: Vec::new(),
            });
        child.credited_cents += credited;
        child.withdrawn_cents += withdrawn;
        child.balance_cents += account.balance_cents;
        if credited.checked_sub(withdrawn) != Some(account.balance_cents)
            || account.credited_cents != credited
            || account.withdrawn_cents != withdrawn
        {
            child.mismatched_accounts.push(account.key.act_id);
        }
    }
    let children: Vec<_> = children.into_values().collect();
    let balanced = children.iter().all(|c| {
        c.mismatched_accounts.is_empty()
            && (c.budget_cents == 0 || c.budget_used_cents <= c.budget_cents as i64)
            && c.credited_cents <= c.budget_cents.max(c.budget_used_cents.max(0) as u64)
    });
    Ok(Json(Reconciliation {
        at_ms: state.now(),
        children,
        balanced,
    }))
}

/// Every degradation switch with its state and what "off" does.
#[utoipa::path(get, path = "/v1/admin/switches", tag = "admin", security(("admin" = [])),
    responses((status = 200, description = "The switches", body = Vec<SwitchState>),
              (status = 401, description = "No admin token", body = ErrorBody)))]
async fn get_switches(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<Vec<SwitchState>>, ApiError> {
    require_admin(&state, &headers)?;
    Ok(Json(switch_states(&state)))
}

fn switch_states(state: &AppState) -> Vec<SwitchState> {
    state
        .real
        .wallet
        .switches()
        .snapshot()
        .into_iter()
        .map(|(switch, on)| SwitchState {
            name: switch.name().to_owned(),
            on,
            doc: switch.doc().to_owned(),
        })
        .collect()
}

/// Flip a degradation switch (on both sides: they share the registry).
#[utoipa::path(put, path = "/v1/admin/switches/{name}", tag = "admin", security(("admin" = [])),
    params(("name" = String, Path, description = "Switch name")),
    request_body = SwitchBody,
    responses((status = 200, description = "All switches after the change", body = Vec<SwitchState>),
              (status = 404, description = "No such switch", body = ErrorBody)))]
async fn put_switch(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    ApiPath(name): ApiPath<String>,
    ApiJson(body): ApiJson<SwitchBody>,
) -> Result<Json<Vec<SwitchState>>, ApiError> {
    require_admin(&state, &headers)?;
    let Some(switch) = Switch::by_name(&name) else {
        let known: Vec<&str> = Switch::ALL.iter().map(|s| s.name()).collect();
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_switch",
            format!("no switch `{name}`; the switches are {}", known.join(", ")),
        ));
    };
    state.real.wallet.switches().set(switch, body.on);
    if let Some(shadow) = &state.shadow {
        shadow.wallet.switches().set(switch, body.on);
    }
    tracing::info!(switch = name, on = body.on, "switch flipped");
    Ok(Json(switch_states(&state)))
}

/// Batch reissue: send awards through issuance again (idempotent by order number).
#[utoipa::path(post, path = "/v1/admin/reissue", tag = "admin", security(("admin" = [])),
    request_body = ReissueBody,
    params(("X-Shadow" = Option<String>, Header, description = "`1`: the shadow stores")),
    responses((status = 200, description = "One outcome per request", body = ReissueAnswer),
              (status = 400, description = "Too many requests in one batch", body = ErrorBody)))]
async fn post_reissue(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<ReissueBody>,
) -> Result<Json<ReissueAnswer>, ApiError> {
    require_admin(&state, &headers)?;
    let side = state.side(shadow_of(&headers)?)?;
    if body.requests.len() > REISSUE_MAX {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "batch_too_large",
            format!(
                "{} requests in one reissue; at most {REISSUE_MAX}",
                body.requests.len()
            ),
        ));
    }
    let mut outcomes = Vec::with_capacity(body.requests.len());
    for request in &body.requests {
        let outcome = issue_on(side, request, false).await?;
        state.metrics.count("reissue", outcome.label());
        outcomes.push(outcome);
    }
    Ok(Json(ReissueAnswer {
        at_ms: state.now(),
        outcomes,
    }))
}

/// The operations announcements, newest last.
#[utoipa::path(get, path = "/v1/announcements", tag = "operations",
    responses((status = 200, description = "Announcements", body = Vec<Announcement>)))]
async fn get_announcements(State(state): State<Arc<AppState>>) -> Json<Vec<Announcement>> {
    Json(lock(&state.announcements).clone())
}

/// Post an operations announcement.
#[utoipa::path(post, path = "/v1/admin/announcements", tag = "admin", security(("admin" = [])),
    request_body = Announcement,
    responses((status = 200, description = "As stored", body = Announcement),
              (status = 422, description = "Bad level or text", body = ErrorBody)))]
async fn post_announcement(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    ApiJson(mut body): ApiJson<Announcement>,
) -> Result<Json<Announcement>, ApiError> {
    require_admin(&state, &headers)?;
    if !matches!(body.level.as_str(), "info" | "degraded" | "incident") {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_level",
            format!(
                "level `{}` is not one of info, degraded, incident",
                body.level
            ),
        ));
    }
    if body.text.trim().is_empty() || body.text.len() > ANNOUNCEMENT_LEN_MAX {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_text",
            format!(
                "text must be 1 to {ANNOUNCEMENT_LEN_MAX} bytes, got {}",
                body.text.len()
            ),
        ));
    }
    let mut list = lock(&state.announcements);
    body.id = list.last().map_or(1, |a| a.id + 1);
    body.at_ms = state.now();
    list.push(body.clone());
    if list.len() > ANNOUNCEMENTS_MAX {
        list.remove(0);
    }
    Ok(Json(body))
}

/// The audit export of one side's stores (with `X-Shadow: 1`, the shadow data).
#[utoipa::path(get, path = "/v1/admin/audit", tag = "admin", security(("admin" = [])),
    params(("X-Shadow" = Option<String>, Header, description = "`1`: the shadow stores, and counts of the real ones")),
    responses((status = 200, description = "Ledger, counters, token backlog, trusted keys", body = AuditExport),
              (status = 503, description = "A store failed", body = ErrorBody)))]
async fn get_audit(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<AuditExport>, ApiError> {
    require_admin(&state, &headers)?;
    let shadow = shadow_of(&headers)?;
    let side = state.side(shadow)?;
    let at_ms = state.now();
    let store = |e: crate::ledger::LedgerError| ApiError::store(e.into());
    let kv_store = |e: crate::kv::KvError| ApiError::store(e.into());
    let ledger = side.wallet.ledger().snapshot().await.map_err(store)?;
    let counters = side
        .wallet
        .kv()
        .counters_with_prefix("")
        .await
        .map_err(kv_store)?
        .into_iter()
        .collect();
    let token_backlog = side.token_backlog().await.map_err(ApiError::store)?;
    let token_keys = side
        .wallet
        .keys()
        .map(|ring| {
            ring.verifying_keys()
                .into_iter()
                .map(|(id, key)| (id, hex::encode(key.to_bytes())))
                .collect()
        })
        .unwrap_or_default();
    let real_stores = if shadow {
        let real = state.real.wallet.ledger().snapshot().await.map_err(store)?;
        let counters = state
            .real
            .wallet
            .kv()
            .counters_with_prefix("")
            .await
            .map_err(kv_store)?;
        Some(RealStoreCounts {
            entries: real.entries.len() as u64,
            accounts: real.accounts.len() as u64,
            counters: counters.len() as u64,
        })
    } else {
        None
    };
    Ok(Json(AuditExport {
        at_ms,
        ledger,
        counters,
        token_backlog,
        token_keys,
        real_stores,
    }))
}

/// The coupon-pipeline order records of the orders named.
#[utoipa::path(post, path = "/v1/admin/audit/orders", tag = "admin", security(("admin" = [])),
    request_body = OrdersQuery,
    params(("X-Shadow" = Option<String>, Header, description = "`1`: the shadow stores")),
    responses((status = 200, description = "The records found", body = OrdersAnswer),
              (status = 400, description = "Too many orders asked", body = ErrorBody)))]
async fn post_audit_orders(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    ApiJson(query): ApiJson<OrdersQuery>,
) -> Result<Json<OrdersAnswer>, ApiError> {
    require_admin(&state, &headers)?;
    let side = state.side(shadow_of(&headers)?)?;
    if query.orders.len() > AUDIT_ORDERS_MAX {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "too_many_orders",
            format!(
                "{} orders asked; at most {AUDIT_ORDERS_MAX} per call",
                query.orders.len()
            ),
        ));
    }
    let mut records = Vec::new();
    for order in query.orders {
        let key = keys::order(order.child_id, &order.order_no);
        let Some(bytes) = side
            .wallet
            .kv()
            .bytes(&key)
            .await
            .map_err(|e| ApiError::store(e.into()))?
        else {
            continue;
        };
        let record: OrderRecord = serde_json::from_slice(&bytes).map_err(|e| {
            ApiError::store(WalletError::CorruptOrder {
                key,
                error: e.to_string(),
            })
        })?;
        records.push(OrderEntry {
            child_id: order.child_id,
            order_no: order.order_no,
            record,
        });
    }
    Ok(Json(OrdersAnswer { records }))
}

/// Move the wallet's clock forward (a run puts it at its trace's start).
#[utoipa::path(put, path = "/v1/admin/clock", tag = "admin", security(("admin" = [])),
    request_body = ClockBody,
    responses((status = 200, description = "The clock now", body = ClockBody),
              (status = 409, description = "The time asked is earlier than now", body = ErrorBody),
              (status = 422, description = "The time asked is past the year 9999", body = ErrorBody)))]
async fn put_clock(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<ClockBody>,
) -> Result<Json<ClockBody>, ApiError> {
    require_admin(&state, &headers)?;
    // 9999-12-31T23:59:59.999Z: beyond it the wall offset would overflow and
    // the clock, never going back, would stand there for good.
    const CLOCK_MS_MAX: u64 = 253_402_300_799_999;
    if body.now_ms > CLOCK_MS_MAX {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_clock",
            format!(
                "now_ms {} is past 9999-12-31T23:59:59.999Z ({CLOCK_MS_MAX} ms); the clock was not moved",
                body.now_ms
            ),
        ));
    }
    let moved = if body.frozen {
        state.clock.freeze_at(body.now_ms)
    } else {
        state.clock.jump_to(body.now_ms)
    };
    match moved {
        Ok(now_ms) => Ok(Json(ClockBody {
            now_ms,
            frozen: body.frozen,
        })),
        Err(current) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "clock_backwards",
            format!(
                "the wallet's clock stands at {current} ms; it never goes back to {} ms",
                body.now_ms
            ),
        )),
    }
}

/// Wait until background work is done: tokens credited, coupon queues empty.
#[utoipa::path(post, path = "/v1/admin/drain", tag = "admin", security(("admin" = [])),
    request_body = DrainBody,
    params(("X-Shadow" = Option<String>, Header, description = "`1`: the shadow side")),
    responses((status = 200, description = "Drained or given up", body = DrainAnswer)))]
async fn post_drain(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<DrainBody>,
) -> Result<Json<DrainAnswer>, ApiError> {
    require_admin(&state, &headers)?;
    let side = state.side(shadow_of(&headers)?)?;
    let started = Instant::now();
    let max = Duration::from_millis(body.max_ms.min(600_000));
    let tick = Duration::from_millis(state.config.tick_interval_ms.max(1));
    loop {
        let (tokens, orders, retry) = side.work_left().await.map_err(ApiError::store)?;
        let drained = tokens == 0 && orders == 0 && !retry;
        if drained || started.elapsed() >= max {
            // Let the hot counter flush what it holds.
            if drained {
                side.counter.tick(state.now()).await;
            }
            return Ok(Json(DrainAnswer {
                drained,
                waited_ms: started.elapsed().as_millis() as u64,
                token_backlog: tokens,
                orders_queued: orders,
            }));
        }
        tokio::time::sleep(tick).await;
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no_such_route",
        "no such route; the protocol's routes are listed in the OpenAPI document (GET /v1/openapi.json)",
    )
}

async fn get_openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        openapi::document(),
    )
        .into_response()
}

/// The reference server: a wallet (and its shadow twin) behind protocol `/v1`.
#[derive(Debug)]
pub struct Server {
    state: Arc<AppState>,
}

impl Server {
    /// A server over `wallet` (with its shadow twin, if it has one), on `clock`.
    pub fn new(wallet: Wallet, clock: Arc<ShiftedClock>, config: ServerConfig) -> Self {
        assert!(!config.admin_token.is_empty(), "an admin token is required");
        let shadow = wallet.shadow().map(|w| Side::new(w.clone(), &config));
        let real = Side::new(wallet, &config);
        Self {
            state: Arc::new(AppState {
                config,
                clock,
                real,
                shadow,
                announcements: Mutex::new(Vec::new()),
                metrics: metrics::Metrics::default(),
                draining: AtomicBool::new(false),
                stores: None,
            }),
        }
    }

    /// Let `store_outage` faults take stores away through `switch` (the
    /// server then advertises them in `/v1/capabilities`).
    pub fn with_store_switch(mut self, switch: Arc<dyn StoreSwitch>) -> Self {
        if let Some(state) = Arc::get_mut(&mut self.state) {
            state.stores = Some(switch);
        }
        self
    }

    /// The routes, for tests that drive the server without a socket.
    pub fn router(&self) -> Router {
        let v1 = Router::new()
            .route("/awards", post(post_award))
            .route("/wallets/{activity_id}/{act_id}", get(get_wallet))
            .route("/withdrawals", post(post_withdrawal))
            .route("/stock/{activity_id}/{template_id}", get(get_stock))
            .route("/counter", get(get_counter))
            .route("/health", get(get_health))
            .route("/announcements", get(get_announcements))
            .route("/openapi.json", get(get_openapi))
            .route("/admin/reconciliation", get(get_reconciliation))
            .route("/admin/switches", get(get_switches))
            .route("/admin/switches/{name}", put(put_switch))
            .route("/admin/reissue", post(post_reissue))
            .route("/admin/announcements", post(post_announcement))
            .route("/admin/audit", get(get_audit))
            .route("/admin/audit/orders", post(post_audit_orders))
            .route("/admin/clock", put(put_clock))
            .route("/admin/drain", post(post_drain))
            .route("/capabilities", get(faults::get_capabilities))
            .route(
                "/admin/faults",
                get(faults::get_faults).post(faults::post_fault),
            );
        Router::new()
            .nest("/v1", v1)
            .route("/metrics", get(get_metrics))
            .fallback(not_found)
            .layer(DefaultBodyLimit::max(self.state.config.body_limit_bytes))
            .with_state(self.state.clone())
    }

    /// Serve on `listener` until `shutdown` resolves; then stop taking
    /// requests, finish the ones in flight, hand the pipeline's queues to the
    /// durable handoff queue, and tick background work until it is done or
    /// `drain_ms_max` passes. Returns the work left (tokens, orders).
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<DrainAnswer> {
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut tasks = Vec::new();
        for shadow in [false, true] {
            if shadow && self.state.shadow.is_none() {
                continue;
            }
            tasks.push(tokio::spawn(background(
                self.state.clone(),
                shadow,
                stop_rx.clone(),
            )));
        }
        let state = self.state.clone();
        let router = self.router();
        axum::serve(
            listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move {
            shutdown.await;
            state.draining.store(true, Ordering::SeqCst);
        })
        .await?;
        // Requests are done: let background work finish, then stop it.
        let started = Instant::now();
        let max = Duration::from_millis(self.state.config.drain_ms_max);
        let mut left = DrainAnswer {
            drained: true,
            waited_ms: 0,
            token_backlog: 0,
            orders_queued: 0,
        };
        for side in std::iter::once(&self.state.real).chain(self.state.shadow.as_ref()) {
            loop {
                // A store that cannot be read is not drained: wait on it, and
                // report it undrained if it stays so.
                let (tokens, orders, done) = match side.work_left().await {
                    Ok((tokens, orders, retry)) => {
                        (tokens, orders, tokens == 0 && orders == 0 && !retry)
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "drain on shutdown: background work unreadable");
                        (0, 0, false)
                    }
                };
                if done || started.elapsed() >= max {
                    left.token_backlog += tokens;
                    left.orders_queued += orders;
                    left.drained &= done;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(
                    self.state.config.tick_interval_ms.max(1),
                ))
                .await;
            }
        }
        let _ = stop_tx.send(true);
        for task in tasks {
            let _ = task.await;
        }
        left.waited_ms = started.elapsed().as_millis() as u64;
        Ok(left)
    }
}

/// One side's background work: credit worker, coupon pipeline, hot counter,
/// each `tick(now)` every tick interval. On stop the pipeline hands its queues
/// to the durable handoff queue and the counter flushes.
async fn background(state: Arc<AppState>, shadow: bool, mut stop: watch::Receiver<bool>) {
    let Some(side) = (if shadow {
        state.shadow.as_ref()
    } else {
        Some(&state.real)
    }) else {
        return;
    };
    let mut worker = CreditWorker::for_wallet(&side.wallet, state.config.worker.clone());
    let mut ticker =
        tokio::time::interval(Duration::from_millis(state.config.tick_interval_ms.max(1)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.changed() => break,
        }
        let now_ms = state.clock.now_ms();
        if side.nemesis.take_restart() {
            restart(&state, side, &mut worker).await;
        }
        if let Some(w) = &mut worker {
            if let Some(point) = side.nemesis.worker_armed() {
                w.crash_at(point);
            }
            match w.tick(now_ms).await {
                Ok(report) if report.crashed => {
                    side.nemesis.worker_crashed();
                    tracing::info!(
                        shadow,
                        "credit worker crashed at an injected point; restarting it"
                    );
                    worker = CreditWorker::for_wallet(&side.wallet, state.config.worker.clone());
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(%error, shadow, "credit worker tick failed; retrying next tick")
                }
            }
            if let Some(w) = &worker {
                side.worker_retry.store(w.has_retry(), Ordering::SeqCst);
                if let Ok(backlog) = w.backlog().await {
                    side.token_backlog.store(backlog, Ordering::Relaxed);
                }
            }
        }
        if let Some(pipeline) = side.pipeline() {
            if !pipeline.has_crashed()
                && let Err(error) = pipeline.tick(now_ms).await
            {
                tracing::warn!(%error, shadow, "coupon pipeline tick failed; retrying next tick");
            }
            if pipeline.has_crashed() {
                // The process died: its local queues are gone; a new instance
                // finds the orders left in a middle state by their timeout.
                side.nemesis.pipeline_crashed();
                tracing::info!(
                    shadow,
                    "coupon pipeline crashed at an injected point; restarting it"
                );
                replace_pipeline(&state, side);
            }
        }
        side.counter.tick(now_ms).await;
    }
    if let Some(pipeline) = side.pipeline() {
        let handed = pipeline.shutdown().await;
        tracing::info!(handed, shadow, "coupon pipeline handed its queues off");
    }
    side.counter.tick(state.clock.now_ms()).await;
}

/// A new pipeline instance in place of the one serving (none when no scene uses it).
fn replace_pipeline(state: &AppState, side: &Side) {
    if let Some(config) = &state.config.pipeline {
        *lock(&side.pipeline) = Some(Arc::new(CouponPipeline::new(
            side.wallet.clone(),
            config.clone(),
        )));
    }
}

/// Background work restarted as a process restart would: the pipeline hands its
/// queues to the durable handoff queue and a new instance starts, the counter
/// flushes, and a new credit worker starts with nothing but the shared stores.
async fn restart(state: &AppState, side: &Side, worker: &mut Option<CreditWorker>) {
    if let Some(pipeline) = side.pipeline() {
        let handed = pipeline.shutdown().await;
        tracing::info!(handed, "restart: coupon pipeline handed its queues off");
        replace_pipeline(state, side);
    }
    side.counter.tick(state.clock.now_ms()).await;
    *worker = CreditWorker::for_wallet(&side.wallet, state.config.worker.clone());
    side.nemesis.restarted();
}
