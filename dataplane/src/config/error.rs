//! Config errors: each names the file, the 1-based line and column, the field path
//! (`backend[1].url`) and what is wrong, so `sluice --check` can print one per line.
//!
//! Messages may name an environment variable but never carry a secret's value.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// One problem in a config file.
///
/// Displays as `FILE:LINE:COL: FIELD: MESSAGE` on a single line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The config file.
    pub file: PathBuf,
    /// 1-based line of the offending value (or of its table's header).
    pub line: usize,
    /// 1-based column, counted in characters.
    pub column: usize,
    /// Field path such as `backend[1].url` or `server.limits.max_headers`; indexes are
    /// 0-based positions among the `[[backend]]` / `[[deployment]]` tables.
    pub field: String,
    /// What is wrong, on one line.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}: {}",
            self.file.display(),
            self.line,
            self.column,
            self.field,
            self.message
        )
    }
}

impl std::error::Error for ConfigError {}

/// Every problem found in a config file, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Collects errors against one file's text, turning byte offsets into line and column.
pub(crate) struct Reporter<'a> {
    file: &'a Path,
    text: &'a str,
    errors: Vec<ConfigError>,
}

impl<'a> Reporter<'a> {
    pub(crate) fn new(file: &'a Path, text: &'a str) -> Self {
        Self {
            file,
            text,
            errors: Vec::new(),
        }
    }

    /// Records an error at the start of `span`.
    pub(crate) fn at(
        &mut self,
        span: Range<usize>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) {
        let (line, column) = line_column(self.text, span.start);
        // Messages from the TOML parser can span lines; keep one error per line.
        let message = message.into().trim().replace('\n', "; ");
        self.errors.push(ConfigError {
            file: self.file.to_path_buf(),
            line,
            column,
            field: field.into(),
            message,
        });
    }

    /// 1-based line and column of byte `offset` in this file.
    pub(crate) fn line_column(&self, offset: usize) -> (usize, usize) {
        line_column(self.text, offset)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }

    /// The errors sorted by position (stable, so errors at one spot keep their order).
    pub(crate) fn finish(mut self) -> ConfigErrors {
        self.errors.sort_by_key(|e| (e.line, e.column));
        ConfigErrors(self.errors)
    }
}

/// 1-based line and character column of byte `offset` in `text`.
pub(crate) fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_become_one_based_lines_and_character_columns() {
        let text = "a = 1\nbé = 2\n";
        assert_eq!(line_column(text, 0), (1, 1));
        assert_eq!(line_column(text, 4), (1, 5));
        assert_eq!(line_column(text, 6), (2, 1));
        // "bé = " is 6 bytes but 5 characters.
        assert_eq!(line_column(text, 12), (2, 6));
        assert_eq!(line_column(text, 999), (3, 1));
    }

    #[test]
    fn errors_render_one_per_line() {
        let error = |line| ConfigError {
            file: PathBuf::from("s.toml"),
            line,
            column: 3,
            field: "backend[0].url".into(),
            message: "bad".into(),
        };
        let errors = ConfigErrors(vec![error(1), error(2)]);
        assert_eq!(
            errors.to_string(),
            "s.toml:1:3: backend[0].url: bad\ns.toml:2:3: backend[0].url: bad"
        );
    }
}
