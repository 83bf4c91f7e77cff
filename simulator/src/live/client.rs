//! The protocol's client: one pooled keep-alive HTTP client per target, every
//! call typed by the wire types of [`reference::http::api`].

use std::time::Duration;

use reference::http::{
    AuditExport, AwardBody, Capabilities, ClockBody, CounterAnswer, DrainAnswer, DrainBody,
    ErrorBody, FaultBody, FaultStatus, Health, IssueAnswer, OrderEntry, OrderRef, OrdersAnswer,
    OrdersQuery, SHADOW_HEADER, SwitchBody, ViewAnswer, WithdrawAnswer,
};
use reference::wallet::WithdrawRequest;
use reference::{ActId, ActivityId};
use serde::de::DeserializeOwned;

/// Why a call has no answer.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The connection failed or timed out: the outcome is unknown.
    #[error("{what}: {error}")]
    Transport {
        /// The call.
        what: String,
        /// The cause.
        error: reqwest::Error,
    },
    /// The target answered with an error body.
    #[error("{what}: HTTP {status} {}: {}", body.code, body.message)]
    Refused {
        /// The call.
        what: String,
        /// The status.
        status: u16,
        /// The target's reason.
        body: ErrorBody,
    },
    /// The target answered something that is not the protocol.
    #[error("{what}: HTTP {status}, not a protocol answer ({detail}): {excerpt}")]
    NotProtocol {
        /// The call.
        what: String,
        /// The status.
        status: u16,
        /// What did not parse.
        detail: String,
        /// The start of the body.
        excerpt: String,
    },
}

impl CallError {
    /// A short label for counting: `transport`, the error code, or `not_protocol`.
    pub fn label(&self) -> String {
        match self {
            CallError::Transport { error, .. } if error.is_timeout() => "error.timeout".to_owned(),
            CallError::Transport { .. } => "error.transport".to_owned(),
            CallError::Refused { body, .. } => format!("error.{}", body.code),
            CallError::NotProtocol { .. } => "error.not_protocol".to_owned(),
        }
    }
}

/// A wallet that speaks protocol `/v1`.
#[derive(Debug, Clone)]
pub struct Target {
    base: String,
    http: reqwest::Client,
    admin_token: String,
    shadow: bool,
}

/// How long one call may take before it counts as failed.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

impl Target {
    /// A client of the target at `base_url` (`http://127.0.0.1:PORT`), tagging
    /// every request `X-Shadow: 1` when `shadow`.
    pub fn new(base_url: &str, admin_token: &str, shadow: bool) -> anyhow::Result<Self> {
        let base = base_url.trim_end_matches('/').to_owned();
        let url = reqwest::Url::parse(&base)
            .map_err(|e| anyhow::anyhow!("--target `{base_url}` is not a URL: {e}"))?;
        anyhow::ensure!(
            url.scheme() == "http",
            "--target `{base_url}`: only http:// targets are supported (a load stays on this machine)"
        );
        let host = url.host_str().unwrap_or("");
        anyhow::ensure!(
            matches!(host, "127.0.0.1" | "localhost" | "::1" | "[::1]"),
            "--target `{base_url}`: load and conformance traffic only go to 127.0.0.1 or localhost, not `{host}`"
        );
        let http = reqwest::Client::builder()
            .timeout(CALL_TIMEOUT)
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(4096)
            .tcp_nodelay(true)
            .build()
            .map_err(|e| anyhow::anyhow!("building the HTTP client: {e}"))?;
        Ok(Self {
            base,
            http,
            admin_token: admin_token.to_owned(),
            shadow,
        })
    }

    /// The base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The same target, with or without the shadow tag.
    pub fn with_shadow(&self, shadow: bool) -> Self {
        Self {
            shadow,
            ..self.clone()
        }
    }

    fn request(&self, method: reqwest::Method, path: &str, admin: bool) -> reqwest::RequestBuilder {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if self.shadow {
            request = request.header(SHADOW_HEADER, "1");
        }
        if admin {
            request = request.bearer_auth(&self.admin_token);
        }
        request
    }

    /// Send and read: `ok` lists the statuses whose body is `T` (an outcome);
    /// any other status carries an [`ErrorBody`].
    async fn call<T: DeserializeOwned>(
        &self,
        what: impl FnOnce() -> String,
        request: reqwest::RequestBuilder,
        ok: &[u16],
    ) -> Result<T, CallError> {
        let response = match request.send().await {
            Ok(response) => response,
            Err(error) => {
                return Err(CallError::Transport {
                    what: what(),
                    error,
                });
            }
        };
        let status = response.status().as_u16();
        let bytes = match response.bytes().await {
            Ok(bytes) => bytes,
            Err(error) => {
                return Err(CallError::Transport {
                    what: what(),
                    error,
                });
            }
        };
        let not_protocol = |what: String, detail: String| CallError::NotProtocol {
            what,
            status,
            detail,
            excerpt: String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned(),
        };
        if ok.contains(&status) {
            return serde_json::from_slice(&bytes).map_err(|e| not_protocol(what(), e.to_string()));
        }
        match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(body) => Err(CallError::Refused {
                what: what(),
                status,
                body,
            }),
            Err(e) => Err(not_protocol(what(), e.to_string())),
        }
    }

    /// `POST /v1/awards`.
    pub async fn issue(&self, body: &AwardBody) -> Result<IssueAnswer, CallError> {
        self.call(
            || format!("issuing {}", body.request.order_no),
            self.request(reqwest::Method::POST, "/v1/awards", false)
                .json(body),
            &[200, 409, 422, 429],
        )
        .await
    }

    /// `POST /v1/withdrawals`.
    pub async fn withdraw(&self, request: &WithdrawRequest) -> Result<WithdrawAnswer, CallError> {
        self.call(
            || format!("withdrawing {}", request.withdraw_no),
            self.request(reqwest::Method::POST, "/v1/withdrawals", false)
                .json(request),
            &[200, 409, 422, 429],
        )
        .await
    }

    /// `GET /v1/wallets/{activity}/{user}`, a page of `limit` flow lines after `after`.
    pub async fn view(
        &self,
        activity_id: ActivityId,
        act_id: ActId,
        limit: usize,
        after: Option<&reference::wallet::FlowCursor>,
    ) -> Result<ViewAnswer, CallError> {
        let mut request = self
            .request(
                reqwest::Method::GET,
                &format!("/v1/wallets/{activity_id}/{act_id}"),
                false,
            )
            .query(&[("limit", limit.to_string())]);
        if let Some(cursor) = after {
            let kind = serde_json::to_value(cursor.kind)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            request = request.query(&[
                ("after_at_ms", cursor.at_ms.to_string()),
                ("after_kind", kind),
                ("after_id", cursor.id.clone()),
            ]);
        }
        self.call(
            || format!("viewing the wallet of user {act_id}"),
            request,
            &[200],
        )
        .await
    }

    /// `GET /v1/stock/{activity}/{template}`.
    pub async fn stock(
        &self,
        activity_id: ActivityId,
        template_id: u64,
    ) -> Result<reference::wallet::StockView, CallError> {
        self.call(
            || format!("reading the stock of template {template_id}"),
            self.request(
                reqwest::Method::GET,
                &format!("/v1/stock/{activity_id}/{template_id}"),
                false,
            ),
            &[200],
        )
        .await
    }

    /// `GET /v1/counter`.
    pub async fn counter(&self) -> Result<CounterAnswer, CallError> {
        self.call(
            || "reading the hot counter".to_owned(),
            self.request(reqwest::Method::GET, "/v1/counter", false),
            &[200],
        )
        .await
    }

    /// Refuse a target that serves no shadow stores or whose shadow ledger is
    /// not empty: `purpose` (a load, conformance) sends only shadow traffic and
    /// its checkers compare the target's final state with its own history.
    pub async fn require_fresh_shadow(&self, purpose: &str) -> anyhow::Result<()> {
        use anyhow::Context as _;
        let health = self
            .health()
            .await
            .with_context(|| format!("reaching the target {}", self.base))?;
        anyhow::ensure!(
            health.shadow,
            "the target {} serves no shadow stores; {purpose} sends only X-Shadow: 1 traffic",
            self.base
        );
        let before = self
            .audit()
            .await
            .context("reading the target's audit export")?;
        anyhow::ensure!(
            before.ledger.entries.is_empty(),
            "the target's shadow ledger already holds {} entries; {purpose} needs it empty \
             (restart a memory-backed `redrain serve`, or `redrain cleanup --shadow`), because \
             the checkers compare it with this run's history",
            before.ledger.entries.len()
        );
        // A ledger in memory forgets on restart; a KV on Redis does not, and
        // its old stock and limit counts would decide this run's answers.
        let used: Vec<&str> = before
            .counters
            .iter()
            .filter(|(_, v)| **v != 0)
            .map(|(k, _)| k.as_str())
            .collect();
        let backlog: u64 = before.token_backlog.values().sum();
        anyhow::ensure!(
            used.is_empty() && backlog == 0,
            "the target's shadow KV is not fresh: {} counter(s) already counted ({}){}; {purpose}              needs it empty (serve under a new --kv-prefix, or `redrain cleanup --shadow`)",
            used.len(),
            used.iter().take(3).copied().collect::<Vec<_>>().join(", "),
            if backlog > 0 {
                format!(" and {backlog} token(s) wait to be credited")
            } else {
                String::new()
            }
        );
        Ok(())
    }

    /// `GET /v1/health`.
    pub async fn health(&self) -> Result<Health, CallError> {
        self.call(
            || "reading health".to_owned(),
            self.request(reqwest::Method::GET, "/v1/health", false),
            &[200],
        )
        .await
    }

    /// `PUT /v1/admin/clock`: `Ok(now)`, or `Err` with the target's reason
    /// (`clock_backwards` when it stands later already).
    pub async fn set_clock(&self, now_ms: u64) -> Result<u64, CallError> {
        self.move_clock(now_ms, false).await
    }

    /// `PUT /v1/admin/clock` with `frozen: true`: the target's clock stands at
    /// `now_ms` until moved again (when `/v1/capabilities` offers `clock_freeze`).
    pub async fn freeze_clock(&self, now_ms: u64) -> Result<u64, CallError> {
        self.move_clock(now_ms, true).await
    }

    async fn move_clock(&self, now_ms: u64, frozen: bool) -> Result<u64, CallError> {
        let answer: ClockBody = self
            .call(
                || "setting the target's clock".to_owned(),
                self.request(reqwest::Method::PUT, "/v1/admin/clock", true)
                    .json(&ClockBody { now_ms, frozen }),
                &[200],
            )
            .await?;
        Ok(answer.now_ms)
    }

    /// `POST /v1/admin/drain`.
    pub async fn drain(&self, max_ms: u64) -> Result<DrainAnswer, CallError> {
        self.call(
            || "draining the target".to_owned(),
            self.request(reqwest::Method::POST, "/v1/admin/drain", true)
                .timeout(Duration::from_millis(max_ms) + CALL_TIMEOUT)
                .json(&DrainBody { max_ms }),
            &[200],
        )
        .await
    }

    /// `GET /v1/admin/audit`.
    pub async fn audit(&self) -> Result<AuditExport, CallError> {
        self.call(
            || "reading the audit export".to_owned(),
            self.request(reqwest::Method::GET, "/v1/admin/audit", true)
                .timeout(Duration::from_secs(300)),
            &[200],
        )
        .await
    }

    /// `POST /v1/admin/audit/orders`, in chunks the protocol allows.
    pub async fn orders(&self, orders: Vec<OrderRef>) -> Result<Vec<OrderEntry>, CallError> {
        let mut found = Vec::new();
        for chunk in orders.chunks(reference::http::AUDIT_ORDERS_MAX) {
            let answer: OrdersAnswer = self
                .call(
                    || "reading coupon order records".to_owned(),
                    self.request(reqwest::Method::POST, "/v1/admin/audit/orders", true)
                        .timeout(Duration::from_secs(300))
                        .json(&OrdersQuery {
                            orders: chunk.to_vec(),
                        }),
                    &[200],
                )
                .await?;
            found.extend(answer.records);
        }
        Ok(found)
    }

    /// `PUT /v1/admin/switches/{name}`.
    pub async fn set_switch(&self, name: &str, on: bool) -> Result<(), CallError> {
        let _: serde_json::Value = self
            .call(
                || format!("switching {name} {}", if on { "on" } else { "off" }),
                self.request(
                    reqwest::Method::PUT,
                    &format!("/v1/admin/switches/{name}"),
                    true,
                )
                .json(&SwitchBody { on }),
                &[200],
            )
            .await?;
        Ok(())
    }

    /// `GET /v1/capabilities`: `Ok(None)` when the target has no such route
    /// (it offers none of the optional parts).
    pub async fn capabilities(&self) -> Result<Option<Capabilities>, CallError> {
        match self
            .call(
                || "reading the target's capabilities".to_owned(),
                self.request(reqwest::Method::GET, "/v1/capabilities", false),
                &[200],
            )
            .await
        {
            Ok(capabilities) => Ok(Some(capabilities)),
            Err(
                CallError::Refused { status: 404, .. } | CallError::NotProtocol { status: 404, .. },
            ) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `POST /v1/admin/faults`.
    pub async fn fault(&self, fault: &FaultBody) -> Result<FaultStatus, CallError> {
        self.call(
            || {
                format!(
                    "injecting the fault {}",
                    serde_json::to_string(fault).unwrap_or_default()
                )
            },
            self.request(reqwest::Method::POST, "/v1/admin/faults", true)
                .json(fault),
            &[202],
        )
        .await
    }

    /// `GET /v1/admin/faults`.
    pub async fn faults(&self) -> Result<FaultStatus, CallError> {
        self.call(
            || "reading the target's faults".to_owned(),
            self.request(reqwest::Method::GET, "/v1/admin/faults", true),
            &[200],
        )
        .await
    }
}
