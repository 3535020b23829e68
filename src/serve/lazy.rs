//! An accepted TCP connection registered with the runtime's poller only once it must wait.
//!
//! tokio registers every socket it wraps with epoll at once (`epoll_ctl(ADD)`, and a
//! 128-byte-aligned allocation for its readiness) and deregisters it before `close`
//! (`epoll_ctl(DEL)`); a socket just registered reads as not ready until `epoll_wait` has
//! reported it. Most new connections here never have to wait: `TCP_DEFER_ACCEPT` hands them over
//! with the request already there, the answer fits in the socket's buffer, and with
//! `Connection: close` that is the whole connection. [`LazyTcp`] reads and writes the
//! non-blocking socket directly, and becomes a tokio [`TcpStream`](tokio::net::TcpStream) only
//! when a read, write or peek would block. Such a connection costs `accept4`, `recvfrom`,
//! `writev` and `close`, as nginx's does with one `epoll_ctl` fewer (BENCHMARKS (ae)).
//!
//! One read is put off instead of made: while a request without a body is being answered,
//! hyper reads the socket to notice a client that closed early (`mid_message_detect_eof`), which
//! after a read that drained the socket finds nothing and would have to register. That read,
//! once per connection, returns `Pending` and asks for the task to be polled again at once
//! (usually the answer is written and the connection closed in the same poll, so the second poll
//! never comes); the next read is made, and registers if it must wait. The read is never put
//! off once the connection has had a request with a body ([`BODY_SEEN`]): hyper drains a body
//! its handler left unread before it closes with reads it makes only once, and a body left in
//! the socket would make `close` send a reset (BENCHMARKS (aa)).

use std::io::{self, Write};
use std::os::fd::AsFd;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::proxy::Peek;
use super::watchdog::{BODY_SEEN, ConnState};

/// An accepted TCP connection, unregistered until it must wait (see the module doc).
#[derive(Debug)]
pub(crate) struct LazyTcp {
    io: Io,
    state: Arc<ConnState>,
    /// The last read from the socket returned less than it asked for: most likely nothing is
    /// left in it.
    drained: bool,
    /// The one read that may be put off has been.
    put_off: bool,
}

#[derive(Debug)]
enum Io {
    /// Not registered with the poller: read and written directly.
    Raw(std::net::TcpStream),
    Registered(tokio::net::TcpStream),
    /// Registration failed; the socket is closed.
    Lost,
}

impl LazyTcp {
    /// `stream` (non-blocking), the connection registered with the watchdog as `state`.
    pub(crate) fn new(stream: std::net::TcpStream, state: &Arc<ConnState>) -> LazyTcp {
        LazyTcp {
            io: Io::Raw(stream),
            state: state.clone(),
            drained: false,
            put_off: false,
        }
    }

    /// Whether the socket is registered with the poller yet.
    #[cfg(test)]
    pub(crate) fn is_registered(&self) -> bool {
        matches!(self.io, Io::Registered(_))
    }

    /// The registered stream, registering the socket first if it is not yet.
    fn registered(&mut self) -> io::Result<&mut tokio::net::TcpStream> {
        if let Io::Raw(_) = self.io
            && let Io::Raw(s) = std::mem::replace(&mut self.io, Io::Lost)
        {
            self.io = Io::Registered(tokio::net::TcpStream::from_std(s)?);
        }
        match &mut self.io {
            Io::Registered(s) => Ok(s),
            _ => Err(io::Error::other("the connection's socket was lost")),
        }
    }
}

/// `Ready(r)` unless `r` says the call would block (`None`: register and wait); retried on
/// `EINTR`.
fn done<T>(mut call: impl FnMut() -> io::Result<T>) -> Option<io::Result<T>> {
    loop {
        match call() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
            r => return Some(r),
        }
    }
}

// Each call tests for a registered socket first and hands it straight to tokio (a kept-alive
// connection, registered after its first wait, pays one test per call); the unregistered path
// is out of line.
impl AsyncRead for LazyTcp {
    #[inline]
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match &mut this.io {
            Io::Registered(s) => Pin::new(s).poll_read(cx, buf),
            _ => this.poll_read_raw(cx, buf),
        }
    }
}

impl AsyncWrite for LazyTcp {
    #[inline]
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match &mut this.io {
            Io::Registered(s) => Pin::new(s).poll_write(cx, buf),
            _ => this.poll_write_raw(cx, &[io::IoSlice::new(buf)]),
        }
    }

    #[inline]
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match &mut this.io {
            Io::Registered(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            _ => this.poll_write_raw(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    #[inline]
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Nothing is buffered here (nor in tokio's stream).
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match &mut this.io {
            Io::Raw(s) => Poll::Ready(s.shutdown(std::net::Shutdown::Write)),
            Io::Registered(s) => Pin::new(s).poll_shutdown(cx),
            Io::Lost => Poll::Ready(Ok(())),
        }
    }
}

impl LazyTcp {
    /// A read while unregistered: made directly, put off (see the module doc), or made
    /// registered when the socket has nothing.
    #[inline(never)]
    fn poll_read_raw(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Io::Raw(s) = &self.io {
            if self.drained && !self.put_off && !self.state.flag(BODY_SEEN) {
                self.put_off = true;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            let want = buf.remaining();
            if let Some(r) = done(|| crate::sys::recv_into(s.as_fd(), buf)) {
                return Poll::Ready(r.map(|n| self.drained = n < want));
            }
        }
        match self.registered() {
            Ok(s) => Pin::new(s).poll_read(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    /// A write while unregistered: made directly, or made registered when the socket is full.
    #[inline(never)]
    fn poll_write_raw(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if let Io::Raw(s) = &self.io
            && let Some(r) = done(|| (&*s).write_vectored(bufs))
        {
            return Poll::Ready(r);
        }
        match self.registered() {
            Ok(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl Peek for LazyTcp {
    async fn peek(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Io::Raw(s) = &self.io
            && let Some(r) = done(|| {
                rustix::net::recv(s, &mut *buf, rustix::net::RecvFlags::PEEK)
                    .map(|(n, _)| n)
                    .map_err(io::Error::from)
            })
        {
            return r;
        }
        self.registered()?.peek(buf).await
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::watchdog::{Limits, Watchdog};
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A connected pair: the server's end unregistered, and the client.
    async fn pair() -> (LazyTcp, tokio::net::TcpStream) {
        let wd = Watchdog::start(Limits {
            header_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(30),
            keepalive_grace: Duration::from_secs(30),
            send_timeout: Duration::from_secs(30),
            stream_grace: None,
            route_timeout: None,
        });
        let (state, reg) = wd.register();
        // The connection stays registered with the watchdog for the test's life.
        std::mem::forget(reg);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (s, _) = listener.accept().unwrap();
        s.set_nonblocking(true).unwrap();
        (LazyTcp::new(s, &state), client)
    }

    #[tokio::test]
    async fn reads_and_writes_without_registering_until_it_must_wait() {
        let (mut server, mut client) = pair().await;
        client.write_all(b"hello").await.unwrap();
        let mut buf = [0u8; 5];
        server.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hello");
        assert!(!server.is_registered(), "a read that found data registered");
        server.write_all(b"world").await.unwrap();
        client.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"world");
        assert!(!server.is_registered());
        // Nothing to read: the read is put off once (the socket was drained), then made, and
        // waits registered; bytes sent afterwards wake it.
        let reading = tokio::spawn(async move {
            let mut buf = [0u8; 16];
            let n = server.read(&mut buf).await.unwrap();
            assert!(
                server.is_registered(),
                "a read that waited was not registered"
            );
            buf[..n].to_vec()
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        client.write_all(b"later").await.unwrap();
        assert_eq!(reading.await.unwrap(), b"later");
    }

    #[tokio::test]
    async fn no_read_is_put_off_after_a_request_with_a_body() {
        let (mut server, mut client) = pair().await;
        server.state.set(BODY_SEEN);
        client.write_all(b"ab").await.unwrap();
        let mut buf = [0u8; 2];
        server.read_exact(&mut buf).await.unwrap();
        client.write_all(b"cd").await.unwrap();
        // Wait until the bytes are in the server's socket, then read once without waiting: a
        // put-off read would find nothing.
        let mut peeked = [0u8; 2];
        while server.peek(&mut peeked).await.unwrap() < 2 {}
        let mut rb = ReadBuf::new(&mut buf);
        let waker = std::task::Waker::noop();
        let r = Pin::new(&mut server).poll_read(&mut Context::from_waker(waker), &mut rb);
        assert!(matches!(r, Poll::Ready(Ok(()))), "{r:?}");
        assert_eq!(rb.filled(), b"cd");
    }

    #[tokio::test]
    async fn a_write_that_would_block_registers_and_completes() {
        let (mut server, mut client) = pair().await;
        let big = vec![7u8; 8 << 20];
        let writer = tokio::spawn(async move {
            server.write_all(&big).await.unwrap();
            assert!(server.is_registered());
            server.shutdown().await.unwrap();
        });
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        writer.await.unwrap();
        assert_eq!(got.len(), 8 << 20);
    }
}
