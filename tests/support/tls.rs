//! TLS for the whole-process tests: a test CA that issues server certificates (current,
//! expired, not yet valid, for any names) with rcgen, and [`TlsUpstream`], a scripted
//! HTTPS backend on 127.0.0.1 port 0 — std threads, `rustls::ServerConnection` in a
//! `StreamOwned` — that counts full and resumed handshakes, failed handshakes, and every
//! byte of application data it received.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::ServerConnection;
use rustls::{HandshakeKind, ServerConfig, StreamOwned};

use super::upstream::After;
use super::wire::READ_TIMEOUT;

/// When a certificate is valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validity {
    /// From a year ago to a year ahead.
    Current,
    /// 2020 to 2021.
    Expired,
    /// From 2090.
    NotYetValid,
}

/// A certificate authority for one test.
pub struct TestCa {
    pub(super) issuer: CertifiedIssuer<'static, KeyPair>,
}

impl TestCa {
    /// A new CA named `name`.
    pub fn new(name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("ca key");
        TestCa {
            issuer: CertifiedIssuer::self_signed(params, key).expect("ca cert"),
        }
    }

    /// The CA certificate as PEM (what a `ca_file` holds).
    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A server certificate for `names` (DNS names or IP addresses), valid as `validity`
    /// says, and its key.
    pub fn issue(
        &self,
        names: &[&str],
        validity: Validity,
    ) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).expect("leaf params");
        let now = time_now();
        let year = 365 * 24 * 3600;
        let (from, to) = match validity {
            Validity::Current => (now - year, now + year),
            Validity::Expired => (1_577_836_800, 1_609_459_200),
            Validity::NotYetValid => (3_786_912_000, 3_818_448_000),
        };
        params.not_before = rcgen::date_time_ymd(1970, 1, 1) + Duration::from_secs(from);
        params.not_after = rcgen::date_time_ymd(1970, 1, 1) + Duration::from_secs(to);
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("leaf cert");
        (
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
    }
}

fn time_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// A request a [`TlsUpstream`] received.
#[derive(Debug, Clone)]
pub struct TlsRecorded {
    /// Method and target, e.g. `POST /v1/chat/completions`.
    pub line: String,
    /// Header names (lowercase) and values.
    pub headers: Vec<(String, String)>,
    /// The body (`content-length` framed, as Sluice sends it).
    pub body: Vec<u8>,
    /// Which connection (0-based, in accept order) it came on.
    pub conn: usize,
}

impl TlsRecorded {
    /// The value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

type TlsHandler = dyn Fn(&TlsRecorded, &mut dyn Write) -> After + Send + Sync;

#[derive(Default)]
struct TlsState {
    connections: AtomicUsize,
    handshakes: AtomicUsize,
    resumed: AtomicUsize,
    failed_handshakes: AtomicUsize,
    app_bytes: AtomicUsize,
    requests: Mutex<Vec<TlsRecorded>>,
    streams: Mutex<Vec<TcpStream>>,
}

/// A scripted HTTPS/1.1 backend on 127.0.0.1:0 (TLS 1.3 and 1.2, ALPN `http/1.1`, rustls'
/// default in-memory session cache, so clients can resume), one thread per connection.
pub struct TlsUpstream {
    /// Its port.
    pub port: u16,
    state: Arc<TlsState>,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

impl TlsUpstream {
    /// Starts a backend presenting `chain` (leaf first) with `key`, answering with `handler`.
    pub fn start(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        handler: impl Fn(&TlsRecorded, &mut dyn Write) -> After + Send + Sync + 'static,
    ) -> TlsUpstream {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("server cert");
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let config = Arc::new(config);
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind tls upstream");
        let port = listener.local_addr().expect("addr").port();
        let state = Arc::new(TlsState::default());
        let stop = Arc::new(AtomicBool::new(false));
        let handler: Arc<TlsHandler> = Arc::new(handler);
        let acceptor = {
            let state = Arc::clone(&state);
            let stop = Arc::clone(&stop);
            thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    let conn = state.connections.fetch_add(1, Ordering::SeqCst);
                    if let Ok(clone) = stream.try_clone() {
                        state.streams.lock().expect("lock").push(clone);
                    }
                    let state = Arc::clone(&state);
                    let handler = Arc::clone(&handler);
                    let config = Arc::clone(&config);
                    thread::spawn(move || serve(stream, conn, config, &state, &*handler));
                }
            })
        };
        TlsUpstream {
            port,
            state,
            stop,
            acceptor: Some(acceptor),
        }
    }

    /// A backend answering every request `200` with the JSON `body`, keep-alive.
    pub fn json(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        body: serde_json::Value,
    ) -> TlsUpstream {
        let bytes = serde_json::to_vec(&body).expect("json");
        TlsUpstream::start(chain, key, move |_, w| {
            tls_respond(w, 200, &[("content-type", "application/json")], &bytes);
            After::KeepAlive
        })
    }

    /// `https://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// TCP connections accepted.
    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// Handshakes completed (full and resumed).
    pub fn handshakes(&self) -> usize {
        self.state.handshakes.load(Ordering::SeqCst)
    }

    /// Handshakes completed by resuming an earlier session.
    pub fn resumed(&self) -> usize {
        self.state.resumed.load(Ordering::SeqCst)
    }

    /// Handshakes that failed (the client refused the certificate, or went away).
    pub fn failed_handshakes(&self) -> usize {
        self.state.failed_handshakes.load(Ordering::SeqCst)
    }

    /// Bytes of application data (decrypted request bytes) received on any connection.
    pub fn app_bytes(&self) -> usize {
        self.state.app_bytes.load(Ordering::SeqCst)
    }

    /// Requests received so far.
    pub fn requests(&self) -> Vec<TlsRecorded> {
        self.state.requests.lock().expect("lock").clone()
    }
}

impl Drop for TlsUpstream {
    fn drop(&mut self) {
        super::upstream::stop_server(
            &self.stop,
            &self.state.streams,
            self.port,
            self.acceptor.take(),
        );
    }
}

fn serve(
    mut tcp: TcpStream,
    conn: usize,
    config: Arc<ServerConfig>,
    state: &TlsState,
    handler: &TlsHandler,
) {
    let _ = tcp.set_read_timeout(Some(Duration::from_secs(30)));
    let _ = tcp.set_write_timeout(Some(READ_TIMEOUT));
    let Ok(mut server) = ServerConnection::new(config) else {
        return;
    };
    while server.is_handshaking() {
        if server.complete_io(&mut tcp).is_err() {
            state.failed_handshakes.fetch_add(1, Ordering::SeqCst);
            return;
        }
    }
    state.handshakes.fetch_add(1, Ordering::SeqCst);
    if server.handshake_kind() == Some(HandshakeKind::Resumed) {
        state.resumed.fetch_add(1, Ordering::SeqCst);
    }
    let mut stream = StreamOwned::new(server, tcp);
    let mut buf = Vec::new();
    loop {
        let Ok(Some(rec)) = read_request(&mut stream, &mut buf, conn, state) else {
            return;
        };
        state.requests.lock().expect("lock").push(rec.clone());
        let after = handler(&rec, &mut stream);
        let _ = stream.flush();
        if after == After::Close {
            stream.conn.send_close_notify();
            let _ = stream.flush();
            let _ = stream.sock.shutdown(Shutdown::Both);
            return;
        }
    }
}

/// Reads one request (head, then a `content-length` body) from `stream`; `None` at a clean
/// end between requests.
fn read_request(
    stream: &mut impl Read,
    buf: &mut Vec<u8>,
    conn: usize,
    state: &TlsState,
) -> io::Result<Option<TlsRecorded>> {
    let mut chunk = [0u8; 8192];
    let (head_len, line, headers) = loop {
        let mut parsed = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut parsed);
        if let Ok(httparse::Status::Complete(n)) = req.parse(buf) {
            let line = format!("{} {}", req.method.unwrap_or(""), req.path.unwrap_or(""));
            let headers = req
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_ascii_lowercase(),
                        String::from_utf8_lossy(h.value).into_owned(),
                    )
                })
                .collect::<Vec<_>>();
            break (n, line, headers);
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Ok(None);
        }
        state.app_bytes.fetch_add(n, Ordering::SeqCst);
        buf.extend_from_slice(&chunk[..n]);
    };
    let length: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0);
    while buf.len() < head_len + length {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        state.app_bytes.fetch_add(n, Ordering::SeqCst);
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = buf[head_len..head_len + length].to_vec();
    buf.drain(..head_len + length);
    Ok(Some(TlsRecorded {
        line,
        headers,
        body,
        conn,
    }))
}

/// Writes a whole response with `content-length`.
pub fn tls_respond(w: &mut dyn Write, status: u16, headers: &[(&str, &str)], body: &[u8]) {
    let mut out = format!("HTTP/1.1 {status} Status\r\n");
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str(&format!("content-length: {}\r\n\r\n", body.len()));
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(body);
    let _ = w.write_all(&bytes);
    let _ = w.flush();
}

/// Writes one chunk of a chunked body (an empty `data` ends the body).
pub fn tls_chunk(w: &mut dyn Write, data: &[u8]) -> io::Result<()> {
    let mut out = format!("{:x}\r\n", data.len()).into_bytes();
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
    w.write_all(&out)?;
    w.flush()
}
