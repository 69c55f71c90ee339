//! Serving a request from the built-in mock backend: [`crate::mock`] builds the answer, this
//! writes it, sleeping for the configured latency and streaming pace.

use super::conn::{Client, Next};
use super::io::sleep_watching;
use super::local::{common_headers, json_response, status_line};
use super::relay::frame;
use super::worker::RequestId;
use crate::http::LAST_CHUNK;
use crate::json_edit::set_string_member;
use crate::mock::{self, MockReply, MockSettings};
use crate::route::Operation;

impl Client {
    /// Answers the current request from the mock backend `settings`; `injected`: with the
    /// body Sluice added `stream_options.include_usage` to. A body naming another `model`
    /// than `deployment` (the one the caller was authorized for) is answered as the
    /// deployment, as a real backend would be sent it (see `build_upstream_request`).
    pub(super) async fn serve_mock(
        &mut self,
        settings: &MockSettings,
        deployment: &str,
        op: Operation,
        rid: &RequestId,
        close: bool,
        injected: bool,
    ) -> Next {
        let chunked_ok = self.head.minor_version >= 1;
        let created = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        // FNV-1a of the request id: unique per request, so the mock's ids are too.
        let seed = rid
            .as_bytes()
            .iter()
            .fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| {
                (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
            });
        let body = self.attempt_body(injected);
        let pinned = match set_string_member(body, "model", deployment, false) {
            Ok(pinned) => pinned,
            Err(e) => {
                let err = e.into_gateway_error("model");
                return self.respond_error(*rid, &err, close).await;
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
            && sleep_watching(settings.latency, &self.stream)
                .await
                .is_err()
        {
            return self.mock_client_gone(rid);
        }
        let mut out = std::mem::take(&mut self.out);
        out.clear();
        let mut events = match reply {
            MockReply::Json { status, body } => {
                self.usage.start(status, false);
                self.usage.feed(&body, &mut self.filtered);
                self.usage.finish(&mut self.filtered);
                json_response(&mut out, status, &body, rid, close, &self.extra_headers());
                return self.write_out(out, close).await;
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
        common_headers(&mut out, rid, close, &self.extra_headers());
        out.extend_from_slice(b"\r\n");
        self.usage.start(200, true);
        // Events due together go out in one write; before each paced pause what is pending
        // is flushed, so the client sees every event when the mock "produces" it.
        let mut event = Vec::with_capacity(512);
        loop {
            let pause = events.pause_before_next();
            if !pause.is_zero() {
                let (res, mut back) = self.write_client(out).await;
                back.clear();
                out = back;
                if res.is_err() {
                    self.out = out;
                    return Next::Close;
                }
                if sleep_watching(pause, &self.stream).await.is_err() {
                    self.out = out;
                    return self.mock_client_gone(rid);
                }
            }
            event.clear();
            if !events.next_event(&mut event) {
                break;
            }
            self.filtered.clear();
            self.usage.feed(&event, &mut self.filtered);
            let data = if self.usage.filters() {
                &self.filtered
            } else {
                &event
            };
            frame(&mut out, data, chunked_ok);
        }
        self.filtered.clear();
        self.usage.finish(&mut self.filtered);
        frame(&mut out, &self.filtered, chunked_ok);
        if chunked_ok {
            out.extend_from_slice(LAST_CHUNK);
        }
        self.write_out(out, close).await
    }

    /// The client left while the mock "worked" (its latency or a streaming pause): settled
    /// like a real backend's abandoned request.
    fn mock_client_gone(&mut self, rid: &RequestId) -> Next {
        self.usage.client_gone();
        tracing::info!(
            request_id = %String::from_utf8_lossy(rid.as_bytes()),
            "client went away while waiting for the mock backend"
        );
        Next::Close
    }
}
