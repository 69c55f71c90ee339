//! Whole-process tests of routing errors: unknown route 404, unknown deployment 404
//! (`DeploymentNotFound`), wrong method 405, Azure path without `api-version` 400 — each in
//! the OpenAI error shape, and none of them ending the connection.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use serde_json::json;
use support::*;

fn start() -> Sluice {
    Launch::new(MOCK_BODY).start()
}

#[test]
fn unknown_route_is_404() {
    let s = start();
    let mut c = s.connect();
    let chat = serde_json::to_vec(&chat_body(Some("gpt-4o"), false)).unwrap();
    for (method, target) in [
        ("POST", "/v2/chat/completions"),
        ("POST", "/v1/chat"),
        ("GET", "/"),
        (
            "POST",
            "/openai/deployments/gpt-4o/models?api-version=2024-10-21",
        ),
    ] {
        let body: &[u8] = if method == "POST" { &chat } else { b"" };
        let resp = c.request(
            method,
            target,
            &[("Content-Type", "application/json")],
            body,
        );
        assert_openai_error(&resp, 404, None);
    }
    // The connection survives routing errors.
    assert_eq!(c.request("GET", "/v1/models", &[], b"").status, 200);
}

#[test]
fn unknown_deployment_is_404_deployment_not_found() {
    let s = start();
    let mut c = s.connect();
    let resp = c.post_json(
        "/v1/chat/completions",
        &chat_body(Some("no-such-model"), false),
    );
    assert_openai_error(&resp, 404, Some("DeploymentNotFound"));
    let resp = c.post_json(
        "/openai/deployments/no-such-deployment/chat/completions?api-version=2024-10-21",
        &chat_body(None, false),
    );
    assert_openai_error(&resp, 404, Some("DeploymentNotFound"));
    let resp = c.post_json("/v1/embeddings", &json!({"model": "nope", "input": "x"}));
    assert_openai_error(&resp, 404, Some("DeploymentNotFound"));
    assert_eq!(c.request("GET", "/v1/models", &[], b"").status, 200);
}

#[test]
fn wrong_method_is_405() {
    let s = start();
    let mut c = s.connect();
    let resp = c.request("GET", "/v1/chat/completions", &[], b"");
    assert_openai_error(&resp, 405, None);
    let resp = c.request(
        "POST",
        "/v1/models",
        &[("Content-Type", "application/json")],
        b"{}",
    );
    assert_openai_error(&resp, 405, None);
    let resp = c.request(
        "GET",
        "/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21",
        &[],
        b"",
    );
    assert_openai_error(&resp, 405, None);
}

#[test]
fn azure_path_without_api_version_is_400() {
    let s = start();
    let mut c = s.connect();
    let body = serde_json::to_vec(&chat_body(None, false)).unwrap();
    for target in [
        "/openai/deployments/gpt-4o/chat/completions",
        "/openai/deployments/gpt-4o/chat/completions?api-version=",
        "/openai/deployments/gpt-4o/embeddings?foo=bar",
    ] {
        let resp = c.request(
            "POST",
            target,
            &[("Content-Type", "application/json")],
            &body,
        );
        assert_openai_error(&resp, 400, None);
    }
}

#[test]
fn body_without_model_on_openai_path_is_an_error_not_a_hang() {
    let s = start();
    let resp = s.post_json("/v1/chat/completions", &chat_body(None, false));
    assert!(
        resp.status == 400 || resp.status == 404,
        "status {}: {}",
        resp.status,
        resp.text()
    );
    assert_openai_error(&resp, resp.status, None);
    let resp = s.request(
        "POST",
        "/v1/chat/completions",
        &[("Content-Type", "application/json")],
        b"{not json",
    );
    assert_openai_error(&resp, 400, None);
}
