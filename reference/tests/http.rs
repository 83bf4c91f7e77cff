//! The reference server over HTTP: outcomes and their statuses, bad input with
//! reason codes, admin authentication, shadow routing, the audit export,
//! graceful shutdown, and the committed OpenAPI document.

use std::path::Path;
use std::sync::Arc;

use reference::config::ActivityTree;
use reference::http::{Server, ServerConfig, ShiftedClock};
use reference::kv::{Kv, MemoryKv};
use reference::ledger::{Ledger, MemoryLedger};
use reference::pipeline::PipelineConfig;
use reference::token::KeyRing;
use reference::{Clock, Wallet};
use serde_json::{Value, json};

const TOKEN: &str = "http-test-admin-token";
/// 2027-01-03T09:00:00+08:00: in the conform tree's formal child.
const FORMAL_MS: u64 = 1_798_938_000_000;

struct Running {
    url: String,
    http: reqwest::Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<std::io::Result<reference::http::DrainAnswer>>,
}

async fn start() -> Running {
    let tree =
        ActivityTree::from_file(Path::new("../scenarios/activities/conform.toml")).expect("tree");
    let clock = Arc::new(ShiftedClock::starting_at(FORMAL_MS));
    let dyn_clock: Arc<dyn Clock> = clock.clone();
    let ledger: Arc<dyn Ledger> = Arc::new(MemoryLedger::new());
    let kv: Arc<dyn Kv> = Arc::new(MemoryKv::new(dyn_clock.clone()));
    let wallet = Wallet::new(Arc::new(tree), ledger, kv, dyn_clock.clone())
        .with_shadow_stores(
            Arc::new(MemoryLedger::new()),
            Arc::new(MemoryKv::new(dyn_clock)),
        )
        .with_keys(Arc::new(KeyRing::dev(7)));
    let mut config = ServerConfig::new(TOKEN);
    config.body_limit_bytes = 64 * 1024;
    config.pipeline = Some(PipelineConfig::default());
    let server = Server::new(wallet, clock, config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let done = tokio::spawn(server.serve(listener, async move {
        let _ = stopped.await;
    }));
    Running {
        url,
        http: reqwest::Client::new(),
        stop: Some(stop),
        done,
    }
}

impl Running {
    async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut request = self.http.request(method, format!("{}{path}", self.url));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("the server answers");
        let status = response.status().as_u16();
        let text = response.text().await.expect("a body");
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn admin(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        shadow: bool,
    ) -> (u16, Value) {
        let bearer = format!("Bearer {TOKEN}");
        let mut headers = vec![("authorization", bearer.as_str())];
        if shadow {
            headers.push(("x-shadow", "1"));
        }
        self.call(method, path, body, &headers).await
    }
}

fn award(act_id: u64, cents: i64) -> Value {
    json!({
        "app_id": 1,
        "activity_id": 5001,
        "order_no": format!("{act_id}_502_1_1_0"),
        "award_id": 5902,
        "amount_cents": cents,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outcomes_carry_their_status_and_reason_codes() {
    let server = start().await;
    let shadow = [("x-shadow", "1")];
    let (status, first) = server
        .call("POST", "/v1/awards", Some(award(42, 500)), &shadow)
        .await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["outcome"]["outcome"], "issued");
    let (status, again) = server
        .call("POST", "/v1/awards", Some(award(42, 500)), &shadow)
        .await;
    assert_eq!(
        (status, again["outcome"]["outcome"].as_str()),
        (200, Some("duplicate"))
    );
    let (status, conflict) = server
        .call("POST", "/v1/awards", Some(award(42, 501)), &shadow)
        .await;
    assert_eq!(
        (status, conflict["outcome"]["outcome"].as_str()),
        (409, Some("conflict"))
    );
    let mut bad = award(43, 500);
    bad["order_no"] = json!("43_502_x_1_0");
    let (status, rejected) = server.call("POST", "/v1/awards", Some(bad), &shadow).await;
    assert_eq!(status, 422, "{rejected}");
    assert_eq!(rejected["outcome"]["reason"]["code"], "malformed_order_no");
    // The wallet page shows the credit, on the shadow side only.
    let (status, page) = server
        .call("GET", "/v1/wallets/5001/42?limit=5", None, &shadow)
        .await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["view"]["balance_cents"], 500);
    let (_, real) = server.call("GET", "/v1/wallets/5001/42", None, &[]).await;
    assert_eq!(
        real["view"]["balance_cents"], 0,
        "shadow traffic reached the real side: {real}"
    );
    let (status, audit) = server.admin("GET", "/v1/admin/audit", None, true).await;
    assert_eq!(status, 200);
    assert_eq!(audit["ledger"]["entries"].as_array().map(Vec::len), Some(1));
    assert_eq!(audit["real_stores"]["entries"], 0);
    assert!(
        audit["token_keys"]["0"]
            .as_str()
            .is_some_and(|k| k.len() == 64),
        "{audit}"
    );
    let (status, stock) = server
        .call("GET", "/v1/stock/5001/8101", None, &shadow)
        .await;
    assert_eq!((status, stock["total"].as_u64()), (200, Some(200)));
    let (status, recon) = server
        .admin("GET", "/v1/admin/reconciliation", None, true)
        .await;
    assert_eq!(status, 200);
    assert_eq!(recon["balanced"], true, "{recon}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_4xx_with_a_code_and_a_sentence() {
    let server = start().await;
    let cases: Vec<(reqwest::RequestBuilder, u16, &str)> = vec![
        (
            server
                .http
                .post(format!("{}/v1/awards", server.url))
                .header("content-type", "application/json")
                .body("{not json"),
            400,
            "malformed_json",
        ),
        (
            server
                .http
                .post(format!("{}/v1/awards", server.url))
                .json(&json!({"app_id": 1})),
            422,
            "invalid_body",
        ),
        (
            server
                .http
                .post(format!("{}/v1/awards", server.url))
                .body("x"),
            415,
            "not_json",
        ),
        (
            server
                .http
                .post(format!("{}/v1/awards", server.url))
                .header("content-type", "application/json")
                .body(vec![b' '; 100 * 1024]),
            413,
            "body_too_large",
        ),
        (
            server
                .http
                .post(format!("{}/v1/awards", server.url))
                .header("x-shadow", "yes")
                .json(&award(1, 1)),
            400,
            "invalid_shadow_header",
        ),
        (
            server
                .http
                .get(format!("{}/v1/wallets/5001/notanumber", server.url)),
            400,
            "invalid_path",
        ),
        (
            server
                .http
                .get(format!("{}/v1/wallets/5001/1?limit=0", server.url)),
            400,
            "invalid_limit",
        ),
        (
            server
                .http
                .get(format!("{}/v1/wallets/5001/1?after_id=x", server.url)),
            400,
            "invalid_cursor",
        ),
        (
            server.http.get(format!("{}/v1/wallets/9999/1", server.url)),
            404,
            "unknown_activity",
        ),
        (
            server.http.get(format!("{}/v2/awards", server.url)),
            404,
            "no_such_route",
        ),
        (
            server.http.get(format!("{}/v1/admin/audit", server.url)),
            401,
            "admin_token_missing",
        ),
        (
            server
                .http
                .get(format!("{}/v1/admin/audit", server.url))
                .bearer_auth("wrong-token"),
            403,
            "admin_token_wrong",
        ),
        (
            server
                .http
                .put(format!("{}/v1/admin/switches/no_such", server.url))
                .bearer_auth(TOKEN)
                .json(&json!({"on": false})),
            404,
            "unknown_switch",
        ),
        (
            server
                .http
                .put(format!("{}/v1/admin/clock", server.url))
                .bearer_auth(TOKEN)
                .json(&json!({"now_ms": 5})),
            409,
            "clock_backwards",
        ),
        (
            server
                .http
                .put(format!("{}/v1/admin/clock", server.url))
                .bearer_auth(TOKEN)
                .json(&json!({"now_ms": 9_223_372_036_854_775_808u64, "frozen": true})),
            422,
            "invalid_clock",
        ),
        (
            server
                .http
                .post(format!("{}/v1/admin/announcements", server.url))
                .bearer_auth(TOKEN)
                .json(&json!({"level": "loud", "text": "x"})),
            422,
            "invalid_level",
        ),
    ];
    for (request, status, code) in cases {
        let response = request.send().await.expect("an answer");
        let got = response.status().as_u16();
        let body: Value = response.json().await.expect("a JSON error body");
        assert_eq!((got, body["code"].as_str()), (status, Some(code)), "{body}");
        assert!(
            body["message"].as_str().is_some_and(|m| m.len() > 10),
            "a sentence, not just a code: {body}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_routes_switch_reissue_announce_and_drain() {
    let server = start().await;
    let (status, switches) = server
        .admin(
            "PUT",
            "/v1/admin/switches/flow_list",
            Some(json!({"on": false})),
            false,
        )
        .await;
    assert_eq!(status, 200, "{switches}");
    let flow = switches
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == "flow_list"))
        .cloned();
    assert_eq!(flow.map(|f| f["on"].clone()), Some(json!(false)));
    let (status, reissued) = server
        .admin(
            "POST",
            "/v1/admin/reissue",
            Some(json!({"requests": [award(7, 100), award(7, 100)]})),
            true,
        )
        .await;
    assert_eq!(status, 200, "{reissued}");
    assert_eq!(reissued["outcomes"][0]["outcome"], "issued");
    assert_eq!(reissued["outcomes"][1]["outcome"], "duplicate");
    let (status, posted) = server
        .admin(
            "POST",
            "/v1/admin/announcements",
            Some(json!({"level": "degraded", "text": "flow list paused"})),
            false,
        )
        .await;
    assert_eq!((status, posted["id"].as_u64()), (200, Some(1)));
    let (_, list) = server.call("GET", "/v1/announcements", None, &[]).await;
    assert_eq!(list[0]["text"], "flow list paused");
    // A token award, then drain: the worker credits it.
    let token_award = json!({"app_id": 1, "activity_id": 5001, "order_no": "9_501_1_1_0", "award_id": 5901, "amount_cents": 88});
    let (status, accepted) = server
        .call(
            "POST",
            "/v1/awards",
            Some(token_award),
            &[("x-shadow", "1")],
        )
        .await;
    assert_eq!(
        (status, accepted["outcome"]["outcome"].as_str()),
        (200, Some("accepted"))
    );
    let (status, drained) = server
        .admin(
            "POST",
            "/v1/admin/drain",
            Some(json!({"max_ms": 10000})),
            true,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(drained["drained"], true, "{drained}");
    let (_, audit) = server.admin("GET", "/v1/admin/audit", None, true).await;
    assert_eq!(audit["token_backlog"]["500103"], 0, "{audit}");
    let (_, metrics) = server.call("GET", "/metrics", None, &[]).await;
    let metrics = metrics.as_str().unwrap_or_default().to_owned();
    assert!(
        metrics.contains("redrain_requests_total{route=\"reissue\",outcome=\"duplicate\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("redrain_pipeline_outstanding{side=\"real\"} 0"),
        "drained, nothing outstanding: {metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_background_work() {
    let mut server = start().await;
    // A pipeline coupon, queued; shutdown lets the pipeline finish it.
    let order = json!({"app_id": 1, "activity_id": 5001, "order_no": "11_505_1_2_0", "award_id": 5912, "amount_cents": 0});
    let (status, queued) = server
        .call("POST", "/v1/awards", Some(order), &[("x-shadow", "1")])
        .await;
    assert_eq!(
        (status, queued["outcome"]["outcome"].as_str()),
        (200, Some("queued")),
        "{queued}"
    );
    let _ = server.stop.take().map(|s| s.send(()));
    let left = (&mut server.done)
        .await
        .expect("the server task")
        .expect("served");
    assert!(left.drained, "{left:?}");
    assert_eq!(left.orders_queued, 0);
    assert!(
        reqwest::get(format!("{}/v1/health", server.url))
            .await
            .is_err(),
        "still listening after shutdown"
    );
}

#[test]
fn the_committed_openapi_document_is_the_generated_one() {
    let generated = reference::http::openapi::document();
    let path = Path::new("openapi.json");
    if std::env::var_os("REDRAIN_BLESS").is_some() {
        std::fs::write(path, &generated).expect("writing openapi.json");
    }
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        committed == generated,
        "reference/openapi.json is not the document the code generates; the protocol \
         changed. Review the change, then regenerate it with \
         `REDRAIN_BLESS=1 cargo test -p reference --test http openapi`"
    );
    let doc: Value = serde_json::from_str(&generated).expect("JSON");
    for path in [
        "/v1/awards",
        "/v1/wallets/{activity_id}/{act_id}",
        "/v1/withdrawals",
        "/v1/admin/audit",
    ] {
        assert!(
            doc["paths"][path].is_object(),
            "{path} missing from the document"
        );
    }
    assert!(doc["components"]["schemas"]["IssueOutcome"].is_object());
    assert!(doc["components"]["securitySchemes"]["admin"].is_object());
}
