//! `https://` backends end to end: a real `sluice` process in front of HTTPS backends
//! (tests/support/tls.rs) whose certificates come from a CA made in the test. Chat and
//! streamed chat over TLS, pooled TLS connections and resumed sessions; and every way a
//! certificate or handshake can fail — a 502 naming the reason, in the log and the trace,
//! with nothing of the request sent, and the next backend of the pool taking over.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::TcpListener;
use std::time::Duration;

use serde_json::Value;
use support::tls::{tls_chunk, tls_respond, TestCa, TlsUpstream, Validity};
use support::*;

const KEY: &str = "tls-test-key";

/// A product with the trace allowed and one subscription with [`KEY`].
fn access() -> String {
    format!(
        "{}{}",
        product("p", "trace = true"),
        subscription("team", "p", &[KEY])
    )
}

/// Writes `ca`'s certificate into `dir` and returns its path, for `ca_file`.
fn ca_file(dir: &TempDir, ca: &TestCa) -> String {
    let path = dir.path().join("ca.pem");
    std::fs::write(&path, ca.pem()).unwrap();
    path.to_str().unwrap().to_string()
}

/// An openai backend `name` at `url` with `extra` lines.
fn backend(name: &str, url: &str, extra: &str) -> String {
    format!("\n[[backend]]\nname = \"{name}\"\nkind = \"openai\"\nurl = \"{url}\"\n{extra}\n")
}

/// A deployment `name` over `members` (in priority order: the first is tried first).
fn deployment(name: &str, members: &[&str]) -> String {
    let pool: Vec<String> = members
        .iter()
        .enumerate()
        .map(|(i, m)| format!("{{ backend = \"{m}\", priority = {i} }}"))
        .collect();
    format!(
        "\n[[deployment]]\nname = \"{name}\"\nbackends = [{}]\n",
        pool.join(", ")
    )
}

/// A chat to deployment `model` with the key and the trace, on `c`.
fn ask(c: &mut Client, model: &str) -> Response {
    c.request(
        "POST",
        "/v1/chat/completions",
        &[
            ("Content-Type", "application/json"),
            ("api-key", KEY),
            ("x-sluice-trace", "true"),
        ],
        &serde_json::to_vec(&chat_body(Some(model), false)).unwrap(),
    )
}

/// An HTTPS backend answering chats: JSON, or for `"stream": true` three SSE events over a
/// chunked body.
fn chat_backend(ca: &TestCa, names: &[&str], validity: Validity) -> TlsUpstream {
    let (chain, key) = ca.issue(names, validity);
    TlsUpstream::start(chain, key, |req, w| {
        let body: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
        if body["stream"] == Value::Bool(true) {
            let _ = w.write_all(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n",
            );
            for event in [
                sse_chunk("a"),
                sse_chunk("b"),
                "data: [DONE]\n\n".to_string(),
            ] {
                let _ = tls_chunk(w, event.as_bytes());
            }
            let _ = tls_chunk(w, b"");
        } else {
            let answer = serde_json::to_vec(&upstream_chat_answer("tls-model")).unwrap();
            tls_respond(w, 200, &[("content-type", "application/json")], &answer);
        }
        After::KeepAlive
    })
}

#[test]
fn chat_and_streamed_chat_reach_an_https_backend_over_one_tls_connection() {
    let dir = TempDir::new("tls-ca");
    let ca = TestCa::new("sluice test CA");
    let up = chat_backend(&ca, &["backend.test"], Validity::Current);
    // The certificate is for `backend.test`, the URL an address: `server_name` says which
    // name to send and check.
    let body = format!(
        "{}{}{}",
        backend(
            "secure",
            &up.url(),
            &format!(
                "ca_file = \"{}\"\nserver_name = \"backend.test\"",
                ca_file(&dir, &ca)
            )
        ),
        deployment("chat", &["secure"]),
        access()
    );
    let s = Launch::new(&body).start();
    let mut c = s.connect();

    let resp = ask(&mut c, "chat");
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.json()["choices"][0]["message"]["content"], "ok");
    assert!(
        resp.header("x-sluice-trace")
            .is_some_and(|t| t.ends_with("backend=secure")),
        "{:?}",
        resp.header("x-sluice-trace")
    );

    let bytes = serde_json::to_vec(&chat_body(Some("chat"), true)).unwrap();
    let (head, mut sse) = c.stream(
        "POST",
        "/v1/chat/completions",
        &[("Content-Type", "application/json"), ("api-key", KEY)],
        &bytes,
    );
    assert_eq!(head.status(), 200, "{head:?}");
    let datas: Vec<String> = sse
        .collect_rest()
        .iter()
        .filter_map(|e| event_data(e).map(str::to_string))
        .collect();
    assert_eq!(
        datas.last().map(String::as_str),
        Some("[DONE]"),
        "{datas:?}"
    );
    let text: String = datas[..datas.len() - 1]
        .iter()
        .map(|d| {
            let v: Value = serde_json::from_str(d).unwrap();
            v["choices"][0]["delta"]["content"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .collect();
    assert_eq!(text, "ab");

    let requests = up.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[0].line, "POST /v1/chat/completions");
    // `server_name` is the Host too (a name-routed front end sees the certificate's name).
    assert_eq!(
        requests[0].header("host"),
        Some(format!("backend.test:{}", up.port).as_str())
    );
    // Both requests on one pooled TLS connection: one TCP connection, one handshake.
    assert_eq!((requests[0].conn, requests[1].conn), (0, 0));
    assert_eq!((up.connections(), up.handshakes()), (1, 1));
}

#[test]
fn a_new_connection_resumes_the_tls_session() {
    let dir = TempDir::new("tls-ca");
    let ca = TestCa::new("sluice test CA");
    let (chain, key) = ca.issue(&["127.0.0.1"], Validity::Current);
    let answer = serde_json::to_vec(&upstream_chat_answer("tls-model")).unwrap();
    // Every answer closes its connection, so each request needs a new one.
    let up = TlsUpstream::start(chain, key, move |_, w| {
        tls_respond(
            w,
            200,
            &[
                ("content-type", "application/json"),
                ("connection", "close"),
            ],
            &answer,
        );
        After::Close
    });
    let body = format!(
        "{}{}{}",
        backend(
            "secure",
            &up.url(),
            &format!("ca_file = \"{}\"", ca_file(&dir, &ca))
        ),
        deployment("chat", &["secure"]),
        access()
    );
    let s = Launch::new(&body).start();
    let mut c = s.connect();
    for _ in 0..3 {
        let resp = ask(&mut c, "chat");
        assert_eq!(resp.status, 200, "{}", resp.text());
    }
    assert_eq!(up.connections(), 3);
    assert_eq!(up.handshakes(), 3);
    assert_eq!(up.resumed(), 2, "the second and third connections resume");
}

/// The certificate faults and the words Sluice names them with.
const FAULTS: [(&str, &str); 4] = [
    ("expired", "certificate expired"),
    ("not-yet", "certificate not yet valid"),
    ("wrong-name", "certificate is for another name"),
    ("unknown-ca", "unknown certificate authority"),
];

/// A backend presenting the certificate of `fault` for 127.0.0.1 (signed by `ca`, except
/// the unknown CA's), answering like a chat backend.
fn faulty_backend(ca: &TestCa, fault: &str) -> TlsUpstream {
    match fault {
        "expired" => chat_backend(ca, &["127.0.0.1"], Validity::Expired),
        "not-yet" => chat_backend(ca, &["127.0.0.1"], Validity::NotYetValid),
        "wrong-name" => chat_backend(ca, &["other.test"], Validity::Current),
        _ => chat_backend(
            &TestCa::new("someone else"),
            &["127.0.0.1"],
            Validity::Current,
        ),
    }
}

#[test]
fn certificate_faults_are_502s_naming_the_reason_with_nothing_sent() {
    let dir = TempDir::new("tls-ca");
    let ca = TestCa::new("sluice test CA");
    let ca_path = ca_file(&dir, &ca);
    let backends: Vec<TlsUpstream> = FAULTS
        .iter()
        .map(|(fault, _)| faulty_backend(&ca, fault))
        .collect();
    let mut body = access();
    for ((fault, _), up) in FAULTS.iter().zip(&backends) {
        body.push_str(&backend(
            fault,
            &up.url(),
            &format!("ca_file = \"{ca_path}\""),
        ));
        body.push_str(&deployment(fault, &[fault]));
    }
    let s = Launch::new(&body).start();
    let mut c = s.connect();
    for ((fault, reason), up) in FAULTS.iter().zip(&backends) {
        let resp = ask(&mut c, fault);
        assert_openai_error(&resp, 502, None);
        let message = resp.json()["error"]["message"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(
            message.contains(&format!("(tls: {reason})")),
            "{fault}: {message}"
        );
        let trace = resp.header("x-sluice-trace").unwrap_or_default();
        assert!(
            trace.ends_with(&format!("backend={fault} (tls: {reason})")),
            "{fault}: {trace}"
        );
        assert!(
            s.wait_log(&format!("(tls: {reason})"), Duration::from_secs(5)),
            "{fault}: no warn line naming the reason:\n{}",
            s.log()
        );
        // The lone backend is tried `retry.max_attempts` (3) times.
        assert!(
            wait_until(Duration::from_secs(5), || up.failed_handshakes() == 3),
            "{fault}: the backend saw {} refused handshakes, not 3",
            up.failed_handshakes()
        );
        assert_eq!(up.handshakes(), 0, "{fault}");
        assert_eq!(
            up.app_bytes(),
            0,
            "{fault}: request bytes reached the backend"
        );
    }
}

#[test]
fn a_good_backend_of_the_pool_takes_over_from_a_bad_certificate() {
    let dir = TempDir::new("tls-ca");
    let ca = TestCa::new("sluice test CA");
    let ca_path = ca_file(&dir, &ca);
    let good = chat_backend(&ca, &["127.0.0.1"], Validity::Current);
    let bad: Vec<TlsUpstream> = FAULTS
        .iter()
        .map(|(fault, _)| faulty_backend(&ca, fault))
        .collect();
    let mut body = access() + &backend("good", &good.url(), &format!("ca_file = \"{ca_path}\""));
    for ((fault, _), up) in FAULTS.iter().zip(&bad) {
        body.push_str(&backend(
            fault,
            &up.url(),
            &format!("ca_file = \"{ca_path}\""),
        ));
        body.push_str(&deployment(fault, &[fault, "good"]));
    }
    let s = Launch::new(&body).start();
    let mut c = s.connect();
    for ((fault, reason), up) in FAULTS.iter().zip(&bad) {
        let resp = ask(&mut c, fault);
        assert_eq!(resp.status, 200, "{fault}: {}", resp.text());
        // The trace names the attempt that failed over, and why, before the one that served.
        let failed_over = format!("; tried={fault} (tls: {reason})");
        assert!(
            resp.header("x-sluice-trace")
                .is_some_and(|t| t.contains(&failed_over)
                    && t.ends_with(&format!("{failed_over}; backend=good"))),
            "{fault}: {:?}",
            resp.header("x-sluice-trace")
        );
        assert!(s.wait_log(&format!("(tls: {reason})"), Duration::from_secs(5)));
        assert!(wait_until(Duration::from_secs(5), || up
            .failed_handshakes()
            == 1));
        // Like a refused connect it is not cooled down: the next request tries it again
        // (outlier detection ejects it after `consecutive_failures`), and fails over again.
        let again = ask(&mut c, fault);
        assert_eq!(again.status, 200);
        assert!(
            wait_until(Duration::from_secs(5), || up.failed_handshakes() == 2),
            "{fault}: not tried again"
        );
        assert_eq!(up.app_bytes(), 0, "{fault}");
    }
    assert_eq!(good.requests().len(), 2 * FAULTS.len());
}

#[test]
fn a_silent_handshake_times_out_within_upstream_connect() {
    // Accepts TCP and never says a word of TLS.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let body = format!(
        "{}{}{}",
        backend("silent", &format!("https://127.0.0.1:{port}"), ""),
        deployment("chat", &["silent"]),
        access()
    );
    let s = Launch::new(&body)
        .server("[server.timeouts]\nupstream_connect = \"300ms\"")
        .start();
    let mut c = s.connect();
    let resp = ask(&mut c, "chat");
    assert_openai_error(&resp, 502, None);
    assert!(
        resp.text().contains("(tls: TLS handshake timed out)"),
        "{}",
        resp.text()
    );
    assert!(resp
        .header("x-sluice-trace")
        .is_some_and(|t| t.ends_with("backend=silent (tls: TLS handshake timed out)")));
    let (mut accepted, _) = silent.accept().unwrap();
    accepted
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    // What arrived is a ClientHello (a TLS handshake record), then the close.
    let mut hello = Vec::new();
    let _ = std::io::Read::read_to_end(&mut accepted, &mut hello);
    assert_eq!(hello.first(), Some(&0x16), "{hello:?}");
}

#[test]
fn insecure_skip_verify_accepts_any_certificate_and_says_so_loudly() {
    let stranger = TestCa::new("nobody trusts this");
    let up = chat_backend(&stranger, &["elsewhere.test"], Validity::Current);
    let body = format!(
        "{}{}{}",
        backend("lab", &up.url(), "insecure_skip_verify = true"),
        deployment("chat", &["lab"]),
        access()
    );
    let s = Launch::new(&body).start();
    assert!(
        s.wait_log(
            "TLS certificate of backend `lab` is NOT verified",
            Duration::from_secs(5)
        ),
        "{}",
        s.log()
    );
    let mut c = s.connect();
    let resp = ask(&mut c, "chat");
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(up.handshakes(), 1);
}
