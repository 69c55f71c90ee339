//! A config document assembled from several files: a folder of TOML files (usually a git
//! checkout) becomes one document, the files in name order, each preceded by a marker line
//! naming it. The control plane pushes the assembled text; whoever compiles it — the control
//! plane validating, a node applying — reports each error at the file and line it came from,
//! because [`super::error::Reporter`] reads the markers back ([`parts`], [`locate`]).
//!
//! Files are concatenated, so TOML's own rules decide what two files may both say: two
//! `[server]` tables are a duplicate-key error located in the second file, while
//! `[[backend]]` tables from several files make one list. A key outside any table can only
//! sit in the first file (after another file it would land in that file's last table), so
//! [`assemble`] refuses one anywhere else.

use super::error::{line_column, ConfigError, ConfigErrors, Scope};

/// Starts the line that opens each file's part of an assembled document; the file's name
/// follows.
const MARKER: &str = "#@sluice-file: ";

/// One file's part of an assembled document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Part {
    /// The file's name, as given to [`assemble`].
    pub name: String,
    /// The 1-based line of the part's marker: the file's line `n` is the document's line
    /// `marker_line + n`.
    pub marker_line: usize,
}

/// Assembles `files` — `(name, text)` pairs in the order given (callers sort by name) — into
/// one document, or refuses with every problem located in its own file: a file that is not
/// valid TOML on its own, a line that would read as a marker, or a key outside any table in
/// a file that is not the first. One file comes back with its marker too, so its errors name
/// it.
pub fn assemble<'a>(
    files: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<String, ConfigErrors> {
    let mut document = String::new();
    let mut errors = Vec::new();
    for (index, (name, text)) in files.into_iter().enumerate() {
        let error = |offset: usize, field: &str, message: String| {
            let (line, column) = line_column(text, offset);
            ConfigError {
                file: name.into(),
                line,
                column,
                field: field.to_string(),
                message,
                scope: Scope::Document,
            }
        };
        if let Some(offset) = marker_offset(text) {
            errors.push(error(
                offset,
                "(file)",
                format!(
                    "a line may not start with `{}`: Sluice marks files with it",
                    MARKER.trim_end()
                ),
            ));
        }
        match toml_edit::ImDocument::parse(text) {
            Err(e) => {
                let offset = e.span().map_or(0, |s| s.start);
                errors.push(error(
                    offset,
                    "(syntax)",
                    e.message().trim().replace('\n', "; "),
                ));
            }
            Ok(doc) if index > 0 => {
                for (key, item) in doc.as_table().iter() {
                    let loose = match item {
                        toml_edit::Item::Table(t) => t.is_dotted(),
                        toml_edit::Item::ArrayOfTables(_) | toml_edit::Item::None => false,
                        toml_edit::Item::Value(_) => true,
                    };
                    if loose {
                        let offset = doc
                            .as_table()
                            .key(key)
                            .and_then(toml_edit::Key::span)
                            .map_or(0, |s| s.start);
                        errors.push(error(
                            offset,
                            key,
                            "a key outside any table may only be in the first file (files are read in name order): put it under a table header".to_string(),
                        ));
                    }
                }
            }
            Ok(_) => {}
        }
        document.push_str(MARKER);
        document.push_str(name);
        document.push('\n');
        document.push_str(text);
        if !text.ends_with('\n') {
            document.push('\n');
        }
    }
    if errors.is_empty() {
        Ok(document)
    } else {
        Err(ConfigErrors(errors))
    }
}

/// The byte offset of the first line of `text` that starts with the marker.
fn marker_offset(text: &str) -> Option<usize> {
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        if line.starts_with(MARKER) {
            return Some(offset);
        }
        offset += line.len();
    }
    None
}

/// The parts of an assembled document, in order; empty for a document of one plain file.
pub(crate) fn parts(text: &str) -> Vec<Part> {
    text.lines()
        .enumerate()
        .filter_map(|(i, line)| {
            line.strip_prefix(MARKER).map(|name| Part {
                name: name.to_string(),
                marker_line: i + 1,
            })
        })
        .collect()
}

/// The file and file line of document line `line`: `None` when the document has no parts
/// or the line precedes the first.
pub(crate) fn locate(parts: &[Part], line: usize) -> Option<(&str, usize)> {
    let part = parts.iter().rev().find(|p| p.marker_line < line)?;
    Some((&part.name, line - part.marker_line))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names_and_lines(errors: &ConfigErrors) -> Vec<String> {
        errors.0.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn lines_map_back_to_their_files() {
        let doc = assemble([
            ("a.toml", "[server]\nlisten = [\"127.0.0.1:0\"]\n"),
            (
                "b.toml",
                "# backends\n[[backend]]\nname = \"m\"\nkind = \"mock\"",
            ),
        ])
        .unwrap();
        let parts = parts(&doc);
        assert_eq!(parts.len(), 2);
        let line_of = |needle: &str| doc.lines().position(|l| l == needle).unwrap() + 1;
        assert_eq!(locate(&parts, line_of("[server]")), Some(("a.toml", 1)));
        assert_eq!(
            locate(&parts, line_of("kind = \"mock\"")),
            Some(("b.toml", 4))
        );
        assert_eq!(
            locate(&parts, 1),
            None,
            "the marker line itself is no file's"
        );
        // Concatenated as TOML: the second file's table follows the first's.
        let table: toml::Table = toml::from_str(&doc).unwrap();
        assert_eq!(table["backend"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn loose_keys_after_the_first_file_are_refused_where_they_are() {
        let errors = assemble([
            ("a.toml", "[server]\n"),
            ("b.toml", "\n\nserver.workers = 2\nbackend = []\n[admin]\n"),
        ])
        .unwrap_err();
        assert_eq!(
            names_and_lines(&errors),
            [
                "b.toml:3:1: server: a key outside any table may only be in the first file (files are read in name order): put it under a table header",
                "b.toml:4:1: backend: a key outside any table may only be in the first file (files are read in name order): put it under a table header",
            ]
        );
        // In the first file, a loose key is plain TOML.
        assemble([("a.toml", "server = { workers = 2 }\n")]).unwrap();
    }

    #[test]
    fn each_file_must_parse_alone_and_carry_no_marker() {
        let errors = assemble([
            ("a.toml", "[server\n"),
            ("b.toml", "[admin]\n#@sluice-file: c.toml\n"),
        ])
        .unwrap_err();
        let text = names_and_lines(&errors);
        assert!(text[0].starts_with("a.toml:1:"), "{text:?}");
        assert_eq!(
            text[1],
            "b.toml:2:1: (file): a line may not start with `#@sluice-file:`: Sluice marks files with it"
        );
    }
}
