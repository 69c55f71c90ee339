//! The process log (`tracing`): every line logged while a request is being served carries
//! its request id, without a span per request.
//!
//! A worker runs one request's code at a time, between await points: [`in_request`] marks
//! the worker thread with the request's id for each poll of the request's future (two
//! thread-local writes per poll), and [`RequestIdFormat`] adds `request_id` to every event
//! logged while the mark is set and that does not name one itself — as ` request_id=ID` at
//! the end of a text line, as a top-level `"request_id"` member of a JSON line.

use std::cell::Cell;
use std::future::Future;

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

use crate::policy::context::RequestId;

thread_local! {
    static CURRENT: Cell<Option<RequestId>> = const { Cell::new(None) };
}

/// Marks this thread as serving request `id` until dropped (then restores what was there).
pub struct RequestScope {
    previous: Option<RequestId>,
}

impl RequestScope {
    /// Marks the thread with `id`.
    pub fn enter(id: RequestId) -> RequestScope {
        RequestScope {
            previous: CURRENT.with(|c| c.replace(Some(id))),
        }
    }
}

impl Drop for RequestScope {
    fn drop(&mut self) {
        CURRENT.with(|c| c.set(self.previous));
    }
}

/// Runs `future` with the thread marked as serving request `id` during each of its polls.
pub async fn in_request<F: Future>(id: RequestId, future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    std::future::poll_fn(|cx| {
        let _scope = RequestScope::enter(id);
        future.as_mut().poll(cx)
    })
    .await
}

/// The request the current thread is serving, if any.
pub fn current_request() -> Option<RequestId> {
    CURRENT.with(Cell::get)
}

/// An event formatter adding the current request's id to `F`'s lines.
pub struct RequestIdFormat<F> {
    inner: F,
    json: bool,
}

impl<F> RequestIdFormat<F> {
    /// Wraps `inner`, whose lines are JSON objects when `json`.
    pub fn new(inner: F, json: bool) -> Self {
        Self { inner, json }
    }
}

/// Whether an event has a `request_id` field of its own.
struct NamesRequestId(bool);

impl Visit for NamesRequestId {
    fn record_debug(&mut self, field: &Field, _value: &dyn std::fmt::Debug) {
        self.0 |= field.name() == "request_id";
    }
}

impl<S, N, F> FormatEvent<S, N> for RequestIdFormat<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let Some(id) = current_request() else {
            return self.inner.format_event(ctx, writer, event);
        };
        let mut named = NamesRequestId(false);
        event.record(&mut named);
        if named.0 {
            return self.inner.format_event(ctx, writer, event);
        }
        // The inner format was told whether to colour (`Format::with_ansi`).
        let mut line = String::new();
        self.inner
            .format_event(ctx, Writer::new(&mut line), event)?;
        let body = line.strip_suffix('\n').unwrap_or(&line);
        if self.json {
            // `{"timestamp":…}` → `{"request_id":"…","timestamp":…}` (ids are
            // `[A-Za-z0-9._-]`: nothing to escape).
            match body.strip_prefix('{') {
                Some(rest) => write!(writer, "{{\"request_id\":\"{id}\",{rest}")?,
                None => writer.write_str(body)?,
            }
        } else {
            write!(writer, "{body} request_id={id}")?;
        }
        writer.write_char('\n')
    }
}
