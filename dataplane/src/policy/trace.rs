//! The trace as a policy (DESIGN.md step 12): a client that sends `Ocp-Apim-Trace: true` or
//! `x-sluice-trace: true` with a key whose product allows tracing (`trace = true`, and
//! `[access] trace_header` on) gets an `x-sluice-trace` header on the answer, a compact
//! account of what each step decided. The trace is typed while the request runs and
//! rendered once, from the context, when the answer's head is written:
//!
//! `route={operation} deployment={name}; subscription={name}; limit {label} allow
//! remaining={n}; …; backend={name}` — one `limit` entry per limit that applied (its verdict
//! `allow` or `shadow-deny`), each backend tried and failed over before the last with why
//! (`tried=aoai-2 (tls: certificate expired)`, `tried=aoai-3 (429)`, `tried=b (unreachable)`),
//! and the backend last tried (the one that served, when one did), with why its TLS handshake
//! failed when it did: `backend=aoai-1 (tls: certificate expired)`.

use std::borrow::Cow;

use super::admission::LimitDecision;
use super::context::{AttemptOutcome, RequestCtx};
use super::phase::{Env, Flow, Policy, Request};
use crate::snapshot::Snapshot;

/// What the trace of one request says, beyond what the context already holds.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Trace {
    /// Each limit's decision, in the order they were taken (the client-IP gate's last).
    pub limits: Vec<LimitDecision>,
}

/// Turns the trace on for requests that ask for it and may have it.
#[derive(Debug, Default, Clone, Copy)]
pub struct TraceHeader;

impl Policy for TraceHeader {
    fn on_request_body<'s>(
        &self,
        env: &Env<'s>,
        ctx: &mut RequestCtx<'s>,
        req: &Request<'_>,
    ) -> Flow {
        let allowed = env.snapshot.access.trace_header
            && ctx.deployment.is_some()
            && ctx.product.is_some_and(|p| p.trace);
        if allowed && wants_trace(req) {
            ctx.trace = Some(Trace::default());
        }
        Flow::Continue
    }
}

/// Whether the client asked for the trace header (`Ocp-Apim-Trace: true` or
/// `x-sluice-trace: true`).
fn wants_trace(req: &Request<'_>) -> bool {
    ["ocp-apim-trace", "x-sluice-trace"].iter().any(|h| {
        req.header(h)
            .is_some_and(|v| v.eq_ignore_ascii_case(b"true"))
    })
}

/// The header lines Sluice adds to every answer of this request: the rate-limit state, then
/// `x-sluice-trace` when the trace is on.
pub fn answer_headers<'c>(ctx: &'c RequestCtx<'_>) -> Cow<'c, [u8]> {
    let Some(trace) = &ctx.trace else {
        return Cow::Borrowed(&ctx.response_headers);
    };
    let mut all = ctx.response_headers.clone();
    all.extend_from_slice(b"x-sluice-trace: ");
    render(&mut all, trace, ctx, ctx.snapshot);
    all.extend_from_slice(b"\r\n");
    Cow::Owned(all)
}

/// Renders the trace of `ctx` into `out` (one header value).
fn render(out: &mut Vec<u8>, trace: &Trace, ctx: &RequestCtx<'_>, snapshot: &Snapshot) {
    let route = ctx.operation.map_or("-", |op| op.path_suffix());
    let deployment = ctx.deployment.map_or("-", |d| d.name.as_str());
    let subscription = ctx
        .caller
        .as_ref()
        .and_then(|c| snapshot.access.subscriptions.get(c.subscription))
        .map_or("-", |s| s.name.as_str());
    out.extend_from_slice(b"route=");
    out.extend_from_slice(route.as_bytes());
    out.extend_from_slice(b" deployment=");
    push_name(out, deployment);
    out.extend_from_slice(b"; subscription=");
    push_name(out, subscription);
    if let Some(subject) = &ctx.client_cert {
        out.extend_from_slice(b"; client_cert=");
        push_name(out, subject);
    }
    let mut num = itoa::Buffer::new();
    for decision in &trace.limits {
        let Some(limit) = snapshot.access.limits.get(decision.limit) else {
            continue;
        };
        out.extend_from_slice(b"; limit ");
        push_name(out, &limit.label);
        out.extend_from_slice(if decision.shadow_deny {
            b" shadow-deny remaining="
        } else {
            b" allow remaining="
        });
        out.extend_from_slice(num.format(decision.remaining).as_bytes());
    }
    let Some((last, earlier)) = ctx.attempts.split_last() else {
        return;
    };
    // Every attempt failed over before the last: which backend, and why.
    for attempt in earlier {
        let Some(backend) = snapshot.backends.get(attempt.backend) else {
            continue;
        };
        out.extend_from_slice(b"; tried=");
        push_name(out, &backend.name);
        out.extend_from_slice(b" (");
        match (attempt.tls, attempt.status) {
            (Some(failure), _) => {
                out.extend_from_slice(b"tls: ");
                out.extend_from_slice(failure.reason().as_bytes());
            }
            (None, Some(status)) => out.extend_from_slice(num.format(status).as_bytes()),
            (None, None) => out.extend_from_slice(match attempt.outcome {
                AttemptOutcome::TimedOut => b"timed out",
                _ => b"unreachable",
            }),
        }
        out.push(b')');
    }
    if let Some(backend) = snapshot.backends.get(last.backend) {
        out.extend_from_slice(b"; backend=");
        push_name(out, &backend.name);
        if let Some(failure) = last.tls {
            out.extend_from_slice(b" (tls: ");
            out.extend_from_slice(failure.reason().as_bytes());
            out.push(b')');
        }
    }
}

/// Writes a configured name into the trace: visible ASCII as it is, every other byte (space,
/// controls such as CR and LF, non-ASCII) and the trace's own `;` and `%` as `%XX`. Names
/// come from the config, which may hold anything; a header value may not (RFC 9110 §5.5),
/// and one name must not read as two parts of the trace.
fn push_name(out: &mut Vec<u8>, name: &str) {
    for &b in name.as_bytes() {
        if b.is_ascii_graphic() && b != b';' && b != b'%' {
            out.push(b);
        } else {
            const HEX: &[u8; 16] = b"0123456789ABCDEF";
            out.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::push_name;

    #[test]
    fn names_cannot_break_the_header_or_the_trace() {
        let pushed = |name: &str| {
            let mut out = Vec::new();
            push_name(&mut out, name);
            String::from_utf8(out).unwrap()
        };
        assert_eq!(pushed("product:p/daily-cap#0"), "product:p/daily-cap#0");
        assert_eq!(pushed("p\r\nx-evil: 1"), "p%0D%0Ax-evil:%201");
        assert_eq!(
            pushed("a; limit x allow remaining=9"),
            "a%3B%20limit%20x%20allow%20remaining=9"
        );
        assert_eq!(pushed("équipe 100%"), "%C3%A9quipe%20100%25");
    }
}
