//! The gRPC services over the control plane's state: `ConfigService` (Apply, Get, Diff for
//! operators; Watch and Ack for nodes) and `NodeService` (Register for nodes, List for
//! operators).
//!
//! [`ControlPlane`] holds the state ([`Desired`], [`Fleet`]) behind one mutex that is never
//! held across an await, writes each change to the [`Store`] before anyone hears of it, and
//! publishes the current snapshot on a `tokio::sync::watch` channel: each node's Watch stream
//! reads it, so a node that falls behind sees only the newest version.

use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use sluice_proto::control::v1::apply_response::Outcome;
use sluice_proto::control::v1::backend_service_server::BackendService;
use sluice_proto::control::v1::config_service_server::ConfigService;
use sluice_proto::control::v1::node_service_server::NodeService;
use sluice_proto::control::v1::{
    AckRequest, AckResponse, Applied, ApplyRequest, ApplyResponse, BackendState, ConfigErrors,
    ConfigSnapshot, ConfigVersion, DiffRequest, DiffResponse, DrainBackendRequest,
    ForgetNodeRequest, ForgetNodeResponse, GetConfigRequest, GetConfigResponse,
    ListBackendsRequest, ListBackendsResponse, ListNodesRequest, ListNodesResponse, NodeState,
    PoolWeight, RegisterNodeRequest, RegisterNodeResponse, SetWeightRequest, UndrainBackendRequest,
    WatchRequest,
};
use tokio::sync::watch;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use crate::admin::{ApplyOutcome, Metrics};
use crate::auth::{Caller, Tokens};
use crate::catalog::Catalog;
use crate::source::{Document, MAX_DOCUMENT_BYTES};
use crate::state::{Change, Desired, Fleet};
use crate::store::{Store, StoreError};

/// The longest node id accepted, in bytes.
const MAX_NODE_ID: usize = 128;

/// What the control plane is: its state, its database and the channel nodes watch.
pub struct ControlPlane {
    state: Mutex<State>,
    store: Mutex<Store>,
    /// A connection of its own for usage telemetry: a long ingest or query never holds the
    /// lock that ACKs, registrations and operator changes take.
    usage_store: Mutex<Store>,
    snapshots: watch::Sender<Option<Arc<ConfigSnapshot>>>,
    /// Set once at shutdown: every Watch stream ends, so the server's graceful stop does
    /// not wait on streams that never end by themselves.
    closing: watch::Sender<bool>,
    pub(crate) tokens: Tokens,
    /// What `/metrics` shows.
    pub metrics: Metrics,
    /// Usage telemetry: stored marks, the writer's queue, the live window.
    pub telemetry: crate::usage::Telemetry,
}

struct State {
    desired: Desired,
    fleet: Fleet,
}

/// The outcome of checking and applying one document.
#[derive(Debug)]
pub enum Verdict {
    /// Now the running config under `version` (`unchanged`: it already was).
    Applied {
        /// The version carrying the document.
        version: u64,
        /// Whether it was already the running document.
        unchanged: bool,
        /// What this host found that only nodes can judge.
        host_warnings: Vec<sluice::config::ConfigError>,
    },
    /// Refused: every error in the document.
    Refused(sluice::config::ConfigErrors),
}

/// A watched path as the state database names it: absolute (the same file whatever the
/// working directory), as given when it cannot be resolved.
fn watched_key(path: &Path) -> String {
    std::fs::canonicalize(path)
        .unwrap_or_else(|_| path.to_path_buf())
        .to_string_lossy()
        .into_owned()
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A config error as the API carries it.
pub fn to_proto(e: &sluice::config::ConfigError) -> sluice_proto::control::v1::ConfigError {
    let n = |v: usize| u32::try_from(v).unwrap_or(u32::MAX);
    sluice_proto::control::v1::ConfigError {
        file: e.file.display().to_string(),
        line: n(e.line),
        column: n(e.column),
        field: e.field.clone(),
        message: e.message.clone(),
    }
}

impl ControlPlane {
    /// Opens the state in `state_dir` and serves its newest version.
    pub fn open(state_dir: &Path, tokens: Tokens) -> Result<Arc<Self>, StoreError> {
        let store = Store::open(state_dir)?;
        let desired = store.latest()?;
        let fleet = store.fleet()?;
        let usage_store = Store::open(state_dir)?;
        let marks = usage_store.telemetry_marks()?;
        let (snapshots, _) = watch::channel(desired.snapshot().map(Arc::new));
        Ok(Arc::new(Self {
            state: Mutex::new(State { desired, fleet }),
            store: Mutex::new(store),
            usage_store: Mutex::new(usage_store),
            snapshots,
            closing: watch::channel(false).0,
            tokens,
            metrics: Metrics::default(),
            telemetry: crate::usage::Telemetry::new(marks),
        }))
    }

    /// The `/metrics` text: the version, nodes by state, push latency, applies.
    pub fn render_metrics(&self) -> String {
        let (version, states, connected) = {
            let state = lock(&self.state);
            let version = state.desired.version;
            let mut states = [0i64; 3];
            let mut connected = 0;
            for node in state.fleet.list(version) {
                let slot = match NodeState::try_from(node.state) {
                    Ok(NodeState::Ack) => 0,
                    Ok(NodeState::Nack) => 1,
                    _ => 2,
                };
                states[slot] += 1;
                connected += i64::from(node.connected);
            }
            (version, states, connected)
        };
        self.metrics.render(version, states, connected)
    }

    /// Resolves once [`ControlPlane::close`] was called: long-lived streams end with it, so
    /// a graceful stop does not wait on streams that never end by themselves.
    pub fn closed(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut closing = self.closing.subscribe();
        async move {
            let _ = closing.wait_for(|closing| *closing).await;
        }
    }

    /// Ends every Watch, Report and Top stream (now and to come): the first step of a
    /// shutdown.
    pub fn close(&self) {
        self.closing.send_replace(true);
    }

    /// The version nodes should run now (0: none yet).
    pub fn current_version(&self) -> u64 {
        lock(&self.state).desired.version
    }

    /// The SHA-256 (hex) of the text last read from the watched config `path` (by this state
    /// directory, across restarts); `None` when never read or the database failed (then the
    /// path is applied again, which at worst makes no new version).
    pub fn watched(&self, path: &Path) -> Option<String> {
        match lock(&self.store).watched(&watched_key(path)) {
            Ok(digest) => digest,
            Err(e) => {
                tracing::error!("{e}");
                None
            }
        }
    }

    /// Records `digest` as the text last read from the watched config `path`.
    pub fn set_watched(&self, path: &Path, digest: &str) {
        if let Err(e) = lock(&self.store).set_watched(&watched_key(path), digest) {
            tracing::error!("{e}");
        }
    }

    /// The usage telemetry's connection to the state database (off the async threads).
    pub fn usage_store(&self) -> MutexGuard<'_, Store> {
        lock(&self.usage_store)
    }

    /// The running version and its overlays.
    pub fn desired(&self) -> Desired {
        lock(&self.state).desired.clone()
    }

    /// The document of the running version, if any.
    pub fn current_document(&self) -> Option<Document> {
        lock(&self.state).desired.document.clone()
    }

    /// Checks `document` with the data plane's compiler (off the async threads: it may
    /// resolve host names) and, when it has no document errors, makes it the running config.
    pub async fn apply_document(&self, document: Document) -> Result<Verdict, Status> {
        let checked = check(&document).await?;
        let host_warnings = match checked {
            Ok(warnings) => warnings,
            Err(errors) => {
                self.metrics.applied(ApplyOutcome::Refused);
                return Ok(Verdict::Refused(errors));
            }
        };
        let (desired, made) = self.commit(Change::Document(document), |_| Ok(()))?;
        self.metrics.applied(if made {
            ApplyOutcome::Applied
        } else {
            ApplyOutcome::Unchanged
        });
        Ok(Verdict::Applied {
            version: desired.version,
            unchanged: !made,
            host_warnings,
        })
    }

    /// Puts `change` in force when it changes anything: checked by `accept` against the
    /// state it applies to, stored, then pushed to every node. Returns the state now running
    /// and whether `change` made it.
    pub(crate) fn commit(
        &self,
        change: Change,
        accept: impl FnOnce(&Desired) -> Result<(), Status>,
    ) -> Result<(Desired, bool), Status> {
        let mut state = lock(&self.state);
        accept(&state.desired)?;
        let Some(next) = state.desired.apply(change, SystemTime::now()) else {
            return Ok((state.desired.clone(), false));
        };
        lock(&self.store)
            .insert(&next)
            .map_err(|e| Status::internal(e.to_string()))?;
        self.snapshots.send_replace(next.snapshot().map(Arc::new));
        state.desired = next.clone();
        drop(state);
        tracing::info!(version = next.version, "config version made");
        Ok((next, true))
    }

    /// An operator overlay on backend `name` (see [`Change`]): NOT_FOUND for a backend (or a
    /// pool) the running document does not declare, FAILED_PRECONDITION before any document,
    /// INVALID_ARGUMENT for a weight of 0. Returns the backend's state after it.
    pub fn overlay(&self, name: &str, change: Change) -> Result<BackendState, Status> {
        let accept = |desired: &Desired| {
            let document = desired
                .document
                .as_ref()
                .ok_or_else(|| Status::failed_precondition("no config applied yet"))?;
            let catalog = Catalog::of(&document.toml);
            if !catalog.has_backend(name) {
                return Err(Status::not_found(format!(
                    "no backend `{name}` in the running config (version {})",
                    desired.version
                )));
            }
            if let Change::Weight {
                deployment, weight, ..
            } = &change
            {
                if *weight == Some(0) {
                    return Err(Status::invalid_argument(
                        "a weight is at least 1: to take a backend out, drain it",
                    ));
                }
                if !deployment.is_empty() && !catalog.in_pool(name, deployment) {
                    return Err(Status::not_found(format!(
                        "deployment `{deployment}` has no backend `{name}` in its pool"
                    )));
                }
            }
            Ok(())
        };
        let (desired, _) = self.commit(change.clone(), accept)?;
        Ok(backend_state(&desired, name))
    }

    /// Every backend of the running document with its overlays, in document order.
    pub fn backends(&self) -> Vec<BackendState> {
        let desired = lock(&self.state).desired.clone();
        let names: Vec<String> = desired
            .document
            .as_ref()
            .map(|d| {
                Catalog::of(&d.toml)
                    .backends
                    .into_iter()
                    .map(|(n, _)| n)
                    .collect()
            })
            .unwrap_or_default();
        names.iter().map(|n| backend_state(&desired, n)).collect()
    }

    fn fleet_change(&self, id: &str, change: impl FnOnce(&mut Fleet)) -> Result<(), Status> {
        let mut state = lock(&self.state);
        change(&mut state.fleet);
        if let Some(node) = state.fleet.nodes.get(id) {
            lock(&self.store)
                .save_node(id, node)
                .map_err(|e| Status::internal(e.to_string()))?;
        }
        Ok(())
    }
}

/// Backend `name` as `desired` has it: kind, drained, and its weight in each pool.
fn backend_state(desired: &Desired, name: &str) -> BackendState {
    let catalog = desired
        .document
        .as_ref()
        .map(|d| Catalog::of(&d.toml))
        .unwrap_or_default();
    let kind = catalog
        .backends
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, k)| k.clone())
        .unwrap_or_default();
    let pools = catalog
        .places
        .iter()
        .filter(|p| p.backend == name)
        .map(|p| PoolWeight {
            deployment: p.deployment.clone(),
            configured_weight: p.weight,
            weight: desired.overlays.weight(name, &p.deployment, p.weight),
            priority: p.priority,
        })
        .collect();
    BackendState {
        name: name.to_string(),
        kind,
        drained: desired.overlays.drained.contains(name),
        pools,
        version: desired.version,
        ..BackendState::default()
    }
}

/// [`sluice::config::check_document`] on a blocking thread.
async fn check(
    document: &Document,
) -> Result<Result<Vec<sluice::config::ConfigError>, sluice::config::ConfigErrors>, Status> {
    let (source, toml) = (document.source.clone(), document.toml.clone());
    tokio::task::spawn_blocking(move || sluice::config::check_document(Path::new(&source), &toml))
        .await
        .map_err(|e| Status::internal(format!("config check failed: {e}")))
}

/// A node id: 1 to 128 bytes with no control characters.
pub(crate) fn check_node_id(id: &str) -> Result<(), Status> {
    if id.is_empty() || id.len() > MAX_NODE_ID || id.chars().any(char::is_control) {
        return Err(Status::invalid_argument(format!(
            "node_id must be 1 to {MAX_NODE_ID} bytes with no control characters"
        )));
    }
    Ok(())
}

fn check_document_size(toml: &str) -> Result<(), Status> {
    if toml.len() > MAX_DOCUMENT_BYTES {
        return Err(Status::invalid_argument(format!(
            "the document is {} bytes: more than the {MAX_DOCUMENT_BYTES} a config document may hold",
            toml.len()
        )));
    }
    Ok(())
}

/// The gRPC face of a [`ControlPlane`].
#[derive(Clone)]
pub struct Api(pub Arc<ControlPlane>);

/// Marks a node's Watch stream closed when the stream is dropped (the node hung up or the
/// connection died).
struct WatchGuard {
    control: Arc<ControlPlane>,
    node_id: String,
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        let now = SystemTime::now();
        lock(&self.control.state)
            .fleet
            .watching(&self.node_id, false, now);
    }
}

type SnapshotStream = Pin<Box<dyn Stream<Item = Result<ConfigSnapshot, Status>> + Send>>;

#[tonic::async_trait]
impl ConfigService for Api {
    async fn apply(
        &self,
        request: Request<ApplyRequest>,
    ) -> Result<Response<ApplyResponse>, Status> {
        self.0.tokens.check(Caller::Operator, request.metadata())?;
        let ApplyRequest {
            toml,
            source,
            git_commit,
        } = request.into_inner();
        check_document_size(&toml)?;
        let source = if source.is_empty() {
            "sluicectl".to_string()
        } else {
            source
        };
        let outcome = match self
            .0
            .apply_document(Document {
                toml,
                source,
                git_commit,
            })
            .await?
        {
            Verdict::Applied {
                version,
                unchanged,
                host_warnings,
            } => Outcome::Applied(Applied {
                version,
                unchanged,
                host_warnings: host_warnings.iter().map(to_proto).collect(),
            }),
            Verdict::Refused(errors) => Outcome::Rejected(ConfigErrors {
                errors: errors.0.iter().map(to_proto).collect(),
            }),
        };
        Ok(Response::new(ApplyResponse {
            outcome: Some(outcome),
        }))
    }

    async fn get(
        &self,
        request: Request<GetConfigRequest>,
    ) -> Result<Response<GetConfigResponse>, Status> {
        self.0.tokens.check(Caller::Operator, request.metadata())?;
        let wanted = request.into_inner().version;
        let desired = if wanted == 0 {
            lock(&self.0.state).desired.clone()
        } else {
            lock(&self.0.store)
                .version(wanted)
                .map_err(|e| Status::internal(e.to_string()))?
                .ok_or_else(|| Status::not_found(format!("no version {wanted}")))?
        };
        let Some(document) = desired.document else {
            return Err(Status::not_found("no config applied yet"));
        };
        let drained_backends = desired.overlays.drained.iter().cloned().collect();
        let weight_overrides = desired.overlays.weight_overrides();
        Ok(Response::new(GetConfigResponse {
            version: Some(ConfigVersion {
                version: desired.version,
                git_commit: document.git_commit,
                source: document.source,
                created_at: Some(desired.created_at.into()),
            }),
            toml: document.toml,
            drained_backends,
            weight_overrides,
            subscription_keys: desired
                .overlays
                .keys
                .iter()
                .map(|(id, key)| crate::keys::key_info(id, key))
                .collect(),
        }))
    }

    async fn diff(&self, request: Request<DiffRequest>) -> Result<Response<DiffResponse>, Status> {
        self.0.tokens.check(Caller::Operator, request.metadata())?;
        let DiffRequest { toml, source } = request.into_inner();
        check_document_size(&toml)?;
        let source = if source.is_empty() {
            "sluicectl".to_string()
        } else {
            source
        };
        let proposed = Document {
            toml,
            source,
            git_commit: String::new(),
        };
        let errors = match check(&proposed).await? {
            Ok(_) => Vec::new(),
            Err(errors) => errors.0.iter().map(to_proto).collect(),
        };
        let (running_version, running) = {
            let state = lock(&self.0.state);
            let text = state.desired.document.as_ref().map(|d| d.toml.clone());
            (state.desired.version, text.unwrap_or_default())
        };
        let diff = similar::TextDiff::from_lines(&running, &proposed.toml);
        let (mut lines_added, mut lines_removed) = (0u32, 0u32);
        for change in diff.iter_all_changes() {
            match change.tag() {
                similar::ChangeTag::Insert => lines_added += 1,
                similar::ChangeTag::Delete => lines_removed += 1,
                similar::ChangeTag::Equal => {}
            }
        }
        let unified_diff = if lines_added + lines_removed == 0 {
            String::new()
        } else {
            diff.unified_diff()
                .context_radius(3)
                .header(
                    &format!("running (version {running_version})"),
                    &format!("proposed ({})", proposed.source),
                )
                .to_string()
        };
        Ok(Response::new(DiffResponse {
            running_version,
            errors,
            lines_added,
            lines_removed,
            unified_diff,
        }))
    }

    type WatchStream = SnapshotStream;

    async fn watch(
        &self,
        request: Request<WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        self.0.tokens.check(Caller::Node, request.metadata())?;
        let WatchRequest {
            node_id,
            running_version,
            rejected_version,
        } = request.into_inner();
        check_node_id(&node_id)?;
        lock(&self.0.state)
            .fleet
            .watching(&node_id, true, SystemTime::now());
        let guard = WatchGuard {
            control: self.0.clone(),
            node_id,
        };
        let stream = tokio_stream::wrappers::WatchStream::new(self.0.snapshots.subscribe())
            .filter_map(move |snapshot| {
                let _open = &guard;
                let snapshot = snapshot?;
                // What the node runs or already refused needs no sending; every newer
                // version does.
                if snapshot.version == running_version || snapshot.version == rejected_version {
                    return None;
                }
                Some(Ok(ConfigSnapshot::clone(&snapshot)))
            });
        let stream = futures_util::StreamExt::take_until(stream, self.0.closed());
        Ok(Response::new(Box::pin(stream)))
    }

    async fn ack(&self, request: Request<AckRequest>) -> Result<Response<AckResponse>, Status> {
        self.0.tokens.check(Caller::Node, request.metadata())?;
        let AckRequest {
            node_id,
            version,
            accepted,
            errors,
        } = request.into_inner();
        check_node_id(&node_id)?;
        let current = self.0.current_version();
        if version == 0 || version > current {
            // Not recorded (a node's state must name a version that exists), and not an
            // error: a node repeating its last answer to a control plane whose state was
            // started afresh must still get to watch.
            tracing::warn!(node = %node_id, version, current, "answer to a version never made ignored");
            return Ok(Response::new(AckResponse {}));
        }
        if accepted {
            tracing::info!(node = %node_id, version, "node runs the version (ACK)");
        } else {
            tracing::warn!(node = %node_id, version, errors = errors.len(), "node refused the version (NACK)");
        }
        let now = SystemTime::now();
        {
            let state = lock(&self.0.state);
            if state.desired.version == version {
                // From the version's making, or the node's connecting when later: a node
                // that joins an hour after a version was made did not wait an hour for it.
                let connected = state
                    .fleet
                    .nodes
                    .get(&node_id)
                    .and_then(|n| n.watching_since);
                let from = connected.map_or(state.desired.created_at, |c| {
                    c.max(state.desired.created_at)
                });
                let since = now.duration_since(from).unwrap_or_default();
                self.0.metrics.answered(since.as_secs_f64());
            }
        }
        self.0.fleet_change(&node_id, |fleet| {
            fleet.answer(&node_id, version, accepted, errors, now);
        })?;
        Ok(Response::new(AckResponse {}))
    }
}

#[tonic::async_trait]
impl NodeService for Api {
    async fn register(
        &self,
        request: Request<RegisterNodeRequest>,
    ) -> Result<Response<RegisterNodeResponse>, Status> {
        self.0.tokens.check(Caller::Node, request.metadata())?;
        let RegisterNodeRequest {
            node_id,
            hostname,
            build_version,
            running_version,
        } = request.into_inner();
        check_node_id(&node_id)?;
        for (field, value) in [("hostname", &hostname), ("build_version", &build_version)] {
            if value.len() > MAX_NODE_ID || value.chars().any(char::is_control) {
                return Err(Status::invalid_argument(format!(
                    "{field} must be at most {MAX_NODE_ID} bytes with no control characters"
                )));
            }
        }
        self.0.fleet_change(&node_id, |fleet| {
            fleet.register(
                &node_id,
                &hostname,
                &build_version,
                running_version,
                SystemTime::now(),
            );
        })?;
        Ok(Response::new(RegisterNodeResponse {
            node_id,
            current_version: self.0.current_version(),
        }))
    }

    async fn list(
        &self,
        request: Request<ListNodesRequest>,
    ) -> Result<Response<ListNodesResponse>, Status> {
        self.0.tokens.check(Caller::Operator, request.metadata())?;
        let state = lock(&self.0.state);
        Ok(Response::new(ListNodesResponse {
            nodes: state.fleet.list(state.desired.version),
        }))
    }

    async fn forget(
        &self,
        request: Request<ForgetNodeRequest>,
    ) -> Result<Response<ForgetNodeResponse>, Status> {
        self.0.tokens.check(Caller::Operator, request.metadata())?;
        let id = request.into_inner().node_id;
        let mut state = lock(&self.0.state);
        match state.fleet.nodes.get(&id) {
            None => return Err(Status::not_found(format!("no node `{id}`"))),
            Some(node) if node.watching > 0 => {
                return Err(Status::failed_precondition(format!(
                    "node `{id}` is connected: stop it first"
                )))
            }
            Some(_) => {}
        }
        lock(&self.0.store)
            .forget_node(&id)
            .map_err(|e| Status::internal(e.to_string()))?;
        state.fleet.nodes.remove(&id);
        tracing::info!(node = %id, "node forgotten");
        Ok(Response::new(ForgetNodeResponse {}))
    }
}

#[tonic::async_trait]
impl BackendService for Api {
    async fn drain(
        &self,
        request: Request<DrainBackendRequest>,
    ) -> Result<Response<BackendState>, Status> {
        self.0.tokens.check(Caller::Operator, request.metadata())?;
        let name = request.into_inner().name;
        let state = self.0.overlay(&name, Change::Drain(name.clone()))?;
        tracing::info!(backend = %name, version = state.version, "backend drained");
        Ok(Response::new(state))
    }

    async fn undrain(
        &self,
        request: Request<UndrainBackendRequest>,
    ) -> Result<Response<BackendState>, Status> {
        self.0.tokens.check(Caller::Operator, request.metadata())?;
        let name = request.into_inner().name;
        let state = self.0.overlay(&name, Change::Undrain(name.clone()))?;
        tracing::info!(backend = %name, version = state.version, "backend undrained");
        Ok(Response::new(state))
    }

    async fn set_weight(
        &self,
        request: Request<SetWeightRequest>,
    ) -> Result<Response<BackendState>, Status> {
        self.0.tokens.check(Caller::Operator, request.metadata())?;
        let SetWeightRequest {
            name,
            deployment,
            weight,
        } = request.into_inner();
        let change = Change::Weight {
            backend: name.clone(),
            deployment,
            weight,
        };
        Ok(Response::new(self.0.overlay(&name, change)?))
    }

    async fn list(
        &self,
        request: Request<ListBackendsRequest>,
    ) -> Result<Response<ListBackendsResponse>, Status> {
        self.0.tokens.check(Caller::Operator, request.metadata())?;
        Ok(Response::new(ListBackendsResponse {
            backends: self.0.backends(),
        }))
    }
}
