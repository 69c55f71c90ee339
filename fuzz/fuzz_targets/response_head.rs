//! The upstream response head parser: never panics, and a complete head lies within the
//! input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::http::{parse_response, Parse, ResponseHead};

fuzz_target!(|data: &[u8]| {
    let Some((&flags, input)) = data.split_first() else {
        return;
    };
    let mut head = ResponseHead::default();
    if let Ok(Parse::Complete) = parse_response(input, flags & 1 == 1, 64 * 1024, &mut head) {
        assert!(head.head_len <= input.len());
    }
});
