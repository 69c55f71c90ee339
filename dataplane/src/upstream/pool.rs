//! Per-worker keep-alive pools of upstream connections, keyed by backend address.
//!
//! Owned by one worker (no atomics, no locks). Keyed by address rather than backend index
//! so pooled connections survive a config reload that keeps the backend where it was; by
//! channel ([`Channel`]: plain TCP, or TLS under one server name and trust), so a plain and
//! a TLS connection, or TLS connections made for two names, never stand in for each other; and by
//! [`Tenant`]: a connection only ever carries one tenant's requests (one subscription's, or
//! without credentials one client address's), so whatever a backend does to a connection —
//! even desynchronising it — cannot hand one tenant's answer to another.
//!
//! A connection is a shared channel between successive clients, possibly of different
//! tenants, so reuse needs proof that it is clean. The relay puts a connection back only when
//! the answer ended exactly at its message boundary with nothing more buffered; [`take`]
//! then checks, just before reuse, that nothing arrived since (no late bytes, no end of
//! stream, no error). A backend that writes an unsolicited second response after the first
//! (RFC 9112 §9.3 gives such bytes no owner) therefore never reaches the next client: its
//! connection is closed instead.
//!
//! The check cannot see bytes still on their way: a backend that writes an unsolicited
//! response just as its connection is taken again has it read as the next request's answer
//! (HTTP/1.1 gives answers no request id). So a backend caught sending what it was not asked
//! for — late bytes found before reuse, or bytes past an answer's end — is distrusted: this
//! worker pools no connection to it for [`DISTRUST_FOR`], and every request goes on a new
//! connection of its own, where nothing of another exchange can arrive.
//!
//! On a TLS connection the check sees TLS records, not what they carry: a backend's
//! `close_notify` before it closes an idle connection, or a late session ticket, look like
//! late bytes. Such a connection is closed, but its backend is not distrusted for it (every
//! well-behaved TLS server would be). Bytes the TLS layer already read from the socket are
//! invisible to the check; the tenant key bounds what they could reach, as with bytes still on
//! their way.
//!
//! [`take`]: UpstreamPools::take

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use super::stream::UpstreamStream;
use crate::socket::PeerState;

/// Idle connections kept per backend address.
const MAX_IDLE_PER_ADDR: usize = 64;
/// An idle connection older than this is closed rather than reused (servers commonly close
/// idle keep-alive connections after 60 s or more).
const MAX_IDLE_AGE: Duration = Duration::from_secs(50);

/// Whose requests may share an upstream connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tenant {
    /// An authenticated caller's subscription, by a hash of its name (stable across reloads,
    /// which may renumber subscriptions).
    Subscription(u64),
    /// A caller without credentials (auth off), by its address.
    Address(IpAddr),
}

impl Tenant {
    /// The tenant of subscription `name`.
    pub fn subscription(name: &str) -> Tenant {
        let mut h = std::hash::DefaultHasher::new();
        name.hash(&mut h);
        Tenant::Subscription(h.finish())
    }
}

/// Which kind of connection: plain TCP, or TLS by [`crate::tls::client::UpstreamTls::pool_key`]
/// (a hash of the server name and the trust it was verified under).
pub type Channel = Option<u64>;

/// How long a backend caught sending unsolicited bytes gets no pooled connections.
pub const DISTRUST_FOR: Duration = Duration::from_secs(600);

struct Idle {
    stream: UpstreamStream,
    since: Instant,
}

/// One worker's upstream connection pools.
#[derive(Default)]
pub struct UpstreamPools {
    idle: RefCell<HashMap<(SocketAddr, Tenant, Channel), Vec<Idle>>>,
    /// Backends caught sending unsolicited bytes, and until when they get no pooling.
    distrusted: RefCell<HashMap<SocketAddr, Instant>>,
}

impl UpstreamPools {
    /// Takes the most recently used idle connection to `addr` on `channel` that is younger
    /// than 50 s and still quiet (see [`UpstreamStream::peer_state`]); every connection
    /// passed over on the way is closed. Late bytes on a plain one distrust the backend
    /// ([`distrust`](Self::distrust)): `None` then; on a TLS one they close it only (see the
    /// module docs). `None` when no such connection is left: the caller connects afresh.
    ///
    /// Costs one non-blocking `recv` syscall per connection examined (normally one).
    pub fn take(
        &self,
        addr: SocketAddr,
        tenant: Tenant,
        channel: Channel,
    ) -> Option<UpstreamStream> {
        let mut idle = self.idle.borrow_mut();
        let list = idle.get_mut(&(addr, tenant, channel))?;
        let now = Instant::now();
        while let Some(conn) = list.pop() {
            if now.duration_since(conn.since) >= MAX_IDLE_AGE {
                continue;
            }
            // No operation is in flight on an idle connection, so the peek races nothing.
            match conn.stream.peer_state() {
                PeerState::Quiet => return Some(conn.stream),
                PeerState::Closed => {
                    tracing::debug!(%addr, "idle upstream connection closed by the backend");
                }
                PeerState::Data if conn.stream.is_tls() => {
                    tracing::debug!(%addr, "idle TLS connection has unread records; closing it");
                }
                // Late or unsolicited bytes: no request asked for them.
                PeerState::Data => {
                    list.clear();
                    drop(idle);
                    self.distrust(addr);
                    return None;
                }
            }
        }
        None
    }

    /// Marks `addr` as a backend that sent bytes nobody asked for: its idle connections are
    /// closed and none is pooled for [`DISTRUST_FOR`].
    pub fn distrust(&self, addr: SocketAddr) {
        tracing::warn!(%addr, "backend sent bytes it was not asked for; not reusing its connections for 10 minutes");
        self.idle.borrow_mut().retain(|(a, _, _), _| *a != addr);
        self.distrusted
            .borrow_mut()
            .insert(addr, Instant::now() + DISTRUST_FOR);
    }

    /// Whether `addr` is distrusted now (forgetting a distrust that has run out).
    fn is_distrusted(&self, addr: SocketAddr) -> bool {
        let mut distrusted = self.distrusted.borrow_mut();
        match distrusted.get(&addr) {
            Some(&until) if Instant::now() < until => true,
            Some(_) => {
                distrusted.remove(&addr);
                false
            }
            None => false,
        }
    }

    /// Returns a connection whose last answer ended exactly at its message boundary with
    /// nothing read beyond it (the caller's promise; [`take`](Self::take) checks the rest).
    pub fn put(&self, addr: SocketAddr, tenant: Tenant, channel: Channel, stream: UpstreamStream) {
        if !self.distrusted.borrow().is_empty() && self.is_distrusted(addr) {
            return;
        }
        let mut idle = self.idle.borrow_mut();
        let list = idle.entry((addr, tenant, channel)).or_default();
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    const T: Tenant = Tenant::Subscription(1);
    use std::io::Write as _;
    use std::net::{Shutdown, TcpListener};

    /// A monoio connection to a std listener, and the std side of it.
    async fn pair() -> (UpstreamStream, std::net::TcpStream, SocketAddr) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let client = monoio::net::TcpStream::connect_addr(addr).await.unwrap();
        let (server, _) = listener.accept().unwrap();
        (UpstreamStream::Plain(client), server, addr)
    }

    /// Lets bytes or a FIN written on the std side reach the monoio side's socket.
    fn settle() {
        std::thread::sleep(Duration::from_millis(50));
    }

    #[monoio::test_all]
    async fn a_quiet_connection_is_reused() {
        let pools = UpstreamPools::default();
        let (client, _server, addr) = pair().await;
        pools.put(addr, T, None, client);
        settle();
        assert!(pools.take(addr, T, None).is_some());
        assert!(pools.take(addr, T, None).is_none(), "taken once");
    }

    #[monoio::test_all]
    async fn late_bytes_discard_the_connection() {
        let pools = UpstreamPools::default();
        let (client, mut server, addr) = pair().await;
        let (quiet, _keep, _) = pair().await;
        pools.put(addr, T, None, quiet);
        pools.put(addr, T, None, client);
        server
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nPOISONED")
            .unwrap();
        settle();
        // The backend is distrusted: not even its quiet connection is reused, and none is
        // pooled from now on.
        assert!(pools.take(addr, T, None).is_none());
        let (again, _keep_again, _) = pair().await;
        pools.put(addr, T, None, again);
        assert!(pools.take(addr, T, None).is_none());
    }

    #[monoio::test_all]
    async fn end_of_stream_or_reset_discards_the_connection() {
        let pools = UpstreamPools::default();
        let (client, server, addr) = pair().await;
        pools.put(addr, T, None, client);
        server.shutdown(Shutdown::Both).unwrap();
        drop(server);
        settle();
        assert!(pools.take(addr, T, None).is_none());
    }

    #[monoio::test_all]
    async fn a_closed_connection_gives_way_to_the_next_quiet_one() {
        let pools = UpstreamPools::default();
        let (quiet, _keep, addr) = pair().await;
        // Both connections go to the same listener address key; the closed one is newer.
        let (closed, closed_server, _) = pair().await;
        pools.put(addr, T, None, quiet);
        pools.put(addr, T, None, closed);
        closed_server.shutdown(Shutdown::Both).unwrap();
        settle();
        assert!(pools.take(addr, T, None).is_some(), "the older, quiet one");
        assert!(pools.take(addr, T, None).is_none());
    }

    #[monoio::test_all]
    async fn a_connection_is_reused_only_by_its_own_tenant() {
        let pools = UpstreamPools::default();
        let (client, _server, addr) = pair().await;
        pools.put(addr, Tenant::subscription("team-a"), None, client);
        assert!(pools
            .take(addr, Tenant::subscription("team-b"), None)
            .is_none());
        assert!(pools
            .take(addr, Tenant::Address([127, 0, 0, 1].into()), None)
            .is_none());
        assert!(pools
            .take(addr, Tenant::subscription("team-a"), None)
            .is_some());
    }

    #[monoio::test_all]
    async fn plain_and_tls_connections_and_two_tls_names_never_mix() {
        let pools = UpstreamPools::default();
        let (client, _server, addr) = pair().await;
        pools.put(addr, T, Some(7), client);
        assert!(
            pools.take(addr, T, None).is_none(),
            "a TLS connection is not a plain one"
        );
        assert!(
            pools.take(addr, T, Some(8)).is_none(),
            "nor one for another name"
        );
        assert!(pools.take(addr, T, Some(7)).is_some());
        let (plain, _server, addr) = pair().await;
        pools.put(addr, T, None, plain);
        assert!(pools.take(addr, T, Some(7)).is_none());
        assert!(pools.take(addr, T, None).is_some());
    }
}
