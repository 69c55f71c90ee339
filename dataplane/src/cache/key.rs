//! A request's cache key: what makes two requests the same question. The key is the
//! operation, the subscription (when entries are per subscription) and the body in canonical
//! JSON — object members sorted by key, no insignificant whitespace, strings and numbers
//! re-serialized (`"\u0041"` and `"A"` are one string), the top-level members that do not
//! change the answer (`ignore_fields`) left out. The deployment is not in it: each
//! deployment has its own store.
//!
//! Canonical form is conservative: `1` and `1.0` are different numbers, `"stream": false` and
//! no `stream` different bodies — a miss, never a wrong answer. A body that is not one JSON
//! object, or that repeats a member name anywhere (a backend may read the first where Sluice
//! reads the last), is never cached.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

use super::CacheSettings;
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
    /// The body is not one JSON object, repeats a member name, or nests too deep.
    Unreadable,
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
    let Ok(Canon::Object(members)) = serde_json::from_slice::<Canon>(body) else {
        return Err(NotCacheable::Unreadable);
    };
    let member = |name: &str| {
        members
            .binary_search_by(|(k, _)| k.as_str().cmp(name))
            .ok()
            .and_then(|i| members.get(i))
            .map(|(_, value)| value)
    };
    if matches!(member("stream"), Some(Canon::Bool(true))) {
        return Err(NotCacheable::Stream);
    }
    if op != Operation::Embeddings && !settings.nondeterministic {
        let zero_temperature =
            matches!(member("temperature"), Some(Canon::Number(n)) if n.as_f64() == Some(0.0));
        let seeded = matches!(member("seed"), Some(s) if *s != Canon::Null);
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
        if settings.ignore_fields.iter().any(|f| f == name) {
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

/// A JSON value in canonical form: object members sorted by name (none repeated).
#[derive(Debug, PartialEq)]
enum Canon {
    Null,
    Bool(bool),
    Number(serde_json::Number),
    String(String),
    Array(Vec<Canon>),
    Object(Vec<(String, Canon)>),
}

impl Canon {
    fn write(&self, out: &mut Vec<u8>) {
        match self {
            Canon::Null => out.extend_from_slice(b"null"),
            Canon::Bool(true) => out.extend_from_slice(b"true"),
            Canon::Bool(false) => out.extend_from_slice(b"false"),
            Canon::Number(n) => out.extend_from_slice(n.to_string().as_bytes()),
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
}

/// A JSON string, escaped as serde_json escapes it (one form per string).
fn write_string(out: &mut Vec<u8>, s: &str) {
    // Writing a `str` into a `Vec` cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

impl<'de> Deserialize<'de> for Canon {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(CanonVisitor)
    }
}

struct CanonVisitor;

impl<'de> Visitor<'de> for CanonVisitor {
    type Value = Canon;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E>(self) -> Result<Canon, E> {
        Ok(Canon::Null)
    }

    fn visit_bool<E>(self, v: bool) -> Result<Canon, E> {
        Ok(Canon::Bool(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Canon, E> {
        Ok(Canon::Number(v.into()))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Canon, E> {
        Ok(Canon::Number(v.into()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Canon, E> {
        serde_json::Number::from_f64(v)
            .map(Canon::Number)
            .ok_or_else(|| E::custom("not a finite number"))
    }

    fn visit_str<E>(self, v: &str) -> Result<Canon, E> {
        Ok(Canon::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Canon, E> {
        Ok(Canon::String(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Canon, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Canon::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Canon, A::Error> {
        let mut members: Vec<(String, Canon)> = Vec::new();
        while let Some(entry) = map.next_entry()? {
            members.push(entry);
        }
        members.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        if members.windows(2).any(|w| w[0].0 == w[1].0) {
            return Err(de::Error::custom("a member name is repeated"));
        }
        Ok(Canon::Object(members))
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
    fn numbers_and_strings_have_one_form_each() {
        let a = chat(r#"{"temperature":0,"s":"\u00e9\/","n":1e2}"#).unwrap();
        let b = chat(r#"{"temperature":0,"s":"é/","n":100.0}"#).unwrap();
        assert_eq!(a, b);
    }
}
