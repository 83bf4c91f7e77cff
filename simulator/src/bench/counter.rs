//! `redrain bench counter`: the hot counter's KV cost, plan 1 (split keys) beside
//! plan 2 (local aggregation), for the same virtual traffic.

use std::sync::Arc;
use std::time::Instant;

use super::BENCH_START_MS;
use anyhow::Context as _;
use reference::ManualClock;
use reference::counter::{LocalCounter, LocalCounterConfig, SplitCounter};
use reference::kv::MemoryKv;
use reference::switches::Switches;

/// Counter writes per virtual second (the seed's 300k writes/s).
const COUNTER_WRITES_PER_S: u64 = 300_000;
/// Counter reads per write (the seed's 1.8M reads/s against 300k writes/s).
const COUNTER_READS_PER_WRITE: u64 = 6;
/// Instances the writes are spread over.
const COUNTER_WRITERS: usize = 8;
/// Instances the reads are spread over.
const COUNTER_READERS: usize = 20;
/// Plan 1's split keys (the seed's 100).
const COUNTER_SPLIT_KEYS: u32 = 100;
/// Plan 1 executes every this-many-th read and scales the read ops it counted.
const COUNTER_READ_SAMPLE: u64 = 1_000;
/// Plan 2's flush and refresh interval.
const COUNTER_INTERVAL_MS: u64 = 1_000;
/// Users the writes come from (plan 1 picks the split key by act_id).
const COUNTER_USERS: u64 = 10_000;

/// One plan's KV cost for the same virtual traffic.
#[derive(Debug, Clone)]
pub struct CounterRow {
    /// Which plan.
    pub plan: &'static str,
    /// Counter writes (each +1).
    pub writes: u64,
    /// Counter reads served.
    pub reads: u64,
    /// KV write calls (`INCRBY`).
    pub kv_writes: u64,
    /// KV read calls (`GET`); plan 1: scaled up from the sampled reads.
    pub kv_reads: u64,
    /// Reads actually executed (plan 1 samples; plan 2 runs all).
    pub reads_executed: u64,
    /// Largest shortfall of a read against the writes made so far, over the
    /// executed reads.
    pub max_lag: u64,
    /// The value shown at the end (plan 2: after a final tick).
    pub shown_end: i64,
    /// Wall seconds the simulation of this plan took.
    pub wall_s: f64,
}

impl CounterRow {
    /// Every KV call.
    pub fn kv_ops(&self) -> u64 {
        self.kv_writes + self.kv_reads
    }
}

/// Both plans over the same virtual traffic.
#[derive(Debug, Clone)]
pub struct CounterBench {
    /// Counter writes.
    pub writes: u64,
    /// Virtual seconds the traffic spans (writes / 300k).
    pub virtual_s: f64,
    /// Plan 1, then plan 2.
    pub rows: Vec<CounterRow>,
}

/// The virtual millisecond in which the `j`-th of a stream at `per_s` arrives.
fn arrival_ms(j: u64, per_s: u64) -> u64 {
    j.saturating_mul(1_000) / per_s
}

/// Events `[first, end)` of a stream at `per_s` that arrive in millisecond `ms`,
/// clipped to `total`.
fn arrivals_in(ms: u64, per_s: u64, total: u64) -> std::ops::Range<u64> {
    let first = (ms.saturating_mul(per_s)).div_ceil(1_000).min(total);
    let end = ((ms + 1).saturating_mul(per_s)).div_ceil(1_000).min(total);
    first..end
}

fn counter_kv() -> (Arc<ManualClock>, Arc<MemoryKv>) {
    let clock = Arc::new(ManualClock::new(BENCH_START_MS));
    let kv = Arc::new(MemoryKv::new(clock.clone()));
    (clock, kv)
}

/// Plan 1: each write one `INCRBY` on its split key; every
/// [`COUNTER_READ_SAMPLE`]-th read executed as a fan-out over all keys.
async fn bench_counter_plan1(writes: u64, duration_ms: u64) -> anyhow::Result<CounterRow> {
    let (clock, kv) = counter_kv();
    let counter = SplitCounter::new(kv.clone(), "bench", COUNTER_SPLIT_KEYS);
    let reads = writes * COUNTER_READS_PER_WRITE;
    let reads_per_s = COUNTER_WRITES_PER_S * COUNTER_READS_PER_WRITE;
    let started = Instant::now();
    let mut written = 0u64;
    let mut reads_executed = 0u64;
    let mut max_lag = 0u64;
    for ms in 0..duration_ms {
        clock.set(BENCH_START_MS + ms);
        for j in arrivals_in(ms, COUNTER_WRITES_PER_S, writes) {
            counter.add(j % COUNTER_USERS + 1, 1).await?;
            written += 1;
        }
        for k in arrivals_in(ms, reads_per_s, reads) {
            if k % COUNTER_READ_SAMPLE == 0 {
                let read = counter.read().await;
                anyhow::ensure!(read.missing_keys == 0, "plan 1 read lost keys: {read:?}");
                let lag = i64::try_from(written).unwrap_or(i64::MAX) - read.value;
                max_lag = max_lag.max(u64::try_from(lag).unwrap_or(0));
                reads_executed += 1;
            }
        }
    }
    let wall_s = started.elapsed().as_secs_f64();
    anyhow::ensure!(written == writes, "plan 1 wrote {written} of {writes}");
    let figures = counter.figures();
    // The final value, read by a separate (uncounted) reader.
    let shown_end = SplitCounter::new(kv, "bench", COUNTER_SPLIT_KEYS)
        .read()
        .await
        .value;
    // Every read fans out the same way, so scaling the sampled reads is exact.
    let kv_reads = u64::try_from(
        u128::from(figures.kv_reads) * u128::from(reads) / u128::from(reads_executed.max(1)),
    )
    .unwrap_or(u64::MAX);
    Ok(CounterRow {
        plan: "plan 1: 100 split keys",
        writes,
        reads,
        kv_writes: figures.kv_writes,
        kv_reads,
        reads_executed,
        max_lag,
        shown_end,
        wall_s,
    })
}

/// Plan 2: writes added locally on their writer instance, reads served from
/// their reader instance's cache, every instance ticking once per virtual second.
async fn bench_counter_plan2(writes: u64, duration_ms: u64) -> anyhow::Result<CounterRow> {
    let (clock, kv) = counter_kv();
    let switches = Arc::new(Switches::default());
    let config = LocalCounterConfig {
        name: "bench".to_owned(),
        interval_ms: COUNTER_INTERVAL_MS,
    };
    let instance = || LocalCounter::new(&config, kv.clone(), None, switches.clone());
    let writers: Vec<LocalCounter> = (0..COUNTER_WRITERS).map(|_| instance()).collect();
    let readers: Vec<LocalCounter> = (0..COUNTER_READERS).map(|_| instance()).collect();
    let reads = writes * COUNTER_READS_PER_WRITE;
    let reads_per_s = COUNTER_WRITES_PER_S * COUNTER_READS_PER_WRITE;
    let tick_all = |now_ms: u64| {
        let writers = &writers;
        let readers = &readers;
        async move {
            // Writers first, so a reader's refresh sees this second's flushes.
            for counter in writers.iter().chain(readers) {
                anyhow::ensure!(
                    counter.tick(now_ms).await.ran,
                    "a tick at {now_ms} was not due"
                );
            }
            Ok(())
        }
    };
    let started = Instant::now();
    let mut written = 0u64;
    let mut reads_executed = 0u64;
    let mut max_lag = 0u64;
    for ms in 0..duration_ms {
        let now_ms = BENCH_START_MS + ms;
        clock.set(now_ms);
        if ms % COUNTER_INTERVAL_MS == 0 {
            tick_all(now_ms).await?;
        }
        for j in arrivals_in(ms, COUNTER_WRITES_PER_S, writes) {
            writers[(j % COUNTER_WRITERS as u64) as usize].add(1);
            written += 1;
        }
        for k in arrivals_in(ms, reads_per_s, reads) {
            let shown = readers[(k % COUNTER_READERS as u64) as usize]
                .try_read()
                .context("a reader has no value after its first tick")?;
            let lag = i64::try_from(written).unwrap_or(i64::MAX) - shown;
            max_lag = max_lag.max(u64::try_from(lag).unwrap_or(0));
            reads_executed += 1;
        }
    }
    // The final tick: the next interval boundary after the last one in the run.
    let final_ms = (duration_ms.saturating_sub(1) / COUNTER_INTERVAL_MS + 1) * COUNTER_INTERVAL_MS;
    clock.set(BENCH_START_MS + final_ms);
    tick_all(BENCH_START_MS + final_ms).await?;
    let wall_s = started.elapsed().as_secs_f64();
    anyhow::ensure!(written == writes, "plan 2 wrote {written} of {writes}");
    anyhow::ensure!(
        reads_executed == reads,
        "plan 2 read {reads_executed} of {reads}"
    );
    let (mut kv_writes, mut kv_reads) = (0, 0);
    for counter in writers.iter().chain(&readers) {
        let figures = counter.figures();
        kv_writes += figures.kv_writes;
        kv_reads += figures.kv_reads;
    }
    let shown_end = readers[0]
        .try_read()
        .context("reader 0 has no value at the end")?;
    Ok(CounterRow {
        plan: "plan 2: local aggregation, 1 s",
        writes,
        reads,
        kv_writes,
        kv_reads,
        reads_executed,
        max_lag,
        shown_end,
        wall_s,
    })
}

/// Run both plans over `writes` counter writes arriving at 300k/s, with 6 reads
/// per write, over `COUNTER_WRITERS` writer and `COUNTER_READERS` reader instances.
pub async fn bench_counter(writes: u64) -> anyhow::Result<CounterBench> {
    anyhow::ensure!(writes > 0, "writes must be greater than 0");
    // Covers every arrival: the last write's and the last read's millisecond.
    let duration_ms = arrival_ms(writes - 1, COUNTER_WRITES_PER_S).max(arrival_ms(
        writes * COUNTER_READS_PER_WRITE - 1,
        COUNTER_WRITES_PER_S * COUNTER_READS_PER_WRITE,
    )) + 1;
    let rows = vec![
        bench_counter_plan1(writes, duration_ms).await?,
        bench_counter_plan2(writes, duration_ms).await?,
    ];
    Ok(CounterBench {
        writes,
        virtual_s: writes as f64 / COUNTER_WRITES_PER_S as f64,
        rows,
    })
}

/// The table printed by `redrain bench counter`.
pub fn render_counter(bench: &CounterBench) -> String {
    let plan2_ops = bench
        .rows
        .iter()
        .find(|r| r.plan.starts_with("plan 2"))
        .map_or(1, CounterRow::kv_ops)
        .max(1);
    let mut out = format!(
        "{} writes at {}/s, {} reads per write ({}/s), over {:.3} virtual s; {} writer and {} reader instances\n",
        bench.writes,
        COUNTER_WRITES_PER_S,
        COUNTER_READS_PER_WRITE,
        COUNTER_WRITES_PER_S * COUNTER_READS_PER_WRITE,
        bench.virtual_s,
        COUNTER_WRITERS,
        COUNTER_READERS
    );
    out.push_str(&format!(
        "{:<32} {:>12} {:>14} {:>14} {:>14} {:>10} {:>10} {:>10} {:>8}\n",
        "plan",
        "KV writes",
        "KV reads",
        "KV ops",
        "KV ops/vsec",
        "vs plan 2",
        "max lag",
        "end error",
        "wall s"
    ));
    for row in &bench.rows {
        let error = row.shown_end - i64::try_from(row.writes).unwrap_or(i64::MAX);
        out.push_str(&format!(
            "{:<32} {:>12} {:>14} {:>14} {:>14.0} {:>9.0}x {:>10} {:>10} {:>8.3}\n",
            row.plan,
            row.kv_writes,
            row.kv_reads,
            row.kv_ops(),
            row.kv_ops() as f64 / bench.virtual_s.max(1e-9),
            row.kv_ops() as f64 / plan2_ops as f64,
            row.max_lag,
            error,
            row.wall_s
        ));
    }
    out.push_str(&format!(
        "KV ops/vsec = KV ops per virtual second. Plan 1 reads: every {COUNTER_READ_SAMPLE}th read executed ({} of {}), each a {COUNTER_SPLIT_KEYS}-key fan-out; KV reads scaled to all reads.\n",
        bench.rows.first().map_or(0, |r| r.reads_executed),
        bench.rows.first().map_or(0, |r| r.reads),
    ));
    out.push_str(&format!(
        "Plan 2: every instance ticks once per virtual second (flush INCRBY if it has writes, then one GET), plus a final tick at the next boundary; all {} reads served locally.\n",
        bench.rows.get(1).map_or(0, |r| r.reads_executed),
    ));
    out.push_str("max lag = largest (writes so far - value read) over the executed reads; end error = value shown at the end - writes.\n");
    out
}
