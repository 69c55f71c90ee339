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
use sluice_proto::control::v1::config_service_server::ConfigService;
use sluice_proto::control::v1::node_service_server::NodeService;
use sluice_proto::control::v1::{
    AckRequest, AckResponse, Applied, ApplyRequest, ApplyResponse, ConfigErrors, ConfigSnapshot,
    ConfigVersion, DiffRequest, DiffResponse, GetConfigRequest, GetConfigResponse,
    ListNodesRequest, ListNodesResponse, NodeState, RegisterNodeRequest, RegisterNodeResponse,
    WatchRequest,
};
use tokio::sync::watch;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use crate::admin::{ApplyOutcome, Metrics};
use crate::auth::{Caller, Tokens};
use crate::source::{Document, MAX_DOCUMENT_BYTES};
use crate::state::{Change, Desired, Fleet};
use crate::store::{Store, StoreError};

/// The longest node id accepted, in bytes.
const MAX_NODE_ID: usize = 128;

/// What the control plane is: its state, its database and the channel nodes watch.
pub struct ControlPlane {
    state: Mutex<State>,
    store: Mutex<Store>,
    snapshots: watch::Sender<Option<Arc<ConfigSnapshot>>>,
    /// Set once at shutdown: every Watch stream ends, so the server's graceful stop does
    /// not wait on streams that never end by themselves.
    closing: watch::Sender<bool>,
    tokens: Tokens,
    /// What `/metrics` shows.
    pub metrics: Metrics,
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
        let (snapshots, _) = watch::channel(desired.snapshot().map(Arc::new));
        Ok(Arc::new(Self {
            state: Mutex::new(State { desired, fleet }),
            store: Mutex::new(store),
            snapshots,
            closing: watch::channel(false).0,
            tokens,
            metrics: Metrics::default(),
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

    /// Ends every Watch stream (now and to come): the first step of a shutdown.
    pub fn close(&self) {
        self.closing.send_replace(true);
    }

    /// The version nodes should run now (0: none yet).
    pub fn current_version(&self) -> u64 {
        lock(&self.state).desired.version
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
        let mut state = lock(&self.state);
        let Some(next) = state
            .desired
            .apply(Change::Document(document), SystemTime::now())
        else {
            self.metrics.applied(ApplyOutcome::Unchanged);
            return Ok(Verdict::Applied {
                version: state.desired.version,
                unchanged: true,
                host_warnings,
            });
        };
        lock(&self.store)
            .insert(&next)
            .map_err(|e| Status::internal(e.to_string()))?;
        let version = next.version;
        self.snapshots.send_replace(next.snapshot().map(Arc::new));
        state.desired = next;
        drop(state);
        self.metrics.applied(ApplyOutcome::Applied);
        tracing::info!(version, "config version made");
        Ok(Verdict::Applied {
            version,
            unchanged: false,
            host_warnings,
        })
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

/// [`sluice::config::check_document`] on a blocking thread.
async fn check(
    document: &Document,
) -> Result<Result<Vec<sluice::config::ConfigError>, sluice::config::ConfigErrors>, Status> {
    let (source, toml) = (document.source.clone(), document.toml.clone());
    tokio::task::spawn_blocking(move || sluice::config::check_document(Path::new(&source), &toml))
        .await
        .map_err(|e| Status::internal(format!("config check failed: {e}")))
}

fn check_node_id(id: &str) -> Result<(), Status> {
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
        Ok(Response::new(GetConfigResponse {
            version: Some(ConfigVersion {
                version: desired.version,
                git_commit: document.git_commit,
                source: document.source,
                created_at: Some(desired.created_at.into()),
            }),
            toml: document.toml,
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
        let mut closing = self.0.closing.subscribe();
        let closed = async move {
            let _ = closing.wait_for(|closing| *closing).await;
        };
        let stream = futures_util::StreamExt::take_until(stream, closed);
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
        if accepted {
            tracing::info!(node = %node_id, version, "node runs the version (ACK)");
        } else {
            tracing::warn!(node = %node_id, version, errors = errors.len(), "node refused the version (NACK)");
        }
        let now = SystemTime::now();
        {
            let state = lock(&self.0.state);
            if state.desired.version == version {
                let since = now
                    .duration_since(state.desired.created_at)
                    .unwrap_or_default();
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
}
