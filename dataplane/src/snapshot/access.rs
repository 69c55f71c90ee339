//! Who may call and how much: products, subscriptions, JWT issuers and limits, compiled from
//! `[[product]]`, `[[subscription]]`, `[[jwt]]`, the `limits` of products and deployments and
//! `[server] client_ip_limits`.
//!
//! Immutable once compiled, like the rest of the [`Snapshot`](super::Snapshot), and held in
//! the leaf modules' own types where one exists: the key table is
//! [`crate::auth::keys::KeyTable`], ids are [`SubscriptionId`] and
//! [`crate::limit::LimitId`], limit windows are [`RateSpec`] / [`QuotaSpec`], algorithms are
//! [`JwtAlg`], a deployment's estimator is [`EstimatorChoice`], a `[[jwt]]` is the
//! validator's own [`JwtIssuerConfig`]. Every limit sits once in
//! [`Access::limits`] under a [`LimitIndex`]; key material (PEM text, JWKS documents, HMAC
//! secrets) was read and parsed when the config was compiled, so a reload picks up new files.
//! The JWT validator (with its JWKS caches) is built from it by
//! [`crate::policy::AccessRuntime::build`].

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

pub use crate::auth::jwks::JwksSettings;
pub use crate::auth::jwt::{
    JwtAlg, JwtIssuerConfig, JwtKeyConfig, JwtKeySource, RequiredClaim, SubscriptionMapping,
};
use crate::auth::keys::{KeyCheck, KeyTable};
pub use crate::limit::{QuotaSpec, QuotaWindow, RateSpec};
use crate::route::Operation;
pub use crate::tokens::estimate::{Estimator, EstimatorChoice, Family};

/// Index of a product in [`Access::products`].
pub type ProductId = usize;
/// A subscription: its index in [`Access::subscriptions`], as the key table and JWT
/// validator store it (32 bits; the config compiler refuses a file with more subscriptions).
pub use crate::auth::keys::SubscriptionId;
/// Index of a limit in [`Access::limits`]; valid within one snapshot only (the limiter's
/// state is keyed by [`Limit::id`], which survives reloads).
pub type LimitIndex = usize;

/// Everything about identity and limits. Default: no products, subscriptions or issuers, so
/// auth is off; trace header honoured.
#[derive(Debug)]
pub struct Access {
    /// Every `[[product]]`, in file order, indexed by [`ProductId`].
    pub products: Vec<Product>,
    /// Every `[[subscription]]`, in file order, indexed by [`SubscriptionId`]'s number.
    pub subscriptions: Vec<Subscription>,
    /// Every key hash of every subscription (live and revoked) → whose it is.
    pub keys: KeyTable,
    /// Every `jwt_claim_values` entry → its subscription. The one table every issuer's
    /// [`SubscriptionMapping::values`] shares: a token's value of its issuer's
    /// `subscription_claim` is looked up here.
    pub claim_values: Arc<HashMap<String, SubscriptionId>>,
    /// Every `[[jwt]]`, in file order, as the JWT validator takes it: keys read and checked,
    /// the subscription mapped by `subscription_claim` through [`Access::claim_values`], and
    /// every claim a `claim:` limit scope counts by in `scope_claims`.
    pub jwt: Vec<JwtIssuerConfig>,
    /// Every limit in the file, indexed by [`LimitIndex`]: products' (in product order), then
    /// deployments', then the server's client-IP limits.
    pub limits: Vec<Limit>,
    /// `[server] client_ip_limits`: apply to every request, authenticated or not.
    pub client_ip_limits: Vec<LimitIndex>,
    /// `[server] trace_header`: whether `Ocp-Apim-Trace: true` / `x-sluice-trace: true` get a
    /// trace header back (for subscriptions whose product has `trace = true`). Default true.
    pub trace_header: bool,
}

impl Default for Access {
    fn default() -> Self {
        Self {
            products: Vec::new(),
            subscriptions: Vec::new(),
            keys: KeyTable::default(),
            claim_values: Arc::default(),
            jwt: Vec::new(),
            limits: Vec::new(),
            client_ip_limits: Vec::new(),
            trace_header: true,
        }
    }
}

impl Access {
    /// Whether requests need credentials: true as soon as the file has one subscription or
    /// one JWT issuer. Then every route (`GET /v1/models` too) answers 401 without them.
    pub fn auth_enabled(&self) -> bool {
        !self.subscriptions.is_empty() || !self.jwt.is_empty()
    }

    /// The subscription a key hash belongs to, live or revoked.
    pub fn key(&self, digest: &KeyDigest) -> Option<KeyEntry> {
        match self.keys.lookup_digest(&digest.0) {
            KeyCheck::Valid(subscription) => Some(KeyEntry {
                subscription,
                revoked: false,
            }),
            KeyCheck::Revoked(subscription) => Some(KeyEntry {
                subscription,
                revoked: true,
            }),
            KeyCheck::Unknown => None,
        }
    }

    /// A limit by id.
    pub fn limit(&self, id: LimitIndex) -> Option<&Limit> {
        self.limits.get(id)
    }
}

/// A SHA-256 digest of a subscription key (`sha256:<64 hex>` in the config).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyDigest(pub [u8; 32]);

impl fmt::Debug for KeyDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("sha256:")?;
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

/// Where a key hash leads ([`Access::key`]'s answer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyEntry {
    /// The subscription listing it.
    pub subscription: SubscriptionId,
    /// Listed in `revoked_keys`: the key is known but refused (401).
    pub revoked: bool,
}

/// A `[[product]]`: what its subscriptions may call, and how much.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Product {
    /// Its name in the config.
    pub name: String,
    /// The deployments it allows. Default all.
    pub deployments: DeploymentSet,
    /// The operations it allows. Default all.
    pub operations: OperationSet,
    /// Whether its subscriptions may ask for the trace header. Default false.
    pub trace: bool,
    /// Its limits, in file order.
    pub limits: Vec<LimitIndex>,
    /// Its audit content policy (`audit = { content = … }`); `None`: `[audit] content`.
    pub audit_content: Option<crate::audit::ContentMode>,
}

/// The deployments a product allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeploymentSet {
    /// `["*"]`: every deployment, including ones added later by a reload.
    All,
    /// These deployment names (each one checked to exist), in file order.
    Only(Vec<String>),
}

impl DeploymentSet {
    /// Whether the deployment named `name` is allowed.
    pub fn contains(&self, name: &str) -> bool {
        match self {
            DeploymentSet::All => true,
            DeploymentSet::Only(names) => names.iter().any(|n| n == name),
        }
    }
}

/// A set of [`Operation`]s, one bit each.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct OperationSet(u8);

impl OperationSet {
    /// Every operation, in config-name order.
    pub const OPERATIONS: [Operation; 5] = [
        Operation::ChatCompletions,
        Operation::Completions,
        Operation::Embeddings,
        Operation::Responses,
        Operation::Models,
    ];

    /// No operation.
    pub const fn empty() -> Self {
        Self(0)
    }

    /// Every operation.
    pub fn all() -> Self {
        Self::OPERATIONS
            .iter()
            .fold(Self::empty(), |set, &op| set.with(op))
    }

    /// This set and `op`.
    #[must_use]
    pub const fn with(self, op: Operation) -> Self {
        Self(self.0 | Self::bit(op))
    }

    /// Whether `op` is in the set.
    pub const fn contains(self, op: Operation) -> bool {
        self.0 & Self::bit(op) != 0
    }

    /// Whether the set is empty.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    const fn bit(op: Operation) -> u8 {
        match op {
            Operation::ChatCompletions => 1,
            Operation::Completions => 2,
            Operation::Embeddings => 4,
            Operation::Responses => 8,
            Operation::Models => 16,
        }
    }

    /// The name an operation has in a product's `operations` list.
    pub fn config_name(op: Operation) -> &'static str {
        match op {
            Operation::ChatCompletions => "chat",
            Operation::Completions => "completions",
            Operation::Embeddings => "embeddings",
            Operation::Responses => "responses",
            Operation::Models => "models",
        }
    }

    /// The operation named `name` in a product's `operations` list.
    pub fn from_config_name(name: &str) -> Option<Operation> {
        Self::OPERATIONS
            .into_iter()
            .find(|&op| Self::config_name(op) == name)
    }
}

impl fmt::Debug for OperationSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set()
            .entries(
                Self::OPERATIONS
                    .iter()
                    .filter(|&&op| self.contains(op))
                    .map(|&op| Self::config_name(op)),
            )
            .finish()
    }
}

/// A `[[subscription]]`: a consumer of a product.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    /// Its name in the config (logs, trace, limiter keys).
    pub name: String,
    /// Its product.
    pub product: ProductId,
    /// Hashes of its live keys.
    pub keys: Vec<KeyDigest>,
    /// Hashes of its revoked keys.
    pub revoked_keys: Vec<KeyDigest>,
    /// Values of a JWT issuer's `subscription_claim` that select it.
    pub jwt_claim_values: Vec<String>,
}

/// One limit: what it counts, over which window, and whose requests share a counter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limit {
    /// Its index in [`Access::limits`].
    pub index: LimitIndex,
    /// Its identity within its owner's `limits` list: the `name` written in the config, or
    /// by default `UNIT:SCOPE:AMOUNT/PER` (e.g. `requests:subscription:600/minute`), which
    /// does not depend on the limit's position. Unique within the list.
    pub name: String,
    /// The key of its state in the limiter tables: a hash of the owner, the name and what
    /// defines the state (unit, scope, window). The same limit in the next snapshot — even
    /// after other limits were inserted before it — gets the same id and finds its buckets
    /// again; a changed amount, window or scope starts afresh.
    pub id: crate::limit::LimitId,
    /// Where it was written, e.g. `product:standard#0` (the owner and the position in its
    /// `limits` list): for logs, refusals and the trace header.
    pub label: String,
    /// Who declared it.
    pub owner: LimitOwner,
    /// Whose requests share one counter.
    pub scope: LimitScope,
    /// What is counted.
    pub unit: LimitUnit,
    /// How much, over what.
    pub window: LimitWindow,
    /// Dry run: count and log what would be refused, refuse nothing. Default false.
    pub shadow: bool,
}

/// The config table a limit comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitOwner {
    /// A product's `limits`: applies to requests of its subscriptions.
    Product(ProductId),
    /// A deployment's `limits` (by deployment name): applies to requests to it.
    Deployment(String),
    /// `[server] client_ip_limits`: applies to every request.
    Server,
}

/// Whose requests share one counter of a limit (each limit has its own counters).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LimitScope {
    /// One counter per subscription (products only; the default there).
    Subscription,
    /// One counter per subscription and deployment.
    SubscriptionDeployment,
    /// One counter for the whole deployment (deployments only; the default there).
    Deployment,
    /// One counter per value of this JWT claim (e.g. `oid`); requests without the claim
    /// (an api-key, or a token lacking it) are not counted by the limit.
    Claim(String),
    /// One counter per client IP address (`[server] client_ip_limits` only).
    ClientIp,
    /// One counter per verified client certificate subject (`[server.tls]
    /// client_ca_file`); requests without one (plain listeners) are not counted.
    ClientCert,
}

/// What a limit counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LimitUnit {
    /// Requests.
    Requests,
    /// Model tokens (prompt + completion; reserved by estimate, settled from `usage`).
    Tokens,
}

/// A limit's amount and window, in the limiter's own terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitWindow {
    /// A smooth rate (`rate` per `"second"` or `"minute"`, `burst` defaulting to `rate`):
    /// over any window of one period, at most `limit + burst` are admitted.
    Rate(RateSpec),
    /// A fixed calendar window (UTC; `quota` per `"hour"`, `"day"` or `"month"`), reset at
    /// its start.
    Quota(QuotaSpec),
}

/// A deployment's token accounting (`tokens = { … }` on a `[[deployment]]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenSettings {
    /// How prompt tokens are estimated at admission (`estimator`, `family`). Default
    /// [`EstimatorChoice::BpeByModel`]: BPE in the family the deployment's name implies (the
    /// model every request to it runs on, whatever `model` the client's body names).
    pub estimator: EstimatorChoice,
    /// Completion tokens reserved when a request sets no `max_tokens` /
    /// `max_completion_tokens`. Default [`DEFAULT_MAX_TOKENS`].
    pub default_max_tokens: u32,
    /// Ask a streaming backend for usage (`stream_options.include_usage`) when the client
    /// did not, and drop that extra chunk before the client sees it. Default true.
    pub stream_usage: bool,
}

/// Completion tokens reserved for a request that sets no maximum, by default.
pub const DEFAULT_MAX_TOKENS: u32 = 1024;

impl Default for TokenSettings {
    fn default() -> Self {
        Self {
            estimator: EstimatorChoice::default(),
            default_max_tokens: DEFAULT_MAX_TOKENS,
            stream_usage: true,
        }
    }
}
