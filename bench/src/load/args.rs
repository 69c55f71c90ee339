//! The `sluice-bench load` command line, and the duration and CPU-list syntax it uses.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};

use super::target::parse_header;
use super::LoadConfig;

/// `sluice-bench load` arguments; see [`LoadConfig`] for what each one does.
#[derive(clap::Args, Debug, Clone)]
pub struct LoadArgs {
    /// http:// or https:// URL to load (https: TLS 1.3/1.2, SNI from the host).
    #[arg(long)]
    pub url: String,
    /// Connect to this IP:PORT instead of resolving the URL's host (which still gives Host,
    /// SNI and the certificate's name).
    #[arg(long, value_name = "IP:PORT")]
    pub connect_to: Option<std::net::SocketAddr>,
    /// https: trust only the CA certificates in this PEM file (default: the Mozilla roots).
    #[arg(long, value_name = "PATH")]
    pub ca_file: Option<PathBuf>,
    /// https: resume TLS sessions across connections (default: every handshake is full).
    #[arg(long)]
    pub tls_resumption: bool,
    /// Open a new connection for every request and close it after the answer (with https,
    /// a handshake per request).
    #[arg(long)]
    pub new_connection_per_request: bool,
    /// Request method (default: GET without a body, POST with one).
    #[arg(long)]
    pub method: Option<String>,
    /// Read the request body from this file.
    #[arg(long, conflicts_with = "body_inline")]
    pub body: Option<PathBuf>,
    /// The request body, inline.
    #[arg(long)]
    pub body_inline: Option<String>,
    /// Extra request header 'Name: value' (repeatable).
    #[arg(short = 'H', long = "header")]
    pub headers: Vec<String>,
    /// Connections, all threads together.
    #[arg(long, default_value_t = 16)]
    pub connections: usize,
    /// Threads (one monoio runtime each).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Length of the measured part, e.g. 10s, 500ms, 2m.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Unrecorded lead-in before the measured part.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Open loop at R requests per second in total (latency from each intended send time);
    /// absent: closed loop.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Stop after exactly N measured requests (instead of --duration).
    #[arg(long)]
    pub requests: Option<u64>,
    /// Read answers as server-sent events: time to first token, gaps between events.
    #[arg(long)]
    pub stream: bool,
    /// Limit on connecting and on each request.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Name for this run in the report (default: the URL).
    #[arg(long)]
    pub label: Option<String>,
    /// No progress line.
    #[arg(long)]
    pub quiet: bool,
    /// Pin threads to these CPUs, round-robin: e.g. 0,2-3.
    #[arg(long, value_parser = parse_cpu_list)]
    pub cpus: Option<CpuList>,
}

/// A parsed CPU list (`0,2-3`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuList(pub Vec<usize>);

impl LoadArgs {
    /// The run these arguments describe (reads `--body`).
    pub fn into_config(self) -> anyhow::Result<LoadConfig> {
        let body = match (&self.body, self.body_inline) {
            (Some(path), _) => std::fs::read(path)
                .with_context(|| format!("cannot read the body from {}", path.display()))?,
            (None, Some(inline)) => inline.into_bytes(),
            (None, None) => Vec::new(),
        };
        let headers = self
            .headers
            .iter()
            .map(|h| parse_header(h))
            .collect::<anyhow::Result<_>>()?;
        Ok(LoadConfig {
            url: self.url,
            connect_to: self.connect_to,
            ca_file: self.ca_file,
            tls_resumption: self.tls_resumption,
            new_connection_per_request: self.new_connection_per_request,
            method: self.method,
            body,
            headers,
            connections: self.connections,
            threads: self.threads,
            duration: self.duration,
            warmup: self.warmup,
            rate: self.rate,
            requests: self.requests,
            stream: self.stream,
            timeout: self.timeout,
            label: self.label.unwrap_or_default(),
            progress: !self.quiet,
            cpus: self.cpus.map(|c| c.0).unwrap_or_default(),
        })
    }
}

/// Parses `10s`, `500ms`, `250us`, `2m`, `1.5s` (a bare number is seconds).
pub fn parse_duration(text: &str) -> anyhow::Result<Duration> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .with_context(|| format!("bad duration {text:?}"))?;
    let seconds = match unit.trim() {
        "" | "s" => value,
        "ms" => value / 1e3,
        "us" | "µs" => value / 1e6,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        other => bail!("unknown duration unit {other:?} in {text:?} (use us, ms, s, m or h)"),
    };
    Duration::try_from_secs_f64(seconds).with_context(|| format!("bad duration {text:?}"))
}

/// Parses a CPU list: numbers and inclusive ranges separated by commas (`0,2-3`).
pub fn parse_cpu_list(text: &str) -> anyhow::Result<CpuList> {
    let mut cpus = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let number = |s: &str| -> anyhow::Result<usize> {
            s.trim()
                .parse()
                .with_context(|| format!("bad CPU {s:?} in {text:?}"))
        };
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (number(a)?, number(b)?);
                if a > b {
                    bail!("empty CPU range {part:?}");
                }
                cpus.extend(a..=b);
            }
            None => cpus.push(number(part)?),
        }
    }
    if cpus.is_empty() {
        bail!("empty CPU list {text:?}");
    }
    Ok(CpuList(cpus))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("250us").unwrap(), Duration::from_micros(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert_eq!(parse_duration("0s").unwrap(), Duration::ZERO);
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5 days").is_err());
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0,2-3").unwrap().0, [0, 2, 3]);
        assert_eq!(parse_cpu_list("1").unwrap().0, [1]);
        assert!(parse_cpu_list("3-1").is_err());
        assert!(parse_cpu_list("").is_err());
        assert!(parse_cpu_list("a").is_err());
    }
}
