//! Time for the limiter, injected: every decision takes `now` from a [`Clock`], so tests drive
//! a [`FakeClock`] instead of sleeping, and the server reads [`SystemClock`].
//!
//! Two time bases: monotonic nanoseconds (rates: never jumps, counts from an arbitrary
//! origin) and wall-clock Unix seconds (quotas: their windows are UTC calendar hours, days
//! and months, so they need the calendar, not an uptime).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::time::{clock_getres, clock_gettime, ClockId};

/// A source of the current time. Implementations must be monotonic in `now_nanos`.
pub trait Clock {
    /// Monotonic nanoseconds since an arbitrary origin fixed for the process.
    fn now_nanos(&self) -> u64;
    /// Wall-clock seconds since the Unix epoch (UTC), for quota windows.
    fn unix_secs(&self) -> u64;
}

impl<C: Clock + ?Sized> Clock for &C {
    fn now_nanos(&self) -> u64 {
        (**self).now_nanos()
    }
    fn unix_secs(&self) -> u64 {
        (**self).unix_secs()
    }
}

impl<C: Clock + ?Sized> Clock for std::sync::Arc<C> {
    fn now_nanos(&self) -> u64 {
        (**self).now_nanos()
    }
    fn unix_secs(&self) -> u64 {
        (**self).unix_secs()
    }
}

/// The real clock: `CLOCK_MONOTONIC_COARSE` and `CLOCK_REALTIME_COARSE`.
///
/// Read through libc (`nix`), whose `clock_gettime` finds the vDSO the way valgrind expects
/// (rustix's own vDSO lookup kills the process under valgrind). The coarse clocks are read
/// from the vDSO without a timer read (a few ns, against ~25 ns
/// for `Instant::now()` on a VM here) and advance once per kernel tick: their resolution is
/// 1–4 ms (`clock_getres`, see [`SystemClock::resolution`]). A limiter reads time in those
/// steps; that changes when tokens appear, never how many, so the admission bounds hold.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl SystemClock {
    /// The monotonic clock's resolution (one kernel tick on Linux).
    pub fn resolution() -> Duration {
        clock_getres(ClockId::CLOCK_MONOTONIC_COARSE).map_or(Duration::from_millis(1), |ts| {
            timespec_duration(ts.tv_sec(), ts.tv_nsec())
        })
    }
}

/// Nanoseconds on `Instant`'s clock since its first read in this process.
fn fallback_nanos() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

fn timespec_duration(secs: i64, nanos: i64) -> Duration {
    let secs = u64::try_from(secs).unwrap_or(0);
    let nanos = u32::try_from(nanos).unwrap_or(0);
    Duration::new(secs, nanos.min(999_999_999))
}

impl Clock for SystemClock {
    fn now_nanos(&self) -> u64 {
        match clock_gettime(ClockId::CLOCK_MONOTONIC_COARSE) {
            Ok(ts) => u64::try_from(ts.tv_sec())
                .unwrap_or(0)
                .saturating_mul(1_000_000_000)
                .saturating_add(u64::try_from(ts.tv_nsec()).unwrap_or(0)),
            // Only a kernel without the coarse clock (before 2.6.32) refuses it, and then
            // every call does: the process keeps to one clock either way.
            Err(_) => fallback_nanos(),
        }
    }

    fn unix_secs(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }
}

/// A clock that moves only when told to. Shared between threads (`Sync`), so a test can
/// advance time under many workers at once.
#[derive(Debug, Default)]
pub struct FakeClock {
    nanos: AtomicU64,
    unix_start: u64,
}

impl FakeClock {
    /// A clock at monotonic time 0 whose wall clock reads `unix_secs` (UTC) at that moment.
    pub fn new(unix_secs: u64) -> Self {
        Self {
            nanos: AtomicU64::new(0),
            unix_start: unix_secs,
        }
    }

    /// Moves both time bases forward by `by`.
    pub fn advance(&self, by: Duration) {
        let by = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        self.nanos.fetch_add(by, Ordering::Relaxed);
    }

    /// Moves both time bases forward by `nanos` nanoseconds.
    pub fn advance_nanos(&self, nanos: u64) {
        self.nanos.fetch_add(nanos, Ordering::Relaxed);
    }
}

impl Clock for FakeClock {
    fn now_nanos(&self) -> u64 {
        self.nanos.load(Ordering::Relaxed)
    }

    fn unix_secs(&self) -> u64 {
        self.unix_start + self.now_nanos() / 1_000_000_000
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_clock_is_monotonic_and_coarse() {
        let a = SystemClock.now_nanos();
        let b = SystemClock.now_nanos();
        assert!(b >= a);
        assert!(SystemClock.unix_secs() > 1_600_000_000);
        assert!(SystemClock::resolution() <= Duration::from_millis(20));
    }

    #[test]
    fn fake_clock_moves_only_when_told() {
        let c = FakeClock::new(1_700_000_000);
        assert_eq!(c.now_nanos(), 0);
        c.advance(Duration::from_millis(1500));
        assert_eq!(c.now_nanos(), 1_500_000_000);
        assert_eq!(c.unix_secs(), 1_700_000_001);
    }
}
