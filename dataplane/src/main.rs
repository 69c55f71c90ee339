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
use sluice::apply::{self, ApplyError};
use sluice::reload::Reloader;
use sluice::server::{self, DriverChoice};

/// Sluice: one fast endpoint in front of your Azure OpenAI and OpenAI-compatible deployments.
#[derive(Parser, Debug)]
#[command(name = "sluice", version, about, subcommand_negates_reqs = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// The TOML config file.
    #[arg(long, value_name = "FILE", required = true)]
    config: Option<PathBuf>,
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
    // clap requires --config unless a subcommand is given.
    let config = cli
        .config
        .ok_or_else(|| anyhow::anyhow!("--config FILE is required"))?;
    if cli.check {
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
    let shared = match apply::start(&config) {
        Ok(shared) => shared,
        Err(ApplyError::Config(errors)) => {
            eprintln!("{errors}");
            return Ok(ExitCode::FAILURE);
        }
        Err(e) => return Err(e.into()),
    };
    let loaded = shared.snapshot();
    let workers = cli
        .workers
        .or(loaded.server.workers)
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let listen = server::Listeners {
        plain: loaded.server.listen.clone(),
        tls: loaded.server.tls_listen.clone(),
    };
    drop(loaded);
    // Register signal handlers before the workers start, so an early signal is not lost.
    let mut signals = Signals::new([SIGHUP, SIGTERM, SIGINT])?;
    // Bound before the workers, so a taken admin port stops the start; ready after them.
    let admin_listen = shared.snapshot().admin_listen;
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
    tracing::info!(
        "sluice started workers={} driver={} listen={} tls_listen={} config={}",
        running.workers,
        running.driver,
        plain.join(","),
        tls.join(","),
        config.display()
    );
    // The ready file: plain listeners, then TLS ones, in config order.
    let listen_list: Vec<String> = plain.into_iter().chain(tls).collect();

    let reloader = Reloader::new(shared.clone(), config.clone());
    let stop_watch = Arc::new(AtomicBool::new(false));
    reloader.spawn_watcher(stop_watch.clone())?;
    // Last: whoever waits for the file finds the startup line logged and reloads watched.
    if let Some(path) = &cli.ready_file {
        write_ready_file(path, &listen_list)
            .with_context(|| format!("cannot write the ready file {}", path.display()))?;
    }
    for signal in signals.forever() {
        if signal == SIGHUP {
            reloader.reload("SIGHUP");
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
    if let Some(audit) = shared.snapshot().audit.clone() {
        if !audit.close(Instant::now() + Duration::from_secs(10)) {
            tracing::warn!("audit log still writing after 10 s at shutdown; records may be lost");
        }
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

/// Writes `addrs` to `path`, one per line, through a temporary file renamed into place.
fn write_ready_file(path: &Path, addrs: &[String]) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let mut text = addrs.join("\n");
    text.push('\n');
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}
