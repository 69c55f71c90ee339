//! JWT vectors, signed here with the fixed test keys.

use std::collections::HashMap;

use jsonwebtoken::{Algorithm, EncodingKey};

use super::*;
use crate::auth::testkeys::*;

const NOW: u64 = 1_800_000_000;
const ISS: &str = "https://login.example.test/tenant/v2.0";
const AUD: &str = "api://sluice";

fn claims(extra: &str) -> String {
    let base = format!(
        r#""iss":"{ISS}","aud":"{AUD}","exp":{},"iat":{NOW},"sub":"user-1""#,
        NOW + 600
    );
    if extra.is_empty() {
        format!("{{{base}}}")
    } else {
        format!("{{{base},{extra}}}")
    }
}

fn issuer(keys: Vec<JwtKeyConfig>) -> JwtIssuerConfig {
    JwtIssuerConfig {
        audiences: vec![AUD.into()],
        keys,
        ..JwtIssuerConfig::new(ISS)
    }
}

fn key(kid: Option<&str>, alg: JwtAlg, source: JwtKeySource) -> JwtKeyConfig {
    JwtKeyConfig {
        kid: kid.map(str::to_owned),
        algorithms: vec![alg],
        source,
    }
}

fn hs_key() -> JwtKeyConfig {
    key(
        None,
        JwtAlg::HS256,
        JwtKeySource::secret(HS_SECRET.to_vec()),
    )
}

fn rs_key(kid: Option<&str>) -> JwtKeyConfig {
    key(
        kid,
        JwtAlg::RS256,
        JwtKeySource::pem(RSA_PUBLIC_PEM.to_vec()),
    )
}

fn es_key() -> JwtKeyConfig {
    key(
        None,
        JwtAlg::ES256,
        JwtKeySource::pem(EC_PUBLIC_PEM.to_vec()),
    )
}

/// A validator trusting the HS, RS and ES test keys.
fn validator() -> JwtValidator {
    JwtValidator::new(vec![issuer(vec![
        hs_key(),
        rs_key(Some("rsa-1")),
        es_key(),
    ])])
    .unwrap()
}

fn hs(claims: &str) -> String {
    sign(
        r#"{"alg":"HS256","typ":"JWT"}"#,
        claims,
        Algorithm::HS256,
        &hs_signer(),
    )
}

fn rs(claims: &str) -> String {
    sign(
        r#"{"alg":"RS256","kid":"rsa-1"}"#,
        claims,
        Algorithm::RS256,
        &rsa_signer(),
    )
}

fn es(claims: &str) -> String {
    sign(r#"{"alg":"ES256"}"#, claims, Algorithm::ES256, &ec_signer())
}

#[test]
fn valid_hs256_rs256_es256_tokens_pass() {
    let v = validator();
    for token in [hs(&claims("")), rs(&claims("")), es(&claims(""))] {
        let p = v.validate(&token, NOW).unwrap();
        assert_eq!(p.issuer, 0);
        assert_eq!(p.subject.as_deref(), Some("user-1"));
        assert_eq!(p.expires_at, Some(NOW + 600));
        assert_eq!(p.subscription, None);
    }
}

#[test]
fn keys_load_from_pem_and_jwks_files() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/auth/testdata");
    let jwks_path = std::env::temp_dir().join(format!("sluice-jwks-{}.json", std::process::id()));
    std::fs::write(&jwks_path, jwks(&[ec_jwk("ec-1")])).unwrap();
    let v = JwtValidator::new(vec![issuer(vec![
        key(
            None,
            JwtAlg::RS256,
            JwtKeySource::PemFile(dir.join("rsa_public.pem")),
        ),
        key(
            None,
            JwtAlg::ES256,
            JwtKeySource::JwksFile(jwks_path.clone()),
        ),
    ])])
    .unwrap();
    std::fs::remove_file(&jwks_path).unwrap();
    let rs_no_kid = sign(
        r#"{"alg":"RS256"}"#,
        &claims(""),
        Algorithm::RS256,
        &rsa_signer(),
    );
    assert!(v.validate(&rs_no_kid, NOW).is_ok());
    let es_kid = sign(
        r#"{"alg":"ES256","kid":"ec-1"}"#,
        &claims(""),
        Algorithm::ES256,
        &ec_signer(),
    );
    assert!(v.validate(&es_kid, NOW).is_ok());
    let es_other = sign(
        r#"{"alg":"ES256","kid":"ec-2"}"#,
        &claims(""),
        Algorithm::ES256,
        &ec_signer(),
    );
    assert_eq!(v.validate(&es_other, NOW), Err(JwtError::UnknownKid));
}

/// A key file whose key cannot be used is named in the error, beside the issuer and why.
#[test]
fn an_unusable_key_file_is_named_in_the_error() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/auth/testdata");
    let private = std::env::temp_dir().join(format!("sluice-private-{}.pem", std::process::id()));
    let pem = pem::encode(&pem::Pem::new("PRIVATE KEY", EC_PRIVATE_DER));
    std::fs::write(&private, pem).unwrap();
    let rsa_pem = dir.join("rsa_public.pem");
    let not_jwks = dir.join("ec_public.pem");
    let cases = [
        (
            JwtAlg::ES256,
            &private,
            JwtKeySource::PemFile(private.clone()),
            "private key",
        ),
        (
            JwtAlg::ES256,
            &rsa_pem,
            JwtKeySource::PemFile(rsa_pem.clone()),
            "no pinned",
        ),
        (
            JwtAlg::RS256,
            &not_jwks,
            JwtKeySource::JwksFile(not_jwks.clone()),
            "not a JWKS",
        ),
    ];
    for (alg, path, source, why) in cases {
        let path = path.display().to_string();
        let error = JwtValidator::new(vec![issuer(vec![key(None, alg, source)])]).unwrap_err();
        assert!(
            matches!(&error, JwtConfigError::KeyFile { path: p, .. } if *p == path),
            "{error:?}"
        );
        let text = error.to_string();
        assert!(text.contains(&path) && text.contains(why), "{text}");
    }
    std::fs::remove_file(&private).unwrap();
}

#[test]
fn secret_from_the_environment() {
    let var = "SLUICE_TEST_JWT_SECRET_AUTH";
    std::env::set_var(var, std::str::from_utf8(HS_SECRET).unwrap());
    let v = JwtValidator::new(vec![issuer(vec![key(
        None,
        JwtAlg::HS256,
        JwtKeySource::SecretEnv(var.into()),
    )])])
    .unwrap();
    assert!(v.validate(&hs(&claims("")), NOW).is_ok());
    let missing = JwtValidator::new(vec![issuer(vec![key(
        None,
        JwtAlg::HS256,
        JwtKeySource::SecretEnv("SLUICE_TEST_JWT_UNSET_VAR".into()),
    )])]);
    assert!(matches!(missing, Err(JwtConfigError::MissingEnv { .. })));
}

#[test]
fn expiry_within_and_beyond_leeway() {
    let v = validator();
    let token = hs(&claims(""));
    let exp = NOW + 600;
    assert!(v.validate(&token, exp - 1).is_ok());
    assert!(
        v.validate(&token, exp + 59).is_ok(),
        "within the 60 s leeway"
    );
    assert_eq!(v.validate(&token, exp + 60), Err(JwtError::Expired));
    assert_eq!(v.validate(&token, exp + 3600), Err(JwtError::Expired));

    let strict = JwtValidator::new(vec![JwtIssuerConfig {
        leeway: std::time::Duration::ZERO,
        ..issuer(vec![hs_key()])
    }])
    .unwrap();
    assert_eq!(strict.validate(&token, exp), Err(JwtError::Expired));
    assert!(strict.validate(&token, exp - 1).is_ok());
}

/// Token times are whole seconds; a fractional leeway is applied exactly, neither cut to
/// the second below (which would refuse a token it allows) nor stretched for `nbf`.
#[test]
fn a_fractional_leeway_is_applied_exactly() {
    let v = JwtValidator::new(vec![JwtIssuerConfig {
        leeway: std::time::Duration::from_millis(1500),
        ..issuer(vec![hs_key()])
    }])
    .unwrap();
    let exp = NOW + 600;
    let token = hs(&claims(""));
    assert!(
        v.validate(&token, exp + 1).is_ok(),
        "exp + 1 s < exp + 1.5 s"
    );
    assert_eq!(v.validate(&token, exp + 2), Err(JwtError::Expired));
    let nbf = hs(&claims(&format!(r#""nbf":{}"#, NOW + 2)));
    assert!(v.validate(&nbf, NOW + 1).is_ok(), "now + 1.5 s ≥ nbf - 1 s");
    assert_eq!(v.validate(&nbf, NOW), Err(JwtError::NotYetValid));
}

/// An HMAC secret never appears in debug output (the snapshot holding it is logged).
#[test]
fn a_secret_is_not_printed() {
    let source = JwtKeySource::Secret {
        env: Some("JWT_SECRET".into()),
        secret: HS_SECRET.to_vec(),
    };
    let debug = format!("{:?}", key(None, JwtAlg::HS256, source));
    let bytes = format!("{:?}", HS_SECRET.to_vec());
    let text = String::from_utf8_lossy(HS_SECRET).into_owned();
    assert!(debug.contains("JWT_SECRET"), "{debug}");
    assert!(!debug.contains(&bytes) && !debug.contains(&text), "{debug}");
}

/// PEM text or a JWKS read from a file by the caller (the config compiler) is named by its
/// file in the error, like a file the validator reads itself.
#[test]
fn key_material_from_a_named_file_names_it_in_the_error() {
    let path = std::path::PathBuf::from("/etc/sluice/keys/bad.pem");
    for source in [
        JwtKeySource::Pem {
            path: Some(path.clone()),
            pem: b"not a pem".to_vec(),
        },
        JwtKeySource::Jwks {
            path: Some(path.clone()),
            json: b"{}".to_vec(),
        },
    ] {
        let error =
            JwtValidator::new(vec![issuer(vec![key(None, JwtAlg::RS256, source)])]).unwrap_err();
        assert!(
            matches!(&error, JwtConfigError::KeyFile { path: p, .. } if *p == path.display().to_string()),
            "{error:?}"
        );
    }
    let unnamed = JwtValidator::new(vec![issuer(vec![key(
        None,
        JwtAlg::RS256,
        JwtKeySource::pem(b"not a pem".to_vec()),
    )])])
    .unwrap_err();
    assert!(matches!(unnamed, JwtConfigError::Key { .. }), "{unnamed:?}");
}

#[test]
fn not_before_in_the_future() {
    let v = validator();
    let soon = hs(&claims(&format!(r#""nbf":{}"#, NOW + 30)));
    assert!(v.validate(&soon, NOW).is_ok(), "within leeway");
    let later = hs(&claims(&format!(r#""nbf":{}"#, NOW + 120)));
    assert_eq!(v.validate(&later, NOW), Err(JwtError::NotYetValid));
    assert!(v.validate(&later, NOW + 60).is_ok());
    let bad = hs(&claims(r#""nbf":"tomorrow""#));
    assert_eq!(v.validate(&bad, NOW), Err(JwtError::InvalidClaim("nbf")));
}

/// `require = [..., "nbf"]`: a token without `nbf` is refused; without the setting it
/// passes (an `nbf` given is checked either way).
#[test]
fn nbf_is_required_only_when_asked() {
    let no_nbf = hs(&claims(""));
    assert!(validator().validate(&no_nbf, NOW).is_ok());
    let strict = JwtValidator::new(vec![JwtIssuerConfig {
        require_not_before: true,
        ..issuer(vec![hs_key()])
    }])
    .unwrap();
    assert_eq!(
        strict.validate(&no_nbf, NOW),
        Err(JwtError::MissingNotBefore)
    );
    let with_nbf = hs(&claims(&format!(r#""nbf":{}"#, NOW - 10)));
    assert!(strict.validate(&with_nbf, NOW).is_ok());
    let early = hs(&claims(&format!(r#""nbf":{}"#, NOW + 120)));
    assert_eq!(strict.validate(&early, NOW), Err(JwtError::NotYetValid));
}

/// Leaving `iss` out of `require`: a lone issuer reads tokens without `iss`; with several
/// issuers (nothing to pick one by) or when it is required, they are refused.
#[test]
fn iss_may_be_left_out_only_for_a_lone_issuer() {
    let exp = NOW + 600;
    let no_iss = hs(&format!(r#"{{"aud":"{AUD}","exp":{exp}}}"#));
    let lax = |iss: &str| JwtIssuerConfig {
        require_issuer: false,
        audiences: vec![AUD.into()],
        keys: vec![hs_key()],
        ..JwtIssuerConfig::new(iss)
    };
    let lone = JwtValidator::new(vec![lax(ISS)]).unwrap();
    assert_eq!(lone.validate(&no_iss, NOW).unwrap().issuer, 0);
    // A token naming another issuer is still refused.
    let wrong = hs(&format!(
        r#"{{"iss":"https://evil.test/","aud":"{AUD}","exp":{exp}}}"#
    ));
    assert_eq!(lone.validate(&wrong, NOW), Err(JwtError::UnknownIssuer));
    let two = JwtValidator::new(vec![lax(ISS), lax("https://other.test/")]).unwrap();
    assert_eq!(two.validate(&no_iss, NOW), Err(JwtError::MissingIssuer));
    assert_eq!(
        validator().validate(&no_iss, NOW),
        Err(JwtError::MissingIssuer)
    );
}

#[test]
fn exp_is_required_by_default() {
    let no_exp = hs(&format!(r#"{{"iss":"{ISS}","aud":"{AUD}"}}"#));
    assert_eq!(
        validator().validate(&no_exp, NOW),
        Err(JwtError::MissingExpiration)
    );
    let lax = JwtValidator::new(vec![JwtIssuerConfig {
        require_expiration: false,
        ..issuer(vec![hs_key()])
    }])
    .unwrap();
    assert!(lax.validate(&no_exp, NOW).is_ok());
    let float_exp = hs(&format!(
        r#"{{"iss":"{ISS}","aud":"{AUD}","exp":{}.5}}"#,
        NOW + 10
    ));
    assert!(validator().validate(&float_exp, NOW).is_ok());
    let negative = hs(&format!(r#"{{"iss":"{ISS}","aud":"{AUD}","exp":-1}}"#));
    assert_eq!(
        validator().validate(&negative, NOW),
        Err(JwtError::InvalidClaim("exp"))
    );
}

#[test]
fn audience_and_issuer_are_checked() {
    let v = validator();
    let exp = NOW + 600;
    let no_aud = hs(&format!(r#"{{"iss":"{ISS}","exp":{exp}}}"#));
    assert_eq!(v.validate(&no_aud, NOW), Err(JwtError::MissingAudience));
    let wrong_aud = hs(&format!(
        r#"{{"iss":"{ISS}","aud":"api://other","exp":{exp}}}"#
    ));
    assert_eq!(v.validate(&wrong_aud, NOW), Err(JwtError::WrongAudience));
    let list_aud = hs(&format!(
        r#"{{"iss":"{ISS}","aud":["api://other","{AUD}"],"exp":{exp}}}"#
    ));
    assert!(v.validate(&list_aud, NOW).is_ok());
    let list_wrong = hs(&format!(
        r#"{{"iss":"{ISS}","aud":["api://other"],"exp":{exp}}}"#
    ));
    assert_eq!(v.validate(&list_wrong, NOW), Err(JwtError::WrongAudience));

    let no_iss = hs(&format!(r#"{{"aud":"{AUD}","exp":{exp}}}"#));
    assert_eq!(v.validate(&no_iss, NOW), Err(JwtError::MissingIssuer));
    let wrong_iss = hs(&format!(
        r#"{{"iss":"https://evil.test/","aud":"{AUD}","exp":{exp}}}"#
    ));
    assert_eq!(v.validate(&wrong_iss, NOW), Err(JwtError::UnknownIssuer));
    let num_iss = hs(&format!(r#"{{"iss":7,"aud":"{AUD}","exp":{exp}}}"#));
    assert_eq!(
        v.validate(&num_iss, NOW),
        Err(JwtError::InvalidClaim("iss"))
    );
}

#[test]
fn tokens_pick_their_issuer_by_iss() {
    let other = "https://other.test/";
    let v = JwtValidator::new(vec![
        issuer(vec![rs_key(None)]),
        JwtIssuerConfig {
            audiences: vec![AUD.into()],
            keys: vec![hs_key()],
            ..JwtIssuerConfig::new(other)
        },
    ])
    .unwrap();
    let token = hs(&format!(
        r#"{{"iss":"{other}","aud":"{AUD}","exp":{}}}"#,
        NOW + 60
    ));
    assert_eq!(v.validate(&token, NOW).unwrap().issuer, 1);
    // The first issuer has no HS key: its tokens cannot be HS256.
    assert_eq!(
        v.validate(&hs(&claims("")), NOW),
        Err(JwtError::AlgorithmNotAllowed)
    );
}

#[test]
fn alg_none_is_refused_in_any_casing() {
    let v = validator();
    let body = b64(claims("").as_bytes());
    for alg in ["none", "NONE", "None", "nOnE"] {
        let header = b64(format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#).as_bytes());
        for signature in ["", "c2lnbmF0dXJl"] {
            let token = format!("{header}.{body}.{signature}");
            assert_eq!(
                v.validate(&token, NOW),
                Err(JwtError::AlgNone),
                "{alg} {signature:?}"
            );
        }
    }
}

#[test]
fn unsupported_and_miscased_algorithms_are_refused() {
    let v = validator();
    let body = b64(claims("").as_bytes());
    for alg in ["hs256", "Rs256", "ES512", "PS384", "PS512", "EdDSA", ""] {
        let header = b64(format!(r#"{{"alg":"{alg}"}}"#).as_bytes());
        assert_eq!(
            v.validate(&format!("{header}.{body}.c2ln"), NOW),
            Err(JwtError::UnsupportedAlgorithm),
            "{alg}"
        );
    }
    // Known algorithms no key of this issuer is pinned to.
    for alg in ["HS512", "RS384", "PS256", "ES384"] {
        let header = b64(format!(r#"{{"alg":"{alg}"}}"#).as_bytes());
        assert_eq!(
            v.validate(&format!("{header}.{body}.c2ln"), NOW),
            Err(JwtError::AlgorithmNotAllowed),
            "{alg}"
        );
    }
}

#[test]
fn hs256_signed_with_the_rsa_public_key_is_refused() {
    // The classic confusion: the attacker signs HS256 with the (public) RSA key's PEM bytes
    // as the HMAC secret, hoping the verifier feeds its RSA key to HMAC.
    let confused = EncodingKey::from_secret(RSA_PUBLIC_PEM);
    let token = sign(
        r#"{"alg":"HS256"}"#,
        &claims(""),
        Algorithm::HS256,
        &confused,
    );
    let rs_only = JwtValidator::new(vec![issuer(vec![rs_key(None)])]).unwrap();
    assert_eq!(
        rs_only.validate(&token, NOW),
        Err(JwtError::AlgorithmNotAllowed)
    );

    // With an HS key beside the RSA one, naming the RSA key's kid does not help either.
    let with_kid = sign(
        r#"{"alg":"HS256","kid":"rsa-1"}"#,
        &claims(""),
        Algorithm::HS256,
        &confused,
    );
    assert_eq!(
        validator().validate(&with_kid, NOW),
        Err(JwtError::AlgorithmNotAllowed)
    );
    // Without a kid it meets the real HS key, whose secret differs.
    assert_eq!(
        validator().validate(&token, NOW),
        Err(JwtError::BadSignature)
    );

    // And an RSA key cannot be pinned to HS256 in config.
    let pinned_wrong = JwtValidator::new(vec![issuer(vec![key(
        None,
        JwtAlg::HS256,
        JwtKeySource::pem(RSA_PUBLIC_PEM.to_vec()),
    )])]);
    assert!(matches!(
        pinned_wrong,
        Err(JwtConfigError::Key {
            error: JwksError::AlgorithmMismatch(_),
            ..
        })
    ));
}

#[test]
fn es256_token_against_an_rs256_kid_is_refused_before_crypto() {
    let token = sign(
        r#"{"alg":"ES256","kid":"rsa-1"}"#,
        &claims(""),
        Algorithm::ES256,
        &ec_signer(),
    );
    assert_eq!(
        validator().validate(&token, NOW),
        Err(JwtError::AlgorithmNotAllowed)
    );
}

#[test]
fn tampered_tokens_fail_the_signature() {
    let v = validator();
    for token in [hs(&claims("")), rs(&claims("")), es(&claims(""))] {
        let (message, signature) = token.rsplit_once('.').unwrap();
        let mut sig = URL_SAFE_NO_PAD.decode(signature).unwrap();
        sig[5] ^= 0x01;
        let tampered = format!("{message}.{}", b64(&sig));
        assert_eq!(v.validate(&tampered, NOW), Err(JwtError::BadSignature));

        // Claims swapped for others (a later exp), signature kept.
        let (header, _) = message.split_once('.').unwrap();
        let forged_claims = b64(claims(r#""admin":true"#).as_bytes());
        let forged = format!("{header}.{forged_claims}.{signature}");
        assert_eq!(v.validate(&forged, NOW), Err(JwtError::BadSignature));
    }
}

#[test]
fn oversized_tokens_are_refused_before_decoding() {
    let v = validator();
    // 20 KiB of garbage: were it decoded, it would be Malformed.
    let junk = "a".repeat(20 * 1024);
    assert_eq!(v.validate(&junk, NOW), Err(JwtError::TooLarge));
    // A well-formed token padded with a 20 KiB claim, correctly signed.
    let big = hs(&claims(&format!(r#""pad":"{}""#, "x".repeat(20 * 1024))));
    assert!(big.len() > MAX_TOKEN_BYTES);
    assert_eq!(v.validate(&big, NOW), Err(JwtError::TooLarge));
    // Just under the limit is fine.
    let fits = hs(&claims(&format!(r#""pad":"{}""#, "x".repeat(11 * 1024))));
    assert!(fits.len() <= MAX_TOKEN_BYTES);
    assert!(v.validate(&fits, NOW).is_ok());
}

#[test]
fn embedded_keys_and_crit_are_refused_even_when_signed() {
    let v = validator();
    for (field, value) in [
        ("jwk", r#"{"kty":"oct","k":"c2VjcmV0"}"#),
        ("jku", r#""http://evil.test/jwks.json""#),
        ("x5u", r#""http://evil.test/cert.pem""#),
        ("x5c", r#"["MIIB"]"#),
        ("jwk", "null"),
    ] {
        let header = format!(r#"{{"alg":"HS256",{:?}:{value}}}"#, field);
        let token = sign(&header, &claims(""), Algorithm::HS256, &hs_signer());
        let expected = match field {
            "jwk" => "jwk",
            "jku" => "jku",
            "x5u" => "x5u",
            _ => "x5c",
        };
        assert_eq!(
            v.validate(&token, NOW),
            Err(JwtError::EmbeddedKey(expected)),
            "{field}"
        );
    }
    let crit = sign(
        r#"{"alg":"HS256","crit":["b64"],"b64":false}"#,
        &claims(""),
        Algorithm::HS256,
        &hs_signer(),
    );
    assert_eq!(v.validate(&crit, NOW), Err(JwtError::CriticalHeader));
}

#[test]
fn malformed_tokens_are_named() {
    let v = validator();
    let good = hs(&claims(""));
    let (header, rest) = good.split_once('.').unwrap();
    let (body, sig) = rest.split_once('.').unwrap();
    let cases = [
        (format!("{header}.{body}"), "not three dot-separated parts"),
        (format!("{good}.x"), "not three dot-separated parts"),
        (format!("{header}.{body}."), "empty signature"),
        (format!("!!.{body}.{sig}"), "header is not base64url"),
        (
            format!("{}.{body}.{sig}", b64(b"[1]")),
            "header is not a JSON object",
        ),
        (
            format!("{}.{body}.{sig}", b64(br#"{"typ":"JWT"}"#)),
            "header has no alg",
        ),
        (
            format!("{}.{body}.{sig}", b64(br#"{"alg":"HS256","alg":"none"}"#)),
            "header is not a JSON object",
        ),
        (
            format!("{header}.{}.{sig}", b64(b"[]")),
            "claims are not a JSON object",
        ),
        (format!("{header}.%%.{sig}"), "claims are not base64url"),
    ];
    for (token, why) in cases {
        assert_eq!(
            v.validate(&token, NOW),
            Err(JwtError::Malformed(why)),
            "{token}"
        );
    }
    assert_eq!(
        v.validate("", NOW),
        Err(JwtError::Malformed("not three dot-separated parts"))
    );
}

#[test]
fn required_claim_values() {
    let v = JwtValidator::new(vec![JwtIssuerConfig {
        required_claims: vec![
            RequiredClaim {
                name: "roles".into(),
                values: vec!["gateway.user".into(), "gateway.admin".into()],
            },
            RequiredClaim {
                name: "tid".into(),
                values: vec!["tenant-a".into()],
            },
            RequiredClaim {
                name: "ver".into(),
                values: vec![],
            },
        ],
        ..issuer(vec![hs_key()])
    }])
    .unwrap();
    let ok = hs(&claims(
        r#""roles":["reader","gateway.user"],"tid":"tenant-a","ver":2"#,
    ));
    assert!(v.validate(&ok, NOW).is_ok());
    let wrong_role = hs(&claims(r#""roles":["reader"],"tid":"tenant-a","ver":2"#));
    assert_eq!(
        v.validate(&wrong_role, NOW),
        Err(JwtError::ClaimMismatch("roles".into()))
    );
    let wrong_tid = hs(&claims(
        r#""roles":"gateway.admin","tid":"tenant-b","ver":2"#,
    ));
    assert_eq!(
        v.validate(&wrong_tid, NOW),
        Err(JwtError::ClaimMismatch("tid".into()))
    );
    let no_ver = hs(&claims(r#""roles":"gateway.admin","tid":"tenant-a""#));
    assert_eq!(
        v.validate(&no_ver, NOW),
        Err(JwtError::MissingClaim("ver".into()))
    );
}

#[test]
fn a_claim_maps_to_the_subscription() {
    let mapping = SubscriptionMapping {
        claim: "appid".into(),
        values: Arc::new(HashMap::from([
            ("app-one".to_owned(), SubscriptionId(1)),
            ("app-two".to_owned(), SubscriptionId(2)),
        ])),
        default: None,
    };
    let v = JwtValidator::new(vec![JwtIssuerConfig {
        subscription: Some(mapping.clone()),
        ..issuer(vec![rs_key(Some("rsa-1"))])
    }])
    .unwrap();
    let p = v
        .validate(&rs(&claims(r#""appid":"app-two""#)), NOW)
        .unwrap();
    assert_eq!(p.subscription, Some(SubscriptionId(2)));
    assert_eq!(p.claim_value.as_deref(), Some("app-two"));
    assert_eq!(
        v.validate(&rs(&claims(r#""appid":"app-nine""#)), NOW),
        Err(JwtError::UnmappedSubscription)
    );
    assert_eq!(
        v.validate(&rs(&claims("")), NOW),
        Err(JwtError::MissingClaim("appid".into()))
    );

    let with_default = JwtValidator::new(vec![JwtIssuerConfig {
        subscription: Some(SubscriptionMapping {
            default: Some(SubscriptionId(9)),
            ..mapping
        }),
        ..issuer(vec![rs_key(Some("rsa-1"))])
    }])
    .unwrap();
    let p = with_default
        .validate(&rs(&claims(r#""appid":"app-nine""#)), NOW)
        .unwrap();
    assert_eq!(p.subscription, Some(SubscriptionId(9)));
}

#[test]
fn config_mistakes_are_refused() {
    let dup = JwtValidator::new(vec![issuer(vec![hs_key()]), issuer(vec![hs_key()])]);
    assert!(matches!(dup, Err(JwtConfigError::DuplicateIssuer(_))));
    assert!(matches!(
        JwtValidator::new(vec![issuer(vec![])]),
        Err(JwtConfigError::NoKeys(_))
    ));
    let no_aud = JwtValidator::new(vec![JwtIssuerConfig {
        audiences: vec![],
        ..issuer(vec![hs_key()])
    }]);
    assert!(matches!(no_aud, Err(JwtConfigError::NoAudiences(_))));
    let weak = JwtValidator::new(vec![issuer(vec![key(
        None,
        JwtAlg::HS256,
        JwtKeySource::secret(b"short".to_vec()),
    )])]);
    assert!(matches!(
        weak,
        Err(JwtConfigError::Key {
            error: JwksError::WeakKey(_),
            ..
        })
    ));
    let no_algs = JwtValidator::new(vec![issuer(vec![JwtKeyConfig {
        algorithms: vec![],
        ..hs_key()
    }])]);
    assert!(matches!(no_algs, Err(JwtConfigError::NoAlgorithms(_))));
    let not_http = JwtValidator::new(vec![issuer(vec![key(
        None,
        JwtAlg::RS256,
        JwtKeySource::jwks_url("ftp://login.example.test/keys"),
    )])]);
    assert!(matches!(
        not_http,
        Err(JwtConfigError::Key {
            error: JwksError::Url(_),
            ..
        })
    ));
    let kid_on_set = JwtValidator::new(vec![issuer(vec![key(
        Some("k"),
        JwtAlg::RS256,
        JwtKeySource::jwks_url("http://127.0.0.1:1/keys"),
    )])]);
    assert!(matches!(kid_on_set, Err(JwtConfigError::KidOnJwks(_))));
    let hs_from_jwks = JwtValidator::new(vec![issuer(vec![key(
        None,
        JwtAlg::HS256,
        JwtKeySource::jwks_url("http://127.0.0.1:1/keys"),
    )])]);
    assert!(hs_from_jwks.is_err());
}

#[test]
fn error_names_are_stable() {
    assert_eq!(JwtError::AlgNone.name(), "alg_none");
    assert_eq!(JwtError::TooLarge.name(), "too_large");
    assert_eq!(JwtError::UnknownKid.name(), "unknown_kid");
}

// --- JWKS over HTTP -------------------------------------------------------------------

fn remote_validator(url: &str, settings: JwksSettings) -> JwtValidator {
    JwtValidator::new(vec![issuer(vec![JwtKeyConfig {
        kid: None,
        algorithms: vec![JwtAlg::RS256, JwtAlg::ES256],
        source: JwtKeySource::JwksUrl {
            url: url.into(),
            settings,
        },
    }])])
    .unwrap()
}

fn rs_kid(kid: &str) -> String {
    sign(
        &format!(r#"{{"alg":"RS256","kid":"{kid}"}}"#),
        &claims(""),
        Algorithm::RS256,
        &rsa_signer(),
    )
}

#[test]
fn unknown_kid_triggers_one_rate_limited_refetch() {
    let server = JwksServer::start(jwks(&[rsa_jwk("k1")]));
    let v = remote_validator(&server.url, JwksSettings::default());
    let cache = v.jwks_caches().next().unwrap().clone();
    assert_eq!(
        v.validate(&rs_kid("k1"), NOW),
        Err(JwtError::KeysUnavailable)
    );
    v.spawn_refreshers().unwrap();
    assert!(wait_for(|| cache.fetch_count() == 1), "first fetch");
    assert_eq!(server.hits(), 1);
    assert!(v.validate(&rs_kid("k1"), NOW).is_ok());

    // The issuer rotates: k2 appears at the endpoint. The first k2 token is refused at once
    // and causes exactly one refetch.
    server.set_body(jwks(&[rsa_jwk("k1"), rsa_jwk("k2")]));
    assert_eq!(v.validate(&rs_kid("k2"), NOW), Err(JwtError::UnknownKid));
    assert_eq!(cache.refetch_request_count(), 1);
    assert!(wait_for(|| cache.fetch_count() == 2), "refetch");
    assert_eq!(server.hits(), 2);
    assert!(
        v.validate(&rs_kid("k2"), NOW + 1).is_ok(),
        "the retry finds the new key"
    );

    // Made-up kids within the rate limit ask for nothing more.
    for i in 0..50 {
        assert_eq!(
            v.validate(&rs_kid(&format!("bogus-{i}")), NOW + 2),
            Err(JwtError::UnknownKid)
        );
    }
    assert_eq!(cache.refetch_request_count(), 1);
    // After the interval, one more.
    assert_eq!(
        v.validate(&rs_kid("bogus"), NOW + 61),
        Err(JwtError::UnknownKid)
    );
    assert_eq!(
        v.validate(&rs_kid("bogus"), NOW + 62),
        Err(JwtError::UnknownKid)
    );
    assert_eq!(cache.refetch_request_count(), 2);
    assert!(wait_for(|| cache.fetch_count() == 3));
    assert_eq!(server.hits(), 3);
}

#[test]
fn a_jwks_outage_keeps_the_cached_keys() {
    let mut server = JwksServer::start(jwks(&[rsa_jwk("k1"), ec_jwk("e1")]));
    let v = remote_validator(&server.url, JwksSettings::default());
    let cache = v.jwks_caches().next().unwrap().clone();
    assert_eq!(cache.refresh().unwrap(), 2);
    server.stop();
    assert!(cache.refresh().is_err(), "the endpoint is down");
    assert_eq!(cache.failure_count(), 1);
    assert!(v.validate(&rs_kid("k1"), NOW).is_ok());
    let es = sign(
        r#"{"alg":"ES256","kid":"e1"}"#,
        &claims(""),
        Algorithm::ES256,
        &ec_signer(),
    );
    assert!(v.validate(&es, NOW).is_ok());
}

// ---------------------------------------------------------------------------------------------
// Known answers from independent sources: RFC 7515 Appendix A, and tokens signed by OpenSSL
// (tests/data/jwt/make_tokens.py).

/// RFC 7515 A.1: HS256 with this JWK `k`.
const RFC7515_A1_KEY: &str =
    "AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow";
const RFC7515_A1: &str = "eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ.dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
/// RFC 7515 A.2: RS256 with this RSA public key (`e` = AQAB).
const RFC7515_A2_N: &str = "ofgWCuLjybRlzo0tZWJjNiuSfb4p4fAkd_wWJcyQoTbji9k0l8W26mPddxHmfHQp-Vaw-4qPCJrcS2mJPMEzP1Pt0Bm4d4QlL-yRT-SFd2lZS-pCgNMsD1W_YpRPEwOWvG6b32690r2jZ47soMZo9wGzjb_7OMg0LOL-bSf63kpaSHSXndS5z5rexMdbBYUsLA9e-KXBdQOS-UTo7WTBEMa2R2CapHg665xsmtdVMTBQY4uDZlxvb3qCo5ZwKh9kG4LT6_I5IhlJH7aGhyxXFvUK-DWNmoudF8NAco9_h9iaGNj8q2ethFkMLs91kzk2PAcDTW9gb54h4FRWyuXpoQ";
const RFC7515_A2: &str = "eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ.cC4hiUPoj9Eetdgtv3hF80EGrhuB__dzERat0XF9g2VtQgr9PJbu3XOiZj5RZmh7AAuHIm4Bh-0Qc_lF5YKt_O8W2Fp5jujGbds9uJdbF9CUAr7t1dnZcAcQjbKBYNX4BAynRFdiuB--f_nZLgrnbyTyWzO75vRK5h6xBArLIARNPvkSjtQBMHlb1L07Qe7K0GarZRmB_eSN9383LcOLn6_dO--xi12jzDwusC-eOkHWEsqtFZESc6BfI7noOPqvhJ1phCnvWh6IeYI2w9QOYEUipUTI8np6LbgGY9Fs98rqVt5AXLIhWkWywlVmtVrBp0igcN_IoypGlUPQGe77Rw";
/// RFC 7515 A.3: ES256 with this P-256 public key.
const RFC7515_A3_X: &str = "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU";
const RFC7515_A3_Y: &str = "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0";
const RFC7515_A3: &str = "eyJhbGciOiJFUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ.DtEhU3ljbEg8L38VWAfUAqOyKAM6-Xx-F4GawxaepmXFCgfTjDxw5djxLa8ISlSApmWQxfKTUJqPP3-Kg6NU1Q";
/// The `exp` of every RFC 7515 Appendix A example (2011-03-22).
const RFC7515_EXP: u64 = 1_300_819_380;

/// A validator for the RFC's issuer `joe` (its examples carry no `aud`), with `keys`.
fn rfc_validator(keys: Vec<JwtKeyConfig>) -> JwtValidator {
    let mut config = JwtIssuerConfig::new("joe");
    config.require_audience = false;
    config.keys = keys;
    JwtValidator::new(vec![config]).unwrap()
}

/// The same token with one signature character changed.
fn flip_signature(token: &str) -> String {
    let (message, sig) = token.rsplit_once('.').unwrap();
    let mut sig: Vec<u8> = sig.bytes().collect();
    sig[5] = if sig[5] == b'A' { b'B' } else { b'A' };
    format!("{message}.{}", String::from_utf8(sig).unwrap())
}

/// Each RFC 7515 Appendix A example verifies with its key on a clock before its `exp`; past
/// `exp` + leeway the same token is `Expired` (its signature checked first), and a changed
/// signature is `BadSignature`. The expiry is not skipped for an old vector: the clock is the
/// validator's `now` argument.
#[test]
fn rfc7515_appendix_a_vectors_verify() {
    let secret = URL_SAFE_NO_PAD.decode(RFC7515_A1_KEY).unwrap();
    let jwks = format!(
        r#"{{"keys":[
            {{"kty":"RSA","n":"{RFC7515_A2_N}","e":"AQAB"}},
            {{"kty":"EC","crv":"P-256","x":"{RFC7515_A3_X}","y":"{RFC7515_A3_Y}"}}
        ]}}"#
    );
    for (what, keys, token) in [
        (
            "A.1 HS256",
            vec![key(
                None,
                JwtAlg::HS256,
                JwtKeySource::secret(secret.clone()),
            )],
            RFC7515_A1,
        ),
        (
            "A.2 RS256",
            vec![key(
                None,
                JwtAlg::RS256,
                JwtKeySource::jwks(jwks.clone().into_bytes()),
            )],
            RFC7515_A2,
        ),
        (
            "A.3 ES256",
            vec![key(
                None,
                JwtAlg::ES256,
                JwtKeySource::jwks(jwks.clone().into_bytes()),
            )],
            RFC7515_A3,
        ),
    ] {
        let v = rfc_validator(keys);
        let principal = v.validate(token, RFC7515_EXP - 100);
        assert!(principal.is_ok(), "{what}: {principal:?}");
        assert_eq!(
            v.validate(token, RFC7515_EXP + DEFAULT_LEEWAY_SECS),
            Err(JwtError::Expired),
            "{what}"
        );
        assert_eq!(
            v.validate(&flip_signature(token), RFC7515_EXP - 100),
            Err(JwtError::BadSignature),
            "{what}"
        );
    }
    // A.4 is ES512 (P-521), which Sluice does not verify (nor does its config accept it):
    // its header and payload with a stand-in signature are refused at the header.
    let v = rfc_validator(vec![key(None, JwtAlg::HS256, JwtKeySource::secret(secret))]);
    assert_eq!(
        v.validate(
            "eyJhbGciOiJFUzUxMiJ9.UGF5bG9hZA.AdwMgeerwtHoh",
            RFC7515_EXP - 100
        ),
        Err(JwtError::UnsupportedAlgorithm)
    );
}

const OPENSSL_TOKENS: &str = include_str!("../../../../tests/data/jwt/tokens.txt");
const OPENSSL_RSA_PEM: &[u8] = include_bytes!("../../../../tests/data/jwt/rsa_public.pem");
const OPENSSL_ES256_PEM: &[u8] = include_bytes!("../../../../tests/data/jwt/es256_public.pem");
const OPENSSL_ES384_PEM: &[u8] = include_bytes!("../../../../tests/data/jwt/es384_public.pem");
const OPENSSL_ISS: &str = "https://issuer.test/tenant/v2.0";

/// The OpenSSL-signed token of `alg` for `case` (`valid`, `expired`, `wrong_aud`).
fn openssl_token(alg: &str, case: &str) -> &'static str {
    OPENSSL_TOKENS
        .lines()
        .find_map(|line| {
            let mut parts = line.split(' ');
            (parts.next() == Some(alg) && parts.next() == Some(case))
                .then(|| parts.next())
                .flatten()
        })
        .unwrap_or_else(|| panic!("no {alg} {case} token in tokens.txt"))
}

/// The P-384 test key as a JWK.
fn es384_jwk() -> String {
    use p384::elliptic_curve::sec1::ToEncodedPoint as _;
    use p384::pkcs8::DecodePublicKey as _;
    let key = p384::PublicKey::from_public_key_pem(std::str::from_utf8(OPENSSL_ES384_PEM).unwrap())
        .unwrap();
    let point = key.to_encoded_point(false);
    format!(
        r#"{{"kty":"EC","crv":"P-384","kid":"ec384","x":"{}","y":"{}"}}"#,
        b64(point.x().unwrap()),
        b64(point.y().unwrap())
    )
}

/// Every algorithm the config accepts verifies a token OpenSSL signed (RS384/512 and PS256
/// with the RSA key from PEM and from a JWKS, ES384 with a P-384 key from PEM and from a
/// JWKS, HS384/512 with secrets of 48 and 64 bytes or more); each is `Expired` past its `exp`
/// and refused for another audience.
#[test]
fn tokens_signed_by_openssl_verify_for_every_algorithm() {
    let secret = |alg: &str| -> Vec<u8> {
        match alg {
            "HS256" => b"hs256-secret-of-at-least-32-bytes-long!".to_vec(),
            "HS384" => b"hs384-secret-of-at-least-48-bytes-long-for-sha-384!!".to_vec(),
            _ => b"hs512-secret-of-at-least-64-bytes-long-for-sha-512, so it is long.".to_vec(),
        }
    };
    let rsa_jwks = {
        use rsa::pkcs8::DecodePublicKey as _;
        use rsa::traits::PublicKeyParts as _;
        let k =
            rsa::RsaPublicKey::from_public_key_pem(std::str::from_utf8(OPENSSL_RSA_PEM).unwrap())
                .unwrap();
        format!(
            r#"{{"keys":[{{"kty":"RSA","kid":"rsa","n":"{}","e":"{}"}},{}]}}"#,
            b64(&k.n().to_bytes_be()),
            b64(&k.e().to_bytes_be()),
            es384_jwk()
        )
    };
    let pem_or_jwks = |kid: &str, pem: &[u8], alg: JwtAlg, from_jwks: bool| {
        if from_jwks {
            key(None, alg, JwtKeySource::jwks(rsa_jwks.clone().into_bytes()))
        } else {
            key(Some(kid), alg, JwtKeySource::pem(pem.to_vec()))
        }
    };
    for name in [
        "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "ES256", "ES384",
    ] {
        let alg = JwtAlg::from_name(name).unwrap();
        for from_jwks in [false, true] {
            let k = match name {
                "HS256" | "HS384" | "HS512" => key(None, alg, JwtKeySource::secret(secret(name))),
                "ES256" if from_jwks => continue,
                "ES256" => pem_or_jwks("ec256", OPENSSL_ES256_PEM, alg, false),
                "ES384" => pem_or_jwks("ec384", OPENSSL_ES384_PEM, alg, from_jwks),
                _ => pem_or_jwks("rsa", OPENSSL_RSA_PEM, alg, from_jwks),
            };
            let mut config = JwtIssuerConfig::new(OPENSSL_ISS);
            config.audiences = vec![AUD.into()];
            config.keys = vec![k];
            let v = JwtValidator::new(vec![config]).unwrap();
            let what = format!("{name} (from a JWKS: {from_jwks})");
            let valid = openssl_token(name, "valid");
            assert!(
                v.validate(valid, NOW).is_ok(),
                "{what}: {:?}",
                v.validate(valid, NOW)
            );
            assert_eq!(
                v.validate(&flip_signature(valid), NOW),
                Err(JwtError::BadSignature),
                "{what}"
            );
            assert_eq!(
                v.validate(openssl_token(name, "expired"), NOW),
                Err(JwtError::Expired),
                "{what}"
            );
            assert_eq!(
                v.validate(openssl_token(name, "wrong_aud"), NOW),
                Err(JwtError::WrongAudience),
                "{what}"
            );
        }
    }
}

/// A key verifies only the algorithms it is pinned to: an RS384 token against a key pinned
/// to RS256 alone is refused before any crypto, and a PS256 signature relabelled RS256 fails.
#[test]
fn rsa_algorithms_are_not_interchangeable() {
    let mut config = JwtIssuerConfig::new(OPENSSL_ISS);
    config.audiences = vec![AUD.into()];
    config.keys = vec![key(
        Some("rsa"),
        JwtAlg::RS256,
        JwtKeySource::pem(OPENSSL_RSA_PEM.to_vec()),
    )];
    let v = JwtValidator::new(vec![config]).unwrap();
    assert_eq!(
        v.validate(openssl_token("RS384", "valid"), NOW),
        Err(JwtError::AlgorithmNotAllowed)
    );
    let ps = openssl_token("PS256", "valid");
    let (_, rest) = ps.split_once('.').unwrap();
    let relabelled = format!(
        "{}.{rest}",
        b64(br#"{"alg": "RS256", "typ": "JWT", "kid": "rsa"}"#)
    );
    assert_eq!(v.validate(&relabelled, NOW), Err(JwtError::BadSignature));
}

/// HS384 and HS512 never verify with a secret shorter than their hash (RFC 7518 §3.2).
#[test]
fn short_hmac_secrets_do_not_verify_longer_hashes() {
    let secret = b"hs384-secret-of-at-least-48-bytes-long-for-sha-384!!".to_vec();
    assert!(secret.len() >= 48 && secret.len() < 64);
    let config = |algs: Vec<JwtAlg>| {
        let mut c = JwtIssuerConfig::new(OPENSSL_ISS);
        c.audiences = vec![AUD.into()];
        c.keys = vec![JwtKeyConfig {
            kid: None,
            algorithms: algs,
            source: JwtKeySource::secret(secret.clone()),
        }];
        c
    };
    assert!(JwtValidator::new(vec![config(vec![JwtAlg::HS512])]).is_err());
    let v = JwtValidator::new(vec![config(vec![JwtAlg::HS384, JwtAlg::HS512])]).unwrap();
    assert!(v.validate(openssl_token("HS384", "valid"), NOW).is_ok());
    let hs512 = openssl_token("HS512", "valid");
    assert_eq!(v.validate(hs512, NOW), Err(JwtError::AlgorithmNotAllowed));
}

/// A validator built for the next snapshot takes over the JWKS cache and refresh thread of
/// an unchanged URL: its tokens pass at once with no new fetch, and the thread outlives the
/// old validator. A URL configured differently (another pin) starts empty.
#[test]
fn carry_over_keeps_fetched_keys_and_the_refresher_of_an_unchanged_url() {
    let server = JwksServer::start(jwks(&[rsa_jwk("k1")]));
    let old = remote_validator(&server.url, JwksSettings::default());
    old.spawn_refreshers().unwrap();
    let cache = old.jwks_caches().next().unwrap().clone();
    assert!(wait_for(|| cache.fetch_count() == 1), "first fetch");

    let mut next = remote_validator(&server.url, JwksSettings::default());
    assert_eq!(
        next.validate(&rs_kid("k1"), NOW),
        Err(JwtError::KeysUnavailable),
        "a fresh validator starts empty"
    );
    assert_eq!(next.carry_over(&old), 1);
    assert!(Arc::ptr_eq(next.jwks_caches().next().unwrap(), &cache));
    assert!(next.validate(&rs_kid("k1"), NOW).is_ok());
    // Its refresher is the old one's: starting refreshers starts no second thread.
    next.spawn_refreshers().unwrap();
    drop(old);
    // The thread still runs for `next`: an unknown kid makes it refetch.
    server.set_body(jwks(&[rsa_jwk("k1"), rsa_jwk("k2")]));
    assert_eq!(next.validate(&rs_kid("k2"), NOW), Err(JwtError::UnknownKid));
    assert!(
        wait_for(|| cache.fetch_count() == 2),
        "refetch after the old validator dropped"
    );
    assert_eq!(server.hits(), 2, "one thread, not two");
    assert!(next.validate(&rs_kid("k2"), NOW).is_ok());

    // Another pin is another source: nothing carried.
    let mut other = JwtValidator::new(vec![issuer(vec![JwtKeyConfig {
        kid: None,
        algorithms: vec![JwtAlg::RS256],
        source: JwtKeySource::jwks_url(server.url.clone()),
    }])])
    .unwrap();
    assert_eq!(other.carry_over(&next), 0);
    assert_eq!(
        other.validate(&rs_kid("k1"), NOW),
        Err(JwtError::KeysUnavailable)
    );
}
