//! One client connection: HTTP/1.1 keep-alive on monoio, plain TCP or TLS (a [`Stream`]
//! enum: the plain path pays one match per read or write, no boxing), one request at a time.
//! Sends the pre-rendered request, reads the answer with `sluice::http::parse_response` and
//! `ChunkedDecoder`, feeds the body to the SSE counter in `--stream` mode, and says how the
//! exchange ended. A failed or non-reusable connection is dropped and re-opened on the next
//! request; with `fresh_connections` every connection is dropped after its answer, so each
//! request pays a connect (and a handshake). Buffers are kept between requests, so an
//! exchange allocates nothing once warm (a TLS handshake allocates inside rustls).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use monoio_rustls::ClientTlsStream;
use sluice::http::{parse_response, ChunkedDecoder, Parse, ResponseFraming, ResponseHead};

use super::record::{Failure, Outcome};
use super::sse::SseScanner;
use super::tls::TlsClient;

/// Longest response head accepted.
const MAX_HEAD: usize = 64 * 1024;
/// Least spare room a read is given; the buffer doubles when less is left.
const READ_SPACE: usize = 16 * 1024;

/// What every connection of a run sends and how it reads answers.
#[derive(Debug, Clone)]
pub struct Exchange {
    /// Where to connect.
    pub addr: SocketAddr,
    /// The whole request, head and body.
    pub request: Arc<[u8]>,
    /// The request is a HEAD (its answer has no body).
    pub head_request: bool,
    /// Count SSE data events in answer bodies.
    pub stream: bool,
    /// Shake hands over TLS after connecting (`https://`).
    pub tls: Option<TlsClient>,
    /// Close each connection after its answer: every request opens a new one.
    pub fresh_connections: bool,
}

/// An open connection: plain TCP, or TLS over it.
// One per connection, kept in place in its `Conn`: the plain variant's unused room costs
// nothing on the request path, and boxing the TLS one would add an allocation per handshake.
#[allow(clippy::large_enum_variant)]
enum Stream {
    Plain(TcpStream),
    Tls(ClientTlsStream<TcpStream>),
}

/// One connection and its buffers.
pub struct Conn {
    exchange: Exchange,
    stream: Option<Stream>,
    /// This connection's copy of the request (monoio writes take the buffer and give it back).
    request: Vec<u8>,
    buf: Vec<u8>,
    body: Vec<u8>,
    head: ResponseHead,
    /// When the last read returned.
    last_read: Instant,
}

impl Conn {
    /// A connection not opened yet.
    pub fn new(exchange: Exchange) -> Self {
        Self {
            request: exchange.request.to_vec(),
            exchange,
            stream: None,
            buf: Vec::with_capacity(READ_SPACE),
            body: Vec::with_capacity(READ_SPACE),
            head: ResponseHead::new(),
            last_read: Instant::now(),
        }
    }

    /// Opens the connection and, for TLS, completes the handshake, giving up at `deadline`:
    /// [`Failure::Connect`] when TCP could not connect, [`Failure::Tls`] when the handshake
    /// failed or was not done by then.
    pub async fn connect(&mut self, deadline: Instant) -> Result<(), Failure> {
        let connect = TcpStream::connect_addr(self.exchange.addr);
        let tcp = match monoio::time::timeout_at(deadline.into(), connect).await {
            Ok(Ok(tcp)) => tcp,
            Ok(Err(_)) | Err(_) => return Err(Failure::Connect),
        };
        // Requests are single writes; Nagle would only delay them.
        let _ = tcp.set_nodelay(true);
        let stream = match &self.exchange.tls {
            None => Stream::Plain(tcp),
            Some(tls) => {
                let handshake = tls.connector.connect(tls.server_name.clone(), tcp);
                match monoio::time::timeout_at(deadline.into(), handshake).await {
                    Ok(Ok(tls)) => Stream::Tls(tls),
                    Ok(Err(_)) | Err(_) => return Err(Failure::Tls),
                }
            }
        };
        self.stream = Some(stream);
        Ok(())
    }

    /// Sends the request (opening the connection first if needed) and reads the whole
    /// answer, failing at `deadline`. `on_events(at, n)` is told of `n` SSE data events
    /// completed by the read that returned at `at` (`--stream` only).
    pub async fn exchange(
        &mut self,
        deadline: Instant,
        on_events: &mut impl FnMut(Instant, u32),
    ) -> Outcome {
        if self.stream.is_none() {
            if let Err(f) = self.connect(deadline).await {
                return Outcome::Failed(f);
            }
        }
        match self.send_and_read(deadline, on_events).await {
            Ok((status, reusable)) => {
                if !reusable || self.exchange.fresh_connections {
                    self.stream = None;
                }
                Outcome::Answered(status)
            }
            Err(f) => {
                self.stream = None;
                Outcome::Failed(f)
            }
        }
    }

    /// Returns the status and whether the connection may carry the next request.
    async fn send_and_read(
        &mut self,
        deadline: Instant,
        on_events: &mut impl FnMut(Instant, u32),
    ) -> Result<(u16, bool), Failure> {
        self.write_request(deadline).await?;
        self.buf.clear();

        // The head, skipping interim 1xx answers.
        loop {
            match parse_response(
                &self.buf,
                self.exchange.head_request,
                MAX_HEAD,
                &mut self.head,
            ) {
                Ok(Parse::Complete) if (100..200).contains(&self.head.status) => {
                    if self.head.status == 101 {
                        // Switching protocols: nothing this client can follow.
                        return Ok((101, false));
                    }
                    self.buf.drain(..self.head.head_len);
                }
                Ok(Parse::Complete) => break,
                Ok(Parse::Partial) => {
                    if self.read_more(deadline).await? == 0 {
                        return Err(Failure::Reset);
                    }
                }
                Err(_) => return Err(Failure::Protocol),
            }
        }

        let stream = self.exchange.stream;
        let mut sse = SseScanner::new();
        let mut pos = self.head.head_len;
        let mut reusable = self.head.keep_alive;
        match self.head.framing {
            ResponseFraming::None => {}
            ResponseFraming::Length(mut left) => loop {
                let avail = (self.buf.len() - pos).min(usize::try_from(left).unwrap_or(usize::MAX));
                if stream {
                    let n = sse.feed(&self.buf[pos..pos + avail]);
                    if n > 0 {
                        on_events(self.last_read, n);
                    }
                }
                pos += avail;
                left -= avail as u64;
                if left == 0 {
                    break;
                }
                self.buf.clear();
                pos = 0;
                if self.read_more(deadline).await? == 0 {
                    return Err(Failure::Reset);
                }
            },
            ResponseFraming::Chunked => {
                let mut decoder = ChunkedDecoder::new(u64::MAX);
                loop {
                    let decoded = decoder
                        .decode(&self.buf[pos..], &mut self.body)
                        .map_err(|_| Failure::Protocol)?;
                    pos += decoded.consumed;
                    if stream {
                        let n = sse.feed(&self.body);
                        if n > 0 {
                            on_events(self.last_read, n);
                        }
                    }
                    self.body.clear();
                    if decoded.done {
                        break;
                    }
                    self.buf.clear();
                    pos = 0;
                    if self.read_more(deadline).await? == 0 {
                        return Err(Failure::Reset);
                    }
                }
            }
            ResponseFraming::Close => {
                reusable = false;
                loop {
                    if stream {
                        let n = sse.feed(&self.buf[pos..]);
                        if n > 0 {
                            on_events(self.last_read, n);
                        }
                    }
                    self.buf.clear();
                    pos = 0;
                    if self.read_more(deadline).await? == 0 {
                        break;
                    }
                }
            }
        }
        // Bytes after the answer were never asked for: do not read the next answer from them.
        if pos < self.buf.len() {
            reusable = false;
        }
        Ok((self.head.status, reusable))
    }

    async fn write_request(&mut self, deadline: Instant) -> Result<(), Failure> {
        let Some(stream) = self.stream.as_mut() else {
            return Err(Failure::Reset);
        };
        let request = std::mem::take(&mut self.request);
        let written = match stream {
            Stream::Plain(s) => {
                monoio::time::timeout_at(deadline.into(), s.write_all(request)).await
            }
            Stream::Tls(s) => monoio::time::timeout_at(deadline.into(), s.write_all(request)).await,
        };
        match written {
            Ok((res, request)) => {
                self.request = request;
                res.map(drop).map_err(classify)
            }
            Err(_) => {
                // The buffer went with the cancelled write.
                self.request = self.exchange.request.to_vec();
                Err(Failure::Timeout)
            }
        }
    }

    /// Reads once, appending to `buf`; the byte count, 0 at end of stream.
    async fn read_more(&mut self, deadline: Instant) -> Result<usize, Failure> {
        let Some(stream) = self.stream.as_mut() else {
            return Err(Failure::Reset);
        };
        let mut buf = std::mem::take(&mut self.buf);
        let len = buf.len();
        if buf.capacity() - len < READ_SPACE {
            buf.reserve(READ_SPACE.max(len));
        }
        let cap = buf.capacity();
        let slice = buf.slice_mut(len..cap);
        let read = match stream {
            Stream::Plain(s) => monoio::time::timeout_at(deadline.into(), s.read(slice)).await,
            Stream::Tls(s) => monoio::time::timeout_at(deadline.into(), s.read(slice)).await,
        };
        match read {
            Ok((res, slice)) => {
                self.buf = slice.into_inner();
                self.last_read = Instant::now();
                res.map_err(classify)
            }
            Err(_) => {
                self.buf = Vec::with_capacity(READ_SPACE);
                Err(Failure::Timeout)
            }
        }
    }
}

fn classify(e: io::Error) -> Failure {
    match e.kind() {
        io::ErrorKind::TimedOut => Failure::Timeout,
        _ => Failure::Reset,
    }
}
