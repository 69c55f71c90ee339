//! The pipeline every worker runs: the policies in request order. Adding a policy is one
//! module in `policy/` (a `Default` struct implementing [`super::phase::Policy`]) and one
//! entry in [`Standard`]; response phases and `on_complete` run in the reverse order, so a
//! policy that records the outcome (audit, metrics) goes first, and sees the usage settled.

use super::admit::{Admit, ClientIpGate};
use super::audit::AuditRecord;
use super::authenticate::Authenticate;
use super::cache::{CacheLookup, ResponseCaching};
use super::metrics::RequestMetrics;
use super::trace::TraceHeader;
use super::usage::UsageAccounting;

/// The standard pipeline: record the request (its `on_complete` last, seeing everything
/// settled), count it in the metrics, count the client's address, authenticate and authorize, decide the trace,
/// look the request up in the response cache, admit by the limits (and settle; a would-be hit
/// counts against the request limits only), read the answer's usage, let the cache's verdict
/// stand (a hit is replayed at no token cost, a miss stored).
pub type Standard = (
    AuditRecord,
    (
        RequestMetrics,
        (
            ClientIpGate,
            (
                Authenticate,
                (
                    TraceHeader,
                    (CacheLookup, (Admit, (UsageAccounting, ResponseCaching))),
                ),
            ),
        ),
    ),
);

/// A worker's instance of the standard pipeline: each policy's `Default`.
pub fn standard() -> Standard {
    Standard::default()
}

#[cfg(test)]
mod tests;
