//! Whole-process tests of request limits: rates (429 with `Retry-After` and
//! `retry-after-ms`), bursts, refill, quotas (403), scopes, `x-ratelimit-*` headers, shadow
//! mode, client-IP limits and the trace header.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use support::*;

const KEY_A: &str = "test-key-limits-team-a";
const KEY_B: &str = "test-key-limits-team-b";

/// Product `p` with `limits` and two subscriptions of it, `team-a` (KEY_A) and `team-b`
/// (KEY_B), over the mock deployments.
fn start_with(product_extra: &str) -> Sluice {
    let mut body = String::from(MOCK_DEPLOYMENTS);
    body.push_str(&product("p", product_extra));
    body.push_str(&subscription("team-a", "p", &[KEY_A]));
    body.push_str(&subscription("team-b", "p", &[KEY_B]));
    Launch::new(&body).start()
}

#[test]
fn request_rate_over_its_burst_is_429_with_retry_after() {
    let s = start_with(r#"limits = [{ unit = "requests", rate = 2, per = "minute" }]"#);
    for i in 0..2 {
        let resp = chat(&s, KEY_A);
        assert_eq!(resp.status, 200, "request {i}: {}", resp.text());
    }
    let resp = chat(&s, KEY_A);
    let ms = assert_rate_limited(&resp);
    // One request comes back every 30 s.
    assert!(
        ms > 1000.0 && ms <= 30_000.0,
        "retry-after-ms {ms} for 2 a minute"
    );
    let secs = num_header(&resp, "retry-after");
    assert!(
        (2..=30).contains(&secs),
        "Retry-After {secs} for 2 a minute"
    );
    // The Azure path form is counted and refused alike.
    let resp = post_with(
        &s,
        "/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21",
        &[("api-key", KEY_A)],
        &chat_body(None, false),
    );
    assert_rate_limited(&resp);
    // A streaming request is refused with the JSON error, not an event stream.
    let resp = chat_as(&s, KEY_A, &chat_body(Some("gpt-4o"), true));
    assert_rate_limited(&resp);
    // Scope "subscription" (the default on products): team b has its own counter.
    let resp = chat(&s, KEY_B);
    assert_eq!(resp.status, 200, "team b: {}", resp.text());
}

/// The refill itself is decided on a fake clock, without sleeping: the pipeline's unit test
/// `a_per_second_rate_refills_after_retry_after_on_the_clock` (dataplane/src/policy/pipeline).
#[test]
fn per_second_rate_refills_after_retry_after() {
    let s = start_with(r#"limits = [{ unit = "requests", rate = 5, per = "second", burst = 1 }]"#);
    let resp = chat(&s, KEY_A);
    assert_eq!(resp.status, 200, "{}", resp.text());
    let resp = chat(&s, KEY_A);
    let ms = assert_rate_limited(&resp);
    assert_eq!(
        num_header(&resp, "retry-after"),
        1,
        "Retry-After rounds 200 ms up to 1 s"
    );
    assert!(
        ms > 0.0 && ms <= 200.0,
        "retry-after-ms {ms} for 5 a second with burst 1"
    );
}

#[test]
fn burst_lets_that_many_pass_at_once() {
    let s = start_with(r#"limits = [{ unit = "requests", rate = 1, per = "minute", burst = 3 }]"#);
    for i in 0..3 {
        let resp = chat(&s, KEY_A);
        assert_eq!(
            resp.status,
            200,
            "request {i} of the burst: {}",
            resp.text()
        );
    }
    assert_rate_limited(&chat(&s, KEY_A));
}

#[test]
fn a_refused_request_never_reaches_the_backend() {
    let up = Upstream::json(upstream_chat_answer("gpt-4o"));
    let mut body = openai_backend_body(&up.url(), "gpt-4o");
    body.push_str(&product(
        "p",
        r#"limits = [{ unit = "requests", rate = 1, per = "minute" }]"#,
    ));
    body.push_str(&subscription("team-a", "p", &[KEY_A]));
    let s = Launch::new(&body).start();
    assert_eq!(chat(&s, KEY_A).status, 200);
    assert_rate_limited(&chat(&s, KEY_A));
    assert_rate_limited(&chat(&s, KEY_A));
    assert_eq!(
        up.request_count(),
        1,
        "refused requests reached the backend"
    );
}

#[test]
fn request_quota_over_is_403() {
    let s = start_with(r#"limits = [{ unit = "requests", quota = 2, per = "hour" }]"#);
    for i in 0..2 {
        let resp = chat(&s, KEY_A);
        assert_eq!(resp.status, 200, "request {i}: {}", resp.text());
    }
    let resp = chat(&s, KEY_A);
    assert_openai_error(&resp, 403, Some("quota_exceeded"));
    let resp = chat(&s, KEY_A);
    assert_openai_error(&resp, 403, Some("quota_exceeded"));
    assert_eq!(chat(&s, KEY_B).status, 200, "team b has its own quota");
}

#[test]
fn ratelimit_headers_name_the_tightest_limit_and_decrease() {
    let s = start_with(
        r#"limits = [
  { unit = "requests", rate = 1000, per = "minute" },
  { unit = "requests", rate = 20, per = "minute" },
  { unit = "tokens", rate = 600, per = "minute" },
]"#,
    );
    // (remaining requests, remaining tokens, usage) of each answer.
    let mut seen = Vec::new();
    for i in 0..4 {
        let resp = chat(&s, KEY_A);
        assert_eq!(resp.status, 200, "request {i}: {}", resp.text());
        assert_eq!(
            num_header(&resp, "x-ratelimit-limit-requests"),
            20,
            "the tightest requests limit"
        );
        assert_eq!(num_header(&resp, "x-ratelimit-limit-tokens"), 600);
        seen.push((
            remaining_requests(&resp),
            remaining_tokens(&resp),
            usage_total(&resp.json()),
        ));
    }
    let requests: Vec<i64> = seen.iter().map(|s| s.0).collect();
    assert_eq!(
        requests,
        [19, 18, 17, 16],
        "remaining requests, call by call"
    );
    for pair in seen.windows(2) {
        let ((_, t0, u0), (_, t1, _)) = (pair[0], pair[1]);
        // Each call is charged its usage (its reservation is refunded down to it), and the
        // refill of 10 tokens a second adds at most a token or two between calls.
        assert!(
            (0..600).contains(&t0) && (u0 - 2..=u0).contains(&(t0 - t1)),
            "remaining tokens must go down by each call's usage ({u0}): \
             (remaining requests, remaining tokens, usage) = {seen:?}"
        );
    }
    // Team b's counters are its own.
    let resp = chat(&s, KEY_B);
    assert_eq!(remaining_requests(&resp), 19);
}

#[test]
fn ratelimit_headers_only_for_the_units_limited() {
    let s = start_with(r#"limits = [{ unit = "requests", rate = 100, per = "minute" }]"#);
    let resp = chat(&s, KEY_A);
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(num_header(&resp, "x-ratelimit-limit-requests"), 100);
    assert_eq!(num_header(&resp, "x-ratelimit-remaining-requests"), 99);
    assert!(
        !resp.head.has("x-ratelimit-limit-tokens")
            && !resp.head.has("x-ratelimit-remaining-tokens"),
        "tokens headers without a tokens limit: {:?}",
        resp.head.headers
    );

    let s = start_with(r#"limits = [{ unit = "tokens", rate = 100000, per = "minute" }]"#);
    let resp = chat(&s, KEY_A);
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(num_header(&resp, "x-ratelimit-limit-tokens"), 100000);
    assert!(remaining_tokens(&resp) < 100000);
    assert!(
        !resp.head.has("x-ratelimit-limit-requests")
            && !resp.head.has("x-ratelimit-remaining-requests"),
        "requests headers without a requests limit: {:?}",
        resp.head.headers
    );
}

#[test]
fn deployment_limit_is_shared_by_every_subscription() {
    let body = MOCK_DEPLOYMENTS.replace(
        "name = \"gpt-4o\"\nbackends = [{ backend = \"mock-a\" }]\n",
        "name = \"gpt-4o\"\nbackends = [{ backend = \"mock-a\" }]\n\
         limits = [{ unit = \"requests\", rate = 1, per = \"minute\" }]\n",
    );
    assert_ne!(body, MOCK_DEPLOYMENTS, "config edit failed");
    let mut body = body;
    body.push_str(&product("p", ""));
    body.push_str(&subscription("team-a", "p", &[KEY_A]));
    body.push_str(&subscription("team-b", "p", &[KEY_B]));
    let s = Launch::new(&body).start();
    assert_eq!(chat(&s, KEY_A).status, 200);
    assert_rate_limited(&chat(&s, KEY_B));
    // Another deployment is not counted.
    assert_eq!(
        chat_as(&s, KEY_B, &chat_body(Some("other"), false)).status,
        200
    );
}

#[test]
fn subscription_deployment_scope_counts_each_pair() {
    let s = start_with(
        r#"limits = [{ unit = "requests", rate = 1, per = "minute", scope = "subscription_deployment" }]"#,
    );
    assert_eq!(chat(&s, KEY_A).status, 200);
    assert_eq!(
        chat_as(&s, KEY_A, &chat_body(Some("other"), false)).status,
        200
    );
    assert_eq!(chat(&s, KEY_B).status, 200);
    assert_rate_limited(&chat(&s, KEY_A));
    assert_rate_limited(&chat_as(&s, KEY_A, &chat_body(Some("other"), false)));
}

#[test]
fn shadow_limit_refuses_nothing_and_logs() {
    let mut body = String::from(MOCK_DEPLOYMENTS);
    body.push_str(&product(
        "demo",
        r#"limits = [{ unit = "requests", rate = 1, per = "minute", shadow = true }]"#,
    ));
    body.push_str(&subscription("team-a", "demo", &[KEY_A]));
    let s = Launch::new(&body).start();
    for i in 0..4 {
        let resp = chat(&s, KEY_A);
        assert_eq!(
            resp.status,
            200,
            "request {i} over a shadow limit: {}",
            resp.text()
        );
    }
    let found = wait_until(Duration::from_secs(3), || {
        s.log()
            .lines()
            .any(|l| l.contains("shadow") && l.contains("product:demo#0"))
    });
    assert!(
        found,
        "no log line naming `shadow` and `product:demo#0`:\n{}",
        s.log()
    );
}

#[test]
fn shadow_quota_refuses_nothing_and_logs() {
    let mut body = String::from(MOCK_DEPLOYMENTS);
    body.push_str(&product(
        "demo",
        r#"limits = [
  { unit = "requests", rate = 1000, per = "minute" },
  { unit = "tokens", quota = 50, per = "day", shadow = true },
]"#,
    ));
    body.push_str(&subscription("team-a", "demo", &[KEY_A]));
    let s = Launch::new(&body).start();
    for i in 0..3 {
        let resp = chat(&s, KEY_A);
        assert_eq!(resp.status, 200, "request {i}: {}", resp.text());
    }
    let found = wait_until(Duration::from_secs(3), || {
        s.log()
            .lines()
            .any(|l| l.contains("shadow") && l.contains("product:demo#1"))
    });
    assert!(
        found,
        "no log line naming `shadow` and `product:demo#1`:\n{}",
        s.log()
    );
}

#[test]
fn client_ip_limit_applies_without_auth() {
    let s = Launch::new(MOCK_DEPLOYMENTS)
        .server(r#"client_ip_limits = [{ unit = "requests", rate = 2, per = "minute" }]"#)
        .start();
    for i in 0..2 {
        let resp = post_with(
            &s,
            "/v1/chat/completions",
            &[],
            &chat_body(Some("gpt-4o"), false),
        );
        assert_eq!(resp.status, 200, "request {i}: {}", resp.text());
    }
    let resp = post_with(
        &s,
        "/v1/chat/completions",
        &[],
        &chat_body(Some("gpt-4o"), false),
    );
    assert_rate_limited(&resp);
}

// ---------------------------------------------------------------------------------------------
// Trace

const KEY_TRACED: &str = "test-key-traced-subscription";
const KEY_PLAIN: &str = "test-key-untraced-subscription";

fn start_traced(server: &str) -> Sluice {
    let mut body = String::from(MOCK_DEPLOYMENTS);
    body.push_str(&product(
        "traced",
        r#"trace = true
limits = [
  { unit = "requests", rate = 1000, per = "minute" },
  { unit = "tokens", rate = 100000, per = "minute" },
]"#,
    ));
    body.push_str(&product(
        "plain",
        r#"limits = [{ unit = "requests", rate = 1000, per = "minute" }]"#,
    ));
    body.push_str(&subscription("team-traced", "traced", &[KEY_TRACED]));
    body.push_str(&subscription("team-plain", "plain", &[KEY_PLAIN]));
    Launch::new(&body).server(server).start()
}

#[test]
fn trace_header_names_route_subscription_limits_and_backend() {
    let s = start_traced("");
    for ask in [("Ocp-Apim-Trace", "true"), ("x-sluice-trace", "true")] {
        let resp = post_with(
            &s,
            "/v1/chat/completions",
            &[("api-key", KEY_TRACED), ask],
            &chat_body(Some("gpt-4o"), false),
        );
        assert_eq!(resp.status, 200, "{}", resp.text());
        let trace = resp
            .header("x-sluice-trace")
            .unwrap_or_else(|| panic!("no x-sluice-trace for {ask:?}: {:?}", resp.head.headers))
            .to_string();
        let remaining = resp
            .header("x-ratelimit-remaining-requests")
            .expect("remaining requests")
            .to_string();
        for needle in [
            "gpt-4o",
            "team-traced",
            "product:traced#0",
            "product:traced#1",
            "mock-a",
            remaining.as_str(),
        ] {
            assert!(
                trace.contains(needle),
                "trace for {ask:?} does not name {needle:?}: {trace}"
            );
        }
    }
}

#[test]
fn no_trace_header_without_asking_or_for_a_product_without_trace() {
    let s = start_traced("");
    let resp = chat(&s, KEY_TRACED);
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert!(
        !resp.head.has("x-sluice-trace"),
        "trace without asking: {:?}",
        resp.head.headers
    );
    for ask in [("Ocp-Apim-Trace", "true"), ("x-sluice-trace", "true")] {
        let resp = post_with(
            &s,
            "/v1/chat/completions",
            &[("api-key", KEY_PLAIN), ask],
            &chat_body(Some("gpt-4o"), false),
        );
        assert_eq!(resp.status, 200, "{}", resp.text());
        assert!(
            !resp.head.has("x-sluice-trace"),
            "trace for a product without trace: {:?}",
            resp.head.headers
        );
    }
}

#[test]
fn no_trace_header_when_the_server_turns_it_off() {
    let s = start_traced("trace_header = false");
    let resp = post_with(
        &s,
        "/v1/chat/completions",
        &[("api-key", KEY_TRACED), ("Ocp-Apim-Trace", "true")],
        &chat_body(Some("gpt-4o"), false),
    );
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert!(
        !resp.head.has("x-sluice-trace"),
        "trace with trace_header = false: {:?}",
        resp.head.headers
    );
}

#[test]
fn limits_survive_a_reload() {
    // The limiter state is carried across a reload that keeps the limit.
    let mut body = String::from(MOCK_DEPLOYMENTS);
    body.push_str(&product(
        "p",
        r#"limits = [{ unit = "requests", rate = 1, per = "minute" }]"#,
    ));
    body.push_str(&subscription("team-a", "p", &[KEY_A]));
    let s = Launch::new(&body).start();
    assert_eq!(chat(&s, KEY_A).status, 200);
    assert_rate_limited(&chat(&s, KEY_A));
    // The same config plus a new subscription: team a's counter must still be spent.
    let mut more = body.clone();
    more.push_str(&subscription("team-b", "p", &[KEY_B]));
    s.rewrite_config(&more);
    let start = Instant::now();
    let reloaded = wait_until(Duration::from_secs(5), || chat(&s, KEY_B).status == 200);
    assert!(
        reloaded,
        "reload with team b not picked up in {:?}",
        start.elapsed()
    );
    assert_rate_limited(&chat(&s, KEY_A));
}
