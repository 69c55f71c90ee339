//! The pipeline every worker runs: the policies in request order. Adding a policy is one
//! module in `policy/` and one entry here (response phases run in the reverse order).

use super::admit::{Admit, ClientIpGate};
use super::authenticate::Authenticate;
use super::trace::TraceHeader;
use super::usage::UsageAccounting;

/// The standard pipeline: count the client's address, authenticate and authorize, decide the
/// trace, admit by the limits (and settle), read the answer's usage.
pub type Standard = (
    ClientIpGate,
    (Authenticate, (TraceHeader, (Admit, UsageAccounting))),
);

/// A worker's instance of the standard pipeline.
pub fn standard() -> Standard {
    (
        ClientIpGate,
        (Authenticate, (TraceHeader, (Admit, UsageAccounting))),
    )
}

#[cfg(test)]
mod tests;
