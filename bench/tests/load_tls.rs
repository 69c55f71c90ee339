//! `sluice-bench load` over TLS against a tiny HTTPS server written here: std threads on
//! 127.0.0.1, rustls (ring) with a certificate from `sluice_bench::certs`, one thread per
//! connection answering every request `200` with a small JSON body, and counting what the
//! load generator did: connections, full and resumed handshakes, the SNI each one sent,
//! requests.
//!
//! Keep-alive: exactly N requests over the pre-opened connections and no more handshakes;
//! a new connection per request: one full handshake per request, SNI from the URL host;
//! `--tls-resumption`: later handshakes resumed; an untrusted CA: every request a `tls` error.

// The server's helpers are test code too, outside `#[test]` functions.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use rustls::{HandshakeKind, ServerConfig, ServerConnection, StreamOwned};
use sluice_bench::certs::{self, CertFiles};
use sluice_bench::load::{run, LoadConfig};

const BODY: &str = r#"{"ok":true}"#;

#[derive(Default)]
struct Seen {
    connections: AtomicU64,
    full: AtomicU64,
    resumed: AtomicU64,
    requests: AtomicU64,
    sni: Mutex<Vec<Option<String>>>,
}

struct Server {
    addr: SocketAddr,
    seen: Arc<Seen>,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl Server {
    fn start(certs: &CertFiles) -> Self {
        let chain = sluice::tls::pem::certificates(&std::fs::read(&certs.cert).unwrap()).unwrap();
        let key = sluice::tls::pem::private_key(&std::fs::read(&certs.key).unwrap()).unwrap();
        let mut config = ServerConfig::builder_with_provider(sluice::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let config = Arc::new(config);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Seen::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (seen.clone(), stop.clone());
        let accept = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(tcp) = conn else { continue };
                s.connections.fetch_add(1, Ordering::SeqCst);
                let (s, config) = (s.clone(), config.clone());
                std::thread::spawn(move || serve(tcp, config, &s));
            }
        });
        Self {
            addr,
            seen,
            stop,
            accept: Some(accept),
        }
    }

    fn count(&self, what: fn(&Seen) -> &AtomicU64) -> u64 {
        what(&self.seen).load(Ordering::SeqCst)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

/// Answers every request on one connection until the client goes away.
fn serve(tcp: TcpStream, config: Arc<ServerConfig>, seen: &Seen) {
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut tls = StreamOwned::new(ServerConnection::new(config).unwrap(), tcp);
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let mut counted = false;
    loop {
        let n = match tls.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if !counted {
            counted = true;
            match tls.conn.handshake_kind() {
                Some(HandshakeKind::Resumed) => seen.resumed.fetch_add(1, Ordering::SeqCst),
                _ => seen.full.fetch_add(1, Ordering::SeqCst),
            };
            let sni = tls.conn.server_name().map(str::to_owned);
            seen.sni.lock().unwrap().push(sni);
        }
        buf.extend_from_slice(&chunk[..n]);
        // Requests carry a Content-Length body; answer each complete one.
        while let Some(end) = request_end(&buf) {
            buf.drain(..end);
            seen.requests.fetch_add(1, Ordering::SeqCst);
            let answer = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{BODY}",
                BODY.len()
            );
            if tls.write_all(answer.as_bytes()).is_err() {
                return;
            }
        }
    }
}

/// The length of the first complete request in `buf` (head and Content-Length body).
fn request_end(buf: &[u8]) -> Option<usize> {
    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map_or(0, |v| v.trim().parse().unwrap());
    (buf.len() >= head_end + length).then_some(head_end + length)
}

/// One test at a time: two cores, and each runs a server and a load.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn temp_certs(tag: &str) -> (PathBuf, CertFiles) {
    let dir = std::env::temp_dir().join(format!("sluice-bench-{tag}-{}", std::process::id()));
    let files = certs::write(&dir, "localhost").unwrap();
    (dir, files)
}

/// `requests` measured POSTs to `https://localhost:PORT/v1/chat/completions` over
/// `connections`, trusting `ca`.
fn config(server: &Server, ca: &CertFiles, connections: usize, requests: u64) -> LoadConfig {
    LoadConfig {
        url: format!(
            "https://localhost:{}/v1/chat/completions",
            server.addr.port()
        ),
        connect_to: Some(server.addr),
        ca_file: Some(ca.ca.clone()),
        body: br#"{"model":"gpt-4o","messages":[]}"#.to_vec(),
        connections,
        threads: 1,
        warmup: Duration::ZERO,
        requests: Some(requests),
        timeout: Duration::from_secs(5),
        ..LoadConfig::default()
    }
}

#[test]
fn keep_alive_over_tls_completes_exactly_n_requests_on_the_open_connections() {
    let _serial = serial();
    let (dir, files) = temp_certs("load-tls-ka");
    let server = Server::start(&files);
    let report = run(&config(&server, &files, 2, 200)).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!((report.requests, report.ok), (200, 200), "{report}");
    assert_eq!(report.errors.total(), 0, "{report}");
    assert_eq!(server.count(|s| &s.requests), 200);
    // Two connections opened before the clock, each one full handshake, reused throughout.
    assert_eq!(server.count(|s| &s.connections), 2);
    assert_eq!(server.count(|s| &s.full), 2);
    let sni = server.seen.sni.lock().unwrap().clone();
    assert_eq!(sni, vec![Some("localhost".to_owned()); 2]);
}

#[test]
fn a_new_connection_per_request_is_a_full_handshake_each() {
    let _serial = serial();
    let (dir, files) = temp_certs("load-tls-fresh");
    let server = Server::start(&files);
    let cfg = LoadConfig {
        new_connection_per_request: true,
        ..config(&server, &files, 3, 60)
    };
    let report = run(&cfg).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!((report.requests, report.ok), (60, 60), "{report}");
    assert_eq!(server.count(|s| &s.requests), 60);
    // No connection opened early, none reused, no session resumed.
    assert_eq!(server.count(|s| &s.connections), 60);
    assert_eq!(server.count(|s| &s.full), 60);
    assert_eq!(server.count(|s| &s.resumed), 0);
    let sni = server.seen.sni.lock().unwrap().clone();
    assert!(
        sni.iter().all(|n| n.as_deref() == Some("localhost")),
        "{sni:?}"
    );
}

#[test]
fn resumption_when_asked_resumes_later_handshakes() {
    let _serial = serial();
    let (dir, files) = temp_certs("load-tls-resume");
    let server = Server::start(&files);
    let cfg = LoadConfig {
        new_connection_per_request: true,
        tls_resumption: true,
        ..config(&server, &files, 1, 20)
    };
    let report = run(&cfg).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(report.ok, 20, "{report}");
    assert_eq!(server.count(|s| &s.connections), 20);
    // The first is full; the server's tickets let (nearly) every later one resume.
    let (full, resumed) = (server.count(|s| &s.full), server.count(|s| &s.resumed));
    assert_eq!(full + resumed, 20);
    assert!(resumed >= 10, "full {full}, resumed {resumed}");
}

#[test]
fn a_certificate_from_another_ca_fails_every_request_as_tls() {
    let _serial = serial();
    let (dir, served) = temp_certs("load-tls-served");
    let (other_dir, other) = temp_certs("load-tls-other");
    let server = Server::start(&served);
    // The client trusts a different CA than the one that signed the served certificate.
    let cfg = LoadConfig {
        ca_file: Some(other.ca.clone()),
        new_connection_per_request: true,
        ..config(&server, &served, 1, 5)
    };
    let report = run(&cfg).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&other_dir);
    assert_eq!(report.ok, 0, "{report}");
    assert_eq!(report.errors.tls, 5, "{report}");
    assert_eq!(report.errors.total(), 5, "{report}");
    assert_eq!(server.count(|s| &s.requests), 0);
}

#[test]
fn the_binary_loads_an_https_url() {
    let _serial = serial();
    let (dir, files) = temp_certs("load-tls-bin");
    let server = Server::start(&files);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice-bench"))
        .args([
            "load",
            "--url",
            &format!("https://localhost:{}/v1/models", server.addr.port()),
            "--connect-to",
            &server.addr.to_string(),
            "--ca-file",
            &files.ca.display().to_string(),
            "--new-connection-per-request",
            "--connections",
            "2",
            "--requests",
            "10",
            "--warmup",
            "0s",
            "--timeout",
            "5s",
            "--quiet",
        ])
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("requests 10  ok 10  errors 0"), "{stdout}");
    assert_eq!(server.count(|s| &s.connections), 10);
}
