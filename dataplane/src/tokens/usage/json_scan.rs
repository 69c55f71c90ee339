//! [`JsonUsageScanner`]: reads the top-level `usage` and `model` of a JSON answer as its
//! bytes pass through, in pieces split anywhere, without holding the answer: an answer of
//! any size is accounted from its real usage in O(usage value + a few words) of memory.
//!
//! The scanner walks the JSON structure byte by byte (strings with their escapes skipped with
//! `memchr`, nesting tracked as one bit per level) and keeps only three things: the raw bytes
//! of each top-level key short enough to be `usage` or `model` (compared once unescaped, so
//! `"us\u0061ge"` is `usage`, as it is to serde_json and to the client's SDK), the raw
//! bytes of the top-level `usage` value, which is then read by the same lenient parser as
//! before ([`super::usage_from_json`]'s `UsageField`), and the raw bytes of the top-level
//! `model` string (at most [`MAX_MODEL`], in a fixed buffer: no allocation). A `usage` or
//! `model` nested anywhere else (inside `choices`, a tool call's arguments …) is never looked
//! at. Embeddings answers put `model` after their (huge) `data` array; it is found there all
//! the same, wherever it stands.
//!
//! Decisions, each read as "usage not known" (the request keeps its estimate):
//! - the body is not one JSON object (an array, a scalar, empty, broken structure, bytes
//!   after the object, nesting deeper than [`MAX_DEPTH`]);
//! - the top-level `usage` is given more than once: parsers disagree on which one counts
//!   (serde_json keeps the last, others the first), so neither is trusted;
//! - the `usage` value is longer than [`MAX_USAGE_VALUE`] (a real one is under 1 KiB).
//!
//! The model (the backend's own name for what answered, for the audit record) is read by the
//! same rules: not known when the body is not one JSON object, when `model` is given more
//! than once, when its value is not a string, is empty, or is longer than [`MAX_MODEL`] raw
//! bytes (escapes counted as written; a real name is a few dozen), or is not valid UTF-8.
//!
//! The structure is checked (braces and brackets match, keys, colons and commas where JSON
//! puts them, escapes well formed, literals spelled right); number syntax and the bytes
//! inside strings are not, beyond what finding the string's end needs. The `usage` value
//! itself is parsed strictly by serde_json.

use memchr::memchr2;

use super::{Usage, UsageField};

/// The longest top-level `usage` value read: 64 KiB. A longer one reads as unknown.
pub const MAX_USAGE_VALUE: usize = 64 * 1024;

/// The longest top-level `model` string kept: 256 bytes between its quotes, as written
/// (an escape counts its bytes). A longer one reads as unknown.
pub const MAX_MODEL: usize = 256;

/// The deepest nesting of objects and arrays followed: 128 levels, serde_json's own
/// recursion limit. A deeper body reads as not JSON.
pub const MAX_DEPTH: usize = 128;

/// The longest raw top-level key (quotes included) that is compared with `usage` and
/// `model`: each of their 5 characters is at most 6 bytes escaped (`\u0075`), plus 2 quotes.
const MAX_KEY: usize = 32;

/// Which raw string bytes are being kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Raw {
    /// None: the common case, any string that is not a top-level key or the `model` value.
    Off,
    /// A top-level key that may still be `usage` or `model`.
    Key,
    /// The top-level `model` string, while it fits [`MAX_MODEL`].
    Model,
}

/// What the last top-level key named: what its value is to the scanner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Member {
    /// Any other member: its value is only walked.
    Other,
    /// `usage`: its value is captured.
    Usage,
    /// `model`: its value is kept when it is a string.
    Model,
}

/// Where in the JSON grammar the scanner stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before the top-level `{`.
    Start,
    /// A value must follow (after `:` or `,` in an array).
    Value,
    /// Just after `[`: a value or `]`.
    ValueOrEnd,
    /// Just after `{`: a key or `}`.
    KeyOrEnd,
    /// After `,` in an object: a key.
    Key,
    /// After a key: `:`.
    Colon,
    /// After a value in a container: `,` or the container's end.
    Next,
    /// Inside a string; `key` when it is an object's key.
    Str { key: bool },
    /// After a backslash in a string.
    Escape { key: bool },
    /// Inside `\uXXXX`, `left` hex digits to go.
    Hex { key: bool, left: u8 },
    /// Inside `true`, `false` or `null`, `at` bytes of `word` matched.
    Literal { word: &'static [u8], at: u8 },
    /// Inside a number.
    Number,
    /// After the top-level object: only whitespace may follow.
    End,
    /// Not one JSON object: nothing more is read.
    Failed,
}

/// Reads the top-level `usage` and `model` of a JSON answer fed in pieces of any size.
///
/// Feed every piece with [`JsonUsageScanner::feed`], then [`JsonUsageScanner::finish`]
/// gives the usage, or `None` when the body had none or it is not known (see the module
/// docs for each case); [`JsonUsageScanner::model`] gives the model. Memory: the `usage`
/// value's bytes (at most [`MAX_USAGE_VALUE`]), a 32-byte buffer for the current top-level
/// key and a 258-byte one for the `model` string (quotes included).
#[derive(Debug)]
pub struct JsonUsageScanner {
    state: State,
    /// Open containers (1 = inside the top-level object).
    depth: usize,
    /// Bit `d` set: the container at depth `d + 1` is an object (else an array).
    objects: u128,
    /// Raw bytes (quotes included) of the top-level key being read, `key[..key_len]`.
    key: [u8; MAX_KEY],
    key_len: usize,
    /// Which string's bytes are kept as they are read (`key` or `model`).
    raw: Raw,
    /// What the last top-level key named: the next value is captured or kept.
    member: Member,
    /// The top-level `usage` value is being captured.
    capturing: bool,
    /// Its bytes so far.
    captured: Vec<u8>,
    /// It outgrew [`MAX_USAGE_VALUE`].
    overflow: bool,
    /// Top-level `usage` members seen.
    usage_members: u32,
    /// What the (last complete) top-level `usage` value said.
    usage: Option<Usage>,
    /// Raw bytes (quotes included) of the top-level `model` string, `model[..model_len]`;
    /// `model_len` is 0 when none is kept (not a string, or past [`MAX_MODEL`]).
    model: [u8; MAX_MODEL + 2],
    model_len: usize,
    /// Top-level `model` members seen.
    model_members: u32,
}

impl Default for JsonUsageScanner {
    fn default() -> Self {
        Self::new()
    }
}

impl JsonUsageScanner {
    /// A scanner at the start of a body.
    pub fn new() -> Self {
        JsonUsageScanner {
            state: State::Start,
            depth: 0,
            objects: 0,
            key: [0; MAX_KEY],
            key_len: 0,
            raw: Raw::Off,
            member: Member::Other,
            capturing: false,
            captured: Vec::new(),
            overflow: false,
            usage_members: 0,
            usage: None,
            model: [0; MAX_MODEL + 2],
            model_len: 0,
            model_members: 0,
        }
    }

    /// Reads the next piece of the body (any size, split anywhere, even inside an escape).
    pub fn feed(&mut self, data: &[u8]) {
        // Where the captured `usage` value starts in `data`, while capturing.
        let mut cap_from = 0;
        let mut i = 0;
        while i < data.len() {
            let b = data[i];
            match self.state {
                State::Failed => return,
                State::Str { key } => {
                    let rest = &data[i..];
                    match memchr2(b'"', b'\\', rest) {
                        None => {
                            self.raw_bytes(rest);
                            i = data.len();
                            continue;
                        }
                        Some(k) => {
                            self.raw_bytes(&rest[..=k]);
                            i += k;
                            if rest[k] == b'\\' {
                                self.state = State::Escape { key };
                            } else if key {
                                self.key_done();
                                self.state = State::Colon;
                            } else {
                                self.value_done(data, i + 1, &mut cap_from);
                            }
                        }
                    }
                }
                State::Escape { key } => {
                    self.raw_bytes(&data[i..=i]);
                    self.state = match b {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => {
                            State::Str { key }
                        }
                        b'u' => State::Hex { key, left: 4 },
                        _ => State::Failed,
                    };
                }
                State::Hex { key, left } => {
                    self.raw_bytes(&data[i..=i]);
                    self.state = if !b.is_ascii_hexdigit() {
                        State::Failed
                    } else if left == 1 {
                        State::Str { key }
                    } else {
                        State::Hex {
                            key,
                            left: left - 1,
                        }
                    };
                }
                State::Literal { word, at } => {
                    let at = usize::from(at);
                    if word.get(at) != Some(&b) {
                        self.state = State::Failed;
                    } else if at + 1 == word.len() {
                        self.value_done(data, i + 1, &mut cap_from);
                    } else {
                        self.state = State::Literal {
                            word,
                            at: (at + 1) as u8,
                        };
                    }
                }
                State::Number => {
                    // The rest of the number in one pass; the byte after it is read again.
                    i += data[i..]
                        .iter()
                        .position(|&b| !matches!(b, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E'))
                        .unwrap_or(data.len() - i);
                    if i < data.len() {
                        self.value_done(data, i, &mut cap_from);
                    }
                    continue;
                }
                _ if is_ws(b) => {
                    // A run of indentation in one pass.
                    i += data[i..]
                        .iter()
                        .position(|&b| !is_ws(b))
                        .unwrap_or(data.len() - i);
                    continue;
                }
                State::Start => {
                    self.state = if b == b'{' {
                        self.open(true)
                    } else {
                        State::Failed
                    };
                }
                State::KeyOrEnd | State::Key => match b {
                    b'"' => {
                        // Also ends the keeping of a `model` value: a top-level value is
                        // always followed by a key or the end.
                        self.raw = if self.depth == 1 { Raw::Key } else { Raw::Off };
                        self.key[0] = b'"';
                        self.key_len = 1;
                        self.state = State::Str { key: true };
                    }
                    b'}' if self.state == State::KeyOrEnd => self.close(data, i, &mut cap_from),
                    _ => self.state = State::Failed,
                },
                State::Colon => {
                    self.state = if b == b':' {
                        State::Value
                    } else {
                        State::Failed
                    };
                }
                State::Value | State::ValueOrEnd => {
                    if b == b']' && self.state == State::ValueOrEnd {
                        self.close(data, i, &mut cap_from);
                        i += 1;
                        continue;
                    }
                    if self.member != Member::Other && self.depth == 1 {
                        self.member_value(b);
                        cap_from = i;
                    }
                    match b {
                        b'{' => self.state = self.open(true),
                        b'[' => self.state = self.open(false),
                        b'"' => self.state = State::Str { key: false },
                        b't' => self.literal(b"true"),
                        b'f' => self.literal(b"false"),
                        b'n' => self.literal(b"null"),
                        b'-' | b'0'..=b'9' => self.state = State::Number,
                        _ => self.state = State::Failed,
                    }
                }
                State::Next => match b {
                    b',' => {
                        self.state = if self.in_object() {
                            State::Key
                        } else {
                            State::Value
                        };
                    }
                    b'}' if self.in_object() => self.close(data, i, &mut cap_from),
                    b']' if !self.in_object() => self.close(data, i, &mut cap_from),
                    _ => self.state = State::Failed,
                },
                State::End => self.state = State::Failed,
            }
            i += 1;
        }
        if self.capturing {
            self.capture(&data[cap_from..]);
        }
    }

    /// The body ended: its top-level `usage`, or `None` when it had none (or `null`, or a
    /// value that is not a usage object) or it is not known (see the module docs).
    pub fn finish(&mut self) -> Option<Usage> {
        match (self.state, self.usage_members) {
            (State::End, 1) => self.usage,
            _ => None,
        }
    }

    /// The top-level `model` string, unescaped (by serde_json), once the body ended
    /// ([`JsonUsageScanner::finish`]); `None` while it is still being read, when the body
    /// had none, or when it is not known: the body is not one JSON object, `model` is given
    /// twice, its value is not a string, is empty, is longer than [`MAX_MODEL`] raw bytes or
    /// is not valid UTF-8. Allocates the returned string only.
    pub fn model(&self) -> Option<String> {
        if self.state != State::End || self.model_members != 1 || self.model_len < 2 {
            return None;
        }
        serde_json::from_slice::<String>(&self.model[..self.model_len])
            .ok()
            .filter(|model| !model.is_empty())
    }

    /// The value of a top-level `usage` or `model` member starts with `b`: `usage` is
    /// captured (from this byte, by the caller), a `model` string is kept.
    fn member_value(&mut self, b: u8) {
        match std::mem::replace(&mut self.member, Member::Other) {
            Member::Usage => {
                self.capturing = true;
                self.overflow = false;
                self.captured.clear();
            }
            Member::Model => {
                self.model_members = self.model_members.saturating_add(1);
                self.model_len = 0;
                if b == b'"' {
                    self.model[0] = b'"';
                    self.model_len = 1;
                    self.raw = Raw::Model;
                }
            }
            Member::Other => {}
        }
    }

    /// Opens an object or array; fails past [`MAX_DEPTH`].
    fn open(&mut self, object: bool) -> State {
        if self.depth >= MAX_DEPTH {
            return State::Failed;
        }
        if object {
            self.objects |= 1 << self.depth;
        } else {
            self.objects &= !(1 << self.depth);
        }
        self.depth += 1;
        if object {
            State::KeyOrEnd
        } else {
            State::ValueOrEnd
        }
    }

    /// Whether the innermost open container is an object.
    fn in_object(&self) -> bool {
        self.depth > 0 && self.objects & (1 << (self.depth - 1)) != 0
    }

    /// Closes the innermost container at `data[i]`.
    fn close(&mut self, data: &[u8], i: usize, cap_from: &mut usize) {
        self.depth -= 1;
        if self.depth == 0 {
            self.state = State::End;
        } else {
            self.value_done(data, i + 1, cap_from);
        }
    }

    /// Starts a literal whose first byte matched.
    fn literal(&mut self, word: &'static [u8]) {
        self.state = State::Literal { word, at: 1 };
    }

    /// A value ended just before `data[end]`; the captured `usage` value, when it was that
    /// one, is parsed.
    fn value_done(&mut self, data: &[u8], end: usize, cap_from: &mut usize) {
        self.state = State::Next;
        if self.capturing && self.depth == 1 {
            self.capture(&data[*cap_from..end]);
            self.capturing = false;
            self.usage_members = self.usage_members.saturating_add(1);
            self.usage = if self.overflow {
                None
            } else {
                serde_json::from_slice::<UsageField>(&self.captured)
                    .ok()
                    .and_then(|field| field.0)
            };
            self.captured = Vec::new();
        }
    }

    /// Keeps bytes of the `usage` value, up to [`MAX_USAGE_VALUE`].
    fn capture(&mut self, bytes: &[u8]) {
        if self.overflow || self.captured.len() + bytes.len() > MAX_USAGE_VALUE {
            self.overflow = true;
            self.captured = Vec::new();
        } else {
            self.captured.extend_from_slice(bytes);
        }
    }

    /// Keeps bytes of a string being read raw: a top-level key while it can still be
    /// `usage` or `model`, or the `model` value while it fits [`MAX_MODEL`] (past it, the
    /// model is not known).
    #[inline]
    fn raw_bytes(&mut self, bytes: &[u8]) {
        // The common case (no string kept) is one compare, as before the model was read.
        if self.raw != Raw::Off {
            self.keep_raw(bytes);
        }
    }

    /// [`Self::raw_bytes`] for a string being kept.
    #[inline(never)]
    fn keep_raw(&mut self, bytes: &[u8]) {
        match self.raw {
            Raw::Off => {}
            Raw::Key => {
                let end = self.key_len + bytes.len();
                if end > MAX_KEY {
                    self.raw = Raw::Off;
                } else {
                    self.key[self.key_len..end].copy_from_slice(bytes);
                    self.key_len = end;
                }
            }
            Raw::Model => {
                let end = self.model_len + bytes.len();
                if end > self.model.len() {
                    self.raw = Raw::Off;
                    self.model_len = 0;
                } else {
                    self.model[self.model_len..end].copy_from_slice(bytes);
                    self.model_len = end;
                }
            }
        }
    }

    /// A key ended (its closing quote is in `self.key`): a top-level `usage` makes the
    /// next value captured, a top-level `model` makes it kept.
    fn key_done(&mut self) {
        if self.raw == Raw::Key {
            self.raw = Raw::Off;
            let key = &self.key[..self.key_len];
            self.member = match key {
                br#""usage""# => Member::Usage,
                br#""model""# => Member::Model,
                _ if key.contains(&b'\\') => {
                    match serde_json::from_slice::<String>(key).as_deref() {
                        Ok("usage") => Member::Usage,
                        Ok("model") => Member::Model,
                        _ => Member::Other,
                    }
                }
                _ => Member::Other,
            };
        }
    }
}

/// JSON whitespace (RFC 8259 §2).
fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

#[cfg(test)]
mod tests;
