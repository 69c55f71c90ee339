//! The response cache's canonical key and the client's `Cache-Control`: never panic; a key's
//! canonical body is JSON that keys to the same key again (canonical form is a fixed point).
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
        ..CacheSettings::default()
    };
    let Ok(key) = request_key(Operation::ChatCompletions, None, data, &settings) else {
        return;
    };
    let prefix = b"chat\n0:\n";
    assert!(key.starts_with(prefix));
    let canonical = &key[prefix.len()..];
    serde_json::from_slice::<serde_json::Value>(canonical).expect("the canonical body is JSON");
    let again = request_key(Operation::ChatCompletions, None, canonical, &settings)
        .expect("a canonical body keys again");
    assert_eq!(again, key);
});
