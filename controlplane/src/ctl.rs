//! `sluicectl`: the operator's CLI over the control plane's gRPC API.
//!
//! Exit codes scripts can trust ([`Exit`]): 0 done; 1 refused by the server (an invalid
//! config, an unknown name); 2 a bad command line; 3 the server unreachable; 4
//! authentication failed. `-o table` (the default) prints for people; `-o json` prints one
//! JSON document on stdout.

use std::io::Write as _;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use clap::{Parser, Subcommand, ValueEnum};
use sluice_proto::control::v1::apply_response::Outcome;
use sluice_proto::control::v1::backend_service_client::BackendServiceClient;
use sluice_proto::control::v1::config_service_client::ConfigServiceClient;
use sluice_proto::control::v1::node_service_client::NodeServiceClient;
use sluice_proto::control::v1::{
    ApplyRequest, BackendState, ConfigError, DiffRequest, DrainBackendRequest, ForgetNodeRequest,
    GetConfigRequest, ListBackendsRequest, ListNodesRequest, NodeState, SetWeightRequest,
    UndrainBackendRequest,
};
use sluice_proto::BearerToken;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use crate::source;
use crate::store::error_to_json;

/// `println!` that never panics: a reader that went away (`sluicectl … | head -1`) ends the
/// output, not the process with a panic.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// `print!` that never panics (see `outln!`).
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stdout(), $($arg)*);
    }};
}

mod keys;
mod usage;

/// Drives a Sluice control plane.
#[derive(Parser, Debug)]
#[command(name = "sluicectl", version, about)]
pub struct Cli {
    /// The control plane's API.
    #[arg(
        long,
        env = "SLUICE_SERVER",
        default_value = "http://127.0.0.1:50051",
        global = true
    )]
    pub server: String,
    /// The operator token (sent as `authorization: Bearer …`).
    #[arg(long, env = "SLUICE_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// Output: a table for people, or one JSON document.
    #[arg(
        short = 'o',
        long = "output",
        value_enum,
        default_value = "table",
        global = true
    )]
    pub output: Output,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// `-o`.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    /// Aligned columns or plain text.
    Table,
    /// One JSON document on stdout.
    Json,
}

/// The commands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Make the config at PATH (a TOML file or a folder of them) the running version.
    Apply {
        /// The config file or folder.
        #[arg(short = 'f', long = "file", value_name = "PATH")]
        file: PathBuf,
    },
    /// Show how the config at PATH differs from the running version (and its errors).
    Diff {
        /// The config file or folder.
        #[arg(short = 'f', long = "file", value_name = "PATH")]
        file: PathBuf,
    },
    /// Read something from the control plane.
    Get {
        /// What to read.
        #[command(subcommand)]
        what: Get,
    },
    /// The data-plane nodes and their answers to the current version.
    Nodes {
        /// `forget ID`; without it, the list.
        #[command(subcommand)]
        what: Option<NodesCommand>,
    },
    /// The running config's backends, and operator overlays on them (each makes a version).
    Backends {
        /// What to do.
        #[command(subcommand)]
        what: Backends,
    },
    /// Subscription keys made through the control plane (each create or revoke makes a
    /// version).
    Keys {
        /// What to do.
        #[command(subcommand)]
        what: keys::Keys,
    },
    /// The fleet's usage over a time range: requests, tokens, latency and rejections per
    /// subscription, deployment, backend, model, node or status class.
    Usage(usage::UsageArgs),
    /// A live view of requests/s and tokens/s, redrawn every interval.
    Top(usage::TopArgs),
}

/// `nodes` commands.
#[derive(Subcommand, Debug)]
pub enum NodesCommand {
    /// Forget a node that is gone (not connected): it leaves the list and the node counts.
    Forget {
        /// The node's id.
        node_id: String,
    },
}

/// `backends` commands.
#[derive(Subcommand, Debug)]
pub enum Backends {
    /// Every backend with its pools, weights and whether it is drained.
    List,
    /// Take a backend out of every pool: no new request goes to it (requests in flight
    /// finish).
    Drain {
        /// The backend's name.
        name: String,
    },
    /// Put a drained backend back.
    Undrain {
        /// The backend's name.
        name: String,
    },
    /// Override a backend's weight (in one deployment's pool, or every pool it is in).
    Weight {
        /// The backend's name.
        name: String,
        /// The weight (≥ 1).
        weight: u32,
        /// Only in this deployment's pool.
        #[arg(long)]
        deployment: Option<String>,
    },
}

/// `get` targets.
#[derive(Subcommand, Debug)]
pub enum Get {
    /// The running config document (or an older version).
    Config {
        /// The version to read; default the running one.
        #[arg(long)]
        version: Option<u64>,
    },
}

/// How `sluicectl` ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// 0: done.
    Done = 0,
    /// 1: the server refused (invalid config, unknown name, …).
    Refused = 1,
    /// 2: a bad command line (clap's own code for usage errors).
    Usage = 2,
    /// 3: the server could not be reached.
    Unreachable = 3,
    /// 4: the token was missing or wrong.
    Unauthenticated = 4,
}

/// The exit code for an RPC's failure: 1 only when the server answered that it refused;
/// a call that did not complete (the server unreachable, the connection lost mid-call, the
/// client's timeout) is 3 — it may or may not have taken effect.
pub fn exit_for(status: &Status) -> Exit {
    match status.code() {
        Code::Unauthenticated | Code::PermissionDenied => Exit::Unauthenticated,
        // tonic reports a transport failure (a connection reset mid-call) as Unknown; the
        // control plane never answers Unknown itself.
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown => {
            Exit::Unreachable
        }
        _ => Exit::Refused,
    }
}

type Authed = InterceptedService<Channel, BearerToken>;

/// The largest answer `sluicectl` reads: 256 MiB (gRPC's default is 4 MiB; a usage
/// breakdown or a fleet's node list can be larger).
pub const MAX_ANSWER_BYTES: usize = 256 << 20;

/// A failure, with its exit code and what to print on stderr.
struct Failure(Exit, String);

impl From<Status> for Failure {
    fn from(status: Status) -> Self {
        let exit = exit_for(&status);
        let what = match exit {
            Exit::Unauthenticated => "authentication failed",
            Exit::Unreachable if status.code() == Code::Unavailable => {
                "control plane unreachable"
            }
            Exit::Unreachable => {
                "the call did not complete (it may or may not have taken effect: check with `sluicectl get config`)"
            }
            _ => "refused",
        };
        Failure(exit, format!("{what}: {}", status.message()))
    }
}

/// Runs one command; returns the exit code.
pub async fn run(cli: Cli) -> Exit {
    match run_command(cli).await {
        Ok(exit) => exit,
        Err(Failure(exit, message)) => {
            eprintln!("sluicectl: {message}");
            exit
        }
    }
}

async fn connect(cli: &Cli) -> Result<Authed, Failure> {
    let token = BearerToken::new(cli.token.as_deref())
        .map_err(|e| Failure(Exit::Usage, format!("--token: {e}")))?;
    if !(cli.server.starts_with("http://") || cli.server.starts_with("https://")) {
        return Err(Failure(
            Exit::Usage,
            format!("--server {}: expected http://HOST:PORT", cli.server),
        ));
    }
    let endpoint = Endpoint::from_shared(cli.server.clone())
        .map_err(|e| Failure(Exit::Usage, format!("--server {}: {e}", cli.server)))?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30));
    let channel = endpoint.connect().await.map_err(|e| {
        let cause = std::error::Error::source(&e).map_or(String::new(), |s| format!(": {s}"));
        Failure(
            Exit::Unreachable,
            format!("cannot reach {}{cause}", cli.server),
        )
    })?;
    Ok(InterceptedService::new(channel, token))
}

fn print_json(value: &serde_json::Value) {
    let mut out = std::io::stdout().lock();
    let _ = serde_json::to_writer_pretty(&mut out, value);
    let _ = writeln!(out);
}

fn located(e: &ConfigError) -> String {
    format!(
        "{}:{}:{}: {}: {}",
        e.file, e.line, e.column, e.field, e.message
    )
}

/// Reads `-f PATH`: a path that cannot be read is a bad command line (2); a document that
/// does not assemble is an invalid config (1), like one the server refuses — with `-o json`,
/// its errors are printed as `{"errors": [...]}` as the server's refusal would be.
fn read_source(path: &std::path::Path, json: bool) -> Result<source::Document, Failure> {
    source::read(path).map_err(|e| {
        let exit = match &e {
            source::SourceError::Read { .. } | source::SourceError::Empty(_) => Exit::Usage,
            source::SourceError::TooLarge(..) => Exit::Refused,
            source::SourceError::Assemble(errors) => {
                if json {
                    print_json(&serde_json::json!({
                        "errors": errors.0.iter().map(|e| serde_json::json!({
                            "file": e.file.display().to_string(), "line": e.line,
                            "column": e.column, "field": e.field, "message": e.message,
                        })).collect::<Vec<_>>(),
                    }));
                }
                Exit::Refused
            }
        };
        Failure(exit, e.to_string())
    })
}

async fn run_command(cli: Cli) -> Result<Exit, Failure> {
    // Read local files before dialling: a bad path is reported even with no server.
    let document = match &cli.command {
        Command::Apply { file } | Command::Diff { file } => {
            Some(read_source(file, cli.output == Output::Json)?)
        }
        _ => None,
    };
    let channel = connect(&cli).await?;
    let json = cli.output == Output::Json;
    match (&cli.command, document) {
        (Command::Apply { .. }, Some(doc)) => {
            let answer = ConfigServiceClient::new(channel)
                .max_decoding_message_size(MAX_ANSWER_BYTES)
                .apply(ApplyRequest {
                    toml: doc.toml,
                    source: doc.source,
                    git_commit: doc.git_commit,
                })
                .await?
                .into_inner();
            match answer.outcome {
                Some(Outcome::Applied(applied)) => {
                    if json {
                        print_json(&serde_json::json!({
                            "version": applied.version,
                            "unchanged": applied.unchanged,
                            "warnings": applied.host_warnings.iter().map(error_to_json).collect::<Vec<_>>(),
                        }));
                    } else {
                        for w in &applied.host_warnings {
                            eprintln!("warning: {} (not checked by the control plane's host: each node checks it)", located(w));
                        }
                        if applied.unchanged {
                            outln!(
                                "unchanged: version {} already runs this document",
                                applied.version
                            );
                        } else {
                            outln!("applied: version {}", applied.version);
                        }
                    }
                    Ok(Exit::Done)
                }
                Some(Outcome::Rejected(rejected)) => {
                    if json {
                        print_json(&serde_json::json!({
                            "errors": rejected.errors.iter().map(error_to_json).collect::<Vec<_>>(),
                        }));
                    } else {
                        for e in &rejected.errors {
                            eprintln!("{}", located(e));
                        }
                        eprintln!(
                            "refused: {} error(s); nothing was applied",
                            rejected.errors.len()
                        );
                    }
                    Ok(Exit::Refused)
                }
                None => Err(Failure(
                    Exit::Refused,
                    "the server answered with no outcome".into(),
                )),
            }
        }
        (Command::Diff { .. }, Some(doc)) => {
            let answer = ConfigServiceClient::new(channel)
                .max_decoding_message_size(MAX_ANSWER_BYTES)
                .diff(DiffRequest {
                    toml: doc.toml,
                    source: doc.source,
                })
                .await?
                .into_inner();
            if json {
                print_json(&serde_json::json!({
                    "running_version": answer.running_version,
                    "lines_added": answer.lines_added,
                    "lines_removed": answer.lines_removed,
                    "diff": answer.unified_diff,
                    "errors": answer.errors.iter().map(error_to_json).collect::<Vec<_>>(),
                }));
            } else {
                if answer.unified_diff.is_empty() {
                    outln!("no changes against version {}", answer.running_version);
                } else {
                    out!("{}", answer.unified_diff);
                }
                for e in &answer.errors {
                    eprintln!("{}", located(e));
                }
            }
            Ok(if answer.errors.is_empty() {
                Exit::Done
            } else {
                Exit::Refused
            })
        }
        (
            Command::Get {
                what: Get::Config { version },
            },
            _,
        ) => {
            let answer = ConfigServiceClient::new(channel)
                .max_decoding_message_size(MAX_ANSWER_BYTES)
                .get(GetConfigRequest {
                    version: version.unwrap_or(0),
                })
                .await?
                .into_inner();
            let v = answer.version.unwrap_or_default();
            let created = v
                .created_at
                .and_then(|t| SystemTime::try_from(t).ok())
                .map(rfc3339);
            if json {
                print_json(&serde_json::json!({
                    "version": v.version,
                    "git_commit": v.git_commit,
                    "source": v.source,
                    "created_at": created,
                    "toml": answer.toml,
                    "drained_backends": answer.drained_backends,
                    "weight_overrides": answer.weight_overrides.iter().map(|w| serde_json::json!({
                        "backend": w.backend, "deployment": w.deployment, "weight": w.weight,
                    })).collect::<Vec<_>>(),
                    "subscription_keys": answer.subscription_keys.iter().map(|k| serde_json::json!({
                        "key_id": k.id, "subscription": k.subscription,
                        "digest_prefix": k.digest_prefix, "revoked": k.revoked_at.is_some(),
                    })).collect::<Vec<_>>(),
                }));
            } else {
                outln!(
                    "# version {} from {}{} at {}",
                    v.version,
                    v.source,
                    if v.git_commit.is_empty() {
                        String::new()
                    } else {
                        format!(" (git {})", v.git_commit)
                    },
                    created.unwrap_or_default()
                );
                for name in &answer.drained_backends {
                    outln!("# overlay: backend {name} drained");
                }
                for w in &answer.weight_overrides {
                    let pool = if w.deployment.is_empty() {
                        "every pool".to_string()
                    } else {
                        format!("deployment {}", w.deployment)
                    };
                    outln!(
                        "# overlay: backend {} weight {} in {pool}",
                        w.backend,
                        w.weight
                    );
                }
                for k in &answer.subscription_keys {
                    let state = if k.revoked_at.is_some() {
                        "revoked"
                    } else {
                        "valid"
                    };
                    outln!(
                        "# overlay: key {} of subscription {} (sha256 {}…) {state}",
                        k.id,
                        k.subscription,
                        k.digest_prefix
                    );
                }
                out!("{}", answer.toml);
                if !answer.toml.ends_with('\n') {
                    outln!();
                }
            }
            Ok(Exit::Done)
        }
        (
            Command::Nodes {
                what: Some(NodesCommand::Forget { node_id }),
            },
            _,
        ) => {
            NodeServiceClient::new(channel)
                .max_decoding_message_size(MAX_ANSWER_BYTES)
                .forget(ForgetNodeRequest {
                    node_id: node_id.clone(),
                })
                .await?;
            if json {
                print_json(&serde_json::json!({ "node_id": node_id, "forgotten": true }));
            } else {
                outln!("node {node_id} forgotten");
            }
            Ok(Exit::Done)
        }
        (Command::Nodes { what: None }, _) => {
            let nodes = NodeServiceClient::new(channel)
                .max_decoding_message_size(MAX_ANSWER_BYTES)
                .list(ListNodesRequest {})
                .await?
                .into_inner()
                .nodes;
            let state_name = |s: i32| match NodeState::try_from(s) {
                Ok(NodeState::Ack) => "ACK",
                Ok(NodeState::Nack) => "NACK",
                _ => "PENDING",
            };
            let last_seen = |n: &sluice_proto::control::v1::Node| {
                n.last_seen
                    .and_then(|t| SystemTime::try_from(t).ok())
                    .map(rfc3339)
            };
            if json {
                let rows: Vec<_> = nodes
                    .iter()
                    .map(|n| {
                        serde_json::json!({
                            "node_id": n.id,
                            "version": n.running_version,
                            "state": state_name(n.state),
                            "errors": n.rejected_errors.iter().map(error_to_json).collect::<Vec<_>>(),
                            "last_seen": last_seen(n),
                            "connected": n.connected,
                            "hostname": n.hostname,
                            "rejected_version": n.rejected_version,
                        })
                    })
                    .collect();
                print_json(&serde_json::Value::Array(rows));
            } else {
                let mut rows = vec![[
                    "NODE",
                    "VERSION",
                    "STATE",
                    "CONNECTED",
                    "LAST SEEN",
                    "ERRORS",
                ]
                .map(String::from)
                .to_vec()];
                for n in &nodes {
                    rows.push(vec![
                        n.id.clone(),
                        n.running_version.to_string(),
                        state_name(n.state).to_string(),
                        if n.connected { "yes" } else { "no" }.to_string(),
                        last_seen(n).unwrap_or_else(|| "-".into()),
                        n.rejected_errors
                            .iter()
                            .map(located)
                            .collect::<Vec<_>>()
                            .join("; "),
                    ]);
                }
                print_table(&rows);
            }
            Ok(Exit::Done)
        }
        (Command::Backends { what }, _) => {
            let mut client =
                BackendServiceClient::new(channel).max_decoding_message_size(MAX_ANSWER_BYTES);
            let backends = match what {
                Backends::List => {
                    client
                        .list(ListBackendsRequest {})
                        .await?
                        .into_inner()
                        .backends
                }
                Backends::Drain { name } => vec![client
                    .drain(DrainBackendRequest { name: name.clone() })
                    .await?
                    .into_inner()],
                Backends::Undrain { name } => vec![client
                    .undrain(UndrainBackendRequest { name: name.clone() })
                    .await?
                    .into_inner()],
                Backends::Weight {
                    name,
                    weight,
                    deployment,
                } => vec![client
                    .set_weight(SetWeightRequest {
                        name: name.clone(),
                        deployment: deployment.clone().unwrap_or_default(),
                        weight: Some(*weight),
                    })
                    .await?
                    .into_inner()],
            };
            print_backends(&backends, json);
            if let (false, false, Some(b)) =
                (json, matches!(what, Backends::List), backends.first())
            {
                outln!("version {} is the running version", b.version);
            }
            Ok(Exit::Done)
        }
        (Command::Keys { what }, _) => keys::run(channel, what, json).await,
        (Command::Usage(args), _) => usage::usage(channel, args, json).await,
        (Command::Top(args), _) => usage::top(channel, args, json).await,
        (Command::Apply { .. } | Command::Diff { .. }, None) => {
            Err(Failure(Exit::Usage, "no document read".into()))
        }
    }
}

/// Backends as a table (one row per pool place) or a JSON list of `{"name", "kind",
/// "drained", "version", "pools": [{"deployment", "weight", "configured_weight",
/// "priority"}]}`.
fn print_backends(backends: &[BackendState], json: bool) {
    if json {
        let rows: Vec<_> = backends
            .iter()
            .map(|b| {
                serde_json::json!({
                    "name": b.name,
                    "kind": b.kind,
                    "drained": b.drained,
                    "version": b.version,
                    "pools": b.pools.iter().map(|p| serde_json::json!({
                        "deployment": p.deployment,
                        "weight": p.weight,
                        "configured_weight": p.configured_weight,
                        "priority": p.priority,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        print_json(&serde_json::Value::Array(rows));
        return;
    }
    let mut rows = vec![[
        "BACKEND",
        "KIND",
        "DRAINED",
        "DEPLOYMENT",
        "WEIGHT",
        "PRIORITY",
    ]
    .map(String::from)
    .to_vec()];
    for b in backends {
        let drained = if b.drained { "yes" } else { "no" }.to_string();
        if b.pools.is_empty() {
            rows.push(vec![
                b.name.clone(),
                b.kind.clone(),
                drained.clone(),
                "-".into(),
                "-".into(),
                "-".into(),
            ]);
        }
        for p in &b.pools {
            let weight = if p.weight == p.configured_weight {
                p.weight.to_string()
            } else {
                format!("{} (configured {})", p.weight, p.configured_weight)
            };
            rows.push(vec![
                b.name.clone(),
                b.kind.clone(),
                drained.clone(),
                p.deployment.clone(),
                weight,
                p.priority.to_string(),
            ]);
        }
    }
    print_table(&rows);
}

/// RFC 3339 with milliseconds, UTC.
fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// Prints rows as left-aligned columns two spaces apart (the last column unpadded).
fn print_table(rows: &[Vec<String>]) {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = std::io::stdout().lock();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            line.push_str(cell);
            if c + 1 < row.len() {
                // Padded by hand: `format!`'s width stops at 65,535.
                let pad = widths[c].saturating_sub(cell.chars().count()) + 2;
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }
}
