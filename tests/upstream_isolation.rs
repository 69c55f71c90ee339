//! Whole-process tests that one upstream exchange never leaks into another and that a
//! backend's answer reaches the client only as faithfully as Sluice can pass it on:
//!
//! - a pooled upstream connection is reused only when it is provably clean (late bytes after
//!   an answer, or a close while idle, discard it), under both I/O drivers;
//! - a request whose bytes went out is never sent again (no resend on a new connection, no
//!   failover to another backend): the client gets a 502;
//! - an answer Sluice cannot pass on faithfully (a transfer coding besides `chunked`, a 101,
//!   chunked framing that breaks, a Content-Length body that ends early) is a 502 before the
//!   head, or a connection closed without a clean end after it.
//!
//! Backends are scripted over std TcpListener on 127.0.0.1 and write exactly the bytes named.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use serde_json::{json, Value};
use support::*;

/// How long a scripted backend waits after its answer before it misbehaves.
const LATE: Duration = Duration::from_millis(300);
/// How long a test waits for that misbehaviour to have reached Sluice's socket.
const AFTER_LATE: Duration = Duration::from_millis(1000);

/// The unsolicited extra response of the security report.
const POISONED: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nPOISONED";

/// A chat request whose only message is `marker`, so the backend can name it in its answer.
fn marked(marker: &str) -> Value {
    json!({"model": "chat", "messages": [{"role": "user", "content": marker}]})
}

/// The marker a scripted backend received.
fn marker_of(rec: &Recorded) -> String {
    rec.json()["messages"][0]["content"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// A complete keep-alive answer naming `marker` (Content-Length framed).
fn answer_naming(marker: &str) -> Vec<u8> {
    let body = serde_json::to_vec(&json!({
        "id": "chatcmpl-iso", "object": "chat.completion", "created": 1, "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": marker},
                     "finish_reason": "stop"}],
    }))
    .unwrap();
    let mut out = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(&body);
    out
}

/// Sends `marker` on a new client connection and asserts the answer is its own: status 200,
/// the backend's answer naming this marker and no other, nothing of the poisoned response.
fn assert_own_answer(s: &Sluice, marker: &str, others: &[&str]) {
    let resp = s.post_json("/v1/chat/completions", &marked(marker));
    let text = resp.text();
    assert_eq!(resp.status, 200, "{marker}: {text}");
    assert!(!text.contains("POISONED"), "{marker} got: {text}");
    let v = resp.json();
    assert_eq!(
        v["choices"][0]["message"]["content"], marker,
        "{marker} got another request's answer: {text}"
    );
    for other in others {
        assert!(
            !text.contains(other),
            "{marker} got {other}'s answer: {text}"
        );
    }
}

fn launch(up: &Upstream, driver: &str) -> Sluice {
    Launch::new(&openai_backend_body(&up.url(), "chat"))
        .driver(driver)
        .start()
}

// ---------------------------------------------------------------------------------------------
// A pooled connection is reused only when clean

/// The report's case: a 200 with a Content-Length body, then 300 ms later a second,
/// unsolicited response on the same connection. Neither the next client nor the one after
/// it may see it (or each other's answers): every answer's connection is discarded.
fn late_second_response_reaches_no_client(driver: &str) {
    let up = Upstream::start(|rec, s| {
        let _ = s.write_all(&answer_naming(&marker_of(rec)));
        let _ = s.flush();
        thread::sleep(LATE);
        let _ = s.write_all(POISONED);
        After::KeepAlive
    });
    let s = launch(&up, driver);
    let markers = ["req-one", "req-two", "req-three"];
    for (i, marker) in markers.iter().enumerate() {
        let others: Vec<&str> = markers.iter().copied().filter(|m| m != marker).collect();
        assert_own_answer(&s, marker, &others);
        if i + 1 < markers.len() {
            thread::sleep(AFTER_LATE);
        }
    }
    assert_eq!(up.request_count(), 3);
    assert_eq!(
        up.connections(),
        3,
        "a connection with a late response on it was reused"
    );
}

#[test]
fn late_second_response_reaches_no_client_io_uring() {
    late_second_response_reaches_no_client("io-uring");
}

#[test]
fn late_second_response_reaches_no_client_epoll() {
    late_second_response_reaches_no_client("epoll");
}

/// The race the check before reuse cannot close: the backend's unsolicited response is
/// still on its way when the next request takes the connection, and is read as that
/// request's answer (HTTP/1.1 gives answers no request id). Once the backend is caught —
/// here by the real answer arriving after it — it is distrusted and gets no pooled
/// connection: every later request has a connection of its own and its own answer.
#[test]
fn a_backend_caught_sending_unsolicited_bytes_loses_connection_reuse() {
    let up = Upstream::start(|rec, s| {
        let _ = s.write_all(&answer_naming(&marker_of(rec)));
        let _ = s.flush();
        thread::sleep(Duration::from_millis(50));
        let _ = s.write_all(POISONED);
        After::KeepAlive
    });
    let s = Launch::new(&openai_backend_body(&up.url(), "chat"))
        .workers(1)
        .start();
    assert_own_answer(&s, "first", &[]);
    // Right away, before the late response lands: this one may be answered by it.
    let raced = s.post_json("/v1/chat/completions", &marked("raced"));
    assert!(
        raced.status == 200 || raced.status == 502,
        "{}",
        raced.text()
    );
    // Once the real answer has landed behind it, the next request finds the backend out.
    thread::sleep(Duration::from_millis(300));
    assert_own_answer(&s, "detector", &["first", "raced"]);
    // Back to back, each as fast as the last: without distrust each would take the previous
    // one's connection before its late response lands.
    for i in 0..8 {
        let marker = format!("later-{i}");
        assert_own_answer(&s, &marker, &["first", "raced", "detector"]);
    }
    assert!(
        s.wait_log("not reusing its connections", Duration::from_secs(5)),
        "{}",
        s.log()
    );
    assert_eq!(
        up.connections(),
        up.request_count() - 1,
        "after the first reuse, no connection of a distrusted backend is reused"
    );
}

/// A backend that answers its first request twice, then every request once but 20 ms
/// late, desynchronises its connection: each later request on it is answered with the
/// previous one's answer for as long as requests follow faster than the backend answers (no
/// check before reuse can see it). Upstream connections are never shared between tenants,
/// so that chain stays within the subscription that met it: team B, interleaved back to
/// back with team A on the same worker and backend, always gets its own answers.
#[test]
fn a_desynchronised_connection_never_crosses_tenants() {
    let first = Arc::new(Mutex::new(true));
    let up = Upstream::start(move |rec, s| {
        let marker = marker_of(rec);
        let twice = std::mem::replace(&mut *first.lock().unwrap(), false);
        thread::sleep(Duration::from_millis(20));
        let _ = s.write_all(&answer_naming(&marker));
        if twice {
            let _ = s.flush();
            thread::sleep(Duration::from_millis(5));
            let _ = s.write_all(&answer_naming("DUPLICATE"));
        }
        After::KeepAlive
    });
    let mut body = openai_backend_body(&up.url(), "chat");
    body.push_str("\n[[product]]\nname = \"p\"\n");
    for (team, key) in [
        ("team-a", "key-team-a-0123456789"),
        ("team-b", "key-team-b-0123456789"),
    ] {
        body.push_str(&format!(
            "\n[[subscription]]\nname = \"{team}\"\nproduct = \"p\"\nkeys = [\"{}\"]\n",
            key_hash(key)
        ));
    }
    let s = Launch::new(&body).workers(1).start();
    let ask = |key: &str, marker: &str| {
        let bytes = serde_json::to_vec(&marked(marker)).unwrap();
        s.request(
            "POST",
            "/v1/chat/completions",
            &[("Content-Type", "application/json"), ("api-key", key)],
            &bytes,
        )
    };
    let answer = |resp: &Response| resp.json()["choices"][0]["message"]["content"].clone();
    // Team A meets the duplicate; then both teams, back to back.
    assert_eq!(answer(&ask("key-team-a-0123456789", "a-0")), "a-0");
    for i in 1..12 {
        let a = ask("key-team-a-0123456789", &format!("a-{i}"));
        let text = a.text();
        assert!(!text.contains("b-"), "team A got team B's answer: {text}");
        let marker = format!("b-{i}");
        let b = ask("key-team-b-0123456789", &marker);
        assert_eq!(b.status, 200, "{}", b.text());
        assert_eq!(answer(&b), marker.as_str(), "team B got: {}", b.text());
    }
}

/// The same after answers without a body (204, 304, a 200 with Content-Length 0): the first
/// request gets the empty answer, then the late response follows; the next two clients get
/// their own answers.
fn late_response_after_an_empty_answer(driver: &str) {
    for empty in [
        &b"HTTP/1.1 204 No Content\r\n\r\n"[..],
        b"HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    ] {
        let up = Upstream::start(move |rec, s| {
            let marker = marker_of(rec);
            if marker == "empty-one" {
                let _ = s.write_all(empty);
                let _ = s.flush();
                thread::sleep(LATE);
                let _ = s.write_all(POISONED);
            } else {
                let _ = s.write_all(&answer_naming(&marker));
            }
            After::KeepAlive
        });
        let s = launch(&up, driver);
        let status: u16 = String::from_utf8_lossy(&empty[9..12]).parse().unwrap();
        let resp = s.post_json("/v1/chat/completions", &marked("empty-one"));
        assert_eq!(resp.status, status, "{}", resp.text());
        assert!(resp.body.is_empty(), "{}", resp.text());
        thread::sleep(AFTER_LATE);
        assert_own_answer(&s, "second", &["empty-one"]);
        assert_own_answer(&s, "third", &["second"]);
        assert_eq!(up.request_count(), 3, "status {status}");
        // The empty answer's connection was discarded, and the backend that wrote a response
        // nobody asked for gets no pooled connection any more: three connections.
        assert_eq!(up.connections(), 3, "status {status}");
    }
}

#[test]
fn late_response_after_an_empty_answer_io_uring() {
    late_response_after_an_empty_answer("io-uring");
}

#[test]
fn late_response_after_an_empty_answer_epoll() {
    late_response_after_an_empty_answer("epoll");
}

/// A backend that closes an idle keep-alive connection (its own idle timeout) 300 ms after
/// answering: the next request goes out on a new connection and succeeds, not a 502.
fn late_close_of_an_idle_connection_is_not_the_clients_problem(driver: &str) {
    let up = Upstream::start(|rec, s| {
        let _ = s.write_all(&answer_naming(&marker_of(rec)));
        let _ = s.flush();
        thread::sleep(LATE);
        After::Close
    });
    let s = launch(&up, driver);
    assert_own_answer(&s, "before-close", &[]);
    thread::sleep(AFTER_LATE);
    assert_own_answer(&s, "after-close", &["before-close"]);
    assert_eq!(up.request_count(), 2);
    assert_eq!(up.connections(), 2);
}

#[test]
fn late_close_of_an_idle_connection_is_not_the_clients_problem_io_uring() {
    late_close_of_an_idle_connection_is_not_the_clients_problem("io-uring");
}

#[test]
fn late_close_of_an_idle_connection_is_not_the_clients_problem_epoll() {
    late_close_of_an_idle_connection_is_not_the_clients_problem("epoll");
}

/// A clean keep-alive answer's connection is still reused (the check discards only dirty
/// ones), on both drivers.
#[test]
fn clean_connections_are_still_reused() {
    for driver in ["io-uring", "epoll"] {
        let up = Upstream::start(|rec, s| {
            let _ = s.write_all(&answer_naming(&marker_of(rec)));
            After::KeepAlive
        });
        let s = launch(&up, driver);
        for marker in ["a", "b", "c", "d"] {
            assert_own_answer(&s, marker, &[]);
        }
        assert_eq!(up.connections(), 1, "{driver}");
    }
}

// ---------------------------------------------------------------------------------------------
// A request that went out is never sent again

/// Two backends in priority order, both scripted alike: on each connection, answer the
/// first `answered` requests, then read the next one in full and close without answering.
/// Returns the backends (primary first) and the Sluice in front of them.
fn read_then_close_backends(answered: usize) -> (Upstream, Upstream, Sluice) {
    let script = move || {
        let seen: Arc<Mutex<HashMap<usize, usize>>> = Arc::default();
        Upstream::start(move |rec, s| {
            let n = {
                let mut seen = seen.lock().unwrap();
                let n = seen.entry(rec.conn).or_default();
                *n += 1;
                *n
            };
            if n > answered {
                return After::Close;
            }
            let _ = s.write_all(&answer_naming(&marker_of(rec)));
            After::KeepAlive
        })
    };
    let (primary, fallback) = (script(), script());
    let body = format!(
        r#"
[[backend]]
name = "primary"
kind = "openai"
url = "{}"

[[backend]]
name = "fallback"
kind = "openai"
url = "{}"

[[deployment]]
name = "chat"
backends = [{{ backend = "primary" }}, {{ backend = "fallback", priority = 1 }}]
"#,
        primary.url(),
        fallback.url()
    );
    let s = Launch::new(&body).start();
    (primary, fallback, s)
}

/// How many times `up` received a request carrying `marker`, over all its connections.
fn times_seen(up: &Upstream, marker: &str) -> usize {
    up.requests()
        .iter()
        .filter(|r| marker_of(r) == marker)
        .count()
}

/// The report's case: a POST on a pooled keep-alive connection is read in full by the
/// backend, which then closes without answering. The POST ran once; it must not run again
/// on a new connection or on the fallback backend.
#[test]
fn a_post_read_then_dropped_on_a_pooled_connection_is_not_resent() {
    let (primary, fallback, s) = read_then_close_backends(1);
    assert_own_answer(&s, "warm-up", &[]);
    let resp = s.post_json("/v1/chat/completions", &marked("paid-call"));
    assert_openai_error(&resp, 502, Some("upstream_protocol_error"));
    assert_eq!(times_seen(&primary, "paid-call"), 1, "the POST was resent");
    assert_eq!(
        fallback.request_count(),
        0,
        "the POST failed over after it was sent"
    );
    assert_eq!(primary.connections(), 1, "a second connection was opened");
}

/// The same on a new connection: the backend reads the POST and closes. No resend, no
/// failover; a 502.
#[test]
fn a_post_read_then_dropped_on_a_new_connection_is_not_resent() {
    let (primary, fallback, s) = read_then_close_backends(0);
    let resp = s.post_json("/v1/chat/completions", &marked("paid-call"));
    assert_openai_error(&resp, 502, Some("upstream_protocol_error"));
    assert_eq!(times_seen(&primary, "paid-call"), 1);
    assert_eq!(fallback.request_count(), 0);
    assert_eq!(primary.connections(), 1);
}

/// A refused connection is still failed over: nothing of the request left Sluice.
#[test]
fn a_refused_connection_still_fails_over() {
    let fallback = Upstream::start(|rec, s| {
        let _ = s.write_all(&answer_naming(&marker_of(rec)));
        After::KeepAlive
    });
    let body = format!(
        r#"
[[backend]]
name = "down"
kind = "openai"
url = "http://127.0.0.1:{}"

[[backend]]
name = "fallback"
kind = "openai"
url = "{}"

[[deployment]]
name = "chat"
backends = [{{ backend = "down" }}, {{ backend = "fallback", priority = 1 }}]
"#,
        closed_port(),
        fallback.url()
    );
    let s = Launch::new(&body).start();
    assert_own_answer(&s, "via-fallback", &[]);
    assert_eq!(times_seen(&fallback, "via-fallback"), 1);
}

// ---------------------------------------------------------------------------------------------
// Answers Sluice cannot pass on faithfully

/// Raw answers, each refused before its head reaches the client, by deployment name.
const UNFAITHFUL_HEADS: &[(&str, &[u8])] = &[
    // The report's case: gzip under chunked, a gzip member as the chunk.
    (
        "gzip-chunked",
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: gzip, chunked\r\n\r\n\
          a\r\n\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03\r\n0\r\n\r\n",
    ),
    (
        "chunked-twice",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n5\r\nUPSTR\r\n0\r\n\r\n",
    ),
    (
        "chunked-twice-fields",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n\
          5\r\nUPSTR\r\n0\r\n\r\n",
    ),
    (
        "identity",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: identity\r\n\r\nUPSTREAM",
    ),
    (
        "deflate",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: deflate\r\n\r\nUPSTREAM",
    ),
    (
        "http10-chunked",
        b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nUPSTR\r\n0\r\n\r\n",
    ),
    (
        "switching-protocols",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\
          UPSTREAM",
    ),
    // Nine interim answers: past the limit of eight, a backend stalling with 1xx.
    (
        "too-many-interim",
        b"HTTP/1.1 103 Early Hints\r\n\r\nHTTP/1.1 103 Early Hints\r\n\r\n\
          HTTP/1.1 103 Early Hints\r\n\r\nHTTP/1.1 103 Early Hints\r\n\r\n\
          HTTP/1.1 103 Early Hints\r\n\r\nHTTP/1.1 103 Early Hints\r\n\r\n\
          HTTP/1.1 103 Early Hints\r\n\r\nHTTP/1.1 103 Early Hints\r\n\r\n\
          HTTP/1.1 103 Early Hints\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nUPSTREAM",
    ),
    // Chunked framing that is invalid within the bytes that came with the head: nothing
    // reached the client yet, so it still gets a 502.
    (
        "chunked-broken-at-once",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nUPSTR\r\nzz\r\n0\r\n\r\n",
    ),
    (
        "length-and-chunked",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n\
          5\r\nUPSTR\r\n0\r\n\r\n",
    ),
];

/// One deployment and backend per case, all on `url`, so a cool-down after one case's 502
/// does not touch the next.
fn per_case_body(url: &str, cases: &[&str]) -> String {
    let mut body = String::new();
    for name in cases {
        body.push_str(&format!(
            "[[backend]]\nname = \"b-{name}\"\nkind = \"openai\"\nurl = \"{url}\"\n\n\
             [[deployment]]\nname = \"{name}\"\nbackends = [{{ backend = \"b-{name}\" }}]\n\n"
        ));
    }
    body
}

/// The backend's model (the deployment name: openai backends without `model` keep it).
fn model_of(rec: &Recorded) -> String {
    rec.json()["model"].as_str().unwrap_or_default().to_string()
}

#[test]
fn unfaithful_framing_is_a_502_with_nothing_of_the_backends_bytes() {
    let up = Upstream::start(|rec, s| {
        let model = model_of(rec);
        if let Some((_, raw)) = UNFAITHFUL_HEADS.iter().find(|(n, _)| *n == model) {
            let _ = s.write_all(raw);
        }
        After::Close
    });
    let names: Vec<&str> = UNFAITHFUL_HEADS.iter().map(|(n, _)| *n).collect();
    let s = Launch::new(&per_case_body(&up.url(), &names)).start();
    for name in &names {
        let mut c = s.connect();
        let resp = c.post_json(
            "/v1/chat/completions",
            &json!({"model": name, "messages": [{"role": "user", "content": "hi"}]}),
        );
        assert_openai_error(&resp, 502, Some("upstream_protocol_error"));
        assert_request_id(&resp);
        assert!(
            !resp.body.windows(2).any(|w| w == b"\x1f\x8b")
                && !resp.text().contains("UPSTR")
                && resp
                    .header("transfer-encoding")
                    .is_none_or(|v| v == "chunked")
                && resp.header("upgrade").is_none(),
            "{name}: {:?} {}",
            resp.head,
            resp.text()
        );
        // Sluice's own 502 is well framed: the client connection carries on.
        assert_eq!(
            c.request("GET", "/v1/models", &[], b"").status,
            200,
            "{name}"
        );
    }
    assert_eq!(up.request_count(), names.len(), "no case was resent");
}

/// Interim answers other than 101 are skipped, and the final answer is relayed whole.
#[test]
fn interim_answers_are_skipped() {
    let up = Upstream::start(|rec, s| {
        let _ = s.write_all(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 102 Processing\r\n\r\n\
              HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n",
        );
        let _ = s.write_all(&answer_naming(&marker_of(rec)));
        After::KeepAlive
    });
    let s = launch(&up, "io-uring");
    assert_own_answer(&s, "after-interim", &[]);
    assert_own_answer(&s, "again", &[]);
    assert_eq!(up.connections(), 1);
}

/// Reads everything the client connection still yields until it closes: the bytes, and
/// whether it ended with a reset (`true`) or a FIN (`false`).
fn read_to_close(stream: &mut TcpStream) -> (Vec<u8>, bool) {
    stream.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return (all, false),
            Ok(n) => all.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return (all, true),
            Err(e) => panic!(
                "reading until close: {e} after {:?}",
                String::from_utf8_lossy(&all)
            ),
        }
    }
}

/// A chunked answer whose framing breaks after its first chunk: the head and first chunk,
/// then (written later, after Sluice relayed those) the broken rest.
const BROKEN_CHUNKED: (&[u8], &[u8]) = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n\
      5\r\nhello\r\n",
    b"zz\r\nnot a chunk\r\n0\r\n\r\n",
);

/// Writes [`BROKEN_CHUNKED`] in its two parts, 200 ms apart.
fn write_broken_chunked(s: &mut TcpStream) {
    let _ = s.write_all(BROKEN_CHUNKED.0);
    let _ = s.flush();
    thread::sleep(Duration::from_millis(200));
    let _ = s.write_all(BROKEN_CHUNKED.1);
}

/// A Content-Length answer cut short: 100 bytes announced, 10 sent, then the backend closes.
const SHORT_LENGTH: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 100\r\n\r\n0123456789";

/// An HTTP/1.1 client of an answer that breaks off after its head: it gets what came, then a
/// close — never a last chunk, never padding up to the Content-Length.
#[test]
fn a_body_that_breaks_off_ends_without_a_clean_end() {
    let up = Upstream::start(|rec, s| {
        if model_of(rec) == "broken-chunked" {
            write_broken_chunked(s);
        } else {
            let _ = s.write_all(SHORT_LENGTH);
        }
        After::Close
    });
    let s = Launch::new(&per_case_body(
        &up.url(),
        &["broken-chunked", "short-length"],
    ))
    .start();
    let request = |name: &str| {
        let body = serde_json::to_vec(&json!({"model": name, "messages": []})).unwrap();
        request_bytes(
            "POST",
            "/v1/chat/completions",
            &[("Content-Type", "application/json")],
            &body,
        )
    };

    let mut c = s.connect();
    c.send(&request("broken-chunked"));
    let head = c.read_head();
    assert_eq!(head.status(), 200);
    assert_eq!(
        head.header("transfer-encoding"),
        Some("chunked"),
        "{head:?}"
    );
    let mut rest = c.wire.buffered().to_vec();
    rest.extend(read_to_close(c.wire.stream()).0);
    assert_eq!(
        rest,
        b"5\r\nhello\r\n",
        "{:?}",
        String::from_utf8_lossy(&rest)
    );

    let mut c = s.connect();
    c.send(&request("short-length"));
    let head = c.read_head();
    assert_eq!(head.status(), 200);
    assert_eq!(head.header("content-length"), Some("100"), "{head:?}");
    let mut rest = c.wire.buffered().to_vec();
    rest.extend(read_to_close(c.wire.stream()).0);
    assert_eq!(rest, b"0123456789", "{:?}", String::from_utf8_lossy(&rest));
}

/// An HTTP/1.0 client's body is close-delimited, so a FIN would make a broken answer look
/// whole: it gets a reset instead.
#[test]
fn a_broken_body_to_an_http10_client_ends_in_a_reset() {
    let up = Upstream::start(|_, s| {
        write_broken_chunked(s);
        After::Close
    });
    let s = launch(&up, "io-uring");
    let body = serde_json::to_vec(&marked("old-client")).unwrap();
    let mut raw = format!(
        "POST /v1/chat/completions HTTP/1.0\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    raw.extend_from_slice(&body);
    let mut c = s.connect();
    c.send(&raw);
    let head = c.read_head();
    assert_eq!(head.status(), 200);
    assert!(head.header("content-length").is_none(), "{head:?}");
    let mut rest = c.wire.buffered().to_vec();
    let (more, reset) = read_to_close(c.wire.stream());
    rest.extend(more);
    assert!(
        reset,
        "ended with a FIN after {:?}",
        String::from_utf8_lossy(&rest)
    );
    // What arrived before the reset, if the reset did not discard it.
    assert!(
        b"hello".starts_with(&rest),
        "{:?}",
        String::from_utf8_lossy(&rest)
    );
}
