//! Backend health shared by all workers, each piece one atomic word so a 429 or a failure
//! seen by one worker counts for all of them without a lock:
//!
//! - a **cool-down** deadline: set by a backend's own "come back later" (a 429, or a 5xx
//!   naming a retry time; see `upstream/cool_down.rs`);
//! - a **circuit breaker** (Envoy's outlier detection): failures in a row —
//!   [`OutlierDetection::consecutive_failures`] of them — eject the backend for
//!   `base_ejection_time` × the ejections in a row (at most `max_ejection_time`); when that
//!   time is up the breaker is half-open: one request — the probe — is let through, and its
//!   answer decides: a success closes the breaker, a failure ejects the backend again for
//!   longer. A probe that never reports (its client left) frees the slot after
//!   [`PROBE_STALE`].
//!
//! A backend is usable when it is neither cooling down nor ejected (half-open counts as
//! usable while no probe is in flight).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use crate::capacity::Capacity;
use crate::snapshot::OutlierDetection;

/// Cool-down used when a backend answers 429 without saying how long to wait.
pub const DEFAULT_COOL_DOWN: Duration = Duration::from_secs(5);

/// How long a half-open backend's probe holds the slot before another request may probe.
pub const PROBE_STALE: Duration = Duration::from_secs(30);

/// One backend's shared health. Times are milliseconds of [`crate::clock::now_millis`].
#[derive(Debug, Default)]
pub struct BackendHealth {
    cool_until_ms: AtomicU64,
    consecutive_failures: AtomicU32,
    cooldowns: AtomicU64,
    /// 0: the breaker is closed. Else the ejection's end: before it the backend is ejected,
    /// after it half-open until a probe decides.
    ejected_until_ms: AtomicU64,
    /// When the half-open probe in flight was let through (0: none).
    probe_since_ms: AtomicU64,
    /// Ejections in a row: the multiplier of the next ejection's length.
    ejections_in_a_row: AtomicU32,
    /// When the breaker last closed (0: never).
    restored_ms: AtomicU64,
    /// Ejections since the backend was configured.
    ejections: AtomicU64,
    /// What the backend last said it has left ([`Capacity`]).
    pub capacity: Capacity,
    /// Marked down by its active health check ([`crate::health_check`]).
    checked_down: AtomicBool,
}

impl BackendHealth {
    /// Whether the backend may be offered at `now_ms`: not cooling down, and its breaker
    /// closed or half-open with no probe in flight.
    pub fn is_usable(&self, now_ms: u64) -> bool {
        self.cool_until_ms.load(Ordering::Relaxed) <= now_ms
            && self.breaker_allows(now_ms)
            && !self.checked_down.load(Ordering::Relaxed)
    }

    /// Records the active health check's verdict; `true` when it changed the backend's
    /// state.
    pub fn set_checked_up(&self, up: bool) -> bool {
        self.checked_down.swap(!up, Ordering::Relaxed) == up
    }

    /// Whether its active health check has it down.
    pub fn is_checked_down(&self) -> bool {
        self.checked_down.load(Ordering::Relaxed)
    }

    fn breaker_allows(&self, now_ms: u64) -> bool {
        let until = self.ejected_until_ms.load(Ordering::Relaxed);
        until == 0 || (until <= now_ms && !self.probe_in_flight(now_ms))
    }

    fn probe_in_flight(&self, now_ms: u64) -> bool {
        let since = self.probe_since_ms.load(Ordering::Relaxed);
        since != 0 && now_ms.saturating_sub(since) < millis(PROBE_STALE)
    }

    /// When the backend is usable again (≤ `now_ms` when it is now): the later of its
    /// cool-down's and its ejection's end; a second from now while another request probes.
    pub fn usable_at(&self, now_ms: u64) -> u64 {
        let cool = self.cool_until_ms.load(Ordering::Relaxed);
        let ejected = self.ejected_until_ms.load(Ordering::Relaxed);
        let breaker = if ejected != 0 && ejected <= now_ms && self.probe_in_flight(now_ms) {
            now_ms + 1_000
        } else {
            ejected
        };
        // A backend its health check has down is back at a probe's success at the earliest:
        // a second from now stands for that.
        let checked = if self.is_checked_down() {
            now_ms + 1_000
        } else {
            0
        };
        cool.max(breaker).max(checked)
    }

    /// Called just before an attempt goes to the backend: `false` when it may not have it
    /// (ejected, or half-open with another request probing). A half-open backend's first
    /// caller becomes its probe, and must report with [`record_success`](Self::record_success),
    /// [`record_failure`](Self::record_failure) or [`release_probe`](Self::release_probe).
    pub fn admit(&self, now_ms: u64) -> bool {
        let until = self.ejected_until_ms.load(Ordering::Relaxed);
        if until == 0 {
            return true;
        }
        if until > now_ms {
            return false;
        }
        let since = self.probe_since_ms.load(Ordering::Relaxed);
        if since != 0 && now_ms.saturating_sub(since) < millis(PROBE_STALE) {
            return false;
        }
        self.probe_since_ms
            .compare_exchange(since, now_ms.max(1), Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    }

    /// Marks the backend unusable until `now_ms + duration`. A longer cool-down already in
    /// force is kept.
    pub fn cool_down(&self, now_ms: u64, duration: Duration) {
        let until = now_ms.saturating_add(millis(duration));
        self.cool_until_ms.fetch_max(until, Ordering::Relaxed);
        self.cooldowns.fetch_add(1, Ordering::Relaxed);
    }

    /// Cool-downs since the backend was configured (the `sluice_backend_cooldowns_total`
    /// metric; carried over by reloads with the rest of its health).
    pub fn cooldowns(&self) -> u64 {
        self.cooldowns.load(Ordering::Relaxed)
    }

    /// Records an answer that is not a failure (any status but 5xx): the failure streak
    /// ends, and a half-open breaker closes.
    pub fn record_success(&self, now_ms: u64) {
        if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
            self.consecutive_failures.store(0, Ordering::Relaxed);
        }
        let until = self.ejected_until_ms.load(Ordering::Relaxed);
        if until != 0
            && until <= now_ms
            && self
                .ejected_until_ms
                .compare_exchange(until, 0, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            self.probe_since_ms.store(0, Ordering::Relaxed);
            self.restored_ms.store(now_ms, Ordering::Relaxed);
            tracing::info!("backend's probe succeeded; it is back in its pools");
        }
    }

    /// Records a failure (a connect failure, a timeout, a broken answer, a 5xx) under
    /// `od`. A half-open backend's failed probe ejects it again, for longer; otherwise the
    /// failure that makes the streak `consecutive_failures` long ejects it if
    /// `may_eject()` (the pool's `max_ejected_percent` allows one more). Returns the
    /// ejection's length when this call ejected the backend.
    pub fn record_failure(
        &self,
        now_ms: u64,
        od: &OutlierDetection,
        may_eject: impl FnOnce() -> bool,
    ) -> Option<Duration> {
        let streak = self
            .consecutive_failures
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        let until = self.ejected_until_ms.load(Ordering::Relaxed);
        if until != 0 {
            // Ejected already, or half-open: only a probe's failure (after the end) counts.
            if until > now_ms {
                return None;
            }
            return self.eject(now_ms, until, od);
        }
        if streak >= od.consecutive_failures && may_eject() {
            return self.eject(now_ms, 0, od);
        }
        None
    }

    /// Ejects the backend if its ejection end still reads `from` (one worker wins a race).
    fn eject(&self, now_ms: u64, from: u64, od: &OutlierDetection) -> Option<Duration> {
        let restored = self.restored_ms.load(Ordering::Relaxed);
        let mut in_a_row = self.ejections_in_a_row.load(Ordering::Relaxed);
        // A backend that stayed healthy for a whole maximum ejection starts over.
        if from == 0
            && restored != 0
            && now_ms.saturating_sub(restored) > millis(od.max_ejection_time)
        {
            in_a_row = 0;
        }
        in_a_row = in_a_row.saturating_add(1);
        let length = od
            .base_ejection_time
            .saturating_mul(in_a_row)
            .min(od.max_ejection_time);
        let until = now_ms.saturating_add(millis(length)).max(1);
        self.ejected_until_ms
            .compare_exchange(from, until, Ordering::AcqRel, Ordering::Relaxed)
            .ok()?;
        self.ejections_in_a_row.store(in_a_row, Ordering::Relaxed);
        self.probe_since_ms.store(0, Ordering::Relaxed);
        self.consecutive_failures.store(0, Ordering::Relaxed);
        self.ejections.fetch_add(1, Ordering::Relaxed);
        Some(length)
    }

    /// A probe that ended without a verdict (its client left before the answer): the next
    /// request may probe.
    pub fn release_probe(&self) {
        self.probe_since_ms.store(0, Ordering::Relaxed);
    }

    /// Whether the breaker is open or half-open at `now_ms` (counts toward a pool's
    /// `max_ejected_percent`).
    pub fn is_ejected(&self) -> bool {
        self.ejected_until_ms.load(Ordering::Relaxed) != 0
    }

    /// Ejections since the backend was configured (`sluice_backend_ejections_total`).
    pub fn ejections(&self) -> u64 {
        self.ejections.load(Ordering::Relaxed)
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

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn od(n: u32) -> OutlierDetection {
        OutlierDetection {
            consecutive_failures: n,
            base_ejection_time: Duration::from_millis(1_000),
            max_ejection_time: Duration::from_millis(2_500),
            max_ejected_percent: 50,
        }
    }

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
        assert_eq!(h.usable_at(1_000), 3_000);
        assert_eq!(h.cooldowns(), 3);
    }

    #[test]
    fn a_streak_ejects_then_one_probe_decides() {
        let h = BackendHealth::default();
        let od = od(3);
        assert_eq!(h.record_failure(10, &od, || true), None);
        h.record_success(11);
        assert_eq!(h.consecutive_failures(), 0);
        for _ in 0..2 {
            assert_eq!(h.record_failure(20, &od, || true), None);
        }
        assert_eq!(
            h.record_failure(20, &od, || true),
            Some(Duration::from_secs(1))
        );
        assert!(h.is_ejected() && !h.is_usable(1_019) && !h.admit(1_019));
        assert_eq!(h.usable_at(500), 1_020);
        // Half-open: usable, and exactly one request becomes the probe.
        assert!(h.is_usable(1_020));
        assert!(h.admit(1_020));
        assert!(!h.admit(1_021) && !h.is_usable(1_021));
        // The probe fails: ejected again, twice as long.
        assert_eq!(
            h.record_failure(1_100, &od, || false),
            Some(Duration::from_secs(2))
        );
        assert!(!h.is_usable(3_099) && h.is_usable(3_100));
        assert!(h.admit(3_100));
        // A success closes it.
        h.record_success(3_200);
        assert!(!h.is_ejected() && h.is_usable(3_200) && h.admit(3_200));
        assert_eq!(h.ejections(), 2);
        // The next streak's ejection is longer still (capped), unless it stayed healthy long.
        for _ in 0..3 {
            h.record_failure(4_000, &od, || true);
        }
        assert!(!h.is_usable(4_000 + 2_499) && h.is_usable(4_000 + 2_500));
    }

    #[test]
    fn the_pool_bound_and_long_health_reset_the_multiplier() {
        let h = BackendHealth::default();
        let od = od(1);
        assert_eq!(
            h.record_failure(0, &od, || false),
            None,
            "the pool bound keeps it in"
        );
        assert!(h.is_usable(0));
        assert!(h.record_failure(0, &od, || true).is_some());
        assert!(h.admit(1_000));
        h.record_success(1_000);
        // Healthy for longer than max_ejection_time: the multiplier starts over.
        assert_eq!(
            h.record_failure(10_000, &od, || true),
            Some(Duration::from_secs(1))
        );
    }

    #[test]
    fn a_probe_that_never_reports_frees_the_slot() {
        let h = BackendHealth::default();
        let od = od(1);
        h.record_failure(0, &od, || true);
        assert!(h.admit(1_000));
        assert!(!h.admit(1_001));
        assert!(h.admit(1_000 + millis(PROBE_STALE)));
        h.release_probe();
        assert!(h.is_usable(1_000 + millis(PROBE_STALE)));
    }
}
