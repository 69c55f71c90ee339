//! Request counters: one set per worker thread, written only by that thread (a relaxed load
//! and store, no read-modify-write on a shared line), merged when read. A reset does not
//! touch the counters: it records the merged totals as a baseline that later reads
//! subtract, so it never races the writers.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

/// What the mock has seen since it started or since the last reset. Admin requests
/// (`/_mock/…`) are not counted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MockStats {
    /// Requests whose head (and body) was read: every one was either answered (counted in
    /// `by_status`) or reset (counted in `resets`).
    pub requests: u64,
    /// Answers by HTTP status (JSON keys are the status as a string, e.g. `"200"`).
    pub by_status: BTreeMap<u16, u64>,
    /// Requests whose connection was reset instead of answered.
    pub resets: u64,
}

/// Lowest and highest status with a counter.
const FIRST_STATUS: u16 = 100;
const LAST_STATUS: u16 = 599;

/// One worker's counters.
#[derive(Debug)]
pub struct ThreadCounters {
    requests: AtomicU64,
    resets: AtomicU64,
    by_status: Box<[AtomicU64]>,
}

/// Adds one to a counter only this thread writes.
fn bump(counter: &AtomicU64) {
    counter.store(
        counter.load(Ordering::Relaxed).wrapping_add(1),
        Ordering::Relaxed,
    );
}

impl ThreadCounters {
    fn new() -> Self {
        ThreadCounters {
            requests: AtomicU64::new(0),
            resets: AtomicU64::new(0),
            by_status: (FIRST_STATUS..=LAST_STATUS)
                .map(|_| AtomicU64::new(0))
                .collect(),
        }
    }

    /// Counts a request (call once its head and body are read).
    pub fn request(&self) {
        bump(&self.requests);
    }

    /// Counts an answer with `status` (a status outside 100–599 counts as the nearer bound;
    /// the mock answers none).
    pub fn answered(&self, status: u16) {
        let i = status.clamp(FIRST_STATUS, LAST_STATUS) - FIRST_STATUS;
        if let Some(c) = self.by_status.get(usize::from(i)) {
            bump(c);
        }
    }

    /// Counts a reset.
    pub fn reset(&self) {
        bump(&self.resets);
    }

    fn add_to(&self, total: &mut MockStats) {
        total.requests += self.requests.load(Ordering::Relaxed);
        total.resets += self.resets.load(Ordering::Relaxed);
        for (status, c) in (FIRST_STATUS..).zip(self.by_status.iter()) {
            let n = c.load(Ordering::Relaxed);
            if n > 0 {
                *total.by_status.entry(status).or_default() += n;
            }
        }
    }
}

/// Every worker's counters and the baseline of the last reset; shared by the handle and
/// the workers (which answer `/_mock/stats`).
#[derive(Debug)]
pub struct StatsBoard {
    threads: Vec<Arc<ThreadCounters>>,
    baseline: Mutex<MockStats>,
}

impl StatsBoard {
    /// A board for `threads` workers.
    pub fn new(threads: usize) -> Self {
        StatsBoard {
            threads: (0..threads)
                .map(|_| Arc::new(ThreadCounters::new()))
                .collect(),
            baseline: Mutex::new(MockStats::default()),
        }
    }

    /// Worker `i`'s counters.
    pub fn thread(&self, i: usize) -> Option<Arc<ThreadCounters>> {
        self.threads.get(i).cloned()
    }

    fn totals(&self) -> MockStats {
        let mut total = MockStats::default();
        for t in &self.threads {
            t.add_to(&mut total);
        }
        total
    }

    fn baseline(&self) -> std::sync::MutexGuard<'_, MockStats> {
        // A poisoned lock only means a reader panicked; the baseline is still whole.
        self.baseline
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The counts since the last reset.
    pub fn read(&self) -> MockStats {
        let baseline = self.baseline();
        since(self.totals(), &baseline)
    }

    /// Starts counting from zero; returns the counts that were cleared.
    pub fn reset(&self) -> MockStats {
        let mut baseline = self.baseline();
        let totals = self.totals();
        let cleared = since(totals.clone(), &baseline);
        *baseline = totals;
        cleared
    }
}

/// `now - base`, dropping statuses left at zero.
fn since(mut now: MockStats, base: &MockStats) -> MockStats {
    now.requests = now.requests.saturating_sub(base.requests);
    now.resets = now.resets.saturating_sub(base.resets);
    for (status, n) in &base.by_status {
        if let Some(v) = now.by_status.get_mut(status) {
            *v = v.saturating_sub(*n);
        }
    }
    now.by_status.retain(|_, n| *n > 0);
    now
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_merge_across_threads_and_reset_to_zero() {
        let board = StatsBoard::new(2);
        let (a, b) = (board.thread(0).unwrap(), board.thread(1).unwrap());
        for _ in 0..3 {
            a.request();
            a.answered(200);
        }
        b.request();
        b.answered(429);
        b.request();
        b.reset();
        let stats = board.read();
        assert_eq!(stats.requests, 5);
        assert_eq!(stats.resets, 1);
        assert_eq!(stats.by_status, BTreeMap::from([(200, 3), (429, 1)]));
        assert_eq!(board.reset(), stats);
        assert_eq!(board.read(), MockStats::default());
        a.request();
        a.answered(503);
        assert_eq!(board.read().by_status, BTreeMap::from([(503, 1)]));
    }

    #[test]
    fn json_keys_are_status_strings() {
        let stats = MockStats {
            requests: 2,
            by_status: BTreeMap::from([(200, 1), (429, 1)]),
            resets: 0,
        };
        let json = serde_json::to_string(&stats).unwrap();
        assert_eq!(
            json,
            r#"{"requests":2,"by_status":{"200":1,"429":1},"resets":0}"#
        );
        assert_eq!(serde_json::from_str::<MockStats>(&json).unwrap(), stats);
    }
}
