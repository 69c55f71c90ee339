//! TLS both ways, on rustls (the `ring` provider) over monoio (`monoio-rustls`).
//!
//! - [`client`] builds the rustls client configs for `https://` backends and JWKS URLs,
//!   runs the handshake to a backend and names what failed.
//! - [`pem`] reads certificate chains, private keys and CA bundles from PEM text, with errors
//!   a config can locate.
//! - [`server`] builds the listeners' config from `[server.tls]`: certificates by SNI,
//!   client certificates (mTLS), ALPN `http/1.1`.

pub mod client;
pub mod pem;
pub mod server;

use std::sync::Arc;

use rustls::crypto::CryptoProvider;

/// What a failed handshake's error says: the TLS error rustls raised (`monoio-rustls` wraps
/// it in an I/O error whose own text is only "io error"), else the I/O error (a reset, an
/// early end of stream).
pub fn handshake_error(e: &monoio_rustls::TlsError) -> String {
    match e {
        monoio_rustls::TlsError::Rustls(e) => e.to_string(),
        monoio_rustls::TlsError::Io(io) => io
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            .map_or_else(|| io.to_string(), ToString::to_string),
    }
}

/// The crypto every TLS config of Sluice uses, both ways: rustls' `ring` provider.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}
