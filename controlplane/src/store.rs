//! The state directory's SQLite database (`control.db`): every version made, and every node
//! seen with its last answer — so a restarted control plane serves the same versions and
//! knows the same fleet. Written in WAL mode with `synchronous = FULL`: a version is on disk
//! before any node hears of it.

use std::path::Path;
use std::time::{Duration, SystemTime};

use rusqlite::{params, Connection, OptionalExtension};
use sluice_proto::control::v1::ConfigError;

use crate::source::Document;
use crate::state::{Desired, Fleet, NodeRecord};

/// The schema this build writes; [`Store::open`] refuses a newer one.
/// 1: versions and nodes; 2: each version's operator overlays (`versions.overlays`, JSON);
/// 3: the text last read from each watched config path (`watched`); 4: usage telemetry
/// (`usage`, one row per minute and dimensions; `telemetry`, each node incarnation's last
/// stored sequence); 5: `usage.cache_hits` (the requests the response cache answered).
const SCHEMA_VERSION: i64 = 5;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS versions (
    version INTEGER PRIMARY KEY,
    created_at_ms INTEGER NOT NULL,
    source TEXT NOT NULL,
    git_commit TEXT NOT NULL,
    toml TEXT NOT NULL,
    overlays TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS nodes (
    node_id TEXT PRIMARY KEY,
    hostname TEXT NOT NULL,
    build_version TEXT NOT NULL,
    running_version INTEGER NOT NULL,
    rejected_version INTEGER NOT NULL,
    rejected_errors TEXT NOT NULL,
    last_seen_ms INTEGER
);
CREATE TABLE IF NOT EXISTS watched (
    path TEXT PRIMARY KEY,
    sha256 TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS usage (
    minute_ms INTEGER NOT NULL,
    node_id TEXT NOT NULL,
    subscription TEXT NOT NULL,
    deployment TEXT NOT NULL,
    backend TEXT NOT NULL,
    model TEXT NOT NULL,
    status_class TEXT NOT NULL,
    requests INTEGER NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    total_tokens INTEGER NOT NULL,
    rejections TEXT NOT NULL,
    latency BLOB NOT NULL,
    cache_hits INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (minute_ms, node_id, subscription, deployment, backend, model, status_class)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS telemetry (
    node_id TEXT NOT NULL,
    incarnation INTEGER NOT NULL,
    stored_through INTEGER NOT NULL,
    last_report_ms INTEGER NOT NULL,
    PRIMARY KEY (node_id, incarnation)
);
";

/// How many of the newest versions the state database keeps (`get config --version N` reads
/// them): 1,000.
pub const VERSIONS_KEPT: u64 = 1000;

/// Why the state database could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite refused (the file unreadable, full disk, a corrupt database).
    #[error("state database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The state directory could not be made.
    #[error("state directory: {0}")]
    Io(#[from] std::io::Error),
    /// Written by a newer `sluice-control`.
    #[error("state database schema {0} is newer than this build's {SCHEMA_VERSION}")]
    NewerSchema(i64),
}

/// The open state database.
pub struct Store {
    pub(crate) db: Connection,
}

impl Store {
    /// Opens (creating) `DIR/control.db`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir)?;
        let db = Connection::open(dir.join("control.db"))?;
        db.pragma_update(None, "journal_mode", "WAL")?;
        db.pragma_update(None, "synchronous", "FULL")?;
        db.busy_timeout(Duration::from_secs(5))?;
        db.execute_batch(SCHEMA)?;
        let found: Option<i64> = db
            .query_row("SELECT max(version) FROM schema_version", [], |r| r.get(0))
            .optional()?
            .flatten();
        match found {
            None => {
                db.execute(
                    "INSERT INTO schema_version (version) VALUES (?1)",
                    [SCHEMA_VERSION],
                )?;
            }
            Some(v) if v > SCHEMA_VERSION => return Err(StoreError::NewerSchema(v)),
            Some(1) => {
                // Made by a schema-1 build (`CREATE … IF NOT EXISTS` left its table as it
                // was): its versions had no overlays.
                db.execute_batch(&format!(
                    "BEGIN;
                     ALTER TABLE versions ADD COLUMN overlays TEXT NOT NULL DEFAULT '{{}}';
                     UPDATE schema_version SET version = {SCHEMA_VERSION};
                     COMMIT;"
                ))?;
            }
            Some(2 | 3) => {
                // The tables added since were made above (`CREATE … IF NOT EXISTS`), empty:
                // the watched path's text is applied once more at the next start, as
                // schema 2 always did, and no usage was stored before.
                db.execute("UPDATE schema_version SET version = ?1", [SCHEMA_VERSION])?;
            }
            Some(4) => {
                // Its `usage` rows were stored before cache hits were counted: 0 each. One
                // transaction: the column and the version together or neither.
                let tx = rusqlite::Transaction::new_unchecked(
                    &db,
                    rusqlite::TransactionBehavior::Immediate,
                )?;
                tx.execute_batch(
                    "ALTER TABLE usage ADD COLUMN cache_hits INTEGER NOT NULL DEFAULT 0;",
                )?;
                tx.execute("UPDATE schema_version SET version = ?1", [SCHEMA_VERSION])?;
                tx.commit()?;
            }
            Some(_) => {}
        }
        Ok(Self { db })
    }

    /// The SHA-256 (hex) of the text last read from the watched config `path`, if any.
    pub fn watched(&self, path: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .db
            .query_row("SELECT sha256 FROM watched WHERE path = ?1", [path], |r| {
                r.get(0)
            })
            .optional()?)
    }

    /// Records `sha256` (hex) as the text last read from the watched config `path`.
    pub fn set_watched(&self, path: &str, sha256: &str) -> Result<(), StoreError> {
        self.db.execute(
            "INSERT INTO watched (path, sha256) VALUES (?1, ?2)
             ON CONFLICT (path) DO UPDATE SET sha256 = excluded.sha256",
            [path, sha256],
        )?;
        Ok(())
    }

    /// The newest version stored, or [`Desired::empty`].
    pub fn latest(&self) -> Result<Desired, StoreError> {
        Ok(self
            .query_version("ORDER BY version DESC LIMIT 1", params![])?
            .unwrap_or_else(Desired::empty))
    }

    /// Version `n`, if stored.
    pub fn version(&self, n: u64) -> Result<Option<Desired>, StoreError> {
        self.query_version("WHERE version = ?1", params![to_i64(n)])
    }

    fn query_version(
        &self,
        tail: &str,
        args: impl rusqlite::Params,
    ) -> Result<Option<Desired>, StoreError> {
        let sql =
            format!("SELECT version, created_at_ms, source, git_commit, toml, overlays FROM versions {tail}");
        Ok(self
            .db
            .query_row(&sql, args, |r| {
                Ok(Desired {
                    version: r.get::<_, i64>(0)?.max(0) as u64,
                    created_at: from_ms(r.get(1)?),
                    document: Some(Document {
                        source: r.get(2)?,
                        git_commit: r.get(3)?,
                        toml: r.get(4)?,
                    }),
                    // Written by this store from `Overlays`; unreadable only if edited by hand.
                    overlays: serde_json::from_str(&r.get::<_, String>(5)?).unwrap_or_default(),
                })
            })
            .optional()?)
    }

    /// Stores a new version (before anyone hears of it), and deletes the versions more than
    /// [`VERSIONS_KEPT`] older (each holds its whole document: a busy operator's drains and
    /// keys must not grow the database without end).
    pub fn insert(&self, desired: &Desired) -> Result<(), StoreError> {
        let Some(doc) = &desired.document else {
            return Ok(());
        };
        self.db.execute(
            "INSERT INTO versions (version, created_at_ms, source, git_commit, toml, overlays) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                to_i64(desired.version),
                to_ms(desired.created_at),
                doc.source,
                doc.git_commit,
                doc.toml,
                serde_json::to_string(&desired.overlays).unwrap_or_else(|_| "{}".into())
            ],
        )?;
        if let Some(oldest) = desired.version.checked_sub(VERSIONS_KEPT) {
            self.db
                .execute("DELETE FROM versions WHERE version <= ?1", [to_i64(oldest)])?;
        }
        Ok(())
    }

    /// Every node stored (none watching: streams do not survive a restart).
    pub fn fleet(&self) -> Result<Fleet, StoreError> {
        let mut statement = self.db.prepare(
            "SELECT node_id, hostname, build_version, running_version, rejected_version, rejected_errors, last_seen_ms FROM nodes",
        )?;
        let rows = statement.query_map([], |r| {
            let errors: String = r.get(5)?;
            Ok((
                r.get::<_, String>(0)?,
                NodeRecord {
                    hostname: r.get(1)?,
                    build_version: r.get(2)?,
                    running_version: r.get::<_, i64>(3)?.max(0) as u64,
                    rejected_version: r.get::<_, i64>(4)?.max(0) as u64,
                    rejected_errors: errors_from_json(&errors),
                    last_seen: r.get::<_, Option<i64>>(6)?.map(from_ms),
                    watching: 0,
                    watching_since: None,
                },
            ))
        })?;
        let mut fleet = Fleet::default();
        for row in rows {
            let (id, node) = row?;
            fleet.nodes.insert(id, node);
        }
        Ok(fleet)
    }

    /// Deletes node `id`'s record.
    pub fn forget_node(&self, id: &str) -> Result<(), StoreError> {
        self.db
            .execute("DELETE FROM nodes WHERE node_id = ?1", [id])?;
        Ok(())
    }

    /// Stores one node's record as it now stands.
    pub fn save_node(&self, id: &str, node: &NodeRecord) -> Result<(), StoreError> {
        self.db.execute(
            "INSERT INTO nodes (node_id, hostname, build_version, running_version, rejected_version, rejected_errors, last_seen_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT (node_id) DO UPDATE SET hostname = ?2, build_version = ?3, running_version = ?4,
                 rejected_version = ?5, rejected_errors = ?6, last_seen_ms = ?7",
            params![
                id,
                node.hostname,
                node.build_version,
                to_i64(node.running_version),
                to_i64(node.rejected_version),
                errors_to_json(&node.rejected_errors),
                node.last_seen.map(to_ms)
            ],
        )?;
        Ok(())
    }
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn to_ms(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn from_ms(ms: i64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64)
}

/// Config errors as a JSON array of `{file, line, column, field, message}` objects.
pub fn errors_to_json(errors: &[ConfigError]) -> String {
    serde_json::Value::Array(errors.iter().map(error_to_json).collect()).to_string()
}

/// One config error as `{file, line, column, field, message}`.
pub fn error_to_json(e: &ConfigError) -> serde_json::Value {
    serde_json::json!({
        "file": e.file, "line": e.line, "column": e.column, "field": e.field, "message": e.message,
    })
}

fn errors_from_json(text: &str) -> Vec<ConfigError> {
    let Ok(serde_json::Value::Array(items)) = serde_json::from_str(text) else {
        return Vec::new();
    };
    items
        .iter()
        .map(|e| {
            let text = |k: &str| e[k].as_str().unwrap_or_default().to_string();
            let number = |k: &str| {
                e[k].as_u64()
                    .and_then(|n| u32::try_from(n).ok())
                    .unwrap_or(0)
            };
            ConfigError {
                file: text("file"),
                line: number("line"),
                column: number("column"),
                field: text("field"),
                message: text("message"),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Change, Overlays};

    #[test]
    fn versions_and_nodes_survive_a_reopen() {
        let dir = std::env::temp_dir().join(format!("sluice-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        let doc = Document {
            toml: "[server]\n".into(),
            source: "conf".into(),
            git_commit: "abc".into(),
        };
        let v1 = Desired::empty().apply(Change::Document(doc), t).unwrap();
        let v2 = v1.apply(Change::Drain("aoai-1".into()), t).unwrap();
        let error = ConfigError {
            file: "a.toml".into(),
            line: 3,
            column: 7,
            field: "backend[0].api_key_env".into(),
            message: "unset".into(),
        };
        let node = NodeRecord {
            hostname: "h".into(),
            build_version: "0.1.0".into(),
            running_version: 1,
            rejected_version: 2,
            rejected_errors: vec![error],
            last_seen: Some(t),
            watching: 1,
            watching_since: Some(t),
        };
        {
            let store = Store::open(&dir).unwrap();
            assert_eq!(store.latest().unwrap(), Desired::empty());
            store.insert(&v1).unwrap();
            store.insert(&v2).unwrap();
            store.save_node("n1", &node).unwrap();
        }
        let store = Store::open(&dir).unwrap();
        assert_eq!(store.latest().unwrap(), v2);
        assert_eq!(store.version(1).unwrap(), Some(v1));
        assert_eq!(store.version(3).unwrap(), None);
        let fleet = store.fleet().unwrap();
        assert_eq!(
            fleet.nodes["n1"],
            NodeRecord {
                watching: 0,
                watching_since: None,
                ..node
            }
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn only_the_newest_versions_are_kept() {
        let dir = std::env::temp_dir().join(format!("sluice-store-keep-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = Store::open(&dir).unwrap();
        let doc = Document {
            toml: "[server]\n".into(),
            source: "a.toml".into(),
            git_commit: String::new(),
        };
        for version in 1..=VERSIONS_KEPT + 5 {
            let desired = Desired {
                version,
                document: Some(doc.clone()),
                overlays: Overlays::default(),
                created_at: SystemTime::UNIX_EPOCH,
            };
            store.insert(&desired).unwrap();
        }
        assert_eq!(store.version(5).unwrap(), None);
        assert!(store.version(6).unwrap().is_some());
        assert_eq!(store.latest().unwrap().version, VERSIONS_KEPT + 5);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_schema_1_database_gains_overlays() {
        let dir = std::env::temp_dir().join(format!("sluice-store-v1-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        {
            let db = Connection::open(dir.join("control.db")).unwrap();
            db.execute_batch(
                "CREATE TABLE schema_version (version INTEGER NOT NULL);
                 INSERT INTO schema_version VALUES (1);
                 CREATE TABLE versions (version INTEGER PRIMARY KEY, created_at_ms INTEGER NOT NULL,
                     source TEXT NOT NULL, git_commit TEXT NOT NULL, toml TEXT NOT NULL);
                 INSERT INTO versions VALUES (1, 0, 'conf', '', '[server]');",
            )
            .unwrap();
        }
        let store = Store::open(&dir).unwrap();
        let latest = store.latest().unwrap();
        assert_eq!(
            (latest.version, &latest.overlays),
            (1, &Overlays::default())
        );
        let v2 = latest
            .apply(Change::Drain("b".into()), SystemTime::UNIX_EPOCH)
            .unwrap();
        store.insert(&v2).unwrap();
        drop(store);
        assert_eq!(Store::open(&dir).unwrap().latest().unwrap(), v2);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
