//! Whole-process tests of the request framing rules (each one a 400 in the OpenAI error shape
//! and a closed connection) and of the size and time limits (414, 431, 413, 408).
//!
//! Every refused request is sent in one write with a second, well-formed request right
//! behind it — the request a smuggler hides in the body of an ambiguous one. The proof is
//! that the client gets exactly one answer (the refusal), then the close with nothing after
//! it, and that the scripted backend serving the deployment received nothing at all.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::Write as _;
use std::net::TcpListener;
use std::thread;
use std::time::{Duration, Instant};

use support::*;

const CHAT_TARGET: &str = "/v1/chat/completions";

fn chat_json() -> Vec<u8> {
    serde_json::to_vec(&chat_body(Some("gpt-4o"), false)).unwrap()
}

/// A well-formed chat request for the same deployment: what a smuggler hides behind an
/// ambiguous request, hoping the gateway reads it as a second one.
fn smuggled() -> Vec<u8> {
    let mut body = chat_body(Some("gpt-4o"), false);
    body["user"] = "smuggled".into();
    request_bytes(
        "POST",
        CHAT_TARGET,
        &[("Content-Type", "application/json")],
        &serde_json::to_vec(&body).unwrap(),
    )
}

/// Sluice in front of a scripted backend serving `gpt-4o`; every request it forwards is
/// recorded there.
struct Gate {
    s: Sluice,
    up: Upstream,
}

impl Gate {
    fn start(server_extra: &str) -> Gate {
        let answer = serde_json::to_vec(&upstream_chat_answer("upstream-model")).unwrap();
        let up = Upstream::start(move |_, w| {
            respond(w, 200, &[("content-type", "application/json")], &answer);
            After::KeepAlive
        });
        let s = Launch::new(&openai_backend_body(&up.url(), "gpt-4o"))
            .server(server_extra)
            .start();
        Gate { s, up }
    }

    fn connect(&self) -> Client {
        self.s.connect()
    }

    /// Sends `raw` followed by [`smuggled`] in one write on a fresh connection; asserts one
    /// answer with `status` in the OpenAI shape saying `connection: close`, then the close
    /// with nothing more, and that the backend was never reached.
    fn assert_refused_and_nothing_smuggled(&self, what: &str, raw: &[u8], status: u16) {
        let mut bytes = raw.to_vec();
        bytes.extend_from_slice(&smuggled());
        let mut c = self.connect();
        c.send(&bytes);
        let resp = c
            .try_read_response()
            .unwrap_or_else(|e| panic!("{what}: no response ({e})"));
        assert_eq!(resp.status, status, "{what}: {}", resp.text());
        assert_openai_error(&resp, status, None);
        assert_eq!(
            resp.header("connection"),
            Some("close"),
            "{what}: {:?}",
            resp.head.headers
        );
        // Strict: a second answer (the smuggled request's) before the close panics here.
        assert!(
            c.closed_within(Duration::from_secs(5)),
            "{what}: connection left open after a {status}"
        );
        // Anything forwarded would have been recorded before its answer came back, and so
        // before the close: nothing can still be on its way.
        assert_eq!(
            self.up.connections(),
            0,
            "{what}: the backend was reached: {:?}",
            self.up.requests()
        );
    }

    /// A well-formed request reaches the backend: the zero counts above were not for want
    /// of a route.
    fn assert_backend_reachable(&self) {
        let before = self.up.request_count();
        let resp = self
            .connect()
            .post_json(CHAT_TARGET, &chat_body(Some("gpt-4o"), false));
        assert_eq!(resp.status, 200, "{}", resp.text());
        assert_eq!(self.up.request_count(), before + 1);
        assert!(
            self.up
                .requests()
                .iter()
                .all(|r| r.json()["user"] != "smuggled"),
            "{:?}",
            self.up.requests()
        );
    }
}

/// Sends `raw` (one write, a smuggled request behind it) on a fresh connection and asserts a
/// 400 in the OpenAI shape, then the close with nothing more, and no request at the backend.
fn assert_rejected_400(g: &Gate, what: &str, raw: &[u8]) {
    g.assert_refused_and_nothing_smuggled(what, raw, 400);
}

/// A chat request head with `headers` (no Host/Content-Length added), then `body`.
fn raw_request(headers: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!("POST {CHAT_TARGET} HTTP/1.1\r\n{headers}\r\n").into_bytes();
    out.extend_from_slice(body);
    out
}

fn start() -> Gate {
    Gate::start("")
}

#[test]
fn control_a_well_framed_request_is_served() {
    let g = start();
    let body = chat_json();
    let raw = raw_request(
        &format!(
            "Host: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ),
        &body,
    );
    let mut c = g.connect();
    c.send(&raw);
    assert_eq!(c.read_response().status, 200);
    assert_eq!(g.up.request_count(), 1);
}

#[test]
fn content_length_with_transfer_encoding_is_rejected() {
    let g = start();
    let body = chat_json();
    let mut chunked = format!("{:x}\r\n", body.len()).into_bytes();
    chunked.extend_from_slice(&body);
    chunked.extend_from_slice(b"\r\n0\r\n\r\n");
    for headers in [
        format!(
            "Host: x\r\nContent-Length: {}\r\nTransfer-Encoding: chunked\r\n",
            chunked.len()
        ),
        format!(
            "Host: x\r\nTransfer-Encoding: chunked\r\nContent-Length: {}\r\n",
            chunked.len()
        ),
    ] {
        assert_rejected_400(&g, &headers, &raw_request(&headers, &chunked));
    }
    g.assert_backend_reachable();
}

#[test]
fn repeated_content_length_is_rejected() {
    let g = start();
    let body = chat_json();
    let n = body.len();
    for headers in [
        format!("Host: x\r\nContent-Length: {n}\r\nContent-Length: {n}\r\n"),
        format!(
            "Host: x\r\nContent-Length: {n}\r\nContent-Length: {}\r\n",
            n + 1
        ),
    ] {
        assert_rejected_400(&g, &headers, &raw_request(&headers, &body));
    }
    g.assert_backend_reachable();
}

#[test]
fn malformed_content_length_is_rejected() {
    let g = start();
    let body = chat_json();
    for value in [
        "abc",
        "-1",
        "+5",
        "0x10",
        "",
        "1 2",
        "99999999999999999999999",
    ] {
        let headers = format!("Host: x\r\nContent-Length: {value}\r\n");
        assert_rejected_400(
            &g,
            &format!("Content-Length: {value:?}"),
            &raw_request(&headers, &body),
        );
    }
    g.assert_backend_reachable();
}

#[test]
fn transfer_encoding_other_than_chunked_is_rejected() {
    let g = start();
    let body = chat_json();
    let mut chunked = format!("{:x}\r\n", body.len()).into_bytes();
    chunked.extend_from_slice(&body);
    chunked.extend_from_slice(b"\r\n0\r\n\r\n");
    for value in ["gzip, chunked", "identity", "gzip", "chunked, chunked"] {
        let headers = format!("Host: x\r\nTransfer-Encoding: {value}\r\n");
        assert_rejected_400(
            &g,
            &format!("Transfer-Encoding: {value}"),
            &raw_request(&headers, &chunked),
        );
    }
    g.assert_backend_reachable();
}

#[test]
fn bare_lf_in_head_is_rejected() {
    let g = start();
    let body = chat_json();
    let n = body.len();
    // Bare LF ending the request line.
    let mut raw =
        format!("POST {CHAT_TARGET} HTTP/1.1\nHost: x\r\nContent-Length: {n}\r\n\r\n").into_bytes();
    raw.extend_from_slice(&body);
    assert_rejected_400(&g, "bare LF after the request line", &raw);
    // Bare LF ending a header line.
    let headers = format!("Host: x\nContent-Length: {n}\r\n");
    assert_rejected_400(&g, "bare LF after a header", &raw_request(&headers, &body));
    g.assert_backend_reachable();
}

#[test]
fn bare_cr_in_head_is_rejected() {
    let g = start();
    let body = chat_json();
    let headers = format!("Host: x\r\nX-A: a\rb\r\nContent-Length: {}\r\n", body.len());
    assert_rejected_400(
        &g,
        "bare CR in a header value",
        &raw_request(&headers, &body),
    );
    let headers = format!(
        "Host: x\r\nX-A: a\rX-B: b\r\nContent-Length: {}\r\n",
        body.len()
    );
    assert_rejected_400(&g, "bare CR ending a header", &raw_request(&headers, &body));
    g.assert_backend_reachable();
}

#[test]
fn nul_in_head_is_rejected() {
    let g = start();
    let body = chat_json();
    let headers = format!("Host: x\r\nX-A: a\0b\r\nContent-Length: {}\r\n", body.len());
    assert_rejected_400(&g, "NUL in a header value", &raw_request(&headers, &body));
    g.assert_backend_reachable();
}

#[test]
fn obs_fold_is_rejected() {
    let g = start();
    let body = chat_json();
    let headers = format!(
        "Host: x\r\nX-A: a\r\n  folded\r\nContent-Length: {}\r\n",
        body.len()
    );
    assert_rejected_400(&g, "obs-fold (space)", &raw_request(&headers, &body));
    let headers = format!(
        "Host: x\r\nX-A: a\r\n\tfolded\r\nContent-Length: {}\r\n",
        body.len()
    );
    assert_rejected_400(&g, "obs-fold (tab)", &raw_request(&headers, &body));
    g.assert_backend_reachable();
}

#[test]
fn bad_chunk_size_line_is_rejected() {
    let g = start();
    let body = chat_json();
    for size_line in ["zz", "-1", "ffffffffffffffffffffff", "", "0x10", " 5"] {
        let mut chunked = format!("{size_line}\r\n").into_bytes();
        chunked.extend_from_slice(&body);
        chunked.extend_from_slice(b"\r\n0\r\n\r\n");
        let headers = "Host: x\r\nTransfer-Encoding: chunked\r\n";
        assert_rejected_400(
            &g,
            &format!("chunk size line {size_line:?}"),
            &raw_request(headers, &chunked),
        );
    }
    g.assert_backend_reachable();
}

#[test]
fn missing_host_is_rejected() {
    let g = start();
    let body = chat_json();
    let headers = format!(
        "Content-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    assert_rejected_400(&g, "no Host", &raw_request(&headers, &body));
    g.assert_backend_reachable();
}

#[test]
fn repeated_host_is_rejected() {
    let g = start();
    let body = chat_json();
    let headers = format!("Host: a\r\nHost: b\r\nContent-Length: {}\r\n", body.len());
    assert_rejected_400(&g, "two Host headers", &raw_request(&headers, &body));
    g.assert_backend_reachable();
}

#[test]
fn transfer_encoding_twice_or_in_http_1_0_is_rejected() {
    let g = start();
    let body = chat_json();
    let mut chunked = format!("{:x}\r\n", body.len()).into_bytes();
    chunked.extend_from_slice(&body);
    chunked.extend_from_slice(b"\r\n0\r\n\r\n");
    for (what, headers) in [
        (
            "two Transfer-Encoding headers",
            "Host: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
        ),
        (
            "chunked not last",
            "Host: x\r\nTransfer-Encoding: chunked, gzip\r\n",
        ),
        (
            "a coding after chunked in a second header",
            "Host: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n",
        ),
        (
            "a parameter on chunked",
            "Host: x\r\nTransfer-Encoding: chunked;x=1\r\n",
        ),
    ] {
        assert_rejected_400(&g, what, &raw_request(headers, &chunked));
    }
    let mut raw =
        format!("POST {CHAT_TARGET} HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
            .into_bytes();
    raw.extend_from_slice(&chunked);
    assert_rejected_400(&g, "Transfer-Encoding in HTTP/1.0", &raw);
    g.assert_backend_reachable();
}

/// Chunk data not followed by CRLF, or a size line that lies about its chunk: the bytes the
/// decoder finds where a CRLF belongs are the smuggler's.
#[test]
fn bad_chunk_data_framing_is_rejected() {
    let g = start();
    let body = chat_json();
    let headers = "Host: x\r\nTransfer-Encoding: chunked\r\n";
    // The size says one byte fewer than sent: the last byte sits where CRLF must be.
    let mut short = format!("{:x}\r\n", body.len() - 1).into_bytes();
    short.extend_from_slice(&body);
    short.extend_from_slice(b"\r\n0\r\n\r\n");
    assert_rejected_400(
        &g,
        "chunk longer than its size",
        &raw_request(headers, &short),
    );
    // No CRLF at all after the data.
    let mut bare = format!("{:x}\r\n", body.len()).into_bytes();
    bare.extend_from_slice(&body);
    bare.extend_from_slice(b"0\r\n\r\n");
    assert_rejected_400(&g, "no CRLF after chunk data", &raw_request(headers, &bare));
    // A bare LF ending the size line.
    let mut lf = format!("{:x}\n", body.len()).into_bytes();
    lf.extend_from_slice(&body);
    lf.extend_from_slice(b"\r\n0\r\n\r\n");
    assert_rejected_400(&g, "bare LF after a chunk size", &raw_request(headers, &lf));
    // A trailer line that is not a field line (RFC 9112 §7.1.2): no colon, or folded.
    for (what, trailer) in [
        (
            "trailer line without a colon",
            &b"x-a: b\r\nbad trailer\r\n"[..],
        ),
        ("folded trailer line", b"x-a: b\r\n folded\r\n"),
    ] {
        let mut junk = format!("{:x}\r\n", body.len()).into_bytes();
        junk.extend_from_slice(&body);
        junk.extend_from_slice(b"\r\n0\r\n");
        junk.extend_from_slice(trailer);
        junk.extend_from_slice(b"\r\n");
        assert_rejected_400(&g, what, &raw_request(headers, &junk));
    }
    g.assert_backend_reachable();
}

// ---- limits ---------------------------------------------------------------------------------

const LIMITED: &str = "[server.limits]\nmax_request_line = 1024\nmax_head = 4096\nmax_headers = 10\nmax_body = 1024\n\
                       [server.timeouts]\nhead_read = \"1s\"";

fn start_limited() -> Gate {
    Gate::start(LIMITED)
}

/// A chat request for `target` with `extra_headers`, as bytes.
fn chat_bytes(target: &str, extra_headers: &[(&str, &str)]) -> Vec<u8> {
    let body = chat_json();
    let mut headers = vec![("Content-Type", "application/json")];
    headers.extend_from_slice(extra_headers);
    request_bytes("POST", target, &headers, &body)
}

fn post_with(g: &Gate, target: &str, extra_headers: &[(&str, &str)]) -> Response {
    let mut c = g.connect();
    c.send(&chat_bytes(target, extra_headers));
    c.try_read_response()
        .unwrap_or_else(|e| panic!("no response: {e}"))
}

#[test]
fn request_line_over_max_request_line_is_414_then_close() {
    let g = start_limited();
    let long = format!("{CHAT_TARGET}?pad={}", "a".repeat(2000));
    g.assert_refused_and_nothing_smuggled("long request line", &chat_bytes(&long, &[]), 414);
    let short = format!("{CHAT_TARGET}?pad={}", "a".repeat(800));
    assert_eq!(post_with(&g, &short, &[]).status, 200);
    assert_eq!(g.up.request_count(), 1);
}

#[test]
fn too_many_headers_is_431_then_close() {
    let g = start_limited();
    let many: Vec<(String, String)> = (0..20)
        .map(|i| (format!("X-Pad-{i}"), "v".into()))
        .collect();
    let many: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    g.assert_refused_and_nothing_smuggled("20 headers", &chat_bytes(CHAT_TARGET, &many), 431);
    // Host, Content-Type, Content-Length + 5 = 8 ≤ 10.
    let few: Vec<(String, String)> = (0..5).map(|i| (format!("X-Pad-{i}"), "v".into())).collect();
    let few: Vec<(&str, &str)> = few.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(post_with(&g, CHAT_TARGET, &few).status, 200);
    assert_eq!(g.up.request_count(), 1);
}

#[test]
fn head_over_max_head_is_431_then_close() {
    let g = start_limited();
    let pad = "p".repeat(1000);
    let big: Vec<(&str, &str)> = [
        "X-Pad-0", "X-Pad-1", "X-Pad-2", "X-Pad-3", "X-Pad-4", "X-Pad-5",
    ]
    .into_iter()
    .map(|k| (k, pad.as_str()))
    .collect();
    g.assert_refused_and_nothing_smuggled("6000-byte head", &chat_bytes(CHAT_TARGET, &big), 431);
    let pad = "p".repeat(500);
    assert_eq!(
        post_with(&g, CHAT_TARGET, &[("X-Pad-0", &pad), ("X-Pad-1", &pad)]).status,
        200
    );
    assert_eq!(g.up.request_count(), 1);
}

#[test]
fn body_over_max_body_by_content_length_is_413_before_the_body_is_sent() {
    let g = start_limited();
    let mut c = g.connect();
    // Only the head: the answer must come without waiting for 100 000 body bytes.
    c.send(
        format!(
            "POST {CHAT_TARGET} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
             Content-Length: 100000\r\n\r\n"
        )
        .as_bytes(),
    );
    c.set_read_timeout(Duration::from_secs(5));
    let resp = c
        .try_read_response()
        .unwrap_or_else(|e| panic!("no 413 before the body was sent: {e}"));
    assert_openai_error(&resp, 413, None);
    assert_eq!(resp.header("connection"), Some("close"));
    assert!(
        c.closed_within(Duration::from_secs(5)),
        "open after the 413"
    );
    // The same with a request where the body should be: one 413, the close, nothing sent.
    let head = format!(
        "POST {CHAT_TARGET} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: 100000\r\n\r\n"
    );
    g.assert_refused_and_nothing_smuggled("Content-Length over max_body", head.as_bytes(), 413);
    g.assert_backend_reachable();
}

#[test]
fn chunked_body_over_max_body_is_413_then_close() {
    let g = start_limited();
    let mut raw = format!(
        "POST {CHAT_TARGET} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\n\r\n"
    )
    .into_bytes();
    for _ in 0..3 {
        raw.extend_from_slice(format!("{:x}\r\n{}\r\n", 600, "a".repeat(600)).as_bytes());
    }
    raw.extend_from_slice(b"0\r\n\r\n");
    g.assert_refused_and_nothing_smuggled("chunked body over max_body", &raw, 413);
    g.assert_backend_reachable();
}

#[test]
fn head_not_complete_within_head_read_is_408() {
    let g = start_limited();
    let mut c = g.connect();
    let t0 = Instant::now();
    c.send(format!("POST {CHAT_TARGET} HTTP/1.1\r\nHost: x\r\nContent-Ty").as_bytes());
    c.set_read_timeout(Duration::from_secs(6));
    let resp = c
        .try_read_response()
        .unwrap_or_else(|e| panic!("no 408 after {:?}: {e}", t0.elapsed()));
    let took = t0.elapsed();
    assert_openai_error(&resp, 408, None);
    assert!(
        took >= Duration::from_millis(800) && took < Duration::from_secs(4),
        "408 after {took:?} with head_read = 1s"
    );
    assert!(
        c.closed_within(Duration::from_secs(5)),
        "open after the 408"
    );
    assert_eq!(g.up.connections(), 0);
}

#[test]
fn body_at_max_body_is_accepted_and_one_byte_more_is_413() {
    let g = start_limited();
    let base = chat_json();
    // JSON allows trailing whitespace: pad the body to exactly max_body (1024) bytes.
    let mut at_limit = base.clone();
    at_limit.resize(1024, b' ');
    let mut over = base;
    over.resize(1025, b' ');
    let raw = |body: &[u8]| {
        request_bytes(
            "POST",
            CHAT_TARGET,
            &[("Content-Type", "application/json")],
            body,
        )
    };
    g.assert_refused_and_nothing_smuggled("a body of 1025 bytes", &raw(&over), 413);
    let mut c = g.connect();
    c.send(&raw(&at_limit));
    let resp = c.read_response();
    assert_eq!(resp.status, 200, "a body of 1024 bytes: {}", resp.text());
    assert_eq!(g.up.request_count(), 1);
}

// ---- the strict close check itself ----------------------------------------------------------

/// A one-connection server on 127.0.0.1 that writes `send` once a client connects, then
/// waits `hold` and closes. Returns its port and thread.
fn scripted_peer(send: &'static [u8], hold: Duration) -> (u16, thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let handle = thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        if !send.is_empty() {
            s.write_all(send).unwrap();
        }
        thread::sleep(hold);
        drop(s);
    });
    (port, handle)
}

/// `closed_within` is true for a silent close, false for a silent open connection, and
/// fails the test when bytes arrive before the close or are left buffered — so no test can
/// pass "400 then close" while a second answer slips out.
#[test]
fn closed_within_fails_when_bytes_come_before_the_close() {
    // Silent close.
    let (port, peer) = scripted_peer(b"", Duration::ZERO);
    let mut c = Client::connect(port);
    assert!(c.closed_within(Duration::from_secs(5)));
    peer.join().unwrap();

    // Silent and open for longer than the wait.
    let (port, peer) = scripted_peer(b"", Duration::from_millis(1500));
    let mut c = Client::connect(port);
    assert!(!c.closed_within(Duration::from_millis(300)));
    drop(c);
    peer.join().unwrap();

    // Bytes, then the close.
    let (port, peer) = scripted_peer(
        b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
        Duration::ZERO,
    );
    let mut c = Client::connect(port);
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        c.closed_within(Duration::from_secs(5))
    }));
    assert!(caught.is_err(), "bytes before the close passed as a close");
    peer.join().unwrap();

    // Bytes while the connection stays open.
    let (port, peer) = scripted_peer(b"x", Duration::from_millis(1500));
    let mut c = Client::connect(port);
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        c.closed_within(Duration::from_millis(800))
    }));
    assert!(
        caught.is_err(),
        "bytes on an open connection passed as silence"
    );
    drop(c);
    peer.join().unwrap();

    // A second answer already buffered behind the first one read.
    const TWO: &[u8] = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n\
                         HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
    let (port, peer) = scripted_peer(TWO, Duration::from_millis(1500));
    let mut c = Client::connect(port);
    // Both answers are in the socket before the first is read, so one read takes both.
    let mut peeked = [0u8; 256];
    assert!(
        wait_until(Duration::from_secs(5), || c
            .raw()
            .peek(&mut peeked)
            .is_ok_and(|n| n == TWO.len())),
        "the peer's bytes did not arrive"
    );
    assert_eq!(c.read_response().status, 400);
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        c.closed_within(Duration::from_secs(1))
    }));
    assert!(
        caught.is_err(),
        "a buffered second answer passed as a close"
    );
    drop(c);
    peer.join().unwrap();
}
