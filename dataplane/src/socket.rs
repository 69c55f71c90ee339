//! Small I/O helpers over monoio's owned-buffer API: reads bounded by a deadline (and by the
//! client staying, [`watching_client`]), and the socket's descriptor for the few plain
//! syscalls monoio does not offer (a non-blocking peek, a zero-timeout poll, an abortive
//! close); and [`ClientStream`], a client's connection in plain TCP or TLS.

use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::time::Duration;

use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use monoio::time::Instant;
use monoio::BufResult;
use monoio_rustls::ServerTlsStream;
use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::io::Errno;
use rustix::net::RecvFlags;

/// Least spare room a read is given; the buffer grows by doubling when less is left.
const MIN_READ_SPACE: usize = 4 * 1024;

/// Reads once, appending to `buf` (its length grows by what was read). Returns the byte
/// count (0 at end of stream) and the buffer back.
pub async fn read_more<S: AsyncReadRent>(
    stream: &mut S,
    mut buf: Vec<u8>,
) -> (io::Result<usize>, Vec<u8>) {
    let len = buf.len();
    if buf.capacity() - len < MIN_READ_SPACE {
        buf.reserve(MIN_READ_SPACE.max(len));
    }
    let cap = buf.capacity();
    let (res, slice) = stream.read(buf.slice_mut(len..cap)).await;
    (res, slice.into_inner())
}

/// [`read_more`] bounded by `limit`: `Err(TimedOut)` when nothing arrived in time. The buffer
/// is lost on a timeout (the caller closes the connection then).
pub async fn read_more_within<S: AsyncReadRent>(
    stream: &mut S,
    buf: Vec<u8>,
    limit: Duration,
) -> Result<(io::Result<usize>, Vec<u8>), io::Error> {
    monoio::time::timeout(limit, read_more(stream, buf))
        .await
        .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))
}

/// How often the client is checked while Sluice waits on its backend (see [`read_more_watching`]).
pub const HANGUP_CHECK: Duration = Duration::from_millis(500);

/// Why a [`read_more_watching`] ended without its read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// Nothing arrived within the limit.
    TimedOut,
    /// The client closed or reset its connection meanwhile.
    ClientGone,
}

/// `work` (a read from a backend, a wait standing for one) bounded by `limit`, giving up
/// early when the client behind `client` goes away: every [`HANGUP_CHECK`] of waiting, the
/// client's socket is asked ([`client_gone`]), and its FIN or reset ends the wait with
/// [`Stopped::ClientGone`] — even behind bytes it sent first and Sluice has not read (a
/// pipelined request). As with nginx's default (`proxy_ignore_client_abort off`), a client
/// that half-closes after its request counts as gone.
///
/// Costs what a plain timeout costs while the backend answers promptly (one timer), and one
/// non-blocking `poll` per [`HANGUP_CHECK`] while it does not. `work` is dropped (cancelled)
/// when the wait ends early: after a read from a backend, the caller closes that connection —
/// which is how the backend learns the request was abandoned.
pub async fn watching_client<F: Future>(
    limit: Duration,
    work: F,
    client: &impl AsRawFd,
) -> Result<F::Output, Stopped> {
    let deadline = Instant::now() + limit;
    let mut work = std::pin::pin!(work);
    loop {
        let wake = deadline.min(Instant::now() + HANGUP_CHECK);
        monoio::select! {
            done = &mut work => return Ok(done),
            _ = monoio::time::sleep_until(wake) => {}
        }
        if Instant::now() >= deadline {
            return Err(Stopped::TimedOut);
        }
        if client_gone(client) {
            return Err(Stopped::ClientGone);
        }
    }
}

/// [`read_more`] within `limit` unless the client goes first (see [`watching_client`]).
pub async fn read_more_watching<S: AsyncReadRent>(
    stream: &mut S,
    buf: Vec<u8>,
    limit: Duration,
    client: &impl AsRawFd,
) -> Result<(io::Result<usize>, Vec<u8>), Stopped> {
    watching_client(limit, read_more(stream, buf), client).await
}

/// Sleeps for `pause` (a simulated backend's latency), ending early with
/// [`Stopped::ClientGone`] when the client goes away (see [`watching_client`]).
pub async fn sleep_watching(pause: Duration, client: &impl AsRawFd) -> Result<(), Stopped> {
    match watching_client(pause, std::future::pending::<()>(), client).await {
        Err(Stopped::ClientGone) => Err(Stopped::ClientGone),
        _ => Ok(()),
    }
}

/// Whether the client behind `stream` closed its side or the connection failed: a
/// zero-timeout `poll` for `POLLRDHUP` (the peer's FIN, Linux), `POLLHUP` or `POLLERR`. Unlike
/// a peek, unread bytes do not hide the FIN behind them. An error of `poll` itself is read
/// as "still there".
pub fn client_gone(stream: &impl AsRawFd) -> bool {
    let fd = fd_of(stream);
    let mut fds = [PollFd::new(&fd, PollFlags::RDHUP)];
    match poll(&mut fds, Some(&Timespec::default())) {
        Ok(n) if n > 0 => fds[0]
            .revents()
            .intersects(PollFlags::RDHUP | PollFlags::HUP | PollFlags::ERR),
        _ => false,
    }
}

/// What the peer of a connection with no operation in flight on it has to say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerState {
    /// Nothing: no bytes waiting, the connection open.
    Quiet,
    /// Bytes are waiting to be read.
    Data,
    /// The peer closed its side (end of stream) or the connection failed (a reset).
    Closed,
}

/// What `stream`'s peer has to say, by a one-byte `recv(MSG_PEEK | MSG_DONTWAIT)`: no data
/// (`EAGAIN`) is quiet, data is data, end of stream or any other error is closed.
///
/// The peek consumes nothing and does not block whatever mode the socket is in, so it is the
/// same on monoio's io_uring and epoll drivers. It must not race a read of the same socket
/// (none is in flight on an idle pooled connection).
pub fn peek_state(stream: &impl AsRawFd) -> PeerState {
    let mut byte = [0u8; 1];
    match rustix::net::recv(
        fd_of(stream),
        &mut byte,
        RecvFlags::PEEK | RecvFlags::DONTWAIT,
    ) {
        Err(Errno::AGAIN | Errno::INTR) => PeerState::Quiet,
        Ok((n, _)) if n > 0 => PeerState::Data,
        _ => PeerState::Closed,
    }
}

/// Writes all of `buf` to `stream` within `limit`: `Err(TimedOut)` when the peer did not take
/// it in time (a client that stopped reading). The buffer comes back either way (a new,
/// empty one after a timeout: the cancelled write kept the old one).
pub async fn write_all_within<S: AsyncWriteRent, B: IoBuf + Default>(
    stream: &mut S,
    buf: B,
    limit: Duration,
) -> (io::Result<()>, B) {
    match monoio::time::timeout(limit, stream.write_all(buf)).await {
        Ok((res, buf)) => (res.map(drop), buf),
        Err(_) => (Err(io::Error::from(io::ErrorKind::TimedOut)), B::default()),
    }
}

/// The descriptor of `stream`, borrowed for as long as `stream` is: monoio's `TcpStream`
/// implements `AsRawFd` but not `AsFd`. Only for syscalls that touch no monoio state
/// (`recv` with `MSG_PEEK | MSG_DONTWAIT`, `setsockopt`), never to read, write or close.
/// `stream` must own the descriptor it names (a `TcpStream`, or a [`ClientStream`] over
/// one).
pub fn fd_of<S: AsRawFd>(stream: &S) -> BorrowedFd<'_> {
    // SAFETY: the descriptor is owned by `stream` (or by the TCP stream it wraps) and stays
    // open until `stream` is dropped or closed, which the returned borrow's lifetime (tied
    // to `&stream`) rules out while it lives.
    #[allow(unsafe_code)]
    unsafe {
        BorrowedFd::borrow_raw(stream.as_raw_fd())
    }
}

/// Makes the next close of `stream` abortive (`SO_LINGER` 0: a reset, not a FIN). For an
/// answer whose end the client can only learn from the close (an HTTP/1.0 client's
/// close-delimited body) when the answer broke off: a FIN would pass the truncated body off
/// as complete, a reset tells the client it is not. Best effort: an error is ignored (the
/// connection closes normally then).
pub fn abort_on_close(stream: &impl AsRawFd) {
    let _ = rustix::net::sockopt::set_socket_linger(fd_of(stream), Some(Duration::ZERO));
}

/// A client's connection: plain TCP, or TLS over TCP (a `tls_listen` address). Reads and
/// writes go through TLS when there is one; the descriptor ([`AsRawFd`]) is always the TCP
/// socket's, for the peeks and polls that watch the connection itself.
pub enum ClientStream {
    /// Plain HTTP/1.1.
    Plain(TcpStream),
    /// HTTP/1.1 over TLS; `fd` is the wrapped socket's descriptor.
    Tls {
        /// The TLS session over the socket.
        stream: Box<ServerTlsStream<TcpStream>>,
        /// The socket's descriptor, read before it was wrapped.
        fd: RawFd,
        /// The subject (RFC 4514) of the client certificate the handshake verified, with
        /// `client_ca_file`.
        client_cert: Option<std::sync::Arc<str>>,
    },
}

impl ClientStream {
    /// The verified client certificate's subject, if the client presented one over TLS.
    pub fn client_cert(&self) -> Option<&std::sync::Arc<str>> {
        match self {
            ClientStream::Tls { client_cert, .. } => client_cert.as_ref(),
            ClientStream::Plain(_) => None,
        }
    }
}

impl AsRawFd for ClientStream {
    fn as_raw_fd(&self) -> RawFd {
        match self {
            ClientStream::Plain(s) => s.as_raw_fd(),
            ClientStream::Tls { fd, .. } => *fd,
        }
    }
}

impl AsyncReadRent for ClientStream {
    async fn read<T: IoBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            ClientStream::Plain(s) => s.read(buf).await,
            ClientStream::Tls { stream, .. } => stream.read(buf).await,
        }
    }

    async fn readv<T: IoVecBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            ClientStream::Plain(s) => s.readv(buf).await,
            ClientStream::Tls { stream, .. } => stream.readv(buf).await,
        }
    }
}

impl AsyncWriteRent for ClientStream {
    async fn write<T: IoBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            ClientStream::Plain(s) => s.write(buf).await,
            ClientStream::Tls { stream, .. } => stream.write(buf).await,
        }
    }

    async fn writev<T: IoVecBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            ClientStream::Plain(s) => s.writev(buf).await,
            ClientStream::Tls { stream, .. } => stream.writev(buf).await,
        }
    }

    async fn flush(&mut self) -> io::Result<()> {
        match self {
            ClientStream::Plain(s) => s.flush().await,
            ClientStream::Tls { stream, .. } => stream.flush().await,
        }
    }

    async fn shutdown(&mut self) -> io::Result<()> {
        match self {
            ClientStream::Plain(s) => s.shutdown().await,
            ClientStream::Tls { stream, .. } => stream.shutdown().await,
        }
    }
}
