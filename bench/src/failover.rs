//! `sluice-bench failover`: what failover costs and what it saves, in one bounded run on
//! loopback (issue 14). Two mock backends (in this process) in one pool behind Sluice (a
//! child process on its own CPUs), measured in phases of a fixed open-loop load:
//!
//! 1. `direct` — the load straight at a healthy mock: the baseline for added latency.
//! 2. `sluice-healthy` — Sluice over two healthy mocks: its own cost, no failover.
//! 3. `sluice-429` — one mock answers a share of requests 429 with `retry-after-ms`:
//!    what clients see (Sluice fails over, so they should see no 429), how many 429s the
//!    throttling mock still sends (one per cool-down at best), the latency and CPU it costs.
//! 4. `sluice-budget` — each mock has an Azure-like token budget (`mock --tokens-per-minute`),
//!    of different sizes, and the load asks more than the smaller one gives: the upstream
//!    429s counted here are what a capacity-aware selection (reading
//!    `x-ratelimit-remaining-tokens`) should cut.
//!
//! Each phase starts its own mocks and Sluice, sends an unrecorded warm-up, resets the mocks'
//! counters, then measures. Every load is bounded by its rate and length, every request by a
//! 5 s timeout; the defaults take about 40 s in all. The report is a Markdown section that
//! `--update-results` puts into bench/RESULTS.md under "Failover (issue 14)".

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use serde::Serialize;

use crate::compare::procs::{self, ChildProc, CpuList};
use crate::compare::targets::{free_addr, wait_listening};
use crate::load::{self, LoadConfig, LoadReport};
use crate::mock_server::budget::request_cost;
use crate::mock_server::{self, Dist, MockConfig, MockHandle, MockStats};
use crate::results_md::{self, git_commit, load_average};
use sluice::route::Operation;

/// The heading of the report's section in bench/RESULTS.md.
pub const SECTION_HEADING: &str = "## Failover (issue 14)";
/// The deployment the generated Sluice serves.
const DEPLOYMENT: &str = "gpt-4o";
/// Every request's path (Azure style).
const PATH: &str = "/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21";
/// Limit on each request, send to complete answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// `sluice-bench failover` arguments.
#[derive(Args, Debug, Clone)]
pub struct FailoverArgs {
    /// Length of each measured phase.
    #[arg(long, default_value = "8s", value_parser = load::parse_duration)]
    pub duration: Duration,
    /// Unrecorded load before each phase (its answers are not counted anywhere).
    #[arg(long, default_value = "1s", value_parser = load::parse_duration)]
    pub warmup: Duration,
    /// Open-loop rate of the direct, healthy and 429 phases, requests per second.
    #[arg(long, default_value_t = 500.0)]
    pub rate: f64,
    /// Client connections.
    #[arg(long, default_value_t = 16)]
    pub connections: usize,
    /// Share of requests the throttling mock answers 429 (0.0–1.0).
    #[arg(long, default_value_t = 0.3)]
    pub rate_429: f64,
    /// The throttling mock's `retry-after-ms` (Sluice cools it down that long).
    #[arg(long, default_value_t = 1000)]
    pub retry_after_ms: u64,
    /// Budget phase: mock A's token budget per minute.
    #[arg(long, default_value_t = 60_000)]
    pub budget_a: u64,
    /// Budget phase: mock B's token budget per minute.
    #[arg(long, default_value_t = 240_000)]
    pub budget_b: u64,
    /// Budget phase: each budget holds what its rate refills over this window.
    #[arg(long, default_value = "1s", value_parser = load::parse_duration)]
    pub budget_window: Duration,
    /// Budget phase: open-loop rate, requests per second.
    #[arg(long, default_value_t = 30.0)]
    pub budget_rate: f64,
    /// Budget phase: each request's `max_tokens` (its cost is this plus ~9 prompt tokens).
    #[arg(long, default_value_t = 100)]
    pub max_tokens: u32,
    /// The `sluice` binary (default: the one next to this executable, else on $PATH).
    #[arg(long)]
    pub sluice: Option<PathBuf>,
    /// CPUs Sluice is pinned to (its worker count is their count).
    #[arg(long, default_value = "1")]
    pub proxy_cpus: CpuList,
    /// CPUs the load generator runs on.
    #[arg(long, default_value = "0")]
    pub load_cpus: CpuList,
    /// CPUs the mocks run on.
    #[arg(long, default_value = "0")]
    pub mock_cpus: CpuList,
    /// Directory for the generated configs, Sluice's logs and results.json.
    #[arg(long, default_value = "bench-out/failover")]
    pub out: PathBuf,
    /// Also put the report into FILE (bench/RESULTS.md), replacing its "Failover (issue
    /// 14)" section or adding one at the end.
    #[arg(long, value_name = "FILE")]
    pub update_results: Option<PathBuf>,
    /// CI mode: 1 s phases after 200 ms of warm-up, a tenth of the rates; seconds in all.
    #[arg(long)]
    pub quick: bool,
}

/// One mock's counts over a measured phase.
#[derive(Debug, Clone, Serialize)]
pub struct UpstreamCounts {
    /// `mock-a` or `mock-b`.
    pub name: String,
    /// Requests it read.
    pub requests: u64,
    /// Answered 200.
    pub ok: u64,
    /// Answered 429.
    pub throttled: u64,
}

impl UpstreamCounts {
    fn of(name: &str, stats: &MockStats) -> Self {
        let status = |s: u16| stats.by_status.get(&s).copied().unwrap_or(0);
        UpstreamCounts {
            name: name.to_owned(),
            requests: stats.requests,
            ok: status(200),
            throttled: status(429),
        }
    }
}

/// One phase's figures.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseResult {
    /// `direct`, `sluice-healthy`, `sluice-429`, `sluice-budget`.
    pub name: String,
    /// What the mocks did, in words.
    pub setup: String,
    /// Open-loop rate, requests per second.
    pub rate: f64,
    /// Seconds from the first measured request's send to the last answer.
    pub duration_s: f64,
    /// Measured requests.
    pub requests: u64,
    /// Answers the client saw with a status below 400.
    pub client_ok: u64,
    /// Answers the client saw with 429.
    pub client_429: u64,
    /// Answers the client saw with a 5xx.
    pub client_5xx: u64,
    /// Other failures (other 4xx, connect, timeout, reset, protocol).
    pub client_other: u64,
    /// Latency percentiles, microseconds (from each request's intended send time).
    pub p50_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// p50 minus the direct phase's p50 (none for the direct phase).
    pub added_p50_us: Option<i64>,
    /// p99 minus the direct phase's p99.
    pub added_p99_us: Option<i64>,
    /// Sluice's CPU time (utime + stime) per measured request, µs (none for direct).
    pub sluice_cpu_us_per_req: Option<f64>,
    /// Each mock's counts.
    pub upstreams: Vec<UpstreamCounts>,
}

/// A whole run.
#[derive(Debug, Clone, Serialize)]
pub struct FailoverReport {
    /// UTC date of the run.
    pub date: String,
    /// `git rev-parse --short HEAD` where it ran, when known.
    pub commit: Option<String>,
    /// Usable cores.
    pub cores: usize,
    /// The 1-minute load average (`/proc/loadavg`) when the run started, and when it ended:
    /// how busy the machine was with other work.
    pub load_average: [Option<f64>; 2],
    /// The command line that reproduces the run.
    pub command: String,
    /// The phases, in order.
    pub phases: Vec<PhaseResult>,
}

/// What a phase runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Direct,
    Healthy,
    Throttled,
    Budget,
}

impl Phase {
    const ALL: [Phase; 4] = [
        Phase::Direct,
        Phase::Healthy,
        Phase::Throttled,
        Phase::Budget,
    ];

    fn name(self) -> &'static str {
        match self {
            Phase::Direct => "direct",
            Phase::Healthy => "sluice-healthy",
            Phase::Throttled => "sluice-429",
            Phase::Budget => "sluice-budget",
        }
    }
}

/// The run's settings after `--quick`.
struct Plan {
    duration: Duration,
    warmup: Duration,
    rate: f64,
    budget_rate: f64,
}

impl FailoverArgs {
    fn plan(&self) -> Plan {
        if self.quick {
            Plan {
                duration: Duration::from_secs(1),
                warmup: Duration::from_millis(200),
                rate: (self.rate / 10.0).max(1.0),
                budget_rate: (self.budget_rate / 10.0).max(1.0),
            }
        } else {
            Plan {
                duration: self.duration,
                warmup: self.warmup,
                rate: self.rate.max(1.0),
                budget_rate: self.budget_rate.max(1.0),
            }
        }
    }

    /// The mocks of `phase`: A and B (direct uses A only).
    fn mocks(&self, phase: Phase) -> [MockConfig; 2] {
        let budget = |tokens_per_minute: u64| MockConfig {
            tokens_per_minute,
            budget_window: self.budget_window,
            ..MockConfig::default()
        };
        match phase {
            Phase::Direct | Phase::Healthy => [MockConfig::default(), MockConfig::default()],
            Phase::Throttled => [
                MockConfig {
                    rate_429: self.rate_429,
                    retry_after_ms: self.retry_after_ms,
                    ..MockConfig::default()
                },
                MockConfig::default(),
            ],
            Phase::Budget => [budget(self.budget_a), budget(self.budget_b)],
        }
    }

    /// What the mocks of `phase` do, in words (`rate`: the phase's load, requests/s).
    fn setup(&self, phase: Phase, rate: f64) -> String {
        match phase {
            Phase::Direct => "one healthy mock, no proxy".to_owned(),
            Phase::Healthy => "A and B healthy".to_owned(),
            Phase::Throttled => format!(
                "A answers {:.0}% 429 (retry-after-ms {}), B healthy",
                self.rate_429 * 100.0,
                self.retry_after_ms
            ),
            Phase::Budget => {
                let cost = request_cost(
                    Operation::ChatCompletions,
                    budget_body(self.max_tokens).as_bytes(),
                );
                // Whole tokens a minute: the rate is at most a few thousand requests a second.
                let demand = (rate * cost as f64 * 60.0).round() as u64;
                format!(
                    "token budgets A {} and B {} per minute ({} window); the load asks {} \
                     a minute ({cost} per request)",
                    thousands(self.budget_a),
                    thousands(self.budget_b),
                    Dist::Fixed(self.budget_window),
                    thousands(demand),
                )
            }
        }
    }

    /// The command line that reproduces this run, every setting spelled out.
    fn command(&self) -> String {
        let dur = |x: Duration| Dist::Fixed(x).to_string();
        let mut cmd = format!(
            "sluice-bench failover --duration {} --warmup {} --rate {} --connections {} \
             --rate-429 {} --retry-after-ms {} --budget-a {} --budget-b {} --budget-window {} \
             --budget-rate {} --max-tokens {} --proxy-cpus {} --load-cpus {} --mock-cpus {}",
            dur(self.duration),
            dur(self.warmup),
            self.rate,
            self.connections,
            self.rate_429,
            self.retry_after_ms,
            self.budget_a,
            self.budget_b,
            dur(self.budget_window),
            self.budget_rate,
            self.max_tokens,
            self.proxy_cpus,
            self.load_cpus,
            self.mock_cpus,
        );
        if self.quick {
            cmd.push_str(" --quick");
        }
        cmd
    }
}

/// Sluice over mocks `a` and `b`: one azure backend each, one pool, equal weights, one
/// priority; no keys, no limits; the admin listener on a free port (metrics counted, as in
/// production).
pub fn sluice_config(listen: SocketAddr, a: SocketAddr, b: SocketAddr, workers: usize) -> String {
    let mut out = String::from("# sluice-bench failover (generated)\n\n");
    let _ = writeln!(
        out,
        "[server]\nlisten = [\"{listen}\"]\nworkers = {workers}\nshutdown_grace = \"2s\"\n"
    );
    let _ = writeln!(out, "[admin]\nlisten = \"127.0.0.1:0\"\n");
    for (name, addr) in [("mock-a", a), ("mock-b", b)] {
        let _ = writeln!(
            out,
            "[[backend]]\nname = \"{name}\"\nkind = \"azure\"\nurl = \"http://{addr}\"\n\
             deployment = \"{DEPLOYMENT}\"\n"
        );
    }
    let _ = writeln!(
        out,
        "[[deployment]]\nname = \"{DEPLOYMENT}\"\nbackends = [\n  \
         {{ backend = \"mock-a\", weight = 1 }},\n  {{ backend = \"mock-b\", weight = 1 }},\n]"
    );
    out
}

/// Runs every phase, prints the report, writes `results.json` (and the RESULTS.md section).
pub fn run(args: FailoverArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let out = args.out.canonicalize()?;
    let sluice = crate::compare::sluice_binary(args.sluice.as_deref())?;
    let plan = args.plan();
    let load_before = load_average();
    let mut phases: Vec<PhaseResult> = Vec::new();
    for phase in Phase::ALL {
        eprintln!("sluice-bench failover: {}", phase.name());
        let mut result = measure(&args, &plan, phase, &sluice, &out)
            .with_context(|| format!("phase {}", phase.name()))?;
        if let Some(direct) = phases.first().filter(|_| phase != Phase::Direct) {
            let diff = |a: u64, b: u64| {
                i64::try_from(a).unwrap_or(i64::MAX) - i64::try_from(b).unwrap_or(i64::MAX)
            };
            result.added_p50_us = Some(diff(result.p50_us, direct.p50_us));
            result.added_p99_us = Some(diff(result.p99_us, direct.p99_us));
        }
        phases.push(result);
    }
    let report = FailoverReport {
        date: results_md::now_utc(),
        commit: git_commit(),
        cores: procs::available_cpus(),
        load_average: [load_before, load_average()],
        command: args.command(),
        phases,
    };
    results_md::publish(
        &out,
        &report,
        &render_section(&report),
        args.update_results.as_deref(),
        replace_section,
    )
}

/// The phase's Sluice process, when it has one.
struct Proxy {
    proc: ChildProc,
    addr: SocketAddr,
}

fn start_sluice(
    args: &FailoverArgs,
    sluice: &Path,
    out: &Path,
    phase: Phase,
    mocks: &[MockHandle; 2],
) -> anyhow::Result<Proxy> {
    let addr = free_addr()?;
    let [a, b] = mocks.each_ref().map(|m| m.addrs().first().copied());
    let (Some(a), Some(b)) = (a, b) else {
        anyhow::bail!("a mock bound no address");
    };
    let config = out.join(format!("{}.toml", phase.name()));
    std::fs::write(&config, sluice_config(addr, a, b, args.proxy_cpus.count()))?;
    let mut cmd = Command::new(sluice);
    cmd.arg("--config").arg(&config).env("RUST_LOG", "warn");
    let log = out.join(format!("{}.log", phase.name()));
    let mut proc = ChildProc::spawn_pinned(phase.name(), cmd, &args.proxy_cpus, &log)?;
    wait_listening(&mut proc, addr, Duration::from_secs(10))?;
    Ok(Proxy { proc, addr })
}

/// Runs one phase: its mocks, its Sluice, a warm-up, then the measured load.
fn measure(
    args: &FailoverArgs,
    plan: &Plan,
    phase: Phase,
    sluice: &Path,
    out: &Path,
) -> anyhow::Result<PhaseResult> {
    let [cfg_a, cfg_b] = args.mocks(phase);
    let spawn = |cfg: MockConfig| -> anyhow::Result<MockHandle> {
        procs::with_affinity(&args.mock_cpus, || mock_server::spawn(cfg))?
    };
    let mocks = [spawn(cfg_a)?, spawn(cfg_b)?];
    let proxy = match phase {
        Phase::Direct => None,
        _ => Some(start_sluice(args, sluice, out, phase, &mocks)?),
    };
    let target = match &proxy {
        Some(p) => p.addr,
        None => mocks[0]
            .addrs()
            .first()
            .copied()
            .context("no mock address")?,
    };
    let (rate, body) = match phase {
        Phase::Budget => (plan.budget_rate, budget_body(args.max_tokens)),
        _ => (plan.rate, budget_body(16)),
    };
    let load = |duration: Duration| LoadConfig {
        url: format!("http://{target}{PATH}"),
        body: body.clone().into_bytes(),
        headers: vec![("content-type".to_owned(), "application/json".to_owned())],
        connections: args.connections.max(1),
        threads: 1,
        duration,
        warmup: Duration::ZERO,
        rate: Some(rate),
        timeout: REQUEST_TIMEOUT,
        label: phase.name().to_owned(),
        cpus: args.load_cpus.cpus().to_vec(),
        ..LoadConfig::default()
    };
    if !plan.warmup.is_zero() {
        load::run(&load(plan.warmup))?;
    }
    for m in &mocks {
        m.reset_stats();
    }
    let pids: Vec<u32> = proxy.iter().map(|p| p.proc.pid()).collect();
    let cpu_before = match &proxy {
        Some(_) => Some(procs::cpu_time_us(&pids)?),
        None => None,
    };
    let report: LoadReport = load::run(&load(plan.duration))?;
    let cpu = match cpu_before {
        Some(before) => Some(procs::cpu_time_us(&pids)?.saturating_sub(before)),
        None => None,
    };
    let stats = [mocks[0].stats(), mocks[1].stats()];
    drop(proxy);
    let e = &report.errors;
    let upstreams = match phase {
        Phase::Direct => vec![UpstreamCounts::of("mock-a", &stats[0])],
        _ => vec![
            UpstreamCounts::of("mock-a", &stats[0]),
            UpstreamCounts::of("mock-b", &stats[1]),
        ],
    };
    Ok(PhaseResult {
        name: phase.name().to_owned(),
        setup: args.setup(phase, rate),
        duration_s: report.duration_s,
        rate,
        requests: report.requests,
        client_ok: report.ok,
        client_429: e.status_429,
        client_5xx: e.status_5xx,
        client_other: e.total() - e.status_429 - e.status_5xx,
        p50_us: report.latency_us.p50,
        p99_us: report.latency_us.p99,
        added_p50_us: None,
        added_p99_us: None,
        sluice_cpu_us_per_req: cpu
            .filter(|_| report.requests > 0)
            .map(|us| (us as f64 / report.requests as f64 * 10.0).round() / 10.0),
        upstreams,
    })
}

/// Every request's body: one short user message and `max_tokens`.
fn budget_body(max_tokens: u32) -> String {
    format!(r#"{{"messages":[{{"role":"user","content":"Hello"}}],"max_tokens":{max_tokens}}}"#)
}

/// `1234567` as `1,234,567`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The report as the Markdown section of bench/RESULTS.md, heading first.
pub fn render_section(r: &FailoverReport) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{SECTION_HEADING}\n");
    results_md::write_provenance(
        &mut s,
        &results_md::Provenance {
            date: &r.date,
            commit: r.commit.as_deref(),
            cores: r.cores,
            load_average: r.load_average,
            command: &r.command,
            duration: "about 40 s, ",
        },
    );
    let _ = writeln!(
        s,
        "Two mocks (`mock-a`, `mock-b`) in one pool behind Sluice (one azure backend each, \
         equal weights, one priority, no keys or limits), open-loop load on keep-alive \
         connections. Client counts are what the load generator saw; upstream counts are \
         each mock's own (`/_mock/stats`), over the measured part only. Added latency is \
         the phase's percentile minus the direct phase's; CPU is Sluice's utime+stime per \
         measured request (10 ms ticks). At these low open-loop rates every request wakes \
         an idle process, so CPU per request is far above its cost at peak (`compare`'s \
         \"proxy CPU µs/request at 1000 req/s\" reads the same way): compare the phases \
         with each other, not with peak figures.\n"
    );
    let _ = writeln!(
        s,
        "| phase | mocks | rate (req/s) | client 2xx / 429 / 5xx / other | upstream 200 / 429 | \
         p50 / p99 (µs) | added p50 / p99 (µs) | Sluice CPU (µs/req) |"
    );
    let _ = writeln!(s, "| --- | --- | --- | --- | --- | --- | --- | --- |");
    for p in &r.phases {
        let upstream: Vec<String> = p
            .upstreams
            .iter()
            .map(|u| format!("{}: {} / {}", u.name, u.ok, u.throttled))
            .collect();
        let added = match (p.added_p50_us, p.added_p99_us) {
            (Some(a), Some(b)) => format!("{a} / {b}"),
            _ => "—".to_owned(),
        };
        let cpu = p
            .sluice_cpu_us_per_req
            .map_or("—".to_owned(), |c| format!("{c:.1}"));
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} / {} / {} / {} | {} | {} / {} | {} | {} |",
            p.name,
            p.setup,
            p.rate,
            p.client_ok,
            p.client_429,
            p.client_5xx,
            p.client_other,
            upstream.join("; "),
            p.p50_us,
            p.p99_us,
            added,
            cpu
        );
    }
    for note in reading(r) {
        let _ = writeln!(s, "\n{note}");
    }
    s
}

/// What the figures say, in sentences computed from them.
fn reading(r: &FailoverReport) -> Vec<String> {
    let mut notes = Vec::new();
    let client_429: u64 = r
        .phases
        .iter()
        .filter(|p| p.name != "direct")
        .map(|p| p.client_429)
        .sum();
    notes.push(format!(
        "Clients saw {client_429} 429s in all the Sluice phases: every 429 a mock sent was \
         retried on the other mock before the client saw a byte."
    ));
    let a = |p: &PhaseResult| p.upstreams.first().cloned();
    if let Some((p, up)) = r
        .phases
        .iter()
        .find(|p| p.name == "sluice-429")
        .and_then(|p| Some((p, a(p)?)))
    {
        let per_s = up.throttled as f64 / p.duration_s.max(1e-9);
        notes.push(format!(
            "`sluice-429`: mock-a answered {} 429s in {:.1} s ({per_s:.1}/s) out of {} \
             requests it was asked; each 429 cools it down for every worker for the \
             `retry-after-ms` it sends, so it is asked again about once per cool-down instead \
             of for half of the load.",
            up.throttled, p.duration_s, up.requests
        ));
    }
    if let Some((p, up)) = r
        .phases
        .iter()
        .find(|p| p.name == "sluice-budget")
        .and_then(|p| Some((p, a(p)?)))
    {
        notes.push(format!(
            "`sluice-budget`: mock-a, the smaller budget, answered {} 429s in {:.1} s, {} \
             of its {} requests. Sluice's capacity-aware selection reads each answer's \
             `x-ratelimit-remaining-tokens` and skips a mock that cannot take a request's \
             estimate, so the request goes to the other before this one runs out (measured \
             without it, on d44c259's data plane, the same phase gave 39 429s of mock-a's \
             114 requests).",
            up.throttled,
            p.duration_s,
            percent(up.throttled, up.requests),
            up.requests
        ));
    }
    notes
}

/// `part` of `whole` as a percentage (`12.5%`; `—` when `whole` is 0).
fn percent(part: u64, whole: u64) -> String {
    if whole == 0 {
        "—".to_owned()
    } else {
        format!("{:.1}%", part as f64 * 100.0 / whole as f64)
    }
}

/// `text` with its [`SECTION_HEADING`] section (to the next `## ` or `# ` heading or the
/// end) replaced by `section`, or `section` added at the end when there is none.
pub fn replace_section(text: &str, section: &str) -> String {
    results_md::replace_section(text, &[SECTION_HEADING], section)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_section_is_replaced_in_place_or_added_at_the_end() {
        let new = format!("{SECTION_HEADING}\n\nnew figures\n");
        let text = format!("# R\n\n## A\n\na\n\n{SECTION_HEADING}\n\nold\n\n## B\n\nb\n");
        assert_eq!(
            replace_section(&text, &new),
            format!("# R\n\n## A\n\na\n\n{SECTION_HEADING}\n\nnew figures\n\n## B\n\nb\n")
        );
        let last = format!("# R\n\n{SECTION_HEADING}\n\nold\n");
        assert_eq!(
            replace_section(&last, &new),
            format!("# R\n\n{SECTION_HEADING}\n\nnew figures\n")
        );
        assert_eq!(
            replace_section("# R\n\n## A\n", &new),
            format!("# R\n\n## A\n\n{SECTION_HEADING}\n\nnew figures\n")
        );
        // A `###` sub-heading inside the section goes with it.
        let sub = format!("{SECTION_HEADING}\n\nold\n\n### detail\n\nx\n");
        assert_eq!(replace_section(&sub, &new), new);
    }

    #[test]
    fn the_generated_config_compiles_with_both_mocks_in_one_pool() {
        let at = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
        let text = sluice_config(at(8080), at(18001), at(18002), 1);
        let snapshot =
            sluice::config::load_str(Path::new("gen.toml"), &text, &|_: &str| None, None);
        assert!(snapshot.is_ok(), "{text}");
        assert!(text.contains("url = \"http://127.0.0.1:18001\""));
        assert!(text.contains("url = \"http://127.0.0.1:18002\""));
    }

    #[test]
    fn numbers_get_thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(60_000), "60,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }
}
