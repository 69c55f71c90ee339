//! The client side of an exchange: the client's socket, its request as read, and the
//! writes that answer it — within the send timeout, counted, and for an error in the OpenAI
//! shape. The connection ([`crate::server`]) reads requests into it; the upstream leg
//! ([`crate::upstream`]) answers through it.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use monoio::buf::IoBuf;

use crate::answers;
use crate::error::{Fault, GatewayError};
use crate::http::RequestHead;
use crate::policy::context::{RequestCtx, RequestId};
use crate::policy::trace::answer_headers;
use crate::socket::{write_all_within, ClientStream};

/// Whether the connection goes on after a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Read the next request.
    KeepAlive,
    /// Close the connection.
    Close,
}

/// A client connection's state and reusable buffers, as the request path reads and answers
/// it. Buffers live for the whole connection, so a request in steady state does not
/// allocate.
pub struct Downstream {
    /// The client's connection (plain or TLS).
    pub stream: ClientStream,
    /// The client's address.
    pub peer: SocketAddr,
    /// Bytes read from the client: the current head at `[..head.head_len]`, then whatever
    /// followed it (body bytes, pipelined requests).
    pub buf: Vec<u8>,
    /// The current request's decoded body.
    pub body: Vec<u8>,
    /// The current request's parsed head (ranges into `buf`).
    pub head: RequestHead,
    /// What goes to the client next.
    pub out: Vec<u8>,
    /// How long one write to this client may take (`server.timeouts.send` of the snapshot
    /// the current request runs on).
    pub send_timeout: Duration,
    /// The connection ends after an error answer: drain what the client is still sending
    /// before closing, so the kernel does not reset the connection under the answer.
    pub linger: bool,
    /// Bytes written to the client for the current request.
    pub sent: u64,
    /// When the first byte of the current request's answer went out.
    pub first_out: Option<Instant>,
    /// A write of the current request's answer failed: the client reset or closed its
    /// connection, or stopped reading past the send timeout. Its request ended
    /// `client_gone`, however far the answer had come.
    pub write_failed: bool,
}

impl Downstream {
    /// A connection just accepted from `peer`.
    pub fn new(stream: ClientStream, peer: SocketAddr, send_timeout: Duration) -> Self {
        Self {
            stream,
            peer,
            buf: Vec::with_capacity(8 * 1024),
            body: Vec::new(),
            head: RequestHead::new(),
            out: Vec::with_capacity(4 * 1024),
            send_timeout,
            linger: false,
            sent: 0,
            first_out: None,
            write_failed: false,
        }
    }

    /// Answers `err` to the request of `ctx`, recording it there.
    pub async fn answer_error(
        &mut self,
        ctx: &mut RequestCtx<'_>,
        err: &GatewayError,
        close: bool,
    ) -> Next {
        ctx.error = Some(err.kind);
        ctx.refused_by = err.limit;
        ctx.status = Some(err.status());
        log_error(ctx, err);
        // What an admitted request's answers carry (its x-ratelimit-* state, the trace with
        // the backend last tried) goes on its error answer too.
        let headers = answer_headers(ctx);
        self.write_error(ctx.id, err, close, &headers).await
    }

    /// Answers `err` in the OpenAI shape, for a request that has no context (its head did
    /// not parse).
    pub async fn respond_error(&mut self, rid: RequestId, err: &GatewayError, close: bool) -> Next {
        self.write_error(rid, err, close, &[]).await
    }

    /// Writes the error answer, with `headers` (whole `name: value` lines) added.
    async fn write_error(
        &mut self,
        rid: RequestId,
        err: &GatewayError,
        close: bool,
        headers: &[u8],
    ) -> Next {
        let mut out = std::mem::take(&mut self.out);
        out.clear();
        answers::error_response(&mut out, err, &rid, close, headers);
        self.linger |= close || err.closes();
        self.write_out(out, close || err.closes()).await
    }

    /// Writes all of `buf` to the client within the send timeout (a client that stopped
    /// reading fails the write, and its connection then closes).
    /// `buf` is any owned buffer: the connection's own `Vec`, or a body shared with others
    /// (the response cache's `Bytes`), written without a copy.
    pub async fn write_client<B: IoBuf + Default>(&mut self, buf: B) -> (std::io::Result<()>, B) {
        if self.first_out.is_none() && buf.bytes_init() > 0 {
            self.first_out = Some(Instant::now());
        }
        let len = buf.bytes_init() as u64;
        let (res, buf) = write_all_within(&mut self.stream, buf, self.send_timeout).await;
        match res {
            Ok(()) => self.sent += len,
            Err(_) => self.write_failed = true,
        }
        (res, buf)
    }

    /// Writes `out` to the client and keeps it for reuse.
    pub async fn write_out(&mut self, out: Vec<u8>, close: bool) -> Next {
        let (res, out) = self.write_client(out).await;
        self.out = out;
        if res.is_err() || close {
            Next::Close
        } else {
            Next::KeepAlive
        }
    }
}

/// Logs an error answer by its kind and whose fault it is: client faults at debug (a client
/// can produce them at will), upstream and gateway faults at warn.
fn log_error(ctx: &RequestCtx<'_>, err: &GatewayError) {
    let kind = err.kind;
    match kind.fault() {
        Fault::Client => tracing::debug!(
            request_id = %ctx.id,
            status = kind.status(),
            ?kind,
            "request refused"
        ),
        fault @ (Fault::Upstream | Fault::Gateway) => tracing::warn!(
            request_id = %ctx.id,
            status = kind.status(),
            ?kind,
            ?fault,
            "request failed"
        ),
    }
}
