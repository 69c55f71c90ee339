//! The request pipeline: one context per request ([`context`]), the phases and the policy
//! interface ([`phase`]), and the policies, one module each — [`admit`] (the client-IP gate,
//! admission and settlement by the limits), [`authenticate`] (keys, JWTs, products),
//! [`trace`] (the trace header) and [`usage`] (reading the answer's token usage) — assembled
//! in [`pipeline`]. The decisions they take are pure functions of the snapshot, the context
//! and the time: [`identity`] (who is calling) and [`admission`] (how much they may).
//!
//! The runtime side of a snapshot's access config ([`AccessRuntime`]) is built once per
//! config and read by every worker.

pub mod admission;
pub mod admit;
pub mod authenticate;
pub mod context;
pub mod identity;
pub mod phase;
pub mod pipeline;
pub mod trace;
pub mod usage;

use crate::limit::LimitId;
use crate::snapshot::Snapshot;

/// The runtime side of a snapshot's access config.
pub struct AccessRuntime {
    /// Keys and JWT validation; `None` when auth is off (no subscription, no issuer).
    pub identity: Option<identity::Identity>,
    /// Stable ids of the snapshot's limits (see [`admission::limit_ids`]).
    pub limit_ids: Vec<LimitId>,
}

impl AccessRuntime {
    /// Builds the runtime for `snapshot`; an error refuses the config (at start or reload).
    pub fn build(snapshot: &Snapshot) -> Result<Self, String> {
        let access = &snapshot.access;
        let identity = if access.auth_enabled() {
            Some(identity::Identity::build(access)?)
        } else {
            None
        };
        warm_tokenizers(snapshot);
        Ok(Self {
            identity,
            limit_ids: admission::limit_ids(access),
        })
    }
}

/// Builds the BPE tables the token limits will use now, not on the first request (o200k
/// takes ~0.4 s and 46 MiB once per process). Nothing when no token limit exists.
fn warm_tokenizers(snapshot: &Snapshot) {
    use crate::snapshot::access::{Estimator as Choice, LimitUnit, TokenizerFamily};
    use crate::tokens::estimate::{family_for_model, Estimator, Family};
    if !snapshot
        .access
        .limits
        .iter()
        .any(|l| l.unit == LimitUnit::Tokens)
    {
        return;
    }
    for deployment in snapshot.deployments.values() {
        if deployment.tokens.estimator != Choice::Bpe {
            continue;
        }
        let family = match deployment.tokens.family {
            Some(TokenizerFamily::O200k) => Family::O200k,
            Some(TokenizerFamily::Cl100k) => Family::Cl100k,
            None => family_for_model(&deployment.name, Family::O200k),
        };
        Estimator::Bpe(family).warm();
    }
}
