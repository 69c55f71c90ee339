//! The SQLite sink: one row per record in table `requests` of a database file in WAL mode,
//! each batch in one transaction (a crash loses at most the batch being written, never
//! corrupts the file).
//!
//! The schema is versioned (`sluice_schema.version`, [`SCHEMA_VERSION`]): a database of
//! another version is refused at start rather than written into. The README's SQL section
//! queries it; [`SCHEMA`] is the reference.

use std::io;
use std::path::Path;
use std::sync::Arc;

use rusqlite::{params, Connection};

use super::Sink;
use crate::audit::record::Entry;

/// The schema version this Sluice writes.
pub const SCHEMA_VERSION: i64 = 1;

/// The tables and indexes (version [`SCHEMA_VERSION`]). `time` is RFC 3339 UTC text,
/// `time_unix_ms` the same instant as milliseconds (indexed); `attempts`, `request` and
/// `response` are JSON text (query them with SQLite's `json_extract`); booleans are 0/1.
pub const SCHEMA: &str = "
CREATE TABLE sluice_schema (version INTEGER NOT NULL);
CREATE TABLE requests (
    time TEXT NOT NULL,
    time_unix_ms INTEGER NOT NULL,
    request_id TEXT NOT NULL,
    node TEXT NOT NULL,
    worker INTEGER NOT NULL,
    subscription TEXT,
    product TEXT,
    operation TEXT,
    deployment TEXT,
    model TEXT,
    api_version TEXT,
    backend TEXT,
    attempts TEXT NOT NULL,
    status INTEGER,
    error TEXT,
    ended TEXT NOT NULL,
    truncated INTEGER NOT NULL,
    latency_ms REAL NOT NULL,
    upstream_latency_ms REAL,
    ttft_ms REAL,
    prompt_tokens INTEGER,
    completion_tokens INTEGER,
    total_tokens INTEGER,
    tokens_estimated INTEGER,
    client_ip TEXT NOT NULL,
    client_cert TEXT,
    jwt_subject TEXT,
    app_id TEXT,
    content TEXT NOT NULL,
    request TEXT,
    response TEXT
);
CREATE INDEX requests_time ON requests (time_unix_ms);
CREATE INDEX requests_subscription ON requests (subscription, time_unix_ms);
CREATE INDEX requests_deployment ON requests (deployment, time_unix_ms);
";

const INSERT: &str = "INSERT INTO requests (time, time_unix_ms, request_id, node, worker,
    subscription, product, operation, deployment, model, api_version, backend, attempts,
    status, error, ended, truncated, latency_ms, upstream_latency_ms, ttft_ms, prompt_tokens,
    completion_tokens, total_tokens, tokens_estimated, client_ip, client_cert, jwt_subject,
    app_id, content, request, response)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18,
    ?19, ?20, ?21, ?22, ?23, ?24, ?25, ?26, ?27, ?28, ?29, ?30, ?31)";

/// A SQLite database being written.
pub struct SqliteSink {
    db: Connection,
    path: std::path::PathBuf,
    /// The database file as opened (to notice it removed or replaced).
    file: std::fs::File,
}

impl SqliteSink {
    /// Opens (creating) the database, in WAL mode, with the schema made or checked.
    pub fn open(path: &Path) -> io::Result<Self> {
        let named = |e: rusqlite::Error| io::Error::other(format!("{}: {e}", path.display()));
        let db = Connection::open(path).map_err(named)?;
        db.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(named)?;
        db.pragma_update(None, "journal_mode", "WAL")
            .map_err(named)?;
        db.pragma_update(None, "synchronous", "NORMAL")
            .map_err(named)?;
        prepare_schema(&db).map_err(|e| match e {
            SchemaError::Sql(e) => named(e),
            SchemaError::Version(v) => io::Error::other(format!(
                "{}: its audit schema is version {v}; this Sluice writes version {SCHEMA_VERSION} (use another file)",
                path.display()
            )),
        })?;
        let file = std::fs::File::open(path)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        Ok(Self {
            db,
            path: path.to_path_buf(),
            file,
        })
    }
}

impl SqliteSink {
    /// Reopens the database when the path no longer names it (removed or replaced): rows
    /// written to the old file would be lost to readers. One `stat` per batch and tick.
    fn ensure_current(&mut self) -> io::Result<()> {
        if super::file::same_file(&self.file, &self.path) {
            return Ok(());
        }
        *self = SqliteSink::open(&self.path)?;
        tracing::warn!(file = %self.path.display(), "audit database was removed or replaced while open; writing to a new one");
        Ok(())
    }
}

enum SchemaError {
    Sql(rusqlite::Error),
    Version(i64),
}

impl From<rusqlite::Error> for SchemaError {
    fn from(e: rusqlite::Error) -> Self {
        SchemaError::Sql(e)
    }
}

/// Creates the schema in an empty database, or checks the version of an existing one.
fn prepare_schema(db: &Connection) -> Result<(), SchemaError> {
    let exists: bool = db.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'sluice_schema')",
        [],
        |row| row.get(0),
    )?;
    if exists {
        let version: i64 = db.query_row("SELECT max(version) FROM sluice_schema", [], |row| {
            row.get::<_, Option<i64>>(0).map(|v| v.unwrap_or(0))
        })?;
        return match version {
            SCHEMA_VERSION => Ok(()),
            other => Err(SchemaError::Version(other)),
        };
    }
    db.execute_batch(&format!(
        "BEGIN; {SCHEMA} INSERT INTO sluice_schema (version) VALUES ({SCHEMA_VERSION}); COMMIT;"
    ))?;
    Ok(())
}

impl Sink for SqliteSink {
    fn write(&mut self, batch: &[Arc<Entry>]) -> io::Result<()> {
        self.ensure_current()?;
        insert(&mut self.db, batch).map_err(io::Error::other)
    }

    fn tick(&mut self) -> io::Result<()> {
        self.ensure_current()
    }

    fn close(&mut self) -> io::Result<()> {
        // Folds the WAL back into the database file, so the file alone is whole.
        self.db
            .pragma_update(None, "wal_checkpoint", "TRUNCATE")
            .map_err(io::Error::other)
    }
}

fn insert(db: &mut Connection, batch: &[Arc<Entry>]) -> rusqlite::Result<()> {
    let tx = db.transaction()?;
    {
        let mut stmt = tx.prepare_cached(INSERT)?;
        for e in batch {
            stmt.execute(params![
                e.time,
                e.time_unix_ms,
                e.request_id,
                &*e.node,
                e.worker as i64,
                e.subscription,
                e.product,
                e.operation,
                e.deployment,
                e.model,
                e.api_version,
                e.backend,
                serde_json::to_string(&e.attempts).unwrap_or_else(|_| "[]".to_owned()),
                e.status,
                e.error,
                e.ended,
                e.truncated,
                e.latency_ms,
                e.upstream_latency_ms,
                e.ttft_ms,
                e.prompt_tokens.map(clamp),
                e.completion_tokens.map(clamp),
                e.total_tokens.map(clamp),
                e.tokens_estimated,
                e.client_ip,
                e.client_cert.as_deref(),
                e.jwt_subject,
                e.app_id,
                e.content,
                e.request.as_deref().map(serde_json::value::RawValue::get),
                e.response.as_deref().map(serde_json::value::RawValue::get),
            ])?;
        }
    }
    tx.commit()
}

/// SQLite integers are signed 64-bit.
fn clamp(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}
