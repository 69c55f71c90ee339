//! One sink thread per destination in the process. A reload that changes `[audit]` starts a
//! new recorder while the old one finishes the requests that hold it; when both name the same
//! file (or database, or stdout), they share its one open sink — its thread, queue and
//! counters — so two writers never append to, rotate or repair the same file at once (a new
//! sink's torn-line repair would otherwise cut the old one's write in progress). A
//! destination whose sink settings change (rotation, fsync, queue, overflow) while it is open
//! is refused: that change takes a restart, or a new path.
//!
//! A sink closes when the last recorder using it lets go: its queue is written, its file
//! synced and its thread joined before the destination may be opened again.

use std::collections::HashMap;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, LazyLock, Mutex, MutexGuard, PoisonError, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Sender};

use super::super::record::Entry;
use super::super::recorder::{drain_sink, SinkStats};
use super::super::{SinkKind, SinkSettings};

/// How long opening a destination waits for its previous sink to finish closing.
const RELEASE_WAIT: Duration = Duration::from_secs(30);

/// A destination's open sink, shared by every recorder that names it.
pub struct OpenSink {
    settings: SinkSettings,
    tx: Option<Sender<Arc<Entry>>>,
    /// Its counts (`sluice_audit_*_total{sink}`), across every recorder using it.
    pub stats: Arc<SinkStats>,
    thread: Option<JoinHandle<()>>,
    released: Arc<Released>,
}

impl OpenSink {
    /// Queues `entry`, waiting for room; `false` when the sink has stopped.
    pub fn send(&self, entry: Arc<Entry>) -> bool {
        self.tx.as_ref().is_some_and(|tx| tx.send(entry).is_ok())
    }

    /// Queues `entry` if there is room; `false` when full (or stopped).
    pub fn try_send(&self, entry: Arc<Entry>) -> bool {
        self.tx
            .as_ref()
            .is_some_and(|tx| tx.try_send(entry).is_ok())
    }
}

impl Drop for OpenSink {
    /// The last user let go: the thread writes what is queued, syncs and closes; the
    /// destination is free once it has.
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        self.released.set();
    }
}

/// Whether a destination's last sink has closed.
#[derive(Default)]
struct Released {
    done: Mutex<bool>,
    cv: Condvar,
}

impl Released {
    fn set(&self) {
        *self.done.lock().unwrap_or_else(PoisonError::into_inner) = true;
        self.cv.notify_all();
    }

    /// Waits until set, at most `within`; whether it was.
    fn wait(&self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        let mut done = self.done.lock().unwrap_or_else(PoisonError::into_inner);
        while !*done {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            done = self
                .cv
                .wait_timeout(done, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        true
    }
}

struct Registered {
    sink: Weak<OpenSink>,
    released: Arc<Released>,
}

fn registry() -> MutexGuard<'static, HashMap<PathBuf, Registered>> {
    static OPEN: LazyLock<Mutex<HashMap<PathBuf, Registered>>> = LazyLock::new(Mutex::default);
    OPEN.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What a sink writes to, as one key: the file's absolute path with its folder resolved
/// (`.`, `..`, symbolic links), or `-` for stdout.
pub(crate) fn destination(kind: &SinkKind) -> PathBuf {
    let path = match kind {
        SinkKind::Stdout => return PathBuf::from("-"),
        SinkKind::File(f) => &f.path,
        SinkKind::Sqlite { path } => path,
    };
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.clone());
    match (absolute.parent(), absolute.file_name()) {
        (Some(folder), Some(name)) => std::fs::canonicalize(folder)
            .map(|folder| folder.join(name))
            .unwrap_or(absolute),
        _ => absolute,
    }
}

/// The open sink for `settings`: the one already open for its destination when its settings
/// are the same, else a new one (opened, its thread started) once any previous one has
/// closed. Errors: the destination cannot be opened (named); it is open with other settings;
/// its previous sink did not close within 30 s.
pub fn acquire(settings: &SinkSettings, index: usize) -> io::Result<Arc<OpenSink>> {
    let key = destination(&settings.kind);
    loop {
        let mut open = registry();
        if let Some(registered) = open.get(&key) {
            if let Some(sink) = registered.sink.upgrade() {
                if sink.settings == *settings {
                    return Ok(sink);
                }
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "audit sink {} is open with other settings (kind, rotation, fsync, queue or overflow); changing them takes a restart, or write to a new path",
                        settings.name()
                    ),
                ));
            }
            let released = Arc::clone(&registered.released);
            drop(open);
            if !released.wait(RELEASE_WAIT) {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "audit sink {} is still closing after {RELEASE_WAIT:?}",
                        settings.name()
                    ),
                ));
            }
            let mut open = registry();
            if open
                .get(&key)
                .is_some_and(|r| Arc::ptr_eq(&r.released, &released))
            {
                open.remove(&key);
            }
            continue;
        }
        // Opened under the registry's lock: no other recorder can open it meanwhile.
        let sink = super::open(&settings.kind)?;
        let stats = Arc::new(SinkStats::new(settings));
        let (tx, rx) = bounded::<Arc<Entry>>(settings.queue);
        let thread_stats = Arc::clone(&stats);
        let thread = std::thread::Builder::new()
            .name(format!("sluice-audit-sink-{index}"))
            .spawn(move || drain_sink(sink, &rx, &thread_stats))?;
        let released = Arc::new(Released::default());
        let opened = Arc::new(OpenSink {
            settings: settings.clone(),
            tx: Some(tx),
            stats,
            thread: Some(thread),
            released: Arc::clone(&released),
        });
        open.insert(
            key,
            Registered {
                sink: Arc::downgrade(&opened),
                released,
            },
        );
        return Ok(opened);
    }
}
