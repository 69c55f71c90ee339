//! `sluice-bench cache --quick` end to end: the real binary against the real `sluice` (built
//! beside it by `cargo test --workspace`), one round of each deployment in a few seconds. It
//! checks that the run completes, writes its results and its RESULTS.md subsection in place
//! of the hand-measured one, that the cached deployment answered every measured request from
//! the cache (the mock saw none of them) and that the headline ratio is a number — never the
//! figures themselves (they depend on the machine).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::{quick_run, QuickRun};

#[test]
fn quick_cache_run_reports_both_deployments_and_all_hits() {
    let before = "# Results\n\n## Response cache\n\n### Hit path\n\nkept\n\n\
                  ### Hit vs passthrough, whole process\n\nhand figures\n\n## Later\n\nkept too\n";
    let QuickRun {
        stdout,
        report,
        markdown,
    } = quick_run("cache", before);

    assert_eq!(report["probe"], serde_json::json!(["miss", "hit"]));
    let rounds = report["rounds"].as_array().unwrap();
    let names: Vec<&str> = rounds
        .iter()
        .map(|r| r["deployment"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["passthrough", "cached"]);
    for r in rounds {
        let requests = r["requests"].as_u64().unwrap();
        assert!(requests > 0, "{r}");
        assert!(
            r["cpu_us_per_req"].is_f64() || r["cpu_us_per_req"].is_u64(),
            "{r}"
        );
        if r["deployment"] == "cached" {
            // Every measured request a hit: none reached the mock.
            assert_eq!(r["hits"].as_u64(), Some(requests), "{r}");
            assert_eq!(r["upstream_requests"], 0, "{r}");
        } else {
            assert_eq!(r["upstream_requests"].as_u64(), Some(requests), "{r}");
            assert!(r["hits"].is_null(), "{r}");
        }
    }
    let ratio = report["cpu_ratio"].as_f64().unwrap();
    assert!(ratio.is_finite() && ratio > 0.0, "{ratio}");

    let heading = "### Hit vs passthrough, whole process (sluice-bench cache)";
    assert!(stdout.contains(heading), "{stdout}");
    assert!(
        markdown.starts_with(&format!(
            "# Results\n\n## Response cache\n\n### Hit path\n\nkept\n\n{heading}\n"
        )),
        "{markdown}"
    );
    assert!(
        markdown.ends_with("\n\n## Later\n\nkept too\n"),
        "{markdown}"
    );
    assert!(!markdown.contains("hand figures"), "{markdown}");
    assert!(
        markdown.contains("\n| `passthrough` (no cache) | "),
        "{markdown}"
    );
    assert!(
        markdown.contains("\n| `cached` (all hits) | "),
        "{markdown}"
    );
    assert!(
        markdown.contains(&format!("**A hit costs {ratio:.2}× the CPU")),
        "{markdown}"
    );
}
