//! Whole-process tests of answers a backend content-codes although Sluice asked for
//! `identity` (issue 8, item 3), and of answers of any size (item 2): usage is read from the
//! decoded bytes and charged exactly, the client gets the decoded body (no
//! `Content-Encoding`, re-framed), memory stays bounded against decompression bombs, and
//! without a token limit nothing changes.
//!
//! What a request was charged is read as in tests/accounting.rs: two requests with the same
//! body reserve the same estimate, so `remaining(A) − remaining(B)` is what A was charged.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use flate2::write::{DeflateEncoder, GzEncoder, ZlibEncoder};
use flate2::Compression;
use serde_json::{json, Value};
use support::*;

const KEY: &str = "test-key-encoded-answers";
const BIG_QUOTA: i64 = 1_000_000;
/// What the scripted backend reports: 31 + 9.
const USAGE: i64 = 40;

/// Every coding the backend uses here: (case name, `Content-Encoding` value).
const CODINGS: [(&str, &str); 6] = [
    ("gzip", "gzip"),
    ("x-gzip", "x-gzip"),
    ("zlib", "deflate"),
    ("raw", "deflate"),
    ("br", "br"),
    ("gzip-br", "gzip, br"),
];

/// How the backend frames the coded body.
const FRAMINGS: [&str; 4] = ["length", "chunked", "bytewise", "close"];

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn br(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut w = brotli::CompressorWriter::new(&mut out, 4096, 5, 22);
        w.write_all(data).unwrap();
    }
    out
}

/// `data` coded as the case says.
fn encode(case: &str, data: &[u8]) -> Vec<u8> {
    match case {
        "gzip" | "x-gzip" => gzip(data),
        "zlib" => {
            let mut e = ZlibEncoder::new(Vec::new(), Compression::default());
            e.write_all(data).unwrap();
            e.finish().unwrap()
        }
        "raw" => {
            let mut e = DeflateEncoder::new(Vec::new(), Compression::default());
            e.write_all(data).unwrap();
            e.finish().unwrap()
        }
        "br" => br(data),
        "gzip-br" => br(&gzip(data)),
        other => panic!("no coding {other}"),
    }
}

fn header_for(case: &str) -> &'static str {
    CODINGS
        .iter()
        .find(|(c, _)| *c == case)
        .map_or_else(|| panic!("no coding {case}"), |(_, h)| h)
}

/// The JSON answer the backend codes: `content` as the message, usage 31 + 9.
fn json_answer(content: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "id": "chatcmpl-coded", "object": "chat.completion", "created": 1, "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 31, "completion_tokens": 9, "total_tokens": USAGE}
    }))
    .unwrap()
}

/// The SSE answer: three content chunks, the finish chunk, the usage chunk when the
/// request asked for it, `[DONE]`.
fn sse_answer(include_usage: bool) -> Vec<u8> {
    let mut out = String::new();
    for word in ["Hello", " there", "."] {
        out.push_str(&sse_chunk(word));
    }
    let finish = json!({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
        "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]});
    out.push_str(&format!("data: {finish}\n\n"));
    if include_usage {
        let usage = json!({"id": "c", "object": "chat.completion.chunk", "created": 1,
            "model": "m", "choices": [],
            "usage": {"prompt_tokens": 31, "completion_tokens": 9, "total_tokens": USAGE}});
        out.push_str(&format!("data: {usage}\n\n"));
    }
    out.push_str("data: [DONE]\n\n");
    out.into_bytes()
}

/// Writes an answer with `body` framed as `framing` says; whether the connection may stay.
fn send(
    s: &mut TcpStream,
    status: u16,
    headers: &[(&str, &str)],
    body: &[u8],
    framing: &str,
) -> After {
    let mut head = format!("HTTP/1.1 {status} Status\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    match framing {
        "length" | "bytewise" => head.push_str(&format!("content-length: {}\r\n\r\n", body.len())),
        "chunked" => head.push_str("transfer-encoding: chunked\r\n\r\n"),
        "close" => head.push_str("connection: close\r\n\r\n"),
        other => panic!("no framing {other}"),
    }
    let _ = s.write_all(head.as_bytes());
    match framing {
        "length" | "close" => {
            let _ = s.write_all(body);
        }
        "bytewise" => {
            let _ = s.set_nodelay(true);
            for b in body {
                if s.write_all(&[*b]).is_err() {
                    break;
                }
            }
        }
        _ => {
            for piece in body.chunks(50) {
                let _ = write_chunk(s, piece);
            }
            let _ = write_chunk(s, b"");
        }
    }
    if framing == "close" {
        After::Close
    } else {
        After::KeepAlive
    }
}

/// The scripted backend. The request's `x-coding` header picks the coding (`plain`: none;
/// `zstd`; `garbage`: bytes that are no coding at all; `bad-crc`: a long gzip answer whose
/// trailer is wrong), `x-framing` the framing, `x-status` the status, `x-content` the
/// length of the message in bytes (filled with `a`).
fn coded_upstream() -> Upstream {
    Upstream::start(|r, s: &mut TcpStream| {
        let coding = r.head.header("x-coding").unwrap_or("plain").to_string();
        let framing = r.head.header("x-framing").unwrap_or("length").to_string();
        let status: u16 = r
            .head
            .header("x-status")
            .map_or(200, |v| v.parse().unwrap());
        let size: usize = r.head.header("x-content").map_or(2, |v| v.parse().unwrap());
        let req = r.json();
        let (ctype, plain) = if req["stream"] == json!(true) {
            let asked = req["stream_options"]["include_usage"] == json!(true);
            ("text/event-stream", sse_answer(asked))
        } else {
            ("application/json", json_answer(&"a".repeat(size)))
        };
        let mut headers = vec![("content-type", ctype)];
        let body = match coding.as_str() {
            "plain" => plain,
            "zstd" => {
                headers.push(("content-encoding", "zstd"));
                b"\x28\xb5\x2f\xfd not really zstd but Sluice must not care".to_vec()
            }
            "garbage" => {
                let as_if = r.head.header("x-as").unwrap_or("gzip").to_string();
                headers.push((
                    "content-encoding",
                    CODINGS.iter().find(|(c, _)| *c == as_if).unwrap().1,
                ));
                b"{\"usage\":{\"total_tokens\":1}} is not coded at all".to_vec()
            }
            "bad-crc" => {
                headers.push(("content-encoding", "gzip"));
                let mut coded = gzip(&plain);
                let n = coded.len();
                coded[n - 8] ^= 0xff;
                coded
            }
            case => {
                headers.push(("content-encoding", header_for(case)));
                encode(case, &plain)
            }
        };
        send(s, status, &headers, &body, &framing)
    })
}

fn start_limited(up: &Upstream) -> Sluice {
    let mut body = format!(
        "{}tokens = {{ estimator = \"heuristic\" }}\n",
        openai_backend_body(&up.url(), "gpt-4o")
    );
    body.push_str(&product(
        "p",
        &format!(r#"limits = [{{ unit = "tokens", quota = {BIG_QUOTA}, per = "day" }}]"#),
    ));
    body.push_str(&subscription("team", "p", &[KEY]));
    Launch::new(&body).start()
}

/// POSTs `body` to the chat route with the key, an SDK's `Accept-Encoding` and `headers`;
/// returns once Sluice has booked the request's charge ([`post_settled`]).
fn ask(s: &Sluice, headers: &[(&str, &str)], body: &Value) -> Response {
    let mut all = vec![("api-key", KEY), ("Accept-Encoding", "gzip, deflate, br")];
    all.extend_from_slice(headers);
    post_settled(s, "/v1/chat/completions", &all, body)
}

/// What a request made with `headers` and `body` was charged: the drop in remaining tokens
/// from it to the same body answered plainly (which reserves the same estimate).
fn charged(s: &Sluice, a: &Response, body: &Value) -> i64 {
    let b = ask(s, &[("x-coding", "plain")], body);
    remaining_tokens(a) - remaining_tokens(&b)
}

/// The answer's body as the client must see it: decoded, no coding, no length, chunked.
fn assert_decoded(resp: &Response, what: &str) {
    assert_eq!(resp.status, 200, "{what}: {}", resp.text());
    for name in ["content-encoding", "content-length"] {
        assert!(
            resp.header(name).is_none(),
            "{what}: {name}: {:?}",
            resp.head
        );
    }
    assert_eq!(
        resp.header("transfer-encoding"),
        Some("chunked"),
        "{what}: {:?}",
        resp.head
    );
}

#[test]
fn json_answers_in_every_coding_and_framing_are_charged_their_usage() {
    let up = coded_upstream();
    let s = start_limited(&up);
    let body = chat_body(Some("gpt-4o"), false);
    for (coding, _) in CODINGS {
        for framing in FRAMINGS {
            let what = format!("{coding} / {framing}");
            let a = ask(&s, &[("x-coding", coding), ("x-framing", framing)], &body);
            assert_decoded(&a, &what);
            assert_eq!(a.body, json_answer("aa"), "{what}");
            assert_eq!(charged(&s, &a, &body), USAGE, "{what}");
        }
    }
    // The backend was asked for identity every time.
    for r in up.requests() {
        assert_eq!(r.head.header_all("accept-encoding"), ["identity"]);
    }
}

#[test]
fn sse_answers_in_every_coding_drop_the_injected_usage_chunk() {
    let up = coded_upstream();
    let s = start_limited(&up);
    let body = chat_body(Some("gpt-4o"), true);
    for (coding, _) in CODINGS {
        for framing in FRAMINGS {
            let what = format!("{coding} / {framing}");
            let a = ask(&s, &[("x-coding", coding), ("x-framing", framing)], &body);
            assert_decoded(&a, &what);
            assert_eq!(
                a.body,
                sse_answer(false),
                "{what}: the client gets the stream without the usage chunk Sluice asked for"
            );
            assert_eq!(charged(&s, &a, &body), USAGE, "{what}");
        }
    }
    // A client that asked for usage gets it, decoded.
    let mut asked = body.clone();
    asked["stream_options"] = json!({"include_usage": true});
    let a = ask(
        &s,
        &[("x-coding", "gzip-br"), ("x-framing", "chunked")],
        &asked,
    );
    assert_decoded(&a, "asked");
    assert_eq!(a.body, sse_answer(true));
    assert_eq!(charged(&s, &a, &asked), USAGE);
}

#[test]
fn an_http10_client_gets_the_decoded_body_close_delimited() {
    let up = coded_upstream();
    let s = start_limited(&up);
    let body = serde_json::to_vec(&chat_body(Some("gpt-4o"), false)).unwrap();
    for (coding, _) in CODINGS {
        let mut c = s.connect();
        let mut req = format!(
            "POST /v1/chat/completions HTTP/1.0\r\nHost: x\r\napi-key: {KEY}\r\n\
             Accept-Encoding: gzip\r\nx-coding: {coding}\r\nx-framing: chunked\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        req.extend_from_slice(&body);
        c.send(&req);
        let mut got = Vec::new();
        c.raw().read_to_end(&mut got).expect("read to the close");
        let text = String::from_utf8(got).unwrap();
        let (head, rest) = text.split_once("\r\n\r\n").unwrap();
        let head = head.to_ascii_lowercase();
        assert!(head.starts_with("http/1.1 200"), "{coding}: {head}");
        for name in ["content-encoding", "content-length", "transfer-encoding"] {
            assert!(!head.contains(name), "{coding}: {head}");
        }
        assert_eq!(rest.as_bytes(), json_answer("aa"), "{coding}");
    }
}

/// The VmHWM (peak resident set) of a process, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmHWM in {status}"))
}

/// A 20 MiB answer with its usage at the end, plain and as gzip and br bombs (20 MiB from a
/// few KiB): each is relayed whole, charged its real usage, and Sluice's peak memory grows by
/// less than the answer (a few MiB: brotli's window; holding the answer would cost 20 MiB).
#[test]
fn big_answers_and_bombs_are_read_whole_in_bounded_memory() {
    const SIZE: usize = 20 << 20;
    let up = coded_upstream();
    let s = start_limited(&up);
    let body = chat_body(Some("gpt-4o"), false);
    let warm = ask(&s, &[], &body);
    assert_eq!(warm.status, 200);
    let before = peak_rss_kib(s.pid());
    let want = json_answer(&"a".repeat(SIZE));
    for coding in ["plain", "gzip", "br"] {
        let size = SIZE.to_string();
        let a = ask(&s, &[("x-coding", coding), ("x-content", &size)], &body);
        assert_eq!(a.status, 200, "{coding}");
        assert!(
            a.body == want,
            "{coding}: body of {} bytes differs",
            a.body.len()
        );
        assert_eq!(charged(&s, &a, &body), USAGE, "{coding}");
    }
    let grown = peak_rss_kib(s.pid()).saturating_sub(before);
    assert!(
        grown < 16 << 10,
        "Sluice's peak RSS grew by {grown} KiB relaying 20 MiB answers"
    );
}

#[test]
fn a_coded_body_that_does_not_decode_before_any_byte_is_a_502() {
    let up = coded_upstream();
    let s = start_limited(&up);
    let body = chat_body(Some("gpt-4o"), false);
    // The backend did the work: the 502 keeps the request's reservation.
    let first = ask(&s, &[], &body);
    let reserved = first_reservation(&first);
    let a = ask(&s, &[("x-coding", "garbage")], &body);
    assert_openai_error(&a, 502, Some("upstream_protocol_error"));
    let b = ask(&s, &[], &body);
    let charged = BIG_QUOTA - USAGE - reserved - remaining_tokens(&b);
    assert_eq!(charged, reserved, "the estimate stands");
    for (as_if, _) in CODINGS {
        for framing in ["length", "chunked"] {
            let a = ask(
                &s,
                &[
                    ("x-coding", "garbage"),
                    ("x-as", as_if),
                    ("x-framing", framing),
                ],
                &body,
            );
            assert_openai_error(&a, 502, Some("upstream_protocol_error"));
        }
    }
}

/// The reservation of the first request on a fresh Sluice: what it charges when its usage
/// is not known.
fn first_reservation(a: &Response) -> i64 {
    BIG_QUOTA - remaining_tokens(a)
}

#[test]
fn a_coded_body_that_breaks_midway_ends_the_connection_and_keeps_the_estimate() {
    let up = coded_upstream();
    let s = start_limited(&up);
    let body = chat_body(Some("gpt-4o"), false);
    let bytes = serde_json::to_vec(&body).unwrap();
    let mut c = s.connect();
    c.send(&request_bytes(
        "POST",
        "/v1/chat/completions",
        &[
            ("api-key", KEY),
            ("Content-Type", "application/json"),
            ("x-coding", "bad-crc"),
            ("x-content", "300000"),
        ],
        &bytes,
    ));
    let head = c.read_head();
    assert_eq!(head.status(), 200, "{head:?}");
    assert_eq!(head.response_framing(), Framing::Chunked);
    let reserved = BIG_QUOTA
        - head
            .header("x-ratelimit-remaining-tokens")
            .unwrap()
            .parse::<i64>()
            .unwrap();
    assert!(
        c.wire.read_body(Framing::Chunked).is_err(),
        "a body whose coding broke must not end cleanly"
    );
    let b = ask(&s, &[], &body);
    let charged = BIG_QUOTA - reserved - remaining_tokens(&b);
    assert_eq!(charged, reserved, "the estimate stands");
    assert!(reserved > 100 && reserved != USAGE);
}

#[test]
fn a_coding_sluice_does_not_decode_passes_through_and_keeps_the_estimate() {
    let up = coded_upstream();
    let s = start_limited(&up);
    let body = chat_body(Some("gpt-4o"), false);
    let a = ask(&s, &[("x-coding", "zstd")], &body);
    assert_eq!(a.status, 200);
    assert_eq!(a.header("content-encoding"), Some("zstd"));
    assert_eq!(
        a.body,
        b"\x28\xb5\x2f\xfd not really zstd but Sluice must not care"
    );
    let reserved = first_reservation(&a);
    assert_eq!(charged(&s, &a, &body), reserved, "the estimate stands");
    assert!(
        s.wait_log("does not decode", Duration::from_secs(5)),
        "{}",
        s.log()
    );
    assert_eq!(
        s.log()
            .matches("content coding Sluice does not decode although")
            .count(),
        1,
        "logged once: {}",
        s.log()
    );
}

#[test]
fn coded_error_answers_are_decoded_too() {
    let up = coded_upstream();
    let s = start_limited(&up);
    let body = chat_body(Some("gpt-4o"), false);
    let a = ask(
        &s,
        &[
            ("x-coding", "gzip"),
            ("x-status", "400"),
            ("x-framing", "chunked"),
        ],
        &body,
    );
    assert_eq!(a.status, 400);
    assert!(a.header("content-encoding").is_none(), "{:?}", a.head);
    assert_eq!(a.body, json_answer("aa"));
}

/// An empty body is empty whatever its coding says: a 429 with `content-encoding: gzip`
/// and `content-length: 0` (or an empty chunked body) reaches the client as that 429 with
/// its `Retry-After`, not as Sluice's 502.
#[test]
fn an_empty_coded_body_is_empty() {
    for framing in ["content-length: 0\r\n", "transfer-encoding: chunked\r\n"] {
        let up = Upstream::start(move |_, s: &mut TcpStream| {
            let body = if framing.starts_with("transfer") {
                "0\r\n\r\n"
            } else {
                ""
            };
            let _ = s.write_all(
                format!(
                    "HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\n\
                     content-encoding: gzip\r\nretry-after: 7\r\n{framing}\r\n{body}"
                )
                .as_bytes(),
            );
            After::KeepAlive
        });
        let s = start_limited(&up);
        let resp = ask(&s, &[], &chat_body(Some("gpt-4o"), false));
        assert_eq!(resp.status, 429, "{framing}: {}", resp.text());
        assert_eq!(resp.header("retry-after"), Some("7"));
        assert!(resp.body.is_empty());
        assert!(resp.header("content-encoding").is_none());
    }
}

/// When nothing accounts tokens (no token limit, no audit log, no metrics listener) Sluice
/// reads nothing: the client's `Accept-Encoding` reaches the backend and the coded answer
/// reaches the client byte for byte.
#[test]
fn without_a_token_limit_coded_answers_pass_untouched() {
    let up = coded_upstream();
    // Nothing accounts tokens: no token limit, no audit log, no metrics listener.
    let s = Launch::new(&format!(
        "{}\n[admin]\nlisten = \"\"\n",
        openai_backend_body(&up.url(), "gpt-4o")
    ))
    .start();
    let body = chat_body(Some("gpt-4o"), false);
    for (coding, header) in CODINGS {
        for framing in ["length", "chunked"] {
            let resp = post_with(
                &s,
                "/v1/chat/completions",
                &[
                    ("Accept-Encoding", "gzip, deflate, br"),
                    ("x-coding", coding),
                    ("x-framing", framing),
                ],
                &body,
            );
            let what = format!("{coding} / {framing}");
            assert_eq!(resp.status, 200, "{what}");
            assert_eq!(resp.header("content-encoding"), Some(header), "{what}");
            assert_eq!(resp.body, encode(coding, &json_answer("aa")), "{what}");
            let got = up.requests().pop().unwrap();
            assert_eq!(
                got.head.header_all("accept-encoding"),
                ["gzip, deflate, br"]
            );
        }
    }
}
