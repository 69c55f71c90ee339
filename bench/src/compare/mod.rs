//! The compare scenarios (being written).

/// `sluice-bench compare` arguments.
#[derive(clap::Args, Debug)]
pub struct CompareArgs {}

/// Runs the comparison and writes the report.
pub fn run(_args: CompareArgs) -> anyhow::Result<()> {
    anyhow::bail!("the compare scenarios are being written")
}
