//! Relaying a backend's answer to the client: the response head re-serialised (hop-by-hop
//! headers dropped, Sluice's framing and request id added), then the body read by read —
//! each read from the backend is written to the client before the next, so SSE events are
//! never held back and a slow client slows the backend read (back-pressure). An answer
//! whose usage is read and that the backend content-coded anyway is decoded on the way
//! ([`decoded`]).

use std::net::SocketAddr;
use std::time::SystemTime;

use super::forward::has_connection_header;
use super::pool::UpstreamPools;
use super::pool::{Channel, Tenant};
use super::stream::UpstreamStream;
use super::Exchange;
use crate::answers;
use crate::cache::control::{AnswerControl, Freshness};
use crate::downstream::Next;
use crate::error::GatewayError;
use crate::http::{
    connection_lists, folds_to, folds_to_framing, is_hop_by_hop, is_plain_name, write_chunk,
    ChunkedDecoder, ResponseFraming, LAST_CHUNK,
};
use crate::policy::context::{End, RequestCtx};
use crate::policy::phase::{Chunk, Pipeline, Policy, Response};
use crate::policy::trace::answer_headers;
use crate::snapshot::Timeouts;
use crate::socket::{abort_on_close, read_more_watching, Stopped};

mod decoded;

impl Exchange<'_> {
    /// Streams the answer whose head is in `self.leg.resp` to the client, then pools the
    /// upstream connection when the exchange ended cleanly: the answer ended exactly at its
    /// message boundary, nothing beyond it was read, and it allows keep-alive.
    ///
    /// A chunked body whose framing is invalid within what arrived with the head is a 502
    /// (`upstream_protocol_error`), the client having seen nothing of it. An answer that
    /// breaks off later (the backend closes or resets before a Content-Length body is
    /// complete, its chunked framing turns invalid, a read times out) is never padded or
    /// ended cleanly: the client's connection closes without the rest of the body, without
    /// a last chunk, and — when the client's body is close-delimited (an HTTP/1.0 client)
    /// — with a reset instead of a FIN, so no client takes a truncated answer as whole.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn relay<'s, P: Policy>(
        &mut self,
        pools: &UpstreamPools,
        pipeline: &Pipeline<'s, P>,
        ctx: &mut RequestCtx<'s>,
        mut upstream: UpstreamStream,
        addr: SocketAddr,
        tenant: Tenant,
        channel: Channel,
        close: bool,
        t: &Timeouts,
    ) -> Next {
        let chunked_ok = self.down.head.minor_version >= 1;
        let framing = self.leg.resp.framing;
        let content_type = self.leg.resp.header(&self.leg.ubuf, "content-type");
        let event_stream = content_type
            .is_some_and(|v| v.len() >= 17 && v[..17].eq_ignore_ascii_case(b"text/event-stream"));
        // An answer coded although Sluice asked for `identity` is decoded on the way.
        let (mut decoder, coding) = self.answer_coding(ctx.upstream.identity_encoding);
        let head = Response {
            status: self.leg.resp.status,
            event_stream,
            content_type,
            coding,
            backend: ctx.served_by(),
            freshness: if ctx.cache.stores() {
                let mut control = AnswerControl::default();
                for h in &self.leg.resp.headers {
                    control.add(h.name(&self.leg.ubuf), &self.leg.ubuf[h.value.clone()]);
                }
                control.freshness(SystemTime::now())
            } else {
                Freshness::default()
            },
        };
        if let Some(err) = pipeline.on_response_head(ctx, &head).into_error() {
            return self.down.answer_error(ctx, &err, close).await;
        }
        let rechunked = decoder.is_some()
            || (ctx.body.rewrite && matches!(framing, ResponseFraming::Length(_)));
        // An HTTP/1.0 client gets an unframed body as close-delimited.
        let close_delimited = !chunked_ok
            && (rechunked || matches!(framing, ResponseFraming::Chunked | ResponseFraming::Close));
        let close = close || close_delimited;
        let mut out = std::mem::take(&mut self.down.out);
        out.clear();
        self.leg.tail = Tail::default();
        let decoded = decoder.is_some();
        self.write_response_head(&mut out, ctx, close, chunked_ok, decoded);
        ctx.status = Some(self.leg.resp.status);
        let relayed = match &mut decoder {
            Some(decoder) => {
                self.relay_decoded(
                    pipeline,
                    ctx,
                    &mut upstream,
                    &mut out,
                    decoder,
                    chunked_ok,
                    t,
                )
                .await
            }
            None => {
                self.relay_body(pipeline, ctx, &mut upstream, &mut out, chunked_ok, t)
                    .await
            }
        };
        out.clear();
        self.down.out = out;
        match relayed {
            Ok(clean) => {
                if clean && self.leg.resp.keep_alive {
                    pools.put(addr, tenant, channel, upstream);
                } else if !clean && framing != ResponseFraming::Close {
                    // A framed answer followed by more bytes: the backend wrote what no
                    // request asked for, which a reused connection would hand to the next.
                    pools.distrust(addr);
                }
                if close {
                    Next::Close
                } else {
                    Next::KeepAlive
                }
            }
            Err(Broken::Unsent(message)) => {
                tracing::warn!(request_id = %ctx.id, "{message} Nothing of it was relayed.");
                let err = GatewayError::upstream_protocol(message);
                self.down.answer_error(ctx, &err, close).await
            }
            Err(Broken::Upstream(cut)) if event_stream && self.leg.tail.at_event_end() => {
                // An event stream's client is told in the stream's own terms: a final
                // `data: {"error": …}` event (what the OpenAI SDKs raise as an APIError)
                // and a clean end. Never retried: the client has seen part of the answer.
                ctx.end = End::Truncated;
                tracing::warn!(request_id = %ctx.id, "{}; the stream was ended with an error event", cut.message());
                let mut out = std::mem::take(&mut self.down.out);
                out.clear();
                let mut event = std::mem::take(&mut self.leg.scratch);
                event.clear();
                event.extend_from_slice(b"data: ");
                cut.error().write_body(&mut event);
                event.extend_from_slice(b"\n\n");
                frame(&mut out, &event, chunked_ok);
                self.leg.scratch = event;
                if chunked_ok {
                    out.extend_from_slice(LAST_CHUNK);
                }
                let (_, mut out) = self.down.write_client(out).await;
                out.clear();
                self.down.out = out;
                Next::Close
            }
            Err(broken) => {
                if let Broken::Upstream(cut) = broken {
                    tracing::warn!(request_id = %ctx.id, "{}; the answer was cut", cut.message());
                }
                if ctx.end != End::ClientGone {
                    ctx.end = End::Truncated;
                }
                // A body only a close can end would look complete after a FIN.
                if close_delimited {
                    abort_on_close(&self.down.stream);
                }
                Next::Close
            }
        }
    }

    /// Relays the body after the head in `out`. `Ok(true)` when the upstream connection is
    /// left exactly at the end of the answer (so it may be reused); `Err` when either side
    /// failed mid-body (the client connection must close: its framing is broken). Every
    /// piece goes through the usage tap when a token limit is to be settled.
    async fn relay_body<'s, P: Policy>(
        &mut self,
        pipeline: &Pipeline<'s, P>,
        ctx: &mut RequestCtx<'s>,
        upstream: &mut UpstreamStream,
        out: &mut Vec<u8>,
        chunked_ok: bool,
        t: &Timeouts,
    ) -> Result<bool, Broken> {
        let body_start = self.leg.resp.head_len;
        match self.leg.resp.framing {
            ResponseFraming::None => {
                let clean = self.leg.ubuf.len() == body_start;
                // No body: its end is all the body phase sees (nothing goes out for it).
                pipeline.on_body_chunk(ctx, &[], true, &mut self.leg.filtered);
                self.flush(out).await?;
                Ok(clean)
            }
            ResponseFraming::Length(n) if !ctx.body.read => {
                let have = (self.leg.ubuf.len() - body_start) as u64;
                let mut clean = have <= n;
                let first = have.min(n) as usize;
                out.extend_from_slice(&self.leg.ubuf[body_start..body_start + first]);
                self.leg
                    .tail
                    .push(&self.leg.ubuf[body_start..body_start + first]);
                self.flush(out).await?;
                let mut remaining = n - first as u64;
                while remaining > 0 {
                    self.leg.ubuf.clear();
                    let k = (self.read_upstream(ctx, upstream, t).await? as u64).min(remaining);
                    clean &= self.leg.ubuf.len() as u64 == k;
                    remaining -= k;
                    self.leg.ubuf.truncate(k as usize);
                    self.leg.tail.push(&self.leg.ubuf);
                    // The bytes go to the client straight from the read buffer.
                    let buf = std::mem::take(&mut self.leg.ubuf);
                    let (res, buf) = self.down.write_client(buf).await;
                    self.leg.ubuf = buf;
                    res.map_err(|_| Broken::Midway)?;
                }
                Ok(clean)
            }
            ResponseFraming::Length(n) => {
                // Read on the way: copied through the body phase; re-chunked when a policy
                // may rewrite it.
                let framed = ctx.body.rewrite && chunked_ok;
                let have = (self.leg.ubuf.len() - body_start) as u64;
                let mut clean = have <= n;
                let first = have.min(n) as usize;
                emit(
                    pipeline,
                    ctx,
                    &mut self.leg.filtered,
                    &mut self.leg.tail,
                    out,
                    &self.leg.ubuf[body_start..body_start + first],
                    framed,
                );
                let mut remaining = n - first as u64;
                while remaining > 0 {
                    if !out.is_empty() {
                        self.flush(out).await?;
                    }
                    self.leg.ubuf.clear();
                    let k = (self.read_upstream(ctx, upstream, t).await? as u64).min(remaining);
                    clean &= self.leg.ubuf.len() as u64 == k;
                    remaining -= k;
                    emit(
                        pipeline,
                        ctx,
                        &mut self.leg.filtered,
                        &mut self.leg.tail,
                        out,
                        &self.leg.ubuf[..k as usize],
                        framed,
                    );
                }
                self.finish_body(pipeline, ctx, out, framed);
                self.flush(out).await?;
                Ok(clean)
            }
            ResponseFraming::Chunked => {
                let mut decoder = ChunkedDecoder::new(u64::MAX);
                let mut pos = body_start;
                // Until the first flush the head is still in `out`: invalid framing found
                // then can still be answered with a 502 instead of a broken 200.
                let mut flushed = false;
                loop {
                    self.leg.scratch.clear();
                    let step = decoder
                        .decode(&self.leg.ubuf[pos..], &mut self.leg.scratch)
                        .map_err(|_| {
                            if flushed {
                                Broken::Upstream(Cut::Framing)
                            } else {
                                Broken::Unsent(INVALID_CHUNKED)
                            }
                        })?;
                    pos += step.consumed;
                    emit(
                        pipeline,
                        ctx,
                        &mut self.leg.filtered,
                        &mut self.leg.tail,
                        out,
                        &self.leg.scratch,
                        chunked_ok,
                    );
                    if step.done {
                        self.finish_body(pipeline, ctx, out, chunked_ok);
                    }
                    if !out.is_empty() {
                        self.flush(out).await?;
                        flushed = true;
                    }
                    if step.done {
                        return Ok(pos == self.leg.ubuf.len());
                    }
                    self.leg.ubuf.drain(..pos);
                    pos = 0;
                    self.read_upstream(ctx, upstream, t).await?;
                }
            }
            ResponseFraming::Close => {
                emit(
                    pipeline,
                    ctx,
                    &mut self.leg.filtered,
                    &mut self.leg.tail,
                    out,
                    &self.leg.ubuf[body_start..],
                    chunked_ok,
                );
                loop {
                    self.flush(out).await?;
                    self.leg.ubuf.clear();
                    match self.read_upstream_or_end(ctx, upstream, t).await? {
                        0 => break,
                        _ => emit(
                            pipeline,
                            ctx,
                            &mut self.leg.filtered,
                            &mut self.leg.tail,
                            out,
                            &self.leg.ubuf,
                            chunked_ok,
                        ),
                    }
                }
                self.finish_body(pipeline, ctx, out, chunked_ok);
                self.flush(out).await?;
                Ok(false)
            }
        }
    }

    /// The body ended: the body phase sees its end (a policy may release bytes it held),
    /// then the last chunk when the client's body is chunked.
    pub(super) fn finish_body<'s, P: Policy>(
        &mut self,
        pipeline: &Pipeline<'s, P>,
        ctx: &mut RequestCtx<'s>,
        out: &mut Vec<u8>,
        framed: bool,
    ) {
        if pipeline.on_body_chunk(ctx, &[], true, &mut self.leg.filtered) == Chunk::Replaced {
            frame(out, &self.leg.filtered, framed);
        }
        if framed {
            out.extend_from_slice(LAST_CHUNK);
        }
    }

    /// Writes `out` to the client and leaves it empty for reuse.
    async fn flush(&mut self, out: &mut Vec<u8>) -> Result<(), Broken> {
        let buf = std::mem::take(out);
        let (res, mut buf) = self.down.write_client(buf).await;
        buf.clear();
        *out = buf;
        res.map(drop).map_err(|_| Broken::Midway)
    }

    /// Reads more of the answer into `self.leg.ubuf` within `stream_idle`; the end of the
    /// stream is an error here (the answer is framed and not finished).
    async fn read_upstream(
        &mut self,
        ctx: &mut RequestCtx<'_>,
        upstream: &mut UpstreamStream,
        t: &Timeouts,
    ) -> Result<usize, Broken> {
        match self.read_upstream_or_end(ctx, upstream, t).await? {
            0 => Err(Broken::Upstream(Cut::Closed)),
            n => Ok(n),
        }
    }

    /// Reads more of the answer into `self.leg.ubuf` within `stream_idle`; 0 at its end. A client
    /// that goes away meanwhile ends the relay (see [`read_more_watching`]).
    async fn read_upstream_or_end(
        &mut self,
        ctx: &mut RequestCtx<'_>,
        upstream: &mut UpstreamStream,
        t: &Timeouts,
    ) -> Result<usize, Broken> {
        let buf = std::mem::take(&mut self.leg.ubuf);
        match read_more_watching(upstream, buf, t.stream_idle, &self.down.stream).await {
            Ok((res, buf)) => {
                self.leg.ubuf = buf;
                res.map_err(|_| Broken::Upstream(Cut::Failed))
            }
            // The buffer went with the cancelled read; a fresh one replaces it.
            Err(Stopped::TimedOut) => Err(Broken::Upstream(Cut::Idle)),
            Err(Stopped::ClientGone) => {
                ctx.end = End::ClientGone;
                tracing::info!(request_id = %ctx.id, "client went away mid-answer; upstream request cancelled");
                Err(Broken::Midway)
            }
        }
    }

    /// The client's response head: the backend's status and headers less hop-by-hop ones
    /// (under any spelling that folds to one, see [`folds_to_framing`]), Sluice's own
    /// framing, request id and connection headers.
    ///
    /// `decoded`: the body goes out decoded, so the backend's `Content-Encoding` is left
    /// out and the body re-framed.
    fn write_response_head(
        &self,
        out: &mut Vec<u8>,
        ctx: &RequestCtx<'_>,
        close: bool,
        chunked_ok: bool,
        decoded: bool,
    ) {
        let r = &self.leg.resp;
        out.extend_from_slice(b"HTTP/1.1 ");
        let mut num = itoa::Buffer::new();
        out.extend_from_slice(num.format(r.status).as_bytes());
        out.push(b' ');
        out.extend_from_slice(&self.leg.ubuf[r.reason.clone()]);
        out.extend_from_slice(b"\r\n");
        let lists = has_connection_header(&self.leg.ubuf, &r.headers);
        let extra = answer_headers(ctx);
        // Response header names Sluice sets itself, whatever the answer: the request id
        // (the backend's goes out as `x-upstream-request-id`), that slot, and the trace.
        const SETS: [&[u8]; 3] = [b"x-request-id", b"x-upstream-request-id", b"x-sluice-trace"];
        let mut upstream_id = false;
        for h in &r.headers {
            let name = &self.leg.ubuf[h.name.clone()];
            if is_hop_by_hop(name)
                || name.eq_ignore_ascii_case(b"content-length")
                || (lists && connection_lists(&self.leg.ubuf, &r.headers, name))
                || (decoded && name.eq_ignore_ascii_case(b"content-encoding"))
            {
                continue;
            }
            // A header Sluice sets on this answer (its own `x-ratelimit-*` when a limit
            // applied, the trace) wins over the backend's: one name is never sent twice.
            if !extra.is_empty() && sets_header(&extra, name) {
                continue;
            }
            // A backend's `Transfer_Encoding` or `Content.Length` would be a second framing
            // header to a client that folds separators; Sluice frames the answer alone.
            if !is_plain_name(name)
                && (folds_to_framing(name) || SETS.iter().any(|&set| folds_to(name, set)))
            {
                tracing::debug!(
                    header = %String::from_utf8_lossy(name),
                    "response header not relayed: it reads as a framing, connection or request-id header"
                );
                continue;
            }
            if name.eq_ignore_ascii_case(b"x-request-id") {
                // The backend's first id, once: a chained gateway may send more.
                if !upstream_id {
                    upstream_id = true;
                    answers::header(
                        out,
                        b"x-upstream-request-id",
                        &self.leg.ubuf[h.value.clone()],
                    );
                }
                continue;
            }
            // Names only Sluice sets: the backend's own id slot and the trace.
            if SETS[1..].iter().any(|set| name.eq_ignore_ascii_case(set)) {
                continue;
            }
            answers::header(out, name, &self.leg.ubuf[h.value.clone()]);
        }
        match r.framing {
            ResponseFraming::None => {}
            // A filtering usage tap or decoding changes the body's length: re-chunked then.
            ResponseFraming::Length(n) if !ctx.body.rewrite && !decoded => {
                answers::content_length(out, n)
            }
            ResponseFraming::Length(_) | ResponseFraming::Chunked | ResponseFraming::Close => {
                if chunked_ok {
                    out.extend_from_slice(b"transfer-encoding: chunked\r\n");
                }
            }
        }
        answers::common_headers(out, &ctx.id, close, &extra);
        out.extend_from_slice(b"\r\n");
    }
}

/// Whether the header lines `extra` (`name: value\r\n` each) set a field named `name`
/// (case-insensitive).
fn sets_header(extra: &[u8], name: &[u8]) -> bool {
    extra.split(|&b| b == b'\n').any(|line| {
        line.len() > name.len()
            && line[name.len()] == b':'
            && line[..name.len()].eq_ignore_ascii_case(name)
    })
}

/// The 502 message for an answer whose chunked framing is invalid.
const INVALID_CHUNKED: &str = "Bad gateway: the backend sent an invalid chunked body.";

/// A relay that cannot go on: the client or the upstream failed.
enum Broken {
    /// The answer's framing (or coding) broke before any byte of it reached the client: the
    /// client can still get Sluice's own 502, with this message.
    Unsent(&'static str),
    /// The client's side failed (gone, or a write to it failed) after it saw part of the
    /// answer: its connection must close.
    Midway,
    /// The backend's answer broke off after the client saw part of it.
    Upstream(Cut),
}

/// How a backend's answer broke off mid-body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cut {
    /// The connection closed before the answer's end.
    Closed,
    /// A read from the backend failed (reset).
    Failed,
    /// The chunked framing turned invalid.
    Framing,
    /// The content coding turned undecodable.
    Undecodable,
    /// Nothing arrived for longer than `timeouts.stream_idle`.
    Idle,
}

impl Cut {
    fn message(self) -> &'static str {
        match self {
            Cut::Closed => "The backend closed the connection before its answer ended.",
            Cut::Failed => "The connection to the backend failed before its answer ended.",
            Cut::Framing => "The backend's answer turned into invalid chunked framing.",
            Cut::Undecodable => "The backend's content-coded answer stopped decoding.",
            Cut::Idle => "The backend sent nothing for longer than stream_idle.",
        }
    }

    /// The error the client's event stream ends with: `upstream_timeout` for an idle
    /// backend, `upstream_protocol_error` otherwise.
    fn error(self) -> GatewayError {
        match self {
            Cut::Idle => GatewayError::new(
                crate::error::ErrorKind::UpstreamTimeout,
                "The backend's stream went idle for longer than stream_idle; the answer is incomplete.",
            ),
            cut => GatewayError::new(crate::error::ErrorKind::UpstreamProtocol, cut.message()),
        }
    }
}

/// Appends a piece of the body to `out` through the body phase: what the policies let
/// through when one rewrites it, the piece itself otherwise.
#[allow(clippy::too_many_arguments)]
fn emit<'s, P: Policy>(
    pipeline: &Pipeline<'s, P>,
    ctx: &mut RequestCtx<'s>,
    filtered: &mut Vec<u8>,
    tail: &mut Tail,
    out: &mut Vec<u8>,
    data: &[u8],
    framed: bool,
) {
    if pipeline.on_body_chunk(ctx, data, false, filtered) == Chunk::Replaced {
        tail.push(filtered);
        frame(out, filtered, framed);
    } else {
        tail.push(data);
        frame(out, data, framed);
    }
}

/// The last bytes of an answer's body relayed so far: whether an event stream stands at an
/// event's end (SSE dispatches an event at a blank line: two line ends, each CRLF, LF or CR),
/// where Sluice can add an event of its own without corrupting one the backend left unfinished.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Tail {
    last: [u8; 4],
    sent: bool,
}

impl Tail {
    /// Notes `data` as relayed after what was.
    pub(super) fn push(&mut self, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        self.sent = true;
        for &b in data.iter().skip(data.len().saturating_sub(4)) {
            self.last.copy_within(1.., 0);
            self.last[3] = b;
        }
    }

    /// Whether nothing was relayed yet, or the bytes relayed end with a blank line.
    pub(super) fn at_event_end(&self) -> bool {
        !self.sent
            || self.last.ends_with(b"\n\n")
            || self.last.ends_with(b"\r\r")
            || self.last.ends_with(b"\n\r\n")
    }
}

/// Appends body bytes to `out` as one chunk (HTTP/1.1 client) or raw (HTTP/1.0, close
/// delimited). Nothing for empty data: an empty chunk would end the body.
pub(super) fn frame(out: &mut Vec<u8>, data: &[u8], chunked_ok: bool) {
    if chunked_ok {
        write_chunk(out, data);
    } else {
        out.extend_from_slice(data);
    }
}
