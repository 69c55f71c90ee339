//! [`SseScanner`]: reads a streamed answer (`text/event-stream`) as it passes through, event
//! by event, for its usage and its end, without holding the stream back.
//!
//! Bytes arrive in pieces of any size. The scanner splits them into events (each ends at a
//! blank line, LF or CRLF), decides for each complete event whether it goes to the client,
//! and keeps back only the bytes of the one incomplete event at the end of a piece (bounded,
//! [`DEFAULT_MAX_EVENT`]). An event that outgrows the bound goes to the client unread as it
//! arrives, and scanning resumes with the next event: a long answer in one event never stops
//! the usage chunk after it from being read (and dropped, when Sluice asked for it). An event is parsed as JSON only when a cheap byte search says it
//! may hold a usage object or end a Responses stream, so the common content chunk costs a
//! few `memchr` calls.

use std::borrow::Cow;
use std::sync::LazyLock;

use memchr::memmem::Finder;

use super::{parse_probe, Usage};

/// The longest incomplete event the scanner holds back by default: 1 MiB. Real events are a
/// few hundred bytes; a `response.completed` event repeats the whole answer, so it can run to
/// tens of KiB.
pub const DEFAULT_MAX_EVENT: usize = 1 << 20;

/// What to do with one complete event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Pass it to the client, byte for byte.
    Forward,
    /// Keep it from the client.
    Drop,
}

/// One complete event, as [`SseScanner::feed_with`] shows it to the caller's decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventView<'a> {
    /// The event's bytes, its terminating blank line included.
    pub bytes: &'a [u8],
    /// The usage it carries: a chunk's `usage` object, or a Responses event's
    /// `response.usage`.
    pub usage: Option<Usage>,
    /// A usage-only chunk: `usage` set and `choices: []` (what `include_usage` adds).
    pub usage_only: bool,
    /// The stream's last event: `data: [DONE]`, or `response.completed` /
    /// `response.incomplete` / `response.failed`.
    pub done: bool,
}

/// An event that grew past the scanner's bound before it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SseError {
    /// The event being read outgrew the bound: it passes through unread to its end, and
    /// scanning resumes with the next event.
    #[error("an SSE event grew past {limit} bytes; it passes through unread")]
    EventTooLarge {
        /// The bound, [`SseScanner::with_max_event`].
        limit: usize,
    },
}

/// How a stream ended, for accounting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamOutcome {
    /// The last usage the stream carried.
    pub usage: Option<Usage>,
    /// The stream ended without its last event (`[DONE]`, `response.completed` …): the
    /// backend or the connection cut it short.
    pub truncated: bool,
    /// Complete events seen.
    pub events: u64,
    /// Events kept from the client.
    pub dropped: u64,
}

impl StreamOutcome {
    /// The tokens to charge: the reported total when the stream carried usage (even if it
    /// was cut after that), else `estimate` (the admission reservation or a better guess).
    pub fn charge(&self, estimate: u64) -> u64 {
        self.usage.map_or(estimate, |u| u.total_tokens)
    }
}

/// Where the scanner is within the current line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Line {
    /// At its start (nothing since the last LF).
    Empty,
    /// After a lone CR.
    Cr,
    /// After other bytes.
    Text,
}

impl Line {
    fn after(self, bytes: &[u8]) -> Line {
        match (self, bytes) {
            (state, []) => state,
            (Line::Empty, b"\r") => Line::Cr,
            _ => Line::Text,
        }
    }
}

/// An incremental scanner of one SSE answer body (the decoded body: no chunked framing).
///
/// Use [`SseScanner::feed`] (or [`SseScanner::feed_with`]) when some events may be dropped:
/// it appends to `out` what the client should get now, whole events only. Use
/// [`SseScanner::observe`] when every byte goes to the client anyway: the caller forwards
/// each piece as it came and the scanner only reads along. Then [`SseScanner::finish`] once
/// the body ended, for the usage and whether the stream was cut short. Use one way or the
/// other on a scanner, not both.
#[derive(Debug, Clone)]
pub struct SseScanner {
    /// The incomplete event at the end of the last piece.
    carry: Vec<u8>,
    /// Whether `carry` is still to be forwarded (fed, not observed).
    holding: bool,
    line: Line,
    max_event: usize,
    drop_usage_only: bool,
    /// Inside an event that outgrew `max_event`: its bytes pass through unread to its end.
    skipping: bool,
    /// Bytes of events that outgrew `max_event` and passed unread.
    unread: u64,
    usage: Option<Usage>,
    done: bool,
    events: u64,
    dropped: u64,
}

impl SseScanner {
    /// A scanner for one stream. `drop_usage_only`: keep usage-only chunks from the client
    /// (set it when Sluice injected `include_usage`, [`super::inject_include_usage`]).
    pub fn new(drop_usage_only: bool) -> Self {
        SseScanner {
            carry: Vec::new(),
            holding: false,
            line: Line::Empty,
            max_event: DEFAULT_MAX_EVENT,
            drop_usage_only,
            skipping: false,
            unread: 0,
            usage: None,
            done: false,
            events: 0,
            dropped: 0,
        }
    }

    /// Bounds the incomplete event held back between pieces (default [`DEFAULT_MAX_EVENT`]).
    pub fn with_max_event(mut self, bytes: usize) -> Self {
        self.max_event = bytes;
        self
    }

    /// Scans the next piece of the body and appends to `out` the bytes the client should
    /// get now: every complete event but the dropped usage-only chunks, byte for byte; an
    /// incomplete event at the end is held back until it completes.
    ///
    /// On [`SseError::EventTooLarge`] the held bytes and the rest of `input` are appended
    /// too, and the event passes through unread until it ends; the events after it are
    /// scanned again.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), SseError> {
        let drop = self.drop_usage_only;
        self.feed_with(input, out, |ev| {
            if drop && ev.usage_only {
                Verdict::Drop
            } else {
                Verdict::Forward
            }
        })
    }

    /// [`SseScanner::feed`] with the caller deciding each complete event's fate.
    pub fn feed_with(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
        mut decide: impl FnMut(&EventView<'_>) -> Verdict,
    ) -> Result<(), SseError> {
        self.holding = true;
        self.scan(input, Some(out), &mut decide)
    }

    /// Scans the next piece of a body the caller forwards whole, as it came: nothing is
    /// held back or dropped (so a usage-only chunk reaches the client).
    pub fn observe(&mut self, input: &[u8]) -> Result<(), SseError> {
        self.holding = false;
        self.scan(input, None, &mut |_| Verdict::Forward)
    }

    /// [`SseScanner::observe`], also showing each complete event to `on_event` (as it is
    /// read: its bytes, usage and end). Events too large to hold are not shown; their bytes
    /// are counted in [`SseScanner::unread_bytes`].
    pub fn observe_with(
        &mut self,
        input: &[u8],
        mut on_event: impl FnMut(&EventView<'_>),
    ) -> Result<(), SseError> {
        self.holding = false;
        self.scan(input, None, &mut |ev| {
            on_event(ev);
            Verdict::Forward
        })
    }

    /// [`SseScanner::finish`] for an observed stream, showing a last event that had no
    /// blank line after it to `on_event` too.
    pub fn finish_with(&mut self, mut on_event: impl FnMut(&EventView<'_>)) -> StreamOutcome {
        let mut none = Vec::new();
        if !self.carry.is_empty() && !self.holding {
            let carry = std::mem::take(&mut self.carry);
            self.on_event(&carry, &mut |ev| {
                on_event(ev);
                Verdict::Forward
            });
        }
        self.finish(&mut none)
    }

    /// Bytes of events that outgrew the bound and went through unread (their text is not
    /// seen by an `observe_with` caller).
    pub fn unread_bytes(&self) -> u64 {
        self.unread
    }

    /// The body ended. A held incomplete event is read as the last event and, unless
    /// dropped, appended to `out` (with `observe`, nothing is appended). Returns the
    /// stream's usage and whether it was cut short.
    pub fn finish(&mut self, out: &mut Vec<u8>) -> StreamOutcome {
        if !self.carry.is_empty() {
            let carry = std::mem::take(&mut self.carry);
            let drop = self.drop_usage_only && self.holding;
            let verdict = self.on_event(&carry, &mut |ev| {
                if drop && ev.usage_only {
                    Verdict::Drop
                } else {
                    Verdict::Forward
                }
            });
            if verdict == Verdict::Forward && self.holding {
                out.extend_from_slice(&carry);
            }
        }
        StreamOutcome {
            usage: self.usage,
            truncated: !self.done,
            events: self.events,
            dropped: self.dropped,
        }
    }

    /// The last usage seen so far.
    pub fn usage(&self) -> Option<Usage> {
        self.usage
    }

    /// Whether the stream's last event was seen.
    pub fn done(&self) -> bool {
        self.done
    }

    fn scan(
        &mut self,
        input: &[u8],
        mut out: Option<&mut Vec<u8>>,
        decide: &mut dyn FnMut(&EventView<'_>) -> Verdict,
    ) -> Result<(), SseError> {
        // input[event_start..] is not yet part of a complete event; input[run_start..
        // event_start] holds complete events to forward, copied in one go.
        let mut event_start = 0;
        let mut run_start = 0;
        let mut line_start = 0;
        for nl in memchr::memchr_iter(b'\n', input) {
            let blank = self.line.after(&input[line_start..nl]) != Line::Text;
            self.line = Line::Empty;
            line_start = nl + 1;
            if !blank {
                continue;
            }
            let end = nl + 1;
            if self.skipping {
                // The end of an event too large to read: it went (goes) to the client with
                // the run, unread; the next event is read again.
                self.skipping = false;
                self.unread += (end - event_start) as u64;
                self.events += 1;
            } else if self.carry.is_empty() {
                if self.on_event(&input[event_start..end], decide) == Verdict::Drop {
                    if let Some(out) = out.as_deref_mut() {
                        out.extend_from_slice(&input[run_start..event_start]);
                    }
                    run_start = end;
                }
            } else {
                // The event began in an earlier piece (so event_start is 0).
                let mut event = std::mem::take(&mut self.carry);
                event.extend_from_slice(&input[..end]);
                let verdict = self.on_event(&event, decide);
                if let (Verdict::Forward, Some(out)) = (verdict, out.as_deref_mut()) {
                    out.extend_from_slice(&event);
                }
                event.clear();
                self.carry = event;
                run_start = end;
            }
            event_start = end;
        }
        self.line = self.line.after(&input[line_start..]);
        if self.skipping {
            // Still inside the oversized event: everything so far goes through now.
            self.unread += (input.len() - event_start) as u64;
            if let Some(out) = out {
                out.extend_from_slice(&input[run_start..]);
            }
            return Ok(());
        }
        let rest = &input[event_start..];
        if let Some(out) = out.as_deref_mut() {
            out.extend_from_slice(&input[run_start..event_start]);
        }
        if rest.is_empty() {
            return Ok(());
        }
        if self.carry.len() + rest.len() > self.max_event {
            if let Some(out) = out {
                if self.holding {
                    out.extend_from_slice(&self.carry);
                }
                out.extend_from_slice(rest);
            }
            self.unread += (self.carry.len() + rest.len()) as u64;
            self.carry = Vec::new();
            self.skipping = true;
            return Err(SseError::EventTooLarge {
                limit: self.max_event,
            });
        }
        self.carry.extend_from_slice(rest);
        Ok(())
    }

    /// Reads one complete event, records its usage and end, and asks for its verdict.
    fn on_event(
        &mut self,
        bytes: &[u8],
        decide: &mut dyn FnMut(&EventView<'_>) -> Verdict,
    ) -> Verdict {
        self.events += 1;
        let view = inspect(bytes);
        if view.usage.is_some() {
            self.usage = view.usage;
        }
        self.done |= view.done;
        let verdict = decide(&view);
        if verdict == Verdict::Drop {
            self.dropped += 1;
        }
        verdict
    }
}

static USAGE: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"usage\""));
static RESPONSE_TYPE: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"response."));

/// What one complete event says.
fn inspect(bytes: &[u8]) -> EventView<'_> {
    let mut view = EventView {
        bytes,
        usage: None,
        usage_only: false,
        done: false,
    };
    let (name, data) = fields(bytes);
    let data = data.as_ref();
    if data.trim_ascii() == b"[DONE]" {
        view.done = true;
        return view;
    }
    let terminal_name = matches!(
        name,
        Some(b"response.completed" | b"response.incomplete" | b"response.failed")
    );
    // Without an `event:` line, a Responses event is known by its JSON `type`. Either way
    // its data must parse: a terminal event cut short does not end the stream.
    let maybe_terminal = terminal_name || (name.is_none() && RESPONSE_TYPE.find(data).is_some());
    if has_usage_object(data) || maybe_terminal {
        if let Ok(probe) = parse_probe(data) {
            view.usage = probe.usage;
            view.usage_only = probe.usage.is_some() && probe.choices == Some(0);
            view.done = probe.terminal || terminal_name;
        }
    }
    view
}

/// Whether `data` has `"usage"` followed by `:` and `{` (whitespace allowed between), i.e.
/// may hold a usage object rather than the `"usage":null` of every other chunk.
fn has_usage_object(data: &[u8]) -> bool {
    let mut from = 0;
    while let Some(at) = data.get(from..).and_then(|d| USAGE.find(d)) {
        let mut i = from + at + b"\"usage\"".len();
        let skip = |i: &mut usize| {
            while matches!(data.get(*i), Some(b' ' | b'\t' | b'\r' | b'\n')) {
                *i += 1;
            }
        };
        skip(&mut i);
        if data.get(i) == Some(&b':') {
            i += 1;
            skip(&mut i);
            if data.get(i) == Some(&b'{') {
                return true;
            }
        }
        from = i.max(from + at + 1);
    }
    false
}

/// An event's data: its `data:` lines' values joined by LF (borrowed when there is one).
pub fn event_data(event: &[u8]) -> Cow<'_, [u8]> {
    fields(event).1
}

/// An event's `event:` name and its data (the `data:` lines' values joined by LF; borrowed
/// when there is one line).
fn fields(event: &[u8]) -> (Option<&[u8]>, Cow<'_, [u8]>) {
    let mut name = None;
    let mut data: Cow<'_, [u8]> = Cow::Borrowed(&[]);
    let mut lines = 0;
    let mut start = 0;
    let ends = memchr::memchr_iter(b'\n', event).chain(std::iter::once(event.len()));
    for end in ends {
        let line = &event[start..end];
        start = (end + 1).min(event.len());
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = memchr::memchr(b':', line) else {
            continue;
        };
        let (field, value) = (&line[..colon], &line[colon + 1..]);
        let value = value.strip_prefix(b" ").unwrap_or(value);
        match field {
            b"data" => {
                lines += 1;
                if lines == 1 {
                    data = Cow::Borrowed(value);
                } else {
                    let joined = data.to_mut();
                    joined.push(b'\n');
                    joined.extend_from_slice(value);
                }
            }
            b"event" => name = Some(value),
            _ => {}
        }
    }
    (name, data)
}
