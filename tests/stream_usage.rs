//! Whole-process tests of issue 8, item 5: Sluice adds `stream_options.include_usage` to a
//! streamed request only for a backend that accepts it (by kind, Azure `api-version`, or the
//! backend's `stream_options` setting), decided per failover attempt; a stream that carries
//! no usage is counted as it passes with the deployment's tokenizer and charged the prompt
//! estimate plus that count.
//!
//! The scripted backend behaves as Azure does: an old `api-version` answers a body with
//! `stream_options` 400 "Unrecognized request argument supplied: stream_options"; otherwise
//! it streams exactly the events a test gives, plus the usage chunk only when asked for.
//! What a request was charged is read from `x-ratelimit-remaining-tokens` under a token quota
//! (a fixed window, no refill): two identical requests A then B give remaining(A) −
//! remaining(B) = charge(A). The prompt estimate is A's reservation less its `max_tokens` ×
//! `n`; completion counts are computed here with the same o200k tokenizer, per delta.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use serde_json::{json, Value};
use sluice::tokens::{Estimator, Family};
use support::*;

const KEY: &str = "test-key-stream-usage";
const QUOTA: i64 = 1_000_000;
/// The total the scripted backend reports in its usage chunk.
const UP_USAGE: i64 = 4242;
const OLD: &str = "2024-06-01";
const NEW: &str = "2024-10-21";

/// The deployment's tokenizer, as the tests count.
const BPE: Estimator = Estimator::Bpe(Family::O200k);

/// One chat chunk with `choices` (a list of choice objects).
fn chunk(choices: Value) -> Value {
    json!({
        "id": "chatcmpl-s", "object": "chat.completion.chunk", "created": 1,
        "model": "gpt-4o", "system_fingerprint": "fp_1", "choices": choices
    })
}

fn delta(index: u32, delta: Value) -> Value {
    json!({"index": index, "delta": delta, "logprobs": null, "finish_reason": null})
}

fn finish(index: u32) -> Value {
    json!({"index": index, "delta": {}, "logprobs": null, "finish_reason": "stop"})
}

/// A plain answer: the role chunk, three pieces of text, the finish chunk.
fn text_events() -> Vec<Value> {
    vec![
        chunk(json!([delta(
            0,
            json!({"role": "assistant", "content": ""})
        )])),
        chunk(json!([delta(0, json!({"content": "Tokens refill"}))])),
        chunk(json!([delta(0, json!({"content": " at a steady rate,"}))])),
        chunk(json!([delta(
            0,
            json!({"content": " and each request spends some."})
        )])),
        chunk(json!([finish(0)])),
    ]
}

/// What the scripted backend does per request.
#[derive(Clone)]
struct Script {
    /// The chunks of a stream (each sent as one `data:` event).
    events: Vec<Value>,
    /// Answer 429 to this many requests first.
    refuse_first: usize,
}

/// The scripted backend: old api-versions refuse `stream_options` (as Azure does), the
/// usage chunk comes only when asked for. Every answer is chunked SSE.
fn backend(script: Script) -> Upstream {
    let seen = std::sync::atomic::AtomicUsize::new(0);
    Upstream::start(move |r, s: &mut TcpStream| {
        if seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < script.refuse_first {
            let body = br#"{"error":{"code":"429","message":"Rate limit reached."}}"#;
            respond(
                s,
                429,
                &[("content-type", "application/json"), ("retry-after", "30")],
                body,
            );
            return After::KeepAlive;
        }
        let target = r.head.target().to_string();
        let old = target.contains(&format!("api-version={OLD}"));
        let req = r.json();
        if old && req.get("stream_options").is_some() {
            let body = br#"{"error":{"code":null,"message":"Unrecognized request argument supplied: stream_options","param":null,"type":"invalid_request_error"}}"#;
            respond(s, 400, &[("content-type", "application/json")], body);
            return After::KeepAlive;
        }
        let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
                    transfer-encoding: chunked\r\n\r\n";
        let _ = s.write_all(head.as_bytes());
        for event in &script.events {
            let _ = write_chunk(s, format!("data: {event}\n\n").as_bytes());
        }
        if req["stream_options"]["include_usage"] == json!(true) {
            let mut usage = chunk(json!([]));
            usage["usage"] =
                json!({"prompt_tokens": 40, "completion_tokens": 2, "total_tokens": UP_USAGE});
            let _ = write_chunk(s, format!("data: {usage}\n\n").as_bytes());
        }
        let _ = write_chunk(s, b"data: [DONE]\n\n");
        let _ = write_chunk(s, b"");
        After::KeepAlive
    })
}

/// `[[backend]]` lines of an Azure backend at `url` with `api_version` and `extra` lines.
fn azure(name: &str, url: &str, api_version: &str, extra: &str) -> String {
    format!(
        "\n[[backend]]\nname = \"{name}\"\nkind = \"azure\"\nurl = \"{url}\"\ndeployment = \"gpt-4o\"\napi_version = \"{api_version}\"\n{extra}\n"
    )
}

fn openai(name: &str, url: &str, extra: &str) -> String {
    format!("\n[[backend]]\nname = \"{name}\"\nkind = \"openai\"\nurl = \"{url}\"\n{extra}\n")
}

/// Sluice with `backends` serving deployment `gpt-4o` (o200k BPE; `tokens_extra` merged),
/// the pool in the order given (priorities 0, 1, …: the first is tried first), a token quota.
fn start(backends: &str, names: &[&str], tokens_extra: &str) -> Sluice {
    let pool: Vec<String> = names
        .iter()
        .enumerate()
        .map(|(i, n)| format!("{{ backend = \"{n}\", priority = {i} }}"))
        .collect();
    let mut body = String::from(backends);
    body.push_str(&format!(
        "\n[[deployment]]\nname = \"gpt-4o\"\nbackends = [{}]\ntokens = {{ estimator = \"bpe\", family = \"o200k\"{tokens_extra} }}\n",
        pool.join(", ")
    ));
    body.push_str(&product(
        "p",
        &format!(r#"limits = [{{ unit = "tokens", quota = {QUOTA}, per = "day" }}]"#),
    ));
    body.push_str(&subscription("team", "p", &[KEY]));
    Launch::new(&body).start()
}

/// A streamed chat (max_tokens 100) with `extra` fields merged in.
fn stream_body(extra: Value) -> Value {
    let mut body = chat_body(Some("gpt-4o"), true);
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

/// The client's view of one streamed request: its head and its events' data (`[DONE]`
/// included).
struct Streamed {
    head: Head,
    datas: Vec<String>,
}

impl Streamed {
    fn remaining(&self) -> i64 {
        self.head
            .header("x-ratelimit-remaining-tokens")
            .unwrap_or_else(|| panic!("no remaining-tokens: {:?}", self.head.headers))
            .parse()
            .unwrap()
    }

    /// The JSON chunks (without `[DONE]`).
    fn chunks(&self) -> Vec<Value> {
        self.datas
            .iter()
            .filter(|d| d.as_str() != "[DONE]")
            .map(|d| serde_json::from_str(d).unwrap())
            .collect()
    }
}

/// Sends a streamed chat; asserts 200 and an SSE answer ending with `[DONE]`. Returns once
/// Sluice has booked its charge and closed the connection ([`wait_settled`]).
fn stream(s: &Sluice, body: &Value) -> Streamed {
    let mut c = s.connect();
    let bytes = serde_json::to_vec(body).unwrap();
    let (head, mut sse) = c.stream(
        "POST",
        "/v1/chat/completions",
        &[
            ("Content-Type", "application/json"),
            ("api-key", KEY),
            ("Connection", "close"),
        ],
        &bytes,
    );
    assert_eq!(head.status(), 200, "{head:?}");
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
    wait_settled(&mut c);
    Streamed { head, datas }
}

/// Two identical streams A and B, the first requests of a fresh Sluice: (A's prompt
/// estimate, A's charge, A). `cap` is A's max_tokens × n, so its reservation less `cap` is
/// its prompt estimate.
fn charge_of(s: &Sluice, body: &Value, cap: i64) -> (i64, i64, Streamed) {
    let a = stream(s, body);
    let b = stream(s, body);
    let prompt = QUOTA - a.remaining() - cap;
    (prompt, a.remaining() - b.remaining(), a)
}

/// The tokens Sluice counts for `chunks`: every choice's content, refusal, reasoning
/// (`reasoning_content`, `reasoning`), audio transcript, tool-call name and arguments,
/// function_call name and arguments, completions text, each piece apart.
fn counted(chunks: &[Value]) -> i64 {
    let mut pieces: Vec<String> = Vec::new();
    for c in chunks {
        for choice in c["choices"].as_array().into_iter().flatten() {
            if let Some(t) = choice["text"].as_str() {
                pieces.push(t.into());
            }
            let d = &choice["delta"];
            for key in ["content", "refusal", "reasoning_content", "reasoning"] {
                if let Some(t) = d[key].as_str() {
                    pieces.push(t.into());
                }
            }
            if let Some(t) = d["audio"]["transcript"].as_str() {
                pieces.push(t.into());
            }
            let mut functions: Vec<&Value> = vec![&d["function_call"]];
            for call in d["tool_calls"].as_array().into_iter().flatten() {
                functions.push(&call["function"]);
            }
            for f in functions {
                for key in ["name", "arguments"] {
                    if let Some(t) = f[key].as_str() {
                        pieces.push(t.into());
                    }
                }
            }
        }
    }
    pieces.iter().map(|p| BPE.count_text(p) as i64).sum()
}

fn assert_no_usage(chunks: &[Value]) {
    for c in chunks {
        assert!(c["usage"].is_null(), "usage reached the client: {c}");
        assert!(
            c["choices"].as_array().is_some_and(|a| !a.is_empty()),
            "a usage-only chunk reached the client: {c}"
        );
    }
}

fn has_stream_options(r: &Recorded) -> bool {
    let body = String::from_utf8_lossy(&r.body);
    body.contains("stream_options")
}

/// Issue 8, item 5, the example: an Azure backend on api-version 2024-06-01, a token limit,
/// a streaming client without stream_options. The upstream body carries no stream_options,
/// the client gets 200 and every event, and the charge is the prompt estimate plus the
/// completion counted with the deployment's tokenizer.
#[test]
fn old_azure_api_version_gets_no_stream_options_and_the_stream_is_counted() {
    let up = backend(Script {
        events: text_events(),
        refuse_first: 0,
    });
    let s = start(&azure("old", &up.url(), OLD, ""), &["old"], "");
    let body = stream_body(json!({}));
    let (prompt, charge, a) = charge_of(&s, &body, 100);
    let sent: Vec<String> = text_events().iter().map(|e| e.to_string()).collect();
    let mut expected_datas = sent.clone();
    expected_datas.push("[DONE]".into());
    assert_eq!(a.datas, expected_datas, "every event, byte for byte");
    let completion = counted(&a.chunks());
    assert_eq!(
        completion,
        [
            "Tokens refill",
            " at a steady rate,",
            " and each request spends some."
        ]
        .iter()
        .map(|t| BPE.count_text(t) as i64)
        .sum::<i64>()
    );
    assert!(prompt > 0 && completion > 5, "{prompt} {completion}");
    assert_eq!(charge, prompt + completion, "prompt estimate + counted");
    let reqs = up.requests();
    assert_eq!(reqs.len(), 2);
    for r in &reqs {
        assert!(
            !has_stream_options(r),
            "no stream_options to api-version {OLD}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert!(r.head.target().contains("api-version=2024-06-01"));
    }
    assert!(
        s.wait_log(
            "stream carried no usage: charged the prompt estimate plus the completion counted by Sluice",
            Duration::from_secs(5)
        ),
        "{}",
        s.log()
    );
}

/// A new api-version takes the field: Sluice adds it, charges the reported usage and keeps
/// the usage chunk from the client.
#[test]
fn new_azure_api_version_is_asked_for_usage_and_the_chunk_is_dropped() {
    let up = backend(Script {
        events: text_events(),
        refuse_first: 0,
    });
    let s = start(&azure("new", &up.url(), NEW, ""), &["new"], "");
    let (_, charge, a) = charge_of(&s, &stream_body(json!({})), 100);
    assert_no_usage(&a.chunks());
    assert_eq!(a.chunks().len(), text_events().len());
    assert_eq!(charge, UP_USAGE, "the reported usage");
    for r in up.requests() {
        assert_eq!(r.json()["stream_options"], json!({"include_usage": true}));
    }
}

/// OpenAI-kind backends accept the field (auto).
#[test]
fn openai_backends_are_asked_for_usage() {
    let up = backend(Script {
        events: text_events(),
        refuse_first: 0,
    });
    let s = start(&openai("oai", &up.url(), ""), &["oai"], "");
    let (_, charge, a) = charge_of(&s, &stream_body(json!({})), 100);
    assert_no_usage(&a.chunks());
    assert_eq!(charge, UP_USAGE);
    for r in up.requests() {
        assert_eq!(r.json()["stream_options"]["include_usage"], json!(true));
    }
}

/// The per-backend setting overrides the kind's default both ways: an old Azure version
/// declared `supported` is asked (and, here, refuses: the setting is the operator's word),
/// an OpenAI backend declared `unsupported` is not asked and its stream is counted.
#[test]
fn the_per_backend_setting_overrides_auto_both_ways() {
    let up = backend(Script {
        events: text_events(),
        refuse_first: 0,
    });
    let s = start(
        &openai("oai", &up.url(), "stream_options = \"unsupported\""),
        &["oai"],
        "",
    );
    let (prompt, charge, a) = charge_of(&s, &stream_body(json!({})), 100);
    assert_eq!(charge, prompt + counted(&a.chunks()));
    for r in up.requests() {
        assert!(!has_stream_options(&r));
    }
    drop(s);

    let up = backend(Script {
        events: text_events(),
        refuse_first: 0,
    });
    let s = start(
        &azure(
            "new-ish",
            &up.url(),
            NEW,
            "stream_options = \"unsupported\"",
        ),
        &["new-ish"],
        "",
    );
    let (prompt, charge, a) = charge_of(&s, &stream_body(json!({})), 100);
    assert_eq!(charge, prompt + counted(&a.chunks()));
    assert!(up.requests().iter().all(|r| !has_stream_options(r)));
    drop(s);

    let up = backend(Script {
        events: text_events(),
        refuse_first: 0,
    });
    let s = start(
        &azure("forced", &up.url(), OLD, "stream_options = \"supported\""),
        &["forced"],
        "",
    );
    let resp = chat_as(&s, KEY, &stream_body(json!({})));
    assert_eq!(resp.status, 400, "{}", resp.text());
    assert!(resp.text().contains("Unrecognized request argument"));
    assert_eq!(
        up.requests()[0].json()["stream_options"]["include_usage"],
        json!(true)
    );
}

/// Failover: the first backend (new api-version) answers 429 to the request that carried
/// stream_options; the second attempt goes to an old-version backend with the client's own
/// body (no stream_options), succeeds, and is counted — the dropping of a usage chunk follows
/// the attempt that was relayed.
#[test]
fn failover_to_an_old_version_sends_the_second_attempt_without_stream_options() {
    let first = backend(Script {
        events: text_events(),
        refuse_first: usize::MAX,
    });
    let second = backend(Script {
        events: text_events(),
        refuse_first: 0,
    });
    let backends = format!(
        "{}{}",
        azure("new", &first.url(), NEW, ""),
        azure("old", &second.url(), OLD, "")
    );
    let s = start(&backends, &["new", "old"], "");
    let body = stream_body(json!({}));
    // A fails over; B finds the first backend cooling down and goes to the second directly.
    let (prompt, charge, a) = charge_of(&s, &body, 100);
    assert_eq!(a.chunks().len(), text_events().len());
    assert_eq!(
        charge,
        prompt + counted(&a.chunks()),
        "counted, not the estimate"
    );
    let firsts = first.requests();
    assert_eq!(firsts.len(), 1);
    assert_eq!(
        firsts[0].json()["stream_options"]["include_usage"],
        json!(true)
    );
    let seconds = second.requests();
    assert_eq!(seconds.len(), 2);
    assert!(
        !has_stream_options(&seconds[0]),
        "{}",
        String::from_utf8_lossy(&seconds[0].body)
    );
    let mut expected = body.clone();
    expected["model"] = json!("gpt-4o");
    assert_eq!(seconds[0].json(), expected, "the client's body, as sent");
    assert!(
        s.wait_log(
            "stream carried no usage: charged the prompt estimate plus the completion counted by Sluice",
            Duration::from_secs(5)
        ),
        "{}",
        s.log()
    );
}

/// Failover the other way: an old-version backend answers 429 to the client's body; the
/// second attempt, to a new version, carries stream_options, its usage chunk is dropped and
/// its reported usage charged.
#[test]
fn failover_to_a_new_version_asks_for_usage_and_drops_the_chunk() {
    let first = backend(Script {
        events: text_events(),
        refuse_first: usize::MAX,
    });
    let second = backend(Script {
        events: text_events(),
        refuse_first: 0,
    });
    let backends = format!(
        "{}{}",
        azure("old", &first.url(), OLD, ""),
        azure("new", &second.url(), NEW, "")
    );
    let s = start(&backends, &["old", "new"], "");
    let (_, charge, a) = charge_of(&s, &stream_body(json!({})), 100);
    assert_no_usage(&a.chunks());
    assert_eq!(a.chunks().len(), text_events().len());
    assert_eq!(charge, UP_USAGE);
    let firsts = first.requests();
    assert_eq!(firsts.len(), 1);
    assert!(!has_stream_options(&firsts[0]));
    for r in second.requests() {
        assert_eq!(r.json()["stream_options"]["include_usage"], json!(true));
    }
}

/// A client that asked for include_usage on an old api-version: its body is forwarded
/// unchanged (what was authorized is what is sent) and it gets the backend's 400.
#[test]
fn a_client_asking_for_usage_on_an_old_version_is_forwarded_unchanged() {
    let up = backend(Script {
        events: text_events(),
        refuse_first: 0,
    });
    let s = start(&azure("old", &up.url(), OLD, ""), &["old"], "");
    let body = stream_body(json!({"stream_options": {"include_usage": true}}));
    let bytes = serde_json::to_vec(&body).unwrap();
    let resp = s.request(
        "POST",
        "/v1/chat/completions",
        &[("Content-Type", "application/json"), ("api-key", KEY)],
        &bytes,
    );
    assert_eq!(resp.status, 400, "{}", resp.text());
    assert!(resp.text().contains("stream_options"));
    let reqs = up.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].body, bytes, "forwarded byte for byte");
}

/// A client that asked for include_usage on a new version gets the usage chunk, and is
/// charged the reported usage (not a count).
#[test]
fn a_client_asking_for_usage_gets_it_and_is_charged_it() {
    let up = backend(Script {
        events: text_events(),
        refuse_first: 0,
    });
    let s = start(&azure("new", &up.url(), NEW, ""), &["new"], "");
    let body = stream_body(json!({"stream_options": {"include_usage": true}}));
    let (_, charge, a) = charge_of(&s, &body, 100);
    assert_eq!(charge, UP_USAGE);
    let last = a.chunks().pop().unwrap();
    assert_eq!(last["usage"]["total_tokens"], json!(UP_USAGE));
}

/// Tool-call streams are counted: names and arguments, and the legacy function_call.
#[test]
fn tool_call_streams_are_counted() {
    let events = vec![
        chunk(json!([delta(
            0,
            json!({"role": "assistant", "content": null, "tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": ""}}]})
        )])),
        chunk(json!([delta(
            0,
            json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"location\": "}}]})
        )])),
        chunk(json!([delta(
            0,
            json!({"tool_calls": [{"index": 0, "function": {"arguments": "\"Paris, France\"}"}}]})
        )])),
        chunk(json!([delta(
            0,
            json!({"function_call": {"name": "lookup_city", "arguments": "{\"q\":\"Paris\"}"}})
        )])),
        chunk(json!([{"index": 0, "delta": {}, "finish_reason": "tool_calls"}])),
    ];
    let up = backend(Script {
        events: events.clone(),
        refuse_first: 0,
    });
    let s = start(&azure("old", &up.url(), OLD, ""), &["old"], "");
    let (prompt, charge, a) = charge_of(&s, &stream_body(json!({})), 100);
    let completion = counted(&a.chunks());
    let by_hand: i64 = [
        "get_weather",
        "{\"location\": ",
        "\"Paris, France\"}",
        "lookup_city",
        "{\"q\":\"Paris\"}",
    ]
    .iter()
    .map(|t| BPE.count_text(t) as i64)
    .sum();
    assert_eq!(completion, by_hand);
    assert_eq!(charge, prompt + completion);
}

/// n = 2: every choice's text is counted.
#[test]
fn every_choice_of_n_2_is_counted() {
    let events = vec![
        chunk(json!([
            delta(0, json!({"role": "assistant", "content": ""})),
            delta(1, json!({"role": "assistant", "content": ""}))
        ])),
        chunk(json!([delta(
            0,
            json!({"content": "First answer, short."})
        )])),
        chunk(json!([delta(
            1,
            json!({"content": "Second answer, a little longer than the first."})
        )])),
        chunk(json!([finish(0), finish(1)])),
    ];
    let up = backend(Script {
        events,
        refuse_first: 0,
    });
    let s = start(&azure("old", &up.url(), OLD, ""), &["old"], "");
    let (prompt, charge, a) = charge_of(&s, &stream_body(json!({"n": 2})), 200);
    let completion = counted(&a.chunks());
    assert_eq!(
        completion,
        (BPE.count_text("First answer, short.")
            + BPE.count_text("Second answer, a little longer than the first.")) as i64
    );
    assert_eq!(charge, prompt + completion);
}

/// Reasoning streamed beside the answer (`reasoning_content`: vLLM, DeepSeek-R1;
/// `reasoning`: OpenRouter) and an audio answer's transcript are counted, for every
/// choice; an audio answer's base64 data is not text and is not counted.
#[test]
fn reasoning_and_audio_transcripts_are_counted() {
    let long = ["Let me think this through, step by step."; 60].concat();
    let events = vec![
        chunk(json!([
            delta(0, json!({"role": "assistant", "reasoning_content": long})),
            delta(1, json!({"role": "assistant", "reasoning": long}))
        ])),
        chunk(json!([
            delta(0, json!({"content": "OK."})),
            delta(
                1,
                json!({"audio": {"id": "audio_1", "transcript": long, "data": "UklGRiQAAABXQVZFZm10IBAAAAABAAEA".repeat(50)}})
            )
        ])),
        chunk(json!([finish(0), finish(1)])),
    ];
    let up = backend(Script {
        events,
        refuse_first: 0,
    });
    let s = start(&azure("old", &up.url(), OLD, ""), &["old"], "");
    let (prompt, charge, a) = charge_of(&s, &stream_body(json!({"n": 2})), 200);
    let by_hand = 3 * BPE.count_text(&long) as i64 + BPE.count_text("OK.") as i64;
    assert_eq!(counted(&a.chunks()), by_hand);
    assert!(by_hand > 3 * 400, "{by_hand}");
    assert_eq!(charge, prompt + by_hand);
}

/// A stream nobody asked for usage (an old api-version: Sluice could not ask, and the
/// client did not) that volunteers one anyway: the usage only ever raises the charge. All
/// zeros beside content and a tiny usage-only chunk are charged the count; a usage above
/// the count is charged as reported.
#[test]
fn usage_nobody_asked_for_never_lowers_the_count() {
    let long = ["A long answer that costs real tokens. "; 50].concat();
    let usage =
        |total: i64| json!({"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": total});
    let mut zeros = chunk(json!([delta(0, json!({"content": long}))]));
    zeros["usage"] = json!({"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0});
    let mut tiny = chunk(json!([]));
    tiny["usage"] = usage(2);
    let mut big = chunk(json!([]));
    big["usage"] = usage(UP_USAGE);
    let cases = [
        (
            "zeros beside content",
            vec![zeros.clone(), chunk(json!([finish(0)]))],
            None,
        ),
        (
            "a tiny usage-only chunk",
            vec![
                chunk(json!([delta(0, json!({"content": long}))])),
                chunk(json!([finish(0)])),
                tiny,
            ],
            None,
        ),
        (
            "a usage above the count",
            vec![zeros, chunk(json!([finish(0)])), big],
            Some(UP_USAGE),
        ),
    ];
    for (name, events, want) in cases {
        let up = backend(Script {
            events,
            refuse_first: 0,
        });
        let s = start(&azure("old", &up.url(), OLD, ""), &["old"], "");
        let (prompt, charge, a) = charge_of(&s, &stream_body(json!({})), 100);
        let count = counted(&a.chunks());
        assert_eq!(count, BPE.count_text(&long) as i64, "{name}");
        assert_eq!(charge, want.unwrap_or(prompt + count), "{name}");
        assert!(
            up.requests().iter().all(|r| !has_stream_options(r)),
            "{name}"
        );
        assert!(
            s.wait_log(
                "stream not asked for usage carried one",
                Duration::from_secs(5)
            ),
            "{name}"
        );
    }
}

/// A deployment with `tokens.stream_usage = false` never asks, even a backend that would
/// take it: its streams are counted.
#[test]
fn stream_usage_off_counts_instead_of_asking() {
    let up = backend(Script {
        events: text_events(),
        refuse_first: 0,
    });
    let s = start(
        &azure("new", &up.url(), NEW, ""),
        &["new"],
        ", stream_usage = false",
    );
    let (prompt, charge, a) = charge_of(&s, &stream_body(json!({})), 100);
    assert_eq!(charge, prompt + counted(&a.chunks()));
    assert!(up.requests().iter().all(|r| !has_stream_options(r)));
}

/// A counted stream cut short (the backend goes away before `[DONE]`) is charged the larger
/// of its reservation and its prompt estimate plus what was counted: a short partial answer
/// keeps the reservation, a partial answer longer than the reservation is charged its count.
#[test]
fn a_counted_stream_cut_short_is_charged_at_least_its_reservation() {
    const LONG: &str = "word ";
    let up = Upstream::start(|r, s: &mut TcpStream| {
        let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
                    transfer-encoding: chunked\r\n\r\n";
        let _ = s.write_all(head.as_bytes());
        let text = if r.json()["max_tokens"] == json!(1) {
            LONG.repeat(300)
        } else {
            "Partial".to_string()
        };
        let _ = write_chunk(s, sse_chunk(&text).as_bytes());
        // The backend goes away mid-stream: no last chunk, no [DONE].
        After::Close
    });
    let s = start(&azure("old", &up.url(), OLD, ""), &["old"], "");
    let send = |body: &Value| -> i64 {
        let bytes = serde_json::to_vec(body).unwrap();
        let mut c = s.connect();
        let (head, mut sse) = c.stream(
            "POST",
            "/v1/chat/completions",
            &[("Content-Type", "application/json"), ("api-key", KEY)],
            &bytes,
        );
        assert_eq!(head.status(), 200);
        let first = sse.next_event().unwrap();
        assert!(first.contains("chat.completion.chunk"), "{first}");
        // The cut stream ends with an error event and a clean end, then the connection
        // closes (Sluice books the charge before it closes).
        assert_eq!(sse.error_end()["code"], "upstream_protocol_error");
        drop(sse);
        assert!(
            c.closed_within(Duration::from_secs(5)),
            "the answer was cut short: the client connection closes"
        );
        head.header("x-ratelimit-remaining-tokens")
            .unwrap()
            .parse()
            .unwrap()
    };
    let short = stream_body(json!({}));
    let r1 = send(&short);
    let r2 = send(&short);
    let reserved = QUOTA - r1;
    assert_eq!(r1 - r2, reserved, "a short partial answer: the reservation");
    assert!(
        s.wait_log("stream without usage cut short", Duration::from_secs(5)),
        "{}",
        s.log()
    );

    let long = stream_body(json!({"max_tokens": 1}));
    let r3 = send(&long);
    let r4 = send(&long);
    let prompt = r2 - r3 - 1;
    let counted = BPE.count_text(&LONG.repeat(300)) as i64;
    assert!(counted > 100, "{counted}");
    assert_eq!(
        r3 - r4,
        prompt + counted,
        "a long partial answer: its count"
    );
}

/// Responses API streams always end with their usage: never rewritten, charged the usage of
/// `response.completed`, even on an old api-version backend.
#[test]
fn responses_streams_are_unaffected() {
    let up = Upstream::start(|_, s: &mut TcpStream| {
        let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
                    transfer-encoding: chunked\r\n\r\n";
        let _ = s.write_all(head.as_bytes());
        let delta = json!({"type": "response.output_text.delta", "delta": "Hello there"});
        let _ = write_chunk(
            s,
            format!("event: response.output_text.delta\ndata: {delta}\n\n").as_bytes(),
        );
        let done = json!({"type": "response.completed", "response": {"id": "resp_1", "status": "completed",
            "usage": {"input_tokens": 10, "output_tokens": 3, "total_tokens": 77}}});
        let _ = write_chunk(
            s,
            format!("event: response.completed\ndata: {done}\n\n").as_bytes(),
        );
        let _ = write_chunk(s, b"");
        After::KeepAlive
    });
    let s = start(&azure("old", &up.url(), OLD, ""), &["old"], "");
    let body =
        json!({"model": "gpt-4o", "input": "Say hello.", "stream": true, "max_output_tokens": 50});
    let bytes = serde_json::to_vec(&body).unwrap();
    let mut remaining = Vec::new();
    for _ in 0..2 {
        let mut c = s.connect();
        let (head, mut sse) = c.stream(
            "POST",
            "/v1/responses",
            &[
                ("Content-Type", "application/json"),
                ("api-key", KEY),
                ("Connection", "close"),
            ],
            &bytes,
        );
        assert_eq!(head.status(), 200, "{head:?}");
        let events = sse.collect_rest();
        assert_eq!(events.len(), 2, "{events:?}");
        wait_settled(&mut c);
        remaining.push(
            head.header("x-ratelimit-remaining-tokens")
                .unwrap()
                .parse::<i64>()
                .unwrap(),
        );
    }
    assert_eq!(remaining[0] - remaining[1], 77, "the reported usage");
    for r in up.requests() {
        let mut expected = body.clone();
        expected["model"] = json!("gpt-4o");
        assert_eq!(r.json(), expected, "not rewritten beyond the model pin");
    }
}
