//! `http://host[:port][/path][?query]` URLs, the only form Sluice dials for now (upstreams
//! and JWKS endpoints; TLS has its own issue). Errors never repeat the URL, which could
//! carry credentials.

use std::net::Ipv6Addr;

/// The form every URL error names.
pub const URL_FORM: &str = "expected a URL of the form http://host[:port][/path]";

/// Why a URL was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UrlError {
    /// An `https://` URL: not supported yet (each caller says what to do instead).
    Https,
    /// Anything else, with a message for the operator.
    Form(String),
}

/// An `http://` URL taken apart.
#[derive(Debug, PartialEq, Eq)]
pub struct HttpUrl<'a> {
    /// The host to resolve (IPv6 without its brackets).
    pub host: &'a str,
    /// The port, 80 when the URL names none.
    pub port: u16,
    /// `host` or `host:port` exactly as written, for the `Host` header.
    pub authority: &'a str,
    /// The path as written (empty when none), without the query.
    pub path: &'a str,
    /// The query after `?`, if any.
    pub query: Option<&'a str>,
}

/// Parses `url`. Fragments, user information, spaces and malformed hosts or ports are
/// refused with a message saying which.
pub fn parse_http_url(url: &str) -> Result<HttpUrl<'_>, UrlError> {
    const FORM: &str = URL_FORM;
    let form = |m: String| UrlError::Form(m);
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    if lower.starts_with("https://") {
        return Err(UrlError::Https);
    }
    if !lower.starts_with("http://") {
        return Err(form(FORM.to_string()));
    }
    let rest = url.get("http://".len()..).unwrap_or_default();
    if rest.contains('#') {
        return Err(form(format!("{FORM}, without a fragment")));
    }
    if rest.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(form(format!("{FORM}, without spaces")));
    }
    let (rest, query) = match rest.split_once('?') {
        Some((rest, query)) => (rest, Some(query)),
        None => (rest, None),
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    if authority.contains('@') {
        return Err(form(format!(
            "{FORM}, without user information (credentials come from the environment)"
        )));
    }
    let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
        let Some((host, after)) = bracketed.split_once(']') else {
            return Err(form(format!("{FORM}: unclosed `[` in the host")));
        };
        if host.parse::<Ipv6Addr>().is_err() {
            return Err(form(format!("{FORM}: `[{host}]` is not an IPv6 address")));
        }
        let port = match after {
            "" => None,
            _ => match after.strip_prefix(':') {
                Some(port) => Some(port),
                None => return Err(form(format!("{FORM}: unexpected text after `]`"))),
            },
        };
        (host, port)
    } else {
        if authority.matches(':').count() > 1 {
            return Err(form(format!(
                "{FORM}: an IPv6 address goes in brackets, e.g. http://[::1]:9000"
            )));
        }
        let (host, port) = match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        };
        if host.is_empty() {
            return Err(form(format!("{FORM}: the host is missing")));
        }
        if !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
        {
            return Err(form(format!(
                "{FORM}: `{host}` is not a host name or IP address (IPv6 goes in brackets)"
            )));
        }
        (host, port)
    };
    let port = match port {
        None => 80,
        Some(port) => match port.parse::<u16>() {
            Ok(p) if p > 0 && port.bytes().all(|b| b.is_ascii_digit()) => p,
            _ => return Err(form(format!("{FORM}: `{port}` is not a port (1-65535)"))),
        },
    };
    Ok(HttpUrl {
        host,
        port,
        authority,
        path,
        query,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_are_kept_apart_and_https_is_its_own_error() {
        let url = parse_http_url("http://idp.example:8080/keys?x=1").unwrap();
        assert_eq!(
            (url.host, url.port, url.path, url.query),
            ("idp.example", 8080, "/keys", Some("x=1"))
        );
        assert_eq!(parse_http_url("HTTPS://x/"), Err(UrlError::Https));
        assert!(
            matches!(parse_http_url("http://x/#frag"), Err(UrlError::Form(m)) if m.contains("fragment"))
        );
    }
}
