//! The load threads: one monoio runtime per thread (io_uring with cooperative task running,
//! else epoll), optionally pinned to a CPU, each running its share of the connections
//! against its share of the schedule and recording into its own [`Recorder`].

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::{Arc, Barrier, Mutex, OnceLock};
use std::time::{Duration, Instant};

use sluice::runtime::DriverChoice;

use super::conn::{Conn, Exchange};
use super::record::{Failure, Outcome, Progress, Recorder};
use super::schedule::{OpenSlots, Plan, ThreadSchedule, Tickets, Turn};

/// monoio's timer fires on whole milliseconds (rounded up): wake this much before a request
/// is due so the timer does not make it late. A request sent early counts from its send.
const TIMER_SLACK: Duration = Duration::from_millis(1);
/// Closed loop: pause after a refused connection, so a dead target is not hammered with
/// connection attempts (each one a counted error).
const CONNECT_BACKOFF: Duration = Duration::from_millis(10);
/// How often a thread publishes its counts for the progress line.
const PROGRESS_FLUSH: Duration = Duration::from_millis(250);

/// What all threads share for a run.
pub struct Shared {
    /// The request and where it goes.
    pub exchange: Exchange,
    /// Per-request limit.
    pub timeout: Duration,
    /// Unrecorded lead-in.
    pub warmup: Duration,
    /// Measured part; `None` when `requests` ends the run.
    pub duration: Option<Duration>,
    /// Open-loop rate, all threads together.
    pub rate: Option<f64>,
    /// Threads in the run.
    pub threads: usize,
    /// The `--requests` budget.
    pub tickets: Tickets,
    /// Every thread has its connections open (or tried) before the clock starts.
    pub barrier: Barrier,
    /// The first request's due time, set by the first thread past the barrier.
    pub start: OnceLock<Instant>,
    /// What each thread last published for the progress line (empty when quiet).
    pub progress: Vec<Mutex<Progress>>,
    /// CPUs to pin threads to, round-robin (empty: no pinning).
    pub cpus: Vec<usize>,
}

impl Shared {
    /// The plan once the start is known.
    pub fn plan(&self, start: Instant) -> Plan {
        let warmup_end = start + self.warmup;
        Plan {
            start,
            warmup_end,
            end: self.duration.map(|d| warmup_end + d),
        }
    }
}

/// Runs thread `index` with `connections` connections; returns its measurements.
pub fn run_thread(
    shared: Arc<Shared>,
    index: usize,
    connections: usize,
) -> anyhow::Result<Recorder> {
    if let Err(e) = pin(&shared.cpus, index) {
        shared.barrier.wait();
        return Err(e);
    }
    let on_fallback = |e: &std::io::Error| {
        eprintln!("sluice-bench load: io_uring refused ({e}); thread {index} on epoll");
    };
    let task_shared = Arc::clone(&shared);
    let task = |_| thread_main(task_shared, index, connections);
    sluice::runtime::block_on(DriverChoice::Auto, on_fallback, task).map_err(|e| {
        // The other threads wait for this one at the start line.
        shared.barrier.wait();
        anyhow::anyhow!("thread {index}: cannot start a runtime: {e}")
    })
}

fn pin(cpus: &[usize], index: usize) -> anyhow::Result<()> {
    if cpus.is_empty() {
        return Ok(());
    }
    let cpu = cpus[index % cpus.len()];
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu)
        .map_err(|e| anyhow::anyhow!("CPU {cpu}: {e}"))?;
    // Pid 0: the calling thread.
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
        .map_err(|e| anyhow::anyhow!("cannot pin a load thread to CPU {cpu}: {e}"))
}

/// One thread's state, shared by its connection tasks.
struct Thread {
    shared: Arc<Shared>,
    index: usize,
    schedule: ThreadSchedule,
    recorder: RefCell<Recorder>,
    open_loop: bool,
}

async fn thread_main(shared: Arc<Shared>, index: usize, connections: usize) -> Recorder {
    // Open every connection first, so the first measured requests do not pay for it. A
    // connection that fails here is retried (and counted) by its first request. With a new
    // connection per request, none is opened early: every request pays its own.
    let deadline = Instant::now() + shared.timeout;
    let fresh = shared.exchange.fresh_connections;
    let opening: Vec<_> = (0..connections)
        .map(|_| {
            let mut conn = Conn::new(shared.exchange.clone());
            monoio::spawn(async move {
                if !fresh {
                    let _ = conn.connect(deadline).await;
                }
                conn
            })
        })
        .collect();
    let mut conns = Vec::with_capacity(connections);
    for task in opening {
        conns.push(task.await);
    }

    // Blocking is fine: nothing else runs on this thread until the clock starts.
    shared.barrier.wait();
    let start = *shared.start.get_or_init(Instant::now);
    let open = shared.rate.map(|rate| OpenSlots {
        rate,
        threads: shared.threads as u64,
        thread: index as u64,
    });
    let progress = !shared.progress.is_empty();
    let thread = Rc::new(Thread {
        schedule: ThreadSchedule::new(shared.plan(start), open),
        recorder: RefCell::new(Recorder::new(progress)),
        open_loop: open.is_some(),
        index,
        shared,
    });

    let tasks: Vec<_> = conns
        .into_iter()
        .map(|conn| monoio::spawn(drive(thread.clone(), conn)))
        .collect();
    if progress {
        // Dropped (and so stopped) when this function returns.
        let t = thread.clone();
        monoio::spawn(async move {
            loop {
                monoio::time::sleep(PROGRESS_FLUSH).await;
                flush(&t);
            }
        });
    }
    for task in tasks {
        task.await;
    }
    flush(&thread);
    thread.recorder.replace(Recorder::new(false))
}

fn flush(thread: &Thread) {
    if let Some(slot) = thread.shared.progress.get(thread.index) {
        thread.recorder.borrow_mut().flush_progress(slot);
    }
}

/// One connection's loop: take the next turn, wait for its due time, exchange, record.
async fn drive(thread: Rc<Thread>, mut conn: Conn) {
    let shared = &thread.shared;
    loop {
        let now = Instant::now();
        let Turn::Go { due, measured } = thread.schedule.next(now) else {
            break;
        };
        if due > now + TIMER_SLACK {
            monoio::time::sleep_until((due - TIMER_SLACK).into()).await;
        }
        if measured && !shared.tickets.take() {
            break;
        }
        let sent = Instant::now();
        // Late (the connection was busy, or every one was): latency counts from the due
        // time, so a stalled target shows as the backlog it causes (coordinated omission
        // corrected). Early by the timer slack: it counts from the send.
        let origin = due.min(sent);
        let mut last_event: Option<Instant> = None;
        let mut on_events = |at: Instant, n: u32| {
            if !measured {
                return;
            }
            let mut r = thread.recorder.borrow_mut();
            for _ in 0..n {
                match last_event {
                    None => r.ttft.saturating_record(micros_between(origin, at)),
                    Some(prev) => r.gap.saturating_record(micros_between(prev, at)),
                }
                last_event = Some(at);
            }
        };
        let outcome = conn.exchange(sent + shared.timeout, &mut on_events).await;
        let done = Instant::now();
        thread
            .recorder
            .borrow_mut()
            .record(measured, outcome, done - origin, done);
        if outcome == Outcome::Failed(Failure::Connect) && !thread.open_loop {
            monoio::time::sleep(CONNECT_BACKOFF).await;
        }
    }
}

fn micros_between(from: Instant, to: Instant) -> u64 {
    super::record::micros(to.saturating_duration_since(from))
}
