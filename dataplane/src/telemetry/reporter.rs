//! Reporting usage exactly once: the node's side of `UsageService.Report`, as a state
//! machine with no I/O (the agent drives it).
//!
//! Each batch gets the next sequence number of this process's incarnation and stays
//! [in flight](Reporter::unanswered) until the control plane answers that it stored it (or
//! a later one); after a reconnect every unanswered batch is sent again with its own number,
//! and the control plane stores each number once. A batch that went out is never changed or
//! merged — the control plane may have stored it and lost only the answer — so what is
//! counted while batches wait stays [pending](Reporter::add), merged by key, and goes out
//! as the next batch. Nothing is lost while the node lives, unless the control plane stays
//! away so long that pending usage outgrows [`MAX_PENDING_KEYS`]: then the oldest minutes
//! are dropped and counted ([`Reporter::dropped`]).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::SystemTime;

use prost::Message as _;
use sluice_proto::control::v1::UsageBatch;

use super::{merge_into, record, UsageKey, UsageMap};

/// The most batches sent and not yet answered; past it, usage waits (merged) as pending.
pub const MAX_IN_FLIGHT: usize = 32;

/// The most records one batch carries: 5,000 (the control plane takes up to 20,000).
pub const MAX_BATCH_RECORDS: usize = 5_000;

/// The most bytes of records one batch carries: 1 MiB (gRPC messages are bounded at 4 MiB
/// by default). What does not fit stays pending and goes in the next batches.
pub const MAX_BATCH_BYTES: usize = 1 << 20;

/// The most keys pending usage holds (about 100 KB each with a histogram at most, far less
/// in practice): past it the oldest minutes are dropped.
pub const MAX_PENDING_KEYS: usize = 100_000;

/// One node incarnation's reporting state.
#[derive(Debug)]
pub struct Reporter {
    node_id: String,
    incarnation: u64,
    next_sequence: u64,
    in_flight: VecDeque<UsageBatch>,
    pending: UsageMap<Arc<str>>,
    dropped: u64,
}

impl Reporter {
    /// A reporter for `node_id` under `incarnation` (random per process, 1 ..= 2^63 - 1).
    pub fn new(node_id: &str, incarnation: u64) -> Self {
        Self {
            node_id: node_id.to_string(),
            incarnation,
            next_sequence: 1,
            in_flight: VecDeque::new(),
            pending: UsageMap::default(),
            dropped: 0,
        }
    }

    /// Adds freshly counted usage to what is pending.
    pub fn add(&mut self, usage: &UsageMap<Arc<str>>) {
        merge_into(&mut self.pending, usage, Arc::clone);
        if self.pending.len() > MAX_PENDING_KEYS {
            let mut keys: Vec<UsageKey<Arc<str>>> = self.pending.keys().cloned().collect();
            keys.sort_by_key(|k| k.minute);
            let over = self.pending.len() - MAX_PENDING_KEYS;
            for key in keys.into_iter().take(over) {
                if let Some(figures) = self.pending.remove(&key) {
                    self.dropped += figures.requests;
                }
            }
        }
    }

    /// Makes the pending usage (possibly none: a batch is also the node's heartbeat) the
    /// next batch and returns it, unless [`MAX_IN_FLIGHT`] batches await an answer. A batch
    /// holds at most [`MAX_BATCH_RECORDS`] records and [`MAX_BATCH_BYTES`] of them, oldest
    /// minutes first; the rest stays pending.
    pub fn next_batch(&mut self, now: SystemTime) -> Option<UsageBatch> {
        if self.in_flight.len() >= MAX_IN_FLIGHT {
            return None;
        }
        let mut keys: Vec<UsageKey<Arc<str>>> = self.pending.keys().cloned().collect();
        keys.sort();
        let mut records = Vec::new();
        let mut bytes = 0;
        for key in keys {
            if records.len() >= MAX_BATCH_RECORDS {
                break;
            }
            let Some(figures) = self.pending.get(&key) else {
                continue;
            };
            let one = record(&key, figures, &self.node_id);
            // The record, its field tag and length prefix (at most 8 bytes together).
            let size = one.encoded_len() + 8;
            if bytes + size > MAX_BATCH_BYTES && !records.is_empty() {
                break;
            }
            bytes += size;
            records.push(one);
            self.pending.remove(&key);
        }
        let batch = UsageBatch {
            node_id: self.node_id.clone(),
            sequence: self.next_sequence,
            records,
            incarnation: self.incarnation,
            sent_at: Some(now.into()),
            ..UsageBatch::default()
        };
        self.next_sequence += 1;
        self.in_flight.push_back(batch.clone());
        Some(batch)
    }

    /// The control plane stored every batch through `sequence`: they are forgotten.
    pub fn stored_through(&mut self, sequence: u64) {
        while self
            .in_flight
            .front()
            .is_some_and(|b| b.sequence <= sequence)
        {
            self.in_flight.pop_front();
        }
    }

    /// Every batch sent and not yet answered, oldest first: what a new stream sends first.
    pub fn unanswered(&self) -> impl Iterator<Item = &UsageBatch> {
        self.in_flight.iter()
    }

    /// Requests dropped unreported because pending usage outgrew [`MAX_PENDING_KEYS`].
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::UsageFigures;

    fn usage(minute: u64, subscription: &str, requests: u64) -> UsageMap<Arc<str>> {
        let mut map = UsageMap::default();
        map.insert(
            UsageKey {
                minute,
                subscription: Arc::from(subscription),
                deployment: Arc::from("d"),
                backend: Arc::from("b"),
                model: Arc::from("m"),
                status_class: "2xx",
            },
            UsageFigures {
                requests,
                ..UsageFigures::default()
            },
        );
        map
    }

    fn requests(batch: &UsageBatch) -> u64 {
        batch.records.iter().map(|r| r.requests).sum()
    }

    #[test]
    fn batches_are_numbered_kept_until_answered_and_never_merged_once_sent() {
        let now = SystemTime::UNIX_EPOCH;
        let mut r = Reporter::new("n1", 7);
        r.add(&usage(60, "a", 2));
        let first = r.next_batch(now).unwrap();
        assert_eq!(
            (first.sequence, first.incarnation, requests(&first)),
            (1, 7, 2)
        );
        // The connection drops before the answer: new usage waits as pending (merged),
        // and the first batch is resent unchanged.
        r.add(&usage(60, "a", 3));
        r.add(&usage(60, "a", 4));
        let second = r.next_batch(now).unwrap();
        assert_eq!((second.sequence, requests(&second)), (2, 7));
        let resent: Vec<&UsageBatch> = r.unanswered().collect();
        assert_eq!(resent, [&first, &second]);
        r.stored_through(1);
        assert_eq!(r.unanswered().count(), 1);
        r.stored_through(2);
        assert_eq!(r.unanswered().count(), 0);
        // An empty batch is a heartbeat with its own number.
        let beat = r.next_batch(now).unwrap();
        assert_eq!((beat.sequence, beat.records.len()), (3, 0));
    }

    #[test]
    fn in_flight_batches_are_bounded_and_pending_usage_waits_merged() {
        let now = SystemTime::UNIX_EPOCH;
        let mut r = Reporter::new("n1", 1);
        for _ in 0..MAX_IN_FLIGHT {
            assert!(r.next_batch(now).is_some());
        }
        r.add(&usage(60, "a", 1));
        r.add(&usage(60, "a", 1));
        assert!(r.next_batch(now).is_none());
        r.stored_through(1);
        let next = r.next_batch(now).unwrap();
        assert_eq!(
            (next.sequence, requests(&next)),
            (MAX_IN_FLIGHT as u64 + 1, 2)
        );
    }

    #[test]
    fn a_batch_is_bounded_and_what_does_not_fit_goes_next() {
        let mut r = Reporter::new("n1", 1);
        let mut many = UsageMap::default();
        for i in 0..(MAX_BATCH_RECORDS as u64 + 10) {
            many.extend(usage(60 * (i + 1), "a", 1));
        }
        r.add(&many);
        let first = r.next_batch(SystemTime::UNIX_EPOCH).unwrap();
        assert_eq!(first.records.len(), MAX_BATCH_RECORDS);
        assert!(first.encoded_len() <= MAX_BATCH_BYTES + 64);
        let second = r.next_batch(SystemTime::UNIX_EPOCH).unwrap();
        assert_eq!(second.records.len(), 10);
        assert_eq!(
            requests(&first) + requests(&second),
            MAX_BATCH_RECORDS as u64 + 10
        );
        // By bytes: records with long names fill a batch before its count bound.
        let mut r = Reporter::new("n1", 1);
        let long = "s".repeat(1000);
        let mut wide = UsageMap::default();
        for i in 0..2_000u64 {
            wide.extend(usage(60 * (i + 1), &long, 1));
        }
        r.add(&wide);
        let first = r.next_batch(SystemTime::UNIX_EPOCH).unwrap();
        assert!(first.records.len() < 2_000);
        assert!(first.encoded_len() <= MAX_BATCH_BYTES + 64);
    }

    #[test]
    fn pending_usage_past_its_bound_drops_the_oldest_minutes_and_counts_them() {
        let mut r = Reporter::new("n1", 1);
        let mut many = UsageMap::default();
        for i in 0..=MAX_PENDING_KEYS as u64 {
            many.extend(usage(60 * (i + 1), "a", 1));
        }
        r.add(&many);
        assert_eq!(r.dropped(), 1);
        let batch = r.next_batch(SystemTime::UNIX_EPOCH).unwrap();
        assert_eq!(batch.records.len(), MAX_BATCH_RECORDS);
        // The oldest minute went; the next oldest comes first.
        assert_eq!(batch.records[0].bucket_start.unwrap().seconds, 120);
    }
}
