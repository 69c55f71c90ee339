//! A client connection to Sluice ([`Client`]) and the requests tests send through it: raw
//! bytes, whole requests, JSON posts with or without a key, a request whose charge is known
//! to be booked ([`post_settled`]), and a streamed answer read event by event ([`Sse`]).

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::fixtures::chat_body;
use super::process::Sluice;
use super::wire::{find, request_bytes, BodyReader, Head, Wire, READ_TIMEOUT};

/// A response as the client saw it.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Start line and headers.
    pub head: Head,
    /// The body, de-chunked.
    pub body: Vec<u8>,
}

impl Response {
    /// The first value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.header(name)
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON (panics with the body when it is not).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "status {} body is not JSON ({e}): {:?}",
                self.status,
                self.text()
            )
        })
    }
}

/// A raw HTTP/1.1 client connection.
pub struct Client {
    /// The connection.
    pub wire: Wire,
}

impl Client {
    /// Connects to 127.0.0.1:`port` with [`READ_TIMEOUT`] on reads and writes.
    pub fn connect(port: u16) -> Client {
        let stream = TcpStream::connect(("127.0.0.1", port))
            .unwrap_or_else(|e| panic!("connect to 127.0.0.1:{port}: {e}"));
        stream
            .set_read_timeout(Some(READ_TIMEOUT))
            .expect("timeout");
        stream
            .set_write_timeout(Some(READ_TIMEOUT))
            .expect("timeout");
        stream.set_nodelay(true).expect("nodelay");
        Client {
            wire: Wire::new(stream),
        }
    }

    /// The socket itself, for reads that bypass the response parser (nothing buffered yet).
    pub fn raw(&mut self) -> &mut TcpStream {
        self.wire.stream()
    }

    /// Sets the read timeout.
    pub fn set_read_timeout(&mut self, t: Duration) {
        self.wire
            .stream()
            .set_read_timeout(Some(t))
            .expect("timeout");
    }

    /// Writes raw bytes.
    pub fn send(&mut self, bytes: &[u8]) {
        self.wire
            .stream()
            .write_all(bytes)
            .expect("write to sluice");
        self.wire.stream().flush().expect("flush");
    }

    /// Writes raw bytes; the error (e.g. a reset from a closed connection) is returned.
    pub fn try_send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.wire.stream().write_all(bytes)
    }

    /// Reads one response head.
    pub fn read_head(&mut self) -> Head {
        match self.wire.read_head() {
            Ok(Some(h)) => h,
            Ok(None) => panic!("connection closed before a response head"),
            Err(e) => panic!("reading a response head: {e}"),
        }
    }

    /// Reads one whole response.
    pub fn try_read_response(&mut self) -> io::Result<Response> {
        let head = self.wire.read_head()?.ok_or_else(|| {
            io::Error::new(io::ErrorKind::UnexpectedEof, "closed before a response")
        })?;
        let body = self.wire.read_body(head.response_framing())?;
        Ok(Response {
            status: head.status(),
            head,
            body,
        })
    }

    /// Reads one whole response (panics on error or timeout).
    pub fn read_response(&mut self) -> Response {
        self.try_read_response()
            .unwrap_or_else(|e| panic!("reading a response: {e}"))
    }

    /// Sends one request (with `Host` and, for a body or a POST, `Content-Length`) and reads
    /// its response.
    pub fn request(
        &mut self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Response {
        self.send(&request_bytes(method, target, headers, body));
        self.read_response()
    }

    /// `POST target` with a JSON body.
    pub fn post_json(&mut self, target: &str, body: &Value) -> Response {
        let bytes = serde_json::to_vec(body).expect("json");
        self.request(
            "POST",
            target,
            &[
                ("Content-Type", "application/json"),
                ("Authorization", "Bearer sluice-demo-key"),
            ],
            &bytes,
        )
    }

    /// Sends a request and returns its head and an event reader over its body.
    pub fn stream(
        &mut self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> (Head, Sse<'_>) {
        self.send(&request_bytes(method, target, headers, body));
        let head = self.read_head();
        let reader = BodyReader::new(head.response_framing());
        (
            head,
            Sse {
                client: self,
                body: reader,
                pending: Vec::new(),
            },
        )
    }

    /// Whether the server closes the connection (EOF or reset) within `within` *without
    /// sending anything more*: `true` at EOF or a reset, `false` when `within` passes with
    /// the connection open and silent. Any byte — one already buffered by an earlier read or
    /// one that arrives before the close — panics naming the bytes, so "answered once, then
    /// closed" cannot pass when a second answer (a smuggled request's, say) slips out first,
    /// and "still open" cannot pass on a connection that is talking.
    pub fn closed_within(&mut self, within: Duration) -> bool {
        assert!(
            self.wire.buffered().is_empty(),
            "bytes were buffered when the connection should have had nothing more: {:?}",
            String::from_utf8_lossy(self.wire.buffered())
        );
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            self.set_read_timeout(left.max(Duration::from_millis(1)));
            let mut tmp = [0u8; 4096];
            match self.wire.stream().read(&mut tmp) {
                Ok(0) => return true,
                Ok(n) => panic!(
                    "{n} bytes arrived where only the close was due: {:?}",
                    String::from_utf8_lossy(&tmp[..n])
                ),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted
                    ) =>
                {
                    return true
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    continue
                }
                Err(e) => panic!("reading for the close: {e}"),
            }
        }
    }
}

/// Server-sent events read one at a time from a response body.
pub struct Sse<'a> {
    client: &'a mut Client,
    body: BodyReader,
    pending: Vec<u8>,
}

impl Sse<'_> {
    /// The next event's text (its lines, without the blank line that ends it); `None` at the
    /// end of the body.
    pub fn next_event(&mut self) -> Option<String> {
        loop {
            if let Some(end) = find(&self.pending, b"\n\n") {
                let event = self.pending.drain(..end + 2).collect::<Vec<u8>>();
                let text = String::from_utf8_lossy(&event).trim().to_string();
                if text.is_empty() {
                    continue;
                }
                return Some(text);
            }
            match self.body.next_piece(&mut self.client.wire) {
                Ok(Some(piece)) => self
                    .pending
                    .extend(piece.into_iter().filter(|b| *b != b'\r')),
                Ok(None) => {
                    let rest = String::from_utf8_lossy(&self.pending).trim().to_string();
                    self.pending.clear();
                    return (!rest.is_empty()).then_some(rest);
                }
                Err(e) => panic!("reading an event stream: {e}"),
            }
        }
    }

    /// The body's next bytes up to and including the first `end` (an event's line end
    /// twice: `b"\r\r"`, `b"\r\n\r\n"`, `b"\n\n"`), exactly as they came — no CR is
    /// dropped, unlike [`Sse::next_event`] (do not mix the two on one body). At the end of
    /// the body, what is left (if anything).
    pub fn next_raw(&mut self, end: &[u8]) -> Option<Vec<u8>> {
        loop {
            if let Some(at) = find(&self.pending, end) {
                return Some(self.pending.drain(..at + end.len()).collect());
            }
            match self.body.next_piece(&mut self.client.wire) {
                Ok(Some(piece)) => self.pending.extend(piece),
                Ok(None) => {
                    return (!self.pending.is_empty()).then(|| std::mem::take(&mut self.pending))
                }
                Err(e) => panic!("reading an event stream: {e}"),
            }
        }
    }

    /// The `error` object of the event Sluice ended a broken stream with (`data:
    /// {"error": …}`, the last event), read through the body's clean end (its last chunk: a
    /// stream cut without one panics here).
    pub fn error_end(&mut self) -> Value {
        let rest = self.collect_rest();
        let last = rest
            .last()
            .unwrap_or_else(|| panic!("the stream ended without an error event"));
        let data = event_data(last).unwrap_or_else(|| panic!("no data in {last:?}"));
        let v: Value = serde_json::from_str(data).unwrap_or_else(|e| panic!("{e}: {data}"));
        assert!(v["error"].is_object(), "not an error event: {last}");
        v["error"].clone()
    }

    /// Every remaining event.
    pub fn collect_rest(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(e) = self.next_event() {
            out.push(e);
            assert!(out.len() < 100_000, "endless event stream");
        }
        out
    }
}

/// The `data:` payload of an event, if it has one.
pub fn event_data(event: &str) -> Option<&str> {
    event
        .lines()
        .find_map(|l| l.strip_prefix("data:"))
        .map(str::trim)
}

/// `POST target` with a JSON body and the extra `headers` on a fresh connection.
pub fn post_with(s: &Sluice, target: &str, headers: &[(&str, &str)], body: &Value) -> Response {
    let bytes = serde_json::to_vec(body).expect("json");
    let mut all = vec![("Content-Type", "application/json")];
    all.extend_from_slice(headers);
    s.request("POST", target, &all, &bytes)
}

/// `post_with` on a connection closed after the answer (`Connection: close`), returning
/// once Sluice has closed it. Sluice books a request's charge (settles its limits) before it
/// closes the connection, so the next request sees this one's real cost: an observable event
/// to wait for, instead of a pause.
pub fn post_settled(s: &Sluice, target: &str, headers: &[(&str, &str)], body: &Value) -> Response {
    let bytes = serde_json::to_vec(body).expect("json");
    let mut all = vec![
        ("Content-Type", "application/json"),
        ("Connection", "close"),
    ];
    all.extend_from_slice(headers);
    let mut c = s.connect();
    let resp = c.request("POST", target, &all, &bytes);
    wait_settled(&mut c);
    resp
}

/// Waits (≤ 10 s) for Sluice to close `c` after an answer to a `Connection: close` request,
/// with nothing more sent: from then on the request's charge is booked.
pub fn wait_settled(c: &mut Client) {
    c.set_read_timeout(std::time::Duration::from_secs(10));
    let mut rest = Vec::new();
    match std::io::Read::read_to_end(c.raw(), &mut rest) {
        Ok(_) => assert!(
            rest.is_empty(),
            "bytes after the answer: {:?}",
            String::from_utf8_lossy(&rest)
        ),
        Err(e) => panic!("Sluice did not close the connection after its answer: {e}"),
    }
}

/// `POST /v1/chat/completions` with `api-key: key`.
pub fn chat_as(s: &Sluice, key: &str, body: &Value) -> Response {
    post_with(s, "/v1/chat/completions", &[("api-key", key)], body)
}

/// A plain chat to `gpt-4o` (`max_tokens` 100) with `api-key: key`.
pub fn chat(s: &Sluice, key: &str) -> Response {
    chat_as(s, key, &chat_body(Some("gpt-4o"), false))
}

/// A chat request to deployment `chat` on `c`.
pub fn chat_on(c: &mut Client) -> Response {
    c.post_json("/v1/chat/completions", &chat_body(Some("chat"), false))
}

/// The backend that served a successful answer (its `model`).
pub fn served_by(resp: &Response) -> String {
    assert_eq!(resp.status, 200, "body: {}", resp.text());
    resp.json()["model"]
        .as_str()
        .unwrap_or_else(|| panic!("answer without model: {}", resp.text()))
        .to_string()
}
