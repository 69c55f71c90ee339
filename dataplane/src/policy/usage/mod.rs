//! Usage accounting as a policy: reads the answer's token usage for the token limits that
//! hold a reservation — asking a backend that accepts it for the usage chunk of a stream
//! (`stream_options.include_usage`) and hiding that chunk from a client that did not ask,
//! counting the completion of a stream that will carry none — and leaves the charge in the
//! context for admission to settle ([`super::admit::Admit::on_complete`] runs after this
//! policy's, response phases running in reverse).
//!
//! The pieces: [`tap`] reads usage from a body as it passes, [`stream_plan`] decides per
//! attempt whether to inject `include_usage` or count.

mod stream_plan;
mod tap;

pub use stream_plan::{plan_attempt, StreamPlan};
pub use tap::{Charge, Counted, Unknown, UsageTap};

use super::context::{AttemptOutcome, End, RequestCtx};
use super::phase::{BodyCoding, Chunk, Env, Flow, Policy, Request, Response, UpstreamRequest};

/// Reads each answer's usage when a token limit holds a reservation (DESIGN.md step 10).
#[derive(Debug, Default, Clone, Copy)]
pub struct UsageAccounting;

impl Policy for UsageAccounting {
    fn on_request_body<'s>(
        &self,
        env: &Env<'s>,
        ctx: &mut RequestCtx<'s>,
        _req: &Request<'_>,
    ) -> Flow {
        // Usage is read (and asked for) when a token limit holds a reservation, and for the
        // audit record and the token metrics.
        let counts = ctx.admission.as_ref().is_some_and(|a| a.counts_tokens())
            || (env.snapshot.accounts_tokens() && ctx.admission.is_some());
        if !counts {
            ctx.stream_plan = None;
        }
        ctx.usage = UsageTap::new(counts);
        Flow::Continue
    }

    fn on_upstream_request<'s>(
        &self,
        _env: &Env<'s>,
        ctx: &mut RequestCtx<'s>,
        req: &UpstreamRequest<'_>,
    ) -> Flow {
        ctx.upstream.injected_body = plan_attempt(ctx, req.body, req.accepts_stream_options);
        ctx.upstream.identity_encoding = ctx.usage.awaits_answer();
        Flow::Continue
    }

    fn on_response_head<'s>(
        &self,
        _env: &Env<'s>,
        ctx: &mut RequestCtx<'s>,
        resp: &Response<'_>,
    ) -> Flow {
        ctx.usage.start(resp.status, resp.event_stream);
        if resp.coding == BodyCoding::Opaque && ctx.usage.reads() {
            tracing::warn!(
                request_id = %ctx.id,
                "backend answered in a content coding Sluice does not decode although asked for identity; relayed as it came, its usage unread"
            );
            ctx.usage.undecodable();
        }
        ctx.body.read |= ctx.usage.reads();
        ctx.body.rewrite |= ctx.usage.filters();
        Flow::Continue
    }

    fn on_body_chunk<'s>(
        &self,
        _env: &Env<'s>,
        ctx: &mut RequestCtx<'s>,
        data: &[u8],
        end_of_stream: bool,
        out: &mut Vec<u8>,
    ) -> Chunk {
        if !ctx.usage.reads() {
            return Chunk::Pass;
        }
        let filtering = ctx.usage.filters();
        let start = out.len();
        ctx.usage.feed(data, out);
        if end_of_stream {
            // A filtering tap may release the bytes it held back.
            ctx.usage.finish(out);
        }
        if filtering {
            return Chunk::Replaced;
        }
        if out.len() == start {
            return Chunk::Pass;
        }
        // An observing tap let something out at the end: the piece goes first.
        let tail = out.split_off(start);
        out.extend_from_slice(data);
        out.extend_from_slice(&tail);
        Chunk::Replaced
    }

    fn on_complete<'s>(&self, _env: &Env<'s>, ctx: &mut RequestCtx<'s>) {
        if ctx.end == End::ClientGone {
            ctx.usage.client_gone();
        } else if matches!(
            ctx.last_outcome(),
            Some(AttemptOutcome::TimedOut | AttemptOutcome::NoAnswer)
        ) {
            ctx.usage.no_answer();
        }
    }
}

/// A request's tokens as settled (for the audit record and the token metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Settled {
    /// Prompt tokens (the backend's, or Sluice's estimate).
    pub prompt: Option<u64>,
    /// Completion tokens (the backend's, or counted by Sluice).
    pub completion: Option<u64>,
    /// Total tokens: what the request was charged.
    pub total: u64,
    /// Not the backend's own report: Sluice's estimate or count.
    pub estimated: bool,
}

/// The request's tokens as settled: the backend's usage when the answer carried it, else
/// Sluice's estimate or count (marked estimated); `None` when the request never reached
/// a deployment's accounting.
pub fn settled(ctx: &RequestCtx<'_>) -> Option<Settled> {
    let estimate = ctx.tokens;
    match ctx.usage.charge() {
        Charge::Usage(u) => Some(Settled {
            prompt: Some(u.prompt_tokens),
            completion: Some(u.completion_tokens),
            total: u.total_tokens,
            estimated: false,
        }),
        // Nothing reached a backend: 0, for a request whose tokens were estimated or one the
        // cache would have answered (it costs none; its estimate is skipped).
        Charge::Nothing => (ctx.deployment.is_some() && (estimate.is_some() || ctx.cache.found()))
            .then_some(Settled {
                prompt: Some(0),
                completion: Some(0),
                total: 0,
                estimated: false,
            }),
        // The reservation stands: the prompt's estimate and the completion reserved for it
        // (`max_tokens`, else the deployment's default), so the parts add up to the total.
        Charge::Estimate(_) => estimate.map(|t| Settled {
            prompt: Some(u64::from(t.prompt)),
            completion: Some(t.reservation.saturating_sub(u64::from(t.prompt))),
            total: t.reservation,
            estimated: true,
        }),
        Charge::Counted(counted) => {
            let t = estimate.unwrap_or_default();
            Some(Settled {
                prompt: Some(u64::from(t.prompt)),
                completion: Some(counted.completion),
                total: counted.tokens(u64::from(t.prompt), t.reservation),
                estimated: true,
            })
        }
    }
}
