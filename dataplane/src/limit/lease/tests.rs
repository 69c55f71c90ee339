//! Leases under many threads: the admission bound, exactness when demand exceeds the limit,
//! and a lone core reaching the whole limit. Time is a shared [`FakeClock`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Duration;

use super::*;
use crate::limit::clock::{Clock, FakeClock};

const MS: u64 = 1_000_000;
const SEC: u64 = 1_000 * MS;

/// The largest total cost admitted in any half-open window `[t, t + len)`.
fn max_in_window(mut admitted: Vec<(u64, u64)>, len: u64) -> u64 {
    admitted.sort_unstable();
    let (mut best, mut sum, mut end) = (0, 0, 0);
    for start in 0..admitted.len() {
        while end < admitted.len() && admitted[end].0 < admitted[start].0 + len {
            sum += admitted[end].1;
            end += 1;
        }
        best = best.max(sum);
        sum -= admitted[start].1;
    }
    best
}

#[test]
fn one_core_alone_reaches_the_whole_limit() {
    let spec = RateSpec::per(1000, Duration::from_secs(1)).with_burst(100);
    let bucket = GcraBucket::new(spec);
    let lease = LocalLease::new(
        &bucket,
        LeaseConfig {
            batch: 16,
            ttl: LeaseConfig::DEFAULT_TTL,
        },
    );
    let clock = FakeClock::new(0);
    let mut per_second = [0u64; 5];
    for _ in 0..5000 {
        let now = clock.now_nanos();
        while lease.try_acquire(&bucket, now, 1).is_allowed() {
            per_second[usize::try_from(now / SEC).unwrap()] += 1;
        }
        clock.advance(Duration::from_millis(1));
    }
    // The burst, then exactly the rate: the lease never strands a token.
    assert_eq!(per_second, [100 + 999, 1000, 1000, 1000, 1000]);
    assert_eq!(lease.held(), 0);
}

#[test]
fn many_cores_in_lockstep_admit_exactly_the_limit() {
    const WORKERS: usize = 8;
    let spec = RateSpec::per(1000, Duration::from_secs(1)).with_burst(100);
    let bucket = Arc::new(GcraBucket::new(spec));
    let clock = Arc::new(FakeClock::new(0));
    let barrier = Arc::new(Barrier::new(WORKERS + 1));
    let steps = 2000;
    let workers: Vec<_> = (0..WORKERS)
        .map(|_| {
            let (bucket, clock, barrier) = (bucket.clone(), clock.clone(), barrier.clone());
            thread::spawn(move || {
                let lease = LocalLease::new(
                    &bucket,
                    LeaseConfig {
                        batch: 8,
                        ttl: LeaseConfig::DEFAULT_TTL,
                    },
                );
                let mut admitted = 0u64;
                for _ in 0..steps {
                    barrier.wait();
                    let now = clock.now_nanos();
                    while lease.try_acquire(&bucket, now, 1).is_allowed() {
                        admitted += 1;
                    }
                    barrier.wait();
                }
                admitted
            })
        })
        .collect();
    for _ in 0..steps {
        barrier.wait();
        barrier.wait();
        clock.advance(Duration::from_millis(1));
    }
    let total: u64 = workers.into_iter().map(|w| w.join().unwrap()).sum();
    // Steps at 0, 1, …, 1999 ms: the burst plus one token per elapsed millisecond.
    assert_eq!(total, 100 + 1999);
}

/// Workers hammer one limit while another thread moves the clock by 1 ms whenever they have
/// drained the shared bucket (so demand exceeds the limit however the threads are
/// scheduled); every admission is recorded with the time its worker read.
fn hammer(spec: RateSpec, batch: u64, workers: usize, max_cost: u64) -> (Vec<(u64, u64)>, u64) {
    let bucket = Arc::new(GcraBucket::new(spec));
    let clock = Arc::new(FakeClock::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let start = Arc::new(Barrier::new(workers + 1));
    let handles: Vec<_> = (0..workers)
        .map(|w| {
            let (bucket, clock, done, start) =
                (bucket.clone(), clock.clone(), done.clone(), start.clone());
            thread::spawn(move || {
                let lease = LocalLease::new(
                    &bucket,
                    LeaseConfig {
                        batch,
                        ttl: Duration::from_millis(50),
                    },
                );
                let mut rng = 0x9E37_79B9_7F4A_7C15_u64 ^ (w as u64 + 1);
                let mut admitted = Vec::new();
                start.wait();
                while !done.load(Ordering::Relaxed) {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    let cost = 1 + rng % max_cost;
                    let now = clock.now_nanos();
                    if lease.try_acquire(&bucket, now, cost).is_allowed() {
                        admitted.push((now, cost));
                    } else {
                        thread::yield_now();
                    }
                }
                lease.release(&bucket, clock.now_nanos());
                admitted
            })
        })
        .collect();
    start.wait();
    for _ in 0..3000 {
        while bucket.available(clock.now_nanos()) >= max_cost {
            thread::yield_now();
        }
        clock.advance(Duration::from_millis(1));
    }
    done.store(true, Ordering::Relaxed);
    let admitted = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    (admitted, clock.now_nanos())
}

#[test]
fn many_cores_hammering_never_exceed_the_bound() {
    let (workers, batch) = (8, 16);
    let spec = RateSpec::per(1000, Duration::from_secs(1)).with_burst(100);
    let (admitted, end) = hammer(spec, batch, workers, 1);
    let total: u64 = admitted.iter().map(|a| a.1).sum();
    // Never more than the bucket could ever have given out…
    assert!(total <= 100 + end / MS, "{total} by {end} ns");
    // …nor less, but for the last millisecond's refill and what the leases held at the end.
    assert!(total >= 100 + end / MS - 1 - 8 * 16, "{total} by {end} ns");
    // …and over any window of one period, at most limit + burst + workers × batch.
    let worst = max_in_window(admitted, SEC);
    assert!(worst <= 1000 + 100 + 8 * 16, "{worst}");
}

#[test]
fn many_cores_hammering_with_token_costs_never_exceed_the_bound() {
    let (workers, batch) = (8, 1000);
    let spec = RateSpec::per(100_000, Duration::from_secs(1)).with_burst(10_000);
    let (admitted, end) = hammer(spec, batch, workers, 500);
    let total: u64 = admitted.iter().map(|a| a.1).sum();
    assert!(total <= 10_000 + end / 10_000, "{total} by {end} ns");
    assert!(
        total >= 10_000 + end / 10_000 - 100 - 500 - 8 * 1000,
        "{total} by {end} ns"
    );
    let worst = max_in_window(admitted, SEC);
    assert!(worst <= 100_000 + 10_000 + 8 * 1000, "{worst}");
}

#[test]
fn an_idle_lease_goes_back_after_its_ttl() {
    let bucket = GcraBucket::new(RateSpec::per(100, Duration::from_secs(60)));
    let config = LeaseConfig {
        batch: 10,
        ttl: Duration::from_secs(1),
    };
    let (a, b) = (
        LocalLease::new(&bucket, config),
        LocalLease::new(&bucket, config),
    );
    assert!(a.try_acquire(&bucket, 0, 1).is_allowed());
    assert_eq!(a.held(), 9);
    let mut got = 0;
    while b.try_acquire(&bucket, 0, 1).is_allowed() {
        got += 1;
    }
    assert_eq!(got, 90);
    a.expire(&bucket, SEC - 1);
    assert_eq!(a.held(), 9);
    a.expire(&bucket, SEC);
    assert_eq!(a.held(), 0);
    // b's own lease expired too: a fresh decision returns nothing and takes a's 9.
    while b.try_acquire(&bucket, SEC, 1).is_allowed() {
        got += 1;
    }
    // 90 + a's 9 + the second's worth of refill (100 per minute: 1 token).
    assert_eq!(got, 100);
}

#[test]
fn settle_refunds_locally_and_charges_into_debt() {
    // 1000 tokens a second, 1 ms each.
    let bucket = GcraBucket::new(RateSpec::per(1000, Duration::from_secs(1)));
    let lease = LocalLease::new(
        &bucket,
        LeaseConfig {
            batch: 100,
            ttl: Duration::from_secs(1),
        },
    );
    // Reserve 800, use 300: 100 come back to the lease, 400 to the bucket.
    assert!(lease.try_acquire(&bucket, 0, 800).is_allowed());
    assert_eq!(lease.held(), 0);
    lease.settle(&bucket, 0, 800, 300);
    assert_eq!(lease.held(), 100);
    assert_eq!(bucket.available(0), 600);
    // Reserve 700 (100 local + 600 shared), use 1900: 1200 of debt.
    assert!(lease.try_acquire(&bucket, 0, 700).is_allowed());
    lease.settle(&bucket, 0, 700, 1900);
    assert_eq!(bucket.available(0), 0);
    match lease.try_acquire(&bucket, 0, 1) {
        Decision::Deny(d) => assert_eq!(d.retry_after, Duration::from_millis(1201)),
        d => panic!("{d:?}"),
    }
    assert!(!lease.try_acquire(&bucket, 1200 * MS, 1).is_allowed());
    assert!(lease.try_acquire(&bucket, 1201 * MS, 1).is_allowed());
}
