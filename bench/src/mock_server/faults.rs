//! The fault knobs: per request, whether the mock answers, throttles (429), fails (5xx) or
//! resets the connection, how much a slow start adds, and the one-off stall window.
//!
//! Pure: the worker's [`Rng`] draws, the caller sleeps.

use std::time::{Duration, Instant};

use super::dist::{Dist, Rng};
use super::MockConfig;

/// What to do with one request, drawn by [`Faults::verdict`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Answer it (from `sluice::mock::reply`).
    Answer,
    /// Answer 429 in Azure's shape.
    Throttle,
    /// Answer the configured 5xx in OpenAI's error shape.
    ServerError,
    /// Reset the connection instead of answering.
    Reset,
}

/// The fault settings of a running mock.
#[derive(Debug, Clone)]
pub struct Faults {
    rate_429: f64,
    rate_5xx: f64,
    rate_reset: f64,
    rate_slow: f64,
    slow_first_byte: Dist,
    /// `[start, end)`: answers due in it wait until `end`.
    stall: Option<(Instant, Instant)>,
}

impl Faults {
    /// The faults of `cfg`, with the stall window counted from `start`.
    pub fn new(cfg: &MockConfig, start: Instant) -> Self {
        let stall = match (cfg.stall_after, cfg.stall_for) {
            (Some(after), Some(length)) if !length.is_zero() => {
                Some((start + after, start + after + length))
            }
            _ => None,
        };
        Faults {
            rate_429: cfg.rate_429,
            rate_5xx: cfg.rate_5xx,
            rate_reset: cfg.rate_reset,
            rate_slow: cfg.rate_slow,
            slow_first_byte: cfg.slow_first_byte,
            stall,
        }
    }

    /// Whether any request may be reset (connections then keep a handle to set SO_LINGER).
    pub fn may_reset(&self) -> bool {
        self.rate_reset > 0.0
    }

    /// Draws the fate of one request: reset first, then 429, then 5xx, each with its own
    /// share of what is left. A zero share draws nothing, so enabling one knob does not shift
    /// another's sequence.
    pub fn verdict(&self, rng: &mut Rng) -> Verdict {
        if rng.chance(self.rate_reset) {
            Verdict::Reset
        } else if rng.chance(self.rate_429) {
            Verdict::Throttle
        } else if rng.chance(self.rate_5xx) {
            Verdict::ServerError
        } else {
            Verdict::Answer
        }
    }

    /// The slow start of one answer: a `slow_first_byte` sample for a `rate_slow` share of
    /// answers, zero for the rest.
    pub fn slow_start(&self, rng: &mut Rng) -> Duration {
        if rng.chance(self.rate_slow) {
            self.slow_first_byte.sample(rng)
        } else {
            Duration::ZERO
        }
    }

    /// When bytes due at `now` fall in the stall window, the instant they may go out.
    pub fn stalled_until(&self, now: Instant) -> Option<Instant> {
        self.stall
            .filter(|&(from, until)| now >= from && now < until)
            .map(|(_, until)| until)
    }

    /// Whether a stall window is configured at all (saves reading the clock otherwise).
    pub fn has_stall(&self) -> bool {
        self.stall.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn faults(edit: impl FnOnce(&mut MockConfig)) -> Faults {
        let mut cfg = MockConfig::default();
        edit(&mut cfg);
        Faults::new(&cfg, Instant::now())
    }

    #[test]
    fn full_shares_always_apply_in_order() {
        let mut rng = Rng::new(1, 0);
        let f = faults(|c| c.rate_429 = 1.0);
        assert!((0..50).all(|_| f.verdict(&mut rng) == Verdict::Throttle));
        let f = faults(|c| {
            c.rate_429 = 1.0;
            c.rate_reset = 1.0;
        });
        assert_eq!(f.verdict(&mut rng), Verdict::Reset);
        let f = faults(|_| {});
        assert!((0..50).all(|_| f.verdict(&mut rng) == Verdict::Answer));
    }

    #[test]
    fn stall_window_holds_what_falls_in_it() {
        let start = Instant::now();
        let mut cfg = MockConfig {
            stall_after: Some(Duration::from_millis(100)),
            stall_for: Some(Duration::from_millis(50)),
            ..MockConfig::default()
        };
        let f = Faults::new(&cfg, start);
        let end = start + Duration::from_millis(150);
        assert_eq!(f.stalled_until(start), None);
        assert_eq!(
            f.stalled_until(start + Duration::from_millis(100)),
            Some(end)
        );
        assert_eq!(
            f.stalled_until(start + Duration::from_millis(149)),
            Some(end)
        );
        assert_eq!(f.stalled_until(end), None);
        cfg.stall_for = None;
        assert!(!Faults::new(&cfg, start).has_stall());
    }

    #[test]
    fn slow_start_samples_only_its_share() {
        let mut rng = Rng::new(3, 0);
        let f = faults(|c| {
            c.rate_slow = 1.0;
            c.slow_first_byte = Dist::Fixed(Duration::from_millis(5));
        });
        assert_eq!(f.slow_start(&mut rng), Duration::from_millis(5));
        let f = faults(|c| c.slow_first_byte = Dist::Fixed(Duration::from_millis(5)));
        assert_eq!(f.slow_start(&mut rng), Duration::ZERO);
    }
}
