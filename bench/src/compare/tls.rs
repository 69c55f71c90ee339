//! The TLS scenario (issue 11; `compare --tls`): Sluice's passthrough and nginx, each
//! listening for HTTPS only with the same certificate and key, measured over TLS.
//!
//! The certificates are generated once per run ([`crate::certs::write`]: a CA and an ECDSA
//! P-256 certificate for [`TLS_NAME`] and 127.0.0.1) into `--out/tls/`. Both proxies forward
//! to the same mock over plain HTTP ([`super::targets::sluice_tls_config`],
//! [`super::targets::nginx_tls_config`]). The load generator trusts the CA, sends
//! [`TLS_NAME`] as SNI, offers TLS 1.3 and 1.2 and ALPN `http/1.1`, and never resumes a
//! session. Rounds interleave the two targets as the plain rounds do; each round runs, per
//! target:
//!
//! 1. keep-alive peak: closed loop at `--connections` for `--duration`, requests per second;
//! 2. CPU per keep-alive request: the proxy's utime+stime over exactly `--cpu-requests`
//!    requests on open connections;
//! 3. new-handshake peak: closed loop at `--connections` for `--duration`, a new connection
//!    and a full handshake for every request: handshakes per second;
//! 4. CPU per handshake: the proxy's CPU over exactly `--tls-handshakes` such requests, the
//!    request on each connection (and its accept and close) included.
//!
//! The report gives the medians over rounds and the Sluice/nginx ratios (the issue sets no
//! numeric goal for TLS, so there is no verdict).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::procs::{self, CpuList};
use super::report::{median, num};
use super::targets::{client_path, Launch, Target, TargetKind, Upstreams, DEPLOYMENT};
use crate::certs::CertFiles;
use crate::load::{self, LoadConfig, LoadReport};

/// The name in the certificate, the URL and the SNI.
pub const TLS_NAME: &str = "localhost";

/// How the TLS scenario measures.
#[derive(Debug, Clone)]
pub struct TlsPlan {
    /// Rounds over both targets.
    pub rounds: usize,
    /// Length of each peak phase.
    pub duration: Duration,
    /// Warm-up before each peak phase (sent, not recorded).
    pub warmup: Duration,
    /// Connections, closed loop.
    pub connections: usize,
    /// Keep-alive requests over which CPU per request is read.
    pub cpu_requests: u64,
    /// Handshakes (a connection and a request each) over which CPU per handshake is read.
    pub handshakes: u64,
    /// CPUs the load runs on.
    pub load_cpus: CpuList,
}

/// One round of one TLS target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TlsRound {
    /// Round number (from 1).
    pub round: usize,
    /// `sluice-tls` or `nginx-tls`.
    pub target: String,
    /// Keep-alive peak, requests per second.
    pub keepalive_rps: f64,
    /// Proxy CPU µs per keep-alive request.
    pub cpu_us_per_req: Option<f64>,
    /// New-connection peak: handshakes (and requests) per second.
    pub handshakes_per_s: f64,
    /// Proxy CPU µs per new connection (handshake, request, close).
    pub cpu_us_per_handshake: Option<f64>,
    /// Failed requests over the round's phases.
    pub errors: u64,
}

/// One TLS target's medians over rounds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TlsSummary {
    /// `sluice-tls` or `nginx-tls`.
    pub name: String,
    /// Keep-alive peak (req/s).
    pub keepalive_rps: Option<f64>,
    /// Proxy CPU µs per keep-alive request.
    pub cpu_us_per_req: Option<f64>,
    /// New-connection peak (handshakes/s).
    pub handshakes_per_s: Option<f64>,
    /// Proxy CPU µs per handshake (request included).
    pub cpu_us_per_handshake: Option<f64>,
    /// Failed requests, all rounds.
    pub errors: u64,
}

/// What the TLS scenario measured (`results.json` → `tls`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TlsResults {
    /// Keep-alive requests counted for CPU per request.
    pub cpu_requests: u64,
    /// Handshakes counted for CPU per handshake.
    pub handshakes: u64,
    /// The certificate served, e.g. `ECDSA P-256, CN=localhost, signed by a test CA`.
    pub certificate: String,
    /// One summary per target, in run order.
    pub targets: Vec<TlsSummary>,
    /// Every round, in the order run.
    pub rounds: Vec<TlsRound>,
}

/// The report name of `kind`'s TLS form.
pub fn tls_name(kind: TargetKind) -> String {
    match kind {
        TargetKind::SluicePassthrough => "sluice-tls".to_owned(),
        other => format!("{}-tls", other.name()),
    }
}

/// The load of one phase against the TLS listener at `addr`.
fn load_config(
    addr: SocketAddr,
    ca: &Path,
    label: String,
    plan: &TlsPlan,
    fresh: bool,
    requests: Option<u64>,
) -> LoadConfig {
    LoadConfig {
        url: format!(
            "https://{TLS_NAME}:{}{}",
            addr.port(),
            client_path(DEPLOYMENT)
        ),
        connect_to: Some(addr),
        ca_file: Some(ca.to_path_buf()),
        tls_resumption: false,
        new_connection_per_request: fresh,
        method: Some("POST".to_owned()),
        body: crate::CHAT_REQUEST.to_vec(),
        headers: vec![
            ("content-type".to_owned(), "application/json".to_owned()),
            ("api-key".to_owned(), "sluice-demo-key".to_owned()),
        ],
        connections: plan.connections,
        threads: 1,
        duration: plan.duration,
        warmup: if requests.is_some() {
            Duration::ZERO
        } else {
            plan.warmup
        },
        rate: None,
        requests,
        stream: false,
        timeout: Duration::from_secs(10),
        label,
        progress: false,
        cpus: plan.load_cpus.cpus().to_vec(),
    }
}

struct Running {
    target: Target,
    name: String,
}

impl Running {
    fn load(
        &self,
        ca: &Path,
        plan: &TlsPlan,
        phase: &str,
        fresh: bool,
        requests: Option<u64>,
    ) -> anyhow::Result<LoadReport> {
        let label = format!("{} {phase}", self.name);
        let cfg = load_config(self.target.addr, ca, label, plan, fresh, requests);
        load::run(&cfg).with_context(|| format!("{} `{phase}`", self.name))
    }

    /// Proxy CPU µs per request over one load of exactly `requests`.
    fn cpu_per_request(
        &self,
        ca: &Path,
        plan: &TlsPlan,
        phase: &str,
        fresh: bool,
        requests: u64,
    ) -> anyhow::Result<(LoadReport, Option<f64>)> {
        let before = procs::cpu_time_us(&self.target.pids)?;
        let report = self.load(ca, plan, phase, fresh, Some(requests))?;
        let after = procs::cpu_time_us(&self.target.pids)?;
        let per = (report.requests > 0)
            .then(|| after.saturating_sub(before) as f64 / report.requests as f64);
        Ok((report, per))
    }

    fn round(&mut self, round: usize, ca: &Path, plan: &TlsPlan) -> anyhow::Result<TlsRound> {
        let failed = |r: &LoadReport| r.requests.saturating_sub(r.ok);
        let keepalive = self.load(ca, plan, "keep-alive peak", false, None)?;
        let (cpu_ka, cpu_us_per_req) =
            self.cpu_per_request(ca, plan, "keep-alive cpu", false, plan.cpu_requests)?;
        let handshakes = self.load(ca, plan, "handshake peak", true, None)?;
        let (cpu_hs, cpu_us_per_handshake) =
            self.cpu_per_request(ca, plan, "handshake cpu", true, plan.handshakes)?;
        if let Some(p) = self.target.proc.as_mut() {
            p.check_alive()?;
        }
        Ok(TlsRound {
            round,
            target: self.name.clone(),
            keepalive_rps: keepalive.rps,
            cpu_us_per_req,
            handshakes_per_s: handshakes.rps,
            cpu_us_per_handshake,
            errors: failed(&keepalive) + failed(&cpu_ka) + failed(&handshakes) + failed(&cpu_hs),
        })
    }
}

/// Generates the certificates into `out/tls/`, starts the TLS form of each of `kinds`
/// (Sluice's passthrough, nginx) in front of `up`, runs `plan.rounds` interleaved rounds and
/// stops them. Returns the rounds and the medians.
///
/// # Errors
/// Certificates that cannot be written, a proxy that does not start or dies, a load that
/// cannot run.
pub fn run(
    kinds: &[TargetKind],
    up: &Upstreams,
    launch: &Launch<'_>,
    plan: &TlsPlan,
) -> anyhow::Result<TlsResults> {
    let dir: PathBuf = launch.out.join("tls");
    let certs: CertFiles = crate::certs::write(&dir, TLS_NAME)?;
    let mut running = Vec::new();
    for &kind in kinds {
        let target = Target::start_tls(kind, up, launch, &certs)
            .with_context(|| format!("starting {}", tls_name(kind)))?;
        eprintln!(
            "sluice-bench compare: {} on {} (pids {:?})",
            tls_name(kind),
            target.addr,
            target.pids
        );
        running.push(Running {
            target,
            name: tls_name(kind),
        });
    }
    for r in &running {
        eprintln!("sluice-bench compare: warming up {}", r.name);
        let warm = TlsPlan {
            duration: plan.warmup,
            ..plan.clone()
        };
        r.load(&certs.ca, &warm, "warm-up", false, None)?;
        r.load(&certs.ca, &warm, "handshake warm-up", true, None)?;
    }
    let mut rounds = Vec::new();
    for round in 1..=plan.rounds {
        for r in &mut running {
            let result = r
                .round(round, &certs.ca, plan)
                .with_context(|| format!("TLS round {round}, {}", r.name))?;
            eprintln!(
                "sluice-bench compare: [TLS round {round}/{}] {}: keep-alive {:.0} req/s at {} µs/req, \
                 {:.0} handshakes/s at {} µs/handshake, errors {}",
                plan.rounds,
                r.name,
                result.keepalive_rps,
                result.cpu_us_per_req.map_or("-".to_owned(), num),
                result.handshakes_per_s,
                result.cpu_us_per_handshake.map_or("-".to_owned(), num),
                result.errors
            );
            rounds.push(result);
        }
    }
    let targets = running
        .iter()
        .map(|r| summarize(&r.name, &rounds))
        .collect();
    drop(running);
    Ok(TlsResults {
        cpu_requests: plan.cpu_requests,
        handshakes: plan.handshakes,
        certificate: format!(
            "ECDSA P-256 (SHA-256), CN={TLS_NAME}, subjectAltName {TLS_NAME} and 127.0.0.1, \
             signed by a test CA; the leaf alone is sent"
        ),
        targets,
        rounds,
    })
}

/// The medians of `name`'s rounds among `rounds`.
pub fn summarize(name: &str, rounds: &[TlsRound]) -> TlsSummary {
    let mine: Vec<&TlsRound> = rounds.iter().filter(|r| r.target == name).collect();
    let med = |f: fn(&TlsRound) -> Option<f64>| median(mine.iter().filter_map(|r| f(r)).collect());
    TlsSummary {
        name: name.to_owned(),
        keepalive_rps: med(|r| Some(r.keepalive_rps)),
        cpu_us_per_req: med(|r| r.cpu_us_per_req),
        handshakes_per_s: med(|r| Some(r.handshakes_per_s)),
        cpu_us_per_handshake: med(|r| r.cpu_us_per_handshake),
        errors: mine.iter().map(|r| r.errors).sum(),
    }
}

fn cell(v: Option<f64>) -> String {
    v.map_or("–".to_owned(), num)
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b.abs() > f64::EPSILON => format!("{:.2}×", a / b),
        _ => "–".to_owned(),
    }
}

/// Appends the TLS section of `report.md`: the medians, the Sluice/nginx ratios and the
/// rounds.
pub fn render(md: &mut String, r: &TlsResults) {
    let _ = writeln!(md, "## TLS (issue 11)\n");
    let _ = writeln!(
        md,
        "Sluice's passthrough and nginx listening for HTTPS only with the same certificate \
         ({}), the mock behind both over plain HTTP. The client offers TLS 1.3 and 1.2, ALPN \
         `http/1.1`, SNI `{TLS_NAME}`, and never resumes a session: every new connection is a \
         full handshake. CPU per keep-alive request over {} requests; CPU per handshake over \
         {} new connections, each carrying one request (its accept, request and close \
         included). Medians over rounds.\n",
        r.certificate, r.cpu_requests, r.handshakes
    );
    let _ = writeln!(
        md,
        "| target | keep-alive req/s | CPU µs/request | handshakes/s | CPU µs/handshake | errors |"
    );
    let _ = writeln!(md, "| --- | --- | --- | --- | --- | --- |");
    for t in &r.targets {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} |",
            t.name,
            cell(t.keepalive_rps),
            cell(t.cpu_us_per_req),
            cell(t.handshakes_per_s),
            cell(t.cpu_us_per_handshake),
            t.errors
        );
    }
    let sluice = r.targets.iter().find(|t| t.name == "sluice-tls");
    let nginx = r.targets.iter().find(|t| t.name == "nginx-tls");
    if let (Some(s), Some(n)) = (sluice, nginx) {
        let _ = writeln!(
            md,
            "| **sluice / nginx** | {} | {} | {} | {} | |",
            ratio(s.keepalive_rps, n.keepalive_rps),
            ratio(s.cpu_us_per_req, n.cpu_us_per_req),
            ratio(s.handshakes_per_s, n.handshakes_per_s),
            ratio(s.cpu_us_per_handshake, n.cpu_us_per_handshake),
        );
    }
    let _ = writeln!(md);
    let _ = writeln!(md, "| round | target | keep-alive req/s | CPU µs/request | handshakes/s | CPU µs/handshake | errors |");
    let _ = writeln!(md, "| --- | --- | --- | --- | --- | --- | --- |");
    for rr in &r.rounds {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} |",
            rr.round,
            rr.target,
            num(rr.keepalive_rps),
            cell(rr.cpu_us_per_req),
            num(rr.handshakes_per_s),
            cell(rr.cpu_us_per_handshake),
            rr.errors
        );
    }
    let _ = writeln!(md);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(n: usize, target: &str, ka: f64, cpu: f64, hs: f64, cpu_hs: f64) -> TlsRound {
        TlsRound {
            round: n,
            target: target.to_owned(),
            keepalive_rps: ka,
            cpu_us_per_req: Some(cpu),
            handshakes_per_s: hs,
            cpu_us_per_handshake: Some(cpu_hs),
            errors: 1,
        }
    }

    #[test]
    fn medians_and_ratios_render() {
        let rounds = vec![
            round(1, "sluice-tls", 30_000.0, 30.0, 2_000.0, 400.0),
            round(1, "nginx-tls", 40_000.0, 20.0, 2_500.0, 300.0),
            round(2, "sluice-tls", 32_000.0, 28.0, 2_200.0, 420.0),
            round(2, "nginx-tls", 38_000.0, 22.0, 2_400.0, 320.0),
            round(3, "sluice-tls", 31_000.0, 29.0, 2_100.0, 380.0),
            round(3, "nginx-tls", 39_000.0, 21.0, 2_600.0, 310.0),
        ];
        let s = summarize("sluice-tls", &rounds);
        assert_eq!(s.keepalive_rps, Some(31_000.0));
        assert_eq!(s.cpu_us_per_req, Some(29.0));
        assert_eq!(s.handshakes_per_s, Some(2_100.0));
        assert_eq!(s.cpu_us_per_handshake, Some(400.0));
        assert_eq!(s.errors, 3);
        let results = TlsResults {
            cpu_requests: 20_000,
            handshakes: 5_000,
            certificate: "test".to_owned(),
            targets: vec![s, summarize("nginx-tls", &rounds)],
            rounds,
        };
        let mut md = String::new();
        render(&mut md, &results);
        assert!(md.contains("## TLS (issue 11)"), "{md}");
        assert!(
            md.contains("| sluice-tls | 31000 | 29.0 | 2100 | 400 | 3 |"),
            "{md}"
        );
        assert!(
            md.contains("| nginx-tls | 39000 | 21.0 | 2500 | 310 | 3 |"),
            "{md}"
        );
        // 31000/39000, 29/21, 2100/2500, 400/310.
        assert!(
            md.contains("| **sluice / nginx** | 0.79× | 1.38× | 0.84× | 1.29× | |"),
            "{md}"
        );
        assert_eq!(md.matches("| 2 | nginx-tls |").count(), 1, "{md}");
        let back: TlsResults =
            serde_json::from_str(&serde_json::to_string(&results).unwrap()).unwrap();
        assert_eq!(back, results);
    }

    #[test]
    fn only_the_passthrough_and_nginx_have_tls_names() {
        assert_eq!(tls_name(TargetKind::SluicePassthrough), "sluice-tls");
        assert_eq!(tls_name(TargetKind::Nginx), "nginx-tls");
    }
}
