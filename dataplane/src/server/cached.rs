//! Answering a request from the response cache ([`crate::policy::cache`] decided a hit): the
//! stored body goes through the response phases like an answer a backend or the mock gave
//! — so the audit record, the metrics and the usage see it — and out as `200
//! application/json` with this request's own `x-request-id` and answer headers (its
//! rate-limit state, `x-sluice-cache: hit`).

use crate::answers::json_response;
use crate::cache::CachedAnswer;
use crate::downstream::{Downstream, Next};
use crate::policy::context::RequestCtx;
use crate::policy::phase::{BodyCoding, Chunk, Pipeline, Policy, Response};
use crate::policy::trace::answer_headers;

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
        coding: BodyCoding::Identity,
        backend: None,
        no_store: false,
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
    json_response(&mut out, 200, body, &ctx.id, close, &answer_headers(ctx));
    down.write_out(out, close).await
}
