//! Serving a request from the built-in mock backend: [`crate::mock`] builds the answer, this
//! writes it, sleeping for the configured latency and streaming pace.

use super::forward::pin_model;
use super::relay::frame;
use super::Exchange;
use crate::answers::{common_headers, json_response, status_line};
use crate::cache::control::Freshness;
use crate::downstream::Next;
use crate::mock::{self, MockReply, MockSettings};
use crate::policy::context::{AttemptOutcome, End, RequestCtx};
use crate::policy::phase::{BodyCoding, Chunk, Pipeline, Policy, Response};
use crate::policy::trace::answer_headers;
use crate::route::Operation;
use crate::snapshot::BackendId;
use crate::socket::sleep_watching;

impl Exchange<'_> {
    /// Answers the current request from the mock backend `settings` (backend `id`), through
    /// the same response phases as an HTTP backend's answer. A body naming another `model`
    /// than `deployment` (the one the caller was authorized for) is answered as the
    /// deployment, as a real backend would be sent it (see `build_upstream_request`).
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn serve_mock<'s, P: Policy>(
        &mut self,
        pipeline: &Pipeline<'s, P>,
        ctx: &mut RequestCtx<'s>,
        id: BackendId,
        settings: &MockSettings,
        deployment: &str,
        op: Operation,
        close: bool,
    ) -> Next {
        let started = std::time::Instant::now();
        let chunked_ok = self.down.head.minor_version >= 1;
        let created = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        // FNV-1a of the request id: unique per request, so the mock's ids are too.
        let seed = ctx
            .id
            .as_bytes()
            .iter()
            .fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| {
                (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
            });
        let body = ctx.attempt_body(&self.down.body);
        let pinned = match pin_model(ctx, body, deployment, false) {
            Ok(pinned) => pinned,
            Err(err) => {
                // The body cannot be pinned: nothing reaches the mock.
                ctx.attempts.pop();
                return self.down.answer_error(ctx, &err, close).await;
            }
        };
        let reply = mock::reply(
            settings,
            op,
            pinned.as_deref().unwrap_or(body),
            created,
            seed,
        );
        if !settings.latency.is_zero()
            && sleep_watching(settings.latency, &self.down.stream)
                .await
                .is_err()
        {
            return mock_client_gone(ctx);
        }
        let (status, event_stream) = match &reply {
            MockReply::Json { status, .. } => (*status, false),
            MockReply::Stream(_) => (200, true),
        };
        if let Some(a) = ctx.attempts.last_mut() {
            (a.outcome, a.status, a.duration) =
                (AttemptOutcome::Answered, Some(status), started.elapsed());
        }
        let head = Response {
            status,
            event_stream,
            content_type: Some(if event_stream {
                &b"text/event-stream"[..]
            } else {
                b"application/json"
            }),
            coding: BodyCoding::Identity,
            backend: Some(id),
            freshness: Freshness::default(),
        };
        if let Some(err) = pipeline.on_response_head(ctx, &head).into_error() {
            return self.down.answer_error(ctx, &err, close).await;
        }
        ctx.status = Some(status);
        let mut out = std::mem::take(&mut self.down.out);
        out.clear();
        let mut events = match reply {
            MockReply::Json { status, body } => {
                let through = pipeline.on_body_chunk(ctx, &body, true, &mut self.leg.filtered)
                    == Chunk::Replaced;
                let data = if through { &self.leg.filtered } else { &body };
                let headers = answer_headers(ctx);
                json_response(&mut out, status, data, &ctx.id, close, &headers);
                return self.down.write_out(out, close).await;
            }
            MockReply::Stream(events) => events,
        };
        // Without chunked framing (an HTTP/1.0 client) the stream is close-delimited.
        let close = close || !chunked_ok;
        status_line(&mut out, 200);
        out.extend_from_slice(b"content-type: text/event-stream\r\ncache-control: no-cache\r\n");
        if chunked_ok {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n");
        }
        common_headers(&mut out, &ctx.id, close, &answer_headers(ctx));
        out.extend_from_slice(b"\r\n");
        // Events due together go out in one write; before each paced pause what is pending
        // is flushed, so the client sees every event when the mock "produces" it.
        let mut event = Vec::with_capacity(512);
        loop {
            let pause = events.pause_before_next();
            if !pause.is_zero() {
                let (res, mut back) = self.down.write_client(out).await;
                back.clear();
                out = back;
                if res.is_err() {
                    self.down.out = out;
                    ctx.end = End::ClientGone;
                    return Next::Close;
                }
                if sleep_watching(pause, &self.down.stream).await.is_err() {
                    self.down.out = out;
                    return mock_client_gone(ctx);
                }
            }
            event.clear();
            if !events.next_event(&mut event) {
                break;
            }
            if pipeline.on_body_chunk(ctx, &event, false, &mut self.leg.filtered) == Chunk::Replaced
            {
                frame(&mut out, &self.leg.filtered, chunked_ok);
            } else {
                frame(&mut out, &event, chunked_ok);
            }
        }
        self.finish_body(pipeline, ctx, &mut out, chunked_ok);
        self.down.write_out(out, close).await
    }
}

/// The client left while the mock "worked" (its latency or a streaming pause): settled like
/// a real backend's abandoned request.
fn mock_client_gone(ctx: &mut RequestCtx<'_>) -> Next {
    ctx.end = End::ClientGone;
    if let Some(a) = ctx.attempts.last_mut() {
        if a.outcome == AttemptOutcome::Pending {
            a.outcome = AttemptOutcome::ClientGone;
        }
    }
    tracing::info!(
        request_id = %ctx.id,
        "client went away while waiting for the mock backend"
    );
    Next::Close
}
