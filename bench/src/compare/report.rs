//! The report: round results folded into one summary per target (medians over rounds), the
//! issue's goals checked against them, and both rendered as `results.json` and `report.md`.
//! Everything here is a plain function of the measured figures.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::scenarios::{RoundResult, FRONTIER_ERROR_SHARE, FRONTIER_P99_US};
use super::targets::TargetKind;
use super::tls::{self, TlsResults};

/// Where and how the run was made.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Meta {
    /// UTC date and time the run started (`YYYY-MM-DD HH:MM UTC`).
    pub date: String,
    /// `/proc/cpuinfo` model name.
    pub cpu_model: String,
    /// CPUs this process may use.
    pub cores: usize,
    /// `/proc/sys/kernel/osrelease`.
    pub kernel: String,
    /// `git rev-parse --short HEAD`, when available.
    pub commit: Option<String>,
    /// The `sluice` binary measured.
    pub sluice: String,
    /// nginx's `-v` line, when it ran.
    pub nginx: Option<String>,
    /// CPU lists: proxy, load, mock.
    pub proxy_cpus: String,
    /// CPUs of the load generator.
    pub load_cpus: String,
    /// CPUs of the mock.
    pub mock_cpus: String,
}

/// The run's settings.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Settings {
    /// `--quick`.
    pub quick: bool,
    /// Rounds.
    pub rounds: usize,
    /// Phase length (s).
    pub duration_s: f64,
    /// Warm-up (s).
    pub warmup_s: f64,
    /// Connections for peak / CPU / frontier.
    pub connections: usize,
    /// Low fixed rate (req/s).
    pub low_rate: f64,
    /// Requests counted for CPU at peak.
    pub cpu_requests: u64,
    /// Requests counted for CPU at the low rate.
    pub low_requests: u64,
    /// Frontier probe length (s) and probes per search.
    pub probe_s: f64,
    /// Probes per frontier search.
    pub frontier_steps: usize,
    /// Concurrent streams.
    pub stream_connections: usize,
    /// Streaming mock pace (tokens/s) and tokens per answer.
    pub stream_tokens_per_second: f64,
    /// Tokens per streamed answer.
    pub stream_tokens: u32,
    /// KiB of prompt in the large body (0: none measured).
    #[serde(default)]
    pub prompt_kib: usize,
    /// Requests counted per body under callgrind (0: not measured).
    #[serde(default)]
    pub callgrind_requests: u64,
}

/// One target's figures: medians over rounds unless said otherwise. Latencies in µs,
/// memory in KiB. `added_*` are over the direct target's same figure.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TargetSummary {
    /// Target name.
    pub name: String,
    /// Whether a proxy process is measured.
    pub is_proxy: bool,
    /// io setup in use.
    pub driver: String,
    /// Policies switched on.
    pub policies: Vec<String>,
    /// Cores the proxy was pinned to.
    pub proxy_cores: usize,
    /// Closed-loop peak req/s.
    pub max_rps: Option<f64>,
    /// Peak req/s divided by the proxy's cores.
    pub max_rps_per_core: Option<f64>,
    /// c=1 p50.
    pub c1_p50_us: Option<f64>,
    /// c=1 p99.
    pub c1_p99_us: Option<f64>,
    /// c=1 p50 minus direct's.
    pub added_p50_us: Option<f64>,
    /// c=1 p99 minus direct's.
    pub added_p99_us: Option<f64>,
    /// p50 at the low rate.
    pub low_rate_p50_us: Option<f64>,
    /// p99 at the low rate.
    pub low_rate_p99_us: Option<f64>,
    /// Open-loop frontier (req/s), rounds without a passing rate counting as 0; `None`
    /// when no round had one.
    pub frontier_rps: Option<f64>,
    /// Proxy CPU µs per request at peak.
    pub cpu_us_per_req_max: Option<f64>,
    /// Of that, Sluice's audit threads (`sluice-audit-*`); `None` without them.
    #[serde(default)]
    pub audit_cpu_us_per_req_max: Option<f64>,
    /// The same with the large prompt's body.
    #[serde(default)]
    pub cpu_us_per_req_large: Option<f64>,
    /// Proxy CPU µs per request at the low rate.
    pub cpu_us_per_req_low: Option<f64>,
    /// User-space instructions per request under callgrind (one worker), the small body.
    #[serde(default)]
    pub instr_per_req: Option<f64>,
    /// The same with the large prompt's body.
    #[serde(default)]
    pub instr_per_req_large: Option<f64>,
    /// Streaming time to first token, p50.
    pub ttft_p50_us: Option<f64>,
    /// TTFT p50 minus direct's.
    pub added_ttft_us: Option<f64>,
    /// Gap between streamed events, p99.
    pub gap_p99_us: Option<f64>,
    /// Gap p99 minus direct's.
    pub added_gap_p99_us: Option<f64>,
    /// RSS idle after warm-up, before round 1.
    pub rss_idle_kb: Option<u64>,
    /// RSS a quarter into round 1's sustained phase.
    pub rss_load_early_kb: Option<u64>,
    /// RSS at the end of the last round's sustained phase.
    pub rss_load_late_kb: Option<u64>,
    /// RSS after the last round and an idle pause.
    pub rss_after_kb: Option<u64>,
    /// Peak RSS (VmHWM) at the end.
    pub rss_hwm_kb: Option<u64>,
    /// Syscalls per request.
    pub syscalls_per_req: Option<f64>,
    /// How syscalls were counted.
    pub syscalls_source: Option<String>,
    /// Failed requests over all rounds.
    pub errors: u64,
}

/// Whether a goal held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    /// It held.
    Met,
    /// It did not.
    Missed,
    /// The figures needed were not measured (say which in `measured`).
    NotMeasured,
}

impl Status {
    fn word(self) -> &'static str {
        match self {
            Status::Met => "met",
            Status::Missed => "**MISSED**",
            Status::NotMeasured => "not measured",
        }
    }
}

/// One goal of the issue, checked.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Goal {
    /// The goal as the issue states it.
    pub goal: String,
    /// The target it is checked on.
    pub target: String,
    /// The figures compared.
    pub measured: String,
    /// The verdict.
    pub status: Status,
}

/// Everything a run produced; `results.json` is this.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Results {
    /// Where and how.
    pub meta: Meta,
    /// Settings.
    pub settings: Settings,
    /// One summary per target, in run order.
    pub targets: Vec<TargetSummary>,
    /// The issue's goals.
    pub goals: Vec<Goal>,
    /// Caveats worth reading with the figures.
    pub notes: Vec<String>,
    /// Every round's raw results.
    pub rounds: Vec<RoundResult>,
    /// The TLS scenario (`--tls`), when it ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsResults>,
}

/// The median of `values` (`None` when empty).
pub fn median(mut values: Vec<f64>) -> Option<f64> {
    values.retain(|v| v.is_finite());
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    Some(if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    })
}

/// Folds one target's rounds (in order) into its summary; `direct` is the direct target's
/// summary, for the `added_*` figures.
pub fn summarize(
    kind: TargetKind,
    driver: &str,
    proxy_cores: usize,
    rounds: &[&RoundResult],
    direct: Option<&TargetSummary>,
) -> TargetSummary {
    let med = |f: &dyn Fn(&RoundResult) -> Option<f64>| {
        median(rounds.iter().filter_map(|r| f(r)).collect())
    };
    let max_rps = med(&|r| Some(r.max_rps));
    let c1_p50_us = med(&|r| Some(r.c1.p50 as f64));
    let c1_p99_us = med(&|r| Some(r.c1.p99 as f64));
    let ttft_p50_us = med(&|r| r.stream_ttft.as_ref().map(|p| p.p50 as f64));
    let gap_p99_us = med(&|r| r.stream_gap.as_ref().map(|p| p.p99 as f64));
    let minus = |a: Option<f64>, pick: fn(&TargetSummary) -> Option<f64>| Some(a? - pick(direct?)?);
    let first_rss = rounds.first().and_then(|r| r.rss.as_ref());
    let last_rss = rounds.last().and_then(|r| r.rss.as_ref());
    let last_syscalls = rounds.iter().rev().find_map(|r| r.syscalls.as_ref());
    TargetSummary {
        name: kind.name().to_owned(),
        is_proxy: kind.is_proxy(),
        driver: driver.to_owned(),
        policies: kind.policies(),
        proxy_cores,
        max_rps,
        max_rps_per_core: max_rps.map(|r| r / proxy_cores.max(1) as f64),
        c1_p50_us,
        c1_p99_us,
        added_p50_us: minus(c1_p50_us, |d| d.c1_p50_us),
        added_p99_us: minus(c1_p99_us, |d| d.c1_p99_us),
        low_rate_p50_us: med(&|r| Some(r.low_rate_latency.p50 as f64)),
        low_rate_p99_us: med(&|r| Some(r.low_rate_latency.p99 as f64)),
        frontier_rps: if rounds.iter().any(|r| r.frontier.rate.is_some()) {
            med(&|r| Some(r.frontier.rate.unwrap_or(0.0)))
        } else {
            None
        },
        cpu_us_per_req_max: med(&|r| r.cpu_us_per_req_max),
        audit_cpu_us_per_req_max: med(&|r| r.audit_cpu_us_per_req_max),
        cpu_us_per_req_large: med(&|r| r.cpu_us_per_req_large),
        instr_per_req: None,
        instr_per_req_large: None,
        cpu_us_per_req_low: med(&|r| r.cpu_us_per_req_low),
        ttft_p50_us,
        added_ttft_us: minus(ttft_p50_us, |d| d.ttft_p50_us),
        gap_p99_us,
        added_gap_p99_us: minus(gap_p99_us, |d| d.gap_p99_us),
        rss_idle_kb: first_rss.map(|r| r.idle_kb),
        rss_load_early_kb: first_rss.map(|r| r.load_early_kb),
        rss_load_late_kb: last_rss.map(|r| r.load_late_kb),
        rss_after_kb: last_rss.map(|r| r.after_kb),
        rss_hwm_kb: rounds
            .iter()
            .filter_map(|r| r.rss.as_ref().map(|m| m.hwm_kb))
            .max(),
        syscalls_per_req: last_syscalls.map(|s| s.per_request),
        syscalls_source: last_syscalls.map(|s| s.source.clone()),
        errors: rounds.iter().map(|r| r.errors).sum(),
    }
}

fn find(targets: &[TargetSummary], kind: TargetKind) -> Option<&TargetSummary> {
    targets.iter().find(|t| t.name == kind.name())
}

/// A goal of the form `sluice ≤ factor × nginx` (or `≥` when `at_least`).
fn versus_nginx(
    goal: &str,
    sluice: Option<&TargetSummary>,
    nginx: Option<&TargetSummary>,
    pick: fn(&TargetSummary) -> Option<f64>,
    factor: f64,
    at_least: bool,
    unit: &str,
) -> Goal {
    let target = sluice.map_or("sluice", |s| s.name.as_str()).to_owned();
    let (Some(s), Some(n)) = (sluice, nginx) else {
        return Goal {
            goal: goal.to_owned(),
            target,
            measured: "nginx not run".to_owned(),
            status: Status::NotMeasured,
        };
    };
    let (Some(sv), Some(nv)) = (pick(s), pick(n)) else {
        return Goal {
            goal: goal.to_owned(),
            target,
            measured: "figure missing".to_owned(),
            status: Status::NotMeasured,
        };
    };
    let bound = factor * nv;
    let met = if at_least { sv >= bound } else { sv <= bound };
    let ratio = if nv.abs() > f64::EPSILON {
        format!(" ({:.2}× nginx)", sv / nv)
    } else {
        String::new()
    };
    Goal {
        goal: goal.to_owned(),
        target,
        measured: format!(
            "{} {unit} vs nginx {} {unit}{ratio}; bound {}",
            num(sv),
            num(nv),
            num(bound)
        ),
        status: if met { Status::Met } else { Status::Missed },
    }
}

/// A goal on one target's own figures: `check(summary)` gives the text and verdict.
fn own(
    goal: &str,
    summary: Option<&TargetSummary>,
    check: impl Fn(&TargetSummary) -> Option<(String, bool)>,
) -> Goal {
    let target = summary.map_or("sluice", |s| s.name.as_str()).to_owned();
    match summary.and_then(&check) {
        Some((measured, met)) => Goal {
            goal: goal.to_owned(),
            target,
            measured,
            status: if met { Status::Met } else { Status::Missed },
        },
        None => Goal {
            goal: goal.to_owned(),
            target,
            measured: "figure missing".to_owned(),
            status: Status::NotMeasured,
        },
    }
}

/// Issue 12's budget for the audit log and the metrics together on the request path: CPU
/// µs per request at peak on the worker threads ("records batched, no per-request syscall
/// on the worker").
pub const OBSERVABILITY_BUDGET_US: f64 = 1.5;

/// Issue 12's goal: the audit log and the metrics add ≤ [`OBSERVABILITY_BUDGET_US`] of CPU
/// per request at peak to the request path, read as (`full` − its audit threads) − `bare`
/// (the same peak-phase figures the other CPU goals use, both measured in the same
/// interleaved rounds; the audit threads — writer and sinks — read apart from `/proc`).
/// The measured text also gives what the audit threads take off the request path, the
/// whole process's difference and, when callgrind ran, the difference in instructions per
/// request. `None` (the goal skipped, not failed) when the bare target did not run
/// (`--observability-cost` not given).
fn observability_cost(full: Option<&TargetSummary>, bare: Option<&TargetSummary>) -> Option<Goal> {
    let bare = bare?;
    let goal = format!(
        "Audit + metrics CPU µs/request at peak on the request path (full chain − its audit threads − bare) ≤ {} µs",
        num(OBSERVABILITY_BUDGET_US)
    );
    let figures = full.and_then(|f| {
        Some((
            f,
            f.cpu_us_per_req_max?,
            f.audit_cpu_us_per_req_max?,
            bare.cpu_us_per_req_max?,
        ))
    });
    let Some((full, fv, audit, bv)) = figures else {
        return Some(Goal {
            goal,
            target: TargetKind::SluiceFullChain.name().to_owned(),
            measured: "figure missing".to_owned(),
            status: Status::NotMeasured,
        });
    };
    let cost = fv - audit - bv;
    let mut measured = format!(
        "request path: ({} − {}) − {} = {} µs (target ≤ {} µs); off it, the audit threads: \
         {} µs/request; whole process: {} − {} = {} µs",
        num(fv),
        num(audit),
        num(bv),
        signed(cost),
        num(OBSERVABILITY_BUDGET_US),
        num(audit),
        num(fv),
        num(bv),
        signed(fv - bv),
    );
    if let (Some(fi), Some(bi)) = (full.instr_per_req, bare.instr_per_req) {
        let _ = write!(
            measured,
            "; instructions/request (every thread) {} − {} = {}",
            num(fi),
            num(bi),
            signed(fi - bi)
        );
    }
    Some(Goal {
        goal,
        target: full.name.clone(),
        measured,
        status: if cost <= OBSERVABILITY_BUDGET_US {
            Status::Met
        } else {
            Status::Missed
        },
    })
}

/// Checks the issue's goals against the summaries.
pub fn evaluate_goals(targets: &[TargetSummary]) -> Vec<Goal> {
    let pass = find(targets, TargetKind::SluicePassthrough);
    let full = find(targets, TargetKind::SluiceFullChain);
    let bare = find(targets, TargetKind::SluiceFullChainBare);
    let nginx = find(targets, TargetKind::Nginx);
    let mut goals = vec![
        versus_nginx(
            "Passthrough CPU µs/request ≤ 0.85× nginx",
            pass,
            nginx,
            |t| t.cpu_us_per_req_max,
            0.85,
            false,
            "µs/req",
        ),
        versus_nginx(
            "Passthrough max req/s per core ≥ 1.1× nginx",
            pass,
            nginx,
            |t| t.max_rps_per_core,
            1.1,
            true,
            "req/s/core",
        ),
        versus_nginx(
            "Passthrough added p50 at c=1 ≤ nginx's",
            pass,
            nginx,
            |t| t.added_p50_us,
            1.0,
            false,
            "µs",
        ),
        versus_nginx(
            "Passthrough added p99 at c=1 ≤ nginx's",
            pass,
            nginx,
            |t| t.added_p99_us,
            1.0,
            false,
            "µs",
        ),
        versus_nginx(
            "Full chain CPU µs/request ≤ 0.95× nginx",
            full,
            nginx,
            |t| t.cpu_us_per_req_max,
            0.95,
            false,
            "µs/req",
        ),
        own(
            "Full chain ≤ +5 µs p50 over its own passthrough (c=1)",
            full,
            |f| {
                let fv = f.c1_p50_us?;
                let pv = pass?.c1_p50_us?;
                Some((
                    format!(
                        "{} µs vs passthrough {} µs ({} µs)",
                        num(fv),
                        num(pv),
                        signed(fv - pv)
                    ),
                    fv <= pv + 5.0,
                ))
            },
        ),
    ];
    // Issue 10's goals for the full chain.
    goals.push(versus_nginx(
        "Full chain peak req/s per core ≥ 1.0× nginx",
        full,
        nginx,
        |t| t.max_rps_per_core,
        1.0,
        true,
        "req/s/core",
    ));
    goals.push(own(
        "Full chain RSS ≤ 16 MiB with one worker",
        full,
        |f| {
            let hwm = f.rss_hwm_kb?;
            (f.proxy_cores == 1).then(|| {
                (
                    format!("peak VmHWM {} KiB (bound 16384 KiB)", num(hwm as f64)),
                    hwm <= 16 * 1024,
                )
            })
        },
    ));
    // Issue 12: what the audit log and the metrics cost (only with `--observability-cost`).
    goals.extend(observability_cost(full, bare));
    if full.is_some_and(|f| f.instr_per_req.is_some()) {
        goals.push(versus_nginx(
            "Full chain user-space instructions/request (callgrind) ≤ 1.0× nginx",
            full,
            nginx,
            |t| t.instr_per_req,
            1.0,
            false,
            "instr/req",
        ));
    }
    for sluice in [pass, full] {
        goals.push(versus_nginx(
            "CPU per request at the low fixed rate ≤ nginx's",
            sluice,
            nginx,
            |t| t.cpu_us_per_req_low,
            1.0,
            false,
            "µs/req",
        ));
    }
    goals.push(own(
        "The report names the io_uring setup in use and the syscalls per request",
        pass,
        |p| {
            let per = p.syscalls_per_req?;
            Some((
                format!(
                    "driver={}, {} syscalls/req ({})",
                    p.driver,
                    num(per),
                    p.syscalls_source.as_deref().unwrap_or("?")
                ),
                p.driver != "unknown",
            ))
        },
    ));
    for sluice in [pass, full] {
        goals.push(versus_nginx(
            "Streaming: added TTFT ≤ 2× nginx's",
            sluice,
            nginx,
            |t| t.added_ttft_us,
            2.0,
            false,
            "µs",
        ));
    }
    for sluice in [pass, full] {
        goals.push(own(
            "Streaming: added gap between events p99 ≤ 10 µs",
            sluice,
            |s| {
                let added = s.added_gap_p99_us?;
                Some((
                    format!(
                        "{} µs added (gap p99 {} µs)",
                        num(added),
                        num(s.gap_p99_us.unwrap_or(0.0))
                    ),
                    added <= 10.0,
                ))
            },
        ));
    }
    for sluice in [pass, full] {
        goals.push(own(
            "RSS flat under sustained load (≤ +10 %)",
            sluice,
            |s| {
                let early = s.rss_load_early_kb? as f64;
                let late = s.rss_load_late_kb? as f64;
                Some((
                    format!(
                        "{} KiB early in round 1 → {} KiB at the end of the last round's peak",
                        num(early),
                        num(late)
                    ),
                    late <= early * 1.1,
                ))
            },
        ));
        goals.push(own("RSS back within 10 % after the load", sluice, |s| {
            let idle = s.rss_idle_kb? as f64;
            let after = s.rss_after_kb? as f64;
            Some((
                format!(
                    "{} KiB idle before → {} KiB after (peak VmHWM {} KiB)",
                    num(idle),
                    num(after),
                    s.rss_hwm_kb.unwrap_or(0)
                ),
                after <= idle * 1.1,
            ))
        }));
    }
    goals
}

/// Caveats that follow from the figures themselves (added to the run's notes).
pub fn measured_notes(targets: &[TargetSummary]) -> Vec<String> {
    let mut notes = Vec::new();
    let Some(direct) = find(targets, TargetKind::Direct) else {
        return notes;
    };
    if let (Some(low), Some(c1)) = (direct.low_rate_p50_us, direct.c1_p50_us) {
        if low > 3.0 * c1 + 100.0 {
            notes.push(format!(
                "Open loop at the low rate, even the direct target has p50 {} µs against {} µs \
                 at c=1: with the load idle between sends, every request also waits on timer \
                 and wake-up latency on this machine, which all targets pay alike. This weighs \
                 on the frontier's p99 ≤ 1 ms bound for every target.",
                num(low),
                num(c1)
            ));
        }
    }
    let added: Vec<f64> = targets
        .iter()
        .filter(|t| t.is_proxy)
        .filter_map(|t| t.added_p50_us)
        .collect();
    if let (Some(least), Some(c1)) = (added.iter().copied().reduce(f64::min), direct.c1_p50_us) {
        if least > 50.0 && least > 2.0 * c1 {
            notes.push(format!(
                "Every proxy adds at least {} µs p50 at c=1 where the direct round trip takes {} \
                 µs: through a proxy a request crosses cores (and wakes an idle one) four \
                 times, which dominates here. Compare the proxies with each other.",
                num(least),
                num(c1)
            ));
        }
    }
    notes
}

/// A figure with sensible precision: integers from 100 up, one decimal below, two below 1.
pub fn num(v: f64) -> String {
    if !v.is_finite() {
        return "–".to_owned();
    }
    let a = v.abs();
    if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// [`num`] with a sign.
pub fn signed(v: f64) -> String {
    if v > 0.0 {
        format!("+{}", num(v))
    } else {
        num(v)
    }
}

fn opt(v: Option<f64>) -> String {
    v.map_or("–".to_owned(), num)
}

fn opt_kb(v: Option<u64>) -> String {
    v.map_or("–".to_owned(), |kb| {
        format!("{:.1} MiB", kb as f64 / 1024.0)
    })
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b.abs() > f64::EPSILON => format!("{:.2}×", a / b),
        _ => "–".to_owned(),
    }
}

/// Renders `report.md` (also what `--update-results` writes).
pub fn render_markdown(r: &Results) -> String {
    let mut md = String::new();
    let m = &r.meta;
    let s = &r.settings;
    let _ = writeln!(md, "# sluice-bench compare\n");
    let _ = writeln!(
        md,
        "Generated by `sluice-bench compare{}` on {}.\n",
        if s.quick { " --quick" } else { "" },
        m.date
    );
    let _ = writeln!(md, "| | |\n| --- | --- |");
    let _ = writeln!(md, "| CPU | {} ({} cores usable) |", m.cpu_model, m.cores);
    let _ = writeln!(md, "| kernel | {} |", m.kernel);
    let _ = writeln!(
        md,
        "| commit | {} |",
        m.commit.as_deref().unwrap_or("unknown")
    );
    let _ = writeln!(md, "| sluice | `{}` |", m.sluice);
    let _ = writeln!(
        md,
        "| nginx | {} |",
        m.nginx.as_deref().unwrap_or("not run")
    );
    let _ = writeln!(
        md,
        "| pinning | proxy CPUs {}, load CPUs {}, mock CPUs {} |",
        m.proxy_cpus, m.load_cpus, m.mock_cpus
    );
    let _ = writeln!(
        md,
        "| settings | {} round(s), {:.1} s phases ({:.1} s warm-up), {} connections, low rate {} req/s, CPU over {} requests at peak and {} at the low rate, frontier {} probes of {:.1} s, {} streams of {} tokens at {} tokens/s |",
        s.rounds, s.duration_s, s.warmup_s, s.connections, num(s.low_rate), s.cpu_requests,
        s.low_requests, s.frontier_steps, s.probe_s, s.stream_connections, s.stream_tokens,
        num(s.stream_tokens_per_second)
    );
    let _ = writeln!(md);
    if !r.notes.is_empty() {
        let _ = writeln!(md, "**Read with care:**\n");
        for note in &r.notes {
            let _ = writeln!(md, "- {note}");
        }
        let _ = writeln!(md);
    }

    let _ = writeln!(md, "## Goals (issue 3)\n");
    let met = r.goals.iter().filter(|g| g.status == Status::Met).count();
    let missed = r
        .goals
        .iter()
        .filter(|g| g.status == Status::Missed)
        .count();
    let _ = writeln!(
        md,
        "{met} met, {missed} missed, {} not measured.\n",
        r.goals.len() - met - missed
    );
    let _ = writeln!(
        md,
        "| goal | target | measured | verdict |\n| --- | --- | --- | --- |"
    );
    for g in &r.goals {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} |",
            g.goal,
            g.target,
            g.measured,
            g.status.word()
        );
    }
    let _ = writeln!(md);

    let _ = writeln!(md, "## Figures (median over rounds)\n");
    let _ = write!(md, "| |");
    for t in &r.targets {
        let _ = write!(md, " {} |", t.name);
    }
    let _ = writeln!(md);
    let _ = writeln!(md, "|{}", " --- |".repeat(r.targets.len() + 1));
    let row = |md: &mut String, label: &str, f: &dyn Fn(&TargetSummary) -> String| {
        let _ = write!(md, "| {label} |");
        for t in &r.targets {
            let _ = write!(md, " {} |", f(t));
        }
        let _ = writeln!(md);
    };
    row(&mut md, "io setup", &|t| t.driver.clone());
    row(&mut md, "peak req/s (closed loop)", &|t| opt(t.max_rps));
    row(&mut md, "peak req/s per proxy core", &|t| {
        if t.is_proxy {
            opt(t.max_rps_per_core)
        } else {
            "–".into()
        }
    });
    row(&mut md, "c=1 p50 / p99 (µs)", &|t| {
        format!("{} / {}", opt(t.c1_p50_us), opt(t.c1_p99_us))
    });
    row(&mut md, "added at c=1 p50 / p99 (µs)", &|t| {
        if t.is_proxy {
            format!("{} / {}", opt(t.added_p50_us), opt(t.added_p99_us))
        } else {
            "–".into()
        }
    });
    row(
        &mut md,
        &format!("p50 / p99 at {} req/s (µs)", num(s.low_rate)),
        &|t| format!("{} / {}", opt(t.low_rate_p50_us), opt(t.low_rate_p99_us)),
    );
    row(
        &mut md,
        &format!(
            "open-loop frontier (req/s, p99 ≤ {} µs, errors < {} %)",
            FRONTIER_P99_US,
            FRONTIER_ERROR_SHARE * 100.0
        ),
        &|t| t.frontier_rps.map_or("none passed".to_owned(), num),
    );
    row(&mut md, "proxy CPU µs/request at peak", &|t| {
        opt(t.cpu_us_per_req_max)
    });
    if r.targets
        .iter()
        .any(|t| t.audit_cpu_us_per_req_max.is_some())
    {
        row(
            &mut md,
            "of which the audit threads (`sluice-audit-*`)",
            &|t| opt(t.audit_cpu_us_per_req_max),
        );
    }
    if s.prompt_kib > 0 {
        row(
            &mut md,
            &format!("proxy CPU µs/request at peak, {} KiB prompt", s.prompt_kib),
            &|t| opt(t.cpu_us_per_req_large),
        );
    }
    if s.callgrind_requests > 0 {
        row(
            &mut md,
            "user-space instructions/request (callgrind, 1 worker)",
            &|t| opt(t.instr_per_req),
        );
        if s.prompt_kib > 0 {
            row(
                &mut md,
                &format!(
                    "user-space instructions/request (callgrind), {} KiB prompt",
                    s.prompt_kib
                ),
                &|t| opt(t.instr_per_req_large),
            );
        }
    }
    row(
        &mut md,
        &format!("proxy CPU µs/request at {} req/s", num(s.low_rate)),
        &|t| opt(t.cpu_us_per_req_low),
    );
    row(&mut md, "syscalls/request", &|t| opt(t.syscalls_per_req));
    row(&mut md, "stream TTFT p50 / added (µs)", &|t| {
        format!(
            "{} / {}",
            opt(t.ttft_p50_us),
            if t.is_proxy {
                opt(t.added_ttft_us)
            } else {
                "–".into()
            }
        )
    });
    row(&mut md, "stream event gap p99 / added (µs)", &|t| {
        format!(
            "{} / {}",
            opt(t.gap_p99_us),
            if t.is_proxy {
                opt(t.added_gap_p99_us)
            } else {
                "–".into()
            }
        )
    });
    row(&mut md, "RSS idle → load → after", &|t| {
        if t.is_proxy {
            format!(
                "{} → {} → {}",
                opt_kb(t.rss_idle_kb),
                opt_kb(t.rss_load_late_kb),
                opt_kb(t.rss_after_kb)
            )
        } else {
            "–".into()
        }
    });
    row(&mut md, "peak RSS (VmHWM)", &|t| opt_kb(t.rss_hwm_kb));
    row(&mut md, "failed requests (all rounds)", &|t| {
        t.errors.to_string()
    });
    let _ = writeln!(md);

    let direct = find(&r.targets, TargetKind::Direct);
    let nginx = find(&r.targets, TargetKind::Nginx);
    let _ = writeln!(md, "## Ratios\n");
    let _ = writeln!(md, "| target | CPU/req at peak × nginx | CPU/req at low rate × nginx | req/s per core × nginx | added p50 × nginx | added p99 × nginx | added TTFT × nginx | peak req/s × direct | c=1 p50 × direct | instructions/req × nginx |");
    let _ = writeln!(
        md,
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    );
    for t in r.targets.iter().filter(|t| t.is_proxy) {
        let n = |f: fn(&TargetSummary) -> Option<f64>| ratio(f(t), nginx.and_then(f));
        let d = |f: fn(&TargetSummary) -> Option<f64>| ratio(f(t), direct.and_then(f));
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            t.name,
            n(|x| x.cpu_us_per_req_max),
            n(|x| x.cpu_us_per_req_low),
            n(|x| x.max_rps_per_core),
            n(|x| x.added_p50_us),
            n(|x| x.added_p99_us),
            n(|x| x.added_ttft_us),
            d(|x| x.max_rps),
            d(|x| x.c1_p50_us),
            n(|x| x.instr_per_req),
        );
    }
    let _ = writeln!(md);

    if let Some(t) = &r.tls {
        tls::render(&mut md, t);
    }

    let _ = writeln!(md, "## Policies per target\n");
    for t in &r.targets {
        let list = if t.policies.is_empty() {
            "none (the mock itself)".to_owned()
        } else {
            t.policies.join("; ")
        };
        let _ = writeln!(md, "- **{}**: {list}", t.name);
    }
    let _ = writeln!(md);

    let _ = writeln!(md, "## Rounds\n");
    let _ = writeln!(
        md,
        "Each round runs every target in turn; the spread shows the noise.\n"
    );
    let _ = writeln!(md, "| round | target | peak req/s | c=1 p50 / p99 (µs) | CPU µs/req peak / low | frontier (req/s) | TTFT p50 (µs) | gap p99 (µs) | errors |");
    let _ = writeln!(
        md,
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    );
    for rr in &r.rounds {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} / {} | {} / {} | {} | {} | {} | {} |",
            rr.round,
            rr.target.name(),
            num(rr.max_rps),
            rr.c1.p50,
            rr.c1.p99,
            opt(rr.cpu_us_per_req_max),
            opt(rr.cpu_us_per_req_low),
            opt(rr.frontier.rate),
            rr.stream_ttft
                .as_ref()
                .map_or("–".into(), |p| p.p50.to_string()),
            rr.stream_gap
                .as_ref()
                .map_or("–".into(), |p| p.p99.to_string()),
            rr.errors,
        );
    }
    let _ = writeln!(md);
    let _ = writeln!(
        md,
        "Frontier probes (offered req/s → p99 µs; ✓ when p99 ≤ {FRONTIER_P99_US} µs and errors < {} %):\n",
        FRONTIER_ERROR_SHARE * 100.0
    );
    let _ = writeln!(md, "| round | target | probes |\n| --- | --- | --- |");
    for rr in &r.rounds {
        let probes: Vec<String> = rr
            .frontier
            .probes
            .iter()
            .map(|p| {
                format!(
                    "{} → {}{}",
                    num(p.rate),
                    p.p99_us,
                    if p.pass { " ✓" } else { "" }
                )
            })
            .collect();
        let _ = writeln!(
            md,
            "| {} | {} | {} |",
            rr.round,
            rr.target.name(),
            probes.join(", ")
        );
    }
    let _ = writeln!(md);
    let _ = writeln!(
        md,
        "The latency curve at {} req/s is in `latency.svg` (last round, percentile on a log scale); every figure is in `results.json`.",
        num(s.low_rate)
    );
    md
}

/// `YYYY-MM-DD HH:MM UTC` for a Unix time in seconds (civil-from-days, proleptic Gregorian).
pub fn utc_date(unix_secs: u64) -> String {
    let days = (unix_secs / 86_400) as i64;
    let secs = unix_secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02} UTC",
        secs / 3600,
        secs % 3600 / 60
    )
}

/// The line before the generated report in a results file (`--update-results`), which may
/// also hold sections written by hand.
pub const REPORT_BEGIN: &str =
    "<!-- sluice-bench compare: generated report, rewritten by --update-results up to its end marker -->";
/// The line after it.
pub const REPORT_END: &str = "<!-- sluice-bench compare: end of the generated report -->";

/// The results file `old` with its generated report replaced by `report`: what lies between
/// [`REPORT_BEGIN`] and [`REPORT_END`] when it has both (in that order), else `report` first
/// and all of `old` after it. Nothing outside the markers is ever dropped.
pub fn splice_report(old: &str, report: &str) -> String {
    let wrapped = format!("{REPORT_BEGIN}\n{}\n{REPORT_END}\n", report.trim_end());
    let begin = old.find(REPORT_BEGIN);
    let end = begin.and_then(|b| old[b..].find(REPORT_END).map(|e| b + e));
    match (begin, end) {
        (Some(begin), Some(end)) => {
            let after = &old[end + REPORT_END.len()..];
            let after = after.strip_prefix('\n').unwrap_or(after);
            format!("{}{wrapped}{after}", &old[..begin])
        }
        _ if old.trim().is_empty() => wrapped,
        _ => format!("{wrapped}\n{old}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compare::scenarios::{Frontier, RssRound, Syscalls};

    #[test]
    fn update_results_replaces_only_the_generated_report() {
        let report = "# sluice-bench compare\n\nnew figures\n";
        let first = splice_report("", report);
        assert_eq!(
            first,
            format!("{REPORT_BEGIN}\n# sluice-bench compare\n\nnew figures\n{REPORT_END}\n")
        );
        // Hand-written sections before and after the report survive a rewrite.
        let file = format!("intro\n{first}\n## 2026-12-02, by hand\n\nkept\n");
        let again = splice_report(&file, "# sluice-bench compare\n\nnewer\n");
        assert!(again.starts_with("intro\n"));
        assert!(again.contains("newer") && !again.contains("new figures"));
        assert!(again.ends_with("\n## 2026-12-02, by hand\n\nkept\n"));
        assert_eq!(
            splice_report(&again, "# sluice-bench compare\n\nnewer\n"),
            again
        );
        // A file without the markers is kept whole, after the report.
        let unmarked = "# sluice-bench compare\n\nold\n\n## by hand\n";
        let spliced = splice_report(unmarked, report);
        assert!(spliced.ends_with(unmarked));
        assert!(spliced.starts_with(REPORT_BEGIN));
    }
    use crate::load::Percentiles;

    fn pct(p50: u64, p99: u64) -> Percentiles {
        Percentiles {
            count: 100,
            p50,
            p99,
            ..Percentiles::default()
        }
    }

    fn round(target: TargetKind, rps: f64, p50: u64, cpu: Option<f64>) -> RoundResult {
        RoundResult {
            round: 1,
            target,
            max_rps: rps,
            errors: 0,
            c1: pct(p50, p50 * 2),
            cpu_us_per_req_max: cpu,
            audit_cpu_us_per_req_max: None,
            cpu_us_per_req_large: cpu.map(|c| c * 1.5),
            cpu_us_per_req_low: cpu.map(|c| c * 2.0),
            low_rate_latency: pct(p50, p50 * 3),
            low_rate_curve: Vec::new(),
            frontier: Frontier {
                rate: Some(rps * 0.8),
                probes: Vec::new(),
            },
            stream_ttft: Some(pct(1000 + p50, 2000)),
            stream_gap: Some(pct(1000, 1000 + p50 / 10)),
            rss: target.is_proxy().then_some(RssRound {
                idle_kb: 10_000,
                load_early_kb: 12_000,
                load_late_kb: 12_100,
                load_max_kb: 12_200,
                after_kb: 12_000,
                hwm_kb: 12_500,
            }),
            syscalls: target.is_proxy().then_some(Syscalls {
                per_request: 3.5,
                source: "perf".into(),
            }),
        }
    }

    fn summaries(with_nginx: bool) -> Vec<TargetSummary> {
        let direct_r = round(TargetKind::Direct, 30_000.0, 40, None);
        let direct = summarize(TargetKind::Direct, "mock", 1, &[&direct_r], None);
        let mut out = vec![direct.clone()];
        let pass = round(TargetKind::SluicePassthrough, 20_000.0, 60, Some(20.0));
        out.push(summarize(
            TargetKind::SluicePassthrough,
            "io_uring",
            1,
            &[&pass],
            Some(&direct),
        ));
        let full = round(TargetKind::SluiceFullChain, 19_000.0, 70, Some(22.0));
        out.push(summarize(
            TargetKind::SluiceFullChain,
            "io_uring",
            1,
            &[&full],
            Some(&direct),
        ));
        if with_nginx {
            let nginx = round(TargetKind::Nginx, 15_000.0, 65, Some(30.0));
            out.push(summarize(
                TargetKind::Nginx,
                "epoll",
                1,
                &[&nginx],
                Some(&direct),
            ));
        }
        out
    }

    #[test]
    fn medians() {
        assert_eq!(median(vec![]), None);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(vec![f64::NAN, 1.0]), Some(1.0));
    }

    #[test]
    fn summaries_take_medians_and_subtract_direct() {
        let direct_rs = [
            round(TargetKind::Direct, 30_000.0, 40, None),
            round(TargetKind::Direct, 10_000.0, 50, None),
            round(TargetKind::Direct, 20_000.0, 30, None),
        ];
        let refs: Vec<&RoundResult> = direct_rs.iter().collect();
        let direct = summarize(TargetKind::Direct, "mock", 1, &refs, None);
        assert_eq!(direct.max_rps, Some(20_000.0));
        assert_eq!(direct.c1_p50_us, Some(40.0));
        assert_eq!(direct.added_p50_us, None);
        assert_eq!(direct.cpu_us_per_req_max, None);
        let p = round(TargetKind::SluicePassthrough, 8_000.0, 55, Some(20.0));
        let pass = summarize(
            TargetKind::SluicePassthrough,
            "io_uring",
            2,
            &[&p],
            Some(&direct),
        );
        assert_eq!(pass.max_rps_per_core, Some(4_000.0));
        assert_eq!(pass.added_p50_us, Some(15.0));
        assert_eq!(pass.added_ttft_us, Some(15.0));
        assert_eq!(pass.rss_hwm_kb, Some(12_500));
        assert_eq!(pass.syscalls_per_req, Some(3.5));
    }

    #[test]
    fn goals_say_met_and_missed_plainly() {
        let goals = evaluate_goals(&summaries(true));
        let status = |name: &str, target: &str| {
            goals
                .iter()
                .find(|g| g.goal.starts_with(name) && g.target == target)
                .map(|g| g.status)
        };
        // 20 µs vs nginx 30: 0.67× ≤ 0.85×.
        assert_eq!(
            status("Passthrough CPU", "sluice-passthrough"),
            Some(Status::Met)
        );
        // 20k vs 15k req/s per core: 1.33× ≥ 1.1×.
        assert_eq!(
            status("Passthrough max req/s", "sluice-passthrough"),
            Some(Status::Met)
        );
        // Added p50 20 µs vs nginx 25 µs: met. Full chain +10 µs over passthrough: missed.
        assert_eq!(
            status("Passthrough added p50", "sluice-passthrough"),
            Some(Status::Met)
        );
        assert_eq!(
            status("Full chain ≤ +5", "sluice-full-chain"),
            Some(Status::Missed)
        );
        assert_eq!(status("RSS flat", "sluice-passthrough"), Some(Status::Met));
        // After 12 000 KiB vs idle 10 000: +20 %.
        assert_eq!(
            status("RSS back", "sluice-passthrough"),
            Some(Status::Missed)
        );
        let md = render_markdown(&Results {
            targets: summaries(true),
            goals,
            ..Results::default()
        });
        assert!(md.contains("**MISSED**"));
        assert!(md.contains("| sluice-passthrough | 0.67× |"));
    }

    #[test]
    fn issue_10_goals_and_the_callgrind_and_large_prompt_rows() {
        let mut targets = summaries(true);
        // Without callgrind figures there is no instructions goal and no such row.
        let goals = evaluate_goals(&targets);
        assert!(!goals.iter().any(|g| g.goal.contains("instructions")));
        for (t, instr) in targets
            .iter_mut()
            .skip(1)
            .zip([900_000.0, 1_100_000.0, 1_000_000.0])
        {
            t.instr_per_req = Some(instr);
            t.instr_per_req_large = Some(instr * 3.0);
        }
        let goals = evaluate_goals(&targets);
        let find = |name: &str| goals.iter().find(|g| g.goal.starts_with(name)).unwrap();
        // 1.1M vs nginx 1.0M: 1.10× > 1.0×.
        let instr = find("Full chain user-space instructions");
        assert_eq!(instr.status, Status::Missed);
        assert!(
            instr.measured.contains("(1.10× nginx)"),
            "{}",
            instr.measured
        );
        // 19k vs 15k req/s per core.
        assert_eq!(find("Full chain peak req/s per core").status, Status::Met);
        // The fixture's VmHWM is 12 500 KiB, one core.
        assert_eq!(find("Full chain RSS ≤ 16 MiB").status, Status::Met);
        let md = render_markdown(&Results {
            settings: Settings {
                prompt_kib: 4,
                callgrind_requests: 2000,
                ..Settings::default()
            },
            targets,
            goals,
            ..Results::default()
        });
        assert!(
            md.contains("| proxy CPU µs/request at peak, 4 KiB prompt | – | 30.0 | 33.0 | 45.0 |"),
            "{md}"
        );
        assert!(md.contains("| user-space instructions/request (callgrind, 1 worker) | – | 900000 | 1100000 | 1000000 |"), "{md}");
        assert!(
            md.contains("instructions/request (callgrind), 4 KiB prompt | – | 2700000 |"),
            "{md}"
        );
        assert!(md.contains("| 1.10× |\n"), "{md}");
    }

    /// The fixture's targets plus `sluice-full-chain-bare` at `bare_cpu` µs/request at
    /// peak (the full chain is at 22.0, 0.4 of it in its audit threads).
    fn with_bare(bare_cpu: Option<f64>) -> Vec<TargetSummary> {
        let mut targets = summaries(true);
        let direct = targets[0].clone();
        let mut bare = round(TargetKind::SluiceFullChainBare, 19_500.0, 68, Some(21.0));
        bare.cpu_us_per_req_max = bare_cpu;
        let mut full = round(TargetKind::SluiceFullChain, 19_000.0, 70, Some(22.0));
        full.audit_cpu_us_per_req_max = Some(0.4);
        targets[2] = summarize(
            TargetKind::SluiceFullChain,
            "io_uring",
            1,
            &[&full],
            Some(&direct),
        );
        targets.push(summarize(
            TargetKind::SluiceFullChainBare,
            "io_uring",
            1,
            &[&bare],
            Some(&direct),
        ));
        targets
    }

    fn observability_goal(goals: &[Goal]) -> Option<&Goal> {
        goals.iter().find(|g| g.goal.starts_with("Audit + metrics"))
    }

    #[test]
    fn the_observability_cost_goal_is_skipped_without_the_bare_target() {
        let goals = evaluate_goals(&summaries(true));
        assert!(observability_goal(&goals).is_none());
        let md = render_markdown(&Results {
            targets: summaries(true),
            goals,
            ..Results::default()
        });
        assert!(!md.contains("Audit + metrics") && !md.contains("audit threads"));
    }

    #[test]
    fn the_observability_cost_is_full_chain_minus_bare() {
        // (22.0 − 0.4) − 21.0 = 0.6 µs: met.
        let targets = with_bare(Some(21.0));
        let goals = evaluate_goals(&targets);
        let goal = observability_goal(&goals).unwrap();
        assert_eq!(goal.status, Status::Met);
        assert_eq!(goal.target, "sluice-full-chain");
        assert_eq!(
            goal.measured,
            "request path: (22.0 − 0.40) − 21.0 = +0.60 µs (target ≤ 1.5 µs); off it, the \
             audit threads: 0.40 µs/request; whole process: 22.0 − 21.0 = +1.0 µs"
        );
        // Under the budget is met; above it missed; a negative difference (noise) met.
        for (bare, status) in [
            (20.2, Status::Met),
            (20.0, Status::Missed),
            (23.0, Status::Met),
        ] {
            let goals = evaluate_goals(&with_bare(Some(bare)));
            assert_eq!(observability_goal(&goals).unwrap().status, status, "{bare}");
        }
        // The bare target ran but its figure is missing: not measured, not failed.
        let goals = evaluate_goals(&with_bare(None));
        let goal = observability_goal(&goals).unwrap();
        assert_eq!(goal.status, Status::NotMeasured);
        assert_eq!(goal.measured, "figure missing");
        // In the report (text and JSON), with its own row for the audit threads.
        let r = Results {
            targets: targets.clone(),
            goals: evaluate_goals(&targets),
            ..Results::default()
        };
        let md = render_markdown(&r);
        assert!(
            md.contains("| Audit + metrics CPU µs/request at peak on the request path (full chain − its audit threads − bare) ≤ 1.5 µs | sluice-full-chain | request path: (22.0 − 0.40) − 21.0 = +0.60 µs (target ≤ 1.5 µs)"),
            "{md}"
        );
        assert!(
            md.contains("| of which the audit threads (`sluice-audit-*`) | – | – | 0.40 | – | – |"),
            "{md}"
        );
        assert!(md.contains("| sluice-full-chain-bare | 0.70× |"), "{md}");
        let json = serde_json::to_string(&r).unwrap();
        assert!(json.contains("whole process: 22.0 − 21.0 = +1.0 µs"));
        assert!(json.contains("\"audit_cpu_us_per_req_max\":0.4"));
    }

    #[test]
    fn the_observability_cost_shows_the_instruction_difference_under_callgrind() {
        let mut targets = with_bare(Some(20.0));
        for t in &mut targets {
            t.instr_per_req = match t.name.as_str() {
                "sluice-full-chain" => Some(61_000.0),
                "sluice-full-chain-bare" => Some(59_500.0),
                _ => None,
            };
        }
        let goals = evaluate_goals(&targets);
        let goal = observability_goal(&goals).unwrap();
        // (22.0 − 0.4) − 20.0 = 1.6 µs > 1.5: missed.
        assert_eq!(goal.status, Status::Missed);
        assert!(
            goal.measured
                .ends_with("; instructions/request (every thread) 61000 − 59500 = +1500"),
            "{}",
            goal.measured
        );
    }

    #[test]
    fn without_nginx_ratio_goals_are_not_measured() {
        let goals = evaluate_goals(&summaries(false));
        let cpu = goals
            .iter()
            .find(|g| g.goal.starts_with("Passthrough CPU"))
            .unwrap();
        assert_eq!(cpu.status, Status::NotMeasured);
        assert_eq!(cpu.measured, "nginx not run");
        let full = goals
            .iter()
            .find(|g| g.goal.starts_with("Full chain ≤"))
            .unwrap();
        assert_eq!(full.status, Status::Missed);
    }

    #[test]
    fn results_round_trip_through_json() {
        let r = Results {
            targets: summaries(true),
            goals: evaluate_goals(&summaries(true)),
            ..Results::default()
        };
        let text = serde_json::to_string(&r).unwrap();
        let back: Results = serde_json::from_str(&text).unwrap();
        assert_eq!(back.targets.len(), 4);
        assert_eq!(back.goals.len(), r.goals.len());
        // Without the TLS scenario: no `tls` key, no TLS section.
        assert!(!text.contains("\"tls\""));
        assert_eq!(back.tls, None);
        assert!(!render_markdown(&back).contains("## TLS"));
    }

    #[test]
    fn the_tls_scenario_is_in_the_json_and_the_report() {
        let r = Results {
            targets: summaries(true),
            tls: Some(TlsResults {
                cpu_requests: 100,
                handshakes: 50,
                certificate: "ECDSA P-256".to_owned(),
                targets: vec![tls::summarize("sluice-tls", &[])],
                rounds: Vec::new(),
            }),
            ..Results::default()
        };
        let text = serde_json::to_string(&r).unwrap();
        let back: Results = serde_json::from_str(&text).unwrap();
        assert_eq!(back.tls, r.tls);
        let md = render_markdown(&back);
        let tls_at = md.find("## TLS (issue 11)").unwrap();
        assert!(tls_at < md.find("## Policies per target").unwrap(), "{md}");
        assert!(md.contains("| sluice-tls | – | – | – | – | 0 |"), "{md}");
    }

    #[test]
    fn notes_from_figures() {
        let mut targets = summaries(true);
        assert!(measured_notes(&targets).is_empty());
        targets[0].low_rate_p50_us = Some(500.0);
        for t in targets.iter_mut().skip(1) {
            t.added_p50_us = Some(230.0);
        }
        let notes = measured_notes(&targets);
        assert_eq!(notes.len(), 2);
        assert!(notes[0].contains("p50 500 µs"));
        assert!(notes[1].contains("at least 230 µs"));
    }

    #[test]
    fn figures_and_dates() {
        assert_eq!(num(12345.6), "12346");
        assert_eq!(num(12.34), "12.3");
        assert_eq!(num(0.123), "0.12");
        assert_eq!(utc_date(0), "1970-01-01 00:00 UTC");
        assert_eq!(utc_date(951_825_600), "2000-02-29 12:00 UTC");
        assert_eq!(utc_date(1_798_761_599), "2026-12-31 23:59 UTC");
    }
}
