//! [`SseScanner`]: reads a streamed answer (`text/event-stream`) as it passes through, event
//! by event, for its usage, its model and its end, without holding the stream back.
//!
//! Bytes arrive in pieces of any size. The scanner splits them into lines and events the way
//! the SSE spec does (WHATWG HTML § 9.2.6, "Interpreting an event stream"): a line ends at
//! CRLF, LF or a lone CR, an event ends at a blank line, and a UTF-8 byte-order mark at the
//! very start of the stream is ignored. It decides for each complete event whether it goes
//! to the client, and keeps back only the bytes of the one incomplete event at the end of a
//! piece (bounded, [`DEFAULT_MAX_EVENT`]). An event that outgrows the bound goes to the client
//! unread as it arrives, and scanning resumes with the next event: a long answer in one event
//! never stops the usage chunk after it from being read (and dropped, when Sluice asked for
//! it). An event is parsed as JSON only when a cheap byte search says it may hold a usage
//! object (the key spelled `"usage"`: an escaped key such as `"us\u0061ge"` is not looked
//! for in a stream) or end a Responses stream, so the common content chunk costs a few
//! `memchr` calls. Until the stream's model is known, an event whose data holds `"model"`
//! followed by a non-empty string is parsed too (the first chat chunk after Azure's
//! `"model": ""` one, or the first Responses lifecycle event: one event per stream, usually);
//! once it is known, that search stops.

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
    /// The event's bytes as they go to the client, its terminating blank line included
    /// (the LF of a blank line's CRLF end goes with the event too, even when it arrives in
    /// the next piece; it is then not in `bytes`).
    pub bytes: &'a [u8],
    /// The bytes read as SSE lines: `bytes` without the stream's leading byte-order mark
    /// (only the first event can have one). Give these to [`event_data`].
    pub lines: &'a [u8],
    /// The usage it carries: a chunk's `usage` object, or a Responses event's
    /// `response.usage`.
    pub usage: Option<Usage>,
    /// A usage-only chunk: a top-level `usage` object and no choice in it (`choices: []`
    /// as `include_usage` adds it, or no `choices` array at all).
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
    /// At its start (nothing since the last line end).
    Empty,
    /// After other bytes.
    Text,
}

/// The UTF-8 byte-order mark a stream may begin with (ignored by SSE parsers).
const BOM: &[u8] = b"\xEF\xBB\xBF";

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
    /// The last byte scanned was a CR (a line end): an LF first in the next piece belongs
    /// to that line end.
    after_cr: bool,
    /// That CR also ended an event, which went this way: the LF goes the same way.
    cr_event: Option<Verdict>,
    /// How many bytes of a leading [`BOM`] the stream began with so far; `BOM.len()` once
    /// settled either way.
    bom: usize,
    max_event: usize,
    drop_usage_only: bool,
    /// Inside an event that outgrew `max_event`: its bytes pass through unread to its end.
    skipping: bool,
    /// Bytes of events that outgrew `max_event` and passed unread.
    unread: u64,
    usage: Option<Usage>,
    /// The first non-empty model an event named ([`SseScanner::model`]).
    model: Option<String>,
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
            after_cr: false,
            cr_event: None,
            bom: 0,
            max_event: DEFAULT_MAX_EVENT,
            drop_usage_only,
            skipping: false,
            unread: 0,
            usage: None,
            model: None,
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
    /// get now: every complete event but the dropped usage-only chunks, byte for byte (a
    /// byte-order mark the stream began with stays, even when its first event is dropped);
    /// an incomplete event at the end is held back until it completes.
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
            if self.holding {
                out.extend_from_slice(match verdict {
                    Verdict::Forward => &carry,
                    Verdict::Drop => self.kept_of_dropped(&carry),
                });
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

    /// The model the stream named: the first non-empty top-level `model` of a chunk (Azure's
    /// first chunk, its prompt filter results, has `"model": ""`, so it is passed over), or
    /// `response.model` of a Responses lifecycle event (`response.created` … `completed`:
    /// every one repeats it). A `model` longer than [`super::MAX_MODEL`] bytes, given twice in one
    /// event, or not a string is not a model name and is passed over. As with `usage`, an
    /// escaped key (`"m\u006fdel"`) is not looked for, and an event too large to hold is
    /// not read.
    pub fn model(&self) -> Option<&str> {
        self.model.as_deref()
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
        if input.is_empty() {
            return Ok(());
        }
        // input[event_start..] is not yet part of a complete event; input[run_start..
        // event_start] holds complete events to forward, copied in one go.
        let mut event_start = 0;
        let mut run_start = 0;
        let mut line_start = 0;
        if std::mem::take(&mut self.after_cr) && input[0] == b'\n' {
            // The LF of a CRLF split between pieces: the line ended at the CR. When that
            // ended an event too, the LF goes the event's way.
            line_start = 1;
            if let Some(verdict) = self.cr_event {
                event_start = 1;
                if verdict == Verdict::Drop {
                    run_start = 1;
                }
            }
        }
        self.cr_event = None;
        line_start = line_start.max(self.skip_bom(input));
        for at in memchr::memchr2_iter(b'\r', b'\n', input) {
            if at < line_start {
                // The LF of a CRLF, taken with its CR (or the one split off above).
                continue;
            }
            let lone_cr = input[at] == b'\r' && input.get(at + 1) != Some(&b'\n');
            let end = if input[at] == b'\r' && !lone_cr {
                at + 2
            } else {
                at + 1
            };
            let blank = at == line_start && self.line == Line::Empty;
            self.line = Line::Empty;
            line_start = end;
            if !blank {
                continue;
            }
            let verdict = if self.skipping {
                // The end of an event too large to read: it went (goes) to the client with
                // the run, unread; the next event is read again.
                self.skipping = false;
                self.unread += (end - event_start) as u64;
                self.events += 1;
                Verdict::Forward
            } else if self.carry.is_empty() {
                let event = &input[event_start..end];
                let verdict = self.on_event(event, decide);
                if verdict == Verdict::Drop {
                    if let Some(out) = out.as_deref_mut() {
                        out.extend_from_slice(&input[run_start..event_start]);
                        out.extend_from_slice(self.kept_of_dropped(event));
                    }
                    run_start = end;
                }
                verdict
            } else {
                // The event began in an earlier piece (so event_start is 0).
                let mut event = std::mem::take(&mut self.carry);
                event.extend_from_slice(&input[..end]);
                let verdict = self.on_event(&event, decide);
                if let Some(out) = out.as_deref_mut() {
                    out.extend_from_slice(match verdict {
                        Verdict::Forward => &event,
                        Verdict::Drop => self.kept_of_dropped(&event),
                    });
                }
                event.clear();
                self.carry = event;
                run_start = end;
                verdict
            };
            if lone_cr && end == input.len() {
                // An LF may still follow, in the next piece.
                self.cr_event = Some(verdict);
            }
            event_start = end;
        }
        if line_start < input.len() {
            self.line = Line::Text;
        }
        self.after_cr = input[input.len() - 1] == b'\r';
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

    /// Where `input` starts after the part of a leading [`BOM`] it holds (0 once the
    /// stream's first bytes are settled). Bytes that began a BOM but did not finish one are
    /// text of the first line after all.
    fn skip_bom(&mut self, input: &[u8]) -> usize {
        let mut i = 0;
        while self.bom < BOM.len() {
            match input.get(i) {
                None => return i,
                Some(&b) if b == BOM[self.bom] => {
                    self.bom += 1;
                    i += 1;
                }
                Some(_) => {
                    if self.bom > i {
                        self.line = Line::Text;
                    }
                    self.bom = BOM.len();
                    return 0;
                }
            }
        }
        i
    }

    /// What of an event just dropped still goes to the client: the stream's byte-order
    /// mark, when the event was the stream's first (the mark belongs to the stream).
    fn kept_of_dropped(&self, event: &[u8]) -> &'static [u8] {
        if self.events == 1 && event.starts_with(BOM) {
            BOM
        } else {
            b""
        }
    }

    /// Reads one complete event, records its usage and end, and asks for its verdict.
    fn on_event(
        &mut self,
        bytes: &[u8],
        decide: &mut dyn FnMut(&EventView<'_>) -> Verdict,
    ) -> Verdict {
        let lines = match self.events {
            // Only the stream's first bytes can be its byte-order mark.
            0 => bytes.strip_prefix(BOM).unwrap_or(bytes),
            _ => bytes,
        };
        self.events += 1;
        let (view, model) = inspect(bytes, lines, self.model.is_none());
        if view.usage.is_some() {
            self.usage = view.usage;
        }
        if model.is_some() {
            self.model = model;
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
static MODEL: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"model\""));

/// What one complete event says (`lines`: its bytes as read, see [`EventView::lines`]), and
/// the model it names when `want_model` (see [`SseScanner::model`]).
fn inspect<'a>(
    bytes: &'a [u8],
    lines: &'a [u8],
    want_model: bool,
) -> (EventView<'a>, Option<String>) {
    let mut view = EventView {
        bytes,
        lines,
        usage: None,
        usage_only: false,
        done: false,
    };
    let (name, data) = fields(lines);
    let data = data.as_ref();
    if data.trim_ascii() == b"[DONE]" {
        view.done = true;
        return (view, None);
    }
    let terminal_name = matches!(
        name,
        Some(b"response.completed" | b"response.incomplete" | b"response.failed")
    );
    // Without an `event:` line, a Responses event is known by its JSON `type`. Either way
    // its data must parse: a terminal event cut short does not end the stream.
    let maybe_terminal = terminal_name || (name.is_none() && RESPONSE_TYPE.find(data).is_some());
    let for_usage = has_usage_object(data) || maybe_terminal;
    let mut model = None;
    if for_usage || (want_model && may_name_model(data)) {
        if let Ok(probe) = parse_probe(data) {
            // An event parsed only for its model says nothing more: its usage and end are
            // read exactly as when the model was already known.
            if for_usage {
                view.usage = probe.usage;
                view.usage_only = probe.usage_only;
                view.done = probe.terminal || terminal_name;
            }
            if want_model {
                model = probe.model.map(|m| m.into_owned());
            }
        }
    }
    (view, model)
}

/// Whether `data` has `"usage"` followed by `:` and `{` (whitespace allowed between), i.e.
/// may hold a usage object rather than the `"usage":null` of every other chunk.
fn has_usage_object(data: &[u8]) -> bool {
    has_member(data, &USAGE, |value| value.first() == Some(&b'{'))
}

/// Whether `data` has `"model"` followed by `:` and a string that is not empty (whitespace
/// allowed between), i.e. may name a model: Azure's first chunk, `"model":""`, is not
/// parsed for it.
fn may_name_model(data: &[u8]) -> bool {
    has_member(data, &MODEL, |value| {
        value.first() == Some(&b'"') && value.get(1) != Some(&b'"')
    })
}

/// Whether `data` has `key` (a finder of a quoted key) followed by `:` and a value that
/// `starts` accepts (given the bytes from the value on; whitespace allowed between).
fn has_member(data: &[u8], key: &Finder<'_>, starts: impl Fn(&[u8]) -> bool) -> bool {
    let mut from = 0;
    while let Some(at) = data.get(from..).and_then(|d| key.find(d)) {
        let mut i = from + at + key.needle().len();
        let skip = |i: &mut usize| {
            while matches!(data.get(*i), Some(b' ' | b'\t' | b'\r' | b'\n')) {
                *i += 1;
            }
        };
        skip(&mut i);
        if data.get(i) == Some(&b':') {
            i += 1;
            skip(&mut i);
            if starts(&data[i..]) {
                return true;
            }
        }
        from = i.max(from + at + 1);
    }
    false
}

/// An event's data: its `data:` lines' values joined by LF (borrowed when there is one).
/// `event` is the event's lines ([`EventView::lines`]); a line ends at CRLF, LF or CR.
pub fn event_data(event: &[u8]) -> Cow<'_, [u8]> {
    fields(event).1
}

/// An event's `event:` name and its data (the `data:` lines' values joined by LF; borrowed
/// when there is one line). As the SSE spec reads a line: a line without a colon is a field
/// with an empty value, one starting with a colon is a comment, and one space after the
/// colon is not part of the value.
fn fields(event: &[u8]) -> (Option<&[u8]>, Cow<'_, [u8]>) {
    let mut name = None;
    let mut data: Cow<'_, [u8]> = Cow::Borrowed(&[]);
    let mut lines = 0;
    let mut rest = event;
    while !rest.is_empty() {
        let line = match memchr::memchr2(b'\r', b'\n', rest) {
            Some(at) => {
                let crlf = rest[at] == b'\r' && rest.get(at + 1) == Some(&b'\n');
                let line = &rest[..at];
                rest = &rest[at + 1 + usize::from(crlf)..];
                line
            }
            None => std::mem::take(&mut rest),
        };
        let (field, value) = match memchr::memchr(b':', line) {
            Some(colon) => (&line[..colon], &line[colon + 1..]),
            None => (line, &[][..]),
        };
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

#[cfg(test)]
mod tests {
    use super::super::MAX_MODEL;
    use super::*;

    const CONTENT: &str = r#"data: {"id":"c","choices":[{"index":0,"delta":{"content":"hello"}}]}"#;
    const USAGE_ONLY: &str = r#"data: {"id":"c","choices":[],"usage":{"prompt_tokens":100,"completion_tokens":50,"total_tokens":150}}"#;
    const USED: Usage = Usage {
        prompt_tokens: 100,
        completion_tokens: 50,
        total_tokens: 150,
    };

    /// A stream's events, each a list of lines, with each line ended by `end`.
    fn stream(events: &[&[&str]], end: &str) -> Vec<Vec<u8>> {
        events
            .iter()
            .map(|lines| {
                let mut ev = String::new();
                for line in lines.iter() {
                    ev.push_str(line);
                    ev.push_str(end);
                }
                ev.push_str(end);
                ev.into_bytes()
            })
            .collect()
    }

    /// Feeds `pieces`; returns what the client got, each piece's share, and the outcome.
    fn feed_all(drop: bool, pieces: &[&[u8]]) -> (Vec<u8>, Vec<Vec<u8>>, StreamOutcome) {
        let mut scanner = SseScanner::new(drop);
        let mut out = Vec::new();
        let mut shares = Vec::new();
        for piece in pieces {
            let before = out.len();
            scanner.feed(piece, &mut out).unwrap();
            shares.push(out[before..].to_vec());
        }
        let outcome = scanner.finish(&mut out);
        (out, shares, outcome)
    }

    /// The events observed (their bytes as read, usage, usage-only, end) and the outcome.
    fn observe_all(pieces: &[&[u8]]) -> (Vec<(Vec<u8>, bool, bool)>, StreamOutcome) {
        let mut scanner = SseScanner::new(false);
        let mut seen = Vec::new();
        for piece in pieces {
            scanner
                .observe_with(piece, |ev| {
                    seen.push((event_data(ev.lines).into_owned(), ev.usage_only, ev.done));
                })
                .unwrap();
        }
        let outcome = scanner.finish_with(|ev| {
            seen.push((event_data(ev.lines).into_owned(), ev.usage_only, ev.done));
        });
        (seen, outcome)
    }

    /// Every line end the SSE spec allows, and a stream mixing them event by event.
    fn every_line_end() -> Vec<(&'static str, Vec<Vec<u8>>)> {
        let events: &[&[&str]] = &[
            &[CONTENT],
            &["event: x", ": a comment", CONTENT],
            &[USAGE_ONLY],
            &["data: [DONE]"],
        ];
        let mut all: Vec<_> = [("LF", "\n"), ("CRLF", "\r\n"), ("CR", "\r")]
            .into_iter()
            .map(|(name, end)| (name, stream(events, end)))
            .collect();
        let mixed = events
            .iter()
            .zip(["\r", "\r\n", "\r", "\n"])
            .map(|(ev, end)| stream(&[ev], end).remove(0))
            .collect();
        all.push(("mixed", mixed));
        all
    }

    #[test]
    fn every_line_end_is_gated_event_by_event_at_every_split() {
        for (name, events) in every_line_end() {
            let whole = events.concat();
            let want: Vec<u8> = [&events[0][..], &events[1], &events[3]].concat();
            // Fed an event a piece, each event comes out as its piece arrives: nothing is
            // held back waiting for a line end of another kind.
            let pieces: Vec<&[u8]> = events.iter().map(|e| &e[..]).collect();
            let (out, shares, outcome) = feed_all(true, &pieces);
            assert_eq!(
                shares,
                [&events[0][..], &events[1], b"", &events[3]],
                "{name}"
            );
            assert_eq!(out, want, "{name}");
            assert_eq!((outcome.usage, outcome.dropped), (Some(USED), 1), "{name}");
            // Every two-way and three-way split: the same bytes out, the same reading.
            for i in 0..=whole.len() {
                for j in i..=whole.len() {
                    let pieces = [&whole[..i], &whole[i..j], &whole[j..]];
                    let (out, _, outcome) = feed_all(true, &pieces);
                    assert_eq!(out, want, "{name}: split at {i}, {j}");
                    assert_eq!(outcome.usage, Some(USED), "{name}: {i}, {j}");
                    assert_eq!(outcome.events, 4, "{name}: {i}, {j}");
                    assert_eq!(outcome.dropped, 1, "{name}: {i}, {j}");
                    assert!(!outcome.truncated, "{name}: {i}, {j}");
                    let (out, _, _) = feed_all(false, &pieces);
                    assert_eq!(out, whole, "{name}: nothing dropped, {i}, {j}");
                }
            }
            let bytes: Vec<&[u8]> = whole.chunks(1).collect();
            assert_eq!(feed_all(true, &bytes).0, want, "{name}: byte by byte");
            let (seen, outcome) = observe_all(&bytes);
            let data: Vec<_> = seen.iter().map(|(d, ..)| d.clone()).collect();
            assert_eq!(
                data,
                [
                    &CONTENT.as_bytes()[6..],
                    &CONTENT.as_bytes()[6..],
                    &USAGE_ONLY.as_bytes()[6..],
                    b"[DONE]"
                ],
                "{name}"
            );
            assert_eq!(outcome.usage, Some(USED), "{name}");
        }
    }

    #[test]
    fn a_crlf_split_after_its_cr_goes_with_its_event() {
        let usage = format!("{USAGE_ONLY}\r\n\r\n");
        let done = "data: [DONE]\r\n\r\n";
        // The usage chunk's blank line ends in a piece that stops before its LF: the event
        // is decided at once, and the LF arriving next is dropped with it.
        let (cut, lf) = usage.as_bytes().split_at(usage.len() - 1);
        let (out, shares, _) = feed_all(true, &[cut, lf, done.as_bytes()]);
        assert_eq!(shares, [&b""[..], b"", done.as_bytes()]);
        assert_eq!(out, done.as_bytes());
        // A forwarded event's LF follows it.
        let content = format!("{CONTENT}\r\n\r\n");
        let (cut, lf) = content.as_bytes().split_at(content.len() - 1);
        let (_, shares, _) = feed_all(true, &[cut, lf]);
        assert_eq!(shares, [cut, lf]);
        // An LF after a CR that ended only a line is part of the event being read.
        let lines = format!("{CONTENT}\r\ndata: x\r\n\r\n");
        let at = CONTENT.len() + 1;
        let (_, shares, _) = feed_all(true, &[&lines.as_bytes()[..at], &lines.as_bytes()[at..]]);
        assert_eq!(shares, [&b""[..], lines.as_bytes()]);
    }

    #[test]
    fn a_leading_byte_order_mark_is_ignored_for_reading_only() {
        let stream = format!("\u{feff}{USAGE_ONLY}\n\n{CONTENT}\n\ndata: [DONE]\n\n");
        let bytes = stream.as_bytes();
        let want = [&bytes[..3], &bytes[3 + USAGE_ONLY.len() + 2..]].concat();
        for k in 0..=bytes.len() {
            let (out, _, outcome) = feed_all(true, &[&bytes[..k], &bytes[k..]]);
            assert_eq!(out, want, "split at {k}: the mark still goes to the client");
            assert_eq!(outcome.usage, Some(USED), "split at {k}");
            assert_eq!(outcome.dropped, 1, "split at {k}");
        }
        let (seen, _) = observe_all(&[bytes]);
        assert!(
            seen[0].1,
            "the first event read without the mark is usage-only"
        );
        // A mark and then a blank line: the line is blank (one event of nothing, then the
        // content); only the first event is read without a mark.
        let stream = format!("\u{feff}\n{CONTENT}\n\n\u{feff}{USAGE_ONLY}\n\n");
        for k in 0..=stream.len() {
            let (s, _) = stream.as_bytes().split_at(k);
            let (seen, outcome) = observe_all(&[s, &stream.as_bytes()[k..]]);
            assert_eq!(outcome.events, 3, "split at {k}");
            assert_eq!(seen[1].0, &CONTENT.as_bytes()[6..], "split at {k}");
            assert_eq!(outcome.usage, None, "a mark later on is not skipped");
        }
        // Bytes that only begin a mark are text of the first line.
        for stream in [&b"\xef\xbb\n\n"[..], b"\xef\n\n", b"\xef\xbb\xbe\n\n"] {
            for k in 0..=stream.len() {
                let (_, outcome) = observe_all(&[&stream[..k], &stream[k..]]);
                assert_eq!(outcome.events, 1, "{stream:?} split at {k}");
            }
        }
    }

    #[test]
    fn usage_only_chunks_are_known_by_having_no_choice() {
        let usage = r#""usage":{"prompt_tokens":100,"completion_tokens":50,"total_tokens":150}"#;
        let shapes = [
            (format!(r#"{{"id":"c",{usage}}}"#), true),
            (format!(r#"{{"id":"c","choices":null,{usage}}}"#), true),
            (format!(r#"{{{usage},"choices":[]}}"#), true),
            (
                format!(r#"{{"choices":[{{"index":0,"delta":{{"content":"x"}}}}],{usage}}}"#),
                false,
            ),
            (
                format!(r#"{{"type":"response.completed","response":{{{usage}}}}}"#),
                false,
            ),
        ];
        for (data, usage_only) in shapes {
            let event = format!("data: {data}\n\n");
            let (seen, outcome) = observe_all(&[event.as_bytes()]);
            assert_eq!(seen[0].1, usage_only, "{data}");
            assert_eq!(outcome.usage, Some(USED), "{data}");
            let (out, _, _) = feed_all(true, &[event.as_bytes()]);
            assert_eq!(out.is_empty(), usage_only, "{data}");
        }
    }

    #[test]
    fn fields_are_read_as_the_spec_reads_them() {
        // A line without a colon is a field with an empty value; a comment is skipped; one
        // space after the colon is dropped, a second is kept.
        assert_eq!(
            &*event_data(b"data\r: c\rdata:x\r\ndata:  y\nid: 1\n\n"),
            b"\nx\n y"
        );
        assert_eq!(&*event_data(b"data: [DONE]\r\r"), b"[DONE]");
        let (name, data) = fields(b"event: response.completed\rdata: {}\r\r");
        assert_eq!(
            (name, &*data),
            (Some(&b"response.completed"[..]), &b"{}"[..])
        );
    }

    /// The model a scanner reads from `stream` fed in `pieces` split at `at`, filtering
    /// and observing alike.
    fn model_at(stream: &[u8], at: usize) -> (Option<String>, Option<String>) {
        let mut fed = SseScanner::new(true);
        let mut observed = SseScanner::new(false);
        let mut out = Vec::new();
        for piece in [&stream[..at], &stream[at..]] {
            fed.feed(piece, &mut out).unwrap();
            observed.observe(piece).unwrap();
        }
        fed.finish(&mut out);
        observed.finish(&mut out);
        (
            fed.model().map(str::to_owned),
            observed.model().map(str::to_owned),
        )
    }

    #[test]
    fn the_first_non_empty_model_is_kept_at_every_split() {
        // Azure's first chunk carries the prompt filter results and `"model": ""`.
        let azure = concat!(
            "data: {\"choices\":[],\"created\":0,\"id\":\"\",\"model\":\"\",\"object\":\"\",",
            "\"prompt_filter_results\":[{\"prompt_index\":0,\"content_filter_results\":{}}]}\n\n",
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\"}}],\"model\":\"gpt-4o-2024-08-06\"}\n\n",
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"}}],\"model\":\"later\"}\n\n",
            "data: {\"choices\":[],\"model\":\"gpt-4o-2024-08-06\",\"usage\":{\"prompt_tokens\":100,\"completion_tokens\":50,\"total_tokens\":150}}\n\n",
            "data: [DONE]\n\n",
        );
        // Responses: without `event:` lines, and the model only in `response.completed`.
        let responses = concat!(
            "data: {\"type\":\"response.output_text.delta\",\"delta\":\"hi\"}\n\n",
            "event: response.completed\n",
            "data: {\"type\":\"response.completed\",\"response\":{\"id\":\"r\",\"model\":\"gpt-4.1-2025-04-14\",",
            "\"usage\":{\"input_tokens\":100,\"output_tokens\":50,\"total_tokens\":150}}}\n\n",
        );
        let want_azure = Some("gpt-4o-2024-08-06".to_owned());
        let want_responses = Some("gpt-4.1-2025-04-14".to_owned());
        for (stream, want) in [(azure, want_azure), (responses, want_responses)] {
            for at in 0..=stream.len() {
                let (fed, observed) = model_at(stream.as_bytes(), at);
                assert_eq!(fed, want, "split at {at}");
                assert_eq!(observed, want, "split at {at}");
            }
            let (_, outcome) = observe_all(&[stream.as_bytes()]);
            assert_eq!(outcome.usage, Some(USED), "the usage reads as before");
            assert!(!outcome.truncated);
        }
    }

    #[test]
    fn a_model_that_is_not_a_name_is_passed_over() {
        let long = "m".repeat(MAX_MODEL + 1);
        let longest = "m".repeat(MAX_MODEL);
        let later = "data: {\"choices\":[],\"model\":\"next\"}\n\n";
        for (first, want) in [
            (format!("data: {{\"model\":\"{long}\"}}\n\n"), "next"),
            (
                format!("data: {{\"model\":\"{longest}\"}}\n\n"),
                &longest[..],
            ),
            (
                "data: {\"model\":\"a\",\"model\":\"b\"}\n\n".to_owned(),
                "next",
            ),
            ("data: {\"model\":12}\n\n".to_owned(), "next"),
            ("data: {\"model\":null}\n\n".to_owned(), "next"),
            (
                "data: {\"x\":{\"model\":\"nested\"}}\n\n".to_owned(),
                "next",
            ),
            (
                "data: {\"model\":\"gpt-\\u00e9\"}\n\n".to_owned(),
                "gpt-\u{e9}",
            ),
            // Not JSON: not read.
            ("data: \"model\" \"a\"\n\n".to_owned(), "next"),
            // An escaped key is not looked for in a stream (as for `usage`).
            ("data: {\"m\\u006fdel\":\"escaped\"}\n\n".to_owned(), "next"),
        ] {
            let stream = format!("{first}{later}");
            let (fed, observed) = model_at(stream.as_bytes(), 0);
            assert_eq!(fed.as_deref(), Some(want), "{first}");
            assert_eq!(observed.as_deref(), Some(want), "{first}");
        }
        // Only data that may name one is parsed for it: not Azure's `"model":""`.
        assert!(!may_name_model(br#"{"model":"","choices":[]}"#));
        assert!(!may_name_model(br#"{"x":"model","model":null}"#));
        assert!(may_name_model(br#"{"model" :  "a"}"#));
        assert!(may_name_model(br#"{"model":"","x":{"model":"b"}}"#));
        // A stream that names no model has none.
        let (_, outcome) = observe_all(&[CONTENT.as_bytes(), b"\n\n"]);
        assert_eq!(outcome.events, 1);
        let mut scanner = SseScanner::new(false);
        scanner
            .observe(format!("{CONTENT}\n\ndata: [DONE]\n\n").as_bytes())
            .unwrap();
        assert_eq!(scanner.model(), None);
    }
}
