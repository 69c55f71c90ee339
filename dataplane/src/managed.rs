//! A node managed by a control plane: the [`Apply`] target the [`crate::agent`] feeds. Each
//! pushed document goes through [`crate::apply`] like a file reload, with the node's
//! [`HostLocal`] settings kept; its errors become the NACK.
//!
//! A node started with `--config` serves that file until the first pushed version is in
//! force; one started without waits for it ([`Managed::waiting`] hands the shared state to
//! `main` once it exists).

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};

use sluice_proto::control::v1::{ConfigError, ConfigSnapshot};

use crate::agent::{Apply, UsageSource};
use crate::apply::{self, ApplyError, HostLocal, Pushed, PushedKey};
use crate::server::Shared;
use crate::telemetry::UsageMap;

/// The gateway side of the agent.
pub struct Managed {
    host: HostLocal,
    shared: OnceLock<Arc<Shared>>,
    /// Where the first pushed version's shared state goes, for a node that waited for it.
    first: Mutex<Option<mpsc::Sender<Arc<Shared>>>>,
    pushed: AtomicBool,
}

impl Managed {
    /// A node already serving a local file (`shared`) with its `host` settings.
    pub fn serving(shared: Arc<Shared>, host: HostLocal) -> Arc<Self> {
        shared.metrics.count_usage();
        Arc::new(Self {
            host,
            shared: OnceLock::from(shared),
            first: Mutex::new(None),
            pushed: AtomicBool::new(false),
        })
    }

    /// A node with nothing to serve until the first version arrives; the receiver gets the
    /// shared state serving it.
    pub fn waiting(host: HostLocal) -> (Arc<Self>, mpsc::Receiver<Arc<Shared>>) {
        let (tx, rx) = mpsc::channel();
        let managed = Arc::new(Self {
            host,
            shared: OnceLock::new(),
            first: Mutex::new(Some(tx)),
            pushed: AtomicBool::new(false),
        });
        (managed, rx)
    }

    /// The shared state serving this node, once there is one.
    pub fn shared(&self) -> Option<Arc<Shared>> {
        self.shared.get().cloned()
    }

    /// Whether a version from the control plane is in force (from then on the local file is
    /// not reloaded: it would undo the pushed version).
    pub fn pushed(&self) -> bool {
        self.pushed.load(Ordering::Acquire)
    }
}

impl UsageSource for Managed {
    fn take_usage(&self) -> UsageMap<Arc<str>> {
        self.shared
            .get()
            .map(|shared| shared.metrics.take_usage())
            .unwrap_or_default()
    }
}

impl Apply for Managed {
    fn apply(&self, snapshot: &ConfigSnapshot) -> Result<(), Vec<ConfigError>> {
        let source = if snapshot.source.is_empty() {
            "control-plane"
        } else {
            snapshot.source.as_str()
        };
        let name = Path::new(source);
        let weights: Vec<(String, String, u32)> = snapshot
            .weight_overrides
            .iter()
            .map(|w| (w.backend.clone(), w.deployment.clone(), w.weight))
            .collect();
        let keys: Vec<PushedKey> = snapshot
            .subscription_keys
            .iter()
            .filter_map(|k| {
                let sha256 = <[u8; 32]>::try_from(k.sha256.as_slice()).ok()?;
                Some(PushedKey {
                    id: k.key_id.clone(),
                    subscription: k.subscription.clone(),
                    sha256,
                    revoked: k.revoked,
                })
            })
            .collect();
        let Ok(text) = std::str::from_utf8(&snapshot.toml) else {
            return Err(vec![ConfigError {
                file: source.to_string(),
                field: "(document)".into(),
                message: "the pushed document is not UTF-8 text".into(),
                ..ConfigError::default()
            }]);
        };
        let pushed = Pushed {
            name,
            version: snapshot.version,
            keys: &keys,
            text,
            drained: &snapshot.drained_backends,
            weights: &weights,
        };
        let reason = format!("control plane version {}", snapshot.version);
        let outcome = match self.shared.get() {
            Some(shared) => {
                let outcome = apply::apply_pushed(shared, pushed, &self.host, &reason);
                let counter = match outcome {
                    Ok(()) => &shared.metrics.reloads_ok,
                    Err(_) => &shared.metrics.reloads_failed,
                };
                counter.fetch_add(1, Ordering::Relaxed);
                outcome
            }
            None => apply::start_pushed(pushed, &self.host).map(|shared| {
                // Before `main` starts the workers on it.
                shared.metrics.count_usage();
                let _ = self.shared.set(shared.clone());
                let first = self
                    .first
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .take();
                if let Some(first) = first {
                    let _ = first.send(shared);
                }
            }),
        };
        match outcome {
            Ok(()) => {
                self.pushed.store(true, Ordering::Release);
                Ok(())
            }
            Err(ApplyError::Config(errors)) => {
                tracing::error!(
                    version = snapshot.version,
                    "control-plane config refused:\n{errors}"
                );
                Err(errors
                    .0
                    .iter()
                    .map(|e| ConfigError {
                        file: e.file.display().to_string(),
                        line: u32::try_from(e.line).unwrap_or(u32::MAX),
                        column: u32::try_from(e.column).unwrap_or(u32::MAX),
                        field: e.field.clone(),
                        message: e.message.clone(),
                    })
                    .collect())
            }
            Err(e) => {
                tracing::error!(
                    version = snapshot.version,
                    "control-plane config refused: {e}"
                );
                Err(vec![ConfigError {
                    file: source.to_string(),
                    field: "(node)".into(),
                    message: e.to_string(),
                    ..ConfigError::default()
                }])
            }
        }
    }
}
