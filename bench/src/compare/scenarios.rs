//! The measurements: one round runs every phase against one target, and rounds interleave
//! the targets (A B C D, A B C D, …) so slow drift on a shared machine spreads over all of
//! them instead of landing on one.
//!
//! Phases of a round, in order: closed-loop peak (`--connections`, `--duration`, RSS sampled
//! throughout); CPU per request at peak (exactly `--cpu-requests` requests, closed loop), and
//! again with the large prompt's body (`--prompt-kib`); latency at c=1; CPU per request and the latency curve at `--low-rate` (open loop); the
//! open-loop frontier ([`search_frontier`]); streaming TTFT and event gaps against the paced
//! mock; syscalls per request (last round only); RSS after an idle pause.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::procs::{self, CpuList, SyscallCounter};
use super::targets::{Target, TargetKind, Upstreams, DEPLOYMENT, STREAM_DEPLOYMENT};
use crate::load::{self, CurvePoint, LoadConfig, LoadReport, Percentiles};

/// What makes an open-loop rate pass: p99 at most this (µs)…
pub const FRONTIER_P99_US: u64 = 1_000;
/// …and a share of failed requests below this.
pub const FRONTIER_ERROR_SHARE: f64 = 0.001;

/// How a whole compare run measures (from the command line).
#[derive(Debug, Clone)]
pub struct Plan {
    /// Rounds over all targets.
    pub rounds: usize,
    /// Length of each duration-bound phase.
    pub duration: Duration,
    /// Warm-up before each duration-bound phase (sent, not recorded).
    pub warmup: Duration,
    /// Connections for peak, CPU and frontier phases.
    pub connections: usize,
    /// The low fixed rate (req/s).
    pub low_rate: f64,
    /// Requests over which CPU per request is read at peak.
    pub cpu_requests: u64,
    /// Requests over which CPU per request is read at the low rate (bounded so the phase
    /// lasts at most `duration`).
    pub low_requests: u64,
    /// Length of one frontier probe.
    pub probe: Duration,
    /// Probes per frontier search.
    pub frontier_steps: usize,
    /// Concurrent streams in the streaming phase.
    pub stream_connections: usize,
    /// Idle pause before RSS "after" is read.
    pub settle: Duration,
    /// CPUs the load runs on.
    pub load_cpus: CpuList,
    /// The large prompt's request body, when CPU per request is measured with it too.
    pub large_body: Option<Vec<u8>>,
    /// `perf` binary for syscall counts, when usable.
    pub perf: Option<PathBuf>,
    /// Output directory (perf files go there).
    pub out: PathBuf,
}

/// One frontier probe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Probe {
    /// Offered rate (req/s).
    pub rate: f64,
    /// Measured p99 (µs, from each request's intended send time).
    pub p99_us: u64,
    /// Failed requests / all requests.
    pub error_share: f64,
    /// Whether both limits held.
    pub pass: bool,
}

/// The result of a frontier search.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Frontier {
    /// The highest passing rate probed; `None` when none passed.
    pub rate: Option<f64>,
    /// Every probe, in the order run.
    pub probes: Vec<Probe>,
}

fn round_rate(rate: f64) -> f64 {
    if rate >= 100.0 {
        (rate / 10.0).round() * 10.0
    } else {
        rate.round().max(1.0)
    }
}

/// Searches for the highest open-loop rate in `(0, upper]` where `measure(rate)` gives
/// `(p99_us, error_share)` within [`FRONTIER_P99_US`] and [`FRONTIER_ERROR_SHARE`]: first
/// `upper` itself, then bisection, `steps` probes in all. Rates are rounded to 10 req/s.
pub fn search_frontier(
    upper: f64,
    steps: usize,
    mut measure: impl FnMut(f64) -> anyhow::Result<(u64, f64)>,
) -> anyhow::Result<Frontier> {
    let mut frontier = Frontier::default();
    let (mut lo, mut hi) = (0.0_f64, upper.max(1.0));
    let mut rate = round_rate(hi);
    for _ in 0..steps {
        let (p99_us, error_share) = measure(rate)?;
        let pass = p99_us <= FRONTIER_P99_US && error_share < FRONTIER_ERROR_SHARE;
        frontier.probes.push(Probe {
            rate,
            p99_us,
            error_share,
            pass,
        });
        if pass {
            lo = rate;
            frontier.rate = Some(frontier.rate.map_or(rate, |r: f64| r.max(rate)));
            if rate >= round_rate(upper) {
                break;
            }
        } else {
            hi = rate;
        }
        let next = round_rate((lo + hi) / 2.0);
        if next <= lo || next >= hi {
            break;
        }
        rate = next;
    }
    Ok(frontier)
}

/// Resident memory of the proxy over one round (KiB; for nginx summed over its processes).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RssRound {
    /// Before the round's load (idle, after the warm-up).
    pub idle_kb: u64,
    /// A quarter into the sustained peak phase.
    pub load_early_kb: u64,
    /// At the end of the sustained peak phase.
    pub load_late_kb: u64,
    /// Highest sample during the sustained phase.
    pub load_max_kb: u64,
    /// After the round's load and an idle pause.
    pub after_kb: u64,
    /// VmHWM (peak RSS since start) at the end of the round.
    pub hwm_kb: u64,
}

/// Syscalls per request and how they were counted.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Syscalls {
    /// Syscalls / requests.
    pub per_request: f64,
    /// What counted them.
    pub source: String,
}

/// The name prefix of Sluice's audit threads (`sluice-audit-writer`, `sluice-audit-sink-N`):
/// they are threads of the proxy process, so its CPU per request includes them; their share
/// is read apart from `/proc/PID/task/*/stat`.
pub const AUDIT_THREADS: &str = "sluice-audit";

/// CPU µs per request over one load.
struct CpuPerRequest {
    /// The proxy's processes, every thread (`None` for the direct target).
    all: Option<f64>,
    /// Their [`AUDIT_THREADS`] threads alone (`None` when there are none).
    audit: Option<f64>,
}

/// Everything one round measured for one target.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RoundResult {
    /// Round number (from 1).
    pub round: usize,
    /// Which target.
    pub target: TargetKind,
    /// Closed-loop peak req/s at `--connections`.
    pub max_rps: f64,
    /// Failed requests over all phases of the round.
    pub errors: u64,
    /// Latency at c=1 (closed loop).
    pub c1: Percentiles,
    /// Proxy CPU µs per request at peak.
    pub cpu_us_per_req_max: Option<f64>,
    /// Of that, the audit log's own threads (named [`AUDIT_THREADS`]`*`: the writer and one
    /// per sink); `None` when the process has none (audit off, or not Sluice).
    #[serde(default)]
    pub audit_cpu_us_per_req_max: Option<f64>,
    /// The same with the large prompt's body (absent in results from before it existed).
    #[serde(default)]
    pub cpu_us_per_req_large: Option<f64>,
    /// Proxy CPU µs per request at the low rate.
    pub cpu_us_per_req_low: Option<f64>,
    /// Latency at the low rate (open loop).
    pub low_rate_latency: Percentiles,
    /// Its percentile curve (for the plot).
    pub low_rate_curve: Vec<CurvePoint>,
    /// Open-loop frontier.
    pub frontier: Frontier,
    /// Streaming: time to first token.
    pub stream_ttft: Option<Percentiles>,
    /// Streaming: gaps between events.
    pub stream_gap: Option<Percentiles>,
    /// Proxy memory.
    pub rss: Option<RssRound>,
    /// Proxy syscalls per request (last round only).
    pub syscalls: Option<Syscalls>,
}

/// One load phase's shape.
struct Shape {
    deployment: &'static str,
    connections: usize,
    rate: Option<f64>,
    duration: Duration,
    warmup: Duration,
    requests: Option<u64>,
    stream: bool,
    /// Send the large prompt's body ([`Plan::large_body`]) instead of the small one.
    large: bool,
}

/// The [`LoadConfig`] for one phase against `url`; `large` is the large prompt's body.
fn load_config(
    url: String,
    label: String,
    shape: &Shape,
    cpus: &CpuList,
    large: Option<&[u8]>,
) -> LoadConfig {
    let body = match (shape.stream, shape.large.then_some(large).flatten()) {
        (true, _) => crate::CHAT_REQUEST_STREAM,
        (false, Some(large)) => large,
        (false, None) => crate::CHAT_REQUEST,
    };
    LoadConfig {
        url,
        method: Some("POST".to_owned()),
        body: body.to_vec(),
        headers: vec![
            ("content-type".to_owned(), "application/json".to_owned()),
            ("api-key".to_owned(), "sluice-demo-key".to_owned()),
        ],
        connections: shape.connections,
        threads: 1,
        duration: shape.duration,
        warmup: shape.warmup,
        rate: shape.rate,
        requests: shape.requests,
        stream: shape.stream,
        timeout: Duration::from_secs(10),
        label,
        progress: false,
        cpus: cpus.cpus().to_vec(),
        ..LoadConfig::default()
    }
}

/// Runs the rounds over `targets` and returns every round's results, in the order run.
pub fn run_rounds(
    targets: &mut [Target],
    up: &Upstreams,
    plan: &Plan,
) -> anyhow::Result<Vec<RoundResult>> {
    for target in targets.iter_mut() {
        eprintln!("sluice-bench compare: warming up {}", target.kind.name());
        let runner = Runner { target, up, plan };
        runner.warm_up()?;
    }
    let mut results = Vec::new();
    for round in 1..=plan.rounds {
        for target in targets.iter_mut() {
            let name = target.kind.name();
            let runner = Runner { target, up, plan };
            let result = runner
                .round(round)
                .with_context(|| format!("round {round}, {name}"))?;
            eprintln!(
                "sluice-bench compare: [round {round}/{}] {name}: peak {:.0} req/s, c=1 p50 {} µs \
                 p99 {} µs, cpu {} µs/req, frontier {}, errors {}",
                plan.rounds,
                result.max_rps,
                result.c1.p50,
                result.c1.p99,
                result
                    .cpu_us_per_req_max
                    .map_or("-".to_owned(), |c| format!("{c:.1}")),
                result
                    .frontier
                    .rate
                    .map_or("none".to_owned(), |r| format!("{r:.0} req/s")),
                result.errors,
            );
            results.push(result);
        }
    }
    Ok(results)
}

struct Runner<'a> {
    target: &'a mut Target,
    up: &'a Upstreams,
    plan: &'a Plan,
}

impl Runner<'_> {
    fn load(&self, phase: &str, shape: &Shape) -> anyhow::Result<LoadReport> {
        let url = self.target.url(self.up, shape.deployment);
        let label = format!("{} {phase}", self.target.kind.name());
        let cfg = load_config(
            url,
            label,
            shape,
            &self.plan.load_cpus,
            self.plan.large_body.as_deref(),
        );
        load::run(&cfg).with_context(|| format!("load phase `{phase}`"))
    }

    fn check_alive(&mut self) -> anyhow::Result<()> {
        match self.target.proc.as_mut() {
            Some(p) => p.check_alive(),
            None => Ok(()),
        }
    }

    fn closed(&self, connections: usize) -> Shape {
        Shape {
            deployment: DEPLOYMENT,
            connections,
            rate: None,
            duration: self.plan.duration,
            warmup: self.plan.warmup,
            requests: None,
            stream: false,
            large: false,
        }
    }

    fn stream_shape(&self) -> Shape {
        Shape {
            deployment: STREAM_DEPLOYMENT,
            connections: self.plan.stream_connections,
            stream: true,
            ..self.closed(self.plan.stream_connections)
        }
    }

    fn warm_up(mut self) -> anyhow::Result<()> {
        let warm = Shape {
            duration: self.plan.warmup,
            warmup: Duration::ZERO,
            ..self.closed(self.plan.connections)
        };
        self.load("warm-up", &warm)?;
        let stream = Shape {
            duration: self.plan.warmup,
            warmup: Duration::ZERO,
            ..self.stream_shape()
        };
        self.load("stream warm-up", &stream)?;
        self.check_alive()
    }

    /// CPU µs per request over one load (all threads, and the audit threads apart).
    fn cpu_per_request(
        &self,
        phase: &str,
        shape: &Shape,
    ) -> anyhow::Result<(LoadReport, CpuPerRequest)> {
        let pids = &self.target.pids;
        let before = if pids.is_empty() {
            None
        } else {
            Some(procs::cpu_time_us(pids)?)
        };
        let audit_before = procs::thread_cpu_time_us(pids, AUDIT_THREADS);
        let report = self.load(phase, shape)?;
        let requests = report.requests as f64;
        let per_request = |before: u64, after: u64| after.saturating_sub(before) as f64 / requests;
        let cpu = if report.requests == 0 {
            CpuPerRequest {
                all: None,
                audit: None,
            }
        } else {
            CpuPerRequest {
                all: match before {
                    Some(before) => Some(per_request(before, procs::cpu_time_us(pids)?)),
                    None => None,
                },
                audit: audit_before.and_then(|before| {
                    Some(per_request(
                        before,
                        procs::thread_cpu_time_us(pids, AUDIT_THREADS)?,
                    ))
                }),
            }
        };
        Ok((report, cpu))
    }

    fn round(mut self, round: usize) -> anyhow::Result<RoundResult> {
        let plan = self.plan;
        let pids = self.target.pids.clone();
        let is_proxy = self.target.kind.is_proxy();
        let mut errors = 0;
        let mut count = |r: &LoadReport| errors += r.requests.saturating_sub(r.ok);

        // Peak, with RSS sampled throughout.
        let idle_kb = rss_kb(&pids);
        let peak_shape = self.closed(plan.connections);
        let (peak, samples) = sample_rss_during(&pids, || self.load("peak", &peak_shape));
        let peak = peak?;
        count(&peak);

        // CPU per request at peak.
        let (cpu_max, cpu_us_per_req_max, audit_cpu_us_per_req_max) = if is_proxy {
            let shape = Shape {
                warmup: Duration::ZERO,
                requests: Some(plan.cpu_requests),
                ..self.closed(plan.connections)
            };
            let (report, cpu) = self.cpu_per_request("cpu at peak", &shape)?;
            (Some(report), cpu.all, cpu.audit)
        } else {
            (None, None, None)
        };
        if let Some(r) = &cpu_max {
            count(r);
        }
        // The same with the large prompt.
        let cpu_us_per_req_large = if is_proxy && plan.large_body.is_some() {
            let shape = Shape {
                warmup: Duration::ZERO,
                requests: Some(plan.cpu_requests),
                large: true,
                ..self.closed(plan.connections)
            };
            let (report, cpu) = self.cpu_per_request("cpu at peak, large prompt", &shape)?;
            count(&report);
            cpu.all
        } else {
            None
        };

        // c=1.
        let c1 = self.load("c=1", &self.closed(1))?;
        count(&c1);

        // Low fixed rate: CPU per request and the latency curve.
        let low_shape = Shape {
            rate: Some(plan.low_rate),
            warmup: Duration::ZERO,
            requests: Some(plan.low_requests),
            ..self.closed(plan.connections)
        };
        let (low, cpu_low) = self.cpu_per_request("low rate", &low_shape)?;
        let cpu_us_per_req_low = cpu_low.all;
        count(&low);

        // Frontier.
        let mut probe_errors = 0;
        let frontier = search_frontier(peak.rps, plan.frontier_steps, |rate| {
            let shape = Shape {
                rate: Some(rate),
                duration: plan.probe,
                warmup: plan.warmup.min(Duration::from_millis(500)),
                ..self.closed(plan.connections)
            };
            let r = self.load(&format!("frontier {rate:.0} req/s"), &shape)?;
            let failed = r.requests.saturating_sub(r.ok);
            probe_errors += failed;
            let share = if r.requests == 0 {
                1.0
            } else {
                failed as f64 / r.requests as f64
            };
            Ok((r.latency_us.p99, share))
        })?;
        errors += probe_errors;

        // Streaming.
        let stream = self.load("stream", &self.stream_shape())?;
        errors += stream.requests.saturating_sub(stream.ok);

        // Syscalls per request, once (the last round).
        let syscalls = if is_proxy && round == plan.rounds {
            let shape = Shape {
                warmup: Duration::ZERO,
                requests: Some((plan.cpu_requests / 2).max(1)),
                ..self.closed(plan.connections)
            };
            self.syscalls(&shape)?
        } else {
            None
        };

        self.check_alive()?;
        std::thread::sleep(plan.settle);
        let rss = if is_proxy {
            let early = samples.get(samples.len() / 4).copied().unwrap_or(0);
            Some(RssRound {
                idle_kb,
                load_early_kb: early,
                load_late_kb: samples.last().copied().unwrap_or(0),
                load_max_kb: samples.iter().copied().max().unwrap_or(0),
                after_kb: rss_kb(&pids),
                hwm_kb: procs::status_kb(&pids, "VmHWM").unwrap_or(0),
            })
        } else {
            None
        };

        Ok(RoundResult {
            round,
            target: self.target.kind,
            max_rps: peak.rps,
            errors,
            c1: c1.latency_us,
            cpu_us_per_req_max,
            audit_cpu_us_per_req_max,
            cpu_us_per_req_large,
            cpu_us_per_req_low,
            low_rate_latency: low.latency_us,
            low_rate_curve: low.latency_curve,
            frontier,
            stream_ttft: stream.ttft_us,
            stream_gap: stream.event_gap_us,
            rss,
            syscalls,
        })
    }

    /// Syscalls per request over one load: `perf stat` when it works, else `/proc/PID/io`.
    fn syscalls(&self, shape: &Shape) -> anyhow::Result<Option<Syscalls>> {
        let pids = &self.target.pids;
        let name = self.target.kind.name();
        if let Some(perf) = &self.plan.perf {
            let out = self.plan.out.join(format!("perf-{name}.csv"));
            if let Some(counter) = SyscallCounter::start(perf, pids, &out) {
                let report = self.load("syscalls", shape)?;
                if let (Some(n), true) = (counter.finish(), report.requests > 0) {
                    return Ok(Some(Syscalls {
                        per_request: n as f64 / report.requests as f64,
                        source: format!("perf stat -e {}", procs::SYSCALL_EVENT),
                    }));
                }
            }
        }
        let Ok(before) = procs::io_syscalls(pids) else {
            return Ok(None);
        };
        let report = self.load("syscalls", shape)?;
        let after = procs::io_syscalls(pids)?;
        Ok((report.requests > 0).then(|| Syscalls {
            per_request: after.saturating_sub(before) as f64 / report.requests as f64,
            source: "/proc/PID/io syscr+syscw (read/write family only; io_uring ops not counted)"
                .to_owned(),
        }))
    }
}

/// Current VmRSS of `pids` (0 when there are none or it cannot be read).
fn rss_kb(pids: &[u32]) -> u64 {
    if pids.is_empty() {
        return 0;
    }
    procs::status_kb(pids, "VmRSS").unwrap_or(0)
}

/// Runs `f` while a thread samples the RSS of `pids` every 100 ms.
fn sample_rss_during<T>(pids: &[u32], f: impl FnOnce() -> T) -> (T, Vec<u64>) {
    if pids.is_empty() {
        return (f(), Vec::new());
    }
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        let sampler = s.spawn(|| {
            let mut samples = Vec::new();
            while !done.load(Ordering::Relaxed) {
                if let Ok(kb) = procs::status_kb(pids, "VmRSS") {
                    samples.push(kb);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            samples
        });
        let out = f();
        done.store(true, Ordering::Relaxed);
        let samples = sampler.join().unwrap_or_default();
        (out, samples)
    })
}

/// The `perf` binary when one is on `$PATH`.
pub fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A target whose p99 stays at 300 µs up to `capacity` req/s, then explodes.
    fn knee(capacity: f64) -> impl FnMut(f64) -> anyhow::Result<(u64, f64)> {
        move |rate| {
            Ok(if rate <= capacity {
                (300, 0.0)
            } else {
                (50_000, 0.0)
            })
        }
    }

    #[test]
    fn frontier_is_the_upper_bound_when_it_passes() {
        let f = search_frontier(10_000.0, 6, knee(20_000.0)).unwrap();
        assert_eq!(f.rate, Some(10_000.0));
        assert_eq!(f.probes.len(), 1);
    }

    #[test]
    fn frontier_bisects_below_the_knee() {
        let f = search_frontier(10_000.0, 6, knee(6_000.0)).unwrap();
        let rates: Vec<f64> = f.probes.iter().map(|p| p.rate).collect();
        assert_eq!(
            rates,
            [10_000.0, 5_000.0, 7_500.0, 6_250.0, 5_630.0, 5_940.0]
        );
        let rate = f.rate.unwrap();
        assert!((5_500.0..=6_000.0).contains(&rate), "{rate}");
        assert!(f.probes.iter().all(|p| p.pass == (p.rate <= 6_000.0)));
    }

    #[test]
    fn frontier_counts_errors_and_can_find_nothing() {
        let f = search_frontier(1_000.0, 4, |_| Ok((100, 0.01))).unwrap();
        assert_eq!(f.rate, None);
        assert_eq!(f.probes.len(), 4);
        assert!(f.probes.iter().all(|p| !p.pass));
        // Exactly at the limit passes; errors must stay under 0.1 %.
        let f = search_frontier(1_000.0, 3, |_| Ok((FRONTIER_P99_US, 0.0009))).unwrap();
        assert_eq!(f.rate, Some(1_000.0));
    }

    #[test]
    fn frontier_stops_when_bisection_cannot_move() {
        let f = search_frontier(20.0, 10, knee(0.0)).unwrap();
        assert_eq!(f.rate, None);
        assert!(f.probes.len() < 10);
    }

    #[test]
    fn frontier_passes_measure_errors_on() {
        assert!(search_frontier(100.0, 3, |_| anyhow::bail!("load failed")).is_err());
    }
}
