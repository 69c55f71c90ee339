//! Backend health shared by all workers: a cool-down deadline and a failure count, each one
//! atomic word, so a 429 or a refused connection seen by one worker cools the backend for
//! all of them without a lock.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

/// Cool-down used when a backend fails without saying how long to wait.
pub const DEFAULT_COOL_DOWN: Duration = Duration::from_secs(5);

/// One backend's shared health. Times are milliseconds of [`crate::clock::now_millis`].
#[derive(Debug, Default)]
pub struct BackendHealth {
    cool_until_ms: AtomicU64,
    consecutive_failures: AtomicU32,
    cooldowns: AtomicU64,
}

impl BackendHealth {
    /// Whether the backend may be picked at `now_ms` (it is not cooling down).
    pub fn is_usable(&self, now_ms: u64) -> bool {
        self.cool_until_ms.load(Ordering::Relaxed) <= now_ms
    }

    /// Marks the backend unusable until `now_ms + duration`. A longer cool-down already in
    /// force is kept.
    pub fn cool_down(&self, now_ms: u64, duration: Duration) {
        let until = now_ms.saturating_add(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX));
        self.cool_until_ms.fetch_max(until, Ordering::Relaxed);
        self.consecutive_failures.fetch_add(1, Ordering::Relaxed);
        self.cooldowns.fetch_add(1, Ordering::Relaxed);
    }

    /// Cool-downs since the backend was configured (the `sluice_backend_cooldowns_total`
    /// metric; carried over by reloads with the rest of its health).
    pub fn cooldowns(&self) -> u64 {
        self.cooldowns.load(Ordering::Relaxed)
    }

    /// Records a success: the failure streak ends.
    pub fn record_success(&self) {
        if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
            self.consecutive_failures.store(0, Ordering::Relaxed);
        }
    }

    /// Failures since the last success.
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures.load(Ordering::Relaxed)
    }

    /// When the current cool-down ends (0 when none was ever set).
    pub fn cool_until_ms(&self) -> u64 {
        self.cool_until_ms.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cool_down_blocks_until_deadline_and_keeps_the_longer_one() {
        let h = BackendHealth::default();
        assert!(h.is_usable(0));
        h.cool_down(1_000, Duration::from_millis(500));
        assert!(!h.is_usable(1_499));
        assert!(h.is_usable(1_500));
        h.cool_down(1_000, Duration::from_millis(2_000));
        h.cool_down(1_000, Duration::from_millis(100));
        assert!(!h.is_usable(2_999));
        assert!(h.is_usable(3_000));
        assert_eq!(h.consecutive_failures(), 3);
        h.record_success();
        assert_eq!(h.consecutive_failures(), 0);
    }
}
