//! The limiter core: rate limits and quotas, lock-free and exact across workers. Pure: no
//! I/O, no monoio; time comes in as arguments from a [`Clock`].
//!
//! # Algorithms
//!
//! - **Rates** ([`gcra`]): GCRA on one `AtomicU64` per key — the theoretical arrival time,
//!   advanced by compare-and-swap. A [`RateSpec`] `{ limit, period, burst }` is a token
//!   bucket of size `burst` refilled at `limit / period`; a request of cost `n` (1 for
//!   requests, its token estimate for TPM) passes iff the bucket holds `n`. Over any window
//!   of one period, a bucket admits at most `limit + burst`.
//! - **Per-core leases** ([`lease`]): a worker takes tokens from the shared bucket in batches
//!   of up to `batch` (fewer when fewer are left, so one core alone reaches the whole
//!   limit) into a `Cell`, and answers from it; unused tokens go back on expiry (ttl) or
//!   release. Tokens are taken before they are spent, so the only slack is what cores hold
//!   when a window opens: **over any window of one period, admitted ≤ `limit + burst +
//!   workers × batch`**. The default batch, `burst / (4 × workers)`, caps that at
//!   `limit + 1.25 × burst`; `batch = 1` gives the bucket's own bound, at a CAS a decision.
//! - **Quotas** ([`quota`]): a fixed UTC calendar window (hour, day, month) counted in one
//!   `AtomicU64` (window number + used), one CAS a decision; at most `limit` per window.
//! - **Token limits, Azure style**: admit with the estimate as cost (a reservation), then
//!   `settle(reserved, actual)` once the answer's usage is known: the difference is
//!   refunded, or charged — possibly into debt, which refuses later requests until the
//!   refill (or the quota window's reset) has paid it off.
//! - **Decisions** ([`decision`]): [`Decision::Allow`] carries `limit`, `remaining` and
//!   `reset` for the `x-ratelimit-*` headers; [`Decision::Deny`] carries the reason (rate →
//!   429, quota → 403) and `retry_after`, exact for a rate. [`Decision::shadowed`] applies a
//!   limit's shadow (dry-run) flag: the refusal becomes an admission marked `would_deny`.
//! - **Keys** ([`table`]): a bounded `dashmap` of [`LimitKey`] (limit id + scope value) →
//!   shared state, with a per-worker [`LocalTable`] cache in front (no shard lock when warm),
//!   eviction of idle state that is at rest, and evictions noticed by the caches.
//!
//! # How a worker uses it
//!
//! At start, each worker makes a `LocalTable<GcraBucket, LocalLease>` (and one of
//! `QuotaCounter`s) in front of the node's shared tables. Per request and per applicable
//! limit, it reads `now` once from [`SystemClock`], builds the key and calls
//! [`LocalTable::with`], deciding inside with `lease.try_acquire(bucket, now, cost)`, and
//! applies the limit's shadow flag. After the answer it settles the token limits with the
//! real usage. On a periodic tick (say every 100 ms) it calls [`LocalTable::tick`] with
//! `lease.expire(bucket, now)`, and one worker calls [`LimiterTable::sweep`].

pub mod clock;
pub mod decision;
pub mod gcra;
pub mod lease;
pub mod quota;
pub mod table;

pub use clock::{Clock, FakeClock, SystemClock};
pub use decision::{Decision, Denial, DenyReason};
pub use gcra::{GcraBucket, Grant, RateSpec};
pub use lease::{LeaseConfig, LocalLease};
pub use quota::{QuotaCounter, QuotaSpec, QuotaWindow};
pub use table::{
    Entry, LimitId, LimitKey, LimiterTable, LocalTable, LookupError, ScopeValue, SharedLimit,
    TableFull,
};
