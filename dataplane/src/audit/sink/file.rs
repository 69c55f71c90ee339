//! The JSON lines file sink: one record per line, appended; rotated by size and age;
//! `fsync`ed every `fsync_interval`.
//!
//! Each batch is written with one `write` of whole lines, so a crash of the process leaves
//! every line it wrote whole (the page cache survives it); a failed write (a full disk) is
//! cut back to the last whole line; a crash of the machine (or a kill mid-write) can leave a
//! partial last line, which [`FileSink::open`] moves aside to `PATH.torn-UNIXMS` before
//! appending, so the file is always whole lines. Rotation renames the file to
//! `PATH.YYYY-MM-DDTHH-MM-SSZ` (`.1`, `.2`, … when taken) after syncing it.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use super::Sink;
use crate::audit::record::Entry;
use crate::audit::FileSinkSettings;

/// A JSON lines file being appended to.
pub struct FileSink {
    settings: FileSinkSettings,
    file: File,
    /// Bytes in the file.
    size: u64,
    /// When the current file was started (for `rotate_interval`).
    started: SystemTime,
    /// Bytes written since the last fsync.
    unsynced: bool,
    synced_at: Instant,
}

impl FileSink {
    /// Opens (creating) the file for appending, first moving a torn last line aside.
    pub fn open(settings: FileSinkSettings) -> io::Result<Self> {
        let (file, size) = open_whole(&settings.path)?;
        let started = file
            .metadata()
            .and_then(|m| m.created())
            .unwrap_or_else(|_| SystemTime::now());
        Ok(Self {
            settings,
            file,
            size,
            started,
            unsynced: false,
            synced_at: Instant::now(),
        })
    }

    /// Reopens the file when the path no longer names it (an operator's `rm`, another
    /// rotator): what would be written to the old one is lost to readers. One `stat` per
    /// batch and tick.
    fn ensure_current(&mut self) -> io::Result<()> {
        if same_file(&self.file, &self.settings.path) {
            return Ok(());
        }
        let _ = self.file.sync_data();
        let (file, size) = open_whole(&self.settings.path)?;
        self.file = file;
        self.size = size;
        self.started = SystemTime::now();
        self.unsynced = false;
        tracing::warn!(file = %self.settings.path.display(), "audit file was removed or replaced while open; writing to a new one");
        Ok(())
    }

    fn rotate_due(&self) -> bool {
        let by_size = self
            .settings
            .rotate_size
            .is_some_and(|max| self.size >= max);
        let by_age = self.settings.rotate_interval.is_some_and(|every| {
            self.size > 0
                && SystemTime::now()
                    .duration_since(self.started)
                    .is_ok_and(|age| age >= every)
        });
        by_size || by_age
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.file.sync_data()?;
        let path = &self.settings.path;
        let stamp = humantime::format_rfc3339_seconds(SystemTime::now())
            .to_string()
            .replace(':', "-");
        let mut target = suffixed(path, &stamp);
        let mut n = 1;
        while target.exists() {
            target = suffixed(path, &format!("{stamp}.{n}"));
            n += 1;
        }
        std::fs::rename(path, &target)?;
        let (file, size) = open_whole(path)?;
        self.file = file;
        self.size = size;
        self.started = SystemTime::now();
        self.unsynced = false;
        self.synced_at = Instant::now();
        tracing::info!(file = %path.display(), rotated_to = %target.display(), "audit file rotated");
        Ok(())
    }
}

impl Sink for FileSink {
    fn write(&mut self, batch: &[Arc<Entry>]) -> io::Result<()> {
        self.ensure_current()?;
        let mut text = String::with_capacity(batch.len() * 512);
        for entry in batch {
            text.push_str(&entry.json_line());
        }
        // The file's length now, not as last written: someone may have cut it in place
        // (logrotate's `copytruncate`), and appends go to its real end.
        if let Ok(meta) = self.file.metadata() {
            self.size = meta.len();
        }
        if let Err(e) = self.file.write_all(text.as_bytes()) {
            // Part of the batch may have reached the file (a full disk): cut it off, so the
            // next batch does not follow a partial line.
            let _ = self.file.set_len(self.size);
            return Err(e);
        }
        self.size += text.len() as u64;
        self.unsynced = true;
        Ok(())
    }

    fn tick(&mut self) -> io::Result<()> {
        self.ensure_current()?;
        if self.unsynced && self.synced_at.elapsed() >= self.settings.fsync_interval {
            self.file.sync_data()?;
            self.unsynced = false;
            self.synced_at = Instant::now();
        }
        if self.rotate_due() {
            self.rotate()?;
        }
        Ok(())
    }

    fn idle_tick(&self) -> Duration {
        self.settings
            .fsync_interval
            .min(Duration::from_secs(1))
            .max(Duration::from_millis(10))
    }

    fn close(&mut self) -> io::Result<()> {
        self.file.flush()?;
        self.file.sync_data()
    }
}

/// Whether `path` still names `file` (same device and inode).
pub(super) fn same_file(file: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(open), Ok(named)) => open.dev() == named.dev() && open.ino() == named.ino(),
        _ => false,
    }
}

/// `PATH.suffix`.
fn suffixed(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".");
    name.push(suffix);
    PathBuf::from(name)
}

/// Opens `path` for appending, creating it; when its last line has no `\n` (a machine crash
/// mid-write), moves that partial line to `PATH.torn-UNIXMS` and cuts it off. Returns the
/// file and its size.
fn open_whole(path: &Path) -> io::Result<(File, u64)> {
    let named = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", path.display()));
    let mut file = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .open(path)
        .map_err(named)?;
    let size = file.metadata().map_err(named)?.len();
    let whole = last_line_start(&mut file, size).map_err(named)?;
    if whole < size {
        let mut torn = Vec::with_capacity((size - whole) as usize);
        file.seek(SeekFrom::Start(whole)).map_err(named)?;
        file.read_to_end(&mut torn).map_err(named)?;
        let millis = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis();
        let aside = suffixed(path, &format!("torn-{millis}"));
        std::fs::write(&aside, &torn).map_err(named)?;
        file.set_len(whole).map_err(named)?;
        file.sync_all().map_err(named)?;
        tracing::warn!(
            file = %path.display(),
            moved_to = %aside.display(),
            bytes = torn.len(),
            "audit file ended in a partial line (a crash mid-write); moved it aside"
        );
    }
    Ok((file, whole))
}

/// The offset just past the file's last `\n` (0 when it has none): where whole lines end.
fn last_line_start(file: &mut File, size: u64) -> io::Result<u64> {
    const STEP: u64 = 64 * 1024;
    let mut end = size;
    let mut buf = vec![0u8; STEP as usize];
    while end > 0 {
        let start = end.saturating_sub(STEP);
        let chunk = &mut buf[..(end - start) as usize];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(chunk)?;
        if let Some(i) = memchr::memrchr(b'\n', chunk) {
            return Ok(start + i as u64 + 1);
        }
        end = start;
    }
    Ok(0)
}
