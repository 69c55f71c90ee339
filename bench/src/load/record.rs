//! Per-thread recording: each thread's histograms and counters, written without locks or
//! atomics on the request path and merged once the threads are done.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use super::report::ErrorCounts;

/// Highest value a histogram tracks exactly: one hour in microseconds (larger values are
/// recorded as this).
const HIGHEST_US: u64 = 3_600_000_000;

/// An empty histogram of microseconds with 3 significant figures, sized once so recording
/// never allocates. Made at startup only.
pub fn histogram() -> Histogram<u64> {
    #[allow(clippy::expect_used)] // Startup, and the bounds are constant and valid.
    Histogram::new_with_bounds(1, HIGHEST_US, 3).expect("valid histogram bounds")
}

/// Whole microseconds in `d`.
pub fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Why a request failed without a complete answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The connection could not be opened.
    Connect,
    /// The TLS handshake failed or did not finish in time.
    Tls,
    /// No complete answer in time.
    Timeout,
    /// Reset, or closed before the answer was complete.
    Reset,
    /// The answer could not be parsed.
    Protocol,
}

/// How one request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A complete answer with this status.
    Answered(u16),
    /// No complete answer.
    Failed(Failure),
}

/// One thread's measurements.
pub struct Recorder {
    /// Latency of complete answers.
    pub latency: Histogram<u64>,
    /// Time to the first data event (`--stream`).
    pub ttft: Histogram<u64>,
    /// Gaps between data events (`--stream`).
    pub gap: Histogram<u64>,
    /// Measured requests, any outcome.
    pub requests: u64,
    /// Measured answers with a status below 400.
    pub ok: u64,
    /// Measured failures by kind.
    pub errors: ErrorCounts,
    /// Warm-up requests, any outcome.
    pub warmup: u64,
    /// When the last measured request ended.
    pub last_done: Option<Instant>,
    /// Latencies since the last progress flush (only with progress on).
    interval: Option<Histogram<u64>>,
}

impl Recorder {
    /// Empty; `progress` keeps an extra histogram for the progress line.
    pub fn new(progress: bool) -> Self {
        Self {
            latency: histogram(),
            ttft: histogram(),
            gap: histogram(),
            requests: 0,
            ok: 0,
            errors: ErrorCounts::default(),
            warmup: 0,
            last_done: None,
            interval: progress.then(histogram),
        }
    }

    /// Records one request's end. `latency` is counted only for complete answers.
    pub fn record(&mut self, measured: bool, outcome: Outcome, latency: Duration, done: Instant) {
        if !measured {
            self.warmup += 1;
            return;
        }
        self.requests += 1;
        self.last_done = Some(self.last_done.map_or(done, |t| t.max(done)));
        let e = &mut self.errors;
        match outcome {
            Outcome::Answered(status) => {
                let us = micros(latency);
                self.latency.saturating_record(us);
                if let Some(h) = &mut self.interval {
                    h.saturating_record(us);
                }
                match status {
                    429 => e.status_429 += 1,
                    400..=499 => e.status_4xx += 1,
                    500.. => e.status_5xx += 1,
                    _ => self.ok += 1,
                }
            }
            Outcome::Failed(Failure::Connect) => e.connect += 1,
            Outcome::Failed(Failure::Tls) => e.tls += 1,
            Outcome::Failed(Failure::Timeout) => e.timeout += 1,
            Outcome::Failed(Failure::Reset) => e.reset += 1,
            Outcome::Failed(Failure::Protocol) => e.protocol += 1,
        }
    }

    /// Adds another thread's measurements to these.
    pub fn merge(&mut self, other: &Recorder) {
        // Same bounds on both sides, so adding cannot fail; saturate rather than lose a
        // thread's figures if it somehow did.
        let add = |into: &mut Histogram<u64>, from: &Histogram<u64>| {
            if into.add(from).is_err() {
                for v in from.iter_recorded() {
                    into.saturating_record_n(v.value_iterated_to(), v.count_at_value());
                }
            }
        };
        add(&mut self.latency, &other.latency);
        add(&mut self.ttft, &other.ttft);
        add(&mut self.gap, &other.gap);
        self.requests += other.requests;
        self.ok += other.ok;
        self.errors.add(&other.errors);
        self.warmup += other.warmup;
        self.last_done = match (self.last_done, other.last_done) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
    }

    /// Publishes the counts and the latencies since the last flush to the progress line.
    pub fn flush_progress(&mut self, slot: &Mutex<Progress>) {
        let Some(interval) = &mut self.interval else {
            return;
        };
        let Ok(mut p) = slot.lock() else {
            return;
        };
        p.requests = self.requests;
        p.errors = self.errors.total();
        if p.latency.add(&*interval).is_ok() {
            interval.reset();
        }
    }
}

/// What one thread last published for the progress line.
pub struct Progress {
    /// Measured requests so far.
    pub requests: u64,
    /// Measured failures so far.
    pub errors: u64,
    /// Every measured latency flushed so far.
    pub latency: Histogram<u64>,
}

impl Default for Progress {
    fn default() -> Self {
        Self {
            requests: 0,
            errors: 0,
            latency: histogram(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_kind_and_merges() {
        let now = Instant::now();
        let ms = Duration::from_millis(1);
        let mut a = Recorder::new(true);
        a.record(false, Outcome::Answered(200), ms, now);
        for status in [200, 302, 429, 404, 503] {
            a.record(true, Outcome::Answered(status), ms, now);
        }
        let mut b = Recorder::new(false);
        for f in [
            Failure::Connect,
            Failure::Tls,
            Failure::Timeout,
            Failure::Reset,
            Failure::Protocol,
        ] {
            b.record(true, Outcome::Failed(f), ms, now + ms);
        }
        a.merge(&b);
        assert_eq!((a.requests, a.ok, a.warmup), (10, 2, 1));
        let expected = ErrorCounts {
            connect: 1,
            tls: 1,
            timeout: 1,
            reset: 1,
            protocol: 1,
            status_429: 1,
            status_4xx: 1,
            status_5xx: 1,
        };
        assert_eq!(a.errors, expected);
        assert_eq!(a.latency.len(), 5);
        assert_eq!(a.last_done, Some(now + ms));

        let slot = Mutex::new(Progress::default());
        a.flush_progress(&slot);
        let p = slot.lock().unwrap();
        assert_eq!((p.requests, p.errors, p.latency.len()), (10, 8, 5));
    }
}
