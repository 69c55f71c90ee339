//! User-space instructions per request under callgrind: a figure that, unlike CPU time,
//! does not move with the machine's load (the same binary, config and requests execute the
//! same instructions, give or take timer wake-ups).
//!
//! Each proxy (Sluice passthrough, Sluice full chain, nginx with `master_process off`, so one
//! process does all the work) is started once more, one worker, under `valgrind
//! --tool=callgrind`; after a warm-up (connections open, upstream pool filled, tables built)
//! its counters are zeroed (`callgrind_control -z PID`), a fixed number of requests is sent
//! over a few keep-alive connections, and the counters are dumped (`callgrind_control -d
//! PID`); the dump's `totals:` line (every thread's instructions since the zero: `Ir`, the
//! only event collected) divided by the requests is the figure. With a second body (the
//! large prompt), counters are zeroed again and a second dump read the same way.
//!
//! Optional: skipped, with a note, when `valgrind` or `callgrind_control` is not on `$PATH`.
//! Bounded: every wait has a deadline, and each process is stopped by its PID when done.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

use super::procs::CpuList;
use super::targets::{Launch, Target, TargetKind, Upstreams, DEPLOYMENT};
use crate::load::{self, LoadConfig};

/// Connections the measured requests are spread over (keep-alive).
const CONNECTIONS: usize = 4;
/// How long one `callgrind_control` command may take.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one request may take under valgrind (tens of times slower than native).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The tools, when installed.
#[derive(Debug, Clone)]
pub struct Tools {
    /// `valgrind`.
    pub valgrind: PathBuf,
    /// `callgrind_control`.
    pub control: PathBuf,
}

impl Tools {
    /// Both tools from `$PATH`, or `None` when either is missing.
    pub fn find() -> Option<Tools> {
        Some(Tools {
            valgrind: super::scenarios::find_on_path("valgrind")?,
            control: super::scenarios::find_on_path("callgrind_control")?,
        })
    }
}

/// One target's instructions per request.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Instructions {
    /// Which target.
    pub target: String,
    /// Requests counted per body.
    pub requests: u64,
    /// User-space instructions per request, the small body.
    pub per_request: Option<f64>,
    /// The same with the large prompt's body (when one was measured).
    pub per_request_large: Option<f64>,
}

/// What to measure with.
pub struct CallgrindPlan<'a> {
    /// The tools.
    pub tools: &'a Tools,
    /// Requests before the counters are zeroed.
    pub warmup_requests: u64,
    /// Requests counted (per body).
    pub requests: u64,
    /// The small body and, when measured, the large one.
    pub bodies: (&'a [u8], Option<&'a [u8]>),
    /// CPUs the load runs on.
    pub load_cpus: &'a CpuList,
}

/// The first number of the `totals:` (else `summary:`) line of a callgrind output file.
pub fn parse_totals(text: &str) -> Option<u64> {
    let find = |key: &str| {
        text.lines().find_map(|l| {
            l.strip_prefix(key)?
                .split_whitespace()
                .next()?
                .parse::<u64>()
                .ok()
        })
    };
    find("totals:").or_else(|| find("summary:"))
}

/// Measures `kind` (a proxy) under callgrind; `launch` says where its files go.
pub fn measure(
    kind: TargetKind,
    up: &Upstreams,
    launch: &Launch<'_>,
    plan: &CallgrindPlan<'_>,
) -> anyhow::Result<Instructions> {
    let out_file = launch.out.join(format!("callgrind-{}.out", kind.name()));
    // Dumps from an earlier run in the same directory would be read as this one's.
    for n in 1..=2 {
        let _ = std::fs::remove_file(dump_path(&out_file, n));
    }
    let wrapped = Launch {
        callgrind: Some((&plan.tools.valgrind, &out_file)),
        ..*launch
    };
    let target = Target::start(kind, up, &wrapped)
        .with_context(|| format!("starting {} under callgrind", kind.name()))?;
    let pid = target.pids.first().copied().context("no pid")?;
    let send = |body: &[u8], requests: u64, phase: &str| -> anyhow::Result<()> {
        let cfg = LoadConfig {
            url: target.url(up, DEPLOYMENT),
            method: Some("POST".to_owned()),
            body: body.to_vec(),
            headers: vec![
                ("content-type".to_owned(), "application/json".to_owned()),
                ("api-key".to_owned(), "sluice-demo-key".to_owned()),
            ],
            connections: CONNECTIONS,
            threads: 1,
            duration: Duration::from_secs(600),
            warmup: Duration::ZERO,
            rate: None,
            requests: Some(requests),
            stream: false,
            timeout: REQUEST_TIMEOUT,
            label: format!("{} callgrind {phase}", kind.name()),
            progress: false,
            cpus: plan.load_cpus.cpus().to_vec(),
            ..LoadConfig::default()
        };
        let report = load::run(&cfg).with_context(|| format!("callgrind {phase}"))?;
        if report.ok < report.requests || report.requests < requests {
            bail!(
                "{} callgrind {phase}: {} of {} requests answered 2xx",
                kind.name(),
                report.ok,
                requests
            );
        }
        Ok(())
    };
    let count = |body: &[u8], dump: usize, phase: &str| -> anyhow::Result<f64> {
        control(&plan.tools.control, pid, "-z")?;
        send(body, plan.requests, phase)?;
        control(&plan.tools.control, pid, "-d")?;
        let path = dump_path(&out_file, dump);
        let text = wait_for_file(&path, CONTROL_TIMEOUT)
            .with_context(|| format!("no callgrind dump at {}", path.display()))?;
        let total = parse_totals(&text)
            .with_context(|| format!("no totals: line in {}", path.display()))?;
        Ok(total as f64 / plan.requests.max(1) as f64)
    };
    send(plan.bodies.0, plan.warmup_requests, "warm-up")?;
    if let Some(large) = plan.bodies.1 {
        send(
            large,
            plan.warmup_requests.div_ceil(4),
            "warm-up, large body",
        )?;
    }
    let per_request = count(plan.bodies.0, 1, "small body")?;
    let per_request_large = match plan.bodies.1 {
        Some(large) => Some(count(large, 2, "large body")?),
        None => None,
    };
    // Dropping the target stops it by its PID.
    drop(target);
    Ok(Instructions {
        target: kind.name().to_owned(),
        requests: plan.requests,
        per_request: Some(per_request),
        per_request_large,
    })
}

/// The file of the `n`th dump of a run writing to `out_file` (callgrind appends `.n`).
fn dump_path(out_file: &Path, n: usize) -> PathBuf {
    let mut name = out_file.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

/// Runs `callgrind_control FLAG PID`, within [`CONTROL_TIMEOUT`].
fn control(tool: &Path, pid: u32, flag: &str) -> anyhow::Result<()> {
    let mut child = Command::new(tool)
        .arg(flag)
        .arg(pid.to_string())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .with_context(|| format!("running {}", tool.display()))?;
    let deadline = Instant::now() + CONTROL_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait()? {
            if !status.success() {
                bail!("callgrind_control {flag} {pid}: {status}");
            }
            return Ok(());
        }
        if Instant::now() >= deadline {
            // Our own child, by its handle.
            let _ = child.kill();
            let _ = child.wait();
            bail!("callgrind_control {flag} {pid}: no answer in {CONTROL_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The file's text once it holds a `totals:` line (callgrind writes it last), or `None`
/// after `within`.
fn wait_for_file(path: &Path, within: Duration) -> Option<String> {
    let deadline = Instant::now() + within;
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            if parse_totals(&text).is_some() {
                return Some(text);
            }
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_from_a_dump() {
        let dump = "version: 1\ncreator: callgrind-3.19.0\npid: 20435\ncmd:  sluice\n\
                    part: 1\n\npositions: line\nevents: Ir\nsummary: 882857\n\n\
                    fn=(1) main\n0 12\n\ntotals: 882904\n";
        assert_eq!(parse_totals(dump), Some(882_904));
        assert_eq!(parse_totals("events: Ir\nsummary: 17\n"), Some(17));
        assert_eq!(parse_totals("events: Ir\n"), None);
        assert_eq!(parse_totals("totals: many\n"), None);
    }

    #[test]
    fn dumps_are_numbered_after_the_out_file() {
        assert_eq!(
            dump_path(Path::new("/o/callgrind-nginx.out"), 2),
            PathBuf::from("/o/callgrind-nginx.out.2")
        );
    }
}
