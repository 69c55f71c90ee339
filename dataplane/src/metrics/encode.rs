//! The scrape: the workers' published counts merged, with the process-wide state read at
//! that moment, encoded in the Prometheus / OpenMetrics text format by `prometheus-client`.
//!
//! | family | type | labels |
//! | --- | --- | --- |
//! | `sluice_requests_total` | counter | `deployment`, `backend`, `operation`, `status_class` |
//! | `sluice_tokens_total` | counter | `deployment`, `kind` (`prompt`, `completion`) |
//! | `sluice_limit_rejections_total` | counter | `limit`, `reason` |
//! | `sluice_shadow_limit_would_reject_total` | counter | `limit` |
//! | `sluice_upstream_attempts_total` | counter | `deployment`, `backend`, `outcome` |
//! | `sluice_failovers_total` | counter | `deployment` |
//! | `sluice_retries_over_budget_total` | counter | `deployment` |
//! | `sluice_upstream_latency_seconds` | histogram | `deployment`, `backend` |
//! | `sluice_time_to_first_token_seconds` | histogram | `deployment` |
//! | `sluice_inter_token_gap_seconds` | histogram | `deployment` |
//! | `sluice_backend_cooling_down` | gauge | `backend` |
//! | `sluice_backend_consecutive_failures` | gauge | `backend` |
//! | `sluice_backend_cooldowns_total` | counter | `backend` |
//! | `sluice_backend_ejected` | gauge | `backend` |
//! | `sluice_backend_health_check_down` | gauge | `backend` |
//! | `sluice_backend_ejections_total` | counter | `backend` |
//! | `sluice_audit_queue_depth` | gauge | |
//! | `sluice_audit_queued_bytes` | gauge | |
//! | `sluice_audit_written_total` | counter | `sink` |
//! | `sluice_audit_dropped_total` | counter | `sink` |
//! | `sluice_audit_write_errors_total` | counter | `sink` |
//! | `sluice_open_connections` | gauge | `worker` |
//! | `sluice_tls_handshake_failures_total` | counter | `worker` |
//! | `sluice_config_reloads_total` | counter | `outcome` (`ok`, `error`) |

use std::sync::atomic::Ordering;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use super::{Counts, Histogram, Hub, GAP_BUCKETS, LATENCY_BUCKETS};
use crate::server::Loaded;

/// The text of a scrape of `hub` and the config in force, `loaded`.
pub fn render(hub: &Hub, loaded: &Loaded, now_ms: u64) -> String {
    let mut counts: Counts<Arc<str>> = Counts::default();
    let mut workers = Vec::new();
    for (id, slot) in hub.workers() {
        if let Ok(published) = slot.lock() {
            counts.add(&published.counts, Arc::clone);
            workers.push((
                id,
                published.open_connections,
                published.tls_handshake_failures,
            ));
        }
    }
    workers.sort_unstable();
    let backends = loaded
        .backends
        .iter()
        .map(|b| BackendState {
            name: b.name.clone(),
            cooling_down: b.health.cool_until_ms() > now_ms,
            consecutive_failures: b.health.consecutive_failures(),
            cooldowns: b.health.cooldowns(),
            ejected: b.health.is_ejected(),
            checked_down: b.health.is_checked_down(),
            ejections: b.health.ejections(),
        })
        .collect();
    let audit = loaded.audit.as_ref().map(|recorder| AuditState {
        depth: recorder.queue_depth(),
        bytes: recorder.queued_bytes(),
        sinks: recorder
            .sinks()
            .iter()
            .map(|s| {
                (
                    s.name.clone(),
                    s.written.load(Ordering::Relaxed),
                    s.dropped.load(Ordering::Relaxed),
                    s.errors.load(Ordering::Relaxed),
                )
            })
            .collect(),
    });
    let scrape = Scrape {
        counts,
        workers,
        backends,
        audit,
        reloads: (
            hub.reloads_ok.load(Ordering::Relaxed),
            hub.reloads_failed.load(Ordering::Relaxed),
        ),
    };
    let mut registry = Registry::default();
    registry.register_collector(Box::new(scrape));
    let mut text = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut text, &registry);
    text
}

#[derive(Debug)]
struct BackendState {
    name: String,
    cooling_down: bool,
    consecutive_failures: u32,
    cooldowns: u64,
    ejected: bool,
    checked_down: bool,
    ejections: u64,
}

#[derive(Debug)]
struct AuditState {
    depth: usize,
    bytes: usize,
    /// (name, written, dropped, errors)
    sinks: Vec<(String, u64, u64, u64)>,
}

#[derive(Debug)]
struct Scrape {
    counts: Counts<Arc<str>>,
    /// (worker, open connections, TLS handshake failures)
    workers: Vec<(usize, usize, u64)>,
    backends: Vec<BackendState>,
    audit: Option<AuditState>,
    /// (ok, failed)
    reloads: (u64, u64),
}

type Labels<'a> = Vec<(&'static str, &'a str)>;

/// Encodes one family of `kind` from `(labels, value)` samples.
fn family<'a, I>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    samples: I,
) -> std::fmt::Result
where
    I: IntoIterator<Item = (Labels<'a>, u64)>,
{
    let mut samples: Vec<(Labels<'a>, u64)> = samples.into_iter().collect();
    samples.sort_unstable();
    let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in &samples {
        let mut sample = metric.encode_family(labels)?;
        match kind {
            MetricType::Counter => sample.encode_counter::<NoLabelSet, _, u64>(value, None)?,
            _ => sample.encode_gauge(&(*value as i64))?,
        }
    }
    Ok(())
}

/// Encodes one histogram family (seconds) with `bounds`.
fn histograms<'a, I>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    bounds: &[f64],
    samples: I,
) -> std::fmt::Result
where
    I: IntoIterator<Item = (Labels<'a>, &'a Histogram)>,
{
    let mut samples: Vec<(Labels<'a>, &Histogram)> = samples.into_iter().collect();
    samples.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    let mut metric =
        encoder.encode_descriptor(name, help, Some(&Unit::Seconds), MetricType::Histogram)?;
    for (labels, h) in &samples {
        let buckets: Vec<(f64, u64)> = bounds
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(h.buckets.iter().copied().chain(std::iter::repeat(0)))
            .collect();
        metric
            .encode_family(labels)?
            .encode_histogram::<NoLabelSet>(h.sum, h.count, &buckets, None)?;
    }
    Ok(())
}

impl Collector for Scrape {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        use MetricType::{Counter, Gauge};
        let c = &self.counts;
        family(
            &mut e,
            "sluice_requests",
            "Requests completed, by deployment, backend that answered, operation and status class of the answer.",
            Counter,
            c.requests.iter().map(|((d, b, o, s), n)| {
                (
                    vec![("deployment", &**d), ("backend", &**b), ("operation", *o), ("status_class", *s)],
                    *n,
                )
            }),
        )?;
        family(
            &mut e,
            "sluice_tokens",
            "Tokens charged (the backend's usage, else Sluice's estimate), by deployment and kind.",
            Counter,
            c.tokens
                .iter()
                .map(|((d, k), n)| (vec![("deployment", &**d), ("kind", *k)], *n)),
        )?;
        family(
            &mut e,
            "sluice_limit_rejections",
            "Requests refused by a limit, by limit and reason.",
            Counter,
            c.rejections
                .iter()
                .map(|((l, r), n)| (vec![("limit", &**l), ("reason", *r)], *n)),
        )?;
        family(
            &mut e,
            "sluice_shadow_limit_would_reject",
            "Requests a shadow limit would have refused (it refused nothing), by limit.",
            Counter,
            c.shadow_rejections
                .iter()
                .map(|(l, n)| (vec![("limit", &**l)], *n)),
        )?;
        family(
            &mut e,
            "sluice_upstream_attempts",
            "Upstream attempts, by deployment, backend and outcome.",
            Counter,
            c.attempts.iter().map(|((d, b, o), n)| {
                (
                    vec![("deployment", &**d), ("backend", &**b), ("outcome", *o)],
                    *n,
                )
            }),
        )?;
        family(
            &mut e,
            "sluice_cache_lookups",
            "Response cache lookups, by deployment and result (hit, miss, bypass).",
            Counter,
            c.cache_lookups
                .iter()
                .map(|((d, r), n)| (vec![("deployment", &**d), ("result", *r)], *n)),
        )?;
        family(
            &mut e,
            "sluice_failovers",
            "Requests that needed more than one upstream attempt, by deployment.",
            Counter,
            c.failovers
                .iter()
                .map(|(d, n)| (vec![("deployment", &**d)], *n)),
        )?;
        family(
            &mut e,
            "sluice_retries_over_budget",
            "Requests whose retry the worker's retry budget refused, by deployment.",
            Counter,
            c.retries_over_budget
                .iter()
                .map(|(d, n)| (vec![("deployment", &**d)], *n)),
        )?;
        histograms(
            &mut e,
            "sluice_upstream_latency",
            "Time from an answering attempt's start to its answer's head.",
            &LATENCY_BUCKETS,
            c.upstream_latency
                .iter()
                .map(|((d, b), h)| (vec![("deployment", &**d), ("backend", &**b)], h)),
        )?;
        histograms(
            &mut e,
            "sluice_time_to_first_token",
            "Time from a streamed request's head to its answer's first body bytes.",
            &LATENCY_BUCKETS,
            c.ttft.iter().map(|(d, h)| (vec![("deployment", &**d)], h)),
        )?;
        histograms(
            &mut e,
            "sluice_inter_token_gap",
            "Gaps between the body pieces of a streamed answer.",
            &GAP_BUCKETS,
            c.gaps.iter().map(|(d, h)| (vec![("deployment", &**d)], h)),
        )?;
        family(
            &mut e,
            "sluice_backend_cooling_down",
            "1 while a backend is cooling down (skipped by selection), else 0.",
            Gauge,
            self.backends.iter().map(|b| {
                (
                    vec![("backend", b.name.as_str())],
                    u64::from(b.cooling_down),
                )
            }),
        )?;
        family(
            &mut e,
            "sluice_backend_ejected",
            "1 while a backend is ejected by outlier detection (or half-open, waiting for its probe), else 0.",
            Gauge,
            self.backends
                .iter()
                .map(|b| (vec![("backend", b.name.as_str())], u64::from(b.ejected))),
        )?;
        family(
            &mut e,
            "sluice_backend_health_check_down",
            "1 while a backend's active health check has it out of its pools, else 0.",
            Gauge,
            self.backends.iter().map(|b| {
                (
                    vec![("backend", b.name.as_str())],
                    u64::from(b.checked_down),
                )
            }),
        )?;
        family(
            &mut e,
            "sluice_backend_ejections",
            "Times outlier detection ejected a backend.",
            Counter,
            self.backends
                .iter()
                .map(|b| (vec![("backend", b.name.as_str())], b.ejections)),
        )?;
        family(
            &mut e,
            "sluice_backend_consecutive_failures",
            "A backend's current streak of failed attempts.",
            Gauge,
            self.backends.iter().map(|b| {
                (
                    vec![("backend", b.name.as_str())],
                    u64::from(b.consecutive_failures),
                )
            }),
        )?;
        family(
            &mut e,
            "sluice_backend_cooldowns",
            "Cool-downs a backend was put in (429s, and 5xx answers naming a retry time).",
            Counter,
            self.backends
                .iter()
                .map(|b| (vec![("backend", b.name.as_str())], b.cooldowns)),
        )?;
        if let Some(audit) = &self.audit {
            family(
                &mut e,
                "sluice_audit_queue_depth",
                "Audit records waiting for the writer.",
                Gauge,
                [(Vec::new(), audit.depth as u64)],
            )?;
            family(
                &mut e,
                "sluice_audit_queued_bytes",
                "Bytes of content the queued audit records hold (bounded by max_queue_bytes).",
                Gauge,
                [(Vec::new(), audit.bytes as u64)],
            )?;
            let per_sink = |pick: fn(&(String, u64, u64, u64)) -> u64| {
                audit
                    .sinks
                    .iter()
                    .map(move |s| (vec![("sink", s.0.as_str())], pick(s)))
            };
            family(
                &mut e,
                "sluice_audit_written",
                "Audit records written, by sink.",
                Counter,
                per_sink(|s| s.1),
            )?;
            family(
                &mut e,
                "sluice_audit_dropped",
                "Audit records dropped (queue full under overflow = \"drop\", or a failed write), by sink.",
                Counter,
                per_sink(|s| s.2),
            )?;
            family(
                &mut e,
                "sluice_audit_write_errors",
                "Failed writes, syncs, rotations or reopenings of an audit sink, by sink.",
                Counter,
                per_sink(|s| s.3),
            )?;
        }
        let worker_ids: Vec<String> = self.workers.iter().map(|w| w.0.to_string()).collect();
        family(
            &mut e,
            "sluice_open_connections",
            "Client connections open, by worker.",
            Gauge,
            self.workers
                .iter()
                .zip(&worker_ids)
                .map(|(w, id)| (vec![("worker", id.as_str())], w.1 as u64)),
        )?;
        family(
            &mut e,
            "sluice_tls_handshake_failures",
            "TLS handshakes that failed, were refused or timed out, by worker.",
            Counter,
            self.workers
                .iter()
                .zip(&worker_ids)
                .map(|(w, id)| (vec![("worker", id.as_str())], w.2)),
        )?;
        family(
            &mut e,
            "sluice_config_reloads",
            "Config reloads, by outcome (error: refused, the running config kept).",
            Counter,
            [
                (vec![("outcome", "ok")], self.reloads.0),
                (vec![("outcome", "error")], self.reloads.1),
            ],
        )?;
        Ok(())
    }
}
