//! `[admin] listen`: where the admin endpoints are served — a loopback address by default,
//! never one of the public listeners.

use std::net::SocketAddr;

use toml::Spanned;

use super::error::Reporter;
use super::schema::AdminSection;
use crate::snapshot::ServerSettings;

/// Default `[admin] listen`.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9090";

/// Compiles `[admin] listen`: the address, `None` for `""` (no admin listener). An address
/// that is a public listener's (`[server] listen` or `tls_listen`) is an error.
pub(super) fn compile(
    section: Option<&Spanned<AdminSection>>,
    server: &ServerSettings,
    report: &mut Reporter<'_>,
) -> Option<SocketAddr> {
    let Some(listen) = section.and_then(|s| s.get_ref().listen.as_ref()) else {
        return DEFAULT_ADMIN_LISTEN.parse().ok();
    };
    let text = listen.get_ref().trim();
    if text.is_empty() {
        return None;
    }
    let Ok(addr) = text.parse::<SocketAddr>() else {
        report.at(
            listen.span(),
            "admin.listen",
            format!(
                "`{text}` is not an IP address and port, e.g. \"{DEFAULT_ADMIN_LISTEN}\" (\"\" for no admin listener)"
            ),
        );
        return None;
    };
    // `::ffff:127.0.0.1` is `127.0.0.1`.
    let (ip, port) = (addr.ip().to_canonical(), addr.port());
    let public = server.listen.iter().chain(&server.tls_listen).any(|l| {
        let l_ip = l.ip().to_canonical();
        l.port() != 0
            && l.port() == port
            && (l_ip == ip || l_ip.is_unspecified() || ip.is_unspecified())
    });
    if public {
        report.at(
            listen.span(),
            "admin.listen",
            format!("`{addr}` is a public listener's address: the admin endpoints need their own"),
        );
    }
    Some(addr)
}
