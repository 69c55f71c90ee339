//! `[audit]` and `[[audit.sink]]`, and a product's `audit = { content = … }`: compiled into
//! [`AuditSettings`] and a [`ContentMode`], each error at its field.

use toml::Spanned;

use super::check::{parse_duration, parse_size};
use super::error::Reporter;
use super::schema::{AuditSection, AuditSinkSection, ProductAuditSection};
use crate::audit::content::Redactor;
use crate::audit::{
    AuditSettings, ContentMode, FileSinkSettings, Overflow, SinkKind, SinkSettings,
    DEFAULT_FSYNC_INTERVAL, DEFAULT_MAX_QUEUE_BYTES, DEFAULT_QUEUE, DEFAULT_TRUNCATE_CHARS,
    MAX_QUEUE,
};

/// Compiles `[audit]`; `None` when it is absent or has no sink (nothing is recorded).
pub(super) fn compile(
    section: Option<&Spanned<AuditSection>>,
    report: &mut Reporter<'_>,
) -> Option<AuditSettings> {
    let section = section?;
    let a = section.get_ref();
    let content = content_mode(
        a.content.as_ref(),
        a.truncate_chars.as_ref(),
        "audit",
        report,
    )
    .unwrap_or_default();
    let mut redact = Vec::new();
    for (i, pattern) in a.redact.iter().flat_map(|l| l.get_ref()).enumerate() {
        match Redactor::check(pattern.get_ref()) {
            Ok(()) => redact.push(pattern.get_ref().clone()),
            Err(e) => report.at(
                pattern.span(),
                format!("audit.redact[{i}]"),
                format!(
                    "not a valid regular expression: {}",
                    one_line(&e.to_string())
                ),
            ),
        }
    }
    let queue = queue_size(a.queue.as_ref(), "audit.queue", DEFAULT_QUEUE, report);
    let max_queue_bytes = match &a.max_queue_bytes {
        Some(v) => parse_size(v.get_ref())
            .and_then(|n| match n {
                0 => Err("must be more than 0 bytes".to_owned()),
                n => Ok(n),
            })
            .unwrap_or_else(|e| {
                report.at(v.span(), "audit.max_queue_bytes", e);
                DEFAULT_MAX_QUEUE_BYTES
            }),
        None => DEFAULT_MAX_QUEUE_BYTES,
    };
    let node = match &a.node {
        Some(n) if n.get_ref().trim().is_empty() => {
            report.at(n.span(), "audit.node", "must not be empty");
            String::new()
        }
        Some(n) => n.get_ref().clone(),
        None => host_name(),
    };
    let mut sinks: Vec<SinkSettings> = Vec::with_capacity(a.sink.len());
    for (i, sink) in a.sink.iter().enumerate() {
        let field = format!("audit.sink[{i}]");
        let Some(compiled) = compile_sink(sink, &field, queue, report) else {
            continue;
        };
        // One sink per destination: the same file, however its path is spelled
        // (`audit.jsonl`, `./audit.jsonl`, through a symbolic link to its folder).
        let same = sinks
            .iter()
            .any(|s| destination(&s.kind) == destination(&compiled.kind));
        if same {
            report.at(
                sink.span(),
                field,
                format!("`{}` is already a sink", compiled.name()),
            );
            continue;
        }
        sinks.push(compiled);
    }
    if sinks.is_empty() {
        tracing::warn!("[audit] has no [[audit.sink]]: the audit log is off");
        return None;
    }
    Some(AuditSettings {
        sinks,
        queue,
        max_queue_bytes,
        content,
        default_redactions: a.default_redactions.unwrap_or(true),
        redact,
        node,
    })
}

/// Compiles a product's `audit = { content, truncate_chars }`; `None`: the `[audit]`
/// default applies.
pub(super) fn product_content(
    section: Option<&Spanned<ProductAuditSection>>,
    field: &str,
    report: &mut Reporter<'_>,
) -> Option<ContentMode> {
    let a = section?.get_ref();
    content_mode(
        a.content.as_ref(),
        a.truncate_chars.as_ref(),
        &format!("{field}.audit"),
        report,
    )
}

/// `content` and `truncate_chars` of a table at `field`.
fn content_mode(
    content: Option<&Spanned<String>>,
    truncate_chars: Option<&Spanned<usize>>,
    field: &str,
    report: &mut Reporter<'_>,
) -> Option<ContentMode> {
    let chars = match truncate_chars {
        Some(n) if *n.get_ref() == 0 => {
            report.at(
                n.span(),
                format!("{field}.truncate_chars"),
                "must be at least 1 (use content = \"omit\" to keep no content)",
            );
            None
        }
        Some(n) => Some(*n.get_ref()),
        None => None,
    };
    let Some(content) = content else {
        if let Some(n) = truncate_chars {
            report.at(
                n.span(),
                format!("{field}.truncate_chars"),
                "applies only with content = \"truncate\"",
            );
        }
        return None;
    };
    let mode = match content.get_ref().as_str() {
        "full" => ContentMode::Full,
        "truncate" => ContentMode::Truncate(chars.unwrap_or(DEFAULT_TRUNCATE_CHARS)),
        "hash" => ContentMode::Hash,
        "omit" => ContentMode::Omit,
        other => {
            report.at(
                content.span(),
                format!("{field}.content"),
                format!(
                    "unknown content policy `{other}`: expected \"full\", \"truncate\", \"hash\" or \"omit\""
                ),
            );
            return None;
        }
    };
    if let (Some(n), false) = (truncate_chars, matches!(mode, ContentMode::Truncate(_))) {
        report.at(
            n.span(),
            format!("{field}.truncate_chars"),
            "applies only with content = \"truncate\"",
        );
    }
    Some(mode)
}

fn compile_sink(
    sink: &Spanned<AuditSinkSection>,
    field: &str,
    default_queue: usize,
    report: &mut Reporter<'_>,
) -> Option<SinkSettings> {
    let s = sink.get_ref();
    let queue = queue_size(
        s.queue.as_ref(),
        &format!("{field}.queue"),
        default_queue,
        report,
    );
    let overflow = match s.overflow.as_ref().map(|o| (o, o.get_ref().as_str())) {
        None | Some((_, "drop")) => Overflow::Drop,
        Some((_, "block")) => Overflow::Block,
        Some((o, other)) => {
            report.at(
                o.span(),
                format!("{field}.overflow"),
                format!("unknown overflow policy `{other}`: expected \"drop\" or \"block\""),
            );
            Overflow::Drop
        }
    };
    let file_only = [
        ("rotate_size", s.rotate_size.as_ref()),
        ("rotate_interval", s.rotate_interval.as_ref()),
        ("fsync_interval", s.fsync_interval.as_ref()),
    ];
    let kind = s.kind.get_ref().as_str();
    if kind != "file" {
        for (name, value) in file_only {
            if let Some(value) = value {
                report.at(
                    value.span(),
                    format!("{field}.{name}"),
                    format!("applies only to kind = \"file\", not \"{kind}\""),
                );
            }
        }
    }
    let path = |report: &mut Reporter<'_>| match &s.path {
        Some(p) if p.get_ref().is_empty() => {
            report.at(p.span(), format!("{field}.path"), "must not be empty");
            None
        }
        // What Sluice writes goes where it runs (as a log would); what it reads is found
        // beside the config file. Its folder must exist (Sluice creates the file, not
        // folders).
        Some(p) => {
            let path = std::path::PathBuf::from(p.get_ref());
            let folder = path
                .parent()
                .filter(|f| !f.as_os_str().is_empty())
                .unwrap_or(std::path::Path::new("."));
            if !folder.is_dir() {
                report.at(
                    p.span(),
                    format!("{field}.path"),
                    format!(
                        "folder `{}` does not exist (sink paths are relative to the directory Sluice runs in)",
                        folder.display()
                    ),
                );
                return None;
            }
            Some(path)
        }
        None => {
            report.at(
                s.kind.span(),
                format!("{field}.path"),
                format!("a \"{kind}\" sink needs a path"),
            );
            None
        }
    };
    let kind = match kind {
        "file" => {
            let rotate_size = s.rotate_size.as_ref().and_then(|v| {
                parse_size(v.get_ref())
                    .and_then(|n| match n {
                        0 => Err("must be more than 0 bytes".to_owned()),
                        n => Ok(n),
                    })
                    .map_err(|e| report.at(v.span(), format!("{field}.rotate_size"), e))
                    .ok()
            });
            let duration =
                |value: Option<&Spanned<String>>, name: &str, report: &mut Reporter<'_>| {
                    value.and_then(|v| {
                        parse_duration(v.get_ref())
                            .and_then(|d| match d.is_zero() {
                                true => Err("must be more than 0".to_owned()),
                                false => Ok(d),
                            })
                            .map_err(|e| report.at(v.span(), format!("{field}.{name}"), e))
                            .ok()
                    })
                };
            let rotate_interval = duration(s.rotate_interval.as_ref(), "rotate_interval", report);
            let fsync_interval = duration(s.fsync_interval.as_ref(), "fsync_interval", report)
                .unwrap_or(DEFAULT_FSYNC_INTERVAL);
            SinkKind::File(FileSinkSettings {
                path: path(report)?,
                rotate_size,
                rotate_interval,
                fsync_interval,
            })
        }
        "stdout" => {
            if let Some(p) = &s.path {
                report.at(
                    p.span(),
                    format!("{field}.path"),
                    "a \"stdout\" sink has no path",
                );
            }
            SinkKind::Stdout
        }
        "sqlite" => SinkKind::Sqlite {
            path: path(report)?,
        },
        other => {
            report.at(
                s.kind.span(),
                format!("{field}.kind"),
                format!("unknown sink kind `{other}`: expected \"file\", \"stdout\" or \"sqlite\""),
            );
            return None;
        }
    };
    Some(SinkSettings {
        kind,
        overflow,
        queue,
    })
}

/// Where a sink writes, for spotting two sinks on one destination (the key the audit log
/// shares open sinks by); `None` for stdout, which any number of sinks may share.
fn destination(kind: &SinkKind) -> Option<std::path::PathBuf> {
    (*kind != SinkKind::Stdout).then(|| crate::audit::sink::open::destination(kind))
}

/// A queue's size at `field`: 1 to [`MAX_QUEUE`] records, else an error and `default`.
fn queue_size(
    value: Option<&Spanned<usize>>,
    field: &str,
    default: usize,
    report: &mut Reporter<'_>,
) -> usize {
    match value {
        Some(q) if *q.get_ref() == 0 || *q.get_ref() > MAX_QUEUE => {
            report.at(
                q.span(),
                field,
                format!("must be 1 to {MAX_QUEUE} records (its slots are allocated at start)"),
            );
            default
        }
        Some(q) => *q.get_ref(),
        None => default,
    }
}

/// The host's name, for `[audit] node` by default (`-` when it cannot be read).
fn host_name() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|name| name.into_string().ok())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "-".to_owned())
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}
