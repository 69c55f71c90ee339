//! Compiles a deployment's `retry = { … }` and `outlier_detection = { … }` into
//! [`RetryPolicy`] and [`OutlierDetection`], and a backend's `health_check = { … }` into
//! [`HealthCheck`]; what is not written keeps its default.

use std::time::Duration;

use toml::Spanned;

use super::check::parse_duration;
use super::error::Reporter;
use super::schema::{BackendSection, OutlierDetectionSection, RetrySection};
use crate::snapshot::{HealthCheck, OutlierDetection, RetryPolicy};

/// Most attempts `retry.max_attempts` allows.
const MAX_ATTEMPTS: u32 = 10;

/// The shortest `health_check.interval`: each probe is a request to the backend (and may
/// spend its quota).
const MIN_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// `deployment[i].retry`: `field` is `deployment[i]`.
pub(crate) fn compile_retry(
    section: Option<&Spanned<RetrySection>>,
    field: &str,
    report: &mut Reporter<'_>,
) -> RetryPolicy {
    let mut policy = RetryPolicy::default();
    let Some(section) = section else {
        return policy;
    };
    let r = section.get_ref();
    let field = format!("{field}.retry");
    if let Some(v) = &r.max_attempts {
        if (1..=MAX_ATTEMPTS).contains(v.get_ref()) {
            policy.max_attempts = *v.get_ref();
        } else {
            report.at(
                v.span(),
                format!("{field}.max_attempts"),
                format!("must be 1 to {MAX_ATTEMPTS} (1: no retries)"),
            );
        }
    }
    policy.per_try_timeout =
        positive_duration(&r.per_try_timeout, &field, "per_try_timeout", report);
    policy.total_timeout = positive_duration(&r.total_timeout, &field, "total_timeout", report);
    if let Some(max) = positive_duration(&r.max_cool_down, &field, "max_cool_down", report) {
        policy.max_cool_down = max;
    }
    if let Some(list) = &r.retriable_status_codes {
        policy.retriable_status_codes.clear();
        for (j, code) in list.get_ref().iter().enumerate() {
            if (500..=599).contains(code.get_ref()) {
                policy.retriable_status_codes.push(*code.get_ref());
            } else {
                report.at(
                    code.span(),
                    format!("{field}.retriable_status_codes[{j}]"),
                    format!(
                        "`{}` is not a 5xx status: only 500–599 can be listed (a 429 is always retried)",
                        code.get_ref()
                    ),
                );
            }
        }
    }
    if let (Some(per_try), Some(total)) = (policy.per_try_timeout, policy.total_timeout) {
        if per_try > total {
            if let Some(v) = &r.per_try_timeout {
                report.at(
                    v.span(),
                    format!("{field}.per_try_timeout"),
                    "is longer than `total_timeout`: no attempt could use it whole",
                );
            }
        }
    }
    policy
}

/// `deployment[i].outlier_detection`: `field` is `deployment[i]`.
pub(crate) fn compile_outlier_detection(
    section: Option<&Spanned<OutlierDetectionSection>>,
    field: &str,
    report: &mut Reporter<'_>,
) -> OutlierDetection {
    let mut od = OutlierDetection::default();
    let Some(section) = section else {
        return od;
    };
    let o = section.get_ref();
    let field = format!("{field}.outlier_detection");
    if let Some(v) = &o.consecutive_failures {
        if *v.get_ref() == 0 {
            report.at(
                v.span(),
                format!("{field}.consecutive_failures"),
                "must be 1 or more",
            );
        } else {
            od.consecutive_failures = *v.get_ref();
        }
    }
    if let Some(base) =
        positive_duration(&o.base_ejection_time, &field, "base_ejection_time", report)
    {
        od.base_ejection_time = base;
    }
    if let Some(max) = positive_duration(&o.max_ejection_time, &field, "max_ejection_time", report)
    {
        od.max_ejection_time = max;
    }
    if od.max_ejection_time < od.base_ejection_time {
        let span = o
            .max_ejection_time
            .as_ref()
            .or(o.base_ejection_time.as_ref())
            .map_or(section.span(), Spanned::span);
        report.at(
            span,
            format!("{field}.max_ejection_time"),
            "is shorter than `base_ejection_time`",
        );
    }
    if let Some(v) = &o.max_ejected_percent {
        if *v.get_ref() > 100 {
            report.at(
                v.span(),
                format!("{field}.max_ejected_percent"),
                "must be 0 to 100",
            );
        } else {
            od.max_ejected_percent = *v.get_ref();
        }
    }
    od
}

/// A duration field that must be more than zero; reports and gives `None` otherwise.
fn positive_duration(
    value: &Option<Spanned<String>>,
    field: &str,
    name: &str,
    report: &mut Reporter<'_>,
) -> Option<Duration> {
    let v = value.as_ref()?;
    match parse_duration(v.get_ref()) {
        Ok(d) if d.is_zero() => {
            report.at(v.span(), format!("{field}.{name}"), "must be more than 0");
            None
        }
        Ok(d) => Some(d),
        Err(message) => {
            report.at(v.span(), format!("{field}.{name}"), message);
            None
        }
    }
}

/// `backend[i].health_check`: `field` is `backend[i]`; only `azure` and `openai` backends
/// take one.
pub(crate) fn compile_health_check(
    backend: &BackendSection,
    field: &str,
    report: &mut Reporter<'_>,
) -> Option<HealthCheck> {
    let section = backend.health_check.as_ref()?;
    let field = format!("{field}.health_check");
    if !matches!(backend.kind.get_ref().as_str(), "azure" | "openai") {
        report.at(
            section.span(),
            field,
            "only `azure` and `openai` backends take a health check",
        );
        return None;
    }
    let h = section.get_ref();
    let path = h.path.get_ref();
    if !path.starts_with('/') || path.bytes().any(|b| b <= b' ' || b == 0x7f) {
        report.at(
            h.path.span(),
            format!("{field}.path"),
            "must start with `/` and hold no spaces or control characters, e.g. \"/healthz\"",
        );
    }
    let mut check = HealthCheck {
        path: path.clone(),
        interval: Duration::from_secs(10),
        timeout: Duration::from_secs(2),
        expected_status: 200,
        unhealthy_threshold: 2,
        healthy_threshold: 1,
    };
    if let Some(d) = positive_duration(&h.interval, &field, "interval", report) {
        if d < MIN_CHECK_INTERVAL {
            if let Some(v) = &h.interval {
                report.at(
                    v.span(),
                    format!("{field}.interval"),
                    "must be at least 1s: each probe is a request to the backend",
                );
            }
        }
        check.interval = d;
    }
    // Default: 2 s, or the interval when that is shorter.
    check.timeout = check.timeout.min(check.interval);
    if let Some(d) = positive_duration(&h.timeout, &field, "timeout", report) {
        if d > check.interval {
            if let Some(v) = &h.timeout {
                report.at(
                    v.span(),
                    format!("{field}.timeout"),
                    format!(
                        "is longer than the interval ({:?}): a probe must end before the next is due",
                        check.interval
                    ),
                );
            }
        }
        check.timeout = d;
    }
    if let Some(v) = &h.expected_status {
        if (100..=599).contains(v.get_ref()) {
            check.expected_status = *v.get_ref();
        } else {
            report.at(
                v.span(),
                format!("{field}.expected_status"),
                "must be an HTTP status, 100–599",
            );
        }
    }
    for (value, name, slot) in [
        (
            &h.unhealthy_threshold,
            "unhealthy_threshold",
            &mut check.unhealthy_threshold,
        ),
        (
            &h.healthy_threshold,
            "healthy_threshold",
            &mut check.healthy_threshold,
        ),
    ] {
        if let Some(v) = value {
            if *v.get_ref() == 0 {
                report.at(v.span(), format!("{field}.{name}"), "must be 1 or more");
            } else {
                *slot = *v.get_ref();
            }
        }
    }
    Some(check)
}
