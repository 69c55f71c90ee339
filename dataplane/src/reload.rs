//! Config reload: on SIGHUP and when the config file changes (polled), put the file in force
//! again with [`crate::apply::apply`] (compile, carry over, swap). Requests in flight finish on the snapshot
//! they started with; a file that does not compile is refused with a log line and the old
//! snapshot keeps serving.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::apply;
use crate::server::Shared;

/// How often the config file's metadata is looked at.
pub const POLL_INTERVAL: Duration = Duration::from_millis(500);

/// What identifies one version of the file: modification time, size and inode (editors and
/// `git checkout` often replace the file rather than rewrite it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    mtime_ns: i128,
    len: u64,
    ino: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    let m = std::fs::metadata(path).ok()?;
    Some(Stamp {
        mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
        len: m.len(),
        ino: m.ino(),
    })
}

/// Reloads the config into a running server.
pub struct Reloader {
    shared: Arc<Shared>,
    path: PathBuf,
    /// The stamp of the file last tried; serialises reloads from the signal and poll threads.
    last: Mutex<Option<Stamp>>,
}

impl Reloader {
    /// A reloader for `path`, whose current version is already in force.
    pub fn new(shared: Arc<Shared>, path: PathBuf) -> Arc<Self> {
        let last = Mutex::new(stamp(&path));
        Arc::new(Self { shared, path, last })
    }

    /// Applies the file now. Returns whether the new config is in force.
    pub fn reload(&self, reason: &str) -> bool {
        let mut last = match self.last.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        *last = stamp(&self.path);
        let outcome = apply::apply(&self.shared, &self.path, reason);
        let counter = match outcome {
            Ok(()) => &self.shared.metrics.reloads_ok,
            Err(_) => &self.shared.metrics.reloads_failed,
        };
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match outcome {
            Ok(()) => true,
            Err(errors) => {
                tracing::error!(reason, file = %self.path.display(), "config reload refused; keeping the running config:\n{errors}");
                false
            }
        }
    }

    /// Reloads when the file's stamp moved since the last attempt.
    pub fn reload_if_changed(&self) -> bool {
        let now = stamp(&self.path);
        let changed = match self.last.lock() {
            Ok(guard) => *guard != now,
            Err(poisoned) => *poisoned.into_inner() != now,
        };
        changed && now.is_some() && self.reload("file changed")
    }

    /// Starts the thread that polls the file every [`POLL_INTERVAL`] until shutdown.
    pub fn spawn_watcher(
        self: &Arc<Self>,
        stop: Arc<std::sync::atomic::AtomicBool>,
    ) -> std::io::Result<()> {
        let this = self.clone();
        std::thread::Builder::new()
            .name("sluice-config-watch".into())
            .spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Acquire) {
                    std::thread::sleep(POLL_INTERVAL);
                    this.reload_if_changed();
                }
            })?;
        Ok(())
    }
}
