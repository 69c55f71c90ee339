//! The control-plane gRPC API of Sluice: the messages and services `sluice-control` serves,
//! and `sluice` (the data plane) and `sluicectl` (the operator's CLI) call.
//!
//! The `.proto` files under `proto/sluice/control/v1/` are the source of truth; the Rust code
//! in [`control::v1`] is generated from them at build time by `protox` (a protobuf parser in
//! Rust, so no `protoc` is needed) and `tonic-prost-build`. Each service `FooService` has a
//! client in `foo_service_client` and a server trait plus adapter in `foo_service_server`:
//!
//! | service | for | calls |
//! | --- | --- | --- |
//! | [`ConfigService`](control::v1::config_service_server::ConfigService) | operators, data planes | `Apply`, `Get`, `Diff`; `Watch` (server stream), `Ack` |
//! | [`NodeService`](control::v1::node_service_server::NodeService) | data planes, operators | `Register`, `List` |
//! | [`BackendService`](control::v1::backend_service_server::BackendService) | operators | `Drain`, `Undrain`, `SetWeight`, `List` |
//! | [`SubscriptionService`](control::v1::subscription_service_server::SubscriptionService) | operators | `CreateKey` (the key is shown once; only its SHA-256 is kept), `RevokeKey`, `List` |
//! | [`UsageService`](control::v1::usage_service_server::UsageService) | data planes, operators | `Report` (client stream of batches), `Query` |
//! | [`LiveService`](control::v1::live_service_server::LiveService) | `sluicectl top` | `Top` (server stream of per-second rates) |
//!
//! # Versions, ACK and NACK
//!
//! The control plane numbers every change to what data planes should run with one counter
//! that only grows: an applied config document, a drain or weight override, a created or
//! revoked key, new per-node limit shares. Each version is one self-contained
//! [`ConfigSnapshot`](control::v1::ConfigSnapshot): the whole TOML document, the git commit
//! it came from, and the node's own limit shares, overrides and key digests.
//!
//! A data plane registers (`NodeService.Register`), then opens `ConfigService.Watch` with the
//! version it runs. The control plane sends the current snapshot at once unless the node
//! already runs it, then each newer version (a node that falls behind gets only the newest).
//! The node compiles each snapshot off its request path and answers with `ConfigService.Ack`:
//!
//! - **ACK** (`accepted = true`): it swapped the new snapshot in and now runs that version.
//! - **NACK** (`accepted = false`, with every error found): it keeps its last good version
//!   and goes on serving; `NodeService.List` shows the refusal.
//!
//! A document the control plane itself finds invalid never becomes a version: `Apply` answers
//! with the errors (file, line, column, field, message) and nothing is pushed. NACKs are for
//! what only the node can see (an API-key variable missing on that host). A node cut off from
//! the control plane keeps running its last good version and its last limit shares.
//!
//! # Features
//!
//! - `transport` (off by default): tonic's HTTP/2 channel and server, and the generated
//!   `FooServiceClient::connect(url)` constructors. Without it, build clients from a channel
//!   of your own with `FooServiceClient::new`.

pub mod control {
    //! The `sluice.control` protobuf packages.

    pub mod v1 {
        //! Version 1 of the control-plane API (protobuf package `sluice.control.v1`),
        //! generated from `proto/sluice/control/v1/*.proto`. Field docs are the `.proto`
        //! comments.

        include!(concat!(env!("OUT_DIR"), "/sluice.control.v1.rs"));
    }
}

/// Sends a bearer token with every call (`authorization: Bearer …`), as the control plane's
/// operator and node calls require it; without a token it sends none. Its `Debug` never
/// shows the token.
#[derive(Clone, Default)]
pub struct BearerToken(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

/// A token that cannot be sent as a header value (it must be visible ASCII).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidToken;

impl std::fmt::Display for InvalidToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("not a valid header value (visible ASCII only)")
    }
}

impl std::error::Error for InvalidToken {}

impl BearerToken {
    /// The token to send; `None` or an empty one sends none.
    pub fn new(token: Option<&str>) -> Result<Self, InvalidToken> {
        match token.filter(|t| !t.is_empty()) {
            Some(t) => format!("Bearer {t}")
                .parse()
                .map(|v| Self(Some(v)))
                .map_err(|_| InvalidToken),
            None => Ok(Self(None)),
        }
    }
}

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "BearerToken(<set>)"
        } else {
            "BearerToken(none)"
        })
    }
}

impl tonic::service::Interceptor for BearerToken {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// The encoded `FileDescriptorSet` of the API, well-known imports included (with the
/// `.proto` comments): for gRPC reflection, or tools that need the schema at run time.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(
    env!("OUT_DIR"),
    "/sluice_control_v1_descriptor.bin"
));

#[cfg(test)]
mod tests {
    use prost::Message;
    use prost_types::{Duration, Timestamp};

    use super::control::v1::*;

    #[test]
    fn config_snapshot_round_trips() {
        let snapshot = ConfigSnapshot {
            version: 42,
            git_commit: "3f2a9c1e".into(),
            source: "configs/prod".into(),
            toml: "[server]\nlisten = [\"0.0.0.0:8080\"]\n"
                .as_bytes()
                .to_vec()
                .into(),
            limit_shares: vec![
                LimitShare {
                    limit: "tpm".into(),
                    key: String::new(),
                    share_ppm: 250_000,
                },
                LimitShare {
                    limit: "tpm".into(),
                    key: "team-a".into(),
                    share_ppm: 600_000,
                },
            ],
            drained_backends: vec!["aoai-2".into()],
            weight_overrides: vec![WeightOverride {
                backend: "aoai-1".into(),
                deployment: "gpt-4o".into(),
                weight: 3,
            }],
            subscription_keys: vec![KeyDigest {
                key_id: "k_01".into(),
                subscription: "team-a".into(),
                sha256: vec![0xab; 32],
                revoked: true,
            }],
            created_at: Some(Timestamp {
                seconds: 1_800_000_000,
                nanos: 123_000_000,
            }),
        };
        let bytes = snapshot.encode_to_vec();
        assert_eq!(ConfigSnapshot::decode(bytes.as_slice()), Ok(snapshot));
    }

    #[test]
    fn usage_batch_round_trips() {
        let record = |subscription: &str, requests| UsageRecord {
            bucket_start: Some(Timestamp {
                seconds: 1_800_000_060,
                nanos: 0,
            }),
            bucket_width: Some(Duration {
                seconds: 60,
                nanos: 0,
            }),
            node_id: "edge-1".into(),
            subscription: subscription.into(),
            deployment: "gpt-4o".into(),
            backend: "aoai-1".into(),
            requests,
            prompt_tokens: 1_200 * requests,
            completion_tokens: 300 * requests,
            rejections: vec![
                RejectionCount {
                    reason: "tokens_rate_limited".into(),
                    count: 2,
                },
                RejectionCount {
                    reason: "upstream_unavailable".into(),
                    count: 1,
                },
            ],
            model: "gpt-4o-2024-08-06".into(),
            status_class: "2xx".into(),
            total_tokens: 1_500 * requests,
            cache_hits: requests / 2,
            latency_histogram: vec![1, 2, 3],
            ..UsageRecord::default()
        };
        let batch = UsageBatch {
            node_id: "edge-1".into(),
            sequence: 7,
            records: vec![record("team-a", 10), record("team-b", 3)],
            incarnation: 42,
            sent_at: Some(Timestamp {
                seconds: 1_800_000_061,
                nanos: 0,
            }),
            backends: vec![BackendHealth {
                node_id: String::new(),
                backend: "aoai-2".into(),
                cooling_down_until: Some(Timestamp {
                    seconds: 1_800_000_065,
                    nanos: 0,
                }),
                consecutive_failures: 4,
            }],
        };
        let bytes = batch.encode_to_vec();
        let decoded = UsageBatch::decode(bytes.as_slice()).expect("decodes");
        assert_eq!(decoded, batch);
        assert_eq!(
            decoded.records[0].rejections[0].reason,
            "tokens_rate_limited"
        );
    }

    #[test]
    fn an_unknown_enum_value_survives_decoding() {
        // A newer control plane may add dimensions; an older reader keeps the number.
        let query = QueryUsageRequest {
            group_by: vec![99],
            ..QueryUsageRequest::default()
        };
        let decoded = QueryUsageRequest::decode(query.encode_to_vec().as_slice()).expect("decodes");
        assert_eq!(decoded.group_by, [99]);
        // The typed getter skips the values it does not know.
        assert_eq!(decoded.group_by().count(), 0);
    }

    #[test]
    fn descriptor_set_names_every_service_and_keeps_comments() {
        let set = prost_types::FileDescriptorSet::decode(super::FILE_DESCRIPTOR_SET)
            .expect("the embedded descriptor set decodes");
        let ours: Vec<_> = set
            .file
            .iter()
            .filter(|f| f.package() == "sluice.control.v1")
            .collect();
        let mut services: Vec<_> = ours
            .iter()
            .flat_map(|f| f.service.iter().map(|s| s.name()))
            .collect();
        services.sort_unstable();
        assert_eq!(
            services,
            [
                "BackendService",
                "ConfigService",
                "LiveService",
                "NodeService",
                "SubscriptionService",
                "UsageService"
            ]
        );
        assert!(set
            .file
            .iter()
            .any(|f| f.name() == "google/protobuf/timestamp.proto"));
        assert!(ours.iter().all(|f| f.source_code_info.is_some()));
    }
}
