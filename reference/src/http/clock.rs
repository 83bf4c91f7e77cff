//! The server's clock: the wall clock, shifted so a load or a conformance run
//! can put the wallet at the start of its trace. This is the one place in the
//! reference that reads the wall clock; the core still only sees [`Clock`].

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::clock::{Clock, Millis};

/// Wall time plus an offset, never going backwards; or, frozen, one fixed
/// millisecond until it is moved again (so a conformance case can put a request
/// on a window's exact first or last millisecond).
#[derive(Debug)]
pub struct ShiftedClock {
    /// Virtual minus wall, in ms.
    offset_ms: AtomicI64,
    /// The latest time handed out: a wall clock stepped back by NTP must not
    /// move the wallet's time back.
    last_ms: AtomicU64,
    /// The time it stands at while frozen; `NOT_FROZEN` when it runs.
    frozen_ms: AtomicU64,
}

const NOT_FROZEN: u64 = u64::MAX;

impl Default for ShiftedClock {
    fn default() -> Self {
        ShiftedClock {
            offset_ms: AtomicI64::new(0),
            last_ms: AtomicU64::new(0),
            frozen_ms: AtomicU64::new(NOT_FROZEN),
        }
    }
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
        self.frozen_ms.store(NOT_FROZEN, Ordering::SeqCst);
        Ok(self.now_ms())
    }

    /// Move to `now_ms` and stand still there until the next move (refused,
    /// like [`Self::jump_to`], when it would go back).
    pub fn freeze_at(&self, now_ms: Millis) -> Result<Millis, Millis> {
        let current = self.now_ms();
        if now_ms < current || now_ms == NOT_FROZEN {
            return Err(current);
        }
        self.frozen_ms.store(now_ms, Ordering::SeqCst);
        self.last_ms.fetch_max(now_ms, Ordering::SeqCst);
        self.offset_ms
            .store(now_ms as i64 - wall_ms(), Ordering::SeqCst);
        Ok(now_ms)
    }

    /// Whether it stands still.
    pub fn is_frozen(&self) -> bool {
        self.frozen_ms.load(Ordering::SeqCst) != NOT_FROZEN
    }
}

impl Clock for ShiftedClock {
    fn now_ms(&self) -> Millis {
        let frozen = self.frozen_ms.load(Ordering::SeqCst);
        if frozen != NOT_FROZEN {
            return frozen;
        }
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

    #[test]
    fn frozen_it_stands_on_one_millisecond_until_moved() {
        let clock = ShiftedClock::starting_at(1_000_000);
        assert_eq!(clock.freeze_at(2_000_000), Ok(2_000_000));
        assert!(clock.is_frozen());
        std::thread::sleep(std::time::Duration::from_millis(5));
        assert_eq!(clock.now_ms(), 2_000_000);
        assert!(clock.freeze_at(1_999_999).is_err(), "never back");
        assert_eq!(
            clock.freeze_at(2_000_000),
            Ok(2_000_000),
            "the same ms again"
        );
        assert!(clock.jump_to(2_000_001).is_ok());
        assert!(!clock.is_frozen());
        std::thread::sleep(std::time::Duration::from_millis(5));
        assert!(clock.now_ms() > 2_000_001, "it runs again");
        assert!(clock.freeze_at(u64::MAX).is_err());
    }
}
