//! Reading an answer's token usage on its way to the client, for token limits: the `usage`
//! of a JSON answer (captured, bounded), or of an SSE stream's usage chunk (scanned event by
//! event, never buffered whole). When Sluice itself asked the backend for usage
//! (`stream_options.include_usage`), the usage-only chunk is dropped here before the client
//! sees it.

use crate::tokens::usage::{usage_from_json, SseScanner, Usage};

/// Largest JSON answer whose usage is read; a bigger one keeps its estimate.
const MAX_JSON_CAPTURE: usize = 8 * 1024 * 1024;

/// Where usage reading stands for the current request.
pub enum UsageTap {
    /// No token limit applies: nothing is read.
    Off,
    /// Waiting for the answer's head.
    Pending {
        /// Sluice injected `include_usage`: drop the usage-only chunk.
        drop_injected: bool,
    },
    /// Capturing a JSON answer.
    Json {
        /// The body so far (dropped past [`MAX_JSON_CAPTURE`]).
        body: Vec<u8>,
        /// Whether the body outgrew the capture.
        overflow: bool,
    },
    /// Scanning an SSE answer.
    Sse {
        /// The scanner (filtering when `drop_injected`).
        scanner: Box<SseScanner>,
        /// Whether events are filtered (the output differs from the input).
        filtering: bool,
    },
    /// Done: the usage found (if any) and whether the stream ended early.
    Done {
        /// The usage read from the answer.
        usage: Option<Usage>,
        /// An SSE stream ended without its last event.
        truncated: bool,
    },
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
            UsageTap::Done {
                usage: None,
                truncated: false,
            }
        } else if event_stream {
            UsageTap::Sse {
                scanner: Box::new(SseScanner::new(drop_injected)),
                filtering: drop_injected,
            }
        } else {
            UsageTap::Json {
                body: Vec::new(),
                overflow: false,
            }
        };
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
        matches!(self, UsageTap::Json { .. } | UsageTap::Sse { .. })
    }

    /// Reads a piece of the body. When [`UsageTap::filters`], what the client must get is
    /// appended to `filtered`; otherwise the piece goes to the client as it is.
    pub fn feed(&mut self, data: &[u8], filtered: &mut Vec<u8>) {
        match self {
            UsageTap::Json { body, overflow } if !*overflow => {
                if body.len() + data.len() > MAX_JSON_CAPTURE {
                    *overflow = true;
                    body.clear();
                } else {
                    body.extend_from_slice(data);
                }
            }
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
            UsageTap::Json { body, overflow } => UsageTap::Done {
                usage: if *overflow {
                    None
                } else {
                    usage_from_json(body)
                },
                truncated: *overflow,
            },
            UsageTap::Sse { scanner, .. } => {
                let outcome = scanner.finish(filtered);
                UsageTap::Done {
                    usage: outcome.usage,
                    truncated: outcome.truncated,
                }
            }
            _ => return,
        };
        *self = done;
    }

    /// The usage read, once finished.
    pub fn take_result(&mut self) -> Option<Usage> {
        match self {
            UsageTap::Done { usage, .. } => usage.take(),
            _ => None,
        }
    }

    /// Whether the answer ended before its usage could be read (or was never finished):
    /// the reservation's estimate stands.
    pub fn truncated(&self) -> bool {
        match self {
            UsageTap::Done { truncated, .. } => *truncated,
            UsageTap::Json { .. } | UsageTap::Sse { .. } => true,
            UsageTap::Off | UsageTap::Pending { .. } => false,
        }
    }
}
