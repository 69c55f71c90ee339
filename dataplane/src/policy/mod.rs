//! The request pipeline: one context per request ([`context`]), the phases and the policy
//! interface ([`phase`]), and the policies, one module each — [`admit`] (the client-IP gate,
//! admission and settlement by the limits), [`authenticate`] (keys, JWTs, products),
//! [`trace`] (the trace header), [`usage`] (reading the answer's token usage) and [`cache`]
//! (the exact response cache) — assembled
//! in [`pipeline`]. [`audit`] records every request in the audit log, [`metrics`] counts it. The decisions they take are pure functions of the snapshot, the context
//! and the time: [`identity`] (who is calling) and [`admission`] (how much they may).
//!
//! The runtime side of a snapshot's access config ([`AccessRuntime`]) is built once per
//! config and read by every worker.

pub mod admission;
pub mod admit;
pub mod audit;
pub mod authenticate;
pub mod cache;
pub mod context;
pub mod identity;
pub mod metrics;
pub mod phase;
pub mod pipeline;
pub mod trace;
pub mod usage;

use crate::config::ConfigErrors;
use crate::limit::LimitId;
use crate::snapshot::Snapshot;

/// The runtime side of a snapshot's access config.
pub struct AccessRuntime {
    /// Keys and JWT validation; `None` when auth is off (no subscription, no issuer).
    pub identity: Option<identity::Identity>,
    /// The snapshot's limit ids in [`crate::snapshot::Access::limits`] order (see
    /// [`admission::limit_ids`]), as [`admission::Ask::ids`] takes them.
    pub limit_ids: Vec<LimitId>,
}

impl AccessRuntime {
    /// Builds the runtime for `snapshot`, carrying over from `previous` (the running
    /// config's runtime, on a reload) the JWKS key sets and refresh threads of unchanged
    /// JWKS URLs. Starts no thread ([`start`](Self::start) does), so `sluice --check` can
    /// build and throw it away. An error refuses the config, located like any config error.
    pub fn build(
        snapshot: &Snapshot,
        previous: Option<&AccessRuntime>,
    ) -> Result<Self, ConfigErrors> {
        let access = &snapshot.access;
        let identity = if access.auth_enabled() {
            let previous = previous.and_then(|p| p.identity.as_ref());
            Some(identity::Identity::build(
                access,
                &snapshot.source,
                previous,
            )?)
        } else {
            None
        };
        warm_tokenizers(snapshot);
        Ok(Self {
            identity,
            limit_ids: admission::limit_ids(access),
        })
    }

    /// Starts the side threads the runtime needs (JWKS refreshers not carried over).
    pub fn start(&self) -> std::io::Result<()> {
        match &self.identity {
            Some(identity) => identity.start(),
            None => Ok(()),
        }
    }
}

/// Loads now, not on the first request, the BPE tables of the families the token limits
/// will count with (o200k takes ~80 ms and tens of MiB once per process): one family per
/// deployment that has a BPE estimator and that some token limit can reach — a limit of its
/// own, a client-IP limit, or one of a product allowed to call it. A deployment no token
/// limit reaches is never estimated, so its family is not loaded; with no token limit at all,
/// nothing is.
///
/// The family is the configured one, else the one the deployment's name implies. A request
/// whose body names a model of another family (Azure routes by path, so the body's `model`
/// is free) loads that family on its first use.
fn warm_tokenizers(snapshot: &Snapshot) {
    use crate::snapshot::access::{LimitIndex, LimitUnit};
    use crate::tokens::estimate::Estimator;
    let access = &snapshot.access;
    let counts_tokens = |ids: &[LimitIndex]| {
        ids.iter()
            .any(|&i| access.limit(i).is_some_and(|l| l.unit == LimitUnit::Tokens))
    };
    let everyone = counts_tokens(&access.client_ip_limits);
    let mut families = Vec::with_capacity(2);
    for deployment in snapshot.deployments.values() {
        let Estimator::Bpe(family) = deployment.tokens.estimator.for_model(&deployment.name) else {
            continue;
        };
        let reached = everyone
            || counts_tokens(&deployment.limits)
            || access
                .products
                .iter()
                .any(|p| p.deployments.contains(&deployment.name) && counts_tokens(&p.limits));
        if reached && !families.contains(&family) {
            families.push(family);
        }
    }
    for family in families {
        if !Estimator::Bpe(family).warm() {
            tracing::warn!(%family, "BPE tables failed to load; prompts are estimated by the byte heuristic");
        }
    }
}
