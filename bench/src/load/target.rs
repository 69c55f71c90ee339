//! What is loaded: the URL taken apart, and the one request every connection sends,
//! rendered once so that sending it allocates nothing.

use std::net::{SocketAddr, ToSocketAddrs};

use anyhow::{bail, Context};

/// A parsed `http://` or `https://` URL: where to connect, what to put in `Host` and the
/// request target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    /// `https://`: TLS to the host (its name is the SNI and what the certificate must carry).
    pub tls: bool,
    /// `host[:port]` as written, for the `Host` header.
    pub authority: String,
    /// The host alone (brackets removed from an IPv6 literal).
    pub host: String,
    /// The port; when absent 80, or 443 for `https://`.
    pub port: u16,
    /// Path and query, `/` when absent.
    pub target: String,
}

impl Url {
    /// Parses an `http://` or `https://` URL (HTTP/1.1, over TLS for `https://`); other
    /// schemes and user info are refused.
    pub fn parse(url: &str) -> anyhow::Result<Self> {
        let (tls, rest) = if let Some(rest) = url.strip_prefix("http://") {
            (false, rest)
        } else if let Some(rest) = url.strip_prefix("https://") {
            (true, rest)
        } else {
            bail!("only http:// and https:// URLs are supported: {url:?}");
        };
        let (authority, target) = match rest.find(['/', '?']) {
            Some(i) if rest.as_bytes()[i] == b'?' => (&rest[..i], format!("/{}", &rest[i..])),
            Some(i) => (&rest[..i], rest[i..].to_string()),
            None => (rest, "/".to_string()),
        };
        if authority.is_empty() || authority.contains('@') {
            bail!("URL needs a host and no user info: {url:?}");
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let Some((host, after)) = v6.split_once(']') else {
                bail!("unclosed IPv6 literal in {url:?}");
            };
            (host, after.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            }
        };
        let port = match port {
            Some(p) => p.parse().with_context(|| format!("bad port in {url:?}"))?,
            None if tls => 443,
            None => 80,
        };
        if host.is_empty() {
            bail!("URL needs a host: {url:?}");
        }
        Ok(Self {
            tls,
            authority: authority.to_string(),
            host: host.to_string(),
            port,
            target,
        })
    }

    /// The first address the host resolves to.
    pub fn resolve(&self) -> anyhow::Result<SocketAddr> {
        (self.host.as_str(), self.port)
            .to_socket_addrs()
            .with_context(|| format!("cannot resolve {}", self.host))?
            .next()
            .with_context(|| format!("{} resolves to no address", self.host))
    }
}

/// Renders the request every connection sends: `method` (GET without a body, POST with one,
/// when `None`), `Host` unless `headers` has one, the caller's headers in order,
/// `Content-Type: application/json` when there is a body and no content type, and
/// `Content-Length` when there is a body or the method usually carries one.
pub fn render_request(
    url: &Url,
    method: Option<&str>,
    headers: &[(String, String)],
    body: &[u8],
) -> anyhow::Result<Vec<u8>> {
    let method = method.unwrap_or(if body.is_empty() { "GET" } else { "POST" });
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_alphabetic()) {
        bail!("bad method {method:?}");
    }
    let has = |name: &str| headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(name));
    let mut out = Vec::with_capacity(256 + body.len());
    out.extend_from_slice(format!("{method} {} HTTP/1.1\r\n", url.target).as_bytes());
    if !has("host") {
        out.extend_from_slice(format!("Host: {}\r\n", url.authority).as_bytes());
    }
    for (name, value) in headers {
        if name.is_empty() || name.bytes().any(|b| b <= b' ' || b == b':') {
            bail!("bad header name {name:?}");
        }
        if value.bytes().any(|b| b == b'\r' || b == b'\n') {
            bail!("header {name} has a line break in its value");
        }
        out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
    }
    if !body.is_empty() && !has("content-type") {
        out.extend_from_slice(b"Content-Type: application/json\r\n");
    }
    let wants_length = !body.is_empty() || matches!(method, "POST" | "PUT" | "PATCH");
    if wants_length && !has("content-length") {
        out.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    Ok(out)
}

/// Parses one `-H 'Name: value'` argument.
pub fn parse_header(line: &str) -> anyhow::Result<(String, String)> {
    let Some((name, value)) = line.split_once(':') else {
        bail!("a header is 'Name: value', got {line:?}");
    };
    Ok((name.trim().to_string(), value.trim().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        let u = Url::parse("http://127.0.0.1:8080/v1/chat/completions?x=1").unwrap();
        assert_eq!(u.authority, "127.0.0.1:8080");
        assert_eq!((u.host.as_str(), u.port), ("127.0.0.1", 8080));
        assert_eq!(u.target, "/v1/chat/completions?x=1");
        let u = Url::parse("http://localhost").unwrap();
        assert_eq!((u.port, u.target.as_str()), (80, "/"));
        let u = Url::parse("http://[::1]:9/a").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.authority.as_str()),
            ("::1", 9, "[::1]:9")
        );
        assert_eq!(Url::parse("http://h?q").unwrap().target, "/?q");
        assert!(!u.tls);
        let u = Url::parse("https://localhost:8443/v1/models").unwrap();
        assert!(u.tls);
        assert_eq!((u.host.as_str(), u.port), ("localhost", 8443));
        assert_eq!(Url::parse("https://gw.example").unwrap().port, 443);
        assert!(Url::parse("ftp://h/").is_err());
        assert!(Url::parse("http://:80/").is_err());
        assert!(Url::parse("http://h:x/").is_err());
    }

    #[test]
    fn renders_get_and_post() {
        let u = Url::parse("http://127.0.0.1:1/v1/models").unwrap();
        let get = render_request(&u, None, &[], b"").unwrap();
        assert_eq!(get, b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1:1\r\n\r\n");
        let headers = vec![parse_header("Authorization:  Bearer k ").unwrap()];
        let post = render_request(&u, None, &headers, b"{}").unwrap();
        assert_eq!(
            String::from_utf8(post).unwrap(),
            "POST /v1/models HTTP/1.1\r\nHost: 127.0.0.1:1\r\nAuthorization: Bearer k\r\n\
             Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
        );
        let empty_post = render_request(&u, Some("POST"), &[], b"").unwrap();
        assert!(empty_post.ends_with(b"Content-Length: 0\r\n\r\n"));
        assert!(render_request(&u, Some("GE T"), &[], b"").is_err());
        assert!(parse_header("no colon").is_err());
    }
}
