//! Counting a streamed completion's tokens as its events pass, for a stream that will not
//! report its usage (a backend that does not accept `stream_options`, a deployment with
//! `stream_usage = false`): Sluice then charges the prompt estimate plus this count, marked
//! as counted by Sluice rather than reported.
//!
//! Each chat or completions chunk's text is counted as it arrives (per delta, never the
//! stream buffered whole), for every choice (`n > 1`): chat `choices[].delta.content`,
//! `.refusal`, `.tool_calls[].function.name` and `.arguments`, the legacy
//! `.function_call.name` and `.arguments`, the reasoning text some backends stream beside
//! the answer (`.reasoning_content`: vLLM, DeepSeek; `.reasoning`: OpenRouter and others),
//! and the transcript of an audio answer (`.audio.transcript`); completions
//! `choices[].text`. Every other field is skipped without being built (an audio answer's
//! base64 `data` too: its tokens are audio tokens, which no text tokenizer counts). The
//! Responses API is not counted here: its streams always end with their usage. Counting per delta can differ from counting the joined
//! text by a token at a delta boundary now and then; it is an estimate either way.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::estimate::Estimator;
use super::lenient::LenientStr;

/// The running count of one streamed completion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompletionCount {
    estimator: Estimator,
    tokens: u64,
}

impl CompletionCount {
    /// A count at zero that counts with `estimator` (the deployment's).
    pub fn new(estimator: Estimator) -> Self {
        CompletionCount {
            estimator,
            tokens: 0,
        }
    }

    /// Counts the text of one event's data (the `data:` lines joined). Data that is not a
    /// JSON object (`[DONE]`, a comment, a malformed event) adds nothing.
    pub fn on_event_data(&mut self, data: &[u8]) {
        let mut de = serde_json::Deserializer::from_slice(data);
        let mut found = 0u64;
        let node = Node {
            shape: Shape::Top,
            estimator: self.estimator,
            total: &mut found,
        };
        // A chunk that breaks off mid-JSON keeps what was counted before the break.
        let _ = node.deserialize(&mut de);
        self.tokens = self.tokens.saturating_add(found);
    }

    /// Counts `bytes` of an event that passed unread (too large to hold, see
    /// [`super::usage::SseScanner::unread_bytes`]) by the byte heuristic: such an event is a
    /// long answer's text, and it must not be free.
    pub fn on_unread(&mut self, bytes: u64) {
        self.tokens = self.tokens.saturating_add(bytes.div_ceil(4));
    }

    /// The tokens counted so far.
    pub fn tokens(&self) -> u64 {
        self.tokens
    }
}

/// Where in a chunk a value sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// The chunk object.
    Top,
    /// `choices`.
    Choices,
    /// One choice.
    Choice,
    /// A choice's `delta`.
    Delta,
    /// `delta.tool_calls`.
    ToolCalls,
    /// One tool call.
    ToolCall,
    /// A tool call's `function`, or the legacy `function_call`.
    Function,
    /// A delta's `audio`.
    Audio,
    /// A string that is completion text.
    Text,
}

impl Shape {
    /// The shape of member `key` of an object of this shape, if it is read.
    fn member(self, key: &str) -> Option<Shape> {
        match (self, key) {
            (Shape::Top, "choices") => Some(Shape::Choices),
            (Shape::Choice, "delta") => Some(Shape::Delta),
            (Shape::Choice, "text") => Some(Shape::Text),
            (Shape::Delta, "content" | "refusal" | "reasoning_content" | "reasoning") => {
                Some(Shape::Text)
            }
            (Shape::Delta, "audio") => Some(Shape::Audio),
            (Shape::Audio, "transcript") => Some(Shape::Text),
            (Shape::Delta, "tool_calls") => Some(Shape::ToolCalls),
            (Shape::Delta, "function_call") => Some(Shape::Function),
            (Shape::ToolCall, "function") => Some(Shape::Function),
            (Shape::Function, "name" | "arguments") => Some(Shape::Text),
            _ => None,
        }
    }

    /// The shape of an element of an array of this shape, if it is read.
    fn element(self) -> Option<Shape> {
        match self {
            Shape::Choices => Some(Shape::Choice),
            Shape::ToolCalls => Some(Shape::ToolCall),
            _ => None,
        }
    }
}

/// One value of a chunk, read for its text; a value of an unexpected type is skipped.
struct Node<'t> {
    shape: Shape,
    estimator: Estimator,
    total: &'t mut u64,
}

impl Node<'_> {
    fn child(&mut self, shape: Shape) -> Node<'_> {
        Node {
            shape,
            estimator: self.estimator,
            total: &mut *self.total,
        }
    }

    fn text(self, s: &str) {
        if self.shape == Shape::Text {
            *self.total = self.total.saturating_add(self.estimator.count_text(s));
        }
    }
}

impl<'de> DeserializeSeed<'de> for Node<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<(), D::Error> {
        de.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Node<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a streamed completion chunk")
    }

    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<LenientStr<'de>>()? {
            match key.0.as_deref().and_then(|k| self.shape.member(k)) {
                Some(shape) => map.next_value_seed(self.child(shape))?,
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<(), A::Error> {
        match self.shape.element() {
            Some(shape) => while seq.next_element_seed(self.child(shape))?.is_some() {},
            None => while seq.next_element::<IgnoredAny>()?.is_some() {},
        }
        Ok(())
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        self.text(v);
        Ok(())
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokens::estimate::Family;

    fn count(est: Estimator, events: &[&str]) -> u64 {
        let mut c = CompletionCount::new(est);
        for e in events {
            c.on_event_data(e.as_bytes());
        }
        c.tokens()
    }

    const H: Estimator = Estimator::Heuristic;

    #[test]
    fn chat_content_and_refusal_are_counted_per_delta() {
        // Heuristic: ceil(bytes / 4) per piece.
        let events = [
            r#"{"id":"x","choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}"#,
            r#"{"id":"x","choices":[{"index":0,"delta":{"content":"Hello"}}],"usage":null}"#,
            r#"{"choices":[{"index":0,"delta":{"content":" there, friend"}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"refusal":"no"}}]}"#,
            r#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#,
            "[DONE]",
        ];
        assert_eq!(count(H, &events), 2 + 4 + 1);
    }

    #[test]
    fn tool_calls_and_legacy_function_calls_are_counted() {
        let events = [
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"get_weather","arguments":""}}]}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"city\":"}}]}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"\"Paris\"}"}},{"index":1,"function":{"name":"f"}}]}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"function_call":{"name":"lookup","arguments":"{}"}}}]}"#,
        ];
        // get_weather 11 → 3; {"city": 8 → 2; "Paris"} 8 → 2; f → 1; lookup 6 → 2; {} → 1.
        assert_eq!(count(H, &events), 3 + 2 + 2 + 1 + 2 + 1);
    }

    #[test]
    fn every_choice_and_completions_text_are_counted() {
        let events = [
            r#"{"choices":[{"index":0,"delta":{"content":"abcd"}},{"index":1,"delta":{"content":"abcdefgh"}}]}"#,
            r#"{"object":"text_completion","choices":[{"index":0,"text":"abcde","logprobs":null}]}"#,
        ];
        assert_eq!(count(H, &events), 1 + 2 + 2);
    }

    #[test]
    fn other_fields_and_odd_shapes_add_nothing() {
        let events = [
            r#"{"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":7,"total_tokens":12}}"#,
            r#"{"model":"gpt-4o","system_fingerprint":"fp_long_string_here","choices":[{"index":0,"delta":{"role":"assistant"},"logprobs":{"content":[{"token":"xx"}]}}]}"#,
            r#"{"choices":[{"delta":{"content":null}}]}"#,
            r#"{"choices":[{"delta":{"content":["abcd"]}}]}"#,
            r#"{"choices":{"delta":{"content":"abcd"}}}"#,
            r#"["choices"]"#,
            "not json",
            "",
        ];
        assert_eq!(count(H, &events), 0);
    }

    #[test]
    fn reasoning_and_audio_transcripts_are_counted_for_every_choice() {
        let events = [
            // vLLM / DeepSeek-R1: the reasoning streams before the answer.
            r#"{"choices":[{"index":0,"delta":{"role":"assistant","reasoning_content":"abcdefgh"}},{"index":1,"delta":{"reasoning_content":"abcd"}}]}"#,
            // OpenRouter-style.
            r#"{"choices":[{"index":0,"delta":{"reasoning":"abcde"}},{"index":1,"delta":{"reasoning":"a","content":"abcd"}}]}"#,
            // An audio answer: its transcript is text; its base64 audio is not.
            r#"{"choices":[{"index":0,"delta":{"audio":{"id":"audio_1","transcript":"abcdefghi","data":"UklGRiQAAABXQVZFZm10IBAAAAABAAEA"}}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"audio":{"data":"UklGRiQAAABXQVZF","expires_at":1}}}]}"#,
            // Odd shapes of these fields add nothing and break nothing.
            r#"{"choices":[{"delta":{"reasoning":{"effort":"high"},"audio":"abcd","reasoning_content":null}}]}"#,
        ];
        // 8 → 2, 4 → 1; 5 → 2, 1 → 1, 4 → 1; 9 → 3.
        assert_eq!(count(H, &events), 2 + 1 + 2 + 1 + 1 + 3);
    }

    #[test]
    fn a_long_reasoning_is_counted_like_a_long_answer() {
        let words = vec!["reasoning"; 2000].join(" ");
        let est = Estimator::Bpe(Family::O200k);
        let answer = count(
            est,
            &[&format!(
                r#"{{"choices":[{{"delta":{{"content":"{words}"}}}}]}}"#
            )],
        );
        for field in ["reasoning_content", "reasoning"] {
            let event = format!(r#"{{"choices":[{{"delta":{{"{field}":"{words}"}}}}]}}"#);
            assert_eq!(count(est, &[&event]), answer, "{field}");
        }
        let audio =
            format!(r#"{{"choices":[{{"delta":{{"audio":{{"transcript":"{words}"}}}}}}]}}"#);
        assert_eq!(count(est, &[&audio]), answer);
        assert!(answer >= 2000);
    }

    #[test]
    fn escaped_text_is_counted_as_its_characters() {
        // "a\"b\\c" reads as a"b\c: 5 bytes → 2.
        assert_eq!(
            count(H, &[r#"{"choices":[{"delta":{"content":"a\"b\\c"}}]}"#]),
            2
        );
    }

    #[test]
    fn the_bpe_counts_like_the_prompt_estimator() {
        let est = Estimator::Bpe(Family::O200k);
        let text = "The quick brown fox jumps over the lazy dog.";
        let event = format!(r#"{{"choices":[{{"delta":{{"content":"{text}"}}}}]}}"#);
        assert_eq!(count(est, &[&event]), est.count_text(text));
        assert!(est.count_text(text) > 5);
    }

    #[test]
    fn unread_bytes_are_counted_by_the_heuristic() {
        let mut c = CompletionCount::new(Estimator::Bpe(Family::O200k));
        c.on_unread(4001);
        assert_eq!(c.tokens(), 1001);
    }
}
