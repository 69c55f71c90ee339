//! TLS to backends and to JWKS endpoints: one rustls [`ClientConfig`] per trust set, the
//! handshake over a monoio `TcpStream` (`monoio-rustls`), and every handshake failure named
//! in words ([`TlsFailure`]).
//!
//! A `ClientConfig` offers TLS 1.3 and 1.2, ALPN `http/1.1` only (Sluice speaks HTTP/1.1 to
//! backends) and resumes sessions from its in-memory cache (rustls' default: 256 sessions,
//! tickets or session ids), so the config carries the cache: the config compiler keeps a
//! config across reloads while its [`Trust`] is unchanged.

use std::hash::{Hash, Hasher};
use std::io;
use std::sync::Arc;

use monoio::net::TcpStream;
use monoio_rustls::{ClientTlsStream, TlsConnector, TlsError};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore};

use super::provider;

/// ALPN offered to backends: HTTP/1.1 only (RFC 7301; the IANA id of RFC 9112).
pub const ALPN_HTTP11: &[u8] = b"http/1.1";

/// Which certificates a backend's chain must lead to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Trust {
    /// The Mozilla root program as shipped in `webpki-roots` (the default).
    WebPki,
    /// Only the CA certificates of a `ca_file` (DER, in file order): a private CA replaces
    /// the public roots rather than adding to them, as nginx's `proxy_ssl_trusted_certificate`.
    Cas(Vec<CertificateDer<'static>>),
    /// Nothing is checked but the handshake's own signatures (`insecure_skip_verify`):
    /// anyone on the path can impersonate the backend.
    Insecure,
}

/// A TLS upstream as compiled from config: the rustls config, the name sent as SNI and
/// checked against the certificate, and the key its pooled connections go under.
#[derive(Debug, Clone)]
pub struct UpstreamTls {
    /// The client config (shared by every backend with the same [`Trust`]; it holds the
    /// session cache).
    pub config: Arc<ClientConfig>,
    /// SNI and the name the certificate must be for (config `server_name`, default the
    /// URL's host).
    pub server_name: ServerName<'static>,
    /// The trust the config was built for (compared across reloads).
    pub trust: Trust,
    /// A hash of the server name and the trust: pooled connections are reused only by
    /// requests with the same key, so connections made under other settings never mix.
    pub pool_key: u64,
}

/// Two are equal when they check the same name against the same trust (the config follows
/// from the trust): a reload that changed neither keeps the backend's health.
impl PartialEq for UpstreamTls {
    fn eq(&self, other: &Self) -> bool {
        self.server_name == other.server_name && self.trust == other.trust
    }
}

impl Eq for UpstreamTls {}

impl UpstreamTls {
    /// A TLS upstream for `server_name` over `config` (built for `trust`).
    pub fn new(config: Arc<ClientConfig>, server_name: ServerName<'static>, trust: Trust) -> Self {
        let mut h = std::hash::DefaultHasher::new();
        server_name.to_str().hash(&mut h);
        trust.hash(&mut h);
        UpstreamTls {
            config,
            server_name,
            trust,
            pool_key: h.finish(),
        }
    }
}

/// A client config for `trust`: TLS 1.3 and 1.2, ALPN `http/1.1` (`alpn` true; JWKS
/// fetches offer none), in-memory session resumption (rustls' default).
///
/// # Errors
/// Only if the provider cannot do TLS 1.2 and 1.3 (never with `ring`); a sentence.
pub fn client_config(trust: &Trust, alpn: bool) -> Result<Arc<ClientConfig>, String> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("TLS versions not available: {e}"))?;
    let mut config = match trust {
        Trust::WebPki => {
            let roots = RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            };
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        Trust::Cas(cas) => {
            let mut roots = RootCertStore::empty();
            for ca in cas {
                roots
                    .add(ca.clone())
                    .map_err(|e| format!("a CA certificate is not usable: {e}"))?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        Trust::Insecure => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerifier(provider)))
            .with_no_client_auth(),
    };
    if alpn {
        config.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
    }
    Ok(Arc::new(config))
}

/// Accepts any certificate for any name (`insecure_skip_verify`), still checking that the
/// handshake is signed by the key of the certificate presented.
#[derive(Debug)]
struct NoVerifier(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerifier {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Why a TLS handshake with a backend failed, in words an operator acts on. Small and
/// `Copy`: it rides in the request's attempts ([`crate::policy::context::Attempt`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsFailure {
    /// The certificate's `notAfter` has passed.
    Expired,
    /// The certificate's `notBefore` is still ahead.
    NotYetValid,
    /// The certificate is not for the server name Sluice checks (`server_name`, default
    /// the URL's host).
    WrongName,
    /// The chain leads to no trusted CA (`ca_file`, default the public roots).
    UnknownCa,
    /// The certificate was revoked.
    Revoked,
    /// Any other certificate problem (bad encoding, bad signature, wrong purpose, …).
    BadCertificate,
    /// The backend refused the handshake with an alert (no common version or cipher, …).
    Refused,
    /// The handshake broke down otherwise (invalid messages, no HTTP/1.1 in ALPN, …).
    Failed,
    /// The connection closed or reset during the handshake.
    Interrupted,
    /// No handshake within `timeouts.upstream_connect`.
    TimedOut,
}

impl TlsFailure {
    /// The reason, in words: "certificate expired", "TLS handshake timed out", ….
    pub fn reason(self) -> &'static str {
        match self {
            TlsFailure::Expired => "certificate expired",
            TlsFailure::NotYetValid => "certificate not yet valid",
            TlsFailure::WrongName => "certificate is for another name",
            TlsFailure::UnknownCa => "unknown certificate authority",
            TlsFailure::Revoked => "certificate revoked",
            TlsFailure::BadCertificate => "bad certificate",
            TlsFailure::Refused => "handshake refused by the backend",
            TlsFailure::Failed => "TLS handshake failed",
            TlsFailure::Interrupted => "connection closed during the TLS handshake",
            TlsFailure::TimedOut => "TLS handshake timed out",
        }
    }

    /// The 502 message when every backend tried failed, the last with this reason.
    pub fn unavailable_message(self) -> &'static str {
        macro_rules! msg {
            ($reason:literal) => {
                concat!(
                    "Bad gateway: no backend of this deployment could be reached (tls: ",
                    $reason,
                    ")."
                )
            };
        }
        match self {
            TlsFailure::Expired => msg!("certificate expired"),
            TlsFailure::NotYetValid => msg!("certificate not yet valid"),
            TlsFailure::WrongName => msg!("certificate is for another name"),
            TlsFailure::UnknownCa => msg!("unknown certificate authority"),
            TlsFailure::Revoked => msg!("certificate revoked"),
            TlsFailure::BadCertificate => msg!("bad certificate"),
            TlsFailure::Refused => msg!("handshake refused by the backend"),
            TlsFailure::Failed => msg!("TLS handshake failed"),
            TlsFailure::Interrupted => msg!("connection closed during the TLS handshake"),
            TlsFailure::TimedOut => msg!("TLS handshake timed out"),
        }
    }

    /// The failure a rustls error stands for.
    pub fn of(err: &rustls::Error) -> TlsFailure {
        use CertificateError as C;
        match err {
            rustls::Error::InvalidCertificate(cert) => match cert {
                C::Expired | C::ExpiredContext { .. } => TlsFailure::Expired,
                C::NotValidYet | C::NotValidYetContext { .. } => TlsFailure::NotYetValid,
                C::NotValidForName | C::NotValidForNameContext { .. } => TlsFailure::WrongName,
                C::UnknownIssuer => TlsFailure::UnknownCa,
                C::Revoked => TlsFailure::Revoked,
                _ => TlsFailure::BadCertificate,
            },
            rustls::Error::AlertReceived(_) => TlsFailure::Refused,
            _ => TlsFailure::Failed,
        }
    }

    /// The failure an I/O error of a handshake stands for: a rustls error carried inside
    /// (monoio-rustls wraps them), else the connection broke.
    pub fn of_io(err: &io::Error) -> TlsFailure {
        match err
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            Some(tls) => TlsFailure::of(tls),
            None => TlsFailure::Interrupted,
        }
    }
}

impl std::fmt::Display for TlsFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.reason())
    }
}

/// Runs the client handshake for `tls` over `tcp`. Unbounded: the caller bounds it (the
/// upstream leg by `timeouts.upstream_connect`, reporting [`TlsFailure::TimedOut`]). Nothing
/// of a request is written before it succeeds.
///
/// # Errors
/// The handshake's failure, named.
pub async fn handshake(
    tcp: TcpStream,
    tls: &UpstreamTls,
) -> Result<ClientTlsStream<TcpStream>, TlsFailure> {
    let connector = TlsConnector::from(Arc::clone(&tls.config));
    connector
        .connect(tls.server_name.clone(), tcp)
        .await
        .map_err(|e| match e {
            TlsError::Rustls(e) => TlsFailure::of(&e),
            TlsError::Io(e) => TlsFailure::of_io(&e),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_errors_read_as_words() {
        let cert = |e| TlsFailure::of(&rustls::Error::InvalidCertificate(e));
        assert_eq!(cert(CertificateError::Expired), TlsFailure::Expired);
        assert_eq!(
            cert(CertificateError::NotValidForName),
            TlsFailure::WrongName
        );
        assert_eq!(cert(CertificateError::UnknownIssuer), TlsFailure::UnknownCa);
        assert_eq!(
            cert(CertificateError::BadSignature),
            TlsFailure::BadCertificate
        );
        assert_eq!(TlsFailure::Expired.reason(), "certificate expired");
        // monoio-rustls hands rustls errors over inside an io::Error.
        let wrapped = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(CertificateError::NotValidYet),
        );
        assert_eq!(TlsFailure::of_io(&wrapped), TlsFailure::NotYetValid);
        let reset = io::Error::from(io::ErrorKind::ConnectionReset);
        assert_eq!(TlsFailure::of_io(&reset), TlsFailure::Interrupted);
        for f in [
            TlsFailure::Expired,
            TlsFailure::TimedOut,
            TlsFailure::UnknownCa,
        ] {
            assert!(f
                .unavailable_message()
                .contains(&format!("(tls: {})", f.reason())));
        }
    }

    #[test]
    fn configs_offer_http11_and_resume() {
        let config = client_config(&Trust::WebPki, true).unwrap();
        assert_eq!(config.alpn_protocols, vec![b"http/1.1".to_vec()]);
        assert!(client_config(&Trust::WebPki, false)
            .unwrap()
            .alpn_protocols
            .is_empty());
        assert!(client_config(&Trust::Insecure, true).is_ok());
        let a = UpstreamTls::new(
            Arc::clone(&config),
            ServerName::try_from("a.example").unwrap(),
            Trust::WebPki,
        );
        let b = UpstreamTls::new(
            config,
            ServerName::try_from("b.example").unwrap(),
            Trust::WebPki,
        );
        assert_ne!(a.pool_key, b.pool_key);
    }
}
