//! The admin listener, whole-process: `/metrics` parses as the Prometheus text format and its
//! counters equal the traffic sent (requests by deployment, backend, operation and status
//! class; tokens; limit refusals; shadow would-refusals; attempts), `/healthz`, `/readyz`
//! (503 while draining) and `/config` (the running version and source).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::Value;
use support::*;

const KEY: &str = "sk-metrics-test-key-0001";

/// `GET path` on the admin listener: (status, body).
fn admin_get(port: u16, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: admin\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, body.to_owned())
}

/// The scrape, parsed with a Prometheus text-format parser.
fn scrape(port: u16) -> prometheus_parse::Scrape {
    let (status, body) = admin_get(port, "/metrics");
    assert_eq!(status, 200);
    let lines = body.lines().map(|l| Ok(l.to_owned()));
    prometheus_parse::Scrape::parse(lines).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// The value of the sample `name` whose labels include every one of `labels` (0 when none).
fn value(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}

/// Waits (≤ 5 s) until the scrape's `name` with `labels` reads `want`; the last scrape.
fn scrape_until(
    port: u16,
    name: &str,
    labels: &[(&str, &str)],
    want: f64,
) -> prometheus_parse::Scrape {
    let mut last = scrape(port);
    wait_until(Duration::from_secs(5), || {
        last = scrape(port);
        value(&last, name, labels) == want
    });
    last
}

fn body() -> String {
    format!(
        "{MOCK_BODY}{}{}",
        product(
            "main",
            "limits = [\
               { name = \"per-minute\", unit = \"requests\", rate = 4, per = \"minute\" },\
               { name = \"watch\", unit = \"requests\", rate = 1, per = \"minute\", shadow = true },\
             ]"
        ),
        subscription("team-a", "main", &[KEY])
    )
}

#[test]
fn metrics_parse_and_count_exactly_the_traffic_sent() {
    let s = Launch::new(&body()).workers(2).start();
    let admin = s.admin_port();
    let chat = chat_body(Some("gpt-4o"), false);
    let mut tokens = (0.0, 0.0);
    // Three plain chats and one stream are admitted (the limit is four a minute) ...
    for _ in 0..3 {
        let resp = post_with(&s, "/v1/chat/completions", &[("api-key", KEY)], &chat);
        assert_eq!(resp.status, 200);
        let usage = &resp.json()["usage"];
        tokens.0 += usage["prompt_tokens"].as_f64().unwrap();
        tokens.1 += usage["completion_tokens"].as_f64().unwrap();
    }
    let mut c = s.connect();
    // The stream asks for its usage chunk, so the client sees what is counted.
    let mut stream = chat_body(Some("gpt-4o"), true);
    stream["stream_options"] = serde_json::json!({"include_usage": true});
    let stream = serde_json::to_vec(&stream).unwrap();
    let (head, mut sse) = c.stream(
        "POST",
        "/v1/chat/completions",
        &[("api-key", KEY), ("content-type", "application/json")],
        &stream,
    );
    assert_eq!(head.status(), 200);
    for event in sse.collect_rest() {
        let Some(data) = event_data(&event) else {
            continue;
        };
        if let Ok(chunk) = serde_json::from_str::<Value>(data) {
            if let Some(u) = chunk.get("usage").filter(|u| u.is_object()) {
                tokens.0 += u["prompt_tokens"].as_f64().unwrap();
                tokens.1 += u["completion_tokens"].as_f64().unwrap();
            }
        }
    }
    // ... two more are refused by it, and two keys are wrong.
    for _ in 0..2 {
        let resp = post_with(&s, "/v1/chat/completions", &[("api-key", KEY)], &chat);
        assert_eq!(resp.status, 429);
    }
    for _ in 0..2 {
        let resp = post_with(&s, "/v1/chat/completions", &[("api-key", "nope")], &chat);
        assert_eq!(resp.status, 401);
    }

    let ok = [
        ("deployment", "gpt-4o"),
        ("backend", "mock-a"),
        ("operation", "chat"),
        ("status_class", "2xx"),
    ];
    let m = scrape_until(admin, "sluice_requests_total", &ok, 4.0);
    assert_eq!(value(&m, "sluice_requests_total", &ok), 4.0);
    assert_eq!(
        value(
            &m,
            "sluice_requests_total",
            &[
                ("deployment", "gpt-4o"),
                ("backend", ""),
                ("status_class", "4xx")
            ]
        ),
        2.0,
        "the 429s"
    );
    assert_eq!(
        value(
            &m,
            "sluice_requests_total",
            &[("deployment", ""), ("status_class", "4xx")]
        ),
        2.0,
        "the 401s (no deployment known)"
    );
    assert_eq!(value(&m, "sluice_requests_total", &[]), 8.0);
    assert_eq!(
        value(
            &m,
            "sluice_tokens_total",
            &[("deployment", "gpt-4o"), ("kind", "prompt")]
        ),
        tokens.0
    );
    assert_eq!(
        value(
            &m,
            "sluice_tokens_total",
            &[("deployment", "gpt-4o"), ("kind", "completion")]
        ),
        tokens.1
    );
    assert_eq!(
        value(
            &m,
            "sluice_limit_rejections_total",
            &[
                ("limit", "product:main/per-minute"),
                ("reason", "requests_rate_limited")
            ]
        ),
        2.0
    );
    // The shadow limit (one a minute) would have refused every admitted request but the
    // first.
    assert_eq!(
        value(
            &m,
            "sluice_shadow_limit_would_reject_total",
            &[("limit", "product:main/watch")]
        ),
        3.0
    );
    assert_eq!(
        value(
            &m,
            "sluice_upstream_attempts_total",
            &[("deployment", "gpt-4o"), ("outcome", "answered")]
        ),
        4.0
    );
    assert_eq!(
        value(
            &m,
            "sluice_upstream_latency_seconds_count",
            &[("deployment", "gpt-4o"), ("backend", "mock-a")]
        ),
        4.0
    );
    assert_eq!(
        value(
            &m,
            "sluice_time_to_first_token_seconds_count",
            &[("deployment", "gpt-4o")]
        ),
        1.0
    );
    assert_eq!(
        value(&m, "sluice_open_connections", &[]),
        1.0,
        "the stream's connection is still open"
    );
    assert_eq!(value(&m, "sluice_config_reloads_total", &[]), 0.0);
}

#[test]
fn health_readiness_and_config() {
    let mut s = Launch::new(&format!(
        "{MOCK_BODY}\n[[backend]]\nname = \"slow\"\nkind = \"mock\"\ncompletion_tokens = 30\ntokens_per_second = 10\n\n[[deployment]]\nname = \"slow\"\nbackends = [{{ backend = \"slow\" }}]\n"
    ))
    .server("shutdown_grace = \"10s\"")
    .start();
    let admin = s.admin_port();
    assert_eq!(admin_get(admin, "/healthz"), (200, "ok\n".to_owned()));
    assert_eq!(admin_get(admin, "/readyz"), (200, "ready\n".to_owned()));
    let (status, config) = admin_get(admin, "/config");
    assert_eq!(status, 200);
    let config: Value = serde_json::from_str(&config).unwrap();
    let text = std::fs::read(&s.config_path).unwrap();
    let digest: String = {
        use sha2::Digest;
        sha2::Sha256::digest(&text)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    assert_eq!(config["version"], format!("sha256:{digest}"));
    assert_eq!(config["source"], s.config_path.display().to_string());
    assert_eq!(config["generation"], 1);
    assert_eq!(admin_get(admin, "/nope").0, 404);

    // A three-second stream keeps the drain going: /readyz says so meanwhile.
    let mut c = s.connect();
    let stream = serde_json::to_vec(&chat_body(Some("slow"), true)).unwrap();
    let (head, mut sse) = c.stream(
        "POST",
        "/v1/chat/completions",
        &[("content-type", "application/json")],
        &stream,
    );
    assert_eq!(head.status(), 200);
    assert!(sse.next_event().is_some());
    s.signal("TERM");
    assert!(s.wait_log("shutting down", Duration::from_secs(5)));
    assert_eq!(admin_get(admin, "/readyz"), (503, "draining\n".to_owned()));
    assert_eq!(admin_get(admin, "/healthz").0, 200);
    sse.collect_rest();
    assert!(s.wait_exit(Duration::from_secs(15)).is_some());
}

#[test]
fn a_reload_is_counted_and_changes_the_config_version() {
    let s = Launch::new(MOCK_BODY).start();
    let admin = s.admin_port();
    let (_, before) = admin_get(admin, "/config");
    let before: Value = serde_json::from_str(&before).unwrap();
    s.rewrite_config(&format!("{MOCK_BODY}\n# a comment changes the version\n"));
    s.signal("HUP");
    scrape_until(
        admin,
        "sluice_config_reloads_total",
        &[("outcome", "ok")],
        1.0,
    );
    let (_, after) = admin_get(admin, "/config");
    let after: Value = serde_json::from_str(&after).unwrap();
    assert_ne!(before["version"], after["version"]);
    assert_eq!(after["generation"], 2);
    std::fs::write(&s.config_path, "[server\nbroken").unwrap();
    s.signal("HUP");
    let m = scrape_until(
        admin,
        "sluice_config_reloads_total",
        &[("outcome", "error")],
        1.0,
    );
    assert_eq!(
        value(&m, "sluice_config_reloads_total", &[("outcome", "error")]),
        1.0
    );
}

#[test]
fn idle_and_slow_admin_clients_do_not_hold_readiness_up() {
    let s = Launch::new(MOCK_BODY).start();
    let admin = s.admin_port();
    // More idle connections than the listener serves at once, and one sending a byte now
    // and then: the oldest idle ones make room for a probe.
    let idle: Vec<TcpStream> = (0..40)
        .map(|_| TcpStream::connect(("127.0.0.1", admin)).unwrap())
        .collect();
    let mut slow = TcpStream::connect(("127.0.0.1", admin)).unwrap();
    slow.write_all(b"G").unwrap();
    let started = std::time::Instant::now();
    assert_eq!(admin_get(admin, "/readyz"), (200, "ready\n".to_owned()));
    // Not a timing assert on performance: the idle clients' 5 s must not be waited out.
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "readiness waited on idle clients"
    );
    drop(idle);
}

#[test]
fn a_reload_that_turns_the_admin_listener_off_keeps_it_counting_until_restart() {
    let s = Launch::new(MOCK_BODY).start();
    let admin = s.admin_port();
    let chat = chat_body(Some("gpt-4o"), false);
    assert_eq!(
        post_with(&s, "/v1/chat/completions", &[], &chat).status,
        200
    );
    // The listener is bound at start and serves on; what it shows must go on counting.
    s.rewrite_config(&format!("{MOCK_BODY}\n[admin]\nlisten = \"\"\n"));
    s.signal("HUP");
    scrape_until(
        admin,
        "sluice_config_reloads_total",
        &[("outcome", "ok")],
        1.0,
    );
    for _ in 0..2 {
        assert_eq!(
            post_with(&s, "/v1/chat/completions", &[], &chat).status,
            200
        );
    }
    let m = scrape_until(
        admin,
        "sluice_requests_total",
        &[("deployment", "gpt-4o")],
        3.0,
    );
    assert_eq!(
        value(&m, "sluice_requests_total", &[("deployment", "gpt-4o")]),
        3.0
    );
}
