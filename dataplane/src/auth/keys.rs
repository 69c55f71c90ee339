//! Subscription keys: finding the credential in a request head and checking a key against
//! the configured hashes.
//!
//! Keys are never stored: config holds `sha256:<hex>` digests (see [`key_hash`] and
//! `sluice keygen`), compiled into a [`KeyTable`]. A presented key is hashed once and its
//! digest compared with [`subtle::ConstantTimeEq`], so the comparison takes the same time
//! whichever byte differs. The table is found by the digest's first 8 bytes; timing can
//! at most tell whether SHA-256 of the attacker's own guess shares a 64-bit prefix with a
//! stored digest, which says nothing about any key.
//!
//! A client sends its key in `api-key` (Azure OpenAI), `Ocp-Apim-Subscription-Key` (API
//! Management) or `Authorization: Bearer` (OpenAI); [`extract_credential`] looks in that
//! order. A key in the query string would end up in access logs and browser history, so
//! [`query_has_key`] finds one and the gateway refuses the request rather than ignore it.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::http::RequestHead;

/// A subscription, as numbered by the compiled config (its index in the subscription list).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubscriptionId(pub u32);

impl SubscriptionId {
    /// Its index in the snapshot's subscription list. (`u32` into `usize` loses nothing on
    /// the 32- and 64-bit targets Sluice builds for; the config compiler refused any index
    /// that does not fit a `u32`.)
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// One configured key: its SHA-256 digest and the subscription it belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyEntry {
    /// SHA-256 of the key's bytes (the key exactly as the client sends it).
    pub hash: [u8; 32],
    /// The subscription whose limits and products apply to requests with this key.
    pub subscription: SubscriptionId,
    /// A revoked key is still recognised (so the refusal can say so and be audited) but
    /// never accepted. Default in config: `false`.
    pub revoked: bool,
}

/// The outcome of [`KeyTable::lookup`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyCheck {
    /// The key belongs to this subscription.
    Valid(SubscriptionId),
    /// The key belonged to this subscription and was revoked: refuse (401).
    Revoked(SubscriptionId),
    /// No configured key has this hash: refuse (401).
    Unknown,
}

/// Why a key table could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyTableError {
    /// The same digest is configured twice (for one subscription or two).
    #[error("key hash sha256:{0} is configured more than once")]
    Duplicate(String),
}

/// Why a `sha256:<hex>` key hash from config was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyHashError {
    /// The text does not start with `sha256:`.
    #[error("a key hash starts with `sha256:`")]
    MissingPrefix,
    /// After the prefix there are not exactly 64 hex digits.
    #[error("a key hash is `sha256:` followed by 64 hex digits")]
    BadHex,
}

/// SHA-256 of a key, as config writes it: `sha256:` and 64 lowercase hex digits.
pub fn key_hash(key: &[u8]) -> String {
    let digest = Sha256::digest(key);
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256:");
    for b in digest {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    out
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Parses a `sha256:<64 hex digits>` key hash (hex in either case).
pub fn parse_key_hash(text: &str) -> Result<[u8; 32], KeyHashError> {
    let hex = text
        .strip_prefix("sha256:")
        .ok_or(KeyHashError::MissingPrefix)?
        .as_bytes();
    if hex.len() != 64 {
        return Err(KeyHashError::BadHex);
    }
    let mut out = [0u8; 32];
    for (byte, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
        let hi = hex_value(pair[0]).ok_or(KeyHashError::BadHex)?;
        let lo = hex_value(pair[1]).ok_or(KeyHashError::BadHex)?;
        *byte = (hi << 4) | lo;
    }
    Ok(out)
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// The configured keys, compiled: digest → subscription. Immutable once built; one per
/// config snapshot, shared by all workers.
#[derive(Debug, Default)]
pub struct KeyTable {
    /// Keyed by the digest's first 8 bytes (already uniformly spread, so used as the hash
    /// itself); each slot holds every entry with that prefix (almost always one).
    slots: HashMap<u64, Vec<KeyEntry>, BuildHasherDefault<PrefixHasher>>,
    len: usize,
}

impl KeyTable {
    /// Builds the table. Every digest must be distinct.
    pub fn new(entries: impl IntoIterator<Item = KeyEntry>) -> Result<Self, KeyTableError> {
        let mut table = Self::default();
        for entry in entries {
            table.insert(entry)?;
        }
        Ok(table)
    }

    /// Adds one entry; refused (the table unchanged) when its digest is already in it.
    pub fn insert(&mut self, entry: KeyEntry) -> Result<(), KeyTableError> {
        let slot = self.slots.entry(prefix(&entry.hash)).or_default();
        if slot.iter().any(|e| e.hash == entry.hash) {
            return Err(KeyTableError::Duplicate(
                key_hash_hex(&entry.hash).unwrap_or_default(),
            ));
        }
        slot.push(entry);
        self.len += 1;
        Ok(())
    }

    /// How many keys (valid and revoked) the table holds.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the table holds no key.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Checks a presented key: hashes it once, then compares the digest with each stored
    /// digest of the same 64-bit prefix in constant time.
    pub fn lookup(&self, presented: &[u8]) -> KeyCheck {
        let digest: [u8; 32] = Sha256::digest(presented).into();
        self.lookup_digest(&digest)
    }

    /// [`lookup`](Self::lookup) for a digest already computed.
    pub fn lookup_digest(&self, digest: &[u8; 32]) -> KeyCheck {
        let Some(slot) = self.slots.get(&prefix(digest)) else {
            return KeyCheck::Unknown;
        };
        for entry in slot {
            if bool::from(entry.hash.ct_eq(digest)) {
                return if entry.revoked {
                    KeyCheck::Revoked(entry.subscription)
                } else {
                    KeyCheck::Valid(entry.subscription)
                };
            }
        }
        KeyCheck::Unknown
    }
}

fn key_hash_hex(hash: &[u8; 32]) -> Option<String> {
    let mut out = String::with_capacity(64);
    for b in hash {
        out.push(char::from(*HEX.get(usize::from(b >> 4))?));
        out.push(char::from(*HEX.get(usize::from(b & 0xf))?));
    }
    Some(out)
}

fn prefix(digest: &[u8; 32]) -> u64 {
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_le_bytes(first)
}

/// A hasher for keys that are already uniformly random 64-bit values (digest prefixes).
/// Only config-chosen digests are inserted, so a client cannot steer collisions.
#[derive(Default)]
struct PrefixHasher(u64);

impl Hasher for PrefixHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Not used for u64 keys; fold anything else in so the hasher stays correct.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// Which header carried a credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialSource {
    /// `api-key: <key>` (Azure OpenAI clients).
    ApiKey,
    /// `Ocp-Apim-Subscription-Key: <key>` (API Management clients).
    OcpApimSubscriptionKey,
    /// `Authorization: Bearer <key or JWT>` (OpenAI clients; JWTs).
    Bearer,
}

impl CredentialSource {
    /// The header's name as it is usually written.
    pub fn header_name(self) -> &'static str {
        match self {
            Self::ApiKey => "api-key",
            Self::OcpApimSubscriptionKey => "Ocp-Apim-Subscription-Key",
            Self::Bearer => "Authorization",
        }
    }
}

/// A credential found in a request head: the key or token bytes (surrounding whitespace
/// and the `Bearer` scheme removed) and where they came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Credential<'b> {
    /// The header that carried it.
    pub source: CredentialSource,
    /// The key or token, never empty.
    pub value: &'b [u8],
}

impl Credential<'_> {
    /// Whether the value has a JWT's shape (a bearer value of three base64url parts, the
    /// first starting `eyJ`, i.e. a JSON object). Subscription keys never do; a bearer value
    /// with this shape goes to the JWT validator, anything else to the key table.
    pub fn is_jwt(&self) -> bool {
        self.source == CredentialSource::Bearer
            && self.value.starts_with(b"eyJ")
            && self.value.iter().filter(|&&b| b == b'.').count() == 2
    }
}

/// Finds the request's credential: `api-key`, then `Ocp-Apim-Subscription-Key`, then
/// `Authorization: Bearer` (scheme case-insensitive). Empty values and other
/// `Authorization` schemes count as absent. `None`: no credential (401).
pub fn extract_credential<'b>(head: &RequestHead, buf: &'b [u8]) -> Option<Credential<'b>> {
    extract_credential_with(|name| head.header(buf, name))
}

/// [`extract_credential`] over any header look-up (`name` → first value, case-insensitive).
pub fn extract_credential_with<'b>(
    header: impl Fn(&str) -> Option<&'b [u8]>,
) -> Option<Credential<'b>> {
    for source in [
        CredentialSource::ApiKey,
        CredentialSource::OcpApimSubscriptionKey,
    ] {
        if let Some(value) = header(source.header_name()).map(<[u8]>::trim_ascii) {
            if !value.is_empty() {
                return Some(Credential { source, value });
            }
        }
    }
    let auth = header("authorization")?.trim_ascii();
    let scheme = auth.get(..6)?;
    let rest = auth.get(6..)?;
    if !scheme.eq_ignore_ascii_case(b"bearer") || rest.first() != Some(&b' ') {
        return None;
    }
    let value = rest.trim_ascii();
    (!value.is_empty()).then_some(Credential {
        source: CredentialSource::Bearer,
        value,
    })
}

/// The query parameter names that carry a key in other gateways (`api-key`,
/// `subscription-key` as API Management accepts, `key`), compared case-insensitively.
const QUERY_KEY_NAMES: [&[u8]; 3] = [b"api-key", b"subscription-key", b"key"];

/// Whether the request target's query has a key parameter (`api-key=`, `subscription-key=`
/// or `key=`, any case, percent-encoded or not, with or without a value). The gateway
/// refuses such a request (401) instead of ignoring the parameter: the key has already
/// leaked into logs and must be rotated, and saying so is kinder than a silent failure.
pub fn query_has_key(target: &str) -> bool {
    let Some((_, query)) = target.split_once('?') else {
        return false;
    };
    let query = query.split_once('#').map_or(query, |(q, _)| q);
    query.split(['&', ';']).any(|param| {
        let name = param.split_once('=').map_or(param, |(n, _)| n).as_bytes();
        let mut decoded = [0u8; 24];
        let Some(name) = percent_decode_short(name, &mut decoded) else {
            return false;
        };
        QUERY_KEY_NAMES.iter().any(|k| name.eq_ignore_ascii_case(k))
    })
}

/// Percent-decodes `name` into `out` if it fits (parameter names we look for are short);
/// `None` if it is longer or badly encoded, which cannot be one of our names anyway.
fn percent_decode_short<'o>(name: &[u8], out: &'o mut [u8; 24]) -> Option<&'o [u8]> {
    let mut len = 0;
    let mut i = 0;
    while i < name.len() {
        let b = if name[i] == b'%' {
            let hi = hex_value(*name.get(i + 1)?)?;
            let lo = hex_value(*name.get(i + 2)?)?;
            i += 3;
            (hi << 4) | lo
        } else {
            i += 1;
            name[i - 1]
        };
        *out.get_mut(len)? = b;
        len += 1;
    }
    out.get(..len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{parse_request, Parse};
    use crate::snapshot::HttpLimits;

    fn table() -> KeyTable {
        KeyTable::new([
            KeyEntry {
                hash: parse_key_hash(&key_hash(b"sk-sluice-alpha")).unwrap(),
                subscription: SubscriptionId(1),
                revoked: false,
            },
            KeyEntry {
                hash: parse_key_hash(&key_hash(b"sk-sluice-beta")).unwrap(),
                subscription: SubscriptionId(2),
                revoked: false,
            },
            KeyEntry {
                hash: parse_key_hash(&key_hash(b"sk-sluice-old")).unwrap(),
                subscription: SubscriptionId(2),
                revoked: true,
            },
        ])
        .unwrap()
    }

    fn with_head<R>(raw: &str, f: impl FnOnce(&RequestHead, &[u8]) -> R) -> R {
        let mut head = RequestHead::default();
        let buf = raw.as_bytes();
        assert_eq!(
            parse_request(buf, &HttpLimits::default(), &mut head).unwrap(),
            Parse::Complete
        );
        f(&head, buf)
    }

    fn check(raw: &str) -> Option<(CredentialSource, KeyCheck)> {
        let table = table();
        with_head(raw, |head, buf| {
            extract_credential(head, buf).map(|c| (c.source, table.lookup(c.value)))
        })
    }

    #[test]
    fn each_header_form_finds_the_key() {
        assert_eq!(
            check(
                "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\napi-key: sk-sluice-alpha\r\n\r\n"
            ),
            Some((CredentialSource::ApiKey, KeyCheck::Valid(SubscriptionId(1))))
        );
        assert_eq!(
            check(
                "POST / HTTP/1.1\r\nHost: x\r\nOcp-Apim-Subscription-Key:  sk-sluice-beta \r\n\r\n"
            ),
            Some((
                CredentialSource::OcpApimSubscriptionKey,
                KeyCheck::Valid(SubscriptionId(2))
            ))
        );
        assert_eq!(
            check("POST / HTTP/1.1\r\nHost: x\r\nauthorization: bearer sk-sluice-alpha\r\n\r\n"),
            Some((CredentialSource::Bearer, KeyCheck::Valid(SubscriptionId(1))))
        );
        assert_eq!(
            check("POST / HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer   sk-sluice-beta\r\n\r\n"),
            Some((CredentialSource::Bearer, KeyCheck::Valid(SubscriptionId(2))))
        );
    }

    #[test]
    fn api_key_wins_over_bearer_and_empty_values_are_absent() {
        assert_eq!(
            check("POST / HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sk-sluice-beta\r\napi-key: sk-sluice-alpha\r\n\r\n"),
            Some((CredentialSource::ApiKey, KeyCheck::Valid(SubscriptionId(1))))
        );
        assert_eq!(
            check("POST / HTTP/1.1\r\nHost: x\r\napi-key: \r\nAuthorization: Bearer sk-sluice-beta\r\n\r\n"),
            Some((CredentialSource::Bearer, KeyCheck::Valid(SubscriptionId(2))))
        );
    }

    #[test]
    fn no_credential_and_other_schemes_are_missing() {
        assert_eq!(check("POST / HTTP/1.1\r\nHost: x\r\n\r\n"), None);
        assert_eq!(
            check("POST / HTTP/1.1\r\nHost: x\r\nAuthorization: Basic c2stc2x1aWNl\r\n\r\n"),
            None
        );
        assert_eq!(
            check("POST / HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer\r\n\r\n"),
            None
        );
        assert_eq!(
            check("POST / HTTP/1.1\r\nHost: x\r\nAuthorization: Bearersk-sluice-alpha\r\n\r\n"),
            None
        );
    }

    #[test]
    fn wrong_and_revoked_keys_are_refused() {
        let t = table();
        assert_eq!(t.lookup(b"sk-sluice-gamma"), KeyCheck::Unknown);
        assert_eq!(t.lookup(b"sk-sluice-alph"), KeyCheck::Unknown);
        assert_eq!(t.lookup(b""), KeyCheck::Unknown);
        assert_eq!(
            t.lookup(b"sk-sluice-old"),
            KeyCheck::Revoked(SubscriptionId(2))
        );
        assert_eq!(t.len(), 3);
    }

    #[test]
    fn a_digest_differing_only_after_the_prefix_is_unknown() {
        // Same 64-bit prefix, different tail: the constant-time compare must decide.
        let mut hash = parse_key_hash(&key_hash(b"sk-sluice-alpha")).unwrap();
        let t = table();
        hash[31] ^= 1;
        assert_eq!(t.lookup_digest(&hash), KeyCheck::Unknown);
        hash[31] ^= 1;
        assert_eq!(t.lookup_digest(&hash), KeyCheck::Valid(SubscriptionId(1)));
    }

    #[test]
    fn duplicate_hashes_are_a_config_error() {
        let hash = parse_key_hash(&key_hash(b"k")).unwrap();
        let e = |s| KeyEntry {
            hash,
            subscription: SubscriptionId(s),
            revoked: false,
        };
        assert!(matches!(
            KeyTable::new([e(1), e(2)]),
            Err(KeyTableError::Duplicate(_))
        ));
    }

    #[test]
    fn key_hashes_round_trip_and_bad_ones_are_refused() {
        // SHA-256("abc"), the FIPS 180-2 test vector.
        assert_eq!(
            key_hash(b"abc"),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let upper = "sha256:BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD";
        assert_eq!(
            parse_key_hash(upper).unwrap(),
            parse_key_hash(&key_hash(b"abc")).unwrap()
        );
        assert_eq!(parse_key_hash("ba78"), Err(KeyHashError::MissingPrefix));
        assert_eq!(parse_key_hash("sha256:ba78"), Err(KeyHashError::BadHex));
        let bad = format!("sha256:{}", "g".repeat(64));
        assert_eq!(parse_key_hash(&bad), Err(KeyHashError::BadHex));
    }

    #[test]
    fn keys_in_the_query_are_found() {
        for target in [
            "/v1/chat/completions?api-key=sk-1",
            "/openai/deployments/x/chat/completions?api-version=2024-10-21&api-key=sk-1",
            "/x?subscription-key=abc",
            "/x?Subscription-Key=abc",
            "/x?key=abc",
            "/x?a=1;KEY=abc",
            "/x?api%2Dkey=abc",
            "/x?api-key",
            "/x?api-key=",
        ] {
            assert!(query_has_key(target), "{target}");
        }
        for target in [
            "/v1/chat/completions",
            "/x?api-version=2024-10-21",
            "/x?monkey=1&keys=2&api-keyx=3",
            "/x?q=api-key",
            "/x#api-key=1",
            "/x?%zz=1",
            "/x?a=1#key=2",
        ] {
            assert!(!query_has_key(target), "{target}");
        }
    }

    #[test]
    fn jwt_shape_is_recognised_only_in_bearer() {
        let jwt = Credential {
            source: CredentialSource::Bearer,
            value: b"eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.sig",
        };
        assert!(jwt.is_jwt());
        let key = Credential {
            source: CredentialSource::Bearer,
            value: b"sk-sluice-abc",
        };
        assert!(!key.is_jwt());
        let in_api_key = Credential {
            source: CredentialSource::ApiKey,
            ..jwt
        };
        assert!(!in_api_key.is_jwt());
    }
}
