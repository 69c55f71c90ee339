//! The config file as written: serde structs mirroring the TOML, before any checking.
//!
//! Every table denies unknown keys, so a typo is an error rather than a silently ignored
//! setting. Values that a later check may reject are [`Spanned`], so the error can point at
//! them. Backends are one flat struct whatever their kind: which fields belong to which kind
//! is checked by [`super::compile`], which can then report every misplaced field at once
//! instead of serde's first.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

/// A list whose position and items can each be pointed at.
pub(crate) type SpannedList<T> = Spanned<Vec<Spanned<T>>>;

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
    #[serde(default)]
    pub product: Vec<Spanned<ProductSection>>,
    #[serde(default)]
    pub subscription: Vec<Spanned<SubscriptionSection>>,
    #[serde(default)]
    pub jwt: Vec<Spanned<JwtSection>>,
    pub audit: Option<Spanned<AuditSection>>,
    pub admin: Option<Spanned<AdminSection>>,
}

/// `[admin]`: the admin listener.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AdminSection {
    pub listen: Option<Spanned<String>>,
}

/// `[audit]`: the audit log.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AuditSection {
    pub content: Option<Spanned<String>>,
    pub truncate_chars: Option<Spanned<usize>>,
    pub default_redactions: Option<bool>,
    pub redact: Option<SpannedList<String>>,
    pub queue: Option<Spanned<usize>>,
    pub max_queue_bytes: Option<Spanned<String>>,
    pub node: Option<Spanned<String>>,
    #[serde(default)]
    pub sink: Vec<Spanned<AuditSinkSection>>,
}

/// One `[[audit.sink]]`, with the fields of every kind.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AuditSinkSection {
    pub kind: Spanned<String>,
    pub path: Option<Spanned<String>>,
    pub overflow: Option<Spanned<String>>,
    pub queue: Option<Spanned<usize>>,
    pub rotate_size: Option<Spanned<String>>,
    pub rotate_interval: Option<Spanned<String>>,
    pub fsync_interval: Option<Spanned<String>>,
}

/// A product's `audit = { … }`: its content policy.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ProductAuditSection {
    pub content: Option<Spanned<String>>,
    pub truncate_chars: Option<Spanned<usize>>,
}

/// `[server]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ServerSection {
    pub listen: Option<Spanned<Vec<Spanned<String>>>>,
    pub tls_listen: Option<SpannedList<String>>,
    pub tls: Option<Spanned<TlsSection>>,
    pub workers: Option<usize>,
    pub shutdown_grace: Option<Spanned<String>>,
    #[serde(default)]
    pub limits: LimitsSection,
    #[serde(default)]
    pub timeouts: TimeoutsSection,
    pub trace_header: Option<bool>,
    pub client_ip_limits: Option<SpannedList<LimitEntry>>,
    pub headers_with_underscores: Option<Spanned<String>>,
}

/// `[server.tls]`: the listeners' certificates and client authentication.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TlsSection {
    pub cert_file: Option<Spanned<String>>,
    pub key_file: Option<Spanned<String>>,
    pub client_ca_file: Option<Spanned<String>>,
    pub handshake_timeout: Option<Spanned<String>>,
    #[serde(default)]
    pub sni: Vec<Spanned<SniEntry>>,
}

/// One `[[server.tls.sni]]`: another certificate, chosen by the server name a client asks for.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SniEntry {
    pub server_name: Spanned<String>,
    pub cert_file: Spanned<String>,
    pub key_file: Spanned<String>,
}

/// `[server.limits]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LimitsSection {
    pub max_request_line: Option<Spanned<usize>>,
    pub max_head: Option<Spanned<usize>>,
    pub max_headers: Option<Spanned<usize>>,
    pub max_body: Option<Spanned<u64>>,
    pub min_body_rate: Option<Spanned<u64>>,
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
    pub send: Option<Spanned<String>>,
    pub body_read: Option<Spanned<String>>,
    pub body_rate_grace: Option<Spanned<String>>,
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
    pub stream_options: Option<Spanned<String>>,
    // azure and openai, https:// URLs only
    pub ca_file: Option<Spanned<String>>,
    pub server_name: Option<Spanned<String>>,
    pub insecure_skip_verify: Option<Spanned<bool>>,
    // azure
    pub deployment: Option<Spanned<String>>,
    pub api_version: Option<Spanned<String>>,
    // azure and openai
    pub health_check: Option<Spanned<HealthCheckSection>>,
}

/// A backend's `health_check = { … }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HealthCheckSection {
    pub path: Spanned<String>,
    pub interval: Option<Spanned<String>>,
    pub timeout: Option<Spanned<String>>,
    pub expected_status: Option<Spanned<u16>>,
    pub unhealthy_threshold: Option<Spanned<u32>>,
    pub healthy_threshold: Option<Spanned<u32>>,
}

/// One `[[deployment]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DeploymentSection {
    pub name: Spanned<String>,
    pub backends: Option<Spanned<Vec<Spanned<PoolEntry>>>>,
    pub limits: Option<SpannedList<LimitEntry>>,
    pub tokens: Option<Spanned<TokensSection>>,
    pub retry: Option<Spanned<RetrySection>>,
    pub outlier_detection: Option<Spanned<OutlierDetectionSection>>,
    pub cache: Option<Spanned<CacheSection>>,
}

/// A deployment's `cache = { … }` (compiled by `config::cache`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CacheSection {
    pub ttl: Option<Spanned<String>>,
    pub max_entries: Option<Spanned<u64>>,
    pub max_bytes: Option<Spanned<String>>,
    pub per_subscription: Option<bool>,
    pub nondeterministic: Option<bool>,
    pub ignore_fields: Option<Spanned<Vec<Spanned<String>>>>,
}

/// A deployment's `retry = { … }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RetrySection {
    pub max_attempts: Option<Spanned<u32>>,
    pub per_try_timeout: Option<Spanned<String>>,
    pub total_timeout: Option<Spanned<String>>,
    pub retriable_status_codes: Option<Spanned<Vec<Spanned<u16>>>>,
    pub max_cool_down: Option<Spanned<String>>,
}

/// A deployment's `outlier_detection = { … }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct OutlierDetectionSection {
    pub consecutive_failures: Option<Spanned<u32>>,
    pub base_ejection_time: Option<Spanned<String>>,
    pub max_ejection_time: Option<Spanned<String>>,
    pub max_ejected_percent: Option<Spanned<u8>>,
}

/// A deployment's `tokens = { … }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TokensSection {
    pub estimator: Option<Spanned<String>>,
    pub family: Option<Spanned<String>>,
    pub default_max_tokens: Option<Spanned<u32>>,
    pub stream_usage: Option<bool>,
}

/// One entry of a `limits` list (products, deployments, `server.client_ip_limits`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LimitEntry {
    pub unit: Spanned<String>,
    pub rate: Option<Spanned<u64>>,
    pub quota: Option<Spanned<u64>>,
    pub per: Spanned<String>,
    pub burst: Option<Spanned<u64>>,
    pub scope: Option<Spanned<String>>,
    pub shadow: Option<bool>,
    pub name: Option<Spanned<String>>,
}

/// One `[[product]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ProductSection {
    pub name: Spanned<String>,
    pub deployments: Option<SpannedList<String>>,
    pub operations: Option<SpannedList<String>>,
    pub trace: Option<bool>,
    pub limits: Option<SpannedList<LimitEntry>>,
    pub audit: Option<Spanned<ProductAuditSection>>,
}

/// One `[[subscription]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SubscriptionSection {
    pub name: Spanned<String>,
    pub product: Spanned<String>,
    pub keys: Option<SpannedList<String>>,
    pub revoked_keys: Option<SpannedList<String>>,
    pub jwt_claim_values: Option<SpannedList<String>>,
}

/// One `[[jwt]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct JwtSection {
    pub name: Spanned<String>,
    pub issuer: Spanned<String>,
    pub audiences: Option<SpannedList<String>>,
    pub subscription_claim: Spanned<String>,
    pub leeway: Option<Spanned<String>>,
    pub require: Option<SpannedList<String>>,
    pub required_claims: Option<BTreeMap<Spanned<String>, SpannedList<String>>>,
    pub keys: Option<SpannedList<JwtKeyEntry>>,
}

/// One entry of a `[[jwt]]`'s `keys`: exactly one of the four sources, checked later.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct JwtKeyEntry {
    pub kid: Option<Spanned<String>>,
    pub algorithms: Option<SpannedList<String>>,
    pub public_key_file: Option<Spanned<String>>,
    pub secret_env: Option<Spanned<String>>,
    pub jwks_file: Option<Spanned<String>>,
    pub jwks_url: Option<Spanned<String>>,
    pub refresh: Option<Spanned<String>>,
}

/// One entry of a deployment's `backends` list.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PoolEntry {
    pub backend: Spanned<String>,
    pub weight: Option<Spanned<u32>>,
    pub priority: Option<u32>,
}
