//! Whole-process tests of subscription keys and products: auth switched on by a
//! `[[subscription]]`, the three header forms, missing/unknown/revoked keys, keys in the query
//! string, and products that do not allow a deployment or an operation.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/access.rs"]
mod access;
mod support;

use access::*;
use serde_json::json;
use support::*;

const KEY_A: &str = "test-key-team-a-0123456789";
const KEY_A2: &str = "test-key-team-a-second-key";
const KEY_REVOKED: &str = "test-key-team-a-revoked";
const KEY_NARROW: &str = "test-key-narrow-product";

/// Team a (product `open`: everything, one live key, a second live key and a revoked one)
/// and `narrow` (product `narrow`: only `gpt-4o`, only chat).
fn config() -> String {
    let mut body = String::from(MOCK_DEPLOYMENTS);
    body.push_str(&product("open", ""));
    body.push_str(&product(
        "narrow",
        "deployments = [\"gpt-4o\"]\noperations = [\"chat\"]",
    ));
    body.push_str(&format!(
        "\n[[subscription]]\nname = \"team-a\"\nproduct = \"open\"\nkeys = [\"{}\", \"{}\"]\n\
         revoked_keys = [\"{}\"]\n",
        key_hash(KEY_A),
        key_hash(KEY_A2),
        key_hash(KEY_REVOKED)
    ));
    body.push_str(&subscription("narrow", "narrow", &[KEY_NARROW]));
    body
}

fn start() -> Sluice {
    Launch::new(&config()).start()
}

fn chat_with_headers(s: &Sluice, target: &str, headers: &[(&str, &str)]) -> Response {
    post_with(s, target, headers, &chat_body(Some("gpt-4o"), false))
}

#[test]
fn without_subscriptions_no_key_is_needed() {
    let s = Launch::new(MOCK_DEPLOYMENTS).start();
    let resp = chat_with_headers(&s, "/v1/chat/completions", &[]);
    assert_eq!(resp.status, 200, "body: {}", resp.text());
    let resp = s.request("GET", "/v1/models", &[], b"");
    assert_eq!(resp.status, 200, "body: {}", resp.text());
}

#[test]
fn each_header_form_is_accepted() {
    let s = start();
    let bearer = format!("Bearer {KEY_A}");
    for headers in [
        vec![("api-key", KEY_A)],
        vec![("Ocp-Apim-Subscription-Key", KEY_A)],
        vec![("Authorization", bearer.as_str())],
        vec![("api-key", KEY_A2)],
    ] {
        let resp = chat_with_headers(&s, "/v1/chat/completions", &headers);
        assert_eq!(resp.status, 200, "{headers:?}: body {}", resp.text());
        assert_eq!(resp.json()["object"], "chat.completion");
    }
    // The Azure path form and the model list too.
    let resp = post_with(
        &s,
        "/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21",
        &[("api-key", KEY_A)],
        &chat_body(None, false),
    );
    assert_eq!(resp.status, 200, "body: {}", resp.text());
    let resp = s.request("GET", "/v1/models", &[("api-key", KEY_A)], b"");
    assert_eq!(resp.status, 200, "body: {}", resp.text());
}

#[test]
fn missing_key_is_401() {
    let s = start();
    let resp = chat_with_headers(&s, "/v1/chat/completions", &[]);
    assert_openai_error(&resp, 401, Some("invalid_api_key"));
    // Every route needs credentials, the model list too.
    let resp = s.request("GET", "/v1/models", &[], b"");
    assert_openai_error(&resp, 401, Some("invalid_api_key"));
    let resp = post_with(
        &s,
        "/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21",
        &[],
        &chat_body(None, false),
    );
    assert_openai_error(&resp, 401, Some("invalid_api_key"));
}

#[test]
fn unknown_key_is_401_in_every_header_form() {
    let s = start();
    let wrong = "test-key-nobody-has-this-one";
    let bearer = format!("Bearer {wrong}");
    let hash = key_hash(KEY_A);
    for headers in [
        vec![("api-key", wrong)],
        vec![("Ocp-Apim-Subscription-Key", wrong)],
        vec![("Authorization", bearer.as_str())],
        // A key differing from a valid one in its last character only.
        vec![("api-key", "test-key-team-a-012345678X")],
        // The hash itself is not a key.
        vec![("api-key", hash.as_str())],
    ] {
        let resp = chat_with_headers(&s, "/v1/chat/completions", &headers);
        assert_openai_error(&resp, 401, Some("invalid_api_key"));
    }
}

#[test]
fn revoked_key_is_401_and_the_others_still_work() {
    let s = start();
    let resp = chat_with_headers(&s, "/v1/chat/completions", &[("api-key", KEY_REVOKED)]);
    assert_openai_error(&resp, 401, Some("invalid_api_key"));
    let resp = chat_with_headers(&s, "/v1/chat/completions", &[("api-key", KEY_A)]);
    assert_eq!(resp.status, 200, "body: {}", resp.text());
}

#[test]
fn key_in_the_query_string_is_refused_even_with_a_valid_header() {
    let s = start();
    for target in [
        format!("/v1/chat/completions?api-key={KEY_A}"),
        format!("/v1/chat/completions?subscription-key={KEY_A}"),
        format!(
            "/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21&api-key={KEY_A}"
        ),
        format!(
            "/openai/deployments/gpt-4o/chat/completions?subscription-key={KEY_A}&api-version=2024-10-21"
        ),
    ] {
        let body = if target.starts_with("/openai/deployments") {
            chat_body(None, false)
        } else {
            chat_body(Some("gpt-4o"), false)
        };
        let resp = post_with(&s, &target, &[("api-key", KEY_A)], &body);
        assert_openai_error(&resp, 401, Some("key_in_query"));
        // The key must not be echoed back.
        assert!(!resp.text().contains(KEY_A), "key echoed: {}", resp.text());
        // Without a header key as well.
        let resp = post_with(&s, &target, &[], &body);
        assert_openai_error(&resp, 401, Some("key_in_query"));
    }
}

#[test]
fn product_refuses_a_deployment_it_does_not_allow() {
    let s = start();
    let resp = chat_as(&s, KEY_NARROW, &chat_body(Some("other"), false));
    assert_openai_error(&resp, 403, Some("deployment_not_allowed"));
    let resp = post_with(
        &s,
        "/openai/deployments/other/chat/completions?api-version=2024-10-21",
        &[("api-key", KEY_NARROW)],
        &chat_body(None, false),
    );
    assert_openai_error(&resp, 403, Some("deployment_not_allowed"));
    // Its allowed deployment works; another product's subscription may call `other`.
    let resp = chat_as(&s, KEY_NARROW, &chat_body(Some("gpt-4o"), false));
    assert_eq!(resp.status, 200, "body: {}", resp.text());
    let resp = chat_as(&s, KEY_A, &chat_body(Some("other"), false));
    assert_eq!(resp.status, 200, "body: {}", resp.text());
}

#[test]
fn product_refuses_an_operation_it_does_not_allow() {
    let s = start();
    // `narrow` allows chat on gpt-4o only: completions on gpt-4o is the operation refused.
    let resp = post_with(
        &s,
        "/v1/completions",
        &[("api-key", KEY_NARROW)],
        &json!({"model": "gpt-4o", "prompt": "Say hi", "max_tokens": 5}),
    );
    assert_openai_error(&resp, 403, Some("operation_not_allowed"));
    let resp = post_with(
        &s,
        "/v1/completions",
        &[("api-key", KEY_A)],
        &json!({"model": "gpt-4o", "prompt": "Say hi", "max_tokens": 5}),
    );
    assert_eq!(resp.status, 200, "body: {}", resp.text());
    let resp = post_with(
        &s,
        "/v1/embeddings",
        &[("api-key", KEY_A)],
        &embeddings_body(),
    );
    assert_eq!(resp.status, 200, "body: {}", resp.text());
}

#[test]
fn product_without_models_refuses_the_model_list() {
    let s = start();
    // `models` is an operation a product lists (README); `narrow` lists only `chat`.
    let resp = s.request("GET", "/v1/models", &[("api-key", KEY_NARROW)], b"");
    assert_openai_error(&resp, 403, Some("operation_not_allowed"));
    let resp = s.request("GET", "/v1/models", &[("api-key", KEY_A)], b"");
    assert_eq!(resp.status, 200, "body: {}", resp.text());
}

#[test]
fn client_key_is_not_forwarded_upstream() {
    let up = Upstream::json(upstream_chat_answer("gpt-4o"));
    let mut body = openai_backend_body(&up.url(), "gpt-4o");
    body.push_str(&product("open", ""));
    body.push_str(&subscription("team-a", "open", &[KEY_A]));
    let s = Launch::new(&body).start();
    let bearer = format!("Bearer {KEY_A}");
    for headers in [
        vec![("api-key", KEY_A)],
        vec![("Ocp-Apim-Subscription-Key", KEY_A)],
        vec![("Authorization", bearer.as_str())],
    ] {
        let resp = chat_with_headers(&s, "/v1/chat/completions", &headers);
        assert_eq!(resp.status, 200, "body: {}", resp.text());
    }
    let reqs = up.requests();
    assert_eq!(reqs.len(), 3);
    for r in reqs {
        for (name, value) in &r.head.headers {
            assert!(
                !value.contains(KEY_A),
                "client key forwarded upstream in {name}: {value}"
            );
        }
    }
}
