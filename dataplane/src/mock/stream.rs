//! [`MockStream`]: a streaming answer as a sequence of server-sent events, rendered one at a
//! time into the caller's buffer. The stream is a counter over a fixed layout of events, so
//! rendering allocates nothing beyond what `out` grows by.

use std::time::Duration;

use super::chat::{self, ChunkEvent};
use super::responses::{self, ResponseEvent};
use super::{token_interval, StreamKind};

/// What the event at some position is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Chunk(ChunkEvent),
    Response(ResponseEvent),
    Done,
}

/// A streaming answer (`content-type: text/event-stream`), produced by [`super::reply`].
///
/// Chat: a role chunk per choice, one chunk per token (per choice, choices interleaved), a
/// finish chunk per choice, the usage-only chunk (`choices: []`) when the request set
/// `stream_options.include_usage`, then `data: [DONE]`. Every other chunk carries
/// `"usage":null`. Completions: the same without role chunks. Responses: typed events from
/// `response.created` to `response.completed` (or `response.incomplete` when
/// `max_output_tokens` cut it short), without `[DONE]`, as OpenAI sends them.
///
/// Pacing is the server's: it sleeps `MockSettings::latency` before the first event and
/// [`MockStream::pause_before_next`] before every event.
#[derive(Debug, Clone)]
pub struct MockStream {
    kind: StreamKind,
    interval: Duration,
    next: u64,
    len: u64,
}

impl MockStream {
    pub(super) fn new(kind: StreamKind, tokens_per_second: f64) -> Self {
        let len = match &kind {
            StreamKind::Chat(p) => {
                let n = u64::from(p.choices);
                n + u64::from(p.tokens) * n + n + u64::from(p.include_usage) + 1
            }
            StreamKind::Completion(p) => {
                let n = u64::from(p.choices);
                u64::from(p.tokens) * n + n + u64::from(p.include_usage) + 1
            }
            StreamKind::Responses(p) => u64::from(p.tokens) + responses::FRAME_EVENTS,
        };
        MockStream {
            kind,
            interval: token_interval(tokens_per_second),
            next: 0,
            len,
        }
    }

    /// Appends the next SSE event to `out` (`data: {json}\n\n`, for Responses preceded by an
    /// `event: TYPE` line; for chat and completions the last one is `data: [DONE]\n\n`).
    /// Returns false, appending nothing, once the last event was given.
    pub fn next_event(&mut self, out: &mut Vec<u8>) -> bool {
        let Some(slot) = self.slot(self.next) else {
            return false;
        };
        self.next += 1;
        match (slot, &self.kind) {
            (Slot::Chunk(ev), StreamKind::Chat(plan)) => chat::write_chat_chunk(out, plan, ev),
            (Slot::Chunk(ev), StreamKind::Completion(plan)) => {
                chat::write_completion_chunk(out, plan, ev)
            }
            (Slot::Response(ev), StreamKind::Responses(plan)) => {
                responses::write_event(out, plan, ev)
            }
            (Slot::Done, _) => out.extend_from_slice(b"data: [DONE]\n\n"),
            // `slot` only yields the events of this stream's kind.
            _ => {}
        }
        true
    }

    /// The interval between successive content tokens: `1 / tokens_per_second`, or zero
    /// when unlimited. Each content event after the first is preceded by this pause; with
    /// `n` > 1 choices the pause comes once per token position, not per choice's chunk —
    /// [`MockStream::pause_before_next`] applies exactly that rule.
    pub fn event_interval(&self) -> Duration {
        self.interval
    }

    /// The pause to take before the next [`MockStream::next_event`]: `event_interval()`
    /// before each token position after the first, zero before everything else (the
    /// opening events, the first token, the finish, usage and `[DONE]`), so `T` tokens take
    /// `(T - 1) / tokens_per_second` after the first one.
    pub fn pause_before_next(&self) -> Duration {
        match self.slot(self.next) {
            Some(Slot::Chunk(ChunkEvent::Token { choice: 0, k }))
            | Some(Slot::Response(ResponseEvent::Delta { k }))
                if k > 0 =>
            {
                self.interval
            }
            _ => Duration::ZERO,
        }
    }

    /// How many events are left to give.
    pub fn remaining(&self) -> usize {
        usize::try_from(self.len - self.next).unwrap_or(usize::MAX)
    }

    /// The event at position `i`, or `None` past the end.
    fn slot(&self, i: u64) -> Option<Slot> {
        if i >= self.len {
            return None;
        }
        let (plan, opens) = match &self.kind {
            StreamKind::Chat(p) => (p, true),
            StreamKind::Completion(p) => (p, false),
            StreamKind::Responses(p) => return Some(Slot::Response(responses::event_at(p, i))),
        };
        let n = u64::from(plan.choices);
        // Positions fit in u32 pieces: choices < 128 and k < plan.tokens (a u32).
        let piece = |x: u64| u32::try_from(x).unwrap_or(u32::MAX);
        let mut i = i;
        if opens {
            if i < n {
                return Some(Slot::Chunk(ChunkEvent::Role { choice: piece(i) }));
            }
            i -= n;
        }
        let content = u64::from(plan.tokens) * n;
        if i < content {
            return Some(Slot::Chunk(ChunkEvent::Token {
                choice: piece(i % n),
                k: piece(i / n),
            }));
        }
        i -= content;
        if i < n {
            return Some(Slot::Chunk(ChunkEvent::Finish { choice: piece(i) }));
        }
        i -= n;
        if plan.include_usage && i == 0 {
            return Some(Slot::Chunk(ChunkEvent::Usage));
        }
        Some(Slot::Done)
    }
}
