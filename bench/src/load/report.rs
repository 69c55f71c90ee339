//! The outcome of a load run: counts, errors by kind and HdrHistogram percentiles, as a
//! serde struct (written with `--json`, read back by `compare`) and as a table for people.

use std::fmt;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// How requests were paced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// A fixed rate; latency counts from each request's intended send time.
    Open,
    /// Each connection sends its next request when the last answer is complete.
    Closed,
}

/// Failed requests by kind. Every measured request is either ok or exactly one of these.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorCounts {
    /// The connection could not be opened (refused, unreachable, or not within the timeout).
    pub connect: u64,
    /// The TLS handshake failed (certificate not trusted, name mismatch, alert) or did not
    /// finish within the timeout (absent in reports from before TLS: 0).
    #[serde(default)]
    pub tls: u64,
    /// No complete answer within `--timeout` of sending.
    pub timeout: u64,
    /// The connection was reset or closed before the answer was complete.
    pub reset: u64,
    /// The answer could not be parsed (head or chunked framing).
    pub protocol: u64,
    /// Complete answers with status 429.
    pub status_429: u64,
    /// Complete answers with another 4xx status.
    pub status_4xx: u64,
    /// Complete answers with a 5xx status.
    pub status_5xx: u64,
}

impl ErrorCounts {
    /// All failed requests.
    pub fn total(&self) -> u64 {
        self.connect
            + self.tls
            + self.timeout
            + self.reset
            + self.protocol
            + self.status_429
            + self.status_4xx
            + self.status_5xx
    }

    /// Adds `other`'s counts to these.
    pub fn add(&mut self, other: &Self) {
        self.connect += other.connect;
        self.tls += other.tls;
        self.timeout += other.timeout;
        self.reset += other.reset;
        self.protocol += other.protocol;
        self.status_429 += other.status_429;
        self.status_4xx += other.status_4xx;
        self.status_5xx += other.status_5xx;
    }
}

/// Summary of one histogram, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    /// Values recorded.
    pub count: u64,
    /// Mean, to 0.1 µs.
    pub mean: f64,
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Largest value.
    pub max: u64,
}

impl Percentiles {
    /// The summary of `h` (all zero when it is empty).
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        Self {
            count: h.len(),
            mean: round_to(h.mean(), 10.0),
            p50: h.value_at_quantile(0.5),
            p90: h.value_at_quantile(0.9),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }
}

/// One point of the latency-by-percentile curve: `percentile` % of measured requests took
/// at most `latency_us`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CurvePoint {
    /// 0..=100, to 1e-6.
    pub percentile: f64,
    /// Microseconds.
    pub latency_us: u64,
}

/// Points per halving of the distance to 100 %: 0, 10, …, 50, 55, …, 75, 77.5, …, 90, …,
/// 99, …, 99.9, …, 100 (HdrHistogram's percentile distribution), for log-scaled plots.
const CURVE_TICKS_PER_HALF: u32 = 5;

/// The latency curve of `h`. For each tick percentile it takes the latency reached there,
/// and reports it with the exact share of requests at or below that latency (not the tick),
/// so the share slower than any plotted latency can be read off the curve. Ends at the
/// maximum, 100 %.
pub fn curve(h: &Histogram<u64>) -> Vec<CurvePoint> {
    let total = h.len();
    if total == 0 {
        return Vec::new();
    }
    let mut ticks: Vec<f64> = (0..5).map(|i| f64::from(i) * 10.0).collect();
    // Then 5 ticks in each half of the remaining distance to 100 %, until that distance is
    // less than one request.
    let mut distance = 50.0;
    while distance * total as f64 / 100.0 >= 0.5 && distance > 1e-9 {
        let step = distance / 2.0 / f64::from(CURVE_TICKS_PER_HALF);
        ticks.extend((0..CURVE_TICKS_PER_HALF).map(|i| 100.0 - distance + f64::from(i) * step));
        distance /= 2.0;
    }
    let mut points: Vec<CurvePoint> = Vec::with_capacity(ticks.len() + 1);
    for tick in ticks {
        let latency = h
            .highest_equivalent(h.value_at_quantile(tick / 100.0))
            .min(h.max());
        if points.last().is_some_and(|p| p.latency_us >= latency) {
            continue;
        }
        let at_or_below = h.count_between(0, latency);
        points.push(CurvePoint {
            percentile: round_to(at_or_below as f64 * 100.0 / total as f64, 1e6),
            latency_us: latency,
        });
    }
    if points.last().is_none_or(|p| p.latency_us < h.max()) {
        points.push(CurvePoint {
            percentile: 100.0,
            latency_us: h.max(),
        });
    }
    points
}

/// What a run measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoadReport {
    /// `--label`, else the URL.
    pub label: String,
    /// The URL loaded.
    pub url: String,
    /// Open or closed loop.
    pub mode: Mode,
    /// Target rate in requests per second (open loop), `null` in closed loop.
    pub rate: Option<f64>,
    /// Connections, all threads together.
    pub connections: usize,
    /// Threads (one runtime each).
    pub threads: usize,
    /// Length of the measured part: from the end of warm-up to the last measured answer.
    pub duration_s: f64,
    /// Measured requests, completed or failed (warm-up excluded).
    pub requests: u64,
    /// Measured requests answered with a 1xx, 2xx or 3xx status.
    pub ok: u64,
    /// Measured requests that failed, by kind.
    pub errors: ErrorCounts,
    /// Achieved rate: `requests / duration_s`.
    pub rps: f64,
    /// Latency of complete answers (any status), from the intended send time in open loop
    /// and from the moment the connection was free in closed loop.
    pub latency_us: Percentiles,
    /// With `--stream`: time from the same origin to the first data event.
    pub ttft_us: Option<Percentiles>,
    /// With `--stream`: time between consecutive data events of an answer.
    pub event_gap_us: Option<Percentiles>,
    /// Latency by percentile, log-spaced towards 100 %.
    pub latency_curve: Vec<CurvePoint>,
    /// Warm-up requests sent (completed or failed), not otherwise counted. Not in the
    /// spec's list: added so `requests + warmup_requests` can be checked against what a
    /// server saw.
    pub warmup_requests: u64,
}

/// Rounds to a multiple of `1/per_unit`, so figures print tidily and survive a JSON
/// round trip exactly.
pub fn round_to(x: f64, per_unit: f64) -> f64 {
    (x * per_unit).round() / per_unit
}

/// `812us`, `1.24ms`, `2.31s`.
pub fn fmt_us(us: u64) -> String {
    if us < 1_000 {
        format!("{us}us")
    } else if us < 1_000_000 {
        format!("{:.2}ms", us as f64 / 1e3)
    } else {
        format!("{:.2}s", us as f64 / 1e6)
    }
}

impl fmt::Display for LoadReport {
    /// The human table `run_cli` prints.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.label == self.url {
            writeln!(f, "{}", self.url)?;
        } else {
            writeln!(f, "{}  {}", self.label, self.url)?;
        }
        let pace = match (self.mode, self.rate) {
            (Mode::Open, Some(rate)) => format!("open loop at {rate} req/s"),
            _ => "closed loop".to_string(),
        };
        writeln!(
            f,
            "{pace}, {} connection{}, {} thread{}, {:.2} s measured ({} warm-up requests)",
            self.connections,
            plural(self.connections),
            self.threads,
            plural(self.threads),
            self.duration_s,
            self.warmup_requests
        )?;
        writeln!(
            f,
            "requests {}  ok {}  errors {}  {:.1} req/s",
            self.requests,
            self.ok,
            self.errors.total(),
            self.rps
        )?;
        let e = &self.errors;
        if e.total() > 0 {
            writeln!(
                f,
                "errors: connect {}, tls {}, timeout {}, reset {}, protocol {}, 429 {}, 4xx {}, 5xx {}",
                e.connect, e.tls, e.timeout, e.reset, e.protocol, e.status_429, e.status_4xx, e.status_5xx
            )?;
        }
        writeln!(
            f,
            "{:<10} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "", "count", "mean", "p50", "p90", "p99", "p99.9", "max"
        )?;
        let mut row = |name: &str, p: &Percentiles| {
            writeln!(
                f,
                "{name:<10} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
                p.count,
                fmt_us(p.mean.round() as u64),
                fmt_us(p.p50),
                fmt_us(p.p90),
                fmt_us(p.p99),
                fmt_us(p.p999),
                fmt_us(p.max)
            )
        };
        row("latency", &self.latency_us)?;
        if let Some(p) = &self.ttft_us {
            row("ttft", p)?;
        }
        if let Some(p) = &self.event_gap_us {
            row("event gap", p)?;
        }
        Ok(())
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn curve_reads_exact_shares() {
        let mut h = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).unwrap();
        for v in 1..=900 {
            h.record(v).unwrap();
        }
        h.record_n(100_000, 100).unwrap();
        let c = curve(&h);
        assert_eq!(c.first().unwrap().percentile, 0.1);
        assert_eq!(c.first().unwrap().latency_us, 1);
        let last = c.last().unwrap();
        assert_eq!(last.percentile, 100.0);
        assert_eq!(last.latency_us, h.max());
        let below: Vec<_> = c.iter().filter(|p| p.latency_us < 100_000).collect();
        assert_eq!(below.last().unwrap().percentile, 90.0);
        assert!(c.windows(2).all(|w| w[0].percentile < w[1].percentile));
        assert!(c.windows(2).all(|w| w[0].latency_us < w[1].latency_us));
        assert!(c.len() > 10);
    }

    #[test]
    fn formats_microseconds() {
        assert_eq!(fmt_us(812), "812us");
        assert_eq!(fmt_us(1_240), "1.24ms");
        assert_eq!(fmt_us(2_310_000), "2.31s");
    }
}
