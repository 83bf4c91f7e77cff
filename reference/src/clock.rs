//! Injected time. The core asks a [`Clock`] for `now`; the simulator moves a
//! [`ManualClock`] in virtual time, a server would wrap the system clock in its shell.
//! Nothing in this module reads the wall clock.

use std::fmt::Debug;
use std::sync::atomic::{AtomicU64, Ordering};

/// Milliseconds since the Unix epoch (UTC).
pub type Millis = u64;

/// The one source of `now` for reference components.
pub trait Clock: Send + Sync + Debug {
    /// The current time in milliseconds since the Unix epoch.
    fn now_ms(&self) -> Millis;
}

/// A clock that only moves when told to: virtual time for the simulator and tests.
#[derive(Debug, Default)]
pub struct ManualClock {
    now_ms: AtomicU64,
}

impl ManualClock {
    /// A clock standing at `start_ms`.
    pub fn new(start_ms: Millis) -> Self {
        Self {
            now_ms: AtomicU64::new(start_ms),
        }
    }

    /// Move to `now_ms`. Time never goes backwards: that would be a bug in the driver.
    pub fn set(&self, now_ms: Millis) {
        let before = self.now_ms.swap(now_ms, Ordering::SeqCst);
        assert!(
            now_ms >= before,
            "virtual time went backwards: {before} -> {now_ms}"
        );
    }

    /// Move forward by `delta_ms`.
    pub fn advance(&self, delta_ms: u64) {
        self.now_ms.fetch_add(delta_ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> Millis {
        self.now_ms.load(Ordering::SeqCst)
    }
}
