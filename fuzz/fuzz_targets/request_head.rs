//! The request head parser: never panics; a complete head lies within the input, and parsing
//! just that head gives the same answer (what follows a head never changes how it reads).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::http::{parse_request, Parse, RequestHead};
use sluice::snapshot::HttpLimits;

fuzz_target!(|data: &[u8]| {
    let limits = HttpLimits::default();
    let mut head = RequestHead::new();
    if let Ok(Parse::Complete) = parse_request(data, &limits, &mut head) {
        let len = head.head_len;
        assert!(len <= data.len());
        let mut again = RequestHead::new();
        assert!(matches!(
            parse_request(&data[..len], &limits, &mut again),
            Ok(Parse::Complete)
        ));
        assert_eq!(again.head_len, len);
        assert_eq!(again.body, head.body);
    }
});
