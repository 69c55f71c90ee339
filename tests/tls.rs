//! HTTPS listeners, end to end: a real `sluice` process with `tls_listen` and `[server.tls]`
//! (certificates generated in the test), real TLS handshakes from a rustls client.
//!
//! Chat and streaming chat over TLS on one keep-alive connection; SNI choosing the
//! certificate; client certificates required with `client_ca_file`; a certificate rotated on
//! disk served after a reload while an open connection keeps working; a bad certificate
//! refusing the reload; garbage, plaintext and stalled handshakes on the TLS port not
//! disturbing a well-behaved client.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use support::tls_client::{TestCa, TlsClientConfig};
use support::*;

const KEY: &str = "tls-test-key-0123456789";

/// A config with a plain and a TLS listener (ports 0), the mock, a key, and `tls_extra`
/// lines appended to `[server.tls]`; certificates `gw.pem`/`gw.key` beside it.
fn config(tls_extra: &str) -> String {
    config_with_product(tls_extra, "")
}

/// [`config`] with `product_extra` lines in the key's product.
fn config_with_product(tls_extra: &str, product_extra: &str) -> String {
    listening(
        tls_extra,
        &format!(
            "{MOCK_BODY}\n{}\n{}",
            product("all", product_extra),
            subscription("team", "all", &[KEY])
        ),
    )
}

/// The plain and TLS listeners (ports 0) with `gw.pem`/`gw.key` and `tls_extra` lines in
/// `[server.tls]`, then `body`.
fn listening(tls_extra: &str, body: &str) -> String {
    format!(
        r#"
[server]
listen = ["127.0.0.1:0"]
tls_listen = ["127.0.0.1:0"]

[server.tls]
cert_file = "gw.pem"
key_file = "gw.key"
{tls_extra}
{body}
"#
    )
}

/// Starts Sluice with `text` as its config, after `files` wrote what it names into the
/// config's folder.
fn start(text: &str, files: impl FnOnce(&Path)) -> Sluice {
    Launch::file(text).listeners(2).start_after(files)
}

const CHAT: &str = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}"#;
const STREAM: &str =
    r#"{"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;

#[test]
fn chat_and_streaming_chat_over_tls_on_one_connection() {
    let ca = TestCa::new("Sluice test CA");
    let gw = ca.server(&["gw.test"]);
    let sluice = start(&config(""), |dir| gw.write(dir, "gw"));
    let tls_port = sluice.ports[1];

    let mut client = TlsClientConfig::trusting(&ca)
        .connect(tls_port, "gw.test")
        .expect("handshake");
    assert_eq!(client.alpn().as_deref(), Some(&b"http/1.1"[..]));
    assert_eq!(client.server_cert(), gw.der);
    let plain = client.post("/v1/chat/completions", KEY, CHAT).unwrap();
    assert_eq!(plain.status, 200, "{}", plain.text());
    assert!(
        plain.text().contains("\"object\":\"chat.completion\""),
        "{}",
        plain.text()
    );
    let streamed = client.post("/v1/chat/completions", KEY, STREAM).unwrap();
    assert_eq!(streamed.status, 200);
    let text = streamed.text();
    assert!(
        text.contains("chat.completion.chunk") && text.trim_end().ends_with("data: [DONE]"),
        "{text}"
    );
    // `connection: close`: the answer, then close_notify before the TCP close.
    client
        .send(
            format!(
                "POST /v1/chat/completions HTTP/1.1\r\nhost: gw.test\r\napi-key: {KEY}\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{CHAT}",
                CHAT.len()
            )
            .as_bytes(),
        )
        .unwrap();
    assert_eq!(client.read_response().unwrap().status, 200);
    assert!(client.closed_cleanly().expect("close_notify, not a cut"));
    // The same key on the plain listener: both serve the same config.
    let over_plain = sluice.request(
        "POST",
        "/v1/chat/completions",
        &[("api-key", KEY), ("content-type", "application/json")],
        CHAT.as_bytes(),
    );
    assert_eq!(over_plain.status, 200);
    // A client that offers only h2 is refused in the handshake (ALPN, RFC 7301 §3.2).
    let refused = TlsClientConfig::trusting(&ca)
        .with_alpn(&[b"h2"])
        .connect(tls_port, "gw.test");
    assert!(refused.is_err());
}

#[test]
fn sni_picks_the_certificate() {
    let ca = TestCa::new("Sluice test CA");
    let gw = ca.server(&["gw.test"]);
    let other = ca.server(&["other.test"]);
    let extra = r#"
[[server.tls.sni]]
server_name = "Other.Test"
cert_file = "other.pem"
key_file = "other.key"
"#;
    let sluice = start(&config(extra), |dir| {
        gw.write(dir, "gw");
        other.write(dir, "other");
    });
    let tls = TlsClientConfig::trusting(&ca);
    let asked_other = tls.connect(sluice.ports[1], "other.test").unwrap();
    assert_eq!(asked_other.server_cert(), other.der);
    let asked_default = tls.connect(sluice.ports[1], "gw.test").unwrap();
    assert_eq!(asked_default.server_cert(), gw.der);
    // A name no entry has gets the default certificate (which the client then refuses).
    assert!(tls.connect(sluice.ports[1], "unknown.test").is_err());
}

#[test]
fn client_certificates_are_required_with_client_ca_file() {
    let ca = TestCa::new("Sluice test CA");
    let clients = TestCa::new("Client CA");
    let foreign = TestCa::new("Foreign CA");
    let gw = ca.server(&["gw.test"]);
    // One request a minute per client certificate, and the trace.
    let per_cert = "trace = true\nlimits = [{ unit = \"requests\", rate = 1, per = \"minute\", scope = \"client_cert\" }]";
    let text = config_with_product("client_ca_file = \"clients.pem\"", per_cert);
    let sluice = start(&text, |dir| {
        gw.write(dir, "gw");
        std::fs::write(dir.join("clients.pem"), clients.pem()).unwrap();
    });
    let port = sluice.ports[1];

    let good = clients.client("app-1");
    let app_1 = TlsClientConfig::with_client_cert(&ca, &good);
    let mut client = app_1
        .connect(port, "gw.test")
        .expect("a certificate from the client CA is accepted");
    let traced = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: gw.test\r\napi-key: {KEY}\r\nx-sluice-trace: true\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{CHAT}",
        CHAT.len()
    );
    client.send(traced.as_bytes()).unwrap();
    let first = client.read_response().unwrap();
    assert_eq!(first.status, 200, "{}", first.text());
    // The verified subject is the request's: in the trace (escaped as the trace escapes
    // names), and the key of the `client_cert` limit (one a minute).
    assert!(
        first.head.contains("; client_cert=CN=app-1;"),
        "{}",
        first.head
    );
    assert_eq!(
        client
            .post("/v1/chat/completions", KEY, CHAT)
            .unwrap()
            .status,
        429
    );
    // A new connection of the same client — which would resume its TLS session, and a
    // resumed session skips the certificate — is still app-1's: counted, so refused.
    let mut again = app_1.connect(port, "gw.test").unwrap();
    let refused = again.post("/v1/chat/completions", KEY, CHAT).unwrap();
    assert_eq!(refused.status, 429, "{}", refused.text());
    // Another certificate has its own count.
    let mut other = TlsClientConfig::with_client_cert(&ca, &clients.client("app-2"))
        .connect(port, "gw.test")
        .unwrap();
    assert_eq!(
        other
            .post("/v1/chat/completions", KEY, CHAT)
            .unwrap()
            .status,
        200
    );

    // Without a certificate, or with one from another CA: refused. TLS 1.3 finishes the
    // client's side of the handshake before the server's verdict, so the refusal arrives
    // as an alert on the first read at the latest.
    for config in [
        TlsClientConfig::trusting(&ca),
        TlsClientConfig::with_client_cert(&ca, &foreign.client("intruder")),
    ] {
        let outcome = config
            .connect(port, "gw.test")
            .and_then(|mut c| c.post("/v1/chat/completions", KEY, CHAT));
        assert!(outcome.is_err(), "refused in the handshake");
    }
}

#[test]
fn a_rotated_certificate_is_served_after_reload_while_open_connections_keep_working() {
    let ca = TestCa::new("Sluice test CA");
    let first = ca.server(&["gw.test"]);
    let second = ca.server(&["gw.test"]);
    let sluice = start(&config(""), |dir| first.write(dir, "gw"));
    let dir = sluice.config_path.parent().unwrap().to_path_buf();
    let tls = TlsClientConfig::trusting(&ca);
    let mut open = tls.connect(sluice.ports[1], "gw.test").unwrap();
    assert_eq!(open.server_cert(), first.der);
    assert_eq!(
        open.post("/v1/chat/completions", KEY, CHAT).unwrap().status,
        200
    );

    second.write(&dir, "gw");
    sluice.signal("HUP");
    assert!(
        sluice.wait_log("config reloaded", Duration::from_secs(10)),
        "{}",
        sluice.log()
    );
    let fresh = tls.connect(sluice.ports[1], "gw.test").unwrap();
    assert_eq!(fresh.server_cert(), second.der);
    // The connection opened before the reload goes on with its session.
    assert_eq!(
        open.post("/v1/chat/completions", KEY, CHAT).unwrap().status,
        200
    );

    // A certificate file that holds no certificate refuses the reload, located; the
    // running certificate keeps serving.
    std::fs::write(dir.join("gw.pem"), "not a certificate\n").unwrap();
    sluice.signal("HUP");
    assert!(
        sluice.wait_log("config reload refused", Duration::from_secs(10)),
        "{}",
        sluice.log()
    );
    let log = sluice.log();
    assert!(
        log.contains("server.tls.cert_file: `gw.pem` holds no certificate"),
        "{log}"
    );
    assert_eq!(
        tls.connect(sluice.ports[1], "gw.test")
            .unwrap()
            .server_cert(),
        second.der
    );
}

#[test]
fn garbage_and_stalled_handshakes_do_not_stop_a_client() {
    let ca = TestCa::new("Sluice test CA");
    let gw = ca.server(&["gw.test"]);
    let sluice = start(&config("handshake_timeout = \"1s\""), |dir| {
        gw.write(dir, "gw")
    });
    let port = sluice.ports[1];

    // 200 connections: plaintext HTTP, random-looking bytes, and ones that send nothing.
    let mut bad = Vec::new();
    for i in 0..200u32 {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        match i % 3 {
            0 => {
                let _ = s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n");
            }
            1 => {
                let noise: Vec<u8> = (0..512u32)
                    .map(|b| (b.wrapping_mul(2_654_435_761) >> 13) as u8)
                    .collect();
                let _ = s.write_all(&noise);
            }
            _ => {}
        }
        bad.push(s);
    }
    // A well-behaved client is served meanwhile.
    let mut client = TlsClientConfig::trusting(&ca)
        .connect(port, "gw.test")
        .unwrap();
    assert_eq!(
        client
            .post("/v1/chat/completions", KEY, CHAT)
            .unwrap()
            .status,
        200
    );
    // Every bad connection is closed by Sluice: at once for garbage, after the handshake
    // timeout for one that stalls. Nothing it answers is HTTP.
    for mut s in bad {
        let mut rest = Vec::new();
        match s.read_to_end(&mut rest) {
            Ok(_) => {}
            Err(e) => assert_eq!(
                e.kind(),
                std::io::ErrorKind::ConnectionReset,
                "not closed: {e}"
            ),
        }
        assert!(
            !rest.starts_with(b"HTTP/"),
            "{:?}",
            String::from_utf8_lossy(&rest)
        );
    }
    // And the plain listener was never disturbed.
    assert_eq!(
        sluice
            .request(
                "POST",
                "/v1/chat/completions",
                &[("api-key", KEY), ("content-type", "application/json")],
                CHAT.as_bytes(),
            )
            .status,
        200
    );
}

#[test]
fn requests_over_tls_are_forwarded_as_https() {
    let ca = TestCa::new("Sluice test CA");
    let gw = ca.server(&["gw.test"]);
    let backend = Upstream::json(upstream_chat_answer("gpt-4o"));
    let text = listening("", &openai_backend_body(&backend.url(), "gpt-4o"));
    let sluice = start(&text, |dir| gw.write(dir, "gw"));
    let mut client = TlsClientConfig::trusting(&ca)
        .connect(sluice.ports[1], "gw.test")
        .unwrap();
    assert_eq!(
        client
            .post("/v1/chat/completions", KEY, CHAT)
            .unwrap()
            .status,
        200
    );
    let over_plain = sluice.request(
        "POST",
        "/v1/chat/completions",
        &[("content-type", "application/json")],
        CHAT.as_bytes(),
    );
    assert_eq!(over_plain.status, 200);
    let protos: Vec<String> = backend
        .requests()
        .iter()
        .map(|r| r.head.header("x-forwarded-proto").unwrap_or("").to_string())
        .collect();
    assert_eq!(protos, ["https", "http"]);
}
