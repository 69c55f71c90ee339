//! Whole-process tests of how answers stream through Sluice: SSE events reach the client one
//! by one as the upstream sends them (never buffered whole), and chunked, close-delimited and
//! content-length upstream bodies arrive intact.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use support::*;

/// How long the scripted upstream waits for the client's "got the first event" signal.
const GATE: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, PartialEq, Eq)]
enum StreamFraming {
    Chunked,
    CloseDelimited,
}

struct Gate {
    /// Set by the upstream just before it sends anything after the first event.
    last_sent: AtomicBool,
    /// Whether the upstream got the client's signal before giving up waiting.
    signalled: AtomicBool,
    rx: Mutex<mpsc::Receiver<()>>,
}

/// An upstream that sends one SSE event, waits for the test's signal, then sends the rest.
fn gated_sse_upstream(framing: StreamFraming) -> (Upstream, Arc<Gate>, mpsc::Sender<()>) {
    let (tx, rx) = mpsc::channel();
    let gate = Arc::new(Gate {
        last_sent: AtomicBool::new(false),
        signalled: AtomicBool::new(false),
        rx: Mutex::new(rx),
    });
    let g = Arc::clone(&gate);
    let up = Upstream::start(move |_, s: &mut TcpStream| {
        let te = match framing {
            StreamFraming::Chunked => "transfer-encoding: chunked\r\n",
            StreamFraming::CloseDelimited => "connection: close\r\n",
        };
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n{te}\r\n"
        );
        let send = |s: &mut TcpStream, data: &str| match framing {
            StreamFraming::Chunked => write_chunk(s, data.as_bytes()),
            StreamFraming::CloseDelimited => s.write_all(data.as_bytes()).and_then(|()| s.flush()),
        };
        if s.write_all(head.as_bytes()).is_err() || send(s, &sse_chunk("first")).is_err() {
            return After::Close;
        }
        let got = g.rx.lock().unwrap().recv_timeout(GATE).is_ok();
        g.signalled.store(got, Ordering::SeqCst);
        g.last_sent.store(true, Ordering::SeqCst);
        let _ = send(s, &sse_chunk("second"));
        let _ = send(s, &sse_chunk("third"));
        let _ = send(s, "data: [DONE]\n\n");
        match framing {
            StreamFraming::Chunked => {
                let _ = write_chunk(s, b"");
                After::KeepAlive
            }
            StreamFraming::CloseDelimited => After::Close,
        }
    });
    (up, gate, tx)
}

fn sse_arrives_event_by_event(framing: StreamFraming) {
    let (up, gate, tx) = gated_sse_upstream(framing);
    let s = Launch::new(&openai_backend_body(&up.url(), "chat")).start();
    let mut c = s.connect();
    let bytes = serde_json::to_vec(&chat_body(Some("chat"), true)).unwrap();
    let (head, mut sse) = c.stream(
        "POST",
        "/v1/chat/completions",
        &[("Content-Type", "application/json")],
        &bytes,
    );
    assert_eq!(head.status(), 200, "{head:?}");
    assert!(
        head.header("content-type")
            .is_some_and(|v| v.starts_with("text/event-stream")),
        "{head:?}"
    );
    if framing == StreamFraming::CloseDelimited {
        // Sluice re-chunks a close-delimited answer so the client connection can live on.
        assert_eq!(
            head.header("transfer-encoding"),
            Some("chunked"),
            "close-delimited upstream answer should be re-chunked: {head:?}"
        );
    }
    let first = sse.next_event().expect("first event");
    let saw_first_before_last = !gate.last_sent.load(Ordering::SeqCst);
    tx.send(()).unwrap();
    assert!(first.contains("\"first\""), "{first}");
    let rest = sse.collect_rest();
    assert!(
        saw_first_before_last,
        "the first event reached the client only after the upstream sent the last one (buffered)"
    );
    assert!(gate.signalled.load(Ordering::SeqCst));
    let datas: Vec<&str> = rest.iter().filter_map(|e| event_data(e)).collect();
    assert_eq!(datas.len(), 3, "{rest:?}");
    assert!(datas[0].contains("\"second\""), "{rest:?}");
    assert!(datas[1].contains("\"third\""), "{rest:?}");
    assert_eq!(datas[2], "[DONE]");

    // The client connection is still usable after the stream.
    drop(sse);
    let resp = c.request("GET", "/v1/models", &[], b"");
    assert_eq!(resp.status, 200);
}

#[test]
fn sse_from_a_chunked_upstream_arrives_event_by_event() {
    sse_arrives_event_by_event(StreamFraming::Chunked);
}

#[test]
fn sse_from_a_close_delimited_upstream_arrives_event_by_event() {
    sse_arrives_event_by_event(StreamFraming::CloseDelimited);
}

/// A JSON chat answer of roughly `size` bytes with varied content.
fn big_answer(size: usize) -> Vec<u8> {
    let mut text = String::with_capacity(size);
    let mut i = 0u64;
    while text.len() < size {
        text.push_str(&format!("word{} ", i.wrapping_mul(2_654_435_761) % 100_000));
        i += 1;
    }
    serde_json::to_vec(&json!({
        "id": "chatcmpl-big", "object": "chat.completion", "created": 1, "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}
    }))
    .unwrap()
}

fn body_arrives_intact(answer: Vec<u8>, up: Upstream) {
    let s = Launch::new(&openai_backend_body(&up.url(), "chat")).start();
    let mut c = s.connect();
    for _ in 0..2 {
        let bytes = serde_json::to_vec(&chat_body(Some("chat"), false)).unwrap();
        let resp = c.request(
            "POST",
            "/v1/chat/completions",
            &[("Content-Type", "application/json")],
            &bytes,
        );
        assert_eq!(resp.status, 200);
        assert_eq!(resp.body.len(), answer.len());
        assert!(resp.body == answer, "body changed on the way");
    }
}

#[test]
fn chunked_upstream_body_arrives_intact() {
    let answer = big_answer(300_000);
    let a = answer.clone();
    let up = Upstream::start(move |_, s| {
        let _ = s.write_all(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n",
        );
        let sizes = [1usize, 7, 4096, 65_536, 3, 100_000];
        let mut off = 0;
        let mut k = 0;
        while off < a.len() {
            let n = sizes[k % sizes.len()].min(a.len() - off);
            // A chunk extension now and then: legal, and must not leak into the body.
            let ext = if k % 3 == 0 { ";ext=1" } else { "" };
            let mut out = format!("{n:x}{ext}\r\n").into_bytes();
            out.extend_from_slice(&a[off..off + n]);
            out.extend_from_slice(b"\r\n");
            if s.write_all(&out).is_err() {
                return After::Close;
            }
            off += n;
            k += 1;
        }
        let _ = s.write_all(b"0\r\n\r\n");
        After::KeepAlive
    });
    body_arrives_intact(answer, up);
}

#[test]
fn close_delimited_upstream_body_arrives_intact() {
    let answer = big_answer(300_000);
    let a = answer.clone();
    let up = Upstream::start(move |_, s| {
        let _ = s.write_all(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n",
        );
        for piece in a.chunks(70_001) {
            if s.write_all(piece).is_err() {
                break;
            }
            let _ = s.flush();
            std::thread::sleep(Duration::from_millis(5));
        }
        After::Close
    });
    body_arrives_intact(answer, up);
}

#[test]
fn content_length_upstream_body_arrives_intact() {
    let answer = big_answer(1_000_000);
    let a = answer.clone();
    let up = Upstream::start(move |_, s| {
        respond(s, 200, &[("content-type", "application/json")], &a);
        After::KeepAlive
    });
    body_arrives_intact(answer, up);
}

#[test]
fn paced_mock_stream_reaches_the_client_event_by_event() {
    // 10 tokens at 20/s: about half a second from the first token to the last.
    let body = "[[backend]]\nname = \"paced\"\nkind = \"mock\"\ncompletion_tokens = 10\n\
                tokens_per_second = 20\n\n\
                [[deployment]]\nname = \"paced\"\nbackends = [{ backend = \"paced\" }]\n";
    let s = Launch::new(body).start();
    let mut c = s.connect();
    let req = serde_json::to_vec(&chat_body(Some("paced"), true)).unwrap();
    let (head, mut sse) = c.stream(
        "POST",
        "/v1/chat/completions",
        &[("Content-Type", "application/json")],
        &req,
    );
    assert_eq!(head.status(), 200);
    let mut stamps = Vec::new();
    while let Some(e) = sse.next_event() {
        stamps.push((std::time::Instant::now(), e));
    }
    assert_eq!(
        stamps.last().and_then(|(_, e)| event_data(e)),
        Some("[DONE]")
    );
    let first_content = stamps
        .iter()
        .find(|(_, e)| e.contains("\"content\":\"") && !e.contains("\"content\":\"\""))
        .map(|(t, _)| *t)
        .expect("a content event");
    let spread = stamps.last().unwrap().0 - first_content;
    assert!(
        spread >= Duration::from_millis(250),
        "events arrived together ({spread:?} from first content to [DONE]): buffered"
    );
}

#[test]
fn a_stalled_stream_is_ended_after_stream_idle() {
    let up = Upstream::start(|_, s: &mut TcpStream| {
        let _ = s.write_all(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n",
        );
        let _ = write_chunk(s, sse_chunk("first").as_bytes());
        std::thread::sleep(Duration::from_secs(6));
        let _ = write_chunk(s, b"data: [DONE]\n\n");
        let _ = write_chunk(s, b"");
        After::Close
    });
    let s = Launch::new(&openai_backend_body(&up.url(), "chat"))
        .server("[server.timeouts]\nstream_idle = \"1s\"")
        .start();
    let mut c = s.connect();
    let req = serde_json::to_vec(&chat_body(Some("chat"), true)).unwrap();
    let (head, mut sse) = c.stream(
        "POST",
        "/v1/chat/completions",
        &[("Content-Type", "application/json")],
        &req,
    );
    assert_eq!(head.status(), 200);
    assert!(sse.next_event().expect("first event").contains("\"first\""));
    let t0 = std::time::Instant::now();
    // The stream ends with an error event (so no client takes it as complete) and a clean
    // last chunk, then the connection closes.
    let error = sse.error_end();
    assert_eq!(error["code"], "upstream_timeout", "{error}");
    assert_eq!(error["type"], "server_error", "{error}");
    drop(sse);
    assert!(
        t0.elapsed() >= Duration::from_millis(500),
        "ended too early: {:?}",
        t0.elapsed()
    );
    assert!(
        c.closed_within(Duration::from_secs(4)),
        "the connection stays open after a broken stream"
    );
}

#[test]
fn client_gone_mid_stream_leaves_the_upstream_pool_clean() {
    // Streams get a slow endless-ish SSE answer; plain requests get JSON.
    let up = Upstream::start(|r, s: &mut TcpStream| {
        if r.json()["stream"] == true {
            let _ = s.write_all(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n",
            );
            for i in 0..30 {
                if write_chunk(s, sse_chunk(&format!("e{i}")).as_bytes()).is_err() {
                    return After::Close;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = write_chunk(s, b"data: [DONE]\n\n");
            let _ = write_chunk(s, b"");
            After::KeepAlive
        } else {
            respond(
                s,
                200,
                &[("content-type", "application/json")],
                &serde_json::to_vec(&upstream_chat_answer("plain")).unwrap(),
            );
            After::KeepAlive
        }
    });
    let s = Launch::new(&openai_backend_body(&up.url(), "chat"))
        .workers(1)
        .start();
    {
        let mut c = s.connect();
        let req = serde_json::to_vec(&chat_body(Some("chat"), true)).unwrap();
        let (head, mut sse) = c.stream(
            "POST",
            "/v1/chat/completions",
            &[("Content-Type", "application/json")],
            &req,
        );
        assert_eq!(head.status(), 200);
        assert!(sse.next_event().unwrap().contains("\"e0\""));
        // The client hangs up mid-stream.
    }
    std::thread::sleep(Duration::from_millis(300));
    for _ in 0..5 {
        let resp = s.post_json("/v1/chat/completions", &chat_body(Some("chat"), false));
        assert_eq!(resp.status, 200, "{}", resp.text());
        assert_eq!(
            resp.json(),
            upstream_chat_answer("plain"),
            "stale stream bytes leaked"
        );
    }
}

/// A client that stops reading is cut off after `server.timeouts.send` (like nginx's
/// `send_timeout`), instead of holding its worker's task and upstream connection forever: the
/// upstream streams as fast as it can for up to 60 s, the client reads nothing for 3 s, then
/// what Sluice had left in the socket ends in a close, never in an endless stream.
#[test]
fn a_client_that_stops_reading_is_cut_off_after_send() {
    let up = Upstream::start(|_, s: &mut TcpStream| {
        let _ = s.write_all(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n",
        );
        let event = sse_chunk(&"x".repeat(16 * 1024));
        let t0 = std::time::Instant::now();
        // Until Sluice lets go of the connection (or a minute, bounding the test).
        while t0.elapsed() < Duration::from_secs(60) && write_chunk(s, event.as_bytes()).is_ok() {}
        After::Close
    });
    let s = Launch::new(&openai_backend_body(&up.url(), "chat"))
        .server("[server.timeouts]\nsend = \"1s\"")
        .start();
    let mut c = s.connect();
    let bytes = serde_json::to_vec(&chat_body(Some("chat"), true)).unwrap();
    c.send(&request_bytes(
        "POST",
        "/v1/chat/completions",
        &[("Content-Type", "application/json")],
        &bytes,
    ));
    std::thread::sleep(Duration::from_secs(3));
    c.set_read_timeout(Duration::from_secs(2));
    let t0 = std::time::Instant::now();
    let mut total = 0usize;
    let mut buf = vec![0u8; 64 * 1024];
    let ended = loop {
        if t0.elapsed() > Duration::from_secs(10) {
            break false;
        }
        match std::io::Read::read(c.raw(), &mut buf) {
            Ok(0) => break true,
            Ok(n) => total += n,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
            // Silence with the connection open is not an end either.
            Err(_) => break false,
        }
    };
    assert!(
        ended,
        "not closed after {total} bytes: the stalled client was not cut off"
    );
    assert!(
        total > 0,
        "the answer had started before the client stalled"
    );
    // The gateway still serves.
    let resp = s.post_json("/v1/models", &serde_json::json!({}));
    assert!(resp.status < 500, "{}", resp.text());
}
