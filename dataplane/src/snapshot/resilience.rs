//! How a deployment's requests survive a failing backend: the retry policy (Envoy's
//! `retry_policy`, APIM's `retry`) and outlier detection (Envoy's `outlier_detection`), as
//! compiled from a `[[deployment]]`'s `retry = { … }` and `outlier_detection = { … }`.

use std::time::Duration;

/// A deployment's retry policy (config `retry = { … }`; README "How a request is
/// forwarded").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Most upstream attempts one request may make, the first included (config
    /// `max_attempts`, 1–10). Default 3.
    pub max_attempts: u32,
    /// Longest one attempt may wait for its answer's first byte before the next candidate is
    /// tried (config `per_try_timeout`). `None` (the default): `server.timeouts.upstream_first_byte`,
    /// after which the request ends in 504 — a request that reached a backend is not sent
    /// to another unless this is set (the backend may still be running it).
    pub per_try_timeout: Option<Duration>,
    /// Longest all attempts together may take until an answer's head arrives (config
    /// `total_timeout`); over it the request ends in 504 (`upstream_timeout`). Streaming the
    /// answer afterwards is bounded by `stream_idle`, not by this. Default: none.
    pub total_timeout: Option<Duration>,
    /// Which 5xx answers are retried on another candidate (config `retriable_status_codes`,
    /// each 500–599). Default 500, 502, 503, 504. A 429 is always retried.
    pub retriable_status_codes: Vec<u16>,
    /// Longest cool-down a backend's answer can ask for (`retry-after-ms`, `retry-after`,
    /// `x-ratelimit-reset-*`; config `max_cool_down`). Default 60 s.
    pub max_cool_down: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            per_try_timeout: None,
            total_timeout: None,
            retriable_status_codes: vec![500, 502, 503, 504],
            max_cool_down: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// Whether an answer with `status` goes to the next candidate (when one is left).
    pub fn retries_status(&self, status: u16) -> bool {
        status == 429 || self.retriable_status_codes.contains(&status)
    }
}

/// A backend's active health check (config `health_check = { … }` on an `azure` or
/// `openai` backend; Envoy's `health_checks`): every `interval` a side thread sends
/// `GET {url path}{path}` with the backend's credential and reads the status line;
/// `unhealthy_threshold` failures in a row (another status, no answer within `timeout`, a
/// refused connection or TLS failure) take the backend out of every pool until
/// `healthy_threshold` successes in a row bring it back. Off unless configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    /// The path probed, after the URL's own path prefix (config `path`, starting with `/`).
    pub path: String,
    /// Time between probes (config `interval`). Default 10 s.
    pub interval: Duration,
    /// Longest a probe may take, connect to status line (config `timeout`). Default 2 s.
    pub timeout: Duration,
    /// The status a healthy backend answers (config `expected_status`). Default 200.
    pub expected_status: u16,
    /// Failed probes in a row that mark the backend down (config `unhealthy_threshold`).
    /// Default 2.
    pub unhealthy_threshold: u32,
    /// Good probes in a row that bring it back (config `healthy_threshold`). Default 1.
    pub healthy_threshold: u32,
}

/// A deployment's outlier detection (config `outlier_detection = { … }`): how failures eject
/// a backend from its pools for a while, then let one probe request decide whether it is back
/// (half-open).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutlierDetection {
    /// Failures in a row that eject a backend (config `consecutive_failures`, ≥ 1): connect
    /// failures, timeouts, broken answers and 5xx answers; a 429 is throttling, not failure.
    /// Default 5.
    pub consecutive_failures: u32,
    /// The first ejection's length; the n-th in a row lasts n times as long (config
    /// `base_ejection_time`). Default 30 s.
    pub base_ejection_time: Duration,
    /// Longest one ejection lasts (config `max_ejection_time`). Default 300 s.
    pub max_ejection_time: Duration,
    /// Most of a pool's members ejected at once, in percent (config `max_ejected_percent`,
    /// 0–100); a failure that would eject more leaves the backend in. Default 50.
    pub max_ejected_percent: u8,
}

impl Default for OutlierDetection {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            base_ejection_time: Duration::from_secs(30),
            max_ejection_time: Duration::from_secs(300),
            max_ejected_percent: 50,
        }
    }
}
