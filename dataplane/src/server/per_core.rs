//! What one worker's connections share (thread-per-core: no locks, one thread): the
//! config view with its round-robin state, the upstream pools, the limiter caches, the
//! shutdown signal and the request-id sequence. The worker's loops ([`super::worker`])
//! create it; each connection ([`super::conn`]) reads it.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use super::shutdown::ShutdownSignal;
use super::{Loaded, Shared};
use crate::balance::Balancer;
use crate::policy::admission::WorkerLimits;
use crate::policy::context::RequestId;
use crate::upstream::{Retries, UpstreamPools};

/// What one worker's connections share: the config view, upstream pools, the shutdown
/// signal and request-id state. Lives on one thread only.
pub struct Worker {
    /// Worker index (0-based).
    pub id: usize,
    pub(super) shared: Arc<Shared>,
    view: RefCell<(u64, Rc<View>)>,
    /// Keep-alive pools to backends.
    pub pools: UpstreamPools,
    /// The retry budget and backoff of this worker's requests.
    pub retries: Retries,
    /// Fired when the process begins shutting down.
    pub shutdown: ShutdownSignal,
    /// Fired when the shutdown grace is over: requests still in flight are cut (and their
    /// `on_complete` runs).
    pub grace_over: ShutdownSignal,
    /// This worker's caches and leases in front of the node's limit state.
    pub limits: WorkerLimits,
    /// Connections open on this worker.
    pub(super) open_connections: Cell<usize>,
    /// TLS handshakes that failed, were refused or timed out on this worker.
    pub tls_handshake_failures: Cell<u64>,
    /// This worker's metrics, published on its upkeep tick.
    pub metrics: crate::metrics::WorkerMetrics,
    /// This worker's audit records not yet handed to the writer, handed over on its upkeep
    /// tick.
    pub audit_batch: crate::audit::WorkerBatch,
    request_seq: Cell<u64>,
    id_prefix: u32,
}

/// A worker's view of one snapshot: the snapshot and this worker's round-robin state for it.
pub struct View {
    /// The compiled config and its runtime.
    pub snapshot: Arc<Loaded>,
    /// Per-deployment balancers, by deployment name.
    pub balancers: RefCell<HashMap<String, Balancer>>,
}

impl View {
    /// The view of `snapshot`; a deployment whose pool is unchanged from `previous` (the
    /// same backends by name, with the same weights and priorities, in the same order) keeps
    /// its smooth-WRR cursor, so a reload does not restart its rotation; its members are
    /// always the new snapshot's (a reload may renumber the backends).
    fn new(snapshot: Arc<Loaded>, previous: Option<&View>) -> Self {
        let members = |loaded: &Loaded, pool: &[crate::snapshot::PoolMember]| {
            pool.iter()
                .map(|m| {
                    let name = loaded.backends.get(m.backend).map(|b| b.name.clone());
                    (name, m.weight, m.priority)
                })
                .collect::<Vec<_>>()
        };
        let balancers = snapshot
            .deployments
            .iter()
            .map(|(name, d)| {
                let resumed = previous.and_then(|p| {
                    let old = p.snapshot.deployments.get(name)?;
                    (members(&p.snapshot, &old.pool) == members(&snapshot, &d.pool))
                        .then(|| {
                            p.balancers
                                .borrow()
                                .get(name)
                                .map(|b| Balancer::resume(&d.pool, b))
                        })
                        .flatten()
                });
                (
                    name.clone(),
                    resumed.unwrap_or_else(|| Balancer::new(&d.pool)),
                )
            })
            .collect();
        Self {
            snapshot,
            balancers: RefCell::new(balancers),
        }
    }
}

impl Worker {
    /// Worker `id`'s state, one of `workers`, serving what `shared` holds.
    pub(super) fn new(id: usize, workers: usize, shared: Arc<Shared>) -> Self {
        let generation = shared.generation();
        let view = Rc::new(View::new(shared.snapshot(), None));
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let id_prefix = nanos ^ (std::process::id().rotate_left(16));
        let limits = WorkerLimits::new(&shared.limits, workers);
        let metrics = crate::metrics::WorkerMetrics::new(
            shared.metrics.register(id),
            shared.metrics.counts_usage(),
        );
        Self {
            id,
            limits,
            shared,
            view: RefCell::new((generation, view)),
            pools: UpstreamPools::default(),
            retries: Retries::default(),
            shutdown: ShutdownSignal::default(),
            grace_over: ShutdownSignal::default(),
            open_connections: Cell::new(0),
            tls_handshake_failures: Cell::new(0),
            metrics,
            audit_batch: crate::audit::WorkerBatch::default(),
            request_seq: Cell::new(0),
            id_prefix,
        }
    }

    /// The view for a request starting now. Re-reads the shared snapshot only when its
    /// generation moved, so the common case is one atomic load and an `Rc` clone.
    pub fn view(&self) -> Rc<View> {
        let generation = self.shared.generation();
        let mut cached = self.view.borrow_mut();
        if cached.0 != generation {
            let next = View::new(self.shared.snapshot(), Some(&cached.1));
            *cached = (generation, Rc::new(next));
        }
        cached.1.clone()
    }

    /// Publishes this worker's metrics (counts since the last publish, and its gauges) and
    /// hands its gathered audit records to the writer.
    pub fn publish(&self) {
        self.audit_batch.flush();
        self.metrics.publish(
            self.open_connections.get(),
            self.tls_handshake_failures.get(),
        );
    }

    /// A new request id: 24 hex digits, unique per process run.
    pub fn next_request_id(&self) -> RequestId {
        let seq = self.request_seq.get().wrapping_add(1);
        self.request_seq.set(seq);
        RequestId::hex(&[
            (u64::from(self.id_prefix), 8),
            (self.id as u64, 4),
            (seq, 12),
        ])
    }
}
