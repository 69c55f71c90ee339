//! One way to put a config in force — at start-up, on a file reload (SIGHUP or the file
//! poll) and from the control-plane agent ([`crate::agent`], a pushed document with the
//! node's [`HostLocal`] settings kept): compile, build the runtime with deliberate carry-over
//! from the running config, start its side threads, swap, log one line.
//!
//! What a new config takes over from the running one, and where that is decided:
//! - limiter state (buckets, quota counts): nothing to do — it lives in
//!   [`crate::policy::admission::SharedLimits`] for the life of the process, keyed by each
//!   limit's [`crate::snapshot::access::Limit::id`], which stays the same while the limit's
//!   owner, name and definition do;
//! - backend health (cool-downs): [`crate::config::load`] hands a backend that keeps its
//!   name, kind and target the running one's [`crate::health::BackendHealth`];
//! - smooth weighted round-robin cursors: per worker, kept for every deployment whose pool
//!   is unchanged (the worker compares pools when it picks up the new snapshot);
//! - the audit log: [`prepare`] keeps the running [`Recorder`] (queue, writer, open files)
//!   when `[audit]` is unchanged; a changed one starts anew and the old drains;
//! - JWKS key sets and their refresh threads: [`AccessRuntime::build`] takes over the cache
//!   and thread of every JWKS URL configured the same way, so tokens signed by keys already
//!   fetched keep passing with no refetch; only new or changed URLs start a thread.
//!
//! Requests in flight finish on the config they started with. A config that does not
//! compile or build changes nothing: the running one keeps serving.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use crate::audit::Recorder;
use crate::auth::keys::{KeyEntry, SubscriptionId};
use crate::config::{self, ConfigErrors};
use crate::policy::AccessRuntime;
use crate::server::{Loaded, Shared};
use crate::snapshot::access::KeyDigest;
use crate::snapshot::Snapshot;
use crate::tls::server::ServerTls;

/// Why a config was not put in force.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The config is wrong: every problem, each with its file, line and field (what a
    /// control-plane node NACKs with).
    #[error("{0}")]
    Config(#[from] ConfigErrors),
    /// A side thread (a JWKS refresher, a health check) could not be started: the machine,
    /// not the config.
    #[error("cannot start a side thread: {0}")]
    Start(#[from] std::io::Error),
    /// The audit log could not be opened (a sink's file or database, named) or its threads
    /// started.
    #[error("cannot start the audit log: {0}")]
    Audit(std::io::Error),
}

/// Compiles the file at `path` and builds its runtime, carrying over from `running` (the
/// config in force; `None` at start-up) what did not change. Starts no thread and serves
/// nothing: `sluice --check` stops here.
pub fn prepare(path: &Path, running: Option<&Loaded>) -> Result<Loaded, ConfigErrors> {
    let snapshot = config::load(path, running.map(|r| &r.snapshot))?;
    build(snapshot, running)
}

/// What a node managed by a control plane keeps from its own host whatever document is
/// pushed to it: where it listens (plain and TLS, with the TLS certificates), how many
/// workers it runs, and its admin listener. They come from its command line or its local
/// config file, never from the pushed document.
#[derive(Clone, Debug, Default)]
pub struct HostLocal {
    /// Plain listeners.
    pub listen: Vec<SocketAddr>,
    /// TLS listeners.
    pub tls_listen: Vec<SocketAddr>,
    /// `[server.tls]` for the TLS listeners.
    pub tls: Option<Arc<ServerTls>>,
    /// Worker threads (`None`: one per core).
    pub workers: Option<usize>,
    /// The admin listener (`None`: none).
    pub admin_listen: Option<SocketAddr>,
}

impl HostLocal {
    /// The host-local settings of a compiled local config.
    pub fn of(snapshot: &Snapshot) -> Self {
        Self {
            listen: snapshot.server.listen.clone(),
            tls_listen: snapshot.server.tls_listen.clone(),
            tls: snapshot.server.tls.clone(),
            workers: snapshot.server.workers,
            admin_listen: snapshot.admin_listen,
        }
    }

    fn impose(&self, snapshot: &mut Snapshot) {
        snapshot.server.listen.clone_from(&self.listen);
        snapshot.server.tls_listen.clone_from(&self.tls_listen);
        snapshot.server.tls.clone_from(&self.tls);
        snapshot.server.workers = self.workers;
        snapshot.admin_listen = self.admin_listen;
    }
}

/// A document a control plane pushed, with the operator's overlays on it.
#[derive(Debug, Clone, Copy)]
pub struct Pushed<'a> {
    /// Names the document in errors: the source it was applied from (an assembled folder's
    /// errors name its files).
    pub name: &'a Path,
    /// The control plane's version number for it.
    pub version: u64,
    /// The TOML text.
    pub text: &'a str,
    /// Backends an operator drained: taken out of every pool (a pool left empty answers
    /// 503, no backend). Names the document does not declare are ignored.
    pub drained: &'a [String],
    /// Operator weights: `(backend, deployment, weight)`, an empty deployment meaning every
    /// pool the backend is in; one for the pool itself wins.
    pub weights: &'a [(String, String, u32)],
    /// Subscription keys made by the control plane (`sluicectl keys create`), added to the
    /// document's own. A key of a subscription the document does not declare, or whose
    /// digest the document already lists, is left out.
    pub keys: &'a [PushedKey],
}

/// A subscription key made by the control plane: its SHA-256, never the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushedKey {
    /// The key's id (for logs).
    pub id: String,
    /// The subscription it authenticates as.
    pub subscription: String,
    /// SHA-256 of the key's bytes.
    pub sha256: [u8; 32],
    /// Revoked: recognised, and refused as revoked (401).
    pub revoked: bool,
}

impl Pushed<'_> {
    /// Adds the control plane's subscription keys to the document's.
    fn impose_keys(&self, snapshot: &mut Snapshot) {
        let access = &mut snapshot.access;
        for key in self.keys {
            let Some(index) = access
                .subscriptions
                .iter()
                .position(|s| s.name == key.subscription)
            else {
                tracing::warn!(key_id = %key.id, subscription = %key.subscription, "a pushed key's subscription is not in the document; key left out");
                continue;
            };
            let Ok(id) = u32::try_from(index) else {
                continue;
            };
            let entry = KeyEntry {
                hash: key.sha256,
                subscription: SubscriptionId(id),
                revoked: key.revoked,
            };
            if access.keys.insert(entry).is_err() {
                tracing::warn!(key_id = %key.id, "a pushed key's digest is already in the document; key left out");
                continue;
            }
            let subscription = &mut access.subscriptions[index];
            let list = if key.revoked {
                &mut subscription.revoked_keys
            } else {
                &mut subscription.keys
            };
            list.push(KeyDigest(key.sha256));
        }
    }

    /// Takes drained backends out of every pool and sets the operators' weights.
    fn impose_overlays(&self, snapshot: &mut Snapshot) {
        let backends = &snapshot.backends;
        let name_of = |id: usize| backends.get(id).map_or("", |b| b.name.as_str());
        for deployment in snapshot.deployments.values_mut() {
            deployment
                .pool
                .retain(|m| !self.drained.iter().any(|d| d == name_of(m.backend)));
            for member in &mut deployment.pool {
                let backend = name_of(member.backend);
                let weight = |pool: &str| {
                    self.weights
                        .iter()
                        .find(|(b, d, _)| b == backend && d == pool)
                        .map(|&(_, _, w)| w)
                };
                if let Some(w) = weight(&deployment.name).or_else(|| weight("")) {
                    member.weight = w.max(1);
                }
            }
        }
    }
}

/// Compiles a document pushed by a control plane with this host's environment, keeps
/// `host`'s settings over the document's, applies the operator's overlays, and builds its
/// runtime with carry-over from `running`.
pub fn prepare_pushed(
    pushed: Pushed<'_>,
    host: &HostLocal,
    running: Option<&Loaded>,
) -> Result<Loaded, ConfigErrors> {
    let mut snapshot = config::load_str(
        pushed.name,
        pushed.text,
        &|var| std::env::var(var).ok(),
        running.map(|r| &r.snapshot),
    )?;
    host.impose(&mut snapshot);
    pushed.impose_overlays(&mut snapshot);
    pushed.impose_keys(&mut snapshot);
    let mut loaded = build(snapshot, running)?;
    loaded.control_version = Some(pushed.version);
    Ok(loaded)
}

/// The runtime of a compiled snapshot, with carry-over from `running`.
fn build(snapshot: Snapshot, running: Option<&Loaded>) -> Result<Loaded, ConfigErrors> {
    let runtime = AccessRuntime::build(&snapshot, running.map(|r| &r.runtime))?;
    // The running audit log goes on when `[audit]` is unchanged; otherwise `start` opens a
    // new one and the old drains when its last request completes.
    let audit = running
        .and_then(|r| r.audit.as_ref())
        .filter(|a| snapshot.audit.as_ref() == Some(a.settings()))
        .cloned();
    Ok(Loaded {
        snapshot,
        runtime,
        audit,
        loaded_at: std::time::SystemTime::now(),
        control_version: None,
        health_checks: None,
    })
}

/// Starts what `loaded` needs that `prepare` does not start: the JWKS refreshers, the
/// backends' health checks and the audit log (its files opened, its threads started),
/// unless carried over.
fn start_runtime(loaded: &mut Loaded) -> Result<(), ApplyError> {
    loaded.runtime.start()?;
    loaded.health_checks = crate::health_check::HealthCheckers::start(&loaded.snapshot)?;
    if let (Some(settings), None) = (&loaded.snapshot.audit, &loaded.audit) {
        loaded.audit = Some(Recorder::start(settings).map_err(ApplyError::Audit)?);
    }
    Ok(())
}

/// Start-up: prepares the file with nothing to carry over, starts its side threads and
/// returns the shared state serving it (workers start on it next).
pub fn start(path: &Path) -> Result<Arc<Shared>, ApplyError> {
    start_with(prepare(path, None)?, path)
}

/// Start-up on a document pushed by a control plane (see [`prepare_pushed`]).
pub fn start_pushed(pushed: Pushed<'_>, host: &HostLocal) -> Result<Arc<Shared>, ApplyError> {
    start_with(prepare_pushed(pushed, host, None)?, pushed.name)
}

fn start_with(mut loaded: Loaded, name: &Path) -> Result<Arc<Shared>, ApplyError> {
    start_runtime(&mut loaded)?;
    tracing::info!(
        deployments = loaded.deployments.len(),
        backends = loaded.backends.len(),
        file = %name.display(),
        "config loaded"
    );
    Ok(Shared::new(loaded))
}

/// A pushed document put in force on a running node (see [`prepare_pushed`]); logs one
/// `config reloaded` line with `reason`. On an error nothing changed.
pub fn apply_pushed(
    shared: &Shared,
    pushed: Pushed<'_>,
    host: &HostLocal,
    reason: &str,
) -> Result<(), ApplyError> {
    let current = shared.snapshot();
    let mut next = prepare_pushed(pushed, host, Some(&current))?;
    start_runtime(&mut next)?;
    swap_in(shared, &current, next, pushed.name, reason);
    Ok(())
}

/// Swaps `next` in for `previous`. The previous config's health checks stop here, not when
/// its last request ends: from now on only the new config's probes decide (a backend whose
/// check was removed is no longer held down by one).
fn swap_in(shared: &Shared, previous: &Loaded, next: Loaded, name: &Path, reason: &str) {
    let deployments = next.deployments.len();
    let backends = next.backends.len();
    if let Some(checks) = &previous.health_checks {
        checks.stop();
    }
    for backend in next.backends.iter().filter(|b| b.health_check.is_none()) {
        backend.health.set_checked_up(true);
    }
    log_caches(previous, &next);
    shared.swap(next);
    tracing::info!(reason, deployments, backends, file = %name.display(), "config reloaded");
}

/// Logs, for each deployment cached before and after a reload, whether its stored answers
/// were kept (`response cache kept`) or dropped (`response cache emptied`: its backends or
/// its cache settings changed; see `config::cache::carry_over`).
fn log_caches(previous: &Loaded, next: &Loaded) {
    for (name, deployment) in &next.deployments {
        let (Some(cache), Some(old)) = (
            &deployment.cache,
            previous
                .deployments
                .get(name)
                .and_then(|d| d.cache.as_ref()),
        ) else {
            continue;
        };
        if Arc::ptr_eq(cache, old) {
            tracing::info!(deployment = %name, entries = cache.len(), "response cache kept");
        } else {
            tracing::info!(
                deployment = %name,
                dropped = old.len(),
                "response cache emptied: the deployment's backends or cache settings changed"
            );
        }
    }
}

/// A config change: prepares the file at `path` with carry-over from the config `shared`
/// serves, starts the side threads it adds, swaps it in for requests that start from now
/// on and logs one `config reloaded` line with `reason`. On an error nothing changed.
///
/// Listen addresses (plain and TLS) and the worker count are fixed at start-up: a change to them is logged
/// and takes effect on restart.
pub fn apply(shared: &Shared, path: &Path, reason: &str) -> Result<(), ApplyError> {
    let current = shared.snapshot();
    let mut next = prepare(path, Some(&current))?;
    start_runtime(&mut next)?;
    if next.server.listen != current.server.listen
        || next.server.tls_listen != current.server.tls_listen
        || next.server.workers != current.server.workers
        || next.admin_listen != current.admin_listen
    {
        tracing::warn!(
            "config reload: listen addresses and worker count change only on restart (listen, tls_listen, [admin] listen, workers); keeping the running ones (a TLS listener the new config has no [server.tls] for closes its connections)"
        );
    }
    // The snapshot says what runs: the admin listener bound at start serves on, so requests
    // go on being counted for it (`Snapshot::serves_metrics`) whatever the file now says.
    next.snapshot.admin_listen = current.admin_listen;
    swap_in(shared, &current, next, path, reason);
    Ok(())
}
