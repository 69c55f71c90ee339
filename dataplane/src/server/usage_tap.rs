//! Reading an answer's token usage on its way to the client, for token limits: the top-level
//! `usage` of a JSON answer (scanned as the bytes pass, only the `usage` value kept), or of an
//! SSE stream's usage chunk (scanned event by event, never buffered whole). Answers of any
//! size are read in bounded memory. An answer the backend content-coded is read decoded
//! (the relay decodes it, see `content_coding`). When Sluice itself asked the backend for usage
//! (`stream_options.include_usage`), the usage-only chunk is dropped here before the client
//! sees it.
//!
//! What the request is charged comes out as a [`Charge`]: the usage when the answer carried
//! it, nothing when it was not a success, and otherwise — a success whose usage is unknown —
//! the reservation stands (never zero: an answer without usage must not be free).

use crate::tokens::usage::{JsonUsageScanner, SseScanner, Usage};

/// Where usage reading stands for the current request.
pub enum UsageTap {
    /// No token limit applies: nothing is read.
    Off,
    /// Waiting for the answer's head.
    Pending {
        /// Sluice injected `include_usage`: drop the usage-only chunk.
        drop_injected: bool,
    },
    /// Scanning a JSON answer for its top-level `usage`.
    Json(Box<JsonUsageScanner>),
    /// Scanning an SSE answer.
    Sse {
        /// The scanner (filtering when `drop_injected`).
        scanner: Box<SseScanner>,
        /// Whether events are filtered (the output differs from the input).
        filtering: bool,
    },
    /// Done: what the request is charged.
    Done(Charge),
}

/// What a request is charged once its answer is over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Charge {
    /// The answer's usage.
    Usage(Usage),
    /// Nothing: the answer was not a success (or none came and no request byte left).
    Nothing,
    /// The reservation stands: a success whose usage is not known, for this reason.
    Estimate(Unknown),
}

/// Why a successful answer's usage is not known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unknown {
    /// The answer (a stream, or a body) ended before its end, or its content coding broke
    /// (a 502 when no byte of it was relayed).
    CutShort,
    /// The answer ended cleanly without a usage Sluice could read (a backend that does not
    /// report it, a stream whose client and backend did not agree to send it, a JSON body
    /// that is not one object or gives `usage` twice: see `JsonUsageScanner`).
    Missing,
    /// The backend content-coded the answer with a coding Sluice does not decode (`zstd`,
    /// `compress`, an unknown one): it passed through unread.
    Undecodable,
    /// The request reached the backend, but no answer Sluice could relay came back (the
    /// connection broke, closed or timed out first): the backend may have done the work.
    NoAnswer,
}

impl Unknown {
    /// A short reason for the log line.
    pub fn as_str(self) -> &'static str {
        match self {
            Unknown::CutShort => "answer cut short before its usage",
            Unknown::Missing => "answer carried no usage",
            Unknown::Undecodable => "answer in a content coding Sluice does not decode",
            Unknown::NoAnswer => "request sent but no answer came back",
        }
    }
}

impl UsageTap {
    /// A tap for a request: off unless a token limit must be settled.
    pub fn new(counts_tokens: bool, drop_injected: bool) -> Self {
        if counts_tokens {
            UsageTap::Pending { drop_injected }
        } else {
            UsageTap::Off
        }
    }

    /// The answer's head is known: successful answers are read, others used nothing.
    pub fn start(&mut self, status: u16, event_stream: bool) {
        let UsageTap::Pending { drop_injected } = *self else {
            return;
        };
        *self = if !(200..300).contains(&status) {
            UsageTap::Done(Charge::Nothing)
        } else if event_stream {
            UsageTap::Sse {
                scanner: Box::new(SseScanner::new(drop_injected)),
                filtering: drop_injected,
            }
        } else {
            UsageTap::Json(Box::default())
        };
    }

    /// Whether the answer's usage will be read (a token limit is to be settled): Sluice then
    /// asks the backend for `identity`, and decodes an answer coded anyway.
    pub fn awaits_answer(&self) -> bool {
        matches!(self, UsageTap::Pending { .. })
    }

    /// Whether the body must go through [`UsageTap::feed`]'s output instead of as it came.
    pub fn filters(&self) -> bool {
        matches!(
            self,
            UsageTap::Sse {
                filtering: true,
                ..
            }
        )
    }

    /// Whether anything is read from the body.
    pub fn reads(&self) -> bool {
        matches!(self, UsageTap::Json(_) | UsageTap::Sse { .. })
    }

    /// Reads a piece of the body. When [`UsageTap::filters`], what the client must get is
    /// appended to `filtered`; otherwise the piece goes to the client as it is.
    pub fn feed(&mut self, data: &[u8], filtered: &mut Vec<u8>) {
        match self {
            UsageTap::Json(scanner) => scanner.feed(data),
            UsageTap::Sse { scanner, filtering } => {
                // Past its event size bound the scanner passes the rest through unread.
                let _ = if *filtering {
                    scanner.feed(data, filtered)
                } else {
                    scanner.observe(data)
                };
            }
            _ => {}
        }
    }

    /// The body ended: reads the usage. A filtering tap may append the last held bytes.
    pub fn finish(&mut self, filtered: &mut Vec<u8>) {
        let done = match self {
            UsageTap::Json(scanner) => UsageTap::Done(match scanner.finish() {
                Some(usage) => Charge::Usage(usage),
                None => Charge::Estimate(Unknown::Missing),
            }),
            UsageTap::Sse { scanner, .. } => {
                let outcome = scanner.finish(filtered);
                UsageTap::Done(match outcome.usage {
                    Some(usage) => Charge::Usage(usage),
                    None if outcome.truncated => Charge::Estimate(Unknown::CutShort),
                    None => Charge::Estimate(Unknown::Missing),
                })
            }
            _ => return,
        };
        *self = done;
    }

    /// The answer comes in a content coding Sluice does not decode: it passes through
    /// unread, and a successful one keeps its reservation.
    pub fn undecodable(&mut self) {
        if let UsageTap::Json(_) | UsageTap::Sse { .. } = self {
            *self = UsageTap::Done(Charge::Estimate(Unknown::Undecodable));
        }
    }

    /// The request went to a backend, which gave no answer Sluice could relay: its usage is
    /// unknown, so the reservation stands.
    pub fn no_answer(&mut self) {
        if let UsageTap::Pending { .. } = self {
            *self = UsageTap::Done(Charge::Estimate(Unknown::NoAnswer));
        }
    }

    /// What the request is charged. A successful answer still being read (the relay broke
    /// off mid-body) is cut short; a tap that never saw an answer head charges nothing.
    pub fn charge(&self) -> Charge {
        match self {
            UsageTap::Done(charge) => *charge,
            UsageTap::Json(_) | UsageTap::Sse { .. } => Charge::Estimate(Unknown::CutShort),
            UsageTap::Off | UsageTap::Pending { .. } => Charge::Nothing,
        }
    }
}
