//! Compiles a deployment's `retry = { … }` and `outlier_detection = { … }` into
//! [`RetryPolicy`] and [`OutlierDetection`]; what is not written keeps its default.

use std::time::Duration;

use toml::Spanned;

use super::check::parse_duration;
use super::error::Reporter;
use super::schema::{OutlierDetectionSection, RetrySection};
use crate::snapshot::{OutlierDetection, RetryPolicy};

/// Most attempts `retry.max_attempts` allows.
const MAX_ATTEMPTS: u32 = 10;

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
