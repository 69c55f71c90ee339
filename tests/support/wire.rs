//! HTTP/1.1 on a socket, as bytes, shared by the client and the scripted upstreams: a
//! buffered reader ([`Wire`]) that hands out heads ([`Head`]) and bodies by their framing
//! ([`Framing`], [`BodyReader`]), and the bytes of a request ([`request_bytes`]).

use std::io::{self, Read};
use std::net::TcpStream;
use std::time::Duration;

/// How long a test waits for any one read from a socket before it gives up.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// A message head: the start line and the header fields in order.
#[derive(Debug, Clone, Default)]
pub struct Head {
    /// `HTTP/1.1 200 OK` or `POST /path HTTP/1.1`.
    pub start_line: String,
    /// Header fields as sent (names in their original case).
    pub headers: Vec<(String, String)>,
}

impl Head {
    fn parse(raw: &[u8]) -> io::Result<Head> {
        let text = String::from_utf8_lossy(raw);
        let mut lines = text.split("\r\n");
        let start_line = lines.next().unwrap_or_default().to_string();
        let mut headers = Vec::new();
        for line in lines {
            if line.is_empty() {
                continue;
            }
            let (name, value) = line.split_once(':').ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("bad header line {line:?}"),
                )
            })?;
            headers.push((name.trim().to_string(), value.trim().to_string()));
        }
        Ok(Head {
            start_line,
            headers,
        })
    }

    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every value of header `name`.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// Whether header `name` is present.
    pub fn has(&self, name: &str) -> bool {
        self.header(name).is_some()
    }

    /// A response's status code.
    pub fn status(&self) -> u16 {
        self.start_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    }

    /// A request's method.
    pub fn method(&self) -> &str {
        self.start_line.split(' ').next().unwrap_or("")
    }

    /// A request's target.
    pub fn target(&self) -> &str {
        self.start_line.split(' ').nth(1).unwrap_or("")
    }

    fn is_chunked(&self) -> bool {
        self.header("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
    }

    fn content_length(&self) -> Option<u64> {
        self.header("content-length").and_then(|v| v.parse().ok())
    }

    /// How a response body with this head is delimited.
    pub fn response_framing(&self) -> Framing {
        let status = self.status();
        if (100..200).contains(&status) || status == 204 || status == 304 {
            Framing::Length(0)
        } else if self.is_chunked() {
            Framing::Chunked
        } else if let Some(n) = self.content_length() {
            Framing::Length(n)
        } else {
            Framing::Close
        }
    }

    /// How a request body with this head is delimited.
    pub fn request_framing(&self) -> Framing {
        if self.is_chunked() {
            Framing::Chunked
        } else {
            Framing::Length(self.content_length().unwrap_or(0))
        }
    }
}

/// How a body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// Until the connection closes.
    Close,
}

/// A buffered reader over a TCP stream that can hand out heads, lines and raw bytes.
pub struct Wire {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Wire {
    /// Wraps a stream.
    pub fn new(stream: TcpStream) -> Wire {
        Wire {
            stream,
            buf: Vec::new(),
        }
    }

    /// The underlying stream.
    pub fn stream(&mut self) -> &mut TcpStream {
        &mut self.stream
    }

    /// Bytes read but not consumed yet.
    pub fn buffered(&self) -> &[u8] {
        &self.buf
    }

    fn fill(&mut self) -> io::Result<usize> {
        let mut tmp = [0u8; 16 * 1024];
        loop {
            match self.stream.read(&mut tmp) {
                Ok(n) => {
                    self.buf.extend_from_slice(&tmp[..n]);
                    return Ok(n);
                }
                // A signal to the test process (a child exiting) is not the peer's doing.
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    fn take(&mut self, n: usize) -> Vec<u8> {
        let rest = self.buf.split_off(n);
        std::mem::replace(&mut self.buf, rest)
    }

    /// Reads a head up to the blank line. `Ok(None)` when the peer closed before any byte.
    pub fn read_head(&mut self) -> io::Result<Option<Head>> {
        loop {
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                let raw = self.take(end + 4);
                return Head::parse(&raw[..end]).map(Some);
            }
            if self.buf.len() > 1024 * 1024 {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "head too long"));
            }
            if self.fill()? == 0 {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "peer closed inside a head: {:?}",
                        String::from_utf8_lossy(&self.buf)
                    ),
                ));
            }
        }
    }

    fn read_line(&mut self) -> io::Result<Vec<u8>> {
        loop {
            if let Some(end) = find(&self.buf, b"\r\n") {
                let mut line = self.take(end + 2);
                line.truncate(end);
                return Ok(line);
            }
            if self.fill()? == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "eof in line"));
            }
        }
    }

    /// Up to `max` bytes: what is buffered, or one read. Empty only at end of stream.
    fn read_upto(&mut self, max: usize) -> io::Result<Vec<u8>> {
        if self.buf.is_empty() {
            self.fill()?;
        }
        let n = self.buf.len().min(max);
        Ok(self.take(n))
    }

    /// Reads a whole body delimited by `framing`.
    pub fn read_body(&mut self, framing: Framing) -> io::Result<Vec<u8>> {
        let mut reader = BodyReader::new(framing);
        let mut body = Vec::new();
        while let Some(piece) = reader.next_piece(self)? {
            body.extend_from_slice(&piece);
        }
        Ok(body)
    }
}

pub(super) fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Reads a body piece by piece as it arrives.
pub struct BodyReader {
    framing: Framing,
    remaining: u64,
    chunk_left: u64,
    done: bool,
}

impl BodyReader {
    /// A reader for a body with `framing`.
    pub fn new(framing: Framing) -> BodyReader {
        let remaining = match framing {
            Framing::Length(n) => n,
            _ => 0,
        };
        BodyReader {
            framing,
            remaining,
            chunk_left: 0,
            done: false,
        }
    }

    /// The next piece of body bytes; `None` at the body's end.
    pub fn next_piece(&mut self, wire: &mut Wire) -> io::Result<Option<Vec<u8>>> {
        if self.done {
            return Ok(None);
        }
        match self.framing {
            Framing::Length(_) => {
                if self.remaining == 0 {
                    self.done = true;
                    return Ok(None);
                }
                let piece =
                    wire.read_upto(usize::try_from(self.remaining).unwrap_or(usize::MAX))?;
                if piece.is_empty() {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("eof with {} body bytes to go", self.remaining),
                    ));
                }
                self.remaining -= piece.len() as u64;
                Ok(Some(piece))
            }
            Framing::Close => {
                let piece = wire.read_upto(usize::MAX)?;
                if piece.is_empty() {
                    self.done = true;
                    return Ok(None);
                }
                Ok(Some(piece))
            }
            Framing::Chunked => {
                if self.chunk_left == 0 {
                    let line = wire.read_line()?;
                    let line = String::from_utf8_lossy(&line).into_owned();
                    let size = line.split(';').next().unwrap_or("").trim();
                    let size = u64::from_str_radix(size, 16).map_err(|_| {
                        io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("bad chunk size {line:?}"),
                        )
                    })?;
                    if size == 0 {
                        // Trailers up to the blank line.
                        while !wire.read_line()?.is_empty() {}
                        self.done = true;
                        return Ok(None);
                    }
                    self.chunk_left = size;
                }
                let piece =
                    wire.read_upto(usize::try_from(self.chunk_left).unwrap_or(usize::MAX))?;
                if piece.is_empty() {
                    return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "eof in chunk"));
                }
                self.chunk_left -= piece.len() as u64;
                if self.chunk_left == 0 {
                    let crlf = wire.read_line()?;
                    if !crlf.is_empty() {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            "chunk not followed by CRLF",
                        ));
                    }
                }
                Ok(Some(piece))
            }
        }
    }
}

/// A request's bytes: start line, `Host`, the given headers, `Content-Length` when there is a
/// body or the method is POST, then the body.
pub fn request_bytes(method: &str, target: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut out = format!("{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n");
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    let has_length = headers.iter().any(|(k, _)| {
        k.eq_ignore_ascii_case("content-length") || k.eq_ignore_ascii_case("transfer-encoding")
    });
    if !has_length && (!body.is_empty() || method == "POST") {
        out.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}
