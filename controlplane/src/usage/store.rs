//! Usage in the state database: one row per minute × node × subscription × deployment ×
//! backend × model × status class (`usage`), each batch's figures added to its rows; and
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
}

impl Figures {
    fn add(&mut self, other: Figures) {
        self.requests += other.requests;
        self.prompt_tokens += other.prompt_tokens;
        self.completion_tokens += other.completion_tokens;
        self.total_tokens += other.total_tokens;
        for (reason, n) in other.rejections {
            *self.rejections.entry(reason).or_default() += n;
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
        }
    }
}

/// A histogram from its V2 serialization, auto-resizing; `None` for no bytes or bad ones.
fn histogram(bytes: &[u8]) -> Option<Histogram<u64>> {
    if bytes.is_empty() {
        return None;
    }
    let mut h: Histogram<u64> = Deserializer::new().deserialize(&mut &bytes[..]).ok()?;
    h.auto(true);
    Some(h)
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

    /// Stores `batches` in one transaction: each whose sequence is past its incarnation's
    /// mark in `marks` adds its records to their rows and moves the mark. Returns each
    /// batch's mark after it (what to answer) and how many were stored (the rest were
    /// resends); `marks` is updated only once the transaction committed.
    pub fn store_usage(
        &self,
        batches: &[UsageBatch],
        marks: &mut Marks,
        now: SystemTime,
    ) -> Result<(Vec<u64>, usize), StoreError> {
        let mut after = marks.clone();
        let mut answers = Vec::with_capacity(batches.len());
        let mut stored = 0;
        let tx = self.db.unchecked_transaction()?;
        {
            let mut read = tx.prepare_cached(
                "SELECT requests, prompt_tokens, completion_tokens, total_tokens, rejections, latency
                 FROM usage WHERE minute_ms = ?1 AND node_id = ?2 AND subscription = ?3
                 AND deployment = ?4 AND backend = ?5 AND model = ?6 AND status_class = ?7",
            )?;
            let mut write = tx.prepare_cached(
                "INSERT OR REPLACE INTO usage (minute_ms, node_id, subscription, deployment,
                 backend, model, status_class, requests, prompt_tokens, completion_tokens,
                 total_tokens, rejections, latency)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
            )?;
            let mut mark = tx.prepare_cached(
                "INSERT OR REPLACE INTO telemetry (node_id, incarnation, stored_through, last_report_ms)
                 VALUES (?1, ?2, ?3, ?4)",
            )?;
            for batch in batches {
                let id = (batch.node_id.clone(), batch.incarnation);
                let through = after.get(&id).copied().unwrap_or(0);
                if batch.sequence <= through {
                    answers.push(through);
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
                        .query_row(key, |r| {
                            Ok(Figures {
                                requests: to_u64(r.get(0)?),
                                prompt_tokens: to_u64(r.get(1)?),
                                completion_tokens: to_u64(r.get(2)?),
                                total_tokens: to_u64(r.get(3)?),
                                rejections: serde_json::from_str(&r.get::<_, String>(4)?)
                                    .unwrap_or_default(),
                                latency: histogram(&r.get::<_, Vec<u8>>(5)?),
                            })
                        })
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
                    ])?;
                }
                mark.execute(params![
                    batch.node_id,
                    to_i64(batch.incarnation),
                    to_i64(batch.sequence),
                    epoch_ms(now),
                ])?;
                after.insert(id, batch.sequence);
                answers.push(batch.sequence);
                stored += 1;
            }
        }
        tx.commit()?;
        *marks = after;
        Ok((answers, stored))
    }

    /// Usage over `query`'s range, summed per bucket and grouped dimensions (the others left
    /// empty), with p50 and p99 latency from the merged histograms; ordered by bucket, then
    /// by total tokens, most first.
    pub fn query_usage(&self, query: &Query) -> Result<Vec<UsageRecord>, StoreError> {
        let mut statement = self.db.prepare(
            "SELECT minute_ms, node_id, subscription, deployment, backend, model, status_class,
             requests, prompt_tokens, completion_tokens, total_tokens, rejections, latency
             FROM usage WHERE minute_ms >= ?1 AND minute_ms < ?2
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
            groups.entry(key).or_default().add(Figures {
                requests: to_u64(r.get(7)?),
                prompt_tokens: to_u64(r.get(8)?),
                completion_tokens: to_u64(r.get(9)?),
                total_tokens: to_u64(r.get(10)?),
                rejections: serde_json::from_str(&r.get::<_, String>(11)?).unwrap_or_default(),
                latency: histogram(&r.get::<_, Vec<u8>>(12)?),
            });
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
