//! The server's clock: the wall clock, shifted so a load or a conformance run
//! can put the wallet at the start of its trace. This is the one place in the
//! reference that reads the wall clock; the core still only sees [`Clock`].

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::clock::{Clock, Millis};

/// Wall time plus an offset, never going backwards.
#[derive(Debug, Default)]
pub struct ShiftedClock {
    /// Virtual minus wall, in ms.
    offset_ms: AtomicI64,
    /// The latest time handed out: a wall clock stepped back by NTP must not
    /// move the wallet's time back.
    last_ms: AtomicU64,
}

fn wall_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl ShiftedClock {
    /// The wall clock as it is.
    pub fn wall() -> Self {
        Self::default()
    }

    /// A clock that reads `now_ms` now and runs on at the wall's pace.
    pub fn starting_at(now_ms: Millis) -> Self {
        let clock = Self::default();
        clock
            .offset_ms
            .store(now_ms as i64 - wall_ms(), Ordering::SeqCst);
        clock
    }

    /// Move to `now_ms` and run on from there. Refused when it would go back
    /// (the wallet dates entries and windows by this clock): returns the time
    /// it stands at instead.
    pub fn jump_to(&self, now_ms: Millis) -> Result<Millis, Millis> {
        let current = self.now_ms();
        if now_ms < current {
            return Err(current);
        }
        self.offset_ms
            .store(now_ms as i64 - wall_ms(), Ordering::SeqCst);
        Ok(self.now_ms())
    }
}

impl Clock for ShiftedClock {
    fn now_ms(&self) -> Millis {
        let shifted = (wall_ms() + self.offset_ms.load(Ordering::SeqCst)).max(0) as u64;
        let previous = self.last_ms.fetch_max(shifted, Ordering::SeqCst);
        previous.max(shifted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jumps_forward_only() {
        let clock = ShiftedClock::starting_at(1_000_000);
        let now = clock.now_ms();
        assert!((1_000_000..1_001_000).contains(&now), "{now}");
        assert!(clock.jump_to(5_000_000).is_ok());
        assert!(clock.now_ms() >= 5_000_000);
        assert!(clock.jump_to(10).is_err());
        assert!(clock.now_ms() >= 5_000_000);
    }
}
