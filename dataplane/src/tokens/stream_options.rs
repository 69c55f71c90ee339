//! Whether a backend accepts `stream_options` in a chat or completions request, so Sluice
//! adds `stream_options.include_usage` only where the backend will take it (a rewrite Sluice
//! makes must be one the chosen backend accepts; issue 8, item 5).
//!
//! The per-backend setting is [`StreamOptions`] (`[[backend]] stream_options`); `auto`
//! resolves by backend kind and, for Azure, by the `api-version` Sluice sends
//! ([`azure_accepts_stream_options`]). Pure: decided once when the config is compiled, so
//! each upstream attempt only reads a bool.

use std::str::FromStr;

/// The first Azure OpenAI preview API version that accepts `stream_options`: the Azure
/// OpenAI API version lifecycle page lists, under "Changes between 2024-09-01-preview and
/// 2024-08-01-preview", "`stream_options` & `include_usage` added"
/// (<https://learn.microsoft.com/azure/ai-services/openai/api-version-deprecation>).
pub const FIRST_PREVIEW_WITH_STREAM_OPTIONS: (u16, u8, u8) = (2024, 9, 1);

/// The first generally available Azure OpenAI API version that accepts `stream_options`:
/// `2024-10-21` (its REST reference defines `stream_options.include_usage` for chat
/// completions and completions; the GA before it, `2024-06-01`, refuses the field with
/// 400 "Unrecognized request argument supplied: stream_options").
pub const FIRST_GA_WITH_STREAM_OPTIONS: (u16, u8, u8) = (2024, 10, 21);

/// A backend's `stream_options` setting. Default [`StreamOptions::Auto`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum StreamOptions {
    /// Decide by kind: `openai` backends and the built-in mock accept it; `azure` backends by
    /// their `api_version` ([`azure_accepts_stream_options`]).
    #[default]
    Auto,
    /// The backend accepts `stream_options` and sends the usage chunk when asked.
    Supported,
    /// The backend refuses `stream_options`, or ignores it and never sends a usage chunk:
    /// Sluice never adds it, and counts streamed completions itself.
    Unsupported,
}

/// A `stream_options` value that is not `"auto"`, `"supported"` or `"unsupported"`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown stream_options `{0}`: expected \"auto\", \"supported\" or \"unsupported\"")]
pub struct UnknownStreamOptions(pub String);

impl FromStr for StreamOptions {
    type Err = UnknownStreamOptions;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(StreamOptions::Auto),
            "supported" => Ok(StreamOptions::Supported),
            "unsupported" => Ok(StreamOptions::Unsupported),
            other => Err(UnknownStreamOptions(other.to_string())),
        }
    }
}

impl StreamOptions {
    /// Resolves the setting: `auto_answer` is what the backend's kind (and version) implies.
    pub fn accepts(self, auto_answer: bool) -> bool {
        match self {
            StreamOptions::Auto => auto_answer,
            StreamOptions::Supported => true,
            StreamOptions::Unsupported => false,
        }
    }
}

/// Whether an Azure OpenAI `api-version` accepts `stream_options`.
///
/// The version is read as `YYYY-MM-DD` (generally available) or `YYYY-MM-DD-preview`:
/// a GA version accepts it from [`FIRST_GA_WITH_STREAM_OPTIONS`] on, a preview from
/// [`FIRST_PREVIEW_WITH_STREAM_OPTIONS`] on (later versions keep the field: Azure adds
/// request fields, it has not removed this one). Anything else — a malformed date, another
/// suffix, `latest`, `preview`, `v1` — is not known to accept it and reads as false: Sluice
/// then does not add the field and counts the stream itself, which costs accuracy, never
/// the request (a backend that does accept it can be declared `stream_options =
/// "supported"`).
pub fn azure_accepts_stream_options(api_version: &str) -> bool {
    let (date, preview) = match api_version.strip_suffix("-preview") {
        Some(date) => (date, true),
        None => (api_version, false),
    };
    let Some(date) = parse_date(date) else {
        return false;
    };
    date >= if preview {
        FIRST_PREVIEW_WITH_STREAM_OPTIONS
    } else {
        FIRST_GA_WITH_STREAM_OPTIONS
    }
}

/// `YYYY-MM-DD` with exactly those digits and a plausible month and day.
fn parse_date(s: &str) -> Option<(u16, u8, u8)> {
    let b = s.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let digits = |r: std::ops::Range<usize>| -> Option<u16> {
        b[r].iter().try_fold(0u16, |n, &c| {
            c.is_ascii_digit().then(|| n * 10 + u16::from(c - b'0'))
        })
    };
    let year = digits(0..4)?;
    let month = u8::try_from(digits(5..7)?).ok()?;
    let day = u8::try_from(digits(8..10)?).ok()?;
    ((1..=12).contains(&month) && (1..=31).contains(&day)).then_some((year, month, day))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_ga_and_preview_versions_do_not_accept_stream_options() {
        for v in [
            "2022-12-01",
            "2023-05-15",
            "2024-02-01",
            "2024-06-01",
            "2023-12-01-preview",
            "2024-02-15-preview",
            "2024-05-01-preview",
            "2024-07-01-preview",
            "2024-08-01-preview",
        ] {
            assert!(!azure_accepts_stream_options(v), "{v}");
        }
    }

    #[test]
    fn versions_from_the_first_ones_with_stream_options_accept_it() {
        for v in [
            "2024-09-01-preview",
            "2024-10-01-preview",
            "2024-10-21",
            "2024-12-01-preview",
            "2025-01-01-preview",
            "2025-03-01-preview",
            "2025-04-01-preview",
            "2026-01-01",
        ] {
            assert!(azure_accepts_stream_options(v), "{v}");
        }
    }

    #[test]
    fn ga_dates_between_the_first_preview_and_the_first_ga_do_not() {
        // A GA version is a different line from the previews: 2024-09-01 as GA is not known.
        assert!(!azure_accepts_stream_options("2024-09-01"));
        assert!(!azure_accepts_stream_options("2024-10-20"));
    }

    #[test]
    fn unparsable_versions_read_as_not_accepting() {
        for v in [
            "",
            "latest",
            "preview",
            "v1",
            "2024-10-21-beta",
            "2024-10-21preview",
            "2024-1-21",
            "2024-13-01",
            "2024-10-00",
            "2024-10-32",
            "２０２４-10-21",
            "2024-10-21 ",
            "-preview",
        ] {
            assert!(!azure_accepts_stream_options(v), "{v:?}");
        }
    }

    #[test]
    fn settings_parse_and_resolve() {
        assert_eq!("auto".parse(), Ok(StreamOptions::Auto));
        assert_eq!("supported".parse(), Ok(StreamOptions::Supported));
        assert_eq!("unsupported".parse(), Ok(StreamOptions::Unsupported));
        assert!("Supported".parse::<StreamOptions>().is_err());
        assert!("yes".parse::<StreamOptions>().is_err());
        for auto in [true, false] {
            assert_eq!(StreamOptions::Auto.accepts(auto), auto);
            assert!(StreamOptions::Supported.accepts(auto));
            assert!(!StreamOptions::Unsupported.accepts(auto));
        }
    }
}
