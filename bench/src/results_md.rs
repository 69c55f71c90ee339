//! What the scenarios that write their own section of `bench/RESULTS.md` (`failover`,
//! `cache`) share: replacing a section found by its heading, the provenance a report states
//! (the date, the host's load average, the commit measured), and writing the results out.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

use anyhow::Context;
use serde::Serialize;

/// Writes `report` as `OUT/results.json` (pretty JSON), prints `section` to stdout and, with
/// `update_results`, puts `section` into that file (read as empty when missing) with
/// `replace` (the scenario's `replace_section`).
///
/// # Errors
/// A file that cannot be written, naming it.
pub fn publish<R: Serialize>(
    out: &Path,
    report: &R,
    section: &str,
    update_results: Option<&Path>,
    replace: fn(&str, &str) -> String,
) -> anyhow::Result<()> {
    let json = out.join("results.json");
    std::fs::write(&json, serde_json::to_string_pretty(report)? + "\n")
        .with_context(|| format!("writing {}", json.display()))?;
    println!("{section}");
    if let Some(path) = update_results {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        std::fs::write(path, replace(&text, section))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// Where and how a report was measured, as its section's opening lines state it.
pub struct Provenance<'r> {
    /// [`now_utc`] when the run ended.
    pub date: &'r str,
    /// [`git_commit`].
    pub commit: Option<&'r str>,
    /// Usable cores of the host.
    pub cores: usize,
    /// [`load_average`] at the start and at the end.
    pub load_average: [Option<f64>; 2],
    /// The `sluice-bench` command line that reproduces it (without `--update-results`).
    pub command: &'r str,
    /// How the run behaves, for the reader about to reproduce it (`"about 40 s, "`, or
    /// empty).
    pub duration: &'r str,
}

/// Writes `p` into `s`: a sentence of date, commit, cores and load, then the shell lines
/// that reproduce the run and put its section into `bench/RESULTS.md`.
pub fn write_provenance(s: &mut String, p: &Provenance<'_>) {
    let load = |l: Option<f64>| l.map_or("?".to_owned(), |l| format!("{l:.1}"));
    let _ = writeln!(
        s,
        "{}, commit {}, {} usable cores shared with other work (load average {} at the \
         start, {} at the end). Reproduce (release build; {}loopback only, stops by \
         itself):\n",
        p.date,
        p.commit.unwrap_or("unknown"),
        p.cores,
        load(p.load_average[0]),
        load(p.load_average[1]),
        p.duration,
    );
    let _ = writeln!(s, "```sh\ncargo build --release -p sluice -p sluice-bench");
    let _ = writeln!(
        s,
        "target/release/{} \\\n  --update-results bench/RESULTS.md\n```\n",
        p.command
    );
}

/// The time now, `YYYY-MM-DD HH:MM UTC` (what a report gives as its date).
pub fn now_utc() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    crate::compare::report::utc_date(now)
}

/// `text` with the section under the first of `headings` (in order of preference) that is a
/// whole heading line of it replaced by `section`; without any, `section` is added at the
/// end after a blank line. A section runs from its heading to the next heading of the same
/// or a higher level (`###` ends at `###`, `##` or `#`), or the end. Lines inside ```
/// fences are not headings. Nothing else in `text` changes; `section` ends with one newline.
pub fn replace_section(text: &str, headings: &[&str], section: &str) -> String {
    let section = section.trim_end();
    let lines = heading_lines(text);
    let found = headings.iter().find_map(|&wanted| {
        lines
            .iter()
            .position(|h| h.line.trim_end() == wanted.trim_end())
    });
    let Some(index) = found else {
        let mut out = text.trim_end().to_owned();
        if !out.is_empty() {
            out.push_str("\n\n");
        }
        out.push_str(section);
        out.push('\n');
        return out;
    };
    let start = lines[index].start;
    let end = lines[index + 1..]
        .iter()
        .find(|h| h.level <= lines[index].level)
        .map_or(text.len(), |h| h.start);
    let mut out = String::with_capacity(text.len() + section.len());
    out.push_str(&text[..start]);
    out.push_str(section);
    out.push('\n');
    if end < text.len() {
        out.push('\n');
        out.push_str(&text[end..]);
    }
    out
}

/// A Markdown ATX heading line of a text.
struct Heading<'t> {
    /// Byte offset of the line in the text.
    start: usize,
    /// 1 for `#`, 2 for `##`, … 6.
    level: usize,
    /// The line without its line ending.
    line: &'t str,
}

/// The ATX heading lines of `text` (CommonMark §4.2: 1–6 `#` then a space) outside ```
/// fences.
fn heading_lines(text: &str) -> Vec<Heading<'_>> {
    let mut out = Vec::new();
    let mut in_fence = false;
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let start = offset;
        offset += line.len();
        let line = line.trim_end_matches(['\n', '\r']);
        if line.starts_with("```") {
            in_fence = !in_fence;
            continue;
        }
        let level = line.bytes().take_while(|&b| b == b'#').count();
        if !in_fence && (1..=6).contains(&level) && line[level..].starts_with(' ') {
            out.push(Heading { start, level, line });
        }
    }
    out
}

/// The 1-minute load average, from `/proc/loadavg`; `None` where there is none.
pub fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The short hash of the checkout's `HEAD` (`git rev-parse --short HEAD`); `None` outside a
/// git checkout or without git.
pub fn git_commit() -> Option<String> {
    let out = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (out.status.success() && !text.is_empty()).then_some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_section_ends_at_the_next_heading_of_its_level_or_higher() {
        let text = "# R\n\n## A\n\na\n\n### A.1\n\nx\n\n#### deep\n\nd\n\n### A.2\n\ny\n\n\
                    ## B\n\nb\n";
        assert_eq!(
            replace_section(text, &["### A.1"], "### A.1\n\nnew\n"),
            "# R\n\n## A\n\na\n\n### A.1\n\nnew\n\n### A.2\n\ny\n\n## B\n\nb\n"
        );
        assert_eq!(
            replace_section(text, &["## A"], "## A\n\nnew\n"),
            "# R\n\n## A\n\nnew\n\n## B\n\nb\n"
        );
        // Last in the file: replaced to the end.
        assert_eq!(
            replace_section(text, &["## B"], "## B\n\nnew\n\n\n"),
            "# R\n\n## A\n\na\n\n### A.1\n\nx\n\n#### deep\n\nd\n\n### A.2\n\ny\n\n## B\n\nnew\n"
        );
    }

    #[test]
    fn the_first_heading_present_is_replaced_else_the_section_is_added() {
        let text = "## Hand\n\nh\n\n## Generated\n\ng\n";
        assert_eq!(
            replace_section(text, &["## Generated", "## Hand"], "## Generated\n\nnew\n"),
            "## Hand\n\nh\n\n## Generated\n\nnew\n"
        );
        assert_eq!(
            replace_section(
                "## Hand\n\nh\n",
                &["## Generated", "## Hand"],
                "## Generated\n"
            ),
            "## Generated\n"
        );
        assert_eq!(
            replace_section("# R\n\n## A\n\n", &["## G"], "## G\n\nnew\n"),
            "# R\n\n## A\n\n## G\n\nnew\n"
        );
        assert_eq!(replace_section("", &["## G"], "## G\n"), "## G\n");
        // A heading that only starts like the wanted one, or one in a fence, is not it.
        let other = "## Handmade\n\nx\n\n```\n## Hand\n```\n";
        assert_eq!(
            replace_section(other, &["## Hand"], "## Hand\n"),
            format!("{other}\n## Hand\n")
        );
    }

    #[test]
    fn hashes_without_a_space_are_not_headings() {
        let lines = heading_lines("#hashtag\n####### seven\n## two\n");
        assert_eq!(lines.len(), 1);
        assert_eq!((lines[0].level, lines[0].line), (2, "## two"));
    }
}
