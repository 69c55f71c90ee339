//! `[server] tls_listen` and `[server.tls]`: the TLS listeners' addresses and certificates,
//! compiled into a [`ServerTls`] with every file read and checked, each error at its field.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use sha2::{Digest, Sha256};
use toml::Spanned;

use super::check::{parse_duration, read_config_file, resolve_path, ReadFile};
use super::error::Reporter;
use super::schema::{SpannedList, TlsSection};
use crate::tls::pem;
use crate::tls::server::{
    certificate_is_for, certified_key, sni_name, validity_notice, PairError, ServerTls,
};

/// Default `[server.tls] handshake_timeout`.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Compiles the TLS listeners: their addresses and, when there are any, the `[server.tls]`
/// they need. `None` when `tls_listen` is absent or empty (a `[server.tls]` without it is
/// an error: it would configure nothing).
pub(super) fn compile(
    source: &Path,
    listen: Option<&SpannedList<String>>,
    section: Option<&Spanned<TlsSection>>,
    report: &mut Reporter<'_>,
    read: ReadFile<'_>,
) -> (Vec<SocketAddr>, Option<ServerTls>) {
    let addrs: Vec<SocketAddr> = listen
        .map(|list| {
            list.get_ref()
                .iter()
                .enumerate()
                .filter_map(|(i, addr)| match addr.get_ref().parse() {
                    Ok(parsed) => Some(parsed),
                    Err(_) => {
                        report.at(
                            addr.span(),
                            format!("server.tls_listen[{i}]"),
                            format!(
                                "`{}` is not an IP address and port, e.g. \"127.0.0.1:8443\"",
                                addr.get_ref()
                            ),
                        );
                        None
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    let wanted = listen.is_some_and(|l| !l.get_ref().is_empty());
    let Some(section) = section else {
        if let Some(list) = listen.filter(|_| wanted) {
            report.at(
                list.span(),
                "server.tls_listen",
                "TLS listeners need a certificate: add [server.tls] with cert_file and key_file",
            );
        }
        return (addrs, None);
    };
    if !wanted {
        report.at(
            section.span(),
            "server.tls",
            "configures no listener: add `tls_listen = [\"127.0.0.1:8443\"]` to [server]",
        );
        return (addrs, None);
    }
    (addrs, server_tls(source, section, report, read))
}

fn server_tls(
    source: &Path,
    section: &Spanned<TlsSection>,
    report: &mut Reporter<'_>,
    read: ReadFile<'_>,
) -> Option<ServerTls> {
    let tls = section.get_ref();
    let mut inputs = Sha256::new();
    let mut fine = true;
    let default = match (&tls.cert_file, &tls.key_file) {
        (Some(cert), Some(key)) => pair(source, cert, key, "server.tls", report, read, &mut inputs),
        (cert, _) => {
            let missing = if cert.is_none() {
                "cert_file"
            } else {
                "key_file"
            };
            report.at(
                section.span(),
                format!("server.tls.{missing}"),
                "missing: the default certificate needs cert_file (PEM chain, leaf first) and key_file (its private key)",
            );
            None
        }
    };
    let mut sni = Vec::with_capacity(tls.sni.len());
    let mut seen: Vec<String> = Vec::new();
    for (i, entry) in tls.sni.iter().enumerate() {
        let field = format!("server.tls.sni[{i}]");
        let e = entry.get_ref();
        let name = match sni_name(e.server_name.get_ref()) {
            Ok(name) if seen.contains(&name) => {
                report.at(
                    e.server_name.span(),
                    format!("{field}.server_name"),
                    format!("`{name}` has a certificate already: one entry per server name"),
                );
                None
            }
            Ok(name) => Some(name),
            Err(message) => {
                report.at(
                    e.server_name.span(),
                    format!("{field}.server_name"),
                    message,
                );
                None
            }
        };
        inputs.update(e.server_name.get_ref().as_bytes());
        let key = pair(
            source,
            &e.cert_file,
            &e.key_file,
            &field,
            report,
            read,
            &mut inputs,
        );
        let key = match (&name, key) {
            (Some(name), Some(key)) => match certificate_is_for(&key, name) {
                Ok(()) => Some(key),
                Err(message) => {
                    report.at(
                        e.cert_file.span(),
                        format!("{field}.cert_file"),
                        format!("`{}` {message}", e.cert_file.get_ref()),
                    );
                    None
                }
            },
            (_, key) => key,
        };
        match (name, key) {
            (Some(name), Some(key)) => {
                seen.push(name.clone());
                sni.push((name, key));
            }
            _ => fine = false,
        }
    }
    let client_roots = match &tls.client_ca_file {
        None => None,
        Some(file) => {
            let field = "server.tls.client_ca_file";
            let text = read_config_file(
                &resolve_path(source, file.get_ref()),
                file,
                field,
                report,
                read,
            );
            match text.map(|t| (pem::roots(t.as_bytes()), t)) {
                Some((Ok(roots), text)) => {
                    inputs.update(text.as_bytes());
                    Some(roots)
                }
                Some((Err(message), _)) => {
                    report.at(
                        file.span(),
                        field,
                        format!("`{}` {message}", file.get_ref()),
                    );
                    fine = false;
                    None
                }
                None => {
                    fine = false;
                    None
                }
            }
        }
    };
    let handshake_timeout = match &tls.handshake_timeout {
        None => DEFAULT_HANDSHAKE_TIMEOUT,
        Some(v) => match parse_duration(v.get_ref()) {
            Ok(d) if !d.is_zero() => d,
            Ok(_) => {
                report.at(
                    v.span(),
                    "server.tls.handshake_timeout",
                    "must be longer than 0",
                );
                DEFAULT_HANDSHAKE_TIMEOUT
            }
            Err(message) => {
                report.at(v.span(), "server.tls.handshake_timeout", message);
                DEFAULT_HANDSHAKE_TIMEOUT
            }
        },
    };
    inputs.update(handshake_timeout.as_nanos().to_le_bytes());
    let default = default?;
    if !fine {
        return None;
    }
    match ServerTls::new(
        default,
        sni,
        client_roots,
        handshake_timeout,
        inputs.finalize().into(),
    ) {
        Ok(tls) => Some(tls),
        Err(message) => {
            report.at(section.span(), "server.tls", message);
            None
        }
    }
}

/// Reads and checks one certificate and key pair; errors at `{field}.cert_file` or
/// `{field}.key_file`.
fn pair(
    source: &Path,
    cert: &Spanned<String>,
    key: &Spanned<String>,
    field: &str,
    report: &mut Reporter<'_>,
    read: ReadFile<'_>,
    inputs: &mut Sha256,
) -> Option<rustls::sign::CertifiedKey> {
    let cert_field = format!("{field}.cert_file");
    let key_field = format!("{field}.key_file");
    let cert_text = read_config_file(
        &resolve_path(source, cert.get_ref()),
        cert,
        &cert_field,
        report,
        read,
    );
    let key_text = read_config_file(
        &resolve_path(source, key.get_ref()),
        key,
        &key_field,
        report,
        read,
    );
    let (cert_text, key_text) = (cert_text?, key_text?);
    inputs.update(cert_text.as_bytes());
    inputs.update(key_text.as_bytes());
    match certified_key(cert_text.as_bytes(), key_text.as_bytes()) {
        Ok(pair) => {
            // Not an error (a rotation may be on its way), but said at every load and check.
            if let Some(notice) = validity_notice(&pair, std::time::SystemTime::now()) {
                tracing::warn!(
                    field = %cert_field,
                    "the TLS certificate in `{}` {notice}",
                    cert.get_ref()
                );
            }
            Some(pair)
        }
        Err(PairError::Cert(message)) => {
            report.at(
                cert.span(),
                cert_field,
                format!("`{}` {message}", cert.get_ref()),
            );
            None
        }
        Err(PairError::Key(message)) => {
            report.at(
                key.span(),
                key_field,
                format!("`{}` {message}", key.get_ref()),
            );
            None
        }
    }
}
