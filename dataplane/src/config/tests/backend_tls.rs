//! `https://` backends: `ca_file`, `server_name`, `insecure_skip_verify` — what they compile
//! into, every error with its line, column and field, and the client config kept across
//! reloads (its session cache with it).

use std::sync::OnceLock;

use super::*;
use crate::snapshot::BackendKind;
use crate::tls::client::{Trust, UpstreamTls};

/// A CA certificate (PEM), generated once.
fn ca_pem() -> &'static str {
    static PEM: OnceLock<String> = OnceLock::new();
    PEM.get_or_init(|| {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.self_signed(&key).unwrap().pem()
    })
}

/// Files as if on disk: the CA under `conf/certs/` and `certs/`, a second CA, else as the
/// other config tests read them.
fn read_files(path: &Path) -> Result<String, String> {
    match path.to_str() {
        Some("conf/certs/ca.pem" | "certs/ca.pem") => Ok(ca_pem().to_string()),
        Some("certs/both.pem") => Ok(format!("{}{}", ca_pem(), ca_pem())),
        _ => read(path),
    }
}

fn load_at(path: &str, text: &str, previous: Option<&Snapshot>) -> Result<Snapshot, ConfigErrors> {
    load_str_with(Path::new(path), text, &env, &resolve, &read_files, previous)
}

fn tls_errors(text: &str) -> Vec<String> {
    match load_at(FILE, text, None) {
        Ok(_) => panic!("config compiled but should not have:\n{text}"),
        Err(errors) => errors.0.iter().map(ToString::to_string).collect(),
    }
}

/// An openai backend `o` at `url`, then `extra` (from line 5), and a deployment using it.
fn backend(url: &str, extra: &str) -> String {
    format!(
        "[[backend]]\nname = \"o\"\nkind = \"openai\"\nurl = \"{url}\"\n{extra}\n\n[[deployment]]\nname = \"d\"\nbackends = [{{ backend = \"o\" }}]\n"
    )
}

fn tls_of(snapshot: &Snapshot, i: usize) -> &UpstreamTls {
    match &snapshot.backends[i].kind {
        BackendKind::OpenAi(o) => o.upstream.tls.as_ref().unwrap(),
        BackendKind::Azure(a) => a.upstream.tls.as_ref().unwrap(),
        BackendKind::Mock(_) => panic!("a mock has no TLS"),
    }
}

#[test]
fn https_urls_default_to_port_443_the_public_roots_and_the_host_as_name() {
    let snapshot = load_at(FILE, &backend("https://aoai.example", ""), None).unwrap();
    let BackendKind::OpenAi(o) = &snapshot.backends[0].kind else {
        panic!("not openai");
    };
    assert_eq!(o.upstream.addr, "10.0.0.1:443".parse().unwrap());
    assert_eq!(o.upstream.host_header, "aoai.example");
    let tls = tls_of(&snapshot, 0);
    assert_eq!(tls.trust, Trust::WebPki);
    assert_eq!(tls.server_name.to_str(), "aoai.example");
    assert_eq!(tls.config.alpn_protocols, vec![b"http/1.1".to_vec()]);

    let plain = load_at(FILE, &backend("http://aoai.example", ""), None).unwrap();
    let BackendKind::OpenAi(o) = &plain.backends[0].kind else {
        panic!("not openai");
    };
    assert!(o.upstream.tls.is_none());
}

#[test]
fn ca_file_is_read_beside_the_config_and_server_name_replaces_the_host() {
    let text = backend(
        "https://10.1.2.3:8443/base",
        "ca_file = \"certs/ca.pem\"\nserver_name = \"aoai-1.internal\"",
    );
    let snapshot = load_at("conf/sluice.toml", &text, None).unwrap();
    let tls = tls_of(&snapshot, 0);
    assert!(matches!(&tls.trust, Trust::Cas(cas) if cas.len() == 1));
    assert_eq!(tls.server_name.to_str(), "aoai-1.internal");
    // The name is the Host too, with the URL's port when it is not 443.
    let host_of = |snapshot: &Snapshot| match &snapshot.backends[0].kind {
        BackendKind::Azure(a) => a.upstream.host_header.clone(),
        BackendKind::OpenAi(o) => o.upstream.host_header.clone(),
        BackendKind::Mock(_) => unreachable!("an https backend"),
    };
    assert_eq!(host_of(&snapshot), "aoai-1.internal:8443");
    let on_443 = text.replace("https://10.1.2.3:8443/base", "https://10.1.2.3/base");
    assert_eq!(
        host_of(&load_at("conf/sluice.toml", &on_443, None).unwrap()),
        "aoai-1.internal"
    );
    let no_name = backend("https://10.1.2.3:8443/base", "ca_file = \"certs/ca.pem\"");
    assert_eq!(
        host_of(&load_at("conf/sluice.toml", &no_name, None).unwrap()),
        "10.1.2.3:8443"
    );
    // Beside the config file, not the working directory.
    let elsewhere = tls_errors(&text.replace("certs/ca.pem", "certs/none.pem"));
    assert_eq!(
        elsewhere,
        ["sluice.toml:5:11: backend[0].ca_file: cannot read `certs/none.pem`: No such file or directory (os error 2)"]
    );
    let insecure = load_at(
        FILE,
        &backend("https://aoai.example", "insecure_skip_verify = true"),
        None,
    )
    .unwrap();
    assert_eq!(tls_of(&insecure, 0).trust, Trust::Insecure);
    let explicit_false = load_at(
        FILE,
        &backend(
            "https://aoai.example",
            "insecure_skip_verify = false\nca_file = \"certs/ca.pem\"",
        ),
        None,
    )
    .unwrap();
    assert!(matches!(tls_of(&explicit_false, 0).trust, Trust::Cas(_)));
}

#[test]
fn bad_tls_settings_are_located_errors() {
    let https = |extra: &str| backend("https://aoai.example", extra);
    let cases: &[(String, &str)] = &[
        (
            https("ca_file = \"keys/entra.pem\""),
            "sluice.toml:5:11: backend[0].ca_file: `keys/entra.pem` holds no certificate (expected -----BEGIN CERTIFICATE-----)",
        ),
        (
            https("ca_file = \"keys/bad.json\""),
            "sluice.toml:5:11: backend[0].ca_file: `keys/bad.json` holds no certificate (expected -----BEGIN CERTIFICATE-----)",
        ),
        (https("ca_file = \"\""), "sluice.toml:5:11: backend[0].ca_file: must not be empty"),
        (
            https("server_name = \"not a name\""),
            "sluice.toml:5:15: backend[0].server_name: `not a name` is not a DNS name or IP address",
        ),
        (
            https("server_name = \"\""),
            "sluice.toml:5:15: backend[0].server_name: must not be empty",
        ),
        (
            https("ca_file = \"certs/ca.pem\"\ninsecure_skip_verify = true"),
            "sluice.toml:6:24: backend[0].insecure_skip_verify: `insecure_skip_verify = true` would ignore `ca_file`: set one or the other",
        ),
        (
            backend("http://aoai.example", "server_name = \"aoai.example\""),
            "sluice.toml:5:15: backend[0].server_name: `server_name` applies to https:// URLs only, and this backend's `url` is http://",
        ),
        (
            backend("http://aoai.example", "ca_file = \"certs/ca.pem\""),
            "sluice.toml:5:11: backend[0].ca_file: `ca_file` applies to https:// URLs only, and this backend's `url` is http://",
        ),
        (
            backend("http://aoai.example", "insecure_skip_verify = false"),
            "sluice.toml:5:24: backend[0].insecure_skip_verify: `insecure_skip_verify` applies to https:// URLs only, and this backend's `url` is http://",
        ),
        (
            MOCK_DEPLOYMENT.replace("kind = \"mock\"", "kind = \"mock\"\nca_file = \"certs/ca.pem\""),
            "sluice.toml:4:11: backend[0].ca_file: `ca_file` does not apply to a mock backend (mock backends take: latency, completion_tokens, tokens_per_second, model, embedding_dimensions)",
        ),
        (
            https("insecure_skip_verify = \"yes\""),
            "sluice.toml:5:24: backend[0].insecure_skip_verify: invalid type: string \"yes\", expected a boolean",
        ),
    ];
    for (text, expected) in cases {
        assert_eq!(tls_errors(text), [expected.to_string()], "config:\n{text}");
    }
}

#[test]
fn client_configs_are_shared_per_trust_and_kept_across_reloads() {
    let two = "[[backend]]\nname = \"a\"\nkind = \"openai\"\nurl = \"https://aoai.example\"\nca_file = \"certs/ca.pem\"\n\n[[backend]]\nname = \"b\"\nkind = \"azure\"\nurl = \"https://10.9.9.9\"\ndeployment = \"x\"\nca_file = \"certs/ca.pem\"\nserver_name = \"b.internal\"\n\n[[backend]]\nname = \"c\"\nkind = \"openai\"\nurl = \"https://aoai-moved.example\"\n\n[[deployment]]\nname = \"d\"\nbackends = [{ backend = \"a\" }, { backend = \"b\" }, { backend = \"c\" }]\n";
    let first = load_at(FILE, two, None).unwrap();
    let (a, b, c) = (tls_of(&first, 0), tls_of(&first, 1), tls_of(&first, 2));
    assert!(Arc::ptr_eq(&a.config, &b.config), "one trust, one config");
    assert!(!Arc::ptr_eq(&a.config, &c.config));
    assert_ne!(a.pool_key, b.pool_key, "two names, two pools");

    // A reload that leaves the trust alone keeps the config (and its session cache) and
    // the backends' health.
    let again = load_at(FILE, two, Some(&first)).unwrap();
    for i in 0..3 {
        assert!(Arc::ptr_eq(
            &tls_of(&first, i).config,
            &tls_of(&again, i).config
        ));
        assert!(Arc::ptr_eq(
            &first.backends[i].health,
            &again.backends[i].health
        ));
    }
    // Another trust is another config; another name is another target.
    let changed = two
        .replacen(
            "ca_file = \"certs/ca.pem\"",
            "ca_file = \"certs/both.pem\"",
            1,
        )
        .replace("b.internal", "b2.internal");
    let after = load_at(FILE, &changed, Some(&again)).unwrap();
    assert!(!Arc::ptr_eq(
        &tls_of(&again, 0).config,
        &tls_of(&after, 0).config
    ));
    assert!(Arc::ptr_eq(
        &tls_of(&again, 1).config,
        &tls_of(&after, 1).config
    ));
    assert!(!Arc::ptr_eq(
        &again.backends[0].health,
        &after.backends[0].health
    ));
    assert!(!Arc::ptr_eq(
        &again.backends[1].health,
        &after.backends[1].health
    ));
    assert!(Arc::ptr_eq(
        &again.backends[2].health,
        &after.backends[2].health
    ));
}
