//! `sluice-bench failover --quick` end to end: the real binary against the real `sluice`
//! (built beside it by `cargo test --workspace`), its four phases in a few seconds. It checks
//! that the run completes, writes its results and RESULTS.md section, and that the counts
//! add up — every client answer in the Sluice phases is a 200 one of the mocks gave — never
//! the figures themselves (they depend on the machine).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::{quick_run, QuickRun};

#[test]
fn quick_failover_run_reports_every_phase_and_its_counts_add_up() {
    let QuickRun {
        stdout,
        report,
        markdown,
    } = quick_run("failover", "# Results\n\n## Earlier\n\nkept\n");

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
