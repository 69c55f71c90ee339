//! Answers the gateway writes itself: response heads, OpenAI-shaped errors and the models
//! list.

use crate::error::{write_json_string, GatewayError};
use crate::policy::context::RequestId;
use crate::snapshot::Snapshot;

/// Appends `HTTP/1.1 {status} {reason}\r\n`.
pub fn status_line(out: &mut Vec<u8>, status: u16) {
    out.extend_from_slice(b"HTTP/1.1 ");
    let mut num = itoa::Buffer::new();
    out.extend_from_slice(num.format(status).as_bytes());
    out.push(b' ');
    let reason = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Unknown");
    out.extend_from_slice(reason.as_bytes());
    out.extend_from_slice(b"\r\n");
}

pub use crate::http::write_header as header;

/// Appends a `content-length` header.
pub fn content_length(out: &mut Vec<u8>, len: u64) {
    let mut num = itoa::Buffer::new();
    header(out, b"content-length", num.format(len).as_bytes());
}

/// Appends the headers every answer carries (`x-request-id`, the request's `extra` header
/// lines — rate-limit state, trace — and `connection: close` when the connection ends
/// after it).
pub fn common_headers(out: &mut Vec<u8>, rid: &RequestId, close: bool, extra: &[u8]) {
    header(out, b"x-request-id", rid.as_bytes());
    out.extend_from_slice(extra);
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
}

/// Appends a complete JSON answer.
pub fn json_response(
    out: &mut Vec<u8>,
    status: u16,
    body: &[u8],
    rid: &RequestId,
    close: bool,
    extra: &[u8],
) {
    answer_head(
        out,
        status,
        b"application/json",
        body.len(),
        rid,
        close,
        extra,
    );
    out.extend_from_slice(body);
}

/// Appends the head of an answer with a `len`-byte body sent as `content_type` (a valid
/// header value), ending with the blank line.
pub fn answer_head(
    out: &mut Vec<u8>,
    status: u16,
    content_type: &[u8],
    len: usize,
    rid: &RequestId,
    close: bool,
    extra: &[u8],
) {
    status_line(out, status);
    header(out, b"content-type", content_type);
    content_length(out, len as u64);
    common_headers(out, rid, close, extra);
    out.extend_from_slice(b"\r\n");
}

/// Appends a complete error answer in the OpenAI shape.
///
/// `answer_headers`: the lines Sluice adds to every answer of the request (its rate-limit
/// state and trace, once it was admitted), before `retry-after` when the error has one.
pub fn error_response(
    out: &mut Vec<u8>,
    err: &GatewayError,
    rid: &RequestId,
    close: bool,
    answer_headers: &[u8],
) {
    let mut body = Vec::with_capacity(160);
    err.write_body(&mut body);
    let mut extra = answer_headers.to_vec();
    if let Some(wait) = err.retry_after {
        // Retry-After in whole seconds, rounded up (at least 1); retry-after-ms exactly, as
        // Azure OpenAI sends both and the SDKs prefer the latter.
        let ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
        let mut num = itoa::Buffer::new();
        header(
            &mut extra,
            b"retry-after",
            num.format(ms.div_ceil(1000).max(1)).as_bytes(),
        );
        header(&mut extra, b"retry-after-ms", num.format(ms).as_bytes());
    }
    json_response(out, err.status(), &body, rid, close || err.closes(), &extra);
}

/// Appends the `GET /v1/models` answer: the deployments this gateway serves that
/// `allowed` lets the caller see (its product's), with `answer_headers` (whole
/// `name: value\r\n` lines the pipeline's policies add to every answer, trace included).
pub fn models_response(
    out: &mut Vec<u8>,
    snapshot: &Snapshot,
    allowed: impl Fn(&str) -> bool,
    rid: &RequestId,
    close: bool,
    answer_headers: &[u8],
) {
    let mut body = Vec::with_capacity(64 + 80 * snapshot.deployment_order.len());
    body.extend_from_slice(b"{\"object\":\"list\",\"data\":[");
    for (i, name) in snapshot
        .deployment_order
        .iter()
        .filter(|n| allowed(n))
        .enumerate()
    {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(b"{\"id\":");
        write_json_string(&mut body, name);
        body.extend_from_slice(b",\"object\":\"model\",\"created\":0,\"owned_by\":\"sluice\"}");
    }
    body.extend_from_slice(b"]}");
    json_response(out, 200, &body, rid, close, answer_headers);
}
