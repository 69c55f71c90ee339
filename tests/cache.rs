//! Whole-process tests of the response cache (README "Response cache"): a scripted backend
//! that numbers its answers and counts its requests, so a test sees which answers came from
//! the backend and which from the cache. Every deployment here is `chat` on one `openai`
//! backend, with the `cache` settings the test names.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use support::*;

const KEY_A: &str = "sk-cache-team-a";
const KEY_B: &str = "sk-cache-team-b";
/// The backend's usage on every answer.
const UP_USAGE: i64 = 6;

/// A backend that answers request number `i` (from 1) with a chat answer saying `answer i`;
/// a body with `"fail": STATUS` gets that status, one with `"pad": N` an answer padded by
/// N bytes, one with `"cache_control": V` an answer with `Cache-Control: V`, one with
/// `"headers": {NAME: V, …}` an answer with those fields, one with `"content_type": V` an
/// answer sent as V, a streamed one an SSE answer.
fn numbered_upstream() -> Upstream {
    let seen = AtomicUsize::new(0);
    Upstream::start(move |r, s: &mut TcpStream| {
        let i = seen.fetch_add(1, Ordering::SeqCst) + 1;
        let req = r.json();
        if req["stream"] == json!(true) {
            let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
                        transfer-encoding: chunked\r\n\r\n";
            let _ = s.write_all(head.as_bytes());
            let _ = write_chunk(s, sse_chunk(&format!("answer {i}")).as_bytes());
            let _ = write_chunk(s, b"data: [DONE]\n\n");
            let _ = write_chunk(s, b"");
            return After::KeepAlive;
        }
        if let Some(status) = req["fail"].as_u64() {
            let body = json!({"error": {"message": "no", "type": "invalid_request_error",
                                        "param": null, "code": null}});
            let body = serde_json::to_vec(&body).unwrap();
            respond(
                s,
                status as u16,
                &[("content-type", "application/json")],
                &body,
            );
            return After::KeepAlive;
        }
        let pad = "x".repeat(req["pad"].as_u64().unwrap_or(0) as usize);
        let answer = json!({
            "id": format!("chatcmpl-{i}"), "object": "chat.completion", "created": 1,
            "model": "upstream-model",
            "choices": [{"index": 0, "message": {"role": "assistant",
                         "content": format!("answer {i}{pad}")}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": UP_USAGE}
        });
        // Not serde_json's order: the replay must give these bytes back as they were.
        let body = serde_json::to_vec_pretty(&answer).unwrap();
        let content_type = req["content_type"].as_str().unwrap_or("application/json");
        let mut headers = vec![("content-type", content_type)];
        if let Some(control) = req["cache_control"].as_str() {
            headers.push(("cache-control", control));
        }
        if let Some(fields) = req["headers"].as_object() {
            headers.extend(
                fields
                    .iter()
                    .filter_map(|(n, v)| Some((n.as_str(), v.as_str()?))),
            );
        }
        respond(s, 200, &headers, &body);
        After::KeepAlive
    })
}

/// Deployment `chat` on `up` with `cache = { CACHE }`, and `extra` (products, subscriptions,
/// `[audit]`).
fn config(up: &Upstream, cache: &str, extra: &str) -> String {
    format!(
        "[[backend]]\nname = \"up\"\nkind = \"openai\"\nurl = \"{}\"\n\n\
         [[deployment]]\nname = \"chat\"\nbackends = [{{ backend = \"up\" }}]\n\
         tokens = {{ estimator = \"heuristic\" }}\ncache = {{ {cache} }}\n\n\
         [[deployment]]\nname = \"plain\"\nbackends = [{{ backend = \"up\" }}]\n{extra}",
        up.url()
    )
}

/// Subscriptions `team-a` (KEY_A) and `team-b` (KEY_B) of product `p` with `limits`.
fn teams(limits: &str) -> String {
    format!(
        "{}{}{}",
        product("p", limits),
        subscription("team-a", "p", &[KEY_A]),
        subscription("team-b", "p", &[KEY_B])
    )
}

/// A deterministic chat body to `model` asking `question`.
fn question(model: &str, q: &str) -> Value {
    json!({"model": model, "temperature": 0,
           "messages": [{"role": "user", "content": q}]})
}

/// Posts the raw `body` to the chat path with `headers`, on a connection closed after the
/// answer, once Sluice has settled the request.
fn post_raw(s: &Sluice, headers: &[(&str, &str)], body: &[u8]) -> Response {
    let mut all = vec![
        ("Content-Type", "application/json"),
        ("Connection", "close"),
    ];
    all.extend_from_slice(headers);
    let mut c = s.connect();
    let resp = c.request("POST", "/v1/chat/completions", &all, body);
    wait_settled(&mut c);
    resp
}

fn post(s: &Sluice, headers: &[(&str, &str)], body: &Value) -> Response {
    post_raw(s, headers, &serde_json::to_vec(body).unwrap())
}

fn ask(s: &Sluice, body: &Value) -> Response {
    post(s, &[], body)
}

/// The answer's `x-sluice-cache`.
fn cache_of(resp: &Response) -> &str {
    resp.header("x-sluice-cache").unwrap_or_else(|| {
        panic!(
            "no x-sluice-cache (status {}): {}",
            resp.status,
            resp.text()
        )
    })
}

/// The answer's text (`choices[0].message.content`).
fn content(resp: &Response) -> String {
    assert_eq!(resp.status, 200, "{}", resp.text());
    resp.json()["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[test]
fn a_repeated_request_is_answered_from_the_cache_byte_for_byte() {
    let up = numbered_upstream();
    let s = Launch::new(&config(&up, "ttl = \"10m\"", "")).start();
    let body = question("chat", "hi");
    let first = ask(&s, &body);
    assert_eq!(cache_of(&first), "miss");
    assert_eq!(content(&first), "answer 1");
    let second = ask(&s, &body);
    assert_eq!(cache_of(&second), "hit");
    assert_eq!(up.request_count(), 1, "a hit reaches no backend");
    assert_eq!(second.body, first.body, "replayed byte for byte");
    assert_eq!(second.header("content-type"), Some("application/json"));
    assert_request_id(&second);
    assert_ne!(
        second.header("x-request-id"),
        first.header("x-request-id"),
        "a replay has its own request id"
    );
    // Another question misses; a deployment without a cache, and an operation the cache does
    // not cover, carry no header.
    assert_eq!(cache_of(&ask(&s, &question("chat", "other"))), "miss");
    assert_eq!(up.request_count(), 2);
    let plain = ask(&s, &question("plain", "hi"));
    assert_eq!(plain.status, 200);
    assert_eq!(plain.header("x-sluice-cache"), None);
    let responses = s.request(
        "POST",
        "/v1/responses",
        &[("Content-Type", "application/json")],
        br#"{"model":"chat","input":"hi","temperature":0}"#,
    );
    assert_eq!(
        responses.header("x-sluice-cache"),
        None,
        "{}",
        responses.text()
    );
}

#[test]
fn bodies_that_differ_only_in_order_whitespace_and_ignored_fields_share_an_entry() {
    let up = numbered_upstream();
    let s = Launch::new(&config(&up, "", "")).start();
    let a = post_raw(
        &s,
        &[],
        br#"{"model":"chat","temperature":0,"a":1,"b":2,"messages":[{"role":"user","content":"q"}]}"#,
    );
    assert_eq!(cache_of(&a), "miss");
    let b = post_raw(
        &s,
        &[],
        b"{ \"b\":2,\n  \"a\":1, \"user\": \"someone\", \"messages\" : [ {\"content\":\"q\",\"role\":\"user\"} ],\"temperature\":0, \"model\":\"chat\" }",
    );
    assert_eq!(cache_of(&b), "hit");
    assert_eq!(b.body, a.body);
    // A value that differs is another question.
    let c = post_raw(
        &s,
        &[],
        br#"{"model":"chat","temperature":0,"a":1,"b":3,"messages":[{"role":"user","content":"q"}]}"#,
    );
    assert_eq!(cache_of(&c), "miss");
    assert_eq!(up.request_count(), 2);
    // A member in two cases, which a case-folding backend reads by order (and order is not
    // in the key), is never one question with anything: both orders bypass.
    for body in [
        br#"{"model":"chat","temperature":0,"messages":[{"role":"user","content":"q"}],"MESSAGES":[{"role":"user","content":"evil"}]}"#,
        br#"{"model":"chat","temperature":0,"MESSAGES":[{"role":"user","content":"evil"}],"messages":[{"role":"user","content":"q"}]}"#,
    ] {
        assert_eq!(cache_of(&post_raw(&s, &[], body)), "bypass");
    }
    assert_eq!(up.request_count(), 4);
}

#[test]
fn an_entry_expires_after_its_ttl() {
    let up = numbered_upstream();
    let s = Launch::new(&config(&up, "ttl = \"1s\"", "")).start();
    let body = question("chat", "hi");
    assert_eq!(cache_of(&ask(&s, &body)), "miss");
    assert_eq!(cache_of(&ask(&s, &body)), "hit");
    std::thread::sleep(Duration::from_millis(1100));
    let late = ask(&s, &body);
    assert_eq!(cache_of(&late), "miss");
    assert_eq!(content(&late), "answer 2");
    assert_eq!(cache_of(&ask(&s, &body)), "hit");
    assert_eq!(up.request_count(), 2);
}

/// Asks each of `questions` again: how many were hits.
fn hits_on_asking_again(s: &Sluice, questions: &[Value]) -> usize {
    questions
        .iter()
        .filter(|q| cache_of(&ask(s, q)) == "hit")
        .count()
}

#[test]
fn entries_are_evicted_past_max_entries() {
    let up = numbered_upstream();
    let s = Launch::new(&config(&up, "max_entries = 2", "")).start();
    let questions: Vec<Value> = (0..3).map(|i| question("chat", &format!("q{i}"))).collect();
    for q in &questions {
        assert_eq!(cache_of(&ask(&s, q)), "miss");
    }
    let hits = hits_on_asking_again(&s, &questions);
    assert!(
        (1..=2).contains(&hits),
        "{hits} of 3 hit in a 2-entry cache"
    );
    assert_eq!(up.request_count(), 3 + 3 - hits);
}

#[test]
fn entries_are_evicted_past_max_bytes_and_an_answer_too_large_is_not_stored() {
    let up = numbered_upstream();
    // One padded answer (~1.2 kB with its key) fits in 2 KiB, two do not.
    let s = Launch::new(&config(&up, "max_bytes = \"2KiB\", max_entries = 100", "")).start();
    let padded = |q: &str| {
        let mut b = question("chat", q);
        b["pad"] = json!(900);
        b
    };
    let questions = [padded("q0"), padded("q1")];
    for q in &questions {
        assert_eq!(cache_of(&ask(&s, q)), "miss");
    }
    let hits = hits_on_asking_again(&s, &questions);
    assert!(hits <= 1, "{hits} of 2 hit where only one fits");
    // Larger than the whole store: never stored.
    let mut huge = question("chat", "huge");
    huge["pad"] = json!(4000);
    assert_eq!(cache_of(&ask(&s, &huge)), "miss");
    assert_eq!(cache_of(&ask(&s, &huge)), "miss");
}

#[test]
fn no_cache_goes_to_the_backend_and_stores_the_fresh_answer() {
    let up = numbered_upstream();
    let s = Launch::new(&config(&up, "", "")).start();
    let body = question("chat", "hi");
    assert_eq!(content(&ask(&s, &body)), "answer 1");
    let fresh = post(&s, &[("Cache-Control", "no-cache")], &body);
    assert_eq!(cache_of(&fresh), "bypass");
    assert_eq!(content(&fresh), "answer 2");
    // The fresh answer replaced the stored one (RFC 9111 §5.2.1.4: it may be stored).
    let next = ask(&s, &body);
    assert_eq!(cache_of(&next), "hit");
    assert_eq!(content(&next), "answer 2");
    // max-age=0 is no-cache; a max-age the entry is within is served.
    assert_eq!(
        content(&post(&s, &[("Cache-Control", "max-age=0")], &body)),
        "answer 3"
    );
    let within = post(&s, &[("cache-control", "max-age=60")], &body);
    assert_eq!(cache_of(&within), "hit");
    assert_eq!(up.request_count(), 3);
}

#[test]
fn no_store_is_neither_served_nor_stored() {
    let up = numbered_upstream();
    let s = Launch::new(&config(&up, "", "")).start();
    let body = question("chat", "hi");
    let first = post(&s, &[("Cache-Control", "no-store")], &body);
    assert_eq!(cache_of(&first), "bypass");
    assert_eq!(
        cache_of(&ask(&s, &body)),
        "miss",
        "the no-store answer was stored"
    );
    assert_eq!(cache_of(&ask(&s, &body)), "hit");
    // With an entry there: not served from it, and the entry stays as it was.
    let again = post(&s, &[("Cache-Control", "no-transform, No-Store")], &body);
    assert_eq!(cache_of(&again), "bypass");
    assert_eq!(content(&again), "answer 3");
    assert_eq!(content(&ask(&s, &body)), "answer 2");
    assert_eq!(up.request_count(), 3);
}

#[test]
fn each_subscription_has_its_own_entries_unless_shared() {
    let up = numbered_upstream();
    let s = Launch::new(&config(&up, "per_subscription = true", &teams(""))).start();
    let body = question("chat", "hi");
    let a = post(&s, &[("api-key", KEY_A)], &body);
    assert_eq!((cache_of(&a), content(&a).as_str()), ("miss", "answer 1"));
    let b = post(&s, &[("api-key", KEY_B)], &body);
    assert_eq!((cache_of(&b), content(&b).as_str()), ("miss", "answer 2"));
    assert_eq!(content(&post(&s, &[("api-key", KEY_A)], &body)), "answer 1");
    assert_eq!(content(&post(&s, &[("api-key", KEY_B)], &body)), "answer 2");
    assert_eq!(up.request_count(), 2);

    let up = numbered_upstream();
    let s = Launch::new(&config(&up, "per_subscription = false", &teams(""))).start();
    let a = post(&s, &[("api-key", KEY_A)], &body);
    assert_eq!(cache_of(&a), "miss");
    let b = post(&s, &[("api-key", KEY_B)], &body);
    assert_eq!(cache_of(&b), "hit");
    assert_eq!(b.body, a.body);
    assert_eq!(up.request_count(), 1);
}

/// The value of `name` with `labels` in the admin listener's scrape (0 when absent).
fn metric(s: &Sluice, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut c = Client::connect(s.admin_port());
    let resp = c.request("GET", "/metrics", &[], b"");
    assert_eq!(resp.status, 200);
    let text = resp.text();
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap();
    scrape
        .samples
        .iter()
        .filter(|m| m.metric == name)
        .filter(|m| labels.iter().all(|(k, v)| m.labels.get(k) == Some(*v)))
        .map(|m| match m.value {
            prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}

#[test]
fn a_hit_costs_no_tokens_and_is_recorded_as_a_hit() {
    let up = numbered_upstream();
    let dir = TempDir::new("cache-audit");
    let audit = format!(
        "\n[audit]\n\n[[audit.sink]]\nkind = \"file\"\npath = \"{}\"\n",
        dir.path().join("audit.jsonl").display()
    );
    let limits = r#"limits = [{ unit = "tokens", quota = 100000, per = "day" }]"#;
    let extra = format!("{}{audit}", teams(limits));
    let s = Launch::new(&config(&up, "", &extra)).start();
    let body = question("chat", "hi");
    let key = [("api-key", KEY_A)];
    let remaining = |r: &Response| num_header(r, "x-ratelimit-remaining-tokens");
    let miss = post(&s, &[key[0], ("x-request-id", "req-miss")], &body);
    let hit1 = post(&s, &[key[0], ("x-request-id", "req-hit")], &body);
    let hit2 = post(&s, &key, &body);
    assert_eq!(
        (cache_of(&miss), cache_of(&hit1), cache_of(&hit2)),
        ("miss", "hit", "hit")
    );
    // No token limit applies to a hit: nothing reserved, no tokens header.
    for hit in [&hit1, &hit2] {
        assert_eq!(hit.header("x-ratelimit-remaining-tokens"), None);
    }
    // Each header counts its own request's reservation (the same for both questions): the
    // first miss was charged the backend's usage, the hits between nothing.
    let miss2 = post(&s, &key, &question("chat", "ho"));
    assert_eq!(cache_of(&miss2), "miss");
    assert_eq!(
        remaining(&miss) - remaining(&miss2),
        UP_USAGE,
        "a hit was charged tokens"
    );
    assert_eq!(up.request_count(), 2);

    let path = dir.path().join("audit.jsonl");
    let mut records: Vec<Value> = Vec::new();
    wait_until(Duration::from_secs(10), || {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let whole = text.rfind('\n').map_or("", |end| &text[..end]);
        records = whole
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        records.len() >= 3
    });
    let of = |id: &str| {
        records
            .iter()
            .find(|r| r["request_id"] == id)
            .unwrap_or_else(|| panic!("no record of {id}: {records:?}"))
            .clone()
    };
    let (m, h) = (of("req-miss"), of("req-hit"));
    assert_eq!(m["cache"], "miss");
    assert_eq!(m["total_tokens"], UP_USAGE);
    assert_eq!(m["backend"], "up");
    assert_eq!(h["cache"], "hit");
    assert_eq!(h["total_tokens"], 0);
    assert_eq!(h["tokens_estimated"], false);
    assert_eq!(h["status"], 200);
    assert_eq!(h["backend"], Value::Null);
    assert_eq!(h["attempts"], json!([]));
    assert_eq!(h["subscription"], "team-a");

    let lookups = |result| {
        metric(
            &s,
            "sluice_cache_lookups_total",
            &[("deployment", "chat"), ("result", result)],
        )
    };
    assert!(wait_until(Duration::from_secs(5), || lookups("hit") == 2.0));
    assert_eq!(lookups("miss"), 2.0);
    assert_eq!(lookups("bypass"), 0.0);
}

/// A hit counts against the request limits; one they refuse gets their answer, with no
/// cache result, and its record says it cost 0 tokens, as a refused miss's does.
#[test]
fn a_hit_counts_against_the_request_limits() {
    let up = numbered_upstream();
    let dir = TempDir::new("cache-refused");
    let path = dir.path().join("audit.jsonl");
    let audit = format!(
        "\n[audit]\n\n[[audit.sink]]\nkind = \"file\"\npath = \"{}\"\n",
        path.display()
    );
    let limits = r#"limits = [{ unit = "requests", quota = 3, per = "day" },
                              { unit = "tokens", quota = 100000, per = "day" }]"#;
    let s = Launch::new(&config(&up, "", &format!("{}{audit}", teams(limits)))).start();
    let body = question("chat", "hi");
    let key = [("api-key", KEY_A)];
    let results: Vec<String> = (0..3)
        .map(|_| cache_of(&post(&s, &key, &body)).to_owned())
        .collect();
    assert_eq!(results, ["miss", "hit", "hit"]);
    let refused = post(&s, &[key[0], ("x-request-id", "refused-hit")], &body);
    assert_openai_error(&refused, 403, Some("quota_exceeded"));
    // Refused before the cache answered: no cache result.
    assert_eq!(refused.header("x-sluice-cache"), None);
    let other = post(
        &s,
        &[key[0], ("x-request-id", "refused-miss")],
        &question("chat", "ho"),
    );
    assert_openai_error(&other, 403, Some("quota_exceeded"));
    assert_eq!(up.request_count(), 1);

    let mut records: Vec<Value> = Vec::new();
    assert!(wait_until(Duration::from_secs(10), || {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        records = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        records.len() >= 5
    }));
    for id in ["refused-hit", "refused-miss"] {
        let r = records.iter().find(|r| r["request_id"] == id).unwrap();
        assert_eq!(r["status"], 403, "{r}");
        assert_eq!(r["cache"], Value::Null, "{r}");
        assert_eq!(
            (
                &r["prompt_tokens"],
                &r["completion_tokens"],
                &r["total_tokens"]
            ),
            (&json!(0), &json!(0), &json!(0)),
            "{r}"
        );
    }
}

/// A hit costs no tokens, so a spent token quota does not refuse it; a request the cache
/// cannot answer is refused as before.
#[test]
fn a_hit_is_served_when_the_token_quota_is_spent() {
    const QUOTA: i64 = 100_000;
    let up = numbered_upstream();
    let limits = format!(r#"limits = [{{ unit = "tokens", quota = {QUOTA}, per = "day" }}]"#);
    let s = Launch::new(&config(&up, "", &teams(&limits))).start();
    let key = [("api-key", KEY_A)];
    let with_cap = |q: &str, max_tokens: i64| {
        let mut body = question("chat", q);
        body["max_tokens"] = json!(max_tokens);
        body
    };
    let first = post(&s, &key, &with_cap("hi", 10));
    assert_eq!(cache_of(&first), "miss");
    // The reservation was the prompt estimate plus the cap; the usage settled is UP_USAGE.
    let prompt = QUOTA - num_header(&first, "x-ratelimit-remaining-tokens") - 10;
    let left = QUOTA - UP_USAGE;
    // A question as long as the first, capped one token past what is left: refused.
    let refused = post(&s, &key, &with_cap("ho", left - prompt + 1));
    assert_openai_error(&refused, 403, Some("quota_exceeded"));
    assert_eq!(refused.header("x-sluice-cache"), None);
    // Spend all but a few tokens of the quota on another question.
    let spender = post(&s, &key, &with_cap("ho", left - prompt));
    assert_eq!(cache_of(&spender), "miss");
    let spent = post(&s, &key, &with_cap("ha", left - prompt));
    assert_openai_error(&spent, 403, Some("quota_exceeded"));
    // The first question is still answered, from the cache.
    let hit = post(&s, &key, &with_cap("hi", 10));
    assert_eq!(cache_of(&hit), "hit");
    assert_eq!(content(&hit), content(&first));
    assert_eq!(up.request_count(), 2);
}

/// A backend's answer is kept out of the shared cache when its `Cache-Control` says
/// `no-store`, `private` or `no-cache` (RFC 9111 §5.2.2.4, .5, .7), whatever the case or the
/// other directives, when it says `Vary: *` (§4.1), and when it is already stale: a zero
/// `max-age` or `s-maxage`, an `Age` past its `max-age`, an `Expires` past or invalid (§4.2.1,
/// §5.3).
#[test]
fn an_answer_the_backend_forbids_storing_or_sends_stale_is_not_stored() {
    let up = numbered_upstream();
    let s = Launch::new(&config(&up, "", "")).start();
    let refusals = [
        json!({"cache-control": "no-store"}),
        json!({"cache-control": "private, max-age=60"}),
        json!({"cache-control": "max-age=5, PRIVATE"}),
        json!({"cache-control": "no-cache"}),
        json!({"cache-control": "max-age=0, must-revalidate"}),
        json!({"cache-control": "s-maxage=0, max-age=60"}),
        json!({"cache-control": "max-age=60", "age": "60"}),
        json!({"vary": "*"}),
        json!({"expires": "Thu, 01 Jan 1970 00:00:00 GMT"}),
        json!({"expires": "0"}),
    ];
    for (i, headers) in refusals.iter().enumerate() {
        let mut body = question("chat", &format!("q{i}"));
        body["headers"] = headers.clone();
        for _ in 0..2 {
            assert_eq!(cache_of(&ask(&s, &body)), "miss", "{headers}");
        }
    }
    assert_eq!(up.request_count(), 2 * refusals.len());
    let mut body = question("chat", "public");
    body["headers"] = json!({"cache-control": "max-age=60", "vary": "origin",
                             "expires": "Thu, 01 Jan 1970 00:00:00 GMT"});
    assert_eq!(cache_of(&ask(&s, &body)), "miss");
    assert_eq!(cache_of(&ask(&s, &body)), "hit");
}

/// An answer whose stated lifetime (`max-age`) is shorter than the deployment's `ttl` is
/// served from the cache only for that long.
#[test]
fn an_answer_is_stored_no_longer_than_its_own_lifetime() {
    let up = numbered_upstream();
    let s = Launch::new(&config(&up, "ttl = \"10m\"", "")).start();
    let mut body = question("chat", "brief");
    body["headers"] = json!({"cache-control": "max-age=1"});
    assert_eq!(cache_of(&ask(&s, &body)), "miss");
    assert_eq!(cache_of(&ask(&s, &body)), "hit");
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(cache_of(&ask(&s, &body)), "miss", "served past its max-age");
    assert_eq!(up.request_count(), 2);
}

/// An answer's age counts from before it arrived (RFC 9111 §4.2.3: the larger of its `Age`
/// and the time since its `Date`): it shortens the lifetime the answer states, a hit
/// states it in `Age`, and a client's `max-age` is held to it.
#[test]
fn an_answers_age_counts_from_its_age_and_date() {
    let up = numbered_upstream();
    let s = Launch::new(&config(&up, "ttl = \"10m\"", "")).start();
    let ago =
        |secs| httpdate::fmt_http_date(std::time::SystemTime::now() - Duration::from_secs(secs));

    // 500 s old on arrival by its Age, fresh for 600: a hit says it is about 500 s old.
    let mut aged = question("chat", "aged");
    aged["headers"] = json!({"cache-control": "max-age=600", "age": "500"});
    assert_eq!(cache_of(&ask(&s, &aged)), "miss");
    let hit = ask(&s, &aged);
    assert_eq!(cache_of(&hit), "hit");
    let age: u64 = hit.header("age").unwrap().parse().unwrap();
    assert!((500..=510).contains(&age), "age {age}");
    // A client that takes nothing older than 60 s does not get it.
    let fresh_only = post(&s, &[("Cache-Control", "max-age=60")], &aged);
    assert_eq!(cache_of(&fresh_only), "miss");

    // Dated 400 s ago with no lifetime stated: stored for the ttl, but 400 s old.
    let mut dated = question("chat", "dated");
    dated["headers"] = json!({"date": ago(400)});
    assert_eq!(cache_of(&ask(&s, &dated)), "miss");
    assert_eq!(cache_of(&ask(&s, &dated)), "hit");
    let fresh_only = post(&s, &[("Cache-Control", "max-age=60")], &dated);
    assert_eq!(cache_of(&fresh_only), "miss");

    // Dated 8 s ago and fresh for 10: 2 s are left.
    let mut short = question("chat", "short");
    short["headers"] = json!({"date": ago(8), "cache-control": "max-age=10"});
    assert_eq!(cache_of(&ask(&s, &short)), "miss");
    assert_eq!(cache_of(&ask(&s, &short)), "hit");
    std::thread::sleep(Duration::from_millis(3100));
    assert_eq!(
        cache_of(&ask(&s, &short)),
        "miss",
        "served past its lifetime"
    );
    // Dated 8 s ago and expiring now: its 8 s are spent on arrival, so it is not stored.
    let mut spent = question("chat", "spent");
    spent["headers"] = json!({"date": ago(8), "expires": ago(0)});
    assert_eq!(cache_of(&ask(&s, &spent)), "miss");
    assert_eq!(cache_of(&ask(&s, &spent)), "miss", "stored although stale");
    // A fresh answer is 0 old.
    let plain = question("chat", "plain");
    assert_eq!(cache_of(&ask(&s, &plain)), "miss");
    assert_eq!(ask(&s, &plain).header("age"), Some("0"));
}

#[test]
fn answers_other_than_200_are_not_stored() {
    let up = numbered_upstream();
    let s = Launch::new(&config(&up, "", "")).start();
    let mut body = question("chat", "hi");
    body["fail"] = json!(400);
    for _ in 0..2 {
        let resp = ask(&s, &body);
        assert_eq!(resp.status, 400);
        assert_eq!(cache_of(&resp), "miss");
    }
    assert_eq!(up.request_count(), 2);
}

#[test]
fn streamed_requests_bypass_the_cache() {
    let up = numbered_upstream();
    let s = Launch::new(&config(&up, "", "")).start();
    let mut body = question("chat", "hi");
    body["stream"] = json!(true);
    for i in 1..=2 {
        let resp = ask(&s, &body);
        assert_eq!(resp.status, 200);
        assert_eq!(cache_of(&resp), "bypass");
        assert!(
            resp.text().contains(&format!("answer {i}")),
            "{}",
            resp.text()
        );
    }
    assert_eq!(up.request_count(), 2);
}

#[test]
fn only_deterministic_requests_are_cached_unless_the_deployment_says_so() {
    let up = numbered_upstream();
    let s = Launch::new(&config(&up, "", "")).start();
    let mut warm = question("chat", "hi");
    warm["temperature"] = json!(0.7);
    let mut absent = question("chat", "hi");
    absent.as_object_mut().unwrap().remove("temperature");
    for body in [&warm, &warm, &absent, &absent] {
        assert_eq!(cache_of(&ask(&s, body)), "bypass");
    }
    assert_eq!(up.request_count(), 4);
    let mut seeded = warm.clone();
    seeded["seed"] = json!(7);
    assert_eq!(cache_of(&ask(&s, &seeded)), "miss");
    assert_eq!(cache_of(&ask(&s, &seeded)), "hit");

    let up = numbered_upstream();
    let s = Launch::new(&config(&up, "nondeterministic = true", "")).start();
    assert_eq!(cache_of(&ask(&s, &warm)), "miss");
    assert_eq!(cache_of(&ask(&s, &warm)), "hit");
    assert_eq!(cache_of(&ask(&s, &absent)), "miss");
    assert_eq!(up.request_count(), 2);
}

#[test]
fn a_reload_with_the_same_cache_settings_keeps_the_entries() {
    let up = numbered_upstream();
    let s = Launch::new(&config(&up, "ttl = \"10m\"", "")).start();
    let body = question("chat", "hi");
    assert_eq!(cache_of(&ask(&s, &body)), "miss");
    // Another deployment added: `chat` keeps its cache.
    s.rewrite_config(&format!(
        "{}\n[[deployment]]\nname = \"added\"\nbackends = [{{ backend = \"up\" }}]\n",
        config(&up, "ttl = \"10m\"", "")
    ));
    s.signal("HUP");
    assert!(s.wait_log("config reloaded", Duration::from_secs(10)));
    assert_eq!(cache_of(&ask(&s, &body)), "hit");
    assert!(s.log().contains("response cache kept"), "{}", s.log());
    assert!(!s.log().contains("response cache emptied"), "{}", s.log());
    // Changed settings: a new, empty cache.
    s.rewrite_config(&config(&up, "ttl = \"5m\"", ""));
    s.signal("HUP");
    assert!(wait_until(Duration::from_secs(10), || s
        .log()
        .matches("config reloaded")
        .count()
        >= 2));
    assert_eq!(cache_of(&ask(&s, &body)), "miss");
    assert_eq!(up.request_count(), 2);
    assert_eq!(s.log().matches("response cache emptied").count(), 1);
    // The same settings, but `up` now names another server: its answers, not the old ones.
    let other = numbered_upstream();
    s.rewrite_config(&config(&other, "ttl = \"5m\"", ""));
    s.signal("HUP");
    assert!(wait_until(Duration::from_secs(10), || s
        .log()
        .matches("config reloaded")
        .count()
        >= 3));
    assert_eq!(cache_of(&ask(&s, &body)), "miss");
    assert_eq!((up.request_count(), other.request_count()), (2, 1));
    assert_eq!(cache_of(&ask(&s, &body)), "hit");
    assert_eq!(s.log().matches("response cache emptied").count(), 2);
}

/// A hit is sent as the backend sent the answer: its `content-type`, and a body too large to
/// copy behind the head (written from the store) byte for byte.
#[test]
fn a_hit_keeps_the_backends_content_type_and_body() {
    let up = numbered_upstream();
    let s = Launch::new(&config(&up, "", "")).start();
    for pad in [0, 200_000] {
        let mut body = question("chat", &format!("pad {pad}"));
        body["content_type"] = json!("application/json; charset=utf-8");
        body["pad"] = json!(pad);
        let miss = ask(&s, &body);
        let hit = ask(&s, &body);
        assert_eq!((cache_of(&miss), cache_of(&hit)), ("miss", "hit"));
        assert_eq!(hit.body, miss.body, "pad {pad}");
        assert!(hit.body.len() > pad);
        for r in [&miss, &hit] {
            assert_eq!(
                r.header("content-type"),
                Some("application/json; charset=utf-8")
            );
        }
    }
    assert_eq!(up.request_count(), 2);
}

/// A raw connection to `s` that has sent `body` to the chat path with `connection: close`,
/// for a test to read the answer at its own pace (reads time out after 20 s).
fn send_closing(s: &Sluice, body: &Value) -> TcpStream {
    let mut raw = TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let payload = serde_json::to_vec(body).unwrap();
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: sluice\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n",
        payload.len()
    );
    raw.write_all(request.as_bytes()).unwrap();
    raw.write_all(&payload).unwrap();
    raw
}

/// A backend whose answers to bodies with `"slow": true` stop 10 bytes short until `release`
/// is set; every answer is `pad` bytes of padding in a chat answer numbered by arrival.
fn holding_upstream(release: Arc<AtomicBool>) -> Upstream {
    let seen = AtomicUsize::new(0);
    Upstream::start(move |r, s: &mut TcpStream| {
        let i = seen.fetch_add(1, Ordering::SeqCst) + 1;
        let req = r.json();
        let pad = "x".repeat(req["pad"].as_u64().unwrap_or(0) as usize);
        let answer = json!({
            "id": format!("chatcmpl-{i}"), "object": "chat.completion", "created": 1,
            "model": "upstream-model",
            "choices": [{"index": 0, "message": {"role": "assistant",
                         "content": format!("answer {i}{pad}")}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": UP_USAGE}
        });
        let body = serde_json::to_vec(&answer).unwrap();
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        let cut = if req["slow"] == json!(true) {
            body.len() - 10
        } else {
            body.len()
        };
        let _ = s.write_all(head.as_bytes());
        let _ = s.write_all(&body[..cut]);
        let _ = s.flush();
        if cut < body.len() {
            wait_until(Duration::from_secs(20), || release.load(Ordering::SeqCst));
            let _ = s.write_all(&body[cut..]);
        }
        After::KeepAlive
    })
}

/// Misses in flight copy their answers into room held from the cache's budget, `max_bytes`
/// between them: an answer that finds it spent is relayed whole but not stored, and the room
/// comes back once the answer holding it is stored.
#[test]
fn answers_in_flight_hold_at_most_max_bytes_between_them() {
    let release = Arc::new(AtomicBool::new(false));
    let up = holding_upstream(Arc::clone(&release));
    // One shard: the largest body is about 61 KiB, the budget for answers in flight 64 KiB.
    let s = Launch::new(&config(&up, "max_entries = 10, max_bytes = \"64KiB\"", "")).start();
    let mut big = question("chat", "big");
    big["pad"] = json!(45_000);
    big["slow"] = json!(true);
    let mut small = question("chat", "small");
    small["pad"] = json!(30_000);

    // The big answer, relayed (and copied) up to its last 10 bytes: it holds past 32 KiB,
    // so it has taken the largest body's room.
    let mut raw = send_closing(&s, &big);
    let mut got = Vec::new();
    let mut buf = [0u8; 16 << 10];
    while got.len() < 45_000 {
        let n = raw.read(&mut buf).unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    assert!(String::from_utf8_lossy(&got).contains("x-sluice-cache: miss"));

    // Meanwhile the small one finds the budget spent: relayed whole, not stored.
    let first = ask(&s, &small);
    assert_eq!(cache_of(&first), "miss");
    assert!(content(&first).starts_with("answer 2"));
    assert_eq!(cache_of(&ask(&s, &small)), "miss");
    assert_eq!(up.request_count(), 3);

    // The big answer completes and is stored; its room is free again.
    release.store(true, Ordering::SeqCst);
    raw.read_to_end(&mut got).unwrap();
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.ends_with("}"),
        "{}",
        &text[text.len().saturating_sub(100)..]
    );
    assert!(wait_until(Duration::from_secs(10), || {
        let r = ask(&s, &big);
        cache_of(&r) == "hit"
    }));
    let before = up.request_count();
    assert_eq!(cache_of(&ask(&s, &small)), "miss");
    assert_eq!(cache_of(&ask(&s, &small)), "hit");
    assert_eq!(up.request_count(), before + 1);
}

/// A hit far larger than the socket's buffers, to a client that reads it slowly but without
/// a stall, arrives whole: the send timeout bounds each write, not the whole answer (as for
/// a relayed answer).
#[test]
fn a_large_hit_to_a_slow_reader_arrives_whole_within_the_send_timeout() {
    let up = numbered_upstream();
    let s = Launch::new(&config(&up, "max_entries = 10, max_bytes = \"64MiB\"", ""))
        .server("[server.timeouts]\nsend = \"1s\"")
        .start();
    let mut big = question("chat", "big");
    big["pad"] = json!(16 << 20);
    let stored = ask(&s, &big);
    assert_eq!(cache_of(&stored), "miss");
    let expected = stored.body.len();
    assert!(expected > 16 << 20);

    // 256 KiB every 100 ms: about 6.5 s for the body, far past one send timeout.
    let mut raw = send_closing(&s, &big);
    let mut got = Vec::new();
    let mut buf = vec![0u8; 256 << 10];
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let mut round = 0;
        while round < buf.len() {
            let n = raw.read(&mut buf[round..]).unwrap();
            if n == 0 {
                break;
            }
            round += n;
        }
        got.extend_from_slice(&buf[..round]);
        if round < buf.len() {
            break;
        }
    }
    let text = String::from_utf8_lossy(&got);
    assert!(text.contains("x-sluice-cache: hit"), "{}", &text[..200]);
    let body_at = text.find("\r\n\r\n").unwrap() + 4;
    assert_eq!(got.len() - body_at, expected, "the hit was cut short");
    assert_eq!(&got[body_at..], &stored.body[..]);
    assert_eq!(up.request_count(), 1);
}
