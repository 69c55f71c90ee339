//! The audit log (DESIGN.md "Observability"): one record per request, whatever its outcome,
//! written off the request path.
//!
//! - [`content`]: what of a request's and an answer's content a record keeps — the request's
//!   messages (or prompt, input), the answer's choices (a stream's reassembled from its SSE
//!   deltas as it passes), with the content policy and redaction applied.


/// How much of a request's and answer's content a record keeps, per product
/// (`[[product]] audit = { content = … }`, default `[audit] content`, itself default
/// [`ContentMode::Full`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ContentMode {
    /// `"full"`: every text field as it was (after redaction).
    #[default]
    Full,
    /// `"truncate"`: each text field cut to this many characters (Unicode scalar values),
    /// after redaction (`truncate_chars`, default [`DEFAULT_TRUNCATE_CHARS`]).
    Truncate(usize),
    /// `"hash"`: each text field replaced by `sha256:` and the lowercase hex SHA-256 of its
    /// redacted UTF-8 text, so equal prompts can be matched without keeping them.
    Hash,
    /// `"omit"`: no content at all (the worker does not even copy it).
    Omit,
}

/// Default `truncate_chars` of [`ContentMode::Truncate`].
pub const DEFAULT_TRUNCATE_CHARS: usize = 1000;
