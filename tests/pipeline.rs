//! The request pipeline seen from a policy: a recording policy installed in front of the
//! standard pipeline (`server::start_with`, real workers on 127.0.0.1, a real socket) sees
//! every phase in order — and `on_complete` exactly once — for a plain answer, a stream, a
//! request refused at its head, one whose backend cannot be reached and one refused before
//! its attempt went out; and the header it adds at the head is on every one of their answers
//! (and on the `/v1/models` list).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sluice::policy::context::{AttemptOutcome, End, RequestCtx};
use sluice::policy::phase::{Chunk, Env, Flow, Policy, Request, Response, UpstreamRequest};
use sluice::policy::pipeline;
use sluice::server::{self, DriverChoice};

/// Writes one line per phase into a log the test reads.
#[derive(Clone, Default)]
struct Recording(Arc<Mutex<Vec<String>>>);

impl Recording {
    fn push(&self, line: String) {
        self.0.lock().unwrap().push(line);
    }

    /// The lines so far, runs of body chunks folded into one `body_chunk`.
    fn take(&self) -> Vec<String> {
        let mut lines: Vec<String> = Vec::new();
        for line in self.0.lock().unwrap().drain(..) {
            if line == "body_chunk" && lines.last().is_some_and(|l| l == "body_chunk") {
                continue;
            }
            lines.push(line);
        }
        lines
    }
}

/// The header the recording policy adds to every answer.
const RECORDED: &str = "x-recorded: yes\r\n";

impl Policy for Recording {
    fn on_request<'s>(&self, _: &Env<'s>, ctx: &mut RequestCtx<'s>, _: &Request<'_>) -> Flow {
        self.push(format!(
            "request {:?}",
            ctx.operation.map(|o| o.path_suffix())
        ));
        ctx.response_headers.extend_from_slice(RECORDED.as_bytes());
        Flow::Continue
    }

    fn on_request_body<'s>(
        &self,
        _: &Env<'s>,
        ctx: &mut RequestCtx<'s>,
        req: &Request<'_>,
    ) -> Flow {
        let deployment = ctx.deployment.map(|d| d.name.clone());
        self.push(format!("request_body {} {deployment:?}", req.body.len()));
        Flow::Continue
    }

    fn on_upstream_request<'s>(
        &self,
        env: &Env<'s>,
        _: &mut RequestCtx<'s>,
        req: &UpstreamRequest<'_>,
    ) -> Flow {
        let name = &env.snapshot.backends[req.backend].name;
        self.push(format!("upstream_request {name}"));
        Flow::Continue
    }

    fn on_response_head<'s>(&self, _: &Env<'s>, ctx: &mut RequestCtx<'s>, resp: &Response) -> Flow {
        self.push(format!(
            "response_head {} stream={}",
            resp.status, resp.event_stream
        ));
        ctx.body.read = true;
        Flow::Continue
    }

    fn on_body_chunk<'s>(
        &self,
        _: &Env<'s>,
        _: &mut RequestCtx<'s>,
        data: &[u8],
        end_of_stream: bool,
        _: &mut Vec<u8>,
    ) -> Chunk {
        if end_of_stream {
            self.push("body_end".into());
        } else if !data.is_empty() {
            self.push("body_chunk".into());
        }
        Chunk::Pass
    }

    fn on_complete<'s>(&self, _: &Env<'s>, ctx: &mut RequestCtx<'s>) {
        let attempts: Vec<String> = ctx
            .attempts
            .iter()
            .map(|a| format!("{:?}/{:?}", a.outcome, a.status))
            .collect();
        self.push(format!(
            "complete status={:?} error={:?} end={:?} attempts={attempts:?} out={}",
            ctx.status,
            ctx.error,
            ctx.end,
            ctx.bytes_out > 0
        ));
        assert!(ctx.timings.complete.is_some());
        if ctx.status.is_some() {
            assert!(ctx.timings.first_byte_out.is_some());
        }
        // Outcomes the test's requests cannot produce.
        assert!(ctx
            .attempts
            .iter()
            .all(|a| a.outcome != AttemptOutcome::Pending));
        assert_ne!(ctx.end, End::ClientGone);
    }
}

const KEY: &str = "pipeline-test-key-0123456789";

/// `sha256:<hex>` of [`KEY`], as the config names it.
fn key_hash() -> String {
    {
        use std::fmt::Write as _;
        let digest = <sha2::Sha256 as sha2::Digest>::digest(KEY.as_bytes());
        digest.iter().fold(String::from("sha256:"), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
    }
}

/// A mock deployment and one whose only backend refuses connections, behind a key.
fn config(dir: &std::path::Path, closed: SocketAddr) -> PathBuf {
    let hash = key_hash();
    let text = format!(
        r#"
[server]
listen = ["127.0.0.1:0"]

[[backend]]
name = "mock"
kind = "mock"
completion_tokens = 3

[[backend]]
name = "gone"
kind = "openai"
url = "http://{closed}"

[[deployment]]
name = "gpt-4o-mini"
backends = [{{ backend = "mock" }}]

[[deployment]]
name = "unreachable"
backends = [{{ backend = "gone" }}]

[[product]]
name = "all"
trace = true
limits = [{{ unit = "requests", rate = 1000, per = "minute" }}]

[[subscription]]
name = "team"
product = "all"
keys = ["{hash}"]
"#
    );
    let path = dir.join("sluice.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Sends one request on a new connection and reads the answer to its end (the server
/// closes: `connection: close`); checks the recording policy's header is on it; returns the
/// status.
fn exchange(addr: SocketAddr, key: &str, path: &str, body: &str) -> u16 {
    let text = exchange_traced(addr, key, path, body, false);
    let head = &text[..text.find("\r\n\r\n").unwrap()];
    assert!(head.contains(RECORDED.trim_end()), "{head}");
    text.split(' ').nth(1).unwrap().parse().unwrap()
}

/// `GET path` on a new connection; returns the whole answer.
fn get(addr: SocketAddr, key: &str, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: x\r\napi-key: {key}\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

/// [`exchange`], asking for the trace when `trace`; returns the whole answer.
fn exchange_traced(addr: SocketAddr, key: &str, path: &str, body: &str, trace: bool) -> String {
    let ask = if trace {
        "x-sluice-trace: true\r\n"
    } else {
        ""
    };
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nhost: x\r\napi-key: {key}\r\ncontent-type: application/json\r\n\
         {ask}content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

/// Waits until the log holds a `complete` line (the request's `on_complete` runs after its
/// answer was written, so it can trail the client's read by a moment).
fn settled(log: &Recording) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let lines = log.0.lock().unwrap().clone();
        if lines.iter().any(|l| l.starts_with("complete")) || Instant::now() > deadline {
            return log.take();
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_recording_policy_sees_every_phase_in_order() {
    let dir = std::env::temp_dir().join(format!("sluice-pipeline-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // A port nothing listens on: bound, then released.
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let path = config(&dir, closed);
    let shared = sluice::apply::start(&path).expect("config");
    let log = Recording::default();
    let recording = log.clone();
    let listen = vec!["127.0.0.1:0".parse().unwrap()];
    let running = server::start_with(shared.clone(), listen, 1, DriverChoice::Auto, move || {
        (recording.clone(), pipeline::standard())
    })
    .expect("start");
    let addr = running.listen[0];
    let chat = "/v1/chat/completions";

    let plain = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#;
    assert_eq!(exchange(addr, KEY, chat, plain), 200);
    assert_eq!(
        settled(&log),
        [
            "request Some(\"chat/completions\")",
            &format!("request_body {} Some(\"gpt-4o-mini\")", plain.len()),
            "upstream_request mock",
            "response_head 200 stream=false",
            "body_end",
            "complete status=Some(200) error=None end=Complete attempts=[\"Answered/Some(200)\"] out=true",
        ]
    );

    let streamed =
        r#"{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    assert_eq!(exchange(addr, KEY, chat, streamed), 200);
    assert_eq!(
        settled(&log),
        [
            "request Some(\"chat/completions\")",
            &format!("request_body {} Some(\"gpt-4o-mini\")", streamed.len()),
            "upstream_request mock",
            "response_head 200 stream=true",
            "body_chunk",
            "body_end",
            "complete status=Some(200) error=None end=Complete attempts=[\"Answered/Some(200)\"] out=true",
        ]
    );

    assert_eq!(exchange(addr, "not-a-key", chat, plain), 401);
    assert_eq!(
        settled(&log),
        [
            "request Some(\"chat/completions\")",
            "complete status=Some(401) error=Some(InvalidApiKey) end=Complete attempts=[] out=true",
        ]
    );

    let unreachable = r#"{"model":"unreachable","messages":[{"role":"user","content":"hi"}]}"#;
    assert_eq!(exchange(addr, KEY, chat, unreachable), 502);
    let lines = settled(&log);
    assert_eq!(
        lines[..3],
        [
            "request Some(\"chat/completions\")".to_string(),
            format!("request_body {} Some(\"unreachable\")", unreachable.len()),
            "upstream_request gone".to_string(),
        ]
    );
    // The lone backend is tried `retry.max_attempts` (3) times, each attempt prepared anew.
    assert_eq!(lines.len(), 6, "{lines:?}");
    assert_eq!(
        lines[3..5],
        ["upstream_request gone", "upstream_request gone"]
    );
    assert!(
        lines[5].starts_with("complete status=Some(502) error=Some(UpstreamUnavailable)")
            && lines[5].contains(
                "attempts=[\"ConnectFailed/None\", \"ConnectFailed/None\", \"ConnectFailed/None\"]"
            ),
        "{lines:?}"
    );

    // An admitted request's error answer carries its rate-limit state and the trace naming
    // the backend that failed.
    let failed = exchange_traced(addr, KEY, chat, unreachable, true).to_ascii_lowercase();
    assert!(failed.starts_with("http/1.1 502"), "{failed}");
    assert!(
        failed.contains("x-ratelimit-limit-requests: 1000\r\n"),
        "{failed}"
    );
    assert!(
        failed.contains("x-sluice-trace: route=chat/completions deployment=unreachable; subscription=team; limit ")
            && failed.contains("; backend=gone\r\n"),
        "{failed}"
    );
    let _ = settled(&log);

    // A body whose `model` is given twice cannot be pinned: refused before the mock is
    // reached, so the attempt the pipeline prepared is not one.
    let azure = "/openai/deployments/gpt-4o-mini/chat/completions?api-version=2024-10-21";
    let twice = r#"{"model":"a","model":"b","messages":[{"role":"user","content":"hi"}]}"#;
    assert_eq!(exchange(addr, KEY, azure, twice), 400);
    assert_eq!(
        settled(&log),
        [
            "request Some(\"chat/completions\")",
            &format!("request_body {} Some(\"gpt-4o-mini\")", twice.len()),
            "upstream_request mock",
            "complete status=Some(400) error=Some(InvalidRequest) end=Complete attempts=[] out=true",
        ]
    );

    // The deployments list is an answer of the pipeline too.
    let models = get(addr, KEY, "/v1/models");
    assert!(models.starts_with("HTTP/1.1 200"), "{models}");
    assert!(models.contains(RECORDED), "{models}");
    assert_eq!(
        settled(&log),
        [
            "request Some(\"models\")",
            "request_body 0 None",
            "complete status=Some(200) error=None end=Complete attempts=[] out=true",
        ]
    );

    shared.begin_shutdown();
    assert!(running.join(Instant::now() + Duration::from_secs(10)));
    let _ = std::fs::remove_dir_all(&dir);
}

/// The end of the shutdown grace cuts what is still in flight, and every request it cuts
/// still completes once: one still waiting for its backend is answered 503 `shutting_down`
/// (its attempt `Cut`), a stream under way is truncated.
#[test]
fn requests_cut_by_the_end_of_the_grace_still_complete() {
    let dir = std::env::temp_dir().join(format!("sluice-pipeline-cut-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let text = format!(
        r#"
[server]
listen = ["127.0.0.1:0"]
shutdown_grace = "300ms"

[[backend]]
name = "slow"
kind = "mock"
latency = "60s"

[[backend]]
name = "trickle"
kind = "mock"
completion_tokens = 1000
tokens_per_second = 5

[[deployment]]
name = "waiting"
backends = [{{ backend = "slow" }}]

[[deployment]]
name = "streaming"
backends = [{{ backend = "trickle" }}]

[[product]]
name = "all"
limits = [{{ unit = "tokens", rate = 1000000, per = "minute" }}]

[[subscription]]
name = "team"
product = "all"
keys = ["{}"]
"#,
        key_hash()
    );
    let path = dir.join("sluice.toml");
    std::fs::write(&path, text).unwrap();
    let shared = sluice::apply::start(&path).expect("config");
    let log = Recording::default();
    let recording = log.clone();
    let listen = vec!["127.0.0.1:0".parse().unwrap()];
    let running = server::start_with(shared.clone(), listen, 1, DriverChoice::Auto, move || {
        (recording.clone(), pipeline::standard())
    })
    .expect("start");
    let addr = running.listen[0];
    let chat = "/v1/chat/completions";

    let waiting = std::thread::spawn(move || {
        let body = r#"{"model":"waiting","messages":[{"role":"user","content":"hi"}]}"#;
        exchange_traced(addr, KEY, chat, body, false)
    });
    let streaming = std::thread::spawn(move || {
        let body =
            r#"{"model":"streaming","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
        exchange_traced(addr, KEY, chat, body, false)
    });
    // Both under way: one waiting for its backend, one streaming.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let lines = log.0.lock().unwrap().clone();
        let waiting_sent = lines.iter().any(|l| l == "upstream_request slow");
        let streaming_began = lines.iter().any(|l| l == "body_chunk");
        if (waiting_sent && streaming_began) || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    shared.begin_shutdown();
    assert!(running.join(Instant::now() + Duration::from_secs(10)));

    let waited = waiting.join().unwrap();
    assert!(waited.starts_with("HTTP/1.1 503"), "{waited}");
    assert!(waited.contains("\"code\":\"shutting_down\""), "{waited}");
    assert!(waited.contains(RECORDED), "{waited}");
    let streamed = streaming.join().unwrap();
    assert!(streamed.starts_with("HTTP/1.1 200"), "{streamed}");
    assert!(!streamed.contains("[DONE]"), "{streamed}");

    let mut completes: Vec<String> = log
        .take()
        .into_iter()
        .filter(|l| l.starts_with("complete"))
        .collect();
    completes.sort();
    assert_eq!(
        completes,
        [
            "complete status=Some(200) error=None end=Truncated attempts=[\"Answered/Some(200)\"] out=true",
            "complete status=Some(503) error=Some(ShuttingDown) end=Complete attempts=[\"Cut/None\"] out=true",
        ]
    );
    let _ = std::fs::remove_dir_all(&dir);
}
