//! `sluice-bench failover --quick` end to end: the real binary against the real `sluice`
//! (built beside it by `cargo test --workspace`), its four phases in a few seconds. It checks
//! that the run completes, writes its results and RESULTS.md section, and that the counts
//! add up — every client answer in the Sluice phases is a 200 one of the mocks gave — never
//! the figures themselves (they depend on the machine).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

#[test]
fn quick_failover_run_reports_every_phase_and_its_counts_add_up() {
    let bench = PathBuf::from(env!("CARGO_BIN_EXE_sluice-bench"));
    let sluice = bench.with_file_name(format!("sluice{}", std::env::consts::EXE_SUFFIX));
    assert!(
        sluice.is_file(),
        "{} is missing: build it with `cargo build -p sluice` (cargo test --workspace does)",
        sluice.display()
    );
    let out = std::env::temp_dir().join(format!("sluice-failover-test-{}", std::process::id()));
    let results = out.join("RESULTS.md");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(&results, "# Results\n\n## Earlier\n\nkept\n").unwrap();
    let run = Command::new(&bench)
        .args(["failover", "--quick"])
        .arg("--sluice")
        .arg(&sluice)
        .arg("--out")
        .arg(&out)
        .arg("--update-results")
        .arg(&results)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    let markdown = std::fs::read_to_string(&results).unwrap();
    let _ = std::fs::remove_dir_all(&out);

    let phases = report["phases"].as_array().unwrap();
    let names: Vec<&str> = phases.iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        ["direct", "sluice-healthy", "sluice-429", "sluice-budget"]
    );
    for p in phases {
        let requests = p["requests"].as_u64().unwrap();
        assert!(requests > 0, "{p}");
        if p["name"] == "direct" {
            assert!(p["sluice_cpu_us_per_req"].is_null(), "{p}");
            continue;
        }
        // A healthy mock is always left: Sluice answers every request with a 200 one of
        // the mocks gave, whatever the other throttled.
        assert_eq!(p["client_ok"].as_u64().unwrap(), requests, "{p}");
        assert_eq!(p["client_429"], 0, "{p}");
        let upstream_ok: u64 = p["upstreams"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u["ok"].as_u64().unwrap())
            .sum();
        assert_eq!(upstream_ok, requests, "{p}");
        assert!(p["added_p50_us"].is_i64(), "{p}");
        assert!(p["sluice_cpu_us_per_req"].is_f64(), "{p}");
    }
    assert!(markdown.starts_with("# Results\n\n## Earlier\n\nkept\n\n## Failover (issue 14)\n"));
    assert!(markdown.contains("| sluice-429 |"), "{markdown}");
    assert!(stdout.contains("## Failover (issue 14)"), "{stdout}");
}
