//! One worker thread: its runtime (io_uring with cooperative task running, or epoll), its
//! listeners (one per address, SO_REUSEPORT) and what its connections share without locks:
//! the random generator, the canned answers and its own counters.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use sluice::mock::MockSettings;
use sluice::runtime::DriverChoice;

use super::answer::Canned;
use super::budget::Budgets;
use super::dist::{Dist, Rng};
use super::faults::Faults;
use super::listen::{bind_listener, Acceptor};
use super::stats::{StatsBoard, ThreadCounters};
use super::{conn, MockConfig};

/// How often a worker looks at the stop flag.
const STOP_POLL: Duration = Duration::from_millis(20);

/// What every worker reads; built once by `spawn`.
pub struct Shared {
    /// Answer shapes and sizes.
    pub settings: MockSettings,
    /// Delay before each model answer.
    pub latency: Dist,
    /// The fault knobs.
    pub faults: Faults,
    /// The fault answers, rendered once.
    pub canned: Canned,
    /// The token and request budgets, when any is set.
    pub budgets: Option<Budgets>,
    /// When the mock started: the budgets' clock counts from here.
    pub epoch: std::time::Instant,
    /// RNG seed.
    pub seed: u64,
    /// Every worker's counters.
    pub board: Arc<StatsBoard>,
    /// Set to stop every worker.
    pub stop: AtomicBool,
}

impl Shared {
    /// The shared state of `cfg`, stall window counted from now.
    pub fn new(cfg: &MockConfig) -> Self {
        let epoch = std::time::Instant::now();
        Shared {
            settings: MockSettings {
                // The mock server samples `cfg.latency` itself; `reply` does not sleep.
                latency: Duration::ZERO,
                completion_tokens: cfg.completion_tokens,
                tokens_per_second: cfg.tokens_per_second,
                model: cfg.model.clone(),
                embedding_dimensions: cfg.embedding_dimensions,
            },
            latency: cfg.latency,
            faults: Faults::new(cfg, epoch),
            canned: Canned::new(cfg),
            budgets: Budgets::new(
                cfg.tokens_per_minute,
                cfg.requests_per_minute,
                cfg.budget_window,
            ),
            epoch,
            seed: cfg.seed,
            board: Arc::new(StatsBoard::new(cfg.threads.max(1))),
            stop: AtomicBool::new(false),
        }
    }
}

/// One worker's state, shared by its connections (single thread).
pub struct Worker {
    /// The process-wide part.
    pub shared: Arc<Shared>,
    /// This worker's counters.
    pub counters: Arc<ThreadCounters>,
    /// This worker's random generator (never borrowed across an await).
    pub rng: RefCell<Rng>,
    index: u64,
    seq: Cell<u64>,
}

impl Worker {
    /// A unique id seed for the next answer.
    pub fn next_id_seed(&self) -> u64 {
        let seq = self.seq.get().wrapping_add(1);
        self.seq.set(seq);
        (self.index << 48) ^ seq
    }
}

/// What a worker reports once started: its bound addresses and driver, or why it failed.
pub type Ready = Result<(Vec<SocketAddr>, &'static str), String>;

/// Builds worker `index`'s runtime and serves until the stop flag is set. Reports on
/// `ready` once its listeners are bound.
pub fn run_thread(
    index: usize,
    shared: Arc<Shared>,
    listen: Vec<SocketAddr>,
    driver: DriverChoice,
    ready: mpsc::Sender<Ready>,
) {
    // Bind before building the runtime: a failure is then reported without one.
    let mut listeners = Vec::with_capacity(listen.len());
    let mut addrs = Vec::with_capacity(listen.len());
    for addr in &listen {
        match bind_listener(*addr).and_then(|l| Ok((l.local_addr()?, l))) {
            Ok((bound, l)) => {
                addrs.push(bound);
                listeners.push(l);
            }
            Err(e) => {
                let _ = ready.send(Err(format!("cannot listen on {addr}: {e}")));
                return;
            }
        }
    }
    let start = Start {
        index,
        shared,
        listeners,
        addrs,
        ready,
    };
    // The task owns `start` (and its `ready`), so a runtime that cannot be built is
    // reported through a second handle. An `auto` fallback to epoll is silent: the handle's
    // `driver()` says which one runs.
    let report = start.ready.clone();
    if let Err(e) = sluice::runtime::block_on(driver, |_| {}, |name| serve(start, name)) {
        let _ = report.send(Err(format!("worker {index}: {e}")));
    }
}

/// A worker's bound listeners, waiting for its runtime.
struct Start {
    index: usize,
    shared: Arc<Shared>,
    listeners: Vec<std::net::TcpListener>,
    addrs: Vec<SocketAddr>,
    ready: mpsc::Sender<Ready>,
}

async fn serve(start: Start, driver: &'static str) {
    let Start {
        index,
        shared,
        listeners,
        addrs,
        ready,
    } = start;
    let mut acceptors = Vec::with_capacity(listeners.len());
    for l in listeners {
        match Acceptor::new(l) {
            Ok(a) => acceptors.push(a),
            Err(e) => {
                let _ = ready.send(Err(format!("worker {index}: cannot watch a listener: {e}")));
                return;
            }
        }
    }
    let Some(counters) = shared.board.thread(index) else {
        let _ = ready.send(Err(format!("worker {index}: no counters")));
        return;
    };
    let worker = Rc::new(Worker {
        rng: RefCell::new(Rng::new(shared.seed, index as u64)),
        shared,
        counters,
        index: index as u64,
        seq: Cell::new(0),
    });
    let _ = ready.send(Ok((addrs, driver)));
    drop(ready);

    for acceptor in acceptors {
        let worker = worker.clone();
        monoio::spawn(async move {
            loop {
                let stream = acceptor.accept().await;
                monoio::spawn(conn::serve(worker.clone(), stream));
            }
        });
    }
    // Returning drops the runtime, and with it every listener and connection.
    while !worker.shared.stop.load(Ordering::Acquire) {
        monoio::time::sleep(STOP_POLL).await;
    }
}
