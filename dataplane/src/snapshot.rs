//! The compiled configuration: an immutable [`Snapshot`] built once from the TOML file by
//! [`crate::config`], then shared read-only by every worker.
//!
//! Everything the request path needs is precomputed here (resolved addresses, rewritten
//! header values, pool tables), so a request never parses or allocates config. A reload builds
//! a new snapshot and swaps it whole; requests in flight keep the one they started with.
//! State that must outlive a swap is carried over on purpose (see [`crate::apply`]): backend
//! health by [`crate::config::load`] when a backend keeps its name, kind and target.
//!
//! Identity and limits (products, subscriptions, JWT issuers, limits) are in [`access`].

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::health::BackendHealth;

pub mod access;
pub mod resilience;

pub use access::{Access, LimitIndex, TokenSettings};
pub use resilience::{HealthCheck, OutlierDetection, RetryPolicy};

/// Index of a backend in [`Snapshot::backends`].
pub type BackendId = usize;

/// One compiled configuration. Built by [`crate::config::load`]; never mutated afterwards.
#[derive(Debug)]
pub struct Snapshot {
    /// The file this snapshot was read from.
    pub source: PathBuf,
    /// Listener, worker and protocol settings.
    pub server: ServerSettings,
    /// Every backend, indexed by [`BackendId`].
    pub backends: Vec<Backend>,
    /// Deployments by the name clients use (the Azure deployment segment or the body's
    /// `model`).
    pub deployments: HashMap<String, Deployment>,
    /// Deployment names in the order they appear in the file (for `GET /v1/models`).
    pub deployment_order: Vec<String>,
    /// Products, subscriptions, JWT issuers and every limit. Auth is on when
    /// [`Access::auth_enabled`].
    pub access: Access,
    /// `[audit]`: `None` when no sink is configured (nothing is recorded).
    pub audit: Option<crate::audit::AuditSettings>,
    /// `[admin] listen`: where `/metrics`, `/healthz`, `/readyz` and `/config` are served
    /// (default `127.0.0.1:9090`; `None`: `listen = ""`, no admin listener). Bound at start.
    pub admin_listen: Option<SocketAddr>,
    /// The config's version: `sha256:` and the hex SHA-256 of the file's text.
    pub version: String,
}

impl Snapshot {
    /// Whether every request to a deployment has its tokens accounted (prompt estimated, a
    /// stream's usage asked for, the answer's usage read) even with no token limit: when the
    /// audit log records them or the admin listener serves the token metrics.
    pub fn accounts_tokens(&self) -> bool {
        self.audit.is_some() || self.serves_metrics()
    }

    /// Whether requests are counted into the metrics: only when the admin listener serves
    /// `/metrics` (with `[admin] listen = ""` nothing could read them, so nothing is
    /// counted).
    pub fn serves_metrics(&self) -> bool {
        self.admin_listen.is_some()
    }
}

/// `[server]`: listeners, workers, limits and timeouts.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerSettings {
    /// Addresses to listen on; each worker binds its own SO_REUSEPORT socket on each.
    /// Default `["127.0.0.1:8080"]`, or none when `tls_listen` is given.
    pub listen: Vec<SocketAddr>,
    /// HTTPS listeners (`tls_listen`), bound like `listen`. Default none.
    pub tls_listen: Vec<SocketAddr>,
    /// `[server.tls]`, compiled: set exactly when `tls_listen` is not empty.
    pub tls: Option<Arc<crate::tls::server::ServerTls>>,
    /// Worker threads; `None` means one per available core. `--workers` overrides it.
    pub workers: Option<usize>,
    /// Size limits on what clients send.
    pub limits: HttpLimits,
    /// Timeouts on both sides.
    pub timeouts: Timeouts,
    /// How long a graceful shutdown waits for requests in flight. Default 30 s.
    pub shutdown_grace: Duration,
    /// What to do with request header names that contain `_`. Default
    /// [`HeadersWithUnderscores::DropHeader`].
    pub headers_with_underscores: HeadersWithUnderscores,
}

/// `[server] headers_with_underscores`: what happens to a request header whose name contains
/// `_` (named after Envoy's `headers_with_underscores_action`; nginx drops them by default).
///
/// Backends that map `-` to `_` (CGI, PHP, WSGI, Rack) cannot tell `X_Foo` from `X-Foo`, so
/// such a name can smuggle a second copy of a header past the gateway. Whatever the setting,
/// a name that reads as a header Sluice frames, drops or sets (`Transfer_Encoding`,
/// `Content.Length`, `API_KEY`, `x_request_id`, … — see
/// [`crate::http::folds_to`]) is never forwarded; with `RejectRequest` it is refused too.
/// Checked where a request is forwarded to an HTTP backend (the built-in mock forwards
/// nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HeadersWithUnderscores {
    /// `"drop_header"` (default): the header is not forwarded; logged at debug.
    #[default]
    DropHeader,
    /// `"reject_request"`: 400 in the OpenAI error shape naming the header; nothing is sent
    /// to a backend.
    RejectRequest,
    /// `"allow"`: forwarded as sent (still never one that reads as a header Sluice manages).
    Allow,
}

/// Size limits applied while reading a client's request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// Longest request line (method, target, version). Default 8 KiB; over it → 414.
    pub max_request_line: usize,
    /// Largest request head including the request line. Default 64 KiB; over it → 431.
    pub max_head: usize,
    /// Most header fields in a request. Default 100; over it → 431.
    pub max_headers: usize,
    /// Largest request body. Default 32 MiB; over it → 413.
    pub max_body: u64,
    /// Least average rate a request body must arrive at, in bytes per second, counted from
    /// the end of its head once [`Timeouts::body_rate_grace`] has passed: the body's deadline
    /// is `grace + received / min_body_rate` after the head (Apache mod_reqtimeout's
    /// `MinRate`), never later than [`Timeouts::body_read`]. Below it → 408 and close.
    /// Default 1024; 0 turns the rate check off (`body_read` still bounds the body).
    pub min_body_rate: u64,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            max_request_line: 8 * 1024,
            max_head: 64 * 1024,
            max_headers: 100,
            max_body: 32 * 1024 * 1024,
            min_body_rate: 1024,
        }
    }
}

/// Timeouts on the client and upstream sides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// From a request's first byte to the end of its head; for the first request of a
    /// connection, from the accept (a new connection that sends nothing is not kept for the
    /// whole `keepalive_idle`). Total, not per read. Default 10 s; over it → 408.
    pub head_read: Duration,
    /// How long an idle keep-alive client connection is kept between requests. Default 75 s.
    pub keepalive_idle: Duration,
    /// From the end of a request's head to the end of its body (Content-Length or chunked,
    /// after any `100 Continue`). Total, not per read: a client that trickles bytes does not
    /// restart it. Default 30 s; over it → 408 and close. Raise it for large uploads over
    /// slow links.
    pub body_read: Duration,
    /// How long after the head a body may arrive slower than
    /// [`HttpLimits::min_body_rate`] (the time a client gets before the rate counts).
    /// Default 5 s.
    pub body_rate_grace: Duration,
    /// Connecting to a backend. Default 5 s.
    pub upstream_connect: Duration,
    /// From the request sent upstream to the first byte of its answer. Default 120 s.
    pub upstream_first_byte: Duration,
    /// Longest silence while streaming an answer (between reads). Default 300 s.
    pub stream_idle: Duration,
    /// Longest a single write to the client may take (like nginx's `send_timeout`): a client
    /// that stops reading is cut off after it, freeing the upstream connection it holds.
    /// Default 60 s.
    pub send: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            head_read: Duration::from_secs(10),
            keepalive_idle: Duration::from_secs(75),
            body_read: Duration::from_secs(30),
            body_rate_grace: Duration::from_secs(5),
            upstream_connect: Duration::from_secs(5),
            upstream_first_byte: Duration::from_secs(120),
            stream_idle: Duration::from_secs(300),
            send: Duration::from_secs(60),
        }
    }
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 8080))],
            tls_listen: Vec::new(),
            tls: None,
            workers: None,
            limits: HttpLimits::default(),
            timeouts: Timeouts::default(),
            shutdown_grace: Duration::from_secs(30),
            headers_with_underscores: HeadersWithUnderscores::DropHeader,
        }
    }
}

/// One backend instance.
#[derive(Debug)]
pub struct Backend {
    /// Its name in the config (used in logs and metrics).
    pub name: String,
    /// What it is and how to talk to it.
    pub kind: BackendKind,
    /// Shared cool-down state; survives reloads while name and address stay the same.
    pub health: Arc<BackendHealth>,
    /// Its active health check, if configured (`azure` and `openai` backends only).
    pub health_check: Option<HealthCheck>,
}

/// The kinds of backend Sluice can forward to.
#[derive(Debug)]
pub enum BackendKind {
    /// The built-in mock: answered inside the gateway, no socket.
    Mock(crate::mock::MockSettings),
    /// An Azure OpenAI resource: `/openai/deployments/{deployment}/…?api-version=…`,
    /// authenticated with an `api-key` header.
    Azure(AzureBackend),
    /// An OpenAI-compatible server: `/v1/…`, authenticated with `Authorization: Bearer`.
    OpenAi(OpenAiBackend),
}

impl BackendKind {
    /// Whether Sluice may add `stream_options.include_usage` to a streamed chat or
    /// completions request for this backend: as configured for HTTP backends; always for
    /// the built-in mock, which implements it.
    pub fn accepts_stream_options(&self) -> bool {
        match self {
            BackendKind::Mock(_) => true,
            BackendKind::Azure(a) => a.accepts_stream_options,
            BackendKind::OpenAi(o) => o.accepts_stream_options,
        }
    }
}

/// Where an HTTP backend lives, resolved at compile time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUpstream {
    /// The URL as written in the config (for logs).
    pub url: String,
    /// The resolved address to connect to.
    pub addr: SocketAddr,
    /// The value of the `Host` header to send (`host` or `host:port` as in the URL).
    pub host_header: String,
    /// A path prefix from the URL, without a trailing `/` (usually empty).
    pub base_path: String,
    /// For an `https://` URL: how to speak TLS to it (config `ca_file`, `server_name`,
    /// `insecure_skip_verify`); `None` for `http://`.
    pub tls: Option<crate::tls::client::UpstreamTls>,
}

/// An `azure`-kind backend.
#[derive(Debug)]
pub struct AzureBackend {
    /// Where it is.
    pub upstream: HttpUpstream,
    /// The deployment name on that resource (may differ from the name clients use).
    pub deployment: String,
    /// The `api-version` query value to send. Default `2024-10-21`.
    pub api_version: String,
    /// The `api-key` to send, read from the environment variable named in config.
    pub api_key: Option<Secret>,
    /// Whether it accepts `stream_options` (config `stream_options`; `auto` decides by
    /// `api_version`, [`crate::tokens::stream_options::azure_accepts_stream_options`]).
    pub accepts_stream_options: bool,
}

/// An `openai`-kind backend.
#[derive(Debug)]
pub struct OpenAiBackend {
    /// Where it is.
    pub upstream: HttpUpstream,
    /// When set, the body's `model` is replaced with this before forwarding.
    pub model: Option<String>,
    /// The bearer token to send, read from the environment variable named in config.
    pub api_key: Option<Secret>,
    /// Whether it accepts `stream_options` (config `stream_options`; `auto`: yes).
    pub accepts_stream_options: bool,
}

/// A credential. Its `Debug` and `Display` never show the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a credential value.
    pub fn new(value: String) -> Self {
        Self(value)
    }

    /// The value, for writing into an upstream request header only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(****)")
    }
}

/// A deployment clients can call: a name and the pool of backends that serve it.
#[derive(Debug)]
pub struct Deployment {
    /// The name clients use.
    pub name: String,
    /// Its backends with weights and priorities.
    pub pool: Vec<PoolMember>,
    /// Its own limits (ids in [`Access::limits`]), in file order; they apply to every
    /// request to it, whoever sends it.
    pub limits: Vec<LimitIndex>,
    /// How its tokens are estimated and accounted.
    pub tokens: TokenSettings,
    /// When and how often a request is tried on another backend.
    pub retry: RetryPolicy,
    /// When failures eject a backend from the pool.
    pub outlier_detection: OutlierDetection,
    /// Its response cache (`cache = { … }`; `None`: not cached). Carried over a reload that
    /// keeps the deployment's name, its cache settings and the backends that answer it
    /// (their targets, models and API versions).
    pub cache: Option<Arc<crate::cache::ResponseCache>>,
}

/// One backend's place in a deployment's pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolMember {
    /// Which backend.
    pub backend: BackendId,
    /// Its share within its priority group (≥ 1). Default 1.
    pub weight: u32,
    /// Its group; lower numbers are tried first. Default 0.
    pub priority: u32,
}
