//! The retry decision's per-worker parts: the retry budget and the backoff.
//!
//! **Budget** (Envoy's `retry_budget`): retries in flight on a worker are at most
//! max(20% of its requests in flight upstream, 3). A request whose retry the budget
//! refuses gets what its last attempt got — the backend's answer as it came, or Sluice's
//! error — and is counted (`sluice_retries_over_budget_total`). A burst of failures
//! therefore cannot multiply the load on a pool that is already failing.
//!
//! **Backoff** (AWS's "full jitter"): only when a request goes back to a backend it already
//! tried (the pool has fewer usable members than the request has attempts), it first sleeps
//! a random time in `[0, min(250 ms, 25 ms × 2^n))`, n the retries so far; a retry on another
//! backend goes at once.

use std::cell::Cell;
use std::time::Duration;

/// Retries in flight a worker always allows, however few requests it has.
const MIN_RETRY_CONCURRENCY: u32 = 3;
/// Share of the worker's requests in flight upstream that may be retrying, in percent.
const RETRY_BUDGET_PERCENT: u32 = 20;
/// The backoff's base and cap.
const BACKOFF_BASE: Duration = Duration::from_millis(25);
const BACKOFF_MAX: Duration = Duration::from_millis(250);

/// One worker's retry budget and backoff randomness. One thread: plain cells.
#[derive(Debug)]
pub struct Retries {
    active: Cell<u32>,
    retrying: Cell<u32>,
    rng: Cell<u64>,
}

impl Default for Retries {
    fn default() -> Self {
        let mut seed = [0u8; 8];
        // A fixed seed would only make the jitter of all workers alike.
        let _ = getrandom::getrandom(&mut seed);
        Self {
            active: Cell::new(0),
            retrying: Cell::new(0),
            rng: Cell::new(u64::from_le_bytes(seed) | 1),
        }
    }
}

impl Retries {
    /// Counts a request in flight upstream until the guard drops.
    pub fn enter(&self) -> Active<'_> {
        self.active.set(self.active.get().saturating_add(1));
        Active {
            retries: self,
            retrying: Cell::new(false),
        }
    }

    /// Retries allowed in flight now: max(20% of the requests in flight, 3).
    fn allowed(&self) -> u32 {
        (self.active.get() * RETRY_BUDGET_PERCENT / 100).max(MIN_RETRY_CONCURRENCY)
    }

    /// A random backoff before retry number `n` (1 = the first retry) on a backend already
    /// tried: uniform in `[0, min(250 ms, 25 ms × 2^(n−1)))`.
    pub fn backoff(&self, n: u32) -> Duration {
        let ceiling = BACKOFF_BASE
            .saturating_mul(1 << n.saturating_sub(1).min(16))
            .min(BACKOFF_MAX);
        // xorshift64: cheap, and only spreads sleeps.
        let mut x = self.rng.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng.set(x);
        let micros = u64::try_from(ceiling.as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        Duration::from_micros(x % micros)
    }
}

/// A request in flight upstream (see [`Retries::enter`]).
#[derive(Debug)]
pub struct Active<'a> {
    retries: &'a Retries,
    retrying: Cell<bool>,
}

impl Active<'_> {
    /// Whether this request may retry now: it already holds a retry slot, or the worker's
    /// budget has one free (which it then holds until it ends).
    pub fn may_retry(&self) -> bool {
        if self.retrying.get() {
            return true;
        }
        let r = self.retries;
        if r.retrying.get() >= r.allowed() {
            return false;
        }
        r.retrying.set(r.retrying.get() + 1);
        self.retrying.set(true);
        true
    }
}

impl Drop for Active<'_> {
    fn drop(&mut self) {
        let r = self.retries;
        r.active.set(r.active.get().saturating_sub(1));
        if self.retrying.get() {
            r.retrying.set(r.retrying.get().saturating_sub(1));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_is_a_fifth_of_requests_in_flight_but_at_least_three() {
        let r = Retries::default();
        let few: Vec<_> = (0..5).map(|_| r.enter()).collect();
        let granted = few.iter().filter(|a| a.may_retry()).count();
        assert_eq!(granted, 3);
        // A request holding a slot keeps it.
        assert!(few[0].may_retry());
        drop(few);
        assert_eq!((r.active.get(), r.retrying.get()), (0, 0));
        let many: Vec<_> = (0..50).map(|_| r.enter()).collect();
        assert_eq!(many.iter().filter(|a| a.may_retry()).count(), 10);
        drop(many);
        assert_eq!((r.active.get(), r.retrying.get()), (0, 0));
    }

    #[test]
    fn backoff_is_jittered_below_a_growing_capped_ceiling() {
        let r = Retries::default();
        for n in 1..8 {
            let ceiling = (BACKOFF_BASE * (1 << (n - 1))).min(BACKOFF_MAX);
            let samples: Vec<_> = (0..200).map(|_| r.backoff(n)).collect();
            assert!(samples.iter().all(|d| *d < ceiling));
            // Full jitter: both halves of the range are drawn.
            assert!(samples.iter().any(|d| *d < ceiling / 2));
            assert!(samples.iter().any(|d| *d >= ceiling / 2));
        }
    }
}
