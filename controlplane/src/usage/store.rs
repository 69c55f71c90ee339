//! Usage in the state database: one row per minute × node × subscription × deployment ×
//! backend × model × status class (`usage`), each batch's figures added to its rows
//! (requests, tokens, rejections by reason, the latency histogram, cache hits); and
//! each node incarnation's last stored sequence (`telemetry`), written in the same
//! transaction as the rows — so a batch is stored whole or not at all, and once.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime};

use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use hdrhistogram::Histogram;
use rusqlite::{params, OptionalExtension};
use sluice_proto::control::v1::{RejectionCount, UsageBatch, UsageDimension, UsageRecord};

use crate::store::{Store, StoreError};

/// A node incarnation: `(node_id, incarnation)`.
pub type Incarnation = (String, u64);

/// The last stored sequence of every node incarnation.
pub type Marks = HashMap<Incarnation, u64>;

/// The figures of one group of rows.
#[derive(Debug, Default)]
struct Figures {
    requests: u64,
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
    rejections: BTreeMap<String, u64>,
    latency: Option<Histogram<u64>>,
    cache_hits: u64,
}

impl Figures {
    fn add(&mut self, other: Figures) {
        self.requests = self.requests.saturating_add(other.requests);
        self.prompt_tokens = self.prompt_tokens.saturating_add(other.prompt_tokens);
        self.completion_tokens = self
            .completion_tokens
            .saturating_add(other.completion_tokens);
        self.total_tokens = self.total_tokens.saturating_add(other.total_tokens);
        self.cache_hits = self.cache_hits.saturating_add(other.cache_hits);
        for (reason, n) in other.rejections {
            let count = self.rejections.entry(reason).or_default();
            *count = count.saturating_add(n);
        }
        if let Some(theirs) = other.latency {
            match &mut self.latency {
                Some(ours) => {
                    // Auto-resizing histograms: adding never fails.
                    let _ = ours.add(&theirs);
                }
                None => self.latency = Some(theirs),
            }
        }
    }

    /// The figures columns of a `usage` row, from column `at` on: requests, prompt,
    /// completion and total tokens, rejections (JSON), latency (V2), cache hits.
    fn of_row(r: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<Self> {
        Ok(Figures {
            requests: to_u64(r.get(at)?),
            prompt_tokens: to_u64(r.get(at + 1)?),
            completion_tokens: to_u64(r.get(at + 2)?),
            total_tokens: to_u64(r.get(at + 3)?),
            rejections: serde_json::from_str(&r.get::<_, String>(at + 4)?).unwrap_or_default(),
            latency: histogram(&r.get::<_, Vec<u8>>(at + 5)?),
            cache_hits: to_u64(r.get(at + 6)?),
        })
    }

    fn of_record(r: &UsageRecord) -> Self {
        Self {
            requests: r.requests,
            prompt_tokens: r.prompt_tokens,
            completion_tokens: r.completion_tokens,
            total_tokens: r.total_tokens,
            rejections: r
                .rejections
                .iter()
                .map(|c| (c.reason.clone(), c.count))
                .collect(),
            latency: histogram(&r.latency_histogram),
            cache_hits: r.cache_hits,
        }
    }
}

/// A histogram from its V2 serialization, auto-resizing; `None` for no bytes or bad ones —
/// including a header that would make it large: a payload longer than the bytes sent, more
/// than 3 significant digits, a lowest value other than 1 or a highest past 2^40 µs (12
/// days). The deserializer sizes its buffers from the header, so it is checked first.
fn histogram(bytes: &[u8]) -> Option<Histogram<u64>> {
    if !plausible_v2(bytes) {
        return None;
    }
    let mut h: Histogram<u64> = Deserializer::new().deserialize(&mut &bytes[..]).ok()?;
    h.auto(true);
    Some(h)
}

/// The V2 header (RFC-less; HdrHistogram's own): cookie (4), payload length (4), normalizing
/// offset (4), significant digits (4), lowest (8), highest (8), ratio (8), all big-endian.
fn plausible_v2(bytes: &[u8]) -> bool {
    const HEADER: usize = 40;
    let word = |at: usize| -> Option<u64> {
        let b = bytes.get(at..at + 8)?;
        Some(u64::from_be_bytes(b.try_into().ok()?))
    };
    let int = |at: usize| -> Option<u32> {
        let b = bytes.get(at..at + 4)?;
        Some(u32::from_be_bytes(b.try_into().ok()?))
    };
    let (Some(payload), Some(digits), Some(lowest), Some(highest)) =
        (int(4), int(12), word(16), word(24))
    else {
        return false;
    };
    bytes.len() >= HEADER
        && (payload as usize) <= bytes.len() - HEADER
        && (1..=3).contains(&digits)
        && lowest == 1
        && highest <= 1 << 40
}

fn serialized(h: &Option<Histogram<u64>>) -> Vec<u8> {
    let mut out = Vec::new();
    if let Some(h) = h {
        if V2Serializer::new().serialize(h, &mut out).is_err() {
            out.clear();
        }
    }
    out
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn to_u64(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

/// Milliseconds since the epoch.
pub fn epoch_ms(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A usage query: the time range, the dimensions to keep apart, filters and the bucket.
#[derive(Debug, Clone, Default)]
pub struct Query {
    /// Start (inclusive), ms since the epoch.
    pub from_ms: i64,
    /// End (exclusive), ms since the epoch.
    pub to_ms: i64,
    /// Bucket width in ms (a whole number of minutes; 0: one bucket for the whole range).
    pub bucket_ms: i64,
    /// Dimensions to keep apart.
    pub group_by: Vec<UsageDimension>,
    /// Only this subscription (empty: all).
    pub subscription: String,
    /// Only this deployment (empty: all).
    pub deployment: String,
    /// Only this backend (empty: all).
    pub backend: String,
}

/// A batch offered for storing.
#[derive(Debug, Clone)]
pub struct Offered {
    /// The batch.
    pub batch: UsageBatch,
    /// It is the first batch of its Report stream.
    pub opens: bool,
}

/// What became of one offered batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Stored; its incarnation's mark is now its sequence.
    Stored(u64),
    /// Already stored (a resend); the mark.
    Resent(u64),
    /// Past a batch not yet stored: not stored; the mark.
    Gap(u64),
}

impl Store {
    /// Every node incarnation's last stored sequence.
    pub fn telemetry_marks(&self) -> Result<Marks, StoreError> {
        let mut statement = self
            .db
            .prepare("SELECT node_id, incarnation, stored_through FROM telemetry")?;
        let rows = statement.query_map([], |r| {
            Ok((
                (r.get::<_, String>(0)?, to_u64(r.get(1)?)),
                to_u64(r.get(2)?),
            ))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Stores `batches` in one transaction: each whose sequence is the next of its
    /// incarnation's mark in `marks` adds its records to their rows and moves the mark.
    /// Returns what became of each; `marks` is updated only once the transaction committed.
    pub fn store_usage(
        &self,
        batches: &[Offered],
        marks: &mut Marks,
        now: SystemTime,
    ) -> Result<Vec<Answer>, StoreError> {
        let mut after = marks.clone();
        let mut answers = Vec::with_capacity(batches.len());
        // IMMEDIATE: the write lock is taken (waiting out the other connection's writes
        // under the busy timeout) before the first read; a deferred transaction that reads
        // then writes fails at once with SQLITE_BUSY when that connection wrote meanwhile.
        let tx = rusqlite::Transaction::new_unchecked(
            &self.db,
            rusqlite::TransactionBehavior::Immediate,
        )?;
        {
            let mut read = tx.prepare_cached(
                "SELECT requests, prompt_tokens, completion_tokens, total_tokens, rejections, latency,
                 cache_hits FROM usage WHERE minute_ms = ?1 AND node_id = ?2 AND subscription = ?3
                 AND deployment = ?4 AND backend = ?5 AND model = ?6 AND status_class = ?7",
            )?;
            let mut write = tx.prepare_cached(
                "INSERT OR REPLACE INTO usage (minute_ms, node_id, subscription, deployment,
                 backend, model, status_class, requests, prompt_tokens, completion_tokens,
                 total_tokens, rejections, latency, cache_hits)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
            )?;
            let mut mark = tx.prepare_cached(
                "INSERT OR REPLACE INTO telemetry (node_id, incarnation, stored_through, last_report_ms)
                 VALUES (?1, ?2, ?3, ?4)",
            )?;
            for Offered { batch, opens } in batches {
                let id = (batch.node_id.clone(), batch.incarnation);
                let known = after.get(&id).copied();
                let through = known.unwrap_or(0);
                if batch.sequence <= through {
                    answers.push(Answer::Resent(through));
                    continue;
                }
                // Only the next one: a batch past a missing one (which failed to store, or
                // is still on its way) waits until that one is stored — the node sends it
                // again, in order, on its next stream. The first batch of a stream may start
                // an incarnation this database has no mark of (the first contact, or a state
                // directory started afresh).
                let next = batch.sequence == through + 1 || (known.is_none() && *opens);
                if !next {
                    answers.push(Answer::Gap(through));
                    continue;
                }
                for record in &batch.records {
                    let seconds = record.bucket_start.as_ref().map_or(0, |t| t.seconds);
                    let minute_ms = (seconds - seconds.rem_euclid(60)).saturating_mul(1000);
                    let key = params![
                        minute_ms,
                        batch.node_id,
                        record.subscription,
                        record.deployment,
                        record.backend,
                        record.model,
                        record.status_class,
                    ];
                    let mut figures = read
                        .query_row(key, |r| Figures::of_row(r, 0))
                        .optional()?
                        .unwrap_or_default();
                    figures.add(Figures::of_record(record));
                    write.execute(params![
                        minute_ms,
                        batch.node_id,
                        record.subscription,
                        record.deployment,
                        record.backend,
                        record.model,
                        record.status_class,
                        to_i64(figures.requests),
                        to_i64(figures.prompt_tokens),
                        to_i64(figures.completion_tokens),
                        to_i64(figures.total_tokens),
                        serde_json::to_string(&figures.rejections).unwrap_or_default(),
                        serialized(&figures.latency),
                        to_i64(figures.cache_hits),
                    ])?;
                }
                mark.execute(params![
                    batch.node_id,
                    to_i64(batch.incarnation),
                    to_i64(batch.sequence),
                    epoch_ms(now),
                ])?;
                after.insert(id, batch.sequence);
                answers.push(Answer::Stored(batch.sequence));
            }
        }
        tx.commit()?;
        *marks = after;
        Ok(answers)
    }

    /// Usage over `query`'s range, summed per bucket and grouped dimensions (the others left
    /// empty) — requests, tokens, cache hits, rejections by reason — with p50 and p99 latency from the merged histograms; ordered by bucket, then
    /// by total tokens, most first.
    pub fn query_usage(&self, query: &Query) -> Result<Vec<UsageRecord>, StoreError> {
        let mut statement = self.db.prepare(
            "SELECT minute_ms, node_id, subscription, deployment, backend, model, status_class,
             requests, prompt_tokens, completion_tokens, total_tokens, rejections, latency,
             cache_hits FROM usage WHERE minute_ms >= ?1 AND minute_ms < ?2
             AND (?3 = '' OR subscription = ?3) AND (?4 = '' OR deployment = ?4)
             AND (?5 = '' OR backend = ?5)",
        )?;
        let mut groups: BTreeMap<(i64, [String; 6]), Figures> = BTreeMap::new();
        let keep = |d: UsageDimension| query.group_by.contains(&d);
        let mut rows = statement.query(params![
            query.from_ms,
            query.to_ms,
            query.subscription,
            query.deployment,
            query.backend
        ])?;
        while let Some(r) = rows.next()? {
            let minute_ms: i64 = r.get(0)?;
            let bucket = if query.bucket_ms > 0 {
                query.from_ms + (minute_ms - query.from_ms) / query.bucket_ms * query.bucket_ms
            } else {
                query.from_ms
            };
            let text = |i: usize, d: UsageDimension| -> rusqlite::Result<String> {
                Ok(if keep(d) { r.get(i)? } else { String::new() })
            };
            let key = (
                bucket,
                [
                    text(1, UsageDimension::Node)?,
                    text(2, UsageDimension::Subscription)?,
                    text(3, UsageDimension::Deployment)?,
                    text(4, UsageDimension::Backend)?,
                    text(5, UsageDimension::Model)?,
                    text(6, UsageDimension::StatusClass)?,
                ],
            );
            groups.entry(key).or_default().add(Figures::of_row(r, 7)?);
        }
        let width = if query.bucket_ms > 0 {
            query.bucket_ms
        } else {
            query.to_ms - query.from_ms
        };
        let mut out: Vec<UsageRecord> = groups
            .into_iter()
            .map(
                |((bucket, [node, subscription, deployment, backend, model, status]), f)| {
                    let percentile = |q: f64| {
                        f.latency
                            .as_ref()
                            .map_or(0.0, |h| h.value_at_quantile(q) as f64 / 1000.0)
                    };
                    UsageRecord {
                        bucket_start: Some(from_ms(bucket).into()),
                        bucket_width: prost_types::Duration::try_from(Duration::from_millis(
                            to_u64(width),
                        ))
                        .ok(),
                        node_id: node,
                        subscription,
                        deployment,
                        backend,
                        model,
                        status_class: status,
                        requests: f.requests,
                        prompt_tokens: f.prompt_tokens,
                        completion_tokens: f.completion_tokens,
                        total_tokens: f.total_tokens,
                        cache_hits: f.cache_hits,
                        rejections: f
                            .rejections
                            .iter()
                            .map(|(reason, &count)| RejectionCount {
                                reason: reason.clone(),
                                count,
                            })
                            .collect(),
                        latency_p50_ms: percentile(0.5),
                        latency_p99_ms: percentile(0.99),
                        ..UsageRecord::default()
                    }
                },
            )
            .collect();
        out.sort_by(|a, b| {
            let start = |r: &UsageRecord| r.bucket_start.as_ref().map_or(0, |t| t.seconds);
            start(a)
                .cmp(&start(b))
                .then(b.total_tokens.cmp(&a.total_tokens))
        });
        Ok(out)
    }

    /// Deletes usage older than `before_ms`, and the marks of incarnations that have not
    /// reported since then. Returns the usage rows deleted.
    pub fn prune_usage(&self, before_ms: i64) -> Result<usize, StoreError> {
        let rows = self
            .db
            .execute("DELETE FROM usage WHERE minute_ms < ?1", [before_ms])?;
        self.db.execute(
            "DELETE FROM telemetry WHERE last_report_ms < ?1",
            [before_ms],
        )?;
        Ok(rows)
    }
}

fn from_ms(ms: i64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(to_u64(ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(sequence: u64, requests: u64) -> UsageBatch {
        UsageBatch {
            node_id: "n1".into(),
            sequence,
            incarnation: 7,
            records: vec![UsageRecord {
                bucket_start: Some(
                    (SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)).into(),
                ),
                subscription: "a".into(),
                requests,
                total_tokens: requests,
                ..UsageRecord::default()
            }],
            ..UsageBatch::default()
        }
    }

    fn offered(batches: &[(u64, u64, bool)]) -> Vec<Offered> {
        batches
            .iter()
            .map(|&(sequence, requests, opens)| Offered {
                batch: batch(sequence, requests),
                opens,
            })
            .collect()
    }

    fn total(store: &Store) -> u64 {
        let query = Query {
            from_ms: 0,
            to_ms: i64::MAX,
            ..Query::default()
        };
        store
            .query_usage(&query)
            .unwrap()
            .iter()
            .map(|r| r.requests)
            .sum()
    }

    fn store(name: &str) -> (Store, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("sluice-usage-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        (Store::open(&dir).unwrap(), dir)
    }

    #[test]
    fn a_batch_past_a_missing_one_waits_for_it_and_each_is_stored_once() {
        let (store, dir) = store("gap");
        let mut marks = Marks::new();
        let now = SystemTime::now();
        // 1 opens the stream; 5 comes before 2..4 (they failed to store, or are late).
        let answers = store
            .store_usage(
                &offered(&[(1, 1, true), (5, 10_000, false)]),
                &mut marks,
                now,
            )
            .unwrap();
        assert_eq!(answers, [Answer::Stored(1), Answer::Gap(1)]);
        // The node's next stream sends again, in order, from 2.
        let again = offered(&[
            (2, 10, true),
            (3, 100, false),
            (4, 1_000, false),
            (5, 10_000, false),
        ]);
        let answers = store.store_usage(&again, &mut marks, now).unwrap();
        assert_eq!(
            answers,
            [
                Answer::Stored(2),
                Answer::Stored(3),
                Answer::Stored(4),
                Answer::Stored(5)
            ]
        );
        let answers = store.store_usage(&again[..1], &mut marks, now).unwrap();
        assert_eq!(answers, [Answer::Resent(5)]);
        assert_eq!(total(&store), 11_111);
        // A fresh state directory: the first batch of a stream starts an incarnation.
        let mut fresh = Marks::new();
        let answers = store
            .store_usage(&offered(&[(40, 1, false)]), &mut fresh, now)
            .unwrap();
        assert_eq!(answers, [Answer::Gap(0)]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn everything() -> Query {
        Query {
            from_ms: 0,
            to_ms: i64::MAX,
            ..Query::default()
        }
    }

    #[test]
    fn cache_hits_are_stored_and_summed_like_requests() {
        let (store, dir) = store("cache-hits");
        let mut marks = Marks::new();
        let mut offered = offered(&[(1, 2, true), (2, 3, false), (3, 4, false)]);
        offered[0].batch.records[0].cache_hits = 1;
        offered[1].batch.records[0].cache_hits = 2;
        // Another deployment, in the same minute.
        offered[2].batch.records[0].deployment = "other".into();
        offered[2].batch.records[0].cache_hits = 4;
        let answers = store
            .store_usage(&offered, &mut marks, SystemTime::now())
            .unwrap();
        assert_eq!(answers.len(), 3);
        // A resend adds nothing.
        store
            .store_usage(&offered[..1], &mut marks, SystemTime::now())
            .unwrap();
        let all = store.query_usage(&everything()).unwrap();
        assert_eq!(
            all.iter()
                .map(|r| (r.requests, r.cache_hits))
                .collect::<Vec<_>>(),
            [(9, 7)]
        );
        let per_deployment = store
            .query_usage(&Query {
                group_by: vec![UsageDimension::Deployment],
                ..everything()
            })
            .unwrap();
        let mut got: Vec<(&str, u64, u64)> = per_deployment
            .iter()
            .map(|r| (r.deployment.as_str(), r.requests, r.cache_hits))
            .collect();
        got.sort();
        assert_eq!(got, [("", 5, 3), ("other", 4, 4)]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The state database as schema 4 made it (its `usage` without `cache_hits`), with one
    /// usage row and its incarnation's mark.
    const SCHEMA_4: &str = "
        CREATE TABLE schema_version (version INTEGER NOT NULL);
        INSERT INTO schema_version VALUES (4);
        CREATE TABLE versions (version INTEGER PRIMARY KEY, created_at_ms INTEGER NOT NULL,
            source TEXT NOT NULL, git_commit TEXT NOT NULL, toml TEXT NOT NULL,
            overlays TEXT NOT NULL DEFAULT '{}');
        CREATE TABLE nodes (node_id TEXT PRIMARY KEY, hostname TEXT NOT NULL,
            build_version TEXT NOT NULL, running_version INTEGER NOT NULL,
            rejected_version INTEGER NOT NULL, rejected_errors TEXT NOT NULL,
            last_seen_ms INTEGER);
        CREATE TABLE watched (path TEXT PRIMARY KEY, sha256 TEXT NOT NULL);
        CREATE TABLE usage (
            minute_ms INTEGER NOT NULL, node_id TEXT NOT NULL, subscription TEXT NOT NULL,
            deployment TEXT NOT NULL, backend TEXT NOT NULL, model TEXT NOT NULL,
            status_class TEXT NOT NULL, requests INTEGER NOT NULL,
            prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL,
            total_tokens INTEGER NOT NULL, rejections TEXT NOT NULL, latency BLOB NOT NULL,
            PRIMARY KEY (minute_ms, node_id, subscription, deployment, backend, model,
                status_class)
        ) WITHOUT ROWID;
        CREATE TABLE telemetry (node_id TEXT NOT NULL, incarnation INTEGER NOT NULL,
            stored_through INTEGER NOT NULL, last_report_ms INTEGER NOT NULL,
            PRIMARY KEY (node_id, incarnation));
        INSERT INTO usage VALUES (1800000000000, 'n1', 'a', '', '', '', '', 6, 60, 12, 72,
            '{}', x'');
        INSERT INTO telemetry VALUES ('n1', 7, 1, 1800000000000);
    ";

    #[test]
    fn a_schema_4_database_gains_cache_hits_and_keeps_its_usage() {
        let dir = std::env::temp_dir().join(format!("sluice-usage-v4-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        rusqlite::Connection::open(dir.join("control.db"))
            .unwrap()
            .execute_batch(SCHEMA_4)
            .unwrap();
        let store = Store::open(&dir).unwrap();
        let version: i64 = store
            .db
            .query_row("SELECT max(version) FROM schema_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, 5);
        let mut marks = store.telemetry_marks().unwrap();
        assert_eq!(marks[&("n1".to_owned(), 7)], 1);
        let old = store.query_usage(&everything()).unwrap();
        assert_eq!(
            old.iter()
                .map(|r| (r.requests, r.total_tokens, r.cache_hits))
                .collect::<Vec<_>>(),
            [(6, 72, 0)]
        );
        // The next batch of that incarnation adds to the old row, cache hits included.
        let mut next = batch(2, 4);
        next.records[0].cache_hits = 3;
        let answers = store
            .store_usage(
                &[Offered {
                    batch: next,
                    opens: false,
                }],
                &mut marks,
                SystemTime::now(),
            )
            .unwrap();
        assert_eq!(answers, [Answer::Stored(2)]);
        let now = store.query_usage(&everything()).unwrap();
        assert_eq!(
            now.iter()
                .map(|r| (r.requests, r.total_tokens, r.cache_hits))
                .collect::<Vec<_>>(),
            [(10, 76, 3)]
        );
        drop(store);
        // Opened again: already schema 5.
        let again = Store::open(&dir).unwrap();
        assert_eq!(again.query_usage(&everything()).unwrap()[0].cache_hits, 3);
        drop(again);
        // A newer schema is refused.
        rusqlite::Connection::open(dir.join("control.db"))
            .unwrap()
            .execute("UPDATE schema_version SET version = 6", [])
            .unwrap();
        let refused = Store::open(&dir).err().unwrap().to_string();
        assert_eq!(
            refused,
            "state database schema 6 is newer than this build's 5"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn counts_saturate_and_a_histogram_header_that_asks_for_gigabytes_is_ignored() {
        let (store, dir) = store("bomb");
        let mut marks = Marks::new();
        let mut huge = batch(1, u64::MAX - 5);
        // V2 cookie, payload length 0xFFFFFFFF, then a plausible rest of the header.
        let mut bomb = vec![
            0x1c, 0x84, 0x93, 0x13, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 3,
        ];
        bomb.extend_from_slice(&1u64.to_be_bytes());
        bomb.extend_from_slice(&(1u64 << 30).to_be_bytes());
        bomb.extend_from_slice(&1f64.to_bits().to_be_bytes());
        bomb.extend_from_slice(&[0; 16]);
        huge.records[0].latency_histogram = bomb;
        let offered = [
            Offered {
                batch: huge,
                opens: true,
            },
            Offered {
                batch: batch(2, 100),
                opens: false,
            },
        ];
        let answers = store
            .store_usage(&offered, &mut marks, SystemTime::now())
            .unwrap();
        assert_eq!(answers, [Answer::Stored(1), Answer::Stored(2)]);
        // Saturated, not wrapped (the database holds a signed 64-bit integer).
        assert_eq!(total(&store), i64::MAX as u64);
        assert!(histogram(&offered[0].batch.records[0].latency_histogram).is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
