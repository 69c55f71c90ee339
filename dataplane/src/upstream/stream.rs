//! A connection to a backend: plain TCP, or TLS over TCP (`https://` backends). Reads and
//! writes delegate to the one inside, so the leg, the relay and the pool handle both alike;
//! the idle check before reuse ([`UpstreamStream::peer_state`]) asks the TCP socket
//! underneath.

use std::os::fd::{AsRawFd, BorrowedFd, RawFd};

use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent};
use monoio::net::TcpStream;
use monoio::BufResult;
use monoio_rustls::ClientTlsStream;
use rustix::io::Errno;
use rustix::net::RecvFlags;

use crate::socket::PeerState;

/// A connection to a backend.
pub enum UpstreamStream {
    /// `http://`: the socket itself.
    Plain(TcpStream),
    /// `https://`: TLS over the socket (boxed: a rustls connection is large, and streams
    /// move between the leg and the pool).
    Tls {
        /// The TLS session over the socket.
        stream: Box<ClientTlsStream<TcpStream>>,
        /// The socket's descriptor, owned by the `TcpStream` inside `stream`.
        fd: RawFd,
    },
}

impl UpstreamStream {
    /// Wraps a TLS connection over `tcp`'s socket (`fd`: `tcp`'s descriptor, read before the
    /// handshake took `tcp`).
    pub fn tls(stream: ClientTlsStream<TcpStream>, fd: RawFd) -> Self {
        UpstreamStream::Tls {
            stream: Box::new(stream),
            fd,
        }
    }

    /// The descriptor of `tcp`, to pass to [`UpstreamStream::tls`].
    pub fn fd_of(tcp: &TcpStream) -> RawFd {
        tcp.as_raw_fd()
    }

    /// Whether this is a TLS connection.
    pub fn is_tls(&self) -> bool {
        matches!(self, UpstreamStream::Tls { .. })
    }

    fn fd(&self) -> BorrowedFd<'_> {
        let raw = match self {
            UpstreamStream::Plain(tcp) => tcp.as_raw_fd(),
            UpstreamStream::Tls { fd, .. } => *fd,
        };
        // SAFETY: `raw` belongs to the `TcpStream` inside `self` (directly, or inside the
        // boxed TLS stream, which owns it until dropped) and stays open while `self` lives;
        // the borrow is tied to `&self`, so it cannot outlive the socket. It is only used for
        // a non-blocking peek, which touches no monoio state.
        #[allow(unsafe_code)]
        unsafe {
            BorrowedFd::borrow_raw(raw)
        }
    }

    /// What the backend has to say on an idle connection (no operation in flight on it), by
    /// a one-byte `recv(MSG_PEEK | MSG_DONTWAIT)` on the TCP socket: no data (`EAGAIN`) is
    /// quiet, data is data, end of stream or any other error is closed. Consumes nothing.
    ///
    /// On a TLS connection, data is TLS records the session has not read: a `close_notify`
    /// before the backend closes an idle connection, a late session ticket or key update —
    /// or an unsolicited answer; they cannot be told apart without decrypting them.
    pub fn peer_state(&self) -> PeerState {
        let mut byte = [0u8; 1];
        match rustix::net::recv(self.fd(), &mut byte, RecvFlags::PEEK | RecvFlags::DONTWAIT) {
            Err(Errno::AGAIN | Errno::INTR) => PeerState::Quiet,
            Ok((n, _)) if n > 0 => PeerState::Data,
            _ => PeerState::Closed,
        }
    }
}

impl AsyncReadRent for UpstreamStream {
    async fn read<T: IoBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            UpstreamStream::Plain(s) => s.read(buf).await,
            UpstreamStream::Tls { stream, .. } => stream.read(buf).await,
        }
    }

    async fn readv<T: IoVecBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            UpstreamStream::Plain(s) => s.readv(buf).await,
            UpstreamStream::Tls { stream, .. } => stream.readv(buf).await,
        }
    }
}

impl AsyncWriteRent for UpstreamStream {
    async fn write<T: IoBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            UpstreamStream::Plain(s) => s.write(buf).await,
            UpstreamStream::Tls { stream, .. } => stream.write(buf).await,
        }
    }

    async fn writev<T: IoVecBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            UpstreamStream::Plain(s) => s.writev(buf).await,
            UpstreamStream::Tls { stream, .. } => stream.writev(buf).await,
        }
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        match self {
            UpstreamStream::Plain(s) => s.flush().await,
            UpstreamStream::Tls { stream, .. } => stream.flush().await,
        }
    }

    async fn shutdown(&mut self) -> std::io::Result<()> {
        match self {
            UpstreamStream::Plain(s) => s.shutdown().await,
            UpstreamStream::Tls { stream, .. } => stream.shutdown().await,
        }
    }
}
