//! Writing answers: response heads, and the bodies the mock renders once at start because
//! they never change (the 429 and 5xx faults, the models list). API answers themselves come
//! from `sluice::mock::reply`; error bodies use the gateway's `GatewayError` shape.

use serde::Serialize;
use sluice::error::GatewayError;

use super::budget::Admission;
use super::MockConfig;

/// The reason phrase for the statuses the mock sends.
fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        414 => "URI Too Long",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Unknown",
    }
}

/// Appends the status line, `content-type` and the framing header, `extra` (whole header
/// lines), `connection: close` when `close`, and the blank line. `length: None` means a
/// chunked body.
pub fn head(
    out: &mut Vec<u8>,
    status: u16,
    content_type: &str,
    length: Option<usize>,
    extra: &[u8],
    close: bool,
) {
    out.extend_from_slice(b"HTTP/1.1 ");
    let mut num = itoa::Buffer::new();
    out.extend_from_slice(num.format(status).as_bytes());
    out.push(b' ');
    out.extend_from_slice(reason(status).as_bytes());
    out.extend_from_slice(b"\r\ncontent-type: ");
    out.extend_from_slice(content_type.as_bytes());
    match length {
        Some(len) => {
            out.extend_from_slice(b"\r\ncontent-length: ");
            out.extend_from_slice(num.format(len).as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        None => {
            out.extend_from_slice(b"\r\ncache-control: no-cache\r\ntransfer-encoding: chunked\r\n")
        }
    }
    out.extend_from_slice(extra);
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Appends a whole JSON answer.
pub fn json(out: &mut Vec<u8>, status: u16, extra: &[u8], body: &[u8], close: bool) {
    head(
        out,
        status,
        "application/json",
        Some(body.len()),
        extra,
        close,
    );
    out.extend_from_slice(body);
}

/// Appends `err` as an OpenAI-shaped JSON answer.
pub fn error(out: &mut Vec<u8>, err: &GatewayError, close: bool) {
    let mut body = Vec::with_capacity(192);
    err.write_body(&mut body);
    json(out, err.status(), b"", &body, close);
}

/// The answers rendered once per worker.
#[derive(Debug, Clone)]
pub struct Canned {
    /// The 429's extra header lines (`retry-after`, `retry-after-ms`, `x-ratelimit-*`).
    pub throttle_headers: Vec<u8>,
    /// The 429's body, in Azure OpenAI's shape (`{"error":{"code":"429","message":…}}`).
    pub throttle_body: Vec<u8>,
    /// The 5xx status.
    pub server_error_status: u16,
    /// The 5xx body, in OpenAI's error shape.
    pub server_error_body: Vec<u8>,
    /// `GET /v1/models`: a list holding the configured model.
    pub models_body: Vec<u8>,
}

#[derive(Serialize)]
struct AzureError<'a> {
    error: AzureErrorDetail<'a>,
}

#[derive(Serialize)]
struct AzureErrorDetail<'a> {
    code: &'a str,
    message: &'a str,
}

#[derive(Serialize)]
struct ModelList<'a> {
    object: &'a str,
    data: [Model<'a>; 1],
}

#[derive(Serialize)]
struct Model<'a> {
    id: &'a str,
    object: &'a str,
    created: u64,
    owned_by: &'a str,
}

impl Canned {
    /// Renders the canned answers of `cfg`.
    pub fn new(cfg: &MockConfig) -> Self {
        let ms = cfg.retry_after_ms;
        // `retry-after` is whole seconds; round up so a client honouring either waits enough.
        let secs = ms.div_ceil(1000);
        let throttle_headers = format!(
            "retry-after: {secs}\r\nretry-after-ms: {ms}\r\n\
             x-ratelimit-limit-requests: 60\r\nx-ratelimit-remaining-requests: 0\r\n\
             x-ratelimit-limit-tokens: 10000\r\nx-ratelimit-remaining-tokens: 0\r\n"
        )
        .into_bytes();
        let message = format!(
            "Requests to the ChatCompletions_Create Operation under Azure OpenAI API version \
             2024-10-21 have exceeded the rate limit of the sluice-bench mock. Please retry after \
             {secs} seconds."
        );
        let throttle_body = to_json(&AzureError {
            error: AzureErrorDetail {
                code: "429",
                message: &message,
            },
        });
        // OpenAI's own 5xx body (its status is the configured one, not one of Sluice's).
        let server_error_body = serde_json::to_vec(&serde_json::json!({
            "error": {
                "message": "The server had an error while processing your request. Sorry about that!",
                "type": "server_error",
                "param": null,
                "code": null,
            }
        }))
        .unwrap_or_default();
        let models_body = to_json(&ModelList {
            object: "list",
            data: [Model {
                id: &cfg.model,
                object: "model",
                created: 0,
                owned_by: "sluice-bench-mock",
            }],
        });
        Canned {
            throttle_headers,
            throttle_body,
            server_error_status: cfg.status_5xx,
            server_error_body,
            models_body,
        }
    }
}

/// The 429 body of a request a budget refused, in Azure OpenAI's shape and words (the token
/// budget's when it refused, else the request budget's), asking to retry after `wait`
/// (whole seconds, rounded up).
pub fn budget_throttle_body(admission: &Admission, wait: std::time::Duration) -> Vec<u8> {
    let which = if admission.tokens.is_some_and(|t| t.retry_after.is_some()) {
        "token rate limit"
    } else {
        "call rate limit"
    };
    let secs = wait.as_nanos().div_ceil(1_000_000_000);
    let message = format!(
        "Requests to the ChatCompletions_Create Operation under Azure OpenAI API version \
         2024-10-21 have exceeded {which} of your current OpenAI S0 pricing tier (the \
         sluice-bench mock's budget). Please retry after {secs} seconds."
    );
    to_json(&AzureError {
        error: AzureErrorDetail {
            code: "429",
            message: &message,
        },
    })
}

fn to_json<T: Serialize>(value: &T) -> Vec<u8> {
    // Plain structs with string keys: serializing cannot fail.
    serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_frame_by_length_or_chunks() {
        let mut out = Vec::new();
        json(&mut out, 200, b"x-a: 1\r\n", b"{}", true);
        assert_eq!(
            out,
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\nx-a: 1\r\nconnection: close\r\n\r\n{}"
        );
        out.clear();
        head(&mut out, 200, "text/event-stream", None, b"", false);
        assert!(out.ends_with(b"transfer-encoding: chunked\r\n\r\n"));
    }

    #[test]
    fn canned_answers_follow_the_config() {
        let cfg = MockConfig {
            retry_after_ms: 1500,
            status_5xx: 502,
            model: "gpt-x".into(),
            ..MockConfig::default()
        };
        let c = Canned::new(&cfg);
        let headers = String::from_utf8(c.throttle_headers).unwrap();
        assert!(headers.contains("retry-after: 2\r\n"));
        assert!(headers.contains("retry-after-ms: 1500\r\n"));
        let body: serde_json::Value = serde_json::from_slice(&c.throttle_body).unwrap();
        assert_eq!(body["error"]["code"], "429");
        let body: serde_json::Value = serde_json::from_slice(&c.server_error_body).unwrap();
        assert_eq!(body["error"]["type"], "server_error");
        let body: serde_json::Value = serde_json::from_slice(&c.models_body).unwrap();
        assert_eq!(body["data"][0]["id"], "gpt-x");
    }
}
