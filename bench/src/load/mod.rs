//! The load generator (being written): its pure pieces so far.

pub mod record;
pub mod report;
pub mod schedule;
pub mod sse;
pub mod target;

/// `sluice-bench load` arguments.
#[derive(clap::Args, Debug)]
pub struct LoadArgs {}

/// Runs one load from the command line and prints its report.
pub fn run_cli(_args: LoadArgs) -> anyhow::Result<()> {
    anyhow::bail!("the load generator is being written")
}
