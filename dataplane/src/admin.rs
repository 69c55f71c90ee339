//! The admin listener (`[admin] listen`, default `127.0.0.1:9090`): `/metrics`, `/healthz`,
//! `/readyz` and `/config`, served by one plain thread — never on the public listeners or
//! the workers, so a scrape costs the data plane nothing but the metrics merge.
//!
//! | path | answer |
//! | --- | --- |
//! | `GET /metrics` | 200, OpenMetrics text, which Prometheus reads ([`crate::metrics::encode`]) |
//! | `GET /healthz` | 200 `ok`: the process is alive |
//! | `GET /readyz` | 200 `ready` once the config is loaded and every listener bound; 503 `starting` before, 503 `draining` once shutdown began |
//! | `GET /config` | 200, JSON `{"version", "source", "generation", "loaded_at"}` of the config in force (`version`: `sha256:` and the file's hex SHA-256; `loaded_at`: RFC 3339) |
//!
//! Anything else is 404 (405 for another method than GET or HEAD). Each connection answers
//! one request and closes (HTTP/1.1, RFC 9112 §9.6 `Connection: close`); a client gets 5 s
//! in all to send its head. Connections are served on their own threads, at most 16 at once;
//! when all 16 are taken, the oldest one still waiting for its head is closed to make room
//! (when none is, the new connection is closed), so idle or slow clients cannot hold
//! `/readyz` up: a probe sends its head at once and is served.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::server::Shared;

/// How long a client has to send its request head, and to read the answer.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest request head read.
const MAX_HEAD: usize = 8 * 1024;
/// Connections served at once; more are closed as they come.
const MAX_CONNECTIONS: usize = 16;

/// The running admin listener.
pub struct Admin {
    /// The address bound (a port 0 resolved).
    pub addr: SocketAddr,
    state: Arc<State>,
}

struct State {
    shared: Arc<Shared>,
    ready: AtomicBool,
    /// Connections being served.
    open: Mutex<Vec<Slot>>,
}

/// A connection being served.
struct Slot {
    id: u64,
    opened: Instant,
    /// A handle to close it by.
    stream: TcpStream,
    /// Still reading its head (may be closed to make room).
    reading: Arc<AtomicBool>,
}

impl State {
    fn slots(&self) -> std::sync::MutexGuard<'_, Vec<Slot>> {
        self.open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes a slot for `stream` as `id`: closes the oldest connection still reading its head
    /// when all are taken; `None` when every one is past its head.
    fn admit(&self, id: u64, stream: &TcpStream) -> Option<Arc<AtomicBool>> {
        let handle = stream.try_clone().ok()?;
        let mut slots = self.slots();
        if slots.len() >= MAX_CONNECTIONS {
            let oldest = slots
                .iter()
                .enumerate()
                .filter(|(_, s)| s.reading.load(Ordering::Acquire))
                .min_by_key(|(_, s)| s.opened)
                .map(|(i, _)| i)?;
            let evicted = slots.swap_remove(oldest);
            let _ = evicted.stream.shutdown(std::net::Shutdown::Both);
        }
        let reading = Arc::new(AtomicBool::new(true));
        slots.push(Slot {
            id,
            opened: Instant::now(),
            stream: handle,
            reading: Arc::clone(&reading),
        });
        Some(reading)
    }

    fn release(&self, id: u64) {
        self.slots().retain(|s| s.id != id);
    }
}

impl Admin {
    /// Binds `addr` and starts serving `shared` on a thread of its own. `/readyz` answers
    /// 503 until [`Admin::set_ready`].
    pub fn start(addr: SocketAddr, shared: Arc<Shared>) -> io::Result<Admin> {
        let listener = TcpListener::bind(addr).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "admin listener {addr} ([admin] listen, default 127.0.0.1:9090): {e}; is another Sluice running? Give each its own [admin] listen, or \"\" for none"
                ),
            )
        })?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            shared,
            ready: AtomicBool::new(false),
            open: Mutex::new(Vec::with_capacity(MAX_CONNECTIONS)),
        });
        let serving = Arc::clone(&state);
        std::thread::Builder::new()
            .name("sluice-admin".into())
            .spawn(move || accept(&listener, &serving))?;
        if !addr.ip().to_canonical().is_loopback() {
            tracing::warn!(%addr, "the admin listener is not on a loopback address: /metrics and /config are readable by anyone who can reach it");
        }
        Ok(Admin { addr, state })
    }

    /// Every listener is bound: `/readyz` answers 200 (until shutdown begins).
    pub fn set_ready(&self) {
        self.state.ready.store(true, Ordering::Release);
    }
}

/// Serves each connection on a thread of its own, at most [`MAX_CONNECTIONS`] at once (see
/// [`State::admit`]): a slow or idle client holds one thread, never the listener.
fn accept(listener: &TcpListener, state: &Arc<State>) {
    for (id, conn) in (0u64..).zip(listener.incoming()) {
        let stream = match conn {
            Ok(stream) => stream,
            Err(e) => {
                tracing::debug!(error = %e, "admin accept failed");
                continue;
            }
        };
        let Some(reading) = state.admit(id, &stream) else {
            drop(stream);
            continue;
        };
        let serving = Arc::clone(state);
        let spawned = std::thread::Builder::new()
            .name("sluice-admin-conn".into())
            .spawn(move || {
                if let Err(e) = serve(&serving, stream, &reading) {
                    tracing::debug!(error = %e, "admin connection failed");
                }
                serving.release(id);
            });
        if spawned.is_err() {
            state.release(id);
        }
    }
}

/// Reads one request head (within [`IO_TIMEOUT`] in all) and answers it; `reading` is
/// cleared once the head is in.
fn serve(state: &State, mut stream: TcpStream, reading: &AtomicBool) -> io::Result<()> {
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let deadline = Instant::now() + IO_TIMEOUT;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let (method, path) = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        stream.set_read_timeout(Some(left))?;
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(_)) => {
                reading.store(false, Ordering::Release);
                break (
                    req.method.unwrap_or("").to_owned(),
                    req.path.unwrap_or("").to_owned(),
                );
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => continue,
            _ => return respond(&mut stream, 400, "text/plain", b"bad request\n", false),
        }
    };
    let head_only = method == "HEAD";
    if method != "GET" && !head_only {
        return respond(&mut stream, 405, "text/plain", b"GET or HEAD only\n", false);
    }
    let path = path.split('?').next().unwrap_or("");
    match path {
        "/metrics" => {
            let loaded = state.shared.snapshot();
            let text = crate::metrics::encode::render(
                &state.shared.metrics,
                &loaded,
                crate::clock::now_millis(),
            );
            // The encoder writes OpenMetrics text (families `x` with samples `x_total`,
            // `# EOF`): said so, whatever the client asked (Prometheus reads it).
            let kind = "application/openmetrics-text; version=1.0.0; charset=utf-8";
            respond(&mut stream, 200, kind, text.as_bytes(), head_only)
        }
        "/healthz" => respond(&mut stream, 200, "text/plain", b"ok\n", head_only),
        "/readyz" => {
            let (status, body): (u16, &[u8]) = if state.shared.is_shutting_down() {
                (503, b"draining\n")
            } else if state.ready.load(Ordering::Acquire) {
                (200, b"ready\n")
            } else {
                (503, b"starting\n")
            };
            respond(&mut stream, status, "text/plain", body, head_only)
        }
        "/config" => {
            let loaded = state.shared.snapshot();
            let body = serde_json::json!({
                "version": loaded.version,
                "control_plane_version": loaded.control_version,
                "source": std::fs::canonicalize(&loaded.source)
                    .unwrap_or_else(|_| loaded.source.clone())
                    .display()
                    .to_string(),
                "generation": state.shared.generation(),
                "loaded_at": humantime::format_rfc3339_millis(loaded.loaded_at).to_string(),
            });
            let mut text = body.to_string();
            text.push('\n');
            respond(
                &mut stream,
                200,
                "application/json",
                text.as_bytes(),
                head_only,
            )
        }
        _ => respond(&mut stream, 404, "text/plain", b"not found\n", head_only),
    }
}

fn respond(
    stream: &mut TcpStream,
    status: u16,
    content_type: &str,
    body: &[u8],
    head_only: bool,
) -> io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Service Unavailable",
    };
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\ncache-control: no-store\r\nconnection: close\r\n",
        body.len()
    );
    if status == 405 {
        out.push_str("allow: GET, HEAD\r\n");
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    if !head_only {
        bytes.extend_from_slice(body);
    }
    stream.write_all(&bytes)?;
    stream.flush()
}
