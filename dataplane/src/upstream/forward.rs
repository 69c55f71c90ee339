//! Forwarding to a backend: pick candidates from the pool, rewrite the request for the chosen
//! backend, send it on a pooled (or new) connection, fail over on refused connections and on
//! 429/5xx answers while the client has seen nothing — but never send a request again once
//! any byte of it went out (`Exchange::send`) — and stream the answer back — each read
//! from the backend is written to the client before the next read, so SSE events arrive as
//! they are produced and a slow client slows the backend read (back-pressure).

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::Write as _;
use std::time::{Duration, Instant};

use monoio::buf::IoBuf;
use monoio::io::AsyncWriteRent;
use monoio::net::TcpStream;

use super::pool::Tenant;
use super::pool::UpstreamPools;
use super::retry::Retries;
use super::stream::UpstreamStream;
use super::Exchange;
use crate::answers;
use crate::balance::Balancer;
use crate::clock::now_millis;
use crate::downstream::Next;
use crate::error::GatewayError;
use crate::health::DEFAULT_COOL_DOWN;
use crate::http::{
    connection_lists, folds_to, folds_to_framing, is_hop_by_hop, is_plain_name, parse_response,
    HeaderSpan, Parse,
};
use crate::json_edit::{set_string_member, set_string_member_at};
use crate::policy::context::{Attempt, AttemptOutcome, End, RequestCtx};
use crate::policy::phase::{Pipeline, Policy, UpstreamRequest};
use crate::route::Operation;
use crate::snapshot::{
    Backend, BackendId, BackendKind, Deployment, HeadersWithUnderscores, HttpUpstream, Secret,
    Snapshot, Timeouts,
};
use crate::socket::{read_more_watching, ClientStream, Stopped};
use crate::tls::client::{handshake, TlsFailure};

/// Largest upstream response head accepted.
const MAX_UPSTREAM_HEAD: usize = 64 * 1024;
/// Interim (1xx) answers skipped before a final one; more is a misbehaving backend.
const MAX_INTERIM: u32 = 8;
/// The 502 message when the connection broke while the request was being written.
const BROKEN_WRITE: &str =
    "Bad gateway: the connection to the backend broke while the request was being sent.";

/// Client request headers never forwarded: Sluice sets its own framing, host, credential
/// and tracing headers.
const DROPPED_REQUEST_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "expect",
    "api-key",
    "authorization",
    "ocp-apim-subscription-key",
    "x-request-id",
    "x-forwarded-for",
    "x-forwarded-proto",
    // Asks for Sluice's trace; a gateway behind (APIM) must not take it as asked of it.
    "ocp-apim-trace",
    "x-sluice-trace",
];

/// How to reach and authenticate to one HTTP backend.
struct HttpTarget<'a> {
    upstream: &'a HttpUpstream,
    style: Style<'a>,
    credential: Option<(&'static [u8], &'static [u8], &'a Secret)>,
    model: ModelPin<'a>,
}

/// The `model` the backend gets, decided by the deployment Sluice authorized — never the
/// client's when it names another (a product allowing deployment `cheap` must not reach
/// `expensive` through the body).
struct ModelPin<'a> {
    /// The backend's `model` setting, else (OpenAI-style backends) the deployment's name;
    /// for Azure backends their deployment's name.
    model: &'a str,
    /// Add `model` when the body has none (OpenAI-style paths route by it; Azure deployment
    /// paths do not need it).
    insert: bool,
}

enum Style<'a> {
    Azure {
        deployment: &'a str,
        api_version: &'a str,
    },
    OpenAi,
}

/// Why an upstream exchange failed before the answer's head arrived.
enum SendError {
    /// Could not connect (TCP, or the TLS handshake: why, when it was that), or a new
    /// connection refused the request's first write with nothing accepted: no byte of the
    /// request left Sluice, so another backend may take it.
    Connect(Option<TlsFailure>),
    /// No first byte within the timeout.
    Timeout,
    /// Some or all of the request may have reached the backend, which then broke the
    /// connection, closed it without answering or answered with something Sluice cannot pass
    /// on faithfully. Never resent, to this backend or another: the backend may have acted
    /// on it (a paid completion would run twice).
    Protocol(&'static str),
    /// The client closed its connection while Sluice waited for the answer: the upstream
    /// connection is closed (cancelling the request there), and nobody is answered.
    ClientGone,
}

impl Exchange<'_> {
    /// Forwards the current request to `dep`'s pool and streams the answer back, under the
    /// deployment's [`RetryPolicy`] (README "How a request is forwarded"). Each candidate
    /// selection offers is one attempt in `ctx.attempts`, prepared by the pipeline's
    /// `on_upstream_request`.
    ///
    /// - A pool with no usable member (all cooling down or ejected) is answered 429
    ///   (`pool_exhausted`) at once, `Retry-After` the soonest any member is usable again.
    /// - A connect or TLS failure, a 429, a retriable 5xx, and a first byte later than
    ///   `per_try_timeout` go to the next candidate while attempts, `total_timeout` and the
    ///   worker's retry budget allow and a candidate is left — the same backend again only
    ///   after a jittered backoff ([`Retries::backoff`]). Otherwise the last answer goes to
    ///   the client as the backend sent it.
    /// - A request whose bytes reached a backend that then broke the exchange is never sent
    ///   again (502).
    /// - Once Sluice retried, its answer says `x-should-retry: false` (the OpenAI SDKs'
    ///   header), so clients do not multiply the load.
    #[allow(clippy::too_many_arguments)]
    pub async fn proxy<'v, P: Policy>(
        &mut self,
        pools: &UpstreamPools,
        retries: &Retries,
        balancers: &RefCell<HashMap<String, Balancer>>,
        pipeline: &Pipeline<'v, P>,
        ctx: &mut RequestCtx<'v>,
        op: Operation,
        dep: &'v Deployment,
        close: bool,
    ) -> Next {
        let snapshot = pipeline.env.snapshot;
        let policy = &dep.retry;
        // One clock read, and only when there is a total deadline.
        let deadline = policy.total_timeout.map(|t| Instant::now() + t);
        let active = retries.enter();
        // What the request may cost a backend: its admission reservation (prompt estimate
        // plus completion cap), 0 when nothing estimated it.
        let tokens = ctx.tokens.map_or(0, |t| t.reservation);
        let mut candidates = std::mem::take(&mut self.leg.candidates);
        candidates.clear();
        let mut pick = Picker {
            candidates,
            next: 0,
            selections: 0,
            tokens,
        };
        let Some(mut id) = pick.next(snapshot, balancers, dep) else {
            self.leg.candidates = pick.candidates;
            let err = GatewayError::pool_exhausted(soonest_usable(snapshot, dep, tokens));
            tracing::info!(request_id = %ctx.id, deployment = %dep.name, "every backend is cooling down or ejected; 429");
            return self.down.answer_error(ctx, &err, close).await;
        };
        // Whose upstream connections the request may use (see [`Tenant`]).
        let tenant = match ctx
            .caller
            .as_ref()
            .and_then(|c| snapshot.access.subscriptions.get(c.subscription))
        {
            Some(subscription) => Tenant::subscription(&subscription.name),
            None => Tenant::Address(self.down.peer.ip()),
        };
        let od = &dep.outlier_detection;
        // The backends tried so far, in order (the leg's buffer: no allocation per request).
        let mut tried = std::mem::take(&mut self.leg.tried);
        tried.clear();
        let next = loop {
            let Some(backend) = snapshot.backends.get(id) else {
                break None;
            };
            if tried.contains(&id) {
                let wait = retries.backoff(tried.len() as u32);
                let wait = deadline.map_or(wait, |d| {
                    wait.min(d.saturating_duration_since(Instant::now()))
                });
                monoio::time::sleep(wait).await;
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    backend.health.release_probe();
                    let err = GatewayError::upstream_timeout();
                    break Some(self.answer_after(ctx, &err, close).await);
                }
            }
            tried.push(id);
            let attempt = tried.len() as u32;
            let started = Instant::now();
            ctx.attempts.push(Attempt {
                backend: id,
                status: None,
                outcome: AttemptOutcome::Pending,
                duration: Duration::ZERO,
                tls: None,
            });
            let upstream_req = UpstreamRequest {
                backend: id,
                accepts_stream_options: backend.kind.accepts_stream_options(),
                started,
                body: &self.down.body,
            };
            if let Some(err) = pipeline
                .on_upstream_request(ctx, &upstream_req)
                .into_error()
            {
                // Refused before anything went out: no attempt was made.
                ctx.attempts.pop();
                backend.health.release_probe();
                break Some(self.answer_after(ctx, &err, close).await);
            }
            let Some(target) = http_target(backend, dep, op) else {
                let BackendKind::Mock(settings) = &backend.kind else {
                    break None;
                };
                break Some(
                    self.serve_mock(pipeline, ctx, id, settings, &dep.name, op, close)
                        .await,
                );
            };
            let underscores = snapshot.server.headers_with_underscores;
            if let Err(err) = self.build_upstream_request(ctx, &target, op, underscores) {
                ctx.attempts.pop();
                backend.health.release_probe();
                break Some(self.answer_after(ctx, &err, close).await);
            }
            // This attempt's time: the connect and the first byte, each within what is left
            // of `total_timeout`; the first byte within `per_try_timeout` too.
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            let mut t = snapshot.server.timeouts;
            let mut first_byte = t.upstream_first_byte;
            let per_try = policy.per_try_timeout.filter(|p| *p < first_byte);
            if let Some(p) = per_try {
                first_byte = p;
            }
            // An attempt `total_timeout` cut short ends the request in 504.
            let deadline_bound = left.is_some_and(|l| l <= t.upstream_connect || l <= first_byte);
            if let Some(left) = left {
                t.upstream_connect = t.upstream_connect.min(left);
                first_byte = first_byte.min(left);
            }
            let per_try_fired = per_try.is_some_and(|p| left.is_none_or(|l| p < l));
            t.upstream_first_byte = first_byte;
            let addr = target.upstream.addr;
            let channel = target.upstream.tls.as_ref().map(|tls| tls.pool_key);
            backend.health.capacity.reserve(now_millis(), tokens);
            let sent = self.send(pools, target.upstream, tenant, &t).await;
            let end_attempt = |ctx: &mut RequestCtx<'_>, outcome, status| {
                if let Some(a) = ctx.attempts.last_mut() {
                    (a.outcome, a.status, a.duration) = (outcome, status, started.elapsed());
                }
            };
            // The next candidate, if this request may go on to it (see [`Refusal`]).
            let mut retry = |ctx: &mut RequestCtx<'_>| -> Result<BackendId, Refusal> {
                if attempt >= policy.max_attempts {
                    return Err(Refusal::Attempts);
                }
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return Err(Refusal::Deadline);
                }
                let next = pick
                    .next(snapshot, balancers, dep)
                    .ok_or(Refusal::NoCandidate)?;
                if !active.may_retry() {
                    ctx.retry_over_budget = true;
                    snapshot
                        .backends
                        .get(next)
                        .inspect(|b| b.health.release_probe());
                    return Err(Refusal::Budget);
                }
                Ok(next)
            };
            match sent {
                Ok(upstream) => {
                    let status = self.resp_status();
                    let now = now_millis();
                    self.observe_capacity(&backend.health.capacity, now);
                    if status >= 500 {
                        record_failure(backend, now, od, || may_eject(snapshot, id));
                    } else {
                        backend.health.record_success(now);
                    }
                    if policy.retries_status(status) {
                        let asked = self.retry_after();
                        let cool = match asked {
                            Some(asked) => Some(asked.min(policy.max_cool_down)),
                            None if status == 429 => {
                                Some(DEFAULT_COOL_DOWN.min(policy.max_cool_down))
                            }
                            None => None,
                        };
                        if let Some(cool) = cool {
                            backend.health.cool_down(now, cool);
                        }
                        if let Ok(next) = retry(ctx) {
                            end_attempt(ctx, AttemptOutcome::FailedOver, Some(status));
                            tracing::info!(
                                request_id = %ctx.id,
                                backend = %backend.name,
                                status,
                                cool_down_ms = cool.map_or(0, |c| c.as_millis() as u64),
                                "backend refused the request; trying the next candidate"
                            );
                            drop(upstream);
                            id = next;
                            continue;
                        }
                        // Not retried: the answer goes to the client as the backend sent it.
                    }
                    end_attempt(ctx, AttemptOutcome::Answered, Some(status));
                    ctx.timings.upstream_first_byte = Some(Instant::now());
                    if tried.len() > 1 {
                        ctx.response_headers.extend_from_slice(SHOULD_NOT_RETRY);
                    }
                    break Some(
                        self.relay(
                            pools, pipeline, ctx, upstream, addr, tenant, channel, close, &t,
                        )
                        .await,
                    );
                }
                Err(SendError::Connect(tls)) => {
                    end_attempt(ctx, AttemptOutcome::ConnectFailed, None);
                    let expired = deadline_bound && deadline.is_some_and(|d| Instant::now() >= d);
                    record_failure(backend, now_millis(), od, || may_eject(snapshot, id));
                    let err = match tls {
                        _ if expired => GatewayError::upstream_timeout(),
                        None => {
                            tracing::warn!(backend = %backend.name, addr = %addr, "backend unreachable");
                            GatewayError::upstream_unavailable()
                        }
                        Some(failure) => {
                            if let Some(a) = ctx.attempts.last_mut() {
                                a.tls = Some(failure);
                            }
                            tracing::warn!(
                                backend = %backend.name,
                                addr = %addr,
                                tls = failure.reason(),
                                "backend unreachable (tls: {failure})"
                            );
                            GatewayError::new(
                                crate::error::ErrorKind::UpstreamUnavailable,
                                failure.unavailable_message(),
                            )
                        }
                    };
                    match retry(ctx) {
                        Ok(next) => id = next,
                        Err(_) => break Some(self.answer_after(ctx, &err, close).await),
                    }
                }
                Err(SendError::Timeout) => {
                    end_attempt(ctx, AttemptOutcome::TimedOut, None);
                    // However short the time it was given: a backend that keeps not answering
                    // in it must be ejected (and a half-open probe decided).
                    record_failure(backend, now_millis(), od, || may_eject(snapshot, id));
                    tracing::warn!(
                        request_id = %ctx.id,
                        backend = %backend.name,
                        per_try = per_try_fired,
                        "backend sent no answer in time"
                    );
                    if per_try_fired {
                        if let Ok(next) = retry(ctx) {
                            id = next;
                            continue;
                        }
                    }
                    let err = GatewayError::upstream_timeout();
                    break Some(self.answer_after(ctx, &err, close).await);
                }
                Err(SendError::ClientGone) => {
                    end_attempt(ctx, AttemptOutcome::ClientGone, None);
                    backend.health.release_probe();
                    ctx.end = End::ClientGone;
                    tracing::info!(
                        request_id = %ctx.id,
                        backend = %backend.name,
                        "client went away while waiting for the backend; upstream request cancelled"
                    );
                    break Some(Next::Close);
                }
                Err(SendError::Protocol(message)) => {
                    end_attempt(ctx, AttemptOutcome::NoAnswer, None);
                    tracing::warn!(backend = %backend.name, message, "backend broke the exchange; not retried (it may have run the request)");
                    record_failure(backend, now_millis(), od, || may_eject(snapshot, id));
                    let err = GatewayError::upstream_protocol(message);
                    break Some(self.answer_after(ctx, &err, close).await);
                }
            }
        };
        self.leg.candidates = pick.candidates;
        self.leg.tried = tried;
        match next {
            Some(next) => next,
            None => {
                let err = GatewayError::upstream_unavailable();
                self.answer_after(ctx, &err, close).await
            }
        }
    }

    /// Answers `err`, saying `x-should-retry: false` when Sluice already retried.
    async fn answer_after(
        &mut self,
        ctx: &mut RequestCtx<'_>,
        err: &GatewayError,
        close: bool,
    ) -> Next {
        // A backend that took the request and broke the exchange or kept silent may have
        // run it: Sluice does not send it again, and asks the client not to either.
        let may_have_run = matches!(
            err.kind,
            crate::error::ErrorKind::UpstreamProtocol | crate::error::ErrorKind::UpstreamTimeout
        );
        if ctx.attempts.len() > 1 || (may_have_run && !ctx.attempts.is_empty()) {
            ctx.response_headers.extend_from_slice(SHOULD_NOT_RETRY);
        }
        self.down.answer_error(ctx, err, close).await
    }

    /// Writes the upstream request (head and body) into `self.leg.req`. A header name with `_`
    /// or one that reads as a header Sluice manages is dropped or refused as `underscores`
    /// says (see [`HeadersWithUnderscores`]). `injected`: the body sent is the one with
    /// `stream_options.include_usage` added when `ctx.upstream` says so.
    fn build_upstream_request(
        &mut self,
        ctx: &RequestCtx<'_>,
        t: &HttpTarget<'_>,
        op: Operation,
        underscores: HeadersWithUnderscores,
    ) -> Result<(), GatewayError> {
        let req = &mut self.leg.req;
        req.clear();
        req.extend_from_slice(op.method().as_bytes());
        req.push(b' ');
        req.extend_from_slice(t.upstream.base_path.as_bytes());
        match t.style {
            Style::Azure { .. } if op == Operation::Responses => {
                req.extend_from_slice(b"/openai/v1/responses")
            }
            Style::Azure {
                deployment,
                api_version,
            } => {
                req.extend_from_slice(b"/openai/deployments/");
                req.extend_from_slice(deployment.as_bytes());
                req.push(b'/');
                req.extend_from_slice(op.path_suffix().as_bytes());
                req.extend_from_slice(b"?api-version=");
                req.extend_from_slice(api_version.as_bytes());
            }
            Style::OpenAi => {
                req.extend_from_slice(b"/v1/");
                req.extend_from_slice(op.path_suffix().as_bytes());
            }
        }
        req.extend_from_slice(b" HTTP/1.1\r\n");
        answers::header(req, b"host", t.upstream.host_header.as_bytes());
        let mut forwarded_for = false;
        let lists = has_connection_header(&self.down.buf, &self.down.head.headers);
        // Usage is read from the answer's bytes: the backend is asked for them uncoded (an
        // answer coded anyway is decoded on the way, relay/decoded.rs).
        let identity = ctx.upstream.identity_encoding;
        if identity {
            answers::header(req, b"accept-encoding", b"identity");
        }
        for h in &self.down.head.headers {
            let name = &self.down.buf[h.name.clone()];
            let value = &self.down.buf[h.value.clone()];
            if name.eq_ignore_ascii_case(b"x-forwarded-for") {
                forwarded_for = true;
            }
            // Under any spelling a backend might fold into it (`Accept_Encoding`, `Accept.Encoding`).
            if identity
                && (name.eq_ignore_ascii_case(b"accept-encoding")
                    || (!is_plain_name(name) && folds_to(name, b"accept-encoding")))
            {
                continue;
            }
            if is_hop_by_hop(name)
                || DROPPED_REQUEST_HEADERS
                    .iter()
                    .any(|d| name.eq_ignore_ascii_case(d.as_bytes()))
                || (lists && connection_lists(&self.down.buf, &self.down.head.headers, name))
            {
                continue;
            }
            // Almost every name is letters, digits and `-`: one pass over it, and nothing
            // more. Only other spellings are folded and compared with the managed names.
            // (`reject_request` refused such names when the head arrived.)
            if !is_plain_name(name) {
                match (spelling(name), underscores) {
                    (Spelling::Other, _)
                    | (Spelling::Underscore, HeadersWithUnderscores::Allow) => {}
                    (spelling, _) => {
                        tracing::debug!(
                            header = %String::from_utf8_lossy(name),
                            managed = spelling == Spelling::Managed,
                            "request header not forwarded: its name is spelled with `_` or another separator"
                        );
                        continue;
                    }
                }
            }
            answers::header(req, name, value);
        }
        if let Some((name, prefix, secret)) = t.credential {
            req.extend_from_slice(name);
            req.extend_from_slice(b": ");
            req.extend_from_slice(prefix);
            req.extend_from_slice(secret.expose().as_bytes());
            req.extend_from_slice(b"\r\n");
        }
        answers::header(req, b"x-request-id", ctx.id.as_bytes());
        // The client's list, every line of it in order (RFC 9110 §5.3: repeated lines are one
        // comma-separated list), then the client's address. Empty lines add nothing.
        req.extend_from_slice(b"x-forwarded-for: ");
        if forwarded_for {
            for h in &self.down.head.headers {
                let value = &self.down.buf[h.value.clone()];
                if self.down.buf[h.name.clone()].eq_ignore_ascii_case(b"x-forwarded-for")
                    && !value.is_empty()
                {
                    req.extend_from_slice(value);
                    req.extend_from_slice(b", ");
                }
            }
        }
        // Writing into a Vec cannot fail.
        let _ = write!(req, "{}", self.down.peer.ip());
        // The scheme the client used to reach Sluice (RFC 7239 §5.4's `proto`, as the de facto
        // X-Forwarded-Proto carries it).
        req.extend_from_slice(match self.down.stream {
            ClientStream::Tls { .. } => b"\r\nx-forwarded-proto: https\r\n",
            ClientStream::Plain(_) => b"\r\nx-forwarded-proto: http\r\n",
        });
        if op == Operation::Models {
            req.extend_from_slice(b"\r\n");
            return Ok(());
        }
        let body = ctx.attempt_body(&self.down.body);
        let pinned = pin_model(ctx, body, t.model.model, t.model.insert)?;
        let body = pinned.as_deref().unwrap_or(body);
        answers::content_length(req, body.len() as u64);
        req.extend_from_slice(b"\r\n");
        req.extend_from_slice(body);
        Ok(())
    }

    /// Sends `self.leg.req` and reads the answer's head into `self.leg.ubuf` / `self.leg.resp`.
    ///
    /// A request is sent at most once. The only retry is on a pooled connection whose very
    /// first write fails with no byte accepted (the backend had closed it, a race the pool's
    /// check before reuse cannot close entirely): that request is sent again on a new
    /// connection to the same backend. Once any byte was accepted — a broken write, the
    /// connection closed or reset before the answer, an answer that is not valid HTTP — the
    /// exchange ends in [`SendError::Protocol`] (502), never in a resend.
    async fn send(
        &mut self,
        pools: &UpstreamPools,
        upstream: &HttpUpstream,
        tenant: Tenant,
        t: &Timeouts,
    ) -> Result<UpstreamStream, SendError> {
        let addr = upstream.addr;
        let channel = upstream.tls.as_ref().map(|tls| tls.pool_key);
        let mut stream = match pools.take(addr, tenant, channel) {
            Some(mut pooled) => match self.write_request(&mut pooled).await {
                Ok(()) => pooled,
                Err(Written::Nothing) => {
                    tracing::debug!(%addr, "pooled upstream connection refused the request; sending it on a new one");
                    self.connect_and_write(upstream, t).await?
                }
                Err(Written::Some) => return Err(SendError::Protocol(BROKEN_WRITE)),
            },
            None => self.connect_and_write(upstream, t).await?,
        };
        self.leg.ubuf.clear();
        match self.read_response_head(&mut stream, t).await {
            Ok(()) => Ok(stream),
            Err(ReadHead::Closed) => Err(SendError::Protocol(
                "Bad gateway: the backend closed the connection without answering.",
            )),
            Err(ReadHead::Timeout) => Err(SendError::Timeout),
            Err(ReadHead::Invalid(m)) => Err(SendError::Protocol(m)),
            Err(ReadHead::ClientGone) => Err(SendError::ClientGone),
        }
    }

    /// Connects to `upstream` and writes `self.leg.req`; a failure before any byte was
    /// accepted is a [`SendError::Connect`] (the backend never saw the request).
    async fn connect_and_write(
        &mut self,
        upstream: &HttpUpstream,
        t: &Timeouts,
    ) -> Result<UpstreamStream, SendError> {
        let mut stream = connect(upstream, t).await?;
        match self.write_request(&mut stream).await {
            Ok(()) => Ok(stream),
            Err(Written::Nothing) => Err(SendError::Connect(None)),
            Err(Written::Some) => Err(SendError::Protocol(BROKEN_WRITE)),
        }
    }

    /// Writes all of `self.leg.req` to `stream`, counting what the socket accepts so a failure
    /// tells whether any of the request may have left (monoio's `write_all` does not say).
    ///
    /// On TLS a write takes up to 64 KiB of the request (rustls' buffer), seals it and sends
    /// the records; a failure of the first write may have sent some of those records but
    /// never the whole request (it would have succeeded), so the backend cannot have acted
    /// on it: it counts as nothing written, like a refused first write on plain TCP.
    async fn write_request(&mut self, stream: &mut UpstreamStream) -> Result<(), Written> {
        let mut req = std::mem::take(&mut self.leg.req);
        let mut written = 0;
        let result = loop {
            if written == req.len() {
                break Ok(());
            }
            let (res, slice) = stream.write(req.slice(written..)).await;
            req = slice.into_inner();
            match res {
                Ok(n) if n > 0 => written += n,
                _ if written == 0 => break Err(Written::Nothing),
                _ => break Err(Written::Some),
            }
        };
        self.leg.req = req;
        result
    }

    /// Reads until a final (non-1xx) response head is parsed in `self.leg.ubuf`, skipping interim
    /// answers (100 Continue, 102 Processing, 103 Early Hints; at most [`MAX_INTERIM`]).
    /// A `101 Switching Protocols` is invalid: Sluice never asks for an upgrade, so what
    /// follows it is not HTTP it could relay (RFC 9110 §15.2.2).
    async fn read_response_head(
        &mut self,
        stream: &mut UpstreamStream,
        t: &Timeouts,
    ) -> Result<(), ReadHead> {
        let mut interim = 0;
        loop {
            if !self.leg.ubuf.is_empty() {
                match parse_response(&self.leg.ubuf, false, MAX_UPSTREAM_HEAD, &mut self.leg.resp) {
                    Ok(Parse::Complete) if self.leg.resp.status == 101 => {
                        return Err(ReadHead::Invalid(
                            "Bad gateway: the backend switched protocols, which was not asked for.",
                        ))
                    }
                    Ok(Parse::Complete) if (100..200).contains(&self.leg.resp.status) => {
                        interim += 1;
                        if interim > MAX_INTERIM {
                            return Err(ReadHead::Invalid(
                                "Bad gateway: the backend sent too many interim responses.",
                            ));
                        }
                        self.leg.ubuf.drain(..self.leg.resp.head_len);
                        continue;
                    }
                    Ok(Parse::Complete) => return Ok(()),
                    Ok(Parse::Partial) => {}
                    Err(_) => {
                        return Err(ReadHead::Invalid(
                            "Bad gateway: the backend sent an invalid HTTP response head.",
                        ))
                    }
                }
            }
            let was_empty = self.leg.ubuf.is_empty();
            let buf = std::mem::take(&mut self.leg.ubuf);
            match read_more_watching(stream, buf, t.upstream_first_byte, &self.down.stream).await {
                Ok((Ok(n), buf)) if n > 0 => self.leg.ubuf = buf,
                Ok((_, buf)) => {
                    self.leg.ubuf = buf;
                    return Err(if was_empty && interim == 0 {
                        ReadHead::Closed
                    } else {
                        ReadHead::Invalid(
                            "Bad gateway: the backend closed the connection mid-head.",
                        )
                    });
                }
                Err(Stopped::TimedOut) => return Err(ReadHead::Timeout),
                Err(Stopped::ClientGone) => return Err(ReadHead::ClientGone),
            }
        }
    }

    fn resp_status(&self) -> u16 {
        self.leg.resp.status
    }

    /// The answer's header `name` (case-insensitive), when it is UTF-8.
    fn resp_header(&self, name: &str) -> Option<&str> {
        self.leg.resp.headers.iter().find_map(|h| {
            self.leg.ubuf[h.name.clone()]
                .eq_ignore_ascii_case(name.as_bytes())
                .then(|| std::str::from_utf8(&self.leg.ubuf[h.value.clone()]).ok())
                .flatten()
        })
    }

    /// The cool-down a refusing answer asks for ([`super::cool_down::requested`]).
    fn retry_after(&self) -> Option<Duration> {
        super::cool_down::requested(|name| self.resp_header(name), std::time::SystemTime::now())
    }

    /// Remembers the answer's `x-ratelimit-remaining-*` / `-reset-*` figures in `capacity`.
    /// Most answers of other servers have no `x-ratelimit-` header: one pass over the names
    /// finds that.
    fn observe_capacity(&self, capacity: &crate::capacity::Capacity, now_ms: u64) {
        const PREFIX: &[u8] = b"x-ratelimit-";
        let any = self.leg.resp.headers.iter().any(|h| {
            let name = &self.leg.ubuf[h.name.clone()];
            name.len() > PREFIX.len() && name[..PREFIX.len()].eq_ignore_ascii_case(PREFIX)
        });
        if any {
            let seen = crate::capacity::Observed::from_headers(|name| self.resp_header(name));
            if !seen.is_empty() {
                capacity.observe(now_ms, &seen);
            }
        }
    }
}

/// How much of a request a failed write let out.
enum Written {
    /// Nothing: the first write failed.
    Nothing,
    /// Part or all of it: the backend may have it.
    Some,
}

enum ReadHead {
    /// The connection ended (or was reset) before any byte of an answer.
    Closed,
    Timeout,
    Invalid(&'static str),
    /// The client went away while Sluice waited for the answer.
    ClientGone,
}

/// A new connection to `upstream`: TCP, then for `https://` the TLS handshake, both within
/// one `timeouts.upstream_connect` (a handshake cut by it is [`TlsFailure::TimedOut`]).
/// Nothing of the request is written before both succeed.
async fn connect(upstream: &HttpUpstream, t: &Timeouts) -> Result<UpstreamStream, SendError> {
    let deadline = monoio::time::Instant::now() + t.upstream_connect;
    let tcp = match monoio::time::timeout_at(deadline, TcpStream::connect_addr(upstream.addr)).await
    {
        Ok(Ok(stream)) => stream,
        _ => return Err(SendError::Connect(None)),
    };
    let _ = tcp.set_nodelay(true);
    let Some(tls) = &upstream.tls else {
        return Ok(UpstreamStream::Plain(tcp));
    };
    let fd = UpstreamStream::fd_of(&tcp);
    match monoio::time::timeout_at(deadline, handshake(tcp, tls)).await {
        Ok(Ok(stream)) => Ok(UpstreamStream::tls(stream, fd)),
        Ok(Err(failure)) => Err(SendError::Connect(Some(failure))),
        Err(_) => Err(SendError::Connect(Some(TlsFailure::TimedOut))),
    }
}

/// Whether a message has a `Connection` header (which may name more headers to drop); most
/// have none, which saves scanning the headers once per header.
pub(super) fn has_connection_header(buf: &[u8], headers: &[HeaderSpan]) -> bool {
    headers
        .iter()
        .any(|h| h.name(buf).eq_ignore_ascii_case(b"connection"))
}

/// What a header name that is not plain (letters, digits and `-` only) reads as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Spelling {
    /// Once case is folded and `_` and other separators read as `-`, a header Sluice frames,
    /// drops or sets (framing, hop-by-hop, host, credentials, forwarding): never forwarded.
    Managed,
    /// Another name with `_`: as `headers_with_underscores` says.
    Underscore,
    /// Another separator, reading as nothing Sluice manages: forwarded.
    Other,
}

/// How the request header `name` (not plain) reads.
pub(super) fn spelling(name: &[u8]) -> Spelling {
    if folds_to_framing(name)
        || DROPPED_REQUEST_HEADERS
            .iter()
            .any(|d| folds_to(name, d.as_bytes()))
    {
        Spelling::Managed
    } else if memchr::memchr(b'_', name).is_some() {
        Spelling::Underscore
    } else {
        Spelling::Other
    }
}

/// The first request header name `headers_with_underscores = "reject_request"` refuses, as
/// its 400: a name with `_`, or one reading as a header Sluice manages.
pub fn refused_header_name(buf: &[u8], headers: &[HeaderSpan]) -> Option<GatewayError> {
    headers.iter().map(|h| h.name(buf)).find_map(|name| {
        if is_plain_name(name) {
            return None;
        }
        match spelling(name) {
            Spelling::Other => None,
            s => Some(refusal_of(name, s == Spelling::Managed)),
        }
    })
}

/// The 400 for a refused request header name: `managed` when it reads as a header Sluice
/// frames, drops or sets.
fn refusal_of(name: &[u8], managed: bool) -> GatewayError {
    let name = String::from_utf8_lossy(name);
    let why = if managed {
        "reads as a header the gateway manages (framing, connection, host, credential or forwarding) once `_` and other separators are read as `-`"
    } else {
        "contains an underscore"
    };
    GatewayError::invalid_request(
        format!("The request header `{name}` is not accepted: its name {why}. Send header names with `-` instead."),
        None,
    )
}

/// `x-should-retry: false`: the OpenAI SDKs' header telling a client not to retry on its
/// own (Sluice already did).
const SHOULD_NOT_RETRY: &[u8] = b"x-should-retry: false\r\n";

/// Why a request does not go on to another attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// It made `max_attempts` already.
    Attempts,
    /// `total_timeout` is over.
    Deadline,
    /// No member of the pool is usable for it now.
    NoCandidate,
    /// The worker's retry budget is spent ([`Retries`]).
    Budget,
}

/// The candidates of one request, in selection order, taken one by one; when they run out
/// the balancer is asked again (a retry may then go back to a backend already tried), at
/// most once per allowed attempt.
struct Picker {
    candidates: Vec<BackendId>,
    next: usize,
    selections: u32,
    /// The request's token estimate: a member whose last known capacity cannot take it is
    /// not usable for it ([`crate::capacity`]).
    tokens: u64,
}

impl Picker {
    /// The next candidate that is usable now and admits the attempt (a half-open backend
    /// admits its one probe, [`crate::health::BackendHealth::admit`]); `None` when the pool
    /// has none.
    fn next(
        &mut self,
        snapshot: &Snapshot,
        balancers: &RefCell<HashMap<String, Balancer>>,
        dep: &Deployment,
    ) -> Option<BackendId> {
        loop {
            if self.next >= self.candidates.len() {
                if self.selections > dep.retry.max_attempts {
                    return None;
                }
                self.selections += 1;
                self.next = 0;
                let now = now_millis();
                let mut balancers = balancers.borrow_mut();
                let balancer = balancers.get_mut(&dep.name)?;
                let tokens = self.tokens;
                balancer.select(
                    |id| {
                        snapshot.backends.get(id).is_some_and(|b| {
                            b.health.is_usable(now) && b.health.capacity.can_take(now, tokens)
                        })
                    },
                    &mut self.candidates,
                );
                if self.candidates.is_empty() {
                    return None;
                }
            }
            let id = self.candidates[self.next];
            self.next += 1;
            let now = now_millis();
            if snapshot.backends.get(id).is_some_and(|b| {
                b.health.is_usable(now)
                    && b.health.capacity.can_take(now, self.tokens)
                    && b.health.admit(now)
            }) {
                return Some(id);
            }
        }
    }
}

/// Records a failure of `backend` for outlier detection (see
/// [`crate::health::BackendHealth::record_failure`]); an ejection is logged.
fn record_failure(
    backend: &Backend,
    now_ms: u64,
    od: &crate::snapshot::OutlierDetection,
    may_eject: impl FnOnce() -> bool,
) {
    if let Some(length) = backend.health.record_failure(now_ms, od, may_eject) {
        tracing::warn!(
            backend = %backend.name,
            ejected_for_ms = length.as_millis() as u64,
            "backend failed {} times in a row (or its probe failed); ejected from its pools",
            od.consecutive_failures
        );
    }
}

/// Whether ejecting `backend` keeps every pool it is in within that deployment's
/// `max_ejected_percent` (counting the members already ejected). Runs only when a failure
/// streak reaches `consecutive_failures`.
fn may_eject(snapshot: &Snapshot, backend: BackendId) -> bool {
    snapshot
        .deployments
        .values()
        .filter(|d| d.pool.iter().any(|m| m.backend == backend))
        .all(|d| {
            let ejected = d
                .pool
                .iter()
                .filter(|m| {
                    snapshot
                        .backends
                        .get(m.backend)
                        .is_some_and(|b| b.health.is_ejected())
                })
                .count();
            (ejected + 1) * 100
                <= d.pool.len() * usize::from(d.outlier_detection.max_ejected_percent)
        })
}

/// How long until some member of `dep`'s pool is usable again for a request estimated at
/// `tokens` (at least 100 ms): the `Retry-After` of a `pool_exhausted` answer.
fn soonest_usable(snapshot: &Snapshot, dep: &Deployment, tokens: u64) -> Duration {
    let now = now_millis();
    let soonest = dep
        .pool
        .iter()
        .filter_map(|m| snapshot.backends.get(m.backend))
        .map(|b| {
            b.health
                .usable_at(now)
                .max(b.health.capacity.free_at(now, tokens))
        })
        .min()
        .unwrap_or(now);
    Duration::from_millis(soonest.saturating_sub(now).max(100))
}

/// How to reach `backend` for `dep`'s request `op`; `None` for the built-in mock.
fn http_target<'a>(
    backend: &'a Backend,
    dep: &'a Deployment,
    op: Operation,
) -> Option<HttpTarget<'a>> {
    Some(match &backend.kind {
        BackendKind::Mock(_) => return None,
        BackendKind::Azure(a) => HttpTarget {
            upstream: &a.upstream,
            style: Style::Azure {
                deployment: &a.deployment,
                api_version: &a.api_version,
            },
            credential: a.api_key.as_ref().map(|k| (&b"api-key"[..], &b""[..], k)),
            model: ModelPin {
                model: &a.deployment,
                // Azure's /openai/v1/responses names the deployment in the body.
                insert: op == Operation::Responses,
            },
        },
        BackendKind::OpenAi(o) => HttpTarget {
            upstream: &o.upstream,
            style: Style::OpenAi,
            credential: o
                .api_key
                .as_ref()
                .map(|k| (&b"authorization"[..], &b"Bearer "[..], k)),
            model: ModelPin {
                model: o.model.as_deref().unwrap_or(&dep.name),
                insert: true,
            },
        },
    })
}

/// `body` (the attempt's) with its `model` set to `model` (see [`set_string_member`]):
/// from the member the connection found when `body` is the client's own, else found anew
/// (the body with `include_usage` added has other offsets).
pub(super) fn pin_model(
    ctx: &RequestCtx<'_>,
    body: &[u8],
    model: &str,
    insert: bool,
) -> Result<Option<Vec<u8>>, GatewayError> {
    let pinned = match &ctx.model_member {
        Some(found) if !ctx.upstream.injected_body => found
            .as_ref()
            .map_err(|e| *e)
            .and_then(|member| set_string_member_at(body, member, "model", model, insert)),
        _ => set_string_member(body, "model", model, insert),
    };
    pinned.map_err(|e| e.into_gateway_error("model"))
}
