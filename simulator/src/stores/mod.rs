//! The stores a simulated run uses: opened by URL (an SQL ledger must be empty, a
//! Redis KV gets a namespace of the run's own), the shadow stores beside the real
//! ones, the meters around the serving stores, and the snapshot the checkers read
//! past the meters. Never a request.

pub mod meter;

use std::sync::Arc;

use anyhow::Context as _;
use reference::kv::{Kv, RedisKv};
use reference::ledger::{Ledger, LedgerOptions};
use reference::token::KeyRing;
use reference::{ManualClock, kv, ledger};

use crate::history::{FinalState, History};
use crate::options::RunOptions;
use crate::scenario::{Scenario, StoreUrls};

/// Stores to run on, for tests that plant broken ones.
#[derive(Debug, Clone)]
pub struct Stores {
    /// The ledger.
    pub ledger: Arc<dyn Ledger>,
    /// The KV.
    pub kv: Arc<dyn Kv>,
    /// The clock both run on.
    pub clock: Arc<ManualClock>,
    /// Keys the wallet trusts, when they differ from the scenario's (a planted
    /// misconfiguration); the checkers always use the scenario's.
    pub wallet_keys: Option<Arc<KeyRing>>,
    /// Where shadow-tagged traffic goes; required when the scenario is shadow.
    pub shadow: Option<ShadowStores>,
}

/// The shadow tables and keys beside the real stores.
#[derive(Debug, Clone)]
pub struct ShadowStores {
    /// The `shadow_` tables.
    pub ledger: Arc<dyn Ledger>,
    /// The `shadow:` keys.
    pub kv: Arc<dyn Kv>,
}

/// The store URLs a run uses: the options' overrides, else the scenario's.
pub fn store_urls(scenario: &Scenario, options: &RunOptions) -> StoreUrls {
    StoreUrls {
        ledger: options
            .ledger_url
            .clone()
            .unwrap_or_else(|| scenario.stores.ledger.clone()),
        kv: options
            .kv_url
            .clone()
            .unwrap_or_else(|| scenario.stores.kv.clone()),
    }
}

/// Open a ledger and make sure it is empty: the checkers compare it with this
/// run's history.
pub(crate) async fn open_empty_ledger(
    url: &str,
    options: LedgerOptions,
) -> anyhow::Result<Arc<dyn Ledger>> {
    let tables = if options.shadow {
        "shadow tables"
    } else {
        "tables"
    };
    let ledger = ledger::open_with(url, options)
        .await
        .with_context(|| format!("opening the ledger's {tables}"))?;
    let existing = ledger
        .snapshot()
        .await
        .with_context(|| format!("reading the ledger's {tables}"))?
        .entries
        .len();
    anyhow::ensure!(
        existing == 0,
        "the ledger `{}` already holds {existing} entries in its {tables}; a run needs \
         an empty ledger (a fresh database or SQLite file, or `redrain cleanup --shadow` \
         for shadow tables), because the checkers compare it with this run's history",
        reference::redact_url(url)
    );
    Ok(ledger)
}

/// Open the KV: a fresh memory store, or Redis under the run's own namespace
/// (returned too, so the run can delete it at the end).
pub(crate) async fn open_kv(
    url: &str,
    clock: &Arc<ManualClock>,
    namespace: &str,
    shadow: bool,
) -> anyhow::Result<(Arc<dyn Kv>, Option<RedisKv>)> {
    let options = kv::KvOptions {
        prefix: namespace.to_owned(),
        shadow,
        shadow_ttl_ms: None,
    };
    if kv::check_url(url).is_ok() && url.starts_with("redis") {
        let redis = RedisKv::connect(url, &options)
            .await
            .context("opening the KV")?;
        return Ok((Arc::new(redis.clone()), Some(redis)));
    }
    let kv = kv::open(url, clock.clone(), &options)
        .await
        .context("opening the KV")?;
    Ok((kv, None))
}

/// A KV namespace no other process shares: `redrain-<kind>-<unix ms>-<pid>:`.
pub fn unique_namespace(kind: &str) -> String {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    format!("redrain-{kind}-{ms}-{}:", std::process::id())
}

/// Where the checkers read a run's state: the serving stores past the meters.
#[derive(Clone)]
pub(crate) struct Snapshot {
    pub(crate) ledger: Arc<dyn Ledger>,
    pub(crate) kv: Arc<dyn Kv>,
    pub(crate) children: Vec<reference::ChildId>,
    pub(crate) keys: Option<Arc<KeyRing>>,
}

impl Snapshot {
    /// The stores' state now, with the order records `history` names.
    pub(crate) async fn read(&self, history: &History) -> anyhow::Result<FinalState> {
        let state = FinalState::read(self.ledger.as_ref(), self.kv.as_ref())
            .await
            .context("reading the final state")?
            .with_tokens(
                self.kv.as_ref(),
                self.children.clone(),
                self.keys.as_deref(),
            )
            .await
            .context("reading the token backlog")?
            .with_orders(self.kv.as_ref(), history)
            .await
            .context("reading the coupon-pipeline order records")?;
        Ok(state)
    }
}
