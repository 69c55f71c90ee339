//! The built-in mock backend: answers OpenAI API requests with deterministic, well-formed
//! bodies, so the gateway (and the bench suite's standalone mock server) can be exercised
//! without a real model.
//!
//! This part is pure: [`reply`] turns one request body into either a whole JSON answer or a
//! [`MockStream`] that renders server-sent events one at a time. It does no I/O and knows
//! nothing of monoio; the caller sleeps (`MockSettings::latency`, the stream's pauses) and
//! writes. Output shapes follow the fixtures in `shared/fixtures/openai/`: chat completions,
//! legacy completions, embeddings and the Responses API, streaming or not.
//!
//! Content is made of words from a fixed list, one token each, so the text an answer carries
//! and the `completion_tokens` it reports always agree. Prompt tokens are estimated at one
//! per four characters of text (at least 1).

mod chat;
mod embeddings;
mod request;
mod responses;
mod stream;
#[cfg(test)]
mod tests;

use std::fmt;
use std::time::Duration;

use serde::{Serialize, Serializer};

use crate::route::Operation;
use request::MockError;
pub use stream::MockStream;

/// Knobs of a `kind = "mock"` backend.
#[derive(Debug, Clone, PartialEq)]
pub struct MockSettings {
    /// Delay before the answer (or its first event); the server sleeps it. Default 0.
    pub latency: Duration,
    /// Completion tokens per answer (per choice), unless the request's `max_tokens` /
    /// `max_completion_tokens` / `max_output_tokens` is lower. Default 16.
    pub completion_tokens: u32,
    /// Streaming speed in tokens per second; 0 (or any value that is not a positive
    /// number) means as fast as possible. Default 0.
    pub tokens_per_second: f64,
    /// Model name reported in answers when the request names none. Default `sluice-mock`.
    pub model: String,
    /// Length of each embedding vector unless the request asks for `dimensions`; 0 is
    /// treated as 1. Default 8.
    pub embedding_dimensions: usize,
}

impl Default for MockSettings {
    fn default() -> Self {
        MockSettings {
            latency: Duration::ZERO,
            completion_tokens: 16,
            tokens_per_second: 0.0,
            model: "sluice-mock".to_owned(),
            embedding_dimensions: 8,
        }
    }
}

/// The mock's answer to one request.
#[derive(Debug)]
pub enum MockReply {
    /// A whole JSON body (`content-type: application/json`): the answer, or an OpenAI-shaped
    /// error when `status` is not 200.
    Json {
        /// HTTP status: 200, 400 for a request OpenAI would refuse, 404 for `Models`.
        status: u16,
        /// The body.
        body: Vec<u8>,
    },
    /// A `200` `text/event-stream` answer, rendered event by event.
    Stream(MockStream),
}

/// Which API the stream speaks.
#[derive(Debug, Clone)]
enum StreamKind {
    /// `chat.completion.chunk` events, then `data: [DONE]`.
    Chat(chat::Plan),
    /// `text_completion` events, then `data: [DONE]`.
    Completion(chat::Plan),
    /// Typed Responses events (`event: response.created` … `response.completed`); like
    /// OpenAI, no `[DONE]`.
    Responses(responses::ResponsesPlan),
}

/// What an operation's module answers: a whole body, or the plan of a stream that
/// [`reply`] paces as a [`MockStream`] (so the operation modules know nothing of pacing).
#[derive(Debug)]
enum Planned {
    /// A whole JSON body with its status.
    Json {
        /// HTTP status.
        status: u16,
        /// The body.
        body: Vec<u8>,
    },
    /// A stream of this kind.
    Stream(StreamKind),
}

/// Answers one request `body` for `op`.
///
/// `ChatCompletions`, `Completions`, `Embeddings` and `Responses` are answered as OpenAI
/// would; `Models` is the gateway's to answer, so it gets a 404 error body. A body that is
/// not a JSON object, or lacks or mistypes a parameter the operation needs, gets OpenAI's
/// 400 error naming the parameter. `created` (unix seconds) is reported as is; `id_seed`
/// makes ids unique, e.g. `chatcmpl-mock{id_seed:016x}`.
pub fn reply(
    settings: &MockSettings,
    op: Operation,
    body: &[u8],
    created: u64,
    id_seed: u64,
) -> MockReply {
    let answer = match op {
        Operation::ChatCompletions => chat::reply_chat(settings, body, created, id_seed),
        Operation::Completions => chat::reply_completion(settings, body, created, id_seed),
        Operation::Embeddings => embeddings::reply(settings, body),
        Operation::Responses => responses::reply(settings, body, created, id_seed),
        Operation::Models => Err(MockError::not_found(
            "Invalid URL (GET /v1/models): the gateway lists models, not the mock backend."
                .to_owned(),
        )),
    };
    match answer {
        Ok(Planned::Json { status, body }) => MockReply::Json { status, body },
        Ok(Planned::Stream(kind)) => {
            MockReply::Stream(MockStream::new(kind, settings.tokens_per_second))
        }
        Err(err) => MockReply::Json {
            status: err.status,
            body: err.to_body(),
        },
    }
}

/// The system fingerprint every chat and completion answer reports.
const SYSTEM_FINGERPRINT: &str = "fp_sluicemock";

/// Serializes `value` as JSON onto `out`.
fn write_json<T: Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) {
    let start = out.len();
    // Writing to a Vec cannot fail, and our types have string keys and no failing
    // `Serialize` impls; should that ever change, leave valid JSON rather than half of it.
    if serde_json::to_writer(&mut *out, value).is_err() {
        out.truncate(start);
        out.extend_from_slice(b"{}");
    }
}

/// Why generation stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Finish {
    /// The configured length was reached.
    Stop,
    /// The request's token limit cut the answer short.
    Length,
}

impl Finish {
    fn as_str(self) -> &'static str {
        match self {
            Finish::Stop => "stop",
            Finish::Length => "length",
        }
    }
}

/// Completion tokens per choice: the configured count, capped by the request's `limit`.
fn completion_budget(settings: &MockSettings, limit: Option<u64>) -> (u32, Finish) {
    match limit {
        Some(max) if max < u64::from(settings.completion_tokens) => {
            // `max` is below a u32, so the conversion cannot fail.
            (u32::try_from(max).unwrap_or(0), Finish::Length)
        }
        _ => (settings.completion_tokens, Finish::Stop),
    }
}

/// The content vocabulary; each entry is one token. The leading space is dropped for the
/// first token of an answer.
const VOCAB: [&str; 32] = [
    " the", " mock", " backend", " answers", " with", " plain", " words", " so", " that", " every",
    " token", " is", " one", " word", " and", " counts", " agree", " a", " gateway", " sees",
    " what", " clients", " send", " through", " its", " pool", " of", " fast", " steady", " quiet",
    " replies", " today",
];

/// Token `k` of choice `choice`'s content; choices start at different words so that `n`
/// choices differ.
fn token(choice: u32, k: u32) -> &'static str {
    let i = (k as usize + choice as usize * 7) % VOCAB.len();
    let word = VOCAB[i];
    if k == 0 {
        &word[1..]
    } else {
        word
    }
}

/// The whole content of one choice, rendered without allocating (serialized through
/// `collect_str`, which serde_json escapes straight into its output).
#[derive(Debug, Clone, Copy)]
struct Words {
    choice: u32,
    count: u32,
}

impl fmt::Display for Words {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        (0..self.count).try_for_each(|k| f.write_str(token(self.choice, k)))
    }
}

impl Serialize for Words {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A JSON array of `len` items made by `item(index)`, without collecting them first.
struct Seq<F>(u32, F);

impl<F, T> Serialize for Seq<F>
where
    F: Fn(u32) -> T,
    T: Serialize,
{
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq((0..self.0).map(&self.1))
    }
}

/// `prompt_tokens_details` of chat usage.
#[derive(Serialize)]
struct PromptDetails {
    cached_tokens: u32,
    audio_tokens: u32,
}

/// `completion_tokens_details` of chat usage.
#[derive(Serialize)]
struct CompletionDetails {
    reasoning_tokens: u32,
    audio_tokens: u32,
    accepted_prediction_tokens: u32,
    rejected_prediction_tokens: u32,
}

/// Token usage of a chat or completion answer.
#[derive(Serialize)]
struct Usage {
    prompt_tokens: u32,
    completion_tokens: u32,
    total_tokens: u32,
    prompt_tokens_details: PromptDetails,
    completion_tokens_details: CompletionDetails,
}

impl Usage {
    fn new(prompt_tokens: u32, completion_tokens: u32) -> Self {
        Usage {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens.saturating_add(completion_tokens),
            prompt_tokens_details: PromptDetails {
                cached_tokens: 0,
                audio_tokens: 0,
            },
            completion_tokens_details: CompletionDetails {
                reasoning_tokens: 0,
                audio_tokens: 0,
                accepted_prediction_tokens: 0,
                rejected_prediction_tokens: 0,
            },
        }
    }
}

/// The interval between token events for `tokens_per_second` (zero when unlimited).
fn token_interval(tokens_per_second: f64) -> Duration {
    if tokens_per_second.is_finite() && tokens_per_second > 0.0 {
        Duration::try_from_secs_f64(1.0 / tokens_per_second).unwrap_or(Duration::MAX)
    } else {
        Duration::ZERO
    }
}
