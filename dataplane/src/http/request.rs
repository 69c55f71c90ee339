//! Request heads: parsing a client's request line and header fields, and deciding how its
//! body is framed.
//!
//! [`parse_request`] is called with everything read so far on a connection; it answers
//! [`Parse::Partial`] until the head is complete, then fills a reusable [`RequestHead`]
//! whose ranges point into the caller's buffer. Every way a head can be refused is a
//! [`RequestError`] carrying its status code and a message for the client. Size limits are
//! enforced while the head is still partial, so a client cannot make the gateway buffer
//! more than `max_head` bytes.
//!
//! The Host header and an absolute-form target's authority are checked against RFC 9112
//! §3.2 and RFC 3986 §3.2.2 (see [`parse_request`]): a gateway and the servers behind it must
//! not disagree on which host a request is for.

use std::mem::MaybeUninit;
use std::ops::Range;

use super::{find_header, list_contains, parse_content_length, span_of, HeaderSpan, Parse};
use crate::snapshot::HttpLimits;

/// The most header fields any request may carry; the config caps `max_headers` at this.
const HEADER_CAPACITY: usize = 256;

/// How a request's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BodyFraming {
    /// No body: neither Content-Length nor Transfer-Encoding was sent. Default.
    #[default]
    None,
    /// Exactly this many bytes follow the head (`Content-Length`, possibly 0).
    Length(u64),
    /// A chunked body follows (`Transfer-Encoding: chunked`); decode with
    /// [`ChunkedDecoder`](super::ChunkedDecoder).
    Chunked,
}

/// A parsed request head. Ranges point into the buffer given to [`parse_request`]; the
/// struct is meant to be kept per connection and reused for every request on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// The method, e.g. `POST`.
    pub method: Range<usize>,
    /// The request target's path and query: the target as sent when it is origin-form
    /// (`/v1/models?x=1`) or `*`; for an absolute-form target (`http://host/v1/models`), the
    /// part after its authority (empty when it has no path).
    pub target: Range<usize>,
    /// `0` for HTTP/1.0, `1` for HTTP/1.1.
    pub minor_version: u8,
    /// The header fields, in order.
    pub headers: Vec<HeaderSpan>,
    /// Length of the head in bytes, including any leading empty lines and the final CRLF;
    /// the body starts at this offset.
    pub head_len: usize,
    /// How the body is delimited.
    pub body: BodyFraming,
    /// The client sent `Expect: 100-continue` on HTTP/1.1 and waits for `100 Continue`.
    pub expect_continue: bool,
    /// The connection may serve another request after this one (HTTP/1.1 without
    /// `Connection: close`, or HTTP/1.0 with `Connection: keep-alive`).
    pub keep_alive: bool,
    /// The host the request is for, validated (see [`parse_request`]): an absolute-form
    /// target's authority, else the Host header's value; `None` for an HTTP/1.0 request
    /// without either.
    pub host: Option<Range<usize>>,
}

impl Default for RequestHead {
    fn default() -> Self {
        Self::new()
    }
}

impl RequestHead {
    /// An empty head with room for 32 header fields (it grows as needed and keeps its size).
    pub fn new() -> Self {
        Self {
            method: 0..0,
            target: 0..0,
            minor_version: 1,
            headers: Vec::with_capacity(32),
            head_len: 0,
            body: BodyFraming::None,
            expect_continue: false,
            keep_alive: true,
            host: None,
        }
    }

    /// The method as text; empty if `buf` is not the buffer the head was parsed from.
    pub fn method<'b>(&self, buf: &'b [u8]) -> &'b str {
        text(buf, &self.method)
    }

    /// The request target as text; empty if `buf` is not the buffer the head was parsed
    /// from or the target is not UTF-8.
    pub fn target<'b>(&self, buf: &'b [u8]) -> &'b str {
        text(buf, &self.target)
    }

    /// The value of the first header named `name` (case-insensitive), if any.
    pub fn header<'b>(&self, buf: &'b [u8], name: &str) -> Option<&'b [u8]> {
        find_header(buf, &self.headers, name.as_bytes())
    }

    /// The host the request is for (see [`RequestHead::host`](Self#structfield.host)).
    pub fn host<'b>(&self, buf: &'b [u8]) -> Option<&'b [u8]> {
        self.host.as_ref().and_then(|r| buf.get(r.clone()))
    }

    fn reset(&mut self) {
        self.method = 0..0;
        self.target = 0..0;
        self.minor_version = 1;
        self.headers.clear();
        self.head_len = 0;
        self.body = BodyFraming::None;
        self.expect_continue = false;
        self.keep_alive = true;
        self.host = None;
    }
}

fn text<'b>(buf: &'b [u8], range: &Range<usize>) -> &'b str {
    buf.get(range.clone())
        .and_then(|b| std::str::from_utf8(b).ok())
        .unwrap_or("")
}

/// Why a request head was refused. Each maps to a status code and a message for the
/// client; the connection should be closed after answering, since framing is uncertain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The request line is longer than `max_request_line` → 414.
    #[error("request line too long")]
    UriTooLong,
    /// The head is longer than `max_head` → 431.
    #[error("request head too large")]
    HeadTooLarge,
    /// More than `max_headers` header fields → 431.
    #[error("too many header fields")]
    TooManyHeaders,
    /// The Content-Length is over `max_body` → 413.
    #[error("request body too large")]
    PayloadTooLarge,
    /// The head is malformed or its framing ambiguous → 400; the text says why.
    #[error("bad request: {0}")]
    BadRequest(&'static str),
}

impl RequestError {
    /// The status code to answer with: 414, 431, 431, 413 or 400.
    pub fn status(&self) -> u16 {
        match self {
            Self::UriTooLong => 414,
            Self::HeadTooLarge | Self::TooManyHeaders => 431,
            Self::PayloadTooLarge => 413,
            Self::BadRequest(_) => 400,
        }
    }

    /// A short explanation for the client, suitable for an error body.
    pub fn message(&self) -> &'static str {
        match self {
            Self::UriTooLong => "the request line is longer than the gateway accepts",
            Self::HeadTooLarge => "the request head is larger than the gateway accepts",
            Self::TooManyHeaders => "the request has more header fields than the gateway accepts",
            Self::PayloadTooLarge => "the request body is larger than the gateway accepts",
            Self::BadRequest(why) => why,
        }
    }
}

/// The searcher for the blank line that ends a head, built once: `memmem::find` would build
/// it again on every call.
static HEAD_END: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"\r\n\r\n"));

/// Parses the request head at the start of `buf` into `out`.
///
/// Returns [`Parse::Partial`] when more bytes are needed (call again with the same bytes
/// plus what arrived since), [`Parse::Complete`] when `out` describes a whole head of
/// `out.head_len` bytes, or the reason the request must be refused. Limits are checked
/// while partial too: a request line over `limits.max_request_line` or a head over
/// `limits.max_head` is refused as soon as that is certain. Leading empty lines (CRLF) are
/// skipped, as RFC 9112 §2.2 allows. Never panics; never allocates once `out.headers` has
/// grown to the request's header count.
///
/// Host rules (RFC 9112 §3.2, 400 for each): an HTTP/1.1 request needs exactly one Host
/// header, an HTTP/1.0 one at most one; its value must be `uri-host [ ":" port ]` (RFC 3986
/// §3.2.2): a bracketed IPv6 or IPvFuture literal, or a reg-name (which covers IPv4) of
/// unreserved characters, percent-encodings and sub-delims, with a port of digits up to
/// 65535. Stricter than the grammar, on purpose: a comma is refused (a list of hosts, where
/// recipients disagree on which element counts), as is an empty port after `:`, an empty
/// host name and an empty Host value (RFC 9112 allows one only for a target without an
/// authority; every target Sluice serves has one, taken from Host). IPv6 zone identifiers
/// (RFC 6874) are refused.
///
/// Request targets (RFC 9112 §3.2): origin-form and `*` pass as sent. Absolute-form with an
/// `http` or `https` scheme is accepted, as §3.2.2 requires of servers: its authority is
/// validated like Host and wins over the Host header (which must still be present and
/// valid), and [`RequestHead::target`](RequestHead#structfield.target) holds its path and
/// query, so routing sees the same target either way. Authority-form and other schemes are
/// refused with 400: Sluice is not a forward proxy.
pub fn parse_request(
    buf: &[u8],
    limits: &HttpLimits,
    out: &mut RequestHead,
) -> Result<Parse, RequestError> {
    out.reset();

    // Skip the empty lines a client may send between pipelined requests.
    let mut start = 0;
    while buf.get(start..start + 2) == Some(b"\r\n".as_slice()) {
        start += 2;
    }
    if start > limits.max_head {
        return Err(RequestError::HeadTooLarge);
    }

    // The request line ends at the first CR or LF; without one, it is too long once it has
    // more bytes than the limit.
    let rest = buf.get(start..).unwrap_or_default();
    let line_window = rest
        .get(..limits.max_request_line.saturating_add(1))
        .unwrap_or(rest);
    if memchr::memchr2(b'\r', b'\n', line_window).is_none()
        && line_window.len() > limits.max_request_line
    {
        return Err(RequestError::UriTooLong);
    }

    // The head ends at the first CRLF CRLF after the request line starts (any bare LF that
    // could end it differently is refused below).
    let window = buf.get(..limits.max_head).unwrap_or(buf);
    let head_end = window
        .get(start..)
        .and_then(|w| HEAD_END.find(w))
        .map(|i| start + i + 4);
    if head_end.is_none() && buf.len() >= limits.max_head {
        return Err(RequestError::HeadTooLarge);
    }
    let head = head_end.and_then(|end| buf.get(..end)).unwrap_or(window);
    check_head_bytes(head, head_end.is_some())?;

    let mut slots = [MaybeUninit::<httparse::Header<'_>>::uninit(); HEADER_CAPACITY];
    let slots = slots
        .get_mut(..limits.max_headers.min(HEADER_CAPACITY))
        .unwrap_or_default();
    let mut req = httparse::Request::new(&mut []);
    let head_len = match req.parse_with_uninit_headers(head, slots) {
        Ok(httparse::Status::Complete(len)) => len,
        // A head that ends in CRLF CRLF yet does not parse is malformed, not unfinished;
        // answering Partial would leave the client waiting for the head timeout.
        Ok(httparse::Status::Partial) if head_end.is_some() => {
            return Err(RequestError::BadRequest("malformed request head"))
        }
        Ok(httparse::Status::Partial) => return Ok(Parse::Partial),
        Err(e) => return Err(explain_bad_bytes(head).unwrap_or_else(|| map_httparse_error(e))),
    };

    out.head_len = head_len;
    out.minor_version = req.version.unwrap_or(1);
    out.method = span_of(buf, req.method.unwrap_or("").as_bytes(), start);
    out.target = span_of(buf, req.path.unwrap_or("").as_bytes(), out.method.end);
    let mut at = out.target.end;
    for h in req.headers.iter() {
        let name = span_of(buf, h.name.as_bytes(), at);
        let value = span_of(buf, h.value, name.end);
        at = value.end.max(name.end);
        out.headers.push(HeaderSpan { name, value });
    }

    apply_header_semantics(buf, limits, out)?;
    Ok(Parse::Complete)
}

/// Refuses NUL, bare CR, bare LF and obs-fold anywhere in `head` (the head so far, or the
/// whole head when `complete`). httparse accepts bare LF as a line ending; we do not,
/// because an upstream that disagrees would see a different message.
fn check_head_bytes(head: &[u8], complete: bool) -> Result<(), RequestError> {
    // httparse refuses NUL and a CR not followed by LF wherever they occur, so only LFs need
    // a look here: one needle instead of three halves the stops on a typical head.
    for i in memchr::memchr_iter(b'\n', head) {
        if i == 0 || head.get(i - 1) != Some(&b'\r') {
            return Err(RequestError::BadRequest("bare LF in request head"));
        }
        let last = complete && i + 1 == head.len();
        if !last && matches!(head.get(i + 1), Some(b' ' | b'\t')) {
            return Err(RequestError::BadRequest(
                "obsolete line folding (header line starting with whitespace)",
            ));
        }
    }
    Ok(())
}

/// Names the offending byte when httparse refused a head for a NUL or a bare CR, so the
/// client reads what was wrong. Only runs on the error path.
fn explain_bad_bytes(head: &[u8]) -> Option<RequestError> {
    for i in memchr::memchr2_iter(b'\r', 0, head) {
        match head.get(i) {
            Some(0) => return Some(RequestError::BadRequest("NUL byte in request head")),
            _ if !matches!(head.get(i + 1), Some(b'\n') | None) => {
                return Some(RequestError::BadRequest("bare CR in request head"))
            }
            _ => {}
        }
    }
    None
}

fn map_httparse_error(e: httparse::Error) -> RequestError {
    match e {
        httparse::Error::TooManyHeaders => RequestError::TooManyHeaders,
        httparse::Error::HeaderName => RequestError::BadRequest("invalid header field name"),
        httparse::Error::HeaderValue => RequestError::BadRequest("invalid header field value"),
        httparse::Error::NewLine => RequestError::BadRequest("invalid line ending"),
        httparse::Error::Token => RequestError::BadRequest("malformed request line"),
        httparse::Error::Version => RequestError::BadRequest("unsupported HTTP version"),
        httparse::Error::Status => RequestError::BadRequest("malformed request line"),
    }
}

/// Decides body framing, keep-alive, Expect and Host from the header fields, refusing
/// every ambiguous combination (RFC 9112 §6.3).
fn apply_header_semantics(
    buf: &[u8],
    limits: &HttpLimits,
    out: &mut RequestHead,
) -> Result<(), RequestError> {
    let mut content_length: Option<u64> = None;
    let mut chunked = false;
    let mut close = false;
    let mut keep_alive_token = false;
    let mut host: Option<Range<usize>> = None;

    for h in &out.headers {
        let name = h.name(buf);
        let value = h.value(buf);
        if name.eq_ignore_ascii_case(b"content-length") {
            if content_length.is_some() {
                return Err(RequestError::BadRequest("repeated Content-Length header"));
            }
            content_length = Some(
                parse_content_length(value)
                    .ok_or(RequestError::BadRequest("malformed Content-Length header"))?,
            );
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            if chunked {
                return Err(RequestError::BadRequest(
                    "repeated Transfer-Encoding header",
                ));
            }
            if !super::trim_ows(value).eq_ignore_ascii_case(b"chunked") {
                return Err(RequestError::BadRequest(
                    "unsupported Transfer-Encoding (only chunked is accepted)",
                ));
            }
            chunked = true;
        } else if name.eq_ignore_ascii_case(b"host") {
            if host.is_some() {
                return Err(RequestError::BadRequest("repeated Host header"));
            }
            check_authority(value).map_err(HostFault::in_host_header)?;
            host = Some(h.value.clone());
        } else if name.eq_ignore_ascii_case(b"connection") {
            close |= list_contains(value, b"close");
            keep_alive_token |= list_contains(value, b"keep-alive");
        } else if name.eq_ignore_ascii_case(b"expect") {
            out.expect_continue |= super::trim_ows(value).eq_ignore_ascii_case(b"100-continue");
        }
    }

    if chunked && content_length.is_some() {
        return Err(RequestError::BadRequest(
            "both Content-Length and Transfer-Encoding sent",
        ));
    }
    if chunked && out.minor_version == 0 {
        // RFC 9112 §6.1: an HTTP/1.0 message with Transfer-Encoding has faulty framing.
        return Err(RequestError::BadRequest(
            "Transfer-Encoding is not allowed in HTTP/1.0",
        ));
    }
    if out.minor_version >= 1 && host.is_none() {
        return Err(RequestError::BadRequest("missing Host header"));
    }
    out.body = match content_length {
        Some(n) if n > limits.max_body => return Err(RequestError::PayloadTooLarge),
        Some(n) => BodyFraming::Length(n),
        None if chunked => BodyFraming::Chunked,
        None => BodyFraming::None,
    };
    // RFC 9110 §10.1.1: a 100-continue expectation in an HTTP/1.0 request is ignored.
    out.expect_continue &= out.minor_version >= 1;
    out.keep_alive = !close && (out.minor_version >= 1 || keep_alive_token);
    out.host = host;
    apply_target_form(buf, out)
}

/// Reduces an absolute-form target to its path and query and makes its authority the
/// request's host; refuses forms Sluice does not serve (see [`parse_request`]).
fn apply_target_form(buf: &[u8], out: &mut RequestHead) -> Result<(), RequestError> {
    let target = buf.get(out.target.clone()).unwrap_or_default();
    if target.first() == Some(&b'/') || target == b"*" {
        return Ok(());
    }
    let after_scheme = ["http://", "https://"].iter().find_map(|scheme| {
        target
            .get(..scheme.len())
            .filter(|s| s.eq_ignore_ascii_case(scheme.as_bytes()))
            .map(|_| scheme.len())
    });
    let Some(after_scheme) = after_scheme else {
        return Err(RequestError::BadRequest(
            "unsupported request target: send an origin-form path such as /v1/chat/completions",
        ));
    };
    let rest = target.get(after_scheme..).unwrap_or_default();
    let authority_len = memchr::memchr2(b'/', b'?', rest).unwrap_or(rest.len());
    let authority = rest.get(..authority_len).unwrap_or_default();
    check_authority(authority).map_err(HostFault::in_target)?;
    let authority_start = out.target.start + after_scheme;
    let path_start = authority_start + authority_len;
    out.host = Some(authority_start..path_start);
    out.target = path_start..out.target.end;
    Ok(())
}

/// Declares [`HostFault`] with one message per fault, for a Host header and for a target's
/// authority.
macro_rules! host_faults {
    ($($fault:ident => $why:literal,)*) => {
        /// Why a host (`uri-host [ ":" port ]`) was refused.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        enum HostFault {
            $($fault,)*
        }

        impl HostFault {
            fn in_host_header(self) -> RequestError {
                match self {
                    $(Self::$fault => RequestError::BadRequest(
                        concat!("invalid Host header: ", $why),
                    ),)*
                }
            }

            fn in_target(self) -> RequestError {
                match self {
                    $(Self::$fault => RequestError::BadRequest(
                        concat!("invalid host in the request target: ", $why),
                    ),)*
                }
            }
        }
    };
}

host_faults! {
    Empty => "empty value (every request to this gateway must name its host)",
    Whitespace => "whitespace in the value",
    List => "a comma-separated list (exactly one host is allowed)",
    Delimiter => "user info, path, query or fragment (`@`, `/`, `\\`, `?` or `#`)",
    Control => "control character in the value",
    NonAscii => "non-ASCII byte in the value (use the punycode form)",
    Bracket => "unbalanced or misplaced `[` / `]`",
    IpLiteral => "malformed IP literal in brackets",
    AfterLiteral => "only `:port` may follow an IP literal",
    EmptyHost => "empty host name",
    HostChar => "character not allowed in a host name",
    Percent => "malformed percent-encoding",
    EmptyPort => "empty port after `:`",
    Port => "the port must be a number from 0 to 65535",
}

/// Checks `uri-host [ ":" port ]` (RFC 3986 §3.2.2–3.2.3, RFC 9112 §3.2) with the stricter
/// rules [`parse_request`] lists. Runs on every request: what nearly every client sends (a
/// name of plain reg-name bytes, maybe a port) passes in one table-driven pass; anything
/// else takes the slower path that names the fault.
fn check_authority(value: &[u8]) -> Result<(), HostFault> {
    let name_len = value
        .iter()
        .position(|&b| !PLAIN_REG_NAME[usize::from(b)])
        .unwrap_or(value.len());
    if name_len > 0 {
        match value.get(name_len..) {
            Some([]) => return Ok(()),
            Some([b':', port @ ..]) if is_port(port) => return Ok(()),
            _ => {}
        }
    }
    check_authority_slowly(value)
}

/// Bytes a reg-name may hold with no further check: unreserved and sub-delims except `,`
/// (refused) and `%` (which starts a pct-encoding).
static PLAIN_REG_NAME: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let byte = b as u8;
        table[b] = (is_unreserved(byte) || is_sub_delim(byte)) && byte != b',';
        b += 1;
    }
    table
};

/// A port: one or more digits, at most 65535.
fn is_port(digits: &[u8]) -> bool {
    !digits.is_empty()
        && digits
            .iter()
            .try_fold(0u32, |n, &d| {
                let n = n * 10 + u32::from(d.wrapping_sub(b'0'));
                (d.is_ascii_digit() && n <= 65535).then_some(n)
            })
            .is_some()
}

/// [`check_authority`] for the values its fast path does not accept: finds which fault it
/// is, if any.
fn check_authority_slowly(value: &[u8]) -> Result<(), HostFault> {
    if value.is_empty() {
        return Err(HostFault::Empty);
    }
    for &b in value {
        match b {
            b' ' | b'\t' => return Err(HostFault::Whitespace),
            b',' => return Err(HostFault::List),
            b'@' | b'/' | b'\\' | b'?' | b'#' => return Err(HostFault::Delimiter),
            0..=0x1f | 0x7f => return Err(HostFault::Control),
            0x80.. => return Err(HostFault::NonAscii),
            _ => {}
        }
    }
    let port = if let Some(literal) = value.strip_prefix(b"[") {
        let close = memchr::memchr(b']', literal).ok_or(HostFault::Bracket)?;
        let (literal, after) = literal.split_at(close);
        check_ip_literal(literal)?;
        match after.get(1..).unwrap_or_default() {
            [] => None,
            [b':', port @ ..] => Some(port),
            [b'[' | b']', ..] => return Err(HostFault::Bracket),
            _ => return Err(HostFault::AfterLiteral),
        }
    } else {
        if memchr::memchr2(b'[', b']', value).is_some() {
            return Err(HostFault::Bracket);
        }
        let (name, port) = match memchr::memchr(b':', value) {
            Some(i) => {
                let (name, colon_port) = value.split_at(i);
                (name, colon_port.get(1..))
            }
            None => (value, None),
        };
        check_reg_name(name)?;
        port
    };
    match port {
        None => Ok(()),
        Some([]) => Err(HostFault::EmptyPort),
        Some(digits) if is_port(digits) => Ok(()),
        Some(_) => Err(HostFault::Port),
    }
}

/// `reg-name = *( unreserved / pct-encoded / sub-delims )`, not empty; commas were refused
/// before. An IPv4 address is a reg-name as far as the grammar goes.
fn check_reg_name(name: &[u8]) -> Result<(), HostFault> {
    if name.is_empty() {
        return Err(HostFault::EmptyHost);
    }
    let mut i = 0;
    while let Some(&b) = name.get(i) {
        if b == b'%' {
            let hex = name.get(i + 1..i + 3).unwrap_or_default();
            if hex.len() != 2 || !hex.iter().all(u8::is_ascii_hexdigit) {
                return Err(HostFault::Percent);
            }
            i += 3;
            continue;
        }
        if !(is_unreserved(b) || is_sub_delim(b)) {
            return Err(HostFault::HostChar);
        }
        i += 1;
    }
    Ok(())
}

/// The inside of `[...]`: an IPv6 address (RFC 4291 text forms, as `std` parses them) or
/// `IPvFuture = "v" 1*HEXDIG "." 1*( unreserved / sub-delims / ":" )`.
fn check_ip_literal(literal: &[u8]) -> Result<(), HostFault> {
    if let Some(future) = literal.strip_prefix(b"v").or(literal.strip_prefix(b"V")) {
        let dot = memchr::memchr(b'.', future).ok_or(HostFault::IpLiteral)?;
        let (version, rest) = future.split_at(dot);
        let rest = rest.get(1..).unwrap_or_default();
        let ok = !version.is_empty()
            && version.iter().all(u8::is_ascii_hexdigit)
            && !rest.is_empty()
            && rest
                .iter()
                .all(|&b| is_unreserved(b) || is_sub_delim(b) || b == b':');
        return if ok {
            Ok(())
        } else {
            Err(HostFault::IpLiteral)
        };
    }
    std::str::from_utf8(literal)
        .ok()
        .and_then(|text| text.parse::<std::net::Ipv6Addr>().ok())
        .map(drop)
        .ok_or(HostFault::IpLiteral)
}

/// RFC 3986 §2.3: `ALPHA / DIGIT / "-" / "." / "_" / "~"`.
const fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// RFC 3986 §2.2 sub-delims: `! $ & ' ( ) * + , ; =`.
const fn is_sub_delim(b: u8) -> bool {
    matches!(
        b,
        b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'='
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> HttpLimits {
        HttpLimits::default()
    }

    fn parse(buf: &[u8]) -> Result<Parse, RequestError> {
        parse_with(buf, &limits())
    }

    fn parse_with(buf: &[u8], limits: &HttpLimits) -> Result<Parse, RequestError> {
        let mut head = RequestHead::new();
        parse_request(buf, limits, &mut head)
    }

    fn complete(buf: &[u8]) -> RequestHead {
        let mut head = RequestHead::new();
        assert_eq!(
            parse_request(buf, &limits(), &mut head),
            Ok(Parse::Complete),
            "{:?}",
            String::from_utf8_lossy(buf)
        );
        head
    }

    fn bad(buf: &[u8]) -> &'static str {
        match parse(buf) {
            Err(RequestError::BadRequest(why)) => why,
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(buf)),
        }
    }

    #[test]
    fn parses_a_simple_post() {
        let buf = b"POST /v1/chat/completions?x=1 HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}";
        let head = complete(buf);
        assert_eq!(head.method(buf), "POST");
        assert_eq!(head.target(buf), "/v1/chat/completions?x=1");
        assert_eq!(head.minor_version, 1);
        assert_eq!(head.headers.len(), 3);
        assert_eq!(head.head_len, buf.len() - 2);
        assert_eq!(head.body, BodyFraming::Length(2));
        assert!(head.keep_alive);
        assert!(!head.expect_continue);
        assert_eq!(head.host(buf), Some(b"gw".as_slice()));
        assert_eq!(
            head.header(buf, "content-TYPE"),
            Some(b"application/json".as_slice())
        );
        assert_eq!(head.header(buf, "x-missing"), None);
        assert_eq!(head.headers[0].name(buf), b"Host");
    }

    #[test]
    fn header_lookup_returns_first_and_trims_value() {
        let buf = b"GET / HTTP/1.1\r\nHost: a\r\nX-A:  one \t\r\nx-a: two\r\n\r\n";
        let head = complete(buf);
        assert_eq!(head.header(buf, "X-a"), Some(b"one".as_slice()));
        assert_eq!(head.body, BodyFraming::None);
    }

    #[test]
    fn partial_until_the_empty_line() {
        let full = b"GET /v1/models HTTP/1.1\r\nHost: gw\r\n\r\n";
        for n in 0..full.len() {
            assert_eq!(parse(&full[..n]), Ok(Parse::Partial), "at {n}");
        }
        assert_eq!(parse(full), Ok(Parse::Complete));
    }

    #[test]
    fn pipelined_bytes_after_the_head_are_left_alone() {
        let buf = b"GET /a HTTP/1.1\r\nHost: gw\r\n\r\nGET /b HTTP/1.1\r\nHost: gw\r\n\r\n";
        let head = complete(buf);
        let rest = &buf[head.head_len..];
        let second = complete(rest);
        assert_eq!(second.target(rest), "/b");
    }

    #[test]
    fn body_bytes_are_not_inspected() {
        let buf = b"POST / HTTP/1.1\r\nHost: gw\r\nContent-Length: 4\r\n\r\n\0\n\r ";
        assert_eq!(complete(buf).body, BodyFraming::Length(4));
    }

    #[test]
    fn leading_empty_lines_are_skipped() {
        let buf = b"\r\n\r\nGET / HTTP/1.1\r\nHost: gw\r\n\r\n";
        let head = complete(buf);
        assert_eq!(head.method(buf), "GET");
        assert_eq!(head.head_len, buf.len());
        assert_eq!(parse(b"\r\n\r\n"), Ok(Parse::Partial));
    }

    #[test]
    fn request_line_over_the_limit_is_414() {
        let l = HttpLimits {
            max_request_line: 20,
            ..limits()
        };
        // "GET /0123456789ab HTTP/1.1" is 26 bytes.
        let buf = b"GET /0123456789ab HTTP/1.1\r\nHost: gw\r\n\r\n";
        assert_eq!(parse_with(buf, &l), Err(RequestError::UriTooLong));
        // Still partial, no line end yet.
        assert_eq!(parse_with(&buf[..21], &l), Err(RequestError::UriTooLong));
        assert_eq!(parse_with(&buf[..20], &l), Ok(Parse::Partial));
        // Exactly at the limit is fine.
        let ok = b"GET /012345 HTTP/1.1\r\nHost: gw\r\n\r\n";
        assert_eq!(parse_with(ok, &l), Ok(Parse::Complete));
        assert_eq!(RequestError::UriTooLong.status(), 414);
    }

    #[test]
    fn head_over_the_limit_is_431() {
        let buf = b"GET / HTTP/1.1\r\nHost: gw\r\nX-Pad: 0123456789\r\n\r\n";
        let exact = HttpLimits {
            max_head: buf.len(),
            ..limits()
        };
        assert_eq!(parse_with(buf, &exact), Ok(Parse::Complete));
        let l = HttpLimits {
            max_head: buf.len() - 1,
            ..limits()
        };
        assert_eq!(parse_with(buf, &l), Err(RequestError::HeadTooLarge));
        // While partial: the limit is reached without an end of head.
        assert_eq!(
            parse_with(&buf[..buf.len() - 1], &l),
            Err(RequestError::HeadTooLarge)
        );
        assert_eq!(parse_with(&buf[..buf.len() - 2], &l), Ok(Parse::Partial));
        // Endless empty lines count too.
        let crlfs = b"\r\n".repeat(100);
        let small = HttpLimits {
            max_head: 50,
            ..limits()
        };
        assert_eq!(parse_with(&crlfs, &small), Err(RequestError::HeadTooLarge));
        assert_eq!(RequestError::HeadTooLarge.status(), 431);
    }

    #[test]
    fn too_many_headers_is_431() {
        let l = HttpLimits {
            max_headers: 3,
            ..limits()
        };
        let three = b"GET / HTTP/1.1\r\nHost: gw\r\nA: 1\r\nB: 2\r\n\r\n";
        assert_eq!(parse_with(three, &l), Ok(Parse::Complete));
        let four = b"GET / HTTP/1.1\r\nHost: gw\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n";
        assert_eq!(parse_with(four, &l), Err(RequestError::TooManyHeaders));
        assert_eq!(RequestError::TooManyHeaders.status(), 431);
    }

    #[test]
    fn the_full_256_headers_are_accepted() {
        let l = HttpLimits {
            max_headers: 256,
            ..limits()
        };
        let mut buf = b"GET / HTTP/1.1\r\nHost: gw\r\n".to_vec();
        for i in 0..255 {
            buf.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        buf.extend_from_slice(b"\r\n");
        let mut head = RequestHead::new();
        assert_eq!(parse_request(&buf, &l, &mut head), Ok(Parse::Complete));
        assert_eq!(head.headers.len(), 256);
        let at = buf.len() - 2;
        buf.splice(at..at, b"X-Last: v\r\n".iter().copied());
        assert_eq!(
            parse_request(&buf, &l, &mut head),
            Err(RequestError::TooManyHeaders)
        );
    }

    #[test]
    fn bare_lf_is_400() {
        assert!(bad(b"GET / HTTP/1.1\nHost: gw\r\n\r\n").contains("bare LF"));
        assert!(bad(b"GET / HTTP/1.1\r\nHost: gw\n\r\n").contains("bare LF"));
        assert!(bad(b"GET / HTTP/1.1\r\nHost: gw\r\n\n").contains("bare LF"));
        // Detected while partial as well.
        assert!(bad(b"GET / HTTP/1.1\r\nHost: gw\n").contains("bare LF"));
        assert!(bad(b"\nGET / HTTP/1.1\r\nHost: gw\r\n\r\n").contains("bare LF"));
    }

    #[test]
    fn bare_cr_is_400() {
        assert!(bad(b"GET / HTTP/1.1\r\nHost: g\rw\r\n\r\n").contains("bare CR"));
        assert!(bad(b"GET / HTTP/1.1\rHost: gw\r\n\r\n").contains("bare CR"));
        assert!(bad(b"GET / HTTP/1.1\r\nHost: gw\r\n\r\r\n").contains("bare CR"));
        // A CR at the very end may still be followed by its LF.
        assert_eq!(parse(b"GET / HTTP/1.1\r\nHost: gw\r"), Ok(Parse::Partial));
    }

    #[test]
    fn nul_is_400() {
        assert!(bad(b"GET / HTTP/1.1\r\nHost: g\0w\r\n\r\n").contains("NUL"));
        assert!(bad(b"GET /\0 HTTP/1.1\r\nHost: gw\r\n\r\n").contains("NUL"));
        assert!(bad(b"GET / HTTP/1.1\r\nHo\0").contains("NUL"));
    }

    #[test]
    fn obs_fold_is_400() {
        assert!(bad(b"GET / HTTP/1.1\r\nHost: gw\r\nX-A: a\r\n b\r\n\r\n").contains("folding"));
        assert!(bad(b"GET / HTTP/1.1\r\nHost: gw\r\nX-A: a\r\n\tb\r\n\r\n").contains("folding"));
        assert!(bad(b"GET / HTTP/1.1\r\n Host: gw\r\n\r\n").contains("folding"));
    }

    #[test]
    fn content_length_with_transfer_encoding_is_400() {
        let why = bad(b"POST / HTTP/1.1\r\nHost: gw\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert!(why.contains("Content-Length and Transfer-Encoding"));
        let why = bad(b"POST / HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n");
        assert!(why.contains("Content-Length and Transfer-Encoding"));
    }

    #[test]
    fn repeated_content_length_is_400_even_when_equal() {
        assert!(bad(
            b"POST / HTTP/1.1\r\nHost: gw\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n"
        )
        .contains("repeated Content-Length"));
        assert!(bad(
            b"POST / HTTP/1.1\r\nHost: gw\r\nContent-Length: 3\r\ncontent-length: 4\r\n\r\n"
        )
        .contains("repeated Content-Length"));
    }

    #[test]
    fn malformed_content_length_is_400() {
        for value in [
            "",
            "+3",
            "-3",
            "3a",
            "0x10",
            "3, 3",
            "3,",
            "1 2",
            "18446744073709551616",
            "99999999999999999999999",
            "3.0",
        ] {
            let buf = format!("POST / HTTP/1.1\r\nHost: gw\r\nContent-Length: {value}\r\n\r\n");
            assert_eq!(
                parse(buf.as_bytes()),
                Err(RequestError::BadRequest("malformed Content-Length header")),
                "{value:?}"
            );
        }
        // Leading zeros and surrounding whitespace are fine.
        let head = complete(b"POST / HTTP/1.1\r\nHost: gw\r\nContent-Length:  007 \r\n\r\n");
        assert_eq!(head.body, BodyFraming::Length(7));
    }

    #[test]
    fn content_length_over_max_body_is_413() {
        let l = HttpLimits {
            max_body: 10,
            ..limits()
        };
        let ok = b"POST / HTTP/1.1\r\nHost: gw\r\nContent-Length: 10\r\n\r\n";
        assert_eq!(parse_with(ok, &l), Ok(Parse::Complete));
        let over = b"POST / HTTP/1.1\r\nHost: gw\r\nContent-Length: 11\r\n\r\n";
        assert_eq!(parse_with(over, &l), Err(RequestError::PayloadTooLarge));
        let max = b"POST / HTTP/1.1\r\nHost: gw\r\nContent-Length: 18446744073709551615\r\n\r\n";
        assert_eq!(parse_with(max, &l), Err(RequestError::PayloadTooLarge));
        assert_eq!(RequestError::PayloadTooLarge.status(), 413);
    }

    #[test]
    fn chunked_is_accepted_case_insensitively_with_ows() {
        let head =
            complete(b"POST / HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding:  ChUnKeD \t\r\n\r\n");
        assert_eq!(head.body, BodyFraming::Chunked);
    }

    #[test]
    fn other_transfer_encodings_are_400() {
        for value in [
            "gzip",
            "gzip, chunked",
            "chunked, chunked",
            "chunked;x=1",
            "",
            "identity",
            "chunked,",
        ] {
            let buf = format!("POST / HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: {value}\r\n\r\n");
            assert!(
                bad(buf.as_bytes()).contains("Transfer-Encoding"),
                "{value:?}"
            );
        }
        assert!(bad(b"POST / HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n")
            .contains("repeated Transfer-Encoding"));
        assert!(bad(b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n").contains("HTTP/1.0"));
    }

    #[test]
    fn host_rules() {
        assert!(bad(b"GET / HTTP/1.1\r\n\r\n").contains("missing Host"));
        assert!(bad(b"GET / HTTP/1.1\r\nHost: a\r\nhost: a\r\n\r\n").contains("repeated Host"));
        assert!(bad(b"GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n").contains("repeated Host"));
        let buf = b"GET / HTTP/1.0\r\n\r\n";
        let head = complete(buf);
        assert_eq!(head.host, None);
        assert_eq!(head.minor_version, 0);
    }

    #[test]
    fn valid_hosts() {
        for host in [
            "gw",
            "gateway.example",
            "gateway.example:443",
            "gateway.example:0",
            "gateway.example:65535",
            "gateway.example:00080",
            "GATEWAY.Example.",
            "127.0.0.1",
            "127.0.0.1:8080",
            "999.1.1.1",
            "a-b_c~d.e",
            "%41bc.example",
            "x!$&'()*+;=y",
            "[::1]",
            "[::1]:8080",
            "[2001:db8::8a2e:370:7334]",
            "[::ffff:192.0.2.1]:80",
            "[v1.fe80::a+en1]",
            "[V7.a:b]",
        ] {
            assert_eq!(check_authority(host.as_bytes()), Ok(()), "{host}");
        }
    }

    #[test]
    fn invalid_hosts_say_why() {
        use HostFault::*;
        for (host, fault) in [
            (&b""[..], Empty),
            (b"a b", Whitespace),
            (b"a\tb", Whitespace),
            (b"a, b", List),
            (b"a,b", List),
            (b"[::1],b", List),
            (b"user@gw", Delimiter),
            (b"gw/path", Delimiter),
            (b"gw\\x", Delimiter),
            (b"gw?q", Delimiter),
            (b"gw#f", Delimiter),
            (b"g\x01w", Control),
            (b"g\x7fw", Control),
            (b"g\xc3\xa9w", NonAscii),
            (b"[::1", Bracket),
            (b"::1]", Bracket),
            (b"a[b]", Bracket),
            (b"[::1]]", Bracket),
            (b"[::1][::2]", Bracket),
            (b"[]", IpLiteral),
            (b"[gw]", IpLiteral),
            (b"[1.2.3.4]", IpLiteral),
            (b"[::1::2]", IpLiteral),
            (b"[fe80::1%25eth0]", IpLiteral),
            (b"[v1]", IpLiteral),
            (b"[v.x]", IpLiteral),
            (b"[vg.x]", IpLiteral),
            (b"[v1.]", IpLiteral),
            (b"[v1.a\"b]", IpLiteral),
            (b"[::1]x", AfterLiteral),
            (b"[::1]8080", AfterLiteral),
            (b":80", EmptyHost),
            (b"g\"w", HostChar),
            (b"g<w", HostChar),
            (b"g{w}", HostChar),
            (b"g|w", HostChar),
            (b"g%4", Percent),
            (b"g%zz", Percent),
            (b"g%", Percent),
            (b"gw:", EmptyPort),
            (b"[::1]:", EmptyPort),
            (b"gw:65536", Port),
            (b"gw:99999", Port),
            (b"gw:99999999999999999999999", Port),
            (b"gw:-1", Port),
            (b"gw:8o", Port),
            (b"gw:80:81", Port),
            (b"[::1]:x", Port),
        ] {
            assert_eq!(
                check_authority(host),
                Err(fault),
                "{:?}",
                String::from_utf8_lossy(host)
            );
        }
    }

    #[test]
    fn the_fast_path_agrees_with_the_full_check() {
        const ALPHABET: &[u8] = b"a0.-_~!$&'()*+;=,%4fF:[]v@/ \t\x7f\x80";
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n as u64) as usize
        };
        for _ in 0..50_000 {
            let len = next(12);
            let value: Vec<u8> = (0..len).map(|_| ALPHABET[next(ALPHABET.len())]).collect();
            assert_eq!(
                check_authority(&value),
                check_authority_slowly(&value),
                "{:?}",
                String::from_utf8_lossy(&value)
            );
        }
        for value in [
            "gw",
            "gw:1",
            "gw:65535",
            "gw:65536",
            "gw:",
            "a.b:08080",
            "x,y",
        ] {
            assert_eq!(
                check_authority(value.as_bytes()),
                check_authority_slowly(value.as_bytes()),
                "{value}"
            );
        }
    }

    #[test]
    fn invalid_host_headers_are_400() {
        for value in ["a b", "a, b", "a:99999", "[::1", "gw:", "user@gw", "gw/x"] {
            let buf = format!("GET / HTTP/1.1\r\nHost: {value}\r\n\r\n");
            assert!(
                bad(buf.as_bytes()).starts_with("invalid Host header: "),
                "{value:?}"
            );
        }
        // An empty value (httparse drops the OWS around it) is refused on both versions.
        assert!(bad(b"GET / HTTP/1.1\r\nHost:\r\n\r\n").contains("empty value"));
        assert!(bad(b"GET / HTTP/1.1\r\nHost:  \r\n\r\n").contains("empty value"));
        assert!(bad(b"GET / HTTP/1.0\r\nHost:\r\n\r\n").contains("empty value"));
        assert!(bad(b"GET / HTTP/1.0\r\nHost: a b\r\n\r\n").contains("whitespace"));
        // OWS around a valid value is not part of it.
        let buf = b"GET / HTTP/1.1\r\nHost:  [::1]:8080 \t\r\n\r\n";
        assert_eq!(complete(buf).host(buf), Some(b"[::1]:8080".as_slice()));
    }

    #[test]
    fn absolute_form_targets_use_their_authority() {
        let buf = b"POST http://gateway.example:8080/v1/chat/completions?x=1 HTTP/1.1\r\nHost: other\r\n\r\n";
        let head = complete(buf);
        assert_eq!(head.target(buf), "/v1/chat/completions?x=1");
        assert_eq!(head.host(buf), Some(b"gateway.example:8080".as_slice()));
        let buf = b"GET HTTPS://[::1]?q HTTP/1.1\r\nHost: x\r\n\r\n";
        let head = complete(buf);
        assert_eq!(head.target(buf), "?q");
        assert_eq!(head.host(buf), Some(b"[::1]".as_slice()));
        let buf = b"GET http://gw HTTP/1.1\r\nHost: gw\r\n\r\n";
        let head = complete(buf);
        assert_eq!(head.target(buf), "");
        assert_eq!(head.host(buf), Some(b"gw".as_slice()));
        // HTTP/1.0 needs no Host header beside one.
        let buf = b"GET http://gw/v1/models HTTP/1.0\r\n\r\n";
        assert_eq!(complete(buf).host(buf), Some(b"gw".as_slice()));

        for target in [
            "http://user@gw/v1/models",
            "http:///v1/models",
            "http://gw:99999/",
            "http://[::1/",
            "http://a,b/",
            "http://gw:/v1/models",
            "http://gw\\x/v1/models",
        ] {
            let buf = format!("GET {target} HTTP/1.1\r\nHost: gw\r\n\r\n");
            assert!(
                bad(buf.as_bytes()).starts_with("invalid host in the request target: "),
                "{target}"
            );
        }
        // The Host header is still required and validated.
        assert!(bad(b"GET http://gw/ HTTP/1.1\r\n\r\n").contains("missing Host"));
        assert!(
            bad(b"GET http://gw/ HTTP/1.1\r\nHost: a b\r\n\r\n").starts_with("invalid Host header")
        );
    }

    #[test]
    fn other_target_forms_are_400() {
        for target in [
            "gw:443",
            "v1/models",
            "ftp://gw/v1/models",
            "http:/gw/v1",
            "httpx://gw/",
        ] {
            let buf = format!("GET {target} HTTP/1.1\r\nHost: gw\r\n\r\n");
            assert!(
                bad(buf.as_bytes()).starts_with("unsupported request target"),
                "{target}"
            );
        }
        let buf = b"OPTIONS * HTTP/1.1\r\nHost: gw\r\n\r\n";
        assert_eq!(complete(buf).target(buf), "*");
    }

    #[test]
    fn keep_alive_rules() {
        assert!(complete(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").keep_alive);
        assert!(!complete(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Close\r\n\r\n").keep_alive);
        assert!(
            !complete(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: te, close\r\n\r\n").keep_alive
        );
        assert!(complete(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: closed\r\n\r\n").keep_alive);
        assert!(!complete(b"GET / HTTP/1.0\r\n\r\n").keep_alive);
        assert!(complete(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").keep_alive);
        assert!(!complete(b"GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n").keep_alive);
    }

    #[test]
    fn expect_continue() {
        let h = b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-Continue\r\nContent-Length: 1\r\n\r\n";
        assert!(complete(h).expect_continue);
        let other = b"POST / HTTP/1.1\r\nHost: a\r\nExpect: something\r\n\r\n";
        assert!(!complete(other).expect_continue);
        let old = b"POST / HTTP/1.0\r\nExpect: 100-continue\r\n\r\n";
        assert!(!complete(old).expect_continue);
    }

    #[test]
    fn malformed_request_lines_are_400() {
        for buf in [
            &b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n"[..],
            b"GET / HTTP/2.0\r\nHost: a\r\n\r\n",
            b"GET / HTTP/1.1 x\r\nHost: a\r\n\r\n",
            b"G(T / HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET /\x7f HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET / HTTP/1.1\r\nBad Name: a\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\x01\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",
        ] {
            bad(buf);
        }
    }

    #[test]
    fn state_is_reset_between_calls() {
        let mut head = RequestHead::new();
        let a = b"POST / HTTP/1.0\r\nContent-Length: 5\r\nExpect: x\r\n\r\n";
        assert_eq!(parse_request(a, &limits(), &mut head), Ok(Parse::Complete));
        let b = b"GET / HTTP/1.1\r\nHost: h\r\n\r\n";
        assert_eq!(parse_request(b, &limits(), &mut head), Ok(Parse::Complete));
        assert_eq!(head, complete(b));
    }

    #[test]
    fn errors_have_messages_and_statuses() {
        assert_eq!(RequestError::BadRequest("why").status(), 400);
        assert_eq!(RequestError::BadRequest("why").message(), "why");
        for e in [
            RequestError::UriTooLong,
            RequestError::HeadTooLarge,
            RequestError::TooManyHeaders,
            RequestError::PayloadTooLarge,
        ] {
            assert!(!e.message().is_empty());
            assert!(!e.to_string().is_empty());
        }
    }

    #[test]
    fn method_and_target_are_empty_for_a_foreign_buffer() {
        let head = complete(b"GET /abc HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(head.method(b""), "");
        assert_eq!(head.target(b"xx"), "");
        assert_eq!(head.header(b"", "host"), None);
    }
}
