//! Authentication and authorization as a policy (DESIGN.md steps 3 and 4): the request's
//! subscription key or JWT names its subscription (401 when it cannot) before the body is
//! read, and once the deployment is known the subscription's product must allow it and the
//! operation (403). The checks themselves are [`super::identity`]'s. Nothing happens when
//! auth is off (no subscription, no issuer configured).

use super::context::RequestCtx;
use super::identity::{authorize, authorize_operation};
use super::phase::{Env, Flow, Policy, Request};

/// Sets `ctx.caller` at the head and `ctx.product` once the deployment is known.
#[derive(Debug, Default, Clone, Copy)]
pub struct Authenticate;

impl Policy for Authenticate {
    fn on_request<'s>(&self, env: &Env<'s>, ctx: &mut RequestCtx<'s>, req: &Request<'_>) -> Flow {
        // A request refused at its head (an unknown path, a refused header name) is answered
        // for that, not asked for credentials.
        if ctx.operation.is_none() {
            return Flow::Continue;
        }
        let Some(identity) = &env.runtime.identity else {
            return Flow::Continue;
        };
        match identity.authenticate(
            &env.snapshot.access,
            req.head,
            req.buf,
            env.clock.unix_secs(),
        ) {
            Ok(caller) => {
                ctx.caller = Some(caller);
                Flow::Continue
            }
            Err(err) => Flow::Respond(err),
        }
    }

    fn on_request_body<'s>(
        &self,
        env: &Env<'s>,
        ctx: &mut RequestCtx<'s>,
        _req: &Request<'_>,
    ) -> Flow {
        let (Some(caller), Some(op)) = (&ctx.caller, ctx.operation) else {
            return Flow::Continue;
        };
        let access = &env.snapshot.access;
        // `GET /v1/models` has no deployment: the product must allow the operation.
        let authorized = match ctx.deployment {
            Some(dep) => authorize(access, caller, &dep.name, op),
            None => authorize_operation(access, caller, op),
        };
        match authorized {
            Ok(product) => {
                ctx.product = Some(product);
                Flow::Continue
            }
            Err(err) => Flow::Respond(err),
        }
    }
}
