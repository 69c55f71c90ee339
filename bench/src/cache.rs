//! `sluice-bench cache`: what a response-cache hit costs Sluice against forwarding the same
//! request, whole process, on loopback (issue 14). One mock backend (in this process, no
//! latency) behind one Sluice (a child process on its own CPUs, one worker, no auth, audit
//! or admin listener) that serves it as two deployments: `passthrough` (no cache: every
//! request is forwarded) and `cached` (`cache = { ttl = "1h" }`: every request after the
//! first is a hit).
//!
//! One unrecorded probe request to each deployment goes first (with raw HTTP, so its
//! `x-sluice-cache` can be read: the cached deployment must answer `miss`, then `hit`),
//! then `--rounds` rounds each measure both deployments in turn (the order alternating from
//! round to round, so a drift of the machine's load weighs on both alike): `--warmup` of
//! unrecorded load, the mock's counters reset, then `--duration` of closed-loop load on
//! `--connections` keep-alive connections, every request the same deterministic chat body
//! (`temperature` 0). A round records Sluice's CPU time per request (utime + stime from
//! `/proc/PID/stat`), requests/s and p50/p99 latency, and what the mock was asked. The run
//! fails when any answer is not a success, when a passthrough request did not reach the
//! mock, or when a cached round was not (almost) all hits: the mock must see at most one in
//! a thousand of its requests.
//!
//! The report is a Markdown subsection that `--update-results` puts into bench/RESULTS.md
//! under "issue 14: Response cache", in place of the earlier hand-measured one.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use serde::Serialize;

use crate::compare::procs::{self, ChildProc, CpuList};
use crate::compare::targets::{free_addr, wait_listening};
use crate::load::report::round_to;
use crate::load::{self, LoadConfig, LoadReport};
use crate::mock_server::{self, Dist, MockConfig, MockHandle};
use crate::results_md::{self, git_commit, load_average};

/// The heading of the generated subsection in bench/RESULTS.md.
pub const SECTION_HEADING: &str = "### Hit vs passthrough, whole process (sluice-bench cache)";
/// The heading of the hand-measured subsection the generated one replaces when the file has
/// no generated one yet.
pub const HAND_HEADING: &str = "### Hit vs passthrough, whole process";
/// The deployment without a cache.
pub const PASSTHROUGH: &str = "passthrough";
/// The deployment with `cache = { ttl = "1h" }`.
pub const CACHED: &str = "cached";
/// The Azure API version in every path.
const API_VERSION: &str = "2024-10-21";
/// The deployment name the backend is asked for (the mock answers any).
const BACKEND_DEPLOYMENT: &str = "gpt-4o";
/// Limit on each request, send to complete answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest share of a cached round's requests that may reach the mock before the run
/// fails: every one should be a hit, a stray miss is tolerated.
const MAX_MISS_SHARE: f64 = 0.001;

/// `sluice-bench cache` arguments.
#[derive(Args, Debug, Clone)]
pub struct CacheArgs {
    /// Rounds; each measures both deployments once.
    #[arg(long, default_value_t = 6)]
    pub rounds: usize,
    /// Length of each measured load.
    #[arg(long, default_value = "5s", value_parser = load::parse_duration)]
    pub duration: Duration,
    /// Unrecorded load before each measured one (same deployment; not counted anywhere).
    #[arg(long, default_value = "1s", value_parser = load::parse_duration)]
    pub warmup: Duration,
    /// Closed-loop client connections (keep-alive).
    #[arg(long, default_value_t = 8)]
    pub connections: usize,
    /// CPUs Sluice is pinned to (its worker count is their count).
    #[arg(long, default_value = "1")]
    pub proxy_cpus: CpuList,
    /// CPUs the load generator runs on.
    #[arg(long, default_value = "0")]
    pub load_cpus: CpuList,
    /// CPUs the mock runs on.
    #[arg(long, default_value = "0")]
    pub mock_cpus: CpuList,
    /// The `sluice` binary (default: the one next to this executable, else on $PATH).
    #[arg(long)]
    pub sluice: Option<PathBuf>,
    /// Directory for the generated config, Sluice's log and results.json.
    #[arg(long, default_value = "bench-out/cache")]
    pub out: PathBuf,
    /// Also put the report into FILE (bench/RESULTS.md), replacing its generated "Hit vs
    /// passthrough" subsection, else the hand-measured one, else adding it at the end.
    #[arg(long, value_name = "FILE")]
    pub update_results: Option<PathBuf>,
    /// CI mode: one round of 0.5 s loads after 100 ms of warm-up; about 2 s in all.
    #[arg(long)]
    pub quick: bool,
}

/// One measured load of one deployment.
#[derive(Debug, Clone, Serialize)]
pub struct RoundResult {
    /// 1-based round number.
    pub round: usize,
    /// [`PASSTHROUGH`] or [`CACHED`].
    pub deployment: String,
    /// Seconds from the end of warm-up to the last answer.
    pub duration_s: f64,
    /// Measured requests (all answered 200, or the run failed).
    pub requests: u64,
    /// Achieved rate, requests per second.
    pub rps: f64,
    /// Latency percentiles, microseconds (closed loop: from the moment the connection was
    /// free).
    pub p50_us: u64,
    /// 99th percentile, microseconds.
    pub p99_us: u64,
    /// Sluice's CPU time (utime + stime) over the load, microseconds (10 ms ticks).
    pub cpu_us: u64,
    /// `cpu_us / requests`, microseconds per request (two decimals).
    pub cpu_us_per_req: f64,
    /// `cpu_us` over the load's length: how many cores Sluice kept busy (two decimals; at
    /// most its `--proxy-cpus` count, below it when the client side set the pace).
    pub sluice_cores: f64,
    /// Requests the mock read during the measured load (passthrough: one per request;
    /// cached: the misses).
    pub upstream_requests: u64,
    /// Cached rounds: requests answered from the cache (`requests - upstream_requests`).
    pub hits: Option<u64>,
}

/// One deployment's figures over all rounds.
#[derive(Debug, Clone, Serialize)]
pub struct DeploymentSummary {
    /// [`PASSTHROUGH`] or [`CACHED`].
    pub deployment: String,
    /// Median over rounds of CPU per request, microseconds.
    pub cpu_us_per_req: f64,
    /// Median over rounds of the cores Sluice kept busy.
    pub sluice_cores: f64,
    /// Median requests per second.
    pub rps: f64,
    /// Median p50 latency, microseconds.
    pub p50_us: f64,
    /// Median p99 latency, microseconds.
    pub p99_us: f64,
    /// Measured requests, all rounds.
    pub requests: u64,
    /// Requests the mock read, all rounds.
    pub upstream_requests: u64,
}

/// A whole run.
#[derive(Debug, Clone, Serialize)]
pub struct CacheReport {
    /// UTC date of the run.
    pub date: String,
    /// `git rev-parse --short HEAD` where it ran, when known.
    pub commit: Option<String>,
    /// Usable cores.
    pub cores: usize,
    /// The 1-minute load average (`/proc/loadavg`) when the run started, and when it ended.
    pub load_average: [Option<f64>; 2],
    /// The command line that reproduces the run.
    pub command: String,
    /// CPUs Sluice was pinned to (and its workers).
    pub proxy_cpus: usize,
    /// `x-sluice-cache` of the two unrecorded probe requests to [`CACHED`], in order
    /// (`miss`, then `hit`).
    pub probe: Vec<String>,
    /// Every measured load, in the order run.
    pub rounds: Vec<RoundResult>,
    /// The passthrough deployment's medians.
    pub passthrough: DeploymentSummary,
    /// The cached deployment's medians.
    pub cached: DeploymentSummary,
    /// The headline: median CPU per request, cached over passthrough (none when the
    /// passthrough's is 0).
    pub cpu_ratio: Option<f64>,
}

/// The run's settings after `--quick`.
struct Plan {
    rounds: usize,
    duration: Duration,
    warmup: Duration,
}

impl CacheArgs {
    fn plan(&self) -> Plan {
        if self.quick {
            Plan {
                rounds: 1,
                duration: Duration::from_millis(500),
                warmup: Duration::from_millis(100),
            }
        } else {
            Plan {
                rounds: self.rounds.max(1),
                duration: self.duration,
                warmup: self.warmup,
            }
        }
    }

    /// The command line that reproduces this run, every setting spelled out.
    fn command(&self) -> String {
        let dur = |x: Duration| Dist::Fixed(x).to_string();
        let mut cmd = format!(
            "sluice-bench cache --rounds {} --duration {} --warmup {} --connections {} \
             --proxy-cpus {} --load-cpus {} --mock-cpus {}",
            self.rounds,
            dur(self.duration),
            dur(self.warmup),
            self.connections,
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

/// The path clients call for `deployment` (Azure style).
pub fn client_path(deployment: &str) -> String {
    format!("/openai/deployments/{deployment}/chat/completions?api-version={API_VERSION}")
}

/// Every request's body: the bench's usual chat request (a system and a user message,
/// `max_tokens` 100) with `temperature` 0, so the cache may answer it.
pub fn chat_body() -> Vec<u8> {
    let body = serde_json::json!({
        "messages": [
            {"role": "system", "content": "You are a concise assistant."},
            {"role": "user", "content": "Explain a token bucket in one sentence."},
        ],
        "max_tokens": 100,
        "temperature": 0,
    });
    serde_json::to_vec(&body).unwrap_or_default()
}

/// Sluice over the mock at `mock`: one azure backend, served as two deployments,
/// [`PASSTHROUGH`] without a cache and [`CACHED`] with `cache = { ttl = "1h" }` (its other
/// settings the defaults); `workers` workers; no keys, limits or audit, and no admin
/// listener (`listen = ""`, written out: without the table Sluice listens on 9090).
pub fn sluice_config(listen: SocketAddr, mock: SocketAddr, workers: usize) -> String {
    let mut out = String::from("# sluice-bench cache (generated)\n\n");
    let _ = writeln!(
        out,
        "[server]\nlisten = [\"{listen}\"]\nworkers = {workers}\nshutdown_grace = \"2s\"\n"
    );
    let _ = writeln!(out, "[admin]\nlisten = \"\"\n");
    let _ = writeln!(
        out,
        "[[backend]]\nname = \"mock\"\nkind = \"azure\"\nurl = \"http://{mock}\"\n\
         deployment = \"{BACKEND_DEPLOYMENT}\"\napi_version = \"{API_VERSION}\"\n"
    );
    let _ = writeln!(
        out,
        "[[deployment]]\nname = \"{PASSTHROUGH}\"\nbackends = [{{ backend = \"mock\" }}]\n"
    );
    let _ = writeln!(
        out,
        "[[deployment]]\nname = \"{CACHED}\"\nbackends = [{{ backend = \"mock\" }}]\n\
         cache = {{ ttl = \"1h\" }}"
    );
    out
}

/// Runs the probes and every round, prints the report, writes `results.json` (and the
/// RESULTS.md subsection).
pub fn run(args: CacheArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let out = args.out.canonicalize()?;
    let sluice = crate::compare::sluice_binary(args.sluice.as_deref())?;
    let plan = args.plan();
    let load_before = load_average();

    let mock = procs::with_affinity(
        &args.mock_cpus,
        || mock_server::spawn(MockConfig::default()),
    )??;
    let mock_addr = mock.addrs().first().copied().context("no mock address")?;
    let proxy_addr = free_addr()?;
    let config = out.join("sluice.toml");
    std::fs::write(
        &config,
        sluice_config(proxy_addr, mock_addr, args.proxy_cpus.count()),
    )?;
    let mut cmd = Command::new(&sluice);
    cmd.arg("--config").arg(&config).env("RUST_LOG", "warn");
    let mut proxy =
        ChildProc::spawn_pinned("sluice", cmd, &args.proxy_cpus, &out.join("sluice.log"))?;
    wait_listening(&mut proxy, proxy_addr, Duration::from_secs(10))?;

    let probe = probe_cache(proxy_addr)?;
    eprintln!(
        "sluice-bench cache: probes of `{CACHED}`: {}",
        probe.join(", ")
    );

    let mut rounds = Vec::with_capacity(plan.rounds * 2);
    for round in 1..=plan.rounds {
        // Odd rounds passthrough first, even rounds cached first.
        let order = if round % 2 == 1 {
            [PASSTHROUGH, CACHED]
        } else {
            [CACHED, PASSTHROUGH]
        };
        for deployment in order {
            eprintln!("sluice-bench cache: round {round}, {deployment}");
            let result = measure(
                &args, &plan, &mut proxy, proxy_addr, &mock, deployment, round,
            )
            .with_context(|| format!("round {round}, {deployment}"))?;
            rounds.push(result);
        }
    }
    drop(proxy);
    drop(mock);

    let passthrough = summarize(PASSTHROUGH, &rounds);
    let cached = summarize(CACHED, &rounds);
    let cpu_ratio = (passthrough.cpu_us_per_req > 0.0)
        .then(|| round_to(cached.cpu_us_per_req / passthrough.cpu_us_per_req, 100.0));
    let report = CacheReport {
        date: results_md::now_utc(),
        commit: git_commit(),
        cores: procs::available_cpus(),
        load_average: [load_before, load_average()],
        command: args.command(),
        proxy_cpus: args.proxy_cpus.count(),
        probe,
        rounds,
        passthrough,
        cached,
        cpu_ratio,
    };
    results_md::publish(
        &out,
        &report,
        &render_section(&report),
        args.update_results.as_deref(),
        replace_section,
    )
}

/// The two unrecorded requests to [`CACHED`] (and one to [`PASSTHROUGH`]) before the
/// rounds: each must be a 200; the cached deployment's first must be a `miss` and its second
/// a `hit` (so every request after it is one), the passthrough's must carry no
/// `x-sluice-cache`. Returns the cached deployment's two `x-sluice-cache` values.
fn probe_cache(proxy: SocketAddr) -> anyhow::Result<Vec<String>> {
    let body = chat_body();
    let (status, label) = send_once(proxy, PASSTHROUGH, &body)?;
    if status != 200 || label.is_some() {
        bail!(
            "probe of `{PASSTHROUGH}`: status {status}, x-sluice-cache {label:?} (want 200 and \
             none)"
        );
    }
    let mut labels = Vec::new();
    for want in ["miss", "hit"] {
        let (status, label) = send_once(proxy, CACHED, &body)?;
        let label = label.unwrap_or_default();
        if status != 200 || label != want {
            bail!(
                "probe of `{CACHED}`: status {status}, x-sluice-cache `{label}` (want 200 and \
                 `{want}`)"
            );
        }
        labels.push(label);
    }
    Ok(labels)
}

/// One request on its own connection (`connection: close`): its status and its
/// `x-sluice-cache`, if any.
fn send_once(
    proxy: SocketAddr,
    deployment: &str,
    body: &[u8],
) -> anyhow::Result<(u16, Option<String>)> {
    let mut stream = TcpStream::connect_timeout(&proxy, REQUEST_TIMEOUT)?;
    stream.set_read_timeout(Some(REQUEST_TIMEOUT))?;
    stream.set_write_timeout(Some(REQUEST_TIMEOUT))?;
    let mut request = format!(
        "POST {} HTTP/1.1\r\nhost: {proxy}\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n",
        client_path(deployment),
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    stream.write_all(&request)?;
    let mut answer = Vec::new();
    stream
        .read_to_end(&mut answer)
        .with_context(|| format!("reading the answer of `{deployment}`"))?;
    parse_answer_head(&answer).with_context(|| format!("no HTTP answer head from `{deployment}`"))
}

/// The status and `x-sluice-cache` value of an HTTP/1.1 answer's head.
fn parse_answer_head(answer: &[u8]) -> Option<(u16, Option<String>)> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut response = httparse::Response::new(&mut headers);
    if !response.parse(answer).ok()?.is_complete() {
        return None;
    }
    let label = response
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("x-sluice-cache"))
        .map(|h| String::from_utf8_lossy(h.value).trim().to_owned());
    Some((response.code?, label))
}

/// One measured load of `deployment`: warm-up, the mock's counters reset, the load with
/// Sluice's CPU time read before and after; fails on any error answer, a passthrough
/// request that did not reach the mock, or a cached round that was not all hits.
fn measure(
    args: &CacheArgs,
    plan: &Plan,
    proxy: &mut ChildProc,
    proxy_addr: SocketAddr,
    mock: &MockHandle,
    deployment: &str,
    round: usize,
) -> anyhow::Result<RoundResult> {
    let load = |duration: Duration| LoadConfig {
        url: format!("http://{proxy_addr}{}", client_path(deployment)),
        body: chat_body(),
        headers: vec![("content-type".to_owned(), "application/json".to_owned())],
        connections: args.connections.max(1),
        threads: 1,
        duration,
        warmup: Duration::ZERO,
        rate: None,
        timeout: REQUEST_TIMEOUT,
        label: deployment.to_owned(),
        cpus: args.load_cpus.cpus().to_vec(),
        ..LoadConfig::default()
    };
    if !plan.warmup.is_zero() {
        load::run(&load(plan.warmup))?;
    }
    mock.reset_stats();
    let pids = [proxy.pid()];
    let cpu_before = procs::cpu_time_us(&pids)?;
    let report: LoadReport = load::run(&load(plan.duration))?;
    let cpu_us = procs::cpu_time_us(&pids)?.saturating_sub(cpu_before);
    proxy.check_alive()?;
    let upstream_requests = mock.stats().requests;
    check_round(deployment, &report, upstream_requests)?;
    let hits = (deployment == CACHED).then(|| report.requests.saturating_sub(upstream_requests));
    Ok(RoundResult {
        round,
        deployment: deployment.to_owned(),
        duration_s: report.duration_s,
        requests: report.requests,
        rps: round_to(report.rps, 1.0),
        p50_us: report.latency_us.p50,
        p99_us: report.latency_us.p99,
        cpu_us,
        cpu_us_per_req: round_to(cpu_us as f64 / report.requests.max(1) as f64, 100.0),
        sluice_cores: round_to(cpu_us as f64 / (report.duration_s.max(1e-9) * 1e6), 100.0),
        upstream_requests,
        hits,
    })
}

/// Fails unless every request of the load succeeded and the mock saw what `deployment`
/// should send it: all of them (passthrough), or at most [`MAX_MISS_SHARE`] (cached).
fn check_round(deployment: &str, report: &LoadReport, upstream: u64) -> anyhow::Result<()> {
    let requests = report.requests;
    if requests == 0 {
        bail!("no request completed");
    }
    let errors = report.errors.total();
    if report.ok != requests || errors > 0 {
        bail!(
            "{errors} of {requests} requests failed ({:?}): every answer must be a 200",
            report.errors
        );
    }
    if deployment == CACHED {
        let allowed = (requests as f64 * MAX_MISS_SHARE).floor() as u64;
        if upstream > allowed {
            bail!(
                "{upstream} of {requests} requests reached the mock: the cache answered only \
                 {} (at most {allowed} misses allowed)",
                requests.saturating_sub(upstream)
            );
        }
    } else if upstream != requests {
        bail!("the mock read {upstream} requests for {requests} forwarded ones");
    }
    Ok(())
}

/// The median of `values` (the mean of the middle two for an even count; 0 for none).
pub fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

/// `deployment`'s medians over its rounds in `rounds`.
fn summarize(deployment: &str, rounds: &[RoundResult]) -> DeploymentSummary {
    let mine: Vec<&RoundResult> = rounds
        .iter()
        .filter(|r| r.deployment == deployment)
        .collect();
    let med =
        |f: &dyn Fn(&RoundResult) -> f64| median(&mine.iter().map(|r| f(r)).collect::<Vec<_>>());
    DeploymentSummary {
        deployment: deployment.to_owned(),
        cpu_us_per_req: round_to(med(&|r| r.cpu_us_per_req), 100.0),
        sluice_cores: round_to(med(&|r| r.sluice_cores), 100.0),
        rps: round_to(med(&|r| r.rps), 1.0),
        p50_us: med(&|r| r.p50_us as f64),
        p99_us: med(&|r| r.p99_us as f64),
        requests: mine.iter().map(|r| r.requests).sum(),
        upstream_requests: mine.iter().map(|r| r.upstream_requests).sum(),
    }
}

/// A figure as the table prints it: whole numbers without decimals, others with one.
fn fig(x: f64) -> String {
    if x.fract() == 0.0 {
        format!("{x:.0}")
    } else {
        format!("{x:.1}")
    }
}

/// The report as the Markdown subsection of bench/RESULTS.md, heading first.
pub fn render_section(r: &CacheReport) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{SECTION_HEADING}\n");
    let rounds = r.rounds.iter().map(|x| x.round).max().unwrap_or(0);
    results_md::write_provenance(
        &mut s,
        &results_md::Provenance {
            date: &r.date,
            commit: r.commit.as_deref(),
            cores: r.cores,
            load_average: r.load_average,
            command: &r.command,
            duration: "",
        },
    );
    let _ = writeln!(
        s,
        "`sluice` (1 worker per proxy CPU, no auth, audit or admin listener) in front of the \
         in-process mock (no latency), serving it as two deployments: `{PASSTHROUGH}` (no \
         cache, every request forwarded) and `{CACHED}` (`cache = {{ ttl = \"1h\" }}`). \
         Closed-loop load on keep-alive connections, the same chat body (`temperature` 0) to \
         each; each round measures both, in alternating order, after an unrecorded warm-up. \
         CPU is the `sluice` process's utime+stime from `/proc/PID/stat` (10 ms ticks) per \
         measured request; latency from the moment a connection was free. The run checks \
         what it measures: every answer a 200, every passthrough request read by the mock, \
         and no cached request reaching it (the probes before the rounds answered \
         `x-sluice-cache: {}`).\n",
        r.probe.join("`, then `")
    );
    let rounds = match rounds {
        1 => "round 1".to_owned(),
        n => format!("rounds 1–{n}"),
    };
    let _ = writeln!(
        s,
        "| deployment | µs CPU per request, {rounds} | median | req/s, median (range) \
         | p50 / p99 latency, median (µs) | requests / reached the mock |"
    );
    let _ = writeln!(s, "| --- | --- | --- | --- | --- | --- |");
    for (label, summary) in [("no cache", &r.passthrough), ("all hits", &r.cached)] {
        let mut mine: Vec<&RoundResult> = r
            .rounds
            .iter()
            .filter(|x| x.deployment == summary.deployment)
            .collect();
        mine.sort_by_key(|x| x.round);
        let cpu: Vec<String> = mine
            .iter()
            .map(|x| format!("{:.2}", x.cpu_us_per_req))
            .collect();
        let rps = mine.iter().map(|x| x.rps);
        let lo = rps.clone().fold(f64::INFINITY, f64::min);
        let hi = rps.fold(0.0, f64::max);
        let _ = writeln!(
            s,
            "| `{}` ({label}) | {} | {:.2} | {} ({}–{}) | {} / {} | {} / {} |",
            summary.deployment,
            cpu.join(", "),
            summary.cpu_us_per_req,
            kilo(summary.rps),
            kilo(lo),
            kilo(hi),
            fig(summary.p50_us),
            fig(summary.p99_us),
            summary.requests,
            summary.upstream_requests,
        );
    }
    let _ = writeln!(s);
    let ratio = r.cpu_ratio.map_or("?".to_owned(), |x| format!("{x:.2}×"));
    let speed = if r.passthrough.rps > 0.0 {
        format!("{:.1}×", r.cached.rps / r.passthrough.rps)
    } else {
        "?×".to_owned()
    };
    let _ = writeln!(
        s,
        "**A hit costs {ratio} the CPU of a forwarded request** ({:.2} against {:.2} µs, \
         medians) and the cached deployment served {speed} the requests per second: a hit \
         skips the upstream leg (connection, request rewrite, the backend's answer read and \
         relayed) for a canonical key and a lookup.",
        r.cached.cpu_us_per_req, r.passthrough.cpu_us_per_req
    );
    let (busy_p, busy_c) = (r.passthrough.sluice_cores, r.cached.sluice_cores);
    let cpus = r.proxy_cpus.max(1) as f64;
    let pace = if busy_p.max(busy_c) < 0.9 * cpus {
        "so the load generator and the mock on their own CPU(s) set the pace, not Sluice; \
         req/s then says more about the client side (the cached deployment leaves the mock \
         idle) than about Sluice"
    } else {
        "so Sluice set the pace: req/s is its throughput on that many cores"
    };
    let _ = writeln!(
        s,
        "\nSluice kept {busy_p:.2} (passthrough) and {busy_c:.2} (cached) cores busy, medians, \
         of the {} it was pinned to, {pace}.",
        r.proxy_cpus
    );
    let _ = writeln!(
        s,
        "\nThis replaces the figures measured by hand on d6a069b (the same setup, six \
         alternating rounds of 5 s, no warm-up, load average 4–5: medians 4.1 µs per hit \
         against 10.1 µs forwarded, 0.4×)."
    );
    s
}

/// Requests per second as `41.2 k`.
fn kilo(rps: f64) -> String {
    format!("{:.1} k", rps / 1000.0)
}

/// `text` with its generated subsection (from a line that is [`SECTION_HEADING`] to the
/// next `#`, `##` or `###` heading, or the end) replaced by `section`; without one, the
/// hand-measured subsection ([`HAND_HEADING`]) is replaced instead; without either,
/// `section` is added at the end. Headings inside ``` fences do not count. Nothing else in
/// `text` changes.
pub fn replace_section(text: &str, section: &str) -> String {
    results_md::replace_section(text, &[SECTION_HEADING, HAND_HEADING], section)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const NEW: &str = "### Hit vs passthrough, whole process (sluice-bench cache)\n\nnew\n";

    #[test]
    fn the_generated_subsection_is_replaced_in_place() {
        let text = format!(
            "# R\n\n## Cache\n\n### Hit path\n\nh\n\n{SECTION_HEADING}\n\nold\n\n```sh\n\
             # not a heading\n```\n\nmore old\n\n### Next\n\nn\n\n## Later\n\nl\n"
        );
        assert_eq!(
            replace_section(&text, NEW),
            format!(
                "# R\n\n## Cache\n\n### Hit path\n\nh\n\n{SECTION_HEADING}\n\nnew\n\n\
                 ### Next\n\nn\n\n## Later\n\nl\n"
            )
        );
        // Last in the file: replaced up to the end.
        let last = format!("# R\n\n## Cache\n\n{SECTION_HEADING}\n\nold\n");
        assert_eq!(
            replace_section(&last, NEW),
            format!("# R\n\n## Cache\n\n{SECTION_HEADING}\n\nnew\n")
        );
    }

    #[test]
    fn the_hand_measured_subsection_is_replaced_when_no_generated_one_exists() {
        let text = "# R\n\n## Failover\n\nf\n\n## Cache\n\n### Hit path, criterion\n\nc\n\n\
                    ### Hit vs passthrough, whole process\n\n| hand | figures |\n\nprose\n\n\
                    ## 2026-12-03, later\n\nl\n";
        assert_eq!(
            replace_section(text, NEW),
            format!(
                "# R\n\n## Failover\n\nf\n\n## Cache\n\n### Hit path, criterion\n\nc\n\n\
                 {SECTION_HEADING}\n\nnew\n\n## 2026-12-03, later\n\nl\n"
            )
        );
        // With both, the generated one is replaced and the hand one stays.
        let both = format!("{HAND_HEADING}\n\nhand\n\n{SECTION_HEADING}\n\nold\n");
        assert_eq!(
            replace_section(&both, NEW),
            format!("{HAND_HEADING}\n\nhand\n\n{SECTION_HEADING}\n\nnew\n")
        );
        // A heading that only starts like the hand one is not it.
        let other = "## A\n\n### Hit vs passthrough, whole process, by hand again\n\nx\n";
        assert_eq!(
            replace_section(other, NEW),
            format!("{}\n\n{NEW}", other.trim_end())
        );
    }

    #[test]
    fn without_either_the_subsection_is_added_at_the_end() {
        assert_eq!(
            replace_section("# R\n\n## A\n\na\n\n", NEW),
            format!("# R\n\n## A\n\na\n\n{NEW}")
        );
        assert_eq!(replace_section("", NEW), NEW);
        // A heading inside a fence is not one.
        let fenced = format!("# R\n\n```md\n{SECTION_HEADING}\n```\n");
        assert_eq!(
            replace_section(&fenced, NEW),
            format!("{}\n\n{NEW}", fenced.trim_end())
        );
    }

    #[test]
    fn the_generated_config_compiles_with_one_cached_deployment() {
        let at = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
        let text = sluice_config(at(8080), at(18001), 1);
        let snapshot =
            sluice::config::load_str(Path::new("gen.toml"), &text, &|_: &str| None, None);
        assert!(snapshot.is_ok(), "{text}");
        assert_eq!(text.matches("[[deployment]]").count(), 2);
        assert_eq!(text.matches("cache = ").count(), 1);
        assert!(text.contains("listen = \"\""));
    }

    #[test]
    fn the_body_is_deterministic_chat() {
        let body: serde_json::Value = serde_json::from_slice(&chat_body()).unwrap();
        assert_eq!(body["temperature"], 0);
        assert!(body.get("stream").is_none());
        assert_eq!(body["messages"].as_array().map(Vec::len), Some(2));
    }

    #[test]
    fn answer_heads_give_status_and_cache_label() {
        let hit = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nX-Sluice-Cache: hit\r\n\
                    content-length: 2\r\n\r\n{}";
        assert_eq!(parse_answer_head(hit), Some((200, Some("hit".to_owned()))));
        let none = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(parse_answer_head(none), Some((200, None)));
        assert_eq!(parse_answer_head(b"HTTP/1.1 200 OK\r\ncontent-le"), None);
        assert_eq!(parse_answer_head(b""), None);
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[]), 0.0);
        assert_eq!(median(&[3.0]), 3.0);
        assert_eq!(median(&[9.0, 1.0, 5.0]), 5.0);
        assert_eq!(
            median(&[6.89, 10.41, 9.85, 16.02, 12.61, 8.13]),
            (9.85 + 10.41) / 2.0
        );
    }

    fn round(round: usize, deployment: &str, cpu: f64, rps: f64) -> RoundResult {
        RoundResult {
            round,
            deployment: deployment.to_owned(),
            duration_s: 5.0,
            requests: (rps * 5.0) as u64,
            rps,
            p50_us: 100,
            p99_us: 200,
            cpu_us: (cpu * rps * 5.0) as u64,
            cpu_us_per_req: cpu,
            sluice_cores: round_to(cpu * rps / 1e6, 100.0),
            upstream_requests: if deployment == CACHED {
                0
            } else {
                (rps * 5.0) as u64
            },
            hits: (deployment == CACHED).then_some((rps * 5.0) as u64),
        }
    }

    #[test]
    fn the_report_gives_both_rows_medians_and_the_ratio() {
        let rounds = vec![
            round(1, PASSTHROUGH, 14.0, 50_000.0),
            round(1, CACHED, 7.0, 100_000.0),
            round(2, CACHED, 8.0, 90_000.0),
            round(2, PASSTHROUGH, 12.0, 52_000.0),
        ];
        let (passthrough, cached) = (summarize(PASSTHROUGH, &rounds), summarize(CACHED, &rounds));
        assert_eq!(passthrough.cpu_us_per_req, 13.0);
        assert_eq!(cached.cpu_us_per_req, 7.5);
        assert_eq!(passthrough.requests, 510_000);
        let report = CacheReport {
            date: "2026-12-02 19:00 UTC".to_owned(),
            commit: Some("abc1234".to_owned()),
            cores: 2,
            load_average: [Some(0.1), None],
            command: "sluice-bench cache --rounds 2".to_owned(),
            proxy_cpus: 1,
            probe: vec!["miss".to_owned(), "hit".to_owned()],
            rounds,
            cpu_ratio: Some(round_to(7.5 / 13.0, 100.0)),
            passthrough,
            cached,
        };
        let text = render_section(&report);
        assert!(text.starts_with(&format!(
            "{SECTION_HEADING}\n\n2026-12-02 19:00 UTC, commit abc1234"
        )));
        assert!(
            text.contains("(load average 0.1 at the start, ? at the end)"),
            "{text}"
        );
        assert!(text.contains("| `passthrough` (no cache) | 14.00, 12.00 | 13.00 | 51.0 k (50.0 k–52.0 k) | 100 / 200 | 510000 / 510000 |"), "{text}");
        assert!(text.contains("| `cached` (all hits) | 7.00, 8.00 | 7.50 | 95.0 k (90.0 k–100.0 k) | 100 / 200 | 950000 / 0 |"), "{text}");
        assert!(
            text.contains(
                "**A hit costs 0.58× the CPU of a forwarded request** (7.50 against 13.00 µs"
            ),
            "{text}"
        );
        assert!(
            text.contains("cores busy, medians, of the 1 it was pinned to, so the load generator"),
            "{text}"
        );
        assert!(
            text.contains("`x-sluice-cache: miss`, then `hit`"),
            "{text}"
        );
        // What replace_section takes back: the section ends with one newline, and no
        // heading after its own ends it early.
        assert!(text.ends_with(".\n") && !text.ends_with("\n\n"), "{text}");
        assert_eq!(text.lines().filter(|l| l.starts_with('#')).count(), 1);
    }

    fn load_report(requests: u64, ok: u64) -> LoadReport {
        LoadReport {
            label: String::new(),
            url: String::new(),
            mode: load::Mode::Closed,
            rate: None,
            connections: 8,
            threads: 1,
            duration_s: 1.0,
            requests,
            ok,
            errors: load::ErrorCounts {
                status_5xx: requests - ok,
                ..load::ErrorCounts::default()
            },
            rps: requests as f64,
            latency_us: load::Percentiles::default(),
            ttft_us: None,
            event_gap_us: None,
            latency_curve: Vec::new(),
            warmup_requests: 0,
        }
    }

    #[test]
    fn rounds_are_checked() {
        assert!(check_round(PASSTHROUGH, &load_report(100, 100), 100).is_ok());
        assert!(check_round(PASSTHROUGH, &load_report(100, 100), 99).is_err());
        assert!(check_round(PASSTHROUGH, &load_report(100, 99), 100).is_err());
        assert!(check_round(CACHED, &load_report(5000, 5000), 0).is_ok());
        assert!(check_round(CACHED, &load_report(5000, 5000), 5).is_ok());
        assert!(check_round(CACHED, &load_report(5000, 5000), 6).is_err());
        assert!(check_round(CACHED, &load_report(100, 100), 1).is_err());
        assert!(check_round(CACHED, &load_report(0, 0), 0).is_err());
    }
}
