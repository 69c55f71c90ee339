//! A request's cache key: what makes two requests the same question. The key is the
//! operation, the subscription (when entries are per subscription) and the body in canonical
//! JSON — object members sorted by key, no insignificant whitespace, strings re-serialized
//! (`"\u0041"` and `"A"` are one string), the top-level members that do not
//! change the answer (`ignore_fields`) left out. Inside [`ORDERED_FIELDS`] (the JSON
//! Schemas of `response_format`, `tools` and `functions`) members keep their order: the
//! model reads a schema as written, and Structured Outputs answer in its order. The
//! deployment is not in it: each deployment has its own store.
//!
//! Canonical form is conservative: numbers stay as written (`1` and `1.0` are different
//! numbers, as a backend may take them), `"stream": false` and no `stream` are different
//! bodies — a miss, never a wrong answer. A body that is not one JSON
//! object, or that repeats a member name anywhere (a backend may read the first where Sluice
//! reads the last) — exactly or in another case (`json_name`) — is never cached.

use std::borrow::Cow;

use super::CacheSettings;
use crate::json_name::{any_fold_together, folds_to};
use crate::route::Operation;

/// Why a request is not looked up (answered `x-sluice-cache: bypass`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotCacheable {
    /// `"stream": true`: streamed answers are never cached.
    Stream,
    /// A chat or completions request that may answer differently each time: `temperature`
    /// absent (the API's default is 1) or above 0, no `seed`, and the deployment does not
    /// cache such requests (`nondeterministic = false`).
    Nondeterministic,
    /// The body is not one JSON object, repeats a member name (exactly, or in another case:
    /// `json_name::any_fold_together`), nests too deep or holds more than [`MAX_VALUES`]
    /// values.
    Unreadable,
    /// The body is larger than [`MAX_KEYED_BODY`].
    TooLarge,
    /// The operation is not cached (`responses`, `models`).
    Operation,
}

/// Whether requests of `op` are ever cached: chat, completions and embeddings.
pub fn caches(op: Operation) -> bool {
    matches!(
        op,
        Operation::ChatCompletions | Operation::Completions | Operation::Embeddings
    )
}

/// The cache key of a request of `op` from `subscription` (its name; `None` without auth)
/// with `body`, under `settings`; or why it is not cacheable.
pub fn request_key(
    op: Operation,
    subscription: Option<&str>,
    body: &[u8],
    settings: &CacheSettings,
) -> Result<Vec<u8>, NotCacheable> {
    if !caches(op) {
        return Err(NotCacheable::Operation);
    }
    if body.len() > MAX_KEYED_BODY {
        return Err(NotCacheable::TooLarge);
    }
    let Some(Canon::Object(members)) = parse(body) else {
        return Err(NotCacheable::Unreadable);
    };
    let member = |name: &str| {
        members
            .binary_search_by(|(k, _)| k.as_ref().cmp(name))
            .ok()
            .and_then(|i| members.get(i))
            .map(|(_, value)| value)
    };
    // A backend that reads member names case-insensitively (Go's encoding/json) would take
    // `"Temperature": 1.5` or `"ſeed": 1` for what this check reads: such bodies are never
    // cached (`json_name`).
    let decisive = ["stream", "temperature", "seed"];
    if members.iter().any(|(k, _)| {
        decisive
            .iter()
            .any(|d| k.as_ref() != *d && folds_to(k.as_bytes(), d.as_bytes()))
    }) {
        return Err(NotCacheable::Unreadable);
    }
    if matches!(member("stream"), Some(Canon::Bool(true))) {
        return Err(NotCacheable::Stream);
    }
    if op != Operation::Embeddings && !settings.nondeterministic {
        let zero_temperature = member("temperature").is_some_and(Canon::is_zero);
        // A seed is an integer (OpenAI API reference); `true` or `"x"` seeds nothing.
        let seeded = matches!(member("seed"), Some(Canon::Number(_)));
        if !zero_temperature && !seeded {
            return Err(NotCacheable::Nondeterministic);
        }
    }
    let subscription = if settings.per_subscription {
        subscription.unwrap_or("")
    } else {
        ""
    };
    let mut key = Vec::with_capacity(body.len() + subscription.len() + 24);
    key.extend_from_slice(op.name().as_bytes());
    key.push(b'\n');
    // Length-prefixed: no subscription name can run into the body.
    key.extend_from_slice(itoa::Buffer::new().format(subscription.len()).as_bytes());
    key.push(b':');
    key.extend_from_slice(subscription.as_bytes());
    key.push(b'\n');
    key.push(b'{');
    let mut first = true;
    for (name, value) in &members {
        if settings.ignore_fields.iter().any(|f| f == name.as_ref()) {
            continue;
        }
        if !first {
            key.push(b',');
        }
        first = false;
        write_string(&mut key, name);
        key.push(b':');
        value.write(&mut key);
    }
    key.push(b'}');
    Ok(key)
}

/// A JSON value in canonical form: object members sorted by name (none repeated), strings
/// decoded, numbers as written (borrowed from the body).
#[derive(Debug, PartialEq)]
enum Canon<'a> {
    Null,
    Bool(bool),
    /// The number's text, verbatim: re-serializing through `f64` would merge numbers a
    /// backend tells apart (integers past 2^64, decimals past double precision).
    Number(&'a str),
    String(Cow<'a, str>),
    Array(Vec<Canon<'a>>),
    Object(Vec<(Cow<'a, str>, Canon<'a>)>),
}

impl Canon<'_> {
    fn write(&self, out: &mut Vec<u8>) {
        match self {
            Canon::Null => out.extend_from_slice(b"null"),
            Canon::Bool(true) => out.extend_from_slice(b"true"),
            Canon::Bool(false) => out.extend_from_slice(b"false"),
            Canon::Number(n) => out.extend_from_slice(n.as_bytes()),
            Canon::String(s) => write_string(out, s),
            Canon::Array(items) => {
                out.push(b'[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    item.write(out);
                }
                out.push(b']');
            }
            Canon::Object(members) => {
                out.push(b'{');
                for (i, (name, value)) in members.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    write_string(out, name);
                    out.push(b':');
                    value.write(out);
                }
                out.push(b'}');
            }
        }
    }

    /// Whether this is a number equal to zero (`0`, `0.0`, `-0`, `0e5`).
    fn is_zero(&self) -> bool {
        matches!(self, Canon::Number(n) if n.parse::<f64>() == Ok(0.0))
    }
}

/// A JSON string, escaped as serde_json escapes it (one form per string).
fn write_string(out: &mut Vec<u8>, s: &str) {
    // Writing a `str` into a `Vec` cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// Top-level members whose objects keep their members' order in the key: the model reads
/// them as written (OpenAI Structured Outputs: "outputs will be produced in the same order
/// as the ordering of keys in the schema"; a tool's parameters are rendered in order).
const ORDERED_FIELDS: [&str; 3] = ["response_format", "tools", "functions"];

/// Nesting deeper than this is not cached (serde_json's own limit).
const MAX_DEPTH: usize = 128;

/// The largest body a key is built for (4 MiB); larger ones are not cached. With
/// [`MAX_VALUES`] it bounds the canonical tree a request can make Sluice build (each value
/// takes a few dozen bytes, a container an allocation of its own): a hostile body of nested
/// empty arrays would otherwise cost gigabytes and seconds.
pub const MAX_KEYED_BODY: usize = 4 << 20;

/// The most JSON values (each scalar, array and object) a keyed body may hold: 131,072.
pub const MAX_VALUES: usize = 1 << 17;

/// Parses `text` as exactly one JSON value (RFC 8259, surrounding whitespace allowed) into
/// its canonical form; `None` when it is not JSON, repeats a member name, nests deeper
/// than [`MAX_DEPTH`] or holds more than [`MAX_VALUES`] values.
fn parse(text: &[u8]) -> Option<Canon<'_>> {
    let mut reader = Reader {
        text,
        pos: 0,
        values_left: MAX_VALUES,
    };
    let value = reader.value(0, false)?;
    reader.skip_whitespace();
    (reader.pos == text.len()).then_some(value)
}

/// A strict recursive-descent reader: a pure function of the bytes, linear in their length.
struct Reader<'a> {
    text: &'a [u8],
    pos: usize,
    /// Values the body may still hold ([`MAX_VALUES`]).
    values_left: usize,
}

impl<'a> Reader<'a> {
    fn skip_whitespace(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.text.get(self.pos) {
            self.pos += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.skip_whitespace();
        self.text.get(self.pos).copied()
    }

    /// Consumes `literal` when the text continues with it.
    fn eat(&mut self, literal: &[u8]) -> bool {
        let found = self.text.get(self.pos..self.pos + literal.len()) == Some(literal);
        if found {
            self.pos += literal.len();
        }
        found
    }

    /// A value at nesting `depth`; `ordered`: its objects keep their members' order.
    fn value(&mut self, depth: usize, ordered: bool) -> Option<Canon<'a>> {
        self.values_left = self.values_left.checked_sub(1)?;
        match self.peek()? {
            b'{' => self.object(depth + 1, ordered),
            b'[' => self.array(depth + 1, ordered),
            b'"' => self.string().map(Canon::String),
            b't' => self.eat(b"true").then_some(Canon::Bool(true)),
            b'f' => self.eat(b"false").then_some(Canon::Bool(false)),
            b'n' => self.eat(b"null").then_some(Canon::Null),
            _ => self.number().map(Canon::Number),
        }
    }

    fn object(&mut self, depth: usize, ordered: bool) -> Option<Canon<'a>> {
        if depth > MAX_DEPTH {
            return None;
        }
        self.pos += 1; // `{`
        let mut members = Vec::new();
        if self.peek()? == b'}' {
            self.pos += 1;
            return Some(Canon::Object(members));
        }
        loop {
            if self.peek()? != b'"' {
                return None;
            }
            let name = self.string()?;
            if self.peek()? != b':' {
                return None;
            }
            self.pos += 1;
            let keep = ordered || (depth == 1 && ORDERED_FIELDS.contains(&name.as_ref()));
            let value = self.value(depth, keep)?;
            members.push((name, value));
            match self.peek()? {
                b',' => self.pos += 1,
                b'}' => {
                    self.pos += 1;
                    break;
                }
                _ => return None,
            }
        }
        // A repeated name, or two that a case-folding backend reads as one (`"messages"`
        // and `"MESSAGES"`): which one it takes depends on their order, which the key
        // drops.
        let repeated = if ordered {
            let mut names: Vec<&str> = members.iter().map(|(k, _)| k.as_ref()).collect();
            names.sort_unstable();
            names.windows(2).any(|w| w[0] == w[1])
        } else {
            members.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            members.windows(2).any(|w| w[0].0 == w[1].0)
        };
        if repeated {
            return None;
        }
        if any_fold_together(members.iter().map(|(k, _)| k.as_ref())) {
            return None;
        }
        Some(Canon::Object(members))
    }

    fn array(&mut self, depth: usize, ordered: bool) -> Option<Canon<'a>> {
        if depth > MAX_DEPTH {
            return None;
        }
        self.pos += 1; // `[`
        let mut items = Vec::new();
        if self.peek()? == b']' {
            self.pos += 1;
            return Some(Canon::Array(items));
        }
        loop {
            items.push(self.value(depth, ordered)?);
            match self.peek()? {
                b',' => self.pos += 1,
                b']' => {
                    self.pos += 1;
                    return Some(Canon::Array(items));
                }
                _ => return None,
            }
        }
    }

    /// A string token (at `"`), decoded: borrowed when it has no escapes, else decoded by
    /// serde_json (which refuses lone surrogates and bad escapes).
    fn string(&mut self) -> Option<Cow<'a, str>> {
        let start = self.pos;
        let mut i = start + 1;
        let mut escaped = false;
        loop {
            match *self.text.get(i)? {
                b'"' => break,
                b'\\' => {
                    escaped = true;
                    i += 2;
                }
                // Control characters must be escaped (RFC 8259 §7).
                0..=0x1f => return None,
                _ => i += 1,
            }
        }
        self.pos = i + 1;
        let token = self.text.get(start..=i)?;
        if escaped {
            serde_json::from_slice::<String>(token).ok().map(Cow::Owned)
        } else {
            let inner = token.get(1..token.len() - 1)?;
            std::str::from_utf8(inner).ok().map(Cow::Borrowed)
        }
    }

    /// A number token (RFC 8259 §6: `-? int frac? exp?`), as written.
    fn number(&mut self) -> Option<&'a str> {
        let start = self.pos;
        let digits = |r: &mut Self| {
            let from = r.pos;
            while r.text.get(r.pos).is_some_and(u8::is_ascii_digit) {
                r.pos += 1;
            }
            r.pos > from
        };
        self.eat(b"-");
        if self.eat(b"0") {
            // No leading zeros: `0` stands alone.
        } else if !digits(self) {
            return None;
        }
        if self.eat(b".") && !digits(self) {
            return None;
        }
        if self.eat(b"e") || self.eat(b"E") {
            if !self.eat(b"+") {
                self.eat(b"-");
            }
            if !digits(self) {
                return None;
            }
        }
        std::str::from_utf8(self.text.get(start..self.pos)?).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> CacheSettings {
        CacheSettings::default()
    }

    fn chat(body: &str) -> Result<String, NotCacheable> {
        request_key(
            Operation::ChatCompletions,
            Some("app-a"),
            body.as_bytes(),
            &settings(),
        )
        .map(|k| String::from_utf8(k).unwrap())
    }

    /// Case variants of the members the determinism check reads, and seeds that are not
    /// numbers, are never cached.
    #[test]
    fn the_determinism_check_cannot_be_dodged() {
        for body in [
            r#"{"temperature":0,"Temperature":1.5}"#,
            r#"{"seed":1,"Seed":null}"#,
            r#"{"temperature":0,"STREAM":true}"#,
            // Unicode letters Go's encoding/json folds into `s` (U+017F).
            "{\"seed\":1,\"\u{17f}eed\":null}",
            "{\"temperature\":0,\"\u{17f}tream\":true}",
            // Any member in two cases, at any level: the backend's pick depends on order.
            r#"{"temperature":0,"messages":[],"MESSAGES":[{"role":"user"}]}"#,
            r#"{"temperature":0,"messages":[{"role":"user","Role":"system"}]}"#,
            "{\"temperature\":0,\"x\":{\"ma\u{212a}e\":1,\"make\":2}}",
        ] {
            assert_eq!(chat(body), Err(NotCacheable::Unreadable), "{body}");
        }
        for body in [
            r#"{"seed":true}"#,
            r#"{"seed":"x"}"#,
            r#"{"seed":false,"temperature":2}"#,
        ] {
            assert_eq!(chat(body), Err(NotCacheable::Nondeterministic), "{body}");
        }
        assert!(chat(r#"{"seed":7,"temperature":2}"#).is_ok());
    }

    /// A hostile body cannot make the key builder build a tree of gigabytes: past 4 MiB
    /// or 131,072 values it is not cached.
    #[test]
    fn large_and_value_heavy_bodies_are_not_keyed() {
        let group = format!("{}{},", "[".repeat(100), "]".repeat(100));
        let deep_wide = format!("{{\"temperature\":0,\"x\":[{}0]}}", group.repeat(2_000));
        assert!(deep_wide.len() < MAX_KEYED_BODY);
        assert_eq!(chat(&deep_wide), Err(NotCacheable::Unreadable));
        let flat = format!("{{\"temperature\":0,\"x\":[{}0]}}", "0,".repeat(MAX_VALUES));
        assert_eq!(chat(&flat), Err(NotCacheable::Unreadable));
        let ok = format!(
            "{{\"temperature\":0,\"x\":[{}0]}}",
            "0,".repeat(MAX_VALUES - 10)
        );
        assert!(chat(&ok).is_ok());
        let big = format!(
            "{{\"temperature\":0,\"x\":\"{}\"}}",
            "a".repeat(MAX_KEYED_BODY)
        );
        assert_eq!(chat(&big), Err(NotCacheable::TooLarge));
    }

    #[test]
    fn members_are_sorted_and_whitespace_dropped() {
        let a = chat(r#"{"a":1,"b":2,"temperature":0}"#).unwrap();
        let b = chat("{ \"temperature\" : 0,\n \"b\":2, \"a\" :1 }").unwrap();
        assert_eq!(a, b);
        assert_eq!(a, "chat\n5:app-a\n{\"a\":1,\"b\":2,\"temperature\":0}");
    }

    #[test]
    fn nested_objects_are_canonical_too() {
        let a = chat(r#"{"temperature":0,"messages":[{"role":"user","content":"hi"}]}"#);
        let b = chat(r#"{"messages":[{"content":"\u0068i","role":"user"}],"temperature":0}"#);
        assert_eq!(a.unwrap(), b.unwrap());
        // Order inside arrays matters.
        let c = chat(r#"{"temperature":0,"messages":[{"role":"user"},{"role":"system"}]}"#);
        let d = chat(r#"{"temperature":0,"messages":[{"role":"system"},{"role":"user"}]}"#);
        assert_ne!(c.unwrap(), d.unwrap());
    }

    /// The model reads a schema in its written order: inside `response_format`, `tools`
    /// and `functions` members keep it (and still may not repeat, in any case).
    #[test]
    fn schemas_keep_their_member_order() {
        let schema = |props: &str| {
            chat(&format!(
                r#"{{"temperature":0,"response_format":{{"type":"json_schema","json_schema":{{"name":"p","schema":{{"type":"object","properties":{props}}}}}}}}}"#
            ))
        };
        let nae = schema(r#"{"name":{"type":"string"},"age":{"type":"integer"}}"#).unwrap();
        let ane = schema(r#"{"age":{"type":"integer"},"name":{"type":"string"}}"#).unwrap();
        assert_ne!(nae, ane);
        assert!(
            nae.contains(r#""properties":{"name":{"type":"string"},"age""#),
            "{nae}"
        );
        // Whitespace and escapes still do not count.
        let spaced = schema(r#"{ "n\u0061me" : {"type":"string"}, "age":{"type":"integer"} }"#);
        assert_eq!(spaced.unwrap(), nae);
        for body in [
            r#"{"temperature":0,"tools":[{"type":"function","function":{"parameters":{"b":1,"a":2}}}]}"#,
            r#"{"temperature":0,"functions":[{"name":"f","parameters":{"b":1,"a":2}}]}"#,
        ] {
            let swapped = body.replace(r#""b":1,"a":2"#, r#""a":2,"b":1"#);
            assert_ne!(chat(body).unwrap(), chat(&swapped).unwrap(), "{body}");
        }
        assert_eq!(schema(r#"{"a":1,"a":2}"#), Err(NotCacheable::Unreadable));
        assert_eq!(schema(r#"{"a":1,"A":2}"#), Err(NotCacheable::Unreadable));
        // Elsewhere order is dropped, below the top level too.
        assert_eq!(
            chat(r#"{"temperature":0,"metadata":{"b":1,"a":2}}"#),
            chat(r#"{"temperature":0,"metadata":{"a":2,"b":1}}"#)
        );
    }

    #[test]
    fn ignored_fields_leave_the_key() {
        let a = chat(r#"{"temperature":0,"user":"alice","stream_options":{"x":1}}"#).unwrap();
        let b = chat(r#"{"temperature":0,"user":"bob"}"#).unwrap();
        assert_eq!(a, b);
        // Only at the top level.
        let c = chat(r#"{"temperature":0,"metadata":{"user":"alice"}}"#).unwrap();
        let d = chat(r#"{"temperature":0,"metadata":{"user":"bob"}}"#).unwrap();
        assert_ne!(c, d);
        let none = CacheSettings {
            ignore_fields: vec![],
            ..settings()
        };
        let key = |body: &str| {
            request_key(Operation::ChatCompletions, None, body.as_bytes(), &none).unwrap()
        };
        assert_ne!(
            key(r#"{"temperature":0,"user":"a"}"#),
            key(r#"{"temperature":0,"user":"b"}"#)
        );
    }

    #[test]
    fn the_subscription_is_in_the_key_unless_shared() {
        let body = br#"{"temperature":0}"#;
        let op = Operation::ChatCompletions;
        let per = settings();
        assert_ne!(
            request_key(op, Some("a"), body, &per),
            request_key(op, Some("b"), body, &per)
        );
        let shared = CacheSettings {
            per_subscription: false,
            ..settings()
        };
        assert_eq!(
            request_key(op, Some("a"), body, &shared),
            request_key(op, Some("b"), body, &shared)
        );
        // The operation is.
        assert_ne!(
            request_key(Operation::Completions, Some("a"), body, &per),
            request_key(op, Some("a"), body, &per)
        );
    }

    #[test]
    fn temperature_and_seed_decide_for_chat_and_completions() {
        assert!(chat(r#"{"temperature":0}"#).is_ok());
        assert!(chat(r#"{"temperature":0.0}"#).is_ok());
        assert!(chat(r#"{"temperature":0.7,"seed":42}"#).is_ok());
        assert_eq!(chat(r#"{}"#), Err(NotCacheable::Nondeterministic));
        assert_eq!(
            chat(r#"{"temperature":1}"#),
            Err(NotCacheable::Nondeterministic)
        );
        assert_eq!(
            chat(r#"{"temperature":0.5,"seed":null}"#),
            Err(NotCacheable::Nondeterministic)
        );
        assert_eq!(
            chat(r#"{"temperature":"0"}"#),
            Err(NotCacheable::Nondeterministic)
        );
        let any = CacheSettings {
            nondeterministic: true,
            ..settings()
        };
        assert!(request_key(Operation::ChatCompletions, None, b"{}", &any).is_ok());
        // Embeddings have no temperature: always deterministic.
        assert!(request_key(
            Operation::Embeddings,
            None,
            br#"{"input":"x"}"#,
            &settings()
        )
        .is_ok());
    }

    #[test]
    fn streams_bodies_and_operations_not_cached() {
        assert_eq!(
            chat(r#"{"temperature":0,"stream":true}"#),
            Err(NotCacheable::Stream)
        );
        assert!(chat(r#"{"temperature":0,"stream":false}"#).is_ok());
        assert_eq!(chat("[1]"), Err(NotCacheable::Unreadable));
        assert_eq!(chat("{"), Err(NotCacheable::Unreadable));
        assert_eq!(chat(""), Err(NotCacheable::Unreadable));
        assert_eq!(
            chat(r#"{"temperature":0} {}"#),
            Err(NotCacheable::Unreadable)
        );
        assert_eq!(
            chat(r#"{"temperature":0,"temperature":1}"#),
            Err(NotCacheable::Unreadable),
            "a repeated member is read differently by different parsers"
        );
        assert_eq!(
            chat(r#"{"temperature":0,"m":{"a":1,"a":2}}"#),
            Err(NotCacheable::Unreadable)
        );
        let deep = format!("{}{}", "[".repeat(1000), "]".repeat(1000));
        assert_eq!(
            chat(&format!(r#"{{"temperature":0,"d":{deep}}}"#)),
            Err(NotCacheable::Unreadable)
        );
        assert_eq!(
            request_key(Operation::Responses, None, b"{}", &settings()),
            Err(NotCacheable::Operation)
        );
    }

    #[test]
    fn strings_have_one_form_and_numbers_stay_as_written() {
        let a = chat(r#"{"temperature":0,"s":"\u00e9\/\u0041"}"#).unwrap();
        let b = chat(r#"{"temperature":0,"s":"é/A"}"#).unwrap();
        assert_eq!(a, b);
        assert_ne!(
            chat(r#"{"temperature":0,"n":1e2}"#),
            chat(r#"{"temperature":0,"n":100}"#)
        );
        // Past u64 and past double precision: numbers a backend tells apart stay apart
        // (through f64 both pairs would be one key).
        assert_ne!(
            chat(r#"{"temperature":0,"seed":18446744073709551616}"#),
            chat(r#"{"temperature":0,"seed":18446744073709551617}"#)
        );
        assert_ne!(
            chat(r#"{"temperature":0,"top_p":0.10000000000000000001}"#),
            chat(r#"{"temperature":0,"top_p":0.1}"#)
        );
        for zero in ["0", "0.0", "-0", "0e5", "0.000E-3"] {
            assert!(
                chat(&format!(r#"{{"temperature":{zero}}}"#)).is_ok(),
                "{zero}"
            );
        }
    }

    #[test]
    fn only_strict_json_is_read() {
        for bad in [
            r#"{"temperature":0,"n":01}"#,
            r#"{"temperature":0,"n":1.}"#,
            r#"{"temperature":0,"n":.5}"#,
            r#"{"temperature":0,"n":+1}"#,
            r#"{"temperature":0,"n":1e}"#,
            r#"{"temperature":0,"n":NaN}"#,
            r#"{"temperature":0,"s":"\ud800"}"#,
            r#"{"temperature":0,"s":"\x"}"#,
            "{\"temperature\":0,\"s\":\"a\u{1}b\"}",
            r#"{"temperature":0,}"#,
            r#"{"temperature":0,"a":[1,]}"#,
            r#"{"temperature":0 "a":1}"#,
            r#"{'temperature':0}"#,
            r#"{"temperature":tru}"#,
        ] {
            assert_eq!(chat(bad), Err(NotCacheable::Unreadable), "{bad:?}");
        }
        let not_utf8 = b"{\"temperature\":0,\"s\":\"\xff\"}";
        assert_eq!(
            request_key(Operation::ChatCompletions, None, not_utf8, &settings()),
            Err(NotCacheable::Unreadable)
        );
        let spaced = chat(" \t\r\n{ \"temperature\" :\n0 , \"a\" : [ 1 , { } , [ ] ] }\n ");
        assert_eq!(
            spaced.unwrap(),
            "chat\n5:app-a\n{\"a\":[1,{},[]],\"temperature\":0}"
        );
    }

    #[test]
    fn a_key_keys_to_itself() {
        // Found by the fuzz target: a number past u64 went through f64 and did not come
        // back the same.
        let body = br#"{"model":"gpt-4o","|mpera-ure":99999999999999999999999999999999999999999990,"seed":0,"n":1.5e3,"m":{"b":[1,-2,null,true],"a":"x"}}"#;
        let op = Operation::ChatCompletions;
        let key = request_key(op, None, body, &settings()).unwrap();
        let canonical = &key[b"chat\n0:\n".len()..];
        assert_eq!(request_key(op, None, canonical, &settings()).unwrap(), key);
    }
}
