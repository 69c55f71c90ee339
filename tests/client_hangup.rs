//! Whole-process tests of a client that leaves while Sluice waits on its backend: the
//! hang-up is noticed within about a second (not when the backend finally answers), the
//! upstream connection is closed — cancelling the request there — and the request is settled
//! as truncated: its reservation stands, never the full usage of an answer nobody received.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::*;

const KEY_A: &str = "test-key-hangup-team-a";
const KEY_B: &str = "test-key-hangup-team-b";
const QUOTA: i64 = 1_000_000;

/// How long the scripted backend takes before it would answer (or send its next event).
const BACKEND_DELAY: Duration = Duration::from_secs(6);
/// How long the client waits before it gives up.
const CLIENT_PATIENCE: Duration = Duration::from_millis(500);
/// The usage the backend reports for an answer it completes.
const FULL_USAGE: i64 = 4_321;

/// What the slow backend does for a request marked `x-test-slow`.
#[derive(Clone, Copy)]
enum Slow {
    /// Nothing at all until [`BACKEND_DELAY`].
    BeforeHead,
    /// The head and one event of a stream, then nothing until [`BACKEND_DELAY`].
    MidStream,
}

/// A backend that answers at once (usage [`FULL_USAGE`]) except requests with `x-test-slow`,
/// for which it waits up to [`BACKEND_DELAY`] for its connection to close. It reports on
/// `seen` how long after the request the close came (`None`: it never came, and the backend
/// answered in full).
fn slow_backend(slow: Slow, seen: Sender<Option<Duration>>) -> Upstream {
    let seen = Mutex::new(seen);
    Upstream::start(move |r, s: &mut TcpStream| {
        let mut answer = upstream_chat_answer("m");
        answer["usage"] = json!({"prompt_tokens": 1, "completion_tokens": FULL_USAGE - 1, "total_tokens": FULL_USAGE});
        let bytes = serde_json::to_vec(&answer).unwrap();
        if !r.head.has("x-test-slow") {
            respond(s, 200, &[("content-type", "application/json")], &bytes);
            return After::KeepAlive;
        }
        let start = Instant::now();
        if let Slow::MidStream = slow {
            let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
                        transfer-encoding: chunked\r\n\r\n";
            let _ = s.write_all(head.as_bytes());
            let _ = write_chunk(s, sse_chunk("Hello").as_bytes());
        }
        let closed = waits_for_close(s, BACKEND_DELAY).then(|| start.elapsed());
        seen.lock().unwrap().send(closed).unwrap();
        if closed.is_none() {
            respond(s, 200, &[("content-type", "application/json")], &bytes);
        }
        After::Close
    })
}

/// Whether the peer closes (or resets) `s` within `within`; any bytes it sends are read
/// and ignored.
fn waits_for_close(s: &mut TcpStream, within: Duration) -> bool {
    let until = Instant::now() + within;
    let mut buf = [0u8; 1024];
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        s.set_read_timeout(Some(left)).unwrap();
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return false
            }
            Err(_) => return true,
        }
    }
}

fn start(up: &Upstream, driver: &str) -> Sluice {
    let mut body = format!(
        "{}tokens = {{ estimator = \"heuristic\" }}\n",
        openai_backend_body(&up.url(), "gpt-4o")
    );
    body.push_str(&product(
        "p",
        &format!(r#"limits = [{{ unit = "tokens", quota = {QUOTA}, per = "day" }}]"#),
    ));
    body.push_str(&subscription("team-a", "p", &[KEY_A]));
    body.push_str(&subscription("team-b", "p", &[KEY_B]));
    Launch::new(&body).driver(driver).start()
}

fn chat_request(key: &str, stream: bool, slow: bool) -> Vec<u8> {
    let body = serde_json::to_vec(&chat_body(Some("gpt-4o"), stream)).unwrap();
    let mut req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\n\
         api-key: {key}\r\ncontent-length: {}\r\n",
        body.len()
    );
    if slow {
        req.push_str("x-test-slow: 1\r\n");
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(&body);
    bytes
}

/// What a request that left cost team A: the difference between team A's and team B's
/// `remaining` on an identical request after it (B's equals A's before the abandoned one).
fn cost_of_abandoned(s: &Sluice) -> (i64, i64) {
    let ra = remaining_tokens(&chat_as(s, KEY_A, &chat_body(Some("gpt-4o"), false)));
    let rb = remaining_tokens(&chat_as(s, KEY_B, &chat_body(Some("gpt-4o"), false)));
    let reservation = QUOTA - rb;
    (rb - ra, reservation)
}

/// Waits for the log line of the abandoned request's charge. It is written in the same
/// step as the booking (no wait between them, and one worker), so the next request sees it.
fn wait_booked(s: &Sluice) {
    assert!(
        s.wait_log(
            "client went away before the answer ended: charged the estimate",
            Duration::from_secs(5)
        ),
        "{}",
        s.log()
    );
}

/// Asserts the backend saw its connection close well before it would have answered: the
/// upstream request was cancelled (`what` says what ran on otherwise).
fn assert_cancelled_early(seen: &Receiver<Option<Duration>>, driver: &str, what: &str) {
    let closed = wait_seen(seen).unwrap_or_else(|| panic!("{driver}: {what}"));
    assert!(
        closed < BACKEND_DELAY - Duration::from_secs(2),
        "{driver}: the upstream connection closed only after {closed:?}"
    );
}

fn wait_seen(seen: &Receiver<Option<Duration>>) -> Option<Duration> {
    seen.recv_timeout(BACKEND_DELAY + Duration::from_secs(5))
        .expect("the backend reported on the abandoned request")
}

/// A client that sends a request and closes its connection after 0.5 s, while the backend
/// has not begun to answer: Sluice closes the upstream connection long before the backend
/// would have answered, and charges the reservation — not the answer's full usage.
#[test]
fn a_client_that_leaves_before_the_answer_cancels_the_upstream_request() {
    for driver in ["io-uring", "epoll"] {
        let (tx, seen) = channel();
        let up = slow_backend(Slow::BeforeHead, tx);
        let s = start(&up, driver);
        let mut c = s.connect();
        c.send(&chat_request(KEY_A, false, true));
        thread::sleep(CLIENT_PATIENCE);
        drop(c);
        assert_cancelled_early(
            &seen,
            driver,
            "the upstream request ran on to its answer after the client left",
        );
        wait_booked(&s);
        let (cost, reservation) = cost_of_abandoned(&s);
        assert_eq!(
            cost, reservation,
            "{driver}: the abandoned request is charged its reservation"
        );
    }
}

/// A streaming client that read the head and the first event, then reset its connection
/// (closing with unread bytes sends a reset, not a FIN) while the backend paused: Sluice
/// cancels the upstream request and keeps the reservation (the stream was cut short).
#[test]
fn a_client_that_leaves_mid_stream_cancels_the_upstream_request() {
    for driver in ["io-uring", "epoll"] {
        let (tx, seen) = channel();
        let up = slow_backend(Slow::MidStream, tx);
        let s = start(&up, driver);
        let mut c = s.connect();
        c.send(&chat_request(KEY_A, true, true));
        let head = c.read_head();
        assert_eq!(head.status(), 200);
        thread::sleep(CLIENT_PATIENCE);
        // The first event is still unread: this close is a reset.
        drop(c);
        assert_cancelled_early(
            &seen,
            driver,
            "the upstream stream ran on after the client left",
        );
        wait_booked(&s);
        let (cost, reservation) = cost_of_abandoned(&s);
        assert_eq!(
            cost, reservation,
            "{driver}: the cut stream keeps its reservation"
        );
    }
}

/// A client that half-closes its side after the request (a FIN, still reading) is taken
/// for gone, as nginx does by default: there is no way to tell it from a client that left.
#[test]
fn a_half_closed_client_counts_as_gone() {
    let (tx, seen) = channel();
    let up = slow_backend(Slow::BeforeHead, tx);
    let s = start(&up, "io-uring");
    let mut c = s.connect();
    c.send(&chat_request(KEY_A, false, true));
    c.raw().shutdown(std::net::Shutdown::Write).unwrap();
    assert!(
        wait_seen(&seen).is_some(),
        "the upstream request was cancelled"
    );
    assert!(c.closed_within(Duration::from_secs(5)));
}

/// A client that pipelines its next request while the first waits on a slow backend has
/// bytes waiting, not a closed connection: it is not taken for gone, and both answers come.
#[test]
fn a_pipelining_client_is_not_taken_for_gone() {
    let up = Upstream::start(|_, s: &mut TcpStream| {
        // Longer than the hang-up check, so the client is looked at while it waits.
        thread::sleep(Duration::from_millis(1_500));
        let bytes = serde_json::to_vec(&upstream_chat_answer("m")).unwrap();
        respond(s, 200, &[("content-type", "application/json")], &bytes);
        After::KeepAlive
    });
    let s = start(&up, "io-uring");
    let mut c = s.connect();
    let mut both = chat_request(KEY_A, false, false);
    both.extend_from_slice(&chat_request(KEY_A, false, false));
    c.send(&both);
    for _ in 0..2 {
        let resp = c.read_response();
        assert_eq!(resp.status, 200);
        let v: Value = serde_json::from_slice(&resp.body).unwrap();
        assert_eq!(v["object"], "chat.completion");
    }
    assert_eq!(up.request_count(), 2);
}

/// The built-in mock backend's latency is a wait on a backend too: a client that leaves
/// during it is noticed then, not when the latency has run out.
#[test]
fn a_client_that_leaves_during_mock_latency_is_noticed() {
    let body = r#"
[[backend]]
name = "slow-mock"
kind = "mock"
latency = "8s"

[[deployment]]
name = "gpt-4o"
backends = [{ backend = "slow-mock" }]
"#;
    let s = Launch::new(body).start();
    let mut c = s.connect();
    c.send(&chat_request("unused", false, false));
    thread::sleep(CLIENT_PATIENCE);
    drop(c);
    assert!(
        s.wait_log("client went away", Duration::from_secs(4)),
        "the hang-up was noticed during the latency"
    );
}

/// A stream whose usage chunk has passed when the client leaves (the backend then pauses
/// before `[DONE]`): the usage read stands — the backend did that work — not the
/// reservation.
#[test]
fn a_usage_already_read_stands_when_the_client_leaves() {
    let (tx, seen) = channel();
    let seen_tx = Mutex::new(tx);
    let up = Upstream::start(move |r, s: &mut TcpStream| {
        let mut answer = upstream_chat_answer("m");
        answer["usage"] = json!({"prompt_tokens": 1, "completion_tokens": FULL_USAGE - 1, "total_tokens": FULL_USAGE});
        if !r.head.has("x-test-slow") {
            let bytes = serde_json::to_vec(&answer).unwrap();
            respond(s, 200, &[("content-type", "application/json")], &bytes);
            return After::KeepAlive;
        }
        let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
                    transfer-encoding: chunked\r\n\r\n";
        let _ = s.write_all(head.as_bytes());
        let _ = write_chunk(s, sse_chunk("Hello").as_bytes());
        let usage = json!({
            "id": "chatcmpl-stream", "object": "chat.completion.chunk", "created": 1,
            "model": "m", "choices": [],
            "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
        });
        let _ = write_chunk(s, format!("data: {usage}\n\n").as_bytes());
        let start = Instant::now();
        let closed = waits_for_close(s, BACKEND_DELAY).then(|| start.elapsed());
        seen_tx.lock().unwrap().send(closed).unwrap();
        After::Close
    });
    let s = start(&up, "io-uring");
    let mut c = s.connect();
    c.send(&chat_request(KEY_A, true, true));
    let head = c.read_head();
    assert_eq!(head.status(), 200);
    thread::sleep(CLIENT_PATIENCE);
    drop(c);
    assert!(
        wait_seen(&seen).is_some(),
        "the upstream stream was cancelled"
    );
    // Booked before the upstream connection closed; the answer's log line is not an
    // estimate, so wait for the next request to find it settled instead.
    let (cost, reservation) = cost_of_abandoned(&s);
    assert_ne!(cost, reservation, "not the reservation");
    assert_eq!(cost, 7, "the usage the stream reported");
}

/// A client that leaves during one of the mock's streaming pauses is noticed then, not when
/// the stream would have ended.
#[test]
fn a_client_that_leaves_during_a_mock_stream_pause_is_noticed() {
    let body = r#"
[[backend]]
name = "slow-mock"
kind = "mock"
completion_tokens = 100
tokens_per_second = 1

[[deployment]]
name = "gpt-4o"
backends = [{ backend = "slow-mock" }]
"#;
    let s = Launch::new(body).start();
    let mut c = s.connect();
    c.send(&chat_request("unused", true, false));
    let head = c.read_head();
    assert_eq!(head.status(), 200);
    thread::sleep(CLIENT_PATIENCE);
    drop(c);
    assert!(
        s.wait_log("client went away", Duration::from_secs(4)),
        "the hang-up was noticed during the pause (the stream runs 100 s)"
    );
}

/// A client that sends more bytes after its request (the start of a pipelined one) and then
/// closes is gone too: the unread bytes do not hide its FIN.
#[test]
fn bytes_sent_before_the_close_do_not_hide_it() {
    for driver in ["io-uring", "epoll"] {
        let (tx, seen) = channel();
        let up = slow_backend(Slow::BeforeHead, tx);
        let s = start(&up, driver);
        let mut c = s.connect();
        c.send(&chat_request(KEY_A, false, true));
        thread::sleep(CLIENT_PATIENCE);
        c.send(b"GET /v1/mo");
        thread::sleep(Duration::from_millis(100));
        drop(c);
        assert_cancelled_early(
            &seen,
            driver,
            "the upstream request ran on to its answer after the client left",
        );
        wait_booked(&s);
    }
}
