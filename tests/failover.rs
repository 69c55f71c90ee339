//! Whole-process tests of failover (README "How a request is forwarded", items 3–6): a 429 or a
//! 500/502/503/504 answer while another candidate remains goes to the next candidate; a 429
//! cools that backend down for every worker — for what its answer asks (`retry-after-ms`,
//! `retry-after` in seconds or as an HTTP date, `x-ratelimit-reset-*`, capped by
//! `retry.max_cool_down`), else 5 s — and so does a 5xx that names a retry time; a 5xx
//! without one only counts toward outlier detection (tests/resilience.rs). The client never
//! sees a byte of the failed attempt; the last candidate's answer, a 429 included, reaches
//! the client as the backend sent it.
//!
//! Every deployment here lists its backends with priorities 0, 1, 2, … so the order of the
//! candidates is fixed: a backend that is out of its cool-down is always tried first, and
//! which backend served is read from the answer's `model` (each scripted backend names
//! itself) and from the backends' request counts.
//!
//! Cool-downs need real time; they are kept short with `retry-after-ms` where the case
//! allows. A probe answered before `cool-down start + cool − MARGIN` was decided inside the
//! cool-down (Sluice decides before it answers, and starts the cool-down after the test
//! sent the failing request), so it must not reach the cooled backend; the backend must be
//! tried again within `cool + SLACK`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::Write as _;
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use support::*;

/// Slack below a cool-down's end inside which a probe is not judged (clock reads, scheduling).
const MARGIN: Duration = Duration::from_millis(50);
/// How long after a cool-down's end the cooled backend must have been tried again.
const SLACK: Duration = Duration::from_millis(1500);
/// Pause between probes.
const PROBE_GAP: Duration = Duration::from_millis(40);

/// A failing answer: status, headers and a content-length body.
#[derive(Clone)]
struct Refusal {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Refusal {
    fn new(status: u16, headers: &[(&str, &str)], body: &[u8]) -> Refusal {
        Refusal {
            status,
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body: body.to_vec(),
        }
    }

    fn write(&self, s: &mut TcpStream) {
        let headers: Vec<(&str, &str)> = self
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        respond(s, self.status, &headers, &self.body);
    }
}

/// The bytes of the successful chat answer of backend `name`.
fn answer_of(name: &str) -> Vec<u8> {
    serde_json::to_vec(&upstream_chat_answer(name)).unwrap()
}

/// A backend answering its first `fails` requests with `refusal` and every later one 200
/// with a chat answer whose `model` is `name`.
fn flaky(name: &str, fails: usize, refusal: Refusal) -> Upstream {
    let seen = AtomicUsize::new(0);
    let answer = answer_of(name);
    Upstream::start(move |_, s| {
        if seen.fetch_add(1, Ordering::SeqCst) < fails {
            refusal.write(s);
        } else {
            respond(s, 200, &[("content-type", "application/json")], &answer);
        }
        After::KeepAlive
    })
}

/// A healthy backend whose answers name `name`.
fn healthy(name: &str) -> Upstream {
    Upstream::json(upstream_chat_answer(name))
}

/// Deployment `chat` over `openai` backends `b0`, `b1`, … at `urls`, with priorities 0, 1, …
fn pool(urls: &[String]) -> String {
    pool_with(urls, "")
}

/// [`pool`], with `extra` lines in the deployment (`retry = { … }`).
fn pool_with(urls: &[String], extra: &str) -> String {
    let priorities: Vec<u32> = (0..urls.len() as u32).collect();
    priority_pool(urls, &priorities, extra)
}

/// One request on a fresh connection: when it was sent, when answered, who served it.
struct Probe {
    answered: Instant,
    by: String,
}

fn probe(s: &Sluice) -> Probe {
    let resp = chat_on(&mut s.connect());
    let answered = Instant::now();
    Probe {
        answered,
        by: served_by(&resp),
    }
}

/// Backend `a` (priority 0) answers its first request with `refusal`, then 200; backend `b`
/// always 200. Checks that the first request fails over to `b`, that `a` is asked nothing
/// while its cool-down (`cool`) lasts, and that it is tried — and serves — again once it ends.
fn check_cool_down(refusal: Refusal, cool: Duration) {
    check_cool_down_with(refusal, cool, "");
}

/// [`check_cool_down`] with `extra` lines in the deployment.
fn check_cool_down_with(refusal: Refusal, cool: Duration, extra: &str) {
    let a = flaky("a", 1, refusal);
    let b = healthy("b");
    let s = Launch::new(&pool_with(&[a.url(), b.url()], extra)).start();
    let start = Instant::now();
    assert_eq!(served_by(&chat_on(&mut s.connect())), "b", "failover to b");
    assert_eq!((a.request_count(), b.request_count()), (1, 1));
    let quiet_until = start + cool - MARGIN;
    let deadline = start + cool + SLACK;
    let mut quiet_probes = 0;
    loop {
        let p = probe(&s);
        if p.by == "a" {
            assert!(
                p.answered >= quiet_until,
                "a was tried again {:?} after the failover, inside its {cool:?} cool-down",
                p.answered - start
            );
            break;
        }
        assert_eq!(p.by, "b");
        if p.answered < quiet_until {
            quiet_probes += 1;
            assert_eq!(a.request_count(), 1, "a was asked during its cool-down");
        }
        assert!(
            Instant::now() < deadline,
            "a was not tried again within {:?} of a {cool:?} cool-down",
            cool + SLACK
        );
        thread::sleep(PROBE_GAP);
    }
    assert!(
        quiet_probes >= 3,
        "only {quiet_probes} probes inside the cool-down: nothing was shown"
    );
    assert_eq!(
        a.request_count(),
        2,
        "a served exactly once after its cool-down"
    );
}

#[test]
fn a_429_with_retry_after_ms_fails_over_and_cools_for_that_long() {
    check_cool_down(
        Refusal::new(429, &[("retry-after-ms", "1500")], b"{\"error\":\"busy\"}"),
        Duration::from_millis(1500),
    );
}

#[test]
fn a_429_with_retry_after_in_seconds_cools_for_that_many_seconds() {
    check_cool_down(
        Refusal::new(429, &[("retry-after", "1")], b"{\"error\":\"busy\"}"),
        Duration::from_secs(1),
    );
}

#[test]
fn retry_after_ms_wins_over_retry_after() {
    check_cool_down(
        Refusal::new(
            429,
            &[("retry-after", "4"), ("retry-after-ms", "800")],
            b"{\"error\":\"busy\"}",
        ),
        Duration::from_millis(800),
    );
}

#[test]
fn a_429_with_retry_after_as_an_http_date_cools_until_then() {
    // Two to three seconds ahead: the next whole second, plus two (an HTTP-date has whole
    // seconds), so the cool-down from now is at least 2 s.
    let now = SystemTime::now();
    let whole = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 1;
    let at = SystemTime::UNIX_EPOCH + Duration::from_secs(whole + 2);
    let date = httpdate::fmt_http_date(at);
    check_cool_down(
        Refusal::new(
            429,
            &[("retry-after", date.as_str())],
            b"{\"error\":\"busy\"}",
        ),
        Duration::from_secs(2),
    );
}

#[test]
fn a_429_with_only_a_ratelimit_reset_header_cools_for_it() {
    check_cool_down(
        Refusal::new(
            429,
            &[
                ("retry-after-ms", "-1"),
                ("x-ratelimit-reset-tokens", "1.5s"),
            ],
            b"{\"error\":\"busy\"}",
        ),
        Duration::from_millis(1500),
    );
}

/// Azure's minute-long reset, `1m30s`, read whole and capped by the deployment's
/// `retry.max_cool_down` (60 s by default; 2 s here, so the test sees the end).
#[test]
fn a_long_ratelimit_reset_is_capped_by_max_cool_down() {
    check_cool_down_with(
        Refusal::new(
            429,
            &[("x-ratelimit-reset-tokens", "1m30s")],
            b"{\"error\":\"busy\"}",
        ),
        Duration::from_secs(2),
        "retry = { max_cool_down = \"2s\" }",
    );
}

#[test]
fn a_429_without_retry_headers_cools_for_5_s() {
    check_cool_down(
        Refusal::new(429, &[], b"{\"error\":\"busy\"}"),
        Duration::from_secs(5),
    );
}

/// A 5xx that names no retry time fails over, and does not cool the backend down: the next
/// request goes to it again (it counts toward outlier detection only).
#[test]
fn each_5xx_fails_over_without_cooling_the_backend() {
    for status in [500, 502, 503, 504] {
        let a = flaky(
            "a",
            1,
            Refusal::new(status, &[("content-type", "text/plain")], b"backend failed"),
        );
        let b = healthy("b");
        let s = Launch::new(&pool(&[a.url(), b.url()])).start();
        let mut c = s.connect();
        assert_eq!(served_by(&chat_on(&mut c)), "b", "{status}: failover to b");
        assert_eq!(served_by(&chat_on(&mut c)), "a", "{status}: a serves next");
        assert_eq!((a.request_count(), b.request_count()), (2, 1), "{status}");
    }
}

/// A status left out of `retry.retriable_status_codes` is not retried: its answer is the
/// client's.
#[test]
fn only_the_listed_5xx_are_retried() {
    let a = flaky("a", usize::MAX, Refusal::new(500, &[], b"A-FAILED"));
    let b = healthy("b");
    let s = Launch::new(&pool_with(
        &[a.url(), b.url()],
        "retry = { retriable_status_codes = [503] }",
    ))
    .start();
    let resp = chat_on(&mut s.connect());
    assert_eq!(resp.status, 500);
    assert_eq!(resp.body, b"A-FAILED");
    assert_eq!(resp.header("x-should-retry"), None, "Sluice did not retry");
    assert_eq!((a.request_count(), b.request_count()), (1, 0));
}

#[test]
fn a_503_with_retry_after_ms_cools_for_that_long() {
    check_cool_down(
        Refusal::new(503, &[("retry-after-ms", "700")], b"overloaded"),
        Duration::from_millis(700),
    );
}

#[test]
fn the_cool_down_is_seen_by_every_worker() {
    let cool = Duration::from_millis(3000);
    let a = flaky(
        "a",
        1,
        Refusal::new(429, &[("retry-after-ms", "3000")], b"{\"error\":\"busy\"}"),
    );
    let b = healthy("b");
    let s = Launch::new(&pool(&[a.url(), b.url()])).workers(2).start();
    let start = Instant::now();
    assert_eq!(served_by(&chat_on(&mut s.connect())), "b", "failover to b");
    // One request per new connection, one at a time: the kernel spreads the connections over
    // both workers (the chance that 24 land on one is 2⁻²³), and a worker with its own view
    // of backend health would send its first one to `a`.
    let quiet_until = start + cool - MARGIN;
    let mut quiet_probes = 0;
    for i in 0..24 {
        let p = probe(&s);
        if p.answered >= quiet_until {
            break;
        }
        assert_eq!(
            p.by,
            "b",
            "probe {i}, {:?} into the cool-down",
            p.answered - start
        );
        quiet_probes += 1;
    }
    assert_eq!(quiet_probes, 24, "the probes outlasted the cool-down");
    assert_eq!(
        a.request_count(),
        1,
        "a worker asked a during its cool-down"
    );
    // Each worker keeps its own upstream connections, and the probes never overlap: a second
    // connection to b means a second worker served.
    assert!(
        b.connections() >= 2,
        "only one worker served ({} connection to b)",
        b.connections()
    );
    // Once the cool-down ends, every worker sends to a again (priority 0).
    let back = wait_until(cool + SLACK, || probe(&s).by == "a");
    assert!(back, "a not tried again after its cool-down");
    for i in 0..16 {
        assert_eq!(probe(&s).by, "a", "probe {i} after the cool-down");
    }
}

// ---------------------------------------------------------------------------------------------
// Nothing of a failed attempt reaches the client

/// A marker in every header and body byte run of a failed attempt.
const LEAK: &str = "LEAKED-FROM-FAILED-ATTEMPT";

/// Writes one failing answer on a backend connection.
type Shape = dyn Fn(&mut TcpStream) -> After + Send + Sync;

/// The shapes a failing answer can take on the wire.
fn failing_shapes() -> Vec<(&'static str, Box<Shape>)> {
    let head = |status: u16, framing: &str| {
        format!(
            "HTTP/1.1 {status} Failed\r\ncontent-type: text/plain\r\nx-leak: {LEAK}\r\n\
             x-ratelimit-remaining-requests: 4242\r\nset-cookie: leak={LEAK}\r\n{framing}\r\n"
        )
    };
    vec![
        (
            "503 with a content-length body",
            Box::new(move |s: &mut TcpStream| {
                let body = format!("{LEAK} body");
                let mut out = head(503, &format!("content-length: {}\r\n", body.len()));
                out.push_str(&body);
                s.write_all(out.as_bytes()).unwrap();
                After::KeepAlive
            }),
        ),
        (
            "500 with a chunked body",
            Box::new(move |s: &mut TcpStream| {
                s.write_all(head(500, "transfer-encoding: chunked\r\n").as_bytes())
                    .unwrap();
                write_chunk(s, format!("{LEAK} first chunk").as_bytes()).unwrap();
                write_chunk(s, format!("{LEAK} second chunk").as_bytes()).unwrap();
                write_chunk(s, b"").unwrap();
                After::KeepAlive
            }),
        ),
        (
            "502 with a close-delimited body",
            Box::new(move |s: &mut TcpStream| {
                let mut out = head(502, "");
                out.push_str(&format!("{LEAK} until close"));
                s.write_all(out.as_bytes()).unwrap();
                After::Close
            }),
        ),
        (
            "429 whose body stalls after its head",
            Box::new(move |s: &mut TcpStream| {
                let mut out = head(429, "content-length: 100000\r\n");
                out.push_str(LEAK);
                s.write_all(out.as_bytes()).unwrap();
                s.flush().unwrap();
                // Sluice must not wait for the rest; it is never sent.
                thread::sleep(Duration::from_secs(2));
                After::Close
            }),
        ),
        (
            "504 with a body larger than any read buffer",
            Box::new(move |s: &mut TcpStream| {
                let body = LEAK.repeat(8 * 1024);
                let mut out = head(504, &format!("content-length: {}\r\n", body.len()));
                out.push_str(&body);
                let _ = s.write_all(out.as_bytes());
                After::KeepAlive
            }),
        ),
    ]
}

/// Asserts no header name or value and no body byte run of `resp` carries the marker.
fn assert_clean(resp: &Response, what: &str) {
    for (k, v) in &resp.head.headers {
        assert!(
            !k.eq_ignore_ascii_case("x-leak")
                && !k.eq_ignore_ascii_case("set-cookie")
                && !v.contains(LEAK)
                && v != "4242",
            "{what}: a header of the failed attempt reached the client: {k}: {v}"
        );
    }
    assert!(
        !resp.text().contains(LEAK),
        "{what}: body bytes of the failed attempt reached the client: {}",
        resp.text()
    );
}

#[test]
fn the_client_never_sees_a_byte_of_a_failed_attempt() {
    for (what, shape) in failing_shapes() {
        let a = Upstream::start(move |_, s| shape(s));
        let b = healthy("b");
        let s = Launch::new(&pool(&[a.url(), b.url()])).start();
        let mut c = s.connect();
        let first = chat_on(&mut c);
        assert_eq!(served_by(&first), "b", "{what}: failover to b");
        assert_eq!(
            first.body,
            answer_of("b"),
            "{what}: b's answer, byte for byte"
        );
        assert_clean(&first, what);
        assert_eq!(a.request_count(), 1, "{what}: a asked once");
        // The same connection carries a second exchange cleanly: nothing of the failed
        // attempt was left on it either (a leftover would be read as this answer's head).
        let second = chat_on(&mut c);
        assert_eq!(served_by(&second), "b", "{what}: second request");
        assert_eq!(second.body, answer_of("b"), "{what}: second answer");
        assert_clean(&second, what);
        assert_eq!(b.request_count(), 2, "{what}: b served both");
    }
}

// ---------------------------------------------------------------------------------------------
// The last candidate's answer is the client's

#[test]
fn the_last_candidate_s_429_reaches_the_client_with_its_body_and_headers() {
    let a = flaky(
        "a",
        usize::MAX,
        Refusal::new(500, &[("x-from", "a")], b"A-FAILED"),
    );
    let b = flaky(
        "b",
        usize::MAX,
        Refusal::new(
            503,
            &[("x-from", "b"), ("retry-after-ms", "100")],
            b"B-FAILED",
        ),
    );
    let c_body =
        br#"{"error":{"message":"c is busy","type":"requests","param":null,"code":"429"}}"#;
    let c = flaky(
        "c",
        usize::MAX,
        Refusal::new(
            429,
            &[
                ("content-type", "application/json"),
                ("x-from", "c"),
                ("retry-after-ms", "4321"),
                ("retry-after", "5"),
            ],
            c_body,
        ),
    );
    let s = Launch::new(&pool(&[a.url(), b.url(), c.url()])).start();
    let resp = chat_on(&mut s.connect());
    assert_eq!(resp.status, 429, "body: {}", resp.text());
    assert_eq!(resp.body, c_body, "c's body, byte for byte");
    assert_eq!(resp.header("x-from"), Some("c"));
    assert_eq!(resp.header("retry-after-ms"), Some("4321"));
    assert_eq!(resp.header("retry-after"), Some("5"));
    assert_eq!(
        resp.header("content-type"),
        Some("application/json"),
        "c's content type"
    );
    assert_eq!(
        resp.head.header_all("x-from").len(),
        1,
        "{:?}",
        resp.head.headers
    );
    assert_request_id(&resp);
    assert_eq!(
        resp.header("x-should-retry"),
        Some("false"),
        "Sluice retried already: the SDK must not"
    );
    assert_eq!(
        (a.request_count(), b.request_count(), c.request_count()),
        (1, 1, 1),
        "each candidate asked once, in order"
    );
}

/// A lone backend's 429 reaches the client as it came; while it cools down the pool is
/// exhausted, answered at once. Its 5xx is retried on it (after a backoff) up to
/// `max_attempts`, and the last answer reaches the client; outlier detection never ejects
/// the only member (`max_ejected_percent`).
#[test]
fn a_lone_backend_s_429_and_5xx_reach_the_client() {
    let lone = flaky(
        "lone",
        usize::MAX,
        Refusal::new(
            429,
            &[("retry-after-ms", "60000"), ("x-from", "lone")],
            b"LONE-BUSY",
        ),
    );
    let s = Launch::new(&pool(&[lone.url()])).start();
    let mut c = s.connect();
    let resp = chat_on(&mut c);
    assert_eq!(resp.status, 429, "{}", resp.text());
    assert_eq!(resp.body, b"LONE-BUSY");
    assert_eq!(resp.header("x-from"), Some("lone"));
    assert_eq!(resp.header("retry-after-ms"), Some("60000"));
    assert_eq!(
        resp.header("x-should-retry"),
        None,
        "one attempt: no retry yet"
    );
    for i in 0..3 {
        let resp = chat_on(&mut c);
        assert_openai_error(&resp, 429, Some("rate_limit_exceeded"));
        let ms = num_header(&resp, "retry-after-ms");
        assert!((55_000..=60_000).contains(&ms), "request {i}: {ms}");
        assert_eq!(num_header(&resp, "retry-after"), (ms + 999) / 1000);
    }
    assert_eq!(lone.request_count(), 1, "an exhausted pool asks no backend");

    let lone = flaky("lone", usize::MAX, Refusal::new(502, &[], b"LONE-DOWN"));
    let s = Launch::new(&pool(&[lone.url()])).start();
    let mut c = s.connect();
    for i in 0..3 {
        let resp = chat_on(&mut c);
        assert_eq!(resp.status, 502, "request {i}: {}", resp.text());
        assert_eq!(resp.body, b"LONE-DOWN", "request {i}");
        assert_eq!(resp.header("x-should-retry"), Some("false"), "request {i}");
    }
    assert_eq!(lone.request_count(), 9, "three attempts per request");
}

/// A refused connection fails over at once and does not cool the backend down (a lone
/// backend is tried again); refusals count toward outlier detection (tests/resilience.rs).
#[test]
fn a_refused_connection_fails_over_and_is_tried_again() {
    let port = closed_port();
    let b = healthy("b");
    let s = Launch::new(&pool(&[format!("http://127.0.0.1:{port}"), b.url()])).start();
    let mut c = s.connect();
    for _ in 0..3 {
        assert_eq!(served_by(&chat_on(&mut c)), "b", "failover to b");
    }
    let log = s.log();
    assert_eq!(
        log.matches("backend unreachable").count(),
        3,
        "each request tried the refusing backend first: {log}"
    );
}

/// A backend that takes the request and closes without answering is a 502 with no failover
/// and no resend (it may have run the request); it is not cooled down: the next request goes
/// to it again.
#[test]
fn a_backend_that_closes_without_answering_is_a_502_without_failover() {
    let calls = std::sync::Arc::new(AtomicUsize::new(0));
    let seen = std::sync::Arc::clone(&calls);
    let a = Upstream::start(move |_, s: &mut TcpStream| {
        if seen.fetch_add(1, Ordering::SeqCst) == 0 {
            return After::Close;
        }
        respond(
            s,
            200,
            &[("content-type", "application/json")],
            &answer_of("a"),
        );
        After::KeepAlive
    });
    let b = healthy("b");
    let s = Launch::new(&pool(&[a.url(), b.url()])).start();
    let mut c = s.connect();
    let resp = chat_on(&mut c);
    assert_openai_error(&resp, 502, None);
    assert_eq!(
        resp.header("x-should-retry"),
        Some("false"),
        "the backend may have run it: the client is asked not to resend it either"
    );
    assert_eq!(
        (a.request_count(), b.request_count()),
        (1, 0),
        "no resend, no failover"
    );
    assert_eq!(served_by(&chat_on(&mut c)), "a");
}
