//! `http://` and `https://host[:port][/path][?query]` URLs, the forms Sluice dials
//! (upstreams and JWKS endpoints). Errors never repeat the URL, which could carry
//! credentials.

use std::net::Ipv6Addr;

/// The form every URL error names.
pub const URL_FORM: &str = "expected a URL of the form http[s]://host[:port][/path]";

/// An `http://` or `https://` URL taken apart.
#[derive(Debug, PartialEq, Eq)]
pub struct HttpUrl<'a> {
    /// `https://`: TLS to the host.
    pub tls: bool,
    /// The host to resolve (IPv6 without its brackets).
    pub host: &'a str,
    /// The port; when the URL names none, 80 for `http://` and 443 for `https://`
    /// (RFC 9110 §4.2).
    pub port: u16,
    /// `host` or `host:port` exactly as written, for the `Host` header.
    pub authority: &'a str,
    /// The path as written (empty when none), without the query.
    pub path: &'a str,
    /// The query after `?`, if any.
    pub query: Option<&'a str>,
}

/// Parses `url` (the scheme in any case). Other schemes, fragments, user information,
/// spaces and malformed hosts or ports are refused with a message saying which.
pub fn parse_http_url(url: &str) -> Result<HttpUrl<'_>, String> {
    const FORM: &str = URL_FORM;
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    let (tls, rest) = if lower.starts_with("https://") {
        (true, url.get("https://".len()..).unwrap_or_default())
    } else if lower.starts_with("http://") {
        (false, url.get("http://".len()..).unwrap_or_default())
    } else {
        return Err(FORM.to_string());
    };
    if rest.contains('#') {
        return Err(format!("{FORM}, without a fragment"));
    }
    if rest.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("{FORM}, without spaces"));
    }
    let (rest, query) = match rest.split_once('?') {
        Some((rest, query)) => (rest, Some(query)),
        None => (rest, None),
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    if authority.contains('@') {
        return Err(format!(
            "{FORM}, without user information (credentials come from the environment)"
        ));
    }
    let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
        let Some((host, after)) = bracketed.split_once(']') else {
            return Err(format!("{FORM}: unclosed `[` in the host"));
        };
        if host.parse::<Ipv6Addr>().is_err() {
            return Err(format!("{FORM}: `[{host}]` is not an IPv6 address"));
        }
        let port = match after {
            "" => None,
            _ => match after.strip_prefix(':') {
                Some(port) => Some(port),
                None => return Err(format!("{FORM}: unexpected text after `]`")),
            },
        };
        (host, port)
    } else {
        if authority.matches(':').count() > 1 {
            return Err(format!(
                "{FORM}: an IPv6 address goes in brackets, e.g. http://[::1]:9000"
            ));
        }
        let (host, port) = match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        };
        if host.is_empty() {
            return Err(format!("{FORM}: the host is missing"));
        }
        if !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
        {
            return Err(format!(
                "{FORM}: `{host}` is not a host name or IP address (IPv6 goes in brackets)"
            ));
        }
        (host, port)
    };
    let port = match port {
        None if tls => 443,
        None => 80,
        Some(port) => match port.parse::<u16>() {
            Ok(p) if p > 0 && port.bytes().all(|b| b.is_ascii_digit()) => p,
            _ => return Err(format!("{FORM}: `{port}` is not a port (1-65535)")),
        },
    };
    Ok(HttpUrl {
        tls,
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
    fn queries_are_kept_apart_and_https_defaults_to_443() {
        let url = parse_http_url("http://idp.example:8080/keys?x=1").unwrap();
        assert_eq!(
            (url.tls, url.host, url.port, url.path, url.query),
            (false, "idp.example", 8080, "/keys", Some("x=1"))
        );
        let url = parse_http_url("HTTPS://x.openai.azure.com/").unwrap();
        assert_eq!(
            (url.tls, url.host, url.port),
            (true, "x.openai.azure.com", 443)
        );
        assert_eq!(parse_http_url("https://[::1]:8443").unwrap().port, 8443);
        assert!(parse_http_url("http://x/#frag")
            .unwrap_err()
            .contains("fragment"));
        assert!(parse_http_url("ftp://x/")
            .unwrap_err()
            .contains("http[s]://"));
    }
}
