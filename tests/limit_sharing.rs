//! Whole-process tests of limits shared by several workers, and of what a refused request
//! costs (README "Access and limits").
//!
//! Across workers (`--workers 2` and `4`): rates are one node-wide GCRA bucket that each
//! worker leases from in batches of `burst / (4 × workers)` ([`LeaseConfig::for_spec`]), so
//! over any period at most `rate + burst + workers × batch` pass, one connection (one worker)
//! can spend the whole limit, and `x-ratelimit-remaining-*` — the answering worker's view —
//! never reads above what truly remains, and reads low by at most the other workers' leases.
//! A worker with a bucket of its own would admit `workers × burst` and fails these tests.
//!
//! Given back: [`admit`](sluice::policy::admission::admit) decides a request's limits in
//! order — the product's, then the deployment's, then the tokens-unit client-IP limits —
//! and when one refuses, everything the earlier ones took (a request, a token reservation,
//! from a rate or a quota) goes back. The requests-unit client-IP limits are decided at the
//! head, before all of these, and are never given back. Each order is checked through the
//! `x-sluice-trace` header, which names every limit's remaining after each admission.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use sluice::limit::{LeaseConfig, RateSpec};
use support::*;

// ---------------------------------------------------------------------------------------------
// One limit across workers

/// The deployment limit's rate: requests per minute (a token every 0.75 s: refill during a
/// test is a few tokens, and is allowed for from the time it took).
const RATE: u64 = 80;
/// Its bucket: the rate, so `x-ratelimit-remaining-requests` (never above the limit, the
/// rate) reads the bucket's whole range.
const BURST: u64 = 80;

/// The lease batch each of `workers` workers takes from the limit, as the gateway computes it.
fn lease_batch(workers: usize) -> u64 {
    let spec = RateSpec::per(RATE, Duration::from_secs(60)).with_burst(BURST);
    LeaseConfig::for_spec(&spec, workers).batch
}

/// Tokens the limit can have refilled within `elapsed` (rounded up, plus one for the
/// bucket's own rounding).
fn refill(elapsed: Duration) -> u64 {
    (elapsed.as_secs_f64() * RATE as f64 / 60.0).ceil() as u64 + 1
}

/// `gpt-4o` on the built-in mock with the requests limit `RATE` a minute, bucket `BURST`,
/// no authentication.
fn start_limited(workers: usize) -> Sluice {
    let body = format!(
        r#"
[[backend]]
name = "mock-a"
kind = "mock"
model = "gpt-4o-mock"
completion_tokens = 16

[[deployment]]
name = "gpt-4o"
backends = [{{ backend = "mock-a" }}]
limits = [{{ unit = "requests", rate = {RATE}, per = "minute", burst = {BURST} }}]
"#
    );
    Launch::new(&body).workers(workers).start()
}

/// One chat on `c`: `Some(remaining requests)` when admitted, `None` when refused by the rate.
fn try_chat(c: &mut Client) -> Option<u64> {
    let resp = c.post_json("/v1/chat/completions", &chat_body(Some("gpt-4o"), false));
    match resp.status {
        200 => {
            assert_eq!(num_header(&resp, "x-ratelimit-limit-requests"), RATE as i64);
            Some(u64::try_from(num_header(&resp, "x-ratelimit-remaining-requests")).unwrap())
        }
        _ => {
            assert_rate_limited(&resp);
            None
        }
    }
}

/// An admitted request seen by a client thread.
struct Admitted {
    sent: Instant,
    answered: Instant,
    remaining: u64,
}

/// `4 × workers` connections at once, 600 requests in all, against a fresh limit: at most
/// `rate + burst + workers × batch` pass — over the test's interval, shorter than the minute
/// that bound is for, the rate's part is what refilled meanwhile: `BURST + refill + workers ×
/// batch` — at least `BURST − workers × batch` (only leases still held at the end are
/// unspent), and no answer reads more remaining than there was.
fn burst_stays_within_the_bound(workers: usize) {
    let batch = lease_batch(workers);
    let s = start_limited(workers);
    let connections = 4 * workers;
    let admitted = Mutex::new(Vec::new());
    let started = Instant::now();
    thread::scope(|scope| {
        for _ in 0..connections {
            scope.spawn(|| {
                let mut c = s.connect();
                for _ in 0..600 / connections {
                    let sent = Instant::now();
                    if let Some(remaining) = try_chat(&mut c) {
                        let answered = Instant::now();
                        admitted.lock().unwrap().push(Admitted {
                            sent,
                            answered,
                            remaining,
                        });
                    }
                }
            });
        }
    });
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(60), "took {elapsed:?}");
    let admitted = admitted.into_inner().unwrap();
    let n = admitted.len() as u64;
    let bound = BURST + refill(elapsed) + workers as u64 * batch;
    assert!(
        n <= bound,
        "{n} admitted with {workers} workers in {elapsed:?}; the bound is \
         burst + refill + workers × batch = {bound}"
    );
    assert!(
        n >= BURST - workers as u64 * batch,
        "only {n} of a {BURST} burst admitted with {workers} workers"
    );
    // An answer was decided after every answer received before it was sent: what truly
    // remained then is at most BURST + refill − those − itself.
    for x in &admitted {
        let before = admitted.iter().filter(|y| y.answered < x.sent).count() as u64;
        let truly = (BURST + refill(elapsed)).saturating_sub(before + 1);
        assert!(
            x.remaining <= truly,
            "remaining {} read above the true remaining {truly} ({before} admitted before it)",
            x.remaining
        );
    }
}

#[test]
fn a_burst_on_two_workers_stays_within_the_bound() {
    assert_eq!(lease_batch(2), 10, "batch = burst / (4 × workers)");
    burst_stays_within_the_bound(2);
}

#[test]
fn a_burst_on_four_workers_stays_within_the_bound() {
    assert_eq!(lease_batch(4), 5, "batch = burst / (4 × workers)");
    burst_stays_within_the_bound(4);
}

/// Requests one at a time, in turn over `4 × workers` connections (so over every worker),
/// until each connection's last answer is a refusal (then no worker holds a lease): exactly
/// the bucket (plus refill) was admitted, and the i-th admission reads a remaining between
/// `BURST − i − (workers − 1) × batch` (the other workers' unspent leases) and the truth.
fn turns_over_connections_spend_exactly_the_limit(workers: usize) {
    let batch = lease_batch(workers);
    let s = start_limited(workers);
    let mut conns: Vec<Client> = (0..4 * workers).map(|_| s.connect()).collect();
    let mut refused_last = vec![false; conns.len()];
    let started = Instant::now();
    let mut admitted = 0u64;
    for i in 0..4 * BURST as usize {
        let k = i % conns.len();
        match try_chat(&mut conns[k]) {
            Some(remaining) => {
                admitted += 1;
                refused_last[k] = false;
                let truly = (BURST + refill(started.elapsed())).saturating_sub(admitted);
                let low = BURST.saturating_sub(admitted + (workers as u64 - 1) * batch);
                assert!(
                    (low..=truly).contains(&remaining),
                    "admission {admitted}: remaining {remaining}, want {low}..={truly}"
                );
            }
            None => refused_last[k] = true,
        }
        if refused_last.iter().all(|&r| r) {
            break;
        }
    }
    assert!(
        refused_last.iter().all(|&r| r),
        "still admitting after {} requests ({admitted} admitted)",
        4 * BURST
    );
    let most = BURST + refill(started.elapsed());
    assert!(
        (BURST..=most).contains(&admitted),
        "{admitted} admitted over {workers} workers, want the whole bucket: {BURST}..={most}"
    );
}

#[test]
fn turns_over_two_workers_spend_exactly_the_limit() {
    turns_over_connections_spend_exactly_the_limit(2);
}

#[test]
fn turns_over_four_workers_spend_exactly_the_limit() {
    turns_over_connections_spend_exactly_the_limit(4);
}

/// One connection (one worker) spends the whole bucket, and each answer's remaining is the
/// truth: `BURST − i` after the i-th (refill aside).
fn one_connection_spends_the_whole_limit(workers: usize) {
    let s = start_limited(workers);
    let mut c = s.connect();
    let started = Instant::now();
    let mut admitted = 0u64;
    while let Some(remaining) = try_chat(&mut c) {
        admitted += 1;
        let truly = (BURST + refill(started.elapsed())).saturating_sub(admitted);
        assert!(
            (BURST.saturating_sub(admitted)..=truly).contains(&remaining),
            "admission {admitted}: remaining {remaining}, want {}..={truly}",
            BURST - admitted.min(BURST)
        );
        assert!(admitted <= 2 * BURST, "never refused");
    }
    let most = BURST + refill(started.elapsed());
    assert!(
        (BURST..=most).contains(&admitted),
        "one connection on {workers} workers got {admitted}, want {BURST}..={most}"
    );
}

#[test]
fn one_connection_spends_the_whole_limit_on_two_workers() {
    one_connection_spends_the_whole_limit(2);
}

#[test]
fn one_connection_spends_the_whole_limit_on_four_workers() {
    one_connection_spends_the_whole_limit(4);
}

// ---------------------------------------------------------------------------------------------
// What a refused request gives back

const KEY: &str = "test-key-limits-given-back";

/// Product `p` (trace on) with `product_limits`, one subscription (KEY), deployments `gpt-4o`
/// and `other` on the mock (heuristic estimator) with `gpt4o_limits` / `other_limits`, and
/// `[server]` lines `server`.
fn start_product(
    product_limits: &str,
    gpt4o_limits: &str,
    other_limits: &str,
    server: &str,
) -> Sluice {
    let body = format!(
        r#"
[[backend]]
name = "mock-a"
kind = "mock"
model = "gpt-4o-mock"
completion_tokens = 16

[[deployment]]
name = "gpt-4o"
backends = [{{ backend = "mock-a" }}]
tokens = {{ estimator = "heuristic" }}
limits = [{gpt4o_limits}]

[[deployment]]
name = "other"
backends = [{{ backend = "mock-a" }}]
tokens = {{ estimator = "heuristic" }}
limits = [{other_limits}]
{}{}"#,
        product("p", &format!("trace = true\nlimits = [{product_limits}]")),
        subscription("team-a", "p", &[KEY]),
    );
    Launch::new(&body).server(server).start()
}

/// A chat to `deployment` asking for `max_tokens`, with the key and the trace, on `c`.
fn ask(c: &mut Client, deployment: &str, max_tokens: u64) -> Response {
    let mut body = chat_body(Some(deployment), false);
    body["max_tokens"] = Value::from(max_tokens);
    c.request(
        "POST",
        "/v1/chat/completions",
        &[
            ("Content-Type", "application/json"),
            ("api-key", KEY),
            ("x-sluice-trace", "true"),
        ],
        &serde_json::to_vec(&body).unwrap(),
    )
}

/// An admitted answer: each named limit's remaining (from the trace) and its usage.
struct Seen {
    remaining: Vec<i64>,
    usage: i64,
}

/// `ask`, which must be admitted; reads the remaining of each limit in `labels`.
fn admitted(c: &mut Client, deployment: &str, labels: &[&str]) -> Seen {
    let resp = ask(c, deployment, 100);
    assert_eq!(resp.status, 200, "{deployment}: {}", resp.text());
    let trace = resp
        .header("x-sluice-trace")
        .unwrap_or_else(|| panic!("no trace: {:?}", resp.head.headers))
        .to_string();
    let remaining = labels
        .iter()
        .map(|label| {
            let at = trace
                .find(&format!("limit {label} allow remaining="))
                .unwrap_or_else(|| panic!("trace names no decision of {label}: {trace}"));
            let rest = &trace[at..];
            let digits: String = rest[rest.find('=').unwrap() + 1..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            digits.parse().unwrap()
        })
        .collect();
    Seen {
        remaining,
        usage: usage_total(&resp.json()),
    }
}

/// `ask`, which must be refused by `label` with `status`.
fn refused(c: &mut Client, deployment: &str, max_tokens: u64, status: u16, label: &str) {
    let resp = ask(c, deployment, max_tokens);
    let code = if status == 429 {
        "rate_limit_exceeded"
    } else {
        "quota_exceeded"
    };
    assert_openai_error(&resp, status, Some(code));
    let message = resp.json()["error"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        message.contains(&format!("{label})")) || message.contains(&format!("{label} ")),
        "refused by another limit than {label}: {message}"
    );
}

/// Checks each limit's drop between two observations against what the admitted requests
/// between them truly cost: `(label, expected drop, refill allowance)`.
fn assert_drops(before: &Seen, after: &Seen, expected: &[(&str, i64, i64)]) {
    for (i, &(label, cost, refill)) in expected.iter().enumerate() {
        let drop = before.remaining[i] - after.remaining[i];
        assert!(
            (cost - refill..=cost).contains(&drop),
            "{label} went down by {drop}, want {cost} (refill up to {refill}): \
             a refused request kept what it took"
        );
    }
}

#[test]
fn a_later_product_limit_refusing_gives_back_the_earlier_product_limits() {
    // Product limits are decided in order; #3 (per deployment) refuses the third request to
    // gpt-4o after #0–#2 granted theirs.
    let s = start_product(
        r#"
  { unit = "requests", rate = 10, per = "minute" },
  { unit = "requests", quota = 10, per = "hour" },
  { unit = "tokens", rate = 2000, per = "minute" },
  { unit = "requests", rate = 2, per = "minute", scope = "subscription_deployment" },
"#,
        "",
        "",
        "",
    );
    let labels = ["product:p#0", "product:p#1", "product:p#2"];
    let mut c = s.connect();
    let started = Instant::now();
    let first = admitted(&mut c, "other", &labels);
    let g1 = admitted(&mut c, "gpt-4o", &labels);
    let g2 = admitted(&mut c, "gpt-4o", &labels);
    for _ in 0..3 {
        refused(&mut c, "gpt-4o", 400, 429, "product:p#3");
    }
    let last = admitted(&mut c, "other", &labels);
    let secs = started.elapsed().as_secs_f64();
    // Between the two observations: g1, g2 and the last request itself were admitted (one
    // request each; the tokens of the first three settled to their usage, the last
    // reserved as the first did).
    assert_drops(
        &first,
        &last,
        &[
            ("product:p#0", 3, (secs * 10.0 / 60.0).ceil() as i64 + 1),
            ("product:p#1", 3, 0),
            (
                "product:p#2",
                first.usage + g1.usage + g2.usage,
                (secs * 2000.0 / 60.0).ceil() as i64 + 1,
            ),
        ],
    );
}

#[test]
fn a_deployment_limit_refusing_gives_back_the_product_limits() {
    let s = start_product(
        r#"
  { unit = "requests", rate = 10, per = "minute" },
  { unit = "requests", quota = 10, per = "hour" },
  { unit = "tokens", rate = 2000, per = "minute" },
  { unit = "tokens", quota = 100000, per = "day" },
"#,
        r#"{ unit = "requests", quota = 2, per = "hour" }"#,
        "",
        "",
    );
    let labels = ["product:p#0", "product:p#1", "product:p#2", "product:p#3"];
    let mut c = s.connect();
    let started = Instant::now();
    let first = admitted(&mut c, "other", &labels);
    let g1 = admitted(&mut c, "gpt-4o", &labels);
    let g2 = admitted(&mut c, "gpt-4o", &labels);
    for _ in 0..3 {
        refused(&mut c, "gpt-4o", 400, 403, "deployment:gpt-4o#0");
    }
    let last = admitted(&mut c, "other", &labels);
    let secs = started.elapsed().as_secs_f64();
    let used = first.usage + g1.usage + g2.usage;
    assert_drops(
        &first,
        &last,
        &[
            ("product:p#0", 3, (secs * 10.0 / 60.0).ceil() as i64 + 1),
            ("product:p#1", 3, 0),
            (
                "product:p#2",
                used,
                (secs * 2000.0 / 60.0).ceil() as i64 + 1,
            ),
            ("product:p#3", used, 0),
        ],
    );
}

#[test]
fn a_later_deployment_or_client_ip_limit_refusing_gives_back_all_earlier_ones() {
    // gpt-4o's #2 refuses a request reserving more than its bucket (2000 > 1000 tokens) after
    // the product's and gpt-4o's #0, #1 granted theirs; the client-IP tokens limit (last in
    // order) refuses 5000 tokens to `other` after the product's and other's limits granted
    // theirs. The client-IP requests quota (#1) is decided at the head and kept by every
    // request, refused or not.
    let s = start_product(
        r#"
  { unit = "requests", quota = 10, per = "hour" },
  { unit = "tokens", quota = 100000, per = "day" },
"#,
        r#"
  { unit = "requests", quota = 10, per = "hour" },
  { unit = "tokens", quota = 100000, per = "day" },
  { unit = "tokens", rate = 1000, per = "minute" },
"#,
        r#"
  { unit = "requests", quota = 10, per = "hour" },
  { unit = "tokens", quota = 100000, per = "day" },
"#,
        r#"client_ip_limits = [
  { unit = "tokens", rate = 3000, per = "minute" },
  { unit = "requests", quota = 100, per = "hour" },
]"#,
    );
    let mut c = s.connect();

    let labels = [
        "product:p#0",
        "product:p#1",
        "deployment:gpt-4o#0",
        "deployment:gpt-4o#1",
        "server#1",
    ];
    let first = admitted(&mut c, "gpt-4o", &labels);
    for _ in 0..2 {
        let resp = ask(&mut c, "gpt-4o", 2000);
        assert_openai_error(&resp, 429, Some("rate_limit_exceeded"));
        let message = resp.text();
        assert!(
            message.contains("deployment:gpt-4o#2"),
            "refused by another limit than deployment:gpt-4o#2: {message}"
        );
    }
    let last = admitted(&mut c, "gpt-4o", &labels);
    assert_drops(
        &first,
        &last,
        &[
            ("product:p#0", 1, 0),
            ("product:p#1", first.usage, 0),
            ("deployment:gpt-4o#0", 1, 0),
            ("deployment:gpt-4o#1", first.usage, 0),
            // The head gate keeps the two refused requests and the last one.
            ("server#1", 3, 0),
        ],
    );

    let labels = [
        "product:p#0",
        "product:p#1",
        "deployment:other#0",
        "deployment:other#1",
        "server#1",
    ];
    let first = admitted(&mut c, "other", &labels);
    for _ in 0..2 {
        let resp = ask(&mut c, "other", 5000);
        assert_openai_error(&resp, 429, Some("rate_limit_exceeded"));
        let message = resp.text();
        assert!(
            message.contains("server#0"),
            "refused by another limit than server#0: {message}"
        );
    }
    let last = admitted(&mut c, "other", &labels);
    assert_drops(
        &first,
        &last,
        &[
            ("product:p#0", 1, 0),
            ("product:p#1", first.usage, 0),
            ("deployment:other#0", 1, 0),
            ("deployment:other#1", first.usage, 0),
            ("server#1", 3, 0),
        ],
    );
}
