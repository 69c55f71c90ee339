//! The limits as policies (DESIGN.md steps 7 and 11): [`ClientIpGate`] counts every request
//! against its address as soon as its head is parsed, [`Admit`] admits the routed,
//! authenticated request by every limit that applies (reserving its token estimate) and
//! settles the reservation with the real usage once the request is over. The decisions
//! themselves are [`super::admission`]'s.

use super::admission::{admit, gate_client_ip, settle, Admission, Ask, Outcome};
use super::context::{RequestCtx, TokenEstimate};
use super::phase::{Env, Flow, Policy, Request};
use super::usage::{Charge, Counted, StreamPlan};
use crate::error::GatewayError;
use crate::http::write_header as header;
use crate::snapshot::access::LimitUnit;
use crate::tokens::estimate::{reservation, FactsError, RequestFacts};

/// Takes the requests-unit client-IP limits at the head: before routing, authentication and
/// the body, so every request counts — a 404, a wrong key — as that limit is what slows down
/// credential guessing. What it takes is never given back.
#[derive(Debug, Default, Clone, Copy)]
pub struct ClientIpGate;

impl Policy for ClientIpGate {
    fn on_request<'s>(&self, env: &Env<'s>, ctx: &mut RequestCtx<'s>, _req: &Request<'_>) -> Flow {
        match gate_client_ip(
            env.limits,
            env.clock,
            &env.snapshot.access,
            &env.runtime.limit_ids,
            ctx.client_ip,
        ) {
            Ok(gate) => {
                ctx.ip_gate = Some(gate);
                Flow::Continue
            }
            Err(err) => Flow::Respond(err),
        }
    }
}

/// Admits a request for a deployment by its product's, its deployment's and the server's
/// limits, reserving the token estimate when a token limit applies; settles on completion.
#[derive(Debug, Default, Clone, Copy)]
pub struct Admit;

impl Policy for Admit {
    fn on_request_body<'s>(
        &self,
        env: &Env<'s>,
        ctx: &mut RequestCtx<'s>,
        req: &Request<'_>,
    ) -> Flow {
        let (Some(dep), Some(op)) = (ctx.deployment, ctx.operation) else {
            return Flow::Continue;
        };
        let access = &env.snapshot.access;
        // A request the response cache answers costs no tokens: nothing to estimate or
        // reserve, and no token limit applies (it still counts against the request limits).
        let cached = ctx.cache.found();
        let product_limits = ctx.product.map_or(&[][..], |p| p.limits.as_slice());
        let counts_tokens = !cached
            && product_limits
                .iter()
                .chain(&dep.limits)
                .chain(&access.client_ip_limits)
                .any(|&i| {
                    access
                        .limits
                        .get(i)
                        .is_some_and(|l| l.unit == LimitUnit::Tokens)
                });
        // The audit record and the token metrics want the tokens too: estimated, and a
        // stream's usage asked for. Without a token limit a body the estimate cannot read is
        // forwarded as before (its tokens are the answer's usage, or unknown) — unless the
        // audit log records it and the body is one a backend may read otherwise than Sluice
        // does (`MESSAGES`, a duplicate key): the record must hold what the backend runs.
        // Capacity-aware selection weighs the estimate against what each member has left.
        let audited = env.snapshot.audit.is_some();
        let wants_facts = counts_tokens || env.snapshot.accounts_tokens() || dep.pool.len() > 1;
        let facts = match (wants_facts && !cached).then(|| RequestFacts::parse(op, req.body)) {
            Some(Ok(facts)) => Some(facts),
            Some(Err(e)) if counts_tokens => return Flow::Respond(unreadable(e)),
            Some(Err(e @ FactsError::Refused(_))) if audited => {
                return Flow::Respond(unreadable(e))
            }
            _ => None,
        };
        if let Some(facts) = facts {
            // The deployment's model, not the body's: the request that runs is pinned to the
            // deployment's model, and a family a client names would load its tables (tens
            // of MiB, up to ~80 ms) on the request path. Start-up warms exactly these.
            // Without a token limit the estimate only stands in for a usage the answer does
            // not carry (records, metrics): the free heuristic, never a BPE table load.
            let estimator = if counts_tokens {
                dep.tokens.estimator.for_model(&dep.name)
            } else {
                crate::tokens::estimate::Estimator::Heuristic
            };
            let prompt = estimator.estimate_prompt(&facts);
            ctx.stream_plan = StreamPlan::for_request(&facts, dep.tokens.stream_usage, estimator);
            ctx.tokens = Some(TokenEstimate {
                prompt,
                reservation: reservation(&facts, prompt, dep.tokens.default_max_tokens),
            });
        }
        let ask = Ask {
            access,
            ids: &env.runtime.limit_ids,
            caller: ctx.caller.as_ref().zip(ctx.product),
            deployment: &dep.name,
            deployment_limits: &dep.limits,
            client_ip: ctx.client_ip,
            client_cert: ctx.client_cert.as_ref(),
            tokens: (!cached).then(|| ctx.tokens.map_or(0, |t| t.reservation)),
            trace: ctx.trace.is_some(),
        };
        let gate = ctx.ip_gate.take().unwrap_or_default();
        let mut admission = match admit(env.limits, env.clock, &ask, gate) {
            Ok(a) => a,
            Err(err) => return Flow::Respond(err),
        };
        rate_limit_headers(&mut ctx.response_headers, &admission);
        if let Some(trace) = &mut ctx.trace {
            trace.limits = std::mem::take(&mut admission.trace);
        }
        ctx.admission = Some(admission);
        Flow::Continue
    }

    fn on_complete<'s>(&self, env: &Env<'s>, ctx: &mut RequestCtx<'s>) {
        let Some(mut admission) = ctx.admission.take() else {
            return;
        };
        let used = charged(ctx);
        settle(env.limits, env.clock, &mut admission, Outcome::Used(used));
        ctx.admission = Some(admission);
    }
}

/// The 400 for a body the token estimate cannot read. A body Sluice cannot read is refused,
/// not charged a guess and forwarded: a more lenient backend (NaN, lone surrogates, numbers
/// out of range) would read caps and streams Sluice never saw. A refused field: Sluice and the
/// backend must read the same request, so it is refused before either decides anything on it.
fn unreadable(e: FactsError) -> GatewayError {
    match e {
        FactsError::NotJson(e) => GatewayError::invalid_request(
            format!("We could not parse the JSON body of your request ({e}). The body must be a JSON object."),
            None,
        ),
        FactsError::Refused(refusal) => {
            GatewayError::invalid_request(refusal.to_string(), Some(refusal.param))
        }
    }
}

/// The tokens a request that held a reservation is charged (`None`: unknown, so the
/// reservation stands — an answer whose usage is unknown is never free), logged when it is
/// not the answer's own usage.
fn charged(ctx: &RequestCtx<'_>) -> Option<u64> {
    let deployment = ctx.deployment.map_or("-", |d| d.name.as_str());
    let tokens = ctx.tokens.unwrap_or_default();
    match ctx.usage.charge() {
        Charge::Usage(usage) => Some(usage.total_tokens),
        Charge::Nothing => Some(0),
        Charge::Estimate(why) => {
            tracing::info!(
                request_id = %ctx.id,
                deployment,
                "{}: charged the estimate",
                why.as_str()
            );
            None
        }
        Charge::Counted(counted) => {
            let used = counted.tokens(u64::from(tokens.prompt), tokens.reservation);
            let Counted {
                completion,
                whole,
                reported,
            } = counted;
            tracing::info!(
                request_id = %ctx.id,
                deployment,
                prompt_estimate = tokens.prompt,
                completion_counted = completion,
                reported_total = reported.map(|u| u.total_tokens),
                charged = used,
                "{}",
                match (reported, whole) {
                    (Some(_), _) => "stream not asked for usage carried one: charged the larger of it and the prompt estimate plus the completion counted by Sluice",
                    (None, true) => "stream carried no usage: charged the prompt estimate plus the completion counted by Sluice (usage not reported by the backend)",
                    (None, false) => "stream without usage cut short: charged the larger of its reservation and the prompt estimate plus the completion counted by Sluice",
                }
            );
            Some(used)
        }
    }
}

/// The `x-ratelimit-*` lines for the tightest requests and tokens limits that applied.
fn rate_limit_headers(out: &mut Vec<u8>, admission: &Admission) {
    let mut num = itoa::Buffer::new();
    // A worker's lease can hold tokens while the shared bucket refills to full: the sum may
    // pass the limit, but no client is told it has more than the limit.
    let units = [
        (
            &b"x-ratelimit-limit-requests"[..],
            &b"x-ratelimit-remaining-requests"[..],
            admission.requests,
        ),
        (
            b"x-ratelimit-limit-tokens",
            b"x-ratelimit-remaining-tokens",
            admission.tokens,
        ),
    ];
    for (limit_name, remaining_name, tightest) in units {
        if let Some((limit, remaining)) = tightest {
            header(out, limit_name, num.format(limit).as_bytes());
            header(
                out,
                remaining_name,
                num.format(remaining.min(limit)).as_bytes(),
            );
        }
    }
}
