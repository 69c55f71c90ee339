//! What a request really cost, from the answer: [`JsonUsageScanner`] for a JSON body
//! ([`usage_from_json`] when it is whole), [`SseScanner`] for a streamed one, and [`inject_include_usage`] to make a stream carry its
//! usage when the client did not ask for it.
//!
//! Chat and completions answers carry `usage: {prompt_tokens, completion_tokens,
//! total_tokens}` (embeddings: no completion tokens); a stream carries it only in a last,
//! usage-only chunk (`choices: []`), and only when the request set
//! `stream_options.include_usage`. The Responses API says `input_tokens` / `output_tokens`,
//! in the body or in the `response.completed` event's `response`; [`Usage`] maps them.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::lenient::{skip_map, skip_seq, Lenient, LenientStr};
use crate::json_edit::{member, skip_ws, splice};

mod json_scan;
mod sse;

pub use json_scan::{JsonUsageScanner, MAX_DEPTH, MAX_MODEL, MAX_USAGE_VALUE};
pub use sse::{
    event_data, EventView, SseError, SseScanner, StreamOutcome, Verdict, DEFAULT_MAX_EVENT,
};

/// Tokens an answer used, as the backend reported them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Usage {
    /// `prompt_tokens` (Responses: `input_tokens`).
    pub prompt_tokens: u64,
    /// `completion_tokens` (Responses: `output_tokens`); 0 for embeddings.
    pub completion_tokens: u64,
    /// `total_tokens`, or the sum of the two when the answer omits it.
    pub total_tokens: u64,
}

/// The top-level `usage` of a whole JSON answer body (chat, completions, embeddings,
/// responses), or `None` when the body has none, it is `null`, it is not known (given twice,
/// too long) or the body is not a JSON object. The same reading as a [`JsonUsageScanner`]
/// fed the body in pieces.
pub fn usage_from_json(body: &[u8]) -> Option<Usage> {
    let mut scanner = JsonUsageScanner::new();
    scanner.feed(body);
    scanner.finish()
}

/// A request body with `stream_options.include_usage` set to true, for a streamed chat or
/// completions request whose client did not set it: the usage chunk then comes back and the
/// relay drops it ([`SseScanner::new`] with `drop_usage_only`). Every other byte of the body
/// is kept as it was; `stream_options`' other members too.
///
/// `None` when nothing needs changing: not a JSON object, not `stream: true`, neither
/// `messages` nor `prompt` (Responses streams always end with their usage; other APIs do
/// not stream), or `include_usage` already true. Also `None`, leaving the body alone, when
/// the body is ambiguous (a `stream_options` or `include_usage` key given twice).
pub fn inject_include_usage(body: &[u8]) -> Option<Vec<u8>> {
    let probe: InjectProbe = serde_json::from_slice(body).ok()?;
    if !probe.stream || !probe.chat_or_completions || probe.include_usage {
        return None;
    }
    add_include_usage(body)
}

/// [`inject_include_usage`] for a body already read as a streamed chat or completions
/// request without `include_usage` (the request's facts, `RequestFacts::needs_usage_injection`):
/// the edit alone, without reading the body again. `None` when the body is not one JSON
/// object or is ambiguous (a `stream_options` or `include_usage` key given twice).
pub fn add_include_usage(body: &[u8]) -> Option<Vec<u8>> {
    let top = skip_ws(body, 0);
    if body.get(top) != Some(&b'{') {
        return None;
    }
    const MEMBER: &[u8] = br#""stream_options":{"include_usage":true}"#;
    let mut out = Vec::with_capacity(body.len() + MEMBER.len() + 1);
    match member(body, top, b"stream_options").ok()? {
        None => {
            // `stream: true` is a member, so the object is not empty: a comma follows.
            out.extend_from_slice(&body[..=top]);
            out.extend_from_slice(MEMBER);
            out.push(b',');
            out.extend_from_slice(&body[top + 1..]);
        }
        Some(span) if body.get(span.start) == Some(&b'{') => {
            match member(body, span.start, b"include_usage").ok()? {
                Some(value) => splice(&mut out, body, value, b"true"),
                None => {
                    let first = skip_ws(body, span.start + 1);
                    let comma = body.get(first) != Some(&b'}');
                    let at = span.start + 1;
                    out.extend_from_slice(&body[..at]);
                    out.extend_from_slice(br#""include_usage":true"#);
                    if comma {
                        out.push(b',');
                    }
                    out.extend_from_slice(&body[at..]);
                }
            }
        }
        // `null` or a value of the wrong type: replaced whole.
        Some(span) => splice(&mut out, body, span, br#"{"include_usage":true}"#),
    }
    Some(out)
}

/// What [`inject_include_usage`] needs to decide.
#[derive(Default)]
struct InjectProbe {
    stream: bool,
    include_usage: bool,
    chat_or_completions: bool,
}

impl<'de> Deserialize<'de> for InjectProbe {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = InjectProbe;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<InjectProbe, A::Error> {
                let mut probe = InjectProbe::default();
                while let Some(key) = map.next_key::<LenientStr<'de>>()? {
                    match key.0.as_deref() {
                        Some("stream") => {
                            probe.stream = map.next_value::<Lenient<bool>>()?.0 == Some(true)
                        }
                        Some("stream_options") => {
                            probe.include_usage = map.next_value::<IncludeUsage>()?.0
                        }
                        Some("messages" | "prompt") => {
                            probe.chat_or_completions = true;
                            map.next_value::<IgnoredAny>()?;
                        }
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(probe)
            }
        }
        de.deserialize_map(V)
    }
}

/// `stream_options.include_usage == true`; any other shape reads as false.
struct IncludeUsage(bool);

impl<'de> Deserialize<'de> for IncludeUsage {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = IncludeUsage;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("stream_options")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<IncludeUsage, A::Error> {
                let mut on = false;
                while let Some(key) = map.next_key::<LenientStr<'de>>()? {
                    if key.0.as_deref() == Some("include_usage") {
                        on = map.next_value::<Lenient<bool>>()?.0 == Some(true);
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(IncludeUsage(on))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<IncludeUsage, A::Error> {
                skip_seq(seq).map(|_| IncludeUsage(false))
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<IncludeUsage, E> {
                Ok(IncludeUsage(false))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<IncludeUsage, E> {
                Ok(IncludeUsage(false))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<IncludeUsage, E> {
                Ok(IncludeUsage(false))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<IncludeUsage, E> {
                Ok(IncludeUsage(false))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<IncludeUsage, E> {
                Ok(IncludeUsage(false))
            }
            fn visit_unit<E: de::Error>(self) -> Result<IncludeUsage, E> {
                Ok(IncludeUsage(false))
            }
        }
        de.deserialize_any(V)
    }
}

/// What an SSE event's data says about usage (and the model that answered).
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct Probe<'a> {
    /// The top-level `usage`, or `response.usage`.
    pub(crate) usage: Option<Usage>,
    /// The top-level `model`, or `response.model` (Responses events), when it is a
    /// non-empty string of at most [`MAX_MODEL`] bytes given once (see [`ModelSlot`]).
    pub(crate) model: Option<Cow<'a, str>>,
    /// How many `choices` the top level has, when it has an array of them.
    pub(crate) choices: Option<u64>,
    /// A usage-only chunk: a top-level `usage` object (not `response.usage`) and no choice
    /// (`choices` empty, or not an array: absent, `null`). What `include_usage` adds is
    /// `choices: []`; some backends leave the key out.
    pub(crate) usage_only: bool,
    /// The top-level `type` is a terminal Responses event (`response.completed`,
    /// `response.incomplete`, `response.failed`).
    pub(crate) terminal: bool,
}

/// Reads an SSE event's `data` (a JSON object) for its [`Probe`]: `usage`, `choices`,
/// `type`, `model`, `response.usage` and `response.model`.
pub(crate) fn parse_probe(data: &[u8]) -> Result<Probe<'_>, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_slice(data);
    let probe = de.deserialize_map(ProbeVisitor)?;
    de.end()?;
    Ok(probe)
}

struct ProbeVisitor;

impl<'de> Visitor<'de> for ProbeVisitor {
    type Value = Probe<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Probe<'de>, A::Error> {
        let mut probe = Probe::default();
        let mut nested = NestedResponse::default();
        let mut model = ModelSlot::default();
        while let Some(key) = map.next_key::<LenientStr<'de>>()? {
            match key.0.as_deref() {
                Some("usage") => probe.usage = map.next_value::<UsageField>()?.0,
                Some("choices") => probe.choices = map.next_value::<SeqLen>()?.0,
                Some("type") => {
                    let kind = map.next_value::<LenientStr<'de>>()?.0;
                    probe.terminal = matches!(
                        kind.as_deref(),
                        Some("response.completed" | "response.incomplete" | "response.failed")
                    );
                }
                Some("response") => nested = map.next_value::<NestedResponse<'de>>()?,
                Some("model") => model.read(&mut map)?,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        probe.usage_only = probe.usage.is_some() && probe.choices.unwrap_or(0) == 0;
        probe.usage = probe.usage.or(nested.usage);
        probe.model = model.get().or(nested.model);
        Ok(probe)
    }
}

/// The largest token count a usage member is believed at: 100 million. No answer comes
/// near it (context windows are a few million tokens, `n` at most 128); a backend reporting
/// more is not believed, and the request keeps its reservation — one absurd answer must not
/// lock a token limit for years.
pub const MAX_REPORTED_TOKENS: u64 = 100_000_000;

/// A `usage` object; `null` or any other shape reads as `None`. Its `prompt_tokens` /
/// `input_tokens`, `completion_tokens` / `output_tokens` and `total_tokens` are read as the
/// request side reads counts: non-negative integers, also written `100.0` or `1e2`; `null`
/// is absent. A member of another type (a string, a fraction, a negative number), or a
/// count over [`MAX_REPORTED_TOKENS`], makes the usage unknown (`None`). `total_tokens`
/// below the sum of the other two is read as that sum.
struct UsageField(Option<Usage>);

/// One count of a `usage` object.
enum TokenCount {
    /// `null`.
    Absent,
    Count(u64),
    /// Any other value.
    Unreadable,
}

impl<'de> Deserialize<'de> for TokenCount {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        de.deserialize_any(TokenCountVisitor)
    }
}

struct TokenCountVisitor;

impl<'de> Visitor<'de> for TokenCountVisitor {
    type Value = TokenCount;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a token count")
    }

    fn visit_unit<E: de::Error>(self) -> Result<TokenCount, E> {
        Ok(TokenCount::Absent)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<TokenCount, E> {
        Ok(TokenCount::Count(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<TokenCount, E> {
        Ok(u64::try_from(v).map_or(TokenCount::Unreadable, TokenCount::Count))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<TokenCount, E> {
        // `100.0` and `1e2` are integers to readers that convert (as the request side reads
        // them); past u64 the count saturates, and is then not believed anyway.
        Ok(if v.is_finite() && v >= 0.0 && v.fract() == 0.0 {
            TokenCount::Count(v as u64)
        } else {
            TokenCount::Unreadable
        })
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<TokenCount, E> {
        Ok(TokenCount::Unreadable)
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<TokenCount, E> {
        Ok(TokenCount::Unreadable)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<TokenCount, A::Error> {
        skip_seq(seq).map(|_| TokenCount::Unreadable)
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<TokenCount, A::Error> {
        skip_map(map).map(|()| TokenCount::Unreadable)
    }
}

impl<'de> Deserialize<'de> for UsageField {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        de.deserialize_any(UsageVisitor)
    }
}

struct UsageVisitor;

impl<'de> Visitor<'de> for UsageVisitor {
    type Value = UsageField;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a usage object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<UsageField, A::Error> {
        let (mut prompt, mut completion, mut total) = (None, None, None);
        let mut unreadable = false;
        while let Some(key) = map.next_key::<LenientStr<'de>>()? {
            let slot = match key.0.as_deref() {
                Some("prompt_tokens" | "input_tokens") => &mut prompt,
                Some("completion_tokens" | "output_tokens") => &mut completion,
                Some("total_tokens") => &mut total,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
            };
            match map.next_value::<TokenCount>()? {
                TokenCount::Absent => {}
                TokenCount::Count(n) => *slot = Some(n),
                TokenCount::Unreadable => unreadable = true,
            }
        }
        let counts = [prompt, completion, total];
        // A member Sluice cannot read, or a count no answer reaches, makes the whole usage
        // unknown: the reservation stands rather than a part of the usage or an absurd one.
        if unreadable
            || counts.iter().all(Option::is_none)
            || counts.iter().flatten().any(|&n| n > MAX_REPORTED_TOKENS)
        {
            return Ok(UsageField(None));
        }
        let prompt_tokens = prompt.unwrap_or(0);
        let completion_tokens = completion.unwrap_or(0);
        let parts = prompt_tokens.saturating_add(completion_tokens);
        Ok(UsageField(Some(Usage {
            prompt_tokens,
            completion_tokens,
            // A total below its parts is not believed over them.
            total_tokens: total.map_or(parts, |t| t.max(parts)),
        })))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<UsageField, A::Error> {
        skip_seq(seq).map(|_| UsageField(None))
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<UsageField, E> {
        Ok(UsageField(None))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<UsageField, E> {
        Ok(UsageField(None))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<UsageField, E> {
        Ok(UsageField(None))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<UsageField, E> {
        Ok(UsageField(None))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<UsageField, E> {
        Ok(UsageField(None))
    }
    fn visit_unit<E: de::Error>(self) -> Result<UsageField, E> {
        Ok(UsageField(None))
    }
}

/// The `usage` and `model` inside a Responses event's `response` object; any other shape
/// reads as neither.
#[derive(Default)]
struct NestedResponse<'a> {
    usage: Option<Usage>,
    model: Option<Cow<'a, str>>,
}

impl<'de> Deserialize<'de> for NestedResponse<'de> {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = NestedResponse<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a response object")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<NestedResponse<'de>, A::Error> {
                let mut usage = None;
                let mut model = ModelSlot::default();
                while let Some(key) = map.next_key::<LenientStr<'de>>()? {
                    match key.0.as_deref() {
                        Some("usage") => usage = map.next_value::<UsageField>()?.0,
                        Some("model") => model.read(&mut map)?,
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(NestedResponse {
                    usage,
                    model: model.get(),
                })
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<NestedResponse<'de>, A::Error> {
                skip_seq(seq).map(|_| NestedResponse::default())
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<NestedResponse<'de>, E> {
                Ok(NestedResponse::default())
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<NestedResponse<'de>, E> {
                Ok(NestedResponse::default())
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<NestedResponse<'de>, E> {
                Ok(NestedResponse::default())
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<NestedResponse<'de>, E> {
                Ok(NestedResponse::default())
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<NestedResponse<'de>, E> {
                Ok(NestedResponse::default())
            }
            fn visit_unit<E: de::Error>(self) -> Result<NestedResponse<'de>, E> {
                Ok(NestedResponse::default())
            }
        }
        de.deserialize_any(V)
    }
}

/// The `model` members of one object, as an SSE probe reads them: the value counts when it
/// is a non-empty string of at most [`MAX_MODEL`] bytes (unescaped) and the member is given
/// once; given twice (readers disagree on which counts, as for `usage`), neither counts.
#[derive(Default)]
struct ModelSlot<'a> {
    seen: u32,
    value: Option<Cow<'a, str>>,
}

impl<'de> ModelSlot<'de> {
    /// Reads the value of a `model` member just keyed in `map`.
    fn read<A: MapAccess<'de>>(&mut self, map: &mut A) -> Result<(), A::Error> {
        self.seen = self.seen.saturating_add(1);
        self.value = map
            .next_value::<LenientStr<'de>>()?
            .0
            .filter(|m| !m.is_empty() && m.len() <= MAX_MODEL);
        Ok(())
    }

    /// The model, when given once and readable.
    fn get(self) -> Option<Cow<'de, str>> {
        self.value.filter(|_| self.seen == 1)
    }
}

/// An array's length without building it; any other value reads as `None`.
struct SeqLen(Option<u64>);

impl<'de> Deserialize<'de> for SeqLen {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = SeqLen;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<SeqLen, A::Error> {
                skip_seq(seq).map(|n| SeqLen(Some(n)))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<SeqLen, A::Error> {
                skip_map(map).map(|()| SeqLen(None))
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<SeqLen, E> {
                Ok(SeqLen(None))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<SeqLen, E> {
                Ok(SeqLen(None))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<SeqLen, E> {
                Ok(SeqLen(None))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<SeqLen, E> {
                Ok(SeqLen(None))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<SeqLen, E> {
                Ok(SeqLen(None))
            }
            fn visit_unit<E: de::Error>(self) -> Result<SeqLen, E> {
                Ok(SeqLen(None))
            }
        }
        de.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests;
