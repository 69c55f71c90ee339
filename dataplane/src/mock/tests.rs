//! Every answer is parsed back with serde into structs that mirror the OpenAI API, so a
//! shape the SDKs would reject fails here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};

use super::*;

// ---- the API as clients parse it (test-only mirrors) ----

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ChatCompletion {
    id: String,
    object: String,
    created: u64,
    model: String,
    system_fingerprint: String,
    choices: Vec<ChatChoice>,
    usage: ChatUsage,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ChatChoice {
    index: u32,
    message: ChatMessage,
    logprobs: Option<Value>,
    finish_reason: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ChatMessage {
    role: String,
    content: String,
    refusal: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ChatUsage {
    prompt_tokens: u32,
    completion_tokens: u32,
    total_tokens: u32,
    prompt_tokens_details: PromptTokensDetails,
    completion_tokens_details: CompletionTokensDetails,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PromptTokensDetails {
    cached_tokens: u32,
    audio_tokens: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CompletionTokensDetails {
    reasoning_tokens: u32,
    audio_tokens: u32,
    accepted_prediction_tokens: u32,
    rejected_prediction_tokens: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ChatChunk {
    id: String,
    object: String,
    created: u64,
    model: String,
    system_fingerprint: String,
    choices: Vec<ChunkChoice>,
    usage: Option<ChatUsage>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ChunkChoice {
    index: u32,
    delta: Delta,
    logprobs: Option<Value>,
    finish_reason: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Delta {
    role: Option<String>,
    content: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TextCompletion {
    id: String,
    object: String,
    created: u64,
    model: String,
    system_fingerprint: String,
    choices: Vec<TextChoice>,
    usage: Option<ChatUsage>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TextChoice {
    text: String,
    index: u32,
    logprobs: Option<Value>,
    finish_reason: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EmbeddingList {
    object: String,
    data: Vec<Embedding>,
    model: String,
    usage: EmbeddingUsage,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Embedding {
    object: String,
    index: u32,
    embedding: Value,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EmbeddingUsage {
    prompt_tokens: u32,
    total_tokens: u32,
}

#[derive(Debug, Deserialize)]
struct Response {
    id: String,
    object: String,
    created_at: u64,
    status: String,
    incomplete_details: Option<IncompleteDetails>,
    max_output_tokens: Option<u64>,
    model: String,
    output: Vec<OutputItem>,
    usage: Option<ResponseUsage>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct IncompleteDetails {
    reason: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OutputItem {
    id: String,
    #[serde(rename = "type")]
    kind: String,
    status: String,
    role: String,
    content: Vec<OutputText>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OutputText {
    #[serde(rename = "type")]
    kind: String,
    text: String,
    annotations: Vec<Value>,
}

#[derive(Debug, Deserialize)]
struct ResponseUsage {
    input_tokens: u32,
    output_tokens: u32,
    total_tokens: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ResponseEvent {
    #[serde(rename = "type")]
    kind: String,
    sequence_number: u64,
    response: Option<Response>,
    item: Option<OutputItem>,
    item_id: Option<String>,
    output_index: Option<u32>,
    content_index: Option<u32>,
    part: Option<OutputText>,
    delta: Option<String>,
    text: Option<String>,
    logprobs: Option<Vec<Value>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ErrorDetail {
    message: String,
    #[serde(rename = "type")]
    kind: String,
    param: Option<String>,
    code: Option<String>,
}

// ---- helpers ----

const CREATED: u64 = 1_732_612_400;
const SEED: u64 = 0xabc;

fn settings() -> MockSettings {
    MockSettings::default()
}

fn call(settings: &MockSettings, op: Operation, body: &Value) -> MockReply {
    reply(settings, op, body.to_string().as_bytes(), CREATED, SEED)
}

fn json_ok<T: for<'de> Deserialize<'de>>(reply: MockReply) -> (T, Value) {
    match reply {
        MockReply::Json { status, body } => {
            assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
            let raw: Value = serde_json::from_slice(&body).unwrap();
            (serde_json::from_slice(&body).unwrap(), raw)
        }
        MockReply::Stream(_) => panic!("expected a JSON answer"),
    }
}

fn error(reply: MockReply) -> (u16, ErrorDetail) {
    match reply {
        MockReply::Json { status, body } => {
            let raw: Value = serde_json::from_slice(&body).unwrap();
            // SDKs expect all four keys, null or not.
            for key in ["message", "type", "param", "code"] {
                assert!(raw["error"].get(key).is_some(), "{key} missing in {raw}");
            }
            let parsed: ErrorBody = serde_json::from_slice(&body).unwrap();
            (status, parsed.error)
        }
        MockReply::Stream(_) => panic!("expected an error"),
    }
}

/// One SSE event: its `event:` name, if any, and its `data:`.
#[derive(Debug)]
struct Sse {
    event: Option<String>,
    data: String,
}

/// Drains the stream one `next_event` at a time, checking each call appends exactly one
/// well-formed event and `remaining` counts down to zero.
fn drain(mut stream: MockStream) -> Vec<Sse> {
    let mut events = Vec::new();
    let mut out = Vec::new();
    loop {
        let before = stream.remaining();
        let start = out.len();
        if !stream.next_event(&mut out) {
            assert_eq!(before, 0);
            assert_eq!(out.len(), start, "nothing appended after the end");
            break;
        }
        assert_eq!(stream.remaining(), before - 1);
        let text = std::str::from_utf8(&out[start..]).unwrap();
        let body = text
            .strip_suffix("\n\n")
            .expect("event ends with a blank line");
        assert!(!body.contains("\n\n"), "one event per call: {text:?}");
        let mut event = None;
        let mut data = None;
        for line in body.split('\n') {
            if let Some(v) = line.strip_prefix("event: ") {
                event = Some(v.to_owned());
            } else if let Some(v) = line.strip_prefix("data: ") {
                assert!(data.is_none(), "one data line per event");
                data = Some(v.to_owned());
            } else {
                panic!("unexpected line {line:?}");
            }
        }
        events.push(Sse {
            event,
            data: data.expect("a data line"),
        });
    }
    assert!(!stream.next_event(&mut out), "stays finished");
    events
}

fn stream_of(reply: MockReply) -> MockStream {
    match reply {
        MockReply::Stream(s) => s,
        MockReply::Json { status, body } => {
            panic!(
                "expected a stream, got {status} {}",
                String::from_utf8_lossy(&body)
            )
        }
    }
}

/// Checks the stream ends with exactly one `[DONE]` and returns the JSON events before it.
fn until_done(events: Vec<Sse>) -> Vec<Value> {
    let done: Vec<usize> = (0..events.len())
        .filter(|&i| events[i].data == "[DONE]")
        .collect();
    assert_eq!(done, vec![events.len() - 1], "exactly one [DONE], last");
    events[..events.len() - 1]
        .iter()
        .map(|e| {
            assert!(e.event.is_none());
            serde_json::from_str(&e.data).unwrap()
        })
        .collect()
}

fn chat_request() -> Value {
    // shared/fixtures/openai/chat_request.json
    json!({
        "messages": [
            {"role": "system", "content": "You are a concise assistant."},
            {"role": "user", "content": "Explain a token bucket in one sentence."}
        ],
        "max_tokens": 100,
        "temperature": 0.2
    })
}

fn words(s: &str) -> u32 {
    s.split_whitespace().count() as u32
}

fn assert_usage(u: &ChatUsage, prompt: u32, completion: u32) {
    assert_eq!(u.prompt_tokens, prompt);
    assert_eq!(u.completion_tokens, completion);
    assert_eq!(u.total_tokens, prompt + completion);
    assert_eq!(u.prompt_tokens_details.cached_tokens, 0);
    assert_eq!(u.prompt_tokens_details.audio_tokens, 0);
    let d = &u.completion_tokens_details;
    let details = [
        d.reasoning_tokens,
        d.audio_tokens,
        d.accepted_prediction_tokens,
        d.rejected_prediction_tokens,
    ];
    assert_eq!(details, [0; 4]);
}

// ---- settings ----

#[test]
fn default_settings() {
    let s = MockSettings::default();
    assert_eq!(s.latency, Duration::ZERO);
    assert_eq!(s.completion_tokens, 16);
    assert_eq!(s.tokens_per_second, 0.0);
    assert_eq!(s.model, "sluice-mock");
    assert_eq!(s.embedding_dimensions, 8);
}

// ---- chat ----

#[test]
fn chat_matches_the_fixture_shape() {
    let (c, raw): (ChatCompletion, _) = json_ok(call(
        &settings(),
        Operation::ChatCompletions,
        &chat_request(),
    ));
    assert_eq!(c.id, "chatcmpl-mock0000000000000abc");
    assert_eq!(c.object, "chat.completion");
    assert_eq!(c.created, CREATED);
    assert_eq!(c.model, "sluice-mock");
    assert!(c.system_fingerprint.starts_with("fp_"));
    assert_eq!(c.choices.len(), 1);
    let choice = &c.choices[0];
    assert_eq!(choice.index, 0);
    assert_eq!(choice.message.role, "assistant");
    assert_eq!(choice.message.refusal, None);
    assert_eq!(choice.logprobs, None);
    assert_eq!(choice.finish_reason, "stop");
    assert_eq!(words(&choice.message.content), 16);
    assert!(!choice.message.content.starts_with(' '));
    // 28 + 39 characters of content → 17 tokens.
    assert_usage(&c.usage, 17, 16);
    // Present and null, as in the fixture.
    assert!(raw["choices"][0]["logprobs"].is_null());
    assert!(raw["choices"][0]["message"]["refusal"].is_null());
}

#[test]
fn chat_echoes_the_model_and_is_deterministic() {
    let mut req = chat_request();
    req["model"] = json!("gpt-4o");
    let s = settings();
    let (a, _): (ChatCompletion, _) = json_ok(call(&s, Operation::ChatCompletions, &req));
    let (b, _): (ChatCompletion, _) = json_ok(call(&s, Operation::ChatCompletions, &req));
    assert_eq!(a.model, "gpt-4o");
    assert_eq!(a.choices[0].message.content, b.choices[0].message.content);
    let other = MockSettings {
        model: "gpt-4o-mock".into(),
        ..settings()
    };
    let (c, _): (ChatCompletion, _) =
        json_ok(call(&other, Operation::ChatCompletions, &chat_request()));
    assert_eq!(c.model, "gpt-4o-mock");
}

#[test]
fn chat_prompt_estimate_counts_text_parts_and_is_at_least_one() {
    let req = json!({"messages": [
        {"role": "user", "content": [
            {"type": "text", "text": "12345678"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAAAAAAAAAA"}}
        ]},
        {"role": "assistant", "content": null, "tool_calls": []}
    ]});
    let (c, _): (ChatCompletion, _) = json_ok(call(&settings(), Operation::ChatCompletions, &req));
    assert_eq!(c.usage.prompt_tokens, 2);
    let req = json!({"messages": [{"role": "user", "content": ""}]});
    let (c, _): (ChatCompletion, _) = json_ok(call(&settings(), Operation::ChatCompletions, &req));
    assert_eq!(c.usage.prompt_tokens, 1);
}

#[test]
fn max_tokens_caps_and_sets_finish_length() {
    let s = settings();
    let cases = [
        (json!({"max_tokens": 5}), 5, "length"),
        (
            json!({"max_completion_tokens": 3, "max_tokens": 10}),
            3,
            "length",
        ),
        (json!({"max_tokens": 16}), 16, "stop"),
        (json!({"max_tokens": 17}), 16, "stop"),
        (json!({"max_tokens": null}), 16, "stop"),
    ];
    for (extra, tokens, finish) in cases {
        let mut req = chat_request();
        for (k, v) in extra.as_object().unwrap() {
            req[k] = v.clone();
        }
        let (c, _): (ChatCompletion, _) = json_ok(call(&s, Operation::ChatCompletions, &req));
        assert_eq!(c.choices[0].finish_reason, finish, "{extra}");
        assert_eq!(words(&c.choices[0].message.content), tokens, "{extra}");
        assert_usage(&c.usage, 17, tokens);
    }
}

#[test]
fn zero_completion_tokens_gives_empty_content() {
    let s = MockSettings {
        completion_tokens: 0,
        ..settings()
    };
    let (c, _): (ChatCompletion, _) =
        json_ok(call(&s, Operation::ChatCompletions, &chat_request()));
    assert_eq!(c.choices[0].message.content, "");
    assert_usage(&c.usage, 17, 0);
}

#[test]
fn n_gives_that_many_choices_up_to_128() {
    let mut req = chat_request();
    req["n"] = json!(3);
    req["max_tokens"] = json!(4);
    let (c, _): (ChatCompletion, _) = json_ok(call(&settings(), Operation::ChatCompletions, &req));
    assert_eq!(c.choices.len(), 3);
    for (i, choice) in c.choices.iter().enumerate() {
        assert_eq!(choice.index, i as u32);
        assert_eq!(words(&choice.message.content), 4);
        assert_eq!(choice.finish_reason, "length");
    }
    assert_ne!(c.choices[0].message.content, c.choices[1].message.content);
    assert_usage(&c.usage, 17, 12);

    req["n"] = json!(1000);
    let (c, _): (ChatCompletion, _) = json_ok(call(&settings(), Operation::ChatCompletions, &req));
    assert_eq!(c.choices.len(), 128);
    assert_usage(&c.usage, 17, 128 * 4);
}

// ---- chat streaming ----

fn chunks(req: &Value, s: &MockSettings) -> Vec<(ChatChunk, Value)> {
    let events = drain(stream_of(call(s, Operation::ChatCompletions, req)));
    until_done(events)
        .into_iter()
        .map(|v| (serde_json::from_value(v.clone()).unwrap(), v))
        .collect()
}

#[test]
fn chat_stream_with_usage_follows_the_fixture() {
    // shared/fixtures/openai/chat_request_stream.json
    let req = json!({
        "messages": [{"role": "user", "content": "Count from one to three."}],
        "max_tokens": 20,
        "stream": true,
        "stream_options": {"include_usage": true}
    });
    let chunks = chunks(&req, &settings());
    assert_eq!(chunks.len(), 1 + 16 + 1 + 1);
    for (c, raw) in &chunks {
        assert_eq!(c.id, "chatcmpl-mock0000000000000abc");
        assert_eq!(c.object, "chat.completion.chunk");
        assert_eq!(c.created, CREATED);
        assert_eq!(c.model, "sluice-mock");
        assert!(c.system_fingerprint.starts_with("fp_"));
        assert!(raw.get("usage").is_some(), "usage key on every chunk");
    }
    let (role, _) = &chunks[0];
    assert_eq!(role.choices[0].delta.role.as_deref(), Some("assistant"));
    assert_eq!(role.choices[0].delta.content.as_deref(), Some(""));
    assert!(role.usage.is_none());
    let mut content = String::new();
    for (c, _) in &chunks[1..17] {
        assert_eq!(c.choices.len(), 1);
        let choice = &c.choices[0];
        assert_eq!(choice.delta.role, None);
        assert_eq!(choice.finish_reason, None);
        assert!(choice.logprobs.is_none());
        let piece = choice.delta.content.as_deref().unwrap();
        assert_eq!(words(piece), 1, "one word per token: {piece:?}");
        content.push_str(piece);
        assert!(c.usage.is_none());
    }
    let (finish, raw) = &chunks[17];
    assert_eq!(finish.choices[0].finish_reason.as_deref(), Some("stop"));
    assert_eq!(raw["choices"][0]["delta"], json!({}));
    let (usage, _) = &chunks[18];
    assert!(usage.choices.is_empty());
    // 24 characters → 6 tokens.
    assert_usage(usage.usage.as_ref().unwrap(), 6, 16);

    // The same words as the non-streaming answer.
    let mut whole = req.clone();
    whole["stream"] = json!(false);
    let (c, _): (ChatCompletion, _) =
        json_ok(call(&settings(), Operation::ChatCompletions, &whole));
    assert_eq!(content, c.choices[0].message.content);
}

#[test]
fn chat_stream_without_include_usage_has_no_usage_chunk() {
    for options in [json!(null), json!({}), json!({"include_usage": false})] {
        let mut req = chat_request();
        req["stream"] = json!(true);
        req["max_tokens"] = json!(2);
        req["stream_options"] = options;
        let chunks = chunks(&req, &settings());
        assert_eq!(chunks.len(), 1 + 2 + 1);
        for (c, raw) in &chunks {
            assert_eq!(c.choices.len(), 1);
            assert!(raw["usage"].is_null());
        }
        assert_eq!(
            chunks[3].0.choices[0].finish_reason.as_deref(),
            Some("length")
        );
    }
}

#[test]
fn chat_stream_with_n_interleaves_choices() {
    let mut req = chat_request();
    req["stream"] = json!(true);
    req["n"] = json!(2);
    req["max_tokens"] = json!(3);
    req["stream_options"] = json!({"include_usage": true});
    let chunks = chunks(&req, &settings());
    let shape: Vec<(u32, &str)> = chunks
        .iter()
        .map(|(c, _)| match c.choices.first() {
            None => (9, "usage"),
            Some(ch) if ch.delta.role.is_some() => (ch.index, "role"),
            Some(ch) if ch.finish_reason.is_some() => (ch.index, "finish"),
            Some(ch) => (ch.index, "token"),
        })
        .collect();
    assert_eq!(
        shape,
        [
            (0, "role"),
            (1, "role"),
            (0, "token"),
            (1, "token"),
            (0, "token"),
            (1, "token"),
            (0, "token"),
            (1, "token"),
            (0, "finish"),
            (1, "finish"),
            (9, "usage")
        ]
    );
    assert_usage(chunks[10].0.usage.as_ref().unwrap(), 17, 6);
}

#[test]
fn stream_pacing() {
    let s = MockSettings {
        tokens_per_second: 4.0,
        ..settings()
    };
    let mut req = chat_request();
    req["stream"] = json!(true);
    req["n"] = json!(2);
    req["max_tokens"] = json!(3);
    let mut stream = stream_of(call(&s, Operation::ChatCompletions, &req));
    assert_eq!(stream.event_interval(), Duration::from_millis(250));
    let mut pauses = Vec::new();
    let mut out = Vec::new();
    loop {
        let pause = stream.pause_before_next();
        if !stream.next_event(&mut out) {
            break;
        }
        pauses.push(pause.as_millis());
    }
    // role×2, tokens (k=0: none, k=1 and k=2: once per position), finish×2, [DONE].
    assert_eq!(pauses, [0, 0, 0, 0, 250, 0, 250, 0, 0, 0, 0]);

    for tps in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        let s = MockSettings {
            tokens_per_second: tps,
            ..settings()
        };
        let stream = stream_of(call(&s, Operation::ChatCompletions, &req));
        assert_eq!(stream.event_interval(), Duration::ZERO, "{tps}");
    }
    let s = MockSettings {
        tokens_per_second: 1e-300,
        ..settings()
    };
    let stream = stream_of(call(&s, Operation::ChatCompletions, &req));
    assert_eq!(stream.event_interval(), Duration::MAX);
}

// ---- completions ----

#[test]
fn completions_answer_each_prompt_n_times() {
    let s = settings();
    let (c, _): (TextCompletion, _) = json_ok(call(
        &s,
        Operation::Completions,
        &json!({"model": "gpt-3.5-turbo-instruct", "prompt": "Say this is a test"}),
    ));
    assert_eq!(c.id, "cmpl-mock0000000000000abc");
    assert_eq!(c.object, "text_completion");
    assert_eq!(c.created, CREATED);
    assert_eq!(c.model, "gpt-3.5-turbo-instruct");
    assert!(c.system_fingerprint.starts_with("fp_"));
    assert_eq!(c.choices.len(), 1);
    assert_eq!(words(&c.choices[0].text), 16);
    assert!(c.choices[0].logprobs.is_none());
    assert_eq!(c.choices[0].finish_reason.as_deref(), Some("stop"));
    assert_usage(c.usage.as_ref().unwrap(), 5, 16);

    let (c, _): (TextCompletion, _) = json_ok(call(
        &s,
        Operation::Completions,
        &json!({"prompt": ["abcd", "efgh"], "n": 2, "max_tokens": 3}),
    ));
    assert_eq!(c.model, "sluice-mock");
    assert_eq!(c.choices.len(), 4);
    assert!(c
        .choices
        .iter()
        .enumerate()
        .all(|(i, ch)| ch.index == i as u32));
    assert!(c.choices.iter().all(|ch| words(&ch.text) == 3));
    assert!(c
        .choices
        .iter()
        .all(|ch| ch.finish_reason.as_deref() == Some("length")));
    assert_usage(c.usage.as_ref().unwrap(), 2, 12);

    // Token ids count one each.
    for prompt in [json!([1, 2, 3, 4, 5]), json!([[1, 2], [3, 4, 5]])] {
        let (c, _): (TextCompletion, _) =
            json_ok(call(&s, Operation::Completions, &json!({"prompt": prompt})));
        assert_eq!(c.usage.as_ref().unwrap().prompt_tokens, 5, "{prompt}");
    }
}

#[test]
fn completion_stream() {
    for include_usage in [false, true] {
        let req = json!({
            "prompt": "Say this is a test",
            "max_tokens": 4,
            "stream": true,
            "stream_options": {"include_usage": include_usage}
        });
        let events = drain(stream_of(call(&settings(), Operation::Completions, &req)));
        let values = until_done(events);
        let chunks: Vec<TextCompletion> = values
            .iter()
            .map(|v| {
                assert!(v.get("usage").is_some());
                serde_json::from_value(v.clone()).unwrap()
            })
            .collect();
        assert_eq!(chunks.len(), 4 + 1 + usize::from(include_usage));
        let mut text = String::new();
        for c in &chunks[..4] {
            assert_eq!(c.object, "text_completion");
            assert_eq!(c.choices[0].finish_reason, None);
            text.push_str(&c.choices[0].text);
        }
        assert_eq!(words(&text), 4);
        assert_eq!(chunks[4].choices[0].text, "");
        assert_eq!(
            chunks[4].choices[0].finish_reason.as_deref(),
            Some("length")
        );
        if include_usage {
            assert!(chunks[5].choices.is_empty());
            assert_usage(chunks[5].usage.as_ref().unwrap(), 5, 4);
        }
    }
}

// ---- embeddings ----

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn norm(v: &[f32]) -> f64 {
    v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt()
}

#[test]
fn embeddings_are_unit_vectors_one_per_input() {
    // shared/fixtures/openai/embeddings_request.json
    let req = json!({"input": ["The food was delicious", "and the waiter was friendly"]});
    let (list, _): (EmbeddingList, _) = json_ok(call(&settings(), Operation::Embeddings, &req));
    assert_eq!(list.object, "list");
    assert_eq!(list.model, "sluice-mock");
    assert_eq!(list.data.len(), 2);
    let mut vectors = Vec::new();
    for (i, e) in list.data.iter().enumerate() {
        assert_eq!(e.object, "embedding");
        assert_eq!(e.index, i as u32);
        let v = floats(&e.embedding);
        assert_eq!(v.len(), 8);
        assert!((norm(&v) - 1.0).abs() < 1e-5, "{}", norm(&v));
        vectors.push(v);
    }
    assert_ne!(vectors[0], vectors[1]);
    // 22 + 27 characters → 6 + 7 tokens.
    assert_eq!(list.usage.prompt_tokens, 13);
    assert_eq!(list.usage.total_tokens, list.usage.prompt_tokens);

    // The same text, the same vector.
    let (one, _): (EmbeddingList, _) = json_ok(call(
        &settings(),
        Operation::Embeddings,
        &json!({"input": "and the waiter was friendly", "model": "text-embedding-3-small"}),
    ));
    assert_eq!(one.model, "text-embedding-3-small");
    assert_eq!(floats(&one.data[0].embedding), vectors[1]);
}

#[test]
fn embedding_dimensions_from_settings_and_request() {
    let s = MockSettings {
        embedding_dimensions: 3,
        ..settings()
    };
    let (list, _): (EmbeddingList, _) =
        json_ok(call(&s, Operation::Embeddings, &json!({"input": "x"})));
    assert_eq!(floats(&list.data[0].embedding).len(), 3);
    for dims in [1, 256, 3072] {
        let (list, _): (EmbeddingList, _) = json_ok(call(
            &s,
            Operation::Embeddings,
            &json!({"input": "x", "dimensions": dims}),
        ));
        let v = floats(&list.data[0].embedding);
        assert_eq!(v.len(), dims);
        assert!((norm(&v) - 1.0).abs() < 1e-5);
    }
}

#[test]
fn embeddings_of_token_ids() {
    let s = settings();
    let (list, _): (EmbeddingList, _) = json_ok(call(
        &s,
        Operation::Embeddings,
        &json!({"input": [1, 2, 3]}),
    ));
    assert_eq!(list.data.len(), 1);
    assert_eq!(list.usage.prompt_tokens, 3);
    let (list, _): (EmbeddingList, _) = json_ok(call(
        &s,
        Operation::Embeddings,
        &json!({"input": [[1, 2, 3], [4, 5]]}),
    ));
    assert_eq!(list.data.len(), 2);
    assert_eq!(list.usage.prompt_tokens, 5);
    assert_ne!(list.data[0].embedding, list.data[1].embedding);
}

fn base64_decode(s: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c}"),
    };
    assert_eq!(s.len() % 4, 0);
    let mut out = Vec::new();
    for quad in s.as_bytes().chunks(4) {
        let pad = quad.iter().filter(|&&c| c == b'=').count();
        let n = quad
            .iter()
            .map(|&c| if c == b'=' { 0 } else { u32::from(value(c)) })
            .fold(0u32, |n, v| (n << 6) | v);
        out.extend_from_slice(&n.to_be_bytes()[1..4 - pad]);
    }
    out
}

#[test]
fn embeddings_in_base64() {
    let s = settings();
    for dims in [1, 2, 3, 8, 100] {
        let req = json!({"input": "hello", "dimensions": dims});
        let (floats_list, _): (EmbeddingList, _) = json_ok(call(&s, Operation::Embeddings, &req));
        let mut req = req;
        req["encoding_format"] = json!("base64");
        let (b64_list, _): (EmbeddingList, _) = json_ok(call(&s, Operation::Embeddings, &req));
        let bytes = base64_decode(b64_list.data[0].embedding.as_str().unwrap());
        let decoded: Vec<f32> = bytes
            .chunks(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        assert_eq!(
            decoded,
            floats(&floats_list.data[0].embedding),
            "dims {dims}"
        );
    }
}

// ---- responses ----

#[test]
fn responses_answer() {
    let req = json!({
        "model": "gpt-4.1",
        "instructions": "Be brief.",
        "input": [{"role": "user", "content": [{"type": "input_text", "text": "Hello there"}]}]
    });
    let (r, raw): (Response, _) = json_ok(call(&settings(), Operation::Responses, &req));
    assert_eq!(r.id, "resp_mock0000000000000abc");
    assert_eq!(r.object, "response");
    assert_eq!(r.created_at, CREATED);
    assert_eq!(r.status, "completed");
    assert!(r.incomplete_details.is_none());
    assert_eq!(r.model, "gpt-4.1");
    assert_eq!(r.output.len(), 1);
    let item = &r.output[0];
    assert_eq!(item.id, "msg_mock0000000000000abc");
    assert_eq!(
        (item.kind.as_str(), item.role.as_str()),
        ("message", "assistant")
    );
    assert_eq!(item.status, "completed");
    assert_eq!(item.content.len(), 1);
    assert_eq!(item.content[0].kind, "output_text");
    assert!(item.content[0].annotations.is_empty());
    assert_eq!(words(&item.content[0].text), 16);
    let usage = r.usage.unwrap();
    // 9 + 11 characters → 5 tokens.
    assert_eq!(usage.input_tokens, 5);
    assert_eq!(usage.output_tokens, 16);
    assert_eq!(usage.total_tokens, 21);
    assert!(raw["error"].is_null());

    let (r, _): (Response, _) = json_ok(call(
        &settings(),
        Operation::Responses,
        &json!({"input": "Hi", "max_output_tokens": 4}),
    ));
    assert_eq!(r.model, "sluice-mock");
    assert_eq!(r.status, "incomplete");
    assert_eq!(r.incomplete_details.unwrap().reason, "max_output_tokens");
    assert_eq!(r.max_output_tokens, Some(4));
    assert_eq!(words(&r.output[0].content[0].text), 4);
    assert_eq!(r.usage.unwrap().output_tokens, 4);
}

fn response_events(req: &Value) -> Vec<ResponseEvent> {
    let events = drain(stream_of(call(&settings(), Operation::Responses, req)));
    assert!(
        events.iter().all(|e| e.data != "[DONE]"),
        "Responses streams have no [DONE]"
    );
    events
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let ev: ResponseEvent = serde_json::from_str(&e.data).unwrap();
            assert_eq!(e.event.as_deref(), Some(ev.kind.as_str()));
            assert_eq!(ev.sequence_number, i as u64);
            ev
        })
        .collect()
}

#[test]
fn responses_stream() {
    let events =
        response_events(&json!({"input": "Hello", "stream": true, "max_output_tokens": 100}));
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    let mut expected = vec![
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ];
    expected.extend(["response.output_text.delta"; 16]);
    expected.extend([
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]);
    assert_eq!(kinds, expected);

    let created = events[0].response.as_ref().unwrap();
    assert_eq!(created.status, "in_progress");
    assert!(created.output.is_empty() && created.usage.is_none());
    assert_eq!(events[2].item.as_ref().unwrap().status, "in_progress");
    assert_eq!(events[3].part.as_ref().unwrap().text, "");
    let deltas: String = events[4..20]
        .iter()
        .map(|e| {
            assert_eq!(e.item_id.as_deref(), Some("msg_mock0000000000000abc"));
            assert_eq!((e.output_index, e.content_index), (Some(0), Some(0)));
            assert_eq!(e.logprobs.as_deref(), Some(&[][..]));
            e.delta.clone().unwrap()
        })
        .collect();
    assert_eq!(events[20].text.as_deref(), Some(deltas.as_str()));
    assert_eq!(events[21].part.as_ref().unwrap().text, deltas);
    assert_eq!(events[22].item.as_ref().unwrap().content[0].text, deltas);
    let done = events[23].response.as_ref().unwrap();
    assert_eq!(done.status, "completed");
    assert_eq!(done.output[0].content[0].text, deltas);
    let usage = done.usage.as_ref().unwrap();
    assert_eq!((usage.input_tokens, usage.output_tokens), (2, 16));
    assert_eq!(usage.total_tokens, 18);

    // Non-streaming gives the same text.
    let (r, _): (Response, _) = json_ok(call(
        &settings(),
        Operation::Responses,
        &json!({"input": "Hello"}),
    ));
    assert_eq!(r.output[0].content[0].text, deltas);
}

#[test]
fn responses_stream_cut_short_ends_incomplete() {
    let events =
        response_events(&json!({"input": "Hello", "stream": true, "max_output_tokens": 2}));
    assert_eq!(events.len(), 2 + 8);
    let last = events.last().unwrap();
    assert_eq!(last.kind, "response.incomplete");
    let r = last.response.as_ref().unwrap();
    assert_eq!(r.status, "incomplete");
    assert_eq!(r.usage.as_ref().unwrap().output_tokens, 2);
}

// ---- errors ----

#[test]
fn invalid_json_is_400() {
    for body in [&b"{"[..], b"", b"not json", b"[1,2]", b"\"text\""] {
        for op in [
            Operation::ChatCompletions,
            Operation::Completions,
            Operation::Embeddings,
            Operation::Responses,
        ] {
            let (status, e) = error(reply(&settings(), op, body, CREATED, SEED));
            assert_eq!(status, 400);
            assert!(e
                .message
                .starts_with("We could not parse the JSON body of your request."));
            assert_eq!(e.kind, "invalid_request_error");
            assert_eq!((e.param, e.code), (None, None));
        }
    }
}

#[test]
fn missing_or_mistyped_parameters_are_400_naming_them() {
    let cases = [
        (
            Operation::ChatCompletions,
            json!({"model": "x"}),
            "messages",
            "missing_required_parameter",
        ),
        (
            Operation::ChatCompletions,
            json!({"messages": null}),
            "messages",
            "missing_required_parameter",
        ),
        (
            Operation::ChatCompletions,
            json!({"messages": "hi"}),
            "messages",
            "invalid_type",
        ),
        (
            Operation::ChatCompletions,
            json!({"messages": []}),
            "messages",
            "empty_array",
        ),
        (
            Operation::Completions,
            json!({"model": "x"}),
            "prompt",
            "missing_required_parameter",
        ),
        (
            Operation::Completions,
            json!({"prompt": {"a": 1}}),
            "prompt",
            "invalid_type",
        ),
        (
            Operation::Completions,
            json!({"prompt": ["a", 1]}),
            "prompt",
            "invalid_type",
        ),
        (
            Operation::Embeddings,
            json!({"model": "x"}),
            "input",
            "missing_required_parameter",
        ),
        (
            Operation::Embeddings,
            json!({"input": 7}),
            "input",
            "invalid_type",
        ),
        (
            Operation::Embeddings,
            json!({"input": []}),
            "input",
            "empty_array",
        ),
        (
            Operation::Embeddings,
            json!({"input": "a", "dimensions": 0}),
            "dimensions",
            "integer_below_min_value",
        ),
        (
            Operation::Embeddings,
            json!({"input": "a", "dimensions": 100_000}),
            "dimensions",
            "integer_above_max_value",
        ),
        (
            Operation::Embeddings,
            json!({"input": "a", "encoding_format": "hex"}),
            "encoding_format",
            "invalid_value",
        ),
        (
            Operation::Responses,
            json!({"model": "x"}),
            "input",
            "missing_required_parameter",
        ),
        (
            Operation::Responses,
            json!({"input": 3}),
            "input",
            "invalid_type",
        ),
        (
            Operation::Responses,
            json!({"input": "a", "max_output_tokens": 0}),
            "max_output_tokens",
            "integer_below_min_value",
        ),
    ];
    for (op, body, param, code) in cases {
        let (status, e) = error(call(&settings(), op, &body));
        assert_eq!(status, 400, "{op:?} {body}");
        assert_eq!(e.kind, "invalid_request_error");
        assert_eq!(e.param.as_deref(), Some(param), "{op:?} {body}");
        assert_eq!(
            e.code.as_deref(),
            Some(code),
            "{op:?} {body}: {}",
            e.message
        );
        assert!(e.message.contains(param), "{}", e.message);
    }
    let mut chat_cases = Vec::new();
    for (field, value, code) in [
        ("max_tokens", json!(0), "integer_below_min_value"),
        ("max_tokens", json!(-3), "integer_below_min_value"),
        ("max_tokens", json!("10"), "invalid_type"),
        ("max_completion_tokens", json!(1.5), "invalid_type"),
        ("n", json!(0), "integer_below_min_value"),
        ("stream", json!("yes"), "invalid_type"),
        ("model", json!(4), "invalid_type"),
    ] {
        let mut req = chat_request();
        req[field] = value;
        chat_cases.push((req, field, code));
    }
    let mut req = chat_request();
    req["stream"] = json!(true);
    req["stream_options"] = json!({"include_usage": 1});
    chat_cases.push((req, "stream_options.include_usage", "invalid_type"));
    for (body, param, code) in chat_cases {
        let (status, e) = error(call(&settings(), Operation::ChatCompletions, &body));
        assert_eq!(status, 400);
        assert_eq!(e.param.as_deref(), Some(param), "{body}");
        assert_eq!(e.code.as_deref(), Some(code), "{body}: {}", e.message);
    }
}

#[test]
fn error_messages_read_like_openai() {
    let (_, e) = error(call(&settings(), Operation::ChatCompletions, &json!({})));
    assert_eq!(e.message, "Missing required parameter: 'messages'.");
    let mut req = chat_request();
    req["max_tokens"] = json!("ten");
    let (_, e) = error(call(&settings(), Operation::ChatCompletions, &req));
    assert_eq!(
        e.message,
        "Invalid type for 'max_tokens': expected an integer, but got a string instead."
    );
}

#[test]
fn models_is_the_gateways() {
    let (status, e) = error(reply(&settings(), Operation::Models, b"", CREATED, SEED));
    assert_eq!(status, 404);
    assert_eq!(e.kind, "invalid_request_error");
}

#[test]
fn every_chat_and_completion_stream_ends_with_one_done() {
    for op in [Operation::ChatCompletions, Operation::Completions] {
        for tokens in [0, 1, 5] {
            for include_usage in [false, true] {
                for n in [1, 3] {
                    let s = MockSettings {
                        completion_tokens: tokens,
                        ..settings()
                    };
                    let req = json!({
                        "messages": [{"role": "user", "content": "x"}],
                        "prompt": "x",
                        "n": n,
                        "stream": true,
                        "stream_options": {"include_usage": include_usage}
                    });
                    let stream = stream_of(call(&s, op, &req));
                    let total = stream.remaining();
                    let values = until_done(drain(stream));
                    assert_eq!(values.len() + 1, total);
                    let contents = values
                        .iter()
                        .filter(|v| v["choices"].as_array().is_some_and(|c| !c.is_empty()))
                        .count();
                    let opens = if op == Operation::ChatCompletions {
                        n
                    } else {
                        0
                    };
                    assert_eq!(contents as u32, opens + tokens * n + n, "{op:?}");
                    let usage_chunks = values
                        .iter()
                        .filter(|v| v["choices"].as_array().is_some_and(Vec::is_empty))
                        .count();
                    assert_eq!(usage_chunks, usize::from(include_usage));
                }
            }
        }
    }
}
