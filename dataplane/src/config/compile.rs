//! From the parsed file ([`super::schema`]) to a [`Snapshot`]: defaults, semantic checks,
//! URL parsing and name resolution, secrets from the environment, and backend health carried
//! over from the previous snapshot.
//!
//! Every check runs even after one fails, so a single `--check` lists every problem. The
//! environment, the resolver and key-file reading are parameters: the compiler itself does
//! no I/O. Products, subscriptions, JWT issuers and limits are compiled by
//! [`super::access`].

use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use toml::Spanned;

use super::access::compile_access;
use super::check::{check_not_empty, line_of, parse_duration, EnvLookup, ReadFile};
use super::error::Reporter;
use super::schema::{BackendSection, ConfigFile, DeploymentSection, ServerSection};
use crate::health::BackendHealth;
use crate::http::url::{parse_http_url, HttpUrl, URL_FORM};
use crate::mock::MockSettings;
use crate::snapshot::{
    AzureBackend, Backend, BackendKind, Deployment, HeadersWithUnderscores, HttpLimits,
    HttpUpstream, OpenAiBackend, PoolMember, Secret, ServerSettings, Snapshot, Timeouts,
    TokenSettings,
};
use crate::tls::client::{client_config, Trust, UpstreamTls};
use crate::tokens::stream_options::{azure_accepts_stream_options, StreamOptions};
use rustls::pki_types::ServerName;
use rustls::ClientConfig;

/// The `api-version` sent to Azure when the config names none.
pub const DEFAULT_AZURE_API_VERSION: &str = "2024-10-21";
/// The model a mock reports when the request names none.
pub const DEFAULT_MOCK_MODEL: &str = "sluice-mock";
/// Completion tokens per mock answer by default.
pub const DEFAULT_MOCK_COMPLETION_TOKENS: u32 = 16;
/// Length of a mock embedding vector by default.
pub const DEFAULT_MOCK_EMBEDDING_DIMENSIONS: usize = 8;

/// Resolves a host and port to the address to connect to, or says why it cannot.
pub(crate) type Resolve<'a> = &'a dyn Fn(&str, u16) -> Result<SocketAddr, String>;

/// Resolves with the system resolver (`ToSocketAddrs`), taking the first address.
pub(crate) fn system_resolve(host: &str, port: u16) -> Result<SocketAddr, String> {
    match (host, port).to_socket_addrs() {
        Ok(mut addrs) => addrs
            .next()
            .ok_or_else(|| format!("host `{host}` resolved to no addresses")),
        Err(e) => Err(format!("cannot resolve host `{host}`: {e}")),
    }
}

/// Checks `file` and builds the snapshot, or records every problem in `report` and returns
/// `None`.
pub(crate) fn compile(
    source: &Path,
    file: &ConfigFile,
    report: &mut Reporter<'_>,
    env: EnvLookup<'_>,
    resolve: Resolve<'_>,
    read: ReadFile<'_>,
    previous: Option<&Snapshot>,
) -> Option<Snapshot> {
    let mut server = compile_server(&file.server, report);
    let (tls_listen, tls) = super::tls::compile(
        source,
        file.server.tls_listen.as_ref(),
        file.server.tls.as_ref(),
        report,
        read,
    );
    if file.server.listen.is_none() && !tls_listen.is_empty() {
        // HTTPS only: the plain default listener is not added beside it.
        server.listen.clear();
    }
    server.tls_listen = tls_listen;
    server.tls = tls.map(Arc::new);
    let mut tls = TlsInputs {
        source,
        read,
        configs: TlsConfigs::carried_from(previous),
    };

    let mut backend_ids: HashMap<&str, usize> = HashMap::new();
    let mut kinds = Vec::with_capacity(file.backend.len());
    let mut health_checks = Vec::with_capacity(file.backend.len());
    for (i, section) in file.backend.iter().enumerate() {
        let field = format!("backend[{i}]");
        let name = &section.get_ref().name;
        check_not_empty(report, name, &format!("{field}.name"));
        if let Some(&first) = backend_ids.get(name.get_ref().as_str()) {
            let first_line = line_of(report, &file.backend[first].get_ref().name);
            report.at(
                name.span(),
                format!("{field}.name"),
                format!(
                    "duplicate backend name `{}` (first defined on line {first_line})",
                    name.get_ref()
                ),
            );
        } else {
            backend_ids.insert(name.get_ref(), i);
        }
        kinds.push(compile_backend(
            section, &field, report, env, resolve, &mut tls,
        ));
        health_checks.push(super::resilience::compile_health_check(
            section.get_ref(),
            &field,
            report,
        ));
    }

    let mut deployments = compile_deployments(&file.deployment, &backend_ids, report);
    let access = compile_access(source, file, &mut deployments, report, env, read);
    let audit = super::audit::compile(file.audit.as_ref(), report);
    let admin_listen = super::admin::compile(file.admin.as_ref(), &server, report);

    if !report.is_empty() {
        return None;
    }

    let backends = file
        .backend
        .iter()
        .zip(kinds)
        .zip(health_checks)
        .filter_map(|((section, kind), health_check)| {
            let name = section.get_ref().name.get_ref().clone();
            let kind = kind?;
            let health = carried_health(previous, &name, &kind)
                .unwrap_or_else(|| Arc::new(BackendHealth::default()));
            Some(Backend {
                name,
                kind,
                health,
                health_check,
            })
        })
        .collect::<Vec<_>>();
    if backends.len() != file.backend.len() {
        // A backend without a compiled kind always reports an error; this is unreachable.
        return None;
    }
    warn_insecure(&backends);
    super::cache::carry_over(&mut deployments, &backends, previous);
    let deployment_order = deployments.iter().map(|d| d.name.clone()).collect();
    let deployments = deployments
        .into_iter()
        .map(|d| (d.name.clone(), d))
        .collect();
    Some(Snapshot {
        source: source.to_path_buf(),
        server,
        backends,
        deployments,
        deployment_order,
        access,
        audit,
        admin_listen,
        version: String::new(),
    })
}

/// The previous snapshot's health for a backend that keeps its name, kind and target, so a
/// cool-down in force survives a reload; a backend that now points elsewhere starts fresh.
fn carried_health(
    previous: Option<&Snapshot>,
    name: &str,
    kind: &BackendKind,
) -> Option<Arc<BackendHealth>> {
    previous?
        .backends
        .iter()
        .find(|old| old.name == name && same_target(&old.kind, kind))
        .map(|old| Arc::clone(&old.health))
}

fn same_target(a: &BackendKind, b: &BackendKind) -> bool {
    match (a, b) {
        (BackendKind::Mock(_), BackendKind::Mock(_)) => true,
        // Azure rate limits are per deployment, so another deployment is another target.
        (BackendKind::Azure(a), BackendKind::Azure(b)) => {
            same_upstream(&a.upstream, &b.upstream) && a.deployment == b.deployment
        }
        (BackendKind::OpenAi(a), BackendKind::OpenAi(b)) => same_upstream(&a.upstream, &b.upstream),
        _ => false,
    }
}

/// Whether two backends give the same answers to the same request: the same target, and
/// the same model (`openai`) or API version (`azure`), or the same mock settings. What a
/// response cache stored from one may be served for the other.
pub(super) fn same_answers(a: &BackendKind, b: &BackendKind) -> bool {
    match (a, b) {
        (BackendKind::Mock(a), BackendKind::Mock(b)) => a == b,
        (BackendKind::Azure(x), BackendKind::Azure(y)) => {
            same_target(a, b) && x.api_version == y.api_version
        }
        (BackendKind::OpenAi(x), BackendKind::OpenAi(y)) => same_target(a, b) && x.model == y.model,
        _ => false,
    }
}

fn same_upstream(a: &HttpUpstream, b: &HttpUpstream) -> bool {
    a.url == b.url && a.addr == b.addr && a.tls == b.tls
}

/// Logs, at every load, each backend whose certificate is not checked.
fn warn_insecure(backends: &[Backend]) {
    for backend in backends {
        let upstream = match &backend.kind {
            BackendKind::Azure(a) => &a.upstream,
            BackendKind::OpenAi(o) => &o.upstream,
            BackendKind::Mock(_) => continue,
        };
        if upstream
            .tls
            .as_ref()
            .is_some_and(|t| t.trust == Trust::Insecure)
        {
            tracing::warn!(
                backend = %backend.name,
                "INSECURE: insecure_skip_verify = true: the TLS certificate of backend `{}` is NOT verified; anyone on the network path can impersonate it and read its traffic, API keys included",
                backend.name
            );
        }
    }
}

/// What compiling an `https://` upstream needs besides its section: where `ca_file`s are
/// read from, and the client configs built so far.
struct TlsInputs<'a> {
    /// The config file (`ca_file` is relative to its folder).
    source: &'a Path,
    read: ReadFile<'a>,
    configs: TlsConfigs,
}

/// One rustls client config per distinct [`Trust`]: backends that trust the same CAs share
/// one (and its session cache), and a config whose trust a reload left alone is carried
/// over from the previous snapshot, so its cached sessions still resume.
struct TlsConfigs(Vec<(Trust, Arc<ClientConfig>)>);

impl TlsConfigs {
    /// The configs of `previous`'s TLS upstreams.
    fn carried_from(previous: Option<&Snapshot>) -> Self {
        let mut configs: Vec<(Trust, Arc<ClientConfig>)> = Vec::new();
        for backend in previous.map_or(&[][..], |p| &p.backends) {
            let tls = match &backend.kind {
                BackendKind::Azure(a) => &a.upstream.tls,
                BackendKind::OpenAi(o) => &o.upstream.tls,
                BackendKind::Mock(_) => &None,
            };
            if let Some(tls) = tls {
                if !configs.iter().any(|(trust, _)| *trust == tls.trust) {
                    configs.push((tls.trust.clone(), Arc::clone(&tls.config)));
                }
            }
        }
        TlsConfigs(configs)
    }

    /// The config for `trust`, built when none is there yet.
    fn get(&mut self, trust: &Trust) -> Result<Arc<ClientConfig>, String> {
        if let Some((_, config)) = self.0.iter().find(|(t, _)| t == trust) {
            return Ok(Arc::clone(config));
        }
        let config = client_config(trust, true)?;
        self.0.push((trust.clone(), Arc::clone(&config)));
        Ok(config)
    }
}

fn compile_server(section: &ServerSection, report: &mut Reporter<'_>) -> ServerSettings {
    let defaults = ServerSettings::default();

    let listen = match &section.listen {
        None => defaults.listen,
        Some(list) => {
            if list.get_ref().is_empty() {
                report.at(
                    list.span(),
                    "server.listen",
                    "needs at least one address, e.g. [\"127.0.0.1:8080\"]",
                );
            }
            list.get_ref()
                .iter()
                .enumerate()
                .filter_map(|(i, addr)| match addr.get_ref().parse::<SocketAddr>() {
                    Ok(parsed) => Some(parsed),
                    Err(_) => {
                        report.at(
                            addr.span(),
                            format!("server.listen[{i}]"),
                            format!(
                                "`{}` is not an IP address and port, e.g. \"127.0.0.1:8080\" or \"[::1]:8080\"",
                                addr.get_ref()
                            ),
                        );
                        None
                    }
                })
                .collect()
        }
    };

    let limits = &section.limits;
    let limit_defaults = HttpLimits::default();
    let mut size = |value: &Option<Spanned<usize>>, field: &str, default: usize| match value {
        None => default,
        Some(v) => {
            if *v.get_ref() == 0 {
                report.at(v.span(), field, "must be greater than 0");
            }
            *v.get_ref()
        }
    };
    let max_request_line = size(
        &limits.max_request_line,
        "server.limits.max_request_line",
        limit_defaults.max_request_line,
    );
    let max_head = size(
        &limits.max_head,
        "server.limits.max_head",
        limit_defaults.max_head,
    );
    let max_headers = match &limits.max_headers {
        None => limit_defaults.max_headers,
        Some(v) => {
            if !(1..=256).contains(v.get_ref()) {
                report.at(
                    v.span(),
                    "server.limits.max_headers",
                    format!("must be between 1 and 256, not {}", v.get_ref()),
                );
            }
            *v.get_ref()
        }
    };
    let max_body = match &limits.max_body {
        None => limit_defaults.max_body,
        Some(v) => {
            if *v.get_ref() == 0 {
                report.at(v.span(), "server.limits.max_body", "must be greater than 0");
            }
            *v.get_ref()
        }
    };

    let min_body_rate = limits
        .min_body_rate
        .as_ref()
        .map_or(limit_defaults.min_body_rate, |v| *v.get_ref());

    let t = &section.timeouts;
    let td = Timeouts::default();
    let timeouts = Timeouts {
        head_read: timeout(
            report,
            &t.head_read,
            "server.timeouts.head_read",
            td.head_read,
        ),
        keepalive_idle: timeout(
            report,
            &t.keepalive_idle,
            "server.timeouts.keepalive_idle",
            td.keepalive_idle,
        ),
        body_read: timeout(
            report,
            &t.body_read,
            "server.timeouts.body_read",
            td.body_read,
        ),
        body_rate_grace: timeout(
            report,
            &t.body_rate_grace,
            "server.timeouts.body_rate_grace",
            td.body_rate_grace,
        ),
        upstream_connect: timeout(
            report,
            &t.upstream_connect,
            "server.timeouts.upstream_connect",
            td.upstream_connect,
        ),
        upstream_first_byte: timeout(
            report,
            &t.upstream_first_byte,
            "server.timeouts.upstream_first_byte",
            td.upstream_first_byte,
        ),
        stream_idle: timeout(
            report,
            &t.stream_idle,
            "server.timeouts.stream_idle",
            td.stream_idle,
        ),
        send: timeout(report, &t.send, "server.timeouts.send", td.send),
    };

    ServerSettings {
        listen,
        tls_listen: Vec::new(),
        tls: None,
        // 0 means "one per core", like leaving it out.
        workers: section.workers.filter(|&n| n > 0),
        limits: HttpLimits {
            max_request_line,
            max_head,
            max_headers,
            max_body,
            min_body_rate,
        },
        timeouts,
        shutdown_grace: timeout(
            report,
            &section.shutdown_grace,
            "server.shutdown_grace",
            defaults.shutdown_grace,
        ),
        headers_with_underscores: match &section.headers_with_underscores {
            None => defaults.headers_with_underscores,
            Some(v) => match v.get_ref().as_str() {
                "drop_header" => HeadersWithUnderscores::DropHeader,
                "reject_request" => HeadersWithUnderscores::RejectRequest,
                "allow" => HeadersWithUnderscores::Allow,
                other => {
                    report.at(
                        v.span(),
                        "server.headers_with_underscores",
                        format!(
                            "`{other}` is not one of \"drop_header\", \"reject_request\", \"allow\""
                        ),
                    );
                    defaults.headers_with_underscores
                }
            },
        },
    }
}

/// A duration that must be set to more than zero when given.
fn timeout(
    report: &mut Reporter<'_>,
    value: &Option<Spanned<String>>,
    field: &str,
    default: Duration,
) -> Duration {
    let Some(value) = value else {
        return default;
    };
    match parse_duration(value.get_ref()) {
        Ok(d) if d.is_zero() => {
            report.at(value.span(), field, "must be longer than 0");
            default
        }
        Ok(d) => d,
        Err(message) => {
            report.at(value.span(), field, message);
            default
        }
    }
}

/// Which fields each kind takes, besides `name` and `kind`.
const MOCK_FIELDS: &[&str] = &[
    "latency",
    "completion_tokens",
    "tokens_per_second",
    "model",
    "embedding_dimensions",
];
const AZURE_FIELDS: &[&str] = &[
    "url",
    "deployment",
    "api_version",
    "api_key_env",
    "stream_options",
    "ca_file",
    "server_name",
    "insecure_skip_verify",
];
const OPENAI_FIELDS: &[&str] = &[
    "url",
    "model",
    "api_key_env",
    "stream_options",
    "ca_file",
    "server_name",
    "insecure_skip_verify",
];
/// The fields that only mean something on an `https://` URL.
const TLS_FIELDS: &[&str] = &["ca_file", "server_name", "insecure_skip_verify"];

/// The kind-specific fields a backend set, with the span of each value.
fn present_fields(b: &BackendSection) -> Vec<(&'static str, Range<usize>)> {
    fn span<T>(v: &Option<Spanned<T>>) -> Option<Range<usize>> {
        v.as_ref().map(Spanned::span)
    }
    [
        ("latency", span(&b.latency)),
        ("completion_tokens", span(&b.completion_tokens)),
        ("tokens_per_second", span(&b.tokens_per_second)),
        ("embedding_dimensions", span(&b.embedding_dimensions)),
        ("model", span(&b.model)),
        ("url", span(&b.url)),
        ("api_key_env", span(&b.api_key_env)),
        ("deployment", span(&b.deployment)),
        ("api_version", span(&b.api_version)),
        ("stream_options", span(&b.stream_options)),
        ("ca_file", span(&b.ca_file)),
        ("server_name", span(&b.server_name)),
        ("insecure_skip_verify", span(&b.insecure_skip_verify)),
    ]
    .into_iter()
    .filter_map(|(name, span)| span.map(|s| (name, s)))
    .collect()
}

fn compile_backend(
    section: &Spanned<BackendSection>,
    field: &str,
    report: &mut Reporter<'_>,
    env: EnvLookup<'_>,
    resolve: Resolve<'_>,
    tls: &mut TlsInputs<'_>,
) -> Option<BackendKind> {
    let b = section.get_ref();
    let kind = b.kind.get_ref().as_str();
    let allowed = match kind {
        "mock" => MOCK_FIELDS,
        "azure" => AZURE_FIELDS,
        "openai" => OPENAI_FIELDS,
        other => {
            report.at(
                b.kind.span(),
                format!("{field}.kind"),
                format!(
                    "unknown backend kind `{other}`: expected \"mock\", \"azure\" or \"openai\""
                ),
            );
            return None;
        }
    };
    let mut fine = true;
    for (name, span) in present_fields(b) {
        if !allowed.contains(&name) {
            fine = false;
            report.at(
                span,
                format!("{field}.{name}"),
                format!(
                    "`{name}` does not apply to {} {kind} backend ({kind} backends take: {})",
                    article(kind),
                    allowed.join(", ")
                ),
            );
        }
    }

    let compiled = match kind {
        "mock" => compile_mock(b, field, report).map(BackendKind::Mock),
        "azure" => compile_azure(section, field, report, env, resolve, tls).map(BackendKind::Azure),
        _ => compile_openai(section, field, report, env, resolve, tls).map(BackendKind::OpenAi),
    };
    compiled.filter(|_| fine)
}

fn compile_mock(
    b: &BackendSection,
    field: &str,
    report: &mut Reporter<'_>,
) -> Option<MockSettings> {
    let mut fine = true;
    let latency = match &b.latency {
        None => Duration::ZERO,
        Some(v) => parse_duration(v.get_ref()).unwrap_or_else(|message| {
            fine = false;
            report.at(v.span(), format!("{field}.latency"), message);
            Duration::ZERO
        }),
    };
    let tokens_per_second = match &b.tokens_per_second {
        None => 0.0,
        Some(v) => {
            let tps = *v.get_ref();
            if !tps.is_finite() || tps < 0.0 {
                fine = false;
                report.at(
                    v.span(),
                    format!("{field}.tokens_per_second"),
                    "must be a number of 0 or more (0 means unlimited)",
                );
            }
            tps
        }
    };
    let embedding_dimensions = match &b.embedding_dimensions {
        None => DEFAULT_MOCK_EMBEDDING_DIMENSIONS,
        Some(v) => {
            if *v.get_ref() == 0 {
                fine = false;
                report.at(
                    v.span(),
                    format!("{field}.embedding_dimensions"),
                    "must be greater than 0",
                );
            }
            *v.get_ref()
        }
    };
    let model = match &b.model {
        None => DEFAULT_MOCK_MODEL.to_string(),
        Some(v) => {
            fine &= check_not_empty(report, v, &format!("{field}.model"));
            v.get_ref().clone()
        }
    };
    fine.then(|| MockSettings {
        latency,
        completion_tokens: b
            .completion_tokens
            .as_ref()
            .map_or(DEFAULT_MOCK_COMPLETION_TOKENS, |v| *v.get_ref()),
        tokens_per_second,
        model,
        embedding_dimensions,
    })
}

fn compile_azure(
    section: &Spanned<BackendSection>,
    field: &str,
    report: &mut Reporter<'_>,
    env: EnvLookup<'_>,
    resolve: Resolve<'_>,
    tls: &mut TlsInputs<'_>,
) -> Option<AzureBackend> {
    let b = section.get_ref();
    let upstream = compile_upstream(section, field, report, resolve, tls);
    let deployment = match &b.deployment {
        None => {
            report.at(
                section.span(),
                format!("{field}.deployment"),
                "missing: an azure backend needs `deployment`, the deployment name on that resource",
            );
            None
        }
        Some(v) => {
            check_not_empty(report, v, &format!("{field}.deployment")).then(|| v.get_ref().clone())
        }
    };
    let api_version = match &b.api_version {
        None => Some(DEFAULT_AZURE_API_VERSION.to_string()),
        Some(v) => {
            check_not_empty(report, v, &format!("{field}.api_version")).then(|| v.get_ref().clone())
        }
    };
    let api_key = api_key(b, field, report, env);
    let stream_options = stream_options(b, field, report);
    let api_version = api_version?;
    let accepts_stream_options =
        stream_options?.accepts(azure_accepts_stream_options(&api_version));
    Some(AzureBackend {
        upstream: upstream?,
        deployment: deployment?,
        api_version,
        api_key: api_key?,
        accepts_stream_options,
    })
}

fn compile_openai(
    section: &Spanned<BackendSection>,
    field: &str,
    report: &mut Reporter<'_>,
    env: EnvLookup<'_>,
    resolve: Resolve<'_>,
    tls: &mut TlsInputs<'_>,
) -> Option<OpenAiBackend> {
    let b = section.get_ref();
    let upstream = compile_upstream(section, field, report, resolve, tls);
    let model = match &b.model {
        None => Some(None),
        Some(v) => {
            check_not_empty(report, v, &format!("{field}.model")).then(|| Some(v.get_ref().clone()))
        }
    };
    let api_key = api_key(b, field, report, env);
    let stream_options = stream_options(b, field, report);
    Some(OpenAiBackend {
        upstream: upstream?,
        model: model?,
        api_key: api_key?,
        // OpenAI's API has taken `stream_options` since May 2024.
        accepts_stream_options: stream_options?.accepts(true),
    })
}

/// A backend's `stream_options` setting (default `auto`); `None` after an error.
fn stream_options(
    b: &BackendSection,
    field: &str,
    report: &mut Reporter<'_>,
) -> Option<StreamOptions> {
    let Some(v) = &b.stream_options else {
        return Some(StreamOptions::Auto);
    };
    match v.get_ref().parse() {
        Ok(setting) => Some(setting),
        Err(e) => {
            report.at(v.span(), format!("{field}.stream_options"), e.to_string());
            None
        }
    }
}

/// The secret named by `api_key_env`: `Some(None)` when none is configured, `None` after an
/// error. Only the variable's name ever reaches a message.
fn api_key(
    b: &BackendSection,
    field: &str,
    report: &mut Reporter<'_>,
    env: EnvLookup<'_>,
) -> Option<Option<Secret>> {
    let Some(var) = &b.api_key_env else {
        return Some(None);
    };
    let field = format!("{field}.api_key_env");
    if !check_not_empty(report, var, &field) {
        return None;
    }
    match env(var.get_ref()) {
        Some(value) if !value.is_empty() => Some(Some(Secret::new(value))),
        Some(_) => {
            report.on_host(
                var.span(),
                field,
                format!("environment variable `{}` is empty", var.get_ref()),
            );
            None
        }
        None => {
            report.on_host(
                var.span(),
                field,
                format!("environment variable `{}` is not set", var.get_ref()),
            );
            None
        }
    }
}

fn compile_upstream(
    section: &Spanned<BackendSection>,
    backend_field: &str,
    report: &mut Reporter<'_>,
    resolve: Resolve<'_>,
    tls_inputs: &mut TlsInputs<'_>,
) -> Option<HttpUpstream> {
    let field = format!("{backend_field}.url");
    let kind = section.get_ref().kind.get_ref();
    let Some(url) = &section.get_ref().url else {
        report.at(
            section.span(),
            field,
            format!(
                "missing: {} {kind} backend needs `url`, e.g. \"http://127.0.0.1:9000\"",
                article(kind)
            ),
        );
        return None;
    };
    let parsed = match parse_upstream_url(url.get_ref()) {
        Ok(parsed) => parsed,
        Err(message) => {
            report.at(url.span(), field, message);
            return None;
        }
    };
    let tls = if parsed.tls {
        compile_tls(section, backend_field, &parsed, report, tls_inputs).map(Some)
    } else {
        for (name, span) in present_fields(section.get_ref()) {
            if TLS_FIELDS.contains(&name) {
                report.at(
                    span,
                    format!("{backend_field}.{name}"),
                    format!("`{name}` applies to https:// URLs only, and this backend's `url` is http://"),
                );
            }
        }
        Some(None)
    };
    let addr = match resolve(parsed.host, parsed.port) {
        Ok(addr) => Some(addr),
        Err(message) => {
            report.on_host(url.span(), field, message);
            None
        }
    };
    // A `server_name` names the service the URL's address reaches: requests carry it as
    // their Host too (RFC 9110 §7.2), with the port when it is not 443, so a name-routed
    // front end (Azure, a virtual host) sees the name the certificate is for.
    let host_header = match section
        .get_ref()
        .server_name
        .as_ref()
        .filter(|_| parsed.tls)
    {
        Some(name) if parsed.port == 443 => name.get_ref().clone(),
        Some(name) => format!("{}:{}", name.get_ref(), parsed.port),
        None => parsed.authority.to_string(),
    };
    Some(HttpUpstream {
        url: url.get_ref().clone(),
        addr: addr?,
        host_header,
        base_path: parsed.path.trim_end_matches('/').to_string(),
        tls: tls?,
    })
}

/// The TLS settings of an `https://` upstream: `ca_file` (PEM CA certificates, relative to
/// the config file's folder; default the Mozilla roots), `server_name` (SNI and the name the
/// certificate must be for; default the URL's host), `insecure_skip_verify` (default
/// false; refused together with `ca_file`, which it would silently void). `None` after an
/// error.
fn compile_tls(
    section: &Spanned<BackendSection>,
    field: &str,
    parsed: &HttpUrl<'_>,
    report: &mut Reporter<'_>,
    inputs: &mut TlsInputs<'_>,
) -> Option<UpstreamTls> {
    let b = section.get_ref();
    let server_name = match &b.server_name {
        None => match ServerName::try_from(parsed.host.to_string()) {
            Ok(name) => Some(name),
            Err(_) => {
                report.at(
                    b.url.as_ref().map_or(section.span(), Spanned::span),
                    format!("{field}.url"),
                    format!(
                        "`{}` cannot be checked against a certificate (not a DNS name or IP address): set `server_name`",
                        parsed.host
                    ),
                );
                None
            }
        },
        Some(v) => {
            let name_field = format!("{field}.server_name");
            if check_not_empty(report, v, &name_field) {
                match ServerName::try_from(v.get_ref().clone()) {
                    Ok(name) => Some(name),
                    Err(_) => {
                        report.at(
                            v.span(),
                            name_field,
                            format!("`{}` is not a DNS name or IP address", v.get_ref()),
                        );
                        None
                    }
                }
            } else {
                None
            }
        }
    };
    let insecure = b.insecure_skip_verify.as_ref().filter(|v| *v.get_ref());
    let trust = match (&b.ca_file, insecure) {
        (Some(_), Some(v)) => {
            report.at(
                v.span(),
                format!("{field}.insecure_skip_verify"),
                "`insecure_skip_verify = true` would ignore `ca_file`: set one or the other",
            );
            None
        }
        (None, Some(_)) => Some(Trust::Insecure),
        (None, None) => Some(Trust::WebPki),
        (Some(v), None) => {
            let ca_field = format!("{field}.ca_file");
            if check_not_empty(report, v, &ca_field) {
                let path = super::check::resolve_path(inputs.source, v.get_ref());
                super::check::read_config_file(&path, v, &ca_field, report, inputs.read).and_then(
                    |pem| {
                        let checked = crate::tls::pem::roots(pem.as_bytes())
                            .and_then(|_| crate::tls::pem::certificates(pem.as_bytes()));
                        match checked {
                            Ok(cas) => Some(Trust::Cas(cas)),
                            Err(message) => {
                                report.at(
                                    v.span(),
                                    ca_field,
                                    format!("`{}` {message}", v.get_ref()),
                                );
                                None
                            }
                        }
                    },
                )
            } else {
                None
            }
        }
    };
    let trust = trust?;
    let config = match inputs.configs.get(&trust) {
        Ok(config) => config,
        Err(message) => {
            report.at(section.span(), format!("{field}.url"), message);
            return None;
        }
    };
    Some(UpstreamTls::new(config, server_name?, trust))
}

/// Parses an upstream URL (`http[s]://host[:port][/path]`, no query): Sluice appends the API
/// path and its own query. Messages never repeat the URL, which could carry credentials.
pub(crate) fn parse_upstream_url(url: &str) -> Result<HttpUrl<'_>, String> {
    match parse_http_url(url) {
        Err(message) => Err(message),
        Ok(parsed) if parsed.query.is_some() => {
            Err(format!("{URL_FORM}, without a query or fragment"))
        }
        Ok(parsed) => Ok(parsed),
    }
}

fn compile_deployments(
    sections: &[Spanned<DeploymentSection>],
    backend_ids: &HashMap<&str, usize>,
    report: &mut Reporter<'_>,
) -> Vec<Deployment> {
    if sections.is_empty() {
        report.at(
            0..0,
            "deployment",
            "no deployments: add at least one [[deployment]] naming the backends that serve it",
        );
    }
    let mut seen: HashMap<&str, usize> = HashMap::new();
    let mut deployments = Vec::with_capacity(sections.len());
    for (i, section) in sections.iter().enumerate() {
        let field = format!("deployment[{i}]");
        let d = section.get_ref();
        check_not_empty(report, &d.name, &format!("{field}.name"));
        if let Some(&first) = seen.get(d.name.get_ref().as_str()) {
            let first_line = line_of(report, &sections[first].get_ref().name);
            report.at(
                d.name.span(),
                format!("{field}.name"),
                format!(
                    "duplicate deployment name `{}` (first defined on line {first_line})",
                    d.name.get_ref()
                ),
            );
        } else {
            seen.insert(d.name.get_ref(), i);
        }

        let entries: &[Spanned<_>] = match &d.backends {
            None => {
                report.at(
                    section.span(),
                    format!("{field}.backends"),
                    "missing: a deployment needs at least one backend, e.g. backends = [{ backend = \"mock-a\" }]",
                );
                &[]
            }
            Some(list) => {
                if list.get_ref().is_empty() {
                    report.at(
                        list.span(),
                        format!("{field}.backends"),
                        "a deployment needs at least one backend",
                    );
                }
                if list.get_ref().len() > crate::balance::MAX_POOL_MEMBERS {
                    report.at(
                        list.span(),
                        format!("{field}.backends"),
                        format!(
                            "a deployment has at most {} backends",
                            crate::balance::MAX_POOL_MEMBERS
                        ),
                    );
                }
                list.get_ref()
            }
        };
        let mut pool: Vec<PoolMember> = Vec::with_capacity(entries.len());
        for (j, entry) in entries.iter().enumerate() {
            let entry_field = format!("{field}.backends[{j}]");
            let e = entry.get_ref();
            let backend = match backend_ids.get(e.backend.get_ref().as_str()) {
                Some(&id) => id,
                None => {
                    report.at(
                        e.backend.span(),
                        format!("{entry_field}.backend"),
                        format!("unknown backend `{}`", e.backend.get_ref()),
                    );
                    continue;
                }
            };
            if pool.iter().any(|m| m.backend == backend) {
                report.at(
                    e.backend.span(),
                    format!("{entry_field}.backend"),
                    format!(
                        "backend `{}` is listed twice in this deployment",
                        e.backend.get_ref()
                    ),
                );
            }
            let weight = match &e.weight {
                None => 1,
                Some(w) => {
                    if *w.get_ref() == 0 {
                        report.at(
                            w.span(),
                            format!("{entry_field}.weight"),
                            "must be 1 or more (remove the entry to stop using a backend)",
                        );
                    }
                    *w.get_ref()
                }
            };
            pool.push(PoolMember {
                backend,
                weight,
                priority: e.priority.unwrap_or(0),
            });
        }
        deployments.push(Deployment {
            name: d.name.get_ref().clone(),
            pool,
            // Filled in by `compile_access`.
            limits: Vec::new(),
            tokens: TokenSettings::default(),
            retry: super::resilience::compile_retry(d.retry.as_ref(), &field, report),
            outlier_detection: super::resilience::compile_outlier_detection(
                d.outlier_detection.as_ref(),
                &field,
                report,
            ),
            cache: super::cache::compile(d.cache.as_ref(), &field, report),
        });
    }
    deployments
}

/// "a" or "an" before a backend kind.
fn article(kind: &str) -> &'static str {
    if kind.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_urls_split_into_host_port_authority_and_path() {
        let url = parse_upstream_url("http://127.0.0.1:18001").unwrap();
        assert_eq!(
            url,
            HttpUrl {
                tls: false,
                host: "127.0.0.1",
                port: 18001,
                authority: "127.0.0.1:18001",
                path: "",
                query: None
            }
        );
        let url = parse_upstream_url("HTTP://example.com/base/v1/").unwrap();
        assert_eq!((url.host, url.port), ("example.com", 80));
        assert_eq!((url.authority, url.path), ("example.com", "/base/v1/"));
        let url = parse_upstream_url("http://[::1]:9000/").unwrap();
        assert_eq!(
            (url.host, url.port, url.authority),
            ("::1", 9000, "[::1]:9000")
        );
        assert_eq!(url.path, "/");
    }

    #[test]
    fn bad_urls_say_what_is_wrong() {
        let err = |url| parse_upstream_url(url).unwrap_err();
        assert!(err("ftp://x").contains("http[s]://host[:port][/path]"));
        assert!(err("127.0.0.1:80").contains("http[s]://host[:port][/path]"));
        assert!(err("http://").contains("host is missing"));
        assert!(err("http://:80").contains("host is missing"));
        assert!(err("http://h:0").contains("not a port"));
        assert!(err("http://h:99999").contains("not a port"));
        assert!(err("http://h:+80").contains("not a port"));
        assert!(err("http://h:").contains("not a port"));
        assert!(err("http://h/p?q=1").contains("query"));
        assert!(err("http://a b").contains("spaces"));
        assert!(err("http://::1/").contains("brackets"));
        assert!(err("http://a%b/").contains("not a host name"));
        assert!(err("http://[zz]/").contains("not an IPv6"));
        let secret = err("http://user:hunter2@h/");
        assert!(secret.contains("user information") && !secret.contains("hunter2"));
    }

    #[test]
    fn durations_take_a_whole_number_and_a_unit() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("0ms"), Ok(Duration::ZERO));
        for bad in [
            "",
            "10",
            "s",
            "1.5s",
            "10 s",
            "-1s",
            "10sec",
            "99999999999999999999s",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} parsed");
        }
        assert!(parse_duration("18446744073709551615h")
            .unwrap_err()
            .contains("too long"));
    }
}
