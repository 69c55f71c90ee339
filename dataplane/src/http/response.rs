//! Response heads: parsing an upstream's status line and header fields, and deciding how
//! its body is framed (RFC 9112 §6.3) so the gateway knows where the response ends.
//!
//! Upstreams are not trusted to frame correctly: an ambiguous or malformed head is a
//! [`ResponseError`], for which the gateway answers 502 and drops the upstream connection.
//! Bare LF line endings are tolerated here (RFC 9112 §2.2 allows a recipient to), since the
//! gateway re-frames the response for its client anyway.

use std::mem::MaybeUninit;
use std::ops::Range;

use super::{
    find_header, list_contains, list_items, parse_content_length, span_of, HeaderSpan, Parse,
};

/// The most header fields accepted in an upstream response.
const HEADER_CAPACITY: usize = 256;

/// How a response's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ResponseFraming {
    /// No body: a 1xx, 204 or 304 status, or the answer to a HEAD request. Default.
    #[default]
    None,
    /// Exactly this many bytes follow the head (`Content-Length`, possibly 0).
    Length(u64),
    /// A chunked body follows.
    Chunked,
    /// The body runs until the upstream closes the connection.
    Close,
}

/// A parsed response head. Ranges point into the buffer given to [`parse_response`]; the
/// struct is meant to be kept per upstream connection and reused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    /// The status code, 100..=599.
    pub status: u16,
    /// `0` for HTTP/1.0, `1` for HTTP/1.1.
    pub minor_version: u8,
    /// The reason phrase (may be empty).
    pub reason: Range<usize>,
    /// The header fields, in order.
    pub headers: Vec<HeaderSpan>,
    /// Length of the head in bytes, including the final empty line; the body starts here.
    pub head_len: usize,
    /// How the body is delimited.
    pub framing: ResponseFraming,
    /// The upstream connection may be reused after this response's body.
    pub keep_alive: bool,
}

impl Default for ResponseHead {
    fn default() -> Self {
        Self::new()
    }
}

impl ResponseHead {
    /// An empty head with room for 32 header fields (it grows as needed and keeps its size).
    pub fn new() -> Self {
        Self {
            status: 0,
            minor_version: 1,
            reason: 0..0,
            headers: Vec::with_capacity(32),
            head_len: 0,
            framing: ResponseFraming::None,
            keep_alive: false,
        }
    }

    /// The value of the first header named `name` (case-insensitive), if any.
    pub fn header<'b>(&self, buf: &'b [u8], name: &str) -> Option<&'b [u8]> {
        find_header(buf, &self.headers, name.as_bytes())
    }

    /// The reason phrase; empty if `buf` is not the buffer the head was parsed from.
    pub fn reason<'b>(&self, buf: &'b [u8]) -> &'b [u8] {
        buf.get(self.reason.clone()).unwrap_or_default()
    }

    fn reset(&mut self) {
        self.status = 0;
        self.minor_version = 1;
        self.reason = 0..0;
        self.headers.clear();
        self.head_len = 0;
        self.framing = ResponseFraming::None;
        self.keep_alive = false;
    }
}

/// Why an upstream response head was refused; the gateway answers 502 for each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ResponseError {
    /// The head is longer than the limit.
    #[error("upstream response head too large")]
    HeadTooLarge,
    /// The head is malformed or its framing ambiguous; the text says why.
    #[error("malformed upstream response: {0}")]
    Malformed(&'static str),
}

impl ResponseError {
    /// A short explanation, suitable for logs and the 502 body.
    pub fn message(&self) -> &'static str {
        match self {
            Self::HeadTooLarge => "the upstream response head is larger than the gateway accepts",
            Self::Malformed(why) => why,
        }
    }
}

/// Parses the response head at the start of `buf` into `out`.
///
/// `request_was_head` says the request was a HEAD, whose response never has a body.
/// Returns [`Parse::Partial`] while more bytes are needed, refusing heads longer than
/// `max_head` bytes even while partial. Never panics.
pub fn parse_response(
    buf: &[u8],
    request_was_head: bool,
    max_head: usize,
    out: &mut ResponseHead,
) -> Result<Parse, ResponseError> {
    out.reset();
    let window = buf.get(..max_head).unwrap_or(buf);

    let mut slots = [MaybeUninit::<httparse::Header<'_>>::uninit(); HEADER_CAPACITY];
    let mut res = httparse::Response::new(&mut []);
    let config = httparse::ParserConfig::default();
    let head_len = match config.parse_response_with_uninit_headers(&mut res, window, &mut slots) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() >= max_head => {
            return Err(ResponseError::HeadTooLarge)
        }
        Ok(httparse::Status::Partial) => return Ok(Parse::Partial),
        Err(e) => return Err(map_httparse_error(e)),
    };

    out.head_len = head_len;
    out.status = res.code.unwrap_or(0);
    if !(100..=599).contains(&out.status) {
        return Err(ResponseError::Malformed("status code out of range"));
    }
    out.minor_version = res.version.unwrap_or(1);
    // The status line is "HTTP/1.x NNN": the reason, if any, starts after byte 12.
    out.reason = span_of(buf, res.reason.unwrap_or("").as_bytes(), 12);
    let mut at = out.reason.end;
    for h in res.headers.iter() {
        let name = span_of(buf, h.name.as_bytes(), at);
        let value = span_of(buf, h.value, name.end);
        at = value.end.max(name.end);
        out.headers.push(HeaderSpan { name, value });
    }

    apply_header_semantics(buf, request_was_head, out)?;
    Ok(Parse::Complete)
}

fn map_httparse_error(e: httparse::Error) -> ResponseError {
    match e {
        httparse::Error::TooManyHeaders => ResponseError::Malformed("too many header fields"),
        httparse::Error::HeaderName => ResponseError::Malformed("invalid header field name"),
        httparse::Error::HeaderValue => ResponseError::Malformed("invalid header field value"),
        httparse::Error::NewLine => ResponseError::Malformed("invalid line ending"),
        httparse::Error::Status => ResponseError::Malformed("malformed status line"),
        httparse::Error::Token => ResponseError::Malformed("malformed status line"),
        httparse::Error::Version => ResponseError::Malformed("unsupported HTTP version"),
    }
}

/// Decides framing and keep-alive from the status and header fields (RFC 9112 §6.3).
fn apply_header_semantics(
    buf: &[u8],
    request_was_head: bool,
    out: &mut ResponseHead,
) -> Result<(), ResponseError> {
    let mut content_length: Option<u64> = None;
    let mut transfer_encoding = false;
    // Transfer codings named over all Transfer-Encoding fields, and whether each is chunked.
    let mut codings = 0u32;
    let mut all_chunked = true;
    let mut close = false;
    let mut keep_alive_token = false;

    for h in &out.headers {
        let name = h.name(buf);
        let value = h.value(buf);
        if name.eq_ignore_ascii_case(b"content-length") {
            // Repeated or listed values are tolerated only when they all agree
            // (RFC 9110 §8.6).
            let mut items = 0;
            for item in value.split(|b| *b == b',') {
                items += 1;
                let n = parse_content_length(item)
                    .ok_or(ResponseError::Malformed("malformed Content-Length"))?;
                if content_length.is_some_and(|prev| prev != n) {
                    return Err(ResponseError::Malformed(
                        "conflicting Content-Length values",
                    ));
                }
                content_length = Some(n);
            }
            if items == 0 {
                return Err(ResponseError::Malformed("malformed Content-Length"));
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            transfer_encoding = true;
            for coding in list_items(value) {
                codings = codings.saturating_add(1);
                all_chunked &= coding.eq_ignore_ascii_case(b"chunked");
            }
        } else if name.eq_ignore_ascii_case(b"connection") {
            close |= list_contains(value, b"close");
            keep_alive_token |= list_contains(value, b"keep-alive");
        }
    }

    if transfer_encoding {
        if content_length.is_some() {
            return Err(ResponseError::Malformed(
                "both Content-Length and Transfer-Encoding sent",
            ));
        }
        // Only `chunked` alone can be passed on faithfully: Sluice de-chunks and re-frames
        // the body, and has nowhere to carry another coding (`gzip, chunked` would reach the
        // client as raw gzip with no Content-Encoding). `identity` was removed from the
        // registry (RFC 9112 §7), `chunked` twice is invalid (§7.1), and the HTTP/1.0 case
        // is below.
        if codings != 1 || !all_chunked {
            return Err(ResponseError::Malformed(
                "Transfer-Encoding other than a single chunked",
            ));
        }
        if out.minor_version == 0 {
            // RFC 9112 §6.1: an HTTP/1.0 message with Transfer-Encoding has faulty framing.
            return Err(ResponseError::Malformed(
                "Transfer-Encoding in an HTTP/1.0 response",
            ));
        }
    }

    let bodiless = request_was_head || out.status < 200 || out.status == 204 || out.status == 304;
    out.framing = if bodiless {
        ResponseFraming::None
    } else if transfer_encoding {
        ResponseFraming::Chunked
    } else if let Some(n) = content_length {
        ResponseFraming::Length(n)
    } else {
        ResponseFraming::Close
    };
    out.keep_alive = out.framing != ResponseFraming::Close
        && !close
        && (out.minor_version >= 1 || keep_alive_token);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 64 * 1024;

    fn parse(buf: &[u8], head: bool) -> Result<(Parse, ResponseHead), ResponseError> {
        let mut out = ResponseHead::new();
        parse_response(buf, head, MAX, &mut out).map(|p| (p, out))
    }

    fn complete(buf: &[u8]) -> ResponseHead {
        match parse(buf, false) {
            Ok((Parse::Complete, head)) => head,
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(buf)),
        }
    }

    fn malformed(buf: &[u8]) -> &'static str {
        match parse(buf, false) {
            Err(ResponseError::Malformed(why)) => why,
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(buf)),
        }
    }

    #[test]
    fn parses_a_json_response() {
        let buf =
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}";
        let head = complete(buf);
        assert_eq!(head.status, 200);
        assert_eq!(head.minor_version, 1);
        assert_eq!(head.reason(buf), b"OK");
        assert_eq!(head.head_len, buf.len() - 2);
        assert_eq!(head.framing, ResponseFraming::Length(2));
        assert!(head.keep_alive);
        assert_eq!(
            head.header(buf, "content-type"),
            Some(b"application/json".as_slice())
        );
        assert_eq!(head.headers.len(), 2);
    }

    #[test]
    fn missing_reason_is_an_empty_range_in_the_buffer() {
        let buf = b"HTTP/1.1 204\r\n\r\n";
        let head = complete(buf);
        assert_eq!(head.reason(buf), b"");
        assert!(head.reason.end <= buf.len());
        assert_eq!(head.framing, ResponseFraming::None);
    }

    #[test]
    fn partial_until_complete_and_limit_enforced() {
        let buf = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
        for n in 0..buf.len() {
            let mut out = ResponseHead::new();
            assert_eq!(
                parse_response(&buf[..n], false, MAX, &mut out),
                Ok(Parse::Partial)
            );
        }
        let mut out = ResponseHead::new();
        assert_eq!(
            parse_response(buf, false, buf.len(), &mut out),
            Ok(Parse::Complete)
        );
        assert_eq!(
            parse_response(buf, false, buf.len() - 1, &mut out),
            Err(ResponseError::HeadTooLarge)
        );
        assert_eq!(
            parse_response(&buf[..buf.len() - 1], false, buf.len() - 1, &mut out),
            Err(ResponseError::HeadTooLarge)
        );
        assert_eq!(
            parse_response(&buf[..buf.len() - 2], false, buf.len() - 1, &mut out),
            Ok(Parse::Partial)
        );
    }

    #[test]
    fn chunked_and_close_delimited() {
        let head = complete(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(head.framing, ResponseFraming::Chunked);
        assert!(head.keep_alive);
        let head = complete(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n");
        assert_eq!(head.framing, ResponseFraming::Chunked);
        // Empty list elements are ignored (RFC 9110 §5.6.1).
        let head = complete(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: , chunked ,\r\n\r\n");
        assert_eq!(head.framing, ResponseFraming::Chunked);
        let head = complete(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n");
        assert_eq!(head.framing, ResponseFraming::Close);
        assert!(!head.keep_alive);
    }

    #[test]
    fn bodiless_statuses_and_head_requests() {
        for status in [
            "100 Continue",
            "101 Switching",
            "103 Early",
            "204 No Content",
            "304 Not Modified",
        ] {
            let buf = format!("HTTP/1.1 {status}\r\nContent-Length: 10\r\n\r\n");
            let head = complete(buf.as_bytes());
            assert_eq!(head.framing, ResponseFraming::None, "{status}");
        }
        let buf = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n";
        let (_, head) = parse(buf, true).unwrap();
        assert_eq!(head.framing, ResponseFraming::None);
        assert!(head.keep_alive);
        let buf = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(parse(buf, true).unwrap().1.framing, ResponseFraming::None);
        // Without framing headers a HEAD response still ends with its head.
        let buf = b"HTTP/1.1 200 OK\r\n\r\n";
        let (_, head) = parse(buf, true).unwrap();
        assert_eq!(head.framing, ResponseFraming::None);
        assert!(head.keep_alive);
    }

    #[test]
    fn framing_conflicts_are_malformed() {
        assert!(malformed(
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        .contains("both"));
        assert!(
            malformed(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n")
                .contains("conflicting")
        );
        assert!(
            malformed(b"HTTP/1.1 200 OK\r\nContent-Length: 3, 4\r\n\r\n").contains("conflicting")
        );
        for value in ["", "-1", "+1", "x", "1 1", "18446744073709551616", "3,"] {
            let buf = format!("HTTP/1.1 200 OK\r\nContent-Length: {value}\r\n\r\n");
            assert!(
                malformed(buf.as_bytes()).contains("malformed Content-Length"),
                "{value:?}"
            );
        }
        for value in [
            "gzip",
            "chunked, gzip",
            "chunked, chunked",
            "",
            "gzip, chunked",
            "GZIP, Chunked",
            "deflate, chunked",
            "identity",
            "identity, chunked",
            "chunked;q=1",
            "x-custom, chunked",
        ] {
            let buf = format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: {value}\r\n\r\n");
            assert!(malformed(buf.as_bytes()).contains("chunked"), "{value:?}");
        }
        let two =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n";
        assert!(malformed(two).contains("chunked"));
        let two =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(malformed(two).contains("chunked"));
        let two =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(malformed(two).contains("chunked"));
        assert!(
            malformed(b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                .contains("HTTP/1.0")
        );
    }

    #[test]
    fn agreeing_content_lengths_are_tolerated() {
        let head =
            complete(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 3, 3\r\n\r\n");
        assert_eq!(head.framing, ResponseFraming::Length(3));
    }

    #[test]
    fn keep_alive_rules() {
        assert!(
            !complete(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
                .keep_alive
        );
        assert!(!complete(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n").keep_alive);
        assert!(
            complete(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n")
                .keep_alive
        );
        assert!(!complete(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\n\r\n").keep_alive);
    }

    #[test]
    fn malformed_status_lines() {
        malformed(b"HTTP/1.1 20 OK\r\n\r\n");
        malformed(b"HTTP/1.1 099 Low\r\n\r\n");
        malformed(b"HTTP/1.1 600 High\r\n\r\n");
        malformed(b"HTTP/2 200 OK\r\n\r\n");
        malformed(b"HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n");
        malformed(b"HTTP/1.1 200 OK\r\nX: a\0b\r\n\r\n");
        malformed(b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n");
        let mut many = b"HTTP/1.1 200 OK\r\n".to_vec();
        for _ in 0..300 {
            many.extend_from_slice(b"X: y\r\n");
        }
        many.extend_from_slice(b"\r\n");
        assert!(malformed(&many).contains("too many"));
    }

    #[test]
    fn bare_lf_is_tolerated_from_upstreams() {
        let buf = b"HTTP/1.1 200 OK\nContent-Length: 1\n\nx";
        let head = complete(buf);
        assert_eq!(head.head_len, buf.len() - 1);
        assert_eq!(head.framing, ResponseFraming::Length(1));
    }

    #[test]
    fn error_messages() {
        assert!(!ResponseError::HeadTooLarge.message().is_empty());
        assert_eq!(ResponseError::Malformed("x").message(), "x");
        assert!(ResponseError::Malformed("x").to_string().contains('x'));
    }
}
