//! A per-core lease on a shared rate limit: the worker answers almost every decision from a
//! plain `Cell` budget and touches the shared [`GcraBucket`] only to take a batch of tokens.
//!
//! A refill takes *up to* `batch` tokens but accepts fewer (at least what the request needs):
//! near the limit the batch shrinks to what is left, so one core alone can spend the whole
//! limit, and a core never refuses while the shared bucket could have admitted.
//!
//! Held tokens are taken from the shared bucket before they are spent, so they can only be
//! spent late, never twice: over any window of one period, admitted ≤ `limit + burst +
//! workers × batch` (each core holds at most `batch` when the window opens). Unused tokens
//! go back on [`LocalLease::release`], or when the lease is older than its `ttl`
//! ([`LocalLease::expire`], which a worker calls from its periodic tick), so an idle core
//! does not sit on a share of the limit.

use std::cell::Cell;
use std::time::Duration;

use super::decision::Decision;
use super::gcra::{GcraBucket, RateSpec};

/// How a core leases tokens from a shared bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseConfig {
    /// Tokens taken per refill (fewer when the bucket holds fewer). Each core can hold up
    /// to this many beyond the shared bucket's count: the over-admission allowance. 1 turns
    /// leasing off (every decision is a CAS).
    pub batch: u64,
    /// A lease older than this gives its unused tokens back at the next decision or tick.
    pub ttl: Duration,
}

impl LeaseConfig {
    /// The default lease lifetime: 1 s.
    pub const DEFAULT_TTL: Duration = Duration::from_secs(1);

    /// A batch of `burst / (4 × workers)` (at least 1) and the default ttl: all cores
    /// together hold at most a quarter of the bucket, so the bound is at most
    /// `limit + 1.25 × burst`, and a lone core refills once per `4 × workers` of a burst.
    pub fn for_spec(spec: &RateSpec, workers: usize) -> Self {
        let workers = u64::try_from(workers.max(1)).unwrap_or(u64::MAX);
        Self {
            batch: (spec.burst / workers.saturating_mul(4)).max(1),
            ttl: Self::DEFAULT_TTL,
        }
    }
}

/// One worker's lease on one shared bucket. Not `Sync`: it lives on its core. Every call
/// must pass the same bucket.
#[derive(Debug)]
pub struct LocalLease {
    budget: Cell<u64>,
    /// Monotonic ns after which the budget goes back.
    expires: Cell<u64>,
    /// When the shared bucket was due to be full at the last refill (for `reset`).
    full_at: Cell<u64>,
    limit: u64,
    batch: u64,
    ttl: u64,
}

impl LocalLease {
    /// An empty lease on `bucket`.
    pub fn new(bucket: &GcraBucket, config: LeaseConfig) -> Self {
        Self {
            budget: Cell::new(0),
            expires: Cell::new(0),
            full_at: Cell::new(0),
            limit: bucket.limit(),
            batch: config.batch.max(1),
            ttl: u64::try_from(config.ttl.as_nanos()).unwrap_or(u64::MAX),
        }
    }

    /// Tokens this core holds.
    pub fn held(&self) -> u64 {
        self.budget.get()
    }

    /// Admits `cost` tokens from the local budget, refilling from `bucket` when it runs
    /// short. `remaining` in an admission is the local budget plus the shared bucket's level
    /// now (one atomic load, no write), so it moves down with each request and up only with
    /// refill — other cores' unspent leases aside.
    #[inline]
    pub fn try_acquire(&self, bucket: &GcraBucket, now: u64, cost: u64) -> Decision {
        let budget = self.budget.get();
        if budget >= cost && now < self.expires.get() {
            let left = budget - cost;
            self.budget.set(left);
            return Decision::Allow {
                limit: self.limit,
                remaining: left.saturating_add(bucket.available(now)),
                reset: Duration::from_nanos(self.full_at.get().saturating_sub(now)),
                would_deny: None,
            };
        }
        self.refill(bucket, now, cost)
    }

    #[cold]
    fn refill(&self, bucket: &GcraBucket, now: u64, cost: u64) -> Decision {
        let mut budget = self.budget.get();
        if now >= self.expires.get() && budget > 0 {
            bucket.refund(now, budget);
            budget = 0;
            self.budget.set(0);
        }
        // budget < cost here (or the lease had expired and was returned).
        let need = cost.saturating_sub(budget);
        match bucket.take_up_to(now, need, need.max(self.batch)) {
            Ok(grant) => {
                // ≤ batch: either exactly `need` was granted, or at most `batch` with
                // budget < cost.
                let left = budget.saturating_add(grant.granted).saturating_sub(cost);
                self.budget.set(left);
                self.expires.set(now.saturating_add(self.ttl));
                self.full_at.set(grant.full_at);
                Decision::Allow {
                    limit: self.limit,
                    remaining: left.saturating_add(grant.remaining),
                    reset: Duration::from_nanos(grant.full_at.saturating_sub(now)),
                    would_deny: None,
                }
            }
            Err(denial) => Decision::Deny(denial),
        }
    }

    /// Reconciles a reservation with the real usage. A refund goes to the local budget up
    /// to `batch` (no atomic), the rest to the bucket; a charge comes out of the local
    /// budget first, the rest is charged to the bucket, possibly into debt.
    pub fn settle(&self, bucket: &GcraBucket, now: u64, reserved: u64, actual: u64) {
        let budget = self.budget.get();
        if actual < reserved {
            let back = reserved - actual;
            let local = back.min(self.batch.saturating_sub(budget));
            self.budget.set(budget + local);
            if back > local {
                bucket.refund(now, back - local);
            }
        } else if actual > reserved {
            let extra = actual - reserved;
            let local = extra.min(budget);
            self.budget.set(budget - local);
            if extra > local {
                bucket.charge(now, extra - local);
            }
        }
    }

    /// Gives every held token back to `bucket`.
    pub fn release(&self, bucket: &GcraBucket, now: u64) {
        let budget = self.budget.replace(0);
        if budget > 0 {
            bucket.refund(now, budget);
        }
    }

    /// Gives the held tokens back if the lease is older than its ttl. Call it from the
    /// worker's periodic tick so an idle core does not keep a share of the limit.
    pub fn expire(&self, bucket: &GcraBucket, now: u64) {
        if now >= self.expires.get() {
            self.release(bucket, now);
        }
    }
}

#[cfg(test)]
mod tests;
