//! Live traffic against a server speaking protocol `/v1`: the client, the load
//! driver (`redrain load`), conformance (`redrain conform`) and the HTTP
//! benchmark (`redrain bench http`).

pub mod client;
pub mod conform;
pub mod driver;
pub mod load;
pub mod serve;
pub mod state;

use std::collections::BTreeMap;

use reports::{
    CreditingSummary, LiveSummary, RunRecord, SecondSample, StoresSummary, TraceInfo, ViewSummary,
};

use crate::check::Violation;
use crate::history::{Event, FinalState, History};
use crate::record::Finished;
use crate::scenario::Scenario;
use crate::scenario::options::RunOptions;
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
    let mut record = crate::record::record(
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

/// Run one goose scenario of `transaction` against `host` with `users` users
/// (all started in the first second) for `run_time_s` seconds, quietly and
/// without goose's control ports. Returns goose's (requests, failures).
pub(crate) async fn run_goose(
    transaction: goose::goose::Transaction,
    host: &str,
    users: usize,
    run_time_s: usize,
) -> anyhow::Result<(u64, u64)> {
    use goose::prelude::{GooseAttack, GooseDefault, GooseDefaultType as _};
    let metrics = GooseAttack::initialize_with_config(goose::config::GooseConfiguration::default())
        .map_err(|e| anyhow::anyhow!("starting goose: {e}"))?
        .register_scenario(goose::goose::Scenario::new("redrain").register_transaction(transaction))
        .set_default(GooseDefault::Host, host)
        .and_then(|a| a.set_default(GooseDefault::Users, users))
        .and_then(|a| a.set_default(GooseDefault::IncreaseRate, users.to_string().as_str()))
        .and_then(|a| a.set_default(GooseDefault::RunTime, run_time_s))
        .and_then(|a| a.set_default(GooseDefault::NoPrintMetrics, true))
        .and_then(|a| a.set_default(GooseDefault::NoResetMetrics, true))
        // No telnet control port (5116); goose 0.19 opens no WebSocket one
        // unless asked, and warns when told not to.
        .and_then(|a| a.set_default(GooseDefault::NoTelnet, true))
        .and_then(|a| a.set_default(GooseDefault::Quiet, 1usize))
        .map_err(|e| anyhow::anyhow!("configuring goose: {e}"))?
        .execute()
        .await
        .map_err(|e| anyhow::anyhow!("goose failed: {e}"))?;
    Ok(metrics.requests.values().fold((0, 0), |(r, f), m| {
        (
            r + (m.success_count + m.fail_count) as u64,
            f + m.fail_count as u64,
        )
    }))
}
