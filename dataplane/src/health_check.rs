//! Active health checks (config `health_check = { … }` on a backend; see
//! [`HealthCheck`]): one side thread per checked backend sends `GET {path}` every
//! `interval` — plain or over the backend's own TLS settings, with its own credential — and
//! marks its shared [`BackendHealth`] down after `unhealthy_threshold` failed probes in a
//! row, up again after `healthy_threshold` good ones. A backend marked down is in no pool
//! (selection skips it like an ejected one). The threads belong to the config they were
//! started for: a reload starts the new config's and stops (and joins) the old ones when it
//! swaps the new config in. Every probe — connect, TLS handshake, request, status line — is
//! bounded by its `timeout` as a whole, however slowly a backend drips its bytes.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::health::BackendHealth;
use crate::snapshot::{Backend, BackendKind, HealthCheck, HttpUpstream, Snapshot};

/// The running checks of one config. [`stop`](Self::stop) (or dropping it) stops its
/// threads.
#[derive(Debug)]
pub struct HealthCheckers {
    stop: Arc<AtomicBool>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl HealthCheckers {
    /// Starts a thread for every backend of `snapshot` that has a health check; `None` when
    /// none has.
    pub fn start(snapshot: &Snapshot) -> std::io::Result<Option<Self>> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for backend in &snapshot.backends {
            let Some(probe) = Probe::of(backend) else {
                continue;
            };
            let stop = Arc::clone(&stop);
            threads.push(
                std::thread::Builder::new()
                    .name(format!("sluice-health-{}", backend.name))
                    .spawn(move || probe.run(&stop))?,
            );
        }
        Ok((!threads.is_empty()).then(|| Self {
            stop,
            threads: Mutex::new(threads),
        }))
    }

    /// Stops the threads and waits for them: at once for a thread between probes, within
    /// its probe's `timeout` for one probing. A stopped thread records no more verdicts.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        let threads = match self.threads.lock() {
            Ok(mut threads) => std::mem::take(&mut *threads),
            Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
        };
        for thread in &threads {
            thread.thread().unpark();
        }
        for thread in threads {
            let _ = thread.join();
        }
    }
}

impl Drop for HealthCheckers {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What one checker needs of its backend (owned: the thread outlives no config it reads).
struct Probe {
    name: String,
    upstream: HttpUpstream,
    /// The credential header line, `name: value\r\n` (never logged).
    credential: Vec<u8>,
    check: HealthCheck,
    health: Arc<BackendHealth>,
}

impl Probe {
    fn of(backend: &Backend) -> Option<Probe> {
        let check = backend.health_check.clone()?;
        let (upstream, credential) = match &backend.kind {
            BackendKind::Mock(_) => return None,
            BackendKind::Azure(a) => (
                a.upstream.clone(),
                a.api_key
                    .as_ref()
                    .map(|k| format!("api-key: {}\r\n", k.expose())),
            ),
            BackendKind::OpenAi(o) => (
                o.upstream.clone(),
                o.api_key
                    .as_ref()
                    .map(|k| format!("authorization: Bearer {}\r\n", k.expose())),
            ),
        };
        Some(Probe {
            name: backend.name.clone(),
            upstream,
            credential: credential.map(String::into_bytes).unwrap_or_default(),
            check,
            health: Arc::clone(&backend.health),
        })
    }

    fn run(&self, stop: &AtomicBool) {
        let (mut failures, mut successes) = (0u32, 0u32);
        while !stop.load(Ordering::Acquire) {
            let outcome = self.probe();
            // A config swapped out while this probe ran has no say any more.
            if stop.load(Ordering::Acquire) {
                break;
            }
            match outcome {
                Ok(status) if status == self.check.expected_status => {
                    failures = 0;
                    successes = successes.saturating_add(1);
                    if successes >= self.check.healthy_threshold && self.health.set_checked_up(true)
                    {
                        tracing::info!(backend = %self.name, "health check passed; backend is back in its pools");
                    }
                }
                outcome => {
                    successes = 0;
                    failures = failures.saturating_add(1);
                    let why = match outcome {
                        Ok(status) => {
                            format!("answered {status}, not {}", self.check.expected_status)
                        }
                        Err(e) => e,
                    };
                    tracing::debug!(backend = %self.name, why, "health check failed");
                    if failures >= self.check.unhealthy_threshold
                        && self.health.set_checked_up(false)
                    {
                        tracing::warn!(backend = %self.name, why, failures, "health check failed; backend taken out of its pools");
                    }
                }
            }
            let deadline = Instant::now() + self.check.interval;
            while !stop.load(Ordering::Acquire) {
                let now = Instant::now();
                if now >= deadline {
                    break;
                }
                std::thread::park_timeout(deadline - now);
            }
        }
    }

    /// One probe: the status of the answer to `GET {base path}{path}`, or why there is none.
    fn probe(&self) -> Result<u16, String> {
        let timeout = self.check.timeout;
        let deadline = Instant::now() + timeout;
        let stream = TcpStream::connect_timeout(&self.upstream.addr, timeout)
            .map_err(|e| format!("connect: {e}"))?;
        let stream = Bounded { stream, deadline };
        let mut request = format!(
            "GET {}{} HTTP/1.1\r\nhost: {}\r\nuser-agent: sluice-health-check\r\nconnection: close\r\n",
            self.upstream.base_path, self.check.path, self.upstream.host_header
        )
        .into_bytes();
        request.extend_from_slice(&self.credential);
        request.extend_from_slice(b"\r\n");
        match &self.upstream.tls {
            None => status_over(stream, &request),
            Some(tls) => {
                let conn =
                    rustls::ClientConnection::new(Arc::clone(&tls.config), tls.server_name.clone())
                        .map_err(|e| format!("tls: {e}"))?;
                status_over(rustls::StreamOwned::new(conn, stream), &request)
            }
        }
    }
}

/// A socket whose every read and write ends by `deadline`: each waits at most the time left,
/// and none starts after it (a backend dripping a byte at a time cannot stretch a probe).
struct Bounded {
    stream: TcpStream,
    deadline: Instant,
}

impl Bounded {
    /// The time left, or a `TimedOut` error when there is none.
    fn left(&self) -> std::io::Result<Duration> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            Err(std::io::ErrorKind::TimedOut.into())
        } else {
            Ok(left)
        }
    }
}

impl Read for Bounded {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.stream.set_read_timeout(Some(self.left()?))?;
        self.stream.read(buf)
    }
}

impl Write for Bounded {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.stream.set_write_timeout(Some(self.left()?))?;
        self.stream.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.stream.flush()
    }
}

/// Writes `request` on `stream` and reads the status of the answer's status line
/// (`HTTP/1.x NNN …`). Reads at most 1 KiB.
fn status_over<S: Read + Write>(mut stream: S, request: &[u8]) -> Result<u16, String> {
    stream
        .write_all(request)
        .map_err(|e| format!("send: {e}"))?;
    let mut line = Vec::with_capacity(64);
    let mut chunk = [0u8; 256];
    while !line.contains(&b'\n') {
        let n = stream.read(&mut chunk).map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("closed before a status line".to_owned());
        }
        line.extend_from_slice(&chunk[..n]);
        if line.len() > 1024 {
            return Err("status line too long".to_owned());
        }
    }
    parse_status(&line).ok_or_else(|| "not an HTTP/1.x status line".to_owned())
}

/// The status code of `HTTP/1.x NNN …`.
fn parse_status(line: &[u8]) -> Option<u16> {
    let rest = line.strip_prefix(b"HTTP/1.")?;
    let code = rest.get(2..5)?;
    (rest.get(1) == Some(&b' ') && code.iter().all(u8::is_ascii_digit))
        .then(|| code.iter().fold(0u16, |n, d| n * 10 + u16::from(d - b'0')))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A backend dripping a byte every 100 ms cannot stretch a probe past its deadline.
    #[test]
    fn a_dripping_backend_cannot_stretch_a_probe() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            for _ in 0..30 {
                if conn.write_all(b"H").is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let started = Instant::now();
        let stream = Bounded {
            stream: TcpStream::connect(addr).unwrap(),
            deadline: started + Duration::from_millis(400),
        };
        assert!(status_over(stream, b"GET / HTTP/1.1\r\n\r\n").is_err());
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        let _ = server.join();
    }

    #[test]
    fn status_lines() {
        assert_eq!(parse_status(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(parse_status(b"HTTP/1.0 503 Busy\r\n"), Some(503));
        assert_eq!(parse_status(b"HTTP/1.1 20 OK\r\n"), None);
        assert_eq!(parse_status(b"HTTP/2 200\r\n"), None);
        assert_eq!(parse_status(b"SSH-2.0\r\n"), None);
    }
}
