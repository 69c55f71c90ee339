//! Verification keys: parsing them (JWKS documents, PEM files) and keeping a remote JSON Web
//! Key Set fresh off the request path.
//!
//! A [`VerifyKey`] is one public key (or HMAC secret) with its type and the algorithms it
//! is pinned to. The type decides which algorithms can ever be used with it — an RSA key
//! only RS256/384/512 and PS256, a P-256 key only ES256, a P-384 key only ES384, a secret
//! only the HS* its length allows — so a token cannot pick how its key is interpreted (the
//! classic HS256-with-the-RSA-public-key confusion).
//!
//! A [`JwksCache`] holds the last key set fetched from an `http://` or `https://` URL behind an
//! [`ArcSwap`]: the request path loads it without a lock, and a [`JwksRefresher`] side
//! thread replaces it whole. The thread refetches periodically (default every 10 min), retries
//! sooner after a failure (default 30 s), and keeps the last good keys through an outage —
//! a JWKS endpoint being down must not log everyone out. When a token names a `kid` the set
//! does not have (the issuer rotated keys), the validator asks for one early refetch
//! ([`JwksCache::request_refetch`]), at most once per `min_refetch_interval` (default 60 s)
//! so that tokens with made-up `kid`s cannot turn the gateway into a load generator against
//! the issuer. That request is refused (401) at once rather than held: a worker thread must
//! never wait on the network. Its client's retry, typically a second later, finds the new key.
//!
//! `https://` URLs are fetched over rustls (`StreamOwned`, blocking like the rest of the
//! fetch), the certificate checked against the Mozilla roots (`webpki-roots`) for the URL's
//! host, TLS 1.3 or 1.2.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::{JoinHandle, Thread};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{DecodingKey, DecodingKeyKind};

use crate::http::url::parse_http_url;
use crate::tls::client::{client_config, TlsFailure, Trust};
use rustls::pki_types::ServerName;
use serde::Deserialize;

use super::alg::{AlgSet, JwtAlg};
use crate::http::{parse_response, ChunkedDecoder, Parse, ResponseFraming, ResponseHead};

/// The shortest RSA modulus accepted, in bits (NIST: 2048 from 2011).
pub const MIN_RSA_BITS: usize = 2048;

/// The shortest HMAC secret accepted, in bytes (RFC 7518 §3.2: at least the hash size).
pub const MIN_HMAC_SECRET: usize = 32;

/// What kind of key material a [`VerifyKey`] is; each kind fits its own algorithms only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// An HMAC secret (HS256, HS384, HS512: each only with a secret at least as long as its
    /// hash, RFC 7518 §3.2).
    Hmac,
    /// An RSA public key (RS256, RS384, RS512, PS256).
    Rsa,
    /// A NIST P-256 public key (ES256).
    EcP256,
    /// A NIST P-384 public key (ES384).
    EcP384,
}

impl KeyKind {
    /// The algorithms a key set (JWKS) or a public key can carry: every one but HS*.
    pub const PUBLIC_ALGS: AlgSet = AlgSet::of_const(&[
        JwtAlg::RS256,
        JwtAlg::RS384,
        JwtAlg::RS512,
        JwtAlg::PS256,
        JwtAlg::ES256,
        JwtAlg::ES384,
    ]);

    /// The algorithms this kind of key verifies.
    pub fn algorithms(self) -> AlgSet {
        match self {
            Self::Hmac => AlgSet::from_algs(&[JwtAlg::HS256, JwtAlg::HS384, JwtAlg::HS512]),
            Self::Rsa => {
                AlgSet::from_algs(&[JwtAlg::RS256, JwtAlg::RS384, JwtAlg::RS512, JwtAlg::PS256])
            }
            Self::EcP256 => AlgSet::of(JwtAlg::ES256),
            Self::EcP384 => AlgSet::of(JwtAlg::ES384),
        }
    }
}

/// One key a token may be verified with.
#[derive(Clone)]
pub struct VerifyKey {
    /// The key's id: a token naming a `kid` is only tried against keys with that id; a key
    /// without one is tried for any token.
    pub kid: Option<String>,
    /// What the key is.
    pub kind: KeyKind,
    /// The algorithms it may verify: the configured pin intersected with what its kind
    /// allows. Never empty.
    pub algs: AlgSet,
    pub(crate) key: DecodingKey,
}

impl std::fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyKey")
            .field("kid", &self.kid)
            .field("kind", &self.kind)
            .field("algs", &self.algs)
            .finish_non_exhaustive()
    }
}

impl VerifyKey {
    /// An HMAC secret, pinned to `algs` (some of HS256/384/512). A secret shorter than an
    /// algorithm's hash (32, 48, 64 bytes; RFC 7518 §3.2) never verifies that algorithm:
    /// HS384 and HS512 are dropped from the pin for a shorter secret, and a secret under
    /// 32 bytes, or one left with no algorithm, is refused.
    pub fn hmac(kid: Option<String>, secret: &[u8], algs: AlgSet) -> Result<Self, JwksError> {
        if secret.len() < MIN_HMAC_SECRET {
            return Err(JwksError::WeakKey("an HMAC secret needs at least 32 bytes"));
        }
        let long_enough = [(JwtAlg::HS384, 48), (JwtAlg::HS512, 64)]
            .into_iter()
            .filter(|&(_, min)| secret.len() < min)
            .fold(algs, |algs, (alg, _)| algs.without(alg));
        if long_enough.is_empty() && !algs.intersect(KeyKind::Hmac.algorithms()).is_empty() {
            return Err(JwksError::WeakKey(
                "an HMAC secret needs at least 48 bytes for HS384 and 64 for HS512",
            ));
        }
        Self::pinned(
            kid,
            KeyKind::Hmac,
            DecodingKey::from_secret(secret),
            long_enough,
        )
    }

    /// A public key from PEM: SPKI (`BEGIN PUBLIC KEY`, RSA, P-256 or P-384) or PKCS#1
    /// (`BEGIN RSA PUBLIC KEY`).
    ///
    /// The PEM armor and the key's ASN.1 structure are read by `jsonwebtoken` (its `use_pem`
    /// feature: [`DecodingKey::from_rsa_pem`], [`DecodingKey::from_ec_pem`]); this adds what
    /// it leaves out: only public keys are accepted (`jsonwebtoken` also takes private keys
    /// and certificates, which would load here as keys that never verify or a key whose
    /// certificate nobody checks), the RSA modulus must be valid and at least
    /// [`MIN_RSA_BITS`] long (as for JWKS keys), and an EC point must lie on P-256 or P-384,
    /// which also tells the curve (by the point, not the SPKI's curve OID: a point valid on
    /// P-256 is a P-256 key whatever the file claims).
    ///
    /// # Errors
    /// [`JwksError::BadKey`] saying what the PEM holds instead (not PEM, a private key, a
    /// certificate, another key type or curve, a malformed key); [`JwksError::WeakKey`] for
    /// an RSA key under 2048 bits; [`JwksError::AlgorithmMismatch`] when none of `algs`
    /// fits the key.
    pub fn from_pem(kid: Option<String>, pem: &[u8], algs: AlgSet) -> Result<Self, JwksError> {
        use rsa::pkcs1::DecodeRsaPublicKey as _;
        use rsa::traits::PublicKeyParts as _;

        let block = pem::parse(pem)
            .map_err(|_| JwksError::BadKey("not PEM (no well-formed -----BEGIN ...----- block)"))?;
        match block.tag() {
            "PUBLIC KEY" | "RSA PUBLIC KEY" => {}
            tag if tag.ends_with("PRIVATE KEY") => {
                return Err(JwksError::BadKey(
                    "PEM holds a private key: give the public key only",
                ))
            }
            "CERTIFICATE" => {
                return Err(JwksError::BadKey(
                    "PEM holds a certificate: give its public key",
                ))
            }
            _ => return Err(JwksError::BadKey("PEM holds no public key")),
        }
        let unsupported = || JwksError::BadKey("PEM holds no RSA, P-256 or P-384 public key");
        if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
            // `jsonwebtoken` unwraps SPKI to the PKCS#1 `RSAPublicKey` it holds.
            let DecodingKeyKind::SecretOrDer(der) = key.kind() else {
                return Err(unsupported());
            };
            let rsa = rsa::RsaPublicKey::from_pkcs1_der(der)
                .map_err(|_| JwksError::BadKey("invalid RSA public key"))?;
            return Self::rsa(kid, &rsa.n().to_bytes_be(), &rsa.e().to_bytes_be(), algs);
        }
        let key = DecodingKey::from_ec_pem(pem).map_err(|_| unsupported())?;
        // `jsonwebtoken` unwraps SPKI to the SEC1-encoded point.
        let DecodingKeyKind::SecretOrDer(point) = key.kind() else {
            return Err(unsupported());
        };
        let kind = if p256::PublicKey::from_sec1_bytes(point).is_ok() {
            KeyKind::EcP256
        } else if p384::PublicKey::from_sec1_bytes(point).is_ok() {
            KeyKind::EcP384
        } else {
            return Err(unsupported());
        };
        Self::pinned(kid, kind, key, algs)
    }

    fn rsa(kid: Option<String>, n: &[u8], e: &[u8], algs: AlgSet) -> Result<Self, JwksError> {
        // Validates the numbers (exponent range, modulus at most 4096 bits).
        rsa::RsaPublicKey::new(
            rsa::BigUint::from_bytes_be(n),
            rsa::BigUint::from_bytes_be(e),
        )
        .map_err(|_| JwksError::BadKey("invalid RSA public key"))?;
        let bits = n.iter().skip_while(|&&b| b == 0).count() * 8;
        if bits < MIN_RSA_BITS {
            return Err(JwksError::WeakKey("an RSA key needs at least 2048 bits"));
        }
        Self::pinned(
            kid,
            KeyKind::Rsa,
            DecodingKey::from_rsa_raw_components(n, e),
            algs,
        )
    }

    /// An EC public key from its JWK coordinates: 32 bytes each for P-256, 48 for P-384.
    fn ec(
        kid: Option<String>,
        kind: KeyKind,
        x: &[u8],
        y: &[u8],
        algs: AlgSet,
    ) -> Result<Self, JwksError> {
        let size = match kind {
            KeyKind::EcP256 => 32,
            KeyKind::EcP384 => 48,
            KeyKind::Hmac | KeyKind::Rsa => return Err(JwksError::BadKey("not an EC key")),
        };
        if x.len() != size || y.len() != size {
            return Err(JwksError::BadKey("an EC coordinate has the wrong length"));
        }
        let mut point = Vec::with_capacity(1 + 2 * size);
        point.push(0x04);
        point.extend_from_slice(x);
        point.extend_from_slice(y);
        let on_curve = match kind {
            KeyKind::EcP256 => p256::PublicKey::from_sec1_bytes(&point).is_ok(),
            _ => p384::PublicKey::from_sec1_bytes(&point).is_ok(),
        };
        if !on_curve {
            return Err(JwksError::BadKey("not a point on the curve"));
        }
        Self::pinned(kid, kind, DecodingKey::from_ec_der(&point), algs)
    }

    fn pinned(
        kid: Option<String>,
        kind: KeyKind,
        key: DecodingKey,
        algs: AlgSet,
    ) -> Result<Self, JwksError> {
        let algs = algs.intersect(kind.algorithms());
        if algs.is_empty() {
            return Err(JwksError::AlgorithmMismatch(kind));
        }
        Ok(Self {
            kid,
            kind,
            algs,
            key,
        })
    }
}

/// Why keys could not be loaded or fetched.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    /// The JWKS URL is not `http[s]://host[:port]/path`.
    #[error("bad JWKS URL: {0}")]
    Url(String),
    /// The TLS handshake with an `https://` JWKS endpoint failed, for this reason.
    #[error("JWKS fetch failed (tls: {0})")]
    Tls(TlsFailure),
    /// Connecting, sending or receiving failed (including timeouts).
    #[error("JWKS fetch failed: {0}")]
    Io(#[from] std::io::Error),
    /// The server answered with a status other than 200.
    #[error("JWKS fetch answered {0}")]
    Status(u16),
    /// The answer is not well-formed HTTP/1.1.
    #[error("JWKS answer is not valid HTTP: {0}")]
    Http(&'static str),
    /// The answer exceeds the size limit.
    #[error("JWKS answer exceeds {0} bytes")]
    TooLarge(usize),
    /// The document is not a JWKS (`{"keys": [...]}`).
    #[error("not a JWKS document: {0}")]
    Json(String),
    /// The document has no key usable for signatures with the pinned algorithms.
    #[error("the JWKS has no usable signing key ({0} skipped)")]
    NoUsableKeys(usize),
    /// A key is malformed.
    #[error("bad key: {0}")]
    BadKey(&'static str),
    /// A key is too weak to accept.
    #[error("weak key: {0}")]
    WeakKey(&'static str),
    /// None of the pinned algorithms fits the key's kind.
    #[error("no pinned algorithm fits a {0:?} key")]
    AlgorithmMismatch(KeyKind),
}

/// One JWK as found in a key set; everything optional so one odd key only skips itself.
#[derive(Deserialize)]
struct RawJwk {
    kty: Option<String>,
    kid: Option<String>,
    alg: Option<String>,
    #[serde(rename = "use")]
    use_: Option<String>,
    crv: Option<String>,
    n: Option<String>,
    e: Option<String>,
    x: Option<String>,
    y: Option<String>,
}

#[derive(Deserialize)]
struct RawJwks {
    keys: Vec<serde_json::Value>,
}

/// Parses a JWKS document into keys pinned to `algs`. RSA (`n`/`e`), P-256 and P-384
/// (`x`/`y`) keys are kept; keys for encryption (`use` other than `sig`), symmetric (`oct`) keys,
/// other curves, keys whose `alg` is not among the pinned ones and malformed keys are
/// skipped. A set with no usable key is an error (so a cache keeps its previous keys).
pub fn parse_jwks(document: &[u8], algs: AlgSet) -> Result<Vec<VerifyKey>, JwksError> {
    let raw: RawJwks =
        serde_json::from_slice(document).map_err(|e| JwksError::Json(e.to_string()))?;
    let total = raw.keys.len();
    let keys: Vec<VerifyKey> = raw
        .keys
        .into_iter()
        .filter_map(|value| serde_json::from_value::<RawJwk>(value).ok())
        .filter_map(|jwk| jwk_to_key(jwk, algs))
        .collect();
    if keys.is_empty() {
        return Err(JwksError::NoUsableKeys(total));
    }
    Ok(keys)
}

fn jwk_to_key(jwk: RawJwk, algs: AlgSet) -> Option<VerifyKey> {
    if jwk.use_.as_deref().is_some_and(|u| u != "sig") {
        return None;
    }
    let algs = match jwk.alg.as_deref() {
        Some(name) => algs.intersect(AlgSet::of(JwtAlg::from_name(name)?)),
        None => algs,
    };
    let b64 = |s: Option<String>| URL_SAFE_NO_PAD.decode(s?.trim_end_matches('=')).ok();
    match (jwk.kty.as_deref()?, jwk.crv.as_deref()) {
        ("RSA", _) => VerifyKey::rsa(jwk.kid, &b64(jwk.n)?, &b64(jwk.e)?, algs).ok(),
        ("EC", Some(crv @ ("P-256" | "P-384"))) => {
            let kind = if crv == "P-256" {
                KeyKind::EcP256
            } else {
                KeyKind::EcP384
            };
            VerifyKey::ec(jwk.kid, kind, &b64(jwk.x)?, &b64(jwk.y)?, algs).ok()
        }
        _ => None,
    }
}

/// The keys of one JWKS as last fetched; immutable, replaced whole.
#[derive(Debug, Default)]
pub struct KeySet {
    /// The usable keys (empty before the first successful fetch).
    pub keys: Vec<VerifyKey>,
}

impl KeySet {
    /// Whether a key has this id.
    pub fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }
}

/// Timing and size settings of a remote JWKS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JwksSettings {
    /// Refetch this often while fetches succeed. Default 10 min.
    pub refresh_every: Duration,
    /// Refetch this soon after a failed fetch (the old keys stay). Default 30 s.
    pub retry_after_failure: Duration,
    /// At most one early refetch for an unknown `kid` per this many seconds. Default 60.
    pub min_refetch_interval_secs: u64,
    /// Connect, send and receive must each finish within this. Default 5 s.
    pub fetch_timeout: Duration,
    /// The largest answer accepted (head and body). Default 1 MiB.
    pub max_response: usize,
}

impl Default for JwksSettings {
    fn default() -> Self {
        Self {
            refresh_every: Duration::from_secs(600),
            retry_after_failure: Duration::from_secs(30),
            min_refetch_interval_secs: 60,
            fetch_timeout: Duration::from_secs(5),
            max_response: 1 << 20,
        }
    }
}

/// A remote JWKS, cached. Read lock-free with [`keys`](Self::keys); filled by
/// [`refresh`](Self::refresh) (blocking: call it from a [`JwksRefresher`] or at startup,
/// never on a worker).
pub struct JwksCache {
    url: HttpUrl,
    algs: AlgSet,
    settings: JwksSettings,
    keys: ArcSwap<KeySet>,
    fetches: AtomicU64,
    failures: AtomicU64,
    /// Unix second of the last early refetch asked for, plus one (0: never).
    last_refetch: AtomicU64,
    refetch_requests: AtomicU64,
    refetch_wanted: AtomicBool,
    refresher: OnceLock<Thread>,
}

impl std::fmt::Debug for JwksCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwksCache")
            .field("url", &self.url.text)
            .field("keys", &self.keys.load().keys.len())
            .finish_non_exhaustive()
    }
}

impl JwksCache {
    /// A cache for the JWKS at `url` (`http://` or `https://`), its keys pinned to `algs`. Empty until
    /// the first successful [`refresh`](Self::refresh).
    pub fn new(url: &str, algs: AlgSet, settings: JwksSettings) -> Result<Self, JwksError> {
        Ok(Self {
            url: HttpUrl::parse(url)?,
            algs,
            settings,
            keys: ArcSwap::from_pointee(KeySet::default()),
            fetches: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            last_refetch: AtomicU64::new(0),
            refetch_requests: AtomicU64::new(0),
            refetch_wanted: AtomicBool::new(false),
            refresher: OnceLock::new(),
        })
    }

    /// The current key set: one atomic load, no lock.
    pub fn keys(&self) -> arc_swap::Guard<Arc<KeySet>> {
        self.keys.load()
    }

    /// The algorithms this set's keys are pinned to.
    pub fn algs(&self) -> AlgSet {
        self.algs
    }

    /// Whether `other` fetches the same URL with the same pin and settings, so its keys can
    /// stand for this one's (a reload that left the key source alone).
    pub fn same_source(&self, other: &JwksCache) -> bool {
        self.url.text == other.url.text
            && self.algs == other.algs
            && self.settings == other.settings
    }

    /// Fetches and parses the JWKS now (blocking, bounded by the fetch timeout) and swaps it
    /// in; returns how many keys it holds. On any failure the previous keys stay.
    pub fn refresh(&self) -> Result<usize, JwksError> {
        let result =
            http_get(&self.url, &self.settings).and_then(|body| parse_jwks(&body, self.algs));
        match result {
            Ok(keys) => {
                let n = keys.len();
                self.keys.store(Arc::new(KeySet { keys }));
                self.fetches.fetch_add(1, Ordering::Relaxed);
                Ok(n)
            }
            Err(e) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                Err(e)
            }
        }
    }

    /// Asks the refresher for an early refetch because a token named an unknown `kid`.
    /// Granted at most once per `min_refetch_interval_secs` (by `now_unix`, across all
    /// workers); returns whether this call was the one granted.
    pub fn request_refetch(&self, now_unix: u64) -> bool {
        let stamp = now_unix.saturating_add(1);
        let last = self.last_refetch.load(Ordering::Relaxed);
        if last != 0 && stamp < last.saturating_add(self.settings.min_refetch_interval_secs) {
            return false;
        }
        if self
            .last_refetch
            .compare_exchange(last, stamp, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            return false; // another worker got it
        }
        self.refetch_requests.fetch_add(1, Ordering::Relaxed);
        self.refetch_wanted.store(true, Ordering::Release);
        if let Some(thread) = self.refresher.get() {
            thread.unpark();
        }
        true
    }

    /// Successful fetches so far.
    pub fn fetch_count(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }

    /// Failed fetches so far.
    pub fn failure_count(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Early refetches granted so far.
    pub fn refetch_request_count(&self) -> u64 {
        self.refetch_requests.load(Ordering::Relaxed)
    }
}

/// The side thread that keeps one [`JwksCache`] fresh. Dropping it stops the thread (at its
/// next wake-up; a fetch in progress finishes first, within the fetch timeout).
#[derive(Debug)]
pub struct JwksRefresher {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl JwksRefresher {
    /// Starts the thread: it fetches at once, then on the schedule in [`JwksSettings`] and
    /// whenever [`JwksCache::request_refetch`] is granted.
    pub fn spawn(cache: Arc<JwksCache>) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let stop_flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("sluice-jwks".into())
            .spawn(move || refresh_loop(&cache, &stop_flag))?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for JwksRefresher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
        }
    }
}

fn refresh_loop(cache: &JwksCache, stop: &AtomicBool) {
    let _ = cache.refresher.set(std::thread::current());
    while !stop.load(Ordering::Acquire) {
        cache.refetch_wanted.store(false, Ordering::Release);
        let wait = match cache.refresh() {
            Ok(n) => {
                tracing::debug!(url = %cache.url.text, keys = n, "JWKS refreshed");
                cache.settings.refresh_every
            }
            Err(e) => {
                tracing::warn!(url = %cache.url.text, error = %e, "JWKS refresh failed; keeping the previous keys");
                cache.settings.retry_after_failure
            }
        };
        let deadline = Instant::now() + wait;
        loop {
            if stop.load(Ordering::Acquire) || cache.refetch_wanted.load(Ordering::Acquire) {
                break;
            }
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            std::thread::park_timeout(deadline - now);
        }
    }
}

/// An `http://host[:port]/path` URL, split.
#[derive(Debug, Clone)]
struct HttpUrl {
    text: String,
    host: String,
    port: u16,
    path: String,
    /// `host[:port]` as written, for the `Host` header.
    authority: String,
    /// For `https://`: the client config (webpki roots) and the name to check.
    tls: Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>,
}

impl HttpUrl {
    fn parse(url: &str) -> Result<Self, JwksError> {
        let parsed = parse_http_url(url).map_err(JwksError::Url)?;
        let tls = if parsed.tls {
            let name = ServerName::try_from(parsed.host.to_owned()).map_err(|_| {
                JwksError::Url(format!("`{}` is not a DNS name or IP address", parsed.host))
            })?;
            Some((
                client_config(&Trust::WebPki, true).map_err(JwksError::Url)?,
                name,
            ))
        } else {
            None
        };
        let path = if parsed.path.is_empty() {
            "/"
        } else {
            parsed.path
        };
        Ok(Self {
            text: url.to_owned(),
            host: parsed.host.to_owned(),
            port: parsed.port,
            path: match parsed.query {
                Some(query) => format!("{path}?{query}"),
                None => path.to_owned(),
            },
            authority: parsed.authority.to_owned(),
            tls,
        })
    }

    fn host_header(&self) -> String {
        self.authority.clone()
    }
}

/// A small blocking HTTP/1.1 GET (`Connection: close`) returning the 200 answer's body.
fn http_get(url: &HttpUrl, settings: &JwksSettings) -> Result<Vec<u8>, JwksError> {
    let timeout = settings.fetch_timeout;
    let deadline = Instant::now() + timeout;
    let mut last_error = None;
    let mut stream = None;
    for addr in (url.host.as_str(), url.port).to_socket_addrs()? {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last_error = Some(e),
        }
    }
    let stream = match (stream, last_error) {
        (Some(s), _) => s,
        (None, Some(e)) => return Err(e.into()),
        (None, None) => return Err(JwksError::Url("host has no address".to_owned())),
    };
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    match &url.tls {
        None => get_over(stream, url, settings, deadline),
        Some((config, name)) => {
            let conn = rustls::ClientConnection::new(Arc::clone(config), name.clone())
                .map_err(|e| JwksError::Tls(TlsFailure::of(&e)))?;
            let tls = rustls::StreamOwned::new(conn, stream);
            get_over(tls, url, settings, deadline).map_err(|e| match e {
                JwksError::Io(io) if io.get_ref().is_some_and(|i| i.is::<rustls::Error>()) => {
                    JwksError::Tls(TlsFailure::of_io(&io))
                }
                other => other,
            })
        }
    }
}

/// The GET of [`http_get`] over a connected `stream` (plain or TLS). On TLS, an end of
/// stream without `close_notify` ends the answer like a FIN (many servers close that way
/// after `Connection: close`); a cut-short framed body is still caught by its framing.
fn get_over<S: Read + Write>(
    mut stream: S,
    url: &HttpUrl,
    settings: &JwksSettings,
    deadline: Instant,
) -> Result<Vec<u8>, JwksError> {
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nAccept: application/json\r\nUser-Agent: sluice\r\nConnection: close\r\n\r\n",
        url.path,
        url.host_header()
    );
    stream.write_all(request.as_bytes())?;

    let mut buf = Vec::with_capacity(8192);
    let mut chunk = [0u8; 8192];
    loop {
        if Instant::now() >= deadline {
            return Err(std::io::Error::from(std::io::ErrorKind::TimedOut).into());
        }
        let n = match stream.read(&mut chunk) {
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => 0,
            other => other?,
        };
        if n == 0 {
            break;
        }
        if buf.len() + n > settings.max_response {
            return Err(JwksError::TooLarge(settings.max_response));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    response_body(&buf, settings.max_response)
}

/// The body of a complete HTTP/1.1 answer held in `buf`, if its status is 200.
fn response_body(buf: &[u8], max: usize) -> Result<Vec<u8>, JwksError> {
    let mut head = ResponseHead::default();
    match parse_response(buf, false, 16 * 1024, &mut head) {
        Ok(Parse::Complete) => {}
        Ok(Parse::Partial) => return Err(JwksError::Http("the head is cut short")),
        Err(_) => return Err(JwksError::Http("malformed head")),
    }
    if head.status != 200 {
        return Err(JwksError::Status(head.status));
    }
    let rest = buf.get(head.head_len..).unwrap_or_default();
    match head.framing {
        ResponseFraming::None => Ok(Vec::new()),
        ResponseFraming::Close => Ok(rest.to_vec()),
        ResponseFraming::Length(n) => usize::try_from(n)
            .ok()
            .and_then(|n| rest.get(..n))
            .map(<[u8]>::to_vec)
            .ok_or(JwksError::Http("the body is cut short")),
        ResponseFraming::Chunked => {
            let mut out = Vec::new();
            let mut decoder = ChunkedDecoder::new(max as u64);
            match decoder.decode(rest, &mut out) {
                Ok(d) if d.done => Ok(out),
                Ok(_) => Err(JwksError::Http("the chunked body is cut short")),
                Err(_) => Err(JwksError::Http("bad chunked framing")),
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
