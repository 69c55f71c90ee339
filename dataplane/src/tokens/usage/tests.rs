use serde_json::{json, Value};

use super::*;
use crate::mock::{self, MockReply, MockSettings};
use crate::route::Operation;

const CHAT_COMPLETION: &[u8] = include_bytes!("../fixtures/chat_completion.json");
const EMBEDDINGS_RESPONSE: &[u8] = include_bytes!("../fixtures/embeddings_response.json");
const CHAT_REQUEST: &[u8] = include_bytes!("../fixtures/chat_request.json");
const CHAT_REQUEST_STREAM: &[u8] = include_bytes!("../fixtures/chat_request_stream.json");
const SSE: &[u8] = include_bytes!("../fixtures/chat_stream_with_usage.sse");

const FIXTURE_USAGE: Usage = Usage {
    prompt_tokens: 14,
    completion_tokens: 7,
    total_tokens: 21,
};

fn usage(prompt: u64, completion: u64, total: u64) -> Usage {
    Usage {
        prompt_tokens: prompt,
        completion_tokens: completion,
        total_tokens: total,
    }
}

/// The fixture's events, each with its blank line.
fn events(sse: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut start = 0;
    for i in 0..sse.len() {
        if sse[i..].starts_with(b"\n\n") {
            out.push(&sse[start..i + 2]);
            start = i + 2;
        }
    }
    assert_eq!(start, sse.len());
    out
}

/// The fixture without its usage-only chunk: what a client that did not ask must get.
fn without_usage_chunk(sse: &[u8]) -> Vec<u8> {
    events(sse)
        .into_iter()
        .filter(|e| !e.windows(13).any(|w| w == b"\"choices\":[],") || e.ends_with(b"null}\n\n"))
        .flatten()
        .copied()
        .collect()
}

/// Feeds `pieces` to a fresh scanner; returns what the client got and the outcome.
fn run<'a>(
    drop_usage_only: bool,
    pieces: impl IntoIterator<Item = &'a [u8]>,
) -> (Vec<u8>, StreamOutcome) {
    let mut scanner = SseScanner::new(drop_usage_only);
    let mut out = Vec::new();
    for piece in pieces {
        scanner.feed(piece, &mut out).unwrap();
    }
    let outcome = scanner.finish(&mut out);
    (out, outcome)
}

#[test]
fn usage_from_each_fixture() {
    assert_eq!(usage_from_json(CHAT_COMPLETION), Some(usage(27, 21, 48)));
    assert_eq!(usage_from_json(EMBEDDINGS_RESPONSE), Some(usage(10, 0, 10)));
    let responses = br#"{"id":"resp_1","object":"response","output":[{"content":[{"text":"x"}]}],
        "usage":{"input_tokens":36,"input_tokens_details":{"cached_tokens":0},
        "output_tokens":87,"output_tokens_details":{"reasoning_tokens":0},"total_tokens":123}}"#;
    assert_eq!(usage_from_json(responses), Some(usage(36, 87, 123)));
    // No total: the sum.
    let partial = br#"{"usage":{"prompt_tokens":3,"completion_tokens":4}}"#;
    assert_eq!(usage_from_json(partial), Some(usage(3, 4, 7)));
}

#[test]
fn no_usage_reads_as_none() {
    for body in [
        &br#"{"error":{"message":"Rate limit reached","type":"requests","code":"429"}}"#[..],
        br#"{"usage":null}"#,
        br#"{"usage":{}}"#,
        br#"{"usage":"lots"}"#,
        br#"{"choices":[{"usage":{"prompt_tokens":1}}]}"#,
        b"",
        b"not json",
        b"[1,2,3]",
        br#"{"usage":{"prompt_tokens":1}"#,
    ] {
        assert_eq!(
            usage_from_json(body),
            None,
            "{}",
            String::from_utf8_lossy(body)
        );
    }
}

/// Counts are read as the request side reads them: integers, also `100.0` and `1e2`;
/// `null` is absent. Any other type, a fraction, a negative number or a count past
/// MAX_REPORTED_TOKENS makes the whole usage unknown (never a part of it read as the whole);
/// a total below its parts reads as their sum.
#[test]
fn usage_counts_are_read_strictly() {
    let read = |u: &str| usage_from_json(format!(r#"{{"usage":{u}}}"#).as_bytes());
    assert_eq!(
        read(r#"{"prompt_tokens":100.0,"completion_tokens":50,"total_tokens":150.0}"#),
        Some(usage(100, 50, 150))
    );
    assert_eq!(
        read(r#"{"prompt_tokens":1e2,"completion_tokens":5E1,"total_tokens":null}"#),
        Some(usage(100, 50, 150))
    );
    assert_eq!(
        read(r#"{"input_tokens":7,"output_tokens":3}"#),
        Some(usage(7, 3, 10))
    );
    assert_eq!(
        read(r#"{"prompt_tokens":100,"completion_tokens":50,"total_tokens":0}"#),
        Some(usage(100, 50, 150)),
        "a total below its parts"
    );
    for unknown in [
        r#"{"prompt_tokens":"100","completion_tokens":50,"total_tokens":150}"#,
        r#"{"prompt_tokens":100,"completion_tokens":-1,"total_tokens":150}"#,
        r#"{"prompt_tokens":100,"completion_tokens":50,"total_tokens":150.5}"#,
        r#"{"prompt_tokens":true,"completion_tokens":50}"#,
        r#"{"prompt_tokens":[1],"completion_tokens":50}"#,
        r#"{"prompt_tokens":{"n":1},"completion_tokens":50}"#,
        r#"{"prompt_tokens":18446744073709551615,"completion_tokens":5}"#,
        r#"{"prompt_tokens":1,"completion_tokens":1,"total_tokens":100000001}"#,
        r#"{"prompt_tokens":1e300,"completion_tokens":5}"#,
    ] {
        assert_eq!(read(unknown), None, "{unknown}");
    }
    assert_eq!(
        read(r#"{"prompt_tokens":100000000,"completion_tokens":0}"#),
        Some(usage(100_000_000, 0, 100_000_000)),
        "the bound itself is believed"
    );
}

#[test]
fn sse_fixture_whole() {
    let (out, outcome) = run(false, [SSE]);
    assert_eq!(out, SSE);
    assert_eq!(outcome.usage, Some(FIXTURE_USAGE));
    assert!(!outcome.truncated);
    assert_eq!(outcome.events, 8);
    assert_eq!(outcome.dropped, 0);
    assert_eq!(outcome.charge(999), 21);
}

#[test]
fn sse_fixture_every_two_way_split() {
    let expected_dropped = without_usage_chunk(SSE);
    assert_eq!(expected_dropped.len(), SSE.len() - events(SSE)[6].len());
    for drop in [false, true] {
        let want = if drop { &expected_dropped[..] } else { SSE };
        for k in 0..=SSE.len() {
            let (out, outcome) = run(drop, [&SSE[..k], &SSE[k..]]);
            assert_eq!(out, want, "split at {k}, drop {drop}");
            assert_eq!(outcome.usage, Some(FIXTURE_USAGE), "split at {k}");
            assert!(!outcome.truncated);
            assert_eq!(outcome.events, 8);
            assert_eq!(outcome.dropped, u64::from(drop));
        }
    }
}

#[test]
fn sse_fixture_byte_by_byte() {
    for drop in [false, true] {
        let mut scanner = SseScanner::new(drop);
        let mut out = Vec::new();
        let mut seen = Vec::new();
        for byte in SSE.chunks(1) {
            let before = out.len();
            scanner.feed(byte, &mut out).unwrap();
            // Only whole events come out, and only once their blank line arrived.
            if out.len() > before {
                assert!(out.ends_with(b"\n\n"));
                seen.push(out[before..].to_vec());
            }
        }
        let outcome = scanner.finish(&mut out);
        assert_eq!(outcome.usage, Some(FIXTURE_USAGE));
        assert!(!outcome.truncated);
        let want: Vec<Vec<u8>> = events(SSE)
            .into_iter()
            .enumerate()
            .filter(|&(i, _)| !(drop && i == 6))
            .map(|(_, e)| e.to_vec())
            .collect();
        assert_eq!(seen, want);
    }
}

#[test]
fn only_the_usage_only_chunk_is_dropped() {
    let (out, outcome) = run(true, [SSE]);
    assert_eq!(out, without_usage_chunk(SSE));
    assert_eq!(outcome.usage, Some(FIXTURE_USAGE), "usage still counted");
    assert_eq!(outcome.dropped, 1);
    // Azure's first chunk (`choices: []`, `usage: null`) goes through.
    assert!(out.starts_with(events(SSE)[0]));
    assert!(out.ends_with(b"data: [DONE]\n\n"));
}

#[test]
fn crlf_events() {
    let crlf: Vec<u8> = SSE
        .iter()
        .flat_map(|&b| {
            if b == b'\n' {
                vec![b'\r', b'\n']
            } else {
                vec![b]
            }
        })
        .collect();
    for k in (0..=crlf.len()).step_by(7) {
        let (out, outcome) = run(true, [&crlf[..k], &crlf[k..]]);
        assert_eq!(outcome.usage, Some(FIXTURE_USAGE));
        assert_eq!(outcome.events, 8);
        assert_eq!(outcome.dropped, 1);
        assert!(!outcome.truncated);
        assert_eq!(
            out.len(),
            crlf.len() - (events(SSE)[6].len() + 2),
            "split at {k}"
        );
    }
}

#[test]
fn a_cut_stream_is_truncated() {
    let evs = events(SSE);
    // Cut in the middle of the content: no usage, truncated; the half event still goes
    // out at finish (the client sees what the backend sent).
    let cut = evs[..3].concat().len() + 20;
    let (out, outcome) = run(true, [&SSE[..cut]]);
    assert_eq!(out, &SSE[..cut]);
    assert!(outcome.truncated);
    assert_eq!(outcome.usage, None);
    assert_eq!(outcome.charge(123), 123);
    // Cut after the usage chunk, before [DONE]: truncated, but the usage is real.
    let cut = evs[..7].concat().len();
    let (_, outcome) = run(true, [&SSE[..cut]]);
    assert!(outcome.truncated);
    assert_eq!(outcome.charge(123), 21);
    // [DONE] without its blank line still ends the stream.
    let (out, outcome) = run(false, [&SSE[..SSE.len() - 1]]);
    assert!(!outcome.truncated);
    assert_eq!(out, &SSE[..SSE.len() - 1]);
    // Nothing at all.
    let (out, outcome) = run(false, []);
    assert!(out.is_empty() && outcome.truncated && outcome.events == 0);
}

#[test]
fn observe_reads_along_without_holding_back() {
    let mut scanner = SseScanner::new(true);
    for piece in SSE.chunks(5) {
        scanner.observe(piece).unwrap();
    }
    let mut out = Vec::new();
    let outcome = scanner.finish(&mut out);
    assert!(out.is_empty());
    assert_eq!(outcome.usage, Some(FIXTURE_USAGE));
    assert_eq!(outcome.dropped, 0, "observe never drops");
    assert!(!outcome.truncated);
}

#[test]
fn feed_with_lets_the_caller_decide() {
    let mut scanner = SseScanner::new(false);
    let mut out = Vec::new();
    let mut views = Vec::new();
    scanner
        .feed_with(SSE, &mut out, |ev| {
            views.push((ev.usage, ev.usage_only, ev.done));
            if ev.bytes.windows(5).any(|w| w == b", two") {
                Verdict::Drop
            } else {
                Verdict::Forward
            }
        })
        .unwrap();
    assert_eq!(views.len(), 8);
    assert_eq!(views[6], (Some(FIXTURE_USAGE), true, false));
    assert_eq!(views[7], (None, false, true));
    assert!(views[..6].iter().all(|v| *v == (None, false, false)));
    let want: Vec<u8> = events(SSE)
        .into_iter()
        .enumerate()
        .filter(|&(i, _)| i != 3)
        .flat_map(|(_, e)| e.iter().copied())
        .collect();
    assert_eq!(out, want);
}

#[test]
fn an_event_past_the_bound_passes_through_and_scanning_resumes() {
    // One content event of 1.06 MB (a long answer in one event), then the usage-only chunk
    // Sluice asked for, then [DONE]: the big event reaches the client unread, the usage is
    // read and the usage chunk dropped — whatever the pieces.
    let big = format!(
        "data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{}\"}}}}]}}\n\n",
        "x".repeat(1_060_000)
    );
    let usage_chunk = "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2,\"total_tokens\":5}}\n\n";
    let stream = format!("{big}{usage_chunk}data: [DONE]\n\n");
    let want = format!("{big}data: [DONE]\n\n");
    for piece in [1000, 4096, 65_536, 700_000, stream.len()] {
        let mut scanner = SseScanner::new(true);
        let mut out = Vec::new();
        for chunk in stream.as_bytes().chunks(piece) {
            let _ = scanner.feed(chunk, &mut out);
        }
        let outcome = scanner.finish(&mut out);
        assert_eq!(outcome.usage, Some(usage(3, 2, 5)), "pieces of {piece}");
        assert!(!outcome.truncated, "pieces of {piece}");
        assert_eq!(out, want.as_bytes(), "pieces of {piece}");
        // Observed, every byte goes on as it came and the usage is still read.
        let mut scanner = SseScanner::new(false);
        for chunk in stream.as_bytes().chunks(piece) {
            let _ = scanner.observe(chunk);
        }
        assert_eq!(scanner.finish(&mut Vec::new()).usage, Some(usage(3, 2, 5)));
    }
    // A small bound: the event that outgrows it passes unread; the rest is scanned.
    let mut scanner = SseScanner::new(true).with_max_event(120);
    let mut out = Vec::new();
    let evs = events(SSE);
    scanner.feed(&SSE[..100], &mut out).unwrap();
    assert!(out.is_empty());
    let err = scanner.feed(&SSE[100..150], &mut out).unwrap_err();
    assert_eq!(err, SseError::EventTooLarge { limit: 120 });
    assert_eq!(out, &SSE[..150]);
    // Scanning resumed after it: the stream's end is seen.
    let _ = scanner.feed(&SSE[150..], &mut out);
    let outcome = scanner.finish(&mut out);
    assert!(
        !outcome.truncated,
        "the [DONE] after the big event was read"
    );
    // Small events under the bound are fine.
    let mut scanner = SseScanner::new(false).with_max_event(evs[7].len());
    let mut out = Vec::new();
    scanner.feed(evs[7], &mut out).unwrap();
    assert!(scanner.done());
}

#[test]
fn usage_with_spaces_and_multi_line_data() {
    let sse = b"data: {\"choices\": [],\n\
        data:  \"usage\" : {\"prompt_tokens\": 1, \"completion_tokens\": 2, \"total_tokens\": 3}}\n\
        \n\
        : keep-alive comment\n\
        \n\
        data: [DONE]\n\n";
    let (out, outcome) = run(true, [&sse[..]]);
    assert_eq!(outcome.usage, Some(usage(1, 2, 3)));
    assert_eq!(outcome.dropped, 1);
    assert_eq!(outcome.events, 3);
    assert!(!outcome.truncated);
    assert_eq!(out, b": keep-alive comment\n\ndata: [DONE]\n\n");
    // "usage" inside content text is escaped, so never taken for a usage object.
    let sse =
        br#"data: {"choices":[{"delta":{"content":"\"usage\":{\"total_tokens\":5}"}}],"usage":null}

"#;
    let (out, outcome) = run(true, [&sse[..]]);
    assert_eq!(outcome.usage, None);
    assert_eq!(out, &sse[..]);
}

/// The mock backend's answers, read back: the scanner and `usage_from_json` find the same
/// usage the mock reports.
fn mock_stream(op: Operation, body: &[u8]) -> Vec<u8> {
    let MockReply::Stream(mut stream) = mock::reply(&MockSettings::default(), op, body, 0, 1)
    else {
        panic!("not a stream");
    };
    let mut out = Vec::new();
    while stream.next_event(&mut out) {}
    out
}

fn mock_json(op: Operation, body: &[u8]) -> Vec<u8> {
    match mock::reply(&MockSettings::default(), op, body, 0, 1) {
        MockReply::Json { status: 200, body } => body,
        other => panic!("{other:?}"),
    }
}

#[test]
fn mock_chat_stream_with_injected_usage() {
    let client = br#"{"messages":[{"role":"user","content":"Count from one to three."}],"stream":true,"max_tokens":5}"#;
    let plain = mock_stream(Operation::ChatCompletions, client);
    let injected = inject_include_usage(client).unwrap();
    let with_usage = mock_stream(Operation::ChatCompletions, &injected);
    let want = {
        let mut body: Value = serde_json::from_slice(client).unwrap();
        body["stream"] = json!(false);
        usage_from_json(&mock_json(
            Operation::ChatCompletions,
            &serde_json::to_vec(&body).unwrap(),
        ))
    };
    assert!(want.is_some());
    for k in [1, 3, 64, with_usage.len()] {
        let (out, outcome) = run(true, with_usage.chunks(k));
        assert_eq!(outcome.usage, want);
        assert_eq!(outcome.dropped, 1);
        assert!(!outcome.truncated);
        // What the client sees differs from what it would have had unaided only in the
        // `"usage":null` each chunk now carries.
        let unaided = String::from_utf8(plain.clone()).unwrap();
        let seen = String::from_utf8(out)
            .unwrap()
            .replace(",\"usage\":null", "");
        assert_eq!(seen, unaided.replace(",\"usage\":null", ""));
    }
}

#[test]
fn mock_responses_stream() {
    let body = br#"{"model":"gpt-4.1","input":"Explain a token bucket.","stream":true}"#;
    let sse = mock_stream(Operation::Responses, body);
    let want = usage_from_json(&mock_json(
        Operation::Responses,
        br#"{"model":"gpt-4.1","input":"Explain a token bucket."}"#,
    ));
    assert!(want.is_some());
    for k in [1, 10, sse.len()] {
        let (out, outcome) = run(true, sse.chunks(k));
        assert_eq!(out, sse, "nothing dropped from a Responses stream");
        assert_eq!(outcome.usage, want);
        assert!(!outcome.truncated);
    }
    // Cut before response.completed: truncated.
    let cut = sse.len() - 40;
    let (_, outcome) = run(true, [&sse[..cut]]);
    assert!(outcome.truncated);
    // max_output_tokens cut the answer short: response.incomplete also ends the stream.
    let body = br#"{"input":"Explain a token bucket.","stream":true,"max_output_tokens":2}"#;
    let sse = mock_stream(Operation::Responses, body);
    assert!(sse.windows(19).any(|w| w == b"response.incomplete"));
    let (_, outcome) = run(true, [&sse[..]]);
    assert!(!outcome.truncated);
    assert_eq!(outcome.usage.map(|u| u.completion_tokens), Some(2));
}

#[test]
fn inject_leaves_asked_and_unstreamed_requests_alone() {
    assert_eq!(
        inject_include_usage(CHAT_REQUEST_STREAM),
        None,
        "already asked"
    );
    assert_eq!(inject_include_usage(CHAT_REQUEST), None, "not streamed");
    assert_eq!(
        inject_include_usage(br#"{"input":"x","stream":true}"#),
        None
    );
    assert_eq!(inject_include_usage(b"not json"), None);
    assert_eq!(inject_include_usage(b"[]"), None);
}

/// Checks `out` is `body` with `include_usage` set and nothing else changed.
fn assert_injected(body: &[u8], out: &[u8]) {
    let mut want: Value = serde_json::from_slice(body).unwrap();
    let got: Value = serde_json::from_slice(out).unwrap();
    match want.get_mut("stream_options") {
        Some(Value::Object(o)) => {
            o.insert("include_usage".into(), json!(true));
        }
        _ => want["stream_options"] = json!({"include_usage": true}),
    }
    assert_eq!(got, want, "{}", String::from_utf8_lossy(out));
}

#[test]
fn inject_sets_include_usage_keeping_everything_else() {
    // The stream fixture without its stream_options.
    let fixture: Value = serde_json::from_slice(CHAT_REQUEST_STREAM).unwrap();
    let mut body = fixture.clone();
    body.as_object_mut().unwrap().remove("stream_options");
    let body = serde_json::to_vec_pretty(&body).unwrap();
    let out = inject_include_usage(&body).unwrap();
    assert_injected(&body, &out);
    let back: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(back, fixture);
    // Byte for byte, the original is still there around the inserted member.
    let inserted = br#""stream_options":{"include_usage":true},"#;
    assert_eq!(out.len(), body.len() + inserted.len());
    assert_eq!(&out[..1], b"{");
    assert_eq!(&out[1..1 + inserted.len()], inserted);
    assert_eq!(&out[1 + inserted.len()..], &body[1..]);

    for body in [
        &br#"{"stream":true,"messages":[],"stream_options":{"include_usage":false}}"#[..],
        br#"{"stream":true,"messages":[],"stream_options":{"include_usage":null,"x":[1,{"y":"}"}]}}"#,
        br#"{"stream":true,"prompt":"a","stream_options":{}}"#,
        br#"{"stream":true,"prompt":"a","stream_options":{ "other" : 1 } }"#,
        br#"{"stream":true,"messages":[],"stream_options":null}"#,
        br#"{"stream":true,"messages":[],"stream_options":"yes"}"#,
        br#"  { "messages" : [ {"content":"{\"stream_options\":1}"} ] , "stream" : true }  "#,
        br#"{"stream":true,"messages":[],"seed":123456789012345678901234567890,"t":0.1}"#,
    ] {
        let out = inject_include_usage(body).unwrap();
        assert_injected(body, &out);
    }
    // Big numbers and float spellings are kept as written, not re-serialised.
    let body = br#"{"stream":true,"messages":[],"seed":123456789012345678901234567890,"t":1.0e0}"#;
    let out = inject_include_usage(body).unwrap();
    assert!(out.ends_with(br#""seed":123456789012345678901234567890,"t":1.0e0}"#));
    // Ambiguous bodies are left alone.
    let dup = br#"{"stream":true,"messages":[],"stream_options":{},"stream_options":null}"#;
    assert_eq!(inject_include_usage(dup), None);
    // A key spelled with escapes is the key the backend reads: it is the one set.
    let esc = br#"{"stream":true,"messages":[],"stream\u005foptions":{"include_usage":false}}"#;
    let out = inject_include_usage(esc).unwrap();
    assert_eq!(
        out,
        br#"{"stream":true,"messages":[],"stream\u005foptions":{"include_usage":true}}"#
    );
}

/// xorshift64*: a reproducible stream of pseudo-random numbers without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

#[test]
fn garbage_never_panics() {
    use crate::tokens::estimate::{reservation, Estimator, Family, RequestFacts};
    let seeds: [&[u8]; 5] = [
        CHAT_REQUEST,
        CHAT_REQUEST_STREAM,
        CHAT_COMPLETION,
        SSE,
        b"{}",
    ];
    let alphabet = b"{}[]\":,\\ \n\rdata:[DONE]usage0123456789truenull\xff\xc3";
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for round in 0..3000 {
        let mut input = seeds[round % seeds.len()].to_vec();
        for _ in 0..1 + rng.below(8) {
            let at = rng.below(input.len() + 1);
            match rng.below(3) {
                0 if !input.is_empty() => {
                    input.remove(at.min(input.len() - 1));
                }
                1 => input.insert(at, alphabet[rng.below(alphabet.len())]),
                _ => {
                    let cut = rng.below(input.len() + 1);
                    input.truncate(cut);
                }
            }
        }
        for op in [
            Operation::ChatCompletions,
            Operation::Completions,
            Operation::Embeddings,
            Operation::Responses,
        ] {
            if let Ok(facts) = RequestFacts::parse(op, &input) {
                for est in [Estimator::Heuristic, Estimator::Bpe(Family::O200k)] {
                    let prompt = est.estimate_prompt(&facts);
                    reservation(&facts, prompt, 100);
                }
            }
        }
        usage_from_json(&input);
        if let Some(out) = inject_include_usage(&input) {
            // Valid JSON in, valid JSON out.
            assert!(serde_json::from_slice::<Value>(&out).is_ok());
        }
        let mut scanner = SseScanner::new(rng.below(2) == 0).with_max_event(1 + rng.below(400));
        let mut out = Vec::new();
        let mut rest = &input[..];
        while !rest.is_empty() {
            let k = 1 + rng.below(rest.len());
            let _ = scanner.feed(&rest[..k], &mut out);
            rest = &rest[k..];
        }
        let outcome = scanner.finish(&mut out);
        assert!(out.len() <= input.len());
        if outcome.dropped == 0 {
            assert_eq!(out, input, "nothing dropped: everything forwarded");
        }
    }
}
