//! Running a `sluice-bench` scenario end to end from a test: the real binary, against the
//! real `sluice` that `cargo test --workspace` builds beside it.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

/// What a finished `sluice-bench SCENARIO --quick` run left.
pub struct QuickRun {
    /// Its standard output (the report's Markdown).
    pub stdout: String,
    /// Its `results.json`.
    pub report: Value,
    /// The RESULTS.md it updated with `--update-results`, after the run.
    pub markdown: String,
}

/// Runs `sluice-bench SCENARIO --quick --update-results FILE` where FILE first holds
/// `results_before`, in a scratch directory removed afterwards; panics, with its output,
/// unless it succeeds.
pub fn quick_run(scenario: &str, results_before: &str) -> QuickRun {
    let bench = PathBuf::from(env!("CARGO_BIN_EXE_sluice-bench"));
    let sluice = bench.with_file_name(format!("sluice{}", std::env::consts::EXE_SUFFIX));
    assert!(
        sluice.is_file(),
        "{} is missing: build it with `cargo build -p sluice` (cargo test --workspace does)",
        sluice.display()
    );
    let out = std::env::temp_dir().join(format!("sluice-{scenario}-test-{}", std::process::id()));
    let results = out.join("RESULTS.md");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(&results, results_before).unwrap();
    let run = Command::new(&bench)
        .args([scenario, "--quick"])
        .arg("--sluice")
        .arg(&sluice)
        .arg("--out")
        .arg(&out)
        .arg("--update-results")
        .arg(&results)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout).into_owned();
    assert!(
        run.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let report =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    let markdown = std::fs::read_to_string(&results).unwrap();
    let _ = std::fs::remove_dir_all(&out);
    QuickRun {
        stdout,
        report,
        markdown,
    }
}
