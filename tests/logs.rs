//! The process log as a file or a log shipper sees it: plain text without colour codes when
//! stderr is not a terminal, and one JSON object per line with `--log-format json`
//! (`SLUICE_LOG_FORMAT=json`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use serde_json::Value;
use support::*;

#[test]
fn a_log_written_to_a_file_has_no_colour_codes() {
    let s = Launch::new(MOCK_BODY).start();
    assert_eq!(s.get("/v1/models").status, 200);
    let log = s.log();
    assert!(log.contains("sluice started"), "{log}");
    assert!(!log.contains('\u{1b}'), "ANSI escapes in a file: {log:?}");
}

#[test]
fn json_logs_are_one_object_per_line() {
    let s = Launch::new(MOCK_BODY)
        .env("SLUICE_LOG_FORMAT", "json")
        .start();
    assert_eq!(s.get("/v1/models").status, 200);
    assert!(s.wait_log("sluice started", Duration::from_secs(10)));
    let log = s.log();
    let lines: Vec<Value> = log
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    assert!(lines.len() >= 2, "{log}");
    for line in &lines {
        assert!(
            line["level"].is_string() && line["timestamp"].is_string(),
            "{line}"
        );
    }
    assert!(
        lines.iter().any(|l| l["fields"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("sluice started"))),
        "{log}"
    );
}
