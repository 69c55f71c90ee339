//! How many tokens one pre-token becomes: tiktoken's byte-pair merge, counted.
//!
//! The rule (OpenAI's `tiktoken`, `_byte_pair_merge`): start from single bytes; while some
//! adjacent pair of parts is a token, merge the pair whose token has the lowest rank, the
//! leftmost of equals. Short pieces (almost all of them) run that loop as tiktoken does, on
//! the stack; longer ones keep the pairs in a heap, so a hostile megabyte without a space
//! costs O(n log n), not tiktoken's O(n²). Both give the same merges in the same order.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use super::vocab::{Rank, Vocab};

/// Up to this many bytes, the quadratic loop on the stack is the faster one.
pub const SHORT: usize = 64;

/// The number of tokens `piece` encodes to. Every single byte must be a token of `vocab`
/// (true of every OpenAI vocabulary; checked when one is loaded).
pub fn count(vocab: &Vocab, piece: &[u8]) -> usize {
    match piece.len() {
        0 => 0,
        1 => 1,
        _ if vocab.rank(piece).is_some() => 1,
        n if n <= SHORT => count_short(vocab, piece),
        _ => count_long(vocab, piece),
    }
}

/// tiktoken's loop: `parts[i]` is (where part `i` starts, the rank of part `i` merged with
/// part `i + 1`), with a sentinel part at the end.
fn count_short(vocab: &Vocab, piece: &[u8]) -> usize {
    let n = piece.len();
    let mut parts = [(0usize, Rank::MAX); SHORT + 1];
    for (i, part) in parts.iter_mut().enumerate().take(n + 1) {
        part.0 = i;
    }
    let rank_of = |parts: &[(usize, Rank)], len: usize, i: usize| -> Rank {
        if i + 2 < len {
            vocab
                .rank(&piece[parts[i].0..parts[i + 2].0])
                .unwrap_or(Rank::MAX)
        } else {
            Rank::MAX
        }
    };
    let mut len = n + 1;
    for i in 0..n - 1 {
        parts[i].1 = rank_of(&parts, len, i);
    }
    loop {
        let mut min = (Rank::MAX, 0);
        for (i, &(_, rank)) in parts[..len - 1].iter().enumerate() {
            if rank < min.0 {
                min = (rank, i);
            }
        }
        if min.0 == Rank::MAX {
            return len - 1;
        }
        let i = min.1;
        parts.copy_within(i + 2..len, i + 1);
        len -= 1;
        parts[i].1 = rank_of(&parts, len, i);
        if i > 0 {
            parts[i - 1].1 = rank_of(&parts, len, i - 1);
        }
    }
}

/// The same merges with the candidate pairs in a min-heap keyed (rank, start): the heap's
/// minimum is tiktoken's leftmost lowest-ranked pair. Parts form a linked list over byte
/// positions; an entry is stale once its pair no longer spans the same bytes.
fn count_long(vocab: &Vocab, piece: &[u8]) -> usize {
    let n = piece.len();
    // next[i]: where the part starting at byte i ends (the next part's start); n at the end.
    let mut next: Vec<usize> = (1..=n).collect();
    // prev[i]: the start of the part before the one starting at i (unused for i = 0).
    let mut prev: Vec<usize> = (0..n).map(|i| i.saturating_sub(1)).collect();
    let mut heap = BinaryHeap::with_capacity(n);
    let pair_end = |next: &[usize], i: usize| {
        let mid = next[i];
        (mid < n).then(|| next[mid])
    };
    let push = |heap: &mut BinaryHeap<_>, i: usize, end: usize| {
        if let Some(rank) = vocab.rank(&piece[i..end]) {
            heap.push(Reverse((rank, i, end)));
        }
    };
    for i in 0..n - 1 {
        push(&mut heap, i, i + 2);
    }
    let mut parts = n;
    while let Some(Reverse((_, i, end))) = heap.pop() {
        // Stale: part i was merged into its left neighbour, or its pair has changed since.
        if next[i] == 0 || pair_end(&next, i) != Some(end) {
            continue;
        }
        let mid = next[i];
        next[i] = end;
        next[mid] = 0;
        if end < n {
            prev[end] = i;
        }
        parts -= 1;
        if let Some(e) = pair_end(&next, i) {
            push(&mut heap, i, e);
        }
        if i > 0 {
            let p = prev[i];
            push(&mut heap, p, end);
        }
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_loops_merge_alike() {
        let vocab = &crate::tokens::bpe::Bpe::of(crate::tokens::Family::O200k)
            .expect("tables")
            .vocab;
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let alphabets: [&[u8]; 4] = [b"ab", b"aeiou tnrs", b"0123456789", b"=-_/.:"];
        for round in 0..2000 {
            let alphabet = alphabets[round % alphabets.len()];
            let len = 2 + (next() % 60) as usize;
            let piece: Vec<u8> = (0..len)
                .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                .collect();
            assert_eq!(
                count_short(vocab, &piece),
                count_long(vocab, &piece),
                "{:?}",
                String::from_utf8_lossy(&piece)
            );
        }
    }
}
