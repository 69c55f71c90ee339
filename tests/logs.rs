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

/// A backend nobody listens on, serving deployment `gpt-4o`: each request logs a warning
/// (`backend unreachable`) that does not name the request itself.
fn unreachable_backend() -> String {
    format!(
        "[[backend]]\nname = \"down\"\nkind = \"openai\"\nurl = \"http://127.0.0.1:{}\"\n\n[[deployment]]\nname = \"gpt-4o\"\nbackends = [{{ backend = \"down\" }}]\n",
        closed_port()
    )
}

#[test]
fn a_line_logged_while_serving_a_request_names_it() {
    let s = Launch::new(&unreachable_backend()).start();
    let resp = post_with(
        &s,
        "/v1/chat/completions",
        &[("x-request-id", "trace-me-1")],
        &chat_body(Some("gpt-4o"), false),
    );
    assert_eq!(resp.status, 502);
    assert!(s.wait_log("backend unreachable", Duration::from_secs(10)));
    let log = s.log();
    let line = log
        .lines()
        .find(|l| l.contains("backend unreachable"))
        .unwrap();
    assert!(line.ends_with(" request_id=trace-me-1"), "{line}");
    // Lines outside any request carry none.
    let started = log.lines().find(|l| l.contains("sluice started")).unwrap();
    assert!(!started.contains("request_id"), "{started}");
}

#[test]
fn a_json_line_logged_while_serving_a_request_names_it() {
    let s = Launch::new(&unreachable_backend())
        .env("SLUICE_LOG_FORMAT", "json")
        .start();
    let resp = post_with(
        &s,
        "/v1/chat/completions",
        &[("x-request-id", "trace-me-2")],
        &chat_body(Some("gpt-4o"), false),
    );
    assert_eq!(resp.status, 502);
    assert!(s.wait_log("backend unreachable", Duration::from_secs(10)));
    let log = s.log();
    let line: Value = log
        .lines()
        .filter(|l| l.contains("backend unreachable"))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .next()
        .unwrap();
    assert_eq!(line["request_id"], "trace-me-2", "{line}");
    assert_eq!(line["level"], "WARN");
}

#[test]
fn a_client_request_id_shaped_like_a_credential_is_replaced_before_any_line_names_it() {
    let s = Launch::new(&unreachable_backend()).start();
    // An OpenAI-style key and 32 hex digits (an Azure key's shape), each a valid id otherwise.
    let leaks = [
        "sk-abcdefghijklmnopqrstuvwxyz012345",
        "0123456789abcdef0123456789abcdef",
    ];
    for leak in leaks {
        let resp = post_with(
            &s,
            "/v1/chat/completions",
            &[("x-request-id", leak)],
            &chat_body(Some("gpt-4o"), false),
        );
        assert_eq!(resp.status, 502);
        let id = resp.header("x-request-id").unwrap();
        assert!(!id.is_empty() && id != leak, "{id}");
        assert!(!resp.text().contains(leak));
    }
    assert!(s.wait_log("backend unreachable", Duration::from_secs(10)));
    let log = s.log();
    for leak in leaks {
        assert!(!log.contains(leak), "{log}");
    }
}
