//! Every count against tiktoken's own (the `tiktoken-rs` port of OpenAI's library, whose split
//! is the real regex run by `fancy-regex`): random texts built from the characters each
//! branch of the split regexes turns on.

use super::{Bpe, Budget};
use crate::tokens::Family;

/// Characters that steer the split: ASCII of every class, the contraction letters (and `ſ`,
/// which case folding makes an `s`), marks, modifier and other letters, titlecase, non-ASCII
/// numbers and spaces, newlines of every kind, symbols, emoji.
const ALPHABET: &[&str] = &[
    "a", "b", "s", "t", "d", "m", "l", "r", "e", "v", "A", "S", "T", "R", "E", "L", "'", "'", "0",
    "7", " ", " ", " ", "\t", "\n", "\r", "\r\n", "/", ".", ",", "(", "=", "-", "_", "!",
    "\u{17f}", "\u{301}", "\u{300}", "\u{903}", "\u{2b0}", "\u{2c6}", "\u{1c5}", "é", "É", "ß",
    "漢", "字", "か", "ア", "ー", "中", "\u{5d0}", "\u{627}", "\u{663}", "\u{2155}", "Ⅻ", "²",
    "\u{a0}", "\u{2003}", "\u{3000}", "\u{85}", "\u{2028}", "\u{b}", "\u{c}", "\u{0}", "€", "😀",
    "👍🏽", "\u{200d}", "\u{fe0f}", "ǅ", "ǈ", "Ω", "ω", "и", "Ж", "ก", "\u{e31}",
];

fn tiktoken(family: Family, text: &str) -> usize {
    match family {
        Family::O200k => tiktoken_rs::o200k_base_singleton().count_ordinary(text),
        Family::Cl100k => tiktoken_rs::cl100k_base_singleton().count_ordinary(text),
    }
}

/// A xorshift generator: the same texts on every run.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }

    /// A text of fewer than `max_len` characters of [`ALPHABET`]: on even rounds from a few
    /// kinds of character (each branch's edges), on odd ones from many (mixes).
    fn text(&mut self, round: usize, max_len: usize) -> String {
        let kinds = 2 + self.below(if round.is_multiple_of(2) {
            4
        } else {
            ALPHABET.len() - 2
        });
        let chosen: Vec<&str> = (0..kinds)
            .map(|_| ALPHABET[self.below(ALPHABET.len())])
            .collect();
        let len = self.below(max_len);
        (0..len).map(|_| chosen[self.below(chosen.len())]).collect()
    }
}

#[test]
fn counts_equal_tiktoken_on_random_text() {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    for family in [Family::O200k, Family::Cl100k] {
        let bpe = Bpe::of(family).expect("tables load");
        for round in 0..4000 {
            let text = rng.text(round, 40);
            assert_eq!(
                bpe.count(&text, &mut Budget::per_request()) as usize,
                tiktoken(family, &text),
                "{family} {text:?}"
            );
        }
    }
}

#[test]
fn counts_equal_tiktoken_on_long_pieces() {
    // Pieces past the stack loop's 64 bytes take the heap's merges.
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let alphabets: [&[u8]; 4] = [
        b"ab",
        b"aeiouy tnrs",
        b"=-_/.:*#",
        b"abcdefghijklmnopqrstuvwxyz",
    ];
    for family in [Family::O200k, Family::Cl100k] {
        let bpe = Bpe::of(family).expect("tables load");
        for round in 0..600 {
            let alphabet = alphabets[round % alphabets.len()];
            let len = 60 + rng.below(400);
            let text: String = (0..len)
                .map(|_| alphabet[rng.below(alphabet.len())] as char)
                .collect();
            assert_eq!(
                bpe.count(&text, &mut Budget::per_request()) as usize,
                tiktoken(family, &text),
                "{family} {text:?}"
            );
        }
    }
}

#[test]
fn contractions_fold_case_as_the_regex_does() {
    let texts = [
        "a'ſb",
        "he'ſſ",
        "x'SS",
        "I'Ll",
        "we'RE",
        "they'Ve",
        "it'Tis",
        "'Dd",
        "'ſ",
        "O'NEIL'S",
        "don'tX",
        "y'all'd've",
        "'lL'rE'vE",
        "ǅ'ſa",
        "é'ſé",
    ];
    for family in [Family::O200k, Family::Cl100k] {
        let bpe = Bpe::of(family).expect("tables load");
        for text in texts {
            assert_eq!(
                bpe.count(text, &mut Budget::per_request()) as usize,
                tiktoken(family, text),
                "{family} {text:?}"
            );
        }
    }
}

/// tiktoken's split regexes, as `tiktoken` (and `tiktoken-rs`) give them to `fancy-regex`.
fn reference_split(family: Family) -> fancy_regex::Regex {
    let pattern = match family {
        Family::O200k => concat!(
            r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
            r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
            r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+",
        ),
        Family::Cl100k => {
            r"'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s"
        }
    };
    fancy_regex::Regex::new(pattern).expect("tiktoken's pattern compiles")
}

#[test]
fn pieces_equal_the_regex_split() {
    let mut rng = Rng(0x1234_5678_9abc_def1);
    for family in [Family::O200k, Family::Cl100k] {
        let regex = reference_split(family);
        let pattern = Bpe::of(family).expect("tables load").pattern;
        for round in 0..6000 {
            let text = rng.text(round, 24);
            let expected: Vec<&str> = regex
                .find_iter(&text)
                .map(|m| m.expect("no backtrack limit").as_str())
                .collect();
            let got: Vec<&str> = super::split::pieces(pattern, &text).collect();
            assert_eq!(got, expected, "{family} {text:?}");
        }
    }
}

#[test]
fn past_the_budget_text_is_counted_by_the_heuristic() {
    let bpe = Bpe::of(Family::O200k).expect("tables load");
    // Within the budget: exact, and the budget shrinks by the bytes (a long piece by 16×).
    let mut budget = Budget::per_request();
    assert_eq!(bpe.count("hello world", &mut budget), 2);
    assert_eq!(budget, Budget(Budget::BYTES - 11));
    let word = "a".repeat(100);
    let exact = tiktoken(Family::O200k, &word) as u64;
    assert_eq!(bpe.count(&word, &mut budget), exact);
    assert_eq!(
        budget,
        Budget(Budget::BYTES - 11 - 100 * Budget::LONG_PIECE_WEIGHT)
    );
    // A piece that costs more than is left, and everything after it, by the heuristic.
    let mut small = Budget(5);
    assert_eq!(
        bpe.count("hi there friend", &mut small),
        1 + (13u64).div_ceil(4)
    );
    assert_eq!(small, Budget(0));
    // A hostile megabyte-scale word: one piece far past the budget, never merged.
    let mut whole = Budget::per_request();
    let giant = "q".repeat(Budget::BYTES / 8);
    assert_eq!(
        bpe.count(&giant, &mut whole),
        (giant.len() as u64).div_ceil(4)
    );
}
