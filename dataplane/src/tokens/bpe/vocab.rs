//! A BPE vocabulary in compact form: every token's bytes in one buffer, in rank order, and an
//! open-addressing table from bytes to rank.
//!
//! o200k_base (199 998 tokens, 1.3 MiB of token bytes) takes ~4.4 MiB here: the bytes, an
//! end offset per token and a table of 2^19 ranks. Libraries that build a linear-time encoder
//! keep several times more (tries, pair tables: ~35 MiB for o200k), which is most of a
//! gateway's memory.

use std::io::Read;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

/// A token's rank: its id, and its priority when merging (lower merges first).
pub type Rank = u32;

/// An empty slot of the table.
const EMPTY: u32 = u32::MAX;

/// One vocabulary: the tokens' bytes and a table to find a byte string's rank.
pub struct Vocab {
    /// Every token's bytes, concatenated in rank order.
    bytes: Box<[u8]>,
    /// `ends[r]`: where token `r`'s bytes end in `bytes` (it starts where `r - 1` ends).
    ends: Box<[u32]>,
    /// Open addressing with linear probing: a rank, or [`EMPTY`]. A power of two at least
    /// twice the token count, so probes stay short.
    slots: Box<[u32]>,
    /// The longest token, in bytes: longer strings are not looked up.
    max_len: usize,
}

/// Why a vocabulary file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum VocabError {
    #[error("cannot decompress the vocabulary: {0}")]
    Gzip(#[from] std::io::Error),
    #[error("vocabulary line {line}: {what}")]
    Line { line: usize, what: &'static str },
}

impl Vocab {
    /// Reads a gzip-compressed `.tiktoken` file (OpenAI's published format: one token per
    /// line, `base64(bytes) rank`, ranks 0, 1, 2, … in order).
    ///
    /// # Errors
    /// A file that does not decompress, a line that is not `base64 rank`, a rank out of
    /// order, a repeated token, or a single byte that is not a token.
    pub fn from_tiktoken_gz(gz: &[u8]) -> Result<Self, VocabError> {
        let mut text = String::new();
        flate2::read::GzDecoder::new(gz).read_to_string(&mut text)?;
        let lines = text.lines().count();
        let mut bytes = Vec::with_capacity(text.len() / 2);
        let mut ends = Vec::with_capacity(lines);
        let mut decoded = Vec::with_capacity(256);
        for (i, line) in text.lines().enumerate() {
            let bad = |what| VocabError::Line { line: i + 1, what };
            let (token, rank) = line.split_once(' ').ok_or(bad("no rank"))?;
            let rank: usize = rank.parse().map_err(|_| bad("rank is not a number"))?;
            if rank != i {
                return Err(bad("ranks are not 0, 1, 2, … in order"));
            }
            decoded.clear();
            STANDARD
                .decode_vec(token, &mut decoded)
                .map_err(|_| bad("token is not base64"))?;
            if decoded.is_empty() {
                return Err(bad("empty token"));
            }
            bytes.extend_from_slice(&decoded);
            ends.push(u32::try_from(bytes.len()).map_err(|_| bad("vocabulary too large"))?);
        }
        let max_len = ends
            .iter()
            .scan(0, |start, &end| {
                let len = end - *start;
                *start = end;
                Some(len as usize)
            })
            .max()
            .unwrap_or(0);
        let mut vocab = Vocab {
            bytes: bytes.into_boxed_slice(),
            ends: ends.into_boxed_slice(),
            slots: vec![EMPTY; (lines * 2).next_power_of_two()].into_boxed_slice(),
            max_len,
        };
        for rank in 0..vocab.ends.len() as Rank {
            let slot = vocab.free_slot(rank).ok_or(VocabError::Line {
                line: rank as usize + 1,
                what: "token repeated",
            })?;
            vocab.slots[slot] = rank;
        }
        // The merge starts from single bytes: each must be a token.
        if (0..=255u8).any(|b| vocab.rank(&[b]).is_none()) {
            return Err(VocabError::Line {
                line: vocab.ends.len(),
                what: "not every single byte is a token",
            });
        }
        Ok(vocab)
    }

    /// The rank of the token whose bytes are `piece`, or `None` when no token is.
    #[inline(always)]
    pub fn rank(&self, piece: &[u8]) -> Option<Rank> {
        if piece.len() > self.max_len {
            return None;
        }
        let mask = self.slots.len() - 1;
        let mut slot = self.hash(piece) & mask;
        loop {
            match self.slots[slot] {
                EMPTY => return None,
                rank if self.token(rank) == piece => return Some(rank),
                _ => slot = (slot + 1) & mask,
            }
        }
    }

    /// The empty slot where token `rank` goes, or `None` if an equal token is in already.
    fn free_slot(&self, rank: Rank) -> Option<usize> {
        let token = self.token(rank);
        let mask = self.slots.len() - 1;
        let mut slot = self.hash(token) & mask;
        loop {
            match self.slots[slot] {
                EMPTY => return Some(slot),
                other if self.token(other) == token => return None,
                _ => slot = (slot + 1) & mask,
            }
        }
    }

    /// Token `rank`'s bytes (`rank` < [`len`](Self::len)).
    fn token(&self, rank: Rank) -> &[u8] {
        let r = rank as usize;
        let start = if r == 0 { 0 } else { self.ends[r - 1] as usize };
        &self.bytes[start..self.ends[r] as usize]
    }

    /// A multiply-xorshift hash of `piece`, eight bytes at a time. The table's contents are
    /// fixed (OpenAI's tokens), so a client can only choose what is looked up, never make
    /// the table's chains longer: no seed is needed.
    #[inline(always)]
    fn hash(&self, piece: &[u8]) -> usize {
        const K: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut h = (piece.len() as u64).wrapping_mul(K);
        let mut chunks = piece.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            h = (h ^ u64::from_le_bytes(word)).wrapping_mul(K);
            h ^= h >> 29;
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            h = (h ^ u64::from_le_bytes(word)).wrapping_mul(K);
        }
        h ^= h >> 32;
        h = h.wrapping_mul(K);
        (h ^ (h >> 29)) as usize
    }
}
