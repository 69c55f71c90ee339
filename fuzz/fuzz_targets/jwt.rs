//! JWT validation (header, claims, signature) of any bearer value: never panics.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use sluice::auth::jwt::{JwtAlg, JwtIssuerConfig, JwtKeyConfig, JwtKeySource, JwtValidator};

static VALIDATOR: LazyLock<Option<JwtValidator>> = LazyLock::new(|| {
    let config = JwtIssuerConfig {
        audiences: vec!["api://sluice".into()],
        keys: vec![JwtKeyConfig {
            kid: None,
            algorithms: vec![JwtAlg::HS256],
            source: JwtKeySource::secret(b"fuzzing-secret-of-at-least-32-bytes!".to_vec()),
        }],
        ..JwtIssuerConfig::new("https://issuer.example")
    };
    JwtValidator::new(vec![config]).ok()
});

fuzz_target!(|data: &[u8]| {
    let (Some(validator), Ok(token)) = (VALIDATOR.as_ref(), std::str::from_utf8(data)) else {
        return;
    };
    let _ = validator.validate(token, 1_800_000_000);
});
