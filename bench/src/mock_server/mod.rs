//! The standalone mock backend (`sluice-bench mock`): the same API surface as Sluice
//! (OpenAI paths, Azure `/openai/deployments/{d}/…?api-version=…`, `/openai/v1/…`,
//! `GET /v1/models`) answered by `sluice::mock::reply`, with set latency, streaming pace and
//! fault knobs (429s, 5xx, resets, slow starts, a one-off stall), so the load generator and
//! the comparison have a backend that is never the bottleneck and misbehaves on demand.
//!
//! Thread per core like the data plane: each worker is a monoio runtime (io_uring with
//! cooperative task running, epoll where refused) with its own SO_REUSEPORT listener per
//! address, its own random generator and its own counters, merged only when read
//! (`GET /_mock/stats`, [`MockHandle::stats`]). Used in-process through [`spawn`] or as a
//! process through [`run`].
//!
//! Modules: [`dist`] (delay distributions, the RNG), `faults` (what happens to a request),
//! [`budget`] (Azure-like per-minute token and request budgets), `stats` (counters), `answer` (heads and canned bodies), `listen` (sockets and resets),
//! `conn` (one connection), `worker` (one thread).

mod answer;
pub mod budget;
mod conn;
pub mod dist;
mod faults;
mod listen;
mod stats;
mod worker;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context;
use nix::sys::signal::{SigSet, Signal};
use sluice::runtime::DriverChoice;

pub use dist::{parse_duration, Dist};
pub use stats::MockStats;

/// `sluice-bench mock` arguments.
#[derive(clap::Args, Debug, Clone)]
pub struct MockArgs {
    /// Address to listen on; repeat for several listeners.
    #[arg(
        long = "listen",
        value_name = "ADDR",
        default_value = "127.0.0.1:18001"
    )]
    pub listen: Vec<SocketAddr>,
    /// Worker threads (each a runtime with its own listeners).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Delay before each answer: `20ms`, `uniform:10ms..30ms`, `exp:20ms` (mean),
    /// `normal:20ms,5ms`.
    #[arg(long, value_name = "DIST", default_value = "0ms")]
    pub latency: Dist,
    /// Completion tokens per answer (fewer when the request's max_tokens is lower).
    #[arg(long, default_value_t = 16)]
    pub completion_tokens: u32,
    /// Streaming pace in tokens per second; 0 streams as fast as possible.
    #[arg(long, default_value_t = 0.0)]
    pub tokens_per_second: f64,
    /// Length of each embedding vector unless the request asks for `dimensions`.
    #[arg(long, default_value_t = 8)]
    pub embedding_dimensions: usize,
    /// Model named in answers (when the request names none) and listed by /v1/models.
    #[arg(long, default_value = "sluice-mock")]
    pub model: String,
    /// Share of requests answered 429 in Azure's shape (0.0–1.0).
    #[arg(long = "rate-429", default_value_t = 0.0, value_parser = share)]
    pub rate_429: f64,
    /// The 429's `retry-after-ms` (and `retry-after`, in seconds rounded up).
    #[arg(long, default_value_t = 1000)]
    pub retry_after_ms: u64,
    /// Share of requests answered with `--status-5xx` (0.0–1.0).
    #[arg(long = "rate-5xx", default_value_t = 0.0, value_parser = share)]
    pub rate_5xx: f64,
    /// The status of the 5xx answers.
    #[arg(long = "status-5xx", default_value_t = 503, value_parser = clap::value_parser!(u16).range(500..=599))]
    pub status_5xx: u16,
    /// Share of requests whose connection is reset (SO_LINGER 0) instead of answered.
    #[arg(long, default_value_t = 0.0, value_parser = share)]
    pub rate_reset: f64,
    /// Share of answers whose first byte is delayed by `--slow-first-byte`.
    #[arg(long, default_value_t = 0.0, value_parser = share)]
    pub rate_slow: f64,
    /// The slow starts' extra delay (a DIST, on top of `--latency`).
    #[arg(long, value_name = "DIST", default_value = "1s")]
    pub slow_first_byte: Dist,
    /// Token budget per minute, as an Azure deployment's quota: each request is charged
    /// its prompt's estimate plus its max_tokens at admission, and answered 429 (with
    /// `retry-after-ms`) when the budget cannot cover it; every answer carries
    /// `x-ratelimit-remaining-tokens` and `x-ratelimit-reset-tokens`. 0: no budget.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub tokens_per_minute: u64,
    /// Request budget per minute, as `--tokens-per-minute` (`x-ratelimit-*-requests`).
    /// 0: no budget.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub requests_per_minute: u64,
    /// What a budget holds: what its rate refills over this window (Azure evaluates its
    /// per-minute limits over windows of 1 or 10 s). At most 1m.
    #[arg(long, value_name = "DUR", value_parser = parse_duration, default_value = "10s")]
    pub budget_window: Duration,
    /// Start of the one-off stall, counted from startup.
    #[arg(long, value_name = "DUR", value_parser = parse_duration, requires = "stall_for")]
    pub stall_after: Option<Duration>,
    /// Length of the stall: answers due in it wait until it ends.
    #[arg(long, value_name = "DUR", value_parser = parse_duration, requires = "stall_after")]
    pub stall_for: Option<Duration>,
    /// Seed of the random draws (shares and delays).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// io driver: auto (io_uring, epoll where refused), io-uring or epoll.
    #[arg(long, value_enum, default_value = "auto")]
    pub driver: DriverChoice,
}

fn share(text: &str) -> Result<f64, String> {
    let v: f64 = text
        .parse()
        .map_err(|_| format!("`{text}` is not a number"))?;
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("`{text}`: a share is between 0.0 and 1.0"))
    }
}

/// Everything the mock does, as [`spawn`] takes it. Fields mirror [`MockArgs`]; the
/// defaults are the command line's, except `listen` (`127.0.0.1:0`: a free port, read back
/// with [`MockHandle::addrs`]).
#[derive(Debug, Clone)]
pub struct MockConfig {
    /// Addresses to listen on; port 0 picks a free port (the same for every worker).
    pub listen: Vec<SocketAddr>,
    /// Worker threads. Default 1 (0 counts as 1).
    pub threads: usize,
    /// io driver. Default auto.
    pub driver: DriverChoice,
    /// Delay before each model answer (not before 429/5xx faults). Default 0.
    pub latency: Dist,
    /// Completion tokens per answer. Default 16.
    pub completion_tokens: u32,
    /// Streaming pace; 0 = unlimited. Default 0.
    pub tokens_per_second: f64,
    /// Embedding length. Default 8.
    pub embedding_dimensions: usize,
    /// Model name. Default `sluice-mock`.
    pub model: String,
    /// Share answered 429. Default 0.
    pub rate_429: f64,
    /// The 429's retry-after-ms. Default 1000.
    pub retry_after_ms: u64,
    /// Share answered 5xx. Default 0.
    pub rate_5xx: f64,
    /// The 5xx status. Default 503.
    pub status_5xx: u16,
    /// Share reset. Default 0.
    pub rate_reset: f64,
    /// Share with a slow first byte. Default 0.
    pub rate_slow: f64,
    /// The slow first byte's extra delay. Default 1 s.
    pub slow_first_byte: Dist,
    /// Tokens per minute (0: no token budget). Default 0.
    pub tokens_per_minute: u64,
    /// Requests per minute (0: no request budget). Default 0.
    pub requests_per_minute: u64,
    /// What a budget holds: its rate over this window. Default 10 s.
    pub budget_window: Duration,
    /// Stall start after startup (with `stall_for`). Default none.
    pub stall_after: Option<Duration>,
    /// Stall length (with `stall_after`). Default none.
    pub stall_for: Option<Duration>,
    /// RNG seed. Default 1.
    pub seed: u64,
}

impl Default for MockConfig {
    fn default() -> Self {
        MockConfig {
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 0))],
            threads: 1,
            driver: DriverChoice::Auto,
            latency: Dist::default(),
            completion_tokens: 16,
            tokens_per_second: 0.0,
            embedding_dimensions: 8,
            model: "sluice-mock".to_owned(),
            rate_429: 0.0,
            retry_after_ms: 1000,
            rate_5xx: 0.0,
            status_5xx: 503,
            rate_reset: 0.0,
            rate_slow: 0.0,
            slow_first_byte: Dist::Fixed(Duration::from_secs(1)),
            tokens_per_minute: 0,
            requests_per_minute: 0,
            budget_window: Duration::from_secs(10),
            stall_after: None,
            stall_for: None,
            seed: 1,
        }
    }
}

impl From<MockArgs> for MockConfig {
    fn from(a: MockArgs) -> Self {
        MockConfig {
            listen: a.listen,
            threads: a.threads,
            driver: a.driver,
            latency: a.latency,
            completion_tokens: a.completion_tokens,
            tokens_per_second: a.tokens_per_second,
            embedding_dimensions: a.embedding_dimensions,
            model: a.model,
            rate_429: a.rate_429,
            retry_after_ms: a.retry_after_ms,
            rate_5xx: a.rate_5xx,
            status_5xx: a.status_5xx,
            rate_reset: a.rate_reset,
            rate_slow: a.rate_slow,
            slow_first_byte: a.slow_first_byte,
            tokens_per_minute: a.tokens_per_minute,
            requests_per_minute: a.requests_per_minute,
            budget_window: a.budget_window,
            stall_after: a.stall_after,
            stall_for: a.stall_for,
            seed: a.seed,
        }
    }
}

/// A running mock. Dropping it stops it too (and joins its threads).
pub struct MockHandle {
    shared: Arc<worker::Shared>,
    threads: Vec<JoinHandle<()>>,
    addrs: Vec<SocketAddr>,
    driver: &'static str,
}

impl MockHandle {
    /// The bound addresses, in `listen` order (port 0 resolved).
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// The io driver in use: `io_uring`, or `epoll` if any worker fell back to it.
    pub fn driver(&self) -> &'static str {
        self.driver
    }

    /// Worker thread count.
    pub fn threads(&self) -> usize {
        self.threads.len()
    }

    /// The counts since start or the last reset.
    pub fn stats(&self) -> MockStats {
        self.shared.board.read()
    }

    /// Starts counting from zero.
    pub fn reset_stats(&self) {
        self.shared.board.reset();
    }

    /// Stops every worker (connections are dropped) and joins them.
    pub fn stop(self) {
        // Drop does it.
    }
}

impl Drop for MockHandle {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Starts the mock: returns once every worker has bound every listener. Worker 0 binds
/// first, so a port 0 resolves to one port that the others then share.
pub fn spawn(cfg: MockConfig) -> anyhow::Result<MockHandle> {
    anyhow::ensure!(!cfg.listen.is_empty(), "no address to listen on");
    anyhow::ensure!(
        (500..=599).contains(&cfg.status_5xx),
        "status_5xx {} is not a 5xx",
        cfg.status_5xx
    );
    let threads = cfg.threads.max(1);
    let shared = Arc::new(worker::Shared::new(&cfg));
    let mut handle = MockHandle {
        shared: shared.clone(),
        threads: Vec::with_capacity(threads),
        addrs: cfg.listen.clone(),
        driver: sluice::runtime::IO_URING,
    };
    for index in 0..threads {
        let (tx, rx) = mpsc::channel();
        let (shared, listen) = (shared.clone(), handle.addrs.clone());
        let thread = std::thread::Builder::new()
            .name(format!("sluice-mock-{index}"))
            .spawn(move || worker::run_thread(index, shared, listen, cfg.driver, tx))
            .context("cannot start a mock worker thread")?;
        handle.threads.push(thread);
        // On an error `handle` is dropped here, stopping the workers already running.
        let (addrs, driver) = match rx.recv() {
            Ok(Ok(ready)) => ready,
            Ok(Err(message)) => anyhow::bail!(message),
            Err(_) => anyhow::bail!("mock worker {index} stopped before it was ready"),
        };
        handle.addrs = addrs;
        if driver != sluice::runtime::IO_URING {
            handle.driver = driver;
        }
    }
    Ok(handle)
}

/// Runs the mock until SIGTERM or SIGINT: prints the listening line once every listener is
/// bound, and the final stats line when stopping.
pub fn run(args: MockArgs) -> anyhow::Result<()> {
    // Block the signals before any worker starts (threads inherit the mask), so they are
    // taken only by the `wait` below.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGINT);
    signals
        .thread_block()
        .context("cannot block SIGTERM/SIGINT")?;
    let handle = spawn(args.into())?;
    let addrs: Vec<String> = handle.addrs().iter().map(|a| a.to_string()).collect();
    eprintln!(
        "sluice-bench mock listening on {} threads={} driver={}",
        addrs.join(","),
        handle.threads(),
        handle.driver()
    );
    let signal = signals.wait().context("waiting for a signal")?;
    let stats = serde_json::to_string(&handle.stats())?;
    handle.stop();
    eprintln!("sluice-bench mock stopped on {signal}: {stats}");
    Ok(())
}
