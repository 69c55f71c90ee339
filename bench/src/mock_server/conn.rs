//! One client connection: parse each request with `sluice::http`, read its body
//! (Content-Length or chunked), route it with `sluice::route::route`, apply the fault knobs
//! and answer with `sluice::mock::reply`; repeat while the connection is kept alive.
//!
//! Pipelined requests already in the buffer are answered into one output buffer and go out
//! in one write; the buffer is flushed before any pause (latency, slow start, stall,
//! streaming pace) and before waiting for more bytes, so no answer waits on a later one.
//! Buffers live as long as the connection, so a request in steady state allocates nothing
//! beyond what `reply` does.

use std::rc::Rc;
use std::time::{Duration, Instant};

use monoio::io::AsyncWriteRentExt;
use monoio::net::TcpStream;
use sluice::error::{ErrorKind, GatewayError};
use sluice::http::{
    parse_request, write_chunk, BodyFraming, ChunkedDecoder, Parse, RequestHead, LAST_CHUNK,
};
use sluice::mock::{reply, MockReply};
use sluice::route::{route, Operation};
use sluice::snapshot::HttpLimits;

use super::answer;
use super::budget::request_cost;
use super::faults::Verdict;
use super::listen::linger_zero;
use super::worker::Worker;

/// Least spare room a read is given.
const MIN_READ_SPACE: usize = 4 * 1024;

/// Why a request could not be read whole.
enum BodyError {
    /// Answer this and close.
    Refuse(GatewayError),
    /// The client went away.
    Gone,
}

/// A connection and its reusable buffers.
struct Conn {
    stream: TcpStream,
    /// A second handle on the socket, kept only when resets are enabled (to set SO_LINGER).
    linger: Option<std::net::TcpStream>,
    /// Bytes read; the current request starts at `start`.
    buf: Vec<u8>,
    start: usize,
    /// The current request's head (ranges relative to `buf[start..]`).
    head: RequestHead,
    /// The current request's decoded body.
    body: Vec<u8>,
    /// Answers not yet written.
    out: Vec<u8>,
    /// One SSE event being rendered.
    event: Vec<u8>,
    /// The current answer's extra header lines (the budgets' `x-ratelimit-*`).
    extra: Vec<u8>,
}

/// Serves `stream` until the client closes it, it errs, or a reset is drawn.
pub async fn serve(worker: Rc<Worker>, stream: std::net::TcpStream) {
    let linger = if worker.shared.faults.may_reset() {
        stream.try_clone().ok()
    } else {
        None
    };
    let Ok(stream) = TcpStream::from_std(stream) else {
        return;
    };
    let mut conn = Conn {
        stream,
        linger,
        buf: Vec::with_capacity(8 * 1024),
        start: 0,
        head: RequestHead::new(),
        body: Vec::new(),
        out: Vec::with_capacity(8 * 1024),
        event: Vec::with_capacity(512),
        extra: Vec::new(),
    };
    conn.run(&worker).await;
}

impl Conn {
    async fn run(&mut self, w: &Worker) {
        let limits = HttpLimits::default();
        loop {
            match parse_request(&self.buf[self.start..], &limits, &mut self.head) {
                Ok(Parse::Complete) => {}
                Ok(Parse::Partial) => {
                    if !self.flush().await || !self.read().await {
                        return;
                    }
                    continue;
                }
                Err(e) => {
                    let err = GatewayError::from(e);
                    w.counters.request();
                    self.refuse(w, &err).await;
                    return;
                }
            }
            let end = match self.read_body(&limits).await {
                Ok(end) => end,
                Err(BodyError::Refuse(err)) => {
                    w.counters.request();
                    self.refuse(w, &err).await;
                    return;
                }
                Err(BodyError::Gone) => return,
            };
            let close = !self.head.keep_alive || self.head.minor_version == 0;
            if !self.answer(w, close).await || close {
                self.flush().await;
                return;
            }
            self.start += end;
            if self.start == self.buf.len() {
                self.buf.clear();
                self.start = 0;
            }
        }
    }

    /// Answers the current request. Returns false when the connection must end now (a
    /// reset, or the client went away).
    async fn answer(&mut self, w: &Worker, close: bool) -> bool {
        let request = &self.buf[self.start..];
        let (method, target) = (self.head.method(request), self.head.target(request));
        if let Some(path) = target.strip_prefix("/_mock/") {
            let admin = match (method, path) {
                ("GET", "stats") => Some(false),
                ("POST", "stats/reset") => Some(true),
                _ => None,
            };
            self.admin(w, admin, close);
            return true;
        }
        w.counters.request();
        let op = match route(method, target) {
            Ok(r) => r.operation,
            Err(e) => {
                let err = GatewayError::from(e);
                answer::error(&mut self.out, &err, close);
                w.counters.answered(err.status());
                return true;
            }
        };
        let (verdict, slow, latency) = {
            let mut rng = w.rng.borrow_mut();
            let verdict = w.shared.faults.verdict(&mut rng);
            let slow = w.shared.faults.slow_start(&mut rng);
            let latency = if verdict == Verdict::Answer {
                w.shared.latency.sample(&mut rng)
            } else {
                Duration::ZERO
            };
            (verdict, slow, latency)
        };
        let shared = &w.shared;
        match verdict {
            Verdict::Reset => {
                // Earlier pipelined answers were given; this request gets a reset.
                self.flush().await;
                if let Some(handle) = &self.linger {
                    let _ = linger_zero(handle);
                }
                w.counters.reset();
                return false;
            }
            Verdict::Throttle => {
                if !self.hold(w, slow).await {
                    return false;
                }
                let c = &shared.canned;
                answer::json(
                    &mut self.out,
                    429,
                    &c.throttle_headers,
                    &c.throttle_body,
                    close,
                );
                w.counters.answered(429);
            }
            Verdict::ServerError => {
                if !self.hold(w, slow).await {
                    return false;
                }
                let c = &shared.canned;
                answer::json(
                    &mut self.out,
                    c.server_error_status,
                    b"",
                    &c.server_error_body,
                    close,
                );
                w.counters.answered(c.server_error_status);
            }
            Verdict::Answer if op == Operation::Models => {
                if !self.hold(w, latency + slow).await {
                    return false;
                }
                answer::json(&mut self.out, 200, b"", &shared.canned.models_body, close);
                w.counters.answered(200);
            }
            Verdict::Answer => {
                self.extra.clear();
                if let Some(budgets) = &shared.budgets {
                    let now = u64::try_from(shared.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
                    let admission = budgets.admit(now, request_cost(op, &self.body));
                    admission.write_headers(&mut self.extra);
                    if let Some(wait) = admission.retry_after() {
                        if !self.hold(w, slow).await {
                            return false;
                        }
                        let body = answer::budget_throttle_body(&admission, wait);
                        answer::json(&mut self.out, 429, &self.extra, &body, close);
                        w.counters.answered(429);
                        return true;
                    }
                }
                let created = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                let answer = reply(&shared.settings, op, &self.body, created, w.next_id_seed());
                if !self.hold(w, latency + slow).await {
                    return false;
                }
                match answer {
                    MockReply::Json { status, body } => {
                        answer::json(&mut self.out, status, &self.extra, &body, close);
                        w.counters.answered(status);
                    }
                    MockReply::Stream(mut events) => {
                        w.counters.answered(200);
                        answer::head(
                            &mut self.out,
                            200,
                            "text/event-stream",
                            None,
                            &self.extra,
                            close,
                        );
                        loop {
                            let pause = events.pause_before_next();
                            if !pause.is_zero() && !self.hold(w, pause).await {
                                return false;
                            }
                            self.event.clear();
                            if !events.next_event(&mut self.event) {
                                break;
                            }
                            write_chunk(&mut self.out, &self.event);
                        }
                        self.out.extend_from_slice(LAST_CHUNK);
                    }
                }
            }
        }
        true
    }

    /// `/_mock/…`: `GET /_mock/stats` (`Some(false)`), `POST /_mock/stats/reset`
    /// (`Some(true)`, answering the counts it cleared) or anything else (404). Not counted.
    fn admin(&mut self, w: &Worker, reset: Option<bool>, close: bool) {
        let stats = match reset {
            Some(false) => w.shared.board.read(),
            Some(true) => w.shared.board.reset(),
            None => {
                answer::error(&mut self.out, &GatewayError::not_found(), close);
                return;
            }
        };
        let body = serde_json::to_vec(&stats).unwrap_or_else(|_| b"{}".to_vec());
        answer::json(&mut self.out, 200, b"", &body, close);
    }

    /// Sends what is pending, then waits `delay` and, when the moment falls in the stall
    /// window, until the window ends. Returns false when the client went away.
    async fn hold(&mut self, w: &Worker, delay: Duration) -> bool {
        if !delay.is_zero() {
            if !self.flush().await {
                return false;
            }
            monoio::time::sleep(delay).await;
        }
        let faults = &w.shared.faults;
        if faults.has_stall() {
            let now = Instant::now();
            if let Some(until) = faults.stalled_until(now) {
                if !self.flush().await {
                    return false;
                }
                monoio::time::sleep(until - now).await;
            }
        }
        true
    }

    /// Answers a request that cannot be read (bad framing) and ends the connection.
    async fn refuse(&mut self, w: &Worker, err: &GatewayError) {
        answer::error(&mut self.out, err, true);
        w.counters.answered(err.status());
        self.flush().await;
    }

    /// Reads the current request's body into `self.body`; returns the request's length in
    /// `buf` (head and raw body) from `start`.
    async fn read_body(&mut self, limits: &HttpLimits) -> Result<usize, BodyError> {
        self.body.clear();
        let head_len = self.head.head_len;
        let framing = self.head.body;
        if framing != BodyFraming::None
            && framing != BodyFraming::Length(0)
            && self.head.expect_continue
            && self.buf.len() - self.start == head_len
        {
            self.out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
            if !self.flush().await {
                return Err(BodyError::Gone);
            }
        }
        match framing {
            BodyFraming::None => Ok(head_len),
            BodyFraming::Length(n) => {
                let n = usize::try_from(n)
                    .ok()
                    .filter(|&n| n as u64 <= limits.max_body)
                    .ok_or(BodyError::Refuse(GatewayError::new(
                        ErrorKind::PayloadTooLarge,
                        "Request body too large.",
                    )))?;
                while self.buf.len() - self.start < head_len + n {
                    if !self.flush().await || !self.read().await {
                        return Err(BodyError::Gone);
                    }
                }
                let at = self.start + head_len;
                self.body.extend_from_slice(&self.buf[at..at + n]);
                Ok(head_len + n)
            }
            BodyFraming::Chunked => {
                let mut decoder = ChunkedDecoder::new(limits.max_body);
                let mut pos = head_len;
                loop {
                    let raw = &self.buf[self.start + pos..];
                    match decoder.decode(raw, &mut self.body) {
                        Ok(d) => {
                            pos += d.consumed;
                            if d.done {
                                return Ok(pos);
                            }
                        }
                        Err(e) => return Err(BodyError::Refuse(GatewayError::from(e))),
                    }
                    if !self.flush().await || !self.read().await {
                        return Err(BodyError::Gone);
                    }
                }
            }
        }
    }

    /// Reads more bytes after what `buf` holds (first moving the current request to the
    /// front). Returns false at end of stream or on an error.
    async fn read(&mut self) -> bool {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        let mut buf = std::mem::take(&mut self.buf);
        let len = buf.len();
        if buf.capacity() - len < MIN_READ_SPACE {
            buf.reserve(MIN_READ_SPACE.max(len));
        }
        let cap = buf.capacity();
        let (res, slice) = monoio::io::AsyncReadRent::read(
            &mut self.stream,
            monoio::buf::IoBufMut::slice_mut(buf, len..cap),
        )
        .await;
        self.buf = slice.into_inner();
        matches!(res, Ok(n) if n > 0)
    }

    /// Writes what is pending. Returns false when the client went away.
    async fn flush(&mut self) -> bool {
        if self.out.is_empty() {
            return true;
        }
        let out = std::mem::take(&mut self.out);
        let (res, mut out) = self.stream.write_all(out).await;
        out.clear();
        self.out = out;
        res.is_ok()
    }
}
