//! `sluice usage`: token usage from an audit database, grouped by the dimensions asked for
//! over a recent time range — the table a platform team reads, or JSON for scripts.

use std::path::Path;
use std::time::{Duration, SystemTime};

use rusqlite::{Connection, OpenFlags};
use serde_json::{Map, Value};

/// A dimension `--by` accepts, and the column or expression it groups by.
const DIMENSIONS: &[(&str, &str)] = &[
    ("subscription", "subscription"),
    ("product", "product"),
    ("deployment", "deployment"),
    ("backend", "backend"),
    ("model", "model"),
    ("operation", "operation"),
    ("status", "status"),
    ("node", "node"),
    ("api_version", "api_version"),
    ("day", "substr(time, 1, 10)"),
    ("hour", "substr(time, 1, 13) || ':00'"),
];

/// The figures every row has after its dimensions.
const FIGURES: [&str; 4] = [
    "requests",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
];

/// Why a usage query failed.
#[derive(Debug, thiserror::Error)]
pub enum UsageError {
    /// `--by` named something that is not a dimension.
    #[error("unknown dimension `{0}` in --by: expected some of {1}")]
    Dimension(String, String),
    /// The database could not be opened or read.
    #[error("{path}: {source}")]
    Database {
        /// The file.
        path: String,
        /// What SQLite said.
        source: rusqlite::Error,
    },
}

/// One group's figures: the dimensions' values (`None`: not known, e.g. no subscription)
/// then requests, prompt, completion and total tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// The value of each `--by` dimension, in order.
    pub keys: Vec<Option<String>>,
    /// Requests, prompt tokens, completion tokens, total tokens.
    pub figures: [u64; 4],
}

/// Checks `by` (comma-separated dimension names) and returns the names.
pub fn parse_by(by: &str) -> Result<Vec<String>, UsageError> {
    by.split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(|d| match DIMENSIONS.iter().any(|(name, _)| *name == d) {
            true => Ok(d.to_owned()),
            false => Err(UsageError::Dimension(
                d.to_owned(),
                DIMENSIONS
                    .iter()
                    .map(|(n, _)| *n)
                    .collect::<Vec<_>>()
                    .join(", "),
            )),
        })
        .collect()
}

/// Usage per group of `by` (checked by [`parse_by`]) over the records of the last `since`
/// in the database at `path` (opened read-only), most total tokens first.
pub fn query(path: &Path, by: &[String], since: Duration) -> Result<Vec<Row>, UsageError> {
    let failed = |source| UsageError::Database {
        path: path.display().to_string(),
        source,
    };
    let db = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(failed)?;
    let exprs: Vec<&str> = by
        .iter()
        .filter_map(|d| DIMENSIONS.iter().find(|(n, _)| n == d).map(|(_, e)| *e))
        .collect();
    let select = exprs
        .iter()
        .map(|e| format!("CAST({e} AS TEXT), "))
        .collect::<String>();
    let group = match exprs.is_empty() {
        true => String::new(),
        false => format!("GROUP BY {}", exprs.join(", ")),
    };
    let sql = format!(
        "SELECT {select} count(*), coalesce(sum(prompt_tokens), 0), \
         coalesce(sum(completion_tokens), 0), coalesce(sum(total_tokens), 0) \
         FROM requests WHERE time_unix_ms >= ?1 {group} ORDER BY {total} DESC, {requests} DESC{keys}",
        total = exprs.len() + 4,
        requests = exprs.len() + 1,
        keys = (1..=exprs.len()).map(|i| format!(", {i}")).collect::<String>(),
    );
    let from = SystemTime::now()
        .checked_sub(since)
        .unwrap_or(SystemTime::UNIX_EPOCH)
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    let from = i64::try_from(from).unwrap_or(i64::MAX);
    let mut stmt = db.prepare(&sql).map_err(failed)?;
    let rows = stmt
        .query_map([from], |row| {
            let mut keys = Vec::with_capacity(exprs.len());
            for i in 0..exprs.len() {
                keys.push(row.get::<_, Option<String>>(i)?);
            }
            let mut figures = [0u64; 4];
            for (j, figure) in figures.iter_mut().enumerate() {
                *figure = u64::try_from(row.get::<_, i64>(exprs.len() + j)?).unwrap_or(0);
            }
            Ok(Row { keys, figures })
        })
        .map_err(failed)?;
    rows.collect::<Result<Vec<_>, _>>().map_err(failed)
}

/// `value` safe to print on a terminal: control characters (C0, DEL, C1 — an 8-bit CSI
/// starts an escape sequence) and the bidirectional overrides and isolates (which reorder
/// what follows) as `\u{…}` escapes. Values are chosen by clients (`api-version`) and
/// backends (`model`).
pub fn printable(value: &str) -> String {
    value
        .chars()
        .map(|c| {
            if c.is_control() || matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}') {
                c.escape_unicode().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// The rows as an aligned text table with a header line (`-` for an unknown value; values
/// made [`printable`]).
pub fn table(by: &[String], rows: &[Row]) -> String {
    let header: Vec<String> = by
        .iter()
        .cloned()
        .chain(FIGURES.iter().map(|f| (*f).to_owned()))
        .collect();
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|row| {
            row.keys
                .iter()
                .map(|k| k.as_deref().map_or_else(|| "-".to_owned(), printable))
                .chain(row.figures.iter().map(u64::to_string))
                .collect()
        })
        .collect();
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            cells
                .iter()
                .map(|r| r[i].chars().count())
                .chain([header[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for line in std::iter::once(&header).chain(&cells) {
        let mut text = String::new();
        for (i, cell) in line.iter().enumerate() {
            let pad = widths[i] - cell.chars().count();
            if i >= by.len() {
                // Figures right-aligned.
                text.push_str(&" ".repeat(pad));
                text.push_str(cell);
            } else {
                text.push_str(cell);
                text.push_str(&" ".repeat(pad));
            }
            if i + 1 < line.len() {
                text.push_str("  ");
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    }
    out
}

/// The rows as one JSON array of objects: each `--by` dimension (a string or `null`), then
/// `requests`, `prompt_tokens`, `completion_tokens`, `total_tokens`.
pub fn json(by: &[String], rows: &[Row]) -> Value {
    Value::Array(
        rows.iter()
            .map(|row| {
                let mut object = Map::new();
                for (name, key) in by.iter().zip(&row.keys) {
                    object.insert(name.clone(), key.clone().map_or(Value::Null, Value::String));
                }
                for (name, figure) in FIGURES.iter().zip(row.figures) {
                    object.insert((*name).to_owned(), Value::from(figure));
                }
                Value::Object(object)
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::printable;

    #[test]
    fn values_print_without_terminal_controls() {
        // An 8-bit CSI (U+009B) and a right-to-left override, as a client's api-version.
        assert_eq!(
            printable("2024\u{9b}2J\u{202e}x"),
            "2024\\u{9b}2J\\u{202e}x"
        );
        assert_eq!(printable("gpt-4o-mini é"), "gpt-4o-mini é");
        assert_eq!(printable("a\tb\u{7f}"), "a\\u{9}b\\u{7f}");
    }
}
