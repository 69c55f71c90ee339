//! `sluice-bench load`: an HTTP/1.1 load generator for LLM API endpoints, over plain TCP or
//! TLS (`https://` URLs, [`tls`]).
//!
//! Open loop (`--rate`) sends request k at `start + k/rate` and measures its latency from
//! that intended time, so a target that stalls is charged for the whole backlog it causes
//! (coordinated omission corrected, as wrk2 does). Closed loop sends each connection's next
//! request as soon as its last answer is complete, for peak throughput. Thread per core:
//! each thread is a monoio runtime (io_uring with cooperative task running, else epoll)
//! owning its connections, its share of the schedule and its own HdrHistograms
//! (microseconds, 3 significant figures), merged when the run ends. With `--stream`, answer
//! bodies are read as server-sent events for time to first token and gaps between events.
//!
//! The pieces: [`schedule`] (windows, slots, request tickets; pure), [`sse`] (event
//! counting; pure), `target` (URL and request rendering), [`tls`] (the client's TLS
//! config), `conn` (one keep-alive connection, plain or TLS), `worker` (threads and connection loops), `record` (per-thread counters),
//! `progress` (the once-a-second line) and [`report`] (what a run returns).

mod args;
mod conn;
mod progress;
mod record;
pub mod report;
pub mod schedule;
pub mod sse;
mod target;
pub mod tls;
mod worker;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Barrier, Mutex, OnceLock};
use std::time::Duration;

use anyhow::{bail, Context};

pub use args::{parse_cpu_list, parse_duration, LoadArgs};
pub use report::{CurvePoint, ErrorCounts, LoadReport, Mode, Percentiles};

use conn::Exchange;
use record::{Progress, Recorder};
use schedule::Tickets;
use target::{render_request, Url};
use tls::TlsClient;
use worker::Shared;

/// One load run. `Default` is the CLI's defaults against
/// `http://127.0.0.1:8080/v1/chat/completions`, without progress output.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadConfig {
    /// `http://` or `https://` URL.
    pub url: String,
    /// Connect here instead of to the address the URL's host resolves to (the URL still
    /// gives `Host`, SNI and the name the certificate must carry), as curl's `--connect-to`.
    pub connect_to: Option<SocketAddr>,
    /// `https://`: trust only the CA certificates in this PEM file; `None`: the Mozilla roots.
    pub ca_file: Option<PathBuf>,
    /// `https://`: resume TLS sessions (tickets, session IDs) across the run's connections;
    /// off by default, so every handshake is a full one.
    pub tls_resumption: bool,
    /// Open a new connection for every request (closed after its answer; for `https://` a
    /// new handshake each): connections per second instead of keep-alive requests.
    pub new_connection_per_request: bool,
    /// Request method; `None`: GET without a body, POST with one.
    pub method: Option<String>,
    /// Request body (sent with `Content-Length`); empty for none.
    pub body: Vec<u8>,
    /// Extra request header fields, in order.
    pub headers: Vec<(String, String)>,
    /// Connections, all threads together (default 16).
    pub connections: usize,
    /// Threads, one runtime each (default 1; at most `connections`).
    pub threads: usize,
    /// Length of the measured part (default 10 s); ignored with `requests`.
    pub duration: Duration,
    /// Unrecorded lead-in before the measured part (default 1 s).
    pub warmup: Duration,
    /// Open loop at this many requests per second in total; `None`: closed loop.
    pub rate: Option<f64>,
    /// Stop after exactly this many measured requests instead of after `duration`.
    pub requests: Option<u64>,
    /// Read answers as server-sent events: time to first token and event gaps.
    pub stream: bool,
    /// Limit on connecting, and on each request from send to complete answer (default 30 s).
    pub timeout: Duration,
    /// Name in the report; empty: the URL.
    pub label: String,
    /// Print the progress line on stderr once a second.
    pub progress: bool,
    /// CPUs to pin the threads to, round-robin; empty: no pinning.
    pub cpus: Vec<usize>,
}

impl Default for LoadConfig {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:8080/v1/chat/completions".to_string(),
            connect_to: None,
            ca_file: None,
            tls_resumption: false,
            new_connection_per_request: false,
            method: None,
            body: Vec::new(),
            headers: Vec::new(),
            connections: 16,
            threads: 1,
            duration: Duration::from_secs(10),
            warmup: Duration::from_secs(1),
            rate: None,
            requests: None,
            stream: false,
            timeout: Duration::from_secs(30),
            label: String::new(),
            progress: false,
            cpus: Vec::new(),
        }
    }
}

/// Runs one load and returns what it measured. Blocks until every measured request has
/// ended (answers in flight when the time is up are waited for, within `timeout`).
pub fn run(cfg: &LoadConfig) -> anyhow::Result<LoadReport> {
    if cfg.connections == 0 || cfg.threads == 0 {
        bail!("--connections and --threads must be at least 1");
    }
    if let Some(rate) = cfg.rate {
        if !(rate.is_finite() && rate > 0.0) {
            bail!("--rate must be a positive number of requests per second");
        }
    }
    if cfg.timeout.is_zero() {
        bail!("--timeout must be positive");
    }
    let url = Url::parse(&cfg.url)?;
    let addr = match cfg.connect_to {
        Some(addr) => addr,
        None => url.resolve()?,
    };
    let tls = if url.tls {
        Some(TlsClient::new(
            &url.host,
            cfg.ca_file.as_deref(),
            cfg.tls_resumption,
        )?)
    } else if cfg.ca_file.is_some() || cfg.tls_resumption {
        bail!("--ca-file and --tls-resumption need an https:// URL");
    } else {
        None
    };
    let request = render_request(&url, cfg.method.as_deref(), &cfg.headers, &cfg.body)?;
    let threads = cfg.threads.min(cfg.connections);
    let head_request = cfg
        .method
        .as_deref()
        .is_some_and(|m| m.eq_ignore_ascii_case("HEAD"));

    let shared = Arc::new(Shared {
        exchange: Exchange {
            addr,
            request: request.into(),
            head_request,
            stream: cfg.stream,
            tls,
            fresh_connections: cfg.new_connection_per_request,
        },
        timeout: cfg.timeout,
        warmup: cfg.warmup,
        duration: cfg.requests.is_none().then_some(cfg.duration),
        rate: cfg.rate,
        threads,
        tickets: Tickets::new(cfg.requests),
        barrier: Barrier::new(threads),
        start: OnceLock::new(),
        progress: if cfg.progress {
            (0..threads)
                .map(|_| Mutex::new(Progress::default()))
                .collect()
        } else {
            Vec::new()
        },
        cpus: cfg.cpus.clone(),
    });

    let mut handles = Vec::with_capacity(threads);
    for index in 0..threads {
        // Connections spread evenly, the first threads taking the remainder.
        let connections =
            cfg.connections / threads + usize::from(index < cfg.connections % threads);
        let shared = shared.clone();
        let handle = std::thread::Builder::new()
            .name(format!("sluice-load-{index}"))
            .spawn(move || worker::run_thread(shared, index, connections))
            .context("cannot start a load thread")?;
        handles.push(handle);
    }
    if cfg.progress {
        progress::watch(&shared, &handles);
    }
    let mut total = Recorder::new(false);
    let mut failure = None;
    for handle in handles {
        match handle.join() {
            Ok(Ok(recorder)) => total.merge(&recorder),
            Ok(Err(e)) => failure = Some(e),
            Err(_) => failure = Some(anyhow::anyhow!("a load thread panicked")),
        }
    }
    if let Some(e) = failure {
        return Err(e);
    }
    let start = shared
        .start
        .get()
        .copied()
        .context("the load never started")?;
    Ok(report(cfg, threads, shared.plan(start).warmup_end, &total))
}

fn report(
    cfg: &LoadConfig,
    threads: usize,
    measure_start: std::time::Instant,
    total: &Recorder,
) -> LoadReport {
    let duration_s = total.last_done.map_or(0.0, |t| {
        t.saturating_duration_since(measure_start).as_secs_f64()
    });
    let rps = if duration_s > 0.0 {
        total.requests as f64 / duration_s
    } else {
        0.0
    };
    LoadReport {
        label: if cfg.label.is_empty() {
            cfg.url.clone()
        } else {
            cfg.label.clone()
        },
        url: cfg.url.clone(),
        mode: if cfg.rate.is_some() {
            Mode::Open
        } else {
            Mode::Closed
        },
        rate: cfg.rate,
        connections: cfg.connections,
        threads,
        duration_s: report::round_to(duration_s, 1e6),
        requests: total.requests,
        ok: total.ok,
        errors: total.errors,
        rps: report::round_to(rps, 10.0),
        latency_us: Percentiles::of(&total.latency),
        ttft_us: cfg.stream.then(|| Percentiles::of(&total.ttft)),
        event_gap_us: cfg.stream.then(|| Percentiles::of(&total.gap)),
        latency_curve: report::curve(&total.latency),
        warmup_requests: total.warmup,
    }
}

/// Runs one load from the command line: prints the table to stdout and writes the JSON
/// report to `--json` when given.
pub fn run_cli(args: LoadArgs) -> anyhow::Result<()> {
    let json = args.json.clone();
    let cfg = args.into_config()?;
    let report = run(&cfg)?;
    print!("{report}");
    if let Some(path) = json {
        let text = serde_json::to_string_pretty(&report)?;
        std::fs::write(&path, text + "\n")
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}
