//! Sluice's data plane: a thread-per-core io_uring gateway in front of Azure OpenAI and
//! OpenAI-compatible deployments.
//!
//! The pure pieces — HTTP framing ([`http`]), routing ([`route`]), pool selection
//! ([`balance`]), backend health ([`health`]), token accounting ([`tokens`]), the mock
//! backend ([`mock`]), the config compiler ([`config`]) and the limiter core ([`limit`]) — do
//! no I/O and are tested alone. [`auth`] checks who is calling (subscription keys and
//! JWTs). [`server`] wires them together on
//! monoio workers, one per core.

pub mod admin;
pub mod agent;
pub mod answers;
pub mod apply;
pub mod audit;
pub mod auth;
pub mod balance;
pub mod cache;
pub mod capacity;
pub mod clock;
pub mod config;
pub mod downstream;
pub mod error;
pub mod health;
pub mod health_check;
pub mod http;
pub mod json_edit;
pub mod json_name;
pub mod limit;
pub mod logging;
pub mod managed;
pub mod metrics;
pub mod mock;
pub mod policy;
pub mod reload;
pub mod route;
pub mod runtime;
pub mod server;
pub mod snapshot;
pub mod socket;
pub mod telemetry;
pub mod tls;
pub mod tokens;
pub mod upstream;
