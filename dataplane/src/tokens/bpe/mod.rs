//! Exact BPE token counts for OpenAI's `o200k_base` and `cl100k_base`, in little memory.
//!
//! A count is tiktoken's `encode_ordinary(text).len()`: the text split by the family's regex
//! ([`split`]), each piece merged by tiktoken's rule ([`merge`]) against the vocabulary
//! ([`vocab`]). The vocabularies are OpenAI's published `.tiktoken` files, embedded
//! gzip-compressed (`dataplane/data/`, SHA-256 of the uncompressed files as tiktoken checks
//! them: o200k `446a9538…1a2d`, cl100k `223921b7…b2a7`), and decoded on first use.
//!
//! Why not a crate: `tiktoken-rs` merges in time quadratic in a piece's length and
//! `bpe-openai` is linear but keeps ~35 MiB for o200k (and runs a regex automaton per piece);
//! here o200k costs ~4.4 MiB and the split is a hand-written matcher. The tests check every
//! count against `tiktoken-rs`.

mod merge;
mod split;
mod vocab;

use std::sync::LazyLock;

use super::estimate::Family;
use split::Pattern;
use vocab::{Vocab, VocabError};

/// One family's tables: its vocabulary and its split regex.
pub struct Bpe {
    vocab: Vocab,
    pattern: Pattern,
}

impl Bpe {
    /// The family's tables, decoded on first use (release build: o200k ~60 ms, cl100k
    /// ~30 ms) and shared by every thread after. `None` only if the embedded file could not
    /// be read, which the tests rule out.
    pub fn of(family: Family) -> Option<&'static Bpe> {
        static O200K: LazyLock<Option<Bpe>> = LazyLock::new(|| load(Family::O200k));
        static CL100K: LazyLock<Option<Bpe>> = LazyLock::new(|| load(Family::Cl100k));
        match family {
            Family::O200k => O200K.as_ref(),
            Family::Cl100k => CL100K.as_ref(),
        }
    }

    /// The number of tokens tiktoken encodes `text` to (special tokens counted as text),
    /// exactly while `budget` lasts (see [`Budget`]); what is left when it runs out is
    /// counted by [`heuristic`] (a token per 4 bytes).
    pub fn count(&self, text: &str, budget: &mut Budget) -> u64 {
        let mut total = 0u64;
        let mut done = 0;
        for piece in split::pieces(self.pattern, text) {
            let cost = if piece.len() <= merge::SHORT {
                piece.len()
            } else {
                piece.len().saturating_mul(Budget::LONG_PIECE_WEIGHT)
            };
            if cost > budget.0 {
                budget.0 = 0;
                return total + heuristic(text.len() - done);
            }
            budget.0 -= cost;
            total += merge::count(&self.vocab, piece.as_bytes()) as u64;
            done += piece.len();
        }
        total
    }
}

/// How much text one request's estimate counts exactly: 1 MiB of prompt (~250k tokens of
/// prose, past most models' context windows), each byte of a pre-token longer than 64 bytes
/// weighing 16 (its merge keeps a heap: ~50× the cost of a byte of prose). Past it the text
/// is counted by [`heuristic`], so a hostile prompt — megabytes without a space — costs a
/// worker tens of milliseconds at most, not seconds; the answer's usage settles the account
/// either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget(usize);

impl Budget {
    /// Bytes of text counted exactly per request.
    pub const BYTES: usize = 1 << 20;
    /// What a byte of a long pre-token weighs against [`BYTES`](Self::BYTES).
    pub const LONG_PIECE_WEIGHT: usize = 16;

    /// A whole budget for one request.
    pub fn per_request() -> Self {
        Budget(Self::BYTES)
    }
}

/// A token per 4 bytes, rounded up: the count when no tables are used.
pub fn heuristic(len: usize) -> u64 {
    (len as u64).div_ceil(4)
}

fn load(family: Family) -> Option<Bpe> {
    match decode(family) {
        Ok(bpe) => Some(bpe),
        Err(e) => {
            tracing::error!(family = family.name(), error = %e, "cannot load the BPE tables; counting tokens by the byte heuristic");
            None
        }
    }
}

fn decode(family: Family) -> Result<Bpe, VocabError> {
    let (gz, pattern): (&[u8], _) = match family {
        Family::O200k => (
            include_bytes!("../../../data/o200k_base.tiktoken.gz"),
            Pattern::O200k,
        ),
        Family::Cl100k => (
            include_bytes!("../../../data/cl100k_base.tiktoken.gz"),
            Pattern::Cl100k,
        ),
    };
    Ok(Bpe {
        vocab: Vocab::from_tiktoken_gz(gz)?,
        pattern,
    })
}

#[cfg(test)]
mod tests;
