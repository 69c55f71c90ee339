//! `sluice`: the data plane gateway. Runs from one TOML config file (see the README's config
//! reference), reloads it on SIGHUP and on change, and drains gracefully on SIGTERM/SIGINT.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use sluice::agent::{Agent, AgentSettings};
use sluice::apply::{self, ApplyError, HostLocal};
use sluice::managed::Managed;
use sluice::reload::Reloader;
use sluice::server::{self, DriverChoice};

/// Sluice: one fast endpoint in front of your Azure OpenAI and OpenAI-compatible deployments.
#[derive(Parser, Debug)]
#[command(name = "sluice", version, about, subcommand_negates_reqs = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// The TOML config file. With --control-plane, it serves until the control plane's
    /// first version is in force, and gives the host-local settings (listeners, TLS,
    /// workers, admin listener).
    #[arg(long, value_name = "FILE", required_unless_present = "control_plane")]
    config: Option<PathBuf>,
    /// Take config from this control plane (`http://HOST:PORT`): a managed node. The node
    /// token comes from SLUICE_NODE_TOKEN.
    #[arg(long, value_name = "URL", requires = "node_id")]
    control_plane: Option<String>,
    /// This node's stable id (with --control-plane): it names the node in `sluicectl nodes`.
    #[arg(long, value_name = "ID", requires = "control_plane")]
    node_id: Option<String>,
    /// Where to listen (repeatable; with --control-plane): replaces the config file's
    /// `[server] listen`. A managed node without --config needs at least one.
    #[arg(long = "listen", value_name = "ADDR", requires = "control_plane")]
    listen: Vec<std::net::SocketAddr>,
    /// The admin listener (with --control-plane), `""` for none: replaces the config file's
    /// `[admin] listen` (default 127.0.0.1:9090).
    #[arg(long, value_name = "ADDR", requires = "control_plane")]
    admin: Option<String>,
    /// Worker threads (default: `server.workers`, else one per available core).
    #[arg(long)]
    workers: Option<usize>,
    /// Validate the config file and exit (non-zero on error).
    #[arg(long)]
    check: bool,
    /// I/O driver: io_uring (falling back to epoll where refused), or force one.
    #[arg(long, value_enum, default_value = "auto")]
    driver: DriverChoice,
    /// Once every worker listens, write the listen addresses here, one `IP:PORT` per line,
    /// `listen` then `tls_listen` (a port 0 in the config resolved to the one bound).
    /// Written whole (a temporary file renamed), so a reader never sees part of it; removed
    /// at shutdown.
    #[arg(long, value_name = "FILE")]
    ready_file: Option<PathBuf>,
    /// The log's format on stderr: `text` (colours only on a terminal) or `json` (one
    /// object per line, for log shippers).
    #[arg(long, value_enum, default_value = "text", env = "SLUICE_LOG_FORMAT")]
    log_format: LogFormat,
}

/// How the process log is written (`--log-format`).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Tools besides running the gateway.
#[derive(Subcommand, Debug)]
enum Command {
    /// Print a new random subscription key and the SHA-256 hash to put in the config file.
    Keygen,
    /// Token usage from an audit database (`[[audit.sink]] kind = "sqlite"`), grouped.
    Usage {
        /// The audit database.
        #[arg(long, value_name = "FILE")]
        db: PathBuf,
        /// Dimensions to group by, comma-separated: subscription, product, deployment,
        /// backend, model, operation, status, node, api_version, day, hour.
        #[arg(long, default_value = "subscription,deployment")]
        by: String,
        /// How far back: records of the last DURATION (e.g. `30m`, `24h`, `7d`).
        #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
        since: Duration,
        /// Output: an aligned table, or one JSON array of rows.
        #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
        output: Output,
    },
}

/// How `sluice usage` prints (`-o`).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Output {
    /// Aligned columns with a header line.
    Table,
    /// One JSON array of objects.
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr);
    // Every line logged while a request is served carries its id (`sluice::logging`).
    use sluice::logging::RequestIdFormat;
    use tracing_subscriber::fmt::format;
    match cli.log_format {
        // One JSON object per line (timestamp, level, target, fields) for log shippers.
        LogFormat::Json => logs
            .json()
            .event_format(RequestIdFormat::new(format().json(), true))
            .init(),
        // Colours only for a terminal: a log file or journald gets plain text.
        LogFormat::Text => {
            let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
            logs.with_ansi(ansi)
                .event_format(RequestIdFormat::new(format().with_ansi(ansi), false))
                .init()
        }
    }
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    if let Some(Command::Usage {
        db,
        by,
        since,
        output,
    }) = &cli.command
    {
        return usage(db, by, *since, *output);
    }
    if let Some(Command::Keygen) = cli.command {
        let generated = sluice::auth::generate_key()
            .map_err(|e| anyhow::anyhow!("no randomness from the OS: {e}"))?;
        print!("{}", sluice::auth::keygen::keygen_report(&generated));
        return Ok(ExitCode::SUCCESS);
    }
    if cli.check {
        let config = cli
            .config
            .clone()
            .ok_or_else(|| anyhow::anyhow!("--check needs --config FILE"))?;
        // Compiled and built (every key parsed), but nothing started: no JWKS fetch, no
        // worker.
        return Ok(match apply::prepare(&config, None) {
            Ok(_) => {
                println!("config OK: {}", config.display());
                ExitCode::SUCCESS
            }
            Err(errors) => {
                eprintln!("{errors}");
                ExitCode::FAILURE
            }
        });
    }
    // Register signal handlers first, so an early signal is not lost.
    let mut signals = Signals::new([SIGHUP, SIGTERM, SIGINT])?;
    // A write past the file size limit (`ulimit -f`) would kill the process by default: with
    // SIGXFSZ caught, it fails with EFBIG instead, like a full disk, and the audit log counts
    // what it could not write.
    signal_hook::flag::register(
        signal_hook::consts::SIGXFSZ,
        Arc::new(AtomicBool::new(false)),
    )?;
    let local = match &cli.config {
        Some(config) => match apply::start(config) {
            Ok(shared) => Some(shared),
            Err(ApplyError::Config(errors)) => {
                eprintln!("{errors}");
                return Ok(ExitCode::FAILURE);
            }
            Err(e) => return Err(e.into()),
        },
        None => None,
    };
    let (shared, host, managed) = match &cli.control_plane {
        None => {
            let shared = local.ok_or_else(|| anyhow::anyhow!("--config FILE is required"))?;
            let host = HostLocal::of(&shared.snapshot());
            (shared, host, None)
        }
        Some(url) => {
            let host = host_local(&cli, local.as_ref())?;
            let (managed, first) = match local {
                Some(shared) => (Managed::serving(shared, host.clone()), None),
                None => {
                    let (managed, first) = Managed::waiting(host.clone());
                    (managed, Some(first))
                }
            };
            let settings = AgentSettings {
                url: url.clone(),
                node_id: cli.node_id.clone().unwrap_or_default(),
                hostname: nix::unistd::gethostname()
                    .map(|h| h.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                token: std::env::var("SLUICE_NODE_TOKEN").ok(),
            };
            Agent::new(settings, managed.clone())?
                .with_usage(managed.clone())
                .spawn()?;
            let shared = match first {
                None => managed.shared(),
                Some(first) => {
                    tracing::info!(url = %url, "waiting for the control plane's first config");
                    match wait_first(&first, &mut signals) {
                        Some(shared) => Some(shared),
                        None => return Ok(ExitCode::SUCCESS),
                    }
                }
            };
            (
                shared.ok_or_else(|| anyhow::anyhow!("no config to serve"))?,
                host,
                Some(managed),
            )
        }
    };
    let workers = cli
        .workers
        .or(host.workers)
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let listen = server::Listeners {
        plain: host.listen.clone(),
        tls: host.tls_listen.clone(),
    };
    // Bound before the workers, so a taken admin port stops the start; ready after them.
    let admin_listen = host.admin_listen;
    let admin = match admin_listen {
        Some(addr) => Some(sluice::admin::Admin::start(addr, shared.clone())?),
        None => None,
    };
    let running = server::start(shared.clone(), listen, workers, cli.driver)?;
    if let Some(admin) = &admin {
        admin.set_ready();
        tracing::info!("admin listening on {}", admin.addr);
    }
    let plain: Vec<String> = running.listen.iter().map(ToString::to_string).collect();
    let tls: Vec<String> = running.tls_listen.iter().map(ToString::to_string).collect();
    let source = match (&cli.control_plane, &cli.config) {
        (Some(url), _) => format!("control plane {url}"),
        (None, Some(config)) => config.display().to_string(),
        (None, None) => String::new(),
    };
    tracing::info!(
        "sluice started workers={} driver={} listen={} tls_listen={} config={}",
        running.workers,
        running.driver,
        plain.join(","),
        tls.join(","),
        source
    );
    // The ready file: plain listeners, then TLS ones, in config order.
    let listen_list: Vec<String> = plain.into_iter().chain(tls).collect();

    // The local file is watched only on an unmanaged node; a managed one reloads it on
    // SIGHUP until the control plane's first version is in force.
    let reloader = cli
        .config
        .as_ref()
        .map(|config| Reloader::new(shared.clone(), config.clone()));
    let stop_watch = Arc::new(AtomicBool::new(false));
    if let (Some(reloader), None) = (&reloader, &managed) {
        reloader.spawn_watcher(stop_watch.clone())?;
    }
    // Last: whoever waits for the file finds the startup line logged and reloads watched.
    if let Some(path) = &cli.ready_file {
        write_ready_file(path, &listen_list)
            .with_context(|| format!("cannot write the ready file {}", path.display()))?;
    }
    for signal in signals.forever() {
        if signal == SIGHUP {
            match (&reloader, &managed) {
                (_, Some(managed)) if managed.pushed() => {
                    tracing::warn!("SIGHUP ignored: the control plane's config is in force")
                }
                (Some(reloader), _) => {
                    reloader.reload("SIGHUP");
                }
                (None, _) => tracing::warn!("SIGHUP ignored: no local config file"),
            }
        } else {
            break;
        }
    }
    stop_watch.store(true, Ordering::Release);
    let grace = shared.snapshot().server.shutdown_grace;
    tracing::info!(
        grace_ms = grace.as_millis() as u64,
        "shutting down: no new connections, draining requests in flight"
    );
    shared.begin_shutdown();
    // Workers stop on their own at the grace deadline; the margin covers their last writes.
    let finished = running.join(Instant::now() + grace + Duration::from_secs(2));
    // Every request has completed (or been cut): its record is queued; write them all.
    // So are those of a config a reload replaced.
    if !shared.close_audit(Instant::now() + AUDIT_CLOSE) {
        let queued = shared
            .snapshot()
            .audit
            .as_ref()
            .map_or(0, |a| a.queue_depth());
        tracing::warn!(
            queued,
            "audit log still writing {} s into shutdown; the records not yet written are lost",
            AUDIT_CLOSE.as_secs()
        );
    }
    // No longer listening: a script waiting for the file must not find a stale one.
    if let Some(path) = &cli.ready_file {
        let _ = std::fs::remove_file(path);
    }
    if finished {
        tracing::info!("sluice stopped");
    } else {
        tracing::warn!("sluice stopped with workers still busy after the grace period");
    }
    Ok(ExitCode::SUCCESS)
}

/// `sluice usage`: exit 0 with the table or JSON; 2 for a bad `--by`; 1 when the database
/// cannot be read.
fn usage(db: &Path, by: &str, since: Duration, output: Output) -> anyhow::Result<ExitCode> {
    use sluice::audit::usage;
    let by = match usage::parse_by(by) {
        Ok(by) => by,
        Err(e) => {
            eprintln!("sluice usage: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    if !db.exists() {
        eprintln!("sluice usage: {}: no such file", db.display());
        return Ok(ExitCode::FAILURE);
    }
    let rows = match usage::query(db, &by, since) {
        Ok(rows) => rows,
        Err(e) => {
            eprintln!("sluice usage: {e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    match output {
        Output::Table => print!("{}", usage::table(&by, &rows)),
        Output::Json => println!("{}", usage::json(&by, &rows)),
    }
    Ok(ExitCode::SUCCESS)
}

/// How long shutdown waits for the audit log to write what is queued.
const AUDIT_CLOSE: Duration = Duration::from_secs(30);

/// The host-local settings of a managed node: the local file's (if any) with the command
/// line's `--listen`, `--admin` and `--workers` over them.
fn host_local(cli: &Cli, local: Option<&Arc<server::Shared>>) -> anyhow::Result<HostLocal> {
    let mut host = match local {
        Some(shared) => HostLocal::of(&shared.snapshot()),
        None => HostLocal {
            admin_listen: Some(std::net::SocketAddr::from(([127, 0, 0, 1], 9090))),
            ..HostLocal::default()
        },
    };
    if !cli.listen.is_empty() {
        host.listen.clone_from(&cli.listen);
    }
    if let Some(admin) = &cli.admin {
        host.admin_listen = match admin.as_str() {
            "" => None,
            text => Some(
                text.parse()
                    .with_context(|| format!("--admin {text}: expected IP:PORT or \"\""))?,
            ),
        };
    }
    if cli.workers.is_some() {
        host.workers = cli.workers;
    }
    if host.listen.is_empty() && host.tls_listen.is_empty() {
        anyhow::bail!("a managed node without --config needs --listen ADDR");
    }
    Ok(host)
}

/// Waits for the control plane's first version; `None` when SIGTERM or SIGINT came first.
fn wait_first(
    first: &std::sync::mpsc::Receiver<Arc<server::Shared>>,
    signals: &mut Signals,
) -> Option<Arc<server::Shared>> {
    loop {
        if let Ok(shared) = first.recv_timeout(Duration::from_millis(200)) {
            return Some(shared);
        }
        if signals.pending().any(|s| s == SIGTERM || s == SIGINT) {
            tracing::info!("stopped before the control plane sent a config");
            return None;
        }
    }
}

/// Writes `addrs` to `path`, one per line, through a temporary file renamed into place.
fn write_ready_file(path: &Path, addrs: &[String]) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let mut text = addrs.join("\n");
    text.push('\n');
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}
