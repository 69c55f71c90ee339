//! Reading a request body: the few fields the mock needs, validated the way OpenAI
//! validates them, each failure an OpenAI-shaped 400 naming the parameter.
//!
//! The body is parsed into a `serde_json::Value` because a typed parse cannot say which
//! parameter had the wrong type; request bodies are small, so the cost is a few
//! microseconds against the server's sleep.

use serde::Serialize;
use serde_json::{Map, Value};

/// The message OpenAI gives for a body that is not JSON.
const INVALID_JSON: &str = "We could not parse the JSON body of your request. (HINT: This \
    likely means you aren't using your HTTP library correctly. The OpenAI API expects a JSON \
    payload, but what was sent was not valid JSON. If you have trouble figuring out how to \
    fix this, please contact us through our help center at help.openai.com.)";

/// A request the mock refuses: rendered as an OpenAI error body.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct MockError {
    pub(crate) status: u16,
    pub(crate) message: String,
    pub(crate) param: Option<&'static str>,
    pub(crate) code: Option<&'static str>,
}

impl MockError {
    pub(crate) fn invalid_json() -> Self {
        Self::bad_request(INVALID_JSON.to_owned(), None, None)
    }

    fn bad_request(
        message: String,
        param: Option<&'static str>,
        code: Option<&'static str>,
    ) -> Self {
        MockError {
            status: 400,
            message,
            param,
            code,
        }
    }

    pub(crate) fn missing(param: &'static str) -> Self {
        Self::bad_request(
            format!("Missing required parameter: '{param}'."),
            Some(param),
            Some("missing_required_parameter"),
        )
    }

    pub(crate) fn invalid_type(param: &'static str, expected: &str, got: &Value) -> Self {
        Self::bad_request(
            format!(
                "Invalid type for '{param}': expected {expected}, but got {} instead.",
                type_name(got)
            ),
            Some(param),
            Some("invalid_type"),
        )
    }

    pub(crate) fn below_min(param: &'static str, min: u64, got: &Value) -> Self {
        Self::bad_request(
            format!(
                "Invalid '{param}': integer below minimum value. Expected a value >= {min}, \
                 but got {got} instead."
            ),
            Some(param),
            Some("integer_below_min_value"),
        )
    }

    pub(crate) fn above_max(param: &'static str, max: u64, got: u64) -> Self {
        Self::bad_request(
            format!(
                "Invalid '{param}': integer above maximum value. Expected a value <= {max}, \
                 but got {got} instead."
            ),
            Some(param),
            Some("integer_above_max_value"),
        )
    }

    pub(crate) fn empty_array(param: &'static str) -> Self {
        Self::bad_request(
            format!(
                "Invalid '{param}': empty array. Expected an array with minimum length 1, \
                 but got an empty array instead."
            ),
            Some(param),
            Some("empty_array"),
        )
    }

    pub(crate) fn invalid_value(param: &'static str, message: String) -> Self {
        Self::bad_request(message, Some(param), Some("invalid_value"))
    }

    pub(crate) fn not_found(message: String) -> Self {
        MockError {
            status: 404,
            message,
            param: None,
            code: Some("unknown_url"),
        }
    }

    /// The OpenAI error body: `{"error":{"message","type","param","code"}}`.
    pub(crate) fn to_body(&self) -> Vec<u8> {
        #[derive(Serialize)]
        struct Body<'a> {
            error: Inner<'a>,
        }
        #[derive(Serialize)]
        struct Inner<'a> {
            message: &'a str,
            #[serde(rename = "type")]
            kind: &'static str,
            param: Option<&'static str>,
            code: Option<&'static str>,
        }
        let mut out = Vec::with_capacity(self.message.len() + 96);
        super::write_json(
            &mut out,
            &Body {
                error: Inner {
                    message: &self.message,
                    kind: "invalid_request_error",
                    param: self.param,
                    code: self.code,
                },
            },
        );
        out
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_f64() => "a decimal",
        Value::Number(_) => "an integer",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The body's top-level object.
pub(crate) type Body = Map<String, Value>;

/// Parses `body` as a JSON object.
pub(crate) fn parse(body: &[u8]) -> Result<Body, MockError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        // OpenAI answers a non-object body the same way as one that is not JSON.
        _ => Err(MockError::invalid_json()),
    }
}

/// A field that is absent or `null` counts as not given, as in OpenAI's API.
fn field<'a>(body: &'a Body, name: &str) -> Option<&'a Value> {
    body.get(name).filter(|v| !v.is_null())
}

/// A required array field.
pub(crate) fn required_array<'a>(
    body: &'a Body,
    name: &'static str,
) -> Result<&'a [Value], MockError> {
    match field(body, name) {
        None => Err(MockError::missing(name)),
        Some(Value::Array(items)) if items.is_empty() => Err(MockError::empty_array(name)),
        Some(Value::Array(items)) => Ok(items),
        Some(other) => Err(MockError::invalid_type(name, "an array", other)),
    }
}

/// A required field that exists; its shape is checked by the caller.
pub(crate) fn required<'a>(body: &'a Body, name: &'static str) -> Result<&'a Value, MockError> {
    field(body, name).ok_or_else(|| MockError::missing(name))
}

/// An optional integer of at least `min`.
pub(crate) fn opt_uint(
    body: &Body,
    name: &'static str,
    min: u64,
) -> Result<Option<u64>, MockError> {
    let Some(v) = field(body, name) else {
        return Ok(None);
    };
    match v {
        Value::Number(n) if n.is_u64() => match n.as_u64() {
            Some(x) if x >= min => Ok(Some(x)),
            _ => Err(MockError::below_min(name, min, v)),
        },
        Value::Number(n) if n.is_i64() => Err(MockError::below_min(name, min, v)),
        _ => Err(MockError::invalid_type(name, "an integer", v)),
    }
}

/// An optional boolean; `false` when absent.
pub(crate) fn opt_bool(body: &Body, name: &'static str) -> Result<bool, MockError> {
    match field(body, name) {
        None => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => Err(MockError::invalid_type(name, "a boolean", other)),
    }
}

/// The request's `model`, or `None` when it names none.
pub(crate) fn model(body: &Body) -> Result<Option<&str>, MockError> {
    match field(body, "model") {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(MockError::invalid_type("model", "a string", other)),
    }
}

/// `stream_options.include_usage`, read only for streaming requests.
pub(crate) fn include_usage(body: &Body) -> Result<bool, MockError> {
    match field(body, "stream_options") {
        None => Ok(false),
        Some(Value::Object(opts)) => match opts.get("include_usage") {
            None | Some(Value::Null) => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(other) => Err(MockError::invalid_type(
                "stream_options.include_usage",
                "a boolean",
                other,
            )),
        },
        Some(other) => Err(MockError::invalid_type(
            "stream_options",
            "an object",
            other,
        )),
    }
}

/// Counts characters of text, to estimate tokens at one per four characters.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct TextTally {
    chars: u64,
    tokens: u64,
}

impl TextTally {
    pub(crate) fn text(&mut self, s: &str) {
        self.chars += s.chars().count() as u64;
    }

    /// Token ids sent as such count one each.
    pub(crate) fn token_ids(&mut self, n: usize) {
        self.tokens += n as u64;
    }

    /// Message content: a string, or an array of parts whose `text` is counted (images,
    /// audio and files are not text and count nothing).
    pub(crate) fn content(&mut self, content: &Value) {
        match content {
            Value::String(s) => self.text(s),
            Value::Array(parts) => {
                for part in parts {
                    if let Some(Value::String(s)) = part.get("text") {
                        self.text(s);
                    }
                }
            }
            _ => {}
        }
    }

    /// The estimate: one token per four characters (rounded up) plus token ids, at least 1.
    pub(crate) fn tokens(&self) -> u32 {
        let t = self.chars.div_ceil(4) + self.tokens;
        u32::try_from(t).unwrap_or(u32::MAX).max(1)
    }
}

/// One completion prompt or one embedding input.
pub(crate) enum Item<'a> {
    /// A string.
    Text(&'a str),
    /// Token ids (each checked to be a non-negative integer).
    Tokens(&'a [Value]),
}

/// Reads a `prompt` (completions) or `input` (embeddings): a string, an array of strings,
/// an array of token ids, or an array of such arrays. Calls `each` once per item, in order.
pub(crate) fn items<'a>(
    name: &'static str,
    value: &'a Value,
    mut each: impl FnMut(Item<'a>),
) -> Result<(), MockError> {
    const EXPECTED: &str = "a string, an array of strings, an array of integers, or an array \
        of arrays of integers";
    let is_token = |v: &Value| v.is_u64();
    match value {
        Value::String(s) => each(Item::Text(s)),
        Value::Array(list) if list.is_empty() => return Err(MockError::empty_array(name)),
        Value::Array(list) if list.iter().all(Value::is_string) => {
            for v in list {
                if let Value::String(s) = v {
                    each(Item::Text(s));
                }
            }
        }
        Value::Array(list) if list.iter().all(is_token) => each(Item::Tokens(list)),
        Value::Array(list)
            if list.iter().all(
                |v| matches!(v, Value::Array(ids) if !ids.is_empty() && ids.iter().all(is_token)),
            ) =>
        {
            for v in list {
                if let Value::Array(ids) = v {
                    each(Item::Tokens(ids));
                }
            }
        }
        other => return Err(MockError::invalid_type(name, EXPECTED, other)),
    }
    Ok(())
}
