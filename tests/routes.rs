//! Whole-process tests of routing: every client URL form of every operation (OpenAI `/v1/`,
//! Azure `/openai/v1/`, Azure deployment and resource-level paths, one trailing `/`) reaches
//! the deployment it names; and routing errors: unknown route 404, unknown deployment 404
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
        (
            "GET",
            "/openai/deployments/gpt-4o/models?api-version=2024-10-21",
        ),
        ("POST", "/openai/chat/completions?api-version=2024-10-21"),
        ("POST", "/openai/embeddings?api-version=2024-10-21"),
        (
            "GET",
            "/openai/responses/resp_1?api-version=2025-03-01-preview",
        ),
        ("POST", "/v1/chat/completions//"),
        ("GET", "/openai/v1"),
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
        "/openai/deployments/gpt-4o/responses",
        "/openai/responses",
        "/openai/responses/?api-version=",
    ] {
        let resp = c.request(
            "POST",
            target,
            &[("Content-Type", "application/json")],
            &body,
        );
        assert_openai_error(&resp, 400, None);
    }
    let resp = c.request("GET", "/openai/models", &[], b"");
    assert_openai_error(&resp, 400, None);
    // The connection survives, and the same paths with api-version are served.
    let resp = c.request("GET", "/openai/models?api-version=2024-10-21", &[], b"");
    assert_eq!(resp.status, 200, "{}", resp.text());
}

/// Two deployments on two mocks that answer with different token counts, so an answer
/// shows which deployment served it.
const TWO_DEPLOYMENTS: &str = r#"
[[backend]]
name = "mock-a"
kind = "mock"
completion_tokens = 16

[[backend]]
name = "mock-b"
kind = "mock"
completion_tokens = 7

[[deployment]]
name = "dep-a"
backends = [{ backend = "mock-a" }]

[[deployment]]
name = "dep-b"
backends = [{ backend = "mock-b" }]
"#;

const AZ_VERSION: &str = "api-version=2025-03-01-preview";

/// `responses.create()` in every form the Azure and OpenAI clients send reaches the
/// deployment named by the path or the body's `model`.
#[test]
fn every_responses_form_reaches_the_named_deployment() {
    let s = Launch::new(TWO_DEPLOYMENTS).start();
    let mut c = s.connect();
    let with_model = |m: &str| json!({"model": m, "input": "Say hi."});
    let no_model = json!({"input": "Say hi."});
    for (dep, tokens) in [("dep-a", 16), ("dep-b", 7)] {
        for (target, body) in [
            // AzureOpenAI(azure_endpoint=…): resource level, deployment in the body.
            (format!("/openai/responses?{AZ_VERSION}"), with_model(dep)),
            (format!("/openai/responses/?{AZ_VERSION}"), with_model(dep)),
            // AzureOpenAI(base_url=…/openai/deployments/{d}): the path names it.
            (
                format!("/openai/deployments/{dep}/responses?{AZ_VERSION}"),
                no_model.clone(),
            ),
            // Azure v1 API and OpenAI: body, api-version optional.
            ("/openai/v1/responses".to_string(), with_model(dep)),
            (
                "/openai/v1/responses?api-version=preview".to_string(),
                with_model(dep),
            ),
            ("/v1/responses/".to_string(), with_model(dep)),
        ] {
            let resp = c.post_json(&target, &body);
            assert_eq!(resp.status, 200, "{target}: {}", resp.text());
            let v = resp.json();
            assert_eq!(v["object"], "response", "{target}: {v}");
            assert_eq!(v["usage"]["output_tokens"], tokens, "{target} → {dep}: {v}");
        }
    }
    // The path wins over a body `model` naming another deployment.
    let resp = c.post_json(
        &format!("/openai/deployments/dep-b/responses?{AZ_VERSION}"),
        &with_model("dep-a"),
    );
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.json()["usage"]["output_tokens"], 7);
    // A body naming no served deployment is the usual 404.
    let resp = c.post_json(
        &format!("/openai/responses?{AZ_VERSION}"),
        &with_model("nope"),
    );
    assert_openai_error(&resp, 404, Some("DeploymentNotFound"));
}

/// Chat, completions and embeddings under a deployment path (with a trailing `/` too) and
/// under `/openai/v1/` reach the deployment they name.
#[test]
fn deployment_and_v1_forms_of_the_other_operations_reach_the_named_deployment() {
    let s = Launch::new(TWO_DEPLOYMENTS).start();
    let mut c = s.connect();
    for (dep, tokens) in [("dep-a", 16), ("dep-b", 7)] {
        for target in [
            format!("/openai/deployments/{dep}/chat/completions?api-version=2024-10-21"),
            format!("/openai/deployments/{dep}/chat/completions/?api-version=2024-10-21"),
            "/openai/v1/chat/completions".to_string(),
            "/v1/chat/completions/".to_string(),
        ] {
            let resp = c.post_json(&target, &chat_body(Some(dep), false));
            assert_eq!(resp.status, 200, "{target}: {}", resp.text());
            let v = resp.json();
            assert_eq!(v["usage"]["completion_tokens"], tokens, "{target}: {v}");
        }
        for target in [
            format!("/openai/deployments/{dep}/completions?api-version=2024-10-21"),
            "/openai/v1/completions".to_string(),
        ] {
            let resp = c.post_json(&target, &json!({"model": dep, "prompt": "Hi"}));
            assert_eq!(resp.status, 200, "{target}: {}", resp.text());
            let v = resp.json();
            assert_eq!(v["usage"]["completion_tokens"], tokens, "{target}: {v}");
        }
        for target in [
            format!("/openai/deployments/{dep}/embeddings?api-version=2024-10-21"),
            "/openai/v1/embeddings/".to_string(),
        ] {
            let resp = c.post_json(&target, &json!({"model": dep, "input": "Hi"}));
            assert_eq!(resp.status, 200, "{target}: {}", resp.text());
            assert_eq!(resp.json()["object"], "list", "{target}");
        }
    }
}

/// `models.list()` in every form (OpenAI, Azure v1, Azure resource level) is answered by
/// Sluice with the deployments it serves.
#[test]
fn every_models_form_lists_the_deployments() {
    let s = Launch::new(TWO_DEPLOYMENTS).start();
    let mut c = s.connect();
    for target in [
        "/v1/models",
        "/v1/models/",
        "/openai/v1/models",
        "/openai/v1/models?api-version=preview",
        "/openai/models?api-version=2024-10-21",
        "/openai/models/?api-version=2024-10-21",
    ] {
        let resp = c.request("GET", target, &[], b"");
        assert_eq!(resp.status, 200, "{target}: {}", resp.text());
        let v = resp.json();
        let ids: Vec<&str> = v["data"]
            .as_array()
            .unwrap_or_else(|| panic!("{target}: {v}"))
            .iter()
            .map(|m| m["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["dep-a", "dep-b"], "{target}");
    }
    let resp = c.request(
        "POST",
        "/openai/models?api-version=2024-10-21",
        &[("Content-Type", "application/json")],
        b"{}",
    );
    assert_openai_error(&resp, 405, None);
}

#[test]
fn body_without_model_on_openai_path_is_an_error_not_a_hang() {
    let s = start();
    let resp = s.post_json("/v1/chat/completions", &chat_body(None, false));
    // OpenAI's own answer to a body without `model`.
    assert_openai_error(&resp, 400, None);
    let v = resp.json();
    assert_eq!(v["error"]["message"], "You must provide a model parameter.");
    assert_eq!(v["error"]["param"], "model");
    let resp = s.request(
        "POST",
        "/v1/chat/completions",
        &[("Content-Type", "application/json")],
        b"{not json",
    );
    assert_openai_error(&resp, 400, None);
}
