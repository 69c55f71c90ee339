//! HTTP/1.1 framing: request heads, response heads and chunked bodies.
//!
//! This module is pure: it does no I/O and knows nothing of monoio. The server reads bytes
//! into its own buffer, hands them to [`parse_request`], [`parse_response`] or a
//! [`ChunkedDecoder`], and acts on the answer. Parsed heads hold byte ranges into the
//! caller's buffer ([`HeaderSpan`]) rather than copies, and reuse the `Vec`s the caller
//! keeps between messages, so parsing allocates nothing once those are warm.
//!
//! `httparse` tokenises; this module adds the framing rules it does not enforce (RFC 9112:
//! one way to find a body's length, no bare CR or LF, no obs-fold, Host rules, size limits),
//! because a gateway that reads framing differently from its upstream is open to request
//! smuggling. Client faults map to [`RequestError`] (4xx); upstream faults to
//! [`ResponseError`] (the gateway answers 502).

mod chunked;
pub mod content_coding;
mod request;
mod response;
pub mod url;

use std::ops::Range;

pub use chunked::{write_chunk, ChunkError, ChunkedDecoder, Decoded, LAST_CHUNK};
pub use request::{parse_request, BodyFraming, RequestError, RequestHead};
pub use response::{parse_response, ResponseError, ResponseFraming, ResponseHead};

/// One header field, as byte ranges into the buffer the head was parsed from.
///
/// `value` excludes the optional whitespace around the field value.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HeaderSpan {
    /// The field name's bytes (case as sent).
    pub name: Range<usize>,
    /// The field value's bytes, without surrounding whitespace.
    pub value: Range<usize>,
}

impl HeaderSpan {
    /// The field name in `buf` (the buffer the head was parsed from); empty if `buf` is not it.
    pub fn name<'b>(&self, buf: &'b [u8]) -> &'b [u8] {
        buf.get(self.name.clone()).unwrap_or_default()
    }

    /// The field value in `buf` (the buffer the head was parsed from); empty if `buf` is not it.
    pub fn value<'b>(&self, buf: &'b [u8]) -> &'b [u8] {
        buf.get(self.value.clone()).unwrap_or_default()
    }
}

/// Whether a head parsed completely or needs more bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parse {
    /// The head is complete; the output struct is filled in.
    Complete,
    /// More bytes are needed; call again with the same bytes plus more. The output struct's
    /// contents are unspecified.
    Partial,
}

/// Appends one header line, `{name}: {value}\r\n` (RFC 9112 §5: no validation here; callers
/// write names and values they produced or already parsed).
pub fn write_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Whether `name` is a hop-by-hop header field, which a proxy must not forward
/// (compared case-insensitively): `connection`, `keep-alive`, `proxy-connection`, `te`,
/// `trailer`, `transfer-encoding`, `upgrade`, `proxy-authenticate`, `proxy-authorization`.
///
/// Fields named in a `Connection` header are hop-by-hop too; see [`connection_lists`].
pub fn is_hop_by_hop(name: &[u8]) -> bool {
    const HOP_BY_HOP: [&[u8]; 9] = [
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authenticate",
        b"proxy-authorization",
    ];
    HOP_BY_HOP.iter().any(|h| h.eq_ignore_ascii_case(name))
}

/// Whether every byte of the field name `name` is an ASCII letter, digit or `-`: the spelling
/// of every registered field name (RFC 9110 §16.3.1), and the only spelling no backend folds
/// into another name. Names with `_` or another token character (`.`, `~`, `!`, …) are rare;
/// [`folds_to`] tells which of them read as a name the gateway treats specially.
///
/// Runs on every forwarded header, so it tests eight bytes per step (SWAR) instead of one:
/// about half the time of a byte-by-byte loop on the 17 header names an OpenAI SDK sends.
pub fn is_plain_name(name: &[u8]) -> bool {
    let len = name.len();
    if len < 4 {
        return name.iter().all(|&b| b.is_ascii_alphanumeric() || b == b'-');
    }
    // A piece that cannot be read counts as not plain (it never happens: `at` is in bounds).
    let word = |at: usize| {
        name.get(at..at + 8)
            .and_then(|s| <[u8; 8]>::try_from(s).ok())
            .map_or(HIGH_BITS, u64::from_le_bytes)
    };
    let half = |at: usize| {
        name.get(at..at + 4)
            .and_then(|s| <[u8; 4]>::try_from(s).ok())
            .map_or(HIGH_BITS, |b| u64::from(u32::from_le_bytes(b)))
    };
    if len < 8 {
        // Two overlapping halves cover 4 to 7 bytes.
        return not_plain_bytes(half(0) | half(len - 4) << 32) == 0;
    }
    let mut bad = 0;
    let mut at = 0;
    while at + 8 < len {
        bad |= not_plain_bytes(word(at));
        at += 8;
    }
    // The last eight bytes, overlapping the previous word when `len` is not a multiple of 8.
    bad |= not_plain_bytes(word(len - 8));
    bad == 0
}

/// Bit 7 of each byte of a `u64`.
const HIGH_BITS: u64 = 0x8080_8080_8080_8080;

/// Bit 7 is set in each byte of the result whose byte in `x` is not a letter, digit or `-`
/// (other bits may be set too; zero means all eight are plain).
fn not_plain_bytes(x: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    // Bit 7 of each byte whose value is ≥ `n`, exact for bytes below 0x80: adding
    // 0x80 - n to such a byte stays below 0x100, so nothing carries into the next byte.
    // Bytes from 0x80 up are flagged by `x & HIGH_BITS` whatever the sums do.
    let at_least = |n: u64| x.wrapping_add((0x80 - n) * ONES) & HIGH_BITS;
    let below_digits = !at_least(0x30) & HIGH_BITS & !(at_least(0x2D) & !at_least(0x2E));
    let between_digits_and_upper = at_least(0x3A) & !at_least(0x41);
    let between_upper_and_lower = at_least(0x5B) & !at_least(0x61);
    let above_lower = at_least(0x7B);
    (x & HIGH_BITS)
        | below_digits
        | between_digits_and_upper
        | between_upper_and_lower
        | above_lower
}

/// Whether the field name `name` reads as `target` (lowercase letters, digits and `-`) once
/// folded the way backends fold names: ASCII case ignored, and every byte that is not a
/// letter or digit read as `-`.
///
/// CGI-style servers (PHP, WSGI, Rack, nginx's FastCGI and uWSGI parameters) map `-` to `_`
/// when they build `HTTP_*` variables, so `Transfer_Encoding` and `Transfer-Encoding` become
/// one variable; some frameworks fold `.` and other punctuation the same way. Reading every
/// separator as `-` covers all of them at once. Names that differ by dropping a separator
/// (`TransferEncoding`) are not folded: no mainstream server merges those.
pub fn folds_to(name: &[u8], target: &[u8]) -> bool {
    name.len() == target.len() && name.iter().zip(target).all(|(&n, &t)| fold(n) == t)
}

/// Whether `name`, folded as [`folds_to`] describes, reads as a header that frames a message
/// or belongs to one connection: `transfer-encoding`, `content-length`, `connection`,
/// `keep-alive`, `te`, `trailer`, `upgrade`, or any `proxy-*` (RFC 9110 §7.6.1, RFC 9112 §6).
/// A gateway never passes such a name on under any spelling: a recipient that folds it would
/// see a second framing or connection header the gateway did not (request smuggling).
pub fn folds_to_framing(name: &[u8]) -> bool {
    const FRAMING: [&[u8]; 7] = [
        b"transfer-encoding",
        b"content-length",
        b"connection",
        b"keep-alive",
        b"te",
        b"trailer",
        b"upgrade",
    ];
    const PROXY: &[u8] = b"proxy-";
    FRAMING.iter().any(|f| folds_to(name, f))
        || name
            .get(..PROXY.len())
            .is_some_and(|prefix| folds_to(prefix, PROXY))
}

/// A name byte as backends fold it: ASCII lowercase, any separator read as `-`.
fn fold(b: u8) -> u8 {
    if b.is_ascii_alphanumeric() {
        b.to_ascii_lowercase()
    } else {
        b'-'
    }
}

/// True when a `Connection` header among `headers` (ranges into `buf`) names `name` as one
/// of its comma-separated tokens (case-insensitive), so that field must be stripped too.
pub fn connection_lists(buf: &[u8], headers: &[HeaderSpan], name: &[u8]) -> bool {
    headers
        .iter()
        .filter(|h| h.name(buf).eq_ignore_ascii_case(b"connection"))
        .any(|h| list_contains(h.value(buf), name))
}

/// The first header among `headers` whose name equals `name` (case-insensitive).
fn find_header<'b>(buf: &'b [u8], headers: &[HeaderSpan], name: &[u8]) -> Option<&'b [u8]> {
    headers
        .iter()
        .find(|h| h.name(buf).eq_ignore_ascii_case(name))
        .map(|h| h.value(buf))
}

/// The byte range `part` occupies in `buf`, computed from pointers; `at..at` when `part`
/// does not lie inside `buf` (httparse returns a static `""` for some empty fields).
fn span_of(buf: &[u8], part: &[u8], at: usize) -> Range<usize> {
    let base = buf.as_ptr() as usize;
    let start = (part.as_ptr() as usize).wrapping_sub(base);
    match start.checked_add(part.len()) {
        Some(end) if start <= buf.len() && end <= buf.len() => start..end,
        _ => {
            let at = at.min(buf.len());
            at..at
        }
    }
}

/// `bytes` without leading and trailing optional whitespace (SP, HT).
fn trim_ows(bytes: &[u8]) -> &[u8] {
    let is_ows = |b: &u8| *b == b' ' || *b == b'\t';
    let start = bytes.iter().position(|b| !is_ows(b)).unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !is_ows(b))
        .map_or(start, |i| i + 1);
    bytes.get(start..end).unwrap_or_default()
}

/// The non-empty, trimmed elements of a comma-separated list value (RFC 9110 §5.6.1).
fn list_items(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|b| *b == b',')
        .map(trim_ows)
        .filter(|t| !t.is_empty())
}

/// Whether the comma-separated list `value` contains `token` (case-insensitive).
fn list_contains(value: &[u8], token: &[u8]) -> bool {
    list_items(value).any(|t| t.eq_ignore_ascii_case(token))
}

/// Parses a Content-Length value strictly: one or more ASCII digits after trimming OWS, no
/// sign, no list, no overflow of `u64`.
fn parse_content_length(value: &[u8]) -> Option<u64> {
    let digits = trim_ows(value);
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |acc, b| {
        if b.is_ascii_digit() {
            acc.checked_mul(10)?.checked_add(u64::from(b - b'0'))
        } else {
            None
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::HttpLimits;

    #[test]
    fn hop_by_hop_names() {
        for name in [
            "Connection",
            "keep-alive",
            "Proxy-Connection",
            "TE",
            "trailer",
            "Transfer-Encoding",
            "UPGRADE",
            "proxy-authenticate",
            "Proxy-Authorization",
        ] {
            assert!(is_hop_by_hop(name.as_bytes()), "{name}");
        }
        for name in [
            "content-length",
            "host",
            "tee",
            "",
            "connection2",
            "authorization",
        ] {
            assert!(!is_hop_by_hop(name.as_bytes()), "{name}");
        }
    }

    #[test]
    fn plain_names_are_letters_digits_and_hyphens() {
        for name in [
            "Content-Type",
            "x-ratelimit-remaining-requests",
            "TE",
            "a1-B2",
            "",
        ] {
            assert!(is_plain_name(name.as_bytes()), "{name}");
        }
        for name in [
            "X_Custom",
            "x.custom",
            "x~y",
            "a!",
            "Content-Length_",
            "_",
            "x y",
        ] {
            assert!(!is_plain_name(name.as_bytes()), "{name}");
        }
    }

    #[test]
    fn plain_names_agree_with_the_byte_by_byte_definition() {
        let naive = |name: &[u8]| name.iter().all(|&b| b.is_ascii_alphanumeric() || b == b'-');
        // Every byte value at every position of every length up to 33.
        for len in 1..=33 {
            for at in 0..len {
                for b in 0..=255u8 {
                    let mut name = vec![b'a'; len];
                    name[at] = b;
                    assert_eq!(
                        is_plain_name(&name),
                        naive(&name),
                        "{b:#x} at {at} of {len}"
                    );
                }
            }
        }
        // The bytes either side of each range boundary, in mixed names.
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        const EDGES: &[u8] = b"\0\x2c-./09:@AZ[`az{\x7f\x80\xff_~";
        for _ in 0..20_000 {
            let len = rng.below(40);
            let name: Vec<u8> = (0..len)
                .map(|_| {
                    if rng.below(8) == 0 {
                        EDGES[rng.below(EDGES.len())]
                    } else {
                        b"aZ0-"[rng.below(4)]
                    }
                })
                .collect();
            assert_eq!(is_plain_name(&name), naive(&name), "{name:?}");
        }
    }

    #[test]
    fn names_fold_case_and_every_separator() {
        for name in [
            "Transfer_Encoding",
            "TRANSFER.ENCODING",
            "transfer~encoding",
            "Transfer-Encoding",
            "transfer!encoding",
        ] {
            assert!(folds_to(name.as_bytes(), b"transfer-encoding"), "{name}");
        }
        for name in [
            "TransferEncoding",
            "Transfer__Encoding",
            "Transfer_Encodings",
            "Transfer_Encodin",
            "",
        ] {
            assert!(!folds_to(name.as_bytes(), b"transfer-encoding"), "{name}");
        }
        assert!(folds_to(b"API_KEY", b"api-key"));
        assert!(folds_to(b"x_request_id", b"x-request-id"));
    }

    #[test]
    fn framing_names_under_any_spelling() {
        for name in [
            "Transfer_Encoding",
            "Content_Length",
            "content.length",
            "Connection",
            "Keep_Alive",
            "TE",
            "Trailer",
            "Upgrade",
            "Proxy_Connection",
            "proxy_authorization",
            "Proxy-Anything",
            "proxy.x",
        ] {
            assert!(folds_to_framing(name.as_bytes()), "{name}");
        }
        // `T_E` and `Up_grade` add a separator rather than replace one.
        for name in [
            "T_E",
            "Up_grade",
            "proxy",
            "proxyx",
            "X_Custom",
            "content-type",
            "hosts",
            "",
        ] {
            assert!(!folds_to_framing(name.as_bytes()), "{name}");
        }
    }

    #[test]
    fn connection_lists_tokens() {
        let buf = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, X-Foo\r\nconnection: x-bar\r\nX-Baz: 1\r\n\r\n";
        let mut head = RequestHead::new();
        let limits = HttpLimits::default();
        assert_eq!(parse_request(buf, &limits, &mut head), Ok(Parse::Complete));
        assert!(connection_lists(buf, &head.headers, b"x-foo"));
        assert!(connection_lists(buf, &head.headers, b"X-BAR"));
        assert!(connection_lists(buf, &head.headers, b"Keep-Alive"));
        assert!(!connection_lists(buf, &head.headers, b"x-baz"));
        assert!(!connection_lists(buf, &head.headers, b"x-fo"));
    }

    #[test]
    fn helpers() {
        assert_eq!(trim_ows(b" \t a b \t"), b"a b");
        assert_eq!(trim_ows(b" \t "), b"");
        assert_eq!(trim_ows(b""), b"");
        assert_eq!(parse_content_length(b"0"), Some(0));
        assert_eq!(
            parse_content_length(b"18446744073709551615"),
            Some(u64::MAX)
        );
        assert_eq!(parse_content_length(b"18446744073709551616"), None);
        assert_eq!(parse_content_length(b" "), None);
        assert_eq!(
            list_items(b" a ,, b,").collect::<Vec<_>>(),
            [b"a".as_slice(), b"b"]
        );
        let buf = b"hello";
        assert_eq!(span_of(buf, &buf[1..3], 0), 1..3);
        assert_eq!(span_of(buf, b"", 2), 2..2);
        assert_eq!(span_of(buf, b"elsewhere", 9), 5..5);
        assert_eq!(span_of(buf, &buf[5..], 0), 5..5);
    }

    /// A small deterministic xorshift generator, so failures reproduce.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            if n == 0 {
                0
            } else {
                (self.next() % n as u64) as usize
            }
        }

        fn byte(&mut self) -> u8 {
            const INTERESTING: &[u8] = b"\r\n\0 \t:;,=-+0159aAfFgz\x7f\x80\xff";
            if self.next().is_multiple_of(2) {
                INTERESTING[self.below(INTERESTING.len())]
            } else {
                self.next() as u8
            }
        }
    }

    /// Applies one to four random edits: replace, insert, delete, duplicate, truncate.
    fn mutate(rng: &mut Rng, seed: &[u8], out: &mut Vec<u8>) {
        out.clear();
        out.extend_from_slice(seed);
        for _ in 0..=rng.below(4) {
            let at = rng.below(out.len() + 1);
            match rng.below(5) {
                0 if at < out.len() => out[at] = rng.byte(),
                1 => {
                    let b = rng.byte();
                    out.insert(at, b);
                }
                2 if at < out.len() => {
                    out.remove(at);
                }
                3 => {
                    let end = (at + rng.below(16)).min(out.len());
                    let piece = out[at..end].to_vec();
                    out.splice(at..at, piece);
                }
                _ => out.truncate(at.max(1).min(out.len())),
            }
        }
    }

    fn in_buf(r: &std::ops::Range<usize>, len: usize) -> bool {
        r.start <= r.end && r.end <= len
    }

    /// Returns whether the head parsed completely.
    fn check_request(buf: &[u8], limits: &HttpLimits, head: &mut RequestHead) -> bool {
        let result = parse_request(buf, limits, head);
        if result == Ok(Parse::Complete) {
            assert!(head.head_len <= buf.len() && head.head_len <= limits.max_head);
            assert!(head.headers.len() <= limits.max_headers);
            assert!(in_buf(&head.method, head.head_len) && in_buf(&head.target, head.head_len));
            for h in &head.headers {
                assert!(in_buf(&h.name, head.head_len) && in_buf(&h.value, head.head_len));
                assert!(!h.name(buf).is_empty());
            }
            if let Some(host) = &head.host {
                assert!(in_buf(host, head.head_len));
                assert!(!host.is_empty());
            }
            assert!(head.minor_version == 0 || head.host.is_some());
            for h in &head.headers {
                let name = h.name(buf);
                // A plain name folds to a name exactly when it equals it, ignoring case.
                if is_plain_name(name) {
                    assert_eq!(
                        folds_to(name, b"content-length"),
                        name.eq_ignore_ascii_case(b"content-length")
                    );
                }
                let _ = folds_to_framing(name);
            }
            if let BodyFraming::Length(n) = head.body {
                assert!(n <= limits.max_body);
            }
            let _ = (head.method(buf), head.target(buf), head.header(buf, "host"));
            // Every shorter prefix of a complete head is merely partial.
            let head_len = head.head_len;
            let mut other = RequestHead::new();
            assert_eq!(
                parse_request(&buf[..head_len - 1], limits, &mut other),
                Ok(Parse::Partial)
            );
        } else if let Err(e) = result {
            assert!(matches!(e.status(), 400 | 413 | 414 | 431));
            assert!(!e.message().is_empty());
        }
        result == Ok(Parse::Complete)
    }

    /// Returns whether the head parsed completely.
    fn check_response(
        buf: &[u8],
        max_head: usize,
        was_head: bool,
        head: &mut ResponseHead,
    ) -> bool {
        let complete = parse_response(buf, was_head, max_head, head) == Ok(Parse::Complete);
        if complete {
            assert!(head.head_len <= buf.len() && head.head_len <= max_head);
            assert!(in_buf(&head.reason, head.head_len));
            assert!((100..=599).contains(&head.status));
            for h in &head.headers {
                assert!(in_buf(&h.name, head.head_len) && in_buf(&h.value, head.head_len));
            }
            if head.framing == ResponseFraming::Close {
                assert!(!head.keep_alive);
            }
            let _ = head.header(buf, "content-length");
        }
        complete
    }

    /// Decodes whole and in random pieces; both must agree and stay within bounds. Returns
    /// whether the body ended.
    fn check_chunked(rng: &mut Rng, input: &[u8], max_body: u64) -> bool {
        let mut whole = Vec::new();
        let one_shot = ChunkedDecoder::new(max_body).decode(input, &mut whole);
        if let Ok(d) = one_shot {
            assert!(d.consumed <= input.len());
            assert!(d.done || d.consumed == input.len());
        }
        assert!(whole.len() as u64 <= max_body);

        let mut decoder = ChunkedDecoder::new(max_body);
        let mut pieces = Vec::new();
        let mut at = 0;
        let mut split = Ok(Decoded {
            consumed: 0,
            done: false,
        });
        while at < input.len() {
            let end = (at + 1 + rng.below(12)).min(input.len());
            match decoder.decode(&input[at..end], &mut pieces) {
                Ok(d) => {
                    assert!(d.consumed <= end - at);
                    at += d.consumed;
                    split = Ok(Decoded {
                        consumed: at,
                        done: d.done,
                    });
                    if d.done {
                        break;
                    }
                }
                Err(e) => {
                    split = Err(e);
                    break;
                }
            }
        }
        assert_eq!(one_shot, split, "{:?}", String::from_utf8_lossy(input));
        if one_shot.is_ok() {
            assert_eq!(whole, pieces);
        }
        matches!(one_shot, Ok(Decoded { done: true, .. }))
    }

    #[test]
    fn randomized_mutations_never_panic() {
        let requests: &[&[u8]] = &[
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\nContent-Length: 17\r\n\r\n{\"model\":\"gpt\"}",
            b"POST /openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21 HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\nConnection: keep-alive, x-a\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            b"\r\nGET /v1/models HTTP/1.0\r\nConnection: keep-alive\r\nHost: x\r\n\r\n",
            b"POST http://[::1]:8080/v1/embeddings?a=%41 HTTP/1.1\r\nHost: [v1.x]:443\r\nX_Y: 1\r\nContent-Length: 2\r\n\r\n{}",
        ];
        let responses: &[&[u8]] = &[
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 1\r\nContent-Length: 2, 2\r\nConnection: close\r\n\r\n{}",
            b"HTTP/1.0 204\r\n\r\n",
        ];
        let bodies: &[&[u8]] = &[
            b"5\r\nhello\r\n1;a=b\r\n \r\n10\r\n0123456789abcdef\r\n0\r\nX-T: 1\r\n\r\n",
            b"3\r\nabc\r\n0\r\n\r\nGET / HTTP/1.1\r\n",
        ];
        let tight = HttpLimits {
            max_request_line: 40,
            max_head: 160,
            max_headers: 4,
            max_body: 20,
            ..HttpLimits::default()
        };
        let default = HttpLimits::default();

        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        let mut buf = Vec::new();
        let mut req = RequestHead::new();
        let mut res = ResponseHead::new();
        // How many mutants still parsed, so the test cannot pass by rejecting everything.
        let (mut requests_ok, mut responses_ok, mut bodies_ok) = (0, 0, 0);
        for _ in 0..4000 {
            let seed = requests[rng.below(requests.len())];
            mutate(&mut rng, seed, &mut buf);
            requests_ok += usize::from(check_request(&buf, &default, &mut req));
            check_request(&buf, &tight, &mut req);

            let seed = responses[rng.below(responses.len())];
            mutate(&mut rng, seed, &mut buf);
            let was_head = rng.below(2) == 0;
            responses_ok += usize::from(check_response(&buf, 1 << 16, was_head, &mut res));
            check_response(&buf, 40, was_head, &mut res);

            let seed = bodies[rng.below(bodies.len())];
            mutate(&mut rng, seed, &mut buf);
            bodies_ok += usize::from(check_chunked(&mut rng, &buf, 1 << 20));
            check_chunked(&mut rng, &buf, 10);
        }
        assert!(requests_ok > 400, "{requests_ok}");
        assert!(responses_ok > 400, "{responses_ok}");
        assert!(bodies_ok > 400, "{bodies_ok}");

        // Plain random bytes too.
        for _ in 0..2000 {
            buf.clear();
            for _ in 0..rng.below(200) {
                buf.push(rng.byte());
            }
            check_request(&buf, &tight, &mut req);
            check_response(&buf, 100, false, &mut res);
            check_chunked(&mut rng, &buf, 30);
        }
    }
}
