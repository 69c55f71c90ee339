//! Whole-process tests of token accounting: a request reserves estimate(prompt) +
//! max_tokens (× n) at admission and is reconciled to the answer's real usage afterwards.
//!
//! The proof of exactness: with a token quota (a fixed window, no refill), two identical
//! requests A then B give `remaining(A) − remaining(B) == usage(A).total_tokens`, since B's
//! reservation equals A's. The estimate itself is never hard-coded; only differences are.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::Write;
use std::net::TcpStream;
use std::thread;
use std::time::Duration;

use serde_json::{json, Value};
use support::*;

const KEY_A: &str = "test-key-accounting-team-a";
const KEY_B: &str = "test-key-accounting-team-b";

/// A quota large enough never to refuse, so `remaining` only shows what was charged.
const BIG_QUOTA: i64 = 1_000_000;

fn body_with(deployments: &str, product_extra: &str) -> String {
    let mut body = String::from(deployments);
    body.push_str(&product("p", product_extra));
    body.push_str(&subscription("team-a", "p", &[KEY_A]));
    body.push_str(&subscription("team-b", "p", &[KEY_B]));
    body
}

fn quota_limits(quota: i64) -> String {
    format!(r#"limits = [{{ unit = "tokens", quota = {quota}, per = "day" }}]"#)
}

fn start_quota(quota: i64) -> Sluice {
    Launch::new(&body_with(MOCK_DEPLOYMENTS, &quota_limits(quota))).start()
}

/// `chat_as` on a connection closed after the answer, once Sluice has booked its charge
/// ([`post_settled`]).
fn chat_settled(s: &Sluice, key: &str, body: &Value) -> Response {
    post_settled(s, "/v1/chat/completions", &[("api-key", key)], body)
}

/// The plain chat (max_tokens 100), settled.
fn chat1(s: &Sluice, key: &str) -> Response {
    chat_settled(s, key, &chat_body(Some("gpt-4o"), false))
}

/// A chat request to gpt-4o with `extra` fields merged in.
fn chat_with(extra: Value) -> Value {
    let mut body = chat_body(Some("gpt-4o"), false);
    for (k, v) in extra.as_object().expect("object") {
        body[k] = v.clone();
    }
    body
}

/// A streamed chat as `key`: its head, its JSON chunks (before `[DONE]`, which it must end
/// with); returns once Sluice has booked its charge and closed the connection
/// ([`wait_settled`]).
fn stream_chat(s: &Sluice, key: &str, body: &Value) -> (Head, Vec<Value>) {
    let mut c = s.connect();
    let bytes = serde_json::to_vec(body).unwrap();
    let (head, mut sse) = c.stream(
        "POST",
        "/v1/chat/completions",
        &[
            ("Content-Type", "application/json"),
            ("api-key", key),
            ("Connection", "close"),
        ],
        &bytes,
    );
    assert_eq!(head.status(), 200, "{head:?}");
    assert!(
        head.header("content-type")
            .is_some_and(|c| c.starts_with("text/event-stream")),
        "{head:?}"
    );
    let events = sse.collect_rest();
    wait_settled(&mut c);
    let mut datas: Vec<&str> = events.iter().filter_map(|e| event_data(e)).collect();
    assert_eq!(
        datas.pop(),
        Some("[DONE]"),
        "the stream must end with data: [DONE]: {events:?}"
    );
    let chunks = datas
        .iter()
        .map(|d| serde_json::from_str(d).unwrap_or_else(|e| panic!("event not JSON ({e}): {d}")))
        .collect();
    (head, chunks)
}

fn head_remaining_tokens(head: &Head) -> i64 {
    let v = head
        .header("x-ratelimit-remaining-tokens")
        .unwrap_or_else(|| panic!("no x-ratelimit-remaining-tokens: {:?}", head.headers));
    v.parse().expect("integer")
}

/// Asserts the client saw no usage: no chunk with `choices: []`, none with a usage.
fn assert_no_usage_chunk(chunks: &[Value]) {
    assert!(!chunks.is_empty());
    for c in chunks {
        assert!(
            c["usage"].is_null(),
            "a usage chunk reached a client that did not ask: {c}"
        );
        assert!(
            c["choices"].as_array().is_some_and(|a| !a.is_empty()),
            "a chunk with no choices reached the client: {c}"
        );
    }
}

#[test]
fn nonstreaming_chat_is_charged_its_real_usage() {
    let s = start_quota(BIG_QUOTA);
    let a = chat1(&s, KEY_A);
    let ra = remaining_tokens(&a);
    let ua = usage_total(&a.json());
    let b = chat1(&s, KEY_A);
    let rb = remaining_tokens(&b);
    let ub = usage_total(&b.json());
    assert_eq!(ua, ub, "the mock is deterministic");
    assert_eq!(num_header(&a, "x-ratelimit-limit-tokens"), BIG_QUOTA);
    // A's reservation (nothing was used before it) covers its max_tokens of 100 and more
    // than it used: the difference was refunded.
    let reserved = BIG_QUOTA - ra;
    assert!(
        reserved > 100 && reserved > ua,
        "reservation {reserved}, usage {ua}"
    );
    assert_eq!(
        ra - rb,
        ua,
        "remaining(A) − remaining(B) must be A's usage.total_tokens (reservation {reserved})"
    );

    // max_tokens 300 instead of 100 (same body length): 200 more reserved.
    let c = chat_settled(&s, KEY_A, &chat_with(json!({"max_tokens": 300})));
    let rc = remaining_tokens(&c);
    assert_eq!(
        rb - rc,
        ub + 200,
        "max_tokens 300 reserves 200 more than 100"
    );
    let d = chat1(&s, KEY_A);
    let rd = remaining_tokens(&d);
    assert_eq!(
        rc - rd,
        usage_total(&c.json()) - 200,
        "C's unused 200 extra tokens are refunded"
    );
}

#[test]
fn n_multiplies_the_completion_reservation() {
    let s = start_quota(BIG_QUOTA);
    let one = chat_with(json!({"n": 1}));
    let two = chat_with(json!({"n": 2}));
    let a = chat_settled(&s, KEY_A, &one);
    let ra = remaining_tokens(&a);
    let b = chat_settled(&s, KEY_A, &two);
    let rb = remaining_tokens(&b);
    let ub = b.json();
    assert_eq!(ub["choices"].as_array().map(Vec::len), Some(2), "{ub}");
    let c = chat_settled(&s, KEY_A, &one);
    let rc = remaining_tokens(&c);
    assert_eq!(
        ra - rb,
        usage_total(&a.json()) + 100,
        "n = 2 reserves max_tokens (100) once more"
    );
    assert_eq!(rb - rc, usage_total(&ub) - 100, "then is charged its usage");
}

#[test]
fn streaming_chat_with_usage_requested_is_charged_its_usage() {
    let s = start_quota(BIG_QUOTA);
    let mut body = chat_body(Some("gpt-4o"), true);
    body["stream_options"] = json!({"include_usage": true});
    let (ha, ca) = stream_chat(&s, KEY_A, &body);
    let (hb, cb) = stream_chat(&s, KEY_A, &body);
    let last = ca.last().unwrap();
    assert_eq!(last["choices"], json!([]), "usage chunk last: {last}");
    let ua = usage_total(last);
    assert_eq!(ua, usage_total(cb.last().unwrap()));
    for c in &ca[..ca.len() - 1] {
        assert!(c["usage"].is_null(), "usage only on the last chunk: {c}");
    }
    assert_eq!(
        head_remaining_tokens(&ha) - head_remaining_tokens(&hb),
        ua,
        "remaining(A) − remaining(B) must be A's streamed usage"
    );
}

#[test]
fn streaming_chat_without_usage_requested_is_charged_exactly_and_sees_no_usage() {
    let s = start_quota(BIG_QUOTA);
    // The same request not streamed: what the streamed one must cost.
    let plain = chat1(&s, KEY_A);
    let usage = usage_total(&plain.json());
    let body = chat_body(Some("gpt-4o"), true);
    let (ha, ca) = stream_chat(&s, KEY_A, &body);
    let (hb, cb) = stream_chat(&s, KEY_A, &body);
    assert_no_usage_chunk(&ca);
    assert_no_usage_chunk(&cb);
    let text: String = ca
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert!(!text.is_empty(), "no content streamed: {ca:?}");
    assert_eq!(
        head_remaining_tokens(&ha) - head_remaining_tokens(&hb),
        usage,
        "a stream without include_usage must be charged the usage of the same request"
    );
}

#[test]
fn embeddings_are_charged_their_usage() {
    let s = start_quota(BIG_QUOTA);
    let target = "/v1/embeddings";
    let a = post_settled(&s, target, &[("api-key", KEY_A)], &embeddings_body());
    let ra = remaining_tokens(&a);
    let b = post_with(&s, target, &[("api-key", KEY_A)], &embeddings_body());
    let rb = remaining_tokens(&b);
    let ua = usage_total(&a.json());
    assert!(ua > 0);
    assert_eq!(ra - rb, ua, "remaining(A) − remaining(B) must be A's usage");
    assert!(BIG_QUOTA - ra >= ua, "the reservation covers the prompt");
}

// ---------------------------------------------------------------------------------------------
// Against a scripted OpenAI-compatible upstream: the usage it reports is what is charged, and
// the usage chunk Sluice asks for on the client's behalf never reaches the client.

const UP_USAGE: i64 = 10;

fn scripted_chat_upstream() -> Upstream {
    Upstream::start(|r, s: &mut TcpStream| {
        let req = r.json();
        if req["stream"] == json!(true) {
            let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
                        transfer-encoding: chunked\r\n\r\n";
            let _ = s.write_all(head.as_bytes());
            for word in ["Hello", " there", "."] {
                let _ = write_chunk(s, sse_chunk(word).as_bytes());
            }
            let finish = json!({
                "id": "chatcmpl-stream", "object": "chat.completion.chunk", "created": 1,
                "model": "upstream-model",
                "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]
            });
            let _ = write_chunk(s, format!("data: {finish}\n\n").as_bytes());
            if req["stream_options"]["include_usage"] == json!(true) {
                let usage = json!({
                    "id": "chatcmpl-stream", "object": "chat.completion.chunk", "created": 1,
                    "model": "upstream-model", "choices": [],
                    "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": UP_USAGE}
                });
                let _ = write_chunk(s, format!("data: {usage}\n\n").as_bytes());
            }
            let _ = write_chunk(s, b"data: [DONE]\n\n");
            let _ = write_chunk(s, b"");
        } else {
            let mut answer = upstream_chat_answer("upstream-model");
            answer["usage"] =
                json!({"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": UP_USAGE});
            let bytes = serde_json::to_vec(&answer).unwrap();
            respond(s, 200, &[("content-type", "application/json")], &bytes);
        }
        After::KeepAlive
    })
}

fn start_scripted(up: &Upstream, product_extra: &str) -> Sluice {
    let deployments = format!(
        "{}tokens = {{ estimator = \"heuristic\" }}\n",
        openai_backend_body(&up.url(), "gpt-4o")
    );
    Launch::new(&body_with(&deployments, product_extra)).start()
}

#[test]
fn scripted_upstream_usage_is_what_is_charged() {
    let up = scripted_chat_upstream();
    let s = start_scripted(&up, &quota_limits(BIG_QUOTA));
    let ra = remaining_tokens(&chat1(&s, KEY_A));
    let rb = remaining_tokens(&chat1(&s, KEY_A));
    assert_eq!(
        ra - rb,
        UP_USAGE,
        "non-streaming: charged the upstream's usage"
    );

    let mut asked = chat_body(Some("gpt-4o"), true);
    asked["stream_options"] = json!({"include_usage": true});
    let (h1, c1) = stream_chat(&s, KEY_A, &asked);
    let (h2, _) = stream_chat(&s, KEY_A, &asked);
    assert_eq!(
        usage_total(c1.last().unwrap()),
        UP_USAGE,
        "the client asked for usage and gets the upstream's usage chunk: {c1:?}"
    );
    assert_eq!(
        head_remaining_tokens(&h1) - head_remaining_tokens(&h2),
        UP_USAGE,
        "streaming with include_usage: charged the upstream's usage"
    );

    let unasked = chat_body(Some("gpt-4o"), true);
    let (h3, c3) = stream_chat(&s, KEY_A, &unasked);
    let (h4, c4) = stream_chat(&s, KEY_A, &unasked);
    assert_no_usage_chunk(&c3);
    assert_no_usage_chunk(&c4);
    assert_eq!(c3.len(), 4, "three words and the finish chunk: {c3:?}");
    assert_eq!(
        head_remaining_tokens(&h3) - head_remaining_tokens(&h4),
        UP_USAGE,
        "streaming without include_usage: charged the usage Sluice asked for"
    );

    // Every streamed request went upstream asking for usage.
    let reqs = up.requests();
    assert_eq!(reqs.len(), 6);
    for r in &reqs[2..] {
        let v = r.json();
        assert_eq!(
            v["stream_options"]["include_usage"],
            json!(true),
            "upstream body of a stream: {v}"
        );
    }
    assert!(
        reqs[0].json().get("stream_options").is_none(),
        "a non-streaming request gets no stream_options: {}",
        reqs[0].json()
    );
}

// ---------------------------------------------------------------------------------------------
// Refusals by token budget

#[test]
fn huge_max_tokens_over_a_token_rate_is_429_before_the_backend() {
    let up = scripted_chat_upstream();
    let s = start_scripted(
        &up,
        r#"limits = [{ unit = "tokens", rate = 1000, per = "minute" }]"#,
    );
    let resp = chat_settled(&s, KEY_A, &chat_with(json!({"max_tokens": 100000})));
    // No wait would let it pass (its cost is above the burst), so Retry-After is not
    // required here; the status and code are.
    assert_openai_error(&resp, 429, Some("rate_limit_exceeded"));
    assert_eq!(up.request_count(), 0, "refused request reached the backend");
    // The budget is untouched: a small request passes.
    let resp = chat1(&s, KEY_A);
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(up.request_count(), 1);
}

#[test]
fn huge_max_tokens_over_a_token_quota_is_403_before_the_backend() {
    let up = scripted_chat_upstream();
    let s = start_scripted(&up, &quota_limits(1000));
    let resp = chat_settled(&s, KEY_A, &chat_with(json!({"max_tokens": 100000})));
    assert_openai_error(&resp, 403, Some("quota_exceeded"));
    assert_eq!(up.request_count(), 0, "refused request reached the backend");
    let resp = chat1(&s, KEY_A);
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(up.request_count(), 1);
}

#[test]
fn token_quota_runs_out_exactly_when_usage_leaves_less_than_a_reservation() {
    const QUOTA: i64 = 400;
    let s = start_quota(QUOTA);
    let mut used = 0;
    let mut reservation = None;
    for i in 0..50 {
        let resp = chat1(&s, KEY_A);
        if resp.status != 200 {
            assert_openai_error(&resp, 403, Some("quota_exceeded"));
            let reservation = reservation.expect("the first request passes");
            assert!(
                QUOTA - used < reservation,
                "refused after {i} requests with {} left for a reservation of {reservation}",
                QUOTA - used
            );
            // Team b's quota is untouched.
            assert_eq!(chat1(&s, KEY_B).status, 200);
            return;
        }
        let remaining = remaining_tokens(&resp);
        let r = *reservation.get_or_insert(QUOTA - remaining);
        assert_eq!(
            remaining,
            QUOTA - used - r,
            "request {i}: remaining = quota − charged so far − this reservation"
        );
        used += usage_total(&resp.json());
    }
    panic!("a {QUOTA}-token quota never ran out; {used} tokens charged");
}

#[test]
fn default_max_tokens_is_reserved_when_the_request_sets_none() {
    let deployments = MOCK_DEPLOYMENTS.replace(
        "name = \"gpt-4o\"\nbackends = [{ backend = \"mock-a\" }]\n\
         tokens = { estimator = \"heuristic\" }",
        "name = \"gpt-4o\"\nbackends = [{ backend = \"mock-a\" }]\n\
         tokens = { estimator = \"heuristic\", default_max_tokens = 500 }",
    );
    assert_ne!(deployments, MOCK_DEPLOYMENTS, "config edit failed");
    let s = Launch::new(&body_with(&deployments, &quota_limits(BIG_QUOTA))).start();
    let with = chat_body(Some("gpt-4o"), false);
    let mut without = with.clone();
    without.as_object_mut().unwrap().remove("max_tokens");
    // Each on a fresh subscription: its reservation is quota − remaining.
    let reserved_with = BIG_QUOTA - remaining_tokens(&chat_as(&s, KEY_A, &with));
    let reserved_without = BIG_QUOTA - remaining_tokens(&chat_as(&s, KEY_B, &without));
    let diff = reserved_without - reserved_with;
    // 500 − 100, give or take the estimate of the 16 characters `"max_tokens":100,`.
    assert!(
        (395..=405).contains(&diff),
        "reservation without max_tokens {reserved_without}, with max_tokens 100 \
         {reserved_with}: expected ~400 more"
    );
}

// ---------------------------------------------------------------------------------------------
// An answer whose usage is unknown is never free: the reservation stands (a stream without
// usage is counted). And Sluice reads the request the backend reads: repeated or mistyped
// decision fields are refused.

/// A deployment served by the mock that never asks for the usage chunk.
const MOCK_NO_STREAM_USAGE: &str = r#"
[[backend]]
name = "mock-a"
kind = "mock"
completion_tokens = 16

[[deployment]]
name = "gpt-4o"
backends = [{ backend = "mock-a" }]
tokens = { estimator = "heuristic", stream_usage = false }
"#;

/// The completion tokens Sluice counts for `chunks` with the heuristic estimator: a token
/// per 4 bytes (rounded up) of each delta's content.
fn heuristic_count(chunks: &[Value]) -> i64 {
    chunks
        .iter()
        .flat_map(|c| c["choices"].as_array().cloned().unwrap_or_default())
        .filter_map(|choice| choice["delta"]["content"].as_str().map(str::len))
        .map(|len| len.div_ceil(4) as i64)
        .sum()
}

/// A streamed chat whose client did not ask for usage, and whose deployment does not ask for
/// it either: the stream ends with no usage, so Sluice counts its completion as it passes and
/// charges the prompt estimate plus that count (two identical streams A, B: remaining(A) −
/// remaining(B) = what A was charged; A's reservation less its max_tokens of 100 is the prompt
/// estimate), never zero.
#[test]
fn a_stream_without_usage_is_charged_its_prompt_estimate_plus_its_counted_completion() {
    let s = Launch::new(&body_with(MOCK_NO_STREAM_USAGE, &quota_limits(BIG_QUOTA))).start();
    let body = chat_with(json!({"stream": true}));
    let (ha, chunks) = stream_chat(&s, KEY_A, &body);
    assert_no_usage_chunk(&chunks);
    let (hb, _) = stream_chat(&s, KEY_A, &body);
    let reserved = BIG_QUOTA - head_remaining_tokens(&ha);
    let prompt = reserved - 100;
    let counted = heuristic_count(&chunks);
    assert!(
        prompt > 0 && counted > 0,
        "prompt {prompt}, counted {counted}"
    );
    assert_eq!(
        head_remaining_tokens(&ha) - head_remaining_tokens(&hb),
        prompt + counted,
        "A must be charged its prompt estimate plus its counted completion"
    );
    assert!(
        s.wait_log(
            "stream carried no usage: charged the prompt estimate plus the completion counted by Sluice",
            Duration::from_secs(5)
        ),
        "{}",
        s.log()
    );
}

/// Thirty streams without usage against 1,000 tokens a minute (burst 1,000): each is charged
/// its prompt estimate plus its counted completion, so about (1,000 − one reservation) / that
/// charge + 1 pass and the rest are refused — never all of them for free.
#[test]
fn streams_without_usage_cannot_pass_a_token_rate_for_free() {
    let limits = r#"limits = [{ unit = "tokens", rate = 1000, per = "minute" }]"#;
    let s = Launch::new(&body_with(MOCK_NO_STREAM_USAGE, limits)).start();
    let body = chat_with(json!({"stream": true, "max_tokens": 90}));
    let (first, chunks) = stream_chat(&s, KEY_A, &body);
    let reservation = 1000 - head_remaining_tokens(&first);
    let charge = reservation - 90 + heuristic_count(&chunks);
    let expected = (1000 - reservation) / charge + 1;
    let bytes = serde_json::to_vec(&body).unwrap();
    let (mut ok, mut limited) = (1, 0);
    for _ in 1..30 {
        let mut c = s.connect();
        c.send(&request_bytes(
            "POST",
            "/v1/chat/completions",
            &[
                ("Content-Type", "application/json"),
                ("api-key", KEY_A),
                ("Connection", "close"),
            ],
            &bytes,
        ));
        let resp = c.read_response();
        wait_settled(&mut c);
        match resp.status {
            200 => ok += 1,
            429 => {
                assert_rate_limited(&resp);
                limited += 1;
            }
            other => panic!("unexpected {other}: {}", resp.text()),
        }
    }
    assert!(
        (expected - 2..=expected + 2).contains(&ok),
        "{ok} passed, {limited} limited; each charged {charge} of reservation {reservation}: ~{expected} expected"
    );
    assert!(limited > 0);
    assert_eq!(ok + limited, 30);
}

/// A JSON answer from a backend that reports no usage is charged its reservation too.
#[test]
fn a_json_answer_without_usage_keeps_its_reservation() {
    let mut answer = upstream_chat_answer("upstream-model");
    answer.as_object_mut().unwrap().remove("usage");
    let up = Upstream::json(answer);
    let s = start_scripted(&up, &quota_limits(BIG_QUOTA));
    let ra = remaining_tokens(&chat1(&s, KEY_A));
    let rb = remaining_tokens(&chat1(&s, KEY_A));
    assert_eq!(
        ra - rb,
        BIG_QUOTA - ra,
        "A was charged its whole reservation"
    );
}

/// A scripted upstream that answers its first `refusals` requests 400 (an OpenAI error), then
/// every request 200 with a chat answer (usage 6).
fn refusing_then_answering(refusals: usize) -> Upstream {
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    let left = AtomicUsize::new(refusals);
    Upstream::start(move |_, s: &mut TcpStream| {
        if left
            .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            let body = br#"{"error":{"message":"bad","type":"invalid_request_error","param":null,"code":null}}"#;
            respond(s, 400, &[("content-type", "application/json")], body);
        } else {
            let bytes = serde_json::to_vec(&upstream_chat_answer("m")).unwrap();
            respond(s, 200, &[("content-type", "application/json")], &bytes);
        }
        After::KeepAlive
    })
}

/// An answer that is not a success costs nothing (the backend refused the work): after two
/// 400s, team A has as much left as team B, which sent one request.
#[test]
fn a_refused_answer_costs_nothing() {
    let up = refusing_then_answering(2);
    let s = start_scripted(&up, &quota_limits(BIG_QUOTA));
    for _ in 0..2 {
        assert_eq!(chat1(&s, KEY_A).status, 400);
    }
    let ra = remaining_tokens(&chat1(&s, KEY_A));
    let rb = remaining_tokens(&chat1(&s, KEY_B));
    assert_eq!(ra, rb, "the refused answers cost team A nothing");
}

/// The bodies of the issue's evasions, and every other shape of a request Sluice and a
/// backend could read differently: refused with 400 naming the field, before any backend.
#[test]
fn repeated_or_mistyped_decision_fields_are_refused_before_the_backend() {
    let up = scripted_chat_upstream();
    let s = start_scripted(&up, &quota_limits(BIG_QUOTA));
    let messages = r#""messages":[{"role":"user","content":"hi"}]"#;
    for (fields, param) in [
        (
            r#""stream":true,"stream_options":{"include_usage":true},"stream_options":{"include_usage":false}"#,
            "stream_options",
        ),
        (
            r#""stream":true,"stream_options":{"include_usage":true,"include_usage":false}"#,
            "stream_options.include_usage",
        ),
        (r#""stream":false,"stream":true"#, "stream"),
        (r#""max_tokens":1,"max_tokens":100000"#, "max_tokens"),
        (r#""max_tokens":"5000""#, "max_tokens"),
        (r#""max_completion_tokens":-5"#, "max_completion_tokens"),
        (r#""n":"4""#, "n"),
        // Go-based backends match keys without regard to case.
        (r#""Max_Tokens":99999"#, "max_tokens"),
        (r#""Stream":true"#, "stream"),
        (r#""stream":"true""#, "stream"),
        (
            r#""stream":true,"stream_options":"include_usage""#,
            "stream_options",
        ),
    ] {
        let body = format!(r#"{{"model":"gpt-4o",{messages},{fields}}}"#);
        let resp = s.request(
            "POST",
            "/v1/chat/completions",
            &[("Content-Type", "application/json"), ("api-key", KEY_A)],
            body.as_bytes(),
        );
        assert_openai_error(&resp, 400, None);
        assert_eq!(
            resp.json()["error"]["param"],
            param,
            "{body}: {}",
            resp.text()
        );
    }
    assert_eq!(
        up.request_count(),
        0,
        "no refused request reached the backend"
    );
    // The same fields, well-formed (integral numbers, nulls), pass.
    let body = format!(
        r#"{{"model":"gpt-4o",{messages},"max_tokens":100.0,"n":null,"stream":false,"stream_options":null}}"#
    );
    let resp = s.request(
        "POST",
        "/v1/chat/completions",
        &[("Content-Type", "application/json"), ("api-key", KEY_A)],
        body.as_bytes(),
    );
    assert_eq!(resp.status, 200, "{}", resp.text());
}

/// A request the backend read and then dropped without answering (a 502, never resent) may
/// have run there: its usage is unknown, so team A is charged its reservation for it.
#[test]
fn a_request_sent_but_never_answered_keeps_its_reservation() {
    let drops = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(1));
    let left = drops.clone();
    let up = Upstream::start(move |_, s: &mut TcpStream| {
        use std::sync::atomic::Ordering::SeqCst;
        if left
            .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return After::Close;
        }
        let bytes = serde_json::to_vec(&upstream_chat_answer("m")).unwrap();
        respond(s, 200, &[("content-type", "application/json")], &bytes);
        After::KeepAlive
    });
    let s = start_scripted(&up, &quota_limits(BIG_QUOTA));
    let dropped = chat1(&s, KEY_A);
    assert_openai_error(&dropped, 502, None);
    let ra = remaining_tokens(&chat1(&s, KEY_A));
    let rb = remaining_tokens(&chat1(&s, KEY_B));
    let reservation = BIG_QUOTA - rb;
    assert_eq!(
        rb - ra,
        reservation,
        "the unanswered request cost its reservation"
    );
    assert_eq!(up.request_count(), 3, "the dropped request was not resent");
}

/// Bodies serde_json refuses but a lenient backend would read (NaN, a lone surrogate, a
/// number out of range, a second JSON value) are refused when tokens are counted, not
/// charged a guess and forwarded.
#[test]
fn bodies_sluice_cannot_read_are_refused_before_the_backend() {
    let up = scripted_chat_upstream();
    let s = start_scripted(&up, &quota_limits(BIG_QUOTA));
    let messages = r#""messages":[{"role":"user","content":"hello"}]"#;
    for body in [
        format!(
            r#"{{"model":"gpt-4o","temperature":NaN,{messages},"stream":true,"max_tokens":100000,"n":20}}"#
        ),
        r#"{"model":"gpt-4o","messages":[{"role":"user","content":"\ud800"}],"max_tokens":100000}"#
            .to_string(),
        format!(r#"{{"model":"gpt-4o",{messages},"max_tokens":1e400}}"#),
        format!(r#"{{"model":"gpt-4o",{messages},"max_tokens":1}}{{"max_tokens":100000}}"#),
        format!(
            r#"{{"model":"gpt-4o","temperature":NaN,"stream":false,"stream":true,{messages}}}"#
        ),
    ] {
        let resp = s.request(
            "POST",
            "/v1/chat/completions",
            &[("Content-Type", "application/json"), ("api-key", KEY_A)],
            body.as_bytes(),
        );
        assert_openai_error(&resp, 400, None);
        assert!(
            resp.text().contains("could not parse"),
            "{body}: {}",
            resp.text()
        );
    }
    assert_eq!(up.request_count(), 0, "nothing reached the backend");
}

/// Refunds of refused answers land in the worker's lease while the shared bucket refills: the
/// sum may pass the limit for a while, but `x-ratelimit-remaining-tokens` never says more
/// than `x-ratelimit-limit-tokens`.
#[test]
fn remaining_tokens_never_reads_above_the_limit() {
    let up = refusing_then_answering(12);
    let deployments = format!(
        "{}tokens = {{ estimator = \"heuristic\", default_max_tokens = 100 }}\n",
        openai_backend_body(&up.url(), "gpt-4o")
    );
    // Per second, so the bucket refills behind the lease within the test.
    let limits = r#"limits = [{ unit = "tokens", rate = 2000, per = "second" }]"#;
    let s = Launch::new(&body_with(&deployments, limits))
        .workers(1)
        .start();
    let body = chat_with(json!({"max_tokens": null}));
    for i in 0..16 {
        thread::sleep(Duration::from_millis(100));
        let resp = chat_settled(&s, KEY_A, &body);
        let limit = num_header(&resp, "x-ratelimit-limit-tokens");
        let remaining = num_header(&resp, "x-ratelimit-remaining-tokens");
        assert_eq!(limit, 2000);
        assert!(
            remaining <= limit,
            "request {i}: remaining {remaining} > limit {limit}"
        );
    }
}

/// Usage is read from the answer's bytes, so while a token limit is to be settled the
/// backend is asked for an uncoded answer (`accept-encoding: identity`, the client's own
/// `Accept-Encoding` not forwarded); when nothing accounts tokens (no token limit, no audit
/// log, no admin listener serving token metrics) the client's header goes as is.
#[test]
fn answers_whose_usage_is_read_are_asked_for_uncoded() {
    let up = scripted_chat_upstream();
    let s = start_scripted(&up, &quota_limits(BIG_QUOTA));
    let resp = post_with(
        &s,
        "/v1/chat/completions",
        &[("api-key", KEY_A), ("Accept-Encoding", "gzip, deflate, br")],
        &chat_body(Some("gpt-4o"), false),
    );
    assert_eq!(resp.status, 200, "{}", resp.text());
    let got = up.requests().pop().unwrap();
    assert_eq!(got.head.header_all("accept-encoding"), ["identity"]);
    // Nor under a spelling a backend folds into Accept-Encoding.
    let resp = post_with(
        &s,
        "/v1/chat/completions",
        &[
            ("api-key", KEY_A),
            ("Accept.Encoding", "gzip"),
            ("ACCEPT~ENCODING", "br"),
        ],
        &chat_body(Some("gpt-4o"), false),
    );
    assert_eq!(resp.status, 200, "{}", resp.text());
    let got = up.requests().pop().unwrap();
    assert_eq!(got.head.header_all("accept-encoding"), ["identity"]);
    for spelling in ["accept.encoding", "accept~encoding"] {
        assert!(
            got.head.header(spelling).is_none(),
            "{spelling}: {:?}",
            got.head
        );
    }

    // Nothing accounts tokens: no token limit, no audit log, no metrics listener.
    let free = Launch::new(&format!(
        "{}\n[admin]\nlisten = \"\"\n",
        openai_backend_body(&up.url(), "gpt-4o")
    ))
    .start();
    let resp = post_with(
        &free,
        "/v1/chat/completions",
        &[("Accept-Encoding", "gzip, deflate, br")],
        &chat_body(Some("gpt-4o"), false),
    );
    assert_eq!(resp.status, 200, "{}", resp.text());
    let got = up.requests().pop().unwrap();
    assert_eq!(
        got.head.header_all("accept-encoding"),
        ["gzip, deflate, br"]
    );
}

/// A backend's own `x-ratelimit-*` headers: where Sluice sets the same name (a token limit
/// applied), Sluice's value is sent alone — one name is never sent twice (the openai SDK
/// would read "149000, 98968"); the names Sluice does not set pass through once.
#[test]
fn rate_limit_headers_are_never_sent_twice() {
    let answer = serde_json::to_vec(&upstream_chat_answer("m")).unwrap();
    let up = Upstream::start(move |_, s: &mut TcpStream| {
        respond(
            s,
            200,
            &[
                ("content-type", "application/json"),
                ("x-ratelimit-remaining-tokens", "149000"),
                ("X-RateLimit-Limit-Tokens", "150000"),
                ("x-ratelimit-remaining-requests", "99"),
            ],
            &answer,
        );
        After::KeepAlive
    });
    let s = start_scripted(&up, &quota_limits(BIG_QUOTA));
    let resp = chat1(&s, KEY_A);
    assert_eq!(resp.status, 200, "{}", resp.text());
    let one = |name: &str| {
        let all = resp.head.header_all(name);
        assert_eq!(all.len(), 1, "{name}: {all:?}");
        all[0].to_string()
    };
    assert_ne!(
        one("x-ratelimit-remaining-tokens"),
        "149000",
        "Sluice's limit wins"
    );
    assert_eq!(one("x-ratelimit-limit-tokens"), BIG_QUOTA.to_string());
    assert_eq!(
        one("x-ratelimit-remaining-requests"),
        "99",
        "the backend's passes through"
    );

    // Without a limit, the backend's headers pass through, once each.
    let free = Launch::new(&openai_backend_body(&up.url(), "gpt-4o")).start();
    let resp = free.post_json("/v1/chat/completions", &chat_body(Some("gpt-4o"), false));
    assert_eq!(
        resp.head.header_all("x-ratelimit-remaining-tokens"),
        ["149000"]
    );
}

/// Issue 8, item 2: one SSE event of about 1.06 MB (a long answer in one event), then the
/// usage chunk Sluice asked for. The big event reaches the client whole and unread, the
/// usage after it is read (charged exactly 5) and its chunk never reaches the client.
#[test]
fn a_huge_event_does_not_stop_the_usage_after_it_from_being_read() {
    let up = Upstream::start(|r, s: &mut TcpStream| {
        assert_eq!(r.json()["stream_options"]["include_usage"], json!(true));
        let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
                    transfer-encoding: chunked\r\n\r\n";
        let _ = s.write_all(head.as_bytes());
        let _ = write_chunk(s, sse_chunk(&"long ".repeat(212_000)).as_bytes());
        let usage = json!({
            "id": "chatcmpl-stream", "object": "chat.completion.chunk", "created": 1,
            "model": "upstream-model", "choices": [],
            "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
        });
        let _ = write_chunk(s, format!("data: {usage}\n\n").as_bytes());
        let _ = write_chunk(s, b"data: [DONE]\n\n");
        let _ = write_chunk(s, b"");
        After::KeepAlive
    });
    let s = start_scripted(&up, &quota_limits(BIG_QUOTA));
    let body = chat_with(json!({"stream": true}));
    let (ha, chunks) = stream_chat(&s, KEY_A, &body);
    assert_no_usage_chunk(&chunks);
    assert_eq!(chunks.len(), 1);
    assert!(
        chunks[0]["choices"][0]["delta"]["content"]
            .as_str()
            .unwrap()
            .len()
            > 1_000_000
    );
    let (hb, _) = stream_chat(&s, KEY_A, &body);
    assert_eq!(
        head_remaining_tokens(&ha) - head_remaining_tokens(&hb),
        5,
        "A was charged its real usage"
    );
}

/// Texts on which the two vocabularies disagree, so the family used shows in the count.
const MULTILINGUAL: [&str; 2] = [
    "Réponds brièvement : qu'est-ce qu'un seau à jetons ?",
    "トークンバケットを一文で説明してください。",
];

/// A chat to `model` whose messages are [`MULTILINGUAL`], `max_tokens` 100.
fn multilingual_chat(model: &str, stream: bool) -> Value {
    json!({
        "model": model,
        "stream": stream,
        "max_tokens": 100,
        "messages": [
            {"role": "system", "content": MULTILINGUAL[0]},
            {"role": "user", "content": MULTILINGUAL[1]}
        ]
    })
}

/// What the default estimator must reserve for [`multilingual_chat`] with `bpe`: each
/// message's text counted with OpenAI's tables (tiktoken-rs, as `tiktoken` gives), 4 tokens
/// per message, 3 to prime the reply, and `max_tokens`.
fn bpe_reservation(bpe: &tiktoken_rs::CoreBPE) -> i64 {
    let text: usize = MULTILINGUAL
        .iter()
        .map(|t| bpe.encode_with_special_tokens(t).len())
        .sum();
    text as i64 + 2 * 4 + 3 + 100
}

/// With no `tokens` settings a deployment counts prompts with the BPE tables of its model's
/// family — o200k for `gpt-4o`, cl100k for `gpt-4` — and a streamed request reserves what
/// the same request unstreamed does: asserted as the reservation itself (the quota less the
/// answer's `remaining`), not as a difference that would cancel it.
#[test]
fn the_default_bpe_estimator_counts_with_the_model_s_family() {
    let o200k = bpe_reservation(&tiktoken_rs::o200k_base().unwrap());
    let cl100k = bpe_reservation(&tiktoken_rs::cl100k_base().unwrap());
    assert_ne!(o200k, cl100k, "the texts must tell the families apart");
    let deployments = r#"
[[backend]]
name = "mock-a"
kind = "mock"

[[deployment]]
name = "gpt-4o"
backends = [{ backend = "mock-a" }]

[[deployment]]
name = "gpt-4"
backends = [{ backend = "mock-a" }]
"#;
    // A subscription of its own for each request, so each sees a fresh quota: the quota
    // less the answer's `remaining` is that request's reservation alone.
    let keys = ["k-4o", "k-4o-stream", "k-4", "k-4-stream"].map(|k| format!("test-key-bpe-{k}"));
    let mut body = String::from(deployments);
    body.push_str(&product("p", &quota_limits(BIG_QUOTA)));
    for (i, key) in keys.iter().enumerate() {
        body.push_str(&subscription(&format!("team-{i}"), "p", &[key.as_str()]));
    }
    let s = Launch::new(&body).start();
    let cases = [
        ("gpt-4o", false, o200k),
        ("gpt-4o", true, o200k),
        ("gpt-4", false, cl100k),
        ("gpt-4", true, cl100k),
    ];
    for ((model, stream, want), key) in cases.into_iter().zip(&keys) {
        let body = multilingual_chat(model, stream);
        let remaining = if stream {
            head_remaining_tokens(&stream_chat(&s, key, &body).0)
        } else {
            remaining_tokens(&chat_settled(&s, key, &body))
        };
        assert_eq!(
            BIG_QUOTA - remaining,
            want,
            "{model} (stream: {stream}): the reservation counts with the model's family"
        );
    }
}

/// A streamed request reserves exactly what the same request unstreamed reserves: with a
/// quota untouched before it, the quota less the stream's `remaining` is the prompt
/// estimate (bytes / 4 per piece, the heuristic) plus `max_tokens` — never 0.
#[test]
fn a_streamed_request_reserves_its_prompt_and_max_tokens() {
    let s = start_quota(BIG_QUOTA);
    let plain = chat_settled(&s, KEY_A, &chat_body(Some("gpt-4o"), false));
    let reserved_plain = BIG_QUOTA - remaining_tokens(&plain);
    let (head, _) = stream_chat(&s, KEY_B, &chat_body(Some("gpt-4o"), true));
    let reserved_stream = BIG_QUOTA - head_remaining_tokens(&head);
    assert_eq!(reserved_stream, reserved_plain);
    // chat_body: two messages, max_tokens 100; the heuristic counts each content by 4 bytes.
    let texts = [
        "You are a concise assistant.",
        "Explain a token bucket in one sentence.",
    ];
    let prompt: i64 = texts
        .iter()
        .map(|t| t.len().div_ceil(4) as i64)
        .sum::<i64>()
        + 2 * 4
        + 3;
    assert_eq!(reserved_stream, prompt + 100);
}

/// Usage far above the reservation is charged in full: the quota goes into debt, and the
/// debt refuses the next request however small, before any backend sees it.
#[test]
fn usage_above_the_reservation_leaves_a_debt_that_blocks() {
    let up = Upstream::start(|_, s: &mut TcpStream| {
        let mut answer = upstream_chat_answer("m");
        answer["usage"] =
            json!({"prompt_tokens": 2000, "completion_tokens": 3000, "total_tokens": 5000});
        let bytes = serde_json::to_vec(&answer).unwrap();
        respond(s, 200, &[("content-type", "application/json")], &bytes);
        After::KeepAlive
    });
    let s = start_scripted(&up, &quota_limits(3000));
    let first = chat_settled(&s, KEY_A, &chat_body(Some("gpt-4o"), false));
    assert_eq!(first.status, 200, "{}", first.text());
    assert!(remaining_tokens(&first) > 2500, "the reservation was small");
    let small = chat_with(json!({"max_tokens": 1}));
    let refused = chat_settled(&s, KEY_A, &small);
    assert_openai_error(&refused, 403, None);
    assert_eq!(up.request_count(), 1, "the debt refused before the backend");
    // The other subscription has its own quota.
    assert_eq!(chat_settled(&s, KEY_B, &small).status, 200);
}

/// A usage Sluice cannot believe — a count past 100 million tokens, a count as a string —
/// is not charged: the reservation stands, and the limit is not locked by it. Integral
/// floats (`150.0`) are counts.
#[test]
fn an_absurd_or_unreadable_usage_keeps_the_reservation() {
    for (usage, believed) in [
        (
            json!({"prompt_tokens": 18_446_744_073_709_551_615u64, "completion_tokens": 5}),
            None,
        ),
        (
            json!({"prompt_tokens": "100", "completion_tokens": 50, "total_tokens": 150}),
            None,
        ),
        (
            json!({"prompt_tokens": 100.0, "completion_tokens": 50, "total_tokens": 150.0}),
            Some(150),
        ),
    ] {
        let answer_usage = usage.clone();
        let first = std::sync::atomic::AtomicBool::new(true);
        let up = Upstream::start(move |_, s: &mut TcpStream| {
            let mut answer = upstream_chat_answer("m");
            if first.swap(false, std::sync::atomic::Ordering::SeqCst) {
                answer["usage"] = answer_usage.clone();
            }
            let bytes = serde_json::to_vec(&answer).unwrap();
            respond(s, 200, &[("content-type", "application/json")], &bytes);
            After::KeepAlive
        });
        let s = start_scripted(&up, &quota_limits(BIG_QUOTA));
        let a = chat_settled(&s, KEY_A, &chat_body(Some("gpt-4o"), false));
        assert_eq!(a.status, 200);
        let ra = remaining_tokens(&chat_settled(&s, KEY_A, &chat_body(Some("gpt-4o"), false)));
        let rb = remaining_tokens(&chat_settled(&s, KEY_B, &chat_body(Some("gpt-4o"), false)));
        let reservation = BIG_QUOTA - rb;
        let want = believed.unwrap_or(reservation);
        assert_eq!(rb - ra, want, "{usage}: charged, reservation {reservation}");
    }
}
