//! Where records go: a JSON lines [`file`], standard output, a [`sqlite`] database. Each
//! runs on its own thread (see [`super::recorder`]) and writes whole batches.

pub mod file;
pub mod open;
pub mod sqlite;

use std::io::{self, Write};
use std::sync::Arc;
use std::time::Duration;

use super::record::Entry;
use super::SinkKind;

/// A sink's side of the writer.
pub trait Sink: Send {
    /// Writes a batch of entries, in order.
    fn write(&mut self, batch: &[Arc<Entry>]) -> io::Result<()>;
    /// Time-driven work (fsync, rotation), after each batch and at least every
    /// [`Sink::idle_tick`].
    fn tick(&mut self) -> io::Result<()> {
        Ok(())
    }
    /// How long the sink's thread may wait for records before calling [`Sink::tick`].
    fn idle_tick(&self) -> Duration {
        Duration::from_secs(1)
    }
    /// Shutdown: everything written made durable.
    fn close(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Opens the sink `kind` describes.
pub fn open(kind: &SinkKind) -> io::Result<Box<dyn Sink>> {
    Ok(match kind {
        SinkKind::File(settings) => Box::new(file::FileSink::open(settings.clone())?),
        SinkKind::Stdout => Box::new(Stdout),
        SinkKind::Sqlite { path } => Box::new(sqlite::SqliteSink::open(path)?),
    })
}

/// JSON lines on standard output (the process log is on standard error).
struct Stdout;

impl Sink for Stdout {
    fn write(&mut self, batch: &[Arc<Entry>]) -> io::Result<()> {
        let mut text = String::with_capacity(batch.len() * 512);
        for entry in batch {
            text.push_str(&entry.json_line());
        }
        let mut out = io::stdout().lock();
        out.write_all(text.as_bytes())?;
        out.flush()
    }
}
