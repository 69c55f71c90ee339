//! What every part of the compiler shares: the injected environment and file reader, and the
//! small checks and parsers used by more than one section (non-empty strings, durations, the
//! line a value sits on). A leaf: it imports no other compiler module.

use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use super::error::Reporter;

/// Looks up an environment variable (`std::env::var` in production, a map in tests).
pub(crate) type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Reads a key file (already resolved against the config file's folder), or says why not.
pub(crate) type ReadFile<'a> = &'a dyn Fn(&Path) -> Result<String, String>;

/// Reads with `std::fs`.
pub(crate) fn system_read(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| e.to_string())
}

/// Parses `"500ms"`, `"10s"`, `"5m"` or `"1h"`: a whole number and a unit.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    const UNITS: &[(&str, u64)] = &[("ms", 1), ("s", 1_000), ("m", 60_000), ("h", 3_600_000)];
    let millis = number_with_unit(text, UNITS).ok_or_else(|| {
        format!(
            "invalid duration `{text}`: expected a whole number and a unit (ms, s, m or h), e.g. \"500ms\", \"10s\", \"5m\""
        )
    })?;
    millis
        .map(Duration::from_millis)
        .ok_or_else(|| format!("duration `{text}` is too long"))
}

/// Parses a size such as `"64MiB"`: a whole number and a unit — `B`, `KiB`, `MiB`, `GiB`
/// (powers of 1024) or `KB`, `MB`, `GB` (powers of 1000).
pub(crate) fn parse_size(text: &str) -> Result<u64, String> {
    const UNITS: &[(&str, u64)] = &[
        ("B", 1),
        ("KiB", 1 << 10),
        ("MiB", 1 << 20),
        ("GiB", 1 << 30),
        ("KB", 1_000),
        ("MB", 1_000_000),
        ("GB", 1_000_000_000),
    ];
    number_with_unit(text, UNITS)
        .ok_or_else(|| {
            format!(
                "invalid size `{text}`: expected a whole number and a unit (B, KiB, MiB, GiB, KB, MB or GB), e.g. \"100MiB\""
            )
        })?
        .ok_or_else(|| format!("size `{text}` is too large"))
}

/// A whole number followed by one of `units` (name, multiplier): `None` when the text is
/// not that; `Some(None)` when the product overflows `u64`.
fn number_with_unit(text: &str, units: &[(&str, u64)]) -> Option<Option<u64>> {
    let digits_end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(digits_end);
    let n: u64 = digits.parse().ok()?;
    let (_, multiplier) = units.iter().find(|(name, _)| *name == unit)?;
    Some(n.checked_mul(*multiplier))
}

/// Reports an empty string; returns whether the value is usable.
pub(crate) fn check_not_empty(
    report: &mut Reporter<'_>,
    value: &Spanned<String>,
    field: &str,
) -> bool {
    if value.get_ref().is_empty() {
        report.at(value.span(), field, "must not be empty");
        false
    } else {
        true
    }
}

pub(crate) fn line_of<T>(report: &Reporter<'_>, value: &Spanned<T>) -> usize {
    report.line_column(value.span().start).0
}

/// A path written in the config, relative to the config file's folder.
pub(crate) fn resolve_path(config: &Path, written: &str) -> PathBuf {
    config.parent().unwrap_or(Path::new("")).join(written)
}

/// Reads a file the config names (`value`, at `field`); a located error if it cannot.
pub(crate) fn read_config_file(
    path: &Path,
    value: &Spanned<String>,
    field: &str,
    report: &mut Reporter<'_>,
    read: ReadFile<'_>,
) -> Option<String> {
    match read(path) {
        Ok(text) => Some(text),
        Err(e) => {
            report.on_host(
                value.span(),
                field,
                format!("cannot read `{}`: {e}", value.get_ref()),
            );
            None
        }
    }
}
