use serde_json::Value;

use super::*;

const CHAT_COMPLETION: &[u8] = include_bytes!("../../fixtures/chat_completion.json");
const EMBEDDINGS_RESPONSE: &[u8] = include_bytes!("../../fixtures/embeddings_response.json");
const RESPONSES: &[u8] = br#"{"id":"resp_1","object":"response","model":"gpt-4.1-2025-04-14","output":[{"content":[{"text":"x \"usage\": {\"input_tokens\": 1}"}]}],
    "usage":{"input_tokens":36,"input_tokens_details":{"cached_tokens":0},
    "output_tokens":87,"output_tokens_details":{"reasoning_tokens":0},"total_tokens":123}}"#;

fn usage(prompt: u64, completion: u64, total: u64) -> Usage {
    Usage {
        prompt_tokens: prompt,
        completion_tokens: completion,
        total_tokens: total,
    }
}

fn scan<'a>(pieces: impl IntoIterator<Item = &'a [u8]>) -> Option<Usage> {
    let mut scanner = JsonUsageScanner::new();
    for piece in pieces {
        scanner.feed(piece);
    }
    scanner.finish()
}

fn whole(body: &[u8]) -> Option<Usage> {
    scan([body])
}

/// The usage serde_json finds when it reads the body as a whole `Value`.
fn by_value(body: &[u8]) -> Option<Option<Usage>> {
    let value: Value = serde_json::from_slice(body).ok()?;
    let object = value.as_object()?;
    Some(
        object
            .get("usage")
            .and_then(|u| serde_json::from_value::<UsageField>(u.clone()).ok())
            .and_then(|f| f.0),
    )
}

#[test]
fn every_split_of_every_fixture_gives_the_same_usage() {
    for (body, want) in [
        (CHAT_COMPLETION, usage(27, 21, 48)),
        (EMBEDDINGS_RESPONSE, usage(10, 0, 10)),
        (RESPONSES, usage(36, 87, 123)),
    ] {
        assert_eq!(whole(body), Some(want));
        assert_eq!(by_value(body), Some(Some(want)));
        for at in 0..=body.len() {
            assert_eq!(
                scan([&body[..at], &body[at..]]),
                Some(want),
                "split at {at}"
            );
        }
        assert_eq!(scan(body.chunks(1)), Some(want), "byte by byte");
        for size in [2, 3, 7, 64] {
            assert_eq!(scan(body.chunks(size)), Some(want), "pieces of {size}");
        }
    }
}

#[test]
fn every_three_way_split_of_an_escaped_key() {
    let body = br#"{"a":"\\\"","us\u0061ge" : {"prompt_tokens":3,"completion_tokens":2}, "b":[1,-2.5e3,true,false,null,{}] }"#;
    let want = Some(usage(3, 2, 5));
    assert_eq!(whole(body), want);
    for a in 0..=body.len() {
        for b in a..=body.len() {
            assert_eq!(scan([&body[..a], &body[a..b], &body[b..]]), want, "{a} {b}");
        }
    }
}

#[test]
fn the_key_is_compared_unescaped() {
    for body in [
        &br#"{"usage":{"prompt_tokens":1,"completion_tokens":1}}"#[..],
        br#"{"\u0075\u0073\u0061\u0067\u0065":{"prompt_tokens":1,"completion_tokens":1}}"#,
        br#"{"\u0075\u0073\u0061\u0067\u0065":{"prompt_tokens":1,"completion_tokens":1}}"#,
        br#"{"usag\u0065":{"prompt_tokens":1,"completion_tokens":1}}"#,
    ] {
        assert_eq!(
            whole(body),
            Some(usage(1, 1, 2)),
            "{}",
            String::from_utf8_lossy(body)
        );
        assert_eq!(by_value(body), Some(Some(usage(1, 1, 2))));
    }
    for body in [
        &br#"{"Usage":{"prompt_tokens":1}}"#[..],
        br#"{"usage ":{"prompt_tokens":1}}"#,
        br#"{"usagee":{"prompt_tokens":1}}"#,
        br#"{"\u0055sage":{"prompt_tokens":1}}"#,
        br#"{"us\nage":{"prompt_tokens":1}}"#,
        br#"{"a_very_long_key_that_is_not_usage_at_all":{"prompt_tokens":1}}"#,
    ] {
        assert_eq!(whole(body), None, "{}", String::from_utf8_lossy(body));
    }
}

#[test]
fn a_nested_usage_is_never_read() {
    let body = br#"{"choices":[{"message":{"usage":{"prompt_tokens":99,"completion_tokens":99}},
        "usage":{"prompt_tokens":98}}],"meta":{"usage":{"prompt_tokens":97}},
        "usage":{"prompt_tokens":1,"completion_tokens":2}}"#;
    assert_eq!(whole(body), Some(usage(1, 2, 3)));
    assert_eq!(scan(body.chunks(1)), Some(usage(1, 2, 3)));
    let only_nested =
        br#"{"choices":[{"usage":{"prompt_tokens":99}}],"x":{"usage":{"total_tokens":5}}}"#;
    assert_eq!(whole(only_nested), None);
    // A usage-looking text inside a string value.
    let in_text = br#"{"content":"\"usage\":{\"prompt_tokens\":5}","usage":null}"#;
    assert_eq!(whole(in_text), None);
}

#[test]
fn a_usage_given_twice_is_not_known() {
    for body in [
        &br#"{"usage":{"prompt_tokens":1},"usage":{"prompt_tokens":1}}"#[..],
        br#"{"usage":null,"usage":{"prompt_tokens":1}}"#,
        br#"{"usage":{"prompt_tokens":1},"us\u0061ge":{"prompt_tokens":2}}"#,
    ] {
        assert_eq!(whole(body), None, "{}", String::from_utf8_lossy(body));
    }
}

#[test]
fn what_is_not_one_json_object_is_not_known() {
    let deep = format!(
        r#"{{"usage":{{"prompt_tokens":1}},"x":{}{}}}"#,
        "[".repeat(MAX_DEPTH),
        "]".repeat(MAX_DEPTH)
    );
    let shallow = format!(
        r#"{{"usage":{{"prompt_tokens":1}},"x":{}{}}}"#,
        "[".repeat(MAX_DEPTH - 1),
        "]".repeat(MAX_DEPTH - 1)
    );
    assert_eq!(whole(shallow.as_bytes()), Some(usage(1, 0, 1)));
    for body in [
        &b""[..],
        b"   ",
        b"[1,2,3]",
        b"\"usage\"",
        b"null",
        br#"{"usage":{"prompt_tokens":1}"#,
        br#"{"usage":{"prompt_tokens":1}} x"#,
        br#"{"usage":{"prompt_tokens":1}}{}"#,
        br#"{"usage":{"prompt_tokens":1}]"#,
        br#"{"usage":{"prompt_tokens":1},}"#,
        br#"{"usage" {"prompt_tokens":1}}"#,
        br#"{"usage":{"prompt_tokens":1}"a":1}"#,
        br#"{"a":tru,"usage":{"prompt_tokens":1}}"#,
        br#"{"a":nul,"usage":{"prompt_tokens":1}}"#,
        br#"{"a":[1 2],"usage":{"prompt_tokens":1}}"#,
        br#"{"a":"\x","usage":{"prompt_tokens":1}}"#,
        br#"{"a":"\u12G4","usage":{"prompt_tokens":1}}"#,
        br#"{"a":[1,],"usage":{"prompt_tokens":1}}"#,
        br#"{1:2,"usage":{"prompt_tokens":1}}"#,
        deep.as_bytes(),
    ] {
        assert_eq!(whole(body), None, "{}", String::from_utf8_lossy(body));
    }
    // Whitespace around the object is fine.
    assert_eq!(
        whole(b" \r\n\t{\"usage\":{\"prompt_tokens\":1}} \n"),
        Some(usage(1, 0, 1))
    );
}

#[test]
fn a_usage_value_past_the_bound_is_not_known() {
    let pad = "x".repeat(MAX_USAGE_VALUE);
    let big = format!(r#"{{"usage":{{"prompt_tokens":1,"note":"{pad}"}}}}"#);
    assert_eq!(whole(big.as_bytes()), None);
    let fits = format!(
        r#"{{"usage":{{"prompt_tokens":1,"note":"{}"}}}}"#,
        &pad[..MAX_USAGE_VALUE - 64]
    );
    assert_eq!(whole(fits.as_bytes()), Some(usage(1, 0, 1)));
}

#[test]
fn a_huge_answer_is_read_in_bounded_memory() {
    // 20 MiB of content before the usage, fed in 64 KiB pieces: nothing of it is kept.
    let mut body = br#"{"choices":[{"message":{"content":""#.to_vec();
    body.extend(std::iter::repeat_n(b'a', 20 << 20));
    body.extend_from_slice(
        br#""}}],"usage":{"prompt_tokens":31,"completion_tokens":9,"total_tokens":40}}"#,
    );
    let mut scanner = JsonUsageScanner::new();
    for piece in body.chunks(64 << 10) {
        scanner.feed(piece);
        assert!(scanner.captured.capacity() <= MAX_USAGE_VALUE);
    }
    assert_eq!(scanner.finish(), Some(usage(31, 9, 40)));
}

#[test]
fn scalars_and_odd_usage_values() {
    for (body, want) in [
        (&br#"{"usage":null}"#[..], None),
        (br#"{"usage":{}}"#, None),
        (br#"{"usage":"lots"}"#, None),
        (br#"{"usage":12}"#, None),
        (br#"{"usage":12 }"#, None),
        (br#"{"usage":[1,2]}"#, None),
        (br#"{"usage":true,"x":1}"#, None),
        // A count Sluice cannot read makes the usage unknown.
        (
            br#"{"usage":{"prompt_tokens":"3","completion_tokens":-1,"total_tokens":9}}"#,
            None,
        ),
    ] {
        assert_eq!(whole(body), want, "{}", String::from_utf8_lossy(body));
        for at in 0..=body.len() {
            assert_eq!(scan([&body[..at], &body[at..]]), want);
        }
    }
}

/// xorshift64*: reproducible pseudo-random numbers without a dependency.
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

/// Mutated answers, split at random: never a panic, and whenever serde_json reads the body
/// as one object with at most one `usage` key, the scanner finds the same usage (and with
/// one `model` key, the same model).
#[test]
fn mutated_answers_agree_with_serde_json() {
    let seeds = [CHAT_COMPLETION, EMBEDDINGS_RESPONSE, RESPONSES];
    let alphabet = b"{}[]\":,\\ \nusage0123456789truenull\xff";
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let mut compared = 0;
    let mut models_compared = 0;
    for round in 0..4000 {
        let mut input = seeds[round % seeds.len()].to_vec();
        for _ in 0..1 + rng.below(4) {
            let at = rng.below(input.len() + 1);
            match rng.below(3) {
                0 if !input.is_empty() => {
                    input.remove(at.min(input.len() - 1));
                }
                _ => input.insert(at, alphabet[rng.below(alphabet.len())]),
            }
        }
        let mut pieces = Vec::new();
        let mut rest = &input[..];
        while !rest.is_empty() {
            let k = 1 + rng.below(rest.len());
            pieces.push(&rest[..k]);
            rest = &rest[k..];
        }
        let mut scanner = JsonUsageScanner::new();
        for piece in pieces {
            scanner.feed(piece);
        }
        let got = scanner.finish();
        let keys = input.windows(7).filter(|w| w == br#""usage""#).count();
        if let (Some(want), 1) = (by_value(&input), keys) {
            compared += 1;
            assert_eq!(got, want, "{}", String::from_utf8_lossy(&input));
        }
        // The model too, when the body names `model` once.
        let models = input.windows(7).filter(|w| w == br#""model""#).count();
        let value = serde_json::from_slice::<Value>(&input).ok();
        if let (Some(Value::Object(object)), 1) = (value, models) {
            models_compared += 1;
            let want = object.get("model").and_then(Value::as_str);
            assert_eq!(
                scanner.model().as_deref(),
                want.filter(|m| !m.is_empty()),
                "{}",
                String::from_utf8_lossy(&input)
            );
        }
    }
    assert!(compared > 500, "only {compared} bodies compared");
    assert!(
        models_compared > 500,
        "only {models_compared} models compared"
    );
}

/// What the scanner reads as the model of `pieces`.
fn model_of<'a>(pieces: impl IntoIterator<Item = &'a [u8]>) -> Option<String> {
    let mut scanner = JsonUsageScanner::new();
    for piece in pieces {
        scanner.feed(piece);
    }
    scanner.finish();
    scanner.model()
}

#[test]
fn the_model_is_read_before_and_after_the_data_at_every_split() {
    let before = br#"{"model":"gpt-4o-2024-08-06","choices":[{"message":{"content":"x","model":"no"}}],"usage":{"prompt_tokens":1,"completion_tokens":2}}"#;
    for (body, want) in [
        (CHAT_COMPLETION, "gpt-4o-2024-08-06"),
        (EMBEDDINGS_RESPONSE, "text-embedding-3-small"),
        (before, "gpt-4o-2024-08-06"),
    ] {
        assert_eq!(model_of([body]).as_deref(), Some(want));
        for a in 0..=body.len() {
            assert_eq!(
                model_of([&body[..a], &body[a..]]).as_deref(),
                Some(want),
                "split at {a}"
            );
        }
        assert_eq!(
            model_of(body.chunks(1)).as_deref(),
            Some(want),
            "byte by byte"
        );
    }
    // Every three-way split of an escaped model beside an escaped key.
    let body = br#"{"usage":{"prompt_tokens":1},"m\u006fdel" : "gpt-\"4o\"\u00e9", "x":[1]}"#;
    let want = Some("gpt-\"4o\"\u{e9}".to_owned());
    for a in 0..=body.len() {
        for b in a..=body.len() {
            assert_eq!(
                model_of([&body[..a], &body[a..b], &body[b..]]),
                want,
                "{a} {b}"
            );
        }
    }
}

#[test]
fn a_model_after_a_huge_data_array_is_read_in_bounded_memory() {
    // An embeddings answer: 8 MiB of vectors, then the model, fed in 16 KiB pieces.
    let mut body =
        br#"{"object":"list","data":[{"object":"embedding","index":0,"embedding":["#.to_vec();
    while body.len() < 8 << 20 {
        body.extend_from_slice(b"-0.0123456789,");
    }
    body.extend_from_slice(
        br#"0.5]}],"model":"text-embedding-3-large","usage":{"prompt_tokens":8,"total_tokens":8}}"#,
    );
    let mut scanner = JsonUsageScanner::new();
    for piece in body.chunks(16 << 10) {
        scanner.feed(piece);
        assert_eq!(
            scanner.captured.capacity(),
            0,
            "nothing of the data is kept"
        );
    }
    assert_eq!(scanner.finish(), Some(usage(8, 0, 8)));
    assert_eq!(scanner.model().as_deref(), Some("text-embedding-3-large"));
}

#[test]
fn a_model_that_is_not_one_string_given_once_is_not_known() {
    let long = "m".repeat(MAX_MODEL + 1);
    let longest = "m".repeat(MAX_MODEL);
    // Escapes count as written: 43 `\u0061` are 258 raw bytes for 43 characters.
    let escaped = "\\u0061".repeat(43);
    for (body, want) in [
        (r#"{"model":"a","model":"a"}"#.to_owned(), None),
        (r#"{"model":"a","m\u006fdel":"b"}"#.to_owned(), None),
        (r#"{"model":null,"model":"a"}"#.to_owned(), None),
        (r#"{"model":12}"#.to_owned(), None),
        (r#"{"model":{"name":"a"}}"#.to_owned(), None),
        (r#"{"model":["a"]}"#.to_owned(), None),
        (r#"{"model":true}"#.to_owned(), None),
        (r#"{"model":""}"#.to_owned(), None),
        (format!(r#"{{"model":"{long}"}}"#), None),
        (format!(r#"{{"model":"{escaped}"}}"#), None),
        (format!(r#"{{"model":"{longest}"}}"#), Some(longest.clone())),
        // Not one JSON object, or not ended: no model.
        (r#"{"model":"a""#.to_owned(), None),
        (r#"{"model":"a"} x"#.to_owned(), None),
        (r#"[{"model":"a"}]"#.to_owned(), None),
        // Nested models are never read; a short key is not a prefix match.
        (r#"{"x":{"model":"a"},"mode":"b"}"#.to_owned(), None),
        (
            r#"{"data":[{"model":"a"}],"model":"b"}"#.to_owned(),
            Some("b".to_owned()),
        ),
        // The bytes inside must be UTF-8, as serde_json reads them.
        (
            "{\"model\":\"a\u{e9}\"}".to_owned(),
            Some("a\u{e9}".to_owned()),
        ),
    ] {
        let bytes = body.as_bytes();
        assert_eq!(model_of([bytes]), want, "{body}");
        for a in 0..=bytes.len() {
            assert_eq!(model_of([&bytes[..a], &bytes[a..]]), want, "{body} at {a}");
        }
    }
    assert_eq!(model_of([&b"{\"model\":\"a\xff\"}"[..]]), None, "not UTF-8");
    // A model kept does not change the usage read beside it.
    let body = br#"{"model":"a","usage":{"prompt_tokens":3},"model":"b"}"#;
    assert_eq!(whole(body), Some(usage(3, 0, 3)));
    assert_eq!(model_of([&body[..]]), None);
}
