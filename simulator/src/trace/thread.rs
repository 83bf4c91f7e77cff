//! The trace generated (or read) and hashed on a thread of its own, in bounded
//! batches, so the engine's thread only runs the wallet.

use anyhow::Context as _;

use crate::scenario::Scenario;
use crate::trace::{Op, Shard, Trace, TraceHasher, TraceReader};

/// The ops a run sends: the generated trace, or an exported one replayed.
/// Where a run's requests come from.
pub(crate) enum TraceSource {
    /// Generated from the scenario (owned: the producing thread keeps it).
    Generated {
        scenario: Box<Scenario>,
        seed: u64,
        shard: Option<Shard>,
    },
    /// Read from an exported trace.
    Replay(TraceReader<std::io::BufReader<std::fs::File>>),
}

/// Ops a producing thread sends at once.
const TRACE_BATCH_OPS: usize = 4096;

/// Batches in flight between the producing thread and the engine.
const TRACE_BATCHES_MAX: usize = 8;

/// The trace generated (or read) and hashed on a thread of its own, so the
/// engine's thread only runs the wallet: the same ops in the same order, the
/// same hash. Bounded: at most [`TRACE_BATCHES_MAX`] batches wait.
pub(crate) struct TraceThread {
    batches: std::sync::mpsc::Receiver<Vec<anyhow::Result<Op>>>,
    current: std::vec::IntoIter<anyhow::Result<Op>>,
    producer: Option<std::thread::JoinHandle<TraceHasher>>,
}

impl TraceThread {
    pub(crate) fn spawn(source: TraceSource) -> anyhow::Result<Self> {
        let (sender, batches) = std::sync::mpsc::sync_channel(TRACE_BATCHES_MAX);
        let producer = std::thread::Builder::new()
            .name("redrain-trace".to_owned())
            .spawn(move || {
                let mut hasher = TraceHasher::default();
                let mut batch = Vec::with_capacity(TRACE_BATCH_OPS);
                let mut push = |item: anyhow::Result<Op>, batch: &mut Vec<_>| {
                    if let Ok(op) = &item {
                        hasher.add(op);
                    }
                    batch.push(item);
                    // A closed channel: the engine stopped; so does the trace.
                    batch.len() < TRACE_BATCH_OPS || sender.send(std::mem::take(batch)).is_ok()
                };
                match source {
                    TraceSource::Generated {
                        scenario,
                        seed,
                        shard,
                    } => {
                        for op in Trace::new(&scenario, seed).with_shard(shard) {
                            if !push(Ok(op), &mut batch) {
                                break;
                            }
                        }
                    }
                    TraceSource::Replay(reader) => {
                        for op in reader {
                            let failed = op.is_err();
                            if !push(op.map_err(anyhow::Error::from), &mut batch) || failed {
                                break;
                            }
                        }
                    }
                }
                if !batch.is_empty() {
                    let _ = sender.send(batch);
                }
                hasher
            })
            .context("starting the trace thread")?;
        Ok(Self {
            batches,
            current: Vec::new().into_iter(),
            producer: Some(producer),
        })
    }

    /// The hash of every op produced; waits for the producing thread.
    pub(crate) fn finish(mut self) -> TraceHasher {
        let producer = self.producer.take().expect("finished once");
        // Unblock a producer waiting to send (the engine stopped early).
        drop(self.batches);
        // The producer only panics on a bug; pass it on.
        producer
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }
}

impl Iterator for TraceThread {
    type Item = anyhow::Result<Op>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(op) = self.current.next() {
                return Some(op);
            }
            // Disconnected: the producer sent its last batch.
            self.current = self.batches.recv().ok()?.into_iter();
        }
    }
}
