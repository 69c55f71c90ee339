//! The response cache's canonical key and the client's `Cache-Control`: never panic; a key's
//! canonical body keys to the same key again (canonical form is a fixed point), and — where
//! serde_json reads the body too — it is the same JSON value as the body.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::cache::control::ClientControl;
use sluice::cache::key::request_key;
use sluice::cache::CacheSettings;
use sluice::route::Operation;

fuzz_target!(|data: &[u8]| {
    let mut control = ClientControl::default();
    control.add(data);
    let settings = CacheSettings {
        nondeterministic: true,
        ignore_fields: Vec::new(),
        ..CacheSettings::default()
    };
    let Ok(key) = request_key(Operation::ChatCompletions, None, data, &settings) else {
        return;
    };
    let prefix = b"chat\n0:\n";
    assert!(key.starts_with(prefix));
    let canonical = &key[prefix.len()..];
    let again = request_key(Operation::ChatCompletions, None, canonical, &settings)
        .expect("a canonical body keys again");
    assert_eq!(again, key);
    // serde_json refuses numbers past f64's range, which RFC 8259 allows; elsewhere both
    // must read the same value.
    if let Ok(original) = serde_json::from_slice::<serde_json::Value>(data) {
        let canon: serde_json::Value =
            serde_json::from_slice(canonical).expect("serde_json reads the canonical form");
        assert_eq!(canon, original);
    }
});
