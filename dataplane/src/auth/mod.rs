//! Identity: who is calling (step 3 of the request path in DESIGN.md).
//!
//! A request proves who it is with a subscription key or a JWT. [`keys`] finds the
//! credential in the request head and checks a subscription key against the configured
//! SHA-256 hashes in constant time; [`jwt`] validates a bearer token the way Azure API
//! Management's `validate-jwt` does and maps one of its claims to a subscription; [`jwks`]
//! parses JSON Web Key Sets and keeps a remote one fresh on a side thread, so the request
//! path only ever reads an immutable key set; [`keygen`] makes new keys for `sluice keygen`.
//!
//! Everything here is compiled from config off the request path (keys hashed, PEM and JWKS
//! parsed, algorithms pinned) and then only read: no lock, no I/O and no blocking on the
//! request path. Time is a parameter (`now_unix`), so tests choose it.

pub mod alg;
pub mod jwks;
pub mod jwt;
pub mod keygen;
pub mod keys;

#[cfg(test)]
pub(crate) mod testkeys;

pub use jwks::{JwksCache, JwksError, JwksRefresher, JwksSettings};
pub use jwt::{
    JwtAlg, JwtConfigError, JwtError, JwtIssuerConfig, JwtKeyConfig, JwtKeySource, JwtValidator,
    Principal, SubscriptionMapping,
};
pub use keygen::{generate_key, GeneratedKey};
pub use keys::{
    extract_credential, key_hash, parse_key_hash, query_has_key, Credential, CredentialSource,
    KeyCheck, KeyEntry, KeyHashError, KeyTable, KeyTableError, SubscriptionId,
};
