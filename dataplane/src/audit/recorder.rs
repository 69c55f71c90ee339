//! Getting records off the request path: each worker gathers its [`Record`]s in its own
//! [`WorkerBatch`] and hands them over, [`WORKER_BATCH`] at a time or on its upkeep tick,
//! to a queue bounded in records and bytes ([`Recorder::submit`]); one writer thread drains
//! it, renders each record once ([`Entry::render`]: content, policy, redaction) and hands
//! the entries to every sink's own bounded queue, drained by that sink's thread — so a
//! stalled sink stalls only itself (`overflow = "drop"`) or, by choice, everyone
//! (`"block"`).
//!
//! Nothing shared is touched per request on a worker: a record goes into the worker's own
//! batch; the queue's bounds and channel are touched once per batch. No syscall either: the
//! writer pauses [`PAUSE`] after each batch instead of parking on the queue, so a worker's
//! hand-over finds it awake or asleep on a timer, never parked and waiting to be woken
//! (only an idle writer is woken, by the first batch after the idle time).

use std::cell::RefCell;
use std::io;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{unbounded, Receiver, RecvTimeoutError, Sender};

use super::content::Redactor;
use super::record::{Entry, Record};
use super::sink::{self, open::OpenSink, Sink};
use super::{AuditSettings, Overflow, SinkSettings};

/// How long the writer waits after a batch before draining again.
pub const PAUSE: Duration = Duration::from_millis(5);
/// Most records rendered in one batch.
const BATCH: usize = 1024;
/// Most bytes of content a sink writes in one batch.
const MAX_BATCH_BYTES: usize = 8 << 20;
/// How often dropped records are reported in a warning (when some were).
const DROP_WARNING_EVERY: Duration = Duration::from_secs(10);
/// Most records a worker gathers before handing them over (its upkeep tick, every 100 ms,
/// hands over what it has before that).
pub const WORKER_BATCH: usize = 64;
/// Most bytes of content ([`Record::weight`]) a worker gathers before handing them over: 1
/// MiB.
pub const WORKER_BATCH_BYTES: usize = 1 << 20;

enum Msg {
    /// A worker's batch and the bytes it took of the budget.
    Records(Vec<Record>, usize),
    Close,
}

/// A bound on what is queued (records, or bytes of content), shared by every worker and
/// the writer.
#[derive(Debug)]
struct Budget {
    used: AtomicUsize,
    max: usize,
}

impl Budget {
    /// Takes `n`, waiting for room when `wait` (anything fits an empty budget); `false`
    /// when it did not fit and `wait` is off.
    fn take(&self, n: usize, wait: bool) -> bool {
        loop {
            let used = self.used.load(Ordering::Relaxed);
            if used == 0 || used.saturating_add(n) <= self.max {
                if self
                    .used
                    .compare_exchange_weak(used, used + n, Ordering::Relaxed, Ordering::Relaxed)
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

    fn give(&self, n: usize) {
        self.used.fetch_sub(n, Ordering::Relaxed);
    }
}

/// A worker's records on their way to the writer, gathered on the worker's thread: handed
/// over ([`Recorder::submit`]) as one batch when it holds [`WORKER_BATCH`] records or
/// [`WORKER_BATCH_BYTES`], when the worker's upkeep tick or its stop calls
/// [`WorkerBatch::flush`], or when a reload brought another recorder.
#[derive(Default)]
pub struct WorkerBatch(RefCell<Gathered>);

#[derive(Default)]
struct Gathered {
    recorder: Option<Arc<Recorder>>,
    records: Vec<Record>,
    weight: usize,
}

impl Gathered {
    fn hand_over(&mut self) {
        let Some(recorder) = self.recorder.take() else {
            return;
        };
        let records = std::mem::take(&mut self.records);
        let weight = std::mem::take(&mut self.weight);
        if !records.is_empty() {
            recorder.submit(records, weight);
        }
    }
}

impl WorkerBatch {
    /// Adds a completed request's record for `recorder`.
    pub fn push(&self, recorder: &Arc<Recorder>, record: Record) {
        let Ok(mut gathered) = self.0.try_borrow_mut() else {
            // Not reached (nothing here calls back into the batch); never lose the record.
            let weight = record.weight();
            recorder.submit(vec![record], weight);
            return;
        };
        if gathered
            .recorder
            .as_ref()
            .is_some_and(|r| !Arc::ptr_eq(r, recorder))
        {
            gathered.hand_over();
        }
        if gathered.recorder.is_none() {
            gathered.recorder = Some(Arc::clone(recorder));
            gathered.records.reserve(WORKER_BATCH);
        }
        gathered.weight += record.weight();
        gathered.records.push(record);
        if gathered.records.len() >= WORKER_BATCH || gathered.weight >= WORKER_BATCH_BYTES {
            gathered.hand_over();
        }
    }

    /// Hands over what is gathered.
    pub fn flush(&self) {
        if let Ok(mut gathered) = self.0.try_borrow_mut() {
            gathered.hand_over();
        }
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

impl SinkStats {
    /// Zero counts for the sink `settings` describes.
    pub fn new(settings: &SinkSettings) -> Self {
        Self {
            name: settings.name(),
            overflow: settings.overflow,
            written: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            errors: AtomicU64::new(0),
        }
    }
}

/// The audit pipeline of a running config: the queue, the writer and the sinks. Carried
/// over by a reload whose `[audit]` is unchanged; otherwise the old one drains and stops
/// when the last request holding it completes.
pub struct Recorder {
    settings: AuditSettings,
    /// The redaction patterns, which the writer applies to content and workers to a client's
    /// request id ([`Recorder::redactor`]).
    redactor: Redactor,
    tx: Sender<Msg>,
    /// Whether some sink blocks: then workers wait on a full queue rather than drop.
    blocks: bool,
    sinks: Vec<Arc<SinkStats>>,
    /// Records waiting for the writer (`queue`).
    queued: Arc<Budget>,
    /// Bytes of content every queue holds (`max_queue_bytes`).
    budget: Arc<Budget>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl Recorder {
    /// Opens every sink (a file that cannot be opened fails here, named) — or shares the
    /// one already open for its destination ([`sink::open`]) — and starts the writer.
    pub fn start(settings: &AuditSettings) -> io::Result<Arc<Recorder>> {
        let redactor = Redactor::new(settings.default_redactions, &settings.redact)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        let mut lanes = Vec::with_capacity(settings.sinks.len());
        for (i, s) in settings.sinks.iter().enumerate() {
            lanes.push(Lane {
                sink: sink::open::acquire(s, i)?,
                overflow: s.overflow,
            });
        }
        let stats: Vec<Arc<SinkStats>> = lanes.iter().map(|l| Arc::clone(&l.sink.stats)).collect();
        // Bounded by `queued`, in records, rather than in batches.
        let (tx, rx) = unbounded::<Msg>();
        let queued = Arc::new(Budget {
            used: AtomicUsize::new(0),
            max: settings.queue,
        });
        let writer_queued = Arc::clone(&queued);
        let node: Arc<str> = Arc::from(settings.node.as_str());
        let writer_stats = stats.clone();
        let budget = Arc::new(Budget {
            used: AtomicUsize::new(0),
            max: usize::try_from(settings.max_queue_bytes).unwrap_or(usize::MAX),
        });
        let writer_budget = Arc::clone(&budget);
        let writer_redactor = redactor.clone();
        let writer = std::thread::Builder::new()
            .name("sluice-audit-writer".into())
            .spawn(move || {
                let bounds = Bounds {
                    queued: &writer_queued,
                    bytes: &writer_budget,
                };
                write_loop(&rx, lanes, &node, &writer_redactor, &writer_stats, bounds)
            })?;
        Ok(Arc::new(Recorder {
            settings: settings.clone(),
            redactor,
            tx,
            blocks: settings.sinks.iter().any(|s| s.overflow == Overflow::Block),
            sinks: stats,
            queued,
            budget,
            writer: Mutex::new(Some(writer)),
        }))
    }

    /// The settings it runs with (a reload with the same ones keeps it).
    pub fn settings(&self) -> &AuditSettings {
        &self.settings
    }

    /// The redaction patterns of `[audit]` (defaults and the operator's own).
    pub fn redactor(&self) -> &Redactor {
        &self.redactor
    }

    /// Each sink's counts, in `[[audit.sink]]` order (shared with any other recorder
    /// writing to the same destination).
    pub fn sinks(&self) -> &[Arc<SinkStats>] {
        &self.sinks
    }

    /// Records waiting for the writer.
    pub fn queue_depth(&self) -> usize {
        self.queued.used.load(Ordering::Relaxed)
    }

    /// Bytes of content the queued records hold (waiting for the writer or a sink).
    pub fn queued_bytes(&self) -> usize {
        self.budget.used.load(Ordering::Relaxed)
    }

    /// Hands a worker's batch of records, holding `weight` bytes of content, to the writer.
    /// When the queue cannot take them (`queue` records, or `max_queue_bytes` of content
    /// queued): waits if a sink blocks, else drops them, counted for every sink.
    pub fn submit(&self, records: Vec<Record>, weight: usize) {
        let n = records.len();
        if !self.queued.take(n, self.blocks) {
            self.dropped_everywhere(n);
            return;
        }
        if !self.budget.take(weight, self.blocks) {
            self.queued.give(n);
            self.dropped_everywhere(n);
            return;
        }
        // Disconnected only after `close`: nothing to record into any more.
        if self.tx.send(Msg::Records(records, weight)).is_err() {
            self.queued.give(n);
            self.budget.give(weight);
        }
    }

    fn dropped_everywhere(&self, n: usize) {
        for sink in self.sinks.iter() {
            sink.dropped.fetch_add(n as u64, Ordering::Relaxed);
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
    sink: Arc<OpenSink>,
    overflow: Overflow,
}

/// The writer's view of the queue's bounds.
#[derive(Clone, Copy)]
struct Bounds<'a> {
    queued: &'a Arc<Budget>,
    bytes: &'a Arc<Budget>,
}

/// Renders a batch of `records`, which took `weight` of the byte budget, into `out`: each
/// entry then holds its own weight instead, and the records leave the queue.
fn render(
    records: Vec<Record>,
    weight: usize,
    node: &Arc<str>,
    redactor: &Redactor,
    bounds: Bounds<'_>,
    out: &mut Vec<Arc<Entry>>,
) {
    let n = records.len();
    for record in records {
        let mut entry = Entry::render(record, node, redactor);
        let bytes = entry.weight();
        bounds.bytes.used.fetch_add(bytes, Ordering::Relaxed);
        entry.held = Some(Held {
            bytes,
            budget: Arc::clone(bounds.bytes),
        });
        out.push(Arc::new(entry));
    }
    bounds.bytes.give(weight);
    bounds.queued.give(n);
}

fn write_loop(
    rx: &Receiver<Msg>,
    lanes: Vec<Lane>,
    node: &Arc<str>,
    redactor: &Redactor,
    stats: &[Arc<SinkStats>],
    bounds: Bounds<'_>,
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
                Msg::Records(records, weight) => {
                    render(records, weight, node, redactor, bounds, &mut batch);
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
                    Overflow::Block => !lane.sink.send(entry),
                    Overflow::Drop => !lane.sink.try_send(entry),
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
        while let Ok(Msg::Records(records, weight)) = rx.try_recv() {
            let mut entries = Vec::new();
            render(records, weight, node, redactor, bounds, &mut entries);
            for entry in &entries {
                for lane in &lanes {
                    let _ = lane.sink.send(Arc::clone(entry));
                }
            }
        }
    }
    // A sink no other recorder uses closes here: its queue written, its file synced, its
    // thread joined (`OpenSink`'s drop).
    drop(lanes);
    warned.report(stats);
}

/// Drains one sink's queue in batches until every writer lets go of it.
pub(crate) fn drain_sink(mut sink: Box<dyn Sink>, rx: &Receiver<Arc<Entry>>, stats: &SinkStats) {
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
    /// Starts from each sink's count now (a shared sink's earlier drops were reported by
    /// the recorder that saw them); the first drop is reported at the next check.
    fn new(stats: &[Arc<SinkStats>]) -> Self {
        Self {
            reported: stats
                .iter()
                .map(|s| s.dropped.load(Ordering::Relaxed))
                .collect(),
            at: Instant::now()
                .checked_sub(DROP_WARNING_EVERY)
                .unwrap_or_else(Instant::now),
        }
    }

    /// Reports drops not yet reported, unless the last report was under
    /// [`DROP_WARNING_EVERY`] ago.
    fn check(&mut self, stats: &[Arc<SinkStats>]) {
        if self.at.elapsed() < DROP_WARNING_EVERY {
            return;
        }
        self.report(stats);
    }

    /// Reports drops not yet reported, now (the writer's last word).
    fn report(&mut self, stats: &[Arc<SinkStats>]) {
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

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};
    use std::time::SystemTime;

    use super::*;
    use crate::audit::{ContentMode, FileSinkSettings, SinkKind, SinkSettings};
    use crate::policy::context::RequestId;

    fn recorder(dir: &std::path::Path, name: &str) -> Arc<Recorder> {
        let settings = AuditSettings {
            sinks: vec![SinkSettings {
                kind: SinkKind::File(FileSinkSettings {
                    path: dir.join(name),
                    rotate_size: None,
                    rotate_interval: None,
                    fsync_interval: Duration::from_secs(1),
                }),
                overflow: Overflow::Drop,
                queue: 1024,
            }],
            queue: 1024,
            max_queue_bytes: 1 << 30,
            content: ContentMode::Omit,
            default_redactions: true,
            redact: Vec::new(),
            node: "test".into(),
        };
        Recorder::start(&settings).unwrap()
    }

    fn record(seq: u64) -> Record {
        Record {
            time: SystemTime::now(),
            request_id: RequestId::hex(&[(seq, 24)]),
            worker: 0,
            subscription: None,
            product: None,
            operation: None,
            deployment: None,
            api_version: None,
            attempts: Vec::new(),
            status: Some(200),
            error: None,
            end: "complete",
            latency: Duration::from_millis(1),
            upstream_latency: None,
            ttft: None,
            cache: None,
            tokens: None,
            model: None,
            client_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            client_cert: None,
            jwt_subject: None,
            app_id: None,
            content: ContentMode::Omit,
            request_body: None,
            answer: None,
        }
    }

    fn written(recorder: &Recorder) -> u64 {
        recorder.sinks()[0].written.load(Ordering::Relaxed)
    }

    /// Waits (at most 10 s) until `recorder`'s sink has written `n` records.
    fn wait_written(recorder: &Recorder, n: u64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while written(recorder) < n && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(written(recorder), n);
    }

    #[test]
    fn a_worker_batch_is_handed_over_when_full_when_flushed_and_on_another_recorder() {
        let dir = std::env::temp_dir().join(format!("sluice-batch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (a, b) = (recorder(&dir, "a.jsonl"), recorder(&dir, "b.jsonl"));
        let batch = WorkerBatch::default();
        for seq in 0..WORKER_BATCH as u64 - 1 {
            batch.push(&a, record(seq));
        }
        // Gathered on the worker: nothing queued yet.
        assert_eq!(a.queue_depth(), 0);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(written(&a), 0);
        // The batch's last record hands it over.
        batch.push(&a, record(99));
        wait_written(&a, WORKER_BATCH as u64);
        // A flush (the upkeep tick) hands over what there is.
        for seq in 0..3 {
            batch.push(&a, record(seq));
        }
        batch.flush();
        wait_written(&a, WORKER_BATCH as u64 + 3);
        // A reload's new recorder: the old one's records go to the old one first.
        batch.push(&a, record(1));
        batch.push(&b, record(2));
        wait_written(&a, WORKER_BATCH as u64 + 4);
        batch.flush();
        wait_written(&b, 1);
        for r in [&a, &b] {
            assert!(r.close(Instant::now() + Duration::from_secs(10)));
        }
        let lines = std::fs::read_to_string(dir.join("a.jsonl")).unwrap();
        assert_eq!(lines.lines().count(), WORKER_BATCH + 4);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_batch_the_queue_cannot_take_is_dropped_and_counted_record_by_record() {
        let dir = std::env::temp_dir().join(format!("sluice-batch-drop-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let a = recorder(&dir, "a.jsonl");
        // As if the writer were behind: the queue holds its 1024 records.
        assert!(a.queued.take(1024, false));
        a.submit((0..5).map(record).collect(), 5 * 1024);
        assert_eq!(a.sinks()[0].dropped.load(Ordering::Relaxed), 5);
        assert_eq!(a.queued_bytes(), 0);
        a.queued.give(1024);
        a.submit((0..5).map(record).collect(), 5 * 1024);
        wait_written(&a, 5);
        assert!(a.close(Instant::now() + Duration::from_secs(10)));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
