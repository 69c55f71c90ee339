//! Whole-process tests of the request framing rules (each one a 400 in the OpenAI error shape
//! and a closed connection) and of the size and time limits (414, 431, 413, 408).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use support::*;

const CHAT_TARGET: &str = "/v1/chat/completions";

fn chat_json() -> Vec<u8> {
    serde_json::to_vec(&chat_body(Some("gpt-4o"), false)).unwrap()
}

/// Sends `raw` (one write) on a fresh connection and asserts a 400 in the OpenAI shape,
/// then that the connection is closed.
fn assert_rejected_400(s: &Sluice, what: &str, raw: &[u8]) {
    let mut c = s.connect();
    c.send(raw);
    let resp = c
        .try_read_response()
        .unwrap_or_else(|e| panic!("{what}: no response ({e})"));
    assert_eq!(resp.status, 400, "{what}: {}", resp.text());
    assert_openai_error(&resp, 400, None);
    assert!(
        c.closed_within(Duration::from_secs(3)),
        "{what}: connection left open after a framing error"
    );
}

/// A chat request head with `headers` (no Host/Content-Length added), then `body`.
fn raw_request(headers: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!("POST {CHAT_TARGET} HTTP/1.1\r\n{headers}\r\n").into_bytes();
    out.extend_from_slice(body);
    out
}

fn start() -> Sluice {
    Launch::new(MOCK_BODY).start()
}

#[test]
fn control_a_well_framed_request_is_served() {
    let s = start();
    let body = chat_json();
    let raw = raw_request(
        &format!(
            "Host: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ),
        &body,
    );
    let mut c = s.connect();
    c.send(&raw);
    assert_eq!(c.read_response().status, 200);
}

#[test]
fn content_length_with_transfer_encoding_is_rejected() {
    let s = start();
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
        assert_rejected_400(&s, &headers, &raw_request(&headers, &chunked));
    }
}

#[test]
fn repeated_content_length_is_rejected() {
    let s = start();
    let body = chat_json();
    let n = body.len();
    for headers in [
        format!("Host: x\r\nContent-Length: {n}\r\nContent-Length: {n}\r\n"),
        format!(
            "Host: x\r\nContent-Length: {n}\r\nContent-Length: {}\r\n",
            n + 1
        ),
    ] {
        assert_rejected_400(&s, &headers, &raw_request(&headers, &body));
    }
}

#[test]
fn malformed_content_length_is_rejected() {
    let s = start();
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
            &s,
            &format!("Content-Length: {value:?}"),
            &raw_request(&headers, &body),
        );
    }
}

#[test]
fn transfer_encoding_other_than_chunked_is_rejected() {
    let s = start();
    let body = chat_json();
    let mut chunked = format!("{:x}\r\n", body.len()).into_bytes();
    chunked.extend_from_slice(&body);
    chunked.extend_from_slice(b"\r\n0\r\n\r\n");
    for value in ["gzip, chunked", "identity", "gzip", "chunked, chunked"] {
        let headers = format!("Host: x\r\nTransfer-Encoding: {value}\r\n");
        assert_rejected_400(
            &s,
            &format!("Transfer-Encoding: {value}"),
            &raw_request(&headers, &chunked),
        );
    }
}

#[test]
fn bare_lf_in_head_is_rejected() {
    let s = start();
    let body = chat_json();
    let n = body.len();
    // Bare LF ending the request line.
    let mut raw =
        format!("POST {CHAT_TARGET} HTTP/1.1\nHost: x\r\nContent-Length: {n}\r\n\r\n").into_bytes();
    raw.extend_from_slice(&body);
    assert_rejected_400(&s, "bare LF after the request line", &raw);
    // Bare LF ending a header line.
    let headers = format!("Host: x\nContent-Length: {n}\r\n");
    assert_rejected_400(&s, "bare LF after a header", &raw_request(&headers, &body));
}

#[test]
fn bare_cr_in_head_is_rejected() {
    let s = start();
    let body = chat_json();
    let headers = format!("Host: x\r\nX-A: a\rb\r\nContent-Length: {}\r\n", body.len());
    assert_rejected_400(
        &s,
        "bare CR in a header value",
        &raw_request(&headers, &body),
    );
    let headers = format!(
        "Host: x\r\nX-A: a\rX-B: b\r\nContent-Length: {}\r\n",
        body.len()
    );
    assert_rejected_400(&s, "bare CR ending a header", &raw_request(&headers, &body));
}

#[test]
fn nul_in_head_is_rejected() {
    let s = start();
    let body = chat_json();
    let headers = format!("Host: x\r\nX-A: a\0b\r\nContent-Length: {}\r\n", body.len());
    assert_rejected_400(&s, "NUL in a header value", &raw_request(&headers, &body));
}

#[test]
fn obs_fold_is_rejected() {
    let s = start();
    let body = chat_json();
    let headers = format!(
        "Host: x\r\nX-A: a\r\n  folded\r\nContent-Length: {}\r\n",
        body.len()
    );
    assert_rejected_400(&s, "obs-fold (space)", &raw_request(&headers, &body));
    let headers = format!(
        "Host: x\r\nX-A: a\r\n\tfolded\r\nContent-Length: {}\r\n",
        body.len()
    );
    assert_rejected_400(&s, "obs-fold (tab)", &raw_request(&headers, &body));
}

#[test]
fn bad_chunk_size_line_is_rejected() {
    let s = start();
    let body = chat_json();
    for size_line in ["zz", "-1", "ffffffffffffffffffffff", "", "0x10", " 5"] {
        let mut chunked = format!("{size_line}\r\n").into_bytes();
        chunked.extend_from_slice(&body);
        chunked.extend_from_slice(b"\r\n0\r\n\r\n");
        let headers = "Host: x\r\nTransfer-Encoding: chunked\r\n";
        assert_rejected_400(
            &s,
            &format!("chunk size line {size_line:?}"),
            &raw_request(headers, &chunked),
        );
    }
}

#[test]
fn missing_host_is_rejected() {
    let s = start();
    let body = chat_json();
    let headers = format!(
        "Content-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    assert_rejected_400(&s, "no Host", &raw_request(&headers, &body));
}

#[test]
fn repeated_host_is_rejected() {
    let s = start();
    let body = chat_json();
    let headers = format!("Host: a\r\nHost: b\r\nContent-Length: {}\r\n", body.len());
    assert_rejected_400(&s, "two Host headers", &raw_request(&headers, &body));
}

// ---- limits ---------------------------------------------------------------------------------

fn start_limited() -> Sluice {
    Launch::new(MOCK_BODY)
        .server(
            "[server.limits]\nmax_request_line = 1024\nmax_head = 4096\nmax_headers = 10\nmax_body = 1024\n\
             [server.timeouts]\nhead_read = \"1s\"",
        )
        .start()
}

fn post_with(s: &Sluice, target: &str, extra_headers: &[(&str, &str)]) -> Response {
    let body = chat_json();
    let mut headers = vec![("Content-Type", "application/json")];
    headers.extend_from_slice(extra_headers);
    let mut c = s.connect();
    c.send(&request_bytes("POST", target, &headers, &body));
    c.try_read_response()
        .unwrap_or_else(|e| panic!("no response: {e}"))
}

#[test]
fn request_line_over_max_request_line_is_414() {
    let s = start_limited();
    let short = format!("{CHAT_TARGET}?pad={}", "a".repeat(800));
    assert_eq!(post_with(&s, &short, &[]).status, 200);
    let long = format!("{CHAT_TARGET}?pad={}", "a".repeat(2000));
    assert_openai_error(&post_with(&s, &long, &[]), 414, None);
}

#[test]
fn too_many_headers_is_431() {
    let s = start_limited();
    // Host, Content-Type, Content-Length + 5 = 8 ≤ 10.
    let few: Vec<(String, String)> = (0..5).map(|i| (format!("X-Pad-{i}"), "v".into())).collect();
    let few: Vec<(&str, &str)> = few.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(post_with(&s, CHAT_TARGET, &few).status, 200);
    let many: Vec<(String, String)> = (0..20)
        .map(|i| (format!("X-Pad-{i}"), "v".into()))
        .collect();
    let many: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_openai_error(&post_with(&s, CHAT_TARGET, &many), 431, None);
}

#[test]
fn head_over_max_head_is_431() {
    let s = start_limited();
    let pad = "p".repeat(500);
    assert_eq!(
        post_with(&s, CHAT_TARGET, &[("X-Pad-0", &pad), ("X-Pad-1", &pad)]).status,
        200
    );
    let pad = "p".repeat(1000);
    let big: Vec<(&str, &str)> = [
        "X-Pad-0", "X-Pad-1", "X-Pad-2", "X-Pad-3", "X-Pad-4", "X-Pad-5",
    ]
    .into_iter()
    .map(|k| (k, pad.as_str()))
    .collect();
    assert_openai_error(&post_with(&s, CHAT_TARGET, &big), 431, None);
}

#[test]
fn body_over_max_body_by_content_length_is_413_before_the_body_is_sent() {
    let s = start_limited();
    let mut c = s.connect();
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
}

#[test]
fn chunked_body_over_max_body_is_413() {
    let s = start_limited();
    let mut c = s.connect();
    let mut raw = format!(
        "POST {CHAT_TARGET} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\n\r\n"
    )
    .into_bytes();
    for _ in 0..3 {
        raw.extend_from_slice(format!("{:x}\r\n{}\r\n", 600, "a".repeat(600)).as_bytes());
    }
    raw.extend_from_slice(b"0\r\n\r\n");
    c.send(&raw);
    let resp = c
        .try_read_response()
        .unwrap_or_else(|e| panic!("no response: {e}"));
    assert_openai_error(&resp, 413, None);
}

#[test]
fn head_not_complete_within_head_read_is_408() {
    let s = start_limited();
    let mut c = s.connect();
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
}

#[test]
fn body_at_max_body_is_accepted_and_one_byte_more_is_413() {
    let s = start_limited();
    let base = chat_json();
    // JSON allows trailing whitespace: pad the body to exactly max_body (1024) bytes.
    let mut at_limit = base.clone();
    at_limit.resize(1024, b' ');
    let mut over = base;
    over.resize(1025, b' ');
    for (body, want) in [(at_limit, 200), (over, 413)] {
        let mut c = s.connect();
        c.send(&request_bytes(
            "POST",
            CHAT_TARGET,
            &[("Content-Type", "application/json")],
            &body,
        ));
        let resp = c.read_response();
        assert_eq!(
            resp.status,
            want,
            "body of {} bytes: {}",
            body.len(),
            resp.text()
        );
    }
}
