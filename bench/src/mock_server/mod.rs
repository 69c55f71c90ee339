//! The standalone mock backend (being written).

/// `sluice-bench mock` arguments.
#[derive(clap::Args, Debug)]
pub struct MockArgs {}

/// Runs the mock until SIGTERM/SIGINT.
pub fn run(_args: MockArgs) -> anyhow::Result<()> {
    anyhow::bail!("the mock server is being written")
}
