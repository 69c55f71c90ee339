//! When each request is sent and whether it counts: the warm-up and measured windows, the
//! open-loop schedule (request k due at start + k/rate) and the request-count tickets.
//!
//! Pure: time is a parameter, so the windows and slots are tested without sleeping.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The run's windows, the same for every thread.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// When the first request is due.
    pub start: Instant,
    /// Requests due before this are warm-up: sent, not recorded.
    pub warmup_end: Instant,
    /// Requests due at or after this are not sent; `None` when a request count ends the run.
    pub end: Option<Instant>,
}

/// Where a request due at some instant falls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Sent, not recorded.
    Warmup,
    /// Sent and recorded.
    Measured,
    /// Not sent: the run is over.
    Over,
}

impl Plan {
    /// The phase of a request due at `t`.
    pub fn phase(&self, t: Instant) -> Phase {
        if self.end.is_some_and(|end| t >= end) {
            Phase::Over
        } else if t < self.warmup_end {
            Phase::Warmup
        } else {
            Phase::Measured
        }
    }
}

/// One thread's share of the open-loop schedule. With `threads` threads the whole run's
/// request k is due at `start + k/rate` and belongs to thread `k mod threads`, so each
/// thread keeps its own slot counter and no atomic is touched per request.
#[derive(Debug, Clone, Copy)]
pub struct OpenSlots {
    /// Requests per second, all threads together.
    pub rate: f64,
    /// Number of threads sharing the schedule.
    pub threads: u64,
    /// This thread's index.
    pub thread: u64,
}

impl OpenSlots {
    /// Offset from the start of this thread's `slot`-th request.
    pub fn offset(&self, slot: u64) -> Duration {
        let k = slot * self.threads + self.thread;
        // Rounded to whole nanoseconds so slot k of k/rate lands exactly on round figures.
        Duration::from_nanos((k as f64 * 1e9 / self.rate).round() as u64)
    }
}

/// What a connection does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Turn {
    /// Send a request due at `due` (now, in closed loop); record it when `measured`.
    Go {
        /// The intended send time, latency's origin.
        due: Instant,
        /// Whether the outcome is recorded (false in warm-up).
        measured: bool,
    },
    /// Stop this connection.
    Stop,
}

/// One thread's schedule: the plan plus, in open loop, its next slot. Shared by the
/// thread's connections (one `Cell`, no atomics).
#[derive(Debug)]
pub struct ThreadSchedule {
    plan: Plan,
    open: Option<OpenSlots>,
    next_slot: Cell<u64>,
}

impl ThreadSchedule {
    /// A closed-loop (`open` is `None`) or open-loop schedule.
    pub fn new(plan: Plan, open: Option<OpenSlots>) -> Self {
        Self {
            plan,
            open,
            next_slot: Cell::new(0),
        }
    }

    /// The next request for a connection that just became free at `now`. In open loop it
    /// takes the thread's oldest unsent slot, which may be due in the past when every
    /// connection was busy: the backlog then shows in latency.
    pub fn next(&self, now: Instant) -> Turn {
        let due = match self.open {
            Some(open) => {
                let slot = self.next_slot.get();
                self.next_slot.set(slot + 1);
                self.plan.start + open.offset(slot)
            }
            None => now,
        };
        match self.plan.phase(due) {
            Phase::Over => Turn::Stop,
            Phase::Warmup => Turn::Go {
                due,
                measured: false,
            },
            Phase::Measured => Turn::Go {
                due,
                measured: true,
            },
        }
    }
}

/// The measured-request budget of `--requests N`, shared by all threads: one ticket per
/// measured request, so exactly N are sent however the threads race.
#[derive(Debug)]
pub struct Tickets {
    limit: Option<u64>,
    taken: AtomicU64,
}

impl Tickets {
    /// `None`: unlimited (the run ends by time).
    pub fn new(limit: Option<u64>) -> Self {
        Self {
            limit,
            taken: AtomicU64::new(0),
        }
    }

    /// Takes a ticket; false once `limit` were taken.
    pub fn take(&self) -> bool {
        match self.limit {
            None => true,
            // A fetch_add past the limit is harmless: the counter is only compared.
            Some(limit) => self.taken.fetch_add(1, Ordering::Relaxed) < limit,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(warmup_ms: u64, end_ms: Option<u64>) -> Plan {
        let start = Instant::now();
        Plan {
            start,
            warmup_end: start + Duration::from_millis(warmup_ms),
            end: end_ms.map(|ms| start + Duration::from_millis(ms)),
        }
    }

    fn count(schedule: &ThreadSchedule) -> (u64, u64) {
        let (mut warm, mut measured) = (0, 0);
        let now = Instant::now();
        while let Turn::Go { measured: m, .. } = schedule.next(now) {
            if m {
                measured += 1;
            } else {
                warm += 1;
            }
        }
        (warm, measured)
    }

    #[test]
    fn open_loop_slots_interleave_across_threads() {
        let p = plan(100, Some(500));
        let mut due = Vec::new();
        for thread in 0..3 {
            let s = ThreadSchedule::new(
                p,
                Some(OpenSlots {
                    rate: 500.0,
                    threads: 3,
                    thread,
                }),
            );
            let (warm, measured) = count(&s);
            assert!((16..=17).contains(&warm), "{warm}");
            assert!((66..=67).contains(&measured), "{measured}");
            let s = ThreadSchedule::new(p, s.open);
            while let Turn::Go { due: d, .. } = s.next(p.start) {
                due.push(d - p.start);
            }
        }
        due.sort();
        // Exactly k/rate: 50 warm-up slots in 100 ms, 200 measured in the next 400 ms.
        assert_eq!(due.len(), 250);
        for (k, d) in due.iter().enumerate() {
            assert_eq!(*d, Duration::from_millis(2 * k as u64));
        }
    }

    #[test]
    fn closed_loop_phase_follows_the_clock() {
        let p = plan(100, Some(300));
        let s = ThreadSchedule::new(p, None);
        let at = |ms| s.next(p.start + Duration::from_millis(ms));
        assert!(matches!(
            at(0),
            Turn::Go {
                measured: false,
                ..
            }
        ));
        assert!(matches!(at(100), Turn::Go { measured: true, .. }));
        assert_eq!(at(300), Turn::Stop);
        let endless = ThreadSchedule::new(plan(0, None), None);
        assert!(matches!(
            endless.next(p.start + Duration::from_secs(3600)),
            Turn::Go { measured: true, .. }
        ));
    }

    #[test]
    fn tickets_stop_at_the_limit() {
        let t = Tickets::new(Some(3));
        assert_eq!((0..5).filter(|_| t.take()).count(), 3);
        let unlimited = Tickets::new(None);
        assert!((0..5).all(|_| unlimited.take()));
    }
}
