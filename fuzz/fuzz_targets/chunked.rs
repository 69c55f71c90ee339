//! The chunked body decoder: never panics, and decoding the input in two pieces (split where
//! the first byte says) gives what decoding it whole does — the same bytes, the same end,
//! the same refusal.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::http::ChunkedDecoder;

/// Decodes `pieces` in order: the body, whether it ended, whether it was refused.
fn decode(pieces: &[&[u8]]) -> (Vec<u8>, bool, bool) {
    let mut decoder = ChunkedDecoder::new(1 << 20);
    let mut out = Vec::new();
    let mut pending = Vec::new();
    for piece in pieces {
        pending.extend_from_slice(piece);
        match decoder.decode(&pending, &mut out) {
            Ok(step) => {
                assert!(step.consumed <= pending.len());
                pending.drain(..step.consumed);
                if step.done {
                    return (out, true, false);
                }
            }
            Err(_) => return (out, false, true),
        }
    }
    (out, false, false)
}

fuzz_target!(|data: &[u8]| {
    let Some((&at, input)) = data.split_first() else {
        return;
    };
    let split = usize::from(at).min(input.len());
    let whole = decode(&[input]);
    let (a, b) = input.split_at(split);
    let pieces = decode(&[a, b]);
    assert_eq!(whole.1, pieces.1, "end");
    assert_eq!(whole.2, pieces.2, "refusal");
    if !whole.2 {
        assert_eq!(whole.0, pieces.0, "body");
    }
});
