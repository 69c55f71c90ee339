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
//! the reservation stands (never zero: an answer without usage must not be free). A stream
//! known not to carry its usage (Sluice could not ask the chosen backend for it, and the
//! client did not) is counted as it passes instead ([`UsageTap::attempt`], [`Charge::Counted`]);
//! a usage such a stream volunteers anyway is only trusted upward: the larger of it and the
//! count is charged.
//!
//! The same reading gives the model the backend named ([`UsageTap::model`], for the audit
//! record), kept beside the charge once the answer is over.

use crate::tokens::completion_count::CompletionCount;
use crate::tokens::estimate::Estimator;
use crate::tokens::usage::{event_data, JsonUsageScanner, SseScanner, Usage};

/// Where usage reading stands for the current request.
pub enum UsageTap {
    /// Nothing accounts this request's tokens (no token limit, no audit log, no metrics
    /// listener): nothing is read.
    Off,
    /// Waiting for the answer's head.
    Pending {
        /// Sluice injected `include_usage` into this attempt: drop the usage-only chunk.
        drop_injected: bool,
        /// This attempt's stream will carry no usage: count its completion with this
        /// estimator ([`UsageTap::attempt`]).
        count: Option<Estimator>,
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
    /// Counting an SSE answer that will carry no usage (a usage it carries anyway is kept
    /// for [`Counted::reported`]).
    Counting {
        /// The scanner, observing (nothing is dropped: nothing was injected).
        scanner: Box<SseScanner>,
        /// The completion's tokens so far.
        count: CompletionCount,
    },
    /// Done: what the request is charged, and the model the answer named.
    Done {
        /// What the request is charged.
        charge: Charge,
        /// What [`UsageTap::model`] read before the answer was over.
        model: Option<String>,
    },
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
    /// A stream not expected to carry usage (nobody asked the backend for it), its
    /// completion counted by Sluice as it passed: see [`Counted::tokens`].
    Counted(Counted),
}

/// What Sluice counted of a stream nobody asked the backend to report usage on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counted {
    /// Completion tokens counted (with the deployment's estimator, per event).
    pub completion: u64,
    /// The stream ended with its last event (`[DONE]`).
    pub whole: bool,
    /// The last usage the stream carried although nobody asked for it.
    pub reported: Option<Usage>,
}

impl Counted {
    /// The tokens to charge, given the request's prompt estimate and its reservation: the
    /// prompt estimate plus the completion counted — an estimate, not the backend's report.
    /// A stream cut short is charged at least its reservation (what was counted may be less
    /// than what the backend produced).
    ///
    /// A usage the stream volunteered unasked makes the charge the larger of its
    /// `total_tokens` and the counted sum, cut short or not: nobody asked the backend for
    /// it, so it is not known to be the backend's accounting of this answer (it may be
    /// zeros, a per-chunk figure, or a lie) — it may raise the charge but never lower it
    /// below what Sluice saw pass. Streams that were asked for usage are charged their
    /// report ([`Charge::Usage`]).
    pub fn tokens(&self, prompt: u64, reservation: u64) -> u64 {
        let counted = prompt.saturating_add(self.completion);
        match self.reported {
            Some(usage) => counted.max(usage.total_tokens),
            None if self.whole => counted,
            None => counted.max(reservation),
        }
    }
}

/// Why a successful answer's usage is not known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unknown {
    /// The answer (a stream, or a body) ended before its end, or its content coding broke
    /// (a 502 when no byte of it was relayed).
    CutShort,
    /// The answer ended cleanly without a usage Sluice could read: a JSON body without one
    /// (or that is not one object, or gives `usage` twice: see `JsonUsageScanner`), or a
    /// stream that was expected to carry it (Sluice or the client asked a backend that
    /// accepts `stream_options`) and did not. Streams not expected to carry it are counted
    /// ([`Charge::Counted`]).
    Missing,
    /// The backend content-coded the answer with a coding Sluice does not decode (`zstd`,
    /// `compress`, an unknown one): it passed through unread.
    Undecodable,
    /// The request reached the backend, but no answer Sluice could relay came back (the
    /// connection broke, closed or timed out first): the backend may have done the work.
    NoAnswer,
    /// The client went away before the answer was whole; Sluice closed the upstream
    /// connection, cancelling the request there.
    ClientGone,
}

impl Unknown {
    /// A short reason for the log line.
    pub fn as_str(self) -> &'static str {
        match self {
            Unknown::CutShort => "answer cut short before its usage",
            Unknown::Missing => "answer carried no usage",
            Unknown::Undecodable => "answer in a content coding Sluice does not decode",
            Unknown::NoAnswer => "request sent but no answer came back",
            Unknown::ClientGone => "client went away before the answer ended",
        }
    }
}

impl UsageTap {
    /// A tap for a request: off unless its tokens are accounted (a token limit to settle, the
    /// audit log or the token metrics).
    pub fn new(counts_tokens: bool) -> Self {
        if counts_tokens {
            UsageTap::Pending {
                drop_injected: false,
                count: None,
            }
        } else {
            UsageTap::Off
        }
    }

    /// Before each upstream attempt: whether Sluice injected `include_usage` into the body
    /// this attempt sends (its usage-only chunk is then dropped), and, when the stream will
    /// carry no usage, the estimator to count its completion with. The attempt whose
    /// answer is relayed is the one that counts. Nothing changes on a tap that is off or
    /// past its answer's head.
    pub fn attempt(&mut self, drop_injected: bool, count: Option<Estimator>) {
        if let UsageTap::Pending { .. } = self {
            *self = UsageTap::Pending {
                drop_injected,
                count,
            };
        }
    }

    /// The answer's head is known: successful answers are read, others used nothing.
    pub fn start(&mut self, status: u16, event_stream: bool) {
        let UsageTap::Pending {
            drop_injected,
            count,
        } = *self
        else {
            return;
        };
        *self = if !(200..300).contains(&status) {
            UsageTap::done(Charge::Nothing)
        } else if let (true, Some(estimator)) = (event_stream, count) {
            UsageTap::Counting {
                scanner: Box::new(SseScanner::new(false)),
                count: CompletionCount::new(estimator),
            }
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
        matches!(
            self,
            UsageTap::Json(_) | UsageTap::Sse { .. } | UsageTap::Counting { .. }
        )
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
            UsageTap::Counting { scanner, count } => {
                // Past its event size bound the scanner passes the rest through unread; its
                // bytes are counted at the end.
                let _ = scanner.observe_with(data, |ev| {
                    // A chunk carrying usage is counted too: only its choices' text counts,
                    // and a usage beside content must not make that content free.
                    if !ev.done {
                        count.on_event_data(&event_data(ev.lines));
                    }
                });
            }
            _ => {}
        }
    }

    /// The body ended: reads the usage. A filtering tap may append the last held bytes.
    pub fn finish(&mut self, filtered: &mut Vec<u8>) {
        let charge = match self {
            UsageTap::Json(scanner) => match scanner.finish() {
                Some(usage) => Charge::Usage(usage),
                None => Charge::Estimate(Unknown::Missing),
            },
            UsageTap::Sse { scanner, .. } => {
                let outcome = scanner.finish(filtered);
                match outcome.usage {
                    Some(usage) => Charge::Usage(usage),
                    None if outcome.truncated => Charge::Estimate(Unknown::CutShort),
                    None => Charge::Estimate(Unknown::Missing),
                }
            }
            UsageTap::Counting { scanner, count } => {
                let outcome = scanner.finish_with(|ev| {
                    if !ev.done {
                        count.on_event_data(&event_data(ev.lines));
                    }
                });
                counted(scanner, count, !outcome.truncated)
            }
            _ => return,
        };
        *self = UsageTap::Done {
            charge,
            model: self.model(),
        };
    }

    /// The model the answer named, as the backend reported it: a JSON answer's top-level
    /// `model` string once the whole body was read (a body cut short, or not one JSON
    /// object, names none: see [`JsonUsageScanner::model`]); a stream's first non-empty
    /// chunk `model` or Responses `response.model` (see [`SseScanner::model`]), even when
    /// the stream was cut after it — each event is a whole JSON object of its own. `None`
    /// when nothing is read (no token accounting, the answer was not a success, or its
    /// content coding is not decoded) or the answer named no model.
    pub fn model(&self) -> Option<String> {
        match self {
            UsageTap::Json(scanner) => scanner.model(),
            UsageTap::Sse { scanner, .. } | UsageTap::Counting { scanner, .. } => {
                scanner.model().map(str::to_owned)
            }
            UsageTap::Done { model, .. } => model.clone(),
            UsageTap::Off | UsageTap::Pending { .. } => None,
        }
    }

    /// Over, charged `charge`, no model read.
    fn done(charge: Charge) -> Self {
        UsageTap::Done {
            charge,
            model: None,
        }
    }

    /// The answer comes in a content coding Sluice does not decode: it passes through
    /// unread, and a successful one keeps its reservation.
    pub fn undecodable(&mut self) {
        if let UsageTap::Json(_) | UsageTap::Sse { .. } | UsageTap::Counting { .. } = self {
            *self = UsageTap::done(Charge::Estimate(Unknown::Undecodable));
        }
    }

    /// The request went to a backend, which gave no answer Sluice could relay: its usage is
    /// unknown, so the reservation stands.
    pub fn no_answer(&mut self) {
        if let UsageTap::Pending { .. } = self {
            *self = UsageTap::done(Charge::Estimate(Unknown::NoAnswer));
        }
    }

    /// The client went away before the answer was whole, and the upstream request was
    /// cancelled: a usage already read stands (the backend did that work); otherwise the
    /// reservation stands ([`Unknown::ClientGone`]). An answer that was not a success still
    /// costs nothing.
    pub fn client_gone(&mut self) {
        if self.reads() {
            // What the scanner still held back is for nobody now.
            self.finish(&mut Vec::new());
        }
        match self {
            UsageTap::Pending { .. } => {
                *self = UsageTap::done(Charge::Estimate(Unknown::ClientGone))
            }
            UsageTap::Done {
                charge: charge @ Charge::Estimate(_),
                ..
            } => *charge = Charge::Estimate(Unknown::ClientGone),
            _ => {}
        }
    }

    /// What the request is charged. A successful answer still being read (the relay broke
    /// off mid-body) is cut short; a tap that never saw an answer head charges nothing.
    pub fn charge(&self) -> Charge {
        match self {
            UsageTap::Done { charge, .. } => *charge,
            UsageTap::Json(_) | UsageTap::Sse { .. } => Charge::Estimate(Unknown::CutShort),
            UsageTap::Counting { scanner, count } => counted(scanner, count, false),
            UsageTap::Off | UsageTap::Pending { .. } => Charge::Nothing,
        }
    }
}

/// The charge of a counted stream: what was counted, plus the unread bytes of events too
/// large to hold, by the byte heuristic, and the usage it carried unasked.
fn counted(scanner: &SseScanner, count: &CompletionCount, whole: bool) -> Charge {
    let mut count = *count;
    count.on_unread(scanner.unread_bytes());
    Charge::Counted(Counted {
        completion: count.tokens(),
        whole,
        reported: scanner.usage(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHAT: &[u8] = br#"{"id":"c","model":"gpt-4o-2024-08-06","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}"#;
    const EMBEDDINGS: &[u8] = br#"{"object":"list","data":[{"embedding":[0.1,-0.2]}],"model":"text-embedding-3-small","usage":{"prompt_tokens":4,"total_tokens":4}}"#;
    const STREAM: &[u8] = b"data: {\"choices\":[],\"model\":\"\",\"prompt_filter_results\":[]}\n\n\
data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"}}],\"model\":\"gpt-4o-mini\"}\n\n";

    /// A tap past a successful head (`count`: a stream nobody asked usage of).
    fn tap(event_stream: bool, count: Option<Estimator>) -> UsageTap {
        let mut tap = UsageTap::new(true);
        tap.attempt(false, count);
        tap.start(200, event_stream);
        tap
    }

    #[test]
    fn the_model_is_read_in_each_state_and_kept_when_done() {
        let mut out = Vec::new();
        for (body, want) in [
            (CHAT, "gpt-4o-2024-08-06"),
            (EMBEDDINGS, "text-embedding-3-small"),
        ] {
            let mut json = tap(false, None);
            let (a, b) = body.split_at(body.len() / 2);
            json.feed(a, &mut out);
            assert_eq!(json.model(), None, "a body read in part names no model");
            json.feed(b, &mut out);
            json.finish(&mut out);
            assert!(matches!(json, UsageTap::Done { .. }));
            assert_eq!(json.model().as_deref(), Some(want));
            assert!(matches!(json.charge(), Charge::Usage(_)));
        }
        for count in [None, Some(Estimator::Heuristic)] {
            let mut sse = tap(true, count);
            sse.feed(STREAM, &mut out);
            assert_eq!(
                sse.model().as_deref(),
                Some("gpt-4o-mini"),
                "while streaming"
            );
            sse.feed(b"data: [DONE]\n\n", &mut out);
            sse.finish(&mut out);
            assert_eq!(sse.model().as_deref(), Some("gpt-4o-mini"), "once done");
        }
    }

    #[test]
    fn a_stream_cut_short_keeps_its_model_and_a_refusal_has_none() {
        let mut out = Vec::new();
        let mut sse = tap(true, None);
        sse.feed(STREAM, &mut out);
        sse.client_gone();
        assert_eq!(sse.charge(), Charge::Estimate(Unknown::ClientGone));
        assert_eq!(sse.model().as_deref(), Some("gpt-4o-mini"));

        let mut refused = UsageTap::new(true);
        refused.start(429, false);
        refused.feed(CHAT, &mut out);
        refused.finish(&mut out);
        assert_eq!(refused.model(), None);
        let mut off = UsageTap::new(false);
        off.start(200, false);
        off.feed(CHAT, &mut out);
        off.finish(&mut out);
        assert_eq!(off.model(), None, "nothing is read when accounting is off");
    }
}
