//! The control-plane agent of a managed node (`sluice --control-plane URL --node-id ID`):
//! one side thread with a small tokio runtime, never on the request path. It registers with
//! the control plane, holds a `ConfigService.Watch` stream, puts each snapshot in force
//! through [`Apply`] — for the gateway, [`crate::apply::apply_pushed`], the same path as a
//! file reload — and answers each with an ACK, or a NACK carrying every located error while
//! the node keeps its last good config.
//!
//! When the control plane is away the node goes on serving what it runs; the agent retries
//! with exponential backoff and full jitter (200 ms doubling to 10 s), so a fleet does not
//! reconnect in step. After a reconnect it registers with the version it runs, repeats its
//! last answer (which may have been lost with the connection) and watches again: the control
//! plane sends a snapshot only when it is newer than what the node runs or refused.
//!
//! Beside the Watch stream, a `UsageService.Report` stream carries the node's usage once a
//! second, exactly once ([`crate::telemetry::reporter`]): batches the control plane has not
//! answered are sent again after a reconnect under their own sequence numbers.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use sluice_proto::control::v1::config_service_client::ConfigServiceClient;
use sluice_proto::control::v1::node_service_client::NodeServiceClient;
use sluice_proto::control::v1::usage_service_client::UsageServiceClient;
use sluice_proto::control::v1::{
    AckRequest, ConfigError, ConfigSnapshot, RegisterNodeRequest, UsageBatch, WatchRequest,
};
use sluice_proto::BearerToken;
use tokio::sync::mpsc;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::Status;

use crate::telemetry::reporter::{Reporter, MAX_IN_FLIGHT};
use crate::telemetry::UsageMap;

/// First delay before reconnecting.
const BACKOFF_BASE: Duration = Duration::from_millis(200);
/// Longest delay between reconnects.
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// HTTP/2 pings on the idle Watch stream, so a control plane that vanished without a FIN
/// is noticed within twice this.
const KEEPALIVE: Duration = Duration::from_secs(10);

/// How often usage is reported.
pub const REPORT_EVERY: Duration = Duration::from_secs(1);

/// Where the agent takes the usage it reports.
pub trait UsageSource: Send + Sync + 'static {
    /// The usage counted since the last call.
    fn take_usage(&self) -> UsageMap<Arc<str>>;
}

/// Where the agent's snapshots go.
pub trait Apply: Send + Sync + 'static {
    /// Puts `snapshot` in force, or says why not (every error, located) while the last good
    /// config keeps serving.
    fn apply(&self, snapshot: &ConfigSnapshot) -> Result<(), Vec<ConfigError>>;
}

/// Who the agent is and whom it talks to.
#[derive(Clone)]
pub struct AgentSettings {
    /// The control plane's URL, `http://HOST:PORT`.
    pub url: String,
    /// This node's stable id.
    pub node_id: String,
    /// The host name it registers with.
    pub hostname: String,
    /// The node token (`SLUICE_NODE_TOKEN`), sent as `authorization: Bearer …`.
    pub token: Option<String>,
}

impl std::fmt::Debug for AgentSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentSettings")
            .field("url", &self.url)
            .field("node_id", &self.node_id)
            .field("hostname", &self.hostname)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .finish()
    }
}

/// Why the agent cannot start.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The URL is not one tonic can dial.
    #[error("--control-plane {url}: {reason}")]
    Url {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The token cannot be sent as a header value.
    #[error("SLUICE_NODE_TOKEN: not a valid header value (visible ASCII only)")]
    Token,
    /// The thread or its runtime could not be started.
    #[error("cannot start the control-plane agent: {0}")]
    Start(#[from] std::io::Error),
}

type Authed = InterceptedService<Channel, BearerToken>;

/// A checked agent, ready to run.
pub struct Agent {
    settings: AgentSettings,
    endpoint: Endpoint,
    token: BearerToken,
    target: Arc<dyn Apply>,
    usage: Option<Arc<dyn UsageSource>>,
}

/// What the agent remembers across connections.
#[derive(Default)]
struct Memory {
    /// The version in force (0: none from the control plane).
    running: u64,
    /// The last version refused (0: none since the last ACK).
    rejected: u64,
    /// The last answer sent, repeated after a reconnect in case it was lost.
    last_answer: Option<AckRequest>,
}

impl Agent {
    /// Checks `settings`; `target` receives every snapshot.
    pub fn new(settings: AgentSettings, target: Arc<dyn Apply>) -> Result<Self, AgentError> {
        let url_error = |reason: String| AgentError::Url {
            url: settings.url.clone(),
            reason,
        };
        if !settings.url.starts_with("http://") {
            return Err(url_error("expected http://HOST:PORT".into()));
        }
        let endpoint = Endpoint::from_shared(settings.url.clone())
            .map_err(|e| url_error(e.to_string()))?
            .connect_timeout(CONNECT_TIMEOUT)
            .http2_keep_alive_interval(KEEPALIVE)
            .keep_alive_timeout(KEEPALIVE * 2)
            .keep_alive_while_idle(true);
        let token = BearerToken::new(settings.token.as_deref()).map_err(|_| AgentError::Token)?;
        Ok(Self {
            settings,
            endpoint,
            token,
            target,
            usage: None,
        })
    }

    /// Reports the usage `source` counts (once a second, exactly once).
    pub fn with_usage(mut self, source: Arc<dyn UsageSource>) -> Self {
        self.usage = Some(source);
        self
    }

    /// Runs the agent on a thread of its own (`sluice-agent`) for the life of the process.
    pub fn spawn(self) -> Result<(), AgentError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::Builder::new()
            .name("sluice-agent".into())
            .spawn(move || runtime.block_on(self.run()))?;
        Ok(())
    }

    /// Connects, watches and answers, reconnecting for ever; reports usage beside.
    pub async fn run(self) {
        let this = Arc::new(self);
        if let Some(source) = this.usage.clone() {
            tokio::spawn(Arc::clone(&this).report(source));
        }
        this.watch().await;
    }

    async fn watch(&self) {
        let mut memory = Memory::default();
        let mut attempt: u32 = 0;
        let mut was_connected = true;
        loop {
            let mut watched = false;
            let ended = self.session(&mut memory, &mut watched).await;
            if watched {
                attempt = 0;
            }
            match ended {
                Ok(()) => {
                    tracing::warn!(url = %self.settings.url, "control plane closed the config stream; reconnecting")
                }
                Err(status) if was_connected || watched => tracing::warn!(
                    url = %self.settings.url,
                    "control plane unreachable or refusing ({}: {}); serving the running config and retrying",
                    status.code(),
                    status.message()
                ),
                Err(status) => tracing::debug!("control plane still away: {}", status.message()),
            }
            was_connected = watched;
            tokio::time::sleep(backoff(attempt)).await;
            attempt = attempt.saturating_add(1);
        }
    }

    /// A new connection to the control plane, carrying the node token.
    async fn connect(&self) -> Result<Authed, Status> {
        let channel = self
            .endpoint
            .connect()
            .await
            .map_err(|e| Status::unavailable(transport_reason(&e)))?;
        Ok(InterceptedService::new(channel, self.token.clone()))
    }

    /// One connection: register, repeat the last answer, watch and answer until the stream
    /// ends. Sets `watched` once the Watch stream is open.
    async fn session(&self, memory: &mut Memory, watched: &mut bool) -> Result<(), Status> {
        let channel = self.connect().await?;
        let mut nodes = NodeServiceClient::new(channel.clone());
        // A snapshot carries the document (at most 1 MiB) and every key's digest: more than
        // gRPC's default 4 MiB with enough keys.
        let mut config = ConfigServiceClient::new(channel).max_decoding_message_size(64 << 20);
        nodes
            .register(RegisterNodeRequest {
                node_id: self.settings.node_id.clone(),
                hostname: self.settings.hostname.clone(),
                build_version: env!("CARGO_PKG_VERSION").to_string(),
                running_version: memory.running,
            })
            .await?;
        if let Some(answer) = memory.last_answer.clone() {
            config.ack(answer).await?;
        }
        let mut stream = config
            .watch(WatchRequest {
                node_id: self.settings.node_id.clone(),
                running_version: memory.running,
                rejected_version: memory.rejected,
            })
            .await?
            .into_inner();
        *watched = true;
        tracing::info!(url = %self.settings.url, node = %self.settings.node_id, running = memory.running, "watching the control plane for config");
        while let Some(snapshot) = stream.message().await? {
            let version = snapshot.version;
            let answer = match self.target.apply(&snapshot) {
                Ok(()) => {
                    memory.running = version;
                    memory.rejected = 0;
                    tracing::info!(version, "control-plane config in force (ACK)");
                    AckRequest {
                        node_id: self.settings.node_id.clone(),
                        version,
                        accepted: true,
                        errors: Vec::new(),
                    }
                }
                Err(errors) => {
                    memory.rejected = version;
                    tracing::error!(
                        version,
                        errors = errors.len(),
                        "control-plane config refused (NACK); keeping the running config"
                    );
                    AckRequest {
                        node_id: self.settings.node_id.clone(),
                        version,
                        accepted: false,
                        errors,
                    }
                }
            };
            memory.last_answer = Some(answer.clone());
            config.ack(answer).await?;
        }
        Ok(())
    }
}

impl Agent {
    /// Reports usage for ever: once a second, takes what the workers counted and sends it
    /// as the next batch; after a reconnect, first sends again every batch not answered.
    async fn report(self: Arc<Self>, source: Arc<dyn UsageSource>) {
        let node_id = &self.settings.node_id;
        let mut reporter = Reporter::new(node_id, incarnation());
        let mut link: Option<Link> = None;
        let mut attempt: u32 = 0;
        let mut retry_at = tokio::time::Instant::now();
        let mut next_tick = tokio::time::Instant::now() + REPORT_EVERY;
        let mut dropped_warned = 0;
        loop {
            // Answers until the next tick.
            if let Some(open) = &mut link {
                match tokio::time::timeout_at(next_tick, open.answers.recv()).await {
                    Ok(Some(Ok(through))) => {
                        reporter.stored_through(through);
                        continue;
                    }
                    Ok(Some(Err(status))) => {
                        tracing::warn!("usage report stream ended ({}: {}); resending what is unanswered after a reconnect", status.code(), status.message());
                        link = None;
                        retry_at = tokio::time::Instant::now() + backoff(attempt);
                        attempt = attempt.saturating_add(1);
                        continue;
                    }
                    Ok(None) => {
                        link = None;
                        retry_at = tokio::time::Instant::now() + backoff(attempt);
                        attempt = attempt.saturating_add(1);
                        continue;
                    }
                    Err(_) => {}
                }
            } else {
                tokio::time::sleep_until(next_tick).await;
            }
            next_tick += REPORT_EVERY;
            reporter.add(&source.take_usage());
            if reporter.dropped() > dropped_warned {
                tracing::warn!(
                    requests = reporter.dropped(),
                    "usage not reported: the control plane stayed away and the oldest minutes were dropped"
                );
                dropped_warned = reporter.dropped();
            }
            if link.is_none() && tokio::time::Instant::now() >= retry_at {
                match self.open_report(&reporter).await {
                    Ok(open) => {
                        link = Some(open);
                        attempt = 0;
                    }
                    Err(status) => {
                        tracing::debug!("usage report: {}", status.message());
                        retry_at = tokio::time::Instant::now() + backoff(attempt);
                        attempt = attempt.saturating_add(1);
                    }
                }
            }
            if let Some(open) = &link {
                if let Some(batch) = reporter.next_batch(SystemTime::now()) {
                    if open.batches.send(batch).await.is_err() {
                        link = None;
                    }
                }
            }
        }
    }

    /// Opens a Report stream and queues every unanswered batch on it first.
    async fn open_report(&self, reporter: &Reporter) -> Result<Link, Status> {
        let channel = self.connect().await?;
        let (batches, outgoing) = mpsc::channel::<UsageBatch>(MAX_IN_FLIGHT + 1);
        for batch in reporter.unanswered() {
            // Room for every unanswered batch: at most MAX_IN_FLIGHT.
            let _ = batches.try_send(batch.clone());
        }
        let mut stream = UsageServiceClient::new(channel)
            .report(tokio_stream::wrappers::ReceiverStream::new(outgoing))
            .await?
            .into_inner();
        let (tell, answers) = mpsc::channel(MAX_IN_FLIGHT + 1);
        tokio::spawn(async move {
            loop {
                let answer = match stream.message().await {
                    Ok(Some(answer)) => Ok(answer.stored_through),
                    Ok(None) => Err(Status::unavailable("the control plane closed the stream")),
                    Err(status) => Err(status),
                };
                let end = answer.is_err();
                if tell.send(answer).await.is_err() || end {
                    return;
                }
            }
        });
        Ok(Link { batches, answers })
    }
}

/// An open Report stream: where batches go, and the control plane's answers (the highest
/// sequence stored, or why the stream ended).
struct Link {
    batches: mpsc::Sender<UsageBatch>,
    answers: mpsc::Receiver<Result<u64, Status>>,
}

/// This process's incarnation: random in 1 ..= 2^63 - 1 (the time when randomness fails,
/// never on Linux).
fn incarnation() -> u64 {
    let mut bytes = [0u8; 8];
    let random = match getrandom::getrandom(&mut bytes) {
        Ok(()) => u64::from_le_bytes(bytes),
        Err(_) => SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(1, |d| u64::try_from(d.as_nanos()).unwrap_or(1)),
    };
    (random >> 1).max(1)
}

/// The delay before reconnect attempt `attempt` (0-based): uniform in 0 ..= min(max, base ×
/// 2^attempt) — "full jitter", so nodes that lost the control plane together do not all
/// come back at once.
fn backoff(attempt: u32) -> Duration {
    let cap = BACKOFF_BASE
        .saturating_mul(1u32.checked_shl(attempt.min(16)).unwrap_or(u32::MAX))
        .min(BACKOFF_MAX);
    let mut bytes = [0u8; 8];
    // Without randomness (never on Linux), wait the whole cap: slower, never in step worse.
    let fraction = match getrandom::getrandom(&mut bytes) {
        Ok(()) => (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64,
        Err(_) => 1.0,
    };
    cap.mul_f64(fraction)
}

/// A transport error's innermost cause (tonic's own text is only "transport error").
fn transport_reason(e: &tonic::transport::Error) -> String {
    let mut reason = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        reason = s.to_string();
        source = s.source();
    }
    reason
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_cap_with_full_jitter() {
        for attempt in 0..40 {
            let cap = BACKOFF_BASE
                .saturating_mul(1 << attempt.min(16))
                .min(BACKOFF_MAX);
            for _ in 0..20 {
                assert!(backoff(attempt) <= cap);
            }
        }
        // Jittered: twenty draws at the cap are not all equal.
        let draws: std::collections::BTreeSet<_> = (0..20).map(|_| backoff(30)).collect();
        assert!(draws.len() > 1);
    }

    #[test]
    fn urls_and_tokens_are_checked_before_anything_runs() {
        struct Never;
        impl Apply for Never {
            fn apply(&self, _: &ConfigSnapshot) -> Result<(), Vec<ConfigError>> {
                Ok(())
            }
        }
        let settings = |url: &str, token: Option<&str>| AgentSettings {
            url: url.into(),
            node_id: "n1".into(),
            hostname: "h".into(),
            token: token.map(Into::into),
        };
        assert!(matches!(
            Agent::new(settings("127.0.0.1:50051", None), Arc::new(Never)),
            Err(AgentError::Url { .. })
        ));
        assert!(matches!(
            Agent::new(
                settings("http://127.0.0.1:50051", Some("bad\ntoken")),
                Arc::new(Never)
            ),
            Err(AgentError::Token)
        ));
        assert!(Agent::new(
            settings("http://127.0.0.1:50051", Some("t")),
            Arc::new(Never)
        )
        .is_ok());
        let shown = format!("{:?}", settings("http://x", Some("secret-token")));
        assert!(!shown.contains("secret-token"));
    }
}
