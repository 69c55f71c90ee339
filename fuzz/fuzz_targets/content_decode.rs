//! Decoding a content-coded answer (gzip, deflate, br, stacked): never panics, every output
//! piece is bounded, and decoding the input in two pieces (split where the second byte says)
//! gives what decoding it whole does.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::http::content_coding::{Coding, ContentDecoder, PIECE};

/// Decodes `pieces` in order: the output, and whether decoding failed.
fn decode(codings: &[Coding], pieces: &[&[u8]]) -> (Vec<u8>, bool) {
    let mut decoder = ContentDecoder::new(codings);
    let mut out = Vec::new();
    for piece in pieces {
        let mut rest = *piece;
        loop {
            match decoder.decode(rest) {
                Ok((taken, made)) => {
                    assert!(made.len() <= PIECE, "a piece of {} bytes", made.len());
                    assert!(taken <= rest.len());
                    out.extend_from_slice(made);
                    rest = &rest[taken..];
                    // Bounded: a bomb is cut off here, not in Sluice.
                    if out.len() > 1 << 24 {
                        return (out, false);
                    }
                    if made.is_empty() && rest.is_empty() {
                        break;
                    }
                }
                Err(_) => return (out, true),
            }
        }
    }
    let failed = decoder.finish().is_err();
    (out, failed)
}

fuzz_target!(|data: &[u8]| {
    let [which, at, input @ ..] = data else {
        return;
    };
    let all = [Coding::Gzip, Coding::Deflate, Coding::Br];
    let mut codings = vec![all[usize::from(which % 3)]];
    if which & 0x10 != 0 {
        codings.push(all[usize::from((which >> 2) % 3)]);
    }
    let whole = decode(&codings, &[input]);
    let split = usize::from(*at).min(input.len());
    let (a, b) = input.split_at(split);
    let halves = decode(&codings, &[a, b]);
    if whole.0.len() <= 1 << 24 && halves.0.len() <= 1 << 24 {
        assert_eq!(whole.1, halves.1, "failure");
        if !whole.1 {
            assert_eq!(whole.0, halves.0, "output");
        }
    }
});
