//! Key parsing, the HTTP fetch and the refetch rate limit.

use super::*;
use crate::auth::testkeys::*;

fn rs_es() -> AlgSet {
    AlgSet::from_algs(&[JwtAlg::RS256, JwtAlg::ES256])
}

#[test]
fn jwks_keeps_rsa_and_p256_signing_keys_only() {
    let mut small_rsa = rsa_jwk("small");
    small_rsa["n"] = b64(&[0xC1; 128]).into();
    let mut enc = rsa_jwk("enc");
    enc["use"] = "enc".into();
    let mut p384 = ec_jwk("p384");
    p384["crv"] = "P-384".into();
    let mut bad_point = ec_jwk("bad-point");
    bad_point["y"] = b64(&[7; 32]).into();
    let mut wrong_alg = rsa_jwk("wrong-alg");
    wrong_alg["alg"] = "RS512".into();
    let doc = jwks(&[
        rsa_jwk("rsa"),
        ec_jwk("ec"),
        small_rsa,
        enc,
        p384,
        bad_point,
        wrong_alg,
        serde_json::json!({"kty": "oct", "kid": "hmac", "k": "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0"}),
        serde_json::json!({"kty": "RSA", "kid": "no-n"}),
        serde_json::json!("not an object"),
    ]);
    let keys = parse_jwks(doc.as_bytes(), rs_es()).unwrap();
    let kids: Vec<_> = keys.iter().map(|k| k.kid.as_deref().unwrap()).collect();
    assert_eq!(kids, ["rsa", "ec"]);
    assert_eq!(keys[0].kind, KeyKind::Rsa);
    assert_eq!(keys[0].algs, AlgSet::of(JwtAlg::RS256));
    assert_eq!(keys[1].kind, KeyKind::EcP256);
    assert_eq!(keys[1].algs, AlgSet::of(JwtAlg::ES256));
}

#[test]
fn a_pin_excludes_keys_of_other_kinds() {
    let doc = jwks(&[rsa_jwk("rsa"), ec_jwk("ec")]);
    let keys = parse_jwks(doc.as_bytes(), AlgSet::of(JwtAlg::ES256)).unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].kind, KeyKind::EcP256);
    assert!(matches!(
        parse_jwks(doc.as_bytes(), AlgSet::of(JwtAlg::HS256)),
        Err(JwksError::NoUsableKeys(2))
    ));
}

#[test]
fn documents_that_are_not_key_sets_are_errors() {
    assert!(matches!(
        parse_jwks(b"{}", rs_es()),
        Err(JwksError::Json(_))
    ));
    assert!(matches!(
        parse_jwks(b"[1,2]", rs_es()),
        Err(JwksError::Json(_))
    ));
    assert!(matches!(
        parse_jwks(br#"{"keys":[]}"#, rs_es()),
        Err(JwksError::NoUsableKeys(0))
    ));
}

#[test]
fn pem_keys_of_each_kind() {
    let all = AlgSet::from_algs(&[JwtAlg::HS256, JwtAlg::RS256, JwtAlg::ES256]);
    let rsa = VerifyKey::from_pem(None, RSA_PUBLIC_PEM, all).unwrap();
    assert_eq!(
        (rsa.kind, rsa.algs),
        (KeyKind::Rsa, AlgSet::of(JwtAlg::RS256))
    );
    let ec = VerifyKey::from_pem(Some("e".into()), EC_PUBLIC_PEM, all).unwrap();
    assert_eq!(
        (ec.kind, ec.algs),
        (KeyKind::EcP256, AlgSet::of(JwtAlg::ES256))
    );
    assert!(matches!(
        VerifyKey::from_pem(
            None,
            b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
            all
        ),
        Err(JwksError::BadKey(_))
    ));
    assert!(matches!(
        VerifyKey::from_pem(None, RSA_PUBLIC_PEM, AlgSet::of(JwtAlg::ES256)),
        Err(JwksError::AlgorithmMismatch(KeyKind::Rsa))
    ));
    assert!(!format!("{rsa:?}").contains("SecretOrDer"));
}

/// The OpenSSL-made P-384 public key (SPKI) of the whole-process JWT tests.
const ES384_PUBLIC_PEM: &[u8] = include_bytes!("../../../../tests/data/jwt/es384_public.pem");
/// The OpenSSL-made RSA private key (PKCS#8) of the whole-process JWT tests.
const RSA_PRIVATE_PEM: &[u8] = include_bytes!("../../../../tests/data/jwt/rsa_private.pem");
/// A 1024-bit RSA public key (`openssl genpkey ... rsa_keygen_bits:1024 | openssl pkey -pubout`).
const RSA_1024_PUBLIC_PEM: &[u8] = b"-----BEGIN PUBLIC KEY-----
MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQCqT4PxJBf6h8aLZhOTjFoQJQs3
AOcFn/hQHC1IBV3A/3ZkRrd+QRVQlw/7vk+xFuLAEbG/XmCSdx5TiC5nh0Cua7jH
UivqT1tGMnfLro3i1wqRBQTZbpUw4pH3HBOO67wmuRewDveDBoNXD7jj5cYNRTg4
4zlHZJYmXqYfKMCKwwIDAQAB
-----END PUBLIC KEY-----
";
/// A secp256k1 public key: an EC key, but not on a curve JWT's ES256/ES384 use.
const SECP256K1_PUBLIC_PEM: &[u8] = b"-----BEGIN PUBLIC KEY-----
MFYwEAYHKoZIzj0CAQYFK4EEAAoDQgAEKFgAaJ6a8j0Ak3T6NYuKbiYZKNePVRHD
jb9WH9G8o2SlAj+r9H3lvtSQy/x4KvfZVEq5a1fAy/NMee4RvzuIqA==
-----END PUBLIC KEY-----
";
/// An Ed25519 public key: SPKI, but neither RSA nor EC.
const ED25519_PUBLIC_PEM: &[u8] = b"-----BEGIN PUBLIC KEY-----
MCowBQYDK2VwAyEAVLhYwtsbjo2nDEnx5K6gUkXDLRnDGGJcZzlaucrVXl0=
-----END PUBLIC KEY-----
";

/// The same DER under another PEM label.
fn relabel(pem: &[u8], label: &str) -> Vec<u8> {
    let block = pem::parse(pem).unwrap();
    pem::encode(&pem::Pem::new(label, block.contents())).into_bytes()
}

#[test]
fn pem_reads_spki_and_pkcs1_rsa_and_both_curves() {
    use rsa::pkcs1::EncodeRsaPublicKey as _;
    use rsa::pkcs8::DecodePublicKey as _;
    let all = AlgSet::from_algs(&[JwtAlg::RS256, JwtAlg::ES256, JwtAlg::ES384]);
    let spki = rsa::RsaPublicKey::from_public_key_pem(std::str::from_utf8(RSA_PUBLIC_PEM).unwrap())
        .unwrap();
    let pkcs1 = spki.to_pkcs1_pem(Default::default()).unwrap();
    assert!(pkcs1.starts_with("-----BEGIN RSA PUBLIC KEY-----"));
    let from_pkcs1 = VerifyKey::from_pem(None, pkcs1.as_bytes(), all).unwrap();
    assert_eq!(
        (from_pkcs1.kind, from_pkcs1.algs),
        (KeyKind::Rsa, AlgSet::of(JwtAlg::RS256))
    );
    let p384 = VerifyKey::from_pem(None, ES384_PUBLIC_PEM, all).unwrap();
    assert_eq!(
        (p384.kind, p384.algs),
        (KeyKind::EcP384, AlgSet::of(JwtAlg::ES384))
    );
    // A key read from PKCS#1 verifies what its private key signed.
    let token = sign(
        r#"{"alg":"RS256","typ":"JWT"}"#,
        r#"{"sub":"x"}"#,
        jsonwebtoken::Algorithm::RS256,
        &rsa_signer(),
    );
    let (message, signature) = token.rsplit_once('.').unwrap();
    let verified = jsonwebtoken::crypto::verify(
        signature,
        message.as_bytes(),
        &from_pkcs1.key,
        jsonwebtoken::Algorithm::RS256,
    );
    assert!(matches!(verified, Ok(true)), "{verified:?}");
}

#[test]
fn pem_refuses_all_but_a_usable_public_key_and_says_what_it_got() {
    let all = AlgSet::from_algs(&[JwtAlg::RS256, JwtAlg::ES256, JwtAlg::ES384]);
    let bad = |pem: &[u8]| match VerifyKey::from_pem(None, pem, all) {
        Err(JwksError::BadKey(message)) => message,
        other => panic!("expected BadKey, got {other:?}"),
    };
    assert!(bad(b"not pem at all").contains("not PEM"));
    assert!(
        bad(b"-----BEGIN PUBLIC KEY-----\n!!!\n-----END PUBLIC KEY-----\n").contains("not PEM")
    );
    // Private keys, under each label they come with.
    assert!(bad(RSA_PRIVATE_PEM).contains("private key"));
    let ec_private = pem::encode(&pem::Pem::new("PRIVATE KEY", EC_PRIVATE_DER));
    assert!(bad(ec_private.as_bytes()).contains("private key"));
    assert!(bad(&relabel(RSA_PRIVATE_PEM, "RSA PRIVATE KEY")).contains("private key"));
    assert!(bad(&relabel(RSA_PRIVATE_PEM, "EC PRIVATE KEY")).contains("private key"));
    // A certificate (here only its label; jsonwebtoken would take the key out of a real one).
    assert!(bad(&relabel(RSA_PUBLIC_PEM, "CERTIFICATE")).contains("certificate"));
    assert!(bad(&relabel(RSA_PUBLIC_PEM, "SOMETHING ELSE")).contains("no public key"));
    // Public keys Sluice cannot use.
    assert!(bad(SECP256K1_PUBLIC_PEM).contains("no RSA, P-256 or P-384"));
    assert!(bad(ED25519_PUBLIC_PEM).contains("no RSA, P-256 or P-384"));
    // A PKCS#1 label over SPKI bytes: the structure is not an RSAPublicKey.
    assert!(bad(&relabel(RSA_PUBLIC_PEM, "RSA PUBLIC KEY")).contains("invalid RSA"));
    assert!(matches!(
        VerifyKey::from_pem(None, RSA_1024_PUBLIC_PEM, all),
        Err(JwksError::WeakKey(_))
    ));
}

#[test]
fn urls_are_parsed_https_included() {
    let u = HttpUrl::parse("http://idp.example:8080/keys?x=1").unwrap();
    assert_eq!(
        (u.host.as_str(), u.port, u.path.as_str()),
        ("idp.example", 8080, "/keys?x=1")
    );
    assert_eq!(u.host_header(), "idp.example:8080");
    let u = HttpUrl::parse("HTTP://idp.example").unwrap();
    assert_eq!(
        (u.port, u.path.as_str(), u.host_header().as_str()),
        (80, "/", "idp.example")
    );
    let u = HttpUrl::parse("http://[::1]:9000/jwks").unwrap();
    assert_eq!(
        (u.host.as_str(), u.host_header().as_str()),
        ("::1", "[::1]:9000")
    );
    let u = HttpUrl::parse("https://idp.example/keys").unwrap();
    assert_eq!(
        (u.port, u.tls.as_ref().map(|t| t.1.to_str().into_owned())),
        (443, Some("idp.example".to_string()))
    );
    for bad in [
        "ftp://x/",
        "http://",
        "http://a:b/",
        "http://u:p@x/",
        "http://x/a b",
        "htté://x",
    ] {
        assert!(
            matches!(HttpUrl::parse(bad), Err(JwksError::Url(_))),
            "{bad}"
        );
    }
}

#[test]
fn answers_by_each_framing() {
    let max = 1 << 20;
    assert_eq!(
        response_body(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}", max).unwrap(),
        b"{}"
    );
    assert_eq!(
        response_body(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
            max
        )
        .unwrap(),
        b"{}"
    );
    assert_eq!(
        response_body(b"HTTP/1.0 200 OK\r\n\r\n{\"keys\":[]}", max).unwrap(),
        b"{\"keys\":[]}"
    );
    assert!(matches!(
        response_body(
            b"HTTP/1.1 503 Unavailable\r\nContent-Length: 0\r\n\r\n",
            max
        ),
        Err(JwksError::Status(503))
    ));
    assert!(matches!(
        response_body(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{}", max),
        Err(JwksError::Http(_))
    ));
    assert!(matches!(
        response_body(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n",
            max
        ),
        Err(JwksError::Http(_))
    ));
    assert!(matches!(
        response_body(b"HTTP/1.1 200 OK\r\n", max),
        Err(JwksError::Http(_))
    ));
    assert!(matches!(
        response_body(b"garbage\r\n\r\n", max),
        Err(JwksError::Http(_))
    ));
}

#[test]
fn refetches_are_granted_once_per_interval() {
    let cache =
        JwksCache::new("http://127.0.0.1:1/keys", rs_es(), JwksSettings::default()).unwrap();
    let t = 1_800_000_000;
    assert!(cache.request_refetch(t));
    assert!(!cache.request_refetch(t));
    assert!(!cache.request_refetch(t + 59));
    assert!(cache.request_refetch(t + 60));
    assert!(!cache.request_refetch(t + 61));
    assert_eq!(cache.refetch_request_count(), 2);
    // Time 0 is a time like any other.
    let zero = JwksCache::new("http://127.0.0.1:1/keys", rs_es(), JwksSettings::default()).unwrap();
    assert!(zero.request_refetch(0));
    assert!(!zero.request_refetch(1));
}

#[test]
fn fetch_counts_and_an_outage_keeps_the_keys() {
    let mut server = JwksServer::start(jwks(&[rsa_jwk("k1")]));
    let cache = JwksCache::new(&server.url, rs_es(), JwksSettings::default()).unwrap();
    assert!(cache.keys().keys.is_empty());
    assert_eq!(cache.refresh().unwrap(), 1);
    assert!(cache.keys().has_kid("k1"));
    server.set_body("{\"keys\": \"oops\"}".into());
    assert!(matches!(cache.refresh(), Err(JwksError::Json(_))));
    assert!(
        cache.keys().has_kid("k1"),
        "a bad document keeps the old keys"
    );
    server.stop();
    assert!(matches!(cache.refresh(), Err(JwksError::Io(_))));
    assert!(cache.keys().has_kid("k1"), "an outage keeps the old keys");
    assert_eq!((cache.fetch_count(), cache.failure_count()), (1, 2));
    assert_eq!(server.hits(), 2);
}

#[test]
fn oversized_answers_are_refused() {
    let server = JwksServer::start(format!("{{\"keys\":[],\"pad\":\"{}\"}}", "x".repeat(4096)));
    let settings = JwksSettings {
        max_response: 1024,
        ..JwksSettings::default()
    };
    let cache = JwksCache::new(&server.url, rs_es(), settings).unwrap();
    assert!(matches!(cache.refresh(), Err(JwksError::TooLarge(1024))));
}

#[test]
fn the_refresher_stops_when_dropped() {
    let server = JwksServer::start(jwks(&[rsa_jwk("k1")]));
    let cache = Arc::new(JwksCache::new(&server.url, rs_es(), JwksSettings::default()).unwrap());
    let refresher = JwksRefresher::spawn(cache.clone()).unwrap();
    assert!(wait_for(|| cache.fetch_count() == 1));
    drop(refresher);
    // Its thread holds the other reference to the cache until it exits.
    assert!(wait_for(|| Arc::strong_count(&cache) == 1));
}

/// A CA, and an HTTPS server on 127.0.0.1 with a certificate from it that answers `body` to
/// each of `connections` connections (`Connection: close`). Returns the URL and the CA.
fn https_jwks_server(
    body: String,
    connections: usize,
) -> (String, rustls::pki_types::CertificateDer<'static>) {
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &ca)
        .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![leaf.der().clone()],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
    )
    .unwrap();
    let config = Arc::new(config);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("https://{}/keys", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for _ in 0..connections {
            let Ok((tcp, _)) = listener.accept() else {
                return;
            };
            tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let conn = rustls::ServerConnection::new(Arc::clone(&config)).unwrap();
            let mut tls = rustls::StreamOwned::new(conn, tcp);
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                match tls.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
            }
            if req.is_empty() {
                continue; // the client refused the certificate
            }
            let answer = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = tls.write_all(answer.as_bytes());
            tls.conn.send_close_notify();
            let _ = tls.flush();
        }
    });
    (url, ca.der().clone())
}

#[test]
fn https_jwks_urls_are_fetched_over_verified_tls() {
    let (url, ca) = https_jwks_server(jwks(&[rsa_jwk("k1")]), 2);
    // The public roots do not know the test CA: refused, named, and nothing fetched.
    let public = JwksCache::new(&url, rs_es(), JwksSettings::default()).unwrap();
    assert!(
        matches!(public.refresh(), Err(JwksError::Tls(TlsFailure::UnknownCa))),
        "{:?}",
        public.refresh().err()
    );
    assert!(public.keys().keys.is_empty());
    // Trusting it, the same URL yields the keys.
    let mut trusting = JwksCache::new(&url, rs_es(), JwksSettings::default()).unwrap();
    let name = trusting.url.tls.as_ref().unwrap().1.clone();
    trusting.url.tls = Some((client_config(&Trust::Cas(vec![ca]), true).unwrap(), name));
    assert_eq!(trusting.refresh().unwrap(), 1);
    assert!(trusting.keys().has_kid("k1"));
}
