//! The limiter table: every live limit key's shared state, bounded, with idle keys evicted,
//! and a per-worker cache in front so the steady state takes no shard lock.
//!
//! [`LimiterTable`] maps a [`LimitKey`] (which limit, for which scope value) to an
//! `Arc<Entry>` holding the shared state (a [`GcraBucket`] or a [`QuotaCounter`]) on a
//! `dashmap`. A worker keeps its own [`LocalTable`]: a `RefCell<HashMap>` of the entries it
//! has used plus its per-key local state (a [`LocalLease`](super::lease::LocalLease)), so a
//! hit is one local hash lookup and one relaxed load of the entry's `evicted` flag.
//!
//! Eviction forgets only state that is *at rest* — a full bucket, a quota whose window has
//! passed — so forgetting it and starting afresh changes no decision. [`LimiterTable::sweep`]
//! (from a periodic tick) removes entries at rest and unused for `idle`. When an insert finds
//! the table full it sweeps every entry at rest regardless of age (at most once per
//! [`LimiterTable::FULL_SWEEP_INTERVAL`]), and if still full answers [`TableFull`]: the caller
//! chooses (refuse, or fail open), a flood of new keys never resets live limits.
//!
//! An evicted entry is marked; a worker that still caches it notices on its next use (or
//! tick), drops it with its lease and looks the key up afresh. The one race — a worker
//! spending from an entry evicted a moment before — costs at most one refill of that worker
//! from a full bucket, within the lease bound.

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use foldhash::fast::RandomState;

use super::gcra::GcraBucket;
use super::quota::QuotaCounter;

/// Which configured limit (an index the config compiler assigns).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LimitId(pub u32);

/// The value a limit is counted per.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ScopeValue {
    /// One counter for the whole limit (e.g. a deployment as a whole).
    Whole,
    /// A numeric id: a subscription, or a subscription × deployment pair packed as
    /// `(subscription << 32) | deployment`.
    Id(u64),
    /// A client address.
    Ip(IpAddr),
    /// A text value, e.g. a JWT claim's.
    Text(Arc<str>),
}

/// A table key: a limit and the scope value it is counted for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LimitKey {
    /// Which limit.
    pub limit: LimitId,
    /// For whom.
    pub scope: ScopeValue,
}

/// Shared limiter state the table can hold.
pub trait SharedLimit: Send + Sync {
    /// True when forgetting this state and starting afresh would change no decision.
    fn at_rest(&self, now_nanos: u64, unix_secs: u64) -> bool;
}

impl SharedLimit for GcraBucket {
    fn at_rest(&self, now_nanos: u64, _unix_secs: u64) -> bool {
        self.is_full(now_nanos)
    }
}

impl SharedLimit for QuotaCounter {
    fn at_rest(&self, _now_nanos: u64, unix_secs: u64) -> bool {
        self.used(unix_secs) == 0
    }
}

/// One key's shared state in the table.
#[derive(Debug)]
pub struct Entry<B> {
    state: B,
    last_used: AtomicU64,
    evicted: AtomicBool,
}

impl<B> Entry<B> {
    /// The shared limiter state.
    pub fn state(&self) -> &B {
        &self.state
    }

    /// True once the table has dropped this entry.
    pub fn is_evicted(&self) -> bool {
        self.evicted.load(Ordering::Relaxed)
    }

    /// Records a use. Writes the shared word only when the stored time is older than
    /// `granularity`, so busy keys do not bounce its cache line between cores.
    fn touch(&self, now: u64, granularity: u64) {
        if now.saturating_sub(self.last_used.load(Ordering::Relaxed)) > granularity {
            self.last_used.store(now, Ordering::Relaxed);
        }
    }
}

/// The table is full of entries in use; the key could not be added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the limiter table is full")]
pub struct TableFull;

/// The node's shared table of limiter state, bounded to `capacity` entries (plus at most
/// one per concurrently inserting worker).
#[derive(Debug)]
pub struct LimiterTable<B> {
    map: DashMap<LimitKey, Arc<Entry<B>>, RandomState>,
    capacity: usize,
    idle: u64,
    last_full_sweep: AtomicU64,
}

impl<B: SharedLimit> LimiterTable<B> {
    /// How often an insert into a full table may sweep it.
    pub const FULL_SWEEP_INTERVAL: Duration = Duration::from_secs(1);

    /// An empty table of at most `capacity` keys, forgetting keys unused for `idle`.
    pub fn new(capacity: usize, idle: Duration) -> Self {
        Self {
            map: DashMap::with_hasher(RandomState::default()),
            capacity,
            idle: u64::try_from(idle.as_nanos()).unwrap_or(u64::MAX),
            last_full_sweep: AtomicU64::new(0),
        }
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when no entry is held.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    fn touch_granularity(&self) -> u64 {
        self.idle / 8
    }

    /// The entry for `key`, created by `make` if absent. Takes a shard lock: workers go
    /// through their [`LocalTable`] instead.
    pub fn get_or_insert(
        &self,
        key: &LimitKey,
        now_nanos: u64,
        unix_secs: u64,
        make: impl FnOnce() -> B,
    ) -> Result<Arc<Entry<B>>, TableFull> {
        if let Some(entry) = self.map.get(key) {
            entry.touch(now_nanos, self.touch_granularity());
            return Ok(entry.clone());
        }
        if self.map.len() >= self.capacity {
            let last = self.last_full_sweep.load(Ordering::Relaxed);
            let due = last == 0
                || now_nanos.saturating_sub(last)
                    >= u64::try_from(Self::FULL_SWEEP_INTERVAL.as_nanos()).unwrap_or(u64::MAX);
            if due
                && self
                    .last_full_sweep
                    .compare_exchange(last, now_nanos.max(1), Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
            {
                self.evict(now_nanos, unix_secs, 0);
            }
            if self.map.len() >= self.capacity {
                return Err(TableFull);
            }
        }
        let entry = self
            .map
            .entry(key.clone())
            .or_insert_with(|| {
                Arc::new(Entry {
                    state: make(),
                    last_used: AtomicU64::new(now_nanos),
                    evicted: AtomicBool::new(false),
                })
            })
            .clone();
        Ok(entry)
    }

    /// Forgets entries at rest and unused for the table's `idle` time; returns how many.
    pub fn sweep(&self, now_nanos: u64, unix_secs: u64) -> usize {
        self.evict(now_nanos, unix_secs, self.idle)
    }

    fn evict(&self, now_nanos: u64, unix_secs: u64, idle: u64) -> usize {
        let before = self.map.len();
        self.map.retain(|_, entry| {
            let unused = now_nanos.saturating_sub(entry.last_used.load(Ordering::Relaxed));
            let forget = unused >= idle && entry.state.at_rest(now_nanos, unix_secs);
            if forget {
                entry.evicted.store(true, Ordering::Relaxed);
            }
            !forget
        });
        before.saturating_sub(self.map.len())
    }
}

struct Slot<B, L> {
    entry: Arc<Entry<B>>,
    local: L,
}

/// Why a [`LocalTable`] lookup found nothing to decide with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    /// The shared table is full of live keys.
    #[error(transparent)]
    Full(#[from] TableFull),
    /// The cache was already borrowed: a decision's closure called back into its own table.
    #[error("the worker's limiter cache is in use")]
    Busy,
}

/// One worker's cache in front of a [`LimiterTable`]: each key's shared entry and the
/// worker's local state for it (`L`, e.g. a lease). Not `Sync`: it lives on its core; never
/// hold it borrowed across an `.await` (the API only lends it to a closure).
pub struct LocalTable<B, L> {
    shared: Arc<LimiterTable<B>>,
    slots: RefCell<HashMap<LimitKey, Slot<B, L>, RandomState>>,
}

impl<B: SharedLimit, L> LocalTable<B, L> {
    /// An empty cache in front of `shared`.
    pub fn new(shared: Arc<LimiterTable<B>>) -> Self {
        Self {
            shared,
            slots: RefCell::new(HashMap::with_hasher(RandomState::default())),
        }
    }

    /// Keys cached on this worker.
    pub fn len(&self) -> usize {
        self.slots.borrow().len()
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Runs `decide` on `key`'s shared state and this worker's local state. A hit costs one
    /// local lookup; a miss (or an entry the table evicted) goes to the shared table,
    /// creating the state with `make` and the local state with `make_local`.
    pub fn with<R>(
        &self,
        key: &LimitKey,
        now_nanos: u64,
        unix_secs: u64,
        make: impl FnOnce() -> B,
        make_local: impl FnOnce(&B) -> L,
        decide: impl FnOnce(&B, &L) -> R,
    ) -> Result<R, LookupError> {
        let mut slots = self.slots.try_borrow_mut().map_err(|_| LookupError::Busy)?;
        if let Some(slot) = slots.get(key) {
            if !slot.entry.is_evicted() {
                slot.entry.touch(now_nanos, self.shared.touch_granularity());
                return Ok(decide(&slot.entry.state, &slot.local));
            }
            // Evicted: the local state (say, a lease's tokens) goes with it.
            slots.remove(key);
        }
        let entry = self.shared.get_or_insert(key, now_nanos, unix_secs, make)?;
        let local = make_local(&entry.state);
        let slot = slots.entry(key.clone()).or_insert(Slot { entry, local });
        Ok(decide(&slot.entry.state, &slot.local))
    }

    /// The worker's periodic upkeep: drops cached entries the table evicted, and hands every
    /// other one to `upkeep` (e.g. to expire an idle lease).
    pub fn tick(&self, mut upkeep: impl FnMut(&B, &L)) -> Result<(), LookupError> {
        let mut slots = self.slots.try_borrow_mut().map_err(|_| LookupError::Busy)?;
        slots.retain(|_, slot| {
            if slot.entry.is_evicted() {
                return false;
            }
            upkeep(&slot.entry.state, &slot.local);
            true
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limit::gcra::RateSpec;
    use crate::limit::lease::{LeaseConfig, LocalLease};
    use crate::limit::quota::{QuotaSpec, QuotaWindow};

    const SEC: u64 = 1_000_000_000;

    fn key(id: u64) -> LimitKey {
        LimitKey {
            limit: LimitId(1),
            scope: ScopeValue::Id(id),
        }
    }

    fn spec() -> RateSpec {
        RateSpec::per(10, Duration::from_secs(1))
    }

    #[test]
    fn idle_keys_are_evicted_and_busy_ones_kept() {
        let table = LimiterTable::new(100, Duration::from_secs(60));
        for id in 0..10 {
            let e = table
                .get_or_insert(&key(id), 0, 0, || GcraBucket::new(spec()))
                .unwrap();
            // Keys 0..5 spend tokens, so their buckets are not at rest for a while.
            if id < 5 {
                assert!(e.state().try_acquire(0, 10).is_allowed());
            }
        }
        // Before the idle time nothing goes.
        assert_eq!(table.sweep(59 * SEC, 0), 0);
        // Keys 5..10 used again at 59 s stay; 0..5 (idle 60 s, full again) go.
        for id in 5..10 {
            table
                .get_or_insert(&key(id), 59 * SEC, 0, || GcraBucket::new(spec()))
                .unwrap();
        }
        assert_eq!(table.sweep(60 * SEC, 0), 5);
        assert_eq!(table.len(), 5);
    }

    #[test]
    fn a_full_table_stays_bounded_and_never_forgets_live_state() {
        let table = LimiterTable::new(4, Duration::from_secs(60));
        let mut held = Vec::new();
        for id in 0..4 {
            let e = table
                .get_or_insert(&key(id), SEC, 0, || GcraBucket::new(spec()))
                .unwrap();
            assert!(e.state().try_acquire(SEC, 10).is_allowed());
            held.push(e);
        }
        // Every bucket is drained: nothing can be forgotten, the fifth key is refused.
        assert_eq!(
            table
                .get_or_insert(&key(4), SEC, 0, || GcraBucket::new(spec()))
                .unwrap_err(),
            TableFull
        );
        assert_eq!(table.len(), 4);
        // A second later the buckets are full again: a new key makes room at once, without
        // waiting for the idle time.
        assert!(table
            .get_or_insert(&key(4), 2 * SEC, 0, || GcraBucket::new(spec()))
            .is_ok());
        assert!(table.len() <= 4);
        assert!(held.iter().all(|e| e.is_evicted()));
        // Many more keys: never above the capacity.
        for id in 5..1000 {
            let _ = table.get_or_insert(&key(id), 3 * SEC + id, 0, || GcraBucket::new(spec()));
            assert!(table.len() <= 4);
        }
    }

    #[test]
    fn quota_state_survives_until_its_window_passes() {
        let table = LimiterTable::new(10, Duration::from_secs(1));
        let hour = 1_700_000_000 / 3600 * 3600;
        let e = table
            .get_or_insert(&key(1), 0, hour, || {
                QuotaCounter::new(QuotaSpec {
                    limit: 5,
                    window: QuotaWindow::Hour,
                })
            })
            .unwrap();
        assert!(e.state().try_acquire(hour, 5).is_allowed());
        assert_eq!(table.sweep(10 * SEC, hour + 10), 0);
        assert_eq!(table.sweep(10 * SEC, hour + 3600), 1);
    }

    #[test]
    fn the_worker_cache_notices_eviction() {
        let table = Arc::new(LimiterTable::new(100, Duration::from_secs(10)));
        let local: LocalTable<GcraBucket, LocalLease> = LocalTable::new(table.clone());
        let config = LeaseConfig {
            batch: 4,
            ttl: Duration::from_secs(1),
        };
        let decide = |now| {
            local
                .with(
                    &key(7),
                    now,
                    0,
                    || GcraBucket::new(spec()),
                    |b| LocalLease::new(b, config),
                    |b, lease| lease.try_acquire(b, now, 1),
                )
                .unwrap()
        };
        assert!(decide(0).is_allowed());
        assert_eq!(local.len(), 1);
        // The tick returns the idle lease, so the bucket comes to rest and can be evicted.
        local.tick(|b, lease| lease.expire(b, 2 * SEC)).unwrap();
        assert_eq!(table.sweep(20 * SEC, 0), 1);
        local.tick(|_, _| ()).unwrap();
        assert_eq!(local.len(), 0);
        // A fresh lookup makes a fresh entry.
        assert!(decide(20 * SEC).is_allowed());
        assert_eq!(table.len(), 1);
        // An eviction seen at use rather than at tick.
        local
            .with(
                &key(7),
                20 * SEC,
                0,
                || unreachable!(),
                |_| unreachable!(),
                |b, l| l.release(b, 20 * SEC),
            )
            .unwrap();
        assert_eq!(table.sweep(40 * SEC, 0), 1);
        assert!(decide(40 * SEC).is_allowed());
        assert_eq!((table.len(), local.len()), (1, 1));
    }

    #[test]
    fn reentering_a_worker_cache_is_refused_not_a_panic() {
        let table = Arc::new(LimiterTable::new(10, Duration::from_secs(10)));
        let local: LocalTable<GcraBucket, ()> = LocalTable::new(table);
        let inner = local.with(
            &key(1),
            0,
            0,
            || GcraBucket::new(spec()),
            |_| (),
            |_, _| local.with(&key(2), 0, 0, || GcraBucket::new(spec()), |_| (), |_, _| ()),
        );
        assert_eq!(inner.unwrap(), Err(LookupError::Busy));
    }
}
