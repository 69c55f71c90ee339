//! JWT validation, as Azure API Management's `validate-jwt` policy does it.
//!
//! A [`JwtValidator`] is compiled from config once per snapshot: one [`JwtIssuerConfig`] per
//! trusted issuer, each with its audiences, its keys (an HMAC secret from an environment
//! variable, PEM public key files, a JWKS file, or an `http://` JWKS URL kept fresh by a
//! [`JwksRefresher`] side thread), its leeway, required claim values and the claim that
//! names the caller's subscription. [`JwtValidator::validate`] then checks a token with no
//! lock and no I/O, in an order that keeps the expensive and dangerous steps last:
//!
//! 1. size: a token over [`MAX_TOKEN_BYTES`] (16 KiB) is refused before it is even decoded;
//! 2. header: `alg` must be one of HS256/384/512, RS256/384/512, PS256, ES256, ES384 exactly
//!    — `none` in any casing is refused by name — and `jwk`, `jku`, `x5u`, `x5c` (keys or key locations chosen by the token
//!    itself) and `crit` (extensions we do not implement) are refused;
//! 3. issuer: the (not yet trusted) `iss` picks the issuer's settings; an unknown or missing
//!    issuer is refused, and so is an `alg` none of that issuer's keys is pinned to;
//! 4. key: the token's `kid` picks the key; an unknown `kid` asks the JWKS refresher for one
//!    rate-limited refetch and is refused now (see [`super::jwks`]). A key verifies only the
//!    algorithms its kind allows (an RSA key never HS256), so algorithm confusion has no key
//!    to work with;
//! 5. signature (the only crypto step, by `jsonwebtoken`'s pure-Rust RustCrypto backend);
//! 6. claims: `exp` required by default and `nbf` checked, both with a leeway (default 60 s);
//!    `aud` required by default and must name one of the issuer's audiences; each required
//!    claim must hold one of its allowed values; the subscription claim maps to a
//!    [`SubscriptionId`].
//!
//! Every refusal is a named [`JwtError`], all of them 401 for the client.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::Deserialize;
use serde_json::{Map, Value};

pub use super::alg::{AlgSet, JwtAlg};
use super::jwks::{
    parse_jwks, JwksCache, JwksError, JwksRefresher, JwksSettings, KeyKind, VerifyKey,
};
use super::keys::SubscriptionId;

/// The largest token accepted, in bytes (APIM's limit too). Checked before any decoding.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// The default clock-skew allowance for `exp` and `nbf`, in seconds.
pub const DEFAULT_LEEWAY_SECS: u64 = 60;

/// At most this many keys are tried for one token (several keys can fit a token without a
/// `kid`); bounds the crypto one request can cost.
pub const MAX_KEYS_TRIED: usize = 4;

/// Where a key comes from. The config compiler reads key files and secrets itself (through
/// its injected reader and environment) and gives the material with where it came from
/// ([`Secret`](Self::Secret), [`Pem`](Self::Pem), [`Jwks`](Self::Jwks),
/// [`JwksUrl`](Self::JwksUrl)); the `*File` and [`SecretEnv`](Self::SecretEnv) forms are read
/// by [`JwtValidator::new`] for callers without a config file.
#[derive(Clone, PartialEq, Eq)]
pub enum JwtKeySource {
    /// An HMAC secret read from this environment variable by [`JwtValidator::new`] (at
    /// least 32 bytes, and 48 / 64 for HS384 / HS512; taken as the variable's bytes).
    SecretEnv(String),
    /// An HMAC secret given directly. Never printed by `Debug`.
    Secret {
        /// The environment variable it was read from, if any (for messages).
        env: Option<String>,
        /// The secret's bytes.
        secret: Vec<u8>,
    },
    /// A PEM public key file (RSA, P-256 or P-384; SPKI, or PKCS#1 for RSA), read by
    /// [`JwtValidator::new`].
    PemFile(PathBuf),
    /// PEM text given directly.
    Pem {
        /// The file it was read from, if any (named in errors).
        path: Option<PathBuf>,
        /// The PEM text.
        pem: Vec<u8>,
    },
    /// A JWKS file, read by [`JwtValidator::new`].
    JwksFile(PathBuf),
    /// A JWKS document given directly.
    Jwks {
        /// The file it was read from, if any (named in errors).
        path: Option<PathBuf>,
        /// The document (a JSON object with a non-empty `keys` array).
        json: Vec<u8>,
    },
    /// An `http://` JWKS URL, fetched and refreshed on a side thread. Each URL has its own
    /// settings (`refresh` in the config is per `jwks_url` key), so two URLs of one issuer
    /// are refetched each on its own schedule.
    JwksUrl {
        /// The URL.
        url: String,
        /// How often it is refetched, and the limits of a fetch.
        settings: JwksSettings,
    },
}

impl JwtKeySource {
    /// An HMAC secret given directly, from no environment variable.
    pub fn secret(secret: impl Into<Vec<u8>>) -> Self {
        Self::Secret {
            env: None,
            secret: secret.into(),
        }
    }

    /// PEM text given directly, from no file.
    pub fn pem(pem: impl Into<Vec<u8>>) -> Self {
        Self::Pem {
            path: None,
            pem: pem.into(),
        }
    }

    /// A JWKS document given directly, from no file.
    pub fn jwks(json: impl Into<Vec<u8>>) -> Self {
        Self::Jwks {
            path: None,
            json: json.into(),
        }
    }

    /// A JWKS URL with the default [`JwksSettings`] (refetched every 10 min).
    pub fn jwks_url(url: impl Into<String>) -> Self {
        Self::JwksUrl {
            url: url.into(),
            settings: JwksSettings::default(),
        }
    }
}

impl std::fmt::Debug for JwtKeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::SecretEnv(var) => f.debug_tuple("SecretEnv").field(var).finish(),
            Self::Secret { env, .. } => f
                .debug_struct("Secret")
                .field("env", env)
                .field("secret", &format_args!("****"))
                .finish(),
            Self::PemFile(path) => f.debug_tuple("PemFile").field(path).finish(),
            Self::Pem { path, pem } => f
                .debug_struct("Pem")
                .field("path", path)
                .field("pem", &String::from_utf8_lossy(pem))
                .finish(),
            Self::JwksFile(path) => f.debug_tuple("JwksFile").field(path).finish(),
            Self::Jwks { path, json } => f
                .debug_struct("Jwks")
                .field("path", path)
                .field("json", &String::from_utf8_lossy(json))
                .finish(),
            Self::JwksUrl { url, settings } => f
                .debug_struct("JwksUrl")
                .field("url", url)
                .field("settings", settings)
                .finish(),
        }
    }
}

/// One configured key (or key set) of an issuer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtKeyConfig {
    /// The key's id, matched against the token's `kid`. Only for single keys (secret, PEM);
    /// a JWKS carries its own. Without one, the key is tried for any token.
    pub kid: Option<String>,
    /// The algorithms this key may verify. Must fit the key's kind (HS256/384/512 for a
    /// secret long enough for each, RS256/384/512 and PS256 for RSA, ES256 for P-256, ES384
    /// for P-384); a JWKS's keys each take the ones fitting them.
    pub algorithms: Vec<JwtAlg>,
    /// Where the key comes from.
    pub source: JwtKeySource,
}

/// A claim that must be present and hold one of `values` (any of them; for an array claim
/// such as `roles`, any element). No values: present with any value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequiredClaim {
    /// The claim's name, e.g. `roles` or `tid`.
    pub name: String,
    /// The values allowed; strings, or the JSON text of a number or boolean.
    pub values: Vec<String>,
}

/// How a token's claim chooses the subscription whose limits apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionMapping {
    /// The claim, e.g. `appid`, `azp` or `sub`. A token without it is refused.
    pub claim: String,
    /// Claim value → subscription. Shared: the config compiler gives every issuer the one
    /// table of the file's `jwt_claim_values`.
    pub values: Arc<HashMap<String, SubscriptionId>>,
    /// The subscription for values not in `values`; `None` refuses them.
    pub default: Option<SubscriptionId>,
}

/// One trusted issuer's settings: what the config compiler makes of a `[[jwt]]` table, and
/// what [`JwtValidator::new`] compiles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtIssuerConfig {
    /// Its name in the config (for logs). [`new`](Self::new) uses the issuer.
    pub name: String,
    /// The exact `iss` value.
    pub issuer: String,
    /// The accepted `aud` values (a token's `aud` must name at least one).
    pub audiences: Vec<String>,
    /// Its keys, in config order; at least one.
    pub keys: Vec<JwtKeyConfig>,
    /// Clock-skew allowance for `exp` and `nbf`. Default [`DEFAULT_LEEWAY_SECS`] seconds.
    /// Token times are whole seconds; a fractional leeway is applied exactly (a token
    /// expired at `exp` is refused once `now ≥ exp + leeway`, one not valid before `nbf`
    /// passes once `now + leeway ≥ nbf`).
    pub leeway: Duration,
    /// Refuse tokens without `exp`. Default `true`.
    pub require_expiration: bool,
    /// Refuse tokens without `aud`. Default `true` (then `audiences` must not be empty).
    pub require_audience: bool,
    /// Refuse tokens without `nbf` (RFC 7519 §4.1.5). Default `false`: an `nbf` given is
    /// always checked, its absence allowed.
    pub require_not_before: bool,
    /// Refuse tokens without `iss`. Default `true`. `iss` picks the issuer's settings, so a
    /// token without one is read against this issuer only when it is the one issuer
    /// configured and this is `false`.
    pub require_issuer: bool,
    /// Claims that must hold given values, in config order.
    pub required_claims: Vec<RequiredClaim>,
    /// The claim naming the subscription; `None`: tokens carry no subscription (the route's
    /// or product's default applies, as the wiring decides).
    pub subscription: Option<SubscriptionMapping>,
    /// Claims whose values a valid token reports in [`Principal::claims`] (for limits
    /// scoped by a claim). Default none.
    pub scope_claims: Vec<String>,
}

impl JwtIssuerConfig {
    /// Settings for `issuer` (also its name) with the defaults: no audiences or keys yet,
    /// leeway 60 s, `exp`, `aud` and `iss` required (`nbf` checked when given), no required
    /// claims, no subscription claim.
    pub fn new(issuer: impl Into<String>) -> Self {
        let issuer = issuer.into();
        Self {
            name: issuer.clone(),
            issuer,
            audiences: Vec::new(),
            keys: Vec::new(),
            leeway: Duration::from_secs(DEFAULT_LEEWAY_SECS),
            require_expiration: true,
            require_audience: true,
            require_not_before: false,
            require_issuer: true,
            required_claims: Vec::new(),
            subscription: None,
            scope_claims: Vec::new(),
        }
    }
}

/// Why JWT config could not be compiled.
#[derive(Debug, thiserror::Error)]
pub enum JwtConfigError {
    /// Two issuers have the same `issuer`.
    #[error("issuer {0:?} is configured twice")]
    DuplicateIssuer(String),
    /// An issuer has no key.
    #[error("issuer {0:?} has no key")]
    NoKeys(String),
    /// `aud` is required but no audience is configured.
    #[error("issuer {0:?} requires an audience but lists none")]
    NoAudiences(String),
    /// A key pins no algorithm.
    #[error("issuer {0:?}: a key must pin at least one algorithm")]
    NoAlgorithms(String),
    /// A `kid` on a JWKS source.
    #[error("issuer {0:?}: `kid` applies to a single key, not a JWKS")]
    KidOnJwks(String),
    /// The secret's environment variable is unset or not UTF-8.
    #[error("issuer {issuer:?}: environment variable {var} is not set")]
    MissingEnv {
        /// The issuer.
        issuer: String,
        /// The variable.
        var: String,
    },
    /// A key file could not be read.
    #[error("issuer {issuer:?}: cannot read {path}: {error}")]
    Read {
        /// The issuer.
        issuer: String,
        /// The file.
        path: String,
        /// What failed.
        error: std::io::Error,
    },
    /// A key could not be used.
    #[error("issuer {issuer:?}: {error}")]
    Key {
        /// The issuer.
        issuer: String,
        /// What is wrong with it.
        error: JwksError,
    },
    /// A key read from a file (PEM or JWKS) could not be used.
    #[error("issuer {issuer:?}: {path}: {error}")]
    KeyFile {
        /// The issuer.
        issuer: String,
        /// The file.
        path: String,
        /// What is wrong with its key.
        error: JwksError,
    },
}

/// Why a token was refused. All are 401 for the client; the name is for logs and traces.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    /// Larger than [`MAX_TOKEN_BYTES`]; refused before decoding.
    #[error("token larger than 16 KiB")]
    TooLarge,
    /// Not three base64url parts of a JSON header and a JSON object of claims.
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    /// `alg: none` (any casing): unsigned tokens are never accepted.
    #[error("unsigned tokens (alg none) are refused")]
    AlgNone,
    /// An `alg` other than HS256, RS256, ES256.
    #[error("unsupported algorithm")]
    UnsupportedAlgorithm,
    /// The header carries a key or a key location (`jwk`, `jku`, `x5u`, `x5c`).
    #[error("tokens may not name their own key ({0} header)")]
    EmbeddedKey(&'static str),
    /// The header has `crit` extensions, which are not implemented.
    #[error("critical header extensions are not supported")]
    CriticalHeader,
    /// No `iss` claim.
    #[error("no issuer")]
    MissingIssuer,
    /// `iss` is not a configured issuer.
    #[error("untrusted issuer")]
    UnknownIssuer,
    /// No key of the issuer (with this `kid`) is pinned to the token's `alg`.
    #[error("algorithm not allowed for this key")]
    AlgorithmNotAllowed,
    /// No key has the token's `kid` (a refetch of the issuer's JWKS may have been asked).
    #[error("unknown key id")]
    UnknownKid,
    /// The token names no `kid` and every key of the issuer has one.
    #[error("no key id")]
    MissingKid,
    /// The issuer's keys come from a JWKS that has not been fetched yet.
    #[error("signing keys not available yet")]
    KeysUnavailable,
    /// No key verifies the signature.
    #[error("invalid signature")]
    BadSignature,
    /// No `exp` claim, and it is required.
    #[error("no expiration time")]
    MissingExpiration,
    /// Past `exp` plus leeway.
    #[error("token expired")]
    Expired,
    /// Before `nbf` minus leeway.
    #[error("token not yet valid")]
    NotYetValid,
    /// No `nbf` claim, and it is required.
    #[error("no not-before time")]
    MissingNotBefore,
    /// No `aud` claim, and it is required.
    #[error("no audience")]
    MissingAudience,
    /// `aud` names none of the configured audiences.
    #[error("wrong audience")]
    WrongAudience,
    /// A registered claim has the wrong JSON type (e.g. `exp` not a number).
    #[error("claim {0} has the wrong type")]
    InvalidClaim(&'static str),
    /// A required claim is absent.
    #[error("claim {0} is required")]
    MissingClaim(String),
    /// A required claim holds none of the allowed values.
    #[error("claim {0} has a value that is not allowed")]
    ClaimMismatch(String),
    /// The subscription claim's value maps to no subscription.
    #[error("no subscription for this token")]
    UnmappedSubscription,
}

impl JwtError {
    /// A short stable name for logs, metrics and traces (`too_large`, `alg_none`, …).
    pub fn name(&self) -> &'static str {
        match self {
            Self::TooLarge => "too_large",
            Self::Malformed(_) => "malformed",
            Self::AlgNone => "alg_none",
            Self::UnsupportedAlgorithm => "unsupported_alg",
            Self::EmbeddedKey(_) => "embedded_key",
            Self::CriticalHeader => "crit_header",
            Self::MissingIssuer => "missing_iss",
            Self::UnknownIssuer => "unknown_iss",
            Self::AlgorithmNotAllowed => "alg_not_allowed",
            Self::UnknownKid => "unknown_kid",
            Self::MissingKid => "missing_kid",
            Self::KeysUnavailable => "keys_unavailable",
            Self::BadSignature => "bad_signature",
            Self::MissingExpiration => "missing_exp",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::MissingNotBefore => "missing_nbf",
            Self::MissingAudience => "missing_aud",
            Self::WrongAudience => "wrong_aud",
            Self::InvalidClaim(_) => "invalid_claim",
            Self::MissingClaim(_) => "missing_claim",
            Self::ClaimMismatch(_) => "claim_mismatch",
            Self::UnmappedSubscription => "unmapped_subscription",
        }
    }
}

/// Who a valid token says the caller is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The issuer's index in the config list.
    pub issuer: usize,
    /// The subscription the token maps to (`None` when the issuer maps none).
    pub subscription: Option<SubscriptionId>,
    /// The subscription claim's value (for per-claim limits), if the issuer maps one.
    pub claim_value: Option<String>,
    /// The `sub` claim, if a string.
    pub subject: Option<String>,
    /// The values of the issuer's `scope_claims` the token carries (scalars only).
    pub claims: Vec<(String, String)>,
    /// `exp`, if present.
    pub expires_at: Option<u64>,
}

/// A JWKS URL source of an issuer: the shared cache and the thread keeping it fresh. Both
/// are shared with the validators of later snapshots that configure the same URL the same way
/// ([`JwtValidator::carry_over`]); the thread stops when the last of them is dropped.
struct RemoteKeys {
    cache: Arc<JwksCache>,
    refresher: Arc<OnceLock<JwksRefresher>>,
}

/// One issuer, compiled.
struct Issuer {
    config: JwtIssuerConfig,
    /// Keys from secrets, PEM and JWKS files.
    keys: Vec<VerifyKey>,
    remote: Vec<RemoteKeys>,
    /// Union of every key's pin (JWKS URLs count with their configured pin).
    algs: AlgSet,
}

/// The compiled JWT settings of a snapshot. Share it behind an `Arc`; `validate` takes
/// `&self` and never blocks. Dropping it stops the JWKS refreshers no later validator took
/// over.
pub struct JwtValidator {
    issuers: Vec<Issuer>,
}

impl std::fmt::Debug for JwtValidator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let issuers: Vec<&str> = self
            .issuers
            .iter()
            .map(|i| i.config.issuer.as_str())
            .collect();
        f.debug_struct("JwtValidator")
            .field("issuers", &issuers)
            .finish_non_exhaustive()
    }
}

impl JwtValidator {
    /// Compiles the issuers: reads secrets from the environment and key files from disk,
    /// parses and pins every key. JWKS URLs start empty; call
    /// [`spawn_refreshers`](Self::spawn_refreshers) (or [`JwksCache::refresh`] on each of
    /// [`jwks_caches`](Self::jwks_caches) for a blocking first fetch) before serving.
    pub fn new(configs: Vec<JwtIssuerConfig>) -> Result<Self, JwtConfigError> {
        let mut issuers: Vec<Issuer> = Vec::with_capacity(configs.len());
        for config in configs {
            if issuers.iter().any(|i| i.config.issuer == config.issuer) {
                return Err(JwtConfigError::DuplicateIssuer(config.issuer));
            }
            issuers.push(compile_issuer(config)?);
        }
        Ok(Self { issuers })
    }

    /// Takes over from `previous` (the validator of the snapshot being replaced) the cache
    /// and refresh thread of every JWKS URL both configure the same way (same URL, same
    /// algorithm pin, same refresh settings), so a reload keeps the keys already fetched and
    /// tokens they sign pass at once, with no refetch. A URL new or changed here starts
    /// empty. Returns how many JWKS URLs were carried over.
    pub fn carry_over(&mut self, previous: &JwtValidator) -> usize {
        let mut carried = 0;
        for remote in self.issuers.iter_mut().flat_map(|i| i.remote.iter_mut()) {
            let old = previous
                .issuers
                .iter()
                .flat_map(|i| i.remote.iter())
                .find(|old| old.cache.same_source(&remote.cache));
            if let Some(old) = old {
                remote.cache = Arc::clone(&old.cache);
                remote.refresher = Arc::clone(&old.refresher);
                carried += 1;
            }
        }
        carried
    }

    /// Starts a side thread for each JWKS URL that has none yet (one carried over keeps its
    /// own); each fetches at once and then on schedule. Idempotent.
    pub fn spawn_refreshers(&self) -> std::io::Result<()> {
        for remote in self.issuers.iter().flat_map(|i| i.remote.iter()) {
            if remote.refresher.get().is_none() {
                let refresher = JwksRefresher::spawn(Arc::clone(&remote.cache))?;
                // Only one caller runs this per validator (start-up or a reload), so the
                // slot is still empty; were it not, the spare thread stops as it drops.
                let _ = remote.refresher.set(refresher);
            }
        }
        Ok(())
    }

    /// Every JWKS URL cache, for a blocking first fetch, metrics or tests.
    pub fn jwks_caches(&self) -> impl Iterator<Item = &Arc<JwksCache>> {
        self.issuers
            .iter()
            .flat_map(|i| i.remote.iter().map(|r| &r.cache))
    }

    /// Validates `token` (the bearer value) at `now_unix` (seconds since the epoch).
    pub fn validate(&self, token: &str, now_unix: u64) -> Result<Principal, JwtError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(JwtError::TooLarge);
        }
        let mut parts = token.split('.');
        let (Some(header_b64), Some(claims_b64), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(JwtError::Malformed("not three dot-separated parts"));
        };
        if signature.is_empty() {
            // An unsigned token; name it if its header says alg none.
            return Err(match parse_header(header_b64) {
                Err(e) => e,
                Ok(_) => JwtError::Malformed("empty signature"),
            });
        }
        let header = parse_header(header_b64)?;
        let claims = decode_claims(claims_b64)?;

        let (index, issuer) = match claims.get("iss") {
            // Without `iss` there is nothing to pick an issuer by: only a lone issuer that
            // does not require it reads the token.
            None => match self.issuers.as_slice() {
                [only] if !only.config.require_issuer => (0, only),
                _ => return Err(JwtError::MissingIssuer),
            },
            Some(Value::String(iss)) => self
                .issuers
                .iter()
                .enumerate()
                .find(|(_, i)| i.config.issuer == *iss)
                .ok_or(JwtError::UnknownIssuer)?,
            Some(_) => return Err(JwtError::InvalidClaim("iss")),
        };
        if !issuer.algs.contains(header.alg) {
            return Err(JwtError::AlgorithmNotAllowed);
        }

        let message = &token[..header_b64.len() + 1 + claims_b64.len()];
        issuer.verify_signature(&header, message, signature, now_unix)?;
        issuer.check_claims(index, &claims, now_unix)
    }
}

impl Issuer {
    fn verify_signature(
        &self,
        header: &Header,
        message: &str,
        signature: &str,
        now_unix: u64,
    ) -> Result<(), JwtError> {
        let kid = header.kid.as_deref();
        let remote_sets: Vec<_> = self.remote.iter().map(|r| r.cache.keys()).collect();
        let all_keys = || {
            self.keys
                .iter()
                .chain(remote_sets.iter().flat_map(|set| set.keys.iter()))
        };
        // A kid some key has selects exactly those keys; otherwise the keys without a kid
        // are the candidates (for tokens with or without one).
        let explicit = kid.is_some_and(|k| all_keys().any(|key| key.kid.as_deref() == Some(k)));
        let candidates = all_keys().filter(|key| {
            if explicit {
                key.kid.as_deref() == kid
            } else {
                key.kid.is_none()
            }
        });
        let mut tried = 0usize;
        for key in candidates {
            if !key.algs.contains(header.alg) {
                continue;
            }
            if tried == MAX_KEYS_TRIED {
                break;
            }
            tried += 1;
            if let Ok(true) = jsonwebtoken::crypto::verify(
                signature,
                message.as_bytes(),
                &key.key,
                header.alg.to_jsonwebtoken(),
            ) {
                return Ok(());
            }
        }
        if self.keys.is_empty() && remote_sets.iter().all(|set| set.keys.is_empty()) {
            // Not fetched yet: the refresher retries on its own schedule.
            return Err(JwtError::KeysUnavailable);
        }
        match kid {
            // The named key exists but is pinned to another algorithm, or did not verify.
            _ if explicit && tried == 0 => Err(JwtError::AlgorithmNotAllowed),
            _ if explicit => Err(JwtError::BadSignature),
            None if tried == 0 => Err(JwtError::MissingKid),
            None => Err(JwtError::BadSignature),
            Some(_) => {
                // No key has this kid: perhaps the issuer just rotated it in. Ask for a
                // refetch (rate-limited by the cache) and refuse this request now.
                for remote in &self.remote {
                    remote.cache.request_refetch(now_unix);
                }
                Err(JwtError::UnknownKid)
            }
        }
    }

    fn check_claims(
        &self,
        index: usize,
        claims: &Map<String, Value>,
        now: u64,
    ) -> Result<Principal, JwtError> {
        let config = &self.config;
        // `now`, `exp` and `nbf` are whole seconds, so `now ≥ exp + leeway` holds exactly
        // when `now ≥ exp + ⌈leeway⌉`, and `now + leeway < nbf` when `now + ⌊leeway⌋ < nbf`.
        let floor = config.leeway.as_secs();
        let ceil = floor.saturating_add(u64::from(config.leeway.subsec_nanos() > 0));
        let exp = numeric_date(claims, "exp")?;
        match exp {
            None if config.require_expiration => return Err(JwtError::MissingExpiration),
            Some(exp) if now >= exp.saturating_add(ceil) => return Err(JwtError::Expired),
            _ => {}
        }
        match numeric_date(claims, "nbf")? {
            None if config.require_not_before => return Err(JwtError::MissingNotBefore),
            Some(nbf) if now.saturating_add(floor) < nbf => return Err(JwtError::NotYetValid),
            _ => {}
        }
        match claims.get("aud") {
            None if config.require_audience => return Err(JwtError::MissingAudience),
            None => {}
            Some(aud) if !config.audiences.is_empty() => {
                let matches = |a: &str| config.audiences.iter().any(|c| c == a);
                let ok = match aud {
                    Value::String(a) => matches(a),
                    Value::Array(list) => list.iter().any(|v| v.as_str().is_some_and(matches)),
                    _ => return Err(JwtError::InvalidClaim("aud")),
                };
                if !ok {
                    return Err(JwtError::WrongAudience);
                }
            }
            Some(_) => {}
        }
        for required in &config.required_claims {
            let value = claims
                .get(&required.name)
                .ok_or_else(|| JwtError::MissingClaim(required.name.clone()))?;
            if !required.values.is_empty() && !claim_matches(value, &required.values) {
                return Err(JwtError::ClaimMismatch(required.name.clone()));
            }
        }
        let (subscription, claim_value) = match &config.subscription {
            None => (None, None),
            Some(mapping) => {
                let value = claims
                    .get(&mapping.claim)
                    .and_then(scalar_text)
                    .ok_or_else(|| JwtError::MissingClaim(mapping.claim.clone()))?;
                let id = mapping
                    .values
                    .get(&value)
                    .copied()
                    .or(mapping.default)
                    .ok_or(JwtError::UnmappedSubscription)?;
                (Some(id), Some(value))
            }
        };
        Ok(Principal {
            issuer: index,
            subscription,
            claim_value,
            subject: claims.get("sub").and_then(Value::as_str).map(str::to_owned),
            claims: config
                .scope_claims
                .iter()
                .filter_map(|name| Some((name.clone(), claims.get(name).and_then(scalar_text)?)))
                .collect(),
            expires_at: exp,
        })
    }
}

/// A claim's value as text when it is a string, number or boolean.
fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn claim_matches(value: &Value, allowed: &[String]) -> bool {
    let one = |v: &Value| match v {
        Value::String(s) => allowed.iter().any(|a| a == s),
        Value::Number(_) | Value::Bool(_) => scalar_text(v).is_some_and(|t| allowed.contains(&t)),
        _ => false,
    };
    match value {
        Value::Array(list) => list.iter().any(one),
        v => one(v),
    }
}

/// A NumericDate claim (seconds, possibly fractional; floored). Negative or non-numeric
/// values are refused.
fn numeric_date(claims: &Map<String, Value>, name: &'static str) -> Result<Option<u64>, JwtError> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => match (n.as_u64(), n.as_f64()) {
            (Some(v), _) => Ok(Some(v)),
            (None, Some(f)) if f.is_finite() && f >= 0.0 => Ok(Some(f as u64)),
            _ => Err(JwtError::InvalidClaim(name)),
        },
        Some(_) => Err(JwtError::InvalidClaim(name)),
    }
}

/// The JOSE header fields that matter. Unknown fields are allowed (`typ`, `cty`…);
/// duplicated known fields are refused by serde.
#[derive(Deserialize)]
struct RawHeader {
    alg: Option<String>,
    kid: Option<String>,
    #[serde(default, deserialize_with = "present")]
    jwk: bool,
    #[serde(default, deserialize_with = "present")]
    jku: bool,
    #[serde(default, deserialize_with = "present")]
    x5u: bool,
    #[serde(default, deserialize_with = "present")]
    x5c: bool,
    #[serde(default, deserialize_with = "present")]
    crit: bool,
}

/// `true` whenever the field is there, whatever its value (even `null`).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    serde::de::IgnoredAny::deserialize(d).map(|_| true)
}

struct Header {
    alg: JwtAlg,
    kid: Option<String>,
}

fn parse_header(b64: &str) -> Result<Header, JwtError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(b64)
        .map_err(|_| JwtError::Malformed("header is not base64url"))?;
    let raw: RawHeader = serde_json::from_slice(&bytes)
        .map_err(|_| JwtError::Malformed("header is not a JSON object"))?;
    let alg = raw.alg.ok_or(JwtError::Malformed("header has no alg"))?;
    if alg.eq_ignore_ascii_case("none") {
        return Err(JwtError::AlgNone);
    }
    let alg = JwtAlg::from_name(&alg).ok_or(JwtError::UnsupportedAlgorithm)?;
    for (here, name) in [
        (raw.jwk, "jwk"),
        (raw.jku, "jku"),
        (raw.x5u, "x5u"),
        (raw.x5c, "x5c"),
    ] {
        if here {
            return Err(JwtError::EmbeddedKey(name));
        }
    }
    if raw.crit {
        return Err(JwtError::CriticalHeader);
    }
    Ok(Header { alg, kid: raw.kid })
}

fn decode_claims(b64: &str) -> Result<Map<String, Value>, JwtError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(b64)
        .map_err(|_| JwtError::Malformed("claims are not base64url"))?;
    serde_json::from_slice(&bytes).map_err(|_| JwtError::Malformed("claims are not a JSON object"))
}

fn compile_issuer(config: JwtIssuerConfig) -> Result<Issuer, JwtConfigError> {
    let name = config.issuer.clone();
    if config.keys.is_empty() {
        return Err(JwtConfigError::NoKeys(name));
    }
    if config.require_audience && config.audiences.is_empty() {
        return Err(JwtConfigError::NoAudiences(name));
    }
    let key_error = |error| JwtConfigError::Key {
        issuer: name.clone(),
        error,
    };
    let file_key_error = |path: &PathBuf| {
        let (issuer, path) = (name.clone(), path.display().to_string());
        move |error| JwtConfigError::KeyFile {
            issuer,
            path,
            error,
        }
    };
    let read = |path: &PathBuf| {
        std::fs::read(path).map_err(|error| JwtConfigError::Read {
            issuer: name.clone(),
            path: path.display().to_string(),
            error,
        })
    };
    let mut keys = Vec::new();
    let mut remote = Vec::new();
    for key in &config.keys {
        let pin = AlgSet::from_algs(&key.algorithms);
        if pin.is_empty() {
            return Err(JwtConfigError::NoAlgorithms(name.clone()));
        }
        let is_set = matches!(
            key.source,
            JwtKeySource::JwksFile(_) | JwtKeySource::Jwks { .. } | JwtKeySource::JwksUrl { .. }
        );
        if is_set && key.kid.is_some() {
            return Err(JwtConfigError::KidOnJwks(name.clone()));
        }
        let kid = key.kid.clone();
        match &key.source {
            JwtKeySource::SecretEnv(var) => {
                let secret = std::env::var(var).map_err(|_| JwtConfigError::MissingEnv {
                    issuer: name.clone(),
                    var: var.clone(),
                })?;
                keys.push(VerifyKey::hmac(kid, secret.as_bytes(), pin).map_err(key_error)?);
            }
            JwtKeySource::Secret { secret, .. } => {
                keys.push(VerifyKey::hmac(kid, secret, pin).map_err(key_error)?);
            }
            JwtKeySource::PemFile(path) => {
                let key = VerifyKey::from_pem(kid, &read(path)?, pin);
                keys.push(key.map_err(file_key_error(path))?);
            }
            JwtKeySource::Pem { path, pem } => {
                let key = VerifyKey::from_pem(kid, pem, pin);
                keys.push(match path {
                    Some(path) => key.map_err(file_key_error(path))?,
                    None => key.map_err(key_error)?,
                });
            }
            JwtKeySource::JwksFile(path) => {
                keys.extend(parse_jwks(&read(path)?, pin).map_err(file_key_error(path))?);
            }
            JwtKeySource::Jwks { path, json } => {
                let set = parse_jwks(json, pin);
                keys.extend(match path {
                    Some(path) => set.map_err(file_key_error(path))?,
                    None => set.map_err(key_error)?,
                });
            }
            JwtKeySource::JwksUrl { url, settings } => {
                // A key set only ever yields RSA and EC keys (symmetric ones are skipped).
                let pin = pin.intersect(KeyKind::PUBLIC_ALGS);
                if pin.is_empty() {
                    return Err(key_error(JwksError::NoUsableKeys(0)));
                }
                let cache = JwksCache::new(url, pin, *settings).map_err(key_error)?;
                remote.push(RemoteKeys {
                    cache: Arc::new(cache),
                    refresher: Arc::new(OnceLock::new()),
                });
            }
        }
    }
    // Static keys carry their effective pin (kind ∩ configured).
    let algs = keys
        .iter()
        .fold(AlgSet::default(), |acc, k| acc.union(k.algs))
        .union(
            remote
                .iter()
                .fold(AlgSet::default(), |acc, r| acc.union(r.cache.algs())),
        );
    Ok(Issuer {
        config,
        keys,
        remote,
        algs,
    })
}

#[cfg(test)]
mod tests;
