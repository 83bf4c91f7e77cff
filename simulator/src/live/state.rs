//! A live target's final state, read through its audit export.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::Context as _;
use reference::http::OrderRef;
use reference::wallet::IssueOutcome;

use super::client::Target;
use crate::history::{Event, FinalState, History, RealStores};

/// The target's state as the checkers see it: the audit export of its shadow
/// stores, the counts of its real ones, and the order record of every coupon
/// order an answer in `history` named.
pub async fn read_final_state(target: &Target, history: &History) -> anyhow::Result<FinalState> {
    let mut named = BTreeSet::new();
    for event in &history.events {
        if let Event::Issue {
            outcome:
                IssueOutcome::Queued { order }
                | IssueOutcome::DuplicateQueued { order }
                | IssueOutcome::OrderConflict { first: order },
            ..
        } = event
        {
            named.insert(OrderRef {
                child_id: order.child_id,
                order_no: order.order_no.clone(),
            });
        }
    }
    let mut orders: BTreeMap<u64, BTreeMap<String, _>> = BTreeMap::new();
    if !named.is_empty() {
        for entry in target
            .orders(named.into_iter().collect())
            .await
            .context("reading the target's coupon order records")?
        {
            orders
                .entry(entry.child_id)
                .or_default()
                .insert(entry.order_no, entry.record);
        }
    }
    // After the order records: a wallet writes the ledger before it marks an
    // order issued, so every order read as issued is in this later snapshot.
    let audit = target
        .audit()
        .await
        .context("reading the target's audit export")?;
    let mut token_keys = BTreeMap::new();
    for (id, hex_key) in &audit.token_keys {
        let bytes = hex::decode(hex_key)
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .with_context(|| format!("the audit export's token key {id} is not 32 bytes of hex"))?;
        token_keys.insert(*id, bytes);
    }
    Ok(FinalState {
        ledger: audit.ledger,
        counters: audit.counters,
        token_backlog: audit.token_backlog,
        token_keys,
        orders,
        real_stores: audit.real_stores.map(|r| RealStores {
            entries: r.entries,
            accounts: r.accounts,
            counters: r.counters,
        }),
        quiet: true,
    })
}
