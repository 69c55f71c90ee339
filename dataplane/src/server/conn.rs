//! One client connection: read a request head within its limits, give the request its
//! context, run it through the pipeline's request phases (reading the body between them),
//! and answer it — the models list here, everything else through the upstream leg
//! ([`crate::upstream`]); repeat while the connection is kept alive (pipelined requests are
//! served in order from the same buffer).
//!
//! Buffers live for the whole connection and are reused, so a request in steady state does
//! not allocate.

use std::net::SocketAddr;
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::{Duration, Instant};

use monoio::io::AsyncWriteRent;
use monoio::net::TcpStream;

use super::body_deadline::BodyDeadline;
use super::per_core::{View, Worker};
use crate::answers;
use crate::audit::content::Redactor;
use crate::auth::keys::KeyCheck;
use crate::downstream::{Downstream, Next};
use crate::error::{ErrorKind, GatewayError};
use crate::http::{parse_request, BodyFraming, ChunkedDecoder, Parse};
use crate::json_edit::{EditError, Member};
use crate::limit::SystemClock;
use crate::policy::admission::gate_client_ip;
use crate::policy::context::{Attempt, AttemptOutcome, End, RequestCtx, RequestId};
use crate::policy::phase::{Env, Pipeline, Policy, Request};
use crate::policy::trace::answer_headers;
use crate::route::{route, DeploymentRef, Operation};
use crate::snapshot::HeadersWithUnderscores;
use crate::socket::{read_more, read_more_within, ClientStream};
use crate::upstream::{refused_header_name, Exchange, Leg};

/// A client connection: its side of each exchange, the upstream leg's buffers, and what the
/// connection itself keeps between requests.
pub(super) struct Client {
    /// The client's socket, its current request and the writes that answer it.
    down: Downstream,
    /// The upstream leg's buffers.
    leg: Leg,
    /// Bytes of `down.buf` the current request used (head and raw body).
    consumed: usize,
    /// Bytes read past the body while reading it (the next pipelined request).
    overflow: Vec<u8>,
    /// The attempts buffer of the request contexts, reused.
    attempts: Vec<Attempt>,
    /// The answer-header buffer of the request contexts, reused.
    answer_headers: Vec<u8>,
    /// No request has been read on this connection yet: its first head is due `head_read`
    /// after the accept, not after `keepalive_idle`.
    fresh: bool,
}

/// Serves one client connection until it closes, errs, idles out or the worker shuts down,
/// each request through `policies`.
pub(super) async fn serve<P: Policy>(
    worker: &Rc<Worker>,
    policies: &P,
    stream: TcpStream,
    peer: SocketAddr,
    tls: bool,
) {
    let _ = stream.set_nodelay(true);
    let stream = if tls {
        match handshake(worker, stream, peer).await {
            Some(stream) => stream,
            None => return,
        }
    } else {
        ClientStream::Plain(stream)
    };
    let mut client = Client {
        down: Downstream::new(stream, peer, crate::snapshot::Timeouts::default().send),
        leg: Leg::default(),
        consumed: 0,
        overflow: Vec::new(),
        attempts: Vec::new(),
        answer_headers: Vec::new(),
        fresh: true,
    };
    loop {
        let view = worker.view();
        if client.one_request(worker, policies, &view).await == Next::Close {
            break;
        }
        client.finish_request();
    }
    if client.down.linger {
        client.lingering_close().await;
    } else if matches!(client.down.stream, ClientStream::Tls { .. }) {
        // TLS ends with close_notify (RFC 8446 §6.1), so the client can tell the end of the
        // connection from a cut; bounded like any write.
        let _ =
            monoio::time::timeout(client.down.send_timeout, client.down.stream.shutdown()).await;
    }
}

/// The TLS handshake of a connection accepted on a `tls_listen` address, with the
/// certificates of the config in force now and within its `handshake_timeout`. A failed,
/// refused or stalled handshake closes the connection, is counted
/// ([`Worker::tls_handshake_failures`]) and logged at debug: plaintext, garbage and port
/// scans are the client's business, and cost one small read and a close.
async fn handshake(worker: &Worker, stream: TcpStream, peer: SocketAddr) -> Option<ClientStream> {
    let view = worker.view();
    let Some(tls) = view.snapshot.server.tls.clone() else {
        // The reload that removed [server.tls] warned once; each connection is debug only,
        // so clients cannot flood the log.
        tracing::debug!(%peer, "TLS connection on a listener the config in force has no [server.tls] for; closing");
        return None;
    };
    drop(view);
    let fd = stream.as_raw_fd();
    let failed = |reason: &dyn std::fmt::Display| {
        worker
            .tls_handshake_failures
            .set(worker.tls_handshake_failures.get() + 1);
        tracing::debug!(%peer, reason = %reason, "TLS handshake failed");
    };
    let (acceptor, subject) = tls.acceptor();
    match monoio::time::timeout(tls.handshake_timeout, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => Some(ClientStream::Tls {
            stream: Box::new(stream),
            fd,
            client_cert: subject.and_then(|s| s.lock().ok().and_then(|mut s| s.take())),
        }),
        Ok(Err(e)) => {
            failed(&crate::tls::handshake_error(&e));
            None
        }
        Err(_) => {
            failed(&"timed out");
            None
        }
    }
}

/// Most of a declared Content-Length reserved before its bytes arrive; the body grows past
/// it as they do.
const BODY_RESERVE_CAP: usize = 256 * 1024;

/// How long and how much a lingering close reads before giving up.
const LINGER_TIME: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 1024 * 1024;
/// How long the 503 of a request cut by the end of the shutdown grace may take to write.
const CUT_ANSWER_WITHIN: Duration = Duration::from_millis(300);

impl Client {
    /// Drops the finished request's bytes, keeping what follows (a pipelined request).
    fn finish_request(&mut self) {
        self.down
            .buf
            .drain(..self.consumed.min(self.down.buf.len()));
        if !self.overflow.is_empty() {
            self.down.buf.extend_from_slice(&self.overflow);
            self.overflow.clear();
        }
        self.consumed = 0;
        self.fresh = false;
    }

    async fn one_request<P: Policy>(&mut self, worker: &Worker, policies: &P, view: &View) -> Next {
        let server = &view.snapshot.server;
        let (limits, timeouts) = (server.limits, server.timeouts);
        self.down.send_timeout = timeouts.send;

        // Wait for the next request, racing the idle timeout and shutdown. A new connection's
        // head_read runs from the accept, so one that sends nothing is not kept for the whole
        // keepalive_idle; later heads get head_read from their first byte.
        let mut head_due = None;
        if self.down.buf.is_empty() {
            let idle = if self.fresh {
                head_due = Some(Instant::now() + timeouts.head_read);
                timeouts.head_read.min(timeouts.keepalive_idle)
            } else {
                timeouts.keepalive_idle
            };
            let buf = std::mem::take(&mut self.down.buf);
            let read = monoio::select! {
                r = monoio::time::timeout(idle, read_more(&mut self.down.stream, buf)) => Some(r),
                _ = worker.shutdown.wait() => None,
            };
            match read {
                Some(Ok((Ok(n), buf))) if n > 0 => self.down.buf = buf,
                _ => return Next::Close,
            }
        }

        // Read the head within head_read (in total: reads do not restart it).
        let deadline = head_due.unwrap_or_else(|| Instant::now() + timeouts.head_read);
        loop {
            match parse_request(&self.down.buf, &limits, &mut self.down.head) {
                Ok(Parse::Complete) => break,
                Ok(Parse::Partial) => {}
                Err(e) => {
                    // A malformed head counts against its address too (its answer is this
                    // error whatever the limit says).
                    self.count_client_ip(worker, view);
                    let err = GatewayError::from(e);
                    return self
                        .down
                        .respond_error(worker.next_request_id(), &err, true)
                        .await;
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let buf = std::mem::take(&mut self.down.buf);
            match read_more_within(&mut self.down.stream, buf, left).await {
                Ok((Ok(n), buf)) if n > 0 => self.down.buf = buf,
                Ok((_, buf)) => {
                    // A head begun and abandoned is a request too.
                    if !buf.is_empty() {
                        self.count_client_ip(worker, view);
                    }
                    return Next::Close;
                }
                Err(_) => {
                    self.count_client_ip(worker, view);
                    let err = GatewayError::request_timeout(
                        "Request timeout: the request head did not arrive in time.",
                    );
                    return self
                        .down
                        .respond_error(worker.next_request_id(), &err, true)
                        .await;
                }
            }
        }

        // The head is parsed: from here on the request has a context, and `on_complete` runs
        // once whatever becomes of it. A client's id that a redaction pattern matches, or
        // that is a subscription key (a key sent as an id), would put a credential in every
        // log line and record: Sluice's own id replaces it.
        let redactor: &Redactor = match view.snapshot.audit.as_ref() {
            Some(audit) => audit.redactor(),
            None => Redactor::defaults(),
        };
        let rid = self
            .down
            .head
            .header(&self.down.buf, "x-request-id")
            .and_then(RequestId::from_client)
            .filter(|id| {
                !redactor.matches(id.as_str())
                    && view.snapshot.snapshot.access.keys.lookup(id.as_bytes()) == KeyCheck::Unknown
            })
            .unwrap_or_else(|| worker.next_request_id());
        let mut ctx = RequestCtx::new(
            &view.snapshot.snapshot,
            rid,
            self.down.peer.ip(),
            Instant::now(),
            std::mem::take(&mut self.attempts),
            std::mem::take(&mut self.answer_headers),
        );
        ctx.client_cert = self.down.stream.client_cert().cloned();
        let pipeline = Pipeline {
            policies,
            env: Env {
                snapshot: &view.snapshot.snapshot,
                runtime: &view.snapshot.runtime,
                limits: &worker.limits,
                clock: &SystemClock,
                audit: view.snapshot.audit.as_ref(),
                audit_batch: &worker.audit_batch,
                worker: worker.id,
                metrics: &worker.metrics,
            },
        };
        (self.down.sent, self.down.first_out) = (0, None);
        self.down.write_failed = false;
        // The shutdown grace ending cuts the request wherever it is; it still completes.
        let exchanged = monoio::select! {
            next = crate::logging::in_request(rid, self.exchange(worker, view, &pipeline, &mut ctx)) => Some(next),
            _ = worker.grace_over.wait() => None,
        };
        if exchanged.is_none() {
            for attempt in &mut ctx.attempts {
                if attempt.outcome == AttemptOutcome::Pending {
                    attempt.outcome = AttemptOutcome::Cut;
                }
            }
        }
        let next = match exchanged {
            Some(next) => next,
            // Nothing went out yet: the client gets a 503 rather than a bare close.
            None if self.down.sent == 0 => {
                let err = GatewayError::new(
                    ErrorKind::ShuttingDown,
                    "The gateway shut down before this request was answered; it may have reached a backend.",
                );
                // Bounded: a client that does not read must not hold the worker's last second.
                let answer = self.down.answer_error(&mut ctx, &err, true);
                if monoio::time::timeout(CUT_ANSWER_WITHIN, answer)
                    .await
                    .is_err()
                {
                    ctx.end = End::ClientGone;
                }
                Next::Close
            }
            None => {
                ctx.end = End::Truncated;
                Next::Close
            }
        };
        if self.down.write_failed {
            // Whatever part of the relay noticed it first, the client is what failed.
            ctx.end = End::ClientGone;
        }
        ctx.bytes_out = self.down.sent;
        ctx.timings.first_byte_out = self.down.first_out;
        {
            let _scope = crate::logging::RequestScope::enter(rid);
            pipeline.on_complete(&mut ctx);
        }
        (self.attempts, self.answer_headers) = ctx.into_buffers();
        next
    }

    /// Takes a request whose head is parsed through the pipeline's phases to its answer.
    async fn exchange<'v, P: Policy>(
        &mut self,
        worker: &Worker,
        view: &'v View,
        pipeline: &Pipeline<'v, P>,
        ctx: &mut RequestCtx<'v>,
    ) -> Next {
        let server = &view.snapshot.server;
        // HTTP/1.0 clients get one request per connection: keeping them alive would need a
        // `connection: keep-alive` answer and close-delimited streams, for a legacy protocol.
        let close = !self.down.head.keep_alive
            || self.down.head.minor_version == 0
            || worker.shutdown.is_fired();

        // Header names a backend could fold into framing or credentials, refused outright
        // when so configured (else they are dropped when the request is forwarded); then the
        // route. Either refusal is answered after `on_request` (the client-IP gate counts
        // every request, whatever becomes of it) and before anything reads the body: a
        // refused request's body is never read (nor asked for with `100 Continue`).
        let mut deployment = None;
        let refused_name = (server.headers_with_underscores
            == HeadersWithUnderscores::RejectRequest)
            .then(|| refused_header_name(&self.down.buf, &self.down.head.headers))
            .flatten();
        let refused = match refused_name {
            Some(err) => Some(err),
            None => match route(
                self.down.head.method(&self.down.buf),
                self.down.head.target(&self.down.buf),
            ) {
                Ok(r) => {
                    ctx.operation = Some(r.operation);
                    deployment = self.deployment_range(r.deployment);
                    None
                }
                Err(e) => Some(GatewayError::from(e)),
            },
        };
        let flow = pipeline.on_request(ctx, &self.request());
        let op = match (flow.into_error().or(refused), ctx.operation) {
            (None, Some(op)) => op,
            (err, _) => {
                let err = err.unwrap_or_else(GatewayError::not_found);
                return self.refuse(ctx, &err, close).await;
            }
        };

        match self.read_body(&server.limits, &server.timeouts).await {
            Ok(raw) => ctx.bytes_in = (self.down.head.head_len + raw) as u64,
            Err(Some(err)) => return self.down.answer_error(ctx, &err, true).await,
            Err(None) => {
                ctx.end = End::ClientGone;
                return Next::Close;
            }
        }
        // The 100 Continue is not the answer.
        (self.down.sent, self.down.first_out) = (0, None);

        if op != Operation::Models {
            // The body's `model` is found once, for the route (OpenAI paths name the
            // deployment there) and for the pin of the forwarded body.
            ctx.model_member = Some(Member::find(&self.down.body, b"model"));
            let name = match self.deployment_name(deployment, ctx.model_member.as_ref()) {
                Ok(name) => name,
                Err(err) => return self.down.answer_error(ctx, &err, close).await,
            };
            let Some(dep) = view.snapshot.deployments.get(&*name) else {
                let err = GatewayError::deployment_not_found(&name);
                return self.down.answer_error(ctx, &err, close).await;
            };
            ctx.deployment = Some(dep);
        }
        if let Some(err) = pipeline.on_request_body(ctx, &self.request()).into_error() {
            return self.down.answer_error(ctx, &err, close).await;
        }

        let Some(dep) = ctx.deployment else {
            // The list names what the caller's product allows.
            let product = ctx.product;
            let mut out = std::mem::take(&mut self.down.out);
            out.clear();
            let allowed = |name: &str| product.is_none_or(|p| p.deployments.contains(name));
            let headers = answer_headers(ctx);
            answers::models_response(&mut out, &view.snapshot, allowed, &ctx.id, close, &headers);
            ctx.status = Some(200);
            return self.down.write_out(out, close).await;
        };
        if let Some(answer) = ctx.cache.hit() {
            return super::cached::replay(&mut self.down, pipeline, ctx, &answer, close).await;
        }
        Exchange {
            leg: &mut self.leg,
            down: &mut self.down,
        }
        .proxy(
            &worker.pools,
            &worker.retries,
            &view.balancers,
            pipeline,
            ctx,
            op,
            dep,
            close,
        )
        .await
    }

    /// The request as the phases see it.
    fn request(&self) -> Request<'_> {
        Request {
            head: &self.down.head,
            buf: &self.down.buf,
            body: &self.down.body,
        }
    }

    /// Where the deployment name is: a range of `buf` (Azure path) or the body's `model`.
    fn deployment_range(&self, d: DeploymentRef<'_>) -> Option<Range<usize>> {
        match d {
            DeploymentRef::Path(name) => {
                let start = name.as_ptr() as usize - self.down.buf.as_ptr() as usize;
                Some(start..start + name.len())
            }
            DeploymentRef::BodyModel | DeploymentRef::None => None,
        }
    }

    /// The deployment's name: from the path (`range` of `buf`), else the body's `model`
    /// (`member`, found in the body).
    fn deployment_name(
        &self,
        range: Option<Range<usize>>,
        member: Option<&Result<Member, EditError>>,
    ) -> Result<std::borrow::Cow<'_, str>, GatewayError> {
        if let Some(r) = range {
            return Ok(String::from_utf8_lossy(&self.down.buf[r]));
        }
        let span = match member {
            Some(Ok(member)) => member.value.clone(),
            Some(Err(e)) => return Err(e.into_gateway_error("model")),
            None => None,
        };
        let model = span.and_then(|span| {
            serde_json::from_slice::<std::borrow::Cow<'_, str>>(&self.down.body[span]).ok()
        });
        match model {
            Some(m) if !m.is_empty() => Ok(m),
            _ => Err(GatewayError::invalid_request(
                "You must provide a model parameter.",
                Some("model"),
            )),
        }
    }

    /// Reads the request body into `self.down.body`. `Err(Some(e))`: answer `e` and close;
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
    ) -> Result<usize, Option<GatewayError>> {
        self.down.body.clear();
        let head_len = self.down.head.head_len;
        let framing = match self.down.head.body {
            BodyFraming::None | BodyFraming::Length(0) => {
                self.consumed = head_len;
                return Ok(0);
            }
            f => f,
        };
        if self.down.head.expect_continue && self.down.buf.len() == head_len {
            let mut out = std::mem::take(&mut self.down.out);
            out.clear();
            out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
            let (res, out) = self.down.write_client(out).await;
            self.down.out = out;
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
                let avail = self.down.buf.len() - head_len;
                if avail >= n {
                    self.down
                        .body
                        .extend_from_slice(&self.down.buf[head_len..head_len + n]);
                    self.consumed = head_len + n;
                    return Ok(n);
                }
                // What the client declared, up to a cap: memory follows the bytes that
                // arrive, not a promise (a thousand slow 32 MiB bodies must not reserve 32 GiB).
                self.down.body.reserve(n.min(BODY_RESERVE_CAP));
                self.down.body.extend_from_slice(&self.down.buf[head_len..]);
                self.consumed = self.down.buf.len();
                while self.down.body.len() < n {
                    let left = allowance(self.down.body.len())?;
                    let body = std::mem::take(&mut self.down.body);
                    match read_more_within(&mut self.down.stream, body, left).await {
                        Ok((Ok(k), body)) if k > 0 => self.down.body = body,
                        Ok(_) => return Err(None),
                        Err(_) => return Err(Some(body_timeout())),
                    }
                }
                if self.down.body.len() > n {
                    self.overflow.extend_from_slice(&self.down.body[n..]);
                    self.down.body.truncate(n);
                }
                Ok(n)
            }
            _ => {
                let mut decoder = ChunkedDecoder::new(limits.max_body);
                let mut pos = head_len;
                // Raw bytes of the body received (chunk framing included).
                let mut received = self.down.buf.len() - head_len;
                loop {
                    match decoder.decode(&self.down.buf[pos..], &mut self.down.body) {
                        Ok(d) => {
                            pos += d.consumed;
                            if d.done {
                                self.consumed = pos;
                                return Ok(received - (self.down.buf.len() - pos));
                            }
                        }
                        Err(e) => {
                            return Err(Some(GatewayError::from(e)));
                        }
                    }
                    // Keep the head, drop the raw chunk bytes already decoded.
                    self.down.buf.drain(head_len..pos);
                    pos = head_len;
                    let left = allowance(received)?;
                    let buf = std::mem::take(&mut self.down.buf);
                    match read_more_within(&mut self.down.stream, buf, left).await {
                        Ok((Ok(k), buf)) if k > 0 => {
                            received += k;
                            self.down.buf = buf;
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
            &SystemClock,
            &snapshot.access,
            &snapshot.runtime.limit_ids,
            self.down.peer.ip(),
        );
    }

    /// Answers a request refused before its body was read. A body already wholly in the
    /// buffer (Content-Length) is stepped over and the connection goes on; one still on its
    /// way is never read: the answer carries `connection: close` and the connection ends
    /// with the bounded lingering close, so a 404 or 401 never waits for a body.
    async fn refuse(&mut self, ctx: &mut RequestCtx<'_>, err: &GatewayError, close: bool) -> Next {
        let end = match self.down.head.body {
            BodyFraming::None => Some(self.down.head.head_len),
            BodyFraming::Length(n) => usize::try_from(n)
                .ok()
                .and_then(|n| self.down.head.head_len.checked_add(n))
                .filter(|&end| end <= self.down.buf.len()),
            BodyFraming::Chunked => None,
        };
        if let Some(end) = end {
            self.consumed = end;
            ctx.bytes_in = end as u64;
        }
        self.down
            .answer_error(ctx, err, close || end.is_none())
            .await
    }

    /// Half-closes, then reads and discards what the client still sends (bounded in time and
    /// bytes), so the error answer is not lost to a reset.
    async fn lingering_close(&mut self) {
        if self.down.stream.shutdown().await.is_err() {
            return;
        }
        let deadline = Instant::now() + LINGER_TIME;
        let mut drained = 0;
        let mut buf = std::mem::take(&mut self.down.buf);
        while drained < LINGER_BYTES {
            buf.clear();
            let left = deadline.saturating_duration_since(Instant::now());
            match read_more_within(&mut self.down.stream, buf, left).await {
                Ok((Ok(n), b)) if n > 0 => {
                    drained += n;
                    buf = b;
                }
                _ => return,
            }
        }
    }
}

/// The answer to a body that missed its deadline (408, and the connection closes).
fn body_timeout() -> GatewayError {
    GatewayError::request_timeout("Request timeout: the request body did not arrive in time.")
}
