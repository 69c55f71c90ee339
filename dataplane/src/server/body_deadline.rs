//! When a request body must have arrived: a total deadline from the end of the head
//! (`server.timeouts.body_read`) and a least average rate after a grace period
//! (`server.limits.min_body_rate`, `server.timeouts.body_rate_grace`), in the manner of
//! Apache mod_reqtimeout's `body=…,MinRate=…`.
//!
//! Pure arithmetic on [`Instant`]s: the connection asks it, before each read of the body, how
//! long that read may wait given how many bytes have arrived so far. A read never restarts the
//! clock, so a client trickling one byte at a time cannot hold a connection past the deadline.

use std::time::{Duration, Instant};

/// The deadline of one request body.
#[derive(Debug, Clone, Copy)]
pub(super) struct BodyDeadline {
    /// `start + body_read`: no body may take longer.
    total: Instant,
    /// `start + grace`: the rate counts only after it.
    grace: Instant,
    /// Least average bytes per second; 0: no rate check.
    min_rate: u64,
}

impl BodyDeadline {
    /// A body that starts at `start`, bounded by `body_read` in total and, after `grace`, by
    /// an average of at least `min_rate` bytes per second (0: no rate check).
    pub(super) fn new(start: Instant, body_read: Duration, grace: Duration, min_rate: u64) -> Self {
        Self {
            total: start + body_read,
            grace: start + grace,
            min_rate,
        }
    }

    /// When the body is due given that `received` bytes of it (as sent, framing included)
    /// have arrived: `min(start + body_read, start + grace + received / min_rate)`. Each byte
    /// buys `1 / min_rate` s more, so a client keeping the average rate is never cut before
    /// `body_read`.
    pub(super) fn due(&self, received: u64) -> Instant {
        if self.min_rate == 0 {
            return self.total;
        }
        let earned_nanos = u128::from(received) * 1_000_000_000 / u128::from(self.min_rate);
        let earned = Duration::from_nanos(u64::try_from(earned_nanos).unwrap_or(u64::MAX));
        match self.grace.checked_add(earned) {
            Some(by_rate) => by_rate.min(self.total),
            None => self.total,
        }
    }

    /// How long the next read may wait at `now`, with `received` bytes arrived; `None` once
    /// the body is due.
    pub(super) fn left(&self, now: Instant, received: u64) -> Option<Duration> {
        let left = self.due(received).saturating_duration_since(now);
        (!left.is_zero()).then_some(left)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn without_a_rate_the_body_read_bounds_the_whole_body() {
        let t0 = Instant::now();
        let d = BodyDeadline::new(t0, 30 * S, 5 * S, 0);
        assert_eq!(d.due(0), t0 + 30 * S);
        assert_eq!(d.due(u64::MAX), t0 + 30 * S);
        // Reads do not restart it: 29 s in, one second is left whatever arrived.
        assert_eq!(d.left(t0 + 29 * S, 1_000_000), Some(S));
        assert_eq!(d.left(t0 + 30 * S, 1_000_000), None);
        assert_eq!(d.left(t0 + 31 * S, 1_000_000), None);
    }

    #[test]
    fn the_rate_earns_time_after_the_grace_period() {
        let t0 = Instant::now();
        let d = BodyDeadline::new(t0, 30 * S, 5 * S, 1024);
        // Nothing arrived: due when the grace period ends.
        assert_eq!(d.due(0), t0 + 5 * S);
        // Each 1024 bytes buys one more second.
        assert_eq!(d.due(1024), t0 + 6 * S);
        assert_eq!(d.due(512), t0 + 5 * S + S / 2);
        assert_eq!(d.due(10 * 1024), t0 + 15 * S);
        // Never past body_read, however fast it came.
        assert_eq!(d.due(1 << 30), t0 + 30 * S);
        assert_eq!(d.due(u64::MAX), t0 + 30 * S);
        // A trickle of 10 bytes a second for 6 s: 60 bytes earn 58 ms, so it is cut.
        assert_eq!(d.left(t0 + 6 * S, 60), None);
        // A client keeping 2 KiB/s is never due before body_read.
        for secs in 1..30 {
            let now = t0 + secs * S;
            assert!(d.left(now, u64::from(secs) * 2048).is_some(), "{secs} s");
        }
    }

    #[test]
    fn a_grace_longer_than_body_read_leaves_only_body_read() {
        let t0 = Instant::now();
        let d = BodyDeadline::new(t0, 2 * S, 10 * S, 1 << 20);
        assert_eq!(d.due(0), t0 + 2 * S);
        assert_eq!(d.left(t0, 0), Some(2 * S));
    }
}
