//! `sluicectl`: the operator's CLI for a Sluice control plane (see `sluice_control::ctl`).

use std::process::ExitCode;

use clap::Parser;
use sluice_control::ctl::{self, Cli, Exit};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("sluicectl: cannot start the runtime: {e}");
            return ExitCode::from(Exit::Refused as u8);
        }
    };
    ExitCode::from(runtime.block_on(ctl::run(cli)) as u8)
}
