//! Scripted backends: [`Upstream`] is an HTTP/1.1 server on 127.0.0.1 port 0 that records
//! each request and lets a handler write the answer byte for byte ([`respond`],
//! [`write_chunk`]); [`closed_port`] is a backend address that refuses connections.

use std::io::{self, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use serde_json::Value;

use super::wire::{Head, Wire, READ_TIMEOUT};

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
        stop_server(
            &self.stop,
            &self.state.streams,
            self.port,
            self.acceptor.take(),
        );
    }
}

/// Stops a scripted server on 127.0.0.1 `port`: raises `stop`, shuts its open `streams`,
/// wakes its acceptor with a connection so it sees the flag, and joins it.
pub(super) fn stop_server(
    stop: &AtomicBool,
    streams: &Mutex<Vec<TcpStream>>,
    port: u16,
    acceptor: Option<JoinHandle<()>>,
) {
    stop.store(true, Ordering::SeqCst);
    for s in streams
        .lock()
        .map(|mut v| std::mem::take(&mut *v))
        .unwrap_or_default()
    {
        let _ = s.shutdown(Shutdown::Both);
    }
    let _ = TcpStream::connect_timeout(
        &SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(1),
    );
    if let Some(h) = acceptor {
        let _ = h.join();
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
