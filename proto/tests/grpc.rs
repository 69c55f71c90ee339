//! The generated service code end to end: a tonic server on 127.0.0.1 (port 0) with a tiny
//! in-memory `ConfigService`, and the generated client calling it over real HTTP/2 — one
//! unary method (`Apply`, both outcomes), one server stream (`Watch`) and the `Ack` after it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use sluice_proto::control::v1::apply_response::Outcome;
use sluice_proto::control::v1::config_service_client::ConfigServiceClient;
use sluice_proto::control::v1::config_service_server::{ConfigService, ConfigServiceServer};
use sluice_proto::control::v1::{
    AckRequest, AckResponse, Applied, ApplyRequest, ApplyResponse, ConfigError, ConfigErrors,
    ConfigSnapshot, DiffRequest, DiffResponse, GetConfigRequest, GetConfigResponse, LimitShare,
    WatchRequest,
};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_stream::StreamExt;
use tonic::transport::{Channel, Endpoint, Server};
use tonic::{Request, Response, Status};

/// Keeps every applied document as a version; refuses documents without a `[server]` table.
/// Clones share their state, so a test keeps one to look at what the server recorded.
#[derive(Clone, Default)]
struct MemoryConfig {
    versions: Arc<Mutex<Vec<ApplyRequest>>>,
    acks: Arc<Mutex<Vec<AckRequest>>>,
}

#[tonic::async_trait]
impl ConfigService for MemoryConfig {
    async fn apply(
        &self,
        request: Request<ApplyRequest>,
    ) -> Result<Response<ApplyResponse>, Status> {
        let request = request.into_inner();
        let outcome = if request.toml.contains("[server]") {
            let mut versions = self.versions.lock().expect("not poisoned");
            versions.push(request);
            Outcome::Applied(Applied {
                version: versions.len() as u64,
                unchanged: false,
                host_warnings: Vec::new(),
            })
        } else {
            Outcome::Rejected(ConfigErrors {
                errors: vec![ConfigError {
                    file: request.source,
                    line: 1,
                    column: 1,
                    field: "server".into(),
                    message: "missing table `[server]`".into(),
                }],
            })
        };
        Ok(Response::new(ApplyResponse {
            outcome: Some(outcome),
        }))
    }

    async fn get(
        &self,
        _: Request<GetConfigRequest>,
    ) -> Result<Response<GetConfigResponse>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    async fn diff(&self, _: Request<DiffRequest>) -> Result<Response<DiffResponse>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    type WatchStream = tokio_stream::Iter<std::vec::IntoIter<Result<ConfigSnapshot, Status>>>;

    /// Sends every version newer than the node's, then ends (a real one stays open).
    async fn watch(
        &self,
        request: Request<WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let running = request.into_inner().running_version;
        let versions = self.versions.lock().expect("not poisoned");
        let snapshots: Vec<_> = (1..)
            .zip(versions.iter())
            .filter(|(version, _)| *version > running)
            .map(|(version, applied)| {
                Ok(ConfigSnapshot {
                    version,
                    git_commit: applied.git_commit.clone(),
                    source: applied.source.clone(),
                    toml: applied.toml.clone().into(),
                    limit_shares: vec![LimitShare {
                        limit: "tpm".into(),
                        key: String::new(),
                        share_ppm: 500_000,
                    }],
                    ..ConfigSnapshot::default()
                })
            })
            .collect();
        Ok(Response::new(tokio_stream::iter(snapshots)))
    }

    async fn ack(&self, request: Request<AckRequest>) -> Result<Response<AckResponse>, Status> {
        self.acks
            .lock()
            .expect("not poisoned")
            .push(request.into_inner());
        Ok(Response::new(AckResponse {}))
    }
}

/// Serves `service` on an ephemeral port; the server task ends with the test's runtime.
async fn serve(service: MemoryConfig) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(
        Server::builder()
            .add_service(ConfigServiceServer::new(service))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    addr
}

async fn client(addr: SocketAddr) -> ConfigServiceClient<Channel> {
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .expect("valid URI")
        .connect()
        .await
        .expect("connects");
    ConfigServiceClient::new(channel)
}

fn apply(toml: &str, source: &str) -> ApplyRequest {
    ApplyRequest {
        toml: toml.into(),
        source: source.into(),
        git_commit: "3f2a9c1e".into(),
    }
}

#[tokio::test]
async fn unary_apply_answers_a_version_or_every_error() {
    let addr = serve(MemoryConfig::default()).await;
    let mut client = client(addr).await;

    let accepted = client
        .apply(apply("[server]\n", "sluice.toml"))
        .await
        .expect("apply succeeds")
        .into_inner();
    assert_eq!(
        accepted.outcome,
        Some(Outcome::Applied(Applied {
            version: 1,
            unchanged: false,
            host_warnings: Vec::new(),
        }))
    );

    let refused = client
        .apply(apply("[backend]\n", "broken.toml"))
        .await
        .expect("a refusal is an answer, not an RPC error")
        .into_inner();
    let Some(Outcome::Rejected(ConfigErrors { errors })) = refused.outcome else {
        panic!("expected a refusal, got {refused:?}");
    };
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].file, "broken.toml");
    assert_eq!((errors[0].line, errors[0].column), (1, 1));

    let status = client
        .get(GetConfigRequest { version: 0 })
        .await
        .expect_err("get is not implemented here");
    assert_eq!(status.code(), tonic::Code::Unimplemented);
}

#[tokio::test]
async fn watch_streams_newer_versions_and_the_node_acks_them() {
    let service = MemoryConfig::default();
    let addr = serve(service.clone()).await;
    let mut client = client(addr).await;
    for n in 1..=3 {
        client
            .apply(apply(&format!("[server]\n# v{n}\n"), "sluice.toml"))
            .await
            .expect("apply succeeds");
    }

    let mut stream = client
        .watch(WatchRequest {
            node_id: "edge-1".into(),
            running_version: 1,
            rejected_version: 0,
        })
        .await
        .expect("watch opens")
        .into_inner();
    let mut received = Vec::new();
    while let Some(snapshot) = stream.next().await {
        let snapshot = snapshot.expect("a snapshot, not an error");
        client
            .ack(AckRequest {
                node_id: "edge-1".into(),
                version: snapshot.version,
                accepted: true,
                errors: Vec::new(),
            })
            .await
            .expect("ack recorded");
        received.push(snapshot);
    }

    let versions: Vec<_> = received.iter().map(|s| s.version).collect();
    assert_eq!(versions, [2, 3]);
    assert_eq!(&received[1].toml[..], b"[server]\n# v3\n");
    assert_eq!(received[1].git_commit, "3f2a9c1e");
    assert_eq!(received[1].limit_shares[0].share_ppm, 500_000);
    let acked: Vec<_> = service
        .acks
        .lock()
        .expect("not poisoned")
        .iter()
        .map(|a| (a.version, a.accepted))
        .collect();
    assert_eq!(acked, [(2, true), (3, true)]);
}
