//! Subscription keys an operator makes and revokes through the control plane
//! (`SubscriptionService`, `sluicectl keys`). A key is made here from 32 bytes of the OS's
//! randomness (`sluice keygen`'s format, `sk-sluice-…`), returned once, and kept only as its
//! SHA-256 in the version's overlays; each create or revoke makes a new version, which
//! carries every key's digest to the nodes (`ConfigSnapshot.subscription_keys`).

use std::time::{Duration, SystemTime};

use sluice_proto::control::v1::subscription_service_server::SubscriptionService;
use sluice_proto::control::v1::{
    CreateKeyRequest, CreateKeyResponse, KeyInfo, ListSubscriptionsRequest,
    ListSubscriptionsResponse, RevokeKeyRequest, RevokeKeyResponse, Subscription,
};
use tonic::{Request, Response, Status};

use crate::auth::Caller;
use crate::catalog::Catalog;
use crate::service::{Api, ControlPlane};
use crate::state::{Change, Desired, KeyRecord};

/// The longest label kept with a key: 256 bytes.
pub const MAX_LABEL_BYTES: usize = 256;

impl ControlPlane {
    /// Makes a key for `subscription` (NOT_FOUND when the running document declares none;
    /// INVALID_ARGUMENT for a label over [`MAX_LABEL_BYTES`]): the key, its record, and the
    /// version that carries it.
    pub fn create_key(
        &self,
        subscription: &str,
        label: &str,
    ) -> Result<(String, KeyInfo, u64), Status> {
        if label.len() > MAX_LABEL_BYTES {
            return Err(Status::invalid_argument(format!(
                "a label is at most {MAX_LABEL_BYTES} bytes"
            )));
        }
        let generated = sluice::auth::keygen::generate_key()
            .map_err(|e| Status::unavailable(format!("no randomness for a key: {e}")))?;
        let id = key_id().map_err(|e| Status::unavailable(format!("no randomness: {e}")))?;
        let sha256 = generated
            .hash
            .strip_prefix("sha256:")
            .unwrap_or(&generated.hash)
            .to_string();
        let record = KeyRecord {
            subscription: subscription.to_string(),
            label: label.to_string(),
            sha256,
            created_at_ms: epoch_ms(SystemTime::now()),
            revoked_at_ms: None,
        };
        let accept = |desired: &Desired| {
            declared(desired, subscription)?;
            Ok(())
        };
        let change = Change::CreateKey {
            id: id.clone(),
            record: record.clone(),
        };
        let (desired, _) = self.commit(change, accept)?;
        Ok((generated.key, key_info(&id, &record), desired.version))
    }

    /// Revokes key `id` (NOT_FOUND when there is none): its record, and the version that
    /// withdraws it (the current one when it was already revoked).
    pub fn revoke_key(&self, id: &str) -> Result<(KeyInfo, u64), Status> {
        let accept = |desired: &Desired| {
            if desired.overlays.keys.contains_key(id) {
                Ok(())
            } else {
                Err(Status::not_found(format!("no key `{id}`")))
            }
        };
        let change = Change::RevokeKey {
            id: id.to_string(),
            at_ms: epoch_ms(SystemTime::now()),
        };
        let (desired, _) = self.commit(change, accept)?;
        let record = desired
            .overlays
            .keys
            .get(id)
            .ok_or_else(|| Status::not_found(format!("no key `{id}`")))?;
        Ok((key_info(id, record), desired.version))
    }

    /// The running document's subscriptions (or only `only`), each with its keys (revoked
    /// ones when `include_revoked`), by name. A key whose subscription the document no
    /// longer declares is listed under that name with no product.
    pub fn subscriptions(&self, only: &str, include_revoked: bool) -> Vec<Subscription> {
        let desired = self.desired();
        let catalog = desired
            .document
            .as_ref()
            .map(|d| Catalog::of(&d.toml))
            .unwrap_or_default();
        let mut by_name: std::collections::BTreeMap<String, Subscription> = catalog
            .subscriptions
            .iter()
            .map(|(name, product)| {
                let s = Subscription {
                    name: name.clone(),
                    product: product.clone(),
                    keys: Vec::new(),
                };
                (name.clone(), s)
            })
            .collect();
        for (id, key) in &desired.overlays.keys {
            if key.revoked_at_ms.is_some() && !include_revoked {
                continue;
            }
            by_name
                .entry(key.subscription.clone())
                .or_insert_with(|| Subscription {
                    name: key.subscription.clone(),
                    ..Subscription::default()
                })
                .keys
                .push(key_info(id, key));
        }
        by_name
            .into_values()
            .filter(|s| only.is_empty() || s.name == only)
            .collect()
    }
}

/// NOT_FOUND (or FAILED_PRECONDITION before any document) unless the running document
/// declares subscription `name`.
fn declared(desired: &Desired, name: &str) -> Result<(), Status> {
    let document = desired
        .document
        .as_ref()
        .ok_or_else(|| Status::failed_precondition("no config applied yet"))?;
    if Catalog::of(&document.toml).product_of(name).is_none() {
        return Err(Status::not_found(format!(
            "no subscription `{name}` in the running config (version {})",
            desired.version
        )));
    }
    Ok(())
}

/// A new key id: `key_` and 16 hex digits of OS randomness.
fn key_id() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 8];
    getrandom::getrandom(&mut bytes)?;
    Ok(format!("key_{:016x}", u64::from_be_bytes(bytes)))
}

fn epoch_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn timestamp(ms: u64) -> prost_types::Timestamp {
    (SystemTime::UNIX_EPOCH + Duration::from_millis(ms)).into()
}

/// A key's record as the API shows it.
pub fn key_info(id: &str, key: &KeyRecord) -> KeyInfo {
    KeyInfo {
        id: id.to_string(),
        subscription: key.subscription.clone(),
        label: key.label.clone(),
        digest_prefix: key.sha256.chars().take(8).collect(),
        created_at: Some(timestamp(key.created_at_ms)),
        revoked_at: key.revoked_at_ms.map(timestamp),
    }
}

#[tonic::async_trait]
impl SubscriptionService for Api {
    async fn create_key(
        &self,
        request: Request<CreateKeyRequest>,
    ) -> Result<Response<CreateKeyResponse>, Status> {
        self.0.tokens.check(Caller::Operator, request.metadata())?;
        let CreateKeyRequest {
            subscription,
            label,
        } = request.into_inner();
        let (key, info, version) = self.0.create_key(&subscription, &label)?;
        tracing::info!(key_id = %info.id, %subscription, version, "subscription key created");
        Ok(Response::new(CreateKeyResponse {
            key,
            info: Some(info),
            version,
        }))
    }

    async fn revoke_key(
        &self,
        request: Request<RevokeKeyRequest>,
    ) -> Result<Response<RevokeKeyResponse>, Status> {
        self.0.tokens.check(Caller::Operator, request.metadata())?;
        let id = request.into_inner().key_id;
        let (info, version) = self.0.revoke_key(&id)?;
        tracing::info!(key_id = %id, version, "subscription key revoked");
        Ok(Response::new(RevokeKeyResponse {
            info: Some(info),
            version,
        }))
    }

    async fn list(
        &self,
        request: Request<ListSubscriptionsRequest>,
    ) -> Result<Response<ListSubscriptionsResponse>, Status> {
        self.0.tokens.check(Caller::Operator, request.metadata())?;
        let ListSubscriptionsRequest {
            subscription,
            include_revoked,
        } = request.into_inner();
        Ok(Response::new(ListSubscriptionsResponse {
            subscriptions: self.0.subscriptions(&subscription, include_revoked),
        }))
    }
}
