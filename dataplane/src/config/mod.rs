//! Config loading: one TOML file (format in the project spec) in, one immutable
//! [`Snapshot`] out, or every problem found as [`ConfigErrors`].
//!
//! Three steps. [`schema`] parses the text with serde into structs that deny unknown keys;
//! a syntax or type error stops there as a single error, located with the field path found
//! from its byte offset. [`compile`] then checks meaning — names, references, kinds, URLs,
//! sizes, durations, environment variables, key files — collecting every error, and builds
//! the snapshot.
//! It runs at startup and on reload, never on the request path; a reload passes the running
//! snapshot so backend health carries over.

mod access;
mod admin;
mod audit;
mod cache;
mod check;
mod compile;
mod document;
mod error;
mod jwt;
mod limits;
mod products;
mod resilience;
mod schema;
mod tls;

use std::ops::Range;
use std::path::Path;

pub use compile::{
    DEFAULT_AZURE_API_VERSION, DEFAULT_MOCK_COMPLETION_TOKENS, DEFAULT_MOCK_EMBEDDING_DIMENSIONS,
    DEFAULT_MOCK_MODEL,
};
pub use document::assemble;
pub use error::{ConfigError, ConfigErrors, Scope};

use crate::snapshot::Snapshot;
use error::Reporter;

/// Reads and compiles the config file at `path`, taking secrets from the process
/// environment and resolving upstream hosts with the system resolver.
///
/// `previous` is the snapshot being replaced, if any: a backend with the same name, kind and
/// target (URL and resolved address; for azure also the deployment) keeps its
/// [`crate::health::BackendHealth`], so a cool-down in force survives the reload.
pub fn load(path: &Path, previous: Option<&Snapshot>) -> Result<Snapshot, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: path.to_path_buf(),
            line: 1,
            column: 1,
            field: "(file)".to_string(),
            message: format!("cannot read the config file: {e}"),
            scope: Scope::Host,
        }])
    })?;
    load_str(path, &text, &|name| std::env::var(name).ok(), previous)
}

/// Compiles config `text` as if read from `path`, looking environment variables up with
/// `env` (tests inject a map). Upstream hosts resolve with the system resolver; key files
/// named by `[[jwt]]` keys are read from disk, relative to `path`'s folder. See [`load`].
pub fn load_str(
    path: &Path,
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
    previous: Option<&Snapshot>,
) -> Result<Snapshot, ConfigErrors> {
    load_str_with(
        path,
        text,
        env,
        &compile::system_resolve,
        &check::system_read,
        previous,
    )
}

/// Checks a document as a control plane does before making it a version: compiles `text`
/// (named `name` in errors) on this host, then judges it by its [`Scope::Document`] errors
/// only. `Ok` holds the [`Scope::Host`] errors this host found — an environment variable
/// unset here, an unresolvable host name — which each node checks for itself (and NACKs
/// on); `Err` holds every document error, each located (for an [`assemble`]d document, in
/// the file it came from).
pub fn check_document(name: &Path, text: &str) -> Result<Vec<ConfigError>, ConfigErrors> {
    match load_str(name, text, &|var| std::env::var(var).ok(), None) {
        Ok(_) => Ok(Vec::new()),
        Err(ConfigErrors(errors)) => {
            let (host, document): (Vec<_>, Vec<_>) =
                errors.into_iter().partition(|e| e.scope == Scope::Host);
            if document.is_empty() {
                Ok(host)
            } else {
                Err(ConfigErrors(document))
            }
        }
    }
}

/// A config text's version: `sha256:` and the lowercase hex SHA-256 of its bytes.
pub fn version_of(text: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(text.as_bytes());
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256:");
    for b in digest {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// [`load_str`] with an injectable resolver and key-file reader.
pub(crate) fn load_str_with(
    path: &Path,
    text: &str,
    env: check::EnvLookup<'_>,
    resolve: compile::Resolve<'_>,
    read: check::ReadFile<'_>,
    previous: Option<&Snapshot>,
) -> Result<Snapshot, ConfigErrors> {
    let mut report = Reporter::new(path, text);
    let file = match toml::from_str::<schema::ConfigFile>(text) {
        Ok(file) => file,
        Err(e) => {
            let span = e.span().unwrap_or(0..0);
            let field = field_for_toml_error(text, span.clone(), e.message());
            report.at(span, field, e.message());
            return Err(report.finish());
        }
    };
    match compile::compile(path, &file, &mut report, env, resolve, read, previous) {
        Some(mut snapshot) if report.is_empty() => {
            snapshot.version = version_of(text);
            Ok(snapshot)
        }
        _ => Err(report.finish()),
    }
}

/// The field path a TOML parse or type error is about, e.g. `backend[1].url`.
fn field_for_toml_error(text: &str, span: Range<usize>, message: &str) -> String {
    let mut field = match toml_edit::ImDocument::parse(text) {
        // Well-formed TOML with a wrong key or type: find the key or value at the offset.
        Ok(doc) => toml_path::in_table(doc.as_table(), span.start, "")
            .unwrap_or_else(|| toml_path::guess(text, span.start)),
        // A syntax error: no tree to search, so go by the headers and key before it.
        Err(_) => toml_path::guess(text, span.start),
    };
    // serde points a missing field at its table; name the field itself.
    if let Some(missing) = message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.split('`').next())
    {
        field = if field == toml_path::TOP_LEVEL {
            missing.to_string()
        } else {
            format!("{field}.{missing}")
        };
    }
    field
}

/// Finding the dotted path (`backend[1].url`) of a byte offset in a TOML text.
mod toml_path {
    use std::ops::Range;

    use toml_edit::{Item, Table, Value};

    /// The path used for an error outside any table or key.
    pub(super) const TOP_LEVEL: &str = "(top level)";

    fn contains(span: Option<Range<usize>>, offset: usize) -> bool {
        span.is_some_and(|s| s.start <= offset && offset < s.end.max(s.start + 1))
    }

    fn join(prefix: &str, key: &str) -> String {
        if prefix.is_empty() {
            key.to_string()
        } else {
            format!("{prefix}.{key}")
        }
    }

    /// The deepest key or value in `table` whose span holds `offset`.
    pub(super) fn in_table(table: &Table, offset: usize, prefix: &str) -> Option<String> {
        table.iter().find_map(|(name, _)| {
            let (key, item) = table.get_key_value(name)?;
            in_item(key.span(), item, offset, &join(prefix, name))
        })
    }

    fn in_item(
        key: Option<Range<usize>>,
        item: &Item,
        offset: usize,
        path: &str,
    ) -> Option<String> {
        match item {
            Item::None => None,
            Item::Value(value) => in_value(key, value, offset, path),
            Item::Table(table) => in_table(table, offset, path).or_else(|| {
                (contains(key, offset) || contains(table.span(), offset)).then(|| path.to_string())
            }),
            Item::ArrayOfTables(tables) => tables.iter().enumerate().find_map(|(i, table)| {
                let path = format!("{path}[{i}]");
                in_table(table, offset, &path)
                    .or_else(|| contains(table.span(), offset).then_some(path))
            }),
        }
    }

    fn in_value(
        key: Option<Range<usize>>,
        value: &Value,
        offset: usize,
        path: &str,
    ) -> Option<String> {
        let inner = match value {
            Value::InlineTable(table) => table.iter().find_map(|(name, _)| {
                let (key, item) = table.get_key_value(name)?;
                in_item(key.span(), item, offset, &join(path, name))
            }),
            Value::Array(array) => array
                .iter()
                .enumerate()
                .find_map(|(i, v)| in_value(None, v, offset, &format!("{path}[{i}]"))),
            _ => None,
        };
        inner.or_else(|| {
            (contains(key, offset) || contains(value.span(), offset)).then(|| path.to_string())
        })
    }

    /// A best guess for text that does not parse: the table header in force at `offset`
    /// (counting `[[…]]` repeats) and the key starting the offending line, if any.
    pub(super) fn guess(text: &str, offset: usize) -> String {
        let mut table = String::new();
        let mut repeats: std::collections::HashMap<String, usize> = Default::default();
        let mut key = None;
        let mut line_start = 0;
        for line in text.split_inclusive('\n') {
            let trimmed = line.trim();
            let is_error_line = offset < line_start + line.len();
            if let Some(header) = trimmed.strip_prefix("[[") {
                let name = header.split("]]").next().unwrap_or("").trim().to_string();
                let count = repeats.entry(name.clone()).or_insert(0);
                table = format!("{name}[{count}]");
                *count += 1;
            } else if let Some(header) = trimmed.strip_prefix('[') {
                table = header.split(']').next().unwrap_or("").trim().to_string();
            } else if is_error_line {
                key = trimmed.split_once('=').map(|(k, _)| k.trim()).filter(|k| {
                    !k.is_empty()
                        && k.chars()
                            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
                });
            }
            if is_error_line {
                break;
            }
            line_start += line.len();
        }
        match (table.is_empty(), key) {
            (_, Some(key)) => join(&table, key),
            (false, None) => table,
            (true, None) => TOP_LEVEL.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    mod access;
    mod audit;
    mod backend_tls;
    mod cache;
    mod resilience;
    mod tls_listen;

    use std::net::SocketAddr;
    use std::path::PathBuf;
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::mock::MockSettings;
    use crate::snapshot::{
        BackendKind, HeadersWithUnderscores, HttpLimits, HttpUpstream, PoolMember, ServerSettings,
        Timeouts,
    };

    const FILE: &str = "sluice.toml";

    fn env(name: &str) -> Option<String> {
        match name {
            "AOAI_KEY_1" => Some("key-one-secret".to_string()),
            "AOAI_KEY_2" => Some("key-two-secret".to_string()),
            "OPENAI_API_KEY" => Some("sk-secret".to_string()),
            "EMPTY_KEY" => Some(String::new()),
            "JWT_HS_SECRET" => Some("an-hmac-secret-of-32-bytes-or-so!".to_string()),
            "SHORT_SECRET" => Some("short".to_string()),
            _ => None,
        }
    }

    /// Real keys (the compiler parses them as the validator will): the RSA test key, as PEM
    /// and as a JWKS.
    const PEM: &str = include_str!("../auth/testdata/rsa_public.pem");
    const JWKS: &str = include_str!("../../../tests/data/jwt/rsa_jwks.json");

    /// Key files as if on disk next to `sluice.toml`.
    fn read(path: &Path) -> Result<String, String> {
        match path.to_str() {
            Some("keys/entra.pem") => Ok(PEM.to_string()),
            Some("keys/jwks.json") => Ok(JWKS.to_string()),
            Some("keys/private.pem") => {
                Ok("-----BEGIN PRIVATE KEY-----\nMIGH\n-----END PRIVATE KEY-----\n".to_string())
            }
            Some("keys/bad.json") => Ok(r#"{"keys": 3}"#.to_string()),
            Some("keys/garbled.pem") => {
                Ok("-----BEGIN PUBLIC KEY-----\nMFkw\n-----END PUBLIC KEY-----\n".to_string())
            }
            Some("keys/weak.json") => {
                Ok(r#"{"keys":[{"kty":"RSA","kid":"a","n":"sXch","e":"AQAB"}]}"#.to_string())
            }
            _ => Err("No such file or directory (os error 2)".to_string()),
        }
    }

    /// Literal IPs as themselves, two made-up names, everything else unresolvable.
    fn resolve(host: &str, port: u16) -> Result<SocketAddr, String> {
        if let Ok(ip) = host.parse::<std::net::IpAddr>() {
            return Ok(SocketAddr::new(ip, port));
        }
        match host {
            "aoai.example" => Ok(SocketAddr::from(([10, 0, 0, 1], port))),
            "aoai-moved.example" => Ok(SocketAddr::from(([10, 0, 0, 2], port))),
            _ => Err(format!("cannot resolve host `{host}`: no such host")),
        }
    }

    fn compile_with_previous(
        text: &str,
        previous: Option<&Snapshot>,
    ) -> Result<Snapshot, ConfigErrors> {
        load_str_with(Path::new(FILE), text, &env, &resolve, &read, previous)
    }

    fn compile(text: &str) -> Result<Snapshot, ConfigErrors> {
        compile_with_previous(text, None)
    }

    fn errors(text: &str) -> Vec<String> {
        match compile(text) {
            Ok(_) => panic!("config compiled but should not have:\n{text}"),
            Err(errors) => errors.0.iter().map(ToString::to_string).collect(),
        }
    }

    /// Asserts that `text` fails with exactly the one error `expected`.
    #[track_caller]
    fn assert_error(text: &str, expected: &str) {
        assert_eq!(errors(text), vec![expected.to_string()], "config:\n{text}");
    }

    const MOCK_DEPLOYMENT: &str = "[[backend]]\nname = \"m\"\nkind = \"mock\"\n\n[[deployment]]\nname = \"d\"\nbackends = [{ backend = \"m\" }]\n";

    const FULL: &str = r#"[server]
listen = ["127.0.0.1:8080", "[::1]:9090"]
workers = 3
shutdown_grace = "45s"
headers_with_underscores = "reject_request"

[server.limits]
max_request_line = 4096
max_head = 32768
max_headers = 64
max_body = 1048576
min_body_rate = 4096

[server.timeouts]
head_read = "5s"
keepalive_idle = "1m"
body_read = "1m"
body_rate_grace = "2s"
upstream_connect = "500ms"
upstream_first_byte = "2m"
stream_idle = "1h"
send = "15s"

[[backend]]
name = "mock-a"
kind = "mock"
latency = "20ms"
completion_tokens = 32
tokens_per_second = 12.5
model = "gpt-4o-mock"
embedding_dimensions = 4

[[backend]]
name = "aoai-1"
kind = "azure"
url = "http://aoai.example:18001/"
deployment = "gpt-4o-prod"
api_version = "2024-06-01"
api_key_env = "AOAI_KEY_1"

[[backend]]
name = "oai"
kind = "openai"
url = "http://127.0.0.1/proxy/openai/"
model = "gpt-4o-2024-08-06"
api_key_env = "OPENAI_API_KEY"

[[deployment]]
name = "gpt-4o"
backends = [
  { backend = "aoai-1", weight = 3, priority = 0 },
  { backend = "oai", weight = 1, priority = 1 },
]

[[deployment]]
name = "cheap"
backends = [{ backend = "mock-a" }]
"#;

    #[test]
    fn a_full_config_compiles_into_the_expected_snapshot() {
        let snapshot = compile(FULL).unwrap();
        assert_eq!(snapshot.source, PathBuf::from(FILE));
        assert_eq!(
            snapshot.server,
            ServerSettings {
                listen: vec![
                    "127.0.0.1:8080".parse().unwrap(),
                    "[::1]:9090".parse().unwrap()
                ],
                tls_listen: Vec::new(),
                tls: None,
                workers: Some(3),
                limits: HttpLimits {
                    max_request_line: 4096,
                    max_head: 32768,
                    max_headers: 64,
                    max_body: 1_048_576,
                    min_body_rate: 4096,
                },
                timeouts: Timeouts {
                    head_read: Duration::from_secs(5),
                    keepalive_idle: Duration::from_secs(60),
                    body_read: Duration::from_secs(60),
                    body_rate_grace: Duration::from_secs(2),
                    upstream_connect: Duration::from_millis(500),
                    upstream_first_byte: Duration::from_secs(120),
                    stream_idle: Duration::from_secs(3600),
                    send: Duration::from_secs(15),
                },
                shutdown_grace: Duration::from_secs(45),
                headers_with_underscores: HeadersWithUnderscores::RejectRequest,
            }
        );

        let names: Vec<_> = snapshot.backends.iter().map(|b| b.name.as_str()).collect();
        assert_eq!(names, ["mock-a", "aoai-1", "oai"]);
        let BackendKind::Mock(mock) = &snapshot.backends[0].kind else {
            panic!("mock-a is not a mock: {:?}", snapshot.backends[0].kind);
        };
        assert_eq!(
            *mock,
            MockSettings {
                latency: Duration::from_millis(20),
                completion_tokens: 32,
                tokens_per_second: 12.5,
                model: "gpt-4o-mock".to_string(),
                embedding_dimensions: 4,
            }
        );
        let BackendKind::Azure(azure) = &snapshot.backends[1].kind else {
            panic!("aoai-1 is not azure: {:?}", snapshot.backends[1].kind);
        };
        assert_eq!(
            azure.upstream,
            HttpUpstream {
                url: "http://aoai.example:18001/".to_string(),
                addr: "10.0.0.1:18001".parse().unwrap(),
                host_header: "aoai.example:18001".to_string(),
                base_path: String::new(),
                tls: None,
            }
        );
        assert_eq!(azure.deployment, "gpt-4o-prod");
        assert_eq!(azure.api_version, "2024-06-01");
        assert!(
            !azure.accepts_stream_options,
            "api-version 2024-06-01 refuses stream_options"
        );
        assert_eq!(
            azure.api_key.as_ref().map(|k| k.expose()),
            Some("key-one-secret")
        );
        let BackendKind::OpenAi(openai) = &snapshot.backends[2].kind else {
            panic!("oai is not openai: {:?}", snapshot.backends[2].kind);
        };
        assert_eq!(
            openai.upstream,
            HttpUpstream {
                url: "http://127.0.0.1/proxy/openai/".to_string(),
                addr: "127.0.0.1:80".parse().unwrap(),
                host_header: "127.0.0.1".to_string(),
                base_path: "/proxy/openai".to_string(),
                tls: None,
            }
        );
        assert_eq!(openai.model.as_deref(), Some("gpt-4o-2024-08-06"));
        assert_eq!(
            openai.api_key.as_ref().map(|k| k.expose()),
            Some("sk-secret")
        );

        assert_eq!(snapshot.deployment_order, ["gpt-4o", "cheap"]);
        assert_eq!(snapshot.deployments.len(), 2);
        let gpt4o = &snapshot.deployments["gpt-4o"];
        assert_eq!(gpt4o.name, "gpt-4o");
        assert_eq!(
            gpt4o.pool,
            [
                PoolMember {
                    backend: 1,
                    weight: 3,
                    priority: 0
                },
                PoolMember {
                    backend: 2,
                    weight: 1,
                    priority: 1
                },
            ]
        );
        assert_eq!(
            snapshot.deployments["cheap"].pool,
            [PoolMember {
                backend: 0,
                weight: 1,
                priority: 0
            }]
        );

        // Secrets stay out of debug output.
        let debug = format!("{snapshot:?}");
        assert!(
            !debug.contains("key-one-secret") && !debug.contains("sk-secret"),
            "{debug}"
        );
    }

    #[test]
    fn defaults_apply_to_everything_left_out() {
        let text = r#"
[[backend]]
name = "m"
kind = "mock"

[[backend]]
name = "a"
kind = "azure"
url = "http://127.0.0.1:18001"
deployment = "gpt-4o"

[[backend]]
name = "o"
kind = "openai"
url = "http://127.0.0.1:9000"

[[deployment]]
name = "d"
backends = [{ backend = "m" }, { backend = "a" }, { backend = "o" }]
"#;
        let snapshot = compile(text).unwrap();
        assert_eq!(snapshot.server, ServerSettings::default());
        // The defaults themselves, as the README's config reference states them.
        let server = &snapshot.server;
        assert_eq!(
            server.listen,
            vec![SocketAddr::from(([127, 0, 0, 1], 8080))]
        );
        assert_eq!(server.workers, None);
        assert_eq!(server.shutdown_grace, Duration::from_secs(30));
        assert_eq!(
            server.headers_with_underscores,
            HeadersWithUnderscores::DropHeader
        );
        let l = &server.limits;
        assert_eq!(
            (
                l.max_request_line,
                l.max_head,
                l.max_headers,
                l.max_body,
                l.min_body_rate
            ),
            (8192, 65536, 100, 32 * 1024 * 1024, 1024)
        );
        let t = &server.timeouts;
        let secs = Duration::from_secs;
        assert_eq!(
            [
                t.head_read,
                t.keepalive_idle,
                t.body_read,
                t.body_rate_grace,
                t.upstream_connect,
                t.upstream_first_byte,
                t.stream_idle,
                t.send
            ],
            [
                secs(10),
                secs(75),
                secs(30),
                secs(5),
                secs(5),
                secs(120),
                secs(300),
                secs(60)
            ]
        );
        let BackendKind::Mock(mock) = &snapshot.backends[0].kind else {
            panic!("not a mock");
        };
        assert_eq!(
            *mock,
            MockSettings {
                latency: Duration::ZERO,
                completion_tokens: 16,
                tokens_per_second: 0.0,
                model: "sluice-mock".to_string(),
                embedding_dimensions: 8,
            }
        );
        let BackendKind::Azure(azure) = &snapshot.backends[1].kind else {
            panic!("not azure");
        };
        assert_eq!(azure.api_version, "2024-10-21");
        assert!(azure.api_key.is_none());
        assert!(
            azure.accepts_stream_options,
            "the default api-version takes it"
        );
        let BackendKind::OpenAi(openai) = &snapshot.backends[2].kind else {
            panic!("not openai");
        };
        assert!(openai.model.is_none() && openai.api_key.is_none());
        assert!(openai.accepts_stream_options);
        assert!(snapshot.deployments["d"]
            .pool
            .iter()
            .all(|m| m.weight == 1 && m.priority == 0));
    }

    #[test]
    fn workers_zero_means_one_per_core() {
        let snapshot = compile(&format!("[server]\nworkers = 0\n{MOCK_DEPLOYMENT}")).unwrap();
        assert_eq!(snapshot.server.workers, None);
    }

    #[test]
    fn a_syntax_error_is_one_located_error() {
        assert_error(
            "[server]\nlisten = [\"127.0.0.1:8080\"\nworkers = 2\n",
            "sluice.toml:3:1: server.workers: invalid array; expected `]`",
        );
        assert_error(
            "[[backend]]\nname = \"m\"\nkind = mock\n",
            "sluice.toml:3:8: backend[0].kind: invalid string; expected `\"`, `'`",
        );
    }

    #[test]
    fn unknown_keys_name_their_path() {
        let text = MOCK_DEPLOYMENT.replace("kind = \"mock\"", "kind = \"mock\"\nlatencyy = \"1s\"");
        assert_error(
            &text,
            "sluice.toml:4:1: backend[0].latencyy: unknown field `latencyy`, expected one of `name`, `kind`, `latency`, `completion_tokens`, `tokens_per_second`, `embedding_dimensions`, `model`, `url`, `api_key_env`, `stream_options`, `ca_file`, `server_name`, `insecure_skip_verify`, `deployment`, `api_version`, `health_check`",
        );
        let text =
            MOCK_DEPLOYMENT.replace("{ backend = \"m\" }", "{ backend = \"m\", wieght = 2 }");
        assert_error(
            &text,
            "sluice.toml:7:30: deployment[0].backends[0].wieght: unknown field `wieght`, expected one of `backend`, `weight`, `priority`",
        );
        assert_error(
            &format!("[server.limit]\nmax_body = 1\n{MOCK_DEPLOYMENT}"),
            "sluice.toml:1:9: server.limit: unknown field `limit`, expected one of `listen`, `tls_listen`, `tls`, `workers`, `shutdown_grace`, `limits`, `timeouts`, `trace_header`, `client_ip_limits`, `headers_with_underscores`",
        );
    }

    #[test]
    fn wrong_types_and_missing_fields_name_their_path() {
        assert_error(
            &format!("[server.limits]\nmax_headers = \"many\"\n{MOCK_DEPLOYMENT}"),
            "sluice.toml:2:15: server.limits.max_headers: invalid type: string \"many\", expected usize",
        );
        assert_error(
            &format!("[server]\nlisten = \"127.0.0.1:8080\"\n{MOCK_DEPLOYMENT}"),
            "sluice.toml:2:10: server.listen: invalid type: string \"127.0.0.1:8080\", expected a sequence",
        );
        assert_error(
            &MOCK_DEPLOYMENT.replace("{ backend = \"m\" }", "{ backend = \"m\", weight = -1 }"),
            "sluice.toml:7:39: deployment[0].backends[0].weight: invalid value: integer `-1`, expected u32",
        );
        assert_error(
            &format!("{MOCK_DEPLOYMENT}\n[[backend]]\nkind = \"mock\"\n"),
            "sluice.toml:9:1: backend[1].name: missing field `name`",
        );
        assert_error(
            &MOCK_DEPLOYMENT.replace("{ backend = \"m\" }", "{ weight = 2 }"),
            "sluice.toml:7:13: deployment[0].backends[0].backend: missing field `backend`",
        );
    }

    #[test]
    fn duplicate_names_point_at_the_second_one() {
        assert_error(
            &format!("{MOCK_DEPLOYMENT}\n[[backend]]\nname = \"m\"\nkind = \"mock\"\n"),
            "sluice.toml:10:8: backend[1].name: duplicate backend name `m` (first defined on line 2)",
        );
        assert_error(
            &format!("{MOCK_DEPLOYMENT}\n[[deployment]]\nname = \"d\"\nbackends = [{{ backend = \"m\" }}]\n"),
            "sluice.toml:10:8: deployment[1].name: duplicate deployment name `d` (first defined on line 6)",
        );
    }

    #[test]
    fn pool_entries_are_checked() {
        assert_error(
            &MOCK_DEPLOYMENT.replace(
                "{ backend = \"m\" }",
                "{ backend = \"m\" }, { backend = \"nope\" }",
            ),
            "sluice.toml:7:44: deployment[0].backends[1].backend: unknown backend `nope`",
        );
        assert_error(
            &MOCK_DEPLOYMENT.replace("{ backend = \"m\" }", "{ backend = \"m\", weight = 0 }"),
            "sluice.toml:7:39: deployment[0].backends[0].weight: must be 1 or more (remove the entry to stop using a backend)",
        );
        assert_error(
            &MOCK_DEPLOYMENT.replace("{ backend = \"m\" }", "{ backend = \"m\" }, { backend = \"m\" }"),
            "sluice.toml:7:44: deployment[0].backends[1].backend: backend `m` is listed twice in this deployment",
        );
        assert_error(
            &MOCK_DEPLOYMENT.replace("[{ backend = \"m\" }]", "[]"),
            "sluice.toml:7:12: deployment[0].backends: a deployment needs at least one backend",
        );
        assert_error(
            &MOCK_DEPLOYMENT.replace("backends = [{ backend = \"m\" }]\n", ""),
            "sluice.toml:5:1: deployment[0].backends: missing: a deployment needs at least one backend, e.g. backends = [{ backend = \"mock-a\" }]",
        );
    }

    #[test]
    fn a_config_without_deployments_is_refused() {
        assert_error(
            "[[backend]]\nname = \"m\"\nkind = \"mock\"\n",
            "sluice.toml:1:1: deployment: no deployments: add at least one [[deployment]] naming the backends that serve it",
        );
    }

    #[test]
    fn fields_of_another_kind_are_refused() {
        assert_error(
            &MOCK_DEPLOYMENT.replace("kind = \"mock\"", "kind = \"mock\"\nurl = \"http://127.0.0.1:1\""),
            "sluice.toml:4:7: backend[0].url: `url` does not apply to a mock backend (mock backends take: latency, completion_tokens, tokens_per_second, model, embedding_dimensions)",
        );
        assert_error(
            &MOCK_DEPLOYMENT.replace(
                "kind = \"mock\"",
                "kind = \"azure\"\nurl = \"http://127.0.0.1:1\"\ndeployment = \"x\"\nlatency = \"1s\"",
            ),
            "sluice.toml:6:11: backend[0].latency: `latency` does not apply to an azure backend (azure backends take: url, deployment, api_version, api_key_env, stream_options, ca_file, server_name, insecure_skip_verify)",
        );
        assert_error(
            &MOCK_DEPLOYMENT.replace(
                "kind = \"mock\"",
                "kind = \"openai\"\nurl = \"http://127.0.0.1:1\"\ndeployment = \"x\"",
            ),
            "sluice.toml:5:14: backend[0].deployment: `deployment` does not apply to an openai backend (openai backends take: url, model, api_key_env, stream_options, ca_file, server_name, insecure_skip_verify)",
        );
        assert_error(
            &MOCK_DEPLOYMENT.replace("kind = \"mock\"", "kind = \"bedrock\""),
            "sluice.toml:3:8: backend[0].kind: unknown backend kind `bedrock`: expected \"mock\", \"azure\" or \"openai\"",
        );
    }

    #[test]
    fn required_fields_of_a_kind_are_named() {
        assert_error(
            &MOCK_DEPLOYMENT.replace("kind = \"mock\"", "kind = \"azure\"\ndeployment = \"x\""),
            "sluice.toml:1:1: backend[0].url: missing: an azure backend needs `url`, e.g. \"http://127.0.0.1:9000\"",
        );
        assert_error(
            &MOCK_DEPLOYMENT.replace("kind = \"mock\"", "kind = \"azure\"\nurl = \"http://127.0.0.1:1\""),
            "sluice.toml:1:1: backend[0].deployment: missing: an azure backend needs `deployment`, the deployment name on that resource",
        );
        assert_error(
            &MOCK_DEPLOYMENT.replace("kind = \"mock\"", "kind = \"openai\""),
            "sluice.toml:1:1: backend[0].url: missing: an openai backend needs `url`, e.g. \"http://127.0.0.1:9000\"",
        );
    }

    fn openai_with_url(url: &str) -> String {
        MOCK_DEPLOYMENT.replace(
            "kind = \"mock\"",
            &format!("kind = \"openai\"\nurl = \"{url}\""),
        )
    }

    #[test]
    fn urls_must_be_http_or_https_and_resolve() {
        assert_error(
            &openai_with_url("127.0.0.1:9000"),
            "sluice.toml:4:7: backend[0].url: expected a URL of the form http[s]://host[:port][/path]",
        );
        assert_error(
            &openai_with_url("http://127.0.0.1:http"),
            "sluice.toml:4:7: backend[0].url: expected a URL of the form http[s]://host[:port][/path]: `http` is not a port (1-65535)",
        );
        assert_error(
            &openai_with_url("http://nowhere.invalid:9000"),
            "sluice.toml:4:7: backend[0].url: cannot resolve host `nowhere.invalid`: no such host",
        );
    }

    #[test]
    fn errors_in_an_assembled_document_name_their_file_and_scope() {
        let backends = "[[backend]]\nname = \"m\"\nkind = \"openai\"\nurl = \"http://127.0.0.1:9000\"\napi_key_env = \"NOT_SET_ANYWHERE\"\n";
        let deployments = "\n[[deployment]]\nname = \"d\"\nbackends = [{ backend = \"nope\" }]\n";
        let doc = assemble([
            ("backends.toml", backends),
            ("deployments.toml", deployments),
        ])
        .unwrap();
        let ConfigErrors(found) = compile(&doc).unwrap_err();
        let shown: Vec<(String, Scope)> = found.iter().map(|e| (e.to_string(), e.scope)).collect();
        assert_eq!(
            shown,
            [
                (
                    "backends.toml:5:15: backend[0].api_key_env: environment variable `NOT_SET_ANYWHERE` is not set".to_string(),
                    Scope::Host
                ),
                (
                    "deployments.toml:4:25: deployment[0].backends[0].backend: unknown backend `nope`".to_string(),
                    Scope::Document
                ),
            ]
        );
        // A syntax error in the assembled text lands in its file too.
        let doc = assemble([("a.toml", "[server]\n"), ("b.toml", "[server]\n")]).unwrap();
        let errors = errors(&doc);
        assert!(errors[0].starts_with("b.toml:1:1: "), "{errors:?}");
    }

    #[test]
    fn a_document_is_refused_for_its_own_errors_only() {
        // This process lacks the variable: the node that has it compiles the document.
        let text = openai_with_url("http://127.0.0.1:9000").replace(
            "kind = \"openai\"",
            "kind = \"openai\"\napi_key_env = \"SLUICE_TEST_UNSET_VARIABLE\"",
        );
        let host = check_document(Path::new(FILE), &text).unwrap();
        assert_eq!(host.len(), 1);
        assert_eq!(host[0].scope, Scope::Host);
        assert!(host[0].message.contains("SLUICE_TEST_UNSET_VARIABLE"));
        let bad = text.replace("name = \"d\"", "name = \"\"");
        let ConfigErrors(refused) = check_document(Path::new(FILE), &bad).unwrap_err();
        assert!(
            refused.iter().all(|e| e.scope == Scope::Document),
            "{refused:?}"
        );
        assert_eq!(refused[0].field, "deployment[0].name");
    }

    #[test]
    fn api_keys_come_from_set_non_empty_variables_and_never_show() {
        let with_key = |var: &str| {
            openai_with_url("http://127.0.0.1:9000").replace(
                "kind = \"openai\"",
                &format!("kind = \"openai\"\napi_key_env = \"{var}\""),
            )
        };
        assert_error(
            &with_key("NOT_SET_ANYWHERE"),
            "sluice.toml:4:15: backend[0].api_key_env: environment variable `NOT_SET_ANYWHERE` is not set",
        );
        assert_error(
            &with_key("EMPTY_KEY"),
            "sluice.toml:4:15: backend[0].api_key_env: environment variable `EMPTY_KEY` is empty",
        );
        // A key that loads never reaches an error about the same backend.
        let text = with_key("OPENAI_API_KEY").replace("http://127.0.0.1:9000", "https://x");
        assert!(errors(&text).iter().all(|e| !e.contains("sk-secret")));
    }

    #[test]
    fn server_settings_are_checked() {
        let with_server = |server: &str| format!("{server}\n{MOCK_DEPLOYMENT}");
        assert_error(
            &with_server("[server]\nlisten = [\"127.0.0.1:8080\", \"localhost:80\"]"),
            "sluice.toml:2:29: server.listen[1]: `localhost:80` is not an IP address and port, e.g. \"127.0.0.1:8080\" or \"[::1]:8080\"",
        );
        assert_error(
            &with_server("[server]\nlisten = []"),
            "sluice.toml:2:10: server.listen: needs at least one address, e.g. [\"127.0.0.1:8080\"]",
        );
        for (value, message) in [("0", "not 0"), ("257", "not 257")] {
            assert_error(
                &with_server(&format!("[server.limits]\nmax_headers = {value}")),
                &format!("sluice.toml:2:15: server.limits.max_headers: must be between 1 and 256, {message}"),
            );
        }
        assert!(compile(&with_server("[server.limits]\nmax_headers = 256")).is_ok());
        for field in ["max_request_line", "max_head", "max_body"] {
            let column = field.len() + 4;
            assert_error(
                &with_server(&format!("[server.limits]\n{field} = 0")),
                &format!("sluice.toml:2:{column}: server.limits.{field}: must be greater than 0"),
            );
        }
        assert_error(
            &with_server("[server.timeouts]\nhead_read = \"0s\""),
            "sluice.toml:2:13: server.timeouts.head_read: must be longer than 0",
        );
        assert_error(
            &with_server("[server.timeouts]\nbody_read = \"0s\""),
            "sluice.toml:2:13: server.timeouts.body_read: must be longer than 0",
        );
        assert_error(
            &with_server("[server.timeouts]\nbody_rate_grace = \"soon\""),
            "sluice.toml:2:19: server.timeouts.body_rate_grace: invalid duration `soon`: expected a whole number and a unit (ms, s, m or h), e.g. \"500ms\", \"10s\", \"5m\"",
        );
        // 0 turns the rate check off; the defaults are 30 s, 5 s and 1024 B/s.
        let off = compile(&with_server("[server.limits]\nmin_body_rate = 0")).unwrap();
        assert_eq!(off.server.limits.min_body_rate, 0);
        let defaults = compile(&with_server("")).unwrap();
        assert_eq!(defaults.server.timeouts.body_read, Duration::from_secs(30));
        assert_eq!(
            defaults.server.timeouts.body_rate_grace,
            Duration::from_secs(5)
        );
        assert_eq!(defaults.server.limits.min_body_rate, 1024);
        assert_error(
            &with_server("[server]\nheaders_with_underscores = \"drop\""),
            "sluice.toml:2:28: server.headers_with_underscores: `drop` is not one of \"drop_header\", \"reject_request\", \"allow\"",
        );
        for (text, action) in [
            ("drop_header", HeadersWithUnderscores::DropHeader),
            ("reject_request", HeadersWithUnderscores::RejectRequest),
            ("allow", HeadersWithUnderscores::Allow),
        ] {
            let config = with_server(&format!("[server]\nheaders_with_underscores = \"{text}\""));
            let snapshot = compile(&config).unwrap();
            assert_eq!(snapshot.server.headers_with_underscores, action);
        }
        let snapshot = compile(&with_server("")).unwrap();
        assert_eq!(
            snapshot.server.headers_with_underscores,
            HeadersWithUnderscores::DropHeader
        );
        assert_error(
            &with_server("[server]\nshutdown_grace = \"30 seconds\""),
            "sluice.toml:2:18: server.shutdown_grace: invalid duration `30 seconds`: expected a whole number and a unit (ms, s, m or h), e.g. \"500ms\", \"10s\", \"5m\"",
        );
        assert_error(
            &MOCK_DEPLOYMENT.replace("kind = \"mock\"", "kind = \"mock\"\nlatency = \"fast\""),
            "sluice.toml:4:11: backend[0].latency: invalid duration `fast`: expected a whole number and a unit (ms, s, m or h), e.g. \"500ms\", \"10s\", \"5m\"",
        );
    }

    #[test]
    fn every_semantic_error_is_reported_in_file_order() {
        let text = r#"[server]
listen = ["nope"]

[server.limits]
max_headers = 1000

[[backend]]
name = "a"
kind = "azure"
url = "ftp://aoai.example"
api_key_env = "MISSING"
latency = "1s"

[[backend]]
name = "a"
kind = "mock"

[[deployment]]
name = "d"
backends = [{ backend = "a", weight = 0 }, { backend = "b" }]
"#;
        assert_eq!(
            errors(text),
            [
                "sluice.toml:2:11: server.listen[0]: `nope` is not an IP address and port, e.g. \"127.0.0.1:8080\" or \"[::1]:8080\"",
                "sluice.toml:5:15: server.limits.max_headers: must be between 1 and 256, not 1000",
                "sluice.toml:7:1: backend[0].deployment: missing: an azure backend needs `deployment`, the deployment name on that resource",
                "sluice.toml:10:7: backend[0].url: expected a URL of the form http[s]://host[:port][/path]",
                "sluice.toml:11:15: backend[0].api_key_env: environment variable `MISSING` is not set",
                "sluice.toml:12:11: backend[0].latency: `latency` does not apply to an azure backend (azure backends take: url, deployment, api_version, api_key_env, stream_options, ca_file, server_name, insecure_skip_verify)",
                "sluice.toml:15:8: backend[1].name: duplicate backend name `a` (first defined on line 8)",
                "sluice.toml:20:39: deployment[0].backends[0].weight: must be 1 or more (remove the entry to stop using a backend)",
                "sluice.toml:20:56: deployment[0].backends[1].backend: unknown backend `b`",
            ]
        );
    }

    const HEALTH: &str = r#"
[[backend]]
name = "m"
kind = "mock"

[[backend]]
name = "a"
kind = "azure"
url = "http://aoai.example:18001"
deployment = "gpt-4o"

[[deployment]]
name = "d"
backends = [{ backend = "m" }, { backend = "a" }]
"#;

    #[test]
    fn health_carries_over_for_unchanged_backends_only() {
        let first = compile(HEALTH).unwrap();
        first.backends[1]
            .health
            .cool_down(1_000, Duration::from_secs(5));

        let same = compile_with_previous(HEALTH, Some(&first)).unwrap();
        for (old, new) in first.backends.iter().zip(&same.backends) {
            assert!(
                Arc::ptr_eq(&old.health, &new.health),
                "{} lost its health",
                new.name
            );
        }
        assert!(!same.backends[1].health.is_usable(2_000));

        // A changed mock knob keeps the mock's health; a new URL starts the azure one afresh.
        let moved = HEALTH
            .replace("aoai.example:18001", "aoai-moved.example:18001")
            .replace("kind = \"mock\"", "kind = \"mock\"\nlatency = \"5ms\"");
        let after_move = compile_with_previous(&moved, Some(&same)).unwrap();
        assert!(Arc::ptr_eq(
            &same.backends[0].health,
            &after_move.backends[0].health
        ));
        assert!(!Arc::ptr_eq(
            &same.backends[1].health,
            &after_move.backends[1].health
        ));
        assert!(after_move.backends[1].health.is_usable(2_000));

        // So does a rename, or another deployment on the same resource.
        let renamed =
            compile_with_previous(&HEALTH.replace("\"a\"", "\"a2\""), Some(&first)).unwrap();
        assert!(!Arc::ptr_eq(
            &first.backends[1].health,
            &renamed.backends[1].health
        ));
        let redeployed =
            compile_with_previous(&HEALTH.replace("\"gpt-4o\"", "\"gpt-4o-b\""), Some(&first))
                .unwrap();
        assert!(!Arc::ptr_eq(
            &first.backends[1].health,
            &redeployed.backends[1].health
        ));
    }

    fn example(name: &str) -> (PathBuf, String) {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../examples")
            .join(name);
        let text = std::fs::read_to_string(&path).unwrap();
        (path, text)
    }

    #[test]
    fn the_quickstart_example_compiles() {
        let (path, text) = example("quickstart.toml");
        let snapshot = load_str(&path, &text, &|_| None, None).unwrap();
        assert_eq!(
            snapshot.server.listen,
            ["127.0.0.1:8080".parse::<SocketAddr>().unwrap()]
        );
        assert_eq!(
            snapshot.deployment_order,
            ["gpt-4o-mini", "gpt-4o", "text-embedding-3-small"]
        );
        let pool = &snapshot.deployments["gpt-4o-mini"].pool;
        let members: Vec<_> = pool
            .iter()
            .map(|m| (snapshot.backends[m.backend].name.as_str(), m.weight))
            .collect();
        assert_eq!(members, [("mock-a", 1), ("mock-b", 1)]);
        assert!(snapshot
            .backends
            .iter()
            .all(|b| matches!(b.kind, BackendKind::Mock(_))));
        // load() reads the same file from disk.
        assert_eq!(
            load(&path, None).unwrap().deployment_order,
            snapshot.deployment_order
        );
        access::assert_demo_access(&snapshot, true);
    }

    #[test]
    fn the_pool_example_compiles_with_its_resources_and_keys_set() {
        let (path, text) = example("pool.toml");
        // As shipped, the placeholders stop it with a located error on each URL.
        let unfilled = load_str_with(&path, &text, &env, &resolve, &read, None).unwrap_err();
        assert_eq!(unfilled.0.len(), 2, "{unfilled}");
        assert!(unfilled
            .to_string()
            .contains("`<resource-1>.openai.azure.com` is not a host name or IP address"));
        let text = text
            .replace("<resource-1>", "aoai")
            .replace("<resource-2>", "aoai-moved");
        // The two resources as the test resolver's two made-up hosts.
        let resolve_example =
            |host: &str, port: u16| resolve(&host.replace(".openai.azure.com", ".example"), port);
        let snapshot = load_str_with(&path, &text, &env, &resolve_example, &read, None).unwrap();
        assert_eq!(snapshot.deployment_order, ["gpt-4o"]);
        let ports: Vec<_> = snapshot.deployments["gpt-4o"]
            .pool
            .iter()
            .map(|m| {
                assert_eq!(m.weight, 1);
                let BackendKind::Azure(azure) = &snapshot.backends[m.backend].kind else {
                    panic!("not azure");
                };
                assert_eq!(
                    (azure.deployment.as_str(), azure.api_version.as_str()),
                    ("gpt-4o", "2024-10-21")
                );
                assert!(azure.api_key.is_some());
                // TLS to the resource's own name, checked against the public roots.
                let tls = azure.upstream.tls.as_ref().unwrap();
                assert_eq!(tls.trust, crate::tls::client::Trust::WebPki);
                assert_eq!(tls.server_name.to_str(), azure.upstream.host_header);
                azure.upstream.addr
            })
            .collect();
        assert_eq!(
            ports,
            [
                "10.0.0.1:443".parse::<SocketAddr>().unwrap(),
                "10.0.0.2:443".parse().unwrap()
            ]
        );
        access::assert_demo_access(&snapshot, false);
        // Without the keys it names both variables.
        let errors =
            load_str_with(&path, &text, &|_| None, &resolve_example, &read, None).unwrap_err();
        assert_eq!(errors.0.len(), 2);
        assert!(errors.to_string().contains("`AOAI_KEY_2` is not set"));
    }

    #[test]
    fn load_str_resolves_host_names_with_the_system_resolver() {
        let text = openai_with_url("http://localhost:9000/v1/");
        let snapshot = load_str(Path::new(FILE), &text, &|_| None, None).unwrap();
        let BackendKind::OpenAi(openai) = &snapshot.backends[0].kind else {
            panic!("not openai");
        };
        assert!(openai.upstream.addr.ip().is_loopback());
        assert_eq!(openai.upstream.addr.port(), 9000);
        assert_eq!(openai.upstream.host_header, "localhost:9000");
        assert_eq!(openai.upstream.base_path, "/v1");
    }

    #[test]
    fn an_unreadable_file_is_one_error() {
        let errors = load(Path::new("/nonexistent/sluice.toml"), None).unwrap_err();
        assert_eq!(errors.0.len(), 1);
        assert!(errors
            .to_string()
            .starts_with("/nonexistent/sluice.toml:1:1: (file): cannot read the config file:"));
    }

    /// `stream_options` per backend: `auto` by kind and api-version, overrides both ways on
    /// azure and openai backends, a located error for a bad value or a mock backend.
    #[test]
    fn stream_options_resolves_per_backend() {
        let backend = |kind_lines: &str, setting: Option<&str>| {
            let setting = setting.map_or(String::new(), |v| format!("stream_options = \"{v}\"\n"));
            format!(
                "[[backend]]\nname = \"b\"\n{kind_lines}{setting}\n[[deployment]]\nname = \"d\"\nbackends = [{{ backend = \"b\" }}]\n"
            )
        };
        let accepts = |text: &str| match &compile(text).unwrap().backends[0].kind {
            BackendKind::Azure(a) => a.accepts_stream_options,
            BackendKind::OpenAi(o) => o.accepts_stream_options,
            other => panic!("not http: {other:?}"),
        };
        let azure = |version: &str| {
            format!("kind = \"azure\"\nurl = \"http://127.0.0.1:1\"\ndeployment = \"x\"\napi_version = \"{version}\"\n")
        };
        let openai = "kind = \"openai\"\nurl = \"http://127.0.0.1:1\"\n";
        assert!(!accepts(&backend(&azure("2024-06-01"), None)));
        assert!(!accepts(&backend(&azure("2024-06-01"), Some("auto"))));
        assert!(accepts(&backend(&azure("2024-06-01"), Some("supported"))));
        assert!(!accepts(&backend(&azure("2024-08-01-preview"), None)));
        assert!(accepts(&backend(&azure("2024-09-01-preview"), None)));
        assert!(accepts(&backend(&azure("2024-10-21"), None)));
        assert!(!accepts(&backend(
            &azure("2024-10-21"),
            Some("unsupported")
        )));
        assert!(!accepts(&backend(&azure("latest"), None)));
        assert!(accepts(&backend(openai, None)));
        assert!(!accepts(&backend(openai, Some("unsupported"))));
        assert!(accepts(&backend(openai, Some("supported"))));

        assert_error(
            &backend(openai, Some("yes")),
            "sluice.toml:5:18: backend[0].stream_options: unknown stream_options `yes`: expected \"auto\", \"supported\" or \"unsupported\"",
        );
        assert_error(
            &backend(&azure("2024-06-01"), Some("Supported")),
            "sluice.toml:7:18: backend[0].stream_options: unknown stream_options `Supported`: expected \"auto\", \"supported\" or \"unsupported\"",
        );
        assert_error(
            &backend("kind = \"mock\"\n", Some("supported")),
            "sluice.toml:4:18: backend[0].stream_options: `stream_options` does not apply to a mock backend (mock backends take: latency, completion_tokens, tokens_per_second, model, embedding_dimensions)",
        );
        assert_eq!(
            errors(&backend(openai, Some("1"))).len(),
            1,
            "one error for a bad value"
        );
    }
}
