//! Time, injected: the ledger, leases, writers and recovery read the engine's [`Clock`], so a
//! test can move time forward (a lease lapsing, a run going stale) without sleeping.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A source of wall-clock time, in milliseconds since the Unix epoch.
pub trait Clock: Send + Sync + fmt::Debug {
    /// Now, in milliseconds since the Unix epoch.
    fn now_ms(&self) -> i64;
}

/// A shared clock handle, as the engine hands it to every layer.
pub type ClockRef = Arc<dyn Clock>;

/// The system's clock: what every engine uses unless built with another.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
    }
}

/// The system clock as a [`ClockRef`].
pub fn system() -> ClockRef {
    Arc::new(SystemClock)
}

/// A clock that follows the system clock, shifted by however far a test has moved it on with
/// [`TestClock::advance`]: time still passes, and a lease can be made to lapse at once.
#[derive(Debug, Clone, Default)]
pub struct TestClock {
    offset_ms: Arc<AtomicI64>,
}

impl TestClock {
    /// A clock at the system's time.
    pub fn new() -> Self {
        Self::default()
    }

    /// Moves the clock on by `by` (for this clock and every clone of it).
    pub fn advance(&self, by: Duration) {
        self.offset_ms.fetch_add(by.as_millis() as i64, Ordering::SeqCst);
    }
}

impl Clock for TestClock {
    fn now_ms(&self) -> i64 {
        SystemClock.now_ms() + self.offset_ms.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_test_clock_moves_on_when_told() {
        let clock = TestClock::new();
        let before = clock.now_ms();
        clock.clone().advance(Duration::from_secs(60));
        assert!(clock.now_ms() - before >= 60_000);
    }
}
