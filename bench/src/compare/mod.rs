//! `sluice-bench compare`: the mock direct, Sluice as a passthrough, Sluice with its full
//! chain of policies and nginx, measured side by side in one run, and the goals
//! checked against the figures; with `--tls`, Sluice and nginx over TLS as well ([`tls`]);
//! with `--observability-cost`, the full chain without its audit log and metrics as well.
//!
//! The mocks run in this process (pinned to `--mock-cpus`), each proxy as a child process
//! pinned to `--proxy-cpus` ([`procs`]), the load in this process on `--load-cpus`. The
//! pieces: [`targets`] writes the proxies' configs and starts them, [`scenarios`] runs the
//! rounds and the frontier search, [`report`] folds rounds into summaries and goals and
//! renders `report.md` / `results.json`, [`plot`] draws `latency.svg`.

pub mod callgrind;
pub mod plot;
pub mod procs;
pub mod report;
pub mod scenarios;
pub mod targets;
pub mod tls;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};

use crate::mock_server::{self, MockConfig};
use procs::CpuList;
use report::{Meta, Results, Settings};
use scenarios::Plan;
use targets::{Launch, Target, TargetKind, Upstreams};

/// Streaming mock pace: tokens per second (a 1 ms gap between events)…
const STREAM_TOKENS_PER_SECOND: f64 = 1000.0;
/// …and tokens per answer.
const STREAM_TOKENS: u32 = 16;

/// `sluice-bench compare` arguments.
#[derive(clap::Args, Debug)]
pub struct CompareArgs {
    /// Directory for report.md, results.json, latency.svg, the generated configs and logs.
    #[arg(long, default_value = "bench-out")]
    pub out: PathBuf,
    /// Rounds; each runs every target in turn (A B C D, A B C D, …).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Length of each measured phase ("5s", "500ms").
    #[arg(long, default_value = "5s", value_parser = crate::load::parse_duration)]
    pub duration: Duration,
    /// Warm-up before each phase (sent, not recorded).
    #[arg(long, default_value = "1s", value_parser = crate::load::parse_duration)]
    pub warmup: Duration,
    /// Connections for the peak, CPU and frontier phases.
    #[arg(long, default_value_t = 32)]
    pub connections: usize,
    /// The low fixed rate (req/s), open loop.
    #[arg(long, default_value_t = 1000.0)]
    pub low_rate: f64,
    /// Requests over which the proxy's CPU per request is read at peak (at the low rate:
    /// at most what `--duration` holds).
    #[arg(long, default_value_t = 20_000)]
    pub cpu_requests: u64,
    /// CPUs every proxy is pinned to (its worker count is their count).
    #[arg(long, default_value = "1")]
    pub proxy_cpus: CpuList,
    /// CPUs the load generator runs on.
    #[arg(long, default_value = "0")]
    pub load_cpus: CpuList,
    /// CPUs the mock backends run on.
    #[arg(long, default_value = "0")]
    pub mock_cpus: CpuList,
    /// The `sluice` binary (default: the one next to this executable, else on $PATH).
    #[arg(long)]
    pub sluice: Option<PathBuf>,
    /// The `nginx` binary (default: on $PATH; skipped when there is none).
    #[arg(long)]
    pub nginx: Option<PathBuf>,
    /// Skip nginx even when installed.
    #[arg(long)]
    pub no_nginx: bool,
    /// The large body's prompt, in KiB of English prose (one user message): CPU per
    /// request at peak (and instructions per request under callgrind) is measured with it
    /// too, beside the small `chat_request.json`, so the prompt estimate's cost per size
    /// shows. 0: the small body only.
    #[arg(long, default_value_t = 4)]
    pub prompt_kib: usize,
    /// Requests counted per body under callgrind (after a warm-up of a quarter as many);
    /// 0 skips callgrind. Skipped too when valgrind is not installed, and with `--quick`.
    #[arg(long, default_value_t = 2_000)]
    pub callgrind_requests: u64,
    /// Also run the TLS scenario (after the plain rounds): Sluice's passthrough and nginx
    /// listening for HTTPS with the same generated certificate; keep-alive requests/s, new
    /// handshakes/s and CPU per request and per handshake (see `compare::tls`).
    #[arg(long)]
    pub tls: bool,
    /// TLS scenario: new connections (a full handshake and one request each) over which CPU
    /// per handshake is read.
    #[arg(long, default_value_t = 5_000)]
    pub tls_handshakes: u64,
    /// Also run `sluice-full-chain-bare` (the full chain without the audit log and the
    /// metrics) in the same interleaved rounds and under callgrind, and check issue 12's
    /// budget on the request path: (full chain − its audit threads) − bare ≤ 1.5 µs CPU
    /// per request at peak. Off by default, so the default run keeps its length.
    #[arg(long)]
    pub observability_cost: bool,
    /// CI mode: one round of ~0.5 s phases and small counts, no callgrind; seconds in all.
    #[arg(long)]
    pub quick: bool,
    /// Also write the report into FILE (bench/RESULTS.md), between its generated-report
    /// markers (else at its top); the rest of FILE is kept.
    #[arg(long, value_name = "FILE")]
    pub update_results: Option<PathBuf>,
    /// Measure nothing: render report.md and latency.svg again from an earlier run's
    /// results.json (goals and notes re-checked), into `--out`.
    #[arg(long, value_name = "FILE")]
    pub from_json: Option<PathBuf>,
}

impl CompareArgs {
    fn plan(&self, out: &Path) -> Plan {
        let (rounds, duration, warmup, cpu_requests, probe, steps, settle) = if self.quick {
            (
                1,
                Duration::from_millis(500),
                Duration::from_millis(200),
                self.cpu_requests.min(2_000),
                Duration::from_millis(300),
                3,
                Duration::from_millis(200),
            )
        } else {
            (
                self.rounds.max(1),
                self.duration,
                self.warmup,
                self.cpu_requests.max(1),
                (self.duration / 2).max(Duration::from_millis(500)),
                5,
                Duration::from_secs(1),
            )
        };
        let low_requests = ((self.low_rate * duration.as_secs_f64()) as u64).clamp(1, cpu_requests);
        Plan {
            rounds,
            duration,
            warmup,
            connections: self.connections.max(1),
            low_rate: self.low_rate.max(1.0),
            cpu_requests,
            low_requests,
            probe,
            frontier_steps: steps,
            stream_connections: 4,
            settle,
            load_cpus: self.load_cpus.clone(),
            large_body: (self.prompt_kib > 0)
                .then(|| crate::chat_request_prompt(&crate::prose_kib().repeat(self.prompt_kib))),
            perf: scenarios::find_on_path("perf"),
            out: out.to_path_buf(),
        }
    }
}

impl CompareArgs {
    /// The TLS scenario's plan: the plain plan's rounds, phases and connections.
    fn tls_plan(&self, plan: &Plan) -> tls::TlsPlan {
        tls::TlsPlan {
            rounds: plan.rounds,
            duration: plan.duration,
            warmup: plan.warmup,
            connections: plan.connections,
            cpu_requests: plan.cpu_requests,
            handshakes: if self.quick {
                self.tls_handshakes.clamp(1, 300)
            } else {
                self.tls_handshakes.max(1)
            },
            load_cpus: plan.load_cpus.clone(),
        }
    }
}

/// The `sluice` binary: `--sluice`, else next to this executable, else on `$PATH`.
pub fn sluice_binary(arg: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = arg {
        return Ok(p.to_path_buf());
    }
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.join("sluice")))
        .filter(|p| p.is_file());
    beside
        .or_else(|| scenarios::find_on_path("sluice"))
        .context("no `sluice` binary next to sluice-bench or on $PATH; build it (cargo build --release -p sluice) or pass --sluice")
}

fn read_trimmed(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_owned())
}

fn command_line(cmd: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(cmd).args(args).output().ok()?;
    let text = if out.stdout.is_empty() {
        out.stderr
    } else {
        out.stdout
    };
    let line = String::from_utf8_lossy(&text)
        .lines()
        .next()?
        .trim()
        .to_owned();
    (out.status.success() && !line.is_empty()).then_some(line)
}

fn meta(args: &CompareArgs, sluice: &Path, nginx: Option<&Path>) -> Meta {
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| Some(l.split_once(':')?.1.trim().to_owned()))
        })
        .unwrap_or_else(|| "unknown".to_owned());
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    Meta {
        date: report::utc_date(now),
        cpu_model,
        cores: procs::available_cpus(),
        kernel: read_trimmed("/proc/sys/kernel/osrelease").unwrap_or_else(|| "unknown".into()),
        commit: command_line("git", &["rev-parse", "--short", "HEAD"]),
        sluice: sluice.display().to_string(),
        nginx: nginx.and_then(|n| command_line(&n.display().to_string(), &["-v"])),
        proxy_cpus: args.proxy_cpus.to_string(),
        load_cpus: args.load_cpus.to_string(),
        mock_cpus: args.mock_cpus.to_string(),
    }
}

/// Caveats that follow from where things ran.
fn notes(args: &CompareArgs, plan: &Plan, cores: usize) -> Vec<String> {
    let mut notes = Vec::new();
    let overlap = |a: &CpuList, b: &CpuList| a.cpus().iter().any(|c| b.cpus().contains(c));
    if overlap(&args.load_cpus, &args.mock_cpus) {
        notes.push(format!(
            "The load generator and the mock share CPU(s) {}: the direct target's peak is what \
             one shared core gives both, and every proxy's peak is bounded by that core too.",
            args.load_cpus
        ));
    }
    if overlap(&args.proxy_cpus, &args.load_cpus) || overlap(&args.proxy_cpus, &args.mock_cpus) {
        notes.push(format!(
            "The proxies' CPU(s) {} are shared with the load or the mock: latency and peak \
             figures include that contention.",
            args.proxy_cpus
        ));
    }
    if cores <= 2 {
        notes.push(format!(
            "This machine has {cores} usable cores, shared with whatever else runs on it \
             (builds, other jobs): load, mock and proxy cannot each have a core of their own. \
             Read ratios between targets measured in the same run, not absolute figures."
        ));
    }
    let tick_us = 1_000_000 / procs::TICKS_PER_SECOND;
    notes.push(format!(
        "CPU per request is utime+stime from /proc/PID/stat, counted in {} ms ticks: over {} \
         requests at peak that is ±{:.2} µs/request, over {} at the low rate ±{:.2} µs/request.",
        tick_us / 1000,
        plan.cpu_requests,
        tick_us as f64 / plan.cpu_requests as f64,
        plan.low_requests,
        tick_us as f64 / plan.low_requests as f64
    ));
    notes.push(
        "Latency is measured by the load generator from each request's intended send time \
         (open loop, coordinated omission corrected) or from its send (closed loop, c=1); \
         `added` figures subtract the direct target's same percentile, so noise can make \
         them slightly negative."
            .to_owned(),
    );
    if plan.perf.is_none() {
        notes.push(
            "perf is not installed: syscalls per request come from /proc/PID/io (read/write \
             family only, io_uring operations not counted)."
                .to_owned(),
        );
    }
    notes
}

/// Runs the comparison and writes the report.
pub fn run(args: CompareArgs) -> anyhow::Result<()> {
    let out = args.out.clone();
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let out = out.canonicalize()?;
    if let Some(json) = &args.from_json {
        let text =
            std::fs::read_to_string(json).with_context(|| format!("reading {}", json.display()))?;
        let mut results: Results =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", json.display()))?;
        results.goals = report::evaluate_goals(&results.targets);
        return write_outputs(&results, &out, args.update_results.as_deref());
    }
    let sluice = sluice_binary(args.sluice.as_deref())?;
    let nginx = if args.no_nginx {
        None
    } else {
        args.nginx
            .clone()
            .or_else(|| scenarios::find_on_path("nginx"))
    };
    if args.nginx.is_some() && nginx.as_ref().is_some_and(|n| !n.is_file()) {
        bail!(
            "--nginx {}: no such file",
            args.nginx.as_deref().unwrap_or(Path::new("")).display()
        );
    }
    let plan = args.plan(&out);
    let meta = meta(&args, &sluice, nginx.as_deref());
    eprintln!(
        "sluice-bench compare: sluice {}, nginx {}, out {}",
        sluice.display(),
        nginx
            .as_ref()
            .map_or("skipped".to_owned(), |n| n.display().to_string()),
        out.display()
    );

    // The mocks: two listeners each (the full chain balances over both).
    let loopback = || std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let fast = procs::with_affinity(&args.mock_cpus, || {
        mock_server::spawn(MockConfig {
            listen: vec![loopback(), loopback()],
            threads: args.mock_cpus.count(),
            ..MockConfig::default()
        })
    })?
    .context("starting the mock")?;
    let stream = procs::with_affinity(&args.mock_cpus, || {
        mock_server::spawn(MockConfig {
            listen: vec![loopback(), loopback()],
            threads: 1,
            tokens_per_second: STREAM_TOKENS_PER_SECOND,
            completion_tokens: STREAM_TOKENS,
            ..MockConfig::default()
        })
    })?
    .context("starting the streaming mock")?;
    let pair = |addrs: &[std::net::SocketAddr]| -> anyhow::Result<[std::net::SocketAddr; 2]> {
        match addrs {
            [a, b, ..] => Ok([*a, *b]),
            _ => bail!("the mock bound {} listener(s), expected 2", addrs.len()),
        }
    };
    let up = Upstreams {
        fast: pair(fast.addrs())?,
        stream: pair(stream.addrs())?,
    };

    let mut kinds = vec![
        TargetKind::Direct,
        TargetKind::SluicePassthrough,
        TargetKind::SluiceFullChain,
    ];
    if args.observability_cost {
        kinds.push(TargetKind::SluiceFullChainBare);
    }
    if nginx.is_some() {
        kinds.push(TargetKind::Nginx);
    }
    let nginx_path = nginx.clone().unwrap_or_default();
    let launch = Launch {
        sluice: &sluice,
        nginx: &nginx_path,
        cpus: &args.proxy_cpus,
        out: &out,
        callgrind: None,
    };
    let mut targets = Vec::new();
    for kind in kinds {
        let target = Target::start(kind, &up, &launch)
            .with_context(|| format!("starting {}", kind.name()))?;
        eprintln!(
            "sluice-bench compare: {} on {} (pids {:?}, {})",
            kind.name(),
            target.addr,
            target.pids,
            target.driver
        );
        targets.push(target);
    }

    let rounds = scenarios::run_rounds(&mut targets, &up, &plan)?;
    // Stop the proxies before the mocks.
    let drivers: Vec<(TargetKind, String)> =
        targets.iter().map(|t| (t.kind, t.driver.clone())).collect();
    drop(targets);

    // TLS: Sluice's passthrough and nginx over HTTPS, in their own interleaved rounds.
    let tls_results = if args.tls {
        let kinds: Vec<TargetKind> = drivers
            .iter()
            .map(|(k, _)| *k)
            .filter(|k| matches!(k, TargetKind::SluicePassthrough | TargetKind::Nginx))
            .collect();
        Some(tls::run(&kinds, &up, &launch, &args.tls_plan(&plan)).context("the TLS scenario")?)
    } else {
        None
    };

    // Instructions per request, one proxy at a time under callgrind, one worker.
    let mut callgrind_notes = Vec::new();
    let tools = callgrind::Tools::find();
    let mut instructions = Vec::new();
    match (&tools, args.quick || args.callgrind_requests == 0) {
        (_, true) => callgrind_notes.push(
            "Instructions per request were not measured (--quick or --callgrind-requests 0)."
                .to_owned(),
        ),
        (None, false) => callgrind_notes.push(
            "valgrind (callgrind) is not installed: instructions per request were not measured."
                .to_owned(),
        ),
        (Some(tools), false) => {
            let one_cpu: CpuList = args
                .proxy_cpus
                .cpus()
                .first()
                .map_or_else(|| "0".to_owned(), ToString::to_string)
                .parse()?;
            let cg_launch = Launch {
                cpus: &one_cpu,
                ..launch
            };
            let cg_plan = callgrind::CallgrindPlan {
                tools,
                warmup_requests: (args.callgrind_requests / 4).max(1),
                requests: args.callgrind_requests,
                bodies: (crate::CHAT_REQUEST, plan.large_body.as_deref()),
                load_cpus: &args.load_cpus,
            };
            for (kind, _) in drivers.iter().filter(|(k, _)| k.is_proxy()) {
                eprintln!("sluice-bench compare: {} under callgrind", kind.name());
                match callgrind::measure(*kind, &up, &cg_launch, &cg_plan) {
                    Ok(i) => instructions.push(i),
                    Err(e) => {
                        callgrind_notes.push(format!("callgrind of {} failed: {e:#}", kind.name()))
                    }
                }
            }
        }
    }
    fast.stop();
    stream.stop();

    let cores = args.proxy_cpus.count();
    let of = |kind: TargetKind| -> Vec<&scenarios::RoundResult> {
        rounds.iter().filter(|r| r.target == kind).collect()
    };
    let direct = report::summarize(
        TargetKind::Direct,
        "mock (in-process)",
        cores,
        &of(TargetKind::Direct),
        None,
    );
    let mut summaries = vec![direct.clone()];
    for (kind, driver) in drivers.iter().filter(|(k, _)| k.is_proxy()) {
        let mut summary = report::summarize(*kind, driver, cores, &of(*kind), Some(&direct));
        if let Some(i) = instructions.iter().find(|i| i.target == kind.name()) {
            summary.instr_per_req = i.per_request;
            summary.instr_per_req_large = i.per_request_large;
        }
        summaries.push(summary);
    }
    let goals = report::evaluate_goals(&summaries);
    let mut all_notes = notes(&args, &plan, procs::available_cpus());
    all_notes.extend(report::measured_notes(&summaries));
    all_notes.extend(callgrind_notes);
    let results = Results {
        meta,
        settings: Settings {
            quick: args.quick,
            rounds: plan.rounds,
            duration_s: plan.duration.as_secs_f64(),
            warmup_s: plan.warmup.as_secs_f64(),
            connections: plan.connections,
            low_rate: plan.low_rate,
            cpu_requests: plan.cpu_requests,
            low_requests: plan.low_requests,
            probe_s: plan.probe.as_secs_f64(),
            frontier_steps: plan.frontier_steps,
            stream_connections: plan.stream_connections,
            stream_tokens_per_second: STREAM_TOKENS_PER_SECOND,
            stream_tokens: STREAM_TOKENS,
            prompt_kib: args.prompt_kib,
            callgrind_requests: if instructions.is_empty() {
                0
            } else {
                args.callgrind_requests
            },
        },
        targets: summaries,
        goals,
        notes: all_notes,
        rounds,
        tls: tls_results,
    };

    write_outputs(&results, &out, args.update_results.as_deref())
}

/// Writes `report.md`, `results.json` and `latency.svg` into `out` (and the report to
/// `update_results`), and prints the report.
fn write_outputs(
    results: &Results,
    out: &Path,
    update_results: Option<&Path>,
) -> anyhow::Result<()> {
    let series: Vec<plot::Series> = results
        .targets
        .iter()
        .map(|t| plot::Series {
            name: t.name.clone(),
            points: results
                .rounds
                .iter()
                .rev()
                .find(|r| r.target.name() == t.name)
                .map(|r| r.low_rate_curve.clone())
                .unwrap_or_default(),
        })
        .collect();
    let title = format!(
        "Latency by percentile at {} req/s (open loop)",
        report::num(results.settings.low_rate)
    );
    let markdown = report::render_markdown(results);
    std::fs::write(out.join("report.md"), &markdown)?;
    std::fs::write(
        out.join("results.json"),
        serde_json::to_string_pretty(results)?,
    )?;
    let svg = plot::latency_svg(&title, &series);
    std::fs::write(out.join("latency.svg"), &svg)?;
    if let Some(path) = update_results {
        // The committed report keeps its plot beside it (`RESULTS-latency.svg` next to
        // `RESULTS.md`) and links to it, so the repository shows both.
        let stem = path
            .file_stem()
            .map_or_else(|| "results".into(), |s| s.to_string_lossy());
        let svg_name = format!("{stem}-latency.svg");
        let svg_path = path.with_file_name(&svg_name);
        std::fs::write(&svg_path, &svg)
            .with_context(|| format!("writing {}", svg_path.display()))?;
        let linked = markdown.replace("`latency.svg`", &format!("[`{svg_name}`]({svg_name})"));
        // Only the generated report is replaced: sections added by hand stay.
        let old = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        std::fs::write(path, report::splice_report(&old, &linked))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    println!("{markdown}");
    eprintln!(
        "sluice-bench compare: wrote report.md, results.json and latency.svg to {}",
        out.display()
    );
    Ok(())
}
