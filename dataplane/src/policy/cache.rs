//! The response cache as a policy (DESIGN.md step 6; the store and the key are
//! [`crate::cache`]). It runs after admission, so a hit has been counted against the request
//! limits and carries this request's rate-limit headers; and after usage accounting has set
//! up its tap, so a hit can release the token reservation.
//!
//! Per request, on a deployment with `cache = { … }` and a chat, completions or embeddings
//! request:
//! - `on_request_body` decides: `bypass` (streamed, nondeterministic or unreadable body,
//!   client `no-store` or `no-cache`), `hit` (a fresh stored answer the client's
//!   `Cache-Control` accepts) or `miss`; the answer carries `x-sluice-cache: …`. A hit
//!   charges no tokens: the usage is settled as 0 (the reservation released), and the
//!   connection replays the stored body through the response phases, so the audit record,
//!   the metrics and the usage telemetry see it like any answer.
//! - on a miss (or `no-cache`) the backend is asked for an uncoded answer; a 200 JSON answer
//!   that arrives whole, uncoded, and small enough for the store is read as it passes and
//!   stored when the request completes.

use std::sync::Arc;

use super::context::{End, RequestCtx};
use super::phase::{BodyCoding, Chunk, Env, Flow, Policy, Request, Response, UpstreamRequest};
use super::usage::{Charge, UsageTap};
use crate::cache::control::ClientControl;
use crate::cache::key::{caches, request_key};
use crate::cache::CachedAnswer;

/// What the cache did for a request.
#[derive(Debug, Default)]
pub enum CacheUse {
    /// Not a cached deployment's cacheable operation (or not decided yet): no header.
    #[default]
    Off,
    /// Answered from the cache with this answer.
    Hit(Arc<CachedAnswer>),
    /// Looked up and not found (or too old for the client): the answer may be stored.
    Miss(Store),
    /// Not looked up (`Some`: the answer may still be stored, a client's `no-cache`).
    Bypass(Option<Store>),
}

/// An answer on its way into the cache.
#[derive(Debug)]
pub struct Store {
    /// Its key.
    key: Box<[u8]>,
    /// The body read so far (`None` until a storable head, or once it cannot be stored).
    body: Option<Vec<u8>>,
    /// The whole body went past.
    complete: bool,
}

impl Store {
    fn new(key: Vec<u8>) -> Self {
        Self {
            key: key.into(),
            body: None,
            complete: false,
        }
    }
}

impl CacheUse {
    /// `hit`, `miss` or `bypass` (the header's value, the metric's `result` and the audit
    /// record's `cache`); `None` when the cache had no part in the request.
    pub fn result(&self) -> Option<&'static str> {
        match self {
            CacheUse::Off => None,
            CacheUse::Hit(_) => Some("hit"),
            CacheUse::Miss(_) => Some("miss"),
            CacheUse::Bypass(_) => Some("bypass"),
        }
    }

    /// The answer to replay, on a hit.
    pub fn hit(&self) -> Option<Arc<CachedAnswer>> {
        match self {
            CacheUse::Hit(answer) => Some(Arc::clone(answer)),
            _ => None,
        }
    }

    fn store(&mut self) -> Option<&mut Store> {
        match self {
            CacheUse::Miss(store) | CacheUse::Bypass(Some(store)) => Some(store),
            _ => None,
        }
    }
}

/// The exact response cache (step 6).
#[derive(Debug, Default, Clone, Copy)]
pub struct ResponseCaching;

impl Policy for ResponseCaching {
    fn on_request_body<'s>(
        &self,
        env: &Env<'s>,
        ctx: &mut RequestCtx<'s>,
        req: &Request<'_>,
    ) -> Flow {
        let (Some(dep), Some(op)) = (ctx.deployment, ctx.operation) else {
            return Flow::Continue;
        };
        let Some(cache) = dep.cache.as_deref().filter(|_| caches(op)) else {
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
        ctx.cache = match key {
            None => CacheUse::Bypass(None),
            Some(key) if control.no_cache => CacheUse::Bypass(Some(Store::new(key))),
            Some(key) => {
                let now = env.clock.now_nanos();
                match cache.get(&key, now) {
                    Some(answer) if control.serves(answer.age(now)) => CacheUse::Hit(answer),
                    _ => CacheUse::Miss(Store::new(key)),
                }
            }
        };
        if let CacheUse::Hit(_) = ctx.cache {
            // No backend tokens: the reservation is released, the usage settled as 0.
            ctx.stream_plan = None;
            if !matches!(ctx.usage, UsageTap::Off) {
                ctx.usage = UsageTap::Done {
                    charge: Charge::Nothing,
                    model: None,
                };
            }
        }
        if let Some(result) = ctx.cache.result() {
            ctx.response_headers.extend_from_slice(b"x-sluice-cache: ");
            ctx.response_headers.extend_from_slice(result.as_bytes());
            ctx.response_headers.extend_from_slice(b"\r\n");
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
        resp: &Response,
    ) -> Flow {
        let storable = resp.status == 200
            && !resp.no_store
            && !resp.event_stream
            && resp.coding == BodyCoding::Identity
            && resp.backend.is_some();
        if let Some(store) = ctx.cache.store() {
            store.complete = false;
            store.body = storable.then(Vec::new);
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
        let max = ctx
            .deployment
            .and_then(|d| d.cache.as_deref())
            .map_or(0, |c| c.max_body(0));
        if let Some(store) = ctx.cache.store() {
            if let Some(body) = &mut store.body {
                if body.len() + data.len() > max.saturating_sub(store.key.len()) {
                    // Too large to store: not held any longer.
                    store.body = None;
                } else {
                    body.extend_from_slice(data);
                    store.complete = end_of_stream;
                }
            }
        }
        Chunk::Pass
    }

    fn on_complete<'s>(&self, env: &Env<'s>, ctx: &mut RequestCtx<'s>) {
        let (end, status) = (ctx.end, ctx.status);
        let Some(cache) = ctx.deployment.and_then(|d| d.cache.as_deref()) else {
            return;
        };
        let Some(store) = ctx.cache.store() else {
            return;
        };
        let (Some(body), true) = (store.body.take(), store.complete) else {
            return;
        };
        // Only what can be replayed as `application/json`: a whole JSON value.
        let json = serde_json::from_slice::<serde::de::IgnoredAny>(&body).is_ok();
        if end == End::Complete && status == Some(200) && json {
            let key = std::mem::take(&mut store.key);
            cache.insert(key, body.into(), env.clock.now_nanos());
        }
    }
}
