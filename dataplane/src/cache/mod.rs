//! The exact response cache (DESIGN.md "Request path", step 6): a deployment that enables it
//! (`[[deployment]] cache = { … }`) answers a repeated non-streaming chat, completions or
//! embeddings request from the answer its backend gave the first time, byte for byte, for
//! `ttl`.
//!
//! The pieces: [`key`] turns a request into its cache key (operation, subscription, the body
//! in canonical JSON) or says why it is not cacheable; [`control`] reads the client's
//! `Cache-Control`; [`ResponseCache`] is the store, one per deployment, shared by every
//! worker and carried over a reload that keeps its settings. Neither does I/O: the policy
//! ([`crate::policy::cache`]) decides per request, the connection replays a hit through the
//! response phases.
//!
//! The store is [`quick_cache`]'s sharded cache: a hit takes one shard's read lock (never a
//! lock shared by every worker), and its bounds hold on every insert, not on a later
//! maintenance pass. TTL is Sluice's: each entry keeps the monotonic time it expires, and a
//! lookup that finds an expired entry removes it and misses.
//!
//! Memory: the store holds at most `max_bytes`; answers on their way into it (misses in
//! flight, read as they pass) hold at most another `max_bytes` between them
//! ([`ResponseCache::hold`]), so a flood of large misses cannot grow without bound; a stored
//! body is shared ([`Bytes`]) by every replay of it, and a large one is written to the client
//! from the store without a copy.

pub mod control;
pub mod key;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use control::Freshness;

/// Bytes every entry is counted for beyond its key and body (the entry's own bookkeeping).
pub const ENTRY_OVERHEAD: u64 = 64;

/// A deployment's `cache = { … }`, compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheSettings {
    /// How long an answer is served from the cache after it was stored (> 0). Default 10 min.
    pub ttl: Duration,
    /// At most this many answers are kept (≥ 1). Default 10,000.
    pub max_entries: u64,
    /// At most this many bytes (keys, bodies and [`ENTRY_OVERHEAD`] each) are kept (≥ 1 KiB).
    /// Default 64 MiB.
    pub max_bytes: u64,
    /// Each subscription has entries of its own (the key names it): one never gets
    /// another's answer. Default true; false shares answers across subscriptions.
    pub per_subscription: bool,
    /// Chat and completions requests are cached whatever their `temperature`. Default false:
    /// only with `temperature = 0` or a `seed` (an absent temperature is the API's default,
    /// 1).
    pub nondeterministic: bool,
    /// Top-level body members left out of the key: they do not change the answer. Default
    /// `["user", "stream_options"]`.
    pub ignore_fields: Vec<String>,
}

impl Default for CacheSettings {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(600),
            max_entries: 10_000,
            max_bytes: 64 << 20,
            per_subscription: true,
            nondeterministic: false,
            ignore_fields: vec!["user".to_owned(), "stream_options".to_owned()],
        }
    }
}

/// One stored answer: a complete 200 JSON body, replayed as it came.
#[derive(Debug)]
pub struct CachedAnswer {
    /// The answer's body, byte for byte as the backend sent it (uncoded).
    pub body: Bytes,
    /// The backend's `content-type` value, as it came (`application/json` when it sent
    /// none).
    pub content_type: Box<[u8]>,
    /// When it was stored (monotonic nanoseconds, [`crate::limit::Clock::now_nanos`]).
    pub stored: u64,
    /// Its age when it arrived (RFC 9111 §4.2.3 `corrected_initial_age`).
    initial_age: Duration,
    /// When it stops being served (the same clock).
    expires: u64,
}

impl CachedAnswer {
    /// Its age at `now` (monotonic nanoseconds): its age on arrival plus the time it has
    /// been stored (RFC 9111 §4.2.3 `current_age`).
    pub fn age(&self, now: u64) -> Duration {
        self.initial_age + Duration::from_nanos(now.saturating_sub(self.stored))
    }
}

/// How much of the store an entry takes: its bytes, but never less than the store's unit
/// (`max_bytes / max_entries`), so one weighted capacity bounds both the bytes and the
/// entries.
#[derive(Debug, Clone, Copy)]
struct EntryWeight {
    unit: u64,
}

impl quick_cache::Weighter<Box<[u8]>, Arc<CachedAnswer>> for EntryWeight {
    fn weight(&self, key: &Box<[u8]>, answer: &Arc<CachedAnswer>) -> u64 {
        let bytes = key.len() as u64
            + answer.body.len() as u64
            + answer.content_type.len() as u64
            + ENTRY_OVERHEAD;
        bytes.max(self.unit)
    }
}

type Store = quick_cache::sync::Cache<Box<[u8]>, Arc<CachedAnswer>, EntryWeight>;

/// A deployment's cache: answers by key, bounded by entries and bytes, each served for
/// `ttl`. Shared by every worker (`Arc`); every method takes `&self`.
///
/// Bounds: every entry weighs at least `unit = ⌈max_bytes / max_entries⌉` (or, with one
/// entry, most of `max_bytes`), and the store holds at most `max_bytes` of weight, so it
/// never holds more than `max_entries` entries nor more than `max_bytes` bytes. Both hold per
/// shard, so eviction is per shard: one shard below 64 entries, at most 16 shards.
pub struct ResponseCache {
    settings: CacheSettings,
    store: Store,
    /// The largest entry (key, body, overhead) a shard admits.
    max_entry: u64,
    /// Bytes held by answers on their way into the store ([`Self::hold`]), at most
    /// `max_bytes`.
    pending: AtomicU64,
}

impl std::fmt::Debug for ResponseCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseCache")
            .field("settings", &self.settings)
            .field("entries", &self.store.len())
            .field("bytes", &self.store.weight())
            .field("pending", &self.pending.load(Ordering::Relaxed))
            .finish()
    }
}

impl ResponseCache {
    /// An empty cache with `settings` (`max_entries` ≥ 1 and `max_bytes` ≥ 1 KiB, as the
    /// config checks; smaller values are raised to those).
    pub fn new(settings: CacheSettings) -> Self {
        let entries = settings.max_entries.max(1);
        let bytes = settings.max_bytes.max(1024);
        // Shards of at least 32 entries each, a power of two, at most 16; each shard gets an
        // equal, whole share of the bytes, so the shares add up to no more than `bytes`.
        let shards = (entries / 32).clamp(1, 16);
        let shards = if shards.is_power_of_two() {
            shards
        } else {
            shards.next_power_of_two() / 2
        };
        let shard_bytes = bytes / shards;
        // quick_cache admits no entry heavier than its hot share of a shard (97 %).
        let max_entry = shard_bytes / 100 * 96;
        let unit = bytes.div_ceil(entries).min(max_entry);
        let options = quick_cache::OptionsBuilder::new()
            .shards(shards as usize)
            .estimated_items_capacity(entries as usize)
            .weight_capacity(shard_bytes * shards)
            .build();
        let store = match options {
            Ok(options) => Store::with_options(
                options,
                EntryWeight { unit },
                Default::default(),
                Default::default(),
            ),
            // Both required options are set above.
            Err(_) => Store::with_weighter(entries as usize, shard_bytes, EntryWeight { unit }),
        };
        Self {
            settings,
            store,
            max_entry,
            pending: AtomicU64::new(0),
        }
    }

    /// Takes `bytes` from the budget for answers being read into the store (`max_bytes`
    /// between every miss in flight): false, taking nothing, when that would pass it — the
    /// answer is then relayed without being stored. Give it back with [`Self::release`].
    pub fn hold(&self, bytes: u64) -> bool {
        let budget = self.settings.max_bytes.max(1024);
        self.pending
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |held| {
                held.checked_add(bytes).filter(|&total| total <= budget)
            })
            .is_ok()
    }

    /// Gives back `bytes` taken by [`Self::hold`].
    pub fn release(&self, bytes: u64) {
        // Never below 0: only what was held is released.
        let _ = self
            .pending
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |held| {
                Some(held.saturating_sub(bytes))
            });
    }

    /// Bytes held now by answers on their way into the store.
    pub fn pending(&self) -> u64 {
        self.pending.load(Ordering::Relaxed)
    }

    /// Its settings.
    pub fn settings(&self) -> &CacheSettings {
        &self.settings
    }

    /// The answer stored under `key` that is still fresh at `now` (monotonic nanoseconds,
    /// [`crate::limit::Clock::now_nanos`], as every time here). An expired one is removed
    /// (unless a fresher one replaced it meanwhile) and misses.
    pub fn get(&self, key: &[u8], now: u64) -> Option<Arc<CachedAnswer>> {
        let answer = self.store.get(key)?;
        if now < answer.expires {
            return Some(answer);
        }
        self.store.remove_if(key, |a| now >= a.expires);
        None
    }

    /// The largest body that can be stored under a key of `key_len` bytes: past it, an
    /// answer is not worth reading into memory.
    pub fn max_body(&self, key_len: usize) -> usize {
        let room = self
            .max_entry
            .saturating_sub(key_len as u64 + ENTRY_OVERHEAD);
        usize::try_from(room).unwrap_or(usize::MAX)
    }

    /// Stores `body` (sent as `content_type`) under `key` at `now` (monotonic ns), to be
    /// served until `now + ttl` — or sooner when the backend's answer gave a shorter
    /// freshness lifetime ([`Freshness::For`]) — evicting what the bounds require. A body
    /// too large for the store ([`Self::max_body`]) or [`Freshness::NotStorable`] is not
    /// stored (`false`).
    pub fn insert(
        &self,
        key: Box<[u8]>,
        body: Bytes,
        content_type: Box<[u8]>,
        freshness: Freshness,
        now: u64,
    ) -> bool {
        if body.len() + content_type.len() > self.max_body(key.len()) {
            return false;
        }
        let ttl = self.settings.ttl;
        let (lifetime, initial_age) = match freshness {
            Freshness::For { left, age } => (left.min(ttl), age),
            Freshness::Unstated { age } => (ttl, age),
            Freshness::NotStorable => return false,
        };
        let answer = CachedAnswer {
            body,
            content_type,
            stored: now,
            initial_age,
            expires: now.saturating_add(u64::try_from(lifetime.as_nanos()).unwrap_or(u64::MAX)),
        };
        self.store.insert(key, Arc::new(answer));
        true
    }

    /// Entries held now.
    pub fn len(&self) -> usize {
        self.store.len()
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.store.is_empty()
    }

    /// Bytes held now, as weighed for the bounds.
    pub fn weight(&self) -> u64 {
        self.store.weight()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(max_entries: u64, max_bytes: u64) -> ResponseCache {
        ResponseCache::new(CacheSettings {
            ttl: Duration::from_secs(60),
            max_entries,
            max_bytes,
            ..CacheSettings::default()
        })
    }

    fn json() -> Box<[u8]> {
        b"application/json".to_vec().into()
    }

    fn key(i: usize) -> Box<[u8]> {
        format!("chat\n0:\n{{\"i\":{i}}}").into_bytes().into()
    }

    #[test]
    fn a_shorter_lifetime_from_the_backend_ends_the_entry_sooner() {
        let c = cache(10, 1 << 20);
        let t0 = 1_000_000_000;
        let fresh = |secs| Freshness::For {
            left: Duration::from_secs(secs),
            age: Duration::ZERO,
        };
        let five = fresh(5);
        assert!(c.insert(key(1), b"{}".to_vec().into(), json(), five, t0));
        let long = fresh(600);
        assert!(c.insert(key(2), b"{}".to_vec().into(), json(), long, t0));
        assert!(c.get(&key(1), t0 + 4_999_000_000).is_some());
        assert!(c.get(&key(1), t0 + 5_000_000_000).is_none());
        assert!(
            c.get(&key(2), t0 + 59_000_000_000).is_some(),
            "ttl still bounds it"
        );
        assert!(c.get(&key(2), t0 + 60_000_000_000).is_none());
    }

    #[test]
    fn a_stored_answer_is_served_until_its_ttl() {
        let c = cache(10, 1 << 20);
        let t0 = 1_000_000_000;
        assert!(c.insert(
            key(1),
            b"{\"a\":1}".to_vec().into(),
            json(),
            Freshness::default(),
            t0
        ));
        let hit = c.get(&key(1), t0 + 59_000_000_000).unwrap();
        assert_eq!(&*hit.body, b"{\"a\":1}");
        assert!(c.get(&key(2), t0).is_none());
        assert!(c.get(&key(1), t0 + 60_000_000_000).is_none());
        assert_eq!(c.len(), 0, "an expired entry is removed when found");
    }

    #[test]
    fn entries_are_bounded_by_count() {
        for max in [1, 2, 5, 100, 1000] {
            let c = cache(max, 64 << 20);
            let t0 = 1_000_000_000;
            for i in 0..(max as usize * 3) {
                c.insert(
                    key(i),
                    b"{}".to_vec().into(),
                    json(),
                    Freshness::default(),
                    t0,
                );
                assert!(c.len() as u64 <= max, "{} entries over {max}", c.len());
            }
            assert!(!c.is_empty());
        }
    }

    #[test]
    fn entries_are_bounded_by_bytes() {
        let c = cache(10_000, 64 << 10);
        let t0 = 1_000_000_000;
        let body = Bytes::from(vec![b'x'; 10_000]);
        for i in 0..40 {
            c.insert(key(i), body.clone(), json(), Freshness::default(), t0);
            assert!(c.weight() <= 64 << 10);
        }
        assert!(c.len() <= 6, "{} entries of 10 kB in 64 KiB", c.len());
        // Too large for the store at all: refused, nothing evicted for it.
        let before = c.len();
        assert!(!c.insert(
            key(99),
            vec![b'x'; 64 << 10].into(),
            json(),
            Freshness::default(),
            t0
        ));
        assert_eq!(c.len(), before);
    }

    #[test]
    fn answers_in_flight_hold_at_most_max_bytes_between_them() {
        let c = cache(10, 64 << 10);
        assert!(c.hold(40 << 10));
        assert!(c.hold(24 << 10));
        assert!(!c.hold(1), "past the budget");
        c.release(24 << 10);
        assert!(!c.hold(25 << 10));
        assert!(c.hold(24 << 10));
        c.release(64 << 10);
        assert_eq!(c.pending(), 0);
        c.release(1);
        assert_eq!(c.pending(), 0, "never below 0");
    }

    #[test]
    fn one_entry_caches_hold_one() {
        let c = cache(1, 1 << 20);
        let t0 = 1_000_000_000;
        assert!(c.insert(
            key(1),
            b"{}".to_vec().into(),
            json(),
            Freshness::default(),
            t0
        ));
        assert!(c.get(&key(1), t0).is_some());
        assert!(c.insert(
            key(2),
            b"{}".to_vec().into(),
            json(),
            Freshness::default(),
            t0
        ));
        assert_eq!(c.len(), 1);
    }
}
