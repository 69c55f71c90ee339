//! `sluicectl usage` (the fleet's usage over a time range) and `sluicectl top` (a live view).

use std::io::{IsTerminal as _, Write as _};
use std::time::{Duration, SystemTime};

use clap::{Args, ValueEnum};
use sluice_proto::control::v1::live_service_client::LiveServiceClient;
use sluice_proto::control::v1::usage_service_client::UsageServiceClient;
use sluice_proto::control::v1::{
    QueryUsageRequest, TopFrame, TopRequest, UsageDimension, UsageRecord,
};

use super::{print_json, print_table, Authed, Exit, Failure, MAX_ANSWER_BYTES};

/// A dimension usage is grouped by.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
#[value(rename_all = "snake_case")]
pub enum Dimension {
    /// The subscription.
    Subscription,
    /// The deployment.
    Deployment,
    /// The backend that answered.
    Backend,
    /// The model the answers named.
    Model,
    /// The node that counted.
    Node,
    /// The status class (`2xx`, `4xx`, …).
    StatusClass,
}

impl Dimension {
    fn proto(self) -> UsageDimension {
        match self {
            Dimension::Subscription => UsageDimension::Subscription,
            Dimension::Deployment => UsageDimension::Deployment,
            Dimension::Backend => UsageDimension::Backend,
            Dimension::Model => UsageDimension::Model,
            Dimension::Node => UsageDimension::Node,
            Dimension::StatusClass => UsageDimension::StatusClass,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Dimension::Subscription => "subscription",
            Dimension::Deployment => "deployment",
            Dimension::Backend => "backend",
            Dimension::Model => "model",
            Dimension::Node => "node",
            Dimension::StatusClass => "status_class",
        }
    }

    fn of(self, r: &UsageRecord) -> &str {
        match self {
            Dimension::Subscription => &r.subscription,
            Dimension::Deployment => &r.deployment,
            Dimension::Backend => &r.backend,
            Dimension::Model => &r.model,
            Dimension::Node => &r.node_id,
            Dimension::StatusClass => &r.status_class,
        }
    }
}

/// `usage` options.
#[derive(Args, Debug)]
pub struct UsageArgs {
    /// Dimensions to keep apart, comma-separated.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "subscription,deployment"
    )]
    by: Vec<Dimension>,
    /// How far back (`30m`, `1h`, `7d`); the range starts at the whole minute before.
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    since: Duration,
    /// Only this subscription.
    #[arg(long)]
    subscription: Option<String>,
    /// Only this deployment.
    #[arg(long)]
    deployment: Option<String>,
    /// Only this backend.
    #[arg(long)]
    backend: Option<String>,
}

/// `top` options.
#[derive(Args, Debug)]
pub struct TopArgs {
    /// Rows per subscription, deployment, backend or node.
    #[arg(long, value_enum, default_value = "subscription")]
    by: Dimension,
    /// Time between frames (1s ..= 60s); each frame's rates are over it.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    interval: Duration,
    /// The busiest rows shown.
    #[arg(long, default_value_t = 20)]
    rows: u32,
    /// Stop after this many frames, at least 1 (default: until interrupted).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    frames: Option<u64>,
}

/// Runs `usage`. JSON: a list of rows, each with the `--by` dimensions and `requests`,
/// `prompt_tokens`, `completion_tokens`, `total_tokens`, `p50_ms`, `p99_ms`, `rejections`
/// (`{reason: count}`), `cache_hits` (of `requests`, those the response cache answered).
/// The table has the same figures, `CACHE_HITS` last.
pub async fn usage(channel: Authed, args: &UsageArgs, json: bool) -> Result<Exit, Failure> {
    let from = SystemTime::now()
        .checked_sub(args.since)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let secs = from
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let from = SystemTime::UNIX_EPOCH + Duration::from_secs(secs - secs % 60);
    let rows = UsageServiceClient::new(channel)
        .max_decoding_message_size(MAX_ANSWER_BYTES)
        .query(QueryUsageRequest {
            subscription: args.subscription.clone().unwrap_or_default(),
            deployment: args.deployment.clone().unwrap_or_default(),
            backend: args.backend.clone().unwrap_or_default(),
            from: Some(from.into()),
            group_by: args.by.iter().map(|d| d.proto() as i32).collect(),
            ..QueryUsageRequest::default()
        })
        .await?
        .into_inner()
        .rows;
    if json {
        let rows = rows
            .iter()
            .map(|r| {
                let mut row = serde_json::Map::new();
                for d in &args.by {
                    row.insert(d.name().into(), d.of(r).into());
                }
                row.insert("requests".into(), r.requests.into());
                row.insert("prompt_tokens".into(), r.prompt_tokens.into());
                row.insert("completion_tokens".into(), r.completion_tokens.into());
                row.insert("total_tokens".into(), r.total_tokens.into());
                row.insert("p50_ms".into(), r.latency_p50_ms.into());
                row.insert("p99_ms".into(), r.latency_p99_ms.into());
                let rejections: serde_json::Map<String, serde_json::Value> = r
                    .rejections
                    .iter()
                    .map(|c| (c.reason.clone(), c.count.into()))
                    .collect();
                row.insert("rejections".into(), rejections.into());
                row.insert("cache_hits".into(), r.cache_hits.into());
                serde_json::Value::Object(row)
            })
            .collect();
        print_json(&serde_json::Value::Array(rows));
        return Ok(Exit::Done);
    }
    let mut table: Vec<Vec<String>> = vec![args
        .by
        .iter()
        .map(|d| d.name().to_uppercase())
        .chain(
            [
                "REQUESTS",
                "PROMPT",
                "COMPLETION",
                "TOTAL",
                "P50_MS",
                "P99_MS",
                "REJECTED",
                "CACHE_HITS",
            ]
            .map(String::from),
        )
        .collect()];
    for r in &rows {
        let rejected: u64 = r.rejections.iter().map(|c| c.count).sum();
        table.push(
            args.by
                .iter()
                .map(|d| match d.of(r) {
                    "" => "-".to_string(),
                    name => name.to_string(),
                })
                .chain([
                    r.requests.to_string(),
                    r.prompt_tokens.to_string(),
                    r.completion_tokens.to_string(),
                    r.total_tokens.to_string(),
                    format!("{:.1}", r.latency_p50_ms),
                    format!("{:.1}", r.latency_p99_ms),
                    rejected.to_string(),
                    r.cache_hits.to_string(),
                ])
                .collect(),
        );
    }
    print_table(&table);
    Ok(Exit::Done)
}

/// Runs `top`: one frame per interval, redrawn in place on a terminal; with `-o json`, one
/// JSON object per frame per line (`{"at", "interval_s", "reporting_nodes", "total",
/// "rows": [{"name", "requests_per_s", "prompt_tokens_per_s", "completion_tokens_per_s",
/// "rejections_per_s"}]}`).
pub async fn top(channel: Authed, args: &TopArgs, json: bool) -> Result<Exit, Failure> {
    if args.by == Dimension::Model || args.by == Dimension::StatusClass {
        return Err(Failure(
            Exit::Usage,
            "top --by: subscription, deployment, backend or node".into(),
        ));
    }
    if args.interval < Duration::from_secs(1)
        || args.interval > Duration::from_secs(60)
        || args.interval.subsec_nanos() != 0
    {
        return Err(Failure(
            Exit::Usage,
            "--interval: whole seconds from 1s to 60s".into(),
        ));
    }
    let interval = prost_types::Duration::try_from(args.interval)
        .map_err(|e| Failure(Exit::Usage, format!("--interval: {e}")))?;
    let mut frames = LiveServiceClient::new(channel)
        .max_decoding_message_size(MAX_ANSWER_BYTES)
        .top(TopRequest {
            interval: Some(interval),
            group_by: args.by.proto() as i32,
            max_rows: args.rows,
        })
        .await?
        .into_inner();
    let redraw = !json && std::io::stdout().is_terminal();
    let mut shown = 0;
    while let Some(frame) = frames.message().await? {
        let shown_ok = if json {
            print_frame_json(&frame)
        } else {
            print_frame(&frame, args.by, redraw)
        };
        if !shown_ok {
            // The reader went away (`sluicectl top | head`): done.
            break;
        }
        shown += 1;
        if args.frames.is_some_and(|n| shown >= n) {
            break;
        }
    }
    Ok(Exit::Done)
}

fn rates_json(rates: Option<&sluice_proto::control::v1::LiveRates>) -> serde_json::Value {
    let r = rates.copied().unwrap_or_default();
    serde_json::json!({
        "requests_per_s": r.requests,
        "prompt_tokens_per_s": r.prompt_tokens,
        "completion_tokens_per_s": r.completion_tokens,
        "rejections_per_s": r.rejections,
    })
}

/// One frame as a JSON line; `false` when stdout is gone.
fn print_frame_json(frame: &TopFrame) -> bool {
    let rows: Vec<serde_json::Value> = frame
        .rows
        .iter()
        .map(|row| {
            let mut value = rates_json(row.rates.as_ref());
            value["name"] = row.name.clone().into();
            value
        })
        .collect();
    let line = serde_json::json!({
        "at": frame
            .at
            .and_then(|t| SystemTime::try_from(t).ok())
            .map(super::rfc3339),
        "interval_s": frame.interval.map(|d| d.seconds),
        "reporting_nodes": frame.reporting_nodes,
        "total": rates_json(frame.total.as_ref()),
        "rows": rows,
    });
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").and_then(|()| out.flush()).is_ok()
}

/// One frame as a table; `false` when stdout is gone.
fn print_frame(frame: &TopFrame, by: Dimension, redraw: bool) -> bool {
    if redraw {
        // Cursor home, clear the screen.
        out!("\x1b[H\x1b[2J");
    }
    let total = frame.total.unwrap_or_default();
    outln!(
        "sluice top — {} nodes reporting — {:.1} req/s, {:.0} prompt tok/s, {:.0} completion tok/s, {:.1} rejected/s",
        frame.reporting_nodes, total.requests, total.prompt_tokens, total.completion_tokens, total.rejections
    );
    let mut table = vec![[
        by.name().to_uppercase().as_str(),
        "REQ/S",
        "PROMPT_TOK/S",
        "COMPLETION_TOK/S",
        "REJECTED/S",
    ]
    .map(String::from)
    .to_vec()];
    for row in &frame.rows {
        let r = row.rates.unwrap_or_default();
        table.push(vec![
            if row.name.is_empty() {
                "-".into()
            } else {
                row.name.clone()
            },
            format!("{:.1}", r.requests),
            format!("{:.0}", r.prompt_tokens),
            format!("{:.0}", r.completion_tokens),
            format!("{:.1}", r.rejections),
        ]);
    }
    print_table(&table);
    // A closed pipe fails this write (stdout flushes at each line end).
    let mut out = std::io::stdout();
    writeln!(out).and_then(|()| out.flush()).is_ok()
}
