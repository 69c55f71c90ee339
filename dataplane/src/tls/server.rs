//! The listeners' TLS: one `rustls::ServerConfig` per config snapshot, built from
//! `[server.tls]`.
//!
//! TLS 1.3 and 1.2, ALPN `http/1.1` only (a client offering only `h2` is refused in the
//! handshake, RFC 7301 §3.2), the default certificate or one chosen by the client's server
//! name ([`SniResolver`]), and with `client_ca_file` client certificates required and
//! verified against that CA (RFC 8446 §4.3.2). A reload builds a new config: handshakes that
//! start after it use the new certificates; connections already open keep theirs.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, DnsName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme,
};

use super::{pem, provider};

/// Why a certificate and key pair cannot serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PairError {
    /// The certificate file (a sentence after the file's name).
    Cert(String),
    /// The key file, or the key against the certificate.
    Key(String),
}

/// A certificate chain (leaf first) and its private key, from PEM text, checked to belong
/// together.
///
/// # Errors
/// [`PairError::Cert`] for a file that holds no usable certificate; [`PairError::Key`] for
/// no usable key, a key type rustls cannot sign with, or a key that is not the
/// certificate's.
pub fn certified_key(cert_pem: &[u8], key_pem: &[u8]) -> Result<CertifiedKey, PairError> {
    let chain = pem::certificates(cert_pem).map_err(PairError::Cert)?;
    let key = pem::private_key(key_pem).map_err(PairError::Key)?;
    CertifiedKey::from_der(chain, key, &provider()).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => {
            PairError::Key("is not the private key of the certificate in cert_file".to_string())
        }
        other => PairError::Key(format!("cannot sign with this key: {other}")),
    })
}

/// Whether `key`'s certificate is for `name` (a subject alternative name matching it, RFC
/// 6125): an `[[server.tls.sni]]` certificate that is not would fail every client asking
/// for that name.
///
/// # Errors
/// A sentence saying it is not.
pub fn certificate_is_for(key: &CertifiedKey, name: &str) -> Result<(), String> {
    let not_for = || format!("is not a certificate for `{name}` (none of its names matches)");
    let leaf = key.end_entity_cert().map_err(|_| not_for())?;
    let parsed = rustls::server::ParsedCertificate::try_from(leaf).map_err(|_| not_for())?;
    let server_name = rustls::pki_types::ServerName::try_from(name).map_err(|_| not_for())?;
    rustls::client::verify_server_name(&parsed, &server_name).map_err(|_| not_for())
}

/// How long before its end a serving certificate is reported as expiring: 14 days.
pub const EXPIRY_NOTICE: Duration = Duration::from_secs(14 * 24 * 3600);

/// What an operator should hear about `key`'s certificate's validity at `now`: expired, not
/// yet valid, or expiring within [`EXPIRY_NOTICE`] (a sentence with the date, UTC);
/// `None` when it is comfortably valid or cannot be read (rustls read it already).
pub fn validity_notice(key: &CertifiedKey, now: std::time::SystemTime) -> Option<String> {
    let leaf = key.end_entity_cert().ok()?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
    let now = now.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs();
    let now = i64::try_from(now).ok()?;
    let validity = cert.validity();
    let (from, to) = (
        validity.not_before.timestamp(),
        validity.not_after.timestamp(),
    );
    let date = |t: &x509_parser::time::ASN1Time| t.to_string();
    if now >= to {
        Some(format!(
            "expired on {}: clients will refuse it",
            date(&validity.not_after)
        ))
    } else if now < from {
        Some(format!(
            "is not valid until {}: clients will refuse it until then",
            date(&validity.not_before)
        ))
    } else if to - now < EXPIRY_NOTICE.as_secs() as i64 {
        Some(format!("expires on {}", date(&validity.not_after)))
    } else {
        None
    }
}

/// Checks a `server_name` of `[[server.tls.sni]]`: a DNS name (RFC 6066 §3 sends host
/// names only, never addresses). Returns it lowercased, as the resolver compares.
///
/// # Errors
/// A sentence naming what is wrong.
pub fn sni_name(name: &str) -> Result<String, String> {
    match DnsName::try_from(name) {
        Ok(dns) => Ok(dns.to_lowercase_owned().as_ref().to_string()),
        Err(_) => Err(format!(
            "`{name}` is not a DNS name (SNI carries host names, e.g. \"api.example.com\")"
        )),
    }
}

/// Picks the certificate for a handshake: the one whose `server_name` is the name the client
/// asked for (ASCII case ignored), else the default. A client that sends no name gets the
/// default.
pub struct SniResolver {
    default: Arc<CertifiedKey>,
    by_name: HashMap<String, Arc<CertifiedKey>>,
}

impl fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SniResolver")
            .field("names", &self.by_name.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let chosen = hello
            .server_name()
            .and_then(|name| self.by_name.get(&name.to_ascii_lowercase()));
        Some(chosen.unwrap_or(&self.default).clone())
    }
}

/// The subject of the client certificate a handshake verified, once it has.
pub type VerifiedSubject = Arc<Mutex<Option<Arc<str>>>>;

/// The client-certificate verifier of one connection: `WebPkiClientVerifier`'s verdict,
/// and on success the certificate's subject kept for the connection (rustls' verifiers see
/// no connection, so each mTLS handshake gets its own).
#[derive(Debug)]
struct RecordingVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    subject: VerifiedSubject,
}

impl ClientCertVerifier for RecordingVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        if let Ok(mut slot) = self.subject.lock() {
            *slot = Some(subject_of(end_entity).into());
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// A certificate's subject as RFC 4514 text (`CN=app-1,O=Contoso`); a certificate the
/// verifier accepted always parses, but should one not, its SHA-256 fingerprint stands in.
pub fn subject_of(cert: &CertificateDer<'_>) -> String {
    match x509_parser::parse_x509_certificate(cert.as_ref()) {
        Ok((_, parsed)) => parsed.subject().to_string(),
        Err(_) => {
            use sha2::Digest;
            let digest = sha2::Sha256::digest(cert.as_ref());
            let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
            format!("sha256:{hex}")
        }
    }
}

/// The compiled `[server.tls]`: what every TLS listener of a snapshot accepts with.
pub struct ServerTls {
    config: Arc<ServerConfig>,
    /// The client-certificate verifier, when `client_ca_file` is set.
    client_verifier: Option<Arc<dyn ClientCertVerifier>>,
    /// The certificates, by server name.
    resolver: Arc<SniResolver>,
    /// How long a handshake may take before the connection is dropped. Default 10 s.
    pub handshake_timeout: Duration,
    /// Whether clients must present a certificate from `client_ca_file`.
    pub client_auth: bool,
    /// Identifies the inputs (files' bytes, names, timeout): two configs built from the same
    /// compare equal, so a reload that did not touch TLS reads as no change.
    inputs: [u8; 32],
}

impl ServerTls {
    /// Builds the listeners' config.
    ///
    /// `default` serves clients that ask for no name or one no `sni` entry has; `sni` pairs
    /// lowercased server names with their certificates; `client_roots`, when given, makes a
    /// client certificate from them mandatory.
    ///
    /// # Errors
    /// A client CA set rustls cannot build a verifier from (a sentence).
    pub fn new(
        default: CertifiedKey,
        sni: Vec<(String, CertifiedKey)>,
        client_roots: Option<RootCertStore>,
        handshake_timeout: Duration,
        inputs: [u8; 32],
    ) -> Result<Self, String> {
        let client_auth = client_roots.is_some();
        let client_verifier = match client_roots {
            Some(roots) => Some(
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                    .build()
                    .map_err(|e| format!("cannot verify clients against it: {e}"))?,
            ),
            None => None,
        };
        let resolver = Arc::new(SniResolver {
            default: Arc::new(default),
            by_name: sni
                .into_iter()
                .map(|(name, key)| (name, Arc::new(key)))
                .collect(),
        });
        let config = server_config(client_verifier.clone(), resolver.clone())?;
        Ok(Self {
            config: Arc::new(config),
            client_verifier,
            resolver,
            handshake_timeout,
            client_auth,
            inputs,
        })
    }

    /// The acceptor for one connection's handshake, and with client certificates the slot
    /// where its verified subject will be: the shared config without them; with them, a
    /// config of its own whose verifier records into this connection's slot (sharing the
    /// certificates; no session resumption, see `server_config`).
    pub fn acceptor(&self) -> (monoio_rustls::TlsAcceptor, Option<VerifiedSubject>) {
        let Some(inner) = &self.client_verifier else {
            return (monoio_rustls::TlsAcceptor::from(self.config.clone()), None);
        };
        let subject = VerifiedSubject::default();
        let recording = Arc::new(RecordingVerifier {
            inner: inner.clone(),
            subject: subject.clone(),
        });
        match server_config(Some(recording), self.resolver.clone()) {
            Ok(config) => (
                monoio_rustls::TlsAcceptor::from(Arc::new(config)),
                Some(subject),
            ),
            // Built from the same parts in `new` already, so this does not happen; the
            // shared config still verifies the client, only its subject is not kept.
            Err(_) => (monoio_rustls::TlsAcceptor::from(self.config.clone()), None),
        }
    }
}

/// A listeners' config: TLS 1.3 and 1.2, `verifier` (or no client authentication), the
/// certificates of `resolver`, ALPN `http/1.1`.
fn server_config(
    verifier: Option<Arc<dyn ClientCertVerifier>>,
    resolver: Arc<SniResolver>,
) -> Result<ServerConfig, String> {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?;
    let client_auth = verifier.is_some();
    let builder = match verifier {
        Some(verifier) => builder.with_client_cert_verifier(verifier),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    if client_auth {
        // A resumed session skips certificate verification, so its connection would not
        // know its client's certificate (and `client_cert` limits would not count it):
        // with client certificates every handshake is a full one (no session cache, no
        // TLS 1.3 tickets).
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
    }
    Ok(config)
}

impl PartialEq for ServerTls {
    fn eq(&self, other: &Self) -> bool {
        self.inputs == other.inputs
    }
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls")
            .field("handshake_timeout", &self.handshake_timeout)
            .field("client_auth", &self.client_auth)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use super::*;

    /// A self-signed certificate valid from `from` to `to` (seconds since the epoch), as a
    /// pair.
    fn valid(from: u64, to: u64) -> CertifiedKey {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["gw.test".to_string()]).unwrap();
        params.not_before = rcgen::date_time_ymd(1970, 1, 1) + Duration::from_secs(from);
        params.not_after = rcgen::date_time_ymd(1970, 1, 1) + Duration::from_secs(to);
        let cert = params.self_signed(&key).unwrap();
        certified_key(cert.pem().as_bytes(), key.serialize_pem().as_bytes()).unwrap()
    }

    #[test]
    fn serving_certificates_are_reported_expired_early_or_expiring() {
        let now = SystemTime::now();
        let secs = now.duration_since(UNIX_EPOCH).unwrap().as_secs();
        let day = 24 * 3600;
        let notice = |from, to| validity_notice(&valid(from, to), now);
        assert_eq!(notice(secs - 365 * day, secs + 365 * day), None);
        let expired = notice(1_577_836_800, 1_609_459_200).unwrap();
        assert!(
            expired.starts_with("expired on ") && expired.contains("2021"),
            "{expired}"
        );
        let early = notice(secs + 30 * day, secs + 365 * day).unwrap();
        assert!(early.starts_with("is not valid until "), "{early}");
        let soon = notice(secs - day, secs + 3 * day).unwrap();
        assert!(soon.starts_with("expires on "), "{soon}");
    }
}
