//! A monotonic millisecond clock shared by the cool-down and (later) limiter code.
//!
//! Policies take the current time as a plain `u64` argument so tests can drive time
//! explicitly; only the server reads the real clock, through [`now_millis`].

use std::sync::OnceLock;
use std::time::Instant;

static EPOCH: OnceLock<Instant> = OnceLock::new();

/// Milliseconds since the first call in this process (monotonic, never zero-based on wall
/// time, so never jumps).
pub fn now_millis() -> u64 {
    let epoch = *EPOCH.get_or_init(Instant::now);
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
}
