use serde_json::json;

use super::*;

const CHAT_STREAM: &str = include_str!("fixtures/chat_stream_with_usage.sse");
const CHAT_COMPLETION: &str = include_str!("fixtures/chat_completion.json");
const CHAT_REQUEST: &str = include_str!("fixtures/chat_request.json");
const EMBEDDINGS_REQUEST: &str = include_str!("fixtures/embeddings_request.json");

fn capture(operation: Operation, stream: bool, max: usize, pieces: &[&[u8]]) -> Answer {
    let mut capture = AnswerCapture::new(operation, stream, max).unwrap();
    for piece in pieces {
        capture.feed(piece);
    }
    capture.finish()
}

fn chat_stream(body: &[u8]) -> Answer {
    capture(Operation::ChatCompletions, true, FULL_FIELD_CHARS, &[body])
}

fn stream_parts(answer: Answer) -> (Option<String>, Value, bool) {
    match answer {
        Answer::Stream {
            model,
            content,
            cut,
        } => (model, content, cut),
        other => panic!("not a stream: {other:?}"),
    }
}

/// `data: {json}` events, one per chunk, then `data: [DONE]`.
fn sse(chunks: &[Value]) -> String {
    let mut body = String::new();
    for chunk in chunks {
        body.push_str(&format!("data: {chunk}\n\n"));
    }
    body.push_str("data: [DONE]\n\n");
    body
}

/// Every split of `body` in two pieces, and byte by byte, gives `whole`.
fn assert_split_invariant(operation: Operation, body: &[u8], whole: &Answer) {
    for at in 0..=body.len() {
        let split = capture(
            operation,
            true,
            FULL_FIELD_CHARS,
            &[&body[..at], &body[at..]],
        );
        assert_eq!(&split, whole, "split at byte {at}");
    }
    let bytes: Vec<&[u8]> = body.chunks(1).collect();
    assert_eq!(
        &capture(operation, true, FULL_FIELD_CHARS, &bytes),
        whole,
        "byte by byte"
    );
}

// ---- stream reassembly --------------------------------------------------------------------

#[test]
fn fixture_stream_reassembles_to_the_answer() {
    let (model, content, cut) = stream_parts(chat_stream(CHAT_STREAM.as_bytes()));
    assert_eq!(model.as_deref(), Some("gpt-4o-2024-08-06"));
    assert!(!cut);
    assert_eq!(
        content,
        json!({"choices": [{"index": 0, "finish_reason": "stop",
            "message": {"role": "assistant", "content": "One, two, three."}}]})
    );
}

#[test]
fn fixture_stream_split_at_every_byte_gives_the_same_answer() {
    let whole = chat_stream(CHAT_STREAM.as_bytes());
    assert_split_invariant(Operation::ChatCompletions, CHAT_STREAM.as_bytes(), &whole);
}

#[test]
fn crlf_and_cr_line_ends_give_the_same_answer() {
    let whole = chat_stream(CHAT_STREAM.as_bytes());
    for end in ["\r\n", "\r"] {
        let body = CHAT_STREAM.replace('\n', end);
        assert_eq!(chat_stream(body.as_bytes()), whole, "line end {end:?}");
        assert_split_invariant(Operation::ChatCompletions, body.as_bytes(), &whole);
    }
}

#[test]
fn a_stream_without_a_final_blank_line_still_reads_its_last_event() {
    let body = r#"data: {"model":"m","choices":[{"index":0,"delta":{"content":"tail"}}]}"#;
    let (_, content, _) = stream_parts(chat_stream(body.as_bytes()));
    assert_eq!(content["choices"][0]["message"]["content"], "tail");
}

fn two_choice_tool_stream() -> String {
    sse(&[
        json!({"id": "c", "object": "chat.completion.chunk", "model": "",
            "choices": [], "prompt_filter_results": []}),
        json!({"id": "c", "object": "chat.completion.chunk", "model": "gpt-4o",
            "choices": [
                {"index": 0, "delta": {"role": "assistant", "content": null, "tool_calls": [
                    {"index": 0, "id": "call_a", "type": "function",
                     "function": {"name": "get_weather", "arguments": ""}}]},
                 "finish_reason": null},
                {"index": 1, "delta": {"role": "assistant", "content": "Let me"},
                 "finish_reason": null}]}),
        json!({"model": "other", "choices": [{"index": 0, "delta": {"tool_calls": [
            {"index": 0, "function": {"arguments": "{\"city\":"}}]}, "finish_reason": null}]}),
        json!({"choices": [{"index": 0, "delta": {"tool_calls": [
            {"index": 1, "id": "call_b", "type": "function",
             "function": {"name": "get_time", "arguments": "{}"}}]}}]}),
        json!({"choices": [{"index": 1, "delta": {"content": " check."},
            "finish_reason": "stop"}]}),
        json!({"choices": [{"index": 0, "delta": {"tool_calls": [
            {"index": 0, "function": {"arguments": "\"Paris\"}"}}]},
            "finish_reason": "tool_calls"}]}),
        json!({"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 2,
            "total_tokens": 3}}),
    ])
}

#[test]
fn two_choices_with_tool_calls_split_across_chunks() {
    let body = two_choice_tool_stream();
    let whole = chat_stream(body.as_bytes());
    let (model, content, cut) = stream_parts(whole.clone());
    assert_eq!(
        model.as_deref(),
        Some("gpt-4o"),
        "the first non-empty model"
    );
    assert!(!cut);
    assert_eq!(
        content,
        json!({"choices": [
            {"index": 0, "finish_reason": "tool_calls", "message": {
                "role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_a", "type": "function",
                     "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                    {"id": "call_b", "type": "function",
                     "function": {"name": "get_time", "arguments": "{}"}}]}},
            {"index": 1, "finish_reason": "stop",
             "message": {"role": "assistant", "content": "Let me check."}}]})
    );
    assert_split_invariant(Operation::ChatCompletions, body.as_bytes(), &whole);
}

#[test]
fn a_stream_gives_what_the_same_answer_as_json_gives() {
    let json_answer = json!({
        "id": "c", "object": "chat.completion", "model": "gpt-4o",
        "choices": [
            {"index": 0, "finish_reason": "tool_calls", "logprobs": null, "message": {
                "role": "assistant", "content": null, "refusal": null, "tool_calls": [
                    {"id": "call_a", "type": "function",
                     "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                    {"id": "call_b", "type": "function",
                     "function": {"name": "get_time", "arguments": "{}"}}]}},
            {"index": 1, "finish_reason": "stop", "content_filter_results": {},
             "message": {"role": "assistant", "content": "Let me check.", "refusal": null}}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}
    });
    let body = serde_json::to_vec(&json_answer).unwrap();
    let from_json = response_content(
        Operation::ChatCompletions,
        capture(
            Operation::ChatCompletions,
            false,
            FULL_FIELD_CHARS,
            &[&body],
        ),
    );
    let from_stream = response_content(
        Operation::ChatCompletions,
        chat_stream(two_choice_tool_stream().as_bytes()),
    );
    assert_eq!(from_json, from_stream);
}

#[test]
fn refusal_and_deprecated_function_call_are_reassembled() {
    let body = sse(&[
        json!({"model": "gpt-4o", "choices": [{"index": 0,
            "delta": {"role": "assistant", "content": null, "refusal": "I can"}}]}),
        json!({"choices": [{"index": 0, "delta": {"refusal": "'t help with that."}}]}),
        json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}),
    ]);
    let (_, content, _) = stream_parts(chat_stream(body.as_bytes()));
    assert_eq!(
        content["choices"][0]["message"],
        json!({"role": "assistant", "content": null, "refusal": "I can't help with that."})
    );

    let body = sse(&[
        json!({"choices": [{"index": 0, "delta": {"role": "assistant",
            "function_call": {"name": "lookup", "arguments": "{\"q\""}}}]}),
        json!({"choices": [{"index": 0, "delta": {"function_call": {"arguments": ":1}"}},
            "finish_reason": "function_call"}]}),
    ]);
    let (_, content, _) = stream_parts(chat_stream(body.as_bytes()));
    assert_eq!(
        content["choices"][0],
        json!({"index": 0, "finish_reason": "function_call", "message": {
            "role": "assistant", "content": null,
            "function_call": {"name": "lookup", "arguments": "{\"q\":1}"}}})
    );
}

#[test]
fn completions_stream_appends_text_per_choice() {
    let body = sse(&[
        json!({"object": "text_completion", "model": "gpt-35-turbo-instruct",
            "choices": [{"index": 0, "text": "Once", "finish_reason": null},
                        {"index": 1, "text": "In", "finish_reason": null}]}),
        json!({"choices": [{"index": 1, "text": " a land", "finish_reason": "length"}]}),
        json!({"choices": [{"index": 0, "text": " upon", "finish_reason": "stop"}]}),
    ]);
    let whole = capture(
        Operation::Completions,
        true,
        FULL_FIELD_CHARS,
        &[body.as_bytes()],
    );
    let (model, content, cut) = stream_parts(whole.clone());
    assert_eq!(model.as_deref(), Some("gpt-35-turbo-instruct"));
    assert!(!cut);
    assert_eq!(
        content,
        json!({"choices": [
            {"index": 0, "finish_reason": "stop", "text": "Once upon"},
            {"index": 1, "finish_reason": "length", "text": "In a land"}]})
    );
    assert_split_invariant(Operation::Completions, body.as_bytes(), &whole);
}

fn responses_stream() -> String {
    let events = [
        json!({"type": "response.created", "sequence_number": 0, "response": {
            "id": "resp_1", "object": "response", "model": "gpt-4o",
            "status": "in_progress", "output": []}}),
        json!({"type": "response.output_item.added", "output_index": 0, "item": {
            "id": "msg_1", "type": "message", "status": "in_progress", "role": "assistant",
            "content": []}}),
        json!({"type": "response.content_part.added", "item_id": "msg_1", "output_index": 0,
            "content_index": 0, "part": {"type": "output_text", "text": "", "annotations": []}}),
        json!({"type": "response.output_text.delta", "item_id": "msg_1", "output_index": 0,
            "content_index": 0, "delta": "Hel"}),
        json!({"type": "response.output_text.delta", "item_id": "msg_1", "output_index": 0,
            "content_index": 0, "delta": "lo"}),
        json!({"type": "response.refusal.delta", "item_id": "msg_1", "output_index": 0,
            "content_index": 1, "delta": "No."}),
        json!({"type": "response.output_text.done", "item_id": "msg_1", "output_index": 0,
            "content_index": 0, "text": "Hello"}),
        json!({"type": "response.output_item.added", "output_index": 1, "item": {
            "id": "fc_1", "type": "function_call", "status": "in_progress",
            "call_id": "call_1", "name": "get_weather", "arguments": ""}}),
        json!({"type": "response.function_call_arguments.delta", "item_id": "fc_1",
            "output_index": 1, "delta": "{\"city\":"}),
        json!({"type": "response.function_call_arguments.delta", "item_id": "fc_1",
            "output_index": 1, "delta": "\"Oslo\"}"}),
        json!({"type": "response.output_item.added", "output_index": 2, "item": {
            "id": "rs_1", "type": "reasoning", "summary": []}}),
        json!({"type": "response.completed", "response": {
            "id": "resp_1", "object": "response", "model": "gpt-4o-2024-08-06",
            "status": "completed", "output": [], "usage": {"input_tokens": 3,
            "output_tokens": 4, "total_tokens": 7}}}),
    ];
    let mut body = String::new();
    for event in events {
        let name = event["type"].as_str().unwrap().to_owned();
        body.push_str(&format!("event: {name}\ndata: {event}\n\n"));
    }
    body
}

fn responses_expected() -> Value {
    json!({"output": [
        {"type": "message", "role": "assistant", "content": [
            {"type": "output_text", "text": "Hello"},
            {"type": "refusal", "refusal": "No."}]},
        {"type": "function_call", "call_id": "call_1", "name": "get_weather",
         "arguments": "{\"city\":\"Oslo\"}"},
        {"type": "reasoning"}],
        "output_text": "Hello"})
}

#[test]
fn responses_stream_reassembles_output_items() {
    let body = responses_stream();
    let whole = capture(
        Operation::Responses,
        true,
        FULL_FIELD_CHARS,
        &[body.as_bytes()],
    );
    let (model, content, cut) = stream_parts(whole.clone());
    assert_eq!(
        model.as_deref(),
        Some("gpt-4o-2024-08-06"),
        "response.completed's"
    );
    assert!(!cut);
    assert_eq!(content, responses_expected());
    assert_split_invariant(Operation::Responses, body.as_bytes(), &whole);
}

#[test]
fn responses_json_gives_the_stream_shape() {
    let body = json!({"id": "resp_1", "object": "response", "model": "gpt-4o-2024-08-06",
        "status": "completed", "output": [
            {"id": "msg_1", "type": "message", "status": "completed", "role": "assistant",
             "content": [{"type": "output_text", "text": "Hello", "annotations": []},
                         {"type": "refusal", "refusal": "No."}]},
            {"id": "fc_1", "type": "function_call", "status": "completed",
             "call_id": "call_1", "name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"},
            {"id": "rs_1", "type": "reasoning", "summary": [{"type": "summary_text",
             "text": "thinking"}]}],
        "usage": {"input_tokens": 3, "output_tokens": 4, "total_tokens": 7}});
    let answer = Answer::Json {
        body: serde_json::to_vec(&body).unwrap(),
        cut: false,
    };
    let (model, content) = response_content(Operation::Responses, answer);
    assert_eq!(model.as_deref(), Some("gpt-4o-2024-08-06"));
    assert_eq!(content, Some(responses_expected()));
}

#[test]
fn events_without_content_of_a_normal_stream_are_not_a_cut() {
    let body = [
        ": a comment\n\n",
        "event: ping\n\n",
        "data:\n\n",
        "data:  \n\n",
        "data: {\"choices\": [], \"prompt_filter_results\": [{\"prompt_index\": 0}]}\n\n",
        "data: {\"choices\": [{\"index\": 0, \"delta\": {\"content\": \"kept\"}}]}\n\n",
        "data: {\"choices\": [{\"index\": 0, \"delta\": null, \"finish_reason\": \"stop\"}]}\n\n",
        "data: {\"choices\": [], \"usage\": {\"total_tokens\": 3}}\n\n",
        "data: {\"usage\": {\"total_tokens\": 3}}\n\n",
        "data: [DONE]\n\n",
        "data: not json after done\n\n",
    ]
    .concat();
    let (model, content, cut) = stream_parts(chat_stream(body.as_bytes()));
    assert_eq!(model, None);
    assert!(!cut);
    assert_eq!(
        content,
        json!({"choices": [{"index": 0, "finish_reason": "stop",
            "message": {"role": null, "content": "kept"}}]})
    );
    let (_, _, cut) = stream_parts(capture(
        Operation::Responses,
        true,
        FULL_FIELD_CHARS,
        &[responses_stream().as_bytes()],
    ));
    assert!(!cut, "lifecycle and .done events are not a cut");
}

#[test]
fn every_unreadable_event_marks_the_capture_cut() {
    let kept = "data: {\"choices\": [{\"index\": 0, \"delta\": {\"content\": \"kept\"}}]}\n\n";
    for bad in [
        "data: not json\n\n",
        "data: {\"choices\": \"nope\"}\n\n",
        "data: {\"choices\": [{\"index\": 0, \"delta\": {\"content\": 5}}]}\n\n",
        "data: {\"choices\": [{\"index\": -1, \"delta\": {\"content\": \"neg\"}}]}\n\n",
        "data: [1, 2, 3]\n\n",
        "data: {}\n\n",
        "data: {\"choices\": null, \"usage\": null}\n\n",
        "data: {\"error\": {\"message\": \"overloaded\", \"type\": \"server_error\"}}\n\n",
        "data: {\"choices\": [{\"index\": 0, \"delta\": {\"content\": \"\\ud800\"}}]}\n\n",
    ] {
        for operation in [Operation::ChatCompletions, Operation::Completions] {
            let body = [kept, bad, "data: [DONE]\n\n"].concat();
            let (_, content, cut) = stream_parts(capture(
                operation,
                true,
                FULL_FIELD_CHARS,
                &[body.as_bytes()],
            ));
            assert!(cut, "{operation:?} {bad:?}");
            if operation == Operation::ChatCompletions {
                assert_eq!(
                    content["choices"][0]["message"]["content"], "kept",
                    "{bad:?}"
                );
            }
        }
    }
    for bad in [
        "data: {\"type\": 3}\n\n",
        "data: {}\n\n",
        "data: {\"type\": \"response.output_text.delta\", \"output_index\": \"x\", \
         \"delta\": \"no\"}\n\n",
        "data: {\"type\": \"response.output_text.delta\", \"output_index\": 0}\n\n",
        "data: {\"type\": \"response.output_item.added\", \"output_index\": 3}\n\n",
        "data: {\"type\": \"response.function_call_arguments.delta\", \"output_index\": 0, \
         \"delta\": \"{}\"}\n\n",
        "data: {\"type\": \"error\", \"code\": \"server_error\", \"message\": \"boom\"}\n\n",
        "data: not json\n\n",
    ] {
        let body = [
            "data: {\"type\": \"response.output_text.delta\", \"output_index\": 0, \
             \"delta\": \"Hi\"}\n\n",
            bad,
        ]
        .concat();
        let (_, content, cut) = stream_parts(capture(
            Operation::Responses,
            true,
            FULL_FIELD_CHARS,
            &[body.as_bytes()],
        ));
        assert!(cut, "{bad:?}");
        assert_eq!(content["output_text"], "Hi", "{bad:?}");
    }
}

#[test]
fn an_event_with_invalid_utf8_is_read_lossily_and_marks_the_capture_cut() {
    let mut body =
        b"data: {\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"caf\xc3"
            .to_vec();
    let split = body.len();
    body.extend_from_slice(b"\xa9 \xff\xfe\"}}]}\n\ndata: [DONE]\n\n");
    let whole = capture(
        Operation::ChatCompletions,
        true,
        FULL_FIELD_CHARS,
        &[&body[..split], &body[split..]],
    );
    let (_, content, cut) = stream_parts(whole.clone());
    assert!(cut);
    assert_eq!(
        content["choices"][0]["message"]["content"],
        "café \u{FFFD}\u{FFFD}"
    );
    assert_split_invariant(Operation::ChatCompletions, &body, &whole);
    // The same event with valid UTF-8 is not a cut.
    let fine = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"café\"}}]}\n\n";
    let (_, _, cut) = stream_parts(chat_stream(fine.as_bytes()));
    assert!(!cut);
}

#[test]
fn an_over_size_event_is_skipped_and_marks_the_capture_cut() {
    let big = "x".repeat(MAX_EVENT_BYTES + 10);
    let huge_event =
        format!("data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{big}\"}}}}]}}\n\n");
    let before = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"}}]}\n\n";
    let after = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"b\"}}]}\n\n";
    let body = [before, huge_event.as_str(), after, "data: [DONE]\n\n"].concat();
    // Whole, and in pieces of 64 KiB as a relay would feed it: the same.
    let whole = chat_stream(body.as_bytes());
    let pieces: Vec<&[u8]> = body.as_bytes().chunks(64 << 10).collect();
    let answer = capture(Operation::ChatCompletions, true, FULL_FIELD_CHARS, &pieces);
    assert!(answer == whole);
    let (_, content, cut) = stream_parts(answer);
    assert!(cut);
    let kept = content["choices"][0]["message"]["content"]
        .as_str()
        .unwrap();
    assert!(kept == "ab", "kept {} bytes", kept.len());
}

#[test]
fn a_ten_megabyte_stream_keeps_each_field_within_its_bound() {
    let piece = "é".repeat(500) + &"a".repeat(500); // 1000 chars, 1500 bytes
    let chunk = format!(
        "data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{piece}\"}}}}]}}\n\n"
    );
    let body = chunk.repeat(10_000 * 1000 / 1500 + 1);
    assert!(body.len() > 10_000_000);
    let pieces: Vec<&[u8]> = body.as_bytes().chunks(16 << 10).collect();

    // Truncate's N: 1000 characters, and the redaction slack (1500 bytes a piece here:
    // characters, not bytes, count).
    let (_, content, cut) = stream_parts(capture(Operation::ChatCompletions, true, 1000, &pieces));
    assert!(cut);
    let text = content["choices"][0]["message"]["content"]
        .as_str()
        .unwrap();
    assert_eq!(text.chars().count(), 1000 + REDACTION_SLACK_CHARS);
    assert_eq!(text, format!("{piece}{piece}{}", "é".repeat(24)));

    // Full: 1 Mi characters of content, and the slack.
    let (_, content, cut) = stream_parts(capture(
        Operation::ChatCompletions,
        true,
        FULL_FIELD_CHARS,
        &pieces,
    ));
    assert!(cut);
    let text = content["choices"][0]["message"]["content"]
        .as_str()
        .unwrap();
    assert_eq!(
        text.chars().count(),
        FULL_FIELD_CHARS + REDACTION_SLACK_CHARS
    );
    assert!(text.starts_with(&piece));
}

#[test]
fn many_choices_share_one_total_bound() {
    let text = "z".repeat(1000);
    let chunk = |i: usize| {
        format!(
            "data: {{\"choices\":[{{\"index\":{i},\"delta\":{{\"content\":\"{text}\"}}}}]}}\n\n"
        )
    };
    // 8 choices of 1.2 MB each: more than MAX_ANSWER_BYTES together.
    let mut body = String::new();
    for _ in 0..1200 {
        for i in 0..8 {
            body.push_str(&chunk(i));
        }
    }
    let (_, content, cut) = stream_parts(chat_stream(body.as_bytes()));
    assert!(cut);
    let kept: usize = content["choices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["message"]["content"].as_str().unwrap().len())
        .sum();
    assert_eq!(kept, MAX_ANSWER_BYTES);
}

#[test]
fn choices_and_tool_calls_past_the_count_bounds_are_ignored() {
    let choices: Vec<Value> = (0..200)
        .map(|i| json!({"index": i, "delta": {"content": "c"}}))
        .collect();
    let calls: Vec<Value> = (0..200)
        .map(|i| {
            json!({"index": i, "id": format!("call_{i}"), "type": "function",
            "function": {"name": "f", "arguments": "{}"}})
        })
        .collect();
    let body = sse(&[
        json!({"choices": choices}),
        json!({"choices": [{"index": 0, "delta": {"tool_calls": calls}}]}),
    ]);
    let (_, content, cut) = stream_parts(chat_stream(body.as_bytes()));
    assert!(cut);
    let kept = content["choices"].as_array().unwrap();
    assert_eq!(kept.len(), MAX_CHOICES);
    assert_eq!(kept[127]["index"], 127);
    let calls = kept[0]["message"]["tool_calls"].as_array().unwrap();
    assert_eq!(calls.len(), MAX_TOOL_CALLS);
    assert_eq!(calls[127]["id"], "call_127");
}

#[test]
fn json_answers_are_kept_as_bytes_up_to_the_bound() {
    let body = CHAT_COMPLETION.as_bytes();
    let pieces: Vec<&[u8]> = body.chunks(7).collect();
    assert_eq!(
        capture(Operation::ChatCompletions, false, FULL_FIELD_CHARS, &pieces),
        Answer::Json {
            body: body.to_vec(),
            cut: false
        }
    );
    let big = vec![b' '; MAX_ANSWER_BYTES + 1];
    let pieces: Vec<&[u8]> = big.chunks(1 << 20).collect();
    match capture(Operation::Responses, false, 10, &pieces) {
        Answer::Json { body, cut } => {
            assert!(cut);
            assert_eq!(body.len(), MAX_ANSWER_BYTES);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn embeddings_and_models_capture_nothing() {
    for stream in [false, true] {
        assert!(AnswerCapture::new(Operation::Embeddings, stream, 10).is_none());
        assert!(AnswerCapture::new(Operation::Models, stream, 10).is_none());
        for op in [
            Operation::ChatCompletions,
            Operation::Completions,
            Operation::Responses,
        ] {
            assert!(AnswerCapture::new(op, stream, 10).is_some());
        }
    }
}

// ---- request_content / response_content ---------------------------------------------------

#[test]
fn request_content_per_operation() {
    let chat = request_content(Operation::ChatCompletions, CHAT_REQUEST.as_bytes());
    assert_eq!(
        chat,
        Some(json!({"messages": [
            {"role": "system", "content": "You are a concise assistant."},
            {"role": "user", "content": "Explain a token bucket in one sentence."}]}))
    );
    let embeddings = request_content(Operation::Embeddings, EMBEDDINGS_REQUEST.as_bytes());
    assert_eq!(
        embeddings,
        Some(json!({"input": ["The food was delicious", "and the waiter was friendly"]}))
    );
    let completions = br#"{"model": "m", "prompt": ["a", "b"], "max_tokens": 5}"#;
    assert_eq!(
        request_content(Operation::Completions, completions),
        Some(json!({"prompt": ["a", "b"]}))
    );
    let responses = br#"{"model": "m", "instructions": "Be brief.", "input": "Hi"}"#;
    assert_eq!(
        request_content(Operation::Responses, responses),
        Some(json!({"instructions": "Be brief.", "input": "Hi"}))
    );
    let responses = br#"{"model": "m", "instructions": null, "input": [{"role": "user",
        "content": [{"type": "input_text", "text": "Hi"}]}]}"#;
    assert_eq!(
        request_content(Operation::Responses, responses),
        Some(json!({"input": [{"role": "user",
            "content": [{"type": "input_text", "text": "Hi"}]}]}))
    );
    // Another operation's key is not content here.
    assert_eq!(
        request_content(Operation::ChatCompletions, completions),
        None
    );
    assert_eq!(
        request_content(Operation::Models, CHAT_REQUEST.as_bytes()),
        None
    );
}

#[test]
fn request_content_of_a_body_that_does_not_parse_is_its_raw_text() {
    // Past serde_json's nesting limit, or a number past `f64`, in the content itself: the
    // messages cannot be read as a tree.
    let deep = format!(
        "{{\"messages\": [{{\"role\": \"user\", \"content\": \"hi bob@example.com\", \
         \"metadata\": {}{}}}]}}",
        "[".repeat(200),
        "]".repeat(200)
    );
    let huge_number = r#"{"messages": [{"role": "user", "content": "hi", "weight": 1e400}]}"#;
    for body in [
        deep.as_bytes(),
        huge_number.as_bytes(),
        &b"[{\"messages\": []}]"[..],
        b"\"messages\"",
        b"42",
        b"null",
        b"not json",
        b"",
        b"{\"messages\": [",
    ] {
        for operation in [
            Operation::ChatCompletions,
            Operation::Completions,
            Operation::Embeddings,
            Operation::Responses,
        ] {
            assert_eq!(
                request_content(operation, body),
                Some(json!({"unparsed": true, "raw": std::str::from_utf8(body).unwrap()})),
                "{operation:?} {}",
                String::from_utf8_lossy(body)
            );
        }
    }
    // The policy reaches `raw` as any text.
    let mut content = request_content(Operation::ChatCompletions, deep.as_bytes()).unwrap();
    apply(&mut content, ContentMode::Truncate(40), &defaults());
    assert_eq!(
        content,
        json!({"unparsed": true, "raw": format!("{}{TRUNCATED_MARKER}", &deep[..40])})
    );
    let mut content = request_content(Operation::ChatCompletions, deep.as_bytes()).unwrap();
    apply(&mut content, ContentMode::Full, &defaults());
    assert!(content["raw"]
        .as_str()
        .unwrap()
        .contains("\"hi [REDACTED]\""));
    let mut content = request_content(Operation::ChatCompletions, deep.as_bytes()).unwrap();
    apply(&mut content, ContentMode::Hash, &defaults());
    let redacted = deep.replace("bob@example.com", REDACTED);
    assert_eq!(content["raw"], sha256_tag(redacted.as_bytes()));
    // Not a prompt at all: still nothing for `models`.
    assert_eq!(request_content(Operation::Models, b"not json"), None);
}

/// Members a record does not keep are skipped unread, so what a tree could not hold there
/// (nesting past serde_json's limit, a number past `f64`) no longer costs the prompt its
/// shape.
#[test]
fn request_content_skips_members_it_does_not_keep() {
    for other in [
        format!("{}{}", "[".repeat(200), "]".repeat(200)),
        "1e400".to_owned(),
    ] {
        let body = format!(
            "{{\"messages\": [{{\"role\": \"user\", \"content\": \"hi\"}}], \"metadata\": {other}}}"
        );
        assert_eq!(
            request_content(Operation::ChatCompletions, body.as_bytes()),
            Some(json!({"messages": [{"role": "user", "content": "hi"}]})),
            "{body}"
        );
    }
}

#[test]
fn raw_text_is_lossy_and_bounded_at_a_character_boundary() {
    let body = b"{\"prompt\": \"caf\xc3\xa9 \xff\xfe\"";
    assert_eq!(
        request_content(Operation::Completions, body),
        Some(json!({"unparsed": true, "raw": "{\"prompt\": \"café \u{FFFD}\u{FFFD}\""}))
    );
    // One ASCII byte then two-byte characters: MAX_RAW_BYTES falls inside a character.
    let big = format!("x{}", "é".repeat(MAX_RAW_BYTES / 2 + 10));
    let content = request_content(Operation::ChatCompletions, big.as_bytes()).unwrap();
    let raw = content["raw"].as_str().unwrap();
    assert_eq!(raw.len(), MAX_RAW_BYTES - 1);
    assert!(big.starts_with(raw));
    assert_eq!(content["cut"], true);
    assert_eq!(content["unparsed"], true);
    // Exactly MAX_RAW_BYTES is whole, not cut.
    let exact = "x".repeat(MAX_RAW_BYTES);
    let content = request_content(Operation::ChatCompletions, exact.as_bytes()).unwrap();
    assert_eq!(content, json!({"unparsed": true, "raw": exact}));
    // A lossy U+FFFD that does not fit is left out whole.
    let mut almost = vec![b'x'; MAX_RAW_BYTES - 2];
    almost.push(0xff);
    let content = request_content(Operation::ChatCompletions, &almost).unwrap();
    assert_eq!(content["raw"].as_str().unwrap().len(), MAX_RAW_BYTES - 2);
    assert_eq!(content["cut"], true);
}

#[test]
fn request_content_of_an_object_without_content_keys_is_none() {
    for body in [
        &b"{}"[..],
        b"{\"messages\": null}",
        b"{\"model\": \"m\", \"n\": 2}",
    ] {
        assert_eq!(
            request_content(Operation::ChatCompletions, body),
            None,
            "{}",
            String::from_utf8_lossy(body)
        );
    }
    // A Responses prompt reference's variables are prompt text.
    let body = br#"{"model": "m", "prompt": {"id": "pmpt_1", "variables": {"city": "Oslo"}}}"#;
    assert_eq!(
        request_content(Operation::Responses, body),
        Some(json!({"prompt": {"id": "pmpt_1", "variables": {"city": "Oslo"}}}))
    );
}

#[test]
fn response_content_of_an_unparsed_answer_keeps_a_bounded_raw() {
    // A cut answer (over the 4 MiB capture) keeps its first MAX_RAW_BYTES.
    let body = vec![b'a'; MAX_ANSWER_BYTES];
    let (model, content) =
        response_content(Operation::ChatCompletions, Answer::Json { body, cut: true });
    assert_eq!(model, None);
    let content = content.unwrap();
    assert_eq!(content["raw"].as_str().unwrap().len(), MAX_RAW_BYTES);
    assert_eq!(content["cut"], true);
    // A whole answer that does not parse: redacted like text.
    let body = b"{\"choices\": [{\"text\": \"mail bob@example.com\"".to_vec();
    let (_, content) = response_content(Operation::Completions, Answer::Json { body, cut: false });
    let mut content = content.unwrap();
    apply(&mut content, ContentMode::Full, &defaults());
    assert_eq!(
        content,
        json!({"unparsed": true, "raw": "{\"choices\": [{\"text\": \"mail [REDACTED]\""})
    );
}

#[test]
fn response_content_of_the_fixture_chat_answer() {
    let answer = Answer::Json {
        body: CHAT_COMPLETION.as_bytes().to_vec(),
        cut: false,
    };
    let (model, content) = response_content(Operation::ChatCompletions, answer);
    assert_eq!(model.as_deref(), Some("gpt-4o-2024-08-06"));
    assert_eq!(
        content,
        Some(
            json!({"choices": [{"index": 0, "finish_reason": "stop", "message": {
            "role": "assistant",
            "content": "A token bucket refills at a fixed rate and admits a request only \
                        while it holds enough tokens."}}]})
        )
    );
}

#[test]
fn response_content_of_a_completions_answer() {
    let body = br#"{"id": "cmpl-1", "object": "text_completion", "model": "davinci",
        "choices": [{"text": "Hello there", "index": 0, "logprobs": null,
        "finish_reason": "length"}], "usage": {"total_tokens": 3}}"#;
    let answer = Answer::Json {
        body: body.to_vec(),
        cut: false,
    };
    assert_eq!(
        response_content(Operation::Completions, answer),
        (
            Some("davinci".to_owned()),
            Some(json!({"choices": [{"index": 0, "finish_reason": "length",
                "text": "Hello there"}]}))
        )
    );
}

#[test]
fn response_content_of_cut_unparsable_and_error_bodies() {
    let cut = Answer::Json {
        body: CHAT_COMPLETION.as_bytes()[..100].to_vec(),
        cut: true,
    };
    assert_eq!(
        response_content(Operation::ChatCompletions, cut),
        (
            None,
            Some(json!({"unparsed": true, "raw": &CHAT_COMPLETION[..100], "cut": true}))
        )
    );
    for body in [
        &b"{\"choices\": [tru"[..],
        b"[]",
        b"{\"object\": \"list\"}",
        b"",
    ] {
        let answer = Answer::Json {
            body: body.to_vec(),
            cut: false,
        };
        assert_eq!(
            response_content(Operation::ChatCompletions, answer).1,
            Some(json!({"unparsed": true, "raw": String::from_utf8_lossy(body)})),
            "{}",
            String::from_utf8_lossy(body)
        );
    }
    let error = br#"{"error": {"message": "Rate limit", "type": "requests", "code": "429"}}"#;
    let answer = Answer::Json {
        body: error.to_vec(),
        cut: false,
    };
    assert_eq!(
        response_content(Operation::Responses, answer),
        (
            None,
            Some(
                json!({"error": {"message": "Rate limit", "type": "requests",
                "code": "429"}})
            )
        )
    );
    let embeddings = br#"{"object": "list", "model": "ada", "data": [{"embedding": [0.1]}]}"#;
    let answer = Answer::Json {
        body: embeddings.to_vec(),
        cut: false,
    };
    assert_eq!(
        response_content(Operation::Embeddings, answer),
        (Some("ada".to_owned()), None)
    );
}

#[test]
fn response_content_marks_a_cut_stream() {
    let long = "é".repeat(3 + REDACTION_SLACK_CHARS + 1);
    let body = sse(&[json!({"model": "m", "choices": [{"index": 0,
        "delta": {"role": "assistant", "content": long}, "finish_reason": "length"}]})]);
    let (_, content) = response_content(
        Operation::ChatCompletions,
        capture(Operation::ChatCompletions, true, 3, &[body.as_bytes()]),
    );
    let kept = "é".repeat(3 + REDACTION_SLACK_CHARS);
    assert_eq!(
        content,
        Some(json!({"choices": [{"index": 0, "finish_reason": "length",
            "message": {"role": "assistant", "content": kept}}], "cut": true}))
    );
}

#[test]
fn a_secret_across_the_truncation_point_is_redacted_whole() {
    let key = "sk-abcdefghijklmnopqrstuvwxyz0123456789";
    let text = format!("key is {key} ok");
    let json_answer = json!({"model": "m", "choices": [{"index": 0, "finish_reason": "stop",
        "message": {"role": "assistant", "content": text}}]});
    // The stream sends the key in small deltas, the cut (N = 10) falls inside it.
    let deltas: Vec<Value> = text
        .as_bytes()
        .chunks(4)
        .map(|piece| {
            let piece = std::str::from_utf8(piece).unwrap();
            json!({"model": "m", "choices": [{"index": 0, "delta": {"content": piece}}]})
        })
        .chain([
            json!({"choices": [{"index": 0, "delta": {"role": "assistant"},
            "finish_reason": "stop"}]}),
        ])
        .collect();
    let stream = sse(&deltas);
    let redactor = defaults();
    let mode = ContentMode::Truncate(10);
    let (_, mut from_stream) = response_content(
        Operation::ChatCompletions,
        capture(Operation::ChatCompletions, true, 10, &[stream.as_bytes()]),
    );
    let body = serde_json::to_vec(&json_answer).unwrap();
    let (_, mut from_json) = response_content(
        Operation::ChatCompletions,
        capture(Operation::ChatCompletions, false, 10, &[&body]),
    );
    apply(from_stream.as_mut().unwrap(), mode, &redactor);
    apply(from_json.as_mut().unwrap(), mode, &redactor);
    // The cut falls inside the marker: it is left out whole.
    let expected = "key is …[truncated]";
    assert_eq!(
        from_stream.unwrap()["choices"][0]["message"]["content"],
        expected
    );
    assert_eq!(
        from_json.unwrap()["choices"][0]["message"]["content"],
        expected
    );
}

// ---- Redactor --------------------------------------------------------------------------------

fn defaults() -> Redactor {
    Redactor::new(true, &[]).unwrap()
}

#[track_caller]
fn assert_redacts(redactor: &Redactor, text: &str, expected: &str) {
    assert_eq!(redactor.redact(text), expected, "{text}");
}

#[track_caller]
fn assert_keeps(redactor: &Redactor, text: &str) {
    assert!(
        matches!(redactor.redact(text), Cow::Borrowed(t) if t == text),
        "{text} → {}",
        redactor.redact(text)
    );
}

#[test]
fn default_patterns_hit_openai_style_keys() {
    let r = defaults();
    assert_redacts(
        &r,
        "key sk-abcdefghijklmnopqrstuvwx1234 here",
        "key [REDACTED] here",
    );
    assert_redacts(
        &r,
        "OPENAI_API_KEY=sk-proj-Ab_cD-ef0123456789abcdefghijkl",
        "OPENAI_API_KEY=[REDACTED]",
    );
    let sluice = format!("sk-sluice-{}", "A1b2_C3d-".repeat(5)); // 45 chars after the prefix
    assert_redacts(&r, &format!("use {sluice}."), "use [REDACTED].");
    assert_keeps(&r, "risk-abcdefghijklmnopqrstuvwxyz0123");
    assert_keeps(&r, "pip install sk-learn");
    assert_keeps(&r, "sk-short-key-123");
}

#[test]
fn default_patterns_hit_azure_keys_of_exactly_32_hex_digits() {
    let r = defaults();
    let key = "0123456789abcdef0123456789ABCDEF";
    assert_redacts(&r, &format!("api-key: {key}"), "api-key: [REDACTED]");
    assert_keeps(&r, &key[..31]);
    assert_keeps(&r, &format!("{key}0"));
    assert_keeps(&r, "123e4567-e89b-12d3-a456-426614174000");
    assert_keeps(&r, "0123456789abcdef0123456789abcdeg");
}

#[test]
fn default_patterns_hit_bearer_tokens_in_any_case() {
    let r = defaults();
    assert_redacts(
        &r,
        "Authorization: Bearer abcDEF0123456789-._~+/==",
        "Authorization: [REDACTED]",
    );
    assert_redacts(&r, "bearer\tabcdefghijklmnop", "[REDACTED]");
    assert_redacts(&r, "BEARER abcdefghijklmnop!", "[REDACTED]!");
    assert_keeps(&r, "the bearer of bad news");
    assert_keeps(&r, "bearer");
    assert_keeps(&r, "Bearer short");
    assert_keeps(&r, "forbearer abcdefghijklmnopqrst");
}

#[test]
fn default_patterns_hit_jwts() {
    let r = defaults();
    let jwt =
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
    assert_redacts(&r, &format!("token={jwt};"), "token=[REDACTED];");
    assert_redacts(&r, "eyJhbGciOiJub25lIn0.eyJzdWIiOiIxIn0.", "[REDACTED]");
    assert_keeps(&r, "eyJhbGciOiJIUzI1NiJ9");
    assert_keeps(&r, "keyJhb.x.y");
}

#[test]
fn default_patterns_hit_email_addresses() {
    let r = defaults();
    assert_redacts(
        &r,
        "mail a.b+c@mail.example.co.uk now",
        "mail [REDACTED] now",
    );
    assert_redacts(&r, "<bob@example.com>", "<[REDACTED]>");
    assert_keeps(&r, "user@localhost");
    assert_keeps(&r, "ping @handle please");
    assert_keeps(&r, "a@b.c");
}

#[test]
fn default_patterns_hit_internationalised_and_underscored_email_addresses() {
    let r = defaults();
    assert_redacts(&r, "write to josé@example.com.", "write to [REDACTED].");
    assert_redacts(&r, "émile@example.fr", "[REDACTED]");
    assert_redacts(&r, "(bob_smith@example.com)", "([REDACTED])");
    assert_redacts(&r, "用户@例子.com", "[REDACTED]");
    assert_redacts(&r, "user@exämple.de", "[REDACTED]");
    assert_keeps(&r, "josé@localhost");
    assert_keeps(&r, "café @ noon");
}

#[test]
fn default_patterns_hit_basic_credentials_in_any_case() {
    let r = defaults();
    assert_redacts(
        &r,
        "Authorization: Basic dXNlcjpwYXNzd29yZDEyMw==",
        "Authorization: [REDACTED]",
    );
    assert_redacts(&r, "basic\tYWxhZGRpbjpvcGVuc2VzYW1l;", "[REDACTED];");
    assert_redacts(&r, "BASIC dXNlcjpw", "[REDACTED]");
    assert_redacts(&r, "Basic abcdefg1", "[REDACTED]");
    assert_keeps(&r, "the basic principles of bookkeeping");
    assert_keeps(&r, "Basic Authentication explained");
    assert_keeps(&r, "basic idea");
    assert_keeps(&r, "Basic dXNlcjE");
    assert_keeps(&r, "nonbasic dXNlcjpwYXNzd29yZDEyMw==");
}

#[test]
fn default_patterns_hit_azure_84_character_keys() {
    let r = defaults();
    let key = "A1b2C3d4E5".repeat(8) + "F6g7";
    assert_eq!(key.len(), 84);
    assert_redacts(&r, &format!("key={key}"), "key=[REDACTED]");
    assert_keeps(&r, &key[..83]);
    assert_keeps(&r, &format!("{key}Z"));
}

#[test]
fn default_patterns_hit_a_32_hex_key_joined_by_underscore_or_dash() {
    let r = defaults();
    let key = "0123456789abcdef0123456789abcdef";
    assert_redacts(&r, &format!("api_key_{key}"), "api_key[REDACTED]");
    assert_redacts(&r, &format!("api-key-{key}"), "api-key-[REDACTED]");
    assert_redacts(&r, &format!("{key}_prod"), "[REDACTED]prod");
    assert_redacts(&r, &format!("x_{key}-y"), "x[REDACTED]-y");
    // Never inside a longer hex (or word) run.
    assert_keeps(&r, &format!("a{key}"));
    assert_keeps(&r, &format!("_a{key}"));
    assert_keeps(&r, &format!("{key}0_"));
    assert_keeps(&r, &format!("api_key_{}", &key[..31]));
}

#[test]
fn operator_patterns_redact_alone_or_with_the_defaults() {
    let extra = vec![r"ACME-\d{6}".to_owned()];
    let only = Redactor::new(false, &extra).unwrap();
    assert_redacts(
        &only,
        "ticket ACME-123456 by bob@example.com",
        "ticket [REDACTED] by bob@example.com",
    );
    let both = Redactor::new(true, &extra).unwrap();
    assert_redacts(
        &both,
        "ticket ACME-123456 by bob@example.com",
        "ticket [REDACTED] by [REDACTED]",
    );
    // A case-insensitive flag stays inside its own pattern.
    let flagged = Redactor::new(false, &["(?i)secret".to_owned(), "abc".to_owned()]).unwrap();
    assert_redacts(&flagged, "SECRET ABC abc", "[REDACTED] ABC [REDACTED]");
}

#[test]
fn nothing_matched_borrows() {
    assert_keeps(&defaults(), "nothing to see here");
    assert_keeps(&Redactor::new(false, &[]).unwrap(), "bob@example.com");
    // A pattern that matches nothing at all replaces nothing.
    let empty = Redactor::new(false, &["x*".to_owned()]).unwrap();
    assert_keeps(&empty, "abc");
    assert_redacts(&empty, "axxb", "a[REDACTED]b");
}

#[test]
fn bad_patterns_are_refused() {
    assert!(Redactor::check("(unclosed").is_err());
    assert!(
        Redactor::check(r"(?:\w{100}){100}").is_err(),
        "too large compiled"
    );
    assert!(Redactor::check(r"ACME-\d+").is_ok());
    assert!(Redactor::new(true, &["[z-a]".to_owned()]).is_err());
}

#[test]
fn every_default_pattern_is_named_and_checks() {
    for (name, pattern) in DEFAULT_PATTERNS {
        assert!(!name.is_empty());
        Redactor::check(pattern).unwrap();
    }
}

// ---- apply ---------------------------------------------------------------------------------

fn messages() -> Value {
    json!({"messages": [
        {"role": "system", "content": "Mail bob@example.com"},
        {"role": "user", "name": "alice", "content": [
            {"type": "text", "text": "héllo wörld"},
            {"type": "image_url", "image_url": {"url": "https://x/y.png"}}]},
        {"role": "assistant", "content": null, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "lookup", "arguments": "{\"a\":1}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "abc"}],
        "index": 2, "cut": true})
}

/// `messages()` with each text field (ids and names too) replaced by `f(text)`.
fn messages_with(f: impl Fn(&str) -> String) -> Value {
    json!({"messages": [
        {"role": "system", "content": f("Mail [REDACTED]")},
        {"role": "user", "name": f("alice"), "content": [
            {"type": "text", "text": f("héllo wörld")},
            {"type": "image_url", "image_url": {"url": f("https://x/y.png")}}]},
        {"role": "assistant", "content": null, "tool_calls": [
            {"id": f("call_1"), "type": "function",
             "function": {"name": f("lookup"), "arguments": f("{\"a\":1}")}}]},
        {"role": "tool", "tool_call_id": f("call_1"), "content": f("abc")}],
        "index": 2, "cut": true})
}

#[test]
fn apply_full_redacts_only() {
    let mut content = messages();
    apply(&mut content, ContentMode::Full, &defaults());
    assert_eq!(content, messages_with(str::to_owned));
}

#[test]
fn apply_truncate_cuts_characters_and_marks_them() {
    let mut content = messages();
    apply(&mut content, ContentMode::Truncate(3), &defaults());
    assert_eq!(
        content,
        messages_with(|t| if t.chars().count() > 3 {
            format!(
                "{}{TRUNCATED_MARKER}",
                t.chars().take(3).collect::<String>()
            )
        } else {
            t.to_owned()
        })
    );
    // Spelled out: characters, not bytes; an exact fit is not marked.
    assert_eq!(
        content["messages"][1]["content"][0]["text"],
        "hél…[truncated]"
    );
    assert_eq!(content["messages"][3]["content"], "abc");
    let mut multibyte = json!(["ééééé", "日本語", "🙂🙂🙂🙂"]);
    apply(&mut multibyte, ContentMode::Truncate(3), &defaults());
    assert_eq!(
        multibyte,
        json!(["ééé…[truncated]", "日本語", "🙂🙂🙂…[truncated]"])
    );
    let mut zero = json!({"content": "x"});
    apply(&mut zero, ContentMode::Truncate(0), &defaults());
    assert_eq!(zero, json!({"content": "…[truncated]"}));
}

#[test]
fn a_cut_never_splits_a_redaction_marker() {
    // "mail [REDACTED] and [REDACTED] now": every cut inside the second marker falls back to
    // its start; a cut at its end keeps it whole.
    let text = "mail bob@example.com and alice@example.org now";
    let second = "mail [REDACTED] and ".chars().count();
    for n in second + 1..second + REDACTED.len() {
        let mut content = json!({"content": text});
        apply(&mut content, ContentMode::Truncate(n), &defaults());
        assert_eq!(
            content["content"],
            format!("mail [REDACTED] and {TRUNCATED_MARKER}"),
            "cut at {n}"
        );
    }
    let mut content = json!({"content": text});
    apply(
        &mut content,
        ContentMode::Truncate(second + REDACTED.len()),
        &defaults(),
    );
    assert_eq!(
        content["content"],
        format!("mail [REDACTED] and [REDACTED]{TRUNCATED_MARKER}")
    );
}

#[test]
fn apply_hash_hashes_the_redacted_text() {
    let mut content = messages();
    apply(&mut content, ContentMode::Hash, &defaults());
    assert_eq!(content, messages_with(|t| sha256_tag(t.as_bytes())));
    // The FIPS 180-2 test vector for "abc", independently of sha256_tag.
    assert_eq!(
        content["messages"][3]["content"],
        "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
}

#[test]
fn apply_omit_gives_null() {
    let mut content = messages();
    apply(&mut content, ContentMode::Omit, &defaults());
    assert_eq!(content, Value::Null);
}

#[test]
fn apply_redacts_short_enumerations_but_never_cuts_or_hashes_them() {
    for mode in [
        ContentMode::Full,
        ContentMode::Truncate(2),
        ContentMode::Hash,
    ] {
        let mut fields = Map::new();
        for key in ENUM_KEYS {
            fields.insert((*key).to_owned(), json!("assistant"));
        }
        let mut content = json!({"input": fields, "output": {"role": "bob@example.com"},
            "prompt": {"type": "t".repeat(MAX_ENUM_CHARS)}});
        apply(&mut content, mode, &defaults());
        for key in ENUM_KEYS {
            assert_eq!(content["input"][key], "assistant", "{key} {mode:?}");
        }
        assert_eq!(content["output"]["role"], REDACTED, "{mode:?}");
        assert_eq!(
            content["prompt"]["type"],
            "t".repeat(MAX_ENUM_CHARS),
            "{mode:?}"
        );
    }
    // Longer than an enumeration: cut and hashed like text, whatever the key.
    let long = "é".repeat(MAX_ENUM_CHARS + 1);
    for key in ENUM_KEYS {
        let mut content = json!({ *key: long });
        apply(&mut content, ContentMode::Truncate(2), &defaults());
        assert_eq!(content[key], format!("éé{TRUNCATED_MARKER}"), "{key}");
        let mut content = json!({ *key: long });
        apply(&mut content, ContentMode::Hash, &defaults());
        assert_eq!(content[key], sha256_tag(long.as_bytes()), "{key}");
    }
    // A non-string under an enumeration key is walked like any value.
    let mut content = json!({"type": {"text": "bob@example.com and more"}, "index": 3});
    apply(&mut content, ContentMode::Truncate(4), &defaults());
    // ("[REDACTED] and more" cut at 4 falls inside the marker: left out whole.)
    assert_eq!(
        content,
        json!({"type": {"text": TRUNCATED_MARKER}, "index": 3})
    );
}

#[test]
fn apply_treats_ids_names_and_models_as_text() {
    let key = "sk-abcdefghijklmnopqrstuvwx1234";
    let leaky = || {
        json!({"messages": [
            {"role": "user", "name": format!("bob@example.com {key}"), "content": "hi"},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": key, "type": "function",
                 "function": {"name": "bob@example.com", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": key, "content": "ok"}],
            "output": [{"type": "function_call", "call_id": key, "name": "f",
                "arguments": "{}", "model": key}]})
    };
    let mut full = leaky();
    apply(&mut full, ContentMode::Full, &defaults());
    let text = full.to_string();
    assert!(!text.contains(key) && !text.contains("bob@"), "{text}");
    assert_eq!(full["messages"][0]["name"], "[REDACTED] [REDACTED]");
    assert_eq!(full["messages"][1]["tool_calls"][0]["id"], REDACTED);

    let mut hashed = leaky();
    apply(&mut hashed, ContentMode::Hash, &defaults());
    let tag = sha256_tag(REDACTED.as_bytes());
    assert_eq!(hashed["messages"][1]["tool_calls"][0]["id"], tag);
    // Equal ids hash equal: a call and its result still correlate.
    assert_eq!(hashed["messages"][2]["tool_call_id"], tag);
    assert_eq!(hashed["output"][0]["call_id"], tag);
    assert_eq!(hashed["output"][0]["model"], tag);
    assert_eq!(hashed["output"][0]["name"], sha256_tag(b"f"));
    assert_eq!(hashed["messages"][0]["role"], "user");

    // A name of megabytes is cut like any text.
    let mut huge = json!({"messages": [{"role": "user", "name": "n".repeat(3 << 20),
        "content": "hi"}]});
    apply(&mut huge, ContentMode::Truncate(5), &defaults());
    assert_eq!(
        huge["messages"][0]["name"],
        format!("nnnnn{TRUNCATED_MARKER}")
    );
}

#[test]
fn a_stream_keeps_a_long_tool_call_id_and_name_as_the_json_answer_does() {
    let id = format!("call_{}", "i".repeat(2000));
    let name = format!("fn_{}", "n".repeat(2000));
    let json_answer = json!({"model": "m", "choices": [{"index": 0,
        "finish_reason": "tool_calls", "message": {"role": "assistant", "content": null,
        "tool_calls": [{"id": id, "type": "function",
            "function": {"name": name, "arguments": "{}"}}]}}]});
    let body = serde_json::to_vec(&json_answer).unwrap();
    let stream = sse(&[
        json!({"model": "m", "choices": [{"index": 0, "delta": {"role": "assistant",
            "content": null, "tool_calls": [{"index": 0, "id": id, "type": "function",
            "function": {"name": name, "arguments": "{}"}}]}}]}),
        json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}),
    ]);
    let from_json = response_content(
        Operation::ChatCompletions,
        capture(
            Operation::ChatCompletions,
            false,
            FULL_FIELD_CHARS,
            &[&body],
        ),
    );
    let from_stream = response_content(Operation::ChatCompletions, chat_stream(stream.as_bytes()));
    assert_eq!(from_stream, from_json);
    // Under truncate N, both cut the id the same way once the policy applies.
    let (_, mut from_json) = response_content(
        Operation::ChatCompletions,
        capture(Operation::ChatCompletions, false, 8, &[&body]),
    );
    let (_, mut from_stream) = response_content(
        Operation::ChatCompletions,
        capture(Operation::ChatCompletions, true, 8, &[stream.as_bytes()]),
    );
    let from_stream = from_stream.as_mut().unwrap();
    assert_eq!(from_stream["cut"], true, "the id outgrew N and the slack");
    from_stream.as_object_mut().unwrap().remove("cut");
    apply(from_stream, ContentMode::Truncate(8), &defaults());
    apply(
        from_json.as_mut().unwrap(),
        ContentMode::Truncate(8),
        &defaults(),
    );
    assert_eq!(Some(from_stream.clone()), from_json);
    assert_eq!(
        from_stream["choices"][0]["message"]["tool_calls"][0]["id"],
        format!("call_iii{TRUNCATED_MARKER}")
    );
}

#[test]
fn apply_reaches_a_root_string_and_strings_in_arrays() {
    let mut root = json!("bob@example.com");
    apply(&mut root, ContentMode::Full, &defaults());
    assert_eq!(root, "[REDACTED]");
    let mut prompt = json!({"prompt": ["a@b.io", [1, 2, 3]]});
    apply(&mut prompt, ContentMode::Full, &defaults());
    assert_eq!(prompt, json!({"prompt": ["[REDACTED]", [1, 2, 3]]}));
}

/// Bodies the skipping reads ([`RequestKeys`], [`ChoicesAnswer`]) and the whole-tree reads
/// must agree on: the fixtures, and shapes at the edge of what the skipping reads take
/// (`null`s, wrong types, repeated keys, non-objects, missing members).
fn edge_bodies() -> Vec<Vec<u8>> {
    let mut bodies: Vec<Vec<u8>> = [
        CHAT_REQUEST,
        CHAT_COMPLETION,
        EMBEDDINGS_REQUEST,
        include_str!("fixtures/embeddings_response.json"),
        include_str!("fixtures/error_openai_shape.json"),
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    for text in [
        r#"{"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"hi","refusal":null},"finish_reason":"stop","logprobs":null,"content_filter_results":{"hate":{"filtered":false}}}],"usage":{"prompt_tokens":1}}"#,
        r#"{"model":"m","choices":[{"index":1,"message":{"role":"assistant","content":null,"tool_calls":[{"id":"c1","type":"function","function":{"name":"f","arguments":"{}"}},7,{"id":"c2"}]},"finish_reason":"tool_calls"}]}"#,
        r#"{"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"x","function_call":{"name":"f","arguments":"{\"a\":1}"},"tool_calls":[]}}]}"#,
        r#"{"model":"m","choices":[{"index":"zero","message":null,"finish_reason":null}]}"#,
        r#"{"model":"m","choices":[{"index":0,"text":"done","finish_reason":"length"}]}"#,
        r#"{"model":"m","choices":[3,"x",null]}"#,
        // Arrays where objects belong: serde's derived structs would read them by position.
        r#"["liar-array-model",[[0,"stop",{"role":"assistant","content":"x"}]],null]"#,
        r#"{"model":"m","choices":[[0,"stop",{"role":"assistant","content":"x"},null]]}"#,
        r#"[[{"role":"user","content":"hi"}],null,null,null]"#,
        r#"{"model":"m","choices":{"index":0}}"#,
        r#"{"model":"m","choices":null,"error":{"message":"no","type":"server_error"}}"#,
        r#"{"model":"m","error":"text"}"#,
        r#"{"model":"m","model":"n","choices":[]}"#,
        r#"{"model":"","choices":[]}"#,
        r#"{"model":42,"choices":[]}"#,
        r#"{"choices":[{"index":0,"message":{"role":"a"},"message":{"role":"b"}}]}"#,
        r#"{"choices":[{"index":0,"message":"text"}]}"#,
        r#"{"object":"list","data":[{"embedding":[0.1,-2e-3,1e300],"index":0}],"model":"e"}"#,
        r#"{"messages":[{"role":"user","content":"hi"}],"tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object"}}}]}"#,
        r#"{"messages":null,"prompt":"p","input":["a","b"],"instructions":"i"}"#,
        r#"{"messages":[1],"messages":[2]}"#,
        r#"{"prompt":{"id":"pmpt_1","variables":{"x":"y"}},"input":null}"#,
        r#"{"model":"m"}"#,
        r#"[1,2]"#,
        r#""text""#,
        "{\"messages\":\"caf\u{e9}\"}",
    ] {
        bodies.push(text.as_bytes().to_vec());
    }
    bodies
}

#[test]
fn skipping_reads_agree_with_whole_tree_reads() {
    let operations = [
        Operation::ChatCompletions,
        Operation::Completions,
        Operation::Embeddings,
        Operation::Responses,
    ];
    for body in edge_bodies() {
        for op in operations {
            let keys: &[&str] = match op {
                Operation::ChatCompletions => &["messages"],
                Operation::Completions => &["prompt"],
                Operation::Embeddings => &["input"],
                _ => &["instructions", "input", "prompt"],
            };
            let text = String::from_utf8_lossy(&body);
            assert_eq!(
                request_content(op, &body),
                request_content_tree(keys, &body),
                "request {op:?}: {text}"
            );
            assert_eq!(
                json_content(op, &body),
                json_content_tree(op, &body),
                "answer {op:?}: {text}"
            );
        }
    }
}

/// Where the tree read refuses a body (a number past `f64` in a member the record does
/// not keep), the skipping read still finds the content rather than keeping the body
/// unparsed.
#[test]
fn skipping_read_keeps_content_past_members_a_tree_refuses() {
    let body = br#"{"model":"m","usage":{"x":1e400},"choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}]}"#;
    let (model, content) = json_content(Operation::ChatCompletions, body);
    assert_eq!(model.as_deref(), Some("m"));
    assert_eq!(
        content,
        Some(json!({"choices": [{"index": 0, "finish_reason": "stop",
            "message": {"role": "assistant", "content": "ok"}}]}))
    );
    let (_, tree) = json_content_tree(Operation::ChatCompletions, body);
    assert_eq!(
        tree.and_then(|t| t.get("unparsed").cloned()),
        Some(json!(true))
    );
}

/// `{"<key>":[0,0,…]}` with `n` zeros: tiny in bytes, a huge tree if read whole.
fn many_zeros(key: &str, n: usize) -> Vec<u8> {
    let mut body = format!(r#"{{"{key}":["#).into_bytes();
    body.extend(std::iter::repeat_n(b"0,".as_slice(), n).flatten());
    body.push(b'0');
    body.extend_from_slice(b"]}");
    body
}

#[test]
fn a_request_of_many_tiny_values_keeps_a_bounded_prefix_marked_cut() {
    let n = bounded::MAX_NODES * 8;
    // The fast path (`RequestKeys`) and the whole-tree read (a key repeated) alike.
    let mut repeated = many_zeros("messages", n);
    repeated.splice(1..1, br#""model":"a","model":"b","#.iter().copied());
    for body in [many_zeros("messages", n), repeated] {
        let content = request_content(Operation::ChatCompletions, &body).unwrap();
        let messages = content["messages"].as_array().unwrap();
        assert!(messages.len() <= bounded::MAX_NODES, "{}", messages.len());
        assert!(messages.len() > bounded::MAX_NODES - 8);
        assert!(messages.iter().all(|m| m == &json!(0)));
        assert_eq!(content["cut"], json!(true));
    }
    // Under the bound nothing is marked.
    let content = request_content(Operation::Embeddings, &many_zeros("input", 10)).unwrap();
    assert_eq!(content, json!({"input": vec![0; 11]}));
}

#[test]
fn an_answer_of_many_tiny_choices_keeps_a_bounded_prefix_marked_cut() {
    let n = bounded::MAX_NODES * 2;
    let mut body = br#"{"model":"m","choices":["#.to_vec();
    body.extend(std::iter::repeat_n(br#"{"index":0},"#.as_slice(), n).flatten());
    body.extend_from_slice(br#"{"index":0}]}"#);
    let answer = Answer::Json { body, cut: false };
    let (model, content) = response_content(Operation::ChatCompletions, answer);
    assert_eq!(model.as_deref(), Some("m"));
    let content = content.unwrap();
    let choices = content["choices"].as_array().unwrap();
    assert!(choices.len() <= bounded::MAX_NODES, "{}", choices.len());
    assert!(choices.len() > bounded::MAX_NODES / 4);
    assert_eq!(content["cut"], json!(true));
}

#[test]
fn keys_a_client_chose_are_text_and_api_member_names_are_kept() {
    let key = "sk-proj-abcdefghijklmnopqrstuvwxyz0123456789";
    let content = || {
        json!({"prompt": {"id": "pmpt_1", "variables": {
            "customer_name": "Ada", (key): "x", "a long variable name": "y"
        }}})
    };
    // Full: a key a pattern matches is redacted; others are kept.
    let mut full = content();
    apply(&mut full, ContentMode::Full, &defaults());
    let variables = full["prompt"]["variables"].as_object().unwrap();
    assert!(variables.contains_key("customer_name"));
    assert!(variables.contains_key(REDACTED));
    assert!(!full.to_string().contains("abcdefghijklmnop"));
    // Truncate: keys are cut like values; API member names are not.
    let mut cut = content();
    apply(&mut cut, ContentMode::Truncate(4), &defaults());
    let variables = cut["prompt"]["variables"].as_object().unwrap();
    let keys: Vec<&str> = variables.keys().map(String::as_str).collect();
    assert!(keys.contains(&"cust…[truncated]"), "{keys:?}");
    assert!(keys.contains(&"a lo…[truncated]"), "{keys:?}");
    assert!(cut["prompt"].get("variables").is_some());
    // Hash: keys hashed, so equal keys still hash equal; member names kept.
    let mut hashed = content();
    apply(&mut hashed, ContentMode::Hash, &defaults());
    let variables = hashed["prompt"]["variables"].as_object().unwrap();
    assert!(variables.contains_key(&sha256_tag(b"customer_name")));
    assert_eq!(variables.len(), 3);
}

#[test]
fn keys_cut_alike_are_both_kept() {
    let mut content = json!({"variables": {"abcdef": 1, "abcdxy": 2}});
    apply(&mut content, ContentMode::Truncate(4), &defaults());
    assert_eq!(
        content,
        json!({"variables": {"abcd…[truncated]": 1, "abcd…[truncated]#2": 2}})
    );
}

#[test]
fn a_client_request_id_shaped_like_a_credential_is_matched() {
    let defaults = Redactor::defaults();
    assert!(defaults.matches("sk-abcdefghijklmnopqrstuvwxyz0123456789abcdefghijkl"));
    assert!(!defaults.matches("req-2026-12-02.abc_123"));
    assert!(!Redactor::new(false, &[])
        .unwrap()
        .matches("sk-abcdefghijklmnopqrstuvwxyz"));
}

#[test]
fn many_keys_redacted_alike_are_kept_apart_in_linear_time() {
    // 20,000 keys that all redact to `[REDACTED]`: each kept, under its own suffix.
    let n = 20_000;
    let mut variables = Map::new();
    for i in 0..n {
        variables.insert(format!("sk-AAAAAAAAAAAAAAAAAAAA{i:07}"), json!(i));
    }
    let mut content = json!({ "variables": variables });
    apply(&mut content, ContentMode::Full, &defaults());
    let kept = content["variables"].as_object().unwrap();
    assert_eq!(kept.len(), n);
    assert!(kept.contains_key(REDACTED));
    assert!(kept.contains_key(&format!("{REDACTED}#{n}")));
    assert!(!content.to_string().contains("sk-AAAA"));
}

#[test]
fn a_key_after_an_underscore_is_redacted() {
    assert_redacts(
        &defaults(),
        "req_sk-proj-AAAAAAAAAAAAAAAAAAAAAAAA done",
        "req[REDACTED] done",
    );
}

#[test]
fn full_keeps_at_most_full_field_chars_per_field_after_redaction() {
    // A key straddling the bound is redacted whole before the cut.
    let key = "sk-proj-ZZZZZZZZZZZZZZZZZZZZZZZZ";
    let text = format!("{}{key}", "a".repeat(FULL_FIELD_CHARS - 5));
    let mut content = json!({ "messages": [{ "role": "user", "content": text }] });
    apply(&mut content, ContentMode::Full, &defaults());
    let kept = content["messages"][0]["content"].as_str().unwrap();
    assert!(
        kept.ends_with(TRUNCATED_MARKER),
        "{}",
        &kept[kept.len() - 40..]
    );
    assert!(!kept.contains("sk-proj"));
    assert!(kept.chars().count() <= FULL_FIELD_CHARS + TRUNCATED_MARKER.chars().count());
    // At the bound exactly: whole.
    let mut exact = json!({ "content": "b".repeat(FULL_FIELD_CHARS) });
    apply(&mut exact, ContentMode::Full, &defaults());
    assert_eq!(exact["content"].as_str().unwrap().len(), FULL_FIELD_CHARS);
}

#[test]
fn a_key_straddling_the_raw_cut_is_left_out_whole() {
    // `1e400` sends the body to `raw`; an Azure-shaped key straddles its 1 MiB cut.
    let key = "0123456789abcdef0123456789abcdef";
    let mut body = String::from(r#"{"messages":[{"role":"user","content":"x","n":1e400,"t":""#);
    body.push_str(&" ".repeat(MAX_RAW_BYTES - body.len() - 16));
    body.push_str(key);
    body.push_str(r#""}]}"#);
    let content = request_content(Operation::ChatCompletions, body.as_bytes()).unwrap();
    assert_eq!(content["unparsed"], true);
    assert_eq!(content["cut"], true);
    let raw = content["raw"].as_str().unwrap();
    assert!(raw.ends_with(' '), "{:?}", &raw[raw.len() - 40..]);
    assert!(!raw.contains("0123456789"));
}
