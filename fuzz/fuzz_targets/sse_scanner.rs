//! The SSE scanner that filters a stream as it passes: never panics, and what it lets
//! through, the usage it reads and whether the stream ended do not depend on how the bytes
//! were split into reads.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::tokens::usage::SseScanner;

fn scan(pieces: &[&[u8]]) -> (Vec<u8>, String) {
    let mut scanner = SseScanner::new(true);
    let mut out = Vec::new();
    for piece in pieces {
        let _ = scanner.feed(piece, &mut out);
    }
    let outcome = scanner.finish(&mut out);
    (out, format!("{:?} {}", outcome.usage, outcome.truncated))
}

fuzz_target!(|data: &[u8]| {
    let Some((&at, input)) = data.split_first() else {
        return;
    };
    let split = usize::from(at).min(input.len());
    let (a, b) = input.split_at(split);
    assert_eq!(scan(&[input]), scan(&[a, b]));
});
