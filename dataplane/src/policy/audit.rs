//! The audit record as a policy (DESIGN.md "Observability"): it notes what the request
//! carries (the `api-version`, the body when content is kept), captures the answer's content
//! as it passes ([`AnswerCapture`]: read only, never held back), and at `on_complete` —
//! first in the pipeline, so its `on_complete` runs last and sees the usage settled — adds
//! one [`Record`] to the worker's [`crate::audit::WorkerBatch`] for the
//! [`crate::audit::Recorder`]. Rendering (content extraction,
//! redaction, the policy) happens on the writer thread, off the request path.

use std::time::{Instant, SystemTime};

use super::context::{AttemptOutcome, RequestCtx};
use super::phase::{Chunk, Env, Flow, Policy, Request, Response};
use crate::audit::content::AnswerCapture;
use crate::audit::record::{AttemptEntry, Record};
use crate::audit::{ContentMode, Recorder};
use crate::route::Operation;
use crate::snapshot::access::Product;

/// The most characters of one text field a `full` or `hash` record captures on the worker
/// (1 Mi): past it the field is cut.
pub const MAX_FIELD_CHARS: usize = 1 << 20;

/// What the audit policy gathers while a request runs (`ctx.audit`, present when
/// `[audit]` has a sink).
#[derive(Default)]
pub struct AuditCapture {
    /// The request's `api-version` query parameter.
    pub api_version: Option<String>,
    /// The content policy, once the product is known.
    pub content: ContentMode,
    /// The request body, when content is kept.
    pub request_body: Option<Vec<u8>>,
    /// The answer's content, when kept.
    pub answer: Option<AnswerCapture>,
}

/// Records every request in the audit log.
#[derive(Debug, Default, Clone, Copy)]
pub struct AuditRecord;

impl Policy for AuditRecord {
    fn on_request<'s>(&self, env: &Env<'s>, ctx: &mut RequestCtx<'s>, req: &Request<'_>) -> Flow {
        let Some(recorder) = env.audit else {
            return Flow::Continue;
        };
        ctx.audit = Some(Box::new(AuditCapture {
            api_version: req
                .buf
                .get(req.head.target.clone())
                .and_then(crate::route::api_version)
                .map(str::to_owned),
            content: recorder.settings().content,
            ..AuditCapture::default()
        }));
        Flow::Continue
    }

    fn on_request_body<'s>(
        &self,
        env: &Env<'s>,
        ctx: &mut RequestCtx<'s>,
        req: &Request<'_>,
    ) -> Flow {
        let Some(recorder) = env.audit else {
            return Flow::Continue;
        };
        let content = content_mode(env, ctx, recorder);
        let has_content = ctx.operation.is_some_and(|op| op != Operation::Models);
        let Some(capture) = ctx.audit.as_deref_mut() else {
            return Flow::Continue;
        };
        capture.content = content;
        if capture.content != ContentMode::Omit && has_content {
            capture.request_body = Some(req.body.to_vec());
        }
        Flow::Continue
    }

    fn on_response_head<'s>(
        &self,
        _env: &Env<'s>,
        ctx: &mut RequestCtx<'s>,
        resp: &Response<'_>,
    ) -> Flow {
        let Some(capture) = ctx.audit.as_deref_mut() else {
            return Flow::Continue;
        };
        capture.answer = None;
        let success = (200..300).contains(&resp.status);
        if let (Some(op), true) = (ctx.operation, success) {
            let max_field = match capture.content {
                ContentMode::Omit => 0,
                ContentMode::Truncate(n) => n,
                ContentMode::Full | ContentMode::Hash => MAX_FIELD_CHARS,
            };
            if max_field > 0 {
                capture.answer = AnswerCapture::new(op, resp.event_stream, max_field);
            }
        }
        ctx.body.read |= capture.answer.is_some();
        Flow::Continue
    }

    fn on_body_chunk<'s>(
        &self,
        _env: &Env<'s>,
        ctx: &mut RequestCtx<'s>,
        data: &[u8],
        _end_of_stream: bool,
        _out: &mut Vec<u8>,
    ) -> Chunk {
        if let Some(answer) = ctx.audit.as_deref_mut().and_then(|c| c.answer.as_mut()) {
            answer.feed(data);
        }
        Chunk::Pass
    }

    fn on_complete<'s>(&self, env: &Env<'s>, ctx: &mut RequestCtx<'s>) {
        let (Some(recorder), Some(capture)) = (env.audit, ctx.audit.take()) else {
            return;
        };
        let mut capture = *capture;
        // A caller refused before the body phase (404, 405, 403) is recorded under its
        // product's policy too.
        capture.content = content_mode(env, ctx, recorder);
        env.audit_batch.push(recorder, record(env, ctx, capture));
    }
}

/// The caller's product: the one authorized, else (refused before, or this policy's body
/// phase, which runs before authorization) the one its subscription belongs to.
fn caller_product<'s>(env: &Env<'s>, ctx: &RequestCtx<'s>) -> Option<&'s Product> {
    let access = &env.snapshot.access;
    ctx.product.or_else(|| {
        ctx.caller
            .as_ref()
            .and_then(|c| access.subscriptions.get(c.subscription))
            .and_then(|s| access.products.get(s.product))
    })
}

/// The content policy for the request: its caller's product's, else `[audit] content`.
fn content_mode(env: &Env<'_>, ctx: &RequestCtx<'_>, recorder: &Recorder) -> ContentMode {
    caller_product(env, ctx)
        .and_then(|p| p.audit_content)
        .unwrap_or(recorder.settings().content)
}

/// The record of a completed request.
fn record(env: &Env<'_>, ctx: &RequestCtx<'_>, capture: AuditCapture) -> Record {
    let received = ctx.timings.received;
    let complete = ctx.timings.complete.unwrap_or_else(Instant::now);
    let latency = complete.saturating_duration_since(received);
    let snapshot = env.snapshot;
    let subscription = ctx
        .caller
        .as_ref()
        .and_then(|c| snapshot.access.subscriptions.get(c.subscription));
    let attempts = ctx
        .attempts
        .iter()
        .map(|a| AttemptEntry {
            backend: snapshot
                .backends
                .get(a.backend)
                .map_or_else(String::new, |b| b.name.clone()),
            status: a.status,
            outcome: a.outcome.name(),
            duration_ms: crate::audit::record::millis(a.duration),
        })
        .collect();
    let upstream_latency = ctx
        .attempts
        .last()
        .filter(|a| a.outcome == AttemptOutcome::Answered)
        .map(|a| a.duration);
    // Timed by the metrics policy, whose body phase runs before this one's.
    let ttft = ctx
        .stream_marks
        .first
        .map(|t| t.saturating_duration_since(received));
    let answer = capture.answer.map(AnswerCapture::finish);
    Record {
        time: SystemTime::now()
            .checked_sub(latency)
            .unwrap_or(SystemTime::UNIX_EPOCH),
        request_id: ctx.id,
        worker: env.worker,
        subscription: subscription.map(|s| s.name.clone()),
        product: caller_product(env, ctx).map(|p| p.name.clone()),
        operation: ctx.operation,
        deployment: ctx.deployment.map(|d| d.name.clone()),
        api_version: capture.api_version,
        attempts,
        status: ctx.status,
        error: ctx.error.map(|e| e.name()),
        end: ctx.end.name(),
        latency,
        upstream_latency,
        ttft,
        tokens: super::usage::settled(ctx),
        cache: ctx.cache.result(),
        model: ctx.usage.model(),
        client_ip: ctx.client_ip,
        client_cert: ctx.client_cert.clone(),
        jwt_subject: ctx.caller.as_ref().and_then(|c| c.subject.clone()),
        app_id: ctx.caller.as_ref().and_then(|c| c.app_id.clone()),
        content: capture.content,
        request_body: capture.request_body,
        answer,
    }
}
