//! Capacity-aware selection: what a backend last said it has left.
//!
//! Azure OpenAI and OpenAI put their rate-limit state on every answer —
//! `x-ratelimit-remaining-tokens` / `x-ratelimit-remaining-requests`, and (OpenAI, newer
//! Azure API versions) `x-ratelimit-reset-tokens` / `x-ratelimit-reset-requests`, Go-style
//! durations until the window is full again. Sluice remembers the last figures per backend
//! (shared by all workers, one atomic word each) and takes each request it sends off them,
//! so a backend that cannot take a request's token estimate (its admission reservation:
//! prompt estimate plus completion cap, as Azure counts it) is skipped for that request
//! *before* it answers 429 — the request goes to a member that can, or, when none can, is
//! answered 429 at once. A figure counts until its reset time (at most [`LONGEST_FIGURE`]),
//! or for [`UNDATED_FOR`] when the backend sent none; backends that send no figures are
//! picked by plain round robin.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// How long a remaining figure without a reset header counts (Azure evaluates its limits
/// over 1 s and 10 s windows).
pub const UNDATED_FOR: Duration = Duration::from_secs(1);

/// The longest a figure counts, whatever reset it names: the limits these headers describe
/// are per minute, so a backend naming a reset years away is asked again within a minute
/// rather than taken out of its pools on its word.
pub const LONGEST_FIGURE: Duration = Duration::from_secs(60);

/// What one answer said about the backend's capacity.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Observed {
    /// `x-ratelimit-remaining-tokens`.
    pub tokens: Option<u64>,
    /// `x-ratelimit-reset-tokens`.
    pub tokens_reset: Option<Duration>,
    /// `x-ratelimit-remaining-requests`.
    pub requests: Option<u64>,
    /// `x-ratelimit-reset-requests`.
    pub requests_reset: Option<Duration>,
}

impl Observed {
    /// Reads the four headers through `header` (a case-insensitive lookup). Values that do
    /// not parse (or Azure's `-1`) count as not sent.
    pub fn from_headers<'h>(header: impl Fn(&str) -> Option<&'h str>) -> Self {
        let count = |name| header(name).and_then(|v: &str| v.trim().parse::<u64>().ok());
        let reset = |name| header(name).and_then(|v: &str| crate::upstream::go_duration(v.trim()));
        Self {
            tokens: count("x-ratelimit-remaining-tokens"),
            tokens_reset: reset("x-ratelimit-reset-tokens"),
            requests: count("x-ratelimit-remaining-requests"),
            requests_reset: reset("x-ratelimit-reset-requests"),
        }
    }

    /// Whether the answer said anything.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_none() && self.requests.is_none()
    }
}

/// One remaining figure and until when it counts (ms of [`crate::clock::now_millis`]; 0:
/// no figure).
#[derive(Debug, Default)]
struct Figure {
    remaining: AtomicU64,
    until_ms: AtomicU64,
}

impl Figure {
    fn set(&self, now_ms: u64, remaining: Option<u64>, reset: Option<Duration>) {
        let Some(remaining) = remaining else { return };
        let valid = reset.unwrap_or(UNDATED_FOR).min(LONGEST_FIGURE);
        self.remaining.store(remaining, Ordering::Relaxed);
        let until = now_ms.saturating_add(u64::try_from(valid.as_millis()).unwrap_or(u64::MAX));
        self.until_ms
            .store(until.max(now_ms + 1), Ordering::Release);
    }

    /// The remaining figure in force at `now_ms`, if any.
    fn get(&self, now_ms: u64) -> Option<u64> {
        (self.until_ms.load(Ordering::Acquire) > now_ms)
            .then(|| self.remaining.load(Ordering::Relaxed))
    }

    fn take(&self, now_ms: u64, n: u64) {
        if n == 0 || self.until_ms.load(Ordering::Acquire) <= now_ms {
            return;
        }
        let _ = self
            .remaining
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |r| {
                Some(r.saturating_sub(n))
            });
    }
}

/// A backend's last known capacity.
#[derive(Debug, Default)]
pub struct Capacity {
    tokens: Figure,
    requests: Figure,
}

impl Capacity {
    /// Remembers what an answer said, at `now_ms`.
    pub fn observe(&self, now_ms: u64, seen: &Observed) {
        self.tokens.set(now_ms, seen.tokens, seen.tokens_reset);
        self.requests
            .set(now_ms, seen.requests, seen.requests_reset);
    }

    /// Whether the backend can take a request estimated at `tokens` at `now_ms`: no figure
    /// in force says otherwise.
    pub fn can_take(&self, now_ms: u64, tokens: u64) -> bool {
        self.tokens
            .get(now_ms)
            .is_none_or(|left| left >= tokens.max(1))
            && self.requests.get(now_ms).is_none_or(|left| left >= 1)
    }

    /// When the backend can take such a request: `now_ms` if it can now, else when the
    /// figure that says it cannot ends.
    pub fn free_at(&self, now_ms: u64, tokens: u64) -> u64 {
        let mut at = now_ms;
        if self
            .tokens
            .get(now_ms)
            .is_some_and(|left| left < tokens.max(1))
        {
            at = at.max(self.tokens.until_ms.load(Ordering::Relaxed));
        }
        if self.requests.get(now_ms).is_some_and(|left| left < 1) {
            at = at.max(self.requests.until_ms.load(Ordering::Relaxed));
        }
        at
    }

    /// Takes a request sent at `now_ms` off the figures in force (the next answer's figures
    /// replace them).
    pub fn reserve(&self, now_ms: u64, tokens: u64) {
        self.tokens.take(now_ms, tokens);
        self.requests.take(now_ms, 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(headers: &[(&str, &str)]) -> Observed {
        Observed::from_headers(|name| {
            headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| *v)
        })
    }

    #[test]
    fn headers_are_read_and_junk_is_not_a_figure() {
        assert_eq!(
            seen(&[
                ("x-ratelimit-remaining-tokens", "4500"),
                ("x-ratelimit-reset-tokens", "1m30s"),
                ("x-ratelimit-remaining-requests", " 7 "),
                ("x-ratelimit-reset-requests", "250ms"),
            ]),
            Observed {
                tokens: Some(4500),
                tokens_reset: Some(Duration::from_secs(90)),
                requests: Some(7),
                requests_reset: Some(Duration::from_millis(250)),
            }
        );
        let junk = seen(&[
            ("x-ratelimit-remaining-tokens", "-1"),
            ("x-ratelimit-remaining-requests", "many"),
            ("x-ratelimit-reset-tokens", "soon"),
        ]);
        assert!(junk.is_empty() && junk.tokens_reset.is_none());
    }

    #[test]
    fn a_figure_skips_what_it_cannot_take_until_its_reset() {
        let c = Capacity::default();
        assert!(c.can_take(0, 1_000_000), "no figure: anything goes");
        c.observe(
            1_000,
            &Observed {
                tokens: Some(500),
                tokens_reset: Some(Duration::from_secs(2)),
                ..Observed::default()
            },
        );
        assert!(c.can_take(1_000, 500) && !c.can_take(1_000, 501));
        assert_eq!(c.free_at(1_000, 501), 3_000);
        assert_eq!(c.free_at(1_000, 10), 1_000);
        c.reserve(1_100, 400);
        assert!(!c.can_take(1_100, 101) && c.can_take(1_100, 100));
        assert!(
            c.can_take(3_000, 1_000_000),
            "the figure ended at its reset"
        );
        c.reserve(3_000, 10_000);
        assert!(
            c.can_take(3_000, 1),
            "reserving past a figure's end does nothing"
        );
    }

    #[test]
    fn a_reset_years_away_counts_a_minute_at_most() {
        let c = Capacity::default();
        c.observe(
            0,
            &Observed {
                requests: Some(0),
                requests_reset: Some(Duration::from_secs(87_600 * 3600)),
                ..Observed::default()
            },
        );
        assert!(!c.can_take(59_999, 0));
        assert_eq!(c.free_at(0, 0), 60_000);
        assert!(c.can_take(60_000, 0));
    }

    #[test]
    fn no_requests_left_and_undated_figures() {
        let c = Capacity::default();
        c.observe(
            0,
            &Observed {
                requests: Some(0),
                ..Observed::default()
            },
        );
        assert!(!c.can_take(999, 0));
        assert_eq!(c.free_at(0, 0), 1_000);
        assert!(c.can_take(1_000, 0), "an undated figure counts for 1 s");
    }
}
