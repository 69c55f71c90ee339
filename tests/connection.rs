//! Whole-process tests of connection handling: keep-alive reuse on the client and upstream
//! sides, chunked request bodies, `Expect: 100-continue`, and pipelined requests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::thread;
use std::time::Duration;

use serde_json::{json, Value};
use support::*;

#[test]
fn keep_alive_is_reused_on_both_sides() {
    let up = Upstream::json(upstream_chat_answer("chat"));
    let s = Launch::new(&openai_backend_body(&up.url(), "chat"))
        .workers(1)
        .start();
    let mut c = s.connect();
    for i in 0..50 {
        let resp = c.post_json("/v1/chat/completions", &chat_body(Some("chat"), false));
        assert_eq!(resp.status, 200, "request {i}: {}", resp.text());
        assert_ne!(
            resp.header("connection").map(str::to_ascii_lowercase),
            Some("close".to_string()),
            "request {i}"
        );
    }
    assert_eq!(up.request_count(), 50);
    assert_eq!(
        up.connections(),
        1,
        "50 sequential requests should share one upstream connection"
    );

    // With one worker, other client connections share the same upstream pool.
    for _ in 0..5 {
        let mut c = s.connect();
        for _ in 0..2 {
            let resp = c.post_json("/v1/chat/completions", &chat_body(Some("chat"), false));
            assert_eq!(resp.status, 200);
        }
    }
    assert_eq!(up.request_count(), 60);
    assert_eq!(
        up.connections(),
        1,
        "client connections share the upstream pool"
    );
}

/// Encodes `body` as chunks of the given sizes (the last chunk takes the rest), each sent
/// with a chunk extension on the first one.
fn chunked(body: &[u8], sizes: &[usize]) -> Vec<Vec<u8>> {
    let mut pieces = Vec::new();
    let mut off = 0;
    for (i, &n) in sizes.iter().enumerate() {
        let n = if i + 1 == sizes.len() {
            body.len() - off
        } else {
            n.min(body.len() - off)
        };
        let ext = if i == 0 { ";name=value" } else { "" };
        let mut p = format!("{n:X}{ext}\r\n").into_bytes();
        p.extend_from_slice(&body[off..off + n]);
        p.extend_from_slice(b"\r\n");
        pieces.push(p);
        off += n;
    }
    pieces.push(b"0\r\n\r\n".to_vec());
    pieces
}

#[test]
fn chunked_request_bodies_are_read_and_forwarded() {
    let up = Upstream::json(upstream_chat_answer("chat"));
    let body = format!("{}\n{}", openai_backend_body(&up.url(), "chat"), MOCK_BODY);
    let s = Launch::new(&body).start();
    let mut c = s.connect();

    for (model, expect_upstream) in [("chat", true), ("gpt-4o", false)] {
        let json_body = serde_json::to_vec(&chat_body(Some(model), false)).unwrap();
        c.send(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n\
              Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
        );
        for piece in chunked(&json_body, &[10, 1, 50, 0]) {
            c.send(&piece);
            thread::sleep(Duration::from_millis(20));
        }
        let resp = c.read_response();
        assert_eq!(resp.status, 200, "{model}: {}", resp.text());
        assert_eq!(resp.json()["object"], "chat.completion");
        if expect_upstream {
            let got = up.requests().pop().expect("upstream request");
            let sent: Value = got.json();
            assert_eq!(sent, chat_body(Some(model), false));
        }
    }
}

#[test]
fn expect_100_continue_is_answered_before_the_body() {
    let s = Launch::new(MOCK_BODY).start();
    let mut c = s.connect();
    let body = serde_json::to_vec(&chat_body(Some("gpt-4o"), false)).unwrap();
    c.send(
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n\
             Content-Type: application/json\r\nExpect: 100-continue\r\n\
             Content-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    c.set_read_timeout(Duration::from_secs(5));
    let interim = c.read_head();
    assert_eq!(
        interim.start_line, "HTTP/1.1 100 Continue",
        "expected 100 Continue before sending the body: {interim:?}"
    );
    c.send(&body);
    let resp = c.read_response();
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.json()["object"], "chat.completion");

    // The connection goes on.
    let resp = c.request("GET", "/v1/models", &[], b"");
    assert_eq!(resp.status, 200);
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let s = Launch::new(MOCK_BODY).start();
    let mut c = s.connect();
    let chat = serde_json::to_vec(&chat_body(Some("gpt-4o"), false)).unwrap();
    let emb =
        serde_json::to_vec(&json!({"model": "text-embedding-3-small", "input": "x"})).unwrap();
    let mut all = request_bytes(
        "POST",
        "/v1/embeddings",
        &[("Content-Type", "application/json")],
        &emb,
    );
    all.extend(request_bytes("GET", "/v1/models", &[], b""));
    all.extend(request_bytes(
        "POST",
        "/v1/chat/completions",
        &[("Content-Type", "application/json")],
        &chat,
    ));
    c.send(&all);
    let r1 = c.read_response();
    let r2 = c.read_response();
    let r3 = c.read_response();
    assert_eq!((r1.status, r2.status, r3.status), (200, 200, 200));
    assert_eq!(r1.json()["data"][0]["object"], "embedding", "{}", r1.text());
    assert_eq!(r2.json()["data"][0]["object"], "model", "{}", r2.text());
    assert_eq!(r3.json()["object"], "chat.completion", "{}", r3.text());
}

#[test]
fn pipelined_requests_to_an_upstream_are_answered_in_order() {
    // The upstream echoes the request's `user` field, answering the first one slowest.
    let up = Upstream::start(|r, s| {
        let user = r.json()["user"].as_str().unwrap_or("").to_string();
        if user == "r1" {
            thread::sleep(Duration::from_millis(300));
        }
        let body = serde_json::to_vec(&json!({"echo": user})).unwrap();
        respond(s, 200, &[("content-type", "application/json")], &body);
        After::KeepAlive
    });
    let s = Launch::new(&openai_backend_body(&up.url(), "chat")).start();
    let mut c = s.connect();
    let mut all = Vec::new();
    for user in ["r1", "r2", "r3"] {
        let mut b = chat_body(Some("chat"), false);
        b["user"] = Value::from(user);
        let b = serde_json::to_vec(&b).unwrap();
        all.extend(request_bytes(
            "POST",
            "/v1/chat/completions",
            &[("Content-Type", "application/json")],
            &b,
        ));
    }
    c.send(&all);
    for user in ["r1", "r2", "r3"] {
        let r = c.read_response();
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["echo"], user);
    }
}

#[test]
fn chunked_request_body_with_trailers_is_accepted() {
    let s = Launch::new(MOCK_BODY).start();
    let mut c = s.connect();
    let body = serde_json::to_vec(&chat_body(Some("gpt-4o"), false)).unwrap();
    let mut raw = b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n\
                    Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        .to_vec();
    raw.extend_from_slice(format!("{:x}\r\n", body.len()).as_bytes());
    raw.extend_from_slice(&body);
    raw.extend_from_slice(b"\r\n0\r\nX-Trailer: done\r\n\r\n");
    c.send(&raw);
    let resp = c.read_response();
    assert_eq!(resp.status, 200, "{}", resp.text());
    // The trailer was consumed with the body: the connection is in step.
    assert_eq!(c.request("GET", "/v1/models", &[], b"").status, 200);
}

#[test]
fn client_connection_close_is_honoured() {
    let s = Launch::new(MOCK_BODY).start();
    let mut c = s.connect();
    let resp = c.request("GET", "/v1/models", &[("Connection", "close")], b"");
    assert_eq!(resp.status, 200);
    assert!(
        c.closed_within(Duration::from_secs(3)),
        "server kept the connection after Connection: close"
    );
}

#[test]
fn http_1_0_request_without_host_is_served_then_closed() {
    let s = Launch::new(MOCK_BODY).start();
    let mut c = s.connect();
    c.send(b"GET /v1/models HTTP/1.0\r\n\r\n");
    let resp = c.read_response();
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.json()["object"], "list");
    assert!(
        c.closed_within(Duration::from_secs(3)),
        "HTTP/1.0 without keep-alive should be closed after the answer"
    );
}

#[test]
fn idle_keep_alive_connection_is_closed_after_keepalive_idle() {
    let s = Launch::new(MOCK_BODY)
        .server("[server.timeouts]\nkeepalive_idle = \"1s\"")
        .start();
    let mut c = s.connect();
    assert_eq!(c.request("GET", "/v1/models", &[], b"").status, 200);
    let t0 = std::time::Instant::now();
    assert!(
        c.closed_within(Duration::from_secs(4)),
        "idle connection still open 4 s later with keepalive_idle = 1s"
    );
    assert!(
        t0.elapsed() >= Duration::from_millis(800),
        "closed after only {:?}",
        t0.elapsed()
    );
}

#[test]
fn large_request_body_is_forwarded_intact() {
    let up = Upstream::json(upstream_chat_answer("chat"));
    let s = Launch::new(&openai_backend_body(&up.url(), "chat")).start();
    let mut body = chat_body(Some("chat"), false);
    let text: String = (0..200_000u32)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    body["messages"][1]["content"] = Value::from(text);
    let resp = s.post_json("/v1/chat/completions", &body);
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(up.requests()[0].json(), body);
}

/// A second Sluice configured on the address a first one listens on refuses to start
/// (workers bind with SO_REUSEPORT, which would otherwise let it take half the connections
/// silently); the first keeps serving every connection.
#[test]
fn a_second_process_on_a_taken_address_refuses_to_start() {
    let first = Launch::new(MOCK_BODY).start();
    let dir = TempDir::new("second");
    let config = dir.path().join("sluice.toml");
    std::fs::write(&config, config_text(first.port, "", MOCK_BODY)).unwrap();
    let mut second = std::process::Command::new(sluice_bin())
        .arg("--config")
        .arg(&config)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = second.try_wait().unwrap() {
            break Some(status);
        }
        if std::time::Instant::now() > deadline {
            let _ = second.kill();
            let _ = second.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut second.stderr.take().unwrap(), &mut stderr).unwrap();
    let status = status.expect("the second process started and kept running");
    assert!(!status.success());
    assert!(
        stderr.contains(&format!("cannot listen on 127.0.0.1:{}", first.port))
            && stderr.contains("in use"),
        "{stderr}"
    );
    for _ in 0..8 {
        assert_eq!(first.get("/v1/models").status, 200);
    }
}
