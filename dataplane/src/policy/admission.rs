//! Admission by the limits that apply to a request — its product's, its deployment's and the
//! server's per-client-IP limits — and, after the answer, settlement of token reservations
//! with the real usage.
//!
//! Two moments decide: [`gate_client_ip`] takes the requests-unit client-IP limits as soon as
//! a request's head is parsed (so refused requests — unknown paths, bad credentials — count
//! too), and [`admit`] takes every other limit once the request is routed, authenticated and
//! its body read. What the gate takes is never given back; what `admit` takes is held until
//! [`settle`].
//!
//! Limit state lives in two process-wide tables ([`SharedLimits`]: GCRA buckets and quota
//! counters) that survive config reloads: a limit keeps its state while its owner, name,
//! unit, scope and window stay the same (its [`LimitId`], [`Limit::id`], is a hash of them). Each worker decides
//! through its own cache and per-core leases ([`WorkerLimits`]), so a warm decision takes no
//! lock and, for rates, usually no atomic.

use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use super::identity::Caller;
use crate::error::GatewayError;
use crate::limit::{
    Clock, Decision, DenyReason, GcraBucket, LeaseConfig, LimitId, LimitKey, LimiterTable,
    LocalLease, LocalTable, QuotaCounter, QuotaSpec, RateSpec, ScopeValue, SystemClock,
};
use crate::snapshot::access::{Access, Limit, LimitScope, LimitUnit, LimitWindow, Product};

/// Most keys (limit × scope value) each table keeps; idle ones at rest are evicted first.
const TABLE_CAPACITY: usize = 1 << 20;
/// How long an unused key's state is kept once it is at rest.
const TABLE_IDLE: Duration = Duration::from_secs(600);

/// The node's limit state, shared by every worker and kept across reloads.
pub struct SharedLimits {
    rates: Arc<LimiterTable<GcraBucket>>,
    quotas: Arc<LimiterTable<QuotaCounter>>,
}

impl Default for SharedLimits {
    fn default() -> Self {
        Self {
            rates: Arc::new(LimiterTable::new(TABLE_CAPACITY, TABLE_IDLE)),
            quotas: Arc::new(LimiterTable::new(TABLE_CAPACITY, TABLE_IDLE)),
        }
    }
}

impl SharedLimits {
    /// Forgets idle state at rest (called by one worker on its periodic tick).
    pub fn sweep(&self) {
        let clock = SystemClock;
        let (now, unix) = (clock.now_nanos(), clock.unix_secs());
        self.rates.sweep(now, unix);
        self.quotas.sweep(now, unix);
    }
}

/// One worker's caches in front of [`SharedLimits`], with its per-core leases.
pub struct WorkerLimits {
    rates: LocalTable<GcraBucket, LocalLease>,
    quotas: LocalTable<QuotaCounter, ()>,
    workers: usize,
}

impl WorkerLimits {
    /// The caches of one of `workers` workers.
    pub fn new(shared: &SharedLimits, workers: usize) -> Self {
        Self {
            rates: LocalTable::new(shared.rates.clone()),
            quotas: LocalTable::new(shared.quotas.clone()),
            workers,
        }
    }

    /// Periodic upkeep: gives back the tokens of expired leases, drops evicted entries.
    pub fn tick(&self) {
        let now = SystemClock.now_nanos();
        let _ = self.rates.tick(|bucket, lease| lease.expire(bucket, now));
        let _ = self.quotas.tick(|_, _| {});
    }
}

/// The limiter-state ids of a snapshot's limits, in [`Access::limits`] order (as [`Ask::ids`]
/// takes them). Each is [`Limit::id`], fixed when the config was compiled from the limit's
/// owner, name, unit, scope and window — never its position — so an unchanged limit finds
/// its buckets again after a reload, even one that inserted limits before it.
pub fn limit_ids(access: &Access) -> Vec<LimitId> {
    access.limits.iter().map(|l| l.id).collect()
}

/// What applies to one request.
pub struct Ask<'a> {
    /// The snapshot's access config.
    pub access: &'a Access,
    /// [`limit_ids`] of that snapshot.
    pub ids: &'a [LimitId],
    /// The authenticated caller and its product (auth on), or `None` (auth off).
    pub caller: Option<(&'a Caller, &'a Product)>,
    /// The deployment's name and its limits.
    pub deployment: &'a str,
    /// The deployment's limit ids (config indices).
    pub deployment_limits: &'a [usize],
    /// The client's address.
    pub client_ip: IpAddr,
    /// The verified client certificate's subject, over TLS with client certificates.
    pub client_cert: Option<&'a Arc<str>>,
    /// The token reservation (estimate of prompt plus completion); `None` for a request the
    /// response cache answers: it costs no tokens, so no token limit applies to it.
    pub tokens: Option<u64>,
    /// Record a line per decision for the trace header.
    pub trace: bool,
}

/// What a request holds once admitted.
#[derive(Debug, Default)]
pub struct Admission {
    held: Vec<Held>,
    /// The tightest requests limit: (limit, remaining).
    pub requests: Option<(u64, u64)>,
    /// The tightest tokens limit: (limit, remaining).
    pub tokens: Option<(u64, u64)>,
    /// One entry per decision, for the trace header (when [`Ask::trace`]).
    pub trace: Vec<LimitDecision>,
    /// The shadow limits (indexes) that would have refused the request, client-IP gate
    /// included (empty, not allocated, when none would).
    pub shadow_denied: Vec<usize>,
}

/// One limit's decision on an admitted request, as the trace shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitDecision {
    /// The limit (an index into [`Access::limits`]).
    pub limit: usize,
    /// What the limit has left after this request.
    pub remaining: u64,
    /// A shadow limit that would have refused the request (it refused nothing).
    pub shadow_deny: bool,
}

#[derive(Debug)]
struct Held {
    key: LimitKey,
    tokens: bool,
    quota: Option<QuotaSpec>,
    rate: Option<RateSpec>,
    reserved: u64,
    reserved_at_unix: u64,
}

impl Admission {
    /// Whether any token limit holds a reservation (so usage must be read from the answer).
    pub fn counts_tokens(&self) -> bool {
        self.held.iter().any(|h| h.tokens)
    }
}

/// How a request ended, for [`settle`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Refused before it was sent (by a later limit): everything [`admit`] took goes back.
    /// The client-IP gate's units are not held, so they stay counted.
    Refused,
    /// Answered: token reservations become these tokens (`None`: unknown, so the estimate
    /// stands — a stream cut short). Requests limits keep their unit.
    Used(Option<u64>),
}

/// What [`gate_client_ip`] decided for a request at its head, before anything else about it
/// was known; [`admit`] folds it into the request's [`Admission`] (its headers and trace).
/// It holds nothing: a requests unit taken at the gate is never given back.
#[derive(Debug, Default)]
pub struct IpGate {
    /// The tightest requests limit there: (limit, remaining).
    requests: Option<(u64, u64)>,
    /// (limit index, remaining, shadow would-deny) of each decision, for the trace.
    decided: Vec<(usize, u64, bool)>,
}

/// Decides the requests-unit `[server] client_ip_limits` (rates and quotas) for a request
/// from `client_ip`, right after its head is parsed: before routing, authentication and the
/// body, so every request counts — a 404, a wrong key, a refused method — as the IP limit is
/// what stands in the way of credential guessing. Over a rate → 429 `rate_limit_exceeded`
/// (with its retry time), over a quota → 403 `quota_exceeded`. What it takes is never given
/// back, whatever happens to the request afterwards: a refused attempt counts.
///
/// Tokens-unit client-IP limits cannot be decided before the body (the reservation is
/// estimated from it): [`admit`] decides them with the request's other limits.
pub fn gate_client_ip(
    worker: &WorkerLimits,
    clock: &dyn Clock,
    access: &Access,
    ids: &[LimitId],
    client_ip: IpAddr,
) -> Result<IpGate, GatewayError> {
    let mut gate = IpGate::default();
    let mut gated = access
        .client_ip_limits
        .iter()
        .filter_map(|&i| Some((i, access.limits.get(i)?, *ids.get(i)?)))
        .filter(|(_, l, _)| l.unit == LimitUnit::Requests)
        .peekable();
    if gated.peek().is_none() {
        // No clock read when nothing is gated.
        return Ok(gate);
    }
    let (now, unix) = (clock.now_nanos(), clock.unix_secs());
    for (index, limit, id) in gated {
        let key = LimitKey {
            limit: id,
            scope: ScopeValue::Ip(client_ip),
        };
        let Some((decision, _)) = decide(worker, limit, key, 1, now, unix) else {
            continue;
        };
        match decision {
            Decision::Allow {
                limit: size,
                remaining,
                would_deny,
                ..
            } => {
                warn_if_shadowed(limit, would_deny);
                keep_tightest(&mut gate.requests, size, remaining);
                gate.decided
                    .push((index, remaining.min(size), would_deny.is_some()));
            }
            Decision::Deny(denial) => return Err(refusal(limit, &denial).refused_by(index)),
        }
    }
    Ok(gate)
}

/// Admits the request by every limit that applies, or refuses it by the first that does
/// not (429 for a rate, 403 for a quota), giving back what earlier limits granted.
///
/// Requests-unit client-IP limits were decided at the head by [`gate_client_ip`]; `gate` is
/// what it decided, counted into the answer's `x-ratelimit-*` state and the trace, and never
/// given back here (a request refused at admission still counts against its address).
pub fn admit(
    worker: &WorkerLimits,
    clock: &dyn Clock,
    ask: &Ask<'_>,
    gate: IpGate,
) -> Result<Admission, GatewayError> {
    let mut admission = Admission {
        requests: gate.requests,
        ..Admission::default()
    };
    let product_limits = ask.caller.map_or(&[][..], |(_, p)| p.limits.as_slice());
    let is_tokens = |&&i: &&usize| {
        ask.access
            .limits
            .get(i)
            .is_some_and(|l| l.unit == LimitUnit::Tokens)
    };
    let mut server_limits = ask
        .access
        .client_ip_limits
        .iter()
        .filter(is_tokens)
        .filter(|_| ask.tokens.is_some())
        .peekable();
    if product_limits.is_empty()
        && ask.deployment_limits.is_empty()
        && server_limits.peek().is_none()
    {
        // Nothing more limits this request: no clock read, nothing held.
        gate_trace(&mut admission, ask, &gate);
        return Ok(admission);
    }
    let (now, unix) = (clock.now_nanos(), clock.unix_secs());
    for &index in product_limits
        .iter()
        .chain(ask.deployment_limits)
        .chain(server_limits)
    {
        let (Some(limit), Some(&id)) = (ask.access.limits.get(index), ask.ids.get(index)) else {
            continue;
        };
        let Some(scope) = scope_value(limit, ask) else {
            continue;
        };
        let key = LimitKey { limit: id, scope };
        let cost = match (limit.unit, ask.tokens) {
            (LimitUnit::Requests, _) => 1,
            (LimitUnit::Tokens, Some(tokens)) => tokens,
            (LimitUnit::Tokens, None) => continue,
        };
        let Some((decision, held)) = decide(worker, limit, key, cost, now, unix) else {
            continue;
        };
        match decision {
            Decision::Allow {
                limit: size,
                remaining,
                would_deny,
                ..
            } => {
                if would_deny.is_some() {
                    admission.shadow_denied.push(index);
                }
                warn_if_shadowed(limit, would_deny);
                if ask.trace {
                    admission.trace.push(LimitDecision {
                        limit: index,
                        // A lease may hold tokens while the bucket refills to full: no
                        // client is told it has more than the limit.
                        remaining: remaining.min(size),
                        shadow_deny: would_deny.is_some(),
                    });
                }
                let slot = match limit.unit {
                    LimitUnit::Requests => &mut admission.requests,
                    LimitUnit::Tokens => &mut admission.tokens,
                };
                keep_tightest(slot, size, remaining);
                admission.held.push(held);
            }
            Decision::Deny(denial) => {
                settle(worker, clock, &mut admission, Outcome::Refused);
                return Err(refusal(limit, &denial).refused_by(index));
            }
        }
    }
    gate_trace(&mut admission, ask, &gate);
    Ok(admission)
}

/// Logs what a shadow limit would have refused (it refused nothing).
fn warn_if_shadowed<R: std::fmt::Debug>(limit: &Limit, would_deny: Option<R>) {
    if let Some(reason) = would_deny {
        tracing::warn!(limit = %limit.label, ?reason, "shadow limit would have refused this request");
    }
}

/// Keeps in `slot` the (limit, remaining) of the tightest limit of a unit seen so far.
fn keep_tightest(slot: &mut Option<(u64, u64)>, size: u64, remaining: u64) {
    if slot.is_none_or(|(_, r)| remaining < r) {
        *slot = Some((size, remaining));
    }
}

/// Takes `cost` from one limit's bucket or counter at `now`: the decision (its shadow mode
/// applied) and what the request then holds; `None` when the limiter table is unavailable
/// (fail open, logged).
fn decide(
    worker: &WorkerLimits,
    limit: &Limit,
    key: LimitKey,
    cost: u64,
    now: u64,
    unix: u64,
) -> Option<(Decision, Held)> {
    let tokens = limit.unit == LimitUnit::Tokens;
    let (decided, held) = match limit.window {
        LimitWindow::Rate(spec) => {
            let decided = worker.rates.with(
                &key,
                now,
                unix,
                || GcraBucket::new(spec),
                |bucket| LocalLease::new(bucket, LeaseConfig::for_spec(&spec, worker.workers)),
                |bucket, lease| lease.try_acquire(bucket, now, cost),
            );
            (
                decided,
                Held {
                    key,
                    tokens,
                    quota: None,
                    rate: Some(spec),
                    reserved: cost,
                    reserved_at_unix: unix,
                },
            )
        }
        LimitWindow::Quota(spec) => {
            let decided = worker.quotas.with(
                &key,
                now,
                unix,
                || QuotaCounter::new(spec),
                |_| (),
                |counter, ()| counter.try_acquire(unix, cost),
            );
            (
                decided,
                Held {
                    key,
                    tokens,
                    quota: Some(spec),
                    rate: None,
                    reserved: cost,
                    reserved_at_unix: unix,
                },
            )
        }
    };
    let decision = decided_or_open(decided, limit)?.shadowed(limit.shadow);
    Some((decision, held))
}

/// The answer to a request `limit` refused.
fn refusal(limit: &Limit, denial: &crate::limit::Denial) -> GatewayError {
    match denial.reason {
        DenyReason::Rate => GatewayError::rate_limited(
            limit.unit == LimitUnit::Tokens,
            denial.retry_after,
            &limit.label,
        ),
        DenyReason::Quota => GatewayError::quota_exceeded(denial.retry_after, &limit.label),
        DenyReason::TooLarge => match limit.window {
            LimitWindow::Quota(_) => GatewayError::too_large_for_quota(&limit.label),
            LimitWindow::Rate(_) => GatewayError::too_large_for_limit(&limit.label),
        },
    }
}

/// Appends the gate's decisions to the trace (after the others: server limits come last).
fn gate_trace(admission: &mut Admission, ask: &Ask<'_>, gate: &IpGate) {
    for &(limit, _, shadow_deny) in &gate.decided {
        if shadow_deny {
            admission.shadow_denied.push(limit);
        }
    }
    if !ask.trace {
        return;
    }
    for &(limit, remaining, shadow_deny) in &gate.decided {
        admission.trace.push(LimitDecision {
            limit,
            remaining,
            shadow_deny,
        });
    }
}

/// Settles what `admission` holds once the request's fate is known.
pub fn settle(
    worker: &WorkerLimits,
    clock: &dyn Clock,
    admission: &mut Admission,
    outcome: Outcome,
) {
    let (now, unix) = (clock.now_nanos(), clock.unix_secs());
    for held in admission.held.drain(..) {
        let actual = match outcome {
            Outcome::Refused => 0,
            Outcome::Used(Some(n)) if held.tokens => n,
            Outcome::Used(_) => continue,
        };
        if actual == held.reserved {
            continue;
        }
        if let Some(spec) = held.rate {
            let _ = worker.rates.with(
                &held.key,
                now,
                unix,
                || GcraBucket::new(spec),
                |bucket| LocalLease::new(bucket, LeaseConfig::for_spec(&spec, worker.workers)),
                |bucket, lease| lease.settle(bucket, now, held.reserved, actual),
            );
        } else if let Some(spec) = held.quota {
            let _ = worker.quotas.with(
                &held.key,
                now,
                unix,
                || QuotaCounter::new(spec),
                |_| (),
                |counter, ()| counter.settle(held.reserved_at_unix, unix, held.reserved, actual),
            );
        }
    }
}

/// The scope value a limit counts this request under; `None` when the limit does not apply
/// (a subscription scope without a caller, a claim the caller's token does not carry).
fn scope_value(limit: &Limit, ask: &Ask<'_>) -> Option<ScopeValue> {
    let subscription = ask.caller.map(|(c, _)| c.subscription as u64);
    Some(match &limit.scope {
        LimitScope::Subscription => ScopeValue::Id(subscription?),
        LimitScope::SubscriptionDeployment => {
            let mut h = std::hash::DefaultHasher::new();
            ask.deployment.hash(&mut h);
            ScopeValue::Id((subscription? << 32) | (h.finish() & 0xffff_ffff))
        }
        LimitScope::Deployment => ScopeValue::Whole,
        LimitScope::Claim(name) => {
            let (caller, _) = ask.caller?;
            ScopeValue::Text(Arc::from(caller.claim(name)?))
        }
        LimitScope::ClientIp => ScopeValue::Ip(ask.client_ip),
        LimitScope::ClientCert => ScopeValue::Text(ask.client_cert?.clone()),
    })
}

/// A table that is full of live keys (or busy) fails open with a log line: refusing every
/// new caller would turn a limiter problem into an outage.
fn decided_or_open<E: std::fmt::Debug>(
    decided: Result<Decision, E>,
    limit: &Limit,
) -> Option<Decision> {
    match decided {
        Ok(d) => Some(d),
        Err(e) => {
            tracing::warn!(limit = %limit.label, error = ?e, "limiter table unavailable; request admitted without this limit");
            None
        }
    }
}
