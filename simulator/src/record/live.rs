//! The `RunRecord` of a live run: the same contract as a simulated one, with the
//! target in place of the store URLs and the driver's figures in `live`.

use std::collections::BTreeMap;

use reports::{
    CreditingSummary, LiveSummary, RunRecord, SecondSample, StoresSummary, TraceInfo, ViewSummary,
};

use crate::check::Violation;
use crate::history::{Event, FinalState, History};
use crate::options::RunOptions;
use crate::record::Finished;
use crate::scenario::Scenario;
use crate::trace::TraceHasher;

/// What a live run hands to [`live_record`].
#[derive(Debug)]
pub(crate) struct LiveRun<'a> {
    pub scenario: &'a Scenario,
    pub seed: u64,
    pub history: &'a History,
    pub state: &'a FinalState,
    pub violations: &'a [Violation],
    pub trace: TraceHasher,
    pub series: Vec<SecondSample>,
    pub live: Option<LiveSummary>,
    pub elapsed_ms: u64,
    pub forged_presented: u64,
    pub reproduce: String,
}

/// The `RunRecord` of a live run: the same contract as a simulated one, with
/// the target in place of the store URLs and the driver's figures in `live`.
pub(crate) fn live_record(run: LiveRun<'_>) -> RunRecord {
    let mut views = ViewSummary::default();
    let mut crediting = CreditingSummary {
        forged_presented: run.forged_presented,
        ..CreditingSummary::default()
    };
    for event in &run.history.events {
        match event {
            Event::View { view, .. } => {
                views.views += 1;
                if view.pending_cents > 0 {
                    views.plain_async_short += 1;
                    views.plain_async_hidden_max_cents =
                        views.plain_async_hidden_max_cents.max(view.pending_cents);
                }
            }
            Event::Issue {
                outcome: reference::wallet::IssueOutcome::Accepted { .. },
                ..
            } => crediting.accepted += 1,
            Event::Withdraw {
                outcome:
                    reference::wallet::WithdrawOutcome::Withdrawn { force, .. }
                    | reference::wallet::WithdrawOutcome::Rejected { force, .. },
                ..
            } => crediting.force_credited += u64::from(force.credited),
            _ => {}
        }
    }
    let mut refused: BTreeMap<String, u64> = BTreeMap::new();
    if let Some(live) = &run.live {
        for (label, n) in &live.errors {
            *refused.entry(label.clone()).or_default() += n;
        }
        if live.dropped > 0 {
            refused.insert("live.dropped".to_owned(), live.dropped);
        }
        crediting.drain_ms = live.drain_ms;
    }
    let finished = Finished {
        history: run.history.clone(),
        crediting,
        series: run.series,
        views,
        delay: None,
        coupon_delay: None,
        capacity: None,
        stores: StoresSummary::default(),
        trace: TraceInfo {
            hash: run.trace.finish(),
            ops: run.trace.ops(),
            shard: None,
            source: String::new(),
        },
        refused,
        spent: BTreeMap::new(),
        midway_checks: Vec::new(),
    };
    let target = run
        .live
        .as_ref()
        .map_or_else(|| "target".to_owned(), |l| l.target.clone());
    let mut record = super::record(
        run.scenario,
        run.seed,
        &RunOptions::default(),
        &finished,
        run.state,
        run.violations,
        None,
        run.elapsed_ms,
        "generated (live)".to_owned(),
    );
    record.ledger_url = target.clone();
    record.kv_url = target;
    record.shadow = true;
    record.reproduce = run.reproduce;
    record.live = run.live;
    record
}
