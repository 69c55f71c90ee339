//! Quotas: at most `limit` tokens (or requests) per UTC calendar hour, day or month, on one
//! `AtomicU64` shared by every worker.
//!
//! The word packs the window's number (24 bits: hours, days or months since 1970) and the
//! amount used in it (40 bits, so at most 2^40 − 1 ≈ 1.1 × 10^12 per window). A decision is
//! one CAS: a word from an older window counts as empty, so windows reset without a timer.
//! A fixed window admits at most `limit` per window, exactly (plus any debt a reconciliation
//! charged, which then refuses until the reset).
//!
//! Time is wall-clock Unix seconds, passed in: the calendar, not the uptime, decides.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::decision::{Decision, Denial, DenyReason};
use super::gcra::Padded;

const USED_BITS: u32 = 40;
const USED_MAX: u64 = (1 << USED_BITS) - 1;
const WINDOW_MASK: u64 = (1 << (64 - USED_BITS)) - 1;

/// A quota's calendar window (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaWindow {
    /// From hh:00:00 to the next hour.
    Hour,
    /// From 00:00:00 UTC to the next midnight.
    Day,
    /// From the 1st at 00:00:00 UTC to the 1st of the next month.
    Month,
}

/// A quota: `limit` per `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaSpec {
    /// Tokens (or requests) per window; clamped to 2^40 − 1. 0 admits nothing.
    pub limit: u64,
    /// The calendar window.
    pub window: QuotaWindow,
}

/// The window holding `unix_secs`: its number (hours, days or months since 1970-01), its
/// start and its end, in Unix seconds.
pub fn window_bounds(window: QuotaWindow, unix_secs: u64) -> (u64, u64, u64) {
    match window {
        QuotaWindow::Hour => {
            let n = unix_secs / 3600;
            (n, n * 3600, (n + 1) * 3600)
        }
        QuotaWindow::Day => {
            let n = unix_secs / 86_400;
            (n, n * 86_400, (n + 1) * 86_400)
        }
        QuotaWindow::Month => {
            let days = unix_secs / 86_400;
            let (year, month, _) = civil_from_days(days);
            let n = (year - 1970) * 12 + (month - 1);
            let (next_year, next_month) = if month == 12 {
                (year + 1, 1)
            } else {
                (year, month + 1)
            };
            let start = days_from_civil(year, month, 1) * 86_400;
            let end = days_from_civil(next_year, next_month, 1) * 86_400;
            (n, start, end)
        }
    }
}

/// Days since 1970-01-01 → (year, month 1–12, day 1–31), proleptic Gregorian. Howard
/// Hinnant's `civil_from_days`, for dates from 1970 on.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// (year ≥ 1970, month 1–12, day) → days since 1970-01-01; the inverse of the above.
fn days_from_civil(year: u64, month: u64, day: u64) -> u64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    (era * 146_097 + doe).saturating_sub(719_468)
}

fn pack(window: u64, used: u64) -> u64 {
    ((window & WINDOW_MASK) << USED_BITS) | used.min(USED_MAX)
}

/// One quota's shared counter.
#[derive(Debug)]
pub struct QuotaCounter {
    state: Padded<AtomicU64>,
    limit: u64,
    window: QuotaWindow,
}

impl QuotaCounter {
    /// An unused counter for `spec`.
    pub fn new(spec: QuotaSpec) -> Self {
        Self {
            state: Padded(AtomicU64::new(0)),
            limit: spec.limit.min(USED_MAX),
            window: spec.window,
        }
    }

    /// The configured limit per window.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Used in the current window, given the stored word.
    fn used_in(&self, word: u64, window: u64) -> u64 {
        if word >> USED_BITS == window & WINDOW_MASK {
            word & USED_MAX
        } else {
            0
        }
    }

    /// Admits `cost` if the window's usage stays within the limit. A refusal is
    /// [`DenyReason::Quota`] with `retry_after` = the time to the window's end (or
    /// [`DenyReason::TooLarge`] if `cost` exceeds the whole limit).
    pub fn try_acquire(&self, unix_secs: u64, cost: u64) -> Decision {
        let (window, _, end) = window_bounds(self.window, unix_secs);
        let reset = Duration::from_secs(end.saturating_sub(unix_secs));
        if cost > self.limit {
            return Decision::Deny(Denial {
                reason: DenyReason::TooLarge,
                limit: self.limit,
                retry_after: Duration::ZERO,
            });
        }
        let result = self
            .state
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |word| {
                let used = self.used_in(word, window);
                (used.saturating_add(cost) <= self.limit).then(|| pack(window, used + cost))
            });
        match result {
            Ok(old) => Decision::Allow {
                limit: self.limit,
                remaining: self.limit - (self.used_in(old, window) + cost),
                reset,
                would_deny: None,
            },
            Err(_) => Decision::Deny(Denial {
                reason: DenyReason::Quota,
                limit: self.limit,
                retry_after: reset,
            }),
        }
    }

    /// Reconciles a reservation made at `reserved_at` with the real usage, at `unix_secs`.
    /// Within the same window, the difference is refunded or charged (a charge may exceed
    /// the limit: the debt refuses until the reset). If the window changed meanwhile, the
    /// old window's count is gone: a refund is dropped, and usage beyond the reservation is
    /// charged to the new window.
    pub fn settle(&self, reserved_at: u64, unix_secs: u64, reserved: u64, actual: u64) {
        let (then, _, _) = window_bounds(self.window, reserved_at);
        let (window, _, _) = window_bounds(self.window, unix_secs);
        if actual == reserved || (then != window && actual < reserved) {
            return;
        }
        let _ = self
            .state
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |word| {
                let used = self.used_in(word, window);
                let used = if actual < reserved {
                    used.saturating_sub(reserved - actual)
                } else {
                    used.saturating_add(actual - reserved)
                };
                Some(pack(window, used))
            });
    }

    /// Used so far in the window holding `unix_secs` (may exceed the limit after a charge).
    pub fn used(&self, unix_secs: u64) -> u64 {
        let (window, _, _) = window_bounds(self.window, unix_secs);
        self.used_in(self.state.0.load(Ordering::Relaxed), window)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Unix seconds of a UTC date and time, by an independent route (day counting).
    fn at(year: u64, month: u64, day: u64, hour: u64, min: u64, sec: u64) -> u64 {
        let leap =
            |y: u64| (y.is_multiple_of(4) && !y.is_multiple_of(100)) || y.is_multiple_of(400);
        let mut days = (1970..year)
            .map(|y| if leap(y) { 366 } else { 365 })
            .sum::<u64>();
        let lengths = [
            31,
            if leap(year) { 29 } else { 28 },
            31,
            30,
            31,
            30,
            31,
            31,
            30,
            31,
            30,
            31,
        ];
        days += lengths[..usize::try_from(month - 1).unwrap()]
            .iter()
            .sum::<u64>();
        days += day - 1;
        days * 86_400 + hour * 3600 + min * 60 + sec
    }

    fn month_length(year: u64, month: u64) -> u64 {
        let (_, start, end) = window_bounds(QuotaWindow::Month, at(year, month, 1, 0, 0, 0));
        (end - start) / 86_400
    }

    #[test]
    fn calendar_matches_a_day_count() {
        assert_eq!(at(2024, 3, 1, 0, 0, 0), 1_709_251_200);
        for days in (0..200_000).step_by(7) {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
            assert_eq!(at(y, m, d, 0, 0, 0), days * 86_400);
        }
    }

    #[test]
    fn month_lengths_and_leap_years() {
        assert_eq!(month_length(2023, 2), 28);
        assert_eq!(month_length(2024, 2), 29);
        assert_eq!(month_length(2100, 2), 28);
        assert_eq!(month_length(2000, 2), 29);
        assert_eq!(month_length(2025, 4), 30);
        assert_eq!(month_length(2025, 12), 31);
        assert_eq!(month_length(2025, 1), 31);
    }

    fn hammer_window(window: QuotaWindow, first: u64, last: u64, next: u64) {
        let q = QuotaCounter::new(QuotaSpec { limit: 10, window });
        for _ in 0..10 {
            assert!(q.try_acquire(first, 1).is_allowed());
        }
        match q.try_acquire(last, 1) {
            Decision::Deny(d) => {
                assert_eq!(d.reason, DenyReason::Quota);
                assert_eq!(d.retry_after, Duration::from_secs(next - last));
            }
            d => panic!("{d:?}"),
        }
        match q.try_acquire(next, 4) {
            Decision::Allow {
                remaining, reset, ..
            } => {
                assert_eq!(remaining, 6);
                let (_, start, end) = window_bounds(window, next);
                assert_eq!(start, next);
                assert_eq!(reset, Duration::from_secs(end - next));
            }
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn quotas_reset_at_hour_day_and_month_boundaries() {
        hammer_window(
            QuotaWindow::Hour,
            at(2025, 6, 30, 13, 0, 0),
            at(2025, 6, 30, 13, 59, 59),
            at(2025, 6, 30, 14, 0, 0),
        );
        hammer_window(
            QuotaWindow::Day,
            at(2025, 12, 31, 0, 0, 0),
            at(2025, 12, 31, 23, 59, 59),
            at(2026, 1, 1, 0, 0, 0),
        );
        // February of a leap year ends on the 29th…
        hammer_window(
            QuotaWindow::Month,
            at(2024, 2, 1, 0, 0, 0),
            at(2024, 2, 29, 23, 59, 59),
            at(2024, 3, 1, 0, 0, 0),
        );
        // …of a common year on the 28th, and 2100 is not a leap year.
        hammer_window(
            QuotaWindow::Month,
            at(2100, 2, 3, 0, 0, 0),
            at(2100, 2, 28, 23, 59, 59),
            at(2100, 3, 1, 0, 0, 0),
        );
        hammer_window(
            QuotaWindow::Month,
            at(2025, 12, 1, 0, 0, 0),
            at(2025, 12, 31, 23, 59, 59),
            at(2026, 1, 1, 0, 0, 0),
        );
    }

    #[test]
    fn reconciliation_refunds_charges_and_debt() {
        let q = QuotaCounter::new(QuotaSpec {
            limit: 1000,
            window: QuotaWindow::Day,
        });
        let t = at(2025, 5, 5, 10, 0, 0);
        assert!(q.try_acquire(t, 800).is_allowed());
        q.settle(t, t + 5, 800, 200);
        assert_eq!(q.used(t), 200);
        assert!(q.try_acquire(t, 700).is_allowed());
        // 700 reserved, 1500 used: 1700 of 1000, refused until midnight.
        q.settle(t, t + 5, 700, 1500);
        assert_eq!(q.used(t), 1700);
        assert!(!q.try_acquire(t + 6, 1).is_allowed());
        let midnight = at(2025, 5, 6, 0, 0, 0);
        assert!(q.try_acquire(midnight, 1).is_allowed());
        // A reservation from yesterday: its refund is dropped, its overrun charged today.
        q.settle(midnight - 1, midnight + 1, 100, 10);
        assert_eq!(q.used(midnight), 1);
        q.settle(midnight - 1, midnight + 1, 100, 150);
        assert_eq!(q.used(midnight), 51);
        assert!(matches!(
            q.try_acquire(midnight, 1001),
            Decision::Deny(Denial {
                reason: DenyReason::TooLarge,
                ..
            })
        ));
    }

    #[test]
    fn many_threads_never_exceed_a_quota() {
        let q = std::sync::Arc::new(QuotaCounter::new(QuotaSpec {
            limit: 10_000,
            window: QuotaWindow::Hour,
        }));
        let t = at(2025, 1, 1, 0, 0, 0);
        let total: u64 = (0..8)
            .map(|_| {
                let q = q.clone();
                std::thread::spawn(move || {
                    let mut got = 0;
                    for _ in 0..5000 {
                        if q.try_acquire(t, 3).is_allowed() {
                            got += 3;
                        }
                    }
                    got
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap())
            .sum();
        assert_eq!(total, 9999);
        assert_eq!(q.used(t), 9999);
    }
}
