//! `sluice-control`: the control plane. Versions the config at `--config` (a TOML file or a
//! folder of them), pushes each version to every `sluice` node watching it, records their
//! ACKs and NACKs, and keeps it all in `--state`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use sluice_control::auth::{Caller, Tokens};
use sluice_control::server;
use sluice_control::service::ControlPlane;

/// Sluice's control plane: pushes config to data-plane nodes and records their answers.
///
/// Tokens come from the environment: SLUICE_OPERATOR_TOKEN (for `sluicectl`) and
/// SLUICE_NODE_TOKEN (for nodes). Without both it listens on loopback only.
#[derive(Parser, Debug)]
#[command(name = "sluice-control", version, about)]
struct Cli {
    /// The config: a TOML file, or a folder of them (read in name order), usually a git
    /// checkout whose commit names each version.
    #[arg(long, value_name = "PATH")]
    config: PathBuf,
    /// Where the gRPC API listens.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:50051")]
    listen: SocketAddr,
    /// The admin listener: /metrics (Prometheus), /healthz, /readyz; "" for none.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9091")]
    admin: String,
    /// The state directory: its SQLite database keeps versions and nodes across restarts.
    #[arg(long, value_name = "DIR")]
    state: PathBuf,
    /// Once listening, write the API's address (`IP:PORT`) here (written whole, removed at
    /// shutdown): for scripts and tests that listen on port 0.
    #[arg(long, value_name = "FILE")]
    ready_file: Option<PathBuf>,
    /// How long the nodes' usage is kept (per-minute rows older than this are deleted).
    #[arg(long, value_name = "DURATION", default_value = "30d", value_parser = humantime::parse_duration)]
    usage_retention: std::time::Duration,
}

fn main() -> ExitCode {
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::error!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let tokens = Tokens::from_env();
    let open = tokens.open_to();
    if !open.is_empty() {
        if !server::all_loopback(&[cli.listen]) {
            anyhow::bail!(
                "refusing to listen on {} without SLUICE_OPERATOR_TOKEN and SLUICE_NODE_TOKEN: anyone who reaches it could change the config; set both tokens, or listen on a loopback address",
                cli.listen
            );
        }
        for caller in open {
            let var = match caller {
                Caller::Operator => "SLUICE_OPERATOR_TOKEN",
                Caller::Node => "SLUICE_NODE_TOKEN",
            };
            tracing::warn!("{var} is not set: {caller:?} calls are not authenticated (allowed on loopback only)");
        }
    }
    let admin_addr: Option<SocketAddr> = match cli.admin.as_str() {
        "" => None,
        text => Some(text.parse().map_err(|e| {
            anyhow::anyhow!("--admin {text}: {e} (expected IP:PORT, or \"\" for none)")
        })?),
    };
    let control = ControlPlane::open(&cli.state, tokens)?;
    sluice_control::usage::spawn(&control, cli.usage_retention);
    // Bound before anything is served, so a taken port stops the start.
    let admin = match admin_addr {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| anyhow::anyhow!("admin listener {addr}: {e}"))?,
        ),
        None => None,
    };
    // The path's text applies at start only when it changed since this state directory last
    // read it: a version made since (`apply -f`, an overlay) is not undone by a restart.
    let last = server::apply_path(&control, &cli.config, control.watched(&cli.config)).await;
    let listener = tokio::net::TcpListener::bind(cli.listen)
        .await
        .map_err(|e| anyhow::anyhow!("API listener {}: {e}", cli.listen))?;
    let addr = listener.local_addr()?;
    let (stop_admin, admin_stopped) = tokio::sync::oneshot::channel::<()>();
    if let Some(admin) = admin {
        tracing::info!("admin listening on {}", admin.local_addr()?);
        let control = control.clone();
        tokio::spawn(async move {
            let stopped = async {
                let _ = admin_stopped.await;
            };
            if let Err(e) = sluice_control::admin::serve(control, admin, stopped).await {
                tracing::error!("admin listener: {e}");
            }
        });
    }
    control
        .metrics
        .ready
        .store(true, std::sync::atomic::Ordering::Release);
    tracing::info!(
        listen = %addr,
        version = control.current_version(),
        config = %cli.config.display(),
        state = %cli.state.display(),
        "sluice-control started"
    );
    if let Some(path) = &cli.ready_file {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, format!("{addr}\n"))?;
        std::fs::rename(&tmp, path)?;
    }
    let watcher = tokio::spawn(server::watch_path(
        control.clone(),
        cli.config.clone(),
        last,
    ));
    let shutdown = async {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(e) => {
                    tracing::error!("cannot watch SIGTERM: {e}");
                    return std::future::pending().await;
                }
            };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::info!("shutting down");
    };
    let closing = control.clone();
    let shutdown = async move {
        shutdown.await;
        closing
            .metrics
            .ready
            .store(false, std::sync::atomic::Ordering::Release);
        closing.close();
        let _ = stop_admin.send(());
    };
    let served = server::serve(control, listener, shutdown).await;
    watcher.abort();
    if let Some(path) = &cli.ready_file {
        let _ = std::fs::remove_file(path);
    }
    served?;
    Ok(())
}
