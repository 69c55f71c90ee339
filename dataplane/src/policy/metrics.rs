//! The request metrics as a policy: counts every completed request into its worker's
//! [`WorkerMetrics`] (requests, tokens, limit refusals and shadow would-refusals, attempts,
//! failovers, upstream latency), and times a stream's body as it passes (time to first
//! token, gaps between pieces). Second in the pipeline: its `on_complete` runs after the
//! usage is settled. No shared atomic is touched: the worker publishes what it counted on
//! its upkeep tick ([`crate::metrics`]). Nothing is counted without an admin listener
//! ([`crate::snapshot::Snapshot::serves_metrics`]).

use std::time::{Instant, SystemTime};

use super::context::{AttemptOutcome, RequestCtx};
use super::phase::{Chunk, Env, Flow, Policy, Response};
use crate::metrics::{status_class, Names, Sym, GAP_BUCKETS, LATENCY_BUCKETS};
use crate::route::Operation;
use crate::telemetry::{minute_of, UsageKey};

/// When a streamed answer's body pieces passed (`ctx.stream_marks`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamMarks {
    /// The answer is a stream whose pieces are timed.
    pub timed: bool,
    /// The first piece with bytes.
    pub first: Option<Instant>,
    /// The latest piece with bytes.
    pub last: Option<Instant>,
    /// The deployment's name, interned on the worker (for the gap histogram).
    deployment: Option<Sym>,
}

/// Counts every request into the worker's metrics.
#[derive(Debug, Default, Clone, Copy)]
pub struct RequestMetrics;

impl Policy for RequestMetrics {
    fn on_response_head<'s>(
        &self,
        env: &Env<'s>,
        ctx: &mut RequestCtx<'s>,
        resp: &Response<'_>,
    ) -> Flow {
        ctx.stream_marks = StreamMarks::default();
        // The audit record's time to first token is read from these marks too.
        let metrics = env.snapshot.serves_metrics();
        if resp.event_stream && (metrics || env.audit.is_some()) {
            let mut deployment = None;
            if let (Some(d), true) = (ctx.deployment, metrics) {
                env.metrics
                    .count(|names| deployment = Some(names.of(&d.name)));
            }
            ctx.stream_marks = StreamMarks {
                timed: true,
                deployment,
                ..StreamMarks::default()
            };
            ctx.body.read = true;
        }
        Flow::Continue
    }

    fn on_body_chunk<'s>(
        &self,
        env: &Env<'s>,
        ctx: &mut RequestCtx<'s>,
        data: &[u8],
        _end_of_stream: bool,
        _out: &mut Vec<u8>,
    ) -> Chunk {
        let marks = &mut ctx.stream_marks;
        if !marks.timed || data.is_empty() {
            return Chunk::Pass;
        }
        let now = Instant::now();
        marks.first.get_or_insert(now);
        if let (Some(last), Some(deployment)) = (marks.last, marks.deployment) {
            env.metrics.count(|names| {
                let gap = now.saturating_duration_since(last);
                let histogram = names.counts().gaps.entry(deployment).or_default();
                Names::observe(histogram, &GAP_BUCKETS, gap);
            });
        }
        marks.last = Some(now);
        Chunk::Pass
    }

    fn on_complete<'s>(&self, env: &Env<'s>, ctx: &mut RequestCtx<'s>) {
        if env.metrics.counts_usage() {
            count_usage(env, ctx);
        }
        let snapshot = env.snapshot;
        if !snapshot.serves_metrics() {
            return;
        }
        let backend_name = |id: usize| snapshot.backends.get(id).map_or("", |b| b.name.as_str());
        env.metrics.count(|names| {
            let deployment = names.of(ctx.deployment.map_or("", |d| d.name.as_str()));
            let served = ctx.served_by().map_or("", backend_name);
            let backend = names.of(served);
            let operation = ctx.operation.map_or("", Operation::name);
            let class = status_class(ctx.status);
            *names
                .counts()
                .requests
                .entry((deployment, backend, operation, class))
                .or_default() += 1;
            if let Some(tokens) = super::usage::settled(ctx) {
                let prompt = tokens.prompt.unwrap_or(0);
                let completion = tokens
                    .completion
                    .unwrap_or(tokens.total.saturating_sub(prompt));
                for (kind, n) in [("prompt", prompt), ("completion", completion)] {
                    if n > 0 {
                        *names.counts().tokens.entry((deployment, kind)).or_default() += n;
                    }
                }
            }
            let limits = &snapshot.access.limits;
            if let (Some(kind), Some(limit)) = (ctx.error, ctx.refused_by) {
                if let Some(limit) = limits.get(limit) {
                    let label = names.of(&limit.label);
                    *names
                        .counts()
                        .rejections
                        .entry((label, kind.name()))
                        .or_default() += 1;
                }
            }
            if let Some(admission) = &ctx.admission {
                for &limit in &admission.shadow_denied {
                    if let Some(limit) = limits.get(limit) {
                        let label = names.of(&limit.label);
                        *names.counts().shadow_rejections.entry(label).or_default() += 1;
                    }
                }
            }
            for attempt in &ctx.attempts {
                let tried = names.of(backend_name(attempt.backend));
                *names
                    .counts()
                    .attempts
                    .entry((deployment, tried, attempt.outcome.name()))
                    .or_default() += 1;
                if attempt.outcome == AttemptOutcome::Answered {
                    let histogram = names
                        .counts()
                        .upstream_latency
                        .entry((deployment, tried))
                        .or_default();
                    Names::observe(histogram, &LATENCY_BUCKETS, attempt.duration);
                }
            }
            if let Some(result) = ctx.cache.result() {
                *names
                    .counts()
                    .cache_lookups
                    .entry((deployment, result))
                    .or_default() += 1;
            }
            if ctx.attempts.len() > 1 {
                *names.counts().failovers.entry(deployment).or_default() += 1;
            }
            if ctx.retry_over_budget {
                *names
                    .counts()
                    .retries_over_budget
                    .entry(deployment)
                    .or_default() += 1;
            }
            if let Some(first) = ctx.stream_marks.first {
                let ttft = first.saturating_duration_since(ctx.timings.received);
                let histogram = names.counts().ttft.entry(deployment).or_default();
                Names::observe(histogram, &LATENCY_BUCKETS, ttft);
            }
        });
    }
}

/// Counts the request into its worker's usage telemetry (a managed node's): its minute,
/// subscription, deployment, answering backend, the model its answer named and its status
/// class; its tokens as settled, the error kind Sluice answered with, whether the response
/// cache answered it, and its latency.
fn count_usage(env: &Env<'_>, ctx: &RequestCtx<'_>) {
    let snapshot = env.snapshot;
    let subscription = ctx
        .caller
        .as_ref()
        .and_then(|c| snapshot.access.subscriptions.get(c.subscription))
        .map_or("", |s| s.name.as_str());
    let backend = ctx
        .served_by()
        .and_then(|id| snapshot.backends.get(id))
        .map_or("", |b| b.name.as_str());
    let model = ctx.usage.model();
    let latency = ctx
        .timings
        .complete
        .unwrap_or_else(Instant::now)
        .saturating_duration_since(ctx.timings.received);
    let tokens = super::usage::settled(ctx);
    env.metrics.count(|names| {
        let key = UsageKey {
            minute: minute_of(SystemTime::now()),
            subscription: names.of(subscription),
            deployment: names.of(ctx.deployment.map_or("", |d| d.name.as_str())),
            backend: names.of(backend),
            model: names.of_chosen(model.as_deref().unwrap_or("")),
            status_class: status_class(ctx.status),
        };
        let figures = names.usage().entry(key).or_default();
        figures.requests += 1;
        if let Some(tokens) = tokens {
            let prompt = tokens.prompt.unwrap_or(0);
            let completion = tokens
                .completion
                .unwrap_or(tokens.total.saturating_sub(prompt));
            figures.prompt_tokens += prompt;
            figures.completion_tokens += completion;
            figures.total_tokens += tokens.total;
        }
        if let Some(kind) = ctx.error {
            *figures.rejections.entry(kind.name()).or_default() += 1;
        }
        if ctx.cache.result() == Some("hit") {
            figures.cache_hits += 1;
        }
        figures.record_latency(latency);
    });
}
