//! Usage and model extraction from a JSON answer: never panics on any body, and the
//! incremental scanner reads the same usage and model however the body is split into reads.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::tokens::usage::JsonUsageScanner;
use sluice::tokens::usage_from_json;

fuzz_target!(|data: &[u8]| {
    let Some((&at, body)) = data.split_first() else {
        return;
    };
    let whole = usage_from_json(body);
    let mut one = JsonUsageScanner::new();
    one.feed(body);
    one.finish();
    let split = usize::from(at).min(body.len());
    let mut scanner = JsonUsageScanner::new();
    scanner.feed(&body[..split]);
    scanner.feed(&body[split..]);
    assert_eq!(scanner.finish(), whole);
    assert_eq!(scanner.model(), one.model());
});
