//! How long a backend that refused a request (429, or a 5xx Sluice retries) asks to be left
//! alone, from its own answer's headers, in order:
//!
//! 1. `retry-after-ms`: milliseconds (Azure OpenAI, the OpenAI SDKs), a number ≥ 0;
//! 2. `retry-after` (RFC 9110 §10.2.3): delay-seconds, or an HTTP-date (§5.6.7: IMF-fixdate,
//!    and the obsolete RFC 850 and asctime forms), counted from now;
//! 3. `x-ratelimit-reset-requests` / `x-ratelimit-reset-tokens` (OpenAI): durations such as
//!    `6s`, `1m30s`, `250ms`, `1h2m3.5s`; the longer of the two when both are sent.
//!
//! A value that does not parse, is negative (Azure and some OpenAI-compatible servers send
//! `-1`) or is a date already past is skipped for the next source; `None` when none says
//! anything (the caller's default applies). The caller caps what is found (the deployment's
//! `retry.max_cool_down`, so a backend asking for an hour is tried again sooner rather than
//! taken out of the pool on its word).

use std::time::{Duration, SystemTime};

/// The cool-down `header` (a case-insensitive lookup of the answer's headers) asks for at
/// `now` (at most 10⁹ s).
pub fn requested<'h>(
    header: impl Fn(&str) -> Option<&'h str>,
    now: SystemTime,
) -> Option<Duration> {
    let ms = header("retry-after-ms")
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|ms| ms.is_finite() && *ms >= 0.0)
        .map(|ms| Duration::from_secs_f64(ms.min(1e12) / 1000.0));
    let after = || header("retry-after").and_then(|v| retry_after_at(v.trim(), now));
    let reset = || {
        ["x-ratelimit-reset-requests", "x-ratelimit-reset-tokens"]
            .into_iter()
            .filter_map(|name| header(name).and_then(|v| go_duration(v.trim())))
            .max()
    };
    ms.or_else(after).or_else(reset)
}

/// `retry-after` at `now`: delay-seconds (digits only), or an HTTP-date still to come.
fn retry_after_at(value: &str, now: SystemTime) -> Option<Duration> {
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        return value.parse::<u64>().ok().map(Duration::from_secs);
    }
    let at = httpdate::parse_http_date(value).ok()?;
    at.duration_since(now).ok().filter(|d| !d.is_zero())
}

/// A duration written as Go's `time.Duration` prints it, as OpenAI sends its reset headers:
/// one or more of a decimal number and a unit (`h`, `m`, `s`, `ms`, `us`/`µs`, `ns`), e.g.
/// `6s`, `1m30s`, `250ms`, `0.5s`. `None` for anything else (a negative value included).
pub fn go_duration(text: &str) -> Option<Duration> {
    if text.is_empty() {
        return None;
    }
    let mut rest = text;
    let mut total = 0f64;
    while !rest.is_empty() {
        let number_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..number_end].parse().ok()?;
        rest = &rest[number_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds_per = match &rest[..unit_end] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        rest = &rest[unit_end..];
        total += number * seconds_per;
    }
    (total.is_finite() && total >= 0.0).then(|| Duration::from_secs_f64(total.min(1e9)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn asked(headers: &[(&str, &str)], now: SystemTime) -> Option<Duration> {
        requested(
            |name| {
                headers
                    .iter()
                    .find(|(n, _)| n.eq_ignore_ascii_case(name))
                    .map(|(_, v)| *v)
            },
            now,
        )
    }

    #[test]
    fn retry_after_ms_then_retry_after_then_the_reset_headers() {
        let now = SystemTime::now();
        assert_eq!(
            asked(&[("retry-after-ms", "1500")], now),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            asked(&[("retry-after", "4"), ("retry-after-ms", "800")], now),
            Some(Duration::from_millis(800))
        );
        assert_eq!(
            asked(&[("Retry-After", "7")], now),
            Some(Duration::from_secs(7))
        );
        assert_eq!(
            asked(
                &[
                    ("x-ratelimit-reset-tokens", "1m30s"),
                    ("x-ratelimit-reset-requests", "6s")
                ],
                now
            ),
            Some(Duration::from_secs(90)),
            "the longer of the two"
        );
        assert_eq!(
            asked(&[("x-ratelimit-reset-requests", "250ms")], now),
            Some(Duration::from_millis(250))
        );
        assert_eq!(asked(&[], now), None);
    }

    #[test]
    fn an_http_date_counts_from_now_in_all_three_forms() {
        let now = httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:30 GMT").unwrap();
        for form in [
            "Sun, 06 Nov 1994 08:49:37 GMT",
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun Nov  6 08:49:37 1994",
        ] {
            assert_eq!(
                retry_after_at(form, now),
                Some(Duration::from_secs(7)),
                "{form}"
            );
        }
        // Past or now: nothing to wait for (the next source, or the default, decides).
        assert_eq!(retry_after_at("Sun, 06 Nov 1994 08:49:30 GMT", now), None);
        assert_eq!(retry_after_at("Sun, 06 Nov 1994 08:00:00 GMT", now), None);
    }

    #[test]
    fn minus_one_garbage_and_past_dates_are_skipped() {
        let now = SystemTime::now();
        assert_eq!(asked(&[("retry-after-ms", "-1")], now), None);
        assert_eq!(asked(&[("retry-after", "-1")], now), None);
        assert_eq!(
            asked(&[("retry-after-ms", "-1"), ("retry-after", "3")], now),
            Some(Duration::from_secs(3))
        );
        assert_eq!(
            asked(&[("retry-after-ms", "NaN"), ("retry-after", "soon")], now),
            None
        );
        assert_eq!(asked(&[("retry-after", "99999999999999999999")], now), None);
        assert_eq!(
            asked(&[("retry-after", "86400")], now),
            Some(Duration::from_secs(86400)),
            "read whole; the deployment's max_cool_down caps it"
        );
        assert_eq!(asked(&[("x-ratelimit-reset-tokens", "-6s")], now), None);
        assert_eq!(asked(&[("x-ratelimit-reset-tokens", "6x")], now), None);
        assert_eq!(
            go_duration("1h2m3.5s"),
            Some(Duration::from_secs_f64(3723.5))
        );
        assert_eq!(go_duration(""), None);
    }
}
