//! The client's `Cache-Control` request directives, as RFC 9111 §5.2.1 defines them for a
//! cache in front of an origin:
//!
//! - `no-store` (§5.2.1.5): the cache must not store any part of this request or its
//!   answer — it is neither looked up nor stored (`x-sluice-cache: bypass`);
//! - `no-cache` (§5.2.1.4): the client does not take a stored answer without validating it
//!   with the origin; Sluice cannot validate (LLM answers have no validators), so the request
//!   goes to the backend, and its fresh answer may be stored for the next (`bypass`);
//! - `max-age=N` (§5.2.1.1): the client takes no stored answer older than N seconds; an
//!   older one is treated as `no-cache` (`max-age=0` is `no-cache`).
//!
//! Other directives (`max-stale`, `min-fresh`, `only-if-cached`, `no-transform`) are
//! ignored, as §5.2 allows for directives a cache does not implement. Directive names are
//! case-insensitive; every `Cache-Control` line counts.

use std::time::Duration;

/// What the client's directives allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ClientControl {
    /// `no-store`: neither served from the cache nor stored.
    pub no_store: bool,
    /// `no-cache`: not served from the cache; the fresh answer may be stored.
    pub no_cache: bool,
    /// `max-age=N`: a stored answer older than this is not served.
    pub max_age: Option<Duration>,
}

impl ClientControl {
    /// Adds the directives of one `Cache-Control` field value.
    pub fn add(&mut self, value: &[u8]) {
        for directive in value.split(|&b| b == b',') {
            let directive = directive.trim_ascii();
            let (name, argument) = match directive.iter().position(|&b| b == b'=') {
                Some(i) => (directive[..i].trim_ascii(), Some(&directive[i + 1..])),
                None => (directive, None),
            };
            if name.eq_ignore_ascii_case(b"no-store") {
                self.no_store = true;
            } else if name.eq_ignore_ascii_case(b"no-cache") {
                self.no_cache = true;
            } else if name.eq_ignore_ascii_case(b"max-age") {
                // delta-seconds (§1.2.2), quoted form tolerated (§5.2); an invalid value
                // is ignored. A value past u64 is "forever" (§1.2.2: 2^31 suffices).
                let digits = argument
                    .map(|a| a.trim_ascii())
                    .map(|a| a.strip_prefix(b"\"").unwrap_or(a))
                    .map(|a| a.strip_suffix(b"\"").unwrap_or(a))
                    .filter(|a| !a.is_empty() && a.iter().all(u8::is_ascii_digit));
                if let Some(digits) = digits {
                    let secs = std::str::from_utf8(digits)
                        .ok()
                        .and_then(|s| s.parse::<u64>().ok())
                        .unwrap_or(u64::MAX);
                    let age = Duration::from_secs(secs);
                    // The strictest of repeated values.
                    self.max_age = Some(self.max_age.map_or(age, |m| m.min(age)));
                }
            }
        }
    }

    /// Whether a stored answer of `age` may be served. `max-age=0` serves none, however
    /// young (the clock is coarse: a just-stored answer may read as 0 old).
    pub fn serves(&self, age: Duration) -> bool {
        !self.no_store
            && !self.no_cache
            && self.max_age.is_none_or(|max| !max.is_zero() && age <= max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(values: &[&str]) -> ClientControl {
        let mut c = ClientControl::default();
        for v in values {
            c.add(v.as_bytes());
        }
        c
    }

    #[test]
    fn directives_are_read_case_insensitively_from_every_line() {
        assert!(parse(&["No-Store"]).no_store);
        assert!(parse(&["max-stale, NO-CACHE"]).no_cache);
        let c = parse(&["no-transform", "no-store"]);
        assert!(c.no_store && !c.no_cache);
        assert_eq!(parse(&[""]), ClientControl::default());
        assert_eq!(parse(&["no-stores, cache"]), ClientControl::default());
    }

    #[test]
    fn max_age_bounds_the_age_served() {
        let c = parse(&["max-age=30"]);
        assert!(c.serves(Duration::from_secs(30)));
        assert!(!c.serves(Duration::from_secs(31)));
        assert!(!parse(&["max-age=0"]).serves(Duration::ZERO));
        assert_eq!(
            parse(&["max-age=\"5\""]).max_age,
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            parse(&["max-age=5, max-age=2"]).max_age,
            Some(Duration::from_secs(2))
        );
        assert_eq!(parse(&["max-age=-1", "max-age=x", "max-age"]).max_age, None);
        assert!(parse(&["max-age=99999999999999999999999"]).serves(Duration::from_secs(1 << 40)));
        assert!(ClientControl::default().serves(Duration::from_secs(1 << 40)));
        assert!(!parse(&["no-cache"]).serves(Duration::ZERO));
    }
}
