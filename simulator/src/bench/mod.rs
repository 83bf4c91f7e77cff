//! `redrain bench …`: every benchmark, one file per subcommand, each measuring
//! its paths side by side in one run (the machines are shared and noisy, so
//! ratios beat absolute times) and printing its figures. This module holds what
//! the ledger and token benches share (their tree, orders and row).

pub mod counter;
pub mod coupons;
pub mod http;
pub mod kv;
pub mod ledger;
pub mod sim;
pub mod tokens;

use reference::order_no::{AwardType, OrderNo};

pub(super) const BENCH_TREE: &str = r#"
[[activity]]
id = 1
name = "bench"
per_txn_cap_cents = 100000
[[activity.child]]
id = 1
stage = "formal"
start = 2027-01-01T00:00:00Z
end = 2028-01-01T00:00:00Z
budget_cents = 9000000000000
[[activity.scene]]
id = 1
award_type = "cash"
bill_text = "bench"
award_ids = [1]
[[activity.scene]]
id = 2
award_type = "cash"
bill_text = "bench tokens"
crediting = "token"
award_ids = [1]
[[activity.cash]]
award_id = 1
max_cents = 100000
"#;
pub(super) const BENCH_START_MS: u64 = 1_798_761_600_000; // 2027-01-01T00:00:00Z
/// Users credits are spread over.
pub(super) const BENCH_USERS: u64 = 10_000;
/// Each measurement runs at least this long (fast backends do more credits), so a
/// figure is never a few milliseconds of noise.
pub(super) const MEASURE_S_MIN: f64 = 1.0;
/// And at most this many times the requested credits.
pub(super) const CREDITS_SCALE_MAX: u64 = 1000;

/// Whether a measurement that has done `done` credits in `elapsed_s` should go on.
pub(super) fn keep_going(done: u64, credits: u64, elapsed_s: f64) -> bool {
    done < credits
        || (elapsed_s < MEASURE_S_MIN && done < credits.saturating_mul(CREDITS_SCALE_MAX))
}

/// One measured line.
#[derive(Debug, Clone)]
pub struct BenchRow {
    /// Ledger URL, shown without temp paths.
    pub backend: String,
    /// What was timed.
    pub path: &'static str,
    /// Credits done.
    pub credits: u64,
    /// Wall seconds.
    pub elapsed_s: f64,
}

impl BenchRow {
    /// Credits per second.
    pub fn per_s(&self) -> f64 {
        self.credits as f64 / self.elapsed_s.max(1e-9)
    }
}

pub(super) fn order(i: u64) -> OrderNo {
    order_in(1, i)
}

pub(super) fn order_in(scene_id: u32, i: u64) -> OrderNo {
    OrderNo {
        act_id: i % BENCH_USERS + 1,
        scene_id,
        rain_id: u32::try_from(i / BENCH_USERS).unwrap_or(u32::MAX),
        award_type: AwardType::Cash,
        stage: 0,
    }
}
