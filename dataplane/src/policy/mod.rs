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
        Ok(Self {
            identity,
            limit_ids: admission::limit_ids(access),
        })
    }
}
