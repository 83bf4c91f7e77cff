//! `redrain bench http`: the load driver beside wrk and goose against the same
//! `redrain serve`, in one run, and the server's award throughput per store.
//!
//! Clients: one `redrain serve` (memory stores) runs as a child process; wrk
//! (one thread), the open-model driver and a goose-only attack each send the
//! same award (a replay, so the server's cheapest decided path) for the same
//! time at the same connection count. Each client's CPU is measured (wrk's as
//! a waited-for child, the driver's and goose's as this process's own: the
//! server is another process), so the figure compared is requests per second
//! per client core, which does not depend on how fast the shared server is.
//! The driver runs open-model at wrk's measured rate and records every
//! latency from its scheduled time in an HDR histogram.
//!
//! Server: fresh awards (distinct order numbers) from the driver at the same
//! concurrency, on the memory stores, SQLite, and Redis + MariaDB when
//! `REDRAIN_REDIS_URL` and `REDRAIN_MYSQL_URL` are set.

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use goose::prelude::*;
use hdrhistogram::Histogram;
use reference::http::AwardBody;
use reference::wallet::{IssueOutcome, IssueRequest};
use serde::Serialize;
use tokio::time::Instant;

use crate::live::client::Target;
use crate::live::driver::{self, Answer, Feed};

/// How to measure.
#[derive(Debug, Clone)]
pub struct HttpBenchOptions {
    /// Seconds per client run.
    pub seconds: u64,
    /// Connections (wrk), in-flight bound (driver), users (goose).
    pub connections: usize,
    /// The `redrain` binary to start servers with.
    pub redrain: std::path::PathBuf,
    /// The scenario to serve (its tree has the awards sent).
    pub scenario: std::path::PathBuf,
    /// Where SQLite files go.
    pub dir: std::path::PathBuf,
}

/// One client's figures.
#[derive(Debug, Clone, Serialize)]
pub struct ClientRow {
    /// wrk, the driver or goose.
    pub client: String,
    /// Requests answered.
    pub requests: u64,
    /// Requests answered per wall second.
    pub per_s: f64,
    /// Client CPU seconds over the run.
    pub cpu_s: f64,
    /// Requests per second per client core: requests / CPU seconds.
    pub per_core_s: f64,
    /// The driver only: the same, counting the CPU of decoding every answer
    /// into the history afterwards (wrk and goose decode nothing).
    pub per_core_with_decode_s: Option<f64>,
    /// Whether every latency was recorded (wrk and goose sample or bucket).
    pub every_latency: bool,
    /// 99th percentile latency, µs (the driver's from the scheduled time).
    pub p99_us: Option<u64>,
    /// Sends dropped (driver only: the in-flight bound was reached).
    pub dropped: u64,
    /// Errors (non-answers).
    pub errors: u64,
}

/// The server's throughput on one set of stores.
#[derive(Debug, Clone, Serialize)]
pub struct ServerRow {
    /// The stores.
    pub stores: String,
    /// Fresh awards issued.
    pub issued: u64,
    /// Issued per wall second.
    pub per_s: f64,
    /// 99th percentile latency, µs.
    pub p99_us: u64,
    /// Errors.
    pub errors: u64,
    /// Why the row was skipped, if it was.
    pub skipped: Option<String>,
}

/// Everything measured.
#[derive(Debug, Clone, Serialize)]
pub struct HttpBench {
    /// Seconds per run.
    pub seconds: u64,
    /// Connections / in-flight / users.
    pub connections: usize,
    /// wrk, driver, goose.
    pub clients: Vec<ClientRow>,
    /// Per store.
    pub servers: Vec<ServerRow>,
}

impl HttpBench {
    fn row(&self, client: &str) -> Option<&ClientRow> {
        self.clients.iter().find(|r| r.client.starts_with(client))
    }

    /// The driver's per-core rate over wrk's.
    pub fn driver_vs_wrk(&self) -> Option<f64> {
        Some(self.row("redrain")?.per_core_s / self.row("wrk")?.per_core_s.max(1e-9))
    }

    /// The driver's per-core rate over goose's.
    pub fn driver_vs_goose(&self) -> Option<f64> {
        Some(self.row("redrain")?.per_core_s / self.row("goose")?.per_core_s.max(1e-9))
    }
}

const ADMIN_TOKEN: &str = "redrain-bench-http-admin-token";

/// A `redrain serve` child process.
#[derive(Debug)]
struct ServerProcess {
    child: Child,
    url: String,
}

impl ServerProcess {
    fn start(options: &HttpBenchOptions, ledger: &str, kv: &str) -> anyhow::Result<Self> {
        let mut child = Command::new(&options.redrain)
            .arg("serve")
            .arg(&options.scenario)
            .args(["--listen", "127.0.0.1:0", "--ledger", ledger, "--kv", kv])
            .args([
                "--kv-prefix",
                &crate::stores::unique_namespace("bench-http"),
            ])
            .env("REDRAIN_ADMIN_TOKEN", ADMIN_TOKEN)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {} serve", options.redrain.display()))?;
        let stdout = child.stdout.take().context("the server's stdout")?;
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .context("reading the server's address")?;
        let url = line
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .map(|w| w.trim_end_matches("/v1").to_owned())
            .with_context(|| format!("the server printed no address: {line:?}"))?;
        Ok(Self { child, url })
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// CPU seconds of this process (self) and of its waited-for children, from /proc.
fn cpu_seconds() -> (f64, f64) {
    let text = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which is in parentheses).
    let rest = text.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<f64> = rest
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0.0))
        .collect();
    // utime, stime, cutime, cstime are fields 14..=17 (1-based); here offset by 3.
    let tick = 100.0;
    let get = |i: usize| fields.get(i).copied().unwrap_or(0.0) / tick;
    (get(11) + get(12), get(13) + get(14))
}

/// The award every client sends: a replay after the first.
fn replayed_award() -> IssueRequest {
    IssueRequest {
        app_id: 1,
        activity_id: 5001,
        order_no: "1_502_1_1_0".to_owned(),
        award_id: 5902,
        amount_cents: 100,
    }
}

/// What the driver sends.
#[derive(Debug, Clone, Copy)]
enum Body {
    /// The replayed award, every time.
    Replay,
    /// Award `k`: a fresh order number each.
    Fresh,
}

fn fresh_award(k: u64) -> IssueRequest {
    IssueRequest {
        app_id: 1,
        activity_id: 5001,
        order_no: format!("{}_502_2_1_0", 10 + k),
        award_id: 5902,
        amount_cents: 100,
    }
}

/// Put the server in the conform tree's formal window.
async fn prepare(target: &Target) -> anyhow::Result<()> {
    // 2027-01-03T09:00:00+08:00.
    let _ = target.set_clock(1_798_938_000_000).await;
    target
        .issue(&AwardBody {
            request: replayed_award(),
            green: false,
        })
        .await
        .context("the first award")?;
    Ok(())
}

/// Run every measurement.
pub async fn bench_http(options: &HttpBenchOptions) -> anyhow::Result<HttpBench> {
    let server = ServerProcess::start(options, "memory", "memory")?;
    let target = Target::new(&server.url, ADMIN_TOKEN, true)?;
    prepare(&target).await?;
    let wrk = run_wrk(options, &server.url)?;
    let rate = wrk.per_s.max(100.0);
    let driver = run_driver(&target, options, rate, Body::Replay).await?;
    let goose = run_goose(options, &server.url).await?;
    drop(server);
    let mut servers = Vec::new();
    let sqlite = options
        .dir
        .join(format!("bench-http-{}.db", std::process::id()));
    let sqlite_url = format!("sqlite://{}", sqlite.display());
    let mut stores: Vec<(
        String,
        String,
        String,
        Option<reference::testenv::ScratchDatabase>,
    )> = vec![
        (
            "memory".to_owned(),
            "memory".to_owned(),
            "memory".to_owned(),
            None,
        ),
        (
            "sqlite + memory kv".to_owned(),
            sqlite_url,
            "memory".to_owned(),
            None,
        ),
    ];
    match (
        std::env::var("REDRAIN_MYSQL_URL"),
        std::env::var("REDRAIN_REDIS_URL"),
    ) {
        (Ok(mysql), Ok(redis)) => {
            match reference::testenv::ScratchDatabase::create(&mysql, "bench_http").await {
                Ok(db) => stores.push((
                    "mariadb + redis".to_owned(),
                    db.url.clone(),
                    redis,
                    Some(db),
                )),
                Err(e) => servers.push(skipped(
                    "mariadb + redis",
                    format!("cannot create a database: {e}"),
                )),
            }
        }
        _ => servers.push(skipped(
            "mariadb + redis",
            "set REDRAIN_MYSQL_URL and REDRAIN_REDIS_URL to measure it".to_owned(),
        )),
    }
    for (name, ledger, kv, db) in stores {
        let server = ServerProcess::start(options, &ledger, &kv)?;
        let target = Target::new(&server.url, ADMIN_TOKEN, true)?;
        prepare(&target).await?;
        // Fresh awards: far more offered than served, so the server runs flat out.
        let row = run_driver(&target, options, 1_000_000.0, Body::Fresh).await?;
        servers.push(ServerRow {
            stores: name,
            issued: row.requests.saturating_sub(row.errors),
            per_s: row.per_s,
            p99_us: row.p99_us.unwrap_or(0),
            errors: row.errors,
            skipped: None,
        });
        drop(server);
        if let Some(db) = db {
            let _ = db.drop_now().await;
        }
    }
    let _ = std::fs::remove_file(&sqlite);
    Ok(HttpBench {
        seconds: options.seconds,
        connections: options.connections,
        clients: vec![wrk, driver, goose],
        servers,
    })
}

fn skipped(stores: &str, why: String) -> ServerRow {
    ServerRow {
        stores: stores.to_owned(),
        issued: 0,
        per_s: 0.0,
        p99_us: 0,
        errors: 0,
        skipped: Some(why),
    }
}

fn run_wrk(options: &HttpBenchOptions, url: &str) -> anyhow::Result<ClientRow> {
    let body = serde_json::to_string(&AwardBody {
        request: replayed_award(),
        green: false,
    })?;
    let script = options
        .dir
        .join(format!("bench-http-{}.lua", std::process::id()));
    std::fs::write(
        &script,
        format!(
            "wrk.method = \"POST\"\nwrk.body = {}\nwrk.headers[\"Content-Type\"] = \"application/json\"\nwrk.headers[\"X-Shadow\"] = \"1\"\n",
            serde_json::to_string(&body)?
        ),
    )?;
    let (_, children_before) = cpu_seconds();
    let started = std::time::Instant::now();
    let output = Command::new("wrk")
        .args([
            "-t1",
            &format!("-c{}", options.connections),
            &format!("-d{}s", options.seconds),
        ])
        .arg("-s")
        .arg(&script)
        .arg(format!("{url}/v1/awards"))
        .stdin(Stdio::null())
        .output()
        .context("running wrk (install Debian's package `wrk`)")?;
    let wall = started.elapsed().as_secs_f64();
    let (_, children_after) = cpu_seconds();
    let _ = std::fs::remove_file(&script);
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    anyhow::ensure!(
        output.status.success(),
        "wrk failed: {text}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let requests: u64 = text
        .lines()
        .find_map(|l| {
            l.trim()
                .split_once(" requests in ")
                .map(|(n, _)| n.trim().parse().ok())
        })
        .flatten()
        .with_context(|| format!("wrk printed no request count: {text}"))?;
    let errors: u64 = text
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("Non-2xx or 3xx responses:")
                .map(|n| n.trim().parse().ok())
        })
        .flatten()
        .unwrap_or(0);
    let cpu = (children_after - children_before).max(0.01);
    let per_s = requests as f64 / wall.min(options.seconds as f64 + 0.5);
    Ok(ClientRow {
        client: "wrk (1 thread)".to_owned(),
        requests,
        per_s,
        cpu_s: cpu,
        per_core_s: requests as f64 / cpu,
        per_core_with_decode_s: None,
        every_latency: false,
        p99_us: None,
        dropped: 0,
        errors,
    })
}

/// The open-model driver at `rate` per second for the bench's seconds, at most
/// `connections` in flight; request `k` is `request(k)`.
async fn run_driver(
    target: &Target,
    options: &HttpBenchOptions,
    rate: f64,
    body: Body,
) -> anyhow::Result<ClientRow> {
    #[derive(Debug)]
    struct Figures {
        latency: Arc<std::sync::Mutex<Histogram<u64>>>,
        answers: Vec<(u16, Vec<u8>)>,
        failed: u64,
        dropped: u64,
    }
    let addr = driver::resolve(target.base()).await?;
    let (cpu_before, _) = cpu_seconds();
    let zero = Instant::now() + Duration::from_millis(20);
    let make: Box<dyn Fn(u64) -> (Bytes, ()) + Send + Sync> = match body {
        // One body, built once (as wrk sends one).
        Body::Replay => {
            let bytes = Bytes::from(serde_json::to_vec(&AwardBody {
                request: replayed_award(),
                green: false,
            })?);
            Box::new(move |_| (bytes.clone(), ()))
        }
        Body::Fresh => Box::new(|k| {
            let body = AwardBody {
                request: fresh_award(k),
                green: false,
            };
            (
                Bytes::from(serde_json::to_vec(&body).unwrap_or_default()),
                (),
            )
        }),
    };
    let feed = Arc::new(Feed::Fixed {
        zero,
        interval_ns: (1e9 / rate).max(1.0) as u64,
        end: zero + Duration::from_secs(options.seconds),
        next: AtomicU64::new(0),
        skipped: AtomicU64::new(0),
        make,
    });
    // One histogram for the driver's thread (its connections take turns on it).
    let latency = Arc::new(std::sync::Mutex::new(
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds"),
    ));
    let shared = latency.clone();
    let (figures, _) = driver::drive_on_own_thread(
        addr,
        "/v1/awards",
        true,
        options.connections,
        feed.clone(),
        move || Figures {
            latency: shared.clone(),
            answers: Vec::new(),
            failed: 0,
            dropped: 0,
        },
        |f: &mut Figures, (), answer| match answer {
            Answer::Answered {
                status,
                body,
                latency_us,
            } => {
                if let Ok(mut h) = f.latency.lock() {
                    h.saturating_record(latency_us.max(1));
                }
                // Kept as sent; decoded after the timed part, as the load does.
                f.answers.push((status, body.to_vec()));
            }
            Answer::Dropped => f.dropped += 1,
            Answer::Failed { .. } => f.failed += 1,
        },
    )
    .await?;
    let wall = zero.elapsed().as_secs_f64();
    let (cpu_sent, _) = cpu_seconds();
    let skipped = match &*feed {
        Feed::Fixed { skipped, .. } => skipped.load(std::sync::atomic::Ordering::Relaxed),
        Feed::Queue { .. } => 0,
    };
    let (mut answered, mut errors, mut dropped) = (0, 0, skipped);
    for f in &figures {
        for (status, body) in &f.answers {
            match serde_json::from_slice::<reference::http::IssueAnswer>(body) {
                Ok(a) if *status < 500 && !matches!(a.outcome, IssueOutcome::Rejected { .. }) => {
                    answered += 1;
                }
                _ => errors += 1,
            }
        }
        errors += f.failed;
        dropped += f.dropped;
    }
    let latency = latency
        .lock()
        .map(|h| h.clone())
        .map_err(|_| anyhow::anyhow!("latency lock"))?;
    // Decoding every answer (as a load does, for the checkers) on top.
    let (cpu_decoded, _) = cpu_seconds();
    let requests = answered + errors;
    let cpu = (cpu_sent - cpu_before).max(0.01);
    let with_decode = (cpu_decoded - cpu_before).max(0.01);
    Ok(ClientRow {
        client: "redrain open-model driver".to_owned(),
        requests,
        per_s: requests as f64 / wall,
        cpu_s: cpu,
        per_core_s: requests as f64 / cpu,
        per_core_with_decode_s: Some(requests as f64 / with_decode),
        every_latency: true,
        p99_us: Some(latency.value_at_quantile(0.99)),
        dropped,
        errors,
    })
}

async fn run_goose(options: &HttpBenchOptions, url: &str) -> anyhow::Result<ClientRow> {
    let body = AwardBody {
        request: replayed_award(),
        green: false,
    };
    let body = Arc::new(body);
    let send: TransactionFunction = Arc::new(move |user: &mut GooseUser| {
        let body = body.clone();
        Box::pin(async move {
            let builder = user
                .get_request_builder(&GooseMethod::Post, "v1/awards")?
                .header(reference::http::SHADOW_HEADER, "1")
                .json(&*body);
            let request = GooseRequest::builder()
                .method(GooseMethod::Post)
                .path("v1/awards")
                .set_request_builder(builder)
                .build();
            let _ = user.request(request).await?;
            Ok(())
        })
    });
    let (cpu_before, _) = cpu_seconds();
    let started = std::time::Instant::now();
    let (requests, errors) = crate::live::run_goose(
        Transaction::new(send),
        &format!("{url}/"),
        options.connections,
        options.seconds as usize,
    )
    .await?;
    let wall = started.elapsed().as_secs_f64();
    let (cpu_after, _) = cpu_seconds();
    let cpu = (cpu_after - cpu_before).max(0.01);
    Ok(ClientRow {
        client: format!("goose ({} users)", options.connections),
        requests,
        per_s: requests as f64 / wall.max(options.seconds as f64),
        cpu_s: cpu,
        per_core_s: requests as f64 / cpu,
        per_core_with_decode_s: None,
        every_latency: false,
        p99_us: None,
        dropped: 0,
        errors,
    })
}

/// The one-screen table.
pub fn render(bench: &HttpBench) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "redrain bench http · same `redrain serve` (memory stores), same replayed award, {} s each, {} connections",
        bench.seconds, bench.connections
    );
    let _ = writeln!(
        out,
        "  {:<28} {:>9} {:>10} {:>8} {:>12} {:>10} {:>8}",
        "client", "requests", "req/s", "cpu s", "req/s/core", "p99 µs", "dropped"
    );
    for r in &bench.clients {
        let _ = writeln!(
            out,
            "  {:<28} {:>9} {:>10.0} {:>8.2} {:>12.0} {:>10} {:>8}",
            r.client,
            r.requests,
            r.per_s,
            r.cpu_s,
            r.per_core_s,
            r.p99_us.map_or("—".to_owned(), |p| p.to_string()),
            r.dropped
        );
    }
    if let (Some(w), Some(g)) = (bench.driver_vs_wrk(), bench.driver_vs_goose()) {
        let _ = writeln!(
            out,
            "  driver per core: {w:.2}× wrk (target ≥ 0.8, every latency recorded) · {g:.1}× goose (target ≥ 3)"
        );
    }
    if let Some(d) = bench.row("redrain").and_then(|r| r.per_core_with_decode_s) {
        let _ = writeln!(
            out,
            "  with every answer decoded into the history too: {d:.0} req/s/core ({:.2}× wrk, {:.1}× goose)",
            d / bench.row("wrk").map_or(1.0, |r| r.per_core_s.max(1e-9)),
            d / bench.row("goose").map_or(1.0, |r| r.per_core_s.max(1e-9))
        );
    }
    let _ = writeln!(out, "server: fresh awards, {} in flight", bench.connections);
    for s in &bench.servers {
        match &s.skipped {
            Some(why) => {
                let _ = writeln!(out, "  {:<22} skipped: {why}", s.stores);
            }
            None => {
                let _ = writeln!(
                    out,
                    "  {:<22} {:>8} issued · {:>8.0}/s · p99 {} µs · {} errors",
                    s.stores, s.issued, s.per_s, s.p99_us, s.errors
                );
            }
        }
    }
    out
}
