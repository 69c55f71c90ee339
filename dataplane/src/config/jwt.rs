//! JWT issuers: each `[[jwt]]` (issuer, audiences, subscription claim, leeway, required
//! registered and custom claims) and its keys — a PEM public key file, an HMAC secret from the
//! environment, a JWKS file or a JWKS URL — with pinned algorithms. Key material is read
//! through the injected reader and parsed with the validator's own code, so a key it could not
//! use is a located config error. The result is the validator's own
//! [`JwtIssuerConfig`]: the snapshot holds it and the runtime compiles it as it is.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use toml::Spanned;

use super::check::{
    check_not_empty, line_of, parse_duration, read_config_file, resolve_path, EnvLookup, ReadFile,
};
use super::error::Reporter;
use super::schema::{JwtKeyEntry, JwtSection, SpannedList};
use crate::auth::jwks::JwksSettings;
use crate::auth::jwt::DEFAULT_LEEWAY_SECS;
use crate::http::url::parse_http_url;
use crate::snapshot::access::{
    JwtAlg, JwtIssuerConfig, JwtKeyConfig, JwtKeySource, RequiredClaim, SubscriptionId,
    SubscriptionMapping,
};

/// What every issuer of a file shares: the claim-value table of the subscriptions'
/// `jwt_claim_values`, and the claims `claim:` limit scopes count by (each issuer reports
/// them in its principals).
pub(super) struct IssuerCommon<'a> {
    pub(super) claim_values: &'a Arc<HashMap<String, SubscriptionId>>,
    pub(super) scope_claims: &'a [String],
}

/// Which registered claims a token must carry: `require` in a `[[jwt]]`.
struct Require {
    exp: bool,
    aud: bool,
    iss: bool,
    nbf: bool,
}

/// The leeway when `leeway` is not given.
const DEFAULT_LEEWAY: Duration = Duration::from_secs(DEFAULT_LEEWAY_SECS);

pub(super) fn compile_jwt(
    section: &Spanned<JwtSection>,
    field: &str,
    source: &Path,
    report: &mut Reporter<'_>,
    env: EnvLookup<'_>,
    read: ReadFile<'_>,
    common: &IssuerCommon<'_>,
) -> JwtIssuerConfig {
    let j = section.get_ref();
    check_not_empty(report, &j.issuer, &format!("{field}.issuer"));
    check_not_empty(
        report,
        &j.subscription_claim,
        &format!("{field}.subscription_claim"),
    );

    let audiences = non_empty_strings(&j.audiences, &format!("{field}.audiences"), report);

    let leeway = match &j.leeway {
        None => DEFAULT_LEEWAY,
        Some(v) => parse_duration(v.get_ref()).unwrap_or_else(|message| {
            report.at(v.span(), format!("{field}.leeway"), message);
            DEFAULT_LEEWAY
        }),
    };

    let require = match &j.require {
        // The default: `exp`, `aud` and `iss`; `nbf` checked when present.
        None => Require {
            exp: true,
            aud: true,
            iss: true,
            nbf: false,
        },
        Some(list) => {
            let mut require = Require {
                exp: false,
                aud: false,
                iss: false,
                nbf: false,
            };
            for (k, item) in list.get_ref().iter().enumerate() {
                let slot = match item.get_ref().as_str() {
                    "exp" => &mut require.exp,
                    "aud" => &mut require.aud,
                    "iss" => &mut require.iss,
                    "nbf" => &mut require.nbf,
                    other => {
                        report.at(
                            item.span(),
                            format!("{field}.require[{k}]"),
                            format!(
                                "unknown claim `{other}`: expected \"exp\", \"aud\", \"iss\" or \"nbf\" (other claims go in `required_claims`)"
                            ),
                        );
                        continue;
                    }
                };
                if *slot {
                    report.at(
                        item.span(),
                        format!("{field}.require[{k}]"),
                        format!("`{}` is listed twice", item.get_ref()),
                    );
                }
                *slot = true;
            }
            require
        }
    };
    if require.aud && audiences.is_empty() {
        let span = j.audiences.as_ref().map_or(section.span(), Spanned::span);
        report.at(
            span,
            format!("{field}.audiences"),
            "missing: list the accepted `aud` values, e.g. [\"api://sluice\"], or remove \"aud\" from `require`",
        );
    }

    let mut required_claims: Vec<(usize, RequiredClaim)> = Vec::new();
    for (name, values) in j.required_claims.iter().flatten() {
        let claim_field = format!("{field}.required_claims.{}", name.get_ref());
        check_not_empty(report, name, &claim_field);
        let values = non_empty_strings(&Some(values.clone()), &claim_field, report);
        required_claims.push((
            name.span().start,
            RequiredClaim {
                name: name.get_ref().clone(),
                values,
            },
        ));
    }
    required_claims.sort_by_key(|(start, _)| *start);

    let mut keys = Vec::new();
    match &j.keys {
        None => report.at(
            section.span(),
            format!("{field}.keys"),
            "missing: a [[jwt]] needs at least one key, e.g. keys = [{ jwks_url = \"http://127.0.0.1:9999/keys\", algorithms = [\"RS256\"] }]",
        ),
        Some(list) if list.get_ref().is_empty() => report.at(
            list.span(),
            format!("{field}.keys"),
            "a [[jwt]] needs at least one key",
        ),
        Some(list) => {
            let mut kids: HashMap<&str, usize> = HashMap::new();
            for (k, entry) in list.get_ref().iter().enumerate() {
                let key_field = format!("{field}.keys[{k}]");
                if let Some(kid) = &entry.get_ref().kid {
                    if let Some(&line) = kids.get(kid.get_ref().as_str()) {
                        report.at(
                            kid.span(),
                            format!("{key_field}.kid"),
                            format!(
                                "kid `{}` is already used by this issuer's key on line {line}",
                                kid.get_ref()
                            ),
                        );
                    } else {
                        kids.insert(kid.get_ref(), line_of(report, kid));
                    }
                }
                if let Some(key) = compile_jwt_key(entry, &key_field, source, report, env, read)
                {
                    keys.push(key);
                }
            }
        }
    }

    JwtIssuerConfig {
        name: j.name.get_ref().clone(),
        issuer: j.issuer.get_ref().clone(),
        audiences,
        keys,
        leeway,
        require_expiration: require.exp,
        require_audience: require.aud,
        require_not_before: require.nbf,
        require_issuer: require.iss,
        required_claims: required_claims.into_iter().map(|(_, c)| c).collect(),
        subscription: Some(SubscriptionMapping {
            claim: j.subscription_claim.get_ref().clone(),
            values: Arc::clone(common.claim_values),
            default: None,
        }),
        scope_claims: common.scope_claims.to_vec(),
    }
}

/// A list of strings none of which may be empty (absent: none).
fn non_empty_strings(
    list: &Option<SpannedList<String>>,
    field: &str,
    report: &mut Reporter<'_>,
) -> Vec<String> {
    let Some(list) = list else {
        return Vec::new();
    };
    list.get_ref()
        .iter()
        .enumerate()
        .filter(|(k, item)| check_not_empty(report, item, &format!("{field}[{k}]")))
        .map(|(_, item)| item.get_ref().clone())
        .collect()
}

/// The names of a key's four sources, in the order the reference lists them.
const KEY_SOURCES: &str = "`public_key_file`, `secret_env`, `jwks_file` or `jwks_url`";

fn compile_jwt_key(
    entry: &Spanned<JwtKeyEntry>,
    field: &str,
    source: &Path,
    report: &mut Reporter<'_>,
    env: EnvLookup<'_>,
    read: ReadFile<'_>,
) -> Option<JwtKeyConfig> {
    let e = entry.get_ref();
    let present: Vec<(&str, &Spanned<String>)> = [
        ("public_key_file", &e.public_key_file),
        ("secret_env", &e.secret_env),
        ("jwks_file", &e.jwks_file),
        ("jwks_url", &e.jwks_url),
    ]
    .into_iter()
    .filter_map(|(name, value)| value.as_ref().map(|v| (name, v)))
    .collect();
    let (kind, value) = match present.as_slice() {
        [] => {
            report.at(
                entry.span(),
                field,
                format!("missing: a key needs one of {KEY_SOURCES}"),
            );
            return None;
        }
        [one] => *one,
        [first, rest @ ..] => {
            for (name, value) in rest {
                report.at(
                    value.span(),
                    format!("{field}.{name}"),
                    format!(
                        "give one of {KEY_SOURCES} per key, not both `{}` and `{name}`",
                        first.0
                    ),
                );
            }
            return None;
        }
    };
    let mut fine = true;

    let algorithms = algorithms(entry, field, kind, report);
    fine &= algorithms.is_some();

    let is_jwks = matches!(kind, "jwks_file" | "jwks_url");
    let kid = match &e.kid {
        Some(kid) if is_jwks => {
            report.at(
                kid.span(),
                format!("{field}.kid"),
                "`kid` does not apply to a JWKS: its keys carry their own",
            );
            fine = false;
            None
        }
        Some(kid) => {
            fine &= check_not_empty(report, kid, &format!("{field}.kid"));
            Some(kid.get_ref().clone())
        }
        None => None,
    };

    let default_refresh = JwksSettings::default().refresh_every;
    let refresh = match &e.refresh {
        None => default_refresh,
        Some(v) if kind != "jwks_url" => {
            report.at(
                v.span(),
                format!("{field}.refresh"),
                "`refresh` applies only to a `jwks_url` key",
            );
            fine = false;
            default_refresh
        }
        Some(v) => match parse_duration(v.get_ref()) {
            Ok(d) if d < Duration::from_secs(1) => {
                report.at(v.span(), format!("{field}.refresh"), "must be at least 1s");
                fine = false;
                d
            }
            Ok(d) => d,
            Err(message) => {
                report.at(v.span(), format!("{field}.refresh"), message);
                fine = false;
                default_refresh
            }
        },
    };

    let value_field = format!("{field}.{kind}");
    if !check_not_empty(report, value, &value_field) {
        return None;
    }
    let text = value.get_ref();
    let source = match kind {
        "public_key_file" => {
            let path = resolve_path(source, text);
            let pem = read_config_file(&path, value, &value_field, report, read)?;
            if let Err(message) = check_pem(&pem) {
                report.at(value.span(), value_field, format!("`{text}` {message}"));
                return None;
            }
            JwtKeySource::Pem {
                path: Some(path),
                pem: pem.into_bytes(),
            }
        }
        "jwks_file" => {
            let path = resolve_path(source, text);
            let json = read_config_file(&path, value, &value_field, report, read)?;
            if let Err(message) = check_jwks(&json) {
                report.at(value.span(), value_field, format!("`{text}` {message}"));
                return None;
            }
            JwtKeySource::Jwks {
                path: Some(path),
                json: json.into_bytes(),
            }
        }
        "jwks_url" => {
            if let Err(message) = parse_http_url(text) {
                report.at(value.span(), value_field, message);
                return None;
            }
            // Each URL its own schedule: `refresh` is written on the key.
            JwtKeySource::JwksUrl {
                url: text.clone(),
                settings: JwksSettings {
                    refresh_every: refresh,
                    ..JwksSettings::default()
                },
            }
        }
        _ => {
            let secret = match env(text) {
                Some(secret) if !secret.is_empty() => secret,
                Some(_) => {
                    report.on_host(
                        value.span(),
                        value_field,
                        format!("environment variable `{text}` is empty"),
                    );
                    return None;
                }
                None => {
                    report.on_host(
                        value.span(),
                        value_field,
                        format!("environment variable `{text}` is not set"),
                    );
                    return None;
                }
            };
            let needed = algorithms
                .iter()
                .flatten()
                .max_by_key(|a| a.min_secret_len());
            if let Some(&alg) = needed {
                let min = alg.min_secret_len();
                if secret.len() < min {
                    report.at(
                        value.span(),
                        value_field,
                        format!(
                            "environment variable `{text}` holds {} bytes; {} needs a secret of at least {min} bytes",
                            secret.len(),
                            alg.name()
                        ),
                    );
                    return None;
                }
            }
            JwtKeySource::Secret {
                env: Some(text.clone()),
                secret: secret.into_bytes(),
            }
        }
    };
    let algorithms = algorithms?;
    if fine {
        if let Err(message) = verify_key(kid.as_deref(), &algorithms, &source) {
            report.at(value.span(), value_field, format!("`{text}`: {message}"));
            return None;
        }
    }
    Some(JwtKeyConfig {
        kid,
        algorithms,
        source,
    })
    .filter(|_| fine)
}

/// Builds the key the way the JWT validator will (PEM and JWKS parsed, key sizes and kinds
/// checked against the pinned algorithms, a JWKS URL parsed), so a key that cannot verify
/// anything is a located config error here rather than a failure when the runtime is built.
fn verify_key(
    kid: Option<&str>,
    algorithms: &[JwtAlg],
    source: &JwtKeySource,
) -> Result<(), String> {
    use crate::auth::jwks::{parse_jwks, JwksCache, KeyKind, VerifyKey};
    use crate::auth::jwt::AlgSet;
    let pin = AlgSet::from_algs(algorithms);
    let kid = kid.map(str::to_string);
    let checked = match source {
        JwtKeySource::Pem { pem, .. } => VerifyKey::from_pem(kid, pem, pin).map(drop),
        JwtKeySource::Secret { secret, .. } => VerifyKey::hmac(kid, secret, pin).map(drop),
        JwtKeySource::Jwks { json, .. } => parse_jwks(json, pin).map(drop),
        JwtKeySource::JwksUrl { url, settings } => {
            JwksCache::new(url, pin.intersect(KeyKind::PUBLIC_ALGS), *settings).map(drop)
        }
        // The compiler reads files and variables itself and never gives these.
        JwtKeySource::SecretEnv(_) | JwtKeySource::PemFile(_) | JwtKeySource::JwksFile(_) => Ok(()),
    };
    checked.map_err(|e| e.to_string())
}

/// The key's `algorithms`, each known, listed once and fitting the key's source: HS* with a
/// secret only, and never with a public key or a JWKS (the algorithm-confusion guard).
fn algorithms(
    entry: &Spanned<JwtKeyEntry>,
    field: &str,
    kind: &str,
    report: &mut Reporter<'_>,
) -> Option<Vec<JwtAlg>> {
    let field = format!("{field}.algorithms");
    let Some(list) = &entry.get_ref().algorithms else {
        report.at(
            entry.span(),
            field,
            "missing: pin the algorithms this key may verify, e.g. algorithms = [\"RS256\"]",
        );
        return None;
    };
    if list.get_ref().is_empty() {
        report.at(list.span(), field, "list at least one algorithm");
        return None;
    }
    let mut fine = true;
    let mut algs: Vec<JwtAlg> = Vec::new();
    for (k, item) in list.get_ref().iter().enumerate() {
        let item_field = format!("{field}[{k}]");
        let name = item.get_ref();
        let Some(alg) = JwtAlg::from_name(name) else {
            let message = if name.eq_ignore_ascii_case("none") {
                "unsigned tokens (`none`) are never accepted".to_string()
            } else {
                format!(
                    "unknown algorithm `{name}`: expected one of {}",
                    JwtAlg::ALL.map(JwtAlg::name).join(", ")
                )
            };
            report.at(item.span(), item_field, message);
            fine = false;
            continue;
        };
        let misfit = if kind == "secret_env" {
            (!alg.is_hmac()).then(|| {
                format!(
                    "`{name}` verifies with a public key; a `secret_env` key takes only HS256, HS384 or HS512"
                )
            })
        } else if alg.is_hmac() {
            Some(format!(
                "`{name}` verifies with a shared secret (`secret_env`), never with a public key or JWKS (that would allow algorithm confusion)"
            ))
        } else if kind == "public_key_file"
            && algs
                .iter()
                .any(|a| a.is_rsa() != alg.is_rsa() || (!alg.is_rsa() && *a != alg))
        {
            Some(
                "one PEM key is either RSA (RS256, RS384, RS512, PS256) or one EC curve (ES256 or ES384): declare another key for the other"
                    .to_string(),
            )
        } else {
            None
        };
        if let Some(message) = misfit {
            report.at(item.span(), item_field, message);
            fine = false;
        } else if algs.contains(&alg) {
            report.at(item.span(), item_field, format!("`{name}` is listed twice"));
            fine = false;
        } else {
            algs.push(alg);
        }
    }
    fine.then_some(algs)
}

/// Checks that PEM text holds a public key and nothing private. (The key itself is parsed
/// when the validator is built.)
fn check_pem(pem: &str) -> Result<(), &'static str> {
    if !pem.contains("-----BEGIN ") {
        Err("is not a PEM file (no -----BEGIN line)")
    } else if pem.contains("PRIVATE KEY-----") {
        Err("holds a private key: give the public key only (e.g. `openssl pkey -pubout`)")
    } else if pem.contains("-----BEGIN CERTIFICATE-----") {
        Err("holds a certificate: give its public key (`openssl x509 -pubkey -noout`)")
    } else if !pem.contains("-----BEGIN PUBLIC KEY-----")
        && !pem.contains("-----BEGIN RSA PUBLIC KEY-----")
    {
        Err("holds no public key (expected -----BEGIN PUBLIC KEY-----)")
    } else {
        Ok(())
    }
}

/// Checks that JSON text is a JWKS: an object with a non-empty `keys` array of objects,
/// none of them carrying private material (`d`).
fn check_jwks(json: &str) -> Result<(), String> {
    let value: serde_json::Value =
        serde_json::from_str(json).map_err(|e| format!("is not JSON: {e}"))?;
    let keys = value
        .get("keys")
        .and_then(|k| k.as_array())
        .filter(|k| !k.is_empty() && k.iter().all(|key| key.is_object()))
        .ok_or("is not a JWKS: expected an object with a non-empty `keys` array of keys")?;
    if keys.iter().any(|key| key.get("d").is_some()) {
        return Err("holds a private key (a `d` member): publish public keys only".to_string());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_and_jwks_texts_are_checked_lightly() {
        assert!(check_pem("-----BEGIN PUBLIC KEY-----\nMFkw\n-----END PUBLIC KEY-----\n").is_ok());
        assert!(check_pem("-----BEGIN RSA PUBLIC KEY-----\nx\n").is_ok());
        assert!(check_pem("hello").unwrap_err().contains("not a PEM"));
        assert!(check_pem("-----BEGIN PRIVATE KEY-----\n")
            .unwrap_err()
            .contains("private"));
        assert!(check_pem("-----BEGIN EC PRIVATE KEY-----\n")
            .unwrap_err()
            .contains("private"));
        assert!(check_pem("-----BEGIN CERTIFICATE-----\n")
            .unwrap_err()
            .contains("certificate"));
        assert!(check_jwks(r#"{"keys":[{"kty":"RSA","n":"x","e":"AQAB"}]}"#).is_ok());
        assert!(check_jwks("{").unwrap_err().starts_with("is not JSON"));
        assert!(check_jwks(r#"{"keys":[]}"#)
            .unwrap_err()
            .contains("non-empty"));
        assert!(check_jwks(r#"[1]"#).unwrap_err().contains("non-empty"));
        assert!(check_jwks(r#"{"keys":[{"kty":"EC","d":"secret"}]}"#)
            .unwrap_err()
            .contains("private"));
    }
}
