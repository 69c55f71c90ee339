//! The server: N worker threads, each a monoio runtime with its own SO_REUSEPORT listeners,
//! upstream pools and round-robin state; the config snapshot shared read-only between them.
//!
//! [`Shared`] is the only cross-thread state: the current snapshot behind an atomically
//! swapped pointer with a generation counter (workers re-read it only when the generation
//! moves), and the shutdown flag.

mod body_deadline;
mod cached;
mod conn;
mod per_core;
mod shutdown;
mod worker;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use crate::policy::admission::SharedLimits;
use crate::policy::phase::Policy;
use crate::policy::AccessRuntime;
use crate::snapshot::Snapshot;

pub use crate::runtime::DriverChoice;

/// A compiled config and the runtime built from it (key table, JWT validator, limit ids),
/// swapped in together so a request never sees one without the other. Built and put in
/// force by [`crate::apply`].
pub struct Loaded {
    /// The compiled config.
    pub snapshot: Snapshot,
    /// Its access-control runtime.
    pub runtime: AccessRuntime,
    /// Its audit log (`[audit]` with a sink), started by [`crate::apply`].
    pub audit: Option<Arc<crate::audit::Recorder>>,
    /// When it was compiled (for `/config`).
    pub loaded_at: std::time::SystemTime,
    /// The control plane's version number of a pushed document (`None`: from a file).
    pub control_version: Option<u64>,
    /// Its backends' active health checks, started by [`crate::apply`] (dropped with it).
    pub health_checks: Option<crate::health_check::HealthCheckers>,
}

impl std::ops::Deref for Loaded {
    type Target = Snapshot;

    fn deref(&self) -> &Snapshot {
        &self.snapshot
    }
}

/// State shared by every worker.
pub struct Shared {
    loaded: ArcSwap<Loaded>,
    generation: AtomicU64,
    shutdown: AtomicBool,
    /// Limit state (buckets, quota counters), kept across reloads.
    pub limits: SharedLimits,
    /// What the workers publish for `/metrics`, and the process-wide counters.
    pub metrics: crate::metrics::Hub,
    /// Audit recorders a reload replaced, each being closed by a thread of its own once
    /// the last request holding it has completed (see [`Shared::swap`]).
    retiring: Mutex<Vec<JoinHandle<()>>>,
}

impl Shared {
    /// Shared state serving `loaded`.
    pub fn new(loaded: Loaded) -> Arc<Self> {
        Arc::new(Self {
            loaded: ArcSwap::from_pointee(loaded),
            generation: AtomicU64::new(1),
            shutdown: AtomicBool::new(false),
            limits: SharedLimits::default(),
            metrics: crate::metrics::Hub::default(),
            retiring: Mutex::new(Vec::new()),
        })
    }

    /// The config in force now.
    pub fn snapshot(&self) -> Arc<Loaded> {
        self.loaded.load_full()
    }

    /// Puts `loaded` in force for requests that start from now on. An audit recorder it
    /// replaces is retired: a `sluice-audit-retire` thread waits until no request or worker
    /// holds it any more, then closes it (every record written and synced); shutdown waits
    /// for those threads too ([`Shared::close_audit`]).
    pub fn swap(&self, loaded: Loaded) {
        let next = loaded.audit.clone();
        let old = self.loaded.swap(Arc::new(loaded));
        self.generation.fetch_add(1, Ordering::Release);
        let Some(recorder) = old.audit.clone() else {
            return;
        };
        drop(old);
        if next.as_ref().is_some_and(|n| Arc::ptr_eq(n, &recorder)) {
            return;
        }
        let retire = move || {
            while Arc::strong_count(&recorder) > 1 {
                std::thread::sleep(Duration::from_millis(50));
            }
            if !recorder.close(Instant::now() + Duration::from_secs(3600)) {
                tracing::warn!("a retired audit log did not finish writing within an hour");
            }
        };
        let mut retiring = self.retiring.lock().unwrap_or_else(PoisonError::into_inner);
        retiring.retain(|t| !t.is_finished());
        match std::thread::Builder::new()
            .name("sluice-audit-retire".into())
            .spawn(retire)
        {
            Ok(thread) => retiring.push(thread),
            Err(e) => tracing::error!("cannot start a thread to close the replaced audit log ({e}); its last records may be lost at exit"),
        }
    }

    /// Shutdown, once the workers have stopped: closes the audit log in force and waits for
    /// every retired one to finish writing, until `deadline`. Returns whether all did.
    pub fn close_audit(&self, deadline: Instant) -> bool {
        let mut finished = match self.snapshot().audit.clone() {
            Some(audit) => audit.close(deadline),
            None => true,
        };
        let retiring =
            std::mem::take(&mut *self.retiring.lock().unwrap_or_else(PoisonError::into_inner));
        for thread in retiring {
            while !thread.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            finished &= thread.is_finished();
        }
        finished
    }

    /// How many configs have been put in force (1 at start; each reload adds one).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Begins a graceful shutdown: workers stop accepting and drain.
    pub fn begin_shutdown(&self) {
        self.shutdown.store(true, Ordering::Release);
    }

    /// Whether a graceful shutdown has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.shutdown.load(Ordering::Acquire)
    }
}

/// Where the workers listen: plain HTTP and HTTPS addresses (`listen`, `tls_listen`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listeners {
    /// Plain HTTP/1.1.
    pub plain: Vec<SocketAddr>,
    /// HTTP/1.1 over TLS, with the snapshot's `[server.tls]`.
    pub tls: Vec<SocketAddr>,
}

impl From<Vec<SocketAddr>> for Listeners {
    /// Plain listeners only.
    fn from(plain: Vec<SocketAddr>) -> Self {
        Self {
            plain,
            tls: Vec::new(),
        }
    }
}

/// Running workers.
pub struct Running {
    handles: Vec<JoinHandle<()>>,
    /// The driver the workers use (`io_uring` or `epoll`).
    pub driver: &'static str,
    /// Worker count.
    pub workers: usize,
    /// The plain addresses every worker listens on (the config's, with a port 0 resolved).
    pub listen: Vec<SocketAddr>,
    /// The TLS addresses every worker listens on, likewise.
    pub tls_listen: Vec<SocketAddr>,
}

impl Running {
    /// Waits for every worker to finish, at most until `deadline`. Returns whether all did.
    pub fn join(self, deadline: Instant) -> bool {
        for handle in self.handles {
            while !handle.is_finished() {
                if Instant::now() >= deadline {
                    return false;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = handle.join();
        }
        true
    }
}

/// Refuses addresses another socket listens on already. Workers bind with `SO_REUSEPORT`
/// (one listener per worker), which the kernel also grants to a second process of the same
/// user on the same address — it would then take a share of the connections, silently. A
/// plain bind (no `SO_REUSEPORT`) of each address first fails with "address in use" if
/// anything listens there; it is closed at once. Port 0 is skipped (the kernel picks a free
/// port).
fn refuse_taken(listen: &Listeners) -> anyhow::Result<()> {
    for addr in listen.plain.iter().chain(&listen.tls) {
        if addr.port() == 0 {
            continue;
        }
        if let Err(e) = std::net::TcpListener::bind(addr) {
            anyhow::bail!(
                "cannot listen on {addr}: {e} (is another Sluice or server running there?)"
            );
        }
    }
    Ok(())
}

/// Starts `workers` worker threads on `listen`; returns once every worker has bound its
/// listeners, or the first error. A port 0 is bound by the first worker (the kernel picks a
/// free port) and the others join it there ([`Running::listen`] says where).
pub fn start(
    shared: Arc<Shared>,
    listen: impl Into<Listeners>,
    workers: usize,
    driver: DriverChoice,
) -> anyhow::Result<Running> {
    start_with(
        shared,
        listen,
        workers,
        driver,
        crate::policy::pipeline::standard,
    )
}

/// [`start`] with another pipeline: each worker thread builds its own instance of it with
/// `pipeline` (policies are not shared between threads, so they need not be `Send`).
pub fn start_with<P, F>(
    shared: Arc<Shared>,
    listen: impl Into<Listeners>,
    workers: usize,
    driver: DriverChoice,
    pipeline: F,
) -> anyhow::Result<Running>
where
    P: Policy + 'static,
    F: Fn() -> P + Send + Sync + 'static,
{
    let pipeline = Arc::new(pipeline);
    let bound: Listeners = listen.into();
    refuse_taken(&bound)?;
    let (ready_tx, ready_rx) = mpsc::channel();
    let mut handles = Vec::with_capacity(workers);
    let mut used = "io_uring";
    let mut bound = bound;
    for id in 0..workers {
        let spawned = {
            let shared = shared.clone();
            let listen = bound.clone();
            let ready_tx = ready_tx.clone();
            let pipeline = pipeline.clone();
            std::thread::Builder::new()
                .name(format!("sluice-worker-{id}"))
                .spawn(move || {
                    worker::run_thread(id, workers, shared, listen, driver, pipeline(), ready_tx)
                })
        };
        match spawned {
            Ok(handle) => handles.push(handle),
            Err(e) => {
                shared.begin_shutdown();
                return Err(e.into());
            }
        }
        // One at a time: the first worker's addresses (ports resolved) are the others'.
        match ready_rx.recv() {
            Ok(Ok((driver, addrs))) => {
                if driver != "io_uring" {
                    used = driver;
                }
                bound = addrs;
            }
            Ok(Err(message)) => {
                shared.begin_shutdown();
                anyhow::bail!(message);
            }
            Err(_) => {
                shared.begin_shutdown();
                anyhow::bail!("a worker thread stopped before it was ready");
            }
        }
    }
    Ok(Running {
        handles,
        driver: used,
        workers,
        listen: bound.plain,
        tls_listen: bound.tls,
    })
}
