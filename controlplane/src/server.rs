//! Running the control plane: the gRPC server on its listener, and the task that watches the
//! config path and applies each change.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sluice_proto::control::v1::backend_service_server::BackendServiceServer;
use sluice_proto::control::v1::config_service_server::ConfigServiceServer;
use sluice_proto::control::v1::live_service_server::LiveServiceServer;
use sluice_proto::control::v1::node_service_server::NodeServiceServer;
use sluice_proto::control::v1::subscription_service_server::SubscriptionServiceServer;
use sluice_proto::control::v1::usage_service_server::UsageServiceServer;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

use crate::service::{Api, ControlPlane, Verdict};
use crate::source;

/// How often the config path is read for changes.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// HTTP/2 pings on idle connections, so a node that vanished without a FIN (its host gone, a
/// cable pulled) is noticed and shown disconnected.
const KEEPALIVE: Duration = Duration::from_secs(10);

/// Whether every address is a loopback one (where running without tokens is allowed).
pub fn all_loopback(addrs: &[SocketAddr]) -> bool {
    addrs.iter().all(|a| a.ip().is_loopback())
}

/// Serves the API on `listener` until `shutdown` completes.
pub async fn serve(
    control: Arc<ControlPlane>,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let api = Api(control);
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(KEEPALIVE))
        .http2_keepalive_timeout(Some(KEEPALIVE * 2))
        .add_service(ConfigServiceServer::new(api.clone()))
        .add_service(NodeServiceServer::new(api.clone()))
        .add_service(BackendServiceServer::new(api.clone()))
        .add_service(SubscriptionServiceServer::new(api.clone()))
        .add_service(UsageServiceServer::new(api.clone()))
        .add_service(LiveServiceServer::new(api))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await
}

/// Reads `path` and applies it when its document differs from the last one read from it
/// (`last`: the SHA-256, hex, of that text — kept in the state database, so a restart does
/// not apply an unchanged file over a version made since by `apply -f` or an overlay); logs
/// the outcome. Returns the digest of the text read, which the next poll compares with (the
/// old one when the path could not be read).
pub async fn apply_path(
    control: &ControlPlane,
    path: &Path,
    last: Option<String>,
) -> Option<String> {
    let read = {
        let path = path.to_path_buf();
        tokio::task::spawn_blocking(move || source::read(&path)).await
    };
    let document = match read {
        Ok(Ok(document)) => document,
        Ok(Err(e)) => {
            if last.is_some() {
                tracing::error!("config path: {e}; keeping the running version");
            } else {
                tracing::error!("config path: {e}");
            }
            return last;
        }
        Err(e) => {
            tracing::error!("config path: reading failed: {e}");
            return last;
        }
    };
    let digest = hex_sha256(document.toml.as_bytes());
    if last.as_ref() == Some(&digest) {
        return last;
    }
    match control.apply_document(document).await {
        Ok(Verdict::Applied {
            version,
            unchanged,
            host_warnings,
        }) => {
            for w in &host_warnings {
                tracing::warn!("{w} (not checked here: each node checks it and NACKs if it fails)");
            }
            if unchanged {
                tracing::info!(version, file = %path.display(), "config path read: already running");
            } else {
                tracing::info!(version, file = %path.display(), "config path applied");
            }
        }
        Ok(Verdict::Refused(errors)) => {
            tracing::error!(file = %path.display(), "config path refused; nothing pushed:\n{errors}");
        }
        Err(status) => {
            // Not applied (the database failed): read again at the next poll.
            tracing::error!("config path: {}", status.message());
            return last;
        }
    }
    control.set_watched(path, &digest);
    Some(digest)
}

/// The lowercase hex SHA-256 of `bytes`.
fn hex_sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Polls `path` every [`POLL_INTERVAL`], applying each change (forever; cancel the task to
/// stop). `last` is the digest [`apply_path`] returned at start-up.
pub async fn watch_path(control: Arc<ControlPlane>, path: PathBuf, mut last: Option<String>) {
    let mut tick = tokio::time::interval(POLL_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        last = apply_path(&control, &path, last).await;
    }
}
