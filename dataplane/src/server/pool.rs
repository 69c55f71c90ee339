//! Per-worker keep-alive pools of upstream connections, keyed by backend address.
//!
//! Owned by one worker (no atomics, no locks). Keyed by address rather than backend index
//! so pooled connections survive a config reload that keeps the backend where it was.
//!
//! A connection is a shared channel between successive clients, possibly of different
//! tenants, so reuse needs proof that it is clean. The relay puts a connection back only when
//! the answer ended exactly at its message boundary with nothing more buffered; [`take`]
//! then checks, just before reuse, that nothing arrived since (no late bytes, no end of
//! stream, no error). A backend that writes an unsolicited second response after the first
//! (RFC 9112 §9.3 gives such bytes no owner) therefore never reaches the next client: its
//! connection is closed instead.
//!
//! [`take`]: UpstreamPools::take

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use monoio::net::TcpStream;
use rustix::io::Errno;
use rustix::net::RecvFlags;

use super::io::fd_of;

/// Idle connections kept per backend address.
const MAX_IDLE_PER_ADDR: usize = 64;
/// An idle connection older than this is closed rather than reused (servers commonly close
/// idle keep-alive connections after 60 s or more).
const MAX_IDLE_AGE: Duration = Duration::from_secs(50);

struct Idle {
    stream: TcpStream,
    since: Instant,
}

/// One worker's upstream connection pools.
#[derive(Default)]
pub struct UpstreamPools {
    idle: RefCell<HashMap<SocketAddr, Vec<Idle>>>,
}

impl UpstreamPools {
    /// Takes the most recently used idle connection to `addr` that is younger than 50 s and
    /// still quiet (see [`is_quiet`]); every connection passed over on the way is closed.
    /// `None` when no such connection is left: the caller connects afresh.
    ///
    /// Costs one non-blocking `recv` syscall per connection examined (normally one).
    pub fn take(&self, addr: SocketAddr) -> Option<TcpStream> {
        let mut idle = self.idle.borrow_mut();
        let list = idle.get_mut(&addr)?;
        let now = Instant::now();
        while let Some(conn) = list.pop() {
            if now.duration_since(conn.since) < MAX_IDLE_AGE && is_quiet(&conn.stream) {
                return Some(conn.stream);
            }
            tracing::debug!(%addr, "idle upstream connection not clean; closing it");
        }
        None
    }

    /// Returns a connection whose last answer ended exactly at its message boundary with
    /// nothing read beyond it (the caller's promise; [`take`](Self::take) checks the rest).
    pub fn put(&self, addr: SocketAddr, stream: TcpStream) {
        let mut idle = self.idle.borrow_mut();
        let list = idle.entry(addr).or_default();
        if list.len() >= MAX_IDLE_PER_ADDR {
            list.remove(0);
        }
        list.push(Idle {
            stream,
            since: Instant::now(),
        });
    }

    /// Closes every idle connection (at shutdown).
    pub fn clear(&self) {
        self.idle.borrow_mut().clear();
    }
}

/// Whether an idle connection has nothing to say: a one-byte `recv(MSG_PEEK | MSG_DONTWAIT)`
/// finds no data (`EAGAIN`). Data (late or unsolicited bytes), end of stream (the backend
/// closed it) or any error (a reset) all mean it must not carry another request.
///
/// The peek consumes nothing and does not block, whatever mode the socket is in, so it is
/// the same on monoio's io_uring and epoll drivers; no operation is in flight on an idle
/// connection, so it cannot race one.
fn is_quiet(stream: &TcpStream) -> bool {
    let mut byte = [0u8; 1];
    matches!(
        rustix::net::recv(
            fd_of(stream),
            &mut byte,
            RecvFlags::PEEK | RecvFlags::DONTWAIT
        ),
        Err(Errno::AGAIN)
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use std::io::Write as _;
    use std::net::{Shutdown, TcpListener};

    /// A monoio connection to a std listener, and the std side of it.
    async fn pair() -> (TcpStream, std::net::TcpStream, SocketAddr) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let client = TcpStream::connect_addr(addr).await.unwrap();
        let (server, _) = listener.accept().unwrap();
        (client, server, addr)
    }

    /// Lets bytes or a FIN written on the std side reach the monoio side's socket.
    fn settle() {
        std::thread::sleep(Duration::from_millis(50));
    }

    #[monoio::test_all]
    async fn a_quiet_connection_is_reused() {
        let pools = UpstreamPools::default();
        let (client, _server, addr) = pair().await;
        pools.put(addr, client);
        settle();
        assert!(pools.take(addr).is_some());
        assert!(pools.take(addr).is_none(), "taken once");
    }

    #[monoio::test_all]
    async fn late_bytes_discard_the_connection() {
        let pools = UpstreamPools::default();
        let (client, mut server, addr) = pair().await;
        pools.put(addr, client);
        server
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nPOISONED")
            .unwrap();
        settle();
        assert!(pools.take(addr).is_none());
    }

    #[monoio::test_all]
    async fn end_of_stream_or_reset_discards_the_connection() {
        let pools = UpstreamPools::default();
        let (client, server, addr) = pair().await;
        pools.put(addr, client);
        server.shutdown(Shutdown::Both).unwrap();
        drop(server);
        settle();
        assert!(pools.take(addr).is_none());
    }

    #[monoio::test_all]
    async fn a_dirty_connection_gives_way_to_the_next_quiet_one() {
        let pools = UpstreamPools::default();
        let (quiet, _keep, addr) = pair().await;
        // Both connections go to the same listener address key; the dirty one is newer.
        let (dirty, mut dirty_server, _) = pair().await;
        pools.put(addr, quiet);
        pools.put(addr, dirty);
        dirty_server.write_all(b"x").unwrap();
        settle();
        assert!(pools.take(addr).is_some(), "the older, quiet one");
        assert!(pools.take(addr).is_none());
    }
}
