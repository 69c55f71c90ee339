//! One client connection: read a request head within its limits, read the body, route it,
//! and hand it to the mock, the models list or the upstream forwarder; repeat while the
//! connection is kept alive (pipelined requests are served in order from the same buffer).
//!
//! Buffers live for the whole connection and are reused, so a request in steady state does
//! not allocate.

use std::net::SocketAddr;
use std::ops::Range;
use std::rc::Rc;
use std::time::{Duration, Instant};

use monoio::io::AsyncWriteRent;
use monoio::net::TcpStream;

use super::body_deadline::BodyDeadline;
use super::forward::refused_header_name;
use super::io::{read_more, read_more_within, write_all_within};
use super::local;
use super::pool::Tenant;
use super::stream_usage::StreamPlan;
use super::usage_tap::{Charge, Counted, UsageTap};
use super::worker::{RequestId, View, Worker};
use crate::error::GatewayError;
use crate::http::{parse_request, BodyFraming, ChunkedDecoder, Parse, RequestHead, ResponseHead};
use crate::json_edit;
use crate::policy::admission::{admit, gate_client_ip, settle, Admission, Ask, Outcome};
use crate::policy::identity::{authorize, authorize_operation};
use crate::route::{route, DeploymentRef, Operation, RouteError};
use crate::snapshot::access::LimitUnit;
use crate::snapshot::HeadersWithUnderscores;
use crate::tokens::estimate::{reservation, FactsError, RequestFacts};

/// Whether the connection goes on after a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Next {
    KeepAlive,
    Close,
}

/// A client connection and its reusable buffers.
pub(super) struct Client {
    pub(super) stream: TcpStream,
    pub(super) peer: SocketAddr,
    /// Bytes read from the client: the current head at `[..head.head_len]`, then whatever
    /// followed it (body bytes, pipelined requests).
    pub(super) buf: Vec<u8>,
    /// The current request's decoded body.
    pub(super) body: Vec<u8>,
    /// The current request's parsed head (ranges into `buf`).
    pub(super) head: RequestHead,
    /// Bytes of `buf` the current request used (head and raw body).
    consumed: usize,
    /// Bytes read past the body while reading it (the next pipelined request).
    overflow: Vec<u8>,
    /// What goes to the client next.
    pub(super) out: Vec<u8>,
    /// The upstream request being sent.
    pub(super) req: Vec<u8>,
    /// Bytes read from the upstream.
    pub(super) ubuf: Vec<u8>,
    /// The upstream answer's parsed head (ranges into `ubuf`).
    pub(super) resp: ResponseHead,
    /// Decoded chunk data on its way to the client.
    pub(super) scratch: Vec<u8>,
    /// Selection candidates, reused.
    pub(super) candidates: Vec<usize>,
    /// Header lines every answer to the current request carries (x-ratelimit-*).
    pub(super) extra: Vec<u8>,
    /// The trace of the current request, when the client asked and may have it.
    pub(super) trace: Option<String>,
    /// Reads the answer's token usage, when a token limit must be settled.
    pub(super) usage: UsageTap,
    /// What the usage tap lets through when it filters, reused.
    pub(super) filtered: Vec<u8>,
    /// How the current request's stream is accounted (a streamed chat or completions
    /// request under a token limit), resolved per attempt ([`Client::plan_attempt`]).
    pub(super) stream_plan: Option<StreamPlan>,
    /// The current request's body with `stream_options.include_usage` added, built on the
    /// first attempt that sends it.
    pub(super) injected: Option<Vec<u8>>,
    /// The connection ends after an error answer: drain what the client is still sending
    /// before closing, so the kernel does not reset the connection under the answer.
    linger: bool,
    /// Whose upstream connections the current request may use (see [`Tenant`]).
    pub(super) tenant: Tenant,
    /// How long one write to this client may take (`server.timeouts.send` of the snapshot
    /// the current request runs on).
    pub(super) send_timeout: Duration,
    /// No request has been read on this connection yet: its first head is due `head_read`
    /// after the accept, not after `keepalive_idle`.
    fresh: bool,
}

/// Serves one client connection until it closes, errs, idles out or the worker shuts down.
pub(super) async fn serve(worker: &Rc<Worker>, stream: TcpStream, peer: SocketAddr) {
    let _ = stream.set_nodelay(true);
    let mut client = Client {
        stream,
        peer,
        buf: Vec::with_capacity(8 * 1024),
        body: Vec::new(),
        head: RequestHead::new(),
        consumed: 0,
        overflow: Vec::new(),
        out: Vec::with_capacity(4 * 1024),
        req: Vec::new(),
        ubuf: Vec::new(),
        resp: ResponseHead::new(),
        scratch: Vec::new(),
        candidates: Vec::new(),
        linger: false,
        fresh: true,
        tenant: Tenant::Address(peer.ip()),
        send_timeout: crate::snapshot::Timeouts::default().send,
        extra: Vec::new(),
        trace: None,
        usage: UsageTap::Off,
        filtered: Vec::new(),
        stream_plan: None,
        injected: None,
    };
    loop {
        let view = worker.view();
        if client.one_request(worker, &view).await == Next::Close {
            break;
        }
        client.finish_request();
    }
    if client.linger {
        client.lingering_close().await;
    }
}

/// Most of a declared Content-Length reserved before its bytes arrive; the body grows past
/// it as they do.
const BODY_RESERVE_CAP: usize = 256 * 1024;

/// How long and how much a lingering close reads before giving up.
const LINGER_TIME: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 1024 * 1024;

impl Client {
    /// Drops the finished request's bytes, keeping what follows (a pipelined request).
    fn finish_request(&mut self) {
        self.buf.drain(..self.consumed.min(self.buf.len()));
        if !self.overflow.is_empty() {
            self.buf.extend_from_slice(&self.overflow);
            self.overflow.clear();
        }
        self.consumed = 0;
        self.fresh = false;
    }

    async fn one_request(&mut self, worker: &Worker, view: &View) -> Next {
        let server = &view.snapshot.server;
        let (limits, timeouts) = (server.limits, server.timeouts);
        self.send_timeout = timeouts.send;

        // Wait for the next request, racing the idle timeout and shutdown. A new connection's
        // head_read runs from the accept, so one that sends nothing is not kept for the whole
        // keepalive_idle; later heads get head_read from their first byte.
        let mut head_due = None;
        if self.buf.is_empty() {
            let idle = if self.fresh {
                head_due = Some(Instant::now() + timeouts.head_read);
                timeouts.head_read.min(timeouts.keepalive_idle)
            } else {
                timeouts.keepalive_idle
            };
            let buf = std::mem::take(&mut self.buf);
            let read = monoio::select! {
                r = monoio::time::timeout(idle, read_more(&mut self.stream, buf)) => Some(r),
                _ = worker.shutdown.wait() => None,
            };
            match read {
                Some(Ok((Ok(n), buf))) if n > 0 => self.buf = buf,
                _ => return Next::Close,
            }
        }

        // Read the head within head_read (in total: reads do not restart it).
        let deadline = head_due.unwrap_or_else(|| Instant::now() + timeouts.head_read);
        loop {
            match parse_request(&self.buf, &limits, &mut self.head) {
                Ok(Parse::Complete) => break,
                Ok(Parse::Partial) => {}
                Err(e) => {
                    // A malformed head counts against its address too (its answer is this
                    // error whatever the limit says).
                    self.count_client_ip(worker, view);
                    let err = GatewayError::bad_framing(e.status(), e.message());
                    return self
                        .respond_error(worker.next_request_id(), &err, true)
                        .await;
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let buf = std::mem::take(&mut self.buf);
            match read_more_within(&mut self.stream, buf, left).await {
                Ok((Ok(n), buf)) if n > 0 => self.buf = buf,
                Ok((_, buf)) => {
                    // A head begun and abandoned is a request too.
                    if !buf.is_empty() {
                        self.count_client_ip(worker, view);
                    }
                    return Next::Close;
                }
                Err(_) => {
                    self.count_client_ip(worker, view);
                    let err = GatewayError::bad_framing(
                        408,
                        "Request timeout: the request head did not arrive in time.",
                    );
                    return self
                        .respond_error(worker.next_request_id(), &err, true)
                        .await;
                }
            }
        }

        let rid = self
            .head
            .header(&self.buf, "x-request-id")
            .and_then(RequestId::from_client)
            .unwrap_or_else(|| worker.next_request_id());
        // HTTP/1.0 clients get one request per connection: keeping them alive would need a
        // `connection: keep-alive` answer and close-delimited streams, for a legacy protocol.
        let close =
            !self.head.keep_alive || self.head.minor_version == 0 || worker.shutdown.is_fired();

        let access = &view.snapshot.access;

        // The client-IP gate comes first: every request counts against its address, whatever
        // becomes of it (an unknown path, a wrong key), since that limit is what slows down
        // credential guessing.
        let gate = match gate_client_ip(
            &worker.limits,
            access,
            &view.snapshot.runtime.limit_ids,
            self.peer.ip(),
        ) {
            Ok(gate) => gate,
            Err(err) => return self.refuse(rid, &err, close).await,
        };

        // Header names a backend could fold into framing or credentials, refused outright
        // when so configured (else they are dropped when the request is forwarded).
        if server.headers_with_underscores == HeadersWithUnderscores::RejectRequest {
            if let Some(err) = refused_header_name(&self.buf, &self.head.headers) {
                return self.refuse(rid, &err, close).await;
            }
        }

        // Route and authenticate before reading the body: a refused request's body is never
        // read (nor asked for with `100 Continue`).
        let routed = match route(self.head.method(&self.buf), self.head.target(&self.buf)) {
            Ok(r) => Ok((r.operation, self.deployment_range(r.deployment))),
            Err(e) => Err(match e {
                RouteError::NotFound => GatewayError::not_found(),
                RouteError::MethodNotAllowed(m) => GatewayError::method_not_allowed(m),
                RouteError::MissingApiVersion => GatewayError::invalid_request(
                    "Missing required query parameter: api-version.",
                    Some("api-version"),
                ),
            }),
        };
        let (op, deployment) = match routed {
            Ok(r) => r,
            Err(err) => return self.refuse(rid, &err, close).await,
        };
        let caller = match &view.snapshot.runtime.identity {
            Some(identity) => {
                match identity.authenticate(access, &self.head, &self.buf, unix_now()) {
                    Ok(caller) => Some(caller),
                    Err(err) => return self.refuse(rid, &err, close).await,
                }
            }
            None => None,
        };

        if let Err(err) = self.read_body(&limits, &timeouts).await {
            return match err {
                Some(err) => self.respond_error(rid, &err, true).await,
                None => Next::Close,
            };
        }

        if op == Operation::Models {
            // The list names what the caller's product allows.
            let product = match &caller {
                Some(c) => match authorize_operation(access, c, op) {
                    Ok(p) => Some(p),
                    Err(err) => return self.respond_error(rid, &err, close).await,
                },
                None => None,
            };
            let mut out = std::mem::take(&mut self.out);
            out.clear();
            let allowed = |name: &str| product.is_none_or(|p| p.deployments.contains(name));
            local::models_response(&mut out, &view.snapshot, allowed, &rid, close);
            return self.write_out(out, close).await;
        }
        let name = match self.deployment_name(deployment) {
            Ok(name) => name,
            Err(err) => return self.respond_error(rid, &err, close).await,
        };
        let Some(dep) = view.snapshot.deployments.get(&*name) else {
            let err = GatewayError::deployment_not_found(&name);
            return self.respond_error(rid, &err, close).await;
        };
        let product = match &caller {
            Some(c) => match authorize(access, c, &dep.name, op) {
                Ok(p) => Some(p),
                Err(err) => return self.respond_error(rid, &err, close).await,
            },
            None => None,
        };

        // Limits: reserve the token estimate only when a token limit applies.
        let product_limits = product.map_or(&[][..], |p| p.limits.as_slice());
        let counts_tokens = product_limits
            .iter()
            .chain(&dep.limits)
            .chain(&access.client_ip_limits)
            .any(|&i| {
                access
                    .limits
                    .get(i)
                    .is_some_and(|l| l.unit == LimitUnit::Tokens)
            });
        let mut stream_plan = None;
        // The prompt's estimate, for a stream charged its counted completion.
        let mut prompt = 0;
        let tokens = if counts_tokens {
            let facts = match RequestFacts::parse(op, &self.body) {
                Ok(facts) => facts,
                // A body Sluice cannot read is refused, not charged a guess and forwarded: a
                // more lenient backend (NaN, lone surrogates, numbers out of range) would
                // read caps and streams Sluice never saw.
                Err(FactsError::NotJson(e)) => {
                    let err = GatewayError::invalid_request(
                        format!("We could not parse the JSON body of your request ({e}). The body must be a JSON object."),
                        None,
                    );
                    return self.respond_error(rid, &err, close).await;
                }
                // Sluice and the backend must read the same request: refused before either
                // decides anything on it.
                Err(FactsError::Refused(refusal)) => {
                    let err =
                        GatewayError::invalid_request(refusal.to_string(), Some(refusal.param));
                    return self.respond_error(rid, &err, close).await;
                }
            };
            let estimator = dep
                .tokens
                .estimator
                .for_model(facts.model.as_deref().unwrap_or(&dep.name));
            prompt = estimator.estimate_prompt(&facts);
            stream_plan = StreamPlan::for_request(&facts, dep.tokens.stream_usage, estimator);
            reservation(&facts, prompt, dep.tokens.default_max_tokens)
        } else {
            0
        };
        let trace = access.trace_header && product.is_some_and(|p| p.trace) && self.wants_trace();
        let ask = Ask {
            access,
            ids: &view.snapshot.runtime.limit_ids,
            caller: caller.as_ref().zip(product),
            deployment: &dep.name,
            deployment_limits: &dep.limits,
            client_ip: self.peer.ip(),
            tokens,
            trace,
        };
        let mut admission = match admit(&worker.limits, &ask, gate) {
            Ok(a) => a,
            Err(err) => return self.respond_error(rid, &err, close).await,
        };
        self.extra.clear();
        rate_limit_headers(&mut self.extra, &admission);
        self.trace = trace.then(|| {
            let subscription = caller
                .as_ref()
                .and_then(|c| access.subscriptions.get(c.subscription))
                .map_or("-", |s| s.name.as_str());
            let mut t = format!(
                "route={} deployment={}; subscription={subscription}",
                op.path_suffix(),
                dep.name
            );
            for line in &admission.trace {
                t.push_str("; limit ");
                t.push_str(line);
            }
            t
        });
        // Usage is read (and asked for) only when a token limit holds a reservation.
        self.stream_plan = stream_plan.filter(|_| admission.counts_tokens());
        self.usage = UsageTap::new(admission.counts_tokens());
        self.tenant = match caller
            .as_ref()
            .and_then(|c| access.subscriptions.get(c.subscription))
        {
            Some(subscription) => Tenant::subscription(&subscription.name),
            None => Tenant::Address(self.peer.ip()),
        };
        let next = self.proxy(worker, view, op, dep, &rid, close).await;
        let used = match self.usage.charge() {
            Charge::Usage(usage) => Some(usage.total_tokens),
            Charge::Nothing => Some(0),
            // The reservation stands: an answer whose usage is unknown is never free.
            Charge::Estimate(why) => {
                tracing::info!(
                    request_id = %String::from_utf8_lossy(rid.as_bytes()),
                    deployment = %dep.name,
                    "{}: charged the estimate",
                    why.as_str()
                );
                None
            }
            Charge::Counted(counted) => {
                let used = counted.tokens(u64::from(prompt), tokens);
                let Counted {
                    completion,
                    whole,
                    reported,
                } = counted;
                tracing::info!(
                    request_id = %String::from_utf8_lossy(rid.as_bytes()),
                    deployment = %dep.name,
                    prompt_estimate = prompt,
                    completion_counted = completion,
                    reported_total = reported.map(|u| u.total_tokens),
                    charged = used,
                    "{}",
                    match (reported, whole) {
                        (Some(_), _) => "stream not asked for usage carried one: charged the larger of it and the prompt estimate plus the completion counted by Sluice",
                        (None, true) => "stream carried no usage: charged the prompt estimate plus the completion counted by Sluice (usage not reported by the backend)",
                        (None, false) => "stream without usage cut short: charged the larger of its reservation and the prompt estimate plus the completion counted by Sluice",
                    }
                );
                Some(used)
            }
        };
        settle(&worker.limits, &mut admission, Outcome::Used(used));
        self.extra.clear();
        self.trace = None;
        self.usage = UsageTap::Off;
        self.stream_plan = None;
        self.injected = None;
        next
    }

    /// The extra header lines of the current answer: rate-limit state, and the trace (with
    /// the backend that served, once chosen).
    pub(super) fn extra_headers(&self) -> std::borrow::Cow<'_, [u8]> {
        match &self.trace {
            None => std::borrow::Cow::Borrowed(&self.extra),
            Some(trace) => {
                let mut all = self.extra.clone();
                local::header(&mut all, b"x-sluice-trace", trace.as_bytes());
                std::borrow::Cow::Owned(all)
            }
        }
    }

    /// Whether the client asked for the trace header (`Ocp-Apim-Trace: true` or
    /// `x-sluice-trace: true`).
    fn wants_trace(&self) -> bool {
        ["ocp-apim-trace", "x-sluice-trace"].iter().any(|h| {
            self.head
                .header(&self.buf, h)
                .is_some_and(|v| v.eq_ignore_ascii_case(b"true"))
        })
    }

    /// Where the deployment name is: a range of `buf` (Azure path) or the body's `model`.
    fn deployment_range(&self, d: DeploymentRef<'_>) -> Option<Range<usize>> {
        match d {
            DeploymentRef::Path(name) => {
                let start = name.as_ptr() as usize - self.buf.as_ptr() as usize;
                Some(start..start + name.len())
            }
            DeploymentRef::BodyModel | DeploymentRef::None => None,
        }
    }

    fn deployment_name(
        &self,
        range: Option<Range<usize>>,
    ) -> Result<std::borrow::Cow<'_, str>, GatewayError> {
        if let Some(r) = range {
            return Ok(String::from_utf8_lossy(&self.buf[r]));
        }
        let (_, span) = json_edit::top_member(&self.body, b"model")
            .map_err(|e| e.into_gateway_error("model"))?;
        let model = span.and_then(|span| {
            serde_json::from_slice::<std::borrow::Cow<'_, str>>(&self.body[span]).ok()
        });
        match model {
            Some(m) if !m.is_empty() => Ok(m),
            _ => Err(GatewayError::invalid_request(
                "You must provide a model parameter.",
                Some("model"),
            )),
        }
    }

    /// Reads the request body into `self.body`. `Err(Some(e))`: answer `e` and close;
    /// `Err(None)`: the client went away.
    ///
    /// The whole body is due `timeouts.body_read` after the head, and sooner when it arrives
    /// slower on average than `limits.min_body_rate` once `timeouts.body_rate_grace` has
    /// passed ([`BodyDeadline`]); each read waits only what is left, so a trickling client
    /// cannot stretch it. Past it → 408 and close. The clock is read only when a read must
    /// wait (not for a body that came with its head).
    async fn read_body(
        &mut self,
        limits: &crate::snapshot::HttpLimits,
        timeouts: &crate::snapshot::Timeouts,
    ) -> Result<(), Option<GatewayError>> {
        self.body.clear();
        let head_len = self.head.head_len;
        let framing = match self.head.body {
            BodyFraming::None | BodyFraming::Length(0) => {
                self.consumed = head_len;
                return Ok(());
            }
            f => f,
        };
        if self.head.expect_continue && self.buf.len() == head_len {
            let mut out = std::mem::take(&mut self.out);
            out.clear();
            out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
            let (res, out) = self.write_client(out).await;
            self.out = out;
            res.map_err(|_| None)?;
        }
        let mut due: Option<BodyDeadline> = None;
        // How long the next read may wait, with `received` bytes of the body arrived.
        let mut allowance = |received: usize| {
            let now = Instant::now();
            due.get_or_insert_with(|| {
                BodyDeadline::new(
                    now,
                    timeouts.body_read,
                    timeouts.body_rate_grace,
                    limits.min_body_rate,
                )
            })
            .left(now, received as u64)
            .ok_or_else(|| Some(body_timeout()))
        };
        match framing {
            BodyFraming::Length(n) => {
                let n = usize::try_from(n).map_err(|_| None)?;
                let avail = self.buf.len() - head_len;
                if avail >= n {
                    self.body
                        .extend_from_slice(&self.buf[head_len..head_len + n]);
                    self.consumed = head_len + n;
                    return Ok(());
                }
                // What the client declared, up to a cap: memory follows the bytes that
                // arrive, not a promise (a thousand slow 32 MiB bodies must not reserve 32 GiB).
                self.body.reserve(n.min(BODY_RESERVE_CAP));
                self.body.extend_from_slice(&self.buf[head_len..]);
                self.consumed = self.buf.len();
                while self.body.len() < n {
                    let left = allowance(self.body.len())?;
                    let body = std::mem::take(&mut self.body);
                    match read_more_within(&mut self.stream, body, left).await {
                        Ok((Ok(k), body)) if k > 0 => self.body = body,
                        Ok(_) => return Err(None),
                        Err(_) => return Err(Some(body_timeout())),
                    }
                }
                if self.body.len() > n {
                    self.overflow.extend_from_slice(&self.body[n..]);
                    self.body.truncate(n);
                }
                Ok(())
            }
            _ => {
                let mut decoder = ChunkedDecoder::new(limits.max_body);
                let mut pos = head_len;
                // Raw bytes of the body received (chunk framing included).
                let mut received = self.buf.len() - head_len;
                loop {
                    match decoder.decode(&self.buf[pos..], &mut self.body) {
                        Ok(d) => {
                            pos += d.consumed;
                            if d.done {
                                self.consumed = pos;
                                return Ok(());
                            }
                        }
                        Err(e) => {
                            let status = e.status();
                            return Err(Some(GatewayError::bad_framing(status, e.message())));
                        }
                    }
                    // Keep the head, drop the raw chunk bytes already decoded.
                    self.buf.drain(head_len..pos);
                    pos = head_len;
                    let left = allowance(received)?;
                    let buf = std::mem::take(&mut self.buf);
                    match read_more_within(&mut self.stream, buf, left).await {
                        Ok((Ok(k), buf)) if k > 0 => {
                            received += k;
                            self.buf = buf;
                        }
                        Ok(_) => return Err(None),
                        Err(_) => return Err(Some(body_timeout())),
                    }
                }
            }
        }
    }

    /// Counts a request that ends before its head was whole (malformed, too large, too slow)
    /// against the requests-unit client-IP limits, as every request is; its answer is already
    /// decided (the error), so a refusal here changes nothing but the count.
    fn count_client_ip(&self, worker: &Worker, view: &View) {
        let snapshot = &view.snapshot;
        let _ = gate_client_ip(
            &worker.limits,
            &snapshot.access,
            &snapshot.runtime.limit_ids,
            self.peer.ip(),
        );
    }

    /// Answers a request refused before its body was read. A body already wholly in the
    /// buffer (Content-Length) is stepped over and the connection goes on; one still on its
    /// way is never read: the answer carries `connection: close` and the connection ends
    /// with the bounded lingering close, so a 404 or 401 never waits for a body.
    async fn refuse(&mut self, rid: RequestId, err: &GatewayError, close: bool) -> Next {
        let end = match self.head.body {
            BodyFraming::None => Some(self.head.head_len),
            BodyFraming::Length(n) => usize::try_from(n)
                .ok()
                .and_then(|n| self.head.head_len.checked_add(n))
                .filter(|&end| end <= self.buf.len()),
            BodyFraming::Chunked => None,
        };
        if let Some(end) = end {
            self.consumed = end;
        }
        self.respond_error(rid, err, close || end.is_none()).await
    }

    /// Answers `err` in the OpenAI shape.
    pub(super) async fn respond_error(
        &mut self,
        rid: RequestId,
        err: &GatewayError,
        close: bool,
    ) -> Next {
        let mut out = std::mem::take(&mut self.out);
        out.clear();
        local::error_response(&mut out, err, &rid, close);
        self.linger |= close || err.close;
        self.write_out(out, close || err.close).await
    }

    /// Half-closes, then reads and discards what the client still sends (bounded in time and
    /// bytes), so the error answer is not lost to a reset.
    async fn lingering_close(&mut self) {
        if self.stream.shutdown().await.is_err() {
            return;
        }
        let deadline = Instant::now() + LINGER_TIME;
        let mut drained = 0;
        let mut buf = std::mem::take(&mut self.buf);
        while drained < LINGER_BYTES {
            buf.clear();
            let left = deadline.saturating_duration_since(Instant::now());
            match read_more_within(&mut self.stream, buf, left).await {
                Ok((Ok(n), b)) if n > 0 => {
                    drained += n;
                    buf = b;
                }
                _ => return,
            }
        }
    }

    /// Writes all of `buf` to the client within the send timeout (a client that stopped
    /// reading fails the write, and its connection then closes).
    pub(super) async fn write_client(&mut self, buf: Vec<u8>) -> (std::io::Result<()>, Vec<u8>) {
        write_all_within(&mut self.stream, buf, self.send_timeout).await
    }

    /// Writes `out` to the client and keeps it for reuse.
    pub(super) async fn write_out(&mut self, out: Vec<u8>, close: bool) -> Next {
        let (res, out) = self.write_client(out).await;
        self.out = out;
        if res.is_err() || close {
            Next::Close
        } else {
            Next::KeepAlive
        }
    }
}

/// The answer to a body that missed its deadline (408, and the connection closes).
fn body_timeout() -> GatewayError {
    GatewayError::bad_framing(
        408,
        "Request timeout: the request body did not arrive in time.",
    )
}

/// Seconds since the Unix epoch (for JWT expiry).
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The `x-ratelimit-*` lines for the tightest requests and tokens limits that applied.
fn rate_limit_headers(out: &mut Vec<u8>, admission: &Admission) {
    let mut num = itoa::Buffer::new();
    if let Some((limit, remaining)) = admission.requests {
        local::header(
            out,
            b"x-ratelimit-limit-requests",
            num.format(limit).as_bytes(),
        );
        local::header(
            out,
            b"x-ratelimit-remaining-requests",
            // A worker's lease can hold tokens while the shared bucket refills to full: the
            // sum may pass the limit, but no client is told it has more than the limit.
            num.format(remaining.min(limit)).as_bytes(),
        );
    }
    if let Some((limit, remaining)) = admission.tokens {
        local::header(
            out,
            b"x-ratelimit-limit-tokens",
            num.format(limit).as_bytes(),
        );
        local::header(
            out,
            b"x-ratelimit-remaining-tokens",
            // A worker's lease can hold tokens while the shared bucket refills to full: the
            // sum may pass the limit, but no client is told it has more than the limit.
            num.format(remaining.min(limit)).as_bytes(),
        );
    }
}
