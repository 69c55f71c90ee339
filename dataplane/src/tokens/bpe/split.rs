//! tiktoken's pre-tokeniser for `o200k_base` and `cl100k_base`: the text cut into pieces
//! before byte-pair merging, exactly where OpenAI's split regex cuts it.
//!
//! The regexes (from `tiktoken_ext/openai_public.py`), alternatives tried in order at each
//! position, the first that matches taking its greedy match:
//!
//! ```text
//! o200k:  [^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?
//!        |[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?
//!        |\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+
//! cl100k: '(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+
//!        | ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s
//! ```
//!
//! (cl100k's is tiktoken's current form, possessive quantifiers and all; it cuts as the
//! original `…|\s*[\r\n]+|\s+(?!\S)|\s+` did except that a whitespace run ending the text
//! is one piece.)
//!
//! Each alternative is matched by hand, with the regex engine's backtracking worked out per
//! alternative (each needs at most one backward scan of a run), so a piece costs time linear
//! in its length and nothing is allocated. Character classes come from the Unicode General
//! Category (`\s` is White_Space), with a table for ASCII.

use unicode_general_category::{get_general_category, GeneralCategory as Gc};

/// Which split regex.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pattern {
    O200k,
    Cl100k,
}

/// The classes the regexes use, as bits.
#[derive(Clone, Copy)]
struct Class(u8);

impl Class {
    /// `\p{L}`.
    const LETTER: u8 = 1;
    /// `[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]` (o200k's "upper" run).
    const UPPER: u8 = 2;
    /// `[\p{Ll}\p{Lm}\p{Lo}\p{M}]` (o200k's "lower" run).
    const LOWER: u8 = 4;
    /// `\p{N}`.
    const NUMBER: u8 = 8;
    /// `\s` (White_Space).
    const SPACE: u8 = 16;
    /// `\r` or `\n`.
    const NEWLINE: u8 = 32;

    fn of(c: char) -> Class {
        if c.is_ascii() {
            return Class(ASCII[c as usize]);
        }
        let mut bits = match get_general_category(c) {
            Gc::UppercaseLetter | Gc::TitlecaseLetter => Class::LETTER | Class::UPPER,
            Gc::LowercaseLetter => Class::LETTER | Class::LOWER,
            Gc::ModifierLetter | Gc::OtherLetter => Class::LETTER | Class::UPPER | Class::LOWER,
            Gc::NonspacingMark | Gc::SpacingMark | Gc::EnclosingMark => Class::UPPER | Class::LOWER,
            Gc::DecimalNumber | Gc::LetterNumber | Gc::OtherNumber => Class::NUMBER,
            _ => 0,
        };
        if c.is_whitespace() {
            bits |= Class::SPACE;
        }
        Class(bits)
    }

    fn has(self, bits: u8) -> bool {
        self.0 & bits != 0
    }

    /// `[^\r\n\p{L}\p{N}]`: the optional first character of a word.
    fn word_prefix(self) -> bool {
        !self.has(Class::NEWLINE | Class::LETTER | Class::NUMBER)
    }

    /// `[^\s\p{L}\p{N}]`: punctuation and symbols.
    fn symbol(self) -> bool {
        !self.has(Class::SPACE | Class::LETTER | Class::NUMBER)
    }
}

/// The classes of the 128 ASCII characters.
static ASCII: [u8; 128] = {
    let mut table = [0u8; 128];
    let mut i = 0;
    while i < 128 {
        let c = i as u8;
        table[i] = if c.is_ascii_uppercase() {
            Class::LETTER | Class::UPPER
        } else if c.is_ascii_lowercase() {
            Class::LETTER | Class::LOWER
        } else if c.is_ascii_digit() {
            Class::NUMBER
        } else if c == b'\r' || c == b'\n' {
            Class::SPACE | Class::NEWLINE
        } else if matches!(c, b' ' | b'\t' | 0x0b | 0x0c) {
            Class::SPACE
        } else {
            0
        };
        i += 1;
    }
    table
};

/// The pieces of `text`, in order; together they are `text`.
pub fn pieces(pattern: Pattern, text: &str) -> Pieces<'_> {
    Pieces {
        pattern,
        text,
        pos: 0,
    }
}

/// An iterator over a text's pieces (see [`pieces`]).
pub struct Pieces<'t> {
    pattern: Pattern,
    text: &'t str,
    pos: usize,
}

impl<'t> Iterator for Pieces<'t> {
    type Item = &'t str;

    fn next(&mut self) -> Option<&'t str> {
        if self.pos >= self.text.len() {
            return None;
        }
        let at = Text(self.text);
        let end = match self.pattern {
            Pattern::O200k => at.o200k(self.pos),
            Pattern::Cl100k => at.cl100k(self.pos),
        };
        let piece = self.text.get(self.pos..end)?;
        self.pos = end;
        Some(piece)
    }
}

/// The text being split, with the matchers of each alternative. Positions are byte offsets
/// on character boundaries.
#[derive(Clone, Copy)]
struct Text<'t>(&'t str);

impl Text<'_> {
    /// The character at `i` and where the next one starts, or `None` at the end.
    #[inline(always)]
    fn at(self, i: usize) -> Option<(Class, usize)> {
        let b = *self.0.as_bytes().get(i)?;
        if b < 0x80 {
            return Some((Class(ASCII[b as usize]), i + 1));
        }
        self.at_wide(i)
    }

    /// [`at`](Self::at) for a character past ASCII.
    #[inline(never)]
    fn at_wide(self, i: usize) -> Option<(Class, usize)> {
        let c = self.0.get(i..)?.chars().next()?;
        Some((Class::of(c), i + c.len_utf8()))
    }

    /// Where the run of characters of `class` starting at `i` ends (`i` if there is none).
    #[inline(always)]
    fn run(self, mut i: usize, class: impl Fn(Class) -> bool) -> usize {
        while let Some((c, next)) = self.at(i) {
            if !class(c) {
                break;
            }
            i = next;
        }
        i
    }

    /// Where the piece starting at `i` ends, by the o200k regex.
    fn o200k(self, i: usize) -> usize {
        self.o200k_lower_word(i)
            .or_else(|| self.o200k_upper_word(i))
            .or_else(|| self.numbers(i))
            .or_else(|| self.symbols(i, b"\r\n/"))
            .or_else(|| self.whitespace(i, false))
            .unwrap_or_else(|| self.one_char(i))
    }

    /// Where the piece starting at `i` ends, by the cl100k regex.
    fn cl100k(self, i: usize) -> usize {
        self.contraction(i)
            .or_else(|| self.cl100k_word(i))
            .or_else(|| self.numbers(i))
            .or_else(|| self.symbols(i, b"\r\n"))
            .or_else(|| self.whitespace(i, true))
            .unwrap_or_else(|| self.one_char(i))
    }

    /// Where words may start: after the optional `[^\r\n\p{L}\p{N}]`, then without it (the
    /// order the regex engine tries them).
    fn word_starts(self, i: usize) -> impl Iterator<Item = usize> {
        let prefixed = self.at(i).filter(|(c, _)| c.word_prefix()).map(|(_, n)| n);
        prefixed.into_iter().chain(std::iter::once(i))
    }

    /// `X?[Lu Lt Lm Lo M]*[Ll Lm Lo M]+C?`: the upper run taken greedily, then given back
    /// one character at a time until a lower character starts the lower run.
    fn o200k_lower_word(self, i: usize) -> Option<usize> {
        self.word_starts(i).find_map(|start| {
            // Every position the upper run can stop at, longest first: its end, then each
            // of its characters that is also a lower one (only those can start the run).
            let mut stops: Option<usize> = None;
            let mut at = start;
            while let Some((c, next)) = self.at(at) {
                if !c.has(Class::UPPER) {
                    break;
                }
                if c.has(Class::LOWER) {
                    stops = Some(at);
                }
                at = next;
            }
            let lower_start = match self.at(at) {
                Some((c, _)) if c.has(Class::LOWER) => at,
                _ => stops?,
            };
            let end = self.run(lower_start, |c| c.has(Class::LOWER));
            Some(self.contraction(end).unwrap_or(end))
        })
    }

    /// `X?[Lu Lt Lm Lo M]+[Ll Lm Lo M]*C?`.
    fn o200k_upper_word(self, i: usize) -> Option<usize> {
        self.word_starts(i).find_map(|start| {
            let upper_end = self.run(start, |c| c.has(Class::UPPER));
            (upper_end > start).then(|| {
                let end = self.run(upper_end, |c| c.has(Class::LOWER));
                self.contraction(end).unwrap_or(end)
            })
        })
    }

    /// `X?\p{L}+`.
    fn cl100k_word(self, i: usize) -> Option<usize> {
        self.word_starts(i).find_map(|start| {
            let end = self.run(start, |c| c.has(Class::LETTER));
            (end > start).then_some(end)
        })
    }

    /// `\p{N}{1,3}`.
    fn numbers(self, i: usize) -> Option<usize> {
        let mut end = i;
        for _ in 0..3 {
            match self.at(end) {
                Some((c, next)) if c.has(Class::NUMBER) => end = next,
                _ => break,
            }
        }
        (end > i).then_some(end)
    }

    /// ` ?[^\s\p{L}\p{N}]+[tail]*`, `tail` being ASCII characters.
    fn symbols(self, i: usize, tail: &[u8]) -> Option<usize> {
        let space = self.0.as_bytes().get(i) == Some(&b' ');
        let starts = space.then_some(i + 1).into_iter().chain([i]);
        starts.into_iter().find_map(|start| {
            let end = self.run(start, Class::symbol);
            (end > start).then(|| {
                let bytes = self.0.as_bytes();
                let mut end = end;
                while bytes.get(end).is_some_and(|b| tail.contains(b)) {
                    end += 1;
                }
                end
            })
        })
    }

    /// `\s*[\r\n]+|\s+(?!\S)|\s+`: a whitespace run up to and including its last newline;
    /// else the run, less its last character when a non-space follows (that character
    /// starts the next word); else the run. With `whole_at_end` (cl100k, whose current
    /// pattern starts these with `\s++$`), a run that ends the text is one piece.
    fn whitespace(self, i: usize, whole_at_end: bool) -> Option<usize> {
        let mut last_newline_end = None;
        let mut last_start = i;
        let mut at = i;
        while let Some((c, next)) = self.at(at) {
            if !c.has(Class::SPACE) {
                break;
            }
            if c.has(Class::NEWLINE) {
                last_newline_end = Some(next);
            }
            last_start = at;
            at = next;
        }
        if at == i {
            return None;
        }
        if whole_at_end && at == self.0.len() {
            return Some(at);
        }
        if let Some(end) = last_newline_end {
            return Some(end);
        }
        if at < self.0.len() && last_start > i {
            return Some(last_start);
        }
        Some(at)
    }

    /// `(?i:'s|'t|'re|'ve|'m|'ll|'d)`, case folded as the regex engines fold it (`ſ` is an
    /// `s`).
    fn contraction(self, i: usize) -> Option<usize> {
        let rest = self.0.get(i..)?;
        let after = rest.strip_prefix('\'')?;
        let mut chars = after.chars();
        let first = chars.next()?.to_ascii_lowercase();
        let second = chars.next().map(|c| c.to_ascii_lowercase());
        let len = match (first, second) {
            ('s' | 't' | 'm' | 'd', _) => 1 + 1,
            ('\u{17f}', _) => 1 + 2,
            ('r' | 'v', Some('e')) | ('l', Some('l')) => 1 + 2,
            _ => return None,
        };
        Some(i + len)
    }

    /// One character: never reached (every character matches some alternative), but a
    /// piece always advances.
    fn one_char(self, i: usize) -> usize {
        self.at(i).map_or(self.0.len(), |(_, next)| next)
    }
}
