//! The phases of a request and the interface a policy implements (DESIGN.md "Request path";
//! in the manner of pingora's `ProxyHttp` and Envoy's HTTP filters).
//!
//! Phases, in the order a request meets them:
//!
//! | phase | when | may answer |
//! |---|---|---|
//! | [`Policy::on_request`] | the head is parsed and routed, before the body is read | yes |
//! | [`Policy::on_request_body`] | the body is read and the deployment known | yes |
//! | [`Policy::on_upstream_request`] | before each upstream attempt (backend chosen) | yes |
//! | [`Policy::on_response_head`] | the answer's head arrived (upstream or mock) | yes |
//! | [`Policy::on_body_chunk`] | each piece of a body a policy reads, then its end | no |
//! | [`Policy::on_complete`] | exactly once for every request whose head was parsed | no |
//!
//! A hook answers [`Flow::Continue`] or [`Flow::Respond`] with the error to answer instead —
//! the later phases of the request are then skipped, but `on_complete` still runs. Request
//! phases run in pipeline order; response phases (`on_response_head`, `on_body_chunk`,
//! `on_complete`) in reverse, as the answer travels back through the pipeline (so
//! `on_complete` of the policy that reads usage runs before that of the policy that settles
//! it).
//!
//! Dispatch is static: a pipeline is a tuple of policies (`(A, (B, C))`), one instance per
//! worker thread, so nothing is `Send`, boxed or looked up per request. Time comes in the
//! [`Env`]'s clock, so decisions are unit-tested with a fake one.

use std::time::Instant;

use super::admission::WorkerLimits;
use super::context::RequestCtx;
use super::AccessRuntime;
use crate::error::GatewayError;
use crate::http::RequestHead;
use crate::limit::Clock;
use crate::snapshot::{BackendId, Snapshot};

/// What a hook decided.
#[derive(Debug)]
pub enum Flow {
    /// Go on with the request.
    Continue,
    /// Answer this error instead (the request goes no further).
    Respond(GatewayError),
}

impl Flow {
    /// The error to answer, if the hook decided to answer.
    pub fn into_error(self) -> Option<GatewayError> {
        match self {
            Flow::Continue => None,
            Flow::Respond(err) => Some(err),
        }
    }
}

/// What a body hook did with a piece of the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunk {
    /// The piece goes on as it came.
    Pass,
    /// The piece is replaced by what the hook appended to `out` (possibly nothing).
    Replaced,
}

/// What every phase may read besides the context: the snapshot the request runs on, the
/// worker's state, and the time.
pub struct Env<'a> {
    /// The compiled config.
    pub snapshot: &'a Snapshot,
    /// Its access-control runtime (key table, JWT validators, limit ids).
    pub runtime: &'a AccessRuntime,
    /// The worker's limiter caches.
    pub limits: &'a WorkerLimits,
    /// The time (monotonic and wall clock).
    pub clock: &'a dyn Clock,
    /// The audit log, when `[audit]` has a sink.
    pub audit: Option<&'a std::sync::Arc<crate::audit::Recorder>>,
    /// The worker's records on their way to the audit log.
    pub audit_batch: &'a crate::audit::WorkerBatch,
    /// The worker's index.
    pub worker: usize,
    /// The worker's metrics.
    pub metrics: &'a crate::metrics::WorkerMetrics,
}

/// The client's request as the phases see it.
#[derive(Clone, Copy)]
pub struct Request<'a> {
    /// The parsed head (ranges into `buf`).
    pub head: &'a RequestHead,
    /// The bytes the head was parsed from.
    pub buf: &'a [u8],
    /// The decoded body (empty before `on_request_body`).
    pub body: &'a [u8],
}

impl Request<'_> {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.head.header(self.buf, name)
    }
}

/// The upstream attempt about to be made.
#[derive(Debug, Clone, Copy)]
pub struct UpstreamRequest<'a> {
    /// The backend chosen for it.
    pub backend: BackendId,
    /// Whether that backend accepts `stream_options` (an OpenAI-style chat or completions
    /// backend that does not refuse it).
    pub accepts_stream_options: bool,
    /// When the attempt starts.
    pub started: Instant,
    /// The client's (decoded) body.
    pub body: &'a [u8],
}

/// How an answer's body is coded, as the body phase will see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyCoding {
    /// Not content-coded, or decoded on the way: hooks see the real bytes.
    Identity,
    /// Coded with something Sluice does not decode (`zstd`, `compress`, unknown): hooks
    /// would see coded bytes.
    Opaque,
}

/// An answer's head as the phases see it (`'h`: the head's buffer).
#[derive(Debug, Clone, Copy)]
pub struct Response<'h> {
    /// The status.
    pub status: u16,
    /// `content-type: text/event-stream`.
    pub event_stream: bool,
    /// The `content-type` value as the answer gives it (`None`: it gives none).
    pub content_type: Option<&'h [u8]>,
    /// How the body reaches the body phase.
    pub coding: BodyCoding,
    /// The backend that answered (`None`: Sluice answered itself).
    pub backend: Option<BackendId>,
    /// What the answer's header fields let a shared cache do with it (RFC 9111; read only
    /// when the response cache may store the answer, else `Unstated`).
    pub freshness: crate::cache::control::Freshness,
}

/// A request policy: implements the phases it needs; the defaults do nothing.
pub trait Policy {
    /// The head is parsed and routed (`ctx.operation` is set when the path is one Sluice
    /// serves), the body not yet read.
    fn on_request<'s>(
        &self,
        _env: &Env<'s>,
        _ctx: &mut RequestCtx<'s>,
        _req: &Request<'_>,
    ) -> Flow {
        Flow::Continue
    }

    /// The body is read and `ctx.deployment` set (except for `GET /v1/models`).
    fn on_request_body<'s>(
        &self,
        _env: &Env<'s>,
        _ctx: &mut RequestCtx<'s>,
        _req: &Request<'_>,
    ) -> Flow {
        Flow::Continue
    }

    /// Before each upstream attempt; set `ctx.upstream` to change what it sends.
    fn on_upstream_request<'s>(
        &self,
        _env: &Env<'s>,
        _ctx: &mut RequestCtx<'s>,
        _req: &UpstreamRequest<'_>,
    ) -> Flow {
        Flow::Continue
    }

    /// The answer's head arrived; set `ctx.body` to read (or rewrite) its body.
    fn on_response_head<'s>(
        &self,
        _env: &Env<'s>,
        _ctx: &mut RequestCtx<'s>,
        _resp: &Response<'_>,
    ) -> Flow {
        Flow::Continue
    }

    /// A piece of the body (`end_of_stream`: the last call, whose `data` may be empty),
    /// when `ctx.body.read`. Return [`Chunk::Replaced`] after appending what goes to the
    /// client instead to `out` (only with `ctx.body.rewrite`).
    fn on_body_chunk<'s>(
        &self,
        _env: &Env<'s>,
        _ctx: &mut RequestCtx<'s>,
        _data: &[u8],
        _end_of_stream: bool,
        _out: &mut Vec<u8>,
    ) -> Chunk {
        Chunk::Pass
    }

    /// The request is over, whatever its outcome: exactly once for every request whose head
    /// was parsed.
    fn on_complete<'s>(&self, _env: &Env<'s>, _ctx: &mut RequestCtx<'s>) {}
}

/// Two policies in sequence: `A`'s request phases before `B`'s, `B`'s response phases before
/// `A`'s. A pipeline of more nests: `(A, (B, (C, D)))`.
impl<A: Policy, B: Policy> Policy for (A, B) {
    fn on_request<'s>(&self, env: &Env<'s>, ctx: &mut RequestCtx<'s>, req: &Request<'_>) -> Flow {
        match self.0.on_request(env, ctx, req) {
            Flow::Continue => self.1.on_request(env, ctx, req),
            respond => respond,
        }
    }

    fn on_request_body<'s>(
        &self,
        env: &Env<'s>,
        ctx: &mut RequestCtx<'s>,
        req: &Request<'_>,
    ) -> Flow {
        match self.0.on_request_body(env, ctx, req) {
            Flow::Continue => self.1.on_request_body(env, ctx, req),
            respond => respond,
        }
    }

    fn on_upstream_request<'s>(
        &self,
        env: &Env<'s>,
        ctx: &mut RequestCtx<'s>,
        req: &UpstreamRequest<'_>,
    ) -> Flow {
        match self.0.on_upstream_request(env, ctx, req) {
            Flow::Continue => self.1.on_upstream_request(env, ctx, req),
            respond => respond,
        }
    }

    fn on_response_head<'s>(
        &self,
        env: &Env<'s>,
        ctx: &mut RequestCtx<'s>,
        resp: &Response<'_>,
    ) -> Flow {
        match self.1.on_response_head(env, ctx, resp) {
            Flow::Continue => self.0.on_response_head(env, ctx, resp),
            respond => respond,
        }
    }

    fn on_body_chunk<'s>(
        &self,
        env: &Env<'s>,
        ctx: &mut RequestCtx<'s>,
        data: &[u8],
        end_of_stream: bool,
        out: &mut Vec<u8>,
    ) -> Chunk {
        match self.1.on_body_chunk(env, ctx, data, end_of_stream, out) {
            Chunk::Pass => self.0.on_body_chunk(env, ctx, data, end_of_stream, out),
            Chunk::Replaced => {
                // `A` sees what `B` let through.
                let through = std::mem::take(out);
                match self.0.on_body_chunk(env, ctx, &through, end_of_stream, out) {
                    Chunk::Pass => *out = through,
                    Chunk::Replaced => {}
                }
                Chunk::Replaced
            }
        }
    }

    fn on_complete<'s>(&self, env: &Env<'s>, ctx: &mut RequestCtx<'s>) {
        self.1.on_complete(env, ctx);
        self.0.on_complete(env, ctx);
    }
}

/// A worker's policies bound to the environment of one request: the server calls the phases
/// through it.
pub struct Pipeline<'a, P> {
    /// The policies, in request order.
    pub policies: &'a P,
    /// What they may read.
    pub env: Env<'a>,
}

impl<'a, P: Policy> Pipeline<'a, P> {
    /// Runs [`Policy::on_request`].
    pub fn on_request(&self, ctx: &mut RequestCtx<'a>, req: &Request<'_>) -> Flow {
        self.policies.on_request(&self.env, ctx, req)
    }

    /// Runs [`Policy::on_request_body`].
    pub fn on_request_body(&self, ctx: &mut RequestCtx<'a>, req: &Request<'_>) -> Flow {
        self.policies.on_request_body(&self.env, ctx, req)
    }

    /// Runs [`Policy::on_upstream_request`] after resetting what the previous attempt asked.
    pub fn on_upstream_request(&self, ctx: &mut RequestCtx<'a>, req: &UpstreamRequest<'_>) -> Flow {
        ctx.upstream = super::context::UpstreamAsk::default();
        self.policies.on_upstream_request(&self.env, ctx, req)
    }

    /// Runs [`Policy::on_response_head`] (the body access starts from nothing).
    pub fn on_response_head(&self, ctx: &mut RequestCtx<'a>, resp: &Response<'_>) -> Flow {
        ctx.body = super::context::BodyAccess::default();
        self.policies.on_response_head(&self.env, ctx, resp)
    }

    /// Runs [`Policy::on_body_chunk`] when some policy reads the body; `out` is cleared
    /// first.
    pub fn on_body_chunk(
        &self,
        ctx: &mut RequestCtx<'a>,
        data: &[u8],
        end_of_stream: bool,
        out: &mut Vec<u8>,
    ) -> Chunk {
        out.clear();
        if !ctx.body.read {
            return Chunk::Pass;
        }
        self.policies
            .on_body_chunk(&self.env, ctx, data, end_of_stream, out)
    }

    /// Runs [`Policy::on_complete`], stamping the completion time first.
    pub fn on_complete(&self, ctx: &mut RequestCtx<'a>) {
        ctx.timings.complete = Some(Instant::now());
        self.policies.on_complete(&self.env, ctx);
    }
}
