//! The progress line, once a second on stderr:
//! `[3s] 12345 req, 4100 req/s, p99 812us, errors 0`. Requests and errors are measured
//! totals so far; req/s and p99 are over the last second. Threads publish their figures
//! every 250 ms (one uncontended lock each); this side merges them.

use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::record::{histogram, Progress};
use super::report::fmt_us;
use super::worker::Shared;

/// How often finished threads are looked for between lines.
const POLL: Duration = Duration::from_millis(20);

/// Prints a line each second after the start until every thread in `handles` finished.
pub fn watch<T>(shared: &Shared, handles: &[JoinHandle<T>]) {
    let done = || handles.iter().all(JoinHandle::is_finished);
    let start = loop {
        if let Some(start) = shared.start.get() {
            break *start;
        }
        if done() {
            return;
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    let warmup_end = start + shared.warmup;
    let mut previous = histogram();
    let mut previous_requests = 0;
    let mut second = 1u64;
    let mut last_tick = start;
    while !done() {
        let tick = start + Duration::from_secs(second);
        let now = Instant::now();
        if now < tick {
            std::thread::sleep(POLL.min(tick - now));
            continue;
        }
        let mut total = Progress::default();
        for slot in &shared.progress {
            if let Ok(p) = slot.lock() {
                total.requests += p.requests;
                total.errors += p.errors;
                let _ = total.latency.add(&p.latency);
            }
        }
        let elapsed = now.duration_since(last_tick).as_secs_f64();
        if now < warmup_end {
            eprintln!("[{second}s] warm-up");
        } else {
            let mut interval = total.latency.clone();
            let p99 = match interval.subtract(&previous) {
                Ok(()) if !interval.is_empty() => fmt_us(interval.value_at_quantile(0.99)),
                _ => "-".to_string(),
            };
            let rate = (total.requests - previous_requests) as f64 / elapsed.max(1e-3);
            eprintln!(
                "[{second}s] {} req, {rate:.0} req/s, p99 {p99}, errors {}",
                total.requests, total.errors
            );
        }
        previous = total.latency;
        previous_requests = total.requests;
        last_tick = now;
        second += 1;
    }
}
