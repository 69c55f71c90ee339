//! Helpers shared by the access, limits, accounting and JWT whole-process tests: key hashes,
//! the mock deployments with the heuristic token estimator, calls with a key, and checks of
//! the 429/403 answers and `x-ratelimit-*` headers.
//!
//! Included with `#[path = "support/access.rs"] mod access;` beside `mod support;`.
#![allow(dead_code)]

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::support::*;

/// `sha256:<64 lowercase hex>` of `key`, as `[[subscription]] keys` takes it.
pub fn key_hash(key: &str) -> String {
    let digest = Sha256::digest(key.as_bytes());
    let mut out = String::from("sha256:");
    for b in digest {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// The built-in mock (16 completion tokens, no latency, as fast as possible) serving
/// `gpt-4o` (chat), `text-embedding-3-small` and `other`, each with the heuristic estimator.
pub const MOCK_DEPLOYMENTS: &str = r#"
[[backend]]
name = "mock-a"
kind = "mock"
model = "gpt-4o-mock"
completion_tokens = 16
embedding_dimensions = 8

[[deployment]]
name = "gpt-4o"
backends = [{ backend = "mock-a" }]
tokens = { estimator = "heuristic" }

[[deployment]]
name = "text-embedding-3-small"
backends = [{ backend = "mock-a" }]
tokens = { estimator = "heuristic" }

[[deployment]]
name = "other"
backends = [{ backend = "mock-a" }]
tokens = { estimator = "heuristic" }
"#;

/// A `[[subscription]]` named `name` of `product` with `keys` (plain keys; hashed here).
pub fn subscription(name: &str, product: &str, keys: &[&str]) -> String {
    let hashes: Vec<String> = keys
        .iter()
        .map(|k| format!("\"{}\"", key_hash(k)))
        .collect();
    format!(
        "\n[[subscription]]\nname = \"{name}\"\nproduct = \"{product}\"\nkeys = [{}]\n",
        hashes.join(", ")
    )
}

/// A `[[product]]` named `name` with `extra` lines (e.g. `limits = [...]`, `trace = true`).
pub fn product(name: &str, extra: &str) -> String {
    format!("\n[[product]]\nname = \"{name}\"\n{extra}\n")
}

/// `POST target` with a JSON body and the extra `headers` on a fresh connection.
pub fn post_with(s: &Sluice, target: &str, headers: &[(&str, &str)], body: &Value) -> Response {
    let bytes = serde_json::to_vec(body).expect("json");
    let mut all = vec![("Content-Type", "application/json")];
    all.extend_from_slice(headers);
    s.request("POST", target, &all, &bytes)
}

/// `post_with` on a connection closed after the answer (`Connection: close`), returning
/// once Sluice has closed it. Sluice books a request's charge (settles its limits) before it
/// closes the connection, so the next request sees this one's real cost: an observable event
/// to wait for, instead of a pause.
pub fn post_settled(s: &Sluice, target: &str, headers: &[(&str, &str)], body: &Value) -> Response {
    let bytes = serde_json::to_vec(body).expect("json");
    let mut all = vec![
        ("Content-Type", "application/json"),
        ("Connection", "close"),
    ];
    all.extend_from_slice(headers);
    let mut c = s.connect();
    let resp = c.request("POST", target, &all, &bytes);
    wait_settled(&mut c);
    resp
}

/// Waits (≤ 10 s) for Sluice to close `c` after an answer to a `Connection: close` request,
/// with nothing more sent: from then on the request's charge is booked.
pub fn wait_settled(c: &mut Client) {
    c.set_read_timeout(std::time::Duration::from_secs(10));
    let mut rest = Vec::new();
    match std::io::Read::read_to_end(c.raw(), &mut rest) {
        Ok(_) => assert!(
            rest.is_empty(),
            "bytes after the answer: {:?}",
            String::from_utf8_lossy(&rest)
        ),
        Err(e) => panic!("Sluice did not close the connection after its answer: {e}"),
    }
}

/// `POST /v1/chat/completions` with `api-key: key`.
pub fn chat_as(s: &Sluice, key: &str, body: &Value) -> Response {
    post_with(s, "/v1/chat/completions", &[("api-key", key)], body)
}

/// A plain chat to `gpt-4o` (`max_tokens` 100) with `api-key: key`.
pub fn chat(s: &Sluice, key: &str) -> Response {
    chat_as(s, key, &chat_body(Some("gpt-4o"), false))
}

/// An embeddings request to `text-embedding-3-small`.
pub fn embeddings_body() -> Value {
    json!({
        "model": "text-embedding-3-small",
        "input": ["The food was delicious", "and the waiter was very friendly"]
    })
}

/// Header `name` as an integer; panics naming the headers when it is missing or not one.
pub fn num_header(resp: &Response, name: &str) -> i64 {
    let v = resp.header(name).unwrap_or_else(|| {
        panic!(
            "header {name} missing (status {}): {:?}; body {}",
            resp.status,
            resp.head.headers,
            resp.text()
        )
    });
    v.trim()
        .parse()
        .unwrap_or_else(|e| panic!("header {name}: {v:?} is not an integer ({e})"))
}

/// `x-ratelimit-remaining-tokens` of a successful answer.
pub fn remaining_tokens(resp: &Response) -> i64 {
    assert_eq!(resp.status, 200, "body: {}", resp.text());
    num_header(resp, "x-ratelimit-remaining-tokens")
}

/// `x-ratelimit-remaining-requests` of a successful answer.
pub fn remaining_requests(resp: &Response) -> i64 {
    assert_eq!(resp.status, 200, "body: {}", resp.text());
    num_header(resp, "x-ratelimit-remaining-requests")
}

/// `usage.total_tokens` of a JSON answer (or of a usage chunk).
pub fn usage_total(v: &Value) -> i64 {
    v["usage"]["total_tokens"]
        .as_i64()
        .unwrap_or_else(|| panic!("no usage.total_tokens in {v}"))
}

/// Asserts a 429 `rate_limit_exceeded` with `Retry-After` (whole seconds, ≥ 1) and
/// `retry-after-ms` (≥ 0, not later than `Retry-After`); returns `retry-after-ms`.
pub fn assert_rate_limited(resp: &Response) -> f64 {
    assert_openai_error(resp, 429, Some("rate_limit_exceeded"));
    let ra = resp
        .header("retry-after")
        .unwrap_or_else(|| panic!("429 without Retry-After: {:?}", resp.head.headers));
    let secs: u64 = ra
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("Retry-After {ra:?} is not whole seconds ({e})"));
    assert!(secs >= 1, "Retry-After must be at least 1: {ra:?}");
    let ms_text = resp
        .header("retry-after-ms")
        .unwrap_or_else(|| panic!("429 without retry-after-ms: {:?}", resp.head.headers));
    let ms: f64 = ms_text
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("retry-after-ms {ms_text:?} is not a number ({e})"));
    assert!(ms >= 0.0, "retry-after-ms negative: {ms_text:?}");
    assert!(
        (secs as f64) * 1000.0 + 1.0 >= ms,
        "Retry-After ({secs} s) earlier than retry-after-ms ({ms} ms)"
    );
    ms
}
