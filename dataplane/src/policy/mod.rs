//! Request policies that need more than routing: who is calling ([`identity`]) and how much
//! they may ([`admission`]). Each is built once per config snapshot ([`AccessRuntime`]) and
//! consulted by the server at its step of the request path (DESIGN.md: authenticate,
//! authorize, limit, account).

pub mod admission;
pub mod identity;

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

/// Loads now, not on the first request, the BPE tables of the families the token limits
/// will count with (o200k takes ~80 ms and tens of MiB once per process): one family per
/// deployment that has the BPE estimator and that some token limit can reach — a limit of
/// its own, a client-IP limit, or one of a product allowed to call it. A deployment no token
/// limit reaches is never estimated, so its family is not loaded; with no token limit at all,
/// nothing is.
///
/// The family is the configured one, else the one the deployment's name implies. A request
/// whose body names a model of another family (Azure routes by path, so the body's `model`
/// is free) loads that family on its first use.
fn warm_tokenizers(snapshot: &Snapshot) {
    use crate::snapshot::access::{Estimator as Choice, LimitId, LimitUnit, TokenizerFamily};
    use crate::tokens::estimate::{family_for_model, Estimator, Family};
    let access = &snapshot.access;
    let counts_tokens = |ids: &[LimitId]| {
        ids.iter()
            .any(|&i| access.limit(i).is_some_and(|l| l.unit == LimitUnit::Tokens))
    };
    let everyone = counts_tokens(&access.client_ip_limits);
    let mut families = Vec::with_capacity(2);
    for deployment in snapshot.deployments.values() {
        if deployment.tokens.estimator != Choice::Bpe {
            continue;
        }
        let reached = everyone
            || counts_tokens(&deployment.limits)
            || access
                .products
                .iter()
                .any(|p| p.deployments.contains(&deployment.name) && counts_tokens(&p.limits));
        if !reached {
            continue;
        }
        let family = match deployment.tokens.family {
            Some(TokenizerFamily::O200k) => Family::O200k,
            Some(TokenizerFamily::Cl100k) => Family::Cl100k,
            None => family_for_model(&deployment.name, Family::O200k),
        };
        if !families.contains(&family) {
            families.push(family);
        }
    }
    for family in families {
        if !Estimator::Bpe(family).warm() {
            tracing::warn!(%family, "BPE tables failed to load; prompts are estimated by the byte heuristic");
        }
    }
}
