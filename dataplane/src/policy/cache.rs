//! The response cache as policies (DESIGN.md step 6; the store and the key are
//! [`crate::cache`]).
//!
//! Per request, on a deployment with `cache = { … }` and a chat, completions or embeddings
//! request:
//! - [`CacheLookup`] runs before admission (step 7) and looks the request up: `bypass`
//!   (streamed, nondeterministic or unreadable body, client `no-store` or `no-cache`), `hit`
//!   (a fresh stored answer the client's `Cache-Control` accepts) or `miss`. Admission then
//!   counts a would-be hit against the request limits only: it costs no tokens, so the token
//!   limits neither reserve for it nor refuse it.
//! - [`ResponseCaching`] runs once the request is admitted and the usage tap is set up: the
//!   lookup stands (a refused request has no cache result), the answer carries
//!   `x-sluice-cache: …`, and a hit's usage is settled as nothing. The connection replays a
//!   hit through the response phases, so the audit record, the metrics and the usage
//!   telemetry see it like any answer.
//! - on a miss (or `no-cache`) the backend is asked for an uncoded answer; a 200 JSON answer
//!   that arrives whole, uncoded, and small enough for the store is read as it passes and
//!   stored when the request completes.

use std::sync::Arc;

use bytes::Bytes;

use super::context::{End, RequestCtx};
use super::phase::{BodyCoding, Chunk, Env, Flow, Policy, Request, Response, UpstreamRequest};
use super::usage::{Charge, UsageTap};
use crate::cache::control::{ClientControl, Freshness};
use crate::cache::key::{caches, request_key};
use crate::cache::{CachedAnswer, ResponseCache};
use crate::http::write_header;
use crate::tokens::usage::Usage;

/// What the response cache does for a request: the lookup, and whether it stands (the
/// request was admitted).
#[derive(Debug, Default)]
pub struct CacheUse {
    verdict: Verdict,
    /// Admitted: the verdict is the request's (its header, records and metrics).
    stands: bool,
}

/// What a lookup found.
#[derive(Debug, Default)]
enum Verdict {
    /// Not a cached deployment's cacheable operation (or not looked up yet): no header.
    #[default]
    Off,
    /// Answered from the cache with this answer.
    Hit(Arc<CachedAnswer>),
    /// Looked up and not found (or too old for the client): the answer may be stored.
    Miss(Store),
    /// Not looked up (`Some`: the answer may still be stored, a client's `no-cache`).
    Bypass(Option<Store>),
}

/// An answer on its way into the cache: its body is copied as it passes, in room held from
/// the cache's budget for answers in flight ([`ResponseCache::hold`]), given back when the
/// answer is stored or dropped.
#[derive(Debug)]
pub struct Store {
    /// Its key.
    key: Box<[u8]>,
    /// The deployment's cache.
    cache: Arc<ResponseCache>,
    /// The body read so far (`None` until a storable head, or once it cannot be stored).
    body: Option<Vec<u8>>,
    /// The answer's `content-type`.
    content_type: Box<[u8]>,
    /// The answer's freshness lifetime and age on arrival.
    freshness: Freshness,
    /// Bytes held from the cache's budget for `body`.
    held: u64,
    /// The whole body went past.
    complete: bool,
}

/// The smallest step the room for a body grows by (then doubling).
const FIRST_HOLD: u64 = 16 << 10;

impl Store {
    fn new(key: Vec<u8>, cache: &Arc<ResponseCache>) -> Self {
        Self {
            key: key.into(),
            cache: Arc::clone(cache),
            body: None,
            content_type: Box::default(),
            freshness: Freshness::default(),
            held: 0,
            complete: false,
        }
    }

    /// Starts reading an answer sent as `content_type`, fresh as `freshness` says (or not,
    /// when it cannot be stored).
    fn start(&mut self, storable: bool, content_type: Option<&[u8]>, freshness: Freshness) {
        self.forget();
        self.complete = false;
        if storable {
            self.body = Some(Vec::new());
            self.content_type = content_type.unwrap_or(b"application/json").into();
            self.freshness = freshness;
        }
    }

    /// Adds `data` to the body, holding room for it first; past the largest body the store
    /// takes, or with the budget for answers in flight spent, the body is dropped (the answer
    /// is relayed all the same, just not stored).
    fn add(&mut self, data: &[u8], end_of_stream: bool) {
        let Some(body) = &mut self.body else {
            return;
        };
        let len = body.len() + data.len();
        let max = self
            .cache
            .max_body(self.key.len())
            .saturating_sub(self.content_type.len());
        if len > max {
            self.forget();
            return;
        }
        let len = len as u64;
        if len > self.held {
            // Room in doubling steps, never past the largest body.
            let want = (self.held * 2).max(FIRST_HOLD).min(max as u64).max(len);
            if !self.cache.hold(want - self.held) {
                tracing::debug!(
                    bytes = want,
                    "response cache: answers in flight hold max_bytes already; this one is not stored"
                );
                self.forget();
                return;
            }
            self.held = want;
            body.reserve_exact((want - body.len() as u64) as usize);
        }
        body.extend_from_slice(data);
        self.complete = end_of_stream;
    }

    /// Drops the body read so far and gives its room back.
    fn forget(&mut self) {
        self.body = None;
        self.cache.release(std::mem::take(&mut self.held));
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.cache.release(self.held);
    }
}

impl CacheUse {
    /// `hit`, `miss` or `bypass` (the header's value, the metric's `result` and the audit
    /// record's `cache`); `None` when the cache had no part in the request, or the request
    /// was refused before the lookup stood.
    pub fn result(&self) -> Option<&'static str> {
        if !self.stands {
            return None;
        }
        match self.verdict {
            Verdict::Off => None,
            Verdict::Hit(_) => Some("hit"),
            Verdict::Miss(_) => Some("miss"),
            Verdict::Bypass(_) => Some("bypass"),
        }
    }

    /// The answer to replay, on a hit that stands.
    pub fn hit(&self) -> Option<Arc<CachedAnswer>> {
        match &self.verdict {
            Verdict::Hit(answer) if self.stands => Some(Arc::clone(answer)),
            _ => None,
        }
    }

    /// The lookup found a fresh answer: admission charges the request no tokens.
    pub fn found(&self) -> bool {
        matches!(self.verdict, Verdict::Hit(_))
    }

    /// Whether the answer to come may be stored (a miss, or a client's `no-cache`).
    pub fn stores(&self) -> bool {
        matches!(self.verdict, Verdict::Miss(_) | Verdict::Bypass(Some(_)))
    }

    fn store(&mut self) -> Option<&mut Store> {
        match &mut self.verdict {
            Verdict::Miss(store) | Verdict::Bypass(Some(store)) => Some(store),
            _ => None,
        }
    }
}

/// Looks the request up in its deployment's cache, before admission (step 6).
#[derive(Debug, Default, Clone, Copy)]
pub struct CacheLookup;

impl Policy for CacheLookup {
    fn on_request_body<'s>(
        &self,
        env: &Env<'s>,
        ctx: &mut RequestCtx<'s>,
        req: &Request<'_>,
    ) -> Flow {
        let (Some(dep), Some(op)) = (ctx.deployment, ctx.operation) else {
            return Flow::Continue;
        };
        let Some(cache) = dep.cache.as_ref().filter(|_| caches(op)) else {
            return Flow::Continue;
        };
        let mut control = ClientControl::default();
        for h in &req.head.headers {
            if h.name(req.buf).eq_ignore_ascii_case(b"cache-control") {
                control.add(req.buf.get(h.value.clone()).unwrap_or_default());
            }
        }
        let subscription = ctx
            .caller
            .as_ref()
            .and_then(|c| env.snapshot.access.subscriptions.get(c.subscription))
            .map(|s| s.name.as_str());
        // `no-store` needs no key: the body is not even parsed.
        let key = if control.no_store {
            None
        } else {
            match request_key(op, subscription, req.body, cache.settings()) {
                Ok(key) => Some(key),
                Err(why) => {
                    tracing::debug!(request_id = %ctx.id, reason = ?why, "response cache bypassed");
                    None
                }
            }
        };
        ctx.cache.verdict = match key {
            None => Verdict::Bypass(None),
            Some(key) if control.no_cache => Verdict::Bypass(Some(Store::new(key, cache))),
            Some(key) => {
                let now = env.clock.now_nanos();
                match cache.get(&key, now) {
                    Some(answer) if control.serves(answer.age(now)) => Verdict::Hit(answer),
                    _ => Verdict::Miss(Store::new(key, cache)),
                }
            }
        };
        Flow::Continue
    }
}

/// The response cache's part once the request is admitted: the lookup stands, a hit is
/// settled as costing nothing, a miss's answer is stored.
#[derive(Debug, Default, Clone, Copy)]
pub struct ResponseCaching;

impl Policy for ResponseCaching {
    fn on_request_body<'s>(
        &self,
        env: &Env<'s>,
        ctx: &mut RequestCtx<'s>,
        _req: &Request<'_>,
    ) -> Flow {
        ctx.cache.stands = true;
        if ctx.cache.found() {
            // No backend tokens: nothing was reserved, and the usage is 0 (the records say
            // so, whether or not a token limit or the token metrics read usage).
            ctx.stream_plan = None;
            ctx.usage = UsageTap::Done {
                charge: Charge::Usage(Usage::default()),
                model: None,
            };
        }
        if let Some(result) = ctx.cache.result() {
            write_header(
                &mut ctx.response_headers,
                b"x-sluice-cache",
                result.as_bytes(),
            );
        }
        if let Verdict::Hit(answer) = &ctx.cache.verdict {
            // RFC 9111 §5.1: a cache states the age of a stored answer it serves.
            let age = answer.age(env.clock.now_nanos()).as_secs();
            let mut num = itoa::Buffer::new();
            write_header(
                &mut ctx.response_headers,
                b"age",
                num.format(age).as_bytes(),
            );
        }
        Flow::Continue
    }

    fn on_upstream_request<'s>(
        &self,
        _env: &Env<'s>,
        ctx: &mut RequestCtx<'s>,
        _req: &UpstreamRequest<'_>,
    ) -> Flow {
        // Only an uncoded answer is stored (and replayed as it came).
        if ctx.cache.store().is_some() {
            ctx.upstream.identity_encoding = true;
        }
        Flow::Continue
    }

    fn on_response_head<'s>(
        &self,
        _env: &Env<'s>,
        ctx: &mut RequestCtx<'s>,
        resp: &Response<'_>,
    ) -> Flow {
        let storable = resp.status == 200
            && resp.freshness != Freshness::NotStorable
            && !resp.event_stream
            && resp.coding == BodyCoding::Identity
            && resp.backend.is_some();
        if let Some(store) = ctx.cache.store() {
            store.start(storable, resp.content_type, resp.freshness);
            ctx.body.read |= storable;
        }
        Flow::Continue
    }

    fn on_body_chunk<'s>(
        &self,
        _env: &Env<'s>,
        ctx: &mut RequestCtx<'s>,
        data: &[u8],
        end_of_stream: bool,
        _out: &mut Vec<u8>,
    ) -> Chunk {
        if let Some(store) = ctx.cache.store() {
            store.add(data, end_of_stream);
        }
        Chunk::Pass
    }

    fn on_complete<'s>(&self, env: &Env<'s>, ctx: &mut RequestCtx<'s>) {
        let (end, status) = (ctx.end, ctx.status);
        let Some(store) = ctx.cache.store() else {
            return;
        };
        let (Some(body), true) = (store.body.take(), store.complete) else {
            store.forget();
            return;
        };
        // Only a whole JSON value (what a chat, completions or embeddings answer is).
        let json = serde_json::from_slice::<serde::de::IgnoredAny>(&body).is_ok();
        if end == End::Complete && status == Some(200) && json {
            let key = std::mem::take(&mut store.key);
            let content_type = std::mem::take(&mut store.content_type);
            // Shrunk to its length: the store weighs (and keeps) no spare capacity.
            let body = Bytes::from(body.into_boxed_slice());
            store.cache.insert(
                key,
                body,
                content_type,
                store.freshness,
                env.clock.now_nanos(),
            );
        }
        store.forget();
    }
}
