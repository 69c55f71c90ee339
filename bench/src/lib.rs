//! Sluice's bench suite. For now it holds the criterion micro-benchmarks of the data plane's
//! hot pieces (`benches/`: head parsing, chunked decoding, routing, pool selection, mock
//! replies, token estimates and usage scanning), each measured against a naive baseline so a figure reads as a ratio; the load
//! generator and standalone mock server of `shared/DESIGN.md` ("The bench suite") will join
//! it here.
//!
//! This library is what the benches share: the wire fixtures they feed the data plane, and
//! helpers that frame them as a client or backend would send them. The fixtures are copies
//! of `shared/fixtures/openai/` (which lies outside the repository), embedded so a bench
//! reads no file.

pub mod cache;
pub mod certs;
pub mod compare;
pub mod failover;
pub mod fleet;
pub mod load;
pub mod mock_server;
pub mod results_md;

use sluice::http::{write_chunk, LAST_CHUNK};

/// The body of a non-streaming chat completion request (`chat_request.json`).
pub const CHAT_REQUEST: &[u8] = include_bytes!("../fixtures/chat_request.json");

/// The body of a streaming chat completion request with `stream_options.include_usage`
/// (`chat_request_stream.json`).
pub const CHAT_REQUEST_STREAM: &[u8] = include_bytes!("../fixtures/chat_request_stream.json");

/// A streamed chat completion as Azure OpenAI sends it, usage chunk and `[DONE]` included
/// (`chat_stream_with_usage.sse`): the body of a `text/event-stream` answer, unchunked.
pub const CHAT_STREAM_SSE: &[u8] = include_bytes!("../fixtures/chat_stream_with_usage.sse");

/// A non-streaming chat completion answer, Azure's content-filter fields and `usage` with its
/// token details included (`chat_completion.json`).
pub const CHAT_COMPLETION: &[u8] = include_bytes!("../fixtures/chat_completion.json");

/// English prose about rate limiting, 1 KiB (1024 bytes, ASCII): the prompt text of the token
/// estimate benches.
pub fn prose_kib() -> String {
    const PARAGRAPH: &str = "A token bucket holds up to a fixed number of tokens and refills at \
        a steady rate. Each request takes as many tokens as it costs; when the bucket is empty \
        the request waits or is refused with a Retry-After header. Azure OpenAI counts a chat \
        completion's cost at admission from an estimate of the prompt plus max_tokens, and the \
        usage in the answer settles the account afterwards. ";
    let mut text = String::with_capacity(1024 + PARAGRAPH.len());
    while text.len() < 1024 {
        text.push_str(PARAGRAPH);
    }
    text.truncate(1024);
    text
}

/// A chat completion request whose prompt is `text` (one user message after a one-line system
/// message), as JSON.
pub fn chat_request_with(text: &str) -> Vec<u8> {
    let body = serde_json::json!({
        "model": "gpt-4o",
        "messages": [
            {"role": "system", "content": "You are a concise assistant."},
            {"role": "user", "content": text},
        ],
        "max_tokens": 256,
        "stream": true,
    });
    serde_json::to_vec(&body).unwrap_or_default()
}

/// A non-streaming chat completion request shaped like [`CHAT_REQUEST`] (the same system
/// message, `max_tokens` and `temperature`) whose user message is `text`, as JSON: the large
/// body of `sluice-bench compare --prompt-kib`.
pub fn chat_request_prompt(text: &str) -> Vec<u8> {
    let body = serde_json::json!({
        "messages": [
            {"role": "system", "content": "You are a concise assistant."},
            {"role": "user", "content": text},
        ],
        "max_tokens": 100,
        "temperature": 0.2,
    });
    serde_json::to_vec(&body).unwrap_or_default()
}

/// The head of `POST /v1/chat/completions` as the official Python SDK (openai 1.x over
/// httpx) sends it: 17 header fields, in its order and case, `Content-Length` matching
/// [`CHAT_REQUEST`]. Ends with the blank line; the body is not included.
pub const OPENAI_CHAT_HEAD: &[u8] = b"POST /v1/chat/completions HTTP/1.1\r\n\
Host: api.openai.com\r\n\
Accept-Encoding: gzip, deflate\r\n\
Connection: keep-alive\r\n\
Accept: application/json\r\n\
Content-Type: application/json\r\n\
User-Agent: OpenAI/Python 1.59.7\r\n\
X-Stainless-Lang: python\r\n\
X-Stainless-Package-Version: 1.59.7\r\n\
X-Stainless-OS: Linux\r\n\
X-Stainless-Arch: x64\r\n\
X-Stainless-Runtime: CPython\r\n\
X-Stainless-Runtime-Version: 3.12.8\r\n\
Authorization: Bearer sk-proj-4f9Qz2mTqLx8VbN3kR7yHcWd1eJpA6sUoG0iKtZ5\r\n\
X-Stainless-Async: false\r\n\
x-stainless-retry-count: 0\r\n\
x-stainless-read-timeout: 600\r\n\
Content-Length: 209\r\n\
\r\n";

/// [`OPENAI_CHAT_HEAD`] followed by [`CHAT_REQUEST`]: what one read of a fresh request
/// usually holds, and so what `parse_request` is handed.
pub fn openai_chat_request() -> Vec<u8> {
    [OPENAI_CHAT_HEAD, CHAT_REQUEST].concat()
}

/// `body` in the chunked transfer coding, cut into chunks of `chunk_size` bytes (the last
/// may be shorter), ended by the last chunk and no trailers.
pub fn chunked(body: &[u8], chunk_size: usize) -> Vec<u8> {
    chunked_parts(body.chunks(chunk_size.max(1)))
}

/// Each of `parts` as one chunk, then the last chunk: how a backend that flushes once per
/// part (one SSE event, say) frames its body.
pub fn chunked_parts<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = Vec::new();
    for part in parts {
        write_chunk(&mut out, part);
    }
    out.extend_from_slice(LAST_CHUNK);
    out
}

/// The events of an SSE stream, each with the blank line that ends it (a trailing part
/// without one is yielded too).
pub fn sse_events(stream: &[u8]) -> Vec<&[u8]> {
    let mut events = Vec::new();
    let mut rest = stream;
    while !rest.is_empty() {
        let end = rest
            .windows(2)
            .position(|w| w == b"\n\n")
            .map_or(rest.len(), |i| i + 2);
        let (event, tail) = rest.split_at(end);
        events.push(event);
        rest = tail;
    }
    events
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_announces_the_body_it_comes_with() {
        let head = std::str::from_utf8(OPENAI_CHAT_HEAD).unwrap();
        assert!(head.contains(&format!("Content-Length: {}\r\n", CHAT_REQUEST.len())));
        assert!(head.ends_with("\r\n\r\n"));
    }

    #[test]
    fn sse_events_split_on_blank_lines() {
        assert_eq!(
            sse_events(b"data: a\n\ndata: b\n\nrest"),
            [&b"data: a\n\n"[..], b"data: b\n\n", b"rest"]
        );
        let events = sse_events(CHAT_STREAM_SSE);
        assert_eq!(events.concat(), CHAT_STREAM_SSE);
        assert_eq!(events.last(), Some(&&b"data: [DONE]\n\n"[..]));
    }

    #[test]
    fn prose_is_one_kib_and_requests_carry_it() {
        let text = prose_kib();
        assert_eq!(text.len(), 1024);
        let body: serde_json::Value = serde_json::from_slice(&chat_request_with(&text)).unwrap();
        assert_eq!(body["messages"][1]["content"], text.as_str());
    }

    #[test]
    fn chunked_frames_parts_and_ends() {
        assert_eq!(
            chunked(b"abcde", 2),
            b"2\r\nab\r\n2\r\ncd\r\n1\r\ne\r\n0\r\n\r\n"
        );
    }
}
