//! A deployment's `retry` and `outlier_detection`: defaults, what a full table compiles
//! into, and every error with its line, column and field.

use super::*;
use crate::snapshot::{OutlierDetection, RetryPolicy};

/// A second deployment `e` (lines 9-11), then `extra` (line 12).
fn deployment(extra: &str) -> String {
    format!("{MOCK_DEPLOYMENT}\n[[deployment]]\nname = \"e\"\nbackends = [{{ backend = \"m\" }}]\n{extra}")
}

#[test]
fn defaults_and_a_full_table() {
    let snapshot = compile(&deployment("")).unwrap();
    let e = &snapshot.deployments["e"];
    assert_eq!(e.retry, RetryPolicy::default());
    assert_eq!(e.retry.max_attempts, 3);
    assert_eq!(e.retry.retriable_status_codes, [500, 502, 503, 504]);
    assert_eq!(e.retry.max_cool_down, Duration::from_secs(60));
    assert_eq!(e.outlier_detection, OutlierDetection::default());

    let snapshot = compile(&deployment(concat!(
        "retry = { max_attempts = 5, per_try_timeout = \"2s\", total_timeout = \"30s\", ",
        "retriable_status_codes = [503], max_cool_down = \"10s\" }\n",
        "outlier_detection = { consecutive_failures = 3, base_ejection_time = \"10s\", ",
        "max_ejection_time = \"1m\", max_ejected_percent = 100 }",
    )))
    .unwrap();
    let e = &snapshot.deployments["e"];
    assert_eq!(
        e.retry,
        RetryPolicy {
            max_attempts: 5,
            per_try_timeout: Some(Duration::from_secs(2)),
            total_timeout: Some(Duration::from_secs(30)),
            retriable_status_codes: vec![503],
            max_cool_down: Duration::from_secs(10),
        }
    );
    assert_eq!(
        e.outlier_detection,
        OutlierDetection {
            consecutive_failures: 3,
            base_ejection_time: Duration::from_secs(10),
            max_ejection_time: Duration::from_secs(60),
            max_ejected_percent: 100,
        }
    );
    // An empty list retries no 5xx (429s still are).
    let snapshot = compile(&deployment("retry = { retriable_status_codes = [] }")).unwrap();
    assert!(snapshot.deployments["e"]
        .retry
        .retriable_status_codes
        .is_empty());
}

#[test]
fn errors_name_line_column_and_field() {
    let cases = [
        (
            "retry = { max_attempts = 0 }",
            "sluice.toml:12:26: deployment[1].retry.max_attempts: must be 1 to 10 (1: no retries)",
        ),
        (
            "retry = { max_attempts = 11 }",
            "sluice.toml:12:26: deployment[1].retry.max_attempts: must be 1 to 10 (1: no retries)",
        ),
        (
            "retry = { per_try_timeout = \"0s\" }",
            "sluice.toml:12:29: deployment[1].retry.per_try_timeout: must be more than 0",
        ),
        (
            "retry = { total_timeout = \"soon\" }",
            "sluice.toml:12:27: deployment[1].retry.total_timeout: invalid duration `soon`: expected a whole number and a unit (ms, s, m or h), e.g. \"500ms\", \"10s\", \"5m\"",
        ),
        (
            "retry = { per_try_timeout = \"5s\", total_timeout = \"1s\" }",
            "sluice.toml:12:29: deployment[1].retry.per_try_timeout: is longer than `total_timeout`: no attempt could use it whole",
        ),
        (
            "retry = { retriable_status_codes = [503, 429] }",
            "sluice.toml:12:42: deployment[1].retry.retriable_status_codes[1]: `429` is not a 5xx status: only 500–599 can be listed (a 429 is always retried)",
        ),
        (
            "retry = { max_cool_down = \"0ms\" }",
            "sluice.toml:12:27: deployment[1].retry.max_cool_down: must be more than 0",
        ),
        (
            "retry = { attempts = 3 }",
            "sluice.toml:12:11: deployment[1].retry.attempts: unknown field `attempts`, expected one of `max_attempts`, `per_try_timeout`, `total_timeout`, `retriable_status_codes`, `max_cool_down`",
        ),
        (
            "outlier_detection = { consecutive_failures = 0 }",
            "sluice.toml:12:46: deployment[1].outlier_detection.consecutive_failures: must be 1 or more",
        ),
        (
            "outlier_detection = { base_ejection_time = \"2m\", max_ejection_time = \"1m\" }",
            "sluice.toml:12:70: deployment[1].outlier_detection.max_ejection_time: is shorter than `base_ejection_time`",
        ),
        (
            "outlier_detection = { max_ejected_percent = 101 }",
            "sluice.toml:12:45: deployment[1].outlier_detection.max_ejected_percent: must be 0 to 100",
        ),
    ];
    for (extra, expected) in cases {
        assert_error(&deployment(extra), expected);
    }
}

#[test]
fn a_health_check_is_checked() {
    let backend = |kind: &str, check: &str| {
        format!(
            "[[backend]]\nname = \"m\"\nkind = \"{kind}\"\n{}health_check = {{ {check} }}\n\n[[deployment]]\nname = \"d\"\nbackends = [{{ backend = \"m\" }}]\n",
            if kind == "mock" { "" } else { "url = \"http://127.0.0.1:9\"\n" }
        )
    };
    let snapshot = compile(&backend("openai", "path = \"/healthz\"")).unwrap();
    assert_eq!(
        snapshot.backends[0].health_check,
        Some(crate::snapshot::HealthCheck {
            path: "/healthz".into(),
            interval: Duration::from_secs(10),
            timeout: Duration::from_secs(2),
            expected_status: 200,
            unhealthy_threshold: 2,
            healthy_threshold: 1,
        })
    );
    for (kind, check, expected) in [
        (
            "mock",
            "path = \"/h\"",
            "sluice.toml:4:16: backend[0].health_check: only `azure` and `openai` backends take a health check",
        ),
        (
            "openai",
            "path = \"healthz\"",
            "sluice.toml:5:25: backend[0].health_check.path: must start with `/` and hold no spaces or control characters, e.g. \"/healthz\"",
        ),
        (
            "openai",
            "path = \"/h\", interval = \"0s\"",
            "sluice.toml:5:42: backend[0].health_check.interval: must be more than 0",
        ),
        (
            "openai",
            "path = \"/h\", expected_status = 42",
            "sluice.toml:5:49: backend[0].health_check.expected_status: must be an HTTP status, 100–599",
        ),
        (
            "openai",
            "path = \"/h\", healthy_threshold = 0",
            "sluice.toml:5:51: backend[0].health_check.healthy_threshold: must be 1 or more",
        ),
        (
            "openai",
            "path = \"/h\", interval = \"500ms\"",
            "sluice.toml:5:42: backend[0].health_check.interval: must be at least 1s: each probe is a request to the backend",
        ),
        (
            "openai",
            "path = \"/h\", interval = \"2s\", timeout = \"5s\"",
            "sluice.toml:5:58: backend[0].health_check.timeout: is longer than the interval (2s): a probe must end before the next is due",
        ),
        (
            "openai",
            "interval = \"1s\"",
            "sluice.toml:5:16: backend[0].health_check.path: missing field `path`",
        ),
    ] {
        assert_error(&backend(kind, check), expected);
    }
}
