//! Whole-process tests of JWT access: an HS256 issuer whose secret comes from an environment
//! variable of the gateway process; tokens signed here, mapped by `subscription_claim` to a
//! subscription. Valid tokens pass with that subscription's product; expired, wrong-audience,
//! `alg: none`, tampered and wrongly signed tokens get 401.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use support::*;

const SECRET_ENV: &str = "SLUICE_TEST_JWT_SECRET";
const SECRET: &str = "a-test-secret-of-more-than-32-bytes-for-hs256!";
const ISSUER: &str = "https://issuer.test/tenant/v2.0";
const AUDIENCE: &str = "api://sluice";
const APP: &str = "11111111-2222-3333-4444-555555555555";
const KEY_A: &str = "test-key-jwt-config-team-a";

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// `header.claims.signature` with HS256 over the first two parts with `secret`.
fn sign(header: &Value, claims: &Value, secret: &[u8]) -> String {
    let signing_input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
    mac.update(signing_input.as_bytes());
    let sig = mac.finalize().into_bytes();
    format!("{signing_input}.{}", b64(&sig))
}

fn hs_header() -> Value {
    json!({"alg": "HS256", "typ": "JWT", "kid": "hs"})
}

fn good_claims() -> Value {
    let t = now();
    json!({
        "iss": ISSUER,
        "aud": AUDIENCE,
        "appid": APP,
        "iat": t - 10,
        "nbf": t - 10,
        "exp": t + 600,
    })
}

fn valid_token() -> String {
    sign(&hs_header(), &good_claims(), SECRET.as_bytes())
}

/// The `jwt-app` subscription (product `narrow`: gpt-4o only, 2 requests a minute) is
/// reached by tokens whose `appid` is APP; `team-a` (a key) has product `open`.
fn start() -> Sluice {
    start_with("")
}

/// [`start`] with more lines in the `[[jwt]]` table.
fn start_with(jwt_extra: &str) -> Sluice {
    let mut body = String::from(MOCK_DEPLOYMENTS);
    body.push_str(&product(
        "narrow",
        r#"deployments = ["gpt-4o"]
limits = [{ unit = "requests", rate = 2, per = "minute" }]"#,
    ));
    body.push_str(&product("open", ""));
    body.push_str(&format!(
        "\n[[subscription]]\nname = \"jwt-app\"\nproduct = \"narrow\"\n\
         jwt_claim_values = [\"{APP}\"]\n"
    ));
    body.push_str(&subscription("team-a", "open", &[KEY_A]));
    body.push_str(&format!(
        r#"
[[jwt]]
name = "test-issuer"
issuer = "{ISSUER}"
audiences = ["{AUDIENCE}"]
subscription_claim = "appid"
keys = [{{ kid = "hs", algorithms = ["HS256"], secret_env = "{SECRET_ENV}" }}]
{jwt_extra}
"#
    ));
    Launch::new(&body).env(SECRET_ENV, SECRET).start()
}

/// `require` reaches the validator: with "nbf" added, a token without `nbf` is refused;
/// with "iss" left out (one issuer), a token without `iss` is let in.
#[test]
fn the_config_s_require_list_is_enforced() {
    let mut no_nbf = good_claims();
    no_nbf.as_object_mut().unwrap().remove("nbf");
    let no_nbf = sign(&hs_header(), &no_nbf, SECRET.as_bytes());
    let mut no_iss = good_claims();
    no_iss.as_object_mut().unwrap().remove("iss");
    let no_iss = sign(&hs_header(), &no_iss, SECRET.as_bytes());

    let s = start();
    assert_eq!(chat_with_token(&s, &no_nbf, "gpt-4o").status, 200);
    assert_401(
        &chat_with_token(&s, &no_iss, "gpt-4o"),
        "iss required by default",
    );

    let s = start_with(r#"require = ["exp", "aud", "iss", "nbf"]"#);
    assert_401(&chat_with_token(&s, &no_nbf, "gpt-4o"), "nbf required");
    assert_eq!(chat_with_token(&s, &valid_token(), "gpt-4o").status, 200);

    let s = start_with(r#"require = ["exp", "aud"]"#);
    assert_eq!(chat_with_token(&s, &no_iss, "gpt-4o").status, 200);
}

fn chat_with_token(s: &Sluice, token: &str, model: &str) -> Response {
    let bearer = format!("Bearer {token}");
    post_with(
        s,
        "/v1/chat/completions",
        &[("Authorization", bearer.as_str())],
        &chat_body(Some(model), false),
    )
}

/// A JWT refusal: 401 in the OpenAI shape with code `invalid_token` (never
/// `invalid_api_key`, which is for subscription keys).
fn assert_401(resp: &Response, what: &str) {
    assert_eq!(resp.status, 401, "{what}: body {}", resp.text());
    assert_openai_error(resp, 401, Some("invalid_token"));
}

#[test]
fn valid_token_maps_to_its_subscription() {
    let s = start();
    let token = valid_token();
    let resp = chat_with_token(&s, &token, "gpt-4o");
    assert_eq!(resp.status, 200, "body: {}", resp.text());
    assert_eq!(resp.json()["object"], "chat.completion");
    // The subscription's product: its limit applies and its deployment list.
    assert_eq!(num_header(&resp, "x-ratelimit-limit-requests"), 2);
    assert_eq!(num_header(&resp, "x-ratelimit-remaining-requests"), 1);
    let resp = chat_with_token(&s, &token, "other");
    assert_openai_error(&resp, 403, Some("deployment_not_allowed"));
    // Keys still work beside tokens.
    let resp = chat_as(&s, KEY_A, &chat_body(Some("other"), false));
    assert_eq!(resp.status, 200, "body: {}", resp.text());
}

#[test]
fn token_within_the_leeway_passes() {
    let s = start();
    let mut claims = good_claims();
    claims["exp"] = json!(now() - 20);
    let token = sign(&hs_header(), &claims, SECRET.as_bytes());
    let resp = chat_with_token(&s, &token, "gpt-4o");
    assert_eq!(
        resp.status,
        200,
        "expired 20 s ago, leeway 60 s: {}",
        resp.text()
    );
}

#[test]
fn expired_token_is_401() {
    let s = start();
    let mut claims = good_claims();
    claims["exp"] = json!(now() - 3600);
    claims["iat"] = json!(now() - 7200);
    claims["nbf"] = json!(now() - 7200);
    let token = sign(&hs_header(), &claims, SECRET.as_bytes());
    assert_401(
        &chat_with_token(&s, &token, "gpt-4o"),
        "expired an hour ago",
    );
}

#[test]
fn wrong_audience_or_issuer_is_401() {
    let s = start();
    let mut claims = good_claims();
    claims["aud"] = json!("api://someone-else");
    let token = sign(&hs_header(), &claims, SECRET.as_bytes());
    assert_401(&chat_with_token(&s, &token, "gpt-4o"), "wrong aud");

    let mut claims = good_claims();
    claims.as_object_mut().unwrap().remove("aud");
    let token = sign(&hs_header(), &claims, SECRET.as_bytes());
    assert_401(&chat_with_token(&s, &token, "gpt-4o"), "no aud");

    let mut claims = good_claims();
    claims["iss"] = json!("https://issuer.test/other/v2.0");
    let token = sign(&hs_header(), &claims, SECRET.as_bytes());
    assert_401(&chat_with_token(&s, &token, "gpt-4o"), "wrong iss");
}

#[test]
fn alg_none_is_401_in_any_casing() {
    let s = start();
    let claims = good_claims();
    for alg in ["none", "None", "NONE", "nOnE"] {
        let header = json!({"alg": alg, "typ": "JWT", "kid": "hs"});
        let unsigned = format!(
            "{}.{}.",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        assert_401(
            &chat_with_token(&s, &unsigned, "gpt-4o"),
            &format!("alg {alg}, no signature"),
        );
        // With the HMAC signature attached all the same.
        let signed = sign(&header, &claims, SECRET.as_bytes());
        assert_401(
            &chat_with_token(&s, &signed, "gpt-4o"),
            &format!("alg {alg}, signed"),
        );
    }
}

#[test]
fn bad_signatures_are_401() {
    let s = start();
    let claims = good_claims();
    let wrong_secret = sign(
        &hs_header(),
        &claims,
        b"another-secret-of-more-than-32-bytes-long!!",
    );
    assert_401(
        &chat_with_token(&s, &wrong_secret, "gpt-4o"),
        "wrong secret",
    );

    // Claims changed after signing (another appid).
    let token = valid_token();
    let parts: Vec<&str> = token.split('.').collect();
    let mut forged = good_claims();
    forged["appid"] = json!("someone-else");
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        b64(forged.to_string().as_bytes()),
        parts[2]
    );
    assert_401(&chat_with_token(&s, &tampered, "gpt-4o"), "tampered claims");

    // A flipped signature character.
    let mut sig: Vec<char> = parts[2].chars().collect();
    sig[3] = if sig[3] == 'A' { 'B' } else { 'A' };
    let flipped = format!(
        "{}.{}.{}",
        parts[0],
        parts[1],
        sig.iter().collect::<String>()
    );
    assert_401(
        &chat_with_token(&s, &flipped, "gpt-4o"),
        "flipped signature",
    );

    // Garbage with a token's header prefix and three parts: a token, refused as one.
    assert_401(
        &chat_with_token(&s, "eyJhbGciOi.b.c", "gpt-4o"),
        "garbage token",
    );
    // Three parts without a JSON header are not a token's shape: the value is read as a
    // subscription key, and refused as one.
    assert_openai_error(
        &chat_with_token(&s, "a.b.c", "gpt-4o"),
        401,
        Some("invalid_api_key"),
    );
}

#[test]
fn token_for_no_subscription_is_refused() {
    let s = start();
    let mut claims = good_claims();
    claims["appid"] = json!("99999999-0000-0000-0000-000000000000");
    let token = sign(&hs_header(), &claims, SECRET.as_bytes());
    let resp = chat_with_token(&s, &token, "gpt-4o");
    // A token that is valid but names no subscription is no credential for this gateway.
    assert_401(&resp, "a valid token whose appid maps to no subscription");
}

#[test]
fn oversized_token_is_401() {
    let s = start();
    let mut claims = good_claims();
    claims["padding"] = json!("x".repeat(20 * 1024));
    let token = sign(&hs_header(), &claims, SECRET.as_bytes());
    let resp = chat_with_token(&s, &token, "gpt-4o");
    // ~27 KiB of header: within max_head, so the token check refuses it.
    assert_401(&resp, "20 KiB token");
}

/// A limit scoped by a claim other than the subscription claim counts each value apart:
/// two users (`oid`) of one application (`appid` → one subscription) have a request each.
#[test]
fn claim_scoped_limit_counts_each_claim_value_apart() {
    let mut body = String::from(MOCK_DEPLOYMENTS);
    body.push_str(&product(
        "per-user",
        r#"limits = [{ unit = "requests", rate = 1, per = "minute", burst = 1, scope = "claim:oid" }]"#,
    ));
    body.push_str(&format!(
        "\n[[subscription]]\nname = \"jwt-app\"\nproduct = \"per-user\"\n\
         jwt_claim_values = [\"{APP}\"]\n"
    ));
    body.push_str(&format!(
        r#"
[[jwt]]
name = "test-issuer"
issuer = "{ISSUER}"
audiences = ["{AUDIENCE}"]
subscription_claim = "appid"
keys = [{{ kid = "hs", algorithms = ["HS256"], secret_env = "{SECRET_ENV}" }}]
"#
    ));
    let s = Launch::new(&body).env(SECRET_ENV, SECRET).start();
    let token_for = |oid: &str| {
        let mut claims = good_claims();
        claims["oid"] = json!(oid);
        sign(&hs_header(), &claims, SECRET.as_bytes())
    };
    let (alice, bob) = (token_for("alice"), token_for("bob"));
    let resp = chat_with_token(&s, &alice, "gpt-4o");
    assert_eq!(resp.status, 200, "alice's first: {}", resp.text());
    let resp = chat_with_token(&s, &alice, "gpt-4o");
    assert_eq!(resp.status, 429, "alice's second: {}", resp.text());
    assert_openai_error(&resp, 429, Some("rate_limit_exceeded"));
    let resp = chat_with_token(&s, &bob, "gpt-4o");
    assert_eq!(resp.status, 200, "bob's first: {}", resp.text());
    // A token without the claim is not counted by a claim-scoped limit.
    let resp = chat_with_token(&s, &valid_token(), "gpt-4o");
    assert_eq!(resp.status, 200, "no oid: {}", resp.text());
    let resp = chat_with_token(&s, &valid_token(), "gpt-4o");
    assert_eq!(resp.status, 200, "no oid again: {}", resp.text());
}

// ---------------------------------------------------------------------------------------------
// Every algorithm the config accepts, with tokens signed by OpenSSL

/// Tokens signed by the `openssl` CLI (tests/data/jwt/make_tokens.py), not by Sluice's crates:
/// lines of `ALG CASE TOKEN`, CASE one of `valid` (exp 2100), `expired`, `wrong_aud`.
const OPENSSL_TOKENS: &str = include_str!("data/jwt/tokens.txt");
const OPENSSL_APP: &str = "22222222-3333-4444-5555-666666666666";

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

/// A gateway trusting the OpenSSL test keys for all nine algorithms: three HMAC secrets (in
/// environment variables), the RSA key (PEM) for RS256/384/512 and PS256, P-256 and P-384
/// keys (PEM) for ES256 and ES384.
fn start_all_algorithms() -> Sluice {
    let data = workspace_root().join("tests/data/jwt");
    let pem = |name: &str| data.join(name).display().to_string();
    let mut body = String::from(MOCK_DEPLOYMENTS);
    body.push_str(&product("open", ""));
    body.push_str(&format!(
        "\n[[subscription]]\nname = \"openssl-app\"\nproduct = \"open\"\n\
         jwt_claim_values = [\"{OPENSSL_APP}\"]\n"
    ));
    body.push_str(&format!(
        r#"
[[jwt]]
name = "openssl"
issuer = "{ISSUER}"
audiences = ["{AUDIENCE}"]
subscription_claim = "appid"
keys = [
  {{ algorithms = ["HS256"], secret_env = "SLUICE_TEST_HS256" }},
  {{ algorithms = ["HS384"], secret_env = "SLUICE_TEST_HS384" }},
  {{ algorithms = ["HS512"], secret_env = "SLUICE_TEST_HS512" }},
  {{ kid = "rsa", algorithms = ["RS256", "RS384", "RS512", "PS256"], public_key_file = "{}" }},
  {{ kid = "ec256", algorithms = ["ES256"], public_key_file = "{}" }},
  {{ kid = "ec384", algorithms = ["ES384"], public_key_file = "{}" }},
]
"#,
        pem("rsa_public.pem"),
        pem("es256_public.pem"),
        pem("es384_public.pem"),
    ));
    Launch::new(&body)
        .env(
            "SLUICE_TEST_HS256",
            "hs256-secret-of-at-least-32-bytes-long!",
        )
        .env(
            "SLUICE_TEST_HS384",
            "hs384-secret-of-at-least-48-bytes-long-for-sha-384!!",
        )
        .env(
            "SLUICE_TEST_HS512",
            "hs512-secret-of-at-least-64-bytes-long-for-sha-512, so it is long.",
        )
        .start()
}

/// Each of HS256/384/512, RS256/384/512, PS256, ES256/384 passes the gateway with a token
/// OpenSSL signed; the same algorithm's expired, wrong-audience and re-signed tokens are 401
/// `invalid_token`.
#[test]
fn every_configurable_algorithm_validates_an_openssl_token() {
    let s = start_all_algorithms();
    for alg in [
        "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "ES256", "ES384",
    ] {
        let resp = chat_with_token(&s, openssl_token(alg, "valid"), "gpt-4o");
        assert_eq!(resp.status, 200, "{alg}: {}", resp.text());
        assert_eq!(resp.json()["object"], "chat.completion", "{alg}");
        for case in ["expired", "wrong_aud"] {
            assert_401(
                &chat_with_token(&s, openssl_token(alg, case), "gpt-4o"),
                &format!("{alg} {case}"),
            );
        }
        let valid = openssl_token(alg, "valid");
        let (message, sig) = valid.rsplit_once('.').unwrap();
        let mut sig: Vec<char> = sig.chars().collect();
        sig[5] = if sig[5] == 'A' { 'B' } else { 'A' };
        let forged = format!("{message}.{}", sig.into_iter().collect::<String>());
        assert_401(
            &chat_with_token(&s, &forged, "gpt-4o"),
            &format!("{alg} changed signature"),
        );
    }
}

// ---------------------------------------------------------------------------------------
// JWKS URL keys across a config reload

/// A JWKS endpoint on 127.0.0.1 that answers exactly one fetch (the OpenSSL RSA test key,
/// kid `rsa`) and then goes away: its listener is closed, so any later fetch is refused.
/// Returns the URL and the number of fetches answered (read after the thread ended).
fn one_shot_jwks_server() -> (String, std::thread::JoinHandle<usize>) {
    use std::io::{Read, Write};
    let jwks = std::fs::read(workspace_root().join("tests/data/jwt/rsa_jwks.json")).unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/keys", listener.local_addr().unwrap());
    let handle = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        stream
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if stream.read(&mut byte).unwrap() == 0 {
                break;
            }
            head.push(byte[0]);
        }
        assert!(head.starts_with(b"GET /keys "), "{head:?}");
        let answer = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            jwks.len()
        );
        stream.write_all(answer.as_bytes()).unwrap();
        stream.write_all(&jwks).unwrap();
        // The listener drops here: from now on a fetch finds the port closed.
        1
    });
    (url, handle)
}

/// A reload keeps the JWKS keys already fetched for an unchanged `jwks_url`: a token they
/// sign passes right after the reload, with no refetch. The endpoint answered once and is
/// gone, so a reload that started the key set afresh would refuse the token (401, no keys
/// yet) until a fetch that can never succeed.
#[test]
fn jwks_keys_survive_a_reload_without_a_refetch() {
    let (url, server) = one_shot_jwks_server();
    let body = |extra: &str| {
        format!(
            "{MOCK_DEPLOYMENTS}{}\n[[subscription]]\nname = \"openssl-app\"\nproduct = \"open\"\n\
             jwt_claim_values = [\"{OPENSSL_APP}\"]\n\n[[jwt]]\nname = \"remote\"\n\
             issuer = \"{ISSUER}\"\naudiences = [\"{AUDIENCE}\"]\nsubscription_claim = \"appid\"\n\
             keys = [{{ jwks_url = \"{url}\", algorithms = [\"RS256\"] }}]\n{extra}",
            product("open", "")
        )
    };
    let s = Launch::new(&body("")).start();
    let token = openssl_token("RS256", "valid");
    assert!(
        wait_until(std::time::Duration::from_secs(10), || chat_with_token(
            &s, token, "gpt-4o"
        )
        .status
            == 200),
        "the token never passed; log:\n{}",
        s.log()
    );
    assert_eq!(
        server.join().unwrap(),
        1,
        "one fetch, then the endpoint is gone"
    );

    // An unrelated change: another product.
    let reloads = s.log().matches("config reloaded").count();
    s.rewrite_config(&body(&product("spare", "")));
    assert!(
        wait_until(std::time::Duration::from_secs(10), || s
            .log()
            .matches("config reloaded")
            .count()
            > reloads),
        "not reloaded; log:\n{}",
        s.log()
    );
    let resp = chat_with_token(&s, token, "gpt-4o");
    assert_eq!(resp.status, 200, "after the reload: {}", resp.text());
}
