//! What is compared: the mock direct, Sluice as a bare passthrough, Sluice with its full
//! chain of policies, and nginx. This module writes each proxy's config (plain functions of
//! the addresses, tested below) and starts, pins and waits for each proxy process.
//!
//! Every target serves the same two deployments on the same client path (the Azure form,
//! `/openai/deployments/{d}/chat/completions?api-version=…`): [`DEPLOYMENT`] in front of the
//! fast mock and [`STREAM_DEPLOYMENT`] in front of the paced streaming mock. As policies land
//! in the gateway, [`sluice_full_chain_config`] and [`FULL_CHAIN_POLICIES`] are the one place
//! to switch them on.

use std::fmt::Write as _;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

use super::procs::{self, ChildProc, CpuList};
use crate::certs::CertFiles;

/// The deployment answered by the fast (non-paced) mock.
pub const DEPLOYMENT: &str = "bench";
/// The deployment answered by the paced streaming mock.
pub const STREAM_DEPLOYMENT: &str = "bench-stream";
/// The Azure `api-version` clients send and backends are configured with.
pub const API_VERSION: &str = "2024-10-21";
/// The environment variable the Sluice configs take the backends' api-key from.
pub const KEY_ENV: &str = "SLUICE_BENCH_KEY";

/// The data-plane policies the full chain switches on (the report lists them); the full
/// chain adds [`FULL_CHAIN_OBSERVABILITY`], its bare form (`--observability-cost`) does not.
pub const FULL_CHAIN_POLICIES: &[&str] = &[
    "smooth weighted round robin over two backends (two mock listeners, weights 1:1) with the \
     priority fallback list",
    "azure rewriting: backend deployment path, api-version and api-key per backend",
    "request id (x-request-id), x-forwarded-for / x-forwarded-proto",
    "subscription key auth (api-key, SHA-256 digest lookup) and product check",
    "request rate limit and token rate limit per subscription (per-core leases; limits \
     high enough never to refuse)",
    "token accounting: BPE prompt estimate (o200k) + max_tokens reserved, settled from the \
     answer's usage (JSON body, or the stream's usage chunk)",
];

/// What the full chain records and counts on top of [`FULL_CHAIN_POLICIES`] (issue 12): the
/// audit log and the metrics. `sluice-full-chain-bare` leaves exactly these out.
pub const FULL_CHAIN_OBSERVABILITY: &[&str] = &[
    "audit log: one record per request with full content (request messages, the answer; \
     streams reassembled), default redaction, to a JSON lines file and a SQLite database",
    "metrics: per-worker counters and histograms, published every 100 ms; the admin \
     listener on (not scraped during the run)",
];

/// What the bare full chain says in place of [`FULL_CHAIN_OBSERVABILITY`].
pub const BARE_OBSERVABILITY: &str = "no audit log (no `[audit]`), no admin listener \
     (`[admin] listen = \"\"`): tokens are accounted only as the token limit needs";

/// The policies of the passthrough (what Sluice always does).
pub const PASSTHROUGH_POLICIES: &[&str] =
    &["one azure backend (rewriting path, api-version, api-key), nothing else configured"];

/// One of the compared setups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TargetKind {
    /// The load straight at the mock: the floor every proxy adds to.
    Direct,
    /// Sluice with one azure backend and nothing else.
    SluicePassthrough,
    /// Sluice with every policy it has.
    SluiceFullChain,
    /// The full chain without the audit log and the metrics (`--observability-cost`, issue
    /// 12): what they cost is the full chain minus this.
    SluiceFullChainBare,
    /// nginx `proxy_pass` with upstream keep-alive.
    Nginx,
}

impl TargetKind {
    /// The target's name in reports.
    pub fn name(self) -> &'static str {
        match self {
            TargetKind::Direct => "direct",
            TargetKind::SluicePassthrough => "sluice-passthrough",
            TargetKind::SluiceFullChain => "sluice-full-chain",
            TargetKind::SluiceFullChainBare => "sluice-full-chain-bare",
            TargetKind::Nginx => "nginx",
        }
    }

    /// Whether a proxy process stands between load and mock.
    pub fn is_proxy(self) -> bool {
        self != TargetKind::Direct
    }

    /// The policies switched on, for the report.
    pub fn policies(self) -> Vec<String> {
        let list: Vec<&str> = match self {
            TargetKind::Direct => Vec::new(),
            TargetKind::SluicePassthrough => PASSTHROUGH_POLICIES.to_vec(),
            TargetKind::SluiceFullChain => [FULL_CHAIN_POLICIES, FULL_CHAIN_OBSERVABILITY].concat(),
            TargetKind::SluiceFullChainBare => {
                [FULL_CHAIN_POLICIES, &[BARE_OBSERVABILITY]].concat()
            }
            TargetKind::Nginx => {
                vec!["proxy_pass, upstream keepalive 64, HTTP/1.1 upstream, proxy_buffering off"]
            }
        };
        list.into_iter().map(str::to_owned).collect()
    }
}

/// The mock listeners the proxies forward to.
#[derive(Debug, Clone)]
pub struct Upstreams {
    /// Two listeners of the fast mock (the full chain balances over both; the others use
    /// the first).
    pub fast: [SocketAddr; 2],
    /// Two listeners of the paced streaming mock.
    pub stream: [SocketAddr; 2],
}

/// The path clients call for `deployment`.
pub fn client_path(deployment: &str) -> String {
    format!("/openai/deployments/{deployment}/chat/completions?api-version={API_VERSION}")
}

fn sluice_server_section(out: &mut String, listen: SocketAddr, workers: usize, admin: Admin) {
    let _ = writeln!(out, "[server]");
    let _ = writeln!(out, "listen = [\"{listen}\"]");
    let _ = writeln!(out, "workers = {workers}");
    let _ = writeln!(out, "shutdown_grace = \"2s\"\n");
    admin_section(out, admin);
}

/// Whether a generated Sluice config has its admin listener (and so its metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Admin {
    /// On a port of the kernel's choosing: on, as in production, but never on a fixed port
    /// a second run could find taken.
    On,
    /// `listen = ""`, written out: without the table Sluice would listen on its default
    /// `127.0.0.1:9090`.
    Off,
}

fn admin_section(out: &mut String, admin: Admin) {
    let listen = match admin {
        Admin::On => "127.0.0.1:0",
        Admin::Off => "",
    };
    let _ = writeln!(out, "[admin]");
    let _ = writeln!(out, "listen = \"{listen}\"\n");
}

fn sluice_backend(out: &mut String, name: &str, addr: SocketAddr, deployment: &str) {
    let _ = writeln!(out, "[[backend]]");
    let _ = writeln!(out, "name = \"{name}\"");
    let _ = writeln!(out, "kind = \"azure\"");
    let _ = writeln!(out, "url = \"http://{addr}\"");
    let _ = writeln!(out, "deployment = \"{deployment}\"");
    let _ = writeln!(out, "api_version = \"{API_VERSION}\"");
    let _ = writeln!(out, "api_key_env = \"{KEY_ENV}\"\n");
}

fn sluice_deployment(out: &mut String, name: &str, backends: &[&str]) {
    let _ = writeln!(out, "[[deployment]]");
    let _ = writeln!(out, "name = \"{name}\"");
    let list: Vec<String> = backends
        .iter()
        .map(|b| format!("{{ backend = \"{b}\", weight = 1 }}"))
        .collect();
    let _ = writeln!(out, "backends = [{}]\n", list.join(", "));
}

/// Sluice as a bare passthrough: each deployment has one azure backend (the first listener
/// of its mock), nothing else.
pub fn sluice_passthrough_config(listen: SocketAddr, up: &Upstreams, workers: usize) -> String {
    let mut out = String::from("# sluice-bench compare: Sluice passthrough (generated)\n\n");
    sluice_server_section(&mut out, listen, workers, Admin::On);
    passthrough_pool(&mut out, up);
    out
}

/// The passthrough's backends and deployments: one azure backend each, the first listener
/// of its mock.
fn passthrough_pool(out: &mut String, up: &Upstreams) {
    sluice_backend(out, "mock", up.fast[0], DEPLOYMENT);
    sluice_backend(out, "mock-stream", up.stream[0], STREAM_DEPLOYMENT);
    sluice_deployment(out, DEPLOYMENT, &["mock"]);
    sluice_deployment(out, STREAM_DEPLOYMENT, &["mock-stream"]);
}

/// The TLS scenario's Sluice: the passthrough of [`sluice_passthrough_config`] (the mock
/// over plain HTTP, no auth, no limits), listening for HTTPS only on `listen` (no plain
/// listener) with the certificate and key of `certs` (`[server.tls]`, Sluice's defaults
/// otherwise: TLS 1.3 and 1.2, ALPN `http/1.1`).
pub fn sluice_tls_config(
    listen: SocketAddr,
    up: &Upstreams,
    workers: usize,
    certs: &CertFiles,
) -> String {
    let mut out =
        String::from("# sluice-bench compare: Sluice passthrough over TLS (generated)\n\n");
    // No `listen`: with `tls_listen` alone Sluice opens no plain listener.
    let _ = writeln!(out, "[server]");
    let _ = writeln!(out, "tls_listen = [\"{listen}\"]");
    let _ = writeln!(out, "workers = {workers}");
    let _ = writeln!(out, "shutdown_grace = \"2s\"\n");
    let _ = writeln!(out, "[server.tls]");
    let _ = writeln!(out, "cert_file = \"{}\"", certs.cert.display());
    let _ = writeln!(out, "key_file = \"{}\"\n", certs.key.display());
    admin_section(&mut out, Admin::On);
    passthrough_pool(&mut out, up);
    out
}

/// Sluice with every policy it has today (see [`FULL_CHAIN_POLICIES`] and
/// [`FULL_CHAIN_OBSERVABILITY`]): each deployment is a weighted round-robin pool of two azure
/// backends (the mock's two listeners). Add each new policy here as it lands.
/// The audit log writes its JSON lines and SQLite files into `audit_dir`.
pub fn sluice_full_chain_config(
    listen: SocketAddr,
    up: &Upstreams,
    workers: usize,
    audit_dir: &Path,
) -> String {
    full_chain_render(listen, up, workers, Some(audit_dir))
}

/// [`sluice_full_chain_config`] without the audit log and the metrics (issue 12's
/// `sluice-full-chain-bare`): the same text but for no `[audit]` table and sinks and
/// `[admin] listen = ""`. Only the token limit then accounts tokens, as it does in the full
/// chain too, so the difference between the two is what recording and counting cost.
pub fn sluice_full_chain_bare_config(listen: SocketAddr, up: &Upstreams, workers: usize) -> String {
    full_chain_render(listen, up, workers, None)
}

/// The full chain, with the audit log in `audit_dir` and the admin listener on, or (`None`)
/// with neither.
fn full_chain_render(
    listen: SocketAddr,
    up: &Upstreams,
    workers: usize,
    audit_dir: Option<&Path>,
) -> String {
    let (title, admin) = match audit_dir {
        Some(_) => ("Sluice full chain", Admin::On),
        None => ("Sluice full chain without audit and metrics", Admin::Off),
    };
    let mut out = format!("# sluice-bench compare: {title} (generated)\n\n");
    sluice_server_section(&mut out, listen, workers, admin);
    sluice_backend(&mut out, "mock-a", up.fast[0], DEPLOYMENT);
    sluice_backend(&mut out, "mock-b", up.fast[1], DEPLOYMENT);
    sluice_backend(&mut out, "mock-stream-a", up.stream[0], STREAM_DEPLOYMENT);
    sluice_backend(&mut out, "mock-stream-b", up.stream[1], STREAM_DEPLOYMENT);
    sluice_deployment(&mut out, DEPLOYMENT, &["mock-a", "mock-b"]);
    sluice_deployment(
        &mut out,
        STREAM_DEPLOYMENT,
        &["mock-stream-a", "mock-stream-b"],
    );
    out.push_str(FULL_CHAIN_ACCESS);
    let Some(audit_dir) = audit_dir else {
        return out;
    };
    let _ = writeln!(out, "\n[audit]\ncontent = \"full\"\n");
    for (kind, file) in [("file", "audit.jsonl"), ("sqlite", "audit.db")] {
        let _ = writeln!(out, "[[audit.sink]]");
        let _ = writeln!(out, "kind = \"{kind}\"");
        let _ = writeln!(
            out,
            "path = \"{}\"\n",
            audit_dir.join(format!("full-chain-{file}")).display()
        );
    }
    out
}

/// The full chain's access policies: the load generator's `sluice-demo-key` belongs to a
/// subscription whose product has request and token limits, far above what a bench run
/// sends, so they cost their work and refuse nothing.
const FULL_CHAIN_ACCESS: &str = r#"
[[product]]
name = "bench"
limits = [
  { unit = "requests", rate = 100000000, per = "minute", scope = "subscription" },
  { unit = "tokens", rate = 100000000000, per = "minute", scope = "subscription" },
]

[[subscription]]
name = "bench"
product = "bench"
# SHA-256 of "sluice-demo-key", the key the load generator sends.
keys = ["sha256:579084b337941a6a4a172d804df80263a01442341327e1c8aded14669aee6724"]
"#;

/// Where nginx keeps its files.
#[derive(Debug, Clone)]
pub struct NginxFiles {
    /// `pid` file.
    pub pid: PathBuf,
    /// `error_log` file.
    pub error_log: PathBuf,
    /// Directory for the temp paths nginx insists on having.
    pub temp: PathBuf,
}

/// nginx as a plain reverse proxy with upstream keep-alive, `workers` worker processes (the
/// master is pinned before it starts, so its workers inherit the proxy CPUs). With `workers`
/// 0, `master_process off`: the one process serves (what callgrind measures).
pub fn nginx_config(
    listen: SocketAddr,
    up: &Upstreams,
    workers: usize,
    files: &NginxFiles,
) -> String {
    nginx_render(listen, up, workers, files, None)
}

/// The TLS scenario's nginx: [`nginx_config`] listening for HTTPS only (`listen … ssl`) with
/// the certificate and key of `certs` (the same files Sluice serves), `ssl_protocols TLSv1.2
/// TLSv1.3` as Sluice offers, client keep-alive as in the plain config; nginx's (OpenSSL's)
/// defaults otherwise: cipher order, key exchange groups and session tickets, as for Sluice.
pub fn nginx_tls_config(
    listen: SocketAddr,
    up: &Upstreams,
    workers: usize,
    files: &NginxFiles,
    certs: &CertFiles,
) -> String {
    nginx_render(listen, up, workers, files, Some(certs))
}

fn nginx_render(
    listen: SocketAddr,
    up: &Upstreams,
    workers: usize,
    files: &NginxFiles,
    certs: Option<&CertFiles>,
) -> String {
    let listen = match certs {
        None => format!("listen {listen};"),
        Some(c) => format!(
            "listen {listen} ssl;\n        \
             ssl_certificate {};\n        \
             ssl_certificate_key {};\n        \
             ssl_protocols TLSv1.2 TLSv1.3;",
            c.cert.display(),
            c.key.display()
        ),
    };
    let (master, workers) = if workers == 0 {
        ("off", 1)
    } else {
        ("on", workers)
    };
    let temp = files.temp.display();
    let proxy = "proxy_http_version 1.1;\n            \
                 proxy_set_header Connection \"\";\n            \
                 proxy_buffering off;";
    format!(
        "# sluice-bench compare: nginx reverse proxy (generated)
daemon off;
master_process {master};
worker_processes {workers};
pid {pid};
error_log {error_log} warn;

events {{
    worker_connections 4096;
}}

http {{
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    client_body_temp_path {temp}/client_body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;

    upstream mock {{
        server {fast};
        keepalive 64;
        keepalive_requests 1000000;
    }}
    upstream mock_stream {{
        server {stream};
        keepalive 64;
        keepalive_requests 1000000;
    }}

    server {{
        {listen}
        location /openai/deployments/{STREAM_DEPLOYMENT}/ {{
            proxy_pass http://mock_stream;
            {proxy}
        }}
        location / {{
            proxy_pass http://mock;
            {proxy}
        }}
    }}
}}
",
        pid = files.pid.display(),
        error_log = files.error_log.display(),
        fast = up.fast[0],
        stream = up.stream[0],
    )
}

/// The io driver named in Sluice's startup line (`… driver=io_uring …`).
pub fn parse_driver(log: &str) -> Option<String> {
    log.lines()
        .filter(|l| l.contains("sluice started"))
        .find_map(|l| {
            let rest = &l[l.find("driver=")? + "driver=".len()..];
            Some(rest.split_whitespace().next()?.to_owned())
        })
}

/// A free loopback address (bound to port 0, read, released).
pub fn free_addr() -> anyhow::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?)
}

/// A running target.
pub struct Target {
    /// Which one.
    pub kind: TargetKind,
    /// Where clients connect.
    pub addr: SocketAddr,
    /// The proxy process (none for direct).
    pub proc: Option<ChildProc>,
    /// The PIDs whose CPU and memory are counted (for nginx: the master and its workers).
    pub pids: Vec<u32>,
    /// The io setup in use, as the proxy says (`io_uring`, `epoll`) or known (`epoll` for
    /// nginx).
    pub driver: String,
}

/// How to start the targets.
pub struct Launch<'a> {
    /// The `sluice` binary.
    pub sluice: &'a Path,
    /// The `nginx` binary.
    pub nginx: &'a Path,
    /// CPUs the proxy is pinned to; its worker count is their count.
    pub cpus: &'a CpuList,
    /// Where configs and logs go.
    pub out: &'a Path,
    /// Run the proxy under `valgrind` (first path) with callgrind writing to the second:
    /// one process (nginx without a master), files named `…-callgrind`, and a longer wait
    /// for it to listen.
    pub callgrind: Option<(&'a Path, &'a Path)>,
}

impl Launch<'_> {
    /// The command that runs `program`: itself, or callgrind around it.
    fn command(&self, program: &Path) -> Command {
        match self.callgrind {
            None => Command::new(program),
            Some((valgrind, out_file)) => {
                let mut cmd = Command::new(valgrind);
                cmd.arg("--tool=callgrind")
                    .arg(format!("--callgrind-out-file={}", out_file.display()))
                    .arg(program);
                cmd
            }
        }
    }

    /// The name of `kind`'s files (config, log) for this launch.
    fn file_stem(&self, kind: TargetKind) -> String {
        match self.callgrind {
            None => kind.name().to_owned(),
            Some(_) => format!("{}-callgrind", kind.name()),
        }
    }

    /// How long the proxy may take to listen (valgrind starts tens of times slower).
    fn start_timeout(&self) -> Duration {
        match self.callgrind {
            None => Duration::from_secs(10),
            Some(_) => Duration::from_secs(120),
        }
    }
}

impl Target {
    /// Starts `kind` in front of `up` and waits until it accepts connections.
    pub fn start(kind: TargetKind, up: &Upstreams, launch: &Launch<'_>) -> anyhow::Result<Target> {
        Self::start_with(kind, up, launch, None)
    }

    /// Starts `kind` (the Sluice passthrough or nginx) listening for HTTPS only with
    /// `certs` ([`sluice_tls_config`], [`nginx_tls_config`]); its files are named
    /// `<kind>-tls.*`. `addr` is the TLS listener.
    ///
    /// # Errors
    /// Another kind (only those two have a TLS form), or a proxy that does not start.
    pub fn start_tls(
        kind: TargetKind,
        up: &Upstreams,
        launch: &Launch<'_>,
        certs: &CertFiles,
    ) -> anyhow::Result<Target> {
        match kind {
            TargetKind::SluicePassthrough | TargetKind::Nginx => {
                Self::start_with(kind, up, launch, Some(certs))
            }
            TargetKind::Direct | TargetKind::SluiceFullChain | TargetKind::SluiceFullChainBare => {
                bail!("{} has no TLS form", kind.name())
            }
        }
    }

    fn start_with(
        kind: TargetKind,
        up: &Upstreams,
        launch: &Launch<'_>,
        tls: Option<&CertFiles>,
    ) -> anyhow::Result<Target> {
        let workers = launch.cpus.count();
        let name = kind.name();
        let stem = match tls {
            None => launch.file_stem(kind),
            Some(_) => format!("{}-tls", launch.file_stem(kind)),
        };
        match kind {
            TargetKind::Direct => Ok(Target {
                kind,
                addr: up.fast[0],
                proc: None,
                pids: Vec::new(),
                driver: "mock (in-process)".to_owned(),
            }),
            TargetKind::SluicePassthrough
            | TargetKind::SluiceFullChain
            | TargetKind::SluiceFullChainBare => {
                let addr = free_addr()?;
                let text = match (kind, tls) {
                    (_, Some(certs)) => sluice_tls_config(addr, up, workers, certs),
                    (TargetKind::SluicePassthrough, None) => {
                        sluice_passthrough_config(addr, up, workers)
                    }
                    (TargetKind::SluiceFullChainBare, None) => {
                        sluice_full_chain_bare_config(addr, up, workers)
                    }
                    _ => sluice_full_chain_config(addr, up, workers, launch.out),
                };
                let config = launch.out.join(format!("{stem}.toml"));
                std::fs::write(&config, text)?;
                let mut cmd = launch.command(launch.sluice);
                cmd.arg("--config")
                    .arg(&config)
                    .env(KEY_ENV, "sluice-bench-key")
                    .env("RUST_LOG", "info");
                let log = launch.out.join(format!("{stem}.log"));
                let mut proc = ChildProc::spawn_pinned(name, cmd, launch.cpus, &log)?;
                wait_listening(&mut proc, addr, launch.start_timeout())?;
                let driver = wait_for(Duration::from_secs(5), || parse_driver(&proc.log_text()))
                    .unwrap_or_else(|| "unknown".to_owned());
                let pids = vec![proc.pid()];
                Ok(Target {
                    kind,
                    addr,
                    proc: Some(proc),
                    pids,
                    driver,
                })
            }
            TargetKind::Nginx => {
                let addr = free_addr()?;
                let files = NginxFiles {
                    pid: launch.out.join(format!("{stem}.pid")),
                    error_log: launch.out.join(format!("{stem}-error.log")),
                    temp: launch.out.join(format!("{stem}-temp")),
                };
                std::fs::create_dir_all(&files.temp)?;
                let config = launch.out.join(format!("{stem}.conf"));
                // Under callgrind: no master, the one process serves.
                let processes = if launch.callgrind.is_some() {
                    0
                } else {
                    workers
                };
                std::fs::write(&config, nginx_render(addr, up, processes, &files, tls))?;
                let mut cmd = launch.command(launch.nginx);
                cmd.arg("-p")
                    .arg(launch.out)
                    .arg("-e")
                    .arg(&files.error_log)
                    .arg("-c")
                    .arg(&config);
                let log = launch.out.join(format!("{stem}.log"));
                let mut proc = ChildProc::spawn_pinned(name, cmd, launch.cpus, &log)?;
                wait_listening(&mut proc, addr, launch.start_timeout())?;
                let master = proc.pid();
                let mut pids = vec![master];
                if processes > 0 {
                    let workers_seen = wait_for(Duration::from_secs(5), || {
                        let children = procs::children_of(master);
                        (children.len() >= workers).then_some(children)
                    })
                    .context("nginx started no workers")?;
                    pids.extend(workers_seen);
                }
                Ok(Target {
                    kind,
                    addr,
                    proc: Some(proc),
                    pids,
                    driver: "epoll (nginx)".to_owned(),
                })
            }
        }
    }

    /// The URL of `deployment`'s chat completions on this target. Direct streaming goes to
    /// the paced mock itself.
    pub fn url(&self, up: &Upstreams, deployment: &str) -> String {
        let addr = match (self.kind, deployment) {
            (TargetKind::Direct, STREAM_DEPLOYMENT) => up.stream[0],
            _ => self.addr,
        };
        format!("http://{addr}{}", client_path(deployment))
    }
}

/// Polls `f` every 20 ms until it gives a value or `within` passes.
fn wait_for<T>(within: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until `addr` accepts a connection, failing early when the process exits.
pub fn wait_listening(
    proc: &mut ChildProc,
    addr: SocketAddr,
    within: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        proc.check_alive()?;
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("nothing listening on {addr} after {within:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstreams() -> Upstreams {
        let a = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
        Upstreams {
            fast: [a(18001), a(18002)],
            stream: [a(18003), a(18004)],
        }
    }

    fn compiles(text: &str) -> sluice::snapshot::Snapshot {
        let env = |name: &str| (name == KEY_ENV).then(|| "k".to_owned());
        match sluice::config::load_str(Path::new("gen.toml"), text, &env, None) {
            Ok(snapshot) => snapshot,
            Err(e) => panic!("generated config does not compile:\n{e}\n{text}"),
        }
    }

    #[test]
    fn passthrough_config_compiles_with_one_backend_each() {
        let listen: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let text = sluice_passthrough_config(listen, &upstreams(), 1);
        compiles(&text);
        assert_eq!(text.matches("[[backend]]").count(), 2);
        assert!(text.contains("workers = 1"));
        assert!(text.contains("url = \"http://127.0.0.1:18001\""));
        assert!(!text.contains("18002"));
    }

    #[test]
    fn full_chain_config_compiles_and_balances_over_both_listeners() {
        let listen: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let text = sluice_full_chain_config(listen, &upstreams(), 2, &std::env::temp_dir());
        let db = std::env::temp_dir().join("full-chain-audit.db");
        assert!(text.contains(&format!("path = \"{}\"", db.display())));
        compiles(&text);
        assert!(text.contains("http://127.0.0.1:18001") && text.contains("http://127.0.0.1:18002"));
        assert!(text.contains("backends = [{ backend = \"mock-a\", weight = 1 }, { backend = \"mock-b\", weight = 1 }]"));
    }

    /// The bare full chain is the full chain's text with the audit tables cut and the admin
    /// listener off, line for line: nothing else differs, so the two measure only that.
    #[test]
    fn full_chain_bare_is_the_full_chain_without_audit_and_admin() {
        let listen: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let full = sluice_full_chain_config(listen, &upstreams(), 1, &std::env::temp_dir());
        let bare = sluice_full_chain_bare_config(listen, &upstreams(), 1);
        let full_snap = compiles(&full);
        let bare_snap = compiles(&bare);
        assert!(full_snap.audit.is_some() && full_snap.admin_listen.is_some());
        assert!(bare_snap.audit.is_none(), "{bare}");
        assert!(bare_snap.admin_listen.is_none(), "{bare}");
        assert!(!bare.contains("[audit") && bare.contains("[admin]\nlisten = \"\"\n"));
        // Same access policies (auth, request and token limits) and backends.
        assert_eq!(bare_snap.deployments.len(), full_snap.deployments.len());
        assert!(bare.contains("[[subscription]]") && bare.contains("unit = \"tokens\""));
        let (head, audit) = full.split_at(full.find("\n[audit]").unwrap());
        assert!(audit.contains("[[audit.sink]]"), "{full}");
        let expected = head
            .replacen(
                "Sluice full chain",
                "Sluice full chain without audit and metrics",
                1,
            )
            .replacen("listen = \"127.0.0.1:0\"", "listen = \"\"", 1);
        assert_eq!(bare, expected);
    }

    #[test]
    fn the_bare_full_chain_lists_the_full_chains_policies_but_audit_and_metrics() {
        let full = TargetKind::SluiceFullChain.policies();
        let bare = TargetKind::SluiceFullChainBare.policies();
        assert_eq!(full.len(), FULL_CHAIN_POLICIES.len() + 2);
        assert_eq!(bare.len(), FULL_CHAIN_POLICIES.len() + 1);
        assert_eq!(
            full[..FULL_CHAIN_POLICIES.len()],
            bare[..FULL_CHAIN_POLICIES.len()]
        );
        assert!(full.iter().any(|p| p.starts_with("audit log")));
        assert!(full.iter().any(|p| p.starts_with("metrics")));
        assert!(bare.last().unwrap().starts_with("no audit log"));
        assert_eq!(
            TargetKind::SluiceFullChainBare.name(),
            "sluice-full-chain-bare"
        );
        assert!(TargetKind::SluiceFullChainBare.is_proxy());
    }

    #[test]
    fn nginx_config_has_the_settings_that_matter() {
        let files = NginxFiles {
            pid: "/tmp/o/nginx.pid".into(),
            error_log: "/tmp/o/err.log".into(),
            temp: "/tmp/o/t".into(),
        };
        let text = nginx_config("127.0.0.1:9000".parse().unwrap(), &upstreams(), 2, &files);
        for needle in [
            "daemon off;",
            "master_process on;",
            "worker_processes 2;",
            "pid /tmp/o/nginx.pid;",
            "error_log /tmp/o/err.log",
            "access_log off;",
            "keepalive 64;",
            "proxy_http_version 1.1;",
            "proxy_set_header Connection \"\";",
            "proxy_buffering off;",
            "listen 127.0.0.1:9000;",
            "server 127.0.0.1:18001;",
            "server 127.0.0.1:18003;",
            "location /openai/deployments/bench-stream/",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        }
        assert_eq!(text.matches('{').count(), text.matches('}').count());
    }

    /// Certificates in a fresh temporary directory (removed by the caller).
    fn temp_certs(tag: &str) -> (PathBuf, CertFiles) {
        let dir = std::env::temp_dir().join(format!("sluice-bench-{tag}-{}", std::process::id()));
        let certs = crate::certs::write(&dir, "localhost").unwrap();
        (dir, certs)
    }

    #[test]
    fn sluice_tls_config_compiles_with_only_a_tls_listener() {
        let (dir, certs) = temp_certs("sluice-tls-config");
        let listen: SocketAddr = "127.0.0.1:8443".parse().unwrap();
        let text = sluice_tls_config(listen, &upstreams(), 1, &certs);
        compiles(&text);
        let _ = std::fs::remove_dir_all(&dir);
        // No plain listener in [server] (the admin listener is its own table).
        let server = text.split("[admin]").next().unwrap_or_default();
        assert!(!server.contains("\nlisten"), "{text}");
        for needle in [
            "tls_listen = [\"127.0.0.1:8443\"]",
            "[server.tls]",
            &format!("cert_file = \"{}\"", certs.cert.display()),
            &format!("key_file = \"{}\"", certs.key.display()),
            // The passthrough: plain HTTP to the mock, no access policies.
            "url = \"http://127.0.0.1:18001\"",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        }
        assert!(
            !text.contains("[[subscription]]") && !text.contains("limits"),
            "{text}"
        );
    }

    #[test]
    fn nginx_tls_config_has_the_settings_that_matter() {
        let files = NginxFiles {
            pid: "/tmp/o/nginx.pid".into(),
            error_log: "/tmp/o/err.log".into(),
            temp: "/tmp/o/t".into(),
        };
        let certs = CertFiles {
            ca: "/tmp/o/tls/ca.pem".into(),
            cert: "/tmp/o/tls/gw.pem".into(),
            key: "/tmp/o/tls/gw.key".into(),
        };
        let text = nginx_tls_config(
            "127.0.0.1:9443".parse().unwrap(),
            &upstreams(),
            1,
            &files,
            &certs,
        );
        for needle in [
            "listen 127.0.0.1:9443 ssl;",
            "ssl_certificate /tmp/o/tls/gw.pem;",
            "ssl_certificate_key /tmp/o/tls/gw.key;",
            "ssl_protocols TLSv1.2 TLSv1.3;",
            // Client keep-alive as in the plain config, upstream over plain HTTP.
            "keepalive_requests 1000000;",
            "keepalive_timeout 75s;",
            "proxy_pass http://mock;",
            "proxy_http_version 1.1;",
            "worker_processes 1;",
            "access_log off;",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        }
        // HTTPS only: no plain listener beside it.
        assert_eq!(text.matches("listen ").count(), 1, "{text}");
        assert!(!text.contains("ca.pem"), "{text}");
        assert_eq!(text.matches('{').count(), text.matches('}').count());
        // The plain config has no TLS in it.
        let plain = nginx_config("127.0.0.1:9000".parse().unwrap(), &upstreams(), 1, &files);
        assert!(
            plain.contains("listen 127.0.0.1:9000;") && !plain.contains("ssl"),
            "{plain}"
        );
    }

    /// Runs `nginx -t` on `conf` (prefix `dir`, then removed) and asserts nginx accepts it.
    fn nginx_t(nginx: &Path, dir: &Path, files: &NginxFiles, conf: &Path) {
        let out = Command::new(nginx)
            .arg("-t")
            .arg("-p")
            .arg(dir)
            .arg("-e")
            .arg(&files.error_log)
            .arg("-c")
            .arg(conf)
            .output()
            .unwrap();
        let _ = std::fs::remove_dir_all(dir);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// nginx itself accepts the TLS config with real certificates (`nginx -t` loads them).
    #[test]
    fn nginx_accepts_the_tls_config() {
        let Some(nginx) = crate::compare::scenarios::find_on_path("nginx") else {
            eprintln!("nginx not installed; skipped");
            return;
        };
        let (dir, certs) = temp_certs("nginx-tls-t");
        std::fs::create_dir_all(dir.join("t")).unwrap();
        let files = NginxFiles {
            pid: dir.join("nginx.pid"),
            error_log: dir.join("error.log"),
            temp: dir.join("t"),
        };
        let conf = dir.join("nginx.conf");
        let text = nginx_tls_config(
            "127.0.0.1:9".parse().unwrap(),
            &upstreams(),
            1,
            &files,
            &certs,
        );
        std::fs::write(&conf, text).unwrap();
        nginx_t(&nginx, &dir, &files, &conf);
    }

    #[test]
    fn only_the_passthrough_and_nginx_start_over_tls() {
        let certs = CertFiles {
            ca: "ca.pem".into(),
            cert: "gw.pem".into(),
            key: "gw.key".into(),
        };
        let out = std::env::temp_dir();
        let launch = Launch {
            sluice: Path::new("/nonexistent/sluice"),
            nginx: Path::new("/nonexistent/nginx"),
            cpus: &"0".parse().unwrap(),
            out: &out,
            callgrind: None,
        };
        for kind in [
            TargetKind::Direct,
            TargetKind::SluiceFullChain,
            TargetKind::SluiceFullChainBare,
        ] {
            let err = Target::start_tls(kind, &upstreams(), &launch, &certs)
                .err()
                .unwrap();
            assert!(err.to_string().contains("has no TLS form"), "{err}");
        }
    }

    #[test]
    fn nginx_config_for_callgrind_has_no_master() {
        let files = NginxFiles {
            pid: "/tmp/o/nginx.pid".into(),
            error_log: "/tmp/o/err.log".into(),
            temp: "/tmp/o/t".into(),
        };
        let text = nginx_config("127.0.0.1:9000".parse().unwrap(), &upstreams(), 0, &files);
        assert!(text.contains("master_process off;"), "{text}");
        assert!(text.contains("worker_processes 1;"), "{text}");
        assert!(text.contains("daemon off;"), "{text}");
    }

    /// nginx itself accepts the config (`nginx -t`), when it is installed.
    #[test]
    fn nginx_accepts_the_config() {
        let Some(nginx) = crate::compare::scenarios::find_on_path("nginx") else {
            eprintln!("nginx not installed; skipped");
            return;
        };
        let dir = std::env::temp_dir().join(format!("sluice-bench-nginx-t-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("t")).unwrap();
        let files = NginxFiles {
            pid: dir.join("nginx.pid"),
            error_log: dir.join("error.log"),
            temp: dir.join("t"),
        };
        let conf = dir.join("nginx.conf");
        std::fs::write(
            &conf,
            nginx_config("127.0.0.1:9".parse().unwrap(), &upstreams(), 1, &files),
        )
        .unwrap();
        nginx_t(&nginx, &dir, &files, &conf);
    }

    #[test]
    fn driver_from_the_startup_line() {
        let log = "2026-01-01T00:00:00Z  INFO sluice: sluice started workers=1 driver=io_uring \
                   listen=127.0.0.1:1 config=x.toml\n";
        assert_eq!(parse_driver(log).as_deref(), Some("io_uring"));
        assert_eq!(parse_driver("nothing yet\n"), None);
    }

    #[test]
    fn client_paths_are_the_azure_form() {
        assert_eq!(
            client_path(DEPLOYMENT),
            "/openai/deployments/bench/chat/completions?api-version=2024-10-21"
        );
    }
}
