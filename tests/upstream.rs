//! Whole-process tests of Sluice in front of HTTP upstreams: a second `sluice` process with a
//! mock backend reached through `openai`- and `azure`-kind backends, scripted upstreams that
//! check the rewritten request (path, credential, model, hop-by-hop headers), and the errors
//! when an upstream is down (502) or silent (504).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::*;

const INNER_BODY: &str = r#"
[[backend]]
name = "inner-mock"
kind = "mock"
model = "inner-mock-model"
completion_tokens = 16
embedding_dimensions = 8

[[deployment]]
name = "inner-chat"
backends = [{ backend = "inner-mock" }]

[[deployment]]
name = "inner-emb"
backends = [{ backend = "inner-mock" }]
"#;

fn outer_body(inner: &str) -> String {
    format!(
        r#"
[[backend]]
name = "b-openai-chat"
kind = "openai"
url = "{inner}"
model = "inner-chat"

[[backend]]
name = "b-openai-emb"
kind = "openai"
url = "{inner}"
model = "inner-emb"

[[backend]]
name = "b-azure-chat"
kind = "azure"
url = "{inner}"
deployment = "inner-chat"
api_version = "2024-10-21"

[[backend]]
name = "b-azure-emb"
kind = "azure"
url = "{inner}"
deployment = "inner-emb"

[[deployment]]
name = "chat-via-openai"
backends = [{{ backend = "b-openai-chat" }}]

[[deployment]]
name = "emb-via-openai"
backends = [{{ backend = "b-openai-emb" }}]

[[deployment]]
name = "chat-via-azure"
backends = [{{ backend = "b-azure-chat" }}]

[[deployment]]
name = "emb-via-azure"
backends = [{{ backend = "b-azure-emb" }}]
"#
    )
}

fn two_hops() -> (Sluice, Sluice) {
    let inner = Launch::new(INNER_BODY).start();
    let outer = Launch::new(&outer_body(&inner.url())).start();
    (inner, outer)
}

fn stream_datas(client: &mut Client, target: &str, body: &Value) -> Vec<String> {
    let bytes = serde_json::to_vec(body).unwrap();
    let (head, mut sse) = client.stream(
        "POST",
        target,
        &[("Content-Type", "application/json")],
        &bytes,
    );
    assert_eq!(head.status(), 200, "{head:?}");
    assert!(
        head.header("content-type")
            .is_some_and(|c| c.starts_with("text/event-stream")),
        "{head:?}"
    );
    let events = sse.collect_rest();
    let datas: Vec<String> = events
        .iter()
        .filter_map(|e| event_data(e).map(str::to_string))
        .collect();
    assert_eq!(
        datas.last().map(String::as_str),
        Some("[DONE]"),
        "{events:?}"
    );
    assert!(datas.len() >= 3, "{events:?}");
    for d in &datas[..datas.len() - 1] {
        let v: Value = serde_json::from_str(d).unwrap();
        assert_eq!(v["object"], "chat.completion.chunk", "{v}");
    }
    datas
}

/// The same two hops with both processes on the epoll driver, so the fallback path for
/// kernels that refuse io_uring is exercised end to end.
#[test]
fn two_hops_work_on_the_epoll_driver() {
    let inner = Launch::new(INNER_BODY).driver("epoll").start();
    let outer = Launch::new(&outer_body(&inner.url()))
        .driver("epoll")
        .start();
    for s in [&inner, &outer] {
        assert!(
            s.log()
                .lines()
                .any(|l| l.contains("sluice started") && l.contains("driver=epoll")),
            "{}",
            s.log()
        );
    }
    let mut c = outer.connect();
    for _ in 0..3 {
        let resp = c.post_json(
            "/v1/chat/completions",
            &chat_body(Some("chat-via-azure"), false),
        );
        assert_eq!(resp.status, 200, "{}", resp.text());
        assert_eq!(resp.json()["usage"]["completion_tokens"], 16);
    }
    let datas = stream_datas(
        &mut c,
        "/v1/chat/completions",
        &chat_body(Some("chat-via-openai"), true),
    );
    let first: Value = serde_json::from_str(&datas[0]).unwrap();
    assert_eq!(first["model"], "inner-chat", "{first}");
}

#[test]
fn openai_backend_reaches_a_second_sluice() {
    let (_inner, outer) = two_hops();
    let mut c = outer.connect();

    let resp = c.post_json(
        "/v1/chat/completions",
        &chat_body(Some("chat-via-openai"), false),
    );
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_request_id(&resp);
    let v = resp.json();
    assert_eq!(v["object"], "chat.completion", "{v}");
    // The openai backend replaced the body's model with its own `model`; the inner mock
    // reports the model it was asked for.
    assert_eq!(v["model"], "inner-chat", "{v}");
    assert_eq!(v["usage"]["completion_tokens"], 16, "{v}");

    let datas = stream_datas(
        &mut c,
        "/v1/chat/completions",
        &chat_body(Some("chat-via-openai"), true),
    );
    let first: Value = serde_json::from_str(&datas[0]).unwrap();
    assert_eq!(first["model"], "inner-chat", "{first}");

    let resp = c.post_json(
        "/v1/completions",
        &json!({"model": "chat-via-openai", "prompt": "hi", "max_tokens": 100}),
    );
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.json()["object"], "text_completion");

    let resp = c.post_json(
        "/v1/embeddings",
        &json!({"model": "emb-via-openai", "input": ["a", "b", "c"]}),
    );
    assert_eq!(resp.status, 200, "{}", resp.text());
    let v = resp.json();
    assert_eq!(v["data"].as_array().map(Vec::len), Some(3), "{v}");
    assert_eq!(
        v["data"][2]["embedding"].as_array().map(Vec::len),
        Some(8),
        "{v}"
    );
    assert_eq!(v["model"], "inner-emb", "{v}");
}

#[test]
fn azure_backend_reaches_a_second_sluice() {
    let (_inner, outer) = two_hops();
    let mut c = outer.connect();

    // Client on the OpenAI path, backend is Azure-style.
    let resp = c.post_json(
        "/v1/chat/completions",
        &chat_body(Some("chat-via-azure"), false),
    );
    assert_eq!(resp.status, 200, "{}", resp.text());
    let v = resp.json();
    assert_eq!(v["object"], "chat.completion", "{v}");
    assert_eq!(v["usage"]["completion_tokens"], 16, "{v}");

    // Client on the Azure path.
    let target = "/openai/deployments/chat-via-azure/chat/completions?api-version=2024-10-21";
    let resp = c.post_json(target, &chat_body(None, false));
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.json()["object"], "chat.completion");

    stream_datas(&mut c, target, &chat_body(None, true));
    stream_datas(
        &mut c,
        "/v1/chat/completions",
        &chat_body(Some("chat-via-azure"), true),
    );

    let resp = c.post_json(
        "/openai/deployments/emb-via-azure/embeddings?api-version=2024-10-21",
        &json!({"input": ["x", "y"]}),
    );
    assert_eq!(resp.status, 200, "{}", resp.text());
    let v = resp.json();
    assert_eq!(v["data"].as_array().map(Vec::len), Some(2), "{v}");
}

#[test]
fn openai_backend_sends_its_bearer_key_and_rewrites_model() {
    let up = Upstream::json(upstream_chat_answer("upstream-model"));
    let body = format!(
        r#"
[[backend]]
name = "oai"
kind = "openai"
url = "{}"
model = "upstream-model"
api_key_env = "SLUICE_TEST_OAI_KEY"

[[deployment]]
name = "chat"
backends = [{{ backend = "oai" }}]
"#,
        up.url()
    );
    let s = Launch::new(&body)
        .env("SLUICE_TEST_OAI_KEY", "sk-upstream-123")
        .start();
    let client_body = chat_body(Some("chat"), false);
    let bytes = serde_json::to_vec(&client_body).unwrap();
    let resp = s.request(
        "POST",
        "/v1/chat/completions",
        &[
            ("Content-Type", "application/json"),
            ("Authorization", "Bearer sluice-demo-key"),
            ("api-key", "client-api-key"),
        ],
        &bytes,
    );
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.json(), upstream_chat_answer("upstream-model"));

    let reqs = up.requests();
    assert_eq!(reqs.len(), 1);
    let r = &reqs[0];
    assert_eq!(r.head.method(), "POST");
    assert_eq!(r.head.target(), "/v1/chat/completions");
    assert_eq!(
        r.head.header_all("authorization"),
        vec!["Bearer sk-upstream-123"],
        "{:?}",
        r.head.headers
    );
    assert!(
        !r.head.has("api-key"),
        "client api-key forwarded: {:?}",
        r.head.headers
    );
    assert_eq!(
        r.head.header("host"),
        Some(format!("127.0.0.1:{}", up.port).as_str()),
        "{:?}",
        r.head.headers
    );
    let sent = r.json();
    assert_eq!(sent["model"], "upstream-model", "{sent}");
    assert_eq!(sent["messages"], client_body["messages"], "{sent}");
    assert_eq!(sent["max_tokens"], client_body["max_tokens"], "{sent}");

    // Embeddings go to the OpenAI path too.
    let resp = s.post_json("/v1/embeddings", &json!({"model": "chat", "input": "x"}));
    assert_eq!(resp.status, 200);
    assert_eq!(up.requests()[1].head.target(), "/v1/embeddings");

    // The request id the client sees is the one the upstream was given.
    let id = resp.header("x-request-id").expect("x-request-id");
    assert_eq!(
        up.requests()[1].head.header("x-request-id"),
        Some(id),
        "upstream should get the request's x-request-id: {:?}",
        up.requests()[1].head.headers
    );
}

#[test]
fn openai_backend_without_model_keeps_the_clients_model() {
    let up = Upstream::json(upstream_chat_answer("chat"));
    let s = Launch::new(&openai_backend_body(&up.url(), "chat")).start();
    let resp = s.post_json("/v1/chat/completions", &chat_body(Some("chat"), false));
    assert_eq!(resp.status, 200, "{}", resp.text());
    let sent = up.requests()[0].json();
    assert_eq!(sent["model"], "chat", "{sent}");
    assert!(
        !up.requests()[0].head.has("authorization"),
        "no api_key_env: the client's credential must not be forwarded: {:?}",
        up.requests()[0].head.headers
    );
}

const HOP_REQUEST_HEADERS: &[(&str, &str)] = &[
    ("Connection", "keep-alive, X-Hop-Custom"),
    ("X-Hop-Custom", "1"),
    ("Keep-Alive", "timeout=5"),
    ("TE", "trailers"),
    ("Proxy-Authorization", "Basic Zm9vOmJhcg=="),
    ("Proxy-Connection", "keep-alive"),
];

fn assert_no_hop_headers(head: &Head) {
    for name in [
        "x-hop-custom",
        "keep-alive",
        "te",
        "proxy-authorization",
        "proxy-connection",
    ] {
        assert!(
            !head.has(name),
            "hop-by-hop header {name} forwarded upstream: {:?}",
            head.headers
        );
    }
    for v in head.header_all("connection") {
        assert!(
            !v.to_ascii_lowercase().contains("x-hop-custom"),
            "client's Connection forwarded: {v}"
        );
    }
}

#[test]
fn azure_backend_rewrites_path_and_credentials_and_strips_hop_by_hop_headers() {
    let answer = serde_json::to_vec(&upstream_chat_answer("gpt-4o-2024-08-06")).unwrap();
    let up = Upstream::start(move |_, s| {
        respond(
            s,
            200,
            &[
                ("content-type", "application/json"),
                ("Connection", "keep-alive, X-Up-Hop"),
                ("X-Up-Hop", "1"),
                ("Keep-Alive", "timeout=5, max=100"),
                ("Proxy-Authenticate", "Basic realm=\"upstream\""),
                ("x-ms-region", "Sweden Central"),
            ],
            &answer,
        );
        After::KeepAlive
    });
    let body = format!(
        r#"
[[backend]]
name = "aoai"
kind = "azure"
url = "{}"
deployment = "gpt-4o-2024-08-06"
api_version = "2024-06-01"
api_key_env = "SLUICE_TEST_AOAI_KEY"

[[deployment]]
name = "chat"
backends = [{{ backend = "aoai" }}]
"#,
        up.url()
    );
    let s = Launch::new(&body)
        .env("SLUICE_TEST_AOAI_KEY", "aoai-secret")
        .start();

    let mut headers = vec![
        ("Content-Type", "application/json"),
        ("Authorization", "Bearer client-bearer"),
        ("api-key", "client-api-key"),
        ("Ocp-Apim-Subscription-Key", "client-subscription-key"),
        ("X-Custom-E2e", "passes"),
    ];
    headers.extend_from_slice(HOP_REQUEST_HEADERS);

    let mut c = s.connect();
    let cases = [
        (
            "/v1/chat/completions",
            chat_body(Some("chat"), false),
            "/openai/deployments/gpt-4o-2024-08-06/chat/completions?api-version=2024-06-01",
        ),
        (
            "/openai/deployments/chat/chat/completions?api-version=2024-10-21",
            chat_body(None, false),
            "/openai/deployments/gpt-4o-2024-08-06/chat/completions?api-version=2024-06-01",
        ),
        (
            "/openai/deployments/chat/embeddings?api-version=2024-10-21",
            json!({"input": "x"}),
            "/openai/deployments/gpt-4o-2024-08-06/embeddings?api-version=2024-06-01",
        ),
    ];
    for (i, (target, body, want_target)) in cases.iter().enumerate() {
        let bytes = serde_json::to_vec(body).unwrap();
        let resp = c.request("POST", target, &headers, &bytes);
        assert_eq!(resp.status, 200, "{target}: {}", resp.text());

        // Response side: upstream's hop-by-hop headers stay behind, end-to-end ones pass.
        assert_eq!(
            resp.header("x-ms-region"),
            Some("Sweden Central"),
            "{:?}",
            resp.head.headers
        );
        assert!(!resp.head.has("x-up-hop"), "{:?}", resp.head.headers);
        assert!(
            !resp.head.has("proxy-authenticate"),
            "{:?}",
            resp.head.headers
        );
        assert_ne!(
            resp.header("keep-alive"),
            Some("timeout=5, max=100"),
            "{:?}",
            resp.head.headers
        );
        for v in resp.head.header_all("connection") {
            assert!(!v.to_ascii_lowercase().contains("x-up-hop"), "{v}");
        }
        assert_eq!(resp.json(), upstream_chat_answer("gpt-4o-2024-08-06"));

        // Request side.
        let r = &up.requests()[i];
        assert_eq!(r.head.method(), "POST");
        assert_eq!(r.head.target(), *want_target, "from {target}");
        assert_eq!(
            r.head.header_all("api-key"),
            vec!["aoai-secret"],
            "{:?}",
            r.head.headers
        );
        assert!(!r.head.has("authorization"), "{:?}", r.head.headers);
        assert!(
            !r.head.has("ocp-apim-subscription-key"),
            "{:?}",
            r.head.headers
        );
        assert_eq!(
            r.head.header("x-custom-e2e"),
            Some("passes"),
            "{:?}",
            r.head.headers
        );
        assert_no_hop_headers(&r.head);
        let sent = r.json();
        if let Some(m) = body.get("messages") {
            assert_eq!(&sent["messages"], m);
        }
    }
}

#[test]
fn upstream_down_is_a_quick_502_in_openai_shape() {
    let port = closed_port();
    let body = format!(
        r#"
[[backend]]
name = "down-oai"
kind = "openai"
url = "http://127.0.0.1:{port}"

[[backend]]
name = "down-aoai"
kind = "azure"
url = "http://127.0.0.1:{port}"
deployment = "d"

[[deployment]]
name = "chat"
backends = [{{ backend = "down-oai" }}]

[[deployment]]
name = "az"
backends = [{{ backend = "down-aoai" }}]
"#
    );
    let s = Launch::new(&body).start();
    for model in ["chat", "az"] {
        let t0 = Instant::now();
        let resp = s.post_json("/v1/chat/completions", &chat_body(Some(model), false));
        assert_openai_error(&resp, 502, None);
        assert!(
            t0.elapsed() < Duration::from_secs(3),
            "502 took {:?}",
            t0.elapsed()
        );
    }
    // Again while the backend cools down: still a quick gateway error, streaming or not.
    for stream in [false, true] {
        let t0 = Instant::now();
        let resp = s.post_json("/v1/chat/completions", &chat_body(Some("chat"), stream));
        assert!(
            resp.status == 502 || resp.status == 503,
            "status {}: {}",
            resp.status,
            resp.text()
        );
        assert_openai_error(&resp, resp.status, None);
        assert!(
            t0.elapsed() < Duration::from_secs(3),
            "took {:?}",
            t0.elapsed()
        );
    }
}

#[test]
fn upstream_silent_past_first_byte_timeout_is_504() {
    let up = Upstream::start(|_, s| {
        std::thread::sleep(Duration::from_secs(4));
        respond(s, 200, &[("content-type", "application/json")], b"{}");
        After::Close
    });
    let s = Launch::new(&openai_backend_body(&up.url(), "chat"))
        .server("[server.timeouts]\nupstream_first_byte = \"1s\"")
        .start();
    let t0 = Instant::now();
    let resp = s.post_json("/v1/chat/completions", &chat_body(Some("chat"), false));
    assert_openai_error(&resp, 504, None);
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(3500),
        "504 after {took:?}"
    );
}

#[test]
fn a_stale_pooled_upstream_connection_is_not_the_clients_problem() {
    // The upstream answers keep-alive style, then drops the connection shortly after (as
    // servers do when their own idle timeout fires).
    let up = Upstream::start(|_, s| {
        respond(
            s,
            200,
            &[("content-type", "application/json")],
            &serde_json::to_vec(&upstream_chat_answer("chat")).unwrap(),
        );
        std::thread::sleep(Duration::from_millis(50));
        After::Close
    });
    let s = Launch::new(&openai_backend_body(&up.url(), "chat"))
        .workers(1)
        .start();
    let mut c = s.connect();
    for i in 0..5 {
        let resp = c.post_json("/v1/chat/completions", &chat_body(Some("chat"), false));
        assert_eq!(resp.status, 200, "request {i}: {}", resp.text());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(up.request_count(), 5);
}

#[test]
fn an_upstream_connection_close_answer_is_not_reused() {
    let up = Upstream::start(|_, s| {
        respond(
            s,
            200,
            &[
                ("content-type", "application/json"),
                ("connection", "close"),
            ],
            &serde_json::to_vec(&upstream_chat_answer("chat")).unwrap(),
        );
        // Keep the socket open a while: only the header says it is finished.
        std::thread::sleep(Duration::from_millis(300));
        After::Close
    });
    let s = Launch::new(&openai_backend_body(&up.url(), "chat"))
        .workers(1)
        .start();
    let mut c = s.connect();
    for i in 0..3 {
        let t0 = Instant::now();
        let resp = c.post_json("/v1/chat/completions", &chat_body(Some("chat"), false));
        assert_eq!(resp.status, 200, "request {i}: {}", resp.text());
        assert!(
            t0.elapsed() < Duration::from_secs(2),
            "request {i} took {:?}",
            t0.elapsed()
        );
    }
    assert_eq!(
        up.connections(),
        3,
        "a connection: close answer's connection was reused"
    );
    // And the client's own connection stays open: upstream framing is not the client's.
    assert_eq!(c.request("GET", "/v1/models", &[], b"").status, 200);
}

#[test]
fn upstream_client_errors_pass_through_unchanged() {
    let err = br#"{"error":{"message":"Invalid value for 'temperature'.","type":"invalid_request_error","param":"temperature","code":null}}"#;
    let up = Upstream::start(move |_, s| {
        respond(
            s,
            400,
            &[("content-type", "application/json"), ("x-upstream", "yes")],
            err,
        );
        After::KeepAlive
    });
    let s = Launch::new(&openai_backend_body(&up.url(), "chat")).start();
    let resp = s.post_json("/v1/chat/completions", &chat_body(Some("chat"), false));
    assert_eq!(resp.status, 400);
    assert_eq!(resp.body, err.to_vec(), "{}", resp.text());
    assert_eq!(resp.header("x-upstream"), Some("yes"));
    assert_request_id(&resp);
    assert_eq!(up.request_count(), 1, "a 400 must not be retried");
}
