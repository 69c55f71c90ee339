//! The control plane's own admin listener (`--admin`, default `127.0.0.1:9091`):
//! `/metrics` in the Prometheus text format (encoded by `prometheus-client`), `/healthz`
//! (alive) and `/readyz` (serving the API). Served by axum — already in the tree under
//! tonic — rather than by hand.
//!
//! | family | type | labels |
//! | --- | --- | --- |
//! | `sluice_control_config_version` | gauge | |
//! | `sluice_control_nodes` | gauge | `state` (`ack`, `nack`, `pending`) |
//! | `sluice_control_nodes_connected` | gauge | |
//! | `sluice_control_push_seconds` | histogram | |
//! | `sluice_control_applies_total` | counter | `outcome` (`applied`, `unchanged`, `refused`) |
//! | `sluice_control_usage_batches_total` | counter | `outcome` (`stored`, `resent`) |
//! | `sluice_control_telemetry_lag_seconds` | histogram | (a batch's making on its node to its storing) |

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::service::ControlPlane;

/// One label, as `prometheus-client` encodes a list of pairs.
type Labels = Vec<(&'static str, &'static str)>;

/// Push latency buckets, in seconds: from a version's making to a node's answer.
const PUSH_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// The control plane's metrics.
pub struct Metrics {
    registry: Registry,
    version: Gauge,
    nodes: Family<Labels, Gauge>,
    connected: Gauge,
    push: Histogram,
    applies: Family<Labels, Counter>,
    batches: Family<Labels, Counter>,
    lag: Histogram,
    /// Whether the API listener is serving (for `/readyz`).
    pub ready: AtomicBool,
}

/// What became of one document offered to the control plane.
#[derive(Debug, Clone, Copy)]
pub enum ApplyOutcome {
    /// A new version.
    Applied,
    /// Already the running document.
    Unchanged,
    /// Refused for its errors.
    Refused,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("sluice_control");
        let version = Gauge::default();
        registry.register(
            "config_version",
            "The version nodes should run (0: none yet)",
            version.clone(),
        );
        let nodes = Family::<Labels, Gauge>::default();
        registry.register(
            "nodes",
            "Nodes by their answer to the current version",
            nodes.clone(),
        );
        let connected = Gauge::default();
        registry.register(
            "nodes_connected",
            "Nodes with a Watch stream open",
            connected.clone(),
        );
        let push = Histogram::new(PUSH_BUCKETS);
        registry.register_with_unit(
            "push",
            "From a version's making to each node's answer to it (ACK or NACK)",
            prometheus_client::registry::Unit::Seconds,
            push.clone(),
        );
        let applies = Family::<Labels, Counter>::default();
        registry.register(
            "applies",
            "Documents offered (Apply, or the watched config path), by outcome",
            applies.clone(),
        );
        let batches = Family::<Labels, Counter>::default();
        registry.register(
            "usage_batches",
            "Usage batches received from nodes: stored, or resent and already stored",
            batches.clone(),
        );
        let lag = Histogram::new(PUSH_BUCKETS);
        registry.register_with_unit(
            "telemetry_lag",
            "From a usage batch's making on its node to its storing here",
            prometheus_client::registry::Unit::Seconds,
            lag.clone(),
        );
        Self {
            registry,
            version,
            nodes,
            connected,
            push,
            applies,
            batches,
            lag,
            ready: AtomicBool::new(false),
        }
    }
}

impl Metrics {
    /// Counts one document offered.
    pub fn applied(&self, outcome: ApplyOutcome) {
        let label = match outcome {
            ApplyOutcome::Applied => "applied",
            ApplyOutcome::Unchanged => "unchanged",
            ApplyOutcome::Refused => "refused",
        };
        self.applies.get_or_create(&vec![("outcome", label)]).inc();
    }

    /// Counts usage batches: `stored` new ones and `resent` ones already stored.
    pub fn batches(&self, stored: u64, resent: u64) {
        for (outcome, n) in [("stored", stored), ("resent", resent)] {
            if n > 0 {
                self.batches
                    .get_or_create(&vec![("outcome", outcome)])
                    .inc_by(n);
            }
        }
    }

    /// Records a batch stored `seconds` after its node made it.
    pub fn telemetry_lag(&self, seconds: f64) {
        self.lag.observe(seconds);
    }

    /// Records a node's answer `seconds` after its version was made.
    pub fn answered(&self, seconds: f64) {
        self.push.observe(seconds);
    }

    /// The scrape: `version`, and nodes by state (`ack`, `nack`, `pending`) and connected.
    pub fn render(&self, version: u64, states: [i64; 3], connected: i64) -> String {
        self.version.set(i64::try_from(version).unwrap_or(i64::MAX));
        for (state, n) in ["ack", "nack", "pending"].into_iter().zip(states) {
            self.nodes.get_or_create(&vec![("state", state)]).set(n);
        }
        self.connected.set(connected);
        let mut text = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

/// Serves the admin endpoints on `listener` until `shutdown` completes.
pub async fn serve(
    control: Arc<ControlPlane>,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(control);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

async fn metrics(State(control): State<Arc<ControlPlane>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        control.render_metrics(),
    )
}

async fn readyz(State(control): State<Arc<ControlPlane>>) -> impl IntoResponse {
    if control.metrics.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not serving\n")
    }
}
