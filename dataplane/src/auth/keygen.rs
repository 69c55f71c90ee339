//! New subscription keys for `sluice keygen`.
//!
//! A key is 32 bytes from the operating system's random source (256 bits: guessing is out
//! of reach, and hashing with plain SHA-256 needs no salt or stretching because the input
//! is not a human password), written base64url without padding after a `sk-sluice-`
//! prefix, so a leaked key is recognisable by secret scanners. Config stores only its
//! [`key_hash`](super::keys::key_hash); the key itself is shown once and given to the client.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

use super::keys::key_hash;

/// The prefix every generated key starts with.
pub const KEY_PREFIX: &str = "sk-sluice-";

/// A freshly generated key and the hash to put in config.
#[derive(Clone, PartialEq, Eq)]
pub struct GeneratedKey {
    /// The key to hand to the client: `sk-sluice-` and 43 base64url characters.
    pub key: String,
    /// `sha256:<hex>` of the key, for the subscription's `keys` in config.
    pub hash: String,
}

impl std::fmt::Debug for GeneratedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeneratedKey")
            .field("key", &"****")
            .field("hash", &self.hash)
            .finish()
    }
}

/// Makes a new key from 32 bytes of OS randomness (`getrandom`). Fails only if the OS
/// cannot supply randomness.
pub fn generate_key() -> Result<GeneratedKey, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::getrandom(&mut bytes)?;
    Ok(key_from_bytes(&bytes))
}

fn key_from_bytes(bytes: &[u8; 32]) -> GeneratedKey {
    let mut key = String::with_capacity(KEY_PREFIX.len() + 43);
    key.push_str(KEY_PREFIX);
    URL_SAFE_NO_PAD.encode_string(bytes, &mut key);
    let hash = key_hash(key.as_bytes());
    GeneratedKey { key, hash }
}

/// The text `sluice keygen` prints: the key, its hash, and where each goes.
pub fn keygen_report(generated: &GeneratedKey) -> String {
    format!(
        "key:  {}\nhash: {}\n\nGive the key to the client (it is shown only this once).\n\
         Put the hash in the subscription's `keys` in the config file.\n",
        generated.key, generated.hash
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::keys::{parse_key_hash, KeyCheck, KeyEntry, KeyTable, SubscriptionId};

    #[test]
    fn a_key_has_the_prefix_43_base64url_chars_and_its_hash() {
        let g = generate_key().unwrap();
        let body = g.key.strip_prefix(KEY_PREFIX).unwrap();
        assert_eq!(body.len(), 43);
        assert!(body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        assert_eq!(URL_SAFE_NO_PAD.decode(body).unwrap().len(), 32);
        assert_eq!(g.hash, key_hash(g.key.as_bytes()));
        assert!(!format!("{g:?}").contains(&g.key));
        assert!(keygen_report(&g).contains(&g.hash));
    }

    #[test]
    fn keys_differ_and_their_hash_is_accepted_by_the_table() {
        let a = generate_key().unwrap();
        let b = generate_key().unwrap();
        assert_ne!(a.key, b.key);
        let table = KeyTable::new([KeyEntry {
            hash: parse_key_hash(&a.hash).unwrap(),
            subscription: SubscriptionId(7),
            revoked: false,
        }])
        .unwrap();
        assert_eq!(
            table.lookup(a.key.as_bytes()),
            KeyCheck::Valid(SubscriptionId(7))
        );
        assert_eq!(table.lookup(b.key.as_bytes()), KeyCheck::Unknown);
    }

    #[test]
    fn fixed_bytes_give_a_fixed_key() {
        let g = key_from_bytes(&[0u8; 32]);
        assert_eq!(g.key, format!("{KEY_PREFIX}{}", "A".repeat(43)));
    }
}
