//! Whole-process tests of subscription keys and products: auth switched on by a
//! `[[subscription]]`, the three header forms, missing/unknown/revoked keys, keys in the query
//! string, and products that do not allow a deployment or an operation.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

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

// ---------------------------------------------------------------------------------------------
// What is authorized is what is forwarded: the backend's `model` is decided by the deployment
// Sluice authorized, never passed through from the client when it names another.

const KEY_CHEAP: &str = "test-key-cheap-only-product";
const AZURE: &str = "/openai/deployments/cheap/chat/completions?api-version=2024-10-21";

/// Deployments `cheap` (an openai-kind backend with no `model` setting) and `expensive`
/// (another), `pinned` (an openai backend whose `model` is set) and `az` (an azure backend
/// whose deployment is `az-cheap`); product `cheap` allows all but `expensive`.
fn model_config(cheap: &Upstream, expensive: &Upstream) -> String {
    let (c, e) = (cheap.url(), expensive.url());
    let mut body = format!(
        r#"
[[backend]]
name = "cheap-up"
kind = "openai"
url = "{c}"

[[backend]]
name = "pinned-up"
kind = "openai"
url = "{c}"
model = "gpt-4o-mini-2024-07-18"

[[backend]]
name = "az-up"
kind = "azure"
url = "{c}"
deployment = "az-cheap"

[[backend]]
name = "expensive-up"
kind = "openai"
url = "{e}"

[[deployment]]
name = "cheap"
backends = [{{ backend = "cheap-up" }}]

[[deployment]]
name = "pinned"
backends = [{{ backend = "pinned-up" }}]

[[deployment]]
name = "az"
backends = [{{ backend = "az-up" }}]

[[deployment]]
name = "expensive"
backends = [{{ backend = "expensive-up" }}]
"#
    );
    body.push_str(&product(
        "cheap",
        r#"deployments = ["cheap", "pinned", "az"]"#,
    ));
    body.push_str(&subscription("cheap-team", "cheap", &[KEY_CHEAP]));
    body
}

fn post_raw(s: &Sluice, target: &str, body: &str) -> Response {
    s.request(
        "POST",
        target,
        &[("Content-Type", "application/json"), ("api-key", KEY_CHEAP)],
        body.as_bytes(),
    )
}

#[test]
fn the_body_cannot_name_another_deployment_than_the_one_authorized() {
    let cheap = Upstream::json(upstream_chat_answer("x"));
    let expensive = Upstream::json(upstream_chat_answer("x"));
    let s = Launch::new(&model_config(&cheap, &expensive)).start();
    let msgs = r#""messages":[{"role":"user","content":"hi"}]"#;
    let azure =
        |dep: &str| format!("/openai/deployments/{dep}/chat/completions?api-version=2024-10-21");
    for (target, body, want) in [
        // The issue's case: the path authorizes `cheap`, the body names `expensive`.
        (
            AZURE.to_owned(),
            format!(r#"{{"model":"expensive",{msgs}}}"#),
            "cheap",
        ),
        // No model in the body: the deployment's name is added for the openai backend.
        (AZURE.to_owned(), format!(r#"{{{msgs}}}"#), "cheap"),
        // A key spelled with escapes is the same key to the backend.
        (
            AZURE.to_owned(),
            format!(r#"{{"mod\u0065l":"expensive",{msgs}}}"#),
            "cheap",
        ),
        // A model of another type.
        (
            AZURE.to_owned(),
            format!(r#"{{"model":["expensive"],{msgs}}}"#),
            "cheap",
        ),
        // The backend's own model setting wins over both names.
        (
            azure("pinned"),
            format!(r#"{{"model":"expensive",{msgs}}}"#),
            "gpt-4o-mini-2024-07-18",
        ),
        (
            "/v1/chat/completions".to_owned(),
            format!(r#"{{"model":"pinned",{msgs}}}"#),
            "gpt-4o-mini-2024-07-18",
        ),
        // An azure backend: its deployment is in the path, and the body says the same.
        (
            azure("az"),
            format!(r#"{{"model":"expensive",{msgs}}}"#),
            "az-cheap",
        ),
    ] {
        let before = cheap.request_count();
        let resp = post_raw(&s, &target, &body);
        assert_eq!(resp.status, 200, "{target} {body}: {}", resp.text());
        let got = cheap.requests();
        assert_eq!(got.len(), before + 1);
        let last = got.last().unwrap();
        assert_eq!(last.json()["model"], want, "{target} {body}");
        // Exactly one model member went upstream.
        let text = String::from_utf8_lossy(&last.body).into_owned();
        assert_eq!(
            text.matches(r#""model""#).count() + text.matches(r#""mod\u0065l""#).count(),
            1,
            "{text}"
        );
    }
    // The messages arrive byte for byte around the pinned model.
    let last = cheap.requests().pop().unwrap();
    assert!(String::from_utf8_lossy(&last.body).contains(msgs));
    // The azure backend's request went to its own deployment path.
    assert!(last
        .head
        .target()
        .starts_with("/openai/deployments/az-cheap/chat/completions"));
    // The body route to `expensive` itself is refused by the product.
    let resp = post_raw(
        &s,
        "/v1/chat/completions",
        &format!(r#"{{"model":"expensive",{msgs}}}"#),
    );
    assert_openai_error(&resp, 403, Some("deployment_not_allowed"));
    assert_eq!(expensive.request_count(), 0, "nothing reached `expensive`");
}

#[test]
fn a_body_naming_model_twice_is_refused() {
    let cheap = Upstream::json(upstream_chat_answer("x"));
    let expensive = Upstream::json(upstream_chat_answer("x"));
    let s = Launch::new(&model_config(&cheap, &expensive)).start();
    let msgs = r#""messages":[{"role":"user","content":"hi"}]"#;
    // In another case too: Go's encoding/json reads `MODEL` as `model`.
    for body in [
        format!(r#"{{"model":"cheap","MODEL":"expensive",{msgs}}}"#),
        format!(r#"{{"Model":"expensive",{msgs}}}"#),
    ] {
        for target in [AZURE, "/v1/chat/completions"] {
            let resp = post_raw(&s, target, &body);
            assert_openai_error(&resp, 400, None);
            assert_eq!(resp.json()["error"]["param"], "model", "{target} {body}");
        }
    }
    for body in [
        format!(r#"{{"model":"cheap","model":"expensive",{msgs}}}"#),
        format!(r#"{{"model":"expensive","model":"cheap",{msgs}}}"#),
        format!(r#"{{"model":"cheap","mod\u0065l":"expensive",{msgs}}}"#),
    ] {
        for target in [AZURE, "/v1/chat/completions"] {
            let resp = post_raw(&s, target, &body);
            assert_openai_error(&resp, 400, None);
            assert_eq!(resp.json()["error"]["param"], "model", "{target} {body}");
        }
    }
    // A body that is not a JSON object is refused by Sluice, not guessed at.
    for body in [
        r#"{"model":"expensive" "x":1}"#,
        // A second value after the object, which a backend might read instead.
        r#"{"model":"cheap","messages":[]}{"model":"expensive"}"#,
    ] {
        for target in [AZURE, "/v1/chat/completions"] {
            let resp = post_raw(&s, target, body);
            assert_openai_error(&resp, 400, None);
        }
    }
    assert_eq!(cheap.request_count() + expensive.request_count(), 0);
}
