//! A deployment's `cache = { … }`: defaults, every error at its line and field, and the store
//! carried over a reload that keeps the settings.

use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::cache::CacheSettings;

fn with_cache(cache: &str) -> String {
    format!("{MOCK_DEPLOYMENT}cache = {{ {cache} }}\n")
}

#[test]
fn a_cache_compiles_with_its_defaults() {
    let snapshot = compile(&with_cache("")).unwrap();
    let cache = snapshot.deployments["d"].cache.as_ref().unwrap();
    assert_eq!(*cache.settings(), CacheSettings::default());
    assert_eq!(cache.settings().ttl, Duration::from_secs(600));
    assert_eq!(cache.settings().max_bytes, 64 << 20);
    assert_eq!(
        cache.settings().ignore_fields,
        ["user".to_owned(), "stream_options".to_owned()]
    );
    let snapshot = compile(&with_cache(
        r#"ttl = "90s", max_entries = 5, max_bytes = "2MB", per_subscription = false, nondeterministic = true, ignore_fields = []"#,
    ))
    .unwrap();
    let settings = snapshot.deployments["d"].cache.as_ref().unwrap().settings();
    assert_eq!(
        *settings,
        CacheSettings {
            ttl: Duration::from_secs(90),
            max_entries: 5,
            max_bytes: 2_000_000,
            per_subscription: false,
            nondeterministic: true,
            ignore_fields: vec![],
        }
    );
    assert!(compile(MOCK_DEPLOYMENT).unwrap().deployments["d"]
        .cache
        .is_none());
}

#[test]
fn cache_errors_name_their_line_and_field() {
    let found = errors(&with_cache(
        r#"ttl = "0s", max_entries = 0, max_bytes = "64 megs", ignore_fields = ["user", ""]"#,
    ));
    assert_eq!(
        found,
        [
            "sluice.toml:8:17: deployment[0].cache.ttl: must be more than 0",
            "sluice.toml:8:37: deployment[0].cache.max_entries: must be 1 or more",
            "sluice.toml:8:52: deployment[0].cache.max_bytes: invalid size `64 megs`: expected a whole number and a unit (B, KiB, MiB, GiB, KB, MB or GB), e.g. \"100MiB\"",
            "sluice.toml:8:88: deployment[0].cache.ignore_fields[1]: must not be empty",
        ]
    );
    assert_error(
        &with_cache(r#"ttl = "soon""#),
        "sluice.toml:8:17: deployment[0].cache.ttl: invalid duration `soon`: expected a whole number and a unit (ms, s, m or h), e.g. \"500ms\", \"10s\", \"5m\"",
    );
    assert_error(
        &with_cache(r#"max_bytes = "512B""#),
        "sluice.toml:8:23: deployment[0].cache.max_bytes: must be at least 1KiB",
    );
    assert_error(
        &with_cache(r#"ignore_fields = ["user", "input"]"#),
        "sluice.toml:8:36: deployment[0].cache.ignore_fields[1]: `input` changes the answer: ignoring it would serve one request's answer to another",
    );
    // A case a folding backend reads as the field is the field.
    assert_error(
        &with_cache("ignore_fields = [\"Messages\"]"),
        "sluice.toml:8:28: deployment[0].cache.ignore_fields[0]: `Messages` changes the answer: ignoring it would serve one request's answer to another",
    );
    assert_error(
        &with_cache("ignore_fields = [\"me\u{17f}\u{17f}ages\"]"),
        "sluice.toml:8:28: deployment[0].cache.ignore_fields[0]: `me\u{17f}\u{17f}ages` changes the answer: ignoring it would serve one request's answer to another",
    );
    assert_error(
        &with_cache("ignore_fields = [\"parallel_tool_calls\"]"),
        "sluice.toml:8:28: deployment[0].cache.ignore_fields[0]: `parallel_tool_calls` changes the answer: ignoring it would serve one request's answer to another",
    );
    let unknown = errors(&with_cache("tll = \"1m\""));
    assert_eq!(unknown.len(), 1);
    assert!(
        unknown[0].starts_with("sluice.toml:8:") && unknown[0].contains("unknown field `tll`"),
        "{unknown:?}"
    );
}

#[test]
fn a_reload_keeps_the_store_while_the_settings_stay() {
    let first = compile(&with_cache(r#"ttl = "1m""#)).unwrap();
    let store = |s: &Snapshot| Arc::clone(s.deployments["d"].cache.as_ref().unwrap());
    let same = compile_with_previous(
        &format!(
            "{}\n[[deployment]]\nname = \"e\"\nbackends = [{{ backend = \"m\" }}]\n",
            with_cache(r#"ttl = "1m""#)
        ),
        Some(&first),
    )
    .unwrap();
    assert!(Arc::ptr_eq(&store(&first), &store(&same)));
    let changed = compile_with_previous(&with_cache(r#"ttl = "2m""#), Some(&same)).unwrap();
    assert!(!Arc::ptr_eq(&store(&same), &store(&changed)));
    let renamed = compile_with_previous(
        &with_cache(r#"ttl = "2m""#).replace("name = \"d\"", "name = \"d2\""),
        Some(&changed),
    )
    .unwrap();
    assert!(renamed.deployments["d2"].cache.is_some());
}
