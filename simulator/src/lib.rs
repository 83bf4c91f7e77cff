//! The redrain simulator: scenarios, the deterministic workload, the runner that
//! drives the reference wallet in virtual time, the invariant checkers, and the
//! benchmarks behind the `redrain` CLI.
//!
//! Everything here that must replay takes its randomness from a seeded, named RNG
//! and its time from the scenario; nothing reads `thread_rng` or the wall clock
//! except the progress bar and the benchmark timers.

pub mod bench;
pub mod bench_kv;
pub mod bench_sim;
pub mod capacity;
pub mod check;
pub mod history;
pub mod live;
pub mod meter;
pub mod plan;
pub mod report_files;
pub mod run;
pub mod scenario;
pub mod serve;
pub mod strategy;
pub mod suite;
pub mod trace;
