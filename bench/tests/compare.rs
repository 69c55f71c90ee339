//! `sluice-bench compare --quick` end to end: the real binary against the real `sluice`
//! binary (built beside it by `cargo test --workspace`) and the in-process mocks, without
//! nginx. It checks that the run completes and writes its three files; it never asserts
//! figures (they depend on the machine).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path = std::env::temp_dir().join(format!(
            "sluice-bench-compare-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `sluice-bench` and the `sluice` beside it in the same target folder.
fn binaries() -> (PathBuf, PathBuf) {
    let bench = PathBuf::from(env!("CARGO_BIN_EXE_sluice-bench"));
    let sluice = bench
        .parent()
        .expect("target dir")
        .join(format!("sluice{}", std::env::consts::EXE_SUFFIX));
    assert!(
        sluice.is_file(),
        "{} is missing: build it with `cargo build -p sluice` (cargo test --workspace does)",
        sluice.display()
    );
    (bench, sluice)
}

#[test]
fn quick_compare_writes_report_json_and_plot() {
    let (bench, sluice) = binaries();
    let out = TempDir::new();
    let started = Instant::now();
    let run = Command::new(&bench)
        .args(["compare", "--quick", "--no-nginx", "--out"])
        .arg(&out.0)
        .arg("--sluice")
        .arg(&sluice)
        .output()
        .expect("run sluice-bench compare");
    let took = started.elapsed();
    assert!(
        run.status.success(),
        "compare failed ({}):\n{}",
        run.status,
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(took < Duration::from_secs(60), "--quick took {took:?}");

    let report = std::fs::read_to_string(out.0.join("report.md")).expect("report.md");
    assert!(report.contains("## Goals"));
    for target in ["direct", "sluice-passthrough", "sluice-full-chain"] {
        assert!(report.contains(target), "report.md lacks {target}");
    }

    let json = std::fs::read_to_string(out.0.join("results.json")).expect("results.json");
    let results: serde_json::Value = serde_json::from_str(&json).expect("results.json parses");
    let targets = results["targets"].as_array().expect("targets array");
    assert_eq!(
        targets.len(),
        3,
        "three targets (nginx skipped by --no-nginx)"
    );
    assert!(results["goals"].as_array().is_some_and(|g| !g.is_empty()));

    let svg = std::fs::read_to_string(out.0.join("latency.svg")).expect("latency.svg");
    assert!(
        svg.starts_with("<svg"),
        "latency.svg does not start with <svg"
    );
    assert!(svg.trim_end().ends_with("</svg>"));
    for target in ["direct", "sluice-passthrough", "sluice-full-chain"] {
        assert!(
            svg.contains(&format!("<path data-target=\"{target}\"")),
            "latency.svg has no path for {target}"
        );
    }
}

/// `--tls`: Sluice over HTTPS with a certificate generated into `--out/tls/`, measured for
/// keep-alive requests and new handshakes without a failed request.
#[test]
fn quick_compare_with_tls_measures_sluice_over_tls() {
    let (bench, sluice) = binaries();
    let out = TempDir::new();
    let run = Command::new(&bench)
        .args(["compare", "--quick", "--no-nginx", "--tls", "--out"])
        .arg(&out.0)
        .arg("--sluice")
        .arg(&sluice)
        .output()
        .expect("run sluice-bench compare --tls");
    assert!(
        run.status.success(),
        "compare --tls failed ({}):\n{}",
        run.status,
        String::from_utf8_lossy(&run.stderr)
    );
    for file in ["ca.pem", "gw.pem", "gw.key"] {
        assert!(out.0.join("tls").join(file).is_file(), "tls/{file} missing");
    }
    let config = std::fs::read_to_string(out.0.join("sluice-passthrough-tls.toml")).unwrap();
    assert!(config.contains("tls_listen"), "{config}");

    let json = std::fs::read_to_string(out.0.join("results.json")).expect("results.json");
    let results: serde_json::Value = serde_json::from_str(&json).expect("results.json parses");
    let tls = &results["tls"];
    let targets = tls["targets"].as_array().expect("tls.targets");
    assert_eq!(targets.len(), 1, "{tls}");
    let sluice_tls = &targets[0];
    assert_eq!(sluice_tls["name"], "sluice-tls");
    assert_eq!(sluice_tls["errors"], 0, "{tls}");
    for field in [
        "keepalive_rps",
        "cpu_us_per_req",
        "handshakes_per_s",
        "cpu_us_per_handshake",
    ] {
        assert!(
            sluice_tls[field].as_f64().is_some_and(|v| v > 0.0),
            "{field} in {tls}"
        );
    }
    let report = std::fs::read_to_string(out.0.join("report.md")).expect("report.md");
    assert!(report.contains("## TLS (issue 11)"), "{report}");
    assert!(report.contains("| sluice-tls |"), "{report}");
}

/// `--observability-cost` (issue 12): the bare full chain runs beside the full chain, its
/// config has neither audit log nor admin listener, the full chain's audit threads show,
/// and the goal (full chain − its audit threads) − bare is in the report and the JSON.
#[test]
fn quick_compare_with_observability_cost_runs_the_bare_full_chain() {
    let (bench, sluice) = binaries();
    let out = TempDir::new();
    let run = Command::new(&bench)
        .args([
            "compare",
            "--quick",
            "--no-nginx",
            "--observability-cost",
            "--out",
        ])
        .arg(&out.0)
        .arg("--sluice")
        .arg(&sluice)
        .output()
        .expect("run sluice-bench compare --observability-cost");
    assert!(
        run.status.success(),
        "compare --observability-cost failed ({}):\n{}",
        run.status,
        String::from_utf8_lossy(&run.stderr)
    );
    let config =
        std::fs::read_to_string(out.0.join("sluice-full-chain-bare.toml")).expect("bare config");
    assert!(
        !config.contains("[audit]") && config.contains("[admin]\nlisten = \"\"\n"),
        "{config}"
    );

    let json = std::fs::read_to_string(out.0.join("results.json")).expect("results.json");
    let results: serde_json::Value = serde_json::from_str(&json).expect("results.json parses");
    let targets = results["targets"].as_array().expect("targets array");
    let named = |name: &str| {
        targets
            .iter()
            .find(|t| t["name"] == name)
            .unwrap_or_else(|| panic!("no {name} in {json}"))
    };
    let bare = named("sluice-full-chain-bare");
    assert_eq!(bare["errors"], 0, "{bare}");
    assert!(bare["audit_cpu_us_per_req_max"].is_null(), "{bare}");
    assert!(
        named("sluice-full-chain")["audit_cpu_us_per_req_max"]
            .as_f64()
            .is_some(),
        "the full chain's audit threads were not found: {json}"
    );
    let goals = results["goals"].as_array().expect("goals");
    let goal = goals
        .iter()
        .find(|g| {
            g["goal"]
                .as_str()
                .is_some_and(|s| s.starts_with("Audit + metrics"))
        })
        .unwrap_or_else(|| panic!("no observability goal in {json}"));
    assert!(
        goal["measured"]
            .as_str()
            .is_some_and(|m| m.starts_with("request path: (")
                && m.contains("off it, the audit threads: ")
                && m.contains("whole process: ")),
        "{goal}"
    );
    let report = std::fs::read_to_string(out.0.join("report.md")).expect("report.md");
    assert!(report.contains("| sluice-full-chain-bare |"), "{report}");
}
