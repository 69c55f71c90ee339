use std::time::{Duration, Instant};

use super::*;
use crate::tokens::strict::Refusal;

const CHAT_REQUEST: &[u8] = include_bytes!("../fixtures/chat_request.json");
const CHAT_REQUEST_STREAM: &[u8] = include_bytes!("../fixtures/chat_request_stream.json");
const EMBEDDINGS_REQUEST: &[u8] = include_bytes!("../fixtures/embeddings_request.json");

const O200K: Estimator = Estimator::Bpe(Family::O200k);
const CL100K: Estimator = Estimator::Bpe(Family::Cl100k);

fn chat(body: &[u8]) -> RequestFacts<'_> {
    RequestFacts::parse(Operation::ChatCompletions, body).unwrap()
}

#[test]
fn chat_fixture_facts() {
    let facts = chat(CHAT_REQUEST);
    assert_eq!(facts.model, None);
    assert!(!facts.stream);
    assert!(!facts.include_usage);
    assert_eq!(facts.max_tokens, Some(100));
    assert_eq!(facts.n, 1);
    assert_eq!(facts.prompt.messages, 2);
    assert_eq!(facts.prompt.token_ids, 0);
    assert_eq!(
        facts.prompt.pieces,
        [
            "You are a concise assistant.",
            "Explain a token bucket in one sentence."
        ]
    );
    // Unescaped strings are borrowed from the body, not copied.
    assert!(facts
        .prompt
        .pieces
        .iter()
        .all(|p| matches!(p, Cow::Borrowed(_))));
    assert!(!facts.needs_usage_injection());
}

#[test]
fn stream_fixture_facts() {
    let facts = chat(CHAT_REQUEST_STREAM);
    assert!(facts.stream);
    assert!(facts.include_usage);
    assert_eq!(facts.max_tokens, Some(20));
    assert!(!facts.needs_usage_injection());

    let asked_not = br#"{"messages":[{"role":"user","content":"hi"}],"stream":true}"#;
    assert!(chat(asked_not).needs_usage_injection());
    let said_false = br#"{"messages":[],"stream":true,"stream_options":{"include_usage":false}}"#;
    assert!(chat(said_false).needs_usage_injection());
    // Responses streams always carry usage; embeddings never stream.
    let responses = br#"{"input":"hi","stream":true}"#;
    let facts = RequestFacts::parse(Operation::Responses, responses).unwrap();
    assert!(facts.stream && !facts.needs_usage_injection());
}

#[test]
fn bpe_counts_match_tiktoken() {
    // tiktoken: o200k "Explain| a| token| bucket| in| one| sentence|.", cl100k splits
    // "Ex|plain".
    assert_eq!(
        O200K.count_text("Explain a token bucket in one sentence."),
        8
    );
    assert_eq!(
        CL100K.count_text("Explain a token bucket in one sentence."),
        9
    );
    assert_eq!(O200K.count_text("You are a concise assistant."), 6);
    assert_eq!(O200K.count_text(""), 0);
    // Where the vocabularies differ: o200k has far more non-English merges.
    let german = "Die Straßenbahnhaltestelle liegt gegenüber dem Rathaus.";
    assert!(O200K.count_text(german) < CL100K.count_text(german));
}

#[test]
fn chat_estimate_adds_message_framing() {
    let facts = chat(CHAT_REQUEST);
    // 6 + 8 text tokens, 4 per message, 3 to prime the reply: what OpenAI's cookbook
    // counts for gpt-4o.
    assert_eq!(O200K.estimate_prompt(&facts), 6 + 8 + 2 * 4 + 3);
    assert_eq!(CL100K.estimate_prompt(&facts), 26);
    // 28 and 39 bytes: 7 + 10, plus the same framing. Within 15 % of the BPE count.
    let heuristic = Estimator::Heuristic.estimate_prompt(&facts);
    assert_eq!(heuristic, 7 + 10 + 11);
    assert!(heuristic.abs_diff(25) * 100 <= 25 * 15);
}

#[test]
fn reservation_adds_the_completion_cap_times_n() {
    let facts = chat(CHAT_REQUEST);
    let prompt = O200K.estimate_prompt(&facts);
    assert_eq!(reservation(&facts, prompt, 4096), 25 + 100);

    let no_cap =
        br#"{"messages":[{"role":"user","content":"Explain a token bucket in one sentence."}]}"#;
    let facts = chat(no_cap);
    let prompt = O200K.estimate_prompt(&facts);
    assert_eq!(prompt, 8 + 4 + 3);
    assert_eq!(reservation(&facts, prompt, 4096), 15 + 4096);

    let n3 = br#"{"messages":[{"role":"user","content":"hi"}],"n":3,"max_tokens":50,
        "max_completion_tokens":40}"#;
    let facts = chat(n3);
    assert_eq!(facts.n, 3);
    assert_eq!(facts.max_tokens, Some(50), "both given: the larger");
    assert_eq!(reservation(&facts, 10, 4096), 10 + 3 * 50);
    // n absent: default cap once.
    let facts = chat(br#"{"messages":[],"n":3}"#);
    assert_eq!(reservation(&facts, 10, 100), 310);

    // Completions: best_of counts when larger than n.
    let body = br#"{"prompt":"Say this is a test","max_tokens":7,"n":2,"best_of":5}"#;
    let facts = RequestFacts::parse(Operation::Completions, body).unwrap();
    assert_eq!(facts.n, 5);
    assert_eq!(facts.prompt.pieces, ["Say this is a test"]);
    assert_eq!(reservation(&facts, 5, 16), 5 + 35);

    // Embeddings: the prompt only, whatever the body says.
    let facts = RequestFacts::parse(Operation::Embeddings, EMBEDDINGS_REQUEST).unwrap();
    assert_eq!(facts.prompt.pieces.len(), 2);
    let prompt = CL100K.estimate_prompt(&facts);
    assert_eq!(reservation(&facts, prompt, 4096), u64::from(prompt));

    // Responses: max_output_tokens.
    let body = br#"{"model":"gpt-4.1","input":"hi","max_output_tokens":64}"#;
    let facts = RequestFacts::parse(Operation::Responses, body).unwrap();
    assert_eq!(facts.model.as_deref(), Some("gpt-4.1"));
    assert_eq!(reservation(&facts, 1, 4096), 65);

    // A huge cap saturates rather than wrapping.
    let body = br#"{"messages":[],"max_tokens":18446744073709551615,"n":2}"#;
    assert_eq!(reservation(&chat(body), 10, 1), u64::MAX);
}

#[test]
fn embeddings_fixture_estimate() {
    let facts = RequestFacts::parse(Operation::Embeddings, EMBEDDINGS_REQUEST).unwrap();
    // "The food was delicious" (4) + "and the waiter was friendly" (5): the fixture's
    // answer reports 10 with its made-up values; tiktoken gives 9.
    assert_eq!(CL100K.estimate_prompt(&facts), 9);
    assert_eq!(Estimator::Heuristic.estimate_prompt(&facts), 6 + 7);
}

#[test]
fn token_id_prompts_count_exactly() {
    let body = br#"{"input":[[1,2,3],[4,5]],"model":"text-embedding-3-small"}"#;
    let facts = RequestFacts::parse(Operation::Embeddings, body).unwrap();
    assert_eq!(facts.prompt.token_ids, 5);
    assert_eq!(O200K.estimate_prompt(&facts), 5);
    assert_eq!(Estimator::Heuristic.estimate_prompt(&facts), 5);

    let body = br#"{"prompt":[1,2,3,4],"max_tokens":1}"#;
    let facts = RequestFacts::parse(Operation::Completions, body).unwrap();
    assert_eq!(facts.prompt.token_ids, 4);
    let body = br#"{"input":[17,18]}"#;
    let facts = RequestFacts::parse(Operation::Embeddings, body).unwrap();
    assert_eq!(facts.prompt.token_ids, 2);
}

#[test]
fn chat_parts_tools_and_responses_items() {
    let body = br#"{
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [
                {"type": "text", "text": "What is in this image?"},
                {"type": "image_url", "image_url": {"url": "https://example.invalid/a.png"}}
            ]},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_1", "type": "function",
                 "function": {"name": "lookup", "arguments": "{\"q\":\"bucket\"}"}}
            ]},
            {"role": "tool", "tool_call_id": "call_1", "content": "found"}
        ],
        "tools": [{"type": "function", "function": {"name": "lookup",
            "description": "Looks a word up", "parameters": {"type": "object"}}}],
        "temperature": 0.5
    }"#;
    let facts = chat(body);
    assert_eq!(facts.model.as_deref(), Some("gpt-4o-mini"));
    assert_eq!(facts.prompt.messages, 4);
    let pieces: Vec<&str> = facts.prompt.pieces.iter().map(|p| p.as_ref()).collect();
    for want in [
        "Be brief.",
        "What is in this image?",
        "lookup",
        "{\"q\":\"bucket\"}",
        "found",
        "Looks a word up",
    ] {
        assert!(pieces.contains(&want), "{want:?} missing from {pieces:?}");
    }
    assert!(!pieces.iter().any(|p| p.contains("example.invalid")));
    // An escaped string is unescaped into an owned piece.
    assert!(facts
        .prompt
        .pieces
        .iter()
        .any(|p| matches!(p, Cow::Owned(s) if s == "{\"q\":\"bucket\"}")));

    let body = br#"{"model":"o4-mini","instructions":"Answer in French.","input":[
        {"role":"user","content":[{"type":"input_text","text":"Hello there"}]},
        {"type":"function_call_output","call_id":"c","output":"42"}
    ]}"#;
    let facts = RequestFacts::parse(Operation::Responses, body).unwrap();
    assert_eq!(
        facts.prompt.pieces,
        ["Answer in French.", "Hello there", "42"]
    );
    assert_eq!(facts.prompt.messages, 0, "no chat framing for responses");
}

#[test]
fn fields_of_another_api_are_not_prompt_text() {
    // `input` in a chat body, `messages` in an embeddings body: not what those APIs read.
    let facts = chat(br#"{"messages":[{"role":"user","content":"a"}],"input":"zzz"}"#);
    assert_eq!(facts.prompt.pieces, ["a"]);
    let body = br#"{"input":"a","messages":[{"role":"user","content":"zzz"}]}"#;
    let facts = RequestFacts::parse(Operation::Embeddings, body).unwrap();
    assert_eq!(facts.prompt.pieces, ["a"]);
    assert_eq!(facts.prompt.messages, 0);
}

fn refusal(body: &[u8]) -> Refusal {
    match RequestFacts::parse(Operation::ChatCompletions, body) {
        Err(FactsError::Refused(r)) => r,
        other => panic!("{}: {other:?}", String::from_utf8_lossy(body)),
    }
}

#[test]
fn mistyped_decision_fields_are_refused_naming_the_field() {
    use crate::tokens::strict::Reason::Type;
    for (body, param) in [
        (&br#"{"max_tokens":"100"}"#[..], "max_tokens"),
        (br#"{"max_tokens":1.5}"#, "max_tokens"),
        (br#"{"max_tokens":-1}"#, "max_tokens"),
        (br#"{"max_completion_tokens":[1]}"#, "max_completion_tokens"),
        (br#"{"max_output_tokens":true}"#, "max_output_tokens"),
        (br#"{"n":-2}"#, "n"),
        (br#"{"n":"2"}"#, "n"),
        (br#"{"best_of":{}}"#, "best_of"),
        (br#"{"stream":"true"}"#, "stream"),
        (br#"{"stream":1}"#, "stream"),
        (br#"{"stream_options":[1]}"#, "stream_options"),
        (br#"{"stream_options":"yes"}"#, "stream_options"),
        (
            br#"{"stream_options":{"include_usage":"false"}}"#,
            "stream_options.include_usage",
        ),
        (br#"{"model":7}"#, "model"),
        (br#"{"model":["a"]}"#, "model"),
    ] {
        let r = refusal(body);
        assert_eq!(r.param, param, "{}", String::from_utf8_lossy(body));
        assert!(matches!(r.reason, Type(_)), "{r:?}");
        assert!(r.to_string().contains(param), "{r}");
    }
}

#[test]
fn repeated_keys_are_refused_in_every_spelling() {
    use crate::tokens::strict::Reason::Duplicate;
    for (body, param) in [
        (&br#"{"stream":true,"stream":false}"#[..], "stream"),
        (br#"{"stream_options":{"include_usage":true},"stream_options":{"include_usage":false}}"#, "stream_options"),
        (br#"{"stream_options":{"include_usage":true,"include_usage":false}}"#, "stream_options.include_usage"),
        (br#"{"model":"a","model":"b"}"#, "model"),
        (br#"{"max_tokens":1,"max_tokens":100000}"#, "max_tokens"),
        (br#"{"max_completion_tokens":1,"max_completion_tokens":2}"#, "max_completion_tokens"),
        (br#"{"n":1,"n":50}"#, "n"),
        (br#"{"messages":[],"messages":[{"content":"long"}]}"#, "messages"),
        // Escapes spell the same key to every JSON parser.
        (br#"{"stream":false,"str\u0065am":true}"#, "stream"),
        (br#"{"max_tokens":1,"max\u005ftokens":9}"#, "max_tokens"),
    ] {
        let r = refusal(body);
        assert_eq!((r.param, r.reason), (param, Duplicate), "{}", String::from_utf8_lossy(body));
    }
    // A field's name in another case: Go's encoding/json would read it as the field.
    for (body, param) in [
        (&br#"{"MODEL":"other"}"#[..], "model"),
        (br#"{"max_tokens":1,"Max_Tokens":99999}"#, "max_tokens"),
        (br#"{"Stream":true}"#, "stream"),
        (br#"{"N":5}"#, "n"),
        // Letters Unicode folds into ASCII ones: U+017F is `s`, U+212A is `k`.
        ("{\"me\u{17f}\u{17f}ages\":[]}".as_bytes(), "messages"),
        ("{\"max_to\u{212a}ens\":99999}".as_bytes(), "max_tokens"),
    ] {
        let r = refusal(body);
        assert_eq!(
            (r.param, r.reason),
            (param, crate::tokens::strict::Reason::OtherCase),
            "{}",
            String::from_utf8_lossy(body)
        );
    }
    // Keys Sluice does not read may repeat: the backend decides what they mean.
    assert!(RequestFacts::parse(Operation::ChatCompletions, br#"{"user":"a","user":"b"}"#).is_ok());
}

#[test]
fn decision_fields_take_null_and_integral_numbers() {
    let facts =
        chat(br#"{"max_tokens":null,"n":null,"stream":null,"stream_options":null,"model":null}"#);
    assert_eq!(facts.max_tokens, None);
    assert_eq!(facts.n, 1);
    assert!(!facts.stream && !facts.include_usage);
    assert_eq!(facts.model, None);
    let facts = chat(
        br#"{"max_tokens":100.0,"n":2e0,"stream":true,"stream_options":{"include_usage":null}}"#,
    );
    assert_eq!(facts.max_tokens, Some(100));
    assert_eq!(facts.n, 2);
    assert!(facts.stream && !facts.include_usage);
    let facts =
        chat(br#"{"max_tokens":1e3,"stream_options":{"include_usage":true,"other":[1,1]}}"#);
    assert_eq!(facts.max_tokens, Some(1000));
    assert!(facts.include_usage);
}

#[test]
fn mistyped_prompt_fields_read_as_absent() {
    let facts = chat(br#"{"messages":"nope","n":0,"prompt":7}"#);
    assert_eq!(facts.n, 1);
    assert_eq!(facts.prompt.messages, 0);
    let facts = chat(br#"{"messages":[{"content":{"x":[1]}}]}"#);
    assert_eq!(facts.prompt.messages, 1);

    // What serde_json refuses and some backends read: NaN, a lone surrogate, a number out
    // of range, a second value.
    for body in [
        &b""[..],
        b"[1,2]",
        b"{\"a\":1} x",
        b"{\"a\":",
        br#"{"temperature":NaN}"#,
        br#"{"messages":[{"content":"\ud800"}]}"#,
        br#"{"max_tokens":1e400}"#,
        br#"{"model":"a"}{"model":"b"}"#,
    ] {
        let parsed = RequestFacts::parse(Operation::ChatCompletions, body);
        assert!(
            matches!(parsed, Err(FactsError::NotJson(_))),
            "{}: {parsed:?}",
            String::from_utf8_lossy(body)
        );
    }
}

#[test]
fn families_by_model_name() {
    use Family::{Cl100k, O200k};
    for (model, want) in [
        ("gpt-4o", O200k),
        ("gpt-4o-mini-2024-07-18", O200k),
        ("GPT-4O", O200k),
        ("gpt-4.1-nano", O200k),
        ("gpt-5", O200k),
        ("o1-preview", O200k),
        ("o3-mini", O200k),
        ("o4-mini", O200k),
        ("gpt-4", Cl100k),
        ("gpt-4-turbo", Cl100k),
        ("gpt-4-32k", Cl100k),
        ("gpt-3.5-turbo", Cl100k),
        ("gpt-35-turbo", Cl100k),
        ("text-embedding-3-small", Cl100k),
        ("text-embedding-ada-002", Cl100k),
    ] {
        assert_eq!(family_for_model(model, Cl100k), want, "{model}");
        assert_eq!(family_for_model(model, O200k), want, "{model}");
    }
    assert_eq!(family_for_model("llama-3-70b", O200k), O200k);
    assert_eq!(family_for_model("llama-3-70b", Cl100k), Cl100k);
    assert_eq!(family_for_model("", Cl100k), Cl100k);
    assert_eq!("o200k_base".parse(), Ok(O200k));
    assert_eq!("cl100k".parse(), Ok(Cl100k));
    assert!("p50k_base".parse::<Family>().is_err());
    assert_eq!(O200k.to_string(), "o200k_base");
}

/// Prose with the whitespace shapes the pre-tokeniser treats specially.
fn prose(bytes: usize) -> String {
    let words = [
        "The",
        "bucket",
        "refills",
        "at",
        "a",
        "fixed",
        "rate;",
        "requests",
        "take",
        "tokens",
        "1234567",
        "ünïcödé",
        "漢字",
        "  double",
        "\n\nnew",
        "paragraph.",
        "\ttab",
        "it's",
        "(parens)",
        "end.\n",
    ];
    let mut s = String::new();
    let mut i = 0;
    while s.len() < bytes {
        s.push_str(words[i % words.len()]);
        s.push(' ');
        i += 7;
    }
    s
}

/// tiktoken's own count (the reference `tiktoken-rs` port of OpenAI's library).
fn tiktoken(family: Family, text: &str) -> u64 {
    let bpe = match family {
        Family::O200k => tiktoken_rs::o200k_base_singleton(),
        Family::Cl100k => tiktoken_rs::cl100k_base_singleton(),
    };
    bpe.count_ordinary(text) as u64
}

#[test]
fn counts_equal_tiktoken_on_fixtures_and_prose() {
    let fixtures = [
        include_str!("../fixtures/chat_request.json"),
        include_str!("../fixtures/chat_request_stream.json"),
        include_str!("../fixtures/chat_completion.json"),
        include_str!("../fixtures/chat_stream_with_usage.sse"),
        include_str!("../fixtures/embeddings_request.json"),
        include_str!("../fixtures/embeddings_response.json"),
    ];
    for family in [Family::O200k, Family::Cl100k] {
        let est = Estimator::Bpe(family);
        for (i, text) in fixtures.iter().enumerate() {
            assert_eq!(
                est.count_text(text),
                tiktoken(family, text),
                "{family}, fixture {i}"
            );
            // And each prompt piece a request fixture yields, as admission counts them.
            for op in [Operation::ChatCompletions, Operation::Embeddings] {
                if let Ok(facts) = RequestFacts::parse(op, text.as_bytes()) {
                    for piece in &facts.prompt.pieces {
                        assert_eq!(est.count_text(piece), tiktoken(family, piece), "{piece:?}");
                    }
                }
            }
        }
        for len in [0, 1, 100, 1000, 5000, 20_000] {
            let text = prose(len);
            assert_eq!(
                est.count_text(&text),
                tiktoken(family, &text),
                "{family}, {len} bytes"
            );
        }
    }
}

#[test]
fn long_runs_count_exactly() {
    // Runs without a space, where the old estimator cut the text every 256 bytes and so
    // drifted from tiktoken by a token or two per cut; short enough for tiktoken's
    // quadratic merge to finish quickly.
    let runs = [
        "a".repeat(3000),
        "abc123".repeat(500),
        "漢字かなカナ".repeat(200),
        "=-".repeat(1500),
        " ".repeat(3000),
        "\n\t ".repeat(1000),
        "https://example.invalid/".repeat(100),
        "e\u{301}".repeat(500),
    ];
    for family in [Family::O200k, Family::Cl100k] {
        for text in &runs {
            assert_eq!(
                Estimator::Bpe(family).count_text(text),
                tiktoken(family, text),
                "{family}, {:?}…",
                text.chars().take(6).collect::<String>()
            );
        }
    }
}

#[test]
fn long_runs_without_spaces_stay_linear() {
    // One pre-token of 200 KiB takes tiktoken's merge many seconds; the linear-time encoder
    // takes milliseconds. The bound here is loose for slow debug builds on busy machines.
    let start = Instant::now();
    let letters = "a".repeat(200 * 1024);
    let n = O200K.count_text(&letters);
    assert!(n > 0 && n < 200 * 1024, "{n}");
    let spaces = " ".repeat(200 * 1024);
    assert!(O200K.count_text(&spaces) > 0);
    let cjk = "漢".repeat(50 * 1024);
    assert!(O200K.count_text(&cjk) > 0);
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn warm_builds_both_tables() {
    assert!(O200K.warm());
    assert!(CL100K.warm());
    assert!(Estimator::Heuristic.warm());
}

#[test]
fn a_completions_batch_reserves_a_cap_per_prompt() {
    fn completions(body: &[u8]) -> RequestFacts<'_> {
        RequestFacts::parse(Operation::Completions, body).unwrap()
    }
    for (body, n) in [
        (&br#"{"prompt":"one","max_tokens":100}"#[..], 1),
        (br#"{"prompt":["a","b","c"],"max_tokens":100}"#, 3),
        (br#"{"prompt":["a","b"],"n":2,"max_tokens":100}"#, 4),
        (
            br#"{"prompt":["a","b"],"best_of":3,"n":2,"max_tokens":100}"#,
            6,
        ),
        // One tokenised prompt, and a batch of tokenised prompts (even of one token each).
        (br#"{"prompt":[1,2,3],"max_tokens":100}"#, 1),
        (br#"{"prompt":[[1],[2],[3],[4]],"max_tokens":100}"#, 4),
        (br#"{"prompt":[[1,2],"b"],"max_tokens":100}"#, 2),
    ] {
        let facts = completions(body);
        assert_eq!(facts.n, n, "{}", String::from_utf8_lossy(body));
        assert_eq!(
            reservation(&facts, 0, 1000),
            100 * u64::from(n),
            "{}",
            String::from_utf8_lossy(body)
        );
    }
    // The batch's text is all counted.
    let facts = completions(br#"{"prompt":["alpha","beta"],"suffix":"gamma"}"#);
    assert_eq!(facts.prompt.pieces, ["alpha", "beta", "gamma"]);
    let facts = completions(br#"{"prompt":[[1,2],[3]]}"#);
    assert_eq!(facts.prompt.token_ids, 3);
}

#[test]
fn a_cap_of_zero_reserves_the_default() {
    for body in [
        &br#"{"max_tokens":0}"#[..],
        br#"{"max_tokens":0.0}"#,
        br#"{"max_tokens":-0}"#,
    ] {
        assert_eq!(
            reservation(&chat(body), 10, 1000),
            1010,
            "{}",
            String::from_utf8_lossy(body)
        );
    }
}

#[test]
fn chat_with_both_caps_reserves_the_larger() {
    for body in [
        &br#"{"max_completion_tokens":1,"max_tokens":100000}"#[..],
        br#"{"max_tokens":100000,"max_completion_tokens":1}"#,
        br#"{"max_tokens":1,"max_completion_tokens":100000}"#,
    ] {
        assert_eq!(chat(body).max_tokens, Some(100_000));
    }
}
