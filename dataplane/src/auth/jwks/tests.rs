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

#[test]
fn urls_are_parsed_and_https_is_refused_for_now() {
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
    assert!(matches!(
        HttpUrl::parse("https://idp.example/keys"),
        Err(JwksError::Https)
    ));
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
