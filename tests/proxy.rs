//! Whole-process tests: chat (plain and streaming), completions, embeddings and
//! `GET /v1/models` through Sluice to its built-in mock backend, on the OpenAI paths and the
//! Azure paths.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use serde_json::{json, Value};
use support::*;

const AZURE_Q: &str = "api-version=2024-10-21";

fn start() -> Sluice {
    Launch::new(MOCK_BODY).start()
}

fn assert_chat_completion(resp: &Response, model: &str) {
    assert_eq!(resp.status, 200, "body: {}", resp.text());
    assert_request_id(resp);
    assert!(
        resp.header("content-type")
            .is_some_and(|c| c.starts_with("application/json")),
        "content-type: {:?}",
        resp.header("content-type")
    );
    let v = resp.json();
    assert_eq!(v["object"], "chat.completion", "{v}");
    assert_eq!(v["model"], model, "{v}");
    assert!(v["id"].as_str().is_some_and(|s| !s.is_empty()), "{v}");
    let choice = &v["choices"][0];
    assert_eq!(choice["index"], 0, "{v}");
    assert_eq!(choice["message"]["role"], "assistant", "{v}");
    assert!(
        choice["message"]["content"]
            .as_str()
            .is_some_and(|s| !s.is_empty()),
        "{v}"
    );
    assert!(choice["finish_reason"].is_string(), "{v}");
    let usage = &v["usage"];
    assert_eq!(usage["completion_tokens"], MOCK_COMPLETION_TOKENS, "{v}");
    let prompt = usage["prompt_tokens"].as_u64().expect("prompt_tokens");
    assert!(prompt > 0, "{v}");
    assert_eq!(
        usage["total_tokens"].as_u64(),
        Some(prompt + MOCK_COMPLETION_TOKENS),
        "{v}"
    );
}

/// A listen port 0 is bound once by the kernel's choice and shared by every worker: 64
/// connections to the port the ready file gave reach both workers (the request id names its
/// worker in hex digits 8–11).
#[test]
fn port_zero_is_one_port_for_every_worker() {
    let s = Launch::new(MOCK_BODY).workers(2).start();
    assert_ne!(s.port, 0);
    let mut workers = std::collections::BTreeSet::new();
    for _ in 0..64 {
        let resp = s.get("/v1/models");
        assert_eq!(resp.status, 200);
        let id = resp
            .head
            .header("x-request-id")
            .expect("request id")
            .to_string();
        workers.insert(id[8..12].to_string());
    }
    let want: std::collections::BTreeSet<String> =
        ["0000", "0001"].iter().map(|w| w.to_string()).collect();
    assert_eq!(workers, want, "both workers accept on the one port");
}

/// Several listen addresses: the ready file names each (one line each, every one bound by
/// the kernel's choice), the startup line too, and each serves from every worker.
#[test]
fn every_listen_address_is_in_the_ready_file_and_serves() {
    let s = Launch::new(MOCK_BODY).listeners(3).workers(2).start();
    assert_eq!(s.ports.len(), 3);
    let distinct: std::collections::BTreeSet<u16> = s.ports.iter().copied().collect();
    assert_eq!(distinct.len(), 3, "{:?}", s.ports);
    let log = s.log();
    let line = log.lines().find(|l| l.contains("sluice started")).unwrap();
    for port in &s.ports {
        assert!(line.contains(&format!("127.0.0.1:{port}")), "{line}");
        let resp = Client::connect(*port).request("GET", "/v1/models", &[], b"");
        assert_eq!(resp.status, 200);
    }
}

/// Without `--workers`, `server.workers` decides; without either, one per available core.
#[test]
fn the_worker_count_comes_from_the_config_else_the_cores() {
    let s = Launch::new(MOCK_BODY)
        .server("workers = 3")
        .workers_from_config()
        .start();
    assert!(s.log().contains("sluice started workers=3 "), "{}", s.log());
    let cores = std::thread::available_parallelism().unwrap().get();
    let s = Launch::new(MOCK_BODY).workers_from_config().start();
    assert!(
        s.log()
            .contains(&format!("sluice started workers={cores} ")),
        "{}",
        s.log()
    );
}

#[test]
fn startup_line_names_workers_and_listener() {
    let s = Launch::new(MOCK_BODY).workers(2).start();
    let want = format!("listen=127.0.0.1:{}", s.port);
    assert!(
        s.wait_log(
            "sluice started workers=2",
            std::time::Duration::from_secs(5)
        ),
        "startup line missing: {}",
        s.log()
    );
    let log = s.log();
    let line = log
        .lines()
        .find(|l| l.contains("sluice started"))
        .expect("startup line");
    assert!(line.contains(&want), "{line}");
    assert!(
        line.contains("driver=io_uring") || line.contains("driver=epoll"),
        "{line}"
    );
}

#[test]
fn chat_on_openai_path() {
    let s = start();
    let resp = s.post_json("/v1/chat/completions", &chat_body(Some("gpt-4o"), false));
    // The request names its model (the deployment), so the mock reports that name.
    assert_chat_completion(&resp, "gpt-4o");
}

#[test]
fn chat_on_azure_openai_v1_path() {
    let s = start();
    let resp = s.post_json(
        "/openai/v1/chat/completions",
        &chat_body(Some("gpt-4o"), false),
    );
    assert_chat_completion(&resp, "gpt-4o");
}

#[test]
fn chat_on_azure_deployment_path() {
    let s = start();
    let body = serde_json::to_vec(&chat_body(None, false)).unwrap();
    let resp = s.request(
        "POST",
        &format!("/openai/deployments/gpt-4o/chat/completions?{AZURE_Q}"),
        &[
            ("Content-Type", "application/json"),
            ("api-key", CLIENT_KEY),
        ],
        &body,
    );
    // No model in the body: the mock reports its configured model.
    assert_chat_completion(&resp, "gpt-4o-mock");
}

/// Reads a whole SSE chat stream, checks it ends with `[DONE]`, returns the JSON payloads before it.
fn read_chat_stream(
    client: &mut Client,
    target: &str,
    headers: &[(&str, &str)],
    body: &Value,
) -> Vec<Value> {
    let bytes = serde_json::to_vec(body).unwrap();
    let mut all = headers.to_vec();
    all.push(("Content-Type", "application/json"));
    let (head, mut sse) = client.stream("POST", target, &all, &bytes);
    assert_eq!(head.status(), 200, "{head:?}");
    assert!(head.has("x-request-id"), "{head:?}");
    assert!(
        head.header("content-type")
            .is_some_and(|c| c.starts_with("text/event-stream")),
        "{head:?}"
    );
    let events = sse.collect_rest();
    let mut datas: Vec<&str> = events.iter().filter_map(|e| event_data(e)).collect();
    assert_eq!(
        datas.pop(),
        Some("[DONE]"),
        "stream must end with data: [DONE]: {events:?}"
    );
    datas
        .iter()
        .map(|d| serde_json::from_str(d).unwrap_or_else(|e| panic!("event not JSON ({e}): {d}")))
        .collect()
}

fn assert_chat_chunks(chunks: &[Value], with_usage: bool) {
    assert!(chunks.len() >= 2, "too few chunks: {chunks:?}");
    let mut content = String::new();
    for c in chunks {
        assert_eq!(c["object"], "chat.completion.chunk", "{c}");
        if let Some(choices) = c["choices"].as_array() {
            for ch in choices {
                if let Some(t) = ch["delta"]["content"].as_str() {
                    content.push_str(t);
                }
            }
        }
    }
    assert!(!content.is_empty(), "no content streamed: {chunks:?}");
    let last = chunks.last().unwrap();
    if with_usage {
        assert_eq!(
            last["choices"],
            json!([]),
            "usage chunk has no choices: {last}"
        );
        assert_eq!(
            last["usage"]["completion_tokens"], MOCK_COMPLETION_TOKENS,
            "{last}"
        );
        let prompt = last["usage"]["prompt_tokens"].as_u64().unwrap();
        assert_eq!(
            last["usage"]["total_tokens"].as_u64(),
            Some(prompt + MOCK_COMPLETION_TOKENS)
        );
        for c in &chunks[..chunks.len() - 1] {
            assert!(c["usage"].is_null(), "usage only on the last chunk: {c}");
        }
    } else {
        for c in chunks {
            assert!(
                c["usage"].is_null(),
                "no usage chunk without include_usage: {c}"
            );
        }
    }
    assert!(
        chunks
            .iter()
            .any(|c| c["choices"][0]["finish_reason"].is_string()),
        "no finish_reason: {chunks:?}"
    );
}

#[test]
fn streaming_chat_on_openai_path() {
    let s = start();
    let mut c = s.connect();
    let chunks = read_chat_stream(
        &mut c,
        "/v1/chat/completions",
        &[("Authorization", "Bearer sluice-demo-key")],
        &chat_body(Some("gpt-4o"), true),
    );
    assert_chat_chunks(&chunks, false);

    let mut body = chat_body(Some("gpt-4o"), true);
    body["stream_options"] = json!({"include_usage": true});
    // Same connection: a finished stream leaves it usable.
    let chunks = read_chat_stream(
        &mut c,
        "/v1/chat/completions",
        &[("Authorization", "Bearer sluice-demo-key")],
        &body,
    );
    assert_chat_chunks(&chunks, true);
}

#[test]
fn streaming_chat_on_azure_deployment_path() {
    let s = start();
    let mut c = s.connect();
    let target = format!("/openai/deployments/gpt-4o/chat/completions?{AZURE_Q}");
    let chunks = read_chat_stream(
        &mut c,
        &target,
        &[("api-key", CLIENT_KEY)],
        &chat_body(None, true),
    );
    assert_chat_chunks(&chunks, false);
    let mut body = chat_body(None, true);
    body["stream_options"] = json!({"include_usage": true});
    let chunks = read_chat_stream(&mut c, &target, &[("api-key", CLIENT_KEY)], &body);
    assert_chat_chunks(&chunks, true);
}

fn assert_text_completion(resp: &Response) {
    assert_eq!(resp.status, 200, "body: {}", resp.text());
    assert_request_id(resp);
    let v = resp.json();
    assert_eq!(v["object"], "text_completion", "{v}");
    assert!(v["choices"][0]["text"].is_string(), "{v}");
    assert_eq!(
        v["usage"]["completion_tokens"], MOCK_COMPLETION_TOKENS,
        "{v}"
    );
}

#[test]
fn completions_on_openai_and_azure_paths() {
    let s = start();
    let resp = s.post_json(
        "/v1/completions",
        &json!({"model": "gpt-4o", "prompt": "Say hello.", "max_tokens": 100}),
    );
    assert_text_completion(&resp);
    let resp = s.post_json(
        &format!("/openai/deployments/gpt-4o/completions?{AZURE_Q}"),
        &json!({"prompt": "Say hello.", "max_tokens": 100}),
    );
    assert_text_completion(&resp);
}

fn assert_embeddings(resp: &Response, n: usize) {
    assert_eq!(resp.status, 200, "body: {}", resp.text());
    assert_request_id(resp);
    let v = resp.json();
    assert_eq!(v["object"], "list", "{v}");
    let data = v["data"].as_array().expect("data array");
    assert_eq!(data.len(), n, "{v}");
    for (i, d) in data.iter().enumerate() {
        assert_eq!(d["object"], "embedding", "{v}");
        assert_eq!(d["index"], i, "{v}");
        let e = d["embedding"].as_array().expect("embedding array");
        assert_eq!(e.len(), 8, "embedding_dimensions: {v}");
        assert!(e.iter().all(Value::is_f64), "{v}");
    }
    assert!(
        v["usage"]["prompt_tokens"].as_u64().is_some_and(|t| t > 0),
        "{v}"
    );
    assert_eq!(
        v["usage"]["total_tokens"], v["usage"]["prompt_tokens"],
        "{v}"
    );
}

#[test]
fn embeddings_on_openai_and_azure_paths() {
    let s = start();
    let inputs = json!(["The food was delicious", "and the waiter was friendly"]);
    let resp = s.post_json(
        "/v1/embeddings",
        &json!({"model": "text-embedding-3-small", "input": inputs}),
    );
    assert_embeddings(&resp, 2);
    let resp = s.post_json(
        "/v1/embeddings",
        &json!({"model": "text-embedding-3-small", "input": "one string"}),
    );
    assert_embeddings(&resp, 1);
    let resp = s.post_json(
        &format!("/openai/deployments/text-embedding-3-small/embeddings?{AZURE_Q}"),
        &json!({ "input": inputs }),
    );
    assert_embeddings(&resp, 2);
}

#[test]
fn models_lists_deployments_in_file_order() {
    let s = start();
    let resp = s.get("/v1/models");
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_request_id(&resp);
    assert!(resp
        .header("content-type")
        .is_some_and(|c| c.starts_with("application/json")));
    assert_eq!(
        resp.json(),
        json!({"object": "list", "data": [
            {"id": "gpt-4o", "object": "model", "created": 0, "owned_by": "sluice"},
            {"id": "text-embedding-3-small", "object": "model", "created": 0, "owned_by": "sluice"},
        ]})
    );
}

#[test]
fn request_ids_differ_between_requests() {
    let s = start();
    let mut c = s.connect();
    let a = c.request("GET", "/v1/models", &[], b"");
    let b = c.request("GET", "/v1/models", &[], b"");
    assert_ne!(a.header("x-request-id"), b.header("x-request-id"));
}

#[test]
fn responses_api_on_openai_path() {
    let s = start();
    let resp = s.post_json(
        "/v1/responses",
        &json!({"model": "gpt-4o", "input": "Say hello."}),
    );
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_request_id(&resp);
    let v = resp.json();
    assert_eq!(v["object"], "response", "{v}");
    assert_eq!(v["usage"]["output_tokens"], MOCK_COMPLETION_TOKENS, "{v}");
}

#[test]
fn large_request_body_reaches_the_mock() {
    let s = start();
    // ~1 MB prompt: well under the default max_body, spread over many reads.
    let mut body = chat_body(Some("gpt-4o"), false);
    body["messages"][1]["content"] = Value::from("token ".repeat(170_000));
    let resp = s.post_json("/v1/chat/completions", &body);
    assert_chat_completion(&resp, "gpt-4o");
    assert!(resp.json()["usage"]["prompt_tokens"].as_u64().unwrap() > 10_000);
}

/// The body's `model` is the deployment's on the built-in mock too: a client naming another
/// model on an Azure deployment path is answered as that deployment.
#[test]
fn the_mock_answers_as_the_authorized_deployment() {
    let s = Launch::new(MOCK_BODY).start();
    let mut body = chat_body(Some("whatever-model"), false);
    body["max_tokens"] = serde_json::json!(5);
    let resp = s.post_json(
        "/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21",
        &body,
    );
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.json()["model"], "gpt-4o");
}

/// The README's quick start, as a process: examples/quickstart.toml (on port 0 instead of
/// 8080) serves the README's requests with the demo key — chat OpenAI and Azure style, a
/// stream, embeddings and the deployment list — and refuses a request without it.
#[test]
fn the_quick_start_serves_the_readme_requests() {
    let text = std::fs::read_to_string(workspace_root().join("examples/quickstart.toml")).unwrap();
    let text = text.replace(
        "listen = [\"127.0.0.1:8080\"]",
        "listen = [\"127.0.0.1:0\"]",
    );
    assert!(
        text.contains("127.0.0.1:0"),
        "the example's listen line moved"
    );
    assert!(
        text.contains("listen = \"127.0.0.1:9090\""),
        "the example's admin listen line moved"
    );
    let text = text.replace("listen = \"127.0.0.1:9090\"", "listen = \"127.0.0.1:0\"");
    let s = Launch::file(&text).workers_from_config().start();
    let key = [
        ("Content-Type", "application/json"),
        ("api-key", "sluice-demo-key"),
    ];
    let hello = serde_json::json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello"}]});
    let chat = post_json_with(&s, "/v1/chat/completions", &key, &hello);
    assert_eq!(chat.status, 200, "{}", chat.text());
    assert_eq!(chat.json()["object"], "chat.completion");
    assert!(
        chat.header("x-ratelimit-remaining-tokens").is_some(),
        "{:?}",
        chat.head
    );
    let azure = post_json_with(
        &s,
        "/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21",
        &key,
        &serde_json::json!({"messages": [{"role": "user", "content": "Hello"}]}),
    );
    assert_eq!(azure.status, 200, "{}", azure.text());
    let embeddings = post_json_with(
        &s,
        "/v1/embeddings",
        &key,
        &serde_json::json!({"model": "text-embedding-3-small", "input": "The food was delicious"}),
    );
    assert_eq!(embeddings.status, 200, "{}", embeddings.text());
    let mut c = s.connect();
    let mut streamed = hello.clone();
    streamed["stream"] = serde_json::json!(true);
    let (head, mut sse) = c.stream(
        "POST",
        "/v1/chat/completions",
        &key,
        &serde_json::to_vec(&streamed).unwrap(),
    );
    assert_eq!(head.status(), 200);
    let events = sse.collect_rest();
    assert_eq!(events.last().and_then(|e| event_data(e)), Some("[DONE]"));
    let models = s.request("GET", "/v1/models", &[("api-key", "sluice-demo-key")], b"");
    assert_eq!(models.status, 200);
    let refused = post_json_with(
        &s,
        "/v1/chat/completions",
        &[("Content-Type", "application/json")],
        &hello,
    );
    assert_eq!(refused.status, 401, "without the key: {}", refused.text());
    // Six requests recorded where Sluice runs (audit.jsonl and audit.db), and counted.
    let dir = s.config_path.parent().unwrap().to_path_buf();
    assert!(
        wait_until(std::time::Duration::from_secs(10), || {
            std::fs::read_to_string(dir.join("audit.jsonl")).is_ok_and(|t| t.lines().count() == 6)
        }),
        "audit.jsonl in the working directory"
    );
    assert!(dir.join("audit.db").exists());
    let admin = s.admin_port();
    let mut m = std::net::TcpStream::connect(("127.0.0.1", admin)).unwrap();
    m.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    std::io::Write::write_all(&mut m, b"GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
    let mut metrics = String::new();
    std::io::Read::read_to_string(&mut m, &mut metrics).unwrap();
    assert!(metrics.contains("sluice_requests_total{"), "{metrics}");
}

fn post_json_with(
    s: &Sluice,
    target: &str,
    headers: &[(&str, &str)],
    body: &serde_json::Value,
) -> Response {
    s.request("POST", target, headers, &serde_json::to_vec(body).unwrap())
}
