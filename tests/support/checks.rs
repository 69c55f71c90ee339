//! Assertions on Sluice's answers: the OpenAI error shape, the request id, the
//! `x-ratelimit-*` and `Retry-After` headers of limits, and usage totals.

use serde_json::Value;

use super::client::Response;

/// Asserts `resp` is a gateway-made error: `status`, JSON content type, `x-request-id`, and
/// the OpenAI shape `{"error":{"message","type","param":null,"code"}}` (with `code` when given).
pub fn assert_openai_error(resp: &Response, status: u16, code: Option<&str>) {
    assert_eq!(resp.status, status, "status; body: {}", resp.text());
    let ct = resp.header("content-type").unwrap_or("");
    assert!(
        ct.starts_with("application/json"),
        "content-type of a {status} error: {ct:?}"
    );
    assert!(
        resp.header("x-request-id").is_some_and(|v| !v.is_empty()),
        "x-request-id missing on a {status} error: {:?}",
        resp.head.headers
    );
    let v = resp.json();
    let err = &v["error"];
    assert!(err.is_object(), "no error object: {v}");
    assert!(
        err["message"].as_str().is_some_and(|m| !m.is_empty()),
        "error.message: {v}"
    );
    assert!(err["type"].is_string(), "error.type: {v}");
    // The spec's shape shows `"param": null`; OpenAI itself names the parameter at fault
    // (e.g. "model"), and the SDKs parse either, so a string is accepted too.
    assert!(
        err.get("param")
            .is_some_and(|p| p.is_null() || p.is_string()),
        "error.param must be null or a string: {v}"
    );
    assert!(err.get("code").is_some(), "error.code missing: {v}");
    if let Some(code) = code {
        assert_eq!(err["code"].as_str(), Some(code), "error.code: {v}");
    }
}

/// Asserts a response has a non-empty `x-request-id`.
pub fn assert_request_id(resp: &Response) {
    assert!(
        resp.header("x-request-id").is_some_and(|v| !v.is_empty()),
        "x-request-id missing: {:?}",
        resp.head.headers
    );
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
