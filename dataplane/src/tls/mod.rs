//! TLS both ways, on rustls (the `ring` provider) over monoio (`monoio-rustls`).
//!
//! - [`pem`] reads certificate chains, private keys and CA bundles from PEM text, with errors
//!   a config can locate.

pub mod pem;
