//! The standalone mock backend seen from a plain std::net client on 127.0.0.1: answer
//! shapes parsed into structs mirroring the API, each fault knob, exact counts, keep-alive
//! and pipelining, and the binary's listening line and SIGTERM exit. Loads are tiny (tens
//! of requests) and every socket read is bounded by a timeout.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::Deserialize;
use sluice::http::ChunkedDecoder;
use sluice::runtime::DriverChoice;
use sluice_bench::mock_server::{spawn, Dist, MockConfig, MockHandle, MockStats};
use sluice_bench::{chunked, sse_events, CHAT_REQUEST, CHAT_REQUEST_STREAM};

const IO_TIMEOUT: Duration = Duration::from_secs(3);
const API_VERSION: &str = "api-version=2024-10-21";

// ---- API-mirroring shapes -------------------------------------------------------------

#[derive(Debug, Deserialize)]
struct Usage {
    prompt_tokens: u32,
    completion_tokens: u32,
    total_tokens: u32,
}

#[derive(Debug, Deserialize)]
struct ChatCompletion {
    id: String,
    object: String,
    created: u64,
    model: String,
    choices: Vec<ChatChoice>,
    usage: Usage,
}

#[derive(Debug, Deserialize)]
struct ChatChoice {
    index: u32,
    message: ChatMessage,
    finish_reason: String,
}

#[derive(Debug, Deserialize)]
struct ChatMessage {
    role: String,
    content: String,
}

#[derive(Debug, Deserialize)]
struct ChatChunk {
    id: String,
    object: String,
    model: String,
    choices: Vec<ChunkChoice>,
    usage: Option<Usage>,
}

#[derive(Debug, Deserialize)]
struct ChunkChoice {
    index: u32,
    delta: Delta,
    finish_reason: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Delta {
    role: Option<String>,
    content: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Completion {
    object: String,
    choices: Vec<CompletionChoice>,
    usage: Usage,
}

#[derive(Debug, Deserialize)]
struct CompletionChoice {
    text: String,
    index: u32,
    finish_reason: String,
}

#[derive(Debug, Deserialize)]
struct Embeddings {
    object: String,
    data: Vec<Embedding>,
    model: String,
    usage: EmbeddingUsage,
}

#[derive(Debug, Deserialize)]
struct Embedding {
    object: String,
    index: u32,
    embedding: Vec<f32>,
}

#[derive(Debug, Deserialize)]
struct EmbeddingUsage {
    prompt_tokens: u32,
    total_tokens: u32,
}

#[derive(Debug, Deserialize)]
struct ModelList {
    object: String,
    data: Vec<Model>,
}

#[derive(Debug, Deserialize)]
struct Model {
    id: String,
    object: String,
}

/// OpenAI's error shape.
#[derive(Debug, Deserialize)]
struct OpenAiError {
    error: OpenAiErrorDetail,
}

#[derive(Debug, Deserialize)]
struct OpenAiErrorDetail {
    message: String,
    #[serde(rename = "type")]
    kind: String,
    param: Option<String>,
    code: Option<String>,
}

/// Azure OpenAI's throttling shape.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AzureError {
    error: AzureErrorDetail,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AzureErrorDetail {
    code: String,
    message: String,
}

// ---- a small blocking HTTP/1.1 client ---------------------------------------------------

#[derive(Debug)]
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json<'a, T: Deserialize<'a>>(&'a self) -> T {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "{e}: {} (status {})",
                String::from_utf8_lossy(&self.body),
                self.status
            )
        })
    }
}

/// A keep-alive client connection; bytes read past one answer stay for the next.
struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        stream.set_nodelay(true).unwrap();
        Client {
            stream,
            buf: Vec::new(),
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    fn read_more(&mut self) -> std::io::Result<usize> {
        let mut chunk = [0u8; 16 * 1024];
        let n = self.stream.read(&mut chunk)?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    /// Reads one whole answer (Content-Length or chunked body).
    fn try_response(&mut self) -> std::io::Result<Response> {
        let (head_len, status, headers) = loop {
            let mut slots = [httparse::EMPTY_HEADER; 32];
            let mut resp = httparse::Response::new(&mut slots);
            if let httparse::Status::Complete(len) = resp.parse(&self.buf).unwrap() {
                let headers: Vec<(String, String)> = resp
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_owned(),
                            String::from_utf8_lossy(h.value).into_owned(),
                        )
                    })
                    .collect();
                break (len, resp.code.unwrap(), headers);
            }
            if self.read_more()? == 0 {
                return Err(ErrorKind::UnexpectedEof.into());
            }
        };
        let mut response = Response {
            status,
            headers,
            body: Vec::new(),
        };
        if let Some(len) = response.header("content-length") {
            let len: usize = len.parse().unwrap();
            while self.buf.len() < head_len + len {
                if self.read_more()? == 0 {
                    return Err(ErrorKind::UnexpectedEof.into());
                }
            }
            response.body = self.buf[head_len..head_len + len].to_vec();
            self.buf.drain(..head_len + len);
        } else {
            assert_eq!(response.header("transfer-encoding"), Some("chunked"));
            let mut decoder = ChunkedDecoder::new(u64::MAX);
            let mut pos = head_len;
            loop {
                let d = decoder
                    .decode(&self.buf[pos..], &mut response.body)
                    .unwrap();
                pos += d.consumed;
                if d.done {
                    break;
                }
                if self.read_more()? == 0 {
                    return Err(ErrorKind::UnexpectedEof.into());
                }
            }
            self.buf.drain(..pos);
        }
        Ok(response)
    }

    fn response(&mut self) -> Response {
        self.try_response().unwrap()
    }

    fn post(&mut self, path: &str, body: &[u8]) -> Response {
        self.send(&post(path, body));
        self.response()
    }

    fn get(&mut self, path: &str) -> Response {
        self.send(&get(path));
        self.response()
    }
}

fn post(path: &str, body: &[u8]) -> Vec<u8> {
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: mock\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    req
}

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: mock\r\n\r\n").into_bytes()
}

fn mock(edit: impl FnOnce(&mut MockConfig)) -> MockHandle {
    let mut cfg = MockConfig::default();
    edit(&mut cfg);
    spawn(cfg).unwrap()
}

fn chat_body() -> Vec<u8> {
    CHAT_REQUEST.to_vec()
}

/// The `data:` payloads of an SSE body.
fn sse_data(body: &[u8]) -> Vec<String> {
    sse_events(body)
        .into_iter()
        .map(|e| {
            let text = std::str::from_utf8(e).unwrap();
            text.strip_prefix("data: ")
                .and_then(|t| t.strip_suffix("\n\n"))
                .unwrap_or_else(|| panic!("not a data event: {text:?}"))
                .to_owned()
        })
        .collect()
}

// ---- shapes ------------------------------------------------------------------------------

#[test]
fn chat_answers_on_openai_and_azure_paths() {
    for driver in [DriverChoice::Auto, DriverChoice::Epoll] {
        let mock = mock(|c| c.driver = driver);
        let mut client = Client::connect(mock.addrs()[0]);
        for path in [
            "/v1/chat/completions".to_owned(),
            "/openai/v1/chat/completions".to_owned(),
            format!("/openai/deployments/gpt-4o/chat/completions?{API_VERSION}"),
        ] {
            let resp = client.post(&path, &chat_body());
            assert_eq!(resp.status, 200, "{path}");
            assert_eq!(resp.header("content-type"), Some("application/json"));
            let chat: ChatCompletion = resp.json();
            assert!(chat.id.starts_with("chatcmpl-"));
            assert_eq!(chat.object, "chat.completion");
            assert!(chat.created > 0);
            assert_eq!(chat.model, "sluice-mock");
            assert_eq!(chat.choices.len(), 1);
            let choice = &chat.choices[0];
            assert_eq!(
                (choice.index, choice.message.role.as_str()),
                (0, "assistant")
            );
            assert_eq!(choice.finish_reason, "stop");
            assert_eq!(choice.message.content.split(' ').count(), 16);
            assert_eq!(chat.usage.completion_tokens, 16);
            assert_eq!(
                chat.usage.total_tokens,
                chat.usage.prompt_tokens + chat.usage.completion_tokens
            );
        }
        assert_eq!(mock.stats().by_status, BTreeMap::from([(200, 3)]));
    }
}

#[test]
fn streams_with_and_without_usage() {
    let mock = mock(|c| c.completion_tokens = 5);
    let mut client = Client::connect(mock.addrs()[0]);

    let resp = client.post("/v1/chat/completions", CHAT_REQUEST_STREAM);
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("content-type"), Some("text/event-stream"));
    let data = sse_data(&resp.body);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<ChatChunk> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    // Role chunk, 5 tokens, finish chunk, usage chunk.
    assert_eq!(chunks.len(), 8);
    assert!(chunks
        .iter()
        .all(|c| c.object == "chat.completion.chunk" && c.id == chunks[0].id));
    assert_eq!(
        chunks[0].choices[0].delta.role.as_deref(),
        Some("assistant")
    );
    let text: String = chunks[1..6]
        .iter()
        .map(|c| c.choices[0].delta.content.clone().unwrap())
        .collect();
    assert_eq!(text.split(' ').count(), 5);
    assert_eq!(chunks[6].choices[0].finish_reason.as_deref(), Some("stop"));
    let usage_chunk = &chunks[7];
    assert!(usage_chunk.choices.is_empty());
    assert_eq!(usage_chunk.usage.as_ref().unwrap().completion_tokens, 5);
    assert!(chunks[..7].iter().all(|c| c.usage.is_none()));

    // Without include_usage: no usage chunk at all, on an Azure path.
    let body = br#"{"messages":[{"role":"user","content":"hi"}],"stream":true}"#;
    let resp = client.post(
        &format!("/openai/deployments/d/chat/completions?{API_VERSION}"),
        body,
    );
    let data = sse_data(&resp.body);
    let chunks: Vec<ChatChunk> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert_eq!(chunks.len(), 7);
    assert!(chunks
        .iter()
        .all(|c| c.usage.is_none() && c.choices.len() == 1 && c.model == "sluice-mock"));
    assert_eq!(chunks[6].choices[0].index, 0);
}

#[test]
fn paced_streams_take_their_time() {
    // 5 tokens at 50 tokens/s: 4 gaps of 20 ms after the first token.
    let mock = mock(|c| {
        c.completion_tokens = 5;
        c.tokens_per_second = 50.0;
    });
    let mut client = Client::connect(mock.addrs()[0]);
    let start = Instant::now();
    let resp = client.post("/v1/chat/completions", CHAT_REQUEST_STREAM);
    assert_eq!(resp.status, 200);
    assert!(
        start.elapsed() >= Duration::from_millis(80),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn completions_embeddings_and_models() {
    let mock = mock(|c| {
        c.model = "gpt-mock".into();
        c.embedding_dimensions = 12;
    });
    let mut client = Client::connect(mock.addrs()[0]);

    let resp = client.post(
        "/v1/completions",
        br#"{"model":"davinci","prompt":"Say hi","max_tokens":4}"#,
    );
    let completion: Completion = resp.json();
    assert_eq!(completion.object, "text_completion");
    assert_eq!(completion.choices[0].index, 0);
    assert_eq!(completion.choices[0].finish_reason, "length");
    assert_eq!(completion.choices[0].text.split(' ').count(), 4);
    assert_eq!(completion.usage.completion_tokens, 4);

    let resp = client.post(
        &format!("/openai/deployments/emb/embeddings?{API_VERSION}"),
        br#"{"input":["one","two"]}"#,
    );
    let emb: Embeddings = resp.json();
    assert_eq!(
        (emb.object.as_str(), emb.model.as_str()),
        ("list", "gpt-mock")
    );
    assert_eq!(emb.data.len(), 2);
    for (i, e) in emb.data.iter().enumerate() {
        assert_eq!((e.object.as_str(), e.index as usize), ("embedding", i));
        assert_eq!(e.embedding.len(), 12);
    }
    assert_eq!(emb.usage.total_tokens, emb.usage.prompt_tokens);

    let list: ModelList = client.get("/v1/models").json();
    assert_eq!(list.object, "list");
    assert_eq!(list.data.len(), 1);
    assert_eq!(
        (list.data[0].id.as_str(), list.data[0].object.as_str()),
        ("gpt-mock", "model")
    );

    // What OpenAI refuses, the mock refuses the same way.
    let resp = client.post("/v1/chat/completions", b"[1]");
    assert_eq!(resp.status, 400);
    let err: OpenAiError = resp.json();
    assert_eq!(err.error.kind, "invalid_request_error");
    let resp = client.post("/v2/nothing", b"{}");
    assert_eq!(resp.status, 404);
    let _: OpenAiError = resp.json();
    let resp = client.post("/openai/deployments/d/chat/completions", &chat_body());
    assert_eq!(resp.status, 400);
    assert_eq!(
        resp.json::<OpenAiError>().error.param.as_deref(),
        Some("api-version")
    );
}

// ---- faults ------------------------------------------------------------------------------

#[test]
fn every_answer_is_a_429_at_share_one() {
    let mock = mock(|c| {
        c.rate_429 = 1.0;
        c.retry_after_ms = 1234;
    });
    let mut client = Client::connect(mock.addrs()[0]);
    for _ in 0..20 {
        let resp = client.post("/v1/chat/completions", &chat_body());
        assert_eq!(resp.status, 429);
        assert_eq!(resp.header("retry-after-ms"), Some("1234"));
        assert_eq!(resp.header("retry-after"), Some("2"));
        assert_eq!(resp.header("x-ratelimit-remaining-requests"), Some("0"));
        assert!(resp.header("x-ratelimit-limit-tokens").is_some());
        let err: AzureError = resp.json();
        assert_eq!(err.error.code, "429");
        assert!(err.error.message.contains("retry after 2 seconds"));
    }
    let stats = mock.stats();
    assert_eq!(stats.requests, 20);
    assert_eq!(stats.by_status, BTreeMap::from([(429, 20)]));
}

#[test]
fn a_token_budget_counts_down_then_throttles_with_the_wait() {
    // 6,000 tokens a minute over a 10 s window: 1,000 tokens, refilled at 0.1 a ms. Each
    // request costs its prompt estimate plus max_tokens 200; the fifth does not fit.
    let mock = mock(|c| {
        c.tokens_per_minute = 6_000;
        c.requests_per_minute = 600;
        c.budget_window = Duration::from_secs(10);
    });
    let body = br#"{"messages":[{"role":"user","content":"Hello there!"}],"max_tokens":200}"#;
    let cost = 3 + 4 + 3 + 200;
    let mut client = Client::connect(mock.addrs()[0]);
    let path = format!("/openai/deployments/gpt-4o/chat/completions?{API_VERSION}");
    let mut remaining = Vec::new();
    for _ in 0..4 {
        let resp = client.post(&path, body);
        assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.body));
        assert_eq!(resp.header("x-ratelimit-limit-tokens"), Some("6000"));
        assert_eq!(resp.header("x-ratelimit-limit-requests"), Some("600"));
        let reset = resp.header("x-ratelimit-reset-tokens").unwrap();
        assert!(reset.ends_with("ms") || reset.ends_with('s'), "{reset}");
        assert!(resp.header("x-ratelimit-reset-requests").is_some());
        assert!(resp.header("x-ratelimit-remaining-requests").is_some());
        remaining.push(
            resp.header("x-ratelimit-remaining-tokens")
                .unwrap()
                .parse::<u64>()
                .unwrap(),
        );
    }
    // Counted down by the cost each time (the refill over a few ms adds a token or so).
    for pair in remaining.windows(2) {
        assert!(
            pair[0] > pair[1] && pair[0] - pair[1] <= cost,
            "{remaining:?}"
        );
    }
    assert!(remaining[3] < cost, "{remaining:?}");
    let resp = client.post(&path, body);
    assert_eq!(resp.status, 429);
    let ms: u64 = resp.header("retry-after-ms").unwrap().parse().unwrap();
    assert!((1..=1000).contains(&ms), "{ms}");
    assert_eq!(resp.header("retry-after"), Some("1"));
    assert!(resp.header("x-ratelimit-reset-tokens").is_some());
    let err: AzureError = resp.json();
    assert_eq!(err.error.code, "429");
    assert!(
        err.error.message.contains("token rate limit"),
        "{}",
        err.error.message
    );
    // The models list is not charged.
    assert_eq!(client.get("/v1/models").status, 200);
    assert_eq!(mock.stats().by_status, BTreeMap::from([(200, 5), (429, 1)]));
}

#[test]
fn server_errors_at_their_share_and_status() {
    let mock = mock(|c| {
        c.rate_5xx = 1.0;
        c.status_5xx = 502;
    });
    let mut client = Client::connect(mock.addrs()[0]);
    for _ in 0..10 {
        let resp = client.post("/v1/embeddings", br#"{"input":"x"}"#);
        assert_eq!(resp.status, 502);
        let err: OpenAiError = resp.json();
        assert_eq!(err.error.kind, "server_error");
        assert!(!err.error.message.is_empty());
        assert_eq!((err.error.param, err.error.code), (None, None));
    }
    // Half the answers: exactly the seeded draw, with every request accounted for.
    let mock = self::mock(|c| {
        c.rate_5xx = 0.5;
        c.seed = 7;
    });
    let mut client = Client::connect(mock.addrs()[0]);
    let failed = (0..60)
        .filter(|_| client.post("/v1/chat/completions", &chat_body()).status == 503)
        .count() as u64;
    assert!((10..50).contains(&failed), "{failed} of 60");
    let stats = mock.stats();
    assert_eq!(stats.requests, 60);
    assert_eq!(
        stats.by_status,
        BTreeMap::from([(200, 60 - failed), (503, failed)])
    );
}

#[test]
fn resets_are_seen_by_the_client() {
    for driver in [DriverChoice::Auto, DriverChoice::Epoll] {
        let mock = mock(|c| {
            c.rate_reset = 1.0;
            c.driver = driver;
        });
        let mut hard_resets = 0;
        for _ in 0..10 {
            let mut client = Client::connect(mock.addrs()[0]);
            client.send(&post("/v1/chat/completions", &chat_body()));
            let mut byte = [0u8; 1];
            match client.stream.read(&mut byte) {
                Err(e) if e.kind() == ErrorKind::ConnectionReset => hard_resets += 1,
                Ok(0) => {}
                other => panic!("expected a reset, got {other:?}"),
            }
        }
        // SO_LINGER 0 sends RST: the client sees ECONNRESET, not a clean end.
        assert!(hard_resets >= 8, "{hard_resets} of 10 reads saw ECONNRESET");
        let stats = mock.stats();
        assert_eq!((stats.requests, stats.resets), (10, 10));
        assert!(stats.by_status.is_empty());
    }
    // A share of resets, each on its own connection; the rest are answered.
    let mock = mock(|c| {
        c.rate_reset = 0.3;
        c.seed = 11;
    });
    let mut resets = 0;
    for _ in 0..40 {
        let mut client = Client::connect(mock.addrs()[0]);
        client.send(&post("/v1/chat/completions", &chat_body()));
        match client.try_response() {
            Ok(resp) => assert_eq!(resp.status, 200),
            Err(e) => {
                assert!(
                    matches!(
                        e.kind(),
                        ErrorKind::ConnectionReset | ErrorKind::UnexpectedEof
                    ),
                    "{e}"
                );
                resets += 1;
            }
        }
    }
    let stats = mock.stats();
    assert_eq!(stats.requests, 40);
    assert_eq!(stats.resets, resets);
    assert_eq!(stats.by_status, BTreeMap::from([(200, 40 - resets)]));
    assert!((3..25).contains(&resets), "{resets} of 40");
}

#[test]
fn slow_first_byte_delays_at_least_the_set_time() {
    let delay = Duration::from_millis(150);
    let mock = mock(|c| {
        c.rate_slow = 1.0;
        c.slow_first_byte = Dist::Fixed(delay);
        c.latency = "5ms".parse().unwrap();
    });
    let mut client = Client::connect(mock.addrs()[0]);
    for _ in 0..3 {
        let start = Instant::now();
        let resp = client.post("/v1/chat/completions", &chat_body());
        assert_eq!(resp.status, 200);
        assert!(start.elapsed() >= delay + Duration::from_millis(5));
    }
    // Without the share, answers are not held for the slow first byte: a delay long enough
    // that no scheduling hiccup on a busy machine reaches it.
    let delay = Duration::from_secs(5);
    let mock = self::mock(|c| c.slow_first_byte = Dist::Fixed(delay));
    let mut client = Client::connect(mock.addrs()[0]);
    let start = Instant::now();
    client.post("/v1/chat/completions", &chat_body());
    assert!(start.elapsed() < delay);
}

/// Answers due while the stall window is open wait for it to close; answers before and
/// after it do not. The window and the stall are seconds long, so a busy machine's
/// scheduling delays (tens of ms) cannot move a request from one side to the other.
#[test]
fn answers_due_in_the_stall_window_wait_for_its_end() {
    let stall_after = Duration::from_secs(2);
    let stall_for = Duration::from_secs(2);
    let before = Instant::now();
    let mock = mock(|c| {
        c.stall_after = Some(stall_after);
        c.stall_for = Some(stall_for);
    });
    let mut client = Client::connect(mock.addrs()[0]);

    // Before the window (the mock started after `before`, so it opens later still).
    client.post("/v1/chat/completions", &chat_body());
    assert!(
        before.elapsed() < stall_after,
        "the first answer was held: {:?}",
        before.elapsed()
    );

    // In the window: held until it closes.
    std::thread::sleep(
        (before + stall_after + Duration::from_millis(500))
            .saturating_duration_since(Instant::now()),
    );
    let resp = client.post("/v1/chat/completions", &chat_body());
    assert_eq!(resp.status, 200);
    let held_until = Instant::now();
    assert!(held_until >= before + stall_after + Duration::from_millis(500));
    assert!(
        held_until >= before + stall_after + stall_for - Duration::from_millis(500),
        "not held to the window's end"
    );

    // After it: not held again (another window would hold it for 2 s).
    let t = Instant::now();
    client.post("/v1/chat/completions", &chat_body());
    assert!(t.elapsed() < stall_for, "held again: {:?}", t.elapsed());
}

// ---- counting, keep-alive, pipelining ----------------------------------------------------

#[test]
fn stats_count_exactly_and_reset() {
    let mock = mock(|c| c.threads = 2);
    let addr = mock.addrs()[0];
    let mut clients: Vec<Client> = (0..3).map(|_| Client::connect(addr)).collect();
    for i in 0..37 {
        let resp = clients[i % 3].post("/v1/chat/completions", &chat_body());
        assert_eq!(resp.status, 200);
    }
    clients[0].post("/v1/nothing", b"{}");
    // Admin requests are not counted, and answer what the handle reads.
    let seen: MockStats = clients[1].get("/_mock/stats").json();
    let expected = MockStats {
        requests: 38,
        by_status: BTreeMap::from([(200, 37), (404, 1)]),
        resets: 0,
    };
    assert_eq!(seen, expected);
    assert_eq!(mock.stats(), expected);
    let raw: serde_json::Value = clients[2].get("/_mock/stats").json();
    assert_eq!(raw["by_status"]["200"], 37);

    let cleared: MockStats = clients[2].post("/_mock/stats/reset", b"").json();
    assert_eq!(cleared, expected);
    assert_eq!(mock.stats(), MockStats::default());
    clients[0].post("/v1/chat/completions", &chat_body());
    assert_eq!(mock.stats().requests, 1);
    mock.reset_stats();
    assert_eq!(mock.stats(), MockStats::default());
    assert_eq!(clients[0].get("/_mock/nothing").status, 404);
}

#[test]
fn keep_alive_and_pipelining() {
    for driver in [DriverChoice::Auto, DriverChoice::Epoll] {
        let mock = mock(|c| c.driver = driver);
        let mut client = Client::connect(mock.addrs()[0]);
        // Ten requests in one write: plain, chunked body, embeddings, models, a stream.
        let mut batch = Vec::new();
        for i in 0..10 {
            match i % 5 {
                0 => batch.extend(post("/v1/chat/completions", &chat_body())),
                1 => {
                    batch.extend_from_slice(
                        b"POST /v1/chat/completions HTTP/1.1\r\nHost: mock\r\nTransfer-Encoding: chunked\r\n\r\n",
                    );
                    batch.extend(chunked(CHAT_REQUEST, 50));
                }
                2 => batch.extend(post("/v1/embeddings", br#"{"input":"x"}"#)),
                3 => batch.extend(get("/v1/models")),
                _ => batch.extend(post("/v1/chat/completions", CHAT_REQUEST_STREAM)),
            }
        }
        client.send(&batch);
        for i in 0..10 {
            let resp = client.response();
            assert_eq!(resp.status, 200, "answer {i}");
            match i % 5 {
                0 | 1 => {
                    let _: ChatCompletion = resp.json();
                }
                2 => {
                    let _: Embeddings = resp.json();
                }
                3 => {
                    let _: ModelList = resp.json();
                }
                _ => assert_eq!(sse_data(&resp.body).last().unwrap(), "[DONE]"),
            }
        }
        // The connection is still alive for more, one at a time.
        for _ in 0..5 {
            assert_eq!(
                client.post("/v1/chat/completions", &chat_body()).status,
                200
            );
        }
        assert_eq!(mock.stats().requests, 15);

        // `Connection: close` is honoured.
        let mut req = post("/v1/chat/completions", &chat_body());
        let at = req.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        req.splice(at + 2..at + 2, b"Connection: close\r\n".iter().copied());
        client.send(&req);
        let resp = client.response();
        assert_eq!(resp.header("connection"), Some("close"));
        assert_eq!(client.read_more().unwrap_or(0), 0);
    }
}

#[test]
fn several_listeners_and_threads() {
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    let mock = mock(|c| {
        c.listen = vec![any, any];
        c.threads = 2;
    });
    assert_eq!(mock.addrs().len(), 2);
    assert_ne!(mock.addrs()[0].port(), mock.addrs()[1].port());
    for addr in mock.addrs() {
        for _ in 0..4 {
            let mut client = Client::connect(*addr);
            assert_eq!(
                client.post("/v1/chat/completions", &chat_body()).status,
                200
            );
        }
    }
    assert_eq!(mock.stats().requests, 8);
    mock.stop();
}

// ---- the binary --------------------------------------------------------------------------

#[test]
fn binary_prints_its_listening_line_and_stops_on_sigterm() {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;

    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice-bench"))
        .args(["mock", "--listen", "127.0.0.1:0", "--threads", "2"])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let pid = Pid::from_raw(i32::try_from(child.id()).unwrap());
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    let rest = line
        .trim_end()
        .strip_prefix("sluice-bench mock listening on ")
        .unwrap_or_else(|| panic!("unexpected line {line:?}"));
    let (addr, tail) = rest.split_once(' ').unwrap();
    assert!(
        tail == "threads=2 driver=io_uring" || tail == "threads=2 driver=epoll",
        "{tail}"
    );
    let addr: SocketAddr = addr.parse().unwrap();
    let mut client = Client::connect(addr);
    assert_eq!(
        client.post("/v1/chat/completions", &chat_body()).status,
        200
    );

    kill(pid, Signal::SIGTERM).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the mock did not stop on SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(status.success(), "{status:?}");
    let mut last = String::new();
    stderr.read_to_string(&mut last).unwrap();
    assert!(
        last.contains(r#"{"requests":1,"by_status":{"200":1},"resets":0}"#),
        "{last}"
    );
}
