//! The Responses API (`POST /v1/responses`): an `object: "response"` answer with one
//! assistant message, or its typed event stream (`response.created` …
//! `response.output_text.delta` … `response.completed`).

use serde::Serialize;

use super::request::{self, MockError, TextTally};
use super::{
    completion_budget, token, write_json, Finish, MockSettings, Planned, StreamKind, Words,
};

/// Events of a Responses stream besides the text deltas: created, in_progress,
/// output_item.added, content_part.added, output_text.done, content_part.done,
/// output_item.done, completed.
pub(super) const FRAME_EVENTS: u64 = 8;

/// What a Responses request asks for, once read.
#[derive(Debug, Clone)]
pub(super) struct ResponsesPlan {
    id: String,
    item_id: String,
    model: String,
    created: u64,
    input_tokens: u32,
    pub(super) tokens: u32,
    finish: Finish,
    max_output_tokens: Option<u64>,
}

/// Answers `POST …/responses`.
pub(super) fn reply(
    settings: &MockSettings,
    body: &[u8],
    created: u64,
    id_seed: u64,
) -> Result<Planned, MockError> {
    let body = request::parse(body)?;
    let mut tally = TextTally::default();
    match request::required(&body, "input")? {
        serde_json::Value::String(s) => tally.text(s),
        serde_json::Value::Array(items) if items.is_empty() => {
            return Err(MockError::empty_array("input"))
        }
        serde_json::Value::Array(items) => {
            for item in items {
                match item {
                    serde_json::Value::String(s) => tally.text(s),
                    _ => {
                        if let Some(content) = item.get("content") {
                            tally.content(content);
                        }
                        // A function call's output is text the model reads too.
                        if let Some(serde_json::Value::String(s)) = item.get("output") {
                            tally.text(s);
                        }
                    }
                }
            }
        }
        other => {
            return Err(MockError::invalid_type(
                "input",
                "a string or an array",
                other,
            ))
        }
    }
    match body.get("instructions") {
        None | Some(serde_json::Value::Null) => {}
        Some(serde_json::Value::String(s)) => tally.text(s),
        Some(other) => return Err(MockError::invalid_type("instructions", "a string", other)),
    }
    let model = request::model(&body)?.unwrap_or(&settings.model).to_owned();
    let max_output_tokens = request::opt_uint(&body, "max_output_tokens", 1)?;
    let stream = request::opt_bool(&body, "stream")?;
    let (tokens, finish) = completion_budget(settings, max_output_tokens);
    let plan = ResponsesPlan {
        id: format!("resp_mock{id_seed:016x}"),
        item_id: format!("msg_mock{id_seed:016x}"),
        model,
        created,
        input_tokens: tally.tokens(),
        tokens,
        finish,
        max_output_tokens,
    };
    if stream {
        return Ok(Planned::Stream(StreamKind::Responses(plan)));
    }
    let part = [plan.text_part(plan.tokens)];
    let item = [plan.item(&part, true)];
    let mut out = Vec::with_capacity(1200 + plan.tokens as usize * 7);
    write_json(&mut out, &plan.response(&item, true));
    Ok(Planned::Json {
        status: 200,
        body: out,
    })
}

/// One event of a Responses stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ResponseEvent {
    Created,
    InProgress,
    ItemAdded,
    PartAdded,
    /// Text token `k`.
    Delta {
        k: u32,
    },
    TextDone,
    PartDone,
    ItemDone,
    /// `response.completed`, or `response.incomplete` when the token limit cut it short.
    Completed,
}

/// The event at position `i` (below `plan.tokens + FRAME_EVENTS`).
pub(super) fn event_at(plan: &ResponsesPlan, i: u64) -> ResponseEvent {
    let tokens = u64::from(plan.tokens);
    match i {
        0 => ResponseEvent::Created,
        1 => ResponseEvent::InProgress,
        2 => ResponseEvent::ItemAdded,
        3 => ResponseEvent::PartAdded,
        _ if i - 4 < tokens => ResponseEvent::Delta {
            // Below `tokens`, a u32.
            k: u32::try_from(i - 4).unwrap_or(u32::MAX),
        },
        _ => match i - 4 - tokens {
            0 => ResponseEvent::TextDone,
            1 => ResponseEvent::PartDone,
            2 => ResponseEvent::ItemDone,
            _ => ResponseEvent::Completed,
        },
    }
}

/// The `usage` of a response.
#[derive(Serialize)]
struct ResponseUsage {
    input_tokens: u32,
    input_tokens_details: InputDetails,
    output_tokens: u32,
    output_tokens_details: OutputDetails,
    total_tokens: u32,
}

#[derive(Serialize)]
struct InputDetails {
    cached_tokens: u32,
}

#[derive(Serialize)]
struct OutputDetails {
    reasoning_tokens: u32,
}

/// An `output_text` content part.
#[derive(Serialize)]
struct OutputText {
    #[serde(rename = "type")]
    kind: &'static str,
    text: Words,
    annotations: &'static [()],
}

/// The assistant message output item.
#[derive(Serialize)]
struct MessageItem<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    status: &'static str,
    role: &'static str,
    content: &'a [OutputText],
}

#[derive(Serialize)]
struct Incomplete {
    reason: &'static str,
}

#[derive(Serialize)]
struct Reasoning {
    effort: Option<()>,
    summary: Option<()>,
}

#[derive(Serialize)]
struct TextConfig {
    format: TextFormat,
}

#[derive(Serialize)]
struct TextFormat {
    #[serde(rename = "type")]
    kind: &'static str,
}

#[derive(Serialize)]
struct Empty {}

/// The `response` object, in progress or final.
#[derive(Serialize)]
struct ResponseObject<'a> {
    id: &'a str,
    object: &'static str,
    created_at: u64,
    status: &'static str,
    error: Option<()>,
    incomplete_details: Option<Incomplete>,
    instructions: Option<()>,
    max_output_tokens: Option<u64>,
    model: &'a str,
    output: &'a [MessageItem<'a>],
    parallel_tool_calls: bool,
    previous_response_id: Option<()>,
    reasoning: Reasoning,
    store: bool,
    temperature: f64,
    text: TextConfig,
    tool_choice: &'static str,
    tools: &'static [()],
    top_p: f64,
    truncation: &'static str,
    usage: Option<ResponseUsage>,
    user: Option<()>,
    metadata: Empty,
}

impl ResponsesPlan {
    /// The final status: `completed`, or `incomplete` when `max_output_tokens` cut it short.
    fn final_status(&self) -> &'static str {
        match self.finish {
            Finish::Stop => "completed",
            Finish::Length => "incomplete",
        }
    }

    fn text_part(&self, tokens: u32) -> OutputText {
        OutputText {
            kind: "output_text",
            text: Words {
                choice: 0,
                count: tokens,
            },
            annotations: &[],
        }
    }

    fn item<'a>(&'a self, content: &'a [OutputText], done: bool) -> MessageItem<'a> {
        MessageItem {
            id: &self.item_id,
            kind: "message",
            status: if done {
                self.final_status()
            } else {
                "in_progress"
            },
            role: "assistant",
            content,
        }
    }

    fn response<'a>(&'a self, output: &'a [MessageItem<'a>], done: bool) -> ResponseObject<'a> {
        let incomplete = done && self.finish == Finish::Length;
        ResponseObject {
            id: &self.id,
            object: "response",
            created_at: self.created,
            status: if done {
                self.final_status()
            } else {
                "in_progress"
            },
            error: None,
            incomplete_details: incomplete.then_some(Incomplete {
                reason: "max_output_tokens",
            }),
            instructions: None,
            max_output_tokens: self.max_output_tokens,
            model: &self.model,
            output,
            parallel_tool_calls: true,
            previous_response_id: None,
            reasoning: Reasoning {
                effort: None,
                summary: None,
            },
            store: false,
            temperature: 1.0,
            text: TextConfig {
                format: TextFormat { kind: "text" },
            },
            tool_choice: "auto",
            tools: &[],
            top_p: 1.0,
            truncation: "disabled",
            usage: done.then(|| ResponseUsage {
                input_tokens: self.input_tokens,
                input_tokens_details: InputDetails { cached_tokens: 0 },
                output_tokens: self.tokens,
                output_tokens_details: OutputDetails {
                    reasoning_tokens: 0,
                },
                total_tokens: self.input_tokens.saturating_add(self.tokens),
            }),
            user: None,
            metadata: Empty {},
        }
    }
}

/// A stream event's JSON, `type` first as OpenAI sends it.
#[derive(Serialize)]
#[serde(tag = "type")]
enum Event<'a> {
    #[serde(rename = "response.created")]
    Created {
        sequence_number: u64,
        response: ResponseObject<'a>,
    },
    #[serde(rename = "response.in_progress")]
    InProgress {
        sequence_number: u64,
        response: ResponseObject<'a>,
    },
    #[serde(rename = "response.output_item.added")]
    ItemAdded {
        sequence_number: u64,
        output_index: u32,
        item: MessageItem<'a>,
    },
    #[serde(rename = "response.content_part.added")]
    PartAdded {
        sequence_number: u64,
        item_id: &'a str,
        output_index: u32,
        content_index: u32,
        part: OutputText,
    },
    #[serde(rename = "response.output_text.delta")]
    Delta {
        sequence_number: u64,
        item_id: &'a str,
        output_index: u32,
        content_index: u32,
        delta: &'a str,
        logprobs: &'static [()],
    },
    #[serde(rename = "response.output_text.done")]
    TextDone {
        sequence_number: u64,
        item_id: &'a str,
        output_index: u32,
        content_index: u32,
        text: Words,
        logprobs: &'static [()],
    },
    #[serde(rename = "response.content_part.done")]
    PartDone {
        sequence_number: u64,
        item_id: &'a str,
        output_index: u32,
        content_index: u32,
        part: OutputText,
    },
    #[serde(rename = "response.output_item.done")]
    ItemDone {
        sequence_number: u64,
        output_index: u32,
        item: MessageItem<'a>,
    },
    #[serde(rename = "response.completed")]
    Completed {
        sequence_number: u64,
        response: ResponseObject<'a>,
    },
    #[serde(rename = "response.incomplete")]
    Incomplete {
        sequence_number: u64,
        response: ResponseObject<'a>,
    },
}

/// Appends `event: TYPE\ndata: {json}\n\n` for `ev`.
pub(super) fn write_event(out: &mut Vec<u8>, plan: &ResponsesPlan, ev: ResponseEvent) {
    let t = u64::from(plan.tokens);
    let item_id = plan.item_id.as_str();
    let full = [plan.text_part(plan.tokens)];
    let done_item = [plan.item(&full, true)];
    let event = match ev {
        ResponseEvent::Created => Event::Created {
            sequence_number: 0,
            response: plan.response(&[], false),
        },
        ResponseEvent::InProgress => Event::InProgress {
            sequence_number: 1,
            response: plan.response(&[], false),
        },
        ResponseEvent::ItemAdded => Event::ItemAdded {
            sequence_number: 2,
            output_index: 0,
            item: plan.item(&[], false),
        },
        ResponseEvent::PartAdded => Event::PartAdded {
            sequence_number: 3,
            item_id,
            output_index: 0,
            content_index: 0,
            part: plan.text_part(0),
        },
        ResponseEvent::Delta { k } => Event::Delta {
            sequence_number: 4 + u64::from(k),
            item_id,
            output_index: 0,
            content_index: 0,
            delta: token(0, k),
            logprobs: &[],
        },
        ResponseEvent::TextDone => Event::TextDone {
            sequence_number: 4 + t,
            item_id,
            output_index: 0,
            content_index: 0,
            text: full[0].text,
            logprobs: &[],
        },
        ResponseEvent::PartDone => Event::PartDone {
            sequence_number: 5 + t,
            item_id,
            output_index: 0,
            content_index: 0,
            part: plan.text_part(plan.tokens),
        },
        ResponseEvent::ItemDone => Event::ItemDone {
            sequence_number: 6 + t,
            output_index: 0,
            item: plan.item(&full, true),
        },
        ResponseEvent::Completed if plan.finish == Finish::Length => Event::Incomplete {
            sequence_number: 7 + t,
            response: plan.response(&done_item, true),
        },
        ResponseEvent::Completed => Event::Completed {
            sequence_number: 7 + t,
            response: plan.response(&done_item, true),
        },
    };
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(event.name().as_bytes());
    out.extend_from_slice(b"\ndata: ");
    write_json(out, &event);
    out.extend_from_slice(b"\n\n");
}

impl Event<'_> {
    /// The SSE `event:` name, the same as the JSON's `type`.
    fn name(&self) -> &'static str {
        match self {
            Event::Created { .. } => "response.created",
            Event::InProgress { .. } => "response.in_progress",
            Event::ItemAdded { .. } => "response.output_item.added",
            Event::PartAdded { .. } => "response.content_part.added",
            Event::Delta { .. } => "response.output_text.delta",
            Event::TextDone { .. } => "response.output_text.done",
            Event::PartDone { .. } => "response.content_part.done",
            Event::ItemDone { .. } => "response.output_item.done",
            Event::Completed { .. } => "response.completed",
            Event::Incomplete { .. } => "response.incomplete",
        }
    }
}
