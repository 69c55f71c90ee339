//! `sluice-bench`: the load-testing suite. `mock` runs the mock OpenAI backend, `load` runs
//! the load generator against any URL, `compare` runs the side-by-side scenarios (direct
//! mock, Sluice passthrough, Sluice full chain, nginx; with `--tls`, Sluice and nginx over
//! TLS) and writes the report, `certs` writes a test CA and a server certificate, `fleet`,
//! `failover` and `cache` run the scenarios of issues 13 and 14.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Sluice's bench suite.
#[derive(Parser, Debug)]
#[command(name = "sluice-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
// Parsed once at startup; boxing the arguments would buy nothing.
#[allow(clippy::large_enum_variant)]
enum Command {
    /// Run the mock OpenAI backend (chat, completions, embeddings, models) with fault knobs.
    Mock(sluice_bench::mock_server::MockArgs),
    /// Load a URL, open-loop at a constant rate or closed-loop for peak throughput.
    Load(sluice_bench::load::LoadArgs),
    /// Compare direct mock, Sluice passthrough, Sluice full chain and nginx; write a report.
    Compare(sluice_bench::compare::CompareArgs),
    /// Write a test CA (ca.pem) and a server certificate it signed (gw.pem, gw.key).
    Certs(sluice_bench::certs::CertsArgs),
    /// Simulated node agents against one sluice-control: push latency, telemetry, its cost.
    Fleet(sluice_bench::fleet::FleetArgs),
    /// Two mocks in one pool behind Sluice, one throttling or both on token budgets: what
    /// clients see, upstream 429s, added latency and CPU (issue 14).
    Failover(sluice_bench::failover::FailoverArgs),
    /// One mock behind Sluice as two deployments, without and with a response cache: Sluice's
    /// CPU per request on the hit path against passthrough, req/s and latency (issue 14).
    Cache(sluice_bench::cache::CacheArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Mock(args) => sluice_bench::mock_server::run(args),
        Command::Load(args) => sluice_bench::load::run_cli(args),
        Command::Compare(args) => sluice_bench::compare::run(args),
        Command::Certs(args) => sluice_bench::certs::run(args),
        Command::Fleet(args) => sluice_bench::fleet::run(args),
        Command::Failover(args) => sluice_bench::failover::run(args),
        Command::Cache(args) => sluice_bench::cache::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluice-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
