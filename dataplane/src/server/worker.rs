//! One worker thread: its runtime (io_uring with cooperative task running, or epoll), its
//! listeners, its accept loop and its periodic upkeep (the state its connections share is
//! [`super::per_core`]).

use std::rc::Rc;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use monoio::net::{ListenerOpts, TcpListener};

use super::per_core::Worker;
use super::{conn, DriverChoice, Listeners, Shared};
use crate::policy::phase::Policy;

/// How often a worker looks at the process-wide shutdown flag.
const SHUTDOWN_POLL: Duration = Duration::from_millis(100);
/// Ticks between sweeps of idle limiter keys (about a minute).
const SWEEP_EVERY: u64 = 600;
/// How long connections cut at the end of the shutdown grace get to finish their request's
/// `on_complete` before the worker's runtime ends.
const CUT_WAIT: Duration = Duration::from_secs(1);

/// What a worker reports once its listeners are bound: the driver's name and the addresses
/// it bound (a port 0 resolved to the one the kernel chose), or why it could not start.
pub(super) type Ready = Result<(&'static str, Listeners), String>;

/// Builds the worker's runtime and runs it until shutdown. Reports on `ready` once its
/// listeners are bound, or why it could not start.
pub(super) fn run_thread<P: Policy + 'static>(
    id: usize,
    workers: usize,
    shared: Arc<Shared>,
    listen: Listeners,
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
    listen: Listeners,
    driver: &'static str,
    policies: Rc<P>,
    ready: mpsc::Sender<Ready>,
) {
    let opts = ListenerOpts::new()
        .reuse_port(true)
        .reuse_addr(true)
        .backlog(4096);
    let mut listeners = Vec::with_capacity(listen.plain.len() + listen.tls.len());
    let mut bound = Listeners::default();
    let all = listen.plain.iter().map(|a| (a, false));
    for (addr, tls) in all.chain(listen.tls.iter().map(|a| (a, true))) {
        match TcpListener::bind_with_config(addr, &opts).and_then(|l| Ok((l.local_addr()?, l))) {
            Ok((local, l)) => {
                if tls {
                    bound.tls.push(local);
                } else {
                    bound.plain.push(local);
                }
                listeners.push((l, tls));
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
        .map(|(l, tls)| monoio::spawn(accept_loop(worker.clone(), policies.clone(), l, tls)))
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
        // Each connection cuts its request and runs its `on_complete` (settlement, records)
        // at its next poll; give them a moment to do so before the runtime drops them.
        worker.grace_over.fire();
        let cut_by = Instant::now() + CUT_WAIT;
        while worker.open_connections.get() > 0 && Instant::now() < cut_by {
            monoio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    worker.pools.clear();
    worker.publish();
}

/// The worker's periodic task: watches the shutdown flag, keeps the limiter caches tidy
/// (expired leases give their tokens back; worker 0 also sweeps idle keys from the node's
/// tables every [`SWEEP_EVERY`] ticks), publishes the worker's metrics and hands its
/// gathered audit records to the writer.
async fn watch_shutdown(worker: Rc<Worker>) {
    let mut ticks: u64 = 0;
    while !worker.shared.is_shutting_down() {
        monoio::time::sleep(SHUTDOWN_POLL).await;
        worker.limits.tick();
        worker.publish();
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
    tls: bool,
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
                    conn::serve(&w, &*policies, stream, peer, tls).await;
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
