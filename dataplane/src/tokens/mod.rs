//! Token accounting for tokens-per-minute limits, the way Azure OpenAI does it: at admission
//! reserve an estimate (the prompt's tokens plus the completion's cap), after the answer
//! reconcile to the usage the backend reports.
//!
//! - [`estimate`] reads the few facts of a request body once ([`estimate::RequestFacts`]),
//!   counts the prompt's tokens with the model family's BPE tables or a cheap byte heuristic
//!   ([`estimate::Estimator`]), and computes the reservation.
//! - [`usage`] reads the real usage from a JSON answer, scans a streamed (SSE) answer for
//!   its usage chunk as the bytes pass through ([`usage::SseScanner`]), and asks the backend
//!   for that chunk when the client did not ([`usage::inject_include_usage`]).
//! - [`stream_options`] decides per backend whether that request field is accepted (by kind
//!   and Azure `api-version`); where it is not, [`completion_count`] counts a stream's
//!   completion text as it passes instead.
//!
//! Both are pure: no I/O, no clock, nothing of monoio. The server wires them into the
//! request path (DESIGN.md "Request path", steps 5, 7, 10 and 11).
//!
//! The fixtures in `fixtures/` are copies of `shared/fixtures/openai/` for the unit tests.

pub mod bpe;
pub mod completion_count;
pub mod estimate;
mod lenient;
pub mod stream_options;
pub mod strict;
pub mod usage;

pub use estimate::{family_for_model, reservation, Estimator, Family, RequestFacts};
pub use usage::{inject_include_usage, usage_from_json, SseScanner, StreamOutcome, Usage};
