//! Per-worker keep-alive pools of upstream connections, keyed by backend address.
//!
//! Owned by one worker (no atomics, no locks). Keyed by address rather than backend index
//! so pooled connections survive a config reload that keeps the backend where it was.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use monoio::net::TcpStream;

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
    /// Takes the most recently used idle connection to `addr`, if one is fresh enough.
    pub fn take(&self, addr: SocketAddr) -> Option<TcpStream> {
        let mut idle = self.idle.borrow_mut();
        let list = idle.get_mut(&addr)?;
        let now = Instant::now();
        while let Some(conn) = list.pop() {
            if now.duration_since(conn.since) < MAX_IDLE_AGE {
                return Some(conn.stream);
            }
        }
        None
    }

    /// Returns a connection whose last exchange ended cleanly.
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
