//! Answering a request from the response cache ([`crate::policy::cache`] decided a hit): the
//! stored body goes through the response phases like an answer a backend or the mock gave
//! — so the audit record, the metrics and the usage see it — and out as `200` with the
//! backend's `content-type`, this request's own `x-request-id` and answer headers (its
//! rate-limit state, `x-sluice-cache: hit`).
//!
//! A small body goes out in one write with the head; a larger one is written straight from
//! the store's shared buffer, so a slow client holds no copy of it, in slices of
//! [`WRITE_SLICE`] each given the send timeout — as a relayed answer's writes are (nginx's
//! `send_timeout`: between two writes, not for the whole answer).

use crate::answers::answer_head;
use crate::cache::control::Freshness;
use crate::cache::CachedAnswer;
use crate::downstream::{Downstream, Next};
use crate::policy::context::RequestCtx;
use crate::policy::phase::{BodyCoding, Chunk, Pipeline, Policy, Response};
use crate::policy::trace::answer_headers;

/// Bodies up to this many bytes are copied behind the head (one write); larger ones are
/// written from the store.
const COPIED_BODY: usize = 16 << 10;

/// The most of a stored body one write to the client takes.
const WRITE_SLICE: usize = 64 << 10;

/// Replays `answer` to the client of `down`.
pub(super) async fn replay<'s, P: Policy>(
    down: &mut Downstream,
    pipeline: &Pipeline<'s, P>,
    ctx: &mut RequestCtx<'s>,
    answer: &CachedAnswer,
    close: bool,
) -> Next {
    let head = Response {
        status: 200,
        event_stream: false,
        content_type: Some(&answer.content_type),
        coding: BodyCoding::Identity,
        backend: None,
        freshness: Freshness::default(),
    };
    if let Some(err) = pipeline.on_response_head(ctx, &head).into_error() {
        return down.answer_error(ctx, &err, close).await;
    }
    ctx.status = Some(200);
    // Empty unless a policy rewrites the body (none rewrites a JSON answer today).
    let mut filtered = Vec::new();
    let replaced =
        pipeline.on_body_chunk(ctx, &answer.body, true, &mut filtered) == Chunk::Replaced;
    let body = if replaced {
        &filtered[..]
    } else {
        &answer.body[..]
    };
    let mut out = std::mem::take(&mut down.out);
    out.clear();
    let headers = answer_headers(ctx);
    answer_head(
        &mut out,
        200,
        &answer.content_type,
        body.len(),
        &ctx.id,
        close,
        &headers,
    );
    if replaced || body.len() <= COPIED_BODY {
        out.extend_from_slice(body);
        return down.write_out(out, close).await;
    }
    let (res, out) = down.write_client(out).await;
    down.out = out;
    if res.is_err() {
        return Next::Close;
    }
    let mut at = 0;
    while at < answer.body.len() {
        let end = answer.body.len().min(at + WRITE_SLICE);
        let (res, _) = down.write_client(answer.body.slice(at..end)).await;
        if res.is_err() {
            return Next::Close;
        }
        at = end;
    }
    if close {
        Next::Close
    } else {
        Next::KeepAlive
    }
}
