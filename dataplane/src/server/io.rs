//! Small I/O helpers over monoio's owned-buffer API, and the socket's descriptor for the
//! few plain syscalls monoio does not offer (a non-blocking peek, an abortive close).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::Duration;

use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use monoio::net::TcpStream;

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

/// Writes all of `buf` to `stream` within `limit`: `Err(TimedOut)` when the peer did not take
/// it in time (a client that stopped reading). The buffer comes back either way (a new,
/// empty one after a timeout: the cancelled write kept the old one).
pub async fn write_all_within<S: AsyncWriteRent>(
    stream: &mut S,
    buf: Vec<u8>,
    limit: Duration,
) -> (io::Result<()>, Vec<u8>) {
    match monoio::time::timeout(limit, stream.write_all(buf)).await {
        Ok((res, buf)) => (res.map(drop), buf),
        Err(_) => (Err(io::Error::from(io::ErrorKind::TimedOut)), Vec::new()),
    }
}

/// The descriptor of `stream`, borrowed for as long as `stream` is: monoio's `TcpStream`
/// implements `AsRawFd` but not `AsFd`. Only for syscalls that touch no monoio state
/// (`recv` with `MSG_PEEK | MSG_DONTWAIT`, `setsockopt`), never to read, write or close.
pub fn fd_of(stream: &TcpStream) -> BorrowedFd<'_> {
    // SAFETY: the descriptor is owned by `stream` and stays open until `stream` is dropped
    // or closed, which the returned borrow's lifetime (tied to `&stream`) rules out while it
    // lives.
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
pub fn abort_on_close(stream: &TcpStream) {
    let _ = rustix::net::sockopt::set_socket_linger(fd_of(stream), Some(Duration::ZERO));
}
