//! `sluicectl keys`: subscription keys made and revoked through the control plane.

use std::time::SystemTime;

use clap::Subcommand;
use sluice_proto::control::v1::subscription_service_client::SubscriptionServiceClient;
use sluice_proto::control::v1::{
    CreateKeyRequest, KeyInfo, ListSubscriptionsRequest, RevokeKeyRequest,
};

use super::{print_json, print_table, rfc3339, Authed, Exit, Failure, MAX_ANSWER_BYTES};

/// `keys` commands.
#[derive(Subcommand, Debug)]
pub enum Keys {
    /// Make a key for a subscription of the running config. The key is printed once: give it
    /// to the application now (the control plane keeps only its SHA-256).
    Create {
        /// The subscription the key authenticates as.
        #[arg(long)]
        subscription: String,
        /// A note for operators: who holds the key, what for (≤ 256 bytes).
        #[arg(long, default_value = "")]
        label: String,
    },
    /// Revoke a key: every node refuses it (401) once it runs the version this makes.
    Revoke {
        /// The key's id, as `keys create` and `keys list` show it.
        key_id: String,
    },
    /// The keys made through the control plane (without the keys themselves).
    List {
        /// Only this subscription's.
        #[arg(long)]
        subscription: Option<String>,
        /// Also revoked keys.
        #[arg(long)]
        all: bool,
    },
}

/// Runs one `keys` command. JSON: `create` → `{"key_id", "subscription", "key", "label",
/// "version"}`; `revoke` → `{"key_id", "subscription", "revoked_at", "version"}`; `list` →
/// a list of `{"key_id", "subscription", "label", "digest_prefix", "created_at",
/// "revoked_at"}`.
pub async fn run(channel: Authed, what: &Keys, json: bool) -> Result<Exit, Failure> {
    let mut client =
        SubscriptionServiceClient::new(channel).max_decoding_message_size(MAX_ANSWER_BYTES);
    match what {
        Keys::Create {
            subscription,
            label,
        } => {
            let answer = client
                .create_key(CreateKeyRequest {
                    subscription: subscription.clone(),
                    label: label.clone(),
                })
                .await?
                .into_inner();
            let info = answer.info.unwrap_or_default();
            if json {
                print_json(&serde_json::json!({
                    "key_id": info.id,
                    "subscription": info.subscription,
                    "key": answer.key,
                    "label": info.label,
                    "version": answer.version,
                }));
            } else {
                outln!("{}", answer.key);
                eprintln!(
                    "key {} for subscription {} (version {}): shown only now — give it to the application",
                    info.id, info.subscription, answer.version
                );
            }
        }
        Keys::Revoke { key_id } => {
            let answer = client
                .revoke_key(RevokeKeyRequest {
                    key_id: key_id.clone(),
                })
                .await?
                .into_inner();
            let info = answer.info.unwrap_or_default();
            if json {
                print_json(&serde_json::json!({
                    "key_id": info.id,
                    "subscription": info.subscription,
                    "revoked_at": time(info.revoked_at),
                    "version": answer.version,
                }));
            } else {
                outln!(
                    "key {} of subscription {} revoked (version {})",
                    info.id,
                    info.subscription,
                    answer.version
                );
            }
        }
        Keys::List { subscription, all } => {
            let subscriptions = client
                .list(ListSubscriptionsRequest {
                    subscription: subscription.clone().unwrap_or_default(),
                    include_revoked: *all,
                })
                .await?
                .into_inner()
                .subscriptions;
            let keys: Vec<&KeyInfo> = subscriptions.iter().flat_map(|s| &s.keys).collect();
            print_keys(&keys, json);
        }
    }
    Ok(Exit::Done)
}

fn time(t: Option<prost_types::Timestamp>) -> Option<String> {
    t.and_then(|t| SystemTime::try_from(t).ok()).map(rfc3339)
}

fn print_keys(keys: &[&KeyInfo], json: bool) {
    if json {
        let rows = keys
            .iter()
            .map(|k| {
                serde_json::json!({
                    "key_id": k.id,
                    "subscription": k.subscription,
                    "label": k.label,
                    "digest_prefix": k.digest_prefix,
                    "created_at": time(k.created_at),
                    "revoked_at": time(k.revoked_at),
                })
            })
            .collect();
        print_json(&serde_json::Value::Array(rows));
        return;
    }
    let mut rows = vec![[
        "KEY_ID",
        "SUBSCRIPTION",
        "SHA256",
        "CREATED",
        "REVOKED",
        "LABEL",
    ]
    .map(String::from)
    .to_vec()];
    for k in keys {
        rows.push(vec![
            k.id.clone(),
            k.subscription.clone(),
            format!("{}…", k.digest_prefix),
            time(k.created_at).unwrap_or_default(),
            time(k.revoked_at).unwrap_or_else(|| "-".into()),
            k.label.clone(),
        ]);
    }
    print_table(&rows);
}
