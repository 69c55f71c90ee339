//! Shared helpers for the whole-process tests: start the real `sluice` binary on a free
//! loopback port, talk raw HTTP/1.1 to it, and stand up scripted upstream servers in threads.
//!
//! Everything here is bounded: every socket has a read timeout, every wait has a deadline,
//! and every child process is killed and reaped when its handle drops. Only 127.0.0.1 is used.
#![allow(dead_code)]

use std::fs;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long a test waits for any one read from a socket before it gives up.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The key clients present (the gateway does not check keys yet; it must not forward it).
pub const CLIENT_KEY: &str = "sluice-demo-key";

// ---------------------------------------------------------------------------------------------
// Temporary files

/// A directory under the system temp dir, removed on drop.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates a fresh, uniquely named directory.
    pub fn new(tag: &str) -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "sluice-test-{tag}-{}-{n}-{nanos}",
            std::process::id()
        ));
        fs::create_dir_all(&path).expect("create temp dir");
        TempDir { path }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

// ---------------------------------------------------------------------------------------------
// Ports

/// A loopback port nothing listens on, and nothing can: connecting to it is refused. The
/// port stays bound (not listening) by a socket held until this test process exits, so no
/// parallel test — and no `SO_REUSEPORT` listener — can take it meanwhile.
pub fn closed_port() -> u16 {
    use rustix::net::{bind, getsockname, socket, AddressFamily, SocketAddrAny, SocketType};
    static HELD: Mutex<Vec<std::os::fd::OwnedFd>> = Mutex::new(Vec::new());
    let fd = socket(AddressFamily::INET, SocketType::STREAM, None).expect("socket");
    bind(&fd, &SocketAddr::from(([127, 0, 0, 1], 0))).expect("bind 127.0.0.1:0");
    let local: SocketAddrAny = getsockname(&fd).expect("getsockname");
    let port = SocketAddr::try_from(local).expect("an IP address").port();
    HELD.lock().expect("lock").push(fd);
    port
}

/// Polls `cond` every 20 ms until it holds or `within` passes; returns whether it held.
pub fn wait_until(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------------------------
// The sluice process

/// Path of the binary under test.
pub fn sluice_bin() -> &'static str {
    env!("CARGO_BIN_EXE_sluice")
}

/// The workspace root (where `.venv` and `tests/` live).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// A whole config file: `[server]` listening on `port` plus `server_extra` lines (which may
/// open `[server.limits]` / `[server.timeouts]`), then `body` (backends and deployments).
pub fn config_text(port: u16, server_extra: &str, body: &str) -> String {
    config_listening(&[port], server_extra, body)
}

/// [`config_text`] listening on 127.0.0.1 at each of `ports`.
fn config_listening(ports: &[u16], server_extra: &str, body: &str) -> String {
    let listen: Vec<String> = ports.iter().map(|p| format!("\"127.0.0.1:{p}\"")).collect();
    format!(
        "[server]\nlisten = [{}]\n{server_extra}\n\n{body}\n",
        listen.join(", ")
    )
}

/// How to start a `sluice` process.
pub struct Launch {
    /// `--workers`; `None`: the flag is left out (the config or the core count decides).
    workers: Option<usize>,
    /// How many `127.0.0.1:0` listen addresses.
    listeners: usize,
    /// A whole config file to run as it is (see [`Launch::file`]).
    file: Option<String>,
    driver: Option<String>,
    server_extra: String,
    body: String,
    env: Vec<(String, String)>,
}

impl Launch {
    /// A launch with `body` (backends and deployments), one worker, no extra server settings.
    pub fn new(body: &str) -> Launch {
        Launch {
            workers: Some(1),
            listeners: 1,
            file: None,
            driver: None,
            server_extra: String::new(),
            body: body.to_string(),
            env: Vec::new(),
        }
    }

    /// `--workers N`.
    pub fn workers(mut self, n: usize) -> Launch {
        self.workers = Some(n);
        self
    }

    /// No `--workers` flag: `server.workers`, else one per core, decides.
    pub fn workers_from_config(mut self) -> Launch {
        self.workers = None;
        self
    }

    /// Runs this whole config file (its `[server] listen` must be one `127.0.0.1:0`).
    pub fn file(text: &str) -> Launch {
        Launch {
            file: Some(text.to_string()),
            ..Launch::new("")
        }
    }

    /// Listen on `n` addresses (`127.0.0.1:0` each).
    pub fn listeners(mut self, n: usize) -> Launch {
        self.listeners = n;
        self
    }

    /// `--driver NAME` (`io-uring`, `epoll`); by default the gateway picks.
    pub fn driver(mut self, name: &str) -> Launch {
        self.driver = Some(name.to_string());
        self
    }

    /// Extra lines inside `[server]` (and following sub-tables).
    pub fn server(mut self, extra: &str) -> Launch {
        self.server_extra = extra.to_string();
        self
    }

    /// An environment variable for the child.
    pub fn env(mut self, key: &str, value: &str) -> Launch {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// Writes the config (listening on 127.0.0.1 port 0), starts the process and waits
    /// (≤ 10 s) until it has written its ready file, which gives the port it bound.
    pub fn start(self) -> Sluice {
        let mut sluice = self.spawn();
        if let Err(e) = sluice.wait_ready(Duration::from_secs(10)) {
            panic!("{e}");
        }
        sluice
    }

    fn spawn(&self) -> Sluice {
        let dir = TempDir::new("sluice");
        let config_path = dir.path().join("sluice.toml");
        let log_path = dir.path().join("stderr.log");
        let ready_path = dir.path().join("ready");
        // Port 0: the kernel picks a free port when Sluice binds, so no other process can be
        // handed the same one; Sluice says which in its ready file.
        let ports = vec![0; self.listeners];
        let text = match &self.file {
            Some(text) => text.clone(),
            None => config_listening(&ports, &self.server_extra, &self.body),
        };
        fs::write(&config_path, text).expect("write config");
        let log = fs::File::create(&log_path).expect("create log file");
        let out = dir.path().join("stdout.log");
        let out = fs::File::create(out).expect("create stdout file");
        let mut cmd = Command::new(sluice_bin());
        cmd.arg("--config")
            .arg(&config_path)
            .arg("--ready-file")
            .arg(&ready_path)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(log));
        if let Some(n) = self.workers {
            cmd.arg("--workers").arg(n.to_string());
        }
        if let Some(driver) = &self.driver {
            cmd.arg("--driver").arg(driver);
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn sluice");
        Sluice {
            port: 0,
            ports: Vec::new(),
            listeners: self.listeners,
            child: Some(child),
            config_path,
            log_path,
            ready_path,
            server_extra: self.server_extra.clone(),
            _dir: dir,
        }
    }
}

/// A running `sluice` child process; killed and reaped on drop.
pub struct Sluice {
    /// The port it listens on (127.0.0.1), as its ready file said: the first listener's.
    pub port: u16,
    /// Every listener's port, in the ready file's order.
    pub ports: Vec<u16>,
    /// How many listen addresses its config has.
    listeners: usize,
    child: Option<Child>,
    /// Its config file.
    pub config_path: PathBuf,
    /// Its captured stderr.
    pub log_path: PathBuf,
    /// Where it writes its listen addresses once ready (`--ready-file`).
    pub ready_path: PathBuf,
    server_extra: String,
    _dir: TempDir,
}

impl Sluice {
    /// Waits until the process has written its ready file (every worker listens), and
    /// takes its port from it.
    fn wait_ready(&mut self, within: Duration) -> Result<(), String> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.try_exit_status() {
                return Err(format!(
                    "sluice exited before it was ready ({status}); stderr:\n{}",
                    self.log()
                ));
            }
            if let Ok(text) = fs::read_to_string(&self.ready_path) {
                let addrs: Vec<SocketAddr> = text
                    .lines()
                    .map(|line| line.parse())
                    .collect::<Result<_, _>>()
                    .map_err(|e| format!("unreadable ready file {text:?}: {e}"))?;
                if addrs.len() != self.listeners || !text.ends_with('\n') {
                    return Err(format!(
                        "the ready file has {} lines for {} listeners: {text:?}",
                        addrs.len(),
                        self.listeners
                    ));
                }
                self.ports = addrs.iter().map(SocketAddr::port).collect();
                self.port = self.ports[0];
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "sluice was not ready within {within:?}; stderr:\n{}",
                    self.log()
                ));
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Everything the process wrote to stderr so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Waits (bounded) until stderr contains `needle`.
    pub fn wait_log(&self, needle: &str, within: Duration) -> bool {
        wait_until(within, || self.log().contains(needle))
    }

    /// Rewrites the config file with a new body (same listen address — port 0, as started —
    /// and server settings).
    pub fn rewrite_config(&self, body: &str) {
        self.write_raw_config(&self.config_for(body));
    }

    /// The config text this process would get for `body`.
    pub fn config_for(&self, body: &str) -> String {
        config_listening(&vec![0; self.listeners], &self.server_extra, body)
    }

    /// Writes `text` as the config file, as is.
    pub fn write_raw_config(&self, text: &str) {
        fs::write(&self.config_path, text).expect("rewrite config");
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).expect("child running")
    }

    /// Sends a signal (`"HUP"`, `"TERM"`, …) with the system `kill` command.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }

    fn try_exit_status(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().expect("try_wait"))
    }

    /// Waits (bounded) for the process to exit; `None` if it is still running.
    pub fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(s) = self.try_exit_status() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// A new client connection to it.
    pub fn connect(&self) -> Client {
        Client::connect(self.port)
    }

    /// One request on a fresh connection.
    pub fn request(
        &self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Response {
        self.connect().request(method, target, headers, body)
    }

    /// `POST target` with a JSON body on a fresh connection.
    pub fn post_json(&self, target: &str, body: &Value) -> Response {
        self.connect().post_json(target, body)
    }

    /// `GET target` on a fresh connection.
    pub fn get(&self, target: &str) -> Response {
        self.request("GET", target, &[], b"")
    }
}

impl Drop for Sluice {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if thread::panicking() {
            eprintln!(
                "--- sluice stderr ({}) ---\n{}",
                self.log_path.display(),
                self.log()
            );
        }
    }
}

/// Runs `sluice --check --config FILE` and returns (exit code, stdout, stderr).
pub fn run_check(config_path: &Path, env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let mut cmd = Command::new(sluice_bin());
    cmd.arg("--config").arg(config_path).arg("--check");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .expect("run sluice --check");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

// ---------------------------------------------------------------------------------------------
// HTTP/1.1 wire reading, shared by the client and the scripted upstreams

/// A message head: the start line and the header fields in order.
#[derive(Debug, Clone, Default)]
pub struct Head {
    /// `HTTP/1.1 200 OK` or `POST /path HTTP/1.1`.
    pub start_line: String,
    /// Header fields as sent (names in their original case).
    pub headers: Vec<(String, String)>,
}

impl Head {
    fn parse(raw: &[u8]) -> io::Result<Head> {
        let text = String::from_utf8_lossy(raw);
        let mut lines = text.split("\r\n");
        let start_line = lines.next().unwrap_or_default().to_string();
        let mut headers = Vec::new();
        for line in lines {
            if line.is_empty() {
                continue;
            }
            let (name, value) = line.split_once(':').ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("bad header line {line:?}"),
                )
            })?;
            headers.push((name.trim().to_string(), value.trim().to_string()));
        }
        Ok(Head {
            start_line,
            headers,
        })
    }

    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every value of header `name`.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// Whether header `name` is present.
    pub fn has(&self, name: &str) -> bool {
        self.header(name).is_some()
    }

    /// A response's status code.
    pub fn status(&self) -> u16 {
        self.start_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    }

    /// A request's method.
    pub fn method(&self) -> &str {
        self.start_line.split(' ').next().unwrap_or("")
    }

    /// A request's target.
    pub fn target(&self) -> &str {
        self.start_line.split(' ').nth(1).unwrap_or("")
    }

    fn is_chunked(&self) -> bool {
        self.header("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
    }

    fn content_length(&self) -> Option<u64> {
        self.header("content-length").and_then(|v| v.parse().ok())
    }

    /// How a response body with this head is delimited.
    pub fn response_framing(&self) -> Framing {
        let status = self.status();
        if (100..200).contains(&status) || status == 204 || status == 304 {
            Framing::Length(0)
        } else if self.is_chunked() {
            Framing::Chunked
        } else if let Some(n) = self.content_length() {
            Framing::Length(n)
        } else {
            Framing::Close
        }
    }

    /// How a request body with this head is delimited.
    pub fn request_framing(&self) -> Framing {
        if self.is_chunked() {
            Framing::Chunked
        } else {
            Framing::Length(self.content_length().unwrap_or(0))
        }
    }
}

/// How a body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// Until the connection closes.
    Close,
}

/// A buffered reader over a TCP stream that can hand out heads, lines and raw bytes.
pub struct Wire {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Wire {
    /// Wraps a stream.
    pub fn new(stream: TcpStream) -> Wire {
        Wire {
            stream,
            buf: Vec::new(),
        }
    }

    /// The underlying stream.
    pub fn stream(&mut self) -> &mut TcpStream {
        &mut self.stream
    }

    /// Bytes read but not consumed yet.
    pub fn buffered(&self) -> &[u8] {
        &self.buf
    }

    fn fill(&mut self) -> io::Result<usize> {
        let mut tmp = [0u8; 16 * 1024];
        let n = self.stream.read(&mut tmp)?;
        self.buf.extend_from_slice(&tmp[..n]);
        Ok(n)
    }

    fn take(&mut self, n: usize) -> Vec<u8> {
        let rest = self.buf.split_off(n);
        std::mem::replace(&mut self.buf, rest)
    }

    /// Reads a head up to the blank line. `Ok(None)` when the peer closed before any byte.
    pub fn read_head(&mut self) -> io::Result<Option<Head>> {
        loop {
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                let raw = self.take(end + 4);
                return Head::parse(&raw[..end]).map(Some);
            }
            if self.buf.len() > 1024 * 1024 {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "head too long"));
            }
            if self.fill()? == 0 {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "peer closed inside a head: {:?}",
                        String::from_utf8_lossy(&self.buf)
                    ),
                ));
            }
        }
    }

    fn read_line(&mut self) -> io::Result<Vec<u8>> {
        loop {
            if let Some(end) = find(&self.buf, b"\r\n") {
                let mut line = self.take(end + 2);
                line.truncate(end);
                return Ok(line);
            }
            if self.fill()? == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "eof in line"));
            }
        }
    }

    /// Up to `max` bytes: what is buffered, or one read. Empty only at end of stream.
    fn read_upto(&mut self, max: usize) -> io::Result<Vec<u8>> {
        if self.buf.is_empty() {
            self.fill()?;
        }
        let n = self.buf.len().min(max);
        Ok(self.take(n))
    }

    /// Reads a whole body delimited by `framing`.
    pub fn read_body(&mut self, framing: Framing) -> io::Result<Vec<u8>> {
        let mut reader = BodyReader::new(framing);
        let mut body = Vec::new();
        while let Some(piece) = reader.next_piece(self)? {
            body.extend_from_slice(&piece);
        }
        Ok(body)
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Reads a body piece by piece as it arrives.
pub struct BodyReader {
    framing: Framing,
    remaining: u64,
    chunk_left: u64,
    done: bool,
}

impl BodyReader {
    /// A reader for a body with `framing`.
    pub fn new(framing: Framing) -> BodyReader {
        let remaining = match framing {
            Framing::Length(n) => n,
            _ => 0,
        };
        BodyReader {
            framing,
            remaining,
            chunk_left: 0,
            done: false,
        }
    }

    /// The next piece of body bytes; `None` at the body's end.
    pub fn next_piece(&mut self, wire: &mut Wire) -> io::Result<Option<Vec<u8>>> {
        if self.done {
            return Ok(None);
        }
        match self.framing {
            Framing::Length(_) => {
                if self.remaining == 0 {
                    self.done = true;
                    return Ok(None);
                }
                let piece =
                    wire.read_upto(usize::try_from(self.remaining).unwrap_or(usize::MAX))?;
                if piece.is_empty() {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("eof with {} body bytes to go", self.remaining),
                    ));
                }
                self.remaining -= piece.len() as u64;
                Ok(Some(piece))
            }
            Framing::Close => {
                let piece = wire.read_upto(usize::MAX)?;
                if piece.is_empty() {
                    self.done = true;
                    return Ok(None);
                }
                Ok(Some(piece))
            }
            Framing::Chunked => {
                if self.chunk_left == 0 {
                    let line = wire.read_line()?;
                    let line = String::from_utf8_lossy(&line).into_owned();
                    let size = line.split(';').next().unwrap_or("").trim();
                    let size = u64::from_str_radix(size, 16).map_err(|_| {
                        io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("bad chunk size {line:?}"),
                        )
                    })?;
                    if size == 0 {
                        // Trailers up to the blank line.
                        while !wire.read_line()?.is_empty() {}
                        self.done = true;
                        return Ok(None);
                    }
                    self.chunk_left = size;
                }
                let piece =
                    wire.read_upto(usize::try_from(self.chunk_left).unwrap_or(usize::MAX))?;
                if piece.is_empty() {
                    return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "eof in chunk"));
                }
                self.chunk_left -= piece.len() as u64;
                if self.chunk_left == 0 {
                    let crlf = wire.read_line()?;
                    if !crlf.is_empty() {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            "chunk not followed by CRLF",
                        ));
                    }
                }
                Ok(Some(piece))
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The client

/// A response as the client saw it.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Start line and headers.
    pub head: Head,
    /// The body, de-chunked.
    pub body: Vec<u8>,
}

impl Response {
    /// The first value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.header(name)
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON (panics with the body when it is not).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "status {} body is not JSON ({e}): {:?}",
                self.status,
                self.text()
            )
        })
    }
}

/// A raw HTTP/1.1 client connection.
pub struct Client {
    /// The connection.
    pub wire: Wire,
}

impl Client {
    /// Connects to 127.0.0.1:`port` with [`READ_TIMEOUT`] on reads and writes.
    pub fn connect(port: u16) -> Client {
        let stream = TcpStream::connect(("127.0.0.1", port))
            .unwrap_or_else(|e| panic!("connect to 127.0.0.1:{port}: {e}"));
        stream
            .set_read_timeout(Some(READ_TIMEOUT))
            .expect("timeout");
        stream
            .set_write_timeout(Some(READ_TIMEOUT))
            .expect("timeout");
        stream.set_nodelay(true).expect("nodelay");
        Client {
            wire: Wire::new(stream),
        }
    }

    /// The socket itself, for reads that bypass the response parser (nothing buffered yet).
    pub fn raw(&mut self) -> &mut TcpStream {
        self.wire.stream()
    }

    /// Sets the read timeout.
    pub fn set_read_timeout(&mut self, t: Duration) {
        self.wire
            .stream()
            .set_read_timeout(Some(t))
            .expect("timeout");
    }

    /// Writes raw bytes.
    pub fn send(&mut self, bytes: &[u8]) {
        self.wire
            .stream()
            .write_all(bytes)
            .expect("write to sluice");
        self.wire.stream().flush().expect("flush");
    }

    /// Writes raw bytes; the error (e.g. a reset from a closed connection) is returned.
    pub fn try_send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.wire.stream().write_all(bytes)
    }

    /// Reads one response head.
    pub fn read_head(&mut self) -> Head {
        match self.wire.read_head() {
            Ok(Some(h)) => h,
            Ok(None) => panic!("connection closed before a response head"),
            Err(e) => panic!("reading a response head: {e}"),
        }
    }

    /// Reads one whole response.
    pub fn try_read_response(&mut self) -> io::Result<Response> {
        let head = self.wire.read_head()?.ok_or_else(|| {
            io::Error::new(io::ErrorKind::UnexpectedEof, "closed before a response")
        })?;
        let body = self.wire.read_body(head.response_framing())?;
        Ok(Response {
            status: head.status(),
            head,
            body,
        })
    }

    /// Reads one whole response (panics on error or timeout).
    pub fn read_response(&mut self) -> Response {
        self.try_read_response()
            .unwrap_or_else(|e| panic!("reading a response: {e}"))
    }

    /// Sends one request (with `Host` and, for a body or a POST, `Content-Length`) and reads
    /// its response.
    pub fn request(
        &mut self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Response {
        self.send(&request_bytes(method, target, headers, body));
        self.read_response()
    }

    /// `POST target` with a JSON body.
    pub fn post_json(&mut self, target: &str, body: &Value) -> Response {
        let bytes = serde_json::to_vec(body).expect("json");
        self.request(
            "POST",
            target,
            &[
                ("Content-Type", "application/json"),
                ("Authorization", "Bearer sluice-demo-key"),
            ],
            &bytes,
        )
    }

    /// Sends a request and returns its head and an event reader over its body.
    pub fn stream(
        &mut self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> (Head, Sse<'_>) {
        self.send(&request_bytes(method, target, headers, body));
        let head = self.read_head();
        let reader = BodyReader::new(head.response_framing());
        (
            head,
            Sse {
                client: self,
                body: reader,
                pending: Vec::new(),
            },
        )
    }

    /// Whether the server closes the connection (EOF or reset) within `within` *without
    /// sending anything more*: `true` at EOF or a reset, `false` when `within` passes with
    /// the connection open and silent. Any byte — one already buffered by an earlier read or
    /// one that arrives before the close — panics naming the bytes, so "answered once, then
    /// closed" cannot pass when a second answer (a smuggled request's, say) slips out first,
    /// and "still open" cannot pass on a connection that is talking.
    pub fn closed_within(&mut self, within: Duration) -> bool {
        assert!(
            self.wire.buf.is_empty(),
            "bytes were buffered when the connection should have had nothing more: {:?}",
            String::from_utf8_lossy(&self.wire.buf)
        );
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            self.set_read_timeout(left.max(Duration::from_millis(1)));
            let mut tmp = [0u8; 4096];
            match self.wire.stream().read(&mut tmp) {
                Ok(0) => return true,
                Ok(n) => panic!(
                    "{n} bytes arrived where only the close was due: {:?}",
                    String::from_utf8_lossy(&tmp[..n])
                ),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted
                    ) =>
                {
                    return true
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    continue
                }
                Err(e) => panic!("reading for the close: {e}"),
            }
        }
    }
}

/// Server-sent events read one at a time from a response body.
pub struct Sse<'a> {
    client: &'a mut Client,
    body: BodyReader,
    pending: Vec<u8>,
}

impl Sse<'_> {
    /// The next event's text (its lines, without the blank line that ends it); `None` at the
    /// end of the body.
    pub fn next_event(&mut self) -> Option<String> {
        loop {
            if let Some(end) = find(&self.pending, b"\n\n") {
                let event = self.pending.drain(..end + 2).collect::<Vec<u8>>();
                let text = String::from_utf8_lossy(&event).trim().to_string();
                if text.is_empty() {
                    continue;
                }
                return Some(text);
            }
            match self.body.next_piece(&mut self.client.wire) {
                Ok(Some(piece)) => self
                    .pending
                    .extend(piece.into_iter().filter(|b| *b != b'\r')),
                Ok(None) => {
                    let rest = String::from_utf8_lossy(&self.pending).trim().to_string();
                    self.pending.clear();
                    return (!rest.is_empty()).then_some(rest);
                }
                Err(e) => panic!("reading an event stream: {e}"),
            }
        }
    }

    /// The body's next bytes up to and including the first `end` (an event's line end
    /// twice: `b"\r\r"`, `b"\r\n\r\n"`, `b"\n\n"`), exactly as they came — no CR is
    /// dropped, unlike [`Sse::next_event`] (do not mix the two on one body). At the end of
    /// the body, what is left (if anything).
    pub fn next_raw(&mut self, end: &[u8]) -> Option<Vec<u8>> {
        loop {
            if let Some(at) = find(&self.pending, end) {
                return Some(self.pending.drain(..at + end.len()).collect());
            }
            match self.body.next_piece(&mut self.client.wire) {
                Ok(Some(piece)) => self.pending.extend(piece),
                Ok(None) => {
                    return (!self.pending.is_empty()).then(|| std::mem::take(&mut self.pending))
                }
                Err(e) => panic!("reading an event stream: {e}"),
            }
        }
    }

    /// Every remaining event.
    pub fn collect_rest(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(e) = self.next_event() {
            out.push(e);
            assert!(out.len() < 100_000, "endless event stream");
        }
        out
    }
}

/// The `data:` payload of an event, if it has one.
pub fn event_data(event: &str) -> Option<&str> {
    event
        .lines()
        .find_map(|l| l.strip_prefix("data:"))
        .map(str::trim)
}

/// A request's bytes: start line, `Host`, the given headers, `Content-Length` when there is a
/// body or the method is POST, then the body.
pub fn request_bytes(method: &str, target: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut out = format!("{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n");
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    let has_length = headers.iter().any(|(k, _)| {
        k.eq_ignore_ascii_case("content-length") || k.eq_ignore_ascii_case("transfer-encoding")
    });
    if !has_length && (!body.is_empty() || method == "POST") {
        out.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

// ---------------------------------------------------------------------------------------------
// Request bodies and checks

/// A chat request body naming `model` (none for Azure deployment paths).
pub fn chat_body(model: Option<&str>, stream: bool) -> Value {
    let mut v = serde_json::json!({
        "messages": [
            {"role": "system", "content": "You are a concise assistant."},
            {"role": "user", "content": "Explain a token bucket in one sentence."}
        ],
        "max_tokens": 100,
        "temperature": 0.2
    });
    if let Some(m) = model {
        v["model"] = Value::from(m);
    }
    if stream {
        v["stream"] = Value::from(true);
    }
    v
}

/// Asserts `resp` is a gateway-made error: `status`, JSON content type, `x-request-id`, and
/// the OpenAI shape `{"error":{"message","type","param":null,"code"}}` (with `code` when given).
pub fn assert_openai_error(resp: &Response, status: u16, code: Option<&str>) {
    assert_eq!(resp.status, status, "status; body: {}", resp.text());
    let ct = resp.header("content-type").unwrap_or("");
    assert!(
        ct.starts_with("application/json"),
        "content-type of a {status} error: {ct:?}"
    );
    assert!(
        resp.header("x-request-id").is_some_and(|v| !v.is_empty()),
        "x-request-id missing on a {status} error: {:?}",
        resp.head.headers
    );
    let v = resp.json();
    let err = &v["error"];
    assert!(err.is_object(), "no error object: {v}");
    assert!(
        err["message"].as_str().is_some_and(|m| !m.is_empty()),
        "error.message: {v}"
    );
    assert!(err["type"].is_string(), "error.type: {v}");
    // The spec's shape shows `"param": null`; OpenAI itself names the parameter at fault
    // (e.g. "model"), and the SDKs parse either, so a string is accepted too.
    assert!(
        err.get("param")
            .is_some_and(|p| p.is_null() || p.is_string()),
        "error.param must be null or a string: {v}"
    );
    assert!(err.get("code").is_some(), "error.code missing: {v}");
    if let Some(code) = code {
        assert_eq!(err["code"].as_str(), Some(code), "error.code: {v}");
    }
}

/// Asserts a response has a non-empty `x-request-id`.
pub fn assert_request_id(resp: &Response) {
    assert!(
        resp.header("x-request-id").is_some_and(|v| !v.is_empty()),
        "x-request-id missing: {:?}",
        resp.head.headers
    );
}

// ---------------------------------------------------------------------------------------------
// Scripted upstream servers

/// A request a scripted upstream received.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// Its head.
    pub head: Head,
    /// Its body (de-chunked).
    pub body: Vec<u8>,
    /// Which connection (0-based, in accept order) it came on.
    pub conn: usize,
}

impl Recorded {
    /// The body as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "upstream body not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// What a handler tells the connection loop after answering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum After {
    /// Keep the connection for the next request.
    KeepAlive,
    /// Close it.
    Close,
}

type Handler = dyn Fn(&Recorded, &mut TcpStream) -> After + Send + Sync;

#[derive(Default)]
struct UpstreamState {
    connections: AtomicUsize,
    requests: Mutex<Vec<Recorded>>,
    streams: Mutex<Vec<TcpStream>>,
}

/// A scripted HTTP/1.1 upstream on 127.0.0.1:0, one thread per connection. It records every
/// request (head and body) before calling its handler, which writes the answer.
pub struct Upstream {
    /// Its port.
    pub port: u16,
    state: Arc<UpstreamState>,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

impl Upstream {
    /// Starts an upstream answering with `handler`.
    pub fn start(
        handler: impl Fn(&Recorded, &mut TcpStream) -> After + Send + Sync + 'static,
    ) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind upstream");
        let port = listener.local_addr().expect("addr").port();
        let state = Arc::new(UpstreamState::default());
        let stop = Arc::new(AtomicBool::new(false));
        let handler: Arc<Handler> = Arc::new(handler);
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
                    thread::spawn(move || serve_connection(stream, conn, &state, &*handler));
                }
            })
        };
        Upstream {
            port,
            state,
            stop,
            acceptor: Some(acceptor),
        }
    }

    /// An upstream answering every request `200` with the JSON `body` (content-length framed,
    /// keep-alive).
    pub fn json(body: Value) -> Upstream {
        let bytes = serde_json::to_vec(&body).expect("json");
        Upstream::start(move |_, s| {
            respond(s, 200, &[("content-type", "application/json")], &bytes);
            After::KeepAlive
        })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// Requests received so far.
    pub fn request_count(&self) -> usize {
        self.state.requests.lock().expect("lock").len()
    }

    /// Copies of the requests received so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.state.requests.lock().expect("lock").clone()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for s in self
            .state
            .streams
            .lock()
            .map(|mut v| std::mem::take(&mut *v))
            .unwrap_or_default()
        {
            let _ = s.shutdown(Shutdown::Both);
        }
        // Wake the acceptor so it sees the flag.
        let _ = TcpStream::connect_timeout(
            &SocketAddr::from(([127, 0, 0, 1], self.port)),
            Duration::from_secs(1),
        );
        if let Some(h) = self.acceptor.take() {
            let _ = h.join();
        }
    }
}

fn serve_connection(stream: TcpStream, conn: usize, state: &UpstreamState, handler: &Handler) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let _ = stream.set_write_timeout(Some(READ_TIMEOUT));
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut wire = Wire::new(stream);
    loop {
        let head = match wire.read_head() {
            Ok(Some(h)) => h,
            _ => return,
        };
        let body = match wire.read_body(head.request_framing()) {
            Ok(b) => b,
            Err(_) => return,
        };
        let rec = Recorded { head, body, conn };
        state.requests.lock().expect("lock").push(rec.clone());
        let after = handler(&rec, &mut writer);
        let _ = writer.flush();
        if after == After::Close {
            let _ = writer.shutdown(Shutdown::Both);
            return;
        }
    }
}

/// Writes a whole response with `content-length`.
pub fn respond(stream: &mut TcpStream, status: u16, headers: &[(&str, &str)], body: &[u8]) {
    let mut out = format!("HTTP/1.1 {status} {}\r\n", reason(status));
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str(&format!("content-length: {}\r\n\r\n", body.len()));
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(body);
    let _ = stream.write_all(&bytes);
}

/// Writes one chunk of a chunked body (an empty `data` ends the body).
pub fn write_chunk(stream: &mut TcpStream, data: &[u8]) -> io::Result<()> {
    let mut out = format!("{:x}\r\n", data.len()).into_bytes();
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
    stream.write_all(&out)?;
    stream.flush()
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

/// A chat completion answer as an OpenAI-compatible upstream sends it.
pub fn upstream_chat_answer(model: &str) -> Value {
    serde_json::json!({
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": 1_732_612_345,
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                     "logprobs": null, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}
    })
}

/// One SSE chat chunk event (`data: {...}\n\n`) carrying `content`.
pub fn sse_chunk(content: &str) -> String {
    let v = serde_json::json!({
        "id": "chatcmpl-stream", "object": "chat.completion.chunk", "created": 1_732_612_400,
        "model": "upstream-model",
        "choices": [{"index": 0, "delta": {"content": content}, "logprobs": null, "finish_reason": null}]
    });
    format!("data: {v}\n\n")
}

// ---------------------------------------------------------------------------------------------
// Configs

/// Backends and deployments served by the built-in mock: `gpt-4o` (chat and completions,
/// 16 completion tokens, model `gpt-4o-mock` when the request names none) and
/// `text-embedding-3-small` (8 dimensions), both on backend `mock-a`.
pub const MOCK_BODY: &str = r#"
[[backend]]
name = "mock-a"
kind = "mock"
model = "gpt-4o-mock"
completion_tokens = 16
embedding_dimensions = 8

[[deployment]]
name = "gpt-4o"
backends = [{ backend = "mock-a" }]

[[deployment]]
name = "text-embedding-3-small"
backends = [{ backend = "mock-a" }]
"#;

/// Completion tokens the mock in [`MOCK_BODY`] answers with.
pub const MOCK_COMPLETION_TOKENS: u64 = 16;

/// A body with one `openai`-kind backend `up` at `url` serving deployment `deployment`.
pub fn openai_backend_body(url: &str, deployment: &str) -> String {
    format!(
        r#"
[[backend]]
name = "up"
kind = "openai"
url = "{url}"

[[deployment]]
name = "{deployment}"
backends = [{{ backend = "up" }}]
"#
    )
}
