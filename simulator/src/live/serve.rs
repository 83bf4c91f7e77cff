//! `redrain serve`: the reference wallet of a scenario behind protocol `/v1`,
//! over any store URLs, with shadow stores beside the real ones.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use reference::http::{DrainAnswer, Server, ServerConfig, ShiftedClock, StoreKind, StoreSwitch};
use reference::kv::{self, Kv, KvOptions};
use reference::ledger::{self, Ledger, LedgerOptions};
use reference::{Clock, Wallet};

use crate::options::has_pipeline_scenes;
use crate::scenario::{Scenario, StoreUrls};
use crate::stores::meter::{MeteredKv, MeteredLedger};

/// The server's stores behind switches, so `store_outage` faults can take one
/// away: a switched-down store refuses every call as an unreachable one would.
#[derive(Debug)]
pub struct Switches {
    /// Real then shadow.
    ledgers: [Arc<MeteredLedger>; 2],
    kvs: [Arc<MeteredKv>; 2],
}

impl Switches {
    /// Switches over the real and shadow ledgers and KVs (real first).
    pub fn new(ledgers: [Arc<dyn Ledger>; 2], kvs: [Arc<dyn Kv>; 2]) -> Self {
        Self {
            ledgers: ledgers.map(|l| Arc::new(MeteredLedger::new(l))),
            kvs: kvs.map(|k| Arc::new(MeteredKv::new(k))),
        }
    }

    /// The switched ledgers, real then shadow: what the wallet is built on.
    pub fn ledgers(&self) -> [Arc<dyn Ledger>; 2] {
        self.ledgers.clone().map(|l| l as Arc<dyn Ledger>)
    }

    /// The switched KVs, real then shadow.
    pub fn kvs(&self) -> [Arc<dyn Kv>; 2] {
        self.kvs.clone().map(|k| k as Arc<dyn Kv>)
    }
}

impl StoreSwitch for Switches {
    fn set_down(&self, store: StoreKind, shadow: bool, down: bool) {
        let side = usize::from(shadow);
        match store {
            StoreKind::Ledger => self.ledgers[side].set_down(down),
            StoreKind::Kv => self.kvs[side].set_down(down),
        }
    }
}

/// How to serve.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Where to listen (port 0: any free port).
    pub listen: SocketAddr,
    /// The bearer token admin routes require.
    pub admin_token: String,
    /// The stores (real and `shadow_` tables / `shadow:` keys beside them).
    pub stores: StoreUrls,
    /// KV namespace of the server's keys (Redis).
    pub kv_prefix: String,
    /// Share of the scenario's users the load will send, which scales budgets,
    /// stock, the credit worker and the pipeline as a simulated run scales them.
    pub rate_scale: f64,
    /// Seed of the dev token key (default: the scenario's).
    pub seed: Option<u64>,
}

/// A server ready to serve, and what it was built from.
#[derive(Debug)]
pub struct Built {
    /// The server.
    pub server: Server,
    /// Its clock (standing at the scenario's start when built).
    pub clock: Arc<ShiftedClock>,
    /// The scenario as served (tree scaled).
    pub scenario: Scenario,
}

/// The reference wallet of `scenario` over `options.stores`, behind the protocol.
pub async fn build(scenario: &Scenario, options: &ServeOptions) -> anyhow::Result<Built> {
    anyhow::ensure!(
        !options.admin_token.trim().is_empty(),
        "an admin token is required: pass --admin-token-file or set REDRAIN_ADMIN_TOKEN"
    );
    anyhow::ensure!(
        options.rate_scale > 0.0 && options.rate_scale <= 1.0,
        "--rate-scale {} is out of range: give a share of users in (0, 1]",
        options.rate_scale
    );
    let mut scenario = scenario.clone();
    scenario.sample_rate = options.rate_scale;
    scenario.tree = scenario.tree.scaled(options.rate_scale);
    let seed = options.seed.unwrap_or(scenario.seed);
    let clock = Arc::new(ShiftedClock::starting_at(scenario.start_ms));
    let dyn_clock: Arc<dyn Clock> = clock.clone();
    let open_ledger = |shadow: bool| {
        let url = options.stores.ledger.clone();
        async move {
            let options = if shadow {
                LedgerOptions::shadow()
            } else {
                LedgerOptions::default()
            };
            ledger::open_with(&url, options).await.with_context(|| {
                format!(
                    "opening the ledger {} ({} tables)",
                    reference::redact_url(&url),
                    if shadow { "shadow" } else { "real" }
                )
            })
        }
    };
    let open_kv = |shadow: bool| {
        let url = options.stores.kv.clone();
        let clock = dyn_clock.clone();
        let prefix = options.kv_prefix.clone();
        async move {
            let kv_options = KvOptions {
                prefix,
                shadow,
                shadow_ttl_ms: None,
            };
            kv::open(&url, clock, &kv_options)
                .await
                .with_context(|| format!("opening the KV {}", reference::redact_url(&url)))
        }
    };
    let switches = Switches::new(
        [open_ledger(false).await?, open_ledger(true).await?],
        [open_kv(false).await?, open_kv(true).await?],
    );
    let [ledger, shadow_ledger] = switches.ledgers();
    let [kv, shadow_kv] = switches.kvs();
    let tree = Arc::new(scenario.tree.clone());
    let mut wallet =
        Wallet::new(tree, ledger, kv, dyn_clock).with_shadow_stores(shadow_ledger, shadow_kv);
    if let Some(source) = &scenario.token_keys {
        wallet = wallet.with_keys(Arc::new(source.load(seed).context("loading token keys")?));
    }
    let config = server_config(&scenario, options.admin_token.clone());
    Ok(Built {
        server: Server::new(wallet, clock.clone(), config).with_store_switch(Arc::new(switches)),
        clock,
        scenario,
    })
}

/// The server's knobs from a (scaled) scenario: the worker, pipeline and counter
/// as a simulated run of the same share would have them.
pub fn server_config(scenario: &Scenario, admin_token: String) -> ServerConfig {
    let mut config = ServerConfig::new(admin_token);
    config.worker = crate::options::scaled_worker(scenario);
    config.pipeline =
        has_pipeline_scenes(&scenario.tree).then(|| crate::options::scaled_pipeline(scenario));
    config.tick_interval_ms = scenario.crediting.tick_interval_ms.max(1);
    config.drain_ms_max = scenario.crediting.drain_ms_max.min(120_000);
    if let Some(counter) = &scenario.counter {
        config.counter_interval_ms = counter.interval_ms.max(1);
    }
    config
}

/// A server running on this process's runtime on 127.0.0.1 (a free port): the
/// in-process reference of `conform --reference`, and tests' targets.
#[derive(Debug)]
pub struct Local {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<DrainAnswer>>,
}

impl Local {
    /// Start `server` on a free loopback port.
    pub async fn start(server: Server) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding a loopback port")?;
        let url = format!("http://{}", listener.local_addr()?);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server.serve(listener, async move {
            let _ = stopped.await;
        }));
        Ok(Self {
            url,
            stop: Some(stop),
            task,
        })
    }

    /// Shut it down gracefully and say what was left.
    pub async fn stop(mut self) -> anyhow::Result<DrainAnswer> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task)
            .await
            .context("the server's task")?
            .context("serving")
    }
}

impl Drop for Local {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Serve until Ctrl-C / SIGTERM; prints the address first.
pub async fn serve(built: Built, listen: SocketAddr) -> anyhow::Result<DrainAnswer> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("listening on {listen}"))?;
    let address = listener.local_addr().context("reading the bound address")?;
    println!(
        "redrain serve: scenario `{}` on http://{address}/v1 (OpenAPI at /v1/openapi.json); Ctrl-C stops",
        built.scenario.name
    );
    let left = built
        .server
        .serve(listener, shutdown_signal())
        .await
        .context("serving")?;
    println!(
        "stopped: {} tokens and {} coupon orders left after draining {} ms",
        left.token_backlog, left.orders_queued, left.waited_ms
    );
    Ok(left)
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
