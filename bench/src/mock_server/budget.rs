//! Per-minute budgets of tokens and requests, as an Azure OpenAI deployment enforces its
//! quota (`--tokens-per-minute`, `--requests-per-minute`): each request is charged at
//! admission what it may cost — its prompt's estimate plus its `max_tokens` (times `n`), as
//! Azure estimates it — and one request; a request the budget cannot cover is answered 429
//! with how long to wait. Every answer then carries what is left and when it refills
//! (`x-ratelimit-remaining-tokens`, `x-ratelimit-reset-tokens`, … in Go's duration style).
//!
//! Each budget is one generic cell rate algorithm (GCRA) bucket in one atomic word shared by
//! every worker: the rate refills it continuously (limit per minute) and it holds what the
//! rate gives over `window` (Azure evaluates its per-minute limits over short windows of 1 or
//! 10 s, so a full minute's worth is never taken in one burst). Admission is one
//! compare-and-swap per budget: lock-free, no allocation.
//!
//! Pure but for the atomics: the caller passes the time (nanoseconds since the budget's
//! start), so the tests drive the clock.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sluice::route::Operation;
use sluice::tokens::{reservation, Estimator, RequestFacts};

/// Nanoseconds in the budgets' unit of rate, one minute.
const MINUTE_NS: u128 = 60_000_000_000;

/// Completion tokens charged for a request that sets no `max_tokens` (nor
/// `max_completion_tokens`): 1024, what Sluice itself reserves by default.
pub const DEFAULT_MAX_TOKENS: u32 = 1024;

/// One budget: `limit` units a minute, holding at most what `window` refills.
#[derive(Debug)]
pub struct RateBudget {
    /// Units per minute (at least 1).
    limit: u64,
    /// The bucket's depth in nanoseconds of refill: `window`.
    depth_ns: u64,
    /// The theoretical arrival time (GCRA's TAT), nanoseconds since the start: the bucket
    /// is full at or after it, and `tat - now` nanoseconds of refill are missing before.
    tat: AtomicU64,
}

/// What a budget says of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reading {
    /// The budget's limit per minute.
    pub limit: u64,
    /// Units left after this request (when admitted) or now (when not).
    pub remaining: u64,
    /// Until the bucket is full again.
    pub reset: Duration,
    /// Not admitted: how long until this request's cost fits (`None` when admitted).
    pub retry_after: Option<Duration>,
}

impl RateBudget {
    /// `limit` units per minute (0 counts as 1), holding what `window` refills (at least
    /// one unit's worth, at most a minute's).
    pub fn new(limit: u64, window: Duration) -> Self {
        let limit = limit.max(1);
        let per_unit = MINUTE_NS / u128::from(limit);
        let depth = window.as_nanos().clamp(per_unit.max(1), MINUTE_NS);
        RateBudget {
            limit,
            depth_ns: u64::try_from(depth).unwrap_or(u64::MAX),
            tat: AtomicU64::new(0),
        }
    }

    /// Nanoseconds of refill that `units` take.
    fn refill_ns(&self, units: u64) -> u64 {
        let ns = u128::from(units) * MINUTE_NS / u128::from(self.limit);
        u64::try_from(ns).unwrap_or(u64::MAX)
    }

    /// Units that `ns` nanoseconds of refill give (rounded down).
    fn units_in(&self, ns: u64) -> u64 {
        let units = u128::from(ns) * u128::from(self.limit) / MINUTE_NS;
        u64::try_from(units).unwrap_or(u64::MAX)
    }

    /// Charges `cost` units at `now` (nanoseconds since the start) if the bucket holds them.
    /// A cost larger than the bucket can hold is never admitted; its `retry_after` is the
    /// whole window.
    pub fn take(&self, now: u64, cost: u64) -> Reading {
        let charge = self.refill_ns(cost);
        let mut tat = self.tat.load(Ordering::Relaxed);
        loop {
            let base = tat.max(now);
            let after = base.saturating_add(charge);
            let horizon = now.saturating_add(self.depth_ns);
            if after > horizon {
                let missing = base - now;
                // A cost larger than the bucket never fits: come back in a whole window.
                let wait = if charge > self.depth_ns {
                    self.depth_ns
                } else {
                    after - horizon
                };
                return Reading {
                    limit: self.limit,
                    remaining: self.units_in(self.depth_ns - missing.min(self.depth_ns)),
                    reset: Duration::from_nanos(missing),
                    retry_after: Some(Duration::from_nanos(wait)),
                };
            }
            match self
                .tat
                .compare_exchange_weak(tat, after, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => {
                    let missing = after - now;
                    return Reading {
                        limit: self.limit,
                        remaining: self.units_in(self.depth_ns - missing),
                        reset: Duration::from_nanos(missing),
                        retry_after: None,
                    };
                }
                Err(current) => tat = current,
            }
        }
    }

    /// What the bucket holds at `now`, charging nothing.
    pub fn read(&self, now: u64) -> Reading {
        let missing = self
            .tat
            .load(Ordering::Relaxed)
            .saturating_sub(now)
            .min(self.depth_ns);
        Reading {
            limit: self.limit,
            remaining: self.units_in(self.depth_ns - missing),
            reset: Duration::from_nanos(missing),
            retry_after: None,
        }
    }

    /// Gives back `cost` units taken by [`take`](Self::take) (the request was refused by
    /// another budget after all).
    pub fn give_back(&self, cost: u64) {
        let charge = self.refill_ns(cost);
        let _ = self
            .tat
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |tat| {
                Some(tat.saturating_sub(charge))
            });
    }
}

/// A mock's budgets: tokens, requests, either or both.
#[derive(Debug)]
pub struct Budgets {
    tokens: Option<RateBudget>,
    requests: Option<RateBudget>,
}

/// What admission decided, with what each budget reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admission {
    /// The token budget's reading (none without one).
    pub tokens: Option<Reading>,
    /// The request budget's reading (none without one).
    pub requests: Option<Reading>,
}

impl Admission {
    /// Refused: the longest wait either refusing budget asks for.
    pub fn retry_after(&self) -> Option<Duration> {
        [self.tokens, self.requests]
            .into_iter()
            .flatten()
            .filter_map(|r| r.retry_after)
            .max()
    }

    /// Appends the `x-ratelimit-*` header lines (and, when refused, `retry-after` in
    /// seconds rounded up and `retry-after-ms`) to `out`.
    pub fn write_headers(&self, out: &mut Vec<u8>) {
        let mut text = String::with_capacity(256);
        if let Some(wait) = self.retry_after() {
            let ms = wait.as_nanos().div_ceil(1_000_000);
            let _ = write!(
                text,
                "retry-after: {}\r\nretry-after-ms: {ms}\r\n",
                ms.div_ceil(1000)
            );
        }
        for (name, reading) in [("requests", self.requests), ("tokens", self.tokens)] {
            if let Some(r) = reading {
                let _ = write!(
                    text,
                    "x-ratelimit-limit-{name}: {}\r\nx-ratelimit-remaining-{name}: {}\r\n\
                     x-ratelimit-reset-{name}: ",
                    r.limit, r.remaining
                );
                go_duration(&mut text, r.reset);
                text.push_str("\r\n");
            }
        }
        out.extend_from_slice(text.as_bytes());
    }
}

impl Budgets {
    /// Budgets of `tokens_per_minute` and `requests_per_minute` (0: no such budget), each
    /// holding what `window` refills. `None` when both are 0.
    pub fn new(tokens_per_minute: u64, requests_per_minute: u64, window: Duration) -> Option<Self> {
        let budget = |limit: u64| (limit > 0).then(|| RateBudget::new(limit, window));
        let budgets = Budgets {
            tokens: budget(tokens_per_minute),
            requests: budget(requests_per_minute),
        };
        (budgets.tokens.is_some() || budgets.requests.is_some()).then_some(budgets)
    }

    /// Admits (or not) a request of `cost` tokens at `now` (nanoseconds since the start):
    /// one request from the request budget, `cost` from the token budget, both or neither.
    pub fn admit(&self, now: u64, cost: u64) -> Admission {
        let requests = self.requests.as_ref().map(|b| b.take(now, 1));
        if requests.is_some_and(|r| r.retry_after.is_some()) {
            // Refused for want of a request: the tokens are read, not charged.
            let tokens = self.tokens.as_ref().map(|b| b.read(now));
            return Admission { tokens, requests };
        }
        let tokens = self.tokens.as_ref().map(|b| b.take(now, cost));
        let mut requests = requests;
        if tokens.is_some_and(|t| t.retry_after.is_some()) {
            if let Some(b) = &self.requests {
                b.give_back(1);
                requests = Some(b.read(now));
            }
        }
        Admission { tokens, requests }
    }
}

/// Tokens Azure would charge `body` at admission for `op`: the prompt's estimate (a token per
/// 4 bytes of text, plus the chat framing) plus its completion cap (`max_tokens` or
/// `max_completion_tokens`, else [`DEFAULT_MAX_TOKENS`]) times `n`; embeddings the prompt
/// only. A body that does not read as the operation's JSON costs nothing (it is answered
/// 400).
pub fn request_cost(op: Operation, body: &[u8]) -> u64 {
    match RequestFacts::parse(op, body) {
        Ok(facts) => {
            let prompt = Estimator::Heuristic.estimate_prompt(&facts);
            reservation(&facts, prompt, DEFAULT_MAX_TOKENS)
        }
        Err(_) => 0,
    }
}

/// Writes `d` as Go's `time.Duration` prints it, the form Azure and OpenAI use for
/// `x-ratelimit-reset-*`, to the millisecond (rounded up): `250ms`, `6s`, `1.5s`, `1m30s`,
/// `0s`.
pub fn go_duration(out: &mut String, d: Duration) {
    let ms = d.as_nanos().div_ceil(1_000_000);
    if ms == 0 {
        out.push_str("0s");
    } else if ms < 1000 {
        let _ = write!(out, "{ms}ms");
    } else {
        let (minutes, ms) = (ms / 60_000, ms % 60_000);
        if minutes > 0 {
            let _ = write!(out, "{minutes}m");
        }
        let (secs, frac) = (ms / 1000, ms % 1000);
        if frac == 0 {
            let _ = write!(out, "{secs}s");
        } else {
            let frac = format!("{frac:03}");
            let _ = write!(out, "{secs}.{}s", frac.trim_end_matches('0'));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    fn go(d: Duration) -> String {
        let mut s = String::new();
        go_duration(&mut s, d);
        s
    }

    #[test]
    fn durations_print_as_go_does() {
        assert_eq!(go(Duration::ZERO), "0s");
        assert_eq!(go(Duration::from_micros(1)), "1ms");
        assert_eq!(go(Duration::from_millis(250)), "250ms");
        assert_eq!(go(Duration::from_secs(6)), "6s");
        assert_eq!(go(Duration::from_millis(1500)), "1.5s");
        assert_eq!(go(Duration::from_millis(1050)), "1.05s");
        assert_eq!(go(Duration::from_secs(90)), "1m30s");
        assert_eq!(go(Duration::from_secs(60)), "1m0s");
    }

    #[test]
    fn a_budget_admits_its_window_then_refills_at_its_rate() {
        // 600 a minute = 10 a second; a 1 s window holds 10.
        let b = RateBudget::new(600, Duration::from_secs(1));
        for i in 0..10 {
            let r = b.take(0, 1);
            assert_eq!(r.retry_after, None, "request {i}");
            assert_eq!(r.remaining, 9 - i);
        }
        let full = b.take(0, 1);
        assert_eq!(full.retry_after, Some(Duration::from_millis(100)));
        assert_eq!(full.remaining, 0);
        assert_eq!(full.reset, Duration::from_secs(1));
        // 100 ms later one unit is back, and taken.
        let r = b.take(SEC / 10, 1);
        assert_eq!(r.retry_after, None);
        assert_eq!(r.reset, Duration::from_secs(1));
        // Idle for long: full again, never more than the window holds.
        let r = b.take(100 * SEC, 1);
        assert_eq!((r.remaining, r.retry_after), (9, None));
        assert_eq!(r.reset, Duration::from_millis(100));
    }

    #[test]
    fn a_cost_waits_until_it_fits_and_one_too_large_never_does() {
        // 60,000 tokens a minute = 1,000 a second; a 10 s window holds 10,000.
        let b = RateBudget::new(60_000, Duration::from_secs(10));
        assert_eq!(b.take(0, 9_500).retry_after, None);
        let r = b.take(0, 1_000);
        assert_eq!(r.remaining, 500);
        assert_eq!(r.retry_after, Some(Duration::from_millis(500)));
        assert_eq!(r.reset, Duration::from_millis(9_500));
        let r = b.take(0, 20_000);
        assert_eq!(r.retry_after, Some(Duration::from_secs(10)));
        // The refusals took nothing.
        assert_eq!(b.take(SEC / 2, 1_000).retry_after, None);
    }

    #[test]
    fn given_back_units_are_admitted_again() {
        let b = RateBudget::new(60, Duration::from_secs(1));
        assert_eq!(b.take(0, 1).retry_after, None);
        assert!(b.take(0, 1).retry_after.is_some());
        b.give_back(1);
        assert_eq!(b.take(0, 1).retry_after, None);
    }

    #[test]
    fn a_request_is_charged_by_both_budgets_or_neither() {
        // 6 requests and 600 tokens a minute, 10 s windows: 1 request and 100 tokens.
        let b = Budgets::new(600, 6, Duration::from_secs(10)).unwrap();
        let a = b.admit(0, 60);
        assert_eq!(a.retry_after(), None);
        assert_eq!(a.tokens.unwrap().remaining, 40);
        assert_eq!(a.requests.unwrap().remaining, 0);
        // Out of requests: refused for 10 s, tokens untouched.
        let a = b.admit(0, 10);
        assert_eq!(a.retry_after(), Some(Duration::from_secs(10)));
        assert_eq!(a.tokens.unwrap().remaining, 40);
        // After 10 s: a request is back but 200 tokens do not fit; the request is given back.
        let a = b.admit(10 * SEC, 200);
        assert!(a.tokens.unwrap().retry_after.is_some());
        assert_eq!(a.requests.unwrap().remaining, 1);
        assert_eq!(b.admit(10 * SEC, 100).retry_after(), None);
        assert!(Budgets::new(0, 0, Duration::from_secs(1)).is_none());
    }

    #[test]
    fn headers_carry_remaining_reset_and_the_wait() {
        let b = Budgets::new(60_000, 0, Duration::from_secs(1)).unwrap();
        let mut out = Vec::new();
        b.admit(0, 250).write_headers(&mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "x-ratelimit-limit-tokens: 60000\r\nx-ratelimit-remaining-tokens: 750\r\n\
             x-ratelimit-reset-tokens: 250ms\r\n"
        );
        let mut out = Vec::new();
        b.admit(0, 1000).write_headers(&mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.starts_with("retry-after: 1\r\nretry-after-ms: 250\r\n"),
            "{text}"
        );
        assert!(
            text.contains("x-ratelimit-remaining-tokens: 750\r\n"),
            "{text}"
        );
    }

    #[test]
    fn the_cost_is_the_prompt_estimate_plus_the_cap() {
        let body = br#"{"messages":[{"role":"user","content":"Hello there!"}],"max_tokens":16}"#;
        // 12 bytes → 3 tokens, + 4 per message + 3 priming, + 16.
        assert_eq!(request_cost(Operation::ChatCompletions, body), 26);
        let body = br#"{"messages":[{"role":"user","content":"Hi"}]}"#;
        assert_eq!(
            request_cost(Operation::ChatCompletions, body),
            1 + 7 + u64::from(DEFAULT_MAX_TOKENS)
        );
        let body = br#"{"input":"The food was delicious"}"#;
        assert_eq!(request_cost(Operation::Embeddings, body), 6);
        assert_eq!(request_cost(Operation::ChatCompletions, b"nope"), 0);
    }

    #[test]
    fn admission_holds_under_many_threads() {
        // 6,000 a minute, 1 s window: 100 units; 8 threads race for 1 unit each 50 times.
        let b = std::sync::Arc::new(RateBudget::new(6_000, Duration::from_secs(1)));
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let b = b.clone();
                std::thread::spawn(move || {
                    (0..50)
                        .filter(|_| b.take(0, 1).retry_after.is_none())
                        .count()
                })
            })
            .collect();
        let admitted: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
        assert_eq!(admitted, 100);
    }
}
