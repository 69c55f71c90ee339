//! Whole-process tests of what bounds a request before it is admitted: the per-client-IP
//! limit counts every request (bad credentials, unknown paths and wrong methods too) and is
//! decided at the head; a request body has a total deadline (`server.timeouts.body_read`)
//! and a least average rate (`server.limits.min_body_rate` after `body_rate_grace`), so a
//! trickling client is cut with 408; a refused request's body is never waited for.
//!
//! Timeouts are configured short so the file runs in a few seconds.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use support::*;

const KEY: &str = "test-key-request-limits";

/// The mock deployments, a product without limits and one subscription with [`KEY`].
fn with_auth() -> String {
    let mut body = String::from(MOCK_DEPLOYMENTS);
    body.push_str(&product("p", ""));
    body.push_str(&subscription("team", "p", &[KEY]));
    body
}

/// A request head for `POST target` with `headers` (lines ending in `\r\n`), no body.
fn head(target: &str, headers: &str) -> Vec<u8> {
    format!("POST {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n{headers}\r\n")
        .into_bytes()
}

/// Writes `piece` to `stream` every `every` until `stop` is set, `total` pieces are sent or
/// the connection fails. Returns the thread.
fn trickle(
    stream: &TcpStream,
    piece: &'static [u8],
    every: Duration,
    total: usize,
    stop: &Arc<AtomicBool>,
) -> thread::JoinHandle<()> {
    let mut w = stream.try_clone().expect("clone stream");
    let stop = stop.clone();
    thread::spawn(move || {
        for _ in 0..total {
            if stop.load(Ordering::Relaxed) || w.write_all(piece).is_err() {
                return;
            }
            thread::sleep(every);
        }
    })
}

/// Asserts `resp` is the body-timeout 408 that closes the connection.
fn assert_body_timeout(resp: &Response) {
    assert_openai_error(resp, 408, None);
    assert_eq!(
        resp.header("connection"),
        Some("close"),
        "a 408 ends the connection: {:?}",
        resp.head.headers
    );
    assert!(
        resp.json()["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("body")),
        "408 names the body: {}",
        resp.text()
    );
}

// ---------------------------------------------------------------------------------------------
// The client-IP limit counts every request

#[test]
fn wrong_keys_are_counted_by_the_client_ip_limit() {
    let s = Launch::new(&with_auth())
        .server(r#"client_ip_limits = [{ unit = "requests", rate = 20, per = "minute" }]"#)
        .start();
    let t0 = Instant::now();
    let statuses: Vec<Response> = (0..60)
        .map(|_| chat_as(&s, "wrong-key-guess", &chat_body(Some("gpt-4o"), false)))
        .collect();
    // 20 a minute refills one every 3 s: what passes beyond the first 20 is bounded by time.
    let refilled = (t0.elapsed().as_secs() / 3) as usize + 1;
    for resp in statuses.iter().take(20) {
        assert_openai_error(resp, 401, Some("invalid_api_key"));
    }
    let refused = statuses.iter().filter(|r| r.status == 429).count();
    for resp in statuses.iter().filter(|r| r.status != 401) {
        assert_rate_limited(resp);
    }
    assert!(
        refused >= 40 - refilled,
        "only {refused} of 60 wrong-key attempts refused by a limit of 20 a minute"
    );
    // The limit is the address's, not the key's: the right key from there waits too.
    assert_rate_limited(&chat(&s, KEY));
}

#[test]
fn refused_routes_count_against_the_client_ip_limit() {
    let s = Launch::new(MOCK_DEPLOYMENTS)
        .server(r#"client_ip_limits = [{ unit = "requests", rate = 5, per = "minute" }]"#)
        .start();
    let chat = chat_body(Some("gpt-4o"), false);
    assert_openai_error(&post_with(&s, "/nope", &[], &chat), 404, None);
    assert_openai_error(&post_with(&s, "/v1/nothing/here", &[], &chat), 404, None);
    assert_eq!(s.get("/v1/chat/completions").status, 405);
    let no_version = post_with(
        &s,
        "/openai/deployments/gpt-4o/chat/completions",
        &[],
        &chat,
    );
    assert_openai_error(&no_version, 400, None);
    assert_eq!(s.get("/v1/models").status, 200);
    // Five spent on refusals and a models list: the sixth is over, whatever it is.
    assert_rate_limited(&post_with(&s, "/v1/chat/completions", &[], &chat));
    assert_rate_limited(&post_with(&s, "/nope", &[], &chat));
}

/// Requests whose heads are refused before they are whole — an invalid Host, a bare LF, a
/// head too large, a head too slow — count against their address too.
#[test]
fn malformed_heads_count_against_the_client_ip_limit() {
    let s = Launch::new(MOCK_DEPLOYMENTS)
        .server(
            "client_ip_limits = [{ unit = \"requests\", rate = 4, per = \"minute\" }]\n\
             [server.timeouts]\nhead_read = \"1s\"",
        )
        .start();
    let big = format!(
        "GET /v1/models HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n",
        "x".repeat(70_000)
    );
    for (raw, status) in [
        (&b"GET /v1/models HTTP/1.1\r\nHost: a, b\r\n\r\n"[..], 400),
        (b"GET /v1/models HTTP/1.1\nHost: a\n\n", 400),
        (big.as_bytes(), 431),
        // Never finished: a 408 after head_read.
        (b"GET /v1/models HTTP/1.1\r\nHost: a\r\n", 408),
    ] {
        let mut c = s.connect();
        c.set_read_timeout(Duration::from_secs(5));
        let _ = c.try_send(raw);
        let resp = c.read_response();
        assert_eq!(resp.status, status, "{}", resp.text());
    }
    assert_rate_limited(&s.get("/v1/models"));
}

/// A head begun and then abandoned (the client closes its side) counts too.
#[test]
fn abandoned_heads_count_against_the_client_ip_limit() {
    let s = Launch::new(MOCK_DEPLOYMENTS)
        .server("client_ip_limits = [{ unit = \"requests\", rate = 3, per = \"minute\" }]")
        .start();
    for raw in [
        &b"GET /v1/models HTTP/1.1\r\nHo"[..],
        b"\r\n\r\n",
        b"POST /v1/chat",
    ] {
        let mut c = s.connect();
        c.set_read_timeout(Duration::from_secs(5));
        let _ = c.try_send(raw);
        c.raw().shutdown(std::net::Shutdown::Write).unwrap();
        assert!(c.closed_within(Duration::from_secs(5)), "{raw:?}");
    }
    assert_rate_limited(&s.get("/v1/models"));
}

#[test]
fn a_request_refused_by_the_client_ip_limit_is_not_waited_for() {
    let s = Launch::new(MOCK_DEPLOYMENTS)
        .server(r#"client_ip_limits = [{ unit = "requests", rate = 1, per = "minute" }]"#)
        .start();
    assert_eq!(
        post_with(
            &s,
            "/v1/chat/completions",
            &[],
            &chat_body(Some("gpt-4o"), false)
        )
        .status,
        200
    );
    // Over the limit with a large body still to come: answered at once, then closed.
    let mut c = s.connect();
    c.send(&head("/v1/chat/completions", "Content-Length: 1000000\r\n"));
    c.set_read_timeout(Duration::from_secs(3));
    let resp = c
        .try_read_response()
        .unwrap_or_else(|e| panic!("no 429 before the body was sent: {e}"));
    assert_rate_limited(&resp);
    assert_eq!(resp.header("connection"), Some("close"));
    assert!(c.closed_within(Duration::from_secs(5)));
}

#[test]
fn a_tokens_client_ip_limit_is_decided_at_admission() {
    let s = Launch::new(MOCK_DEPLOYMENTS)
        .server(r#"client_ip_limits = [{ unit = "tokens", rate = 1000, per = "minute" }]"#)
        .start();
    let mut chat = chat_body(Some("gpt-4o"), false);
    let resp = post_with(&s, "/v1/chat/completions", &[], &chat);
    assert_eq!(num_header(&resp, "x-ratelimit-limit-tokens"), 1000);
    assert!(remaining_tokens(&resp) < 1000);
    // A request that alone needs more than the limit can give is refused at admission,
    // once its body is read …
    chat["max_tokens"] = 5000.into();
    let resp = post_with(&s, "/v1/chat/completions", &[], &chat);
    assert_openai_error(&resp, 429, Some("rate_limit_exceeded"));
    assert_eq!(resp.json()["error"]["type"], "tokens");
    // … and a request that never gets there costs no tokens and is not refused by them.
    for _ in 0..5 {
        assert_openai_error(&post_with(&s, "/nope", &[], &chat), 404, None);
    }
}

// ---------------------------------------------------------------------------------------------
// Refused requests are answered without reading their body

#[test]
fn refused_requests_are_answered_without_waiting_for_their_body() {
    // body_read is long: an answer that waited for the body would miss the read timeout.
    let s = Launch::new(&with_auth()).start();
    let big = "Content-Length: 10000000\r\n";
    let cases: [(&str, String, u16); 4] = [
        ("/nope", format!("api-key: {KEY}\r\n{big}"), 404),
        (
            "/openai/deployments/gpt-4o/chat/completions",
            format!("api-key: {KEY}\r\n{big}"),
            400,
        ),
        (
            "/v1/chat/completions",
            format!("api-key: wrong\r\n{big}"),
            401,
        ),
        (
            "/v1/chat/completions",
            "api-key: wrong\r\nTransfer-Encoding: chunked\r\n".to_string(),
            401,
        ),
    ];
    for (target, headers, status) in cases {
        let mut c = s.connect();
        c.send(&head(target, &headers));
        c.set_read_timeout(Duration::from_secs(3));
        let t0 = Instant::now();
        let resp = c
            .try_read_response()
            .unwrap_or_else(|e| panic!("{target} {headers:?}: no {status} before the body: {e}"));
        assert_eq!(resp.status, status, "{target}: {}", resp.text());
        assert_eq!(resp.header("connection"), Some("close"), "{target}");
        assert!(
            c.closed_within(Duration::from_secs(5)),
            "{target}: still open after its answer"
        );
        assert!(t0.elapsed() < Duration::from_secs(8));
    }
    // A wrong method with a body on its way: 405 and close.
    let mut c = s.connect();
    c.send(b"PUT /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n");
    c.set_read_timeout(Duration::from_secs(3));
    let resp = c.try_read_response().expect("405 before the body");
    assert_eq!(resp.status, 405, "{}", resp.text());
    assert_eq!(resp.header("connection"), Some("close"));
}

#[test]
fn a_refused_request_whose_body_came_whole_keeps_the_connection() {
    let s = Launch::new(&with_auth()).start();
    let mut c = s.connect();
    let body = serde_json::to_vec(&chat_body(Some("gpt-4o"), false)).unwrap();
    let resp = c.request(
        "POST",
        "/nope",
        &[("api-key", KEY), ("Content-Type", "application/json")],
        &body,
    );
    assert_openai_error(&resp, 404, None);
    assert_eq!(resp.header("connection"), None, "{:?}", resp.head.headers);
    let resp = c.request(
        "POST",
        "/v1/chat/completions",
        &[("api-key", "wrong"), ("Content-Type", "application/json")],
        &body,
    );
    assert_openai_error(&resp, 401, Some("invalid_api_key"));
    // The same connection goes on, its framing intact.
    let resp = c.request(
        "POST",
        "/v1/chat/completions",
        &[("api-key", KEY), ("Content-Type", "application/json")],
        &body,
    );
    assert_eq!(resp.status, 200, "{}", resp.text());
}

// ---------------------------------------------------------------------------------------------
// Body deadline and least rate

/// Sends a chat head with `framing` headers (and `Expect: 100-continue` when `expect`), then
/// `piece` every 200 ms; asserts the 408 comes about `body_read` (2 s) after the head, though
/// every read is well inside head_read (10 s) — the deadline is not restarted by reads.
fn slow_body_is_cut_by_body_read(s: &Sluice, framing: &str, piece: &'static [u8], expect: bool) {
    let mut c = s.connect();
    let expect_line = if expect {
        "Expect: 100-continue\r\n"
    } else {
        ""
    };
    c.send(&head(
        "/v1/chat/completions",
        &format!("{framing}{expect_line}"),
    ));
    c.set_read_timeout(Duration::from_secs(8));
    let t0 = Instant::now();
    if expect {
        let cont = c.read_head();
        assert_eq!(cont.status(), 100, "100 Continue first");
    }
    let stop = Arc::new(AtomicBool::new(false));
    let writer = trickle(
        c.wire.stream(),
        piece,
        Duration::from_millis(200),
        1000,
        &stop,
    );
    let resp = c
        .try_read_response()
        .unwrap_or_else(|e| panic!("no 408 after {:?}: {e}", t0.elapsed()));
    let took = t0.elapsed();
    stop.store(true, Ordering::Relaxed);
    assert_body_timeout(&resp);
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(6),
        "408 after {took:?} with body_read = 2s ({framing:?}, expect {expect})"
    );
    assert!(
        c.closed_within(Duration::from_secs(5)),
        "still open after the 408"
    );
    writer.join().unwrap();
}

const SHORT_BODY_READ: &str =
    "[server.limits]\nmin_body_rate = 0\n[server.timeouts]\nbody_read = \"2s\"\nhead_read = \"10s\"";

#[test]
fn a_slow_content_length_body_is_cut_by_body_read() {
    // Both drivers: a timed-out read is cancelled differently on each.
    for driver in ["auto", "epoll"] {
        let s = Launch::new(MOCK_DEPLOYMENTS)
            .server(SHORT_BODY_READ)
            .driver(driver)
            .start();
        slow_body_is_cut_by_body_read(&s, "Content-Length: 1000\r\n", b"a", false);
    }
}

#[test]
fn a_slow_body_after_100_continue_is_cut_by_body_read() {
    let s = Launch::new(MOCK_DEPLOYMENTS)
        .server(SHORT_BODY_READ)
        .start();
    slow_body_is_cut_by_body_read(&s, "Content-Length: 1000\r\n", b"a", true);
}

#[test]
fn a_slow_chunked_body_is_cut_by_body_read() {
    let s = Launch::new(MOCK_DEPLOYMENTS)
        .server(SHORT_BODY_READ)
        .start();
    slow_body_is_cut_by_body_read(&s, "Transfer-Encoding: chunked\r\n", b"1\r\na\r\n", false);
    slow_body_is_cut_by_body_read(&s, "Transfer-Encoding: chunked\r\n", b"1\r\na\r\n", true);
}

#[test]
fn a_body_below_min_body_rate_is_cut_after_the_grace_period() {
    let s = Launch::new(MOCK_DEPLOYMENTS)
        .server(
            "[server.limits]\nmin_body_rate = 1000\n\
             [server.timeouts]\nbody_read = \"60s\"\nbody_rate_grace = \"1s\"",
        )
        .start();
    // 100 bytes a second: within body_read by far, ten times too slow for the rate.
    let mut c = s.connect();
    c.send(&head("/v1/chat/completions", "Content-Length: 100000\r\n"));
    c.set_read_timeout(Duration::from_secs(8));
    let t0 = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = trickle(
        c.wire.stream(),
        b"0123456789",
        Duration::from_millis(100),
        10_000,
        &stop,
    );
    let resp = c
        .try_read_response()
        .unwrap_or_else(|e| panic!("no 408 after {:?}: {e}", t0.elapsed()));
    let took = t0.elapsed();
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    assert_body_timeout(&resp);
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "408 after {took:?} with a 1 s grace, 1000 B/s and body_read 60 s"
    );

    // A body keeping above the rate past the grace period is read whole.
    let mut chat = chat_body(Some("gpt-4o"), false);
    chat["messages"][1]["content"] = "pad ".repeat(1500).into();
    let body = serde_json::to_vec(&chat).unwrap();
    let mut c = s.connect();
    c.send(&head(
        "/v1/chat/completions",
        &format!("Content-Length: {}\r\n", body.len()),
    ));
    // About 4000 bytes a second over 1.5 s.
    let third = body.len() / 3 + 1;
    for piece in body.chunks(third) {
        thread::sleep(Duration::from_millis(500));
        c.send(piece);
    }
    let resp = c.read_response();
    assert_eq!(resp.status, 200, "{}", resp.text());
}

#[test]
fn many_slow_bodies_are_all_cut_by_the_deadline() {
    let s = Launch::new(MOCK_DEPLOYMENTS)
        .server(SHORT_BODY_READ)
        .start();
    let t0 = Instant::now();
    let mut conns: Vec<Client> = (0..50)
        .map(|_| {
            let mut c = s.connect();
            c.send(&head("/v1/chat/completions", "Content-Length: 1000\r\n"));
            c
        })
        .collect();
    // One thread trickles a byte a connection every 200 ms.
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<TcpStream> = conns
        .iter_mut()
        .map(|c| c.wire.stream().try_clone().unwrap())
        .collect();
    let writer = {
        let stop = stop.clone();
        thread::spawn(move || {
            let mut writers = writers;
            for _ in 0..100 {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                for w in &mut writers {
                    let _ = w.write_all(b"a");
                }
                thread::sleep(Duration::from_millis(200));
            }
        })
    };
    let mut cut = 0;
    for (i, c) in conns.iter_mut().enumerate() {
        let left = (t0 + Duration::from_secs(10)).saturating_duration_since(Instant::now());
        c.set_read_timeout(left.max(Duration::from_millis(1)));
        let resp = c
            .try_read_response()
            .unwrap_or_else(|e| panic!("connection {i}: no 408 after {:?}: {e}", t0.elapsed()));
        assert_body_timeout(&resp);
        cut += 1;
    }
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    assert_eq!(cut, 50);
}

// ---------------------------------------------------------------------------------------------
// The first head of a connection

#[test]
fn a_new_connection_that_sends_nothing_is_closed_after_head_read() {
    let s = Launch::new(MOCK_DEPLOYMENTS)
        .server("[server.timeouts]\nhead_read = \"1s\"\nkeepalive_idle = \"60s\"")
        .start();
    let mut c = s.connect();
    let t0 = Instant::now();
    assert!(
        c.closed_within(Duration::from_secs(4)),
        "a silent new connection still open 4 s later with head_read = 1s"
    );
    assert!(
        t0.elapsed() >= Duration::from_millis(800),
        "closed after only {:?}",
        t0.elapsed()
    );
    // A kept-alive connection waits keepalive_idle between requests, not head_read.
    let mut c = s.connect();
    assert_eq!(c.request("GET", "/v1/models", &[], b"").status, 200);
    assert!(
        !c.closed_within(Duration::from_millis(2500)),
        "idle keep-alive connection closed before keepalive_idle"
    );
    assert_eq!(c.request("GET", "/v1/models", &[], b"").status, 200);
}
