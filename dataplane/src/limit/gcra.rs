//! A rate limit shared by every worker: GCRA (the generic cell rate algorithm) on one
//! `AtomicU64`, updated by compare-and-swap.
//!
//! The word holds the *theoretical arrival time* (TAT, monotonic ns): the moment the bucket
//! would be full again. A token costs the emission interval `I = period / limit`; the bucket
//! holds `burst` tokens, i.e. a tolerance `τ = burst × I`. A request of cost `n` at time `now`
//! passes iff `max(TAT, now) + n·I ≤ now + τ`, and then that sum is the new TAT. This is a
//! token bucket of size `burst` refilled at `limit / period` with its level kept implicitly,
//! so one word is the whole state and there is no refill loop.
//!
//! Bound: over any interval of length `W`, admitted ≤ `burst + W / I`; for `W` = one period,
//! ≤ `limit + burst`. `I` is kept in 32.32 fixed point and every cost is rounded *up* to whole
//! nanoseconds, so rounding can only refuse (by < 1 ns of refill per request), never admit
//! more; with `period` a multiple of `limit` there is no rounding at all.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::decision::{Decision, Denial, DenyReason};

const FRAC_BITS: u32 = 32;
const FRAC_MASK: u128 = (1 << FRAC_BITS) - 1;

/// A rate limit: `limit` tokens (requests, or model tokens) per `period`, at most `burst` at
/// once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateSpec {
    /// Tokens refilled per `period`. 0 admits nothing.
    pub limit: u64,
    /// The period `limit` is counted over (e.g. one minute for TPM/RPM).
    pub period: Duration,
    /// The bucket's size: how many tokens can be spent at once after an idle spell, and the
    /// largest single cost that can ever pass. Over any window of one `period`, at most
    /// `limit + burst` are admitted. 0 is taken as 1. [`RateSpec::per`] sets it to `limit`.
    pub burst: u64,
}

impl RateSpec {
    /// `limit` per `period` with `burst = limit`: a client may spend a whole period's
    /// allowance at once (like a fixed window), and then at the steady rate.
    pub fn per(limit: u64, period: Duration) -> Self {
        Self {
            limit,
            period,
            burst: limit,
        }
    }

    /// The same rate with another bucket size.
    #[must_use]
    pub fn with_burst(self, burst: u64) -> Self {
        Self { burst, ..self }
    }
}

/// Tokens handed out by [`GcraBucket::take_up_to`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    /// How many tokens were taken.
    pub granted: u64,
    /// Tokens left in the bucket just after (rounded down).
    pub remaining: u64,
    /// Monotonic time (ns) at which the bucket is full again, absent further use.
    pub full_at: u64,
}

/// Keeps the hot word alone on its cache line(s), so reads of the bucket's constant fields
/// (and of neighbouring allocations) do not bounce with every compare-and-swap. 128 bytes:
/// x86 prefetches lines in pairs.
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct Padded<T>(pub(crate) T);

/// One rate limit's shared state: one atomic word plus constants.
///
/// All operations are lock-free (a CAS loop on one word, `Relaxed`: the word is the whole
/// state, and all operations on one atomic are totally ordered). Callers pass `now` in
/// monotonic nanoseconds; a `now` slightly older than another thread's is harmless (it can
/// only refuse more).
#[derive(Debug)]
pub struct GcraBucket {
    tat: Padded<AtomicU64>,
    /// Nanoseconds per token, 32.32 fixed point, rounded up; at least 1 ns.
    interval_fp: u128,
    /// `ceil(2^64 / ceil(interval))`: tokens from nanoseconds by a multiply (an estimate
    /// for headers, never for admission; off by one only for slack near 2^64 ns).
    inv_interval: u128,
    /// `burst × interval`, rounded like any cost.
    tau: u64,
    limit: u64,
    burst: u64,
}

impl GcraBucket {
    /// A full bucket for `spec`. Rates above one token per nanosecond are clamped to it.
    pub fn new(spec: RateSpec) -> Self {
        let period = spec.period.as_nanos().max(1);
        let burst = spec.burst.max(1);
        let interval_fp = if spec.limit == 0 {
            u128::MAX
        } else {
            // period < 2^64 ns in any sane config; saturate rather than overflow otherwise.
            let scaled = period.saturating_mul(1 << FRAC_BITS);
            scaled.div_ceil(u128::from(spec.limit)).max(1 << FRAC_BITS)
        };
        let interval_ns = u64::try_from(interval_fp.div_ceil(1 << FRAC_BITS)).unwrap_or(u64::MAX);
        let mut bucket = Self {
            tat: Padded(AtomicU64::new(0)),
            interval_fp,
            inv_interval: (1u128 << 64).div_ceil(u128::from(interval_ns.max(1))),
            tau: 0,
            limit: spec.limit,
            burst,
        };
        bucket.tau = bucket.cost_nanos(burst).unwrap_or(0);
        bucket
    }

    /// The configured limit (tokens per period), for `x-ratelimit-limit`.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// The bucket's size.
    pub fn burst(&self) -> u64 {
        self.burst
    }

    /// `n` tokens in nanoseconds of refill, rounded up; `None` if it does not fit (never
    /// admissible).
    fn cost_nanos(&self, n: u64) -> Option<u64> {
        let fp = u128::from(n).checked_mul(self.interval_fp)?;
        u64::try_from(fp.checked_add(FRAC_MASK)? >> FRAC_BITS).ok()
    }

    /// Tokens that `slack` nanoseconds of room hold, rounded down (header estimate).
    fn tokens_in(&self, slack: u64) -> u64 {
        let t = u128::from(slack).saturating_mul(self.inv_interval) >> 64;
        u64::try_from(t).unwrap_or(u64::MAX).min(self.burst)
    }

    fn too_large(&self) -> Denial {
        Denial {
            reason: DenyReason::TooLarge,
            limit: self.limit,
            retry_after: Duration::ZERO,
        }
    }

    /// Admits `cost` tokens at `now` if the bucket holds them. On refusal, `retry_after` is
    /// exactly when the same cost would pass (absent other use); a cost above `burst` is
    /// [`DenyReason::TooLarge`].
    pub fn try_acquire(&self, now: u64, cost: u64) -> Decision {
        let inc = match self.cost_nanos(cost) {
            Some(inc) if inc <= self.tau => inc,
            _ => return Decision::Deny(self.too_large()),
        };
        let limit_at = now.saturating_add(self.tau);
        let mut tat = self.tat.0.load(Ordering::Relaxed);
        loop {
            let new = tat.max(now).saturating_add(inc);
            if new > limit_at {
                return Decision::Deny(Denial {
                    reason: DenyReason::Rate,
                    limit: self.limit,
                    retry_after: Duration::from_nanos(new - limit_at),
                });
            }
            match self
                .tat
                .0
                .compare_exchange_weak(tat, new, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => {
                    return Decision::Allow {
                        limit: self.limit,
                        remaining: self.tokens_in(limit_at - new),
                        reset: Duration::from_nanos(new - now),
                        would_deny: None,
                    }
                }
                Err(current) => tat = current,
            }
        }
    }

    /// Takes as many tokens as the bucket holds, up to `max`, if that is at least `min` (one
    /// CAS). This is how a per-core lease refills: it gets its batch when there is one, and
    /// the last few tokens when there is not, so one core can drain the whole limit.
    pub fn take_up_to(&self, now: u64, min: u64, max: u64) -> Result<Grant, Denial> {
        let max = max.max(min);
        let limit_at = now.saturating_add(self.tau);
        let mut tat = self.tat.0.load(Ordering::Relaxed);
        loop {
            let base = tat.max(now);
            let slack = limit_at.saturating_sub(base);
            let fits = (u128::from(slack) << FRAC_BITS) / self.interval_fp;
            let mut granted = u64::try_from(fits).unwrap_or(u64::MAX).min(max);
            // The division is exact-ish; the rounded-up cost is what admission must respect.
            while granted > 0 && self.cost_nanos(granted).is_none_or(|c| c > slack) {
                granted -= 1;
            }
            if granted < min {
                return Err(match self.cost_nanos(min) {
                    Some(inc) if inc <= self.tau => Denial {
                        reason: DenyReason::Rate,
                        limit: self.limit,
                        retry_after: Duration::from_nanos(
                            base.saturating_add(inc).saturating_sub(limit_at),
                        ),
                    },
                    _ => self.too_large(),
                });
            }
            let new = base.saturating_add(self.cost_nanos(granted).unwrap_or(0));
            if granted == 0 {
                return Ok(Grant {
                    granted,
                    remaining: self.tokens_in(slack),
                    full_at: tat,
                });
            }
            match self
                .tat
                .0
                .compare_exchange_weak(tat, new, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => {
                    return Ok(Grant {
                        granted,
                        remaining: self.tokens_in(limit_at - new),
                        full_at: new,
                    })
                }
                Err(current) => tat = current,
            }
        }
    }

    /// Gives back `n` tokens taken earlier and not used (a reservation above the real
    /// usage, or a lease's leftover). The bucket never grows past full.
    pub fn refund(&self, now: u64, n: u64) {
        let dec = self.cost_nanos(n).unwrap_or(u64::MAX);
        let _ = self
            .tat
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |tat| {
                let new = tat.saturating_sub(dec).max(tat.min(now));
                (new != tat).then_some(new)
            });
    }

    /// Takes `n` tokens unconditionally (usage above the reservation). The level may go
    /// below zero: a debt, which refuses every request until the refill has paid it off.
    pub fn charge(&self, now: u64, n: u64) {
        let inc = self.cost_nanos(n).unwrap_or(u64::MAX);
        let _ = self
            .tat
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |tat| {
                Some(tat.max(now).saturating_add(inc))
            });
    }

    /// Reconciles a reservation with the real usage: refunds `reserved - actual` or charges
    /// `actual - reserved`.
    pub fn settle(&self, now: u64, reserved: u64, actual: u64) {
        if actual < reserved {
            self.refund(now, reserved - actual);
        } else if actual > reserved {
            self.charge(now, actual - reserved);
        }
    }

    /// Tokens available at `now` (rounded down; 0 while in debt).
    pub fn available(&self, now: u64) -> u64 {
        let tat = self.tat.0.load(Ordering::Relaxed);
        self.tokens_in(now.saturating_add(self.tau).saturating_sub(tat.max(now)))
    }

    /// True when the bucket is full at `now`: forgetting it loses nothing.
    pub fn is_full(&self, now: u64) -> bool {
        self.tat.0.load(Ordering::Relaxed) <= now
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;
    const SEC: u64 = 1_000 * MS;

    fn allowed(d: Decision) -> bool {
        d.is_allowed()
    }

    fn retry_after(d: Decision) -> Duration {
        match d {
            Decision::Deny(d) => d.retry_after,
            Decision::Allow { .. } => panic!("expected a denial, got {d:?}"),
        }
    }

    #[test]
    fn burst_then_refill_driven_by_the_clock() {
        // 10 per second (one per 100 ms), 3 at once.
        let b = GcraBucket::new(RateSpec::per(10, Duration::from_secs(1)).with_burst(3));
        let mut now = 5 * SEC;
        for i in 0..3 {
            match b.try_acquire(now, 1) {
                Decision::Allow {
                    remaining, limit, ..
                } => {
                    assert_eq!(limit, 10);
                    assert_eq!(remaining, 2 - i);
                }
                d => panic!("{d:?}"),
            }
        }
        let d = b.try_acquire(now, 1);
        assert_eq!(retry_after(d), Duration::from_millis(100));
        now += 100 * MS - 1;
        assert!(!allowed(b.try_acquire(now, 1)));
        now += 1;
        assert!(allowed(b.try_acquire(now, 1)));
        assert!(!allowed(b.try_acquire(now, 1)));
        // A long idle spell refills to `burst`, no more.
        now += 60 * SEC;
        assert_eq!(b.available(now), 3);
        assert!(b.is_full(now));
        assert_eq!(retry_after(b.try_acquire(now, 4)), Duration::ZERO);
        assert!(matches!(
            b.try_acquire(now, 4),
            Decision::Deny(Denial {
                reason: DenyReason::TooLarge,
                ..
            })
        ));
        assert!(allowed(b.try_acquire(now, 3)));
    }

    #[test]
    fn steady_rate_admits_exactly_limit_per_period_after_the_burst() {
        let b = GcraBucket::new(RateSpec::per(100, Duration::from_secs(1)).with_burst(10));
        let mut admitted = 0;
        // Try every millisecond for 10 s.
        for ms in 0..10_000 {
            while b.try_acquire(ms * MS, 1).is_allowed() {
                admitted += 1;
            }
        }
        // 10 at t = 0, then one per 10 ms: at 10, 20, …, 9990 ms.
        assert_eq!(admitted, 10 + 999);
    }

    #[test]
    fn rates_that_do_not_divide_never_over_admit() {
        // 7 per second: the interval is 142 857 142.857… ns.
        let b = GcraBucket::new(RateSpec::per(7, Duration::from_secs(1)));
        let mut admitted = 0;
        for ms in 0..=60_000 {
            while b.try_acquire(ms * MS, 1).is_allowed() {
                admitted += 1;
            }
        }
        // burst + 60 s × 7/s, less at most one for rounding.
        assert!((7 + 420 - 1..=7 + 420).contains(&admitted), "{admitted}");
    }

    #[test]
    fn cost_n_and_take_up_to() {
        let b = GcraBucket::new(RateSpec::per(1000, Duration::from_secs(1)));
        assert!(b.try_acquire(0, 600).is_allowed());
        let g = b.take_up_to(0, 1, 1000).unwrap();
        assert_eq!(g.granted, 400);
        assert_eq!(g.remaining, 0);
        assert_eq!(g.full_at, SEC);
        let d = b.take_up_to(0, 5, 16).unwrap_err();
        assert_eq!(d.reason, DenyReason::Rate);
        assert_eq!(d.retry_after, Duration::from_millis(5));
        assert_eq!(b.take_up_to(5 * MS, 5, 16).unwrap().granted, 5);
        assert_eq!(
            b.take_up_to(0, 1001, 1001).unwrap_err().reason,
            DenyReason::TooLarge
        );
    }

    #[test]
    fn refund_gives_back_but_never_past_full() {
        let b = GcraBucket::new(RateSpec::per(100, Duration::from_secs(1)));
        assert!(b.try_acquire(0, 100).is_allowed());
        assert_eq!(b.available(0), 0);
        b.settle(0, 100, 30);
        assert_eq!(b.available(0), 70);
        b.refund(0, 1000);
        assert_eq!(b.available(0), 100);
        assert!(!b.try_acquire(0, 101).is_allowed());
    }

    #[test]
    fn a_debt_blocks_until_time_pays_it_off() {
        // 100 per second: 10 ms a token.
        let b = GcraBucket::new(RateSpec::per(100, Duration::from_secs(1)));
        assert!(b.try_acquire(0, 100).is_allowed());
        // The answer used 300 where 100 was reserved: 200 of debt.
        b.settle(0, 100, 300);
        assert_eq!(b.available(0), 0);
        // Paying 200 off takes 2 s, then 1 token needs 10 ms more.
        assert_eq!(
            retry_after(b.try_acquire(0, 1)),
            Duration::from_millis(2010)
        );
        assert!(!b.try_acquire(2 * SEC, 1).is_allowed());
        assert!(!b.try_acquire(2 * SEC + 10 * MS - 1, 1).is_allowed());
        assert!(b.try_acquire(2 * SEC + 10 * MS, 1).is_allowed());
    }

    #[test]
    fn zero_limit_admits_nothing_and_zero_cost_always_passes() {
        let b = GcraBucket::new(RateSpec::per(0, Duration::from_secs(1)));
        assert!(!b.try_acquire(0, 1).is_allowed());
        assert!(b.take_up_to(0, 1, 1).is_err());
        let b = GcraBucket::new(RateSpec::per(5, Duration::from_secs(1)));
        assert!(b.try_acquire(0, 5).is_allowed());
        assert!(b.try_acquire(0, 0).is_allowed());
    }
}
