//! Active health checks (config `health_check = { … }` on a backend; see
//! [`HealthCheck`]): one side thread per checked backend sends `GET {path}` every
//! `interval` — plain or over the backend's own TLS settings, with its own credential — and
//! marks its shared [`BackendHealth`] down after `unhealthy_threshold` failed probes in a
//! row, up again after `healthy_threshold` good ones. A backend marked down is in no pool
//! (selection skips it like an ejected one). The threads belong to the config they were
//! started for: a reload starts the new config's and the old ones stop when it is dropped.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use crate::health::BackendHealth;
use crate::snapshot::{Backend, BackendKind, HealthCheck, HttpUpstream, Snapshot};

/// The running checks of one config. Dropping it stops its threads (each at its next
/// wake-up; a probe in progress ends within its timeout).
#[derive(Debug)]
pub struct HealthCheckers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
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
        Ok((!threads.is_empty()).then_some(Self { stop, threads }))
    }
}

impl Drop for HealthCheckers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        for thread in &self.threads {
            thread.thread().unpark();
        }
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
            match self.probe() {
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
        stream
            .set_read_timeout(Some(timeout))
            .and_then(|()| stream.set_write_timeout(Some(timeout)))
            .map_err(|e| e.to_string())?;
        let mut request = format!(
            "GET {}{} HTTP/1.1\r\nhost: {}\r\nuser-agent: sluice-health-check\r\nconnection: close\r\n",
            self.upstream.base_path, self.check.path, self.upstream.host_header
        )
        .into_bytes();
        request.extend_from_slice(&self.credential);
        request.extend_from_slice(b"\r\n");
        match &self.upstream.tls {
            None => status_over(stream, &request, deadline),
            Some(tls) => {
                let conn =
                    rustls::ClientConnection::new(Arc::clone(&tls.config), tls.server_name.clone())
                        .map_err(|e| format!("tls: {e}"))?;
                status_over(rustls::StreamOwned::new(conn, stream), &request, deadline)
            }
        }
    }
}

/// Writes `request` on `stream` and reads the status of the answer's status line
/// (`HTTP/1.x NNN …`), within `deadline`. Reads at most 1 KiB.
fn status_over<S: Read + Write>(
    mut stream: S,
    request: &[u8],
    deadline: Instant,
) -> Result<u16, String> {
    stream
        .write_all(request)
        .map_err(|e| format!("send: {e}"))?;
    let mut line = Vec::with_capacity(64);
    let mut chunk = [0u8; 256];
    while !line.contains(&b'\n') {
        if Instant::now() >= deadline {
            return Err("no status line within the timeout".to_owned());
        }
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

    #[test]
    fn status_lines() {
        assert_eq!(parse_status(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(parse_status(b"HTTP/1.0 503 Busy\r\n"), Some(503));
        assert_eq!(parse_status(b"HTTP/1.1 20 OK\r\n"), None);
        assert_eq!(parse_status(b"HTTP/2 200\r\n"), None);
        assert_eq!(parse_status(b"SSH-2.0\r\n"), None);
    }
}
