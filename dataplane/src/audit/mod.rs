//! The audit log (DESIGN.md "Observability"): one record per request, whatever its outcome,
//! written off the request path.
//!
//! - [`content`]: what of a request's and an answer's content a record keeps — the request's
//!   messages (or prompt, input), the answer's choices (a stream's reassembled from its SSE
//!   deltas as it passes), with the content policy and redaction applied.
//! - [`record`]: the record a worker hands over, and the entry written (one JSON line, one
//!   SQLite row).
//! - [`recorder`]: the bounded queue, the writer thread and each sink's thread.
//! - [`sink`]: JSON lines file (rotated, fsynced, never a torn line), stdout, SQLite.
//! - [`usage`]: `sluice usage`, token usage grouped from an audit database.
//!
//! The policy that fills records on the request path is [`crate::policy::audit`].

pub mod bounded;
pub mod content;
pub mod record;
pub mod recorder;
pub mod sink;
pub mod usage;

pub use record::{Entry, Record};
pub use recorder::{Recorder, WorkerBatch};

use std::path::PathBuf;
use std::time::Duration;

/// How much of a request's and answer's content a record keeps, per product
/// (`[[product]] audit = { content = … }`, default `[audit] content`, itself default
/// [`ContentMode::Full`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ContentMode {
    /// `"full"`: every text field as it was (after redaction).
    #[default]
    Full,
    /// `"truncate"`: each text field cut to this many characters (Unicode scalar values),
    /// after redaction (`truncate_chars`, default [`DEFAULT_TRUNCATE_CHARS`]).
    Truncate(usize),
    /// `"hash"`: each text field replaced by `sha256:` and the lowercase hex SHA-256 of its
    /// redacted UTF-8 text, so equal prompts can be matched without keeping them.
    Hash,
    /// `"omit"`: no content at all (the worker does not even copy it).
    Omit,
}

/// Default `truncate_chars` of [`ContentMode::Truncate`].
pub const DEFAULT_TRUNCATE_CHARS: usize = 1000;

/// Default `[audit] queue`: records waiting between the workers and the writer.
pub const DEFAULT_QUEUE: usize = 65_536;
/// The largest `queue` (of `[audit]` or a sink) accepted: 1,048,576 records (a queue's slots
/// are allocated when it starts).
pub const MAX_QUEUE: usize = 1 << 20;
/// Default `[audit] max_queue_bytes`: what all queued records may hold together, 256 MiB.
pub const DEFAULT_MAX_QUEUE_BYTES: u64 = 256 << 20;
/// Default `fsync_interval` of a file sink.
pub const DEFAULT_FSYNC_INTERVAL: Duration = Duration::from_secs(1);

/// `[audit]`, compiled: set when at least one sink is configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditSettings {
    /// Where records go, in file order (`[[audit.sink]]`).
    pub sinks: Vec<SinkSettings>,
    /// Records the queue between the workers and the writer holds (`queue`, default
    /// [`DEFAULT_QUEUE`], at most [`MAX_QUEUE`]); each sink's own queue holds as many unless
    /// it says otherwise. Workers hand records over in batches
    /// ([`recorder::WorkerBatch`]: up to [`recorder::WORKER_BATCH`] records or
    /// [`recorder::WORKER_BATCH_BYTES`], at least every 100 ms): a batch that does not fit
    /// is dropped whole, counted record by record, or waited for; a batch always fits an
    /// empty queue.
    pub queue: usize,
    /// What the records waiting in all the queues may hold together, in bytes of content
    /// (`max_queue_bytes`, default [`DEFAULT_MAX_QUEUE_BYTES`]): past it a batch is dropped
    /// for every sink (`overflow = "drop"`) or its worker waits (`"block"`). What a worker
    /// is still gathering is not counted (at most [`recorder::WORKER_BATCH_BYTES`] per
    /// worker, or one record).
    pub max_queue_bytes: u64,
    /// The content policy of requests whose product sets none (and of requests without a
    /// product: auth off, or refused before one was known).
    pub content: ContentMode,
    /// Whether the default redaction patterns apply (`default_redactions`, default true).
    pub default_redactions: bool,
    /// The operator's redaction patterns (`redact`), each checked to compile.
    pub redact: Vec<String>,
    /// The node name records carry (`node`, default the host name).
    pub node: String,
}

/// One `[[audit.sink]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkSettings {
    /// What it writes to.
    pub kind: SinkKind,
    /// What happens when its queue is full (`overflow`, default [`Overflow::Drop`]).
    pub overflow: Overflow,
    /// Records its queue holds (`queue`, default `[audit] queue`).
    pub queue: usize,
}

impl SinkSettings {
    /// Its name in logs and metrics: `file:PATH`, `stdout`, `sqlite:PATH`.
    pub fn name(&self) -> String {
        match &self.kind {
            SinkKind::File(file) => format!("file:{}", file.path.display()),
            SinkKind::Stdout => "stdout".to_owned(),
            SinkKind::Sqlite { path } => format!("sqlite:{}", path.display()),
        }
    }
}

/// What a sink writes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkKind {
    /// `kind = "file"`: JSON lines.
    File(FileSinkSettings),
    /// `kind = "stdout"`: JSON lines on standard output.
    Stdout,
    /// `kind = "sqlite"`: rows of a SQLite database (WAL mode).
    Sqlite {
        /// The database file (`path`, relative to the directory Sluice runs in).
        path: PathBuf,
    },
}

/// A JSON lines file sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSinkSettings {
    /// The file (`path`, relative to the directory Sluice runs in); appended to.
    pub path: PathBuf,
    /// Rotate once the file reaches this many bytes (`rotate_size`, e.g. `"100MiB"`;
    /// default never).
    pub rotate_size: Option<u64>,
    /// Rotate once the file is this old (`rotate_interval`, e.g. `"24h"`; default never).
    pub rotate_interval: Option<Duration>,
    /// How often written records are flushed to the disk with `fsync` (`fsync_interval`,
    /// default [`DEFAULT_FSYNC_INTERVAL`]); records reach the file (the page cache, which
    /// survives a crash of the process) as soon as the writer has them.
    pub fsync_interval: Duration,
}

/// What a sink does when its queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Overflow {
    /// `"drop"`: the record is dropped for this sink, counted in
    /// `sluice_audit_dropped_total{sink}` and in a warning at most every 10 s. Never silent.
    #[default]
    Drop,
    /// `"block"`: the writer waits for the sink, and workers wait for the writer
    /// (back-pressure on the requests being recorded): nothing is dropped.
    Block,
}
