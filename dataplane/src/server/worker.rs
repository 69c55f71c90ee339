//! One worker thread: its runtime (io_uring with cooperative task running, or epoll), its
//! listeners, and the per-worker state every connection on it shares without locks.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use monoio::net::{ListenerOpts, TcpListener};

use super::shutdown::ShutdownSignal;
use super::{conn, DriverChoice, Loaded, Shared};
use crate::balance::Balancer;
use crate::policy::admission::WorkerLimits;
use crate::policy::context::RequestId;
use crate::policy::phase::Policy;
use crate::upstream::UpstreamPools;

/// How often a worker looks at the process-wide shutdown flag.
const SHUTDOWN_POLL: Duration = Duration::from_millis(100);
/// Ticks between sweeps of idle limiter keys (about a minute).
const SWEEP_EVERY: u64 = 600;

/// What a worker reports once its listeners are bound: the driver's name and the addresses
/// it bound (a port 0 resolved to the one the kernel chose), or why it could not start.
pub(super) type Ready = Result<(&'static str, Vec<SocketAddr>), String>;

/// Builds the worker's runtime and runs it until shutdown. Reports on `ready` once its
/// listeners are bound, or why it could not start.
pub(super) fn run_thread<P: Policy + 'static>(
    id: usize,
    workers: usize,
    shared: Arc<Shared>,
    listen: Vec<SocketAddr>,
    driver: DriverChoice,
    policies: P,
    ready: mpsc::Sender<Ready>,
) {
    let policies = Rc::new(policies);
    let report = ready.clone();
    if let Err(e) = crate::runtime::block_on(
        driver,
        |e| tracing::warn!(worker = id, error = %e, "io_uring refused; falling back to the epoll driver"),
        |name| run(id, workers, shared, listen, name, policies, ready),
    ) {
        let _ = report.send(Err(format!("worker {id}: {e}")));
    }
}

async fn run<P: Policy + 'static>(
    id: usize,
    workers: usize,
    shared: Arc<Shared>,
    listen: Vec<SocketAddr>,
    driver: &'static str,
    policies: Rc<P>,
    ready: mpsc::Sender<Ready>,
) {
    let opts = ListenerOpts::new()
        .reuse_port(true)
        .reuse_addr(true)
        .backlog(4096);
    let mut listeners = Vec::with_capacity(listen.len());
    let mut bound = Vec::with_capacity(listen.len());
    for addr in &listen {
        match TcpListener::bind_with_config(addr, &opts).and_then(|l| Ok((l.local_addr()?, l))) {
            Ok((local, l)) => {
                bound.push(local);
                listeners.push(l);
            }
            Err(e) => {
                let _ = ready.send(Err(format!("cannot listen on {addr}: {e}")));
                return;
            }
        }
    }
    let _ = ready.send(Ok((driver, bound)));
    drop(ready);

    let worker = Rc::new(Worker::new(id, workers, shared));
    monoio::spawn(watch_shutdown(worker.clone()));
    let accepts: Vec<_> = listeners
        .into_iter()
        .map(|l| monoio::spawn(accept_loop(worker.clone(), policies.clone(), l)))
        .collect();
    for task in accepts {
        task.await;
    }
    // Listeners are closed; let requests in flight finish within the grace period.
    let deadline = Instant::now() + worker.view().snapshot.server.shutdown_grace;
    while worker.open_connections.get() > 0 && Instant::now() < deadline {
        monoio::time::sleep(Duration::from_millis(20)).await;
    }
    if worker.open_connections.get() > 0 {
        tracing::warn!(
            worker = id,
            open = worker.open_connections.get(),
            "grace period over; closing connections"
        );
    }
    worker.pools.clear();
}

/// The worker's periodic task: watches the shutdown flag, and keeps the limiter caches tidy
/// (expired leases give their tokens back; worker 0 also sweeps idle keys from the node's
/// tables every [`SWEEP_EVERY`] ticks).
async fn watch_shutdown(worker: Rc<Worker>) {
    let mut ticks: u64 = 0;
    while !worker.shared.is_shutting_down() {
        monoio::time::sleep(SHUTDOWN_POLL).await;
        worker.limits.tick();
        ticks += 1;
        if worker.id == 0 && ticks.is_multiple_of(SWEEP_EVERY) {
            worker.shared.limits.sweep();
        }
    }
    worker.shutdown.fire();
}

async fn accept_loop<P: Policy + 'static>(
    worker: Rc<Worker>,
    policies: Rc<P>,
    listener: TcpListener,
) {
    loop {
        let accepted = monoio::select! {
            r = listener.accept() => Some(r),
            _ = worker.shutdown.wait() => None,
        };
        match accepted {
            None => break,
            Some(Ok((stream, peer))) => {
                worker
                    .open_connections
                    .set(worker.open_connections.get() + 1);
                let w = worker.clone();
                let policies = policies.clone();
                monoio::spawn(async move {
                    conn::serve(&w, &*policies, stream, peer).await;
                    w.open_connections.set(w.open_connections.get() - 1);
                });
            }
            Some(Err(e)) => {
                // Out of descriptors and the like: back off briefly instead of spinning.
                tracing::warn!(worker = worker.id, error = %e, "accept failed");
                monoio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// What one worker's connections share: the config view, upstream pools, the shutdown
/// signal and request-id state. Lives on one thread only.
pub struct Worker {
    /// Worker index (0-based).
    pub id: usize,
    shared: Arc<Shared>,
    view: RefCell<(u64, Rc<View>)>,
    /// Keep-alive pools to backends.
    pub pools: UpstreamPools,
    /// Fired when the process begins shutting down.
    pub shutdown: ShutdownSignal,
    /// This worker's caches and leases in front of the node's limit state.
    pub limits: WorkerLimits,
    open_connections: Cell<usize>,
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
    /// its smooth-WRR cursor, so a reload does not restart its rotation.
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
                let carried = previous.and_then(|p| {
                    let old = p.snapshot.deployments.get(name)?;
                    (members(&p.snapshot, &old.pool) == members(&snapshot, &d.pool))
                        .then(|| p.balancers.borrow().get(name).cloned())
                        .flatten()
                });
                (
                    name.clone(),
                    carried.unwrap_or_else(|| Balancer::new(&d.pool)),
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
    fn new(id: usize, workers: usize, shared: Arc<Shared>) -> Self {
        let generation = shared.generation();
        let view = Rc::new(View::new(shared.snapshot(), None));
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let id_prefix = nanos ^ (std::process::id().rotate_left(16));
        let limits = WorkerLimits::new(&shared.limits, workers);
        Self {
            id,
            limits,
            shared,
            view: RefCell::new((generation, view)),
            pools: UpstreamPools::default(),
            shutdown: ShutdownSignal::default(),
            open_connections: Cell::new(0),
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
