//! Whole-process tests of the resilience rules (README "How a request is forwarded"): the
//! exhausted pool, outlier detection (ejection, the half-open probe, `max_ejected_percent`),
//! per-try and total timeouts, priority spillover and return, and the retry budget. Backends
//! are scripted servers on 127.0.0.1 whose faults a test switches on and off.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use support::*;

/// A backend named `name` that answers `status` (with `headers`) while `failing` holds, and
/// a 200 chat answer naming itself otherwise, after `delay`.
fn switchable(
    name: &str,
    failing: Arc<AtomicBool>,
    status: u16,
    headers: &'static [(&'static str, &'static str)],
    delay: Duration,
) -> Upstream {
    let answer = serde_json::to_vec(&upstream_chat_answer(name)).unwrap();
    Upstream::start(move |_, s| {
        thread::sleep(delay);
        if failing.load(Ordering::SeqCst) {
            respond(s, status, headers, b"{\"error\":{\"message\":\"failing\"}}");
        } else {
            respond(s, 200, &[("content-type", "application/json")], &answer);
        }
        After::KeepAlive
    })
}

fn flag(on: bool) -> Arc<AtomicBool> {
    Arc::new(AtomicBool::new(on))
}

/// One value of `family{labels}` from the admin `/metrics` of `s` (0 when absent).
fn metric(s: &Sluice, family: &str, labels: &str) -> u64 {
    let mut c = TcpStream::connect(("127.0.0.1", s.admin_port())).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        c,
        "GET /metrics HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    c.read_to_string(&mut text).unwrap();
    let prefix = format!("{family}{{{labels}}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Every member throttled: the request that finds them so is answered 429 at once, in the
/// OpenAI shape, with the soonest member's time as `Retry-After` / `retry-after-ms`; no
/// backend sees it. The request that was retried says `x-should-retry: false`.
#[test]
fn a_throttled_pool_answers_429_at_once_with_the_soonest_retry_after() {
    let a = switchable(
        "a",
        flag(true),
        429,
        &[("retry-after-ms", "4000")],
        Duration::ZERO,
    );
    let b_failing = flag(true);
    let b = switchable(
        "b",
        Arc::clone(&b_failing),
        429,
        &[("retry-after-ms", "2000")],
        Duration::ZERO,
    );
    let s = Launch::new(&priority_pool(&[a.url(), b.url()], &[0, 0], "")).start();
    let mut c = s.connect();
    let first = chat_on(&mut c);
    let cooled = Instant::now();
    assert_eq!(first.status, 429);
    assert_eq!(first.header("x-should-retry"), Some("false"));
    assert_eq!((a.request_count(), b.request_count()), (1, 1));
    b_failing.store(false, Ordering::SeqCst);
    for i in 0..3 {
        let resp = chat_on(&mut c);
        assert_openai_error(&resp, 429, Some("rate_limit_exceeded"));
        assert_eq!(resp.json()["error"]["type"], "requests", "request {i}");
        let ms = num_header(&resp, "retry-after-ms");
        let left = 2000 - cooled.elapsed().as_millis() as i64;
        assert!(
            ms <= 2000 && ms >= left - 100,
            "request {i}: retry-after-ms {ms}, {left} left"
        );
        assert_eq!(num_header(&resp, "retry-after"), (ms + 999) / 1000);
        assert_eq!(
            resp.header("x-should-retry"),
            None,
            "request {i}: Sluice did not retry"
        );
        assert_request_id(&resp);
    }
    assert_eq!(
        (a.request_count(), b.request_count()),
        (1, 1),
        "an exhausted pool asks no backend"
    );
    // b's cool-down ends first, and b serves.
    assert!(wait_until(Duration::from_secs(4), || {
        let resp = chat_on(&mut s.connect());
        resp.status == 200 && served_by(&resp) == "b"
    }));
    assert_eq!(a.request_count(), 1);
}

/// Outlier detection: `consecutive_failures` 5xx in a row eject a backend; while ejected it
/// gets nothing; after `base_ejection_time` one probe goes to it: a failed probe ejects it
/// again for twice as long, a good one brings it back.
#[test]
fn a_503_storm_ejects_the_backend_and_a_probe_restores_it() {
    let a_failing = flag(true);
    let a = switchable("a", Arc::clone(&a_failing), 503, &[], Duration::ZERO);
    let b = switchable("b", flag(false), 503, &[], Duration::ZERO);
    let s = Launch::new(&priority_pool(
        &[a.url(), b.url()],
        &[0, 1],
        "outlier_detection = { consecutive_failures = 3, base_ejection_time = \"1s\" }",
    ))
    .start();
    let mut c = s.connect();
    for _ in 0..3 {
        assert_eq!(served_by(&chat_on(&mut c)), "b");
    }
    let ejected = Instant::now();
    assert_eq!(a.request_count(), 3);
    assert_eq!(metric(&s, "sluice_backend_ejected", "backend=\"b0\""), 1);
    // Ejected for 1 s: nothing reaches it.
    while ejected.elapsed() < Duration::from_millis(800) {
        assert_eq!(served_by(&chat_on(&mut c)), "b");
        assert_eq!(a.request_count(), 3, "a was asked while ejected");
        thread::sleep(Duration::from_millis(50));
    }
    // The probe fails (a still 503s): the request fails over, a is ejected for 2 s.
    assert!(wait_until(Duration::from_secs(2), || {
        assert_eq!(served_by(&chat_on(&mut c)), "b");
        a.request_count() == 4
    }));
    let again = Instant::now();
    a_failing.store(false, Ordering::SeqCst);
    while again.elapsed() < Duration::from_millis(1800) {
        assert_eq!(served_by(&chat_on(&mut c)), "b");
        assert_eq!(
            a.request_count(),
            4,
            "a was asked during its second ejection"
        );
        thread::sleep(Duration::from_millis(50));
    }
    // The next probe succeeds: a is back for every request.
    assert!(wait_until(Duration::from_secs(2), || served_by(&chat_on(
        &mut c
    )) == "a"));
    for _ in 0..5 {
        assert_eq!(served_by(&chat_on(&mut c)), "a");
    }
    assert_eq!(metric(&s, "sluice_backend_ejected", "backend=\"b0\""), 0);
    assert_eq!(
        metric(&s, "sluice_backend_ejections_total", "backend=\"b0\""),
        2
    );
}

/// `max_ejected_percent` (50%): of two failing members only one is ejected, so the pool is
/// never emptied by outlier detection: every request still reaches a backend and gets its
/// answer.
#[test]
fn outlier_detection_never_ejects_more_than_max_ejected_percent() {
    let a = switchable("a", flag(true), 503, &[], Duration::ZERO);
    let b = switchable("b", flag(true), 503, &[], Duration::ZERO);
    let s = Launch::new(&priority_pool(
        &[a.url(), b.url()],
        &[0, 0],
        "outlier_detection = { consecutive_failures = 2 }",
    ))
    .start();
    let mut c = s.connect();
    for i in 0..10 {
        let resp = chat_on(&mut c);
        assert_eq!(resp.status, 503, "request {i}: {}", resp.text());
        assert_eq!(resp.header("x-should-retry"), Some("false"), "request {i}");
    }
    let ejected = metric(&s, "sluice_backend_ejected", "backend=\"b0\"")
        + metric(&s, "sluice_backend_ejected", "backend=\"b1\"");
    assert_eq!(ejected, 1, "exactly one of the two is ejected");
    let seen = a.request_count() + b.request_count();
    assert!(seen >= 20, "requests kept reaching a backend: {seen}");
}

/// A first byte later than `per_try_timeout` sends the request to the next candidate; the
/// slow backend's connection is closed.
#[test]
fn a_slow_first_byte_goes_to_the_next_candidate_after_per_try_timeout() {
    let a = switchable("a", flag(false), 200, &[], Duration::from_secs(3));
    let b = switchable("b", flag(false), 200, &[], Duration::ZERO);
    let s = Launch::new(&priority_pool(
        &[a.url(), b.url()],
        &[0, 1],
        "retry = { per_try_timeout = \"300ms\" }",
    ))
    .start();
    let resp = chat_on(&mut s.connect());
    assert_eq!(served_by(&resp), "b");
    assert_eq!(resp.header("x-should-retry"), Some("false"));
    assert_eq!((a.request_count(), b.request_count()), (1, 1));
}

/// `total_timeout` bounds every attempt together: two slow backends give 504
/// (`upstream_timeout`) once it is over, each asked once.
#[test]
fn total_timeout_ends_the_attempts_with_504() {
    let a = switchable("a", flag(false), 200, &[], Duration::from_secs(3));
    let b = switchable("b", flag(false), 200, &[], Duration::from_secs(3));
    let s = Launch::new(&priority_pool(
        &[a.url(), b.url()],
        &[0, 1],
        "retry = { per_try_timeout = \"400ms\", total_timeout = \"700ms\" }",
    ))
    .start();
    let resp = chat_on(&mut s.connect());
    assert_openai_error(&resp, 504, Some("upstream_timeout"));
    assert_eq!(resp.header("x-should-retry"), Some("false"));
    assert_eq!((a.request_count(), b.request_count()), (1, 1));
}

/// Priority spillover: with both priority-1 members throttled, requests go to the priority-2
/// member — each request on its own, nothing flips for the pool — and come back to priority
/// 1 the moment its cool-downs end.
#[test]
fn spillover_to_the_next_priority_and_back() {
    let a_failing = flag(true);
    let b_failing = flag(true);
    let a = switchable(
        "a",
        Arc::clone(&a_failing),
        429,
        &[("retry-after-ms", "1500")],
        Duration::ZERO,
    );
    let b = switchable(
        "b",
        Arc::clone(&b_failing),
        429,
        &[("retry-after-ms", "1500")],
        Duration::ZERO,
    );
    let c = switchable("c", flag(false), 200, &[], Duration::ZERO);
    let s = Launch::new(&priority_pool(&[a.url(), b.url(), c.url()], &[1, 1, 2], "")).start();
    let mut conn = s.connect();
    let start = Instant::now();
    assert_eq!(served_by(&chat_on(&mut conn)), "c");
    assert_eq!((a.request_count(), b.request_count()), (1, 1));
    a_failing.store(false, Ordering::SeqCst);
    b_failing.store(false, Ordering::SeqCst);
    while start.elapsed() < Duration::from_millis(1300) {
        assert_eq!(served_by(&chat_on(&mut conn)), "c");
        thread::sleep(Duration::from_millis(50));
    }
    assert_eq!((a.request_count(), b.request_count()), (1, 1));
    assert!(wait_until(Duration::from_secs(2), || served_by(&chat_on(
        &mut conn
    )) != "c"));
    // b was cooled a moment after a: give its cool-down time to end too.
    thread::sleep(Duration::from_millis(100));
    let c_seen = c.request_count();
    let mut by = Vec::new();
    for _ in 0..10 {
        by.push(served_by(&chat_on(&mut conn)));
    }
    assert_eq!(
        c.request_count(),
        c_seen,
        "priority 2 used after priority 1 recovered"
    );
    assert!(
        by.contains(&"a".to_string()) && by.contains(&"b".to_string()),
        "{by:?}"
    );
}

/// The retry budget: of 20 requests failing together on one worker, at most max(20% of 20,
/// 3) = 4 retry; the rest get the backend's 503 as it came, counted in
/// `sluice_retries_over_budget_total`.
#[test]
fn the_retry_budget_holds_under_a_burst_of_failures() {
    const N: usize = 20;
    let arrived = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&arrived);
    // a fails every request once all N are in flight on it.
    let a = Upstream::start(move |_, s| {
        seen.fetch_add(1, Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(5);
        while seen.load(Ordering::SeqCst) < N && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(5));
        }
        respond(s, 503, &[], b"A-DOWN");
        After::KeepAlive
    });
    // b holds its retry slot for a while.
    let b = switchable("b", flag(false), 200, &[], Duration::from_millis(700));
    let s = Launch::new(&priority_pool(
        &[a.url(), b.url()],
        &[0, 1],
        "outlier_detection = { consecutive_failures = 100 }",
    ))
    .workers(1)
    .start();
    let statuses: Vec<u16> = thread::scope(|scope| {
        let handles: Vec<_> = (0..N)
            .map(|_| scope.spawn(|| chat_on(&mut s.connect()).status))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let ok = statuses.iter().filter(|&&st| st == 200).count();
    let refused = statuses.iter().filter(|&&st| st == 503).count();
    assert_eq!(ok + refused, N, "{statuses:?}");
    assert!(
        (3..=4).contains(&ok),
        "{ok} retries went through: {statuses:?}"
    );
    assert_eq!(b.request_count(), ok);
    assert_eq!(
        metric(
            &s,
            "sluice_retries_over_budget_total",
            "deployment=\"chat\""
        ),
        refused as u64
    );
}

/// A backend answering 200 with `headers`, its answers naming `name`.
fn with_headers(name: &str, headers: &'static [(&'static str, &'static str)]) -> Upstream {
    let answer = serde_json::to_vec(&upstream_chat_answer(name)).unwrap();
    Upstream::start(move |_, s| {
        let mut all = vec![("content-type", "application/json")];
        all.extend_from_slice(headers);
        respond(s, 200, &all, &answer);
        After::KeepAlive
    })
}

/// A chat request to `chat` asking for at most `max_tokens`.
fn chat_capped(c: &mut Client, max_tokens: u32) -> Response {
    c.post_json(
        "/v1/chat/completions",
        &serde_json::json!({
            "model": "chat",
            "messages": [{"role": "user", "content": "Say hi."}],
            "max_tokens": max_tokens,
        }),
    )
}

/// Capacity-aware selection: a backend whose last answer said it has 100 tokens left (for
/// 1.5 s) is skipped for a request estimated above that — before it could answer 429 —
/// and still takes a small one; when no member can take the request, it is answered 429 at
/// once with the time the figure ends.
#[test]
fn a_backend_without_the_tokens_for_a_request_is_skipped_until_its_reset() {
    const LOW: &[(&str, &str)] = &[
        ("x-ratelimit-remaining-tokens", "100"),
        ("x-ratelimit-reset-tokens", "1500ms"),
        ("x-ratelimit-remaining-requests", "50"),
    ];
    let a = with_headers("a", LOW);
    let b = with_headers("b", &[]);
    let s = Launch::new(&priority_pool(&[a.url(), b.url()], &[0, 1], "")).start();
    let mut c = s.connect();
    assert_eq!(served_by(&chat_capped(&mut c, 500)), "a", "no figure yet");
    let seen = Instant::now();
    assert_eq!(
        served_by(&chat_capped(&mut c, 500)),
        "b",
        "500 tokens > 100 left"
    );
    assert_eq!(
        served_by(&chat_capped(&mut c, 20)),
        "a",
        "a small request fits"
    );
    assert_eq!(served_by(&chat_capped(&mut c, 500)), "b");
    assert_eq!((a.request_count(), b.request_count()), (2, 2));
    // The figure ends 1.5 s after a's last answer; then a takes the large request again.
    assert!(wait_until(Duration::from_secs(3), || served_by(
        &chat_capped(&mut c, 500)
    ) == "a"));
    assert!(seen.elapsed() >= Duration::from_millis(1400));

    // A lone member that cannot take it: 429 at once, until the figure ends.
    let lone = with_headers("lone", LOW);
    let s = Launch::new(&priority_pool(&[lone.url()], &[0], "")).start();
    let mut c = s.connect();
    assert_eq!(served_by(&chat_capped(&mut c, 500)), "lone");
    let resp = chat_capped(&mut c, 500);
    assert_openai_error(&resp, 429, Some("rate_limit_exceeded"));
    let ms = num_header(&resp, "retry-after-ms");
    assert!((1000..=1500).contains(&ms), "retry-after-ms {ms}");
    assert_eq!(lone.request_count(), 1, "the backend saw no request for it");
    assert_eq!(served_by(&chat_capped(&mut c, 20)), "lone");
}

/// A backend that dies mid-stream: the client gets every event it sent, then a final
/// `data: {"error": …}` event and a clean end of the body; the request is not retried
/// (the other backend sees nothing), and the connection closes.
#[test]
fn a_stream_cut_mid_way_ends_with_an_error_event_and_is_not_retried() {
    let a = Upstream::start(|_, s| {
        let _ = s.write_all(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n",
        );
        let _ = write_chunk(s, sse_chunk("one").as_bytes());
        let _ = write_chunk(s, sse_chunk("two").as_bytes());
        // Half an event, then the backend is gone.
        let _ = write_chunk(s, b"data: {\"choices\":[{\"delta\":{\"content\":\"thr");
        After::Close
    });
    let b = switchable("b", flag(false), 200, &[], Duration::ZERO);
    let s = Launch::new(&priority_pool(&[a.url(), b.url()], &[0, 1], "")).start();
    let mut c = s.connect();
    let body = serde_json::to_vec(&chat_body(Some("chat"), true)).unwrap();
    let (head, mut sse) = c.stream(
        "POST",
        "/v1/chat/completions",
        &[("Content-Type", "application/json")],
        &body,
    );
    assert_eq!(head.status(), 200);
    assert!(sse.next_event().unwrap().contains("\"one\""));
    assert!(sse.next_event().unwrap().contains("\"two\""));
    // The half event is not relayed (the usage tap passes whole events only); had it been,
    // the blank lines before the error event would end it.
    let error = sse.error_end();
    assert_eq!(error["code"], "upstream_protocol_error", "{error}");
    assert!(
        error["message"].as_str().unwrap().contains("closed"),
        "{error}"
    );
    drop(sse);
    assert!(c.closed_within(Duration::from_secs(5)));
    assert_eq!(
        (a.request_count(), b.request_count()),
        (1, 0),
        "never retried"
    );
}

/// Active health checks: a backend whose `/healthz` answers 503 twice in a row is taken out
/// of its pool (chat goes to the next member though its chat would still answer), and is
/// back after one good probe. Probes carry the backend's own credential.
#[test]
fn an_active_health_check_takes_a_backend_out_and_brings_it_back() {
    let unhealthy = flag(false);
    let down = Arc::clone(&unhealthy);
    let probes = Arc::new(AtomicUsize::new(0));
    let probed = Arc::clone(&probes);
    let answer = serde_json::to_vec(&upstream_chat_answer("a")).unwrap();
    let a = Upstream::start(move |r, s| {
        if r.head.target() == "/healthz" {
            assert_eq!(r.head.header("api-key"), Some("probe-secret"));
            probed.fetch_add(1, Ordering::SeqCst);
            let status = if down.load(Ordering::SeqCst) {
                503
            } else {
                200
            };
            respond(s, status, &[], b"");
            return After::Close;
        }
        respond(s, 200, &[("content-type", "application/json")], &answer);
        After::KeepAlive
    });
    let b = switchable("b", flag(false), 200, &[], Duration::ZERO);
    let body = format!(
        "[[backend]]\nname = \"a\"\nkind = \"azure\"\nurl = \"{}\"\ndeployment = \"chat\"\napi_key_env = \"PROBE_KEY\"\n\
         health_check = {{ path = \"/healthz\", interval = \"1s\", unhealthy_threshold = 2 }}\n\n\
         [[backend]]\nname = \"b\"\nkind = \"openai\"\nurl = \"{}\"\n\n\
         [[deployment]]\nname = \"chat\"\nbackends = [{{ backend = \"a\" }}, {{ backend = \"b\", priority = 1 }}]\n",
        a.url(),
        b.url()
    );
    let s = Launch::new(&body).env("PROBE_KEY", "probe-secret").start();
    let mut c = s.connect();
    assert!(wait_until(Duration::from_secs(6), || probes
        .load(Ordering::SeqCst)
        >= 2));
    assert_eq!(served_by(&chat_on(&mut c)), "a");
    unhealthy.store(true, Ordering::SeqCst);
    assert!(
        wait_until(Duration::from_secs(6), || served_by(&chat_on(&mut c))
            == "b"),
        "a still served after failing its health checks"
    );
    assert!(s.wait_log(
        "health check failed; backend taken out",
        Duration::from_secs(2)
    ));
    assert_eq!(
        metric(&s, "sluice_backend_health_check_down", "backend=\"a\""),
        1
    );
    for _ in 0..5 {
        assert_eq!(served_by(&chat_on(&mut c)), "b");
    }
    unhealthy.store(false, Ordering::SeqCst);
    assert!(
        wait_until(Duration::from_secs(6), || served_by(&chat_on(&mut c))
            == "a"),
        "a not back after a good probe"
    );
    assert_eq!(
        metric(&s, "sluice_backend_health_check_down", "backend=\"a\""),
        0
    );
    assert!(
        !s.log().contains("probe-secret"),
        "the credential reached the log"
    );
}

/// With nothing reading the answer (no token limit, no audit, no metrics), a stream cut in
/// the middle of an event is not given an error event — it would be glued to the broken
/// one and read as invalid JSON — but cut without its end, as any broken body is.
#[test]
fn a_stream_cut_mid_event_is_cut_without_an_error_event() {
    let a = Upstream::start(|_, s| {
        let _ = s.write_all(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n",
        );
        let _ = write_chunk(s, sse_chunk("one").as_bytes());
        let _ = write_chunk(s, b"data: {\"choices\":[{\"delta\":{\"content\":\"thr");
        After::Close
    });
    let body = format!(
        "{}\n[admin]\nlisten = \"\"\n",
        priority_pool(&[a.url()], &[0], "")
    );
    let s = Launch::new(&body).start();
    let mut c = s.connect();
    let req = serde_json::to_vec(&chat_body(Some("chat"), true)).unwrap();
    c.send(&request_bytes(
        "POST",
        "/v1/chat/completions",
        &[("Content-Type", "application/json")],
        &req,
    ));
    let mut all = Vec::new();
    c.set_read_timeout(Duration::from_secs(5));
    let _ = c.raw().read_to_end(&mut all);
    let text = String::from_utf8_lossy(&all);
    assert!(text.contains("\"one\"") && text.contains("\"thr"), "{text}");
    assert!(
        !text.contains("\"error\""),
        "an error event glued to a half event: {text}"
    );
    assert!(
        !text.ends_with("0\r\n\r\n"),
        "a cut stream ended cleanly: {text}"
    );
}

/// A backend that never answers is ejected even when `total_timeout` (not
/// `upstream_first_byte`) is what ends its attempts.
#[test]
fn a_hanging_backend_is_ejected_under_total_timeout() {
    let hang = Upstream::start(|_, _| {
        thread::sleep(Duration::from_secs(3));
        After::Close
    });
    let b = switchable("b", flag(false), 200, &[], Duration::ZERO);
    let s = Launch::new(&priority_pool(
        &[hang.url(), b.url()],
        &[0, 1],
        "retry = { total_timeout = \"300ms\" }\noutlier_detection = { consecutive_failures = 2 }",
    ))
    .start();
    let mut c = s.connect();
    for _ in 0..2 {
        let resp = chat_on(&mut c);
        assert_openai_error(&resp, 504, Some("upstream_timeout"));
        assert_eq!(resp.header("x-should-retry"), Some("false"));
    }
    assert_eq!(hang.request_count(), 2);
    for _ in 0..3 {
        assert_eq!(
            served_by(&chat_on(&mut c)),
            "b",
            "the hanging backend is ejected"
        );
    }
    assert_eq!(hang.request_count(), 2);
}

/// A backend in two deployments is ejected only when every pool it is in stays within its
/// `max_ejected_percent`: here one pool has it alone, so it is never ejected, and that
/// pool's requests keep getting its own answer (not `pool_exhausted`).
#[test]
fn a_shared_backend_is_not_ejected_out_of_a_pool_of_one() {
    let a = switchable("a", flag(true), 500, &[], Duration::ZERO);
    let b = switchable("b", flag(false), 200, &[], Duration::ZERO);
    let body = format!(
        "[[backend]]\nname = \"a\"\nkind = \"openai\"\nurl = \"{}\"\n\n\
         [[backend]]\nname = \"b\"\nkind = \"openai\"\nurl = \"{}\"\n\n\
         [[deployment]]\nname = \"chat\"\nbackends = [{{ backend = \"a\" }}, {{ backend = \"b\", priority = 1 }}]\n\
         outlier_detection = {{ consecutive_failures = 2 }}\n\n\
         [[deployment]]\nname = \"solo\"\nbackends = [{{ backend = \"a\" }}]\n",
        a.url(),
        b.url()
    );
    let s = Launch::new(&body).start();
    let mut c = s.connect();
    for _ in 0..4 {
        assert_eq!(served_by(&chat_on(&mut c)), "b");
    }
    assert_eq!(metric(&s, "sluice_backend_ejected", "backend=\"a\""), 0);
    let solo = c.post_json("/v1/chat/completions", &chat_body(Some("solo"), false));
    assert_eq!(solo.status, 500, "a's own answer: {}", solo.text());
}

/// A backend whose health check is removed by a reload while it is down is back in its
/// pool at once: the old config's probes stop with the swap and no longer hold it down.
#[test]
fn removing_a_health_check_brings_a_down_backend_back() {
    let answer = serde_json::to_vec(&upstream_chat_answer("a")).unwrap();
    let a = Upstream::start(move |r, s| {
        if r.head.target() == "/hc" {
            respond(s, 503, &[], b"");
            return After::Close;
        }
        respond(s, 200, &[("content-type", "application/json")], &answer);
        After::KeepAlive
    });
    let b = switchable("b", flag(false), 200, &[], Duration::ZERO);
    let body = |check: &str| {
        format!(
            "[[backend]]\nname = \"a\"\nkind = \"openai\"\nurl = \"{}\"\n{check}\n\n\
             [[backend]]\nname = \"b\"\nkind = \"openai\"\nurl = \"{}\"\n\n\
             [[deployment]]\nname = \"chat\"\nbackends = [{{ backend = \"a\" }}, {{ backend = \"b\", priority = 1 }}]\n",
            a.url(),
            b.url()
        )
    };
    let s = Launch::new(&body(
        "health_check = { path = \"/hc\", interval = \"1s\", unhealthy_threshold = 1 }",
    ))
    .start();
    let mut c = s.connect();
    assert!(wait_until(Duration::from_secs(6), || served_by(&chat_on(
        &mut c
    )) == "b"));
    s.rewrite_config(&body(""));
    assert!(s.wait_log("config reloaded", Duration::from_secs(5)));
    assert!(
        wait_until(Duration::from_secs(6), || served_by(&chat_on(&mut c))
            == "a"),
        "a is still held down by a health check that no longer exists"
    );
    assert_eq!(
        metric(&s, "sluice_backend_health_check_down", "backend=\"a\""),
        0
    );
}
