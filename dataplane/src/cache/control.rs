//! The `Cache-Control` directives on both sides of the cache (RFC 9111 §5.2).
//!
//! The client's request directives ([`ClientControl`], §5.2.1), for a cache in front of an
//! origin:
//!
//! - `no-store` (§5.2.1.5): the cache must not store any part of this request or its
//!   answer — it is neither looked up nor stored (`x-sluice-cache: bypass`);
//! - `no-cache` (§5.2.1.4): the client does not take a stored answer without validating it
//!   with the origin; Sluice cannot validate (LLM answers have no validators), so the request
//!   goes to the backend, and its fresh answer may be stored for the next (`bypass`);
//! - `max-age=N` (§5.2.1.1): the client takes no stored answer older than N seconds; an
//!   older one is treated as `no-cache` (`max-age=0` is `no-cache`).
//!
//! Other request directives (`max-stale`, `min-fresh`, `only-if-cached`, `no-transform`)
//! are ignored, as §5.2 allows for directives a cache does not implement.
//!
//! The backend's answer ([`AnswerControl`], §3, §4.2.1, §5.2.2), as a shared cache reads
//! it. It is not stored when it says `no-store` (§5.2.2.5), `private` (§5.2.2.7),
//! `no-cache` (§5.2.2.4: Sluice cannot revalidate; the qualified forms too) or `Vary: *`
//! (§4.1: no request matches it), nor when its freshness lifetime is already spent. That
//! lifetime is `s-maxage` (§5.2.2.10), else `max-age` (§5.2.2.1), else `Expires` minus
//! `Date` (§4.2.1; an invalid `Expires`, `0` included, is in the past, §5.3), less its age
//! on arrival; an answer that states one is stored for the lesser of it and the
//! deployment's `ttl`, one that states none for `ttl`. Its age on arrival is §4.2.3's
//! `corrected_initial_age`: the larger of its `Age` (§5.1) and its apparent age (arrival
//! less `Date`); a stored answer's age is that plus the time it has been stored, which the
//! client's `max-age` is held to and a hit states in `Age` (§5.1).
//!
//! Directive names are case-insensitive; every `Cache-Control` line counts; of repeated
//! ages the strictest holds; an answer's `max-age` or `s-maxage` that is not delta-seconds
//! (`-1`, `0x10`, none) makes it stale (§4.2.1: "caches are encouraged to consider
//! responses that have invalid freshness information to be stale").

use std::time::{Duration, SystemTime};

/// The directives of one `Cache-Control` field value: each name (trimmed) and its argument
/// (after `=`, untrimmed), in order.
fn directives(value: &[u8]) -> impl Iterator<Item = (&[u8], Option<&[u8]>)> {
    value.split(|&b| b == b',').map(|directive| {
        let directive = directive.trim_ascii();
        match directive.iter().position(|&b| b == b'=') {
            Some(i) => (directive[..i].trim_ascii(), Some(&directive[i + 1..])),
            None => (directive, None),
        }
    })
}

/// A delta-seconds argument (§1.2.2), quoted form tolerated (§5.2); `None` when invalid. A
/// value past u64 is "forever" (§1.2.2: 2^31 suffices).
fn delta_seconds(argument: Option<&[u8]>) -> Option<u64> {
    let digits = argument
        .map(|a| a.trim_ascii())
        .map(|a| a.strip_prefix(b"\"").unwrap_or(a))
        .map(|a| a.strip_suffix(b"\"").unwrap_or(a))
        .filter(|a| !a.is_empty() && a.iter().all(u8::is_ascii_digit))?;
    Some(
        std::str::from_utf8(digits)
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(u64::MAX),
    )
}

/// The stricter of a held age and a new one.
fn strictest(held: Option<u64>, new: u64) -> Option<u64> {
    Some(held.map_or(new, |h| h.min(new)))
}

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
        for (name, argument) in directives(value) {
            if name.eq_ignore_ascii_case(b"no-store") {
                self.no_store = true;
            } else if name.eq_ignore_ascii_case(b"no-cache") {
                self.no_cache = true;
            } else if name.eq_ignore_ascii_case(b"max-age") {
                if let Some(secs) = delta_seconds(argument) {
                    let age = Duration::from_secs(secs);
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

/// What a backend's answer lets the cache do with it (see the module's rules).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// The answer states no lifetime: it is stored for the deployment's `ttl`.
    Unstated {
        /// Its age on arrival (§4.2.3 `corrected_initial_age`, whole seconds).
        age: Duration,
    },
    /// The answer states a lifetime it has not outlived: stored for the lesser of what is
    /// left of it and `ttl`.
    For {
        /// What is left of its lifetime from now (more than zero).
        left: Duration,
        /// Its age on arrival (§4.2.3 `corrected_initial_age`, whole seconds).
        age: Duration,
    },
    /// The answer must not be stored (a directive forbids it, or it is already stale).
    NotStorable,
}

impl Default for Freshness {
    /// A new answer that states nothing: `Unstated`, 0 old.
    fn default() -> Self {
        Freshness::Unstated {
            age: Duration::ZERO,
        }
    }
}

/// The header fields of a backend's answer that decide its [`Freshness`], gathered one
/// field at a time ([`Self::add`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct AnswerControl<'h> {
    forbidden: bool,
    s_maxage: Option<u64>,
    max_age: Option<u64>,
    /// `Expires` (`Some(b"")` when sent twice: a list is not a date, so it is past).
    expires: Option<&'h [u8]>,
    date: Option<&'h [u8]>,
    age: Option<u64>,
}

impl<'h> AnswerControl<'h> {
    /// Adds one header field of the answer (`name` case-insensitive); fields other than
    /// `Cache-Control`, `Expires`, `Date`, `Age` and `Vary` are ignored.
    pub fn add(&mut self, name: &[u8], value: &'h [u8]) {
        if name.eq_ignore_ascii_case(b"cache-control") {
            for (directive, argument) in directives(value) {
                if [&b"no-store"[..], b"private", b"no-cache"]
                    .iter()
                    .any(|d| directive.eq_ignore_ascii_case(d))
                {
                    self.forbidden = true;
                } else if directive.eq_ignore_ascii_case(b"s-maxage") {
                    // §4.2.1: a response with invalid freshness information is stale.
                    let secs = delta_seconds(argument).unwrap_or(0);
                    self.s_maxage = strictest(self.s_maxage, secs);
                } else if directive.eq_ignore_ascii_case(b"max-age") {
                    let secs = delta_seconds(argument).unwrap_or(0);
                    self.max_age = strictest(self.max_age, secs);
                }
            }
        } else if name.eq_ignore_ascii_case(b"expires") {
            self.expires = Some(if self.expires.is_some() { b"" } else { value });
        } else if name.eq_ignore_ascii_case(b"date") {
            self.date.get_or_insert(value);
        } else if name.eq_ignore_ascii_case(b"age") {
            // §5.1: an invalid Age is ignored.
            if let Some(secs) = delta_seconds(Some(value)) {
                self.age = Some(self.age.map_or(secs, |a| a.max(secs)));
            }
        } else if name.eq_ignore_ascii_case(b"vary")
            && value.split(|&b| b == b',').any(|f| f.trim_ascii() == b"*")
        {
            self.forbidden = true;
        }
    }

    /// The answer's freshness, arriving at `now` (the wall clock).
    pub fn freshness(&self, now: SystemTime) -> Freshness {
        if self.forbidden {
            return Freshness::NotStorable;
        }
        let date = self.date.and_then(http_date);
        // §4.2.3: apparent_age = max(0, response_time - date_value); the response delay
        // is not counted (the request went out moments before).
        let apparent = date
            .and_then(|d| now.duration_since(d).ok())
            .map_or(0, |d| d.as_secs());
        let age = Duration::from_secs(apparent.max(self.age.unwrap_or(0)));
        let lifetime = if let Some(secs) = self.s_maxage.or(self.max_age) {
            Duration::from_secs(secs)
        } else if let Some(expires) = self.expires {
            http_date(expires)
                .and_then(|at| at.duration_since(date.unwrap_or(now)).ok())
                .unwrap_or_default()
        } else {
            return Freshness::Unstated { age };
        };
        match lifetime.saturating_sub(age) {
            left if left.is_zero() => Freshness::NotStorable,
            left => Freshness::For { left, age },
        }
    }
}

/// An HTTP-date (RFC 9110 §5.6.7, all three forms); `None` when invalid.
fn http_date(value: &[u8]) -> Option<SystemTime> {
    httpdate::parse_http_date(std::str::from_utf8(value).ok()?.trim()).ok()
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

    fn answer(fields: &[(&str, &str)]) -> Freshness {
        let mut c = AnswerControl::default();
        for (name, value) in fields {
            c.add(name.as_bytes(), value.as_bytes());
        }
        let now = httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:30 GMT").unwrap();
        c.freshness(now)
    }

    #[test]
    fn an_answer_that_forbids_storing_or_varies_on_everything_is_not_stored() {
        for control in [
            "no-store",
            "private",
            "max-age=60, PRIVATE",
            "no-cache",
            "No-Cache=\"set-cookie\", max-age=60",
            "s-maxage=60, private=\"x\"",
        ] {
            assert_eq!(
                answer(&[("Cache-Control", control)]),
                Freshness::NotStorable,
                "{control}"
            );
        }
        assert_eq!(answer(&[("vary", "*")]), Freshness::NotStorable);
        assert_eq!(answer(&[("Vary", "origin, * ")]), Freshness::NotStorable);
        assert_eq!(answer(&[("vary", "origin")]), Freshness::default());
        assert_eq!(
            answer(&[
                ("cache-control", "no-transform, public"),
                ("x-no-cache", "1")
            ]),
            Freshness::default()
        );
    }

    #[test]
    fn the_lifetime_is_s_maxage_then_max_age_then_expires_less_the_age() {
        let secs = |s| Freshness::For {
            left: Duration::from_secs(s),
            age: Duration::ZERO,
        };
        let aged = |s, a| Freshness::For {
            left: Duration::from_secs(s),
            age: Duration::from_secs(a),
        };
        assert_eq!(answer(&[("cache-control", "max-age=60")]), secs(60));
        assert_eq!(
            answer(&[("cache-control", "max-age=60, s-maxage=5")]),
            secs(5)
        );
        assert_eq!(
            answer(&[
                ("cache-control", "s-maxage=500"),
                ("cache-control", "max-age=1")
            ]),
            secs(500)
        );
        assert_eq!(
            answer(&[("cache-control", "max-age=60"), ("age", "50")]),
            aged(10, 50)
        );
        assert_eq!(
            answer(&[("age", "5"), ("Age", "x")]),
            Freshness::Unstated {
                age: Duration::from_secs(5)
            }
        );
        // Expires counts from Date, else from now; the time since Date is the answer's
        // apparent age (now is 08:49:30).
        assert_eq!(
            answer(&[
                ("date", "Sun, 06 Nov 1994 08:49:00 GMT"),
                ("expires", "Sun, 06 Nov 1994 08:50:00 GMT"),
            ]),
            aged(30, 30)
        );
        assert_eq!(
            answer(&[
                ("date", "Sun, 06 Nov 1994 08:49:20 GMT"),
                ("cache-control", "max-age=60"),
                ("age", "5"),
            ]),
            aged(50, 10)
        );
        // The larger of Age and the apparent age counts; a Date ahead of now is 0 old.
        assert_eq!(
            answer(&[
                ("date", "Sun, 06 Nov 1994 08:49:20 GMT"),
                ("cache-control", "max-age=60"),
                ("age", "30"),
            ]),
            aged(30, 30)
        );
        assert_eq!(
            answer(&[
                ("date", "Sun, 06 Nov 1994 09:00:00 GMT"),
                ("cache-control", "max-age=60"),
            ]),
            secs(60)
        );
        assert_eq!(
            answer(&[("expires", "Sunday, 06-Nov-94 08:50:30 GMT")]),
            secs(60)
        );
        // max-age overrides Expires.
        assert_eq!(
            answer(&[
                ("expires", "Sun, 06 Nov 1994 08:00:00 GMT"),
                ("cache-control", "max-age=7"),
            ]),
            secs(7)
        );
    }

    #[test]
    fn an_answer_already_stale_is_not_stored() {
        for fields in [
            &[("cache-control", "max-age=0")][..],
            &[("cache-control", "s-maxage=0, max-age=60")],
            &[("cache-control", "max-age=0, must-revalidate")],
            &[("cache-control", "max-age=60"), ("age", "60")],
            &[("cache-control", "max-age=-1")],
            &[("cache-control", "max-age=0x10")],
            &[("cache-control", "s-maxage, max-age=60")],
            &[("expires", "Sun, 06 Nov 1994 08:49:29 GMT")],
            &[("expires", "0")],
            &[
                ("expires", "Sun, 06 Nov 1994 08:59:29 GMT"),
                ("expires", "x"),
            ],
            &[
                ("date", "Sun, 06 Nov 1994 09:00:00 GMT"),
                ("expires", "Sun, 06 Nov 1994 09:00:00 GMT"),
            ],
            // Dated 10 minutes ago, fresh for 5.
            &[
                ("date", "Sun, 06 Nov 1994 08:39:30 GMT"),
                ("cache-control", "max-age=300"),
            ],
            &[
                ("date", "Sun, 06 Nov 1994 08:39:30 GMT"),
                ("expires", "Sun, 06 Nov 1994 08:44:30 GMT"),
            ],
        ] {
            assert_eq!(answer(fields), Freshness::NotStorable, "{fields:?}");
        }
    }
}
