//! `tls_listen` and `[server.tls]`: files read relative to the config, checked, each error at
//! its field.

use std::collections::HashMap;

use super::*;

/// A CA, two server certificates and a stray key, as PEM files by name.
fn files() -> HashMap<&'static str, String> {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf = |name: &str| {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let (gw, gw_key) = leaf("gw.test");
    let (other, other_key) = leaf("other.test");
    HashMap::from([
        ("/etc/sluice/gw.pem", gw),
        ("/etc/sluice/gw.key", gw_key),
        ("/etc/sluice/other.pem", other),
        ("/etc/sluice/other.key", other_key),
        ("/etc/sluice/ca.pem", ca.pem()),
    ])
}

fn compile_tls(text: &str, files: &HashMap<&str, String>) -> Result<Snapshot, ConfigErrors> {
    let read = |path: &Path| {
        files
            .get(path.to_str().unwrap_or(""))
            .cloned()
            .ok_or_else(|| "No such file or directory (os error 2)".to_string())
    };
    load_str_with(
        Path::new("/etc/sluice/sluice.toml"),
        &format!("{text}\n{MOCK_DEPLOYMENT}"),
        &env,
        &resolve,
        &read,
        None,
    )
}

fn tls_errors(text: &str, files: &HashMap<&str, String>) -> Vec<String> {
    match compile_tls(text, files) {
        Ok(_) => panic!("compiled but should not have:\n{text}"),
        Err(errors) => errors.0.iter().map(ToString::to_string).collect(),
    }
}

const LISTEN: &str = "[server]\ntls_listen = [\"127.0.0.1:8443\"]\n";

#[test]
fn tls_listeners_compile_with_their_certificates() {
    let text = format!(
        "{LISTEN}\n[server.tls]\ncert_file = \"gw.pem\"\nkey_file = \"gw.key\"\nclient_ca_file = \"ca.pem\"\nhandshake_timeout = \"5s\"\n\n[[server.tls.sni]]\nserver_name = \"other.test\"\ncert_file = \"other.pem\"\nkey_file = \"other.key\"\n"
    );
    let files = files();
    let snapshot = compile_tls(&text, &files).unwrap();
    let server = &snapshot.server;
    assert_eq!(
        server.tls_listen,
        ["127.0.0.1:8443".parse::<SocketAddr>().unwrap()]
    );
    // HTTPS only: no plain default listener beside it.
    assert!(server.listen.is_empty());
    let tls = server.tls.as_ref().unwrap();
    assert_eq!(tls.handshake_timeout, Duration::from_secs(5));
    assert!(tls.client_auth);
    // The same files compile equal (a reload that touched nothing TLS); other ones do not.
    assert_eq!(
        compile_tls(&text, &files).unwrap().server.tls,
        snapshot.server.tls
    );
    let without_ca = text.replace("client_ca_file = \"ca.pem\"\n", "");
    assert_ne!(
        compile_tls(&without_ca, &files).unwrap().server.tls,
        snapshot.server.tls
    );
}

#[test]
fn tls_errors_are_located() {
    let tls = |body: &str| format!("{LISTEN}\n[server.tls]\n{body}");
    let cases = [
        (
            LISTEN.to_string(),
            "/etc/sluice/sluice.toml:2:14: server.tls_listen: TLS listeners need a certificate: add [server.tls] with cert_file and key_file",
        ),
        (
            "[server.tls]\ncert_file = \"gw.pem\"\nkey_file = \"gw.key\"\n".to_string(),
            "/etc/sluice/sluice.toml:1:1: server.tls: configures no listener: add `tls_listen = [\"127.0.0.1:8443\"]` to [server]",
        ),
        (
            tls("cert_file = \"gw.pem\"\n"),
            "/etc/sluice/sluice.toml:4:1: server.tls.key_file: missing: the default certificate needs cert_file (PEM chain, leaf first) and key_file (its private key)",
        ),
        (
            tls("cert_file = \"gw.key\"\nkey_file = \"gw.key\"\n"),
            "/etc/sluice/sluice.toml:5:13: server.tls.cert_file: `gw.key` holds no certificate (expected -----BEGIN CERTIFICATE-----)",
        ),
        (
            tls("cert_file = \"gw.pem\"\nkey_file = \"other.key\"\n"),
            "/etc/sluice/sluice.toml:6:12: server.tls.key_file: `other.key` is not the private key of the certificate in cert_file",
        ),
        (
            tls("cert_file = \"gw.pem\"\nkey_file = \"missing.key\"\n"),
            "/etc/sluice/sluice.toml:6:12: server.tls.key_file: cannot read `missing.key`: No such file or directory (os error 2)",
        ),
        (
            tls("cert_file = \"gw.pem\"\nkey_file = \"gw.key\"\nclient_ca_file = \"gw.key\"\n"),
            "/etc/sluice/sluice.toml:7:18: server.tls.client_ca_file: `gw.key` holds no certificate (expected -----BEGIN CERTIFICATE-----)",
        ),
        (
            tls("cert_file = \"gw.pem\"\nkey_file = \"gw.key\"\nhandshake_timeout = \"0s\"\n"),
            "/etc/sluice/sluice.toml:7:21: server.tls.handshake_timeout: must be longer than 0",
        ),
        (
            tls("cert_file = \"gw.pem\"\nkey_file = \"gw.key\"\n[[server.tls.sni]]\nserver_name = \"10.0.0.1\"\ncert_file = \"other.pem\"\nkey_file = \"other.key\"\n"),
            "/etc/sluice/sluice.toml:8:15: server.tls.sni[0].server_name: `10.0.0.1` is not a DNS name (SNI carries host names, e.g. \"api.example.com\")",
        ),
        (
            tls("cert_file = \"gw.pem\"\nkey_file = \"gw.key\"\n[[server.tls.sni]]\nserver_name = \"third.test\"\ncert_file = \"other.pem\"\nkey_file = \"other.key\"\n"),
            "/etc/sluice/sluice.toml:9:13: server.tls.sni[0].cert_file: `other.pem` is not a certificate for `third.test` (none of its names matches)",
        ),
        (
            "[server]\ntls_listen = [\"localhost:8443\"]\n\n[server.tls]\ncert_file = \"gw.pem\"\nkey_file = \"gw.key\"\n".to_string(),
            "/etc/sluice/sluice.toml:2:15: server.tls_listen[0]: `localhost:8443` is not an IP address and port, e.g. \"127.0.0.1:8443\"",
        ),
        (
            tls("cert_file = \"gw.pem\"\nkey_file = \"gw.key\"\n\n[[product]]\nname = \"p\"\nlimits = [{ unit = \"requests\", rate = 1, per = \"minute\", scope = \"client_cert\" }]\n"),
            "/etc/sluice/sluice.toml:10:66: product[0].limits[0].scope: a `client_cert` scope counts verified client certificates, but no [server.tls] client_ca_file asks for them",
        ),
    ];
    let files = files();
    let mut wrong = Vec::new();
    for (text, expected) in cases {
        let got = tls_errors(&text, &files);
        if got != [expected] {
            wrong.push(format!(
                "{text}\n  got:      {got:?}\n  expected: {expected}"
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n\n"));
}
