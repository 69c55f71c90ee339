//! Edits of a JSON request body's top-level members in place, on its bytes: every byte
//! outside the edited member is forwarded as the client sent it (no re-serialisation, so key
//! order, number spellings and unknown fields survive).
//!
//! The walk finds where a member's value lies without building anything. It checks every
//! index and gives up ([`EditError::Malformed`]) on bytes that are not a JSON object rather
//! than guess; keys spelled with escapes are decoded before they are compared, so `"mod\u0065l"`
//! is `model` here as it is for the backend's parser. A member given twice is
//! [`EditError::Duplicate`]: which one a backend keeps is not defined (RFC 8259 §4), so
//! Sluice refuses to decide on one while the backend may read the other.
//!
//! Used to pin the body's `model` to the deployment Sluice authorized
//! ([`set_string_member`]) and to ask a stream for its usage
//! ([`crate::tokens::inject_include_usage`]).

use std::ops::Range;

use crate::error::GatewayError;
use crate::json_name::folds_to;

/// Why a body could not be edited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EditError {
    /// The body (or the member's object) is not a well-formed JSON object.
    #[error("the body is not a JSON object")]
    Malformed,
    /// The member is given more than once.
    #[error("duplicate key")]
    Duplicate,
    /// The member is spelled in another case (`MODEL`): parsers that match keys without
    /// regard to case (Go's `encoding/json`) would read it as the member, others would not.
    #[error("key in another case")]
    OtherCase,
}

impl EditError {
    /// The 400 (`invalid_request_error`) for a body refused while reading member `key`.
    pub fn into_gateway_error(self, key: &'static str) -> GatewayError {
        match self {
            EditError::Malformed => GatewayError::invalid_request(
                "We could not parse the JSON body of your request. The body must be a JSON object.",
                None,
            ),
            EditError::Duplicate => GatewayError::invalid_request(
                format!("The request body gives `{key}` more than once."),
                Some(key),
            ),
            EditError::OtherCase => GatewayError::invalid_request(
                format!("The request body spells `{key}` in another case; send `{key}`."),
                Some(key),
            ),
        }
    }
}

/// Where a body's top-level member lies, found by one walk ([`Member::find`]) and reused by
/// every later reader and edit of the same bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Where the top-level object's `{` is.
    pub top: usize,
    /// The member's value span, when present.
    pub value: Option<Range<usize>>,
}

impl Member {
    /// Walks `body` once for its top-level member `key` (see [`top_member`]).
    pub fn find(body: &[u8], key: &[u8]) -> Result<Self, EditError> {
        top_member(body, key).map(|(top, value)| Member { top, value })
    }
}

/// `body` with its top-level member `key` set to the string `value`, or `Ok(None)` when
/// nothing needs changing: the member already holds exactly that string, or it is absent
/// and `insert` is false. An absent member is added first in the object when `insert`.
///
/// Errors: [`EditError::Malformed`] when the body is not one JSON object (optional
/// whitespace around it, nothing else: a backend reading a second value after it would see
/// another request), [`EditError::Duplicate`] when `key` appears twice at the top level.
pub fn set_string_member(
    body: &[u8],
    key: &str,
    value: &str,
    insert: bool,
) -> Result<Option<Vec<u8>>, EditError> {
    let member = Member::find(body, key.as_bytes())?;
    set_string_member_at(body, &member, key, value, insert)
}

/// [`set_string_member`] for a member already found in these very bytes.
pub fn set_string_member_at(
    body: &[u8],
    member: &Member,
    key: &str,
    value: &str,
    insert: bool,
) -> Result<Option<Vec<u8>>, EditError> {
    let (top, found) = (member.top, member.value.clone());
    // A config string serialises infallibly; quoted and escaped as JSON wants.
    let quoted = serde_json::to_vec(value).map_err(|_| EditError::Malformed)?;
    match found {
        Some(span) => {
            let current = &body[span.clone()];
            if current == quoted.as_slice()
                || serde_json::from_slice::<String>(current).is_ok_and(|s| s == value)
            {
                return Ok(None);
            }
            let mut out = Vec::with_capacity(body.len() + quoted.len());
            splice(&mut out, body, span, &quoted);
            Ok(Some(out))
        }
        None if !insert => Ok(None),
        None => {
            let first = skip_ws(body, top + 1);
            let comma = body.get(first) != Some(&b'}');
            let mut out = Vec::with_capacity(body.len() + key.len() + quoted.len() + 4);
            out.extend_from_slice(&body[..=top]);
            out.push(b'"');
            out.extend_from_slice(key.as_bytes());
            out.extend_from_slice(b"\":");
            out.extend_from_slice(&quoted);
            if comma {
                out.push(b',');
            }
            out.extend_from_slice(&body[top + 1..]);
            Ok(Some(out))
        }
    }
}

/// `body` with `range` replaced by `with`, appended to `out`.
pub(crate) fn splice(out: &mut Vec<u8>, body: &[u8], range: Range<usize>, with: &[u8]) {
    out.extend_from_slice(&body[..range.start]);
    out.extend_from_slice(with);
    out.extend_from_slice(&body[range.end..]);
}

/// The body's top-level object (where its `{` is) and the value span of its member `key`,
/// when the body is one JSON object with only whitespace around it.
pub fn top_member(body: &[u8], key: &[u8]) -> Result<(usize, Option<Range<usize>>), EditError> {
    let top = skip_ws(body, 0);
    let (found, end) = walk(body, top, key)?;
    if skip_ws(body, end) != body.len() {
        return Err(EditError::Malformed);
    }
    Ok((top, found))
}

/// The value span of member `key` of the object starting at `obj` (its `{`): `Ok(None)`
/// when absent. Keys with escapes are decoded before the comparison.
pub(crate) fn member(b: &[u8], obj: usize, key: &[u8]) -> Result<Option<Range<usize>>, EditError> {
    walk(b, obj, key).map(|(found, _)| found)
}

/// [`member`], and the index just after the object.
fn walk(b: &[u8], obj: usize, key: &[u8]) -> Result<(Option<Range<usize>>, usize), EditError> {
    use EditError::{Duplicate, Malformed, OtherCase};
    if b.get(obj) != Some(&b'{') {
        return Err(Malformed);
    }
    let mut i = skip_ws(b, obj + 1);
    let mut found = None;
    if b.get(i) == Some(&b'}') {
        return Ok((None, i + 1));
    }
    loop {
        let key_end = skip_string(b, i).ok_or(Malformed)?;
        let raw = b.get(i + 1..key_end - 1).ok_or(Malformed)?;
        let (matches, other_case) = if raw.contains(&b'\\') {
            // Rare: decode the key as the backend's parser will.
            let decoded: String = serde_json::from_slice(&b[i..key_end]).map_err(|_| Malformed)?;
            let decoded = decoded.as_bytes();
            (decoded == key, folds_to(decoded, key))
        } else {
            (raw == key, folds_to(raw, key))
        };
        if other_case && !matches {
            return Err(OtherCase);
        }
        i = skip_ws(b, key_end);
        if b.get(i) != Some(&b':') {
            return Err(Malformed);
        }
        let start = skip_ws(b, i + 1);
        let end = skip_value(b, start).ok_or(Malformed)?;
        if matches {
            if found.is_some() {
                return Err(Duplicate);
            }
            found = Some(start..end);
        }
        i = skip_ws(b, end);
        match b.get(i) {
            Some(b',') => i = skip_ws(b, i + 1),
            Some(b'}') => return Ok((found, i + 1)),
            _ => return Err(Malformed),
        }
    }
}

/// The index of the first byte at or after `i` that is not JSON whitespace.
pub(crate) fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while matches!(b.get(i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        i += 1;
    }
    i
}

/// The index after the string starting at `i` (its `"`).
fn skip_string(b: &[u8], i: usize) -> Option<usize> {
    if b.get(i) != Some(&b'"') {
        return None;
    }
    let mut j = i + 1;
    loop {
        let at = j + memchr::memchr2(b'"', b'\\', b.get(j..)?)?;
        if b[at] == b'"' {
            return Some(at + 1);
        }
        j = at + 2;
    }
}

/// The index after the value starting at `i`.
fn skip_value(b: &[u8], i: usize) -> Option<usize> {
    match *b.get(i)? {
        b'"' => skip_string(b, i),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut j = i;
            loop {
                match *b.get(j)? {
                    b'"' => {
                        j = skip_string(b, j)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth = depth.checked_sub(1)?;
                        if depth == 0 {
                            return Some(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
        }
        _ => {
            let mut j = i;
            while let Some(c) = b.get(j) {
                if matches!(c, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r') {
                    break;
                }
                j += 1;
            }
            (j > i).then_some(j)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(body: &str, value: &str, insert: bool) -> Result<Option<String>, EditError> {
        set_string_member(body.as_bytes(), "model", value, insert)
            .map(|o| o.map(|b| String::from_utf8(b).unwrap()))
    }

    #[test]
    fn replaces_a_different_model_and_keeps_every_other_byte() {
        let body = r#"{ "messages":[{"role":"user","content":"say \"model\": x"}], "model" : "expensive" ,"n":1.0}"#;
        let out = set(body, "cheap", true).unwrap().unwrap();
        assert_eq!(
            out,
            r#"{ "messages":[{"role":"user","content":"say \"model\": x"}], "model" : "cheap" ,"n":1.0}"#
        );
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["model"], "cheap");
    }

    #[test]
    fn leaves_the_body_alone_when_the_model_already_matches() {
        assert_eq!(set(r#"{"model":"cheap"}"#, "cheap", true), Ok(None));
        // Spelled with an escape, still the same string.
        assert_eq!(set(r#"{"model":"ch\u0065ap"}"#, "cheap", true), Ok(None));
    }

    #[test]
    fn inserts_when_absent_only_when_asked() {
        assert_eq!(set(r#"{"n":1}"#, "cheap", false), Ok(None));
        assert_eq!(
            set(r#" {"n":1}"#, "cheap", true).unwrap().unwrap(),
            r#" {"model":"cheap","n":1}"#
        );
        assert_eq!(
            set(r#"{ }"#, "cheap", true).unwrap().unwrap(),
            r#"{"model":"cheap" }"#
        );
    }

    #[test]
    fn replaces_a_model_of_any_type() {
        for v in ["null", "1", "true", r#"["a"]"#, r#"{"x":"y"}"#] {
            let out = set(&format!(r#"{{"model":{v},"x":1}}"#), "cheap", true)
                .unwrap()
                .unwrap();
            assert_eq!(out, r#"{"model":"cheap","x":1}"#, "{v}");
        }
    }

    #[test]
    fn nested_models_are_not_the_top_level_one() {
        let body = r#"{"tools":[{"model":"expensive"}],"metadata":{"model":"x"}}"#;
        assert_eq!(
            set(body, "cheap", true).unwrap().unwrap(),
            r#"{"model":"cheap","tools":[{"model":"expensive"}],"metadata":{"model":"x"}}"#
        );
    }

    #[test]
    fn a_key_spelled_with_escapes_is_the_same_key() {
        let out = set(r#"{"mod\u0065l":"expensive"}"#, "cheap", true)
            .unwrap()
            .unwrap();
        assert_eq!(out, r#"{"mod\u0065l":"cheap"}"#);
    }

    #[test]
    fn duplicate_keys_are_refused_in_every_spelling() {
        for body in [
            r#"{"model":"cheap","model":"expensive"}"#,
            r#"{"model":"expensive","model":"cheap"}"#,
            r#"{"model":"cheap","mod\u0065l":"expensive"}"#,
        ] {
            assert_eq!(
                set(body, "cheap", true),
                Err(EditError::Duplicate),
                "{body}"
            );
        }
    }

    #[test]
    fn a_key_in_another_case_is_refused() {
        for body in [
            r#"{"MODEL":"expensive"}"#,
            r#"{"model":"cheap","Model":"expensive"}"#,
            r#"{"mod\u0045l":"expensive"}"#,
        ] {
            assert_eq!(
                set(body, "cheap", true),
                Err(EditError::OtherCase),
                "{body}"
            );
        }
        // Unicode letters that fold into ASCII ones (U+017F is `s`), raw or escaped.
        for body in [
            "{\"\u{17f}tream_options\":{}}",
            r#"{"\u017ftream_options":{}}"#,
        ] {
            assert_eq!(
                top_member(body.as_bytes(), b"stream_options"),
                Err(EditError::OtherCase),
                "{body}"
            );
        }
    }

    #[test]
    fn malformed_bodies_are_refused_not_guessed() {
        for body in [
            "",
            "[]",
            "\"model\"",
            r#"{"model":"x""#,
            r#"{"model" "x"}"#,
            r#"{"a":1 "model":"x"}"#,
            r#"{"a":]"#,
            r#"{"a":}}"#,
            r#"{"mod\"#,
            // A second value after the object: a backend might read that one.
            r#"{"model":"cheap"}{"model":"expensive"}"#,
            r#"{"model":"cheap"} x"#,
        ] {
            assert_eq!(
                set(body, "cheap", true),
                Err(EditError::Malformed),
                "{body}"
            );
        }
    }

    #[test]
    fn the_value_is_escaped_as_json() {
        let out = set(r#"{"model":"x"}"#, "a\"b", true).unwrap().unwrap();
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["model"], "a\"b");
    }
}
