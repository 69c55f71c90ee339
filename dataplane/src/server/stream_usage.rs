//! How a streamed chat or completions answer gets accounted, decided per upstream attempt:
//! Sluice adds `stream_options.include_usage` only for a backend that accepts it (a rewrite
//! must be one the chosen backend accepts), and where the stream will carry no usage it
//! counts the completion as it passes instead.
//!
//! At admission [`StreamPlan::for_request`] records what the request allows; before each
//! attempt [`Client::plan_attempt`] resolves it against the candidate backend — a compare of
//! two bools — and tells the usage tap. The body with the field added is built once per
//! request, on the first attempt that uses it; the client's own `stream_options` are never
//! touched (what is forwarded is what was authorized).

use super::conn::Client;
use crate::tokens::estimate::{Estimator, RequestFacts};
use crate::tokens::usage::inject_include_usage;

/// What a streamed chat or completions request under a token limit allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct StreamPlan {
    /// Sluice may ask the backend for the usage chunk: the deployment's
    /// `tokens.stream_usage` is on and the client did not ask itself.
    inject: bool,
    /// The client asked for the usage chunk (`stream_options.include_usage: true`).
    client_asked: bool,
    /// The deployment's estimator, to count a stream that carries no usage.
    estimator: Estimator,
}

impl StreamPlan {
    /// The plan of a request whose token usage must be settled; `None` for everything but a
    /// streamed chat or completions request (Responses streams always end with their usage).
    pub(super) fn for_request(
        facts: &RequestFacts<'_>,
        stream_usage: bool,
        estimator: Estimator,
    ) -> Option<StreamPlan> {
        let chat_or_completions = matches!(
            facts.operation,
            Some(crate::route::Operation::ChatCompletions | crate::route::Operation::Completions)
        );
        (facts.stream && chat_or_completions).then_some(StreamPlan {
            inject: stream_usage && facts.needs_usage_injection(),
            client_asked: facts.include_usage,
            estimator,
        })
    }
}

impl Client {
    /// Decides the next attempt against a backend that does (or does not) accept
    /// `stream_options`, and readies the usage tap: returns whether the attempt sends the
    /// body with `include_usage` added ([`Client::attempt_body`]).
    ///
    /// The stream is expected to carry usage when the field goes to a backend that accepts
    /// it (added by Sluice, or the client's own); otherwise its completion is counted. A
    /// backend declared as accepting it that still sends no usage keeps the reservation
    /// (declare it `stream_options = "unsupported"` to have it counted).
    pub(super) fn plan_attempt(&mut self, accepts_stream_options: bool) -> bool {
        let Some(plan) = self.stream_plan else {
            return false;
        };
        let mut inject = plan.inject && accepts_stream_options;
        if inject && self.injected.is_none() {
            match inject_include_usage(&self.body) {
                Some(body) => self.injected = Some(body),
                None => {
                    // Nothing to add after all (an ambiguous body is left alone): counted.
                    self.stream_plan = Some(StreamPlan {
                        inject: false,
                        ..plan
                    });
                    inject = false;
                }
            }
        }
        let carries_usage = inject || (plan.client_asked && accepts_stream_options);
        self.usage
            .attempt(inject, (!carries_usage).then_some(plan.estimator));
        inject
    }

    /// The body an attempt sends: with `include_usage` added when [`Client::plan_attempt`]
    /// said so, else the client's.
    pub(super) fn attempt_body(&self, injected: bool) -> &[u8] {
        match (&self.injected, injected) {
            (Some(body), true) => body,
            _ => &self.body,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::usage_tap::{Charge, UsageTap};
    use crate::tokens::estimate::Estimator;

    const STREAM: &[u8] =
        b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"abcdefgh\"}}]}\n\n\
data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"abc\"}}]}\n\n";

    fn counting_tap() -> UsageTap {
        let mut tap = UsageTap::new(true);
        tap.attempt(false, Some(Estimator::Heuristic));
        tap.start(200, true);
        tap
    }

    #[test]
    fn a_whole_stream_without_usage_is_counted_across_pieces() {
        let mut tap = counting_tap();
        let mut out = Vec::new();
        // Split mid-event: the count does not depend on how the bytes arrive.
        let (a, b) = STREAM.split_at(30);
        tap.feed(a, &mut out);
        tap.feed(b, &mut out);
        tap.feed(b"data: [DONE]\n\n", &mut out);
        assert!(out.is_empty(), "an observing tap passes bytes as they came");
        tap.finish(&mut out);
        assert_eq!(
            tap.charge(),
            Charge::Counted {
                completion: 2 + 1,
                whole: true
            }
        );
    }

    #[test]
    fn a_stream_cut_short_is_counted_as_not_whole() {
        let mut tap = counting_tap();
        let mut out = Vec::new();
        tap.feed(STREAM, &mut out);
        assert_eq!(
            tap.charge(),
            Charge::Counted {
                completion: 3,
                whole: false
            },
            "the relay broke off mid-body"
        );
        tap.finish(&mut out);
        assert_eq!(
            tap.charge(),
            Charge::Counted {
                completion: 3,
                whole: false
            },
            "the body ended without [DONE]"
        );
    }

    #[test]
    fn reported_usage_wins_over_the_count() {
        let mut tap = counting_tap();
        let mut out = Vec::new();
        tap.feed(STREAM, &mut out);
        tap.feed(
            b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2,\"total_tokens\":3}}\n\ndata: [DONE]\n\n",
            &mut out,
        );
        tap.finish(&mut out);
        assert!(matches!(tap.charge(), Charge::Usage(u) if u.total_tokens == 3));
    }

    #[test]
    fn a_stream_expected_to_carry_usage_is_not_counted() {
        let mut tap = UsageTap::new(true);
        tap.attempt(true, None);
        tap.start(200, true);
        assert!(tap.filters(), "the injected usage chunk is dropped");
        let mut out = Vec::new();
        tap.feed(STREAM, &mut out);
        tap.feed(b"data: [DONE]\n\n", &mut out);
        tap.finish(&mut out);
        assert!(matches!(tap.charge(), Charge::Estimate(_)));
    }

    #[test]
    fn the_last_attempt_before_the_answer_decides() {
        let mut tap = UsageTap::new(true);
        tap.attempt(true, None);
        tap.attempt(false, Some(Estimator::Heuristic));
        tap.start(200, true);
        assert!(!tap.filters());
        tap.attempt(true, None);
        assert!(!tap.filters(), "past the head, attempts change nothing");
        let mut out = Vec::new();
        tap.feed(STREAM, &mut out);
        tap.feed(b"data: [DONE]\n\n", &mut out);
        tap.finish(&mut out);
        assert!(matches!(tap.charge(), Charge::Counted { whole: true, .. }));
        let mut off = UsageTap::new(false);
        off.attempt(true, Some(Estimator::Heuristic));
        off.start(200, true);
        assert_eq!(off.charge(), Charge::Nothing);
    }

    #[test]
    fn an_oversized_event_is_counted_by_its_bytes() {
        let mut tap = counting_tap();
        let mut out = Vec::new();
        let big = format!(
            "data: {{\"choices\":[{{\"delta\":{{\"content\":\"{}\"}}}}]}}\n\n",
            "a".repeat(2 << 20)
        );
        // Arriving in pieces, it outgrows what the scanner holds and passes unread.
        for piece in big.as_bytes().chunks(64 << 10) {
            tap.feed(piece, &mut out);
        }
        tap.feed(STREAM, &mut out);
        tap.feed(b"data: [DONE]\n\n", &mut out);
        tap.finish(&mut out);
        let Charge::Counted { completion, whole } = tap.charge() else {
            panic!("{:?}", tap.charge());
        };
        assert!(whole);
        // The big event unread, by its bytes (a token per 4), plus the two read ones.
        assert_eq!(completion, (big.len() as u64).div_ceil(4) + 3);
    }
}
