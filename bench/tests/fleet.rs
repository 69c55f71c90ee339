//! `sluice-bench fleet` as a whole process, small: simulated agents against a real
//! `sluice-control` (the one `cargo test --workspace` built beside this bench), every push
//! answered, every NACK visible, and the usage stored exactly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

#[test]
fn a_small_fleet_gets_every_push_and_its_usage_is_stored_exactly() {
    let bench = PathBuf::from(env!("CARGO_BIN_EXE_sluice-bench"));
    let control = bench.with_file_name("sluice-control");
    assert!(
        control.exists(),
        "{} missing: run `cargo test --workspace` (it builds sluice-control)",
        control.display()
    );
    let out = std::env::temp_dir().join(format!("sluice-fleet-test-{}.json", std::process::id()));
    let run = Command::new(&bench)
        .args([
            "fleet",
            "--nodes",
            "40",
            "--pushes",
            "2",
            "--telemetry",
            "4s",
        ])
        .arg("--control")
        .arg(&control)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let _ = std::fs::remove_file(&out);
    assert_eq!(report["nodes"], 40);
    assert_eq!(report["pushes"].as_array().unwrap().len(), 2);
    for push in report["pushes"].as_array().unwrap() {
        // 5% of 40 nodes NACK each version after the first.
        assert_eq!(push["nacks"], 2, "{push}");
        assert!(push["p99_s"].as_f64().unwrap() <= push["max_s"].as_f64().unwrap());
    }
    let sent = report["requests_sent"].as_u64().unwrap();
    assert!(sent >= 40 * 3, "{report}");
    assert_eq!(report["requests_stored"].as_u64().unwrap(), sent);
    assert_eq!(report["tokens_stored"], report["tokens_sent"]);
    assert_eq!(report["batches_answered"], report["batches_sent"]);
}
