//! The limiter decision, clock read included: Sluice's per-core lease (alone, and behind the
//! worker's key cache) and its raw atomic GCRA bucket, against a `Mutex<HashMap>` of token
//! buckets (the naive baseline) and the `governor` crate's direct rate limiter (GCRA on an
//! atomic, its own quanta clock).
//!
//! `uncontended`: one thread. `contended`: two threads on one limit, each doing the same
//! number of decisions; the time reported is for one decision *on each thread* (wall time of
//! the pair), so equal figures in the two groups mean throughput doubled with the second
//! thread, and twice the figure means no gain.

#![allow(
    missing_docs,
    reason = "criterion_group! defines a public fn that cannot carry a doc comment"
)]

use std::collections::HashMap;
use std::hint::black_box;
use std::num::NonZeroU32;
use std::sync::{Arc, Barrier, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use governor::clock::FakeRelativeClock;
use governor::{Quota, RateLimiter};
use sluice::limit::{
    Clock, Decision, GcraBucket, LeaseConfig, LimitId, LimitKey, LimiterTable, LocalLease,
    LocalTable, RateSpec, ScopeValue, SystemClock,
};

/// A limit the benches never exhaust: a billion a second, a billion at once.
fn roomy() -> RateSpec {
    RateSpec::per(1_000_000_000, Duration::from_secs(1))
}

const BATCH: u64 = 256;

fn lease_config() -> LeaseConfig {
    LeaseConfig {
        batch: BATCH,
        ttl: LeaseConfig::DEFAULT_TTL,
    }
}

/// The naive baseline: a token bucket per key under one lock, refilled in floating point.
struct MutexLimiter {
    buckets: Mutex<HashMap<u64, NaiveBucket>>,
    rate_per_nano: f64,
    burst: f64,
}

struct NaiveBucket {
    tokens: f64,
    last: u64,
}

impl MutexLimiter {
    fn new(spec: RateSpec) -> Self {
        Self {
            buckets: Mutex::new(HashMap::new()),
            rate_per_nano: spec.limit as f64 / spec.period.as_nanos() as f64,
            burst: spec.burst as f64,
        }
    }

    fn try_acquire(&self, key: u64, now: u64, cost: u64) -> bool {
        let Ok(mut buckets) = self.buckets.lock() else {
            return false;
        };
        let b = buckets.entry(key).or_insert(NaiveBucket {
            tokens: self.burst,
            last: now,
        });
        let elapsed = now.saturating_sub(b.last) as f64;
        b.tokens = (b.tokens + elapsed * self.rate_per_nano).min(self.burst);
        b.last = now;
        if b.tokens >= cost as f64 {
            b.tokens -= cost as f64;
            true
        } else {
            false
        }
    }
}

fn key() -> LimitKey {
    LimitKey {
        limit: LimitId(3),
        scope: ScopeValue::Id(42),
    }
}

/// One worker's path through its key cache to its lease.
fn table_decide(local: &LocalTable<GcraBucket, LocalLease>, key: &LimitKey) -> bool {
    let now = SystemClock.now_nanos();
    local
        .with(
            key,
            now,
            0,
            || GcraBucket::new(roomy()),
            |b| LocalLease::new(b, lease_config()),
            |b, lease| lease.try_acquire(b, now, 1).is_allowed(),
        )
        .unwrap_or(false)
}

/// Every contender admits 10 of 20 requests against 10 a second, at one instant.
fn check_agreement() {
    let spec = RateSpec::per(10, Duration::from_secs(1));
    let count = |f: &mut dyn FnMut() -> bool| (0..20).filter(|_| f()).count();
    let bucket = GcraBucket::new(spec);
    assert_eq!(count(&mut || bucket.try_acquire(0, 1).is_allowed()), 10);
    let bucket = GcraBucket::new(spec);
    let lease = LocalLease::new(&bucket, LeaseConfig::for_spec(&spec, 2));
    assert_eq!(
        count(&mut || lease.try_acquire(&bucket, 0, 1).is_allowed()),
        10
    );
    let naive = MutexLimiter::new(spec);
    assert_eq!(count(&mut || naive.try_acquire(1, 0, 1)), 10);
    let clock = FakeRelativeClock::default();
    let quota = Quota::per_second(NonZeroU32::MIN.saturating_add(9));
    let gov = RateLimiter::direct_with_clock(quota, clock.clone());
    assert_eq!(count(&mut || gov.check().is_ok()), 10);
    // And the roomy limit admits what the benches throw at it.
    let bucket = GcraBucket::new(roomy());
    assert!(matches!(
        bucket.try_acquire(SystemClock.now_nanos(), 1),
        Decision::Allow { .. }
    ));
}

fn governor_quota() -> Quota {
    Quota::per_second(NonZeroU32::MAX)
}

fn uncontended(c: &mut Criterion) {
    check_agreement();
    let mut group = c.benchmark_group("limiter/uncontended");

    group.bench_function("clock read only", |b| {
        b.iter(|| black_box(SystemClock.now_nanos()))
    });

    let bucket = GcraBucket::new(roomy());
    let lease = LocalLease::new(&bucket, lease_config());
    group.bench_function("sluice lease", |b| {
        b.iter(|| {
            let now = SystemClock.now_nanos();
            black_box(lease.try_acquire(&bucket, now, black_box(1)).is_allowed())
        })
    });

    let table = Arc::new(LimiterTable::new(1024, Duration::from_secs(60)));
    let local = LocalTable::new(table);
    let k = key();
    group.bench_function("sluice key cache + lease", |b| {
        b.iter(|| black_box(table_decide(&local, black_box(&k))))
    });

    let bucket = GcraBucket::new(roomy());
    group.bench_function("sluice atomic GCRA", |b| {
        b.iter(|| {
            let now = SystemClock.now_nanos();
            black_box(bucket.try_acquire(now, black_box(1)).is_allowed())
        })
    });

    let naive = MutexLimiter::new(roomy());
    group.bench_function("Mutex<HashMap> baseline", |b| {
        b.iter(|| {
            let now = SystemClock.now_nanos();
            black_box(naive.try_acquire(black_box(42), now, 1))
        })
    });

    let gov = RateLimiter::direct(governor_quota());
    group.bench_function("governor direct", |b| {
        b.iter(|| black_box(gov.check().is_ok()))
    });
    group.finish();
}

/// Runs `per_thread(iters)` on two threads started together; the wall time of the pair.
fn two_threads<S: Sync>(shared: &S, iters: u64, per_thread: impl Fn(&S, u64) + Sync) -> Duration {
    let barrier = Barrier::new(2);
    let start = Mutex::new(None::<Instant>);
    thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                barrier.wait();
                if let Ok(mut t) = start.lock() {
                    t.get_or_insert_with(Instant::now);
                }
                per_thread(shared, iters);
            });
        }
    });
    let begun = start
        .lock()
        .ok()
        .and_then(|t| *t)
        .unwrap_or_else(Instant::now);
    begun.elapsed()
}

fn contended(c: &mut Criterion) {
    let mut group = c.benchmark_group("limiter/contended, 2 threads");

    let bucket = GcraBucket::new(roomy());
    group.bench_function("sluice lease", |b| {
        b.iter_custom(|iters| {
            two_threads(&bucket, iters, |bucket, n| {
                let lease = LocalLease::new(bucket, lease_config());
                for _ in 0..n {
                    let now = SystemClock.now_nanos();
                    black_box(lease.try_acquire(bucket, now, black_box(1)).is_allowed());
                }
                lease.release(bucket, SystemClock.now_nanos());
            })
        })
    });

    let table = Arc::new(LimiterTable::new(1024, Duration::from_secs(60)));
    group.bench_function("sluice key cache + lease", |b| {
        b.iter_custom(|iters| {
            two_threads(&table, iters, |table, n| {
                let local = LocalTable::new(table.clone());
                let k = key();
                for _ in 0..n {
                    black_box(table_decide(&local, black_box(&k)));
                }
            })
        })
    });

    let bucket = GcraBucket::new(roomy());
    group.bench_function("sluice atomic GCRA", |b| {
        b.iter_custom(|iters| {
            two_threads(&bucket, iters, |bucket, n| {
                for _ in 0..n {
                    let now = SystemClock.now_nanos();
                    black_box(bucket.try_acquire(now, black_box(1)).is_allowed());
                }
            })
        })
    });

    let naive = MutexLimiter::new(roomy());
    group.bench_function("Mutex<HashMap> baseline", |b| {
        b.iter_custom(|iters| {
            two_threads(&naive, iters, |naive, n| {
                for _ in 0..n {
                    let now = SystemClock.now_nanos();
                    black_box(naive.try_acquire(black_box(42), now, 1));
                }
            })
        })
    });

    let gov = RateLimiter::direct(governor_quota());
    group.bench_function("governor direct", |b| {
        b.iter_custom(|iters| {
            two_threads(&gov, iters, |gov, n| {
                for _ in 0..n {
                    black_box(gov.check().is_ok());
                }
            })
        })
    });
    group.finish();
}

criterion_group!(benches, uncontended, contended);
criterion_main!(benches);
