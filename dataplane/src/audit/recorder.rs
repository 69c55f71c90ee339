//! Getting records off the request path: workers hand each [`Record`] to a bounded queue
//! ([`Recorder::submit`]); one writer thread drains it, renders each record once
//! ([`Entry::render`]: content, policy, redaction) and hands the entries to every sink's own
//! bounded queue, drained by that sink's thread — so a stalled sink stalls only itself
//! (`overflow = "drop"`) or, by choice, everyone (`"block"`).
//!
//! No syscall per request on a worker: the writer pauses [`PAUSE`] after each batch instead
//! of parking on the queue, so a worker's push finds it awake or asleep on a timer, never
//! parked and waiting to be woken (only an idle writer is woken, by the first record after
//! the idle time).

use std::io;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender, TrySendError};

use super::content::Redactor;
use super::record::{Entry, Record};
use super::sink::{self, Sink};
use super::{AuditSettings, Overflow};

/// How long the writer waits after a batch before draining again.
pub const PAUSE: Duration = Duration::from_millis(5);
/// Most records rendered in one batch.
const BATCH: usize = 1024;
/// Most bytes of content a sink writes in one batch.
const MAX_BATCH_BYTES: usize = 8 << 20;
/// How often dropped records are reported in a warning (when some were).
const DROP_WARNING_EVERY: Duration = Duration::from_secs(10);

enum Msg {
    /// A record and the bytes it took of the budget.
    Record(Box<Record>, usize),
    Close,
}

/// The byte bound on what all queued records hold together.
#[derive(Debug)]
struct Budget {
    used: AtomicUsize,
    max: usize,
}

impl Budget {
    /// Takes `bytes`, waiting for room when `wait` (one record always fits an empty
    /// budget); `false` when it did not fit and `wait` is off.
    fn take(&self, bytes: usize, wait: bool) -> bool {
        loop {
            let used = self.used.load(Ordering::Relaxed);
            if used == 0 || used.saturating_add(bytes) <= self.max {
                if self
                    .used
                    .compare_exchange_weak(used, used + bytes, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
                {
                    return true;
                }
                continue;
            }
            if !wait {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn give(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::Relaxed);
    }
}

/// The bytes an [`Entry`] holds of the budget, given back when the entry is dropped.
#[derive(Debug)]
pub struct Held {
    bytes: usize,
    budget: Arc<Budget>,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.budget.give(self.bytes);
    }
}

/// What a sink did, for metrics and the drop warning.
#[derive(Debug)]
pub struct SinkStats {
    /// `file:PATH`, `stdout` or `sqlite:PATH`.
    pub name: String,
    /// Its overflow policy.
    pub overflow: Overflow,
    /// Records written.
    pub written: AtomicU64,
    /// Records dropped: its queue (or the writer's) was full under `drop`, or writing failed.
    pub dropped: AtomicU64,
    /// Writes, syncs, rotations or reopenings that failed (the records of a failed write
    /// are counted in `dropped`).
    pub errors: AtomicU64,
}

/// The audit pipeline of a running config: the queue, the writer and the sinks. Carried
/// over by a reload whose `[audit]` is unchanged; otherwise the old one drains and stops
/// when the last request holding it completes.
pub struct Recorder {
    settings: AuditSettings,
    tx: Sender<Msg>,
    /// Whether some sink blocks: then workers wait on a full queue rather than drop.
    blocks: bool,
    sinks: Arc<[SinkStats]>,
    budget: Arc<Budget>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl Recorder {
    /// Opens every sink (a file that cannot be opened fails here, named) and starts the
    /// writer and sink threads.
    pub fn start(settings: &AuditSettings) -> io::Result<Arc<Recorder>> {
        let redactor = Redactor::new(settings.default_redactions, &settings.redact)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        let mut opened: Vec<Box<dyn Sink>> = Vec::with_capacity(settings.sinks.len());
        for s in &settings.sinks {
            opened.push(sink::open(&s.kind)?);
        }
        let stats: Arc<[SinkStats]> = settings
            .sinks
            .iter()
            .map(|s| SinkStats {
                name: s.name(),
                overflow: s.overflow,
                written: AtomicU64::new(0),
                dropped: AtomicU64::new(0),
                errors: AtomicU64::new(0),
            })
            .collect();
        let mut lanes = Vec::with_capacity(opened.len());
        for (i, sink) in opened.into_iter().enumerate() {
            let (tx, rx) = bounded::<Arc<Entry>>(settings.sinks[i].queue);
            let stats = Arc::clone(&stats);
            let handle = std::thread::Builder::new()
                .name(format!("sluice-audit-sink-{i}"))
                .spawn(move || drain_sink(sink, &rx, &stats[i]))?;
            lanes.push(Lane {
                tx,
                overflow: settings.sinks[i].overflow,
                thread: handle,
            });
        }
        let (tx, rx) = bounded::<Msg>(settings.queue);
        let node: Arc<str> = Arc::from(settings.node.as_str());
        let writer_stats = Arc::clone(&stats);
        let budget = Arc::new(Budget {
            used: AtomicUsize::new(0),
            max: usize::try_from(settings.max_queue_bytes).unwrap_or(usize::MAX),
        });
        let writer_budget = Arc::clone(&budget);
        let writer = std::thread::Builder::new()
            .name("sluice-audit-writer".into())
            .spawn(move || {
                write_loop(&rx, lanes, &node, &redactor, &writer_stats, &writer_budget)
            })?;
        Ok(Arc::new(Recorder {
            settings: settings.clone(),
            tx,
            blocks: settings.sinks.iter().any(|s| s.overflow == Overflow::Block),
            sinks: stats,
            budget,
            writer: Mutex::new(Some(writer)),
        }))
    }

    /// The settings it runs with (a reload with the same ones keeps it).
    pub fn settings(&self) -> &AuditSettings {
        &self.settings
    }

    /// Each sink's counts, in `[[audit.sink]]` order.
    pub fn sinks(&self) -> &[SinkStats] {
        &self.sinks
    }

    /// Records waiting for the writer.
    pub fn queue_depth(&self) -> usize {
        self.tx.len()
    }

    /// Bytes of content the queued records hold (waiting for the writer or a sink).
    pub fn queued_bytes(&self) -> usize {
        self.budget.used.load(Ordering::Relaxed)
    }

    /// Hands a completed request's record to the writer. When the queue is full, or the
    /// queued records hold `max_queue_bytes`: waits if a sink blocks, else drops the record,
    /// counted for every sink.
    pub fn submit(&self, record: Record) {
        let weight = record.weight();
        if !self.budget.take(weight, self.blocks) {
            self.dropped_everywhere();
            return;
        }
        let msg = Msg::Record(Box::new(record), weight);
        if self.blocks {
            // Disconnected only after `close`: nothing to record into any more.
            if self.tx.send(msg).is_err() {
                self.budget.give(weight);
            }
            return;
        }
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = self.tx.try_send(msg) {
            self.budget.give(weight);
            self.dropped_everywhere();
        }
    }

    fn dropped_everywhere(&self) {
        for sink in self.sinks.iter() {
            sink.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Shutdown: the writer renders what is queued, every sink writes and syncs what it has,
    /// and the threads stop; waits for that until `deadline`. Returns whether all finished.
    pub fn close(&self, deadline: Instant) -> bool {
        let _ = self.tx.send_timeout(
            Msg::Close,
            deadline.saturating_duration_since(Instant::now()),
        );
        let handle = self.writer.lock().ok().and_then(|mut w| w.take());
        let Some(handle) = handle else {
            return true;
        };
        while !handle.is_finished() {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        handle.join().is_ok()
    }
}

/// A sink's queue as the writer sees it.
struct Lane {
    tx: Sender<Arc<Entry>>,
    overflow: Overflow,
    thread: JoinHandle<()>,
}

/// Renders `record`, which took `weight` of the budget: the entry then holds its own
/// weight instead.
fn render(
    record: Record,
    weight: usize,
    node: &Arc<str>,
    redactor: &Redactor,
    budget: &Arc<Budget>,
) -> Arc<Entry> {
    let mut entry = Entry::render(record, node, redactor);
    let bytes = entry.weight();
    budget.used.fetch_add(bytes, Ordering::Relaxed);
    budget.give(weight);
    entry.held = Some(Held {
        bytes,
        budget: Arc::clone(budget),
    });
    Arc::new(entry)
}

fn write_loop(
    rx: &Receiver<Msg>,
    lanes: Vec<Lane>,
    node: &Arc<str>,
    redactor: &Redactor,
    stats: &[SinkStats],
    budget: &Arc<Budget>,
) {
    let mut batch: Vec<Arc<Entry>> = Vec::with_capacity(BATCH);
    let mut warned = DropWarning::new(stats);
    let mut closing = false;
    while !closing {
        let first = match rx.recv_timeout(DROP_WARNING_EVERY) {
            Ok(msg) => msg,
            Err(RecvTimeoutError::Timeout) => {
                warned.check(stats);
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => break,
        };
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                Msg::Record(record, weight) => {
                    batch.push(render(*record, weight, node, redactor, budget));
                }
                Msg::Close => closing = true,
            }
            if batch.len() < BATCH && !closing {
                next = rx.try_recv().ok();
            }
        }
        for (lane, stats) in lanes.iter().zip(stats) {
            for entry in &batch {
                let entry = Arc::clone(entry);
                let refused = match lane.overflow {
                    Overflow::Block => lane.tx.send(entry).is_err(),
                    Overflow::Drop => lane.tx.try_send(entry).is_err(),
                };
                if refused {
                    stats.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        batch.clear();
        warned.check(stats);
        if !closing {
            std::thread::sleep(PAUSE);
        }
    }
    // Closed or the last recorder handle dropped: what is queued still goes out.
    if !closing {
        while let Ok(Msg::Record(record, weight)) = rx.try_recv() {
            let entry = render(*record, weight, node, redactor, budget);
            for lane in &lanes {
                let _ = lane.tx.send(Arc::clone(&entry));
            }
        }
    }
    let threads: Vec<JoinHandle<()>> = lanes
        .into_iter()
        .map(|lane| {
            drop(lane.tx);
            lane.thread
        })
        .collect();
    for thread in threads {
        let _ = thread.join();
    }
    warned.check(stats);
}

/// Drains one sink's queue in batches until the writer lets go of it.
fn drain_sink(mut sink: Box<dyn Sink>, rx: &Receiver<Arc<Entry>>, stats: &SinkStats) {
    let mut batch: Vec<Arc<Entry>> = Vec::with_capacity(BATCH);
    let mut error_logged: Option<Instant> = None;
    loop {
        match rx.recv_timeout(sink.idle_tick()) {
            Ok(entry) => batch.push(entry),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        // A batch is written as one text: bounded in records and in bytes.
        let mut bytes: usize = batch.iter().map(|e| e.weight()).sum();
        while batch.len() < BATCH * 4 && bytes < MAX_BATCH_BYTES {
            match rx.try_recv() {
                Ok(entry) => {
                    bytes += entry.weight();
                    batch.push(entry);
                }
                Err(_) => break,
            }
        }
        let result = if batch.is_empty() {
            sink.tick()
        } else {
            sink.write(&batch).and_then(|()| sink.tick())
        };
        match result {
            Ok(()) => {
                stats
                    .written
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
            }
            Err(e) => {
                stats.errors.fetch_add(1, Ordering::Relaxed);
                stats
                    .dropped
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                if error_logged.is_none_or(|t| t.elapsed() >= DROP_WARNING_EVERY) {
                    tracing::warn!(sink = %stats.name, records = batch.len(), "audit sink failed to write; records dropped: {e}");
                    error_logged = Some(Instant::now());
                }
            }
        }
        batch.clear();
    }
    if let Err(e) = sink.close() {
        tracing::warn!(sink = %stats.name, "audit sink failed to close cleanly: {e}");
    }
}

/// Reports records dropped since the last report, at most every [`DROP_WARNING_EVERY`].
struct DropWarning {
    reported: Vec<u64>,
    at: Instant,
}

impl DropWarning {
    fn new(stats: &[SinkStats]) -> Self {
        Self {
            reported: vec![0; stats.len()],
            at: Instant::now(),
        }
    }

    fn check(&mut self, stats: &[SinkStats]) {
        if self.at.elapsed() < DROP_WARNING_EVERY {
            return;
        }
        self.at = Instant::now();
        for (sink, reported) in stats.iter().zip(&mut self.reported) {
            let dropped = sink.dropped.load(Ordering::Relaxed);
            if dropped > *reported {
                tracing::warn!(
                    sink = %sink.name,
                    dropped = dropped - *reported,
                    total = dropped,
                    "audit records dropped (queue full or write failed; overflow = \"drop\")"
                );
                *reported = dropped;
            }
        }
    }
}
