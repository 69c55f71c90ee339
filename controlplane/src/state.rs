//! The control plane's state as pure values: what nodes should run ([`Desired`], one numbered
//! version at a time) and what each node said ([`Fleet`]). Every change is a function from
//! the old value to the new one, with no I/O: the service persists and pushes what these
//! functions decide. (STYLE §6: a state machine over proto messages.)

use std::collections::{BTreeMap, BTreeSet};
use std::time::SystemTime;

use sluice_proto::control::v1::{
    ConfigError, ConfigSnapshot, KeyDigest, Node, NodeState, WeightOverride,
};

use crate::source::Document;

/// What every node should run: one version of a config document and the operator's
/// overlays on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    /// The version number: grows by one with each change; 0 before the first document.
    pub version: u64,
    /// The document; `None` only at version 0.
    pub document: Option<Document>,
    /// What operators set over the document; kept when a new document comes.
    pub overlays: Overlays,
    /// When this version was made.
    pub created_at: SystemTime,
}

/// What operators set without editing the document (`sluicectl backends drain|undrain|
/// weight`). Stored as JSON with each version.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Overlays {
    /// Backends taken out of every pool, by name.
    #[serde(default)]
    pub drained: BTreeSet<String>,
    /// Weight overrides: backend → deployment (`""`: every pool it is in) → weight (≥ 1).
    #[serde(default)]
    pub weights: BTreeMap<String, BTreeMap<String, u32>>,
    /// Subscription keys made by `sluicectl keys create`, by key id: each key's SHA-256,
    /// never the key.
    #[serde(default)]
    pub keys: BTreeMap<String, KeyRecord>,
}

/// What the control plane keeps of a subscription key it made (everything but the key).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KeyRecord {
    /// The subscription it authenticates as.
    pub subscription: String,
    /// The operator's note.
    #[serde(default)]
    pub label: String,
    /// SHA-256 of the key's UTF-8 bytes, 64 lowercase hex digits.
    pub sha256: String,
    /// When it was made, milliseconds since the Unix epoch.
    pub created_at_ms: u64,
    /// When it was revoked (ms since the epoch); `None` while it is valid.
    #[serde(default)]
    pub revoked_at_ms: Option<u64>,
}

/// One change an operator (or the watched config path) asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A new document, already checked ([`sluice::config::check_document`]).
    Document(Document),
    /// Take a backend out of every pool.
    Drain(String),
    /// Put a drained backend back.
    Undrain(String),
    /// Override (`Some`) or clear (`None`) a backend's weight in one deployment's pool (or,
    /// with an empty deployment, every pool).
    Weight {
        /// The backend.
        backend: String,
        /// The deployment; empty for every pool.
        deployment: String,
        /// The weight (≥ 1), or `None` to clear.
        weight: Option<u32>,
    },
    /// Add a subscription key under a new id.
    CreateKey {
        /// The key's id (random, not secret).
        id: String,
        /// What is kept of it.
        record: KeyRecord,
    },
    /// Revoke a key (a key already revoked stays as it was).
    RevokeKey {
        /// The key's id.
        id: String,
        /// When, in milliseconds since the Unix epoch.
        at_ms: u64,
    },
}

impl Desired {
    /// The state before any document: version 0.
    pub fn empty() -> Self {
        Self {
            version: 0,
            document: None,
            overlays: Overlays::default(),
            created_at: SystemTime::UNIX_EPOCH,
        }
    }

    /// The state after `change`, made at `now`; `None` when it changes nothing that nodes
    /// run (the same document text — a new commit or source name alone makes no version —
    /// or an overlay already so). Overlays need a document: before one they change nothing.
    pub fn apply(&self, change: Change, now: SystemTime) -> Option<Desired> {
        let mut document = self.document.clone();
        let mut overlays = self.overlays.clone();
        match change {
            Change::Document(next) => {
                if self.document.as_ref().map(|d| &d.toml) == Some(&next.toml) {
                    return None;
                }
                document = Some(next);
            }
            Change::Drain(backend) => {
                overlays.drained.insert(backend);
            }
            Change::Undrain(backend) => {
                overlays.drained.remove(&backend);
            }
            Change::Weight {
                backend,
                deployment,
                weight,
            } => {
                let pools = overlays.weights.entry(backend.clone()).or_default();
                match weight {
                    Some(w) => {
                        pools.insert(deployment, w);
                    }
                    None => {
                        pools.remove(&deployment);
                    }
                }
                if pools.is_empty() {
                    overlays.weights.remove(&backend);
                }
            }
            Change::CreateKey { id, record } => {
                overlays.keys.entry(id).or_insert(record);
            }
            Change::RevokeKey { id, at_ms } => {
                if let Some(key) = overlays.keys.get_mut(&id) {
                    key.revoked_at_ms.get_or_insert(at_ms);
                }
            }
        }
        if document.is_none() || (document == self.document && overlays == self.overlays) {
            return None;
        }
        Some(Desired {
            version: self.version + 1,
            document,
            overlays,
            created_at: now,
        })
    }

    /// The snapshot that carries this version to a node; `None` at version 0.
    pub fn snapshot(&self) -> Option<ConfigSnapshot> {
        let document = self.document.as_ref()?;
        Some(ConfigSnapshot {
            version: self.version,
            git_commit: document.git_commit.clone(),
            source: document.source.clone(),
            toml: document.toml.clone().into(),
            created_at: Some(self.created_at.into()),
            drained_backends: self.overlays.drained.iter().cloned().collect(),
            weight_overrides: self.overlays.weight_overrides(),
            subscription_keys: self.overlays.key_digests(),
            ..ConfigSnapshot::default()
        })
    }
}

impl Overlays {
    /// The keys as the API carries them to nodes, by id (revoked ones too, marked, so nodes
    /// refuse them as revoked).
    pub fn key_digests(&self) -> Vec<KeyDigest> {
        self.keys
            .iter()
            .map(|(id, key)| KeyDigest {
                key_id: id.clone(),
                subscription: key.subscription.clone(),
                sha256: hex_bytes(&key.sha256),
                revoked: key.revoked_at_ms.is_some(),
            })
            .collect()
    }

    /// The weight overrides as the API carries them, by backend then deployment.
    pub fn weight_overrides(&self) -> Vec<WeightOverride> {
        self.weights
            .iter()
            .flat_map(|(backend, pools)| {
                pools
                    .iter()
                    .map(move |(deployment, &weight)| WeightOverride {
                        backend: backend.clone(),
                        deployment: deployment.clone(),
                        weight,
                    })
            })
            .collect()
    }

    /// The weight in force for `backend` in `deployment`'s pool, given the document's
    /// `configured` one: an override for that pool, else one for every pool, else it.
    pub fn weight(&self, backend: &str, deployment: &str, configured: u32) -> u32 {
        let pools = self.weights.get(backend);
        pools
            .and_then(|p| p.get(deployment).or_else(|| p.get("")))
            .copied()
            .unwrap_or(configured)
    }
}

/// The bytes `hex` (pairs of hex digits) spells; what is not hex is left out.
fn hex_bytes(hex: &str) -> Vec<u8> {
    hex.as_bytes()
        .chunks_exact(2)
        .filter_map(|pair| u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok())
        .collect()
}

/// What the control plane knows of one node.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct NodeRecord {
    /// The host name it registered with.
    pub hostname: String,
    /// The `sluice` build it runs.
    pub build_version: String,
    /// The version it last acknowledged (0: none).
    pub running_version: u64,
    /// The last version it refused after its last ACK (0: none), and why.
    pub rejected_version: u64,
    /// The errors of that refusal, located.
    pub rejected_errors: Vec<ConfigError>,
    /// When it last called.
    pub last_seen: Option<SystemTime>,
    /// Watch streams it has open now (a reconnect may overlap the old stream briefly).
    pub watching: u32,
    /// When its newest Watch stream opened (push latency counts from then for a version
    /// made before it connected).
    pub watching_since: Option<SystemTime>,
}

/// Every node seen, by id.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Fleet {
    /// The nodes, ordered by id.
    pub nodes: BTreeMap<String, NodeRecord>,
}

impl Fleet {
    /// A node introduced itself (at start or after a reconnect).
    pub fn register(
        &mut self,
        id: &str,
        hostname: &str,
        build_version: &str,
        running_version: u64,
        now: SystemTime,
    ) {
        let node = self.nodes.entry(id.to_string()).or_default();
        node.hostname = hostname.to_string();
        node.build_version = build_version.to_string();
        node.running_version = running_version;
        node.last_seen = Some(now);
    }

    /// A node answered `version`: ACK (`errors` empty and `accepted`) or NACK.
    pub fn answer(
        &mut self,
        id: &str,
        version: u64,
        accepted: bool,
        errors: Vec<ConfigError>,
        now: SystemTime,
    ) {
        let node = self.nodes.entry(id.to_string()).or_default();
        if accepted {
            node.running_version = version;
            node.rejected_version = 0;
            node.rejected_errors.clear();
        } else {
            node.rejected_version = version;
            node.rejected_errors = errors;
        }
        node.last_seen = Some(now);
    }

    /// A node opened (`true`) or closed (`false`) a Watch stream.
    pub fn watching(&mut self, id: &str, open: bool, now: SystemTime) {
        let node = self.nodes.entry(id.to_string()).or_default();
        node.watching = if open {
            node.watching_since = Some(now);
            node.watching.saturating_add(1)
        } else {
            node.watching.saturating_sub(1)
        };
        node.last_seen = Some(now);
    }

    /// Every node as `NodeService.List` shows it, against the `current` version.
    pub fn list(&self, current: u64) -> Vec<Node> {
        self.nodes
            .iter()
            .map(|(id, n)| Node {
                id: id.clone(),
                hostname: n.hostname.clone(),
                build_version: n.build_version.clone(),
                running_version: n.running_version,
                last_seen: n.last_seen.map(Into::into),
                connected: n.watching > 0,
                rejected_version: n.rejected_version,
                rejected_errors: n.rejected_errors.clone(),
                state: state_of(n, current) as i32,
            })
            .collect()
    }
}

/// ACK when the node runs `current`, NACK when it refused it, PENDING otherwise.
fn state_of(node: &NodeRecord, current: u64) -> NodeState {
    if node.running_version == current && current > 0 {
        NodeState::Ack
    } else if node.rejected_version == current && current > 0 {
        NodeState::Nack
    } else {
        NodeState::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(toml: &str, commit: &str) -> Document {
        Document {
            toml: toml.into(),
            source: "conf".into(),
            git_commit: commit.into(),
        }
    }

    #[test]
    fn versions_grow_only_when_the_document_changes() {
        let t0 = SystemTime::UNIX_EPOCH;
        let v0 = Desired::empty();
        assert_eq!(v0.snapshot(), None);
        let v1 = v0.apply(Change::Document(doc("a", "c1")), t0).unwrap();
        assert_eq!(v1.version, 1);
        assert_eq!(v1.apply(Change::Document(doc("a", "c2")), t0), None);
        let v2 = v1.apply(Change::Document(doc("b", "c2")), t0).unwrap();
        assert_eq!(v2.version, 2);
        let snapshot = v2.snapshot().unwrap();
        assert_eq!(
            (
                snapshot.version,
                std::str::from_utf8(&snapshot.toml).unwrap(),
                snapshot.git_commit.as_str()
            ),
            (2, "b", "c2")
        );
    }

    #[test]
    fn overlays_make_versions_and_outlive_documents() {
        let t0 = SystemTime::UNIX_EPOCH;
        assert_eq!(
            Desired::empty().apply(Change::Drain("a".into()), t0),
            None,
            "nothing to drain yet"
        );
        let v1 = Desired::empty()
            .apply(Change::Document(doc("x", "")), t0)
            .unwrap();
        let v2 = v1.apply(Change::Drain("a".into()), t0).unwrap();
        assert_eq!(v2.version, 2);
        assert_eq!(
            v2.apply(Change::Drain("a".into()), t0),
            None,
            "already drained"
        );
        let weight = |deployment: &str, weight| Change::Weight {
            backend: "b".into(),
            deployment: deployment.into(),
            weight,
        };
        let v3 = v2.apply(weight("", Some(5)), t0).unwrap();
        let v4 = v3.apply(weight("d", Some(2)), t0).unwrap();
        assert_eq!(
            (
                v4.overlays.weight("b", "d", 1),
                v4.overlays.weight("b", "e", 1),
                v4.overlays.weight("c", "d", 7)
            ),
            (2, 5, 7)
        );
        let v5 = v4.apply(Change::Document(doc("y", "")), t0).unwrap();
        assert_eq!(
            v5.overlays, v4.overlays,
            "a new document keeps the overlays"
        );
        let snapshot = v5.snapshot().unwrap();
        assert_eq!(snapshot.drained_backends, ["a"]);
        assert_eq!(snapshot.weight_overrides.len(), 2);
        let v6 = v5.apply(Change::Undrain("a".into()), t0).unwrap();
        let v7 = v6
            .apply(weight("", None), t0)
            .unwrap()
            .apply(weight("d", None), t0)
            .unwrap();
        assert_eq!(v7.overlays, Overlays::default());
        assert_eq!(v7.version, 8);
    }

    #[test]
    fn keys_make_versions_and_a_revoked_key_stays_revoked() {
        let t0 = SystemTime::UNIX_EPOCH;
        let v1 = Desired::empty()
            .apply(Change::Document(doc("x", "")), t0)
            .unwrap();
        let record = KeyRecord {
            subscription: "team-a".into(),
            label: String::new(),
            sha256: "ab".repeat(32),
            created_at_ms: 1,
            revoked_at_ms: None,
        };
        let create = Change::CreateKey {
            id: "key_1".into(),
            record: record.clone(),
        };
        let v2 = v1.apply(create.clone(), t0).unwrap();
        assert_eq!(v2.apply(create, t0), None, "an id is made once");
        let digests = v2.snapshot().unwrap().subscription_keys;
        assert_eq!(digests.len(), 1);
        assert_eq!(digests[0].sha256, vec![0xab; 32]);
        assert!(!digests[0].revoked);
        let revoke = |at_ms| Change::RevokeKey {
            id: "key_1".into(),
            at_ms,
        };
        let v3 = v2.apply(revoke(5), t0).unwrap();
        assert_eq!(v3.apply(revoke(9), t0), None, "already revoked");
        assert_eq!(v3.overlays.keys["key_1"].revoked_at_ms, Some(5));
        assert!(v3.snapshot().unwrap().subscription_keys[0].revoked);
        let unknown = Change::RevokeKey {
            id: "key_2".into(),
            at_ms: 1,
        };
        assert_eq!(v3.apply(unknown, t0), None);
        // Kept as JSON with the version: never the key, only its digest.
        let json = serde_json::to_string(&v3.overlays).unwrap();
        let back: Overlays = serde_json::from_str(&json).unwrap();
        assert_eq!(back, v3.overlays);
    }

    #[test]
    fn node_state_follows_its_last_answer_to_the_current_version() {
        let now = SystemTime::UNIX_EPOCH;
        let mut fleet = Fleet::default();
        fleet.register("n1", "host", "0.1.0", 0, now);
        let state =
            |fleet: &Fleet, current| NodeState::try_from(fleet.list(current)[0].state).unwrap();
        assert_eq!(state(&fleet, 1), NodeState::Pending);
        fleet.answer("n1", 1, true, vec![], now);
        assert_eq!(state(&fleet, 1), NodeState::Ack);
        let error = ConfigError {
            message: "unset".into(),
            ..ConfigError::default()
        };
        fleet.answer("n1", 2, false, vec![error], now);
        assert_eq!(state(&fleet, 2), NodeState::Nack);
        assert_eq!(
            fleet.list(2)[0].running_version,
            1,
            "keeps its last good version"
        );
        assert_eq!(state(&fleet, 3), NodeState::Pending);
        fleet.answer("n1", 3, true, vec![], now);
        assert_eq!(fleet.list(3)[0].rejected_errors, vec![]);
        fleet.watching("n1", true, now);
        assert!(fleet.list(3)[0].connected);
        fleet.watching("n1", false, now);
        assert!(!fleet.list(3)[0].connected);
    }
}
