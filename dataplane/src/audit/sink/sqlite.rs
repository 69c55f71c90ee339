//! The SQLite sink: one row per record in table `requests` of a database file in WAL mode,
//! each batch in one transaction (a crash loses at most the batch being written, never
//! corrupts the file).
//!
//! The schema is versioned (`sluice_schema.version`, [`SCHEMA_VERSION`]): a database of an
//! older version is migrated in place at start, in one transaction (version 1 gains the
//! `cache` column); one of a newer version is refused rather than written into. The README's
//! SQL section queries it; [`SCHEMA`] is the reference.

use std::io;
use std::path::Path;
use std::sync::Arc;

use rusqlite::{params, Connection};

use super::Sink;
use crate::audit::record::Entry;

/// The schema version this Sluice writes. 1: the first; 2: `requests.cache` (a version-1
/// database is migrated at start, its rows keeping `cache` NULL).
pub const SCHEMA_VERSION: i64 = 2;

/// The tables and indexes (version [`SCHEMA_VERSION`]). `time` is RFC 3339 UTC text,
/// `time_unix_ms` the same instant as milliseconds (indexed); `attempts`, `request` and
/// `response` are JSON text (query them with SQLite's `json_extract`); booleans are 0/1;
/// `cache` is what the response cache did — `'hit'`, `'miss'`, `'bypass'`, or NULL where
/// the deployment has no cache or the operation is not cached (and in rows written before
/// version 2).
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
    response TEXT,
    cache TEXT
);
CREATE INDEX requests_time ON requests (time_unix_ms);
CREATE INDEX requests_subscription ON requests (subscription, time_unix_ms);
CREATE INDEX requests_deployment ON requests (deployment, time_unix_ms);
";

const INSERT: &str = "INSERT INTO requests (time, time_unix_ms, request_id, node, worker,
    subscription, product, operation, deployment, model, api_version, backend, attempts,
    status, error, ended, truncated, latency_ms, upstream_latency_ms, ttft_ms, prompt_tokens,
    completion_tokens, total_tokens, tokens_estimated, client_ip, client_cert, jwt_subject,
    app_id, content, request, response, cache)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18,
    ?19, ?20, ?21, ?22, ?23, ?24, ?25, ?26, ?27, ?28, ?29, ?30, ?31, ?32)";

/// Version 1 to 2: the `cache` column (NULL in the rows already there: version 1 did not
/// record it).
const MIGRATE_1_TO_2: &str = "ALTER TABLE requests ADD COLUMN cache TEXT;
UPDATE sluice_schema SET version = 2;";

/// A SQLite database being written.
pub struct SqliteSink {
    db: Connection,
    path: std::path::PathBuf,
    /// The database file as opened (to notice it removed or replaced).
    file: std::fs::File,
}

impl SqliteSink {
    /// Opens (creating) the database, in WAL mode, with the schema made, migrated from an
    /// older version, or checked; a database of a newer version than [`SCHEMA_VERSION`] is
    /// refused.
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

/// The version recorded in `sluice_schema` (0 when it holds no row).
fn recorded_version(db: &Connection) -> rusqlite::Result<i64> {
    db.query_row("SELECT max(version) FROM sluice_schema", [], |row| {
        row.get::<_, Option<i64>>(0).map(|v| v.unwrap_or(0))
    })
}

/// Creates the schema in an empty database, migrates an existing one of an older version, or
/// checks the version of an existing one.
fn prepare_schema(db: &Connection) -> Result<(), SchemaError> {
    let exists: bool = db.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'sluice_schema')",
        [],
        |row| row.get(0),
    )?;
    if exists {
        return match recorded_version(db)? {
            SCHEMA_VERSION => Ok(()),
            1 => migrate_from_1(db),
            other => Err(SchemaError::Version(other)),
        };
    }
    db.execute_batch(&format!(
        "BEGIN; {SCHEMA} INSERT INTO sluice_schema (version) VALUES ({SCHEMA_VERSION}); COMMIT;"
    ))?;
    Ok(())
}

/// Migrates a version-1 database to [`SCHEMA_VERSION`] in one transaction: all of it or
/// none. IMMEDIATE takes the write lock before the version is read again, so of two
/// processes opening the same file at once one migrates and the other finds version 2.
fn migrate_from_1(db: &Connection) -> Result<(), SchemaError> {
    let tx = rusqlite::Transaction::new_unchecked(db, rusqlite::TransactionBehavior::Immediate)?;
    match recorded_version(&tx)? {
        1 => {
            tx.execute_batch(MIGRATE_1_TO_2)?;
            tx.commit()?;
            Ok(())
        }
        SCHEMA_VERSION => Ok(()),
        other => Err(SchemaError::Version(other)),
    }
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
                e.cache,
            ])?;
        }
    }
    tx.commit()
}

/// SQLite integers are signed 64-bit.
fn clamp(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh folder for one test's database, removed when dropped.
    struct Dir(std::path::PathBuf);

    impl Dir {
        fn new(tag: &str) -> Dir {
            let path = std::env::temp_dir()
                .join(format!("sluice-audit-sqlite-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&path);
            std::fs::create_dir_all(&path).unwrap();
            Dir(path)
        }

        fn db(&self) -> std::path::PathBuf {
            self.0.join("audit.db")
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A record of a request answered 200 on `gpt-4o`, with `cache` as the cache's part.
    fn entry(request_id: &str, cache: Option<&'static str>) -> Arc<Entry> {
        Arc::new(Entry {
            time: "2026-12-01T04:30:00.123Z".into(),
            time_unix_ms: 1_796_099_400_123,
            request_id: request_id.into(),
            node: Arc::from("gw-1"),
            worker: 0,
            subscription: Some("team-a".into()),
            product: Some("main".into()),
            operation: Some("chat"),
            deployment: Some("gpt-4o".into()),
            model: Some("gpt-4o-2024-08-06".into()),
            api_version: None,
            backend: (cache != Some("hit")).then(|| "east".into()),
            attempts: Vec::new(),
            status: Some(200),
            error: None,
            ended: "complete",
            truncated: false,
            latency_ms: 4.5,
            upstream_latency_ms: None,
            ttft_ms: None,
            prompt_tokens: Some(0),
            completion_tokens: Some(0),
            total_tokens: Some(0),
            tokens_estimated: Some(false),
            cache,
            client_ip: "127.0.0.1".into(),
            client_cert: None,
            jwt_subject: None,
            app_id: None,
            content: "omit",
            request: None,
            response: None,
            held: None,
        })
    }

    /// (request_id, cache) of every row, by request id.
    fn cache_column(db: &Path) -> Vec<(String, Option<String>)> {
        let db = Connection::open(db).unwrap();
        let mut stmt = db
            .prepare("SELECT request_id, cache FROM requests ORDER BY request_id")
            .unwrap();
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        rows
    }

    fn version(db: &Path) -> i64 {
        recorded_version(&Connection::open(db).unwrap()).unwrap()
    }

    #[test]
    fn the_cache_column_holds_hit_miss_bypass_and_null() {
        let dir = Dir::new("round-trip");
        let mut sink = SqliteSink::open(&dir.db()).unwrap();
        let batch = [
            entry("a", Some("hit")),
            entry("b", Some("miss")),
            entry("c", Some("bypass")),
            entry("d", None),
        ];
        sink.write(&batch).unwrap();
        sink.close().unwrap();
        drop(sink);
        let some = |s: &str| Some(s.to_owned());
        assert_eq!(
            cache_column(&dir.db()),
            [
                ("a".to_owned(), some("hit")),
                ("b".to_owned(), some("miss")),
                ("c".to_owned(), some("bypass")),
                ("d".to_owned(), None),
            ]
        );
        assert_eq!(version(&dir.db()), SCHEMA_VERSION);
        // Opened again: checked, not made again.
        let mut again = SqliteSink::open(&dir.db()).unwrap();
        again.write(&[entry("e", Some("hit"))]).unwrap();
        drop(again);
        assert_eq!(cache_column(&dir.db()).len(), 5);
    }

    /// The schema version 1 wrote (the released one), and two of its rows.
    const VERSION_1: &str = "
        CREATE TABLE sluice_schema (version INTEGER NOT NULL);
        CREATE TABLE requests (
            time TEXT NOT NULL, time_unix_ms INTEGER NOT NULL, request_id TEXT NOT NULL,
            node TEXT NOT NULL, worker INTEGER NOT NULL, subscription TEXT, product TEXT,
            operation TEXT, deployment TEXT, model TEXT, api_version TEXT, backend TEXT,
            attempts TEXT NOT NULL, status INTEGER, error TEXT, ended TEXT NOT NULL,
            truncated INTEGER NOT NULL, latency_ms REAL NOT NULL, upstream_latency_ms REAL,
            ttft_ms REAL, prompt_tokens INTEGER, completion_tokens INTEGER,
            total_tokens INTEGER, tokens_estimated INTEGER, client_ip TEXT NOT NULL,
            client_cert TEXT, jwt_subject TEXT, app_id TEXT, content TEXT NOT NULL,
            request TEXT, response TEXT
        );
        CREATE INDEX requests_time ON requests (time_unix_ms);
        CREATE INDEX requests_subscription ON requests (subscription, time_unix_ms);
        CREATE INDEX requests_deployment ON requests (deployment, time_unix_ms);
        INSERT INTO sluice_schema (version) VALUES (1);
        INSERT INTO requests (time, time_unix_ms, request_id, node, worker, subscription,
            deployment, attempts, status, ended, truncated, latency_ms, total_tokens,
            client_ip, content)
        VALUES ('2026-11-30T10:00:00.000Z', 1796032800000, 'old-1', 'gw-1', 0, 'team-a',
            'gpt-4o', '[]', 200, 'complete', 0, 12.5, 28, '10.0.0.7', 'full'),
            ('2026-11-30T10:00:01.000Z', 1796032801000, 'old-2', 'gw-1', 1, NULL,
            NULL, '[]', 401, 'complete', 0, 0.5, NULL, '10.0.0.8', 'full');
    ";

    #[test]
    fn a_version_1_database_is_migrated_in_place_and_keeps_its_rows() {
        let dir = Dir::new("v1");
        Connection::open(dir.db())
            .unwrap()
            .execute_batch(VERSION_1)
            .unwrap();
        let mut sink = SqliteSink::open(&dir.db()).unwrap();
        sink.write(&[entry("new-1", Some("hit"))]).unwrap();
        sink.close().unwrap();
        drop(sink);
        assert_eq!(version(&dir.db()), 2);
        assert_eq!(
            cache_column(&dir.db()),
            [
                ("new-1".to_owned(), Some("hit".to_owned())),
                ("old-1".to_owned(), None),
                ("old-2".to_owned(), None),
            ]
        );
        // The old rows whole, the indexes still there.
        let db = Connection::open(dir.db()).unwrap();
        let old: (String, i64, f64, Option<i64>) = db
            .query_row(
                "SELECT subscription, status, latency_ms, total_tokens FROM requests
                 WHERE request_id = 'old-1'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .unwrap();
        assert_eq!(old, ("team-a".to_owned(), 200, 12.5, Some(28)));
        let indexes: i64 = db
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'index' AND tbl_name = 'requests'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(indexes, 3);
        drop(db);
        // Migrated once: opened again, it is version 2 as it is.
        drop(SqliteSink::open(&dir.db()).unwrap());
        assert_eq!(version(&dir.db()), 2);
        assert_eq!(cache_column(&dir.db()).len(), 3);
    }

    #[test]
    fn a_version_1_database_whose_migration_fails_is_left_as_it_was() {
        let dir = Dir::new("v1-fails");
        // A version-1 file someone already gave a `cache` column by hand: the ALTER fails,
        // and the version stays 1 (nothing half done).
        Connection::open(dir.db())
            .unwrap()
            .execute_batch(&format!(
                "{VERSION_1} ALTER TABLE requests ADD COLUMN cache INTEGER;"
            ))
            .unwrap();
        let err = SqliteSink::open(&dir.db()).err().unwrap();
        assert!(err.to_string().contains("duplicate column"), "{err}");
        assert_eq!(version(&dir.db()), 1);
    }

    #[test]
    fn a_newer_database_is_refused_and_left_alone() {
        let dir = Dir::new("v3");
        Connection::open(dir.db())
            .unwrap()
            .execute_batch(&format!(
                "{SCHEMA} INSERT INTO sluice_schema (version) VALUES (3);"
            ))
            .unwrap();
        let err = SqliteSink::open(&dir.db()).err().unwrap().to_string();
        assert!(
            err.contains("its audit schema is version 3; this Sluice writes version 2"),
            "{err}"
        );
        assert!(err.contains(&dir.db().display().to_string()), "{err}");
        assert_eq!(version(&dir.db()), 3);
        assert!(cache_column(&dir.db()).is_empty());
    }
}
