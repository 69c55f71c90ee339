//! Products, subscriptions, JWT issuers, limits and token settings: what a valid file
//! compiles into, and every error with its line, column and field.

use super::*;
use crate::route::Operation;
use crate::snapshot::access::{
    DeploymentSet, Estimator, EstimatorChoice, Family, JwksSettings, JwtAlg, JwtIssuerConfig,
    JwtKeyConfig, JwtKeySource, KeyDigest, KeyEntry, Limit, LimitOwner, LimitScope, LimitUnit,
    LimitWindow, OperationSet, Product, QuotaSpec, QuotaWindow, RateSpec, RequiredClaim,
    Subscription, SubscriptionId, SubscriptionMapping,
};
use crate::snapshot::TokenSettings;

/// The periods of `per = "second"` and `per = "minute"`.
const SECOND: std::time::Duration = std::time::Duration::from_secs(1);
const MINUTE: std::time::Duration = std::time::Duration::from_secs(60);

/// `printf %s sluice-demo-key | sha256sum`, as the examples use it.
const DEMO_KEY_HASH: &str =
    "sha256:579084b337941a6a4a172d804df80263a01442341327e1c8aded14669aee6724";
const OTHER_KEY_HASH: &str =
    "sha256:abababababababababababababababababababababababababababababababab";

/// `extra` after [`MOCK_DEPLOYMENT`] (so it starts on line 9), with `KEY_HASH` standing for
/// [`DEMO_KEY_HASH`].
fn with(extra: &str) -> String {
    format!(
        "{MOCK_DEPLOYMENT}\n{}",
        extra.replace("KEY_HASH", DEMO_KEY_HASH)
    )
}

/// A product `p` (lines 9-10) and `extra`.
fn product(extra: &str) -> String {
    with(&format!("[[product]]\nname = \"p\"\n{extra}"))
}

/// A product `p` whose `limits` hold the one inline table `{ fields }` (on line 11).
fn limit(fields: &str) -> String {
    product(&format!("limits = [{{ {fields} }}]"))
}

/// Product `p`, then subscription `s` of it (lines 12-14) and `extra`.
fn subscription(extra: &str) -> String {
    product(&format!(
        "\n[[subscription]]\nname = \"s\"\nproduct = \"p\"\n{extra}"
    ))
}

/// A `[[jwt]]` `j` with issuer, audience and claim (lines 9-13), then `extra`.
fn jwt(extra: &str) -> String {
    with(&format!("{JWT_HEAD}{extra}"))
}

const JWT_HEAD: &str = "[[jwt]]\nname = \"j\"\nissuer = \"https://issuer.example\"\naudiences = [\"api://sluice\"]\nsubscription_claim = \"appid\"\n";
const URL_KEY: &str = "keys = [{ jwks_url = \"http://127.0.0.1:9/k\", algorithms = [\"RS256\"] }]";

/// [`jwt`] whose `keys` hold the one inline table `{ fields }` (on line 14).
fn jwt_key(fields: &str) -> String {
    jwt(&format!("keys = [{{ {fields} }}]"))
}

/// A second deployment `e` (lines 9-11), then `extra`.
fn deployment(extra: &str) -> String {
    with(&format!(
        "[[deployment]]\nname = \"e\"\nbackends = [{{ backend = \"m\" }}]\n{extra}"
    ))
}

#[track_caller]
fn assert_errors(cases: &[(String, &str)]) {
    for (text, expected) in cases {
        assert_error(text, expected);
    }
}

const FULL_ACCESS: &str = r#"[server]
trace_header = false
client_ip_limits = [{ unit = "requests", rate = 100, per = "second" }]

[[backend]]
name = "m"
kind = "mock"

[[deployment]]
name = "gpt-4o-mini"
backends = [{ backend = "m" }]

[[deployment]]
name = "gpt-4o"
backends = [{ backend = "m" }]
limits = [{ unit = "tokens", rate = 450000, per = "minute" }]
tokens = { estimator = "bpe", family = "o200k", default_max_tokens = 512, stream_usage = false }

[[deployment]]
name = "embed"
backends = [{ backend = "m" }]
tokens = { estimator = "heuristic" }

[[product]]
name = "standard"
deployments = ["gpt-4o-mini", "gpt-4o"]
operations = ["chat", "embeddings"]
trace = true
limits = [
  { unit = "requests", rate = 600, per = "minute", burst = 60, scope = "subscription" },
  { unit = "tokens", rate = 100000, per = "minute", scope = "subscription_deployment" },
  { unit = "tokens", quota = 5000000, per = "month", shadow = true },
  { unit = "requests", rate = 10, per = "second", scope = "claim:oid" },
]

[[product]]
name = "open"
deployments = ["*"]

[[subscription]]
name = "team-a"
product = "standard"
keys = ["sha256:579084b337941a6a4a172d804df80263a01442341327e1c8aded14669aee6724"]
revoked_keys = ["sha256:abababababababababababababababababababababababababababababababab"]
jwt_claim_values = ["11111111-2222-3333-4444-555555555555"]

[[subscription]]
name = "team-b"
product = "open"
jwt_claim_values = ["app-b"]

[[jwt]]
name = "entra"
issuer = "https://login.microsoftonline.com/TENANT/v2.0"
audiences = ["api://sluice"]
subscription_claim = "appid"
leeway = "30s"
require = ["exp", "aud", "iss", "nbf"]
required_claims = { tid = [], roles = ["gateway.use", "gateway.admin"] }
keys = [
  { kid = "k1", algorithms = ["RS256", "PS256"], public_key_file = "keys/entra.pem" },
  { kid = "hs", algorithms = ["HS256"], secret_env = "JWT_HS_SECRET" },
  { jwks_file = "keys/jwks.json", algorithms = ["RS256", "ES256"] },
  { jwks_url = "http://127.0.0.1:9999/keys", algorithms = ["RS256"], refresh = "1h" },
]

[[jwt]]
name = "local"
issuer = "sluice-test"
subscription_claim = "sub"
require = ["exp"]
keys = [{ algorithms = ["HS256"], secret_env = "JWT_HS_SECRET" }]
"#;

#[test]
fn a_full_access_config_compiles_into_the_expected_data() {
    let snapshot = compile(FULL_ACCESS).unwrap();
    let access = &snapshot.access;
    assert!(access.auth_enabled());
    assert!(!access.trace_header);

    let rate = |rate, per, burst| LimitWindow::Rate(RateSpec::per(rate, per).with_burst(burst));
    // Names are the defaults (no `name` in FULL_ACCESS); ids are checked by
    // `limit_ids_follow_names_not_positions`.
    let limit = |index: usize, label: &str, owner, scope, unit, window, shadow| Limit {
        index,
        name: super::super::limits::default_limit_name(&scope, unit, window),
        id: access.limits[index].id,
        label: label.to_string(),
        owner,
        scope,
        unit,
        window,
        shadow,
    };
    assert_eq!(
        access.limits,
        [
            limit(
                0,
                "product:standard#0",
                LimitOwner::Product(0),
                LimitScope::Subscription,
                LimitUnit::Requests,
                rate(600, MINUTE, 60),
                false
            ),
            limit(
                1,
                "product:standard#1",
                LimitOwner::Product(0),
                LimitScope::SubscriptionDeployment,
                LimitUnit::Tokens,
                rate(100_000, MINUTE, 100_000),
                false
            ),
            limit(
                2,
                "product:standard#2",
                LimitOwner::Product(0),
                LimitScope::Subscription,
                LimitUnit::Tokens,
                LimitWindow::Quota(QuotaSpec {
                    limit: 5_000_000,
                    window: QuotaWindow::Month
                }),
                true
            ),
            limit(
                3,
                "product:standard#3",
                LimitOwner::Product(0),
                LimitScope::Claim("oid".to_string()),
                LimitUnit::Requests,
                rate(10, SECOND, 10),
                false
            ),
            limit(
                4,
                "deployment:gpt-4o#0",
                LimitOwner::Deployment("gpt-4o".to_string()),
                LimitScope::Deployment,
                LimitUnit::Tokens,
                rate(450_000, MINUTE, 450_000),
                false
            ),
            limit(
                5,
                "server#0",
                LimitOwner::Server,
                LimitScope::ClientIp,
                LimitUnit::Requests,
                rate(100, SECOND, 100),
                false
            ),
        ]
    );
    assert_eq!(access.client_ip_limits, [5]);
    assert_eq!(
        access.limit(4).map(|l| l.label.as_str()),
        Some("deployment:gpt-4o#0")
    );
    assert!(access.limit(6).is_none());

    assert_eq!(snapshot.deployments["gpt-4o-mini"].limits, [] as [usize; 0]);
    assert_eq!(
        snapshot.deployments["gpt-4o-mini"].tokens,
        TokenSettings::default()
    );
    assert_eq!(snapshot.deployments["gpt-4o"].limits, [4]);
    assert_eq!(
        snapshot.deployments["gpt-4o"].tokens,
        TokenSettings {
            estimator: EstimatorChoice::Fixed(Estimator::Bpe(Family::O200k)),
            default_max_tokens: 512,
            stream_usage: false,
        }
    );
    assert_eq!(
        snapshot.deployments["embed"].tokens,
        TokenSettings {
            estimator: EstimatorChoice::Fixed(Estimator::Heuristic),
            default_max_tokens: 1024,
            stream_usage: true,
        }
    );

    assert_eq!(
        access.products,
        [
            Product {
                name: "standard".to_string(),
                deployments: DeploymentSet::Only(vec![
                    "gpt-4o-mini".to_string(),
                    "gpt-4o".to_string()
                ]),
                operations: OperationSet::empty()
                    .with(Operation::ChatCompletions)
                    .with(Operation::Embeddings),
                trace: true,
                limits: vec![0, 1, 2, 3],
                audit_content: None,
            },
            Product {
                name: "open".to_string(),
                deployments: DeploymentSet::All,
                operations: OperationSet::all(),
                trace: false,
                limits: vec![],
                audit_content: None,
            },
        ]
    );
    assert!(access.products[0].deployments.contains("gpt-4o"));
    assert!(!access.products[0].deployments.contains("embed"));
    assert!(access.products[1].deployments.contains("anything"));

    let demo = parse_digest(DEMO_KEY_HASH);
    let other = parse_digest(OTHER_KEY_HASH);
    assert_eq!(
        access.subscriptions,
        [
            Subscription {
                name: "team-a".to_string(),
                product: 0,
                keys: vec![demo],
                revoked_keys: vec![other],
                jwt_claim_values: vec!["11111111-2222-3333-4444-555555555555".to_string()],
            },
            Subscription {
                name: "team-b".to_string(),
                product: 1,
                keys: vec![],
                revoked_keys: vec![],
                jwt_claim_values: vec!["app-b".to_string()],
            },
        ]
    );
    assert_eq!(access.keys.len(), 2);
    assert_eq!(
        access.key(&demo),
        Some(KeyEntry {
            subscription: SubscriptionId(0),
            revoked: false
        })
    );
    assert_eq!(
        access.key(&other),
        Some(KeyEntry {
            subscription: SubscriptionId(0),
            revoked: true
        })
    );
    assert_eq!(access.key(&KeyDigest([0; 32])), None);
    assert_eq!(access.claim_values.len(), 2);
    assert_eq!(
        access.claim_values["11111111-2222-3333-4444-555555555555"],
        SubscriptionId(0)
    );
    assert_eq!(access.claim_values["app-b"], SubscriptionId(1));

    let secret = || JwtKeySource::Secret {
        env: Some("JWT_HS_SECRET".to_string()),
        secret: b"an-hmac-secret-of-32-bytes-or-so!".to_vec(),
    };
    // Every issuer maps its subscription claim through the file's one claim-value table
    // and reports the claims `claim:` limits count by.
    let mapping = |claim: &str| {
        Some(SubscriptionMapping {
            claim: claim.to_string(),
            values: access.claim_values.clone(),
            default: None,
        })
    };
    assert!(std::sync::Arc::ptr_eq(
        &access.claim_values,
        &access.jwt[1].subscription.as_ref().unwrap().values
    ));
    assert_eq!(
        access.jwt,
        [
            JwtIssuerConfig {
                name: "entra".to_string(),
                issuer: "https://login.microsoftonline.com/TENANT/v2.0".to_string(),
                audiences: vec!["api://sluice".to_string()],
                subscription: mapping("appid"),
                scope_claims: vec!["oid".to_string()],
                leeway: Duration::from_secs(30),
                require_expiration: true,
                require_audience: true,
                require_issuer: true,
                require_not_before: true,
                // In file order, not the map's.
                required_claims: vec![
                    RequiredClaim {
                        name: "tid".to_string(),
                        values: vec![]
                    },
                    RequiredClaim {
                        name: "roles".to_string(),
                        values: vec!["gateway.use".to_string(), "gateway.admin".to_string()]
                    },
                ],
                keys: vec![
                    JwtKeyConfig {
                        kid: Some("k1".to_string()),
                        algorithms: vec![JwtAlg::RS256, JwtAlg::PS256],
                        source: JwtKeySource::Pem {
                            path: Some(PathBuf::from("keys/entra.pem")),
                            pem: PEM.as_bytes().to_vec()
                        },
                    },
                    JwtKeyConfig {
                        kid: Some("hs".to_string()),
                        algorithms: vec![JwtAlg::HS256],
                        source: secret(),
                    },
                    JwtKeyConfig {
                        kid: None,
                        algorithms: vec![JwtAlg::RS256, JwtAlg::ES256],
                        source: JwtKeySource::Jwks {
                            path: Some(PathBuf::from("keys/jwks.json")),
                            json: JWKS.as_bytes().to_vec()
                        },
                    },
                    JwtKeyConfig {
                        kid: None,
                        algorithms: vec![JwtAlg::RS256],
                        source: JwtKeySource::JwksUrl {
                            url: "http://127.0.0.1:9999/keys".to_string(),
                            settings: JwksSettings {
                                refresh_every: Duration::from_secs(3600),
                                ..JwksSettings::default()
                            }
                        },
                    },
                ],
            },
            JwtIssuerConfig {
                name: "local".to_string(),
                issuer: "sluice-test".to_string(),
                audiences: vec![],
                subscription: mapping("sub"),
                scope_claims: vec!["oid".to_string()],
                leeway: Duration::from_secs(60),
                require_expiration: true,
                require_audience: false,
                require_issuer: false,
                require_not_before: false,
                required_claims: vec![],
                keys: vec![JwtKeyConfig {
                    kid: None,
                    algorithms: vec![JwtAlg::HS256],
                    source: secret(),
                }],
            },
        ]
    );

    // The HMAC secret stays out of debug output.
    let debug = format!("{snapshot:?}");
    assert!(!debug.contains("an-hmac-secret"), "{debug}");
}

fn parse_digest(text: &str) -> KeyDigest {
    super::super::products::parse_key_hash(text).unwrap()
}

#[test]
fn without_subscriptions_or_issuers_auth_is_off() {
    let snapshot = compile(MOCK_DEPLOYMENT).unwrap();
    assert!(!snapshot.access.auth_enabled());
    assert!(snapshot.access.trace_header);
    assert!(snapshot.access.limits.is_empty());
    assert!(snapshot.deployments["d"].limits.is_empty());
    assert_eq!(snapshot.deployments["d"].tokens, TokenSettings::default());
    // Products alone do not turn it on; one subscription or one issuer does.
    let products = product("limits = [{ unit = \"requests\", rate = 5, per = \"second\" }]");
    assert!(!compile(&products).unwrap().access.auth_enabled());
    let keyed = subscription("keys = [\"KEY_HASH\"]");
    assert!(compile(&keyed).unwrap().access.auth_enabled());
    let issuer = jwt(URL_KEY);
    assert!(compile(&issuer).unwrap().access.auth_enabled());
    let default = &compile(&issuer).unwrap().access.jwt[0];
    // The default `require`: exp, aud and iss; nbf only checked when present.
    assert_eq!(
        (
            default.require_expiration,
            default.require_audience,
            default.require_issuer,
            default.require_not_before
        ),
        (true, true, true, false)
    );
    assert_eq!(default.leeway, Duration::from_secs(60));
    let JwtKeySource::JwksUrl { settings, .. } = &default.keys[0].source else {
        panic!("not a url: {:?}", default.keys[0]);
    };
    assert_eq!(settings.refresh_every, Duration::from_secs(600));
    // Without `scope`, a product's limit is per subscription, a deployment's for the whole
    // deployment, and rate limits may spend a whole period at once.
    let snapshot = compile(&products).unwrap();
    assert_eq!(snapshot.access.limits[0].scope, LimitScope::Subscription);
    assert_eq!(
        snapshot.access.limits[0].window,
        LimitWindow::Rate(RateSpec::per(5, SECOND).with_burst(5))
    );
    let deployment_limit = deployment("limits = [{ unit = \"tokens\", quota = 9, per = \"day\" }]");
    let snapshot = compile(&deployment_limit).unwrap();
    assert_eq!(snapshot.access.limits[0].scope, LimitScope::Deployment);
    assert_eq!(snapshot.deployments["e"].limits, [0]);
}

#[test]
fn key_files_are_read_relative_to_the_config_file() {
    let text = with(&format!(
        "{JWT_HEAD}keys = [{{ algorithms = [\"RS256\"], public_key_file = \"entra.pem\" }}]"
    ));
    let seen = std::cell::RefCell::new(Vec::new());
    let read = |path: &Path| {
        seen.borrow_mut().push(path.to_path_buf());
        Ok(PEM.to_string())
    };
    let snapshot = load_str_with(
        Path::new("/etc/sluice/sluice.toml"),
        &text,
        &env,
        &resolve,
        &read,
        None,
    )
    .unwrap();
    assert_eq!(*seen.borrow(), [PathBuf::from("/etc/sluice/entra.pem")]);
    let JwtKeySource::Pem {
        path: Some(path), ..
    } = &snapshot.access.jwt[0].keys[0].source
    else {
        panic!("not a PEM key from a file");
    };
    assert_eq!(path, Path::new("/etc/sluice/entra.pem"));
    // An absolute path stays as it is.
    seen.borrow_mut().clear();
    let absolute = text.replace("\"entra.pem\"", "\"/keys/entra.pem\"");
    load_str_with(
        Path::new("/etc/sluice/sluice.toml"),
        &absolute,
        &env,
        &resolve,
        &read,
        None,
    )
    .unwrap();
    assert_eq!(*seen.borrow(), [PathBuf::from("/keys/entra.pem")]);
}

#[test]
fn limits_are_checked() {
    assert_errors(&[
        (limit("unit = \"requests\", rate = 10, quota = 5, per = \"minute\""), "sluice.toml:11:51: product[0].limits[0].quota: give either `rate` (per second or minute) or `quota` (per hour, day or month), not both"),
        (limit("unit = \"requests\", per = \"minute\""), "sluice.toml:11:11: product[0].limits[0].rate: missing: a limit needs `rate` (per second or minute) or `quota` (per hour, day or month)"),
        (limit("unit = \"tokens\", rate = 10, per = \"month\""), "sluice.toml:11:47: product[0].limits[0].per: a `rate` is per \"second\" or \"minute\"; for a month use `quota`"),
        (limit("unit = \"tokens\", rate = 10, per = \"hour\""), "sluice.toml:11:47: product[0].limits[0].per: a `rate` is per \"second\" or \"minute\"; for an hour use `quota`"),
        (limit("unit = \"tokens\", quota = 10, per = \"second\""), "sluice.toml:11:48: product[0].limits[0].per: a `quota` is per \"hour\", \"day\" or \"month\"; for a second use `rate`"),
        (limit("unit = \"tokens\", rate = 10, per = \"week\""), "sluice.toml:11:47: product[0].limits[0].per: unknown period `week`: expected \"second\" or \"minute\" (with `rate`), \"hour\", \"day\" or \"month\" (with `quota`)"),
        (limit("unit = \"bytes\", rate = 10, per = \"second\""), "sluice.toml:11:20: product[0].limits[0].unit: unknown unit `bytes`: expected \"requests\" or \"tokens\""),
        (limit("unit = \"requests\", rate = 0, per = \"second\""), "sluice.toml:11:39: product[0].limits[0].rate: must be 1 or more"),
        (limit("unit = \"requests\", quota = 0, per = \"day\""), "sluice.toml:11:40: product[0].limits[0].quota: must be 1 or more"),
        (limit("unit = \"requests\", rate = 5, burst = 0, per = \"second\""), "sluice.toml:11:50: product[0].limits[0].burst: must be 1 or more"),
        (limit("unit = \"requests\", quota = 5, burst = 2, per = \"hour\""), "sluice.toml:11:51: product[0].limits[0].burst: `burst` applies only to a `rate`"),
        (limit("unit = \"requests\", rate = 5"), "sluice.toml:11:11: product[0].limits[0].per: missing field `per`"),
        (limit("unit = \"requests\", rate = 5, per = \"second\", brust = 3"), "sluice.toml:11:58: product[0].limits[0].brust: unknown field `brust`, expected one of `unit`, `rate`, `quota`, `per`, `burst`, `scope`, `shadow`, `name`"),
    ]);
}

#[test]
fn limit_scopes_fit_where_the_limit_is() {
    let scoped = |scope: &str| {
        limit(&format!(
            "unit = \"requests\", rate = 5, per = \"second\", scope = \"{scope}\""
        ))
    };
    assert_errors(&[
        (scoped("team"), "sluice.toml:11:66: product[0].limits[0].scope: unknown scope `team`: expected \"subscription\", \"subscription_deployment\", \"claim:<name>\" or \"client_cert\""),
        (scoped("deployment"), "sluice.toml:11:66: product[0].limits[0].scope: scope `deployment` does not apply to a product's limits (they take \"subscription\", \"subscription_deployment\", \"claim:<name>\" or \"client_cert\")"),
        (scoped("client_ip"), "sluice.toml:11:66: product[0].limits[0].scope: scope `client_ip` does not apply to a product's limits (they take \"subscription\", \"subscription_deployment\", \"claim:<name>\" or \"client_cert\")"),
        (scoped("claim:"), "sluice.toml:11:66: product[0].limits[0].scope: `claim:` needs a claim name, e.g. \"claim:oid\""),
        (scoped("claim:oid"), "sluice.toml:11:66: product[0].limits[0].scope: a `claim:` scope counts JWT claim values, but no [[jwt]] is configured"),
        (deployment("limits = [{ unit = \"tokens\", rate = 5, per = \"second\", scope = \"subscription\" }]"), "sluice.toml:12:64: deployment[1].limits[0].scope: scope `subscription` does not apply to a deployment's limits (they take \"deployment\", \"subscription_deployment\", \"claim:<name>\" or \"client_cert\")"),
        (deployment("limits = [{ unit = \"tokens\", rate = 5, per = \"second\", scope = \"client_ip\" }]"), "sluice.toml:12:64: deployment[1].limits[0].scope: scope `client_ip` does not apply to a deployment's limits (they take \"deployment\", \"subscription_deployment\", \"claim:<name>\" or \"client_cert\")"),
        (with("[server]\nclient_ip_limits = [{ unit = \"requests\", rate = 5, per = \"second\", scope = \"subscription\" }]"), "sluice.toml:10:76: server.client_ip_limits[0].scope: scope `subscription` does not apply to client_ip_limits (they take \"client_ip\")"),
    ]);
    // With an issuer, a claim scope is fine on products and deployments.
    let text = format!(
        "{}\n{JWT_HEAD}{URL_KEY}\n",
        scoped("claim:oid").replace(
            "[[deployment]]",
            "[[deployment]]\nlimits = [{ unit = \"tokens\", rate = 5, per = \"second\", scope = \"claim:tid\" }]"
        )
    );
    let snapshot = compile(&text).unwrap();
    let scopes: Vec<_> = snapshot.access.limits.iter().map(|l| &l.scope).collect();
    assert_eq!(
        scopes,
        [
            &LimitScope::Claim("oid".to_string()),
            &LimitScope::Claim("tid".to_string())
        ]
    );
}

#[test]
fn products_are_checked() {
    assert_errors(&[
        (product("\n[[product]]\nname = \"p\"\n"), "sluice.toml:13:8: product[1].name: duplicate product name `p` (first defined on line 10)"),
        (with("[[product]]\nname = \"\""), "sluice.toml:10:8: product[0].name: must not be empty"),
        (product("deployments = [\"d\", \"e\"]"), "sluice.toml:11:21: product[0].deployments[1]: unknown deployment `e`"),
        (product("deployments = [\"d\", \"*\"]"), "sluice.toml:11:21: product[0].deployments[1]: `*` already means every deployment: list it alone"),
        (product("deployments = [\"d\", \"d\"]"), "sluice.toml:11:21: product[0].deployments[1]: deployment `d` is listed twice"),
        (product("deployments = []"), "sluice.toml:11:15: product[0].deployments: list at least one deployment, or [\"*\"] for all of them"),
        (product("operations = [\"chat\", \"chat/completions\"]"), "sluice.toml:11:23: product[0].operations[1]: unknown operation `chat/completions`: expected \"chat\", \"completions\", \"embeddings\", \"responses\" or \"models\""),
        (product("operations = [\"chat\", \"chat\"]"), "sluice.toml:11:23: product[0].operations[1]: operation `chat` is listed twice"),
        (product("operations = []"), "sluice.toml:11:14: product[0].operations: list at least one operation, or leave `operations` out for all of them"),
    ]);
}

#[test]
fn subscriptions_are_checked() {
    let claim_jwt = format!("\n{JWT_HEAD}{URL_KEY}");
    assert_errors(&[
        (with("[[subscription]]\nname = \"s\"\nproduct = \"q\"\nkeys = [\"KEY_HASH\"]"), "sluice.toml:11:11: subscription[0].product: unknown product `q`"),
        (with("[[subscription]]\nname = \"s\"\nkeys = [\"KEY_HASH\"]"), "sluice.toml:9:1: subscription[0].product: missing field `product`"),
        (subscription(""), "sluice.toml:12:1: subscription[0].keys: missing: a subscription needs `keys` (hashes from `sluice keygen`; `keys = []` when a control plane makes them) or `jwt_claim_values`"),
        (subscription("keys = [\"KEY_HASH\"]\n\n[[subscription]]\nname = \"s\"\nproduct = \"p\"\nrevoked_keys = [\"sha256:abababababababababababababababababababababababababababababababab\"]"), "sluice.toml:18:8: subscription[1].name: duplicate subscription name `s` (first defined on line 13)"),
        (subscription("jwt_claim_values = [\"app-1\"]"), "sluice.toml:15:20: subscription[0].jwt_claim_values: no [[jwt]] is configured, so no token can carry these values"),
        (subscription(&format!("jwt_claim_values = [\"app-1\"]\n\n[[subscription]]\nname = \"t\"\nproduct = \"p\"\njwt_claim_values = [\"app-1\"]\n{claim_jwt}")), "sluice.toml:20:21: subscription[1].jwt_claim_values[0]: claim value `app-1` already maps to subscription `s` (line 15)"),
        (subscription(&format!("jwt_claim_values = [\"\"]\n{claim_jwt}")), "sluice.toml:15:21: subscription[0].jwt_claim_values[0]: must not be empty"),
    ]);
}

#[test]
fn key_hashes_are_checked_and_unique() {
    assert_errors(&[
        (subscription("keys = [\"sluice-demo-key\"]"), "sluice.toml:15:9: subscription[0].keys[0]: expected a key hash: `sha256:` and 64 lowercase hex digits, as `sluice keygen` prints (never the key itself)"),
        (subscription(&format!("keys = [\"{}\"]", DEMO_KEY_HASH.to_uppercase().replace("SHA256", "sha256"))), "sluice.toml:15:9: subscription[0].keys[0]: expected `sha256:` and 64 lowercase hex digits, as `sluice keygen` prints"),
        (subscription(&format!("keys = [\"{}\"]", &DEMO_KEY_HASH[..70])), "sluice.toml:15:9: subscription[0].keys[0]: expected `sha256:` and 64 lowercase hex digits, as `sluice keygen` prints"),
        (subscription("keys = [\"KEY_HASH\"]\n\n[[subscription]]\nname = \"t\"\nproduct = \"p\"\nrevoked_keys = [\"KEY_HASH\"]"), "sluice.toml:20:17: subscription[1].revoked_keys[0]: this key hash is already listed on line 15 (subscription `s`)"),
        (subscription("keys = [\"KEY_HASH\", \"KEY_HASH\"]"), "sluice.toml:15:84: subscription[0].keys[1]: this key hash is already listed on line 15 (subscription `s`)"),
    ]);
    // `keys = []` written out: the keys come from a control plane.
    assert!(compile(&subscription("keys = []")).is_ok());
    // A key pasted instead of its hash never reaches the message.
    let pasted = errors(&subscription("keys = [\"sk-live-secret\"]"));
    assert!(pasted.iter().all(|e| !e.contains("sk-live-secret")));
}

#[test]
fn issuers_are_checked() {
    assert_errors(&[
        (jwt(""), "sluice.toml:9:1: jwt[0].keys: missing: a [[jwt]] needs at least one key, e.g. keys = [{ jwks_url = \"http://127.0.0.1:9999/keys\", algorithms = [\"RS256\"] }]"),
        (jwt("keys = []"), "sluice.toml:14:8: jwt[0].keys: a [[jwt]] needs at least one key"),
        (jwt(&format!("require = [\"exp\", \"sub\"]\n{URL_KEY}")), "sluice.toml:14:19: jwt[0].require[1]: unknown claim `sub`: expected \"exp\", \"aud\", \"iss\" or \"nbf\" (other claims go in `required_claims`)"),
        (jwt(&format!("require = [\"exp\", \"exp\"]\n{URL_KEY}")), "sluice.toml:14:19: jwt[0].require[1]: `exp` is listed twice"),
        (with(&format!("{}{URL_KEY}", JWT_HEAD.replace("audiences = [\"api://sluice\"]\n", ""))), "sluice.toml:9:1: jwt[0].audiences: missing: list the accepted `aud` values, e.g. [\"api://sluice\"], or remove \"aud\" from `require`"),
        (jwt(&format!("leeway = \"1 minute\"\n{URL_KEY}")), "sluice.toml:14:10: jwt[0].leeway: invalid duration `1 minute`: expected a whole number and a unit (ms, s, m or h), e.g. \"500ms\", \"10s\", \"5m\""),
        (jwt(&format!("required_claims = {{ roles = [\"\"] }}\n{URL_KEY}")), "sluice.toml:14:30: jwt[0].required_claims.roles[0]: must not be empty"),
        (with(&format!("{}{URL_KEY}", JWT_HEAD.replace("\"appid\"", "\"\""))), "sluice.toml:13:22: jwt[0].subscription_claim: must not be empty"),
        (with(&format!("{}{URL_KEY}", JWT_HEAD.replace("subscription_claim = \"appid\"\n", ""))), "sluice.toml:9:1: jwt[0].subscription_claim: missing field `subscription_claim`"),
        (jwt(&format!("{URL_KEY}\n\n{}{URL_KEY}", JWT_HEAD.replace("\"j\"", "\"k\""))), "sluice.toml:18:10: jwt[1].issuer: issuer `https://issuer.example` is already trusted by jwt `j` (line 11)"),
        (jwt(&format!("{URL_KEY}\n\n{}{URL_KEY}", JWT_HEAD.replace("issuer.example", "other.example"))), "sluice.toml:17:8: jwt[1].name: duplicate jwt name `j` (first defined on line 10)"),
        (jwt("keys = [\n  { kid = \"a\", algorithms = [\"RS256\"], public_key_file = \"keys/entra.pem\" },\n  { kid = \"a\", algorithms = [\"HS256\"], secret_env = \"JWT_HS_SECRET\" },\n]"), "sluice.toml:16:11: jwt[0].keys[1].kid: kid `a` is already used by this issuer's key on line 15"),
    ]);
    // Leaving "aud" out of `require` explicitly allows an issuer without audiences.
    let no_aud = JWT_HEAD.replace(
        "audiences = [\"api://sluice\"]\n",
        "require = [\"exp\", \"iss\"]\n",
    );
    assert!(compile(&with(&format!("{no_aud}{URL_KEY}"))).is_ok());
}

#[test]
fn each_key_has_one_source_and_pinned_algorithms() {
    assert_errors(&[
        (jwt_key("kid = \"k\", algorithms = [\"RS256\"]"), "sluice.toml:14:9: jwt[0].keys[0]: missing: a key needs one of `public_key_file`, `secret_env`, `jwks_file` or `jwks_url`"),
        (jwt_key("algorithms = [\"RS256\"], public_key_file = \"keys/entra.pem\", jwks_url = \"http://127.0.0.1:9/k\""), "sluice.toml:14:82: jwt[0].keys[0].jwks_url: give one of `public_key_file`, `secret_env`, `jwks_file` or `jwks_url` per key, not both `public_key_file` and `jwks_url`"),
        (jwt_key("public_key_file = \"keys/entra.pem\""), "sluice.toml:14:9: jwt[0].keys[0].algorithms: missing: pin the algorithms this key may verify, e.g. algorithms = [\"RS256\"]"),
        (jwt_key("algorithms = [], public_key_file = \"keys/entra.pem\""), "sluice.toml:14:24: jwt[0].keys[0].algorithms: list at least one algorithm"),
        (jwt_key("algorithms = [\"RS257\"], public_key_file = \"keys/entra.pem\""), "sluice.toml:14:25: jwt[0].keys[0].algorithms[0]: unknown algorithm `RS257`: expected one of HS256, HS384, HS512, RS256, RS384, RS512, ES256, ES384, PS256"),
        // RFC 7515 A.4's ES512 and RFC 7520's PS384 are not verified, so not accepted either.
        (jwt_key("algorithms = [\"ES512\"], public_key_file = \"keys/entra.pem\""), "sluice.toml:14:25: jwt[0].keys[0].algorithms[0]: unknown algorithm `ES512`: expected one of HS256, HS384, HS512, RS256, RS384, RS512, ES256, ES384, PS256"),
        (jwt_key("algorithms = [\"PS384\"], public_key_file = \"keys/entra.pem\""), "sluice.toml:14:25: jwt[0].keys[0].algorithms[0]: unknown algorithm `PS384`: expected one of HS256, HS384, HS512, RS256, RS384, RS512, ES256, ES384, PS256"),
        (jwt_key("algorithms = [\"None\"], public_key_file = \"keys/entra.pem\""), "sluice.toml:14:25: jwt[0].keys[0].algorithms[0]: unsigned tokens (`none`) are never accepted"),
        (jwt_key("algorithms = [\"RS256\", \"RS256\"], public_key_file = \"keys/entra.pem\""), "sluice.toml:14:34: jwt[0].keys[0].algorithms[1]: `RS256` is listed twice"),
        (jwt_key("algorithms = [\"RS256\", \"ES256\"], public_key_file = \"keys/entra.pem\""), "sluice.toml:14:34: jwt[0].keys[0].algorithms[1]: one PEM key is either RSA (RS256, RS384, RS512, PS256) or one EC curve (ES256 or ES384): declare another key for the other"),
        (jwt_key("algorithms = [\"ES256\", \"ES384\"], public_key_file = \"keys/entra.pem\""), "sluice.toml:14:34: jwt[0].keys[0].algorithms[1]: one PEM key is either RSA (RS256, RS384, RS512, PS256) or one EC curve (ES256 or ES384): declare another key for the other"),
        (jwt_key("kid = \"a\", algorithms = [\"RS256\"], jwks_url = \"http://127.0.0.1:9/k\""), "sluice.toml:14:17: jwt[0].keys[0].kid: `kid` does not apply to a JWKS: its keys carry their own"),
    ]);
}

#[test]
fn hmac_algorithms_go_with_secrets_only() {
    // The algorithm-confusion guard: a public key or JWKS never verifies an HS* token.
    assert_errors(&[
        (jwt_key("algorithms = [\"RS256\", \"HS256\"], public_key_file = \"keys/entra.pem\""), "sluice.toml:14:34: jwt[0].keys[0].algorithms[1]: `HS256` verifies with a shared secret (`secret_env`), never with a public key or JWKS (that would allow algorithm confusion)"),
        (jwt_key("algorithms = [\"HS256\"], jwks_url = \"http://127.0.0.1:9/k\""), "sluice.toml:14:25: jwt[0].keys[0].algorithms[0]: `HS256` verifies with a shared secret (`secret_env`), never with a public key or JWKS (that would allow algorithm confusion)"),
        (jwt_key("algorithms = [\"HS384\"], jwks_file = \"keys/jwks.json\""), "sluice.toml:14:25: jwt[0].keys[0].algorithms[0]: `HS384` verifies with a shared secret (`secret_env`), never with a public key or JWKS (that would allow algorithm confusion)"),
        (jwt_key("algorithms = [\"RS256\"], secret_env = \"JWT_HS_SECRET\""), "sluice.toml:14:25: jwt[0].keys[0].algorithms[0]: `RS256` verifies with a public key; a `secret_env` key takes only HS256, HS384 or HS512"),
    ]);
}

#[test]
fn key_material_is_read_and_checked() {
    assert_errors(&[
        (jwt_key("algorithms = [\"RS256\"], public_key_file = \"keys/missing.pem\""), "sluice.toml:14:53: jwt[0].keys[0].public_key_file: cannot read `keys/missing.pem`: No such file or directory (os error 2)"),
        (jwt_key("algorithms = [\"RS256\"], public_key_file = \"keys/private.pem\""), "sluice.toml:14:53: jwt[0].keys[0].public_key_file: `keys/private.pem` holds a private key: give the public key only (e.g. `openssl pkey -pubout`)"),
        (jwt_key("algorithms = [\"RS256\"], jwks_file = \"keys/bad.json\""), "sluice.toml:14:47: jwt[0].keys[0].jwks_file: `keys/bad.json` is not a JWKS: expected an object with a non-empty `keys` array of keys"),
        (jwt_key("algorithms = [\"RS256\"], jwks_file = \"keys/nope.json\""), "sluice.toml:14:47: jwt[0].keys[0].jwks_file: cannot read `keys/nope.json`: No such file or directory (os error 2)"),
        (jwt_key("algorithms = [\"HS256\"], secret_env = \"NOT_SET_ANYWHERE\""), "sluice.toml:14:48: jwt[0].keys[0].secret_env: environment variable `NOT_SET_ANYWHERE` is not set"),
        (jwt_key("algorithms = [\"HS256\"], secret_env = \"EMPTY_KEY\""), "sluice.toml:14:48: jwt[0].keys[0].secret_env: environment variable `EMPTY_KEY` is empty"),
        (jwt_key("algorithms = [\"HS256\"], secret_env = \"SHORT_SECRET\""), "sluice.toml:14:48: jwt[0].keys[0].secret_env: environment variable `SHORT_SECRET` holds 5 bytes; HS256 needs a secret of at least 32 bytes"),
        (jwt_key("algorithms = [\"HS256\", \"HS512\"], secret_env = \"JWT_HS_SECRET\""), "sluice.toml:14:57: jwt[0].keys[0].secret_env: environment variable `JWT_HS_SECRET` holds 33 bytes; HS512 needs a secret of at least 64 bytes"),
        (jwt_key("algorithms = [\"RS256\"], jwks_url = \"ftp://x/keys\""), "sluice.toml:14:46: jwt[0].keys[0].jwks_url: expected a URL of the form http[s]://host[:port][/path]"),
        (jwt_key("algorithms = [\"RS256\"], public_key_file = \"keys/entra.pem\", refresh = \"1h\""), "sluice.toml:14:81: jwt[0].keys[0].refresh: `refresh` applies only to a `jwks_url` key"),
        (jwt_key("algorithms = [\"RS256\"], jwks_url = \"http://127.0.0.1:9/k\", refresh = \"500ms\""), "sluice.toml:14:80: jwt[0].keys[0].refresh: must be at least 1s"),
        (jwt_key("algorithms = [\"RS256\"], jwks_url = \"http://127.0.0.1:9/k\", refresh = \"hourly\""), "sluice.toml:14:80: jwt[0].keys[0].refresh: invalid duration `hourly`: expected a whole number and a unit (ms, s, m or h), e.g. \"500ms\", \"10s\", \"5m\""),
    ]);
    // A short secret's value never shows.
    let short = errors(&jwt_key(
        "algorithms = [\"HS256\"], secret_env = \"SHORT_SECRET\"",
    ));
    assert!(short
        .iter()
        .all(|e| !e.contains("short\"") && !e.contains("`short`")));
}

#[test]
fn token_settings_are_checked() {
    assert_errors(&[
        (deployment("tokens = { estimator = \"exact\" }"), "sluice.toml:12:24: deployment[1].tokens.estimator: unknown estimator `exact`: expected \"bpe\" or \"heuristic\""),
        (deployment("tokens = { family = \"p50k\" }"), "sluice.toml:12:21: deployment[1].tokens.family: unknown tokenizer family `p50k`: expected \"o200k\" or \"cl100k\""),
        (deployment("tokens = { estimator = \"heuristic\", family = \"o200k\" }"), "sluice.toml:12:46: deployment[1].tokens.family: `family` applies only to estimator = \"bpe\""),
        (deployment("tokens = { max_tokens = 5 }"), "sluice.toml:12:12: deployment[1].tokens.max_tokens: unknown field `max_tokens`, expected one of `estimator`, `family`, `default_max_tokens`, `stream_usage`"),
    ]);
    let snapshot = compile(&deployment(
        "tokens = { family = \"cl100k\", default_max_tokens = 0 }",
    ))
    .unwrap();
    assert_eq!(
        snapshot.deployments["e"].tokens,
        TokenSettings {
            estimator: EstimatorChoice::Fixed(Estimator::Bpe(Family::Cl100k)),
            default_max_tokens: 0,
            stream_usage: true,
        }
    );
}

#[test]
fn access_errors_come_with_the_others_in_file_order() {
    let text = r#"[server]
client_ip_limits = [{ unit = "requests", rate = 0, per = "second" }]

[[backend]]
name = "m"
kind = "mock"

[[deployment]]
name = "d"
backends = [{ backend = "m" }]
limits = [{ unit = "tokens", quota = 5, per = "minute" }]

[[product]]
name = "p"
deployments = ["x"]

[[subscription]]
name = "s"
product = "q"
keys = ["sha256:00"]
"#;
    assert_eq!(
        errors(text),
        [
            "sluice.toml:2:49: server.client_ip_limits[0].rate: must be 1 or more",
            "sluice.toml:11:47: deployment[0].limits[0].per: a `quota` is per \"hour\", \"day\" or \"month\"; for a minute use `rate`",
            "sluice.toml:15:16: product[0].deployments[0]: unknown deployment `x`",
            "sluice.toml:19:11: subscription[0].product: unknown product `q`",
            "sluice.toml:20:9: subscription[0].keys[0]: expected `sha256:` and 64 lowercase hex digits, as `sluice keygen` prints",
        ]
    );
}

/// What both examples promise: product `demo` on every deployment and operation with a
/// request and a token rate limit, and subscription `demo` whose one key is
/// `sluice-demo-key`.
pub(super) fn assert_demo_access(snapshot: &Snapshot, trace: bool) {
    let access = &snapshot.access;
    assert!(access.auth_enabled());
    assert_eq!(access.products.len(), 1);
    let product = &access.products[0];
    assert_eq!(product.name, "demo");
    assert_eq!(product.deployments, DeploymentSet::All);
    assert_eq!(product.operations, OperationSet::all());
    assert_eq!(product.trace, trace);
    let units: Vec<_> = product
        .limits
        .iter()
        .map(|&id| {
            let limit = &access.limits[id];
            assert_eq!(limit.scope, LimitScope::Subscription);
            assert!(!limit.shadow);
            assert!(matches!(limit.window, LimitWindow::Rate { .. }));
            limit.unit
        })
        .collect();
    assert_eq!(units, [LimitUnit::Requests, LimitUnit::Tokens]);
    let demo = parse_digest(DEMO_KEY_HASH);
    assert_eq!(
        access.subscriptions,
        [Subscription {
            name: "demo".to_string(),
            product: 0,
            keys: vec![demo],
            revoked_keys: vec![],
            jwt_claim_values: vec![],
        }]
    );
    assert_eq!(
        access.key(&demo),
        Some(KeyEntry {
            subscription: SubscriptionId(0),
            revoked: false
        })
    );
}

/// Inserting a limit before others (or reordering a list) keeps every other limit's name and
/// state id; changing what defines a limit's state, or its owner, gives it a new id; a
/// `name` given in the config is the name, and two limits of one list cannot share one.
#[test]
fn limit_ids_follow_names_not_positions() {
    let file = |limits: &str| product(&format!("limits = [{limits}]\n"));
    let ids = |limits: &str| -> Vec<(String, crate::limit::LimitId)> {
        compile(&file(limits))
            .unwrap()
            .access
            .limits
            .iter()
            .map(|l| (l.name.clone(), l.id))
            .collect()
    };
    let rpm = "{ unit = \"requests\", rate = 60, per = \"minute\" }";
    let tpm = "{ unit = \"tokens\", rate = 1000, per = \"minute\" }";
    let rps = "{ unit = \"requests\", rate = 5, per = \"second\" }";
    let before = ids(&format!("{rpm}, {tpm}"));
    assert_eq!(before[0].0, "requests:subscription:60/minute");
    assert_eq!(before[1].0, "tokens:subscription:1000/minute");
    let after = ids(&format!("{rps}, {rpm}, {tpm}"));
    assert_eq!(after.len(), 3);
    assert_eq!(
        &after[1..],
        &before[..],
        "inserting a limit moved the others' ids"
    );
    assert_ne!(after[0].1, before[0].1);
    let reordered = ids(&format!("{tpm}, {rpm}"));
    assert_eq!((&reordered[1], &reordered[0]), (&before[0], &before[1]));

    // A new amount or burst is a new bucket; so is another owner.
    let changed = ids("{ unit = \"requests\", rate = 60, per = \"minute\", burst = 10 }");
    assert_eq!(changed[0].0, before[0].0);
    assert_ne!(changed[0].1, before[0].1);
    let other_owner = compile(&file(rpm).replace("name = \"p\"", "name = \"q\"")).unwrap();
    assert_ne!(other_owner.access.limits[0].id, before[0].1);

    // An explicit name is kept through a change of position and of amount's text.
    let named = ids(r#"{ name = "rpm", unit = "requests", rate = 60, per = "minute" }"#);
    assert_eq!(named[0].0, "rpm");
    let named_after = ids(&format!(
        "{rps}, {{ name = \"rpm\", unit = \"requests\", rate = 60, per = \"minute\" }}"
    ));
    assert_eq!(named_after[1], named[0]);

    // Two limits of one list that would share a name are refused, each located.
    assert_error(
        &file(&format!("{rpm}, {{ unit = \"requests\", rate = 60, per = \"minute\", burst = 5 }}")),
        "sluice.toml:11:61: product[0].limits[1]: limit name `requests:subscription:60/minute` is already taken in this list (line 11): give each limit its own `name`",
    );
    assert_error(
        &file("{ name = \"a\", unit = \"requests\", rate = 1, per = \"second\" }, { name = \"a\", unit = \"tokens\", rate = 1, per = \"second\" }"),
        "sluice.toml:11:81: product[0].limits[1].name: limit name `a` is already taken in this list (line 11): give each limit its own `name`",
    );
    assert_error(
        &file("{ name = \"\", unit = \"requests\", rate = 1, per = \"second\" }"),
        "sluice.toml:11:20: product[0].limits[0].name: must not be empty",
    );
    // A name labels the limit in headers: nothing that could split one gets in.
    assert_error(
        &file("{ name = \"a\\r\\nx-evil: 1\", unit = \"requests\", rate = 1, per = \"second\" }"),
        "sluice.toml:11:20: product[0].limits[0].name: limit name \"a\\r\\nx-evil: 1\": use at most 64 of A-Z a-z 0-9 - _ . : /",
    );
}

/// A limit with a `name` is labelled by it in refusals and the trace (`product:p/rpm`); one
/// without, by its place in its list (`product:p#1`).
#[test]
fn limits_are_labelled_by_their_name_else_their_place() {
    let snapshot = compile(&product(
        "limits = [{ unit = \"tokens\", rate = 1000, per = \"minute\" }, { name = \"daily-cap\", unit = \"requests\", quota = 10, per = \"day\" }]\n",
    ))
    .unwrap();
    let labels: Vec<&str> = snapshot
        .access
        .limits
        .iter()
        .map(|l| l.label.as_str())
        .collect();
    assert_eq!(labels, ["product:p#0", "product:p/daily-cap"]);
}

/// Key material the validator could not use is a config error at the key's value (file,
/// line, field), found when the config is compiled — not a bare string when the runtime is
/// built — so `--check`, a reload and a control-plane NACK all name it.
#[test]
fn unusable_key_material_is_a_located_config_error() {
    assert_errors(&[
        (
            jwt_key("algorithms = [\"RS256\"], public_key_file = \"keys/garbled.pem\""),
            "sluice.toml:14:53: jwt[0].keys[0].public_key_file: `keys/garbled.pem`: bad key: PEM holds no RSA, P-256 or P-384 public key",
        ),
        (
            jwt_key("algorithms = [\"ES256\"], public_key_file = \"keys/entra.pem\""),
            "sluice.toml:14:53: jwt[0].keys[0].public_key_file: `keys/entra.pem`: no pinned algorithm fits a Rsa key",
        ),
        (
            jwt_key("algorithms = [\"RS256\"], jwks_file = \"keys/weak.json\""),
            "sluice.toml:14:47: jwt[0].keys[0].jwks_file: `keys/weak.json`: the JWKS has no usable signing key (1 skipped)",
        ),
    ]);
}

/// A deployment's estimator choice is the tokens module's own type: without a `family` the
/// request's model picks the BPE family (o200k when unknown); a `family` or the heuristic
/// holds whatever the model.
#[test]
fn the_estimator_choice_picks_per_model_only_without_a_family() {
    let by_model = TokenSettings::default().estimator;
    assert_eq!(by_model, EstimatorChoice::BpeByModel);
    assert_eq!(
        by_model.for_model("gpt-4-0613"),
        Estimator::Bpe(Family::Cl100k)
    );
    assert_eq!(
        by_model.for_model("gpt-4o-mini"),
        Estimator::Bpe(Family::O200k)
    );
    assert_eq!(by_model.for_model("llama-3"), Estimator::Bpe(Family::O200k));
    let pinned = EstimatorChoice::Fixed(Estimator::Bpe(Family::Cl100k));
    assert_eq!(pinned.for_model("gpt-4o"), Estimator::Bpe(Family::Cl100k));
    let heuristic = EstimatorChoice::Fixed(Estimator::Heuristic);
    assert_eq!(heuristic.for_model("gpt-4o"), Estimator::Heuristic);
}
