//! TLS both ways, on rustls (the `ring` provider) over monoio (`monoio-rustls`).
//!
//! - [`pem`] reads certificate chains, private keys and CA bundles from PEM text, with errors
//!   a config can locate.
//! - [`server`] builds the listeners' config from `[server.tls]`: certificates by SNI,
//!   client certificates (mTLS), ALPN `http/1.1`.

pub mod pem;
pub mod server;
