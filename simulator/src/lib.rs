//! The redrain simulator: scenarios, the deterministic workload, the runner that
//! drives the reference wallet in virtual time, the invariant checkers, and the
//! benchmarks behind the `redrain` CLI.
//!
//! Everything here that must replay takes its randomness from a seeded, named RNG
//! and its time from the scenario; nothing reads `thread_rng` or the wall clock
//! except the progress bar and the benchmark timers.

pub mod bench;
pub mod check;
pub mod engine;
pub mod history;
pub mod live;
pub mod options;
pub mod plan;
pub mod record;
pub mod scenario;
pub mod stores;
pub mod suite;
pub mod trace;
