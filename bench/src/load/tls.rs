//! The client side of `https://` targets: one rustls `ClientConfig` per run (the `ring`
//! provider Sluice uses), shared by every connection.
//!
//! - **Trust**: the certificates of `--ca-file` only (a test CA), else the Mozilla roots
//!   (`webpki-roots`). The server's certificate is verified as any client would (RFC 5280
//!   path, the name below in its subjectAltName): there is no "insecure" switch, so a run
//!   never measures a handshake a real client would refuse.
//! - **Server name**: the URL's host. A DNS name is sent as SNI (RFC 6066 §3) and checked
//!   against the certificate; an IP literal is checked against the certificate's IP
//!   addresses and sends no SNI (RFC 6066 §3 allows host names only).
//! - **Versions**: TLS 1.3 and 1.2 offered (rustls' defaults; the server picks), ALPN
//!   `http/1.1` (RFC 7301), so a server that offers only `h2` fails the handshake.
//! - **Resumption**: off by default, so with a new connection per request every handshake is
//!   a full one (key exchange and certificate signature on the server). `--tls-resumption`
//!   keeps rustls' in-memory store (256 server names; TLS 1.3 tickets, TLS 1.2 session IDs)
//!   shared by the run's connections.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use monoio_rustls::TlsConnector;
use rustls::client::Resumption;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore};

/// How every connection of a run shakes hands: the connector and the name it asks for.
#[derive(Clone)]
pub struct TlsClient {
    /// The shared client config, wrapped for monoio.
    pub connector: TlsConnector,
    /// The URL's host: SNI and the name the certificate must carry.
    pub server_name: ServerName<'static>,
}

impl std::fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsClient")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl TlsClient {
    /// The client for `host` (a DNS name or an IP literal, brackets removed), trusting the
    /// certificates in `ca_file` (PEM) or, without one, the Mozilla roots; session
    /// resumption only when `resumption`.
    ///
    /// # Errors
    /// An unreadable or non-PEM `ca_file`, a certificate in it that is no usable trust
    /// anchor, or a host that is neither a DNS name nor an IP address.
    pub fn new(host: &str, ca_file: Option<&Path>, resumption: bool) -> anyhow::Result<Self> {
        let roots = match ca_file {
            Some(path) => {
                let pem = std::fs::read(path)
                    .with_context(|| format!("cannot read --ca-file {}", path.display()))?;
                sluice::tls::pem::roots(&pem)
                    .map_err(|e| anyhow::anyhow!("--ca-file {} {e}", path.display()))?
            }
            None => RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            },
        };
        let mut config = ClientConfig::builder_with_provider(sluice::tls::provider())
            .with_safe_default_protocol_versions()
            .context("rustls refuses its default protocol versions")?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        config.resumption = if resumption {
            Resumption::default()
        } else {
            Resumption::disabled()
        };
        let server_name = ServerName::try_from(host.to_owned())
            .with_context(|| format!("{host:?} is not a DNS name or an IP address"))?;
        Ok(Self {
            connector: TlsConnector::from(Arc::new(config)),
            server_name,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_trust() {
        let dns = TlsClient::new("localhost", None, false).unwrap();
        assert!(matches!(dns.server_name, ServerName::DnsName(_)));
        let ip = TlsClient::new("127.0.0.1", None, true).unwrap();
        assert!(matches!(ip.server_name, ServerName::IpAddress(_)));
        assert!(TlsClient::new("bad name!", None, false).is_err());
        let missing = TlsClient::new("localhost", Some(Path::new("/nonexistent/ca.pem")), false);
        assert!(missing.unwrap_err().to_string().contains("--ca-file"));
        let dir = std::env::temp_dir().join(format!("sluice-bench-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let not_pem = dir.join("ca.pem");
        std::fs::write(&not_pem, "not a certificate").unwrap();
        let refused = TlsClient::new("localhost", Some(&not_pem), false);
        let _ = std::fs::remove_dir_all(&dir);
        assert!(refused.is_err());
    }
}
