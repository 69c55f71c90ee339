//! Listening sockets and connection resets.
//!
//! Sockets are made as std types (through nix, with SO_REUSEPORT so every worker binds the
//! same address) and accepted with std's non-blocking `accept`, then handed to monoio. The
//! detour exists for resets: SO_LINGER must be set on an fd the safe API can borrow, and a
//! monoio stream offers only a raw one. A connection that may be reset keeps a duplicate
//! std handle for that; the rest keep nothing extra.

use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::time::Duration;

use nix::sys::socket::{
    bind, listen, setsockopt, socket, sockopt, AddressFamily, Backlog, SockFlag, SockType,
    SockaddrStorage,
};
use std::os::fd::AsRawFd;

/// Binds a non-blocking SO_REUSEPORT listener on `addr`.
pub fn bind_listener(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let family = match addr {
        SocketAddr::V4(_) => AddressFamily::Inet,
        SocketAddr::V6(_) => AddressFamily::Inet6,
    };
    let fd: OwnedFd = socket(
        family,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    setsockopt(&fd, sockopt::ReusePort, &true)?;
    bind(fd.as_raw_fd(), &SockaddrStorage::from(addr))?;
    listen(&fd, Backlog::MAXCONN)?;
    Ok(std::net::TcpListener::from(fd))
}

/// A worker's listener: std accepts, a monoio handle on a duplicate of the same socket
/// waits for readiness (POLLIN on a listening socket means a connection is pending).
pub struct Acceptor {
    listener: std::net::TcpListener,
    ready: monoio::net::TcpStream,
}

impl Acceptor {
    /// Wraps `listener`; call inside the worker's runtime (the readiness handle registers
    /// with its driver).
    pub fn new(listener: std::net::TcpListener) -> io::Result<Self> {
        let dup = OwnedFd::from(listener.try_clone()?);
        let ready = monoio::net::TcpStream::from_std(std::net::TcpStream::from(dup))?;
        Ok(Acceptor { listener, ready })
    }

    /// The next connection, non-blocking and with TCP_NODELAY set.
    pub async fn accept(&self) -> std::net::TcpStream {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if stream.set_nonblocking(true).is_ok() {
                        let _ = stream.set_nodelay(true);
                        return stream;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if self.ready.readable(false).await.is_err() {
                        monoio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
                // Out of descriptors and the like: back off rather than spin.
                Err(_) => monoio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    }
}

/// Sets SO_LINGER to zero on `socket`, so its last close sends RST (the peer reads
/// ECONNRESET) instead of FIN.
pub fn linger_zero(socket: &std::net::TcpStream) -> io::Result<()> {
    let linger = nix::libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    setsockopt(socket, sockopt::Linger, &linger)?;
    Ok(())
}
