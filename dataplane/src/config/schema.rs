//! The config file as written: serde structs mirroring the TOML, before any checking.
//!
//! Every table denies unknown keys, so a typo is an error rather than a silently ignored
//! setting. Values that a later check may reject are [`Spanned`], so the error can point at
//! them. Backends are one flat struct whatever their kind: which fields belong to which kind
//! is checked by [`super::compile`], which can then report every misplaced field at once
//! instead of serde's first.

use serde::Deserialize;
use toml::Spanned;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConfigFile {
    #[serde(default)]
    pub server: ServerSection,
    #[serde(default)]
    pub backend: Vec<Spanned<BackendSection>>,
    #[serde(default)]
    pub deployment: Vec<Spanned<DeploymentSection>>,
}

/// `[server]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ServerSection {
    pub listen: Option<Spanned<Vec<Spanned<String>>>>,
    pub workers: Option<usize>,
    pub shutdown_grace: Option<Spanned<String>>,
    #[serde(default)]
    pub limits: LimitsSection,
    #[serde(default)]
    pub timeouts: TimeoutsSection,
}

/// `[server.limits]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LimitsSection {
    pub max_request_line: Option<Spanned<usize>>,
    pub max_head: Option<Spanned<usize>>,
    pub max_headers: Option<Spanned<usize>>,
    pub max_body: Option<Spanned<u64>>,
}

/// `[server.timeouts]`: durations as strings such as `"10s"`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TimeoutsSection {
    pub head_read: Option<Spanned<String>>,
    pub keepalive_idle: Option<Spanned<String>>,
    pub upstream_connect: Option<Spanned<String>>,
    pub upstream_first_byte: Option<Spanned<String>>,
    pub stream_idle: Option<Spanned<String>>,
}

/// One `[[backend]]`, with the fields of every kind.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BackendSection {
    pub name: Spanned<String>,
    pub kind: Spanned<String>,
    // mock
    pub latency: Option<Spanned<String>>,
    pub completion_tokens: Option<Spanned<u32>>,
    pub tokens_per_second: Option<Spanned<f64>>,
    pub embedding_dimensions: Option<Spanned<usize>>,
    // mock and openai
    pub model: Option<Spanned<String>>,
    // azure and openai
    pub url: Option<Spanned<String>>,
    pub api_key_env: Option<Spanned<String>>,
    // azure
    pub deployment: Option<Spanned<String>>,
    pub api_version: Option<Spanned<String>>,
}

/// One `[[deployment]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DeploymentSection {
    pub name: Spanned<String>,
    pub backends: Option<Spanned<Vec<Spanned<PoolEntry>>>>,
}

/// One entry of a deployment's `backends` list.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PoolEntry {
    pub backend: Spanned<String>,
    pub weight: Option<Spanned<u32>>,
    pub priority: Option<u32>,
}
