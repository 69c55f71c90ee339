//! What of a request's and an answer's content an audit record keeps.
//!
//! Three steps, each a pure piece with no I/O:
//!
//! 1. **Capture**, on the worker thread while the answer passes: [`AnswerCapture`] reads
//!    along the decoded body without holding it back. A JSON answer is copied (up to
//!    [`MAX_ANSWER_BYTES`]); a `text/event-stream` answer is reassembled from its deltas into
//!    the shape the non-streamed answer would have had, with every field bounded.
//! 2. **Extract**, off the worker: [`request_content`] picks the request body's content keys,
//!    [`response_content`] the answer's model and choices (or Responses output items).
//! 3. **Policy**, off the worker: [`apply`] runs the [`Redactor`] over every string and
//!    then the product's [`ContentMode`] (full, truncate, hash, omit) over every string but
//!    the API's short enumerations ([`ENUM_KEYS`]).
//!
//! Shapes follow the OpenAI API reference (chat completion object and chunk object,
//! completions, embeddings, Responses API objects and streaming events); Azure OpenAI sends
//! the same shapes with content-filter fields added, which are not content and are dropped.

use std::borrow::Cow;

use regex::{Regex, RegexBuilder};
use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::bounded::{self, Items, Tree};
use super::ContentMode;
use crate::route::Operation;
use crate::tokens::usage::{event_data, SseScanner, DEFAULT_MAX_EVENT};

/// The most of one answer a capture keeps: 4 MiB of a JSON body's bytes, or 4 MiB of text
/// (UTF-8 bytes, all fields together) reassembled from a stream. A stream keeps no more than
/// the JSON answer would, however many choices, tool calls or output items it has.
pub const MAX_ANSWER_BYTES: usize = 4 << 20;

/// The largest SSE event a stream capture reads: 1 MiB (the usage scanner's bound, from
/// which the capture takes its events). A larger event is skipped unread, never buffered
/// further, and the capture is marked cut.
pub const MAX_EVENT_BYTES: usize = DEFAULT_MAX_EVENT;

/// The most choices (chat, completions) or output items (Responses) a stream capture keeps;
/// more are ignored and the capture is marked cut.
pub const MAX_CHOICES: usize = 128;

/// The most tool calls per choice (or content parts per Responses message) a stream capture
/// keeps; more are ignored and the capture is marked cut.
pub const MAX_TOOL_CALLS: usize = 128;

/// The `max_field_chars` a caller passes for [`ContentMode::Full`] and [`ContentMode::Hash`]:
/// 1 Mi characters per text field.
pub const FULL_FIELD_CHARS: usize = 1 << 20;

/// How many characters past `max_field_chars` a stream capture keeps of each text field:
/// 1024. [`apply`] redacts before it truncates, so the text just past the cut must be there
/// for a secret that straddles it to be recognised whole (a key cut to its first characters
/// matches no pattern and would be kept); with the slack a streamed field ends up exactly as
/// the same field of a JSON answer, marked [`TRUNCATED_MARKER`] when over N. Secrets longer
/// than the slack (long JWTs) straddling the cut may leave a prefix.
pub const REDACTION_SLACK_CHARS: usize = 1024;

/// What [`apply`] appends to a text field that [`ContentMode::Truncate`] cut: `…[truncated]`
/// (U+2026 then `[truncated]`). In-band, so it survives any projection of the record: a
/// KQL `has "…[truncated]"` or SQL `LIKE '%…[truncated]'` finds cut fields, and a field of
/// exactly N characters is not marked.
pub const TRUNCATED_MARKER: &str = "…[truncated]";

/// What replaces each redaction match.
pub const REDACTED: &str = "[REDACTED]";

/// The object keys whose values are enumerations the OpenAI API defines (`"role":
/// "assistant"`, `"type": "function"`, `"finish_reason": "stop"`, …): [`apply`] redacts
/// their string values like any other but does not cut or hash them when they are at most
/// [`MAX_ENUM_CHARS`] characters long, so a record still says who spoke and why an answer
/// ended under `truncate` and `hash`. A longer value under one of these keys is not an
/// enumeration (a client or backend chose it) and is cut or hashed like text. Ids and
/// names (`id`, `tool_call_id`, `call_id`, `name`, a function's `name`) are chosen by
/// clients and backends, so they are text: redacted, cut and hashed (equal ids hash
/// equal, so a tool call and its result still correlate under `hash`).
pub const ENUM_KEYS: &[&str] = &["role", "type", "object", "finish_reason", "status", "index"];

/// The longest value under an [`ENUM_KEYS`] key that [`apply`] takes for an enumeration:
/// 64 characters (Unicode scalar values). The API's values are a few dozen at most.
pub const MAX_ENUM_CHARS: usize = 64;

/// The most of a body that does not parse [`request_content`] and [`response_content`]
/// keep as `raw`: 1 MiB of UTF-8 (the body decoded lossily, each invalid sequence as
/// U+FFFD), cut at a character boundary.
pub const MAX_RAW_BYTES: usize = 1 << 20;

/// The longest model name a stream capture keeps (bytes); a longer `model` is not a model
/// name and is ignored.
const MAX_MODEL_BYTES: usize = 256;

// ------------------------------------------------------------------------------------------
// Capture
// ------------------------------------------------------------------------------------------

/// Captures an answer's content on the worker thread as its bytes pass (never holding the
/// stream back: [`AnswerCapture::feed`] only reads). Bounded memory whatever the answer's
/// size: at most [`MAX_ANSWER_BYTES`] kept, plus one incomplete SSE event of at most
/// [`MAX_EVENT_BYTES`].
#[derive(Debug)]
pub enum AnswerCapture {
    /// A non-streamed answer: its JSON body's bytes.
    Json(JsonCapture),
    /// A `text/event-stream` answer, reassembled as it passes.
    Stream(Box<StreamCapture>),
}

/// The bytes of a JSON answer body, up to [`MAX_ANSWER_BYTES`].
#[derive(Debug, Default)]
pub struct JsonCapture {
    body: Vec<u8>,
    cut: bool,
}

/// A streamed answer being reassembled from its SSE events.
#[derive(Debug)]
pub struct StreamCapture {
    /// Splits the pieces into events (CRLF/LF/CR line ends, a leading BOM, events over
    /// [`MAX_EVENT_BYTES`] skipped), the same reading the usage accounting does.
    scanner: SseScanner,
    /// `data: [DONE]` was seen: later events are ignored.
    done: bool,
    model: Option<String>,
    limits: Limits,
    parts: Reassembly,
}

/// The bounds every text field of one stream shares.
#[derive(Debug)]
struct Limits {
    /// Characters (Unicode scalar values) per text field.
    max_chars: usize,
    /// UTF-8 bytes left for all fields together.
    bytes_left: usize,
    /// Something was not kept: a field outgrew a bound, a choice or tool call past the
    /// count bounds, an event too large to read or that could not be read whole.
    cut: bool,
}

/// One text field being appended to, with its length in characters.
#[derive(Debug, Default)]
struct Text {
    s: String,
    chars: usize,
}

impl Text {
    /// Appends as much of `piece` as the bounds let in (whole characters only).
    fn push(&mut self, piece: &str, limits: &mut Limits) {
        if piece.is_empty() {
            return;
        }
        let room = limits.max_chars.saturating_sub(self.chars);
        // A string's characters never outnumber its bytes, so a piece short enough in bytes
        // fits whole.
        let (end, chars) = if piece.len() <= room && piece.len() <= limits.bytes_left {
            (piece.len(), piece.chars().count())
        } else {
            prefix(piece, room, limits.bytes_left)
        };
        if end < piece.len() {
            limits.cut = true;
        }
        self.s.push_str(&piece[..end]);
        self.chars += chars;
        limits.bytes_left -= end;
    }

    /// Replaces a field sent whole rather than in pieces (role, id, type, name, finish
    /// reason) with `value`, under the same bounds as text: ids and names are text to
    /// [`apply`], and the bound (at least [`REDACTION_SLACK_CHARS`]) is far above
    /// [`MAX_ENUM_CHARS`], so an enumeration is never cut here.
    fn set(&mut self, value: &str, limits: &mut Limits) {
        limits.bytes_left += self.s.len();
        self.s.clear();
        self.chars = 0;
        self.push(value, limits);
    }
}

/// The byte length and character count of the longest prefix of `s` with at most
/// `max_chars` characters and `max_bytes` bytes.
fn prefix(s: &str, max_chars: usize, max_bytes: usize) -> (usize, usize) {
    let mut chars = 0;
    for (at, c) in s.char_indices() {
        if chars == max_chars || at + c.len_utf8() > max_bytes {
            return (at, chars);
        }
        chars += 1;
    }
    (s.len(), chars)
}

fn push_opt(field: &mut Option<Text>, piece: &str, limits: &mut Limits) {
    field.get_or_insert_with(Text::default).push(piece, limits);
}

fn set_opt(field: &mut Option<Text>, value: &str, limits: &mut Limits) {
    field.get_or_insert_with(Text::default).set(value, limits);
}

/// The entry of `list` keyed `key`, added when new and the list has room (else the capture
/// is marked cut and `None` is returned).
fn slot<'l, T>(
    list: &'l mut Vec<T>,
    key: u64,
    key_of: impl Fn(&T) -> u64,
    make: impl FnOnce() -> T,
    cap: usize,
    limits: &mut Limits,
) -> Option<&'l mut T> {
    match list.iter().position(|t| key_of(t) == key) {
        Some(at) => list.get_mut(at),
        None if list.len() < cap => {
            list.push(make());
            list.last_mut()
        }
        None => {
            limits.cut = true;
            None
        }
    }
}

/// What a stream has said so far, per operation.
#[derive(Debug)]
enum Reassembly {
    Chat(Vec<ChoiceAcc>),
    Completions(Vec<ChoiceAcc>),
    Responses(Vec<ItemAcc>),
}

/// One choice of a chat or completions stream (`content` holds a completion's `text`).
#[derive(Debug, Default)]
struct ChoiceAcc {
    index: u64,
    role: Option<Text>,
    content: Option<Text>,
    refusal: Option<Text>,
    tool_calls: Vec<ToolCallAcc>,
    /// The deprecated `function_call` (functions API), still sent by older deployments.
    function_call: Option<FunctionAcc>,
    finish_reason: Option<Text>,
}

#[derive(Debug, Default)]
struct ToolCallAcc {
    index: u64,
    id: Option<Text>,
    kind: Option<Text>,
    function: FunctionAcc,
}

#[derive(Debug, Default)]
struct FunctionAcc {
    name: Option<Text>,
    arguments: Text,
}

/// One output item of a Responses stream.
#[derive(Debug)]
struct ItemAcc {
    output_index: u64,
    kind: ItemKind,
}

#[derive(Debug)]
enum ItemKind {
    Message {
        role: Option<Text>,
        parts: Vec<PartAcc>,
    },
    FunctionCall {
        call_id: Option<Text>,
        name: Option<Text>,
        arguments: Text,
    },
    /// Any other item (reasoning, web_search_call, …): only its type is kept.
    Other { kind: Text },
}

/// One content part of a Responses message: `output_text` or `refusal`.
#[derive(Debug)]
struct PartAcc {
    content_index: u64,
    refusal: bool,
    text: Text,
}

// The per-event shapes, borrowed from the event's data (owned only where a string has
// escapes). Unknown fields are skipped; a field of the wrong type fails the event, which is
// then skipped whole.

/// A chat completion chunk or a completions chunk.
#[derive(Deserialize)]
struct Chunk<'a> {
    #[serde(borrow)]
    model: Option<Cow<'a, str>>,
    #[serde(borrow)]
    choices: Option<Vec<ChunkChoice<'a>>>,
    /// Present (non-null) in a usage-only chunk: only whether it is there matters.
    usage: Option<IgnoredAny>,
}

#[derive(Deserialize)]
struct ChunkChoice<'a> {
    #[serde(default)]
    index: u64,
    #[serde(borrow)]
    delta: Option<Delta<'a>>,
    /// Completions: the text piece.
    #[serde(borrow)]
    text: Option<Cow<'a, str>>,
    #[serde(borrow)]
    finish_reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Delta<'a> {
    #[serde(borrow)]
    role: Option<Cow<'a, str>>,
    #[serde(borrow)]
    content: Option<Cow<'a, str>>,
    #[serde(borrow)]
    refusal: Option<Cow<'a, str>>,
    #[serde(borrow)]
    tool_calls: Option<Vec<ToolCallDelta<'a>>>,
    #[serde(borrow)]
    function_call: Option<FunctionDelta<'a>>,
}

#[derive(Deserialize)]
struct ToolCallDelta<'a> {
    #[serde(default)]
    index: u64,
    #[serde(borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow, rename = "type")]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow)]
    function: Option<FunctionDelta<'a>>,
}

#[derive(Deserialize)]
struct FunctionDelta<'a> {
    #[serde(borrow)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow)]
    arguments: Option<Cow<'a, str>>,
}

/// A Responses API streaming event.
#[derive(Deserialize)]
struct ResponsesEvent<'a> {
    #[serde(borrow, rename = "type")]
    kind: Cow<'a, str>,
    #[serde(default)]
    output_index: u64,
    #[serde(default)]
    content_index: u64,
    #[serde(borrow)]
    delta: Option<Cow<'a, str>>,
    #[serde(borrow)]
    item: Option<ItemHead<'a>>,
    #[serde(borrow)]
    response: Option<ResponseHead<'a>>,
}

/// `response.output_item.added`'s item, as far as the capture needs it.
#[derive(Deserialize)]
struct ItemHead<'a> {
    #[serde(borrow, rename = "type")]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow)]
    role: Option<Cow<'a, str>>,
    #[serde(borrow)]
    call_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow)]
    arguments: Option<Cow<'a, str>>,
}

/// The `response` object of `response.created` … `response.completed`: its model.
#[derive(Deserialize)]
struct ResponseHead<'a> {
    #[serde(borrow)]
    model: Option<Cow<'a, str>>,
}

impl AnswerCapture {
    /// A capture for an answer to `operation` (`event_stream`: its content-type is
    /// `text/event-stream`), or `None` when nothing of it is kept: embeddings (vectors are
    /// not content) and operations without content (`/v1/models`).
    ///
    /// `max_field_chars` bounds each text field a stream reassembles (a choice's content,
    /// refusal, a tool call's arguments, a completion's text, a Responses output text or
    /// refusal): past it and [`REDACTION_SLACK_CHARS`] more, the field stops growing and the
    /// capture is marked cut ([`apply`] then cuts it to N and marks it). Fields sent whole
    /// (role, ids, names, types, finish reason) have the same bound. Pass
    /// the truncate N for [`ContentMode::Truncate`], [`FULL_FIELD_CHARS`] for `Full` and
    /// `Hash`. A JSON body is kept as bytes (up to [`MAX_ANSWER_BYTES`]) and cut later by
    /// [`apply`].
    pub fn new(operation: Operation, event_stream: bool, max_field_chars: usize) -> Option<Self> {
        let parts = match operation {
            Operation::Embeddings | Operation::Models => return None,
            _ if !event_stream => return Some(AnswerCapture::Json(JsonCapture::default())),
            Operation::ChatCompletions => Reassembly::Chat(Vec::new()),
            Operation::Completions => Reassembly::Completions(Vec::new()),
            Operation::Responses => Reassembly::Responses(Vec::new()),
        };
        Some(AnswerCapture::Stream(Box::new(StreamCapture {
            scanner: SseScanner::new(false).with_max_event(MAX_EVENT_BYTES),
            done: false,
            model: None,
            limits: Limits {
                max_chars: max_field_chars.saturating_add(REDACTION_SLACK_CHARS),
                bytes_left: MAX_ANSWER_BYTES,
                cut: false,
            },
            parts,
        })))
    }

    /// Reads the next piece of the (decoded: no chunked framing, no content-encoding)
    /// body, split anywhere (mid-event, mid-UTF-8 character, mid-CRLF).
    pub fn feed(&mut self, data: &[u8]) {
        match self {
            AnswerCapture::Json(json) => {
                let room = MAX_ANSWER_BYTES - json.body.len();
                if data.len() > room {
                    json.cut = true;
                }
                json.body.extend_from_slice(&data[..data.len().min(room)]);
            }
            AnswerCapture::Stream(stream) => stream.feed(data),
        }
    }

    /// The body ended: what was captured. A stream's last event is read even without the
    /// blank line that should end it.
    pub fn finish(self) -> Answer {
        match self {
            AnswerCapture::Json(json) => Answer::Json {
                body: json.body,
                cut: json.cut,
            },
            AnswerCapture::Stream(stream) => stream.finish(),
        }
    }
}

impl StreamCapture {
    fn feed(&mut self, data: &[u8]) {
        if self.done {
            return;
        }
        let StreamCapture {
            scanner,
            done,
            model,
            limits,
            parts,
        } = self;
        let read = scanner.observe_with(data, |event| {
            on_event(event.lines, done, model, limits, parts);
        });
        if read.is_err() {
            // An event outgrew MAX_EVENT_BYTES: it passes unread.
            limits.cut = true;
        }
    }

    fn finish(mut self) -> Answer {
        let StreamCapture {
            scanner,
            done,
            model,
            limits,
            parts,
        } = &mut self;
        if !*done {
            scanner.finish_with(|event| on_event(event.lines, done, model, limits, parts));
        }
        let cut = self.limits.cut || self.scanner.unread_bytes() > 0;
        let content = match self.parts {
            Reassembly::Chat(choices) => choices_value(choices, chat_choice),
            Reassembly::Completions(choices) => choices_value(choices, completion_choice),
            Reassembly::Responses(items) => responses_value(items),
        };
        Answer::Stream {
            model: self.model,
            content,
            cut,
        }
    }
}

/// Reads one complete event (`lines`: its bytes as SSE lines) into the reassembly.
fn on_event(
    lines: &[u8],
    done: &mut bool,
    model: &mut Option<String>,
    limits: &mut Limits,
    parts: &mut Reassembly,
) {
    if *done {
        return;
    }
    if lines.len() > MAX_EVENT_BYTES {
        // The scanner holds at most MAX_EVENT_BYTES of an unfinished event, but one that
        // ends in the piece after may still reach us whole: skipped all the same, so the
        // outcome does not depend on where the pieces split.
        limits.cut = true;
        return;
    }
    let data = event_data(lines);
    let data = data.as_ref();
    if data.trim_ascii() == b"[DONE]" {
        *done = true;
        return;
    }
    if data.trim_ascii().is_empty() {
        // A keep-alive: a comment, an `event:` line alone, an empty `data:`.
        return;
    }
    if read_event(data, model, limits, parts) {
        return;
    }
    // The client got this event, the record cannot show it whole: the capture is cut.
    limits.cut = true;
    if std::str::from_utf8(data).is_err() {
        // Invalid UTF-8 (a backend's bug): read what it says, each bad sequence as U+FFFD.
        let lossy = String::from_utf8_lossy(data);
        read_event(lossy.as_bytes(), model, limits, parts);
    }
}

/// Reads one event's data into the reassembly; `false` when it could not be read as an
/// event of the stream's kind (not JSON, not UTF-8, a field of the wrong type, a content
/// event missing its content, an error event). Chunks without content that are part of a
/// normal stream (Azure's `prompt_filter_results` chunk and the usage chunk, both with
/// `"choices": []`, or a usage chunk without `choices`) and Responses lifecycle events are
/// read (`true`), adding nothing.
fn read_event(
    data: &[u8],
    model: &mut Option<String>,
    limits: &mut Limits,
    parts: &mut Reassembly,
) -> bool {
    match parts {
        Reassembly::Chat(choices) => match serde_json::from_slice::<Chunk<'_>>(data) {
            Ok(chunk) if chunk.choices.is_some() || chunk.usage.is_some() => {
                on_chunk(chunk, model, limits, choices, chat_delta);
                true
            }
            _ => false,
        },
        Reassembly::Completions(choices) => match serde_json::from_slice::<Chunk<'_>>(data) {
            Ok(chunk) if chunk.choices.is_some() || chunk.usage.is_some() => {
                on_chunk(chunk, model, limits, choices, |acc, choice, limits| {
                    if let Some(text) = &choice.text {
                        push_opt(&mut acc.content, text, limits);
                    }
                });
                true
            }
            _ => false,
        },
        Reassembly::Responses(items) => match serde_json::from_slice::<ResponsesEvent<'_>>(data) {
            Ok(event) => on_responses_event(event, model, limits, items),
            Err(_) => false,
        },
    }
}

fn on_chunk(
    chunk: Chunk<'_>,
    model: &mut Option<String>,
    limits: &mut Limits,
    choices: &mut Vec<ChoiceAcc>,
    on_choice: impl Fn(&mut ChoiceAcc, &ChunkChoice<'_>, &mut Limits),
) {
    if model.is_none() {
        if let Some(named) = chunk.model.as_deref() {
            if !named.is_empty() && named.len() <= MAX_MODEL_BYTES {
                *model = Some(named.to_owned());
            }
        }
    }
    for choice in chunk.choices.iter().flatten() {
        let make = || ChoiceAcc {
            index: choice.index,
            ..ChoiceAcc::default()
        };
        let Some(acc) = slot(
            choices,
            choice.index,
            |c| c.index,
            make,
            MAX_CHOICES,
            limits,
        ) else {
            continue;
        };
        on_choice(acc, choice, limits);
        if let Some(reason) = &choice.finish_reason {
            set_opt(&mut acc.finish_reason, reason, limits);
        }
    }
}

fn chat_delta(acc: &mut ChoiceAcc, choice: &ChunkChoice<'_>, limits: &mut Limits) {
    let Some(delta) = &choice.delta else {
        return;
    };
    if let Some(role) = &delta.role {
        set_opt(&mut acc.role, role, limits);
    }
    if let Some(content) = &delta.content {
        push_opt(&mut acc.content, content, limits);
    }
    if let Some(refusal) = &delta.refusal {
        push_opt(&mut acc.refusal, refusal, limits);
    }
    if let Some(function) = &delta.function_call {
        let call = acc.function_call.get_or_insert_with(FunctionAcc::default);
        function_delta(call, function, limits);
    }
    for call in delta.tool_calls.iter().flatten() {
        let make = || ToolCallAcc {
            index: call.index,
            ..ToolCallAcc::default()
        };
        let Some(slot) = slot(
            &mut acc.tool_calls,
            call.index,
            |c| c.index,
            make,
            MAX_TOOL_CALLS,
            limits,
        ) else {
            continue;
        };
        if let Some(id) = &call.id {
            set_opt(&mut slot.id, id, limits);
        }
        if let Some(kind) = &call.kind {
            set_opt(&mut slot.kind, kind, limits);
        }
        if let Some(function) = &call.function {
            function_delta(&mut slot.function, function, limits);
        }
    }
}

fn function_delta(acc: &mut FunctionAcc, delta: &FunctionDelta<'_>, limits: &mut Limits) {
    if let Some(name) = &delta.name {
        set_opt(&mut acc.name, name, limits);
    }
    if let Some(arguments) = &delta.arguments {
        acc.arguments.push(arguments, limits);
    }
}

/// Reads one Responses event; `false` when it is an `error` event or a content event
/// without its content (no `item`, no `delta`, a delta for an item of another kind).
fn on_responses_event(
    event: ResponsesEvent<'_>,
    model: &mut Option<String>,
    limits: &mut Limits,
    items: &mut Vec<ItemAcc>,
) -> bool {
    if let Some(named) = event.response.as_ref().and_then(|r| r.model.as_deref()) {
        // Every lifecycle event repeats the response object; the last one (completed)
        // has the final word.
        if !named.is_empty() && named.len() <= MAX_MODEL_BYTES {
            *model = Some(named.to_owned());
        }
    }
    let output_index = event.output_index;
    let key = |i: &ItemAcc| i.output_index;
    match event.kind.as_ref() {
        "response.output_item.added" => {
            let Some(head) = &event.item else {
                return false;
            };
            let kind = match head.kind.as_deref() {
                Some("message") => ItemKind::Message {
                    role: None,
                    parts: Vec::new(),
                },
                Some("function_call") => ItemKind::FunctionCall {
                    call_id: None,
                    name: None,
                    arguments: Text::default(),
                },
                other => {
                    let mut kind = Text::default();
                    kind.set(other.unwrap_or(""), limits);
                    ItemKind::Other { kind }
                }
            };
            let make = || ItemAcc { output_index, kind };
            let Some(item) = slot(items, output_index, key, make, MAX_CHOICES, limits) else {
                // Past the count bound: marked cut by `slot`.
                return true;
            };
            match &mut item.kind {
                ItemKind::Message { role, .. } => {
                    if let Some(r) = &head.role {
                        set_opt(role, r, limits);
                    }
                }
                ItemKind::FunctionCall {
                    call_id,
                    name,
                    arguments,
                } => {
                    if let Some(id) = &head.call_id {
                        set_opt(call_id, id, limits);
                    }
                    if let Some(n) = &head.name {
                        set_opt(name, n, limits);
                    }
                    if let Some(a) = &head.arguments {
                        arguments.push(a, limits);
                    }
                }
                ItemKind::Other { .. } => {}
            }
            true
        }
        kind @ ("response.output_text.delta" | "response.refusal.delta") => {
            let refusal = kind == "response.refusal.delta";
            let Some(delta) = &event.delta else {
                return false;
            };
            let make = || ItemAcc {
                output_index,
                kind: ItemKind::Message {
                    role: None,
                    parts: Vec::new(),
                },
            };
            let Some(item) = slot(items, output_index, key, make, MAX_CHOICES, limits) else {
                // Past the count bound: marked cut by `slot`.
                return true;
            };
            let ItemKind::Message { parts, .. } = &mut item.kind else {
                return false;
            };
            let content_index = event.content_index;
            let make = || PartAcc {
                content_index,
                refusal,
                text: Text::default(),
            };
            let part_key = |p: &PartAcc| p.content_index;
            if let Some(part) = slot(parts, content_index, part_key, make, MAX_TOOL_CALLS, limits) {
                part.text.push(delta, limits);
            }
            true
        }
        "response.function_call_arguments.delta" => {
            let Some(delta) = &event.delta else {
                return false;
            };
            let make = || ItemAcc {
                output_index,
                kind: ItemKind::FunctionCall {
                    call_id: None,
                    name: None,
                    arguments: Text::default(),
                },
            };
            let Some(item) = slot(items, output_index, key, make, MAX_CHOICES, limits) else {
                // Past the count bound: marked cut by `slot`.
                return true;
            };
            match &mut item.kind {
                ItemKind::FunctionCall { arguments, .. } => {
                    arguments.push(delta, limits);
                    true
                }
                _ => false,
            }
        }
        // The stream failed mid-way: the answer is not whole.
        "error" => false,
        // Lifecycle and `.done` events: nothing the deltas did not already say.
        _ => true,
    }
}

fn opt_text(text: Option<Text>) -> Value {
    text.map_or(Value::Null, |t| Value::String(t.s))
}

fn choices_value(mut choices: Vec<ChoiceAcc>, one: fn(ChoiceAcc) -> Value) -> Value {
    choices.sort_by_key(|c| c.index);
    let mut content = Map::new();
    content.insert(
        "choices".into(),
        Value::Array(choices.into_iter().map(one).collect()),
    );
    Value::Object(content)
}

fn chat_choice(choice: ChoiceAcc) -> Value {
    let mut message = Map::new();
    message.insert("role".into(), opt_text(choice.role));
    message.insert("content".into(), opt_text(choice.content));
    if let Some(refusal) = choice.refusal {
        message.insert("refusal".into(), Value::String(refusal.s));
    }
    let mut calls = choice.tool_calls;
    if !calls.is_empty() {
        calls.sort_by_key(|c| c.index);
        let calls = calls
            .into_iter()
            .map(|c| tool_call_value(opt_text(c.id), opt_text(c.kind), function_value(c.function)))
            .collect();
        message.insert("tool_calls".into(), Value::Array(calls));
    }
    if let Some(function) = choice.function_call {
        message.insert("function_call".into(), function_value(function));
    }
    choice_value(
        choice.index,
        opt_text(choice.finish_reason),
        "message",
        message.into(),
    )
}

fn completion_choice(choice: ChoiceAcc) -> Value {
    let text = opt_text(choice.content);
    choice_value(choice.index, opt_text(choice.finish_reason), "text", text)
}

fn function_value(function: FunctionAcc) -> Value {
    function_object(opt_text(function.name), Value::String(function.arguments.s))
}

fn function_object(name: Value, arguments: Value) -> Value {
    let mut function = Map::new();
    function.insert("name".into(), name);
    function.insert("arguments".into(), arguments);
    Value::Object(function)
}

fn tool_call_value(id: Value, kind: Value, function: Value) -> Value {
    let mut call = Map::new();
    call.insert("id".into(), id);
    call.insert("type".into(), kind);
    call.insert("function".into(), function);
    Value::Object(call)
}

fn choice_value(index: u64, finish_reason: Value, key: &str, body: Value) -> Value {
    let mut choice = Map::new();
    choice.insert("index".into(), index.into());
    choice.insert("finish_reason".into(), finish_reason);
    choice.insert(key.into(), body);
    Value::Object(choice)
}

fn responses_value(mut items: Vec<ItemAcc>) -> Value {
    items.sort_by_key(|i| i.output_index);
    let output = items
        .into_iter()
        .map(|item| match item.kind {
            ItemKind::Message { role, mut parts } => {
                parts.sort_by_key(|p| p.content_index);
                let parts = parts
                    .into_iter()
                    .map(|p| part_value(p.refusal, p.text.s))
                    .collect();
                message_item(opt_text(role), parts)
            }
            ItemKind::FunctionCall {
                call_id,
                name,
                arguments,
            } => function_call_item(
                opt_text(call_id),
                opt_text(name),
                Value::String(arguments.s),
            ),
            ItemKind::Other { kind } => other_item(Value::String(kind.s)),
        })
        .collect();
    responses_content(output)
}

fn part_value(refusal: bool, text: String) -> Value {
    let mut part = Map::new();
    if refusal {
        part.insert("type".into(), "refusal".into());
        part.insert("refusal".into(), text.into());
    } else {
        part.insert("type".into(), "output_text".into());
        part.insert("text".into(), text.into());
    }
    Value::Object(part)
}

fn message_item(role: Value, parts: Vec<Value>) -> Value {
    let mut item = Map::new();
    item.insert("type".into(), "message".into());
    item.insert("role".into(), role);
    item.insert("content".into(), Value::Array(parts));
    Value::Object(item)
}

fn function_call_item(call_id: Value, name: Value, arguments: Value) -> Value {
    let mut item = Map::new();
    item.insert("type".into(), "function_call".into());
    item.insert("call_id".into(), call_id);
    item.insert("name".into(), name);
    item.insert("arguments".into(), arguments);
    Value::Object(item)
}

fn other_item(kind: Value) -> Value {
    let mut item = Map::new();
    item.insert("type".into(), kind);
    Value::Object(item)
}

/// `{"output": output, "output_text": …}`, `output_text` being every `output_text` part of
/// every message item, joined in order.
fn responses_content(output: Vec<Value>) -> Value {
    let mut text = String::new();
    for item in &output {
        if item.get("type").and_then(Value::as_str) != Some("message") {
            continue;
        }
        for part in item
            .get("content")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if part.get("type").and_then(Value::as_str) == Some("output_text") {
                if let Some(t) = part.get("text").and_then(Value::as_str) {
                    text.push_str(t);
                }
            }
        }
    }
    let mut content = Map::new();
    content.insert("output".into(), Value::Array(output));
    content.insert("output_text".into(), Value::String(text));
    Value::Object(content)
}

// ------------------------------------------------------------------------------------------
// Extract
// ------------------------------------------------------------------------------------------

/// An answer's content as captured.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// A JSON body (non-streamed): its bytes, up to [`MAX_ANSWER_BYTES`] (`cut`: it was
    /// longer and only the first 4 MiB were kept; parsed later, off the worker, by
    /// [`response_content`]).
    Json {
        /// The body's first bytes.
        body: Vec<u8>,
        /// The body was longer than [`MAX_ANSWER_BYTES`].
        cut: bool,
    },
    /// A stream, reassembled: the answer as the non-streamed JSON answer would have been
    /// (the shape [`response_content`] gives), with the model the chunks named.
    Stream {
        /// The first non-empty `model` of a chat or completions chunk; the last non-empty
        /// `response.model` of a Responses stream (`response.completed`'s).
        model: Option<String>,
        /// The reassembled content.
        content: Value,
        /// Something was not kept: a field outgrew `max_field_chars` and
        /// [`REDACTION_SLACK_CHARS`], the
        /// [`MAX_ANSWER_BYTES`] total, more than [`MAX_CHOICES`] choices or
        /// [`MAX_TOOL_CALLS`] tool calls, an event over [`MAX_EVENT_BYTES`] was skipped, or
        /// an event could not be read whole (not JSON, invalid UTF-8 — then read with each
        /// bad sequence as U+FFFD —, a field of the wrong type, a content event without its
        /// content, an error event). `[DONE]`, keep-alives (comments, empty data) and
        /// content-less chunks of a normal stream (`prompt_filter_results`, usage) are not
        /// skips.
        cut: bool,
    },
}

/// The content a record keeps of a request body for `operation`, before the policy:
/// chat: `{"messages": […]}`; completions: `{"prompt": …}`; embeddings: `{"input": …}`;
/// responses: `{"instructions": …, "input": …, "prompt": …}` (`prompt`: a reusable prompt
/// reference, whose `variables` are prompt text). Keys absent (or `null`) in the body are
/// omitted; their values are kept as sent (text parts, images, tool calls and all).
///
/// A body that does not parse as a JSON object gives `{"unparsed": true, "raw": "…"}`
/// (`"cut": true` added when `raw` is not the whole body): `raw` is the body as text (lossy
/// UTF-8, at most [`MAX_RAW_BYTES`]). Sluice forwards bodies `serde_json` refuses (nesting
/// past its 128 levels in a member Sluice does not read, numbers such as `1e400` out of
/// `f64` range), so the prompt is kept that way rather than lost; [`apply`] then redacts,
/// cuts or hashes `raw` like any text.
///
/// `None` when the operation has no request content (`models`), and when the body parses
/// but has none of the keys: the backend gets no prompt from it either (it refuses such a
/// request, or reads what it has from elsewhere: a stored prompt, a previous response),
/// so there is nothing to record, and recording the whole body would keep parameters and
/// metadata that are not content.
pub fn request_content(operation: Operation, body: &[u8]) -> Option<Value> {
    let keys: &[&str] = match operation {
        Operation::ChatCompletions => &["messages"],
        Operation::Completions => &["prompt"],
        Operation::Embeddings => &["input"],
        Operation::Responses => &["instructions", "input", "prompt"],
        Operation::Models => return None,
    };
    // Read only the content keys, the rest skipped unbuilt (`tools` schemas, parameters);
    // a body that does not fit `RequestKeys` (a key repeated) is read whole.
    let (content, cut) =
        bounded::read(
            || match serde_json::from_slice::<Object<RequestKeys>>(body) {
                Ok(Object(mut read)) => {
                    let mut content = Map::new();
                    for &key in keys {
                        if let Some(value) = read.take(key) {
                            content.insert(key.into(), value);
                        }
                    }
                    (!content.is_empty()).then_some(Value::Object(content))
                }
                Err(_) => request_content_tree(keys, body),
            },
        );
    content.map(|content| marked_cut(content, cut))
}

/// `content` with `"cut": true` added when `cut` (a [`bounded::read`] skipped part of it).
fn marked_cut(mut content: Value, cut: bool) -> Value {
    if let (Value::Object(fields), true) = (&mut content, cut) {
        fields.insert("cut".into(), Value::Bool(true));
    }
    content
}

/// [`request_content`] of any body, read whole as a tree: slower, and the reference the
/// skipping read agrees with.
fn request_content_tree(keys: &[&str], body: &[u8]) -> Option<Value> {
    let Ok(Tree(Value::Object(mut fields))) = serde_json::from_slice::<Tree>(body) else {
        return Some(unparsed(body, false));
    };
    let mut content = Map::new();
    for &key in keys {
        match fields.remove(key) {
            None | Some(Value::Null) => {}
            Some(value) => {
                content.insert(key.into(), value);
            }
        }
    }
    (!content.is_empty()).then_some(Value::Object(content))
}

/// `T` read from a JSON object only. serde's derived structs also read a JSON array, by
/// position (`["m", [...]]` as `{"model": "m", "choices": [...]}`), which the tree read
/// rightly does not: wrapped in `Object`, an array does not fit.
struct Object<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Object<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Only<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for Only<T> {
            type Value = Object<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<Object<T>, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(Object)
            }
        }
        deserializer.deserialize_map(Only(std::marker::PhantomData))
    }
}

/// The content keys of a request body, every other member skipped without being built.
/// `null` reads as absent.
#[derive(Deserialize)]
struct RequestKeys {
    messages: Option<Tree>,
    prompt: Option<Tree>,
    input: Option<Tree>,
    instructions: Option<Tree>,
}

impl RequestKeys {
    fn take(&mut self, key: &str) -> Option<Value> {
        let field = match key {
            "messages" => &mut self.messages,
            "prompt" => &mut self.prompt,
            "input" => &mut self.input,
            "instructions" => &mut self.instructions,
            _ => return None,
        };
        field.take().map(|Tree(value)| value)
    }
}

/// The model an answer names and its content, from a captured answer, in these shapes
/// (keys as in the OpenAI API objects; Azure's content-filter fields, logprobs, usage and
/// ids are not content and are left out):
///
/// - chat: `{"choices": [{"index", "finish_reason", "message": {"role", "content",
///   "refusal"?, "tool_calls"?: [{"id", "type", "function": {"name", "arguments"}}],
///   "function_call"?: {"name", "arguments"}}}]}` (`refusal` when non-null, `tool_calls`
///   when non-empty, `function_call` for the deprecated functions API);
/// - completions: `{"choices": [{"index", "finish_reason", "text"}]}`;
/// - responses: `{"output": [items], "output_text": "…"}`, the items in order: a message as
///   `{"type": "message", "role", "content": [{"type": "output_text", "text"} |
///   {"type": "refusal", "refusal"}]}`, a function call as `{"type": "function_call",
///   "call_id", "name", "arguments"}`, any other item as `{"type"}` only (reasoning, search
///   calls: their bulk is not the answer); `output_text` joins the `output_text` parts, as
///   the SDKs' `output_text` property does, so a query can read the answer in one field.
/// - embeddings and models: no content (the model only).
///
/// A JSON body carrying an OpenAI error (`{"error": {…}}`) gives `{"error": {…}}` as sent.
/// A JSON body that does not parse, has another shape, or was cut gives
/// `{"unparsed": true, "raw": "…"}` rather than nothing, so the answer is still audited:
/// `raw` is the body as text (lossy UTF-8, at most [`MAX_RAW_BYTES`]; `"cut": true` added
/// when the body was longer than the capture's [`MAX_ANSWER_BYTES`] or than `raw`). A stream's content is as reassembled, with `"cut": true` added
/// when something was not kept (see [`Answer::Stream`]).
pub fn response_content(operation: Operation, answer: Answer) -> (Option<String>, Option<Value>) {
    match answer {
        Answer::Stream {
            model,
            mut content,
            cut,
        } => {
            if cut {
                if let Value::Object(fields) = &mut content {
                    fields.insert("cut".into(), Value::Bool(true));
                }
            }
            (model, Some(content))
        }
        Answer::Json { body, cut: true } => (None, Some(unparsed(&body, true))),
        Answer::Json { body, cut: false } => json_content(operation, &body),
    }
}

/// `{"unparsed": true, "raw": …}` for a body that is not (or not wholly) read: `raw` as
/// [`raw_text`] gives it, `"cut": true` when `cut` (the body was longer than `body`) or
/// `raw` is not all of `body`.
fn unparsed(body: &[u8], cut: bool) -> Value {
    let (raw, whole) = raw_text(body);
    let mut fields = Map::new();
    fields.insert("unparsed".into(), Value::Bool(true));
    fields.insert("raw".into(), Value::String(raw));
    if cut || !whole {
        fields.insert("cut".into(), Value::Bool(true));
    }
    Value::Object(fields)
}

/// `body` as text, each invalid UTF-8 sequence as U+FFFD, at most [`MAX_RAW_BYTES`] (cut
/// at a character boundary); `true` when that is all of `body`.
fn raw_text(body: &[u8]) -> (String, bool) {
    let mut raw = String::with_capacity(body.len().min(MAX_RAW_BYTES));
    for chunk in body.utf8_chunks() {
        let invalid = if chunk.invalid().is_empty() {
            ""
        } else {
            "\u{FFFD}"
        };
        for piece in [chunk.valid(), invalid] {
            let room = MAX_RAW_BYTES - raw.len();
            if piece.len() > room {
                let end = (0..=room)
                    .rev()
                    .find(|&at| piece.is_char_boundary(at))
                    .unwrap_or(0);
                raw.push_str(&piece[..end]);
                let keep = outside_token(&raw);
                raw.truncate(keep);
                return (raw, false);
            }
            raw.push_str(piece);
        }
    }
    (raw, true)
}

/// Where to cut `text`, which ends at a cut: before the run of token characters (letters,
/// digits, `-_.+/=%@~`) it ends in, when that run starts within [`REDACTION_SLACK_CHARS`]
/// bytes of the end. `raw` is cut before it is redacted, so a key, JWT or address straddling
/// the cut would match no pattern and leave its first characters; left out whole, it leaves
/// none. A longer run (no boundary in reach) is cut where it is.
fn outside_token(text: &str) -> usize {
    let token = |c: char| c.is_alphanumeric() || "-_.+/=%@~".contains(c);
    let floor = text.len().saturating_sub(REDACTION_SLACK_CHARS);
    for (at, c) in text.char_indices().rev() {
        if !token(c) {
            return at + c.len_utf8();
        }
        if at <= floor {
            break;
        }
    }
    text.len()
}

fn json_content(operation: Operation, body: &[u8]) -> (Option<String>, Option<Value>) {
    let ((model, content), cut) = bounded::read(|| {
        if operation != Operation::Responses {
            if let Ok(Object(answer)) = serde_json::from_slice::<Object<ChoicesAnswer<'_>>>(body) {
                return choices_content(operation, answer, body);
            }
        }
        json_content_tree(operation, body)
    });
    (model, content.map(|content| marked_cut(content, cut)))
}

/// [`json_content`] of any answer, read whole as a tree: slower, and the reference the
/// skipping read ([`ChoicesAnswer`]) agrees with.
fn json_content_tree(operation: Operation, body: &[u8]) -> (Option<String>, Option<Value>) {
    let Ok(Tree(Value::Object(mut answer))) = serde_json::from_slice::<Tree>(body) else {
        return (None, Some(unparsed(body, false)));
    };
    let model = match answer.remove("model") {
        Some(Value::String(m)) if !m.is_empty() => Some(m),
        _ => None,
    };
    let content = match operation {
        Operation::Embeddings | Operation::Models => return (model, None),
        Operation::ChatCompletions => take_array(&mut answer, "choices").map(|choices| {
            let choices = choices.into_iter().map(json_chat_choice).collect();
            wrap("choices", Value::Array(choices))
        }),
        Operation::Completions => take_array(&mut answer, "choices").map(|choices| {
            let choices = choices.into_iter().map(json_completion_choice).collect();
            wrap("choices", Value::Array(choices))
        }),
        Operation::Responses => take_array(&mut answer, "output")
            .map(|output| responses_content(output.into_iter().map(json_item).collect())),
    };
    let content = content.or_else(|| match answer.remove("error") {
        Some(error @ Value::Object(_)) => Some(wrap("error", error)),
        _ => None,
    });
    (
        model,
        Some(content.unwrap_or_else(|| unparsed(body, false))),
    )
}

/// What a chat, completions or embeddings answer's content is read from, every other
/// member (usage, ids, logprobs, content-filter results, an embedding's vectors) skipped
/// without being built. An answer of another shape (a choice that is not an object, a key
/// repeated, a non-string model) does not fit and is read whole by [`json_content_tree`],
/// which gives the same content for every answer that fits. `null` reads as absent.
#[derive(Deserialize)]
struct ChoicesAnswer<'a> {
    #[serde(borrow)]
    model: Option<Cow<'a, str>>,
    choices: Option<Items<Object<AnswerChoice>>>,
    error: Option<Tree>,
}

/// One choice of a [`ChoicesAnswer`]: `message` (chat) or `text` (completions).
#[derive(Deserialize)]
struct AnswerChoice {
    index: Option<Tree>,
    finish_reason: Option<Tree>,
    message: Option<Tree>,
    text: Option<Tree>,
}

/// [`json_content`] of an answer that fits [`ChoicesAnswer`].
fn choices_content(
    operation: Operation,
    answer: ChoicesAnswer<'_>,
    body: &[u8],
) -> (Option<String>, Option<Value>) {
    let model = answer.model.filter(|m| !m.is_empty()).map(Cow::into_owned);
    let content = match operation {
        Operation::Embeddings | Operation::Models => return (model, None),
        Operation::ChatCompletions => answer.choices.map(|Items(choices)| {
            let choices = choices
                .into_iter()
                .map(|Object(c)| {
                    let message = match c.message {
                        Some(Tree(Value::Object(m))) => m,
                        _ => Map::new(),
                    };
                    chat_choice_kept(index_of(value(c.index)), value(c.finish_reason), message)
                })
                .collect();
            wrap("choices", Value::Array(choices))
        }),
        Operation::Completions | Operation::Responses => answer.choices.map(|Items(choices)| {
            let choices = choices
                .into_iter()
                .map(|Object(c)| {
                    let text = value(c.text).unwrap_or(Value::Null);
                    choice_value(
                        index_of(value(c.index)),
                        value(c.finish_reason).unwrap_or(Value::Null),
                        "text",
                        text,
                    )
                })
                .collect();
            wrap("choices", Value::Array(choices))
        }),
    };
    let content = content.or_else(|| match value(answer.error) {
        Some(error @ Value::Object(_)) => Some(wrap("error", error)),
        _ => None,
    });
    (
        model,
        Some(content.unwrap_or_else(|| unparsed(body, false))),
    )
}

fn value(tree: Option<Tree>) -> Option<Value> {
    tree.map(|Tree(value)| value)
}

/// A choice's `index` as the record keeps it: the number, else 0.
fn index_of(index: Option<Value>) -> u64 {
    index.as_ref().and_then(Value::as_u64).unwrap_or(0)
}

fn wrap(key: &str, value: Value) -> Value {
    let mut fields = Map::new();
    fields.insert(key.into(), value);
    Value::Object(fields)
}

fn take_array(object: &mut Map<String, Value>, key: &str) -> Option<Vec<Value>> {
    match object.remove(key) {
        Some(Value::Array(items)) => Some(items),
        _ => None,
    }
}

fn take(object: &mut Map<String, Value>, key: &str) -> Value {
    object.remove(key).unwrap_or(Value::Null)
}

fn json_chat_choice(choice: Value) -> Value {
    let Value::Object(mut choice) = choice else {
        return Value::Null;
    };
    let message = match choice.remove("message") {
        Some(Value::Object(m)) => m,
        _ => Map::new(),
    };
    let index = index_of(choice.remove("index"));
    chat_choice_kept(index, choice.remove("finish_reason"), message)
}

/// A chat choice as a record keeps it, from its index, `finish_reason` and `message`.
fn chat_choice_kept(
    index: u64,
    finish_reason: Option<Value>,
    mut message: Map<String, Value>,
) -> Value {
    let mut kept = Map::new();
    kept.insert("role".into(), take(&mut message, "role"));
    kept.insert("content".into(), take(&mut message, "content"));
    match take(&mut message, "refusal") {
        Value::Null => {}
        refusal => {
            kept.insert("refusal".into(), refusal);
        }
    }
    if let Some(calls) = take_array(&mut message, "tool_calls").filter(|c| !c.is_empty()) {
        let calls = calls
            .into_iter()
            .map(|call| {
                let Value::Object(mut call) = call else {
                    return Value::Null;
                };
                let function = json_function(take(&mut call, "function"));
                tool_call_value(take(&mut call, "id"), take(&mut call, "type"), function)
            })
            .collect();
        kept.insert("tool_calls".into(), Value::Array(calls));
    }
    if let Some(function @ Value::Object(_)) = message.remove("function_call") {
        kept.insert("function_call".into(), json_function(function));
    }
    choice_value(
        index,
        finish_reason.unwrap_or(Value::Null),
        "message",
        Value::Object(kept),
    )
}

fn json_function(function: Value) -> Value {
    let Value::Object(mut function) = function else {
        return Value::Null;
    };
    function_object(
        take(&mut function, "name"),
        take(&mut function, "arguments"),
    )
}

fn json_completion_choice(choice: Value) -> Value {
    let Value::Object(mut choice) = choice else {
        return Value::Null;
    };
    choice_value(
        index_of(choice.remove("index")),
        take(&mut choice, "finish_reason"),
        "text",
        take(&mut choice, "text"),
    )
}

fn json_item(item: Value) -> Value {
    let Value::Object(mut item) = item else {
        return Value::Null;
    };
    let kind = take(&mut item, "type");
    match kind.as_str() {
        Some("message") => {
            let parts = take_array(&mut item, "content")
                .unwrap_or_default()
                .into_iter()
                .map(|part| {
                    let Value::Object(mut part) = part else {
                        return Value::Null;
                    };
                    let kind = take(&mut part, "type");
                    match kind.as_str() {
                        Some("output_text") => text_part("output_text", "text", &mut part),
                        Some("refusal") => text_part("refusal", "refusal", &mut part),
                        // Another part type: only its type.
                        _ => other_item(kind),
                    }
                })
                .collect();
            message_item(take(&mut item, "role"), parts)
        }
        Some("function_call") => function_call_item(
            take(&mut item, "call_id"),
            take(&mut item, "name"),
            take(&mut item, "arguments"),
        ),
        _ => other_item(kind),
    }
}

fn text_part(kind: &str, key: &str, part: &mut Map<String, Value>) -> Value {
    let mut kept = Map::new();
    kept.insert("type".into(), kind.into());
    kept.insert(key.into(), take(part, key));
    Value::Object(kept)
}

// ------------------------------------------------------------------------------------------
// Policy
// ------------------------------------------------------------------------------------------

/// The default redaction patterns, as `(name, pattern)`; [`Redactor::new`] with
/// `defaults` uses them all. Word boundaries are ASCII (`(?-u:\b)`), so the regex stays on
/// its fast DFA whatever the text; every pattern is a plain regular expression (no
/// backreferences or lookaround exist in the `regex` crate), so matching is linear in the
/// text.
///
/// - `openai_key`: `sk-` and at least 20 of `[A-Za-z0-9_-]`, starting a word: OpenAI keys
///   (`sk-…`, `sk-proj-…`, `sk-svcacct-…`, `sk-admin-…`) and Sluice's own `sk-sluice-…` (43
///   base64url characters after the prefix). `risk-…` or a short `sk-learn` does not match.
/// - `azure_key`: exactly 32 hex digits, not inside a longer run of letters or digits:
///   preceded by a non-word character, the start, or `_` (`api_key_<32 hex>`; the `_` is
///   replaced with the key), followed by a non-word character, the end, or `_` (replaced
///   too). An Azure OpenAI (Cognitive Services) key. It also hits any other 32-hex word
///   (an MD5 digest, a dash-less UUID, a W3C trace id); acceptable because such values
///   carry no meaning for a reader of a prompt, the cost of a false positive is ten
///   characters of an audit record, and a missed key is a live credential in a log. 31 or
///   33 hex digits do not match.
/// - `azure_key_84`: exactly 84 of `[A-Za-z0-9]` as a whole word: Azure AI services' newer
///   key format. Prose has no 84-character words.
/// - `bearer`: `Bearer` (any case), spaces or tabs, then a token of at least 16
///   characters of RFC 6750's `b64token` set (`A-Za-z0-9-._~+/`, trailing `=`): the
///   `Authorization` header form. The word alone, or followed by a short word ("the bearer
///   of bad news"), does not match.
/// - `basic`: `Basic` (any case), spaces or tabs, then at least 8 base64 characters
///   (`A-Za-z0-9+/`, then up to two `=`): the RFC 7617 `Authorization` header form. So
///   that prose ("basic principles", "Basic Concepts") is not redacted, the token must
///   have a digit, an upper-case letter, `+` or `/` after its first character, which the
///   base64 of any real `user:password` has.
/// - `jwt`: a JWS compact serialization (RFC 7515 §7.1): `eyJ` (base64url of `{"`) then
///   base64url, `.`, base64url, `.`, optional base64url (an unsigned token has an empty
///   signature).
/// - `email`: an e-mail address with a dotted domain ending in 2+ ASCII letters
///   (`a.b@c.io`); the local part (letters, digits, `_.%+-`) and the domain labels
///   (letters, digits, `-`) may hold any Unicode letters and digits
///   (RFC 6531 internationalised addresses: `josé@example.com`, `user@exämple.de`). The
///   local part is as long as the text allows (the leftmost match), so no leading part of
///   it is left in clear. `user@localhost` and `@handle` do not match.
pub const DEFAULT_PATTERNS: &[(&str, &str)] = &[
    ("openai_key", r"(?:(?-u:\b)|_)sk-[A-Za-z0-9_-]{20,}"),
    ("azure_key", r"(?:(?-u:\b)|_)[0-9a-fA-F]{32}(?:(?-u:\b)|_)"),
    ("azure_key_84", r"(?-u:\b)[A-Za-z0-9]{84}(?-u:\b)"),
    (
        "bearer",
        r"(?i)(?-u:\b)bearer[ \t]+[A-Za-z0-9._~+/-]{16,}=*",
    ),
    (
        "basic",
        concat!(
            r"(?-u:\b)(?i:basic)[ \t]+[A-Za-z0-9+/](?:",
            r"[A-Z0-9+/][A-Za-z0-9+/]{6,}|",
            r"[a-z][A-Z0-9+/][A-Za-z0-9+/]{5,}|",
            r"[a-z]{2}[A-Z0-9+/][A-Za-z0-9+/]{4,}|",
            r"[a-z]{3}[A-Z0-9+/][A-Za-z0-9+/]{3,}|",
            r"[a-z]{4}[A-Z0-9+/][A-Za-z0-9+/]{2,}|",
            r"[a-z]{5}[A-Z0-9+/][A-Za-z0-9+/]{1,}|",
            r"[a-z]{6,}[A-Z0-9+/][A-Za-z0-9+/]*",
            r")={0,2}",
        ),
    ),
    (
        "jwt",
        r"(?-u:\b)eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*",
    ),
    (
        "email",
        r"[\p{L}\p{M}\p{N}_.%+-]+@[\p{L}\p{M}\p{N}-]+(?:\.[\p{L}\p{M}\p{N}-]+)*\.[A-Za-z]{2,}(?-u:\b)",
    ),
];

/// The compiled size bound of one redaction pattern (the `regex` crate's `size_limit`):
/// 1 MiB, a tenth of the crate's default, so an operator pattern such as `\w{1000}` that
/// would compile to a huge program is refused at config compile.
const PATTERN_SIZE_LIMIT: usize = 1 << 20;

/// Redaction patterns: the defaults and the operator's own, each match replaced by
/// [`REDACTED`] in every text field before the content policy. All patterns run as one
/// alternation (one pass over a text); where matches overlap, the leftmost wins, then the
/// earlier pattern (defaults before operator patterns). A match of no characters (a
/// pattern like `x*`) replaces nothing.
#[derive(Debug, Clone)]
pub struct Redactor {
    /// `None`: no patterns at all.
    regex: Option<Regex>,
}

impl Redactor {
    /// `defaults`: include [`DEFAULT_PATTERNS`]. `extra`: operator patterns (the `regex`
    /// crate's syntax), already checked by [`Redactor::check`] (config compile calls it to
    /// report a bad pattern at its line). Errors as `check` would.
    pub fn new(defaults: bool, extra: &[String]) -> Result<Self, regex::Error> {
        let defaults = DEFAULT_PATTERNS
            .iter()
            .filter(|_| defaults)
            .map(|(_, pattern)| *pattern);
        let patterns: Vec<&str> = defaults.chain(extra.iter().map(String::as_str)).collect();
        if patterns.is_empty() {
            return Ok(Redactor { regex: None });
        }
        for pattern in &patterns {
            Self::check(pattern)?;
        }
        let alternation = patterns
            .iter()
            .map(|p| format!("(?:{p})"))
            .collect::<Vec<_>>()
            .join("|");
        let regex = RegexBuilder::new(&alternation)
            .size_limit(PATTERN_SIZE_LIMIT.saturating_mul(patterns.len()))
            .build()?;
        Ok(Redactor { regex: Some(regex) })
    }

    /// Checks one pattern: compiles it with the size bound [`Redactor::new`] uses (1 MiB
    /// compiled). The error says what is wrong and where in the pattern.
    pub fn check(pattern: &str) -> Result<(), regex::Error> {
        RegexBuilder::new(pattern)
            .size_limit(PATTERN_SIZE_LIMIT)
            .build()
            .map(drop)
    }

    /// The redactor of [`DEFAULT_PATTERNS`] only, built once per process.
    pub fn defaults() -> &'static Redactor {
        static DEFAULTS: std::sync::OnceLock<Redactor> = std::sync::OnceLock::new();
        // The default patterns are constants that compile (a unit test builds them).
        DEFAULTS.get_or_init(|| Redactor::new(true, &[]).unwrap_or(Redactor { regex: None }))
    }

    /// Whether some pattern matches somewhere in `text` (with at least one character).
    pub fn matches(&self, text: &str) -> bool {
        self.regex
            .as_ref()
            .is_some_and(|regex| regex.find_iter(text).any(|m| !m.is_empty()))
    }

    /// `text` with every match replaced by [`REDACTED`] (borrowed when nothing matched).
    pub fn redact<'t>(&self, text: &'t str) -> Cow<'t, str> {
        let Some(regex) = &self.regex else {
            return Cow::Borrowed(text);
        };
        let mut out = String::new();
        let mut last = 0;
        for found in regex.find_iter(text).filter(|m| !m.is_empty()) {
            out.push_str(&text[last..found.start()]);
            out.push_str(REDACTED);
            last = found.end();
        }
        if out.is_empty() {
            return Cow::Borrowed(text);
        }
        out.push_str(&text[last..]);
        Cow::Owned(out)
    }
}

/// Applies redaction then `mode` to every string leaf of `content` in place, at any depth
/// (under any key, in arrays, or the root itself). Redaction reaches every string leaf;
/// `mode` reaches every one but an enumeration: a string of at most [`MAX_ENUM_CHARS`]
/// characters directly under an [`ENUM_KEYS`] key (`role`, `type`, `object`,
/// `finish_reason`, `status`, `index`), which is only redacted. Ids, names, models and
/// every other string are text fields. Numbers, booleans and nulls are never changed (so
/// an embeddings `input` given as token ids is kept as it is). Object keys are kept when
/// they are [`API_MEMBERS`]; any other key is a text field too (a client can put a prompt
/// or a key in a key as well as in a value).
///
/// - `Full`: the redacted text.
/// - `Truncate(n)`: the redacted text; when longer than `n` characters (Unicode scalar
///   values, not bytes, counted after redaction), its first `n` characters followed by
///   [`TRUNCATED_MARKER`] — fewer when the cut would fall inside a [`REDACTED`] marker,
///   which is then left out whole (a half marker reads like a leak).
/// - `Hash`: `sha256:` and the lowercase hex SHA-256 of the redacted text's UTF-8 bytes.
/// - `Omit`: callers do not call this (the worker keeps nothing); if they do, `content`
///   becomes `null`.
pub fn apply(content: &mut Value, mode: ContentMode, redactor: &Redactor) {
    if mode == ContentMode::Omit {
        *content = Value::Null;
        return;
    }
    walk(content, &mut |text, leaf| {
        let redacted = redactor.redact(text);
        let limit = match (leaf, mode) {
            (Leaf::Enum, _) => None,
            (Leaf::Text, ContentMode::Truncate(n)) => Some(n),
            (Leaf::Text, ContentMode::Full | ContentMode::Omit) => Some(FULL_FIELD_CHARS),
            (Leaf::Text, ContentMode::Hash) => {
                *text = sha256_tag(redacted.as_bytes());
                return;
            }
        };
        let policed = match limit.and_then(|n| redacted.char_indices().nth(n)) {
            Some((cut, _)) => {
                let cut = outside_marker(&redacted, cut);
                let mut short = String::with_capacity(cut + TRUNCATED_MARKER.len());
                short.push_str(&redacted[..cut]);
                short.push_str(TRUNCATED_MARKER);
                short
            }
            None => match redacted {
                Cow::Borrowed(_) => return,
                Cow::Owned(owned) => owned,
            },
        };
        *text = policed;
    });
}

/// `cut` (a char boundary of `text`), moved back to the start of a [`REDACTED`] marker it
/// would split.
fn outside_marker(text: &str, cut: usize) -> usize {
    let from = cut.saturating_sub(REDACTED.len() - 1);
    let from = (from..=cut)
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(cut);
    match text[from..].find(REDACTED) {
        Some(at) if from + at < cut && from + at + REDACTED.len() > cut => from + at,
        _ => cut,
    }
}

/// What a string leaf is to [`apply`].
#[derive(Clone, Copy)]
enum Leaf {
    /// A short value under an [`ENUM_KEYS`] key: redacted only.
    Enum,
    /// Anything else: redacted, then the content mode.
    Text,
}

/// Calls `on_text` for every string leaf of `value`, saying which kind it is (see
/// [`apply`]).
fn walk(value: &mut Value, on_text: &mut dyn FnMut(&mut String, Leaf)) {
    match value {
        Value::String(text) => on_text(text, Leaf::Text),
        Value::Array(items) => {
            for item in items {
                walk(item, on_text);
            }
        }
        Value::Object(fields) => {
            if !fields.keys().all(|key| API_MEMBERS.contains(&key.as_str())) {
                *fields = policed_keys(std::mem::take(fields), on_text);
            }
            for (key, field) in fields.iter_mut() {
                match field {
                    Value::String(text)
                        if ENUM_KEYS.contains(&key.as_str()) && is_enum_length(text) =>
                    {
                        on_text(text, Leaf::Enum);
                    }
                    _ => walk(field, on_text),
                }
            }
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

/// The member names of the OpenAI request and answer objects that content holds (messages
/// and their content parts, tool calls, Responses items and prompt references) and of the
/// record's own markers: [`apply`] keeps an object key in this list as it is. Any other key
/// was chosen by a client or backend (a prompt's `variables`, `metadata`, a JSON schema's
/// properties) and is text like a value.
pub const API_MEMBERS: &[&str] = &[
    "role",
    "content",
    "name",
    "type",
    "text",
    "refusal",
    "audio",
    "id",
    "data",
    "format",
    "transcript",
    "tool_calls",
    "tool_call_id",
    "function",
    "function_call",
    "arguments",
    "call_id",
    "image_url",
    "url",
    "detail",
    "input_audio",
    "file",
    "file_id",
    "filename",
    "file_data",
    "image_file",
    "input_image",
    "input_text",
    "input_file",
    "output_text",
    "output",
    "status",
    "index",
    "finish_reason",
    "message",
    "messages",
    "prompt",
    "input",
    "instructions",
    "variables",
    "version",
    "choices",
    "object",
    "summary",
    "annotations",
    "error",
    "code",
    "param",
    "model",
    "unparsed",
    "raw",
    "cut",
];

/// `fields` with each key that is not one of [`API_MEMBERS`] passed through `on_text` as
/// text. Two keys that come out the same (cut alike) are both kept: the later gains `#2`,
/// `#3`, … .
fn policed_keys(
    fields: Map<String, Value>,
    on_text: &mut dyn FnMut(&mut String, Leaf),
) -> Map<String, Value> {
    let mut policed = Map::new();
    // The next suffix to try per key that came out taken: linear however many keys come
    // out the same (thousands of keys redacted alike must not cost their square).
    let mut next: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for (mut key, value) in fields {
        if !API_MEMBERS.contains(&key.as_str()) {
            on_text(&mut key, Leaf::Text);
        }
        if !policed.contains_key(&key) {
            policed.insert(key, value);
            continue;
        }
        let n = next.entry(key.clone()).or_insert(1);
        let mut unique;
        loop {
            *n += 1;
            unique = format!("{key}#{n}");
            if !policed.contains_key(&unique) {
                break;
            }
        }
        policed.insert(unique, value);
    }
    policed
}

/// `text` is at most [`MAX_ENUM_CHARS`] characters (counted only when its bytes exceed it).
fn is_enum_length(text: &str) -> bool {
    text.len() <= MAX_ENUM_CHARS || text.chars().count() <= MAX_ENUM_CHARS
}

/// `sha256:` and the lowercase hex digest of `bytes`.
fn sha256_tag(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digest = Sha256::digest(bytes);
    let mut tag = String::with_capacity(7 + 2 * digest.len());
    tag.push_str("sha256:");
    for byte in digest {
        tag.push(char::from(HEX[usize::from(byte >> 4)]));
        tag.push(char::from(HEX[usize::from(byte & 0xf)]));
    }
    tag
}

#[cfg(test)]
mod tests;
