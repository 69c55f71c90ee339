//! What a request will cost before it is sent: [`RequestFacts`] reads the fields a limit
//! needs from the body in one pass, [`Estimator`] counts the prompt's tokens, and
//! [`reservation`] adds the completion's cap, as Azure OpenAI does at admission.
//!
//! Counting uses the model family's real BPE tables ([`Family`]: `o200k_base` or
//! `cl100k_base`, OpenAI's published files embedded and decoded once per process on first use
//! or by [`Estimator::warm`]; see [`super::bpe`]) or a byte heuristic (a token per 4 bytes)
//! that costs nothing. The BPE count is exactly OpenAI's `tiktoken` count of the same text,
//! in time O(n log n) in its length whatever the text (tiktoken's own merge is quadratic in a
//! pre-token's length). Either
//! is an estimate: images, audio and tool schemas are approximated or ignored, and the
//! answer's usage settles the account afterwards.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::bpe::{self, Bpe, Budget};
use super::lenient::LenientStr;
use super::strict::{refuse, Kind, Reason, Refusal, Refused, StreamOptionsSeed, Strict};
use crate::json_name::folds_to;
use crate::route::Operation;

/// Tokens OpenAI adds per chat message (the `<|start|>role…<|end|>` framing, role included).
pub const TOKENS_PER_MESSAGE: u32 = 4;
/// Tokens OpenAI adds once per chat request to prime the reply (`<|start|>assistant`).
pub const TOKENS_REPLY_PRIMING: u32 = 3;

/// The facts of one request body that admission needs, read once.
///
/// Strings borrow from the body unless they hold JSON escapes. The fields Sluice decides on
/// (`model`, `stream`, `stream_options`, the caps, `n`, `best_of`) are read strictly (see
/// [`super::strict`]): a wrong type or a repeated key is a [`FactsError::Refused`]. The
/// prompt's text is read as found: what it holds is only ever an estimate.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RequestFacts<'a> {
    /// `model`, when the body names one (OpenAI style; Azure names the deployment in the path).
    pub model: Option<Cow<'a, str>>,
    /// `stream: true`.
    pub stream: bool,
    /// `stream_options.include_usage: true`: the client asked for the usage chunk itself.
    pub include_usage: bool,
    /// The completion's cap: the larger of `max_completion_tokens` and `max_tokens` (chat:
    /// either may be the one a backend honours); `max_tokens` (completions);
    /// `max_output_tokens` (responses). `None` when absent.
    pub max_tokens: Option<u64>,
    /// Completions asked for: `n` (chat); the larger of `n` and `best_of`, times the prompts
    /// of a batch `prompt` (completions); at least 1.
    pub n: u32,
    /// The prompt's text, as found.
    pub prompt: Prompt<'a>,
    /// Which API the body was read as.
    pub operation: Option<Operation>,
}

/// The text a request sends the model, in the pieces the body holds it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Prompt<'a> {
    /// Text pieces: chat messages' string content and text parts (and tool calls'
    /// arguments), completions `prompt` strings and `suffix`, embeddings `input` strings,
    /// responses `input` and `instructions`, and the strings of `tools` / `functions`.
    pub pieces: Vec<Cow<'a, str>>,
    /// Chat messages (each costs [`TOKENS_PER_MESSAGE`] beyond its text).
    pub messages: u32,
    /// Token ids sent already tokenised (`prompt` / `input` as integer arrays): exact.
    pub token_ids: u64,
}

/// Why no facts could be read from a body.
#[derive(Debug, thiserror::Error)]
pub enum FactsError {
    /// The body's structure, or a field Sluice reads (the decision fields, the prompt's
    /// text), is not JSON serde_json accepts (RFC 8259: no `NaN`, no lone surrogates, no
    /// number out of range, nothing after the object): the request must be refused (400),
    /// since a more lenient backend would read what Sluice could not. Values of fields Sluice
    /// skips are checked for structure only.
    #[error("request body is not a JSON object: {0}")]
    NotJson(#[from] serde_json::Error),
    /// A field Sluice decides on is repeated or of a type whose meaning is in doubt: the
    /// request must be refused (400), since the backend might read it otherwise.
    #[error("{0}")]
    Refused(Refusal),
}

impl<'a> RequestFacts<'a> {
    /// Reads `body` as a request of `operation`. Only the fields the operation defines are
    /// taken (chat: `messages`, `tools`, `functions`; completions: `prompt`, `suffix`;
    /// embeddings: `input`; responses: `input`, `instructions`, `tools`); every other field is
    /// skipped without being built.
    pub fn parse(operation: Operation, body: &'a [u8]) -> Result<Self, FactsError> {
        let refused = Refused::new(None);
        let mut de = serde_json::Deserializer::from_slice(body);
        let parsed = de
            .deserialize_map(FactsVisitor {
                operation,
                refused: &refused,
            })
            .and_then(|facts| de.end().map(|()| facts));
        match (parsed, refused.get()) {
            (_, Some(refusal)) => Err(FactsError::Refused(refusal)),
            (Ok(mut facts), None) => {
                facts.operation = Some(operation);
                Ok(facts)
            }
            (Err(e), None) => Err(FactsError::NotJson(e)),
        }
    }

    /// Whether Sluice should ask the backend for the usage chunk: a streamed chat or
    /// completions request whose client did not ask for it (responses streams always end
    /// with their usage).
    pub fn needs_usage_injection(&self) -> bool {
        self.stream
            && !self.include_usage
            && matches!(
                self.operation,
                Some(Operation::ChatCompletions | Operation::Completions)
            )
    }
}

/// A BPE vocabulary, as OpenAI's `tiktoken` names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// `o200k_base`: gpt-4o, gpt-4.1, gpt-4.5, gpt-5, the o-series.
    O200k,
    /// `cl100k_base`: gpt-4, gpt-3.5-turbo (`gpt-35-turbo` on Azure), text-embedding-*.
    Cl100k,
}

impl Family {
    /// The vocabulary's name: `o200k_base` or `cl100k_base`.
    pub fn name(self) -> &'static str {
        match self {
            Family::O200k => "o200k_base",
            Family::Cl100k => "cl100k_base",
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A family name that is neither `o200k`/`o200k_base` nor `cl100k`/`cl100k_base`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown tokenizer family {0:?} (expected o200k_base or cl100k_base)")]
pub struct UnknownFamily(pub String);

impl FromStr for Family {
    type Err = UnknownFamily;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "o200k" | "o200k_base" => Ok(Family::O200k),
            "cl100k" | "cl100k_base" => Ok(Family::Cl100k),
            other => Err(UnknownFamily(other.to_owned())),
        }
    }
}

/// The vocabulary of a model name (as in `model`, or a deployment's configured model):
/// gpt-4o*, gpt-4.1*, gpt-4.5*, gpt-5*, o1*/o3*/o4*, chatgpt-4o*, gpt-oss* → o200k;
/// gpt-4*, gpt-3.5*/gpt-35*, text-embedding-*, davinci-002/babbage-002 → cl100k; anything
/// else → `default`. ASCII case is ignored.
pub fn family_for_model(name: &str, default: Family) -> Family {
    const O200K: [&str; 10] = [
        "gpt-4o",
        "gpt-4.1",
        "gpt-4.5",
        "gpt-5",
        "o1",
        "o3",
        "o4",
        "chatgpt-4o",
        "gpt-oss",
        "codex-",
    ];
    const CL100K: [&str; 6] = [
        "gpt-4",
        "gpt-3.5",
        "gpt-35",
        "text-embedding-",
        "davinci-002",
        "babbage-002",
    ];
    let starts = |p: &str| {
        name.len() >= p.len() && name.as_bytes()[..p.len()].eq_ignore_ascii_case(p.as_bytes())
    };
    if O200K.iter().any(|p| starts(p)) {
        Family::O200k
    } else if CL100K.iter().any(|p| starts(p)) {
        Family::Cl100k
    } else {
        default
    }
}

/// How prompt tokens are counted (per deployment, from config).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Estimator {
    /// A token per 4 bytes of UTF-8 (rounded up per piece): free, exact enough for English
    /// prose, low for code and CJK text.
    Heuristic,
    /// The family's BPE tables: the count OpenAI's `tiktoken` gives, in time linear in the
    /// text's length (~9 µs per KiB of English prose with o200k on the bench machine).
    Bpe(Family),
}

impl Estimator {
    /// Loads the BPE tables now (off the request path, e.g. at startup or config load) so
    /// the first request does not pay for it. Returns false if they could not be loaded; the
    /// estimator then counts by the heuristic.
    pub fn warm(self) -> bool {
        match self {
            Estimator::Heuristic => true,
            Estimator::Bpe(family) => Bpe::of(family).is_some(),
        }
    }

    /// The prompt's tokens: its text pieces counted, token ids as given, and for chat
    /// [`TOKENS_PER_MESSAGE`] per message plus [`TOKENS_REPLY_PRIMING`]. Saturates at
    /// `u32::MAX`. BPE counts exactly up to one [`Budget`] per request, the rest by the
    /// heuristic.
    pub fn estimate_prompt(self, facts: &RequestFacts<'_>) -> u32 {
        let prompt = &facts.prompt;
        let mut budget = Budget::per_request();
        let mut total = prompt.token_ids;
        for piece in &prompt.pieces {
            total = total.saturating_add(self.count_within(piece, &mut budget));
        }
        if prompt.messages > 0 {
            total = total
                .saturating_add(u64::from(prompt.messages) * u64::from(TOKENS_PER_MESSAGE))
                .saturating_add(u64::from(TOKENS_REPLY_PRIMING));
        }
        u32::try_from(total).unwrap_or(u32::MAX)
    }

    /// Tokens in one piece of text (BPE: exact up to a whole [`Budget`]).
    pub fn count_text(self, text: &str) -> u64 {
        self.count_within(text, &mut Budget::per_request())
    }

    /// Tokens in `text`, BPE spending `budget`.
    fn count_within(self, text: &str, budget: &mut Budget) -> u64 {
        match self {
            Estimator::Heuristic => bpe::heuristic(text.len()),
            Estimator::Bpe(family) => match Bpe::of(family) {
                Some(tables) => tables.count(text, budget),
                None => bpe::heuristic(text.len()),
            },
        }
    }
}

/// A deployment's configured estimator (`tokens.estimator` and `tokens.family` in the
/// config): one [`Estimator`] for every request, or BPE in the family of each request's
/// model. Compiled once with the config; [`for_model`](Self::for_model) picks per request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum EstimatorChoice {
    /// This estimator for every request: `estimator = "heuristic"`, or `"bpe"` with a
    /// `family`.
    Fixed(Estimator),
    /// BPE in the family [`family_for_model`] gives the request's `model` (o200k when it
    /// names no known family). The default.
    #[default]
    BpeByModel,
}

impl EstimatorChoice {
    /// The estimator for a request whose model is `model` (the body's `model`, else the
    /// deployment's name).
    pub fn for_model(self, model: &str) -> Estimator {
        match self {
            EstimatorChoice::Fixed(estimator) => estimator,
            EstimatorChoice::BpeByModel => Estimator::Bpe(family_for_model(model, Family::O200k)),
        }
    }
}

/// Tokens admission reserves: the prompt plus the completion cap (`max_tokens`, or
/// `default_max_tokens` when the request set none or 0) times `n`. Embeddings produce no
/// completion: the prompt alone. `models` costs nothing.
pub fn reservation(facts: &RequestFacts<'_>, prompt: u32, default_max_tokens: u32) -> u64 {
    match facts.operation {
        Some(Operation::Embeddings) => u64::from(prompt),
        Some(Operation::Models) => 0,
        _ => {
            // A cap of 0 is no cap to some backends: the default is reserved then.
            let cap = facts
                .max_tokens
                .filter(|&m| m > 0)
                .unwrap_or(u64::from(default_max_tokens))
                .saturating_mul(u64::from(facts.n.max(1)));
            u64::from(prompt).saturating_add(cap)
        }
    }
}

/// Reads the top-level object of a request body.
struct FactsVisitor<'c> {
    operation: Operation,
    refused: &'c Refused,
}

/// The top-level fields admission reads; everything else is skipped.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Field {
    Model,
    Stream,
    StreamOptions,
    MaxTokens,
    MaxCompletionTokens,
    MaxOutputTokens,
    N,
    BestOf,
    Messages,
    Prompt,
    Suffix,
    Input,
    Instructions,
    Tools,
    Functions,
    Other,
}

/// Every field read, in the order of their bits in the duplicate check.
const FIELDS: [Field; 15] = [
    Field::Model,
    Field::Stream,
    Field::StreamOptions,
    Field::MaxTokens,
    Field::MaxCompletionTokens,
    Field::MaxOutputTokens,
    Field::N,
    Field::BestOf,
    Field::Messages,
    Field::Prompt,
    Field::Suffix,
    Field::Input,
    Field::Instructions,
    Field::Tools,
    Field::Functions,
];

impl Field {
    /// The field a key names: `Ok(Other)` for keys Sluice does not read, `Err(field)` for a
    /// field's name in another case.
    fn from_key(key: &str) -> Result<Field, Field> {
        // Exact names first (a jump on the string, as serde's derive does); only keys that
        // are none of them are compared without case.
        Ok(match key {
            "model" => Field::Model,
            "stream" => Field::Stream,
            "stream_options" => Field::StreamOptions,
            "max_tokens" => Field::MaxTokens,
            "max_completion_tokens" => Field::MaxCompletionTokens,
            "max_output_tokens" => Field::MaxOutputTokens,
            "n" => Field::N,
            "best_of" => Field::BestOf,
            "messages" => Field::Messages,
            "prompt" => Field::Prompt,
            "suffix" => Field::Suffix,
            "input" => Field::Input,
            "instructions" => Field::Instructions,
            "tools" => Field::Tools,
            "functions" => Field::Functions,
            _ => {
                return match FIELDS
                    .iter()
                    .find(|f| folds_to(key.as_bytes(), f.param().as_bytes()))
                {
                    Some(&f) => Err(f),
                    None => Ok(Field::Other),
                }
            }
        })
    }

    /// The field's name in the API, for refusals.
    fn param(self) -> &'static str {
        match self {
            Field::Model => "model",
            Field::Stream => "stream",
            Field::StreamOptions => "stream_options",
            Field::MaxTokens => "max_tokens",
            Field::MaxCompletionTokens => "max_completion_tokens",
            Field::MaxOutputTokens => "max_output_tokens",
            Field::N => "n",
            Field::BestOf => "best_of",
            Field::Messages => "messages",
            Field::Prompt => "prompt",
            Field::Suffix => "suffix",
            Field::Input => "input",
            Field::Instructions => "instructions",
            Field::Tools => "tools",
            Field::Functions => "functions",
            Field::Other => "",
        }
    }
}

impl<'de> Visitor<'de> for FactsVisitor<'_> {
    type Value = RequestFacts<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        use Operation::{ChatCompletions as Chat, Completions, Embeddings, Responses};
        let op = self.operation;
        let mut facts = RequestFacts::default();
        let (mut max_tokens, mut max_completion, mut max_output) = (None, None, None);
        let (mut n, mut best_of) = (None, None);
        // Completions prompts in the request (a batch answers each one).
        let mut prompts = 1u32;
        // Every field read here, once each (bit = the variant's index).
        let mut seen = 0u32;
        let refused = self.refused;
        while let Some(key) = map.next_key::<LenientStr<'de>>()? {
            let field = match Field::from_key(key.0.as_deref().unwrap_or_default()) {
                Ok(field) => field,
                Err(field) => {
                    let refusal = Refusal {
                        param: field.param(),
                        reason: Reason::OtherCase,
                    };
                    return Err(refuse(refused, refusal));
                }
            };
            if !matches!(field, Field::Other) {
                let bit = 1u32 << (field as u32);
                if seen & bit != 0 {
                    let refusal = Refusal {
                        param: field.param(),
                        reason: Reason::Duplicate,
                    };
                    return Err(refuse(refused, refusal));
                }
                seen |= bit;
            }
            let strict = |kind| Strict {
                kind,
                param: field.param(),
                refused,
            };
            match (field, op) {
                (Field::Model, _) => {
                    facts.model = map.next_value_seed(strict(Kind::Str))?.into_str()
                }
                (Field::Stream, _) => {
                    facts.stream = map.next_value_seed(strict(Kind::Bool))?.as_bool()
                }
                (Field::StreamOptions, _) => {
                    facts.include_usage = map.next_value_seed(StreamOptionsSeed { refused })?
                }
                (Field::MaxTokens, _) => {
                    max_tokens = map.next_value_seed(strict(Kind::Count))?.count()
                }
                (Field::MaxCompletionTokens, _) => {
                    max_completion = map.next_value_seed(strict(Kind::Count))?.count()
                }
                (Field::MaxOutputTokens, _) => {
                    max_output = map.next_value_seed(strict(Kind::Count))?.count()
                }
                (Field::N, _) => n = map.next_value_seed(strict(Kind::Count))?.count(),
                (Field::BestOf, _) => best_of = map.next_value_seed(strict(Kind::Count))?.count(),
                (Field::Messages, Chat) => map.next_value_seed(MessagesSeed(&mut facts.prompt))?,
                (Field::Prompt, Completions) => {
                    prompts = map.next_value_seed(CompletionPrompt(&mut facts.prompt))?
                }
                (Field::Suffix, Completions)
                | (Field::Input, Embeddings | Responses)
                | (Field::Instructions, Responses) => {
                    map.next_value_seed(Collect::new(&mut facts.prompt, Mode::Text))?
                }
                (Field::Tools | Field::Functions, Chat) | (Field::Tools, Responses) => {
                    map.next_value_seed(Collect::new(&mut facts.prompt, Mode::AllStrings))?
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        let count = |x: Option<u64>| u32::try_from(x.unwrap_or(1)).unwrap_or(u32::MAX).max(1);
        match op {
            Chat => {
                // Both given: the larger, whichever one the backend honours.
                facts.max_tokens = match (max_completion, max_tokens) {
                    (Some(a), Some(b)) => Some(a.max(b)),
                    (a, b) => a.or(b),
                };
                facts.n = count(n);
            }
            Completions => {
                facts.max_tokens = max_tokens;
                facts.n = count(n).max(count(best_of)).saturating_mul(prompts.max(1));
            }
            Responses => {
                facts.max_tokens = max_output;
                facts.n = 1;
            }
            Embeddings | Operation::Models => facts.n = 1,
        }
        Ok(facts)
    }
}

/// Which strings of a value are prompt text.
#[derive(Clone, Copy)]
enum Mode {
    /// Strings, and inside objects only the values of text-bearing keys (`content`, `text`,
    /// `output`, `arguments`, `input`, `refusal`, `name`, `function`, `tool_calls`).
    Text,
    /// Every string, keys included (tool definitions: names, descriptions, schemas).
    AllStrings,
}

/// Collects a value's prompt text into a [`Prompt`].
struct Collect<'p, 'a> {
    prompt: &'p mut Prompt<'a>,
    mode: Mode,
}

impl<'p, 'a> Collect<'p, 'a> {
    fn new(prompt: &'p mut Prompt<'a>, mode: Mode) -> Self {
        Collect { prompt, mode }
    }
}

impl<'de> DeserializeSeed<'de> for Collect<'_, 'de> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<(), D::Error> {
        de.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Collect<'_, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("prompt text")
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<(), E> {
        self.prompt.pieces.push(Cow::Borrowed(v));
        Ok(())
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        self.prompt.pieces.push(Cow::Owned(v.to_owned()));
        Ok(())
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<(), E> {
        self.prompt.pieces.push(Cow::Owned(v));
        Ok(())
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        // A token id of a pre-tokenised prompt.
        self.prompt.token_ids = self.prompt.token_ids.saturating_add(1);
        Ok(())
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        self.prompt.token_ids = self.prompt.token_ids.saturating_add(1);
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

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mode = self.mode;
        while seq
            .next_element_seed(Collect {
                prompt: &mut *self.prompt,
                mode,
            })?
            .is_some()
        {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mode = self.mode;
        while let Some(key) = map.next_key::<LenientStr<'de>>()? {
            let Some(key) = key.0 else {
                map.next_value::<IgnoredAny>()?;
                continue;
            };
            let take = match mode {
                Mode::AllStrings => true,
                Mode::Text => matches!(
                    key.as_ref(),
                    "content"
                        | "text"
                        | "output"
                        | "arguments"
                        | "input"
                        | "refusal"
                        | "name"
                        | "function"
                        | "tool_calls"
                ),
            };
            if matches!(mode, Mode::AllStrings) {
                self.prompt.pieces.push(key);
            }
            if take {
                map.next_value_seed(Collect {
                    prompt: &mut *self.prompt,
                    mode,
                })?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(())
    }
}

/// Completions `prompt`: collects its text and counts its prompts — a string or one array of
/// token ids is one prompt; an array of strings or of token-id arrays is a batch, each
/// element answered on its own (`n` completions each).
struct CompletionPrompt<'p, 'a>(&'p mut Prompt<'a>);

impl<'de> DeserializeSeed<'de> for CompletionPrompt<'_, 'de> {
    type Value = u32;

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<u32, D::Error> {
        de.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for CompletionPrompt<'_, 'de> {
    type Value = u32;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a prompt")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<u32, A::Error> {
        let (mut elements, mut integers) = (0u32, 0u32);
        while let Some(integer) = seq.next_element_seed(PromptElement(&mut *self.0))? {
            elements = elements.saturating_add(1);
            integers = integers.saturating_add(u32::from(integer));
        }
        // An array of integers is one tokenised prompt, not a batch.
        Ok(if elements > 0 && integers == elements {
            1
        } else {
            elements.max(1)
        })
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<u32, E> {
        self.0.pieces.push(Cow::Borrowed(v));
        Ok(1)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<u32, E> {
        self.0.pieces.push(Cow::Owned(v.to_owned()));
        Ok(1)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<u32, E> {
        Ok(1)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<u32, E> {
        Ok(1)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<u32, E> {
        Ok(1)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<u32, E> {
        Ok(1)
    }

    fn visit_unit<E: de::Error>(self) -> Result<u32, E> {
        Ok(1)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<u32, A::Error> {
        Collect::new(self.0, Mode::Text).visit_map(map).map(|()| 1)
    }
}

/// One element of a completions `prompt` array, collected as prompt text; the value says
/// whether it was an integer (a token id of a single tokenised prompt).
struct PromptElement<'p, 'a>(&'p mut Prompt<'a>);

impl<'de> DeserializeSeed<'de> for PromptElement<'_, 'de> {
    type Value = bool;

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<bool, D::Error> {
        de.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for PromptElement<'_, 'de> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a prompt or a token id")
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<bool, E> {
        Collect::new(self.0, Mode::Text).visit_u64(v).map(|()| true)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<bool, E> {
        Collect::new(self.0, Mode::Text).visit_i64(v).map(|()| true)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_unit<E: de::Error>(self) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<bool, E> {
        Collect::new(self.0, Mode::Text)
            .visit_borrowed_str(v)
            .map(|()| false)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<bool, E> {
        Collect::new(self.0, Mode::Text)
            .visit_str(v)
            .map(|()| false)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<bool, A::Error> {
        Collect::new(self.0, Mode::Text)
            .visit_seq(seq)
            .map(|()| false)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<bool, A::Error> {
        Collect::new(self.0, Mode::Text)
            .visit_map(map)
            .map(|()| false)
    }
}

/// Chat `messages`: counts the messages and collects their text.
struct MessagesSeed<'p, 'a>(&'p mut Prompt<'a>);

impl<'de> DeserializeSeed<'de> for MessagesSeed<'_, 'de> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<(), D::Error> {
        de.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for MessagesSeed<'_, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of messages")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        loop {
            let seed = Collect {
                prompt: &mut *self.0,
                mode: Mode::Text,
            };
            if seq.next_element_seed(seed)?.is_none() {
                return Ok(());
            }
            self.0.messages = self.0.messages.saturating_add(1);
        }
    }

    // Anything else is not messages: skipped (the backend will refuse it).
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(())
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
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
mod tests;
