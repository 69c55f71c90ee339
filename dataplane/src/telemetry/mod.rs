//! Usage telemetry of a managed node: what its workers counted, per one-minute bucket ×
//! subscription × deployment × backend × model × status class — requests, tokens, the
//! requests Sluice answered itself by reason, those answered from the response cache, and a
//! latency HdrHistogram — handed to the
//! control-plane agent, which reports it exactly once ([`reporter`]).
//!
//! Counted like the metrics (`crate::metrics`): each worker into its own map with no lock or
//! shared atomic per request, published into its slot every upkeep tick; the agent takes
//! what every slot holds once a second ([`crate::metrics::Hub::take_usage`]). Nothing is
//! counted on a node without a control plane.

pub mod reporter;

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use foldhash::fast::RandomState;
use hdrhistogram::serialization::{Serializer, V2Serializer};
use hdrhistogram::Histogram;
use sluice_proto::control::v1::{RejectionCount, UsageRecord};

/// The width of a usage bucket: one minute, the control plane's store resolution. A node
/// reports every second, each report holding what was counted since the last.
pub const BUCKET: Duration = Duration::from_secs(60);

/// What usage is counted under, with names of type `N` (a worker's interned ids, shared
/// names once published).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UsageKey<N> {
    /// The bucket's start, in seconds since the Unix epoch (a whole minute).
    pub minute: u64,
    /// The subscription (empty: unauthenticated).
    pub subscription: N,
    /// The deployment (empty: not routed).
    pub deployment: N,
    /// The backend that answered (empty: none did).
    pub backend: N,
    /// The model the answer named (empty: none).
    pub model: N,
    /// The status class the client got (`2xx` …, `none`).
    pub status_class: &'static str,
}

impl<N> UsageKey<N> {
    /// The same key with its names mapped by `name`.
    pub fn map<M>(&self, name: impl Fn(&N) -> M) -> UsageKey<M> {
        UsageKey {
            minute: self.minute,
            subscription: name(&self.subscription),
            deployment: name(&self.deployment),
            backend: name(&self.backend),
            model: name(&self.model),
            status_class: self.status_class,
        }
    }
}

/// The minute bucket (seconds since the epoch) `at` falls in.
pub fn minute_of(at: SystemTime) -> u64 {
    let secs = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    secs - secs % BUCKET.as_secs()
}

/// What is counted under one [`UsageKey`].
#[derive(Debug, Clone, Default)]
pub struct UsageFigures {
    /// Every request.
    pub requests: u64,
    /// Prompt tokens.
    pub prompt_tokens: u64,
    /// Completion tokens.
    pub completion_tokens: u64,
    /// Total tokens.
    pub total_tokens: u64,
    /// Of `requests`, those Sluice answered itself, by error kind name.
    pub rejections: BTreeMap<&'static str, u64>,
    /// Of `requests`, those answered from the response cache (no backend asked, no tokens
    /// charged); 0 by default.
    pub cache_hits: u64,
    /// Each request's latency in microseconds (auto-resizing, 2 significant digits); `None`
    /// until the first is recorded.
    pub latency_us: Option<Histogram<u64>>,
}

impl UsageFigures {
    /// Records one request's latency.
    pub fn record_latency(&mut self, latency: Duration) {
        let us = u64::try_from(latency.as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        if self.latency_us.is_none() {
            self.latency_us = Histogram::new(2).ok();
        }
        if let Some(h) = &mut self.latency_us {
            // Auto-resizing: records any value.
            let _ = h.record(us);
        }
    }

    /// Adds `other` to these figures.
    pub fn merge(&mut self, other: &UsageFigures) {
        self.requests += other.requests;
        self.prompt_tokens += other.prompt_tokens;
        self.completion_tokens += other.completion_tokens;
        self.total_tokens += other.total_tokens;
        self.cache_hits += other.cache_hits;
        for (reason, n) in &other.rejections {
            *self.rejections.entry(reason).or_default() += n;
        }
        if let Some(theirs) = &other.latency_us {
            match &mut self.latency_us {
                // Both auto-resize: adding never fails.
                Some(ours) => {
                    let _ = ours.add(theirs);
                }
                None => self.latency_us = Some(theirs.clone()),
            }
        }
    }
}

/// Usage by key.
pub type UsageMap<N> = HashMap<UsageKey<N>, UsageFigures, RandomState>;

/// Adds every entry of `from` to `into`, names mapped by `name`.
pub fn merge_into<N, M: Hash + Eq>(
    into: &mut UsageMap<M>,
    from: &UsageMap<N>,
    name: impl Fn(&N) -> M,
) {
    for (key, figures) in from {
        into.entry(key.map(&name)).or_default().merge(figures);
    }
}

/// `usage` as the API carries it, for node `node_id`, in key order.
pub fn records(usage: &UsageMap<Arc<str>>, node_id: &str) -> Vec<UsageRecord> {
    let mut keys: Vec<&UsageKey<Arc<str>>> = usage.keys().collect();
    keys.sort();
    keys.into_iter()
        .filter_map(|key| Some(record(key, usage.get(key)?, node_id)))
        .collect()
}

/// One key's figures as the API carries them, for node `node_id`.
pub fn record(key: &UsageKey<Arc<str>>, figures: &UsageFigures, node_id: &str) -> UsageRecord {
    UsageRecord {
        bucket_start: Some((SystemTime::UNIX_EPOCH + Duration::from_secs(key.minute)).into()),
        bucket_width: prost_types::Duration::try_from(BUCKET).ok(),
        node_id: node_id.to_string(),
        subscription: key.subscription.to_string(),
        deployment: key.deployment.to_string(),
        backend: key.backend.to_string(),
        model: key.model.to_string(),
        status_class: key.status_class.to_string(),
        requests: figures.requests,
        prompt_tokens: figures.prompt_tokens,
        completion_tokens: figures.completion_tokens,
        total_tokens: figures.total_tokens,
        cache_hits: figures.cache_hits,
        rejections: figures
            .rejections
            .iter()
            .map(|(reason, &count)| RejectionCount {
                reason: (*reason).to_string(),
                count,
            })
            .collect(),
        latency_histogram: figures
            .latency_us
            .as_ref()
            .map(serialize)
            .unwrap_or_default(),
        ..UsageRecord::default()
    }
}

/// A histogram in the HdrHistogram V2 serialization (empty on the impossible failure of
/// writing to memory).
pub fn serialize(histogram: &Histogram<u64>) -> Vec<u8> {
    let mut out = Vec::new();
    if V2Serializer::new().serialize(histogram, &mut out).is_err() {
        out.clear();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_merge_counts_reasons_and_histograms() {
        let mut a = UsageFigures {
            requests: 2,
            prompt_tokens: 10,
            rejections: BTreeMap::from([("invalid_api_key", 1)]),
            cache_hits: 1,
            ..UsageFigures::default()
        };
        a.record_latency(Duration::from_millis(5));
        let mut b = UsageFigures {
            requests: 3,
            completion_tokens: 4,
            total_tokens: 14,
            rejections: BTreeMap::from([("invalid_api_key", 2), ("requests_rate_limited", 1)]),
            cache_hits: 2,
            ..UsageFigures::default()
        };
        b.record_latency(Duration::from_secs(20));
        a.merge(&b);
        assert_eq!(
            (
                a.requests,
                a.prompt_tokens,
                a.completion_tokens,
                a.total_tokens
            ),
            (5, 10, 4, 14)
        );
        assert_eq!(a.cache_hits, 3);
        assert_eq!(a.rejections["invalid_api_key"], 3);
        let h = a.latency_us.unwrap();
        assert_eq!(h.len(), 2);
        assert!(h.max() >= 19_000_000, "{}", h.max());
    }

    #[test]
    fn records_carry_every_dimension_and_a_histogram_that_reads_back() {
        let mut usage: UsageMap<Arc<str>> = UsageMap::default();
        let key = UsageKey {
            minute: minute_of(SystemTime::UNIX_EPOCH + Duration::from_secs(3_661)),
            subscription: Arc::from("team-a"),
            deployment: Arc::from("gpt-4o"),
            backend: Arc::from("east"),
            model: Arc::from("gpt-4o-2024-08-06"),
            status_class: "2xx",
        };
        assert_eq!(key.minute, 3_660);
        let figures = usage.entry(key).or_default();
        figures.requests = 1;
        figures.cache_hits = 1;
        figures.record_latency(Duration::from_micros(1_500));
        let records = records(&usage, "edge-1");
        assert_eq!(records.len(), 1);
        let r = &records[0];
        assert_eq!(
            (
                r.node_id.as_str(),
                r.subscription.as_str(),
                r.model.as_str(),
                r.status_class.as_str()
            ),
            ("edge-1", "team-a", "gpt-4o-2024-08-06", "2xx")
        );
        assert_eq!(r.bucket_start.unwrap().seconds, 3_660);
        assert_eq!((r.requests, r.cache_hits), (1, 1));
        let back: Histogram<u64> = hdrhistogram::serialization::Deserializer::new()
            .deserialize(&mut r.latency_histogram.as_slice())
            .unwrap();
        assert_eq!(back.len(), 1);
        assert!(back.equivalent(back.max(), 1_500));
    }
}
