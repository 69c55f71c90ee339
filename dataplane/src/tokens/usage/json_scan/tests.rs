use serde_json::Value;

use super::*;

const CHAT_COMPLETION: &[u8] = include_bytes!("../../fixtures/chat_completion.json");
const EMBEDDINGS_RESPONSE: &[u8] = include_bytes!("../../fixtures/embeddings_response.json");
const RESPONSES: &[u8] = br#"{"id":"resp_1","object":"response","output":[{"content":[{"text":"x \"usage\": {\"input_tokens\": 1}"}]}],
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
/// as one object with at most one `usage` key, the scanner finds the same usage.
#[test]
fn mutated_answers_agree_with_serde_json() {
    let seeds = [CHAT_COMPLETION, EMBEDDINGS_RESPONSE, RESPONSES];
    let alphabet = b"{}[]\":,\\ \nusage0123456789truenull\xff";
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let mut compared = 0;
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
        let got = scan(pieces);
        let keys = input.windows(7).filter(|w| w == br#""usage""#).count();
        if let (Some(want), 1) = (by_value(&input), keys) {
            compared += 1;
            assert_eq!(got, want, "{}", String::from_utf8_lossy(&input));
        }
    }
    assert!(compared > 500, "only {compared} bodies compared");
}
