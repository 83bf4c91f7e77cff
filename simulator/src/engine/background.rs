//! The engine's background work between requests: faults on schedule, every
//! `tick(now)` (credit worker, coupon pipeline, hot counter) and the drain at the
//! end. Never a request.

use std::time::Instant;

use reference::pipeline::CouponPipeline;
use reference::worker::{CreditWorker, TickReport};

use super::Engine;
use crate::history::Event;
use crate::options::{scaled_pipeline, scaled_worker};
use crate::scenario::FaultKind;

impl Engine<'_> {
    pub(super) async fn apply_faults(&mut self, now_ms: u64) {
        while let Some(fault) = self.scenario.faults.get(self.next_fault) {
            if self.scenario.start_ms + fault.at_ms > now_ms {
                break;
            }
            match fault.kind {
                FaultKind::WorkerCrash(point) => {
                    if let Some(worker) = &mut self.worker {
                        worker.crash_at(point);
                    }
                }
                FaultKind::CounterKv(up) => {
                    if let Some(counter) = &self.counter {
                        counter.set_primary_up(up);
                    }
                }
                FaultKind::Switch(switch, on) => {
                    self.wallet.switches().set(switch, on);
                    self.history.events.push(Event::Switch {
                        at_ms: now_ms,
                        switch,
                        on,
                    });
                }
                FaultKind::Kv(up) => self.meters.kv.set_down(!up),
                FaultKind::Db(up) => self.meters.ledger.set_down(!up),
                FaultKind::DbSlow(factor) => self.capacity.set_db_factor(factor),
                FaultKind::Restart => {
                    if let Some(pipeline) = self.pipeline.take() {
                        // Graceful: queued work goes to the durable queue first.
                        pipeline.shutdown().await;
                        self.pipeline = Some(CouponPipeline::new(
                            self.wallet.clone(),
                            scaled_pipeline(self.scenario),
                        ));
                    }
                    self.worker =
                        CreditWorker::for_wallet(self.wallet, scaled_worker(self.scenario));
                    if let Some(counter) = &mut self.counter {
                        counter.restart(now_ms).await;
                    }
                }
            }
            self.next_fault += 1;
        }
    }

    pub(super) async fn tick(&mut self, now_ms: u64) -> anyhow::Result<()> {
        let db_before = self.meters.ledger.figures().writes;
        let started = Instant::now();
        if let Some(worker) = &mut self.worker {
            let report: TickReport = match worker.tick(now_ms).await {
                Ok(report) => report,
                // A store is down: the worker tries again next tick.
                Err(
                    reference::wallet::WalletError::Kv(_)
                    | reference::wallet::WalletError::Ledger(_),
                ) => {
                    *self
                        .refused
                        .entry("fault.worker_tick_failed".to_owned())
                        .or_default() += 1;
                    TickReport::default()
                }
                Err(e) => return Err(anyhow::Error::from(e).context("credit worker tick")),
            };
            self.summary.credited_by_worker += report.credited;
            self.summary.requeued += report.requeued;
            self.summary.failed_attempts += report.failed_attempts;
            if report.crashed {
                let point = worker
                    .crash_point_hit()
                    .unwrap_or(reference::worker::CrashPoint::AfterClaim);
                self.history.events.push(Event::WorkerCrash {
                    at_ms: now_ms,
                    point,
                });
                self.summary.worker_crashes += 1;
                // The process restarts with nothing but the shared stores.
                self.worker = CreditWorker::for_wallet(self.wallet, scaled_worker(self.scenario));
            }
            if let Some(worker) = &self.worker {
                // A KV that is down cannot say; the last figure stands.
                if let Ok(backlog) = worker.backlog().await {
                    self.backlog = backlog;
                    self.summary.backlog_peak = self.summary.backlog_peak.max(backlog);
                }
            }
        }
        self.spend("credit worker", started);
        let started = Instant::now();
        if let Some(pipeline) = &self.pipeline {
            // A failing store shows in the pipeline's own figures; it retries.
            let _ = pipeline.tick(now_ms).await;
        }
        self.spend("coupon pipeline", started);
        let started = Instant::now();
        if let Some(counter) = &mut self.counter {
            let tick_ms = self.scenario.crediting.tick_interval_ms;
            let shown = counter
                .tick(now_ms, tick_ms, &mut self.history.events)
                .await;
            self.window.counter_shown = self.window.counter_shown.max(shown);
        }
        self.spend("hot counter", started);
        // Background crediting uses the database's capacity too.
        let used = self.meters.ledger.figures().writes - db_before;
        self.capacity.charge_db(now_ms, used);
        Ok(())
    }

    /// Whether background work is left: tokens pending or inflight, a worker
    /// retry, coupon orders queued or handed off.
    pub(super) async fn busy(&self) -> bool {
        let tokens = self.backlog > 0 || self.worker.as_ref().is_some_and(CreditWorker::has_retry);
        let pipeline = match &self.pipeline {
            Some(pipeline) => {
                pipeline.depths() != (0, 0)
                    || self
                        .wallet
                        .kv()
                        .queue_len(&reference::keys::orders_handoff())
                        .await
                        .map_or(true, |n| n > 0)
            }
            None => false,
        };
        tokens || pipeline
    }

    /// Tick until nothing is left to credit, bounded by the plan.
    pub(super) async fn drain(&mut self) -> anyhow::Result<()> {
        let drain_started_ms = self.next_tick_ms;
        if let Some(worker) = &self.worker {
            self.backlog = worker.backlog().await.unwrap_or(self.backlog);
        }
        while self.busy().await {
            if self.next_tick_ms > drain_started_ms + self.scenario.crediting.drain_ms_max {
                break; // I4 reports what is left
            }
            let until = self.next_tick_ms;
            self.advance_to(until).await?;
        }
        self.summary.drain_ms = self.next_tick_ms.saturating_sub(drain_started_ms);
        // The last, partial second.
        if self.window.offered > 0 || self.series.is_empty() {
            self.close_second().await?;
        }
        Ok(())
    }
}
