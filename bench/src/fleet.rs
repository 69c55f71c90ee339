//! `sluice-bench fleet`: many simulated node agents on loopback against one `sluice-control`
//! pinned to one core — how long a config push takes to reach every node (until each has
//! answered ACK or NACK, and the NACKs show in `NodeService.List`), whether usage reported
//! at 1 Hz by every node is stored exactly (nothing lost, nothing twice), and what the control
//! plane spends doing it (CPU per second of wall time, resident memory).
//!
//! Each simulated agent is what a real node's agent does on the wire, with no gateway behind
//! it: one HTTP/2 connection; `Register`; a `Watch` stream, answering each snapshot with an
//! `Ack` (a set share of the nodes NACK every version after the first, with a located error);
//! a `Report` stream sending one batch a second (one usage record: 1 request, 10 + 5
//! tokens), counting the answers.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context};
use clap::Args;
use sluice_proto::control::v1::config_service_client::ConfigServiceClient;
use sluice_proto::control::v1::node_service_client::NodeServiceClient;
use sluice_proto::control::v1::usage_service_client::UsageServiceClient;
use sluice_proto::control::v1::{
    AckRequest, ApplyRequest, ConfigError, ListNodesRequest, NodeState, QueryUsageRequest,
    RegisterNodeRequest, UsageBatch, UsageRecord, WatchRequest,
};
use tokio::sync::mpsc;
use tonic::transport::{Channel, Endpoint};

/// `fleet` options.
#[derive(Args, Debug, Clone)]
pub struct FleetArgs {
    /// Simulated node agents.
    #[arg(long, default_value_t = 1000)]
    pub nodes: usize,
    /// Config versions pushed after the first, one at a time.
    #[arg(long, default_value_t = 5)]
    pub pushes: usize,
    /// Percent of the nodes that NACK every version after the first.
    #[arg(long, default_value_t = 5)]
    pub nack_percent: usize,
    /// How long every node reports usage (once a second).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub telemetry: Duration,
    /// The `sluice-control` binary (default: beside this one).
    #[arg(long)]
    pub control: Option<PathBuf>,
    /// The core the control plane is pinned to; the agents run on the others.
    #[arg(long, default_value_t = 0)]
    pub cpu: usize,
    /// Also write the figures as JSON here.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// What one run measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FleetReport {
    /// Agents.
    pub nodes: usize,
    /// Seconds until every agent had registered, watched and ACKed the first version.
    pub connect_s: f64,
    /// Per pushed version: p50, p99 and max seconds from `Apply` to each node's answer.
    pub pushes: Vec<PushFigures>,
    /// Usage batches the agents sent, and answered as stored.
    pub batches_sent: u64,
    /// Batches answered.
    pub batches_answered: u64,
    /// Requests the agents reported.
    pub requests_sent: u64,
    /// Requests `Query` sums (all nodes, all time).
    pub requests_stored: u64,
    /// Tokens reported, and stored.
    pub tokens_sent: u64,
    /// Tokens `Query` sums.
    pub tokens_stored: u64,
    /// The control plane's CPU time per second of wall time while the agents reported (1.0 =
    /// one core busy).
    pub control_cpu: f64,
    /// Its resident memory at the end, and at most, in MiB.
    pub control_rss_mib: f64,
    /// Its peak resident memory, MiB.
    pub control_peak_rss_mib: f64,
}

/// One push's figures.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PushFigures {
    /// The version.
    pub version: u64,
    /// Median seconds from `Apply` to a node's answer.
    pub p50_s: f64,
    /// 99th percentile.
    pub p99_s: f64,
    /// The slowest node.
    pub max_s: f64,
    /// Nodes that NACKed.
    pub nacks: usize,
    /// Seconds from `Apply` until `NodeService.List` showed every NACK.
    pub nacks_visible_s: f64,
}

/// Runs the bench and prints its report.
pub fn run(args: FleetArgs) -> anyhow::Result<()> {
    let report = measure(&args)?;
    print_report(&report);
    if let Some(out) = &args.out {
        std::fs::write(out, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("{}", out.display()))?;
    }
    if report.requests_stored != report.requests_sent || report.tokens_stored != report.tokens_sent
    {
        bail!(
            "usage not exact: {} requests sent, {} stored",
            report.requests_sent,
            report.requests_stored
        );
    }
    Ok(())
}

/// The control plane process, killed when dropped.
struct ControlProcess {
    child: Child,
    dir: PathBuf,
}

impl Drop for ControlProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn control_binary(args: &FleetArgs) -> anyhow::Result<PathBuf> {
    if let Some(path) = &args.control {
        return Ok(path.clone());
    }
    let here = std::env::current_exe()?;
    let beside = here
        .parent()
        .map(|d| d.join("sluice-control"))
        .context("no folder for sluice-control")?;
    if !beside.exists() {
        bail!(
            "{} not found: build it (`cargo build --release -p sluice-control`) or pass --control",
            beside.display()
        );
    }
    Ok(beside)
}

fn document(version: usize) -> String {
    let mut text = String::from(
        "[[backend]]\nname = \"mock\"\nkind = \"mock\"\n\n[[deployment]]\nname = \"alpha\"\nbackends = [{ backend = \"mock\" }]\n",
    );
    for v in 2..=version {
        text.push_str(&format!(
            "\n[[deployment]]\nname = \"round-{v}\"\nbackends = [{{ backend = \"mock\" }}]\n"
        ));
    }
    text
}

fn start_control(args: &FleetArgs) -> anyhow::Result<(ControlProcess, String)> {
    let dir = std::env::temp_dir().join(format!("sluice-fleet-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let config = dir.join("fleet.toml");
    std::fs::write(&config, document(1))?;
    let ready = dir.join("ready");
    let log = std::fs::File::create(dir.join("control.log"))?;
    let child = Command::new(control_binary(args)?)
        .arg("--config")
        .arg(&config)
        .arg("--state")
        .arg(dir.join("state"))
        .args(["--listen", "127.0.0.1:0", "--admin", ""])
        .arg("--ready-file")
        .arg(&ready)
        .env_remove("SLUICE_OPERATOR_TOKEN")
        .env_remove("SLUICE_NODE_TOKEN")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .context("starting sluice-control")?;
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
    let process = ControlProcess { child, dir };
    pin(pid, |cpu| cpu == args.cpu)?;
    // This process (the agents) runs on the other cores, when there are any.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cores > 1 {
        pin(nix::unistd::Pid::from_raw(0), |cpu| {
            cpu != args.cpu && cpu < cores
        })?;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(text) = std::fs::read_to_string(&ready) {
            if let Some(addr) = text.lines().next().filter(|l| !l.is_empty()) {
                return Ok((process, format!("http://{addr}")));
            }
        }
        if Instant::now() > deadline {
            bail!(
                "sluice-control did not start (see {})",
                process.dir.display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Pins process `pid` (0: this one) to the cores `keep` selects.
fn pin(pid: nix::unistd::Pid, keep: impl Fn(usize) -> bool) -> anyhow::Result<()> {
    let mut set = nix::sched::CpuSet::new();
    for cpu in (0..nix::sched::CpuSet::count()).filter(|&c| keep(c)) {
        set.set(cpu)?;
    }
    nix::sched::sched_setaffinity(pid, &set).context("sched_setaffinity")?;
    Ok(())
}

/// CPU seconds (user + system) process `pid` has used.
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the parenthesized command name; utime and stime are the 14th and 15th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // CLK_TCK is 100 on Linux.
    (ticks(11) + ticks(12)) / 100.0
}

/// `VmRSS` and `VmHWM` of process `pid`, in MiB.
fn memory_mib(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|kb| kb.parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// What every agent shares with the driver.
struct Fleet {
    /// Per agent: the latest version it answered, and when (since `epoch`).
    answered: Vec<Mutex<(u64, Duration)>>,
    epoch: Instant,
    batches_sent: AtomicU64,
    batches_answered: AtomicU64,
    /// Set when the agents should stop reporting.
    stop_reporting: tokio::sync::watch::Sender<bool>,
}

fn measure(args: &FleetArgs) -> anyhow::Result<FleetReport> {
    let (control, url) = start_control(args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(drive(args, &control, &url))
}

async fn drive(
    args: &FleetArgs,
    control: &ControlProcess,
    url: &str,
) -> anyhow::Result<FleetReport> {
    let pid = control.child.id();
    let fleet = Arc::new(Fleet {
        answered: (0..args.nodes)
            .map(|_| Mutex::new((0, Duration::ZERO)))
            .collect(),
        epoch: Instant::now(),
        batches_sent: AtomicU64::new(0),
        batches_answered: AtomicU64::new(0),
        stop_reporting: tokio::sync::watch::channel(false).0,
    });
    let started = Instant::now();
    let mut agents = Vec::with_capacity(args.nodes);
    for i in 0..args.nodes {
        let endpoint =
            Endpoint::from_shared(url.to_string())?.connect_timeout(Duration::from_secs(10));
        let fleet = Arc::clone(&fleet);
        let nack = i * 100 < args.nodes * args.nack_percent;
        agents.push(tokio::spawn(agent(i, endpoint, fleet, nack)));
    }
    wait_answered(&fleet, 1, Duration::from_secs(120)).await?;
    let connect_s = started.elapsed().as_secs_f64();

    let operator = Endpoint::from_shared(url.to_string())?.connect().await?;
    let cpu_before = cpu_seconds(pid);
    let wall = Instant::now();
    let mut pushes = Vec::new();
    for round in 2..=args.pushes + 1 {
        let applied_at = fleet.epoch.elapsed();
        ConfigServiceClient::new(operator.clone())
            .apply(ApplyRequest {
                toml: document(round),
                source: "fleet.toml".into(),
                git_commit: String::new(),
            })
            .await?;
        let version = round as u64;
        wait_answered(&fleet, version, Duration::from_secs(60)).await?;
        let mut took: Vec<f64> = fleet
            .answered
            .iter()
            .map(|a| {
                let (_, at) = *a.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                at.saturating_sub(applied_at).as_secs_f64()
            })
            .collect();
        took.sort_by(f64::total_cmp);
        let expected_nacks = (0..args.nodes)
            .filter(|i| i * 100 < args.nodes * args.nack_percent)
            .count();
        let nacks_visible_s =
            nacks_visible(&operator, version, expected_nacks, &fleet, applied_at).await?;
        pushes.push(PushFigures {
            version,
            p50_s: quantile(&took, 0.5),
            p99_s: quantile(&took, 0.99),
            max_s: took.last().copied().unwrap_or(0.0),
            nacks: expected_nacks,
            nacks_visible_s,
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let elapsed = wall.elapsed();
    if elapsed < args.telemetry {
        tokio::time::sleep(args.telemetry - elapsed).await;
    }
    let control_cpu = (cpu_seconds(pid) - cpu_before) / wall.elapsed().as_secs_f64();
    let (control_rss_mib, control_peak_rss_mib) = memory_mib(pid);
    fleet.stop_reporting.send_replace(true);
    // Every batch answered (each agent stops sending, then waits for its answers).
    let deadline = Instant::now() + Duration::from_secs(30);
    while fleet.batches_answered.load(Ordering::Acquire)
        < fleet.batches_sent.load(Ordering::Acquire)
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let batches_sent = fleet.batches_sent.load(Ordering::Acquire);
    let rows = UsageServiceClient::new(operator.clone())
        .query(QueryUsageRequest {
            from: Some(SystemTime::UNIX_EPOCH.into()),
            ..QueryUsageRequest::default()
        })
        .await?
        .into_inner()
        .rows;
    let requests_stored = rows.iter().map(|r| r.requests).sum();
    let tokens_stored = rows.iter().map(|r| r.total_tokens).sum();
    for agent in agents {
        agent.abort();
    }
    Ok(FleetReport {
        nodes: args.nodes,
        connect_s,
        pushes,
        batches_sent,
        batches_answered: fleet.batches_answered.load(Ordering::Acquire),
        requests_sent: batches_sent,
        requests_stored,
        tokens_sent: batches_sent * 15,
        tokens_stored,
        control_cpu,
        control_rss_mib,
        control_peak_rss_mib,
    })
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

/// Waits until every agent has answered `version` (or a later one).
async fn wait_answered(fleet: &Fleet, version: u64, within: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    loop {
        let behind = fleet
            .answered
            .iter()
            .filter(|a| a.lock().map_or(true, |a| a.0 < version))
            .count();
        if behind == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{behind} nodes did not answer version {version} within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Seconds from `applied_at` until `NodeService.List` shows `expected` NACKs of `version`.
async fn nacks_visible(
    channel: &Channel,
    version: u64,
    expected: usize,
    fleet: &Fleet,
    applied_at: Duration,
) -> anyhow::Result<f64> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let nodes = NodeServiceClient::new(channel.clone())
            .list(ListNodesRequest {})
            .await?
            .into_inner()
            .nodes;
        let nacks = nodes
            .iter()
            .filter(|n| n.state() == NodeState::Nack && n.rejected_version == version)
            .count();
        if nacks == expected {
            return Ok(fleet
                .epoch
                .elapsed()
                .saturating_sub(applied_at)
                .as_secs_f64());
        }
        if Instant::now() > deadline {
            bail!("{nacks} of {expected} NACKs of version {version} visible after 30 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One simulated node agent: register, watch and answer; report usage once a second.
async fn agent(i: usize, endpoint: Endpoint, fleet: Arc<Fleet>, nack: bool) -> anyhow::Result<()> {
    let node_id = format!("sim-{i:05}");
    // Connections open at a bounded pace: a thousand at once overflow the listen backlog.
    tokio::time::sleep(Duration::from_micros(500 * i as u64)).await;
    let channel = endpoint.connect().await?;
    let mut nodes = NodeServiceClient::new(channel.clone());
    nodes
        .register(RegisterNodeRequest {
            node_id: node_id.clone(),
            hostname: "bench".into(),
            build_version: "fleet".into(),
            running_version: 0,
        })
        .await?;
    tokio::spawn(report(node_id.clone(), channel.clone(), Arc::clone(&fleet)));
    let mut config = ConfigServiceClient::new(channel);
    let mut stream = config
        .watch(WatchRequest {
            node_id: node_id.clone(),
            running_version: 0,
            rejected_version: 0,
        })
        .await?
        .into_inner();
    while let Some(snapshot) = stream.message().await? {
        let version = snapshot.version;
        let refuse = nack && version > 1;
        let errors = if refuse {
            vec![ConfigError {
                file: "fleet.toml".into(),
                line: 1,
                column: 1,
                field: "backend[0].api_key_env".into(),
                message: "environment variable `BENCH_KEY` is not set on this node".into(),
            }]
        } else {
            Vec::new()
        };
        config
            .ack(AckRequest {
                node_id: node_id.clone(),
                version,
                accepted: !refuse,
                errors,
            })
            .await?;
        if let Ok(mut answered) = fleet.answered[i].lock() {
            *answered = (version, fleet.epoch.elapsed());
        }
    }
    Ok(())
}

/// Reports one batch a second (1 request, 10 + 5 tokens) until told to stop, then waits
/// for the answers.
async fn report(node_id: String, channel: Channel, fleet: Arc<Fleet>) -> anyhow::Result<()> {
    let (batches, outgoing) = mpsc::channel::<UsageBatch>(64);
    let mut answers = UsageServiceClient::new(channel)
        .report(tokio_stream::wrappers::ReceiverStream::new(outgoing))
        .await?
        .into_inner();
    let answered = Arc::clone(&fleet);
    tokio::spawn(async move {
        let mut last = 0;
        while let Ok(Some(answer)) = answers.message().await {
            let n = answer.stored_through.saturating_sub(last);
            last = answer.stored_through;
            answered.batches_answered.fetch_add(n, Ordering::AcqRel);
        }
    });
    let incarnation = 1 + (std::process::id() as u64) * 100_000 + node_id.len() as u64;
    let mut stop = fleet.stop_reporting.subscribe();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut sequence = 0;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return Ok(()),
        }
        if *stop.borrow() {
            return Ok(());
        }
        sequence += 1;
        let now = SystemTime::now();
        let secs = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let record = UsageRecord {
            bucket_start: Some(
                (SystemTime::UNIX_EPOCH + Duration::from_secs(secs - secs % 60)).into(),
            ),
            node_id: node_id.clone(),
            subscription: "bench".into(),
            deployment: "alpha".into(),
            backend: "mock".into(),
            model: "mock-model".into(),
            status_class: "2xx".into(),
            requests: 1,
            prompt_tokens: 10,
            completion_tokens: 5,
            total_tokens: 15,
            ..UsageRecord::default()
        };
        let batch = UsageBatch {
            node_id: node_id.clone(),
            sequence,
            records: vec![record],
            incarnation,
            sent_at: Some(now.into()),
            ..UsageBatch::default()
        };
        if batches.send(batch).await.is_err() {
            bail!("report stream of {node_id} closed");
        }
        fleet.batches_sent.fetch_add(1, Ordering::AcqRel);
    }
}

fn print_report(r: &FleetReport) {
    println!(
        "fleet: {} simulated nodes against one sluice-control (pinned to one core)",
        r.nodes
    );
    println!(
        "  connect + register + watch + first ACK, all nodes: {:.2} s",
        r.connect_s
    );
    println!("  push (Apply → each node's answer):");
    for p in &r.pushes {
        println!(
            "    version {:>3}: p50 {:>7.1} ms  p99 {:>7.1} ms  max {:>7.1} ms  NACKs {} visible after {:.1} ms",
            p.version,
            p.p50_s * 1e3,
            p.p99_s * 1e3,
            p.max_s * 1e3,
            p.nacks,
            p.nacks_visible_s * 1e3
        );
    }
    println!(
        "  telemetry: {} batches sent, {} answered; requests {} sent / {} stored; tokens {} sent / {} stored ({} lost)",
        r.batches_sent,
        r.batches_answered,
        r.requests_sent,
        r.requests_stored,
        r.tokens_sent,
        r.tokens_stored,
        r.requests_sent.saturating_sub(r.requests_stored)
    );
    println!(
        "  control plane: {:.2} cores of CPU while reporting; RSS {:.1} MiB (peak {:.1} MiB)",
        r.control_cpu, r.control_rss_mib, r.control_peak_rss_mib
    );
}
