//! How a streamed chat or completions answer gets accounted, decided per upstream attempt:
//! Sluice adds `stream_options.include_usage` only for a backend that accepts it (a rewrite
//! must be one the chosen backend accepts), and where the stream will carry no usage it
//! counts the completion as it passes instead.
//!
//! At admission [`StreamPlan::for_request`] records what the request allows; before each
//! attempt [`plan_attempt`] resolves it against the candidate backend — a compare of two
//! bools — and tells the usage tap. The body with the field added is built once per
//! request, on the first attempt that uses it; the client's own `stream_options` are never
//! touched (what is forwarded is what was authorized).

use crate::policy::context::RequestCtx;
use crate::tokens::estimate::{Estimator, RequestFacts};
use crate::tokens::usage::add_include_usage;

/// What a streamed chat or completions request under a token limit allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamPlan {
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
    pub fn for_request(
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

/// Decides the next attempt against a backend that does (or does not) accept
/// `stream_options`, and readies the usage tap: returns whether the attempt sends the body
/// with `include_usage` added (built from `client_body` into `ctx.injected_body` on first use).
///
/// The stream is expected to carry usage when the field goes to a backend that accepts it
/// (added by Sluice, or the client's own); otherwise its completion is counted. A backend
/// declared as accepting it that still sends no usage keeps the reservation (declare it
/// `stream_options = "unsupported"` to have it counted).
pub fn plan_attempt(
    ctx: &mut RequestCtx<'_>,
    client_body: &[u8],
    accepts_stream_options: bool,
) -> bool {
    let Some(plan) = ctx.stream_plan else {
        return false;
    };
    let mut inject = plan.inject && accepts_stream_options;
    if inject && ctx.injected_body.is_none() {
        match add_include_usage(client_body) {
            Some(body) => ctx.injected_body = Some(body),
            None => {
                // Nothing to add after all (an ambiguous body is left alone): counted.
                ctx.stream_plan = Some(StreamPlan {
                    inject: false,
                    ..plan
                });
                inject = false;
            }
        }
    }
    let carries_usage = inject || (plan.client_asked && accepts_stream_options);
    ctx.usage
        .attempt(inject, (!carries_usage).then_some(plan.estimator));
    inject
}

#[cfg(test)]
mod tests {
    use super::super::tap::{Charge, Counted, UsageTap};
    use crate::tokens::estimate::Estimator;
    use crate::tokens::Usage;

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
            Charge::Counted(Counted {
                completion: 2 + 1,
                whole: true,
                reported: None
            })
        );
    }

    #[test]
    fn a_stream_cut_short_is_counted_as_not_whole() {
        let mut tap = counting_tap();
        let mut out = Vec::new();
        tap.feed(STREAM, &mut out);
        assert_eq!(
            tap.charge(),
            Charge::Counted(Counted {
                completion: 3,
                whole: false,
                reported: None
            }),
            "the relay broke off mid-body"
        );
        tap.finish(&mut out);
        assert_eq!(
            tap.charge(),
            Charge::Counted(Counted {
                completion: 3,
                whole: false,
                reported: None
            }),
            "the body ended without [DONE]"
        );
    }

    fn usage(prompt: u64, completion: u64, total: u64) -> Usage {
        Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: total,
        }
    }

    /// What a counting tap charges for `pieces` (then the body's end unless `cut`).
    fn counted_charge(pieces: &[&[u8]], cut: bool) -> Counted {
        let mut tap = counting_tap();
        let mut out = Vec::new();
        for piece in pieces {
            tap.feed(piece, &mut out);
        }
        if !cut {
            tap.finish(&mut out);
        }
        match tap.charge() {
            Charge::Counted(counted) => counted,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn usage_nobody_asked_for_only_raises_the_charge() {
        const TINY: &[u8] = b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1,\"total_tokens\":2}}\n\n";
        const BIG: &[u8] = b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":400,\"completion_tokens\":100,\"total_tokens\":500}}\n\n";
        // Zeros beside content: the content is counted all the same.
        const ZERO_WITH_CONTENT: &[u8] = b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"abcdefghijkl\"}}],\"usage\":{\"prompt_tokens\":0,\"completion_tokens\":0,\"total_tokens\":0}}\n\n";
        const DONE: &[u8] = b"data: [DONE]\n\n";
        let (prompt, reservation) = (10, 1000);

        let tiny = counted_charge(&[STREAM, TINY, DONE], false);
        assert_eq!(
            tiny,
            Counted {
                completion: 3,
                whole: true,
                reported: Some(usage(1, 1, 2))
            }
        );
        assert_eq!(tiny.tokens(prompt, reservation), 10 + 3, "the count, not 2");

        let big = counted_charge(&[STREAM, BIG, DONE], false);
        assert_eq!(
            big.tokens(prompt, reservation),
            500,
            "a larger report stands"
        );

        let zero = counted_charge(&[ZERO_WITH_CONTENT, DONE], false);
        assert_eq!((zero.completion, zero.reported), (3, Some(usage(0, 0, 0))));
        assert_eq!(zero.tokens(prompt, reservation), 10 + 3, "never 0");

        // Cut short after a report: the larger of the two, not the reservation (the
        // backend said it was done); cut short without one: at least the reservation.
        let cut = counted_charge(&[STREAM, TINY], true);
        assert!(!cut.whole);
        assert_eq!(cut.tokens(prompt, reservation), 13);
        let cut = counted_charge(&[STREAM, BIG], true);
        assert_eq!(cut.tokens(prompt, reservation), 500);
        let cut = counted_charge(&[STREAM], true);
        assert_eq!(cut.tokens(prompt, reservation), 1000);
    }

    #[test]
    fn a_stream_asked_for_usage_is_charged_its_report_even_when_small() {
        let mut tap = UsageTap::new(true);
        tap.attempt(true, None);
        tap.start(200, true);
        let mut out = Vec::new();
        tap.feed(STREAM, &mut out);
        tap.feed(
            b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":0,\"completion_tokens\":0,\"total_tokens\":0}}\n\ndata: [DONE]\n\n",
            &mut out,
        );
        tap.finish(&mut out);
        assert_eq!(tap.charge(), Charge::Usage(usage(0, 0, 0)));
    }

    #[test]
    fn counting_reads_every_line_end_at_every_split() {
        for end in ["\n", "\r\n", "\r"] {
            let stream = [
                "\u{feff}data: {\"choices\":[{\"index\":0,\"delta\":{\"reasoning_content\":\"abcdefgh\"}}]}",
                "",
                "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"abc\"}}]}",
                "",
                "data: [DONE]",
                "",
                "",
            ]
            .join(end);
            let bytes = stream.as_bytes();
            for k in 0..=bytes.len() {
                let got = counted_charge(&[&bytes[..k], &bytes[k..]], false);
                let want = Counted {
                    completion: 2 + 1,
                    whole: true,
                    reported: None,
                };
                assert_eq!(got, want, "{end:?} split at {k}");
            }
        }
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
        assert!(matches!(
            tap.charge(),
            Charge::Counted(Counted { whole: true, .. })
        ));
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
        let Charge::Counted(Counted {
            completion, whole, ..
        }) = tap.charge()
        else {
            panic!("{:?}", tap.charge());
        };
        assert!(whole);
        // The big event unread, by its bytes (a token per 4), plus the two read ones.
        assert_eq!(completion, (big.len() as u64).div_ceil(4) + 3);
    }
}
