//! Prometheus metrics (DESIGN.md "Observability"), counted per worker with no shared atomic
//! touched per request: each worker counts into its own [`WorkerMetrics`] (plain integers
//! behind a `RefCell`, keyed by names it interns), and publishes what it counted into its
//! [`Published`] slot every upkeep tick (100 ms) under an uncontended lock. A scrape merges
//! the workers' slots with the process-wide state (backend health, the audit log, reloads)
//! and encodes it with `prometheus-client` ([`encode`]).
//!
//! Every label set is bounded by the config: deployments, backends, limits, operations,
//! status classes, outcomes — never a client-chosen value.

pub mod encode;

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use foldhash::fast::RandomState;

use crate::telemetry::{merge_into, UsageMap};

/// Upper bounds (seconds) of the upstream latency and time-to-first-token buckets.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];
/// Upper bounds (seconds) of the inter-token gap buckets.
pub const GAP_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// A histogram with fixed buckets: counts per bucket (not cumulative), their sum and count.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histogram {
    /// Observations per bucket of the family's bounds, plus one past the last bound.
    pub buckets: Vec<u64>,
    /// Sum of the observations, in seconds.
    pub sum: f64,
    /// Observations.
    pub count: u64,
}

impl Histogram {
    fn observe(&mut self, bounds: &[f64], value: Duration) {
        if self.buckets.len() != bounds.len() + 1 {
            self.buckets = vec![0; bounds.len() + 1];
        }
        let secs = value.as_secs_f64();
        let i = bounds.partition_point(|&b| b < secs);
        self.buckets[i] += 1;
        self.sum += secs;
        self.count += 1;
    }

    fn merge(&mut self, other: &Histogram) {
        if self.buckets.len() < other.buckets.len() {
            self.buckets.resize(other.buckets.len(), 0);
        }
        for (a, b) in self.buckets.iter_mut().zip(&other.buckets) {
            *a += b;
        }
        self.sum += other.sum;
        self.count += other.count;
    }
}

/// The status class label of a status: `2xx` … `5xx`, or `none` when no answer head went
/// out (the client left first).
pub fn status_class(status: Option<u16>) -> &'static str {
    match status {
        Some(100..=199) => "1xx",
        Some(200..=299) => "2xx",
        Some(300..=399) => "3xx",
        Some(400..=499) => "4xx",
        Some(500..=599) => "5xx",
        _ => "none",
    }
}

/// Everything a worker counts, keyed by names of type `N` (interned ids on the worker,
/// shared names once published).
#[derive(Debug, Clone)]
pub struct Counts<N> {
    /// Requests by (deployment, backend, operation, status class).
    pub requests: HashMap<(N, N, &'static str, &'static str), u64, RandomState>,
    /// Tokens by (deployment, kind: `prompt` or `completion`).
    pub tokens: HashMap<(N, &'static str), u64, RandomState>,
    /// Limit refusals by (limit label, reason: the error kind's name).
    pub rejections: HashMap<(N, &'static str), u64, RandomState>,
    /// Requests a shadow limit would have refused, by limit label.
    pub shadow_rejections: HashMap<N, u64, RandomState>,
    /// Upstream attempts by (deployment, backend, outcome).
    pub attempts: HashMap<(N, N, &'static str), u64, RandomState>,
    /// Requests that needed more than one attempt, by deployment.
    pub failovers: HashMap<N, u64, RandomState>,
    /// Requests whose retry the worker's retry budget refused, by deployment.
    pub retries_over_budget: HashMap<N, u64, RandomState>,
    /// The answering attempt's time to its answer's head, by (deployment, backend).
    pub upstream_latency: HashMap<(N, N), Histogram, RandomState>,
    /// A stream's time to its first body bytes, by deployment.
    pub ttft: HashMap<N, Histogram, RandomState>,
    /// Gaps between a stream's body pieces, by deployment.
    pub gaps: HashMap<N, Histogram, RandomState>,
    /// Response cache lookups by (deployment, result: `hit`, `miss` or `bypass`).
    pub cache_lookups: HashMap<(N, &'static str), u64, RandomState>,
}

impl<N> Default for Counts<N> {
    fn default() -> Self {
        Self {
            requests: HashMap::default(),
            tokens: HashMap::default(),
            rejections: HashMap::default(),
            shadow_rejections: HashMap::default(),
            attempts: HashMap::default(),
            failovers: HashMap::default(),
            retries_over_budget: HashMap::default(),
            upstream_latency: HashMap::default(),
            ttft: HashMap::default(),
            gaps: HashMap::default(),
            cache_lookups: HashMap::default(),
        }
    }
}

impl<N: Hash + Eq> Counts<N> {
    fn is_empty(&self) -> bool {
        self.requests.is_empty()
            && self.tokens.is_empty()
            && self.rejections.is_empty()
            && self.shadow_rejections.is_empty()
            && self.attempts.is_empty()
            && self.failovers.is_empty()
            && self.retries_over_budget.is_empty()
            && self.upstream_latency.is_empty()
            && self.ttft.is_empty()
            && self.gaps.is_empty()
            && self.cache_lookups.is_empty()
    }

    /// Adds every figure of `other` (its names mapped by `name`) to this.
    fn add<M>(&mut self, other: &Counts<M>, name: impl Fn(&M) -> N) {
        for ((d, b, o, s), n) in &other.requests {
            *self.requests.entry((name(d), name(b), o, s)).or_default() += n;
        }
        for ((d, k), n) in &other.tokens {
            *self.tokens.entry((name(d), k)).or_default() += n;
        }
        for ((l, r), n) in &other.rejections {
            *self.rejections.entry((name(l), r)).or_default() += n;
        }
        for (l, n) in &other.shadow_rejections {
            *self.shadow_rejections.entry(name(l)).or_default() += n;
        }
        for ((d, b, o), n) in &other.attempts {
            *self.attempts.entry((name(d), name(b), o)).or_default() += n;
        }
        for (d, n) in &other.failovers {
            *self.failovers.entry(name(d)).or_default() += n;
        }
        for (d, n) in &other.retries_over_budget {
            *self.retries_over_budget.entry(name(d)).or_default() += n;
        }
        for ((d, b), h) in &other.upstream_latency {
            self.upstream_latency
                .entry((name(d), name(b)))
                .or_default()
                .merge(h);
        }
        for (d, h) in &other.ttft {
            self.ttft.entry(name(d)).or_default().merge(h);
        }
        for (d, h) in &other.gaps {
            self.gaps.entry(name(d)).or_default().merge(h);
        }
        for ((d, r), n) in &other.cache_lookups {
            *self.cache_lookups.entry((name(d), r)).or_default() += n;
        }
    }

    fn clear(&mut self) {
        self.requests.clear();
        self.tokens.clear();
        self.rejections.clear();
        self.shadow_rejections.clear();
        self.attempts.clear();
        self.failovers.clear();
        self.retries_over_budget.clear();
        self.upstream_latency.clear();
        self.ttft.clear();
        self.gaps.clear();
        self.cache_lookups.clear();
    }
}

/// The most names a worker interns before values a backend chose count as [`OTHER`].
pub const MAX_NAMES: usize = 4096;

/// What a chosen value past [`MAX_NAMES`] counts as.
pub const OTHER: &str = "(other)";

/// An interned name: an index into a worker's name table.
pub type Sym = u32;

/// What a worker has published: its counts so far (names shared) and its gauges.
#[derive(Debug, Default)]
pub struct Published {
    /// Everything counted since start.
    pub counts: Counts<Arc<str>>,
    /// Connections open now.
    pub open_connections: usize,
    /// TLS handshakes that failed, were refused or timed out.
    pub tls_handshake_failures: u64,
    /// Usage counted since the agent last took it ([`Hub::take_usage`]); empty on a node
    /// without a control plane.
    pub usage: UsageMap<Arc<str>>,
}

/// One worker's metrics: counted on its thread only, published every upkeep tick.
pub struct WorkerMetrics {
    local: RefCell<Local>,
    published: Arc<Mutex<Published>>,
    /// Whether usage telemetry is counted (a managed node's agent takes it).
    counts_usage: bool,
}

struct Local {
    counts: Counts<Sym>,
    usage: UsageMap<Sym>,
    ids: HashMap<Box<str>, Sym, RandomState>,
    names: Vec<Arc<str>>,
}

impl Local {
    fn intern(&mut self, name: &str) -> Sym {
        if let Some(&id) = self.ids.get(name) {
            return id;
        }
        let id = Sym::try_from(self.names.len()).unwrap_or(Sym::MAX);
        self.names.push(Arc::from(name));
        self.ids.insert(name.into(), id);
        id
    }
}

/// The names of what one request is counted under, interned.
pub struct Names<'a> {
    /// The worker's table.
    local: &'a mut Local,
}

impl Names<'_> {
    /// The id of `name`.
    pub fn of(&mut self, name: &str) -> Sym {
        self.local.intern(name)
    }

    /// The id of `name`, a value a backend chose (a model name): once the worker's table
    /// holds [`MAX_NAMES`] names, a name not in it counts as `(other)`, so a backend that
    /// names a new model in every answer cannot grow it without bound.
    pub fn of_chosen(&mut self, name: &str) -> Sym {
        if self.local.names.len() >= MAX_NAMES && !self.local.ids.contains_key(name) {
            return self.local.intern(OTHER);
        }
        self.local.intern(name)
    }

    /// The counts to add to.
    pub fn counts(&mut self) -> &mut Counts<Sym> {
        &mut self.local.counts
    }

    /// The usage telemetry to add to.
    pub fn usage(&mut self) -> &mut UsageMap<Sym> {
        &mut self.local.usage
    }

    /// Observes `value` into `histogram` with `bounds`.
    pub fn observe(histogram: &mut Histogram, bounds: &[f64], value: Duration) {
        histogram.observe(bounds, value);
    }
}

impl WorkerMetrics {
    /// A worker's metrics publishing into `published` (registered with the [`Hub`]);
    /// `counts_usage`: count usage telemetry too ([`Hub::counts_usage`]).
    pub fn new(published: Arc<Mutex<Published>>, counts_usage: bool) -> Self {
        Self {
            local: RefCell::new(Local {
                counts: Counts::default(),
                usage: UsageMap::default(),
                ids: HashMap::default(),
                names: Vec::new(),
            }),
            published,
            counts_usage,
        }
    }

    /// Whether usage telemetry is counted.
    pub fn counts_usage(&self) -> bool {
        self.counts_usage
    }

    /// Counts something: `count` gets the worker's name table and counts. Does nothing if
    /// called from within itself.
    pub fn count(&self, count: impl FnOnce(&mut Names<'_>)) {
        if let Ok(mut local) = self.local.try_borrow_mut() {
            count(&mut Names { local: &mut local });
        }
    }

    /// Adds what was counted since the last publish to the published figures, and sets the
    /// gauges.
    pub fn publish(&self, open_connections: usize, tls_handshake_failures: u64) {
        let Ok(mut local) = self.local.try_borrow_mut() else {
            return;
        };
        let Ok(mut published) = self.published.lock() else {
            return;
        };
        published.open_connections = open_connections;
        published.tls_handshake_failures = tls_handshake_failures;
        let Local {
            counts,
            usage,
            names,
            ..
        } = &mut *local;
        let name = |&id: &Sym| {
            names
                .get(id as usize)
                .cloned()
                .unwrap_or_else(|| Arc::from(""))
        };
        if !usage.is_empty() {
            merge_into(&mut published.usage, usage, name);
            usage.clear();
        }
        if counts.is_empty() {
            return;
        }
        published.counts.add(counts, name);
        counts.clear();
    }
}

/// What every worker publishes into, and the process-wide counters, for the scrape.
#[derive(Debug, Default)]
pub struct Hub {
    workers: Mutex<Vec<(usize, Arc<Mutex<Published>>)>>,
    /// Config reloads applied.
    pub reloads_ok: AtomicU64,
    /// Config reloads refused (the running config kept serving).
    pub reloads_failed: AtomicU64,
    /// Usage telemetry is counted (set before the workers start: a managed node).
    counts_usage: std::sync::atomic::AtomicBool,
}

impl Hub {
    /// A slot for worker `id` to publish into.
    pub fn register(&self, id: usize) -> Arc<Mutex<Published>> {
        let slot = Arc::new(Mutex::new(Published::default()));
        if let Ok(mut workers) = self.workers.lock() {
            workers.push((id, Arc::clone(&slot)));
        }
        slot
    }

    /// Counts usage telemetry from now on (workers started after this count it).
    pub fn count_usage(&self) {
        self.counts_usage
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// Whether usage telemetry is counted.
    pub fn counts_usage(&self) -> bool {
        self.counts_usage.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Takes the usage every worker published since the last take.
    pub fn take_usage(&self) -> UsageMap<Arc<str>> {
        let mut all = UsageMap::default();
        for (_, slot) in self.workers() {
            let taken = match slot.lock() {
                Ok(mut published) => std::mem::take(&mut published.usage),
                Err(_) => continue,
            };
            if all.is_empty() {
                all = taken;
            } else {
                merge_into(&mut all, &taken, Arc::clone);
            }
        }
        all
    }

    /// Every worker's slot, by worker id.
    pub fn workers(&self) -> Vec<(usize, Arc<Mutex<Published>>)> {
        self.workers.lock().map(|w| w.clone()).unwrap_or_default()
    }
}
