//! The hot counter of a run (seed 000 §4.5): its own KV, plan 1's split keys or
//! plan 2's writer and reader instances, and the readers' polls. Never the
//! wallet's stores.

use std::sync::Arc;

use reference::ManualClock;
use reference::counter::{LocalCounter, LocalCounterConfig, SplitCounter};
use reference::kv::{Kv, KvFaults, MemoryKv};
use reference::switches::Switches;
use reports::CounterSummary;

use crate::history::Event;
use crate::scenario::{CounterKind, CounterPlan, Scenario};

/// The hot counter of a run: its own KV (and backup), plan 1's split keys or
/// plan 2's writer and reader instances, and the readers' polling schedule.
pub(super) struct CounterRig {
    plan: CounterPlan,
    config: LocalCounterConfig,
    backup: Option<Arc<dyn Kv>>,
    switches: Arc<Switches>,
    primary: Arc<MemoryKv>,
    split: Option<SplitCounter>,
    writers: Vec<LocalCounter>,
    readers: Vec<LocalCounter>,
    next_reader: u32,
    /// Poll credit carried between ticks, in reads × 1000.
    read_credit: u64,
    writes: u64,
    reads: u64,
    blocked_reads: u64,
    pub(super) true_total: u64,
}

impl CounterRig {
    /// The rig of `plan` in a run sending `scale` of the traffic: instances and
    /// polls scale with it (each instance still aggregates and refreshes alone).
    pub(super) fn new(
        plan: &CounterPlan,
        scale: f64,
        clock: Arc<ManualClock>,
        switches: &Arc<Switches>,
    ) -> Self {
        let mut plan = plan.clone();
        let scaled = |n: u32| ((f64::from(n) * scale).round() as u32).max(1);
        plan.writers = scaled(plan.writers);
        plan.readers = scaled(plan.readers);
        plan.reads_per_s = scaled(plan.reads_per_s);
        let plan = &plan;
        let primary = Arc::new(MemoryKv::new(clock.clone()));
        let backup: Option<Arc<dyn Kv>> = plan
            .backup
            .then(|| Arc::new(MemoryKv::new(clock)) as Arc<dyn Kv>);
        let config = LocalCounterConfig {
            name: "fireworks".to_owned(),
            interval_ms: plan.interval_ms,
        };
        let instances = |n: u32| -> Vec<LocalCounter> {
            (0..n)
                .map(|_| {
                    LocalCounter::new(&config, primary.clone(), backup.clone(), switches.clone())
                })
                .collect()
        };
        let (split, writers, readers) = match plan.plan {
            CounterKind::Split => (
                Some(SplitCounter::new(
                    primary.clone(),
                    "fireworks",
                    plan.split_keys,
                )),
                Vec::new(),
                Vec::new(),
            ),
            CounterKind::Local => (None, instances(plan.writers), instances(plan.readers)),
        };
        Self {
            plan: plan.clone(),
            config,
            backup,
            switches: switches.clone(),
            primary,
            split,
            writers,
            readers,
            next_reader: 0,
            read_credit: 0,
            writes: 0,
            reads: 0,
            blocked_reads: 0,
            true_total: 0,
        }
    }

    /// Count a cash award of `cents` to `act_id` (on the writer instance that served it).
    pub(super) async fn add(&mut self, act_id: u64, cents: u64) {
        self.writes += 1;
        self.true_total += cents;
        let delta = i64::try_from(cents).unwrap_or(i64::MAX);
        match &self.split {
            // No retry: a failed write is lost (counted by the plan).
            Some(split) => drop(split.add(act_id, delta).await),
            None => self.writers[(act_id % self.writers.len() as u64) as usize].add(delta),
        }
    }

    /// Every instance restarts: writers flush first (a graceful stop), then all
    /// come back with empty local state; readers block until their first refresh.
    pub(super) async fn restart(&mut self, now_ms: u64) {
        for writer in &self.writers {
            writer.tick(now_ms).await;
        }
        let fresh = |n: usize| -> Vec<LocalCounter> {
            (0..n)
                .map(|_| {
                    LocalCounter::new(
                        &self.config,
                        self.primary.clone(),
                        self.backup.clone(),
                        self.switches.clone(),
                    )
                })
                .collect()
        };
        if self.split.is_none() {
            self.writers = fresh(self.writers.len());
            self.readers = fresh(self.readers.len());
        }
    }

    /// Flush and refresh every instance (writers first), then poll for one tick;
    /// returns the highest value shown.
    pub(super) async fn tick(&mut self, now_ms: u64, tick_ms: u64, events: &mut Vec<Event>) -> i64 {
        let mut shown_max = 0;
        for instance in self.writers.iter().chain(&self.readers) {
            instance.tick(now_ms).await;
        }
        self.read_credit += u64::from(self.plan.reads_per_s) * tick_ms;
        let polls = self.read_credit / 1000;
        self.read_credit %= 1000;
        for _ in 0..polls {
            let reader = self.next_reader % self.plan.readers;
            self.next_reader = self.next_reader.wrapping_add(1);
            let shown = match &self.split {
                Some(split) => Some(split.read().await.value),
                None => self.readers[reader as usize].try_read(),
            };
            let Some(shown) = shown else {
                self.blocked_reads += 1;
                continue;
            };
            shown_max = shown_max.max(shown);
            self.reads += 1;
            let lag_ms = if self.split.is_some() {
                0
            } else {
                self.plan.interval_ms
            };
            events.push(Event::CounterRead {
                at_ms: now_ms,
                reader,
                shown,
                lag_ms,
            });
        }
        shown_max
    }

    pub(super) fn set_primary_up(&self, up: bool) {
        self.primary.set_faults(KvFaults {
            down: !up,
            ..KvFaults::default()
        });
    }

    /// The figures, after one more flush and refresh one interval after `now_ms`.
    pub(super) async fn summary(&self, scenario: &Scenario, now_ms: u64) -> CounterSummary {
        let last = now_ms + self.plan.interval_ms;
        for instance in self.writers.iter().chain(&self.readers) {
            instance.tick(last).await;
        }
        let (figures, shown) = match &self.split {
            Some(split) => (split.figures(), split.read().await.value),
            None => {
                let mut figures = reference::counter::CounterFigures::default();
                for instance in self.writers.iter().chain(&self.readers) {
                    let f = instance.figures();
                    figures.kv_writes += f.kv_writes;
                    figures.kv_reads += f.kv_reads;
                }
                let shown = self.readers.iter().filter_map(|r| r.try_read()).max();
                (figures, shown.unwrap_or(0))
            }
        };
        let truth = self.true_total;
        CounterSummary {
            plan: match self.plan.plan {
                CounterKind::Split => "split".to_owned(),
                CounterKind::Local => "local".to_owned(),
            },
            writes: self.writes,
            reads: self.reads,
            blocked_reads: self.blocked_reads,
            kv_writes: figures.kv_writes,
            kv_reads: figures.kv_reads,
            kv_ops_per_s: figures.kv_ops() as f64 * 1000.0 / scenario.duration_ms.max(1) as f64,
            true_total_cents: truth,
            final_shown_cents: shown,
            final_error_pct: if truth == 0 {
                0.0
            } else {
                (shown as f64 - truth as f64) * 100.0 / truth as f64
            },
        }
    }
}
