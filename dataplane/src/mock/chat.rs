//! Chat completions (`chat.completion`, `chat.completion.chunk`) and legacy completions
//! (`text_completion`): the request reading and the rendering of whole answers and chunks.

use serde::Serialize;

use super::request::{self, Item, MockError, TextTally};
use super::{
    completion_budget, token, write_json, Finish, MockSettings, Planned, Seq, StreamKind, Usage,
    Words, SYSTEM_FINGERPRINT,
};

/// Most choices one answer carries (OpenAI's own limit on `n`).
const MAX_CHOICES: u64 = 128;

/// What a chat or completion request asks for, once read.
#[derive(Debug, Clone)]
pub(super) struct Plan {
    pub(super) id: String,
    pub(super) model: String,
    pub(super) created: u64,
    pub(super) prompt_tokens: u32,
    /// Completion tokens per choice.
    pub(super) tokens: u32,
    pub(super) finish: Finish,
    pub(super) choices: u32,
    pub(super) include_usage: bool,
}

impl Plan {
    pub(super) fn usage(&self) -> Usage {
        Usage::new(self.prompt_tokens, self.tokens.saturating_mul(self.choices))
    }
}

/// The settings and fields common to both: model, token limit, `n`, streaming.
fn plan(
    settings: &MockSettings,
    body: &request::Body,
    id: String,
    created: u64,
    prompt_tokens: u32,
    prompts: u64,
    limit_fields: &[&'static str],
) -> Result<(Plan, bool), MockError> {
    let model = request::model(body)?.unwrap_or(&settings.model).to_owned();
    let mut limit: Option<u64> = None;
    for name in limit_fields {
        if let Some(max) = request::opt_uint(body, name, 1)? {
            limit = Some(limit.map_or(max, |l| l.min(max)));
        }
    }
    let n = request::opt_uint(body, "n", 1)?.unwrap_or(1);
    let choices = n.saturating_mul(prompts).clamp(1, MAX_CHOICES);
    let stream = request::opt_bool(body, "stream")?;
    let include_usage = stream && request::include_usage(body)?;
    let (tokens, finish) = completion_budget(settings, limit);
    let plan = Plan {
        id,
        model,
        created,
        prompt_tokens,
        tokens,
        finish,
        // Clamped to 1..=128 above.
        choices: u32::try_from(choices).unwrap_or(1),
        include_usage,
    };
    Ok((plan, stream))
}

/// Answers `POST …/chat/completions`.
pub(super) fn reply_chat(
    settings: &MockSettings,
    body: &[u8],
    created: u64,
    id_seed: u64,
) -> Result<Planned, MockError> {
    let body = request::parse(body)?;
    let messages = request::required_array(&body, "messages")?;
    let mut tally = TextTally::default();
    for message in messages {
        if let Some(content) = message.get("content") {
            tally.content(content);
        }
    }
    let (plan, stream) = plan(
        settings,
        &body,
        format!("chatcmpl-mock{id_seed:016x}"),
        created,
        tally.tokens(),
        1,
        &["max_tokens", "max_completion_tokens"],
    )?;
    if stream {
        return Ok(Planned::Stream(StreamKind::Chat(plan)));
    }
    #[derive(Serialize)]
    struct Completion<'a, C> {
        id: &'a str,
        object: &'static str,
        created: u64,
        model: &'a str,
        system_fingerprint: &'static str,
        choices: C,
        usage: Usage,
    }
    #[derive(Serialize)]
    struct Choice {
        index: u32,
        message: Message,
        logprobs: Option<()>,
        finish_reason: &'static str,
    }
    #[derive(Serialize)]
    struct Message {
        role: &'static str,
        content: Words,
        refusal: Option<()>,
    }
    let answer = Completion {
        id: &plan.id,
        object: "chat.completion",
        created: plan.created,
        model: &plan.model,
        system_fingerprint: SYSTEM_FINGERPRINT,
        choices: Seq(plan.choices, |index| Choice {
            index,
            message: Message {
                role: "assistant",
                content: Words {
                    choice: index,
                    count: plan.tokens,
                },
                refusal: None,
            },
            logprobs: None,
            finish_reason: plan.finish.as_str(),
        }),
        usage: plan.usage(),
    };
    Ok(json_reply(&answer, plan.tokens, plan.choices))
}

/// Answers `POST …/completions` (legacy text completions). A batch of prompts gets `n`
/// choices per prompt, as OpenAI gives.
pub(super) fn reply_completion(
    settings: &MockSettings,
    body: &[u8],
    created: u64,
    id_seed: u64,
) -> Result<Planned, MockError> {
    let body = request::parse(body)?;
    let prompt = request::required(&body, "prompt")?;
    let mut tally = TextTally::default();
    let mut prompts = 0u64;
    request::items("prompt", prompt, |item| {
        prompts += 1;
        match item {
            Item::Text(s) => tally.text(s),
            Item::Tokens(ids) => tally.token_ids(ids.len()),
        }
    })?;
    let (plan, stream) = plan(
        settings,
        &body,
        format!("cmpl-mock{id_seed:016x}"),
        created,
        tally.tokens(),
        prompts,
        &["max_tokens"],
    )?;
    if stream {
        return Ok(Planned::Stream(StreamKind::Completion(plan)));
    }
    #[derive(Serialize)]
    struct Completion<'a, C> {
        id: &'a str,
        object: &'static str,
        created: u64,
        model: &'a str,
        system_fingerprint: &'static str,
        choices: C,
        usage: Usage,
    }
    let answer = Completion {
        id: &plan.id,
        object: "text_completion",
        created: plan.created,
        model: &plan.model,
        system_fingerprint: SYSTEM_FINGERPRINT,
        choices: Seq(plan.choices, |index| TextChoice {
            text: Words {
                choice: index,
                count: plan.tokens,
            },
            index,
            logprobs: None,
            finish_reason: Some(plan.finish.as_str()),
        }),
        usage: plan.usage(),
    };
    Ok(json_reply(&answer, plan.tokens, plan.choices))
}

fn json_reply<T: Serialize>(answer: &T, tokens: u32, choices: u32) -> Planned {
    // About seven bytes a word, plus the envelope of each choice and the answer.
    let size = 400 + choices as usize * (160 + tokens as usize * 7);
    let mut body = Vec::with_capacity(size);
    write_json(&mut body, answer);
    Planned::Json { status: 200, body }
}

/// One choice of a `text_completion` answer or chunk.
#[derive(Serialize)]
struct TextChoice<T> {
    text: T,
    index: u32,
    logprobs: Option<()>,
    finish_reason: Option<&'static str>,
}

/// One event of a chat or completion stream (before `[DONE]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ChunkEvent {
    /// The chat chunk that opens a choice: `delta: {role: "assistant", content: ""}`.
    Role { choice: u32 },
    /// Content token `k` of a choice.
    Token { choice: u32, k: u32 },
    /// The chunk with an empty delta and the finish reason.
    Finish { choice: u32 },
    /// The usage-only chunk with `choices: []` (only with `include_usage`).
    Usage,
}

/// Appends `data: {chat.completion.chunk}\n\n` for `event`.
pub(super) fn write_chat_chunk(out: &mut Vec<u8>, plan: &Plan, event: ChunkEvent) {
    #[derive(Serialize)]
    struct Chunk<'a> {
        id: &'a str,
        object: &'static str,
        created: u64,
        model: &'a str,
        system_fingerprint: &'static str,
        choices: &'a [Choice<'a>],
        usage: Option<Usage>,
    }
    #[derive(Serialize)]
    struct Choice<'a> {
        index: u32,
        delta: Delta<'a>,
        logprobs: Option<()>,
        finish_reason: Option<&'static str>,
    }
    #[derive(Serialize)]
    struct Delta<'a> {
        #[serde(skip_serializing_if = "Option::is_none")]
        role: Option<&'static str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        content: Option<&'a str>,
    }
    let delta = |index, role, content| Choice {
        index,
        delta: Delta { role, content },
        logprobs: None,
        finish_reason: None,
    };
    let (choice, usage) = match event {
        ChunkEvent::Role { choice } => (Some(delta(choice, Some("assistant"), Some(""))), None),
        ChunkEvent::Token { choice, k } => {
            (Some(delta(choice, None, Some(token(choice, k)))), None)
        }
        ChunkEvent::Finish { choice } => (
            Some(Choice {
                finish_reason: Some(plan.finish.as_str()),
                ..delta(choice, None, None)
            }),
            None,
        ),
        ChunkEvent::Usage => (None, Some(plan.usage())),
    };
    out.extend_from_slice(b"data: ");
    write_json(
        out,
        &Chunk {
            id: &plan.id,
            object: "chat.completion.chunk",
            created: plan.created,
            model: &plan.model,
            system_fingerprint: SYSTEM_FINGERPRINT,
            choices: choice.as_slice(),
            usage,
        },
    );
    out.extend_from_slice(b"\n\n");
}

/// Appends `data: {text_completion}\n\n` for `event` (`Role` does not occur).
pub(super) fn write_completion_chunk(out: &mut Vec<u8>, plan: &Plan, event: ChunkEvent) {
    #[derive(Serialize)]
    struct Chunk<'a> {
        id: &'a str,
        object: &'static str,
        created: u64,
        model: &'a str,
        system_fingerprint: &'static str,
        choices: &'a [TextChoice<&'a str>],
        usage: Option<Usage>,
    }
    let text = |index, text, finish_reason| TextChoice {
        text,
        index,
        logprobs: None,
        finish_reason,
    };
    let (choice, usage) = match event {
        ChunkEvent::Role { choice } => (Some(text(choice, "", None)), None),
        ChunkEvent::Token { choice, k } => (Some(text(choice, token(choice, k), None)), None),
        ChunkEvent::Finish { choice } => (Some(text(choice, "", Some(plan.finish.as_str()))), None),
        ChunkEvent::Usage => (None, Some(plan.usage())),
    };
    out.extend_from_slice(b"data: ");
    write_json(
        out,
        &Chunk {
            id: &plan.id,
            object: "text_completion",
            created: plan.created,
            model: &plan.model,
            system_fingerprint: SYSTEM_FINGERPRINT,
            choices: choice.as_slice(),
            usage,
        },
    );
    out.extend_from_slice(b"\n\n");
}
