//! Identity: a subscription key check and a JWT verification, each beside a baseline.
//!
//! Key check: `KeyTable::lookup` (SHA-256 of the presented key, then a constant-time digest
//! compare) in a table of 10 000 keys, for a known and an unknown key, against a plain
//! `HashMap<String, u32>` of the keys in clear (what a gateway storing keys would do; not
//! constant time) and SHA-256 alone (the floor: the hash every hashed-key design pays).
//!
//! JWT: `JwtValidator::validate` for HS256, RS256 (2048-bit) and ES256 (P-256) tokens with
//! the usual claims, against `jsonwebtoken::decode` with its own `Validation` on the same
//! token and key (the library's whole path; our extra is the header pre-checks, issuer
//! selection and claim mapping). The test keys are the data plane's fixed test-only keys.

#![allow(
    missing_docs,
    reason = "criterion_group! defines a public fn that cannot carry a doc comment"
)]
#![allow(
    clippy::unwrap_used,
    reason = "setup only: a fixture that fails to load must stop the bench at once"
)]

use std::collections::HashMap;
use std::hint::black_box;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use criterion::{criterion_group, criterion_main, Criterion};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Validation};
use sha2::{Digest, Sha256};
use sluice::auth::{
    key_hash, parse_key_hash, JwtAlg, JwtIssuerConfig, JwtKeyConfig, JwtKeySource, JwtValidator,
    KeyCheck, KeyEntry, KeyTable, SubscriptionId,
};

const RSA_PRIVATE_DER: &[u8] =
    include_bytes!("../../dataplane/src/auth/testdata/rsa_private_pkcs1.der");
const RSA_PUBLIC_PEM: &[u8] = include_bytes!("../../dataplane/src/auth/testdata/rsa_public.pem");
const EC_PRIVATE_DER: &[u8] =
    include_bytes!("../../dataplane/src/auth/testdata/ec_private_pkcs8.der");
const EC_PUBLIC_PEM: &[u8] = include_bytes!("../../dataplane/src/auth/testdata/ec_public.pem");
const HS_SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

const NOW: u64 = 1_800_000_000;
const ISS: &str = "https://login.example.test/tenant/v2.0";
const AUD: &str = "api://sluice";

/// A key in the generated form: `sk-sluice-` and 43 base64url characters.
fn key_number(i: u32) -> String {
    let mut bytes = [0u8; 32];
    bytes[..4].copy_from_slice(&i.to_le_bytes());
    bytes[4..8].copy_from_slice(&i.wrapping_mul(2_654_435_761).to_le_bytes());
    format!("sk-sluice-{}", URL_SAFE_NO_PAD.encode(bytes))
}

fn key_check(c: &mut Criterion) {
    const KEYS: u32 = 10_000;
    let table = KeyTable::new((0..KEYS).map(|i| KeyEntry {
        hash: parse_key_hash(&key_hash(key_number(i).as_bytes())).unwrap(),
        subscription: SubscriptionId(i),
        revoked: false,
    }))
    .unwrap();
    let clear: HashMap<String, u32> = (0..KEYS).map(|i| (key_number(i), i)).collect();
    let known = key_number(4242);
    let unknown = key_number(KEYS + 1);
    assert_eq!(known.len(), 53);
    assert_eq!(
        table.lookup(known.as_bytes()),
        KeyCheck::Valid(SubscriptionId(4242))
    );
    assert_eq!(clear.get(&known), Some(&4242));
    assert_eq!(table.lookup(unknown.as_bytes()), KeyCheck::Unknown);

    let mut group = c.benchmark_group("auth/key");
    for (name, key) in [("known", &known), ("unknown", &unknown)] {
        group.bench_function(format!("key_table_{name}"), |b| {
            b.iter(|| table.lookup(black_box(key.as_bytes())))
        });
        group.bench_function(format!("cleartext_hashmap_{name}"), |b| {
            b.iter(|| clear.get(black_box(key.as_str())).copied())
        });
    }
    group.bench_function("sha256_floor", |b| {
        b.iter(|| Sha256::digest(black_box(known.as_bytes())))
    });
    group.finish();
}

fn sign(header: &str, alg: Algorithm, key: &EncodingKey) -> String {
    let claims = format!(
        r#"{{"iss":"{ISS}","aud":"{AUD}","exp":{},"nbf":{},"iat":{NOW},"sub":"user-1","appid":"app-one","tid":"tenant-a"}}"#,
        NOW + 3600,
        NOW - 10
    );
    let message = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let signature = jsonwebtoken::crypto::sign(message.as_bytes(), key, alg).unwrap();
    format!("{message}.{signature}")
}

fn jwt_verify(c: &mut Criterion) {
    let key = |kid: &str, alg, source| JwtKeyConfig {
        kid: Some(kid.into()),
        algorithms: vec![alg],
        source,
    };
    let validator = JwtValidator::new(vec![JwtIssuerConfig {
        audiences: vec![AUD.into()],
        keys: vec![
            key(
                "hs",
                JwtAlg::HS256,
                JwtKeySource::secret(HS_SECRET.to_vec()),
            ),
            key(
                "rs",
                JwtAlg::RS256,
                JwtKeySource::pem(RSA_PUBLIC_PEM.to_vec()),
            ),
            key(
                "es",
                JwtAlg::ES256,
                JwtKeySource::pem(EC_PUBLIC_PEM.to_vec()),
            ),
        ],
        ..JwtIssuerConfig::new(ISS)
    }])
    .unwrap();

    let cases = [
        (
            "hs256",
            sign(
                r#"{"alg":"HS256","kid":"hs"}"#,
                Algorithm::HS256,
                &EncodingKey::from_secret(HS_SECRET),
            ),
            DecodingKey::from_secret(HS_SECRET),
            Algorithm::HS256,
        ),
        (
            "rs256",
            sign(
                r#"{"alg":"RS256","kid":"rs"}"#,
                Algorithm::RS256,
                &EncodingKey::from_rsa_der(RSA_PRIVATE_DER),
            ),
            rsa_decoding_key(),
            Algorithm::RS256,
        ),
        (
            "es256",
            sign(
                r#"{"alg":"ES256","kid":"es"}"#,
                Algorithm::ES256,
                &EncodingKey::from_ec_der(EC_PRIVATE_DER),
            ),
            ec_decoding_key(),
            Algorithm::ES256,
        ),
    ];
    let mut group = c.benchmark_group("auth/jwt");
    for (name, token, decoding, alg) in &cases {
        let mut validation = Validation::new(*alg);
        validation.set_audience(&[AUD]);
        validation.set_issuer(&[ISS]);
        validation.leeway = 60;
        // The library reads the real clock; keep this bench independent of the date.
        validation.validate_exp = false;
        // Both must accept the token they are timed on.
        assert!(validator.validate(token, NOW).is_ok(), "{name}");
        assert!(
            jsonwebtoken::decode::<serde_json::Value>(token, decoding, &validation).is_ok(),
            "{name}"
        );
        group.bench_function(format!("sluice_{name}"), |b| {
            b.iter(|| validator.validate(black_box(token), black_box(NOW)))
        });
        group.bench_function(format!("jsonwebtoken_decode_{name}"), |b| {
            b.iter(|| {
                jsonwebtoken::decode::<serde_json::Value>(black_box(token), decoding, &validation)
            })
        });
    }
    group.finish();
}

fn rsa_decoding_key() -> DecodingKey {
    use rsa::pkcs8::DecodePublicKey as _;
    use rsa::traits::PublicKeyParts as _;
    let key = rsa::RsaPublicKey::from_public_key_pem(std::str::from_utf8(RSA_PUBLIC_PEM).unwrap())
        .unwrap();
    DecodingKey::from_rsa_raw_components(&key.n().to_bytes_be(), &key.e().to_bytes_be())
}

fn ec_decoding_key() -> DecodingKey {
    use p256::pkcs8::DecodePublicKey as _;
    let key =
        p256::PublicKey::from_public_key_pem(std::str::from_utf8(EC_PUBLIC_PEM).unwrap()).unwrap();
    DecodingKey::from_ec_der(p256::EncodedPoint::from(key).as_bytes())
}

criterion_group!(benches, key_check, jwt_verify);
criterion_main!(benches);
