//! What a limiter answers: admit (with what the `x-ratelimit-*` headers report) or refuse
//! (with when to come back), and shadow mode, which turns a refusal into a marked admission.

use std::time::Duration;

/// Why a request was (or, in shadow mode, would have been) refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenyReason {
    /// Over a rate limit: passes again after `retry_after` (an HTTP 429 with `Retry-After`).
    Rate,
    /// Over a quota: passes again when the window resets, `retry_after` from now (an HTTP 403).
    Quota,
    /// The request alone costs more than the limit can ever hold (cost above the burst or the
    /// quota): no wait helps. `retry_after` is zero.
    TooLarge,
}

/// A refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Denial {
    /// Which kind of limit refused.
    pub reason: DenyReason,
    /// The limit's configured size (requests or tokens per period or window).
    pub limit: u64,
    /// How long until the same request would pass (the `Retry-After` value, rounded up to
    /// whole seconds there; `retry-after-ms` can carry it exactly).
    pub retry_after: Duration,
}

/// A limiter's answer for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Admitted; the fields feed `x-ratelimit-limit`, `-remaining` and `-reset`.
    Allow {
        /// The limit's configured size.
        limit: u64,
        /// What is left after this request. Advisory: behind a per-core lease it is the
        /// shared bucket's level at this core's last refill plus the core's own budget.
        remaining: u64,
        /// How long until the limit is whole again (a rate's bucket full, a quota's window
        /// reset).
        reset: Duration,
        /// Set in shadow mode when the limit would have refused: the request passes, the
        /// refusal is counted and logged.
        would_deny: Option<DenyReason>,
    },
    /// Refused.
    Deny(Denial),
}

impl Decision {
    /// True when the request may go on (including a shadow-mode pass).
    pub fn is_allowed(&self) -> bool {
        matches!(self, Decision::Allow { .. })
    }

    /// Applies a limit's shadow (dry-run) flag: with `shadow` set, a refusal becomes an
    /// admission marked `would_deny` (remaining 0, reset = the refusal's retry-after);
    /// without it, or for an admission, the decision is unchanged.
    #[must_use]
    pub fn shadowed(self, shadow: bool) -> Decision {
        match self {
            Decision::Deny(d) if shadow => Decision::Allow {
                limit: d.limit,
                remaining: 0,
                reset: d.retry_after,
                would_deny: Some(d.reason),
            },
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shadow_turns_a_denial_into_a_marked_allow() {
        let deny = Decision::Deny(Denial {
            reason: DenyReason::Rate,
            limit: 10,
            retry_after: Duration::from_millis(250),
        });
        assert_eq!(deny.shadowed(false), deny);
        let shadowed = deny.shadowed(true);
        assert!(shadowed.is_allowed());
        assert_eq!(
            shadowed,
            Decision::Allow {
                limit: 10,
                remaining: 0,
                reset: Duration::from_millis(250),
                would_deny: Some(DenyReason::Rate)
            }
        );
        let allow = Decision::Allow {
            limit: 10,
            remaining: 3,
            reset: Duration::ZERO,
            would_deny: None,
        };
        assert_eq!(allow.shadowed(true), allow);
    }
}
