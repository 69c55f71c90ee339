//! Whole-process tests of streaming in the production configuration: a token-limited
//! deployment and a client that did not ask for usage, so Sluice asks the backend for it and
//! filters the usage chunk out event by event. Every event is gated — the scripted backend
//! sends the next one only once the client has received the last — so buffering or
//! coalescing anywhere on the way (the usage filter, the re-chunking of a Content-Length or
//! close-delimited answer, reads split mid-event) stalls the stream and fails the test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::Write;
use std::net::TcpStream;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Mutex;
use std::time::Duration;

use serde_json::json;
use support::*;

const KEY: &str = "test-key-sse-gated";
const QUOTA: i64 = 1_000_000;
/// The usage the backend reports when asked.
const USAGE: i64 = 10;
/// How long the backend waits for the client to have an event before it gives up.
const GATE: Duration = Duration::from_secs(10);
const WORDS: [&str; 5] = ["one", " two", " three", " four", " five"];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wire {
    Chunked,
    Length,
    Close,
}

/// The events the backend streams, each line ended by `end` (LF, CRLF or a lone CR: the
/// SSE spec allows all three): one per word, the finish chunk, the usage chunk when
/// `stream_options.include_usage` was asked for, `[DONE]`.
fn events(include_usage: bool, end: &str) -> Vec<String> {
    lf_events(include_usage)
        .into_iter()
        .map(|e| e.replace('\n', end))
        .collect()
}

fn lf_events(include_usage: bool) -> Vec<String> {
    let mut out: Vec<String> = WORDS.iter().map(|w| sse_chunk(w)).collect();
    let finish = json!({
        "id": "chatcmpl-stream", "object": "chat.completion.chunk", "created": 1,
        "model": "upstream-model",
        "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]
    });
    out.push(format!("data: {finish}\n\n"));
    if include_usage {
        let usage = json!({
            "id": "chatcmpl-stream", "object": "chat.completion.chunk", "created": 1,
            "model": "upstream-model", "choices": [],
            "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": USAGE}
        });
        out.push(format!("data: {usage}\n\n"));
    }
    out.push("data: [DONE]\n\n".to_string());
    out
}

/// A backend streaming [`events`] with line ends `end`, framed as `wire`, each word's event
/// written (byte by byte when `bytewise`) and then held until the test says the client has
/// it.
fn gated_backend(wire: Wire, bytewise: bool, end: &'static str, gate: Receiver<()>) -> Upstream {
    let gate = Mutex::new(gate);
    Upstream::start(move |r, s: &mut TcpStream| {
        let _ = s.set_nodelay(true);
        let asked = r.json()["stream_options"]["include_usage"] == json!(true);
        let events = events(asked, end);
        let framing = match wire {
            Wire::Chunked => "transfer-encoding: chunked\r\n".to_string(),
            Wire::Length => format!("content-length: {}\r\n", events.concat().len()),
            Wire::Close => "connection: close\r\n".to_string(),
        };
        let head = format!("HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n{framing}\r\n");
        if s.write_all(head.as_bytes()).is_err() {
            return After::Close;
        }
        let send = |s: &mut TcpStream, bytes: &[u8]| -> std::io::Result<()> {
            let mut framed = Vec::new();
            if wire == Wire::Chunked {
                framed.extend_from_slice(format!("{:x}\r\n", bytes.len()).as_bytes());
                framed.extend_from_slice(bytes);
                framed.extend_from_slice(b"\r\n");
            } else {
                framed.extend_from_slice(bytes);
            }
            if bytewise {
                for b in framed {
                    s.write_all(&[b])?;
                    s.flush()?;
                }
                Ok(())
            } else {
                s.write_all(&framed).and_then(|()| s.flush())
            }
        };
        for (i, event) in events.iter().enumerate() {
            if send(s, event.as_bytes()).is_err() {
                return After::Close;
            }
            if i < WORDS.len() && gate.lock().unwrap().recv_timeout(GATE).is_err() {
                // The client never got this event: it was held back somewhere.
                return After::Close;
            }
        }
        match wire {
            Wire::Chunked => {
                let _ = s.write_all(b"0\r\n\r\n");
                After::KeepAlive
            }
            Wire::Length => After::KeepAlive,
            Wire::Close => After::Close,
        }
    })
}

fn start(up: &Upstream) -> Sluice {
    let mut body = format!(
        "{}tokens = {{ estimator = \"heuristic\" }}\n",
        openai_backend_body(&up.url(), "gpt-4o")
    );
    body.push_str(&product(
        "p",
        &format!(r#"limits = [{{ unit = "tokens", quota = {QUOTA}, per = "day" }}]"#),
    ));
    body.push_str(&subscription("team", "p", &[KEY]));
    Launch::new(&body).start()
}

/// One gated stream with line ends `end`: every word's event reaches the client, byte for
/// byte as the backend sent it, while the backend holds the next; the usage chunk Sluice
/// asked for never does; the stream ends with the finish chunk and `[DONE]`, exactly.
/// Returns the answer's `x-ratelimit-remaining-tokens`.
fn one_stream(s: &Sluice, gate: &Sender<()>, wire: Wire, end: &str) -> i64 {
    let mut c = s.connect();
    c.set_read_timeout(Duration::from_secs(5));
    let body = serde_json::to_vec(&chat_body(Some("gpt-4o"), true)).unwrap();
    let (head, mut sse) = c.stream(
        "POST",
        "/v1/chat/completions",
        &[
            ("Content-Type", "application/json"),
            ("api-key", KEY),
            ("Connection", "close"),
        ],
        &body,
    );
    assert_eq!(head.status(), 200, "{wire:?} {end:?}: {head:?}");
    if wire != Wire::Chunked {
        assert_eq!(
            head.header("transfer-encoding"),
            Some("chunked"),
            "{wire:?}: the filtered answer is re-chunked"
        );
        assert!(head.header("content-length").is_none());
    }
    let sent = events(false, end);
    let blank = end.repeat(2);
    for (word, want) in WORDS.iter().zip(&sent) {
        let event = sse
            .next_raw(blank.as_bytes())
            .unwrap_or_else(|| panic!("{wire:?} {end:?}: no event for {word:?}: held back"));
        assert_eq!(
            String::from_utf8(event).unwrap(),
            *want,
            "{wire:?} {end:?}: byte for byte"
        );
        gate.send(()).unwrap();
    }
    let mut rest = Vec::new();
    while let Some(bytes) = sse.next_raw(blank.as_bytes()) {
        rest.extend(bytes);
        assert!(rest.len() < 1 << 20, "endless event stream");
    }
    assert_eq!(
        String::from_utf8(rest).unwrap(),
        sent[WORDS.len()..].concat(),
        "{wire:?} {end:?}: the finish chunk and [DONE] only"
    );
    wait_settled(&mut c);
    head.header("x-ratelimit-remaining-tokens")
        .unwrap()
        .parse()
        .unwrap()
}

/// Two identical gated streams: each event passes on its own, the usage chunk is dropped,
/// and the first stream is charged exactly its reported usage (the difference of the two
/// answers' `remaining`, whose reservations are equal).
fn gated_streams(wire: Wire, bytewise: bool, end: &'static str) {
    let (gate, rx) = channel();
    let up = gated_backend(wire, bytewise, end, rx);
    let s = start(&up);
    let first = one_stream(&s, &gate, wire, end);
    let second = one_stream(&s, &gate, wire, end);
    assert_eq!(
        first - second,
        USAGE,
        "{wire:?} {end:?}: charged the reported usage"
    );
    for r in up.requests() {
        assert_eq!(
            r.json()["stream_options"]["include_usage"],
            json!(true),
            "Sluice asked for the usage"
        );
    }
}

#[test]
fn a_chunked_stream_passes_event_by_event_with_the_usage_filter_on() {
    gated_streams(Wire::Chunked, false, "\n");
}

#[test]
fn a_content_length_stream_is_rechunked_event_by_event_with_the_usage_filter_on() {
    gated_streams(Wire::Length, false, "\n");
}

#[test]
fn a_close_delimited_stream_is_rechunked_event_by_event_with_the_usage_filter_on() {
    gated_streams(Wire::Close, false, "\n");
}

/// Every event split across many upstream reads on purpose: the backend writes it a byte
/// at a time (no Nagle), and the filter still passes each event as soon as it is whole.
#[test]
fn events_written_byte_by_byte_pass_event_by_event_on_every_framing() {
    for wire in [Wire::Chunked, Wire::Length, Wire::Close] {
        gated_streams(wire, true, "\n");
    }
}

/// Lines ended by a lone CR (or CRLF, its CR and LF arriving in separate reads): each event
/// still passes as soon as its blank line is whole, byte for byte, and the usage chunk is
/// dropped and charged exactly — nothing waits for an LF that never comes.
#[test]
fn cr_and_crlf_streams_pass_event_by_event_with_the_usage_filter_on() {
    for end in ["\r", "\r\n"] {
        gated_streams(Wire::Chunked, false, end);
        gated_streams(Wire::Close, true, end);
    }
}
