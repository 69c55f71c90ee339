//! Config errors: each names the file, the 1-based line and column, the field path
//! (`backend[1].url`) and what is wrong, so `sluice --check` can print one per line.
//!
//! Messages may name an environment variable but never carry a secret's value.
//!
//! Each error has a [`Scope`]: most are about the document, and every host compiling it
//! would find them; a few are about the host that compiled it (an environment variable unset
//! there, a key file it cannot read, a host name its resolver does not know). The control
//! plane refuses a document for the first kind only: the second is each node's to find, and
//! a node that does answers with a NACK.

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
    /// Whether the problem is in the document or on the host that compiled it.
    pub scope: Scope,
}

/// What a [`ConfigError`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Scope {
    /// The document itself: wrong on every host (a typo, a bad value, a dangling name).
    #[default]
    Document,
    /// The host that compiled it: an environment variable unset or empty, a file named by the
    /// config unreadable, an upstream host name that does not resolve. Another host may
    /// compile the same document cleanly.
    Host,
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

/// Collects errors against one file's text, turning byte offsets into line and column —
/// and, in a document assembled from several files ([`super::document`]), into the line of
/// the file it came from.
pub(crate) struct Reporter<'a> {
    file: &'a Path,
    text: &'a str,
    parts: Vec<super::document::Part>,
    errors: Vec<ConfigError>,
}

impl<'a> Reporter<'a> {
    pub(crate) fn new(file: &'a Path, text: &'a str) -> Self {
        Self {
            file,
            text,
            parts: super::document::parts(text),
            errors: Vec::new(),
        }
    }

    /// Records an error in the document at the start of `span`.
    pub(crate) fn at(
        &mut self,
        span: Range<usize>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) {
        self.push(span, field.into(), message.into(), Scope::Document);
    }

    /// Records an error about this host at the start of `span` (see [`Scope::Host`]).
    pub(crate) fn on_host(
        &mut self,
        span: Range<usize>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) {
        self.push(span, field.into(), message.into(), Scope::Host);
    }

    fn push(&mut self, span: Range<usize>, field: String, message: String, scope: Scope) {
        let (line, column) = line_column(self.text, span.start);
        let (file, line) = match super::document::locate(&self.parts, line) {
            Some((name, line)) => (PathBuf::from(name), line),
            None => (self.file.to_path_buf(), line),
        };
        // Messages from the TOML parser can span lines; keep one error per line.
        let message = message.trim().replace('\n', "; ");
        self.errors.push(ConfigError {
            file,
            line,
            column,
            field,
            message,
            scope,
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
        // Files keep their document order: sort by the part an error is in, then by place.
        let parts = &self.parts;
        self.errors.sort_by_key(|e| {
            let part = parts.iter().position(|p| Path::new(&p.name) == e.file);
            (part, e.line, e.column)
        });
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
            scope: Scope::Document,
        };
        let errors = ConfigErrors(vec![error(1), error(2)]);
        assert_eq!(
            errors.to_string(),
            "s.toml:1:3: backend[0].url: bad\ns.toml:2:3: backend[0].url: bad"
        );
    }
}
