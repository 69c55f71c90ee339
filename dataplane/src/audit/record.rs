//! The audit record: what the worker hands over when a request completes ([`Record`], its
//! content still raw), and what the writer makes of it ([`Entry`]: the content extracted,
//! redacted and cut by the policy — one JSON line, one SQLite row).
//!
//! An entry as a JSON line (fields that do not apply are `null`):
//!
//! ```json
//! {"time":"2026-12-01T04:30:00.123Z","request_id":"3f2a…","node":"gw-1","worker":0,
//!  "subscription":"app-a","product":"standard","operation":"chat","deployment":"gpt-4o",
//!  "model":"gpt-4o-2024-08-06","api_version":"2024-10-21","backend":"east",
//!  "attempts":[{"backend":"east","status":200,"outcome":"answered","duration_ms":41.2}],
//!  "status":200,"error":null,"ended":"complete","truncated":false,
//!  "latency_ms":43.0,"upstream_latency_ms":41.2,"ttft_ms":null,
//!  "prompt_tokens":19,"completion_tokens":9,"total_tokens":28,"tokens_estimated":false,
//!  "cache":null,
//!  "client_ip":"10.0.0.7","client_cert":null,"jwt_subject":null,"app_id":null,
//!  "content":"full","request":{"messages":[…]},"response":{"choices":[…]}}
//! ```

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use serde_json::value::RawValue;

use super::content::{self, Answer, Redactor};
use super::ContentMode;
use crate::policy::context::RequestId;
use crate::policy::usage::Settled;
use crate::route::Operation;

/// One request, as its worker saw it: names and figures final, content raw.
pub struct Record {
    /// When the request's head was parsed (wall clock).
    pub time: SystemTime,
    /// The request id.
    pub request_id: RequestId,
    /// The worker that served it.
    pub worker: usize,
    /// The subscription (auth on, once authenticated).
    pub subscription: Option<String>,
    /// Its product.
    pub product: Option<String>,
    /// The operation, once routed.
    pub operation: Option<Operation>,
    /// The deployment, once known.
    pub deployment: Option<String>,
    /// The request's `api-version` query parameter (Azure paths).
    pub api_version: Option<String>,
    /// Each upstream attempt, in order.
    pub attempts: Vec<AttemptEntry>,
    /// The status the client got (`None`: no answer head went out).
    pub status: Option<u16>,
    /// The error Sluice answered with ([`crate::error::ErrorKind::name`]).
    pub error: Option<&'static str>,
    /// How the answer ended ([`crate::policy::context::End::name`]).
    pub end: &'static str,
    /// From the head parsed to the request's completion.
    pub latency: Duration,
    /// The answering attempt's time to its answer's head.
    pub upstream_latency: Option<Duration>,
    /// A stream's time to its first body bytes (from the head parsed).
    pub ttft: Option<Duration>,
    /// The tokens (`None`: usage not accounted, e.g. no deployment).
    pub tokens: Option<Settled>,
    /// What the response cache did: `hit`, `miss` or `bypass` (`None`: the deployment has no
    /// cache, or the operation is not cached).
    pub cache: Option<&'static str>,
    /// The model the answer named, as the usage reading found it
    /// ([`crate::policy::usage::UsageTap::model`]): known whatever the content policy and
    /// for answers whose content is not captured (embeddings). `None` when usage was not
    /// read or the answer named none; the content capture's model is then used.
    pub model: Option<String>,
    /// The client's address.
    pub client_ip: IpAddr,
    /// The verified client certificate's subject (RFC 4514).
    pub client_cert: Option<Arc<str>>,
    /// A JWT caller's `sub`.
    pub jwt_subject: Option<String>,
    /// A JWT caller's application (the issuer's subscription claim).
    pub app_id: Option<String>,
    /// The content policy that applies.
    pub content: ContentMode,
    /// The request body as read (decoded), when content is kept.
    pub request_body: Option<Vec<u8>>,
    /// The answer as captured, when content is kept.
    pub answer: Option<Answer>,
}

impl Record {
    /// About how many bytes the record holds (its content), for the queues' byte bound.
    pub fn weight(&self) -> usize {
        let answer = match &self.answer {
            Some(Answer::Json { body, .. }) => body.len(),
            Some(Answer::Stream { content, .. }) => text_bytes(content),
            None => 0,
        };
        1024 + self.request_body.as_ref().map_or(0, Vec::len) + answer
    }
}

/// The bytes of the strings in `value`, plus a little per node.
fn text_bytes(value: &serde_json::Value) -> usize {
    match value {
        serde_json::Value::String(s) => s.len() + 8,
        serde_json::Value::Array(items) => items.iter().map(text_bytes).sum::<usize>() + 8,
        serde_json::Value::Object(map) => {
            map.iter()
                .map(|(k, v)| k.len() + text_bytes(v))
                .sum::<usize>()
                + 8
        }
        _ => 8,
    }
}

/// One upstream attempt in a record.
#[derive(Debug, Clone, Serialize)]
pub struct AttemptEntry {
    /// The backend's name.
    pub backend: String,
    /// Its answer's status, if its head arrived.
    pub status: Option<u16>,
    /// How it ended ([`crate::policy::context::AttemptOutcome::name`]).
    pub outcome: &'static str,
    /// From its start to its answer's head (or failure), in milliseconds.
    pub duration_ms: f64,
}

/// A record as written: the JSON line's fields, in order.
#[derive(Debug, Serialize)]
pub struct Entry {
    /// RFC 3339 UTC with milliseconds.
    pub time: String,
    /// Milliseconds since the Unix epoch (the SQLite index).
    #[serde(skip)]
    pub time_unix_ms: i64,
    /// The request id.
    pub request_id: String,
    /// `[audit] node`.
    pub node: Arc<str>,
    /// The worker index.
    pub worker: usize,
    /// The subscription.
    pub subscription: Option<String>,
    /// The product.
    pub product: Option<String>,
    /// The operation ([`Operation::name`]).
    pub operation: Option<&'static str>,
    /// The deployment.
    pub deployment: Option<String>,
    /// The model the answer named (the backend's own name for it).
    pub model: Option<String>,
    /// The `api-version` query parameter.
    pub api_version: Option<String>,
    /// The backend that answered.
    pub backend: Option<String>,
    /// Every attempt.
    pub attempts: Vec<AttemptEntry>,
    /// The status the client got.
    pub status: Option<u16>,
    /// The error kind Sluice answered with.
    pub error: Option<&'static str>,
    /// How the answer ended: `complete`, `truncated` or `client_gone`.
    pub ended: &'static str,
    /// The answer did not go out whole.
    pub truncated: bool,
    /// Total latency, ms.
    pub latency_ms: f64,
    /// The answering attempt's time to its answer's head, ms.
    pub upstream_latency_ms: Option<f64>,
    /// A stream's time to its first body bytes, ms.
    pub ttft_ms: Option<f64>,
    /// Prompt tokens.
    pub prompt_tokens: Option<u64>,
    /// Completion tokens.
    pub completion_tokens: Option<u64>,
    /// Total tokens.
    pub total_tokens: Option<u64>,
    /// Whether the tokens are Sluice's estimate rather than the backend's report.
    pub tokens_estimated: Option<bool>,
    /// The response cache's part: `hit` (answered from the cache, 0 tokens), `miss` or
    /// `bypass`; `null` where the cache had none (the deployment has no cache, or the
    /// operation is not cached). In the JSON line and in SQLite column `cache` (TEXT, NULL
    /// for `null`; schema version 2).
    pub cache: Option<&'static str>,
    /// The client's address.
    pub client_ip: String,
    /// The client certificate's subject.
    pub client_cert: Option<Arc<str>>,
    /// The JWT `sub`.
    pub jwt_subject: Option<String>,
    /// The JWT application id.
    pub app_id: Option<String>,
    /// The content policy applied: `full`, `truncate`, `hash` or `omit`.
    pub content: &'static str,
    /// The request's content ([`content::request_content`], policy applied), as JSON text.
    pub request: Option<Box<RawValue>>,
    /// The answer's content ([`content::response_content`], policy applied), as JSON text.
    pub response: Option<Box<RawValue>>,
    /// What the entry holds of the queues' byte bound, given back when it is dropped (when
    /// every sink is done with it).
    #[serde(skip)]
    pub held: Option<super::recorder::Held>,
}

impl Entry {
    /// Renders `record` on the writer thread: content extracted, redacted and cut.
    pub fn render(record: Record, node: &Arc<str>, redactor: &Redactor) -> Entry {
        let since_epoch = record
            .time
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        let operation = record.operation;
        let mode = record.content;
        // Kept as JSON text, not a tree of values: a record waiting in a queue holds about
        // its size, not the many times more a parsed tree of small messages takes.
        let policy = |value: Option<serde_json::Value>| {
            value.and_then(|mut v| {
                content::apply(&mut v, mode, redactor);
                serde_json::value::to_raw_value(&v).ok()
            })
        };
        let (request, response, model) = match (operation, mode) {
            (Some(op), mode) if mode != ContentMode::Omit => {
                let request = record
                    .request_body
                    .as_deref()
                    .and_then(|body| content::request_content(op, body));
                let (model, response) = match record.answer {
                    Some(answer) => content::response_content(op, answer),
                    None => (None, None),
                };
                (policy(request), policy(response), model)
            }
            _ => (None, None, None),
        };
        // The usage reading's model first: it is read for every accounted answer, content
        // kept or not. Chosen by the backend: redacted like content.
        let model = record
            .model
            .or(model)
            .map(|m| redactor.redact(&m).into_owned());
        let backend = record
            .attempts
            .last()
            .filter(|a| a.outcome == "answered")
            .map(|a| a.backend.clone());
        Entry {
            time: humantime::format_rfc3339_millis(record.time).to_string(),
            time_unix_ms: i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX),
            // A client's id that a redaction pattern matches never became the request id
            // (the worker's own replaced it): it needs no redaction here.
            request_id: record.request_id.to_string(),
            node: Arc::clone(node),
            worker: record.worker,
            subscription: record.subscription,
            product: record.product,
            operation: operation.map(Operation::name),
            deployment: record.deployment,
            model,
            // Chosen by the client (`?api-version=`): percent-decoded as the backend reads
            // it, then redacted like content.
            api_version: record
                .api_version
                .map(|v| redactor.redact(&percent_decoded(&v)).into_owned()),
            backend,
            attempts: record.attempts,
            status: record.status,
            error: record.error,
            ended: record.end,
            truncated: record.end != "complete",
            latency_ms: millis(record.latency),
            upstream_latency_ms: record.upstream_latency.map(millis),
            ttft_ms: record.ttft.map(millis),
            prompt_tokens: record.tokens.and_then(|t| t.prompt),
            completion_tokens: record.tokens.and_then(|t| t.completion),
            total_tokens: record.tokens.map(|t| t.total),
            tokens_estimated: record.tokens.map(|t| t.estimated),
            cache: record.cache,
            client_ip: record.client_ip.to_string(),
            client_cert: record.client_cert,
            jwt_subject: record.jwt_subject,
            app_id: record.app_id,
            content: match mode {
                ContentMode::Full => "full",
                ContentMode::Truncate(_) => "truncate",
                ContentMode::Hash => "hash",
                ContentMode::Omit => "omit",
            },
            request,
            response,
            held: None,
        }
    }

    /// About how many bytes the entry holds (its texts), for the queue's byte bound.
    pub fn weight(&self) -> usize {
        let raw = |v: &Option<Box<RawValue>>| v.as_ref().map_or(0, |v| v.get().len());
        1024 + raw(&self.request) + raw(&self.response)
    }

    /// The entry as one JSON line, with its `\n`.
    pub fn json_line(&self) -> String {
        // Serializing a struct of strings, numbers and JSON values cannot fail.
        let mut line = serde_json::to_string(self).unwrap_or_default();
        line.push('\n');
        line
    }
}

/// `text` with each `%XX` escape decoded (RFC 3986 §2.1), the bytes read as UTF-8 with each
/// invalid sequence as U+FFFD; a `%` not followed by two hex digits stays as it is.
fn percent_decoded(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(hi), Some(lo)) => {
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A duration in milliseconds, to the microsecond.
pub fn millis(d: Duration) -> f64 {
    (d.as_micros() as f64) / 1000.0
}

#[cfg(test)]
mod tests {
    use super::percent_decoded;

    #[test]
    fn percent_escapes_are_decoded_as_a_backend_reads_them() {
        assert_eq!(percent_decoded("sk%2Dproj%2dSECRET"), "sk-proj-SECRET");
        assert_eq!(percent_decoded("2024-10-21"), "2024-10-21");
        assert_eq!(percent_decoded("100%"), "100%");
        assert_eq!(percent_decoded("%zz%4"), "%zz%4");
        assert_eq!(percent_decoded("%FF"), "\u{FFFD}");
    }
}
