//! One run from end to end: stores opened, the trace started, the engine run,
//! the final state read, the checkers run, the record built. Never the engine's
//! own step logic.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use reference::ledger::LedgerOptions;
use reference::wallet::Wallet;
use reference::{Clock, ManualClock};
use reports::RunRecord;

use super::midway::Midway;
use super::{Engine, Meters};
use crate::check::{self, Violation};
use crate::history::{FinalState, History, RealStores};
use crate::options::{RunOptions, effective_scenario};
use crate::record::hash::record_difference;
use crate::record::record;
use crate::scenario::Scenario;
use crate::stores::meter::{MeteredKv, MeteredLedger};
use crate::stores::{
    ShadowStores, Snapshot, Stores, open_empty_ledger, open_kv, store_urls, unique_namespace,
};
use crate::trace::TraceReader;
use crate::trace::thread::{TraceSource, TraceThread};

/// Everything a run produced.
#[derive(Debug)]
pub struct RunOutput {
    /// The record (the contract with `reports`).
    pub record: RunRecord,
    /// Every answered request and every fault.
    pub history: History,
    /// The stores at the end.
    pub state: FinalState,
    /// Every violation found.
    pub violations: Vec<Violation>,
}

/// Run `scenario` with `options` on fresh stores named by the URLs. Both stores
/// are opened (and a server reached) before any traffic. A ledger must be empty:
/// the checkers compare it with this run's history. On Redis the run keeps its
/// keys under a namespace of its own and deletes it at the end.
pub async fn run_scenario(scenario: &Scenario, options: &RunOptions) -> anyhow::Result<RunOutput> {
    let urls = store_urls(scenario, options);
    let ledger = open_empty_ledger(&urls.ledger, LedgerOptions::default()).await?;
    let clock = Arc::new(ManualClock::new(scenario.start_ms));
    let namespace = unique_namespace("run");
    let (kv, redis) = open_kv(&urls.kv, &clock, &namespace, false).await?;
    let mut redis = Vec::from_iter(redis);
    let shadow = if scenario.shadow {
        let (kv, shadow_redis) = open_kv(&urls.kv, &clock, &namespace, true).await?;
        redis.extend(shadow_redis);
        Some(ShadowStores {
            ledger: open_empty_ledger(&urls.ledger, LedgerOptions::shadow()).await?,
            kv,
        })
    } else {
        None
    };
    let output = run_on(
        scenario,
        options,
        Stores {
            ledger,
            kv,
            clock,
            wallet_keys: None,
            shadow,
        },
    )
    .await;
    for redis in redis {
        redis
            .delete_namespace()
            .await
            .context("deleting the run's keys")?;
    }
    output
}

/// Run `scenario` on the given stores.
pub async fn run_on(
    scenario: &Scenario,
    options: &RunOptions,
    stores: Stores,
) -> anyhow::Result<RunOutput> {
    let scenario = effective_scenario(scenario, options);
    let seed = options.seed.unwrap_or(scenario.seed);
    let (ops, source) = match &options.replay {
        None => (
            TraceSource::Generated {
                scenario: Box::new(scenario.clone()),
                seed,
                shard: options.shard,
            },
            "generated".to_owned(),
        ),
        Some(path) => {
            let file = std::fs::File::open(path)
                .with_context(|| format!("opening the trace {}", path.display()))?;
            let reader =
                TraceReader::new(&path.display().to_string(), std::io::BufReader::new(file))?;
            anyhow::ensure!(
                reader.header.scenario == scenario.name,
                "{} is a trace of scenario `{}`, not `{}`",
                path.display(),
                reader.header.scenario,
                scenario.name
            );
            (TraceSource::Replay(reader), path.display().to_string())
        }
    };
    let ops = TraceThread::spawn(ops)?;
    run_ops(&scenario, seed, options, stores, ops, source).await
}

async fn run_ops(
    scenario: &Scenario,
    seed: u64,
    options: &RunOptions,
    stores: Stores,
    ops: TraceThread,
    source: String,
) -> anyhow::Result<RunOutput> {
    let keys = match &scenario.token_keys {
        Some(source) => Some(Arc::new(source.load(seed).context("loading token keys")?)),
        None => None,
    };
    let tree = Arc::new(scenario.tree.clone());
    // The stores that serve this run's traffic are metered (calls per second,
    // and the switch that takes them down on a fault schedule).
    let (serve_ledger, serve_kv) = match (&stores.shadow, scenario.shadow) {
        (Some(shadow), true) => (shadow.ledger.clone(), shadow.kv.clone()),
        (None, true) => anyhow::bail!("a shadow scenario needs shadow stores"),
        _ => (stores.ledger.clone(), stores.kv.clone()),
    };
    let ledger_meter = Arc::new(
        MeteredLedger::new(serve_ledger.clone()).with_clock(stores.clock.clone() as Arc<dyn Clock>),
    );
    let kv_meter = Arc::new(MeteredKv::new(serve_kv.clone()));
    let mut wallet = if scenario.shadow {
        Wallet::new(
            tree.clone(),
            stores.ledger.clone(),
            stores.kv.clone(),
            stores.clock.clone(),
        )
        .with_shadow_stores(ledger_meter.clone(), kv_meter.clone())
    } else {
        Wallet::new(
            tree.clone(),
            ledger_meter.clone(),
            kv_meter.clone(),
            stores.clock.clone(),
        )
    };
    if let Some(wallet_keys) = stores.wallet_keys.clone().or_else(|| keys.clone()) {
        wallet = wallet.with_keys(wallet_keys);
    }
    let serving = wallet.route(scenario.shadow)?;
    // What the checkers read, past the meters (their reads are not the wallet's).
    let snapshot = Snapshot {
        ledger: serve_ledger.clone(),
        kv: serve_kv.clone(),
        children: tree
            .activities()
            .flat_map(|a| a.children.iter().map(|c| c.id))
            .collect(),
        keys: keys.clone(),
    };
    let started = Instant::now();
    let mut engine = Engine::new(
        scenario,
        seed,
        serving,
        &stores.clock,
        Meters {
            ledger: ledger_meter,
            kv: kv_meter,
        },
        options.progress,
    );
    if let Some(every_s) = options.check_every_s {
        anyhow::ensure!(every_s > 0, "--check-every-s must be at least 1");
        engine.midway = Some(Midway {
            every_s,
            snapshot: snapshot.clone(),
            checks: Vec::new(),
            found: Vec::new(),
            seen: std::collections::BTreeSet::new(),
        });
    }
    engine.run(ops).await?;
    let elapsed = started.elapsed();
    let counter = match &engine.counter {
        Some(rig) => Some(rig.summary(scenario, engine.clock.now_ms()).await),
        None => None,
    };
    let midway = engine.midway.take();
    let mut finished = engine.finish();
    let started_state = Instant::now();
    let mut state = snapshot.read(&finished.history).await?;
    if scenario.shadow {
        state.real_stores = Some(
            RealStores::read(stores.ledger.as_ref(), stores.kv.as_ref())
                .await
                .context("reading the real stores after a shadow run")?,
        );
    }
    finished.spent.insert(
        "final state".to_owned(),
        started_state.elapsed().as_millis() as u64,
    );
    let started_checks = Instant::now();
    let mut violations = check::check_all(&scenario.tree, &finished.history, &state);
    if let Some(midway) = midway {
        finished.midway_checks = midway.checks.clone();
        violations = midway.merge_into(violations);
    }
    finished.spent.insert(
        "checkers".to_owned(),
        started_checks.elapsed().as_millis() as u64,
    );
    let record = record(
        scenario,
        seed,
        options,
        &finished,
        &state,
        &violations,
        counter,
        elapsed.as_millis() as u64,
        source,
    );
    Ok(RunOutput {
        record,
        history: finished.history,
        state,
        violations,
    })
}

/// Run the scenario twice and compare the records; the first run's output and
/// the difference, if any.
pub async fn check_determinism(
    scenario: &Scenario,
    options: &RunOptions,
) -> anyhow::Result<(RunOutput, Option<String>)> {
    let quiet = RunOptions {
        progress: false,
        ..options.clone()
    };
    let first = run_scenario(scenario, options).await?;
    let second = run_scenario(scenario, &quiet).await?;
    let difference = record_difference(&first.record, &second.record);
    Ok((first, difference))
}
